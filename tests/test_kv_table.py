"""Page tables in the core: the same digests and the same page diffs as the
numpy formulation they replace (digests travel between replicas, so they may
never change), and what a table refuses."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridsync import Link, Memory
from hybridsync._core import (
    kv_plan_diff,
    kv_quantize,
    kv_table_cut,
    kv_table_range_sum,
    kv_table_set_pages,
    kv_table_set_range,
)
from hybridsync.errors import InvalidArgumentError
from hybridsync.kv import KVCache, PageTable

_U64 = np.uint64
_M1 = _U64(0x9E3779B97F4A7C15)
_M2 = _U64(0xFF51AFD7ED558CCD)
_M3 = _U64(0xC4CEB9FE1A85EC53)
_S33 = _U64(33)


def ref_mix(hashes: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The keyed mix as numpy computed it before the core did."""
    x: np.ndarray = hashes ^ (keys * _M1)
    x ^= x >> _S33
    x *= _M2
    x ^= x >> _S33
    x *= _M3
    x ^= x >> _S33
    x[hashes == 0] = 0
    return x


def ref_sum(hashes: np.ndarray) -> int:
    layers, _, heads, width = hashes.shape
    rows = np.arange(layers * 2 * heads, dtype=_U64) << _U64(32)
    keys = rows.reshape(layers, 2, heads, 1) | np.arange(width, dtype=_U64)
    return int(ref_mix(hashes.copy(), keys).sum(dtype=_U64))


