"""The metadata overwrite storm: the deciding test of the structured-metadata channel.

The claim under test: 100 keys, 1,000,000 overwrites from 200 replicas (most of them
short-lived, so new CRDT client ids keep arriving), over the simulator with 20% frame loss:

* the encoded metadata state of every replica stays at or under ``2 x live JSON + 4 KB``
  at every point between ticks (after the agents' writes, after every tick); the
  maximum and the largest ratio are reported; the same holds *inside* a tick, after
  every single frame a replica receives (asserted too);
* every replica converges, and every key ends with a value that some replica wrote to it
  and that no replica overwrote after seeing it (the CRDT's merge, the same everywhere);
* the same writes on plain pycrdt (one ``Doc`` holding a map, every overwrite sent as the
  Yjs update of its writer) grow the state far past that bound; its size is reported.

Shape of the swarm: ``r0`` is the hub (root of a star, the replica that compacts), 20
long-lived leaves ``r1..r20`` and 179 short-lived leaves ``r21..r199`` that join in a
staggered schedule, about 10 at a time: each joins as a fresh :class:`Memory`, writes for
a while, stops, stays until the hub has answered a request it sent with nothing left to
send (so the hub holds everything it wrote), then leaves for good (its edge is cut; a
departed process never returns). The hub creates the 100 keys; then every tick the
active writers (hub, long-lived, joined short-lived: 31 at a time) make
``writes_per_tick`` overwrites between them (100: about 3 per replica per exchange), each
of a uniformly chosen key with a unique fixed-width value, so the live JSON size is the
same on every replica once it holds all keys. Frames are lost with probability 0.2 in
both directions; clients poll every tick. 1,000,000 overwrites take 10,000 ticks.

Scale: ``HYBRIDSYNC_STORM_WRITES`` (default 1,000,000, the issue's number, about 3
minutes on a 2-core machine) sets the total number of overwrites (the hub's 100 initial
writes included); ``HYBRIDSYNC_STORM_WRITES_PER_TICK`` (default 100) the rate. The run
prints its report (run pytest with ``-s`` to see it); ``HYBRIDSYNC_STORM_REPORT=path``
also writes it as JSON.
"""

from __future__ import annotations

import json
import os
import random
import resource
import time
from array import array
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import pytest
import xxhash
from pycrdt import Doc, Map

from hybridsync import Link, Memory
from hybridsync.meta import CompactionPolicy
from hybridsync.sim import Network

POLICY = CompactionPolicy(max_ratio=1.5, slack_bytes=2048, max_clients=64)
#: The bound of the issue: encoded <= BOUND_RATIO * live + BOUND_SLACK.
BOUND_RATIO = 2
BOUND_SLACK = 4096
HUB = "r0"


@dataclass(frozen=True)
class StormConfig:
    writes: int = 1_000_000
    keys: int = 100
    replicas: int = 200
    long_lived: int = 20
    short_alive: int = 10
    writes_per_tick: int = 100
    loss: float = 0.2
    seed: int = 20_240_817
    #: Ticks allowed for the final settling.
    settle_ticks: int = 3_000
    #: Run the plain pycrdt baseline alongside.
    baseline: bool = True

    @property
    def short_lived(self) -> int:
        return self.replicas - 1 - self.long_lived


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if not value else int(value.replace("_", ""))


def _value(writer: str, seq: int) -> str:
    """A unique fixed-width value: 14 characters for any writer r0..r999."""
    return f"{writer:>4}:{seq:09d}"


def _seq(value: Any) -> int:
    assert isinstance(value, str) and len(value) == 14, value
    return int(value[5:])


# -- the plain pycrdt baseline ------------------------------------------------------


def _uint(out: bytearray, v: int) -> None:
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _string(out: bytearray, s: str) -> None:
    data = s.encode()
    _uint(out, len(data))
    out += data


def yjs_client_id(name: str) -> int:
    """The baseline writers' client ids: 32 bits, as Yjs draws them."""
    return xxhash.xxh32_intdigest(name.encode())


