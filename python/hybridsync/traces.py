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
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hybridsync.errors import InvalidArgumentError

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


def load_trace(name: str) -> Trace:
    """Load ``<name>.json.gz`` from :func:`traces_dir`."""
    path = traces_dir() / f"{name}.json.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"editing trace {name!r} not found at {path}; set HYBRIDSYNC_TRACES to the folder "
            "holding the editing-traces *.json.gz files"
        )
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        raw = json.load(fh)
    txns = tuple(
        tuple((int(p[0]), int(p[1]), str(p[2])) for p in txn["patches"]) for txn in raw["txns"]
    )
    return Trace(name=name, start=raw["startContent"], end=raw["endContent"], txns=txns)
