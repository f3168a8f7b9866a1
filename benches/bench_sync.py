#!/usr/bin/env python3
"""Side-by-side benchmark of hybridsync's sync against pycrdt (Yjs/yrs) doing the same job.

Three ways of keeping replicas in sync run in the same process, on the same edits,
interleaved in blocks of cycles (turns), the order rotating from block to block, so that they
share the machine's noise:

* ``hybridsync``  -- :class:`hybridsync.Link` pairs (differential synchronization);
* ``pycrdt-inc``  -- what a pycrdt-websocket user does: every local transaction's update
  (``TransactionEvent.update``) is sent as a y-protocol ``SYNC_UPDATE`` message; the hub
  applies it and relays the same bytes to every other client. There are no replies.
* ``pycrdt-sv``   -- state-vector polling, the shape of a diff-sync exchange: a request is
  ``SYNC_STEP1(client state vector) + SYNC_STEP2(client.get_update(last hub state vector))``,
  the reply is ``SYNC_STEP1(hub state vector) + SYNC_STEP2(hub.get_update(client state
  vector))``.

Wire bytes are the exact sizes of the frames/messages (y-protocol framing from
:mod:`pycrdt` included); transport overhead (TCP, WebSocket) is not counted for anyone.

Scenarios:

(a) **memory**: 1,000 documents of about 2 KB (seeded text, a few non-ASCII words) on a
    client and a hub, already in sync; every cycle the client makes small seeded edits to
    10 documents, then syncs. pycrdt holds the memory as ONE ``Doc`` with one root ``Text``
    per document (one sync unit, as a pycrdt user holding a set of named texts would do;
    one ``Doc`` per document would need a state vector per document for pycrdt-sv).
    Also reported: the initial sync of the whole memory and an idle cycle (nothing changed).
(b) **trace**: 4 agents, each a client of one hub, replay ``seph-blog1`` in turns of 50
    transactions dealt round-robin; after its turn an agent syncs and the other agents catch
    up. At the end every replica must equal the trace's final text. hybridsync agents put
    the text they reached into their replica; pycrdt agents apply the turn's splices to
    their ``Text`` in one transaction. A second hybridsync run ("hybridsync-lazy") skips the
    extra exchanges that only deliver acknowledgements. ``--txns`` replays a prefix.

Times are medians of ``time.perf_counter`` per cycle/turn (single-threaded in-process work)
plus the total ``time.process_time``; edit work (putting the edit into the replica) and sync
work (making, sending and applying frames) are timed separately. Computing the edited
strings and converting code-point positions to pycrdt's UTF-8 byte offsets happens outside
the timed regions for everyone. The report gives RATIOS ``hybridsync / pycrdt`` (below 1.0
means hybridsync is smaller or faster); absolute numbers depend on the machine and are never
asserted. Correctness is checked (every replica ends equal to the expected text) and reported.

Usage::

    python benches/bench_sync.py [--quick] [--out benches/results]

It writes ``sync.md`` and ``sync.json`` into the ``--out`` folder. The editing traces are
taken from ``HYBRIDSYNC_TRACES`` (see :mod:`hybridsync.traces`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pycrdt
import zstandard
from pycrdt import YMessageType, YSyncMessageType, create_update_message, write_message

from _machine import cpu_model
from hybridsync import Link, Memory
from hybridsync.traces import Trace, apply_splices, load_trace

SEED = 20_240_601
# (a) memory
N_DOCS = 1_000
DOC_BYTES = 2_000
CHANGED_PER_CYCLE = 10
CYCLES = 50
QUICK_CYCLES = 12
IDLE_CYCLES = 20
#: Engines take turns in blocks of cycles (turns), the order rotating from block to block,
#: so that they share the machine's slow noise without evicting each other's caches at
#: every step.
BLOCK_CYCLES = 10
BLOCK_TURNS = 50
# (b) trace
TRACE = "seph-blog1"
AGENTS = 4
TURN_TXNS = 50
QUICK_TXNS = 8_000

#: One splice: (position, number deleted, inserted text); positions in code points for
#: hybridsync, in UTF-8 bytes for pycrdt.
Splice = tuple[int, int, str]
ENGINES = ("hybridsync", "pycrdt-inc", "pycrdt-sv")

_VOWELS = "aeiou"
_CONSONANTS = "bcdfghjklmnprstvwz"
_FOREIGN = ("café", "naïve", "über", "façade", "Ørsted", "señal", "日本語", "данные", "→", "✓")


_STEP1 = bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP1])
_STEP2 = bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP2])


def step1_message(state: bytes) -> bytes:
    """A y-protocol SYNC_STEP1 message (a state vector)."""
    return _STEP1 + write_message(state)


def step2_message(update: bytes) -> bytes:
    """A y-protocol SYNC_STEP2 message (the update a peer is missing)."""
    return _STEP2 + write_message(update)


# --------------------------------------------------------------------------- inputs


def make_vocabulary(rng: random.Random, size: int = 600) -> list[str]:
    words = set()
    while len(words) < size:
        n = rng.choice((1, 2, 2, 3, 3, 4))
        words.add(
            "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(n))
            + rng.choice(("", "", "s", "n", "t"))
        )
    return sorted(words)


def make_document(rng: random.Random, vocab: Sequence[str], size: int) -> str:
    """Lines of seeded words, about ``size`` UTF-8 bytes, one foreign word in ~40."""
    lines, line, total = [], [], 0
    while total < size:
        word = rng.choice(_FOREIGN) if rng.random() < 0.025 else rng.choice(vocab)
        line.append(word)
        total += len(word.encode()) + 1
        if sum(len(w) + 1 for w in line) > 70:
            lines.append(" ".join(line))
            line = []
    if line:
        lines.append(" ".join(line))
    return "\n".join(lines) + "\n"


def small_edit(rng: random.Random, vocab: Sequence[str], text: str) -> list[Splice]:
    """One or two small splices (code points): insert words, delete a span, replace a word."""
    splices: list[Splice] = []
    for _ in range(rng.choice((1, 1, 2))):
        kind = rng.choice(("insert", "insert", "delete", "replace"))
        spaces = [i for i, c in enumerate(text) if c == " "] or [0]
        if kind == "insert":
            pos = rng.choice(spaces)
            ins = " " + " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 4)))
            splice = (pos, 0, ins)
        elif kind == "delete":
            n = rng.randint(1, 25)
            pos = rng.randrange(max(1, len(text) - n))
            splice = (pos, min(n, len(text) - pos), "")
        else:
            start = rng.choice(spaces) + 1
            end = start
            while end < len(text) and text[end] not in " \n":
                end += 1
            splice = (start, end - start, rng.choice(vocab))
        text = apply_splices(text, (splice,))
        splices.append(splice)
    return splices


def to_byte_splices(text: str, splices: Sequence[Splice]) -> tuple[list[Splice], str, int]:
    """Convert code-point splices to UTF-8 byte offsets (pycrdt's ``Text`` indices).

    Returns the byte splices, the text after them and the edit size in UTF-8 bytes
    (inserted + deleted)."""
    out: list[Splice] = []
    edit_bytes = 0
    for pos, deleted, inserted in splices:
        if text.isascii():
            bpos, bdel = pos, deleted
        else:
            bpos = len(text[:pos].encode())
            bdel = len(text[pos : pos + deleted].encode())
        out.append((bpos, bdel, inserted))
        edit_bytes += bdel + len(inserted.encode())
        text = text[:pos] + inserted + text[pos + deleted :]
    return out, text, edit_bytes


@dataclass(frozen=True)
class Change:
    """One document's edit in a cycle/turn, precomputed for every engine."""

    name: str
    new_text: str  # what hybridsync's replica is set to
    byte_splices: tuple[Splice, ...]  # what pycrdt applies
    edit_bytes: int
    #: Seconds it took to build ``new_text`` from the code-point splices with str slicing
    #: (the work an editor holding a plain str does; excluded from every engine's times).
    str_splice_s: float


def make_change(name: str, text: str, splices: Sequence[Splice]) -> Change:
    bsplices, new, nbytes = to_byte_splices(text, splices)
    t0 = time.perf_counter()
    rebuilt = apply_splices(text, tuple(splices))
    elapsed = time.perf_counter() - t0
    assert rebuilt == new
    return Change(name, new, tuple(bsplices), nbytes, elapsed)


# --------------------------------------------------------------------------- measuring


@dataclass
class Sample:
    """What one engine did in one cycle/turn."""

    edit_s: float
    sync_s: float
    up: int  # bytes client(s) -> hub
    down: int  # bytes hub -> client(s)
    frames: int


@dataclass
class Series:
    samples: list[Sample] = field(default_factory=list)
    cpu_s: float = 0.0  # process_time over the samples

    def add(self, s: Sample) -> None:
        self.samples.append(s)

    def col(self, attr: str) -> list[float]:
        return [getattr(s, attr) for s in self.samples]

    def summary(self) -> dict[str, Any]:
        n = len(self.samples)
        edit = self.col("edit_s")
        sync = self.col("sync_s")
        total = [a + b for a, b in zip(edit, sync, strict=True)]
        up, down = sum(self.col("up")), sum(self.col("down"))
        return {
            "n": n,
            "edit_ms_median": statistics.median(edit) * 1e3,
            "sync_ms_median": statistics.median(sync) * 1e3,
            "total_ms_median": statistics.median(total) * 1e3,
            "total_ms_min": min(total) * 1e3,
            "total_ms_sum": sum(total) * 1e3,
            "cpu_ms_mean": self.cpu_s / n * 1e3,
            "cpu_s_total": self.cpu_s,
            "bytes_up": up,
            "bytes_down": down,
            "bytes_total": up + down,
            "bytes_per_cycle_mean": (up + down) / n,
            "bytes_per_cycle_median": statistics.median([s.up + s.down for s in self.samples]),
            "bytes_per_cycle_max": max(s.up + s.down for s in self.samples),
            "frames": int(sum(self.col("frames"))),
        }


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# --------------------------------------------------------------------------- engines


class HsStar:
    """hybridsync: clients each joined to one hub by a Link pair."""

    name = "hybridsync"

    def __init__(self, n_clients: int, docs: dict[str, str]) -> None:
        self.hub = Memory("hub")
        self.clients = [Memory(f"client-{i}") for i in range(n_clients)]
        for name, text in docs.items():
            self.clients[0].text[name] = text
        self.cl = [Link(c, "hub", role="client", epoch=i + 1) for i, c in enumerate(self.clients)]
        self.sv = [Link(self.hub, f"client-{i}", role="server") for i in range(n_clients)]
        self.up = self.down = self.frames = 0

    def exchange(self, i: int) -> None:
        f = self.cl[i].outgoing()
        assert f is not None
        self.sv[i].incoming(f)
        r = self.sv[i].outgoing()
        self.up += len(f)
        self.frames += 1
        if r:
            self.cl[i].incoming(r)
            self.down += len(r)
            self.frames += 1

    def busy(self, i: int) -> bool:
        # "The hub has something for client i" stands for a doorbell (push notification)
        # that costs no bytes here; a client with nothing to say and nothing to fetch
        # does not poll.
        return not (self.cl[i].idle and self.sv[i].idle)

    def settle(self, limit: int = 20) -> None:
        for _ in range(limit):
            pending = [i for i in range(len(self.clients)) if self.busy(i)]
            if not pending:
                return
            for i in pending:
                self.exchange(i)
        raise AssertionError("hybridsync did not go idle")

    def set_texts(self, client: int, changes: Sequence[Change]) -> None:
        text = self.clients[client].text
        for ch in changes:
            text[ch.name] = ch.new_text

    def take_bytes(self) -> tuple[int, int, int]:
        out = (self.up, self.down, self.frames)
        self.up = self.down = self.frames = 0
        return out

    def text_of(self, replica: Memory, name: str) -> str:
        return replica.text[name]


class _CrdtDoc:
    """A pycrdt Doc with one root Text per name, collecting its local updates."""

    def __init__(self, client_id: int, names: Sequence[str]) -> None:
        self.doc: pycrdt.Doc = pycrdt.Doc(client_id=client_id)
        self.texts = {n: self.doc.get(n, type=pycrdt.Text) for n in names}
        self.local_updates: list[bytes] = []
        self._remote = False
        self.doc.observe(self._on_txn)

    def _on_txn(self, event: Any) -> None:
        if not self._remote:
            self.local_updates.append(event.update)

    def apply(self, update: bytes) -> None:
        self._remote = True
        try:
            self.doc.apply_update(update)
        finally:
            self._remote = False

    def edit(self, changes: Sequence[Change]) -> None:
        with self.doc.transaction():
            for ch in changes:
                t = self.texts[ch.name]
                for pos, deleted, inserted in ch.byte_splices:
                    if deleted:
                        del t[pos : pos + deleted]
                    if inserted:
                        t.insert(pos, inserted)

    def load(self, docs: dict[str, str]) -> None:
        with self.doc.transaction():
            for name, text in docs.items():
                self.texts[name] += text


class CrdtStar:
    """pycrdt: clients each joined to one hub Doc; ``mode`` is "inc" or "sv" (see top)."""

    def __init__(self, mode: str, n_clients: int, docs: dict[str, str]) -> None:
        self.mode = mode
        self.name = f"pycrdt-{mode}"
        names = sorted(docs)
        self.hub = _CrdtDoc(1_000, names)
        self.clients = [_CrdtDoc(1 + i, names) for i in range(n_clients)]
        self.hub_sv = [self.hub.doc.get_state() for _ in range(n_clients)]
        self.clients[0].load(docs)
        self.up = self.down = self.frames = 0

    def exchange(self, i: int) -> None:
        """sv mode: one request/reply; inc mode: send client i's updates, relay them."""
        c = self.clients[i]
        if self.mode == "inc":
            for upd in c.local_updates:
                msg = create_update_message(upd)
                self.up += len(msg)
                self.frames += 1
                self.hub.apply(upd)
                for j, other in enumerate(self.clients):
                    if j != i:
                        self.down += len(msg)
                        self.frames += 1
                        other.apply(upd)
            c.local_updates.clear()
            self.hub.local_updates.clear()
            return
        c.local_updates.clear()
        sv_c = c.doc.get_state()
        upd = c.doc.get_update(self.hub_sv[i])
        req = step1_message(sv_c) + step2_message(upd)
        self.hub.apply(upd)
        sv_h = self.hub.doc.get_state()
        back = self.hub.doc.get_update(sv_c)
        rep = step1_message(sv_h) + step2_message(back)
        c.apply(back)
        self.hub_sv[i] = sv_h
        self.up += len(req)
        self.down += len(rep)
        self.frames += 2

    def settle(self) -> None:
        for i in range(len(self.clients)):
            self.exchange(i)

    def take_bytes(self) -> tuple[int, int, int]:
        out = (self.up, self.down, self.frames)
        self.up = self.down = self.frames = 0
        return out

    def text_of(self, replica: _CrdtDoc, name: str) -> str:
        return str(replica.texts[name])


# --------------------------------------------------------------------------- (a) memory


def build_memory(rng: random.Random) -> tuple[dict[str, str], list[str]]:
    vocab = make_vocabulary(rng)
    docs = {f"doc-{i:04d}": make_document(rng, vocab, DOC_BYTES) for i in range(N_DOCS)}
    return docs, vocab


def plan_cycles(
    rng: random.Random, docs: dict[str, str], vocab: Sequence[str], cycles: int
) -> tuple[list[list[Change]], dict[str, str]]:
    current = dict(docs)
    names = sorted(docs)
    plan = []
    for _ in range(cycles):
        changes = []
        for name in sorted(rng.sample(names, CHANGED_PER_CYCLE)):
            change = make_change(name, current[name], small_edit(rng, vocab, current[name]))
            current[name] = change.new_text
            changes.append(change)
        plan.append(changes)
    return plan, current


def run_memory(cycles: int, log: Callable[[str], None]) -> dict[str, Any]:
    rng = random.Random(SEED)
    docs, vocab = build_memory(rng)
    plan, final = plan_cycles(rng, docs, vocab, cycles)
    memory_bytes = sum(len(t.encode()) for t in docs.values())
    log(
        f"(a) memory: {N_DOCS} documents, {memory_bytes:,} bytes; {cycles} cycles of "
        f"{CHANGED_PER_CYCLE} changed documents"
    )

    # -- initial sync (client holds everything, the hub nothing)
    gc.collect()
    setup: dict[str, dict[str, Any]] = {}
    hs_c0 = time.process_time()
    t_hs, hs = timed(lambda: HsStar(1, docs))
    t, _ = timed(lambda: hs.settle())
    hs_c1 = time.process_time()
    up, down, frames = hs.take_bytes()
    setup["hybridsync"] = {
        "ms": (t_hs + t) * 1e3,
        "cpu_ms": (hs_c1 - hs_c0) * 1e3,
        "bytes": up + down,
        "frames": frames,
    }
    engines: dict[str, Any] = {"hybridsync": hs}
    for mode in ("inc", "sv"):
        c0 = time.process_time()
        t_new, eng = timed(lambda m=mode: CrdtStar(m, 1, docs))
        t, _ = timed(lambda e=eng: e.exchange(0))
        c1 = time.process_time()
        up, down, frames = eng.take_bytes()
        setup[eng.name] = {
            "ms": (t_new + t) * 1e3,
            "cpu_ms": (c1 - c0) * 1e3,
            "bytes": up + down,
            "frames": frames,
        }
        engines[eng.name] = eng
    setup_ok = {
        "hybridsync": hs.hub.digest() == hs.clients[0].digest()
        and all(hs.hub.text[n] == t for n, t in docs.items()),
        **{
            name: all(str(engines[name].hub.texts[n]) == t for n, t in docs.items())
            for name in ("pycrdt-inc", "pycrdt-sv")
        },
    }
    for name in ENGINES:
        setup[name]["correct"] = setup_ok[name]
    # hybridsync compresses large frames (zstd level 3); pycrdt leaves that to the transport.
    full_update = engines["pycrdt-sv"].hub.doc.get_update()
    update_zstd3 = len(zstandard.ZstdCompressor(level=3).compress(full_update))

    # -- edit cycles, engines interleaved in blocks (rotating order)
    series = {name: Series() for name in ENGINES}
    edit_bytes = [sum(c.edit_bytes for c in changes) for changes in plan]
    gc.collect()
    gc.disable()
    try:
        for blk, lo in enumerate(range(0, len(plan), BLOCK_CYCLES)):
            for name in ENGINES[blk % 3 :] + ENGINES[: blk % 3]:
                eng = engines[name]
                for changes in plan[lo : lo + BLOCK_CYCLES]:
                    c0 = time.process_time()
                    if name == "hybridsync":
                        t_edit, _ = timed(lambda e=eng, ch=changes: e.set_texts(0, ch))
                        t_sync, _ = timed(lambda e=eng: e.settle())
                    else:
                        t_edit, _ = timed(lambda e=eng, ch=changes: e.clients[0].edit(ch))
                        t_sync, _ = timed(lambda e=eng: e.exchange(0))
                    series[name].cpu_s += time.process_time() - c0
                    up, down, frames = eng.take_bytes()
                    series[name].add(Sample(t_edit, t_sync, up, down, frames))
    finally:
        gc.enable()

    # -- idle cycles (nothing changed): one poll each
    idle = {name: Series() for name in ENGINES}
    gc.collect()
    gc.disable()
    try:
        for name in ENGINES:
            eng = engines[name]
            for _ in range(IDLE_CYCLES):
                c0 = time.process_time()
                t_sync, _ = timed(lambda e=eng: e.exchange(0))
                idle[name].cpu_s += time.process_time() - c0
                up, down, frames = eng.take_bytes()
                idle[name].add(Sample(0.0, t_sync, up, down, frames))
    finally:
        gc.enable()

    correct = {
        "hybridsync": hs.hub.digest() == hs.clients[0].digest()
        and all(hs.hub.text[n] == t for n, t in final.items())
        and hs.cl[0].idle
        and hs.sv[0].idle
        and hs.cl[0].metrics.resyncs == hs.sv[0].metrics.resyncs == 0
        and hs.cl[0].metrics.hunks_failed == hs.sv[0].metrics.hunks_failed == 0,
        **{
            name: all(
                str(engines[name].hub.texts[n]) == t == str(engines[name].clients[0].texts[n])
                for n, t in final.items()
            )
            for name in ("pycrdt-inc", "pycrdt-sv")
        },
    }
    return {
        "docs": N_DOCS,
        "memory_bytes": memory_bytes,
        "cycles": cycles,
        "changed_per_cycle": CHANGED_PER_CYCLE,
        "idle_cycles": IDLE_CYCLES,
        "edit_bytes_total": sum(edit_bytes),
        "edit_bytes_per_cycle_mean": statistics.mean(edit_bytes),
        "edit_bytes_per_cycle_median": statistics.median(edit_bytes),
        "str_splice_ms_per_cycle_median": statistics.median(
            sum(c.str_splice_s for c in changes) for changes in plan
        )
        * 1e3,
        "setup": setup,
        "pycrdt_update_zstd3_bytes": update_zstd3,
        "cycles_summary": {name: series[name].summary() for name in ENGINES},
        "idle_summary": {name: idle[name].summary() for name in ENGINES},
        "correct": correct,
        "hybridsync_metrics": {
            "client": vars(hs.cl[0].metrics),
            "server": vars(hs.sv[0].metrics),
        },
    }


# --------------------------------------------------------------------------- (b) trace


def plan_turns(trace: Trace, n_txns: int) -> tuple[list[tuple[int, Change]], str, int]:
    """Turns of TURN_TXNS transactions dealt round-robin to the agents."""
    text = trace.start
    turns = []
    txns = trace.txns[:n_txns]
    for k in range(0, len(txns), TURN_TXNS):
        splices = [s for txn in txns[k : k + TURN_TXNS] for s in txn]
        change = make_change("doc", text, splices)
        turns.append((len(turns) % AGENTS, change))
        text = change.new_text
    return turns, text, len(txns)


def run_trace(trace: Trace, n_txns: int, log: Callable[[str], None]) -> dict[str, Any]:
    turns, expected, n_txns = plan_turns(trace, n_txns)
    full = n_txns == len(trace.txns)
    if full:
        assert expected == trace.end, "replaying the trace does not give its endContent"
    log(
        f"(b) trace {trace.name}: {n_txns:,} of {len(trace.txns):,} transactions, "
        f"{len(turns)} turns of {TURN_TXNS}, {AGENTS} agents"
    )
    # hybridsync twice: each turn synced until every link is idle ("to idle"), or only
    # the catch-up polls with acknowledgements riding on the next turn's polls ("lazy").
    names = ("hybridsync", "hybridsync-lazy", "pycrdt-inc", "pycrdt-sv")
    docs = {"doc": trace.start}
    hs = HsStar(AGENTS, docs)
    hs.settle()
    lazy = HsStar(AGENTS, docs)
    lazy.settle()
    inc = CrdtStar("inc", AGENTS, docs)
    sv = CrdtStar("sv", AGENTS, docs)
    for e in (inc, sv):
        e.settle()
    for e in (hs, lazy, inc, sv):
        e.take_bytes()
    series = {name: Series() for name in names}
    edit_bytes = sum(ch.edit_bytes for _, ch in turns)
    mismatches = {name: 0 for name in names}

    def step_hs(e: HsStar, agent: int, ch: Change, to_idle: bool) -> tuple[float, float]:
        t_edit, _ = timed(lambda: e.set_texts(agent, (ch,)))
        t0 = time.perf_counter()
        e.exchange(agent)
        for j in range(AGENTS):
            if j != agent:
                e.exchange(j)
        if to_idle:
            e.settle()
        return t_edit, time.perf_counter() - t0

    def step_crdt(e: CrdtStar, agent: int, ch: Change) -> tuple[float, float]:
        t_edit, _ = timed(lambda: e.clients[agent].edit((ch,)))
        t0 = time.perf_counter()
        e.exchange(agent)
        if e.mode == "sv":
            for j in range(AGENTS):
                if j != agent:
                    e.exchange(j)
        return t_edit, time.perf_counter() - t0

    steps: dict[str, Callable[[int, Change], tuple[float, float]]] = {
        "hybridsync": lambda a, ch: step_hs(hs, a, ch, True),
        "hybridsync-lazy": lambda a, ch: step_hs(lazy, a, ch, False),
        "pycrdt-inc": lambda a, ch: step_crdt(inc, a, ch),
        "pycrdt-sv": lambda a, ch: step_crdt(sv, a, ch),
    }
    engines: dict[str, HsStar | CrdtStar] = {
        "hybridsync": hs,
        "hybridsync-lazy": lazy,
        "pycrdt-inc": inc,
        "pycrdt-sv": sv,
    }

    def text_of(name: str, agent: int) -> str:
        e = engines[name]
        if isinstance(e, HsStar):
            return e.clients[agent].text["doc"]
        return str(e.clients[agent].texts["doc"])

    gc.collect()
    gc.disable()
    t_start = time.perf_counter()
    try:
        for blk, lo in enumerate(range(0, len(turns), BLOCK_TURNS)):
            for name in names[blk % 4 :] + names[: blk % 4]:
                for k in range(lo, min(lo + BLOCK_TURNS, len(turns))):
                    agent, ch = turns[k]
                    if k % 16 == 0:
                        # The agent must hold the text the turn's positions refer to.
                        prev = turns[k - 1][1].new_text if k else trace.start
                        if text_of(name, agent) != prev:
                            mismatches[name] += 1
                    c0 = time.process_time()
                    t_edit, t_sync = steps[name](agent, ch)
                    series[name].cpu_s += time.process_time() - c0
                    up, down, frames = engines[name].take_bytes()
                    series[name].add(Sample(t_edit, t_sync, up, down, frames))
            if blk and blk % 10 == 0:
                log(f"    turn {lo}/{len(turns)} ({time.perf_counter() - t_start:.1f} s)")
    finally:
        gc.enable()
    # The lazy run still owes acknowledgements: finish it (counted in its totals).
    c0 = time.process_time()
    t_fin, _ = timed(lazy.settle)
    series["hybridsync-lazy"].cpu_s += time.process_time() - c0
    up, down, frames = lazy.take_bytes()
    last = series["hybridsync-lazy"].samples[-1]
    last.sync_s += t_fin
    last.up, last.down, last.frames = last.up + up, last.down + down, last.frames + frames

    correct: dict[str, bool] = {}
    for name in ("hybridsync", "hybridsync-lazy"):
        e = engines[name]
        assert isinstance(e, HsStar)
        ok = mismatches[name] == 0 and e.hub.text["doc"] == expected
        ok = ok and all(c.text["doc"] == expected for c in e.clients)
        ok = ok and not any(e.busy(i) for i in range(AGENTS))
        correct[name] = ok
    for name in ("pycrdt-inc", "pycrdt-sv"):
        e = engines[name]
        assert isinstance(e, CrdtStar)
        ok = mismatches[name] == 0 and str(e.hub.texts["doc"]) == expected
        correct[name] = ok and all(str(c.texts["doc"]) == expected for c in e.clients)
    metrics = {
        name: {
            "resyncs": sum(lk.metrics.resyncs for lk in (*e.cl, *e.sv)),
            "hunks_failed": sum(lk.metrics.hunks_failed for lk in (*e.cl, *e.sv)),
            "retransmits": sum(lk.metrics.retransmits for lk in (*e.cl, *e.sv)),
            "stale_frames": sum(lk.metrics.stale_frames for lk in (*e.cl, *e.sv)),
            "fulls_sent": sum(lk.metrics.fulls_sent for lk in (*e.cl, *e.sv)),
        }
        for name, e in (("hybridsync", hs), ("hybridsync-lazy", lazy))
    }
    return {
        "trace": trace.name,
        "txns": n_txns,
        "txns_in_trace": len(trace.txns),
        "whole_trace": full,
        "turns": len(turns),
        "turn_txns": TURN_TXNS,
        "agents": AGENTS,
        "final_code_points": len(expected),
        "edit_bytes_total": edit_bytes,
        "str_splice_ms_per_turn_median": statistics.median(ch.str_splice_s for _, ch in turns)
        * 1e3,
        "summary": {name: series[name].summary() for name in names},
        "correct": correct,
        "hybridsync_metrics": metrics,
        "pycrdt_state_bytes": {
            "state_vector": len(sv.hub.doc.get_state()),
            "full_update": len(sv.hub.doc.get_update()),
            "empty_diff_update": len(sv.hub.doc.get_update(sv.hub.doc.get_state())),
        },
    }


# --------------------------------------------------------------------------- report


def environment(argv: Sequence[str]) -> dict[str, Any]:
    cpu = cpu_model()
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", "benches/bench_sync.py", *argv]),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": {p: metadata.version(p) for p in ("hybridsync", "pycrdt")},
    }


