#!/usr/bin/env bash
# Builds and runs the kspan agent. Arguments go to kspan (default: `run`).
#   ./run.sh                 # trace this host; one line per span on a terminal (OTLP JSON
#                            # lines when piped; to OTEL_EXPORTER_OTLP_ENDPOINT when set)
#                            # until Ctrl-C
#   ./run.sh run --endpoint http://collector:4317 --protocol grpc
#   ./run.sh check           # can kspan run on this host?
#   ./run.sh events --comm curl --min-duration 1ms
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup
echo "[run] building kspan (release)" >&2
cargo build --release --quiet -p agent
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
if [ $# -eq 0 ]; then set -- run; fi
echo "[run] target/release/kspan $*" >&2
if [ -n "$SUDO" ]; then SUDO="sudo --preserve-env"; fi
exec $SUDO target/release/kspan "$@"
