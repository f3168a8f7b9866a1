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
    ("instructions", "instructions"),
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
    if key == "instructions":
        return f"{value / 1e6:,.1f} M"
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


def _cpu_runs(results: Sequence[dict[str, Any]]) -> str:
    """How CPU was taken: one run, or the best of several."""
    runs = max((len(r.get("cpu_s_runs") or [None]) for r in results), default=1)
    return "one run per cell" if runs <= 1 else f"the best of {runs} runs"


def instructions_table(payload: dict[str, Any]) -> list[str]:
    """Markdown lines: per workload and engine, the instructions of the cells
    without faults, and hybridsync / the best baseline (empty when none was
    counted)."""
    results: list[dict[str, Any]] = payload["results"]
    by = _by(results)
    engines = _engines(results)
    baselines = [e for e in engines if e != "hybridsync"]
    rows = [
        w
        for w in _workloads(results)
        if any((r := by.get((w, 0.0, e))) and r.get("instructions") for e in engines)
    ]
    if not rows:
        return []
    lines = [
        "| workload | " + " | ".join(f"{e} (M)" for e in engines) + " | hybridsync / best |",
        "|---|" + "---|" * (len(engines) + 1),
    ]
    for w in rows:
        cells = []
        for e in engines:
            r = by.get((w, 0.0, e))
            value = None if r is None else r.get("instructions")
            cells.append(NONE if value is None else f"{value / 1e6:,.1f}")
        hyb = by.get((w, 0.0, "hybridsync"))
        others = [o for b in baselines if (o := by.get((w, 0.0, b))) is not None]
        ratio = _best_cell(hyb, others, "instructions") if hyb and others else NONE
        lines.append(f"| {w} | " + " | ".join(cells) + f" | {ratio} |")
    return lines