def _ratio(a: float, b: float) -> str:
    if b == 0:
        return "—" if a == 0 else "∞"
    r = a / b
    return f"{r:.2f}x" if r >= 0.01 else f"{r:.4f}x"


def _ms(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _ok(b: bool) -> str:
    return "✓" if b else "✗"


def render(env: dict[str, Any], a: dict[str, Any], b: dict[str, Any], quick: bool) -> str:
    v = env["versions"]
    out = [
        "# Sync: hybridsync vs pycrdt",
        "",
        f"- {env['date_utc']}; Python {env['python']}, {env['platform']}; CPU: {env['cpu']} "
        f"({env['cpu_count']} logical CPUs, load average "
        f"{' / '.join(map(str, env['loadavg_at_start']))} at start)",
        f"- hybridsync {v['hybridsync']}, pycrdt {v['pycrdt']}; mode: "
        f"{'quick' if quick else 'full'}; command: `{env['command']}`",
        "- engines: **hybridsync** = `Link` pairs (diff-sync, one request/reply per exchange); "
        "**pycrdt-inc** = pycrdt-websocket style, each local transaction's update sent as a "
        "y-protocol SYNC_UPDATE message, relayed by the hub, no replies; **pycrdt-sv** = "
        "state-vector polling, request = STEP1(client SV) + STEP2(update since the hub SV last "
        "seen), reply = STEP1(hub SV) + STEP2(hub update since the client SV).",
        "- wire bytes = exact frame / y-protocol message sizes (no TCP/WebSocket overhead for "
        "anyone). ms = median `perf_counter` per cycle/turn (edit = putting the edit into the "
        "replica, sync = making, sending and applying frames); CPU = total `process_time` / "
        "count. Ratios are **hybridsync / pycrdt**: below 1.0 means hybridsync is smaller or "
        "faster. ✓ = every replica ends equal to the expected text.",
        "",
        f"## (a) Memory of {a['docs']:,} documents ({a['memory_bytes']:,} bytes), "
        f"{a['changed_per_cycle']} documents edited per cycle, {a['cycles']} cycles",
        "",
        "pycrdt holds the memory as one `Doc` with one root `Text` per document. Edits per "
        f"cycle: mean {a['edit_bytes_per_cycle_mean']:.0f} bytes (inserted + deleted UTF-8 "
        f"bytes; median {a['edit_bytes_per_cycle_median']:.0f}). For reference, building the "
        "edited strings from the splices with str slicing (hybridsync's input, excluded "
        f"everywhere) takes {_ms(a['str_splice_ms_per_cycle_median'])} ms per cycle (median).",
        "",
        "| engine | wire B/cycle (mean) | up / down B (mean) | max B/cycle | wire / edit bytes "
        "| frames/cycle | edit ms | sync ms | total ms (min) | CPU ms/cycle | hybridsync / "
        "this: bytes | hybridsync / this: CPU | correct |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    cs = a["cycles_summary"]
    eb = a["edit_bytes_total"]
    hs = cs["hybridsync"]
    for name in ENGINES:
        s = cs[name]
        n = s["n"]
        out.append(
            f"| {name} | {s['bytes_per_cycle_mean']:.0f} | {s['bytes_up'] / n:.0f} / "
            f"{s['bytes_down'] / n:.0f} | {s['bytes_per_cycle_max']} | "
            f"{s['bytes_total'] / eb:.2f} | {s['frames'] / n:.1f} | "
            f"{_ms(s['edit_ms_median'])} | {_ms(s['sync_ms_median'])} | "
            f"{_ms(s['total_ms_median'])} ({_ms(s['total_ms_min'])}) | {_ms(s['cpu_ms_mean'])} "
            f"| {'—' if name == 'hybridsync' else _ratio(hs['bytes_total'], s['bytes_total'])} "
            f"| {'—' if name == 'hybridsync' else _ratio(hs['cpu_s_total'], s['cpu_s_total'])} "
            f"| {_ok(a['correct'][name])} |"
        )
    out += [
        "",
        "The two ratio columns compare totals over all cycles (wire bytes; `process_time`).",
        "",
        f"**Idle cycle** (nothing changed, one poll; {a['idle_cycles']} cycles) and **initial "
        "sync** (the hub starts empty and receives the whole memory):",
        "",
        "| engine | idle B/cycle (up / down) | idle ms (median) | idle CPU ms | initial sync bytes "
        "| initial / memory bytes | build + initial sync ms | initial correct |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ENGINES:
        s = a["idle_summary"][name]
        st = a["setup"][name]
        n = s["n"]
        out.append(
            f"| {name} | {s['bytes_total'] / n:.0f} ({s['bytes_up'] / n:.0f} / "
            f"{s['bytes_down'] / n:.0f}) | {_ms(s['sync_ms_median'])} | {_ms(s['cpu_ms_mean'])} "
            f"| {st['bytes']:,} | {st['bytes'] / a['memory_bytes']:.3f} | {_ms(st['ms'])} | "
            f"{_ok(st['correct'])} |"
        )
    scope = (
        "the whole trace"
        if b["whole_trace"]
        else f"a prefix: the first {b['txns']:,} of {b['txns_in_trace']:,} transactions"
    )
    out += [
        "",
        "pycrdt-inc sends nothing when nothing changed; its idle cost is that of the transport "
        "(keep-alives), not counted here. The initial sync of pycrdt-inc and pycrdt-sv is the "
        "same update (the creating transaction / the diff against an empty state vector). "
        "hybridsync zstd-compresses frames of 1 KB and more; the same pycrdt update compressed "
        f"with zstd level 3 (as a compressing transport would) is "
        f"{a['pycrdt_update_zstd3_bytes']:,} bytes.",
        "",
        f"## (b) Trace replay: {b['trace']}, {b['agents']} agents, turns of {b['turn_txns']} "
        f"transactions round-robin ({scope}; {b['turns']:,} turns)",
        "",
        "After its turn the agent syncs with the hub, then every other agent polls once and "
        "catches up. **hybridsync** then keeps exchanging until every link is idle "
        "(acknowledgements delivered); **hybridsync-lazy** stops after the catch-up polls and "
        "lets the acknowledgements ride on the next turn's polls (and settles once at the end). "
        "A poll happens only where there is something to send or fetch (a doorbell, free here, "
        "tells a client the hub has news). pycrdt-inc: the agent's turn is one transaction, one "
        "update, relayed to the 3 others. pycrdt-sv: the agent's exchange then one poll per "
        f"other agent. Edits: {b['edit_bytes_total']:,} bytes (inserted + deleted UTF-8 "
        f"bytes); final text {b['final_code_points']:,} code points. For reference, building "
        "each turn's text from its splices with str slicing (hybridsync's input, excluded "
        f"everywhere) takes {_ms(b['str_splice_ms_per_turn_median'])} ms per turn (median).",
        "",
        "| engine | wire bytes | up / down | wire / edit bytes | frames | edit ms/turn | sync "
        "ms/turn | total ms/turn (min) | CPU s total | hybridsync / this: bytes | hybridsync / "
        "this: CPU | correct |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    bs = b["summary"]
    hs = bs["hybridsync"]
    for name, s in bs.items():
        out.append(
            f"| {name} | {s['bytes_total']:,} | {s['bytes_up']:,} / {s['bytes_down']:,} | "
            f"{s['bytes_total'] / b['edit_bytes_total']:.2f} | {s['frames']:,} | "
            f"{_ms(s['edit_ms_median'])} | {_ms(s['sync_ms_median'])} | "
            f"{_ms(s['total_ms_median'])} ({_ms(s['total_ms_min'])}) | {s['cpu_s_total']:.2f} | "
            f"{'—' if name == 'hybridsync' else _ratio(hs['bytes_total'], s['bytes_total'])} | "
            f"{'—' if name == 'hybridsync' else _ratio(hs['cpu_s_total'], s['cpu_s_total'])} | "
            f"{_ok(b['correct'][name])} |"
        )
    psb = b["pycrdt_state_bytes"]
    out += [
        "",
        f"pycrdt at the end: state vector {psb['state_vector']} B, whole document as an "
        f"update {psb['full_update']:,} B, an empty diff update (what pycrdt-sv sends when "
        f"nothing is new: the whole delete set) {psb['empty_diff_update']:,} B.",
        "",
        "## Who wins (from the numbers above)",
        "",
        *verdicts(a, b),
        "",
    ]
    return "\n".join(out)


def verdicts(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """One line per comparison: the smaller / faster side and by how much."""

    def line(label: str, ours: float, theirs: float, other: str, unit: str) -> str:
        if ours == theirs:
            return f"- {label}: tie ({unit})."
        if theirs == 0:
            return f"- {label}: **{other} wins** ({unit}; {other} sends none, hybridsync {ours:,})."
        if ours > theirs:
            return (
                f"- {label}: **{other} wins** ({unit}; hybridsync uses {ours / theirs:.2f}x as "
                "much)."
            )
        return f"- {label}: **hybridsync wins** ({unit}; {theirs / ours:.2f}x less than {other})."

    out = []
    cs, idle, setup = a["cycles_summary"], a["idle_summary"], a["setup"]
    for other in ENGINES[1:]:
        out.append(
            line(
                f"(a) edit cycles vs {other}",
                cs["hybridsync"]["bytes_total"],
                cs[other]["bytes_total"],
                other,
                "wire bytes",
            )
        )
        out.append(
            line(
                f"(a) edit cycles vs {other}",
                cs["hybridsync"]["cpu_s_total"],
                cs[other]["cpu_s_total"],
                other,
                "CPU",
            )
        )
        out.append(
            line(
                f"(a) idle poll vs {other}",
                round(idle["hybridsync"]["bytes_per_cycle_mean"]),
                round(idle[other]["bytes_per_cycle_mean"]),
                other,
                "wire bytes per poll",
            )
        )
        out.append(
            line(
                f"(a) initial sync vs {other}",
                setup["hybridsync"]["bytes"],
                setup[other]["bytes"],
                other,
                "wire bytes",
            )
        )
    out.append(
        line(
            "(a) initial sync vs the pycrdt update zstd-compressed",
            setup["hybridsync"]["bytes"],
            a["pycrdt_update_zstd3_bytes"],
            "pycrdt + zstd",
            "wire bytes; the gap above is compression",
        )
    )
    bs = b["summary"]
    for ours in ("hybridsync", "hybridsync-lazy"):
        for other in ("pycrdt-inc", "pycrdt-sv"):
            for key, unit in (("bytes_total", "wire bytes"), ("cpu_s_total", "CPU")):
                out.append(
                    line(f"(b) {ours} vs {other}", bs[ours][key], bs[other][key], other, unit)
                )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer cycles, a trace prefix")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--cycles", type=int, help=f"edit cycles in (a) (default {CYCLES})")
    parser.add_argument(
        "--txns", type=int, help="trace prefix in (b) (default: whole trace; --quick: 8000)"
    )
    args = parser.parse_args(argv)
    argv_used = list(sys.argv[1:] if argv is None else argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    env = environment(argv_used)
    cycles = args.cycles or (QUICK_CYCLES if args.quick else CYCLES)
    trace = load_trace(TRACE)
    n_txns = args.txns or (QUICK_TXNS if args.quick else len(trace.txns))
    t0 = time.perf_counter()
    a = run_memory(cycles, log)
    log(f"    done in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    b = run_trace(trace, n_txns, log)
    log(f"    done in {time.perf_counter() - t0:.1f} s")
    report = render(env, a, b, args.quick)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sync.md").write_text(report)
    data = {"environment": env, "quick": args.quick, "memory": a, "trace": b}
    (args.out / "sync.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    ok = all(a["correct"].values()) and all(b["correct"].values())
    ok = ok and all(s["correct"] for s in a["setup"].values())
    if not ok:
        log("CORRECTNESS FAILURE: see the correct columns")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
