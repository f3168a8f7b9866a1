"""A replica's audit log: one hash-chained entry per applied change, signed
heads, and the heads and claims received from other replicas.

The log hears of changes through the replica's change bus
(:class:`hybridsync.channels.events.ChangeBus`): text through a listener
(every document the channel stores or deletes), metadata and KV caches
through observers (once per applied change set). It appends

- one entry per text document changed (its content hash: BLAKE3 of the new
  text's UTF-8 bytes; 32 zero bytes for a deletion),
- one entry per metadata value changed (BLAKE3 of the canonical JSON of the
  new value; zero for a deletion), its subject the key path as a JSON list,
- one entry per KV cache changed (BLAKE3 of the token range and the
  quantized rows written: ``first_token .. tokens`` of every layer, keys
  then values, head by head; zero for a deletion).

Entries are encoded, hashed and chained by the Rust core
(:func:`hybridsync._core.audit_append`) and appended to the log's segment
files (:mod:`hybridsync.audit.segments`) at the replica's commit points
(:meth:`hybridsync.Memory.flush`, which every link runs before a frame
leaves), before the replica's own store saves, in one write.

**Signed heads.** At a commit point with at least ``sign_every`` new
entries, the replica signs (Ed25519) its head: its id, the position and hash
of its latest entry, the time, the hashes of the entries it adds, the claims
of its local writes since the previous head (subject and content hash of
each) and the latest head it received from each other replica (witnesses).
The head is kept in the log and published in the replicated metadata under
the key ``_hybridsync_audit/<replica id>``, so that it reaches every replica
of the tree; each replica that sees a head verifies its signature and keeps
it (``peer_heads``) with its claims and witnessed heads: the claims
attribute a value that travelled through hubs to the replica that wrote it,
the witnesses expose a replica that signed two histories.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import sqlite3
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hybridsync._core import (
    TextHashes,
    audit_append,
    audit_decode_entry,
    audit_entry_hash,
    audit_hash,
    audit_hash_parts,
    audit_head_message,
    audit_verify_chain,
)
from hybridsync.audit.keys import (
    KEY_ENV,
    SigningKey,
    load_signing_key,
    new_signing_key,
    public_key_bytes,
    verify_signature,
)
from hybridsync.audit.segments import Segments, encode_records, parse_records
from hybridsync.channels.events import KVEvent, MetaEvent, Origin, Subscription
from hybridsync.errors import CorruptionError, DecodeError, InvalidArgumentError, StorageError

__all__ = [
    "CHANNELS",
    "META_PREFIX",
    "ZERO",
    "AuditEntry",
    "AuditError",
    "AuditLog",
    "AuditPolicy",
    "Claim",
    "SignedHead",
    "audit_path",
]

log = logging.getLogger("hybridsync.audit")

#: Channel codes of entries.
CHANNELS: tuple[str, ...] = ("text", "meta", "kv")
_KINDS: tuple[str, ...] = ("create", "update", "delete")
_KIND_CODE = {"create": 0, "add": 0, "update": 1, "delete": 2}
#: Metadata keys ``META_PREFIX + replica_id`` carry each replica's signed head.
META_PREFIX = "_hybridsync_audit/"
#: The hash of nothing: a deleted value's content, the first entry's ``prev``.
ZERO = bytes(32)
#: Claims carried by one head at most (the latest local writes win).
MAX_CLAIMS = 1024
#: Slots of a replica's ring of published heads (``_hybridsync_audit/<id>``).
HEAD_RING = 32
#: Witnessed heads carried by one head at most (the latest win).
MAX_WITNESS = 64
#: Longest signed head accepted from the metadata, in characters.
MAX_HEAD_CHARS = 1 << 20
_HEAD_FIXED = 1 + 16 + 32 + 32 + 64 + 32
#: Entries noted before they are encoded and written, at most.
_MAX_PENDING = 256
#: Characters of the texts held by noted entries at most (each version of a
#: document waits for its hash at the next commit: versions of a long
#: document are hashed and written sooner, not held).
_MAX_PENDING_CHARS = 1 << 22
#: Claims received that the log remembers for attributing new entries.
_RECENT_CLAIMS = 4096
_SCHEMA = 1
#: The log folder's SQLite file (heads, heads received, claims, settings).
DB_NAME = "audit.sqlite"


class _Unencodable(Exception):
    """A batch of entries the core could not encode (``error`` says why)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class AuditError(CorruptionError):
    """An audit log, a signed head or a claim fails verification (or cannot
    be read): a :class:`~hybridsync.errors.CorruptionError`, so a
    :class:`~hybridsync.errors.DecodeError` too."""


def audit_path(store_path: str | os.PathLike[str]) -> Path:
    """The folder where a durable replica at ``store_path`` keeps its audit
    log (its segments and ``audit.sqlite``)."""
    return Path(os.fspath(store_path) + ".audit")


#: An entry waiting for the next commit: (seq, time_ns, channel, kind, origin,
#: subject, writer or None, via, writer_seq, text or content hash).
_Pending = tuple[int, int, int, int, int, str, "str | None", str, int, "bytes | str"]


class _TextListener:
    """The log's ear on the text channel (a :class:`ChangeListener`).
    Never raises: a failure is logged (the change stands)."""

    __slots__ = ("_log",)

    def __init__(self, log: AuditLog) -> None:
        self._log = log

    def on_text_changed(self, name: str, origin: Origin) -> None:
        try:
            self._log._on_text(name, origin)
        except Exception:
            log.exception("%s: the audit log failed to record a change", self._log.replica_id)

    def on_text_deleted(self, name: str, origin: Origin) -> None:
        self.on_text_changed(name, origin)

    def on_meta_changed(self, origin: Origin) -> None:
        pass

    def on_kv_changed(
        self, name: str, first_page: int, source: object, *, reset: bool, first_token: int
    ) -> None:
        pass

    def on_kv_deleted(self, name: str, owner: str, uid: int, source: object) -> None:
        pass


