#!/usr/bin/env bash
# Checks the units with systemd-analyze: `verify` (syntax, directives, the binary it starts;
# any warning fails)
# and `security --offline` (fails above an exposure of 2.0, where the unit stands at 1.2).
# Installs Debian's systemd package for systemd-analyze if missing (as root).
# Usage: systemd/verify.sh [OUTPOST_BINARY]   (default: target/debug/outpost, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v systemd-analyze >/dev/null 2>&1; then
  [ "$(id -u)" -eq 0 ] || { echo "verify.sh: needs systemd-analyze: apt-get install systemd" >&2; exit 1; }
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends systemd
fi
bin="${1:-target/debug/outpost}"
[ -x "$bin" ] || cargo build --locked
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
dir="$(mktemp -d)"; trap 'rm -rf "$dir"' EXIT
# The units name /usr/local/bin/outpost, where the install steps put it; verify checks that
# the program exists, so check copies that name the binary just built.
for u in outpost.service outpost.socket; do
  sed "s|/usr/local/bin/outpost|$bin|g" "systemd/$u" > "$dir/$u"
done
# Unknown or misspelt directives are only warnings to systemd: any complaint fails here.
complaints="$(cd "$dir" && systemd-analyze verify --man=no outpost.service outpost.socket 2>&1)" || true
if [ -n "$complaints" ]; then
  echo "$complaints" >&2; echo "verify.sh: systemd-analyze verify complained (above)" >&2; exit 1
fi
report="$(cd "$dir" && systemd-analyze security --offline=yes --no-pager outpost.service 2>&1)"
level="$(sed -n 's/.*Overall exposure level for outpost.service: \([0-9.]*\).*/\1/p' <<<"$report")"
[ -n "$level" ] || { echo "$report" >&2; echo "verify.sh: no exposure level" >&2; exit 1; }
echo "systemd units verified; exposure level $level (systemd-analyze security)"
awk -v l="$level" 'BEGIN { exit !(l <= 2.0) }' || {
  echo "$report" | grep -v '✓' >&2
  echo "verify.sh: exposure $level is above 2.0: a hardening setting was lost" >&2
  exit 1
}
