"""The ``hybridsync`` command: run hubs and nodes, show link status, run the demo.

::

    export HYBRIDSYNC_SECRET="$(hybridsync keygen)"     # the swarm's shared secret
    hybridsync serve --port 8765 --dir ./hub-docs        # a hub (Ctrl-C stops it)
    hybridsync join ws://hub-host:8765 --id agent-1 --dir ./docs
    hybridsync join ws://hub-host:8765 --id rack-2 --serve 0.0.0.0:8766   # a hub of hubs
    hybridsync status ws://127.0.0.1:8765                # per-link metrics of that hub
    hybridsync demo                                      # a live swarm on loopback
    hybridsync mcp --join ws://hub-host:8765 --data mem.db   # an MCP memory server on a replica
    hybridsync audit mem.db --doc plan.md                # verify the audit log; who wrote it

**Secrets** come from an environment variable (``--secret-env``, default
``HYBRIDSYNC_SECRET``) or a file (``--secret-file``), never from the command
line (arguments are visible to every user in ``ps``). The secret is the
UTF-8 bytes of that value (surrounding whitespace removed), at least 16 bytes.
It is never printed or written anywhere.

**Documents on disk.** ``--dir DIR`` mirrors the replica's text documents to
files, both ways: a file ``DIR/notes/a.md`` is the document ``notes/a.md``.
Files edited locally are read within ``--scan-interval`` seconds; a local
edit that meets a concurrent remote one is merged three-way (nothing is
lost). Hidden files and names that cannot be file paths are not mirrored.

**Status.** Every ``serve`` and ``join`` writes a status file (JSON, mode
0600, rewritten every ``--status-interval`` seconds, removed on exit) in the
status directory: ``$HYBRIDSYNC_STATUS_DIR``, else
``$XDG_RUNTIME_DIR/hybridsync``, else ``<tmp>/hybridsync-<uid>``. A hub's
file is ``hub-<port>.json``, a node's ``node-<id>.json``. ``hybridsync
status URL`` reads the file of the hub listening on that URL's port, so it
runs on the hub's machine (status never crosses the network, and reading it
needs the file permission of the user running the hub, nothing more). The
file holds per-link metrics and the replica's digest, never a secret.
"""

from __future__ import annotations

import click

from hybridsync.bench.cli import bench
from hybridsync.cli.audit import audit, keygen
from hybridsync.cli.demo import demo
from hybridsync.cli.keys import load_secret
from hybridsync.cli.mcp import mcp
from hybridsync.cli.mirror import FolderMirror
from hybridsync.cli.node import join, serve
from hybridsync.cli.status import find_status_file, status, status_dir

__all__ = ["FolderMirror", "find_status_file", "load_secret", "main", "status_dir"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hybridsync", message="hybridsync %(version)s")
def main() -> None:
    """hybridsync: keep an agent swarm's working memory in sync.

    Secrets come from $HYBRIDSYNC_SECRET (or --secret-env / --secret-file),
    never from the command line.
    """


for command in (serve, join, status, keygen, demo, bench, mcp, audit):
    main.add_command(command)
