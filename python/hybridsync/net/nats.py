"""hybridsync over NATS: the same links, handshake and sealed messages as over
WebSockets, carried by NATS request/reply (``pip install hybridsync[nats]``).

- :func:`serve_nats` -- a hub on a NATS subject: ``async with serve_nats(memory, nc,
  secret=...) as hub``.
- :func:`connect_nats` -- a node: ``async with connect_nats(memory, nc, hubs=["h0", "h1"],
  secret=...) as session``. The node joins the first hub of ``hubs`` that answers, and
  moves to the next one that answers when its hub is gone (failover).
- :func:`open_nats` -- a connected NATS client with hybridsync's defaults (credentials
  and TLS in NATS' own conventions).

Subjects (``P`` is ``hybridsync.<swarm>``)::

    P.hub.<hub>.c.<conn>   requests of one connection to the hub <hub>
                           (handshake, then one sealed frame per request)
    P.node.<conn>          the hub's wake-up hints to that connection

``<hub>`` is the hub's replica id when it is a NATS token of letters, digits,
``-`` and ``_`` (at most 64), else ``x`` and 32 hex digits of its SHA-256.
``<conn>`` is 32 random hex digits chosen by the node for each connection.

Each request carries one message of the WebSocket transport
(:mod:`hybridsync.net._secure`): the ``HELLO`` (header ``Hs-Op: hello``) answered
by the ``CHALLENGE``, the ``PROOF`` (``Hs-Op: proof``) answered by a sealed
wake-up, then sealed frames answered by sealed replies. A message larger than
the server's ``max_payload`` travels in parts: requests as ``Hs-Part: i/n``
(each part but the last answered by an empty ``Hs-Ack``), replies as a first
part with ``Hs-Parts: n`` and the others fetched with ``Hs-Fetch: i``. Errors
come back as a reply with the header ``Hs-Err: <code>`` and a reason as its body:
``auth``, ``handshake``, ``unknown`` (no such connection: the hub restarted),
``rejected`` (forged, tampered or replayed), ``refused`` (the frame was
refused; nothing changed) and ``size``.

Liveness is NATS' own: a hub that dies loses its subscription on the server
(at once when its socket closes, after the server's pings otherwise), and a
request to it fails with "no responders"; the node then joins the next hub
that answers. Hubs of one swarm form a tree by the same rule: a hub listed at
position ``i`` links upward to the first live hub before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import secrets
import ssl as ssl_module
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

try:
    import nats.errors as nats_errors
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
except ImportError as exc:  # pragma: no cover - the optional extra is missing
    raise ImportError(
        "hybridsync over NATS needs the nats extra: pip install 'hybridsync[nats]'"
    ) from exc

from hybridsync.errors import HybridSyncError, InvalidArgumentError
from hybridsync.memory import Memory
from hybridsync.net._common import (
    PeerStatus,
    logger,
    printable_id,
    safe_url,
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
    ClientHandshake,
    HandshakeError,
    RejectedMessage,
    ServerHandshake,
)
from hybridsync.net.hub import Hub, _Peer, incarnation_of
from hybridsync.net.session import Session
from hybridsync.sync.link import Link

__all__ = [
    "NatsHub",
    "NatsSession",
    "connect_nats",
    "hub_token",
    "open_nats",
    "serve_nats",
    "subject_prefix",
]

OP = "Hs-Op"
PART = "Hs-Part"
ACK = "Hs-Ack"
PARTS = "Hs-Parts"
FETCH = "Hs-Fetch"
ERR = "Hs-Err"
#: Bytes kept free in each NATS message for the subject, the reply subject and headers.
PART_MARGIN = 1024
#: Requests in a row without any reply after which a node leaves its hub.
MAX_SILENT = 3
#: Handshakes begun but not finished that a hub keeps at most (the oldest go first).
MAX_PENDING_HANDSHAKES = 1024

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CONN = re.compile(r"[0-9a-f]{32}")


def hub_token(replica_id: str) -> str:
    """The subject token of a hub's replica id (see the module's docstring)."""
    if _TOKEN.fullmatch(replica_id):
        return replica_id
    return "x" + hashlib.sha256(replica_id.encode()).hexdigest()[:32]


def subject_prefix(swarm: str) -> str:
    """``hybridsync.<swarm>``: every subject of one swarm starts with it."""
    if not isinstance(swarm, str) or not _TOKEN.fullmatch(swarm):
        raise InvalidArgumentError(
            f"a swarm name is 1..64 letters, digits, '-' or '_', got {swarm!r}"
        )
    return f"hybridsync.{swarm}"


def split_parts(message: bytes, size: int) -> list[bytes]:
    """``message`` cut into parts of at most ``size`` bytes (at least one part)."""
    return [message[i : i + size] for i in range(0, len(message), size)] or [b""]


def _part_size(nc: NatsClient) -> int:
    return max(int(nc.max_payload) - PART_MARGIN, 1024)


async def open_nats(
    servers: str | Sequence[str],
    *,
    name: str | None = None,
    creds: str | Path | None = None,
    tls: ssl_module.SSLContext | None = None,
    connect_timeout: float = 5.0,
    reconnect_wait: float = 0.5,
) -> NatsClient:
    """A connected NATS client for hybridsync.

    ``servers``: ``nats://host:4222`` URLs (user and password, or a token, in the
    URL as NATS has it; ``tls://`` for TLS). ``creds``: a NATS ``.creds`` file
    (decentralized JWT auth). ``tls``: a client context (CA, client certificate).
    The client reconnects for ever (to any server of the cluster it learned of).
    """

    async def on_error(exc: Exception) -> None:
        logger.warning("NATS: %s: %s", type(exc).__name__, exc)

    async def on_disconnected() -> None:
        logger.info("NATS: disconnected")

    async def on_reconnected() -> None:
        server = nc.connected_url
        logger.info("NATS: reconnected to %s", safe_url(server.geturl()) if server else "?")

    urls = [servers] if isinstance(servers, str) else list(servers)
    options: dict[str, Any] = {}
    if creds is not None:
        options["user_credentials"] = str(creds)
    if tls is not None:
        options["tls"] = tls
    nc = NatsClient()
    try:
        await nc.connect(
            urls,
            name=name,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
            connect_timeout=max(1, round(connect_timeout)),
            reconnect_time_wait=reconnect_wait,  # type: ignore[arg-type]
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            **options,
        )
    except (nats_errors.Error, OSError, asyncio.TimeoutError) as exc:
        where = ", ".join(safe_url(u) for u in urls)
        raise ConnectionRefusedError(
            f"cannot connect to NATS at {where}: {type(exc).__name__}: {exc}"
        ) from None
    return nc


# -- the hub ---------------------------------------------------------------------------


class _NatsConn:
    """One node connection on a NATS hub (the hub's ``_Conn`` over subjects)."""

    __slots__ = (
        "address",
        "chan",
        "hs",
        "hub",
        "last_request",
        "out_parts",
        "parts",
        "parts_bytes",
        "peer_id",
        "poke_subject",
        "poked",
        "quiet_until",
        "token",
    )

    def __init__(self, hub: NatsHub, token: str, hs: ServerHandshake) -> None:
        self.hub = hub
        self.token = token
        self.hs = hs
        self.chan: Channel | None = None
        self.peer_id = ""
        self.address = f"nats:{token[:8]}"
        self.poke_subject = f"{hub.prefix}.node.{token}"
        self.poked = False
        self.quiet_until = 0.0
        self.last_request = 0.0
        self.parts: list[bytes] = []
        self.parts_bytes = 0
        self.out_parts: list[bytes] = []

    async def send(self, kind: int, body: bytes = b"") -> None:
        """Wake-up hints only (replies answer their request)."""
        nc = self.hub.nc
        if self.chan is None or nc is None or nc.is_closed:
            return
        with contextlib.suppress(nats_errors.Error):
            await nc.publish(self.poke_subject, self.chan.seal(kind, body))


class NatsHub(Hub):
    """A hub serving ``memory`` on NATS subjects. Use :func:`serve_nats`."""

    def __init__(
        self,
        memory: Memory,
        nc: NatsClient,
        *,
        secret: bytes,
        swarm: str = "default",
        max_frame_bytes: int = 16 << 20,
        handshake_timeout: float = 10.0,
        idle_timeout: float = 30.0,
        poll_interval: float = 0.02,
        poke_guard: float = 0.1,
        lock: AbstractContextManager[Any] | None = None,
    ) -> None:
        super().__init__(
            memory,
            None,
            0,
            secret=secret,
            max_frame_bytes=max_frame_bytes,
            handshake_timeout=handshake_timeout,
            poll_interval=poll_interval,
            poke_guard=poke_guard,
            keepalive=None,
            lock=lock,
        )
        if not idle_timeout > 0:
            raise InvalidArgumentError("idle_timeout must be > 0")
        self.nc = nc
        self.swarm = swarm
        self.prefix = subject_prefix(swarm)
        self.subject = f"{self.prefix}.hub.{hub_token(memory.replica_id)}.c"
        self.idle_timeout = idle_timeout
        self._conns: dict[str, _NatsConn] = {}
        self._sub: Subscription | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._started = False
        #: Messages that travelled in parts (requests reassembled + replies cut).
        self.parted_messages = 0
        #: Requests answered with an error (garbage, forged, replayed, oversized...).
        self.errors_sent = 0

    def __repr__(self) -> str:
        state = "serving" if self._started and not self._closing else "closed"
        return (
            f"<NatsHub {self.memory.replica_id!r} on {self.subject}.*: {state}, "
            f"{len(self.connected)} peers connected>"
        )

    @property
    def url(self) -> str:
        server = self.nc.connected_url
        where = safe_url(server.geturl()) if server is not None else "nats:"
        return f"{where}#{self.subject}"

    async def start(self) -> NatsHub:
        if self._started:
            return self
        self._started = True
        incarnation_of(self.memory)
        self._wake = asyncio.Event()
        self._sub = await self.nc.subscribe(f"{self.subject}.*", cb=self._on_msg)
        await self.nc.flush()
        self._watcher = asyncio.create_task(self._watch())
        self._sweeper = asyncio.create_task(self._sweep())
        logger.info(
            "hub %s serving on NATS subjects %s.*",
            printable_id(self.memory.replica_id),
            self.subject,
        )
        return self

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._sub is not None:
            with contextlib.suppress(nats_errors.Error):
                await self._sub.unsubscribe()
        for job in (self._watcher, self._sweeper):
            if job is not None:
                await stop_task(job)
        for task in list(self._background):
            await stop_task(task)
        with self._lock:
            for peer in self._peers.values():
                peer.link.close()
        logger.info("hub %s closed", printable_id(self.memory.replica_id))

    async def __aenter__(self) -> NatsHub:
        return await self.start()

    # -- requests ------------------------------------------------------------------

    async def _sweep(self) -> None:
        """Forget connections that stopped asking (a node polls at least every
        ``max_period``) and handshakes never finished."""
        while True:
            await asyncio.sleep(min(self.idle_timeout, self.handshake_timeout) / 2)
            now = asyncio.get_running_loop().time()
            for token, conn in list(self._conns.items()):
                limit = self.idle_timeout if conn.chan is not None else self.handshake_timeout
                if now - conn.last_request > limit:
                    self._drop(token, conn)

    async def _watch(self) -> None:
        """Wake each child whose link has something to tell, once per request of
        that child (a lost wake-up costs at most the child's idle period: NATS
        nodes poll while idle)."""
        assert self._wake is not None
        while True:
            await wait_event(self._wake, self.poll_interval)
            self._wake.clear()
            now = asyncio.get_running_loop().time()
            due: list[_NatsConn] = []
            with self._lock:
                for peer in self._peers.values():
                    conn: Any = peer.conn
                    if not isinstance(conn, _NatsConn) or conn.poked or now < conn.quiet_until:
                        continue
                    if not peer.link.idle:
                        conn.poked = True
                        due.append(conn)
            for conn in due:
                self._spawn(conn.send(KIND_POKE))

    def _drop(self, token: str, conn: _NatsConn) -> None:
        self._conns.pop(token, None)
        peer = self._peers.get(conn.peer_id) if conn.peer_id else None
        current: Any = peer.conn if peer is not None else None
        if peer is not None and current is conn:
            peer.conn = None
            logger.info("peer %s (%s) gone quiet", printable_id(conn.peer_id), conn.address)

    async def _reply(
        self, msg: Msg, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        if not msg.reply:
            return
        with contextlib.suppress(nats_errors.Error):
            await self.nc.publish(msg.reply, body, headers=headers)

    async def _error(self, msg: Msg, code: str, reason: str, where: str) -> None:
        self.errors_sent += 1
        logger.warning("request from %s refused (%s): %s; nothing changed", where, code, reason)
        await self._reply(msg, reason.encode()[:512], {ERR: code})

    async def _on_msg(self, msg: Msg) -> None:
        try:
            await self._serve(msg)
        except Exception:
            # Not an error bad input causes: a bug. The hub keeps serving.
            logger.exception("request on %s could not be served", msg.subject)
            await self._reply(msg, b"internal error", {ERR: "refused"})

    async def _serve(self, msg: Msg) -> None:
        if self._closing:
            return
        token = msg.subject.rsplit(".", 1)[-1]
        headers = msg.headers or {}
        where = f"nats:{token[:8]}"
        if not _CONN.fullmatch(token):
            self._handshakes_failed += 1
            await self._error(msg, "handshake", "bad connection token", where)
            return
        loop = asyncio.get_running_loop()
        op = headers.get(OP, "")
        conn = self._conns.get(token)
        if op == "hello":
            await self._hello(msg, token, where)
            return
        if conn is None:
            await self._error(msg, "unknown", "no such connection (connect again)", where)
            return
        conn.last_request = loop.time()
        if op == "proof":
            await self._proof(msg, token, conn)
            return
        if conn.chan is None:
            await self._error(msg, "handshake", "PROOF expected", where)
            return
        if FETCH in headers:
            await self._fetch(msg, conn, headers[FETCH])
            return
        data = bytes(msg.data)
        if PART in headers:
            whole = await self._part(msg, conn, headers[PART], data)
            if whole is None:
                return
            data = whole
        elif len(data) > self.max_frame_bytes + MESSAGE_OVERHEAD:
            await self._error(msg, "size", "message over the hub's max_frame_bytes", where)
            return
        await self._frame(msg, conn, data)

    async def _hello(self, msg: Msg, token: str, where: str) -> None:
        if token in self._conns:
            await self._error(msg, "handshake", "connection token in use", where)
            return
        if len(msg.data) > MAX_HANDSHAKE_MESSAGE:
            self._handshakes_failed += 1
            await self._error(msg, "size", "handshake message too long", where)
            return
        hs = ServerHandshake(self._secret, self.memory.replica_id, incarnation_of(self.memory))
        try:
            challenge = hs.hello(bytes(msg.data))
        except HybridSyncError as exc:
            self._handshakes_failed += 1
            await self._error(msg, "handshake", str(exc), where)
            return
        if len(self._conns) >= MAX_PENDING_HANDSHAKES + len(self._peers):
            pending = [t for t, c in self._conns.items() if c.chan is None]
            if pending:
                self._conns.pop(pending[0])
        conn = self._conns[token] = _NatsConn(self, token, hs)
        conn.last_request = asyncio.get_running_loop().time()
        await self._reply(msg, challenge)

    async def _proof(self, msg: Msg, token: str, conn: _NatsConn) -> None:
        hs = conn.hs
        where = conn.address
        if conn.chan is not None:
            await self._error(msg, "handshake", "connection already authenticated", where)
            return
        try:
            hs.proof(bytes(msg.data))
        except AuthenticationError as exc:
            self._conns.pop(token, None)
            self._handshakes_failed += 1
            await self._error(msg, "auth", f"authentication failed: {exc}", where)
            return
        except HybridSyncError as exc:
            self._conns.pop(token, None)
            self._handshakes_failed += 1
            await self._error(msg, "handshake", str(exc), where)
            return
        pid = hs.client_id
        if pid == self.memory.replica_id:
            self._conns.pop(token, None)
            self._handshakes_failed += 1
            await self._error(msg, "refused", "replica id in use by the hub", where)
            return
        conn.chan = hs.channel()
        conn.peer_id = pid
        with self._lock:
            peer = self._peers.get(pid)
            if peer is None:
                link = Link(self.memory, pid, role="server", max_frame_bytes=self.max_frame_bytes)
                peer = self._peers[pid] = _Peer(link)
        old = peer.conn
        peer.conn = conn  # type: ignore[assignment]
        peer.connections += 1
        if isinstance(old, _NatsConn):
            self._conns.pop(old.token, None)
            logger.info(
                "peer %s connected again (%s): its previous connection (%s) is superseded",
                printable_id(pid),
                conn.address,
                old.address,
            )
        logger.info("peer %s connected over NATS (%s)", printable_id(pid), conn.address)
        await self._reply(msg, conn.chan.seal(KIND_POKE))

    async def _part(self, msg: Msg, conn: _NatsConn, spec: str, data: bytes) -> bytes | None:
        try:
            i_text, n_text = spec.split("/")
            i, n = int(i_text), int(n_text)
        except ValueError:
            i = n = -1
        limit = self.max_frame_bytes + MESSAGE_OVERHEAD
        if not (0 <= i < n) or i != len(conn.parts):
            conn.parts, conn.parts_bytes = [], 0
            await self._error(msg, "refused", f"part {spec!r} out of order", conn.address)
            return None
        conn.parts_bytes += len(data)
        if conn.parts_bytes > limit:
            conn.parts, conn.parts_bytes = [], 0
            await self._error(msg, "size", "message over the hub's max_frame_bytes", conn.address)
            return None
        conn.parts.append(data)
        if i + 1 < n:
            await self._reply(msg, b"", {ACK: str(i)})
            return None
        whole = b"".join(conn.parts)
        conn.parts, conn.parts_bytes = [], 0
        self.parted_messages += 1
        return whole

    async def _fetch(self, msg: Msg, conn: _NatsConn, spec: str) -> None:
        try:
            i = int(spec)
        except ValueError:
            i = -1
        if not 0 < i < len(conn.out_parts):
            await self._error(msg, "refused", f"no reply part {spec!r}", conn.address)
            return
        part = conn.out_parts[i]
        if i == len(conn.out_parts) - 1:
            conn.out_parts = []  # delivered: a lost last part costs a retransmission
        await self._reply(msg, part)

    async def _frame(self, msg: Msg, conn: _NatsConn, data: bytes) -> None:
        assert conn.chan is not None
        pid = conn.peer_id
        peer = self._peers[pid]
        current: Any = peer.conn
        if current is not conn:
            await self._error(msg, "unknown", "connection superseded", conn.address)
            return
        try:
            kind, body = conn.chan.open(data)
        except RejectedMessage as exc:
            peer.rejected += 1
            await self._error(msg, "rejected", str(exc), f"{printable_id(pid)} ({conn.address})")
            return
        if kind != KIND_FRAME:
            await self._error(msg, "refused", f"message kind {kind}", conn.address)
            return
        with self._lock:
            try:
                peer.link.incoming(body)
            except HybridSyncError as exc:
                peer.rejected += 1
                await self._error(
                    msg,
                    "refused",
                    f"{type(exc).__name__}: {exc}",
                    f"{printable_id(pid)} ({conn.address})",
                )
                return
            reply = peer.link.outgoing()
            more = not peer.link.idle
        conn.poked = more
        if reply is None:  # a frame the link ignored as stale: answer nothing new
            await self._error(msg, "refused", "stale frame", conn.address)
            return
        peer.exchanges += 1
        peer.last_exchange = time.time()
        conn.quiet_until = asyncio.get_running_loop().time() + self.poke_guard
        sealed = conn.chan.seal(KIND_FRAME_MORE if more else KIND_FRAME, reply)
        size = _part_size(self.nc)
        if len(sealed) > size:
            conn.out_parts = split_parts(sealed, size)
            self.parted_messages += 1
            await self._reply(msg, conn.out_parts[0], {PARTS: str(len(conn.out_parts))})
        else:
            conn.out_parts = []
            await self._reply(msg, sealed)
        if self._wake is not None:
            self._wake.set()


def serve_nats(
    memory: Memory,
    nc: NatsClient,
    *,
    secret: bytes,
    swarm: str = "default",
    max_frame_bytes: int = 16 << 20,
    handshake_timeout: float = 10.0,
    idle_timeout: float = 30.0,
    poll_interval: float = 0.02,
    poke_guard: float = 0.1,
    lock: AbstractContextManager[Any] | None = None,
) -> NatsHub:
    """Serve ``memory`` to nodes over the NATS connection ``nc``:
    ``async with serve_nats(memory, nc, secret=...) as hub``.

    Args are those of :func:`hybridsync.net.serve`, plus ``swarm`` (the subject
    namespace: hubs and nodes of one swarm name the same) and ``idle_timeout``
    (a connection that sent nothing for this long counts as gone).
    """
    return NatsHub(
        memory,
        nc,
        secret=secret,
        swarm=swarm,
        max_frame_bytes=max_frame_bytes,
        handshake_timeout=handshake_timeout,
        idle_timeout=idle_timeout,
        poll_interval=poll_interval,
        poke_guard=poke_guard,
        lock=lock,
    )


# -- the node ----------------------------------------------------------------------------


class _HubGone(Exception):
    pass


class _Wire:
    """One connection to a NATS hub, shaped like the WebSocket connection a
    :class:`Session` drives: ``send`` starts an exchange, iterating yields the
    replies and wake-up hints, the iteration ends when the hub is gone."""

    def __init__(
        self, session: NatsSession, subject: str, token: str, poke_sub: Subscription
    ) -> None:
        self.session = session
        self.nc = session.nc
        self.subject = subject
        self.token = token
        self._poke_sub = poke_sub
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self.reason = ""
        self.silent = 0  # requests in a row that got no reply at all
        self.silent_since = 0.0  # when (loop time) the first of them was sent

    def deliver(self, data: bytes) -> None:
        if not self.closed:
            self._queue.put_nowait(data)

    def lose(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.reason = reason
            self._queue.put_nowait(None)

    async def send(self, message: bytes) -> None:
        if self.closed:
            return
        task = asyncio.create_task(self._exchange(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def request(
        self, payload: bytes, headers: dict[str, str] | None, timeout: float
    ) -> tuple[bytes, dict[str, str]]:
        try:
            reply = await self.nc.request(self.subject, payload, timeout=timeout, headers=headers)
        except nats_errors.NoRespondersError:
            raise _HubGone("the hub is gone (no responders on its subject)") from None
        hdrs = dict(reply.headers or {})
        code = hdrs.get(ERR)
        if code is not None:
            reason = bytes(reply.data).decode(errors="replace")
            if code == "auth":
                raise AuthenticationError(f"the hub refused our authentication: {reason}")
            if code in ("unknown", "handshake"):
                raise _HubGone(f"the hub dropped the connection: {reason}")
            raise _Refused(code, reason)
        return bytes(reply.data), hdrs

    async def _exchange(self, message: bytes) -> None:
        size = _part_size(self.nc)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with self._lock:
                if self.closed:
                    return
                parts = split_parts(message, size)
                n = len(parts)
                # A one-part request waits the session's retransmission timeout
                # (adaptive): one in flight when its hub died is sent again soon,
                # and the retransmission finds no responders. Parts wait longest.
                timeout = (
                    self.session.request_timeout() if n == 1 else self.session.reply_timeout[1]
                )
                data, hdrs = b"", dict[str, str]()
                for i, part in enumerate(parts):
                    headers = {PART: f"{i}/{n}"} if n > 1 else None
                    data, hdrs = await self.request(part, headers, timeout)
                if PARTS in hdrs:
                    count = int(hdrs[PARTS])
                    limit = self.session.max_frame_bytes + MESSAGE_OVERHEAD
                    if not 1 < count <= limit // size + 2:
                        raise _Refused("size", f"reply announced in {count} parts")
                    pieces = [data]
                    for i in range(1, count):
                        piece, _ = await self.request(
                            b"", {FETCH: str(i)}, self.session.reply_timeout[1]
                        )
                        pieces.append(piece)
                    data = b"".join(pieces)
                self.silent = 0
                self.deliver(data)
        except _HubGone as exc:
            self.lose(str(exc))
        except AuthenticationError as exc:
            self.lose(str(exc))
        except _Refused as exc:
            self.session.note_rejected()
            logger.warning("the hub refused a request (%s): %s", exc.code, exc.reason)
        except (nats_errors.TimeoutError, asyncio.TimeoutError):
            # The session sends the request again. A hub that is subscribed but
            # never answers (stopped, wedged) is left once MAX_SILENT requests in
            # a row got no reply for reply_timeout[1]: the next live hub takes over.
            if self.silent == 0:
                self.silent_since = started
            self.silent += 1
            quiet = loop.time() - self.silent_since
            if self.silent >= MAX_SILENT and quiet >= self.session.reply_timeout[1]:
                self.lose(f"no reply to {self.silent} requests in {quiet:.1f} s")
        except (nats_errors.Error, OSError) as exc:
            logger.info("NATS request failed: %s: %s", type(exc).__name__, exc)
        except ValueError as exc:
            self.session.note_rejected()
            logger.warning("malformed reply from the hub: %s", exc)

    def __aiter__(self) -> _Wire:
        return self

    async def __anext__(self) -> bytes:
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)
            raise StopAsyncIteration
        return item

    async def close(self) -> None:
        self.lose(self.reason or "closed")
        for task in list(self._tasks):
            await stop_task(task)
        with contextlib.suppress(nats_errors.Error):
            await self._poke_sub.unsubscribe()


class _Refused(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class NatsSession(Session):
    """A node's link to the first live hub of ``hubs``. Use :func:`connect_nats`."""

    def __init__(
        self,
        memory: Memory,
        nc: NatsClient,
        *,
        hubs: Sequence[str],
        secret: bytes,
        swarm: str = "default",
        max_frame_bytes: int = 16 << 20,
        period: tuple[float, float] = (0.02, 1.0),
        poll_interval: float | None = None,
        backoff: tuple[float, float] = (0.05, 1.0),
        reply_timeout: tuple[float, float] = (0.25, 8.0),
        handshake_timeout: float = 10.0,
        lock: AbstractContextManager[Any] | None = None,
        retry_auth_failures: bool = False,
    ) -> None:
        hub_list = list(hubs) if not isinstance(hubs, str) else [hubs]
        if not hub_list or not all(isinstance(h, str) and h for h in hub_list):
            raise InvalidArgumentError("hubs must be a non-empty list of hub replica ids")
        if len(set(hub_list)) != len(hub_list):
            raise InvalidArgumentError(f"hubs lists a hub twice: {hub_list!r}")
        if memory.replica_id in hub_list:
            raise InvalidArgumentError("hubs must not list this replica itself")
        super().__init__(
            memory,
            "ws://nats",  # replaced below: the Session's URL check is for WebSockets
            secret=secret,
            max_frame_bytes=max_frame_bytes,
            period=period,
            poll_interval=poll_interval,
            backoff=backoff,
            reply_timeout=reply_timeout,
            handshake_timeout=handshake_timeout,
            keepalive=None,
            lock=lock,
            retry_auth_failures=retry_auth_failures,
        )
        self.nc = nc
        self.swarm = swarm
        self.prefix = subject_prefix(swarm)
        self.hubs = hub_list
        self.url = f"nats:{','.join(hub_list)}"
        #: The hub this session is (or was last) connected to.
        self.current_hub: str | None = None
        #: Times the session moved to another hub than the one before.
        self.failovers = 0
        self._last_hub_seen: str | None = None

    def __repr__(self) -> str:
        state = "connected" if self.connected else ("failed" if self.error else "disconnected")
        return f"<NatsSession {self.memory.replica_id!r} -> {self.current_hub!r}: {state}>"

    async def start(self) -> NatsSession:
        await super().start()
        return self

    def request_timeout(self) -> float:
        """How long one request waits for its reply: the retransmission timeout."""
        return self._rto

    def note_rejected(self) -> None:
        self._rejected += 1

    async def __aenter__(self) -> NatsSession:
        return await self.start()

    def status(self) -> PeerStatus:
        status = super().status()
        if self.connected and self.current_hub is not None:
            status.address = f"nats:{self.current_hub}"
        return status

    async def _open(self) -> tuple[Any, ClientHandshake]:
        errors: list[str] = []
        for hub in self.hubs:
            try:
                return await self._open_one(hub)
            except _HubGone as exc:
                errors.append(f"{hub}: {exc}")
            except (nats_errors.TimeoutError, asyncio.TimeoutError):
                errors.append(f"{hub}: no answer within {self.handshake_timeout} s")
            except (nats_errors.Error, _Refused, HandshakeError, RejectedMessage) as exc:
                errors.append(f"{hub}: {exc}")
        raise ConnectionRefusedError("no hub answers: " + "; ".join(errors))

    async def _open_one(self, hub: str) -> tuple[Any, ClientHandshake]:
        token = secrets.token_hex(16)
        subject = f"{self.prefix}.hub.{hub_token(hub)}.c.{token}"
        holder: list[_Wire] = []

        async def on_poke(msg: Msg) -> None:
            if holder:
                holder[0].deliver(bytes(msg.data))

        poke_sub = await self.nc.subscribe(f"{self.prefix}.node.{token}", cb=on_poke)
        wire = _Wire(self, subject, token, poke_sub)
        holder.append(wire)
        try:
            hs = ClientHandshake(self._secret, self.memory.replica_id)
            challenge, _ = await wire.request(hs.hello(), {OP: "hello"}, self.handshake_timeout)
            proof = hs.challenge(challenge)
            if hs.server_id != hub:
                raise HandshakeError(
                    f"the hub on {hub!r}'s subject is {printable_id(hs.server_id)}"
                )
            welcome, _ = await wire.request(proof, {OP: "proof"}, self.handshake_timeout)
            kind, _ = hs.channel().open(welcome)
            if kind != KIND_POKE:
                raise HandshakeError(f"unexpected welcome message of kind {kind}")
        except BaseException:
            await wire.close()
            raise
        # Replies sealed after the welcome have later counters: a fresh
        # channel from the same handshake accepts them.
        if self._last_hub_seen is not None and self._last_hub_seen != hub:
            self.failovers += 1
            logger.warning(
                "node %s moved from hub %s to hub %s",
                printable_id(self.memory.replica_id),
                printable_id(self._last_hub_seen),
                printable_id(hub),
            )
        self._last_hub_seen = self.current_hub = hub
        return wire, hs

    async def _read(self, conn: Any) -> None:
        wire: _Wire = conn.ws
        async for message in wire:
            self._on_message(conn, message)
        self._lost(conn, wire.reason or "closed")
        if wire.reason.startswith("the hub refused our authentication"):
            error = AuthenticationError(wire.reason)
            if not self.retry_auth_failures:
                self._set_fatal(error)


def connect_nats(
    memory: Memory,
    nc: NatsClient,
    *,
    hubs: Sequence[str],
    secret: bytes,
    swarm: str = "default",
    max_frame_bytes: int = 16 << 20,
    period: tuple[float, float] = (0.02, 1.0),
    poll_interval: float | None = None,
    backoff: tuple[float, float] = (0.05, 1.0),
    reply_timeout: tuple[float, float] = (0.25, 8.0),
    handshake_timeout: float = 10.0,
    lock: AbstractContextManager[Any] | None = None,
    retry_auth_failures: bool = False,
) -> NatsSession:
    """Connect ``memory`` to the first live hub of ``hubs`` over the NATS
    connection ``nc``: ``async with connect_nats(memory, nc, hubs=[...], secret=...)``.

    When the hub is gone (a request finds no responders) the session joins the
    first hub of ``hubs`` that answers; a hub of another incarnation gets every
    document and the whole metadata again (nothing the node holds is lost).
    The other arguments are those of :func:`hybridsync.net.connect`.
    """
    return NatsSession(
        memory,
        nc,
        hubs=hubs,
        secret=secret,
        swarm=swarm,
        max_frame_bytes=max_frame_bytes,
        period=period,
        poll_interval=poll_interval,
        backoff=backoff,
        reply_timeout=reply_timeout,
        handshake_timeout=handshake_timeout,
        lock=lock,
        retry_auth_failures=retry_auth_failures,
    )
