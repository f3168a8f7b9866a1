"""The ``hybridsync`` command: run hubs and nodes, show link status, run the demo.

::

    export HYBRIDSYNC_SECRET="$(hybridsync keygen)"     # the swarm's shared secret
    hybridsync serve --port 8765 --dir ./hub-docs        # a hub (Ctrl-C stops it)
    hybridsync join ws://hub-host:8765 --id agent-1 --dir ./docs
    hybridsync join ws://hub-host:8765 --id rack-2 --serve 0.0.0.0:8766   # a hub of hubs
    hybridsync status ws://127.0.0.1:8765                # per-link metrics of that hub
    hybridsync demo                                      # a live swarm on loopback

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

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import secrets
import signal
import socket
import ssl
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from rich.console import Console, Group
from rich.live import Live
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from hybridsync import text as text_kernels
from hybridsync.errors import HybridSyncError
from hybridsync.memory import Memory
from hybridsync.net._common import safe_url

__all__ = ["FolderMirror", "find_status_file", "load_secret", "main", "status_dir"]

STATUS_FORMAT = "hybridsync-status/1"
MIN_SECRET_BYTES = 16
#: Files larger than this are not mirrored into the replica.
MAX_MIRROR_FILE_BYTES = 16 << 20

log = logging.getLogger("hybridsync.cli")


# -- secrets -------------------------------------------------------------------


def load_secret(secret_env: str, secret_file: Path | None) -> bytes:
    """The swarm's shared secret from a file or an environment variable.

    Raises :class:`click.UsageError` with a message that never contains it.
    """
    if secret_file is not None:
        try:
            info = secret_file.stat()
            data = secret_file.read_bytes().strip()
        except OSError as exc:
            raise click.UsageError(
                f"cannot read the secret file {secret_file}: {exc.strerror}"
            ) from None
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("the secret file %s is readable by other users (chmod 600 it)", secret_file)
        where = f"the secret file {secret_file}"
    else:
        value = os.environ.get(secret_env, "")
        if not value.strip():
            raise click.UsageError(
                f"no secret: set the environment variable {secret_env} or use --secret-file "
                "(a secret is never taken from the command line; `hybridsync keygen` makes one)"
            )
        data = value.strip().encode()
        where = f"${secret_env}"
    if len(data) < MIN_SECRET_BYTES:
        raise click.UsageError(
            f"the secret in {where} is too short: at least {MIN_SECRET_BYTES} bytes "
            "(`hybridsync keygen` makes one)"
        )
    return data


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


# -- the replica on disk -----------------------------------------------------------


class FolderMirror:
    """Mirror a replica's text documents to files in a folder, both ways.

    Call :meth:`scan` (files -> replica) and then :meth:`flush` (replica ->
    files) periodically, on the thread that owns the replica. A file edited
    locally while its document changed remotely is merged three-way
    (:func:`hybridsync.text.merge3`), so neither edit is lost.
    """

    def __init__(self, memory: Memory, root: Path) -> None:
        self.memory = memory
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        #: The content a file and its document last agreed on.
        self.known: dict[str, str] = {}
        self._stat: dict[str, tuple[int, int]] = {}
        self._warned: set[str] = set()

    def path_of(self, name: str) -> Path | None:
        """The file of a document, or ``None`` if its name cannot be a relative path."""
        parts = name.split("/")
        for part in parts:
            if part in ("", ".", "..") or part.startswith(".") or "\\" in part or "\0" in part:
                return None
        return self.root.joinpath(*parts)

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def _read(self, path: Path) -> str | None:
        try:
            if path.stat().st_size > MAX_MIRROR_FILE_BYTES:
                self._warn_once(f"big:{path}", "not mirroring %s: larger than 16 MB", path)
                return None
            with open(path, encoding="utf-8", newline="") as fh:
                return fh.read()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            self._warn_once(f"read:{path}", "not mirroring %s: %s", path, exc)
            return None

    def _files(self) -> Iterator[tuple[str, Path]]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                if filename.startswith("."):
                    continue
                path = Path(dirpath) / filename
                if not path.is_file() or path.is_symlink():
                    continue
                yield path.relative_to(self.root).as_posix(), path

    def scan(self) -> bool:
        """Read files changed since the last call into the replica; True if it changed."""
        changed = False
        seen: set[str] = set()
        docs = self.memory.text
        for name, path in self._files():
            seen.add(name)
            try:
                info = path.stat()
            except OSError:
                continue
            key = (info.st_mtime_ns, info.st_size)
            if self._stat.get(name) == key and name in self.known:
                continue
            content = self._read(path)
            if content is None:
                continue
            self._stat[name] = key
            base = self.known.get(name)
            if content == base:
                continue
            current = docs.get(name)
            if base is not None and current is not None and current != base:
                # Edited here and remotely since they last agreed: keep both.
                merged = text_kernels.merge3(base, current, content)
            else:
                merged = content
            try:
                if current != merged:
                    docs[name] = merged
                    changed = True
            except HybridSyncError as exc:
                self._warn_once(f"set:{name}", "not mirroring %s: %s", path, exc)
                continue
            self.known[name] = content  # flush() rewrites the file if merged differs
        for name in [n for n in self.known if n not in seen]:
            # Deleted locally.
            del self.known[name]
            self._stat.pop(name, None)
            if name in docs:
                del docs[name]
                changed = True
        return changed

    def flush(self) -> None:
        """Write documents that changed in the replica to their files."""
        docs = self.memory.text
        for name in list(docs):
            value = docs[name]
            if self.known.get(name) == value:
                continue
            path = self.path_of(name)
            if path is None:
                self._warn_once(f"name:{name}", "document %r has no file name: not mirrored", name)
                continue
            on_disk = self._read(path) if path.exists() else None
            if on_disk != self.known.get(name):
                continue  # edited (or deleted) locally since: the next scan merges it
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
                with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                    fh.write(value)
                os.replace(tmp, path)
                info = path.stat()
            except OSError as exc:
                self._warn_once(f"write:{name}", "cannot write %s: %s", path, exc)
                continue
            self.known[name] = value
            self._stat[name] = (info.st_mtime_ns, info.st_size)
        for name in [n for n in self.known if n not in docs]:
            # Deleted remotely.
            path = self.path_of(name)
            if path is not None and self._read(path) == self.known[name]:
                with contextlib.suppress(OSError):
                    path.unlink()
            del self.known[name]
            self._stat.pop(name, None)


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
        hub = None
        session = None
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
                port=hub.port if hub is not None else None, replica_id=memory.replica_id
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


def _run(coro_factory: Callable[[], Any]) -> int:
    try:
        result = asyncio.run(coro_factory())
    except KeyboardInterrupt:  # pragma: no cover - signal handlers normally catch it
        return 130
    return int(result)


# -- click commands -------------------------------------------------------------------

_secret_options = [
    click.option(
        "--secret-env",
        default="HYBRIDSYNC_SECRET",
        show_default=True,
        metavar="VAR",
        help="Environment variable holding the swarm's shared secret.",
    ),
    click.option(
        "--secret-file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Read the secret from this file instead (keep it chmod 600).",
    ),
]

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hybridsync", message="hybridsync %(version)s")
def main() -> None:
    """hybridsync: keep an agent swarm's working memory in sync.

    Secrets come from $HYBRIDSYNC_SECRET (or --secret-env / --secret-file),
    never from the command line.
    """


@main.command()
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
@_apply(_common_node_options)
def serve(
    host: str,
    port: int,
    replica_id: str,
    tls_cert: Path | None,
    tls_key: Path | None,
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
    """
    console = make_console()
    _setup_logging(console, verbose)
    options = _NodeOptions(
        replica_id=replica_id,
        secret=load_secret(secret_env, secret_file),
        serve=(host, port),
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


@main.command()
@click.argument("url")
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
@_apply(_common_node_options)
def join(
    url: str,
    replica_id: str | None,
    serve_at: str | None,
    hub_id: str | None,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    exit_sync_timeout: float,
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
    """
    console = make_console()
    _setup_logging(console, verbose)
    if (tls_cert is not None or tls_key is not None) and serve_at is None:
        raise click.UsageError("--tls-cert/--tls-key only apply with --serve")
    options = _NodeOptions(
        replica_id=replica_id or f"{socket.gethostname()}-{os.getpid()}",
        secret=load_secret(secret_env, secret_file),
        url=_normalise_url(url),
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


@main.command()
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


@main.command()
@click.option(
    "--out",
    "out_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the secret to this new file (mode 600) instead of printing it.",
)
def keygen(out_file: Path | None) -> None:
    """Make a new random swarm secret (32 random bytes, URL-safe base64).

    Use it as: export HYBRIDSYNC_SECRET="$(hybridsync keygen)"
    """
    value = secrets.token_urlsafe(32)
    if out_file is None:
        click.echo(value)
        return
    try:
        fd = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise click.ClickException(f"{out_file} exists; not overwriting a secret") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    click.echo(f"new secret written to {out_file}")


@main.command()
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
    from hybridsync.swarm import DemoConfig, run_demo

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


# `hybridsync bench` lives with the benchmark harness.
from hybridsync.bench.cli import bench  # noqa: E402

main.add_command(bench)

if __name__ == "__main__":
    main()
