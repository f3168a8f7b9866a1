"""A cache's runtime record travels with its geometry: frames (both codecs),
mirrors over faulty links, durable replicas and cache files; it is bounded,
and the adapters' records compare field by field."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridsync import KVCache, Memory
from hybridsync import frame as F
from hybridsync.adapters.runtime import (
    check_record,
    decode_record,
    encode_record,
    gguf_fingerprint,
)
from hybridsync.errors import DecodeError, IncompatibleCacheError, InvalidArgumentError
from hybridsync.sim import Network

RECORD = encode_record({"runtime": "llama.cpp", "model": "gguf:00ff", "type_k": "q4_0"})


def rows(cache: KVCache, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (cache.layers, cache.kv_heads, n, cache.head_dim)
    return (
        rng.standard_normal(shape).astype(np.float32),
        rng.standard_normal(shape).astype(np.float32),
    )


def test_records_are_bounded_strings() -> None:
    KVCache(1, 1, 32, "q4_0", runtime="é" * 2048)  # 4,096 bytes
    for bad in ("é" * 2049, b"bytes", 3, "\ud800"):
        with pytest.raises(InvalidArgumentError):
            KVCache(1, 1, 32, "q4_0", runtime=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        encode_record({"k": "v" * 5000})
    with pytest.raises(DecodeError):
        decode_record("[1, 2]")
    with pytest.raises(DecodeError):
        decode_record("{not json")
    assert decode_record("") == {}
    assert decode_record(RECORD)["type_k"] == "q4_0"


def test_check_record_names_the_first_field_that_differs() -> None:
    a = {"model": "m1", "type_k": "q4_0", "rotation": "on"}
    check_record(a, dict(a), a)
    with pytest.raises(IncompatibleCacheError) as e:
        check_record(a, {**a, "rotation": "off"}, ["model", "type_k", "rotation"])
    assert e.value.field == "rotation" and "rotation" in str(e.value)
    assert isinstance(e.value, ValueError)


@settings(max_examples=60, deadline=None)
@given(runtime=st.one_of(st.just(""), st.text(min_size=1, max_size=200)))
def test_frames_carry_the_record_with_either_codec(runtime: str) -> None:
    g = F.Geometry(2, 1, 32, "q8_0", 4, "f16", runtime)
    entry = F.KVEntry("c", F.KVKind.HAVE, "owner", 7, g, 0, 0)
    frame = F.Frame("s", 1, 1, False, kv=(entry,))
    rust = F.encode_frame(frame)
    assert F._py_encode_frame(frame) == rust
    for decode in (F.decode_frame, F._py_decode_frame):
        back = decode(rust)
        assert back.kv[0].geometry == g
    if runtime:
        assert runtime.encode() in rust
    else:  # no record: the bytes of the format before records existed
        plain = dataclasses.replace(entry, geometry=dataclasses.replace(g, runtime=""))
        assert F._py_encode_frame(dataclasses.replace(frame, kv=(plain,))) == rust


def test_a_record_that_is_not_utf8_is_refused_by_both_decoders() -> None:
    g = F.Geometry(1, 1, 32, "q4_0", 4, "f16", "\x01\x02\x03\x04")
    frame = F.Frame("s", 1, 1, False, kv=(F.KVEntry("c", F.KVKind.HAVE, "o", 1, g, 0, 0),))
    data = bytearray(F._py_encode_frame(frame))
    at = data.index(b"\x01\x02\x03\x04")
    data[at] = 0xFF
    import xxhash

    # Re-signed (no whole pages in a HAVE frame: the checksum sums every
    # byte), so that the record's UTF-8 is what fails.
    n = len(data) - 4
    data[n:] = (xxhash.xxh3_64_intdigest(bytes(data[:n])) & 0xFFFFFFFF).to_bytes(4, "little")
    for decode in (F.decode_frame, F._py_decode_frame):
        with pytest.raises(DecodeError, match="UTF-8"):
            decode(bytes(data))


@pytest.mark.parametrize("seed", range(4))
def test_mirrors_over_faulty_links_carry_the_record(seed: int) -> None:
    net = Network.chain(3, seed=seed, loss=0.25, duplicate=0.1, reorder=0.1)
    first, last = net.names[0], net.names[-1]
    cache = KVCache(2, 2, 32, "q4_0", page_tokens=8, runtime=RECORD)
    cache.append(*rows(cache, 30, seed))
    net[first].kv["seq"] = cache
    net.run_until_quiescent(5000)
    mirror = net[last].kv["seq"]
    assert mirror.geometry.runtime == RECORD and mirror.ready
    # The owner re-creates the cache under another configuration: every
    # mirror is rebuilt with the new record.
    other = encode_record({**decode_record(RECORD), "rotation": "off"})
    again = KVCache(2, 2, 32, "q4_0", page_tokens=8, runtime=other)
    again.append(*rows(again, 12, seed + 1))
    net[first].kv["seq"] = again
    net.run_until_quiescent(5000)
    mirror = net[last].kv["seq"]
    assert mirror.geometry.runtime == other and mirror.tokens == 12


def test_durable_replicas_and_cache_files_keep_the_record(tmp_path: Path) -> None:
    cache = KVCache(2, 1, 64, "mlx4", page_tokens=4, scale_type="bf16", runtime=RECORD)
    cache.append(*rows(cache, 9, 0))
    path = tmp_path / "a.db"
    a = Memory("a", path=path)
    a.kv["ctx"] = cache
    a.close()
    with Memory("a", path=path) as b:
        assert b.kv["ctx"].geometry == cache.geometry
    cache.save(tmp_path / "c.safetensors")
    assert KVCache.load(tmp_path / "c.safetensors").geometry == cache.geometry
    plain = KVCache(1, 1, 32, "q8_0")
    plain.save(tmp_path / "p.safetensors")
    assert KVCache.load(tmp_path / "p.safetensors").geometry.runtime == ""


def test_gguf_fingerprints_cover_tensor_data_not_metadata(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")

    def write(path: Path, name: str, value: float) -> str:
        w = gguf.GGUFWriter(str(path), "llama")
        w.add_name(name)
        w.add_tensor("a", np.full((4, 8), value, np.float32))
        w.add_tensor("b", np.arange(16, dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return gguf_fingerprint(path)

    base = write(tmp_path / "a.gguf", "model one", 1.0)
    assert write(tmp_path / "b.gguf", "renamed, same weights", 1.0) == base
    assert write(tmp_path / "c.gguf", "model one", 1.5) != base
    assert gguf_fingerprint(tmp_path / "a.gguf") == base  # from the memo, same answer
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 16)
    with pytest.raises(DecodeError):
        gguf_fingerprint(tmp_path / "bad.gguf")
    (tmp_path / "no.gguf").write_bytes(json.dumps({}).encode())
    with pytest.raises(DecodeError):
        gguf_fingerprint(tmp_path / "no.gguf")


def test_mlx_lm_records_compare_weights_and_positions() -> None:
    mx = pytest.importorskip("mlx.core")
    llama = pytest.importorskip("mlx_lm.models.llama")
    mlx_cache = pytest.importorskip("mlx_lm.models.cache")
    mlx_utils = pytest.importorskip("mlx.utils")
    from hybridsync.adapters.mlx_lm import from_mlx_lm, runtime_record, to_mlx_lm

    def model(seed: int, theta: float = 10000.0) -> object:
        mx.random.seed(seed)
        args = llama.ModelArgs(
            model_type="llama",
            hidden_size=128,
            num_hidden_layers=2,
            intermediate_size=256,
            num_attention_heads=2,
            num_key_value_heads=1,
            rms_norm_eps=1e-5,
            vocab_size=64,
            rope_theta=theta,
        )
        m = llama.Model(args)
        mx.eval(m.parameters())
        return m

    a = model(1)
    cache = [mlx_cache.QuantizedKVCache(group_size=64, bits=4) for _ in range(2)]
    a(mx.array(np.arange(20) % 64)[None], cache=cache)  # type: ignore[operator]
    kv = from_mlx_lm(cache, model=a)
    record = decode_record(kv.geometry.runtime)
    assert record == runtime_record(a) and record["runtime"] == "mlx-lm"
    assert len(to_mlx_lm(kv, model=a)) == 2
    with pytest.raises(IncompatibleCacheError) as e:
        to_mlx_lm(kv, model=model(2))
    assert e.value.field == "model"
    # The same weights under another rope base: the fingerprint matches, the position does not.
    b = model(3, theta=500000.0)
    b.load_weights(list(mlx_utils.tree_flatten(a.parameters())))  # type: ignore[attr-defined]
    assert runtime_record(b)["model"] == record["model"]
    with pytest.raises(IncompatibleCacheError) as e:
        to_mlx_lm(kv, model=b)
    assert e.value.field == "rope_theta"


def test_llama_cpp_context_options_default_to_q8_0() -> None:
    from hybridsync.adapters.llama_cpp import DEFAULT_KV, context_options

    assert DEFAULT_KV == "q8_0"
    assert context_options() == {"type_k": 8, "type_v": 8, "flash_attn": True}
    assert context_options("q4_0")["type_v"] == 2
    with pytest.raises(InvalidArgumentError):
        context_options("q5_1")
