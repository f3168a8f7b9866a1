"""``hybridsync bench``: the comparison suite's command (registered by :mod:`hybridsync.cli`)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

__all__ = ["bench"]


def make_console() -> Console:
    """A console; 120 columns wide when stdout is not a terminal (logs, pipes)."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=120)


def _bench_command(ctx: click.Context) -> str:
    """The ``hybridsync bench`` command line, with the options given explicitly."""
    from click.core import ParameterSource

    parts = ["hybridsync", "bench"]
    for param in ctx.command.params:
        if param.name is None or not isinstance(param, click.Option):
            continue
        if ctx.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
            continue
        flag = param.opts[0]
        parts += [flag] if param.is_flag else [flag, str(ctx.params[param.name])]
    return " ".join(parts)


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@click.command()
@click.option(
    "--quick",
    is_flag=True,
    help="Correctness only: small workloads (a 300-transaction trace prefix, small caches), "
    "cells in parallel; the README is left alone.",
)
@click.option(
    "--workloads",
    "families",
    default="text,meta,kv",
    show_default=True,
    help="Workload families (text, meta, kv) or workload names (text-seq-4, meta-storm, ...).",
)
@click.option(
    "--engines",
    "engine_names",
    default="hybridsync,pycrdt,loro",
    show_default=True,
    help="Engines to run; those not installed are skipped with a note.",
)
@click.option(
    "--faults",
    "--loss",
    "losses",
    default="0,0.1,0.3",
    show_default=True,
    help="Fault levels p: each message is lost, duplicated and reordered with probability p.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("benches/results/bench"),
    show_default=True,
    help="Folder for bench.md, bench.json and the plots.",
)
@click.option("--no-readme", is_flag=True, help="Do not regenerate README.md's bench section.")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of workloads and faults."
)
@click.option(
    "--every",
    type=click.IntRange(min=1),
    default=None,
    help="Transactions per turn/chunk of the text workloads [default: 1000; 50 with --quick].",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Cells run at once [default: 1; the number of cores with --quick].",
)
@click.option(
    "--cpu-budget",
    type=click.FloatRange(min=1.0),
    default=None,
    help="CPU seconds a cell may use before it is reported as DNF [default: 600; 60 quick].",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=None,
    help="Runs per cell; CPU is the best of them [default: 3; 1 with --quick].",
)
@click.option(
    "--instructions",
    type=click.Choice(["auto", "perf", "callgrind", "off"]),
    default="auto",
    show_default=True,
    help="Count instructions of the timed region: the hardware counter (perf) in every run, "
    "or callgrind on the quick form of each cell without faults; auto picks perf where the "
    "machine has it, else callgrind where valgrind is installed (off with --quick).",
)
def bench(
    quick: bool,
    families: str,
    engine_names: str,
    losses: str,
    out: Path,
    no_readme: bool,
    seed: int,
    every: int | None,
    jobs: int | None,
    cpu_budget: float | None,
    repeats: int | None,
    instructions: str,
) -> None:
    """Compare hybridsync with pure-CRDT stacks (pycrdt, Loro) over a simulated lossy network.

    Runs every workload (text: an editing trace replayed by 2, 4 and 8
    agents in turns and by 4 concurrently, and the revision histories of four
    documents rewritten whole by 2, 4 and 8 agents; meta: an overwrite storm
    and a task board; kv: agents growing 4-bit caches) through every engine at
    every fault level, each cell in a fresh process (--repeats times), with
    the baselines driven as benches/BASELINES.md describes, and writes
    bench.md, bench.json and PNG plots to --out and (without --quick or
    --no-readme) README.md's bench section. Exits 1 if any cell is incorrect
    or fails (with --quick, also if one does not finish).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from hybridsync.bench import instructions as counters
    from hybridsync.bench import report, runner, workloads

    console = make_console()
    wanted = _csv(families)
    all_names = workloads.workload_names(["text", "meta", "kv"], quick=quick, seed=seed)
    names = [n for n in all_names if n in wanted or n.split("-")[0] in wanted]
    unknown = [w for w in wanted if w not in all_names and w not in ("text", "meta", "kv")]
    if unknown or not names:
        raise click.UsageError(
            f"unknown workloads {', '.join(unknown) or families!r}; "
            f"known: text, meta, kv, {', '.join(all_names)}"
        )
    available = runner.engines()
    notes = runner.engine_notes()
    chosen: list[str] = []
    for name in _csv(engine_names):
        if name in available:
            chosen.append(name)
        elif name in ("pycrdt", "loro"):
            if not any(name in n or "baselines" in n for n in notes):
                notes.append(f"engine {name} unavailable: skipped")
        else:
            raise click.UsageError(f"unknown engine {name!r} (known: hybridsync, pycrdt, loro)")
    if not chosen:
        raise click.UsageError("no engine to run")
    try:
        loss_rates = [float(x) for x in _csv(losses)]
    except ValueError:
        raise click.UsageError(
            f"--loss takes numbers separated by commas, got {losses!r}"
        ) from None
    if any(not 0.0 <= x < 1.0 for x in loss_rates):
        raise click.UsageError("fault levels must lie in [0, 1)")
    counter = "" if instructions == "off" or (quick and instructions == "auto") else instructions
    if counter == "auto":
        counter = (
            "perf"
            if counters.perf_counter() is not None
            else "callgrind"
            if counters.callgrind_usable()
            else ""
        )
        if not counter:
            notes.append("no instruction counter here (no perf counter, no valgrind): CPU only")
    elif counter == "perf" and counters.perf_counter() is None:
        raise click.UsageError("this machine has no hardware instruction counter")
    elif counter == "callgrind" and not counters.callgrind_usable():
        raise click.UsageError("callgrind needs valgrind, its callgrind.h and a C compiler")
    budget = cpu_budget if cpu_budget is not None else (60.0 if quick else 600.0)
    specs = [
        runner.CellSpec(w, e, x, seed=seed, quick=quick, every=every, cpu_budget_s=budget)
        for w in names
        for x in loss_rates
        for e in chosen
    ]
    for note in notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    command = _bench_command(click.get_current_context())
    started = time.perf_counter()
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("bench", total=len(specs))

        def done(spec: runner.CellSpec, result: dict[str, Any]) -> None:
            verdict = (
                "ok"
                if result.get("correct")
                else result.get("status", "?")
                if result.get("status") != "ok"
                else "INCORRECT"
            )
            progress.console.print(
                f"  {spec.workload:<12} {spec.engine:<10} faults {spec.loss:>4.0%}  {verdict}"
            )
            progress.advance(task)

        results = runner.run_cells(
            specs,
            jobs=jobs or ((os.cpu_count() or 1) if quick else 1),
            repeats=repeats or (1 if quick else 3),
            instructions=counter,
            on_done=done,
        )
    wall = time.perf_counter() - started
    cross = runner.cross_engine_checks(results)
    payload = report.write_report(
        results,
        cross,
        out,
        command=command,
        quick=quick,
        wall_s=wall,
        notes=notes,
        readme=None if (quick or no_readme) else Path("README.md"),
    )
    failed = [
        r
        for r in results
        if r.get("status") == "error"
        or r.get("correct") is False
        or (quick and r.get("status") == "dnf")
    ]
    failed_cross = [c for c in cross if not c["equal"]]
    console.print(
        f"{len(results)} cells in {wall:.1f} s; {len(results) - len(failed)} passed; "
        f"report: {', '.join(payload['files'])}"
        + ("; README.md updated" if payload["readme_updated"] else "")
    )
    for r in failed:
        why = r.get("reason") or ", ".join(k for k, v in r.get("checks", {}).items() if not v)
        where = f"{r['workload']} / {r['engine']} / faults {r['loss']:.0%}"
        console.print(f"[red]FAILED[/] {where}: {escape(why)}")
    for c in failed_cross:
        console.print(f"[red]FAILED[/] cross-engine content differs on {c['workload']}")
    if failed or failed_cross:
        sys.exit(1)
