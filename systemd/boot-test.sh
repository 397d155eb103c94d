#!/usr/bin/env bash
# Runs the units under a real systemd: boots a Debian bookworm container (debootstrap +
# systemd-nspawn; it shares this host's network, so everything listens on 127.0.0.1 only),
# installs Outpost as systemd/README.md says, and checks: Type=notify start (status text),
# the master key from LoadCredential, the admin socket under DynamicUser, a push and pull,
# a clean stop, socket activation through outpost.socket, and HTTPS with the key handed over
# as a credential.
# Needs root; installs debootstrap and systemd-container (Debian) if missing; the root file
# system is kept in target/boot-test/root (~200 MB) for the next run.
# Usage: systemd/boot-test.sh [OUTPOST_BINARY]   (default: target/release/outpost, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
[ "$(id -u)" -eq 0 ] || { echo "boot-test.sh: needs root (debootstrap, systemd-nspawn)" >&2; exit 1; }
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
if ((${#missing[@]})); then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
bin="${1:-target/release/outpost}"
[ -x "$bin" ] || cargo build --release --locked
root="$top/target/boot-test/root"
if [ ! -x "$root/lib/systemd/systemd" ]; then
  rm -rf "$root"; mkdir -p "$(dirname "$root")"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm "$root" \
    http://deb.debian.org/debian >"$top/target/boot-test/debootstrap.log"
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
fail() { echo "boot-test.sh: FAILED: $*" >&2; exit 1; }

# The install steps of systemd/README.md, on 127.0.0.1:$port.
install -m 755 "$bin" "$root/usr/local/bin/outpost"
install -m 644 systemd/outpost.service "$root/etc/systemd/system/"
sed "s|^ListenStream=.*|ListenStream=127.0.0.1:$port|" systemd/outpost.socket >"$root/etc/systemd/system/outpost.socket"
rm -rf "$root/etc/outpost" "$root/var/lib/private/outpost" "$root/var/lib/outpost" "$root/var/log/journal"/*
install -d -m 755 "$root/etc/outpost"
sed -n "/<<'JSON'/,/^JSON$/p" systemd/README.md | sed '1d;$d' |
  sed "s|\"listen\": \"[^\"]*\"|\"listen\": \"127.0.0.1:$port\"|" >"$root/etc/outpost/outpost.json"
grep -q "127.0.0.1:$port" "$root/etc/outpost/outpost.json" || fail "no config in systemd/README.md"
chroot "$root" /usr/local/bin/outpost key generate /etc/outpost/master.key >/dev/null
chroot "$root" systemctl enable outpost.service >/dev/null 2>&1

log="$top/target/boot-test/console.log"
systemd-nspawn -D "$root" -b --register=no --keep-unit -M outpost-boot-test >"$log" 2>&1 &
nspawn=$!
inside() { nsenter -t "$init" -a "$@"; }
cleanup() { [ -n "${init:-}" ] && inside systemctl poweroff >/dev/null 2>&1; sleep 2; kill "$nspawn" 2>/dev/null || true; }
trap cleanup EXIT
init=""
# nspawn's first child only sets up mounts and exits; the container's init is the child that
# became systemd (seen racing in CI on a freshly bootstrapped root).
for _ in $(seq 100); do init=$(pgrep -P "$nspawn" -x systemd | head -1 || true); [ -n "$init" ] && break; sleep 0.2; done
[ -n "$init" ] || fail "the container did not start: $(tail -5 "$log")"
for _ in $(seq 150); do
  state=$(inside systemctl is-active outpost.service 2>/dev/null || true)
  [ "$state" = active ] || [ "$state" = failed ] && break; sleep 0.4
done
[ "$state" = active ] || fail "outpost.service is '$state': $(inside journalctl -u outpost --no-pager -o cat | tail -5)"
journal() { inside journalctl -b -u outpost --no-pager -o cat; }
# journald takes the service's stderr asynchronously: look again for a few seconds.
journal_has() { for _ in $(seq 25); do journal | grep "$1" >/dev/null && return 0; sleep 0.2; done; return 1; }

status=$(inside systemctl show outpost -p StatusText --value)
[ "$status" = "serving http on 127.0.0.1:$port" ] || fail "status text '$status'"
[ "$(inside systemctl show outpost -p WatchdogUSec --value)" = 30s ] || fail "WatchdogSec not in effect"
watchdog() { inside systemctl show outpost -p WatchdogTimestampMonotonic --value; }
first_ping=$(watchdog)
journal_has "master key id .* from /run/credentials/outpost.service/outpost-master-key" ||
  fail "the master key did not come from the credential"
owner=$(inside stat -c %U "/var/lib/private/outpost/outpost.redb")
[ "$owner" != root ] || fail "the store belongs to root, not the dynamic user"
echo "boot-test-password" | inside /usr/local/bin/outpost user add admin --config /etc/outpost/outpost.json --data-dir /var/lib/outpost >/dev/null
url="http://127.0.0.1:$port"
[ "$(curl -s -o /dev/null -w '%{http_code}' -u admin:boot-test-password "$url/v2/")" = 200 ] || fail "GET /v2/ with the new user"
[ "$(curl -s -o /dev/null -w '%{http_code}' -X POST "$url/v2/site/app/blobs/uploads/")" = 401 ] || fail "anonymous push not refused"
blob="outpost under systemd $port"; digest="sha256:$(printf %s "$blob" | sha256sum | cut -d' ' -f1)"
code=$(curl -s -o /dev/null -w '%{http_code}' -u admin:boot-test-password -X POST -H 'Content-Type: application/octet-stream' \
  --data-binary "$blob" "$url/v2/site/app/blobs/uploads/?digest=$digest")
[ "$code" = 201 ] || fail "push: $code"
[ "$(curl -s "$url/v2/site/app/blobs/$digest")" = "$blob" ] || fail "pull"

# systemd records each WATCHDOG=1 (every 5 s): it must have heard one since the start.
for _ in $(seq 40); do [ "$(watchdog)" != "$first_ping" ] && break; sleep 0.25; done
[ "$(watchdog)" != "$first_ping" ] || fail "no WATCHDOG=1 reached systemd"

inside systemctl stop outpost
[ "$(inside systemctl show outpost -p Result --value)" = success ] || fail "stop: not a clean exit"
journal_has "outpost::server: stopped" || fail "no clean shutdown in the journal"

inside systemctl start outpost.socket
[ "$(inside systemctl is-active outpost.service)" = inactive ] || fail "the service ran before any connection"
[ "$(curl -s "$url/v2/site/app/blobs/$digest")" = "$blob" ] || fail "pull through the activated socket"
[ "$(inside systemctl is-active outpost.service)" = active ] || fail "the socket did not start the service"
journal_has "listening socket passed by systemd" || fail "the service did not take the passed socket"

# TLS as systemd/README.md says: the key handed over as a credential (root's file otherwise).
inside systemctl stop outpost.socket outpost.service
chroot "$root" /usr/local/bin/outpost tls self-signed --host 127.0.0.1 --out /etc/outpost >/dev/null
[ "$(stat -c %a "$root/etc/outpost/outpost.key")" = 600 ] || fail "the TLS key is not root-only"
sed -i 's|^#LoadCredential=outpost-tls-key|LoadCredential=outpost-tls-key|' "$root/etc/systemd/system/outpost.service"
python3 - "$root/etc/outpost/outpost.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["tls"] = {"certFile": "/etc/outpost/outpost.crt",
            "keyFile": "/run/credentials/outpost.service/outpost-tls-key"}
json.dump(c, open(sys.argv[1], "w"))
PY
inside systemctl daemon-reload
inside systemctl start outpost.service || fail "TLS start: $(journal | tail -3)"
status=$(inside systemctl show outpost -p StatusText --value)
[ "$status" = "serving https on 127.0.0.1:$port" ] || fail "TLS status text '$status'"
got=$(curl -s --cacert "$root/etc/outpost/outpost.crt" "https://127.0.0.1:$port/v2/site/app/blobs/$digest")
[ "$got" = "$blob" ] || fail "pull over TLS"
echo "boot-test.sh: outpost.service and outpost.socket work under systemd $(inside systemctl --version | head -1 | cut -d' ' -f2) (Type=notify, watchdog, DynamicUser, LoadCredential, admin socket, push/pull, clean stop, socket activation, TLS key as a credential)"
