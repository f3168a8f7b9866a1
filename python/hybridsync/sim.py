"""A deterministic network simulator for hybridsync replicas.

Tests, benchmarks and users trying sync policies can run a swarm of
:class:`~hybridsync.Memory` replicas connected by :class:`~hybridsync.Link`
pairs over a simulated network that loses, duplicates, delays and reorders
frames, and that can be partitioned and healed. Everything random is drawn
from one :class:`random.Random` seeded by the caller and every loop runs in
sorted order, so a run is a pure function of its seed and its inputs.

Topology: replicas form a tree (a forest while being built). Each edge joins
a parent and a child; the child holds the ``"client"`` link and polls, the
parent holds the ``"server"`` link and replies. Fuzzy text patches must not
travel around a cycle, so :meth:`Network.connect` refuses any edge that would
close one.

Time: the network advances in ticks (:meth:`Network.tick`). In one tick

1. every frame due by now is delivered with :meth:`Link.incoming`, in the
   order (due tick, send order), so replies are in before clients act;
2. every client link, in edge order, produces a request frame
   (:meth:`Link.outgoing`) that enters its channel: on every tick, or every
   ``poll_interval``-th tick; with ``retransmit_after`` set, a client still
   awaiting a reply stays silent until that many ticks passed since it
   last sent;
3. requests with zero delay are delivered;
4. every server link produces the reply to the requests it received (none
   when no request is pending), which enters the reverse channel;
5. replies with zero delay are delivered.

Agents edit between ticks: mutate ``network[name].text`` directly or use
:meth:`Network.edit`, :meth:`Network.write`, :meth:`Network.remove` and
:meth:`Network.apply` with :class:`Edit` scripts from :class:`EditGenerator`.

Example::

    net = Network.star(4, seed=7, loss=0.3, duplicate=0.1, reorder=0.2)
    net.write("r0", "plan", "1. gather sources\\n")
    net.run_until_quiescent()
    net.edit("r1", "plan", lambda s: s + "2. draft\\n")
    net.edit("r2", "plan", lambda s: "0. read the brief\\n" + s)
    ticks = net.run_until_quiescent(max_ticks=500)
    assert net.converged()
    print(net.texts("r3")["plan"], net.summary())
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import xxhash

from hybridsync.errors import HybridSyncError, InvalidArgumentError
from hybridsync.memory import Memory
from hybridsync.sync.link import Link, LinkMetrics

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "DEFAULT_ALPHABET",
    "ChannelStats",
    "Edit",
    "EditGenerator",
    "EditOp",
    "FaultOptions",
    "Faults",
    "MetricsSummary",
    "Network",
    "NetworkOptions",
    "NotQuiescentError",
    "SimulationError",
    "TickStats",
    "TopologyError",
    "TopologyKind",
    "random_edits",
]

#: A directed channel: (sender replica, receiver replica).
Direction = tuple[str, str]
#: An edge of the tree: (parent replica, child replica).
EdgeKey = tuple[str, str]
#: The kinds of topology :meth:`Network.topology` builds.
TopologyKind = Literal["star", "chain", "tree", "random"]


class SimulationError(HybridSyncError):
    """Base class of the simulator's errors."""


class TopologyError(SimulationError, ValueError):
    """An edge or replica cannot be added or found: duplicate names, unknown
    replicas, a child with two parents, or an edge that would close a cycle."""


class NotQuiescentError(SimulationError):
    """The network did not become quiescent within the allowed ticks.

    Attributes:
        ticks: how many ticks were run.
        reasons: what was still unsettled when the budget ran out.
    """

    def __init__(self, ticks: int, reasons: Sequence[str]) -> None:
        self.ticks = ticks
        self.reasons = tuple(reasons)
        super().__init__(f"not quiescent after {ticks} ticks: " + "; ".join(self.reasons))


class FaultOptions(TypedDict, total=False):
    """Keyword arguments accepted wherever faults are configured (see :class:`Faults`)."""

    loss: float
    duplicate: float
    reorder: float
    delay: tuple[int, int]
    reorder_ticks: int


class NetworkOptions(FaultOptions, total=False):
    """Keyword arguments of :class:`Network` and its topology builders."""

    poll_interval: int
    retransmit_after: int | None


