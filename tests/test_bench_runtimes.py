"""``benches/bench_runtimes.py --quick`` end to end: it starts its hubs and MCP servers,
writes its report and data, and every row has a result with nothing missed (no assertion
on any timing: those are the benchmark's findings, on a shared and noisy machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benches" / "bench_runtimes.py"
TOOLS = {"create_entities", "add_observations", "read_graph", "search_nodes", "write_document"}


def has_result(cell: dict[str, object], n: int) -> bool:
    return cell["n"] == n and all(
        isinstance(cell[k], float | int) and cell[k] >= 0  # type: ignore[operator]
        for k in ("p50", "p99", "mean")
    )


def test_bench_runtimes_quick(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    md, data = tmp_path / "runtimes-quick.md", tmp_path / "runtimes-quick.json"
    for path in (md, data):
        assert path.is_file() and path.stat().st_size > 0, path

    result = json.loads(data.read_text())
    env = result["environment"]
    assert env["cpu_count"] and len(env["loadavg_at_start"]) == 3
    assert env["versions"]["mcp"] != "unknown"

    tools = result["tool_calls"]
    assert {r["tool"] for r in tools["rows"]} == TOOLS
    for row in tools["rows"]:
        for where in ("mcp_memory", "mcp_data", "direct_memory", "direct_data"):
            assert has_result(row[where], tools["calls_per_tool"]), (row["tool"], where)

    prop = result["propagation"]
    assert {r["write"] for r in prop["rows"]} == {"observation", "document"}
    for row in prop["rows"]:
        for col in ("mcp_call_to_notification", "mcp_ack", "library_write_to_observer"):
            assert row[col]["missed"] == 0, (row["write"], col)
            assert has_result(row[col], prop["writes"]), (row["write"], col)

    text = md.read_text()
    assert "Noisy machine" in text and "load average" in text
    assert "no result" not in text
    for tool in TOOLS:
        assert f"| `{tool}` |" in text