def _instructions(r: dict[str, Any]) -> str:
    value = r.get("instructions")
    if value is None:
        return NONE
    cell = r.get("instructions_cell")
    return _num(value, "instructions") + (f" ({cell})" if cell and cell != "full" else "")


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
        "replica, one-tick delay). At fault level p every message is lost, duplicated and "
        "delayed out of order (1-3 ticks) with probability p each, drawn from one seeded "
        "generator. The CRDTs run over an acknowledged, ordered channel with hybridsync's "
        "retransmission timer (`benches/BASELINES.md`). Wire bytes and messages count "
        "everything a replica sent (retransmissions, polls, acknowledgements and framing "
        "included). CPU is process time spent applying transactions and running ticks ("
        + _cpu_runs(results)
        + "); instructions count the same region (a hardware counter, or "
        "callgrind on the workload's quick form: see the column's source). Peak RSS is the "
        "cell's own high-water mark above its interpreter baseline (each cell runs in a fresh "
        "process). State is `Engine.state_bytes()` of the largest replica, each engine's smallest"
        " honest state: for hybridsync its texts, every link's shadow and backup shadow (each "
        "string object once), the encoded metadata CRDT and KV pages plus page tables; pycrdt's "
        "encoded document (GC on); Loro's shallow snapshot (its full snapshot with history is "
        "listed too). Ticks to converge count from the last transaction until every replica is "
        "equal and nothing is left in flight. Ratios are hybridsync / baseline: below 1.00x "
        "hybridsync uses less; where a baseline uses less the table says so.",
        "",
    ]
    for w in _workloads(results):
        first = next(r for r in results if r["workload"] == w)
        lines += [f"## {w}", "", first.get("description", ""), ""]
        lines += [
            "| faults | engine | wire bytes | messages | CPU | instructions | "
            "peak RSS (own / total) | max state | final state | full state | "
            "ticks to converge | ticks | correct |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
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
                    f"{_instructions(r)} | "
                    f"{rss} | {_bytes(r.get('state_max_bytes'))} | "
                    f"{_bytes(r.get('state_final_bytes'))} | "
                    f"{_bytes(r.get('state_full_bytes'))} | "
                    f"{_num(r.get('converge_ticks'), 'ticks')} | {_num(r.get('ticks'), 'ticks')} "
                    f"| {_ok(r)}{extra} |"
                )
        lines.append("")
        if baselines:
            lines += [
                "| faults | hybridsync / | "
                + " | ".join(label for _, label in RATIO_METRICS)
                + " |",
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
    counted = instructions_table(payload)
    if counted:
        lines += [
            "## Instructions",
            "",
            "Instructions of the timed region in the cells without faults (millions; "
            "see each cell's source in the tables above).",
            "",
            *counted,
            "",
        ]
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


#: The README's tables: (title, workload name prefix).
FAMILIES: tuple[tuple[str, str], ...] = (
    ("Text, keystroke operations (an editing trace)", "text-seq"),
    ("Text, keystroke operations, concurrent", "text-conc"),
    ("Text, whole-document revisions (agents regenerating documents)", "text-rev"),
    ("Metadata", "meta"),
    ("KV caches", "kv"),
)

#: The README's ratio columns: (result key, label).
README_METRICS: tuple[tuple[str, str], ...] = (
    ("wire_bytes", "wire bytes"),
    ("cpu_s", "CPU"),
    ("instructions", "instructions"),
    ("state_max_bytes", "max state"),
    ("converge_ticks", "ticks to converge"),
)


def _best_cell(hyb: dict[str, Any], others: list[dict[str, Any]], key: str) -> str:
    """hybridsync / the best baseline on ``key`` (the smallest value among the
    baselines that finished correctly), naming that baseline; a loss in words."""
    if hyb.get("status") != "ok" or not hyb.get("correct"):
        return f"hybridsync {_ok(hyb)}"
    valid = [o for o in others if o.get("status") == "ok" and o.get("correct")]
    failed = [f"{o['engine']} {_ok(o)}" for o in others if o not in valid]
    candidates = [o for o in valid if o.get(key) is not None]
    if hyb.get(key) is None or not candidates:
        return ", ".join(failed) or NONE
    best = min(candidates, key=lambda o: float(o[key]))
    r = _ratio(hyb.get(key), best.get(key))
    if r is None:
        return f"{_num(hyb.get(key), key)} vs {_num(best.get(key), key)} ({best['engine']})"
    text = f"{r:.2f}x {best['engine']}"
    if r > 1.0:
        text = f"{r:.2f}x (**{best['engine']} wins**)"
    elif r < 1.0:
        text = f"**{r:.2f}x** {best['engine']}"
    return text + (f"; {', '.join(failed)}" if failed else "")


def readme_section(payload: dict[str, Any], out: Path) -> str:
    """The README text between the bench markers: the command, machine and
    versions; per family, hybridsync / best-baseline ratios per workload and
    fault level; and each engine's state at the end of the 0% cells."""
    results: list[dict[str, Any]] = payload["results"]
    by = _by(results)
    engines = _engines(results)
    baselines = [e for e in engines if e != "hybridsync"]
    rel = out.as_posix()
    lines = [
        f"`{payload['command']}` (`make bench` runs the suite with its defaults; `--quick` checks "
        f"correctness only). Machine: "
        f"{_machine_line(payload['machine'])}. Full tables: `{rel}/bench.md`, raw data "
        f"`{rel}/bench.json`, plots `{rel}/state_over_time.png` and `{rel}/wire_vs_loss.png`.",
        "",
    ]
    for note in payload.get("notes", []):
        lines += [f"Note: {note}", ""]
    if not baselines:
        lines += ["Only hybridsync ran: no ratios to report.", ""]
    workloads = _workloads(results)
    sources = {r.get("instructions_cell") for r in results if r.get("instructions") is not None}
    metrics = [m for m in README_METRICS if m[0] != "instructions" or sources]
    for title, prefix in FAMILIES if baselines else ():
        rows = [w for w in workloads if w.startswith(prefix)]
        if not rows:
            continue
        lines += [
            f"**{title}**: hybridsync / the best baseline on each metric",
            "",
            "| workload | faults | " + " | ".join(label for _, label in metrics) + " |",
            "|---|---|" + "---|" * len(metrics),
        ]
        for w in rows:
            for loss in _losses(results):
                hyb = by.get((w, loss, "hybridsync"))
                others = [o for b in baselines if (o := by.get((w, loss, b))) is not None]
                if hyb is None or not others:
                    continue
                cells = [_best_cell(hyb, others, key) for key, _ in metrics]
                lines.append(f"| {w} | {loss:.0%} | " + " | ".join(cells) + " |")
        lines.append("")
    state_rows = [w for w in workloads if any(by.get((w, 0.0, e)) for e in engines)]
    if state_rows:
        lines += [
            "**State** (largest replica at the end of the 0% cell; hybridsync: texts, every "
            "link's shadow and backup (each string object once: a link in step shares the "
            "replica's text), metadata document, KV pages and page tables; pycrdt: "
            "the GC'd document; Loro: shallow snapshot, full snapshot with history in brackets)",
            "",
            "| workload | " + " | ".join(engines) + " | hybridsync / best |",
            "|---|" + "---|" * (len(engines) + 1),
        ]
        for w in state_rows:
            cells = []
            for e in engines:
                r = by.get((w, 0.0, e))
                if r is None:
                    cells.append(NONE)
                    continue
                text = _bytes(r.get("state_final_bytes"))
                if r.get("state_full_bytes"):
                    text += f" ({_bytes(r['state_full_bytes'])})"
                cells.append(text)
            hyb = by.get((w, 0.0, "hybridsync"))
            others = [o for b in baselines if (o := by.get((w, 0.0, b))) is not None]
            ratio = _best_cell(hyb, others, "state_final_bytes") if hyb and others else NONE
            lines.append(f"| {w} | " + " | ".join(cells) + f" | {ratio} |")
        lines.append("")
    bad = [r for r in results if r.get("status") != "ok" or not r.get("correct")]
    counted = (
        "instructions: callgrind on the quick form of each cell without faults"
        if sources == {"quick"}
        else "instructions: hardware counter, whole cell"
        if sources == {"full"}
        else "instructions: not measured"
        if not sources
        else "instructions: mixed sources (see bench.md)"
    )
    lines.append(
        "Ratios are hybridsync / baseline (below 1.00x hybridsync uses less; the best "
        f"baseline is chosen per metric); CPU: {_cpu_runs(results)}; {counted}. "
        f"{len(results) - len(bad)} of {len(results)} cells ended with every replica equal "
        "(and, for sequential runs, the trace's or the history's final text; for KV caches, "
        "the expected bytes)"
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