@dataclass(frozen=True)
class AuditPolicy:
    """How a replica keeps its audit log.

    Args:
        enabled: ``False`` keeps no log.
        sign_every: sign (and publish) the head at the first commit point
            with at least this many entries since the last signed head.
            Deterministic: counted in entries, never in time.
        publish: publish signed heads (with their claims) in the replicated
            metadata, so that other replicas keep them.
        max_entries: keep at least this many entries; older ones are
            pruned, but only up to a signed head, which becomes the log's
            checkpoint (verification starts from it). ``None``: keep all.
        key: the Ed25519 signing key. ``None``: from ``key_file``, else from
            ``$HYBRIDSYNC_AUDIT_KEY`` when set, else a key generated once
            and kept in the log file.
        key_file: a file holding the key (see :mod:`hybridsync.audit.keys`).
        segment_entries: a new segment file starts after a signed head once
            the current one holds this many entries (pruning removes whole
            segments).
        kv_content: what a KV entry's content hash covers: ``"rows"`` (the
            quantized rows written: BLAKE3 over every byte, cryptographically
            binding) or ``"pages"`` (the cache's page-hash table from the
            first changed page: BLAKE3 over its 64-bit xxh3 page hashes,
            which the KV channel keeps anyway; nearly free, but xxh3 is not
            collision resistant, so it binds the rows only against accidents,
            not against an adversary).
        trusted_keys: replica id -> its raw 32-byte Ed25519 public key: heads
            of those replicas under any other key are refused. Other
            replicas' keys are trusted on first use (the first key a head of
            that replica was accepted under).
        text_cache_bytes: documents of 64 KiB or more (ASCII) are rehashed
            from where a version differs from the one before, which takes
            keeping a reference to that version: at most this many bytes of
            them (the least recently changed go first). 0: every version is
            hashed whole.
    """

    enabled: bool = True
    sign_every: int = 4096
    publish: bool = True
    max_entries: int | None = None
    key: SigningKey | None = None
    key_file: str | os.PathLike[str] | None = None
    segment_entries: int = 16384
    kv_content: Literal["rows", "pages"] = "rows"
    trusted_keys: Mapping[str, bytes] = field(default_factory=dict)
    text_cache_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        if not isinstance(self.sign_every, int) or self.sign_every < 1:
            raise InvalidArgumentError(f"sign_every must be an int >= 1, got {self.sign_every!r}")
        for replica, key in self.trusted_keys.items():
            if not isinstance(replica, str) or not isinstance(key, bytes) or len(key) != 32:
                raise InvalidArgumentError(
                    "trusted_keys maps replica ids to raw 32-byte Ed25519 public keys"
                )
        if (
            not isinstance(self.text_cache_bytes, int)
            or isinstance(self.text_cache_bytes, bool)
            or self.text_cache_bytes < 0
        ):
            raise InvalidArgumentError(
                f"text_cache_bytes must be an int >= 0, got {self.text_cache_bytes!r}"
            )
        if self.kv_content not in ("rows", "pages"):
            raise InvalidArgumentError(f"kv_content is 'rows' or 'pages', got {self.kv_content!r}")
        if not isinstance(self.segment_entries, int) or self.segment_entries < 1:
            raise InvalidArgumentError(
                f"segment_entries must be an int >= 1, got {self.segment_entries!r}"
            )
        if self.max_entries is not None and (
            not isinstance(self.max_entries, int) or self.max_entries < 1
        ):
            raise InvalidArgumentError(
                f"max_entries must be None or an int >= 1, got {self.max_entries!r}"
            )


@dataclass(frozen=True)
class AuditEntry:
    """One entry of an audit log (see :mod:`hybridsync.audit.log`)."""

    seq: int
    time_ns: int
    channel: Literal["text", "meta", "kv"]
    kind: Literal["create", "update", "delete"]
    origin: Literal["local", "remote"]
    subject: str
    writer: str
    via: str
    writer_seq: int
    content: bytes
    prev: bytes
    hash: bytes

    @classmethod
    def decode(cls, body: bytes, entry_hash: bytes) -> AuditEntry:
        """Parse a body (raises :class:`~hybridsync.errors.DecodeError`)."""
        seq, t, ch, kind, origin, subject, writer, via, wseq, content, prev = audit_decode_entry(
            body
        )
        return cls(
            seq,
            t,
            CHANNELS[ch],  # type: ignore[arg-type]
            _KINDS[kind],  # type: ignore[arg-type]
            "remote" if origin else "local",
            subject,
            writer,
            via,
            wseq,
            content,
            prev,
            entry_hash,
        )

    def touches(self, channel: str, subject: str | Sequence[str]) -> bool:
        """True when this entry changed ``subject`` of ``channel`` (for
        metadata: a key path, matching the path, a value under it, or a
        value above it that replaced it)."""
        if channel != self.channel:
            return False
        if channel != "meta":
            return self.subject == subject
        want = (subject,) if isinstance(subject, str) else tuple(subject)
        have = tuple(json.loads(self.subject))
        n = min(len(want), len(have))
        return want[:n] == have[:n]

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time_ns": self.time_ns,
            "channel": self.channel,
            "kind": self.kind,
            "origin": self.origin,
            "subject": json.loads(self.subject) if self.channel == "meta" else self.subject,
            "writer": self.writer,
            "via": self.via or None,
            "writer_seq": self.writer_seq or None,
            "content": self.content.hex(),
            "hash": self.hash.hex(),
        }


