"""Structured metadata: the API, sync, epochs and compaction."""

from __future__ import annotations

import gc
import math
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc

from hybridsync import Link, Memory
from hybridsync.errors import InvalidArgumentError, LimitExceededError
from hybridsync.meta import CompactionPolicy
from meta_schedules import MIXES, run_mix

EAGER = CompactionPolicy(max_ratio=1.0, slack_bytes=32)


class Star:
    """A root with client replicas, exchanged by hand with seeded loss."""

    def __init__(
        self, n: int, *, policy: CompactionPolicy | None = None, loss: float = 0.0, seed: int = 0
    ) -> None:
        # Fixed incarnations: concurrent writes to one key resolve by CRDT
        # client ids, which are salted per incarnation (random by default).
        self.root = Memory("root", compaction=policy, incarnation=1)
        self.leaves = [Memory(f"leaf-{i}", incarnation=2 + i) for i in range(n)]
        self.links = [
            (
                Link(m, "root", role="client", epoch=100 + i),
                Link(self.root, m.replica_id, role="server"),
            )
            for i, m in enumerate(self.leaves)
        ]
        self.loss = loss
        self.rng = random.Random(seed)
        self.cut: set[int] = set()

    def exchange(self, i: int) -> None:
        if i in self.cut:
            return
        cl, sv = self.links[i]
        frame = cl.outgoing()
        assert frame is not None
        if self.rng.random() < self.loss:
            return
        sv.incoming(frame)
        reply = sv.outgoing()
        if reply is not None and self.rng.random() >= self.loss:
            cl.incoming(reply)

    def cycle(self) -> None:
        for i in range(len(self.links)):
            self.exchange(i)

    def settle(self, rounds: int = 60) -> None:
        self.loss = 0.0
        for _ in range(rounds):
            self.cycle()
            if self.converged() and all(c.idle and s.idle for c, s in self.links):
                return
        raise AssertionError("did not settle")

    def converged(self) -> bool:
        return len({m.digest() for m in [self.root, *self.leaves]}) == 1


# -- the API -------------------------------------------------------------------


def test_json_like_values_nested_updates_and_lists() -> None:
    m = Memory("a")
    m.meta["tasks"] = {"t1": {"status": "todo", "tags": ["x"]}, "n": 3}
    m.meta["flag"] = True
    m.meta["none"] = None
    m.meta["pi"] = 3.5
    tasks = m.meta["tasks"]
    tasks["t1"]["status"] = "done"
    tasks["t1"]["tags"].append("y")
    tasks["t1"]["tags"].insert(0, "w")
    tasks["t2"] = {"status": "todo"}
    del tasks["t2"]["status"]
    assert m.meta.to_py() == {
        "tasks": {"t1": {"status": "done", "tags": ["w", "x", "y"]}, "n": 3, "t2": {}},
        "flag": True,
        "none": None,
        "pi": 3.5,
    }
    assert isinstance(m.meta["tasks"]["n"], int)  # JSON numbers: integral reads back as int
    assert (
        "tasks" in m.meta and len(m.meta) == 4 and sorted(m.meta) == ["flag", "none", "pi", "tasks"]
    )
    tags = m.meta["tasks"]["t1"]["tags"]
    del tags[1]
    tags[0] = "v"
    assert tags.to_py() == ["v", "y"] and tags[-1] == "y" and len(tags) == 2
    with pytest.raises(KeyError):
        m.meta["missing"]
    m.meta.setdefault("log", []).append("first")  # setdefault returns the live list
    m.meta["tasks"].setdefault("t3", {})["k"] = "v"
    assert m.meta["log"].to_py() == ["first"] and m.meta["tasks"]["t3"].to_py() == {"k": "v"}
    del m.meta["log"]
    del m.meta["tasks"]["t3"]
    with pytest.raises(IndexError):
        tags[5]


@pytest.mark.parametrize(
    "bad",
    [object(), {1: "x"}, math.nan, math.inf, 2**53, -(2**60), {"k": {1, 2}}, "lone \ud800"],
)
def test_non_json_values_are_refused_and_change_nothing(bad: object) -> None:
    m = Memory("a")
    m.meta["keep"] = 1
    before = m.digest()
    with pytest.raises(InvalidArgumentError):
        m.meta["bad"] = bad
    assert m.digest() == before


