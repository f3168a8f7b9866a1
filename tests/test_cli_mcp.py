"""``hybridsync mcp`` is the MCP memory server's command: a memory file
imported into a durable replica comes back out of it unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mcp")

ENTRIES = [
    {"type": "entity", "name": "ada", "entityType": "person", "observations": ["wrote notes 🦊"]},
    {"type": "entity", "name": "engine", "entityType": "machine", "observations": []},
    {"type": "relation", "from": "ada", "to": "engine", "relationType": "programmed"},
]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hybridsync.cli", "mcp", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _canonical(lines: list[dict[str, object]]) -> list[str]:
    return sorted(json.dumps(line, sort_keys=True) for line in lines)


def test_mcp_command_imports_and_exports_a_memory_file(tmp_path: Path) -> None:
    source = tmp_path / "memory.jsonl"
    source.write_text("".join(json.dumps(e) + "\n" for e in ENTRIES), encoding="utf-8")
    data = tmp_path / "replica.db"
    done = _cli("--data", str(data), "--id", "mcp-test", "--import", str(source))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out.jsonl"
    done = _cli("--data", str(data), "--id", "mcp-test", "--export", str(out))
    assert done.returncode == 0, done.stderr
    exported = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line]
    assert _canonical(exported) == _canonical(ENTRIES)


def test_mcp_command_rejects_bad_arguments() -> None:
    done = _cli("--port", "not-a-number")
    assert done.returncode == 2
    assert "--port" in done.stderr