@dataclass(frozen=True)
class Faults:
    """How a channel misbehaves. The same settings apply to both directions of
    an edge, each direction drawing its own fate for every frame.

    Attributes:
        loss: probability that a frame (or a duplicate copy) is dropped, 0..1.
        duplicate: probability that the network delivers a second copy of a
            frame, with its own loss and delay, 0..1.
        reorder: probability that a copy is held back ``1..reorder_ticks``
            extra ticks, so that later frames overtake it, 0..1.
        delay: ``(min, max)`` ticks between sending and delivery, drawn
            uniformly; ``0`` delivers within the same tick.
        reorder_ticks: the largest extra delay of a reordered copy.
    """

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay: tuple[int, int] = (1, 1)
    reorder_ticks: int = 4

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidArgumentError(f"{name} must be a number, got {value!r}")
            if not 0.0 <= value <= 1.0:
                raise InvalidArgumentError(f"{name} must be within 0..1, got {value!r}")
            object.__setattr__(self, name, float(value))
        try:
            low, high = self.delay
        except (TypeError, ValueError):
            raise InvalidArgumentError(
                f"delay must be a (min_ticks, max_ticks) pair, got {self.delay!r}"
            ) from None
        if not (_is_int(low) and _is_int(high) and 0 <= low <= high):
            raise InvalidArgumentError(
                f"delay must be integers with 0 <= min <= max, got {self.delay!r}"
            )
        object.__setattr__(self, "delay", (low, high))
        if not _is_int(self.reorder_ticks) or self.reorder_ticks < 1:
            raise InvalidArgumentError(
                f"reorder_ticks must be a positive integer, got {self.reorder_ticks!r}"
            )

    @property
    def max_latency(self) -> int:
        """The most ticks a delivered frame can spend in flight."""
        return self.delay[1] + (self.reorder_ticks if self.reorder > 0 else 0)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class ChannelStats:
    """Frame and byte counters of one direction of one edge (or a sum of them).

    ``frames_sent``/``bytes_sent`` count what the sending link emitted;
    ``frames_duplicated`` the extra copies the network made; every copy then
    ends up delivered, lost, cut by a partition, or still in flight.
    """

    frames_sent: int = 0
    bytes_sent: int = 0
    frames_delivered: int = 0
    bytes_delivered: int = 0
    frames_lost: int = 0
    frames_partitioned: int = 0
    frames_duplicated: int = 0

    @property
    def frames_dropped(self) -> int:
        """Copies that never arrived: lost plus cut by a partition."""
        return self.frames_lost + self.frames_partitioned

    def add(self, other: ChannelStats) -> None:
        """Add ``other``'s counters to this one."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def copy(self) -> ChannelStats:
        """An independent copy."""
        return replace(self)


@dataclass
class TickStats:
    """What crossed the network in one tick.

    Attributes:
        tick: the tick number (1 for the first tick).
        channels: counters per direction ``(sender, receiver)``, only for the
            directions that saw any activity this tick.
    """

    tick: int
    channels: dict[Direction, ChannelStats] = field(default_factory=dict)

    @property
    def total(self) -> ChannelStats:
        """The counters summed over all directions."""
        total = ChannelStats()
        for stats in self.channels.values():
            total.add(stats)
        return total

    @property
    def bytes_sent(self) -> int:
        """Bytes emitted by all links this tick."""
        return sum(s.bytes_sent for s in self.channels.values())

    @property
    def frames_sent(self) -> int:
        """Frames emitted by all links this tick."""
        return sum(s.frames_sent for s in self.channels.values())


@dataclass(frozen=True)
class MetricsSummary:
    """The links' own metrics (``Link.metrics``) summed over every link."""

    links: int
    frames_sent: int
    frames_received: int
    bytes_sent: int
    bytes_received: int
    resyncs: int


@dataclass(frozen=True)
class _Frame:
    sender: str
    receiver: str
    payload: bytes
    #: sent by a link that was not idle: it may carry edits, so the network is
    #: not quiescent while it is in flight. Frames from idle links are bare
    #: polls and acknowledgements that change nothing once everyone is idle.
    busy: bool


