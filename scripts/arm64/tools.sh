#!/usr/bin/env bash
# The build's Python tools in build/arm64/tools/ (a venv): maturin (the
# project's pin), ziglang (zig as linker for a manylinux_2_28 wheel) and
# auditwheel. Created once; kept while complete.
source "$(dirname "$0")/common.sh"

STAMP=$TOOLS/.complete
if [ ! -f "$STAMP" ]; then
    log "tools venv: maturin, ziglang, auditwheel"
    rm -rf "$TOOLS"
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/pip" install --quiet --disable-pip-version-check \
        "maturin>=1.7,<2.0" ziglang auditwheel
    touch "$STAMP"
fi
echo "tools: $("$TOOLS/bin/maturin" --version), zig $("$TOOLS/bin/python" -m ziglang version)," \
    "$("$TOOLS/bin/auditwheel" --version | cut -d' ' -f1-2)"
