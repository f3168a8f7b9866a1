"""Shared helpers of the text-kernel tests: the reference implementation, case
generators (Hypothesis strategies and a seeded generator for the editing-trace
mutations) and comparisons.

The reference is the pure-Python ``diff-match-patch`` package (Google's
diff-match-patch). Its indices are Python ``str`` indices, i.e. Unicode code
points, which is exactly the semantics of ``hybridsync.text``.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Sequence
from typing import Any

from diff_match_patch import diff_match_patch
from hypothesis import strategies as st

from hybridsync import text as T
from hybridsync.traces import Trace, load_trace

Diffs = list[tuple[int, str]]
HunkTuple = tuple[int, int, int, int, tuple[tuple[int, str], ...]]

#: Multiplies every generated-case budget (``HYBRIDSYNC_TEST_SCALE=10`` for a
#: long exploratory run; the default 1 keeps the suite to about a minute).
SCALE = float(os.environ.get("HYBRIDSYNC_TEST_SCALE", "1"))


def examples(n: int) -> int:
    """A case budget, scaled by ``HYBRIDSYNC_TEST_SCALE``."""
    return max(1, round(n * SCALE))


# --------------------------------------------------------------------------
# The reference
# --------------------------------------------------------------------------


def reference(
    *,
    timeout: float = 0.0,
    edit_cost: int = 4,
    margin: int = 4,
    match_threshold: float = 0.5,
    match_distance: int = 1000,
    delete_threshold: float = 0.5,
) -> Any:
    """A reference ``diff_match_patch`` object. The timeout defaults to 0 (no
    deadline): only then is the reference deterministic, because its deadlines
    are wall-clock times and it skips the (inexact) half-match speed-up."""
    dmp = diff_match_patch()
    dmp.Diff_Timeout = timeout
    dmp.Diff_EditCost = edit_cost
    dmp.Patch_Margin = margin
    dmp.Match_Threshold = match_threshold
    dmp.Match_Distance = match_distance
    dmp.Patch_DeleteThreshold = delete_threshold
    return dmp


#: Shared reference with the library's defaults and no deadline.
REF = reference()


def ref_diff(
    a: str,
    b: str,
    *,
    cleanup: str = "semantic",
    checklines: bool = True,
    edit_cost: int = 4,
) -> Diffs:
    """The reference result of ``hybridsync.text.diff(a, b, timeout=0, ...)``."""
    dmp = REF if edit_cost == 4 else reference(edit_cost=edit_cost)
    diffs = dmp.diff_main(a, b, checklines)
    if cleanup == "semantic":
        dmp.diff_cleanupSemantic(diffs)
    elif cleanup == "efficiency":
        dmp.diff_cleanupEfficiency(diffs)
    else:
        assert cleanup == "none", cleanup
    return [(op, data) for op, data in diffs]


#: Reference for ``apply_patch`` with its default timeout (1 s). Like
#: ``patch_apply`` with ``Diff_Timeout`` > 0, it diffs imperfect matches with
#: the half-match speed-up enabled, which changes where fuzzy hunks land. Any
#: positive timeout enables it; 10 s keeps the reference's deadline out of
#: reach on a slow machine (the diffs involved take milliseconds), so the
#: comparison is deterministic.
APPLY_TIMEOUT = 10.0
REF_APPLY = reference(timeout=APPLY_TIMEOUT)


def ref_apply(
    patches: Sequence[Any], text: str, *, timeout: float = APPLY_TIMEOUT, **options: Any
) -> tuple[str, list[bool]]:
    """The reference ``hybridsync.text.apply_patch(patch, text, **options)``
    (``timeout=0``: the same with ``timeout=0``)."""
    if timeout == APPLY_TIMEOUT and not options:
        dmp = REF_APPLY
    else:
        dmp = reference(timeout=timeout, **options)
    new_text, flags = dmp.patch_apply(list(patches), text)
    return new_text, list(flags)


def ref_patches_of(patch: T.Patch) -> list[Any]:
    """Reference patch objects holding the same hunks as ``patch`` (through the
    standard patch text, so it does not depend on ``make_patch`` agreeing)."""
    return list(REF.patch_fromText(patch.to_text()))


# --------------------------------------------------------------------------
# Comparisons
# --------------------------------------------------------------------------


def hunks_of(patch: T.Patch) -> list[HunkTuple]:
    return [
        (h.start1, h.start2, h.length1, h.length2, tuple((op, data) for op, data in h.diffs))
        for h in patch.hunks
    ]


def ref_hunks_of(patches: Sequence[Any]) -> list[HunkTuple]:
    return [
        (p.start1, p.start2, p.length1, p.length2, tuple((op, data) for op, data in p.diffs))
        for p in patches
    ]


def text1(diffs: Sequence[tuple[int, str]]) -> str:
    """The source text of ``diffs`` (everything but insertions)."""
    return "".join(data for op, data in diffs if op != T.DIFF_INSERT)


def text2(diffs: Sequence[tuple[int, str]]) -> str:
    """The target text of ``diffs`` (everything but deletions)."""
    return "".join(data for op, data in diffs if op != T.DIFF_DELETE)


def assert_valid_diff(diffs: Sequence[tuple[int, str]], a: str, b: str) -> None:
    """``diffs`` is a list of ``(op, str)`` tuples turning ``a`` into ``b``."""
    assert isinstance(diffs, list)
    for item in diffs:
        assert isinstance(item, tuple) and len(item) == 2, item
        op, data = item
        assert op in (T.DIFF_DELETE, T.DIFF_EQUAL, T.DIFF_INSERT), item
        assert isinstance(data, str), item
        assert not any("\ud800" <= ch <= "\udfff" for ch in data), f"split character in {item!r}"
    assert text1(diffs) == a
    assert text2(diffs) == b


def assert_consistent_hunks(patch: T.Patch) -> None:
    """Each hunk's lengths count the code points of its diffs."""
    for h in patch.hunks:
        assert h.length1 == len(text1(h.diffs)), (h.length1, h.diffs)
        assert h.length2 == len(text2(h.diffs)), (h.length2, h.diffs)
        assert h.start1 >= 0 and h.start2 >= 0


