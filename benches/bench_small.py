#!/usr/bin/env python3
"""The sync tax of ONE small write: hybridsync vs pycrdt (Yjs) vs Loro.

Two replicas, already in sync, hold N text documents, N task-board keys or a KV cache of
N pages (N = 100, 1,000, 10,000, 100,000). Each cycle makes one small write on one side and
then syncs until both sides are quiet. This is the workload agents produce most, and it is
where a per-cycle cost that grows with what a replica *holds* (rather than with what
*changed*) shows. Issue 16 is judged by this benchmark.

Workloads (the same seeded operations for every engine; all harness work -- choosing and
building the operation, checks, logging -- happens outside the timed region):

* **text**: N documents of 200-400 ASCII characters; a cycle inserts 15 characters at a
  random position of a random document.
* **meta**: a task board, ``tasks = {task id: {"title", "status", "owner", "priority"}}``
  with N tasks; a cycle moves one random task to its next status
  (``tasks[id]["status"] = ...``: one key written).
* **kv**: a q4_0 cache of 1 layer x 1 KV head x head_dim 64, 16 tokens per page (576-byte
  pages) holding N pages (N/2 token pages of K and of V); a cycle is one decode step: one
  already-quantized token row appended (``KVCache.append_quantized``, as the runtime
  adapters do), which rewrites the last page of K and the last page of V. That is the
  smallest change the KV channel knows (caches are written at the tail), so two of the N
  pages change; N grows by 2 every 16 cycles.

How each engine is driven (in process; the messages are handed over directly):

* ``hybridsync``: two :class:`hybridsync.Memory` replicas ("agent" and "hub") joined by a
  client/server :class:`hybridsync.Link` pair as in the README quick start. The write is
  made on the client (``agent.text[name] = new_text``, ``agent.meta["tasks"][id]["status"]
  = s``, ``cache.append_quantized(k, v)``); a cycle then runs exchanges (``up.outgoing()``
  -> ``down.incoming()``, ``down.outgoing()`` -> ``up.incoming()``) until both links
  report ``idle``. Bytes: every frame of those exchanges, both directions. An idle cycle
  is what a :class:`hybridsync.net.Session` does with nothing written: it is push-driven
  (the default), so its client exchanges only when its link has something to say, awaits
  a reply, or the hub would wake it (the hub's link is not idle); otherwise nothing is
  sent. Liveness is the WebSocket keepalive (a ping and its pong, 16 bytes per 20 s),
  which the CRDT transports need as much and which no engine is charged here.
* ``pycrdt``: what a y-protocols user (pycrdt-websocket, y-websocket) does once connected:
  ``Doc.observe`` collects each transaction's incremental update
  (``TransactionEvent.update``); the flush sends ``create_update_message`` (SYNC_UPDATE) of
  the update (``merge_updates`` when there are several) and the peer applies it with
  ``handle_sync_message``. Both docs observe (each side must send its own writes); an
  update applied from the peer is not sent back (a provider skips its own origin). Nothing
  is sent when nothing changed: the transport is reliable, there is no anti-entropy.
  Data model: **one Doc per replica with one root ``Text`` per document** (root name = the
  document name), a root ``Map`` ``"tasks"`` of nested ``Map`` s, a root ``Map`` ``"kv"``
  with one entry per page (``"K/<page>"``, ``"V/<page>"``: the page's bytes, keyed binary
  entries as ``benches/BASELINES.md`` drives KV caches). One Doc rather than one Doc per
  document because that is the like-for-like setup: hybridsync's ``Memory`` holds N
  documents behind one link, and a y-protocols connection syncs one Doc; N Docs would
  need N providers (y-websocket: one WebSocket per room) or a multiplexing header naming
  the document, which is what the root name does inside the update.
  The write: ``text.insert(pos, s)``, ``tasks[id]["status"] = s``, and for the KV cache
  the row copied into the runtime's buffer and the two page entries set to the pages'
  bytes in one transaction.
* ``loro``: one ``LoroDoc`` per replica (root ``LoroText`` per document, ``"tasks"`` map of
  maps, ``"kv"`` map of bytes), one ``commit()`` per write; the flush sends
  ``doc.export(ExportMode.Updates(vv))`` where ``vv`` is what the peer is known to hold
  (what was last sent, merged with the end version of what came from it, read with
  ``LoroDoc.decode_import_blob_meta``), and the peer ``import_`` s it. Bytes: the blobs.

Metrics, per channel and N:

* **edit bytes**: all messages/frames of one write until quiet, both directions (median
  over the cycles; hybridsync's frames are the same size from cycle to cycle).
* **idle bytes**: what both sides send in one cycle in which nothing was written.
* **edit CPU**: median over many cycles of ``time.process_time`` of the write plus the
  sync until quiet. The engines are interleaved cycle by cycle (the order rotating), so
  they share the machine's noise. ``gc.freeze()`` after setup keeps the set-up state out
  of the collector's way (as it would sit in the oldest generation of a long-running
  process); the collector stays on, and no collection is forced before a timed cycle (a
  full ``gc.collect()`` there empties CPython's free lists and made a pycrdt cycle about
  7x slower in a test here, which would flatter the ratios).
* **instructions** (N = 1,000 rows): the same cycles run again in a subprocess under
  ``valgrind --tool=callgrind --collect-atstart=no --toggle-collect=ffi_call
  --dump-after=ffi_call``: each timed region is run as the callback of a ``ctypes``
  function pointer, so libffi's ``ffi_call`` is entered exactly around it; collection is
  on only inside it and each region is dumped separately. The ctypes round trip (measured
  with empty regions) is subtracted; the median over the cycles is reported. The number of
  dumps is checked against the number of regions (a region that itself called ``ctypes``
  would break that).
* **correct**: after every cycle both replicas are compared -- hybridsync: ``digest()``
  of both replicas equal and the written value equal to the harness's model on both
  sides; pycrdt: both state vectors equal and the written document/key/page equal to the
  model on both sides; Loro: both version vectors equal and the same values. One
  exception: hybridsync's ``digest()`` of a board of more than 10,000 tasks converts the
  whole board to Python (seconds per replica at N = 100,000), so there it runs every 10th
  cycle and the written key is compared every cycle. Before the first and after the last
  cycle every document, key and page is compared with the model on both sides of every
  engine. A failed check raises (the run stops, loudly).

Bytes are what the engines hand over (hybridsync frames, y-protocol messages, Loro blobs);
transport framing (WebSocket, TCP) is not counted for any engine. Each (channel, N) runs
its planned cycles after a warm-up, or fewer (never under 5) once 30 s of wall time are
spent: hybridsync's metadata cycles at large N are slow, and the table says
how many cycles each median covers.

Ratios are ``hybridsync / pycrdt`` (and ``/ loro``): below 1.0 means hybridsync is
cheaper. Absolute times depend on the machine and are never asserted anywhere.

Usage::

    python benches/bench_small.py [--quick] [--no-callgrind] [--out benches/results]

Writes ``small.md``, ``small.json`` and ``small.png`` (``small-quick.*`` with
``--quick``) into ``--out``. The full run takes about 6 to 10 minutes on a 2-core machine;
``--quick`` (N = 100 and 1,000, few cycles) a few seconds, plus the callgrind pass.
"""

