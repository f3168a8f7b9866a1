# shellcheck shell=bash disable=SC2034
# Shared settings of the scripts/arm64/ tools (sourced, not run).
# Everything they make goes under build/arm64/ (git-ignored).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ARM64=${ARM64_BUILD:-$ROOT/build/arm64}
TARGET=aarch64-unknown-linux-gnu
PYVER=3.11
CPTAG=cp311

# The linker of the wheel (see build-wheel.sh): zig (default) or gcc. A gcc
# build keeps its own wheel and site folders (wheels-gcc/, site-gcc/).
ARM64_LINKER=${ARM64_LINKER:-zig}
sfx=; [ "$ARM64_LINKER" = zig ] || sfx=-$ARM64_LINKER
WHEELS=$ARM64/wheels$sfx    # the hybridsync aarch64 wheel
DEPS=$ARM64/deps            # downloaded aarch64 wheels of the dependencies
SITE=$ARM64/site$sfx        # install target for the emulated interpreter
SYSROOT=$ARM64/sysroot      # aarch64 Debian packages unpacked (CPython 3.11)
QEMU=/usr/bin/qemu-aarch64-static

TOOLS=$ARM64/tools          # venv with maturin, ziglang and auditwheel

# Debian's Rust toolchain (with the aarch64 std), not rustup's: the rustup
# toolchain comes first on PATH, so name the Debian binaries by full path,
# and put links to them first on PATH for tools that run plain `cargo`.
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc CARGO=/usr/bin/cargo
mkdir -p "$ARM64/bin"
for tool in cargo rustc rustdoc; do ln -sfn "/usr/bin/$tool" "$ARM64/bin/$tool"; done
export PATH=$ARM64/bin:$PATH
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_DIR=$ARM64/target
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

log() { printf '\n== %s\n' "$*" >&2; }

# Seconds since the epoch, with a fraction, for the timing lines.
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# The emulated interpreter: a host-side launcher next to the guest python
# (written by prepare-python.sh). qemu hands the guest argv[0] = the
# launcher, so sys.executable is the launcher and the tests' child
# interpreters (subprocess with sys.executable) run under qemu too, without a
# binfmt_misc registration; its folder lets Python find its prefix (the
# sysroot's /usr) as for the real binary.
GUEST_PY=$SYSROOT/usr/bin/python$PYVER
PY=$SYSROOT/usr/bin/python$PYVER-qemu

python_env() {
    export PYTHONPATH=$SITE:$ROOT/scripts/arm64
    export HYBRIDSYNC_ARM64_SITE=$SITE
    export PYTHONNOUSERSITE=1
    export PYTHONDONTWRITEBYTECODE=1
    export HYBRIDSYNC_TRACES=${HYBRIDSYNC_TRACES:-$ROOT/../shared/data/editing-traces}
    unset PYTHONHOME
}