class Network:
    """Replicas, the tree of links between them, and the channels that carry
    their frames.

    Args:
        seed: seeds the one random generator of the network.
        loss, duplicate, reorder, delay, reorder_ticks: the default
            :class:`Faults` of every edge (see there); :meth:`connect` can
            override them per edge and :meth:`set_faults` changes them later.
        poll_interval: clients poll on every ``poll_interval``-th tick
            (ticks 1, 1 + interval, ...); servers still answer in any tick a
            request arrives. ``1`` (the default) polls every tick.
        retransmit_after: when set, a client whose latest request is still
            unanswered (``Link.awaiting_reply``) polls again only once this
            many ticks have passed since it last sent; ``None`` (the default)
            lets it poll, and so retransmit, on every polling tick.

    Raises:
        InvalidArgumentError: a fault setting is out of range.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        delay: tuple[int, int] = (1, 1),
        reorder_ticks: int = 4,
        poll_interval: int = 1,
        retransmit_after: int | None = None,
    ) -> None:
        if not _is_int(poll_interval) or poll_interval < 1:
            raise InvalidArgumentError(f"poll_interval must be >= 1, got {poll_interval!r}")
        if retransmit_after is not None and (not _is_int(retransmit_after) or retransmit_after < 1):
            raise InvalidArgumentError(
                f"retransmit_after must be None or >= 1, got {retransmit_after!r}"
            )
        self.seed = seed
        self.poll_interval = poll_interval
        self.retransmit_after = retransmit_after
        self._last_poll: dict[EdgeKey, int] = {}
        self._rng = random.Random(seed)
        self._faults = Faults(loss, duplicate, reorder, delay, reorder_ticks)
        self._edge_faults: dict[EdgeKey, Faults] = {}
        self._memories: dict[str, Memory] = {}
        self._parent: dict[str, str] = {}
        self._edges: list[EdgeKey] = []
        self._links: dict[Direction, Link] = {}
        self._partitions: dict[EdgeKey, int | None] = {}
        self._in_flight: list[tuple[int, int, _Frame]] = []
        self._seq = 0
        self._now = 0
        self._history: list[TickStats] = []
        self._totals: dict[Direction, ChannelStats] = {}
        self._tick_channels: dict[Direction, ChannelStats] = {}

    # -- topology builders ---------------------------------------------------

    @classmethod
    def star(cls, n: int, seed: int = 0, **options: Unpack[NetworkOptions]) -> Network:
        """``n`` replicas ``r0``..``r{n-1}``: ``r0`` is the hub and the parent of all others."""
        net = cls(seed, **options)
        for name in _names(n):
            net.add_replica(name)
        for i in range(1, n):
            net.connect("r0", f"r{i}")
        return net

    @classmethod
    def chain(cls, n: int, seed: int = 0, **options: Unpack[NetworkOptions]) -> Network:
        """``n`` replicas in a line: ``r{i-1}`` is the parent of ``r{i}``, ``r0`` the root."""
        net = cls(seed, **options)
        for name in _names(n):
            net.add_replica(name)
        for i in range(1, n):
            net.connect(f"r{i - 1}", f"r{i}")
        return net

    @classmethod
    def tree(
        cls, branching: int, depth: int, seed: int = 0, **options: Unpack[NetworkOptions]
    ) -> Network:
        """A complete tree: ``r0`` the root, every inner node with ``branching``
        children, leaves ``depth`` edges below the root; names in
        breadth-first order."""
        if not _is_int(branching) or branching < 1:
            raise InvalidArgumentError(f"branching must be >= 1, got {branching!r}")
        if not _is_int(depth) or depth < 0:
            raise InvalidArgumentError(f"depth must be >= 0, got {depth!r}")
        n = sum(branching**level for level in range(depth + 1))
        return cls._with_parents(n, lambda i: (i - 1) // branching, seed, options)

    @classmethod
    def topology(
        cls, kind: TopologyKind, n: int, seed: int = 0, **options: Unpack[NetworkOptions]
    ) -> Network:
        """``n`` replicas in a topology picked by name: ``"star"``, ``"chain"``,
        ``"tree"`` (the first ``n`` nodes of a binary tree, breadth-first) or
        ``"random"`` (each ``r{i}`` hangs below a uniformly chosen earlier
        replica; the shape is drawn from ``seed`` by a separate generator, so
        it does not disturb the fault stream)."""
        if kind == "star":
            return cls.star(n, seed, **options)
        if kind == "chain":
            return cls.chain(n, seed, **options)
        if kind == "tree":
            return cls._with_parents(n, lambda i: (i - 1) // 2, seed, options)
        if kind == "random":
            shape = random.Random(seed)
            parents = [0] + [shape.randrange(i) for i in range(1, max(n, 1))]
            return cls._with_parents(n, parents.__getitem__, seed, options)
        raise InvalidArgumentError(f"unknown topology {kind!r}")

    @classmethod
    def _with_parents(
        cls, n: int, parent_of: Callable[[int], int], seed: int, options: NetworkOptions
    ) -> Network:
        net = cls(seed, **options)
        for name in _names(n):
            net.add_replica(name)
        for i in range(1, n):
            net.connect(f"r{parent_of(i)}", f"r{i}")
        return net

    # -- building ------------------------------------------------------------

    def add_replica(self, name: str, memory: Memory | None = None) -> Memory:
        """Add a replica called ``name`` (a new empty :class:`Memory`, or
        ``memory`` when given, whose ``replica_id`` must be ``name``) and
        return its memory."""
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError("replica names are non-empty str")
        if name in self._memories:
            raise TopologyError(f"replica {name!r} already exists")
        if memory is None:
            # A seeded incarnation: the same seed gives the same bytes.
            incarnation = xxhash.xxh64_intdigest(f"{self.seed}\x00{name}".encode())
            memory = Memory(name, incarnation=incarnation)
        elif memory.replica_id != name:
            raise InvalidArgumentError(
                f"replica {name!r} needs a Memory with that replica_id, got {memory.replica_id!r}"
            )
        self._memories[name] = memory
        return memory

    def connect(
        self, parent: str, child: str, *, faults: Faults | None = None
    ) -> tuple[Link, Link]:
        """Join ``parent`` and ``child`` by an edge: a server link at the
        parent, a client link at the child. ``faults`` overrides the network's
        faults on this edge. Returns ``(server_link, client_link)``.

        Raises:
            TopologyError: unknown replica, ``child`` already has a parent, or
                the edge would close a cycle.
        """
        for name in (parent, child):
            if name not in self._memories:
                raise TopologyError(f"unknown replica {name!r}")
        if parent == child:
            raise TopologyError(f"cannot connect {parent!r} to itself")
        if child in self._parent:
            raise TopologyError(
                f"{child!r} already has a parent ({self._parent[child]!r}); "
                "patches must travel along a tree"
            )
        if self._root_of(parent) == child:
            raise TopologyError(f"connecting {parent!r} -> {child!r} would close a cycle")
        server = Link(self._memories[parent], child, role="server")
        # The client's epoch is random by default; draw it from the seed so
        # frames are byte-for-byte reproducible.
        epoch = (1 << 28) | self._rng.getrandbits(28)
        client = Link(self._memories[child], parent, role="client", epoch=epoch)
        self._parent[child] = parent
        self._links[(parent, child)] = server
        self._links[(child, parent)] = client
        self._edges.append((parent, child))
        self._edges.sort()
        if faults is not None:
            self._edge_faults[(parent, child)] = faults
        return server, client

    def _root_of(self, name: str) -> str:
        while name in self._parent:
            name = self._parent[name]
        return name

    # -- looking around ------------------------------------------------------

    def __getitem__(self, name: str) -> Memory:
        return self.memory(name)

    def __contains__(self, name: object) -> bool:
        return name in self._memories

    def memory(self, name: str) -> Memory:
        """The memory of replica ``name``."""
        try:
            return self._memories[name]
        except KeyError:
            raise TopologyError(f"unknown replica {name!r}") from None

    @property
    def replicas(self) -> Mapping[str, Memory]:
        """Every replica's memory by name (a read-only view)."""
        return MappingProxyType(self._memories)

    @property
    def names(self) -> list[str]:
        """The replica names, sorted."""
        return sorted(self._memories)

    @property
    def edges(self) -> list[EdgeKey]:
        """The edges as ``(parent, child)`` pairs, sorted."""
        return list(self._edges)

    def parent(self, name: str) -> str | None:
        """The parent of replica ``name``, or ``None`` for a root."""
        self.memory(name)
        return self._parent.get(name)

    def depth(self, name: str) -> int:
        """How many edges lie between ``name`` and its root."""
        self.memory(name)
        depth = 0
        while name in self._parent:
            name = self._parent[name]
            depth += 1
        return depth

    @property
    def height(self) -> int:
        """The largest depth of any replica (0 for a lone root)."""
        return max((self.depth(name) for name in self._memories), default=0)

    def link(self, holder: str, peer: str) -> Link:
        """The link that replica ``holder`` keeps towards ``peer``."""
        try:
            return self._links[(holder, peer)]
        except KeyError:
            raise TopologyError(f"no link from {holder!r} to {peer!r}") from None

    @property
    def links(self) -> Mapping[Direction, Link]:
        """Every link by ``(holder, peer)`` (a read-only view)."""
        return MappingProxyType(self._links)

    @property
    def now(self) -> int:
        """How many ticks have run."""
        return self._now

    @property
    def faults(self) -> Faults:
        """The default faults of the edges without their own."""
        return self._faults

    def faults_of(self, a: str, b: str) -> Faults:
        """The faults in force on the edge between ``a`` and ``b``."""
        return self._edge_faults.get(self._edge(a, b), self._faults)

    def set_faults(
        self, a: str | None = None, b: str | None = None, **changes: Unpack[FaultOptions]
    ) -> Faults:
        """Change fault settings from the next frame on and return the new
        settings: the network's defaults, or with ``a`` and ``b`` those of the
        edge between them. Settings not named keep their value;
        ``set_faults(loss=0, duplicate=0, reorder=0)`` makes the network
        perfect (apart from delay)."""
        if a is None and b is None:
            self._faults = replace(self._faults, **changes)
            return self._faults
        if a is None or b is None:
            raise InvalidArgumentError("name both ends of the edge, or neither")
        edge = self._edge(a, b)
        updated = replace(self._edge_faults.get(edge, self._faults), **changes)
        self._edge_faults[edge] = updated
        return updated

    def _edge(self, a: str, b: str) -> EdgeKey:
        if self._parent.get(b) == a:
            return (a, b)
        if self._parent.get(a) == b:
            return (b, a)
        raise TopologyError(f"no edge between {a!r} and {b!r}")

    # -- agents' edits -------------------------------------------------------

    def edit(self, replica: str, doc: str, fn: Callable[[str], str]) -> str:
        """Replace document ``doc`` of ``replica`` by ``fn(current)`` (a missing
        document reads as ``""`` and is created) and return the new text."""
        docs = self.memory(replica).text
        new = fn(docs.get(doc, ""))
        docs[doc] = new
        return new

    def write(self, replica: str, doc: str, text: str) -> None:
        """Set document ``doc`` of ``replica`` to ``text`` (creating it)."""
        self.memory(replica).text[doc] = text

    def remove(self, replica: str, doc: str) -> None:
        """Delete document ``doc`` of ``replica`` (nothing when it is absent)."""
        docs = self.memory(replica).text
        if doc in docs:
            del docs[doc]

    def apply(self, edits: Iterable[Edit]) -> None:
        """Apply an edit script, each edit to its own replica."""
        for edit in edits:
            edit.apply(self.memory(edit.replica))

    def texts(self, replica: str) -> dict[str, str]:
        """A snapshot of ``replica``'s text documents."""
        return dict(self.memory(replica).text)

    def digests(self) -> dict[str, str]:
        """Every replica's digest, by name."""
        return {name: self._memories[name].digest() for name in self.names}

    # -- faults --------------------------------------------------------------

    def partition(self, a: str, b: str, ticks: int | None = None) -> None:
        """Cut the edge between ``a`` and ``b`` for the next ``ticks`` ticks
        (until :meth:`heal` when ``None``): every frame sent on it, and every
        frame in flight on it that falls due meanwhile, is dropped."""
        if ticks is not None and (not _is_int(ticks) or ticks < 0):
            raise InvalidArgumentError(f"ticks must be a non-negative integer, got {ticks!r}")
        edge = self._edge(a, b)
        self._partitions[edge] = None if ticks is None else self._now + ticks

    def isolate(self, replica: str, ticks: int | None = None) -> None:
        """Partition every edge of ``replica`` (see :meth:`partition`)."""
        self.memory(replica)
        for parent, child in self._edges:
            if replica in (parent, child):
                self.partition(parent, child, ticks)

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        """End the partition of the edge between ``a`` and ``b``, or of every
        edge when neither is given."""
        if a is None and b is None:
            self._partitions.clear()
        elif a is None or b is None:
            raise InvalidArgumentError("name both ends of the edge, or neither")
        else:
            self._partitions.pop(self._edge(a, b), None)

    def partitioned(self, a: str, b: str) -> bool:
        """Whether the edge between ``a`` and ``b`` is cut during the next tick."""
        return self._cut(self._edge(a, b), self._now + 1)

    def _cut(self, edge: EdgeKey, tick: int) -> bool:
        if edge not in self._partitions:
            return False
        until = self._partitions[edge]
        return until is None or tick <= until

    # -- running -------------------------------------------------------------

    def tick(self) -> TickStats:
        """Run one cycle (see the module documentation) and return its stats."""
        self._now += 1
        self._tick_channels = {}
        for edge, until in list(self._partitions.items()):
            if until is not None and until < self._now:
                del self._partitions[edge]
        self._deliver_due()
        if (self._now - 1) % self.poll_interval == 0:
            for edge in self._edges:
                self._poll(edge)
        self._deliver_due()
        for parent, child in self._edges:
            self._send(parent, child)
        self._deliver_due()
        stats = TickStats(self._now, dict(sorted(self._tick_channels.items())))
        for direction, counters in stats.channels.items():
            self._totals.setdefault(direction, ChannelStats()).add(counters)
        self._history.append(stats)
        return stats

    def run(self, ticks: int, *, before_tick: Callable[[Network], None] | None = None) -> None:
        """Run ``ticks`` ticks, calling ``before_tick(self)`` ahead of each (the
        place for agents to edit)."""
        for _ in range(ticks):
            if before_tick is not None:
                before_tick(self)
            self.tick()

    def run_until_quiescent(self, max_ticks: int = 1000) -> int:
        """Tick until :meth:`quiescent` and return how many ticks that took
        (0 when it already is).

        Raises:
            NotQuiescentError: still not quiescent after ``max_ticks`` ticks.
        """
        if not _is_int(max_ticks) or max_ticks < 0:
            raise InvalidArgumentError(f"max_ticks must be a non-negative integer: {max_ticks!r}")
        for taken in range(max_ticks + 1):
            if self.quiescent():
                return taken
            if taken < max_ticks:
                self.tick()
        raise NotQuiescentError(max_ticks, self.unsettled())

    def converged(self) -> bool:
        """Whether every replica holds the same content (equal digests)."""
        return len(set(self.digests().values())) <= 1

    def idle(self) -> bool:
        """Whether every link is idle (``Link.idle``: nothing to tell its peer
        but acknowledgements)."""
        return all(self._links[key].idle for key in sorted(self._links))

    def in_flight(self, *, busy_only: bool = False) -> int:
        """How many frame copies are in flight; with ``busy_only`` only those
        sent by a link that was not idle (the ones that may carry edits)."""
        return sum(1 for _, _, frame in self._in_flight if frame.busy or not busy_only)

    def quiescent(self) -> bool:
        """Converged, every link idle, and no frame that may carry edits in
        flight. (Clients keep polling, so bare polls and acknowledgements from
        idle links are nearly always in flight; they cannot change anything.)"""
        return self.in_flight(busy_only=True) == 0 and self.idle() and self.converged()

    def unsettled(self) -> list[str]:
        """Why the network is not quiescent, in words (empty when it is)."""
        reasons: list[str] = []
        groups: dict[str, list[str]] = {}
        for name, digest in self.digests().items():
            groups.setdefault(digest, []).append(name)
        if len(groups) > 1:
            parts = sorted(", ".join(names) for names in groups.values())
            reasons.append(f"{len(groups)} distinct contents: " + " | ".join(parts))
        busy = [f"{a}->{b}" for a, b in sorted(self._links) if not self._links[(a, b)].idle]
        if busy:
            reasons.append("links not idle: " + ", ".join(busy))
        frames = self.in_flight(busy_only=True)
        if frames:
            reasons.append(f"{frames} frames with edits in flight")
        cut = [f"{a}-{b}" for a, b in sorted(self._partitions) if self._cut((a, b), self._now + 1)]
        if cut:
            reasons.append("partitioned: " + ", ".join(cut))
        return reasons

    def _channel(self, direction: Direction) -> ChannelStats:
        stats = self._tick_channels.get(direction)
        if stats is None:
            stats = self._tick_channels[direction] = ChannelStats()
        return stats

    def _poll(self, edge: EdgeKey) -> None:
        parent, child = edge
        wait = self.retransmit_after
        if (
            wait is not None
            and self._links[(child, parent)].awaiting_reply
            and self._now - self._last_poll.get(edge, 0) < wait
        ):
            return
        self._last_poll[edge] = self._now
        self._send(child, parent)

    def _send(self, sender: str, receiver: str) -> None:
        link = self._links[(sender, receiver)]
        was_idle = link.idle
        payload = link.outgoing()
        if payload is None:
            return
        busy = not (was_idle and link.idle)
        edge = self._edge(sender, receiver)
        faults = self._edge_faults.get(edge, self._faults)
        stats = self._channel((sender, receiver))
        stats.frames_sent += 1
        stats.bytes_sent += len(payload)
        rng = self._rng
        copies = 1
        if faults.duplicate > 0 and rng.random() < faults.duplicate:
            copies = 2
            stats.frames_duplicated += 1
        for _ in range(copies):
            if self._cut(edge, self._now):
                stats.frames_partitioned += 1
                continue
            if faults.loss > 0 and rng.random() < faults.loss:
                stats.frames_lost += 1
                continue
            low, high = faults.delay
            due = self._now + (low if low == high else rng.randint(low, high))
            if faults.reorder > 0 and rng.random() < faults.reorder:
                due += rng.randint(1, faults.reorder_ticks)
            self._seq += 1
            heapq.heappush(
                self._in_flight, (due, self._seq, _Frame(sender, receiver, payload, busy))
            )

    def _deliver_due(self) -> None:
        while self._in_flight and self._in_flight[0][0] <= self._now:
            _, _, frame = heapq.heappop(self._in_flight)
            stats = self._channel((frame.sender, frame.receiver))
            if self._cut(self._edge(frame.sender, frame.receiver), self._now):
                stats.frames_partitioned += 1
                continue
            self._links[(frame.receiver, frame.sender)].incoming(frame.payload)
            stats.frames_delivered += 1
            stats.bytes_delivered += len(frame.payload)

    # -- statistics ------------------------------------------------------------

    @property
    def history(self) -> list[TickStats]:
        """The stats of every tick so far, oldest first (a copy of the list)."""
        return list(self._history)

    def channel_stats(self) -> dict[Direction, ChannelStats]:
        """Cumulative counters per direction ``(sender, receiver)``."""
        return {key: self._totals[key].copy() for key in sorted(self._totals)}

    def totals(self) -> ChannelStats:
        """Cumulative counters over all directions."""
        total = ChannelStats()
        for stats in self._totals.values():
            total.add(stats)
        return total

    def link_metrics(self) -> dict[Direction, LinkMetrics]:
        """Each link's own (live) ``metrics`` object, by ``(holder, peer)``."""
        return {key: self._links[key].metrics for key in sorted(self._links)}

    def metrics_summary(self) -> MetricsSummary:
        """The links' own metrics summed over every link."""
        metrics = [link.metrics for link in self._links.values()]
        return MetricsSummary(
            links=len(metrics),
            frames_sent=sum(m.frames_sent for m in metrics),
            frames_received=sum(m.frames_received for m in metrics),
            bytes_sent=sum(m.bytes_sent for m in metrics),
            bytes_received=sum(m.bytes_received for m in metrics),
            resyncs=sum(m.resyncs for m in metrics),
        )

    def summary(self) -> str:
        """A plain-text table of the traffic per direction and in total."""
        header = (
            f"{'direction':<24}{'frames':>8}{'bytes':>12}{'delivered':>11}"
            f"{'lost':>7}{'cut':>7}{'dup':>7}"
        )
        rows = [f"network seed={self.seed} after {self._now} ticks", header]
        items = [(f"{a} -> {b}", s) for (a, b), s in self.channel_stats().items()]
        items.append(("total", self.totals()))
        for label, s in items:
            rows.append(
                f"{label:<24}{s.frames_sent:>8}{s.bytes_sent:>12}{s.frames_delivered:>11}"
                f"{s.frames_lost:>7}{s.frames_partitioned:>7}{s.frames_duplicated:>7}"
            )
        m = self.metrics_summary()
        rows.append(f"links: {m.links}, resyncs: {m.resyncs}")
        return "\n".join(rows)

    def __repr__(self) -> str:
        return (
            f"<Network seed={self.seed}: {len(self._memories)} replicas, "
            f"{len(self._edges)} edges, tick {self._now}>"
        )