def assert_applies(patch: T.Patch, a: str, b: str, **options: Any) -> None:
    """Applying ``patch`` (made from ``a`` to ``b``) to ``a`` gives ``b``, every
    hunk applied. There is one flag per hunk *after* splitting hunks longer than
    the matcher's 32-character window, so there may be more flags than hunks."""
    new_text, flags = T.apply_patch(patch, a, **options)
    assert new_text == b
    assert isinstance(flags, list) and len(flags) >= len(patch)
    assert all(flag is True for flag in flags), flags


def splice(text: str, pos: int, deleted: int, inserted: str) -> str:
    return text[:pos] + inserted + text[pos + deleted :]


# --------------------------------------------------------------------------
# Characters
# --------------------------------------------------------------------------

#: Frequent ASCII: a small alphabet so that texts share substrings and lines.
ASCII = "abcdefgh xyz  \n\n.,;-_()"
#: Non-ASCII characters of the Basic Multilingual Plane (2 and 3 UTF-8 bytes),
#: a combining mark and a no-break space.
BMP = "éüßñÅ中文字한국ЖдЯ€—…\u00a0\u0301\u2028\ufeff\uffff"
#: Astral characters (4 UTF-8 bytes, surrogate pairs in UTF-16). Several share
#: their high surrogate (U+1F600..U+1F64F), so a UTF-16 kernel would find a
#: common prefix inside a character.
ASTRAL = "😀😁😂😃🙂🙃🎉🧪👍🏽𝄞𐍈🀄\U00010000\U0010ffff"
#: Characters with a meaning in the patch text format or in patch_apply
#: (the padding characters \x01..\x04).
SPECIAL = "%+@-#&=?~!*'();/:$, \t\r\x00\x01\x02\x03\x04"

#: Weighted pool: mostly ASCII, then non-ASCII, astral and special characters.
POOL = ASCII * 6 + BMP * 2 + ASTRAL * 2 + SPECIAL
NON_ASCII = BMP + ASTRAL

#: Lines for line-mode texts (diff_main's line mode kicks in above 100 chars).
LINES = (
    "fn main() {\n",
    "    let x = 1;\n",
    '    println!("héllo 😀");\n',
    "}\n",
    "\n",
    "# Title — 中文\n",
    "- item one\n",
    "- item two 🎉\n",
    '<div class="a">\n',
    "</div>\n",
    "    return None\n",
    "𝄞𝄞𝄞\n",
)

# --------------------------------------------------------------------------
# Hypothesis strategies
# --------------------------------------------------------------------------

any_char = st.characters(exclude_categories=("Cs",))
pool_char = st.sampled_from(POOL)


def joined(part: st.SearchStrategy[str], max_parts: int) -> st.SearchStrategy[str]:
    """``0..max_parts`` parts, concatenated; the count is drawn uniformly (plain
    ``st.lists`` stays short most of the time)."""
    return st.integers(0, max_parts).flatmap(
        lambda n: st.lists(part, min_size=n, max_size=n).map("".join)
    )


