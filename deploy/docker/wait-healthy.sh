#!/usr/bin/env bash
# Waits until every container of the compose project is running and, where
# it has a health check, healthy; a one-shot container (s3-setup) must have
# exited 0. Usage: wait-healthy.sh COMPOSE-COMMAND…
set -euo pipefail
for i in $(seq 120); do
  ids=$("$@" ps -q)
  bad=0
  for id in $ids; do
    st=$(docker inspect --format '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}healthy{{end}} {{.State.ExitCode}} {{.HostConfig.RestartPolicy.Name}}' "$id")
    case "$st" in
      "running healthy "*) ;;
      "exited healthy 0 no") ;;
      "exited healthy "*" no") echo "a one-shot container failed: $(docker inspect --format '{{.Name}}' "$id")" >&2; docker logs "$id" >&2; exit 1 ;;
      *) bad=$((bad + 1)) ;;
    esac
  done
  if [ -n "$ids" ] && [ $bad -eq 0 ]; then echo "all $(echo $ids | wc -w) containers healthy"; exit 0; fi
  sleep 1
done
echo "stack not healthy after 120 s:" >&2
"$@" ps >&2
exit 1
