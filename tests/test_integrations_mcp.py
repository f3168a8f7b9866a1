"""The MCP memory server (hybridsync.integrations.mcp) and its knowledge graph.

- The graph's concurrent semantics on two replicas linked in process (no
  timing involved): concurrent observations and creations merge, relations
  are a set, a delete removes what its replica had seen, a deleted entity takes
  concurrent observations with it.
- The server over stdio with the real MCP client (``mcp.ClientSession``): the
  reference server's tool names, schemas and result shapes, tool errors for
  bad input without the server dying, documents, ``--import`` / ``--export``.
- Two server processes linked through a hub behind a relay that loses 20% of
  the messages, four clients making random tool calls concurrently: both
  servers end with the same graph, equal to the model of every acknowledged
  write (each present once, deletions holding); then one server is killed
  with SIGKILL right after acknowledged writes and restarted on its ``--data``
  file: nothing acknowledged is lost.

Waiting is driven by events (sync acknowledgements from the hub); timeouts
are hang guards only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import runpy
import secrets
import signal
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import mcp.types as mcp_types
import pytest
from mcp import Client, ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError

from hybridsync import Link, Memory, serve
from hybridsync.integrations.graph import GraphError, KnowledgeGraph
from hybridsync.integrations.mcp import build_parser, main
from hybridsync.net import FaultProxy

HANG_GUARD = 600.0
SECRET = secrets.token_urlsafe(32)

# -- in process: the graph's semantics --------------------------------------------------


class Pair:
    """Two replicas under a hub, linked in process; exchange() is one full round."""

    def __init__(self) -> None:
        self.hub = Memory("hub")
        self.a, self.b = Memory("a"), Memory("b")
        self.links = [
            (Link(self.a, "hub", role="client"), Link(self.hub, "a", role="server")),
            (Link(self.b, "hub", role="client"), Link(self.hub, "b", role="server")),
        ]
        self.ga, self.gb = KnowledgeGraph(self.a), KnowledgeGraph(self.b)

    def exchange(self, rounds: int = 4) -> None:
        for _ in range(rounds):
            for up, down in self.links:
                down.incoming(up.outgoing())
                reply = down.outgoing()
                if reply is not None:
                    up.incoming(reply)
        assert self.ga.read_graph() == self.gb.read_graph()
        # The graph objects follow the replicas' changes: a fresh read agrees.
        for memory, graph in ((self.a, self.ga), (self.b, self.gb)):
            fresh = KnowledgeGraph(memory)
            assert fresh.read_graph() == graph.read_graph()
            fresh.close()


def entity(name: str, etype: str = "thing", observations: list[str] | None = None) -> Any:
    return {"name": name, "entityType": etype, "observations": observations or []}


def rel(source: str, rtype: str, target: str) -> Any:
    return {"from": source, "to": target, "relationType": rtype}


def test_concurrent_observations_and_creations_merge() -> None:
    p = Pair()
    # The same entity created on both sides before either heard of the other.
    assert p.ga.create_entities([entity("Ada", "person", ["likes tea", "writes code"])])
    assert p.gb.create_entities([entity("Ada", "person", ["likes tea", "plays go"])])
    p.exchange()
    (ada,) = p.ga.read_graph()["entities"]
    assert sorted(ada["observations"]) == ["likes tea", "plays go", "writes code"]
    # Concurrent observations on one entity: all survive, a shared one once.
    p.ga.add_observations([{"entityName": "Ada", "contents": ["from a", "both"]}])
    p.gb.add_observations([{"entityName": "Ada", "contents": ["from b", "both"]}])
    p.exchange()
    obs = p.gb.read_graph()["entities"][0]["observations"]
    assert sorted(obs) == sorted(
        ["likes tea", "plays go", "writes code", "from a", "from b", "both"]
    )
    # Relations are a set: one triple created on both sides is there once.
    p.ga.create_entities([entity("Bob")])
    p.exchange()
    assert p.ga.create_relations([rel("Ada", "knows", "Bob")])
    assert p.gb.create_relations([rel("Ada", "knows", "Bob"), rel("Bob", "knows", "Ada")])
    p.exchange()
    assert sorted(json.dumps(r, sort_keys=True) for r in p.ga.read_graph()["relations"]) == sorted(
        json.dumps(r, sort_keys=True)
        for r in [rel("Ada", "knows", "Bob"), rel("Bob", "knows", "Ada")]
    )


def test_deletes_remove_what_their_replica_saw() -> None:
    p = Pair()
    p.ga.create_entities([entity("X", observations=["old"]), entity("Y")])
    p.ga.create_relations([rel("X", "r", "Y")])
    p.exchange()
    # delete_observations vs a concurrent add of another observation: both hold.
    p.ga.delete_observations([{"entityName": "X", "observations": ["old"]}])
    p.gb.add_observations([{"entityName": "X", "contents": ["new"]}])
    p.exchange()
    assert p.ga.open_nodes(["X"])["entities"][0]["observations"] == ["new"]
    # A deleted entity takes a concurrently added observation with it...
    p.ga.delete_entities(["X"])
    p.gb.add_observations([{"entityName": "X", "contents": ["late"]}])
    p.exchange()
    assert [e["name"] for e in p.gb.read_graph()["entities"]] == ["Y"]
    assert p.gb.read_graph()["relations"] == []
    # ... and creating it again starts without it.
    p.gb.create_entities([entity("X", observations=["fresh"])])
    p.exchange()
    assert p.ga.open_nodes(["X"])["entities"][0]["observations"] == ["fresh"]
    # A relation created concurrently with its endpoint's deletion survives.
    p.ga.delete_entities(["X"])
    p.gb.create_relations([rel("Y", "r", "X")])
    p.exchange()
    assert p.ga.read_graph()["relations"] == [rel("Y", "r", "X")]
    # Add wins over a concurrent delete of what the adder had not seen.
    p.ga.create_entities([entity("Z", observations=["z"])])
    p.exchange()
    p.ga.delete_relations([rel("Y", "r", "X")])
    p.gb.delete_relations([rel("Y", "r", "X")])
    p.gb.create_relations([rel("Y", "r", "Z")])
    p.exchange()
    assert p.ga.read_graph()["relations"] == [rel("Y", "r", "Z")]


def test_graph_arguments_are_checked_before_anything_is_written() -> None:
    m = Memory("solo")
    g = KnowledgeGraph(m)
    g.create_entities([entity("A")])
    before = m.digest()
    bad: list[tuple[str, Any]] = [
        ("create_entities", [entity("B"), {"name": "C", "entityType": "t"}]),
        ("create_entities", [{"name": 1, "entityType": "t", "observations": []}]),
        ("create_relations", [rel("A", "r", "nobody")]),
        ("add_observations", [{"entityName": "nobody", "contents": ["x"]}]),
        ("add_observations", [{"entityName": "A", "contents": "not a list"}]),
        ("create_entities", [entity("x" * 5000)]),
        ("create_entities", [entity("\ud800")]),
    ]
    for method, arg in bad:
        with pytest.raises(GraphError):
            getattr(g, method)(arg)
    assert m.digest() == before


def test_jsonl_import_export_round_trip() -> None:
    reference = (
        '{"type":"entity","name":"Ada","entityType":"person","observations":["a","b"]}\n'
        '{"type":"entity","name":"Bob","entityType":"person","observations":[]}\n'
        "not json\n"
        '{"type":"relation","from":"Ada","to":"Bob","relationType":"knows"}\n'
        '{"type":"relation","from":"Ada","to":"Gone","relationType":"knew"}\n'
    )
    g = KnowledgeGraph(Memory("solo"))
    report = g.import_jsonl(reference)
    assert (report.entities_created, report.observations_added, report.relations_created) == (
        2,
        2,
        2,
    )
    assert [line for line, _ in report.skipped] == [3]
    again = g.import_jsonl(reference)
    assert (again.entities_created, again.observations_added, again.relations_created) == (0, 0, 0)
    lines = [json.loads(x) for x in g.export_jsonl().splitlines()]
    expected = [json.loads(x) for x in reference.splitlines() if x.startswith("{")]
    assert lines == expected


# -- over stdio: one server ---------------------------------------------------------------


def server_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["HYBRIDSYNC_SECRET"] = SECRET
    env.update(extra)
    return env


def server_params(*args: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "hybridsync.integrations.mcp", *args],
        env=server_env(),
    )


@contextlib.asynccontextmanager
async def mcp_client(*args: str) -> AsyncIterator[ClientSession]:
    with open(os.devnull, "w") as errlog:
        async with (
            stdio_client(server_params(*args), errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await asyncio.wait_for(session.initialize(), HANG_GUARD)
            yield session


async def call(session: ClientSession, tool: str, **args: Any) -> Any:
    result = await asyncio.wait_for(session.call_tool(tool, args), HANG_GUARD)
    assert not result.is_error, (tool, args, result.content)
    return result.structured_content


async def call_error(session: ClientSession, tool: str, args: Any) -> str:
    result = await asyncio.wait_for(session.call_tool(tool, args), HANG_GUARD)
    assert result.is_error, (tool, args, result)
    text = result.content[0].text  # type: ignore[union-attr]
    assert isinstance(text, str)
    return text


REFERENCE_TOOLS = {
    "create_entities": ["entities"],
    "create_relations": ["relations"],
    "add_observations": ["observations"],
    "delete_entities": ["entityNames"],
    "delete_observations": ["deletions"],
    "delete_relations": ["relations"],
    "read_graph": [],
    "search_nodes": ["query"],
    "open_nodes": ["names"],
}


def test_one_server_reference_tools_errors_and_documents(tmp_path: Path) -> None:
    async def run() -> None:
        async with mcp_client() as s:
            tools = {t.name: t for t in (await s.list_tools()).tools}
            for name, required in REFERENCE_TOOLS.items():
                assert tools[name].input_schema["required"] == required
                assert tools[name].output_schema is not None
            entity_schema = tools["create_entities"].input_schema["properties"]["entities"]
            assert entity_schema["items"]["required"] == ["name", "entityType", "observations"]

            created = await call(
                s,
                "create_entities",
                entities=[entity("Ada", "person", ["x", "x", "y"]), entity("Ada", "dup")],
            )
            assert created == {"entities": [entity("Ada", "person", ["x", "y"])]}
            result = await s.call_tool(
                "create_entities", {"entities": [entity("Bob", "person", ["b"])]}
            )
            # The reference server's text content: the bare array, indented.
            text = result.content[0].text  # type: ignore[union-attr]
            assert json.loads(text) == [entity("Bob", "person", ["b"])]
            assert text.startswith("[\n  {")
            assert await call(s, "create_relations", relations=[rel("Ada", "knows", "Bob")]) == {
                "relations": [rel("Ada", "knows", "Bob")]
            }
            assert await call(
                s, "add_observations", observations=[{"entityName": "Ada", "contents": ["y", "z"]}]
            ) == {"results": [{"entityName": "Ada", "addedObservations": ["z"]}]}
            found = await call(s, "search_nodes", query="PERSON")
            assert [e["name"] for e in found["entities"]] == ["Ada", "Bob"]
            opened = await call(s, "open_nodes", names=["Bob"])
            assert opened["relations"] == [rel("Ada", "knows", "Bob")]
            assert await call(
                s, "delete_observations", deletions=[{"entityName": "Ada", "observations": ["x"]}]
            ) == {"success": True, "message": "Observations deleted successfully"}
            assert (await call(s, "delete_entities", entityNames=["Bob", "Nobody"]))[
                "message"
            ] == "Deleted 1 of 2 entities. Not found: Nobody"
            assert await call(s, "read_graph") == {
                "entities": [entity("Ada", "person", ["y", "z"])],
                "relations": [],
            }

            # Bad input: tool errors with a message, and the server lives on.
            errors = [
                ("create_entities", {}, "entities is required"),
                ("create_entities", {"entities": "x"}, "entities must be an array"),
                ("create_entities", {"entities": [{"name": "n"}]}, "entityType is required"),
                ("create_entities", {"entities": [entity("n" * 2000)]}, "limit is 1024"),
                ("create_relations", {"relations": [rel("Ada", "r", "Ghost")]}, "Ghost not found"),
                ("add_observations", {"observations": [{"entityName": "G", "contents": []}]}, ""),
                ("search_nodes", {"query": "q" * 5000}, "limit is 2048"),
                ("open_nodes", {"names": [None]}, "names[0] must be a string"),
                ("read_document", {"name": "missing"}, "Document missing not found"),
                ("write_document", {"name": "d", "text": 5}, "text must be a string"),
                ("edit_document", {"name": "nope", "old_string": "a", "new_string": "b"}, ""),
                ("sync_memory", {"timeout": -1}, "timeout"),
                ("no_such_tool", {}, "Unknown tool"),
            ]
            for tool, args, needle in errors:
                assert needle in await call_error(s, tool, args)

            # Documents.
            assert await call(s, "write_document", name="plan", text="1. a\n2. b\n2. b\n") == {
                "name": "plan",
                "length": 15,
                "created": True,
            }
            assert "occurs 2 times" in await call_error(
                s, "edit_document", {"name": "plan", "old_string": "2. b", "new_string": "2. c"}
            )
            edited = await call(
                s,
                "edit_document",
                name="plan",
                old_string="b\n",
                new_string="c\n",
                replace_all=True,
            )
            assert edited["replacements"] == 2
            assert (await call(s, "read_document", name="plan"))["text"] == "1. a\n2. c\n2. c\n"
            assert await call(s, "list_documents") == {
                "documents": [{"name": "plan", "length": 15}]
            }
            assert await call(s, "delete_document", name="plan") == {
                "name": "plan",
                "deleted": True,
            }
            assert await call(s, "sync_memory") == {
                "synced": True,
                "connected": False,
                "message": "no hub: nothing to sync",
            }

    asyncio.run(run())


def test_server_works_while_its_hub_is_unreachable(tmp_path: Path) -> None:
    async def run() -> None:
        # Nothing listens on the port: the server serves from its replica and
        # says so when asked to sync.
        args = ["--join", "ws://127.0.0.1:9", "--data", str(tmp_path / "r.db")]
        async with mcp_client(*args, "--exit-sync-timeout", "0") as s:
            await call(s, "create_entities", entities=[entity("offline", "note")])
            result = await call(s, "sync_memory", timeout=0.2)
            assert result["synced"] is False and result["connected"] is False
            assert "SyncTimeoutError" in result["message"]
            assert (await call(s, "read_graph"))["entities"] == [entity("offline", "note")]

    asyncio.run(run())


def test_import_export_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    memory_file = tmp_path / "memory.jsonl"
    memory_file.write_text(
        '{"type":"entity","name":"Ada","entityType":"person","observations":["a"]}\n'
        '{"type":"relation","from":"Ada","to":"Ada","relationType":"is"}\n'
    )
    data = tmp_path / "replica.db"
    module = [sys.executable, "-m", "hybridsync.integrations.mcp"]
    done = subprocess.run(
        [*module, "--data", str(data), "--import", str(memory_file)],
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert done.returncode == 0, done.stderr
    assert "imported 1 entities, 1 observations, 1 relations" in done.stderr
    out = tmp_path / "out.jsonl"
    done = subprocess.run(
        [*module, "--data", str(data), "--export", str(out)],
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert done.returncode == 0, done.stderr
    assert [json.loads(x) for x in out.read_text().splitlines()] == [
        json.loads(x) for x in memory_file.read_text().splitlines()
    ]
    # Refused with a clear message: nothing to import into; no secret for --join.
    assert main(["--import", str(memory_file)]) == 2
    assert "need --data or --join" in capsys.readouterr().err
    monkeypatch.delenv("HYBRIDSYNC_SECRET", raising=False)
    assert main(["--join", "ws://127.0.0.1:9"]) == 2
    assert "no secret" in capsys.readouterr().err


def test_main_arguments() -> None:
    opts = build_parser().parse_args(
        ["--data", "a.db", "--join", "ws://h:1", "--id", "x", "--http", "--port", "9000"]
    )
    assert (opts.data, opts.join, opts.replica_id, opts.http, opts.port) == (
        Path("a.db"),
        "ws://h:1",
        "x",
        True,
        9000,
    )


# -- two servers through a lossy hub -------------------------------------------------------


class Model:
    """What the graph must hold: every acknowledged write, minus acknowledged deletes."""

    def __init__(self) -> None:
        self.entities: dict[str, str] = {}
        self.observations: dict[str, set[str]] = {}
        self.relations: set[tuple[str, str, str]] = set()
        self.documents: dict[str, str] = {}

    def check(self, graph: Any) -> None:
        got_entities = {e["name"]: e for e in graph["entities"]}
        assert sorted(got_entities) == sorted(self.entities)
        for name, etype in self.entities.items():
            e = got_entities[name]
            assert e["entityType"] == etype
            # Present exactly once: a sorted list, not a set, is compared.
            assert sorted(e["observations"]) == sorted(self.observations[name]), name
        got_relations = [(r["from"], r["relationType"], r["to"]) for r in graph["relations"]]
        assert sorted(got_relations) == sorted(self.relations)


SHARED = [f"shared-{i}" for i in range(3)]


async def random_client(session: ClientSession, me: str, calls: int, model: Model) -> None:
    """Random tool calls touching this client's own entities, relations and
    document, and observations on the shared entities; every acknowledged
    write goes into the model."""
    rng = random.Random(me)
    own: list[str] = []
    mine: list[tuple[str, str]] = []  # observations this client added
    relations: list[tuple[str, str, str]] = []
    doc = f"doc-{me}"
    for n in range(1, calls + 1):
        op = rng.choice(
            ["create", "create", "observe", "observe", "unobserve", "relate", "unrelate",
             "delete", "write", "edit", "read"]
        )  # fmt: skip
        if op == "create" or (op in ("observe", "relate", "delete") and not own):
            name = f"{me}-e{n}"
            obs = [f"{me}-o{n}-{k}" for k in range(rng.randrange(3))]
            await call(session, "create_entities", entities=[entity(name, me, obs)])
            own.append(name)
            model.entities[name] = me
            model.observations[name] = set(obs)
            mine += [(name, o) for o in obs]
        elif op == "observe":
            target = rng.choice(own + SHARED)
            text = f"{me}-o{n}"
            result = await call(
                session,
                "add_observations",
                observations=[{"entityName": target, "contents": [text]}],
            )
            assert result["results"][0]["addedObservations"] == [text]
            model.observations[target].add(text)
            mine.append((target, text))
        elif op == "unobserve" and mine:
            target, text = mine.pop(rng.randrange(len(mine)))
            await call(
                session,
                "delete_observations",
                deletions=[{"entityName": target, "observations": [text]}],
            )
            model.observations[target].discard(text)
        elif op == "relate":
            key = (rng.choice(own), f"rel-{me}", rng.choice(own + SHARED))
            await call(session, "create_relations", relations=[rel(*key)])
            if key not in model.relations:
                relations.append(key)
            model.relations.add(key)
        elif op == "unrelate" and relations:
            key = relations.pop(rng.randrange(len(relations)))
            await call(session, "delete_relations", relations=[rel(*key)])
            model.relations.discard(key)
        elif op == "delete":
            name = own.pop(rng.randrange(len(own)))
            await call(session, "delete_entities", entityNames=[name])
            del model.entities[name], model.observations[name]
            mine = [(t, o) for t, o in mine if t != name]
            relations = [k for k in relations if name not in (k[0], k[2])]
            model.relations = {k for k in model.relations if name not in (k[0], k[2])}
        elif op == "write" or (op == "edit" and doc not in model.documents):
            text = f"{me} line {n}\n" * rng.randrange(1, 4)
            await call(session, "write_document", name=doc, text=text)
            model.documents[doc] = text
        elif op == "edit":
            old = model.documents[doc]
            line = old.splitlines(keepends=True)[-1]
            await call(
                session, "edit_document", name=doc, old_string=line, new_string=f"{me} {n}\n",
                replace_all=True,
            )  # fmt: skip
            model.documents[doc] = old.replace(line, f"{me} {n}\n")
        else:
            await call(session, rng.choice(["read_graph", "list_documents"]))


async def converge(sessions: list[ClientSession], model: Model) -> Any:
    """Sync every server with the hub until they all read the model's graph
    and documents; returns the graph. Each round waits on acknowledgements."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG_GUARD
    while True:
        for s in sessions:
            assert (await call(s, "sync_memory", timeout=300))["synced"]
        graphs = [await call(s, "read_graph") for s in sessions]
        docs = [
            {n: (await call(s, "read_document", name=n))["text"] for n in model.documents}
            for s in sessions
        ]
        try:
            assert all(g == graphs[0] for g in graphs)
            model.check(graphs[0])
            assert all(d == model.documents for d in docs)
            return graphs[0]
        except AssertionError:
            if loop.time() > deadline:
                raise


