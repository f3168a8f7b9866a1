#!/usr/bin/env bash
# Builds build/arm64/sysroot/: Debian 12's aarch64 CPython 3.11 and the
# libraries it (and the dependencies' wheels) load, unpacked from the arm64
# .deb files with `dpkg -x` (no chroot, nothing installed on the host).
# Run under `qemu-aarch64-static -L build/arm64/sysroot`. Kept when complete.
source "$(dirname "$0")/common.sh"

PKGS=(
    python3.11 python3.11-minimal libpython3.11 libpython3.11-minimal libpython3.11-stdlib
    libc6 libgcc-s1 libstdc++6 gcc-12-base libexpat1 zlib1g libssl3 libbz2-1.0 libcrypt1
    libffi8 liblzma5 libzstd1 libsqlite3-0 libncursesw6 libtinfo6 libreadline8 libuuid1
    libdb5.3 libgdbm6 libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3
    libkrb5support0 libkeyutils1 libcom-err2
)
STAMP=$SYSROOT/.complete
want=$(printf '%s\n' "${PKGS[@]}" | sort | sha1sum | cut -c1-12)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    echo "sysroot: present (${SYSROOT#"$ROOT"/})"
else
    "$ROOT/scripts/arm64/setup-toolchain.sh" >/dev/null   # arm64 package lists, qemu
    debs=$ARM64/debs
    rm -rf "$debs"
    mkdir -p "$debs"
    log "apt-get download (arm64): ${PKGS[*]}"
    # media-types is Architecture: all (mime.types for the mimetypes module).
    (cd "$debs" && apt-get download -q -o APT::Sandbox::User=root \
        "${PKGS[@]/%/:arm64}" media-types)
    rm -rf "$SYSROOT"
    mkdir -p "$SYSROOT"
    shopt -s nullglob
    for p in "${PKGS[@]}" media-types; do
        deb=("$debs/${p}"_*_arm64.deb "$debs/${p}"_*_all.deb)
        [ ${#deb[@]} -eq 1 ] || { echo "not one .deb for $p: ${deb[*]}" >&2; exit 1; }
        dpkg -x "${deb[0]}" "$SYSROOT"
    done
    echo "$want" >"$STAMP"
    echo "sysroot: $(du -sh "$SYSROOT" | cut -f1) in ${SYSROOT#"$ROOT"/}"
fi

# The interpreter must start, load its C modules and run threads (a wrong
# loader/libc pair hangs on the first thread, hence the timeout).
timeout 120 "$QEMU" -L "$SYSROOT" "$SYSROOT/usr/bin/python$PYVER" -I -c '
import platform, threading, ssl, ctypes, sqlite3, lzma, bz2, zlib, decimal, uuid
t = threading.Thread(target=lambda: None); t.start(); t.join()
print("sysroot python:", platform.python_version(), platform.machine(), ssl.OPENSSL_VERSION)
'