def _names(n: int) -> list[str]:
    if not _is_int(n) or n < 1:
        raise InvalidArgumentError(f"a network needs at least one replica, got {n!r}")
    return [f"r{i}" for i in range(n)]


# -- edit scripts ----------------------------------------------------------------

#: The operations of an :class:`Edit`.
EditOp = Literal["insert", "delete", "replace", "set", "remove"]
_OPS: tuple[EditOp, ...] = ("insert", "delete", "replace", "set", "remove")

#: Text pieces edits are made of: ASCII, whitespace and newlines, Latin and
#: Greek letters, a combining accent, CJK, emoji (astral code points) and a
#: zero-width-joiner sequence.
DEFAULT_ALPHABET: tuple[str, ...] = (
    "a",
    "e",
    "t",
    "s",
    "plan",
    "todo",
    " ",
    " ",
    "\n",
    ".",
    "é",
    "ß",
    "Ω",
    "e\u0301",
    "中",
    "文",
    "😀",
    "🦀",
    "👩\u200d💻",
)


@dataclass(frozen=True)
class Edit:
    """One agent edit, resolved against the document as it is when applied.

    Positions wrap: the edit acts at ``at % (len(current) + 1)`` and removes
    at most the code points that remain after it, so a script stays valid
    whatever happened to the document in between. A text edit on a missing
    document creates it.

    Attributes:
        replica: the replica whose memory is edited.
        doc: the document name.
        op: ``"insert"`` ``text``; ``"delete"`` ``length`` code points;
            ``"replace"`` ``length`` code points by ``text``; ``"set"`` the
            whole document to ``text``; ``"remove"`` the document.
        at: the position (any non-negative integer, see above).
        length: code points to remove.
        text: text to insert.
    """

    replica: str
    doc: str
    op: EditOp
    at: int = 0
    length: int = 0
    text: str = ""

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise InvalidArgumentError(f"unknown edit op {self.op!r}")
        if self.at < 0 or self.length < 0:
            raise InvalidArgumentError("at and length must be non-negative")

    def transform(self, current: str | None) -> str | None:
        """The document after this edit, given it before (``None``: absent)."""
        if self.op == "remove":
            return None
        if self.op == "set":
            return self.text
        old = current or ""
        pos = self.at % (len(old) + 1)
        if self.op == "insert":
            return old[:pos] + self.text + old[pos:]
        end = min(len(old), pos + self.length)
        new = self.text if self.op == "replace" else ""
        return old[:pos] + new + old[end:]

    def apply(self, memory: Memory) -> None:
        """Apply the edit to ``memory``."""
        docs = memory.text
        after = self.transform(docs.get(self.doc))
        if after is None:
            if self.doc in docs:
                del docs[self.doc]
        else:
            docs[self.doc] = after


