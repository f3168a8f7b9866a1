"""Deltas (keep / insert / delete, no context: the edits a link sends) against
the reference: diff-match-patch's own delta form (``diff_toDelta`` /
``diff_fromDelta``, MobWrite's ``=n  +text  -n``)."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from diff_match_patch import diff_match_patch
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridsync.channels.text import DELTA_FORMAT_VERSION, Delta, make_delta
from hybridsync.errors import DecodeError

# Texts mixing one-, two- and four-byte code points (CPython's three storage
# widths), as deltas must count code points in each.
TEXT = st.text(alphabet=st.sampled_from("ab \n\xe9\u4e2d\U0001f600"), max_size=60)
ANY_TEXT = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40)


def utf16(s: str) -> int:
    return len(s.encode("utf-16-le")) // 2


def reference_delta(delta: Delta, source: str) -> str:
    """Our ops in diff-match-patch's delta text, whose counts are UTF-16
    units (ours count code points); a trailing keep is written out."""
    parts = []
    pos = 0
    for op, value in delta.ops:
        if op == 1:
            assert isinstance(value, str)
            parts.append("+" + quote(value, safe=" !~*'();/?:@&=+$,#"))
            continue
        assert isinstance(value, int)
        units = utf16(source[pos : pos + value])
        parts.append(f"={units}" if op == 0 else f"-{units}")
        pos += value
    if pos < len(source):
        parts.append(f"={utf16(source[pos:])}")
    return "\t".join(parts)


@settings(max_examples=500, deadline=None)
@given(TEXT, TEXT)
def test_make_delta_apply_agrees_with_the_reference(a: str, b: str) -> None:
    delta = make_delta(a, b)
    assert delta.apply(a) == b
    assert Delta.from_bytes(delta.to_bytes()) == delta
    assert delta.to_bytes()[0] == DELTA_FORMAT_VERSION
    dmp = diff_match_patch()
    diffs = dmp.diff_fromDelta(a, reference_delta(delta, a))
    assert dmp.diff_text1(diffs) == a and dmp.diff_text2(diffs) == b


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT, ANY_TEXT, ANY_TEXT)
def test_a_delta_fits_only_a_text_it_can_cover(a: str, b: str, other: str) -> None:
    """Applied to another text, a delta either fits (its keeps and deletes
    stay within the text) or returns None; it never raises."""
    delta = make_delta(a, b)
    covered = sum(v for op, v in delta.ops if op != 1 and isinstance(v, int))
    out = delta.apply(other)
    assert (out is None) == (covered > len(other))
    if out is not None:
        inserted = sum(len(v) for op, v in delta.ops if op == 1 and isinstance(v, str))
        deleted = sum(v for op, v in delta.ops if op == 2 and isinstance(v, int))
        assert len(out) == len(other) - deleted + inserted


def test_a_small_insert_is_a_few_bytes() -> None:
    base = "lorem ipsum dolor sit amet " * 40
    delta = make_delta(base, base[:500] + "fifteen chars!!" + base[500:])
    assert delta.ops == [(0, 500), (1, "fifteen chars!!")]
    assert delta.to_bytes() == b"\x02\x02\xd0\x0f\x3d" + b"fifteen chars!!"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x01\x00",  # a patch, not a delta
        b"\x02",
        b"\x02\x01",
        b"\x02\x01\x00",  # an op of length 0
        b"\x02\x01\x03",  # kind 3
        b"\x02\x01\x05",  # insert cut short
        b"\x02\x01\x05\xff",  # insert: not UTF-8
        b"\x02\x00\x00",  # trailing bytes
        b"\x02\x01\x80\x00",  # non-canonical varint
        b"\x02\x01\x80\x80\x80\x80\x80\x80\x80\x40",  # a count above 2**40
        b"\x02\xff\x7f",  # more ops than bytes
    ],
)
def test_malformed_deltas_raise_decode_error(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        Delta.from_bytes(raw)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40))
def test_decoding_random_bytes_raises_only_decode_error(raw: bytes) -> None:
    try:
        delta = Delta.from_bytes(b"\x02" + raw)
    except DecodeError:
        return
    assert Delta.from_bytes(delta.to_bytes()) == delta
    delta.apply("some text")  # fits or not; never raises
