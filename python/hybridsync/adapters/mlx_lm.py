"""mlx-lm's ``QuantizedKVCache`` <-> :class:`~hybridsync.kv.KVCache` (``mlx4``).

mlx-lm keeps, per layer, ``keys`` and ``values`` as ``(codes uint32
[B, H, capacity, D/8], scales [B, H, capacity, D/64], biases [...])`` with
``offset`` tokens in use and the capacity grown in steps of 256. Only the
rows in use cross: padding is not part of a cache's content. Import needs
``bits=4, group_size=64`` and batch size 1 (convert a float cache with
``cache.to_quantized(group_size=64, bits=4)``).

With ``model=`` (the mlx-lm model), :func:`from_mlx_lm` stores the model's
:func:`runtime_record` (a fingerprint of its weights, the quantization, the
positional parameters) in the cache's geometry, and :func:`to_mlx_lm`
compares it with the target model's, raising
:class:`~hybridsync.errors.IncompatibleCacheError` that names the field.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybridsync.adapters.runtime import check_record, decode_record, encode_record
from hybridsync.channels.kv import KVCache
from hybridsync.channels.kvfile import read_safetensors
from hybridsync.errors import DecodeError, HybridSyncError, InvalidArgumentError

__all__ = [
    "REQUIRED_FIELDS",
    "from_mlx_lm",
    "load_prompt_cache",
    "runtime_record",
    "save_prompt_cache",
    "to_mlx_lm",
]

#: Record fields a restore must match (``mlx_lm`` is informational).
REQUIRED_FIELDS = (
    "runtime",
    "model",
    "bits",
    "group_size",
    "rope_theta",
    "rope_traditional",
    "rope_scaling",
    "max_position_embeddings",
)
_POSITIONAL = ("rope_theta", "rope_traditional", "rope_scaling", "max_position_embeddings")
_fingerprints: dict[int, str] = {}


def _fingerprint(model: Any) -> str:
    """A hash (BLAKE2b-128) of the model's parameters (names, dtypes, shapes,
    bytes), computed once per model object."""
    key = id(model)
    if key in _fingerprints:
        return _fingerprints[key]
    import mlx.core as mx
    from mlx.utils import tree_flatten

    h = hashlib.blake2b(digest_size=16)
    params: Any = tree_flatten(model.parameters())
    for name, value in sorted(params, key=lambda kv: kv[0]):
        if value.dtype == mx.bfloat16:
            value = value.view(mx.uint16)
        arr = np.array(value)
        h.update(f"{name}:{arr.dtype.str}:{arr.shape};".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    out = "mlx:" + h.hexdigest()
    _fingerprints[key] = out
    weakref.finalize(model, _fingerprints.pop, key, None)
    return out


def runtime_record(model: Any) -> dict[str, str]:
    """What a cache computed by ``model`` (an mlx-lm model) needs from the
    model it is restored into: a fingerprint of the weights, the cache
    quantization (4 bits, groups of 64), the positional parameters of its
    ``args``; ``mlx_lm`` (the version) is informational."""
    from importlib import metadata

    args = getattr(model, "args", None)
    record = {"runtime": "mlx-lm", "model": _fingerprint(model), "bits": "4", "group_size": "64"}
    for name in _POSITIONAL:
        value = getattr(args, name, None)
        record[name] = json.dumps(value, sort_keys=True, default=str)
    try:
        record["mlx_lm"] = metadata.version("mlx-lm")
    except metadata.PackageNotFoundError:
        record["mlx_lm"] = "unknown"
    return record


_STEP = 256


def _scale_type(dtype: Any) -> str:
    import mlx.core as mx

    names = {mx.float16: "f16", mx.bfloat16: "bf16", mx.float32: "f32"}
    if dtype not in names:
        raise InvalidArgumentError(f"scales of dtype {dtype} are not float16, bfloat16 or float32")
    return names[dtype]


def _bytes(a: Any, rows: int) -> np.ndarray:
    """``a[0, :, :rows]`` of an mlx array as raw bytes ``[H, rows, cols]``."""
    import mlx.core as mx

    a = a[0, :, :rows]
    if a.dtype == mx.bfloat16:
        a = a.view(mx.uint16)
    arr = np.array(a)
    return arr.view(np.uint8).reshape(arr.shape[0], rows, -1)


def from_mlx_lm(
    prompt_cache: Sequence[Any], *, page_tokens: int = 256, model: Any = None
) -> KVCache:
    """A new owned ``mlx4`` :class:`KVCache` holding the per-layer
    ``QuantizedKVCache`` objects' tokens (bit-identical rows); with
    ``model``, its :func:`runtime_record` in the geometry."""
    from mlx_lm.models.cache import QuantizedKVCache

    if not prompt_cache:
        raise InvalidArgumentError("prompt_cache is empty")
    offsets: set[int] = set()
    for i, c in enumerate(prompt_cache):
        if not isinstance(c, QuantizedKVCache):
            raise InvalidArgumentError(
                f"layer {i} holds a {type(c).__name__}, not a QuantizedKVCache "
                "(convert with cache.to_quantized(group_size=64, bits=4))"
            )
        if c.bits != 4 or c.group_size != 64:
            raise InvalidArgumentError(
                f"layer {i} is quantized with bits={c.bits}, group_size={c.group_size}; "
                "mlx4 caches use bits=4, group_size=64"
            )
        if c.keys is None:
            raise InvalidArgumentError(f"layer {i} holds no tokens yet")
        if c.keys[0].shape[0] != 1:
            raise InvalidArgumentError(f"layer {i} has batch size {c.keys[0].shape[0]}, not 1")
        offsets.add(c.offset)
    if len(offsets) != 1:
        raise InvalidArgumentError(f"layers hold different token counts: {sorted(offsets)}")
    tokens = offsets.pop()
    first = prompt_cache[0]
    heads = first.keys[0].shape[1]
    head_dim = first.keys[0].shape[-1] * 8
    st = _scale_type(first.keys[1].dtype)
    runtime = encode_record(runtime_record(model)) if model is not None else ""
    cache = KVCache(
        len(prompt_cache), heads, head_dim, "mlx4", page_tokens, scale_type=st, runtime=runtime
    )
    ks: list[np.ndarray] = []
    vs: list[np.ndarray] = []
    for c in prompt_cache:
        for parts, out in ((c.keys, ks), (c.values, vs)):
            if _scale_type(parts[1].dtype) != st or parts[0].shape[1] != heads:
                raise InvalidArgumentError("layers differ in heads or scale dtype")
            out.append(np.concatenate([_bytes(p, tokens) for p in parts], axis=-1))
    if tokens:
        cache.append_quantized(np.stack(ks), np.stack(vs))
    return cache


def _mx(a: np.ndarray, capacity: int) -> Any:
    import mlx.core as mx

    padded = np.zeros((1, a.shape[0], capacity, a.shape[2]), dtype=a.dtype)
    padded[0, :, : a.shape[1]] = a
    if padded.dtype == np.uint16:  # bf16 bits
        return mx.array(padded).view(mx.bfloat16)
    return mx.array(padded)


def to_mlx_lm(cache: KVCache, *, model: Any = None) -> list[Any]:
    """Per-layer ``QuantizedKVCache`` objects holding the cache's tokens,
    ready for ``model(tokens, cache=...)``. With ``model`` and a cache that
    carries a runtime record, raises :class:`IncompatibleCacheError` naming
    the first of :data:`REQUIRED_FIELDS` that differs."""
    from mlx_lm.models.cache import QuantizedKVCache

    if cache.fmt != "mlx4":
        raise InvalidArgumentError(f"mlx-lm caches are mlx4; this cache is {cache.fmt}")
    if model is not None and cache.geometry.runtime:
        check_record(decode_record(cache.geometry.runtime), runtime_record(model), REQUIRED_FIELDS)
    capacity = max(-(-cache.tokens // _STEP), 1) * _STEP
    out = []
    for layer in range(cache.layers):
        qc: Any = QuantizedKVCache(group_size=64, bits=4)
        qc.keys = tuple(_mx(a, capacity) for a in cache.mlx_arrays(layer, "k"))
        qc.values = tuple(_mx(a, capacity) for a in cache.mlx_arrays(layer, "v"))
        qc.offset = cache.tokens
        out.append(qc)
    return out


#: Components of a flattened prompt-cache key ("layer.keys.part", "2.4.1").
_MAX_KEY_PARTS = 8


def _check_prompt_cache(path: Path) -> None:
    """Validate what mlx-lm's loader trusts, before it runs.

    The safetensors container (header size, nesting, dtypes, shapes, offsets
    within the file) is checked by :func:`read_safetensors`; then the key
    names, which ``tree_unflatten`` turns into nested lists (an index of
    ``10**9`` would allocate a billion-entry list; a thousand dots recurse a
    thousand levels), and the layer classes the file names (only
    ``QuantizedKVCache`` imports).
    """
    if path.suffix != ".safetensors":
        raise InvalidArgumentError(f"{path}: mlx-lm prompt caches are .safetensors files")
    entries, meta, _ = read_safetensors(path)
    count = len(entries) + len(meta)
    for key in (*entries, *meta):
        parts = key.split(".")
        if len(parts) > _MAX_KEY_PARTS:
            raise DecodeError(f"{path}: key {key[:80]!r} is nested more than {_MAX_KEY_PARTS} deep")
        for part in parts:
            try:
                index = int(part)
            except ValueError:
                continue
            if abs(index) > count:
                raise DecodeError(
                    f"{path}: key {key[:80]!r} names index {index} among only {count} entries"
                )
    for key, value in meta.items():
        if key.startswith("1.") and value != "QuantizedKVCache":
            raise InvalidArgumentError(
                f"{path}: layer {key[2:]} holds a {value[:40]!r}, not a QuantizedKVCache "
                "(convert with cache.to_quantized(group_size=64, bits=4))"
            )


def load_prompt_cache(path: str | Path, *, page_tokens: int = 256) -> KVCache:
    """Read an mlx-lm ``save_prompt_cache`` file of ``QuantizedKVCache`` layers.

    A malformed, truncated or foreign file raises a
    :class:`~hybridsync.errors.HybridSyncError` (mostly
    :class:`~hybridsync.errors.DecodeError`), checked before mlx reads it.
    """
    from mlx_lm.models import cache as mlx_cache

    path = Path(path)
    _check_prompt_cache(path)
    try:
        loaded: Any = getattr(mlx_cache, "load_prompt_cache")(str(path))  # noqa: B009 (untyped)
    except Exception as exc:  # mlx and mlx-lm raise many unrelated types
        raise DecodeError(f"{path}: not a readable mlx-lm prompt cache: {exc}") from exc
    try:
        return from_mlx_lm(loaded, page_tokens=page_tokens)
    except HybridSyncError:
        raise
    except Exception as exc:  # layers of unexpected shapes or types
        raise DecodeError(f"{path}: malformed mlx-lm prompt cache: {exc}") from exc


def save_prompt_cache(
    path: str | Path, cache: KVCache, metadata: dict[str, str] | None = None
) -> None:
    """Write ``cache`` as an mlx-lm prompt-cache file (``mlx_lm`` loads it)."""
    from mlx_lm.models.cache import save_prompt_cache as mlx_save

    mlx_save(str(path), to_mlx_lm(cache), metadata or {})
