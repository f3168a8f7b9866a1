#!/usr/bin/env bash
# Installs the hybridsync aarch64 wheel, its runtime dependencies and the test
# dependencies as aarch64 cp311 wheels into build/arm64/site/ (a --target
# folder for the emulated interpreter's PYTHONPATH). pip resolves the runtime
# dependencies from the wheel's own metadata. fast-diff-match-patch (benchmarks
# only) has no aarch64 wheel and is not needed by the tests.
source "$(dirname "$0")/common.sh"

shopt -s nullglob
wheels=("$WHEELS"/hybridsync-*-"$CPTAG"-*_aarch64.whl)
[ ${#wheels[@]} -eq 1 ] || { echo "no aarch64 wheel in $WHEELS: run make wheel-arm64" >&2; exit 1; }

TEST_DEPS=(pytest hypothesis pytest-benchmark diff-match-patch)
PLATFORM=(--only-binary=:all: --implementation cp --python-version "$PYVER"
          --abi "$CPTAG" --abi abi3 --abi none
          --platform manylinux_2_34_aarch64 --platform manylinux_2_28_aarch64
          --platform manylinux2014_aarch64 --platform any)
"$ROOT/scripts/arm64/tools.sh" >/dev/null
PIP=("$TOOLS/bin/python" -m pip --disable-pip-version-check)
export PIP_ROOT_USER_ACTION=ignore

rm -rf "$DEPS" "$SITE"
mkdir -p "$DEPS"
log "pip download (aarch64, cp311): runtime dependencies of the wheel + ${TEST_DEPS[*]}"
"${PIP[@]}" download -q "${PLATFORM[@]}" -d "$DEPS" "${wheels[0]}" "${TEST_DEPS[@]}"
rm -f "$DEPS"/hybridsync-*.whl
"${PIP[@]}" install -q --no-deps "${PLATFORM[@]}" --target "$SITE" "$DEPS"/*.whl "${wheels[0]}"
ls "$DEPS" | sed 's/^/  /'
