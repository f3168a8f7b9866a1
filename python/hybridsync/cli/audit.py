"""``hybridsync audit``: verify a replica's audit log and ask who wrote what;
``hybridsync keygen --signing``: make an audit signing key.

::

    hybridsync audit mem.db                       # chain, signatures, checkpoint
    hybridsync audit hub.db --against a.db --against b.db   # + heads they received
    hybridsync audit a.db --doc plan.md           # who wrote the document, entry by entry
    hybridsync audit a.db --key tasks/t1 --json   # a metadata path, as JSON

``PATH`` is a durable replica's store (its log is ``PATH.audit``) or the log
itself. The exit status is 0 when every check passes, 1 when one fails
(the report names the first bad entry), 2 for a usage error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from hybridsync.audit import AuditReport, attribute, verify_log
from hybridsync.audit.keys import key_to_pem, key_to_text, new_signing_key
from hybridsync.cli.keys import keygen as secret_keygen
from hybridsync.errors import HybridSyncError

__all__ = ["audit", "keygen"]

_path = click.Path(exists=True, path_type=Path)


def _key_path(value: str) -> list[str]:
    """``a/b/c`` or a JSON list of keys."""
    if value.startswith("["):
        try:
            keys = json.loads(value)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not a JSON list: {exc}") from None
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise click.BadParameter("a JSON list of keys (strings)")
        return keys
    return value.split("/")


@click.command()
@click.argument("path", type=_path)
@click.option(
    "--against",
    multiple=True,
    type=_path,
    metavar="PATH",
    help="Another replica's store or log: cross-check the heads of this replica it received "
    "(repeatable).",
)
@click.option("--doc", metavar="NAME", help="List the entries that touched this text document.")
@click.option(
    "--key",
    "key_path",
    metavar="PATH",
    help="List the entries that touched this metadata path (keys joined by '/', or a JSON list).",
)
@click.option("--kv", metavar="NAME", help="List the entries that touched this KV cache.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Rows shown."
)
def audit(
    path: Path,
    against: tuple[Path, ...],
    doc: str | None,
    key_path: str | None,
    kv: str | None,
    as_json: bool,
    limit: int,
) -> None:
    """Verify the audit log of the replica at PATH; with --doc/--key/--kv,
    list who wrote that document, metadata path or KV cache."""
    key = None if key_path is None else _key_path(key_path)
    try:
        report = verify_log(path, against=against)
        rows = (
            attribute(path, doc=doc, key=key, kv=kv)
            if doc is not None or key is not None or kv is not None
            else None
        )
    except HybridSyncError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        out: dict[str, Any] = {"report": report.to_json()}
        if rows is not None:
            out["entries"] = [r.to_json() for r in rows[-limit:]]
        click.echo(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        console = Console()
        _print_report(console, report)
        if rows is not None:
            table = Table(title=f"entries ({len(rows)}, the last {min(limit, len(rows))} shown)")
            for col in ("seq", "time (UTC)", "channel", "kind", "subject", "written by", "via"):
                table.add_column(col)
            for r in rows[-limit:]:
                e = r.entry
                writer = r.writer + ("" if r.confirmed else " (unconfirmed)")
                if r.writer_seq:
                    writer += f" #{r.writer_seq}"
                table.add_row(
                    str(e.seq),
                    _time(e.time_ns),
                    e.channel,
                    e.kind,
                    e.subject,
                    writer,
                    e.via or "-",
                )
            console.print(table)
    if not report.ok:
        raise SystemExit(1)


def _time(ns: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ns / 1e9, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def _print_report(console: Console, report: AuditReport) -> None:
    status = "[green]OK[/green]" if report.ok else "[red]FAILED[/red]"
    table = Table(title=f"audit log of {report.replica!r}: {status}", show_header=False)
    table.add_column("")
    table.add_column("")
    table.add_row("file", report.path)
    table.add_row("entries kept", f"{report.entries} ({report.first_seq}..{report.last_seq})")
    table.add_row("signed up to", f"entry {report.signed_seq} ({report.heads} heads)")
    table.add_row("public key", report.public_key or "-")
    if report.checked_against:
        table.add_row("checked against", ", ".join(report.checked_against))
    if report.first_bad is not None:
        table.add_row("first bad entry", f"[red]{report.first_bad}[/red]")
    console.print(table)
    for p in report.problems:
        console.print(f"[red]{p.kind}[/red]: {p.message}")
    for p in report.warnings:
        console.print(f"[yellow]{p.kind}[/yellow]: {p.message}")


@click.command()
@click.option(
    "--out",
    "out_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the key or secret to this new file (mode 600) instead of printing it.",
)
@click.option(
    "--signing",
    is_flag=True,
    help="Make an Ed25519 signing key for the audit log (PEM in a file, a base64 seed "
    "printed) instead of the swarm's secret.",
)
@click.pass_context
def keygen(ctx: click.Context, out_file: Path | None, signing: bool) -> None:
    """Make a new random swarm secret (32 random bytes, URL-safe base64), or
    with --signing an audit signing key.

    Use them as: export HYBRIDSYNC_SECRET="$(hybridsync keygen)";
    export HYBRIDSYNC_AUDIT_KEY="$(hybridsync keygen --signing)"
    """
    if not signing:
        ctx.invoke(secret_keygen, out_file=out_file)
        return
    key = new_signing_key()
    if out_file is None:
        click.echo(key_to_text(key))
        return
    try:
        fd = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise click.ClickException(f"{out_file} exists; not overwriting a key") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_to_pem(key))
    click.echo(f"new signing key written to {out_file}")
