"""The audit log's entries: append-only segment files of length-prefixed
entry bodies.

A segment ``seg-<first seq, 20 digits>.log`` holds consecutive entries, each
as a varint byte length then the body (the buffer
:func:`hybridsync._core.audit_verify_chain` reads). The segment being written
is mapped into memory and grown in steps of :data:`GROW` bytes of zeros
(allocated on the disk first, so a full disk is a StorageError, not a
SIGBUS): appending a commit's records is a copy into the page cache, no
system call, and a process crash cannot lose it (the kernel holds the
pages); ``sync`` makes it survive power loss too. A record length of zero ends a segment
(a body is never empty): what follows it is the unused room, or a write the
process did not finish, since a batch's first length byte is written last.
Closing cuts the file to its records. (That order covers a crash of the
writing process; a reader in another process reading a live segment on a
CPU that reorders stores may see a batch's first byte before the rest for a
moment: such a record fails verification as malformed until the commit
ends.) A new segment starts after a signed head once the
current one holds ``roll_entries`` entries, so that whole segments can be
pruned up to a signed head (the checkpoint). In memory (no folder) the
segments are byte strings.
"""

from __future__ import annotations

import errno
import itertools
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

from hybridsync.errors import CorruptionError, StorageError

__all__ = ["Segments", "encode_records", "parse_records"]

_PREFIX, _SUFFIX = "seg-", ".log"
#: The longest entry record accepted when reading (an entry is far smaller).
MAX_RECORD = 1 << 20
#: A segment file being written grows by this many bytes at a time.
GROW = 1 << 20


def _allocate(fd: int, start: int, length: int) -> None:
    """Give the file disk blocks (of zeros) for ``start .. start + length``, so
    that copying into the mapped file never needs room the disk lacks: a full
    disk fails here, as an OSError, not later as a SIGBUS in the middle of a
    copy."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is not None:
        try:
            fallocate(fd, start, length)
            return
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
    zeros = memoryview(bytes(length))
    done = 0
    while done < length:
        done += os.pwrite(fd, zeros[done:], start + done)


def _length(data: bytes, pos: int) -> tuple[int, int]:
    """The varint record length at ``pos`` and where its body starts; ``-1``
    for a length cut off by the end of ``data``, ``-2`` for one longer than
    a record can be (over 4 bytes)."""
    n = shift = 0
    i, end = pos, len(data)
    while True:
        if i >= end:
            return -1, i
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i
        if shift > 28:
            return -2, i


def records_end(data: bytes) -> int:
    """Where the records of a segment file end: at a zero record length
    (the unused room of a segment being written, or an unfinished write), else
    at the end of ``data`` (a malformed or torn record is left to
    :func:`parse_records`)."""
    pos, end = 0, len(data)
    while pos < end:
        if data[pos] == 0:
            return pos
        n, i = _length(data, pos)
        if n < 0:
            return end
        pos = i + n
    return end


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
        n, i = _length(data, pos)
        if n == -1:
            return out, pos  # torn length
        if n == -2:
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
        self._map: mmap.mmap | None = None
        self._end = 0  # where the records of the mapped segment end
        self._empty_after: list[int] = []  # empty segments after the current one
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
        """A segment's records (without the room after them)."""
        if self.folder is None:
            return bytes(self._mem[first])
        data = self._read_file(first)
        return data[: records_end(data)]

    def _read_file(self, first: int) -> bytes:
        assert self.folder is not None
        try:
            return (self.folder / self._name(first)).read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read the audit log {self.folder}: {exc}") from None

    def open(self) -> tuple[int, list[bytes]]:
        """The first position and the records of the last segment that holds
        any (segments after it hold none: created, then a crash or a full disk
        before their first record), changing nothing yet: :meth:`repair`
        then cuts what follows the records kept."""
        firsts = self.firsts()
        self._empty_after = []
        while firsts:
            last = firsts[-1]
            data = self._read_file(last) if self.folder is not None else self.read(last)
            # Lenient: what follows a malformed length is the caller's to judge
            # (cut after the signed head, refused below it).
            records, _ = parse_records(data[: records_end(data)], str(self.folder), lenient=True)
            if records or len(firsts) == 1:
                self._current, self._count = last, len(records)
                return last, records
            self._empty_after.append(firsts.pop())
        return 0, []

    def repair(self, keep: int) -> None:
        """Cut the current segment to its first ``keep`` records (a torn or
        unfinished write after them, the room of a segment being written)
        and remove the empty segments after it (see :meth:`open`)."""
        if self.folder is None:
            return
        try:
            for first in self._empty_after:
                (self.folder / self._name(first)).unlink(missing_ok=True)
            self._empty_after = []
            path = self.folder / self._name(self._current)
            if not path.exists():
                return
            data = self._read_file(self._current)
            records, _ = parse_records(data[: records_end(data)], str(self.folder), lenient=True)
            good = len(encode_records(records[:keep]))
            if good < len(data):
                with open(path, "r+b") as fh:
                    fh.truncate(good)
                    os.fsync(fh.fileno())
            self._count = min(keep, len(records))
        except OSError as exc:
            raise StorageError(f"cannot repair the audit log {self.folder}: {exc}") from None

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
            self._count += count
            return
        n = len(data)
        if not n:
            return
        if self._fd is None:
            self._open_current()
        mm = self._map
        pos = self._end
        if mm is None or pos + n > len(mm):
            mm = self._grow(pos + n)
        # The batch's first byte (its first record's length) goes in last:
        # until it does, the zero there ends the segment where the batch
        # starts, so a process killed in the middle of the copy leaves no
        # torn record that reads as whole.
        mm[pos + 1 : pos + n] = memoryview(data)[1:]
        mm[pos] = data[0]
        self._end = pos + n
        self._count += count

    def _open_current(self) -> None:
        """Open the current segment for writing, after its records (the
        file's end, once :meth:`repair` or :meth:`close` cut it; else where
        the room after them starts)."""
        assert self.folder is not None
        try:
            fd = os.open(self.folder / self._name(self._current), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot write the audit log {self.folder}: {exc}") from None
        try:
            size = os.fstat(fd).st_size
            # Normally the file is its records (cut when closed or repaired);
            # after a close that could not cut it, they end at the room.
            end = size if size == 0 else records_end(os.pread(fd, size, 0))
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot write the audit log {self.folder}: {exc}") from None
        self._fd = fd
        self._end = end

    def _grow(self, need: int) -> mmap.mmap:
        """Map the current segment (open) with room for ``need`` bytes."""
        assert self._fd is not None
        try:
            if self._map is not None:
                self._map.close()
                self._map = None
            size = (need // GROW + 1) * GROW
            have = os.fstat(self._fd).st_size
            if size > have:
                _allocate(self._fd, have, size - have)
            self._map = mmap.mmap(self._fd, size)
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot write the audit log {self.folder}: {exc}") from None
        return self._map

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
        try:
            if self._map is not None:
                self._map.flush()
            if self._fd is not None:
                os.fsync(self._fd)
        except OSError as exc:
            raise StorageError(f"cannot sync the audit log {self.folder}: {exc}") from None

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
        """Stop writing the current segment: its file is cut to its records."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self._map is not None:
                self._map.close()
                self._map = None
            os.ftruncate(fd, self._end)
        except OSError as exc:
            raise StorageError(f"cannot close the audit log {self.folder}: {exc}") from None
        finally:
            os.close(fd)
