"""Shards: one swarm's documents, metadata keys and KV caches spread over several
hub processes over NATS.

A name (a document's, a metadata key's, a KV cache's) belongs to the shard
``xxh64(name) % shards``, for ever. Each shard is a replica of its own (one
:class:`~hybridsync.Memory` per shard on every node and on each hub that
serves it) with its own link tree. A shard's hubs are ranked by rendezvous
hashing (highest random weight: ``xxh64("<shard>/<hub>")``, highest first)
and the first ``replicas`` of them serve it: the first as its root, the next
ones following it as standbys. Nodes join the first live hub of that order, so
a dead hub's shards fail over to their standby (NATS tells the nodes, see
:mod:`hybridsync.net.nats`). Adding a hub changes the order of a shard only
where the new hub ranks among its first ``replicas``: it takes its share
(about ``replicas / hubs`` of the shards) and no other shard moves.

A hub serving shard ``k`` has the replica id ``<hub>-s<k>`` on the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import xxhash
from nats.aio.client import Client as NatsClient

from hybridsync.errors import InvalidArgumentError
from hybridsync.memory import Memory
from hybridsync.net.nats import NatsHub, NatsSession, connect_nats, serve_nats

__all__ = ["ShardMap", "ShardedHub", "ShardedNode", "shard_replica_id"]


def shard_replica_id(replica: str, shard: int) -> str:
    """The replica id of ``replica``'s copy of ``shard``."""
    return f"{replica}-s{shard}"


class ShardMap:
    """Which shard a name is in, and which hubs serve a shard (in failover order)."""

    def __init__(self, hubs: Sequence[str], shards: int = 16, replicas: int = 2) -> None:
        hub_list = list(hubs)
        if not hub_list or len(set(hub_list)) != len(hub_list):
            raise InvalidArgumentError("hubs must be a non-empty list of distinct hub ids")
        if not (isinstance(shards, int) and 1 <= shards <= 4096):
            raise InvalidArgumentError(f"shards must be an int in 1..4096, got {shards!r}")
        if not (isinstance(replicas, int) and replicas >= 1):
            raise InvalidArgumentError(f"replicas must be an int >= 1, got {replicas!r}")
        self.hubs = hub_list
        self.shards = shards
        self.replicas = min(replicas, len(hub_list))

    def __repr__(self) -> str:
        return f"<ShardMap {self.shards} shards x {self.replicas} over {self.hubs}>"

    def shard_of(self, name: str) -> int:
        """The shard of a document, metadata key or KV cache name (stable)."""
        return xxhash.xxh64_intdigest(name.encode()) % self.shards

    def ranking(self, shard: int) -> list[str]:
        """Every hub, by rendezvous weight for ``shard`` (highest first)."""
        return sorted(
            self.hubs,
            key=lambda hub: (xxhash.xxh64_intdigest(f"{shard}/{hub}".encode()), hub),
            reverse=True,
        )

    def order(self, shard: int) -> list[str]:
        """The hubs serving ``shard``: its root first, then its standbys."""
        return self.ranking(shard)[: self.replicas]

    def served_by(self, hub: str) -> list[int]:
        """The shards ``hub`` serves (as root or standby)."""
        return [k for k in range(self.shards) if hub in self.order(k)]


class ShardedHub:
    """A hub process's share of a sharded swarm: one hub per shard it serves
    (each linked upward to the live hubs ranked before it for that shard)."""

    def __init__(
        self,
        hub: str,
        shard_map: ShardMap,
        nc: NatsClient,
        *,
        secret: bytes,
        swarm: str = "default",
        **options: Any,
    ) -> None:
        if hub not in shard_map.hubs:
            raise InvalidArgumentError(f"{hub!r} is not a hub of the shard map")
        self.hub = hub
        self.map = shard_map
        self.nc = nc
        self.swarm = swarm
        self._secret = secret
        self._options = options
        self.memories: dict[int, Memory] = {}
        self.hubs: dict[int, NatsHub] = {}
        self.upstream: dict[int, NatsSession] = {}
        self._stack = AsyncExitStack()

    async def start(self) -> ShardedHub:
        for shard in self.map.served_by(self.hub):
            memory = self.memories[shard] = Memory(shard_replica_id(self.hub, shard))
            self.hubs[shard] = await self._stack.enter_async_context(
                serve_nats(memory, self.nc, secret=self._secret, swarm=self.swarm)
            )
            order = self.map.order(shard)
            before = order[: order.index(self.hub)]
            if before:
                self.upstream[shard] = await self._stack.enter_async_context(
                    connect_nats(
                        memory,
                        self.nc,
                        hubs=[shard_replica_id(h, shard) for h in before],
                        secret=self._secret,
                        swarm=self.swarm,
                        **self._options,
                    )
                )
        return self

    async def close(self) -> None:
        await self._stack.aclose()
        for memory in self.memories.values():
            memory.close()

    async def __aenter__(self) -> ShardedHub:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class ShardedNode:
    """A node of a sharded swarm: a replica per shard, each joined to the first
    live hub of that shard's order. Write through :meth:`memory_for`."""

    def __init__(
        self,
        replica_id: str,
        shard_map: ShardMap,
        nc: NatsClient,
        *,
        secret: bytes,
        swarm: str = "default",
        shards: Iterable[int] | None = None,
        **options: Any,
    ) -> None:
        self.swarm = swarm
        self.replica_id = replica_id
        self.map = shard_map
        self.nc = nc
        self._secret = secret
        self._options = options
        wanted = sorted(set(shards)) if shards is not None else list(range(shard_map.shards))
        if any(not 0 <= k < shard_map.shards for k in wanted):
            raise InvalidArgumentError("a shard number is out of range")
        self.memories = {k: Memory(shard_replica_id(replica_id, k)) for k in wanted}
        self.sessions: dict[int, NatsSession] = {}
        self._stack = AsyncExitStack()

    def memory_for(self, name: str) -> Memory:
        """The replica of the shard that ``name`` belongs to."""
        shard = self.map.shard_of(name)
        memory = self.memories.get(shard)
        if memory is None:
            raise InvalidArgumentError(f"{name!r} is in shard {shard}, which this node skips")
        return memory

    async def start(self) -> ShardedNode:
        for shard, memory in self.memories.items():
            self.sessions[shard] = await self._stack.enter_async_context(
                connect_nats(
                    memory,
                    self.nc,
                    hubs=[shard_replica_id(h, shard) for h in self.map.order(shard)],
                    secret=self._secret,
                    swarm=self.swarm,
                    **self._options,
                )
            )
        return self

    async def sync(self, timeout: float | None = 30.0) -> None:
        """Every shard's hub holds every earlier local change (see
        :meth:`hybridsync.net.Session.sync`)."""
        await asyncio.gather(*(s.sync(timeout) for s in self.sessions.values()))

    def digests(self) -> dict[int, str]:
        return {k: m.digest() for k, m in self.memories.items()}

    async def close(self) -> None:
        await self._stack.aclose()
        for memory in self.memories.values():
            memory.close()

    async def __aenter__(self) -> ShardedNode:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
