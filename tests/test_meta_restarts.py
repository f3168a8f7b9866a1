"""Metadata restarts from nothing: the cases that random restart schedules
(tests/meta_schedules.py) found, each reduced to a small scenario, plus the
schedules themselves (seeds that failed before the fix)."""

from __future__ import annotations

import pytest

from hybridsync import Link, Memory
from hybridsync.meta import CompactionPolicy
from meta_schedules import MIXES, run_schedule

ON = CompactionPolicy(max_ratio=1.0, slack_bytes=0)
OFF = CompactionPolicy(enabled=False)


def exchange(client: Link, server: Link, times: int = 1) -> None:
    for _ in range(times):
        frame = client.outgoing()
        assert frame is not None
        server.incoming(frame)
        reply = server.outgoing()
        if reply is not None:
            client.incoming(reply)


def entries(memory: Memory) -> list[object]:
    return memory.meta["log"].to_py()  # type: ignore[no-any-return]


def test_a_restarted_root_adopts_a_later_epoch_it_hears_of_after_adopting() -> None:
    """The old root compacted (epoch 1) and only ``a`` crossed; then it died.
    The new root hears only from ``b`` (still on epoch 0) for a while and
    adopts b's document; b changes its entry in place and deletes another,
    acknowledged on epoch 0. Then ``a`` reports epoch 1, a later epoch of
    the one adopted. The new root held its compaction while ``a`` was
    silent, so it adopts epoch 1 instead (shared history with ``a``) and
    moves ``b`` across by MERGE without a state: b replays its writes. A
    merge of a's document by value would have doubled b's entry (its old
    version) and brought b's deleted entry back."""
    old = Memory("root", compaction=OFF, incarnation=1)
    a = Memory("a", incarnation=2)
    b = Memory("b", incarnation=3)
    la, sa = Link(a, "root"), Link(old, "a", role="server")
    lb, sb = Link(b, "root"), Link(old, "b", role="server")
    old.meta["log"] = []
    exchange(la, sa, 2)
    exchange(lb, sb, 2)
    a.meta["log"].append({"t": "a1", "v": 0})
    b.meta["log"].append({"t": "b1", "v": 0})
    b.meta["log"].append({"t": "b2", "v": 0})
    for _ in range(3):
        exchange(la, sa)
        exchange(lb, sb)
    old.meta.policy = ON
    for i in range(5):
        old.meta["k"] = i
    exchange(la, sa, 2)  # the old root compacts; a crosses, b does not
    assert old.meta.epoch == 1 and a.meta.epoch_id == old.meta.epoch_id
    assert b.meta.epoch_id != a.meta.epoch_id
    la.close()
    lb.close()
    new = Memory("root", compaction=ON, incarnation=9)
    la, sa = Link(a, "root"), Link(new, "a", role="server")
    lb, sb = Link(b, "root"), Link(new, "b", role="server")
    exchange(lb, sb, 8)  # b offers its document 8 times: adopted
    assert new.meta.epoch_id == b.meta.epoch_id
    log = b.meta["log"]
    i1 = next(i for i, e in enumerate(log.to_py()) if e["t"] == "b1")
    log[i1]["v"] = 1
    i2 = next(i for i, e in enumerate(log.to_py()) if e["t"] == "b2")
    del log[i2]
    exchange(lb, sb, 2)
    assert lb.reply_complete and not lb.awaiting_reply  # acknowledged
    assert new.meta.epoch_id == b.meta.epoch_id  # no compaction yet: a is silent
    for _ in range(6):
        exchange(la, sa)
        exchange(lb, sb)
    assert new.meta.epoch_id != b.meta.epoch_id or new.meta.epoch > 1
    want = [{"t": "a1", "v": 0}, {"t": "b1", "v": 1}]
    for m in (new, a, b):
        assert m.meta.epoch_id == new.meta.epoch_id
        assert sorted(entries(m), key=lambda e: e["t"]) == want, m.replica_id  # type: ignore[index]
        assert m.meta["k"] == 4


def test_a_hub_many_compactions_behind_keeps_a_gone_clients_deletion() -> None:
    """A leaf deletes its entry through its hub, which is cut off from the
    root while the root compacts six times; the leaf then goes away for
    good. When the hub comes back, the root integrates the hub's update of
    that ended epoch late (it keeps the documents of the epochs it ended
    within a byte budget, not only the last four), so the deletion, which
    only the hub holds, is not undone when the hub crosses."""
    root = Memory("root", compaction=OFF, incarnation=1)
    hub = Memory("hub", incarnation=2)
    leaf = Memory("leaf", incarnation=3)
    lh, sh = Link(hub, "root"), Link(root, "hub", role="server")
    ll, sl = Link(leaf, "hub"), Link(hub, "leaf", role="server")
    root.meta["log"] = []
    for _ in range(3):
        exchange(lh, sh)
        exchange(ll, sl)
    leaf.meta["log"].append({"t": "x", "v": 0})
    leaf.meta["log"].append({"t": "y", "v": 0})
    for _ in range(3):
        exchange(ll, sl)
        exchange(lh, sh)
    assert entries(root) == [{"t": "x", "v": 0}, {"t": "y", "v": 0}]
    del leaf.meta["log"][0]
    exchange(ll, sl, 2)  # the hub holds the deletion; the root does not
    assert entries(hub) == [{"t": "y", "v": 0}]
    root.meta.policy = ON
    root.meta["scratch"] = []
    n = 0
    for _ in range(6):  # six compactions (the root's own writes drive them)
        while not root.meta.maybe_compact():
            n += 1
            root.meta["scratch"].append(n)
            if n % 2:
                del root.meta["scratch"][0]
            assert n < 1000
    assert root.meta.epoch == 6
    ll.close()  # the leaf is gone (restarted from nothing elsewhere)
    sl.close()
    for _ in range(8):
        exchange(lh, sh)
    for m in (root, hub):
        assert m.meta.epoch_id == root.meta.epoch_id
        assert entries(m) == [{"t": "y", "v": 0}], m.replica_id


@pytest.mark.parametrize(
    ("mix", "seed"),
    [
        ("star-root", 190),  # adopted an earlier epoch; a sibling branch arrived later
        ("star-root", 238),  # adopted an earlier epoch; a later one of it arrived later
        ("tree-leaf", 191),  # a hub 5 compactions behind held a gone leaf's deletion
    ],
)
def test_restart_schedules_that_failed(mix: str, seed: int) -> None:
    parents, rates = MIXES[mix]
    out = run_schedule(seed, parents, steps=600, **rates)
    assert out.ok, out
