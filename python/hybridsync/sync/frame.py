"""The wire format of a link: one frame per exchange.

The byte layout is specified in ``docs/protocol.md``. :func:`encode_frame` and
:func:`decode_frame` run the codec of the Rust core (``hybridsync_core::frame``);
``_py_encode_frame`` and ``_py_decode_frame`` are its Python reference, byte for
byte the same (tests/test_frame_rust.py checks them against each other).
Decoding is strict and pure: a frame is fully decoded (every patch included)
before anything is applied, and any defect raises
:class:`~hybridsync.errors.DecodeError`.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import xxhash
import zstandard

from hybridsync._core import PageGather, kv_verify_pages
from hybridsync._core import decode_frame_as as _rust_decode_frame_as
from hybridsync._core import encode_frame as _rust_encode_frame
from hybridsync.channels.kv import MAX_RUNTIME_BYTES, Geometry
from hybridsync.channels.text import DELTA_FORMAT_VERSION, Delta, Patch
from hybridsync.errors import (
    DecodeError,
    HybridSyncError,
    InvalidArgumentError,
    LimitExceededError,
)

if TYPE_CHECKING:  # the stub's names for the Rust codec's KV tuples
    from hybridsync._core import _KVEntryIn

__all__ = [
    "FLAG_RENAME",
    "FLAG_SENDER",
    "MARK",
    "PROTOCOL_VERSION",
    "Edit",
    "Entry",
    "Frame",
    "KVEntry",
    "KVKind",
    "KVRun",
    "Kind",
    "MetaBlock",
    "MetaKind",
    "decode_frame",
    "encode_frame",
    "parse_change",
]

#: The high nibble of a frame's first byte; the low nibble is the version.
MARK = 0xA0
#: How a version 1 frame starts (recognised only to name its version).
V1_MAGIC = b"HSYN"
PROTOCOL_VERSION = 3
FLAG_COMPRESSED = 0x01
FLAG_REPLY = 0x02
FLAG_META = 0x04
FLAG_KV = 0x08
FLAG_RESUME = 0x10
FLAG_SENDER = 0x20
FLAG_RENAME = 0x40
_KNOWN_FLAGS = (
    FLAG_COMPRESSED | FLAG_REPLY | FLAG_META | FLAG_KV | FLAG_RESUME | FLAG_SENDER | FLAG_RENAME
)
#: Largest document index an entry may carry.
MAX_DOC_INDEX = (1 << 62) - 1
_HEADER = struct.Struct("<BB")
_CHECKSUM = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_EPOCH_ID = struct.Struct("<Q")


class Kind(enum.IntEnum):
    """What a frame entry says about one document."""

    #: Edits (possibly none: then an acknowledgement) with a shadow checksum.
    EDITS = 1
    #: The sender deleted the document.
    DELETE = 2
    #: The sender acknowledges the peer's DELETE.
    DELETED = 3
    #: The sender's whole shadow: creation, or re-initialisation.
    FULL = 4
    #: The sender asks for a FULL (it has no usable state for the document).
    RESYNC = 5
    #: Answer to a RESYNC: the sender has neither the document nor state for it.
    ABSENT = 6
    #: The sender applied the peer's edits up to ``ack`` and holds ``local``
    #: of its own, with nothing to send (no checksum: the receiver checked the
    #: shadow when it applied those edits).
    ACK = 7


@dataclass(frozen=True)
class Edit:
    """One versioned edit: the change from shadow version ``version`` to the
    next, a :class:`Delta` (the usual form) or a :class:`Patch`."""

    version: int
    patch: Delta | Patch
    raw: bytes


@dataclass(frozen=True)
class Entry:
    """What one frame carries for one document."""

    name: str
    kind: Kind
    #: EDITS: peer edits the sender has applied; FULL: the sender's remote version.
    ack: int = 0
    #: EDITS / FULL: the sender's local version after the edits.
    local: int = 0
    edits: tuple[Edit, ...] = ()
    #: EDITS: the low 32 bits of the xxh3-64 of the sender's shadow after the edits.
    checksum: int = 0
    #: FULL: the sender's shadow text.
    text: str = ""
    #: The document's index on the link: 0 none (the name travels alone),
    #: ``i > 0`` the name travels and is bound to index ``i``, ``-i`` a
    #: reference to index ``i`` bound before (the name does not travel, and
    #: decodes as ``""``; the link resolves it).
    ref: int = 0


class MetaKind(enum.IntEnum):
    """What a frame's metadata block carries."""

    #: Only the sender's epoch.
    NONE = 0
    #: ``a`` = the sender's state vector, ``b`` = a Yjs update of the epoch.
    UPDATE = 1
    #: Move to the sender's epoch: ``a`` = the sender's whole document (a Yjs
    #: update), ``b`` = the state vector of the receiver's epoch that this
    #: document holds (own writes past it are re-applied). Sent by servers only.
    EPOCH = 2
    #: Like EPOCH, after the sender merged the receiver's document (of another
    #: lineage) by value: ``b`` = the receiver's state vector it merged. The
    #: receiver also re-applies its own dict writes (set, delete) that ``b``
    #: covers, so that its own latest values and deletions win over the
    #: values merged from others.
    MERGE = 3


