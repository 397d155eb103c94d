#!/usr/bin/env bash
# Runs Outpost's whole test suite. Installs what the tests need first (skopeo, from Debian).
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v skopeo >/dev/null 2>&1; then
  echo "test.sh: installing skopeo (the integration tests push and pull with it)" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends skopeo
fi
cargo test --locked "$@"
