#!/usr/bin/env bash
# make bench-bigdisk: a big sparse disk (qcow2, 2 MiB written at its start,
# middle and end) exported by qemu-nbd and backed up in full through
# `strata dev`: the time of the backup and the dev process's memory.
# SIZE (default 16T) is the virtual size; BIN the directory of the binaries.
set -euo pipefail
BIN=${1:-bin}
BIN=$(cd "$BIN" && pwd)
SIZE=${SIZE:-16T}
W=$(mktemp -d /tmp/strata-bigdisk.XXXXXX)
qemu-img create -q -f qcow2 "$W/d.qcow2" "$SIZE"
bytes=$(qemu-img info --output=json "$W/d.qcow2" | python3 -c 'import json,sys;print(json.load(sys.stdin)["virtual-size"])')
qemu-io -f qcow2 -c "write -P 17 0 2M" -c "write -P 34 $((bytes / 2)) 2M" -c "write -P 51 $((bytes - 2097152)) 2M" "$W/d.qcow2" >/dev/null
export XDG_STATE_HOME=$W/state HOME=$W
"$BIN/strata" dev --data "$W/data" --port 4333 >"$W/dev.log" 2>&1 &
DEV=$!
cleanup() { kill "$DEV" 2>/dev/null || true; pkill -f "qemu-nbd.*$W" || true; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
sleep 4
# -e: several connections (the snapshotter's and each worker's).
qemu-nbd -r -f qcow2 -x disk -b 127.0.0.1 -p 10990 -e 16 --persistent -t "$W/d.qcow2" &
sleep 1
peak=0
( while kill -0 "$DEV" 2>/dev/null; do ps -o rss= -p "$DEV"; sleep 1; done ) >"$W/rss" &
start=$(date +%s.%N)
"$BIN/strata" backup --vm big --source nbd://127.0.0.1:10990/disk --wait
end=$(date +%s.%N)
peak=$(sort -n "$W/rss" | tail -1)
echo "$SIZE sparse full: $(python3 -c "print(round($end-$start,1))") s; strata dev peak RSS $((peak / 1024)) MiB"
grep -o '"time":"[^"]*","level":"[A-Z]*","msg":"backup \(requested\|planned\|committed\|verified\)"' "$W/dev.log" || true
du -sh "$W/data/objects/manifests"