def test_too_deep_values_are_refused() -> None:
    value: object = "leaf"
    for _ in range(100):
        value = [value]
    with pytest.raises(LimitExceededError):
        Memory("a").meta["deep"] = value


def test_a_transaction_is_one_change() -> None:
    a, b = Memory("a"), Memory("b")
    cl, sv = Link(a, "b", role="client", epoch=5), Link(b, "a", role="server")
    with a.transaction():
        a.meta["x"] = 1
        a.meta["y"] = {"z": [1, 2]}
        a.meta["y"]["z"].append(3)
    assert len({end for _, end, _ in a.meta._pending}) == 1  # one clock tick for three writes
    sv.incoming(cl.outgoing() or b"")
    assert b.meta.to_py() == {"x": 1, "y": {"z": [1, 2, 3]}}


def test_the_log_of_own_writes_stays_bounded_without_compaction() -> None:
    m = Memory("a", compaction=CompactionPolicy(enabled=False))
    for i in range(5000):
        m.meta[f"k{i % 10}"] = {"n": i}
        m.meta[f"k{i % 10}"]["seen"] = True
    assert len(m.meta._pending) < 600
    assert m.meta.to_py()["k9"] == {"n": 4999, "seen": True}


# -- sync ----------------------------------------------------------------------


def test_concurrent_writes_merge_by_the_crdt() -> None:
    star = Star(2)
    a, b = star.leaves
    a.meta["board"] = {"t1": "todo"}
    star.settle()
    a.meta["board"]["t1"] = "claimed by a"  # same key: one winner everywhere
    b.meta["board"]["t1"] = "claimed by b"
    a.meta["a-only"] = 1  # distinct keys: both survive
    b.meta["b-only"] = 2
    star.settle()
    value = star.root.meta.to_py()
    assert value["a-only"] == 1 and value["b-only"] == 2
    assert value["board"]["t1"] in ("claimed by a", "claimed by b")
    assert a.meta.to_py() == b.meta.to_py() == value


def test_metadata_converges_under_loss_in_a_chain() -> None:
    root, hub, leaf = Memory("root", compaction=EAGER), Memory("hub"), Memory("leaf")
    pairs = [
        (Link(hub, "root", role="client", epoch=1), Link(root, "hub", role="server")),
        (Link(leaf, "hub", role="client", epoch=2), Link(hub, "leaf", role="server")),
    ]
    rng = random.Random(3)

    def cycle(loss: float) -> None:
        for cl, sv in pairs:
            frame = cl.outgoing() or b""
            if rng.random() >= loss:
                sv.incoming(frame)
                reply = sv.outgoing()
                if reply and rng.random() >= loss:
                    cl.incoming(reply)

    for i in range(400):
        rng.choice([root, hub, leaf]).meta[f"k{rng.randrange(10)}"] = f"v{i}"
        leaf.meta.setdefault("log", [])
        if i % 7 == 0:
            leaf.meta["log"].append(i)
        cycle(0.3)
    for _ in range(50):
        cycle(0.0)
    assert len({m.digest() for m in (root, hub, leaf)}) == 1
    assert root.meta.metrics.compactions >= 2
    assert hub.meta.epoch == leaf.meta.epoch == root.meta.epoch
    assert root.meta["log"].to_py() == list(range(0, 400, 7))  # every append once


# -- epochs ----------------------------------------------------------------------


def test_compaction_keeps_the_state_bounded_by_the_live_value() -> None:
    star = Star(3, policy=CompactionPolicy(max_ratio=1.5, slack_bytes=1024), loss=0.2, seed=1)
    rng = random.Random(2)
    worst = 0.0
    for i in range(3000):
        rng.choice(star.leaves).meta[f"key-{rng.randrange(30)}"] = f"value {i}"
        star.exchange(rng.randrange(3))
        for m in (star.root, *star.leaves):
            metrics = m.meta.measure()
            worst = max(worst, metrics.encoded_bytes - (2 * metrics.live_bytes + 4096))
    star.settle()
    assert worst <= 0, f"state exceeded 2x live + 4 KB by {worst} bytes"
    assert star.root.meta.metrics.compactions > 10
    assert star.converged()


