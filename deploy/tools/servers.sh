#!/usr/bin/env bash
# Builds the real servers Strata's tests and images use — nats-server,
# versitygw (S3), Prometheus, mailpit (SMTP), Jaeger — into ${XDG_CACHE_HOME:-~/.cache}/strata/bin,
# named <name>-<version>, so a fresh clone on the same machine (CI) reuses
# them and a pinned version change rebuilds just that one. Static binaries
# (CGO_ENABLED=0), usable FROM scratch.
set -euo pipefail
NATS_VERSION=${NATS_VERSION:-v2.15.2}
VERSITYGW_VERSION=${VERSITYGW_VERSION:-v1.8.0}
JAEGER_VERSION=${JAEGER_VERSION:-v1.76.0}
PROMETHEUS_VERSION=${PROMETHEUS_VERSION:-v0.316.0}
MAILPIT_VERSION=${MAILPIT_VERSION:-v1.33.1}
here=$(cd "$(dirname "$0")" && pwd)
bin=${XDG_CACHE_HOME:-$HOME/.cache}/strata/bin
mkdir -p "$bin"
export CGO_ENABLED=0

install() { # name module version
  local out=$bin/$1-$3
  [ -x "$out" ] && return 0
  echo "building $1 $3 (once per machine)…" >&2
  local tmp; tmp=$(mktemp -d)
  GOBIN=$tmp go install "$2@$3"
  mv "$tmp/$1" "$out.tmp" && mv "$out.tmp" "$out"
  rm -rf "$tmp"
}

install nats-server github.com/nats-io/nats-server/v2 "$NATS_VERSION"
install versitygw github.com/versity/versitygw/cmd/versitygw "$VERSITYGW_VERSION"
# Prometheus's Go module tags (v0.3xx) are its 3.x releases; built without
# the web UI's assets (the API, rules and alerts are all we use).
install prometheus github.com/prometheus/prometheus/cmd/prometheus "$PROMETHEUS_VERSION"
# A real SMTP server (with STARTTLS and AUTH) for the job reports' tests,
# read back through its HTTP API.
install mailpit github.com/axllent/mailpit "$MAILPIT_VERSION"

# Jaeger has replace directives, so `go install` refuses it: build it from
# our small tools module (kept out of go.work so its dependency graph never
# touches ours).
out=$bin/jaeger-$JAEGER_VERSION
if [ ! -x "$out" ]; then
  echo "building jaeger $JAEGER_VERSION (once per machine, a few minutes)…" >&2
  (cd "$here/jaeger" && GOWORK=off go build -o "$out.tmp" github.com/jaegertracing/jaeger/cmd/jaeger && mv "$out.tmp" "$out")
fi
echo "$bin"
