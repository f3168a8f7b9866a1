"""The LangGraph store and checkpointer on hybridsync replicas.

- HybridSaver passes every capability of ``langgraph-checkpoint-conformance``
  (the base ones and the extended ones it implements).
- HybridStore: get, put (with TTL), delete, search (namespace prefix, filter,
  limit/offset, semantic query), list_namespaces, sync and async.
- Two replicas linked in process: a graph thread checkpointed on A (stopped at
  an interrupt) resumes on B once synced; the store's items merge.
"""

from __future__ import annotations

import asyncio
import operator
import runpy
import sys
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES
from langgraph.graph import END, START, StateGraph
from langgraph.store.base import BaseStore
from langgraph.types import Command, interrupt

from hybridsync import Link, Memory
from hybridsync.integrations.langgraph import HybridSaver, HybridStore


def test_checkpointer_conformance() -> None:
    @checkpointer_test(name="HybridSaver")
    async def factory() -> Any:
        yield HybridSaver(Memory("conformance"))

    report = asyncio.run(validate(factory))
    assert set(report.results) == {c.value for c in ALL_CAPABILITIES}
    for capability, result in report.results.items():
        assert result.detected, capability
        assert result.passed, (capability, result.failures)
        assert result.tests_passed > 0


def test_conformance_on_a_durable_replica(tmp_path: Any) -> None:
    counter = iter(range(1000))

    @checkpointer_test(name="HybridSaver-durable")
    async def factory() -> Any:
        with Memory("durable", path=tmp_path / f"{next(counter)}.db") as memory:
            yield HybridSaver(memory)

    report = asyncio.run(validate(factory, capabilities={"put", "put_writes", "get_tuple"}))
    assert all(r.passed for r in report.results.values() if r.detected)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def embed(texts: list[str]) -> list[list[float]]:
    """A deterministic toy embedding: counts of a few letters."""
    return [[float(t.count(c)) + 0.01 for c in "aeiou"] for t in texts]


def test_store_operations() -> None:
    clock = Clock()
    store = HybridStore(Memory("s"), clock=clock, ttl={"refresh_on_read": True})
    store.put(("users", "ada"), "prefs", {"theme": "dark", "size": 3})
    store.put(("users", "bob"), "prefs", {"theme": "light", "size": 5})
    store.put(("users", "bob"), "notes", {"text": "likes go"})
    store.put(("docs",), "d1", {"text": "hello"})
    item = store.get(("users", "ada"), "prefs")
    assert item is not None and item.value == {"theme": "dark", "size": 3}
    created = item.created_at
    clock.now += 10
    store.put(("users", "ada"), "prefs", {"theme": "blue", "size": 4})
    item = store.get(("users", "ada"), "prefs")
    assert item is not None and item.created_at == created and item.updated_at > created
    assert store.get(("users", "ada"), "missing") is None

    found = store.search(("users",))
    assert [(i.namespace, i.key) for i in found] == [
        (("users", "ada"), "prefs"),
        (("users", "bob"), "notes"),
        (("users", "bob"), "prefs"),
    ]
    assert [i.key for i in store.search(("users",), filter={"theme": "light"})] == ["prefs"]
    assert [i.namespace for i in store.search(("users",), filter={"size": {"$gte": 4}})] == [
        ("users", "ada"),
        ("users", "bob"),
    ]
    assert len(store.search(("users",), limit=1, offset=1)) == 1
    assert store.search(("nobody",)) == []
    assert store.list_namespaces() == [("docs",), ("users", "ada"), ("users", "bob")]
    assert store.list_namespaces(prefix=("users",), max_depth=1) == [("users",)]
    assert store.list_namespaces(suffix=("bob",)) == [("users", "bob")]
    assert store.list_namespaces(limit=1, offset=1) == [("users", "ada")]

    store.delete(("users", "bob"), "notes")
    assert store.get(("users", "bob"), "notes") is None

    # TTL (minutes): hidden once expired, refreshed by reads, swept.
    store.put(("tmp",), "a", {"x": 1}, ttl=1)
    store.put(("tmp",), "b", {"x": 2}, ttl=1)
    clock.now += 50
    assert store.get(("tmp",), "a") is not None  # refreshes a
    clock.now += 50
    assert store.get(("tmp",), "b", refresh_ttl=False) is None
    assert [i.key for i in store.search(("tmp",))] == ["a"]
    assert store.sweep_ttl() == 1
    clock.now += 61
    assert store.search(("tmp",)) == []

    with pytest.raises(TypeError, match="JSON-serializable"):
        store.put(("bad",), "k", {"x": object()})


