#!/usr/bin/env bash
# Runs Outpost's whole test suite. Installs what the tests need first (tests/deps.sh).
set -euo pipefail
cd "$(dirname "$0")"
tests/deps.sh
cargo test --locked "$@"
# The whole suite also runs the vendored tiny_http's unit tests (pace, chunked bodies).
if [ $# -eq 0 ]; then cargo test --locked -p tiny_http --lib; fi