def ref_plan(
    mine: np.ndarray,
    acked: np.ndarray,
    first: int,
    tokens: int,
    held: int,
    pt: int,
    row_bytes: int,
    tail_page: int,
    budget: int,
) -> tuple[list[tuple[int, int, int, list[int], list[int]]], int, int | None]:
    """The numpy page diff the core replaced: runs ``(layer, kind, offset,
    heads, pages)``, bytes and the page to resume from."""
    pages = -(-tokens // pt)
    ours = mine[..., first:pages]
    theirs = acked[..., first:pages]
    send = (ours != theirs) & (ours != 0)
    idx = np.argwhere(send.transpose(3, 0, 1, 2))
    absolute = idx[:, 0] + first
    rows = np.minimum(pt, tokens - absolute * pt)
    skip = np.where(absolute == tail_page, held - tail_page * pt, 0)
    sizes = (rows - skip) * row_bytes
    resume = None
    if len(idx) and int(sizes.sum()) > budget:
        fit = max(int(np.searchsorted(np.cumsum(sizes), budget, side="right")), 1)
        if fit < len(idx):
            resume = first + int(idx[fit, 0])
            idx, sizes, skip = idx[:fit], sizes[:fit], skip[:fit]
    runs = []
    for offset in sorted({int(x) for x in skip}):
        part = idx[skip == offset]
        part = part[np.lexsort((part[:, 0], part[:, 3], part[:, 2], part[:, 1]))]
        groups = part[:, 1] * 2 + part[:, 2]
        for chunk in np.split(part, np.flatnonzero(np.diff(groups)) + 1):
            runs.append(
                (
                    int(chunk[0, 1]),
                    int(chunk[0, 2]),
                    offset,
                    [int(h) for h in chunk[:, 3]],
                    [int(p) + first for p in chunk[:, 0]],
                )
            )
    return runs, int(sizes.sum()) if len(idx) else 0, resume


def random_table(rng: np.random.Generator, shape: tuple[int, ...], zeros: float) -> np.ndarray:
    t: np.ndarray = rng.integers(1, 4, shape, dtype=np.uint64) * _U64(0x9E3779B97F4A7C15)
    t[rng.random(shape) < zeros] = 0
    return t


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 3), st.integers(1, 3), st.integers(1, 9))
def test_sums_are_the_numpy_sums(seed: int, layers: int, heads: int, width: int) -> None:
    rng = np.random.default_rng(seed)
    table = random_table(rng, (layers, 2, heads, width), 0.3)
    rows = layers * 2 * heads
    assert kv_table_range_sum(table, rows, width, 0, width) == ref_sum(table)
    first, last = sorted(int(x) for x in rng.integers(0, width + 1, 2))
    part = np.ascontiguousarray(table[..., first:last])
    got = kv_table_range_sum(table, rows, width, first, last)
    block = np.zeros_like(table)
    block[..., first:last] = part
    assert got == ref_sum(block)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 12),
    st.integers(0, 12),
    st.integers(0, 13),
    st.integers(0, 100),
)
def test_plans_are_the_numpy_plans(
    seed: int, tokens: int, held: int, first: int, budget: int
) -> None:
    rng = np.random.default_rng(seed)
    layers, heads, pt, row_bytes = 2, 2, 3, 5
    pages = -(-tokens // pt)
    mine = random_table(rng, (layers, 2, heads, max(pages, 1) + 1), 0.1)
    mine[..., pages:] = 0
    acked = random_table(rng, (layers, 2, heads, max(pages, first, 1) + 2), 0.3)
    held = min(held, tokens)
    tail_page = held // pt if held % pt and held < tokens else -1
    want_runs, want_bytes, want_resume = ref_plan(
        mine, acked, first, tokens, held, pt, row_bytes, tail_page, budget
    )
    rows = layers * 2 * heads
    before = acked.copy()
    plan = kv_plan_diff(
        mine,
        acked,
        rows,
        mine.shape[-1],
        acked.shape[-1],
        heads,
        first,
        pages,
        tokens,
        held,
        pt,
        row_bytes,
        None if tail_page < 0 else tail_page,
        budget,
        acked.shape[-1],
        False,
    )
    assert plan is not None
    runs, sent, used, resume, delta, _end = plan
    got = [
        (
            lk >> 1,
            lk & 1,
            offset,
            np.frombuffer(h, "<u4").tolist(),
            np.frombuffer(p, "<u4").tolist(),
        )
        for lk, offset, h, p, _x in runs
    ]
    assert got == want_runs
    assert used == want_bytes
    assert resume == want_resume
    assert sent == sum(len(r[3]) for r in want_runs)
    for lk, _offset, h, p, x in runs:
        hh, pp = np.frombuffer(h, "<u4"), np.frombuffer(p, "<u4")
        assert np.array_equal(np.frombuffer(x, "<u8"), mine[lk >> 1, lk & 1, hh, pp])
    # What the peer holds now: nothing from our last page on, then the pages sent.
    want = before.copy()
    want[..., pages:] = 0
    for layer, kind, _offset, hs, ps in want_runs:
        want[layer, kind, hs, ps] = mine[layer, kind, hs, ps]
    assert np.array_equal(acked, want)
    assert (ref_sum(before) + delta) % 2**64 == ref_sum(acked)


def test_an_unchanged_table_plans_nothing_and_writes_nothing() -> None:
    mine = np.arange(1, 9, dtype=np.uint64).reshape(1, 2, 2, 2)
    acked = mine.copy()
    args = (4, 2, 2, 2, 0, 2, 4, 4, 2, 10, None, 1000, 2)
    assert kv_plan_diff(mine, acked, *args, True) is None
    plan = kv_plan_diff(mine, acked, *args, False)  # the sums differ: say so
    assert plan is not None and plan[0] == [] and plan[4] == 0


def test_tables_refuse_bad_shapes_and_aliases() -> None:
    t = np.zeros((1, 2, 2, 4), np.uint64)
    with pytest.raises(InvalidArgumentError):
        kv_table_range_sum(t, 4, 5, 0, 1)
    with pytest.raises(InvalidArgumentError):
        kv_table_set_range(t, 4, 4, 3, np.ones((1, 2, 2, 2), np.uint64))
    with pytest.raises(InvalidArgumentError):
        kv_table_set_range(t, 4, 4, 0, t)
    with pytest.raises(InvalidArgumentError):
        kv_table_cut(t.view(np.uint8)[:-1], 4, 4, 0, 4)
    h = np.zeros(1, np.uint32)
    with pytest.raises(InvalidArgumentError):  # head 2 of 2
        kv_table_set_pages(t, 4, 4, 2, 0, h + 2, h, np.ones(1, np.uint64))
    with pytest.raises(InvalidArgumentError):  # rows 3..5 of 4
        kv_table_set_pages(t, 4, 4, 2, 3, h, h, np.ones(1, np.uint64))
    assert kv_table_set_pages(t, 4, 4, 2, 0, h, h + 9, np.ones(1, np.uint64)) == (None, 10)
    args = (4, 4, 4, 2, 0, 4, 4, 0, 2, 10, None, 1000, 4, False)
    with pytest.raises(InvalidArgumentError):
        kv_plan_diff(t, t, *args)
    with pytest.raises(InvalidArgumentError):  # 4 pages of 2 rows are not 5 tokens
        kv_plan_diff(t, t.copy(), 4, 4, 4, 2, 0, 4, 5, 0, 2, 10, None, 1000, 4, False)
    assert not t.any()


def test_set_pages_grows_the_table_and_keeps_the_sum() -> None:
    t = PageTable(1, 2)
    t.set_pages(0, 1, np.array([1, 0], np.uint32), np.array([7, 2], np.uint32), np.array([5, 6]))
    assert t.hashes.shape[-1] >= 8
    assert t.hashes[0, 1, 1, 7] == 5 and t.hashes[0, 1, 0, 2] == 6
    fresh = PageTable(1, 2)
    fresh.set_range(0, t.hashes.copy())
    assert t.same_pages(fresh) and t._sum == ref_sum(t.hashes)


def test_a_decode_step_sends_two_page_tails_and_digests_agree() -> None:
    """The small-write cycle end to end: one token row appended rewrites the
    last page of K and of V; only their new rows travel."""
    a, b = Memory("agent"), Memory("hub")
    up, down = Link(a, "hub", role="client"), Link(b, "agent", role="server")
    cache = KVCache(1, 1, 64, "q4_0", page_tokens=16)
    a.kv["ctx"] = cache
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 1, 40, 64), dtype=np.float32)
    cache.append(x, x)

    def sync() -> list[int]:
        sizes = []
        for _ in range(20):
            f = up.outgoing()
            assert f is not None
            down.incoming(f)
            r = down.outgoing()
            sizes.append(len(f))
            if r is not None:
                up.incoming(r)
            if up.idle and down.idle:
                break
        return sizes

    sync()
    for step in range(40):
        row = rng.integers(0, 256, (1, 1, 1, cache.row_bytes), dtype=np.uint8)
        sent = up.metrics.kv_page_bytes_sent
        cache.append_quantized(row, row)
        sync()
        # Two tails of one row each (a new page's first row is a whole page).
        assert up.metrics.kv_page_bytes_sent - sent == 2 * cache.row_bytes, step
        mirror = b.kv["ctx"]
        assert mirror.digest() == cache.digest() and mirror.tokens == cache.tokens
        assert np.array_equal(mirror.quantized(0, "v"), cache.quantized(0, "v"))


