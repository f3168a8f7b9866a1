"""Status files and tables, and ``hybridsync status``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

STATUS_FORMAT = "hybridsync-status/1"


# -- status files ----------------------------------------------------------------


def status_dir() -> Path:
    """Where ``serve`` and ``join`` write their status files."""
    explicit = os.environ.get("HYBRIDSYNC_STATUS_DIR")
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "hybridsync"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"hybridsync-{uid}"


def _safe_file_part(value: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", value)[:100]
    return cleaned if cleaned.strip(".") else "_"


def default_status_file(*, port: int | None, replica_id: str) -> Path:
    if port is not None:
        return status_dir() / f"hub-{port}.json"
    return status_dir() / f"node-{_safe_file_part(replica_id)}.json"


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=1, sort_keys=True)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _port_of(target: str) -> tuple[str | None, int] | None:
    """``(host, port)`` of ``ws://host:port``, ``host:port``, ``:port`` or ``port``."""
    if target.isdigit():
        return None, int(target)
    candidate = target if "://" in target else f"ws://{target}"
    try:
        parts = urlsplit(candidate)
        port = parts.port
    except ValueError:
        return None
    if port is None:
        return None
    return parts.hostname, port


def find_status_file(target: str) -> Path:
    """The status file for a hub URL, ``HOST:PORT``, a port, a node id, or a path."""
    as_path = Path(target)
    if as_path.suffix == ".json" and as_path.is_file():
        return as_path
    folder = status_dir()
    hostport = _port_of(target)
    if hostport is not None:
        host, port = hostport
        path = folder / f"hub-{port}.json"
        if path.is_file():
            return path
        local = host in (None, "", "localhost", "127.0.0.1", "::1", "0.0.0.0", "::")
        local = local or host == socket.gethostname()
        hint = (
            ""
            if local
            else f" (status is read on the hub's own machine; {host} may be another one)"
        )
        raise click.ClickException(
            f"no hub status for port {port} in {folder}{hint}: is `hybridsync serve` "
            "running there (as this user, with the same HYBRIDSYNC_STATUS_DIR)?"
        )
    path = folder / f"node-{_safe_file_part(target)}.json"
    if path.is_file():
        return path
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            if json.loads(path.read_text(encoding="utf-8")).get("id") == target:
                return path
        except (OSError, ValueError, AttributeError):
            continue
    raise click.ClickException(
        f"no status for {target!r} in {folder}: give a hub URL or HOST:PORT, a node id, "
        "or a status file"
    )


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- tables ----------------------------------------------------------------------


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    delta = max(0.0, now - ts)
    if delta < 60:
        return f"{delta:.1f} s ago"
    if delta < 3600:
        return f"{delta / 60:.1f} min ago"
    return f"{delta / 3600:.1f} h ago"


def links_table(links: list[dict[str, Any]], *, now: float, title: str | None = None) -> Table:
    """One row per link, from :class:`~hybridsync.net.PeerStatus` records as dicts."""
    table = Table(title=title, title_justify="left")
    table.add_column("peer")
    table.add_column("link")
    table.add_column("state")
    for column in (
        "exchanges",
        "frames out/in",
        "bytes out/in",
        "KV pages out/in",
        "resyncs",
        "retransmits",
        "stale",
        "rejected",
        "last exchange",
    ):
        table.add_column(column, justify="right")
    for s in links:
        m = s.get("link", {})
        side = "upstream" if s.get("role") == "client" else "child"
        if s.get("connected"):
            state = Text(f"connected {s.get('address') or ''}".strip(), style="green")
        else:
            state = Text("disconnected", style="yellow")
        table.add_row(
            Text(str(s.get("peer_id", "?"))),
            side,
            state,
            f"{s.get('exchanges', 0):,}",
            f"{m.get('frames_sent', 0):,}/{m.get('frames_received', 0):,}",
            f"{_human_bytes(m.get('bytes_sent', 0))}/{_human_bytes(m.get('bytes_received', 0))}",
            f"{m.get('kv_pages_sent', 0):,}/{m.get('kv_pages_received', 0):,}",
            f"{m.get('resyncs', 0) + m.get('kv_resyncs', 0):,}",
            f"{m.get('retransmits', 0):,}",
            f"{m.get('stale_frames', 0):,}",
            f"{s.get('rejected', 0):,}",
            _ago(s.get("last_exchange"), now),
        )
    if not links:
        table.add_row("(no links yet)", *([""] * 11))
    return table


