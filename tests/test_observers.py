"""Change observers: ``memory.text.observe``, ``memory.meta.observe``,
``memory.kv.observe`` and ``memory.events()``, end to end over real links
(in-process pairs, the simulator under loss, duplication and reordering,
and the WebSocket transport)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridsync import KVCache, Link, Memory
from hybridsync.channels.events import KVEvent, MetaChange, MetaEvent, Origin, TextEvent
from hybridsync.errors import InvalidArgumentError
from hybridsync.net import connect, serve
from hybridsync.sim import Network

# -- helpers -------------------------------------------------------------------------


def pair(a_id: str = "a", b_id: str = "b") -> tuple[Memory, Memory, Link, Link]:
    """``a`` (client) linked to ``b`` (server)."""
    a, b = Memory(a_id), Memory(b_id)
    return a, b, Link(a, b_id, role="client"), Link(b, a_id, role="server")


def settle(client: Link, server: Link, rounds: int = 12) -> None:
    for _ in range(rounds):
        request = client.outgoing()
        assert request is not None
        server.incoming(request)
        reply = server.outgoing()
        assert reply is not None
        client.incoming(reply)


def apply_delta(old: str, delta: list[dict[str, Any]]) -> str:
    out, pos = [], 0
    for op in delta:
        if "retain" in op:
            out.append(old[pos : pos + op["retain"]])
            pos += op["retain"]
        elif "delete" in op:
            pos += op["delete"]
        else:
            out.append(op["insert"])
    out.append(old[pos:])
    return "".join(out)


def apply_meta(value: dict[str, Any], changes: tuple[MetaChange, ...]) -> None:
    for c in changes:
        node = value
        for key in c.path[:-1]:
            node = node.setdefault(key, {})
        if c.kind == "delete":
            node.pop(c.path[-1], None)
        else:
            node[c.path[-1]] = c.new


def rows(rng: np.random.Generator, cache: KVCache, n: int) -> tuple[np.ndarray, np.ndarray]:
    shape = (cache.layers, cache.kv_heads, n, cache.head_dim)
    return (
        rng.standard_normal(shape).astype(np.float32),
        rng.standard_normal(shape).astype(np.float32),
    )


# -- origins and echoes ------------------------------------------------------------------


def test_remote_text_event_names_the_link_and_the_echo_is_silent() -> None:
    a, b, la, lb = pair()
    on_a: list[TextEvent] = []
    on_b: list[TextEvent] = []
    a.text.observe(None, on_a.append)
    b.text.observe("plan", on_b.append)
    a.text["plan"] = "1. gather sources\n"
    # The local write: one event at once, origin local.
    assert [(e.name, e.kind, e.origin) for e in on_a] == [("plan", "create", Origin.LOCAL)]
    settle(la, lb)
    assert len(on_b) == 1
    event = on_b[0]
    assert event.kind == "create" and event.new == "1. gather sources\n"
    assert event.origin.remote and event.origin.peer == "a" and event.origin.link is lb
    assert event.origin == lb.origin
    # a's own write came back as acknowledgements only: no second event on a.
    assert len(on_a) == 1
    # b edits: a hears it from b's link, b does not hear its own write back.
    b.text["plan"] += "2. draft\n"
    settle(la, lb)
    assert [e.origin.link for e in on_a[1:]] == [la]
    assert on_a[-1].new == "1. gather sources\n2. draft\n"
    assert [e.origin.kind for e in on_b] == ["remote", "local"]


def test_text_delta_is_in_code_points_and_takes_old_to_new() -> None:
    a, b, la, lb = pair()
    events: list[TextEvent] = []
    b.text.observe(None, events.append)
    a.text["doc"] = "héllo 😀 world"
    settle(la, lb)
    a.text["doc"] = "héllo 😀 brave new world 🎉"
    settle(la, lb)
    assert [e.kind for e in events] == ["create", "update"]
    first, second = events
    assert first.delta == [{"insert": "héllo 😀 world"}]
    assert apply_delta(first.new or "", second.delta) == second.new
    # Python str indices: an astral character counts one.
    assert "🎉" in "".join(op.get("insert", "") for op in second.delta)
    assert sum(op.get("retain", 0) + op.get("delete", 0) for op in second.delta) <= len(
        first.new or ""
    )
    del a.text["doc"]
    settle(la, lb)
    assert events[-1].kind == "delete" and events[-1].new is None
    assert events[-1].delta == [{"delete": len("héllo 😀 brave new world 🎉")}]


def test_one_event_per_document_per_frame() -> None:
    a, b, la, lb = pair()
    settle(la, lb)
    events: list[TextEvent] = []
    b.text.observe(None, events.append)
    # Several local edits before one exchange: one frame, one event per document.
    a.text["x"] = "one\n"
    a.text["y"] = "two\n"
    a.text["x"] = "one\nthree\n"
    settle(la, lb, rounds=1)
    assert [(e.name, e.new) for e in events] == [("x", "one\nthree\n"), ("y", "two\n")]


def test_meta_events_paths_old_new_and_depth() -> None:
    a, b, la, lb = pair()
    a.meta["tasks"] = {"t1": {"status": "open"}, "t2": {"status": "open"}}
    settle(la, lb)
    root: list[MetaEvent] = []
    shallow: list[MetaEvent] = []
    deep: list[MetaEvent] = []
    b.meta.observe(None, root.append)
    b.meta.observe("tasks", shallow.append, deep=False)
    b.meta.observe(("tasks", "t1"), deep.append)
    with a.transaction():
        a.meta["tasks"]["t1"]["status"] = "claimed"
        a.meta["tasks"]["t1"]["by"] = "a"
    settle(la, lb)
    assert len(root) == 1  # one transaction, one event
    assert root[0].origin.peer == "a" and root[0].origin.link is lb
    assert set(root[0].changes) == {
        MetaChange(("tasks", "t1", "by"), "add", None, "a"),
        MetaChange(("tasks", "t1", "status"), "update", "open", "claimed"),
    }
    assert root[0].keys == {"tasks"}
    assert shallow == []  # nothing changed among tasks' own keys
    assert len(deep) == 1 and deep[0].path == ("tasks", "t1") and deep[0].keys == {"by", "status"}
    del a.meta["tasks"]["t2"]
    settle(la, lb)
    assert shallow[-1].changes == (MetaChange(("tasks", "t2"), "delete", {"status": "open"}, None),)
    assert len(deep) == 1  # t1 unchanged
    # Replacing the observed dict itself shows under its path.
    a.meta["tasks"] = {}
    settle(la, lb)
    assert deep[-1].changes == (
        MetaChange(("tasks", "t1"), "delete", {"status": "claimed", "by": "a"}, None),
    )


def test_kv_mirror_event_says_when_ready() -> None:
    a, b, la, lb = pair()
    cache = KVCache(2, 2, 64, "q4_0", page_tokens=16)
    a.kv["agent"] = cache
    rng = np.random.default_rng(3)
    cache.append(*rows(rng, cache, 40))
    owner_events: list[KVEvent] = []
    mirror_events: list[KVEvent] = []
    a.kv.observe("agent", owner_events.append)
    b.kv.observe(None, mirror_events.append)
    settle(la, lb)
    assert mirror_events, "the mirror never reported"
    last = mirror_events[-1]
    assert last.name == "agent" and last.owner == "a" and last.ready
    assert last.tokens == 40 and last.pages == 3
    assert last.origin.link is lb
    assert b.kv["agent"].ready and b.kv["agent"].digest() == cache.digest()
    cache.append(*rows(rng, cache, 5))
    assert owner_events[-1].origin.local and owner_events[-1].first_token == 40
    assert owner_events[-1].ready and owner_events[-1].tokens == 45
    settle(la, lb)
    assert mirror_events[-1].first_token == 40 and mirror_events[-1].tokens == 45
    del a.kv["agent"]
    settle(la, lb)
    assert mirror_events[-1].kind == "delete" and "agent" not in b.kv


def test_kv_mirror_is_not_ready_while_pages_are_on_the_way() -> None:
    a, b = Memory("a"), Memory("b")
    la = Link(a, "b", role="client", kv_frame_bytes=1)  # one page per frame
    lb = Link(b, "a", role="server")
    cache = KVCache(1, 1, 64, "q8_0", page_tokens=16)
    a.kv["c"] = cache
    cache.append(*rows(np.random.default_rng(5), cache, 64))
    events: list[KVEvent] = []
    b.kv.observe("c", events.append)
    settle(la, lb, rounds=20)
    assert len(events) >= 2
    assert not events[0].ready and events[-1].ready
    assert [e.ready for e in events].count(True) == 1


# -- subscriptions, order, errors ------------------------------------------------------


def test_subscription_closes_and_works_as_a_context_manager() -> None:
    m = Memory("m")
    seen: list[str] = []
    with m.text.observe(None, lambda e: seen.append(e.name)) as sub:
        assert sub.active
        m.text["a"] = "1"
    assert not sub.active
    m.text["b"] = "2"
    sub.close()  # twice is fine
    assert seen == ["a"]
    with pytest.raises(InvalidArgumentError):
        m.text.observe(None, "not callable")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        m.meta.observe(3, print)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        m.kv.observe(3, print)  # type: ignore[arg-type]


def test_order_within_a_change_set_and_writes_from_callbacks() -> None:
    a, b, la, lb = pair()
    settle(la, lb)
    order: list[str] = []
    b.kv.observe(None, lambda e: order.append(f"kv:{e.name}"))
    b.meta.observe(None, lambda e: order.append("meta"))
    b.text.observe(None, lambda e: order.append(f"text:{e.name}"))
    b.text.observe(None, lambda e: order.append(f"second:{e.name}"))

    def react(event: TextEvent) -> None:
        # A write from a callback: its event comes after the current ones.
        if event.origin.remote and event.name == "z":
            b.text["reaction"] = "seen z"

    b.text.observe("z", react)
    cache = KVCache(1, 1, 64, "q8_0", page_tokens=16)
    a.kv["k"] = cache
    cache.append(*rows(np.random.default_rng(1), cache, 3))
    a.text["z"] = "z"
    a.text["y"] = "y"
    a.meta["m"] = 1
    settle(la, lb, rounds=1)
    assert order == [
        "text:y",
        "second:y",
        "text:z",
        "second:z",
        "meta",
        "kv:k",
        "text:reaction",
        "second:reaction",
    ]


def test_a_raising_observer_is_reported_and_sync_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b, la, lb = pair()
    seen: list[str] = []

    def broken(event: TextEvent) -> None:
        raise RuntimeError("observer bug")

    b.text.observe(None, broken)
    b.text.observe(None, lambda e: seen.append(e.name))
    with caplog.at_level(logging.ERROR, logger="hybridsync.events"):
        a.text["plan"] = "x"
        settle(la, lb)
    assert seen == ["plan"]
    assert b.text["plan"] == "x" and a.digest() == b.digest()
    assert len(b.observer_errors) == 1
    err = b.observer_errors[0]
    assert isinstance(err.error, RuntimeError) and err.callback is broken
    assert isinstance(err.event, TextEvent) and err.event.name == "plan"
    assert "observer bug" in caplog.text


def test_events_only_for_real_changes() -> None:
    m = Memory("m")
    events: list[Any] = []
    m.text.observe(None, events.append)
    m.meta.observe(None, events.append)
    m.text["a"] = "same"
    m.text["a"] = "same"  # no change, no event
    m.meta["k"] = 1
    m.meta["k"] = 1
    assert [type(e).__name__ for e in events] == ["TextEvent", "MetaEvent"]


def test_replay_gives_what_a_reopened_replica_restored(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with Memory("a", path=path) as m:
        m.text["plan"] = "1. gather\n"
        m.meta["tasks"] = {"t1": "open"}
        cache = KVCache(1, 1, 64, "q8_0", page_tokens=16)
        m.kv["c"] = cache
        cache.append(*rows(np.random.default_rng(2), cache, 20))
    with Memory("a", path=path) as m:
        got: list[Any] = []
        m.text.observe(None, got.append, replay=True)
        m.meta.observe("tasks", got.append, replay=True)
        m.kv.observe(None, got.append, replay=True)
        assert [type(e).__name__ for e in got] == ["TextEvent", "MetaEvent", "KVEvent"]
        assert all(e.origin.kind == "restore" for e in got)
        text, meta, kv = got
        assert (text.kind, text.new, text.delta) == (
            "create",
            "1. gather\n",
            [{"insert": "1. gather\n"}],
        )
        assert meta.changes == (MetaChange(("tasks", "t1"), "add", None, "open"),)
        assert (kv.name, kv.tokens, kv.pages, kv.ready) == ("c", 20, 2, True)
        m.text["plan"] += "2. draft\n"
        assert got[-1].origin.local and got[-1].kind == "update"

    async def main() -> None:
        with Memory("a", path=path) as m:
            async with m.events("text", replay=True) as stream:
                first = await asyncio.wait_for(stream.__anext__(), 10)
                assert isinstance(first, TextEvent) and first.origin == Origin.RESTORE

    asyncio.run(main())


def test_a_transaction_is_one_change_set() -> None:
    m = Memory("m")
    order: list[str] = []
    m.text.observe(None, lambda e: order.append(f"text:{e.name}"))
    m.meta.observe(None, lambda e: order.append(f"meta:{len(e.changes)}"))
    with m.transaction():
        m.meta["a"] = 1
        m.text["doc"] = "x"
        m.meta["b"] = 2
        assert order == []  # nothing until the block ends
    assert order == ["text:doc", "meta:2"]


def test_sync_node_threads_feed_an_asyncio_stream() -> None:
    """Changes applied on SyncNode loop threads reach an event stream
    iterated on another thread's event loop."""
    from hybridsync.net import SyncNode

    secret = secrets.token_bytes(32)
    fast = {"period": (0.02, 0.5), "backoff": (0.02, 0.5)}
    hub_memory = Memory("hub")

    async def main(hub: SyncNode, node: SyncNode) -> list[TextEvent]:
        got: list[TextEvent] = []
        with hub.lock:
            stream = hub_memory.events("text")
        async with stream:
            node.write(lambda m: m.text.__setitem__("plan", "1. ship\n"))
            node.sync(timeout=30)
            node.write(lambda m: m.text.__setitem__("plan", "1. ship\n2. tell\n"))
            node.sync(timeout=30)
            while len(got) < 2:
                event = await asyncio.wait_for(stream.__anext__(), 30)
                assert isinstance(event, TextEvent)
                got.append(event)
        return got

    with (
        SyncNode(hub_memory, secret=secret, serve=("127.0.0.1", 0)) as hub,
        SyncNode(Memory("node"), secret=secret, url=hub.url, connect_options=fast) as node,
    ):
        node.wait_connected(30)
        got = asyncio.run(asyncio.wait_for(main(hub, node), 120))
    assert [e.kind for e in got] == ["create", "update"]
    assert all(e.origin.peer == "node" for e in got)
    assert apply_delta(got[0].new or "", got[1].delta) == "1. ship\n2. tell\n"