class PlainYjs:
    """Plain pycrdt: one hub ``Doc`` with a root ``Map`` receiving every overwrite as
    the Yjs (v1) update its writer's ``Doc`` would send (pycrdt-websocket relays those
    updates unchanged; every replica that syncs ends with this state).

    Writers see the hub as it was at the start of the tick (a lossless relay, as over a
    WebSocket), plus their own writes of the tick; writes of one tick by different
    writers are concurrent and merge on the hub by the Yjs rules. Running 200 real
    ``Doc`` replicas through 1,000,000 writes would cost minutes (every replica
    integrates every item, every joining replica loads the whole state), so each
    writer's update is encoded directly: ``test_plain_yjs_emulation_is_exact`` checks
    that it is byte-for-byte the state real pycrdt writer documents produce.
    """

    ROOT = "meta"

    def __init__(self) -> None:
        self.doc: Doc[Any] = Doc(client_id=1)
        self.map: Map[Any] = self.doc.get(self.ROOT, type=Map)
        #: key -> id (client, clock) of the hub's current item.
        self.current: dict[str, tuple[int, int]] = {}
        #: seq of a value -> id (client, clock) of the item that holds it.
        self.item_client = array("Q", [0])
        self.item_clock = array("Q", [0])
        self.clocks: dict[int, int] = defaultdict(int)
        self.batches: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
        self.wire_bytes = 0
        self.updates = 0

    def write(self, writer: str, key: str, value: str, seq: int) -> None:
        self.batches[writer].append((key, value, seq))

    def encode(self, writer: str, writes: Iterable[tuple[str, str, int]]) -> bytes:
        """The update of ``writer`` making ``writes`` on its view of the hub."""
        client = yjs_client_id(writer)
        start = self.clocks[client]
        clock = start
        view = self.current.copy()
        structs = bytearray()
        deleted: dict[int, list[int]] = defaultdict(list)
        for key, value, seq in writes:
            old = view.get(key)
            if old is None:
                # ContentAny (8) | parentSub present (0x20); parent by its root name.
                structs.append(0x28)
                _uint(structs, 1)
                _string(structs, self.ROOT)
                _string(structs, key)
            else:
                # ContentAny | origin present (0x80) | parentSub (0x20); the origin
                # (the item overwritten) implies the parent. It is deleted.
                structs.append(0xA8)
                _uint(structs, old[0])
                _uint(structs, old[1])
                deleted[old[0]].append(old[1])
            _uint(structs, 1)  # one value
            structs.append(119)  # lib0 "any": string
            _string(structs, value)
            if seq >= len(self.item_client):
                grow = array("Q", [0]) * (seq + 1024 - len(self.item_client))
                self.item_client.extend(grow)
                self.item_clock.extend(grow)
            self.item_client[seq] = client
            self.item_clock[seq] = clock
            view[key] = (client, clock)
            clock += 1
        self.clocks[client] = clock
        out = bytearray()
        _uint(out, 1)  # one client
        _uint(out, clock - start)
        _uint(out, client)
        _uint(out, start)
        out += structs
        _uint(out, len(deleted))
        for c in sorted(deleted):
            ranges: list[list[int]] = []
            for k in sorted(deleted[c]):
                if ranges and ranges[-1][0] + ranges[-1][1] == k:
                    ranges[-1][1] += 1
                else:
                    ranges.append([k, 1])
            _uint(out, c)
            _uint(out, len(ranges))
            for k, n in ranges:
                _uint(out, k)
                _uint(out, n)
        return bytes(out)

    def flush(self, replicas: int) -> None:
        """Deliver the tick's updates to the hub (writers in name order). On the wire
        each update travels ``replicas - 1`` times: to the hub and from it to every
        other replica (or, from the hub, to every leaf)."""
        touched: set[str] = set()
        for writer in sorted(self.batches):
            writes = self.batches[writer]
            update = self.encode(writer, writes)
            self.doc.apply_update(update)
            self.wire_bytes += len(update) * (replicas - 1)
            self.updates += 1
            touched.update(key for key, _, _ in writes)
        self.batches.clear()
        for key in touched:
            seq = _seq(self.map[key])
            self.current[key] = (self.item_client[seq], self.item_clock[seq])

    def join(self) -> None:
        """A replica joins: it downloads the whole state."""
        self.wire_bytes += len(self.doc.get_update())

    def encoded_bytes(self) -> int:
        return len(self.doc.get_update())

    def clients(self) -> int:
        return len(self.clocks)


