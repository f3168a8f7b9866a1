#!/usr/bin/env python3
"""What durability costs: sync cycles of durable replicas against in-memory ones, and KV
pages saved as SQLite rows against rewriting a whole safetensors file.

Two measurements, all in one process, every ratio taken between things measured in the same
run (interleaved: each round runs one step of every configuration, the order rotating from
round to round, so that they share the machine's noise):

1. **Cycle time with and without persistence.** Three configurations of a client/server
   :class:`hybridsync.Link` pair, both sides of the same kind: ``in-memory``
   (``Memory(id)``), ``durable fsync=False`` and ``durable fsync=True``
   (``Memory(id, path=FILE, fsync=...)``, files in a fresh temporary folder). A cycle is
   ``f = client.outgoing(); server.incoming(f); r = server.outgoing(); client.incoming(r)``;
   a durable replica saves at each ``outgoing`` (two saves per cycle, one per side). Every
   round first makes the same edit on every configuration's client (timed apart, "edit"),
   then runs one cycle. Workloads:

   (a) **agent notes**: 200 text documents of about 4 KB and some metadata; per cycle one
       document gets a line appended and one metadata key is set (client side);
   (b) **KV decode**: a q4_0 cache of 24 layers x 8 KV heads x head_dim 128 holding 4,096
       tokens (mirrored on the server); per cycle 16 tokens are appended (``KVCache.append``
       of float32 keys/values);
   (c) **KV page**: the same cache; per cycle 256 tokens (one whole new page) are appended.

   Reported: median cycle time per configuration and its ratio to in-memory; for durable
   replicas, where the time goes (``Store.save`` in total, the SQLite statements, the
   ``COMMIT``, the Python side) and bytes written per cycle, both sides together: row bytes
   (``memory._store.bytes_written``) and the bytes handed to ``write()``/``pwrite()``
   (``wchar`` of ``/proc/self/io``: WAL frames, checkpoints). The timing of ``Store.save``
   and of the SQLite calls is done by wrapping them on the instances (``store.save`` and
   ``store._db``) in this script, about a microsecond per call; nothing in the library
   changes. At the end every pair is settled (exchanges until idle) and checked: both sides
   equal, every configuration's replica equal, every durable file reopening to the same
   content.
2. **KV storage choice.** One changed page of a 4,096-token cache of the same geometry:
   ``memory.flush()`` of a durable replica holding the cache after appending 256 tokens (the
   SQLite page row; fsync=True and fsync=False) against ``cache.save(path)`` (the whole
   safetensors file, written to a temporary file, fsync'ed and renamed). Before each round
   the cache is truncated back to 4,096 tokens and flushed (untimed), so every round saves
   the same page of a cache of the same size; the page hashes are refreshed before the timer
   starts (both paths need them).

Times are medians of ``time.perf_counter``; bytes are means per cycle. Absolute numbers
depend on the machine (and on the file system of the temporary folder: see ``--tmpdir``)
and are never asserted. ``--profile`` prints a cProfile of the fsync=True cycles of every
workload to stderr.

Usage::

    python benches/bench_store.py [--quick] [--profile] [--tmpdir DIR] [--out benches/results]

It writes ``store.md`` (``store-quick.md`` with ``--quick``) into the ``--out`` folder and
takes about a minute and a half on a 2-core machine (``--quick``: a few seconds).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import gc
import io
import json
import os
import platform
import pstats
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from _machine import cpu_model, git_revision, package_version
from hybridsync import KVCache, Link, Memory

SEED = 20_240_601
PAGE_TOKENS = 256
KV_HEADS = 8
HEAD_DIM = 128
FMT = "q4_0"

IN_MEMORY = "in-memory"
NO_FSYNC = "durable fsync=False"
FSYNC = "durable fsync=True"
CONFIGS = (IN_MEMORY, NO_FSYNC, FSYNC)


@dataclass(frozen=True)
class Sizes:
    notes_docs: int
    doc_bytes: int
    notes_rounds: int
    kv_layers: int
    kv_tokens: int
    decode_tokens: int
    decode_rounds: int
    page_rounds: int
    save_rounds: int
    warmup_rounds: int = 1


# decode_rounds: a multiple of 256 / 16 = 16, so that every position of the last
# (partial) page is measured equally often.
FULL = Sizes(
    notes_docs=200,
    doc_bytes=4_000,
    notes_rounds=300,
    kv_layers=24,
    kv_tokens=4_096,
    decode_tokens=16,
    decode_rounds=96,
    page_rounds=32,
    save_rounds=15,
)
QUICK = Sizes(
    notes_docs=20,
    doc_bytes=4_000,
    notes_rounds=12,
    kv_layers=2,
    kv_tokens=512,
    decode_tokens=16,
    decode_rounds=16,
    page_rounds=4,
    save_rounds=3,
)

_VOWELS = "aeiou"
_CONSONANTS = "bcdfghjklmnprstvwz"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_syscall_bytes() -> int | None:
    """Bytes this process handed to write()-like system calls so far (``wchar`` of
    /proc/self/io), or None where that is not available."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split(":", 1)[1])
    except OSError:
        pass
    return None


