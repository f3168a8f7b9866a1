"""pytest-benchmark kernels of hybridsync.text, on the 13 KB seph-blog1 pair.

The project's pytest options include ``--benchmark-disable``, so by default each
benchmark body runs once as a plain test (the assertions still check the results)::

    pytest benches/test_bench_text.py                      # correctness only
    pytest benches/test_bench_text.py --benchmark-enable   # timings

The inputs are those of ``benches/bench_text.py`` (same pair, same shifted target).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pytest

from hybridsync import text as ht
from hybridsync.traces import load_trace

bench_text = pytest.importorskip("bench_text", reason="run from the benches folder or repo root")

#: The kernels run with a positive timeout, like the library's default (so the
#: half-match speed-up is on), but one that never fires: with the default 1 s
#: deadline a slow or loaded machine could cut a diff short and get another
#: (valid, coarser) result than the one the assertions expect.
TIMEOUT = 3600.0


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    patch: ht.Patch
    shifted: str
    shifted_expected: str


@pytest.fixture(scope="module")
def pair() -> Pair:
    try:
        trace = load_trace(bench_text.PAIR_TRACE)
    except FileNotFoundError as exc:
        pytest.fail(str(exc))  # the traces are inputs of these benchmarks, not optional
    a, b, _ = bench_text.pick_pair(trace)
    shifted, expected = bench_text.shifted_target(a, b, random.Random(bench_text.SEED + 1), 5)
    return Pair(a, b, ht.make_patch(a, b, timeout=TIMEOUT), shifted, expected)


def rebuilds(diffs: list[tuple[int, str]], a: str, b: str) -> bool:
    old = "".join(s for op, s in diffs if op != ht.DIFF_INSERT)
    new = "".join(s for op, s in diffs if op != ht.DIFF_DELETE)
    return old == a and new == b


def test_diff(benchmark: Any, pair: Pair) -> None:
    diffs = benchmark(ht.diff, pair.a, pair.b, timeout=TIMEOUT)
    assert rebuilds(diffs, pair.a, pair.b)
    assert any(op != ht.DIFF_EQUAL for op, _ in diffs)


def test_make_patch(benchmark: Any, pair: Pair) -> None:
    patch = benchmark(ht.make_patch, pair.a, pair.b, timeout=TIMEOUT)
    assert len(patch) > 0
    assert patch == pair.patch


def test_apply_patch_exact(benchmark: Any, pair: Pair) -> None:
    text, applied = benchmark(ht.apply_patch, pair.patch, pair.a, timeout=TIMEOUT)
    assert all(applied)
    assert text == pair.b


def test_apply_patch_shifted(benchmark: Any, pair: Pair) -> None:
    assert pair.shifted != pair.a
    text, applied = benchmark(ht.apply_patch, pair.patch, pair.shifted, timeout=TIMEOUT)
    assert all(applied)
    assert text == pair.shifted_expected


def test_patch_to_bytes(benchmark: Any, pair: Pair) -> None:
    raw = benchmark(pair.patch.to_bytes)
    assert isinstance(raw, bytes)
    assert len(raw) < len(pair.patch.to_text().encode())
    assert ht.Patch.from_bytes(raw) == pair.patch


def test_patch_from_bytes(benchmark: Any, pair: Pair) -> None:
    raw = pair.patch.to_bytes()
    patch = benchmark(ht.Patch.from_bytes, raw)
    assert patch == pair.patch
    assert ht.apply_patch(patch, pair.a, timeout=TIMEOUT) == (pair.b, [True] * len(pair.patch))
