#!/usr/bin/env bash
# Builds the Rust core's tests for aarch64-unknown-linux-gnu with Debian's
# cargo and runs them under qemu-aarch64-static (the arm64 libc that the
# aarch64 std package brings, through multiarch, is found with -L /).
# Arguments are passed to cargo test (e.g. -- --test-threads=1).
source "$(dirname "$0")/common.sh"
cd "$ROOT"

"$ROOT/scripts/arm64/setup-toolchain.sh" >/dev/null
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$QEMU -L /"

log "cargo test -p hybridsync-core --target $TARGET (runner: $CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER)"
t0=$(now)
$CARGO test --locked -p hybridsync-core --target "$TARGET" --no-run
echo "test-arm64-rust: tests built in $(elapsed "$t0") s"
t1=$(now)
$CARGO test --locked -p hybridsync-core --target "$TARGET" "$@"
echo "test-arm64-rust: tests ran in $(elapsed "$t1") s under qemu (total $(elapsed "$t0") s)"