def test_naive_rebuild_duplicates_and_epochs_do_not() -> None:
    """Regression: rebuilding a fresh document from the live value and merging
    it with a replica that still has the old history duplicates content."""
    old = Doc()
    log = old.get("log", type=Array)
    log.append("hello")
    replica = Doc()
    replica.apply_update(old.get_update())
    rebuilt = Doc()
    rebuilt.get("log", type=Array).extend(list(log))
    replica.apply_update(rebuilt.get_update())
    assert list(replica.get("log", type=Array)) == ["hello", "hello"]  # the trap

    star = Star(1, policy=EAGER)
    leaf = star.leaves[0]
    leaf.meta["log"] = ["hello"]
    star.settle()
    for i in range(50):  # enough overwrites for several compactions
        (star.root if i % 2 else leaf).meta["counter"] = i
        star.cycle()
    star.settle()
    assert star.root.meta.metrics.compactions >= 2
    assert leaf.meta.epoch == star.root.meta.epoch
    assert leaf.meta["log"].to_py() == star.root.meta["log"].to_py() == ["hello"]


def test_a_replica_partitioned_across_epochs_keeps_its_writes() -> None:
    star = Star(3, policy=EAGER)
    lonely = star.leaves[2]
    lonely.meta["notes"] = ["before the partition"]
    lonely.meta["owner"] = "lonely"
    star.settle()
    star.cut.add(2)
    start_epoch = star.root.meta.epoch
    for i in range(200):  # the others keep overwriting: several compactions
        star.leaves[i % 2].meta["status"] = f"step {i}"
        star.cycle()
    assert star.root.meta.epoch >= start_epoch + 2
    lonely.meta["notes"].append("written while partitioned")
    lonely.meta["lonely-key"] = {"deep": [1, 2]}
    notes = lonely.meta["notes"]  # a proxy taken before the crossing
    star.cut.clear()
    star.settle()
    notes.append("after rejoining")
    star.settle()
    for m in (star.root, *star.leaves):
        assert m.meta["notes"].to_py() == [
            "before the partition",
            "written while partitioned",
            "after rejoining",
        ]
        assert m.meta["lonely-key"].to_py() == {"deep": [1, 2]}
        # The last two overwrites were concurrent (they crossed in flight):
        # the CRDT keeps one of them, the same everywhere.
        assert m.meta["status"] == star.root.meta["status"] in ("step 198", "step 199")
    # Its writes on the ended epoch were integrated late by the root (it
    # still kept that epoch's document) or re-applied by the replica.
    late = star.root.meta.metrics.late_writes
    assert lonely.meta.metrics.rebased_writes + late >= 2


# -- properties -------------------------------------------------------------------

OPS = st.lists(
    st.tuples(
        st.integers(0, 2),  # writer
        st.sampled_from(["set", "del", "append", "sync", "sync"]),
        st.integers(0, 5),  # key
        st.integers(0, 1000),  # value
    ),
    max_size=120,
)


@settings(max_examples=60, deadline=None)
@given(ops=OPS, seed=st.integers(0, 2**16), loss=st.sampled_from([0.0, 0.2, 0.5]))
def test_property_convergence_with_faults_and_compactions(
    ops: list[tuple[int, str, int, int]], seed: int, loss: float
) -> None:
    star = Star(3, policy=CompactionPolicy(max_ratio=1.0, slack_bytes=128), loss=loss, seed=seed)
    written: dict[str, list[object]] = {}
    singles: dict[str, object] = {}
    appended: list[int] = []
    for writer, kind, k, v in ops:
        m = star.leaves[writer]
        key = f"k{k}"
        if kind == "set":
            m.meta[key] = v
            written.setdefault(key, []).append(v)
        elif kind == "del" and key in m.meta:
            del m.meta[key]
            written.setdefault(key, []).append(None)
        elif kind == "append":
            m.meta.setdefault(f"log-{writer}", [])
            m.meta[f"log-{writer}"].append(v)
            appended.append(v)
        else:
            star.exchange(writer)
    for key, values in written.items():
        if len(values) == 1 and values[0] is not None:
            singles[key] = values[0]
    star.settle()
    final = star.root.meta.to_py()
    for key, value in singles.items():  # a write nobody superseded is everywhere
        assert final.get(key) == value
    for key, value in final.items():
        if key in written:  # the winner is one of the writes
            assert value in written[key]
    logs = sorted(v for w in range(3) for v in final.get(f"log-{w}", []))
    assert logs == sorted(appended)  # every append exactly once


