"""Reports of ``hybridsync bench``: markdown, JSON, plots and the README section.

:func:`write_report` writes, under the output folder (``benches/results/bench``
by default):

- ``bench.json``: the command, the machine and package versions, every cell's
  measurements (see :mod:`hybridsync.bench.runner`) and the cross-engine checks;
- ``bench.md``: per workload, each engine's absolute numbers, then the ratios
  hybridsync / baseline for every metric, a baseline's win marked in words;
- ``state_over_time.png``: the state size (``Engine.state_bytes``) over ticks,
  one panel per workload, one line per engine, at 10% loss (or the loss
  closest to it that ran);
- ``wire_vs_loss.png``: bytes on the wire against the loss rate, one panel
  per workload.

With a README path, the text between ``<!-- bench:begin -->`` and
``<!-- bench:end -->`` is replaced by a summary of the ratios with the
exact command, machine and versions.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "BEGIN_MARKER",
    "END_MARKER",
    "machine_info",
    "markdown",
    "readme_section",
    "update_readme",
    "write_report",
]

BEGIN_MARKER = "<!-- bench:begin -->"
END_MARKER = "<!-- bench:end -->"

#: Shown for a missing value.
NONE = "-"

#: Metrics compared as ratios: (result key, label).
RATIO_METRICS: tuple[tuple[str, str], ...] = (
    ("wire_bytes", "wire bytes"),
    ("messages", "messages"),
    ("cpu_s", "CPU"),
    ("rss_delta_bytes", "peak RSS (run's own)"),
    ("state_max_bytes", "max state"),
    ("converge_ticks", "ticks to converge"),
)

PACKAGES = ("hybridsync", "pycrdt", "loro", "numpy", "matplotlib")


# -- machine ---------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    """CPU model, logical cores, OS, Python and package versions."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": {name: _version(name) for name in PACKAGES},
    }


def _machine_line(machine: dict[str, Any]) -> str:
    pkgs = ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
    return f"{machine['cpu']} ({machine['cores']} logical cores), {machine['python']}; {pkgs}"


# -- formatting ---------------------------------------------------------------------


def _bytes(n: float | None) -> str:
    if n is None:
        return NONE
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def _num(value: Any, key: str) -> str:
    if value is None:
        return NONE
    if key.endswith("bytes"):
        return _bytes(value)
    if key == "cpu_s":
        return f"{value:.3f} s"
    return f"{value:,}"


def _ok(r: dict[str, Any]) -> str:
    if r.get("status") == "dnf":
        return "DNF"
    if r.get("status") == "error":
        return "error"
    return "✓" if r.get("correct") else "✗"


def _ratio(a: Any, b: Any) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return float(a) / float(b)


def _ratio_cell(hyb: dict[str, Any], other: dict[str, Any], key: str) -> str:
    if hyb.get("status") != "ok" or other.get("status") != "ok":
        bad = hyb if hyb.get("status") != "ok" else other
        return f"{bad['engine']} {_ok(bad)}"
    r = _ratio(hyb.get(key), other.get(key))
    if r is None:
        return f"{_num(hyb.get(key), key)} vs {_num(other.get(key), key)}"
    text = f"{r:.2f}x"
    if r > 1.0:
        return f"{text} (**{other['engine']} wins**)"
    return f"**{text}**" if r < 1.0 else text


