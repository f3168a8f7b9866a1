"""Verifying audit logs, cross-checking them, and asking who wrote what.

What a verification proves (see docs/protocol.md, "Audit log"):

- **chain**: every entry kept links to the one before it by hash, from the
  log's checkpoint (32 zero bytes for a log never pruned) to its last entry,
  with consecutive positions: no entry kept was edited, removed, inserted
  or moved since the next one was appended;
- **heads**: each signed head kept verifies under its Ed25519 key (one key
  per log), heads come in strictly increasing position and time (an old
  head replayed as a new one fails), and the entry at each head's position
  hashes to the signed value: nothing up to the latest signed head changed
  since it was signed, and the log was not cut below it;
- **against** other replicas' logs: every head of this replica that they
  received verifies and matches this log (a log rewritten or rolled back
  after a peer saw its head fails), and no replica signed two different
  heads at one position (equivocation: a replica showing two histories).

Entries after the latest signed head are only as good as the chain: the
replica can still rewrite them before it signs. Verification proves the log
consistent with what was signed; it cannot prove that what a replica signed
was true of its memory.
"""

from __future__ import annotations

import bisect
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridsync._core import audit_entry_hash, audit_hash, audit_verify_chain
from hybridsync.audit.log import (
    CHANNELS,
    DB_NAME,
    ZERO,
    AuditEntry,
    AuditError,
    AuditLog,
    SignedHead,
    audit_path,
    parse_tail,
)
from hybridsync.audit.segments import Segments, parse_records
from hybridsync.errors import CorruptionError, DecodeError, StorageError

__all__ = [
    "Attribution",
    "AuditReport",
    "Problem",
    "attribute",
    "find_equivocations",
    "open_log",
    "verify_log",
]


@dataclass(frozen=True)
class Problem:
    """One failed check: ``seq`` is the first entry it makes bad (None when
    it concerns no entry of this log)."""

    kind: str
    seq: int | None
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "seq": self.seq, "message": self.message}


@dataclass
class AuditReport:
    """The outcome of :func:`verify_log`."""

    replica: str
    path: str
    entries: int = 0
    first_seq: int = 0
    last_seq: int = 0
    signed_seq: int = 0
    heads: int = 0
    public_key: str | None = None
    checked_against: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    #: Findings that do not make this log bad (forged heads it refused).
    warnings: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad(self) -> int | None:
        """The first entry a check failed on (None: none, or no entry named)."""
        seqs = [p.seq for p in self.problems if p.seq is not None]
        return min(seqs) if seqs else None

    def raise_for_problems(self) -> None:
        """Raise :class:`AuditError` naming the first bad entry, if any."""
        if self.problems:
            first = self.first_bad
            where = f" (first bad entry: {first})" if first is not None else ""
            raise AuditError(
                f"the audit log of {self.replica!r} fails verification{where}: "
                + "; ".join(p.message for p in self.problems)
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "replica": self.replica,
            "path": self.path,
            "ok": self.ok,
            "first_bad": self.first_bad,
            "entries": self.entries,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "signed_seq": self.signed_seq,
            "heads": self.heads,
            "public_key": self.public_key,
            "checked_against": self.checked_against,
            "problems": [p.to_json() for p in self.problems],
            "warnings": [p.to_json() for p in self.warnings],
        }


# -- reading a log file --------------------------------------------------------


@dataclass
class LogFiles:
    """An audit log opened for reading: its SQLite file and its segments."""

    db: sqlite3.Connection
    segments: Segments
    where: str


