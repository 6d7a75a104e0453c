#!/usr/bin/env bash
# make demo: start `strata dev` (embedded NATS + all six services, local
# directory repository), generate a disk, back it up, restore it, and show
# both sha256 sums and the stored/logical ratio. The ~1 GB it writes (disk,
# restore, repository) is removed at the end unless STRATA_DEMO_KEEP=1, or
# STRATA_DEMO_DIR names a directory of your own (then it is kept).
set -euo pipefail
bin=${1:-$(pwd)/bin}
keep=${STRATA_DEMO_KEEP:-0}
[ -n "${STRATA_DEMO_DIR:-}" ] && keep=1
work=${STRATA_DEMO_DIR:-$(mktemp -d /tmp/strata-demo.XXXXXX)}
port=${STRATA_DEMO_PORT:-14222}
mkdir -p "$work"
export STRATA_NATS_URL=nats://127.0.0.1:$port STRATA_STORE_DIR=$work/data/objects
"$bin/strata" dev --data "$work/data" --port "$port" >"$work/dev.log" 2>&1 &
dev=$!
cleanup() {
  kill $dev 2>/dev/null; wait $dev 2>/dev/null || true
  if [ "$keep" = 1 ]; then
    echo "== kept $(du -sh "$work" | cut -f1) in $work (remove it with: rm -rf $work)"
  else
    rm -rf "$work" && echo "== removed $work (STRATA_DEMO_KEEP=1 keeps it)"
  fi
}
trap cleanup EXIT
echo "== strata dev running (logs: $work/dev.log)"
echo "== generating a 512 MiB demo disk (holes, text, random data, repeated blocks)"
"$bin/strata" mkdisk --size $((512 << 20)) "$work/disk.img"
for i in $(seq 50); do "$bin/strata" ls >/dev/null 2>&1 && break; sleep 0.2; done
echo "== backup"
id=$("$bin/strata" backup --vm demo --source "file://$work/disk.img" --wait | head -1)  # summary with stored/logical on stderr
echo "== restore"
"$bin/strata" restore --vm demo --backup "$id" --to "$work/restored.img"
echo "== backups"
"$bin/strata" ls --vm demo
echo "== sha256"
sha256sum "$work/disk.img" "$work/restored.img"
a=$(sha256sum <"$work/disk.img"); b=$(sha256sum <"$work/restored.img")
[ "$a" = "$b" ] && echo "== bit-exact restore: OK" || { echo "== MISMATCH"; exit 1; }
