"""The receiving side of KV pages in one core call each: decoded entries
built by the core (the same values as the Python reference decoder), pages
written and the page table brought up to date by ``kv_apply_pages`` (written
pages take the hashes checked while writing, so the table always holds the
hash of the rows held), the peer's table by ``kv_table_set_runs``, and what
these calls refuse."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridsync import Link, Memory
from hybridsync import frame as F
from hybridsync._core import PageGather, kv_apply_pages, kv_hash_pages
from hybridsync.channels.events import Origin
from hybridsync.errors import DecodeError, HybridSyncError, InvalidArgumentError
from hybridsync.kv import KVCache, PageTable


def rows(rng: np.random.Generator, cache: KVCache, n: int) -> tuple[np.ndarray, np.ndarray]:
    shape = (cache.layers, cache.kv_heads, n, cache.head_dim)
    return (
        rng.standard_normal(shape).astype(np.float32),
        rng.standard_normal(shape).astype(np.float32),
    )


def true_table(cache: KVCache) -> np.ndarray:
    """Every page hashed afresh from the rows held."""
    g = cache.geometry
    pages = cache.pages
    out = np.zeros((g.layers, 2, g.kv_heads, pages), np.uint64)
    tmp = np.empty((g.kv_heads, pages), np.uint64)
    for i, buf in enumerate(cache._tensors):
        kv_hash_pages(
            buf.reshape(-1),
            g.kv_heads,
            buf.shape[1],
            cache.row_bytes,
            g.page_tokens,
            cache.tokens,
            0,
            pages,
            tmp,
        )
        out[i // 2, i % 2] = tmp
    return out


def pair() -> tuple[Memory, Memory, Link, Link]:
    a, b = Memory("agent"), Memory("hub")
    return a, b, Link(a, "hub", role="client"), Link(b, "agent", role="server")


def settle(up: Link, down: Link) -> None:
    for _ in range(50):
        f = up.outgoing()
        assert f is not None
        down.incoming(f)
        r = down.outgoing()
        if r is not None:
            up.incoming(r)
        if up.idle and down.idle:
            return
    raise AssertionError("the links did not go idle")


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    steps=st.lists(st.integers(-6, 40), min_size=1, max_size=8),
    budget=st.sampled_from([1 << 20, 2000]),
)
def test_mirror_tables_always_hold_the_hashes_of_their_rows(
    seed: int, steps: list[int], budget: int
) -> None:
    """Appends of any size (tails, whole pages, several frames under a small
    budget) and truncations: after every exchange the mirror's table equals
    its rows hashed afresh, and both sides agree when idle."""
    a, b = Memory("agent"), Memory("hub")
    up = Link(a, "hub", role="client", kv_frame_bytes=budget)
    down = Link(b, "agent", role="server", kv_frame_bytes=budget)
    rng = np.random.default_rng(seed)
    cache = KVCache(2, 2, 64, "q4_0", page_tokens=4)
    a.kv["c"] = cache
    for n in steps:
        if n < 0:
            cache.truncate(max(0, cache.tokens + n))
        elif n:
            cache.append(*rows(rng, cache, n))
        for _ in range(50):
            f = up.outgoing()
            assert f is not None
            down.incoming(f)
            mirror = b.kv.get("c")
            if mirror is not None:
                mirror.refresh()
                np.testing.assert_array_equal(
                    mirror.page_table.hashes[..., : mirror.pages], true_table(mirror)
                )
            r = down.outgoing()
            if r is not None:
                up.incoming(r)
            if up.idle and down.idle:
                break
        mirror = b.kv["c"]
        assert mirror.tokens == cache.tokens
        assert mirror.digest() == cache.digest()
        assert mirror.scan() == 0


def test_decoded_kv_entries_are_the_reference_decoders() -> None:
    a, _, up, down = pair()
    cache = KVCache(2, 2, 64, "q8_0", page_tokens=8)
    a.kv["c"] = cache
    cache.append(*rows(np.random.default_rng(1), cache, 13))
    settle(up, down)
    cache.append(*rows(np.random.default_rng(1), cache, 21))  # tails and whole pages
    data = up.outgoing()
    assert data is not None
    got, want = F.decode_frame(data), F._py_decode_frame(data)
    (e,) = got.kv
    (w,) = want.kv
    assert type(e) is F.KVEntry and type(e.geometry) is F.Geometry
    assert e.geometry == w.geometry and hash(e.geometry) == hash(w.geometry)
    assert e.kind is w.kind and (e.name, e.owner, e.uid) == (w.name, w.owner, w.uid)
    assert (e.tokens, e.digest, e.flags, e.table) == (w.tokens, w.digest, w.flags, None)
    assert len(e.runs) == len(w.runs) > 0
    for r, s in zip(e.runs, w.runs, strict=True):
        assert type(r) is F.KVRun
        assert (r.layer, r.kind, r.offset, bytes(r.payload)) == (
            s.layer,
            s.kind,
            s.offset,
            bytes(s.payload),
        )
        for x, y in ((r.heads, s.heads), (r.pages, s.pages), (r.hashes, s.hashes)):
            assert x.dtype == y.dtype and x.flags.writeable and x.flags.c_contiguous
            np.testing.assert_array_equal(x, y)
        assert isinstance(r.payload, memoryview) and r.payload.obj is data
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.runs[0].layer = 1  # type: ignore[misc]
    # The frame's own fields are as before.
    assert dataclasses.replace(got, kv=()) == dataclasses.replace(want, kv=())


def test_a_have_table_decodes_to_its_shape() -> None:
    g = F.Geometry(2, 3, 64, "q4_0", 4, "f16")
    table = np.arange(1, 2 * 2 * 3 * 3 + 1, dtype=np.uint64).reshape(2, 2, 3, 3)
    e = F.KVEntry("c", F.KVKind.HAVE, "o", 5, g, 10, 7, table=table)
    frame = F.decode_frame(F.encode_frame(F.Frame("s", 1, 1, False, kv=(e,))))
    (got,) = frame.kv
    assert got.table is not None and got.table.shape == (2, 2, 3, 3)
    np.testing.assert_array_equal(got.table, table)
    assert got == dataclasses.replace(got)  # a plain dataclass instance


def test_set_runs_is_set_pages_per_run() -> None:
    rng = np.random.default_rng(2)
    one, many = PageTable(3, 2), PageTable(3, 2)
    runs = []
    for layer, kind in ((0, 1), (2, 0), (1, 1)):
        n = 3
        heads = rng.integers(0, 2, n).astype(np.uint32)
        pages = np.array([0, 4, 9], np.uint32)
        hashes = rng.integers(1, 2**63, n).astype(np.uint64)
        runs.append(F.KVRun(layer, kind, heads, pages, hashes, b""))
        many.set_pages(layer, kind, heads, pages, hashes)
    one.set_runs(runs)  # grows the table first
    assert one.digest() == many.digest()
    np.testing.assert_array_equal(one.hashes[..., :10], many.hashes[..., :10])
    # A head or a kind out of range: refused, nothing written.
    before = one.hashes.copy()
    bad = dataclasses.replace(runs[0], heads=np.array([0, 2, 0], np.uint32))
    with pytest.raises(InvalidArgumentError):
        one.set_runs([runs[1], bad])
    with pytest.raises(InvalidArgumentError):
        one.set_runs([dataclasses.replace(runs[1], kind=2)])
    with pytest.raises(InvalidArgumentError):
        one.set_runs([dataclasses.replace(runs[1], layer=3)])
    np.testing.assert_array_equal(one.hashes, before)


def _cache_and_run(tokens: int = 10) -> tuple[KVCache, F.KVRun, np.ndarray]:
    src = KVCache(1, 2, 64, "q4_0", page_tokens=4)
    src.append(*rows(np.random.default_rng(3), src, tokens))
    src.refresh()
    heads = np.array([0, 1], np.uint32)
    pages = np.array([1, 1], np.uint32)
    hashes = src.page_table.hashes[0, 0, [0, 1], 1].copy()
    run = F.KVRun(0, 0, heads, pages, hashes, src.gather_pages(0, 0, heads, pages, 0))
    dst = KVCache(1, 2, 64, "q4_0", page_tokens=4)
    dst._reserve(tokens)
    dst._tokens = tokens
    table = np.zeros((2 * 2, 4), np.uint64)
    return dst, run, table


def _apply(dst: KVCache, runs: list[F.KVRun], table: np.ndarray) -> tuple[int, bool, int]:
    return kv_apply_pages(
        dst._tensors, 2, dst._capacity, dst.row_bytes, 4, dst.tokens, runs, 10, 3, table, 4
    )


def test_apply_pages_refuses_bad_pages_and_bad_arguments() -> None:
    dst, run, table = _cache_and_run()
    first, diverged, _ = _apply(dst, [run], table)
    assert (first, diverged) == (4, False)
    np.testing.assert_array_equal(table[[0, 1], 1], run.hashes)
    # A whole page that does not match its hash.
    bad = bytearray(run.payload)
    bad[3] ^= 1
    with pytest.raises(DecodeError):
        _apply(dst, [dataclasses.replace(run, payload=bytes(bad))], table)
    for broken in (
        dataclasses.replace(run, kind=2),
        dataclasses.replace(run, layer=1),
        dataclasses.replace(run, heads=np.array([0, 2], np.uint32)),
        dataclasses.replace(run, hashes=run.hashes[:1]),
        dataclasses.replace(run, heads=np.array([0, 1, 1, 0], np.uint32)[::2]),
        dataclasses.replace(run, payload=np.frombuffer(run.payload, np.uint8)[::2]),
    ):
        with pytest.raises(HybridSyncError):
            _apply(dst, [broken], table)
    readonly = table.copy()
    readonly.flags.writeable = False
    with pytest.raises(InvalidArgumentError, match="writable"):
        _apply(dst, [run], readonly)
    with pytest.raises(InvalidArgumentError, match="C-contiguous"):
        _apply(dst, [run], np.zeros((4, 8), np.uint64)[:, ::2])
    with pytest.raises(InvalidArgumentError):
        _apply(dst, [run], np.zeros((4, 3), np.uint64))  # too narrow
    # Memory written must not be read or written through another argument.
    tensor = dst._tensors[0]
    alias = dataclasses.replace(run, payload=tensor.reshape(-1)[: len(run.payload)])
    with pytest.raises(InvalidArgumentError, match="share"):
        _apply(dst, [alias], table)
    with pytest.raises(InvalidArgumentError, match="share"):
        kv_apply_pages(
            [tensor, tensor], 2, dst._capacity, dst.row_bytes, 4, 10, [], 10, 3, table, 4
        )


def test_diverged_tails_are_left_out_and_the_table_stays_true() -> None:
    """Tails whose page prefix differs here are not written; the pages keep
    the hashes of the rows held."""
    dst, run, table = _cache_and_run()
    _apply(dst, [run], table)
    rb = dst.row_bytes
    p = bytes(run.payload)
    tail = dataclasses.replace(run, payload=p[rb : 4 * rb] + p[5 * rb : 8 * rb], offset=1)
    before = [t.copy() for t in dst._tensors]
    dst._tensors[0][0, 4] ^= 1  # row 4 of head 0 (page 1) differs now
    changed = dst._tensors[0].copy()
    first, diverged, _ = _apply(dst, [tail], table)
    assert (first, diverged) == (5, True)
    np.testing.assert_array_equal(dst._tensors[0], changed)
    np.testing.assert_array_equal(dst._tensors[1], before[1])
    np.testing.assert_array_equal(table[:, 1:3], true_table(dst).reshape(4, 3)[:, 1:3])
    # The same tails onto the rows they complete: written, and the pages
    # take their hashes.
    dst._tensors[0][0, 4] ^= 1
    dst._tensors[0][:, 5:8] = 0
    first, diverged, _ = _apply(dst, [tail], table)
    assert (first, diverged) == (5, False)
    np.testing.assert_array_equal(dst._tensors[0], before[0])
    np.testing.assert_array_equal(table[[0, 1], 1], run.hashes)


def test_apply_failure_marks_the_whole_table_stale() -> None:
    """A run refused after others were written leaves the cache to rehash
    every page at its next refresh: the table never lies about its rows."""
    a, b, up, down = pair()
    cache = KVCache(1, 1, 64, "q4_0", page_tokens=4)
    a.kv["c"] = cache
    cache.append(*rows(np.random.default_rng(5), cache, 9))
    settle(up, down)
    mirror = b.kv["c"]
    cache.append(*rows(np.random.default_rng(6), cache, 8))
    frame = F.decode_frame(up.outgoing() or b"")
    (entry,) = frame.kv
    good = next(r for r in entry.runs if r.offset == 0)
    bad = dataclasses.replace(good, kind=1 - good.kind, payload=bytes(len(good.payload)))
    with pytest.raises(DecodeError):
        mirror._apply(dataclasses.replace(entry, runs=(good, bad)), None, Origin("local"))
    assert mirror._stale_from == 0
    mirror.refresh()
    np.testing.assert_array_equal(mirror.page_table.hashes[..., : mirror.pages], true_table(mirror))


def test_sender_side_constructors_make_the_same_instances() -> None:
    h = np.array([0, 1], np.uint32)
    run = F._kv_run(1, 0, h, h, h.astype(np.uint64), b"xy", 3)
    ref = F.KVRun(1, 0, h, h, h.astype(np.uint64), b"xy", 3)
    assert repr(run) == repr(ref)
    assert vars(run).keys() == vars(ref).keys()
    g = F.Geometry(1, 2, 64, "q4_0", 4, "f16")
    e = F._kv_pages("c", "o", 9, g, 5, 7, F.KV_COMPLETE, (run,))
    want = F.KVEntry("c", F.KVKind.PAGES, "o", 9, g, 5, 7, F.KV_COMPLETE, (ref,))
    assert repr(e) == repr(want) and vars(e).keys() == vars(want).keys()
    assert dataclasses.replace(e, runs=()) == dataclasses.replace(want, runs=())
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.tokens = 1  # type: ignore[misc]
    data = F.encode_frame(F.Frame("s", 1, 1, False, kv=(e,)))
    assert data == F.encode_frame(F.Frame("s", 1, 1, False, kv=(want,)))


def test_a_plan_with_the_tensors_carries_its_payloads_where_they_lie() -> None:
    rng = np.random.default_rng(7)
    cache = KVCache(2, 3, 64, "q4_0", page_tokens=4)
    cache.append(*rows(rng, cache, 9))
    cache.refresh()
    held = PageTable(2, 3)
    block = cache.page_table.hashes[..., :2].copy()
    block[..., 1] = 12345  # the hash of the rows 4..5 the peer holds
    held.set_range(0, block)
    held.tokens = 6  # the peer lacks rows 6.. (a tail of page 1) and page 2
    mine = cache.page_table
    plain = held.copy().take_diff(mine, 1, 9, 4, cache.row_bytes, 1, 1 << 20)
    with_payloads = held.take_diff(mine, 1, 9, 4, cache.row_bytes, 1, 1 << 20, cache)
    assert plain is not None and with_payloads is not None
    assert plain[1:] == with_payloads[1:]
    assert {r[1] for r in plain[0]} == {0, 2}  # whole pages and tails
    for r, w in zip(plain[0], with_payloads[0], strict=True):
        assert tuple(w[:5]) == tuple(r)
        lk, offset, heads, pages = r[:4]
        want = cache.gather_pages(
            lk >> 1,
            lk & 1,
            np.frombuffer(heads, np.uint32),
            np.frombuffer(pages, np.uint32),
            offset,
        )
        # The payload stays where it lies (a PageGather of the tensor's rows):
        # its bytes are the gathered pages, and a frame carries them as such.
        assert isinstance(w[5], PageGather) and not isinstance(w[5], bytes)
        assert len(w[5]) == len(want) and bytes(w[5]) == want
        run = F._kv_run(
            lk >> 1,
            lk & 1,
            np.frombuffer(heads, np.uint32),
            np.frombuffer(pages, np.uint32),
            np.frombuffer(r[4], np.uint64),
            w[5],
            offset,
        )
        g = cache.geometry
        gathered = F.Frame("s", 1, 1, False, kv=(F._kv_pages("c", "o", 9, g, 9, 0, 0, (run,)),))
        copied = dataclasses.replace(run, payload=want)
        plain_frame = F.Frame(
            "s", 1, 1, False, kv=(F._kv_pages("c", "o", 9, g, 9, 0, 0, (copied,)),)
        )
        assert F.encode_frame(gathered) == F.encode_frame(plain_frame)
        assert F.encode_frame(gathered) == F._py_encode_frame(gathered)
        data = F.encode_frame(gathered)
        decoded = F.decode_frame(data).kv[0].runs[0]
        assert bytes(decoded.payload) == want
        # A changed payload byte is caught: whole pages by their page hashes
        # (which the frame checksum leaves their bytes to), tails by the
        # frame checksum; the same by the Python reference decoder.
        at = data.index(want)
        bad = bytearray(data)
        bad[at + len(want) // 2] ^= 0x10
        for decode in (F.decode_frame, F._py_decode_frame):
            with pytest.raises(DecodeError, match="hash" if offset == 0 else "checksum"):
                decode(bytes(bad))
    # Tensors that do not match the table: refused before anything is written.
    other = PageTable(2, 3)
    before = other.hashes.copy()
    small = KVCache(1, 3, 64, "q4_0", page_tokens=4)
    small.append(*rows(rng, small, 9))
    with pytest.raises(InvalidArgumentError):
        other.take_diff(mine, 0, 9, 4, cache.row_bytes, None, 1 << 20, small)
    np.testing.assert_array_equal(other.hashes[..., : before.shape[-1]], before)
