#!/usr/bin/env bash
# make bench-peers: Strata against restic, kopia and borg on the same disk
# images, in one run, so nobody has to take a comparison on trust.
#
# Setting "embedded": `strata dev` (all six services and NATS in one
# process, directory repository) against each tool's local repository.
# Setting "deployed": Strata's compose deployment (3 NATS nodes, versitygw,
# six services, TRANSFERS=3 workers; backups with --wait) against restic
# and kopia writing to the same versitygw container (borg has no S3
# backend); the stack is torn down after every round. Needs Docker; the
# images are built (deploy/docker/images.sh).
#
# Per disk kind — synthetic (`strata mkdisk`: holes, random, text,
# repeats; a size that is no multiple of any chunk size) and realistic
# (GPT, FAT EFI + ext4 made by `mkfs.ext4 -d` from a debootstrap minbase
# tree plus the Go toolchain; its "next day" changed through the filesystem
# with debugfs: a new 24 MB database, a 16 MB log, a rewritten binary) —
# every tool does a full backup, an incremental of the next day and a
# restore, checked bit for bit (Strata then runs `gc --recompress`, and its
# repository after that is compared with every peer's); tools alternate within each round, best of
# ROUNDS. Printed per step: wall time, CPU of every process involved
# (embedded Strata: the CLI plus the dev process over the step; deployed:
# the client plus every container of Strata's stack, or plus the S3
# container for a peer), peak RSS of the client, repository size (growth
# for the incremental; deployed: the bucket's directory in the S3 volume)
# and MB/s of logical disk; then Strata's ratio to the best peer (speed and
# CPU), where the deployed full's CPU went per container, and at the end
# the compression codecs on the same disks (BenchmarkCodecs). Embedded, on
# the realistic disk, Strata also backs the next day up through a qcow2
# dirty bitmap over qemu-nbd -t, into a repository of its own (strata_bitmap;
# needs qemu-utils).
#
# Environment: SETTINGS ("embedded deployed"), ROUNDS (3), DISKS
# ("synthetic realistic"), TOOLS ("strata borg restic kopia"), TRANSFERS
# (3), DEP_S3_PORT (17070; the next two for the HTTP trigger and Jaeger),
# DEP_NATS_PORT (14222 and the next two), SYN_SIZE (2 GiB + 12345),
# REAL_SIZE (3 GiB), STRATA_JS_REPLICAS (3) and STRATA_OTLP_ENDPOINT
# (Jaeger; empty: no tracing) for the deployed stack, to measure what
# replication and tracing cost, STRATA_PACKS (true; false: Strata's
# repositories store one object per chunk, both settings),
# STRATA_BENCH_DIR (a temporary directory under /var/tmp, removed at the
# end unless STRATA_BENCH_KEEP=1). Peers are installed when missing: restic
# and kopia built from the Go module proxy into
# ${XDG_CACHE_HOME:-~/.cache}/strata/peers, borg from Debian; the realistic
# tree is made once with debootstrap and cached there too.
#
# Encryption: restic and kopia always encrypt; borg runs with -e none and
# Strata without a key. STRATA_BENCH_ENCRYPT=1 gives Strata a key too.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-$root/bin}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/strata/peers
ROUNDS=${ROUNDS:-3}
DISKS=${DISKS:-synthetic realistic}
TOOLS=${TOOLS:-strata borg restic kopia}
ALL_TOOLS=$TOOLS
SETTINGS=${SETTINGS:-embedded deployed}
SYN_SIZE=${SYN_SIZE:-$(((2 << 30) + 12345))}
REAL_SIZE=${REAL_SIZE:-$((3 << 30))}
RESTIC_VERSION=v0.18.1
KOPIA_VERSION=v0.22.3
mkdir -p "$cache"
work=${STRATA_BENCH_DIR:-$(mktemp -d /var/tmp/strata-peers.XXXXXX)}
mkdir -p "$work"
cleanup() {
  [ -n "${devpid:-}" ] && kill "$devpid" 2>/dev/null && wait "$devpid" 2>/dev/null
  [ "${S:-}" = deployed ] && deployed_down
  if [ "${STRATA_BENCH_KEEP:-0}" = 1 ] || [ -n "${STRATA_BENCH_DIR:-}" ]; then
    echo "kept $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
log() { echo "== $*" >&2; }

# --- peers ---------------------------------------------------------------
restic=$cache/restic-$RESTIC_VERSION
kopia=$cache/kopia-$KOPIA_VERSION
need_peers() {
  if [[ " $TOOLS " == *" restic "* ]] && [ ! -x "$restic" ]; then
    log "building restic $RESTIC_VERSION (once per machine)"
    local tmp; tmp=$(mktemp -d)
    (cd "$tmp" && GOWORK=off GOBIN=$tmp go install "github.com/restic/restic/cmd/restic@$RESTIC_VERSION")
    mv "$tmp/restic" "$restic"; rm -rf "$tmp"
  fi
  if [[ " $TOOLS " == *" kopia "* ]] && [ ! -x "$kopia" ]; then
    # kopia's module has replace directives: built from our tools module,
    # kept out of go.work like Jaeger's.
    log "building kopia $KOPIA_VERSION (once per machine, a few minutes)"
    (cd "$root/deploy/tools/kopia" && GOWORK=off CGO_ENABLED=0 go build -o "$kopia.tmp" github.com/kopia/kopia && mv "$kopia.tmp" "$kopia")
  fi
  local pkgs=()
  [[ " $TOOLS " == *" borg "* ]] && ! command -v borg >/dev/null && pkgs+=(borgbackup)
  [[ " $DISKS " == *" realistic "* ]] && ! command -v debootstrap >/dev/null && pkgs+=(debootstrap)
  command -v sfdisk >/dev/null || [ -x /usr/sbin/sfdisk ] || pkgs+=(fdisk)
  [ -x /usr/sbin/mkfs.vfat ] || pkgs+=(dosfstools)
  [ -x /usr/bin/time ] || pkgs+=(time)
  if [ ${#pkgs[@]} -gt 0 ]; then
    log "installing ${pkgs[*]}"
    apt-get update -qq && env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
  fi
}

# --- disks ---------------------------------------------------------------
# scribble IMG PERCENT SEED: overwrite PERCENT of IMG in 4–64 KiB random
# writes at deterministic offsets (the synthetic "next day").
scribble() {
  local img=$1 pct=$2 size total done=0
  size=$(stat -c %s "$img"); total=$((size * pct / 100))
  RANDOM=$3
  while [ $done -lt $total ]; do
    local len=$(((RANDOM % 16 + 1) * 4096))
    local off=$((((RANDOM << 15 | RANDOM) * 4096) % (size - len)))
    dd if=/dev/urandom of="$img" bs=4096 seek=$((off / 4096)) count=$((len / 4096)) conv=notrunc status=none
    done=$((done + len))
  done
}

synthetic() {
  local d=$work/disks/synthetic; mkdir -p "$d"
  [ -f "$d/day1.img" ] && return
  log "synthetic disk: $SYN_SIZE bytes, then 2 % scattered change"
  "$bin/strata" mkdisk --size "$SYN_SIZE" --seed 7 "$d/day0.img"
  cp --sparse=always "$d/day0.img" "$d/day1.img"
  scribble "$d/day1.img" 2 11
}

realistic() {
  local d=$work/disks/realistic; mkdir -p "$d"
  [ -f "$d/day1.img" ] && return
  local tree=$cache/rootfs-bookworm-minbase
  if [ ! -d "$tree/usr" ]; then
    log "debootstrap --variant=minbase bookworm (once per machine)"
    debootstrap --variant=minbase bookworm "$tree.tmp" http://deb.debian.org/debian >/dev/null
    mv "$tree.tmp" "$tree"
  fi
  log "realistic disk: GPT, FAT EFI 256 MiB + ext4 (debian minbase + the Go toolchain)"
  local rootfs=$d/tree; rm -rf "$rootfs"; mkdir -p "$rootfs"
  cp -a "$tree/." "$rootfs/"
  mkdir -p "$rootfs/usr/local" && cp -a "$(go env GOROOT)" "$rootfs/usr/local/go"
  local mib=$((1 << 20)) efi_start=$((1 << 20)) efi_size=$((256 << 20))
  local ext_start=$((efi_start + efi_size)) ext_size=$((REAL_SIZE - efi_start - efi_size - mib))
  truncate -s "$efi_size" "$d/efi.part"
  /usr/sbin/mkfs.vfat -F 32 -n EFI "$d/efi.part" >/dev/null
  mkdir -p "$d/efi/EFI/BOOT"; head -c $((2 << 20)) /dev/urandom >"$d/efi/EFI/BOOT/BOOTX64.EFI"
  MTOOLS_SKIP_CHECK=1 mcopy -s -i "$d/efi.part" "$d/efi/EFI" ::/ 2>/dev/null || true
  truncate -s "$ext_size" "$d/root0.part"
  /usr/sbin/mkfs.ext4 -q -F -d "$rootfs" -L root "$d/root0.part"
  # The next day, through the filesystem: a new database, a log, a
  # rewritten binary.
  cp --sparse=always "$d/root0.part" "$d/root1.part"
  head -c $((24 << 20)) /dev/urandom >"$d/app.db"
  head -c $((16 << 20)) /dev/urandom | base64 >"$d/app.log"
  head -c "$(stat -c %s "$rootfs/usr/bin/bash")" /dev/urandom >"$d/bash.new"
  /usr/sbin/debugfs -w "$d/root1.part" >/dev/null 2>&1 <<EOF
write $d/app.db /var/lib/app.db
write $d/app.log /var/log/app.log
rm /usr/bin/bash
write $d/bash.new /usr/bin/bash
EOF
  for day in 0 1; do
    truncate -s "$REAL_SIZE" "$d/day$day.img"
    printf 'label: gpt\nstart=%d, size=%d, type=U\nstart=%d, size=%d, type=L\n' \
      $((efi_start / 512)) $((efi_size / 512)) $((ext_start / 512)) $((ext_size / 512)) | /usr/sbin/sfdisk -q "$d/day$day.img"
    dd if="$d/efi.part" of="$d/day$day.img" bs=1M seek=$((efi_start / mib)) conv=notrunc,sparse status=none
    dd if="$d/root$day.part" of="$d/day$day.img" bs=1M seek=$((ext_start / mib)) conv=notrunc,sparse status=none
  done
  rm -rf "$rootfs" "$d"/*.part "$d/efi" "$d/app.db" "$d/app.log" "$d/bash.new"
}

# --- measuring -----------------------------------------------------------
# timed NAME CMD…: runs CMD under /usr/bin/time; appends "wall cpu maxrss_kb"
# to $work/t.NAME.
timed() {
  local name=$1; shift
  /usr/bin/time -f "%e %U %S %M" -o "$work/t.tmp" "$@" >"$work/out.$name" 2>&1 || { cat "$work/out.$name" >&2; return 1; }
  awk '{printf "%s %.2f %s\n", $1, $2 + $3, $4}' "$work/t.tmp" >>"$work/t.$name"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hwm_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
size_of() { du -sb "$1" | cut -f1; }

# The image every tool backs up sits at one path (a VM's disk does not
# move); each day is copied there before that day's backup.
stage() { cp --sparse=always "$1" "$work/vm/disk.img"; touch "$work/vm/disk.img"; }
same() { [ "$(sha256sum <"$1")" = "$(sha256sum <"$2")" ] || { echo "restore of $3 differs" >&2; exit 1; }; }

# start_dev DATA: strata dev on the repository in DATA, ready for requests.
start_dev() {
  "$bin/strata" dev --data "$1" --port "${STRATA_NATS_URL##*:}" >"$1.log" 2>&1 &
  devpid=$!
  for _ in $(seq 100); do "$bin/strata" ls >/dev/null 2>&1 && break; sleep 0.1; done
}

run_strata() { # disk
  [ "$S" = deployed ] && { run_strata_deployed "$1"; return; }
  local w=$work/r/strata; rm -rf "$w"; mkdir -p "$w"
  local port=$((14300 + RANDOM % 500))
  unset STRATA_NATS_CA_FILE STRATA_NATS_NKEY_FILE
  export STRATA_NATS_URL=nats://127.0.0.1:$port STRATA_STORE_DIR=$w/data/objects STRATA_LOG_LEVEL=warn OTEL_EXPORTER_OTLP_ENDPOINT=
  if [ "${STRATA_BENCH_ENCRYPT:-0}" = 1 ]; then
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$w/key"; export STRATA_ENCRYPTION_KEY_FILE=$w/key
  fi
  start_dev "$w/data"
  local hz; hz=$(getconf CLK_TCK)
  step() { # name cmd…
    local name=$1; shift
    local c0; c0=$(cpu_ticks "$devpid")
    timed "$name" "$@"
    local c1; c1=$(cpu_ticks "$devpid")
    # add the dev process's CPU over the step and its peak RSS
    local last; last=$(tail -n 1 "$work/t.$name")
    sed -i '$d' "$work/t.$name"
    echo "$last" | awk -v dc=$(((c1 - c0))) -v hz="$hz" -v hwm="$(hwm_kb "$devpid")" '{printf "%s %.2f %d\n", $1, $2 + dc / hz, ($3 > hwm ? $3 : hwm)}' >>"$work/t.$name"
  }
  stage "$work/disks/$1/day0.img"
  step "$S.strata.$1.full" "$bin/strata" backup --vm bench --source "file://$work/vm/disk.img" --wait
  echo "$(size_of "$w/data/objects")" >>"$work/s.$S.strata.$1.full"
  stage "$work/disks/$1/day1.img"
  step "$S.strata.$1.incr" "$bin/strata" backup --vm bench --source "file://$work/vm/disk.img" --wait
  echo "$(size_of "$w/data/objects")" >>"$work/s.$S.strata.$1.incr"
  step "$S.strata.$1.restore" "$bin/strata" restore --vm bench --backup latest --to "$w/restored.img"
  same "$w/restored.img" "$work/disks/$1/day1.img" strata
  # maintenance: the first full's S2 chunks re-encoded with zstd
  step "$S.strata.$1.gc" "$bin/strata" gc --recompress --grace 0s
  echo "$(size_of "$w/data/objects")" >>"$work/s.$S.strata.$1.gc"
  if [ "$1" = realistic ] && command -v qemu-nbd >/dev/null; then strata_bitmap "$1"; fi
  kill "$devpid"; wait "$devpid" 2>/dev/null || true; devpid=
  unset STRATA_ENCRYPTION_KEY_FILE
}

# strata_bitmap DISK: the next day as a change-tracked incremental — a
# qcow2 copy of day 0 with dirty bitmap b1, exported by qemu-nbd -t; after
# the full, the day's changes are written through qemu-io (so the bitmap
# records them, as a running VM's writes would be) and the incremental reads
# only what the bitmap marks. Restored and compared with day 1.
strata_bitmap() {
  local q=$work/vm/disk.qcow2 port=$((15300 + RANDOM % 500)) nbdpid
  # A repository of its own: the one of the file backups holds day 1's
  # chunks already, and an incremental that stores nothing new is not the
  # one borg's rescan is measured against.
  kill "$devpid"; wait "$devpid" 2>/dev/null || true
  export STRATA_STORE_DIR=$work/r/strata/bitmap/objects
  start_dev "$work/r/strata/bitmap"
  qemu-img convert -f raw -O qcow2 "$work/disks/$1/day0.img" "$q"
  qemu-img bitmap --add "$q" b1
  serve() {
    qemu-nbd -r -t -e 8 -x disk -b 127.0.0.1 -p "$port" -f qcow2 -B b1 "$q" >/dev/null 2>&1 &
    nbdpid=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return; sleep 0.05; done
  }
  serve
  "$bin/strata" backup --vm bitmap --source "nbd://127.0.0.1:$port/disk?bitmap=b1" --wait >/dev/null
  kill "$nbdpid"; wait "$nbdpid" 2>/dev/null || true
  # Day 1's changed 64 KiB blocks as qemu-io writes (write -s takes the
  # bytes from the start of a file: one file per run of changed blocks).
  python3 "$root/deploy/bench/diffruns.py" "$work/disks/$1/day0.img" "$work/disks/$1/day1.img" "$work/vm/runs" >"$work/vm/qemu-io.cmds"
  local cmds=() c
  while read -r c; do cmds+=(-c "$c"); done <"$work/vm/qemu-io.cmds"
  qemu-io -f qcow2 "${cmds[@]}" "$q" >/dev/null
  rm -rf "$work/vm/runs"
  serve
  step "$S.strata.$1.bitmap" "$bin/strata" backup --vm bitmap --source "nbd://127.0.0.1:$port/disk?bitmap=b1" --wait
  kill "$nbdpid"; wait "$nbdpid" 2>/dev/null || true
  "$bin/strata" restore --vm bitmap --backup latest --to "$work/r/strata/bitmap.img" >/dev/null
  same "$work/r/strata/bitmap.img" "$work/disks/$1/day1.img" "strata (dirty bitmap)"
  rm -f "$q" "$work/r/strata/bitmap.img"
}

run_borg() {
  local w=$work/r/borg; rm -rf "$w"; mkdir -p "$w"
  export BORG_REPO=$w/repo BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
  borg init -e none >/dev/null
  stage "$work/disks/$1/day0.img"
  (cd "$work/vm" && timed "$S.borg.$1.full" borg create ::day0 disk.img)
  size_of "$w/repo" >>"$work/s.$S.borg.$1.full"
  stage "$work/disks/$1/day1.img"
  (cd "$work/vm" && timed "$S.borg.$1.incr" borg create ::day1 disk.img)
  size_of "$w/repo" >>"$work/s.$S.borg.$1.incr"
  mkdir -p "$w/out"
  (cd "$w/out" && timed "$S.borg.$1.restore" borg extract --sparse ::day1)
  same "$w/out/disk.img" "$work/disks/$1/day1.img" borg
}

run_restic() {
  [ "$S" = deployed ] && { run_restic_deployed "$1"; return; }
  local w=$work/r/restic; rm -rf "$w"; mkdir -p "$w"
  export RESTIC_REPOSITORY=$w/repo RESTIC_PASSWORD=bench
  "$restic" init >/dev/null
  stage "$work/disks/$1/day0.img"
  (cd "$work/vm" && timed "$S.restic.$1.full" "$restic" backup --no-scan disk.img)
  size_of "$w/repo" >>"$work/s.$S.restic.$1.full"
  stage "$work/disks/$1/day1.img"
  (cd "$work/vm" && timed "$S.restic.$1.incr" "$restic" backup --no-scan disk.img)
  size_of "$w/repo" >>"$work/s.$S.restic.$1.incr"
  timed "$S.restic.$1.restore" "$restic" restore latest --target "$w/out"
  same "$(find "$w/out" -name disk.img)" "$work/disks/$1/day1.img" restic
}

run_kopia() {
  [ "$S" = deployed ] && { run_kopia_deployed "$1"; return; }
  local w=$work/r/kopia; rm -rf "$w"; mkdir -p "$w"
  export KOPIA_PASSWORD=bench KOPIA_CONFIG_PATH=$w/repo.config KOPIA_CACHE_DIRECTORY=$w/cache KOPIA_CHECK_FOR_UPDATES=false
  "$kopia" repository create filesystem --path "$w/repo" >/dev/null 2>&1
  stage "$work/disks/$1/day0.img"
  timed "$S.kopia.$1.full" "$kopia" snapshot create "$work/vm"
  size_of "$w/repo" >>"$work/s.$S.kopia.$1.full"
  stage "$work/disks/$1/day1.img"
  timed "$S.kopia.$1.incr" "$kopia" snapshot create "$work/vm"
  size_of "$w/repo" >>"$work/s.$S.kopia.$1.incr"
  local snap; snap=$("$kopia" snapshot list "$work/vm" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')
  timed "$S.kopia.$1.restore" "$kopia" snapshot restore "$snap" "$w/out"
  same "$w/out/disk.img" "$work/disks/$1/day1.img" kopia
}

# --- deployed: the compose stack and the peers on its S3 container -----
# Its own project name and ports, so a deployment already running on this
# machine is left alone; torn down (volumes too) after every round, so each
# round starts from empty repositories.
DEP_S3=${DEP_S3_PORT:-17070}
DEP_NATS=${DEP_NATS_PORT:-14222}
S3_KEY=strata S3_SECRET=strata-secret-key
compose_cmd=$(docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
# the local images deploy/docker/images.sh builds (as the Makefile names them)
export NATS_IMAGE=${NATS_IMAGE:-strata/nats-server:v2.15.2} VERSITYGW_IMAGE=${VERSITYGW_IMAGE:-strata/versitygw:v1.8.0} JAEGER_IMAGE=${JAEGER_IMAGE:-strata/jaeger:v1.76.0}
compose() {
  (cd "$root" && COMPOSE_PROJECT_NAME=stratabench STRATA_SOURCES=$work/vm STRATA_API_TOKEN_PATH=$work/api-token STRATA_NATS_AUTH=$work/nats STRATA_S3_AUTH=$work/s3 \
    STRATA_NATS1_PORT=$DEP_NATS STRATA_NATS2_PORT=$((DEP_NATS + 1)) STRATA_NATS3_PORT=$((DEP_NATS + 2)) \
    STRATA_S3_PORT=$DEP_S3 STRATA_HTTP_PORT=$((DEP_S3 + 1)) JAEGER_UI_PORT=$((DEP_S3 + 2)) $compose_cmd "$@")
}
deployed_images() {
  log "deployed: STRATA_JS_REPLICAS=${STRATA_JS_REPLICAS:-3}, tracing to '${STRATA_OTLP_ENDPOINT-http://jaeger:4318}'; building the images (make images)"
  "$root/deploy/docker/images.sh" >/dev/null
  head -c 24 /dev/urandom | base64 >"$work/api-token"; chmod 644 "$work/api-token"
  "$bin/strata" nats-auth --dir "$work/nats" >/dev/null
  "$bin/strata" s3-roles --dir "$work/s3" >/dev/null
}
deployed_up() {
  compose up -d --scale transfer="${TRANSFERS:-3}" >"$work/compose.log" 2>&1 || { cat "$work/compose.log" >&2; exit 1; }
  local id st
  for _ in $(seq 120); do # as deploy/docker/wait-healthy.sh
    st=running
    for id in $(compose ps -q); do
      case "$(docker inspect --format '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}healthy{{end}} {{.State.ExitCode}}' "$id")" in
        "running healthy "* | "exited healthy 0") ;; # s3-setup runs once
        *) st=starting ;;
      esac
    done
    [ $st = running ] && return
    sleep 1
  done
  compose ps >&2; echo "the compose stack did not become healthy" >&2; exit 1
}
deployed_down() { compose down -v --remove-orphans >/dev/null 2>&1; }

# CPU seconds so far of containers (cgroup v1 or v2), given their ids.
containers_cpu() {
  local total=0 id ns
  for id in "$@"; do
    if [ -f "/sys/fs/cgroup/cpuacct/docker/$id/cpuacct.usage" ]; then
      ns=$(cat "/sys/fs/cgroup/cpuacct/docker/$id/cpuacct.usage")
    else
      ns=$(($(awk '/usage_usec/ {print $2}' /sys/fs/cgroup/*/docker*"$id"*/cpu.stat /sys/fs/cgroup/docker/"$id"/cpu.stat 2>/dev/null | head -n 1) * 1000))
    fi
    total=$((total + ns))
  done
  echo "$total"
}
stack_ids() { compose ps -q; }
# per_container: "name cpu_ns" for every container of the stack.
per_container() {
  local id
  for id in $(stack_ids); do echo "$(docker inspect -f '{{.Name}}' "$id") $(containers_cpu "$id")"; done
}
s3_id() { compose ps -q s3; }
# versitygw's access log (STRATA_S3_ACCESS_LOG, set below): a line per
# request, the operation in field 8. The image is FROM scratch: docker cp.
s3_log() { docker cp "$(s3_id):/tmp/access.log" - 2>/dev/null | tar -xO 2>/dev/null || true; }
export STRATA_S3_ACCESS_LOG=/tmp/access.log
# Bytes a bucket holds in the S3 container's volume.
bucket_size() {
  local vol; vol=$(docker inspect -f '{{range .Mounts}}{{if eq .Destination "/data"}}{{.Source}}{{end}}{{end}}' "$(s3_id)")
  du -sb "$vol/$1" | cut -f1
}
# dstep NAME IDS CMD…: timed, adding the given containers' CPU over the step.
dstep() {
  local name=$1 ids=$2; shift 2
  local c0; c0=$(containers_cpu $ids)
  local q0; q0=$(s3_log | wc -l)
  timed "$name" "$@"
  local c1; c1=$(containers_cpu $ids)
  # S3 requests of the step by operation, from versitygw's access log
  # (the last round's are printed)
  s3_log | tail -n +$((q0 + 1)) | awk '{n[$8]++; t++} END {printf "%d:", t; for (o in n) printf " %s %d", o, n[o]; print ""}' >"$work/q.$name"
  local last; last=$(tail -n 1 "$work/t.$name"); sed -i '$d' "$work/t.$name"
  echo "$last" | awk -v dc=$((c1 - c0)) '{printf "%s %.2f %d\n", $1, $2 + dc / 1e9, $3}' >>"$work/t.$name"
}

