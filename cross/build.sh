#!/usr/bin/env bash
# Builds a release binary of Outpost for TARGET and prints where it is, its size and what
# `file` says. Usage: cross/build.sh TARGET [cargo build args...]
#   TARGET: x86_64-unknown-linux-gnu, aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf,
#           aarch64-unknown-linux-musl, armv7-unknown-linux-musleabihf (static)
# Uses rustup's target if installed, else Debian's rustc-web (installed when run as root).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
usage_target "${1:-}"
T="$1"; shift
ensure_toolchain "$T"
cargo_env "$T"
cd "$ROOT"
if [ "$MODE" = native ]; then
  cargo build --release --locked "$@"
  BIN="$ROOT/target/release/outpost"
else
  say "building $T with the $MODE toolchain${BUILD_STD:+ (std from source)}"
  "${CARGO[@]}" build --release --locked --target "$T" "${BUILD_STD[@]}" "$@"
  BIN="$CARGO_TARGET_DIR/$T/release/outpost"
fi
size=$(stat -c %s "$BIN")
says="$(file -b "$BIN")"
echo "$BIN"
echo "size: $size bytes ($(awk -v s="$size" 'BEGIN{printf "%.2f MiB", s/1048576}'))"
echo "$says"
# A wrong linker or a missing --target would leave a host binary here: say so loudly.
case "$says" in *"$FILE_SAYS"*) ;; *) die "$BIN is not a $T binary (file: $says)" ;; esac
if [ "$LIBC" = musl ]; then
  case "$says" in *"statically linked"*|*"static-pie"*) ;; *) die "$BIN is not static" ;; esac
fi
