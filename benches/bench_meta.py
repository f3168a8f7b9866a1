#!/usr/bin/env python3
"""Structured metadata under churn: hybridsync vs pycrdt (Yjs) vs Loro.

Every engine replays the same seeded workload on a star of replicas (a hub and its
leaves), in ticks; the engines take turns in blocks of ticks (the order rotating from block
to block) so that they share the machine's noise:

* ``hybridsync`` -- :class:`hybridsync.Memory` replicas (``memory.meta``, compaction
  policy ``max_ratio=1.5, slack_bytes=2048, max_clients=64``) joined by
  :class:`hybridsync.Link` pairs, driven by :mod:`hybridsync.sim` (lossless by default,
  one tick of delay each way, clients poll every tick). Wire bytes are every frame sent,
  polls and acknowledgements included.
* ``pycrdt`` -- what a pycrdt-websocket user does: one ``pycrdt.Doc`` per replica (a root
  ``Map``, nested ``Map``/``Array`` for nested values). A joining replica runs the
  y-protocols handshake with the hub (``SYNC_STEP1`` with its state vector, the hub's
  ``SYNC_STEP2`` + ``SYNC_STEP1``, its ``SYNC_STEP2``). Then, per tick, every leaf sends ONE
  ``SYNC_UPDATE`` holding ``pycrdt.merge_updates`` of its transactions' updates since the
  last tick, the hub applies them and sends every leaf ONE message with the merged updates
  of everyone else (its own writes included); nothing travels when nothing changed (no
  periodic anti-entropy over a reliable transport).
* ``loro`` -- the same with ``loro.LoroDoc`` replicas (one commit per transaction): a
  joining replica sends its version vector and the hub answers with a snapshot (an empty
  joiner; Loro's advice for loading a new peer) or ``export(ExportMode.Updates(vv))``, plus
  its own version vector, which the joiner answers with what the hub lacks. Per tick every
  leaf that wrote sends ONE ``export(ExportMode.Updates(vv))`` from the version vector it
  last sent, the hub imports them with ``import_batch`` and sends every leaf ONE
  ``export(ExportMode.Updates(vv))`` from the version vector it last sent that leaf,
  extended by what the leaf sent (so nothing comes back to its author).

Messages are delivered within the tick. Wire bytes: y-protocol message sizes for pycrdt,
blob sizes with a varint length in front for Loro; transport overhead is not counted.

Workloads:

(a) **storm**: 100 keys overwritten with unique 14-character values; a hub, 20 long-lived
    leaves and short-lived leaves (about 5 at a time) that join as fresh replicas, write
    for a while, then leave once their writes are delivered.
(b) **board**: a task board of 50 agents: the hub creates tasks (a dict of dicts) and
    archives (deletes) finished ones; agents claim tasks (some claims collide in the same
    tick), update progress and complete them, each change one transaction that also
    appends a line to an append-only log list.

Metrics: wire bytes; state size = the encoded state of a replica (hybridsync:
``len(doc.get_update())`` of the current epoch for every replica present; pycrdt:
``len(doc.get_update())`` of the hub, GC on (the default); Loro: ``len(export(Snapshot()))``
of the hub -- every pycrdt/Loro replica holds the same history once synced) and the
smallest honest state (Loro: ``export(ShallowSnapshot(...))`` at the hub's frontiers or at a
checkpoint commit on a fork of the hub, whichever is smaller, see ``Loro.small_sizes``; the
others as above), sampled every few ticks, maximum and final; live JSON size; CPU =
``time.process_time`` of the engine's own work (joins, writes, ticks, settling; size
sampling, convergence checks and the counting of hybridsync's frame parts are outside).
Ratios are ``hybridsync / other``: below 1.0 means hybridsync is smaller or cheaper.
Convergence (all present replicas equal after settling) is checked per engine; final values
need not agree across engines (concurrent writes merge by each engine's own rules).

An engine whose CPU time on a workload passes ``--budget-s`` stops there and is reported
as not finished (DNF), with its numbers up to that tick and per-transaction ratios.

Instruction counts (``--instructions``): while the timed run goes on, the script runs itself
on reduced workloads (``--size instr``) under ``valgrind --tool=callgrind --collect-atstart=no
--toggle-collect=ffi_call --dump-after=ffi_call``. There every timed region (the same
regions as the CPU column) is called as the callback of a ctypes function pointer, i.e.
inside libffi's ``ffi_call``: collection is on exactly while a region runs and each region
ends in its own callgrind dump, so the counts hold the engines' own work and nothing else
(no engine uses ctypes; the number of dumps is checked). The constant cost of the ctypes
round trip (about 2,000 instructions, measured on empty regions in the same run) is
subtracted. The counts do not depend on the machine's load.

Usage::

    python benches/bench_meta.py [--quick] [--instructions] [--loss 0.0] [--budget-s 300]
        [--out benches/results]

It writes ``meta.md`` and ``meta.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import os
import platform
import random
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import xxhash
from pycrdt import (
    Array,
    Doc,
    Map,
    YMessageType,
    YSyncMessageType,
    create_update_message,
    merge_updates,
    write_message,
)

from _machine import Regions, callgrind_regions, cpu_model
from hybridsync import Link, Memory
from hybridsync.frame import MetaKind, decode_frame
from hybridsync.meta import CompactionPolicy
from hybridsync.sim import Network

try:
    import loro
except ImportError:  # reported, the pycrdt comparison still runs
    loro = None

SEED = 20_240_817
#: Engines take turns in blocks of ticks (see :func:`run_all`).
BLOCK_TICKS = 10
#: The timed regions; under callgrind each one is measured in instructions.
REGIONS = Regions()
#: the reduced workloads measured under callgrind
INSTR_STORM_WRITES = 600
INSTR_BOARD_TICKS = 8
POLICY = CompactionPolicy(max_ratio=1.5, slack_bytes=2048, max_clients=64)
HUB = "r0"

#: One write inside a transaction: ("set", path, key, value) | ("del", path, key, None)
#: | ("append", path, None, value). ``path`` names the container from the root.
Op = tuple[str, tuple[str, ...], Any, Any]


# --------------------------------------------------------------------------- workloads


@dataclass
class Tick:
    joins: list[str] = field(default_factory=list)
    leaves: list[str] = field(default_factory=list)
    txns: list[tuple[str, list[Op]]] = field(default_factory=list)


@dataclass
class Workload:
    name: str
    title: str
    description: str
    initial: list[str]  # replicas present from the start (the hub first)
    setup: list[Op]  # the hub's first transaction
    ticks: list[Tick]
    sample_every: int

    @property
    def txn_count(self) -> int:
        return sum(len(t.txns) for t in self.ticks)

    @property
    def op_count(self) -> int:
        return sum(len(ops) for t in self.ticks for _, ops in t.txns)

    @property
    def replica_count(self) -> int:
        return len(self.initial) + sum(len(t.joins) for t in self.ticks)


def storm(writes: int, replicas: int, long_lived: int, short_alive: int, per_tick: int) -> Workload:
    rng = random.Random(SEED)
    keys = [f"k{i:02d}" for i in range(100)]
    short = replicas - 1 - long_lived
    n_ticks = -(-writes // per_tick)
    spacing = n_ticks / short
    join_at: dict[int, list[str]] = {}
    leave_at: dict[int, list[str]] = {}
    for j in range(short):
        name = f"r{long_lived + 1 + j}"
        join_at.setdefault(max(0, round((j - short_alive + 1) * spacing)), []).append(name)
        leave_at.setdefault(round((j + 1) * spacing), []).append(name)
    active = [HUB] + [f"r{i}" for i in range(1, long_lived + 1)]
    ticks: list[Tick] = []
    seq = 0
    for t in range(n_ticks):
        tick = Tick(joins=join_at.get(t, []), leaves=leave_at.get(t, []))
        active += tick.joins
        for name in tick.leaves:
            active.remove(name)
        for _ in range(min(per_tick, writes - seq)):
            seq += 1
            writer = rng.choice(active)
            tick.txns.append((writer, [("set", (), rng.choice(keys), f"{writer:>4}:{seq:09d}")]))
        ticks.append(tick)
    leftovers = [n for n in active if int(n[1:]) > long_lived]
    if leftovers:
        ticks.append(Tick(leaves=leftovers))
    return Workload(
        name="storm",
        title=(
            f"(a) Overwrite storm: {writes:,} overwrites of 100 keys, {replicas} replicas "
            f"({long_lived} long-lived leaves, {short} short-lived about {short_alive} at a "
            f"time), {per_tick} writes/tick"
        ),
        description=(
            "Each overwrite is one transaction on a uniformly chosen key by a uniformly "
            "chosen active writer; values are unique, 14 characters. Short-lived replicas "
            "join as fresh replicas and leave once their writes are delivered."
        ),
        initial=[HUB] + [f"r{i}" for i in range(1, long_lived + 1)],
        setup=[("set", (), k, f"{HUB:>4}:{0:09d}") for k in keys],
        ticks=ticks,
        sample_every=max(1, n_ticks // 100),
    )


def board(agents: int, n_ticks: int) -> Workload:
    """A task board: ``tasks`` (dict of dicts) and an append-only ``log`` list."""
    rng = random.Random(SEED + 1)
    names = [f"r{i}" for i in range(1, agents)]
    tasks: dict[str, dict[str, Any]] = {}  # the script's own view
    working: dict[str, str] = {}  # agent -> task
    done_at: dict[str, int] = {}
    ticks: list[Tick] = []
    next_task = 0
    words = ["parse", "fetch", "rank", "summarize", "verify", "embed", "plan", "review"]
    for t in range(n_ticks):
        tick = Tick()
        # The hub (orchestrator) creates tasks and archives finished ones.
        for _ in range(3):
            tid = f"t{next_task:05d}"
            next_task += 1
            tasks[tid] = {"created": t, "status": "open"}
            tick.txns.append(
                (
                    HUB,
                    [
                        (
                            "set",
                            ("tasks",),
                            tid,
                            {
                                "title": f"{rng.choice(words)} batch {next_task}",
                                "status": "open",
                                "owner": None,
                                "progress": 0,
                                "priority": rng.randint(1, 5),
                                "tags": [rng.choice(words), rng.choice(words)],
                            },
                        ),
                        ("append", ("log",), None, f"{t:05d} r0 created {tid}"),
                    ],
                )
            )
        for tid in [tid for tid, at in done_at.items() if at <= t - 10]:
            del done_at[tid]
            del tasks[tid]
            tick.txns.append(
                (
                    HUB,
                    [
                        ("del", ("tasks",), tid, None),
                        ("append", ("log",), None, f"{t:05d} r0 archived {tid}"),
                    ],
                )
            )
        # Agents: claim an open task seen for long enough, work on it, complete it.
        claimable = [
            tid for tid, s in tasks.items() if s["status"] == "open" and s["created"] <= t - 6
        ]
        rng.shuffle(claimable)
        claimed_now: list[str] = []
        for agent in names:
            tid = working.get(agent)
            if tid is None:
                if rng.random() < 0.3 and (claimable or claimed_now):
                    if claimed_now and rng.random() < 0.1:
                        # A colliding claim: another agent claimed it this very tick.
                        # This agent gives up on it afterwards (it sees the other owner).
                        tid = rng.choice(claimed_now)
                    else:
                        if not claimable:
                            continue
                        tid = claimable.pop()
                        tasks[tid]["status"] = "claimed"
                        working[agent] = tid
                        claimed_now.append(tid)
                    tick.txns.append(
                        (
                            agent,
                            [
                                ("set", ("tasks", tid), "status", "claimed"),
                                ("set", ("tasks", tid), "owner", agent),
                                ("append", ("log",), None, f"{t:05d} {agent} claimed {tid}"),
                            ],
                        )
                    )
            elif tid not in claimed_now and rng.random() < 0.5:
                task = tasks[tid]
                task["progress"] = min(100, task.get("progress", 0) + rng.randint(10, 40))
                if task["progress"] < 100:
                    tick.txns.append(
                        (agent, [("set", ("tasks", tid), "progress", task["progress"])])
                    )
                else:
                    task["status"] = "done"
                    done_at[tid] = t
                    del working[agent]
                    tick.txns.append(
                        (
                            agent,
                            [
                                ("set", ("tasks", tid), "progress", 100),
                                ("set", ("tasks", tid), "status", "done"),
                                ("set", ("tasks", tid), "result", f"ok:{rng.getrandbits(64):016x}"),
                                ("append", ("log",), None, f"{t:05d} {agent} finished {tid}"),
                            ],
                        )
                    )
        ticks.append(tick)
    return Workload(
        name="board",
        title=f"(b) Task board: {agents} agents (hub + {agents - 1}), {n_ticks} ticks",
        description=(
            "The hub creates 3 tasks per tick (a dict with a nested list) and deletes "
            "tasks 10 ticks after they are done; each agent without a task claims one "
            "(probability 0.3 per tick; 10% of claims collide with another agent's claim "
            "of the same tick), then updates its progress (probability 0.5 per tick) "
            "until done. Every change is one transaction; claims, completions, creations "
            "and archivals also append a line to `log` (append-only)."
        ),
        initial=[HUB, *names],
        setup=[("set", (), "tasks", {}), ("set", (), "log", [])],
        ticks=ticks,
        sample_every=max(1, n_ticks // 100),
    )


# --------------------------------------------------------------------------- engines


def normalize(value: Any) -> Any:
    """JSON-comparable: integral floats (pycrdt numbers) read as int."""
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def live_bytes(value: Any) -> int:
    return len(json.dumps(normalize(value), sort_keys=True, separators=(",", ":")).encode())


class Engine(ABC):
    name = ""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.wire_bytes = 0
        self.messages = 0
        self.skipped = 0
        self.joined = 0

    @abstractmethod
    def join(self, name: str) -> None: ...

    @abstractmethod
    def leave(self, name: str) -> None: ...

    @abstractmethod
    def txn(self, writer: str, ops: Sequence[Op]) -> None: ...

    @abstractmethod
    def tick(self) -> None: ...

    @abstractmethod
    def quiet(self) -> bool:
        """Everything written has reached every replica present (checked untimed)."""

    @abstractmethod
    def sizes(self) -> dict[str, int]: ...

    @abstractmethod
    def values(self) -> dict[str, Any]: ...

    def small_sizes(self) -> dict[str, int]:
        """The smallest honest encoding of the state (default: :meth:`sizes`)."""
        return self.sizes()

    def extra(self) -> dict[str, Any]:
        return {}


class Hybrid(Engine):
    name = "hybridsync"

    def __init__(self, workload: Workload, loss: float) -> None:
        super().__init__(workload)
        self.net = Network(SEED, loss=loss)
        self.present: dict[str, Memory] = {}
        self.leaving: set[str] = set()
        self.drained: set[str] = set()
        #: Metadata bytes sent, by part (before frame compression).
        self.parts: dict[str, int] = dict.fromkeys(
            ("epoch base", "epoch frozen state", "update state vector", "update"), 0
        )
        self.frames: list[bytes] = []

    def join(self, name: str) -> None:
        memory = self.net.add_replica(name, Memory(name, compaction=POLICY))
        self.present[name] = memory
        self.joined += 1
        if name != HUB:
            server, client = self.net.connect(HUB, name)
            self._watch(client, name)
            self._tally(server)
            self._tally(client)

    def _tally(self, link: Link) -> None:
        """Keep every frame sent; their metadata blocks are counted by part after the run
        (outside the timed region)."""
        outgoing = link.outgoing
        frames = self.frames

        def kept() -> bytes | None:
            data = outgoing()
            if data is not None:
                frames.append(data)
            return data

        link.outgoing = kept  # type: ignore[method-assign]

    def count_parts(self) -> None:
        for data in self.frames:
            blk = decode_frame(data).meta
            if blk is not None and blk.kind == MetaKind.EPOCH:
                self.parts["epoch base"] += len(blk.a)
                self.parts["epoch frozen state"] += len(blk.b)
            elif blk is not None and blk.kind == MetaKind.UPDATE:
                self.parts["update state vector"] += len(blk.a)
                self.parts["update"] += len(blk.b)
        self.frames.clear()

    def _watch(self, link: Link, name: str) -> None:
        """A leaving replica leaves once a request built while its link was idle has
        been answered: the hub has everything it wrote (stop-and-wait)."""
        incoming, outgoing = link.incoming, link.outgoing
        clean = False

        def on_incoming(data: bytes) -> None:
            awaiting = link.awaiting_reply
            incoming(data)
            if clean and awaiting and not link.awaiting_reply:
                self.drained.add(name)

        def on_outgoing() -> bytes | None:
            nonlocal clean
            if name in self.leaving and not link.awaiting_reply:
                clean = link.idle
            return outgoing()

        link.incoming = on_incoming  # type: ignore[method-assign]
        link.outgoing = on_outgoing  # type: ignore[method-assign]

    def leave(self, name: str) -> None:
        self.leaving.add(name)

    def txn(self, writer: str, ops: Sequence[Op]) -> None:
        meta = self.present[writer].meta
        try:
            nodes = [_resolve_hybrid(meta, path) for _, path, _, _ in ops]
        except KeyError:
            self.skipped += 1
            return
        with meta.transaction():
            for (kind, _, key, value), node in zip(ops, nodes, strict=True):
                if kind == "set":
                    node[key] = value
                elif kind == "del":
                    if key in node:
                        del node[key]
                else:
                    node.append(value)

    def tick(self) -> None:
        self.net.tick()
        for name in sorted(self.drained):
            self.leaving.discard(name)
            del self.present[name]
            self.net.isolate(name)
        self.drained.clear()

    def quiet(self) -> bool:
        return not self.leaving and self._quiet()

    def _quiet(self) -> bool:
        for name in self.present:
            if name != HUB and not (
                self.net.link(name, HUB).idle and self.net.link(HUB, name).idle
            ):
                return False
        return len({m.digest() for m in self.present.values()}) == 1

    def finish(self) -> None:
        totals = self.net.totals()
        self.wire_bytes, self.messages = totals.bytes_sent, totals.frames_sent
        self.count_parts()

    def sizes(self) -> dict[str, int]:
        return {n: len(m.meta.update_since(None)) for n, m in self.present.items()}

    def values(self) -> dict[str, Any]:
        return {n: m.meta.to_py() for n, m in self.present.items()}

    def extra(self) -> dict[str, Any]:
        hub = self.present[HUB].meta.metrics
        everyone = [self.net[n].meta.metrics for n in self.net.names]
        return {
            "epochs": hub.epoch,
            "hub_max_encoded_at_compaction": hub.max_encoded_bytes,
            "crossings": sum(m.crossings for m in everyone),
            "rebased_writes": sum(m.rebased_writes for m in everyone),
            "frames_lost": self.net.totals().frames_lost,
            "meta_bytes_by_part": dict(self.parts),
        }


def _resolve_hybrid(meta: Any, path: Sequence[str]) -> Any:
    node = meta
    for part in path:
        node = node[part]
    return node


def _prelim(value: Any) -> Any:
    if isinstance(value, dict):
        return Map({k: _prelim(v) for k, v in value.items()})
    if isinstance(value, list):
        return Array([_prelim(v) for v in value])
    return value


class _Star(Engine, ABC):
    """A hub and its leaves synced the way the baselines' own users sync (see the top):
    a handshake when a replica joins, then per tick one message per leaf to the hub and
    one message from the hub to each leaf; subclasses provide the document type."""

    def __init__(self, workload: Workload) -> None:
        super().__init__(workload)
        self.docs: dict[str, Any] = {}
        self.leaving: set[str] = set()

    @abstractmethod
    def new_doc(self, name: str) -> Any: ...

    @abstractmethod
    def handshake(self, name: str) -> None:
        """Bring a joining leaf and the hub in sync (counts its bytes and messages)."""

    @abstractmethod
    def take_local(self, name: str) -> Any:
        """A leaf's message for this tick (everything it wrote since its last one), or
        None; counts its bytes."""

    @abstractmethod
    def hub_flush(self, leaves: Sequence[str], received: dict[str, Any]) -> None:
        """The hub integrates the leaves' messages and sends each leaf one message with
        what it lacks."""

    def join(self, name: str) -> None:
        self.docs[name] = self.new_doc(name)
        self.joined += 1
        if name != HUB:
            self.handshake(name)

    def leave(self, name: str) -> None:
        self.leaving.add(name)  # leaves after this tick's delivery

    def tick(self) -> None:
        leaves = [n for n in self.docs if n != HUB]
        received = {}
        for name in leaves:
            msg = self.take_local(name)
            if msg is not None:
                received[name] = msg
        self.hub_flush(leaves, received)
        for name in self.leaving:
            del self.docs[name]
            self.forget(name)
        self.leaving.clear()

    def forget(self, name: str) -> None:
        pass

    def quiet(self) -> bool:
        # Every tick delivers everything written before it; leavers leave at its end.
        return not self.leaving and not any(self.pending())

    def pending(self) -> list[str]:
        """Replicas with writes not sent yet."""
        return []


class Pycrdt(_Star):
    """y-protocols (pycrdt-websocket): STEP1/STEP2 handshake on join; per tick one
    SYNC_UPDATE per leaf with ``merge_updates`` of its transactions since the last tick,
    and one per leaf from the hub with the merged updates of everyone else."""

    name = "pycrdt"

    def __init__(self, workload: Workload) -> None:
        super().__init__(workload)
        self.remote = False
        self.local: dict[str, list[bytes]] = {}

    def new_doc(self, name: str) -> Any:
        doc: Doc[Any] = Doc(client_id=xxhash.xxh32_intdigest(name.encode()))
        doc.get("meta", type=Map)
        self.local[name] = []

        def on_txn(event: Any, name: str = name) -> None:
            if not self.remote:
                self.local[name].append(event.update)

        doc.observe(on_txn)
        return doc

    def apply(self, doc: Any, update: bytes) -> None:
        self.remote = True
        try:
            doc.apply_update(update)
        finally:
            self.remote = False

    def _send(self, update: bytes) -> None:
        self.wire_bytes += len(create_update_message(update))
        self.messages += 1

    def handshake(self, name: str) -> None:
        leaf, hub = self.docs[name], self.docs[HUB]
        sv_leaf = leaf.get_state()
        back = hub.get_update(sv_leaf)
        sv_hub = hub.get_state()
        self.apply(leaf, back)
        upd = leaf.get_update(sv_hub)
        self.apply(hub, upd)
        self.wire_bytes += sum(
            len(m)
            for m in (
                _step1(sv_leaf),
                _step2(back),
                _step1(sv_hub),
                _step2(upd),
            )
        )
        self.messages += 4

    def take_local(self, name: str) -> bytes | None:
        ups = self.local[name]
        if not ups:
            return None
        self.local[name] = []
        upd = ups[0] if len(ups) == 1 else merge_updates(*ups)
        self._send(upd)
        return upd

    def hub_flush(self, leaves: Sequence[str], received: dict[str, Any]) -> None:
        hub = self.docs[HUB]
        for upd in received.values():
            self.apply(hub, upd)
        own = self.local[HUB]
        self.local[HUB] = []
        everything = [*own, *received.values()]
        if not everything:
            return
        to_all: bytes | None = None  # for the leaves that sent nothing: merged once
        for name in leaves:
            if name in received:
                rest = [*own, *(u for n, u in received.items() if n != name)]
                if not rest:
                    continue
                upd = rest[0] if len(rest) == 1 else merge_updates(*rest)
            else:
                if to_all is None:
                    to_all = everything[0] if len(everything) == 1 else merge_updates(*everything)
                upd = to_all
            self._send(upd)
            self.apply(self.docs[name], upd)

    def forget(self, name: str) -> None:
        del self.local[name]

    def pending(self) -> list[str]:
        return [n for n, ups in self.local.items() if ups]

    def txn(self, writer: str, ops: Sequence[Op]) -> None:
        doc = self.docs[writer]
        root = doc.get("meta", type=Map)
        try:
            nodes = []
            for _, path, _, _ in ops:
                node = root
                for part in path:
                    node = node[part]
                nodes.append(node)
        except KeyError:
            self.skipped += 1
            return
        with doc.transaction():
            for (kind, _, key, value), node in zip(ops, nodes, strict=True):
                if kind == "set":
                    node[key] = _prelim(value)
                elif kind == "del":
                    if key in node:
                        del node[key]
                else:
                    node.append(_prelim(value))

    def sizes(self) -> dict[str, int]:
        return {HUB: len(self.docs[HUB].get_update())}

    def values(self) -> dict[str, Any]:
        return {n: normalize(d.get("meta", type=Map).to_py()) for n, d in self.docs.items()}


_STEP1 = bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP1])
_STEP2 = bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP2])


def _step1(state: bytes) -> bytes:
    return _STEP1 + write_message(state)


def _step2(update: bytes) -> bytes:
    return _STEP2 + write_message(update)


def _framed(blob: bytes) -> int:
    """Bytes of a blob sent with a varint length in front."""
    n, size = len(blob), 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size + len(blob)


class Loro(_Star):
    """Loro: version-vector handshake on join (a snapshot for the empty joiner); per tick
    each leaf sends one ``export(Updates(vv last sent))``, the hub imports them with
    ``import_batch`` and sends each leaf one ``export(Updates(vv))`` from the version
    vector it last sent it, extended by what that leaf sent."""

    name = "loro"

    def __init__(self, workload: Workload) -> None:
        super().__init__(workload)
        #: leaf -> the version vector last sent to the hub; hub's view of each leaf
        self.sent: dict[str, Any] = {}
        self.known: dict[str, Any] = {}
        self.dirty: set[str] = set()

    def new_doc(self, name: str) -> Any:
        return loro.LoroDoc()

    def handshake(self, name: str) -> None:
        leaf, hub = self.docs[name], self.docs[HUB]
        vv_leaf = leaf.oplog_vv
        if vv_leaf == _EMPTY_VV:
            back = hub.export(loro.ExportMode.Snapshot())
        else:
            back = hub.export(loro.ExportMode.Updates(vv_leaf))
        vv_hub = hub.oplog_vv
        leaf.import_(back)
        upd = leaf.export(loro.ExportMode.Updates(vv_hub))
        hub.import_(upd)
        self.sent[name] = leaf.oplog_vv
        self.known[name] = leaf.oplog_vv
        self.wire_bytes += sum(_framed(m) for m in (vv_leaf.encode(), back, vv_hub.encode(), upd))
        self.messages += 4

    def take_local(self, name: str) -> bytes | None:
        if name not in self.dirty:
            return None
        self.dirty.discard(name)
        doc = self.docs[name]
        blob = doc.export(loro.ExportMode.Updates(self.sent[name]))
        self.sent[name] = doc.oplog_vv
        self.wire_bytes += _framed(blob)
        self.messages += 1
        return blob

    def hub_flush(self, leaves: Sequence[str], received: dict[str, Any]) -> None:
        hub = self.docs[HUB]
        if received:
            hub.import_batch(list(received.values()))
            for name, blob in received.items():
                meta = loro.LoroDoc.decode_import_blob_meta(blob, False)
                self.known[name].merge(meta.partial_end_vv)
        self.dirty.discard(HUB)
        vv_hub = hub.oplog_vv
        for name in leaves:
            known = self.known[name]
            if known.includes_vv(vv_hub):
                continue
            blob = hub.export(loro.ExportMode.Updates(known))
            self.known[name] = hub.oplog_vv
            self.wire_bytes += _framed(blob)
            self.messages += 1
            leaf = self.docs[name]
            leaf.import_(blob)
            if name not in self.dirty:  # all it holds is at the hub: do not send it back
                self.sent[name] = leaf.oplog_vv

    def forget(self, name: str) -> None:
        del self.sent[name], self.known[name]
        self.dirty.discard(name)

    def pending(self) -> list[str]:
        return sorted(self.dirty)

    def txn(self, writer: str, ops: Sequence[Op]) -> None:
        doc = self.docs[writer]
        root = doc.get_map("meta")
        try:
            nodes = []
            for _, path, _, _ in ops:
                node = root
                for part in path:
                    got = node.get(part)
                    if not isinstance(got, loro.ValueOrContainer.Container):
                        raise KeyError(part)
                    node = got.container
                nodes.append(node)
        except KeyError:
            self.skipped += 1
            return
        for (kind, _, key, value), node in zip(ops, nodes, strict=True):
            if kind == "set":
                _loro_set(node, key, value)
            elif kind == "del":
                node.delete(key)
            else:
                _loro_push(node, value)
        doc.commit()
        self.dirty.add(writer)

    def sizes(self) -> dict[str, int]:
        return {HUB: len(self.docs[HUB].export(loro.ExportMode.Snapshot()))}

    def small_sizes(self) -> dict[str, int]:
        """The smaller of two shallow snapshots: at the hub's frontiers, and at a
        checkpoint. A shallow snapshot cuts history at a single version; with many
        concurrent heads Loro keeps history back to where they meet. A checkpoint (one op
        in a separate root map, committed on a fork of the hub so that no replica changes)
        depends on every head and gives the cut a single head."""
        hub = self.docs[HUB]
        plain = len(hub.export(loro.ExportMode.ShallowSnapshot(hub.oplog_frontiers)))
        fork = hub.fork()
        fork.get_map("checkpoint").insert("at", 1)
        fork.commit()
        marked = len(fork.export(loro.ExportMode.ShallowSnapshot(fork.oplog_frontiers)))
        return {HUB: min(plain, marked)}

    def values(self) -> dict[str, Any]:
        return {n: normalize(d.get_map("meta").get_deep_value()) for n, d in self.docs.items()}

    def extra(self) -> dict[str, Any]:
        hub = self.docs[HUB]
        shallow = hub.export(loro.ExportMode.ShallowSnapshot(hub.oplog_frontiers))
        updates = hub.export(loro.ExportMode.Updates(_EMPTY_VV))
        return {"shallow_snapshot_bytes": len(shallow), "all_updates_bytes": len(updates)}


_EMPTY_VV = loro.VersionVector() if loro is not None else None


def _loro_set(node: Any, key: str, value: Any) -> None:
    if isinstance(value, dict):
        child = node.insert_container(key, loro.LoroMap())
        for k, v in value.items():
            _loro_set(child, k, v)
    elif isinstance(value, list):
        child = node.insert_container(key, loro.LoroList())
        for v in value:
            _loro_push(child, v)
    else:
        node.insert(key, value)


def _loro_push(node: Any, value: Any) -> None:
    if isinstance(value, dict):
        child = node.insert_container(len(node), loro.LoroMap())
        for k, v in value.items():
            _loro_set(child, k, v)
    elif isinstance(value, list):
        child = node.insert_container(len(node), loro.LoroList())
        for v in value:
            _loro_push(child, v)
    else:
        node.push(value)


# --------------------------------------------------------------------------- running


@dataclass
class Result:
    engine: str
    wire_bytes: int = 0
    messages: int = 0
    state_max: int = 0
    state_max_hub: int = 0
    state_final: int = 0
    #: the smallest honest encoding (Loro: shallow snapshot; the others: as above)
    small_max: int = 0
    small_final: int = 0
    live_max: int = 0
    live_final: int = 0
    max_ratio: float = 0.0
    max_excess: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    settle_ticks: int = 0
    converged: bool = False
    #: False: stopped when its CPU time passed the budget (numbers up to that tick).
    finished: bool = True
    ticks_done: int = 0
    replicas_at_end: int = 0
    skipped_txns: int = 0
    samples: list[tuple[int, int, int]] = field(default_factory=list)  # tick, state, live
    extra: dict[str, Any] = field(default_factory=dict)


class Runner:
    """Replays a workload on one engine, a block of ticks at a time (so that the engines
    can take turns); stops (did not finish) once the engine's CPU time passes the
    budget."""

    def __init__(self, engine: Engine, w: Workload, budget_s: float) -> None:
        self.engine, self.w, self.budget_s = engine, w, budget_s
        self.res = Result(engine.name)
        self.cpu = self.wall = 0.0
        self.label = f"{w.name}/{engine.name}"
        self.next_tick = 0
        self.stopped = False

    def timed(self, fn: Callable[[], Any]) -> Any:
        """The engine's own work: CPU and wall time, and one instruction-count region."""
        c, t = time.process_time(), time.perf_counter()
        out = REGIONS.run(self.label, fn)
        self.cpu += time.process_time() - c
        self.wall += time.perf_counter() - t
        return out

    def sample(self, tick: int) -> None:
        engine, res = self.engine, self.res
        sizes = engine.sizes()
        live = live_bytes(_hub_value(engine))
        top = max(sizes.values())
        res.state_max = max(res.state_max, top)
        res.small_max = max(res.small_max, max(engine.small_sizes().values()))
        res.state_max_hub = max(res.state_max_hub, sizes[HUB])
        res.live_max = max(res.live_max, live)
        if live:
            res.max_ratio = max(res.max_ratio, top / live)
        res.samples.append((tick, top, live))

    def start(self) -> None:
        engine, w = self.engine, self.w

        def start() -> None:
            for name in w.initial:
                engine.join(name)
            engine.txn(HUB, w.setup)

        self.timed(start)

    def steps(self, n: int) -> None:
        """Run up to ``n`` more ticks."""
        engine, w = self.engine, self.w
        while n > 0 and not self.stopped and self.next_tick < len(w.ticks):
            i = self.next_tick
            tick = w.ticks[i]

            def step(tick: Tick = tick) -> None:
                for name in tick.joins:
                    engine.join(name)
                for name in tick.leaves:
                    engine.leave(name)
                for writer, ops in tick.txns:
                    engine.txn(writer, ops)
                engine.tick()

            self.timed(step)
            self.next_tick = self.res.ticks_done = i + 1
            n -= 1
            if i % w.sample_every == 0:
                self.sample(i + 1)
            if self.cpu > self.budget_s:
                self.stopped = True

    @property
    def done(self) -> bool:
        return self.stopped or self.next_tick >= len(self.w.ticks)

    def finish(self) -> Result:
        engine, res = self.engine, self.res
        res.finished = res.ticks_done == len(self.w.ticks)
        if res.finished:
            # Settle: tick until quiet; only the ticks are timed, not the quiet check.
            while not engine.quiet():
                if res.settle_ticks >= 5000:
                    raise RuntimeError(f"{engine.name} did not settle")
                self.timed(engine.tick)
                res.settle_ticks += 1
        if isinstance(engine, Hybrid):
            engine.finish()
        self.sample(res.ticks_done + res.settle_ticks)
        sizes = engine.sizes()
        values = engine.values()
        res.state_final = max(sizes.values())
        res.small_final = max(engine.small_sizes().values())
        res.live_final = live_bytes(values[HUB])
        first = values[HUB]
        res.converged = res.finished and all(v == first for v in values.values())
        res.replicas_at_end = len(values)
        res.wire_bytes, res.messages = engine.wire_bytes, engine.messages
        res.cpu_s, res.wall_s = self.cpu, self.wall
        res.skipped_txns = engine.skipped
        res.max_excess = max(s - (2 * live + 4096) for _, s, live in res.samples)
        res.extra = engine.extra()
        return res


