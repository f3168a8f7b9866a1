"""``hybridsync demo``: the live swarm (:mod:`hybridsync.demo.swarm`, loaded when run)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hybridsync.cli.status import make_console


@click.command()
@click.option(
    "--duration",
    type=click.FloatRange(min=1.0),
    default=30.0,
    show_default=True,
    help="Seconds the agents write.",
)
@click.option(
    "--agents", type=click.IntRange(1, 16), default=3, show_default=True, help="Agent processes."
)
@click.option(
    "--loss",
    type=click.FloatRange(0.0, 0.9),
    default=0.2,
    show_default=True,
    help="Message loss rate of each agent's proxy (each direction).",
)
@click.option(
    "--duplicate",
    type=click.FloatRange(0.0, 1.0),
    default=0.1,
    show_default=True,
    help="Message duplication rate.",
)
@click.option(
    "--reorder",
    type=click.FloatRange(0.0, 1.0),
    default=0.1,
    show_default=True,
    help="Rate of messages held back so later ones overtake them.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-out"),
    show_default=True,
    help="Folder for the plot (swarm.png), summary.json and the processes' logs.",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of writes and faults.")
@click.option(
    "--converge-timeout",
    type=click.FloatRange(min=1.0),
    default=60.0,
    show_default=True,
    help="Give up waiting for convergence after this many seconds.",
)
def demo(
    duration: float,
    agents: int,
    loss: float,
    duplicate: float,
    reorder: float,
    out: Path,
    seed: int,
    converge_timeout: float,
) -> None:
    """A live swarm on loopback: a hub and agent processes behind lossy proxies.

    Each agent edits its section of a shared plan and a private notes
    document, claims and completes tasks on a shared task board, updates
    its status and grows its own 4-bit KV cache (mirrored read-only to the
    others), through a relay that loses, duplicates and reorders messages.
    At the end: convergence, bytes per channel, a pure-CRDT estimate, and a
    plot in --out. Exits 1 if the replicas did not converge.
    """
    from hybridsync.demo.swarm import DemoConfig, run_demo

    config = DemoConfig(
        duration=duration,
        agents=agents,
        loss=loss,
        duplicate=duplicate,
        reorder=reorder,
        out=out,
        seed=seed,
        converge_timeout=converge_timeout,
    )
    sys.exit(run_demo(config, make_console()))