@dataclass(frozen=True)
class Claim:
    """A replica's signed statement that its entry ``seq`` wrote ``content``
    to ``subject`` of ``channel``."""

    channel: str
    subject: str
    seq: int
    content: bytes

    def value(self) -> list[Any]:
        return [self.channel, self.subject, self.seq, self.content.hex()]


class _Reader:
    """Reads the binary tail of a head; every malformation is a ValueError."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uvarint(self) -> int:
        n = shift = 0
        while True:
            b = self.take(1)[0]
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                if n >= 1 << 63:
                    raise ValueError("number out of range")
                return n
            shift += 7
            if shift > 63:
                raise ValueError("varint too long")

    def string(self, limit: int) -> str:
        n = self.uvarint()
        if n > limit:
            raise ValueError("string too long")
        return self.take(n).decode()


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str) -> bytes:
    b = s.encode()
    return _uvarint(len(b)) + b


def _tail_bytes(claims: Sequence[Claim], witness: Sequence[SignedHead]) -> bytes:
    """The claims and witnessed heads of a head, canonically encoded:
    ``uvarint n``, per claim ``u8 channel, string subject, uvarint seq,
    [32] content``; ``uvarint n``, per witnessed head ``string replica,
    uvarint seq, uvarint time_ns, [32] head, [32] key, [64] signature,
    [32] span, [32] tail digest``."""
    out = [_uvarint(len(claims))]
    for c in claims:
        out += [bytes([CHANNELS.index(c.channel)]), _string(c.subject), _uvarint(c.seq), c.content]
    out.append(_uvarint(len(witness)))
    for w in witness:
        out += [
            _string(w.replica),
            _uvarint(w.seq),
            _uvarint(w.time_ns),
            w.head,
            w.key,
            w.signature,
            w.span,
            w.tail_digest(),
        ]
    return b"".join(out)


def parse_tail(data: bytes) -> tuple[tuple[Claim, ...], tuple[SignedHead, ...]]:
    """The inverse of :func:`_tail_bytes` (ValueError when malformed)."""
    r = _Reader(data)
    claims = []
    n = r.uvarint()
    if n > MAX_CLAIMS:
        raise ValueError("too many claims")
    for _ in range(n):
        ch = r.take(1)[0]
        if ch >= len(CHANNELS):
            raise ValueError("unknown channel")
        claims.append(Claim(CHANNELS[ch], r.string(1 << 16), r.uvarint(), r.take(32)))
    witness = []
    n = r.uvarint()
    if n > MAX_WITNESS:
        raise ValueError("too many witnessed heads")
    for _ in range(n):
        replica = r.string(4096)
        seq, t = r.uvarint(), r.uvarint()
        head, key, sig, span, digest = r.take(32), r.take(32), r.take(64), r.take(32), r.take(32)
        witness.append(SignedHead(replica, seq, head, t, key, sig, (), span, (), digest))
    if r.pos != len(data):
        raise ValueError("trailing bytes")
    return tuple(claims), tuple(witness)


@dataclass(frozen=True)
class SignedHead:
    """A replica's signed log head: its entry ``seq`` hashes to ``head``."""

    replica: str
    seq: int
    head: bytes
    time_ns: int
    key: bytes
    signature: bytes
    claims: tuple[Claim, ...] = field(default=())
    #: BLAKE3 of the hashes of the entries this head adds to the previous
    #: one, concatenated (the log keeps them: they name an altered entry).
    span: bytes = ZERO
    #: The latest heads of other replicas this replica had received when it
    #: signed (so that a replica showing two histories is caught when the
    #: heads of those who saw them meet).
    witness: tuple[SignedHead, ...] = field(default=())
    #: A witnessed head: the digest of its tail (its claims and witnesses
    #: are not carried along).
    digest: bytes | None = None

    def tail(self) -> bytes:
        """The claims and witnessed heads, encoded (:func:`_tail_bytes`)."""
        return _tail_bytes(self.claims, self.witness)

    def tail_digest(self) -> bytes:
        return self.digest if self.digest is not None else audit_hash(self.tail())

    def message(self) -> bytes:
        """The bytes signed: the core's head message, then the BLAKE3 of the
        tail, then :attr:`span`."""
        return (
            audit_head_message(self.replica, self.seq, self.head, self.time_ns)
            + self.tail_digest()
            + self.span
        )

    def valid(self) -> bool:
        """True when the signature is the key's over :meth:`message`."""
        try:
            msg = self.message()
        except (InvalidArgumentError, ValueError):
            return False
        return verify_signature(self.key, self.signature, msg)

    def to_value(self) -> str:
        """As a metadata value: ``"h1:"`` and the URL-safe base64 of version
        byte 1, seq and time (u64 little-endian), head, key, signature and
        span, then the tail."""
        raw = (
            b"\x01"
            + struct.pack("<QQ", self.seq, self.time_ns)
            + self.head
            + self.key
            + self.signature
            + self.span
            + self.tail()
        )
        return "h1:" + base64.urlsafe_b64encode(raw).decode()

    @classmethod
    def from_value(cls, replica: str, value: Any) -> SignedHead:
        """Parse a metadata value; :class:`AuditError` when malformed (the
        signature is not checked here: see :meth:`valid`)."""
        try:
            if not isinstance(value, str) or not value.startswith("h1:"):
                raise TypeError("not a signed head")
            if len(value) > MAX_HEAD_CHARS:
                raise ValueError(f"longer than {MAX_HEAD_CHARS} characters")
            raw = base64.urlsafe_b64decode(value[3:].encode())
            if len(raw) < _HEAD_FIXED or raw[0] != 1:
                raise ValueError("truncated, or an unknown version")
            seq, t = struct.unpack_from("<QQ", raw, 1)
            if seq >= 1 << 63 or t >= 1 << 63:
                raise ValueError("number out of range")
            o = 17
            head, key, sig, span = (
                raw[o : o + 32],
                raw[o + 32 : o + 64],
                raw[o + 64 : o + 128],
                raw[o + 128 : o + 160],
            )
            claims, witness = parse_tail(raw[_HEAD_FIXED:])
            return cls(replica, seq, head, t, key, sig, claims, span, witness)
        except (TypeError, ValueError, binascii.Error, UnicodeDecodeError) as exc:
            raise AuditError(f"a malformed signed head for {replica!r}: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "replica": self.replica,
            "seq": self.seq,
            "head": self.head.hex(),
            "time_ns": self.time_ns,
            "key": self.key.hex(),
            "signature": self.signature.hex(),
            "span": self.span.hex(),
            "claims": [c.value() for c in self.claims],
            "witness": [
                {"replica": w.replica, "seq": w.seq, "head": w.head.hex()} for w in self.witness
            ],
        }


