"""The workloads of ``hybridsync bench``: seeded scripts of local transactions.

A :class:`Workload` names its replicas (``replicas[0]`` is the hub of the
star) and lists transactions ``(tick, replica, ops)``. How ``tick`` is read
depends on :attr:`Workload.mode`:

- ``"timed"``: ``tick`` is a network tick. The runner applies, before tick
  ``t``, every transaction stamped ``t`` (in list order), then runs the tick:
  agents write without waiting for each other (concurrent).
- ``"turns"``: ``tick`` is a turn number. The runner applies every transaction
  of turn ``t`` and then ticks the network until the engine reports
  convergence before it starts turn ``t + 1``. Runs are sequential: each
  agent continues from the state the previous agent left, so the final
  content is known in advance (``expected_text``) and must be the same for
  every engine.

Workloads are pure functions of their parameters and seed. Text workloads
replay an editing trace (positions and lengths in code points, exactly as
:class:`~hybridsync.bench.core.TextEdit` takes them).
"""

from __future__ import annotations

import functools
import json
import lzma
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hybridsync.bench.core import (
    KVAppend,
    KVTruncate,
    MetaAppend,
    MetaDelete,
    MetaSet,
    Op,
    TextEdit,
    TextReplace,
)

__all__ = [
    "KV_FULL",
    "KV_QUICK",
    "Workload",
    "board",
    "build",
    "kv_growth",
    "revisions",
    "storm",
    "text_concurrent",
    "text_revisions",
    "text_turns",
    "workload_names",
]

#: One transaction: (tick or turn, replica, operations).
Txn = tuple[int, str, list[Op]]
Mode = Literal["timed", "turns"]

#: The text document every text workload edits.
TEXT_DOC = "doc"


@dataclass(frozen=True)
class Workload:
    """A seeded script of transactions for a star of replicas.

    Attributes:
        name: a short identifier (``text-seq-4``, ``meta-storm``, ...).
        family: ``"text"``, ``"meta"`` or ``"kv"``.
        replicas: replica names; ``replicas[0]`` is the hub.
        txns: ``(tick, replica, ops)`` in application order (ticks ascending).
        description: what the workload does, in one paragraph.
        mode: ``"timed"`` (concurrent) or ``"turns"`` (sequential); see the module.
        expected_text: for sequential text runs, every document's final text.
        deterministic: the final content does not depend on the engine or the
            network (sequential runs, single-writer KV caches): every engine
            must end with the same content (the runner's cross-engine check).
        sample_every: ticks between two samples of the state size.
        tick_cap: the most ticks a run may take (timed: in all; turns: per
            turn) before the cell is reported as did-not-finish.
    """

    name: str
    family: str
    replicas: list[str]
    txns: list[Txn]
    description: str
    mode: Mode = "timed"
    expected_text: dict[str, str] | None = None
    deterministic: bool = False
    sample_every: int = 1
    tick_cap: int = 5000
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def last_tick(self) -> int:
        """The tick (or turn) of the last transaction (-1 when there is none)."""
        return self.txns[-1][0] if self.txns else -1

    @property
    def text_docs(self) -> list[str]:
        """The text documents the workload edits."""
        return sorted(
            {
                op.doc
                for _, _, ops in self.txns
                for op in ops
                if isinstance(op, (TextEdit, TextReplace))
            }
        )

    @property
    def kv_caches(self) -> list[str]:
        """The KV caches the workload writes."""
        return sorted(
            {
                op.cache
                for _, _, ops in self.txns
                for op in ops
                if isinstance(op, (KVAppend, KVTruncate))
            }
        )


def _agents(n: int) -> list[str]:
    return [f"a{i}" for i in range(1, n + 1)]


def _trace_txns(
    trace_name: str, quick: bool, limit: int | None = None
) -> tuple[list[list[Op]], str, str]:
    """The trace's transactions as TextEdit lists, with its start and end text
    (``quick``: the first 300 transactions; else the first ``limit``, all by
    default)."""
    from hybridsync.traces import load_trace

    trace = load_trace(trace_name)
    count = min(300 if quick else (limit or len(trace.txns)), len(trace.txns))
    txns: list[list[Op]] = [
        [TextEdit(TEXT_DOC, p, d, s) for p, d, s in t] for t in trace.txns[:count]
    ]
    end = trace.end if count == len(trace.txns) else trace.replay(count)
    return txns, trace.start, end


