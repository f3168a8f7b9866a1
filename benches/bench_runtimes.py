#!/usr/bin/env python3
"""What an agent runtime sees of hybridsync through the MCP memory server, on loopback.

Three measurements, every one through real processes and the real ``mcp`` SDK client
(``mcp.ClientSession`` over stdio, as in ``tests/test_integrations_mcp.py``):

1. **Tool-call latency on one server.** Two ``python -m hybridsync.integrations.mcp``
   processes run side by side: one in memory, one with ``--data FILE`` (every write is
   saved, with fsync, before the tool call is acknowledged). For each of
   ``create_entities``, ``add_observations``, ``read_graph``, ``search_nodes`` and
   ``write_document`` the same calls go to both servers, alternating which goes first, so
   that both share the machine's noise. A call is timed from ``session.call_tool`` to its
   result in the client (client and server JSON, stdio pipes and pydantic validation
   included). For reference, the same operations are timed in this process straight on a
   :class:`hybridsync.integrations.graph.KnowledgeGraph` / ``memory.text`` (with
   ``memory.flush()`` after writes, as the server does), in memory and on a file: the
   difference is what MCP and stdio add.
2. **Write on A -> notification on B.** A hub (``hybridsync serve``, its own process) and
   two MCP servers joined to it (``--join``). A client of server B subscribes
   (``resources/subscribe``) to ``memory://entity/NAME`` and ``memory://doc/NAME``; a
   client of server A makes a write (``add_observations`` on the entity, or
   ``write_document``); the time is from the start of A's tool call to the
   ``notifications/resources/updated`` for that URI arriving at B's client. After each
   notification B's resource is read to check that the write is there (a notification for
   an earlier write would not count: the wait goes on). Writes are spaced by a random
   pause (0-50 ms), as an agent's writes are.
3. **The same through the library** (reference): two :func:`hybridsync.connect` sessions in
   this process on the same hub, a :class:`KnowledgeGraph` on each; the writer adds an
   observation (or assigns a document) and calls ``session.notify()`` (what the MCP server
   does after a write); the time is until a metadata (text) observer on the reader's
   replica fires with the write visible. These writes are interleaved with those of (2),
   alternating the order, on the same hub.

Percentiles are nearest-rank over all timed calls (warm-up calls excluded); p99 of 300
calls is the third slowest. Nothing is dropped: a write whose notification never came
within the hang guard is counted as missed and reported.

Usage::

    python benches/bench_runtimes.py [--quick] [--out benches/results]

It writes ``runtimes.md`` and ``runtimes.json`` (``runtimes-quick.*`` with ``--quick``)
into the ``--out`` folder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import random
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import mcp.types as mcp_types
from mcp import ClientSession
from mcp.client.session import MessageHandlerFnT
from mcp.client.stdio import StdioServerParameters, stdio_client

from hybridsync import Memory, connect
from hybridsync.integrations.graph import KnowledgeGraph

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model, git_revision, package_version

try:  # deprecated in the SDK in favour of subscriptions/listen; still what clients use
    from mcp.shared.exceptions import MCPDeprecationWarning
except ImportError:  # pragma: no cover - older SDKs
    MCPDeprecationWarning = DeprecationWarning  # type: ignore[misc,assignment]

SECRET = secrets.token_urlsafe(32)
HANG_GUARD = 60.0
SEED = 23
TOOLS = ("create_entities", "add_observations", "read_graph", "search_nodes", "write_document")
DOC_LINES = 40  # write_document: a ~2 KB document, one line changed per call
ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values_s: Sequence[float], missed: int = 0) -> dict[str, Any]:
    """Milliseconds: count, p50, p99, mean, min, max (None where nothing was timed)."""
    ms = [v * 1000 for v in values_s]
    if not ms:
        return {"n": 0, "missed": missed, "p50": None, "p99": None, "mean": None}
    return {
        "n": len(ms),
        "missed": missed,
        "p50": round(percentile(ms, 50), 3),
        "p99": round(percentile(ms, 99), 3),
        "mean": round(statistics.fmean(ms), 3),
        "min": round(min(ms), 3),
        "max": round(max(ms), 3),
    }


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["HYBRIDSYNC_SECRET"] = SECRET
    return env


@contextlib.asynccontextmanager
async def mcp_server(
    *args: str, message_handler: MessageHandlerFnT | None = None
) -> AsyncIterator[ClientSession]:
    """A ``hybridsync.integrations.mcp`` process over stdio and an initialized client."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "hybridsync.integrations.mcp", *args],
        env=server_env(),
    )
    with open(os.devnull, "w") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write, message_handler=message_handler) as session,
        ):
            await asyncio.wait_for(session.initialize(), HANG_GUARD)
            yield session


