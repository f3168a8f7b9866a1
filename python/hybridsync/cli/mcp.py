"""``hybridsync mcp``: the MCP memory server (:mod:`hybridsync.integrations.mcp`).

Its options are the server's own (``hybridsync mcp --help``); it needs the
``mcp`` extra (``pip install 'hybridsync[mcp]'``).
"""

from __future__ import annotations

import sys

import click

__all__ = ["mcp"]


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def mcp(args: tuple[str, ...]) -> None:
    """An MCP memory server on a replica (stdio, or --http); --help lists its options."""
    try:
        from hybridsync.integrations.mcp import main as run
    except ImportError as exc:
        raise click.ClickException(
            f"hybridsync mcp needs the mcp extra (pip install 'hybridsync[mcp]'): {exc}"
        ) from None
    sys.exit(run(list(args)))