def text_turns(
    agents: int, *, every: int, trace: str = "seph-blog1", quick: bool = False
) -> Workload:
    """An editing trace replayed by ``agents`` agents taking turns.

    Replicas: the hub (a relay that never edits) and agents ``a1..aN``.
    Agent ``a{i}`` replays transactions ``[j*k, (j+1)*k)`` for every chunk
    ``j`` with ``j % N == i - 1`` (``k = every``), each trace transaction
    being one bench transaction; after each chunk (a turn) the network runs
    until converged, so the next agent starts from the text everyone holds.
    The final text must equal the trace's end (the ``quick`` prefix's end).
    """
    txns, start, end = _trace_txns(trace, quick)
    names = _agents(agents)
    script: list[Txn] = []
    if start:
        script.append((0, names[0], [TextEdit(TEXT_DOC, 0, 0, start)]))
    for i, ops in enumerate(txns):
        chunk = i // every
        script.append((chunk + (1 if start else 0), names[chunk % agents], ops))
    turns = -(-len(txns) // every)
    return Workload(
        name=f"text-seq-{agents}",
        family="text",
        replicas=["hub", *names],
        txns=script,
        description=(
            f"{trace}{' (first 300 transactions)' if quick else ''}: {len(txns):,} "
            f"transactions replayed by {agents} agents in turns of {every} transactions "
            f"({turns:,} turns); after each turn the network runs until converged (sequential)."
        ),
        mode="turns",
        expected_text={TEXT_DOC: end},
        deterministic=True,
        sample_every=max(1, turns // 100),
        tick_cap=2000,
        params={"trace": trace, "agents": agents, "every": every, "txns": len(txns)},
    )


#: Versions per document of the revision workloads with ``quick``.
REVISIONS_QUICK = 6


def revisions_dir() -> Path:
    """Where the revision histories are: ``HYBRIDSYNC_REVISIONS``, else
    ``../shared/data/revisions``."""
    return Path(os.environ.get("HYBRIDSYNC_REVISIONS", "../shared/data/revisions"))


@functools.lru_cache(maxsize=4)
def revisions(limit: int | None = None) -> dict[str, list[tuple[str, str]]]:
    """Every document of the revision histories: name -> ``[(date, text), ...]``
    oldest first (each ``*.json.xz`` file holds every committed version of one
    document; the first ``limit`` versions of each with ``limit``)."""
    folder = revisions_dir()
    files = sorted(folder.glob("*.json.xz"))
    if not files:
        raise FileNotFoundError(
            f"no revision histories (*.json.xz) in {folder}; set HYBRIDSYNC_REVISIONS to the "
            "folder holding them"
        )
    out: dict[str, list[tuple[str, str]]] = {}
    for path in files:
        with lzma.open(path, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
        versions = [(v["date"], v["text"]) for v in data["versions"]]
        out[path.name.removesuffix(".json.xz")] = versions[:limit] if limit else versions
    return out


def text_revisions(agents: int, *, quick: bool = False) -> Workload:
    """Documents rewritten whole, version after version, by ``agents`` agents.

    Replays every committed version of the documents in :func:`revisions_dir`
    (four PEPs: the shape of an agent that regenerates a plan or a note as a
    whole). The versions of all documents are merged by commit date; turn
    ``i`` is agent ``a{i % N + 1}`` replacing its document by the next
    version (:class:`~hybridsync.bench.core.TextReplace`); after each turn
    the network runs until converged (sequential), so each document must end
    equal to its last version. ``quick``: the first
    :data:`REVISIONS_QUICK` versions of each document.
    """
    docs = revisions(REVISIONS_QUICK if quick else None)
    order = sorted(
        (date, name, i) for name, versions in docs.items() for i, (date, _) in enumerate(versions)
    )
    names = _agents(agents)
    script: list[Txn] = [
        (turn, names[turn % agents], [TextReplace(name, docs[name][i][1])])
        for turn, (_, name, i) in enumerate(order)
    ]
    chars = sum(len(text) for versions in docs.values() for _, text in versions)
    return Workload(
        name=f"text-rev-{agents}",
        family="text",
        replicas=["hub", *names],
        txns=script,
        description=(
            f"{len(docs)} documents ({', '.join(docs)}) rewritten whole, {len(order)} versions "
            f"({chars / 1e6:.1f} M code points written) by {agents} agents in turns, oldest "
            "commit first; after each turn the network runs until converged (sequential)."
        ),
        mode="turns",
        expected_text={name: versions[-1][1] for name, versions in docs.items()},
        deterministic=True,
        sample_every=max(1, len(order) // 100),
        tick_cap=500,
        params={"agents": agents, "versions": len(order), "documents": len(docs)},
    )


#: Trace transactions of the concurrent text workload (full runs).
CONCURRENT_TXNS = 20_000


def text_concurrent(
    agents: int, *, every: int, trace: str = "seph-blog1", quick: bool = False
) -> Workload:
    """An editing trace replayed by ``agents`` agents concurrently.

    Chunk ``j`` of ``k = every`` trace transactions is applied by agent
    ``a{j % N + 1}`` just before tick ``j``: agents do not wait for each
    other, so edits cross in flight. Positions refer to the trace's own
    sequence of states; an engine applies them to whatever its replica holds
    (clamped to the document), so the final text is not the trace's end: the
    only check is that every replica ends equal.
    """
    # The CRDT baselines merge concurrent edits of a long document slowly
    # (minutes of CPU per cell for the whole trace): a 20,000-transaction prefix.
    txns, start, _ = _trace_txns(trace, quick, CONCURRENT_TXNS)
    names = _agents(agents)
    script: list[Txn] = []
    if start:
        script.append((0, names[0], [TextEdit(TEXT_DOC, 0, 0, start)]))
    for i, ops in enumerate(txns):
        chunk = i // every
        script.append((chunk + (1 if start else 0), names[chunk % agents], ops))
    ticks = -(-len(txns) // every)
    return Workload(
        name=f"text-conc-{agents}",
        family="text",
        replicas=["hub", *names],
        txns=script,
        description=(
            f"{trace} (its first {len(txns):,} transactions), {agents} agents each applying "
            f"a chunk of {every} in turn, one chunk per tick without waiting (concurrent; "
            "correctness: replicas equal)."
        ),
        mode="timed",
        sample_every=max(1, ticks // 100),
        tick_cap=ticks + 3000,
        params={"trace": trace, "agents": agents, "every": every, "txns": len(txns)},
    )


def storm(
    *, agents: int = 20, keys: int = 50, writes: int = 5000, per_tick: int = 10, seed: int = 0
) -> Workload:
    """An overwrite storm: ``agents`` agents overwrite ``keys`` top-level keys.

    The hub sets every key at tick 0; from tick 1 on, ``per_tick`` writes per
    tick, each one transaction setting a uniformly chosen key to a unique
    string (``"<agent>:<sequence number>"``) by a uniformly chosen agent.
    """
    rng = random.Random(seed)
    names = _agents(agents)
    key_names = [f"k{i:03d}" for i in range(keys)]
    script: list[Txn] = [(0, "hub", [MetaSet((k,), "hub:000000") for k in key_names])]
    for seq in range(1, writes + 1):
        agent = rng.choice(names)
        script.append(
            (
                1 + (seq - 1) // per_tick,
                agent,
                [MetaSet((rng.choice(key_names),), f"{agent}:{seq:06d}")],
            )
        )
    ticks = -(-writes // per_tick)
    return Workload(
        name="meta-storm",
        family="meta",
        replicas=["hub", *names],
        txns=script,
        description=(
            f"Overwrite storm: {writes:,} overwrites of {keys} keys by {agents} agents, "
            f"{per_tick} writes per tick (each a transaction; unique string values)."
        ),
        sample_every=max(1, ticks // 100),
        tick_cap=ticks + 3000,
        params={"agents": agents, "keys": keys, "writes": writes, "per_tick": per_tick},
    )


def board(*, agents: int = 20, ticks: int = 120, seed: int = 0) -> Workload:
    """A task board: ``tasks`` (a dict of task dicts) and an append-only ``log``.

    The hub creates ``tasks`` and ``log`` at tick 0, then 3 tasks per tick
    (a dict with a nested ``tags`` list; each creation also appends a log
    line) and deletes tasks 10 ticks after they were completed. An agent
    without a task claims one created at least 6 ticks earlier (probability
    0.3 per tick; 10% of the claims collide with a claim another agent made
    that very tick, and the loser drops it), then raises its progress
    (probability 0.5 per tick) until 100 and completes it (status, progress,
    a result string, a log line; one transaction). A transaction on a task
    needs the task to be visible at the agent: the runner defers it until
    it is (see ``runner``).
    """
    rng = random.Random(seed + 1)
    names = _agents(agents)
    words = ["parse", "fetch", "rank", "summarize", "verify", "embed", "plan", "review"]
    script: list[Txn] = [(0, "hub", [MetaSet(("tasks",), {}), MetaSet(("log",), [])])]
    tasks: dict[str, dict[str, Any]] = {}
    working: dict[str, str] = {}
    done_at: dict[str, int] = {}
    next_task = 0
    for t in range(1, ticks + 1):
        for _ in range(3):
            tid = f"t{next_task:05d}"
            next_task += 1
            tasks[tid] = {"created": t, "status": "open", "progress": 0}
            value = {
                "title": f"{rng.choice(words)} batch {next_task}",
                "status": "open",
                "owner": None,
                "progress": 0,
                "priority": rng.randint(1, 5),
                "tags": [rng.choice(words), rng.choice(words)],
            }
            script.append(
                (
                    t,
                    "hub",
                    [
                        MetaSet(("tasks", tid), value),
                        MetaAppend(("log",), f"{t:05d} hub created {tid}"),
                    ],
                )
            )
        for tid in [tid for tid, at in done_at.items() if at <= t - 10]:
            del done_at[tid]
            del tasks[tid]
            script.append(
                (
                    t,
                    "hub",
                    [MetaDelete(("tasks", tid)), MetaAppend(("log",), f"{t:05d} archived {tid}")],
                )
            )
        claimable = [
            tid for tid, s in tasks.items() if s["status"] == "open" and s["created"] <= t - 6
        ]
        rng.shuffle(claimable)
        claimed_now: list[str] = []
        for agent in names:
            tid_or_none = working.get(agent)
            if tid_or_none is None:
                if rng.random() >= 0.3 or not (claimable or claimed_now):
                    continue
                if claimed_now and rng.random() < 0.1:
                    tid = rng.choice(claimed_now)  # a colliding claim; this agent gives up
                elif claimable:
                    tid = claimable.pop()
                    tasks[tid]["status"] = "claimed"
                    working[agent] = tid
                    claimed_now.append(tid)
                else:
                    continue
                script.append(
                    (
                        t,
                        agent,
                        [
                            MetaSet(("tasks", tid, "status"), "claimed"),
                            MetaSet(("tasks", tid, "owner"), agent),
                            MetaAppend(("log",), f"{t:05d} {agent} claimed {tid}"),
                        ],
                    )
                )
            elif tid_or_none not in claimed_now and rng.random() < 0.5:
                tid = tid_or_none
                task = tasks[tid]
                task["progress"] = min(100, task["progress"] + rng.randint(10, 40))
                if task["progress"] < 100:
                    script.append(
                        (t, agent, [MetaSet(("tasks", tid, "progress"), task["progress"])])
                    )
                    continue
                task["status"] = "done"
                done_at[tid] = t
                del working[agent]
                script.append(
                    (
                        t,
                        agent,
                        [
                            MetaSet(("tasks", tid, "progress"), 100),
                            MetaSet(("tasks", tid, "status"), "done"),
                            MetaSet(("tasks", tid, "result"), f"ok:{rng.getrandbits(64):016x}"),
                            MetaAppend(("log",), f"{t:05d} {agent} finished {tid}"),
                        ],
                    )
                )
    return Workload(
        name="meta-board",
        family="meta",
        replicas=["hub", *names],
        txns=script,
        description=(
            f"Task board: {agents} agents and the hub for {ticks} ticks; the hub creates 3 "
            "tasks per tick (nested dict with a list) and archives done tasks after 10 ticks; "
            "agents claim (10% colliding), progress and complete tasks; every change is one "
            "transaction and most append a line to an append-only log."
        ),
        sample_every=max(1, ticks // 100),
        tick_cap=ticks + 3000,
        params={"agents": agents, "ticks": ticks},
    )


#: Cache geometry (layers, kv_heads, head_dim) and steps of the full KV workload.
KV_FULL = {"layers": 4, "kv_heads": 4, "head_dim": 128, "steps": 8, "agents": 4}
#: The same for ``--quick``.
KV_QUICK = {"layers": 2, "kv_heads": 2, "head_dim": 64, "steps": 3, "agents": 3}


def kv_growth(
    *,
    agents: int = 4,
    steps: int = 8,
    layers: int = 8,
    kv_heads: int = 8,
    head_dim: int = 128,
    gap: int = 4,
    seed: int = 0,
) -> Workload:
    """Agents growing their own 4-bit (GGML Q4_0) caches page by page.

    Agent ``a{i}`` owns cache ``kv-a{i}`` and appends 256 tokens (one page)
    every ``gap`` ticks, ``steps`` times; agents are staggered by one tick.
    At step ``steps // 2`` one seeded agent truncates its cache to 100 tokens
    short of its length (in the middle of a page: the page changes and the
    next pages are dropped) before appending again. The final content is
    fixed by ``kv_rows``: every engine must hold the same bytes.
    """
    rng = random.Random(seed + 2)
    names = _agents(agents)
    truncator = rng.choice(names)
    tokens = dict.fromkeys(names, 0)
    script: list[Txn] = []
    for step in range(steps):
        for i, agent in enumerate(names):
            ops: list[Op] = []
            cache = f"kv-{agent}"
            if step == steps // 2 and agent == truncator and tokens[agent] > 100:
                tokens[agent] -= 100
                ops.append(KVTruncate(cache, tokens[agent]))
            ops.append(KVAppend(cache, 256, layers, kv_heads, head_dim))
            tokens[agent] += 256
            script.append((step * gap + i, agent, ops))
    row = head_dim // 32 * 18
    per_step = layers * 2 * kv_heads * 256 * row
    return Workload(
        name="kv-grow",
        family="kv",
        replicas=["hub", *names],
        txns=sorted(script, key=lambda txn: txn[0]),
        description=(
            f"{agents} agents each grow a q4_0 cache ({layers} layers x {kv_heads} KV heads x "
            f"{head_dim}, 256-token pages) by one page of tokens every {gap} ticks, {steps} "
            f"times ({per_step / 1e6:.2f} MB per step); {truncator} truncates its cache by 100 "
            f"tokens mid-run. Each replica ends holding every cache."
        ),
        deterministic=True,
        sample_every=1,
        tick_cap=steps * gap + 3000,
        params={
            "agents": agents,
            "steps": steps,
            "layers": layers,
            "kv_heads": kv_heads,
            "head_dim": head_dim,
        },
    )


def _registry(quick: bool, seed: int, every: int | None) -> dict[str, Callable[[], Workload]]:
    k = every if every is not None else (50 if quick else 1000)
    agent_counts = (2, 4) if quick else (2, 4, 8)
    out: dict[str, Callable[[], Workload]] = {}
    for n in agent_counts:
        out[f"text-seq-{n}"] = functools.partial(text_turns, n, every=k, quick=quick)
    out["text-conc-4"] = functools.partial(text_concurrent, 4, every=k, quick=quick)
    for n in agent_counts:
        out[f"text-rev-{n}"] = functools.partial(text_revisions, n, quick=quick)
    if quick:
        out["meta-storm"] = lambda: storm(agents=6, keys=10, writes=300, per_tick=5, seed=seed)
        out["meta-board"] = lambda: board(agents=6, ticks=30, seed=seed)
        out["kv-grow"] = lambda: kv_growth(**_kv_args(KV_QUICK), gap=3, seed=seed)
    else:
        out["meta-storm"] = lambda: storm(seed=seed)
        out["meta-board"] = lambda: board(seed=seed)
        out["kv-grow"] = lambda: kv_growth(**_kv_args(KV_FULL), seed=seed)
    return out


def _kv_args(spec: dict[str, int]) -> dict[str, int]:
    return dict(spec)


def workload_names(families: list[str], *, quick: bool, seed: int = 0) -> list[str]:
    """The workloads of the families ``text``, ``meta``, ``kv`` (in that order)."""
    names = list(_registry(quick, seed, None))
    return [n for f in ("text", "meta", "kv") if f in families for n in names if n.startswith(f)]


def build(name: str, *, quick: bool, seed: int = 0, every: int | None = None) -> Workload:
    """Build workload ``name`` (see :func:`workload_names`); ``every`` overrides
    the text workloads' chunk size (default 1000 transactions, 50 with ``quick``)."""
    registry = _registry(quick, seed, every)
    if name not in registry:
        raise KeyError(f"unknown workload {name!r}; known: {', '.join(registry)}")
    return registry[name]()
