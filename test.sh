#!/usr/bin/env bash
# Runs the whole test suite: set-up, format and lint checks, unit tests, then the privileged
# kernel integration tests and the end-to-end OTLP tests (root; one at a time since they
# share kernel state).
set -euo pipefail
cd "$(dirname "$0")"
KSPAN_SETUP_TEST=1 scripts/setup
echo "[test] cargo fmt --check" >&2
cargo fmt --all -- --check
echo "[test] cargo clippy -D warnings" >&2
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "[test] unit tests" >&2
cargo test --workspace --lib --bins --quiet
echo "[test] Kubernetes manifests (kubernetes-validate --strict, offline) and pod metadata (local API)" >&2
cargo test -p agent --test deploy --quiet
cargo test -p agent --test k8s --quiet
echo "[test] kernel integration tests (root, one at a time)" >&2
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo -E env PATH=$PATH"; fi
$SUDO cargo test -p agent --test kernel -- --test-threads=1
echo "[test] end-to-end tests (root; real kernel -> kspan run -> Python OTLP receiver): export, sampling, syscall/TCP spans, request spans" >&2
for t in otlp sampling spans requests; do
  echo "[test]   $t" >&2
  $SUDO cargo test -p agent --test "$t" -- --test-threads=1
done
echo "[test] kspan hist/top tests (root; strace, bpftrace and tmux as ground truth and driver)" >&2
$SUDO cargo test -p agent --test hist -- --test-threads=1
echo "[test] container image (static binary in an empty image; podman + runc)" >&2
$SUDO scripts/image
$SUDO cargo test -p agent --test image -- --test-threads=1