def run_all(engines: Sequence[Engine], w: Workload, budget_s: float) -> list[Result]:
    """Replay ``w`` on every engine, taking turns in blocks of ``BLOCK_TICKS`` ticks (the
    order rotating from block to block) so that they share the machine's noise."""
    runners = [Runner(e, w, budget_s) for e in engines]
    gc.collect()
    for r in runners:
        r.start()
    block = 0
    while not all(r.done for r in runners):
        k = block % len(runners)
        for r in runners[k:] + runners[:k]:
            r.steps(BLOCK_TICKS)
        block += 1
    return [r.finish() for r in runners]


def _hub_value(engine: Engine) -> Any:
    if isinstance(engine, Hybrid):
        return engine.present[HUB].meta.to_py()
    if isinstance(engine, Pycrdt):
        return engine.docs[HUB].get("meta", type=Map).to_py()
    return engine.docs[HUB].get_map("meta").get_deep_value()


# --------------------------------------------------------------------------- report


def environment(argv: Sequence[str]) -> dict[str, Any]:
    cpu = cpu_model()
    versions = {p: metadata.version(p) for p in ("hybridsync", "pycrdt")}
    versions["loro"] = metadata.version("loro") if loro is not None else "not installed"
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", "benches/bench_meta.py", *argv]),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
    }


