#!/usr/bin/env bash
# Runs Outpost's whole test suite for TARGET under qemu-user: the test programs and the
# outpost binary they start are both TARGET binaries (tests/common reads OUTPOST_RUNNER to
# start it through qemu: there is no binfmt_misc here). skopeo and curl run natively.
# Usage: cross/test.sh TARGET [cargo test args...]
#        cross/test.sh --release-binary TARGET [cargo test args...]
#   --release-binary: the native test programs against TARGET's release binary (as built by
#   cross/build.sh) under qemu: the end-to-end check of what ships.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
release=""
if [ "${1:-}" = --release-binary ]; then release=1; shift; fi
usage_target "${1:-}"
T="$1"; shift
ensure_toolchain "$T"
"$ROOT/tests/deps.sh"
cargo_env "$T"
cd "$ROOT"
runner_var="CARGO_TARGET_${UPPER}_RUNNER"
export OUTPOST_RUNNER="${!runner_var:-}"
if [ -n "$release" ]; then
  if [ "$MODE" = native ]; then OUTPOST_BIN="$ROOT/target/release/outpost"
  else OUTPOST_BIN="$CARGO_TARGET_DIR/$T/release/outpost"; fi
  export OUTPOST_BIN
  [ -x "$OUTPOST_BIN" ] || die "no $OUTPOST_BIN: run cross/build.sh $T first"
  say "native tests against $OUTPOST_BIN${OUTPOST_RUNNER:+ under ${OUTPOST_RUNNER%% *}}"
  cargo test --locked "$@"
elif [ "$MODE" = native ]; then
  cargo test --locked "$@"
else
  # The property tests' thousands of cases say little more under emulation than natively,
  # where ./test.sh runs them all: 64 per test keep the emulated suite quick.
  export PROPTEST_CASES="${PROPTEST_CASES:-64}"
  say "tests for $T under ${OUTPOST_RUNNER%% *} ($MODE toolchain${BUILD_STD:+, std from source})"
  "${CARGO[@]}" test --locked --target "$T" "${BUILD_STD[@]}" "$@"
fi
