"""The KVCache API: appending, reading, page hashes, errors and ownership."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridsync import Memory, kv
from hybridsync.errors import HybridSyncError, InvalidArgumentError, OwnershipError
from hybridsync.kv import KVCache
from hybridsync.sim import Network

try:
    import mlx.core as mx
except ImportError:  # mlx is a dev dependency on Linux and macOS only
    mx = None

requires_mlx = pytest.mark.skipif(mx is None, reason="mlx is not installed")

LAYERS, HEADS, HEAD_DIM = 2, 3, 64
KINDS = ("k", "v")


def rand(tokens: int, seed: int, dtype: type = np.float32, scale: float = 1.0) -> np.ndarray:
    """Keys or values ``[LAYERS, HEADS, tokens, HEAD_DIM]``."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((LAYERS, HEADS, tokens, HEAD_DIM)) * scale).astype(dtype)


def make(fmt: str, page_tokens: int = 4, scale_type: str = "f16") -> KVCache:
    return KVCache(LAYERS, HEADS, HEAD_DIM, fmt, page_tokens, scale_type=scale_type)


def filled(fmt: str, tokens: int = 7, page_tokens: int = 4, seed: int = 0) -> KVCache:
    c = make(fmt, page_tokens)
    c.append(rand(tokens, seed), rand(tokens, seed + 1))
    return c


def snapshot(c: KVCache) -> tuple[object, ...]:
    """Everything observable about a cache's content."""
    rows = tuple(c.quantized(layer, kind).tobytes() for layer in range(c.layers) for kind in KINDS)
    return (c.tokens, c.pages, c.nbytes, c.digest(), c.page_hashes().tobytes(), rows)


def assert_same_cache(a: KVCache, b: KVCache) -> None:
    assert (a.tokens, a.pages, a.nbytes) == (b.tokens, b.pages, b.nbytes)
    for layer in range(a.layers):
        for kind in KINDS:
            qa, qb = a.quantized(layer, kind), b.quantized(layer, kind)
            assert qa.shape == qb.shape
            assert qa.tobytes() == qb.tobytes(), (layer, kind)
    np.testing.assert_array_equal(a.page_hashes(), b.page_hashes())
    assert a.digest() == b.digest()


def codec_scale_type(fmt: str, scale_type: str) -> str:
    return scale_type if fmt == "mlx4" else "f16"


# -- appending and reading -----------------------------------------------------------

#: (format, input type, cache scale type): every format with every input
#: type, and mlx4 with each scale type (inputs of another type are rounded).
APPEND_CASES = [
    (fmt, src, "f16") for fmt in ("q4_0", "q8_0", "f16") for src in ("f32", "f16", "bf16")
] + [("mlx4", src, st) for src in ("f32", "f16", "bf16") for st in ("f16", "bf16", "f32")]


def as_input(x: np.ndarray, src: str) -> object:
    if src == "f32":
        return x
    if src == "f16":
        return x.astype(np.float16)
    if mx is None:
        pytest.skip("mlx is not installed")
    return mx.array(x).astype(mx.bfloat16)


@pytest.mark.parametrize(("fmt", "src", "scale_type"), APPEND_CASES)
def test_append_stores_the_codec_rows(fmt: str, src: str, scale_type: str) -> None:
    """Every stored row is ``quantize`` of that token's head vector, read back
    as ``dequantize`` of it; ``tokens``, ``pages``, ``row_bytes`` and
    ``nbytes`` follow. Two appends (the second one growing the buffers)."""
    c = make(fmt, page_tokens=4, scale_type=scale_type)
    st_ = codec_scale_type(fmt, scale_type)
    assert (c.tokens, c.pages, c.nbytes) == (0, 0, 0)
    keys, values = [], []
    for n, seed in ((5, 1), (11, 2)):
        k, v = as_input(rand(n, seed, scale=3.0), src), as_input(rand(n, seed + 10), src)
        c.append(k, v)
        keys.append(k)
        values.append(v)
    tokens = 16
    assert (c.tokens, c.pages) == (tokens, 4)
    row_bytes = kv.quantize(np.zeros((1, HEAD_DIM), np.float32), fmt, scale_type=st_).shape[-1]
    assert c.row_bytes == row_bytes
    assert c.nbytes == LAYERS * 2 * HEADS * tokens * row_bytes

    for layer in range(LAYERS):
        for kind, parts, read in (("k", keys, c.keys), ("v", values, c.values)):
            got_q = c.quantized(layer, kind)
            got = read(layer)
            assert got_q.shape == (HEADS, tokens, row_bytes)
            assert got.shape == (HEADS, tokens, HEAD_DIM)
            assert got.dtype == np.float32
            for h in range(HEADS):
                want_q = np.concatenate(
                    [kv.quantize(p[layer, h], fmt, scale_type=st_) for p in parts]
                )
                np.testing.assert_array_equal(got_q[h], want_q)
                want = kv.dequantize(want_q, fmt, HEAD_DIM, scale_type=st_)
                np.testing.assert_array_equal(got[h].view(np.uint32), want.view(np.uint32))


