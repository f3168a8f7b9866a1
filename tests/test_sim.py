"""The network simulator, and the sync engine driven through it: convergence
of star, chain and tree swarms with and without loss, duplication,
reordering and partitions; determinism; no lost edits."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridsync import Memory
from hybridsync.errors import HybridSyncError, InvalidArgumentError
from hybridsync.sim import (
    DEFAULT_ALPHABET,
    Edit,
    EditGenerator,
    Faults,
    Network,
    NotQuiescentError,
    TopologyError,
    TopologyKind,
    random_edits,
)

KINDS: list[TopologyKind] = ["star", "chain", "tree", "random"]


def assert_converged(net: Network) -> None:
    """Every replica holds exactly the same documents, and the digests agree."""
    first = net.texts(net.names[0])
    for name in net.names[1:]:
        assert net.texts(name) == first, f"{name} differs from {net.names[0]}"
    assert net.converged()
    assert len(set(net.digests().values())) == 1


def settle_bound(net: Network) -> int:
    """Ticks a fault-free network may need to settle: every change crosses at
    most ``2 * height`` edges, each hop costs the wait for a poll plus a
    request and a reply delay; frames delayed or held back earlier can still
    arrive late, and a client whose request was lost waits to retransmit."""
    faults = net.faults
    hop = net.poll_interval + 2 * faults.delay[1]
    late = faults.max_latency + (net.retransmit_after or 0)
    return (2 * net.height + 3) * hop + late + 10


# -- configuration and topology ----------------------------------------------------


def test_fault_settings_are_validated() -> None:
    for bad in (
        {"loss": 1.5},
        {"loss": -0.1},
        {"duplicate": 2},
        {"reorder": float("nan")},
        {"delay": (2, 1)},
        {"delay": (-1, 1)},
        {"delay": (1,)},
        {"reorder_ticks": 0},
    ):
        with pytest.raises(InvalidArgumentError):
            Network(0, **bad)
    assert Faults(loss=0.5, delay=(0, 3)).max_latency == 3
    assert Faults(reorder=0.1, delay=(1, 2), reorder_ticks=5).max_latency == 7


def test_topology_builders() -> None:
    star = Network.star(5)
    assert star.names == ["r0", "r1", "r2", "r3", "r4"]
    assert star.edges == [("r0", f"r{i}") for i in range(1, 5)]
    assert star.height == 1

    chain = Network.chain(4)
    assert chain.edges == [("r0", "r1"), ("r1", "r2"), ("r2", "r3")]
    assert chain.height == 3
    assert chain.parent("r3") == "r2"
    assert chain.parent("r0") is None

    tree = Network.tree(2, 2)
    assert len(tree.names) == 7
    assert {child: tree.parent(child) for _, child in tree.edges} == {
        "r1": "r0",
        "r2": "r0",
        "r3": "r1",
        "r4": "r1",
        "r5": "r2",
        "r6": "r2",
    }
    assert tree.height == 2
    assert Network.tree(3, 0).names == ["r0"]

    for kind in KINDS:
        for n in range(1, 8):
            net = Network.topology(kind, n, seed=n)
            assert len(net.names) == n
            assert len(net.edges) == n - 1  # a tree
            assert all(net.depth(name) >= 0 for name in net.names)

    # Links: a server at the parent, a client at the child.
    assert set(star.links) == {(a, b) for e in star.edges for a, b in (e, e[::-1])}
    assert star.link("r0", "r1") is not star.link("r1", "r0")


def test_connect_refuses_anything_but_a_tree() -> None:
    net = Network(0)
    for name in ("a", "b", "c"):
        net.add_replica(name)
    net.connect("a", "b")
    net.connect("b", "c")
    with pytest.raises(TopologyError):
        net.add_replica("a")
    with pytest.raises(TopologyError):
        net.connect("a", "c")  # c already has a parent
    with pytest.raises(TopologyError):
        net.connect("c", "a")  # would close the cycle a-b-c-a
    with pytest.raises(TopologyError):
        net.connect("a", "a")
    with pytest.raises(TopologyError):
        net.connect("a", "zz")
    with pytest.raises(TopologyError):
        net.partition("a", "c")  # no such edge
    with pytest.raises(TopologyError):
        net.memory("zz")
    with pytest.raises(InvalidArgumentError):
        net.add_replica("d", Memory("not-d"))
    adopted = Memory("d")
    adopted.text["doc"] = "already here"
    assert net.add_replica("d", adopted) is adopted
    net.connect("a", "d")
    net.run_until_quiescent(50)
    assert net.texts("c") == {"doc": "already here"}
    assert net.unsettled() == []
    assert isinstance(TopologyError("x"), HybridSyncError)


# -- edit scripts -------------------------------------------------------------------


def test_edit_semantics() -> None:
    assert Edit("r0", "d", "insert", at=2, text="XY").transform("abcd") == "abXYcd"
    assert Edit("r0", "d", "insert", at=7, text="X").transform("abcd") == "abXcd"  # 7 % 5
    assert Edit("r0", "d", "delete", at=1, length=2).transform("abcd") == "ad"
    assert Edit("r0", "d", "delete", at=3, length=9).transform("abcd") == "abc"
    assert Edit("r0", "d", "replace", at=0, length=1, text="🦀").transform("abcd") == "🦀bcd"
    assert Edit("r0", "d", "insert", text="new").transform(None) == "new"
    assert Edit("r0", "d", "set", text="whole").transform("abcd") == "whole"
    assert Edit("r0", "d", "remove").transform("abcd") is None
    with pytest.raises(InvalidArgumentError):
        Edit("r0", "d", "explode")  # type: ignore[arg-type]

    net = Network.star(2)
    net.apply([Edit("r1", "d", "insert", text="hi"), Edit("r1", "e", "set", text="x")])
    assert net.texts("r1") == {"d": "hi", "e": "x"}
    net.apply([Edit("r1", "e", "remove"), Edit("r1", "missing", "remove")])
    assert net.texts("r1") == {"d": "hi"}
    assert net.edit("r1", "d", lambda s: s + "!") == "hi!"
    net.remove("r1", "d")
    assert net.texts("r1") == {}


def test_edit_generator_is_seeded_and_varied() -> None:
    names = ["r0", "r1", "r2"]
    script = random_edits(5, names, 400)
    assert script == random_edits(5, names, 400)
    assert script != random_edits(6, names, 400)
    assert {e.op for e in script} == {"insert", "delete", "replace", "set", "remove"}
    assert {e.replica for e in script} == set(names)
    inserted = "".join(e.text for e in script)
    assert any(ord(ch) > 0xFFFF for ch in inserted)  # astral (emoji)
    assert any(0x80 <= ord(ch) <= 0xFFFF for ch in inserted)
    assert set(inserted) <= set("".join(DEFAULT_ALPHABET))
    only_inserts = EditGenerator(1, names, weights={"insert": 1.0}).script(50)
    assert {e.op for e in only_inserts} == {"insert"}


# -- running --------------------------------------------------------------------------


def scenario(seed: int) -> Network:
    """A lossy tree with a few rounds of random edits."""
    net = Network.tree(2, 2, seed=seed, loss=0.3, duplicate=0.2, reorder=0.3, delay=(1, 3))
    edits = EditGenerator(seed, net.names)
    for _ in range(5):
        net.apply(edits.script(4))
        net.run(3)
    net.run_until_quiescent(2000)
    return net


def test_same_seed_same_run() -> None:
    a, b = scenario(42), scenario(42)
    assert a.now == b.now
    assert a.history == b.history
    assert a.channel_stats() == b.channel_stats()
    assert a.digests() == b.digests()
    assert a.metrics_summary() == b.metrics_summary()
    c = scenario(43)
    assert c.history != a.history


@pytest.mark.parametrize(
    "build",
    [
        lambda: Network.star(6),
        lambda: Network.chain(5),
        lambda: Network.tree(2, 3),
        lambda: Network.tree(3, 2),
    ],
    ids=["star6", "chain5", "tree2x3", "tree3x2"],
)
def test_fault_free_convergence(build: Callable[[], Network]) -> None:
    net = build()
    assert net.run_until_quiescent(10) == 0  # nothing to do yet
    for i, name in enumerate(net.names):
        net.write(name, f"notes-{name}", f"{name} was here 🦀 {i}\n")
    net.write(net.names[-1], "plan", "1. read\n2. write\n")
    ticks = net.run_until_quiescent(settle_bound(net))
    assert ticks > 0
    assert_converged(net)
    docs = net.texts("r0")
    assert docs["plan"] == "1. read\n2. write\n"
    assert all(docs[f"notes-{name}"].startswith(f"{name} was here") for name in net.names)

    # A second wave, edited concurrently everywhere, in different documents.
    for name in net.names:
        net.edit(name, f"notes-{name}", lambda s: s + "again\n")
    net.remove("r0", "plan")
    net.run_until_quiescent(settle_bound(net))
    assert_converged(net)
    assert "plan" not in net.texts(net.names[-1])
    assert all(net.texts("r0")[f"notes-{n}"].endswith("again\n") for n in net.names)
    total = net.totals()
    assert total.frames_dropped == 0 and total.frames_duplicated == 0


def test_agents_edit_between_ticks() -> None:
    """``run(before_tick=...)`` lets agents edit while the network runs."""
    net = Network.chain(3, seed=2, loss=0.2)
    seen: list[int] = []

    def agents(n: Network) -> None:
        seen.append(n.now)
        if n.now < 10:
            name = f"r{n.now % 3}"
            n.edit(name, f"log-{name}", lambda s: s + f"tick {n.now}\n")

    net.run(12, before_tick=agents)
    assert seen == list(range(12))
    net.run_until_quiescent(500)
    assert_converged(net)
    docs = net.texts("r0")
    assert docs == {
        f"log-r{i}": "".join(f"tick {t}\n" for t in range(10) if t % 3 == i) for i in range(3)
    }


def test_zero_delay_network() -> None:
    net = Network.chain(4, delay=(0, 0))
    net.write("r3", "doc", "from the leaf")
    ticks = net.run_until_quiescent(40)
    assert_converged(net)
    assert ticks <= 10


@pytest.mark.parametrize("kind", KINDS)
def test_convergence_under_loss_duplication_and_reordering(kind: TopologyKind) -> None:
    net = Network.topology(
        kind,
        6,
        seed=2024,
        loss=0.3,
        duplicate=0.3,
        reorder=0.3,
        delay=(1, 3),
    )
    edits = EditGenerator(7, net.names)
    for _ in range(8):
        net.apply(edits.script(5))
        net.run(2)
    net.run_until_quiescent(3000)  # the faults stay on
    assert_converged(net)
    total = net.totals()
    assert total.frames_lost > 0 and total.frames_duplicated > 0


def test_partition_that_heals() -> None:
    net = Network.chain(3, seed=3)
    net.write("r0", "doc", "base\n")
    net.run_until_quiescent(settle_bound(net))
    net.partition("r1", "r0", ticks=20)  # either order names the edge
    assert net.partitioned("r0", "r1")
    net.edit("r0", "doc", lambda s: "root: " + s)
    net.edit("r2", "doc", lambda s: s + "leaf\n")
    net.run(15)
    # The cut edge carries nothing; the leaf reached its parent only.
    assert net.texts("r1") == {"doc": "base\nleaf\n"}
    assert net.texts("r0") == {"doc": "root: base\n"}
    assert not net.converged()
    net.run(5)
    assert not net.partitioned("r0", "r1")
    net.run_until_quiescent(settle_bound(net))
    assert_converged(net)
    assert net.texts("r0") == {"doc": "root: base\nleaf\n"}
    cut = net.channel_stats()
    assert cut[("r1", "r0")].frames_partitioned >= 20
    assert cut[("r2", "r1")].frames_partitioned == 0

    # An open-ended partition holds until heal(); waiting for it fails.
    net.isolate("r1")
    net.write("r2", "doc", "rewritten by the leaf\n")
    with pytest.raises(NotQuiescentError) as info:
        net.run_until_quiescent(30)
    assert info.value.ticks == 30
    assert any("partitioned" in reason for reason in info.value.reasons)
    assert net.texts("r2") != net.texts("r0")
    net.heal()
    net.run_until_quiescent(settle_bound(net))
    assert_converged(net)
    assert net.texts("r0") == {"doc": "rewritten by the leaf\n"}


def test_partition_during_lossy_editing() -> None:
    net = Network.tree(2, 2, seed=99, loss=0.2, duplicate=0.1, reorder=0.2, delay=(1, 2))
    edits = EditGenerator(99, net.names)
    for round_ in range(6):
        if round_ == 1:
            net.isolate("r1", ticks=12)  # cuts a whole subtree off
        if round_ == 3:
            net.partition("r2", "r6")  # until healed
        net.apply(edits.script(4))
        net.run(4)
    net.heal()
    net.run_until_quiescent(3000)
    assert_converged(net)


def test_stats_add_up() -> None:
    net = Network.star(4, seed=5, loss=0.25, duplicate=0.25, reorder=0.25)
    net.apply(random_edits(5, net.names, 20))
    net.run(30)
    history = net.history
    assert len(history) == net.now == 30
    assert [s.tick for s in history] == list(range(1, 31))
    total = net.totals()
    assert total.bytes_sent == sum(s.bytes_sent for s in history) > 0
    assert total.frames_sent == sum(s.frames_sent for s in history)
    per_direction = net.channel_stats()
    assert set(per_direction) <= set(net.links)
    # Every copy is delivered, dropped or still in flight.
    copies = total.frames_sent + total.frames_duplicated
    assert copies == total.frames_delivered + total.frames_dropped + net.in_flight()
    # The links' own counters agree with what the network carried.
    metrics = net.metrics_summary()
    assert metrics.links == 6
    assert metrics.frames_sent == total.frames_sent
    assert metrics.bytes_sent == total.bytes_sent
    assert metrics.frames_received == total.frames_delivered
    assert metrics.bytes_received == total.bytes_delivered
    assert set(net.link_metrics()) == set(net.links)
    assert "total" in net.summary()


def test_poll_interval() -> None:
    """Clients that poll every third tick send fewer frames and still converge."""
    sent = {}
    for interval in (1, 3):
        net = Network.tree(2, 2, seed=8, loss=0.2, poll_interval=interval)
        net.apply(random_edits(8, net.names, 30))
        net.run_until_quiescent(2000)
        assert_converged(net)
        net.run(30)
        sent[interval] = sum(s.frames_sent for s in net.history[-30:])
    assert sent[3] < sent[1]
    with pytest.raises(InvalidArgumentError):
        Network(0, poll_interval=0)


def test_retransmit_after() -> None:
    """A client that waits for its reply instead of re-sending the request
    every tick settles just as fast on a slow link, with far fewer frames, and
    still recovers from loss."""
    frames, retransmits, ticks = {}, {}, {}
    for wait in (None, 7):  # a round trip takes 6 ticks
        net = Network.star(4, seed=1, delay=(3, 3), retransmit_after=wait)
        net.write("r1", "doc", "hello " * 50)
        ticks[wait] = net.run_until_quiescent(200)
        assert_converged(net)
        frames[wait] = net.totals().frames_sent
        retransmits[wait] = sum(link.metrics.retransmits for link in net.links.values())
    assert frames[7] * 2 < frames[None]
    assert retransmits[7] == 0 < retransmits[None]
    assert ticks[7] <= ticks[None] + 1
    net = Network.tree(2, 2, seed=4, loss=0.4, duplicate=0.2, retransmit_after=3)
    net.apply(random_edits(4, net.names, 30))
    net.run_until_quiescent(3000)
    assert_converged(net)
    with pytest.raises(InvalidArgumentError):
        Network(0, retransmit_after=0)


def test_per_edge_faults() -> None:
    net = Network.star(3, seed=1)
    net.set_faults("r0", "r2", loss=1.0)  # r2 is cut off by loss alone
    net.write("r1", "doc", "hello")
    with pytest.raises(NotQuiescentError):
        net.run_until_quiescent(30)
    assert net.texts("r2") == {}
    stats = net.channel_stats()
    assert stats[("r2", "r0")].frames_lost == stats[("r2", "r0")].frames_sent > 0
    assert stats[("r0", "r1")].frames_lost == 0
    assert net.faults_of("r2", "r0").loss == 1.0 and net.faults.loss == 0.0
    with pytest.raises(InvalidArgumentError):
        net.set_faults(loss=2.0)
    net.set_faults("r0", "r2", loss=0.0)
    net.run_until_quiescent(settle_bound(net))
    assert_converged(net)


# -- properties ----------------------------------------------------------------------

_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=8) | st.lists(
    st.sampled_from(DEFAULT_ALPHABET), max_size=6
).map("".join)
_edit = st.builds(
    lambda who, doc, op, at, length, text: (who, Edit("", doc, op, at, length, text)),
    who=st.integers(0, 5),
    doc=st.sampled_from(["plan", "notes", "日誌"]),
    op=st.sampled_from(["insert", "insert", "delete", "replace", "set", "remove"]),
    at=st.integers(0, 1 << 20),
    length=st.integers(0, 8),
    text=_text,
)


@settings(max_examples=100, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    n=st.integers(2, 6),
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0.0, 0.5),
    duplicate=st.floats(0.0, 0.3),
    reorder=st.floats(0.0, 0.5),
    max_delay=st.integers(1, 3),
    poll_interval=st.integers(1, 3),
    retransmit_after=st.none() | st.integers(1, 8),
    rounds=st.lists(
        st.tuples(st.lists(_edit, max_size=6), st.integers(0, 6), st.integers(0, 8)),
        min_size=1,
        max_size=4,
    ),
)
def test_converges_once_edits_stop_and_faults_heal(
    kind: TopologyKind,
    n: int,
    seed: int,
    loss: float,
    duplicate: float,
    reorder: float,
    max_delay: int,
    poll_interval: int,
    retransmit_after: int | None,
    rounds: list[tuple[list[tuple[int, Edit]], int, int]],
) -> None:
    net = Network.topology(
        kind,
        n,
        seed=seed,
        loss=loss,
        duplicate=duplicate,
        reorder=reorder,
        delay=(1, max_delay),
        poll_interval=poll_interval,
        retransmit_after=retransmit_after,
    )
    for edits, ticks, cut in rounds:
        if cut and net.edges:
            a, b = net.edges[seed % len(net.edges)]
            net.partition(a, b, ticks=cut)
        net.apply(Edit(f"r{who % n}", e.doc, e.op, e.at, e.length, e.text) for who, e in edits)
        net.run(ticks)
    net.heal()
    net.set_faults(loss=0.0, duplicate=0.0, reorder=0.0)
    net.run_until_quiescent(settle_bound(net))
    assert_converged(net)
    assert net.idle()


# -- nothing is lost -------------------------------------------------------------------

_WORDS = (
    "alpha",
    "βήτα",
    "gamma",
    "naïve",
    "café",
    "日本語",
    "中文",
    "🦀",
    "😀",
    "👩\u200d💻",
    "e\u0301",
    "plan",
    "zeta",
    "42",
    "ok",
)


def marker(name: str) -> str:
    return f"⟦{name}⟧ "


def paragraph(doc: str, name: str) -> str | None:
    """The content of ``name``'s paragraph in ``doc`` (``None``: not found)."""
    start = doc.find(marker(name))
    if start < 0:
        return None
    start += len(marker(name))
    end = doc.find("\n", start)
    return None if end < 0 else doc[start:end]


