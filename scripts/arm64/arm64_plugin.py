"""pytest plugin loaded (``-p arm64_plugin``) by scripts/arm64/test-python.sh.

Shows in the run's header which machine the interpreter runs on and where
hybridsync was imported from, and stops the run unless it is the aarch64
wheel's extension on an aarch64 interpreter.
"""

from __future__ import annotations

import os
import platform
import sys

import pytest


def _facts() -> list[str]:
    import hybridsync
    from hybridsync import _core

    return [
        f"platform.machine() == {platform.machine()!r}",
        f"python {platform.python_version()} ({sys.executable})",
        f"hybridsync {hybridsync.__version__} from {os.path.dirname(hybridsync.__file__)}",
        f"extension {os.path.basename(_core.__file__ or '?')}",
    ]


def pytest_configure(config: pytest.Config) -> None:
    from hybridsync import _core

    site = os.environ.get("HYBRIDSYNC_ARM64_SITE", "")
    if platform.machine() != "aarch64":
        raise pytest.UsageError(f"not aarch64: {platform.machine()}")
    if not site or not (_core.__file__ or "").startswith(site):
        raise pytest.UsageError(f"hybridsync._core not from the installed wheel: {_core.__file__}")


def pytest_report_header(config: pytest.Config) -> list[str]:
    return ["arm64: " + line for line in _facts()]


_MARK_LOG = os.environ.get("HYBRIDSYNC_ARM64_NEON_MARK")
if _MARK_LOG:
    # For scripts/arm64/neon-paths.sh: before each test, append its name to the
    # log that gdb appends to, and call getpgid(), on which gdb re-arms its
    # one-shot breakpoints (pytest captures stdout and stderr, hence the file).
    _mark_fd = os.open(_MARK_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(item: pytest.Item) -> None:
        os.write(_mark_fd, f"NEON-TEST {item.nodeid}\n".encode())
        os.getpgid(0)