@dataclass(frozen=True)
class MetaBlock:
    """The structured-metadata part of a frame."""

    #: The sender's epoch number (compactions along its lineage; informative).
    epoch: int
    kind: MetaKind
    a: bytes = b""
    b: bytes = b""
    #: Identifies the sender's epoch: random, drawn when the epoch starts.
    epoch_id: int = 0


class KVKind(enum.IntEnum):
    """What a frame's KV entry says about one cache."""

    #: The sender's token count, table digest and the pages the peer lacks.
    PAGES = 1
    #: The receiver's token count and digest, with its whole page table when
    #: it does not match (the sender then sends only what differs).
    HAVE = 2
    #: The owner deleted the cache.
    DELETE = 3


#: Wire codes of (format, scale type).
_FMT_CODES = {("q4_0", "f16"): 1, ("q8_0", "f16"): 2, ("f16", "f16"): 6}
_FMT_CODES.update({("mlx4", t): 3 + i for i, t in enumerate(("f16", "bf16", "f32"))})
_FMT_NAMES = {v: k for k, v in _FMT_CODES.items()}
#: Set in a geometry's format code when a runtime record follows its sizes.
_FMT_RUNTIME = 0x80
KV_COMPLETE = 0x01  # PAGES: after these pages the receiver holds the sender's cache
KV_PROBE = 0x02  # PAGES: the sender does not know the receiver's table; answer with HAVE


@dataclass(frozen=True)
class KVRun:
    """Pages of one (layer, K|V): parallel ``uint32`` head and page indices,
    ``uint64`` hashes, and the pages' bytes concatenated."""

    layer: int
    kind: int
    heads: np.ndarray
    pages: np.ndarray
    hashes: np.ndarray
    #: The pages' bytes: a decoded run's are a memoryview of the frame; a
    #: sender's are a :class:`~hybridsync._core.PageGather` of the rows where
    #: they lie in the cache (``bytes()`` copies them out), which the frame
    #: encoder copies straight into the frame.
    payload: bytes | memoryview | PageGather
    #: Rows of each page the payload skips (0: whole pages; else page tails,
    #: whose hashes the receiver checks against its own first rows).
    offset: int = 0


@dataclass(frozen=True)
class KVEntry:
    """What one frame carries for one KV cache."""

    name: str
    kind: KVKind
    owner: str
    #: The cache's incarnation: random per cache its owner creates, so a
    #: re-created cache is not taken for a deleted (or older) one.
    uid: int = 0
    geometry: Geometry | None = None
    tokens: int = 0
    digest: int = 0
    flags: int = 0
    runs: tuple[KVRun, ...] = ()
    #: HAVE: the sender's page table, ``uint64 [layers, 2, heads, pages]``.
    table: np.ndarray | None = None


@dataclass(frozen=True)
class Frame:
    """One frame of a link exchange."""

    sender: str
    epoch: int
    seq: int
    reply: bool
    entries: tuple[Entry, ...] = field(default_factory=tuple)
    meta: MetaBlock | None = None
    kv: tuple[KVEntry, ...] = ()
    #: The sender reopened a durable replica: its link state comes from disk
    #: and may be older than the last frames it sent (section 5.5).
    resume: bool = False
    #: The sender lost the document indices the receiver bound (section 3.3):
    #: the receiver sends names again.
    rename: bool = False


def parse_change(raw: bytes) -> Delta | Patch:
    """An edit's change from its bytes: the first byte names the form (2: a
    delta, 1: a patch). Raises DecodeError."""
    if raw[:1] == bytes((DELTA_FORMAT_VERSION,)):
        return Delta.from_bytes(raw)
    return Patch.from_bytes(raw)


def _put_uint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _put_bytes(out: bytearray, data: bytes) -> None:
    _put_uint(out, len(data))
    out += data