def test_a_root_restarted_empty_keeps_what_it_acknowledged_across_epochs() -> None:
    """The old root compacted (epoch 1) and one child crossed; the other
    stayed on epoch 0. A new root starts empty, merges the lagging child's
    document and acknowledges its later writes; then the child on epoch 1
    shows up: its document (another lineage) merges by value too. Nothing
    is lost or doubled, and everyone ends on the new root's epoch."""

    def exchange(client: Link, server: Link) -> None:
        for _ in range(3):
            server.incoming(client.outgoing())  # type: ignore[arg-type]
            reply = server.outgoing()
            if reply is not None:
                client.incoming(reply)

    on = CompactionPolicy(max_ratio=1.0, slack_bytes=0)
    off = CompactionPolicy(enabled=False)
    old = Memory("hub", compaction=off, incarnation=1)
    a = Memory("a", compaction=on, incarnation=2)
    b = Memory("b", compaction=on, incarnation=3)
    la, sa = Link(a, "hub"), Link(old, "a", role="server")
    lb, sb = Link(b, "hub"), Link(old, "b", role="server")
    a.meta["log"] = []
    exchange(la, sa)
    exchange(lb, sb)
    a.meta["log"].append("a0")
    exchange(la, sa)
    exchange(lb, sb)
    old.meta.policy = on
    for i in range(5):
        b.meta["k"] = 100 + i
    exchange(lb, sb)  # the old root compacts; b crosses, a does not
    assert (old.meta.epoch, a.meta.epoch, b.meta.epoch) == (1, 0, 1)
    new = Memory("hub", compaction=off, incarnation=9)
    la.close()
    lb.close()
    la, sa = Link(a, "hub"), Link(new, "a", role="server")
    lb, sb = Link(b, "hub"), Link(new, "b", role="server")
    exchange(la, sa)
    a.meta["log"].append("late")
    a.meta["late"] = True
    exchange(la, sa)  # acknowledged by the new root, on epoch 0
    for _ in range(3):
        exchange(lb, sb)
        exchange(la, sa)
    want = {"log": ["a0", "late"], "late": True, "k": 104}
    for m in (new, a, b):
        assert m.meta.epoch_id == new.meta.epoch_id  # everyone on the new root's epoch
        assert m.meta.to_py() == want


def test_a_restarted_root_without_the_frozen_state_loses_no_acknowledged_insert() -> None:
    """As above, but the child that is ahead joined after the lagging child's
    epoch ended (nobody knows that epoch's final state): the value merge at
    the new root still keeps every list value exactly once."""

    def exchange(client: Link, server: Link) -> None:
        for _ in range(3):
            server.incoming(client.outgoing())  # type: ignore[arg-type]
            reply = server.outgoing()
            if reply is not None:
                client.incoming(reply)

    on = CompactionPolicy(max_ratio=1.0, slack_bytes=0)
    off = CompactionPolicy(enabled=False)
    old = Memory("hub", compaction=off, incarnation=1)
    a = Memory("a", compaction=on, incarnation=2)
    la, sa = Link(a, "hub"), Link(old, "a", role="server")
    a.meta["log"] = []
    exchange(la, sa)
    old.meta.policy = on
    for i in range(3):
        a.meta["log"].append(f"a{i}")
        a.meta["k"] = i
    exchange(la, sa)  # epoch 1; a crosses
    old.meta.policy = off
    a.meta["log"].append("a-acked-by-old")
    exchange(la, sa)  # integrated by the old root on epoch 1
    old.meta.policy = on
    for i in range(5):
        old.meta["k"] = 10 + i
    old.meta.maybe_compact()  # epoch 2; a does not hear of it
    c = Memory("c", compaction=on, incarnation=3)
    lc, sc = Link(c, "hub"), Link(old, "c", role="server")
    exchange(lc, sc)  # c joins on epoch 2: it never saw epoch 1
    assert (old.meta.epoch, a.meta.epoch, c.meta.epoch) == (2, 1, 2)
    new = Memory("hub", compaction=off, incarnation=9)
    la.close()
    lc.close()
    la, sa = Link(a, "hub"), Link(new, "a", role="server")
    lc, sc = Link(c, "hub"), Link(new, "c", role="server")
    exchange(la, sa)
    a.meta["log"].append("late")
    exchange(la, sa)  # acknowledged by the new root on epoch 1
    for _ in range(3):
        exchange(lc, sc)
        exchange(la, sa)
    for m in (new, a, c):
        assert m.meta.epoch_id == new.meta.epoch_id
        assert m.meta["log"].to_py() == ["a0", "a1", "a2", "a-acked-by-old", "late"]


