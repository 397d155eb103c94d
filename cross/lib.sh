# Sourced by cross/build.sh and cross/test.sh: which toolchain builds TARGET, what it needs,
# and the cargo environment (linker, C compiler for ring, qemu runner) for that target.
# Two ways to get a Rust standard library for an ARM target:
#   rustup  — `rustup target add TARGET` (a developer's machine);
#   debian  — Debian bookworm's rustc-web 1.96: a prebuilt arm64 std, or `-Z build-std`
#             from rust-web-src for the others (machines where rustup cannot download).
# See ../shared/CROSS.md for the recipe this follows and its traps.

CROSS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$CROSS_DIR/.." && pwd)"
TARGETS="x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf"

die() { echo "cross: $*" >&2; exit 1; }
say() { echo "cross: $*" >&2; }

usage_target() {
  local t="${1:-}"
  [ -n "$t" ] || die "usage: $(basename "$0") TARGET   (one of: $TARGETS)"
  case " $TARGETS " in *" $t "*) ;; *) die "unknown target '$t'; use one of: $TARGETS" ;; esac
}

host_target() { echo "$(uname -m)-unknown-linux-gnu"; }

# Per target: gcc prefix (linker, C compiler for ring), qemu, Debian arch, sysroot for qemu.
target_facts() {
  case "$1" in
    aarch64-unknown-linux-gnu) GCC=aarch64-linux-gnu; QEMU=qemu-aarch64; DEB_ARCH=arm64; LIBC=gnu
      FILE_SAYS="ARM aarch64" ;;
    armv7-unknown-linux-gnueabihf) GCC=arm-linux-gnueabihf; QEMU=qemu-arm; DEB_ARCH=armhf; LIBC=gnu
      FILE_SAYS="ARM, EABI5" ;;
    aarch64-unknown-linux-musl) GCC=aarch64-linux-gnu; QEMU=qemu-aarch64; DEB_ARCH=arm64; LIBC=musl
      MUSL_GCC=aarch64-linux-musl-gcc; FILE_SAYS="ARM aarch64" ;;
    armv7-unknown-linux-musleabihf) GCC=arm-linux-gnueabihf; QEMU=qemu-arm; DEB_ARCH=armhf; LIBC=musl
      MUSL_GCC=arm-linux-musleabihf-gcc; FILE_SAYS="ARM, EABI5" ;;
    x86_64-unknown-linux-gnu) GCC=x86_64-linux-gnu; QEMU=""; DEB_ARCH=amd64; LIBC=gnu
      FILE_SAYS="x86-64" ;;
  esac
  UPPER="$(echo "$1" | tr 'a-z-' 'A-Z_')"
  LOWER="$(echo "$1" | tr '-' '_')"
}

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }

rustup_has() { command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx "$1"; }

debian_rustc_ok() {
  [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] || return 1
  local v; v="$(/usr/bin/rustc --version | awk '{print $2}')"
  # Cargo.toml's rust-version is 1.90
  [ "$(printf '%s\n1.90.0\n' "$v" | sort -V | head -1)" = "1.90.0" ]
}

# Debian packages TARGET needs in the debian way (prints them, one per line).
debian_packages() {
  target_facts "$1"
  echo rustc-web; echo cargo-web; echo file
  [ -n "$QEMU" ] && echo qemu-user
  [ "$1" = x86_64-unknown-linux-gnu ] && return
  echo "gcc-$GCC"
  case "$1" in
    aarch64-unknown-linux-gnu) echo "libc6-dev-arm64-cross"; echo "libstd-rust-web-dev:arm64" ;;
    armv7-unknown-linux-gnueabihf) echo "libc6-dev-armhf-cross"; echo rust-web-src ;;
    # musl-dev:ARCH also brings the musl gcc wrapper (aarch64-linux-musl-gcc, ...)
    *-musl*) echo rust-web-src; echo "musl-dev:$DEB_ARCH"; echo "libc6-dev-$DEB_ARCH-cross" ;;
  esac
}

