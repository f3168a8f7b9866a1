"""The node side of the transport: one upstream link, kept alive.

A :class:`Session` owns one client :class:`~hybridsync.Link` for the life of
the session and drives it over a WebSocket to the hub: reconnecting with
exponential backoff, one frame in flight (a request, then its reply or a
timeout and a retransmission), and an adaptive cycle period.

Cycle policy (push-driven by default):

* after an exchange that carried changes (we sent some, the reply brought
  some, or the hub woke us), the next cycle starts after ``min_period``;
  after a quiet one the session sends nothing until there is something to
  say: a local change, a wake-up from the hub, :meth:`Session.sync`, or a
  reconnection. An idle link costs no sync bytes at all; liveness is the
  WebSocket keepalive (a ping and its pong, 16 bytes every ``keepalive``
  seconds). With ``period=(min, max)`` the session also polls while idle,
  the period doubling after each quiet exchange up to ``max``;
* while waiting, the session checks every ``poll_interval`` whether the
  replica changed locally (:attr:`hybridsync.Link.idle`) and cycles if so;
  :meth:`Session.notify` cycles without waiting for that check;
* a hub wakes its children when it has something for them (a hint message,
  or a flag on its reply);
* cycles are never closer than ``min_period``, except that :meth:`Session.sync`
  starts one at once.

If the hub comes back as a *different incarnation* (a fresh process or a
fresh replica object: it lost its state) the session starts a fresh link,
which sends every document and the whole metadata again, so the hub is
refilled from its nodes. Documents whose copies differ between nodes are
then merged by the engine's creation rule (both texts are kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import ssl as ssl_module
import time
from contextlib import AbstractContextManager
from dataclasses import replace
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from hybridsync.errors import HybridSyncError, InvalidArgumentError
from hybridsync.memory import Memory
from hybridsync.net._common import (
    CLOSE_AUTH,
    CLOSE_REFUSED,
    ClosedError,
    PeerStatus,
    SyncTimeoutError,
    logger,
    null_lock,
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
    check_secret,
)
from hybridsync.net.hub import describe_close, set_message_limit
from hybridsync.sync.link import Link

__all__ = ["Session", "connect"]

_PLACEHOLDER_PEER = "(hub)"


class _Fatal(Exception):
    def __init__(self, error: HybridSyncError) -> None:
        super().__init__(str(error))
        self.error = error


class _Conn:
    __slots__ = ("chan", "closed_reason", "lost", "ws")

    def __init__(self, ws: ClientConnection, chan: Channel) -> None:
        self.ws = ws
        self.chan = chan
        self.lost = False
        self.closed_reason = ""


def _pair(value: tuple[float, float], name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a (min, max) pair of seconds") from None
    if not (0 < lo <= hi):
        raise InvalidArgumentError(f"{name} must satisfy 0 < min <= max, got {value!r}")
    return lo, hi


def _period(value: tuple[float, float | None]) -> tuple[float, float]:
    """``(min, max)`` seconds, ``max`` None for no polling while idle (infinite)."""
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise InvalidArgumentError("period must be a (min, max) pair of seconds") from None
    return _pair((lo, math.inf if hi is None else hi), "period")


class Session:
    """A node's connection to its hub. Use :func:`connect`; see it for the arguments."""

    def __init__(
        self,
        memory: Memory,
        url: str,
        *,
        secret: bytes,
        ssl: ssl_module.SSLContext | None = None,
        hub_id: str | None = None,
        max_frame_bytes: int = 16 << 20,
        period: tuple[float, float | None] = (0.02, None),
        poll_interval: float | None = None,
        backoff: tuple[float, float] = (0.05, 5.0),
        reply_timeout: tuple[float, float] = (0.25, 8.0),
        handshake_timeout: float = 10.0,
        keepalive: float | None = 20.0,
        lock: AbstractContextManager[Any] | None = None,
        retry_auth_failures: bool = False,
    ) -> None:
        if not isinstance(memory, Memory):
            raise InvalidArgumentError(f"memory must be a Memory, got {type(memory).__name__}")
        self._secret = check_secret(secret)
        try:
            scheme = urlsplit(url).scheme
        except (TypeError, ValueError, AttributeError):
            scheme = ""
        if scheme not in ("ws", "wss"):
            raise InvalidArgumentError(
                f"the hub URL must be ws:// or wss://, got {safe_url(str(url))!r}"
            )
        if scheme == "wss" and ssl is None:
            ssl = ssl_module.create_default_context()
        if not (isinstance(max_frame_bytes, int) and max_frame_bytes > 0):
            raise InvalidArgumentError("max_frame_bytes must be a positive int")
        if not handshake_timeout > 0:
            raise InvalidArgumentError("handshake_timeout must be > 0")
        self.memory = memory
        self.url = url
        self.ssl = ssl if scheme == "wss" else None
        self.hub_id = hub_id
        self.max_frame_bytes = max_frame_bytes
        self.min_period, self.max_period = _period(period)
        self.poll_interval = poll_interval if poll_interval is not None else self.min_period
        if not self.poll_interval > 0:
            raise InvalidArgumentError("poll_interval must be > 0")
        self.backoff = _pair(backoff, "backoff")
        self.reply_timeout = _pair(reply_timeout, "reply_timeout")
        self.handshake_timeout = handshake_timeout
        self.keepalive = keepalive
        self.retry_auth_failures = retry_auth_failures
        self._lock: AbstractContextManager[Any] = lock if lock is not None else null_lock()
        self.link: Link | None = None
        self._incarnation: bytes | None = None
        self._conn: _Conn | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._connected: asyncio.Event | None = None
        self._reply: asyncio.Event | None = None
        self._closing = False
        self.error: HybridSyncError | None = None
        # cycle state
        self._period = self.min_period
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._rto = min(max(1.0, self.reply_timeout[0]), self.reply_timeout[1])
        self._requests = 0  # new requests made (retransmissions excluded)
        self._answered = 0  # the latest request answered
        self._reply_busy = False
        self._poked = False
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        # status
        self._connections = 0
        self._exchanges = 0
        self._last_exchange: float | None = None
        self._rejected = 0
        self._timeouts = 0
        self._hub_restarts = 0
        self._address: str | None = None

    def __repr__(self) -> str:
        state = "connected" if self.connected else ("failed" if self.error else "disconnected")
        return f"<Session {self.memory.replica_id!r} -> {safe_url(self.url)}: {state}>"

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> Session:
        """Start the session (it connects in the background)."""
        if self._task is not None:
            return self
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._reply = asyncio.Event()
        with self._lock:
            # Created now, not at the first connection: the replica must not
            # act as the root of the link tree (which compacts metadata) while
            # it is not connected yet.
            peer = self.hub_id or _PLACEHOLDER_PEER
            if self.memory.durable and self.hub_id is None:
                # A durable replica resumes its saved link to the hub it knew.
                saved = [p for role, p in self.memory.saved_links() if role == "client"]
                if len(saved) == 1:
                    peer = saved[0]
            self.link = Link(
                self.memory,
                peer,
                role="client",
                max_frame_bytes=self.max_frame_bytes,
            )
        self._task = asyncio.create_task(self._run())
        return self

    async def close(self) -> None:
        """Stop: close the connection and detach the link. Call :meth:`sync`
        first to make sure the latest local changes reached the hub."""
        if self._closing:
            return
        self._closing = True
        if self._task is not None:
            await stop_task(self._task)
        if self.link is not None:
            with self._lock:
                self.link.close()
        self._fail_waiters(self.error or ClosedError("the session is closed"))
        logger.info("session %s closed", printable_id(self.memory.replica_id))

    async def __aenter__(self) -> Session:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- public API ------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """An authenticated connection to the hub is open."""
        return self._conn is not None and not self._conn.lost

    def notify(self) -> None:
        """The replica changed: cycle now rather than at the next check.

        Optional: local changes are noticed within ``poll_interval`` anyway.
        Must be called from the event loop's thread (a :class:`SyncNode` does
        this for you).
        """
        if self._wake is not None:
            self._wake.set()

    async def sync(self, timeout: float | None = 30.0) -> None:
        """Force a cycle and wait for its acknowledgement.

        Returns once the hub answered a request made after this call, which
        carried every local change made before the call: the hub holds them.
        Raises :class:`SyncTimeoutError` after ``timeout`` seconds (nothing is
        lost; the session keeps trying), :class:`AuthenticationError` if the
        session failed to authenticate, :class:`ClosedError` once closed.
        """
        self._check_usable()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        entry = (self._requests + 1, future)
        self._waiters.append(entry)
        self.notify()
        try:
            await asyncio.wait({future}, timeout=timeout)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)
        if not future.done():
            raise SyncTimeoutError(
                f"no acknowledgement from the hub within {timeout} s "
                f"({'connected' if self.connected else 'not connected'})"
            )
        future.result()

    async def wait_connected(self, timeout: float | None = 30.0) -> None:
        """Wait until an authenticated connection is open. Raises like :meth:`sync`."""
        self._check_usable()
        assert self._connected is not None and self._task is not None
        if self.connected:
            return
        waiter = asyncio.ensure_future(self._connected.wait())
        try:
            await asyncio.wait(
                {waiter, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
        self._check_usable()
        if not self.connected:
            raise SyncTimeoutError(f"not connected to the hub within {timeout} s")

    def status(self) -> PeerStatus:
        """A snapshot of this node's upstream link."""
        with self._lock:
            metrics = replace(self.link.metrics) if self.link is not None else None
        status = PeerStatus(
            peer_id=self.link.peer_id if self.link is not None else "",
            role="client",
            connected=self.connected,
            address=self._address if self.connected else None,
            connections=self._connections,
            exchanges=self._exchanges,
            last_exchange=self._last_exchange,
            rejected=self._rejected,
            timeouts=self._timeouts,
            period=None if self._period == math.inf else self._period,
            hub_restarts=self._hub_restarts,
        )
        if metrics is not None:
            status.link = metrics
        return status

    # -- internals -------------------------------------------------------------

    def _check_usable(self) -> None:
        if self.error is not None:
            raise self.error
        if self._closing:
            raise ClosedError("the session is closed")
        if self._task is None:
            raise ClosedError("the session is not started (use `async with connect(...)`)")

    def _fail_waiters(self, error: BaseException) -> None:
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(error)
                future.exception()  # mark retrieved: a timed-out caller is gone
        self._waiters.clear()

    def _resolve_waiters(self) -> None:
        for target, future in self._waiters:
            if target <= self._answered and not future.done():
                future.set_result(None)

    async def _run(self) -> None:
        delay = self.backoff[0]
        where = safe_url(self.url)
        try:
            while not self._closing:
                try:
                    ws, hs = await self._open()
                except AuthenticationError as exc:
                    if not self.retry_auth_failures:
                        raise _Fatal(exc) from None
                    logger.error("cannot authenticate with the hub at %s: %s", where, exc)
                except (OSError, asyncio.TimeoutError, WebSocketException, HandshakeError) as exc:
                    logger.info(
                        "cannot reach the hub at %s: %s: %s",
                        where,
                        type(exc).__name__,
                        exc,
                    )
                except Exception:
                    logger.exception("unexpected error while connecting to the hub at %s", where)
                else:
                    answered_before = self._answered
                    try:
                        await self._connected_to(ws, hs)
                    except (_Fatal, asyncio.CancelledError):
                        raise
                    except Exception:
                        # A bug must not end the session silently: log, reconnect.
                        logger.exception("unexpected error on the connection to %s", where)
                    finally:
                        self._conn = None
                        assert self._connected is not None
                        self._connected.clear()
                        await ws.close()
                    if self.error is not None:
                        break
                    if self._answered > answered_before:
                        delay = self.backoff[0]
                if self._closing:
                    break
                await asyncio.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, self.backoff[1])
        except _Fatal as fatal:
            if self.error is None:
                self._set_fatal(fatal.error)

    async def _open(self) -> tuple[ClientConnection, ClientHandshake]:
        ws = await ws_connect(
            self.url,
            ssl=self.ssl,
            compression=None,
            open_timeout=self.handshake_timeout,
            close_timeout=min(self.handshake_timeout, 5.0),
            ping_interval=self.keepalive,
            ping_timeout=self.keepalive,
            max_size=self.max_frame_bytes + MESSAGE_OVERHEAD,
            proxy=None,
        )
        try:
            set_message_limit(ws, MAX_HANDSHAKE_MESSAGE)
            hs = ClientHandshake(self._secret, self.memory.replica_id)
            await ws.send(hs.hello())
            challenge = await asyncio.wait_for(ws.recv(), self.handshake_timeout)
            proof = hs.challenge(challenge)
            if self.hub_id is not None and hs.server_id != self.hub_id:
                raise HandshakeError(
                    f"connected to hub {printable_id(hs.server_id)}, "
                    f"expected {printable_id(self.hub_id)}"
                )
            await ws.send(proof)
        except BaseException:
            with contextlib.suppress(Exception):
                await ws.close()
            raise
        set_message_limit(ws, self.max_frame_bytes + MESSAGE_OVERHEAD)
        return ws, hs

    async def _connected_to(self, ws: ClientConnection, hs: ClientHandshake) -> None:
        assert self._connected is not None and self._wake is not None
        server_id = hs.server_id
        with self._lock:
            assert self.link is not None
            known = self._incarnation or self.link.peer_incarnation
            if known is not None and hs.incarnation != known:
                # The hub lost its state: a fresh link sends everything again.
                self.link.close()
                self.link = Link(
                    self.memory,
                    server_id,
                    role="client",
                    max_frame_bytes=self.max_frame_bytes,
                    resume=False,
                )
                self._hub_restarts += 1
                logger.warning(
                    "hub %s restarted without its state: sending every document and the "
                    "metadata again",
                    printable_id(server_id),
                )
            else:
                self.link.rename_peer(server_id)
            self.link.set_peer_incarnation(hs.incarnation)
        self._incarnation = hs.incarnation
        conn = _Conn(ws, hs.channel())
        self._conn = conn
        self._connections += 1
        self._address = safe_url(self.url)
        self._connected.set()
        self._period = self.min_period
        logger.info(
            "node %s connected to hub %s at %s",
            printable_id(self.memory.replica_id),
            printable_id(server_id),
            self._address,
        )
        reader = asyncio.create_task(self._read(conn))
        try:
            await self._cycle(conn)
        finally:
            await stop_task(reader)
        logger.info(
            "node %s lost the connection to hub %s: %s",
            printable_id(self.memory.replica_id),
            printable_id(server_id),
            conn.closed_reason or "closed",
        )

    def _lost(self, conn: _Conn, reason: str) -> None:
        conn.lost = True
        conn.closed_reason = conn.closed_reason or reason
        assert self._wake is not None and self._reply is not None
        self._wake.set()
        self._reply.set()

    async def _read(self, conn: _Conn) -> None:
        limit = self.max_frame_bytes + MESSAGE_OVERHEAD
        try:
            async for message in conn.ws:
                self._on_message(conn, message)
            self._lost(conn, "closed by the hub")
        except ConnectionClosed as exc:
            self._lost(conn, describe_close(exc, limit))
            if exc.sent is not None and exc.sent.code == 1009:
                self._rejected += 1
                logger.warning("reply from the hub rejected: %s", conn.closed_reason)
            code = exc.rcvd.code if exc.rcvd is not None else None
            if code == CLOSE_AUTH:
                error: HybridSyncError = AuthenticationError(
                    "the hub refused our authentication (the secrets differ?)"
                )
                if not self.retry_auth_failures:
                    self._set_fatal(error)
            elif code == CLOSE_REFUSED:
                self._set_fatal(
                    ClosedError(f"the hub refused this node: {exc.rcvd.reason if exc.rcvd else ''}")
                )
        except Exception as exc:  # pragma: no cover - defensive
            self._lost(conn, f"{type(exc).__name__}: {exc}")
            raise

    def _set_fatal(self, error: HybridSyncError) -> None:
        self.error = error
        logger.error(
            "session %s stopped: %s: %s",
            printable_id(self.memory.replica_id),
            type(error).__name__,
            error,
        )
        self._fail_waiters(error)

    def _on_message(self, conn: _Conn, message: object) -> None:
        assert self._wake is not None and self._reply is not None
        try:
            kind, body = conn.chan.open(message)
        except RejectedMessage as exc:
            self._rejected += 1
            logger.warning("message from the hub rejected: %s; nothing changed", exc)
            return
        if kind == KIND_POKE:
            self._poked = True
            self._wake.set()
            return
        if kind not in (KIND_FRAME, KIND_FRAME_MORE):
            logger.debug("ignoring message of unknown kind %d from the hub", kind)
            return
        with self._lock:
            link = self.link
            assert link is not None
            was_waiting = link.awaiting_reply
            try:
                link.incoming(body)
            except HybridSyncError as exc:
                self._rejected += 1
                logger.warning(
                    "frame from the hub refused: %s: %s; nothing changed", type(exc).__name__, exc
                )
                return
            except Exception:
                # Not an error the engine reports on bad input: a bug. Keep
                # the connection; the request is retransmitted.
                self._rejected += 1
                logger.exception("frame from the hub could not be applied")
                return
            answered = was_waiting and not link.awaiting_reply
            busy = answered and not link.idle
            # A reply that moved us across metadata epochs without some writes
            # of that request acknowledges only the requests before it.
            complete = link.reply_complete
        if answered:
            self._answered = self._requests if complete else self._requests - 1
            self._reply_busy = busy
            self._exchanges += 1
            self._last_exchange = time.time()
            if kind == KIND_FRAME_MORE:
                self._poked = True
                self._wake.set()
            self._reply.set()
            self._resolve_waiters()

    async def _cycle(self, conn: _Conn) -> None:
        assert self._wake is not None and self._reply is not None
        loop = asyncio.get_running_loop()
        sends = 0  # sends of the current request (for RTT samples)
        while not conn.lost:
            if self.error is not None:
                raise _Fatal(self.error)
            self._wake.clear()
            self._poked = False
            forced = bool(self._waiters)
            with self._lock:
                link = self.link
                assert link is not None
                new = not link.awaiting_reply
                had_changes = not link.idle
                frame = link.outgoing()
            assert frame is not None  # a client always has a request to send
            if new:
                self._requests += 1
                sends = 0
            sends += 1
            if len(frame) > self.max_frame_bytes:
                logger.warning(
                    "request of %d bytes is over max_frame_bytes=%d: the hub may refuse it",
                    len(frame),
                    self.max_frame_bytes,
                )
            self._reply.clear()
            started = loop.time()
            try:
                await conn.ws.send(conn.chan.seal(KIND_FRAME, frame))
            except ConnectionClosed as exc:
                self._lost(conn, describe_close(exc))
                return
            await wait_event(self._reply, self._rto)
            if conn.lost:
                return
            with self._lock:
                answered = not link.awaiting_reply
            if not answered:
                self._timeouts += 1
                self._rto = min(self._rto * 2, self.reply_timeout[1])
                logger.debug("no reply within %.2f s: sending the request again", self._rto / 2)
                continue
            if sends == 1:
                self._rtt_sample(loop.time() - started)
            active = had_changes or self._reply_busy or self._poked or forced
            if active:
                self._period = self.min_period
            elif self.max_period == math.inf:
                self._period = math.inf  # push-driven: nothing to say, nothing sent
            else:
                self._period = min(self._period * 2, self.max_period)
            await self._pause(conn, self._period)

    def _rtt_sample(self, rtt: float) -> None:
        if self._srtt is None:
            self._srtt, self._rttvar = rtt, rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt
        lo, hi = self.reply_timeout
        self._rto = min(max(self._srtt + 4 * self._rttvar, lo), hi)

    async def _pause(self, conn: _Conn, period: float) -> None:
        """Wait up to ``period`` before the next cycle.

        Returns at once for :meth:`sync` or a lost connection; after at least
        ``min_period`` (so a hub that always has more to say cannot make the
        node spin) on a wake-up (:meth:`notify`, a hint from the hub) or a
        local change.
        """
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        start = loop.time()
        while not conn.lost and not self._waiters:
            elapsed = loop.time() - start
            if elapsed >= period:
                return
            if elapsed >= self.min_period:
                if self._wake.is_set():
                    return
                with self._lock:
                    assert self.link is not None
                    if not self.link.idle:
                        return
                wait = min(self.poll_interval, period - elapsed)
            else:
                wait = self.min_period - elapsed
            if self._wake.is_set():
                await asyncio.sleep(wait)  # woken early: the minimum spacing first
            else:
                await wait_event(self._wake, max(wait, 0.001))


def connect(
    memory: Memory,
    url: str,
    *,
    secret: bytes,
    ssl: ssl_module.SSLContext | None = None,
    hub_id: str | None = None,
    max_frame_bytes: int = 16 << 20,
    period: tuple[float, float | None] = (0.02, None),
    poll_interval: float | None = None,
    backoff: tuple[float, float] = (0.05, 5.0),
    reply_timeout: tuple[float, float] = (0.25, 8.0),
    handshake_timeout: float = 10.0,
    keepalive: float | None = 20.0,
    lock: AbstractContextManager[Any] | None = None,
    retry_auth_failures: bool = False,
) -> Session:
    """Connect ``memory`` to a hub: ``async with connect(memory, url, secret=...) as session``.

    The session connects in the background and reconnects after any failure
    (backoff doubling from ``backoff[0]`` to ``backoff[1]`` seconds, with
    jitter), keeping its link: nothing is lost across reconnections.

    Args:
        memory: this node's replica.
        url: ``ws://host:port`` or ``wss://host:port`` (TLS).
        secret: the swarm's shared secret (at least 16 bytes).
        ssl: a client :class:`ssl.SSLContext` for ``wss://`` (default: the
            system's trust store with hostname checking).
        hub_id: refuse a hub with another replica id (default: any).
        max_frame_bytes: the largest sync frame accepted from the hub.
        period: ``(min, max)`` seconds between cycles: ``min`` after activity;
            while idle, ``max=None`` (the default) sends nothing until a local
            change, a wake-up from the hub or :meth:`Session.sync` (0 sync
            bytes while idle); a number polls, the period doubling up to it.
        poll_interval: how often local changes are looked for while waiting
            (default ``period[0]``); :meth:`Session.notify` skips the wait.
        backoff: ``(initial, max)`` seconds between reconnection attempts.
        reply_timeout: ``(min, max)`` bounds of the adaptive retransmission
            timeout (estimated from round-trip times, doubling on each loss).
        handshake_timeout: limit for connecting and authenticating.
        keepalive: WebSocket ping interval and timeout (``None``: none).
        lock: held while the session calls into its link (see :func:`serve`).
        retry_auth_failures: keep retrying after an authentication failure
            (default: stop, and raise :class:`AuthenticationError` from
            :meth:`Session.sync` and :meth:`Session.wait_connected`).
    """
    return Session(
        memory,
        url,
        secret=secret,
        ssl=ssl,
        hub_id=hub_id,
        max_frame_bytes=max_frame_bytes,
        period=period,
        poll_interval=poll_interval,
        backoff=backoff,
        reply_timeout=reply_timeout,
        handshake_timeout=handshake_timeout,
        keepalive=keepalive,
        lock=lock,
        retry_auth_failures=retry_auth_failures,
    )