def child_pid(marker: str) -> int:
    """The pid of this process's child whose command line holds ``marker``."""
    me = str(os.getpid())
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[1] == me and marker in cmdline:
            return int(entry)
    raise AssertionError(f"no child process with {marker!r}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the child in /proc")
def test_two_servers_through_a_lossy_hub_converge_and_survive_kill(tmp_path: Path) -> None:
    calls = 200

    async def run() -> None:
        hub_memory = Memory("hub")
        async with (
            serve(hub_memory, secret=SECRET.encode()) as hub,
            FaultProxy(hub.url, loss=0.2, seed=23) as proxy,
        ):
            data_a = str(tmp_path / "a.db")
            args_a = ["--join", proxy.url, "--id", "server-a", "--data", data_a]
            args_b = ["--join", proxy.url, "--id", "server-b"]
            model = Model()
            async with contextlib.AsyncExitStack() as stack:
                a = await stack.enter_async_context(mcp_client(*args_a))
                b = await stack.enter_async_context(mcp_client(*args_b))
                await call(a, "create_entities", entities=[entity(n, "shared") for n in SHARED])
                for n in SHARED:
                    model.entities[n] = "shared"
                    model.observations[n] = set()
                await converge([a, b], model)
                # Four clients, two on each server, calling concurrently (an MCP
                # session carries concurrent requests).
                await asyncio.wait_for(
                    asyncio.gather(
                        random_client(a, "c1", calls, model),
                        random_client(b, "c2", calls, model),
                        random_client(a, "c3", calls, model),
                        random_client(b, "c4", calls, model),
                    ),
                    HANG_GUARD,
                )
                graph = await converge([a, b], model)
                assert proxy.stats.lost > 0
                entities_before = len(graph["entities"])

            # SIGKILL server A right after acknowledged writes, then restart it
            # on its file: nothing acknowledged is lost. (The link is lossless
            # from here: what is tested is the file.)
            proxy.set_faults(loss=0.0)
            async with mcp_client(*args_b) as b:
                crash_client = mcp_client(*args_a)
                a = await crash_client.__aenter__()
                for k in range(20):
                    name = f"crash-{k}"
                    await call(a, "create_entities", entities=[entity(name, "crash", [f"c{k}"])])
                    model.entities[name] = "crash"
                    model.observations[name] = {f"c{k}"}
                await call(a, "write_document", name="crash-doc", text="written before the kill\n")
                model.documents["crash-doc"] = "written before the kill\n"
                os.kill(child_pid(data_a), signal.SIGKILL)
                with contextlib.suppress(BaseException):
                    await crash_client.__aexit__(None, None, None)
                async with mcp_client(*args_a) as a:
                    # Durable before any sync: the restarted server holds them.
                    model.check(await call(a, "read_graph"))
                    graph = await converge([a, b], model)
                    assert len(graph["entities"]) == entities_before + 20

    asyncio.run(run())


