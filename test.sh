#!/usr/bin/env bash
# Runs Outpost's whole test suite. Installs what the tests need first (skopeo, curl, from Debian).
set -euo pipefail
cd "$(dirname "$0")"
# skopeo: the integration tests push and pull with it; curl: the HTTPS test checks the
# certificate with OpenSSL through it.
missing=()
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
command -v curl >/dev/null 2>&1 || missing+=(curl ca-certificates)
if ((${#missing[@]})); then
  echo "test.sh: installing ${missing[*]}" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
cargo test --locked "$@"
