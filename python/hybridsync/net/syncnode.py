"""A synchronous face of the transport for agent runtimes that are not async.

:class:`SyncNode` runs an event loop in a background thread with a hub
(:func:`~hybridsync.net.serve`), an upstream session
(:func:`~hybridsync.net.connect`) or both (a hub of hubs), and gives plain
threads a lock and blocking calls.

:class:`~hybridsync.Memory` is not thread-safe. The rule is simple: **touch
the replica only while holding** ``node.lock`` (``node.write(fn)`` and
``node.read(fn)`` do it for you). The loop thread holds the same lock
whenever it calls into a link, so a frame is never applied in the middle of
an agent's write. Keep the lock briefly (it pauses the network while held),
and never call :meth:`SyncNode.sync` while holding it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ssl as ssl_module
import threading
from collections.abc import Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any, TypeVar

from hybridsync.errors import InvalidArgumentError
from hybridsync.memory import Memory
from hybridsync.net._common import ClosedError, PeerStatus, SyncTimeoutError
from hybridsync.net.hub import Hub
from hybridsync.net.session import Session

__all__ = ["NodeLock", "SyncNode"]

T = TypeVar("T")


class NodeLock:
    """A re-entrant lock that knows whether the calling thread holds it."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._local = threading.local()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        ok = self._lock.acquire(blocking, timeout)
        if ok:
            self._local.depth = getattr(self._local, "depth", 0) + 1
        return ok

    def release(self) -> None:
        self._local.depth -= 1
        self._lock.release()

    def held(self) -> bool:
        """True when the calling thread holds the lock."""
        return getattr(self._local, "depth", 0) > 0

    def __enter__(self) -> NodeLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class SyncNode:
    """A hub, a node, or both, driven from a background thread.

    ::

        with SyncNode(Memory("agent-1"), url="ws://hub:8765", secret=key) as node:
            node.write(lambda m: m.text.__setitem__("plan", "1. draft\\n"))
            with node.lock:                      # several reads/writes at once
                m = node.memory
                m.meta["status"] = {"agent-1": "busy"}
            node.sync(timeout=10)                # the hub has both writes now

    Args:
        memory: the replica (touch it only under ``node.lock``).
        secret: the swarm's shared secret.
        url: the upstream hub (``None``: this node is the root).
        serve: ``(host, port)`` to also serve children (``port`` 0: any free
            port, see :attr:`port`); ``None``: no hub.
        ssl: client TLS context for ``wss://`` URLs.
        server_ssl: server TLS context for the hub.
        connect_options, serve_options: further keyword arguments for
            :func:`~hybridsync.net.connect` and :func:`~hybridsync.net.serve`.
        start_timeout: how long to wait for the hub to listen.

    Raises whatever starting the hub raises (a port in use: ``OSError``).
    """

    def __init__(
        self,
        memory: Memory,
        *,
        secret: bytes,
        url: str | None = None,
        serve: tuple[str, int] | None = None,
        ssl: ssl_module.SSLContext | None = None,
        server_ssl: ssl_module.SSLContext | None = None,
        connect_options: Mapping[str, Any] | None = None,
        serve_options: Mapping[str, Any] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        if url is None and serve is None:
            raise InvalidArgumentError(
                "a SyncNode needs a url to connect to, serve=(host, port), or both"
            )
        self.memory = memory
        self.lock = NodeLock()
        self.hub: Hub | None = None
        self.session: Session | None = None
        if serve is not None:
            host, port = serve
            self.hub = Hub(
                memory,
                host,
                port,
                secret=secret,
                ssl=server_ssl,
                lock=self.lock,
                **dict(serve_options or {}),
            )
        if url is not None:
            self.session = Session(
                memory, url, secret=secret, ssl=ssl, lock=self.lock, **dict(connect_options or {})
            )
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._main, name=f"hybridsync-node-{memory.replica_id}", daemon=True
        )
        self._thread.start()
        try:
            self._call(self._start(), start_timeout)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        parts = []
        if self.hub is not None:
            parts.append(f"serving on port {self.hub.port}")
        if self.session is not None:
            parts.append(repr(self.session))
        return f"<SyncNode {self.memory.replica_id!r}: {', '.join(parts)}>"

    # -- thread and loop -------------------------------------------------------

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise InvalidArgumentError("blocking SyncNode calls cannot run on its own loop thread")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise SyncTimeoutError(f"the node did not answer within {timeout} s") from None

    async def _start(self) -> None:
        if self.hub is not None:
            await self.hub.start()
        if self.session is not None:
            await self.session.start()

    async def _stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self.hub is not None:
            await self.hub.close()

    # -- public API ------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the hub listens on (0 without a hub)."""
        return self.hub.port if self.hub is not None else 0

    @property
    def url(self) -> str:
        """The URL children use to reach this node's hub."""
        if self.hub is None:
            raise InvalidArgumentError("this node does not serve")
        return self.hub.url

    def write(self, fn: Callable[[Memory], T]) -> T:
        """Run ``fn(memory)`` under the lock, then cycle promptly."""
        with self.lock:
            result = fn(self.memory)
        self.notify()
        return result

    def read(self, fn: Callable[[Memory], T]) -> T:
        """Run ``fn(memory)`` under the lock (for reads)."""
        with self.lock:
            return fn(self.memory)

    def notify(self) -> None:
        """The replica changed: cycle now (changes are noticed within the poll
        interval anyway). Safe from any thread."""
        if self._closed:
            return
        if self.session is not None:
            self._loop.call_soon_threadsafe(self.session.notify)
        if self.hub is not None:
            self._loop.call_soon_threadsafe(self.hub.notify)

    def sync(self, timeout: float = 30.0) -> None:
        """Block until the upstream hub acknowledged every change made before
        the call (see :meth:`Session.sync`). Without an upstream: returns."""
        self._check_open()
        if self.session is None:
            return
        if self.lock.held():
            raise InvalidArgumentError("release node.lock before calling sync(): the loop needs it")
        self._call(self.session.sync(timeout), timeout + 10.0)

    def wait_connected(self, timeout: float = 30.0) -> None:
        """Block until the upstream connection is authenticated."""
        self._check_open()
        if self.session is not None:
            self._call(self.session.wait_connected(timeout), timeout + 10.0)

    def status(self) -> dict[str, PeerStatus]:
        """Snapshots of every link: the upstream one and the hub's."""
        self._check_open()

        async def collect() -> dict[str, PeerStatus]:
            out: dict[str, PeerStatus] = {}
            if self.session is not None:
                status = self.session.status()
                out[status.peer_id] = status
            if self.hub is not None:
                out.update(self.hub.peers)
            return out

        return self._call(collect(), 30.0)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the node is closed")

    def close(self, timeout: float = 30.0) -> None:
        """Stop the hub and the session and the background thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            try:
                future = asyncio.run_coroutine_threadsafe(self._stop(), self._loop)
                future.result(timeout)
            except Exception:  # pragma: no cover - closing anyway
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    def __enter__(self) -> SyncNode:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