async def call(session: ClientSession, tool: str, args: dict[str, Any]) -> Any:
    result = await asyncio.wait_for(session.call_tool(tool, args), HANG_GUARD)
    if result.is_error:
        raise RuntimeError(f"{tool} failed: {result.content}")
    return result.structured_content


def entity(name: str, observations: list[str]) -> dict[str, Any]:
    return {"name": name, "entityType": "bench", "observations": observations}


def document_text(i: int) -> str:
    lines = [f"line {k:02d}: the plan as it stands, step {k} of {DOC_LINES}" for k in range(40)]
    lines[i % DOC_LINES] = f"line {i % DOC_LINES:02d}: revised in call {i}"
    return "\n".join(lines) + "\n"


def tool_arguments(tool: str, i: int, created: int) -> dict[str, Any]:
    """The i-th call of ``tool`` (the same on every server and in process)."""
    if tool == "create_entities":
        return {"entities": [entity(f"e{i}", [f"o{i}-a", f"o{i}-b"])]}
    if tool == "add_observations":
        return {"observations": [{"entityName": f"e{i % created}", "contents": [f"x{i}"]}]}
    if tool == "read_graph":
        return {}
    if tool == "search_nodes":
        return {"query": f"o{i % created}-"}
    if tool == "write_document":
        return {"name": f"doc-{i % 8}", "text": document_text(i)}
    raise ValueError(tool)


class Direct:
    """The same operations in this process, on a replica (``path``: durable, fsync on)."""

    def __init__(self, replica_id: str, path: Path | None) -> None:
        self.memory = Memory(replica_id, path=path)
        self.graph = KnowledgeGraph(self.memory)

    def run(self, tool: str, args: dict[str, Any]) -> None:
        g = self.graph
        if tool == "create_entities":
            g.create_entities(args["entities"])
        elif tool == "add_observations":
            g.add_observations(args["observations"])
        elif tool == "read_graph":
            g.read_graph()
            return
        elif tool == "search_nodes":
            g.search_nodes(args["query"])
            return
        elif tool == "write_document":
            self.memory.text[args["name"]] = args["text"]
        self.memory.flush()

    def close(self) -> None:
        self.graph.close()
        self.memory.close()


# --------------------------------------------------------------------------- 1. tool calls


