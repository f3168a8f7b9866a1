"""A fault-injecting WebSocket relay for tests and demos.

:class:`FaultProxy` listens for WebSocket connections and relays every message
to a target hub over a second connection, dropping, delaying, duplicating and
reordering messages with seeded randomness, and now and then closing both
connections. The relay does not understand the messages: authentication is
end to end (node <-> hub), and the messages it duplicates or reorders are
refused by the receiver's replay protection, so to the sync engine they look
like losses, which its retransmissions heal.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import ssl as ssl_module
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

from hybridsync.errors import InvalidArgumentError
from hybridsync.net._common import logger, wait_event

__all__ = ["FaultProxy", "FaultStats"]


@dataclass
class FaultStats:
    """What a :class:`FaultProxy` did so far (both directions together)."""

    connections: int = 0
    #: Connections refused because the target could not be reached.
    refused: int = 0
    messages: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    #: Connections closed on purpose (the ``disconnect`` fault).
    disconnects: int = 0


async def _finish(task: asyncio.Future[Any]) -> None:
    """Cancel a relay task and wait for it; a closed connection is its normal end."""
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        exc = task.exception()
        if exc is not None and not isinstance(exc, (ConnectionClosed, OSError)):
            logger.error("proxy relay failed", exc_info=exc)


def _probability(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise InvalidArgumentError(f"{name} must be a probability in 0..1, got {value!r}")
    return float(value)


def _interval(name: str, value: tuple[float, float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a (min, max) pair of seconds") from None
    if not 0 <= lo <= hi:
        raise InvalidArgumentError(f"{name} must satisfy 0 <= min <= max, got {value!r}")
    return lo, hi


class FaultProxy:
    """Relay WebSocket messages to ``target`` with seeded faults.

    Use as ``async with FaultProxy(hub.url, loss=0.2) as proxy:`` and point
    nodes at ``proxy.url``. Each message (after the first ``spare_first`` of
    each direction of a connection, which carry the handshake) independently:

    * closes both connections with probability ``disconnect``;
    * is lost with probability ``loss``;
    * is delayed by a uniform draw from ``delay`` seconds (so messages in
      flight together may swap);
    * with probability ``reorder``, is held back a further ``reorder_delay``
      (later messages overtake it);
    * with probability ``duplicate``, is delivered twice.

    Connection *i* draws from ``random.Random(f"{seed}:{i}:{direction}")``.
    Faults can be changed while running with :meth:`set_faults`.
    """

    def __init__(
        self,
        target: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        seed: int = 0,
        loss: float = 0.0,
        disconnect: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        delay: tuple[float, float] = (0.0, 0.0),
        reorder_delay: tuple[float, float] = (0.02, 0.1),
        spare_first: int = 2,
        max_size: int | None = 64 << 20,
        target_ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        self.target = target
        self.host = host
        self._requested_port = port
        self.seed = seed
        self.spare_first = spare_first
        self.max_size = max_size
        self.target_ssl = target_ssl
        self.stats = FaultStats()
        self.port = 0
        self._server: Server | None = None
        self._count = 0
        self.set_faults(
            loss=loss,
            disconnect=disconnect,
            duplicate=duplicate,
            reorder=reorder,
            delay=delay,
            reorder_delay=reorder_delay,
        )

    def set_faults(
        self,
        *,
        loss: float | None = None,
        disconnect: float | None = None,
        duplicate: float | None = None,
        reorder: float | None = None,
        delay: tuple[float, float] | None = None,
        reorder_delay: tuple[float, float] | None = None,
    ) -> None:
        """Change the fault rates (``None`` keeps one); applies to the next message."""
        if loss is not None:
            self.loss = _probability("loss", loss)
        if disconnect is not None:
            self.disconnect = _probability("disconnect", disconnect)
        if duplicate is not None:
            self.duplicate = _probability("duplicate", duplicate)
        if reorder is not None:
            self.reorder = _probability("reorder", reorder)
        if delay is not None:
            self.delay = _interval("delay", delay)
        if reorder_delay is not None:
            self.reorder_delay = _interval("reorder_delay", reorder_delay)

    def __repr__(self) -> str:
        return f"<FaultProxy :{self.port} -> {self.target}: {self.stats}>"

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def start(self) -> FaultProxy:
        if self._server is None:
            self._server = await ws_serve(
                self._handle,
                self.host,
                self._requested_port,
                compression=None,
                max_size=self.max_size,
                ping_interval=None,
            )
            self.port = int(next(iter(self._server.sockets)).getsockname()[1])
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _handle(self, client: ServerConnection) -> None:
        index = self._count
        self._count += 1
        self.stats.connections += 1
        try:
            upstream = await ws_connect(
                self.target,
                ssl=self.target_ssl,
                compression=None,
                max_size=self.max_size,
                open_timeout=5,
                ping_interval=None,
                proxy=None,
            )
        except Exception as exc:
            self.stats.refused += 1
            logger.debug("proxy: target unreachable: %s: %s", type(exc).__name__, exc)
            await client.close(1013, "target unavailable")
            return
        try:
            relays = [
                asyncio.create_task(self._relay(client, upstream, f"{self.seed}:{index}:up")),
                asyncio.create_task(self._relay(upstream, client, f"{self.seed}:{index}:down")),
            ]
            try:
                await asyncio.wait(relays, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in relays:
                    await _finish(task)
        finally:
            await asyncio.gather(upstream.close(), client.close(), return_exceptions=True)

    async def _relay(self, src: Any, dst: Any, seed: str) -> None:
        rng = random.Random(seed)
        loop = asyncio.get_running_loop()
        heap: list[tuple[float, int, bytes | str]] = []
        order = itertools.count()
        ready = asyncio.Event()

        async def sender() -> None:
            while True:
                if not heap:
                    ready.clear()
                    await ready.wait()
                    continue
                wait = heap[0][0] - loop.time()
                if wait > 0:
                    ready.clear()
                    await wait_event(ready, wait)
                    continue
                _, _, message = heapq.heappop(heap)
                await dst.send(message)

        def push(due: float, message: bytes | str) -> None:
            heapq.heappush(heap, (due, next(order), message))
            ready.set()

        sending = asyncio.create_task(sender())
        try:
            count = 0
            async for message in src:
                if sending.done():
                    return
                count += 1
                self.stats.messages += 1
                now = loop.time()
                if count <= self.spare_first:
                    push(now, message)
                    continue
                if rng.random() < self.disconnect:
                    self.stats.disconnects += 1
                    return
                if rng.random() < self.loss:
                    self.stats.lost += 1
                    continue
                due = now + rng.uniform(*self.delay)
                if rng.random() < self.reorder:
                    self.stats.reordered += 1
                    due += rng.uniform(*self.reorder_delay)
                push(due, message)
                if rng.random() < self.duplicate:
                    self.stats.duplicated += 1
                    push(due + rng.uniform(0.0, 0.02), message)
        finally:
            await _finish(sending)
