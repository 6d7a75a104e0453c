#!/usr/bin/env bash
# make bench-bigdisk: a big sparse disk (qcow2, 2 MiB written at its start,
# middle and end) exported by qemu-nbd and backed up through `strata dev`:
# a full, then an incremental after 3 MiB more were written (the export's
# dirty bitmap says where), each timed; the dev process's peak RSS; the
# largest manifest; `qemu-img compare` of the image against `strata serve`;
# a restore to a sparse file (on tmpfs: ext4 stops short of 16 TiB)
# compared with the image. It fails when any comparison differs.
# SIZE (default 16T) is the virtual size; BIN the directory of the binaries.
set -euo pipefail
BIN=${1:-bin}
BIN=$(cd "$BIN" && pwd)
SIZE=${SIZE:-16T}
W=$(mktemp -d /tmp/strata-bigdisk.XXXXXX)
R=$(mktemp -d /dev/shm/strata-bigdisk.XXXXXX)
img=$W/d.qcow2
qemu-img create -q -f qcow2 "$img" "$SIZE"
bytes=$(qemu-img info --output=json "$img" | python3 -c 'import json,sys;print(json.load(sys.stdin)["virtual-size"])')
qemu-img bitmap --add "$img" strata
qemu-io -f qcow2 -c "write -P 17 0 2M" -c "write -P 34 $((bytes / 2)) 2M" -c "write -P 51 $((bytes - 2097152)) 2M" "$img" >/dev/null
export XDG_STATE_HOME=$W/state HOME=$W
"$BIN/strata" dev --data "$W/data" --port 4333 >"$W/dev.log" 2>&1 &
DEV=$!
NBD=
cleanup() {
	kill "$DEV" 2>/dev/null || true
	[ -n "$NBD" ] && kill "$NBD" 2>/dev/null || true
	pkill -f "strata serve --vm big" || true
	wait 2>/dev/null || true
	rm -rf "$W" "$R"
}
trap cleanup EXIT
export_img() {
	# -e: several connections (the snapshotter's and each worker's); -B:
	# the dirty bitmap an incremental reads.
	qemu-nbd -r -f qcow2 -x disk -b 127.0.0.1 -p 10990 -e 16 -B strata --persistent -t "$img" &
	NBD=$!
	sleep 1
}
unexport() { kill "$NBD"; wait "$NBD" 2>/dev/null || true; NBD=; }
sleep 4
( while kill -0 "$DEV" 2>/dev/null; do ps -o rss= -p "$DEV"; sleep 0.5; done ) >"$W/rss" &
src="nbd://127.0.0.1:10990/disk?bitmap=strata"
timed() {
	local start end
	start=$(date +%s.%N)
	"$@"
	end=$(date +%s.%N)
	python3 -c "print(round($end-$start,1))"
}
export_img
full=$(timed "$BIN/strata" backup --vm big --source "$src" --wait | tail -1)
unexport
# the bitmap from here on holds only what the incremental must read
qemu-img bitmap --clear "$img" strata
qemu-io -f qcow2 -c "write -P 68 64M 1M" -c "write -P 85 $((bytes / 3)) 1M" -c "write -P 102 $((bytes - 8388608)) 1M" "$img" >/dev/null
export_img
inc=$(timed "$BIN/strata" backup --vm big --source "$src" --wait | tail -1)
"$BIN/strata" ls --vm big --json >"$W/ls.json"
unexport
peak=$(sort -n "$W/rss" | tail -1)
kinds=$(python3 -c 'import json,sys; print(" ".join(b.get("kind","?")+"/"+b.get("state","?") for b in json.load(open(sys.argv[1]))))' "$W/ls.json" 2>/dev/null || echo "?")
largest=$(find "$W/data" -path '*manifests*' -type f -printf '%s\n' | sort -n | tail -1)
echo "$SIZE sparse: full $full s, incremental $inc s ($kinds); strata dev peak RSS $((peak / 1024)) MiB; largest manifest $largest bytes"
grep -o '"time":"[^"]*","level":"[A-Z]*","msg":"backup \(requested\|planned\|committed\|verified\)"' "$W/dev.log" || true

"$BIN/strata" serve --vm big --listen 127.0.0.1:10991 >"$W/serve.log" 2>&1 &
sleep 3
cmp=$(timed qemu-img compare -f qcow2 "$img" -F raw "nbd://127.0.0.1:10991/disk0" | tail -1)
echo "qemu-img compare image vs strata serve: equal ($cmp s)"
pkill -f "strata serve --vm big" || true
rst=$(timed "$BIN/strata" restore --vm big --backup latest --to "$R/big.img" | tail -1)
qemu-img compare -f qcow2 "$img" -F raw "$R/big.img" >/dev/null
echo "restore to a sparse file: $rst s, bit-exact (qemu-img compare), $(du -k "$R/big.img" | cut -f1) KiB allocated of $(stat -c %s "$R/big.img") bytes"
