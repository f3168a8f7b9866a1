"""The metadata channel's incremental answers (``Meta.update_since`` from the
log of the document's own transaction updates) against Yjs' own
``get_update(state)``: applied to a document at ``state``, both give the same
document (values, state vector, delete set, pending content)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map

import hybridsync.channels.meta as meta_mod
from hybridsync import Link, Memory
from hybridsync.channels.events import Origin
from hybridsync.channels.meta import EMPTY_UPDATE, Meta, decode_state_vector, encode_state_vector
from hybridsync.meta import CompactionPolicy

REMOTE = Origin("remote", peer="r")
KEYS = ["a", "b", "c", "d"]


# -- helpers ---------------------------------------------------------------------


def _uint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _deleted(doc: Doc[Any]) -> dict[int, list[tuple[int, int]]]:
    """The document's delete set as merged [start, end) clock ranges per client
    (``get_update(own state)`` is the delete set alone)."""
    data = doc.get_update(doc.get_state())
    assert data[0] == 0  # no structs
    n, pos = _uint(data, 1)
    ranges: dict[int, list[tuple[int, int]]] = {}
    for _ in range(n):
        client, pos = _uint(data, pos)
        m, pos = _uint(data, pos)
        for _ in range(m):
            clock, pos = _uint(data, pos)
            length, pos = _uint(data, pos)
            ranges.setdefault(client, []).append((clock, clock + length))
    out: dict[int, list[tuple[int, int]]] = {}
    for client, rs in ranges.items():
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted(rs):
            if merged and lo <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        out[client] = merged
    return out


def _document(doc: Doc[Any]) -> tuple[Any, ...]:
    """Everything a document holds that an update can change."""
    return (
        doc.get("meta", type=Map).to_py(),
        doc.get("clock", type=Map).to_py(),
        decode_state_vector(doc.get_state()),
        _deleted(doc),
        doc.get_update(),  # pending structs included
    )


def _replay(updates: list[bytes]) -> Doc[Any]:
    doc: Doc[Any] = Doc()
    for u in updates:
        doc.apply_update(u)
    return doc


def _assert_same_as_yjs(meta: Meta, peer: list[bytes], state: bytes) -> bytes:
    """``meta.update_since(state)`` and ``get_update(state)`` applied to the
    document that ``peer`` (its updates) builds give the same document."""
    ours = meta.update_since(state)
    yjs = meta._doc.get_update(state)
    a, b = _replay(peer), _replay(peer)
    a.apply_update(ours)
    b.apply_update(yjs)
    assert _document(a) == _document(b)
    return ours


def _plain_meta(name: str = "a") -> Meta:
    return Memory(name, compaction=CompactionPolicy(enabled=False), incarnation=7).meta


class _Remote:
    """A plain pycrdt replica of the same document (another writer): its
    transaction updates are kept, to be integrated whole, in order or not."""

    def __init__(self, client_id: int) -> None:
        self.doc: Doc[Any] = Doc(client_id=client_id)
        self.map = self.doc.get("meta", type=Map)
        self.txns: list[bytes] = []
        self.doc.observe(lambda e: self.txns.append(e.update))


# -- the property ----------------------------------------------------------------

VALUES = st.one_of(st.integers(-3, 3), st.fixed_dictionaries({"x": st.integers(0, 3)}))
WHO = st.integers(0, 1)  # which remote writer
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.sampled_from(KEYS), VALUES),
        st.tuples(st.just("nested"), st.sampled_from(KEYS), st.integers(0, 9)),
        st.tuples(st.just("del"), st.sampled_from(KEYS)),
        st.tuples(st.just("rawdel"), st.sampled_from(KEYS)),  # ours, without a clock tick
        st.tuples(st.just("append"), st.sampled_from(KEYS), st.integers(0, 9)),
        st.tuples(st.just("ldel"), st.sampled_from(KEYS)),
        st.tuples(st.just("rset"), WHO, st.sampled_from(KEYS), st.integers(0, 9)),
        st.tuples(st.just("rdel"), WHO, st.sampled_from(KEYS)),  # no clock tick either
        st.tuples(st.just("r2r"), WHO),  # one remote takes the other's document
        st.tuples(st.just("r2a"), WHO, st.sampled_from(["diff", "txn"]), st.integers(0, 99)),
        st.tuples(st.just("a2r"), WHO),
        st.tuples(st.just("snap"), st.integers(0, 99)),
        st.tuples(st.just("feed"), st.integers(0, 99), st.integers(0, 2**32)),
        st.tuples(st.just("check"), st.integers(0, 99), st.integers(0, 2**16)),
    ),
    max_size=50,
)


def _under(state: bytes, seed: int) -> bytes:
    """A state vector that claims less than ``state``: clocks lowered, clients
    dropped (what a peer may be known to hold is at most what it holds)."""
    sv = decode_state_vector(state)
    out = {}
    for i, (client, clock) in enumerate(sorted(sv.items())):
        pick = (seed >> (2 * i)) & 3
        if pick == 1:
            out[client] = clock // 2
        elif pick != 2:
            out[client] = clock
    return encode_state_vector(out)


def _subset(items: list[bytes], seed: int) -> list[bytes]:
    return [u for i, u in enumerate(items) if seed >> (i % 32) & 1]


@settings(max_examples=300, deadline=None)
@given(OPS, st.sampled_from([1, 2, 8]))
def test_answers_apply_like_get_update(ops: list[tuple[Any, ...]], recent: int) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(meta_mod, "_RECENT", recent)  # fewer: more searches among older points
        _answers_apply_like_get_update(ops)


def _answers_apply_like_get_update(ops: list[tuple[Any, ...]]) -> None:
    meta = _plain_meta()
    remotes = [_Remote(client_id=424242), _Remote(client_id=515151)]
    ours: list[bytes] = []  # our transactions' updates (what y-websocket would broadcast)
    meta._doc.observe(lambda e: ours.append(e.update))
    # Peers, each as the updates that build it: snapshots of ours, and those
    # plus whole transactions of ours and of the remotes (in order, some
    # missed): states the log never saw, deletions without a clock missed.
    peers: list[list[bytes]] = [[]]
    for op in ops:
        kind = op[0]
        if kind == "set":
            meta[op[1]] = op[2]
        elif kind == "nested":
            node = meta.get(op[1])
            if isinstance(node, meta_mod.MetaMap):
                node["x"] = op[2]
        elif kind == "del":
            if op[1] in meta:
                del meta[op[1]]
        elif kind == "rawdel":
            if op[1] in meta:
                with meta._doc.transaction():
                    del meta._root[op[1]]
        elif kind == "append":
            node = meta.get(op[1])
            if isinstance(node, meta_mod.MetaList):
                node.append(op[2])
            else:
                meta[op[1]] = [op[2]]
        elif kind == "ldel":
            node = meta.get(op[1])
            if isinstance(node, meta_mod.MetaList) and len(node):
                del node[0]
        elif kind == "rset":
            remotes[op[1]].map[op[2]] = op[3]
        elif kind == "rdel":
            if op[2] in remotes[op[1]].map:
                del remotes[op[1]].map[op[2]]
        elif kind == "r2r":
            a, b = remotes[op[1]], remotes[1 - op[1]]
            a.doc.apply_update(b.doc.get_update(a.doc.get_state()))
        elif kind == "r2a":
            remote = remotes[op[1]]
            if op[2] == "diff":
                meta.apply_remote(remote.doc.get_update(meta.state()), REMOTE)
            elif remote.txns:  # one transaction, maybe out of order (pending) or again
                meta.apply_remote(remote.txns[op[3] % len(remote.txns)], REMOTE)
        elif kind == "a2r":
            remote = remotes[op[1]]
            remote.doc.apply_update(meta._doc.get_update(remote.doc.get_state()))
        elif kind == "snap":
            # A peer at our state now (a state the log saw, if an answer sealed
            # it: as a link does, answer an earlier peer first).
            earlier = peers[op[1] % len(peers)]
            meta.update_since(_replay(earlier).get_state())
            peers.append([meta._doc.get_update()])
        elif kind == "feed":
            base = peers[op[1] % len(peers)]
            seed = op[2]
            extra = _subset(ours, seed)
            for remote in remotes:
                seed = seed * 2654435761 % 2**32
                extra += _subset(remote.txns, seed)
            peers.append([*base, *extra])
        elif kind == "check":
            peer = peers[op[1] % len(peers)]
            state = _replay(peer).get_state()
            _assert_same_as_yjs(meta, peer, state)
            _assert_same_as_yjs(meta, peer, _under(state, op[2]))
    peers += [[remote.doc.get_update()] for remote in remotes]
    for peer in peers:
        _assert_same_as_yjs(meta, peer, _replay(peer).get_state())
    # A state nobody held: an unknown client, and ours beyond our clock.
    odd = decode_state_vector(meta.state())
    odd[7777] = 3
    for client in odd:
        odd[client] += 1
    _assert_same_as_yjs(meta, peers[0], encode_state_vector(odd))


# -- the cases one by one ----------------------------------------------------------


def _board(meta: Meta, n: int, rounds: int) -> None:
    with meta.transaction():
        meta["tasks"] = {f"t{i}": {"status": "todo", "owner": "x"} for i in range(n)}
    for r in range(rounds):
        for i in range(n):
            meta["tasks"][f"t{i}"]["status"] = f"s{r}"


def test_an_answer_is_the_change_with_its_deletions() -> None:
    meta = _plain_meta()
    _board(meta, 200, 3)  # 600 overwrites: a delete set of 600 ranges
    peer = [meta._doc.get_update()]
    state = meta.state()
    assert meta.update_since(state) == EMPTY_UPDATE  # nothing new; get_update: the delete set
    assert len(meta._doc.get_update(state)) > 400
    meta["tasks"]["t7"]["status"] = "done"
    ours = _assert_same_as_yjs(meta, peer, state)
    assert len(ours) < 100 < len(meta._doc.get_update(state))
    # A deletion: the answer holds it (the key is gone at the peer).
    peer.append(ours)
    state = meta.state()
    del meta["tasks"]["t8"]
    ours = _assert_same_as_yjs(meta, peer, state)
    doc = _replay([*peer, ours])
    assert "t8" not in doc.get("meta", type=Map)["tasks"]
    assert meta._log.answered >= 3 and meta._log.declined == 0


def test_a_peer_ahead_of_us_gets_only_what_it_lacks() -> None:
    meta = _plain_meta()
    remote = _Remote(client_id=99)
    _board(meta, 20, 2)
    remote.doc.apply_update(meta._doc.get_update())
    meta.update_since(meta.state())  # a point: the remote's copy of us
    remote.map["own"] = 1  # the remote's write, which we also integrate
    meta.apply_remote(remote.doc.get_update(meta.state()), REMOTE)
    meta["mine"] = 2
    state = remote.doc.get_state()  # never a state of ours
    ours = _assert_same_as_yjs(meta, [remote.doc.get_update()], state)
    assert b"own" not in ours and b"mine" in ours


def test_a_state_older_than_the_log_is_answered_by_the_document(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(meta_mod, "_LOG_ENTRIES", 4)
    meta = _plain_meta()
    _board(meta, 10, 1)
    meta.update_since(meta.state())
    peer, state = [meta._doc.get_update()], meta.state()
    for i in range(8):
        meta[f"k{i}"] = i
        meta.update_since(meta.state())  # one entry each
    assert len(meta._log.updates) == 4
    declined = meta._log.declined
    _assert_same_as_yjs(meta, peer, state)
    assert meta._log.declined == declined + 1


def test_a_big_burst_restarts_the_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(meta_mod, "_LOG_BYTES", 300)
    meta = _plain_meta()
    meta.update_since(meta.state())
    peer, state = [meta._doc.get_update()], meta.state()
    for i in range(20):
        meta[f"k{i}"] = "x" * 20
    _assert_same_as_yjs(meta, peer, state)  # the log lost it: get_update
    peer, state = [meta._doc.get_update()], meta.state()
    del meta["k3"]
    meta["k4"] = 4
    assert meta._log.updates == [] and len(meta._log.points) == 1
    answered = meta._log.answered
    _assert_same_as_yjs(meta, peer, state)
    assert meta._log.answered == answered + 1


def test_pending_updates_are_answered_by_the_document_until_integrated() -> None:
    meta = _plain_meta()
    remote = _Remote(client_id=5)
    remote.map["a"] = 1
    remote.map["b"] = 2
    del remote.map["a"]
    remote.map["c"] = 3
    meta.update_since(meta.state())
    peer, state = [remote.txns[0]], b""
    meta.apply_remote(remote.txns[3], REMOTE)  # waits for b: pending
    meta.apply_remote(remote.txns[2], REMOTE)  # deletes a, which we lack
    state = _replay(peer).get_state()
    declined = meta._log.declined
    _assert_same_as_yjs(meta, peer, state)
    assert meta._log.declined == declined + 1
    meta.apply_remote(remote.txns[0], REMOTE)
    _assert_same_as_yjs(meta, peer, state)  # b still missing: c waits
    assert meta._log.declined == declined + 2
    meta.apply_remote(remote.txns[1], REMOTE)
    answered = meta._log.answered
    _assert_same_as_yjs(meta, peer, state)
    assert meta._log.answered == answered + 1
    assert meta.to_py() == {"b": 2, "c": 3}


def test_deletions_left_pending_go_with_every_answer() -> None:
    # A remote transaction writes w and deletes z, which we lack: w is
    # integrated, the deletion waits. Our transaction's update holds w only;
    # z arrives later and the deletion applies in that transaction. A peer
    # that got our update with w and z from its writer holds both without the
    # deletion, at a state of ours after it.
    meta = _plain_meta()
    writer, other = _Remote(client_id=21), _Remote(client_id=22)
    other.map["z"] = 1
    writer.doc.apply_update(other.doc.get_update())
    with writer.doc.transaction():
        writer.map["w"] = 2
        del writer.map["z"]
    ours: list[bytes] = []
    meta._doc.observe(lambda e: ours.append(e.update))
    meta.update_since(meta.state())
    meta.apply_remote(writer.txns[-1], REMOTE)
    assert meta.to_py() == {"w": 2}
    meta.update_since(meta.state())
    meta.apply_remote(other.txns[0], REMOTE)
    meta.update_since(meta.state())  # a point after the deletion applied
    assert meta.to_py() == {"w": 2} and meta._log.suspects == []
    peer = [ours[0], other.txns[0]]
    assert "z" in _replay(peer).get("meta", type=Map)
    state = _replay(peer).get_state()
    assert decode_state_vector(state) == decode_state_vector(meta.state())
    answered = meta._log.answered
    ours_now = _assert_same_as_yjs(meta, peer, state)
    assert meta._log.answered == answered + 1
    assert "z" not in _replay([*peer, ours_now]).get("meta", type=Map)


def test_deletions_without_a_clock_go_with_every_answer() -> None:
    # A peer can hold our later writes without an earlier deletion that
    # advanced no clock: every answer carries such deletions.
    meta = _plain_meta()
    remote = _Remote(client_id=11)
    meta["k"] = 1
    meta["j"] = 2
    remote.doc.apply_update(meta._doc.get_update())
    before = meta._doc.get_update()
    del remote.map["k"]  # a plain Yjs deletion: no struct, no clock
    meta.apply_remote(remote.txns[-1], REMOTE)
    assert meta._log.loose is not None
    meta.update_since(meta.state())
    meta["n"] = 3
    # The peer got our write (a transaction update) but never the deletion.
    peer = [before, meta._log.open[-1]]
    state = _replay(peer).get_state()
    assert decode_state_vector(state) == decode_state_vector(meta.state())
    ours = _assert_same_as_yjs(meta, peer, state)
    assert "k" not in _replay([*peer, ours]).get("meta", type=Map)


def test_a_restored_replica_carries_its_delete_set_or_asks_the_document(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    meta = _plain_meta()
    _board(meta, 30, 2)
    del meta["tasks"]["t1"]
    saved, base, updates = meta.saved_state(), meta.base, [meta._doc.get_update()]
    again = _plain_meta("a")
    again.restore_state(saved, base, updates)
    assert again._log.loose is not None and not again._log.off
    peer, state = [meta._doc.get_update()], again.state()
    again["tasks"]["t2"]["status"] = "late"
    ours = _assert_same_as_yjs(again, peer, state)
    assert len(ours) >= len(again._log.loose)
    # A large delete set: every answer is get_update until the next epoch.
    monkeypatch.setattr(meta_mod, "_LOOSE_BYTES", 8)
    third = _plain_meta("a")
    third.restore_state(saved, base, updates)
    assert third._log.off
    third["tasks"]["t3"]["status"] = "late"
    assert third.update_since(state) == third._doc.get_update(state)


def test_a_new_epoch_starts_a_new_log() -> None:
    meta = _plain_meta()
    _board(meta, 10, 2)
    old_doc, old_log = meta._doc, meta._log
    builder: Doc[Any] = Doc()
    builder.get("meta", type=Map)["tasks"] = Map({"t0": "only"})
    meta._start_epoch(meta.epoch + 1, meta.epoch_id + 1, builder.get_update())
    assert meta._log is not old_log and old_log.off
    old_doc.get("meta", type=Map)["late"] = 1  # the ended document changes
    assert meta._log.open == []
    # A peer on the new epoch (it got the base whole) and one that is not.
    base = [meta.base]
    meta["x"] = 1
    _assert_same_as_yjs(meta, base, _replay(base).get_state())
    _assert_same_as_yjs(meta, [old_doc.get_update()], old_doc.get_state())


def test_linked_replicas_converge_with_small_metadata_frames() -> None:
    keep = CompactionPolicy(enabled=False)  # the history (and its delete set) stays
    agent = Memory("agent", compaction=keep, incarnation=1)
    hub = Memory("hub", compaction=keep, incarnation=2)
    up, down = Link(agent, "hub", role="client"), Link(hub, "agent", role="server")

    def cycle() -> int:
        sent = 0
        for _ in range(20):
            request = up.outgoing()
            assert request is not None
            sent += len(request)
            down.incoming(request)
            reply = down.outgoing()
            if reply is not None:
                sent += len(reply)
                up.incoming(reply)
            if up.idle and down.idle:
                return sent
        raise AssertionError("the links did not go idle")

    with agent.meta.transaction():
        agent.meta["tasks"] = {f"t{i}": {"status": "todo"} for i in range(300)}
    cycle()
    for r in range(3):
        for i in range(0, 300, 3):
            agent.meta["tasks"][f"t{i}"]["status"] = f"s{r}"
        cycle()
    sizes = []
    for i in range(20):
        agent.meta["tasks"][f"t{i}"]["status"] = "done"
        if i % 5 == 0:
            del hub.meta["tasks"][f"t{i + 200}"]
        sizes.append(cycle())
        assert agent.meta.to_py() == hub.meta.to_py()
        assert agent.meta._doc.get_update() == hub.meta._doc.get_update() or (
            _document(agent.meta._doc)[:4] == _document(hub.meta._doc)[:4]
        )
    # The delete set (300 overwritten values) is not in every frame.
    assert max(sizes[1:]) < len(agent.meta._doc.get_update(agent.meta.state()))


@settings(max_examples=200, deadline=None)
@given(
    svs=st.lists(
        st.dictionaries(st.integers(0, 2**53 - 1), st.integers(0, 2**32), max_size=6),
        min_size=1,
        max_size=80,
    )
)
def test_state_vectors_round_trip_and_decoded_dicts_are_the_callers(
    svs: list[dict[int, int]],
) -> None:
    """Decoded state vectors (kept for the next decode of the same bytes)
    round-trip, and a caller changing the dict it got changes nothing for
    the next caller, also past the bound of what is kept."""
    for sv in svs + svs:
        data = encode_state_vector(sv)
        got = decode_state_vector(data)
        assert got == sv
        got[12345] = 1  # the caller's own dict
        got.clear()
        assert decode_state_vector(data) == sv
        assert decode_state_vector(bytearray(data)) == sv


def _collapse_reference(pending: list[tuple[int, int, Any]]) -> list[tuple[int, int, Any]]:
    """What collapsing the log of own writes means, written plainly: going
    from the newest, a write is dropped if a later set/del replaced a key on
    its path, or (a set/del) the same key."""
    kept: list[tuple[int, int, Any]] = []
    replaced: list[tuple[Any, ...]] = []
    for client, end, op in reversed(pending):
        kind, path, key, _ = op
        if any(path[: len(p)] == p for p in replaced):
            continue
        if kind in ("set", "del") and isinstance(key, str):
            if (*path, key) in replaced:
                continue
            replaced.append((*path, key))
        kept.append((client, end, op))
    return kept[::-1]


_PARTS = st.sampled_from(["a", "b", "c", 0, 1])


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["set", "del", "insert", "ldel", "at"]),
            st.lists(_PARTS, max_size=3).map(tuple),
            st.one_of(_PARTS, st.none()),
            st.integers(0, 3),
        ),
        max_size=60,
    ),
    clients=st.lists(st.integers(1, 3), min_size=60, max_size=60),
)
def test_collapsing_the_log_of_own_writes_matches_its_definition(
    ops: list[tuple[str, tuple[Any, ...], Any, int]], clients: list[int]
) -> None:
    meta = Memory("a").meta
    pending = [(clients[i], i + 1, op) for i, op in enumerate(ops)]
    meta._pending = list(pending)
    meta._collapse_pending()
    assert meta._pending == _collapse_reference(pending)
    assert meta._pending_clients == {c for c, _, _ in meta._pending}
