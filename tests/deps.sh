#!/usr/bin/env bash
# Installs what the integration tests run beside outpost, from Debian, if missing:
# skopeo (pushes and pulls), curl (checks the TLS certificate with OpenSSL), tar (docker save
# archives), docker-registry (distribution 2.8: an upstream for the mirror tests),
# python3-prometheus-client (a real Prometheus text parser for the metrics tests).
set -euo pipefail
missing=()
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
command -v curl >/dev/null 2>&1 || missing+=(curl ca-certificates)
command -v tar >/dev/null 2>&1 || missing+=(tar)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
# Debian's own python3 (where apt installs modules), whatever else is first on the PATH.
/usr/bin/python3 -c 'import prometheus_client.parser' >/dev/null 2>&1 ||
  missing+=(python3 python3-prometheus-client)
if ((${#missing[@]})); then
  echo "tests/deps.sh: installing ${missing[*]}" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
