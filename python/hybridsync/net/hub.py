"""The hub side of the transport: accepts authenticated nodes and answers them.

A hub holds one server :class:`~hybridsync.Link` per child replica, keyed by
the child's replica id and kept across that child's reconnections (so a
reconnect costs one exchange, not a full resend). Each incoming request is
applied and answered at once, in one step of the event loop. When a child's
link has something to tell (a change from another child, from the hub's own
agents or from upstream), the hub sends the child a tiny wake-up message so
that it polls now instead of at its next idle tick.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl as ssl_module
import time
import weakref
from collections.abc import Coroutine
from contextlib import AbstractContextManager
from dataclasses import replace
from types import TracebackType
from typing import Any

from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

from hybridsync.errors import HybridSyncError, InvalidArgumentError
from hybridsync.memory import Memory
from hybridsync.net._common import (
    CLOSE_AUTH,
    CLOSE_HANDSHAKE,
    CLOSE_REFUSED,
    CLOSE_REPLACED,
    CLOSE_TIMEOUT,
    PeerStatus,
    format_address,
    logger,
    null_lock,
    printable_id,
    stop_task,
    wait_event,
)
from hybridsync.net._secure import (
    KIND_FRAME,
    KIND_FRAME_MORE,
    KIND_POKE,
    MAX_HANDSHAKE_MESSAGE,
    MESSAGE_OVERHEAD,
    AuthenticationError,
    Channel,
    HandshakeError,
    RejectedMessage,
    ServerHandshake,
    check_secret,
)
from hybridsync.sync.link import Link

__all__ = ["Hub", "serve"]

#: A random id per Memory object served: a node that sees it change knows the
#: hub lost its state (a fresh process, a fresh replica) and must refill it.
_incarnations: weakref.WeakKeyDictionary[Memory, bytes] = weakref.WeakKeyDictionary()


def incarnation_of(memory: Memory) -> bytes:
    """The random incarnation id of a replica object (created on first use).
    A durable replica keeps its id in its file: reopened, it is the same
    incarnation (its links resume instead of starting over)."""
    if memory.incarnation is not None:
        return memory.incarnation
    value = _incarnations.get(memory)
    if value is None:
        value = _incarnations[memory] = secrets.token_bytes(16)
    return value


def set_message_limit(ws: Any, limit: int) -> None:
    """Change the largest message a connection accepts (websockets reads the
    limit before each frame, so it applies to the next message)."""
    protocol = getattr(ws, "protocol", None)
    if protocol is None:
        return
    if hasattr(protocol, "max_message_size"):  # websockets >= 16
        protocol.max_message_size = limit
    elif hasattr(protocol, "max_size"):  # websockets 15
        protocol.max_size = limit


def describe_close(exc: ConnectionClosed, limit: int | None = None) -> str:
    """A short reason for a closed connection (for logs)."""
    sent, rcvd = exc.sent, exc.rcvd
    if sent is not None and sent.code == 1009:
        size = f" of {limit} bytes" if limit is not None else ""
        return f"a message exceeded the size limit{size}"
    if rcvd is not None:
        reason = f" ({rcvd.reason})" if rcvd.reason else ""
        return f"closed by the peer with code {rcvd.code}{reason}"
    if sent is not None:
        reason = f" ({sent.reason})" if sent.reason else ""
        return f"closed with code {sent.code}{reason}"
    return "connection lost"


class _Conn:
    __slots__ = ("address", "chan", "poked", "poked_at", "quiet_until", "ws")

    def __init__(self, ws: ServerConnection, chan: Channel, address: str) -> None:
        self.ws = ws
        self.chan = chan
        self.address = address
        self.poked = False  # a wake-up was sent since the peer's last request
        self.poked_at = 0.0  # when (loop time) the last one was sent
        self.quiet_until = 0.0  # no wake-up before (loop time): just replied

    async def send(self, kind: int, body: bytes = b"") -> None:
        # Sealing and handing the message to websockets happen without a
        # suspension in between, so messages leave in counter order.
        await self.ws.send(self.chan.seal(kind, body))


class _Peer:
    __slots__ = ("conn", "connections", "exchanges", "last_exchange", "link", "rejected")

    def __init__(self, link: Link) -> None:
        self.link = link
        self.conn: _Conn | None = None
        self.connections = 0
        self.exchanges = 0
        self.last_exchange: float | None = None
        self.rejected = 0


class Hub:
    """A hub: serves ``memory`` to authenticated nodes over WebSockets.

    Use :func:`serve` (``async with serve(...) as hub``). See :func:`serve` for
    the arguments.
    """

    def __init__(
        self,
        memory: Memory,
        host: str | None,
        port: int,
        *,
        secret: bytes,
        ssl: ssl_module.SSLContext | None = None,
        max_frame_bytes: int = 16 << 20,
        handshake_timeout: float = 10.0,
        poll_interval: float = 0.02,
        poke_guard: float = 0.1,
        poke_retry: float = 1.0,
        keepalive: float | None = 20.0,
        lock: AbstractContextManager[Any] | None = None,
    ) -> None:
        if not isinstance(memory, Memory):
            raise InvalidArgumentError(f"memory must be a Memory, got {type(memory).__name__}")
        self._secret = check_secret(secret)
        if not (isinstance(max_frame_bytes, int) and max_frame_bytes > 0):
            raise InvalidArgumentError("max_frame_bytes must be a positive int")
        for name, value in (
            ("handshake_timeout", handshake_timeout),
            ("poll_interval", poll_interval),
            ("poke_retry", poke_retry),
        ):
            if not value > 0:
                raise InvalidArgumentError(f"{name} must be > 0, got {value!r}")
        self.memory = memory
        self.host = host
        self._requested_port = port
        self.ssl = ssl
        self.max_frame_bytes = max_frame_bytes
        self.handshake_timeout = handshake_timeout
        self.poll_interval = poll_interval
        self.poke_guard = poke_guard
        self.poke_retry = poke_retry
        self.keepalive = keepalive
        self._lock: AbstractContextManager[Any] = lock if lock is not None else null_lock()
        self._peers: dict[str, _Peer] = {}
        self._server: Server | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._closing = False
        self._background: set[asyncio.Future[None]] = set()
        self._handshakes_failed = 0
        self.port = 0

    def __repr__(self) -> str:
        state = "serving" if self._server is not None and not self._closing else "closed"
        return (
            f"<Hub {self.memory.replica_id!r} on port {self.port}: {state}, "
            f"{len(self.connected)} peers connected>"
        )

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> Hub:
        """Start listening (``hub.port`` is then the actual port)."""
        if self._server is not None:
            return self
        hub = self

        class _HubConnection(ServerConnection):
            async def handshake(self, *args: Any, **kwargs: Any) -> None:
                try:
                    await super().handshake(*args, **kwargs)
                except asyncio.CancelledError:
                    if not hub._closing:
                        hub._handshakes_failed += 1
                        logger.warning(
                            "connection from %s dropped: its WebSocket opening handshake did "
                            "not complete within %.1f s",
                            format_address(self.remote_address),
                            hub.handshake_timeout,
                        )
                    raise

        incarnation_of(self.memory)
        self._wake = asyncio.Event()
        extra: dict[str, Any] = {}
        if self.ssl is not None:
            # The TLS handshake precedes the WebSocket one: bound it too.
            extra["ssl_handshake_timeout"] = self.handshake_timeout
        self._server = await ws_serve(
            self._handle,
            self.host,
            self._requested_port,
            ssl=self.ssl,
            compression=None,
            open_timeout=self.handshake_timeout,
            close_timeout=min(self.handshake_timeout, 5.0),
            ping_interval=self.keepalive,
            ping_timeout=self.keepalive,
            max_size=self.max_frame_bytes + MESSAGE_OVERHEAD,
            create_connection=_HubConnection,
            **extra,
        )
        sockets = list(self._server.sockets)
        self.port = int(sockets[0].getsockname()[1]) if sockets else self._requested_port
        self._watcher = asyncio.create_task(self._watch())
        logger.info(
            "hub %s listening on port %d%s",
            printable_id(self.memory.replica_id),
            self.port,
            " (TLS)" if self.ssl is not None else "",
        )
        return self

    async def close(self) -> None:
        """Stop serving: close every connection and detach the links (a closed
        hub is not started again; serve anew, with the same replica if wanted)."""
        if self._closing:
            return
        self._closing = True
        if self._watcher is not None:
            await stop_task(self._watcher)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._background):
            await stop_task(task)
        with self._lock:
            for peer in self._peers.values():
                peer.link.close()
        logger.info("hub %s closed", printable_id(self.memory.replica_id))

    async def __aenter__(self) -> Hub:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- state -----------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL nodes on this machine use to reach the hub."""
        host = self.host if self.host not in (None, "", "0.0.0.0", "::") else "127.0.0.1"
        assert host is not None
        if ":" in host:
            host = f"[{host}]"
        return f"{'wss' if self.ssl is not None else 'ws'}://{host}:{self.port}"

    @property
    def connected(self) -> list[str]:
        """Replica ids of the peers connected now."""
        return sorted(pid for pid, p in self._peers.items() if p.conn is not None)

    @property
    def peers(self) -> dict[str, PeerStatus]:
        """Every peer seen since the hub started, connected or not (snapshots)."""
        with self._lock:
            return {pid: self._status(pid, p) for pid, p in sorted(self._peers.items())}

    @property
    def links(self) -> dict[str, Link]:
        """The server links, by peer replica id."""
        return {pid: p.link for pid, p in self._peers.items()}

    @property
    def handshakes_failed(self) -> int:
        """Connections dropped before or during authentication."""
        return self._handshakes_failed

    def _status(self, pid: str, p: _Peer) -> PeerStatus:
        return PeerStatus(
            peer_id=pid,
            role="server",
            connected=p.conn is not None,
            address=p.conn.address if p.conn is not None else None,
            connections=p.connections,
            exchanges=p.exchanges,
            last_exchange=p.last_exchange,
            rejected=p.rejected,
            link=replace(p.link.metrics),
        )

    def notify(self) -> None:
        """The hub's replica changed: wake the children that must hear of it
        (optional: the hub also checks every ``poll_interval``)."""
        if self._wake is not None:
            self._wake.set()

    # -- connections -----------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        address = format_address(ws.remote_address)
        set_message_limit(ws, MAX_HANDSHAKE_MESSAGE)
        try:
            hs = await asyncio.wait_for(self._handshake(ws), self.handshake_timeout)
        except asyncio.TimeoutError:
            self._refused(
                address, f"the handshake did not complete within {self.handshake_timeout:.1f} s"
            )
            await ws.close(CLOSE_TIMEOUT, "handshake timeout")
            return
        except AuthenticationError as exc:
            self._refused(address, f"authentication failed: {exc}")
            await ws.close(CLOSE_AUTH, "authentication failed")
            return
        except HandshakeError as exc:
            self._refused(address, f"bad handshake: {exc}")
            await ws.close(CLOSE_HANDSHAKE, "bad handshake")
            return
        except ConnectionClosed as exc:
            self._refused(
                address,
                f"closed during the handshake: {describe_close(exc, MAX_HANDSHAKE_MESSAGE)}",
            )
            return
        pid = hs.client_id
        if pid == self.memory.replica_id:
            self._refused(address, f"the peer uses this hub's own replica id {printable_id(pid)}")
            await ws.close(CLOSE_REFUSED, "replica id in use by the hub")
            return
        conn = _Conn(ws, hs.channel(), address)
        with self._lock:
            peer = self._peers.get(pid)
            if peer is None:
                link = Link(self.memory, pid, role="server", max_frame_bytes=self.max_frame_bytes)
                peer = self._peers[pid] = _Peer(link)
        old = peer.conn
        peer.conn = conn
        peer.connections += 1
        if old is not None:
            logger.warning(
                "peer %s connected again from %s: closing its previous connection from %s",
                printable_id(pid),
                address,
                old.address,
            )
            self._spawn(old.ws.close(CLOSE_REPLACED, "replaced by a newer one"))
        set_message_limit(ws, self.max_frame_bytes + MESSAGE_OVERHEAD)
        logger.info("peer %s connected from %s", printable_id(pid), address)
        reason = "closed"
        try:
            while peer.conn is conn:
                message = await ws.recv()
                if peer.conn is not conn:
                    break
                await self._on_message(pid, peer, conn, message)
        except ConnectionClosed as exc:
            reason = describe_close(exc, self.max_frame_bytes + MESSAGE_OVERHEAD)
            if exc.sent is not None and exc.sent.code == 1009:
                peer.rejected += 1
                logger.warning(
                    "peer %s (%s) rejected: %s; connection closed, nothing changed",
                    printable_id(pid),
                    address,
                    reason,
                )
        finally:
            if peer.conn is conn:
                peer.conn = None
            logger.info("peer %s (%s) disconnected: %s", printable_id(pid), address, reason)

    def _refused(self, address: str, why: str) -> None:
        self._handshakes_failed += 1
        logger.warning("connection from %s refused: %s", address, why)

    async def _handshake(self, ws: ServerConnection) -> ServerHandshake:
        hs = ServerHandshake(self._secret, self.memory.replica_id, incarnation_of(self.memory))
        challenge = hs.hello(await ws.recv())
        await ws.send(challenge)
        hs.proof(await ws.recv())
        return hs

    async def _on_message(self, pid: str, peer: _Peer, conn: _Conn, message: object) -> None:
        try:
            kind, body = conn.chan.open(message)
        except RejectedMessage as exc:
            peer.rejected += 1
            logger.warning(
                "message from %s (%s) rejected: %s; nothing changed",
                printable_id(pid),
                conn.address,
                exc,
            )
            return
        if kind != KIND_FRAME:
            logger.debug("ignoring message of unknown kind %d from %s", kind, printable_id(pid))
            return
        with self._lock:
            try:
                peer.link.incoming(body)
            except HybridSyncError as exc:
                peer.rejected += 1
                logger.warning(
                    "frame from %s (%s) refused: %s: %s; nothing changed",
                    printable_id(pid),
                    conn.address,
                    type(exc).__name__,
                    exc,
                )
                return
            except Exception:
                # Not an error the engine reports on bad input: a bug. The
                # connection stays up; the peer retransmits.
                peer.rejected += 1
                logger.exception(
                    "frame from %s (%s) could not be applied", printable_id(pid), conn.address
                )
                return
            reply = peer.link.outgoing()
            more = not peer.link.idle
        conn.poked = more
        conn.poked_at = asyncio.get_running_loop().time()
        if reply is not None:
            peer.exchanges += 1
            peer.last_exchange = time.time()
            if len(reply) > self.max_frame_bytes:
                logger.warning(
                    "reply to %s is %d bytes, over max_frame_bytes=%d: the peer may refuse it",
                    printable_id(pid),
                    len(reply),
                    self.max_frame_bytes,
                )
            # A reply says itself whether the peer should come back at once,
            # and no separate wake-up follows it closely: on a path that
            # reorders messages the later one would make the receiver refuse
            # the earlier (replay protection).
            conn.quiet_until = asyncio.get_running_loop().time() + self.poke_guard
            await conn.send(KIND_FRAME_MORE if more else KIND_FRAME, reply)
        if self._wake is not None:
            self._wake.set()  # other children may have something to hear now

    async def _watch(self) -> None:
        """Send a wake-up to each connected child whose link has something to
        tell, at most once per request of that child."""
        assert self._wake is not None
        while True:
            await wait_event(self._wake, self.poll_interval)
            self._wake.clear()
            due: list[_Conn] = []
            now = asyncio.get_running_loop().time()
            with self._lock:
                for peer in self._peers.values():
                    conn = peer.conn
                    if conn is None or now < conn.quiet_until:
                        continue
                    if conn.poked and now < conn.poked_at + self.poke_retry:
                        continue  # woken, and not yet due again
                    if not peer.link.idle:
                        # A wake-up lost on the way (a relay dropped it) would
                        # leave a push-driven child asleep: while it has not
                        # come back, it is woken again every poke_retry.
                        conn.poked, conn.poked_at = True, now
                        due.append(conn)
            for conn in due:
                # Not awaited here: a peer that does not read must not hold
                # up the hints to the others.
                self._spawn(conn.send(KIND_POKE))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Future[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, (ConnectionClosed, OSError)):
                logger.error("hub background task failed", exc_info=exc)