def rewrite(content: str, rng: random.Random, min_len: int) -> str:
    """A small random edit of a paragraph: insert, delete or replace a span."""
    pos = rng.randint(0, len(content))
    word = rng.choice(_WORDS) + " "
    roll = rng.random()
    if roll < 0.5 or len(content) < min_len:
        return content[:pos] + word + content[pos:]
    span = rng.randint(1, min(8, len(content) - pos) or 1)
    middle = word if roll < 0.75 else ""
    return content[:pos] + middle + content[pos + span :]


def lost_paragraph_edits(kind: TopologyKind, seed: int, *, short: bool) -> list[str]:
    """Agents ``r0``..``r5`` each own one paragraph (one line) of a shared
    document and edit only theirs, concurrently, over a network with 30% loss,
    30% duplication and 30% reordering. Returns what went missing: an agent
    that finds its own paragraph changed, or a final paragraph absent from a
    replica once the network is quiescent (the faults still on).

    ``short`` paragraphs (a few words, edited often, little time between
    edits) put every hunk's context into the neighbours' paragraphs."""
    delay, ticks, rate, min_len = ((1, 3), (0, 2), 0.8, 12) if short else ((1, 2), (1, 3), 0.6, 24)
    net = Network.topology(
        kind,
        6,
        seed=seed,
        loss=0.3,
        duplicate=0.3,
        reorder=0.3,
        delay=delay,
    )
    rng = random.Random(seed)
    owned = {
        name: f"{name} {rng.choice(_WORDS)}"
        if short
        else f"{name} starts with {rng.choice(_WORDS)} and {rng.choice(_WORDS)}, {name}"
        for name in net.names
    }
    net.write("r0", "shared", "".join(f"{marker(n)}{owned[n]}\n" for n in net.names))
    net.run_until_quiescent(3000)

    problems: list[str] = []
    for _ in range(40):
        for name in net.names:
            if rng.random() < rate:
                doc = net[name].text["shared"]
                mine = paragraph(doc, name)
                if mine != owned[name]:
                    problems.append(f"tick {net.now}: {name} wrote {owned[name]!r}, has {mine!r}")
                    return problems
                new = rewrite(owned[name], rng, min_len)
                old_line = f"{marker(name)}{owned[name]}\n"
                net.write(name, "shared", doc.replace(old_line, f"{marker(name)}{new}\n", 1))
                owned[name] = new
        net.run(rng.randint(*ticks))

    net.run_until_quiescent(3000)
    assert_converged(net)
    doc = net["r0"].text["shared"]
    problems += [f"{n}'s {owned[n]!r} missing" for n in net.names if paragraph(doc, n) != owned[n]]
    return problems