async def tool_latency(n: int, warmup: int, workdir: Path) -> dict[str, Any]:
    """Every tool's latency on an in-memory and a ``--data`` server, and in process."""
    data_file = workdir / "server.db"
    times: dict[str, dict[str, list[float]]] = {
        t: {"mcp_memory": [], "mcp_data": [], "direct_memory": [], "direct_data": []} for t in TOOLS
    }
    sizes: dict[str, Any] = {}
    direct = {
        "direct_memory": Direct("direct-mem", None),
        "direct_data": Direct("direct-data", workdir / "direct.db"),
    }
    try:
        async with (
            mcp_server() as s_mem,
            mcp_server("--data", str(data_file)) as s_data,
        ):
            servers = {"mcp_memory": s_mem, "mcp_data": s_data}
            created = warmup + n  # create_entities runs first: e0 .. e{created-1}
            for tool in TOOLS:
                for i in range(warmup + n):
                    args = tool_arguments(tool, i, created)
                    order = ["mcp_memory", "mcp_data", "direct_memory", "direct_data"]
                    k = i % len(order)
                    for where in order[k:] + order[:k]:
                        if where in servers:
                            t0 = time.perf_counter()
                            await call(servers[where], tool, args)
                            elapsed = time.perf_counter() - t0
                        else:
                            t0 = time.perf_counter()
                            direct[where].run(tool, args)
                            elapsed = time.perf_counter() - t0
                        if i >= warmup:
                            times[tool][where].append(elapsed)
                if tool == "add_observations":
                    graph = await call(s_mem, "read_graph", {})
                    sizes["entities"] = len(graph["entities"])
                    sizes["observations"] = sum(len(e["observations"]) for e in graph["entities"])
                    sizes["read_graph_json_bytes"] = len(json.dumps(graph))
            # The servers hold the same graph as the in-process replicas.
            for where, s in servers.items():
                got = await call(s, "read_graph", {})
                if got != direct["direct_memory"].graph.read_graph():
                    raise RuntimeError(f"{where}: the graph differs from the reference")
    finally:
        for d in direct.values():
            d.close()
    rows = []
    for tool in TOOLS:
        rows.append({"tool": tool, **{w: summary(v) for w, v in times[tool].items()}})
    # create_entities grows the graph by one entity per call: its first and last tenth
    # say how a write's cost moves with the graph's size.
    k = max(1, n // 10)
    growth = {
        "tool": "create_entities",
        "calls": k,
        "entities_before_first": [warmup, warmup + k - 1],
        "entities_before_last": [warmup + n - k, warmup + n - 1],
        "first": {w: summary(v[:k]) for w, v in times["create_entities"].items()},
        "last": {w: summary(v[-k:]) for w, v in times["create_entities"].items()},
    }
    return {"calls_per_tool": n, "warmup": warmup, "graph": sizes, "rows": rows, "growth": growth}


# --------------------------------------------------------------------------- 2 + 3. propagation


def _die_with_parent() -> None:
    """In the hub's process before exec: SIGKILL it if this benchmark dies first."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def cli_hub() -> Any:
    """``hybridsync serve`` in its own process; yields its ws:// URL."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hybridsync.cli",
            "serve",
            "--port",
            "0",
            "--id",
            "bench-hub",
            "--no-status-file",
            "--no-live",
        ],
        env=server_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + HANG_GUARD
        url = ""
        seen: list[str] = []
        while not url:
            line = proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise RuntimeError("the hub did not start:\n" + "".join(seen))
            seen.append(line)
            match = re.search(r"serving on (ws://\S+)", line)
            if match:
                url = match.group(1)
        # Keep reading its output so that it never blocks on a full pipe.
        drain = threading.Thread(target=proc.stdout.read, daemon=True)
        drain.start()
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # the hub's own shutdown
            try:
                proc.wait(HANG_GUARD)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class McpPair:
    """Server A (writer) and server B (subscriber) joined to one hub."""

    def __init__(
        self, a: ClientSession, b: ClientSession, updated: asyncio.Queue[tuple[str, float]]
    ) -> None:
        self.a, self.b, self.updated = a, b, updated

    async def wait_visible(
        self, uri: str, visible: Callable[[str], bool], guard: float
    ) -> float | None:
        """The arrival time of the first notification for ``uri`` after which B's resource
        shows the write; None if none within ``guard`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + guard
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return None
            try:
                got_uri, at = await asyncio.wait_for(self.updated.get(), left)
            except asyncio.TimeoutError:
                return None
            if got_uri != uri:
                continue
            content = (await self.b.read_resource(uri)).contents[0]
            if isinstance(content, mcp_types.TextResourceContents) and visible(content.text):
                return at


class LibPair:
    """Two ``connect`` sessions in this process (on a hub of their own); observers on
    the reader's replica."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ma, self.mb = Memory("lib-a"), Memory("lib-b")
        self.ga, self.gb = KnowledgeGraph(self.ma), KnowledgeGraph(self.mb)
        self.fired = asyncio.Event()
        self.fired_at = 0.0
        self._subs = [
            self.mb.meta.observe(None, self._on_change, deep=False),
            self.mb.text.observe(None, self._on_change),
        ]

    def _on_change(self, event: Any) -> None:
        self.fired_at = time.perf_counter()
        self.fired.set()

    async def wait_visible(self, visible: Callable[[], bool], guard: float) -> float | None:
        """The time of the observer call after which ``visible()`` holds; None if not
        within ``guard`` seconds. Call it right after the write (no await between)."""
        if visible():
            raise RuntimeError("the reader held the write before anything arrived")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + guard
        while not visible():
            left = deadline - loop.time()
            if left <= 0:
                return None
            try:
                await asyncio.wait_for(self.fired.wait(), left)
            except asyncio.TimeoutError:
                return None
            self.fired.clear()
        return self.fired_at

    def close(self) -> None:
        for s in self._subs:
            s.close()
        self.ga.close()
        self.gb.close()


