"""``hybridsync bench``: the quick suite end to end, and the hybridsync engine
against hand-made operations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xxhash
from click.testing import CliRunner

from hybridsync.bench.core import (
    KVAppend,
    KVTruncate,
    MetaAppend,
    MetaDelete,
    MetaSet,
    NetConfig,
    TextEdit,
    kv_rows,
)
from hybridsync.bench.engine_hybrid import HybridEngine, state_bytes_of
from hybridsync.bench.report import BEGIN_MARKER, END_MARKER, update_readme
from hybridsync.bench.runner import engines, expected_kv_digests
from hybridsync.bench.workloads import Workload, build
from hybridsync.cli import main
from textcases import Traces

GEOMETRY = {"layers": 2, "kv_heads": 2, "head_dim": 64}


def _settle(engine: HybridEngine, limit: int = 500) -> int:
    for ticks in range(limit):
        if engine.converged():
            return ticks
        engine.tick()
    raise AssertionError("not converged")


def _direct_digest(cache: str, steps: list[tuple[str, int]]) -> str:
    """The digest of a cache built from kv_rows by hand: appends and truncations."""
    rows = GEOMETRY["head_dim"] // 32 * 18
    arr = np.zeros((GEOMETRY["layers"], 2, GEOMETRY["kv_heads"], 0, rows), np.uint8)
    for kind, n in steps:
        if kind == "append":
            data = kv_rows(cache, arr.shape[3], n, **GEOMETRY)
            new = np.frombuffer(data, np.uint8).reshape(*arr.shape[:3], n, rows)
            arr = np.concatenate([arr, new], axis=3)
        else:
            arr = arr[:, :, :, :n]
    return xxhash.xxh3_128(np.ascontiguousarray(arr).tobytes()).hexdigest()


@pytest.mark.parametrize("loss", [0.0, 0.3])
def test_hybrid_engine_hand_made_ops(loss: float) -> None:
    engine = HybridEngine(["hub", "a1", "a2"], NetConfig(loss=loss, seed=3))
    engine.apply(
        "a1",
        [
            TextEdit("notes", 0, 0, "plan: 😀 ship it"),
            MetaSet(("tasks",), {"t1": {"status": "open", "tags": ["a", "b"]}}),
            MetaSet(("log",), []),
        ],
    )
    engine.apply("a2", [KVAppend("kv-a2", 300, **GEOMETRY)])
    _settle(engine)
    # Code points, not UTF-16 units: position 6 is the emoji, 8 is "s".
    engine.apply(
        "hub",
        [
            TextEdit("notes", 6, 1, "🦀"),
            MetaSet(("tasks", "t1", "status"), "done"),
            MetaDelete(("tasks", "t1", "tags")),
            MetaAppend(("log",), "t1 done"),
        ],
    )
    engine.apply("a2", [KVTruncate("kv-a2", 100), KVAppend("kv-a2", 200, **GEOMETRY)])
    _settle(engine)
    for replica in engine.replicas:
        assert engine.text(replica, "notes") == "plan: 🦀 ship it"
        assert engine.meta(replica) == {"tasks": {"t1": {"status": "done"}}, "log": ["t1 done"]}
        assert engine.kv_digest(replica, "kv-a2") == _direct_digest(
            "kv-a2", [("append", 300), ("truncate", 100), ("append", 200)]
        )
        assert engine.kv_digest(replica, "absent") == ""
        assert engine.text(replica, "absent") == ""
    assert engine.wire_bytes > 0 and engine.messages > 0
    # The state definition: at least every replica's text, the KV bytes and
    # the two shadows per link and document.
    kv_bytes = 2 * 2 * 2 * 300 * 36
    for replica in engine.replicas:
        memory = engine.memory(replica)
        links = len(memory.links)
        text = len("plan: 🦀 ship it".encode())
        assert state_bytes_of(memory) >= text * (1 + 2 * links) + kv_bytes
    assert engine.state_bytes() == max(state_bytes_of(engine.memory(r)) for r in engine.replicas)


def test_expected_kv_digests_follow_the_script() -> None:
    workload = Workload(
        name="t",
        family="kv",
        replicas=["hub", "a1"],
        txns=[
            (0, "a1", [KVAppend("c", 256, **GEOMETRY)]),
            (1, "a1", [KVTruncate("c", 10), KVAppend("c", 5, **GEOMETRY)]),
        ],
        description="",
    )
    assert expected_kv_digests(workload) == {
        "c": _direct_digest("c", [("append", 256), ("truncate", 10), ("append", 5)])
    }


def test_sequential_text_workload_ends_at_the_trace_prefix(traces: Traces) -> None:
    from hybridsync.traces import load_trace

    workload = build("text-seq-2", quick=True)
    assert workload.mode == "turns" and workload.deterministic
    assert workload.expected_text == {"doc": load_trace("seph-blog1").replay(300)}
    agents = {replica for _, replica, _ in workload.txns}
    assert agents == {"a1", "a2"}


def test_update_readme_replaces_only_between_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN_MARKER}\nold\n{END_MARKER}\noutro\n")
    assert update_readme(readme, "new table")
    assert readme.read_text() == f"intro\n{BEGIN_MARKER}\nnew table\n{END_MARKER}\noutro\n"
    plain = tmp_path / "OTHER.md"
    plain.write_text("no markers\n")
    assert not update_readme(plain, "x")
    assert plain.read_text() == "no markers\n"


def test_quick_suite_all_engines(traces: Traces, tmp_path: Path) -> None:
    assert set(engines()) == {"hybridsync", "pycrdt", "loro"}
    out = tmp_path / "bench"
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "--quick",
            "--loss",
            "0,0.3",
            "--workloads",
            "text-seq-2,text-conc-4,meta,kv",
            "--out",
            str(out),
            "--no-readme",
        ],
    )
    assert result.exit_code == 0, result.output
    for name in ("bench.md", "bench.json", "state_over_time.png", "wire_vs_loss.png"):
        assert (out / name).is_file(), name
    payload = json.loads((out / "bench.json").read_text())
    cells = payload["results"]
    assert len(cells) == 5 * 2 * 3
    assert {c["engine"] for c in cells} == {"hybridsync", "pycrdt", "loro"}
    for cell in cells:
        where = f"{cell['workload']} {cell['engine']} {cell['loss']}"
        assert cell["status"] == "ok", (where, cell.get("reason"))
        assert cell["correct"] is True, (where, cell["checks"])
    cross = {c["workload"]: c for c in payload["cross_engine"]}
    assert set(cross) == {"text-seq-2", "kv-grow"}
    for check in cross.values():
        assert check["equal"] and check["cells"] == 6, check
    assert payload["command"].startswith("hybridsync bench --quick")
    assert "| 30% | hybridsync |" in (out / "bench.md").read_text()