def test_plain_yjs_emulation_is_exact() -> None:
    """The baseline's hand-encoded updates produce byte-for-byte the state that real
    pycrdt writer documents (synced with the hub at the start of each tick) produce."""
    rng = random.Random(7)
    writers = [f"r{i}" for i in range(12)]
    keys = [f"k{i:02d}" for i in range(10)]
    plain = PlainYjs()
    hub: Doc[Any] = Doc(client_id=1)
    hub_map = hub.get(PlainYjs.ROOT, type=Map)
    docs = {w: Doc(client_id=yjs_client_id(w)) for w in writers}
    maps = {w: d.get(PlainYjs.ROOT, type=Map) for w, d in docs.items()}
    seq = 0
    for _ in range(150):
        for d in docs.values():
            d.apply_update(hub.get_update(d.get_state()))
        before = {w: d.get_state() for w, d in docs.items()}
        for _ in range(rng.randrange(1, 25)):
            w, k = rng.choice(writers), rng.choice(keys)
            seq += 1
            v = _value(w, seq)
            maps[w][k] = v
            plain.write(w, k, v, seq)
        for w in sorted(writers):
            hub.apply_update(docs[w].get_update(before[w]))
        plain.flush(len(writers))
        assert plain.map.to_py() == hub_map.to_py()
    assert plain.doc.get_update() == hub.get_update()
    assert plain.doc.get_state() == hub.get_state()


# -- the storm ---------------------------------------------------------------------


@dataclass
class Peak:
    """The largest excess over the bound seen, with where and when."""

    excess: int = -(1 << 60)
    encoded: int = 0
    live: int = 0
    replica: str = ""
    tick: int = 0
    max_ratio: float = 0.0

    def see(self, name: str, tick: int, encoded: int, live: int) -> None:
        excess = encoded - (BOUND_RATIO * live + BOUND_SLACK)
        if live:
            self.max_ratio = max(self.max_ratio, encoded / live)
        if excess > self.excess:
            self.excess, self.encoded, self.live = excess, encoded, live
            self.replica, self.tick = name, tick


@dataclass
class StormReport:
    config: dict[str, Any]
    ticks: int = 0
    settle_ticks: int = 0
    seconds: float = 0.0
    live_bytes: int = 0
    bound_bytes: int = 0
    #: Between ticks (asserted): every present replica after the writes and after each tick.
    between: dict[str, Peak] = field(default_factory=lambda: {"hub": Peak(), "leaf": Peak()})
    #: Inside ticks (reported): the receiving replica after every delivered frame.
    inside: dict[str, Peak] = field(default_factory=lambda: {"hub": Peak(), "leaf": Peak()})
    epochs: int = 0
    hub_max_encoded_at_compaction: int = 0
    crossings: int = 0
    rebased_writes: int = 0
    replicas_seen: int = 0
    departed: int = 0
    converged: int = 0
    wire_bytes: int = 0
    wire_delivered: int = 0
    frames_sent: int = 0
    frames_lost: int = 0
    candidates_per_key: float = 0.0
    plain_final_bytes: int = 0
    plain_samples: list[tuple[int, int]] = field(default_factory=list)
    plain_clients: int = 0
    plain_wire_bytes: int = 0
    plain_seconds: float = 0.0
    max_rss_mb: float = 0.0

    def lines(self) -> list[str]:
        c = self.config
        b, i = self.between, self.inside
        out = [
            f"storm: {c['writes']:,} overwrites of {c['keys']} keys by {self.replicas_seen} "
            f"replicas ({c['long_lived']} long-lived leaves, {c['short_lived']} short-lived "
            f"about {c['short_alive']} at a time), {c['writes_per_tick']} writes/tick, "
            f"loss {c['loss']:.0%}: {self.ticks:,} ticks + {self.settle_ticks} to settle, "
            f"{self.seconds:.1f} s",
            f"live JSON {self.live_bytes:,} B, bound 2 x live + 4096 = {self.bound_bytes:,} B",
        ]
        for label, peaks in (("between ticks", b), ("inside ticks", i)):
            for role in ("hub", "leaf"):
                p = peaks[role]
                out.append(
                    f"  {label:<13} {role:<4}: max encoded {p.encoded:,} B "
                    f"({p.replica} at tick {p.tick}), excess over bound {p.excess:+,} B, "
                    f"max encoded/live {p.max_ratio:.2f}"
                )
        out += [
            f"epochs {self.epochs:,} (hub state at its compaction pass peaked at "
            f"{self.hub_max_encoded_at_compaction:,} B), crossings {self.crossings:,}, "
            f"rebased writes {self.rebased_writes:,} "
            f"({self.rebased_writes / max(c['writes'], 1):.2f} per write)",
            f"departed {self.departed}, converged {self.converged} replicas; "
            f"mean surviving candidates per key {self.candidates_per_key:.2f}",
            f"wire {self.wire_bytes:,} B sent in {self.frames_sent:,} frames "
            f"({self.frames_lost:,} lost; departed replicas keep resending into their cut "
            f"edge), {self.wire_delivered:,} B delivered; max RSS {self.max_rss_mb:.0f} MB",
        ]
        if self.plain_final_bytes:
            out.append(
                f"plain pycrdt: state {self.plain_final_bytes:,} B "
                f"({self.plain_final_bytes / self.live_bytes:,.0f} x live, "
                f"{self.plain_final_bytes / self.bound_bytes:,.0f} x the bound), "
                f"{self.plain_clients} client ids, wire {self.plain_wire_bytes:,} B, "
                f"{self.plain_seconds:.1f} s; growth "
                + ", ".join(f"{w:,}: {s:,}" for w, s in self.plain_samples[-6:])
            )
        return out


