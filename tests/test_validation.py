"""Argument validation: out-of-range options raise
``hybridsync.errors.InvalidArgumentError`` (a ``ValueError``), wrong types raise
``TypeError``, and the boundaries of every range are accepted."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from hybridsync import errors
from hybridsync import text as T
from textcases import REF, assert_applies, hunks_of, ref_hunks_of, reference

A, B = "hello world", "hello brave new world"
NAN, INF = float("nan"), float("inf")


def patch() -> T.Patch:
    return T.make_patch(A, B)


INVALID: list[tuple[str, Callable[[], Any]]] = [
    ("diff timeout -1", lambda: T.diff(A, B, timeout=-1.0)),
    ("diff timeout -1e-9", lambda: T.diff(A, B, timeout=-1e-9)),
    ("diff timeout -inf", lambda: T.diff(A, B, timeout=-INF)),
    ("diff cleanup unknown", lambda: T.diff(A, B, cleanup="semantics")),  # type: ignore[arg-type]
    ("diff cleanup empty", lambda: T.diff(A, B, cleanup="")),  # type: ignore[arg-type]
    ("diff cleanup case", lambda: T.diff(A, B, cleanup="Semantic")),  # type: ignore[arg-type]
    ("diff edit_cost -1", lambda: T.diff(A, B, edit_cost=-1)),
    ("match threshold -0.1", lambda: T.match(A, "wor", 3, threshold=-0.1)),
    ("match threshold 1.01", lambda: T.match(A, "wor", 3, threshold=1.01)),
    ("match threshold inf", lambda: T.match(A, "wor", 3, threshold=INF)),
    ("match distance -1", lambda: T.match(A, "wor", 3, distance=-1)),
    ("make_patch timeout -1", lambda: T.make_patch(A, B, timeout=-1.0)),
    ("make_patch edit_cost -1", lambda: T.make_patch(A, B, edit_cost=-1)),
    ("make_patch margin -1", lambda: T.make_patch(A, B, margin=-1)),
    ("patch_from_diffs margin -1", lambda: T.patch_from_diffs(A, T.diff(A, B), margin=-1)),
    ("apply match_threshold -0.5", lambda: T.apply_patch(patch(), A, match_threshold=-0.5)),
    ("apply match_threshold 1.5", lambda: T.apply_patch(patch(), A, match_threshold=1.5)),
    ("apply match_distance -1", lambda: T.apply_patch(patch(), A, match_distance=-1)),
    ("apply delete_threshold -0.1", lambda: T.apply_patch(patch(), A, delete_threshold=-0.1)),
    ("apply delete_threshold 2", lambda: T.apply_patch(patch(), A, delete_threshold=2.0)),
    ("apply margin -1", lambda: T.apply_patch(patch(), A, margin=-1)),
    ("apply timeout -1", lambda: T.apply_patch(patch(), A, timeout=-1.0)),
]


@pytest.mark.parametrize("call", [c for _, c in INVALID], ids=[n for n, _ in INVALID])
def test_out_of_range_options_raise_invalid_argument(call: Callable[[], Any]) -> None:
    with pytest.raises(errors.InvalidArgumentError) as info:
        call()
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, errors.HybridSyncError)


NOT_A_NUMBER: list[tuple[str, Callable[[], Any]]] = [
    ("diff timeout nan", lambda: T.diff(A, B, timeout=NAN)),
    ("match threshold nan", lambda: T.match(A, "wor", 3, threshold=NAN)),
    ("make_patch timeout nan", lambda: T.make_patch(A, B, timeout=NAN)),
    ("apply match_threshold nan", lambda: T.apply_patch(patch(), A, match_threshold=NAN)),
    ("apply delete_threshold nan", lambda: T.apply_patch(patch(), A, delete_threshold=NAN)),
    ("apply timeout nan", lambda: T.apply_patch(patch(), A, timeout=NAN)),
]


@pytest.mark.parametrize("call", [c for _, c in NOT_A_NUMBER], ids=[n for n, _ in NOT_A_NUMBER])
def test_nan_options_raise_invalid_argument(call: Callable[[], Any]) -> None:
    """NaN is in no range: every comparison with it is false."""
    with pytest.raises(errors.InvalidArgumentError):
        call()


def test_boundaries_are_accepted() -> None:
    assert T.diff(A, B, timeout=0, edit_cost=0) == T.diff(A, B, timeout=0.0, edit_cost=0)
    for cleanup in ("semantic", "efficiency", "none"):
        T.diff(A, B, cleanup=cleanup)  # type: ignore[arg-type]
    for threshold in (0.0, 1.0):
        for distance in (0, 1000):
            ref = reference(match_threshold=threshold, match_distance=distance)
            expected = ref.match_main(A, "wrld", 3)
            ours = T.match(A, "wrld", 3, threshold=threshold, distance=distance)
            assert ours == (None if expected == -1 else expected)
        T.apply_patch(patch(), A, match_threshold=threshold, delete_threshold=threshold)
    T.apply_patch(patch(), A, match_distance=0)
    assert_applies(T.make_patch(A, B, timeout=0, edit_cost=0, margin=1), A, B, margin=1)


@pytest.mark.parametrize("timeout", [1.0, 1e10, 1e20, 1e300, INF])
def test_large_timeouts_behave_like_reference(timeout: float) -> None:
    """Any positive timeout, however large, means what it means to the
    reference (a deadline, and the half-match speed-up, which is why these
    two texts diff differently with and without a timeout), or is refused;
    it never overflows."""
    a, b = "bbaa", "aabb"
    dmp = reference(timeout=timeout)
    try:
        ours = T.diff(a, b, timeout=timeout, cleanup="none")
    except errors.InvalidArgumentError:
        return
    assert ours == dmp.diff_main(a, b)
    expected = dmp.diff_main(A, B)
    dmp.diff_cleanupSemantic(expected)
    assert T.diff(A, B, timeout=timeout) == expected
    assert hunks_of(T.make_patch(a, b, timeout=timeout)) == ref_hunks_of(dmp.patch_make(a, b))


@pytest.mark.parametrize("loc", [-100, -1, 0, 5, 11, 12, 1000])
def test_match_clamps_loc_like_reference(loc: int) -> None:
    """The reference clamps ``loc`` into ``0..len(text)``."""
    for pattern in ("hello", "world", "wrld", "xyz", ""):
        expected = REF.match_main(A, pattern, loc)
        assert T.match(A, pattern, loc) == (None if expected == -1 else expected)


def test_margin_zero_terminates() -> None:
    """Margin 0 would never grow the context around a repeated pattern (the
    reference loops forever on it): it must either work or be rejected. Run in a
    child interpreter so that a hang fails the test instead of freezing it."""
    code = (
        "from hybridsync import text as T\n"
        "from hybridsync.errors import InvalidArgumentError\n"
        "a, b = 'abab' * 8, 'abab' * 4 + 'X' + 'abab' * 4\n"
        "try:\n"
        "    p = T.make_patch(a, b, margin=0)\n"
        "except InvalidArgumentError:\n"
        "    print('rejected')\n"
        "else:\n"
        "    try:\n"
        "        print('applied', T.apply_patch(p, a, margin=0)[0] == b)\n"
        "    except InvalidArgumentError:\n"
        "        print('apply rejected')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("rejected", "applied True", "apply rejected"), result.stdout


@pytest.mark.parametrize(
    "bad", [None, "@@ -1 +1 @@\n-a\n+b\n", b"", [], 42, T.make_patch(A, B).hunks]
)
def test_apply_patch_requires_a_patch(bad: object) -> None:
    with pytest.raises(TypeError):
        T.apply_patch(bad, A)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "call",
    [
        lambda: T.diff(None, "a"),  # type: ignore[arg-type]
        lambda: T.diff("a", b"a"),  # type: ignore[arg-type]
        lambda: T.match(1, "a", 0),  # type: ignore[arg-type]
        lambda: T.make_patch("a", None),  # type: ignore[arg-type]
        lambda: T.apply_patch(patch(), None),  # type: ignore[arg-type]
        lambda: T.Patch.from_text(b"@@ -1 +1 @@\n"),  # type: ignore[arg-type]
    ],
)
def test_wrong_types_raise_type_error(call: Callable[[], Any]) -> None:
    with pytest.raises(TypeError):
        call()


@pytest.mark.parametrize("op", [2, -2, 5])
def test_patch_from_diffs_rejects_unknown_operations(op: int) -> None:
    with pytest.raises(errors.InvalidArgumentError):
        T.patch_from_diffs("ab", [(T.DIFF_EQUAL, "a"), (op, "b")])


def test_patch_from_diffs_rejects_diffs_of_another_text() -> None:
    diffs = T.diff("hello world", "hello brave world")
    with pytest.raises(errors.InvalidArgumentError):
        T.patch_from_diffs("goodbye world", diffs)


def test_errors_hierarchy() -> None:
    for cls in (errors.DecodeError, errors.InvalidArgumentError, errors.LimitExceededError):
        assert issubclass(cls, errors.HybridSyncError)
        assert issubclass(cls, ValueError)
