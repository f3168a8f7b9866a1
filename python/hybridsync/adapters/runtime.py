"""What a restore must match: the runtime record a cache carries.

A KV cache is only meaningful to the runtime configuration that wrote it:
the same weights, cache types, positional encoding and state format. The
adapters describe that configuration as a small mapping of strings (a
*runtime record*), store it in the cache's geometry
(:attr:`hybridsync.kv.Geometry.runtime`, compact JSON, at most 4,096 bytes)
so that it travels with every mirror, and compare it with the target
context's own record before restoring. A field that differs raises
:class:`~hybridsync.errors.IncompatibleCacheError` naming it, instead of the
wrong logits a runtime would produce without a word.

The model's fingerprint is a hash of the weights: for GGUF files, of the
tensor descriptions and tensor data (not the metadata, so a renamed file
with the same weights matches), computed once per file version and kept in
memory.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from hybridsync.errors import DecodeError, IncompatibleCacheError, InvalidArgumentError

__all__ = ["check_record", "decode_record", "encode_record", "gguf_fingerprint"]

#: The largest record (UTF-8 bytes), as the wire format bounds it.
MAX_RECORD_BYTES = 4096


def encode_record(fields: Mapping[str, str]) -> str:
    """A record as the compact JSON text a geometry carries (keys sorted)."""
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items()):
        raise InvalidArgumentError("a runtime record maps strings to strings")
    text = json.dumps(dict(sorted(fields.items())), separators=(",", ":"), ensure_ascii=False)
    if len(text.encode()) > MAX_RECORD_BYTES:
        raise InvalidArgumentError(
            f"the runtime record has {len(text.encode())} bytes, over {MAX_RECORD_BYTES}"
        )
    return text


def decode_record(text: str) -> dict[str, str]:
    """The mapping of a geometry's runtime record (empty for none)."""
    if not text:
        return {}
    try:
        fields = json.loads(text)
    except ValueError:
        raise DecodeError("the cache's runtime record is not JSON") from None
    if not isinstance(fields, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in fields.items()
    ):
        raise DecodeError("the cache's runtime record is not a mapping of strings")
    return fields


def check_record(
    cache: Mapping[str, str], context: Mapping[str, str], fields: Iterable[str]
) -> None:
    """Raise :class:`IncompatibleCacheError` naming the first of ``fields``
    whose value in the cache's record differs from the context's."""
    for field in fields:
        have, want = cache.get(field), context.get(field)
        if have != want:
            raise IncompatibleCacheError(
                f"the cache was written with {field} = {have!r}; this context has {want!r}: "
                "restoring it would give wrong logits",
                field,
            )


# -- GGUF fingerprints -------------------------------------------------------------

_GGUF_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_fingerprints: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


class _Cursor:
    def __init__(self, data: mmap.mmap, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise DecodeError(f"{self.path}: truncated GGUF header at byte {self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> int:
        s = struct.Struct("<" + fmt)
        (v,) = s.unpack(self.take(s.size))
        return int(v)

    def string(self) -> bytes:
        return self.take(self.unpack("Q"))

    def skip_value(self, kind: int, depth: int = 0) -> None:
        if kind in _GGUF_SCALARS:
            self.take(_GGUF_SCALARS[kind])
        elif kind == _STRING:
            self.string()
        elif kind == _ARRAY and depth < 4:
            inner, n = self.unpack("I"), self.unpack("Q")
            if inner in _GGUF_SCALARS:
                self.take(_GGUF_SCALARS[inner] * n)
            else:
                for _ in range(n):
                    self.skip_value(inner, depth + 1)
        else:
            raise DecodeError(f"{self.path}: unknown GGUF value type {kind} at byte {self.pos}")


def gguf_fingerprint(path: str | os.PathLike[str]) -> str:
    """A hash (BLAKE2b-128, hex) of a GGUF file's tensor descriptions and
    tensor data: equal for equal weights whatever the metadata says. Computed
    once per file version (path, size, modification time) and kept in memory."""
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read the model file {path}: {exc}") from None
    key = (str(p), st.st_size, st.st_mtime_ns)
    with _lock:
        if key in _fingerprints:
            return _fingerprints[key]
    with open(p, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        r = _Cursor(data, p)
        if r.take(4) != b"GGUF":
            raise DecodeError(f"{p} is not a GGUF file")
        version = r.unpack("I")
        if version not in (2, 3):
            raise DecodeError(f"{p}: GGUF version {version} is not supported")
        n_tensors, n_kv = r.unpack("Q"), r.unpack("Q")
        if n_tensors > len(data) // 24 or n_kv > len(data) // 12:
            raise DecodeError(f"{p}: the GGUF header declares more entries than the file holds")
        alignment = 32
        for _ in range(n_kv):
            name, kind = r.string(), r.unpack("I")
            if name == b"general.alignment" and kind == 4:
                alignment = r.unpack("I")
            else:
                r.skip_value(kind)
        infos_at = r.pos
        for _ in range(n_tensors):
            r.string()
            dims = r.unpack("I")
            r.take(8 * dims + 12)
        h = hashlib.blake2b(digest_size=16)
        h.update(data[infos_at : r.pos])
        if alignment <= 0:
            raise DecodeError(f"{p}: bad GGUF alignment {alignment}")
        start = -(-r.pos // alignment) * alignment
        step = 8 << 20
        for at in range(start, len(data), step):
            h.update(data[at : at + step])
    out = h.hexdigest()
    with _lock:
        _fingerprints[key] = out
    return out