run_strata_deployed() { # disk
  local w=$work/r/strata; rm -rf "$w"; mkdir -p "$w"
  export STRATA_NATS_URL=tls://127.0.0.1:$DEP_NATS STRATA_NATS_CA_FILE=$work/nats/ca.pem STRATA_NATS_NKEY_FILE=$work/nats/admin.nk STRATA_S3_ENDPOINT=http://127.0.0.1:$DEP_S3 STRATA_S3_ACCESS_KEY=$S3_KEY STRATA_S3_SECRET_KEY=$S3_SECRET STRATA_LOG_LEVEL=warn OTEL_EXPORTER_OTLP_ENDPOINT=
  unset STRATA_STORE_DIR
  local ids; ids=$(stack_ids | tr '\n' ' ')
  stage "$work/disks/$1/day0.img"
  per_container >"$work/c0"
  dstep "$S.strata.$1.full" "$ids" "$bin/strata" backup --vm bench --source file:///sources/disk.img --wait
  # where the full's CPU went, per container (the last round's is printed)
  per_container | join <(sort "$work/c0") <(sort -) | awk '{printf "%-40s %6.2f s\n", $1, ($3 - $2) / 1e9}' | sort -k2 -rn >"$work/where.$1.full"
  bucket_size strata >>"$work/s.$S.strata.$1.full"
  stage "$work/disks/$1/day1.img"
  dstep "$S.strata.$1.incr" "$ids" "$bin/strata" backup --vm bench --source file:///sources/disk.img --wait
  bucket_size strata >>"$work/s.$S.strata.$1.incr"
  per_container >"$work/c0"
  dstep "$S.strata.$1.restore" "$ids" "$bin/strata" restore --vm bench --backup latest --to "$w/restored.img"
  per_container | join <(sort "$work/c0") <(sort -) | awk '{printf "%-40s %6.2f s\n", $1, ($3 - $2) / 1e9}' | sort -k2 -rn >"$work/where.$1.restore"
  same "$w/restored.img" "$work/disks/$1/day1.img" strata
  dstep "$S.strata.$1.gc" "$ids" "$bin/strata" gc --recompress --grace 0s
  bucket_size strata >>"$work/s.$S.strata.$1.gc"
}