async def propagation(n: int, warmup: int) -> dict[str, Any]:
    updated: asyncio.Queue[tuple[str, float]] = asyncio.Queue()

    async def on_message(message: Any) -> None:
        if isinstance(message, mcp_types.ResourceUpdatedNotification):
            updated.put_nowait((str(message.params.uri), time.perf_counter()))

    target, doc = "target", "shared-plan"
    entity_uri, doc_uri = f"memory://entity/{target}", f"memory://doc/{doc}"
    kinds = ("observation", "document")
    t: dict[str, dict[str, list[float]]] = {
        k: {"mcp_call_to_notification": [], "mcp_ack": [], "library_write_to_observer": []}
        for k in kinds
    }
    missed = {k: {"mcp": 0, "library": 0} for k in kinds}
    rng = random.Random(SEED)
    # One hub for the MCP servers, another for the library sessions: neither path
    # carries the other's traffic.
    with cli_hub() as url, cli_hub() as lib_url:
        lib = LibPair(lib_url)
        try:
            async with (
                mcp_server("--join", url, "--id", "bench-a") as a,
                mcp_server("--join", url, "--id", "bench-b", message_handler=on_message) as b,
                connect(lib.ma, lib_url, secret=SECRET.encode()) as sa,
                connect(lib.mb, lib_url, secret=SECRET.encode()) as sb,
            ):
                pair = McpPair(a, b, updated)
                await call(a, "create_entities", {"entities": [entity(target, [])]})
                await call(a, "write_document", {"name": doc, "text": "v0\n"})
                lib.ga.create_entities([entity(target, [])])
                lib.ma.text[doc] = "v0\n"
                # Both sides hold the starting state before anything is timed.
                for s in (a, b):
                    await call(s, "sync_memory", {"timeout": 30})
                await sa.sync(30)
                await sb.sync(30)
                if not (await call(b, "open_nodes", {"names": [target]}))["entities"]:
                    raise RuntimeError("server B did not receive the starting state")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", MCPDeprecationWarning)
                    await b.subscribe_resource(entity_uri)
                    await b.subscribe_resource(doc_uri)

                async def mcp_write(kind: str, i: int, timed: bool) -> None:
                    while not updated.empty():
                        updated.get_nowait()
                    mark = f"w{i}"
                    t0 = time.perf_counter()
                    if kind == "observation":
                        obs = [{"entityName": target, "contents": [mark]}]
                        await call(a, "add_observations", {"observations": obs})
                        uri = entity_uri

                        def seen(text: str) -> bool:
                            return mark in json.loads(text)["entities"][0]["observations"]
                    else:
                        await call(a, "write_document", {"name": doc, "text": f"{mark}\n"})
                        uri = doc_uri

                        def seen(text: str) -> bool:
                            return text == f"{mark}\n"

                    t_ack = time.perf_counter()
                    at = await pair.wait_visible(uri, seen, HANG_GUARD)
                    if not timed:
                        return
                    t[kind]["mcp_ack"].append(t_ack - t0)
                    if at is None:
                        missed[kind]["mcp"] += 1
                    else:
                        t[kind]["mcp_call_to_notification"].append(at - t0)

                async def lib_write(kind: str, i: int, timed: bool) -> None:
                    lib.fired.clear()
                    mark = f"w{i}"
                    t0 = time.perf_counter()
                    if kind == "observation":
                        lib.ga.add_observations([{"entityName": target, "contents": [mark]}])

                        def seen() -> bool:
                            nodes = lib.gb.open_nodes([target])["entities"]
                            return bool(nodes) and mark in nodes[0]["observations"]
                    else:
                        lib.ma.text[doc] = f"{mark}\n"

                        def seen() -> bool:
                            return lib.mb.text.get(doc) == f"{mark}\n"

                    lib.ma.flush()
                    sa.notify()
                    at = await lib.wait_visible(seen, HANG_GUARD)
                    if not timed:
                        return
                    if at is None:
                        missed[kind]["library"] += 1
                    else:
                        t[kind]["library_write_to_observer"].append(at - t0)

                for i in range(warmup + n):
                    for kind in kinds:
                        steps = [mcp_write, lib_write]
                        if (i + (kind == "document")) % 2:
                            steps.reverse()
                        for step in steps:
                            await asyncio.sleep(rng.uniform(0.0, 0.05))
                            await step(kind, i, i >= warmup)
        finally:
            lib.close()
    rows = []
    for kind in kinds:
        rows.append(
            {
                "write": kind,
                "mcp_call_to_notification": summary(
                    t[kind]["mcp_call_to_notification"], missed[kind]["mcp"]
                ),
                "mcp_ack": summary(t[kind]["mcp_ack"]),
                "library_write_to_observer": summary(
                    t[kind]["library_write_to_observer"], missed[kind]["library"]
                ),
            }
        )
    return {"writes": n, "warmup": warmup, "rows": rows}