def open_log(path: str | os.PathLike[str]) -> LogFiles:
    """Open an audit log read-only: ``path`` is the log's folder or the
    durable replica's store (its log is ``<path>.audit``). Raises
    :class:`~hybridsync.errors.StorageError` when there is none,
    :class:`AuditError` when it cannot be read."""
    p = Path(os.fspath(path))
    if not p.is_dir() and audit_path(p).is_dir():
        p = audit_path(p)
    if not (p / DB_NAME).is_file():
        raise StorageError(f"no audit log at {p}")
    try:
        db = sqlite3.connect(f"file:{p / DB_NAME}?mode=ro", uri=True, check_same_thread=False)
        db.execute("SELECT v FROM info WHERE k = 'replica'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise AuditError(f"{p} is not a readable audit log: {exc}") from None
    return LogFiles(db, Segments(p), str(p))


def _connect(log: AuditLog | LogFiles | str | os.PathLike[str]) -> LogFiles:
    if isinstance(log, LogFiles):
        return log
    if isinstance(log, AuditLog):
        log.commit()
        return LogFiles(log.db, log.segments, str(log.path or "<memory>"))
    return open_log(log)


def _info(db: sqlite3.Connection, key: str) -> Any:
    try:
        row = db.execute("SELECT v FROM info WHERE k = ?", (key,)).fetchone()
    except sqlite3.DatabaseError as exc:
        raise AuditError(f"the audit log cannot be read: {exc}") from None
    return None if row is None else row[0]


def _rows(db: sqlite3.Connection, sql: str, args: Sequence[Any] = ()) -> list[Any]:
    try:
        return db.execute(sql, args).fetchall()
    except sqlite3.DatabaseError as exc:
        raise AuditError(f"the audit log cannot be read: {exc}") from None


def iter_entries(log: AuditLog | LogFiles | str | os.PathLike[str]) -> Iterator[AuditEntry]:
    """Every entry kept, by position (raises :class:`AuditError` for one that
    cannot be decoded)."""
    view = _connect(log)
    for first, records in view.segments.all_records():
        for i, body in enumerate(records):
            try:
                yield AuditEntry.decode(body, audit_entry_hash(body))
            except (DecodeError, TypeError) as exc:
                raise AuditError(f"audit entry {first + i} is malformed: {exc}") from None


def _head_row(
    replica: str, row: Sequence[Any], *, blob: bool = False, digest: bytes | None = None
) -> SignedHead:
    """A head from a table row; ``blob``: the row holds the span's entry
    hashes themselves (a log's own heads), not their BLAKE3; ``digest``: the
    tail's digest, for a witnessed head whose tail is not kept."""
    seq, t, head, key, sig, tail, span = row[:7]
    try:
        claims, witness = parse_tail(bytes(tail)) if tail else ((), ())
        return SignedHead(
            replica,
            int(seq),
            bytes(head),
            int(t),
            bytes(key),
            bytes(sig),
            claims,
            audit_hash(bytes(span)) if blob else bytes(span),
            witness,
            digest if not tail else None,
        )
    except (ValueError, TypeError) as exc:
        raise AuditError(f"a signed head of {replica!r} at {seq} is malformed: {exc}") from None


def own_heads(db: sqlite3.Connection, replica: str) -> list[SignedHead]:
    """A log's own signed heads, in the order they were signed."""
    return [h for h, _ in _own_heads(db, replica)]


def _own_heads(db: sqlite3.Connection, replica: str) -> list[tuple[SignedHead, bytes]]:
    rows = _rows(db, "SELECT seq, time_ns, head, key, sig, claims, span FROM heads ORDER BY rowid")
    return [(_head_row(replica, r, blob=True), bytes(r[6])) for r in rows]


def received_heads(db: sqlite3.Connection, *, valid: bool | None = True) -> list[SignedHead]:
    """The heads of other replicas a log received (valid ones by default)."""
    sql = (
        "SELECT seq, time_ns, head, key, sig, claims, span, replica, valid, digest FROM peer_heads"
    )
    out = []
    for r in _rows(db, sql):
        if valid is None or bool(r[8]) == valid:
            out.append(_head_row(str(r[7]), r, digest=bytes(r[9])))
    return out


# -- verification --------------------------------------------------------------


def verify_log(
    log: AuditLog | str | os.PathLike[str],
    *,
    against: Sequence[AuditLog | str | os.PathLike[str]] = (),
) -> AuditReport:
    """Verify a replica's audit log (chain, signed heads, checkpoint) and
    cross-check it against the heads the logs in ``against`` received.
    Returns an :class:`AuditReport` (``report.ok``; ``report.first_bad``
    names the first bad entry); raises :class:`AuditError` only when the log
    cannot be read at all."""
    view = _connect(log)
    db, where = view.db, view.where
    replica = _info(db, "replica")
    if not isinstance(replica, str):
        raise AuditError(f"{where} is not an audit log (no replica id)")
    report = AuditReport(replica, where)
    cp_seq_raw, cp_head_raw = _info(db, "checkpoint_seq"), _info(db, "checkpoint_head")
    cp_seq = int(cp_seq_raw or 0)
    cp_head = bytes(cp_head_raw) if cp_head_raw is not None else ZERO
    first_kept, raw = view.segments.raw()
    bodies, used = parse_records(raw, where, lenient=True)
    torn = False
    if used < len(raw):
        try:
            parse_records(raw, where)
            torn = True  # an incomplete last record: being written, or cut by a crash
        except CorruptionError:
            pass
    if torn:
        extra, raw = len(raw) - used, raw[:used]
        report.warnings.append(
            Problem(
                "torn-record",
                None,
                f"the last record is incomplete ({extra} bytes): the log is being "
                "written, or a crash cut a write (reopening the replica removes it)",
            )
        )
    report.entries = len(bodies)
    report.first_seq = cp_seq + 1
    if bodies and first_kept != cp_seq + 1:
        report.problems.append(
            Problem(
                "checkpoint",
                cp_seq + 1,
                f"the first segment starts at entry {first_kept}, the checkpoint is at {cp_seq}",
            )
        )
    # The chain, in the core (a torn last record fails it too).
    good, _head, error = audit_verify_chain(raw, cp_seq + 1, cp_head)
    hashes: dict[int, bytes] = {cp_seq: cp_head}
    for i in range(good):
        hashes[cp_seq + 1 + i] = audit_entry_hash(bodies[i])
    # Each body's hash at its position, whether the chain holds or not.
    at = {cp_seq + 1 + i: audit_entry_hash(b) for i, b in enumerate(bodies)}
    report.last_seq = cp_seq + good
    if error is not None:
        report.last_seq = cp_seq + len(bodies)
    # Own signed heads.
    heads = _own_heads(db, replica)
    report.heads = len(heads)
    key: bytes | None = None
    prev: SignedHead | None = None
    matched = cp_seq
    cp_signed = cp_seq == 0
    confirmed: set[int] = {cp_seq}  # entries whose hash a signed span holds
    for h, span in heads:
        if key is None:
            key = h.key
            report.public_key = key.hex()
        if not h.valid():
            report.problems.append(
                Problem("signature", h.seq, f"the head signed at entry {h.seq} has a bad signature")
            )
            continue
        if h.key != key:
            report.problems.append(
                Problem("signature", h.seq, f"the head at entry {h.seq} is signed by another key")
            )
            continue
        if prev is not None and (h.seq <= prev.seq or h.time_ns <= prev.time_ns):
            report.problems.append(
                Problem(
                    "replay",
                    h.seq,
                    f"the head at entry {h.seq} is not newer than the head before it "
                    f"(entry {prev.seq}): an old head replayed",
                )
            )
            continue
        start = prev.seq if prev is not None else h.seq - len(span) // 32
        prev = h
        if h.seq == cp_seq and h.head == cp_head:
            cp_signed = True
        # The span (signed through its hash) names each altered entry.
        altered = None
        if len(span) == 32 * (h.seq - start):
            for i in range(h.seq - start):
                k = start + 1 + i
                if k in at and at[k] != span[32 * i : 32 * i + 32]:
                    altered = k
                    break
                confirmed.add(k)
        if altered is not None:
            report.problems.append(
                Problem(
                    "rewritten",
                    altered,
                    f"entry {altered} is not the entry the head at {h.seq} signed",
                )
            )
            continue
        if h.seq > report.last_seq and error is None:
            report.problems.append(
                Problem(
                    "truncated",
                    report.last_seq + 1,
                    f"a signed head covers entry {h.seq} but the log ends at {report.last_seq}",
                )
            )
            continue
        have = hashes.get(h.seq)
        if have is None:
            continue  # below the checkpoint, or past a chain error already reported
        if have != h.head:
            report.problems.append(
                Problem(
                    "rewritten",
                    matched + 1,
                    f"entry {h.seq} does not hash to its signed head: entries "
                    f"{matched + 1}..{h.seq} were rewritten after signing",
                )
            )
            continue
        matched = h.seq
        report.signed_seq = h.seq
    if error is not None:
        pos = cp_seq + 1 + good
        # A link that does not match: the entry before it was altered, unless
        # a signed head vouches for that one (then this one's link was);
        # otherwise this entry is missing or misplaced.
        bad = pos
        if "previous-entry hash" in error and pos - 1 not in confirmed:
            bad = pos - 1
        report.problems.insert(0, Problem("chain", bad, f"entry {pos}: {error}"))
    if not cp_signed:
        report.problems.append(
            Problem(
                "checkpoint",
                cp_seq + 1,
                f"the checkpoint at entry {cp_seq} matches no signed head",
            )
        )
    # Heads this log refused.
    for h in received_heads(db, valid=False):
        report.warnings.append(
            Problem(
                "forged-head",
                None,
                f"refused a head for {h.replica!r} at entry {h.seq}: a bad signature, or "
                f"not {h.replica!r}'s key",
            )
        )
    # Cross-checks.
    others = [_connect(o) for o in against]
    for other in others:
        odb, owhere = other.db, other.where
        report.checked_against.append(owhere)
        for h in received_heads(odb):
            if h.replica != replica:
                continue
            if key is not None and h.key != key:
                report.problems.append(
                    Problem(
                        "equivocation",
                        None,
                        f"{owhere} holds a head of {replica!r} at entry {h.seq} under another key",
                    )
                )
                continue
            if h.seq > report.last_seq:
                report.problems.append(
                    Problem(
                        "truncated",
                        report.last_seq + 1,
                        f"{owhere} received a head of entry {h.seq}; this log ends at "
                        f"{report.last_seq} (rolled back or cut)",
                    )
                )
            elif h.seq in hashes and hashes[h.seq] != h.head:
                report.problems.append(
                    Problem(
                        "equivocation",
                        h.seq,
                        f"{owhere} received a different head for entry {h.seq}: this log's "
                        "history differs from what that replica was shown",
                    )
                )
    for p in find_equivocations([view, *others]):
        if p not in report.problems:
            report.problems.append(p)
    return report


def find_equivocations(
    logs: Sequence[AuditLog | LogFiles | str | os.PathLike[str]],
) -> list[Problem]:
    """Replicas that signed two different heads at one position, among every
    head the given logs hold (their own and those received): each is proof
    that the replica showed two histories."""
    seen: dict[tuple[str, bytes, int], tuple[bytes, str]] = {}
    out: list[Problem] = []
    for log in logs:
        view = _connect(log)
        db, where = view.db, view.where
        replica = _info(db, "replica")
        heads = received_heads(db) + (own_heads(db, replica) if isinstance(replica, str) else [])
        for h in heads:
            if not h.valid():
                continue
            k = (h.replica, h.key, h.seq)
            first = seen.setdefault(k, (h.head, where))
            if first[0] != h.head:
                p = Problem(
                    "equivocation",
                    None,
                    f"{h.replica!r} signed two different heads for entry {h.seq} "
                    f"(seen in {first[1]} and {where})",
                )
                if p not in out:
                    out.append(p)
    return out


# -- attribution ---------------------------------------------------------------


@dataclass(frozen=True)
class Attribution:
    """Who wrote what an entry records: ``writer`` (``confirmed``: by the
    writer's signed claim, or the entry is this replica's own signed write,
    or a KV cache's owner), at the writer's entry ``writer_seq``;
    ``writer_head``: the position of the writer's signed head that carried
    the claim (kept in this log's ``peer_heads``), or of this replica's own
    head covering its write."""

    entry: AuditEntry
    writer: str
    writer_seq: int | None
    confirmed: bool
    writer_head: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            **self.entry.to_json(),
            "attributed_to": self.writer,
            "attributed_seq": self.writer_seq,
            "attributed_head": self.writer_head,
            "confirmed": self.confirmed,
        }