def texts(max_size: int = 600) -> st.SearchStrategy[str]:
    """Texts mixing ASCII, non-ASCII BMP, astral characters and newlines: short
    ones, longer ones built from chunks and line-structured ones (which take
    diff_main's line mode once they pass 100 characters)."""
    short = st.text(pool_char, max_size=min(max_size, 40))
    wild = st.text(st.one_of(pool_char, any_char), max_size=min(max_size, 40))
    chunked = joined(st.text(pool_char, min_size=4, max_size=30), max(1, max_size // 17))
    line = st.one_of(
        st.sampled_from(LINES), st.text(pool_char, max_size=30).map(lambda s: s + "\n")
    )
    lines = joined(line, max(1, max_size // 15))
    return st.one_of(short, wild, chunked, lines).map(lambda s: s[:max_size])


fragments = st.one_of(
    st.text(pool_char, min_size=1, max_size=24),
    st.sampled_from(LINES),
    st.text(st.sampled_from(NON_ASCII), min_size=1, max_size=6),
    st.text(any_char, min_size=1, max_size=8),
)


@st.composite
def mutations(draw: st.DrawFn, a: str, max_edits: int = 6) -> str:
    """``a`` after a few random inserts, deletes, replacements and copies."""
    s = a
    for _ in range(draw(st.integers(0, max_edits))):
        kind = draw(st.sampled_from(("insert", "delete", "replace", "copy")))
        pos = draw(st.integers(0, len(s)))
        if kind == "insert":
            s = splice(s, pos, 0, draw(fragments))
        elif kind == "copy" and s:
            start = draw(st.integers(0, len(s) - 1))
            chunk = s[start : start + draw(st.integers(1, 40))]
            s = splice(s, pos, 0, chunk)
        else:
            deleted = draw(st.integers(0, min(60, len(s) - pos)))
            inserted = draw(fragments) if kind == "replace" else ""
            s = splice(s, pos, deleted, inserted)
    return s


@st.composite
def text_pairs(draw: st.DrawFn, max_size: int = 600) -> tuple[str, str]:
    """``(a, b)``: mostly ``b`` is ``a`` edited; sometimes two unrelated texts."""
    a = draw(texts(max_size))
    if draw(st.integers(0, 9)) == 0:
        # Unrelated texts: the worst case of the (quadratic) reference, so small.
        return a[:80], draw(texts(80))
    return a, draw(mutations(a))


@st.composite
def patterns(draw: st.DrawFn, text: str, max_size: int = 32) -> str:
    """A match pattern: usually a (possibly edited) piece of ``text``."""
    if text and draw(st.integers(0, 4)) != 0:
        start = draw(st.integers(0, len(text) - 1))
        pattern = text[start : start + draw(st.integers(1, max_size))]
        pattern = draw(mutations(pattern, max_edits=2))
    else:
        pattern = draw(st.text(pool_char, max_size=max_size))
    return pattern[:max_size]


# --------------------------------------------------------------------------
# Seeded generator (editing-trace mutations)
# --------------------------------------------------------------------------


def random_fragment(rng: random.Random, doc: str) -> str:
    """Text to insert: pooled characters (non-ASCII and astral included), a
    piece of the document itself, or a line."""
    kind = rng.randrange(6)
    if kind == 0 and doc:
        start = rng.randrange(len(doc))
        return doc[start : start + rng.randint(1, 80)]
    if kind == 1:
        return rng.choice(LINES)
    if kind == 2:
        return "".join(rng.choice(NON_ASCII) for _ in range(rng.randint(1, 6)))
    return "".join(rng.choice(POOL) for _ in range(rng.randint(1, 30)))


def random_edit(rng: random.Random, s: str, fragment_source: str) -> str:
    """One random insert, delete or replace of ``s``."""
    pos = rng.randint(0, len(s))
    kind = rng.randrange(3)
    deleted = 0 if kind == 0 else min(len(s) - pos, int(rng.expovariate(1 / 12)))
    inserted = "" if kind == 1 else random_fragment(rng, fragment_source)
    return splice(s, pos, deleted, inserted)


def random_mutation(rng: random.Random, s: str, max_edits: int = 6) -> str:
    """``s`` after 1..max_edits random edits (they may happen to cancel out)."""
    out = s
    for _ in range(rng.randint(1, max_edits)):
        out = random_edit(rng, out, s)
    return out


# --------------------------------------------------------------------------
# Editing traces
# --------------------------------------------------------------------------


#: The editing traces the tests rely on (from josephg/editing-traces).
TRACE_NAMES = ("seph-blog1", "rustcode", "sveltecomponent")


class Traces:
    """Loads the editing traces once per session."""

    @functools.cache  # noqa: B019 -- one instance per session
    def get(self, name: str) -> Trace:
        return load_trace(name)

    @functools.cache  # noqa: B019 -- one instance per session
    def snapshots(self, name: str, every: int) -> tuple[tuple[int, str], ...]:
        """``(txn_index, text)`` after every ``every`` transactions, starting
        with ``(0, start)`` and ending with the end content."""
        trace = self.get(name)
        return ((0, trace.start), *trace.snapshots(every))
