"""Real editing traces: patches between consecutive snapshots of each trace
reproduce the next snapshot exactly, all the way to the trace's end content."""

from __future__ import annotations

import itertools

import pytest

from hybridsync import text as T
from textcases import (
    REF,
    TRACE_NAMES,
    Traces,
    assert_consistent_hunks,
    hunks_of,
    ref_hunks_of,
)

EVERY = 500


@pytest.mark.parametrize("name", TRACE_NAMES)
def test_trace_snapshots_patch_forward_to_the_end(traces: Traces, name: str) -> None:
    trace = traces.get(name)
    snapshots = traces.snapshots(name, EVERY)
    assert len(snapshots) > 2
    text = trace.start
    for (_, before), (index, after) in itertools.pairwise(snapshots):
        assert text == before
        patch = T.make_patch(before, after)
        assert_consistent_hunks(patch)
        # The patch survives both codecs.
        assert T.Patch.from_bytes(patch.to_bytes()) == patch
        assert T.Patch.from_text(patch.to_text()) == patch
        new_text, flags = T.apply_patch(patch, before)
        assert new_text == after, f"{name}: wrong text after txn {index}"
        assert all(flags), f"{name}: a hunk failed after txn {index}: {flags}"
        text = new_text
    assert text == trace.end


@pytest.mark.parametrize("name", TRACE_NAMES)
def test_trace_snapshots_match_reference(traces: Traces, name: str) -> None:
    """Every 10th pair of consecutive snapshots against the reference, without
    deadline (whole documents, up to ~65,000 characters)."""
    snapshots = traces.snapshots(name, EVERY)
    pairs = list(itertools.pairwise(snapshots))[::10]
    for (_, before), (index, after) in pairs:
        ours = T.diff(before, after, timeout=0)
        expected = REF.diff_main(before, after)
        REF.diff_cleanupSemantic(expected)
        assert ours == expected, f"{name}: diff differs after txn {index}"
        patch = T.make_patch(before, after, timeout=0)
        ref_patches = REF.patch_make(before, after)
        assert hunks_of(patch) == ref_hunks_of(ref_patches), f"{name}: txn {index}"
        assert patch.to_text() == REF.patch_toText(ref_patches), f"{name}: txn {index}"
