"""Patch codecs: ``to_bytes``/``from_bytes`` (compact, strictly decoded) and
``to_text``/``from_text`` (the standard diff-match-patch patch text).

Decoding input from outside either returns a Patch or raises
``hybridsync.errors.DecodeError``: no other exception, no crash, no hang."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridsync import text as T
from hybridsync.errors import DecodeError, HybridSyncError
from textcases import (
    REF,
    any_char,
    examples,
    hunks_of,
    mutations,
    pool_char,
    ref_hunks_of,
    text_pairs,
)

#: Fuzzing budget. The deadline is a hang guard only: a decode is
#: microseconds, so a minute means a decoder that loops, never a slow machine.
FUZZ = settings(max_examples=examples(500), deadline=timedelta(minutes=1))

#: Characters with a meaning in the patch text format.
PATCH_TEXT_CHARS = "@@ -+,0123456789\n%2AF%0A%25"

EXAMPLES = [
    ("", "x"),
    ("x", ""),
    (
        "The quick brown fox jumps over the lazy dog.",
        "That quick brown fox jumped over a lazy dog.",
    ),
    ("😀 emoji 🎉 and é à ü\n" * 3, "😀 emoji 🎊 and è à ü\n" * 3),
    ("percent % plus + at @@ minus -\n", "percent %25 plus ++ at @ minus --\n"),
    ("a" * 200, "a" * 100 + "b" * 100),
    ("\x00\x01\x02\x03\x04 controls\r\n", "\x00\x01 controls\r\n\t"),
]


def example_patches() -> list[T.Patch]:
    return [T.make_patch(a, b, timeout=0) for a, b in EXAMPLES]


def decode_bytes(data: bytes) -> T.Patch | None:
    """``Patch.from_bytes(data)``, or None on DecodeError. Anything else fails."""
    try:
        patch = T.Patch.from_bytes(data)
    except DecodeError:
        return None
    assert isinstance(patch, T.Patch)
    # Strict decoding accepts canonical encodings only: whatever was accepted
    # is exactly what the patch encodes to.
    assert patch.to_bytes() == data
    return patch


def decode_text(text: str) -> T.Patch | None:
    """``Patch.from_text(text)``, or None on DecodeError. Anything else fails."""
    try:
        patch = T.Patch.from_text(text)
    except DecodeError:
        return None
    assert isinstance(patch, T.Patch)
    assert T.Patch.from_text(patch.to_text()) == patch
    return patch


def apply_survives(patch: T.Patch, text: str) -> None:
    """A decoded patch, however odd its hunks, applies or raises a library
    error; it never crashes the interpreter."""
    try:
        new_text, flags = T.apply_patch(patch, text)
    except HybridSyncError:
        return
    assert isinstance(new_text, str)
    assert isinstance(flags, list) and all(isinstance(f, bool) for f in flags)


# --------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------


@settings(max_examples=examples(500), deadline=None)
@given(pair=text_pairs())
def test_round_trips(pair: tuple[str, str]) -> None:
    a, b = pair
    patch = T.make_patch(a, b, timeout=0)
    data = patch.to_bytes()
    assert isinstance(data, bytes)
    again = T.Patch.from_bytes(data)
    assert again == patch and hash(again) == hash(patch)
    assert hunks_of(again) == hunks_of(patch)
    assert again.to_bytes() == data
    text = patch.to_text()
    assert T.Patch.from_text(text) == patch
    assert T.Patch.from_text(text).to_text() == text


@settings(max_examples=examples(500), deadline=None)
@given(pair=text_pairs())
def test_from_text_reads_reference_text(pair: tuple[str, str]) -> None:
    a, b = pair
    ref_patches = REF.patch_make(a, b)
    ref_text = REF.patch_toText(ref_patches)
    patch = T.Patch.from_text(ref_text)
    assert hunks_of(patch) == ref_hunks_of(ref_patches)
    assert patch.to_text() == ref_text
    assert hunks_of(patch) == ref_hunks_of(REF.patch_fromText(ref_text))


def test_empty_patch() -> None:
    empty = T.make_patch("abc", "abc")
    assert len(empty) == 0
    assert empty.to_text() == ""
    assert T.Patch.from_text("") == empty
    assert T.Patch.from_bytes(empty.to_bytes()) == empty


def test_equality_and_hash() -> None:
    p1 = T.make_patch("hello world", "hello brave world")
    p2 = T.make_patch("hello world", "hello brave world")
    p3 = T.make_patch("hello world", "hello brave new world")
    assert p1 == p2 and hash(p1) == hash(p2)
    assert p1 != p3
    assert p1 != "not a patch" and p1 != None  # noqa: E711
    assert len({p1, p2, p3}) == 2


def test_from_text_accepts_reference_quirks() -> None:
    # Single-length coordinates omit ",1"; empty ranges point before the range.
    patch = T.Patch.from_text("@@ -1 +1 @@\n-a\n+b\n")
    assert hunks_of(patch) == [(0, 0, 1, 1, ((T.DIFF_DELETE, "a"), (T.DIFF_INSERT, "b")))]
    patch = T.Patch.from_text("@@ -0,0 +1,3 @@\n+abc\n")
    assert hunks_of(patch) == [(0, 0, 0, 3, ((T.DIFF_INSERT, "abc"),))]
    # %xx escapes are UTF-8; "+" stays a plus sign (not a space).
    patch = T.Patch.from_text("@@ -1,3 +1,3 @@\n-a+b\n+%F0%9F%98%80%0A%25\n")
    assert patch.hunks[0].diffs == [(T.DIFF_DELETE, "a+b"), (T.DIFF_INSERT, "😀\n%")]


# --------------------------------------------------------------------------
# Strict binary decoding
# --------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_every_truncation_is_rejected(index: int) -> None:
    data = example_patches()[index].to_bytes()
    for end in range(len(data)):
        with pytest.raises(DecodeError):
            T.Patch.from_bytes(data[:end])


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_trailing_bytes_are_rejected(index: int) -> None:
    data = example_patches()[index].to_bytes()
    for extra in (b"\x00", b"\x01", b"\xff", b"\x00" * 8, data, b"garbage"):
        with pytest.raises(DecodeError):
            T.Patch.from_bytes(data + extra)


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_huge_lengths_are_rejected_without_allocating(index: int) -> None:
    """A valid prefix followed by 0xFF bytes (maximal varints, lengths or
    counts) must fail cleanly, not try to allocate or read that much."""
    data = example_patches()[index].to_bytes()
    for end in range(len(data)):
        for filler in (b"\xff" * 16, b"\xff" * 9 + b"\x01", b"\x80" * 10 + b"\x01"):
            decode_bytes(data[:end] + filler)


@settings(max_examples=examples(300), deadline=None)
@given(pair=text_pairs(max_size=120), data=st.data())
def test_truncated_generated_encodings_are_rejected(
    pair: tuple[str, str], data: st.DataObject
) -> None:
    encoded = T.make_patch(*pair, timeout=0).to_bytes()
    end = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(DecodeError):
        T.Patch.from_bytes(encoded[:end])
    extra = data.draw(st.binary(min_size=1, max_size=16))
    with pytest.raises(DecodeError):
        T.Patch.from_bytes(encoded + extra)


@FUZZ
@given(data=st.binary(max_size=512))
def test_random_bytes_decode_or_raise(data: bytes) -> None:
    patch = decode_bytes(data)
    if patch is not None:
        apply_survives(patch, "some text to patch 😀 " * 4)


@st.composite
def mutated_encodings(draw: st.DrawFn) -> bytes:
    encoded = bytearray(draw(st.sampled_from(example_patches())).to_bytes())
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(
            st.sampled_from(("flip", "set", "truncate", "append", "insert", "delete", "tail"))
        )
        pos = draw(st.integers(0, max(0, len(encoded) - 1)))
        if kind == "flip" and encoded:
            encoded[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and encoded:
            encoded[pos] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del encoded[pos:]
        elif kind == "append":
            encoded += draw(st.binary(min_size=1, max_size=8))
        elif kind == "tail":
            encoded[pos:] = draw(st.binary(min_size=1, max_size=24))
        elif kind == "insert":
            encoded[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif encoded:
            del encoded[pos : pos + draw(st.integers(1, 4))]
    return bytes(encoded)


@FUZZ
@given(data=mutated_encodings())
def test_mutated_encodings_decode_or_raise(data: bytes) -> None:
    patch = decode_bytes(data)
    if patch is not None:
        apply_survives(patch, "some text to patch 😀 " * 4)
        apply_survives(patch, "")


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_every_single_bit_flip_decodes_or_raises(index: int) -> None:
    a, _ = EXAMPLES[index]
    data = example_patches()[index].to_bytes()
    for pos in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[pos] ^= 1 << bit
            patch = decode_bytes(bytes(flipped))
            if patch is not None:
                apply_survives(patch, a)


def test_from_bytes_rejects_non_bytes() -> None:
    with pytest.raises(TypeError):
        T.Patch.from_bytes("not bytes")  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Patch text parsing
# --------------------------------------------------------------------------


@FUZZ
@given(text=st.text(st.one_of(any_char, st.sampled_from(PATCH_TEXT_CHARS)), max_size=200))
def test_random_text_decodes_or_raises(text: str) -> None:
    patch = decode_text(text)
    if patch is not None:
        apply_survives(patch, "some text to patch 😀 " * 4)


@st.composite
def mutated_patch_texts(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(example_patches())).to_text()
    return draw(mutations(text, max_edits=3))


@FUZZ
@given(text=mutated_patch_texts())
def test_mutated_patch_texts_decode_or_raise(text: str) -> None:
    patch = decode_text(text)
    if patch is not None:
        apply_survives(patch, "some text to patch 😀 " * 4)
        apply_survives(patch, "")


@FUZZ
@given(
    header=st.tuples(
        st.integers(0, 2**70), st.integers(0, 2**70), st.integers(0, 2**70), st.integers(0, 2**70)
    ),
    body=st.lists(st.tuples(st.sampled_from(" +-"), st.text(pool_char, max_size=10)), max_size=4),
)
def test_extreme_headers_decode_or_raise(
    header: tuple[int, int, int, int], body: list[tuple[str, str]]
) -> None:
    s1, l1, s2, l2 = header
    text = f"@@ -{s1},{l1} +{s2},{l2} @@\n" + "".join(f"{sign}{data}\n" for sign, data in body)
    patch = decode_text(text)
    if patch is not None:
        apply_survives(patch, "some text to patch 😀 " * 4)


@pytest.mark.parametrize(
    "text",
    [
        "garbage",
        "@@ -1,1 +1,1 @@\n*bad mode\n",
        "@@ -a,1 +1,1 @@\n",
        "@@ -1,1 +1,1\n",
        "@@ -1,1 +1,1 @@ trailing\n",
        "@@ -18446744073709551616,1 +1,1 @@\n",
        "@@ -1,18446744073709551616 +1,1 @@\n",
        "@@ -99999999999999999999999999,3 +1,3 @@\n-abc\n",
    ],
)
def test_malformed_patch_text_raises_decode_error(text: str) -> None:
    """Each of these is rejected by the reference too (or would overflow)."""
    try:
        REF.patch_fromText(text)
    except ValueError:
        pass
    else:
        # The reference takes any integer; ours must at least not overflow.
        decode_text(text)
        return
    with pytest.raises(DecodeError):
        T.Patch.from_text(text)
