"""The KV codecs against references nobody here wrote.

``hybridsync.kv.quantize`` / ``dequantize`` must be bit-exact with

* ``gguf.quants`` (llama.cpp's Python port of ``quantize_row_q4_0_ref`` /
  ``quantize_row_q8_0_ref`` and the dequantizers) for ``"q4_0"`` / ``"q8_0"``,
* ``mlx.core.quantize`` / ``mlx.core.dequantize`` (affine, 4 bits, groups of
  64) for ``"mlx4"``,
* gguf's ``F16`` (numpy's half-float cast) for ``"f16"``,

on ordinary data and on adversarial blocks: all-zero and constant groups, one
huge outlier per group (up to the float16 maximum, or 3e38 in float32, where
the fp16 scale of the GGML formats overflows to infinity), ties between +m and
-m, and tiny (subnormal) values. Comparisons are on raw bits, so signed zeros,
infinities and NaN payloads count.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from gguf import quants
from gguf.constants import GGMLQuantizationType
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hybridsync import kv
from hybridsync.errors import HybridSyncError, InvalidArgumentError

try:
    import mlx.core as mx
except ImportError:  # mlx is a dev dependency on Linux and macOS only
    mx = None

requires_mlx = pytest.mark.skipif(mx is None, reason="mlx is not installed")

GGML = {"q4_0": GGMLQuantizationType.Q4_0, "q8_0": GGMLQuantizationType.Q8_0}
GGML_GROUP = 32
MLX_GROUP = 64
F16_MAX = 65504.0
F32_HUGE = 3e38
#: mlx dtype name -> (kv scale type, unsigned int dtype of the same width).
MLX_TYPES = {
    "float32": ("f32", np.uint32),
    "float16": ("f16", np.uint16),
    "bfloat16": ("bf16", np.uint16),
}
BLOCK_KINDS = (
    "normal",
    "normal",
    "zero",
    "signed_zero",
    "const",
    "outlier",
    "tie",
    "tiny",
    "subnormal_mix",
)


# -- references -----------------------------------------------------------------


def gguf_quantize(x: np.ndarray, fmt: str) -> np.ndarray:
    # gguf's numpy port divides by zero and overflows the fp16 cast on purpose
    # (outliers near 3e38): silence numpy, the bytes are what count.
    with np.errstate(all="ignore"):
        return quants.quantize(x, GGML[fmt])


def gguf_dequantize(q: np.ndarray, fmt: str) -> np.ndarray:
    with np.errstate(all="ignore"):
        return quants.dequantize(q, GGML[fmt])


def llama_cpp_zero_signs(x: np.ndarray) -> np.ndarray:
    """``x`` as float32 with the signs of all-zero GGML blocks cleared.

    llama.cpp's ``quantize_row_q4_0_ref`` starts from ``max = 0.0f`` and only
    replaces it on a strictly larger ``|v|``, so an all-zero block always gets
    ``d = 0.0f / -8 = -0.0`` whatever the signs of its zeros. gguf's numpy
    port takes ``max`` from ``argmax`` instead and stores ``+0.0`` when the
    block's first zero is ``-0.0``. hybridsync follows llama.cpp (see
    :func:`test_q4_0_all_zero_block_follows_llama_cpp`); clearing the signs of
    those blocks makes gguf agree with llama.cpp. No other block is touched.
    """
    f = np.array(x, dtype=np.float32)
    blocks = f.reshape(-1, GGML_GROUP)
    blocks[(blocks == 0).all(axis=1)] = 0.0
    return f


def assert_same_bits(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    u = np.uint32 if actual.dtype.itemsize == 4 else np.uint16
    np.testing.assert_array_equal(
        np.ascontiguousarray(actual).view(u), np.ascontiguousarray(expected).view(u)
    )


def assert_same_bits_but_nan(actual: np.ndarray, expected: np.ndarray) -> None:
    """Bit-equal, except that NaNs only have to be in the same places."""
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(actual), nan)
    zero = np.float32(0.0)
    assert_same_bits(np.where(nan, zero, actual), np.where(nan, zero, expected))


def mlx_bits(a: mx.array) -> np.ndarray:
    """The raw bits of an mlx float array, as unsigned ints."""
    if a.dtype == mx.float32:
        return np.array(a.view(mx.uint32))
    return np.array(a.view(mx.uint16))


def mlx_from_bits(bits: np.ndarray, dtype_name: str) -> mx.array:
    return mx.array(np.ascontiguousarray(bits)).view(getattr(mx, dtype_name))


# -- inputs -----------------------------------------------------------------------


def _tiny(rng: np.random.Generator, size: int, dtype_name: str) -> np.ndarray:
    """Values in the subnormal range of the dtype (many round to +-0)."""
    if dtype_name == "float16":
        return rng.standard_normal(size) * 10.0 ** rng.uniform(-8, -4.5, size)
    return rng.standard_normal(size) * 10.0 ** rng.uniform(-45, -38, size)


def _group(
    rng: np.random.Generator, kind: str, size: int, dtype_name: str, anchor_tiny: bool
) -> np.ndarray:
    top = F16_MAX if dtype_name == "float16" else F32_HUGE
    scale = 10.0 ** rng.uniform(-4, 4)
    g = rng.standard_normal(size) * scale
    if kind == "zero":
        g[:] = 0.0
    elif kind == "signed_zero":
        g = np.where(rng.random(size) < 0.5, -0.0, 0.0)
    elif kind == "const":
        g[:] = g[0]
    elif kind == "outlier":
        big = top if rng.random() < 0.4 else 10.0 ** rng.uniform(4, math.log10(top))
        g[rng.integers(size)] = rng.choice([-1.0, 1.0]) * big
    elif kind == "tie":
        i, j = rng.choice(size, 2, replace=False)
        m = float(np.abs(g).max()) * rng.uniform(1.0, 4.0)
        g[i], g[j] = m, -m
    elif kind == "tiny":
        g = _tiny(rng, size, dtype_name)
        if anchor_tiny:
            # Keep the block's largest |v| above ~4e-37: below it the GGML
            # reference computes 1/d = inf and its codes come from an undefined
            # float-to-int cast (test_ggml_reciprocal_scale_overflow).
            g[rng.integers(size)] = rng.choice([-1.0, 1.0]) * 10.0 ** rng.uniform(-36, -30)
    elif kind == "subnormal_mix":
        mask = rng.random(size) < 0.5
        g[mask] = _tiny(rng, int(mask.sum()), dtype_name)
    return np.clip(g, -top, top)


@st.composite
def float_rows(
    draw: st.DrawFn, *, group: int, head_dims: tuple[int, ...], dtypes: tuple[str, ...]
) -> tuple[np.ndarray, str]:
    """``(rows, dtype name)``: a float32 or float16 numpy array shaped
    ``[rows, head_dim]``, each group of ``group`` values of one of
    :data:`BLOCK_KINDS` (bfloat16 rows come as float32, to be rounded by mlx)."""
    dtype_name = draw(st.sampled_from(dtypes))
    rows = draw(st.integers(1, 8))
    head_dim = draw(st.sampled_from(head_dims))
    n_groups = rows * head_dim // group
    kinds = draw(st.lists(st.sampled_from(BLOCK_KINDS), min_size=n_groups, max_size=n_groups))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    anchor = group == GGML_GROUP and dtype_name != "float16"
    x = np.concatenate([_group(rng, k, group, dtype_name, anchor) for k in kinds])
    x = x.reshape(rows, head_dim)
    if dtype_name == "float16":
        return x.astype(np.float16), dtype_name
    return x.astype(np.float32), dtype_name


def to_mlx(x: np.ndarray, dtype_name: str) -> mx.array:
    if x.dtype != np.float16:
        x = x.astype(np.float32)
    return mx.array(x).astype(getattr(mx, dtype_name))


# -- GGML: q4_0 / q8_0 vs gguf -----------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    fmt=st.sampled_from(sorted(GGML)),
    sample=float_rows(group=GGML_GROUP, head_dims=(32, 64, 128), dtypes=("float32", "float16")),
)
def test_ggml_matches_gguf(fmt: str, sample: tuple[np.ndarray, str]) -> None:
    x, _ = sample
    q = kv.quantize(x, fmt)
    ref = gguf_quantize(llama_cpp_zero_signs(x), fmt)
    assert q.dtype == np.uint8
    assert q.shape == ref.shape
    np.testing.assert_array_equal(q, ref)

    out = kv.dequantize(q, fmt, x.shape[-1])
    assert_same_bits(out, gguf_dequantize(ref, fmt))


@requires_mlx
@pytest.mark.parametrize("fmt", sorted(GGML))
def test_ggml_bfloat16_input_is_exact_float32(fmt: str) -> None:
    """bfloat16 (mlx) inputs quantize as their exact float32 values."""
    rng = np.random.default_rng(7)
    xb = to_mlx((rng.standard_normal((3, 64)) * 50).astype(np.float32), "bfloat16")
    ref = gguf_quantize(np.array(xb.astype(mx.float32)), fmt)
    np.testing.assert_array_equal(kv.quantize(xb, fmt), ref)


@pytest.mark.parametrize("fmt", sorted(GGML))
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_ggml_float32_outlier_overflows_fp16_scale(fmt: str, sign: float) -> None:
    """A 3e38 outlier overflows the block's fp16 scale to infinity in the
    reference; hybridsync stores the same bytes and decodes the same
    infinities and NaNs (inf * 0)."""
    x = np.linspace(-1.0, 1.0, 64, dtype=np.float32).reshape(1, 64)
    x[0, 5] = sign * F32_HUGE
    ref = gguf_quantize(x, fmt)
    d = ref[0, :2].view(np.float16)[0]
    assert np.isinf(d), "the reference no longer overflows: this case lost its point"
    q = kv.quantize(x, fmt)
    np.testing.assert_array_equal(q, ref)
    out = kv.dequantize(q, fmt, 64)
    expected = gguf_dequantize(ref, fmt)
    assert np.isnan(expected[0, :32]).any()
    assert_same_bits(out, expected)


@pytest.mark.parametrize("fmt", sorted(GGML))
@pytest.mark.parametrize("first", [1.0, -1.0])
def test_ggml_ties_keep_the_first_extreme(fmt: str, first: float) -> None:
    """+m and -m in one block: the reference keeps the first one (Q4_0's
    scale is signed, so the order shows in the bytes)."""
    x = np.full((1, 32), 0.25, dtype=np.float32)
    x[0, 3], x[0, 17] = first * 6.0, -first * 6.0
    np.testing.assert_array_equal(kv.quantize(x, fmt), gguf_quantize(x, fmt))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_q4_0_all_zero_block_follows_llama_cpp(dtype: type) -> None:
    """An all-zero Q4_0 block is stored with ``d = -0.0`` (bytes ``00 80``)
    and codes 8, whatever the signs of its zeros: llama.cpp's
    ``quantize_row_q4_0_ref`` starts from ``max = 0.0f`` and computes
    ``d = max / -8``. (gguf's numpy port stores ``+0.0`` when the first zero
    is ``-0.0``; for ``+0.0`` zeros the two agree, checked here too.)"""
    x = np.zeros((2, 32), dtype=dtype)
    x[1] = np.where(np.arange(32) % 3 == 0, -0.0, 0.0).astype(dtype)
    q = kv.quantize(x, "q4_0")
    assert q[:, :2].tolist() == [[0x00, 0x80], [0x00, 0x80]]
    assert (q[:, 2:] == 0x88).all()
    np.testing.assert_array_equal(q[:1], gguf_quantize(x[:1], "q4_0"))


@pytest.mark.parametrize(
    ("fmt", "amax"), [("q8_0", 1e-37), ("q8_0", 1e-40), ("q4_0", 1e-38), ("q4_0", 1e-41)]
)
def test_ggml_reciprocal_scale_overflow(fmt: str, amax: float) -> None:
    x = np.zeros((1, 32), dtype=np.float32)
    x[0, :4] = [amax, -amax / 2, amax / 3, -amax]
    ref = gguf_quantize(x, fmt)
    q = kv.quantize(x, fmt)
    np.testing.assert_array_equal(q, ref)
    assert_same_bits(kv.dequantize(q, fmt, 32), gguf_dequantize(ref, fmt))


#: fp16 scale bit patterns worth forcing into random blocks.
SPECIAL_F16 = [0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFD55, 0x7FFF, 0x0001, 0x8000, 0x7BFF, 0x0400]


@settings(max_examples=60, deadline=None)
@given(
    fmt=st.sampled_from(sorted(GGML)),
    rows=st.integers(1, 8),
    blocks=st.sampled_from([1, 2, 4]),
    data=st.data(),
)
def test_ggml_dequantize_arbitrary_bytes(
    fmt: str, rows: int, blocks: int, data: st.DataObject
) -> None:
    """Any bytes decode like gguf decodes them, bit for bit: infinite, NaN
    (with payloads) and subnormal scales included."""
    block_bytes = 18 if fmt == "q4_0" else 34
    q = data.draw(hnp.arrays(np.uint8, (rows, blocks * block_bytes)))
    specials = data.draw(st.lists(st.sampled_from(SPECIAL_F16), max_size=rows * blocks))
    for i, bits in enumerate(specials):
        r, b = divmod(i, blocks)
        q[r, b * block_bytes : b * block_bytes + 2] = np.array([bits], np.uint16).view(np.uint8)
    out = kv.dequantize(q, fmt, blocks * GGML_GROUP)
    assert_same_bits(out, gguf_dequantize(q, fmt))


# -- mlx4 vs mlx.core ---------------------------------------------------------------


def check_mlx4(xm: mx.array, q: np.ndarray, dtype_name: str, *, nan_bits: bool = True) -> None:
    """``q`` (kv's mlx4 rows) equals ``mx.quantize(xm)`` and decodes like
    ``mx.dequantize``, bit for bit (with ``nan_bits=False``: NaNs in the same
    places, their bits not compared)."""
    scale_type, uint = MLX_TYPES[dtype_name]
    head_dim = xm.shape[-1]
    w, s, b = kv.mlx4_parts(q, head_dim, scale_type)
    rw, rs, rb = mx.quantize(xm, group_size=MLX_GROUP, bits=4)
    assert rs.dtype == getattr(mx, dtype_name)
    np.testing.assert_array_equal(w, np.array(rw))
    np.testing.assert_array_equal(s.view(uint), mlx_bits(rs))
    np.testing.assert_array_equal(b.view(uint), mlx_bits(rb))

    out = kv.dequantize(q, "mlx4", head_dim, scale_type=scale_type)
    ref = np.array(mx.dequantize(rw, rs, rb, group_size=MLX_GROUP, bits=4).astype(mx.float32))
    if nan_bits:
        assert_same_bits(out, ref)
    else:
        assert_same_bits_but_nan(out, ref)


@requires_mlx
@settings(max_examples=60, deadline=None)
@given(
    sample=float_rows(
        group=MLX_GROUP, head_dims=(64, 128, 256), dtypes=("float32", "float16", "bfloat16")
    )
)
def test_mlx4_matches_mlx(sample: tuple[np.ndarray, str]) -> None:
    x, dtype_name = sample
    xm = to_mlx(x, dtype_name)
    q = kv.quantize(xm, "mlx4")
    assert q.dtype == np.uint8
    assert q.shape == (*x.shape[:-1], kv._row_bytes("mlx4", x.shape[-1], MLX_TYPES[dtype_name][0]))
    check_mlx4(xm, q, dtype_name)


@requires_mlx
@settings(max_examples=40, deadline=None)
@given(
    sample=float_rows(group=MLX_GROUP, head_dims=(64, 128, 256), dtypes=("float32",)),
    target=st.sampled_from(["float16", "bfloat16", "float32"]),
    as_mlx=st.booleans(),
)
def test_mlx4_scale_type_rounds_input_like_mlx(
    sample: tuple[np.ndarray, str], target: str, as_mlx: bool
) -> None:
    """``scale_type`` other than the input's type rounds the input to it
    first, as ``mx.array(x).astype(dtype)`` does (numpy or mlx input)."""
    x, _ = sample
    if target == "float16":
        x = np.clip(x, -F16_MAX, F16_MAX)  # past it float16 rounds to inf
    q = kv.quantize(mx.array(x) if as_mlx else x, "mlx4", scale_type=MLX_TYPES[target][0])
    check_mlx4(to_mlx(x, target), q, target)


@requires_mlx
@pytest.mark.parametrize("dtype_name", sorted(MLX_TYPES))
def test_mlx4_numpy_and_mlx_inputs_agree(dtype_name: str) -> None:
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((5, 128)) * 3).astype(np.float32)
    xm = to_mlx(x, dtype_name)
    if dtype_name == "bfloat16":
        # numpy has no bfloat16 without ml_dtypes: compare f32 input rounded to bf16
        q_np = kv.quantize(x, "mlx4", scale_type="bf16")
    else:
        q_np = kv.quantize(np.array(xm), "mlx4")
    np.testing.assert_array_equal(q_np, kv.quantize(xm, "mlx4"))


def extreme_groups(dtype_name: str) -> np.ndarray:
    """Hand-picked mlx4 groups: the dtype's largest outlier of either sign,
    both extremes in one group, constants, zeros and subnormals."""
    top = F16_MAX if dtype_name == "float16" else F32_HUGE
    base = np.linspace(-1.0, 1.0, 64)
    groups = []
    for patch in ({3: top}, {3: -top}, {0: top, 63: -top}, {}):
        g = base.copy()
        for i, v in patch.items():
            g[i] = v
        groups.append(g)
    groups += [np.full(64, 7.25), np.full(64, -1e-3), np.zeros(64), np.full(64, 1e-41)]
    groups.append(np.where(np.arange(64) % 2 == 0, 1e-40, -3e-39))
    return np.stack(groups).astype(np.float16 if dtype_name == "float16" else np.float32)


@requires_mlx
@pytest.mark.parametrize("dtype_name", sorted(MLX_TYPES))
def test_mlx4_extreme_groups(dtype_name: str) -> None:
    """Bit-exact on :func:`extreme_groups`; for bfloat16 the NaNs that a group
    spanning -3e38..3e38 decodes to (its scale overflows to inf) are compared
    by place only: see test_mlx4_bfloat16_overflowed_scale_nan_bits."""
    xm = to_mlx(extreme_groups(dtype_name), dtype_name)
    check_mlx4(xm, kv.quantize(xm, "mlx4"), dtype_name, nan_bits=dtype_name != "bfloat16")


@requires_mlx
def test_mlx4_bfloat16_overflowed_scale_nan_bits() -> None:
    x = np.linspace(-1.0, 1.0, 64, dtype=np.float32).reshape(1, 64)
    x[0, 0], x[0, 63] = F32_HUGE, -F32_HUGE
    xm = to_mlx(x, "bfloat16")
    check_mlx4(xm, kv.quantize(xm, "mlx4"), "bfloat16")


@requires_mlx
@settings(max_examples=40, deadline=None)
@given(
    dtype_name=st.sampled_from(sorted(MLX_TYPES)),
    rows=st.integers(1, 8),
    groups=st.sampled_from([1, 2, 4]),
    data=st.data(),
)
def test_mlx4_dequantize_arbitrary_bytes(
    dtype_name: str, rows: int, groups: int, data: st.DataObject
) -> None:
    """Any codes, scales and biases decode like ``mx.dequantize``, bit for bit
    except for the bits of NaNs: mlx's half-precision arithmetic turns every
    NaN into its canonical (positive) NaN, hybridsync keeps the sign and
    payload of a NaN scale or bias. Both give NaN in the same places."""
    scale_type, uint = MLX_TYPES[dtype_name]
    head_dim = groups * MLX_GROUP
    q = data.draw(hnp.arrays(np.uint8, (rows, kv._row_bytes("mlx4", head_dim, scale_type))))
    out = kv.dequantize(q, "mlx4", head_dim, scale_type=scale_type)
    w, s, b = kv.mlx4_parts(q, head_dim, scale_type)
    ref = np.array(
        mx.dequantize(
            mx.array(np.ascontiguousarray(w)),
            mlx_from_bits(s.view(uint), dtype_name),
            mlx_from_bits(b.view(uint), dtype_name),
            group_size=MLX_GROUP,
            bits=4,
        ).astype(mx.float32)
    )
    assert_same_bits_but_nan(out, ref)


# -- f16 vs gguf's F16 ---------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    sample=float_rows(group=GGML_GROUP, head_dims=(32, 64, 128), dtypes=("float32", "float16")),
)
def test_f16_matches_gguf(sample: tuple[np.ndarray, str]) -> None:
    """``"f16"`` rows are the values as IEEE half floats (gguf's F16: numpy's
    round-to-nearest-even cast; finite values beyond 65504 become inf)."""
    x, _ = sample
    with np.errstate(over="ignore"):
        ref = quants.quantize(x, GGMLQuantizationType.F16)
    q = kv.quantize(x, "f16")
    assert q.dtype == np.uint8
    assert q.shape == (*x.shape[:-1], 2 * x.shape[-1])
    np.testing.assert_array_equal(q.view(np.uint16), ref.view(np.uint16))
    out = kv.dequantize(q, "f16", x.shape[-1])
    assert_same_bits(out, quants.dequantize(ref, GGMLQuantizationType.F16))


# -- the non-finite rule ------------------------------------------------------------


INPUT_KINDS = ["numpy-float32", "numpy-float16", "mlx-float32", "mlx-float16", "mlx-bfloat16"]


def make_input(kind: str, x: np.ndarray) -> object:
    lib, dtype_name = kind.split("-")
    if lib == "numpy":
        return x.astype(dtype_name)
    if mx is None:
        pytest.skip("mlx is not installed")
    return to_mlx(x, dtype_name)


@pytest.mark.parametrize("fmt", kv.FORMATS)
@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_values_are_refused(fmt: str, kind: str, bad: float) -> None:
    """The chosen rule: a NaN, +inf or -inf anywhere in the input raises
    InvalidArgumentError (the references disagree on what to make of them:
    gguf and llama.cpp fold them into garbage codes, mlx into NaN scales),
    whatever the format, the input type and the position."""
    rows, head_dim = 3, 128
    for pos in [(0, 0), (1, 64), (1, 77), (2, head_dim - 1)]:
        x = np.linspace(-2.0, 2.0, rows * head_dim).reshape(rows, head_dim)
        x[pos] = bad
        with pytest.raises(InvalidArgumentError, match="finite"):
            kv.quantize(make_input(kind, x), fmt)


@pytest.mark.parametrize(
    ("dtype", "bits"),
    [(np.float32, 0x7FFFFFFF), (np.float32, 0xFFFF8000), (np.float16, 0x7FFF)],
    ids=["f32-7fffffff", "f32-ffff8000", "f16-7fff"],
)
def test_nan_rounded_to_bfloat16_is_refused(dtype: type, bits: int) -> None:
    x = np.ones((1, 64), dtype=dtype)
    x.view(np.uint32 if dtype == np.float32 else np.uint16)[0, 3] = bits
    assert np.isnan(x[0, 3])
    with pytest.raises(InvalidArgumentError):
        kv.quantize(x, "mlx4", scale_type="bf16")


def test_float32_beyond_float16_range_is_refused_cleanly() -> None:
    x = np.ones((1, 64), dtype=np.float32)
    x[0, 9] = 1e5
    with pytest.raises(InvalidArgumentError):
        kv.quantize(x, "mlx4", scale_type="f16")


# -- argument errors ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", kv.FORMATS)
@pytest.mark.parametrize(
    "dtype", [np.int32, np.float64, np.int8, np.uint16, np.bool_, np.complex64]
)
def test_wrong_dtypes_are_refused(fmt: str, dtype: type) -> None:
    with pytest.raises(InvalidArgumentError):
        kv.quantize(np.ones((2, 64), dtype=dtype), fmt)


@requires_mlx
@pytest.mark.parametrize("fmt", kv.FORMATS)
def test_wrong_mlx_dtypes_are_refused(fmt: str) -> None:
    for dtype in (mx.int32, mx.uint16, mx.int8):
        with pytest.raises(InvalidArgumentError):
            kv.quantize(mx.ones((2, 64), dtype=dtype), fmt)


@pytest.mark.parametrize("fmt", kv.FORMATS)
def test_non_arrays_are_refused(fmt: str) -> None:
    for x in ([1.0] * 64, "abc", None, 3.0):
        with pytest.raises(InvalidArgumentError):
            kv.quantize(x, fmt)


@pytest.mark.parametrize(
    ("fmt", "n"),
    [("q4_0", n) for n in (0, 1, 16, 31, 33, 48, 65, 100)]
    + [("q8_0", n) for n in (0, 16, 40, 97)]
    + [("mlx4", n) for n in (0, 8, 32, 96, 100, 160)]
    + [("f16", 0)],
)
def test_last_axis_not_a_multiple_of_the_group_is_refused(fmt: str, n: int) -> None:
    with pytest.raises(InvalidArgumentError):
        kv.quantize(np.ones((2, n), dtype=np.float32), fmt)
    q = np.zeros((2, 36), np.uint8)
    with pytest.raises(InvalidArgumentError):
        kv.dequantize(q, fmt, n)


@pytest.mark.parametrize("fmt", ["q4_1", "Q4_0", "q8", "mlx8", "", "f32", "bf16", None, 4])
def test_unknown_formats_are_refused(fmt: object) -> None:
    x = np.ones((2, 64), dtype=np.float32)
    with pytest.raises(InvalidArgumentError):
        kv.quantize(x, fmt)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        kv.dequantize(np.zeros((2, 36), np.uint8), fmt, 64)  # type: ignore[arg-type]


@pytest.mark.parametrize("scale_type", ["f64", "fp16", "float16", "F16", "q4_0"])
def test_unknown_scale_types_are_refused(scale_type: str) -> None:
    x = np.ones((2, 64), dtype=np.float32)
    with pytest.raises(InvalidArgumentError):
        kv.quantize(x, "mlx4", scale_type=scale_type)
    with pytest.raises(InvalidArgumentError):
        kv.dequantize(np.zeros((2, 40), np.uint8), "mlx4", 64, scale_type=scale_type)


@pytest.mark.parametrize(
    ("fmt", "row_bytes"), [("q4_0", 36), ("q8_0", 68), ("f16", 128), ("mlx4", 36)]
)
def test_dequantize_refuses_wrong_row_bytes(fmt: str, row_bytes: int) -> None:
    for shape in [(2, row_bytes - 1), (2, row_bytes + 1), (2, 0), (2, 2 * row_bytes)]:
        with pytest.raises(InvalidArgumentError):
            kv.dequantize(np.zeros(shape, np.uint8), fmt, 64)
    assert kv.dequantize(np.zeros((2, row_bytes), np.uint8), fmt, 64).shape == (2, 64)


def test_errors_are_hybridsync_errors() -> None:
    assert issubclass(InvalidArgumentError, HybridSyncError)
    assert issubclass(InvalidArgumentError, ValueError)