def test_table_kernels_refuse_absurd_shapes_without_panicking_or_spinning() -> None:
    """A table without pages passes any size check, whatever its row count:
    the kernels bound the rows (a panic or a 2**61-step loop otherwise)."""
    with pytest.raises(InvalidArgumentError):
        kv_table_set_range(bytearray(), 2**61, 0, 0, b"")
    with pytest.raises(InvalidArgumentError):
        kv_table_range_sum(b"", 2**61, 0, 0, 0)
    with pytest.raises(InvalidArgumentError):
        kv_table_cut(bytearray(), 2**40, 0, 0, 0)


def test_a_plan_that_fails_changes_nothing() -> None:
    """A tail that does not start inside its page is refused before the
    peer's table is cut (the caller's running sum would be wrong for good)."""
    mine = np.arange(1, 9, dtype=np.uint64).reshape(1, 2, 2, 2)
    acked = np.zeros_like(mine)
    acked[..., 0] = mine[..., 0]
    before = acked.copy()
    # 2 pages of 2 rows, 4 tokens, all held by the peer: page 1 has no tail.
    args = (4, 2, 2, 2, 0, 2, 4, 4, 2, 10, 1, 1000, 2)
    with pytest.raises(InvalidArgumentError):
        kv_plan_diff(mine, acked, *args, False)
    assert np.array_equal(acked, before)


def test_kernels_refuse_a_destination_sharing_memory_with_a_source() -> None:
    buf = bytearray(64 * 4)
    with pytest.raises(InvalidArgumentError):
        kv_quantize(buf, "f32", 64, "q8_0", buf)
    src = np.zeros(64, np.float32)
    with pytest.raises(InvalidArgumentError):
        kv_quantize(src, "f32", 64, "q8_0", src.view(np.uint8)[:34])
