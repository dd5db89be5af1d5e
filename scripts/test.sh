#!/usr/bin/env bash
# The whole test suite: installs what it needs, checks formatting and lints,
# then runs unit and integration tests (as root: real namespaces, cgroups,
# overlayfs and veth). Ends with one "N passed, N failed" line.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
if [ "$(id -u)" != 0 ]; then echo "the test suite needs root" >&2; exit 1; fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo build --workspace --quiet
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast -- --test-threads=4 2>&1 | tee "$log" || status=$?
# Sum every runner's counts (libtest's "test result:" lines and the runtime's
# own harness line) into one closing line.
passed=$(grep -Eo '(^|result: ok\. |result: FAILED\. )[0-9]+ passed' "$log" | grep -Eo '[0-9]+' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | grep -Eo '[0-9]+' | awk '{s+=$1} END {print s+0}')
echo "${passed:-0} passed, ${failed:-0} failed"
exit "$status"