class Storm:
    def __init__(self, cfg: StormConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.net = Network(cfg.seed, loss=cfg.loss)
        self.report = StormReport(config={**asdict(cfg), "short_lived": cfg.short_lived})
        self.keys = [f"k{i:02d}" for i in range(cfg.keys)]
        self.key_index = {k: i for i, k in enumerate(self.keys)}
        self.present: dict[str, Memory] = {}
        self.active: list[str] = []
        #: Stopped writing, waiting to have delivered everything.
        self.leaving: set[str] = set()
        self.drained: set[str] = set()
        self.live = 0
        self.tick = 0
        self.seq = 0
        #: superseded[seq]: a replica overwrote this value after seeing it.
        self.superseded = bytearray(cfg.writes + 1)
        #: key_of[seq]: the index of the key written with that value.
        self.key_of = array("H", [0]) * (cfg.writes + 1)
        self.plain = PlainYjs() if cfg.baseline else None
        self.plain_seconds = 0.0
        self._add(HUB)

    # -- membership

    def _add(self, name: str) -> None:
        memory = self.net.add_replica(name, Memory(name, compaction=POLICY))
        self.present[name] = memory
        self.active.append(name)
        self.report.replicas_seen += 1
        if name != HUB:
            if self.plain is not None:
                self.plain.join()
            server, client = self.net.connect(HUB, name)
            self._hook(server, HUB)
            self._hook(client, name)

    def _hook(self, link: Link, holder: str) -> None:
        """Measure the holder after every frame it receives (inside a tick); on a
        client link, also notice when a leaving replica has delivered everything."""
        incoming, outgoing = link.incoming, link.outgoing
        inside = self.report.inside["hub" if holder == HUB else "leaf"]
        # A leaving replica's request built while its link was idle: once it is
        # answered, the hub has processed every earlier request (stop-and-wait), and
        # an earlier request whose writes the hub could not integrate (a new epoch)
        # would have been answered by a crossing that leaves the link dirty.
        clean_request = False

        def measured(data: bytes) -> None:
            nonlocal clean_request
            awaiting = link.awaiting_reply
            incoming(data)
            if holder in self.present:
                self._see(inside, holder)
            if clean_request and awaiting and not link.awaiting_reply:
                self.drained.add(holder)

        def sent() -> bytes | None:
            nonlocal clean_request
            if holder in self.leaving and not link.awaiting_reply:
                clean_request = link.idle
            return outgoing()

        link.incoming = measured  # type: ignore[method-assign]
        if link.role == "client":
            link.outgoing = sent  # type: ignore[method-assign]

    def _retire(self, name: str) -> None:
        """A short-lived replica stops writing; it leaves once drained."""
        self.active.remove(name)
        self.leaving.add(name)

    def _drain(self) -> None:
        for name in sorted(self.drained):
            self.leaving.discard(name)
            del self.present[name]
            self.net.isolate(name)  # gone for good
            self.report.departed += 1
        self.drained.clear()

    # -- measuring

    def _live_of(self, memory: Memory) -> int:
        if self.live and len(memory.meta) == self.cfg.keys:
            return self.live
        return memory.meta.measure().live_bytes

    def _see(self, peak: Peak, name: str) -> None:
        memory = self.present[name]
        encoded = len(memory.meta.update_since(None))
        peak.see(name, self.tick, encoded, self._live_of(memory))

    def _check_between(self) -> None:
        for name in self.present:
            self._see(self.report.between["hub" if name == HUB else "leaf"], name)

    def _check_live(self) -> None:
        """Every replica holding all keys has the same live JSON size."""
        for name, memory in self.present.items():
            m = memory.meta.measure()
            if len(memory.meta) == self.cfg.keys:
                assert m.live_bytes == self.live, (name, m)

    # -- writing

    def _write(self, writer: str, key: str) -> None:
        meta = self.present[writer].meta
        seen = meta.get(key)
        if seen is not None:
            self.superseded[_seq(seen)] = 1
        self.seq += 1
        value = _value(writer, self.seq)
        meta[key] = value
        self.key_of[self.seq] = self.key_index[key]
        if self.plain is not None:
            self.plain.write(writer, key, value, self.seq)

    def _plain_flush(self) -> None:
        if self.plain is None:
            return
        start = time.perf_counter()
        self.plain.flush(len(self.present))
        if self.tick % 250 == 0:
            self.report.plain_samples.append((self.seq, self.plain.encoded_bytes()))
        self.plain_seconds += time.perf_counter() - start

    # -- the run

    def schedule(self) -> tuple[int, list[tuple[int, int]]]:
        """Ticks of writing and the (join, leave) tick of each short-lived replica:
        lifetimes of ``short_alive`` spacings, staggered so that about
        ``short_alive`` are active at any time."""
        cfg = self.cfg
        ticks = -(-(cfg.writes - cfg.keys) // cfg.writes_per_tick)
        spacing = ticks / cfg.short_lived
        times = [
            (max(0, round((j - cfg.short_alive + 1) * spacing)), round((j + 1) * spacing))
            for j in range(cfg.short_lived)
        ]
        return ticks, times

    def run(self) -> StormReport:
        cfg = self.cfg
        start = time.perf_counter()
        for name in (f"r{i}" for i in range(1, cfg.long_lived + 1)):
            self._add(name)
        for key in self.keys:  # the hub creates every key
            self._write(HUB, key)
        self.live = self.present[HUB].meta.measure().live_bytes
        self.report.live_bytes = self.live
        self.report.bound_bytes = BOUND_RATIO * self.live + BOUND_SLACK
        _, times = self.schedule()
        joins: dict[int, list[int]] = defaultdict(list)
        leaves: dict[int, list[int]] = defaultdict(list)
        first_short = cfg.long_lived + 1
        for j, (join, leave) in enumerate(times):
            joins[join].append(first_short + j)
            leaves[leave].append(first_short + j)
        per_tick = cfg.writes_per_tick
        while self.seq < cfg.writes:
            for j in joins.get(self.tick, ()):
                self._add(f"r{j}")
            for j in leaves.get(self.tick, ()):
                self._retire(f"r{j}")
            for _ in range(min(per_tick, cfg.writes - self.seq)):
                self._write(self.rng.choice(self.active), self.rng.choice(self.keys))
            self._plain_flush()
            self._step()
            if self.tick % 1000 == 0:
                self._check_live()
        self.report.ticks = self.tick
        for name in [n for n in self.active if n != HUB and int(n[1:]) >= first_short]:
            self._retire(name)
        self._settle()
        self.report.seconds = time.perf_counter() - start
        self._finish()
        return self.report

    def _step(self) -> None:
        self._check_between()  # after the writes
        self.tick += 1
        self.net.tick()
        self._check_between()  # after the tick
        self._drain()

    def _settle(self) -> None:
        """Tick until every leaving replica has left and the rest hold the same
        content with nothing left to send on any link."""
        for taken in range(self.cfg.settle_ticks + 1):
            if not self.leaving and self._quiet():
                self.report.settle_ticks = taken
                return
            self._step()
        raise AssertionError(f"not settled after {self.cfg.settle_ticks} ticks")

    def _quiet(self) -> bool:
        for name in self.present:
            if name != HUB and not (
                self.net.link(name, HUB).idle and self.net.link(HUB, name).idle
            ):
                return False
        return len({m.digest() for m in self.present.values()}) == 1

    def _finish(self) -> None:
        r, cfg = self.report, self.cfg
        self._check_live()
        hub = self.present[HUB].meta.metrics
        r.epochs = hub.epoch
        r.hub_max_encoded_at_compaction = hub.max_encoded_bytes
        for memory in self.present.values():
            r.crossings += memory.meta.metrics.crossings
            r.rebased_writes += memory.meta.metrics.rebased_writes
        for name in self.net.names:
            if name not in self.present:  # departed: their counters still count
                m = self.net[name].meta.metrics
                r.crossings += m.crossings
                r.rebased_writes += m.rebased_writes
        r.converged = len(self.present)
        totals = self.net.totals()
        r.wire_bytes, r.frames_sent, r.frames_lost = (
            totals.bytes_sent,
            totals.frames_sent,
            totals.frames_lost,
        )
        r.wire_delivered = totals.bytes_delivered
        # Candidates: values written to a key that nobody overwrote after seeing them.
        survivors = sum(1 for seq in range(1, self.seq + 1) if not self.superseded[seq])
        r.candidates_per_key = survivors / cfg.keys
        if self.plain is not None:
            r.plain_final_bytes = self.plain.encoded_bytes()
            r.plain_samples.append((self.seq, r.plain_final_bytes))
            r.plain_clients = self.plain.clients()
            r.plain_wire_bytes = self.plain.wire_bytes
            r.plain_seconds = self.plain_seconds
        r.max_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.slow
def test_meta_storm() -> None:
    cfg = StormConfig(
        writes=_env_int("HYBRIDSYNC_STORM_WRITES", StormConfig.writes),
        writes_per_tick=_env_int("HYBRIDSYNC_STORM_WRITES_PER_TICK", StormConfig.writes_per_tick),
    )
    storm = Storm(cfg)
    report = storm.run()
    print("\n" + "\n".join(report.lines()))
    if os.environ.get("HYBRIDSYNC_STORM_REPORT"):
        with open(os.environ["HYBRIDSYNC_STORM_REPORT"], "w") as f:
            json.dump(asdict(report), f, indent=1)

    assert storm.seq == cfg.writes
    assert report.replicas_seen == cfg.replicas
    assert report.departed == cfg.short_lived  # every short-lived replica came and went
    # The bound at all times: between ticks and after every single frame a replica
    # receives (the root runs its compaction check right after integrating updates).
    for peaks in (report.between, report.inside):
        for role in ("hub", "leaf"):
            assert peaks[role].excess <= 0, (role, peaks[role])
    # Convergence: equal content everywhere ...
    final = storm.present[HUB].meta.to_py()
    assert sorted(final) == storm.keys
    for name, memory in storm.present.items():
        assert memory.meta.to_py() == final, name
    assert len({m.digest() for m in storm.present.values()}) == 1
    # ... and each key holds a value written to it that no replica overwrote after
    # seeing it (writes survive by the CRDT's rules; nothing stale comes back).
    for key, value in final.items():
        seq = _seq(value)
        assert storm.keys[storm.key_of[seq]] == key, (key, value)
        assert not storm.superseded[seq], f"{key}: {value} was overwritten by a later write"
    # Plain pycrdt: the same writes leave the state far over the bound.
    if storm.plain is not None:
        assert storm.plain.map.to_py().keys() == final.keys()
        assert report.plain_final_bytes > 10 * report.bound_bytes


def test_replica_back_after_many_epochs_does_not_resurrect_stale_writes() -> None:
    """A replica away for more epochs than the hub remembers (256) comes back:
    its writes the hub had acknowledged are not re-applied (a stale value would
    overwrite newer ones), the writes it made while away are."""
    net = Network(seed=1)
    net.add_replica(HUB, Memory(HUB, compaction=CompactionPolicy(slack_bytes=100)))
    for name in ("r1", "r2", "r3"):
        net.add_replica(name)
        net.connect(HUB, name)
    net["r1"].meta["x"] = "stale (r1)"
    net.run_until_quiescent()
    assert net[HUB].meta["x"] == "stale (r1)"  # integrated by the hub
    net.isolate("r1")
    net["r1"].meta["while-away"] = "kept"
    rounds = 0
    while net[HUB].meta.epoch <= 260:  # two writers, so every overwrite leaves history
        rounds += 1
        assert rounds < 5000
        for j in range(3):
            net["r2" if j % 2 else "r3"].meta["x"] = f"new #{rounds}.{j}"
        net.run(2)
    net.heal()
    net.run_until_quiescent()
    assert net.converged()
    assert net[HUB].meta["x"] != "stale (r1)"
    assert net[HUB].meta["x"].startswith("new #")
    assert net[HUB].meta["while-away"] == "kept"