# Installs what TARGET is missing when root on Debian; otherwise says what to install.
ensure_toolchain() {
  local t="$1" missing=()
  target_facts "$t"
  if [ "$t" = "$(host_target)" ]; then MODE=native; return; fi
  if rustup_has "$t"; then
    MODE=rustup
    for p in "gcc-$GCC" qemu-user file; do command -v dpkg-query >/dev/null && ! have_pkg "$p" && missing+=("$p"); done
  else
    MODE=debian
    while read -r p; do have_pkg "$p" || missing+=("$p"); done < <(debian_packages "$t")
  fi
  if ((${#missing[@]})); then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
      die "building $t needs: ${missing[*]}
  either: rustup target add $t  (plus a cross linker: apt-get install gcc-$GCC qemu-user)
  or, on Debian bookworm as root: re-run this script (it installs Debian's rustc-web 1.96 and
  the cross toolchain), or apt-get install ${missing[*]}  (see ../shared/CROSS.md)"
    fi
    install_debian "$t" "${missing[@]}"
  fi
  if [ "$MODE" = debian ] && ! debian_rustc_ok; then
    die "Debian's rustc at /usr/bin/rustc is $(/usr/bin/rustc --version 2>/dev/null || echo missing); Outpost needs >= 1.90 (rustc-web from bookworm-security)"
  fi
}

install_debian() {
  local t="$1"; shift
  target_facts "$t"
  local native; native="$(dpkg --print-architecture)"
  if printf '%s\n' "$@" | grep -q ":$DEB_ARCH\$"; then
    if ! dpkg --print-foreign-architectures | grep -qx "$DEB_ARCH"; then
      say "adding Debian architecture $DEB_ARCH"
      dpkg --add-architecture "$DEB_ARCH"
    fi
    # bookworm-security's armhf index has been inconsistent on the mirror, and apt then drops
    # the whole source (and with it rustc-web 1.96): keep that source to native + arm64.
    local src=/etc/apt/sources.list.d/debian.sources
    if [ -f "$src" ] && ! awk '/^Suites: bookworm-security/{s=1} s&&/^Architectures:/{f=1} /^$/{s=0} END{exit !f}' "$src"; then
      say "limiting bookworm-security in $src to $native arm64"
      sed -i "s/^Suites: bookworm-security\$/Suites: bookworm-security\nArchitectures: $native arm64/" "$src"
    fi
  fi
  say "installing: $*"
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
}

# Exports the cargo environment for TARGET and sets CARGO (command array) and BUILD_STD.
cargo_env() {
  local t="$1"
  target_facts "$t"
  BUILD_STD=()
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target/cross}"
  case "$MODE" in
    native) CARGO=(cargo); unset CARGO_TARGET_DIR; return ;;
    rustup) CARGO=(cargo) ;;
    debian)
      # Debian's own cargo and rustc, whatever rustup puts first on PATH.
      CARGO=(env RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc /usr/bin/cargo)
      if [ ! -d "/usr/lib/rustlib/$t/lib" ]; then
        # No prebuilt std for this target: build it from rust-web-src.
        export RUSTC_BOOTSTRAP=1
        BUILD_STD=(-Z build-std=std,panic_unwind)
      fi ;;
  esac
  case "$t" in
    aarch64-* | armv7-*)
      # Size first on the edge targets (armv7's goal is <= 4 MiB stripped): opt-level s for
      # all but the crates Cargo.toml's [profile.release.package.*] keep at 3 (redb, sha2,
      # ring). A caller's own setting wins.
      export CARGO_PROFILE_RELEASE_OPT_LEVEL="${CARGO_PROFILE_RELEASE_OPT_LEVEL:-s}" ;;
  esac
  # armv7 in Thumb-2, as Debian's armhf is compiled: a quarter smaller than A32 code, about
  # as fast on the Cortex-A cores of the boards this targets.
  TARGET_RUSTFLAGS=""
  case "$t" in armv7-*) TARGET_RUSTFLAGS="-C target-feature=+thumb-mode" ;; esac
  [ -n "$TARGET_RUSTFLAGS" ] && export "CARGO_TARGET_${UPPER}_RUSTFLAGS=$TARGET_RUSTFLAGS"
  export "CARGO_TARGET_${UPPER}_LINKER=$GCC-gcc"
  export "CC_${LOWER}=$GCC-gcc" "AR_${LOWER}=$GCC-ar"
  if [ "$LIBC" = gnu ]; then
    # -E LD_LIBRARY_PATH: without it qemu spins forever at the first thread spawn (CROSS.md).
    export "CARGO_TARGET_${UPPER}_RUNNER=$QEMU -L /usr/$GCC -E LD_LIBRARY_PATH=/usr/$GCC/lib"
  else
    export "CARGO_TARGET_${UPPER}_RUNNER=$QEMU"
    [ "$MODE" = debian ] && musl_env "$t"
  fi
}

# Static musl with Debian's packages: musl's gcc wrapper, and the cross gcc's libgcc_eh as the
# libunwind std links (Debian has no LLVM libunwind for these targets).
musl_env() {
  local t="$1" arch shim
  target_facts "$t"
  arch="${t%%-*}"
  shim="$CARGO_TARGET_DIR/musl-shim/$arch"
  if [ ! -f "$shim/libunwind.a" ]; then
    mkdir -p "$shim"
    cp -f "$("$GCC-gcc" -print-file-name=libgcc_eh.a)" "$shim/libunwind.a"
    if [ "$arch" = aarch64 ]; then
      # gcc 12's aarch64 libgcc_eh calls glibc's _dl_find_object(); musl has none.
      "$MUSL_GCC" -O2 -c "$CROSS_DIR/musl-shim/dl_find_object.c" -o "$shim/dl_find_object.o"
      "$GCC-ar" r "$shim/libunwind.a" "$shim/dl_find_object.o" 2>/dev/null
    fi
  fi
  export "CC_${LOWER}=$MUSL_GCC" "CARGO_TARGET_${UPPER}_LINKER=$MUSL_GCC"
  export "CARGO_TARGET_${UPPER}_RUSTFLAGS=-C link-self-contained=no -L $shim -C link-arg=-lgcc${TARGET_RUSTFLAGS:+ $TARGET_RUSTFLAGS}"
}