from __future__ import annotations

import abc
import argparse
import ctypes
import dataclasses
import datetime as dt
import gc
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from loro import ExportMode, LoroDoc, LoroMap, ValueOrContainer, VersionVector
from pycrdt import (
    Doc,
    Map,
    Text,
    TransactionEvent,
    YMessageType,
    create_sync_message,
    create_update_message,
    handle_sync_message,
    merge_updates,
)

from _machine import cpu_model, git_revision, package_version
from hybridsync import KVCache, Link, Memory

SEED = 20_261_207
CHANNELS = ("text", "meta", "kv")
ENGINES = ("hybridsync", "pycrdt", "loro")
INSERT_CHARS = 15
STATUSES = ("todo", "doing", "review", "done")
KV_HEAD_DIM = 64
KV_PAGE_TOKENS = 16
KV_FMT = "q4_0"
CALLGRIND_N = 1_000
#: Above this many tasks hybridsync's full digest check of the board runs every 10th cycle.
FULL_META_CHECK = 10_000


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]
    #: Timed cycles per N (the same for every N when shorter).
    cycles: dict[int, int]
    #: Untimed cycles first, per N.
    warmup: dict[int, int]
    idle_cycles: int
    callgrind_cycles: int
    callgrind_warmup: int
    #: Wall seconds per (channel, N) after which the cycles stop (at least min_cycles).
    budget_s: float
    min_cycles: int


