#!/usr/bin/env bash
# Cross-builds the hybridsync manylinux aarch64 wheel for CPython 3.11 with
# Debian's Rust toolchain into build/arm64/wheels/, then shows its tags and
# the manylinux audit (check-wheel.sh).
#
# ARM64_LINKER=zig (default): maturin links with `zig cc` against glibc 2.28
#   symbol versions (ziglang from PyPI): a manylinux_2_28 wheel, the policy of
#   the wheels that .github/workflows/wheels.yml builds and publishes.
#   zig strips the symbol table too (the dynamic symbols stay).
# ARM64_LINKER=gcc: Debian's aarch64-linux-gnu-gcc and glibc 2.36, into
#   build/arm64/wheels-gcc/; the wheel then needs glibc 2.34 (manylinux_2_34:
#   pthread symbols moved into libc). Keeps the symbol table (neon-paths.sh).
source "$(dirname "$0")/common.sh"
cd "$ROOT"

LINKER=$ARM64_LINKER
"$ROOT/scripts/arm64/setup-toolchain.sh"
"$ROOT/scripts/arm64/tools.sh"

case $LINKER in
    # maturin sets zig as the linker only where none is set already.
    zig) args=(--zig --compatibility manylinux_2_28)
         unset CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER ;;
    gcc) args=() ;;
    *) echo "ARM64_LINKER must be zig or gcc, not $LINKER" >&2; exit 2 ;;
esac

rm -rf "$WHEELS"
mkdir -p "$WHEELS"
log "maturin build --release --target $TARGET -i python$PYVER ${args[*]}"
t0=$(now)
# The tools venv first on PATH: maturin finds zig as `python3 -m ziglang`.
PATH=$TOOLS/bin:$PATH "$TOOLS/bin/maturin" build --release --target "$TARGET" \
    -i "python$PYVER" "${args[@]}" --out "$WHEELS"
echo "wheel-arm64: built in $(elapsed "$t0") s (linker: $LINKER)"

"$ROOT/scripts/arm64/check-wheel.sh"
