"""Run bench cells: one workload through one engine at one loss rate.

Every cell runs in a fresh interpreter (``python -m hybridsync.bench.runner
--cell JSON``, which prints the result as one JSON line), so its peak memory
is its own. What a cell measures:

- ``wire_bytes``, ``messages``: the engine's counters after the run: every
  message a replica sent (retransmissions, polls and acknowledgements
  included, before loss).
- ``cpu_s``: :func:`time.process_time` spent building the engine (replicas,
  links, the CRDTs' connection handshake) and inside :meth:`Engine.apply` and
  :meth:`Engine.tick` only (not in :meth:`Engine.prepare`, convergence checks,
  state sampling or the correctness checks, which are the bench's work, not the
  protocol's); ``instructions``: the same region counted (see
  :mod:`hybridsync.bench.instructions`).
- ``rss_peak_bytes``: ``getrusage(RUSAGE_SELF).ru_maxrss`` at the end of the
  run; ``rss_baseline_bytes``: the same measured just before the engine is
  built, with the interpreter, the libraries and the workload script loaded
  and, on Linux, the high-water mark first reset to the current RSS
  (``/proc/self/clear_refs``; ``rss_reset`` says whether that worked: loading
  an editing trace peaks higher than the run itself);
  ``rss_delta_bytes``: their difference, the run's own high-water mark.
- ``state``: ``(tick, Engine.state_bytes())`` samples every
  ``Workload.sample_every`` ticks (timed workloads) or turns (sequential
  ones), and at the end; ``state_max_bytes`` and ``state_final_bytes``.
- ``ticks``: ticks run in all; ``converge_ticks``: ticks from the last
  transaction until :meth:`Engine.converged` (timed: counted from the tick
  after the last transaction was applied; sequential: the ticks of the last
  turn).
- ``correct``: every replica holds equal texts, metadata and KV digests; for
  sequential text runs each document equals the trace's end; every KV cache's
  digest equals the digest computed from :func:`~hybridsync.bench.core.kv_rows`
  directly. ``checks`` lists each check's outcome.
- ``fingerprint``: a digest of the final content (texts, metadata, KV digests
  at the hub), compared across engines for deterministic workloads.

A cell that exceeds its tick cap (``Workload.tick_cap``) or CPU budget stops
and is reported as ``dnf`` (did not finish); one that raises as ``error``.

Transactions that need a metadata container (``MetaSet`` below the top
level, ``MetaAppend``, ``MetaDelete``) are deferred, per replica and in
order, until the replica sees that container: an agent acts on what it
sees. ``deferred`` counts transaction-ticks spent waiting; a transaction
still waiting after 50 ticks is dropped and counted in ``skipped``. In timed
(concurrent) workloads, text edits are clamped to the document as the
replica holds it (position at most its length, deletion at most what
follows), since a concurrent agent's copy may be shorter than the trace
assumed; sequential workloads apply the trace's edits unchanged.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import xxhash

from hybridsync.bench import instructions as counters
from hybridsync.bench.core import (
    Engine,
    KVAppend,
    KVTruncate,
    MetaAppend,
    MetaDelete,
    MetaSet,
    Op,
    TextEdit,
    faults,
    kv_rows,
)
from hybridsync.bench.workloads import Workload, build

__all__ = [
    "CellSpec",
    "cross_engine_checks",
    "engines",
    "expected_kv_digests",
    "run_cell",
    "run_cells",
]

#: Ticks a transaction may wait for its metadata container before it is dropped.
MAX_DEFER_TICKS = 50


@dataclass(frozen=True)
class CellSpec:
    """One cell: workload x engine x loss (plus what builds the workload)."""

    workload: str
    engine: str
    loss: float
    seed: int = 0
    quick: bool = False
    every: int | None = None
    cpu_budget_s: float = 600.0
    #: Count instructions of the timed region: "" (no), "perf" (in process,
    #: where the kernel provides the counter) or "callgrind" (the cell runs
    #: under valgrind; see :mod:`hybridsync.bench.instructions`).
    instructions: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, data: str) -> CellSpec:
        return cls(**json.loads(data))


def engines() -> dict[str, type[Engine]]:
    """The engines by name: ``hybridsync`` always; ``pycrdt`` and ``loro`` when
    :mod:`hybridsync.bench.baselines` is present (``loro`` only when the
    ``loro`` package imports)."""
    from hybridsync.bench.engine_hybrid import HybridEngine

    out: dict[str, type[Engine]] = {"hybridsync": HybridEngine}
    try:
        from hybridsync.bench import baselines
    except ImportError:
        return out
    out["pycrdt"] = baselines.PycrdtEngine
    try:
        import loro  # noqa: F401
    except ImportError:
        return out
    out["loro"] = baselines.LoroEngine
    return out


def engine_notes() -> list[str]:
    """Why an engine is missing from :func:`engines` (empty when none is)."""
    notes: list[str] = []
    try:
        from hybridsync.bench import baselines  # noqa: F401
    except ImportError as exc:
        notes.append(f"baselines unavailable (pycrdt, loro skipped): {exc}")
        return notes
    try:
        import loro  # noqa: F401
    except ImportError:
        notes.append("loro is not installed (pip install 'loro>=1.0'): the Loro engine is skipped")
    return notes


# -- correctness helpers -----------------------------------------------------------


def normalize(value: Any) -> Any:
    """A plain value with integral floats as ints (CRDT libraries read JSON
    numbers back as floats) and tuples as lists."""
    if isinstance(value, dict):
        return {str(k): normalize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def canonical(value: Any) -> str:
    """Key-sorted compact JSON of a normalized value."""
    return json.dumps(normalize(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def expected_kv_digests(workload: Workload) -> dict[str, str]:
    """Every cache's digest computed from the script alone: the ``kv_rows``
    of each append, cut at each truncation, hashed (xxh3-128) layer by layer,
    K then V, head by head, token by token."""
    import numpy as np

    caches: dict[str, Any] = {}
    for _, _, ops in workload.txns:
        for op in ops:
            if isinstance(op, KVAppend):
                row = op.head_dim // 32 * 18
                shape = (op.layers, 2, op.kv_heads, op.tokens, row)
                old = caches.get(op.cache)
                first = 0 if old is None else old.shape[3]
                data = kv_rows(op.cache, first, op.tokens, op.layers, op.kv_heads, op.head_dim)
                new = np.frombuffer(data, dtype=np.uint8).reshape(shape)
                caches[op.cache] = new if old is None else np.concatenate([old, new], axis=3)
            elif isinstance(op, KVTruncate):
                caches[op.cache] = caches[op.cache][:, :, :, : op.tokens]
    return {
        name: xxhash.xxh3_128(np.ascontiguousarray(arr).tobytes()).hexdigest()
        for name, arr in sorted(caches.items())
    }


def _needs(ops: Sequence[Op]) -> list[tuple[str, tuple[str, ...]]]:
    """The containers a transaction needs: ("dict"|"list"|"key", path)."""
    out: list[tuple[str, tuple[str, ...]]] = []
    for op in ops:
        if isinstance(op, MetaSet) and len(op.path) > 1:
            out.append(("dict", op.path[:-1]))
        elif isinstance(op, MetaAppend):
            out.append(("list", op.path))
        elif isinstance(op, MetaDelete):
            out.append(("key", op.path))
    return out


def _clamp(
    engine: Engine, replica: str, ops: list[Op], lengths: dict[tuple[str, str], int]
) -> list[Op]:
    """``ops`` with every TextEdit's position and length clamped to the
    document as ``replica`` holds it (timed workloads: agents act on what
    they see). ``lengths`` caches document lengths within a tick; the
    replica's own edits are the only changes between two ticks."""
    out: list[Op] = []
    for op in ops:
        if isinstance(op, TextEdit):
            key = (replica, op.doc)
            if key not in lengths:
                lengths[key] = len(engine.text(replica, op.doc))
            size = lengths[key]
            pos = min(op.pos, size)
            delete = min(op.delete, size - pos)
            if (pos, delete) != (op.pos, op.delete):
                op = TextEdit(op.doc, pos, delete, op.insert)
            lengths[key] = size - delete + len(op.insert)
        out.append(op)
    return out