def _workloads(results: Sequence[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for r in results:
        if r["workload"] not in seen:
            seen.append(r["workload"])
    return seen


def _by(results: Sequence[dict[str, Any]]) -> dict[tuple[str, float, str], dict[str, Any]]:
    return {(r["workload"], float(r["loss"]), r["engine"]): r for r in results}


def _losses(results: Sequence[dict[str, Any]]) -> list[float]:
    return sorted({float(r["loss"]) for r in results})


def _engines(results: Sequence[dict[str, Any]]) -> list[str]:
    order = ["hybridsync", "pycrdt", "loro"]
    present = {r["engine"] for r in results}
    return [e for e in order if e in present] + sorted(present - set(order))


# -- markdown --------------------------------------------------------------------------


def markdown(payload: dict[str, Any]) -> str:
    """``bench.md`` from the ``bench.json`` payload."""
    results: list[dict[str, Any]] = payload["results"]
    by = _by(results)
    engines = _engines(results)
    baselines = [e for e in engines if e != "hybridsync"]
    lines = [
        "# hybridsync bench",
        "",
        f"Command: `{payload['command']}`  ",
        f"Machine: {_machine_line(payload['machine'])}  ",
        f"Run: {payload['generated']}, {payload['wall_s']:.0f} s wall in all.",
        "",
    ]
    if payload.get("quick"):
        lines += [
            "**--quick: a correctness run on small workloads.** The numbers below come from "
            "inputs too small to support performance claims.",
            "",
        ]
    for note in payload.get("notes", []):
        lines.append(f"- Note: {note}")
    if payload.get("notes"):
        lines.append("")
    lines += [
        "Every engine runs the same transactions over the same simulated star (hub = first "
        "replica, one-tick delay, per-message loss drawn from one seeded generator). Wire bytes "
        "and messages count everything a replica sent (retransmissions, polls and "
        "acknowledgements included). CPU is process time spent applying transactions and "
        "running ticks. Peak RSS is the cell's own high-water mark above its interpreter "
        "baseline (each cell runs in a fresh process). State is `Engine.state_bytes()` of the "
        "largest replica: for hybridsync its texts, every link's shadows and backup shadows, "
        "the encoded metadata CRDT and KV pages plus page tables; for the CRDTs the encoded "
        "document with its history. Ticks to converge count from the last transaction until "
        "every replica is equal and nothing is left in flight. Ratios are hybridsync / "
        "baseline: below 1.00x hybridsync uses less; where a baseline uses less the table "
        "says so.",
        "",
    ]
    for w in _workloads(results):
        first = next(r for r in results if r["workload"] == w)
        lines += [f"## {w}", "", first.get("description", ""), ""]
        lines += [
            "| loss | engine | wire bytes | messages | CPU | peak RSS (own / total) | "
            "max state | final state | ticks to converge | ticks | correct |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for loss in _losses(results):
            for e in engines:
                r = by.get((w, loss, e))
                if r is None:
                    continue
                rss = (
                    f"{_bytes(r.get('rss_delta_bytes'))} / {_bytes(r.get('rss_peak_bytes'))}"
                    if r.get("rss_peak_bytes") is not None
                    else NONE
                )
                extra = f" ({r['reason']})" if r.get("status") != "ok" and r.get("reason") else ""
                lines.append(
                    f"| {loss:.0%} | {e} | {_num(r.get('wire_bytes'), 'wire_bytes')} | "
                    f"{_num(r.get('messages'), 'messages')} | {_num(r.get('cpu_s'), 'cpu_s')} | "
                    f"{rss} | {_bytes(r.get('state_max_bytes'))} | "
                    f"{_bytes(r.get('state_final_bytes'))} | "
                    f"{_num(r.get('converge_ticks'), 'ticks')} | {_num(r.get('ticks'), 'ticks')} "
                    f"| {_ok(r)}{extra} |"
                )
        shallow = [
            (loss, r["state_shallow_bytes"])
            for loss in _losses(results)
            if (r := by.get((w, loss, "loro"))) is not None and r.get("state_shallow_bytes")
        ]
        if shallow:
            lines += [
                "",
                "Loro's shallow snapshot at the end (history dropped; what a joining replica "
                "could download instead of the full state): "
                + ", ".join(f"{_bytes(b)} at {loss:.0%} loss" for loss, b in shallow)
                + ".",
            ]
        lines.append("")
        if baselines:
            lines += [
                "| loss | hybridsync / | " + " | ".join(label for _, label in RATIO_METRICS) + " |",
                "|---|---|" + "---|" * len(RATIO_METRICS),
            ]
            for loss in _losses(results):
                hyb = by.get((w, loss, "hybridsync"))
                for b in baselines:
                    other = by.get((w, loss, b))
                    if hyb is None or other is None:
                        continue
                    cells = [_ratio_cell(hyb, other, key) for key, _ in RATIO_METRICS]
                    lines.append(f"| {loss:.0%} | {b} | " + " | ".join(cells) + " |")
            lines.append("")
        skipped = [r for r in results if r["workload"] == w and r.get("skipped")]
        for r in skipped:
            lines.append(
                f"- {r['engine']} at {r['loss']:.0%}: {r['skipped']} transactions dropped "
                f"(their task never became visible within 50 ticks)."
            )
        if skipped:
            lines.append("")
    lines += ["## Checks", ""]
    bad = [r for r in results if r.get("status") != "ok" or not r.get("correct")]
    ok = len(results) - len(bad)
    lines.append(f"{ok} of {len(results)} cells finished with every check passing.")
    for r in bad:
        failed = [k for k, v in r.get("checks", {}).items() if not v]
        why = r.get("reason") or "; ".join(failed)
        lines.append(f"- {r['workload']} / {r['engine']} / {r['loss']:.0%}: {_ok(r)} {why}")
    lines.append("")
    for c in payload.get("cross_engine", []):
        verdict = "same final content" if c["equal"] else "**content differs**"
        lines.append(
            f"- cross-engine ({c['workload']}, {c['cells']} cells over engines and losses): "
            f"{verdict}"
        )
    lines.append("")
    return "\n".join(lines)


# -- plots -------------------------------------------------------------------------------


def _grid(n: int) -> tuple[int, int]:
    cols = min(3, max(1, n))
    return -(-n // cols), cols


def plot(payload: dict[str, Any], out: Path) -> list[Path]:
    """Write the two PNG figures; returns their paths (none without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    results: list[dict[str, Any]] = payload["results"]
    by = _by(results)
    workloads = _workloads(results)
    engines = _engines(results)
    losses = _losses(results)
    if not workloads:
        return []
    target = min(losses, key=lambda x: abs(x - 0.1))
    rows, cols = _grid(len(workloads))
    paths: list[Path] = []

    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, w in zip(axes.flat, workloads, strict=False):
        for e in engines:
            r = by.get((w, target, e))
            if r is None or not r.get("state"):
                continue
            xs = [p[0] for p in r["state"]]
            ys = [p[1] / 1e3 for p in r["state"]]
            ax.plot(xs, ys, label=e + ("" if r.get("status") == "ok" else f" ({_ok(r)})"))
        ax.set_title(f"{w} at {target:.0%} loss", fontsize=9)
        ax.set_xlabel("tick")
        ax.set_ylabel("state of the largest replica (KB)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(workloads) :]:
        ax.axis("off")
    fig.tight_layout()
    path = out / "state_over_time.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, w in zip(axes.flat, workloads, strict=False):
        for e in engines:
            pts = [
                (loss * 100, by[(w, loss, e)]["wire_bytes"] / 1e3)
                for loss in losses
                if (w, loss, e) in by and by[(w, loss, e)].get("wire_bytes") is not None
            ]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=e)
        ax.set_title(w, fontsize=9)
        ax.set_xlabel("loss (%)")
        ax.set_ylabel("bytes on the wire (KB)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(workloads) :]:
        ax.axis("off")
    fig.tight_layout()
    path = out / "wire_vs_loss.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths


# -- README -------------------------------------------------------------------------------


def readme_section(payload: dict[str, Any], out: Path) -> str:
    """The README text between the bench markers: the command, machine,
    versions and, per workload at each loss, hybridsync / baseline ratios."""
    results: list[dict[str, Any]] = payload["results"]
    by = _by(results)
    engines = _engines(results)
    baselines = [e for e in engines if e != "hybridsync"]
    rel = out.as_posix()
    keys = (
        ("wire_bytes", "wire bytes"),
        ("cpu_s", "CPU"),
        ("state_max_bytes", "max state"),
        ("converge_ticks", "ticks to converge"),
    )
    lines = [
        f"`{payload['command']}` (`make bench`; `--quick` checks correctness only). Machine: "
        f"{_machine_line(payload['machine'])}. Full tables: `{rel}/bench.md`, raw data "
        f"`{rel}/bench.json`, plots `{rel}/state_over_time.png` and `{rel}/wire_vs_loss.png`.",
        "",
    ]
    for note in payload.get("notes", []):
        lines += [f"Note: {note}", ""]
    if not baselines:
        lines += ["Only hybridsync ran: no ratios to report.", ""]
    else:
        lines += [
            "| workload | loss | vs | " + " | ".join(label for _, label in keys) + " |",
            "|---|---|---|" + "---|" * len(keys),
        ]
        for w in _workloads(results):
            for loss in _losses(results):
                hyb = by.get((w, loss, "hybridsync"))
                for b in baselines:
                    other = by.get((w, loss, b))
                    if hyb is None or other is None:
                        continue
                    cells = [_ratio_cell(hyb, other, key) for key, _ in keys]
                    lines.append(f"| {w} | {loss:.0%} | {b} | " + " | ".join(cells) + " |")
        lines.append("")
    bad = [r for r in results if r.get("status") != "ok" or not r.get("correct")]
    lines.append(
        f"Ratios are hybridsync / baseline (below 1.00x hybridsync uses less). "
        f"{len(results) - len(bad)} of {len(results)} cells ended with every replica equal "
        "(and, for sequential runs, the trace's final text; for KV caches, the expected bytes)"
        + (
            "; cross-engine: every engine ended with the same content on the deterministic "
            "workloads."
            if all(c["equal"] for c in payload.get("cross_engine", []))
            else "; **cross-engine content differs** (see bench.md)."
        )
    )
    return "\n".join(lines)


def update_readme(readme: Path, section: str) -> bool:
    """Replace the text between the markers of ``readme`` by ``section``;
    False (nothing written) when the file or a marker is missing."""
    if not readme.is_file():
        return False
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN_MARKER) + r".*?" + re.escape(END_MARKER), re.S)
    if not pattern.search(text):
        return False
    new = pattern.sub(lambda _: f"{BEGIN_MARKER}\n{section}\n{END_MARKER}", text, count=1)
    if new != text:
        readme.write_text(new, encoding="utf-8")
    return True


def write_report(
    results: list[dict[str, Any]],
    cross_engine: list[dict[str, Any]],
    out: Path,
    *,
    command: str,
    quick: bool,
    wall_s: float,
    notes: Sequence[str] = (),
    readme: Path | None = None,
) -> dict[str, Any]:
    """Write ``bench.json``, ``bench.md`` and the plots under ``out``, and the
    README section when ``readme`` is given. Returns the JSON payload, with
    ``files`` (paths written) and ``readme_updated``."""
    out.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "command": command,
        "quick": quick,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "wall_s": wall_s,
        "machine": machine_info(),
        "notes": list(notes),
        "results": results,
        "cross_engine": cross_engine,
    }
    files = [out / "bench.json", out / "bench.md"]
    files[0].write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    files[1].write_text(markdown(payload), encoding="utf-8")
    files += plot(payload, out)
    updated = False
    if readme is not None:
        updated = update_readme(readme, readme_section(payload, out))
    payload["files"] = [str(p) for p in files]
    payload["readme_updated"] = updated
    return payload
