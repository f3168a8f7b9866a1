#!/usr/bin/env bash
# Makes the emulated test interpreter ready: the aarch64 sysroot, the wheel
# and the dependencies installed into build/arm64/site/, and the launcher.
source "$(dirname "$0")/common.sh"

"$ROOT/scripts/arm64/setup-toolchain.sh" >/dev/null
"$ROOT/scripts/arm64/sysroot.sh"
"$ROOT/scripts/arm64/install-site.sh"

cat >"$PY" <<LAUNCHER
#!/bin/sh
exec $QEMU -L "$SYSROOT" -0 "\$0" "$GUEST_PY" "\$@"
LAUNCHER
chmod +x "$PY"

python_env
"$PY" -c 'import platform, sys; print("platform.machine() ==", repr(platform.machine()), "| sys.executable =", sys.executable)'