def _visible(view: Any, needs: list[tuple[str, tuple[str, ...]]]) -> bool:
    for kind, path in needs:
        node = view
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return False
            node = node[key]
        if kind == "dict" and not isinstance(node, dict):
            return False
        if kind == "list" and not isinstance(node, list):
            return False
    return True


# -- one cell ------------------------------------------------------------------------


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0:
    ``/proc/self/clear_refs`` value 5); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class _Stop(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def run_cell(spec: CellSpec) -> dict[str, Any]:
    """Run one cell in this process and return its measurements (see the module)."""
    workload = build(spec.workload, quick=spec.quick, seed=spec.seed, every=spec.every)
    registry = engines()
    if spec.engine not in registry:
        raise KeyError(f"engine {spec.engine!r} unavailable (have: {', '.join(registry)})")
    cls = registry[spec.engine]
    expected_kv = expected_kv_digests(workload)
    gc.collect()
    rss_reset = _reset_peak_rss()
    rss_baseline = _rss_bytes()
    counter: counters.PerfCounter | counters.CallgrindToggle | None = None
    if spec.instructions == "perf":
        counter = counters.perf_counter()
        if counter is None:
            raise RuntimeError("no hardware instruction counter on this machine")
    elif spec.instructions == "callgrind":
        counter = counters.callgrind_toggle()
        if counter is None:
            raise RuntimeError("the callgrind toggle helper could not be built")
    elif spec.instructions:
        raise ValueError(f"unknown instruction counter {spec.instructions!r}")
    net = faults(spec.loss, spec.seed)
    wall0 = time.perf_counter()
    if counter is not None:
        counter.start()
    t0 = time.process_time()
    engine = cls(workload.replicas, net)
    cpu = time.process_time() - t0
    if counter is not None:
        counter.stop()
    ticks = 0
    samples: list[tuple[int, int]] = []
    deferred = skipped = 0
    status, reason = "ok", ""
    converge_ticks = 0

    def timed(fn: Callable[[], None]) -> None:
        nonlocal cpu
        if counter is not None:
            counter.start()
        t0 = time.process_time()
        fn()
        cpu += time.process_time() - t0
        if counter is not None:
            counter.stop()

    def apply(replica: str, ops: list[Op]) -> None:
        prepared = engine.prepare(replica, ops)  # harness work: not timed
        timed(lambda: engine.apply(replica, prepared))

    def do_tick() -> None:
        nonlocal ticks
        timed(engine.tick)
        ticks += 1
        if cpu > spec.cpu_budget_s:
            raise _Stop(f"CPU budget of {spec.cpu_budget_s:g} s exceeded after {ticks} ticks")

    def sample() -> None:
        samples.append((ticks, engine.state_bytes()))

    by_tick: dict[int, list[tuple[str, list[Op]]]] = {}
    for t, replica, ops in workload.txns:
        by_tick.setdefault(t, []).append((replica, ops))

    try:
        if workload.mode == "turns":
            for turn in sorted(by_tick):
                for replica, ops in by_tick[turn]:
                    apply(replica, ops)
                start = ticks
                while not engine.converged():
                    if ticks - start >= workload.tick_cap:
                        raise _Stop(f"turn {turn} not converged after {workload.tick_cap} ticks")
                    do_tick()
                converge_ticks = ticks - start
                if turn % workload.sample_every == 0:
                    sample()
        else:
            queues: dict[str, deque[tuple[int, list[Op]]]] = {}
            last = workload.last_tick
            t = 0
            while t <= last or any(queues.values()):
                views: dict[str, Any] = {}
                lengths: dict[tuple[str, str], int] = {}
                for replica, ops in by_tick.get(t, []):
                    queues.setdefault(replica, deque()).append((t, ops))
                for replica in sorted(queues):
                    queue = queues[replica]
                    while queue:
                        stamped, ops = queue[0]
                        needs = _needs(ops)
                        if needs:
                            if replica not in views:
                                views[replica] = normalize(engine.meta(replica))
                            if not _visible(views[replica], needs):
                                if t - stamped >= MAX_DEFER_TICKS:
                                    queue.popleft()
                                    skipped += 1
                                    continue
                                deferred += len(queue)
                                break
                        queue.popleft()
                        if any(isinstance(op, TextEdit) for op in ops):
                            ops = _clamp(engine, replica, ops, lengths)
                        apply(replica, ops)
                        views.pop(replica, None)
                if ticks >= workload.tick_cap:
                    raise _Stop(f"not finished after {workload.tick_cap} ticks")
                do_tick()
                t += 1
                if ticks % workload.sample_every == 0:
                    sample()
            start = ticks
            while not engine.converged():
                if ticks >= workload.tick_cap:
                    raise _Stop(f"not converged after {workload.tick_cap} ticks")
                do_tick()
                if ticks % workload.sample_every == 0:
                    sample()
            converge_ticks = ticks - start
    except _Stop as stop:
        status, reason = "dnf", stop.reason
    if not samples or samples[-1][0] != ticks:
        sample()
    wall = time.perf_counter() - wall0
    rss_peak = _rss_bytes()
    result: dict[str, Any] = {
        "spec": asdict(spec),
        "workload": workload.name,
        "family": workload.family,
        "mode": workload.mode,
        "deterministic": workload.deterministic,
        "description": workload.description,
        "params": workload.params,
        "engine": spec.engine,
        "loss": spec.loss,
        "status": status,
        "reason": reason,
        "wire_bytes": engine.wire_bytes,
        "messages": engine.messages,
        "cpu_s": cpu,
        "wall_s": wall,
        "rss_baseline_bytes": rss_baseline,
        "rss_peak_bytes": rss_peak,
        "rss_delta_bytes": rss_peak - rss_baseline,
        "rss_reset": rss_reset,
        "state": samples,
        "state_max_bytes": max(s for _, s in samples),
        "state_final_bytes": samples[-1][1],
        # Loro: the full snapshot with history, beside the shallow one above.
        "state_full_bytes": engine.state_bytes_full(),
        "net": asdict(net),
        "retransmissions": getattr(engine, "retransmissions", None),
        "instructions": (counter.value if isinstance(counter, counters.PerfCounter) else None),
        "instructions_source": spec.instructions or None,
        "ticks": ticks,
        "converge_ticks": converge_ticks if status == "ok" else None,
        "deferred": deferred,
        "skipped": skipped,
    }
    if status == "ok":
        checks, fingerprint = _check(engine, workload, expected_kv)
        result["checks"] = checks
        result["correct"] = all(checks.values())
        result["fingerprint"] = fingerprint
    else:
        result["checks"] = {}
        result["correct"] = None
        result["fingerprint"] = None
    return result


def _check(
    engine: Engine, workload: Workload, expected_kv: dict[str, str]
) -> tuple[dict[str, bool], str]:
    checks: dict[str, bool] = {}
    reps = workload.replicas
    hub = reps[0]
    for doc in workload.text_docs:
        checks[f"text {doc!r}: replicas equal"] = len({engine.text(r, doc) for r in reps}) == 1
        if workload.expected_text is not None and doc in workload.expected_text:
            checks[f"text {doc!r}: equals the trace's end"] = (
                engine.text(hub, doc) == workload.expected_text[doc]
            )
    metas = {canonical(engine.meta(r)) for r in reps}
    checks["meta: replicas equal"] = len(metas) == 1
    for cache, want in expected_kv.items():
        got = {engine.kv_digest(r, cache) for r in reps}
        checks[f"kv {cache!r}: replicas equal"] = len(got) == 1
        checks[f"kv {cache!r}: equals kv_rows"] = got == {want}
    content = {
        "text": {doc: engine.text(hub, doc) for doc in workload.text_docs},
        "meta": normalize(engine.meta(hub)),
        "kv": {cache: engine.kv_digest(hub, cache) for cache in expected_kv},
    }
    return checks, xxhash.xxh3_128(canonical(content).encode()).hexdigest()


# -- many cells ----------------------------------------------------------------------


def run_cell_subprocess(spec: CellSpec, *, timeout_s: float | None = None) -> dict[str, Any]:
    """Run one cell in a fresh interpreter; a crash or timeout becomes an
    ``error`` (or ``dnf``) result rather than an exception."""
    cmd = [sys.executable, "-m", "hybridsync.bench.runner", "--cell", spec.to_json()]
    limit = timeout_s if timeout_s is not None else spec.cpu_budget_s * 2 + 120
    scratch: tempfile.TemporaryDirectory[str] | None = None
    out_file: Path | None = None
    if spec.instructions == "callgrind":
        scratch = tempfile.TemporaryDirectory(prefix="hybridsync-callgrind-")
        out_file = Path(scratch.name) / "callgrind.out"
        cmd = [*counters.callgrind_command(out_file), *cmd]
        limit = timeout_s if timeout_s is not None else spec.cpu_budget_s * 100 + 600
    try:
        result = _run_subprocess(spec, cmd, limit)
        if out_file is not None and result.get("status") == "ok":
            result["instructions"] = counters.callgrind_instructions(out_file)
        return result
    finally:
        if scratch is not None:
            scratch.cleanup()


def _run_subprocess(spec: CellSpec, cmd: list[str], limit: float) -> dict[str, Any]:
    base: dict[str, Any] = {
        "spec": asdict(spec),
        "workload": spec.workload,
        "engine": spec.engine,
        "loss": spec.loss,
        "correct": None,
        "checks": {},
    }
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=limit, env=dict(os.environ), check=False
        )
    except subprocess.TimeoutExpired:
        return {**base, "status": "dnf", "reason": f"killed after {limit:g} s of wall time"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {**base, "status": "error", "reason": " | ".join(tail) or f"exit {proc.returncode}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def run_cells(
    specs: Sequence[CellSpec],
    *,
    jobs: int = 1,
    repeats: int = 1,
    instructions: str = "",
    on_done: Callable[[CellSpec, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every cell in its own subprocess, ``jobs`` at a time; results in
    ``specs`` order. ``on_done`` is called as each cell finishes.

    Each cell runs ``repeats`` times: the runs are deterministic (same bytes,
    ticks and content, checked), so the result is the first run's with
    ``cpu_s`` the smallest of the runs (``cpu_s_runs`` lists them all).
    ``instructions``: ``"perf"`` counts in every run (hardware counter);
    ``"callgrind"`` adds, for the cells without faults, one run of the cell's
    ``quick`` form under callgrind (``instructions_cell`` says which workload
    size was counted; valgrind runs about 50x slower than the cell)."""
    results: list[dict[str, Any] | None] = [None] * len(specs)

    def one(i: int) -> None:
        spec = specs[i]
        if instructions == "perf":
            spec = replace(spec, instructions="perf")
        runs = [run_cell_subprocess(spec) for _ in range(max(1, repeats))]
        result = _combine(runs)
        if instructions == "callgrind" and result.get("status") == "ok" and spec.loss == 0:
            counted = run_cell_subprocess(replace(spec, quick=True, instructions="callgrind"))
            result["instructions"] = counted.get("instructions")
            result["instructions_source"] = "callgrind"
            result["instructions_cell"] = "quick" + ("" if counted.get("correct") else " (failed)")
        elif instructions == "perf":
            result["instructions_cell"] = "full"
        results[i] = result
        if on_done is not None:
            on_done(spec, result)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(one, range(len(specs))))
    return [r for r in results if r is not None]


#: Measurements that must be equal in every repeat of a cell.
_DETERMINISTIC = ("wire_bytes", "messages", "ticks", "converge_ticks", "fingerprint", "correct")


def _combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from the repeats of a cell (see :func:`run_cells`)."""
    first = dict(runs[0])
    if len(runs) == 1 or first.get("status") != "ok":
        first["cpu_s_runs"] = [r.get("cpu_s") for r in runs]
        return first
    for r in runs[1:]:
        if r.get("status") != "ok":
            return {**r, "reason": f"repeat failed: {r.get('reason')}"}
        differs = [k for k in _DETERMINISTIC if r.get(k) != first.get(k)]
        if differs:
            return {
                **first,
                "status": "error",
                "correct": False,
                "reason": f"repeats differ in {', '.join(differs)} (a cell must be deterministic)",
            }
    cpus = [float(r["cpu_s"]) for r in runs]
    first["cpu_s"] = min(cpus)
    first["cpu_s_runs"] = cpus
    if all(r.get("instructions") is not None for r in runs):
        first["instructions"] = min(int(r["instructions"]) for r in runs)
    return first


def cross_engine_checks(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """For every deterministic workload, whether all finished cells (every
    engine, every loss) ended with the same content fingerprint."""
    groups: dict[str, dict[str, str]] = {}
    for r in results:
        if r.get("deterministic") and r.get("fingerprint"):
            key = f"{r['engine']} @ {r['loss']:g}"
            groups.setdefault(r["workload"], {})[key] = r["fingerprint"]
    return [
        {"workload": w, "cells": len(fps), "equal": len(set(fps.values())) == 1, "by_cell": fps}
        for w, fps in sorted(groups.items())
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hybridsync.bench.runner --cell JSON``: run one cell, print its result."""
    parser = argparse.ArgumentParser(prog="python -m hybridsync.bench.runner")
    parser.add_argument("--cell", required=True, help="a CellSpec as JSON")
    args = parser.parse_args(argv)
    result = run_cell(CellSpec.from_json(args.cell))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