FULL = Plan(
    sizes=(100, 1_000, 10_000, 100_000),
    cycles={100: 301, 1_000: 301, 10_000: 151, 100_000: 61},
    warmup={100: 10, 1_000: 10, 10_000: 5, 100_000: 2},
    idle_cycles=31,
    callgrind_cycles=11,
    callgrind_warmup=2,
    budget_s=30.0,
    min_cycles=5,
)
QUICK = Plan(
    sizes=(100, 1_000),
    cycles={100: 21, 1_000: 21},
    warmup={100: 3, 1_000: 3},
    idle_cycles=5,
    callgrind_cycles=5,
    callgrind_warmup=1,
    budget_s=10.0,
    min_cycles=5,
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class CheckFailed(AssertionError):
    """Two replicas differ (or differ from the harness's model)."""


def require(ok: bool, what: str) -> None:
    if not ok:
        raise CheckFailed(what)


# --------------------------------------------------------------------------- workloads


_VOCABULARY = (
    "agent plan step test fail pass bisect regression patch note merge review build cache "
    "token layer queue retry owner status board task log trace fix ship deploy check rerun "
    "flaky slow memory sync link frame page diff edit write read hub leaf"
)
_WORDS = _VOCABULARY.split()
_LETTERS = "abcdefghijklmnopqrstuvwxyz "


def make_documents(n: int, rng: random.Random) -> dict[str, str]:
    docs = {}
    for i in range(n):
        size = rng.randint(200, 400)
        words = [f"# note {i}\n"]
        length = len(words[0])
        while length < size:
            w = rng.choice(_WORDS)
            sep = "\n" if rng.random() < 0.1 else " "
            words.append(w + sep)
            length += len(w) + 1
        docs[f"doc-{i:06d}"] = "".join(words)
    return docs


def make_board(n: int) -> dict[str, dict[str, Any]]:
    return {
        f"t{i:06d}": {
            "title": f"task {i}: fix the flaky test",
            "status": "todo",
            "owner": f"agent-{i % 8}",
            "priority": i % 5,
        }
        for i in range(n)
    }


@dataclass(frozen=True)
class TextOp:
    name: str
    pos: int
    insert: str


@dataclass(frozen=True)
class MetaOp:
    key: str
    status: str


@dataclass(frozen=True)
class KVOp:
    k: np.ndarray  # uint8 [1, 1, 1, row_bytes]
    v: np.ndarray


class Model:
    """The harness's plain-Python view of what both replicas must hold."""

    def __init__(self, channel: str, n: int, rng: random.Random) -> None:
        self.channel = channel
        self.rng = rng
        self.docs: dict[str, str] = {}
        self.board: dict[str, dict[str, Any]] = {}
        self.names: list[str] = []
        if channel == "text":
            self.docs = make_documents(n, rng)
            self.names = list(self.docs)
        elif channel == "meta":
            self.board = make_board(n)
            self.names = list(self.board)
        else:
            scratch = KVCache(1, 1, KV_HEAD_DIM, fmt=KV_FMT, page_tokens=KV_PAGE_TOKENS)
            self.row_bytes = scratch.row_bytes
            tokens = (n // 2) * KV_PAGE_TOKENS
            nrng = np.random.default_rng(rng.randrange(1 << 32))
            self.kv_k = self._quantize(nrng, tokens)
            self.kv_v = self._quantize(nrng, tokens)
            self._rows = nrng

    @staticmethod
    def _quantize(nrng: np.random.Generator, tokens: int) -> np.ndarray:
        """``tokens`` quantized rows ``uint8 [tokens, row_bytes]`` (through a scratch cache)."""
        out = []
        step = 1 << 16
        for t0 in range(0, tokens, step):
            n = min(step, tokens - t0)
            c = KVCache(1, 1, KV_HEAD_DIM, fmt=KV_FMT, page_tokens=KV_PAGE_TOKENS)
            x = nrng.standard_normal((1, 1, n, KV_HEAD_DIM), dtype=np.float32)
            c.append(x, x)
            out.append(c.quantized(0, "k")[0, :n].copy())
        if not out:
            return np.zeros((0, KV_HEAD_DIM // 32 * 18), np.uint8)
        return np.concatenate(out)

    def next_op(self) -> TextOp | MetaOp | KVOp:
        rng = self.rng
        if self.channel == "text":
            name = rng.choice(self.names)
            text = self.docs[name]
            pos = rng.randint(0, len(text))
            ins = "".join(rng.choice(_LETTERS) for _ in range(INSERT_CHARS))
            return TextOp(name, pos, ins)
        if self.channel == "meta":
            key = rng.choice(self.names)
            cur = STATUSES.index(self.board[key]["status"])
            return MetaOp(key, STATUSES[(cur + 1) % len(STATUSES)])
        rows = self._quantize(self._rows, 2)
        return KVOp(rows[0].reshape(1, 1, 1, -1), rows[1].reshape(1, 1, 1, -1))

    def apply(self, op: TextOp | MetaOp | KVOp) -> None:
        if isinstance(op, TextOp):
            t = self.docs[op.name]
            self.docs[op.name] = t[: op.pos] + op.insert + t[op.pos :]
        elif isinstance(op, MetaOp):
            self.board[op.key]["status"] = op.status
        else:
            self.kv_k = np.concatenate([self.kv_k, op.k[0, 0]])
            self.kv_v = np.concatenate([self.kv_v, op.v[0, 0]])

    def last_page(self, kind: str) -> bytes:
        rows = self.kv_k if kind == "K" else self.kv_v
        p = (len(rows) - 1) // KV_PAGE_TOKENS
        return rows[p * KV_PAGE_TOKENS :].tobytes()


# --------------------------------------------------------------------------- engines


class Engine(abc.ABC):
    name = ""

    @abc.abstractmethod
    def write(self, op: Any) -> None: ...

    @abc.abstractmethod
    def sync(self) -> list[int]:
        """Messages until both sides are quiet; returns their sizes (both directions)."""

    @abc.abstractmethod
    def check(self, op: Any, model: Model, cycle: int = 0) -> None: ...

    @abc.abstractmethod
    def check_all(self, model: Model) -> None: ...


class Hybrid(Engine):
    name = "hybridsync"

    def __init__(self, model: Model) -> None:
        self.a, self.b = Memory("agent"), Memory("hub")
        self.up = Link(self.a, "hub", role="client")
        self.down = Link(self.b, "agent", role="server")
        ch = model.channel
        if ch == "text":
            with self.a.transaction():
                for name, text in model.docs.items():
                    self.a.text[name] = text
        elif ch == "meta":
            self.a.meta["tasks"] = model.board
        else:
            self.cache = KVCache(1, 1, KV_HEAD_DIM, fmt=KV_FMT, page_tokens=KV_PAGE_TOKENS)
            self.a.kv["ctx"] = self.cache
            k, v = model.kv_k, model.kv_v
            self.cache.append_quantized(k.reshape(1, 1, *k.shape), v.reshape(1, 1, *v.shape))
        for _ in range(3):
            self.sync()
        self.mirror = self.b.kv["ctx"] if ch == "kv" else None
        self.check_all(model)

    def exchange(self) -> list[int]:
        f = self.up.outgoing()
        assert f is not None  # a client always has a request
        self.down.incoming(f)
        r = self.down.outgoing()
        if r is None:
            return [len(f)]
        self.up.incoming(r)
        return [len(f), len(r)]

    def write(self, op: Any) -> None:
        if isinstance(op, TextOp):
            t = self.a.text[op.name]
            self.a.text[op.name] = t[: op.pos] + op.insert + t[op.pos :]
        elif isinstance(op, MetaOp):
            self.a.meta["tasks"][op.key]["status"] = op.status
        else:
            self.cache.append_quantized(op.k, op.v)

    def sync(self) -> list[int]:
        sizes = self.exchange()
        n = 1
        while not (self.up.idle and self.down.idle):
            sizes += self.exchange()
            n += 1
            if n > 100:
                raise CheckFailed("hybridsync: the links did not go idle")
        return sizes

    def idle_cycle(self) -> list[int]:
        if self.up.idle and not self.up.awaiting_reply and self.down.idle:
            return []  # a push-driven session has nothing to say
        return self.exchange()

    def check(self, op: Any, model: Model, cycle: int = 0) -> None:
        # Memory.digest() of the metadata converts the whole board to Python (seconds at
        # N = 100,000): there it runs every 10th cycle; the written key every cycle.
        if not (isinstance(op, MetaOp) and len(model.board) > FULL_META_CHECK) or cycle % 10 == 0:
            require(self.a.digest() == self.b.digest(), "hybridsync: replica digests differ")
        if isinstance(op, TextOp):
            want = model.docs[op.name]
            ok = self.a.text[op.name] == want and self.b.text[op.name] == want
            require(ok, f"hybridsync: {op.name} differs")
        elif isinstance(op, MetaOp):
            ok = self.b.meta["tasks"][op.key]["status"] == op.status
            require(ok and self.a.meta["tasks"][op.key]["status"] == op.status, "hybridsync: meta")
        else:
            assert self.mirror is not None
            ok = self.mirror.tokens == self.cache.tokens == len(model.kv_k)
            require(ok and self.mirror.digest() == self.cache.digest(), "hybridsync: kv")

    def check_all(self, model: Model) -> None:
        require(self.a.digest() == self.b.digest(), "hybridsync: replica digests differ")
        ch = model.channel
        if ch == "text":
            for m in (self.a, self.b):
                require(dict(m.text.items()) == model.docs, "hybridsync: documents differ")
        elif ch == "meta":
            for m in (self.a, self.b):
                require(m.meta.to_py() == {"tasks": model.board}, "hybridsync: board differs")
        else:
            for c in (self.cache, self.b.kv["ctx"]):
                ok = c.tokens == len(model.kv_k)
                ok = ok and np.array_equal(c.quantized(0, "k")[0], model.kv_k)
                ok = ok and np.array_equal(c.quantized(0, "v")[0], model.kv_v)
                require(ok, "hybridsync: KV pages differ")


def _norm(value: Any) -> Any:
    """pycrdt reads numbers back as floats."""
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class Pycrdt(Engine):
    name = "pycrdt"

    def __init__(self, model: Model) -> None:
        self.docs = (Doc(client_id=1), Doc(client_id=2))
        self.pending: tuple[list[bytes], list[bytes]] = ([], [])
        self.applying = [False, False]
        for side in (0, 1):
            self.docs[side].observe(self._observer(side))
        ch = model.channel
        self.texts: tuple[dict[str, Text], dict[str, Text]] = ({}, {})
        self.kv_tokens = 0
        a = self.docs[0]
        if ch == "text":
            for side in (0, 1):
                d = self.docs[side]
                self.texts[side].update({n: d.get(n, type=Text) for n in model.docs})
            with a.transaction():
                for name, text in model.docs.items():
                    self.texts[0][name].insert(0, text)
        elif ch == "meta":
            self.tasks = tuple(d.get("tasks", type=Map) for d in self.docs)
            with a.transaction():
                for key, task in model.board.items():
                    self.tasks[0][key] = Map(task)
        else:
            self.kv = tuple(d.get("kv", type=Map) for d in self.docs)
            # The runtime's cache buffers (what llama.cpp would hold), grown by doubling.
            self.kbuf = np.zeros((max(len(model.kv_k) * 2, 64), model.row_bytes), np.uint8)
            self.vbuf = np.zeros_like(self.kbuf)
            t = len(model.kv_k)
            self.kbuf[:t], self.vbuf[:t] = model.kv_k, model.kv_v
            self.kv_tokens = t
            with a.transaction():
                for p in range(-(-t // KV_PAGE_TOKENS)):
                    s = slice(p * KV_PAGE_TOKENS, min(t, (p + 1) * KV_PAGE_TOKENS))
                    self.kv[0][f"K/{p}"] = self.kbuf[s].tobytes()
                    self.kv[0][f"V/{p}"] = self.vbuf[s].tobytes()
        self.connect()
        self.check_all(model)

    def _observer(self, side: int) -> Callable[[TransactionEvent], None]:
        pending = self.pending[side]
        applying = self.applying

        def on_transaction(event: TransactionEvent) -> None:
            if not applying[side]:  # an update from the peer is not sent back
                pending.append(event.update)

        return on_transaction

    def _deliver(self, to: int, message: bytes) -> bytes | None:
        assert message[0] == YMessageType.SYNC
        self.applying[to] = True
        try:
            return handle_sync_message(message[1:], self.docs[to])
        finally:
            self.applying[to] = False

    def connect(self) -> None:
        """The y-protocols handshake (both directions), untimed; what it covered is not
        sent again."""
        for src, dst in ((1, 0), (0, 1)):
            reply = self._deliver(dst, create_sync_message(self.docs[src]))
            assert reply is not None
            self._deliver(src, reply)
        for p in self.pending:
            p.clear()

    def write(self, op: Any) -> None:
        if isinstance(op, TextOp):
            self.texts[0][op.name].insert(op.pos, op.insert)
        elif isinstance(op, MetaOp):
            self.tasks[0][op.key]["status"] = op.status
        else:
            t = self.kv_tokens
            if t == len(self.kbuf):
                self.kbuf = np.concatenate([self.kbuf, np.zeros_like(self.kbuf)])
                self.vbuf = np.concatenate([self.vbuf, np.zeros_like(self.vbuf)])
            self.kbuf[t] = op.k[0, 0, 0]
            self.vbuf[t] = op.v[0, 0, 0]
            self.kv_tokens = t + 1
            p = t // KV_PAGE_TOKENS
            s = slice(p * KV_PAGE_TOKENS, t + 1)
            with self.docs[0].transaction():
                self.kv[0][f"K/{p}"] = self.kbuf[s].tobytes()
                self.kv[0][f"V/{p}"] = self.vbuf[s].tobytes()

    def sync(self) -> list[int]:
        sizes = []
        while self.pending[0] or self.pending[1]:
            for src in (0, 1):
                p = self.pending[src]
                if not p:
                    continue
                update = p[0] if len(p) == 1 else merge_updates(*p)
                p.clear()
                msg = create_update_message(update)
                sizes.append(len(msg))
                self._deliver(1 - src, msg)
        return sizes

    def idle_cycle(self) -> list[int]:
        return self.sync()

    def check(self, op: Any, model: Model, cycle: int = 0) -> None:
        a, b = self.docs
        require(a.get_state() == b.get_state(), "pycrdt: state vectors differ")
        if isinstance(op, TextOp):
            want = model.docs[op.name]
            ok = str(self.texts[0][op.name]) == want == str(self.texts[1][op.name])
            require(ok, f"pycrdt: {op.name} differs")
        elif isinstance(op, MetaOp):
            ok = self.tasks[0][op.key]["status"] == op.status == self.tasks[1][op.key]["status"]
            require(ok, "pycrdt: meta differs")
        else:
            p = (self.kv_tokens - 1) // KV_PAGE_TOKENS
            for kind in ("K", "V"):
                want = model.last_page(kind)
                ok = self.kv[0][f"{kind}/{p}"] == want == self.kv[1][f"{kind}/{p}"]
                require(ok, "pycrdt: kv page differs")

    def check_all(self, model: Model) -> None:
        a, b = self.docs
        require(a.get_state() == b.get_state(), "pycrdt: state vectors differ")
        ch = model.channel
        for side in (0, 1):
            if ch == "text":
                got = {n: str(t) for n, t in self.texts[side].items()}
                require(got == model.docs, "pycrdt: documents differ")
            elif ch == "meta":
                require(_norm(self.tasks[side].to_py()) == model.board, "pycrdt: board differs")
            else:
                _check_pages(dict(self.kv[side].items()), model, "pycrdt")


def _check_pages(pages: dict[str, Any], model: Model, who: str) -> None:
    t = len(model.kv_k)
    n_pages = -(-t // KV_PAGE_TOKENS)
    require(len(pages) == 2 * n_pages, f"{who}: page count differs")
    for kind, rows in (("K", model.kv_k), ("V", model.kv_v)):
        got = b"".join(bytes(pages[f"{kind}/{p}"]) for p in range(n_pages))
        require(got == rows.tobytes(), f"{who}: KV pages differ")


class Loro(Engine):
    name = "loro"

    def __init__(self, model: Model) -> None:
        self.docs = (LoroDoc(), LoroDoc())
        #: Per side: what the peer is known to hold.
        self.known = [VersionVector(), VersionVector()]
        ch = model.channel
        self.texts: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
        self.kv_tokens = 0
        a = self.docs[0]
        if ch == "text":
            for side in (0, 1):
                d = self.docs[side]
                self.texts[side].update({n: d.get_text(n) for n in model.docs})
            for name, text in model.docs.items():
                self.texts[0][name].insert(0, text)
        elif ch == "meta":
            self.tasks = tuple(d.get_map("tasks") for d in self.docs)
            for key, task in model.board.items():
                child = self.tasks[0].insert_container(key, LoroMap())
                for k, v in task.items():
                    child.insert(k, v)
        else:
            self.kv = tuple(d.get_map("kv") for d in self.docs)
            self.kbuf = np.zeros((max(len(model.kv_k) * 2, 64), model.row_bytes), np.uint8)
            self.vbuf = np.zeros_like(self.kbuf)
            t = len(model.kv_k)
            self.kbuf[:t], self.vbuf[:t] = model.kv_k, model.kv_v
            self.kv_tokens = t
            for p in range(-(-t // KV_PAGE_TOKENS)):
                s = slice(p * KV_PAGE_TOKENS, min(t, (p + 1) * KV_PAGE_TOKENS))
                self.kv[0].insert(f"K/{p}", self.kbuf[s].tobytes())
                self.kv[0].insert(f"V/{p}", self.vbuf[s].tobytes())
        a.commit()
        self.sync()  # the initial state (a snapshot-sized update), untimed
        self.check_all(model)

    def write(self, op: Any) -> None:
        if isinstance(op, TextOp):
            self.texts[0][op.name].insert(op.pos, op.insert)
        elif isinstance(op, MetaOp):
            got = self.tasks[0].get(op.key)
            assert got is not None and ValueOrContainer.is_container(got)
            got.container.insert("status", op.status)
        else:
            t = self.kv_tokens
            if t == len(self.kbuf):
                self.kbuf = np.concatenate([self.kbuf, np.zeros_like(self.kbuf)])
                self.vbuf = np.concatenate([self.vbuf, np.zeros_like(self.vbuf)])
            self.kbuf[t] = op.k[0, 0, 0]
            self.vbuf[t] = op.v[0, 0, 0]
            self.kv_tokens = t + 1
            p = t // KV_PAGE_TOKENS
            s = slice(p * KV_PAGE_TOKENS, t + 1)
            self.kv[0].insert(f"K/{p}", self.kbuf[s].tobytes())
            self.kv[0].insert(f"V/{p}", self.vbuf[s].tobytes())
        self.docs[0].commit()

    def sync(self) -> list[int]:
        sizes = []
        moved = True
        while moved:
            moved = False
            for src in (0, 1):
                doc, known = self.docs[src], self.known[src]
                ours = doc.oplog_vv
                if known.includes_vv(ours):
                    continue
                blob = doc.export(ExportMode.Updates(known))
                known.merge(ours)
                sizes.append(len(blob))
                dst = 1 - src
                self.docs[dst].import_(blob)
                meta = LoroDoc.decode_import_blob_meta(blob, False)
                self.known[dst].merge(meta.partial_end_vv)
                moved = True
        return sizes

    def idle_cycle(self) -> list[int]:
        return self.sync()

    def check(self, op: Any, model: Model, cycle: int = 0) -> None:
        a, b = self.docs
        require(a.oplog_vv == b.oplog_vv, "loro: version vectors differ")
        if isinstance(op, TextOp):
            want = model.docs[op.name]
            ok = self.texts[0][op.name].to_string() == want == self.texts[1][op.name].to_string()
            require(ok, f"loro: {op.name} differs")
        elif isinstance(op, MetaOp):
            for m in self.tasks:
                got = m.get(op.key)
                assert got is not None and got.container is not None
                st = got.container.get("status")
                require(st is not None and st.value == op.status, "loro: meta differs")
        else:
            p = (self.kv_tokens - 1) // KV_PAGE_TOKENS
            for kind in ("K", "V"):
                want = model.last_page(kind)
                for m in self.kv:
                    got = m.get(f"{kind}/{p}")
                    require(got is not None and got.value == want, "loro: kv page differs")

    def check_all(self, model: Model) -> None:
        a, b = self.docs
        require(a.oplog_vv == b.oplog_vv, "loro: version vectors differ")
        ch = model.channel
        for side in (0, 1):
            if ch == "text":
                got = {n: t.to_string() for n, t in self.texts[side].items()}
                require(got == model.docs, "loro: documents differ")
            elif ch == "meta":
                require(self.tasks[side].get_deep_value() == model.board, "loro: board differs")
            else:
                _check_pages(self.kv[side].get_deep_value(), model, "loro")


ENGINE_TYPES: dict[str, type[Any]] = {"hybridsync": Hybrid, "pycrdt": Pycrdt, "loro": Loro}


# --------------------------------------------------------------------------- regions


class Regions:
    """Runs the timed regions. Under callgrind (``--callgrind-child``) each region runs as
    the callback of a ctypes function pointer, i.e. inside libffi's ``ffi_call``: with
    ``--toggle-collect=ffi_call --dump-after=ffi_call`` callgrind counts exactly the
    region and dumps it on its own."""

    CALIBRATION = "calibration/empty"

    def __init__(self, counting: bool) -> None:
        self.counting = counting
        self.labels: list[str] = []
        self._cb_type = ctypes.CFUNCTYPE(None)
        if counting:
            for _ in range(16):
                self.run(self.CALIBRATION, lambda: None)

    def run(self, label: str, fn: Callable[[], Any]) -> tuple[Any, float]:
        """Returns fn's result and its process time in seconds."""
        if not self.counting:
            t0 = time.process_time()
            out = fn()
            return out, time.process_time() - t0
        box: list[Any] = []
        err: list[BaseException] = []

        def body() -> None:
            try:
                box.append(fn())
            except BaseException as e:  # re-raised below
                err.append(e)

        cb = self._cb_type(body)
        self.labels.append(label)
        cb()
        if err:
            raise err[0]
        return box[0], 0.0


# --------------------------------------------------------------------------- runs


def run_cell(
    channel: str,
    n: int,
    cycles: int,
    warmup: int,
    idle_cycles: int,
    regions: Regions,
    budget_s: float = float("inf"),
    min_cycles: int = 1,
) -> dict[str, Any]:
    """One channel at one N: every engine set up from the same model, then the cycles,
    interleaved (``cycles`` of them, fewer when ``budget_s`` of wall time is spent after
    ``min_cycles``)."""
    rng = random.Random(f"{SEED}/{channel}/{n}")
    model = Model(channel, n, rng)
    engines: dict[str, Engine] = {}
    setup_s: dict[str, float] = {}
    for name in ENGINES:
        t0 = time.perf_counter()
        engines[name] = ENGINE_TYPES[name](model)
        setup_s[name] = time.perf_counter() - t0
    gc.collect()
    gc.freeze()
    cpu: dict[str, list[float]] = {e: [] for e in ENGINES}
    wire: dict[str, list[list[int]]] = {e: [] for e in ENGINES}
    t_start = time.perf_counter()
    try:
        for i in range(warmup + cycles):
            done = i - warmup
            if done >= min_cycles and time.perf_counter() - t_start > budget_s:
                break
            op = model.next_op()
            model.apply(op)
            k = i % len(ENGINES)
            for name in ENGINES[k:] + ENGINES[:k]:
                eng = engines[name]

                def cycle(eng: Engine = eng, op: Any = op) -> list[int]:
                    eng.write(op)
                    return eng.sync()

                sizes, spent = regions.run(f"{channel}/{name}", cycle)
                eng.check(op, model, i)
                if i >= warmup:
                    cpu[name].append(spent)
                    wire[name].append(sizes)
        idle: dict[str, dict[str, Any]] = {}
        if not regions.counting:
            for name in ENGINES:
                eng = engines[name]
                sizes_all, times = [], []
                for _ in range(idle_cycles):
                    t0 = time.process_time()
                    sizes = eng.idle_cycle()  # type: ignore[attr-defined]
                    times.append(time.process_time() - t0)
                    sizes_all.append(sum(sizes))
                idle[name] = {
                    "bytes": statistics.median(sizes_all),
                    "cpu_s": statistics.median(times),
                }
        for eng in engines.values():
            eng.check_all(model)
    finally:
        gc.unfreeze()
    cycles = len(cpu[ENGINES[0]])
    setup = ", ".join(f"{e} {s:.1f} s" for e, s in setup_s.items())
    spent = time.perf_counter() - t_start
    log(f"  {channel} N={n}: setup {setup}; {cycles} cycles in {spent:.1f} s")
    out: dict[str, Any] = {"channel": channel, "n": n, "cycles": cycles, "correct": True}
    for name in ENGINES:
        totals = [sum(s) for s in wire[name]]
        out[name] = {
            "edit_bytes": statistics.median(totals) if totals else 0,
            "edit_bytes_max": max(totals) if totals else 0,
            "messages": statistics.median(len(s) for s in wire[name]) if totals else 0,
            "edit_bytes_mean": statistics.fmean(totals) if totals else 0,
            # The messages of a cycle whose total is the median (what the table shows).
            "example_messages": _median_cycle(wire[name]),
            "edit_bytes_all": totals,
            "cpu_s": statistics.median(cpu[name]) if cpu[name] else 0.0,
            "cpu_p10_s": _quantile(cpu[name], 0.1),
            "cpu_p90_s": _quantile(cpu[name], 0.9),
            "setup_s": setup_s[name],
        }
        if name in idle:
            out[name]["idle_bytes"] = idle[name]["bytes"]
            out[name]["idle_cpu_s"] = idle[name]["cpu_s"]
    del engines
    gc.collect()
    return out


def _median_cycle(cycles: list[list[int]]) -> list[int]:
    if not cycles:
        return []
    ranked = sorted(cycles, key=sum)
    return ranked[(len(ranked) - 1) // 2]


def _quantile(xs: Sequence[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _callgrind_cycles(cycles: int, channel: str) -> int:
    """hybridsync's metadata cycle is ~1,000x the others' under callgrind: fewer of them
    (instruction counts barely vary from cycle to cycle)."""
    return max(3, cycles // 2) if channel == "meta" else cycles


def callgrind_child(cycles: int, warmup: int, labels_path: Path) -> None:
    regions = Regions(counting=True)
    for channel in CHANNELS:
        run_cell(channel, CALLGRIND_N, _callgrind_cycles(cycles, channel), warmup, 0, regions)
    labels_path.write_text(json.dumps(regions.labels))


def callgrind_counts(plan: Plan, work: Path) -> dict[str, Any]:
    """Instructions per edit cycle at N = 1,000 (see the module docstring)."""
    for old in work.glob("callgrind.out*"):
        old.unlink()
    labels_path = work / "regions.json"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--collect-atstart=no",
        "--toggle-collect=ffi_call",
        "--dump-after=ffi_call",
        f"--callgrind-out-file={work / 'callgrind.out'}",
        sys.executable,
        str(Path(__file__).resolve()),
        "--callgrind-child",
        str(labels_path),
        "--cycles",
        str(plan.callgrind_cycles),
        "--warmup",
        str(plan.callgrind_warmup),
    ]
    env = dict(os.environ, PYTHONHASHSEED="0")
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stderr=subprocess.DEVNULL)
    labels = json.loads(labels_path.read_text())
    dumps = sorted(work.glob("callgrind.out.*"), key=lambda p: int(p.suffix[1:]))
    counts = []
    for dump in dumps:
        with dump.open() as fh:
            for line in fh:
                if line.startswith("summary:"):
                    counts.append(int(line.split()[1]))
                    break
            else:
                raise RuntimeError(f"no summary in {dump}")
    if len(counts) != len(labels):
        raise RuntimeError(f"{len(counts)} callgrind dumps for {len(labels)} regions")
    per: dict[str, list[int]] = {}
    for label, c in zip(labels, counts, strict=True):
        per.setdefault(label, []).append(c)
    overhead = statistics.median(per.pop(Regions.CALIBRATION))
    skip = plan.callgrind_warmup
    out: dict[str, Any] = {"n": CALLGRIND_N, "overhead": overhead, "cycles": {}}
    for label, cs in per.items():
        channel, engine = label.split("/")
        measured = [max(0, c - overhead) for c in cs[skip:]]
        out.setdefault(channel, {})[engine] = statistics.median(measured)
        out["cycles"][channel] = len(measured)
    log(f"  callgrind: {len(labels)} regions in {time.perf_counter() - t0:.0f} s")
    return out


# --------------------------------------------------------------------------- report


def environment(quick: bool) -> dict[str, Any]:
    try:
        vg = subprocess.run(
            ["valgrind", "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        vg = "not available"
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": quick,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": platform.platform(),
        "git": git_revision(),
        "valgrind": vg,
        "versions": {
            p: package_version(p) for p in ("hybridsync", "pycrdt", "loro", "numpy", "matplotlib")
        },
    }


def _us(s: float) -> str:
    return f"{s * 1e6:,.0f} µs" if s < 0.01 else f"{s * 1e3:,.1f} ms"


def _x(a: float, b: float) -> str:
    if b == 0:
        return "0 / 0" if a == 0 else "∞"
    return f"{a / b:.2f}x"


def _b(n: float) -> str:
    return f"{n:,.0f} B"


def _instr(n: float) -> str:
    return f"{n / 1e3:,.0f} k"


def _msgs(e: dict[str, Any]) -> str:
    """Median edit bytes and the sizes of the messages of the first timed cycle."""
    parts = "+".join(str(m) for m in e["example_messages"])
    return f"{_b(e['edit_bytes'])} ({parts})" if parts else _b(e["edit_bytes"])


def table(rows: list[dict[str, Any]], instr: dict[str, Any] | None) -> str:
    head = (
        "| channel | N | cycles | edit bytes: hybridsync / pycrdt / loro | bytes h/p "
        "| edit CPU: hybridsync / pycrdt / loro | CPU h/p | CPU h/l | correct |\n"
        "|---|---:|---:|---|---:|---|---:|---:|---|\n"
    )
    lines = []
    for r in rows:
        h, p, lo = r["hybridsync"], r["pycrdt"], r["loro"]
        lines.append(
            f"| {r['channel']} | {r['n']:,} | {r['cycles']} "
            f"| {_msgs(h)} / {_msgs(p)} / {_msgs(lo)} "
            f"| {_x(h['edit_bytes'], p['edit_bytes'])} "
            f"| {_us(h['cpu_s'])} / {_us(p['cpu_s'])} / {_us(lo['cpu_s'])} "
            f"| {_x(h['cpu_s'], p['cpu_s'])} | {_x(h['cpu_s'], lo['cpu_s'])} "
            f"| {'yes' if r['correct'] else 'NO'} |"
        )
    out = head + "\n".join(lines) + "\n"
    out += (
        "\nIdle cycles (nothing written; median): bytes both sides send, and CPU. Edit "
        "bytes over all timed cycles: mean and largest (a metadata compaction sends a "
        "new epoch's whole document).\n\n"
        "| channel | N | idle bytes: hybridsync / pycrdt / loro "
        "| idle CPU: hybridsync / pycrdt / loro | edit bytes, mean: h / p / l "
        "| edit bytes, largest: h / p / l |\n"
        "|---|---:|---|---|---|---|\n"
    )
    for r in rows:
        h, p, lo = r["hybridsync"], r["pycrdt"], r["loro"]
        out += (
            f"| {r['channel']} | {r['n']:,} "
            f"| {_b(h['idle_bytes'])} / {_b(p['idle_bytes'])} / {_b(lo['idle_bytes'])} "
            f"| {_us(h['idle_cpu_s'])} / {_us(p['idle_cpu_s'])} / {_us(lo['idle_cpu_s'])} "
            f"| {_b(h['edit_bytes_mean'])} / {_b(p['edit_bytes_mean'])} "
            f"/ {_b(lo['edit_bytes_mean'])} "
            f"| {_b(h['edit_bytes_max'])} / {_b(p['edit_bytes_max'])} "
            f"/ {_b(lo['edit_bytes_max'])} |\n"
        )
    if instr:
        counted = ", ".join(f"{ch} {k}" for ch, k in instr["cycles"].items())
        out += (
            f"\nInstructions per edit cycle at N = {instr['n']:,} (callgrind, median over "
            f"the cycles: {counted}; ctypes round trip of {instr['overhead']:,.0f} "
            "instructions subtracted):\n\n"
            "| channel | hybridsync | pycrdt | loro | ratio h/p | ratio h/l |\n"
            "|---|---:|---:|---:|---:|---:|\n"
        )
        for ch in CHANNELS:
            c = instr[ch]
            out += (
                f"| {ch} | {_instr(c['hybridsync'])} | {_instr(c['pycrdt'])} "
                f"| {_instr(c['loro'])} | {_x(c['hybridsync'], c['pycrdt'])} "
                f"| {_x(c['hybridsync'], c['loro'])} |\n"
            )
    return out


def render(env: dict[str, Any], rows: list[dict[str, Any]], instr: Any, cmd: str) -> str:
    v = env["versions"]
    parts = [
        "# The sync tax of one small write (issue 16)\n",
        f"`{cmd}` -- {env['date']}, git `{env['git']}`"
        + (" (quick: small N, few cycles)" if env["quick"] else "")
        + ".\n",
        f"Machine: {env['cpu']}, {env['cores']} cores; {env['platform']}; Python "
        f"{env['python']}; hybridsync {v['hybridsync']}, pycrdt {v['pycrdt']}, loro "
        f"{v['loro']}, numpy {v['numpy']}; {env['valgrind']}.\n",
        "Two replicas in sync; each cycle one write on one side, then messages until both "
        "sides are quiet. text: one 15-character insert into one of N documents; meta: one "
        "task's status on a board of N tasks; kv: one decode step (one token row) on a q4_0 "
        "cache of N 576-byte pages (the last page of K and of V rewritten). Edit bytes: all "
        "messages of the write, both directions (median). Idle bytes: what both sides send "
        "in a cycle with no write. Edit CPU: median `process_time` of the write plus the "
        "sync, engines interleaved cycle by cycle. Ratios are hybridsync / other (below 1 "
        "= hybridsync cheaper). How each engine is driven: the docstring of "
        "`benches/bench_small.py`.\n",
        table(rows, instr),
    ]
    return "\n".join(parts)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CHANNELS), figsize=(13, 4.2), sharey=True)
    styles = {"hybridsync": "o-", "pycrdt": "s--", "loro": "^:"}
    for ax, ch in zip(axes, CHANNELS, strict=True):
        rs = sorted((r for r in rows if r["channel"] == ch), key=lambda r: r["n"])
        ns = [r["n"] for r in rs]
        for e in ENGINES:
            ax.plot(ns, [r[e]["cpu_s"] * 1e6 for r in rs], styles[e], label=e)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(ch)
        ax.set_xlabel("N (documents / keys / pages)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("CPU per edit cycle (µs, median)")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 100, 1,000; few cycles")
    parser.add_argument("--no-callgrind", action="store_true", help="skip instruction counts")
    parser.add_argument("--sizes", type=int, nargs="+", help="other values of N")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--callgrind-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cycles", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.callgrind_child:
        callgrind_child(args.cycles, args.warmup, args.callgrind_child)
        return 0
    plan = QUICK if args.quick else FULL
    if args.sizes:
        plan = dataclasses.replace(plan, sizes=tuple(args.sizes))
    t0 = time.perf_counter()
    env = environment(args.quick)
    rows = []
    for n in plan.sizes:
        for channel in CHANNELS:
            cycles = plan.cycles.get(n, min(plan.cycles.values()))
            rows.append(
                run_cell(
                    channel,
                    n,
                    cycles,
                    plan.warmup.get(n, min(plan.warmup.values())),
                    plan.idle_cycles,
                    Regions(False),
                    plan.budget_s,
                    plan.min_cycles,
                )
            )
    instr = None
    if not args.no_callgrind:
        if shutil.which("valgrind") is None:
            log("valgrind not found: no instruction counts")
        else:
            with tempfile.TemporaryDirectory() as tmp:
                instr = callgrind_counts(plan, Path(tmp))
    stem = "small-quick" if args.quick else "small"
    cmd = "python benches/bench_small.py" + (" --quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    report = render(env, rows, instr, cmd)
    (args.out / f"{stem}.md").write_text(report)
    (args.out / f"{stem}.json").write_text(
        json.dumps({"environment": env, "rows": rows, "instructions": instr}, indent=1) + "\n"
    )
    plot(rows, args.out / f"{stem}.png", f"One small write, CPU per edit cycle ({env['cpu']})")
    print(report)
    log(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
