"""Metadata across epochs of different lineages: hubs and roots restarted
without their state, trees that change, deletions during a merge. Each test
is a schedule found to lose or double a write in an earlier design."""

from __future__ import annotations

from hybridsync import Link, Memory
from hybridsync.meta import CompactionPolicy
from hybridsync.sync.epochs import _ENDED_MAX

OFF = CompactionPolicy(enabled=False)
EAGER = CompactionPolicy(max_ratio=1.0, slack_bytes=0)


def replica(name: str, incarnation: int) -> Memory:
    return Memory(name, compaction=OFF, incarnation=incarnation)


def pair(client: Memory, server: Memory) -> tuple[Link, Link]:
    return (
        Link(client, server.replica_id, role="client"),
        Link(server, client.replica_id, role="server"),
    )


def ex(link: tuple[Link, Link], rounds: int = 1) -> None:
    client, server = link
    for _ in range(rounds):
        server.incoming(client.outgoing())  # type: ignore[arg-type]
        reply = server.outgoing()
        if reply is not None:
            client.incoming(reply)


def same_epoch(*memories: Memory) -> bool:
    return len({m.meta.epoch_id for m in memories}) == 1


def test_a_leaf_write_its_hub_acknowledged_survives_a_root_restart() -> None:
    """root -> hub -> leaf, and b under the root. The hub acknowledges the
    leaf's k=5 and the root dies before the hub forwards it; the new root
    merges b's older document first. The hub left its epoch by a MERGE, so
    it moves the leaf by MERGE too, and the leaf's own latest value wins."""
    root, hub, leaf, b = (replica(n, i) for i, n in enumerate(["root", "hub", "leaf", "b"], 1))
    hr, lh, br = pair(hub, root), pair(leaf, hub), pair(b, root)
    root.meta["k"] = 1
    for _ in range(3):
        ex(hr), ex(lh), ex(br)
    leaf.meta["k"] = 5
    ex(lh)
    assert hub.meta["k"] == 5  # acknowledged by the hub
    new = replica("root", 9)
    hr[0].close()
    br[0].close()
    hr, br = pair(hub, new), pair(b, new)
    for _ in range(4):
        ex(br), ex(hr), ex(lh)
    assert [m.meta["k"] for m in (new, hub, leaf, b)] == [5, 5, 5, 5]
    assert same_epoch(new, hub, leaf, b)


def test_a_hub_restarted_empty_merging_two_leaves_doubles_nothing() -> None:
    """A hub restarted empty merges leaf l1's list, sends it up, then merges
    l2's list (holding "d", already at the root) before the root's MERGE
    arrives: the hub's later merge is replayed as a merge, not as inserts."""
    root, hub, l1, l2 = (replica(n, i) for i, n in enumerate(["root", "hub", "l1", "l2"], 1))
    hr, p1, p2 = pair(hub, root), pair(l1, hub), pair(l2, hub)
    root.meta["log"] = ["a"]
    for _ in range(3):
        ex(hr), ex(p1), ex(p2)
    l2.meta["log"].append("d")
    for _ in range(2):
        ex(p2), ex(hr)
    hub2 = replica("hub", 12)
    hr[0].close()
    hr, p1, p2 = pair(hub2, root), pair(l1, hub2), pair(l2, hub2)
    ex(p1)  # hub2 merges l1's ["a"]
    request = hr[0].outgoing()  # and sends it up
    ex(p2)  # hub2 merges l2's ["a", "d"] meanwhile
    hr[1].incoming(request)  # type: ignore[arg-type]
    hr[0].incoming(hr[1].outgoing())  # type: ignore[arg-type]
    for _ in range(4):
        ex(hr), ex(p1), ex(p2)
    for m in (root, hub2, l1, l2):
        assert m.meta["log"].to_py() == ["a", "d"]
    assert same_epoch(root, hub2, l1, l2)


def test_a_leaf_moving_to_a_lagging_hub_doubles_nothing() -> None:
    """The root compacts; hub h1 and its leaf cross, hub h2 has not yet. The
    leaf moves to h2: its epoch is a later one of h2's own lineage, so h2
    crosses to it first instead of merging the leaf's copies (no doubling)."""
    root, h1, h2, leaf = (replica(n, i) for i, n in enumerate(["root", "h1", "h2", "leaf"], 1))
    r1, r2, lh = pair(h1, root), pair(h2, root), pair(leaf, h1)
    root.meta["log"] = ["a"]
    for _ in range(3):
        ex(r1), ex(r2), ex(lh)
    leaf.meta["log"].append("b")
    ex(lh), ex(r1)
    root.meta.policy = EAGER
    for i in range(20):
        root.meta["pad"] = i
    assert root.meta.maybe_compact()
    root.meta.policy = OFF
    ex(r1), ex(lh)
    assert leaf.meta.epoch_id == root.meta.epoch_id != h2.meta.epoch_id
    lh[0].close()
    lh = pair(leaf, h2)
    for _ in range(4):
        ex(lh), ex(r2), ex(r1)
    for m in (root, h1, h2, leaf):
        assert m.meta["log"].to_py() == ["a", "b"]
    assert same_epoch(root, h1, h2, leaf)


