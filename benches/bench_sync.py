#!/usr/bin/env python3
"""Side-by-side benchmark of hybridsync's sync against pycrdt (Yjs/yrs) and Loro doing the
same job, each driven the way its own users drive it.

Engines (all in one process, on the same edits, interleaved in blocks of cycles/turns whose
order rotates from block to block, so that they share the machine's noise):

* ``hybridsync`` -- :class:`hybridsync.Link` pairs (differential synchronization: a client
  sends a request, the hub answers; exchanges repeat until both links are idle).
* ``pycrdt`` -- the y-protocols flow of pycrdt-websocket / y-websocket over a reliable
  connection. On connect the client sends ``SYNC_STEP1`` (its state vector), the hub answers
  ``SYNC_STEP2`` (``get_update(sv)``) and its own ``SYNC_STEP1``, the client answers with
  ``SYNC_STEP2``. After that only incremental updates travel: at each flush a client sends ONE
  ``SYNC_UPDATE`` message holding ``pycrdt.merge_updates`` of the transaction updates
  (``TransactionEvent.update``) made since its last flush; the hub applies it and relays once
  per other client per flush (one merged message of what the others sent). Nothing is sent
  when nothing changed (no periodic anti-entropy over a reliable transport; a gap would
  trigger the handshake again, and there is none here).
* ``loro`` -- the same flow with ``loro.LoroDoc``: on connect the client sends its version
  vector, the hub answers ``export(ExportMode.Updates(vv))`` (also for an empty peer: fewer
  bytes and instructions than a snapshot here) and its own version vector, the client
  answers with what the hub lacks. A client keeps the version vector last sent to the hub
  and sends one ``export(ExportMode.Updates(vv))`` per flush; the hub imports it and relays
  the blobs to every other client once per flush, which imports them with ``import_batch``.
  Text edits use Loro's code-point positions.
* ``pycrdt-sv`` (scenario (a) only) -- a different deployment, kept because it has the same
  request/reply shape as hybridsync: state-vector POLLING, every cycle a request
  ``SYNC_STEP1(client sv) + SYNC_STEP2(update since the hub sv last seen)`` and a reply
  ``SYNC_STEP1(hub sv) + SYNC_STEP2(hub update since the client sv)``. y-websocket over a
  live connection does not do this; the row says what polling costs pycrdt.

Wire bytes are the exact sizes of the messages (y-protocol framing from :mod:`pycrdt`; for
Loro a varint length before each blob, like the y-protocol framing); transport overhead
(TCP, WebSocket) is not counted for anyone.

Scenarios:

(a) **memory**: 1,000 documents of about 2 KB (seeded text, a few non-ASCII words) on a
    client and a hub; the initial sync moves them from the client to the empty hub
    (the handshake above for pycrdt and Loro). Every cycle the client makes small seeded
    edits to 10 documents (one transaction / commit), then flushes. pycrdt and Loro hold the
    memory as ONE document with one root text per document (one sync unit, as their users
    hold a set of named texts). Also reported: an idle cycle (nothing changed) and the
    state each engine holds at the end.
(b) **trace**: 4 agents, each a client of one hub, replay ``seph-blog1`` in turns of 50
    transactions dealt round-robin; after its turn an agent flushes and the others catch up
    (hybridsync: the agent's exchange, then one poll per other agent, then exchanges until
    idle; "hybridsync-lazy" leaves the acknowledgement-only exchanges to the next turn).
    pycrdt and Loro agents apply the turn's splices in one transaction / commit. At the end
    every replica must equal the trace's final text. ``--txns`` replays a prefix.

What is timed, the same for everyone: *edit* = putting the precomputed edit into the
engine's replica (hybridsync: assigning the new text; pycrdt/Loro: the splices and the
commit); *sync* = everything from the flush until every replica has integrated it (making,
sending and applying messages, relays included). Building the edited strings, converting
code points to UTF-8 offsets, counting bytes, checks and logging happen outside the timed
regions. Times are medians of ``time.perf_counter`` per cycle/turn (single-threaded
in-process work) plus the total ``time.process_time``. The report gives RATIOS
``hybridsync / baseline`` (below 1.0: hybridsync is smaller or faster). Correctness is
checked (every replica ends equal to the expected text) and reported.

Instruction counts (``--instructions``): after the timed run the script runs itself on a
reduced size (``--instr-docs`` documents, ``--instr-cycles`` cycles, ``--instr-txns`` trace
transactions) under ``valgrind --tool=callgrind --collect-atstart=no --toggle-collect=ffi_call
--dump-after=ffi_call``. In that run every timed region is called as the callback of a ctypes
function pointer, i.e. inside libffi's ``ffi_call``: collection is on exactly while the region
runs and each region ends in its own callgrind dump, so the counts hold the region's
instructions and nothing else (no engine uses ctypes; the number of dumps is checked). The
constant cost of the ctypes round trip (about 2,000 instructions, measured on empty regions
in the same run) is subtracted. Counts are exact for that run and nearly deterministic
(``PYTHONHASHSEED=0``; Loro draws random peer ids, so its numbers move by a few per mille).

Usage::

    python benches/bench_sync.py [--quick] [--instructions] [--out benches/results]

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
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import loro
import pycrdt
import zstandard
from pycrdt import YMessageType, YSyncMessageType, create_update_message, write_message

from _machine import Regions, callgrind_regions, cpu_model
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
#: fresh engines built per engine for the initial sync (medians reported)
INIT_REPS = 3
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
# the reduced size measured under callgrind
INSTR_DOCS = 1_000
INSTR_CYCLES = 6
INSTR_IDLE = 4
INSTR_TXNS = 2_000

#: One splice: (position, number deleted, inserted text); positions in code points for
#: hybridsync and Loro, in UTF-8 bytes for pycrdt.
Splice = tuple[int, int, str]
ENGINES_A = ("hybridsync", "pycrdt", "loro", "pycrdt-sv")
ENGINES_B = ("hybridsync", "hybridsync-lazy", "pycrdt", "loro")

_VOWELS = "aeiou"
_CONSONANTS = "bcdfghjklmnprstvwz"
_FOREIGN = ("café", "naïve", "über", "façade", "Ørsted", "señal", "日本語", "данные", "→", "✓")

#: The timed regions; under callgrind each one is measured in instructions.
REGIONS = Regions()

_STEP1 = bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP1])
_STEP2 = bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP2])


def step1_message(state: bytes) -> bytes:
    """A y-protocol SYNC_STEP1 message (a state vector)."""
    return _STEP1 + write_message(state)


def step2_message(update: bytes) -> bytes:
    """A y-protocol SYNC_STEP2 message (the update a peer is missing)."""
    return _STEP2 + write_message(update)


def framed(blob: bytes) -> int:
    """Bytes of a blob sent with a varint length in front (Loro messages)."""
    n, size = len(blob), 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size + len(blob)


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
    splices: tuple[Splice, ...]  # what Loro applies (code points)
    byte_splices: tuple[Splice, ...]  # what pycrdt applies (UTF-8 bytes)
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
    return Change(name, new, tuple(splices), tuple(bsplices), nbytes, elapsed)


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


def timed(label: str, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Run one timed region (``label`` names it in the instruction counts)."""
    t0 = time.perf_counter()
    out = REGIONS.run(label, fn)
    return time.perf_counter() - t0, out