def serve(
    memory: Memory,
    host: str | None = "127.0.0.1",
    port: int = 0,
    *,
    secret: bytes,
    ssl: ssl_module.SSLContext | None = None,
    max_frame_bytes: int = 16 << 20,
    handshake_timeout: float = 10.0,
    poll_interval: float = 0.02,
    poke_guard: float = 0.1,
    poke_retry: float = 1.0,
    keepalive: float | None = 20.0,
    lock: AbstractContextManager[Any] | None = None,
) -> Hub:
    """Serve ``memory`` to nodes: ``async with serve(memory, host, port, secret=...) as hub``.

    Args:
        memory: the hub's replica.
        host, port: where to listen (``port=0``: any free port, see ``hub.port``).
        secret: the swarm's shared secret (at least 16 bytes); nodes must prove
            they hold it, and the hub proves it to them.
        ssl: a server :class:`ssl.SSLContext` to serve ``wss://`` (TLS).
        max_frame_bytes: the largest sync frame accepted; larger messages close
            the connection (WebSocket code 1009).
        handshake_timeout: a connection that has not completed the WebSocket
            and authentication handshakes by then is dropped (slow-loris).
        poll_interval: how often the hub checks whether a child has something
            to hear (and wakes it).
        poke_guard: no wake-up is sent to a child this many seconds after a
            reply to it (a reply carries its own "come back at once" flag).
        poke_retry: a child woken (or told to come back) that has not sent a
            request this many seconds later is woken again, while it still
            has something to hear (nodes are push-driven: they do not poll).
        keepalive: WebSocket ping interval and timeout (``None``: none).
        lock: held while the hub calls into links; give the same lock to
            :func:`~hybridsync.net.connect` on the same replica, and hold it
            when other threads touch the replica (see
            :class:`~hybridsync.net.SyncNode`).
    """
    return Hub(
        memory,
        host,
        port,
        secret=secret,
        ssl=ssl,
        max_frame_bytes=max_frame_bytes,
        handshake_timeout=handshake_timeout,
        poll_interval=poll_interval,
        poke_guard=poke_guard,
        poke_retry=poke_retry,
        keepalive=keepalive,
        lock=lock,
    )