def _put_geometry(out: bytearray, g: Geometry) -> None:
    code = _FMT_CODES[(g.fmt, g.scale_type if g.fmt == "mlx4" else "f16")]
    runtime = g.runtime.encode()  # Geometry.check bounds it
    out.append(code | _FMT_RUNTIME if runtime else code)
    for v in (g.layers, g.kv_heads, g.head_dim, g.page_tokens):
        _put_uint(out, v)
    if runtime:
        _put_bytes(out, runtime)


def _encode_kv(entries: tuple[KVEntry, ...]) -> tuple[list[bytes | memoryview], set[int]]:
    """The KV section as a list of parts (page payloads are not copied here,
    but a PageGather's rows are gathered into bytes),
    and the indices of the parts the frame checksum leaves out (the payloads
    of whole pages, which their page hashes cover)."""
    parts: list[bytes | memoryview] = []
    unsummed: set[int] = set()
    out = bytearray()
    _put_uint(out, len(entries))
    for e in entries:
        _put_bytes(out, e.name.encode())
        out.append(e.kind)
        _put_bytes(out, e.owner.encode())
        out += _U64.pack(e.uid)
        if e.kind == KVKind.DELETE:
            continue
        assert e.geometry is not None
        _put_geometry(out, e.geometry)
        _put_uint(out, e.tokens)
        out += _U64.pack(e.digest)
        if e.kind == KVKind.PAGES:
            out.append(e.flags)
            _put_uint(out, len(e.runs))
            for r in e.runs:
                _put_uint(out, r.layer)
                out.append(r.kind)
                _put_uint(out, r.offset)
                _put_uint(out, len(r.heads))
                out += r.heads.astype("<u4").tobytes()
                out += r.pages.astype("<u4").tobytes()
                out += r.hashes.astype("<u8").tobytes()
                _put_uint(out, len(r.payload))
                parts.append(bytes(out))
                payload = r.payload
                if r.offset == 0:
                    unsummed.add(len(parts))
                parts.append(bytes(payload) if isinstance(payload, PageGather) else payload)
                out = bytearray()
        else:
            if e.table is None:
                out.append(0)
            else:
                out.append(1)
                out += e.table.astype("<u8").tobytes()
    parts.append(bytes(out))
    return parts, unsummed