_DEFAULT_WEIGHTS: dict[EditOp, float] = {
    "insert": 0.5,
    "delete": 0.2,
    "replace": 0.2,
    "set": 0.05,
    "remove": 0.05,
}


class EditGenerator:
    """A seeded source of random :class:`Edit` objects for property tests and
    benchmarks: inserts, deletions and replacements at random positions of
    random documents, with document creation and deletion.

    Args:
        seed: an integer seed or a :class:`random.Random` to draw from.
        replicas: the replicas that edit (chosen uniformly).
        docs: the document names (chosen uniformly); absent ones are created
            by their first edit.
        alphabet: the pieces inserted text is made of.
        max_insert: the most pieces one insertion or replacement adds.
        max_delete: the most code points one deletion or replacement removes.
        weights: relative frequency of each op (missing ops never occur).
    """

    def __init__(
        self,
        seed: int | random.Random,
        replicas: Sequence[str],
        *,
        docs: Sequence[str] = ("plan", "notes", "scratch"),
        alphabet: Sequence[str] = DEFAULT_ALPHABET,
        max_insert: int = 8,
        max_delete: int = 6,
        weights: Mapping[EditOp, float] | None = None,
    ) -> None:
        if not replicas or not docs or not alphabet:
            raise InvalidArgumentError("replicas, docs and alphabet must not be empty")
        if max_insert < 1 or max_delete < 1:
            raise InvalidArgumentError("max_insert and max_delete must be >= 1")
        self._rng = seed if isinstance(seed, random.Random) else random.Random(seed)
        self.replicas = tuple(replicas)
        self.docs = tuple(docs)
        self.alphabet = tuple(alphabet)
        self.max_insert = max_insert
        self.max_delete = max_delete
        chosen = dict(_DEFAULT_WEIGHTS if weights is None else weights)
        unknown = set(chosen) - set(_OPS)
        if unknown or not any(w > 0 for w in chosen.values()):
            raise InvalidArgumentError(f"bad op weights {chosen!r}")
        self._ops: list[EditOp] = [op for op in _OPS if chosen.get(op, 0) > 0]
        self._weights = [chosen[op] for op in self._ops]

    def text(self) -> str:
        """A random run of 1..``max_insert`` alphabet pieces."""
        count = self._rng.randint(1, self.max_insert)
        return "".join(self._rng.choice(self.alphabet) for _ in range(count))

    def edit(self, replica: str | None = None) -> Edit:
        """One random edit (by ``replica`` when given)."""
        rng = self._rng
        who = rng.choice(self.replicas) if replica is None else replica
        doc = rng.choice(self.docs)
        op = rng.choices(self._ops, self._weights)[0]
        at = rng.randrange(1 << 30)
        length = rng.randint(1, self.max_delete) if op in ("delete", "replace") else 0
        text = self.text() if op in ("insert", "replace", "set") else ""
        return Edit(who, doc, op, at, length, text)

    def script(self, count: int) -> list[Edit]:
        """``count`` random edits."""
        return [self.edit() for _ in range(count)]


def random_edits(
    seed: int | random.Random,
    replicas: Sequence[str],
    count: int,
    **options: Any,
) -> list[Edit]:
    """``count`` random edits; ``options`` go to :class:`EditGenerator`."""
    return EditGenerator(seed, replicas, **options).script(count)
