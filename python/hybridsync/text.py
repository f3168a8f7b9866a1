"""Text kernels: the diff-match-patch family, implemented in the Rust core.

All indices and lengths are Unicode code points (Python ``str`` semantics),
astral characters included: a character is never split.

- :func:`diff` -- Myers diff with prefix/suffix trimming, half-match, line
  mode and semantic/efficiency cleanups, bounded by ``timeout`` seconds
  (``0`` means no limit).
- :func:`match` -- Bitap fuzzy search of ``pattern`` near ``loc``.
- :func:`make_patch` / :func:`apply_patch` -- hunks with context, applied
  fuzzily; ``apply_patch`` returns the new text and one success flag per hunk.
- :class:`Patch` -- ``to_bytes``/``from_bytes`` (compact binary form, strict
  decoding) and ``to_text``/``from_text`` (the standard diff-match-patch
  patch text).

Errors are raised from :mod:`hybridsync.errors`.
"""

from __future__ import annotations

from hybridsync._core import (
    DIFF_DELETE,
    DIFF_EQUAL,
    DIFF_INSERT,
    PATCH_FORMAT_VERSION,
    Hunk,
    Patch,
    apply_patch,
    diff,
    make_patch,
    match,
    patch_from_diffs,
)

__all__ = [
    "DIFF_DELETE",
    "DIFF_EQUAL",
    "DIFF_INSERT",
    "PATCH_FORMAT_VERSION",
    "Hunk",
    "Patch",
    "apply_patch",
    "diff",
    "make_patch",
    "match",
    "patch_from_diffs",
]
