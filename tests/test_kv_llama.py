"""llama.cpp sequence state import/export.

The state bytes here are built with the ``gguf`` package's quantizers (the
ones llama.cpp's own quantizer matches) following llama.cpp's
``state_write`` layout field by field, independently of the adapter.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import quantize as gguf_quantize
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridsync import Memory
from hybridsync.adapters.llama_cpp import from_llama_state, to_llama_state
from hybridsync.errors import DecodeError, HybridSyncError, InvalidArgumentError
from hybridsync.sim import Network

TYPES = {
    "f16": (1, None),
    "q4_0": (2, GGMLQuantizationType.Q4_0),
    "q8_0": (8, GGMLQuantizationType.Q8_0),
}


def encode_rows(x: np.ndarray, fmt: str) -> np.ndarray:
    """[cells, heads*dim] float32 -> [cells, row_bytes] as llama.cpp stores them."""
    qtype = TYPES[fmt][1]
    if qtype is None:
        return x.astype(np.float16).view(np.uint8)
    return gguf_quantize(x, qtype)


def llama_state(
    k: np.ndarray, v: np.ndarray, fmt: str, seq_id: int = 0, v_trans: bool = False
) -> bytes:
    """Sequence state of float K/V ``[layers, cells, heads*dim]``."""
    layers, cells, n_embd = k.shape
    t = TYPES[fmt][0]
    out = [struct.pack("<II", 1, cells)]
    for i in range(cells):
        out.append(struct.pack("<iIi", i, 1, seq_id))
    out.append(struct.pack("<II", int(v_trans), layers))
    for layer in range(layers):
        rows = encode_rows(k[layer], fmt)
        out.append(struct.pack("<iQ", t, rows.shape[1]) + rows.tobytes())
    for layer in range(layers):
        if v_trans:
            halves = v[layer].astype(np.float16)  # [cells, n_embd]
            out.append(struct.pack("<iII", 1, 2, n_embd) + halves.T.copy().tobytes())
        else:
            rows = encode_rows(v[layer], fmt)
            out.append(struct.pack("<iQ", t, rows.shape[1]) + rows.tobytes())
    return b"".join(out)


@settings(max_examples=30, deadline=None)
@given(
    fmt=st.sampled_from(["f16", "q4_0", "q8_0"]),
    layers=st.integers(1, 3),
    heads=st.integers(1, 3),
    dim=st.sampled_from([32, 64]),
    cells=st.integers(0, 40),
    seq_id=st.integers(0, 5),
    v_trans=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_import_export_is_bit_identical(
    fmt: str, layers: int, heads: int, dim: int, cells: int, seq_id: int, v_trans: bool, seed: int
) -> None:
    v_trans = v_trans and fmt == "f16"
    rng = np.random.default_rng(seed)
    k = rng.standard_normal((layers, cells, heads * dim)).astype(np.float32)
    v = rng.standard_normal((layers, cells, heads * dim)).astype(np.float32)
    data = llama_state(k, v, fmt, seq_id, v_trans)
    cache, info = from_llama_state(data, kv_heads=heads, head_dim=dim)
    assert (cache.fmt, cache.tokens, cache.layers) == (fmt, cells, layers)
    assert (info.seq_id, info.v_trans) == (seq_id if cells else 0, v_trans)
    assert to_llama_state(cache, seq_id=info.seq_id, v_trans=info.v_trans) == data
    if cells:
        # Rows match the gguf quantizer head by head, and our own quantizer.
        ours = cache.quantized(layers - 1, "k")
        want = encode_rows(k[-1], fmt).reshape(cells, heads, -1).transpose(1, 0, 2)
        assert np.array_equal(ours, want)


def test_mirrored_llama_state_is_identical() -> None:
    rng = np.random.default_rng(0)
    k = rng.standard_normal((4, 300, 2 * 64)).astype(np.float32)
    data = llama_state(k, -k, "q4_0", seq_id=3)
    cache, info = from_llama_state(data, kv_heads=2, head_dim=64, page_tokens=64)
    net = Network.chain(3, seed=1, loss=0.2)
    net[net.names[0]].kv["seq3"] = cache
    net.run_until_quiescent(5000)
    mirror = net[net.names[-1]].kv["seq3"]
    assert to_llama_state(mirror, seq_id=info.seq_id) == data


def test_bad_states_raise_clear_errors() -> None:
    rng = np.random.default_rng(1)
    k = rng.standard_normal((2, 5, 64)).astype(np.float32)
    data = llama_state(k, k, "q8_0")
    with pytest.raises(InvalidArgumentError, match="heads"):
        from_llama_state(data, kv_heads=1, head_dim=32)
    with pytest.raises(DecodeError, match="truncated"):
        from_llama_state(data[:-1], kv_heads=1, head_dim=64)
    with pytest.raises(DecodeError, match="trailing"):
        from_llama_state(data + b"\0", kv_heads=1, head_dim=64)
    moved = bytearray(data)
    struct.pack_into("<i", moved, 8 + 12, 7)  # cell 1 at position 7
    with pytest.raises(InvalidArgumentError, match="position 7"):
        from_llama_state(bytes(moved), kv_heads=1, head_dim=64)
    with pytest.raises(InvalidArgumentError, match="f16, q4_0 or q8_0"):
        from_llama_state_check_mlx()
    for n in range(0, len(data), 7):  # never anything but our errors
        with pytest.raises(HybridSyncError):
            from_llama_state(data[:n], kv_heads=1, head_dim=64)


def from_llama_state_check_mlx() -> None:
    from hybridsync.kv import KVCache

    to_llama_state(KVCache(1, 1, 64, "mlx4"))


def test_memory_holds_imported_state() -> None:
    rng = np.random.default_rng(2)
    k = rng.standard_normal((1, 3, 32)).astype(np.float32)
    cache, _ = from_llama_state(llama_state(k, k, "f16"), kv_heads=1, head_dim=32)
    m = Memory("agent")
    m.kv["s"] = cache
    assert m.kv["s"].owner == "agent"
    assert np.array_equal(cache.keys(0)[0], k[0].astype(np.float16).astype(np.float32))
