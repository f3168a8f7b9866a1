"""llama.cpp sequence state bytes <-> :class:`~hybridsync.kv.KVCache`.

``llama_state_seq_get_data(ctx, buf, size, seq_id)`` writes one sequence's
KV cache; ``llama_state_seq_set_data`` restores it (both bound in
llama-cpp-python). The payload (llama.cpp's ``llama_kv_cache::state_write``,
all little-endian) is::

    [u64 prefix]                      (recent builds; checked by set_data)
    u32 n_stream                      (1: a unified cache)
    u32 cell_count
    cell_count x (i32 pos, u32 n_seq_id, n_seq_id x i32 seq_id)
    u32 v_trans, u32 n_layer
    n_layer x (i32 k_type, u64 k_row_bytes, cell_count rows)
    v_trans == 0: n_layer x (i32 v_type, u64 v_row_bytes, cell_count rows)
    v_trans == 1: n_layer x (i32 v_type, u32 v_elem_bytes, u32 n_embd_v,
                             n_embd_v x cell_count elements)

One row holds a token's keys (values) for every head, heads one after the
other, so a row of ``kv_heads x head_dim`` values is exactly the
concatenation of the per-head rows a :class:`KVCache` stores. Supported
types: F16 (1), Q4_0 (2) and Q8_0 (8), with equal K and V types; quantized V
caches are never transposed (llama.cpp needs flash attention for them).
Import needs the cells to be positions ``0 .. n-1`` of one sequence, in order
(what a sequence prefilled from the start holds); ``to_llama_state`` then
reproduces the bytes exactly. The 64-bit prefix recent builds write (and
verify on restore; it depends on the model) is detected, kept in
:class:`LlamaState` and written back.

With llama-cpp-python, :func:`export_sequence` reads a ``Llama`` context's
sequence straight into a :class:`KVCache` and :func:`restore_sequence` writes
one back (use these rather than ``Llama.save_state``, which also copies the
whole logits array).

The state bytes do not say which weights, cache types or positional
settings wrote them, and llama.cpp restores some mismatches "successfully"
into wrong logits (a state of a rotated quantized cache into a context
without the rotation) or refuses others with only a log line. So
:func:`export_sequence` stores the context's :func:`runtime_record` in the
cache's geometry (it travels with every mirror) and :func:`restore_sequence`
compares it with the target context's, raising
:class:`~hybridsync.errors.IncompatibleCacheError` that names the field
(:data:`REQUIRED_FIELDS`).
"""

from __future__ import annotations

import ctypes
import operator
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybridsync.adapters.runtime import (
    check_record,
    decode_record,
    encode_record,
    gguf_fingerprint,
)
from hybridsync.channels.kv import KVCache
from hybridsync.errors import (
    DecodeError,
    HybridSyncError,
    IncompatibleCacheError,
    InvalidArgumentError,
)

__all__ = [
    "DEFAULT_KV",
    "REQUIRED_FIELDS",
    "LlamaState",
    "context_options",
    "export_sequence",
    "from_llama_state",
    "model_geometry",
    "restore_sequence",
    "runtime_record",
    "to_llama_state",
]

_TYPES = {1: "f16", 2: "q4_0", 8: "q8_0"}
_TYPE_IDS = {v: k for k, v in _TYPES.items()}
_GGML_TYPES = {0: "f32", **_TYPES}
#: llama.cpp reads it when a context is created: set (not "0"), quantized
#: caches are not rotated.
ROTATION_ENV = "LLAMA_ATTN_ROT_DISABLE"

#: Record fields a restore must match (the others are informational:
#: ``n_ctx`` is checked as a capacity, ``build`` may differ).
REQUIRED_FIELDS = (
    "runtime",
    "model",
    "type_k",
    "type_v",
    "rotation",
    "rope_type",
    "rope_freq_base",
    "rope_freq_scale",
    "rope_scaling_type",
    "yarn_ext_factor",
    "yarn_attn_factor",
    "yarn_beta_fast",
    "yarn_beta_slow",
    "yarn_orig_ctx",
    "n_swa",
    "state_format",
)