def _int(v: Any) -> int:
    n = int(v)
    if isinstance(v, bool) or n != v or not 0 <= n < 1 << 63:
        raise ValueError(f"bad number {v!r}")
    return n


def _hex(v: Any, n: int) -> bytes:
    if not isinstance(v, str):
        raise TypeError("not hex")
    b = bytes.fromhex(v)
    if len(b) != n:
        raise ValueError(f"expected {n} bytes")
    return b


_TABLES = """
CREATE TABLE IF NOT EXISTS info (k TEXT PRIMARY KEY, v BLOB);
CREATE TABLE IF NOT EXISTS heads (
    seq INTEGER NOT NULL, time_ns INTEGER NOT NULL, head BLOB NOT NULL,
    key BLOB NOT NULL, sig BLOB NOT NULL, claims BLOB NOT NULL, span BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS peer_heads (
    replica TEXT NOT NULL, seq INTEGER NOT NULL, time_ns INTEGER NOT NULL,
    head BLOB NOT NULL, key BLOB NOT NULL, sig BLOB NOT NULL, claims BLOB NOT NULL,
    span BLOB NOT NULL, digest BLOB NOT NULL, via TEXT NOT NULL, valid INTEGER NOT NULL,
    PRIMARY KEY (replica, seq, head, sig)
);
CREATE TABLE IF NOT EXISTS claims (
    channel TEXT NOT NULL, subject TEXT NOT NULL, content BLOB NOT NULL,
    writer TEXT NOT NULL, seq INTEGER NOT NULL, head_seq INTEGER NOT NULL,
    PRIMARY KEY (channel, subject, content, writer, seq)
);
"""