def filesystem_of(path: Path) -> str:
    """The file system type and device that hold ``path`` (from /proc/mounts)."""
    try:
        best = ("", "unknown", "unknown")
        target = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, fstype = line.split()[:3]
            inside = target == mnt or target.startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= len(best[0]):
                best = (mnt, fstype, dev)
        return f"{best[1]} on {best[2]}"
    except (OSError, ValueError):
        return "unknown"


# --------------------------------------------------------------------------- instrumentation


@dataclass
class Timers:
    """Seconds spent in ``Store.save`` and in SQLite calls (both sides of a pair)."""

    save: float = 0.0
    statements: float = 0.0
    commit: float = 0.0
    #: Blob bytes inserted per table (keys, checksums and row overhead not counted).
    table_bytes: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> tuple[float, float, float]:
        return self.save, self.statements, self.commit


class TimedConnection:
    """Stands in for a store's ``sqlite3.Connection``: times every ``execute``."""

    def __init__(self, db: sqlite3.Connection, timers: Timers) -> None:
        self._conn = db
        self._timers = timers

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        words = sql.split(None, 5)
        if words[0].upper() == "INSERT" and args:
            table = words[words.index("INTO") + 1]
            blobs = sum(len(a) for a in args[0] if isinstance(a, (bytes, bytearray)))
            tb = self._timers.table_bytes
            tb[table] = tb.get(table, 0) + blobs
        t0 = time.perf_counter()
        try:
            return self._conn.execute(sql, *args)
        finally:
            spent = time.perf_counter() - t0
            if sql.lstrip().upper().startswith("COMMIT"):
                self._timers.commit += spent
            else:
                self._timers.statements += spent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def instrument(memory: Memory, timers: Timers) -> None:
    """Time ``memory``'s saves and SQLite calls into ``timers`` (durable replicas)."""
    store = memory._store
    if store is None:
        return
    store._db = TimedConnection(store._db, timers)  # type: ignore[assignment]
    save = store.save

    def timed_save(m: Memory) -> None:
        t0 = time.perf_counter()
        try:
            save(m)
        finally:
            timers.save += time.perf_counter() - t0

    store.save = timed_save  # type: ignore[method-assign]


# --------------------------------------------------------------------------- pairs


@dataclass
class Pair:
    """A client/server link pair of one configuration."""

    config: str
    client_mem: Memory
    server_mem: Memory
    client: Link
    server: Link
    files: tuple[Path, ...]
    timers: Timers = field(default_factory=Timers)

    def row_bytes(self) -> int:
        return sum(
            m._store.bytes_written
            for m in (self.client_mem, self.server_mem)
            if m._store is not None
        )

    def saves(self) -> int:
        return sum(m._store.saves for m in (self.client_mem, self.server_mem) if m._store)


def open_pair(config: str, work: Path, tag: str) -> Pair:
    files: tuple[Path, ...] = ()
    if config == IN_MEMORY:
        a, b = Memory("a", incarnation=1), Memory("b", incarnation=2)
    else:
        fsync = config == FSYNC
        slug = "fsync" if fsync else "nofsync"
        files = (work / f"{tag}-{slug}-a.db", work / f"{tag}-{slug}-b.db")
        a = Memory("a", incarnation=1, path=files[0], fsync=fsync)
        b = Memory("b", incarnation=2, path=files[1], fsync=fsync)
    pair = Pair(config, a, b, Link(a, "b", role="client"), Link(b, "a", role="server"), files)
    instrument(a, pair.timers)
    instrument(b, pair.timers)
    return pair


def cycle(pair: Pair) -> int:
    """One request and its reply; returns the wire bytes."""
    f = pair.client.outgoing()
    assert f is not None  # a client always has a request (or a retransmission)
    pair.server.incoming(f)
    r = pair.server.outgoing()
    if r is not None:
        pair.client.incoming(r)
    return len(f) + (len(r) if r is not None else 0)


def settle(pair: Pair, limit: int = 1_000) -> int:
    """Cycles until both sides are idle (at least one); returns the number of cycles."""
    n = 0
    while n == 0 or not (pair.client.idle and pair.server.idle):
        cycle(pair)
        n += 1
        if n > limit:
            raise AssertionError(f"{pair.config}: the links did not go idle")
    return n