run_restic_deployed() {
  local w=$work/r/restic; rm -rf "$w"; mkdir -p "$w"
  local bucket=restic-bench
  export RESTIC_REPOSITORY=s3:http://127.0.0.1:$DEP_S3/$bucket RESTIC_PASSWORD=bench AWS_ACCESS_KEY_ID=$S3_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET
  "$restic" init >/dev/null
  local ids; ids=$(s3_id)
  stage "$work/disks/$1/day0.img"
  (cd "$work/vm" && dstep "$S.restic.$1.full" "$ids" "$restic" backup --no-scan disk.img)
  bucket_size $bucket >>"$work/s.$S.restic.$1.full"
  stage "$work/disks/$1/day1.img"
  (cd "$work/vm" && dstep "$S.restic.$1.incr" "$ids" "$restic" backup --no-scan disk.img)
  bucket_size $bucket >>"$work/s.$S.restic.$1.incr"
  dstep "$S.restic.$1.restore" "$ids" "$restic" restore latest --target "$w/out"
  same "$(find "$w/out" -name disk.img)" "$work/disks/$1/day1.img" restic
}

run_kopia_deployed() {
  local w=$work/r/kopia; rm -rf "$w"; mkdir -p "$w"
  local bucket=kopia-bench
  export KOPIA_PASSWORD=bench KOPIA_CONFIG_PATH=$w/repo.config KOPIA_CACHE_DIRECTORY=$w/cache KOPIA_CHECK_FOR_UPDATES=false
  # kopia does not create buckets: one signed PUT does.
  curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$S3_KEY:$S3_SECRET" -X PUT "http://127.0.0.1:$DEP_S3/$bucket" \
    -H "x-amz-content-sha256: $(sha256sum </dev/null | cut -d' ' -f1)" >/dev/null
  "$kopia" repository create s3 --bucket=$bucket --endpoint=127.0.0.1:$DEP_S3 --disable-tls \
    --access-key="$S3_KEY" --secret-access-key="$S3_SECRET" >/dev/null 2>&1
  local ids; ids=$(s3_id)
  stage "$work/disks/$1/day0.img"
  dstep "$S.kopia.$1.full" "$ids" "$kopia" snapshot create "$work/vm"
  bucket_size $bucket >>"$work/s.$S.kopia.$1.full"
  stage "$work/disks/$1/day1.img"
  dstep "$S.kopia.$1.incr" "$ids" "$kopia" snapshot create "$work/vm"
  bucket_size $bucket >>"$work/s.$S.kopia.$1.incr"
  local snap; snap=$("$kopia" snapshot list "$work/vm" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')
  dstep "$S.kopia.$1.restore" "$ids" "$kopia" snapshot restore "$snap" "$w/out"
  same "$w/out/disk.img" "$work/disks/$1/day1.img" kopia
}

# --- report --------------------------------------------------------------
# best NAME: the fastest run's "wall cpu rss".
best() { sort -n "$work/t.$1" | head -n 1; }

report() {
  local disk=$1 size
  size=$(stat -c %s "$work/disks/$disk/day0.img")
  printf '\n%s disk (%s bytes logical), %s, best of %s\n' "$disk" "$size" "$S" "$ROUNDS"
  printf '%-8s %-8s %9s %9s %9s %10s %12s\n' tool step wall_s cpu_s rss_MiB MB/s repo_MB
  for tool in $TOOLS; do
    for step in full incr restore; do
      read -r wall cpu rss < <(best "$S.$tool.$disk.$step")
      local repo=""
      case $step in
        full) repo=$(awk '{printf "%.1f", $1 / 1e6}' < <(sort -n "$work/s.$S.$tool.$disk.full" | head -n 1)) ;;
        incr) repo=+$(paste <(sort -n "$work/s.$S.$tool.$disk.full" | head -n 1) <(sort -n "$work/s.$S.$tool.$disk.incr" | head -n 1) | awk '{printf "%.1f", ($2 - $1) / 1e6}') ;;
      esac
      printf '%-8s %-8s %9.2f %9.2f %9.0f %10.0f %12s\n' "$tool" "$step" "$wall" "$cpu" "$((rss / 1024))" "$(awk -v s="$size" -v w="$wall" 'BEGIN {print s / 1e6 / w}')" "$repo"
      echo "$S $disk $tool $step $wall $cpu" >>"$work/summary"
    done
  done
  if [ -s "$work/t.$S.strata.$disk.gc" ]; then
    # Repository size after the full and the next day: Strata after
    # gc --recompress against every peer as it stands.
    read -r wall cpu rss < <(best "$S.strata.$disk.gc")
    local after; after=$(sort -n "$work/s.$S.strata.$disk.gc" | head -n 1)
    printf '%-8s %-8s %9.2f %9.2f %9.0f %10s %12s\n' strata gc "$wall" "$cpu" "$((rss / 1024))" "" "=$(awk -v a="$after" 'BEGIN {printf "%.1f", a / 1e6}')"
    local line="repository after full + next day: strata $(awk -v a="$after" 'BEGIN {printf "%.1f", a / 1e6}') MB after gc --recompress ($(sort -n "$work/s.$S.strata.$disk.incr" | head -n 1 | awk '{printf "%.1f", $1 / 1e6}') before)"
    local smallest=0 sname=""
    for tool in $TOOLS; do
      [ "$tool" = strata ] && continue
      local t; t=$(sort -n "$work/s.$S.$tool.$disk.incr" | head -n 1)
      line="$line, $tool $(awk -v a="$t" 'BEGIN {printf "%.1f", a / 1e6}')"
      if [ "$smallest" = 0 ] || [ "$t" -lt "$smallest" ]; then smallest=$t; sname=$tool; fi
    done
    [ "$smallest" != 0 ] && line="$line: $(awk -v a="$after" -v b="$smallest" 'BEGIN {printf "%.3f", a / b}')x the smallest ($sname)"
    echo "$line"
  fi
  if [ -s "$work/t.$S.strata.$disk.bitmap" ]; then
    read -r wall cpu rss < <(best "$S.strata.$disk.bitmap")
    printf '%-8s %-8s %9.2f %9.2f %9.0f %10.0f %12s\n' strata bitmap "$wall" "$cpu" "$((rss / 1024))" "$(awk -v s="$size" -v w="$wall" 'BEGIN {print s / 1e6 / w}')" ""
    awk -v set="$S" -v d="$disk" -v w="$wall" '$1 == set && $2 == d && $4 == "incr" && $3 == "borg" {printf "strata incremental through the dirty bitmap: %.1fx the speed of borg rescanning\n", $5 / w}' "$work/summary"
  fi
  if [[ " $TOOLS " == *" strata "* ]]; then
    for step in full incr restore; do
      awk -v set="$S" -v d="$disk" -v st="$step" '$1 != set || $2 != d || $4 != st {next}
        $3 != "strata" {if (!b || $5 < b) {b = $5; bt = $3; bc = $6}} $3 == "strata" {s = $5; c = $6}
        END {if (b) printf "strata %s: %.2fx the speed of the best peer (%s), %.2fx its CPU\n", st, b / s, bt, c / bc}' "$work/summary"
    done
  fi
}

