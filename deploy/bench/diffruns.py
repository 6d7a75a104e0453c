"""diffruns.py OLD NEW DIR: prints a qemu-io "write -s FILE OFF LEN" command
per run of 64 KiB blocks where NEW differs from OLD, with each run's bytes
from NEW saved as a file in DIR (bench-peers: the next day replayed through
QEMU so that a dirty bitmap records it)."""
import os
import sys

old, new, out = open(sys.argv[1], "rb"), open(sys.argv[2], "rb"), sys.argv[3]
os.makedirs(out, exist_ok=True)
BS = 64 << 10
runs, off, start = [], 0, None
while True:
    x, y = old.read(BS), new.read(BS)
    if not y:
        break
    if x != y and start is None:
        start = off
    elif x == y and start is not None:
        runs.append((start, off))
        start = None
    off += len(y)
if start is not None:
    runs.append((start, off))
for i, (lo, hi) in enumerate(runs):
    path = os.path.join(out, str(i))
    new.seek(lo)
    with open(path, "wb") as f:
        f.write(new.read(hi - lo))
    print(f"write -s {path} {lo} {hi - lo}")
