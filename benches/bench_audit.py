#!/usr/bin/env python3
"""What the audit log costs: sync cycles with and without it, side by side in one run.

Every ratio is taken between configurations measured in the same process, interleaved: each
round runs one step of every configuration, the order rotating from round to round, so that
they share the machine's noise. CPU is ``time.process_time`` of the whole step (the edit or
the KV append, then one cycle: ``f = client.outgoing(); server.incoming(f);
r = server.outgoing(); client.incoming(r)``), both replicas of a pair together.

1. **Edit cycle** (a real editing trace, ``seph-blog1``): one client/server pair per
   configuration; each round applies the trace's next transaction to the client's document
   and runs one cycle. Configurations: durable replicas (``fsync=False``, files in a fresh
   temporary folder) without and with the audit log (its default policy: a signed head every
   4,096 entries, so each side signs four in the 16,384 rounds; and with a head every 1,024
   entries, the former default), and in-memory replicas without and with it
   (``audit=True``). Reported: CPU per cycle, the ratio with/without, and the wire bytes: the
   share of the traffic that the signed heads (published through the metadata) add.
2. **Large KV cycle**: an in-memory owner and mirror of a q4_0 cache of 32 layers x 8 KV heads
   x head_dim 128 holding about 1 GiB (``--quick``: 63 MiB), with and without the audit log;
   each round appends 256 tokens (one new page per layer, K/V and head: 9.4 MB of rows) and
   runs one cycle. The audit log hashes the new rows on both sides (BLAKE3).
3. **Long document**: one document of about 1 MB (``--quick``: 200 KB) of text lines; each
   round appends a line, and every fifth round also rewrites a word in its middle; durable
   and in-memory pairs with and without the log. Each version's content hash is BLAKE3 of
   the whole new text: the log rehashes a long document from where a version differs.

Usage::

    python benches/bench_audit.py [--quick] [--part edit|kv|long|all] [--out benches/results]

It writes ``audit.md`` and ``audit.json`` (``audit-quick.*`` with ``--quick``) into
``--out`` (with ``--part``, ``audit-edit.*``, ``audit-kv.*`` or ``audit-long.*``).
Absolute numbers depend on the machine and are never asserted.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hybridsync import KVCache, Link, Memory
from hybridsync.audit import AuditPolicy
from hybridsync.traces import apply_splices, load_trace

SEED = 20_261_207
PAGE_TOKENS = 256
GEOMETRY = (32, 8, 128)
KV_PAGES, QUICK_KV_PAGES = 114, 7
KV_ROUNDS, QUICK_KV_ROUNDS = 15, 4
EDIT_ROUNDS, QUICK_EDIT_ROUNDS = 16384, 400
LONG_BYTES, QUICK_LONG_BYTES = 1_000_000, 200_000
LONG_ROUNDS, QUICK_LONG_ROUNDS = 400, 60
TRACE = "seph-blog1"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Pair:
    """A client/server pair of replicas and the CPU and bytes of its steps."""

    def __init__(self, client: Memory, server: Memory, **link: Any) -> None:
        self.client, self.server = client, server
        self.cl = Link(client, server.replica_id, role="client", epoch=9, **link)
        self.sv = Link(server, client.replica_id, role="server", **link)
        self.cpu: list[float] = []
        self.wire = 0

    def cycle(self) -> None:
        f = self.cl.outgoing()
        assert f is not None
        self.sv.incoming(f)
        r = self.sv.outgoing()
        assert r is not None
        self.cl.incoming(r)
        self.wire += len(f) + len(r)

    def step(self, edit: Callable[[Pair], None]) -> None:
        c0 = time.process_time()
        edit(self)
        self.cycle()
        self.cpu.append(time.process_time() - c0)

    def settle(self) -> None:
        for _ in range(50):
            if self.cl.idle and self.sv.idle:
                return
            self.cycle()


def interleave(pairs: dict[str, Pair], n: int, edit: Callable[[int, Pair], None]) -> None:
    names = list(pairs)
    for i in range(n):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            pairs[name].step(lambda p, i=i: edit(i, p))  # type: ignore[misc]


def edit_cycle(quick: bool, tmp: Path) -> dict[str, Any]:
    trace = load_trace(TRACE)
    n = min(QUICK_EDIT_ROUNDS if quick else EDIT_ROUNDS, len(trace.txns))
    pairs = {
        "durable": Pair(
            Memory("c0", path=tmp / "c0.db", fsync=False, audit=False),
            Memory("s0", path=tmp / "s0.db", fsync=False, audit=False),
        ),
        "durable + audit": Pair(
            Memory("c1", path=tmp / "c1.db", fsync=False),
            Memory("s1", path=tmp / "s1.db", fsync=False),
        ),
        "durable + audit, a head every 1,024 entries": Pair(
            Memory("c4", path=tmp / "c4.db", fsync=False, audit=AuditPolicy(sign_every=1024)),
            Memory("s4", path=tmp / "s4.db", fsync=False, audit=AuditPolicy(sign_every=1024)),
        ),
        "in memory": Pair(Memory("c2"), Memory("s2")),
        "in memory + audit": Pair(Memory("c3", audit=True), Memory("s3", audit=True)),
    }
    for p in pairs.values():
        p.client.text["blog.md"] = trace.start
        p.settle()
        p.wire = 0

    def edit(i: int, p: Pair) -> None:
        p.client.text["blog.md"] = apply_splices(p.client.text["blog.md"], trace.txns[i])

    interleave(pairs, n, edit)
    for p in pairs.values():
        p.settle()
        assert p.server.text["blog.md"] == p.client.text["blog.md"]
    expected = trace.replay(n)
    assert all(p.client.text["blog.md"] == expected for p in pairs.values())
    rows = {name: _summary(p) for name, p in pairs.items()}
    for base, audited in (
        ("durable", "durable + audit"),
        ("durable", "durable + audit, a head every 1,024 entries"),
        ("in memory", "in memory + audit"),
    ):
        rows[audited]["cpu_ratio"] = rows[audited]["cpu_total_s"] / rows[base]["cpu_total_s"]
        rows[audited]["median_ratio"] = rows[audited]["cpu_median_us"] / rows[base]["cpu_median_us"]
        rows[audited]["wire_ratio"] = rows[audited]["wire_bytes"] / rows[base]["wire_bytes"]
    audited_log = pairs["durable + audit"].client.audit
    assert audited_log is not None
    for p in pairs.values():
        p.client.close()
        p.server.close()
    return {"trace": TRACE, "cycles": n, "rows": rows, "entries": audited_log.seq}


def long_document(quick: bool, tmp: Path) -> dict[str, Any]:
    size = QUICK_LONG_BYTES if quick else LONG_BYTES
    n = QUICK_LONG_ROUNDS if quick else LONG_ROUNDS
    lines, total = [], 0
    while total < size:
        lines.append(f"{len(lines):07d} an agent's transcript, one line of it\n")
        total += len(lines[-1])
    start = "".join(lines)
    pairs = {
        "durable": Pair(
            Memory("c0", path=tmp / "c0.db", fsync=False, audit=False),
            Memory("s0", path=tmp / "s0.db", fsync=False, audit=False),
        ),
        "durable + audit": Pair(
            Memory("c1", path=tmp / "c1.db", fsync=False),
            Memory("s1", path=tmp / "s1.db", fsync=False),
        ),
        "in memory": Pair(Memory("c2"), Memory("s2")),
        "in memory + audit": Pair(Memory("c3", audit=True), Memory("s3", audit=True)),
    }
    for p in pairs.values():
        p.client.text["log.md"] = start
        p.settle()
        p.wire = 0

    def edit(i: int, p: Pair) -> None:
        t = p.client.text["log.md"] + f"{i:07d} appended by the agent\n"
        if i % 5 == 4:
            mid = len(t) // 2
            t = t[:mid] + "EDITED" + t[mid + 6 :]
        p.client.text["log.md"] = t

    interleave(pairs, n, edit)
    for p in pairs.values():
        p.settle()
        assert p.server.text["log.md"] == p.client.text["log.md"]
    rows = {name: _summary(p) for name, p in pairs.items()}
    for base, audited in (("durable", "durable + audit"), ("in memory", "in memory + audit")):
        rows[audited]["cpu_ratio"] = rows[audited]["cpu_total_s"] / rows[base]["cpu_total_s"]
        rows[audited]["median_ratio"] = rows[audited]["cpu_median_us"] / rows[base]["cpu_median_us"]
    for p in pairs.values():
        p.client.close()
        p.server.close()
    return {"bytes": len(start), "cycles": n, "rows": rows}


def kv_cycle(quick: bool) -> dict[str, Any]:
    rng = np.random.default_rng(SEED)
    layers, heads, dim = GEOMETRY
    tokens = (QUICK_KV_PAGES if quick else KV_PAGES) * PAGE_TOKENS
    n = QUICK_KV_ROUNDS if quick else KV_ROUNDS
    link = {"kv_frame_bytes": 256 << 20, "max_frame_bytes": 1 << 31}
    pairs: dict[str, Pair] = {}
    configs: tuple[tuple[str, bool | AuditPolicy], ...] = (
        ("KV", False),
        ("KV + audit (rows)", True),
        ("KV + audit (pages)", AuditPolicy(kv_content="pages")),
    )
    for i, (name, audit) in enumerate(configs):
        owner, mirror = Memory(f"o{i}", audit=audit), Memory(f"m{i}", audit=audit)
        pairs[name] = Pair(owner, mirror, **link)
        cache = KVCache(layers, heads, dim, "q4_0", PAGE_TOKENS)
        rows = rng.integers(0, 256, (layers, heads, tokens, cache.row_bytes), np.uint8)
        cache.append_quantized(rows, rows)
        del rows
        # Room for the rounds' tokens: no buffer growth (a 1.5x copy) inside the timed cycles.
        cache.append_quantized(
            *(np.zeros((layers, heads, (n + 1) * PAGE_TOKENS, cache.row_bytes), np.uint8),) * 2
        )
        cache.truncate(tokens)
        owner.kv["ctx"] = cache
        pairs[name].settle()
        pairs[name].wire = 0
        log(f"  {name}: {cache.nbytes / (1 << 20):.0f} MiB mirrored")
    rb = next(iter(pairs.values())).client.kv["ctx"].row_bytes
    new = [rng.integers(0, 256, (layers, heads, PAGE_TOKENS, rb), np.uint8) for _ in range(2 * n)]

    def edit(i: int, p: Pair) -> None:
        p.client.kv["ctx"].append_quantized(new[2 * i], new[2 * i + 1])

    gc.collect()
    interleave(pairs, n, edit)
    out = {name: _summary(p) for name, p in pairs.items()}
    for name, _ in configs[1:]:
        out[name]["cpu_ratio"] = out[name]["cpu_total_s"] / out["KV"]["cpu_total_s"]
        out[name]["median_ratio"] = out[name]["cpu_median_us"] / out["KV"]["cpu_median_us"]
    for p in pairs.values():
        p.settle()
        assert p.server.kv["ctx"].digest() == p.client.kv["ctx"].digest()
    return {
        "cache_mib": layers * 2 * heads * tokens * rb / (1 << 20),
        "new_mb_per_cycle": layers * 2 * heads * PAGE_TOKENS * rb / 1e6,
        "cycles": n,
        "rows": out,
    }


def _summary(p: Pair) -> dict[str, Any]:
    logs = [m.audit for m in (p.client, p.server) if m.audit is not None]
    return {
        "cpu_total_s": sum(p.cpu),
        "cpu_median_us": statistics.median(p.cpu) * 1e6,
        "wire_bytes": p.wire,
        "heads_signed": sum(len(log.heads()) for log in logs),
    }


def report(res: dict[str, Any], quick: bool, part: str) -> str:
    flags = (" --quick" if quick else "") + (f" --part {part}" if part != "all" else "")
    lines = [
        f"# Audit log overhead{' (quick)' if quick else ''}",
        "",
        f"`python benches/bench_audit.py{flags}`, {res['date']}.",
        "",
    ]
    if "edit" in res:
        lines += _edit_table(res["edit"])
    if "kv" in res:
        lines += _kv_table(res["kv"])
    if "long" in res:
        lines += _long_table(res["long"])
    return "\n".join(lines) + "\n"


def _long_table(r: dict[str, Any]) -> list[str]:
    return _cpu_table(
        f"## Long document: {r['bytes']:,} bytes, a line appended per cycle (and every fifth "
        f"cycle a word rewritten in the middle), {r['cycles']} cycles",
        r["rows"],
    )


def _ratio(r: dict[str, Any]) -> str:
    return f"{r['cpu_ratio']:.3f} / {r['median_ratio']:.3f}" if "cpu_ratio" in r else "1 (base)"


def _cpu_table(heading: str, rows: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        heading,
        "",
        "| configuration | CPU total (s) | median per cycle (us) | CPU ratio (total / median) |",
        "|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['cpu_total_s']:.3f} | {r['cpu_median_us']:.0f} | {_ratio(r)} |"
        )
    return [*lines, ""]


def _edit_table(e: dict[str, Any]) -> list[str]:
    lines = [
        f"## Edit cycle: {e['cycles']} transactions of `{e['trace']}`, one per cycle",
        "",
        "| configuration | CPU total (s) | median per cycle (us) | heads signed | wire bytes "
        "| CPU ratio (total / median) | wire ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in e["rows"].items():
        ratio = _ratio(r)
        wire = f"{r['wire_ratio']:.4f}" if "wire_ratio" in r else "1 (base)"
        lines.append(
            f"| {name} | {r['cpu_total_s']:.3f} | {r['cpu_median_us']:.0f} "
            f"| {r['heads_signed']} | {r['wire_bytes']:,} "
            f"| {ratio} | {wire} |"
        )
    return [*lines, ""]


def _kv_table(k: dict[str, Any]) -> list[str]:
    return _cpu_table(
        f"## KV cycle: a {k['cache_mib']:.0f} MiB q4_0 cache, 256 new tokens "
        f"({k['new_mb_per_cycle']:.1f} MB of rows) per cycle, {k['cycles']} cycles",
        k["rows"],
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a few seconds)")
    ap.add_argument("--part", choices=("edit", "kv", "long", "all"), default="all")
    ap.add_argument("--out", type=Path, default=Path("benches/results"))
    args = ap.parse_args()
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d", time.gmtime())}
    if args.part in ("edit", "all"):
        with tempfile.TemporaryDirectory() as tmp:
            log("edit cycle ...")
            res["edit"] = edit_cycle(args.quick, Path(tmp))
    if args.part in ("kv", "all"):
        log("KV cycle ...")
        res["kv"] = kv_cycle(args.quick)
    if args.part in ("long", "all"):
        with tempfile.TemporaryDirectory() as tmp:
            log("long document ...")
            res["long"] = long_document(args.quick, Path(tmp))
    stem = "audit-quick" if args.quick else "audit"
    if args.part != "all":
        stem += f"-{args.part}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    md = report(res, args.quick, args.part)
    (args.out / f"{stem}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
