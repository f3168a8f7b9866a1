"""KV caches as safetensors files.

The format is the standard safetensors layout (an 8-byte little-endian header
length, a JSON header, the tensor bytes) written here directly because the
``safetensors`` package's numpy API cannot express bfloat16 tensors, which
mlx4 caches with bf16 scales need. Files are written atomically: a temporary
file in the same directory, fsync, rename, fsync of the directory.

Tensors:

- ``mlx4``: the agent-memory layout, one group per 256-token block ``b``:
  ``L{layer}_B{b}_{K|V}_{weights|scales|biases}``, shaped
  ``[kv_heads, rows, head_dim/8]`` (U32) and ``[kv_heads, rows, head_dim/64]``
  (F16, BF16 or F32); ``rows`` is 256 except in the last block.
- ``q4_0`` / ``q8_0``: ``L{layer}_{K|V}``, U8 ``[kv_heads, tokens, row_bytes]``
  (GGML blocks, one row per token and head); ``f16``: F16
  ``[kv_heads, tokens, head_dim]``.

Metadata (strings): ``format`` = ``hybridsync.kv``, ``version``, the geometry,
``tokens`` and ``digest`` (the page-table digest, hex). Loading recomputes
the page hashes and refuses a file whose digest does not match
(:class:`~hybridsync.errors.DecodeError`): a corrupted file is never served.
Before that, everything the header declares (its length and JSON nesting,
every tensor's dtype, shape and byte range, the token count) is checked
against the file's size before anything is allocated: a damaged file raises
:class:`~hybridsync.errors.DecodeError` naming what is wrong, in memory and
time proportional to its size.
mlx4 files without hybridsync metadata (written by other tools in the same
layout) load with the geometry read from the tensor shapes.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import secrets
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hybridsync._json import loads as loads_json
from hybridsync.channels.kv import KVCache, mlx4_parts
from hybridsync.errors import DecodeError, HybridSyncError

__all__ = ["load_cache", "save_cache"]

FILE_FORMAT = "hybridsync.kv"
FILE_VERSION = "1"
BLOCK_TOKENS = 256
_DTYPES = {"f16": "F16", "bf16": "BF16", "f32": "F32"}
_SCALE_OF = {v: k for k, v in _DTYPES.items()}


def _tensors(cache: KVCache) -> list[tuple[str, str, list[int], np.ndarray]]:
    g = cache.geometry
    out: list[tuple[str, str, list[int], np.ndarray]] = []
    for layer in range(g.layers):
        for kind, tag in ((0, "K"), (1, "V")):
            rows = cache.quantized(layer, "kv"[kind])
            if g.fmt == "f16":
                halves = rows.view(np.float16)
                out.append((f"L{layer}_{tag}", "F16", list(halves.shape), halves))
                continue
            if g.fmt != "mlx4":
                out.append((f"L{layer}_{tag}", "U8", list(rows.shape), rows))
                continue
            for b, start in enumerate(range(0, cache.tokens, BLOCK_TOKENS)):
                block = rows[:, start : start + BLOCK_TOKENS]
                w, s, bias = mlx4_parts(block, g.head_dim, g.scale_type)
                st = _DTYPES[g.scale_type]
                out.append((f"L{layer}_B{b}_{tag}_weights", "U32", list(w.shape), w))
                out.append((f"L{layer}_B{b}_{tag}_scales", st, list(s.shape), s))
                out.append((f"L{layer}_B{b}_{tag}_biases", st, list(bias.shape), bias))
    return out


def save_cache(cache: KVCache, path: Any) -> None:
    """Write ``cache`` to ``path`` atomically (see the module documentation)."""
    path = Path(path)
    g = cache.geometry
    tensors = _tensors(cache)
    header: dict[str, Any] = {
        "__metadata__": {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "fmt": g.fmt,
            "scale_type": g.scale_type,
            "layers": str(g.layers),
            "kv_heads": str(g.kv_heads),
            "head_dim": str(g.head_dim),
            "page_tokens": str(g.page_tokens),
            "tokens": str(cache.tokens),
            "digest": f"{cache.digest():016x}",
            **({"runtime": g.runtime} if g.runtime else {}),
            "uid": f"{cache.uid:016x}",
        }
    }
    offset = 0
    for name, dtype, shape, arr in tensors:
        n = arr.size * arr.itemsize
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for _, _, _, arr in tensors:
                f.write(np.ascontiguousarray(arr).data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


#: Bytes per element of the safetensors dtypes (the loader validates any
#: tensor it is given, also those it does not use).
_ITEM = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}
_MAX_HEADER = 100 << 20
#: A safetensors header is an object of objects of arrays of integers.
_MAX_DEPTH = 4
_MAX_DIMS = 16
_DECIMAL = re.compile(r"[0-9]{1,12}")
_HEX64 = re.compile(r"[0-9a-f]{1,16}")


@dataclass(frozen=True)
class Tensor:
    """One validated header entry: its dtype, shape and byte range in the body."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def byte_shape(self) -> tuple[int, ...]:
        """The shape with the last axis counted in bytes."""
        item = _ITEM[self.dtype]
        return (*self.shape[:-1], self.shape[-1] * item) if self.shape else (item,)


