"""Instruction counts of a bench cell's timed region: a CPU measure that a
busy machine does not disturb.

Two counters, both around exactly the calls that :func:`time.process_time`
measures (``Engine.apply`` and ``Engine.tick``), nothing else:

- ``perf``: the kernel's hardware counter (``perf_event_open``, user-space
  instructions of this thread), enabled and disabled around each timed call.
  Many virtual machines do not expose it (``perf stat -e instructions true``
  prints ``<not supported>``); :func:`perf_counter` then returns None.
- ``callgrind``: the cell runs in a fresh interpreter under
  ``valgrind --tool=callgrind --collect-atstart=no``, and a two-line C helper
  (compiled here on first use, needing ``cc`` and valgrind's
  ``callgrind.h``) toggles collection on and off around each timed call
  (``CALLGRIND_TOGGLE_COLLECT``). The count is callgrind's total of
  executed instructions (``Ir``): the same for the same binaries and inputs,
  whatever else the machine runs. Valgrind runs the cell about 50x slower,
  so the runner measures a reduced cell (the ``--quick`` workload).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

__all__ = [
    "CallgrindToggle",
    "PerfCounter",
    "callgrind_command",
    "callgrind_instructions",
    "callgrind_usable",
    "perf_counter",
]

_SYSCALL_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "arm64": 241}
_PERF_TYPE_HARDWARE = 0
_PERF_COUNT_HW_INSTRUCTIONS = 1
_IOC_ENABLE = 0x2400
_IOC_DISABLE = 0x2401
_IOC_RESET = 0x2403
# perf_event_attr flag bits: disabled, exclude_kernel, exclude_hv.
_FLAGS = (1 << 0) | (1 << 5) | (1 << 6)


class PerfCounter:
    """User-space instructions of the calling thread, counted only between
    :meth:`start` and :meth:`stop` (accumulating)."""

    def __init__(self, fd: int, libc: ctypes.CDLL) -> None:
        self._fd = fd
        self._libc = libc
        self._libc.ioctl(self._fd, _IOC_RESET, 0)

    def start(self) -> None:
        self._libc.ioctl(self._fd, _IOC_ENABLE, 0)

    def stop(self) -> None:
        self._libc.ioctl(self._fd, _IOC_DISABLE, 0)

    @property
    def value(self) -> int:
        data = os.read(self._fd, 8)
        return int(struct.unpack("<Q", data)[0])

    def close(self) -> None:
        os.close(self._fd)


def perf_counter() -> PerfCounter | None:
    """A hardware instruction counter, or None where the kernel or the
    virtual machine does not provide one."""
    number = _SYSCALL_PERF_EVENT_OPEN.get(platform.machine())
    if number is None or not hasattr(os, "sched_getaffinity"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)
    # struct perf_event_attr (PERF_ATTR_SIZE_VER5 = 112 bytes): type, size,
    # config, sample_period, sample_type, read_format, flags, the rest zero.
    attr = struct.pack(
        "<IIQQQQQ", _PERF_TYPE_HARDWARE, 112, _PERF_COUNT_HW_INSTRUCTIONS, 0, 0, 0, _FLAGS
    ).ljust(112, b"\0")
    buf = ctypes.create_string_buffer(attr, 112)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(
        ctypes.c_long(number),
        buf,
        ctypes.c_int(0),
        ctypes.c_int(-1),
        ctypes.c_int(-1),
        ctypes.c_ulong(0),
    )
    if fd < 0:
        return None
    counter = PerfCounter(int(fd), libc)
    counter.start()
    sum(range(1000))
    counter.stop()
    if counter.value == 0:  # a counter that opens but never counts
        counter.close()
        return None
    counter._libc.ioctl(counter._fd, _IOC_RESET, 0)
    return counter


_TOGGLE_SOURCE = """#include <valgrind/callgrind.h>
void hybridsync_callgrind_toggle(void) { CALLGRIND_TOGGLE_COLLECT; }
"""


def _toggle_library() -> Path | None:
    """The compiled toggle helper (built once into the user's cache folder)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hybridsync"
    lib = cache / f"callgrind_toggle-{platform.machine()}.so"
    if lib.exists():
        return lib
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None or not Path("/usr/include/valgrind/callgrind.h").exists():
        return None
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "toggle.c"
        src.write_text(_TOGGLE_SOURCE)
        out = Path(tmp) / lib.name
        done = subprocess.run(
            [compiler, "-shared", "-fPIC", "-O1", "-o", str(out), str(src)],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            return None
        shutil.move(str(out), lib)
    return lib


class CallgrindToggle:
    """Toggles callgrind's collection (a no-op outside valgrind). The runner
    calls :meth:`start` and :meth:`stop` around each timed call."""

    def __init__(self, lib: Path) -> None:
        self._toggle = ctypes.CDLL(str(lib)).hybridsync_callgrind_toggle
        self._toggle.restype = None
        self._toggle.argtypes = []

    def start(self) -> None:
        self._toggle()

    def stop(self) -> None:
        self._toggle()


def callgrind_usable() -> bool:
    """valgrind is installed and the toggle helper builds."""
    return shutil.which("valgrind") is not None and _toggle_library() is not None


def callgrind_toggle() -> CallgrindToggle | None:
    lib = _toggle_library()
    return None if lib is None else CallgrindToggle(lib)


def callgrind_command(out_file: Path) -> list[str]:
    """The valgrind prefix of a command whose timed region is counted."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--collect-atstart=no",
        "--cache-sim=no",
        "--branch-sim=no",
        f"--callgrind-out-file={out_file}",
    ]


def callgrind_instructions(out_file: Path) -> int:
    """The total of executed instructions (``Ir``) in a callgrind output file."""
    text = out_file.read_text(errors="replace")
    found = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.MULTILINE)
    if found is None:
        raise ValueError(f"no instruction total in {out_file}")
    return int(found.group(1))
