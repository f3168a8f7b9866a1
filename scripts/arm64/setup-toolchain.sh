#!/usr/bin/env bash
# Installs (only what is missing) the Debian packages for cross-building and
# running aarch64 code: Rust 1.96 with the aarch64 std, the aarch64 C
# cross-linker, the arm64 libc (for `qemu-aarch64-static -L /`) and
# qemu-user-static. Idempotent; needs root (or sudo).
source "$(dirname "$0")/common.sh"

PKGS=(rustc-web cargo-web gcc-aarch64-linux-gnu libc6-dev-arm64-cross
      libstd-rust-web-dev:arm64 libc6:arm64 qemu-user-static)

SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo

missing=()
for p in "${PKGS[@]}"; do
    st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$st" = installed ] || missing+=("$p")
done
[ -x "$QEMU" ] || missing+=(qemu-user-static)

if [ ${#missing[@]} -eq 0 ]; then
    echo "arm64 toolchain: all packages present"
else
    log "installing ${missing[*]}"
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        $SUDO dpkg --add-architecture arm64
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${PKGS[@]}"
fi

/usr/bin/rustc --version
/usr/bin/rustc --print sysroot | sed 's/^/rustc sysroot: /'
test -d "$(/usr/bin/rustc --print sysroot)/lib/rustlib/$TARGET/lib" \
    || { echo "the aarch64 std of /usr/bin/rustc is missing" >&2; exit 1; }