def _py_encode_frame(frame: Frame, *, compress_threshold: int = 1024, level: int = 3) -> bytes:
    """Encode a frame; bodies of ``compress_threshold`` bytes or more are
    zstd-compressed when that makes them smaller. KV pages travel in their own
    section, never compressed (quantized data does not compress)."""
    body = bytearray()
    if frame.sender:
        _put_bytes(body, frame.sender.encode())
    _put_uint(body, frame.epoch)
    _put_uint(body, frame.seq)
    _put_uint(body, len(frame.entries))
    for e in frame.entries:
        if not -MAX_DOC_INDEX <= e.ref <= MAX_DOC_INDEX:
            raise InvalidArgumentError(f"document index {e.ref} is out of range")
        if e.ref < 0:
            _put_uint(body, -e.ref << 1)
        else:
            _put_uint(body, e.ref << 1 | 1)
            _put_bytes(body, e.name.encode())
        body.append(e.kind)
        if e.kind == Kind.EDITS:
            _put_uint(body, e.ack)
            _put_uint(body, e.local)
            _put_uint(body, len(e.edits))
            for edit in e.edits:
                _put_uint(body, edit.version)
                _put_bytes(body, edit.raw)
            body += _CHECKSUM.pack(e.checksum)
        elif e.kind == Kind.ACK:
            _put_uint(body, e.ack)
            _put_uint(body, e.local)
        elif e.kind == Kind.FULL:
            _put_uint(body, e.ack)
            _put_uint(body, e.local)
            _put_bytes(body, e.text.encode())
    flags = FLAG_REPLY if frame.reply else 0
    if frame.sender:
        flags |= FLAG_SENDER
    if frame.resume:
        flags |= FLAG_RESUME
    if frame.rename:
        flags |= FLAG_RENAME
    if frame.meta is not None:
        flags |= FLAG_META
        _put_uint(body, frame.meta.epoch)
        body += _EPOCH_ID.pack(frame.meta.epoch_id)
        body.append(frame.meta.kind)
        if frame.meta.kind != MetaKind.NONE:
            _put_bytes(body, frame.meta.a)
            _put_bytes(body, frame.meta.b)
    payload = bytes(body)
    if compress_threshold >= 0 and len(payload) >= compress_threshold:
        packed = zstandard.ZstdCompressor(level=level).compress(payload)
        if len(packed) < len(payload):
            payload = packed
            flags |= FLAG_COMPRESSED
    kv: list[bytes | memoryview] = []
    unsummed: set[int] = set()
    if frame.kv:
        flags |= FLAG_KV
        kv, unsummed = _encode_kv(frame.kv)
        head = bytearray()
        _put_uint(head, sum(len(p) for p in kv))
        kv.insert(0, bytes(head))
    # The join copies the page payloads into the frame; the checksum streams
    # over the parts but the payloads of whole pages.
    parts = [_HEADER.pack(MARK | PROTOCOL_VERSION, flags), *kv, payload]
    h = xxhash.xxh3_64()
    for i, part in enumerate(parts):
        if i - 2 not in unsummed:  # parts[2 + k] is kv part k
            h.update(part)
    parts.append(_CHECKSUM.pack(h.intdigest() & 0xFFFFFFFF))
    return b"".join(parts)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data
        self.pos = 0

    def uint(self) -> int:
        start = self.pos
        value = shift = 0
        data = self.data
        while True:
            if self.pos >= len(data):
                raise DecodeError(f"frame truncated in a varint at byte {start}")
            b = data[self.pos]
            self.pos += 1
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                if b == 0 and shift:
                    raise DecodeError(f"non-canonical varint at byte {start}")
                return value
            shift += 7
            if shift == 63 and self.pos < len(data) and data[self.pos] > 1:
                raise DecodeError(f"varint at byte {start} is longer than 64 bits")
            if shift > 63:
                raise DecodeError(f"varint at byte {start} is longer than 64 bits")

    def take(self, n: int) -> bytes | memoryview:
        if n > len(self.data) - self.pos:
            raise DecodeError(
                f"frame truncated: {n} bytes needed at byte {self.pos}, "
                f"{len(self.data) - self.pos} left"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def blob(self) -> bytes | memoryview:
        return self.take(self.uint())

    def text(self, what: str) -> str:
        at = self.pos
        try:
            return bytes(self.blob()).decode()
        except UnicodeDecodeError as exc:
            raise DecodeError(f"{what} at byte {at} is not valid UTF-8") from exc

    def count(self, what: str, min_size: int) -> int:
        n = self.uint()
        if n * min_size > len(self.data) - self.pos:
            left = len(self.data) - self.pos
            raise DecodeError(f"{what} {n} cannot fit in the {left} bytes left")
        return n


def _decompress(body: bytes, max_bytes: int) -> bytes:
    """Exactly one zstd frame that declares its size, nothing after it."""
    try:
        size = zstandard.frame_content_size(body)
    except zstandard.ZstdError as exc:
        raise DecodeError(f"corrupt compressed frame body: {exc}") from exc
    if size < 0:
        raise DecodeError("compressed frame body does not declare its size")
    if size > max_bytes:
        raise LimitExceededError(
            f"decompressed frame of {size} bytes would exceed the limit of {max_bytes}"
        )
    dobj = zstandard.ZstdDecompressor().decompressobj()
    try:
        out = dobj.decompress(body)
    except zstandard.ZstdError as exc:
        raise DecodeError(f"corrupt compressed frame body: {exc}") from exc
    if not dobj.eof:
        raise DecodeError("compressed frame body is truncated")
    if dobj.unused_data:
        raise DecodeError(f"{len(dobj.unused_data)} bytes after the compressed frame body")
    if len(out) != size:
        raise DecodeError(f"compressed frame body holds {len(out)} bytes, declares {size}")
    return bytes(out)


def _get_geometry(r: _Reader, what: str) -> Geometry:
    byte = r.take(1)[0]
    code = byte & ~_FMT_RUNTIME
    if code not in _FMT_NAMES:
        raise DecodeError(f"unknown KV format code {byte} for {what}")
    fmt, scale = _FMT_NAMES[code]
    layers, heads, dim, page = r.uint(), r.uint(), r.uint(), r.uint()
    runtime = ""
    if byte & _FMT_RUNTIME:
        raw = bytes(r.blob())
        if not raw or len(raw) > MAX_RUNTIME_BYTES:
            raise DecodeError(f"the runtime record of {what} has {len(raw)} bytes")
        try:
            runtime = raw.decode()
        except UnicodeDecodeError:
            raise DecodeError(f"the runtime record of {what} is not valid UTF-8") from None
    g = Geometry(layers, heads, dim, fmt, page, scale, runtime)
    try:
        g.check()
    except HybridSyncError as exc:
        raise DecodeError(f"bad geometry for {what}: {exc}") from None
    return g


def _check_tails(
    name: str,
    g: Geometry,
    tokens: int,
    heads: np.ndarray,
    pages: np.ndarray,
    size: int,
    offset: int,
) -> None:
    """Page tails from row ``offset`` on: inside the geometry, each at least
    one row, and exactly ``size`` bytes together."""
    pages_in_use = -(-tokens // g.page_tokens)
    if len(heads) and (int(heads.max()) >= g.kv_heads or int(pages.max()) >= pages_in_use):
        raise DecodeError(f"a page tail of {name!r} lies outside the cache")
    rows = np.minimum(g.page_tokens, tokens - pages.astype(np.int64) * g.page_tokens) - offset
    if len(rows) and int(rows.min()) < 1:
        raise DecodeError(f"a page tail of {name!r} starts past the rows in use")
    if int(rows.sum()) * g.row_bytes != size:
        raise DecodeError(f"page tails of {name!r} hold {size} bytes, not {int(rows.sum())} rows")


def _decode_kv(
    data: bytes | memoryview, max_kv_bytes: int, skips: list[tuple[int, int]] | None = None
) -> tuple[KVEntry, ...]:
    """The KV section's entries; ``skips`` receives the (start, end) in
    ``data`` of each whole-page payload (checked here against its hashes)."""
    r = _Reader(data)
    out: list[KVEntry] = []
    names: set[str] = set()
    for _ in range(r.count("KV entry count", 3)):
        name = r.text("KV cache name")
        if not name or name in names:
            raise DecodeError(f"KV cache name {name!r} is empty or appears twice in one frame")
        names.add(name)
        kind_byte = r.take(1)[0]
        try:
            kind = KVKind(kind_byte)
        except ValueError:
            raise DecodeError(f"unknown KV entry kind {kind_byte} for {name!r}") from None
        owner = r.text("KV cache owner")
        if not owner:
            raise DecodeError(f"KV cache {name!r} has an empty owner")
        (uid,) = _U64.unpack(r.take(_U64.size))
        if kind == KVKind.DELETE:
            out.append(KVEntry(name, kind, owner, uid))
            continue
        g = _get_geometry(r, repr(name))
        tokens = r.uint()
        if tokens >= 1 << 40:
            raise LimitExceededError(f"KV cache {name!r} declares {tokens} tokens")
        rb = g.row_bytes
        if tokens * rb * g.kv_heads * g.layers * 2 > max_kv_bytes:
            raise LimitExceededError(
                f"KV cache {name!r} of {tokens} tokens would exceed the limit of "
                f"{max_kv_bytes} bytes"
            )
        (digest,) = _U64.unpack(r.take(_U64.size))
        pages = -(-tokens // g.page_tokens)
        if kind == KVKind.HAVE:
            has_table = r.take(1)[0]
            if has_table > 1:
                raise DecodeError(f"bad table flag {has_table} for {name!r}")
            table = None
            if has_table:
                count = g.layers * 2 * g.kv_heads * pages
                raw = r.take(count * 8)
                table = np.frombuffer(raw, dtype="<u8").astype(np.uint64)
                table = table.reshape(g.layers, 2, g.kv_heads, pages)
            out.append(KVEntry(name, kind, owner, uid, g, tokens, digest, table=table))
            continue
        flags = r.take(1)[0]
        if flags & ~(KV_COMPLETE | KV_PROBE):
            raise DecodeError(f"unknown KV flags 0x{flags:02x} for {name!r}")
        runs: list[KVRun] = []
        seen: set[tuple[int, int, int]] = set()
        pages_seen: set[int] = set()
        for _ in range(r.count("KV run count", 5)):
            layer = r.uint()
            kv_kind = r.take(1)[0]
            offset = r.uint()
            key = (layer, kv_kind, offset)
            if layer >= g.layers or kv_kind > 1 or key in seen or offset >= g.page_tokens:
                raise DecodeError(
                    f"bad or repeated KV run (layer {layer}, kind {kv_kind}, offset {offset})"
                )
            seen.add(key)
            n = r.count("page count", 16)
            heads = np.frombuffer(r.take(4 * n), dtype="<u4").astype(np.uint32)
            pidx = np.frombuffer(r.take(4 * n), dtype="<u4").astype(np.uint32)
            hashes = np.frombuffer(r.take(8 * n), dtype="<u8").astype(np.uint64)
            size = r.uint()
            start = r.pos
            payload = r.take(size)
            if offset == 0 and skips is not None:
                skips.append((start, start + size))
            keys = (heads.astype(np.uint64) << np.uint64(32)) | pidx
            unique = {int(k) | (layer * 2 + kv_kind) << 48 for k in np.unique(keys)}
            if len(unique) != n or not pages_seen.isdisjoint(unique):
                raise DecodeError(f"a page of {name!r} appears twice in one frame")
            pages_seen |= unique
            if offset == 0:
                kv_verify_pages(
                    payload, g.kv_heads, tokens, rb, g.page_tokens, tokens, heads, pidx, hashes
                )
            else:
                # Tails: their hashes cover rows the receiver holds, checked
                # when applied; here the shape.
                _check_tails(name, g, tokens, heads, pidx, len(payload), offset)
            runs.append(KVRun(layer, kv_kind, heads, pidx, hashes, payload, offset))
        out.append(KVEntry(name, kind, owner, uid, g, tokens, digest, flags, tuple(runs)))
    if r.pos != len(data):
        raise DecodeError(f"{len(data) - r.pos} trailing bytes after the KV section")
    return tuple(out)


def _py_decode_frame(
    data: bytes, *, max_bytes: int = 64 << 20, max_kv_bytes: int = 1 << 36
) -> Frame:
    """Decode and validate a frame. Raises DecodeError (malformed, truncated,
    unknown version, a KV page whose hash does not match) or
    LimitExceededError (over ``max_bytes``, compressed or not, or a KV cache
    over ``max_kv_bytes``)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"a frame is bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise LimitExceededError(f"frame of {len(data)} bytes exceeds the limit of {max_bytes}")
    if len(data) < _HEADER.size + _CHECKSUM.size:
        raise DecodeError(
            f"frame of {len(data)} bytes is shorter than its header and checksum "
            f"({_HEADER.size + _CHECKSUM.size} bytes)"
        )
    mark, flags = _HEADER.unpack_from(data)
    if data.startswith(V1_MAGIC) and len(data) > len(V1_MAGIC):
        raise DecodeError(
            f"frame uses protocol version {data[len(V1_MAGIC)]}; this build speaks version "
            f"{PROTOCOL_VERSION} (upgrade the older side)"
        )
    if mark & 0xF0 != MARK:
        raise DecodeError(f"not a hybridsync frame (first byte 0x{mark:02x})")
    version = mark & 0x0F
    if version != PROTOCOL_VERSION:
        raise DecodeError(
            f"frame uses protocol version {version}; this build speaks version {PROTOCOL_VERSION} "
            "(upgrade the older side)"
        )
    view = memoryview(data)
    (checksum,) = _CHECKSUM.unpack_from(data, len(data) - _CHECKSUM.size)
    signed = view[: -_CHECKSUM.size]
    body_view = view[_HEADER.size : -_CHECKSUM.size]
    kv: tuple[KVEntry, ...] = ()
    if flags & FLAG_KV:
        # Zero-copy: page payloads stay views into the frame. The checksum
        # leaves the payloads of whole pages out: decoding the section checks
        # them against their page hashes first.
        r0 = _Reader(body_view)
        size = r0.uint()
        base = _HEADER.size + r0.pos
        skips: list[tuple[int, int]] = []
        kv = _decode_kv(r0.take(size), max_kv_bytes, skips)
        body_view = body_view[r0.pos :]
        h = xxhash.xxh3_64()
        at = 0
        for start, end in skips:
            h.update(signed[at : base + start])
            at = base + end
        h.update(signed[at:])
        if checksum != h.intdigest() & 0xFFFFFFFF:
            raise DecodeError("frame checksum mismatch: the frame was garbled or truncated")
    elif checksum != xxhash.xxh3_64_intdigest(signed) & 0xFFFFFFFF:
        raise DecodeError("frame checksum mismatch: the frame was garbled or truncated")
    if flags & ~_KNOWN_FLAGS:
        raise DecodeError(f"unknown frame flags 0x{flags:02x}")
    body = bytes(body_view)
    if flags & FLAG_COMPRESSED:
        body = _decompress(body, max_bytes)
    r = _Reader(body)
    sender = ""
    if flags & FLAG_SENDER:
        sender = r.text("sender")
        if not sender:
            raise DecodeError("empty sender")
    epoch = r.uint()
    seq = r.uint()
    entries: list[Entry] = []
    names: set[str] = set()
    indices: set[int] = set()
    for _ in range(r.count("entry count", 2)):
        at = r.pos
        tag = r.uint()
        index = tag >> 1
        if index > MAX_DOC_INDEX:
            raise DecodeError(f"document index {index} at byte {at} is out of range")
        if index:
            if index in indices:
                raise DecodeError(f"document index {index} appears twice in one frame")
            indices.add(index)
        if tag & 1:
            name = r.text("document name")
            if name in names:
                raise DecodeError(f"document {name!r} appears twice in one frame")
            names.add(name)
            ref = index
        elif not index:
            raise DecodeError(f"entry at byte {at} has neither a name nor an index")
        else:
            name, ref = "", -index
        kind_byte = r.take(1)[0]
        try:
            kind = Kind(kind_byte)
        except ValueError:
            raise DecodeError(f"unknown entry kind {kind_byte} for document {name!r}") from None
        if kind == Kind.EDITS:
            ack = r.uint()
            local = r.uint()
            edits: list[Edit] = []
            previous = -1
            for _ in range(r.count("edit count", 2)):
                version = r.uint()
                if version <= previous:
                    raise DecodeError(f"edit versions of {name!r} are not increasing")
                previous = version
                raw = bytes(r.blob())
                edits.append(Edit(version, parse_change(raw), raw))
            if edits and edits[-1].version >= local:
                raise DecodeError(
                    f"edit version {edits[-1].version} of {name!r} is not below {local}"
                )
            (checksum,) = _CHECKSUM.unpack(r.take(_CHECKSUM.size))
            entries.append(Entry(name, kind, ack, local, tuple(edits), checksum, ref=ref))
        elif kind == Kind.FULL:
            ack = r.uint()
            local = r.uint()
            text = r.text(f"text of {name!r}")
            entries.append(Entry(name, kind, ack, local, text=text, ref=ref))
        elif kind == Kind.ACK:
            ack = r.uint()
            entries.append(Entry(name, kind, ack, r.uint(), ref=ref))
        else:
            entries.append(Entry(name, kind, ref=ref))
    meta = None
    if flags & FLAG_META:
        epoch_m = r.uint()
        (epoch_id,) = _EPOCH_ID.unpack(r.take(_EPOCH_ID.size))
        kind_byte = r.take(1)[0]
        try:
            mkind = MetaKind(kind_byte)
        except ValueError:
            raise DecodeError(f"unknown metadata block kind {kind_byte}") from None
        if mkind == MetaKind.NONE:
            meta = MetaBlock(epoch_m, mkind, epoch_id=epoch_id)
        else:
            meta = MetaBlock(epoch_m, mkind, bytes(r.blob()), bytes(r.blob()), epoch_id)
    if r.pos != len(body):
        raise DecodeError(f"{len(body) - r.pos} trailing bytes after the frame body")
    return Frame(
        sender,
        epoch,
        seq,
        bool(flags & FLAG_REPLY),
        tuple(entries),
        meta,
        kv,
        bool(flags & FLAG_RESUME),
        bool(flags & FLAG_RENAME),
    )


# -- the codec: the Rust core ----------------------------------------------------
#
# ``encode_frame``/``decode_frame`` run ``hybridsync_core::frame``, which writes
# and accepts exactly what the Python functions above (``_py_encode_frame``,
# ``_py_decode_frame``: the reference, kept for the tests) write and accept,
# with the same errors; tests/test_frame_rust.py checks the two against each
# other. The Rust decoder builds the dataclasses below without running their
# ``__init__``: they stay plain (no ``__slots__``, no ``__post_init__``), and
# their fields are checked here at import.

_FIELDS: dict[type, tuple[str, ...]] = {
    Frame: ("sender", "epoch", "seq", "reply", "entries", "meta", "kv", "resume", "rename"),
    Entry: ("name", "kind", "ack", "local", "edits", "checksum", "text", "ref"),
    Edit: ("version", "patch", "raw"),
    MetaBlock: ("epoch", "kind", "a", "b", "epoch_id"),
    KVEntry: (
        "name",
        "kind",
        "owner",
        "uid",
        "geometry",
        "tokens",
        "digest",
        "flags",
        "runs",
        "table",
    ),
    KVRun: ("layer", "kind", "heads", "pages", "hashes", "payload", "offset"),
    Geometry: ("layers", "kv_heads", "head_dim", "fmt", "page_tokens", "scale_type", "runtime"),
}
for _cls, _names in _FIELDS.items():
    if (
        tuple(f.name for f in dataclasses.fields(_cls)) != _names
        or "__slots__" in vars(_cls)
        or hasattr(_cls, "__post_init__")
    ):
        raise RuntimeError(f"{_cls.__name__} no longer matches the Rust frame decoder")


def _by_code(kinds: type[enum.IntEnum]) -> tuple[object, ...]:
    members = {int(k): k for k in kinds}
    return tuple(members.get(code) for code in range(max(members) + 1))


_TYPES = (Frame, Entry, Edit, MetaBlock, _by_code(Kind), _by_code(MetaKind))
_LE32 = np.dtype("<u4")
_LE64 = np.dtype("<u8")
#: The KV classes for the Rust decoder: entries, runs and geometries are made
#: there (index arrays and hashes as new writable little-endian arrays,
#: payloads as views of the frame), with no Python step per entry or run.
_KV_TYPES = (
    KVEntry,
    KVRun,
    Geometry,
    _by_code(KVKind),
    tuple(_FMT_NAMES.get(code) for code in range(max(_FMT_NAMES) + 1)),
    np.frombuffer,
    _LE32,
    _LE64,
)
_U64_MAX = (1 << 64) - 1


_new = object.__new__


def _kv_run(
    layer: int,
    kind: int,
    heads: np.ndarray,
    pages: np.ndarray,
    hashes: np.ndarray,
    payload: bytes | memoryview,
    offset: int,
) -> KVRun:
    """``KVRun(...)`` made as the Rust decoder makes it: without the frozen
    dataclass ``__init__`` and its ``object.__setattr__`` per field (a
    sender builds runs every cycle). The same instance: every field set."""
    r = _new(KVRun)
    d = r.__dict__
    d["layer"] = layer
    d["kind"] = kind
    d["heads"] = heads
    d["pages"] = pages
    d["hashes"] = hashes
    d["payload"] = payload
    d["offset"] = offset
    return r


def _kv_pages(
    name: str,
    owner: str,
    uid: int,
    geometry: Geometry,
    tokens: int,
    digest: int,
    flags: int,
    runs: tuple[KVRun, ...],
) -> KVEntry:
    """``KVEntry(name, KVKind.PAGES, ...)`` made as :func:`_kv_run` makes runs."""
    e = _new(KVEntry)
    d = e.__dict__
    d["name"] = name
    d["kind"] = KVKind.PAGES
    d["owner"] = owner
    d["uid"] = uid
    d["geometry"] = geometry
    d["tokens"] = tokens
    d["digest"] = digest
    d["flags"] = flags
    d["runs"] = runs
    d["table"] = None
    return e


def _kv_tuple(e: KVEntry) -> _KVEntryIn:
    g = e.geometry
    geometry = None
    if g is not None:
        code = _FMT_CODES[(g.fmt, g.scale_type if g.fmt == "mlx4" else "f16")]
        geometry = (code, g.layers, g.kv_heads, g.head_dim, g.page_tokens, g.runtime)
    # One numpy call per array (none copies the usual little-endian arrays).
    runs = [
        (
            r.layer,
            r.kind,
            r.offset,
            np.ascontiguousarray(r.heads, _LE32),
            np.ascontiguousarray(r.pages, _LE32),
            np.ascontiguousarray(r.hashes, _LE64),
            r.payload,
        )
        for r in e.runs
    ]
    table = None if e.table is None else np.ascontiguousarray(e.table, _LE64)
    return (e.name, e.kind, e.owner, e.uid, geometry, e.tokens, e.digest, e.flags, runs, table)


def encode_frame(frame: Frame, *, compress_threshold: int = 1024, level: int = 3) -> bytes:
    """Encode a frame; bodies of ``compress_threshold`` bytes or more are
    zstd-compressed when that makes them smaller. KV pages travel in their own
    section, never compressed (quantized data does not compress)."""
    kv = [_kv_tuple(e) for e in frame.kv] if frame.kv else []
    return _rust_encode_frame(
        frame.sender,
        frame.epoch,
        frame.seq,
        frame.reply,
        frame.resume,
        frame.entries,
        frame.meta,
        kv,
        rename=frame.rename,
        compress_threshold=max(-1, min(compress_threshold, _U64_MAX >> 1)),
        level=level,
    )


def decode_frame(data: bytes, *, max_bytes: int = 64 << 20, max_kv_bytes: int = 1 << 36) -> Frame:
    """Decode and validate a frame. Raises DecodeError (malformed, truncated,
    unknown version, a KV page whose hash does not match) or
    LimitExceededError (over ``max_bytes``, compressed or not, or a KV cache
    over ``max_kv_bytes``)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"a frame is bytes, got {type(data).__name__}")
    if type(data) is not bytes:
        data = bytes(data)
    if max_bytes < 0:
        raise LimitExceededError(f"frame of {len(data)} bytes exceeds the limit of {max_bytes}")
    frame: Frame
    frame, _ = _rust_decode_frame_as(
        data,
        _TYPES,
        max_bytes=min(max_bytes, _U64_MAX),
        max_kv_bytes=max(0, min(max_kv_bytes, _U64_MAX)),
        kv_types=_KV_TYPES,
    )
    return frame
