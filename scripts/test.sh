#!/usr/bin/env bash
# Runs every flint test: unit tests, probe-guest integration tests and the Linux smoke test.
# Sets the machine up first (scripts/setup.sh). With CI=true a missing /dev/kvm or guest image is a
# failure, never a skip.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
# The Linux smoke test prints its boot time; --nocapture shows it.
cargo test --workspace --release -- --nocapture --test-threads=2 2>&1 | tee target/test.log