need_peers
log "Strata: STRATA_PACKS=${STRATA_PACKS:-true}, STRATA_COMPRESSION=${STRATA_COMPRESSION:-auto}"
mkdir -p "$work/vm" "$work/r"
for S in $SETTINGS; do
  TOOLS=$ALL_TOOLS
  if [ "$S" = deployed ]; then
    TOOLS=$(printf '%s\n' $ALL_TOOLS | grep -vx borg | tr '\n' ' ') # borg has no S3 backend
    deployed_images
  fi
  for disk in $DISKS; do
    "$disk"
    for round in $(seq "$ROUNDS"); do
      [ "$S" = deployed ] && deployed_up
      # alternate the order, so no tool always runs on a warm page cache
      tools=($TOOLS); [ $((round % 2)) = 0 ] && tools=($(printf '%s\n' "${tools[@]}" | tac))
      for tool in "${tools[@]}"; do
        log "$S $disk round $round: $tool"
        "run_$tool" "$disk"
        rm -rf "$work/r/$tool"
      done
      [ "$S" = deployed ] && deployed_down
    done
    report "$disk"
    if [ "$S" = deployed ] && [ -f "$work/where.$disk.full" ]; then
      echo "strata full: CPU by container (last round)"; cat "$work/where.$disk.full"
      echo "strata restore: CPU by container besides the client's (last round)"; cat "$work/where.$disk.restore"
    fi
    if [ "$S" = deployed ]; then
      echo "S3 requests per step (last round): total: by operation"
      for tool in $TOOLS; do for step in full incr restore; do
        [ -f "$work/q.$S.$tool.$disk.$step" ] && printf '%-8s %-8s %s\n' "$tool" "$step" "$(cat "$work/q.$S.$tool.$disk.$step")"
      done; done
    fi
  done
done
if [[ " $ALL_TOOLS " == *" strata "* ]]; then
  # The codecs a chunk may be stored with, on the same disks (README,
  # Measured, "Compression").
  for disk in $DISKS; do
    log "codecs on the $disk disk"
    (cd "$root/pkg" && STRATA_BENCH_IMAGE=$work/disks/$disk/day0.img go test -run '^$' -bench Codecs -benchtime 2x ./chunk/ | grep Benchmark)
  done
fi
