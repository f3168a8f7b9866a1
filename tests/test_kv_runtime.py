"""A real runtime end to end: mlx-lm prefill, mirror, restore, identical logits.

A small llama-family model with random weights (no download) prefills a
prompt into 4-bit quantized caches; the cache is mirrored through two links
(source leaf -> hub -> other leaf) with 20% loss, loaded into a fresh model
holding the same weights there, and the next-token logits must be identical
to the source's.
"""

from __future__ import annotations

import numpy as np
import pytest

from hybridsync.errors import InvalidArgumentError
from hybridsync.kv import KVCache
from hybridsync.sim import Network

mx = pytest.importorskip("mlx.core")
llama = pytest.importorskip("mlx_lm.models.llama")
mlx_cache = pytest.importorskip("mlx_lm.models.cache")
mlx_utils = pytest.importorskip("mlx.utils")

from hybridsync.adapters.mlx_lm import (  # noqa: E402
    from_mlx_lm,
    load_prompt_cache,
    save_prompt_cache,
    to_mlx_lm,
)

LAYERS = 3
VOCAB = 128


def tiny_model(seed: int, dtype: object = None) -> tuple[object, object]:
    mx.random.seed(seed)
    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=256,
        num_hidden_layers=LAYERS,
        intermediate_size=512,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        vocab_size=VOCAB,
    )
    model = llama.Model(args)
    if dtype is not None:
        model.set_dtype(dtype)
    mx.eval(model.parameters())
    return model, args


def prefill(model: object, tokens: np.ndarray) -> list[object]:
    cache = [mlx_cache.QuantizedKVCache(group_size=64, bits=4) for _ in range(LAYERS)]
    model(mx.array(tokens)[None], cache=cache)  # type: ignore[operator]
    mx.eval([c.keys for c in cache] + [c.values for c in cache])
    return cache


@pytest.mark.parametrize(("prompt_len", "dtype_name"), [(300, "float32"), (700, "bfloat16")])
def test_mirrored_cache_gives_identical_logits(prompt_len: int, dtype_name: str) -> None:
    dtype = getattr(mx, dtype_name)
    model, _ = tiny_model(1, dtype)
    rng = np.random.default_rng(prompt_len)
    source = prefill(model, rng.integers(0, VOCAB, size=prompt_len))
    kv = from_mlx_lm(source)
    assert kv.tokens == prompt_len
    assert kv.geometry.scale_type == {"float32": "f32", "bfloat16": "bf16"}[dtype_name]

    net = Network.chain(3, seed=prompt_len, loss=0.2)
    first, _, last = net.names
    net[last].kv["agent"] = kv
    net.run_until_quiescent(20_000)
    mirror = net[first].kv["agent"]
    assert not mirror.writable
    assert mirror.digest() == kv.digest()
    lost = net.totals().frames_dropped
    assert lost > 0  # the loss really happened

    fresh, _ = tiny_model(99, dtype)  # other random weights ...
    fresh.load_weights(list(mlx_utils.tree_flatten(model.parameters())))  # ... replaced
    restored = to_mlx_lm(mirror)
    nxt = mx.array([[int(rng.integers(0, VOCAB))]])
    want = model(nxt, cache=source)  # type: ignore[operator]
    got = fresh(nxt, cache=restored)  # type: ignore[operator]
    mx.eval(want, got)
    assert np.array_equal(np.array(want.astype(mx.float32)), np.array(got.astype(mx.float32)))


def test_round_trip_is_bit_identical_and_prompt_cache_files(tmp_path: object) -> None:
    model, _ = tiny_model(2, mx.float16)
    source = prefill(model, np.arange(260) % VOCAB)
    kv = from_mlx_lm(source)
    again = from_mlx_lm(to_mlx_lm(kv))
    for layer in range(LAYERS):
        for kind in "kv":
            assert np.array_equal(again.quantized(layer, kind), kv.quantized(layer, kind))
        codes, scales, biases = kv.mlx_arrays(layer, "k")
        w, s, b = source[layer].keys
        assert np.array_equal(codes, np.array(w[0, :, :260]))
        assert np.array_equal(scales, np.array(s[0, :, :260]))
        assert np.array_equal(biases, np.array(b[0, :, :260]))
    path = tmp_path / "prompt.safetensors"  # type: ignore[operator]
    save_prompt_cache(path, kv)
    loaded = mlx_cache.load_prompt_cache(str(path))  # mlx-lm reads our file
    assert [c.offset for c in loaded] == [260] * LAYERS
    assert load_prompt_cache(path).digest() == kv.digest()
    mlx_cache.save_prompt_cache(str(path), source)  # and we read mlx-lm's
    assert load_prompt_cache(path).digest() == kv.digest()


def test_hybridsync_files_load_in_mlx(tmp_path: object) -> None:
    model, _ = tiny_model(3, mx.bfloat16)
    kv = from_mlx_lm(prefill(model, np.arange(300) % VOCAB))
    path = tmp_path / "agent.safetensors"  # type: ignore[operator]
    kv.save(path)
    tensors = mx.load(str(path))
    w, s, _ = kv.mlx_arrays(2, "v")
    assert tensors["L2_B1_V_scales"].dtype == mx.bfloat16
    assert np.array_equal(np.array(tensors["L2_B1_V_weights"]), w[:, 256:])
    assert np.array_equal(np.array(tensors["L2_B0_V_scales"].view(mx.uint16)), s[:, :256])
    assert KVCache.load(path).digest() == kv.digest()


def test_import_refuses_unsupported_caches() -> None:
    model, _ = tiny_model(4)
    plain = [mlx_cache.KVCache() for _ in range(LAYERS)]
    model(mx.array([[1, 2, 3]]), cache=plain)  # type: ignore[operator]
    with pytest.raises(InvalidArgumentError, match="to_quantized"):
        from_mlx_lm(plain)
    eight = [c.to_quantized(group_size=64, bits=8) for c in plain]
    with pytest.raises(InvalidArgumentError, match="bits=8"):
        from_mlx_lm(eight)
    with pytest.raises(InvalidArgumentError, match="empty"):
        from_mlx_lm([])
    with pytest.raises(InvalidArgumentError, match="mlx4"):
        to_mlx_lm(KVCache(1, 1, 64, "q4_0"))