def rotated(names: Sequence[str], k: int) -> tuple[str, ...]:
    k %= len(names)
    return (*names[k:], *names[:k])


# --------------------------------------------------------------------------- engines


class HsStar:
    """hybridsync: clients each joined to one hub by a Link pair."""

    name = "hybridsync"

    def __init__(self, n_clients: int) -> None:
        self.hub = Memory("hub")
        self.clients = [Memory(f"client-{i}") for i in range(n_clients)]
        self.cl = [Link(c, "hub", role="client", epoch=i + 1) for i, c in enumerate(self.clients)]
        self.sv = [Link(self.hub, f"client-{i}", role="server") for i in range(n_clients)]
        self.up = self.down = self.frames = 0

    def load(self, docs: dict[str, str]) -> None:
        text = self.clients[0].text
        for name, value in docs.items():
            text[name] = value

    def connect_all(self) -> None:
        self.settle()

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

    def edit(self, client: int, changes: Sequence[Change]) -> None:
        text = self.clients[client].text
        for ch in changes:
            text[ch.name] = ch.new_text

    def flush(self, client: int) -> None:
        self.settle()

    def idle(self) -> None:
        """An idle cycle as a session runs it: push-driven, a client with nothing
        to say and nothing to fetch sends nothing (liveness is the WebSocket
        keepalive, which the CRDT transports need as much)."""
        if self.busy(0):
            self.exchange(0)

    def take_bytes(self) -> tuple[int, int, int]:
        out = (self.up, self.down, self.frames)
        self.up = self.down = self.frames = 0
        return out

    def replicas(self) -> list[Memory]:
        return [self.hub, *self.clients]

    @staticmethod
    def text_of(replica: Memory, name: str) -> str:
        return replica.text[name]


class _YReplica:
    """A pycrdt Doc with one root Text per name, collecting its local transactions'
    updates (``TransactionEvent.update``) until the next flush."""

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

    def take_local(self) -> bytes | None:
        """One update for everything written since the last call (``merge_updates``)."""
        ups = self.local_updates
        if not ups:
            return None
        self.local_updates = []
        return ups[0] if len(ups) == 1 else pycrdt.merge_updates(*ups)


class YStar:
    """pycrdt over y-protocols: handshake on connect, then one SYNC_UPDATE per link per
    flush, relayed by the hub once per other client per flush (see the top)."""

    name = "pycrdt"

    def __init__(self, n_clients: int, names: Sequence[str]) -> None:
        self.hub = _YReplica(1_000, names)
        self.clients = [_YReplica(1 + i, names) for i in range(n_clients)]
        self.connected: list[int] = []
        self.outbox: list[list[bytes]] = [[] for _ in range(n_clients)]
        self.up = self.down = self.frames = 0

    def load(self, docs: dict[str, str]) -> None:
        self.clients[0].load(docs)

    def connect(self, i: int) -> None:
        """The y-protocols handshake: STEP1 ->, <- STEP2 + STEP1, STEP2 ->."""
        c, hub = self.clients[i], self.hub
        sv_c = c.doc.get_state()
        m1 = step1_message(sv_c)
        back = hub.doc.get_update(sv_c)
        sv_h = hub.doc.get_state()
        m2, m3 = step2_message(back), step1_message(sv_h)
        c.apply(back)
        upd = c.doc.get_update(sv_h)
        m4 = step2_message(upd)
        hub.apply(upd)
        c.local_updates = []  # all of it is at the hub now
        if hub.doc.get_state() != sv_h:  # the hub's doc changed: its update event fires
            for j in self.connected:
                self.outbox[j].append(upd)
        self.connected.append(i)
        self.up += len(m1) + len(m4)
        self.down += len(m2) + len(m3)
        self.frames += 4
        self.relay()

    def connect_all(self) -> None:
        for i in range(len(self.clients)):
            self.connect(i)

    def edit(self, client: int, changes: Sequence[Change]) -> None:
        self.clients[client].edit(changes)

    def flush(self, i: int) -> None:
        upd = self.clients[i].take_local()
        if upd is not None:
            msg = create_update_message(upd)
            self.up += len(msg)
            self.frames += 1
            self.hub.apply(upd)
            for j in self.connected:
                if j != i:
                    self.outbox[j].append(upd)
        self.relay()

    def relay(self) -> None:
        """The hub's flush: one message per client holding what the others sent."""
        for j in self.connected:
            box = self.outbox[j]
            if box:
                self.outbox[j] = []
                upd = box[0] if len(box) == 1 else pycrdt.merge_updates(*box)
                self.down += len(create_update_message(upd))
                self.frames += 1
                self.clients[j].apply(upd)

    def idle(self) -> None:
        """Nothing changed: the flush finds nothing to send."""
        self.flush(0)

    def take_bytes(self) -> tuple[int, int, int]:
        out = (self.up, self.down, self.frames)
        self.up = self.down = self.frames = 0
        return out

    def replicas(self) -> list[_YReplica]:
        return [self.hub, *self.clients]

    @staticmethod
    def text_of(replica: _YReplica, name: str) -> str:
        return str(replica.texts[name])


