"""Differential tests of ``hybridsync.text`` against the reference
diff-match-patch (the pure-Python ``diff-match-patch`` package).

Diffs and patches are compared without a deadline (``timeout=0`` here,
``Diff_Timeout = 0`` there): a deadline is a wall-clock time, so only then is
diff-match-patch deterministic. ``apply_patch`` is compared both ways: with
``timeout=0``, and with its default timeout against a reference whose timeout
is positive but never reached (see ``textcases.APPLY_TIMEOUT``), as in the
half-match test. Generated cases (the tests that decide; the
Unicode tests in test_text_unicode.py add 900 more):

==========================================  =======
test                                        cases
==========================================  =======
test_diff_semantic_matches_reference          1,500
test_diff_other_cleanups_match_reference      1,000
test_diff_with_a_timeout_matches_reference      500
test_make_patch_matches_reference             1,500
test_patch_from_diffs_matches_reference         300
test_apply_to_edited_text_matches_reference   1,000
test_apply_options_match_reference              400
test_match_matches_reference                  1,500
test_long_match_patterns                        300
test_trace_mutations_match_reference          5,100
==========================================  =======
total                                        13,100
"""

from __future__ import annotations

import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hybridsync import errors
from hybridsync import text as T
from textcases import (
    REF,
    TRACE_NAMES,
    Traces,
    assert_applies,
    assert_consistent_hunks,
    assert_valid_diff,
    examples,
    hunks_of,
    mutations,
    patterns,
    random_edit,
    random_mutation,
    ref_apply,
    ref_diff,
    ref_hunks_of,
    ref_patches_of,
    reference,
    text_pairs,
    texts,
)

# --------------------------------------------------------------------------
# diff
# --------------------------------------------------------------------------


@settings(max_examples=examples(1500), deadline=None)
@given(pair=text_pairs(), checklines=st.booleans())
def test_diff_semantic_matches_reference(pair: tuple[str, str], checklines: bool) -> None:
    a, b = pair
    ours = T.diff(a, b, timeout=0, checklines=checklines)
    assert_valid_diff(ours, a, b)
    assert ours == ref_diff(a, b, checklines=checklines)


@settings(max_examples=examples(1000), deadline=None)
@given(
    pair=text_pairs(),
    cleanup=st.sampled_from(["none", "efficiency"]),
    checklines=st.booleans(),
    edit_cost=st.integers(0, 10),
)
def test_diff_other_cleanups_match_reference(
    pair: tuple[str, str], cleanup: str, checklines: bool, edit_cost: int
) -> None:
    a, b = pair
    ours = T.diff(a, b, timeout=0, cleanup=cleanup, checklines=checklines, edit_cost=edit_cost)  # type: ignore[arg-type]
    assert_valid_diff(ours, a, b)
    assert ours == ref_diff(a, b, cleanup=cleanup, checklines=checklines, edit_cost=edit_cost)


@settings(max_examples=examples(500), deadline=None)
@given(pair=text_pairs(), cleanup=st.sampled_from(["semantic", "efficiency", "none"]))
def test_diff_with_a_timeout_matches_reference(pair: tuple[str, str], cleanup: str) -> None:
    """With a (positive) timeout both sides also use the half-match speed-up,
    whose result is not always minimal. 10 s: far out of the reference's
    reach on these small inputs, so its deadline never fires."""
    a, b = pair
    dmp = reference(timeout=10.0)
    expected = dmp.diff_main(a, b)
    if cleanup == "semantic":
        dmp.diff_cleanupSemantic(expected)
    elif cleanup == "efficiency":
        dmp.diff_cleanupEfficiency(expected)
    ours = T.diff(a, b, timeout=10.0, cleanup=cleanup)  # type: ignore[arg-type]
    assert ours == expected
    patch = T.make_patch(a, b, timeout=10.0)
    ref_patches = dmp.patch_make(a, b)
    assert hunks_of(patch) == ref_hunks_of(ref_patches)
    assert patch.to_text() == dmp.patch_toText(ref_patches)


# --------------------------------------------------------------------------
# make_patch / patch_from_diffs
# --------------------------------------------------------------------------


def check_patch_against_reference(
    patch: T.Patch, ref_patches: list[object], a: str, b: str
) -> None:
    assert hunks_of(patch) == ref_hunks_of(ref_patches)
    assert len(patch) == len(ref_patches)
    assert patch.to_text() == REF.patch_toText(ref_patches)
    assert_consistent_hunks(patch)
    assert_applies(patch, a, b)


