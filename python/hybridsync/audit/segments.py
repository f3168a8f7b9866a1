"""The audit log's entries: append-only segment files of length-prefixed
entry bodies.

A segment ``seg-<first seq, 20 digits>.log`` holds consecutive entries, each
as a varint byte length then the body (the buffer
:func:`hybridsync._core.audit_verify_chain` reads). Appending is one
``write`` per commit (what a process crash cannot lose); ``sync`` makes it
survive power loss too. A new segment starts after a signed head once the
current one holds ``roll_entries`` entries, so that whole segments can be
pruned up to a signed head (the checkpoint). In memory (no folder) the
segments are byte strings.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

from hybridsync.errors import CorruptionError, StorageError

__all__ = ["Segments", "encode_records", "parse_records"]

_PREFIX, _SUFFIX = "seg-", ".log"
#: The longest entry record accepted when reading (an entry is far smaller).
MAX_RECORD = 1 << 20


def encode_records(bodies: list[bytes]) -> bytes:
    """Bodies behind their varint lengths."""
    out = bytearray()
    for b in bodies:
        n = len(b)
        while True:
            byte = n & 0x7F
            n >>= 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                break
        out += b
    return bytes(out)


def parse_records(
    data: bytes, where: str = "the audit log", *, lenient: bool = False
) -> tuple[list[bytes], int]:
    """The complete records of ``data`` and the offset after the last one (a
    torn record at the end is left out). Raises
    :class:`~hybridsync.errors.CorruptionError` for a malformed length or
    one over :data:`MAX_RECORD`; ``lenient``: stops there instead."""
    out: list[bytes] = []
    pos = 0
    end = len(data)
    while pos < end:
        n = shift = 0
        i = pos
        while True:
            if i >= end:
                return out, pos  # torn length
            b = data[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
            if shift > 28:
                if lenient:
                    return out, pos
                raise CorruptionError(f"{where}: a record length at byte {pos} is malformed")
        if n > MAX_RECORD:
            if lenient:
                return out, pos
            raise CorruptionError(f"{where}: a record at byte {pos} claims {n} bytes")
        if i + n > end:
            return out, pos  # torn body
        out.append(data[i : i + n])
        pos = i + n
    return out, pos


class Segments:
    """The entry records of one log (see the module documentation)."""

    def __init__(self, folder: Path | None, *, roll_entries: int = 16384) -> None:
        self.folder = folder
        self.roll_entries = roll_entries
        self._mem: dict[int, bytearray] = {}
        self._fd: int | None = None
        self._current = 0  # first seq of the segment appended to
        self._count = 0  # entries in it

    # -- files

    def _name(self, first: int) -> str:
        return f"{_PREFIX}{first:020d}{_SUFFIX}"

    def firsts(self) -> list[int]:
        """The first position of every segment, in order."""
        if self.folder is None:
            return sorted(self._mem)
        out = []
        try:
            names = os.listdir(self.folder)
        except OSError as exc:
            raise StorageError(f"cannot list the audit log {self.folder}: {exc}") from None
        for name in names:
            if name.startswith(_PREFIX) and name.endswith(_SUFFIX):
                digits = name[len(_PREFIX) : -len(_SUFFIX)]
                if digits.isdigit():
                    out.append(int(digits))
        return sorted(out)

    def read(self, first: int) -> bytes:
        if self.folder is None:
            return bytes(self._mem[first])
        try:
            return (self.folder / self._name(first)).read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read the audit log {self.folder}: {exc}") from None

    def open(self) -> list[bytes]:
        """Repair a torn last record (a crash in the middle of a write) and
        return the last segment's records."""
        firsts = self.firsts()
        if not firsts:
            return []
        last = firsts[-1]
        data = self.read(last)
        records, good = parse_records(data, str(self.folder))
        if good < len(data) and self.folder is not None:
            with open(self.folder / self._name(last), "r+b") as fh:
                fh.truncate(good)
                os.fsync(fh.fileno())
        self._current, self._count = last, len(records)
        return records

    def all_records(self) -> Iterator[tuple[int, list[bytes]]]:
        """(first position, records) of every segment, in order."""
        for first in self.firsts():
            yield first, parse_records(self.read(first), str(self.folder))[0]

    def raw(self) -> tuple[int, bytes]:
        """The first position kept and every record, concatenated."""
        firsts = self.firsts()
        if not firsts:
            return 0, b""
        return firsts[0], b"".join(self.read(f) for f in firsts)

    # -- writing

    def append(self, first_seq: int, bodies: list[bytes]) -> None:
        """Append consecutive entries starting at ``first_seq``."""
        if bodies:
            self.append_records(first_seq, encode_records(bodies), len(bodies))

    def append_records(self, first_seq: int, data: bytes, count: int) -> None:
        """Append ``count`` consecutive entries, already encoded as records,
        starting at ``first_seq``."""
        if self._count == 0 and self._current != first_seq:
            self._start(first_seq)
        if self.folder is None:
            self._mem.setdefault(self._current, bytearray()).extend(data)
        else:
            if self._fd is None:
                self._fd = self._openfd(self._current)
            try:
                done = os.write(self._fd, data)
                while done < len(data):
                    done += os.write(self._fd, data[done:])
            except OSError as exc:
                raise StorageError(f"cannot write the audit log {self.folder}: {exc}") from None
        self._count += count

    def _openfd(self, first: int) -> int:
        assert self.folder is not None
        try:
            return os.open(
                self.folder / self._name(first), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
            )
        except OSError as exc:
            raise StorageError(f"cannot write the audit log {self.folder}: {exc}") from None

    def _start(self, first: int) -> None:
        self.close()
        self._current, self._count = first, 0
        if self.folder is None:
            self._mem[first] = bytearray()

    def roll(self, next_seq: int) -> None:
        """After a signed head: start a new segment at ``next_seq`` if the
        current one is full."""
        if self._count >= self.roll_entries:
            self._start(next_seq)

    def sync(self) -> None:
        """Make what was appended survive power loss."""
        if self._fd is not None:
            os.fsync(self._fd)

    def prune(self, upto: int) -> None:
        """Remove the segments whose entries are all at or below ``upto``
        (a segment ends where the next one starts)."""
        firsts = self.firsts()
        for first, nxt in itertools.pairwise(firsts):
            if nxt - 1 > upto:
                break
            if self.folder is None:
                del self._mem[first]
            else:
                try:
                    (self.folder / self._name(first)).unlink()
                except OSError as exc:
                    raise StorageError(f"cannot prune the audit log: {exc}") from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