class SvStar(YStar):
    """pycrdt with state-vector POLLING (a different deployment; see the top)."""

    name = "pycrdt-sv"

    def __init__(self, n_clients: int, names: Sequence[str]) -> None:
        super().__init__(n_clients, names)
        self.hub_sv = [self.hub.doc.get_state() for _ in range(n_clients)]

    def connect(self, i: int) -> None:
        self.exchange(i)

    def exchange(self, i: int) -> None:
        """One request/reply: STEP1 + STEP2 ->, <- STEP1 + STEP2."""
        c = self.clients[i]
        c.local_updates = []
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

    def flush(self, i: int) -> None:
        self.exchange(i)

    def idle(self) -> None:
        self.exchange(0)


class _LoroReplica:
    """A LoroDoc with one root text per name; ``sent`` is the version vector last sent to
    the hub (everything the hub is known to hold)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.doc = loro.LoroDoc()
        self.texts = {n: self.doc.get_text(n) for n in names}
        self.sent = loro.VersionVector()
        self.dirty = False

    def edit(self, changes: Sequence[Change]) -> None:
        for ch in changes:
            t = self.texts[ch.name]
            for pos, deleted, inserted in ch.splices:
                if deleted:
                    t.delete(pos, deleted)
                if inserted:
                    t.insert(pos, inserted)
        self.doc.commit()
        self.dirty = True

    def load(self, docs: dict[str, str]) -> None:
        for name, text in docs.items():
            self.texts[name].insert(0, text)
        self.doc.commit()
        self.dirty = True


_EMPTY_VV = loro.VersionVector()


def loro_export(doc: loro.LoroDoc, vv: loro.VersionVector) -> bytes:
    """What a peer at ``vv`` lacks: ``ExportMode.Updates(vv)``, also for an empty peer.
    (A snapshot was measured here too: 1.6x the bytes, twice the instructions for the
    initial sync, and the hub that loaded it lazily pays the decoding in its next edit
    cycles; the state rows give its size.)"""
    return doc.export(loro.ExportMode.Updates(vv))


class LoroStar:
    """Loro: version-vector handshake on connect, then one ``export(Updates(vv))`` per link
    per flush, relayed by the hub once per other client per flush, ``import_batch`` on
    receipt (see the top)."""

    name = "loro"

    def __init__(self, n_clients: int, names: Sequence[str]) -> None:
        self.hub = _LoroReplica(names)
        self.clients = [_LoroReplica(names) for _ in range(n_clients)]
        self.connected: list[int] = []
        self.outbox: list[list[bytes]] = [[] for _ in range(n_clients)]
        self.up = self.down = self.frames = 0

    def load(self, docs: dict[str, str]) -> None:
        self.clients[0].load(docs)

    def connect(self, i: int) -> None:
        """vv ->, <- updates + vv, updates ->."""
        c, hub = self.clients[i], self.hub.doc
        vv_c = c.doc.oplog_vv
        m1 = vv_c.encode()
        back = loro_export(hub, vv_c)
        vv_h = hub.oplog_vv
        m3 = vv_h.encode()
        c.doc.import_(back)
        upd = loro_export(c.doc, vv_h)
        hub.import_(upd)
        c.sent, c.dirty = c.doc.oplog_vv, False
        if not vv_h.includes_vv(vv_c):
            for j in self.connected:
                self.outbox[j].append(upd)
        self.connected.append(i)
        self.up += framed(m1) + framed(upd)
        self.down += framed(back) + framed(m3)
        self.frames += 4
        self.relay()

    def connect_all(self) -> None:
        for i in range(len(self.clients)):
            self.connect(i)

    def edit(self, client: int, changes: Sequence[Change]) -> None:
        self.clients[client].edit(changes)

    def flush(self, i: int) -> None:
        c = self.clients[i]
        if c.dirty:
            blob = c.doc.export(loro.ExportMode.Updates(c.sent))
            c.sent, c.dirty = c.doc.oplog_vv, False
            self.up += framed(blob)
            self.frames += 1
            self.hub.doc.import_(blob)
            for j in self.connected:
                if j != i:
                    self.outbox[j].append(blob)
        self.relay()

    def relay(self) -> None:
        """The hub's flush: one message per client with the blobs the others sent."""
        for j in self.connected:
            box = self.outbox[j]
            if box:
                self.outbox[j] = []
                self.down += sum(framed(b) for b in box)
                self.frames += 1
                c = self.clients[j]
                c.doc.import_batch(box)
                if not c.dirty:  # all it holds is at the hub: do not send it back
                    c.sent = c.doc.oplog_vv

    def idle(self) -> None:
        self.flush(0)

    def take_bytes(self) -> tuple[int, int, int]:
        out = (self.up, self.down, self.frames)
        self.up = self.down = self.frames = 0
        return out

    def replicas(self) -> list[_LoroReplica]:
        return [self.hub, *self.clients]

    @staticmethod
    def text_of(replica: _LoroReplica, name: str) -> str:
        return replica.texts[name].to_string()