def test_store_semantic_search_and_async() -> None:
    store = HybridStore(Memory("s"), index={"embed": embed, "dims": 5, "fields": ["text"]})

    async def run() -> list[Any]:
        await store.aput(("docs",), "1", {"text": "aaaa"})
        await store.aput(("docs",), "2", {"text": "uuuu"})
        await store.aput(("docs",), "3", {"other": "no text"}, index=False)
        return await store.asearch(("docs",), query="uu")

    found = asyncio.run(run())
    assert [i.key for i in found][:2] == ["2", "1"]
    assert found[0].score is not None and found[0].score > (found[1].score or 0)
    assert found[2].key == "3" and found[2].score is None


class Replicas:
    def __init__(self) -> None:
        self.hub, self.a, self.b = Memory("hub"), Memory("a"), Memory("b")
        self.links = [
            (Link(self.a, "hub", role="client"), Link(self.hub, "a", role="server")),
            (Link(self.b, "hub", role="client"), Link(self.hub, "b", role="server")),
        ]

    def exchange(self, rounds: int = 4) -> None:
        for _ in range(rounds):
            for up, down in self.links:
                down.incoming(up.outgoing())
                reply = down.outgoing()
                if reply is not None:
                    up.incoming(reply)
        assert self.a.digest() == self.b.digest()


class State(TypedDict):
    steps: Annotated[list[str], operator.add]


def build(store: BaseStore, saver: HybridSaver) -> Any:
    def plan(state: State) -> dict[str, Any]:
        return {"steps": ["planned"]}

    def review(state: State) -> dict[str, Any]:
        verdict = interrupt("approve?")
        return {"steps": [f"reviewed: {verdict}"]}

    def act(state: State, *, store: BaseStore) -> dict[str, Any]:
        store.put(("runs",), "last", {"steps": len(state["steps"])})
        return {"steps": ["acted"]}

    g = StateGraph(State)
    g.add_node("plan", plan)
    g.add_node("review", review)
    g.add_node("act", act)
    g.add_edge(START, "plan")
    g.add_edge("plan", "review")
    g.add_edge("review", "act")
    g.add_edge("act", END)
    return g.compile(checkpointer=saver, store=store)


def test_thread_checkpointed_on_a_resumes_on_b() -> None:
    r = Replicas()
    graph_a = build(HybridStore(r.a), HybridSaver(r.a))
    graph_b = build(HybridStore(r.b), HybridSaver(r.b))
    config: Any = {"configurable": {"thread_id": "t1"}}
    out = graph_a.invoke({"steps": []}, config)
    assert out["steps"] == ["planned"] and "__interrupt__" in out
    assert graph_b.get_state(config).values == {}  # not synced yet
    r.exchange()
    state = graph_b.get_state(config)
    assert state.values == {"steps": ["planned"]} and state.next == ("review",)
    out = graph_b.invoke(Command(resume="yes"), config)
    assert out["steps"] == ["planned", "reviewed: yes", "acted"]
    r.exchange()
    assert graph_a.get_state(config).values["steps"][-1] == "acted"
    assert [
        c.config["configurable"]["checkpoint_id"] for c in graph_a.get_state_history(config)
    ] == [c.config["configurable"]["checkpoint_id"] for c in graph_b.get_state_history(config)]
    item = HybridStore(r.a).get(("runs",), "last")
    assert item is not None and item.value == {"steps": 2}


def test_store_writes_on_two_replicas_merge() -> None:
    r = Replicas()
    sa, sb = HybridStore(r.a), HybridStore(r.b)
    sa.put(("shared",), "x", {"v": 0})
    r.exchange()
    # Concurrently: distinct keys, one key on both sides, a delete.
    sa.put(("shared",), "from-a", {"v": 1})
    sb.put(("shared",), "from-b", {"v": 2})
    sa.put(("shared",), "both", {"v": "a"})
    sb.put(("shared",), "both", {"v": "b"})
    sb.delete(("shared",), "x")
    r.exchange()
    items_a = {i.key: i.value for i in sa.search(("shared",))}
    items_b = {i.key: i.value for i in sb.search(("shared",))}
    assert items_a == items_b
    assert set(items_a) == {"from-a", "from-b", "both"}
    assert items_a["both"] in ({"v": "a"}, {"v": "b"})


def test_example_two_processes_one_graph(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "langgraph" / "shared_graph.py"
    monkeypatch.setattr(sys, "argv", [str(example)])
    runpy.run_path(str(example), run_name="__main__")
    assert capfd.readouterr().out.splitlines()[1:] == [
        "planner: stopped at ('review',): approve the plan?",
        "reviewer: found the thread at ('review',)",
        "reviewer: planner: plan written",
        "reviewer: review: approved",
        "reviewer: act: following the note 'suspect the ARM build flags'",
    ]