@dataclass(frozen=True)
class LlamaState:
    """What a sequence state holds besides the cache rows."""

    seq_id: int
    v_trans: bool
    #: The bytes before ``n_stream`` (empty for builds that write none).
    prefix: bytes = b""


class _Reader:
    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or n > len(self.data) - self.pos:
            raise DecodeError(
                f"llama.cpp state truncated: {n} bytes needed at byte {self.pos}, "
                f"{len(self.data) - self.pos} left"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple[int, ...]:
        s = struct.Struct("<" + fmt)
        return s.unpack(self.take(s.size))


def from_llama_state(
    data: bytes, *, kv_heads: int, head_dim: int, page_tokens: int = 256, runtime: str = ""
) -> tuple[KVCache, LlamaState]:
    """Import one sequence's state bytes (``kv_heads`` and ``head_dim`` come
    from the model: the payload only knows row sizes; ``runtime``: the
    geometry's runtime record, see :func:`runtime_record`)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidArgumentError(f"state data is bytes, got {type(data).__name__}")
    try:
        kv_heads, head_dim, page_tokens = (
            operator.index(v) for v in (kv_heads, head_dim, page_tokens)
        )
    except TypeError:
        raise InvalidArgumentError(
            f"kv_heads, head_dim and page_tokens are ints, got {kv_heads!r}, {head_dim!r}, "
            f"{page_tokens!r}"
        ) from None
    if min(kv_heads, head_dim, page_tokens) <= 0:
        raise InvalidArgumentError(
            f"kv_heads, head_dim and page_tokens must be positive, got {kv_heads}, {head_dim}, "
            f"{page_tokens}"
        )
    parsed = _parse_any(bytes(data), kv_heads, head_dim)
    cache = KVCache(len(parsed.keys), kv_heads, head_dim, parsed.fmt, page_tokens, runtime=runtime)
    if parsed.cells:
        cache.append_quantized(*parsed.rows(0))
    return cache, parsed.state


def _parse_any(data: bytes | memoryview, kv_heads: int, head_dim: int) -> _Parsed:
    first: HybridSyncError | None = None
    for prefix in (0, 8):  # without, then with the 64-bit prefix
        try:
            return _parse(data, prefix, kv_heads, head_dim)
        except HybridSyncError as exc:
            first = first or exc
    assert first is not None
    raise first


def _parse(data: bytes | memoryview, prefix: int, kv_heads: int, head_dim: int) -> _Parsed:
    r = _Reader(data)
    head = bytes(r.take(prefix))
    (n_stream,) = r.unpack("I")
    if n_stream != 1:
        raise InvalidArgumentError(f"{n_stream} KV streams: only a unified cache (1) is supported")
    (cells,) = r.unpack("I")
    if cells * 12 > len(r.data) - r.pos:
        raise DecodeError(
            f"llama.cpp state declares {cells} cells; its {len(r.data) - r.pos} remaining "
            "bytes cannot hold them"
        )
    seq_ids = set()
    for i in range(cells):
        pos, n_seq = r.unpack("iI")
        if n_seq != 1:
            raise InvalidArgumentError(f"cell {i} belongs to {n_seq} sequences, not one")
        (seq_id,) = r.unpack("i")
        seq_ids.add(seq_id)
        if pos != i:
            raise InvalidArgumentError(f"cell {i} holds position {pos}: cells must be 0..n-1")
    if len(seq_ids) > 1:
        raise InvalidArgumentError(f"cells of several sequences: {sorted(seq_ids)}")
    v_trans, n_layer = r.unpack("II")
    if v_trans > 1 or not 0 < n_layer <= 4096:
        raise DecodeError(f"bad v_trans {v_trans} or layer count {n_layer}")
    n_embd = kv_heads * head_dim

    def rows(what: str) -> tuple[str, list[np.ndarray]]:
        fmts, out = set(), []
        for layer in range(n_layer):
            t, size = r.unpack("iQ")
            fmt = _TYPES.get(t)
            if fmt is None:
                raise InvalidArgumentError(f"{what} cache type {t} of layer {layer} is unsupported")
            cache_rb = KVCache(1, 1, head_dim, fmt).row_bytes
            if size != cache_rb * kv_heads:
                raise InvalidArgumentError(
                    f"{what} rows of layer {layer} have {size} bytes; {kv_heads} heads x "
                    f"{head_dim} {fmt} values need {cache_rb * kv_heads}"
                )
            raw = np.frombuffer(r.take(cells * size), dtype=np.uint8)
            out.append(raw.reshape(cells, kv_heads, cache_rb).transpose(1, 0, 2))
            fmts.add(fmt)
        if len(fmts) != 1:
            raise InvalidArgumentError(f"{what} layers mix types {sorted(fmts)}")
        return fmts.pop(), out

    kfmt, keys = rows("K")
    if not v_trans:
        vfmt, values = rows("V")
    else:
        vfmt, values = "f16", []
        for layer in range(n_layer):
            t, el, n_embd_v = r.unpack("iII")
            if t != 1 or el != 2 or n_embd_v != n_embd:
                raise InvalidArgumentError(
                    f"transposed V of layer {layer}: type {t}, element {el} bytes, {n_embd_v} "
                    f"values per token; expected F16 with {n_embd}"
                )
            raw = np.frombuffer(r.take(n_embd * cells * 2), dtype=np.uint16)
            per_token = raw.reshape(n_embd, cells).T.reshape(cells, kv_heads, head_dim)
            values.append(np.ascontiguousarray(per_token.transpose(1, 0, 2)).view(np.uint8))
    if kfmt != vfmt:
        raise InvalidArgumentError(f"K cache is {kfmt}, V cache {vfmt}: a KVCache has one format")
    if r.pos != len(r.data):
        raise DecodeError(f"{len(r.data) - r.pos} trailing bytes after the llama.cpp state")
    return _Parsed(
        kfmt, cells, keys, values, LlamaState(seq_ids.pop() if seq_ids else 0, bool(v_trans), head)
    )


@dataclass(frozen=True)
class _Parsed:
    fmt: str
    cells: int
    keys: list[np.ndarray]  # per layer [heads, cells, row_bytes] (views of the payload)
    values: list[np.ndarray]
    state: LlamaState

    def rows(self, first: int) -> tuple[np.ndarray, np.ndarray]:
        """Cells ``first ..`` as ``[layers, heads, n, row_bytes]`` arrays."""
        return (
            np.ascontiguousarray(np.stack([k[:, first:] for k in self.keys])),
            np.ascontiguousarray(np.stack([v[:, first:] for v in self.values])),
        )


def to_llama_state(
    cache: KVCache, *, seq_id: int = 0, v_trans: bool = False, prefix: bytes = b""
) -> bytes:
    """The cache as sequence state bytes for ``llama_state_seq_set_data``
    (cells at positions ``0 .. tokens-1`` of ``seq_id``; ``prefix``: what
    :class:`LlamaState` recorded, for builds that write one)."""
    return bytes(_state_buffer(cache, seq_id, v_trans, prefix))


def _state_buffer(cache: KVCache, seq_id: int, v_trans: bool, prefix: bytes) -> bytearray:
    """:func:`to_llama_state` written into one buffer (each row copied once)."""
    if len(prefix) not in (0, 8):
        raise InvalidArgumentError(f"prefix is 0 or 8 bytes, got {len(prefix)}")
    if cache.fmt not in _TYPE_IDS:
        raise InvalidArgumentError(f"llama.cpp caches are f16, q4_0 or q8_0; this is {cache.fmt}")
    if v_trans and cache.fmt != "f16":
        raise InvalidArgumentError("only F16 V caches can be transposed (v_trans)")
    n, heads, dim, layers = cache.tokens, cache.kv_heads, cache.head_dim, cache.layers
    t = _TYPE_IDS[cache.fmt]
    rb = cache.row_bytes * heads
    size = len(prefix) + 8 + 12 * n + 8 + 2 * layers * (12 + n * rb)
    out = bytearray(size)
    view = memoryview(out)
    pos = 0

    def put(data: bytes) -> None:
        nonlocal pos
        view[pos : pos + len(data)] = data
        pos += len(data)

    put(bytes(prefix))
    put(struct.pack("<II", 1, n))
    cells = np.empty((n, 3), "<i4")
    cells[:, 0] = np.arange(n)
    cells[:, 1] = 1
    cells[:, 2] = seq_id
    put(cells.tobytes())
    put(struct.pack("<II", int(v_trans), layers))
    for kind in ("k", "v"):
        for layer in range(layers):
            q = cache.quantized(layer, kind)  # [heads, n, row_bytes]
            if kind == "v" and v_trans:
                put(struct.pack("<iII", t, 2, heads * dim))
                dst = np.frombuffer(out, np.uint16, heads * dim * n, pos)
                dst.reshape(heads, dim, n)[...] = (
                    q.view(np.uint16).reshape(heads, n, dim).transpose(0, 2, 1)
                )
            else:
                put(struct.pack("<iQ", t, rb))
                dst = np.frombuffer(out, np.uint8, n * rb, pos)
                dst.reshape(n, heads, cache.row_bytes)[...] = q.transpose(1, 0, 2)
            pos += n * rb
    assert pos == size
    return out


# -- llama-cpp-python contexts ---------------------------------------------------

#: The KV cache type to mirror by default. Measured on SmolLM2-135M
#: (``make bench-precision``): Q8_0 costs a fraction of a percent of
#: perplexity and gave the same greedy tokens as F16 through 16 hand-offs,
#: at 53% of F16's bytes; Q4_0 (28%) costs about 5% of perplexity and changed
#: greedy output within a hundred tokens. Choose Q4_0 where bytes dominate (links
#: of 100 Mb/s and less).
DEFAULT_KV = "q8_0"


def context_options(kv: str = DEFAULT_KV) -> dict[str, Any]:
    """Keyword arguments for ``llama_cpp.Llama(...)`` that give its context a
    KV cache of type ``kv`` (``"q8_0"`` by default, ``"q4_0"`` or
    ``"f16"``): ``type_k``, ``type_v``, and ``flash_attn`` (llama.cpp needs it
    for a quantized V cache)."""
    if kv not in _TYPE_IDS:
        raise InvalidArgumentError(f"kv is one of {sorted(_TYPE_IDS)}, got {kv!r}")
    return {"type_k": _TYPE_IDS[kv], "type_v": _TYPE_IDS[kv], "flash_attn": True}


def _lib() -> Any:
    import llama_cpp

    return llama_cpp


def _ctx(llm: Any) -> Any:
    try:
        return llm._ctx.ctx
    except AttributeError:
        raise InvalidArgumentError(
            f"a llama_cpp.Llama with a context is needed, got {type(llm).__name__}"
        ) from None


def model_geometry(llm: Any) -> tuple[int, int, int]:
    """``(layers, kv_heads, head_dim)`` of a ``llama_cpp.Llama``'s model."""
    lib = _lib()
    model = llm.model
    layers = int(lib.llama_model_n_layer(model))
    kv_heads = int(lib.llama_model_n_head_kv(model))
    arch = llm.metadata.get("general.architecture", "llama")
    key_length = llm.metadata.get(f"{arch}.attention.key_length")
    if key_length is not None:
        head_dim = int(key_length)
    else:
        head_dim = int(lib.llama_model_n_embd(model)) // int(lib.llama_model_n_head(model))
    return layers, kv_heads, head_dim


def _type_name(code: int) -> str:
    return _GGML_TYPES.get(int(code), f"ggml type {int(code)}")


def runtime_record(llm: Any, state: LlamaState | None = None) -> dict[str, str]:
    """What a cache written by ``llm`` (a ``llama_cpp.Llama``) needs from a
    context it is restored into: the model's fingerprint (:func:`gguf_fingerprint`
    of its GGUF file), the K and V cache types, whether quantized caches are
    rotated (``LLAMA_ATTN_ROT_DISABLE``, read now: keep it as it was when the
    context was created), the positional parameters in effect, the sliding
    window, the state format; with ``state``, the state's prefix and V layout
    (so that a replica restores it without the original bytes). ``n_ctx``
    and ``build`` are informational."""
    lib = _lib()
    _ctx(llm)
    model = llm.model
    params = llm.context_params
    meta = llm.metadata
    arch = meta.get("general.architecture", "llama")
    type_k, type_v = _type_name(params.type_k), _type_name(params.type_v)
    quantized = type_k not in ("f16", "f32") or type_v not in ("f16", "f32")
    off = os.environ.get(ROTATION_ENV, "") not in ("", "0")
    base = float(params.rope_freq_base) or float(meta.get(f"{arch}.rope.freq_base", 10000.0))
    scale = float(params.rope_freq_scale) or float(lib.llama_model_rope_freq_scale_train(model))
    record = {
        "runtime": "llama.cpp",
        "model": "gguf:" + gguf_fingerprint(llm.model_path),
        "type_k": type_k,
        "type_v": type_v,
        "rotation": ("off" if off else "on") if quantized else "n/a",
        "rope_type": str(int(lib.llama_model_rope_type(model))),
        "rope_freq_base": repr(base),
        "rope_freq_scale": repr(scale),
        "rope_scaling_type": str(int(params.rope_scaling_type)),
        "yarn_ext_factor": repr(float(params.yarn_ext_factor)),
        "yarn_attn_factor": repr(float(params.yarn_attn_factor)),
        "yarn_beta_fast": repr(float(params.yarn_beta_fast)),
        "yarn_beta_slow": repr(float(params.yarn_beta_slow)),
        "yarn_orig_ctx": str(int(params.yarn_orig_ctx)),
        "n_swa": str(int(lib.llama_model_n_swa(model))),
        "state_format": f"seq{int(getattr(lib, 'LLAMA_STATE_SEQ_VERSION', 0))}",
        "n_ctx": str(int(llm.n_ctx())),
        "build": f"llama-cpp-python {getattr(lib, '__version__', 'unknown')}",
    }
    if state is not None:
        record["state_prefix"] = state.prefix.hex()
        record["v_trans"] = str(int(state.v_trans))
    return record


def _record_text(llm: Any, state: LlamaState) -> str:
    return encode_record(runtime_record(llm, state))


def export_sequence(
    llm: Any, *, seq_id: int = 0, page_tokens: int = 256, into: KVCache | None = None
) -> tuple[KVCache, LlamaState]:
    """Sequence ``seq_id`` of a ``llama_cpp.Llama`` context as a
    :class:`KVCache` (``llama_state_seq_get_data``: the cache rows only),
    with the context's :func:`runtime_record` in its geometry.

    ``into``: a cache this replica owns that already holds the sequence's
    first ``into.tokens`` tokens (exported earlier from the same context):
    only the tokens after them are appended to it (llama.cpp never rewrites
    the rows of earlier tokens), so a mirror receives just the new rows. A
    sequence shorter than ``into`` (the context dropped tokens) truncates it
    first. Returns ``into`` itself then. Raises
    :class:`IncompatibleCacheError` if ``into`` was written by a context of
    another configuration.
    """
    lib = _lib()
    ctx = _ctx(llm)
    size = int(lib.llama_state_seq_get_size(ctx, seq_id))
    buf = (ctypes.c_uint8 * size)()
    n = int(lib.llama_state_seq_get_data(ctx, buf, size, seq_id))
    if n <= 0:
        raise InvalidArgumentError(f"llama.cpp wrote no state for sequence {seq_id}")
    _, kv_heads, head_dim = model_geometry(llm)
    # Parsed in place: the rows are copied once, into the cache.
    parsed = _parse_any(memoryview(buf).cast("B")[:n], kv_heads, head_dim)
    runtime = _record_text(llm, parsed.state)
    if into is None:
        cache = KVCache(
            len(parsed.keys), kv_heads, head_dim, parsed.fmt, page_tokens, runtime=runtime
        )
        if parsed.cells:
            cache.append_quantized(*parsed.rows(0))
        return cache, parsed.state
    if not isinstance(into, KVCache):
        raise InvalidArgumentError(f"into must be a KVCache, got {type(into).__name__}")
    if (into.layers, into.kv_heads, into.head_dim, into.fmt) != (
        len(parsed.keys),
        kv_heads,
        head_dim,
        parsed.fmt,
    ):
        raise InvalidArgumentError(
            f"into is a {into.fmt} cache of {into.layers}x{into.kv_heads}x{into.head_dim}; the "
            f"sequence is {parsed.fmt}, {len(parsed.keys)}x{kv_heads}x{head_dim}"
        )
    if into.geometry.runtime:
        check_record(decode_record(into.geometry.runtime), decode_record(runtime), REQUIRED_FIELDS)
    if parsed.cells < into.tokens:
        into.truncate(parsed.cells)
    if parsed.cells > into.tokens:
        into.append_quantized(*parsed.rows(into.tokens))
    return into, parsed.state


def _context_prefix(llm: Any, seq_id: int) -> bytes:
    """The bytes this context writes before ``n_stream`` (its builds' 64-bit
    prefix, or none), read from the state of a sequence it holds no cells of."""
    lib = _lib()
    ctx = _ctx(llm)
    lib.llama_memory_seq_rm(lib.llama_get_memory(ctx), seq_id, -1, -1)
    size = int(lib.llama_state_seq_get_size(ctx, seq_id))
    buf = (ctypes.c_uint8 * size)()
    n = int(lib.llama_state_seq_get_data(ctx, buf, size, seq_id))
    data = bytes(memoryview(buf)[:n])
    for prefix in (0, 8):
        if data[prefix:] == struct.pack("<II", 1, 0):
            return data[:prefix]
    raise DecodeError(f"unexpected empty sequence state from llama.cpp: {data.hex()}")


def restore_sequence(
    llm: Any, cache: KVCache, state: LlamaState | None = None, *, seq_id: int = 0
) -> None:
    """Write ``cache`` into sequence ``seq_id`` of a ``llama_cpp.Llama``
    context (``llama_state_seq_set_data``) and set the wrapper's token count,
    so that the next ``llm.eval`` continues after the cache's last token.

    Raises :class:`IncompatibleCacheError` naming the field where the cache's
    runtime record (:func:`runtime_record`) differs from the context's in
    one of :data:`REQUIRED_FIELDS`, where the cache holds more tokens than
    the context has room for (``n_ctx``), or where llama.cpp refuses the
    bytes. A cache without a record (written by
    :func:`from_llama_state` without one) is still checked for its geometry
    and cache type. The context's sequence is left unchanged on every error
    but the last.
    """
    if not isinstance(cache, KVCache):
        raise InvalidArgumentError(f"cache must be a KVCache, got {type(cache).__name__}")
    if not cache.ready:
        raise InvalidArgumentError("the mirror is partial: its last pages have not arrived")
    lib = _lib()
    ctx = _ctx(llm)
    layers, kv_heads, head_dim = model_geometry(llm)
    if (cache.layers, cache.kv_heads, cache.head_dim) != (layers, kv_heads, head_dim):
        raise IncompatibleCacheError(
            f"the cache is {cache.layers} layers x {cache.kv_heads} heads x {cache.head_dim}; "
            f"the model is {layers} x {kv_heads} x {head_dim}",
            "geometry",
        )
    mine = runtime_record(llm)
    record = decode_record(cache.geometry.runtime)
    if record:
        check_record(record, mine, REQUIRED_FIELDS)
    else:
        check_record({"type_k": cache.fmt, "type_v": cache.fmt}, mine, ("type_k", "type_v"))
    if cache.tokens > int(llm.n_ctx()):
        raise IncompatibleCacheError(
            f"the cache holds {cache.tokens} tokens; the context has room for {llm.n_ctx()}",
            "n_ctx",
        )
    if state is not None:
        prefix, v_trans = state.prefix, state.v_trans
    elif "state_prefix" in record:
        try:
            prefix = bytes.fromhex(record["state_prefix"])
        except ValueError:
            raise DecodeError("the runtime record's state_prefix is not hex") from None
        v_trans = record.get("v_trans") == "1"
    else:
        prefix, v_trans = _context_prefix(llm, seq_id), False
    data = _state_buffer(cache, seq_id, v_trans, prefix)
    src = (ctypes.c_uint8 * len(data)).from_buffer(data)
    if int(lib.llama_state_seq_set_data(ctx, src, len(data), seq_id)) != len(data):
        raise IncompatibleCacheError(
            "llama.cpp refused the state (a cache type, the model or the state format "
            "differs from the context's)"
        )
    llm.n_tokens = cache.tokens
