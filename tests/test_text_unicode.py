"""Code point semantics: every index and length counts Unicode code points
(Python ``str`` indices), astral characters such as emoji included, and no
character is ever split (not into UTF-16 surrogates, not into UTF-8 bytes)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridsync import text as T
from textcases import (
    REF,
    assert_applies,
    assert_consistent_hunks,
    assert_valid_diff,
    examples,
    hunks_of,
    joined,
    ref_apply,
    ref_diff,
    ref_hunks_of,
    ref_patches_of,
)

#: U+1F600..U+1F60F share their UTF-16 high surrogate (D83D) and their first
#: three UTF-8 bytes (F0 9F 98); U+00E0..U+00EF share their first UTF-8 byte.
#: A kernel that worked on UTF-16 units or UTF-8 bytes would find common
#: prefixes and suffixes inside these characters.
LOOKALIKES = [chr(c) for c in range(0x1F600, 0x1F610)] + [chr(c) for c in range(0xE0, 0xF0)]
lookalike_texts = joined(st.sampled_from([*LOOKALIKES, "a", "\n", " "]), 80)


@pytest.mark.parametrize("cleanup", ["semantic", "efficiency", "none"])
def test_emoji_differing_in_last_unit_are_not_split(cleanup: str) -> None:
    assert T.diff("😀", "😁", timeout=0, cleanup=cleanup) == [  # type: ignore[arg-type]
        (T.DIFF_DELETE, "😀"),
        (T.DIFF_INSERT, "😁"),
    ]
    assert T.diff("a😀b", "a😁b", timeout=0, cleanup=cleanup) == [  # type: ignore[arg-type]
        (T.DIFF_EQUAL, "a"),
        (T.DIFF_DELETE, "😀"),
        (T.DIFF_INSERT, "😁"),
        (T.DIFF_EQUAL, "b"),
    ]
    # Same first UTF-8 byte (C3), different characters.
    assert T.diff("é", "è", timeout=0, cleanup=cleanup) == [  # type: ignore[arg-type]
        (T.DIFF_DELETE, "é"),
        (T.DIFF_INSERT, "è"),
    ]


def test_hunk_offsets_count_code_points() -> None:
    a = "😀" * 5 + "hello world, this is a test"
    b = "😀" * 5 + "hello brave world, this is a test"
    patch = T.make_patch(a, b, timeout=0)
    [hunk] = patch.hunks
    # Context of 4 code points + 2 emoji: the hunk starts 3 code points in.
    assert (hunk.start1, hunk.start2, hunk.length1, hunk.length2) == (3, 3, 16, 22)
    assert hunk.diffs == [
        (T.DIFF_EQUAL, "😀😀hello "),
        (T.DIFF_INSERT, "brave "),
        (T.DIFF_EQUAL, "world, t"),
    ]
    assert patch.to_text() == (
        "@@ -4,16 +4,22 @@\n %F0%9F%98%80%F0%9F%98%80hello \n+brave \n world, t\n"
    )
    assert hunks_of(patch) == ref_hunks_of(REF.patch_make(a, b))


def test_replacing_an_emoji_inside_lines() -> None:
    a = "😀😀😀 first line\nsecond 🎉 line\nthird line\n"
    b = "😀😀😀 first line\nsecond 🎊 line\nthird line\n"
    patch = T.make_patch(a, b, timeout=0)
    assert [(h.start1, h.start2, h.length1, h.length2) for h in patch.hunks] == [(18, 18, 9, 9)]
    assert patch.to_text() == "@@ -19,9 +19,9 @@\n ond \n-%F0%9F%8E%89\n+%F0%9F%8E%8A\n  lin\n"
    # Applied after two more emoji were typed at the start: found 2 code points later.
    assert T.apply_patch(patch, "🙂🙂" + a) == ("🙂🙂" + b, [True])


def test_match_returns_code_point_indices() -> None:
    assert T.match("😀😀x😀😀", "x", 0) == 2
    assert T.match("😀😀😀abc😀😀abd", "abd", 3) == 8
    assert T.match("😀😀😀abc😀😀abd", "😀abd", 9) == 7
    assert T.match("😀", "😁", 0) is None


def test_patch_codecs_keep_astral_characters() -> None:
    a = "🎉 party 𝄞 music \U0010ffff end"
    b = "🎊 party 𝄢 music \U00010000 end"
    patch = T.make_patch(a, b, timeout=0)
    assert T.Patch.from_bytes(patch.to_bytes()) == patch
    assert T.Patch.from_text(patch.to_text()) == patch
    assert_applies(patch, a, b)


@settings(max_examples=examples(300), deadline=None)
@given(a=lookalike_texts, b=lookalike_texts)
def test_lookalike_characters_diff_like_reference(a: str, b: str) -> None:
    for cleanup in ("semantic", "efficiency", "none"):
        ours = T.diff(a, b, timeout=0, cleanup=cleanup)  # type: ignore[arg-type]
        assert_valid_diff(ours, a, b)
        assert ours == ref_diff(a, b, cleanup=cleanup)


@settings(max_examples=examples(300), deadline=None)
@given(a=lookalike_texts, b=lookalike_texts, prefix=lookalike_texts)
def test_lookalike_characters_patch_like_reference(a: str, b: str, prefix: str) -> None:
    patch = T.make_patch(a, b, timeout=0)
    assert hunks_of(patch) == ref_hunks_of(REF.patch_make(a, b))
    assert_consistent_hunks(patch)
    assert_applies(patch, a, b)
    shifted = prefix + a
    assert T.apply_patch(patch, shifted) == ref_apply(ref_patches_of(patch), shifted)


@settings(max_examples=examples(300), deadline=None)
@given(text=lookalike_texts, data=st.data())
def test_lookalike_characters_match_like_reference(text: str, data: st.DataObject) -> None:
    pattern = data.draw(joined(st.sampled_from([*LOOKALIKES, "a"]), 8))
    loc = data.draw(st.integers(0, len(text)))
    expected = REF.match_main(text, pattern, loc)
    assert T.match(text, pattern, loc) == (None if expected == -1 else expected)