@pytest.mark.parametrize("kind", ["star", "chain", "tree"])
def test_disjoint_paragraph_edits_are_never_lost(kind: TopologyKind) -> None:
    """Each agent owns a paragraph of a shared document and edits only that;
    every agent's last version of its paragraph ends up on every replica."""
    for seed in range(8):
        assert lost_paragraph_edits(kind, seed, short=False) == [], f"seed {seed}"


@pytest.mark.parametrize("kind", ["star", "chain", "tree"])
def test_disjoint_edits_of_short_paragraphs_are_never_lost(kind: TopologyKind) -> None:
    """The same with one-line paragraphs of a few words each, edited often."""
    lost = {seed: lost_paragraph_edits(kind, seed, short=True) for seed in range(10)}
    assert {seed: problems for seed, problems in lost.items() if problems} == {}


def test_concurrent_creation_keeps_both_texts() -> None:
    """Two agents start the same document before either has heard of the other's."""
    net = Network.star(2)
    net.write("r0", "log", "root's first line\n")
    net.write("r1", "log", "leaf's first line\n")
    net.run_until_quiescent(50)
    assert_converged(net)
    lines = net.texts("r0")["log"].splitlines()
    assert sorted(lines) == ["leaf's first line", "root's first line"]


def test_concurrent_appends_to_a_short_document_are_kept() -> None:
    """Two replicas, no faults. The root adds a line before and after the only
    line; the leaf appends two lines a few ticks later (offsets 1 and 2 lose
    'tick 11' and duplicate 'tick 5')."""
    results = {}
    for offset in range(5):
        net = Network.star(2)
        net.write("r0", "log", "tick 5\n")
        net.run_until_quiescent(50)
        net.write("r0", "log", "tick 6\ntick 5\ntick 7\n")
        net.run(offset)
        net.edit("r1", "log", lambda s: s + "tick 8\ntick 11\n")
        net.run_until_quiescent(50)
        assert_converged(net)
        results[offset] = sorted(net.texts("r0")["log"].splitlines())
    expected = ["tick 11", "tick 5", "tick 6", "tick 7", "tick 8"]
    assert results == dict.fromkeys(range(5), expected)


def test_edit_inside_a_neighbours_coarse_hunk_survives() -> None:
    """Two replicas, no faults. The root's agent edits lines 1 and 3, the
    leaf's agent edits line 2 a few ticks later. Semantic cleanup makes the
    root's reply one hunk replacing lines 1-3; when that reply is in flight
    while the leaf edits line 2 (offsets 1 and 2), applying it erases the
    leaf's edit."""
    kept = {}
    for offset in range(5):
        net = Network.star(2)
        net.write("r0", "doc", "alpha one\nmy line\ngamma three\n")
        net.run_until_quiescent(50)
        net.write("r0", "doc", "ALPHA ONE\nmy line\nGAMMA THREE\n")
        net.run(offset)
        net.edit("r1", "doc", lambda s: s.replace("my line", "my own line"))
        net.run_until_quiescent(50)
        assert_converged(net)
        kept[offset] = net.texts("r0") == {"doc": "ALPHA ONE\nmy own line\nGAMMA THREE\n"}
    assert all(kept.values()), kept