# --------------------------------------------------------------------------- report


def filesystem_of(path: Path) -> str:
    """The file system type holding ``path`` (from /proc/mounts), or "unknown"."""
    best, kind = "", "unknown"
    try:
        resolved = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and resolved.startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


def environment(argv: Sequence[str], workdir: Path) -> dict[str, Any]:
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", "benches/bench_runtimes.py", *argv]),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "data_filesystem": filesystem_of(workdir),
        "git": git_revision(),
        "versions": {p: package_version(p) for p in ("hybridsync", "mcp", "pydantic")},
    }


def _ms(cell: dict[str, Any], key: str) -> str:
    v = cell.get(key)
    return "—" if v is None else f"{v:.2f}"


def _cell(cell: dict[str, Any]) -> str:
    """'p50 / p99 / mean' in ms."""
    if not cell["n"]:
        return "no result"
    return f"{_ms(cell, 'p50')} / {_ms(cell, 'p99')} / {_ms(cell, 'mean')}"


def render(env: dict[str, Any], data: dict[str, Any]) -> str:
    v = env["versions"]
    load_start = " / ".join(str(x) for x in env["loadavg_at_start"])
    load_end = " / ".join(str(x) for x in data["loadavg_at_end"])
    tools, prop = data["tool_calls"], data["propagation"]
    g = tools["graph"]
    out = [
        "# Agent runtimes: the MCP memory server on loopback",
        "",
        f"- {env['date_utc']}; Python {env['python']}, {env['platform']}; CPU: {env['cpu']} "
        f"({env['cpu_count']} logical CPUs); mode: {data['mode']}; command: "
        f"`{env['command']}`; total {data['elapsed_s']:.0f} s",
        f"- hybridsync {v['hybridsync']} ({env['git']}), mcp {v['mcp']}, pydantic "
        f"{v['pydantic']}; `--data` files on {env['data_filesystem']} (fsync on)",
        f"- **Noisy machine**: {env['cpu_count']} logical CPUs shared with other work; load "
        f"average {load_start} at start, {load_end} at the end. Every number below includes "
        "waiting for a CPU; the tails (p99) mostly measure the other load, and medians "
        "move by tens of percent from run to run. Compare numbers within one run only.",
        "- Percentiles are nearest-rank over all timed calls (warm-up excluded); ms. Client, "
        "servers and hub are separate processes (the real `mcp` SDK `ClientSession` over "
        "stdio); nothing is dropped from the samples.",
        "",
        f"## 1. Tool-call latency on one server ({tools['calls_per_tool']} calls per tool, "
        f"{tools['warmup']} warm-up)",
        "",
        "Time from `session.call_tool` to its result in the client. *memory*: the server "
        "without `--data`; *--data*: every write saved (SQLite, fsync) before it is "
        "acknowledged. The same calls go to both servers, alternating which goes first. "
        "*In process*: the same operation straight on a `KnowledgeGraph` / `memory.text` "
        "(plus `memory.flush()` after writes, as the server does), without MCP or stdio.",
        "",
        f"`create_entities` makes one entity with 2 observations per call; `add_observations` "
        f"adds one observation to one of them; `read_graph` then reads {g.get('entities')} "
        f"entities / {g.get('observations')} observations "
        f"({g.get('read_graph_json_bytes', 0):,} bytes of JSON); `search_nodes` matches one "
        f"entity; `write_document` replaces a {len(document_text(0)):,}-character document "
        "(one of 8) with one line changed.",
        "",
        "| tool | MCP, memory: p50 / p99 / mean | MCP, --data: p50 / p99 / mean "
        "| in process, memory: p50 / p99 | in process, file: p50 / p99 |",
        "|---|---|---|---|---|",
    ]
    for r in tools["rows"]:
        dm, dd = r["direct_memory"], r["direct_data"]
        out.append(
            f"| `{r['tool']}` | {_cell(r['mcp_memory'])} | {_cell(r['mcp_data'])} "
            f"| {_ms(dm, 'p50')} / {_ms(dm, 'p99')} | {_ms(dd, 'p50')} / {_ms(dd, 'p99')} |"
        )
    gr = tools["growth"]
    a, b = gr["entities_before_first"], gr["entities_before_last"]
    out += [
        "",
        f"How a write's cost moves with the graph's size: `create_entities` p50 over its first "
        f"{gr['calls']} calls (graph of {a[0]}-{a[1]} entities) → its last {gr['calls']} "
        f"(graph of {b[0]}-{b[1]} entities): "
        + "; ".join(
            f"{label} {_ms(gr['first'][w], 'p50')} → {_ms(gr['last'][w], 'p50')}"
            for w, label in (
                ("mcp_memory", "MCP memory"),
                ("mcp_data", "MCP --data"),
                ("direct_memory", "in process, memory"),
                ("direct_data", "in process, file"),
            )
        )
        + " ms.",
    ]
    out += [
        "",
        f"## 2 and 3. Write on A, visible on B ({prop['writes']} writes of each kind, "
        f"{prop['warmup']} warm-up)",
        "",
        "A hub (`hybridsync serve`, its own process) with two MCP servers joined to it "
        "(`--join`, no `--data`). B's client subscribes to the entity's and the document's "
        "resources; A's client writes (`add_observations` with one new observation on one "
        "entity, or `write_document` of a short text). **MCP**: from the start of A's tool "
        "call to the `notifications/resources/updated` arriving at B's client (B's resource "
        "then read to check the write is there). **Library**: two `hybridsync.connect` "
        "sessions in the benchmark's process on a hub of their own (a second `hybridsync "
        "serve` process, so that neither path carries the other's traffic); the writer "
        "makes the same "
        "write and calls `session.notify()`; time until a metadata / text observer on the "
        "reader's replica fires with the write visible. MCP and library writes alternate, "
        "with a random 0-50 ms pause before each.",
        "",
        "| write | MCP A call → B notified: p50 / p99 / mean | (of which A's ack: p50 / p99) "
        "| library A write → B observer: p50 / p99 / mean | missed (MCP / library) |",
        "|---|---|---|---|---|",
    ]
    for r in prop["rows"]:
        m, ack, lib = r["mcp_call_to_notification"], r["mcp_ack"], r["library_write_to_observer"]
        out.append(
            f"| {r['write']} | {_cell(m)} | {_ms(ack, 'p50')} / {_ms(ack, 'p99')} "
            f"| {_cell(lib)} | {m['missed']} / {lib['missed']} |"
        )
    out += [
        "",
        "*missed*: writes not visible on B within the hang guard "
        f"({HANG_GUARD:.0f} s); they are not in the percentiles.",
        "",
        "Both paths use the defaults: `connect()` sessions cycle 20 ms to 1 s apart "
        "(adaptive, `period=(0.02, 1.0)`), `notify()` (called by the MCP server after each "
        "write, and by the library writer here) starts the writer's cycle at once, and the "
        "hub (`serve()`: checks every 20 ms, `poke_guard` 100 ms) wakes the reader when it "
        "has something for it. On top of the library path, the MCP path has the tool call "
        "on A (stdio, JSON, validation: the *ack* column) and the notification's stdio hop "
        "from B to its client; B's resource read happens after the timed span.",
        "",
    ]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="Fewer calls (the test's form).")
    p.add_argument("--calls", type=int, help="Timed calls per tool (default 300; quick 10).")
    p.add_argument("--writes", type=int, help="Timed writes per kind (default 100; quick 5).")
    p.add_argument("--out", type=Path, default=ROOT / "benches" / "results")
    p.add_argument("--workdir", type=Path, help="Where the --data files go (default: a temp dir).")
    args = p.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    calls = args.calls or (10 if args.quick else 300)
    writes = args.writes or (5 if args.quick else 100)
    warmup = 3 if args.quick else 10
    stem = "runtimes-quick" if args.quick else "runtimes"
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hsbench-", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        env = environment(argv, workdir)
        print(f"tool calls: {calls} per tool ...", file=sys.stderr)
        tool_calls = asyncio.run(tool_latency(calls, warmup, workdir))
        print(f"propagation: {writes} writes per kind ...", file=sys.stderr)
        prop = asyncio.run(propagation(writes, 2 if args.quick else 5))
    data = {
        "mode": "quick" if args.quick else "full",
        "elapsed_s": round(time.perf_counter() - started, 1),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "tool_calls": tool_calls,
        "propagation": prop,
    }
    md = render(env, data)
    (args.out / f"{stem}.json").write_text(
        json.dumps({"environment": env, **data}, indent=2) + "\n"
    )
    (args.out / f"{stem}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
