#!/usr/bin/env bash
# Runs the pytest suite with Debian's aarch64 CPython 3.11 under
# qemu-aarch64-static, against the aarch64 wheel installed in build/arm64/site/.
# Arguments are passed to pytest (default: the whole suite).
source "$(dirname "$0")/common.sh"
cd "$ROOT"

"$ROOT/scripts/arm64/prepare-python.sh"
python_env

log "pytest under qemu-aarch64-static: ${*:-the whole suite}"
t0=$(now)
rc=0
"$PY" -m pytest -p arm64_plugin -p no:cacheprovider "$@" || rc=$?
echo "test-arm64: pytest took $(elapsed "$t0") s under qemu (exit $rc)"
exit $rc
