"""``benches/bench_small.py --quick`` end to end: it runs, writes its report, data and plot,
and every engine's replicas matched after every cycle (no assertion on any speed or byte
ratio: those are the benchmark's findings, not properties of the code)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benches" / "bench_small.py"
ENGINES = ("hybridsync", "pycrdt", "loro")


def test_bench_small_quick(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--no-callgrind", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    md = tmp_path / "small-quick.md"
    data = tmp_path / "small-quick.json"
    png = tmp_path / "small-quick.png"
    for path in (md, data, png):
        assert path.is_file() and path.stat().st_size > 0, path
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    result = json.loads(data.read_text())
    rows = result["rows"]
    cells = {(r["channel"], r["n"]) for r in rows}
    assert cells == {(c, n) for c in ("text", "meta", "kv") for n in (100, 1_000)}
    for row in rows:
        assert row["correct"] is True, row
        assert row["cycles"] > 0
        for engine in ENGINES:
            e = row[engine]
            assert e["edit_bytes"] > 0 and e["cpu_s"] > 0, (row["channel"], engine)
            assert e["idle_bytes"] >= 0
    assert result["environment"]["quick"] is True
    assert result["environment"]["versions"]["pycrdt"] != "unknown"

    report = md.read_text()
    table = [line for line in report.splitlines() if line.startswith("| text ")]
    assert table and all(line.rstrip().endswith("| yes |") for line in table[:2])
    assert "| NO |" not in report