# -- no event lost under faults -------------------------------------------------------


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.sampled_from([0.0, 0.2, 0.4]),
    duplicate=st.sampled_from([0.0, 0.2]),
    reorder=st.sampled_from([0.0, 0.3]),
    writes=st.lists(
        st.tuples(
            st.integers(0, 3),
            st.sampled_from(["plan", "notes"]),
            st.text(alphabet="abc \n", max_size=12),
            st.sampled_from(["x", "y", "z"]),
            st.integers(0, 9),
        ),
        min_size=1,
        max_size=14,
    ),
)
def test_events_replay_to_the_final_state_under_faults(
    seed: int,
    loss: float,
    duplicate: float,
    reorder: float,
    writes: list[tuple[int, str, str, str, int]],
) -> None:
    """On every replica, replaying the text deltas and metadata changes its
    observers got, from nothing, gives exactly what it holds at the end: no
    change was applied without its event. Remote events name a neighbour.
    The last KV event of every mirror shows the owner's whole cache, ready."""
    net = Network.star(4, seed=seed, loss=loss, duplicate=duplicate, reorder=reorder)
    replayed: dict[str, tuple[dict[str, str], dict[str, Any]]] = {}
    neighbours: dict[str, set[str]] = {name: set() for name in net.names}
    for x, y in net.edges:
        neighbours[x].add(y)
        neighbours[y].add(x)

    for name in net.names:
        texts: dict[str, str] = {}
        meta: dict[str, Any] = {}
        replayed[name] = (texts, meta)
        memory = net.memory(name)

        def on_text(e: TextEvent, texts: dict[str, str] = texts, me: str = name) -> None:
            assert apply_delta(texts.get(e.name, ""), e.delta) == (e.new or "")
            assert (e.old or "") == texts.get(e.name, "")
            if e.origin.remote:
                assert e.origin.peer in neighbours[me]
            if e.new is None:
                texts.pop(e.name, None)
            else:
                texts[e.name] = e.new

        def on_meta(e: MetaEvent, meta: dict[str, Any] = meta, me: str = name) -> None:
            if e.origin.remote:
                assert e.origin.peer in neighbours[me]
            apply_meta(meta, e.changes)

        memory.text.observe(None, on_text)
        memory.meta.observe(None, on_meta)

    last_kv: dict[str, KVEvent] = {}
    for name in net.names:
        net.memory(name).kv.observe(
            "cache",
            lambda e, me=name: last_kv.__setitem__(me, e),
        )
    owner = net.memory(net.names[1])
    cache = KVCache(1, 1, 64, "q8_0", page_tokens=8)
    owner.kv["cache"] = cache
    rng = np.random.default_rng(seed)
    for who, doc, text, key, value in writes:
        name = net.names[who]
        memory = net.memory(name)
        memory.text[doc] = memory.text.get(doc, "") + text
        memory.meta[key] = value
        cache.append(*rows(rng, cache, value + 1))
        net.run(3)
    net.run_until_quiescent(max_ticks=5000)
    assert net.converged()
    for name in net.names:
        memory = net.memory(name)
        texts, meta = replayed[name]
        assert texts == dict(memory.text)
        assert meta == memory.meta.to_py()
        assert memory.observer_errors == []
        # The last KV event says what the mirror holds: all of it, ready.
        event = last_kv[name]
        assert (event.tokens, event.ready) == (cache.tokens, True)
        assert memory.kv["cache"].digest() == cache.digest()


