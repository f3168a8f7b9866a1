"""One LangGraph thread, two processes, one shared store, synced by hybridsync.

    python examples/langgraph/shared_graph.py

The parent process runs a hub (a ``SyncNode`` that serves). It then starts
this script twice more as agents, one after the other:

1. ``--agent planner``: runs the graph on thread "ticket-42" until the review
   step interrupts it, and files a note in the shared store;
2. ``--agent reviewer``: another replica, another process (on another machine
   it would be the same): it syncs, finds the thread where the planner left
   it, approves it and runs it to the end, reading the planner's note.

Each agent keeps its replica in its own file (``--data``) and links it to the
hub; the checkpointer and the store are hybridsync's.
"""

from __future__ import annotations

import argparse
import operator
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.store.base import BaseStore
from langgraph.types import Command, interrupt

from hybridsync import Memory, SyncNode
from hybridsync.integrations.langgraph import HybridSaver, HybridStore

THREAD: Any = {"configurable": {"thread_id": "ticket-42"}}


class State(TypedDict):
    log: Annotated[list[str], operator.add]


def plan(state: State, *, store: BaseStore) -> dict[str, Any]:
    store.put(("notes", "ticket-42"), "planner", {"text": "suspect the ARM build flags"})
    return {"log": ["planner: plan written"]}


def review(state: State) -> dict[str, Any]:
    verdict = interrupt("approve the plan?")
    return {"log": [f"review: {verdict}"]}


def act(state: State, *, store: BaseStore) -> dict[str, Any]:
    note = store.get(("notes", "ticket-42"), "planner")
    return {"log": [f"act: following the note {note.value['text']!r}" if note else "act: no note"]}


def build(node: SyncNode) -> Any:
    graph = StateGraph(State)
    graph.add_node("plan", plan)
    graph.add_node("review", review)
    graph.add_node("act", act)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "review")
    graph.add_edge("review", "act")
    graph.add_edge("act", END)
    return graph.compile(checkpointer=HybridSaver(node), store=HybridStore(node))


def run_agent(role: str, url: str, data: Path) -> None:
    secret = os.environ["HYBRIDSYNC_SECRET"].encode()
    with Memory(role, path=data) as memory, SyncNode(memory, url=url, secret=secret) as node:
        graph = build(node)
        if role == "planner":
            out = graph.invoke({"log": []}, THREAD)
            question = out["__interrupt__"][0].value
            print(f"planner: stopped at {graph.get_state(THREAD).next}: {question}")
            node.sync()  # the hub holds the checkpoint and the note
        else:
            for _ in range(10):  # each round waits for the hub's acknowledgement
                node.sync()
                if graph.get_state(THREAD).next == ("review",):
                    break
            print(f"reviewer: found the thread at {graph.get_state(THREAD).next}")
            out = graph.invoke(Command(resume="approved"), THREAD)
            node.sync()
            for line in out["log"]:
                print(f"reviewer: {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", choices=["planner", "reviewer"])
    parser.add_argument("--url")
    parser.add_argument("--data", type=Path)
    args = parser.parse_args()
    if args.agent:
        run_agent(args.agent, args.url, args.data)
        return
    secret = secrets.token_urlsafe(32)
    with (
        tempfile.TemporaryDirectory() as tmp,
        SyncNode(Memory("hub"), serve=("127.0.0.1", 0), secret=secret.encode()) as hub,
    ):
        print(f"hub listening at {hub.url}")
        env = {**os.environ, "HYBRIDSYNC_SECRET": secret}
        for role in ("planner", "reviewer"):
            subprocess.run(
                [sys.executable, __file__, "--agent", role, "--url", hub.url,
                 "--data", str(Path(tmp) / f"{role}.db")],
                env=env,
                check=True,
            )  # fmt: skip


if __name__ == "__main__":
    main()
