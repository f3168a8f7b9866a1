"""JSON from files a replica did not write: parsed with bounded nesting.

``json.loads`` recurses once per nesting level, so a header of a few
kilobytes of ``[[[[...`` raises ``RecursionError`` (or exhausts the stack of a
C parser such as mlx's). :func:`loads` measures the nesting depth first, in
time and memory linear in the input, and refuses anything deeper than the
caller's limit with a :class:`~hybridsync.errors.DecodeError`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from hybridsync.errors import DecodeError

__all__ = ["depth", "loads"]

_CHUNK = 1 << 16
_STEP = np.zeros(256, np.int64)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1
_QUOTE, _BACKSLASH = ord('"'), ord("\\")


def depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in the JSON text ``raw``
    (0 for a scalar; brackets inside strings do not count). Linear time,
    constant extra memory (it works in chunks of 64 KiB).

    A quote preceded by an odd run of backslashes is escaped; what lies
    between unescaped quotes is a string. On invalid JSON the count may
    differ from what a parser would see, but only after the first error,
    where a parser stops."""
    data = np.frombuffer(raw, np.uint8)
    level = deepest = 0
    inside = 0  # 1 while in a string at the end of the previous chunk
    run = 0  # backslashes ending the previous chunk
    for start in range(0, data.size, _CHUNK):
        a = data[start : start + _CHUNK]
        pos = np.arange(a.size)
        # Index of the last byte that is not a backslash, at or before each
        # position (the previous chunk's run counts as backslashes before 0).
        last = np.maximum.accumulate(np.where(a == _BACKSLASH, -1 - run, pos))
        before = np.empty(a.size, np.int64)  # backslashes right before each byte
        before[0] = run
        before[1:] = pos[:-1] - last[:-1]
        quotes = np.cumsum((a == _QUOTE) & (before % 2 == 0)) + inside
        running = np.cumsum(_STEP[a] * (quotes % 2 == 0)) + level
        deepest = max(deepest, int(running.max()))
        level = int(running[-1])
        inside = int(quotes[-1] % 2)
        run = int(a.size - 1 - last[-1])
    return deepest


def loads(raw: bytes, what: str, *, max_depth: int) -> Any:
    """``json.loads(raw)`` for untrusted bytes: nesting deeper than
    ``max_depth``, invalid UTF-8 and malformed JSON raise DecodeError
    naming ``what``."""
    d = depth(raw)
    if d > max_depth:
        raise DecodeError(f"{what}: JSON nested {d} levels deep; at most {max_depth} expected")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{what}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, over-long integers
        raise DecodeError(f"{what}: malformed JSON: {exc}") from None