def test_a_restarted_hub_does_not_treat_an_epoch_it_never_held_as_forgotten() -> None:
    """root -> hub -> leaf: the hub acknowledges the leaf's w and dies before
    forwarding it; the root compacts; a new hub joins the root first, then
    the leaf (still on the old epoch) comes back. Only the root may count an
    acknowledged write as integrated: the hub merges the leaf's document."""
    root, hub, leaf = (replica(n, i) for i, n in enumerate(["root", "hub", "leaf"], 1))
    hr, lh = pair(hub, root), pair(leaf, hub)
    hub.meta["x"] = 0
    for _ in range(2):
        ex(hr), ex(lh)
    hub.meta["z"] = 1
    ex(hr), ex(lh)
    leaf.meta["w"] = "acknowledged by the hub"
    ex(lh)
    assert not lh[0].awaiting_reply
    hr[0].close()
    root.meta.policy = CompactionPolicy(max_clients=1)
    root.meta["y"] = 1
    assert root.meta.maybe_compact()
    root.meta.policy = OFF
    hub2 = replica("hub", 12)
    hr = pair(hub2, root)
    ex(hr, rounds=2)
    lh = pair(leaf, hub2)
    for _ in range(4):
        ex(lh), ex(hr)
    for m in (root, hub2, leaf):
        assert m.meta.to_py() == {"x": 0, "z": 1, "y": 1, "w": "acknowledged by the hub"}


def test_a_list_deletion_during_a_merge_deletes_the_value_it_deleted() -> None:
    """A client deletes a list value while its whole document is being merged
    into a restarted root's list, where another value now sits at that index:
    the deletion replays by value."""
    new, a, b = replica("root", 9), replica("a", 2), replica("b", 3)
    a.meta["log"] = ["s", "a1"]
    b.meta["log"] = ["x", "s"]
    pa, pb = pair(a, new), pair(b, new)
    ex(pb, rounds=3)
    request = pa[0].outgoing()  # a's whole document, in flight
    del a.meta["log"][0]  # a deletes "s" meanwhile
    pa[1].incoming(request)  # type: ignore[arg-type]
    pa[0].incoming(pa[1].outgoing())  # type: ignore[arg-type]
    assert not pa[0].reply_complete or a.meta["log"].to_py() != ["x", "s", "a1"]
    for _ in range(3):
        ex(pa), ex(pb)
    for m in (new, a, b):
        assert m.meta["log"].to_py() == ["x", "a1"]


def _request_across_compactions(compactions: int) -> tuple[Memory, tuple[Link, Link]]:
    """A leaf's request carrying w=1 and a list append reaches the root after
    the root started ``compactions`` new epochs."""
    root = Memory("root", compaction=OFF, incarnation=1)
    leaf = replica("leaf", 2)
    link = pair(leaf, root)
    root.meta["log"] = ["a"]
    ex(link, rounds=2)
    leaf.meta["w"] = 1
    leaf.meta["log"].append("b")
    request = link[0].outgoing()
    root.meta.policy = EAGER
    for n in range(compactions):  # history that outgrows the live value
        for i in range(30):
            root.meta[f"{n}.{i}"] = "x" * 60
        for i in range(30):
            del root.meta[f"{n}.{i}"]
        assert root.meta.maybe_compact()
    root.meta.policy = OFF
    link[1].incoming(request)  # type: ignore[arg-type]
    link[0].incoming(link[1].outgoing())  # type: ignore[arg-type]
    assert not link[0].awaiting_reply
    return root, link


def test_a_request_that_crossed_a_compaction_is_integrated_late() -> None:
    """The root keeps the documents of the epochs it ended last: an update
    for one of them is integrated (its effect written on the current epoch)
    and the reply's frozen state covers it, so the leaf re-applies nothing
    and the reply acknowledges it."""
    root, link = _request_across_compactions(1)
    assert root.meta["w"] == 1 and root.meta["log"].to_py() == ["a", "b"]
    assert link[0].reply_complete
    assert root.meta.metrics.late_writes == 2
    for _ in range(3):
        ex(link)
    assert link[0].memory.meta.to_py() == root.meta.to_py()
    assert root.meta["log"].to_py() == ["a", "b"]  # not doubled by a re-application


def test_an_epoch_reply_that_dropped_a_write_is_not_an_acknowledgement() -> None:
    """Past the kept documents, an update of an ended epoch is not integrated:
    the reply moves the leaf across, the leaf writes w again on the new epoch,
    and that reply does not acknowledge the request (``reply_complete``)."""
    root, link = _request_across_compactions(_ENDED_MAX + 2)  # past what the root keeps
    assert not link[0].reply_complete  # w was not integrated by that reply
    assert "w" not in root.meta
    ex(link)
    assert link[0].reply_complete
    assert root.meta["w"] == 1 and root.meta["log"].to_py() == ["a", "b"]