class AuditLog:
    """The audit log of ``memory`` (see the module documentation).

    Args:
        memory: the replica (a :class:`hybridsync.Memory`).
        path: the log's SQLite file (created if missing); ``None``: in memory.
        policy: see :class:`AuditPolicy`.
        fsync: ``True``: each commit survives power loss; ``False``:
            process crashes only.

    Raises :class:`AuditError` when the file is not an audit log or belongs
    to another replica, :class:`~hybridsync.errors.StorageError` when it
    cannot be opened.
    """

    def __init__(
        self,
        memory: Any,
        path: str | os.PathLike[str] | None = None,
        policy: AuditPolicy | None = None,
        *,
        fsync: bool = True,
    ) -> None:
        self.memory = memory
        self.replica_id: str = memory.replica_id
        self.policy = policy or AuditPolicy()
        self.path = None if path is None else Path(os.fspath(path))
        self.fsync = fsync
        self._lock = threading.RLock()
        try:
            if self.path is not None:
                self.path.mkdir(mode=0o700, exist_ok=True)
            self._db = sqlite3.connect(
                ":memory:" if self.path is None else str(self.path / DB_NAME),
                isolation_level=None,
                check_same_thread=False,
            )
        except (OSError, sqlite3.DatabaseError) as exc:
            raise StorageError(f"cannot open the audit log {self.path}: {exc}") from None
        self.segments = Segments(self.path, roll_entries=self.policy.segment_entries)
        try:
            try:
                if self.path is not None:
                    self._db.execute("PRAGMA journal_mode=WAL")
                    # Entries are synced before each signed head (see _sign).
                    self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_TABLES)
            except sqlite3.DatabaseError as exc:
                raise StorageError(f"cannot open the audit log {self.path}: {exc}") from None
            self._open()
        except BaseException:
            self._db.close()
            self.segments.close()
            raise
        self._pending: list[_Pending] = []
        self._pending_chars = 0  # characters of the texts in _pending
        #: Long documents' previous versions, so that a new version is
        #: rehashed from where it differs (BLAKE3's tree), not whole.
        self._texts = TextHashes(max_bytes=self.policy.text_cache_bytes)
        #: Local writes since the last signed head, claimed in the next one:
        #: (channel code, subject) -> (seq, content hash), oldest first.
        self._claims: dict[tuple[int, str], tuple[int, bytes]] = {}
        self._docs: set[str] = set(memory.text)  # to tell a creation from an update
        self._recent: OrderedDict[tuple[str, str, bytes], str] = OrderedDict()
        #: The latest head received from each other replica (witnessed in ours).
        self._seen: dict[str, SignedHead] = {}
        self._subs: list[Subscription] = []
        changes = memory.changes
        # Text through a listener (no per-change diff, unlike text observers).
        self._listener = _TextListener(self)
        changes.add_listener(self._listener)
        self._subs.append(changes.observe("meta", (), self._on_meta))
        self._subs.append(changes.observe("kv", None, self._on_kv))
        self.closed = False
        # The claims of the head signed when the replica last closed (never
        # published) are claimed again in the next head.
        if self._info("unpublished") == self.signed_seq and self.signed_seq:
            row = self._db.execute(
                "SELECT claims FROM heads ORDER BY rowid DESC LIMIT 1"
            ).fetchone()
            try:
                claims, _ = parse_tail(bytes(row[0]))
            except ValueError:
                claims = ()  # reported by verification; nothing to claim again
            for c in claims:
                self._claims[(CHANNELS.index(c.channel), c.subject)] = (c.seq, c.content)

    # -- opening

    def _info(self, key: str) -> Any:
        row = self._db.execute("SELECT v FROM info WHERE k = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _open(self) -> None:
        with self._db:
            schema = self._info("schema")
            if schema is None:
                self._db.execute("INSERT INTO info VALUES ('schema', ?)", (_SCHEMA,))
                self._db.execute("INSERT INTO info VALUES ('replica', ?)", (self.replica_id,))
            elif schema != _SCHEMA:
                raise AuditError(f"{self.path}: unknown audit log schema {schema!r}")
            owner = self._info("replica")
            if owner != self.replica_id:
                raise AuditError(
                    f"{self.path} is the audit log of {owner!r}, not of {self.replica_id!r}"
                )
        self.key = self._signing_key()
        self.public_key = public_key_bytes(self.key)
        last = self._db.execute("SELECT MAX(seq) FROM heads").fetchone()[0]
        self.signed_seq = int(last or 0)
        self._heads_signed = int(self._db.execute("SELECT COUNT(*) FROM heads").fetchone()[0])
        first, tail = self.segments.open()
        # What the last segment's first entry follows: the previous segment's
        # last entry, else the checkpoint.
        base_seq, base_head = self._checkpoint()
        before = [f for f in self.segments.firsts() if f < first]
        if tail and before:
            data = self.segments.read(before[-1])
            records = parse_records(data, str(self.path), lenient=True)[0]
            if records:
                base_seq, base_head = first - 1, audit_entry_hash(records[-1])
        keep = len(tail)
        if tail:
            # Entries after the latest signed head were never synced: a power
            # loss can leave an unfinished record that reads as whole (the
            # segment's room is zeros). Keep those that chain, cut the rest.
            good = audit_verify_chain(encode_records(tail), first, base_head)[0]
            if good < len(tail) and first + good > self.signed_seq:
                keep = good
        cut, tail = tail[keep:], tail[:keep]
        self.seq, self.head = base_seq, base_head
        if tail:
            try:
                self.seq = audit_decode_entry(tail[-1])[0]
            except DecodeError as exc:
                raise AuditError(
                    f"{self.path}: the last audit entry is malformed ({exc}); "
                    "`hybridsync audit` tells which entries are damaged"
                ) from None
            self.head = audit_entry_hash(tail[-1])
        if self.seq < self.signed_seq:
            raise AuditError(
                f"{self.path}: the log ends at entry {self.seq}, below its latest signed "
                f"head ({self.signed_seq}): entries were cut or damaged (nothing was "
                "changed); `hybridsync audit` tells which"
            )
        if cut:
            log.warning(
                "%s: cut %d unfinished audit entries after entry %d (a power loss)",
                self.path,
                len(cut),
                self.seq,
            )
        self.segments.repair(keep)
        #: The position of the last entry written (``seq`` counts those noted).
        self._written = self.seq
        #: Hashes of the entries after the latest signed head.
        self._span = bytearray()
        if self.seq > self.signed_seq:
            for first, records in self.segments.all_records():
                for i, body in enumerate(records):
                    if first + i > self.signed_seq:
                        self._span += audit_entry_hash(body)

    def _signing_key(self) -> SigningKey:
        p = self.policy
        if p.key is not None:
            return p.key
        if p.key_file is not None:
            return load_signing_key(KEY_ENV, p.key_file)
        if os.environ.get(KEY_ENV, "").strip():
            return load_signing_key(KEY_ENV)
        stored = self._info("key")
        if stored is not None:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            try:
                return Ed25519PrivateKey.from_private_bytes(bytes(stored))
            except ValueError:
                raise AuditError(f"{self.path}: the stored signing key is malformed") from None
        key = new_signing_key()
        with self._db:
            self._db.execute("INSERT INTO info VALUES ('key', ?)", (key.private_bytes_raw(),))
        return key

    def _checkpoint(self) -> tuple[int, bytes]:
        seq = self._info("checkpoint_seq")
        head = self._info("checkpoint_head")
        return (int(seq or 0), bytes(head) if head is not None else ZERO)

    # -- listening

    def _append(
        self,
        channel: int,
        kind: str,
        origin: Origin,
        subject: str,
        content: bytes | str,
        writer: str | None = None,
    ) -> None:
        """Note an entry; it is encoded, hashed and chained at the next
        commit (``content``: a text to hash then, or a content hash)."""
        seq = self.seq = self.seq + 1
        if origin.kind == "remote":
            # writer None: the writer of a received claim of this content.
            via = origin.peer or ""
            self._pending.append(
                (
                    seq,
                    time.time_ns(),
                    channel,
                    _KIND_CODE[kind],
                    1,
                    subject,
                    writer,
                    via,
                    0,
                    content,
                )
            )
        else:
            self._pending.append(
                (
                    seq,
                    time.time_ns(),
                    channel,
                    _KIND_CODE[kind],
                    0,
                    subject,
                    writer or self.replica_id,
                    "",
                    seq,
                    content,
                )
            )

    def _after(self) -> None:
        # A durable log signs at commit points only (what it signs is on
        # disk); one in memory signs as soon as the policy says. Pending
        # entries (which may hold whole texts) are bounded either way.
        if self.path is None and self.seq - self.signed_seq >= self.policy.sign_every:
            self.commit()
        elif len(self._pending) >= _MAX_PENDING:
            self._write()

    def _on_text(self, name: str, origin: Origin) -> None:
        # Every edit passes here: _append and _after inlined.
        where = origin.kind
        if where == "restore":
            return
        with self._lock:
            new: str | bytes | None = self.memory.text.get(name)
            if new is None:
                self._docs.discard(name)
                kind, new = 2, ZERO
            else:
                kind = 1 if name in self._docs else 0
                self._docs.add(name)  # the text is hashed at the commit
                self._pending_chars += len(new)
            seq = self.seq = self.seq + 1
            entry: _Pending
            if where == "remote":
                # writer None: the writer of a received claim of this content.
                entry = (seq, time.time_ns(), 0, kind, 1, name, None, origin.peer or "", 0, new)
            else:
                entry = (seq, time.time_ns(), 0, kind, 0, name, self.replica_id, "", seq, new)
            pending = self._pending
            pending.append(entry)
            if self.path is None and seq - self.signed_seq >= self.policy.sign_every:
                self.commit()
            elif len(pending) >= _MAX_PENDING or self._pending_chars >= _MAX_PENDING_CHARS:
                self._write()

    def _on_meta(self, event: MetaEvent) -> None:
        if event.origin.kind == "restore":
            return
        with self._lock:
            heads: list[tuple[str, Any]] = []
            for change in event.changes:
                top = change.path[0] if change.path else ""
                if top.startswith(META_PREFIX):
                    if change.kind == "delete":
                        continue
                    if len(change.path) == 1 and isinstance(change.new, dict):
                        heads += [(top, change.new[k]) for k in sorted(change.new)]
                    elif len(change.path) <= 2:
                        heads.append((top, change.new))
                    continue
                subject = json.dumps(list(change.path), ensure_ascii=False)
                content = (
                    ZERO
                    if change.kind == "delete"
                    else audit_hash(
                        json.dumps(
                            change.new, sort_keys=True, separators=(",", ":"), ensure_ascii=False
                        ).encode()
                    )
                )
                self._append(1, change.kind, event.origin, subject, content)
            if event.origin.kind == "remote":
                for top, value in heads:
                    self._receive_published(top, value, event.origin.peer or "")
            self._after()

    def _on_kv(self, event: KVEvent) -> None:
        if event.origin.kind == "restore":
            return
        with self._lock:
            content = ZERO
            if event.kind != "delete":
                content = self._kv_content(event.name, event.first_token)
            self._append(2, event.kind, event.origin, event.name, content, writer=event.owner)
            self._after()

    def _kv_content(self, name: str, first: int) -> bytes:
        cache = self.memory.kv.get(name)
        if cache is None:
            return ZERO
        tokens = cache.tokens
        first = min(first, tokens)
        parts: list[Any] = [f"{cache.uid}:{first}:{tokens}".encode()]
        if self.policy.kv_content == "pages":
            page = first // cache.page_tokens
            table = cache.page_hashes()[..., page:]
            parts.append(b"pages")
            parts.append(table.tobytes())
            return audit_hash_parts(parts)
        # Each layer's K and V views, read in place by the core, which takes
        # rows first..tokens of every head (no per-head slicing here).
        parts += [cache.quantized(layer, kind) for layer in range(cache.layers) for kind in "kv"]
        return audit_hash_parts(parts, rows=(first, tokens))

    def _receive_published(self, top: str, value: Any, via: str) -> None:
        replica = top[len(META_PREFIX) :]
        try:
            self.receive_head(SignedHead.from_value(replica, value), via=via)
        except AuditError as exc:
            log.warning("%s: refused a signed head from %r: %s", self.replica_id, via, exc)

    # -- heads

    def receive_head(self, head: SignedHead, *, via: str = "") -> None:
        """Keep a head another replica signed, its claims, and the heads it
        witnessed. Raises :class:`AuditError` for a forged head (the
        signature does not verify, or it claims to be ours under another
        key); the head is recorded as refused either way, so that
        ``hybridsync audit`` reports it. Two heads of one replica for one
        position (received, witnessed or our own) are an equivocation:
        logged as a warning at once, and reported by ``hybridsync audit``."""
        refusal = self._refusal(head)
        ok = refusal is None
        found: list[str] = []
        with self._lock, self._db:
            found += self._keep(head, via, ok)
            if ok and head.replica != self.replica_id:
                for c in head.claims:
                    self._recent[(c.channel, c.subject, c.content)] = head.replica
                    self._recent.move_to_end((c.channel, c.subject, c.content))
                while len(self._recent) > _RECENT_CLAIMS:
                    self._recent.popitem(last=False)
                self._db.executemany(
                    "INSERT OR IGNORE INTO claims VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (c.channel, c.subject, c.content, head.replica, c.seq, head.seq)
                        for c in head.claims
                    ],
                )
                for w in head.witness:
                    found += self._keep(w, f"witnessed by {head.replica}", self._acceptable(w))
                seen = self._seen.get(head.replica)
                if seen is None or seen.seq < head.seq:
                    self._seen[head.replica] = SignedHead(
                        head.replica,
                        head.seq,
                        head.head,
                        head.time_ns,
                        head.key,
                        head.signature,
                        (),
                        head.span,
                        (),
                        head.tail_digest(),
                    )
                    while len(self._seen) > MAX_WITNESS:
                        del self._seen[min(self._seen, key=lambda r: self._seen[r].time_ns)]
        for msg in found:
            log.warning("%s: equivocation: %s", self.replica_id, msg)
        if not ok:
            raise AuditError(
                f"a forged signed head for {head.replica!r} at entry {head.seq} (via {via!r}): "
                f"{refusal}"
            )

    def _acceptable(self, head: SignedHead) -> bool:
        return self._refusal(head) is None

    def _refusal(self, head: SignedHead) -> str | None:
        """Why a head is refused, or None: its signature must verify, under
        the replica's key: ours for our id, the one given in
        ``AuditPolicy.trusted_keys``, else the first key this log accepted
        for that replica (trust on first use)."""
        if not head.valid():
            return "its signature does not verify"
        if head.replica == self.replica_id:
            want: bytes | None = self.public_key
        elif head.replica in self.policy.trusted_keys:
            want = bytes(self.policy.trusted_keys[head.replica])
        else:
            row = self._db.execute(
                "SELECT key FROM peer_heads WHERE replica = ? AND valid ORDER BY rowid LIMIT 1",
                (head.replica,),
            ).fetchone()
            want = None if row is None else bytes(row[0])
        if want is not None and head.key != want:
            return f"it is signed by another key than {head.replica!r}'s"
        return None

    def _keep(self, head: SignedHead, via: str, ok: bool) -> list[str]:
        """Store a head received (or witnessed); returns the equivocations it
        reveals."""
        found = []
        if ok:
            rows = self._db.execute(
                "SELECT head FROM peer_heads WHERE replica = ? AND key = ? AND seq = ? AND valid"
                " UNION SELECT head FROM heads WHERE ? = ? AND key = ? AND seq = ?",
                (
                    head.replica,
                    head.key,
                    head.seq,
                    head.replica,
                    self.replica_id,
                    head.key,
                    head.seq,
                ),
            ).fetchall()
            if any(bytes(r[0]) != head.head for r in rows):
                found.append(
                    f"{head.replica!r} signed two different heads for entry {head.seq} "
                    f"(one of them {via or 'received'})"
                )
        self._db.execute(
            "INSERT OR IGNORE INTO peer_heads VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                head.replica,
                head.seq,
                head.time_ns,
                head.head,
                head.key,
                head.signature,
                head.tail() if head.digest is None else b"",
                head.span,
                head.tail_digest(),
                via,
                int(ok),
            ),
        )
        return found

    def sign(self) -> SignedHead | None:
        """Commit, sign the head now and publish it (``None`` when there is
        no entry)."""
        with self._lock:
            self._write()
            return self._sign()

    def _sign(self, *, publish: bool = True) -> SignedHead | None:
        # Signs the entries written (at a commit point: every entry noted).
        at = self._written
        if at == 0 or at == self.signed_seq:
            return None
        now = max(time.time_ns(), self._last_head_time() + 1)
        claims = tuple(
            Claim(CHANNELS[ch], subject, seq, content)
            for (ch, subject), (seq, content) in self._claims.items()
            if seq <= at
        )[-MAX_CLAIMS:]  # more only when claims restored at reopening fill it (the latest win)
        witness = tuple(sorted(self._seen.values(), key=lambda h: (h.time_ns, h.replica)))
        span = bytes(self._span)
        unsigned = SignedHead(
            self.replica_id,
            at,
            self.head,
            now,
            self.public_key,
            b"",
            claims,
            audit_hash(span),
            witness,
        )
        head = SignedHead(
            self.replica_id,
            at,
            self.head,
            now,
            self.public_key,
            self.key.sign(unsigned.message()),
            claims,
            unsigned.span,
            witness,
        )
        if self.fsync:
            self.segments.sync()  # never sign what a power loss could take back
            self._db.execute("PRAGMA synchronous=FULL")
        try:
            with self._db:
                self._db.execute(
                    "INSERT INTO heads VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        head.seq,
                        head.time_ns,
                        head.head,
                        head.key,
                        head.signature,
                        head.tail(),
                        span,
                    ),
                )
        finally:
            if self.fsync and self.path is not None:
                self._db.execute("PRAGMA synchronous=NORMAL")
        self.signed_seq = at
        self._heads_signed += 1
        self._span.clear()
        claimed = dict(self._claims)
        self._claims.clear()
        try:
            self.segments.roll(at + 1)
        except BaseException:
            self._claims.update(claimed)  # the head is kept, not published: claimed again
            raise
        if publish and self.policy.publish and not self._publish(head):
            # Not published: its claims go out with the next head.
            for k, v in claimed.items():
                self._claims.setdefault(k, v)
        self._prune()
        return head

    def _last_head_time(self) -> int:
        t = self._db.execute("SELECT MAX(time_ns) FROM heads").fetchone()[0]
        return int(t or 0)

    def _publish(self, head: SignedHead) -> bool:
        """Into its slot of the replica's ring of heads in the metadata (so
        that the heads signed between two exchanges of a link all reach the
        peer, up to :data:`HEAD_RING` of them). False when it failed (logged)."""
        key = META_PREFIX + self.replica_id
        slot = str(self._heads_signed % HEAD_RING)
        try:
            meta = self.memory.meta
            ring = meta.get(key)
            if ring is not None and hasattr(ring, "to_py"):
                ring[slot] = head.to_value()
            else:
                meta[key] = {slot: head.to_value()}
        except Exception:
            log.exception("%s: could not publish its signed head", self.replica_id)
            return False
        return True

    def _prune(self) -> None:
        keep = self.policy.max_entries
        if keep is None:
            return
        # Segments start after signed heads: drop whole ones, the head before
        # the first one kept becoming the checkpoint.
        self.segments.prune(self._written - keep)
        first = self.segments.firsts()[0] if self.segments.firsts() else self._written + 1
        seq = first - 1
        if seq <= self._checkpoint()[0]:
            return
        row = self._db.execute(
            "SELECT head FROM heads WHERE seq = ? ORDER BY rowid DESC LIMIT 1", (seq,)
        ).fetchone()
        if row is None:
            raise AuditError(f"{self.path}: no signed head at {seq}, where a segment ends")
        head = bytes(row[0])
        with self._db:
            self._db.execute("DELETE FROM heads WHERE seq < ?", (seq,))
            self._db.execute("INSERT OR REPLACE INTO info VALUES ('checkpoint_seq', ?)", (seq,))
            self._db.execute("INSERT OR REPLACE INTO info VALUES ('checkpoint_head', ?)", (head,))

    # -- committing

    def _write(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self._pending_chars = 0
        try:
            self._write_pending(pending)
        except _Unencodable as exc:
            # An entry that cannot be encoded would fail every commit: those
            # not written are dropped (logged), the positions they took given
            # back, so the chain has no gap.
            dropped = sum(1 for e in pending if e[0] > self._written) + len(self._pending)
            self._pending = []
            self._pending_chars = 0
            self.seq = self._written
            log.error("%s: dropped %d audit entries: %s", self.replica_id, dropped, exc.error)
            raise exc.error from None
        except BaseException:
            # Not written (a full disk, a database error): noted still, for
            # the next commit.
            self._keep_unwritten(pending)
            raise

    def _keep_unwritten(self, pending: list[_Pending]) -> None:
        """After a failed write (a full disk): what was not written stays
        noted, for the next commit, so the chain has no gap."""
        self._pending = [e for e in pending if e[0] > self._written] + self._pending
        self._pending_chars = sum(len(e[9]) for e in self._pending if isinstance(e[9], str))

    def _write_pending(self, pending: list[_Pending]) -> None:
        claims = self._claims
        if len(claims) + len(pending) <= MAX_CLAIMS:
            self._write_batch(pending)
            return
        # The next head could not claim every local write of this batch: write
        # it in pieces, signing a head whenever its claims are full.
        start, new = 0, set[tuple[int, str]]()
        for i, entry in enumerate(pending):
            key = (entry[2], entry[5])
            if entry[4] or key in claims or key in new:
                continue
            if len(claims) + len(new) >= MAX_CLAIMS and (
                i > start or self._written > self.signed_seq
            ):
                self._write_batch(pending[start:i])
                if self._sign() is not None:
                    start, new = i, set()
            # (Full of claims restored at reopening, with nothing new to sign:
            # the next head keeps the latest MAX_CLAIMS.)
            new.add(key)
        self._write_batch(pending[start:])
        if len(claims) >= MAX_CLAIMS:
            self._sign()

    def _write_batch(self, pending: list[_Pending]) -> None:
        if not pending:
            return
        # One core call encodes, hashes and chains the batch; one write.
        try:
            records, hashes, contents = audit_append(pending, self.head, self._recent, self._texts)
        except Exception as exc:
            raise _Unencodable(exc) from exc
        self.segments.append_records(pending[0][0], records, len(pending))
        self.head = hashes[-32:]
        self._written = pending[-1][0]
        self._span += hashes
        claims = self._claims
        for i, entry in enumerate(pending):
            if not entry[4]:  # a local write: claimed in the next head
                key = (entry[2], entry[5])
                claims.pop(key, None)
                claims[key] = (entry[0], contents[32 * i : 32 * i + 32])

    def commit(self) -> None:
        """Append the entries made since the last commit to the log's
        segment (one write), then sign and publish the head when the policy
        says."""
        with self._lock:
            if self.closed:
                return
            if self._pending:
                self._write()
            if (
                self.seq - self.signed_seq >= self.policy.sign_every
                or len(self._claims) >= MAX_CLAIMS
            ):
                self._sign()

    def close(self) -> None:
        """Commit, sign what is unsigned, stop listening and close the file."""
        with self._lock:
            if self.closed:
                return
            for sub in self._subs:
                sub.close()
            self.memory.changes.remove_listener(self._listener)
            self._write()
            # The replica is closing: its last head is kept, not published
            # (the metadata would not be saved or sent any more); its claims
            # go with the next head after reopening.
            head = self._sign(publish=False)
            if head is not None and head.claims:
                with self._db:
                    self._db.execute(
                        "INSERT OR REPLACE INTO info VALUES ('unpublished', ?)", (head.seq,)
                    )
            self.closed = True
            self._db.close()
            self.segments.close()

    # -- reading

    @property
    def db(self) -> sqlite3.Connection:
        """The log's SQLite connection (for :mod:`hybridsync.audit.verify`)."""
        return self._db

    def entries(self) -> Iterator[AuditEntry]:
        """The entries kept, oldest first (committing first)."""
        from hybridsync.audit.verify import iter_entries

        with self._lock:
            self._write()
            yield from iter_entries(self)

    def heads(self) -> list[SignedHead]:
        """This replica's signed heads kept, oldest first."""
        from hybridsync.audit.verify import own_heads

        return own_heads(self._db, self.replica_id)

    def __repr__(self) -> str:
        where = "in memory" if self.path is None else str(self.path)
        return (
            f"<AuditLog of {self.replica_id!r} ({where}): {self.seq} entries, "
            f"signed to {self.signed_seq}>"
        )
