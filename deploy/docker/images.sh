#!/usr/bin/env bash
# make images: one FROM-scratch image per Strata service and the CLI, plus
# local images of the servers we run (nats-server, versitygw, Jaeger). No
# registry is needed: binaries are compiled on the host (static,
# CGO_ENABLED=0) and COPYed in; the classic builder is used so no BuildKit
# frontend image is ever pulled. Unchanged binaries hit the layer cache.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$root/bin
servers=$("$root/deploy/tools/servers.sh" | tail -1)
tag=${STRATA_TAG:-dev}
export DOCKER_BUILDKIT=0
ctx=$root/bin/images
rm -rf "$ctx" && mkdir -p "$ctx"
certs=/etc/ssl/certs/ca-certificates.crt

# image NAME TAG ENTRY DATADIR FILE... : context with the files, /tmp and
# DATADIR owned by the unprivileged user the image runs as.
image() {
  local name=$1 itag=$2 entry=$3 data=$4; shift 4
  local d=$ctx/$(echo "$name" | tr / _)
  mkdir -p "$d/empty"
  cp "$certs" "$d/ca-certificates.crt"
  local copies="" dd
  # DATADIR may name several directories (space-separated).
  for dd in $data; do copies+="COPY --chown=65534:65534 empty $dd"$'\n'; done
  for f in "$@"; do
    cp "$f" "$d/"
    local base; base=$(basename "$f")
    case "$base" in
      *.yaml) copies+="COPY $base /etc/$base"$'\n' ;;
      *) copies+="COPY $base /$base"$'\n' ;;
    esac
  done
  cat >"$d/Dockerfile" <<DOCKERFILE
FROM scratch
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --chown=65534:65534 empty /tmp
$copies
USER 65534:65534
ENTRYPOINT ["/$entry"]
DOCKERFILE
  docker build -q -t "$name:$itag" "$d" >/dev/null 2> >(grep -v -e DEPRECATED -e "legacy builder" -e "BuildKit is currently" -e "environment-variable" -e "^$" >&2)
  echo "built $name:$itag"
}

# Every service binary is /app in its image, so health checks read the same
# everywhere: /app healthcheck.
# dedup keeps its pack index in /data (a volume in the compose file).
for s in scheduler snapshotter transfer dedup merge verifier api; do
  mkdir -p "$ctx/src-$s" && cp "$bin/strata-$s" "$ctx/src-$s/app"
  data=""; [ "$s" = dedup ] && data=/data
  [ "$s" = api ] && data=/restores # the restores volume, owned by the image's user
  image "strata/$s" "$tag" app "$data" "$ctx/src-$s/app"
done
image strata/cli "$tag" strata "" "$bin/strata"
# The vSphere demo's simulator (test scaffolding, deploy/docker/vsphere-demo.yml).
image strata/vcsim "$tag" strata-vcsim "" "$bin/strata-vcsim"
# Binaries named as their images expect.
cp "$servers/nats-server-${NATS_VERSION:-v2.15.2}" "$ctx/nats-server"
cp "$servers/versitygw-${VERSITYGW_VERSION:-v1.8.0}" "$ctx/versitygw"
cp "$servers/jaeger-${JAEGER_VERSION:-v1.76.0}" "$ctx/jaeger"
cp "$servers/prometheus-${PROMETHEUS_VERSION:-v0.316.0}" "$ctx/prometheus"
image strata/nats-server "${NATS_VERSION:-v2.15.2}" nats-server /data "$ctx/nats-server" "$bin/probe"
# /iam: its internal accounts (the services' own credentials, strata s3-roles).
image strata/versitygw "${VERSITYGW_VERSION:-v1.8.0}" versitygw "/data /iam" "$ctx/versitygw" "$bin/probe"
image strata/jaeger "${JAEGER_VERSION:-v1.76.0}" jaeger "" "$ctx/jaeger" "$bin/probe" "$root/deploy/docker/jaeger.yaml"
# Its configuration and rules are mounted from deploy/prometheus; /data is its TSDB.
image strata/prometheus "${PROMETHEUS_VERSION:-v0.316.0}" prometheus /data "$ctx/prometheus" "$bin/probe"