def test_an_in_place_change_inside_a_list_element_lands_on_that_element_after_a_crossing() -> None:
    """A leaf changes a dict inside a list in place (``log[2]["v"] = 1``) while
    another leaf deletes an earlier element and the root compacts. The leaf's
    write was made on the old epoch: re-applied on the new one, where index 2
    is another element, it still lands on the element it changed (found by
    its value), not on whatever sits at its old index."""
    root = Memory("root", compaction=CompactionPolicy(max_ratio=1.0, slack_bytes=0), incarnation=1)
    a, b = replica("a", 2), replica("b", 3)
    ar, br = pair(a, root), pair(b, root)
    root.meta["log"] = [{"t": f"e{i}", "v": 0} for i in range(4)]
    ex(ar, 2), ex(br, 2)
    a.meta["log"][2]["v"] = 1  # not sent yet
    del b.meta["log"][0]
    for i in range(200):  # b's writes make the root compact: a new epoch
        b.meta[f"k{i}"] = i
        del b.meta[f"k{i}"]
        ex(br)
        if root.meta.epoch_id != a.meta.epoch_id:
            break
    assert root.meta.epoch_id != a.meta.epoch_id
    for _ in range(4):
        ex(ar), ex(br)
    want = [{"t": "e1", "v": 0}, {"t": "e2", "v": 1}, {"t": "e3", "v": 0}]
    for m in (root, a, b):
        assert m.meta["log"].to_py() == want


def _diverged_leaves(
    server: Memory, upstream: tuple[Link, Link] | None = None
) -> tuple[Memory, Memory, tuple[Link, Link], tuple[Link, Link]]:
    """Leaves a and b of ``server`` hold one list; a deletes one entry and
    changes another in place, and ``server`` (and its upstream link, if
    any) integrates that; b has not heard of it yet."""
    a, b = replica("a", 20), replica("b", 21)
    pa, pb = pair(a, server), pair(b, server)
    if upstream is None:
        server.meta["log"] = [{"t": "e0", "v": 0}, {"t": "e1", "v": 0}, {"t": "e2", "v": 0}]
    for _ in range(4):
        if upstream is not None:
            ex(upstream)
        ex(pa), ex(pb)
    assert b.meta["log"].to_py() == a.meta["log"].to_py()
    del a.meta["log"][1]  # e1
    a.meta["log"][1]["v"] = 1  # e2, in place
    ex(pa, 2)
    if upstream is not None:
        ex(upstream, 2)
    return a, b, pa, pb


def test_a_root_restarted_empty_keeps_deletions_and_in_place_changes() -> None:
    """A root restarted from nothing, whose clients hold the same epoch at
    different points (b missed a's deletion and in-place change): merging
    their documents by value brought e1 back and kept e2 twice. The new root
    adopts one client's document and takes the other's as an update of that
    history: the deletion holds and e2 is there once, changed."""
    root = replica("root", 1)
    a, b, pa, pb = _diverged_leaves(root)
    new = replica("root", 9)
    for link in (*pa, *pb):
        link.close()
    pa, pb = pair(a, new), pair(b, new)
    for _ in range(4):
        ex(pb), ex(pa)
    want = [{"t": "e0", "v": 0}, {"t": "e2", "v": 1}]
    for m in (new, a, b):
        assert m.meta["log"].to_py() == want
    assert same_epoch(new, a, b)


def test_a_hub_restarted_empty_keeps_deletions_and_in_place_changes() -> None:
    """root -> hub -> (a, b): the hub passed a's deletion and in-place change
    up, the root compacted, and the hub restarted from nothing before b
    heard of any of it. A hub that crossed to the root's epoch first merged
    b's document of the ended epoch by value (e1 back, e2 twice); it now
    adopts its clients' document before it moves, and moves b by MERGE
    without a state (b replays only what did not land)."""
    root, hub = replica("root", 1), replica("hub", 2)
    up = pair(hub, root)
    root.meta["log"] = [{"t": "e0", "v": 0}, {"t": "e1", "v": 0}, {"t": "e2", "v": 0}]
    a, b, pa, pb = _diverged_leaves(hub, up)
    root.meta.policy = EAGER
    epoch = root.meta.epoch_id
    for i in range(200):  # the root compacts: b's epoch is an ended one
        root.meta[f"pad{i}"] = i
        del root.meta[f"pad{i}"]
        ex(up)
        if root.meta.epoch_id != epoch:
            break
    assert root.meta.epoch_id != epoch == b.meta.epoch_id
    hub2 = replica("hub", 12)
    for link in (*up, *pa, *pb):
        link.close()
    up, pa, pb = pair(hub2, root), pair(a, hub2), pair(b, hub2)
    for _ in range(6):
        ex(up), ex(pb), ex(pa)
    want = [{"t": "e0", "v": 0}, {"t": "e2", "v": 1}]
    for m in (root, hub2, a, b):
        assert m.meta["log"].to_py() == want
    assert same_epoch(root, hub2, a, b)