@settings(max_examples=examples(1500), deadline=None)
@given(pair=text_pairs())
def test_make_patch_matches_reference(pair: tuple[str, str]) -> None:
    a, b = pair
    ours = T.make_patch(a, b, timeout=0)
    check_patch_against_reference(ours, REF.patch_make(a, b), a, b)


@settings(max_examples=examples(300), deadline=None)
@given(
    pair=text_pairs(),
    cleanup=st.sampled_from(["semantic", "efficiency", "none"]),
    margin=st.integers(1, 15),
)
def test_patch_from_diffs_matches_reference(
    pair: tuple[str, str], cleanup: str, margin: int
) -> None:
    a, b = pair
    diffs = T.diff(a, b, timeout=0, cleanup=cleanup)  # type: ignore[arg-type]
    ours = T.patch_from_diffs(a, diffs, margin=margin)
    ref_patches = reference(margin=margin).patch_make(a, list(diffs))
    assert hunks_of(ours) == ref_hunks_of(ref_patches)
    assert ours.to_text() == REF.patch_toText(ref_patches)
    assert_applies(ours, a, b, margin=margin)


# --------------------------------------------------------------------------
# apply_patch on a text that changed meanwhile
# --------------------------------------------------------------------------


@st.composite
def edited_elsewhere(draw: st.DrawFn, a: str) -> str:
    """``a`` changed before the patch is applied: text added or removed at
    either end (everything shifts), or random edits anywhere."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(texts(120)) + a
    if kind == 1:
        return a[draw(st.integers(0, min(len(a), 40))) :]
    if kind == 2:
        return a + draw(texts(60))
    return draw(mutations(a, max_edits=4))


@st.composite
def patch_cases(draw: st.DrawFn) -> tuple[str, str, str]:
    a, b = draw(text_pairs())
    return a, b, draw(edited_elsewhere(a))


@settings(max_examples=examples(1000), deadline=None)
@given(case=patch_cases())
def test_apply_to_edited_text_matches_reference(case: tuple[str, str, str]) -> None:
    a, b, shifted = case
    patch = T.make_patch(a, b, timeout=0)
    ref_patches = ref_patches_of(patch)
    assert T.apply_patch(patch, shifted) == ref_apply(ref_patches, shifted)
    assert T.apply_patch(patch, shifted, timeout=0) == ref_apply(ref_patches, shifted, timeout=0)


@settings(max_examples=examples(400), deadline=None)
@given(
    case=patch_cases(),
    match_threshold=st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.8, 1.0]),
    match_distance=st.sampled_from([0, 1, 10, 100, 1000, 5000]),
    delete_threshold=st.sampled_from([0.0, 0.2, 0.5, 0.9, 1.0]),
    margin=st.integers(1, 15),
)
def test_apply_options_match_reference(
    case: tuple[str, str, str],
    match_threshold: float,
    match_distance: int,
    delete_threshold: float,
    margin: int,
) -> None:
    a, b, shifted = case
    patch = T.make_patch(a, b, timeout=0, margin=margin)
    options = {
        "match_threshold": match_threshold,
        "match_distance": match_distance,
        "delete_threshold": delete_threshold,
        "margin": margin,
    }
    ours = T.apply_patch(patch, shifted, **options)  # type: ignore[arg-type]
    assert ours == ref_apply(ref_patches_of(patch), shifted, **options)


# --------------------------------------------------------------------------
# match
# --------------------------------------------------------------------------


@st.composite
def match_cases(draw: st.DrawFn) -> tuple[str, str, int]:
    text = draw(texts(400))
    return text, draw(patterns(text)), draw(st.integers(0, len(text)))


@settings(max_examples=examples(1500), deadline=None)
# The reference's scan range is fixed when its loop starts (Python's range()):
# narrowing ``start`` after a match right of ``loc`` does not stop the scan.
@example(case=(":;;;:", ":", 3), threshold=1.0, distance=0)
@example(case=("aa:b:b;aa:b;b;;aaab:b::;;;:;;aaa:a;::b:a", ":::", 15), threshold=1.0, distance=0)
@given(
    case=match_cases(),
    threshold=st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 1.0)),
    distance=st.one_of(st.sampled_from([0, 1000]), st.integers(0, 2000)),
)
def test_match_matches_reference(
    case: tuple[str, str, int], threshold: float, distance: int
) -> None:
    text, pattern, loc = case
    expected = reference(match_threshold=threshold, match_distance=distance).match_main(
        text, pattern, loc
    )
    ours = T.match(text, pattern, loc, threshold=threshold, distance=distance)
    assert ours == (None if expected == -1 else expected)


@st.composite
def long_match_cases(draw: st.DrawFn) -> tuple[str, str, int]:
    text = draw(texts(600).filter(lambda t: len(t) > 40))
    start = draw(st.integers(0, len(text) - 1))
    pattern = draw(mutations(text[start : start + draw(st.integers(33, 80))], max_edits=3))
    return text, pattern, draw(st.integers(0, len(text)))


@settings(max_examples=examples(300), deadline=None)
@given(case=long_match_cases())
def test_long_match_patterns(case: tuple[str, str, int]) -> None:
    """Patterns beyond the 32 characters used inside patches: up to 64 code
    points they are matched like the reference; longer ones may be refused
    (the reference, in Python, has no limit) with LimitExceededError."""
    text, pattern, loc = case
    expected = REF.match_main(text, pattern, loc)
    try:
        ours = T.match(text, pattern, loc)
    except errors.LimitExceededError:
        assert len(pattern) > 64
        return
    assert ours == (None if expected == -1 else expected)


# --------------------------------------------------------------------------
# Random mutations of the real editing traces (seeded, reproducible)
# --------------------------------------------------------------------------

TRACE_BATCHES = 10
CASES_PER_BATCH = examples(170)  # 3 traces x 10 batches x 170 = 5,100 cases
SNAPSHOT_EVERY = 250


def trace_window(rng: random.Random, doc: str) -> str:
    """A piece of ``doc`` of up to ~3 KB, often cut at line boundaries."""
    if not doc:
        return doc
    length = min(len(doc), rng.choice((64, 256, 1024, 3072)))
    start = rng.randint(0, len(doc) - length)
    if rng.random() < 0.5:
        line_start = doc.rfind("\n", 0, start) + 1
        start, length = line_start, length + (start - line_start)
    return doc[start : start + length]


def check_trace_case(rng: random.Random, doc: str) -> None:
    a = trace_window(rng, doc)
    b = random_mutation(rng, a)

    cleanup = rng.choice(("semantic", "semantic", "efficiency", "none"))
    ours = T.diff(a, b, timeout=0, cleanup=cleanup)  # type: ignore[arg-type]
    assert_valid_diff(ours, a, b)
    assert ours == ref_diff(a, b, cleanup=cleanup), (a, b, cleanup)

    patch = T.make_patch(a, b, timeout=0)
    ref_patches = REF.patch_make(a, b)
    assert hunks_of(patch) == ref_hunks_of(ref_patches), (a, b)
    assert patch.to_text() == REF.patch_toText(ref_patches), (a, b)
    assert_applies(patch, a, b)

    # The same patch applied after edits made elsewhere in the document.
    shifted = a
    for _ in range(rng.randint(1, 3)):
        shifted = random_edit(rng, shifted, doc)
    assert T.apply_patch(patch, shifted) == ref_apply(ref_patches, shifted), (a, b, shifted)
    assert T.apply_patch(patch, shifted, timeout=0) == ref_apply(ref_patches, shifted, timeout=0), (
        a,
        b,
        shifted,
    )

    pattern_start = rng.randint(0, max(0, len(b) - 1))
    pattern = b[pattern_start : pattern_start + rng.randint(1, 32)]
    loc = max(0, pattern_start + rng.randint(-50, 50))
    expected = REF.match_main(a, pattern, loc)
    assert T.match(a, pattern, loc) == (None if expected == -1 else expected), (a, pattern, loc)


@pytest.mark.parametrize("batch", range(TRACE_BATCHES))
@pytest.mark.parametrize("name", TRACE_NAMES)
def test_trace_mutations_match_reference(traces: Traces, name: str, batch: int) -> None:
    snapshots = traces.snapshots(name, SNAPSHOT_EVERY)
    rng = random.Random(f"{name}/{batch}")
    for _ in range(CASES_PER_BATCH):
        _, doc = rng.choice(snapshots)
        check_trace_case(rng, doc)
