"""A small deterministic message network for the pure-CRDT baselines.

:class:`LossyNet` carries opaque messages between named endpoints in ticks,
with the faults of a :class:`~hybridsync.bench.core.NetConfig`, drawn the
way :mod:`hybridsync.sim` draws them for hybridsync's frames:

- a message sent while the clock reads ``t`` is due at ``t + 1``;
- with probability ``duplicate`` the network makes a second copy of it;
- each copy is then lost with probability ``loss``, and otherwise held back
  ``1..reorder_ticks`` extra ticks with probability ``reorder`` (so later
  messages overtake it);
- due messages come out in the order (due tick, send order).

Everything random comes from one ``random.Random(net.seed)`` and a draw is
only made when its probability is positive, so a run is a pure function of
the seed and of the sequence of :meth:`LossyNet.send` calls. The network
knows nothing about the topology: the engines send along the star's edges.
"""

from __future__ import annotations

import heapq
import random
from typing import NamedTuple

from hybridsync.bench.core import NetConfig

__all__ = ["Delivery", "LossyNet"]


class Delivery(NamedTuple):
    """A message coming out of the network."""

    src: str
    dst: str
    payload: bytes


class LossyNet:
    """Messages crossing in ticks, lost, duplicated and reordered per ``net``.

    Counters (all cumulative): ``bytes_sent`` and ``messages_sent`` count every
    :meth:`send` (before faults; duplicates made by the network are not
    counted as sent); ``messages_lost``, ``messages_duplicated``,
    ``messages_reordered`` and ``messages_delivered`` count copies.
    """

    def __init__(self, net: NetConfig) -> None:
        if not (0.0 <= net.loss <= 1.0 and 0.0 <= net.duplicate <= 1.0):
            raise ValueError(f"loss and duplicate must be within 0..1: {net}")
        if not 0.0 <= net.reorder <= 1.0 or net.reorder_ticks < 1:
            raise ValueError(f"reorder must be within 0..1 and reorder_ticks >= 1: {net}")
        self.config = net
        self._rng = random.Random(net.seed)
        self._now = 0
        self._seq = 0
        self._queue: list[tuple[int, int, Delivery]] = []
        self.bytes_sent = 0
        self.messages_sent = 0
        self.messages_lost = 0
        self.messages_duplicated = 0
        self.messages_reordered = 0
        self.messages_delivered = 0

    @property
    def now(self) -> int:
        """The current tick (0 at the start)."""
        return self._now

    def send(self, src: str, dst: str, payload: bytes) -> None:
        """Send ``payload`` from ``src`` to ``dst`` now; it is due next tick
        (or later, or never, or twice, per the faults)."""
        cfg, rng = self.config, self._rng
        self.bytes_sent += len(payload)
        self.messages_sent += 1
        copies = 1
        if cfg.duplicate > 0 and rng.random() < cfg.duplicate:
            copies = 2
            self.messages_duplicated += 1
        for _ in range(copies):
            if cfg.loss > 0 and rng.random() < cfg.loss:
                self.messages_lost += 1
                continue
            due = self._now + 1
            if cfg.reorder > 0 and rng.random() < cfg.reorder:
                due += rng.randint(1, cfg.reorder_ticks)
                self.messages_reordered += 1
            self._seq += 1
            heapq.heappush(self._queue, (due, self._seq, Delivery(src, dst, payload)))

    def deliver_due(self) -> list[Delivery]:
        """Take the messages due by now, in (due tick, send order) order.
        Messages sent while handling them are due next tick at the earliest."""
        out: list[Delivery] = []
        queue = self._queue
        while queue and queue[0][0] <= self._now:
            out.append(heapq.heappop(queue)[2])
        self.messages_delivered += len(out)
        return out

    def advance(self) -> None:
        """Move the clock one tick on."""
        self._now += 1

    def in_flight(self) -> int:
        """Copies sent and neither lost nor delivered yet."""
        return len(self._queue)
