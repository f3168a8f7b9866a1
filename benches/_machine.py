"""What machine and software a benchmark ran on (shared by the bench scripts)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's best guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_version(dist: str) -> str:
    """An installed distribution's version, or "unknown"."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def git_revision() -> str:
    """``git describe --always --dirty`` of the checkout, or "unknown"."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# --------------------------------------------------------------------------- instruction counts
#
# A timed region runs as the callback of a ctypes function pointer: calling it from Python
# enters libffi's ``ffi_call``, which calls the region and returns when it ends. Under
# ``valgrind --tool=callgrind --collect-atstart=no --toggle-collect=ffi_call
# --dump-after=ffi_call`` collection is on exactly inside ``ffi_call`` and a profile is
# dumped when it returns, so dump k holds the instructions of the k-th region and nothing
# else. The fixed cost of the ctypes round trip (about 2,000 instructions) is measured with
# empty regions and subtracted. A region that itself called into ctypes would toggle
# collection off and add a dump: the number of dumps is checked against the regions run.

REGIONS_ENV = "HSBENCH_REGIONS_FILE"
_CALIBRATION = "calibration/empty"
_CALIBRATION_RUNS = 16


class Regions:
    """Runs timed regions; under callgrind (``HSBENCH_REGIONS_FILE`` set) through
    ``ffi_call`` so that each region is one callgrind dump, labelled in run order."""

    def __init__(self) -> None:
        self.path = os.environ.get(REGIONS_ENV)
        self.labels: list[str] = []
        if self.path:
            import ctypes

            self._cb_type = ctypes.CFUNCTYPE(None)
            for _ in range(_CALIBRATION_RUNS):
                self.run(_CALIBRATION, lambda: None)

    @property
    def counting(self) -> bool:
        return bool(self.path)

    def run(self, label: str, fn: Callable[[], T]) -> T:
        if not self.path:
            return fn()
        out: list[T] = []
        err: list[BaseException] = []

        def body() -> None:
            try:
                out.append(fn())
            except BaseException as e:  # re-raised below
                err.append(e)

        cb = self._cb_type(body)
        self.labels.append(label)
        cb()
        if err:
            raise err[0]
        return out[0]

    def save(self) -> None:
        if self.path:
            Path(self.path).write_text(json.dumps(self.labels))


def callgrind_regions(cmd: Sequence[str], workdir: Path) -> dict[str, dict[str, int]]:
    """Run ``cmd`` (a Python script using :class:`Regions`) under callgrind and return,
    per region label, ``{"calls": n, "instructions": total}`` (the ctypes round trip
    subtracted)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for old in workdir.glob("callgrind.out*"):
        old.unlink()
    labels_path = workdir / "regions.json"
    out = workdir / "callgrind.out"
    env = dict(os.environ, PYTHONHASHSEED="0", **{REGIONS_ENV: str(labels_path)})
    subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=ffi_call",
            "--dump-after=ffi_call",
            f"--callgrind-out-file={out}",
            *cmd,
        ],
        env=env,
        check=True,
        stderr=subprocess.DEVNULL,
    )
    labels = json.loads(labels_path.read_text())
    dumps = sorted(workdir.glob("callgrind.out.*"), key=lambda p: int(p.suffix[1:]))
    counts = []
    for dump in dumps:
        for line in dump.read_text().splitlines():
            if line.startswith("summary:"):
                counts.append(int(line.split()[1]))
                break
        else:
            raise RuntimeError(f"no summary in {dump}")
    if len(counts) != len(labels):
        raise RuntimeError(
            f"{len(counts)} callgrind dumps for {len(labels)} regions: a region called ctypes"
        )
    empty = [c for label, c in zip(labels, counts, strict=True) if label == _CALIBRATION]
    overhead = statistics.median(empty)
    result: dict[str, dict[str, int]] = {}
    for label, c in zip(labels, counts, strict=True):
        if label == _CALIBRATION:
            continue
        r = result.setdefault(label, {"calls": 0, "instructions": 0})
        r["calls"] += 1
        r["instructions"] += max(0, round(c - overhead))
    result[_CALIBRATION] = {"calls": len(empty), "instructions": round(overhead)}
    return result