def _uint(x: object) -> bool:
    return type(x) is int and x >= 0


def read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str], memoryview]:
    """The validated tensor index, metadata and body of a safetensors file.

    Everything the header declares is checked against the file before anything
    is allocated: the header fits the file, its JSON is at most
    ``_MAX_DEPTH`` levels deep, every tensor has a known dtype, a shape of
    non-negative integers and a byte range inside the body of exactly the
    size its shape needs; metadata maps strings to strings. Anything else
    raises :class:`DecodeError`.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except IsADirectoryError:
        raise DecodeError(f"{path}: a directory, not a safetensors file") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DecodeError(f"{path}: not a regular file")
        size = st.st_size
        if size < 8:
            raise DecodeError(f"{path}: not a safetensors file ({size} bytes)")
        data = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    view = memoryview(data)
    (n,) = struct.unpack_from("<Q", view)
    if n > min(_MAX_HEADER, size - 8):
        raise DecodeError(f"{path}: header length {n} does not fit the file of {size} bytes")
    header = loads_json(bytes(view[8 : 8 + n]), f"{path}: safetensors header", max_depth=_MAX_DEPTH)
    if not isinstance(header, dict):
        raise DecodeError(f"{path}: the safetensors header is not a JSON object")
    body = view[8 + n :]
    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise DecodeError(f"{path}: __metadata__ is not an object of strings")
    entries: dict[str, Tensor] = {}
    for name, info in header.items():
        if not isinstance(info, dict):
            raise DecodeError(f"{path}: tensor {name!r}: its header entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in _ITEM:
            raise DecodeError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or len(shape) > _MAX_DIMS or not all(map(_uint, shape)):
            raise DecodeError(
                f"{path}: tensor {name!r}: shape {shape!r} is not a list of at most "
                f"{_MAX_DIMS} non-negative integers"
            )
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_uint, offsets)):
            raise DecodeError(
                f"{path}: tensor {name!r}: data_offsets {offsets!r} is not [begin, end]"
            )
        begin, end = offsets
        if not begin <= end <= len(body):
            raise DecodeError(
                f"{path}: tensor {name!r}: bytes {begin}..{end} lie outside the "
                f"{len(body)}-byte body (truncated file or corrupt header)"
            )
        if end - begin != math.prod(shape) * _ITEM[dtype]:
            raise DecodeError(
                f"{path}: tensor {name!r}: shape {shape} of {dtype} does not fit its "
                f"{end - begin} bytes"
            )
        entries[name] = Tensor(dtype, tuple(shape), begin, end)
    return entries, meta, body


def _rows(
    entries: dict[str, Tensor], body: memoryview, name: str, want: tuple[int, int, int], path: Path
) -> np.ndarray:
    """Tensor ``name`` as uint8 rows of shape ``want`` (heads, tokens, bytes)."""
    t = entries.get(name)
    if t is None:
        raise DecodeError(f"{path}: tensor {name!r} is missing")
    if t.byte_shape[-3:] != want or t.end - t.begin != math.prod(want):
        raise DecodeError(
            f"{path}: tensor {name!r} has shape {list(t.shape)} ({t.dtype}); "
            f"expected {want[0]} heads x {want[1]} tokens x {want[2]} bytes"
        )
    return np.frombuffer(body[t.begin : t.end], dtype=np.uint8).reshape(want)


def _int(meta: dict[str, str], key: str, path: Path) -> int:
    value = meta.get(key)
    if value is None or not _DECIMAL.fullmatch(value):
        raise DecodeError(f"{path}: metadata {key!r} is missing or not a decimal integer")
    return int(value)


def _infer_mlx4(entries: dict[str, Tensor], path: Path) -> dict[str, str]:
    """Geometry of an mlx4 file without hybridsync metadata."""
    pat = re.compile(r"L([0-9]{1,6})_B([0-9]{1,6})_([KV])_(weights|scales|biases)")
    found = [m for m in map(pat.fullmatch, entries) if m]
    if not found:
        raise DecodeError(f"{path}: neither hybridsync metadata nor the L*_B*_* mlx4 layout")
    layers = 1 + max(int(m.group(1)) for m in found)
    blocks = 1 + max(int(m.group(2)) for m in found)
    w = entries.get("L0_B0_K_weights")
    s = entries.get("L0_B0_K_scales")
    if w is None or s is None or len(w.shape) < 3:
        raise DecodeError(f"{path}: an incomplete or malformed L*_B*_* mlx4 layout")
    tokens = 0
    for b in range(blocks):
        t = entries.get(f"L0_B{b}_K_weights")
        if t is None or len(t.shape) < 3:
            raise DecodeError(f"{path}: mlx4 block {b} of layer 0 is missing or malformed")
        tokens += t.shape[-2]
    return {
        "fmt": "mlx4",
        "scale_type": _SCALE_OF.get(s.dtype, "?"),
        "layers": str(layers),
        "kv_heads": str(w.shape[-3]),
        "head_dim": str(w.shape[-1] * 8),
        "page_tokens": str(BLOCK_TOKENS),
        "tokens": str(tokens),
    }


def load_cache(path: Any) -> KVCache:
    """Read a cache file. A malformed, truncated or corrupted file raises
    :class:`DecodeError` (naming what is wrong); memory and time stay
    proportional to the file's size whatever its header declares."""
    path = Path(path)
    entries, meta, body = read_safetensors(path)
    if meta.get("format") != FILE_FORMAT:
        meta = _infer_mlx4(entries, path)
    elif meta.get("version") != FILE_VERSION:
        raise DecodeError(f"{path}: cache file version {meta.get('version')!r} is not supported")
    try:
        cache = KVCache(
            _int(meta, "layers", path),
            _int(meta, "kv_heads", path),
            _int(meta, "head_dim", path),
            meta.get("fmt", "?"),
            _int(meta, "page_tokens", path),
            scale_type=meta.get("scale_type", "f16"),
            runtime=meta.get("runtime", ""),
        )
    except DecodeError:
        raise
    except HybridSyncError as exc:
        raise DecodeError(f"{path}: bad cache geometry: {exc}") from None
    g = cache.geometry
    tokens = _int(meta, "tokens", path)
    rb = cache.row_bytes
    need = g.layers * 2 * g.kv_heads * tokens * rb
    if need > len(body):
        raise DecodeError(
            f"{path}: {tokens} tokens of this geometry need {need} bytes; the file holds "
            f"{len(body)}"
        )
    rows = []
    for layer in range(g.layers):
        both = []
        for tag in "KV":
            if g.fmt != "mlx4":
                want = (g.kv_heads, tokens, rb)
                both.append(_rows(entries, body, f"L{layer}_{tag}", want, path))
                continue
            parts = []
            for b, start in enumerate(range(0, tokens, BLOCK_TOKENS)):
                n = min(BLOCK_TOKENS, tokens - start)
                block = [
                    _rows(entries, body, f"L{layer}_B{b}_{tag}_{part}", (g.kv_heads, n, cols), path)
                    for part, cols in (
                        ("weights", g.head_dim // 2),
                        ("scales", rb // 2 - g.head_dim // 4),
                        ("biases", rb // 2 - g.head_dim // 4),
                    )
                ]
                parts.append(np.concatenate(block, axis=-1))
            both.append(
                np.concatenate(parts, axis=1) if parts else np.zeros((g.kv_heads, 0, rb), np.uint8)
            )
        rows.append(both)
    uid = meta.get("uid", "0")
    if not _HEX64.fullmatch(uid):
        raise DecodeError(f"{path}: metadata 'uid' is not a 64-bit hexadecimal number")
    if tokens:
        try:
            cache.append_quantized(np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]))
        except HybridSyncError as exc:
            raise DecodeError(f"{path}: the cache rows do not load: {exc}") from None
    cache.uid = int(uid, 16)
    want_digest = meta.get("digest")
    if want_digest is not None and f"{cache.digest():016x}" != want_digest:
        raise DecodeError(f"{path}: page digest mismatch: the file is corrupted")
    return cache