@requires_mlx
@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16", "float32"])
def test_mlx_arrays_are_what_mlx_quantize_returns(dtype_name: str) -> None:
    """An mlx4 cache fed mlx arrays of the model's dtype holds exactly what
    ``mx.quantize(..., group_size=64, bits=4)`` gives for each head."""
    scale_type = {"bfloat16": "bf16", "float16": "f16", "float32": "f32"}[dtype_name]
    dtype = getattr(mx, dtype_name)
    c = make("mlx4", page_tokens=4, scale_type=scale_type)
    k = mx.array(rand(6, 3)).astype(dtype)
    v = mx.array(rand(6, 4)).astype(dtype)
    c.append(k, v)
    bits = mx.uint32 if dtype_name == "float32" else mx.uint16
    for layer in range(LAYERS):
        for kind, x in (("k", k), ("v", v)):
            w, s, b = c.mlx_arrays(layer, kind)
            assert w.shape == (HEADS, 6, HEAD_DIM // 8)
            assert s.shape == b.shape == (HEADS, 6, HEAD_DIM // 64)
            for h in range(HEADS):
                rw, rs, rb = mx.quantize(x[layer, h], group_size=64, bits=4)
                np.testing.assert_array_equal(w[h], np.array(rw))
                np.testing.assert_array_equal(s[h].view(np.dtype(f"u{s.itemsize}")), rs.view(bits))
                np.testing.assert_array_equal(b[h].view(np.dtype(f"u{b.itemsize}")), rb.view(bits))


def test_f16_format_rounds_large_values_to_infinity() -> None:
    """The documented exception to the finite rule: ``"f16"`` rows of finite
    float32 values beyond 65504 hold infinities (as llama.cpp's F16 cache)."""
    c = make("f16")
    k = rand(2, 5)
    k[0, 0, 0, 0], k[1, 2, 1, 63] = 1e6, -7e4
    c.append(k, rand(2, 6))
    assert c.keys(0)[0, 0, 0] == math.inf
    assert c.keys(1)[2, 1, 63] == -math.inf


def test_append_of_zero_tokens_changes_nothing() -> None:
    c = filled("q8_0")
    before = snapshot(c)
    c.append(rand(0, 1), rand(0, 2))
    assert snapshot(c) == before


# -- chunking, truncation and page hashes ----------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    fmt=st.sampled_from(kv.FORMATS),
    page_tokens=st.integers(1, 6),
    chunks=st.lists(st.integers(0, 9), min_size=1, max_size=6),
    refresh=st.lists(st.booleans(), min_size=6, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_chunked_appends_equal_one_append(
    fmt: str, page_tokens: int, chunks: list[int], refresh: list[bool], seed: int
) -> None:
    """Appending in chunks leaves byte-identical rows, page hashes and digest
    to appending everything at once (what lets links send page diffs),
    whether or not the hashes were refreshed in between."""
    total = sum(chunks)
    k, v = rand(total, seed, scale=2.0), rand(total, seed + 1)
    whole = make(fmt, page_tokens)
    whole.append(k, v)
    parts = make(fmt, page_tokens)
    t = 0
    for n, r in zip(chunks, refresh, strict=False):
        parts.append(k[:, :, t : t + n], v[:, :, t : t + n])
        t += n
        if r:
            parts.page_hashes()
    assert_same_cache(parts, whole)


@settings(max_examples=50, deadline=None)
@given(
    fmt=st.sampled_from(kv.FORMATS),
    page_tokens=st.integers(1, 6),
    n=st.integers(0, 20),
    cut=st.floats(0.0, 1.0),
    m=st.integers(0, 10),
    refresh=st.lists(st.booleans(), min_size=3, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_truncate_then_append_equals_prefix_then_append(
    fmt: str, page_tokens: int, n: int, cut: float, m: int, refresh: list[bool], seed: int
) -> None:
    t = round(cut * n)
    k, v = rand(n, seed), rand(n, seed + 1)
    k2, v2 = rand(m, seed + 2, scale=5.0), rand(m, seed + 3)

    a = make(fmt, page_tokens)
    a.append(k, v)
    if refresh[0]:
        a.page_hashes()
    a.truncate(t)
    if refresh[1]:
        a.digest()
    prefix = make(fmt, page_tokens)
    prefix.append(k[:, :, :t], v[:, :, :t])
    assert_same_cache(a, prefix)

    a.append(k2, v2)
    if refresh[2]:
        a.page_hashes()
    prefix.append(k2, v2)
    assert_same_cache(a, prefix)


@settings(max_examples=50, deadline=None)
@given(
    fmt=st.sampled_from(kv.FORMATS),
    page_tokens=st.integers(1, 8),
    n0=st.integers(0, 30),
    m=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_append_changes_only_pages_from_the_old_end(
    fmt: str, page_tokens: int, n0: int, m: int, seed: int
) -> None:
    """Appending to a cache of ``n0`` tokens keeps the hashes of every page
    before page ``n0 // page_tokens``; that page changes if it gained rows,
    and every page held has a hash (0 means no page)."""
    c = make(fmt, page_tokens)
    c.append(rand(n0, seed), rand(n0, seed + 1))
    h0 = c.page_hashes()
    assert h0.shape == (LAYERS, 2, HEADS, math.ceil(n0 / page_tokens))
    assert h0.dtype == np.uint64
    c.append(rand(m, seed + 2), rand(m, seed + 3))
    h1 = c.page_hashes()
    assert h1.shape == (LAYERS, 2, HEADS, math.ceil((n0 + m) / page_tokens))
    assert (h1 != 0).all()
    first = n0 // page_tokens
    np.testing.assert_array_equal(h1[..., :first], h0[..., :first])
    if n0 % page_tokens:
        assert (h1[..., first] != h0[..., first]).all()


@pytest.mark.parametrize("fmt", kv.FORMATS)
def test_truncate_keeps_the_pages_before_the_cut(fmt: str) -> None:
    c = filled(fmt, tokens=13, page_tokens=4)
    h0 = c.page_hashes()
    c.truncate(6)
    h1 = c.page_hashes()
    assert h1.shape[-1] == 2
    np.testing.assert_array_equal(h1[..., :1], h0[..., :1])
    assert (h1[..., 1] != h0[..., 1]).all()
    c.truncate(6)  # to the current length: nothing happens
    np.testing.assert_array_equal(c.page_hashes(), h1)
    c.truncate(0)
    assert (c.tokens, c.pages, c.nbytes) == (0, 0, 0)
    assert c.page_hashes().shape == (LAYERS, 2, HEADS, 0)
    assert c.digest() == make(fmt).digest()


@pytest.mark.parametrize("fmt", kv.FORMATS)
def test_scan_is_zero_on_an_untouched_cache(fmt: str) -> None:
    c = make(fmt, page_tokens=3)
    assert c.scan() == 0
    c.append(rand(8, 1), rand(8, 2))
    assert c.scan() == 0
    c.truncate(4)
    assert c.scan() == 0
    c.append(rand(5, 3), rand(5, 4))
    c.page_hashes()
    assert c.scan() == 0
    assert c.scan() == 0


@pytest.mark.parametrize("fmt", kv.FORMATS)
def test_scan_catches_memory_changed_behind_the_api(fmt: str) -> None:
    c = filled(fmt, tokens=9, page_tokens=4)
    h0, d0 = c.page_hashes(), c.digest()
    c._bufs[0][1][0, 0, 0] ^= 1  # layer 0, values, head 0, token 0 (page 0)
    assert c.scan() >= 1
    h1 = c.page_hashes()
    changed = h1 != h0
    assert changed[0, 1, 0, 0]
    assert changed.sum() == 1
    assert c.digest() != d0
    assert c.scan() == 0

    c._bufs[0][1][0, 0, 0] ^= 1  # undo
    assert c.scan() >= 1
    np.testing.assert_array_equal(c.page_hashes(), h0)
    assert c.digest() == d0


# -- views ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", kv.FORMATS)
def test_quantized_is_a_read_only_zero_copy_view(fmt: str) -> None:
    c = filled(fmt)
    a, b = c.quantized(1, "v"), c.quantized(1, "v")
    assert a.dtype == np.uint8
    assert a.shape == (HEADS, c.tokens, c.row_bytes)
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[0, 0, 0] = 1
    with pytest.raises(ValueError):
        a[...] = 0
    assert np.shares_memory(a, b)
    assert np.shares_memory(a, c._bufs[1][1])
    assert not np.shares_memory(a, c.quantized(1, "k"))
    assert not np.shares_memory(a, c.quantized(0, "v"))

    before = snapshot(c)
    keys = c.keys(1)  # a decoded copy: writing it leaves the cache alone
    assert keys.flags.writeable
    keys[...] = 0
    assert snapshot(c) == before


def test_mlx_arrays_are_read_only_views_of_the_rows() -> None:
    c = make("mlx4", scale_type="bf16")
    c.append(rand(5, 1), rand(5, 2))
    rows = c.quantized(0, "k")
    w, s, b = c.mlx_arrays(0, "k")
    assert (w.dtype, s.dtype, b.dtype) == (np.uint32, np.uint16, np.uint16)
    for part in (w, s, b):
        assert np.shares_memory(part, rows)
        assert not part.flags.writeable
        with pytest.raises(ValueError):
            part[0, 0, 0] = 1


@pytest.mark.parametrize("fmt", ["q4_0", "q8_0", "f16"])
def test_mlx_arrays_needs_an_mlx4_cache(fmt: str) -> None:
    with pytest.raises(InvalidArgumentError):
        filled(fmt).mlx_arrays(0, "k")


@pytest.mark.parametrize("bad", [(2, "k"), (-1, "k"), (0, "q"), (0, "K"), ("0", "k"), (0.0, "k")])
def test_reading_refuses_bad_layers_and_kinds(bad: tuple[object, str]) -> None:
    c = filled("q4_0")
    layer, kind = bad
    with pytest.raises(InvalidArgumentError):
        c.quantized(layer, kind)  # type: ignore[arg-type]
    if kind == "k":
        with pytest.raises(InvalidArgumentError):
            c.keys(layer)  # type: ignore[arg-type]


# -- errors leave the cache unchanged ------------------------------------------------------


def _nan_at_end(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[-1, -1, -1, -1] = math.nan
    return x


def _bf16_nan_values(c: KVCache) -> None:
    if mx is None:
        pytest.skip("mlx is not installed")
    v = mx.array(_nan_at_end(rand(2, 6))).astype(mx.bfloat16)
    c.append(mx.array(rand(2, 5)).astype(mx.bfloat16), v)


def _with_inf(x: np.ndarray, index: tuple[int, ...], value: float) -> np.ndarray:
    x = x.copy()
    x[index] = value
    return x


ERROR_CASES = {
    "keys-layers": lambda c: c.append(rand(2, 5)[:1], rand(2, 6)),
    "values-layers": lambda c: c.append(rand(2, 5), np.concatenate([rand(2, 6)] * 2)),
    "keys-heads": lambda c: c.append(rand(2, 5)[:, :2], rand(2, 6)),
    "values-heads": lambda c: c.append(rand(2, 5), rand(2, 6)[:, :1]),
    "head-dim-smaller": lambda c: c.append(rand(2, 5)[..., :32], rand(2, 6)[..., :32]),
    "head-dim-larger": lambda c: c.append(
        np.concatenate([rand(2, 5)] * 2, axis=3), np.concatenate([rand(2, 6)] * 2, axis=3)
    ),
    "values-head-dim": lambda c: c.append(rand(2, 5), rand(2, 6)[..., :32]),
    "3d": lambda c: c.append(rand(2, 5)[0], rand(2, 6)[0]),
    "5d": lambda c: c.append(rand(2, 5)[None], rand(2, 6)[None]),
    "1d": lambda c: c.append(rand(2, 5).reshape(-1), rand(2, 6).reshape(-1)),
    "token-counts-differ": lambda c: c.append(rand(3, 5), rand(2, 6)),
    "float64": lambda c: c.append(rand(2, 5, np.float64), rand(2, 6, np.float64)),
    "int32-values": lambda c: c.append(rand(2, 5), rand(2, 6).astype(np.int32)),
    "list": lambda c: c.append(rand(2, 5).tolist(), rand(2, 6).tolist()),
    "nan-in-values": lambda c: c.append(rand(2, 5), _nan_at_end(rand(2, 6))),
    "nan-in-f16-values": lambda c: c.append(
        rand(2, 5, np.float16), _nan_at_end(rand(2, 6)).astype(np.float16)
    ),
    "inf-in-values": lambda c: c.append(rand(2, 5), _with_inf(rand(2, 6), (1, 2, 0, 7), math.inf)),
    "-inf-in-keys": lambda c: c.append(_with_inf(rand(2, 5), (0, 0, 1, 0), -math.inf), rand(2, 6)),
    "nan-in-bf16-values": _bf16_nan_values,
    "truncate-beyond": lambda c: c.truncate(c.tokens + 1),
    "truncate-negative": lambda c: c.truncate(-1),
    "truncate-float": lambda c: c.truncate(1.0),
    "truncate-str": lambda c: c.truncate("1"),
    "append-quantized-row-bytes": lambda c: c.append_quantized(
        np.zeros((LAYERS, HEADS, 2, c.row_bytes + 1), np.uint8),
        np.zeros((LAYERS, HEADS, 2, c.row_bytes + 1), np.uint8),
    ),
    "append-quantized-dtype": lambda c: c.append_quantized(
        np.zeros((LAYERS, HEADS, 2, c.row_bytes), np.int8),
        np.zeros((LAYERS, HEADS, 2, c.row_bytes), np.int8),
    ),
    "append-quantized-token-counts": lambda c: c.append_quantized(
        np.zeros((LAYERS, HEADS, 2, c.row_bytes), np.uint8),
        np.zeros((LAYERS, HEADS, 3, c.row_bytes), np.uint8),
    ),
}


@pytest.mark.parametrize("fmt", kv.FORMATS)
@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_errors_leave_the_cache_unchanged(fmt: str, case: str) -> None:
    c = filled(fmt, tokens=6, page_tokens=4)
    c.page_hashes()
    c.append(rand(1, 9), rand(1, 10))  # and one append not yet hashed
    before = snapshot(c)
    with pytest.raises(InvalidArgumentError):
        ERROR_CASES[case](c)
    assert snapshot(c) == before
    c.append(rand(1, 11), rand(1, 12))  # still usable
    assert c.tokens == before[0] + 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fmt": "q5_0"},
        {"fmt": "F16"},
        {"fmt": "q4_0", "head_dim": 48},
        {"fmt": "q8_0", "head_dim": 16},
        {"fmt": "mlx4", "head_dim": 96},
        {"fmt": "mlx4", "head_dim": 32},
        {"head_dim": 0},
        {"page_tokens": 0},
        {"page_tokens": -4},
        {"page_tokens": 2.0},
        {"page_tokens": True},
        {"layers": 0},
        {"kv_heads": 0},
        {"layers": 1.0},
        {"fmt": "mlx4", "scale_type": "f64"},
    ],
    ids=repr,
)
def test_bad_geometry_is_refused(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"layers": 1, "kv_heads": 1, "head_dim": 64, "fmt": "q4_0"}
    args.update(kwargs)
    with pytest.raises(InvalidArgumentError):
        KVCache(**args)  # type: ignore[arg-type]


def test_nan_values_refused_by_a_bfloat16_cache() -> None:
    c = make("mlx4", scale_type="bf16")
    c.append(rand(2, 1), rand(2, 2))
    before = snapshot(c)
    v = rand(1, 3)
    v.view(np.uint32)[0, 0, 0, 5] = 0x7FFFFFFF
    assert np.isnan(v).any()
    try:
        with pytest.raises(InvalidArgumentError):
            c.append(rand(1, 4), v)
    finally:
        assert snapshot(c) == before


def test_values_beyond_float16_refused_by_a_float16_cache() -> None:
    c = make("mlx4", scale_type="f16")
    k = rand(1, 1)
    k[0, 0, 0, 0] = 1e5
    with pytest.raises(InvalidArgumentError):
        c.append(k, rand(1, 2))
    assert c.tokens == 0


# -- ownership ----------------------------------------------------------------------------


def test_the_assigning_replica_owns_the_cache() -> None:
    c = filled("q4_0")
    assert c.owner is None
    assert c.writable
    a = Memory("a")
    a.kv["x"] = c
    assert c.owner == "a"
    assert a.kv["x"] is c
    assert "x" in a.kv
    assert c.writable
    c.append(rand(1, 3), rand(1, 4))
    c.truncate(2)
    assert c.tokens == 2


def test_a_cache_joins_one_memory_only() -> None:
    c = filled("q8_0")
    a, b = Memory("a"), Memory("b")
    a.kv["x"] = c
    with pytest.raises(InvalidArgumentError, match="already attached"):
        b.kv["x"] = c
    assert "x" not in b.kv
    with pytest.raises(InvalidArgumentError, match="already attached"):
        a.kv["y"] = c
    assert list(a.kv) == ["x"]
    assert c.owner == "a"


@pytest.mark.parametrize("fmt", kv.FORMATS)
def test_mirrors_are_read_only(fmt: str) -> None:
    """The hub's copy of a leaf's cache is a mirror: it follows the owner's
    writes (and scans) and refuses every write of its own with OwnershipError,
    changing nothing."""
    net = Network.star(2)  # r0 is the hub, r1 its leaf
    hub, leaf = net["r0"], net["r1"]
    cache = filled(fmt, tokens=9, page_tokens=4)
    leaf.kv["x"] = cache
    net.run_until_quiescent()

    mirror = hub.kv["x"]
    assert mirror is not cache
    assert mirror.owner == "r1"
    assert not mirror.writable
    assert cache.writable
    assert_same_cache(mirror, cache)

    before = snapshot(mirror)
    refused = [
        lambda: mirror.append(rand(1, 1), rand(1, 2)),
        lambda: mirror.truncate(3),
        lambda: mirror.truncate(0),
        lambda: mirror.append_quantized(
            np.zeros((LAYERS, HEADS, 1, mirror.row_bytes), np.uint8),
            np.zeros((LAYERS, HEADS, 1, mirror.row_bytes), np.uint8),
        ),
    ]
    for write in refused:
        with pytest.raises(OwnershipError):
            write()
        assert snapshot(mirror) == before
    with pytest.raises(OwnershipError):
        del hub.kv["x"]
    with pytest.raises(OwnershipError):
        hub.kv["x"] = make(fmt)
    assert hub.kv["x"] is mirror
    assert snapshot(mirror) == before
    assert issubclass(OwnershipError, HybridSyncError)

    # The owner's writes still reach it.
    cache.truncate(5)
    cache.append(rand(6, 7), rand(6, 8))
    net.run_until_quiescent()
    assert_same_cache(hub.kv["x"], cache)

    # So does memory the owner changed behind the API's back, once scanned.
    cache._bufs[1][0][2, 3, 1] ^= 0x10
    assert cache.scan() >= 1
    net.run_until_quiescent()
    assert_same_cache(hub.kv["x"], cache)


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["range", "pages", "cut", "copy"]),
            st.integers(0, 40),
            st.integers(0, 6),
            st.integers(0, 3),
        ),
        max_size=40,
    )
)
def test_page_table_digest_is_kept_incrementally(ops: list[tuple[str, int, int, int]]) -> None:
    """The incremental digest (and what cut and copy keep) always equals the
    digest of a table built from scratch from the same hashes."""
    from hybridsync.channels.kv import PageTable

    rng = np.random.default_rng(len(ops))
    t = PageTable(2, 3)
    for op, first, n, zeros in ops:
        if op == "range":
            block = rng.integers(1, 2**63, (2, 2, 3, n), dtype=np.uint64)
            block.reshape(-1)[: zeros * 3] = 0  # some pages absent
            t.set_range(first, block)
        elif op == "pages":
            pages = rng.integers(0, first + 1, n).astype(np.uint32)
            heads = rng.integers(0, 3, n).astype(np.uint32)
            pages, idx = np.unique(pages, return_index=True)
            t.set_pages(
                zeros % 2,
                zeros // 2,
                heads[idx],
                pages,
                rng.integers(0, 9, len(pages)).astype(np.uint64),
            )
        elif op == "cut":
            t.cut(first)
        else:
            t = t.copy()
        t.tokens = first
        fresh = PageTable(2, 3)
        fresh.tokens = t.tokens
        width = t.hashes.shape[-1]
        fresh.set_range(0, t.hashes[..., :width].copy())
        assert t.digest() == fresh.digest()
        assert t.same_pages(fresh)