def attribute(
    log: AuditLog | str | os.PathLike[str],
    *,
    doc: str | None = None,
    key: str | Sequence[str] | None = None,
    kv: str | None = None,
) -> list[Attribution]:
    """The entries that touched text document ``doc``, metadata path
    ``key`` (a key, or a sequence of keys) or KV cache ``kv`` (any of them
    when none is given), each attributed to the replica that wrote it: a
    value that came through hubs goes to the writer whose signed claim
    matches its content hash."""
    view = _connect(log)
    db = view.db
    replica = _info(db, "replica")
    own = sorted(int(r[0]) for r in _rows(db, "SELECT seq FROM heads"))
    signed = own[-1] if own else 0
    out = []
    for e in iter_entries(view):
        if (doc is not None or key is not None or kv is not None) and not (
            (doc is not None and e.touches("text", doc))
            or (key is not None and e.touches("meta", key))
            or (kv is not None and e.touches("kv", kv))
        ):
            continue
        if e.origin == "local":
            i = bisect.bisect_left(own, e.seq)
            covering = own[i] if i < len(own) else None
            out.append(Attribution(e, str(replica), e.seq, e.seq <= signed, covering))
            continue
        if e.channel == "kv":
            out.append(Attribution(e, e.writer, None, True))
            continue
        row = _rows(
            db,
            "SELECT writer, seq, head_seq FROM claims WHERE channel = ? AND subject = ? "
            "AND content = ? ORDER BY head_seq DESC LIMIT 1",
            (e.channel, e.subject, e.content),
        )
        if row:
            writer, wseq, hseq = row[0]
            out.append(Attribution(e, str(writer), int(wseq), True, int(hseq)))
        else:
            out.append(Attribution(e, e.writer, None, False))
    return out


__all__ += ["CHANNELS", "iter_entries", "own_heads", "received_heads"]