# -- asyncio and the WebSocket transport -----------------------------------------------


def test_events_async_iterator_over_the_websocket_transport() -> None:
    secret = secrets.token_bytes(32)

    async def main() -> None:
        hub_memory, node = Memory("hub"), Memory("node")
        async with serve(hub_memory, "127.0.0.1", 0, secret=secret) as hub:
            async with (
                hub_memory.events("text", "meta") as events,
                connect(
                    node, hub.url, secret=secret, period=(0.02, 0.5), backoff=(0.02, 0.5)
                ) as session,
            ):
                await session.wait_connected(300)
                node.text["plan"] = "1. ship\n"
                node.meta["owner"] = "node"
                await session.sync(timeout=300)
                got: list[Any] = []
                deadline = time.monotonic() + 300
                while {type(e) for e in got} != {TextEvent, MetaEvent}:
                    assert time.monotonic() < deadline, got
                    got.append(await asyncio.wait_for(events.__anext__(), 300))
                text = next(e for e in got if isinstance(e, TextEvent))
                assert text.new == "1. ship\n" and text.origin.peer == "node"
                assert text.origin.link in hub_memory.links
                meta = next(e for e in got if isinstance(e, MetaEvent))
                assert meta.changes == (MetaChange(("owner",), "add", None, "node"),)
                # The hub's own write: local on the hub, remote on the node.
                node_events: list[TextEvent] = []
                node.text.observe(None, node_events.append)
                hub_memory.text["reply"] = "ok"
                local = await asyncio.wait_for(events.__anext__(), 300)
                assert isinstance(local, TextEvent) and local.origin.local
                await session.sync(timeout=300)
                deadline = time.monotonic() + 300
                while not node_events:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
                assert node_events[0].origin.peer == "hub"
            # Closed: the iteration ends.
            assert [e async for e in events] == []

    asyncio.run(asyncio.wait_for(main(), 120))


