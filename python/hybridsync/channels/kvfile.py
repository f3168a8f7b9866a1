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
mlx4 files without hybridsync metadata (written by other tools in the same
layout) load with the geometry read from the tensor shapes.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import secrets
import struct
from pathlib import Path
from typing import Any

import numpy as np

from hybridsync.channels.kv import KVCache, mlx4_parts
from hybridsync.errors import DecodeError, HybridSyncError

__all__ = ["load_cache", "save_cache"]

FILE_FORMAT = "hybridsync.kv"
FILE_VERSION = "1"
BLOCK_TOKENS = 256
_DTYPES = {"f16": "F16", "bf16": "BF16", "f32": "F32"}
_SCALE_OF = {v: k for k, v in _DTYPES.items()}
_SIZES = {"U8": 1, "U32": 4, "F16": 2, "BF16": 2, "F32": 4}
_MAX_HEADER = 100 << 20


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


def _read(path: Path) -> tuple[dict[str, Any], dict[str, str], memoryview]:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise DecodeError(f"{path}: not a safetensors file ({size} bytes)")
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    view = memoryview(data)
    (n,) = struct.unpack_from("<Q", view)
    if n > min(_MAX_HEADER, size - 8):
        raise DecodeError(f"{path}: header length {n} does not fit the file")
    try:
        header = json.loads(bytes(view[8 : 8 + n]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError(f"{path}: corrupt safetensors header: {exc}") from None
    if not isinstance(header, dict):
        raise DecodeError(f"{path}: corrupt safetensors header")
    meta = header.pop("__metadata__", {}) or {}
    return header, meta, view[8 + n :]


def _tensor(header: dict[str, Any], body: memoryview, name: str, path: Path) -> np.ndarray:
    info = header.get(name)
    if not isinstance(info, dict):
        raise DecodeError(f"{path}: tensor {name!r} is missing")
    try:
        dtype, shape = info["dtype"], [int(x) for x in info["shape"]]
        begin, end = (int(x) for x in info["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise DecodeError(f"{path}: tensor {name!r} has a corrupt header entry") from None
    if dtype not in _SIZES:
        raise DecodeError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
    want = int(np.prod(shape, dtype=np.int64)) * _SIZES[dtype]
    if not 0 <= begin <= end <= len(body) or end - begin != want:
        raise DecodeError(f"{path}: tensor {name!r} lies outside the file or has the wrong size")
    arr = np.frombuffer(body[begin:end], dtype=np.uint8)
    return arr.reshape(*shape, _SIZES[dtype]) if shape else arr


def _int(meta: dict[str, str], key: str, path: Path) -> int:
    try:
        return int(meta[key])
    except (KeyError, ValueError):
        raise DecodeError(f"{path}: metadata {key!r} is missing or not an integer") from None


def _infer_mlx4(header: dict[str, Any], path: Path) -> dict[str, str]:
    """Geometry of an mlx4 file without hybridsync metadata."""
    pat = re.compile(r"L(\d+)_B(\d+)_([KV])_(weights|scales|biases)$")
    found = [m for m in map(pat.match, header) if m]
    if not found:
        raise DecodeError(f"{path}: neither hybridsync metadata nor the L*_B*_* mlx4 layout")
    layers = 1 + max(int(m.group(1)) for m in found)
    blocks = 1 + max(int(m.group(2)) for m in found)
    w = header["L0_B0_K_weights"]
    s = header["L0_B0_K_scales"]
    shape = w["shape"][-3:]
    tokens = sum(header[f"L0_B{b}_K_weights"]["shape"][-2] for b in range(blocks))
    return {
        "fmt": "mlx4",
        "scale_type": _SCALE_OF.get(s["dtype"], "?"),
        "layers": str(layers),
        "kv_heads": str(shape[0]),
        "head_dim": str(shape[2] * 8),
        "page_tokens": str(BLOCK_TOKENS),
        "tokens": str(tokens),
    }


def load_cache(path: Any) -> KVCache:
    """Read a cache file; raises DecodeError for a malformed or corrupted file."""
    path = Path(path)
    header, meta, body = _read(path)
    if meta.get("format") != FILE_FORMAT:
        try:
            meta = _infer_mlx4(header, path)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            raise DecodeError(f"{path}: an incomplete or malformed L*_B*_* mlx4 layout") from None
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
        )
    except HybridSyncError as exc:
        raise DecodeError(f"{path}: bad cache geometry: {exc}") from None
    g = cache.geometry
    tokens = _int(meta, "tokens", path)
    rb = cache.row_bytes
    rows = []
    for layer in range(g.layers):
        both = []
        for tag in "KV":
            if g.fmt != "mlx4":
                t = _tensor(header, body, f"L{layer}_{tag}", path)
                if t.shape[:2] != (g.kv_heads, tokens) or t.size != g.kv_heads * tokens * rb:
                    raise DecodeError(f"{path}: tensor L{layer}_{tag} has the wrong shape")
                both.append(t.reshape(g.kv_heads, tokens, rb))
                continue
            parts = []
            for b, start in enumerate(range(0, tokens, BLOCK_TOKENS)):
                n = min(BLOCK_TOKENS, tokens - start)
                block = []
                for part, cols in (
                    ("weights", g.head_dim // 2),
                    ("scales", rb // 2 - g.head_dim // 4),
                    ("biases", rb // 2 - g.head_dim // 4),
                ):
                    t = _tensor(header, body, f"L{layer}_B{b}_{tag}_{part}", path)
                    t = t.reshape(*t.shape[:-2], -1) if t.ndim >= 2 else t
                    if t.shape[-3:] != (g.kv_heads, n, cols):
                        raise DecodeError(
                            f"{path}: tensor L{layer}_B{b}_{tag}_{part} has the wrong shape"
                        )
                    block.append(t.reshape(g.kv_heads, n, cols))
                parts.append(np.concatenate(block, axis=-1))
            both.append(
                np.concatenate(parts, axis=1) if parts else np.zeros((g.kv_heads, 0, rb), np.uint8)
            )
        rows.append(both)
    if tokens:
        keys = np.stack([r[0] for r in rows])
        values = np.stack([r[1] for r in rows])
        cache.append_quantized(keys, values)
    try:
        cache.uid = int(meta.get("uid", "0"), 16)
    except ValueError:
        raise DecodeError(f"{path}: metadata 'uid' is not hexadecimal") from None
    want = meta.get("digest")
    if want is not None and f"{cache.digest():016x}" != want:
        raise DecodeError(f"{path}: page digest mismatch: the file is corrupted")
    return cache
