#!/usr/bin/env python3
"""Side-by-side benchmark of hybridsync's text kernels against diff-match-patch.

Three implementations run in the same process, on the same inputs, interleaved
round by round so that they share the machine's noise:

* ``ours``   -- :mod:`hybridsync.text` (Rust core),
* ``C++``    -- ``fast_diff_match_patch`` (the C++ STL port of diff-match-patch),
* ``pure-Py`` -- the reference ``diff-match-patch`` package (pure Python).

The report gives medians (and minimums) in milliseconds and RATIOS ``ours / other``
(below 1.0 means hybridsync is faster); absolute times depend on the machine and are
never asserted. Every diff is checked to rebuild both of its inputs and every patch
application is checked against the expected text.

Usage::

    python benches/bench_text.py [--quick] [--out benches/results]

It writes ``text.md`` and ``text.json`` into the ``--out`` folder. The editing traces are
taken from ``HYBRIDSYNC_TRACES`` (see :mod:`hybridsync.traces`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import multiprocessing
import os
import platform
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fast_diff_match_patch
from diff_match_patch import diff_match_patch

from _machine import cpu_model, package_version
from hybridsync import text as ht
from hybridsync.traces import Trace, apply_splices, load_trace

# --------------------------------------------------------------------------- inputs

#: The trace the 13 KB pair is cut from.
PAIR_TRACE = "seph-blog1"
#: The pair: the document the first time it reaches PAIR_FROM code points, and the
#: first time it reaches PAIR_TO code points (about 12 KB and 13 KB of text).
PAIR_FROM = 12_000
PAIR_TO = 13_000
#: Traces whose texts (final and intermediate) make up the 1 MB corpus.
CORPUS_TRACES = ("seph-blog1", "rustcode", "sveltecomponent")
CORPUS_SIZE = 1_000_000
SEED = 20_240_601
SCATTERED_EDITS = 50

Splice = tuple[int, int, str]


@dataclass(frozen=True)
class Inputs:
    """Every text the benchmark uses, built deterministically from the traces."""

    pair_a: str
    pair_b: str
    pair_info: dict[str, Any]
    big: str
    big_scattered: str
    big_rewritten: str
    big_info: dict[str, Any]


def pick_pair(trace: Trace) -> tuple[str, str, dict[str, Any]]:
    """Two versions of the trace's document, about 12 KB and 13 KB, many edits apart."""
    text = trace.start
    a: str | None = None
    ia = 0
    splices = 0
    for i, txn in enumerate(trace.txns, 1):
        text = apply_splices(text, txn)
        if a is not None:
            splices += len(txn)
        if a is None and len(text) >= PAIR_FROM:
            a, ia = text, i
        if len(text) >= PAIR_TO:
            assert a is not None
            info = {
                "trace": trace.name,
                "rule": (
                    f"a = document after the first transaction where it reaches "
                    f"{PAIR_FROM:,} code points; b = first one where it reaches {PAIR_TO:,}"
                ),
                "a_txn": ia,
                "b_txn": i,
                "txns_between": i - ia,
                "splices_between": splices,
                "a_chars": len(a),
                "b_chars": len(text),
                "a_utf8_bytes": len(a.encode()),
                "b_utf8_bytes": len(text.encode()),
            }
            return a, text, info
    raise SystemExit(f"trace {trace.name} never reaches {PAIR_TO} code points")


def build_corpus(traces: Sequence[Trace], size: int, rng: random.Random) -> str:
    """About ``size`` code points of real prose and code: the traces' paragraphs, shuffled.

    Paragraphs come from each trace's final text and from three earlier drafts (so some
    paragraphs appear in several versions, as in a long document's history). Each round of
    shuffled paragraphs starts with its own chapter heading.
    """
    paragraphs: list[str] = []
    for trace in traces:
        every = max(1, len(trace.txns) // 4)
        for _, snap in trace.snapshots(every):
            paragraphs.extend(p for p in snap.split("\n\n") if p.strip())
    out: list[str] = []
    length = 0
    chapter = 0
    while length < size:
        chapter += 1
        rng.shuffle(paragraphs)
        for p in [f"# Chapter {chapter}", *paragraphs]:
            out.append(p)
            length += len(p) + 2
    text = "\n\n".join(out)[:size]
    return text[: text.rfind("\n") + 1]


def vocabulary(text: str) -> list[str]:
    return sorted(set(re.findall(r"[A-Za-z]{3,12}", text)))


def random_words(rng: random.Random, words: Sequence[str], length: int) -> str:
    """Deterministic random prose of exactly ``length`` code points (lines of ~12 words)."""
    out: list[str] = []
    n = 0
    while n < length:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(6, 18))) + "\n"
        out.append(line)
        n += len(line)
    return "".join(out)[:length]