def test_events_refuses_unknown_channels() -> None:
    async def main() -> None:
        with pytest.raises(InvalidArgumentError):
            Memory("m").events("nope")

    asyncio.run(main())


# -- metadata events compare only what changed ------------------------------------------

_KEYS = st.sampled_from(["a", "b", "c"])
_LEAF = st.one_of(st.integers(-3, 3), st.sampled_from(["x", "y"]), st.none())
_VALUE = st.recursive(
    _LEAF,
    lambda inner: st.one_of(st.dictionaries(_KEYS, inner, max_size=3), st.lists(inner, max_size=3)),
    max_leaves=6,
)
_OP = st.tuples(
    st.integers(0, 1),  # replica
    st.sampled_from(["set", "delete", "append", "sync"]),
    st.lists(_KEYS, min_size=1, max_size=3),  # path
    _VALUE,
)


def _meta_reference(old: Any, new: Any) -> list[MetaChange]:
    """The changes a full comparison of two snapshots finds (sorted by path)."""
    out: list[MetaChange] = []

    def walk(path: tuple[str, ...], o: Any, n: Any) -> None:
        if isinstance(o, dict) and isinstance(n, dict):
            for k in sorted(o.keys() | n.keys()):
                if k not in n:
                    out.append(MetaChange((*path, k), "delete", o[k], None))
                elif k not in o:
                    out.append(MetaChange((*path, k), "add", None, n[k]))
                else:
                    walk((*path, k), o[k], n[k])
        elif o != n or type(o) is not type(n):
            out.append(MetaChange(path, "update", o, n))

    walk((), old, new)
    return sorted(out, key=lambda c: c.path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_OP, min_size=1, max_size=25))
