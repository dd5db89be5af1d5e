#!/usr/bin/env bash
# The whole test suite: installs what it needs, checks formatting and lints,
# then runs unit and integration tests (as root: real namespaces, cgroups,
# overlayfs and veth).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
if [ "$(id -u)" != 0 ]; then echo "the test suite needs root" >&2; exit 1; fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo build --workspace --quiet
cargo test --workspace -- --test-threads=4