def make_console() -> Console:
    """A console; 120 columns wide when stdout is not a terminal (logs, pipes)."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=120)


def status_renderable(status: dict[str, Any], *, now: float | None = None) -> Group:
    """The header lines and link table of a status record."""
    now = time.time() if now is None else now
    meta = status.get("meta", {})
    lines = [
        Text.assemble(
            ("replica ", "dim"),
            (str(status.get("id")), "bold"),
            ("  pid ", "dim"),
            str(status.get("pid")),
            ("  up ", "dim"),
            _ago(status.get("started"), now).replace(" ago", ""),
        ),
    ]
    if status.get("listening"):
        lines.append(Text.assemble(("serving  ", "dim"), str(status["listening"])))
    if status.get("upstream"):
        lines.append(Text.assemble(("upstream ", "dim"), str(status["upstream"])))
    if status.get("mirror"):
        lines.append(Text.assemble(("folder   ", "dim"), str(status["mirror"])))
    lines.append(
        Text.assemble(
            ("documents ", "dim"),
            f"{status.get('documents', 0):,} ({_human_bytes(status.get('text_bytes', 0))})",
            ("  metadata ", "dim"),
            f"{_human_bytes(meta.get('live_bytes', 0))} live, "
            f"{_human_bytes(meta.get('encoded_bytes', 0))} CRDT, epoch {meta.get('epoch', 0)}",
            ("  digest ", "dim"),
            str(status.get("digest", ""))[:16],
        )
    )
    kv = status.get("kv") or {}
    if kv.get("caches"):
        lines.append(
            Text.assemble(
                ("KV caches ", "dim"),
                f"{kv['caches']:,} ({kv.get('owned', 0):,} owned here, the rest mirrors), "
                f"{kv.get('tokens', 0):,} tokens, {_human_bytes(kv.get('bytes', 0))}",
            )
        )
    if status.get("handshakes_failed"):
        lines.append(
            Text(f"connections refused before authentication: {status['handshakes_failed']:,}")
        )
    links = list(status.get("links", []))
    return Group(*lines, links_table(links, now=now))


@click.command()
@click.argument("target", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the raw status record (JSON).")
def status(target: str | None, as_json: bool) -> None:
    """Show per-link metrics of a hub or node running on this machine.

    TARGET is the hub's URL or HOST:PORT (or just PORT), a node's id, or a
    status file. Without TARGET: every hub and node of this user.

    Columns: bytes and frames sent/received by the sync engine, completed
    exchanges, KV cache pages sent/received, resyncs (divergence detections
    that re-initialised a document or a KV page table), retransmissions,
    stale frames (duplicates, reordered), rejected messages (forged,
    replayed, undecodable) and the last exchange.
    """
    console = make_console()
    if target is None:
        folder = status_dir()
        paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
        if not paths:
            raise click.ClickException(f"no hub or node status in {folder}")
    else:
        paths = [find_status_file(target)]
    records: list[dict[str, Any]] = []
    failed = False
    for path in paths:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            console.print(f"[red]cannot read {escape(str(path))}: {escape(str(exc))}[/]")
            failed = True
            continue
        if record.get("format") != STATUS_FORMAT:
            console.print(f"[red]{escape(str(path))} is not a hybridsync status file[/]")
            failed = True
            continue
        alive = _process_alive(int(record.get("pid", 0)))
        record["running"] = alive
        records.append(record)
        if as_json:
            continue
        if not alive:
            console.print(
                f"[yellow]{escape(str(path))}: process {record.get('pid')} is not running "
                f"(last update {_ago(record.get('updated'), time.time())})[/]"
            )
            failed = True
        console.print(status_renderable(record))
    if as_json:
        click.echo(json.dumps(records[0] if target is not None and records else records, indent=1))
    if failed and target is not None:
        sys.exit(1)
