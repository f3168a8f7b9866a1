"""llama.cpp itself: export a sequence's cache, mirror it, restore it elsewhere.

A tiny llama GGUF with random weights (written with the ``gguf`` package, no
download) runs in llama-cpp-python with Q4_0, Q8_0 and F16 caches. Its
sequence state imports bit-identically, mirrors through two links with 20%
loss, and restores into a fresh context whose next-token logits equal the
source's. llama-cpp-python builds llama.cpp from source (``pip install
llama-cpp-python``, about 15 minutes on two cores); ``make test-llama``
installs it and runs this file.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from hybridsync.adapters.llama_cpp import from_llama_state, to_llama_state
from hybridsync.sim import Network

llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

EMBD, HEADS, KV_HEADS, LAYERS = 256, 4, 2, 2
HEAD_DIM = EMBD // HEADS
TYPES = {"f16": 1, "q4_0": 2, "q8_0": 8}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("llama") / "tiny.gguf"
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(LAYERS)
    w.add_context_length(2048)
    w.add_embedding_length(EMBD)
    w.add_feed_forward_length(512)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_file_type(0)
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types([2, 3, 3] + [6] * 256)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def tensor(name: str, *shape: int, scale: float = 0.05) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    tensor("token_embd.weight", len(tokens), EMBD, scale=1.0)
    w.add_tensor("output_norm.weight", np.ones(EMBD, np.float32))
    tensor("output.weight", len(tokens), EMBD)
    for i in range(LAYERS):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(EMBD, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(EMBD, np.float32))
        tensor(f"blk.{i}.attn_q.weight", EMBD, EMBD)
        tensor(f"blk.{i}.attn_k.weight", KV_HEADS * HEAD_DIM, EMBD)
        tensor(f"blk.{i}.attn_v.weight", KV_HEADS * HEAD_DIM, EMBD)
        tensor(f"blk.{i}.attn_output.weight", EMBD, EMBD)
        tensor(f"blk.{i}.ffn_gate.weight", 512, EMBD)
        tensor(f"blk.{i}.ffn_up.weight", 512, EMBD)
        tensor(f"blk.{i}.ffn_down.weight", EMBD, 512)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def context(path: Path, fmt: str) -> object:
    t = TYPES[fmt]
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=512,
        flash_attn=True,
        type_k=t,
        type_v=t,
        n_threads=2,
        verbose=False,
    )


def seq_state(llm: object) -> bytes:
    ctx = llm._ctx.ctx  # type: ignore[attr-defined]
    size = llama_cpp.llama_state_seq_get_size(ctx, 0)
    buf = (ctypes.c_uint8 * size)()
    n = llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0)
    return bytes(buf[:n])


@pytest.mark.parametrize("fmt", ["q4_0", "q8_0", "f16"])
def test_llama_cpp_cache_mirrors_and_restores(model_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(TYPES[fmt])
    prompt = [int(t) for t in rng.integers(3, 259, size=150)]
    source = context(model_path, fmt)
    source.eval(prompt)  # type: ignore[attr-defined]
    data = seq_state(source)
    cache, info = from_llama_state(data, kv_heads=KV_HEADS, head_dim=HEAD_DIM, page_tokens=64)
    assert (cache.fmt, cache.tokens, cache.layers) == (fmt, len(prompt), LAYERS)
    assert to_llama_state(cache, seq_id=info.seq_id, prefix=info.prefix) == data

    net = Network.chain(3, seed=TYPES[fmt], loss=0.2)
    net[net.names[0]].kv["seq"] = cache
    net.run_until_quiescent(5000)
    mirror = net[net.names[-1]].kv["seq"]
    restored = to_llama_state(mirror, seq_id=0, prefix=info.prefix)
    assert restored == data

    target = context(model_path, fmt)
    src = (ctypes.c_uint8 * len(restored)).from_buffer_copy(restored)
    assert llama_cpp.llama_state_seq_set_data(target._ctx.ctx, src, len(restored), 0) == len(
        restored
    )
    target.n_tokens = len(prompt)  # type: ignore[attr-defined]
    target.input_ids[: len(prompt)] = prompt  # type: ignore[attr-defined]
    nxt = int(rng.integers(3, 259))
    want = next_logits(source, nxt)
    got = next_logits(target, nxt)
    assert np.abs(want).sum() > 0
    assert np.array_equal(want, got)


def next_logits(llm: object, token: int) -> np.ndarray:
    """The logits after ``token``, read from llama.cpp directly (the wrapper's
    ``scores`` rows are not always filled without ``logits_all``)."""
    llm.eval([token])  # type: ignore[attr-defined]
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)  # type: ignore[attr-defined]
    vocab = llm.n_vocab()  # type: ignore[attr-defined]
    return np.ctypeslib.as_array(ptr, shape=(vocab,)).copy()
