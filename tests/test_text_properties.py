"""Properties of ``hybridsync.text`` that need no reference: diffs rebuild both
inputs, patches carry consistent hunks and turn their source into their target,
with every option combination and with the default (1 second) timeout."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from hybridsync import text as T
from textcases import (
    POOL,
    assert_applies,
    assert_consistent_hunks,
    assert_valid_diff,
    examples,
    random_mutation,
    text_pairs,
    texts,
)


@settings(max_examples=examples(500), deadline=None)
@given(
    pair=text_pairs(),
    timeout=st.sampled_from([0.0, 0.5, 1.0, 10.0]),
    cleanup=st.sampled_from(["semantic", "efficiency", "none"]),
    edit_cost=st.integers(0, 12),
    checklines=st.booleans(),
)
def test_diff_rebuilds_both_texts(
    pair: tuple[str, str], timeout: float, cleanup: str, edit_cost: int, checklines: bool
) -> None:
    a, b = pair
    diffs = T.diff(
        a,
        b,
        timeout=timeout,
        cleanup=cleanup,  # type: ignore[arg-type]
        edit_cost=edit_cost,
        checklines=checklines,
    )
    # Not asserted: non-empty segments. Like the reference's line mode, the
    # kernel may leave an empty insertion or deletion behind.
    assert_valid_diff(diffs, a, b)


@settings(max_examples=examples(200), deadline=None)
@given(a=texts())
def test_diff_of_equal_and_empty_texts(a: str) -> None:
    assert T.diff(a, a) == ([(T.DIFF_EQUAL, a)] if a else [])
    assert T.diff("", a) == ([(T.DIFF_INSERT, a)] if a else [])
    assert T.diff(a, "") == ([(T.DIFF_DELETE, a)] if a else [])
    assert len(T.make_patch(a, a)) == 0


@settings(max_examples=examples(500), deadline=None)
@given(pair=text_pairs(), margin=st.integers(1, 15), edit_cost=st.integers(0, 8))
def test_make_patch_round_trip(pair: tuple[str, str], margin: int, edit_cost: int) -> None:
    a, b = pair
    patch = T.make_patch(a, b, margin=margin, edit_cost=edit_cost)
    assert_consistent_hunks(patch)
    assert_applies(patch, a, b, margin=margin)
    assert len(patch) == len(patch.hunks)
    assert (len(patch) == 0) == (a == b)


@settings(max_examples=examples(300), deadline=None)
@given(pair=text_pairs(), cleanup=st.sampled_from(["semantic", "efficiency", "none"]))
def test_patch_from_diffs_round_trip(pair: tuple[str, str], cleanup: str) -> None:
    a, b = pair
    diffs = T.diff(a, b, cleanup=cleanup)  # type: ignore[arg-type]
    patch = T.patch_from_diffs(a, diffs)
    assert_consistent_hunks(patch)
    assert_applies(patch, a, b)


@settings(max_examples=examples(100), deadline=None)
@given(a=texts())
def test_empty_patch_changes_nothing(a: str) -> None:
    empty = T.make_patch("same", "same")
    assert len(empty) == 0 and empty.hunks == []
    assert T.apply_patch(empty, a) == (a, [])


def test_large_texts_round_trip() -> None:
    """Texts of 20-200 KB (too slow for the reference) with scattered edits."""
    rng = random.Random("large")
    for size in (20_000, 60_000, 200_000):
        lines = []
        while sum(map(len, lines)) < size:
            lines.append("".join(rng.choice(POOL) for _ in range(rng.randint(0, 70))) + "\n")
        a = "".join(lines)
        b = random_mutation(rng, a, max_edits=40)
        diffs = T.diff(a, b)
        assert_valid_diff(diffs, a, b)
        patch = T.make_patch(a, b)
        assert_consistent_hunks(patch)
        assert_applies(patch, a, b)


def test_timeout_bounds_the_diff_and_keeps_it_valid() -> None:
    """Two unrelated 100,000-character texts: the exact diff would take far
    longer than the limit (minutes: the first middle snake alone is some
    10^10 steps); the result is coarser but still correct.

    No clock decides the result: however fast or slow the machine, the
    deadline fires long before the first bisection completes, which leaves
    exactly one deletion and one insertion; a diff that ignored the
    deadline would not return for minutes and would be far finer."""
    rng = random.Random("timeout")
    a = "".join(rng.choice("abcdefghij\n") for _ in range(100_000))
    b = "".join(rng.choice("abcdefghij\n") for _ in range(100_000))
    for timeout in (0.05, 0.2):
        diffs = T.diff(a, b, timeout=timeout, checklines=False)
        assert_valid_diff(diffs, a, b)
        assert diffs == [(T.DIFF_DELETE, a), (T.DIFF_INSERT, b)]
