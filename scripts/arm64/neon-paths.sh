#!/usr/bin/env bash
# Which tests reach the hand-written NEON code of the extension (the memchr
# crate's aarch64 substring search) in the aarch64 wheel. Runs pytest
# (arguments as for pytest; default the whole suite) under qemu's gdb stub;
# gdb sets one-shot breakpoints on the searchers that memmem::find dispatches
# to and re-arms them before each test, so the report says, per test file,
# how many tests reached each searcher at least once:
#
#   searcher_kind_neon                    NEON packed-pair search (needle 2..32 bytes)
#   prefilter_kind_neon                   NEON prefilter of Two-Way (needle > 32 bytes)
#   searcher_kind_one_byte                memchr, NEON (1-byte needle)
#   searcher_kind_two_way_with_prefilter  Two-Way, scalar (needle > 32 bytes)
#
# Haystacks under 64 bytes go to scalar Rabin-Karp and memmem::rfind is
# scalar: neither is counted. Needs the symbol table, which the zig-linked
# wheel lacks: run with ARM64_LINKER=gcc (as `make neon-arm64` does; same
# compiler, crates and LTO, another linker). Installs gdb-multiarch if missing.
# The per-test log is kept in build/arm64/neon-paths.log.
source "$(dirname "$0")/common.sh"
cd "$ROOT"

command -v gdb-multiarch >/dev/null || {
    SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        gdb-multiarch >/dev/null
}
"$ROOT/scripts/arm64/prepare-python.sh" >/dev/null
python_env
out=$ARM64/neon-paths.log
export HYBRIDSYNC_ARM64_NEON_MARK=$out

so=$(echo "$SITE"/hybridsync/_core*.so)
mapfile -t syms < <(aarch64-linux-gnu-nm "$so" | awk '
    /memmem8searcher[0-9]+(searcher_kind_(neon|one_byte|two_way_with_prefilter)|prefilter_kind_neon)17h/ {
        print $3 }')
[ ${#syms[@]} -gt 0 ] || {
    echo "no memmem searcher symbols in $so (stripped? build with ARM64_LINKER=gcc)" >&2
    exit 1
}

port=$((20000 + $$ % 20000))
cmds=$(mktemp)
trap 'rm -f "$cmds"' EXIT
{
    echo "set pagination off"; echo "set confirm off"; echo "set sysroot /"
    echo "file $GUEST_PY"; echo "set breakpoint pending on"
    echo "target remote :$port"
    n=${#syms[@]}
    echo "break getpgid"
    echo "commands"; echo "silent"; echo "enable $(seq -s ' ' 2 $((n + 1)))"; echo "continue"; echo "end"
    i=1
    for s in "${syms[@]}"; do
        i=$((i + 1))
        name=$(sed -E 's/^_ZN6memchr6memmem8searcher[0-9]+//; s/17h[0-9a-f]{16}E$//' <<<"$s")
        echo "break $s"
        echo "commands"; echo "silent"; echo "printf \"NEON-HIT $name\\n\""
        echo "disable $i"; echo "continue"; echo "end"
    done
    echo "continue"
} >"$cmds"

log "pytest under qemu + gdb: ${*:-the whole suite} (log: ${out#"$ROOT"/})"
t0=$(now)
rc=0
: >"$out"
"$QEMU" -g "$port" -L "$SYSROOT" -0 "$PY" "$GUEST_PY" -m pytest -p arm64_plugin \
    -p no:cacheprovider -q "$@" >"$out.pytest" 2>&1 &
qpid=$!
sleep 1
gdb-multiarch -batch -x "$cmds" >>"$out" 2>/dev/null || true
wait "$qpid" || rc=$?
tail -1 "$out.pytest"

# Per test file: tests run, and tests that reached each searcher.
awk -v names="searcher_kind_neon prefilter_kind_neon searcher_kind_one_byte searcher_kind_two_way_with_prefilter" '
    BEGIN { n = split(names, name, " ") }
    /^NEON-TEST / { test = $2; file = test; sub(/::.*/, "", file); run[file]++; files[file] = 1; next }
    /^NEON-HIT / {
        where = test == "" ? "(collection)" : file
        files[where] = 1
        if (test == "" && ((where, $2) in hits)) next
        hits[where, $2]++
    }
    END {
        printf "  %-30s %5s", "tests reaching ... in", "tests"
        for (i = 1; i <= n; i++) printf "  %s", name[i]
        printf "\n"
        for (f in files) {
            printf "  %-30s %5s", f, (f in run) ? run[f] : "-"
            for (i = 1; i <= n; i++) printf "  %*d", length(name[i]), hits[f, name[i]]
            printf "\n"
        }
    }' "$out" | { IFS= read -r header; echo "$header"; sort; }
echo "neon-arm64: took $(elapsed "$t0") s (pytest exit $rc)"
exit $rc
