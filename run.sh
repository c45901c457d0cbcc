#!/usr/bin/env bash
# Builds and runs the kspan agent. Arguments go to kspan (default: `events`).
#   ./run.sh                 # stream kernel events as JSON lines until Ctrl-C
#   ./run.sh check           # can kspan run on this host?
#   ./run.sh events --comm curl --min-duration 1ms
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup
echo "[run] building kspan (release)" >&2
cargo build --release --quiet -p agent
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
if [ $# -eq 0 ]; then set -- events; fi
echo "[run] target/release/kspan $*" >&2
exec $SUDO target/release/kspan "$@"