Engine = HsStar | YStar | LoroStar


def all_equal(engine: Engine, expected: dict[str, str]) -> bool:
    """Every replica of ``engine`` holds exactly ``expected`` (checked outside timing)."""
    return all(
        engine.text_of(r, n) == t  # type: ignore[arg-type]
        for r in engine.replicas()
        for n, t in expected.items()
    )


def crdt_state(engine: YStar | LoroStar) -> dict[str, int]:
    """The encoded state of the hub: pycrdt ``get_update()`` (GC on, the default); Loro
    a full snapshot and a shallow snapshot at the current frontiers."""
    if isinstance(engine, LoroStar):
        doc = engine.hub.doc
        return {
            "snapshot": len(doc.export(loro.ExportMode.Snapshot())),
            "shallow_snapshot": len(
                doc.export(loro.ExportMode.ShallowSnapshot(doc.oplog_frontiers))
            ),
            "all_updates": len(doc.export(loro.ExportMode.Updates(_EMPTY_VV))),
        }
    return {
        "update": len(engine.hub.doc.get_update()),
        "state_vector": len(engine.hub.doc.get_state()),
        "empty_diff_update": len(engine.hub.doc.get_update(engine.hub.doc.get_state())),
    }


# --------------------------------------------------------------------------- (a) memory


def build_memory(rng: random.Random, n_docs: int) -> tuple[dict[str, str], list[str]]:
    vocab = make_vocabulary(rng)
    docs = {f"doc-{i:04d}": make_document(rng, vocab, DOC_BYTES) for i in range(n_docs)}
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


def make_engine(name: str, n_clients: int, names: Sequence[str]) -> Engine:
    if name.startswith("hybridsync"):
        return HsStar(n_clients)
    if name == "pycrdt":
        return YStar(n_clients, names)
    if name == "pycrdt-sv":
        return SvStar(n_clients, names)
    return LoroStar(n_clients, names)