def _ratio(a: float, b: float) -> str:
    if b == 0:
        return "—" if a == 0 else "∞"
    r = a / b
    return f"{r:.2f}x" if r >= 0.01 else f"{r:.4f}x"


def _winner(
    label: str, results: Sequence[Result], key: Callable[[Result], float], unit: str
) -> str:
    ranked = sorted(results, key=key)
    best, second = ranked[0], ranked[1]
    margin = key(second) / key(best) if key(best) else math.inf
    order = " < ".join(f"{r.engine} {key(r):,.{0 if unit == 'B' else 2}f}" for r in ranked)
    return (
        f"- **{label}**: {best.engine} wins ({margin:.2f}x ahead of {second.engine}); "
        f"{order} {unit}"
    )


def _txns_done(w: Workload, r: Result) -> int:
    return sum(len(t.txns) for t in w.ticks[: r.ticks_done]) + 1  # + the setup


def render_workload(w: Workload, results: Sequence[Result], budget_s: float) -> list[str]:
    hs = next(r for r in results if r.engine == "hybridsync")
    hs_txns = _txns_done(w, hs)
    out = [
        f"## {w.title}",
        "",
        w.description,
        f"Transactions: {w.txn_count:,} ({w.op_count:,} writes), ticks: {len(w.ticks):,}, "
        f"replicas over the run: {w.replica_count}.",
        "",
        "| engine | wire bytes | B / txn | messages | state max (B) | state final (B) | "
        "smallest state max / final (B) | live final (B) | max state / live | CPU s | "
        "CPU µs / txn | settle ticks | replicas at end | converged | hybridsync / this: "
        "wire | smallest state max | CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        txns = _txns_done(w, r)
        if r is hs:
            ratios = " | — | — | — |"
        elif r.finished:
            ratios = (
                f" | {_ratio(hs.wire_bytes, r.wire_bytes)} | "
                f"{_ratio(hs.small_max, r.small_max)} | {_ratio(hs.cpu_s, r.cpu_s)} |"
            )
        else:  # per transaction, over the part it finished
            ratios = (
                f" | {_ratio(hs.wire_bytes / hs_txns, r.wire_bytes / txns)} † | — | "
                f"{_ratio(hs.cpu_s / hs_txns, r.cpu_s / txns)} † |"
            )
        status = (
            ("✓" if r.converged else "✗")
            if r.finished
            else f"DNF: stopped at tick {r.ticks_done:,} of {len(w.ticks):,}"
        )
        out.append(
            f"| {r.engine} | {r.wire_bytes:,} | {r.wire_bytes / txns:,.1f} | "
            f"{r.messages:,} | {r.state_max:,} | {r.state_final:,} | "
            f"{r.small_max:,} / {r.small_final:,} | {r.live_final:,} | "
            f"{r.max_ratio:,.2f} | {r.cpu_s:.2f} | {r.cpu_s / txns * 1e6:,.1f} | "
            f"{r.settle_ticks} | {r.replicas_at_end} | {status}" + ratios
        )
    out.append("")
    dnf = [r for r in results if not r.finished]
    if dnf:
        out.append(
            "DNF = did not finish: "
            + ", ".join(r.engine for r in dnf)
            + f" passed the CPU budget of {budget_s:.0f} s and stopped; its numbers cover "
            "the ticks it ran (so its state and wire totals are not comparable), † ratios "
            "are per transaction over those ticks."
        )
    ex = hs.extra
    out.append(
        f"hybridsync: {ex['epochs']:,} epochs; the hub's state at its compaction pass "
        f"peaked at {ex['hub_max_encoded_at_compaction']:,} B (inside a tick, after "
        f"integrating the tick's requests; the sampled maximum is taken between ticks); "
        f"{ex['crossings']:,} epoch crossings; {ex['rebased_writes']:,} writes re-applied "
        f"on a new epoch; state - (2 x live + 4 KB) at most {hs.max_excess:+,} B "
        f"(sampled every {w.sample_every} ticks). Its metadata bytes by part, before frame "
        "compression: "
        + ", ".join(f"{k} {v:,}" for k, v in ex["meta_bytes_by_part"].items())
        + f" (the wire total, after compression, is {hs.wire_bytes:,})."
    )
    lo = next((r for r in results if r.engine == "loro"), None)
    if lo is not None:
        out.append(
            f"Loro: a shallow snapshot of the {'final' if lo.finished else 'last'} hub "
            f"(`ExportMode.ShallowSnapshot(oplog_frontiers)`) is "
            f"{lo.extra['shallow_snapshot_bytes']:,} B; all updates "
            f"(`ExportMode.Updates(VersionVector())`) {lo.extra['all_updates_bytes']:,} B."
        )
    if any(r.skipped_txns for r in results):
        out.append(
            "Skipped transactions (the writer's replica lacked the container): "
            + ", ".join(f"{r.engine} {r.skipped_txns}" for r in results)
        )
    done = [r for r in results if r.finished]
    out += ["", "Who wins" + (" (among the engines that finished):" if dnf else ":"), ""]
    if len(done) >= 2:
        out += [
            _winner("wire bytes", done, lambda r: r.wire_bytes, "B"),
            _winner("state size (max)", done, lambda r: r.state_max, "B"),
            _winner("smallest state size (max)", done, lambda r: r.small_max, "B"),
            _winner("state size (final)", done, lambda r: r.state_final, "B"),
            _winner("smallest state size (final)", done, lambda r: r.small_final, "B"),
            _winner("CPU", done, lambda r: r.cpu_s, "s"),
        ]
    for r in dnf:
        out.append(
            f"- **{r.engine}** did not finish: {r.cpu_s / _txns_done(w, r) * 1e6:,.0f} µs "
            f"of CPU per transaction over the first {r.ticks_done:,} ticks "
            f"(hybridsync: {hs.cpu_s / hs_txns * 1e6:,.0f} µs over the whole run)."
        )
    out.append("")
    return out


def render(env: dict[str, Any], data: dict[str, Any]) -> str:
    v = env["versions"]
    out = [
        "# Structured metadata: hybridsync vs pycrdt vs Loro",
        "",
        f"- {env['date_utc']}; Python {env['python']}, {env['platform']}; CPU: {env['cpu']} "
        f"({env['cpu_count']} logical CPUs, load average "
        f"{' / '.join(str(x) for x in env['loadavg_at_start'])} at start)",
        f"- hybridsync {v['hybridsync']}, pycrdt {v['pycrdt']}, loro {v['loro']}; mode: "
        f"{data['mode']}; hybridsync frame loss {data['loss']:.0%}; command: "
        f"`{env['command']}`",
        "- engines: **hybridsync** = `memory.meta` over `Link` pairs driven by "
        "`hybridsync.sim` (compaction `max_ratio=1.5, slack_bytes=2048, max_clients=64`; "
        "clients poll every tick, one tick of delay each way; every frame counted, polls "
        "and acknowledgements included); **pycrdt** = one `Doc` per replica, y-protocols as "
        "pycrdt-websocket runs it: a joiner's STEP1/STEP2 handshake, then per tick ONE "
        "SYNC_UPDATE per leaf (`merge_updates` of its transactions since the last tick) and "
        "ONE per leaf from the hub (the merged updates of everyone else), nothing when "
        "nothing changed; **loro** = one `LoroDoc` per replica (one commit per transaction), "
        "a joiner's version-vector handshake (a snapshot for the empty joiner), then per "
        "tick ONE `export(Updates(vv last sent))` per leaf, `import_batch` at the hub, and "
        "ONE `export(Updates(vv))` per leaf from the hub. Engines take turns in blocks of "
        f"{BLOCK_TICKS} ticks.",
        "- state = encoded state of a replica (hybridsync: every replica present, "
        "`len(get_update())` of its current epoch; pycrdt: the hub's `len(get_update())`, "
        "GC on (the default); loro: the hub's `len(export(Snapshot()))`), sampled between "
        "ticks; smallest state = the smallest honest encoding (loro: "
        "`export(ShallowSnapshot(...))` at the hub's frontiers or at a checkpoint commit "
        "on a fork of the hub, whichever is smaller; the others: the state). live = compact "
        "JSON of the hub's value. CPU = `process_time` of the engine's own work (joins, "
        "writes, ticks, settling; size sampling, checks and frame accounting excluded), "
        "single process. Ratios are **hybridsync / other**: below 1.0 means hybridsync is "
        "smaller or cheaper.",
        "",
    ]
    if loro is None:
        out += ["**loro is not installed: only the pycrdt comparison ran.**", ""]
    for w in data["workloads"]:
        out += w["markdown"]
    if data.get("instructions"):
        out += render_instructions(data["instructions"])
    return "\n".join(out) + "\n"


def workloads_for(size: str, args: argparse.Namespace) -> list[Workload]:
    if size == "quick":
        return [storm(20_000, 50, 20, 5, 100), board(50, 120)]
    if size == "instr":
        return [storm(args.instr_writes, 50, 20, 5, 100), board(50, args.instr_ticks)]
    return [storm(50_000, 50, 20, 5, 100), board(50, 400)]


def count_instructions(args: argparse.Namespace) -> dict[str, Any]:
    """Run this script on the reduced size under callgrind (see the top)."""
    with tempfile.TemporaryDirectory(prefix="bench-meta-cg-") as tmp:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--size",
            "instr",
            "--instr-writes",
            str(args.instr_writes),
            "--instr-ticks",
            str(args.instr_ticks),
            "--loss",
            str(args.loss),
            "--budget-s",
            "1e9",
            "--out",
            str(Path(tmp) / "out"),
        ]
        print(
            f"instruction counts: {' '.join(cmd[2:])} under callgrind ...",
            file=sys.stderr,
            flush=True,
        )
        t0 = time.perf_counter()
        regions = callgrind_regions(cmd, Path(tmp) / "cg")
        print(f"    done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        out = json.loads((Path(tmp) / "out" / "meta.json").read_text())
    workloads = []
    for w in out["workloads"]:
        txns = w["txns"] + 1  # + the setup
        per = {
            r["engine"]: regions[f"{w['name']}/{r['engine']}"]["instructions"] for r in w["results"]
        }
        workloads.append(
            {
                "name": w["name"],
                "title": w["title"],
                "txns": txns,
                "ticks": w["ticks"],
                "converged": all(r["converged"] for r in w["results"]),
                "instructions": per,
                "per_txn": {e: n / txns for e, n in per.items()},
            }
        )
    return {"workloads": workloads, "calibration": regions["calibration/empty"]}


def render_instructions(instr: dict[str, Any]) -> list[str]:
    cal = instr["calibration"]
    out = [
        "## Instruction counts (callgrind, reduced workloads)",
        "",
        "Every engine's timed work (joins, writes, ticks, settling; the same regions as the "
        "CPU columns) counted by `valgrind --tool=callgrind` with collection on only inside "
        "those regions (see the script's docstring); the ctypes round trip around each "
        f"region ({cal['instructions']:,} instructions, median of {cal['calls']} empty "
        "regions) is subtracted. Not affected by the machine's load.",
        "",
        "| workload | engine | instructions | per transaction | hybridsync / this | converged |",
        "|---|---|---|---|---|---|",
    ]
    for w in instr["workloads"]:
        hs = w["instructions"]["hybridsync"]
        for e, n in w["instructions"].items():
            out.append(
                f"| {w['title']} ({w['txns']:,} txns incl. setup) | {e} | {n:,} | "
                f"{w['per_txn'][e]:,.0f} | {'—' if e == 'hybridsync' else _ratio(hs, n)} | "
                f"{'✓' if w['converged'] else '✗'} |"
            )
    out.append("")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller workloads (a smoke run)")
    ap.add_argument(
        "--size",
        choices=("full", "quick", "instr"),
        help="workload size (default full; --quick means quick; instr: the callgrind size)",
    )
    ap.add_argument("--loss", type=float, default=0.0, help="hybridsync frame loss (0..1)")
    ap.add_argument("--out", default="benches/results", help="output folder")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="CPU seconds an engine may spend on one workload before it is stopped "
        "(default 300, 60 with --quick)",
    )
    ap.add_argument(
        "--instructions",
        action="store_true",
        help="also count the timed regions' instructions under callgrind on reduced workloads",
    )
    ap.add_argument(
        "--instr-writes",
        type=int,
        default=INSTR_STORM_WRITES,
        help=f"storm overwrites at the instr size (default {INSTR_STORM_WRITES})",
    )
    ap.add_argument(
        "--instr-ticks",
        type=int,
        default=INSTR_BOARD_TICKS,
        help=f"board ticks at the instr size (default {INSTR_BOARD_TICKS})",
    )
    args = ap.parse_args(argv)
    env = environment(argv)
    size = args.size or ("quick" if args.quick else "full")
    budget = args.budget_s if args.budget_s is not None else (60.0 if size == "quick" else 300.0)
    workloads = workloads_for(size, args)
    # The instruction counts run in a second process (under callgrind) while this one
    # times the engines: on a shared machine that is only more of the noise the engines
    # share, and it halves the wall time.
    instr_box: dict[str, Any] = {}
    worker = None
    if args.instructions:

        def count() -> None:
            try:
                instr_box["result"] = count_instructions(args)
            except BaseException as e:  # re-raised in the main thread
                instr_box["error"] = e

        worker = threading.Thread(target=count)
        worker.start()
    data: dict[str, Any] = {
        "environment": env,
        "mode": size,
        "loss": args.loss,
        "budget_s": budget,
        "workloads": [],
    }
    for w in workloads:
        engines: list[Engine] = [Hybrid(w, args.loss), Pycrdt(w)]
        if loro is not None:
            engines.append(Loro(w))
        print(f"{w.name}: {', '.join(e.name for e in engines)} ...", file=sys.stderr, flush=True)
        results = run_all(engines, w, budget)
        for r in results:
            print(
                f"  {r.engine}: wire {r.wire_bytes:,} B, state max {r.state_max:,} B final "
                f"{r.state_final:,} B (smallest {r.small_final:,} B), live {r.live_final:,} B, "
                f"CPU {r.cpu_s:.2f} s, converged {r.converged}, finished {r.finished} "
                f"({r.ticks_done} ticks)",
                file=sys.stderr,
                flush=True,
            )
        data["workloads"].append(
            {
                "name": w.name,
                "title": w.title,
                "txns": w.txn_count,
                "ops": w.op_count,
                "ticks": len(w.ticks),
                "replicas": w.replica_count,
                "results": [r.__dict__ for r in results],
                "markdown": render_workload(w, results, budget),
            }
        )
    REGIONS.save()
    if worker is not None:
        worker.join()
        if "error" in instr_box:
            raise instr_box["error"]
    data["instructions"] = instr_box.get("result")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.md").write_text(render(env, data))
    for w in data["workloads"]:
        del w["markdown"]
    (out / "meta.json").write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {out / 'meta.md'} and {out / 'meta.json'}", file=sys.stderr)
    finished = [r for w in data["workloads"] for r in w["results"] if r["finished"]]
    ok = all(r["converged"] for r in finished)
    if data["instructions"] is not None:
        ok = ok and all(w["converged"] for w in data["instructions"]["workloads"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