def test_streamable_http_serves_several_clients(tmp_path: Path) -> None:
    async def run() -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hybridsync.integrations.mcp",
            "--http",
            "--port",
            "0",
            "--data",
            str(tmp_path / "http.db"),
            env=server_env(),
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert process.stderr is not None
            url = ""
            while not url:
                line = (await asyncio.wait_for(process.stderr.readline(), HANG_GUARD)).decode()
                assert line, "the server exited before serving"
                if "serving streamable HTTP at " in line:
                    url = line.split(" at ", 1)[1].strip()
            async with Client(url) as one, Client(url) as two:
                created = await one.call_tool(
                    "create_entities", {"entities": [entity("Ada", "person", ["x"])]}
                )
                assert not created.is_error
                graph = await two.call_tool("read_graph", {})
                assert graph.structured_content == {
                    "entities": [entity("Ada", "person", ["x"])],
                    "relations": [],
                }
                bad = await two.call_tool("open_nodes", {"names": "Ada"})
                assert bad.is_error
        finally:
            if process.returncode is None:
                process.terminate()
            assert await asyncio.wait_for(process.wait(), HANG_GUARD) == 0

    asyncio.run(run())


# -- resources and subscriptions ----------------------------------------------------------


def test_subscriber_on_b_hears_of_a_write_on_a(tmp_path: Path) -> None:
    updated: asyncio.Queue[str] = asyncio.Queue()

    async def on_message(message: Any) -> None:
        if isinstance(message, mcp_types.ResourceUpdatedNotification):
            await updated.put(message.params.uri)

    async def wait_for(uris: set[str]) -> None:
        async def collect() -> None:
            while uris:
                uris.discard(await updated.get())

        await asyncio.wait_for(collect(), HANG_GUARD)

    async def run() -> None:
        async with serve(Memory("hub"), secret=SECRET.encode()) as hub:
            params = server_params("--join", hub.url, "--id", "sub-b")
            with open(os.devnull, "w") as errlog:
                async with (
                    mcp_client("--join", hub.url, "--id", "sub-a") as a,
                    stdio_client(params, errlog=errlog) as (read, write),
                    ClientSession(read, write, message_handler=on_message) as b,
                ):
                    await asyncio.wait_for(b.initialize(), HANG_GUARD)
                    caps = b.server_capabilities
                    assert caps is not None and caps.resources is not None
                    assert caps.resources.subscribe
                    await call(a, "create_entities", entities=[entity("Ada Lovelace", "person")])
                    await call(a, "write_document", name="notes/plan", text="draft\n")
                    model = Model()
                    model.entities["Ada Lovelace"] = "person"
                    model.observations["Ada Lovelace"] = set()
                    model.documents["notes/plan"] = "draft\n"
                    await converge([a, b], model)
                    listed = {str(r.uri) for r in (await b.list_resources()).resources}
                    ada, plan = "memory://entity/Ada%20Lovelace", "memory://doc/notes%2Fplan"
                    assert {"memory://knowledge-graph", ada, plan} <= listed
                    templates = (await b.list_resource_templates()).resource_templates
                    assert {t.uri_template for t in templates} == {
                        "memory://entity/{name}",
                        "memory://doc/{name}",
                    }
                    # resources/subscribe: what clients of the 2025 protocol
                    # versions (most of them today) use; deprecated in the SDK
                    # in favour of subscriptions/listen, tested below.
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", MCPDeprecationWarning)
                        for uri in (ada, plan, "memory://knowledge-graph"):
                            await b.subscribe_resource(uri)

                    # A writes; B's subscriber hears of it, with no call on B.
                    await call(
                        a,
                        "add_observations",
                        observations=[{"entityName": "Ada Lovelace", "contents": ["wrote notes"]}],
                    )
                    await wait_for({ada, "memory://knowledge-graph"})
                    content = (await b.read_resource(ada)).contents[0]
                    assert isinstance(content, mcp_types.TextResourceContents)
                    assert json.loads(content.text)["entities"][0]["observations"] == [
                        "wrote notes"
                    ]
                    await call(
                        a, "edit_document", name="notes/plan", old_string="draft", new_string="v2"
                    )
                    await wait_for({plan})
                    content = (await b.read_resource(plan)).contents[0]
                    assert isinstance(content, mcp_types.TextResourceContents)
                    assert content.text == "v2\n"

                    # Unsubscribed: no more notifications for the document.
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", MCPDeprecationWarning)
                        await b.unsubscribe_resource(plan)
                    await call(a, "write_document", name="notes/plan", text="v3\n")
                    await call(
                        a, "create_relations", relations=[rel("Ada Lovelace", "is", "Ada Lovelace")]
                    )
                    await wait_for({ada})
                    await call(b, "sync_memory")
                    assert (await call(b, "read_document", name="notes/plan"))["text"] == "v3\n"
                    while not updated.empty():
                        assert updated.get_nowait() != plan
                    with pytest.raises(MCPError):
                        await b.read_resource("memory://entity/nobody")

                    # The 2026-07-28 protocol: a subscriptions/listen stream on a
                    # third server hears of a write made through server A.
                    async with Client(
                        server_params("--join", hub.url, "--id", "sub-c"), mode="2026-07-28"
                    ) as c:
                        model.observations["Ada Lovelace"] = {"wrote notes"}
                        model.relations = {("Ada Lovelace", "is", "Ada Lovelace")}
                        model.documents["notes/plan"] = "v3\n"
                        await converge([a, b, c.session], model)
                        async with c.listen(resource_subscriptions=[ada]) as stream:
                            await call(
                                a,
                                "add_observations",
                                observations=[
                                    {"entityName": "Ada Lovelace", "contents": ["later"]}
                                ],
                            )

                            async def first() -> Any:
                                return await stream.__anext__()

                            event = await asyncio.wait_for(first(), HANG_GUARD)
                            assert event.uri == ada
                        content = (await c.read_resource(ada)).contents[0]
                        assert isinstance(content, mcp_types.TextResourceContents)
                        assert "later" in json.loads(content.text)["entities"][0]["observations"]

    asyncio.run(run())


# -- examples -----------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "mcp"


def test_example_client_config_is_accepted() -> None:
    config = json.loads((EXAMPLES / "mcp.json").read_text())
    server = config["mcpServers"]["memory"]
    assert server["args"][:2] == ["-m", "hybridsync.integrations.mcp"]
    opts = build_parser().parse_args(server["args"][2:])
    assert opts.join and opts.data and opts.replica_id
    assert "HYBRIDSYNC_SECRET" in server["env"]


def test_example_two_servers_through_a_hub(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(EXAMPLES / "two_servers.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "same graph on both servers: True" in out
    assert "plan: 1. bisect | 2. fix it |" in out
    for observation in ("fails on ARM", "passes on x86", "regressed in 2.3"):
        assert observation in out
