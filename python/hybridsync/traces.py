"""Real editing traces (keystroke histories) for demos, tests and benchmarks.

The traces come from the public ``josephg/editing-traces`` collection
(CC BY 4.0, Joseph Gentle and contributors). Each is a gzipped JSON file::

    {"startContent": "...", "endContent": "...",
     "txns": [{"time": "...", "patches": [[pos, num_deleted, "inserted"], ...]}]}

Positions and lengths count Unicode code points. The folder is taken from the
``HYBRIDSYNC_TRACES`` environment variable, else ``../shared/data/editing-traces``
relative to the working directory.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridsync._json import loads as loads_json
from hybridsync.errors import DecodeError, InvalidArgumentError, LimitExceededError

__all__ = ["Trace", "load_trace", "trace_names", "traces_dir"]

#: One splice: (position, number of code points deleted, inserted text).
Splice = tuple[int, int, str]


def traces_dir() -> Path:
    """The folder holding the ``*.json.gz`` traces."""
    return Path(os.environ.get("HYBRIDSYNC_TRACES", "../shared/data/editing-traces"))


def trace_names() -> list[str]:
    """Names of the traces found in :func:`traces_dir` (``seph-blog1``, ...)."""
    folder = traces_dir()
    return sorted(p.name[: -len(".json.gz")] for p in folder.glob("*.json.gz"))


@dataclass(frozen=True)
class Trace:
    """A loaded editing trace: start and end content and its transactions."""

    name: str
    start: str
    end: str
    txns: tuple[tuple[Splice, ...], ...]

    @property
    def splices(self) -> int:
        """Total number of splices over all transactions."""
        return sum(len(t) for t in self.txns)

    def replay(self, upto: int | None = None) -> str:
        """The document after the first ``upto`` transactions (all by default)."""
        text = self.start
        for txn in self.txns[: len(self.txns) if upto is None else upto]:
            text = apply_splices(text, txn)
        return text

    def snapshots(self, every: int) -> Iterator[tuple[int, str]]:
        """Yield ``(txn_index, text)`` after every ``every`` transactions and at the end."""
        if every <= 0:
            raise InvalidArgumentError(f"every must be positive, got {every}")
        text = self.start
        for i, txn in enumerate(self.txns, 1):
            text = apply_splices(text, txn)
            if i % every == 0 or i == len(self.txns):
                yield i, text


def apply_splices(text: str, splices: tuple[Splice, ...]) -> str:
    """Apply splices in order to ``text`` (positions in code points)."""
    for pos, deleted, inserted in splices:
        if pos < 0 or deleted < 0 or pos + deleted > len(text):
            raise InvalidArgumentError(
                f"splice ({pos}, {deleted}) out of range for a text of {len(text)} code points"
            )
        text = text[:pos] + inserted + text[pos + deleted :]
    return text


#: Trace JSON is an object of arrays of objects of arrays of arrays.
_MAX_DEPTH = 8
#: Decompressed bytes allowed per compressed byte (editing traces compress
#: about 10:1), plus a floor for small files: a damaged or hostile file
#: cannot expand into more memory than its size justifies.
_MAX_RATIO = 100
_MIN_LIMIT = 1 << 20


def _read_gzip(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        limit = _MIN_LIMIT + _MAX_RATIO * size
        with gzip.open(path, "rb") as fh:
            raw = fh.read(limit + 1)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DecodeError(f"editing trace {path}: not a readable gzip file: {exc}") from None
    if len(raw) > limit:
        raise LimitExceededError(
            f"editing trace {path}: decompresses to more than {limit} bytes "
            f"({_MAX_RATIO}x its {size} compressed bytes): refusing it"
        )
    return raw


def _uint(x: object) -> bool:
    return type(x) is int and x >= 0


def _parse(name: str, raw: Any, where: str) -> Trace:
    if not isinstance(raw, dict):
        raise DecodeError(f"{where}: the trace is not a JSON object")
    start, end, txns = raw.get("startContent"), raw.get("endContent"), raw.get("txns")
    if not isinstance(start, str) or not isinstance(end, str):
        raise DecodeError(f"{where}: startContent and endContent must be strings")
    if not isinstance(txns, list):
        raise DecodeError(f"{where}: txns must be an array")
    out = []
    for i, txn in enumerate(txns):
        patches = txn.get("patches") if isinstance(txn, dict) else None
        if not isinstance(patches, list):
            raise DecodeError(f"{where}: transaction {i} has no patches array")
        splices = []
        for p in patches:
            if not (
                isinstance(p, list)
                and len(p) == 3
                and _uint(p[0])
                and _uint(p[1])
                and isinstance(p[2], str)
            ):
                raise DecodeError(
                    f"{where}: transaction {i} holds {p!r:.80}, not [position, deleted, text]"
                )
            splices.append((p[0], p[1], p[2]))
        out.append(tuple(splices))
    return Trace(name=name, start=start, end=end, txns=tuple(out))


def load_trace(name: str) -> Trace:
    """Load ``<name>.json.gz`` from :func:`traces_dir`.

    A missing file raises FileNotFoundError; a damaged one (not gzip, not
    UTF-8 JSON, nested too deeply, of the wrong shape, or decompressing to
    far more than its size justifies) a :class:`~hybridsync.errors.DecodeError`
    or :class:`~hybridsync.errors.LimitExceededError`.
    """
    path = traces_dir() / f"{name}.json.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"editing trace {name!r} not found at {path}; set HYBRIDSYNC_TRACES to the folder "
            "holding the editing-traces *.json.gz files"
        )
    where = f"editing trace {path}"
    raw = loads_json(_read_gzip(path), where, max_depth=_MAX_DEPTH)
    return _parse(name, raw, where)
