"""A short demonstration of hybridsync.

Run with ``python -m hybridsync.demo`` (``make demo``). It replays a real
keystroke trace, ships every step as a patch instead of the full document and
checks that each patch reproduces the next version exactly; shows fuzzy
patching merging two agents' concurrent edits; then runs a small swarm (a hub
and four agents) over a simulated network that loses, duplicates and reorders
frames, with agents editing a shared plan and a task board concurrently.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from rich.console import Console
from rich.table import Table

from hybridsync.channels import text
from hybridsync.channels.meta import CompactionPolicy
from hybridsync.sim import Network
from hybridsync.traces import load_trace


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


def replay_as_patches(name: str, every: int, console: Console) -> bool:
    """Ship a trace as patches between snapshots; True when every step is exact."""
    trace = load_trace(name)
    console.print(
        f"[bold]{name}[/]: {len(trace.txns):,} transactions, {trace.splices:,} keystroke "
        f"splices, final length {len(trace.end):,} code points"
    )
    prev = trace.start
    full_bytes = patch_bytes = text_bytes = edit_bytes = 0
    make_times: list[float] = []
    apply_times: list[float] = []
    steps = 0
    exact = True
    for _, snapshot in trace.snapshots(every):
        t0 = time.perf_counter()
        patch = text.make_patch(prev, snapshot)
        t1 = time.perf_counter()
        result, flags = text.apply_patch(patch, prev)
        t2 = time.perf_counter()
        exact &= result == snapshot and all(flags)
        make_times.append(t1 - t0)
        apply_times.append(t2 - t1)
        full_bytes += len(snapshot.encode())
        patch_bytes += len(patch.to_bytes())
        text_bytes += len(patch.to_text().encode())
        edit_bytes += sum(
            len(t.encode()) for hunk in patch.hunks for op, t in hunk.diffs if op != text.DIFF_EQUAL
        )
        steps += 1
        prev = snapshot
    exact &= prev == trace.end

    table = Table(title=f"{name}: {steps} sync steps of {every} transactions each")
    table.add_column("what crosses the wire")
    table.add_column("bytes", justify="right")
    table.add_column("vs full text", justify="right")
    for label, n in (
        ("full document every step", full_bytes),
        ("patch, standard text form", text_bytes),
        ("patch, binary form", patch_bytes),
        ("inserted + deleted text alone", edit_bytes),
    ):
        table.add_row(label, f"{n:,}", f"{n / full_bytes:.4f}")
    console.print(table)
    console.print(
        f"make_patch median {_ms(statistics.median(make_times))} ms, "
        f"apply_patch median {_ms(statistics.median(apply_times))} ms per step; "
        f"every step reproduced exactly: [bold]{'yes' if exact else 'NO'}[/]"
    )
    return exact


def concurrent_agents(console: Console) -> bool:
    """Two agents edit different paragraphs of one plan; fuzzy patching merges both."""
    base = (
        "# Plan\n\n"
        "1. Collect the failing test cases from the nightly run.\n\n"
        "2. Bisect the regression between the last two releases.\n\n"
        "3. Write up the root cause and the fix for the team.\n"
    )
    agent_a = base.replace("failing test cases", "failing test cases (47 so far)")
    agent_b = base.replace("Write up the root cause", "Draft a summary of the root cause")
    patch = text.make_patch(base, agent_a)
    merged, flags = text.apply_patch(patch, agent_b)
    ok = "(47 so far)" in merged and "Draft a summary" in merged and all(flags)
    console.print(
        "\n[bold]Concurrent edits[/]: agent A's patch, made against the base plan, "
        f"applied to agent B's edited copy -> hunks applied {flags}, both edits kept: "
        f"[bold]{'yes' if ok else 'NO'}[/]"
    )
    console.print(merged, markup=False, highlight=False)
    return ok


def lossy_swarm(console: Console, rounds: int, seed: int) -> bool:
    """A hub and four agents over 20% loss: shared plan text and a task board."""
    net = Network.star(5, seed=seed, loss=0.2, duplicate=0.1, reorder=0.1, delay=(1, 2))
    hub = net.memory("r0")
    hub.meta.policy = CompactionPolicy(max_ratio=1.5, slack_bytes=1024)
    agents = [name for name in net.names if name != "r0"]
    hub.text["plan"] = "".join(f"## {a}\n{a} has not started.\n\n" for a in agents)
    hub.meta["board"] = {f"task-{i}": {"status": "open", "owner": None} for i in range(8)}
    net.run_until_quiescent(200)
    edits = 0
    for r in range(rounds):
        for i, a in enumerate(agents):
            mem = net.memory(a)
            # Each agent rewrites its own section of the plan...
            head = f"## {a}\n"
            body = f"{a} finished step {r} of its work.\n"
            plan = mem.text["plan"]
            start = plan.index(head) + len(head)
            end = plan.index("\n\n", start)
            mem.text["plan"] = plan[:start] + body + plan[end:]
            # ...and updates the task board and its status concurrently.
            task = f"task-{(r + i) % 8}"
            with mem.transaction():
                mem.meta["board"][task]["owner"] = a
                mem.meta["board"][task]["status"] = f"step {r}"
                mem.meta[f"status-{a}"] = {"round": r, "busy": r % 2 == 0}
            edits += 3
        net.tick()
    settle_ticks = net.run_until_quiescent(2000)
    totals, links = net.totals(), net.metrics_summary()
    ok = net.converged()
    for a in agents:
        ok &= f"{a} finished step {rounds - 1} of its work." in hub.text["plan"]
        ok &= hub.meta[f"status-{a}"]["round"] == rounds - 1
    table = Table(title=f"Swarm: hub + {len(agents)} agents, 20% loss, 10% duplication, reordering")
    table.add_column("what")
    table.add_column("value", justify="right")
    for label, value in (
        ("agent writes (text sections, board, status)", f"{edits:,}"),
        ("rounds of edits, then ticks to converge", f"{rounds}, {settle_ticks}"),
        (
            "frames sent / lost / duplicated",
            f"{totals.frames_sent:,} / {totals.frames_lost:,} / {totals.frames_duplicated:,}",
        ),
        ("bytes on the wire", f"{totals.bytes_sent:,}"),
        ("re-initialisations (divergence repairs)", f"{links.resyncs}"),
        (
            "metadata epochs (compactions) / encoded bytes / live bytes",
            f"{hub.meta.metrics.compactions} / {hub.meta.measure().encoded_bytes:,}"
            f" / {hub.meta.metrics.live_bytes:,}",
        ),
        ("all replicas identical (digests)", "yes" if net.converged() else "NO"),
        ("every agent's last write everywhere", "yes" if ok else "NO"),
    ):
        table.add_row(label, value)
    console.print()
    console.print(table)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybridsync.demo", description=__doc__)
    parser.add_argument("--trace", default="seph-blog1", help="editing trace to replay")
    parser.add_argument("--every", type=int, default=500, help="transactions per sync step")
    parser.add_argument("--rounds", type=int, default=60, help="rounds of swarm edits")
    parser.add_argument("--seed", type=int, default=7, help="network simulator seed")
    args = parser.parse_args(argv)
    console = Console()
    ok = replay_as_patches(args.trace, args.every, console)
    ok &= concurrent_agents(console)
    ok &= lossy_swarm(console, args.rounds, args.seed)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