def run_memory(
    n_docs: int, cycles: int, idle_cycles: int, log: Callable[[str], None]
) -> dict[str, Any]:
    rng = random.Random(SEED)
    docs, vocab = build_memory(rng, n_docs)
    plan, final = plan_cycles(rng, docs, vocab, cycles)
    memory_bytes = sum(len(t.encode()) for t in docs.values())
    log(
        f"(a) memory: {n_docs} documents, {memory_bytes:,} bytes; {cycles} cycles of "
        f"{CHANGED_PER_CYCLE} changed documents"
    )
    names = sorted(docs)

    # -- initial sync: the client holds everything, the hub nothing; INIT_REPS fresh
    # engines each, in rotating order (medians reported; the last ones go on)
    engines: dict[str, Engine] = {}
    reps: dict[str, list[dict[str, Any]]] = {name: [] for name in ENGINES_A}
    for rep in range(INIT_REPS):
        for name in rotated(ENGINES_A, rep):
            eng = engines[name] = make_engine(name, 1, names)
            gc.collect()
            c0 = time.process_time()
            t_load, _ = timed(f"a/{name}/load", lambda e=eng: e.load(docs))
            c1 = time.process_time()
            t_sync, _ = timed(f"a/{name}/initial sync", eng.connect_all)
            c2 = time.process_time()
            up, down, frames = eng.take_bytes()
            reps[name].append(
                {
                    "load_ms": t_load * 1e3,
                    "load_cpu_ms": (c1 - c0) * 1e3,
                    "ms": t_sync * 1e3,
                    "cpu_ms": (c2 - c1) * 1e3,
                    "bytes": up + down,
                    "bytes_up": up,
                    "bytes_down": down,
                    "frames": frames,
                    "correct": all_equal(eng, docs),
                }
            )
    setup: dict[str, dict[str, Any]] = {}
    for name, runs in reps.items():
        last = runs[-1]
        setup[name] = {
            **last,
            **{
                k: statistics.median(r[k] for r in runs)
                for k in ("load_ms", "load_cpu_ms", "ms", "cpu_ms")
            },
            "correct": all(r["correct"] for r in runs),
            "runs": len(runs),
        }
    # hybridsync compresses large frames (zstd level 3); pycrdt leaves that to the transport.
    full_update = engines["pycrdt"].hub.doc.get_update()  # type: ignore[union-attr]
    update_zstd3 = len(zstandard.ZstdCompressor(level=3).compress(full_update))

    # -- edit cycles, engines interleaved in blocks (rotating order)
    series = {name: Series() for name in ENGINES_A}
    edit_bytes = [sum(c.edit_bytes for c in changes) for changes in plan]
    gc.collect()
    gc.disable()
    try:
        for blk, lo in enumerate(range(0, len(plan), BLOCK_CYCLES)):
            for name in rotated(ENGINES_A, blk):
                eng = engines[name]
                for changes in plan[lo : lo + BLOCK_CYCLES]:
                    c0 = time.process_time()
                    t_edit, _ = timed(f"a/{name}/edit", lambda e=eng, ch=changes: e.edit(0, ch))
                    t_sync, _ = timed(f"a/{name}/sync", lambda e=eng: e.flush(0))
                    series[name].cpu_s += time.process_time() - c0
                    up, down, frames = eng.take_bytes()
                    series[name].add(Sample(t_edit, t_sync, up, down, frames))
    finally:
        gc.enable()

    # -- idle cycles (nothing changed)
    idle = {name: Series() for name in ENGINES_A}
    gc.collect()
    gc.disable()
    try:
        for name in ENGINES_A:
            eng = engines[name]
            for _ in range(idle_cycles):
                c0 = time.process_time()
                t_sync, _ = timed(f"a/{name}/idle", eng.idle)
                idle[name].cpu_s += time.process_time() - c0
                up, down, frames = eng.take_bytes()
                idle[name].add(Sample(0.0, t_sync, up, down, frames))
    finally:
        gc.enable()

    hs = engines["hybridsync"]
    assert isinstance(hs, HsStar)
    correct = {name: all_equal(engines[name], final) for name in ENGINES_A}
    correct["hybridsync"] = (
        correct["hybridsync"]
        and hs.hub.digest() == hs.clients[0].digest()
        and hs.cl[0].idle
        and hs.sv[0].idle
        and hs.cl[0].metrics.resyncs == hs.sv[0].metrics.resyncs == 0
        and hs.cl[0].metrics.hunks_failed == hs.sv[0].metrics.hunks_failed == 0
    )
    state = {
        name: crdt_state(engines[name])  # type: ignore[arg-type]
        for name in ("pycrdt", "loro")
    }
    return {
        "docs": n_docs,
        "memory_bytes": memory_bytes,
        "final_bytes": sum(len(t.encode()) for t in final.values()),
        "cycles": cycles,
        "changed_per_cycle": CHANGED_PER_CYCLE,
        "idle_cycles": idle_cycles,
        "edit_bytes_total": sum(edit_bytes),
        "edit_bytes_per_cycle_mean": statistics.mean(edit_bytes),
        "edit_bytes_per_cycle_median": statistics.median(edit_bytes),
        "str_splice_ms_per_cycle_median": statistics.median(
            sum(c.str_splice_s for c in changes) for changes in plan
        )
        * 1e3,
        "setup": setup,
        "pycrdt_update_zstd3_bytes": update_zstd3,
        "cycles_summary": {name: series[name].summary() for name in ENGINES_A},
        "idle_summary": {name: idle[name].summary() for name in ENGINES_A},
        "correct": correct,
        "state_bytes": state,
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
    docs = {"doc": trace.start}
    engines = {name: make_engine(name, AGENTS, ["doc"]) for name in ENGINES_B}
    for eng in engines.values():
        eng.load(docs)
        eng.connect_all()
        eng.take_bytes()
    series = {name: Series() for name in ENGINES_B}
    edit_bytes = sum(ch.edit_bytes for _, ch in turns)
    mismatches = dict.fromkeys(ENGINES_B, 0)

    def sync_hs(e: HsStar, agent: int, to_idle: bool) -> None:
        # hybridsync: "to idle" exchanges until every link is idle; "lazy" does only the
        # agent's exchange and the catch-up polls, the acknowledgements ride on the next
        # turn's polls.
        e.exchange(agent)
        for j in range(AGENTS):
            if j != agent:
                e.exchange(j)
        if to_idle:
            e.settle()

    def step(name: str, agent: int, ch: Change) -> tuple[float, float]:
        e = engines[name]
        t_edit, _ = timed(f"b/{name}/edit", lambda: e.edit(agent, (ch,)))
        if isinstance(e, HsStar):
            lazy = name == "hybridsync-lazy"
            t_sync, _ = timed(f"b/{name}/sync", lambda: sync_hs(e, agent, not lazy))
        else:
            t_sync, _ = timed(f"b/{name}/sync", lambda: e.flush(agent))
        return t_edit, t_sync

    gc.collect()
    gc.disable()
    t_start = time.perf_counter()
    try:
        for blk, lo in enumerate(range(0, len(turns), BLOCK_TURNS)):
            for name in rotated(ENGINES_B, blk):
                eng = engines[name]
                for k in range(lo, min(lo + BLOCK_TURNS, len(turns))):
                    agent, ch = turns[k]
                    if k % 16 == 0:
                        # The agent must hold the text the turn's positions refer to.
                        prev = turns[k - 1][1].new_text if k else trace.start
                        if eng.text_of(eng.clients[agent], "doc") != prev:  # type: ignore[arg-type]
                            mismatches[name] += 1
                    c0 = time.process_time()
                    t_edit, t_sync = step(name, agent, ch)
                    series[name].cpu_s += time.process_time() - c0
                    up, down, frames = eng.take_bytes()
                    series[name].add(Sample(t_edit, t_sync, up, down, frames))
            if blk and blk % 10 == 0:
                log(f"    turn {lo}/{len(turns)} ({time.perf_counter() - t_start:.1f} s)")
    finally:
        gc.enable()
    # The lazy run still owes acknowledgements: finish it (counted in its totals).
    lazy = engines["hybridsync-lazy"]
    assert isinstance(lazy, HsStar)
    c0 = time.process_time()
    t_fin, _ = timed("b/hybridsync-lazy/sync", lazy.settle)
    series["hybridsync-lazy"].cpu_s += time.process_time() - c0
    up, down, frames = lazy.take_bytes()
    last = series["hybridsync-lazy"].samples[-1]
    last.sync_s += t_fin
    last.up, last.down, last.frames = last.up + up, last.down + down, last.frames + frames

    correct = {
        name: mismatches[name] == 0 and all_equal(engines[name], {"doc": expected})
        for name in ENGINES_B
    }
    metrics = {}
    for name in ("hybridsync", "hybridsync-lazy"):
        e = engines[name]
        assert isinstance(e, HsStar)
        correct[name] = correct[name] and not any(e.busy(i) for i in range(AGENTS))
        metrics[name] = {
            "resyncs": sum(lk.metrics.resyncs for lk in (*e.cl, *e.sv)),
            "hunks_failed": sum(lk.metrics.hunks_failed for lk in (*e.cl, *e.sv)),
            "retransmits": sum(lk.metrics.retransmits for lk in (*e.cl, *e.sv)),
            "stale_frames": sum(lk.metrics.stale_frames for lk in (*e.cl, *e.sv)),
            "fulls_sent": sum(lk.metrics.fulls_sent for lk in (*e.cl, *e.sv)),
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
        "final_bytes": len(expected.encode()),
        "edit_bytes_total": edit_bytes,
        "str_splice_ms_per_turn_median": statistics.median(ch.str_splice_s for _, ch in turns)
        * 1e3,
        "summary": {name: series[name].summary() for name in ENGINES_B},
        "correct": correct,
        "hybridsync_metrics": metrics,
        "state_bytes": {
            name: crdt_state(engines[name])  # type: ignore[arg-type]
            for name in ("pycrdt", "loro")
        },
    }


# --------------------------------------------------------------------------- instruction counts


def count_instructions(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """Run this script on the reduced size under callgrind (see the top)."""
    with tempfile.TemporaryDirectory(prefix="bench-sync-cg-") as tmp:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--docs",
            str(args.instr_docs),
            "--cycles",
            str(args.instr_cycles),
            "--idle",
            str(INSTR_IDLE),
            "--txns",
            str(args.instr_txns),
            "--out",
            str(Path(tmp) / "out"),
        ]
        log(f"instruction counts: {' '.join(cmd[2:])} under callgrind ...")
        t0 = time.perf_counter()
        regions = callgrind_regions(cmd, Path(tmp) / "cg")
        log(f"    done in {time.perf_counter() - t0:.1f} s")
        out = json.loads((Path(tmp) / "out" / "sync.json").read_text())
    return {
        "docs": args.instr_docs,
        "cycles": args.instr_cycles,
        "idle_cycles": INSTR_IDLE,
        "txns": out["trace"]["txns"],
        "turns": out["trace"]["turns"],
        "correct": all(out["memory"]["correct"].values()) and all(out["trace"]["correct"].values()),
        "regions": regions,
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
        "versions": {p: metadata.version(p) for p in ("hybridsync", "pycrdt", "loro")},
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


def _state_rows(state: dict[str, dict[str, int]], live: int) -> list[str]:
    rows = [
        "| engine | encoding | bytes | / live text |",
        "|---|---|---|---|",
        f"| (live text) | UTF-8 of every document | {live:,} | 1.00 |",
    ]
    p, lo = state["pycrdt"], state["loro"]
    for engine, enc, n in (
        ("pycrdt", "`get_update()` (GC on, the default)", p["update"]),
        ("loro", "`export(ShallowSnapshot(oplog_frontiers))` (smallest)", lo["shallow_snapshot"]),
        ("loro", "`export(Snapshot())` (full history)", lo["snapshot"]),
        ("loro", "`export(Updates(VersionVector()))`", lo["all_updates"]),
    ):
        rows.append(f"| {engine} | {enc} | {n:,} | {n / live:.2f} |")
    return rows


def render(
    env: dict[str, Any],
    a: dict[str, Any],
    b: dict[str, Any],
    quick: bool,
    instr: dict[str, Any] | None,
) -> str:
    v = env["versions"]
    out = [
        "# Sync: hybridsync vs pycrdt and Loro",
        "",
        f"- {env['date_utc']}; Python {env['python']}, {env['platform']}; CPU: {env['cpu']} "
        f"({env['cpu_count']} logical CPUs, load average "
        f"{' / '.join(map(str, env['loadavg_at_start']))} at start)",
        f"- hybridsync {v['hybridsync']}, pycrdt {v['pycrdt']}, loro {v['loro']}; mode: "
        f"{'quick' if quick else 'full'}; command: `{env['command']}`",
        "- engines: **hybridsync** = `Link` pairs (diff-sync, request/reply exchanges until "
        "idle); **pycrdt** = y-protocols as pycrdt-websocket runs it: STEP1/STEP2 handshake on "
        "connect, then one SYNC_UPDATE per link per flush (`merge_updates` of the flush's "
        "transactions), the hub relays once per other client per flush, nothing sent when "
        "nothing changed; **loro** = version-vector handshake on connect, then one "
        "`export(Updates(vv last sent))` per link per flush, relayed once per other client per "
        "flush, received with `import_batch`; **pycrdt-sv** ((a) only) = a polling deployment "
        "(not y-websocket's flow): each cycle request = STEP1(client SV) + STEP2(update since "
        "the hub SV last seen), reply = STEP1(hub SV) + STEP2(hub update since the client SV).",
        "- wire bytes = exact message sizes (no TCP/WebSocket overhead for anyone). ms = "
        "median `perf_counter` per cycle/turn (edit = putting the edit into the replica, "
        "sync = from the flush until every replica integrated it); CPU = total "
        "`process_time` / count. Ratios are **hybridsync / baseline**: below 1.0 means "
        "hybridsync is smaller or faster. ✓ = every replica ends equal to the expected text.",
        "",
        f"## (a) Memory of {a['docs']:,} documents ({a['memory_bytes']:,} bytes), "
        f"{a['changed_per_cycle']} documents edited per cycle, {a['cycles']} cycles",
        "",
        "pycrdt and Loro hold the memory as one document with one root text per document. "
        f"Edits per cycle: mean {a['edit_bytes_per_cycle_mean']:.0f} bytes (inserted + "
        f"deleted UTF-8 bytes; median {a['edit_bytes_per_cycle_median']:.0f}), one "
        "transaction / commit. For reference, building the edited strings from the splices "
        "with str slicing (hybridsync's input, excluded everywhere) takes "
        f"{_ms(a['str_splice_ms_per_cycle_median'])} ms per cycle (median).",
        "",
        "| engine | wire B/cycle (mean) | up / down B (mean) | max B/cycle | wire / edit bytes "
        "| messages/cycle | edit ms | sync ms | total ms (min) | CPU ms/cycle | hybridsync / "
        "this: bytes | hybridsync / this: CPU | correct |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    cs = a["cycles_summary"]
    eb = a["edit_bytes_total"]
    hs = cs["hybridsync"]
    for name in ENGINES_A:
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
        f"**Idle cycle** (nothing changed; {a['idle_cycles']} cycles: hybridsync's push-driven "
        "session has nothing to say, pycrdt and Loro flush and find nothing to send, pycrdt-sv "
        "polls) and **initial sync** "
        "(the client holds the memory, the hub starts empty; pycrdt and Loro run their "
        "handshake; load = putting the memory into the client's replica, timed apart; "
        f"medians of {INIT_REPS} fresh runs each):",
        "",
        "| engine | idle B/cycle (up / down) | idle ms (median) | idle CPU ms | initial sync B "
        "(up / down) | initial / memory bytes | load ms | initial sync ms | initial correct |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ENGINES_A:
        s = a["idle_summary"][name]
        st = a["setup"][name]
        n = s["n"]
        out.append(
            f"| {name} | {s['bytes_total'] / n:.0f} ({s['bytes_up'] / n:.0f} / "
            f"{s['bytes_down'] / n:.0f}) | {_ms(s['sync_ms_median'])} | {_ms(s['cpu_ms_mean'])} "
            f"| {st['bytes']:,} ({st['bytes_up']:,} / {st['bytes_down']:,}) | "
            f"{st['bytes'] / a['memory_bytes']:.3f} | {_ms(st['load_ms'])} | {_ms(st['ms'])} | "
            f"{_ok(st['correct'])} |"
        )
    out += [
        "",
        "hybridsync zstd-compresses frames of 1 KB and more; pycrdt and Loro leave compression "
        "to the transport: the pycrdt update of the whole memory compressed with zstd level 3 "
        f"is {a['pycrdt_update_zstd3_bytes']:,} bytes.",
        "",
        "State the baselines' hub holds at the end (the smallest honest encoding first). "
        "hybridsync holds the plain texts (plus, per link, a shadow copy of what the peer "
        "acknowledged); it has no history to encode.",
        "",
        *_state_rows(a["state_bytes"], a["final_bytes"]),
    ]
    scope = (
        "the whole trace"
        if b["whole_trace"]
        else f"a prefix: the first {b['txns']:,} of {b['txns_in_trace']:,} transactions"
    )
    out += [
        "",
        f"## (b) Trace replay: {b['trace']}, {b['agents']} agents, turns of {b['turn_txns']} "
        f"transactions round-robin ({scope}; {b['turns']:,} turns)",
        "",
        "After its turn the agent flushes and the others catch up. **hybridsync**: the "
        "agent's exchange, one poll per other agent, then exchanges until every link is idle "
        "(acknowledgements delivered); **hybridsync-lazy** stops after the catch-up polls and "
        "lets the acknowledgements ride on the next turn's polls (and settles once at the "
        "end); a poll happens only where there is something to send or fetch (a doorbell, "
        "free here). **pycrdt** / **loro**: the turn is one transaction / commit, flushed as "
        "one message to the hub and relayed as one message to each of the 3 others. Edits: "
        f"{b['edit_bytes_total']:,} bytes (inserted + deleted UTF-8 bytes); final text "
        f"{b['final_code_points']:,} code points. For reference, building each turn's text "
        "from its splices with str slicing (hybridsync's input, excluded everywhere) takes "
        f"{_ms(b['str_splice_ms_per_turn_median'])} ms per turn (median).",
        "",
        "| engine | wire bytes | up / down | wire / edit bytes | messages | edit ms/turn | sync "
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
    out += [
        "",
        "State the baselines' hub holds at the end:",
        "",
        *_state_rows(b["state_bytes"], b["final_bytes"]),
        "",
    ]
    if instr is not None:
        out += render_instructions(instr)
    out += ["## Who wins (from the numbers above)", "", *verdicts(a, b, instr), ""]
    return "\n".join(out)


def instr_per_call(instr: dict[str, Any], label: str, per: int | None = None) -> float:
    r = instr["regions"].get(label)
    if not r:
        return 0.0
    return r["instructions"] / (per or r["calls"])


def render_instructions(instr: dict[str, Any]) -> list[str]:
    cal = instr["regions"]["calibration/empty"]
    out = [
        f"## Instruction counts (callgrind; {instr['docs']:,} documents, {instr['cycles']} "
        f"edit cycles, {instr['idle_cycles']} idle cycles; trace prefix of "
        f"{instr['txns']:,} transactions = {instr['turns']} turns)",
        "",
        "The same timed regions, counted by `valgrind --tool=callgrind` with collection on "
        "only inside each region (see the script's docstring); the ctypes round trip around "
        f"each region ({cal['instructions']:,} instructions, median of {cal['calls']} empty "
        "regions) is subtracted. Deterministic up to allocator and hashing noise; not "
        f"affected by the machine's load. Replicas equal in that run: {_ok(instr['correct'])}.",
        "",
        "| engine | (a) edit / cycle | (a) sync / cycle | (a) edit + sync / cycle | hybridsync / "
        "this | (a) idle / cycle | (a) initial sync | (b) edit + sync / turn | hybridsync / "
        "this |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    turns = instr["turns"]

    def a_total(e: str) -> float:
        return instr_per_call(instr, f"a/{e}/edit") + instr_per_call(instr, f"a/{e}/sync")

    def b_total(e: str) -> float:
        return instr_per_call(instr, f"b/{e}/edit", turns) + instr_per_call(
            instr, f"b/{e}/sync", turns
        )

    for e in (*ENGINES_A, "hybridsync-lazy"):
        in_a = e in ENGINES_A
        in_b = e in ENGINES_B
        cells = [
            f"{instr_per_call(instr, f'a/{e}/edit'):,.0f}" if in_a else "",
            f"{instr_per_call(instr, f'a/{e}/sync'):,.0f}" if in_a else "",
            f"{a_total(e):,.0f}" if in_a else "",
            ("—" if e == "hybridsync" else _ratio(a_total("hybridsync"), a_total(e)))
            if in_a
            else "",
            f"{instr_per_call(instr, f'a/{e}/idle'):,.0f}" if in_a else "",
            f"{instr_per_call(instr, f'a/{e}/initial sync'):,.0f}" if in_a else "",
            f"{b_total(e):,.0f}" if in_b else "",
            ("—" if e == "hybridsync" else _ratio(b_total("hybridsync"), b_total(e)))
            if in_b
            else "",
        ]
        out.append(f"| {e} | " + " | ".join(cells) + " |")
    out += ["", "(b) counts are totals over the prefix divided by its turns.", ""]
    return out


def verdicts(a: dict[str, Any], b: dict[str, Any], instr: dict[str, Any] | None) -> list[str]:
    """One line per comparison: the smaller / faster side and by how much."""

    def line(label: str, ours: float, theirs: float, other: str, unit: str) -> str:
        if round(ours, 9) == round(theirs, 9):
            return f"- {label}: tie ({unit})."
        if theirs == 0:
            return f"- {label}: **{other} wins** ({unit}; {other} needs none, hybridsync {ours:,})."
        if ours == 0:
            return f"- {label}: **hybridsync wins** ({unit}; it needs none, {other} {theirs:,})."
        if ours > theirs:
            return (
                f"- {label}: **{other} wins** ({unit}; hybridsync uses {ours / theirs:.2f}x as "
                "much)."
            )
        return f"- {label}: **hybridsync wins** ({unit}; {theirs / ours:.2f}x less than {other})."

    out = []
    cs, idle, setup = a["cycles_summary"], a["idle_summary"], a["setup"]
    for other in ENGINES_A[1:]:
        hs, ot = cs["hybridsync"], cs[other]
        out.append(
            line(
                f"(a) edit cycles vs {other}",
                hs["bytes_total"],
                ot["bytes_total"],
                other,
                "wire bytes",
            )
        )
        out.append(
            line(f"(a) edit cycles vs {other}", hs["cpu_s_total"], ot["cpu_s_total"], other, "CPU")
        )
        if instr is not None:
            ours = instr_per_call(instr, "a/hybridsync/edit") + instr_per_call(
                instr, "a/hybridsync/sync"
            )
            theirs = instr_per_call(instr, f"a/{other}/edit") + instr_per_call(
                instr, f"a/{other}/sync"
            )
            out.append(line(f"(a) edit cycles vs {other}", ours, theirs, other, "instructions"))
        out.append(
            line(
                f"(a) idle cycle vs {other}",
                round(idle["hybridsync"]["bytes_per_cycle_mean"]),
                round(idle[other]["bytes_per_cycle_mean"]),
                other,
                "wire bytes per cycle",
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
            "wire bytes; the gap above is mostly compression",
        )
    )
    bs = b["summary"]
    for ours in ("hybridsync", "hybridsync-lazy"):
        for other in ("pycrdt", "loro"):
            for key, unit in (("bytes_total", "wire bytes"), ("cpu_s_total", "CPU")):
                out.append(
                    line(f"(b) {ours} vs {other}", bs[ours][key], bs[other][key], other, unit)
                )
            if instr is not None:
                t = instr["turns"]

                def tot(e: str, t: int = t) -> float:
                    return instr_per_call(instr, f"b/{e}/edit", t) + instr_per_call(
                        instr, f"b/{e}/sync", t
                    )

                out.append(
                    line(f"(b) {ours} vs {other}", tot(ours), tot(other), other, "instructions")
                )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer cycles, a trace prefix")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--docs", type=int, default=N_DOCS, help=f"documents in (a) ({N_DOCS})")
    parser.add_argument("--cycles", type=int, help=f"edit cycles in (a) (default {CYCLES})")
    parser.add_argument("--idle", type=int, default=IDLE_CYCLES, help="idle cycles in (a)")
    parser.add_argument(
        "--txns", type=int, help="trace prefix in (b) (default: whole trace; --quick: 8000)"
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count the timed regions' instructions under callgrind on a reduced size",
    )
    parser.add_argument("--instr-docs", type=int, default=INSTR_DOCS)
    parser.add_argument("--instr-cycles", type=int, default=INSTR_CYCLES)
    parser.add_argument("--instr-txns", type=int, default=INSTR_TXNS)
    args = parser.parse_args(argv)
    argv_used = list(sys.argv[1:] if argv is None else argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    env = environment(argv_used)
    cycles = args.cycles or (QUICK_CYCLES if args.quick else CYCLES)
    trace = load_trace(TRACE)
    n_txns = args.txns or (QUICK_TXNS if args.quick else len(trace.txns))
    t0 = time.perf_counter()
    a = run_memory(args.docs, cycles, args.idle, log)
    log(f"    done in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    b = run_trace(trace, n_txns, log)
    log(f"    done in {time.perf_counter() - t0:.1f} s")
    REGIONS.save()
    instr = count_instructions(args, log) if args.instructions else None
    report = render(env, a, b, args.quick, instr)
    if not REGIONS.counting:
        print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sync.md").write_text(report)
    data = {"environment": env, "quick": args.quick, "memory": a, "trace": b, "instructions": instr}
    (args.out / "sync.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    ok = all(a["correct"].values()) and all(b["correct"].values())
    ok = ok and all(s["correct"] for s in a["setup"].values())
    ok = ok and (instr is None or instr["correct"])
    if not ok:
        log("CORRECTNESS FAILURE: see the correct columns")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
