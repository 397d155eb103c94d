#!/usr/bin/env bash
# Runs Outpost's whole test suite. Installs what the tests need first (tests/deps.sh).
set -euo pipefail
cd "$(dirname "$0")"
tests/deps.sh
cargo test --locked "$@"