def test_meta_events_equal_a_full_comparison(ops: list[tuple[int, str, list[str], Any]]) -> None:
    """Observers hear, for every change set, exactly the changes a comparison
    of the whole metadata before and after finds, although only the paths
    the change touched are compared; nested dicts, lists inside dicts and
    dicts inside lists, local and remote writes alike. Events hold values
    that later changes never alter."""
    a, b, client, server = pair()
    memories = (a, b)
    seen = [a.meta.to_py(), b.meta.to_py()]
    heard: list[list[tuple[MetaEvent, Any]]] = [[], []]

    def watcher(i: int) -> Any:
        def on_meta(e: MetaEvent) -> None:
            now = memories[i].meta.to_py()
            assert list(e.changes) == _meta_reference(seen[i], now)
            seen[i] = now
            heard[i].append((e, repr(e.changes)))

        return on_meta

    subs = [a.meta.observe(None, watcher(0)), b.meta.observe(None, watcher(1))]
    for who, op, path, value in ops:
        memory = memories[who]
        if op == "sync":
            settle(client, server, rounds=3)
            continue
        node: Any = memory.meta
        for key in path[:-1]:
            child = node.get(key) if hasattr(node, "get") else None
            if child is None or not hasattr(child, "keys"):
                node[key] = {}
                child = node[key]
            node = child
        key = path[-1]
        if op == "set":
            node[key] = value
        elif op == "delete" and key in node:
            del node[key]
        elif op == "append":
            target = node.get(key)
            if target is None or not hasattr(target, "append"):
                node[key] = [value]
            else:
                target.append(value)
    settle(client, server)
    for i, memory in enumerate(memories):
        assert seen[i] == memory.meta.to_py()
        assert memory.observer_errors == []
        for event, shown in heard[i]:
            assert repr(event.changes) == shown  # nothing handed out changed since
    assert a.meta.to_py() == b.meta.to_py()
    for sub in subs:
        sub.close()


def test_meta_events_do_not_read_the_whole_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    """With an observer, a write compares only the paths it touched: the
    whole metadata is not read again (local and remote writes alike)."""
    a, b, client, server = pair()
    for m in (a, b):
        with m.meta.transaction():
            m.meta["board"] = {f"task-{i}": {"owner": None} for i in range(200)}
    settle(client, server)
    heard: list[MetaEvent] = []
    a.meta.observe("board", heard.append)
    b.meta.observe(None, heard.append)

    def whole(*_: Any) -> Any:
        raise AssertionError("the whole metadata was read")

    monkeypatch.setattr(a.meta, "to_py", whole)
    monkeypatch.setattr(b.meta, "to_py", whole)
    a.meta["board"]["task-7"]["owner"] = "agent-a"
    settle(client, server)
    assert [list(e.changes) for e in heard] == [
        [MetaChange(("board", "task-7", "owner"), "update", None, "agent-a")]
    ] * 2
    assert heard[0].origin.local and heard[1].origin.remote