def scattered_edits(text: str, rng: random.Random, words: Sequence[str], count: int) -> str:
    """``count`` small edits (insert words, delete a few characters, replace a word)."""
    stride = len(text) // count
    splices: list[Splice] = []
    for k in range(count):
        pos = k * stride + rng.randrange(stride // 4, 3 * stride // 4)
        kind = k % 3
        if kind == 0:
            splices.append((pos, 0, " " + " ".join(rng.choices(words, k=rng.randint(1, 4)))))
        elif kind == 1:
            splices.append((pos, rng.randint(1, 15), ""))
        else:
            m = re.search(r"[A-Za-z]+", text[pos : pos + 200])
            start, end = (pos + m.start(), pos + m.end()) if m else (pos, pos)
            splices.append((start, end - start, rng.choice(words)))
    return apply_splices(text, tuple(reversed(splices)))


def rewrite_middle(text: str, rng: random.Random, words: Sequence[str]) -> tuple[str, int]:
    """The middle third of ``text`` replaced by random words (same length), and that length."""
    lo = text.rfind("\n", 0, len(text) // 3) + 1
    hi = text.rfind("\n", 0, 2 * len(text) // 3) + 1
    return text[:lo] + random_words(rng, words, hi - lo) + text[hi:], hi - lo


def build_inputs() -> Inputs:
    rng = random.Random(SEED)
    traces = {name: load_trace(name) for name in dict.fromkeys((PAIR_TRACE, *CORPUS_TRACES))}
    a, b, pair_info = pick_pair(traces[PAIR_TRACE])
    big = build_corpus([traces[n] for n in CORPUS_TRACES], CORPUS_SIZE, rng)
    words = vocabulary(big)
    big_scattered = scattered_edits(big, rng, words, SCATTERED_EDITS)
    big_rewritten, rewritten = rewrite_middle(big, rng, words)
    big_info = {
        "rule": (
            f"paragraphs of {', '.join(CORPUS_TRACES)} (final text and drafts at every quarter "
            f"of each trace), shuffled with random.Random({SEED}) and concatenated, cut at a "
            f"line end before {CORPUS_SIZE:,} code points"
        ),
        "chars": len(big),
        "utf8_bytes": len(big.encode()),
        "lines": big.count("\n"),
        "scattered_edits": SCATTERED_EDITS,
        "rewritten_middle_chars": rewritten,
    }
    return Inputs(a, b, pair_info, big, big_scattered, big_rewritten, big_info)


#: Unrelated edits keep this far from every change of the patched pair.
SHIFT_GUARD = 120
#: The text before any hunk is never more than this many code points longer than in the
#: source. diff-match-patch's patch_apply resets its running offset from one hunk to the
#: next (``delta = start_loc - expected_loc``), so the miss it tolerates must cover up to
#: twice this; at 220 every hunk stays within its default threshold (0.5) and distance (1000).
SHIFT_MAX = 220


def shifted_target(source: str, target: str, rng: random.Random, count: int) -> tuple[str, str]:
    """``source`` with unrelated edits away from the changes, and the text expected after patching.

    The changed regions are located with an independent diff (the C++ one). ``count``
    unrelated edits (insertions of random words and short deletions, one per unchanged gap,
    the first one before the first change) are kept ``SHIFT_GUARD`` code points away from
    them, so every hunk is found away from where the patch expects it, by up to
    ``SHIFT_MAX`` code points. The same edits, moved to the target's coordinates, give the
    expected result.
    """
    ops = fast_diff_match_patch.diff(source, target, timelimit=0.0, checklines=True)
    equal: list[tuple[int, int, int]] = []  # (start in source, start in target, length)
    i = j = 0
    for op, n in ops:
        if op == "=":
            equal.append((i, j, n))
            i += n
            j += n
        elif op == "-":
            i += n
        else:
            j += n
    guard = SHIFT_GUARD
    slots = [(s + guard, s + n - guard, t - s) for s, t, n in equal if n > 2 * guard + 20]
    if not slots:
        raise SystemExit("no room for unrelated edits")
    chosen = sorted([slots[0], *rng.sample(slots[1:], k=min(count, len(slots)) - 1)])
    words = vocabulary(source)
    edits: list[tuple[int, int, int, str]] = []  # (pos in source, deleted, offset, inserted)
    net = 0
    for k, (lo, hi, offset) in enumerate(chosen):
        pos = lo if k == 0 else rng.randrange(lo, hi)
        size = SHIFT_MAX - 20 if k == 0 else rng.randint(10, 150)
        if net + size <= SHIFT_MAX:
            edits.append((pos, 0, offset, random_words(rng, words, size)))
            net += size
        else:
            deleted = min(size, net, hi - pos)
            edits.append((pos, deleted, offset, ""))
            net -= deleted
    shifted = apply_splices(source, tuple((p, d, s) for p, d, _, s in reversed(edits)))
    expected = apply_splices(target, tuple((p + o, d, s) for p, d, o, s in reversed(edits)))
    return shifted, expected


# --------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Per-call times of one implementation on one input (seconds)."""

    median: float | None = None
    min: float | None = None
    #: CPU time of the calling thread (median), less sensitive to a busy machine.
    cpu_median: float | None = None
    samples: int = 0
    inner: int = 1
    note: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "median_ms": None if self.median is None else self.median * 1e3,
            "min_ms": None if self.min is None else self.min * 1e3,
            "cpu_median_ms": None if self.cpu_median is None else self.cpu_median * 1e3,
            "samples": self.samples,
            "calls_per_sample": self.inner,
            "note": self.note,
            **self.info,
        }


@dataclass
class Impl:
    """One contender: ``fn`` does the work, ``check`` summarizes (and verifies) its result."""

    name: str
    fn: Callable[[], Any]
    check: Callable[[Any], dict[str, Any]] = lambda _: {}
    capped: bool = False  # first run in a child process, stopped after --cap seconds
    skip: str = ""  # reason not to run it at all


@dataclass(frozen=True)
class Settings:
    rounds: int
    min_sample: float
    cap: float
    slow: float  # an implementation slower than this per call is run once only


def _timed(fn: Callable[[], Any], inner: int) -> tuple[float, float]:
    """Per-call wall-clock (perf_counter) and thread CPU time of ``inner`` calls."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        c0 = time.thread_time()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        t1 = time.perf_counter()
        c1 = time.thread_time()
        return (t1 - t0) / inner, (c1 - c0) / inner
    finally:
        if gc_was_enabled:
            gc.enable()


def _run_capped(impl: Impl, cap: float) -> tuple[float | None, dict[str, Any]] | None:
    """Run ``impl`` once in a forked child; None when it takes longer than ``cap``."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def child() -> None:
        c0 = time.thread_time()
        t0 = time.perf_counter()
        try:
            result = impl.fn()
        except Exception as exc:
            send.send((None, {"ok": False, "error": f"error: {type(exc).__name__}: {exc}"}))
            return
        elapsed = time.perf_counter() - t0
        cpu = time.thread_time() - c0
        send.send((elapsed, {**impl.check(result), "first_run_cpu_s": cpu}))

    proc = ctx.Process(target=child, daemon=True)
    proc.start()
    try:
        if recv.poll(cap):
            out: tuple[float | None, dict[str, Any]] = recv.recv()
            return out
        return None
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        recv.close()
        send.close()


def measure(impls: Sequence[Impl], s: Settings) -> dict[str, Timing]:
    """Warm up, calibrate, then time the implementations interleaved round by round."""
    timings = {im.name: Timing() for im in impls}
    loop: list[tuple[Impl, int]] = []
    for im in impls:
        tm = timings[im.name]
        if im.skip:
            tm.note = im.skip
            continue
        if im.capped:
            got = _run_capped(im, s.cap)
            if got is None:
                tm.note = f"stopped after {s.cap:g} s"
                continue
            elapsed, tm.info = got
            if elapsed is None:
                tm.note = tm.info["error"]
                continue
            first = elapsed
            if first > s.slow:
                tm.median = tm.min = first
                tm.cpu_median = tm.info.pop("first_run_cpu_s")
                tm.samples = 1
                tm.note = "single run"
                continue
        else:
            c0 = time.thread_time()
            t0 = time.perf_counter()
            try:
                result = im.fn()
            except Exception as exc:
                tm.note = f"error: {type(exc).__name__}: {exc}"
                tm.info = {"ok": False, "error": tm.note}
                continue
            first = time.perf_counter() - t0
            first_cpu = time.thread_time() - c0
            tm.info = im.check(result)
            if first > s.slow:
                tm.median = tm.min = first
                tm.cpu_median = first_cpu
                tm.samples = 1
                tm.note = "single run"
                continue
        tm.info.pop("first_run_cpu_s", None)
        warm, _ = _timed(im.fn, 1)
        inner = max(1, min(10_000, math.ceil(s.min_sample / max(warm, 1e-7))))
        tm.inner = inner
        loop.append((im, inner))
    samples: dict[str, list[tuple[float, float]]] = {im.name: [] for im, _ in loop}
    for r in range(s.rounds):
        k = r % len(loop) if loop else 0
        for im, inner in loop[k:] + loop[:k]:
            samples[im.name].append(_timed(im.fn, inner))
        gc.collect()
    for name, xs in samples.items():
        wall = [w for w, _ in xs]
        timings[name].median = statistics.median(wall)
        timings[name].min = min(wall)
        timings[name].cpu_median = statistics.median(c for _, c in xs)
        timings[name].samples = len(xs)
    return timings


# --------------------------------------------------------------------------- checks

OP_NAMES = {"=": 0, "-": -1, "+": 1, 0: 0, -1: -1, 1: 1}


def diff_summary(a: str, b: str) -> Callable[[Any], dict[str, Any]]:
    """A check: do the diff's operations rebuild ``a`` and ``b``? And its size."""

    def check(diffs: Any) -> dict[str, Any]:
        ops = [(OP_NAMES[op], s) for op, s in diffs]
        ok = (
            "".join(s for op, s in ops if op <= 0) == a
            and "".join(s for op, s in ops if op >= 0) == b
        )
        return {
            "ok": ok,
            "ops": len(ops),
            "changes": sum(1 for op, _ in ops if op != 0),
            "inserted_chars": sum(len(s) for op, s in ops if op > 0),
            "deleted_chars": sum(len(s) for op, s in ops if op < 0),
        }

    return check


def apply_summary(expected: str) -> Callable[[Any], dict[str, Any]]:
    def check(result: Any) -> dict[str, Any]:
        text, applied = result
        return {
            "ok": text == expected and all(applied),
            "text_matches": text == expected,
            "hunks": len(applied),
            "hunks_applied": sum(1 for x in applied if x),
        }

    return check


# --------------------------------------------------------------------------- the cases


def _py_dmp(timeout: float) -> diff_match_patch:
    dmp = diff_match_patch()
    dmp.Diff_Timeout = timeout
    return dmp


def diff_impls(a: str, b: str, timeout: float, big: bool, quick: bool) -> list[Impl]:
    dmp = _py_dmp(timeout)

    def ours() -> Any:
        return ht.diff(a, b, timeout=timeout, cleanup="semantic", checklines=True)

    def cpp() -> Any:
        return fast_diff_match_patch.diff(
            a, b, timelimit=timeout, checklines=True, cleanup="Semantic", counts_only=False
        )

    def pure() -> Any:
        d = dmp.diff_main(a, b, True)
        dmp.diff_cleanupSemantic(d)
        return d

    check = diff_summary(a, b)
    return [
        Impl("ours", ours, check),
        Impl("C++", cpp, check),
        Impl("pure-Py", pure, check, capped=big, skip="skipped (--quick)" if big and quick else ""),
    ]


def make_patch_impls(a: str, b: str, timeout: float, big: bool, quick: bool) -> list[Impl]:
    dmp = _py_dmp(timeout)

    def ours() -> Any:
        return ht.make_patch(a, b, timeout=timeout)

    def ours_text() -> Any:
        return ht.make_patch(a, b, timeout=timeout).to_text()

    def cpp_text() -> Any:
        return fast_diff_match_patch.diff(
            a, b, timelimit=timeout, checklines=True, cleanup="Semantic", as_patch=True
        )

    def pure() -> Any:
        return dmp.patch_make(a, b)

    def pure_text() -> Any:
        return dmp.patch_toText(dmp.patch_make(a, b))

    skip = "skipped (--quick)" if big and quick else ""
    return [
        Impl("ours", ours),
        Impl("ours+to_text", ours_text),
        Impl("C++ as_patch", cpp_text),
        Impl("pure-Py", pure, capped=big, skip=skip),
        Impl("pure-Py+toText", pure_text, capped=big, skip=skip),
    ]


def apply_impls(
    a: str, b: str, target: str, expected: str, timeout: float, big: bool, quick: bool
) -> tuple[list[Impl], dict[str, Any]]:
    dmp = _py_dmp(timeout)
    ours_patch = ht.make_patch(a, b, timeout=timeout)
    py_patch = dmp.patch_make(a, b)

    def ours() -> Any:
        return ht.apply_patch(ours_patch, target)

    def pure() -> Any:
        return dmp.patch_apply(py_patch, target)

    # Interoperability of the text form, both ways.
    ours_via_py = dmp.patch_apply(dmp.patch_fromText(ours_patch.to_text()), target)[0]
    py_via_ours = ht.apply_patch(ht.Patch.from_text(dmp.patch_toText(py_patch)), target)[0]
    extra = {
        "ours_hunks": len(ours_patch),
        "pure_py_hunks": len(py_patch),
        "ours_text_applied_by_pure_py_ok": ours_via_py == expected,
        "pure_py_text_applied_by_ours_ok": py_via_ours == expected,
    }
    check = apply_summary(expected)
    skip = "skipped (--quick)" if big and quick else ""
    return [Impl("ours", ours, check), Impl("pure-Py", pure, check, capped=big, skip=skip)], extra


def codec_impls(a: str, b: str, timeout: float) -> tuple[list[Impl], dict[str, Any]]:
    dmp = _py_dmp(timeout)
    patch = ht.make_patch(a, b, timeout=timeout)
    raw = patch.to_bytes()
    txt = patch.to_text()
    py_patch = dmp.patch_make(a, b)
    py_txt = dmp.patch_toText(py_patch)

    def same(other: Any) -> dict[str, Any]:
        return {"ok": other == patch}

    def decodes(data: Any) -> Callable[[Any], dict[str, Any]]:
        return lambda encoded: {"ok": encoded == data}

    sizes = {
        "hunks": len(patch),
        "to_bytes_bytes": len(raw),
        "to_text_bytes": len(txt.encode()),
        "pure_py_toText_bytes": len(py_txt.encode()),
        "pure_py_hunks": len(py_patch),
        "source_bytes": len(a.encode()),
    }
    return [
        Impl("to_bytes", patch.to_bytes, decodes(raw)),
        Impl("from_bytes", lambda: ht.Patch.from_bytes(raw), same),
        Impl("to_text", patch.to_text, decodes(txt)),
        Impl("from_text", lambda: ht.Patch.from_text(txt), same),
        Impl("pure-Py toText", lambda: dmp.patch_toText(py_patch)),
        Impl("pure-Py fromText", lambda: dmp.patch_fromText(py_txt)),
    ], sizes


# --------------------------------------------------------------------------- report


def ms(t: Timing) -> str:
    if t.median is None:
        return t.note or "—"
    assert t.min is not None
    cell = f"{t.median * 1e3:.3f}" if t.median < 0.01 else f"{t.median * 1e3:.1f}"
    if t.samples > 1:
        low = f"{t.min * 1e3:.3f}" if t.min < 0.01 else f"{t.min * 1e3:.1f}"
        cell += f" ({low})"
    else:
        cell += " (1 run)"
    return cell


def us(t: Timing) -> str:
    if t.median is None:
        return f"✗ {t.note}" if t.info.get("ok") is False else "—"
    return f"{t.median * 1e6:.1f}" + ("" if t.info.get("ok", True) else " ✗")


def ratio(ours: Timing, other: Timing) -> float | None:
    if ours.median is None or other.median is None:
        return None
    return ours.median / other.median


def min_ratio(ours: Timing, other: Timing) -> float | None:
    if ours.min is None or other.min is None:
        return None
    return ours.min / other.min


def cpu_ratio(ours: Timing, other: Timing) -> float | None:
    if not ours.cpu_median or not other.cpu_median:
        return None
    return ours.cpu_median / other.cpu_median


def fmt_ratio(r: float | None) -> str:
    return "—" if r is None else f"{r:.2f}x"


def flag(t: Timing, timeout: float | None = None) -> str:
    if t.median is None:
        return ""
    mark = " ✓" if t.info.get("ok", True) else " ✗"
    if timeout and t.median >= 0.9 * timeout:
        mark += " ⏱"
    return mark


def environment() -> dict[str, Any]:
    version = package_version
    cpu = cpu_model()
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "packages": {
            "hybridsync": version("hybridsync"),
            "diff-match-patch": version("diff-match-patch"),
            "fast-diff-match-patch": version("fast-diff-match-patch"),
        },
    }


@dataclass
class Report:
    settings: dict[str, Any]
    env: dict[str, Any]
    inputs: dict[str, Any]
    diff: dict[str, dict[str, Timing]] = field(default_factory=dict)
    make_patch: dict[str, dict[str, Timing]] = field(default_factory=dict)
    apply: dict[str, dict[str, Timing]] = field(default_factory=dict)
    apply_extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    codec: dict[str, dict[str, Timing]] = field(default_factory=dict)
    sizes: dict[str, dict[str, Any]] = field(default_factory=dict)
    input_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        def table(d: dict[str, dict[str, Timing]]) -> dict[str, Any]:
            return {case: {k: t.as_json() for k, t in ts.items()} for case, ts in d.items()}

        def ratios(d: dict[str, dict[str, Timing]], pairs: Sequence[tuple[str, str]]) -> Any:
            return {
                case: {
                    f"{x} / {y}": {
                        "median": ratio(ts[x], ts[y]),
                        "min": min_ratio(ts[x], ts[y]),
                        "cpu_median": cpu_ratio(ts[x], ts[y]),
                    }
                    for x, y in pairs
                }
                for case, ts in d.items()
            }

        return {
            "settings": self.settings,
            "environment": self.env,
            "inputs": self.inputs,
            "diff": table(self.diff),
            "diff_ratios": ratios(self.diff, [("ours", "C++"), ("ours", "pure-Py")]),
            "make_patch": table(self.make_patch),
            "make_patch_ratios": ratios(
                self.make_patch,
                [("ours", "pure-Py"), ("ours+to_text", "C++ as_patch")],
            ),
            "apply_patch": table(self.apply),
            "apply_patch_ratios": ratios(self.apply, [("ours", "pure-Py")]),
            "apply_patch_interop": self.apply_extra,
            "patch_codec": table(self.codec),
            "patch_sizes": self.sizes,
        }

    def markdown(self) -> str:
        timeout = self.settings["timeout_s"]
        env = self.env
        pkgs = env["packages"]
        pi = self.inputs["pair"]
        bi = self.inputs["big"]
        out: list[str] = []
        w = out.append
        w("# Text kernels: hybridsync vs diff-match-patch\n")
        w(
            f"- {env['date']}; Python {env['python']} ({env['implementation']}), "
            f"{env['platform']}; CPU: {env['cpu']} ({env['cpu_count']} logical CPUs, load "
            f"average {' / '.join(map(str, env['loadavg_at_start']))} at start)"
        )
        w(
            f"- hybridsync {pkgs['hybridsync']}, fast-diff-match-patch "
            f"{pkgs['fast-diff-match-patch']} (C++), diff-match-patch "
            f"{pkgs['diff-match-patch']} (pure Python)"
        )
        w(
            f"- mode: {'quick' if self.settings['quick'] else 'full'}; {self.settings['rounds']} "
            f"interleaved rounds, each sample >= {self.settings['min_sample_ms']:g} ms of calls; "
            f"diff timeout {timeout:g} s for every implementation; pure-Python runs on 1 MB "
            f"inputs are stopped after {self.settings['cap_s']:g} s"
        )
        w(
            "- cells: median ms (min ms). Ratios are ours / other of the medians (of the minimums "
            "in parentheses): **below 1.0 means hybridsync is faster**. The CPU-time ratio "
            "(medians of the calling thread's CPU time) is steadier than wall time on a busy "
            "machine. ✓ = output verified "
            "(diff rebuilds both inputs / patched text as "
            f"expected with every hunk applied), ✗ = wrong; ⏱ = time >= 90% of the {timeout:g} s "
            "diff timeout (the timeout was probably hit, the diff may be less minimal)."
        )
        w("")
        w("## Inputs\n")
        w(
            f"- **13 KB pair** ({pi['trace']}): {pi['rule']} -> transactions {pi['a_txn']:,} and "
            f"{pi['b_txn']:,} ({pi['txns_between']:,} transactions, {pi['splices_between']:,} "
            f"splices apart); {pi['a_chars']:,} -> {pi['b_chars']:,} code points "
            f"({pi['a_utf8_bytes']:,} -> {pi['b_utf8_bytes']:,} UTF-8 bytes)."
        )
        w(
            f"- **1 MB text**: {bi['rule']}: {bi['chars']:,} code points, {bi['lines']:,} lines. "
            f"*scattered*: {bi['scattered_edits']} small edits spread evenly (insert words, "
            "delete 1-15 characters, replace a word). *middle rewritten*: the middle third "
            "replaced by random words of the same length."
        )
        w(
            "- **shifted target**: the source with unrelated edits (insertions of random "
            "words, a few short deletions) at least 120 code points away from every change, "
            "one before the first hunk, so hunks are found away from their expected positions."
        )
        w("")
        w(f"## diff (timeout {timeout:g} s, line mode on, semantic cleanup, full ops)\n")
        w(
            "| input | a -> b (code points) | ours ms | C++ ms | pure-Py ms | ours / C++ "
            "| ours / C++ CPU time | ours / pure-Py | ops: ours / C++ / pure-Py "
            "| changed chars: ours / C++ / pure-Py |"
        )
        w("|---|---|---|---|---|---|---|---|---|---|")
        for case, ts in self.diff.items():
            o, c, p = ts["ours"], ts["C++"], ts["pure-Py"]
            la, lb = self.input_sizes[case]
            opsc = " / ".join(str(t.info.get("ops", "—")) for t in (o, c, p))
            chg = " / ".join(
                str(t.info["inserted_chars"] + t.info["deleted_chars"]) if t.info else "—"
                for t in (o, c, p)
            )
            w(
                f"| {case} | {la:,} -> {lb:,} | {ms(o)}{flag(o, timeout)} "
                f"| {ms(c)}{flag(c, timeout)} | {ms(p)}{flag(p, timeout)} "
                f"| **{fmt_ratio(ratio(o, c))}** ({fmt_ratio(min_ratio(o, c))}) "
                f"| {fmt_ratio(cpu_ratio(o, c))} | {fmt_ratio(ratio(o, p))} | {opsc} | {chg} |"
            )
        w("")
        w(
            "On ⏱ rows the time is the timeout, not the algorithm: the C++ port counts its "
            "deadline in process CPU time (`clock()`), hybridsync and the pure-Python package in "
            "wall-clock time, so on a loaded machine the C++ wall time runs past the timeout "
            "(and our CPU time stays below it); neither ratio measures the algorithm there, the "
            "ratio of the minimums is the fairest."
        )
        w("")
        w("## apply_patch (each implementation applies its own patch of the same pair)\n")
        w(
            "| case | target | ours ms | pure-Py ms | ours / pure-Py | ours / pure-Py CPU time "
            "| speedup | hunks applied |"
        )
        w("|---|---|---|---|---|---|---|---|")
        for case, ts in self.apply.items():
            o, p = ts["ours"], ts["pure-Py"]
            r = ratio(o, p)
            speed = "—" if r is None else f"{1 / r:.1f}x" if r > 0.1 else f"{1 / r:.0f}x"
            hunks = " / ".join(
                f"{t.info['hunks_applied']}/{t.info['hunks']}" if t.info else "—" for t in (o, p)
            )
            src, target = case.rsplit(", ", 1)
            w(
                f"| {src} | {target} | {ms(o)}{flag(o)} | {ms(p)}{flag(p)} "
                f"| {fmt_ratio(r)} ({fmt_ratio(min_ratio(o, p))}) "
                f"| {fmt_ratio(cpu_ratio(o, p))} | **{speed}** | {hunks} |"
            )
        w("")
        interop = all(
            v for extra in self.apply_extra.values() for k, v in extra.items() if k.endswith("_ok")
        )
        w(
            "Text-form interoperability (our `to_text` applied by pure-Python `patch_apply`, "
            f"pure-Python `patch_toText` applied by our `apply_patch`): {'✓' if interop else '✗'}"
        )
        w("")
        w("## make_patch\n")
        w(
            "| input | ours make_patch ms | pure-Py patch_make ms | ours / pure-Py "
            "| ours make_patch+to_text ms | C++ diff as_patch ms | ours / C++ |"
        )
        w("|---|---|---|---|---|---|---|")
        for case, ts in self.make_patch.items():
            w(
                f"| {case} | {ms(ts['ours'])} | {ms(ts['pure-Py'])} "
                f"| {fmt_ratio(ratio(ts['ours'], ts['pure-Py']))} | {ms(ts['ours+to_text'])} "
                f"| {ms(ts['C++ as_patch'])} "
                f"| {fmt_ratio(ratio(ts['ours+to_text'], ts['C++ as_patch']))} |"
            )
        w("")
        w(
            "C++ `as_patch` = its diff + semantic cleanup + patch_make + patch_toText; it skips "
            "the efficiency cleanup that `make_patch` / `patch_make` do, so it is indicative only."
        )
        w("")
        w("## Patch size and (de)serialization\n")
        w(
            "| input | hunks | to_bytes B | to_text B | bytes / text | pure-Py patch_toText B "
            "| to_bytes µs | from_bytes µs | to_text µs | from_text µs "
            "| pure-Py toText µs | pure-Py fromText µs |"
        )
        w("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for case, sz in self.sizes.items():
            ts = self.codec[case]
            w(
                f"| {case} | {sz['hunks']} | {sz['to_bytes_bytes']:,} | {sz['to_text_bytes']:,} "
                f"| {sz['to_bytes_bytes'] / sz['to_text_bytes']:.2f} "
                f"| {sz['pure_py_toText_bytes']:,} | {us(ts['to_bytes'])} | {us(ts['from_bytes'])}"
                f" | {us(ts['to_text'])} | {us(ts['from_text'])} | {us(ts['pure-Py toText'])} "
                f"| {us(ts['pure-Py fromText'])} |"
            )
        w("")
        return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer rounds; no pure-Py on 1 MB")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results",
        help="folder for text.md and text.json (default: benches/results)",
    )
    parser.add_argument("--timeout", type=float, default=1.0, help="diff timeout, seconds")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 21, quick 5)")
    parser.add_argument(
        "--cap", type=float, default=60.0, help="stop a pure-Python 1 MB run after this (s)"
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (5 if args.quick else 21)
    settings = Settings(
        rounds=rounds,
        min_sample=0.002 if args.quick else 0.005,
        cap=args.cap,
        slow=1.5 if args.quick else 3.0,
    )
    timeout: float = args.timeout

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log("building inputs from the editing traces ...")
    inp = build_inputs()
    pi = inp.pair_info
    log(
        f"13 KB pair from {pi['trace']}: txn {pi['a_txn']} ({pi['a_chars']} chars) -> "
        f"txn {pi['b_txn']} ({pi['b_chars']} chars), {pi['txns_between']} txns / "
        f"{pi['splices_between']} splices apart"
    )
    log(f"1 MB text: {inp.big_info['chars']} chars, {inp.big_info['lines']} lines")

    report = Report(
        settings={
            "quick": args.quick,
            "rounds": rounds,
            "min_sample_ms": settings.min_sample * 1e3,
            "timeout_s": timeout,
            "cap_s": args.cap,
            "seed": SEED,
        },
        env=environment(),
        inputs={"pair": pi, "big": inp.big_info},
    )

    diff_cases = {
        "13 KB pair": (inp.pair_a, inp.pair_b, False),
        "1 MB scattered": (inp.big, inp.big_scattered, True),
        "1 MB middle rewritten": (inp.big, inp.big_rewritten, True),
    }
    for case, (a, b, big) in diff_cases.items():
        log(f"diff: {case} ...")
        report.input_sizes[case] = (len(a), len(b))
        report.diff[case] = measure(diff_impls(a, b, timeout, big, args.quick), settings)

    patch_cases = {
        "13 KB pair": diff_cases["13 KB pair"],
        "1 MB scattered": diff_cases["1 MB scattered"],
    }
    rng = random.Random(SEED + 1)
    for case, (a, b, big) in patch_cases.items():
        log(f"make_patch: {case} ...")
        report.make_patch[case] = measure(
            make_patch_impls(a, b, timeout, big, args.quick), settings
        )
        shifted, expected = shifted_target(a, b, rng, count=40 if big else 5)
        for target_name, target, want in (("exact source", a, b), ("shifted", shifted, expected)):
            log(f"apply_patch: {case}, {target_name} ...")
            impls, extra = apply_impls(a, b, target, want, timeout, big, args.quick)
            report.apply[f"{case}, {target_name}"] = measure(impls, settings)
            report.apply_extra[f"{case}, {target_name}"] = extra
        log(f"patch codec: {case} ...")
        impls, sizes = codec_impls(a, b, timeout)
        report.codec[case] = measure(impls, settings)
        report.sizes[case] = sizes

    md = report.markdown()
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "text.md").write_text(md + "\n", encoding="utf-8")
    (args.out / "text.json").write_text(
        json.dumps(report.as_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    shown = args.out.resolve()
    if shown.is_relative_to(Path.cwd()):
        shown = shown.relative_to(Path.cwd())
    log(f"wrote {shown / 'text.md'} and {shown / 'text.json'}")
    failures = [
        f"{section} {case} {name}"
        for section, table in (
            ("diff", report.diff),
            ("apply_patch", report.apply),
            ("patch codec", report.codec),
        )
        for case, ts in table.items()
        for name, t in ts.items()
        if t.info.get("ok") is False
    ]
    if failures:
        log("WRONG RESULTS: " + "; ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
