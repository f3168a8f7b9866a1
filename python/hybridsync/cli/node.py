"""Running a hub and/or a node: ``hybridsync serve`` and ``hybridsync join``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.logging import RichHandler

from hybridsync.cli.keys import _secret_options, load_secret
from hybridsync.cli.mirror import FolderMirror
from hybridsync.cli.nats import NatsOptions, nats_click_options, parse_nats_options
from hybridsync.cli.status import (
    STATUS_FORMAT,
    default_status_file,
    make_console,
    status_renderable,
    write_json_atomic,
)
from hybridsync.errors import HybridSyncError
from hybridsync.memory import Memory
from hybridsync.net._common import safe_url

log = logging.getLogger("hybridsync.cli")

# -- running a hub and/or a node ------------------------------------------------------


def _server_ssl(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None:
        raise click.UsageError("--tls-key needs --tls-cert")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise click.UsageError(f"cannot load the TLS certificate/key: {exc}") from None
    return context


def _client_ssl(ca: Path | None) -> ssl.SSLContext | None:
    if ca is None:
        return None
    try:
        return ssl.create_default_context(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise click.UsageError(f"cannot load the CA file {ca}: {exc}") from None


def _normalise_url(url: str) -> str:
    return url if "://" in url else f"ws://{url}"


def _parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _setup_logging(console: Console, verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = RichHandler(console=console, show_path=False, markup=False, rich_tracebacks=False)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root = logging.getLogger("hybridsync")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@dataclasses.dataclass
class _NodeOptions:
    replica_id: str
    secret: bytes = dataclasses.field(repr=False)
    url: str | None = None
    serve: tuple[str, int] | None = None
    server_ssl: ssl.SSLContext | None = None
    client_ssl: ssl.SSLContext | None = None
    hub_id: str | None = None
    folder: Path | None = None
    data: Path | None = None
    status_file: Path | None = None
    write_status: bool = True
    status_interval: float = 1.0
    scan_interval: float = 0.25
    live: bool = True
    exit_sync_timeout: float = 5.0
    nats: NatsOptions | None = None
    serve_nats: bool = False


def _snapshot(
    memory: Memory,
    hub: Any,
    session: Any,
    options: _NodeOptions,
    started: float,
) -> dict[str, Any]:
    links: list[dict[str, Any]] = []
    if session is not None:
        links.append(dataclasses.asdict(session.status()))
    if hub is not None:
        links.extend(dataclasses.asdict(s) for s in hub.peers.values())
    return {
        "format": STATUS_FORMAT,
        "id": memory.replica_id,
        "pid": os.getpid(),
        "started": started,
        "updated": time.time(),
        "listening": hub.url if hub is not None else None,
        "upstream": safe_url(session.url) if session is not None else None,
        "upstream_hub": getattr(session, "current_hub", None),
        "mirror": str(options.folder) if options.folder is not None else None,
        "digest": memory.digest(),
        "documents": len(memory.text),
        "text_bytes": sum(len(v.encode()) for v in memory.text.values()),
        "meta": dataclasses.asdict(memory.meta.measure()),
        "kv": {
            "caches": len(memory.kv),
            "owned": sum(c.owner == memory.replica_id for c in memory.kv.values()),
            "tokens": sum(c.tokens for c in memory.kv.values()),
            "bytes": sum(c.nbytes for c in memory.kv.values()),
        },
        "handshakes_failed": hub.handshakes_failed if hub is not None else 0,
        "links": links,
    }


async def _run_node(options: _NodeOptions, console: Console) -> int:
    try:
        memory = Memory(options.replica_id, path=options.data)
    except HybridSyncError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    try:
        return await _run_node_with(memory, options, console)
    finally:
        memory.close()


async def _run_node_with(memory: Memory, options: _NodeOptions, console: Console) -> int:
    from hybridsync.net import SyncTimeoutError, connect, serve

    mirror = FolderMirror(memory, options.folder) if options.folder is not None else None
    if mirror is not None:
        mirror.scan()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    started = time.time()
    async with contextlib.AsyncExitStack() as stack:
        hub: Any = None
        session: Any = None
        if options.nats is not None:
            hub, session = await _start_nats(memory, options, options.nats, stack)
        if options.serve is not None:
            host, port = options.serve
            try:
                hub = await stack.enter_async_context(
                    serve(memory, host, port, secret=options.secret, ssl=options.server_ssl)
                )
            except OSError as exc:
                raise click.ClickException(
                    f"cannot listen on {host}:{port}: {exc.strerror or exc}"
                ) from None
            click.echo(f"hybridsync: replica {memory.replica_id!r} serving on {hub.url}", err=False)
        if options.url is not None:
            session = await stack.enter_async_context(
                connect(
                    memory,
                    options.url,
                    secret=options.secret,
                    ssl=options.client_ssl,
                    hub_id=options.hub_id,
                )
            )
            click.echo(f"hybridsync: replica {memory.replica_id!r} joining {safe_url(options.url)}")
        status_path: Path | None = None
        if options.write_status:
            status_path = options.status_file or default_status_file(
                port=hub.port if hub is not None and hub.port else None,
                replica_id=memory.replica_id,
            )
            click.echo(f"hybridsync: status file {status_path}")
        sys.stdout.flush()

        def notify() -> None:
            if hub is not None:
                hub.notify()
            if session is not None:
                session.notify()

        def render() -> Group:
            return status_renderable(_snapshot(memory, hub, session, options, started))

        next_status = 0.0
        live_cm: contextlib.AbstractContextManager[Any] = (
            Live(render(), console=console, refresh_per_second=2, transient=False)
            if options.live
            else contextlib.nullcontext()
        )
        try:
            with live_cm as live:
                while not stop.is_set():
                    if session is not None and session.error is not None:
                        raise click.ClickException(f"the session stopped: {session.error}")
                    if mirror is not None:
                        if mirror.scan():
                            notify()
                        mirror.flush()
                    now = time.monotonic()
                    if now >= next_status:
                        next_status = now + options.status_interval
                        if status_path is not None:
                            snapshot = _snapshot(memory, hub, session, options, started)
                            try:
                                write_json_atomic(status_path, snapshot)
                            except OSError as exc:
                                log.warning("cannot write the status file: %s", exc)
                        if live is not None:
                            live.update(render())
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(stop.wait(), options.scan_interval)
            if session is not None and session.error is None:
                # Hand the latest local changes to the hub before leaving.
                if mirror is not None and mirror.scan():
                    notify()
                try:
                    await session.sync(timeout=options.exit_sync_timeout)
                except SyncTimeoutError:
                    log.warning(
                        "the hub did not acknowledge the latest changes within %.0f s; "
                        "they are not synchronised",
                        options.exit_sync_timeout,
                    )
                except HybridSyncError as exc:
                    log.warning("final synchronisation failed: %s", exc)
                if mirror is not None:
                    mirror.flush()
        finally:
            if status_path is not None:
                with contextlib.suppress(OSError):
                    status_path.unlink()
    click.echo(f"hybridsync: replica {memory.replica_id!r} stopped (digest {memory.digest()})")
    return 0


async def _start_nats(
    memory: Memory, options: _NodeOptions, nats: NatsOptions, stack: contextlib.AsyncExitStack
) -> tuple[Any, Any]:
    """The NATS side of ``serve --nats`` and ``join --nats``: a hub on the
    swarm's subjects (serve), and a link upward to the first live hub of the
    list (join; serve: of the hubs listed before this one)."""
    from hybridsync.net.nats import connect_nats, open_nats, serve_nats

    try:
        nc = await open_nats(nats.servers, name=memory.replica_id, creds=nats.creds, tls=nats.tls)
    except OSError as exc:
        raise click.ClickException(str(exc)) from None
    stack.push_async_callback(nc.close)
    hub = None
    upstream = nats.hubs
    if options.serve_nats:
        hub = await stack.enter_async_context(
            serve_nats(memory, nc, secret=options.secret, swarm=nats.swarm)
        )
        click.echo(f"hybridsync: replica {memory.replica_id!r} serving on NATS {hub.url}")
        upstream = nats.hubs[: nats.hubs.index(memory.replica_id)]
    session = None
    if upstream:
        session = await stack.enter_async_context(
            connect_nats(memory, nc, hubs=upstream, secret=options.secret, swarm=nats.swarm)
        )
        click.echo(
            f"hybridsync: replica {memory.replica_id!r} joining the first live hub of "
            f"{', '.join(upstream)} over NATS"
        )
    return hub, session


def _run(coro_factory: Callable[[], Any]) -> int:
    try:
        result = asyncio.run(coro_factory())
    except KeyboardInterrupt:  # pragma: no cover - signal handlers normally catch it
        return 130
    return int(result)


_common_node_options = [
    click.option(
        "--data",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Keep the replica durable in this file (SQLite): a restart resumes its "
        "memory and links where they stopped.",
    ),
    click.option(
        "--dir",
        "folder",
        type=click.Path(file_okay=False, path_type=Path),
        help="Mirror the text documents to files in this folder, both ways.",
    ),
    click.option(
        "--status-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Where to write the status JSON (default: in the status directory).",
    ),
    click.option("--no-status-file", is_flag=True, help="Do not write a status file."),
    click.option(
        "--status-interval",
        type=click.FloatRange(min=0.1),
        default=1.0,
        show_default=True,
        help="Seconds between status updates.",
    ),
    click.option(
        "--scan-interval",
        type=click.FloatRange(min=0.01),
        default=0.25,
        show_default=True,
        help="Seconds between scans of --dir.",
    ),
    click.option(
        "--live/--no-live",
        default=None,
        help="Show a live status table (default: when stdout is a terminal).",
    ),
    click.option("-v", "--verbose", count=True, help="Log transport events (-vv: debug)."),
]


def _apply(decorators: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def wrap(fn: Any) -> Any:
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return wrap


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="Port to listen on (0: any free port, printed at start).",
)
@click.option("--id", "replica_id", default="hub", show_default=True, help="This replica's id.")
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Serve wss:// with this certificate chain (PEM).",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The certificate's private key (PEM), if not in --tls-cert.",
)
@_apply(_secret_options)
@_apply(nats_click_options)
@_apply(_common_node_options)
def serve(
    host: str,
    port: int,
    replica_id: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    nats_url: str | None,
    swarm: str,
    hubs: str | None,
    nats_creds: Path | None,
    nats_tls_ca: Path | None,
    nats_tls_cert: Path | None,
    nats_tls_key: Path | None,
    secret_env: str,
    secret_file: Path | None,
    data: Path | None,
    folder: Path | None,
    status_file: Path | None,
    no_status_file: bool,
    status_interval: float,
    scan_interval: float,
    live: bool | None,
    verbose: int,
) -> None:
    """Run a hub until Ctrl-C, showing its links live.

    Nodes connect with `hybridsync join ws://HOST:PORT`. `hybridsync status
    HOST:PORT` shows the hub's links from another terminal on this machine.
    With --nats URL the hub serves on the swarm's NATS subjects instead
    (nodes: `hybridsync join --nats URL --hubs ID`), and with --hubs it links
    upward to the first live hub listed before its own id.
    """
    console = make_console()
    _setup_logging(console, verbose)
    nats = parse_nats_options(
        role="serve",
        replica_id=replica_id,
        nats_url=nats_url,
        swarm=swarm,
        hubs=hubs,
        nats_creds=nats_creds,
        nats_tls_ca=nats_tls_ca,
        nats_tls_cert=nats_tls_cert,
        nats_tls_key=nats_tls_key,
    )
    options = _NodeOptions(
        replica_id=replica_id,
        secret=load_secret(secret_env, secret_file),
        serve=(host, port) if nats is None else None,
        nats=nats,
        serve_nats=nats is not None,
        server_ssl=_server_ssl(tls_cert, tls_key),
        folder=folder,
        data=data,
        status_file=status_file,
        write_status=not no_status_file,
        status_interval=status_interval,
        scan_interval=scan_interval,
        live=console.is_terminal if live is None else live,
    )
    sys.exit(_run(lambda: _run_node(options, console)))


@click.command()
@click.argument("url", required=False)
@click.option(
    "--id",
    "replica_id",
    default=None,
    help="This replica's id, unique in the swarm (default: HOSTNAME-PID).",
)
@click.option(
    "--serve",
    "serve_at",
    metavar="HOST:PORT",
    default=None,
    help="Also serve children here (a hub of hubs; port 0: any free port).",
)
@click.option("--hub-id", default=None, help="Refuse a hub with another replica id.")
@click.option(
    "--tls-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CA certificates (PEM) to verify a wss:// hub (default: the system's).",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --serve: serve wss:// with this certificate chain (PEM).",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --serve: the certificate's private key (PEM).",
)
@click.option(
    "--exit-sync-timeout",
    type=click.FloatRange(min=0.0),
    default=5.0,
    show_default=True,
    help="On exit, wait this long for the hub to acknowledge the latest changes.",
)
@_apply(_secret_options)
@_apply(nats_click_options)
@_apply(_common_node_options)
def join(
    url: str | None,
    replica_id: str | None,
    serve_at: str | None,
    hub_id: str | None,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    exit_sync_timeout: float,
    nats_url: str | None,
    swarm: str,
    hubs: str | None,
    nats_creds: Path | None,
    nats_tls_ca: Path | None,
    nats_tls_cert: Path | None,
    nats_tls_key: Path | None,
    secret_env: str,
    secret_file: Path | None,
    data: Path | None,
    folder: Path | None,
    status_file: Path | None,
    no_status_file: bool,
    status_interval: float,
    scan_interval: float,
    live: bool | None,
    verbose: int,
) -> None:
    """Run a node connected to the hub at URL (ws://HOST:PORT or wss://...) until Ctrl-C.

    The node reconnects after failures and keeps its link, so nothing is
    lost. On exit it waits for the hub to acknowledge its latest changes.
    With --nats URL (and no URL argument) it joins the first live hub of
    --hubs over NATS instead, and moves to the next one if that hub dies.
    """
    console = make_console()
    _setup_logging(console, verbose)
    if (tls_cert is not None or tls_key is not None) and serve_at is None:
        raise click.UsageError("--tls-cert/--tls-key only apply with --serve")
    replica_id = replica_id or f"{socket.gethostname()}-{os.getpid()}"
    nats = parse_nats_options(
        role="join",
        replica_id=replica_id,
        nats_url=nats_url,
        swarm=swarm,
        hubs=hubs,
        nats_creds=nats_creds,
        nats_tls_ca=nats_tls_ca,
        nats_tls_cert=nats_tls_cert,
        nats_tls_key=nats_tls_key,
    )
    if (url is None) == (nats is None):
        raise click.UsageError("give either the hub's URL or --nats URL (not both)")
    options = _NodeOptions(
        replica_id=replica_id,
        secret=load_secret(secret_env, secret_file),
        url=_normalise_url(url) if url is not None else None,
        nats=nats,
        serve=_parse_hostport(serve_at) if serve_at is not None else None,
        server_ssl=_server_ssl(tls_cert, tls_key),
        client_ssl=_client_ssl(tls_ca),
        hub_id=hub_id,
        folder=folder,
        data=data,
        status_file=status_file,
        write_status=not no_status_file,
        status_interval=status_interval,
        scan_interval=scan_interval,
        live=console.is_terminal if live is None else live,
        exit_sync_timeout=exit_sync_timeout,
    )
    try:
        code = _run(lambda: _run_node(options, console))
    except HybridSyncError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    sys.exit(code)
