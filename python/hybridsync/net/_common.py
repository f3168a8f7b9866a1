"""Shared pieces of the network transport: errors, status records, logging."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from hybridsync.errors import ClosedError, SyncTimeoutError
from hybridsync.sync.link import LinkMetrics

__all__ = [
    "CLOSE_AUTH",
    "CLOSE_HANDSHAKE",
    "CLOSE_REPLACED",
    "CLOSE_TIMEOUT",
    "ClosedError",
    "PeerStatus",
    "SyncTimeoutError",
    "logger",
    "stop_task",
    "wait_event",
]

#: Every event of the transport is logged here (never a secret or a key).
logger = logging.getLogger("hybridsync.net")

# WebSocket close codes (the 4000-4999 range is for applications).
CLOSE_AUTH = 4001  # authentication failed
CLOSE_HANDSHAKE = 4002  # malformed or unexpected handshake message
CLOSE_TIMEOUT = 4003  # the handshake did not complete in time
CLOSE_REPLACED = 4004  # the same peer connected again; this connection is superseded
CLOSE_REFUSED = 4005  # a well-formed peer we must not serve (its id is ours)


@dataclass
class PeerStatus:
    """What one end of a connection knows about its peer (a snapshot)."""

    #: The peer's replica id.
    peer_id: str
    #: Our side of the link: ``"server"`` on a hub, ``"client"`` on a node.
    role: Literal["client", "server"]
    #: Whether an authenticated connection to the peer is open.
    connected: bool
    #: The peer's address (``host:port``) as seen by this side, if connected.
    address: str | None
    #: Authenticated connections so far (a client: including the first one).
    connections: int
    #: Completed exchanges (a request answered by a reply) on this link.
    exchanges: int
    #: Wall-clock time (``time.time()``) of the latest completed exchange.
    last_exchange: float | None
    #: Messages refused: forged, tampered, replayed or reordered, undecodable frames.
    rejected: int
    #: The engine's counters for this link (bytes, frames, resyncs, ...).
    link: LinkMetrics = field(default_factory=LinkMetrics)
    #: Client only: requests sent again after a reply timeout.
    timeouts: int = 0
    #: Client only: the current cycle period in seconds (adaptive); None
    #: while idle and push-driven (no cycle until there is something to say).
    period: float | None = 0.0
    #: Client only: the hub restarted without its state and was refilled.
    hub_restarts: int = 0


def safe_url(url: str) -> str:
    """The URL without user information (a password in it must not be logged)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def printable_id(value: str, limit: int = 64) -> str:
    """A peer-supplied id for logs: repr (no control characters), truncated."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_address(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address) if address is not None else "?"


async def stop_task(task: asyncio.Future[Any]) -> None:
    """Cancel a task and wait until it ended, without swallowing a
    cancellation of the caller; an error the task ended with is logged."""
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled() and task.exception() is not None:
        logger.error("background task failed", exc_info=task.exception())


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set or ``timeout`` passed; return whether it is
    set. Unlike ``asyncio.wait_for`` on Python < 3.12, a cancellation of the
    caller is never lost when the event is set at the same moment."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()
    return event.is_set()


def null_lock() -> contextlib.AbstractContextManager[Any]:
    return contextlib.nullcontext()