def finish(pairs: dict[str, Pair]) -> dict[str, Any]:
    """Settle every pair, check both sides equal, every configuration equal, and every
    durable file reopening to the content it had; close everything."""
    digests = {}
    sides_equal = {}
    reopened: dict[str, bool] = {}
    for name, pair in pairs.items():
        settle(pair)
        settle(pair)  # once more: the acknowledgements of the last changes
        da, db = pair.client_mem.digest(), pair.server_mem.digest()
        sides_equal[name] = da == db
        digests[name] = da
        for mem in (pair.client_mem, pair.server_mem):
            mem.close()
        if pair.files:
            ok = True
            for path, rid, want in zip(pair.files, ("a", "b"), (da, db), strict=True):
                with Memory(rid, path=path) as again:
                    ok = ok and again.digest() == want
            reopened[name] = ok
    same = len(set(digests.values())) == 1
    correct = {name: sides_equal[name] and same and reopened.get(name, True) for name in pairs}
    return {
        "sides_equal": sides_equal,
        "configs_equal": same,
        "reopened": reopened,
        "correct": correct,
    }


# --------------------------------------------------------------------------- rounds


def run_rounds(
    pairs: dict[str, Pair],
    make_edit: Callable[[int], Callable[[Memory], None]],
    n_rounds: int,
    warmup: int,
    profile: cProfile.Profile | None,
    label: str,
) -> dict[str, list[dict[str, Any]]]:
    """Per round: the round's edit on every configuration's client, then one cycle, the
    order rotating; returns per configuration one sample per timed round."""
    names = list(pairs)
    samples: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    t_start = time.perf_counter()
    for i in range(warmup + n_rounds):
        edit = make_edit(i)
        k = i % len(names)
        for name in names[k:] + names[:k]:
            pair = pairs[name]
            gc.collect()
            rows0, saves0, tm0 = pair.row_bytes(), pair.saves(), pair.timers.snapshot()
            tables0 = dict(pair.timers.table_bytes)
            w0 = write_syscall_bytes()
            t0 = time.perf_counter()
            edit(pair.client_mem)
            t1 = time.perf_counter()
            if profile is not None and name == FSYNC:
                profile.enable()
            wire = cycle(pair)
            if profile is not None and name == FSYNC:
                profile.disable()
            t2 = time.perf_counter()
            w1 = write_syscall_bytes()
            tm1 = pair.timers.snapshot()
            if i < warmup:
                continue
            samples[name].append(
                {
                    "edit_s": t1 - t0,
                    "cycle_s": t2 - t1,
                    "step_s": t2 - t0,
                    "save_s": tm1[0] - tm0[0],
                    "statements_s": tm1[1] - tm0[1],
                    "commit_s": tm1[2] - tm0[2],
                    "python_s": (tm1[0] - tm0[0]) - (tm1[1] - tm0[1]) - (tm1[2] - tm0[2]),
                    "row_bytes": pair.row_bytes() - rows0,
                    "write_bytes": (w1 - w0) if w0 is not None and w1 is not None else -1,
                    "saves": pair.saves() - saves0,
                    "wire_bytes": wire,
                    "tables": {
                        t: b - tables0.get(t, 0)
                        for t, b in pair.timers.table_bytes.items()
                        if b - tables0.get(t, 0)
                    },
                }
            )
        done = i + 1
        if done % max(1, (warmup + n_rounds) // 4) == 0:
            log(
                f"  {label}: round {done}/{warmup + n_rounds} "
                f"({time.perf_counter() - t_start:.1f} s)"
            )
    return samples


def summarize(
    samples: dict[str, list[dict[str, Any]]], new_bytes: float
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, rows in samples.items():

        def med(key: str, rows: list[dict[str, Any]] = rows) -> float:
            return statistics.median(r[key] for r in rows)

        def mean(key: str, rows: list[dict[str, Any]] = rows) -> float:
            return statistics.fmean(r[key] for r in rows)

        s: dict[str, Any] = {
            k: med(k)
            for k in (
                "edit_s",
                "cycle_s",
                "step_s",
                "save_s",
                "statements_s",
                "commit_s",
                "python_s",
            )
        }
        s["cycle_min_s"] = min(r["cycle_s"] for r in rows)
        s["save_share"] = statistics.median(
            r["save_s"] / r["cycle_s"] for r in rows if r["cycle_s"] > 0
        )
        for k in ("row_bytes", "write_bytes", "wire_bytes", "saves"):
            s[k] = mean(k)
        s["row_bytes_max"] = max(r["row_bytes"] for r in rows)
        tables = sorted({t for r in rows for t in r["tables"]})
        s["tables"] = {t: statistics.fmean(r["tables"].get(t, 0) for r in rows) for t in tables}
        s["write_known"] = all(r["write_bytes"] >= 0 for r in rows)
        s["rounds"] = len(rows)
        # Both replicas store a copy of what is new.
        s["row_amplification"] = s["row_bytes"] / (2 * new_bytes) if new_bytes else 0.0
        out[name] = s
    base = out[IN_MEMORY]
    for s in out.values():
        s["cycle_ratio"] = s["cycle_s"] / base["cycle_s"]
        s["step_ratio"] = s["step_s"] / base["step_s"]
        s["extra_ms"] = (s["cycle_s"] - base["cycle_s"]) * 1e3
    return out


def print_profile(profile: cProfile.Profile | None, label: str) -> None:
    if profile is None:
        return
    buf = io.StringIO()
    pstats.Stats(profile, stream=buf).sort_stats("tottime").print_stats(15)
    log(f"--- cProfile of the {FSYNC} cycles, {label} (by own time) ---\n{buf.getvalue()}")


# --------------------------------------------------------------------------- workloads


def make_vocabulary(rng: random.Random, size: int = 500) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        n = rng.choice((1, 2, 2, 3, 3, 4))
        words.add("".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(n)))
    return sorted(words)


def make_line(rng: random.Random, vocab: Sequence[str]) -> str:
    words = [rng.choice(vocab) for _ in range(rng.randint(6, 12))]
    return "- " + " ".join(words) + "\n"


def make_document(rng: random.Random, vocab: Sequence[str], size: int) -> str:
    lines: list[str] = []
    total = 0
    while total < size:
        line = make_line(rng, vocab)
        lines.append(line)
        total += len(line)
    return "".join(lines)


def run_notes(sizes: Sizes, work: Path, profile: bool) -> dict[str, Any]:
    rng = random.Random(SEED)
    vocab = make_vocabulary(rng)
    docs = {
        f"notes/agent{i:03d}.md": make_document(rng, vocab, sizes.doc_bytes)
        for i in range(sizes.notes_docs)
    }
    t0 = time.perf_counter()
    pairs = {c: open_pair(c, work, "notes") for c in CONFIGS}
    for pair in pairs.values():
        mem = pair.client_mem
        for name, body in docs.items():
            mem.text[name] = body
        with mem.transaction():
            for i in range(32):
                mem.meta[f"agent{i:02d}"] = {"status": "idle", "step": 0, "doc": ""}
        settle(pair)
    log(f"  notes: {len(docs)} documents synced in {time.perf_counter() - t0:.1f} s")
    names = sorted(docs)
    n_total = sizes.warmup_rounds + sizes.notes_rounds
    plan = []
    for i in range(n_total):
        doc = rng.choice(names)
        plan.append((doc, make_line(rng, vocab), f"agent{i % 32:02d}", i))

    def make_edit(i: int) -> Callable[[Memory], None]:
        doc, line, key, step = plan[i]
        value = {"status": "writing", "step": step, "doc": doc}

        def edit(mem: Memory) -> None:
            mem.text[doc] = mem.text[doc] + line
            with mem.transaction():
                mem.meta[key] = value

        return edit

    new_bytes = statistics.fmean(
        len(line.encode()) + len(json.dumps({"status": "writing", "step": s, "doc": d}))
        for d, line, _, s in plan
    )
    prof = cProfile.Profile() if profile else None
    samples = run_rounds(pairs, make_edit, sizes.notes_rounds, sizes.warmup_rounds, prof, "notes")
    print_profile(prof, "agent notes")
    check = finish(pairs)
    return {
        "label": "agent notes",
        "description": (
            f"{len(docs)} text documents of about {sizes.doc_bytes:,} bytes and 32 metadata "
            "keys; per cycle one document gets a line (about 70 bytes) appended and one "
            "metadata key is set to a small dict, on the client"
        ),
        "new_bytes": new_bytes,
        "results": summarize(samples, new_bytes),
        "check": check,
    }


def _kv_pairs(sizes: Sizes, work: Path, tag: str) -> tuple[dict[str, Pair], int]:
    """Pairs whose client owns a cache of ``sizes.kv_tokens`` random quantized tokens,
    mirrored on the server; returns them and the row bytes of one token (all layers,
    K|V, heads)."""
    nprng = np.random.default_rng(SEED + 1)
    probe = KVCache(sizes.kv_layers, KV_HEADS, HEAD_DIM, FMT, page_tokens=PAGE_TOKENS)
    rb = probe.row_bytes
    shape = (sizes.kv_layers, KV_HEADS, sizes.kv_tokens, rb)
    n = int(np.prod(shape))
    keys = np.frombuffer(nprng.bytes(n), np.uint8).reshape(shape)
    values = np.frombuffer(nprng.bytes(n), np.uint8).reshape(shape)
    pairs = {}
    for c in CONFIGS:
        t0 = time.perf_counter()
        pair = open_pair(c, work, tag)
        cache = KVCache(sizes.kv_layers, KV_HEADS, HEAD_DIM, FMT, page_tokens=PAGE_TOKENS)
        cache.append_quantized(keys, values)
        pair.client_mem.kv["cache"] = cache
        exchanges = settle(pair)
        pairs[c] = pair
        log(
            f"  {tag}: {c}: {cache.nbytes / 2**20:.0f} MiB cache mirrored in "
            f"{exchanges} exchanges, {time.perf_counter() - t0:.1f} s"
        )
    return pairs, sizes.kv_layers * 2 * KV_HEADS * rb


def run_kv(sizes: Sizes, work: Path, profile: bool, tokens: int, rounds: int) -> dict[str, Any]:
    tag = "decode" if tokens < PAGE_TOKENS else "page"
    pairs, token_bytes = _kv_pairs(sizes, work, tag)
    nprng = np.random.default_rng(SEED + 2)
    shape = (sizes.kv_layers, KV_HEADS, tokens, HEAD_DIM)

    def make_edit(i: int) -> Callable[[Memory], None]:
        keys = nprng.standard_normal(shape, dtype=np.float32)
        values = nprng.standard_normal(shape, dtype=np.float32)

        def edit(mem: Memory) -> None:
            mem.kv["cache"].append(keys, values)

        return edit

    new_bytes = tokens * token_bytes
    prof = cProfile.Profile() if profile else None
    samples = run_rounds(pairs, make_edit, rounds, sizes.warmup_rounds, prof, tag)
    print_profile(prof, f"KV {tag}")
    final_tokens = pairs[IN_MEMORY].client_mem.kv["cache"].tokens
    check = finish(pairs)
    geometry = f"{sizes.kv_layers} layers x {KV_HEADS} KV heads x head_dim {HEAD_DIM}, {FMT}"
    if tokens < PAGE_TOKENS:
        label = "KV decode"
        what = (
            f"{tokens} tokens appended per cycle (float32 `KVCache.append`), so the last page "
            f"is partial: {rounds} timed cycles fill {rounds * tokens / PAGE_TOKENS:g} page(s), "
            "every fill level of the last page measured equally often"
        )
    else:
        label = "KV page"
        what = f"{tokens} tokens (one whole new page) appended per cycle"
    return {
        "label": label,
        "description": (
            f"{geometry} cache ({PAGE_TOKENS}-token pages) holding {sizes.kv_tokens:,} tokens "
            f"({sizes.kv_tokens * token_bytes / 2**20:.0f} MiB), owned by the client and "
            f"mirrored on the server; {what}; {final_tokens:,} tokens at the end"
        ),
        "new_bytes": new_bytes,
        "results": summarize(samples, new_bytes),
        "check": check,
    }


# --------------------------------------------------------------------------- (2) storage


def run_storage(sizes: Sizes, work: Path) -> dict[str, Any]:
    nprng = np.random.default_rng(SEED + 3)
    layers = sizes.kv_layers
    probe = KVCache(layers, KV_HEADS, HEAD_DIM, FMT, page_tokens=PAGE_TOKENS)
    rb = probe.row_bytes
    shape = (layers, KV_HEADS, sizes.kv_tokens, rb)
    n = int(np.prod(shape))
    keys = np.frombuffer(nprng.bytes(n), np.uint8).reshape(shape)
    values = np.frombuffer(nprng.bytes(n), np.uint8).reshape(shape)
    mems: dict[str, Memory] = {}
    timers: dict[str, Timers] = {}
    for fsync in (True, False):
        name = "fsync" if fsync else "nofsync"
        mem = Memory("owner", incarnation=3, path=work / f"storage-{name}.db", fsync=fsync)
        cache = KVCache(layers, KV_HEADS, HEAD_DIM, FMT, page_tokens=PAGE_TOKENS)
        cache.append_quantized(keys, values)
        mem.kv["cache"] = cache
        mem.flush()
        timers[name] = Timers()
        instrument(mem, timers[name])
        mems[name] = mem
    file = work / "cache.safetensors"
    caches = {name: mem.kv["cache"] for name, mem in mems.items()}
    caches["fsync"].save(file)
    log(f"  storage: {caches['fsync'].nbytes / 2**20:.0f} MiB cache saved both ways")

    def flush(name: str) -> Callable[[], int]:
        def run() -> int:
            store = mems[name]._store
            assert store is not None
            before = store.bytes_written
            mems[name].flush()
            return store.bytes_written - before

        return run

    def save() -> int:
        caches["fsync"].save(file)
        return file.stat().st_size

    engines: dict[str, Callable[[], int]] = {
        "SQLite page rows, fsync=True (`memory.flush()`)": flush("fsync"),
        "SQLite page rows, fsync=False (`memory.flush()`)": flush("nofsync"),
        "whole safetensors file (`cache.save(path)`)": save,
    }
    names = list(engines)
    out: dict[str, dict[str, list[float]]] = {
        k: {"s": [], "bytes": [], "write": [], "commit": []} for k in names
    }
    shape_f = (layers, KV_HEADS, PAGE_TOKENS, HEAD_DIM)
    t_start = time.perf_counter()
    total = sizes.warmup_rounds + sizes.save_rounds
    for i in range(total):
        new_k = nprng.standard_normal(shape_f, dtype=np.float32)
        new_v = nprng.standard_normal(shape_f, dtype=np.float32)
        for name, mem in mems.items():
            cache = caches[name]
            cache.truncate(sizes.kv_tokens)
            mem.flush()  # drops the page saved last round
            cache.append(new_k, new_v)
            cache.digest()  # page hashes, which both paths need, refreshed untimed
        k = i % len(names)
        for name in names[k:] + names[:k]:
            gc.collect()
            commit0 = {t: tm.commit for t, tm in timers.items()}
            w0 = write_syscall_bytes()
            t0 = time.perf_counter()
            nbytes = engines[name]()
            t1 = time.perf_counter()
            w1 = write_syscall_bytes()
            if i < sizes.warmup_rounds:
                continue
            out[name]["s"].append(t1 - t0)
            out[name]["bytes"].append(nbytes)
            out[name]["write"].append(w1 - w0 if w0 is not None and w1 is not None else -1)
            out[name]["commit"].append(sum(tm.commit - commit0[t] for t, tm in timers.items()))
        if (i + 1) % max(1, total // 3) == 0:
            log(f"  storage: round {i + 1}/{total} ({time.perf_counter() - t_start:.1f} s)")
    # Both files hold the cache as it is now.
    want = caches["fsync"].digest()
    tokens = caches["fsync"].tokens
    file_ok = KVCache.load(file).digest() == want
    for mem in mems.values():
        mem.close()
    with Memory("owner", path=work / "storage-fsync.db") as again:
        rows_ok = again.kv["cache"].digest() == want
    results = {}
    ref_name = names[0]
    ref = statistics.median(out[ref_name]["s"])
    for name, d in out.items():
        med = statistics.median(d["s"])
        results[name] = {
            "ms": med * 1e3,
            "ms_min": min(d["s"]) * 1e3,
            "bytes": statistics.fmean(d["bytes"]),
            "write_bytes": statistics.fmean(d["write"]),
            "commit_ms": statistics.median(d["commit"]) * 1e3,
            "over_rows_fsync": med / ref,
        }
    return {
        "geometry": f"{layers} layers x {KV_HEADS} KV heads x head_dim {HEAD_DIM}, {FMT}",
        "tokens_before": sizes.kv_tokens,
        "tokens_after": tokens,
        "page_bytes": PAGE_TOKENS * layers * 2 * KV_HEADS * rb,
        "rounds": sizes.save_rounds,
        "results": results,
        "ref": ref_name,
        "file_ok": file_ok,
        "rows_ok": rows_ok,
    }


# --------------------------------------------------------------------------- report


def environment(quick: bool, work: Path) -> dict[str, Any]:
    rev = git_revision()
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benches/bench_store.py" + (" --quick" if quick else ""),
        "git": rev,
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "sqlite": sqlite3.sqlite_version,
        "tmpdir": str(work),
        "filesystem": filesystem_of(work),
        "versions": {p: package_version(p) for p in ("hybridsync", "numpy", "xxhash")},
    }


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def _x(r: float) -> str:
    return f"{r:.2f}x"


def _b(n: float) -> str:
    return f"{n:,.0f}"


def _ok(b: bool) -> str:
    return "✓" if b else "✗"


def render(
    env: dict[str, Any], workloads: list[dict[str, Any]], st: dict[str, Any], quick: bool
) -> str:
    v = env["versions"]
    out = [
        "# Durable replicas: the cost of persistence per sync cycle, KV page rows vs files",
        "",
        f"Reproduce: `{env['command']}`"
        + ("" if quick else " (`--quick`: tiny sizes, a few seconds, for smoke tests)."),
        "",
        f"- Machine: CPU {env['cpu']}, {env['cpu_count']} logical CPUs; "
        f"{env['platform']}; Python {env['python']}; SQLite {env['sqlite']}; temporary "
        f"files on {env['filesystem']}",
        f"- {env['date_utc']}; git {env['git']}; "
        + ", ".join(f"{k} {val}" for k, val in v.items())
        + f"; mode: {'quick' if quick else 'full'}; load average "
        f"{' / '.join(map(str, env['loadavg_at_start']))} at start, "
        f"{' / '.join(map(str, env['loadavg_at_end']))} at the end; whole run "
        f"{env['total_s']} s",
        "- Every ratio compares configurations measured in the same run, interleaved: each "
        "round runs one step of every configuration, the order rotating from round to round "
        "(one untimed warm-up round first). Times are medians over the rounds "
        "(`perf_counter`); bytes are means per cycle. Absolute numbers depend on the machine "
        "and its disk and are context only.",
        "",
        "## 1. Sync cycle with and without persistence",
        "",
        "A client/server `Link` pair, both sides **in-memory** (`Memory(id)`) or both "
        "**durable** (`Memory(id, path=FILE, fsync=False|True)`; SQLite in WAL mode, "
        "`synchronous=NORMAL` or `FULL`). A cycle = `client.outgoing()` → "
        "`server.incoming()` → `server.outgoing()` → `client.incoming()`; a durable replica "
        "saves at each `outgoing` (two saves per cycle, both sides in this process). The "
        "edit, made on the client before the cycle, is timed apart.",
        "",
    ]
    for w in workloads:
        out.append(f"- **{w['label']}**: {w['description']}.")
    out += [
        "",
        "| workload | configuration | cycle ms | cycle / in-memory | + ms per cycle | "
        "edit ms | edit + cycle ms | (edit + cycle) / in-memory | wire B/cycle | correct |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    for w in workloads:
        for name in CONFIGS:
            s = w["results"][name]
            base = name == IN_MEMORY
            ratio = "1.00x" if base else f"**{_x(s['cycle_ratio'])}**"
            extra = "—" if base else f"{s['extra_ms']:.2f}"
            out.append(
                f"| {w['label']} | {name} | {_ms(s['cycle_s'])} | {ratio} | {extra} | "
                f"{_ms(s['edit_s'])} | "
                f"{_ms(s['step_s'])} | {_x(s['step_ratio'])} | {_b(s['wire_bytes'])} | "
                f"{_ok(w['check']['correct'][name])} |"
            )
    out += [
        "",
        "Correct = after settling, both sides equal, every configuration's replica equal to "
        "the others, and (durable) both files reopening to the same content.",
        "",
        "### Where the persistence time goes, and what is written",
        "",
        "Per cycle, both sides together. **save** = `Store.save` (both saves); of it, "
        "**SQLite statements** = the `INSERT`/`DELETE` calls (rows into SQLite's page "
        "cache, spilling to the WAL when large), **COMMIT** = the commit (WAL write, fsync "
        "with fsync=True, and the automatic checkpoint copying the WAL into the database "
        "once it passes 1,000 pages), **Python** = the rest (finding what changed, building "
        "rows, checksums). Each column is its own median. **Row bytes** = growth of "
        "`memory._store.bytes_written` (row contents); **write() bytes** = bytes this "
        "process handed to `write`/`pwrite` during the cycle (`wchar` of /proc/self/io: WAL "
        "frames plus checkpoint copies). **New bytes** = what the edit added (the appended "
        "line and the metadata value as JSON; the new quantized KV rows); both replicas "
        "store a copy, so 1.00x means each side wrote exactly the new data.",
        "",
        "| workload | configuration | save ms | SQLite statements ms | COMMIT ms | Python ms "
        "| save / cycle | row bytes/cycle | max row bytes | row bytes / (2 x new) | "
        "write() bytes/cycle | saves/cycle |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in workloads:
        for name in CONFIGS[1:]:
            s = w["results"][name]
            wb = _b(s["write_bytes"]) if s["write_known"] else "n/a"
            out.append(
                f"| {w['label']} | {name} | {_ms(s['save_s'])} | {_ms(s['statements_s'])} | "
                f"{_ms(s['commit_s'])} | {_ms(s['python_s'])} | {s['save_share']:.0%} | "
                f"{_b(s['row_bytes'])} | {_b(s['row_bytes_max'])} | "
                f"{_x(s['row_amplification'])} | {wb} | {s['saves']:.1f} |"
            )
    out += [
        "",
        "New bytes per cycle: "
        + "; ".join(f"{w['label']} {_b(w['new_bytes'])}" for w in workloads)
        + ".",
    ]
    tables = ("text", "meta_updates", "info", "kv_pages", "kv_caches", "links", "link_docs")
    out += [
        "",
        f"Blob bytes inserted per cycle by table ({FSYNC}, both sides, means; `info` holds "
        "the saved metadata state, `links`/`link_docs` the link state per peer and per "
        "document: shadow, backup shadow, versions):",
        "",
        "| workload | " + " | ".join(f"`{t}`" for t in tables) + " |",
        "|---|" + "---:|" * len(tables),
    ]
    for w in workloads:
        tb = w["results"][FSYNC]["tables"]
        out.append(f"| {w['label']} | " + " | ".join(_b(tb.get(t, 0)) for t in tables) + " |")
    out += ["", "Summary, fsync=True against in-memory:"]
    for w in workloads:
        s = w["results"][FSYNC]
        f = w["results"][NO_FSYNC]
        out.append(
            f"- {w['label']}: a cycle takes **{_x(s['cycle_ratio'])}** the in-memory time "
            f"(fsync=False: {_x(f['cycle_ratio'])}), +{s['extra_ms']:.2f} ms; saving is "
            f"{s['save_share']:.0%} of the cycle (COMMIT {_ms(s['commit_s'])} ms of "
            f"{_ms(s['save_s'])} ms); {_b(s['row_bytes'])} row bytes and "
            f"{_b(s['write_bytes']) if s['write_known'] else 'n/a'} write() bytes per cycle "
            f"for {_b(w['new_bytes'])} new bytes."
        )
    r = st["results"]
    ref = r[st["ref"]]
    out += [
        "",
        "## 2. KV storage: saving one changed page",
        "",
        f"A {st['geometry']} cache of {st['tokens_before']:,} tokens gets 256 tokens "
        f"appended (one new page: {st['page_bytes']:,} bytes over all layers, K|V and "
        "heads), then is saved either as SQLite page rows (`memory.flush()` of the durable "
        "replica holding it: the one new page row plus its header) or as a whole safetensors "
        "file (`cache.save(path)`: the whole cache written to a temporary file, fsync'ed, "
        "renamed over the old one, folder fsync'ed). Before every round the caches are "
        "truncated back and flushed (untimed), so each round saves the same page of a cache "
        f"of the same size; {st['rounds']} rounds, medians.",
        "",
        "| method | ms (median) | ms (min) | bytes (rows / file) | write() bytes | of which "
        "COMMIT ms | this / page rows fsync=True |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, d in r.items():
        commit = _ms(d["commit_ms"] / 1e3) if "SQLite" in name else "—"
        out.append(
            f"| {name} | {_ms(d['ms'] / 1e3)} | {_ms(d['ms_min'] / 1e3)} | {_b(d['bytes'])} | "
            f"{_b(d['write_bytes']) if d['write_bytes'] >= 0 else 'n/a'} | {commit} | "
            f"**{_x(d['over_rows_fsync'])}** |"
        )
    file_name = next(n for n in r if "safetensors" in n)
    out += [
        "",
        f"Rewriting the safetensors file takes **{_x(r[file_name]['over_rows_fsync'])}** the "
        f"time of saving the changed page as SQLite rows with fsync "
        f"({_ms(r[file_name]['ms'] / 1e3)} ms against {_ms(ref['ms'] / 1e3)} ms) and writes "
        f"{r[file_name]['bytes'] / max(ref['bytes'], 1):.1f}x the bytes. Checks: the file "
        f"reloads to the cache ({_ok(st['file_ok'])}); the SQLite replica reopens to it "
        f"({_ok(st['rows_ok'])}).",
        "",
    ]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a few seconds)")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the fsync=True cycles (to stderr)"
    )
    parser.add_argument(
        "--tmpdir", type=Path, default=None, help="where the replica files go (default: TMPDIR)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    t_all = time.perf_counter()
    workloads = []
    with tempfile.TemporaryDirectory(prefix="bench_store_", dir=args.tmpdir) as tmp:
        work = Path(tmp)
        env = environment(args.quick, work)
        log(f"replica files in {work} ({env['filesystem']})")
        steps: list[tuple[str, Callable[[Path], dict[str, Any]]]] = [
            ("(1a) agent notes", lambda p: run_notes(sizes, p, args.profile)),
            (
                "(1b) KV decode",
                lambda p: run_kv(sizes, p, args.profile, sizes.decode_tokens, sizes.decode_rounds),
            ),
            (
                "(1c) KV page",
                lambda p: run_kv(sizes, p, args.profile, PAGE_TOKENS, sizes.page_rounds),
            ),
        ]
        for i, (label, step) in enumerate(steps):
            t0 = time.perf_counter()
            sub = work / f"w{i}"
            sub.mkdir()
            workloads.append(step(sub))
            gc.collect()
            log(f"{label} done in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        sub = work / "storage"
        sub.mkdir()
        st = run_storage(sizes, sub)
        log(f"(2) KV storage done in {time.perf_counter() - t0:.1f} s")
    env["total_s"] = round(time.perf_counter() - t_all, 1)
    env["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report = render(env, workloads, st, args.quick)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / ("store-quick.md" if args.quick else "store.md")).write_text(report)
    ok = all(all(w["check"]["correct"].values()) for w in workloads)
    ok = ok and st["file_ok"] and st["rows_ok"]
    if not ok:
        log("CORRECTNESS FAILURE: see the tables")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
