"""Test configuration: Hypothesis profiles and the editing-trace fixtures."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from hybridsync.traces import traces_dir
from textcases import TRACE_NAMES, Traces

# Profiles. "ci" (chosen when $CI is set) derandomizes Hypothesis so a CI run is
# reproducible; "dev" explores new examples on every run. Either can be forced
# with HYPOTHESIS_PROFILE=... . Every test sets its own example budget.
settings.register_profile(
    "ci",
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="session")
def traces() -> Traces:
    """The editing traces. Fails (does not skip) when they are missing: they are
    part of the test suite's inputs, not an optional extra."""
    folder = traces_dir()
    missing = [name for name in TRACE_NAMES if not (folder / f"{name}.json.gz").is_file()]
    if missing:
        pytest.fail(
            f"editing traces {', '.join(missing)} not found in {str(folder)!r}. Set "
            "HYBRIDSYNC_TRACES to the folder holding the josephg/editing-traces "
            "*.json.gz files (default: ../shared/data/editing-traces, relative to the "
            "working directory).",
            pytrace=False,
        )
    return Traces()


@pytest.fixture(autouse=True)
def _hybridsync_logger_restored() -> Iterator[None]:
    """A test that runs the CLI in process lets it set up the ``hybridsync``
    logger for a terminal (its own handler, no propagation): put it back, so
    later tests' ``caplog`` still hears the library."""
    logger = logging.getLogger("hybridsync")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]
