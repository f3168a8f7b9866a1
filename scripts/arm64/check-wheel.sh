#!/usr/bin/env bash
# Shows the aarch64 wheel's tags (WHEEL file), what auditwheel says about it
# (manylinux policy, external libraries) and the glibc symbol versions its
# extension needs (auditwheel from the build/arm64/tools venv).
source "$(dirname "$0")/common.sh"

shopt -s nullglob
wheels=("$WHEELS"/hybridsync-*-"$CPTAG"-*_aarch64.whl)
[ ${#wheels[@]} -eq 1 ] || { echo "expected one aarch64 wheel in $WHEELS" >&2; exit 1; }
whl=${wheels[0]}
echo "wheel: ${whl#"$ROOT"/}"

"$ROOT/scripts/arm64/tools.sh" >/dev/null
TPY=$TOOLS/bin/python

log "tags (WHEEL)"
"$TPY" - "$whl" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.endswith(".dist-info/WHEEL"))
    sys.stdout.write(z.read(name).decode())
PY
log "auditwheel show"
audit=$("$TOOLS/bin/auditwheel" show "$whl")
echo "$audit"
# The policy auditwheel finds must be one the wheel is tagged with.
policy=$(tr -s ' \n' '  ' <<<"$audit" | grep -o 'platform tag: "[^"]*"' | head -1 | cut -d'"' -f2)
tags=$(basename "$whl" .whl | awk -F- '{print $NF}' | tr . ' ')
if [[ " $tags " != *" $policy "* ]]; then
    echo "the wheel is tagged '$tags' but auditwheel finds '$policy'" >&2
    exit 1
fi
echo "policy check: tagged $tags, auditwheel agrees"

log "extension: machine, the glibc versions and libraries it needs"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$TPY" -m zipfile -e "$whl" "$tmp"
so=$(echo "$tmp"/hybridsync/_core*.so)
echo "$(basename "$so"): $(aarch64-linux-gnu-readelf -h "$so" | awk -F': +' '/Machine|Type/ {printf "%s; ", $2}')"
aarch64-linux-gnu-objdump -T "$so" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tr '\n' ' '
echo
aarch64-linux-gnu-readelf -d "$so" | grep NEEDED
