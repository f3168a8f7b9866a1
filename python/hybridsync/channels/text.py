"""Text kernels: the diff-match-patch family, implemented in the Rust core.

All indices and lengths are Unicode code points (Python ``str`` semantics),
astral characters included: a character is never split.

- :func:`diff` -- Myers diff with prefix/suffix trimming, half-match, line
  mode and semantic/efficiency cleanups, bounded by ``timeout`` seconds
  (``0`` means no limit).
- :func:`match` -- Bitap fuzzy search of ``pattern`` near ``loc``.
- :func:`make_patch` / :func:`apply_patch` -- hunks with context, applied
  fuzzily; ``apply_patch`` returns the new text and one success flag per hunk.
- :func:`merge3` -- conflict-free three-way merge of two edited copies.
- :class:`Patch` -- ``to_bytes``/``from_bytes`` (compact binary form, strict
  decoding) and ``to_text``/``from_text`` (the standard diff-match-patch
  patch text).

Errors are raised from :mod:`hybridsync.errors`.
"""

from __future__ import annotations

import difflib

from hybridsync._core import (
    DELTA_FORMAT_VERSION,
    DIFF_DELETE,
    DIFF_EQUAL,
    DIFF_INSERT,
    PATCH_FORMAT_VERSION,
    Delta,
    Hunk,
    Patch,
    apply_patch,
    diff,
    make_delta,
    make_patch,
    match,
    patch_from_diffs,
)

__all__ = [
    "DELTA_FORMAT_VERSION",
    "DIFF_DELETE",
    "DIFF_EQUAL",
    "DIFF_INSERT",
    "PATCH_FORMAT_VERSION",
    "Delta",
    "Hunk",
    "Patch",
    "apply_patch",
    "common_lines",
    "diff",
    "make_delta",
    "make_patch",
    "match",
    "merge3",
    "patch_from_diffs",
]


def common_lines(a: str, b: str) -> str:
    """The lines ``a`` and ``b`` share, in order (a longest matching
    subsequence of whole lines, line endings included): a stand-in common
    ancestor for two copies of a document that met without a shared history,
    so that :func:`merge3` keeps what they share once and every other line
    of both."""
    la, lb = a.splitlines(keepends=True), b.splitlines(keepends=True)
    matcher = difflib.SequenceMatcher(None, la, lb, autojunk=False)
    return "".join("".join(la[m.a : m.a + m.size]) for m in matcher.get_matching_blocks() if m.size)


def merge3(base: str, theirs: str, ours: str) -> str:
    """Three-way merge of two texts that both derive from ``base``.

    Character-level and conflict-free: every deletion made on either side is
    applied and every insertion from either side is kept; where both sides
    insert at the same place, ``theirs`` comes first. Unlike a fuzzy patch,
    a change on one side never overwrites text the other side edited, so
    concurrent edits to neighbouring text are all preserved.
    """
    if ours == base or theirs == ours:
        return theirs
    if theirs == base:
        return ours
    t_ins, t_del = _script(diff(base, theirs, timeout=0, cleanup="none"))
    o_ins, o_del = _script(diff(base, ours, timeout=0, cleanup="none"))
    cuts = sorted(
        {0, len(base), *t_ins, *o_ins, *(p for d in (t_del, o_del) for r in d for p in r)}
    )
    deleted = _Deleted(t_del), _Deleted(o_del)
    out: list[str] = []
    for a, b in zip(cuts, [*cuts[1:], len(base)], strict=True):
        out.append(t_ins.get(a, ""))
        out.append(o_ins.get(a, ""))
        if a < b and not (deleted[0].covers(a) or deleted[1].covers(a)):
            out.append(base[a:b])
    return "".join(out)


def _script(diffs: list[tuple[int, str]]) -> tuple[dict[int, str], list[tuple[int, int]]]:
    """Insertions by base position and deleted base ranges of a diff."""
    inserts: dict[int, str] = {}
    deletes: list[tuple[int, int]] = []
    pos = 0
    for op, chunk in diffs:
        if op == DIFF_INSERT:
            inserts[pos] = inserts.get(pos, "") + chunk
        else:
            if op == DIFF_DELETE:
                deletes.append((pos, pos + len(chunk)))
            pos += len(chunk)
    return inserts, deletes


class _Deleted:
    """Membership of increasing positions in sorted, disjoint ranges."""

    __slots__ = ("i", "ranges")

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self.ranges = ranges
        self.i = 0

    def covers(self, pos: int) -> bool:
        while self.i < len(self.ranges) and self.ranges[self.i][1] <= pos:
            self.i += 1
        return self.i < len(self.ranges) and self.ranges[self.i][0] <= pos