RESTART_SEEDS = int(os.environ.get("HYBRIDSYNC_RESTART_SEEDS", "200"))
#: Mixes whose schedules still fail (docs/protocol.md 6.9, the README's table):
#: strict, so a mix that starts passing must move out of this set.
FAILING_MIXES = {"tree-all"}


@pytest.mark.parametrize(
    "mix",
    [
        pytest.param(
            mix,
            marks=pytest.mark.xfail(
                mix in FAILING_MIXES,
                strict=True,
                reason="residual losses with root, hub and leaf restarts (docs/protocol.md 6.9)",
            ),
        )
        for mix in MIXES
    ],
)
def test_random_restart_schedules_of_every_mix(mix: str) -> None:
    """Every restart mix (star/tree x root/hub/leaf restarts from nothing),
    loss drawn in 0-50%, duplicated and late frames, tight compaction;
    leaves append, change in place and delete list entries and set and
    delete keys: no acknowledged entry lost, none doubled, no deletion undone,
    every leaf's latest write wins, every replica converges
    (``python tests/meta_schedules.py --mix MIX --seeds N`` runs more)."""
    res = run_mix(mix, range(RESTART_SEEDS))
    assert res["failed"] == 0, [f"seed {seed}: {out}" for seed, out in res["failures"][:3]]
    assert res["acked"] > RESTART_SEEDS  # the schedules did acknowledge writes


def test_after_a_restart_own_current_values_win_over_stale_copies() -> None:
    """A root restarted from nothing hears first from a replica that missed
    the latest writes (c); it adopts the newest document once every client
    reported, so the writers' latest values and deletions win. A write that
    was superseded by another replica's later one does not come back."""

    def sync(pairs: list[tuple[Link, Link]], rounds: int = 4) -> None:
        for _ in range(rounds):
            for client, server in pairs:
                server.incoming(client.outgoing())  # type: ignore[arg-type]
                reply = server.outgoing()
                if reply is not None:
                    client.incoming(reply)

    root = Memory("root", incarnation=1)
    a, b, c = (Memory(n, incarnation=2 + i) for i, n in enumerate("abc"))
    pairs = [(Link(m, "root"), Link(root, m.replica_id, role="server")) for m in (a, b, c)]
    a.meta["k"] = 1
    b.meta["gone"] = "soon"
    sync(pairs)
    assert c.meta.to_py() == {"k": 1, "gone": "soon"}
    b.meta["k"] = 2  # supersedes a's write
    del b.meta["gone"]
    b.meta["status"] = "b-latest"
    sync(pairs[:2])  # c misses all of it
    assert a.meta.to_py() == {"k": 2, "status": "b-latest"}
    new = Memory("root", incarnation=9)
    for client, _ in pairs:
        client.close()
    pairs = [(Link(m, "root"), Link(new, m.replica_id, role="server")) for m in (c, a, b)]
    sync(pairs[:1])  # the stale copy first: the new root waits for its other clients
    assert new.meta.to_py() == {}
    sync(pairs)
    for m in (new, a, b, c):
        assert m.meta.to_py() == {"k": 2, "status": "b-latest"}
        assert m.meta.epoch_id == new.meta.epoch_id


def _live_documents() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, Doc))


def test_ended_epochs_and_dropped_replicas_free_their_documents() -> None:
    """The CRDT keeps its observers alive from native code, and they refer
    to their document: unless the metadata channel drops them, an ended
    epoch's document, and a dropped replica's, stays in memory for good
    (a long-running root would grow with every compaction)."""
    before = _live_documents()
    star = Star(3, policy=EAGER, seed=4)
    star.root.meta["log"] = []
    for i in range(120):
        leaf = star.leaves[i % 3]
        leaf.meta[f"k{i % 5}"] = i
        star.root.meta["log"].append(i)
        star.cycle()
    star.settle()
    assert star.root.meta.metrics.compactions >= 20
    # Live now: each replica's current document, the root's ended ones it
    # keeps for late updates, and the link's decoding scratch: not one per
    # epoch each replica went through.
    assert _live_documents() - before <= 4 + 64
    del star, leaf
    assert _live_documents() == before
