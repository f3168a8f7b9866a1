"""The wire format of a link: one frame per exchange.

The byte layout is specified in ``docs/protocol.md``; this module is its only
implementation. Decoding is strict and pure: a frame is fully decoded (every
patch included) before anything is applied, and any defect raises
:class:`~hybridsync.errors.DecodeError`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

import xxhash
import zstandard

from hybridsync.errors import DecodeError, LimitExceededError
from hybridsync.text import Patch

__all__ = [
    "MAGIC",
    "PROTOCOL_VERSION",
    "Edit",
    "Entry",
    "Frame",
    "Kind",
    "MetaBlock",
    "MetaKind",
    "decode_frame",
    "encode_frame",
]

MAGIC = b"HSYN"
PROTOCOL_VERSION = 1
FLAG_COMPRESSED = 0x01
FLAG_REPLY = 0x02
FLAG_META = 0x04
_KNOWN_FLAGS = FLAG_COMPRESSED | FLAG_REPLY | FLAG_META
_HEADER = struct.Struct("<4sBB")
_CHECKSUM = struct.Struct("<Q")


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


@dataclass(frozen=True)
class Edit:
    """One versioned edit: the patch from shadow version ``version`` to the next."""

    version: int
    patch: Patch
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
    #: EDITS: xxh3-64 of the sender's shadow after the edits.
    checksum: int = 0
    #: FULL: the sender's shadow text.
    text: str = ""


class MetaKind(enum.IntEnum):
    """What a frame's metadata block carries."""

    #: Only the sender's epoch.
    NONE = 0
    #: ``a`` = the sender's state vector, ``b`` = a Yjs update of the epoch.
    UPDATE = 1
    #: A new epoch: ``a`` = its base document (a Yjs update), ``b`` = the final
    #: state vector of the receiver's (older) epoch.
    EPOCH = 2


@dataclass(frozen=True)
class MetaBlock:
    """The structured-metadata part of a frame."""

    epoch: int
    kind: MetaKind
    a: bytes = b""
    b: bytes = b""


@dataclass(frozen=True)
class Frame:
    """One frame of a link exchange."""

    sender: str
    epoch: int
    seq: int
    reply: bool
    entries: tuple[Entry, ...] = field(default_factory=tuple)
    meta: MetaBlock | None = None


def _put_uint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _put_bytes(out: bytearray, data: bytes) -> None:
    _put_uint(out, len(data))
    out += data


def encode_frame(frame: Frame, *, compress_threshold: int = 1024, level: int = 3) -> bytes:
    """Encode a frame; bodies of ``compress_threshold`` bytes or more are
    zstd-compressed when that makes them smaller."""
    body = bytearray()
    _put_bytes(body, frame.sender.encode())
    _put_uint(body, frame.epoch)
    _put_uint(body, frame.seq)
    _put_uint(body, len(frame.entries))
    for e in frame.entries:
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
        elif e.kind == Kind.FULL:
            _put_uint(body, e.ack)
            _put_uint(body, e.local)
            _put_bytes(body, e.text.encode())
    flags = FLAG_REPLY if frame.reply else 0
    if frame.meta is not None:
        flags |= FLAG_META
        _put_uint(body, frame.meta.epoch)
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
    framed = _HEADER.pack(MAGIC, PROTOCOL_VERSION, flags) + payload
    return framed + _CHECKSUM.pack(xxhash.xxh3_64_intdigest(framed))


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
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

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise DecodeError(
                f"frame truncated: {n} bytes needed at byte {self.pos}, "
                f"{len(self.data) - self.pos} left"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def blob(self) -> bytes:
        return self.take(self.uint())

    def text(self, what: str) -> str:
        at = self.pos
        try:
            return self.blob().decode()
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


def decode_frame(data: bytes, *, max_bytes: int = 64 << 20) -> Frame:
    """Decode and validate a frame. Raises DecodeError (malformed, truncated,
    unknown version) or LimitExceededError (over ``max_bytes``, compressed or not)."""
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
    magic, version, flags = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DecodeError(f"not a hybridsync frame (magic {magic!r})")
    if version != PROTOCOL_VERSION:
        raise DecodeError(
            f"frame uses protocol version {version}; this build speaks version {PROTOCOL_VERSION} "
            "(upgrade the older side)"
        )
    (checksum,) = _CHECKSUM.unpack_from(data, len(data) - _CHECKSUM.size)
    if checksum != xxhash.xxh3_64_intdigest(data[: -_CHECKSUM.size]):
        raise DecodeError("frame checksum mismatch: the frame was garbled or truncated")
    if flags & ~_KNOWN_FLAGS:
        raise DecodeError(f"unknown frame flags 0x{flags:02x}")
    body = data[_HEADER.size : -_CHECKSUM.size]
    if flags & FLAG_COMPRESSED:
        body = _decompress(body, max_bytes)
    r = _Reader(body)
    sender = r.text("sender")
    epoch = r.uint()
    seq = r.uint()
    entries: list[Entry] = []
    names: set[str] = set()
    for _ in range(r.count("entry count", 2)):
        name = r.text("document name")
        if name in names:
            raise DecodeError(f"document {name!r} appears twice in one frame")
        names.add(name)
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
                raw = r.blob()
                edits.append(Edit(version, Patch.from_bytes(raw), raw))
            if edits and edits[-1].version >= local:
                raise DecodeError(
                    f"edit version {edits[-1].version} of {name!r} is not below {local}"
                )
            (checksum,) = _CHECKSUM.unpack(r.take(_CHECKSUM.size))
            entries.append(Entry(name, kind, ack, local, tuple(edits), checksum))
        elif kind == Kind.FULL:
            ack = r.uint()
            local = r.uint()
            entries.append(Entry(name, kind, ack, local, text=r.text(f"text of {name!r}")))
        else:
            entries.append(Entry(name, kind))
    meta = None
    if flags & FLAG_META:
        epoch_m = r.uint()
        kind_byte = r.take(1)[0]
        try:
            mkind = MetaKind(kind_byte)
        except ValueError:
            raise DecodeError(f"unknown metadata block kind {kind_byte}") from None
        if mkind == MetaKind.NONE:
            meta = MetaBlock(epoch_m, mkind)
        else:
            meta = MetaBlock(epoch_m, mkind, r.blob(), r.blob())
    if r.pos != len(body):
        raise DecodeError(f"{len(body) - r.pos} trailing bytes after the frame body")
    return Frame(sender, epoch, seq, bool(flags & FLAG_REPLY), tuple(entries), meta)
