"""The network transport: hubs, nodes, trees of hubs, reconnection, the
synchronous wrapper, and a multi-process swarm through a fault-injecting
proxy with kill -9 of a node and of the hub.

Every wait polls a condition against a deadline (no fixed sleeps decide a
result); deadlines are generous so that a loaded 2-core machine passes.

This file is also the worker program of the multi-process test:
``python tests/test_net.py hub|node ...`` (the secret comes from the
environment, never from the command line).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import secrets
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from hybridsync import Memory
from hybridsync.meta import CompactionPolicy
from hybridsync.net import (
    FaultProxy,
    Hub,
    Session,
    SyncNode,
    SyncTimeoutError,
    connect,
    serve,
)

SECRET = secrets.token_bytes(32)
HOST = "127.0.0.1"
#: Hang guard of each wait for an event: a healthy run, however slow the
#: machine, never gets near it.
GUARD = 300.0
# Fast cycles and reconnections for tests.
FAST: dict[str, Any] = {
    "period": (0.02, None),  # the default: push-driven, no polling while idle
    "backoff": (0.02, 0.5),
    "reply_timeout": (0.2, 2.0),
    "handshake_timeout": 10.0,
}


def run(coro: Coroutine[Any, Any, Any], timeout: float = 900.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def wait_until(
    predicate: Callable[[], bool], timeout: float = GUARD, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def converged(*memories: Memory) -> bool:
    return len({m.digest() for m in memories}) == 1


async def start_nodes(url: str, memories: list[Memory], **options: Any) -> list[Session]:
    merged = {**FAST, **options}
    return [await connect(m, url, secret=SECRET, **merged).start() for m in memories]


async def close_all(sessions: list[Session]) -> None:
    for s in sessions:
        await s.close()


# -- one process ------------------------------------------------------------------


def test_hub_and_four_nodes_converge() -> None:
    async def main() -> None:
        hub_memory = Memory("hub")
        hub_memory.text["brief"] = "Ship the transport.\n"
        hub_memory.meta["board"] = {"owner": "hub"}
        async with serve(hub_memory, HOST, 0, secret=SECRET) as hub:
            assert hub.port > 0
            nodes = [Memory(f"agent-{i}") for i in range(4)]
            sessions = await start_nodes(hub.url, nodes)
            try:
                for i, m in enumerate(nodes):
                    m.text[f"notes/{i}"] = f"agent {i} was here\n"
                    m.meta[f"status/{i}"] = {"state": "busy", "n": i}
                await wait_until(lambda: converged(hub_memory, *nodes), what="convergence")
                # Concurrent edits of one shared document, then metadata.
                for i, m in enumerate(nodes):
                    m.text["brief"] = m.text["brief"] + f"- step by agent {i}\n"
                    with m.transaction():
                        m.meta["board"][f"claimed/{i}"] = True
                await wait_until(lambda: converged(hub_memory, *nodes), what="convergence")
                brief = hub_memory.text["brief"]
                for i in range(4):
                    assert f"- step by agent {i}\n" in brief
                    assert hub_memory.meta["board"][f"claimed/{i}"] is True
                    assert nodes[0].text[f"notes/{i}"] == f"agent {i} was here\n"
                    assert nodes[3].meta[f"status/{i}"] == {"state": "busy", "n": i}
                assert hub.connected == [f"agent-{i}" for i in range(4)]
                peers = hub.peers
                assert all(p.connected and p.exchanges > 0 for p in peers.values())
                assert all(p.link.bytes_received > 0 for p in peers.values())
                status = sessions[0].status()
                assert status.connected and status.role == "client" and status.peer_id == "hub"
            finally:
                await close_all(sessions)

    run(main())


def test_chain_of_hubs_forms_a_tree() -> None:
    """root <- mid <- leaf-a, and root <- leaf-b: a node that serves and connects."""

    async def main() -> None:
        root, mid, leaf_a, leaf_b = (Memory(n) for n in ("root", "mid", "leaf-a", "leaf-b"))
        async with (
            serve(root, HOST, 0, secret=SECRET) as root_hub,
            serve(mid, HOST, 0, secret=SECRET) as mid_hub,
            connect(mid, root_hub.url, secret=SECRET, **FAST) as mid_up,
            connect(leaf_a, mid_hub.url, secret=SECRET, **FAST) as a_up,
            connect(leaf_b, root_hub.url, secret=SECRET, **FAST),
        ):
            assert not mid.is_root and root.is_root
            leaf_a.text["from-a"] = "deep leaf\n"
            leaf_b.text["from-b"] = "shallow leaf\n"
            root.meta["from-root"] = 1
            mid.meta["from-mid"] = 2
            everyone = (root, mid, leaf_a, leaf_b)
            await wait_until(lambda: converged(*everyone), what="tree convergence")
            assert leaf_b.text["from-a"] == "deep leaf\n"
            assert leaf_a.meta["from-root"] == 1 and root.meta["from-mid"] == 2
            # A write two hops away arrives without anyone calling notify().
            leaf_b.text["from-b"] += "more\n"
            await wait_until(lambda: converged(*everyone), what="second convergence")
            assert leaf_a.text["from-b"] == "shallow leaf\nmore\n"
            await a_up.sync()
            await mid_up.sync()
            assert root.text["from-a"] == "deep leaf\n"

    run(main())


def test_sync_waits_for_the_acknowledgement() -> None:
    async def main() -> None:
        hub_memory, a, b = Memory("hub"), Memory("a"), Memory("b")
        # Long idle periods: only sync() (and the local-change check) drive cycles.
        slow = {"period": (0.02, 10.0)}
        async with serve(hub_memory, HOST, 0, secret=SECRET) as hub:
            sa, sb = await start_nodes(hub.url, [a, b], **slow)
            try:
                await sa.wait_connected(GUARD)
                a.text["plan"] = "1. write the transport\n"
                a.meta["owner"] = "a"
                await sa.sync(timeout=GUARD)
                # Acknowledged: the hub holds both writes now, no waiting.
                assert hub_memory.text["plan"] == "1. write the transport\n"
                assert hub_memory.meta["owner"] == "a"
                # b's next acknowledged exchange brings what the hub holds.
                await sb.sync(timeout=GUARD)
                assert b.text["plan"] == "1. write the transport\n"
                assert b.meta["owner"] == "a"
                for _ in range(5):
                    b.text["plan"] += "2. test it\n"
                    await sb.sync(timeout=GUARD)
                    await sa.sync(timeout=GUARD)
                    assert a.text["plan"] == b.text["plan"] == hub_memory.text["plan"]
            finally:
                await close_all([sa, sb])
            with pytest.raises(Exception, match="closed"):
                await sa.sync(1)

    run(main())


def test_local_writes_and_hub_hints_cut_the_idle_period() -> None:
    """With an hour-long idle period a write still travels: the writer
    notices its own change, the hub wakes the other node. No clock decides
    the result: both sessions are in an hour-long pause when each write is
    made, so only those two wake-ups can carry it within the hang guard."""
    hour = 3600.0

    async def idle(session: Session) -> None:
        """Until ``session`` pauses for ``hour``: its period doubles on each
        quiet cycle; jump it to half an hour so the next quiet one gets there."""

        def pausing_for_an_hour() -> bool:
            if session.status().period >= hour:
                return True
            session._period = max(session._period, hour / 2)
            return False

        await wait_until(pausing_for_an_hour, what="an hour-long pause")

    async def main() -> None:
        hub_memory, a, b = Memory("hub"), Memory("a"), Memory("b")
        async with serve(hub_memory, HOST, 0, secret=SECRET) as hub:
            sa, sb = await start_nodes(hub.url, [a, b], period=(0.02, hour))
            try:
                a.text["x"] = "0"
                await wait_until(lambda: converged(hub_memory, a, b), what="first sync")
                for value in ("1", "2", "3"):

                    def arrived(value: str = value) -> bool:
                        return b.text.get("x") == value

                    await idle(sa)
                    await idle(sb)
                    exchanges = sb.status().exchanges
                    a.text["x"] = value  # no notify(): noticed by the local-change check
                    await wait_until(arrived, what="propagation")
                    assert sb.status().exchanges > exchanges
            finally:
                await close_all([sa, sb])

    run(main())


def test_an_idle_session_sends_nothing_until_there_is_something_to_say() -> None:
    """Push-driven by default: once quiet, neither side sends a sync frame
    (liveness is the WebSocket keepalive); a write on one node still reaches
    the other at once, by the writer's local-change check and the hub's
    wake-up. Polling every 20 ms, as a session with an idle period would,
    fails the silence check."""

    async def main() -> None:
        hub_memory, a, b = Memory("hub"), Memory("a"), Memory("b")
        async with serve(hub_memory, HOST, 0, secret=SECRET) as hub:
            sa, sb = await start_nodes(hub.url, [a, b], period=(0.02, None))
            try:
                a.text["x"] = "0"
                await wait_until(lambda: converged(hub_memory, a, b), what="first sync")
                for value in ("1", "2"):
                    await wait_until(
                        lambda: sa.status().period is None and sb.status().period is None,
                        what="both sessions idle",
                    )
                    sent = [s.status().link.bytes_sent for s in (sa, sb)]
                    await asyncio.sleep(0.5)  # 25 polls' worth at the 20 ms minimum period
                    assert [s.status().link.bytes_sent for s in (sa, sb)] == sent
                    a.text["x"] = value

                    def arrived(value: str = value) -> bool:
                        return b.text.get("x") == value

                    await wait_until(arrived, what="propagation")
            finally:
                await close_all([sa, sb])

    run(main())


def test_reconnect_after_hub_restart_with_a_fresh_replica() -> None:
    """The hub's server closes; a new hub with an empty replica comes up on the
    same port: nodes reconnect and refill it, writes made meanwhile included."""

    async def main() -> None:
        nodes = [Memory(f"n{i}") for i in range(3)]
        first = Memory("hub")
        hub: Hub = await serve(first, HOST, 0, secret=SECRET).start()
        port = hub.port
        sessions = await start_nodes(hub.url, nodes)
        try:
            nodes[0].text["shared"] = "alpha\n"
            nodes[1].meta["facts"] = {"sky": "blue"}
            for i, m in enumerate(nodes):
                m.text[f"own/{i}"] = f"{i}\n"
            for s in sessions:
                await s.sync(GUARD)
            await wait_until(lambda: converged(first, *nodes), what="convergence")
            await hub.close()
            await wait_until(lambda: not any(s.connected for s in sessions), what="disconnect")
            # Writes while the hub is away.
            nodes[2].text["while-down"] = "written offline\n"
            nodes[0].meta["offline"] = True
            second = Memory("hub")
            async with serve(second, HOST, port, secret=SECRET):
                await wait_until(
                    lambda: converged(second, *nodes) and "while-down" in second.text,
                    what="refilled hub",
                )
                assert second.text["shared"] == "alpha\n"
                assert second.meta["facts"] == {"sky": "blue"} and second.meta["offline"] is True
                assert all(s.status().hub_restarts == 1 for s in sessions)
                assert all(s.status().connections == 2 for s in sessions)
                # And it goes on normally.
                nodes[1].text["after"] = "back\n"
                await wait_until(lambda: converged(second, *nodes), what="convergence")
        finally:
            await close_all(sessions)

    run(main())


def test_reconnect_to_the_same_hub_keeps_the_link() -> None:
    """A dropped connection to a hub that kept its replica costs no resend."""

    async def main() -> None:
        hub_memory, a = Memory("hub"), Memory("a")
        hub: Hub = await serve(hub_memory, HOST, 0, secret=SECRET).start()
        port = hub.port
        (sa,) = await start_nodes(hub.url, [a])
        try:
            a.text["doc"] = "x" * 5000
            await sa.sync(GUARD)
            await hub.close()
            await wait_until(lambda: not sa.connected, what="disconnect")
            fulls_before = sa.status().link.fulls_sent
            async with serve(hub_memory, HOST, port, secret=SECRET) as again:
                await sa.sync(GUARD)
                assert sa.status().hub_restarts == 0
                a.text["doc"] += "y"
                await sa.sync(GUARD)
                assert hub_memory.text["doc"] == a.text["doc"]
                # No whole-document resend (counted, not sized: idle cycles
                # add bytes the longer the machine takes).
                assert sa.status().link.fulls_sent == fulls_before
                assert sa.status().link.resyncs == 0
                assert again.peers["a"].connections == 1
        finally:
            await sa.close()

    run(main())


def test_fault_proxy_swarm_converges() -> None:
    async def main() -> None:
        hub_memory = Memory("hub")
        hub_memory.meta["log"] = []
        async with (
            serve(hub_memory, HOST, 0, secret=SECRET) as hub,
            FaultProxy(
                hub.url,
                seed=11,
                loss=0.1,
                duplicate=0.1,
                reorder=0.1,
                disconnect=0.02,
                delay=(0.0, 0.01),
            ) as proxy,
        ):
            nodes = [Memory(f"p{i}") for i in range(4)]
            sessions = await start_nodes(proxy.url, nodes)
            try:
                await wait_until(lambda: converged(hub_memory, *nodes), what="start")
                for step in range(15):
                    for i, m in enumerate(nodes):
                        m.text[f"n/{i}"] = m.text.get(f"n/{i}", "") + f"{step}\n"
                        m.meta["log"].append(f"{i}.{step}")
                    await asyncio.sleep(0.02)
                await wait_until(lambda: converged(hub_memory, *nodes), what="convergence")
                assert len(hub_memory.meta["log"]) == 60
                stats = proxy.stats
                assert stats.lost and stats.duplicated and stats.reordered
                rejected = sum(s.status().rejected for s in sessions) + sum(
                    p.rejected for p in hub.peers.values()
                )
                assert rejected > 0  # duplicates and reorderings were refused
            finally:
                await close_all(sessions)

    run(main())


def test_a_lost_wake_up_is_sent_again() -> None:
    """A push-driven node behind a relay that loses half of all messages
    still hears of every write: a wake-up that got lost is sent again while
    the node has not come back (it never polls on its own)."""

    async def main() -> None:
        hub_memory, a, b = Memory("hub"), Memory("a"), Memory("b")
        async with (
            serve(hub_memory, HOST, 0, secret=SECRET, poke_retry=0.2) as hub,
            FaultProxy(hub.url, seed=5, loss=0.5, spare_first=2) as proxy,
        ):
            (sa,) = await start_nodes(hub.url, [a])
            (sb,) = await start_nodes(proxy.url, [b])
            try:
                for step in range(12):
                    a.text["x"] = f"{step}\n"

                    def arrived(step: int = step) -> bool:
                        return b.text.get("x") == f"{step}\n"

                    await wait_until(arrived, what=f"write {step} at the node behind the relay")
                assert proxy.stats.lost > 0
            finally:
                await close_all([sa, sb])

    run(main())


# -- the synchronous wrapper ------------------------------------------------------


@pytest.mark.parametrize("durable", [False, True], ids=["in-memory", "durable"])
def test_sync_node_from_plain_threads(durable: bool, tmp_path: Any) -> None:
    """Several agents in one process, each in its own thread, two of them
    sharing one node (and its lock); durable replicas save from the loop thread."""

    def memory(name: str) -> Memory:
        return Memory(name, path=tmp_path / f"{name}.db" if durable else None)

    with SyncNode(memory("hub"), secret=SECRET, serve=(HOST, 0)) as hub:
        url = hub.url
        with (
            SyncNode(memory("node-a"), secret=SECRET, url=url, connect_options=FAST) as node_a,
            SyncNode(memory("node-b"), secret=SECRET, url=url, connect_options=FAST) as node_b,
        ):
            node_a.wait_connected(GUARD)
            node_b.wait_connected(GUARD)
            errors: list[BaseException] = []

            def agent(node: SyncNode, name: str) -> None:
                try:
                    for i in range(20):

                        def write(m: Memory, i: int = i) -> None:
                            m.text[f"log/{name}"] = m.text.get(f"log/{name}", "") + f"{i}\n"
                            m.text["shared"] = m.text.get("shared", "") + f"{name}:{i}\n"
                            m.meta[f"agent/{name}"] = {"done": i}

                        node.write(write)
                        if i % 5 == 4:
                            node.sync(timeout=GUARD)
                    node.sync(timeout=GUARD)
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)

            threads = [
                threading.Thread(target=agent, args=(node_a, "a1")),
                threading.Thread(target=agent, args=(node_a, "a2")),
                threading.Thread(target=agent, args=(node_b, "b1")),
                threading.Thread(target=agent, args=(hub, "h1")),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(GUARD)
            assert not errors, errors
            assert not any(t.is_alive() for t in threads)

            def digests() -> set[str]:
                return {n.read(lambda m: m.digest()) for n in (hub, node_a, node_b)}

            deadline = time.monotonic() + GUARD
            while len(digests()) != 1:
                assert time.monotonic() < deadline, "SyncNodes did not converge"
                node_a.sync(timeout=GUARD)
                node_b.sync(timeout=GUARD)
            shared = hub.read(lambda m: m.text["shared"])
            final = hub.read(lambda m: m.meta.to_py())
            for name in ("a1", "a2", "b1", "h1"):
                assert final[f"agent/{name}"] == {"done": 19}
                for i in range(20):
                    assert f"{name}:{i}\n" in shared
            status = node_a.status()
            assert status["hub"].connected and status["hub"].exchanges > 0
            assert set(hub.status()) == {"node-a", "node-b"}
            # sync() under the lock would deadlock: refused.
            with node_a.lock, pytest.raises(Exception, match=r"release node\.lock"):
                node_a.sync(1)
    with pytest.raises(Exception, match="closed"):
        node_a.sync(1)


# -- several processes ------------------------------------------------------------

WORKER_ENV = "HYBRIDSYNC_NET_TEST_SECRET"
# Small compaction thresholds: the root starts new metadata epochs often, so
# kills land before, during and after crossings, and a hub restarted from
# nothing meets nodes on epochs of its previous life.
WORKER_COMPACTION = CompactionPolicy(max_ratio=1.2, slack_bytes=512)


def _worker_memory(name: str, data: str | None) -> Memory:
    return Memory(name, path=data, compaction=WORKER_COMPACTION)


class Proc:
    """A worker process and what it printed."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.lines: list[str] = []
        self.acks: list[str] = []
        self.dumps: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.ready = asyncio.Event()
        self.errors: collections.deque[str] = collections.deque(maxlen=40)
        self.reader = asyncio.create_task(self._read())
        self.error_reader = asyncio.create_task(self._read_errors())

    async def _read_errors(self) -> None:
        """Keep the tail of stderr (minus the routine rejections) for failure reports."""
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            if "replayed or reordered" not in line:
                self.errors.append(line)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode().rstrip("\n")
            if line.startswith("ACK "):
                self.acks.append(line[4:])
            elif line.startswith("DUMP "):
                self.dumps.put_nowait(json.loads(line[5:]))
            else:
                self.lines.append(line)
                if line.startswith(("READY", "PORT ")):
                    self.ready.set()

    async def command(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()

    async def dump(self, timeout: float = 120.0) -> dict[str, Any]:
        await self.command("dump")
        return await asyncio.wait_for(self.dumps.get(), timeout)

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        await self.reader
        await self.error_reader

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with_stdin = self.proc.stdin
            if with_stdin is not None and not with_stdin.is_closing():
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self.command("quit")
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await self.reader
        await self.error_reader


async def spawn(name: str, *args: str) -> Proc:
    env = dict(os.environ, **{WORKER_ENV: SECRET.hex()})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        os.path.abspath(__file__),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        limit=1 << 26,
    )
    return Proc(name, proc)


async def until(predicate: Callable[[], bool | Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def _all_beyond(now: Awaitable[dict[str, int]], then: dict[str, int], n: int) -> bool:
    current = await now
    return all(current[k] >= then[k] + n for k in then)


def differences(dumps: dict[str, dict[str, Any]]) -> str:
    """Where replicas differ (for failure messages)."""
    out = []
    names = sorted({doc for d in dumps.values() for doc in d["text"]})
    for doc in names:
        versions = {n: d["text"].get(doc) for n, d in dumps.items()}
        if len({json.dumps(v) for v in versions.values()}) > 1:
            sizes = {n: None if v is None else len(v) for n, v in versions.items()}
            out.append(f"text {doc!r}: sizes {sizes}")
    keys = sorted({k for d in dumps.values() for k in d["meta"]})
    for key in keys:
        versions = {n: d["meta"].get(key) for n, d in dumps.items()}
        if len({json.dumps(v, sort_keys=True) for v in versions.values()}) > 1:
            short = {n: (len(v) if isinstance(v, list) else v) for n, v in versions.items()}
            out.append(f"meta {key!r}: {short}")
    return "; ".join(out) or "digests differ only"


def acked_tags(acks: list[str]) -> list[str]:
    """Every tag a list of ACK lines covers: ``node.gen.i`` acknowledges
    ``node.gen.1`` .. ``node.gen.i``."""
    best: dict[tuple[str, str], int] = {}
    for tag in acks:
        node, gen, i = tag.split(".")
        best[node, gen] = max(best.get((node, gen), 0), int(i))
    return [f"{node}.{gen}.{i}" for (node, gen), n in best.items() for i in range(1, n + 1)]


@pytest.mark.parametrize("durable", [False, True], ids=["empty-restarts", "durable"])
def test_multiprocess_swarm_with_faults_and_kill_9(durable: bool, tmp_path: Any) -> None:
    """1 hub + 4 node processes through a fault-injecting proxy, concurrent
    writes to private and shared documents and metadata; kill -9 of a node
    and of the hub (on the same port), restarted with an empty replica or
    from their files (durable); metadata compaction on. All replicas converge
    and every acknowledged write survives."""

    def data(name: str) -> tuple[str, ...]:
        return (str(tmp_path / f"{name}.db"),) if durable else ()

    async def main() -> None:
        procs: list[Proc] = []
        try:
            hub = await spawn("hub", "hub", "0", "1", *data("hub"))
            procs.append(hub)
            await asyncio.wait_for(hub.ready.wait(), GUARD)
            port = int(next(x for x in hub.lines if x.startswith("PORT ")).split()[1])
            async with FaultProxy(
                f"ws://{HOST}:{port}",
                seed=2024,
                loss=0.05,
                duplicate=0.05,
                reorder=0.05,
                disconnect=0.01,
                delay=(0.0, 0.005),
            ) as proxy:
                nodes = {
                    f"n{i}": await spawn(
                        f"n{i}", "node", f"n{i}", proxy.url, "1", str(i), *data(f"n{i}")
                    )
                    for i in range(1, 5)
                }
                procs.extend(nodes.values())
                all_acks: list[str] = []

                def acks_of(p: Proc) -> int:
                    return len(p.acks)

                async def more_acks(n: int, what: str) -> None:
                    """Let the swarm write until every node has ``n`` more
                    acknowledgements (3 writes each): counted, not timed."""
                    base = {name: acks_of(p) for name, p in nodes.items()}
                    await until(
                        lambda: all(acks_of(p) >= base[m] + n for m, p in nodes.items()),
                        GUARD,
                        what,
                    )

                await more_acks(4, "acks")

                # kill -9 a node in the middle of its cycles (right after an
                # acknowledgement: amid its next writes), restart it empty.
                victim = nodes["n4"]
                seen = acks_of(victim)
                await until(lambda: acks_of(victim) > seen, GUARD, "an ack before the kill")
                await victim.kill()
                all_acks += victim.acks
                reborn = await spawn("n4", "node", "n4", proxy.url, "2", "44", *data("n4"))
                procs.append(reborn)
                nodes["n4"] = reborn
                await until(lambda: acks_of(reborn) >= 2, GUARD, "the restarted node's acks")
                await more_acks(4, "acks after the node's restart")

                # kill -9 the hub; restart it empty on the same port.
                await hub.kill()
                before = {name: acks_of(p) for name, p in nodes.items()}

                async def written() -> dict[str, int]:
                    return {
                        n: (await p.dump())["meta"][f"agent/{n}"]["i"] for n, p in nodes.items()
                    }

                # The nodes write on, unacknowledged: a few writes each.
                offline = await written()
                await until(
                    lambda: _all_beyond(written(), offline, 3),
                    GUARD,
                    "writes while the hub is down",
                )
                hub = await spawn("hub", "hub", str(port), "2", *data("hub"))
                procs.append(hub)
                await asyncio.wait_for(hub.ready.wait(), GUARD)
                await until(
                    lambda: all(acks_of(p) > before[n] + 1 for n, p in nodes.items()),
                    GUARD,
                    "acks from the restarted hub",
                )
                await more_acks(4, "acks after the hub's restart")
                # Until the proxy injected every kind of fault and the hub
                # started a new metadata epoch (counted, not timed).
                stats = proxy.stats

                async def faults_and_epochs() -> bool:
                    if not (stats.lost and stats.duplicated and stats.disconnects):
                        return False
                    return bool((await hub.dump())["meta_compactions"] > 0)

                await until(faults_and_epochs, GUARD, "every kind of fault and a new epoch")

                for p in nodes.values():
                    await p.command("stop")
                dumps: dict[str, dict[str, Any]] = {}

                async def all_equal() -> bool:
                    for name, p in [("hub", hub), *nodes.items()]:
                        dumps[name] = await p.dump()
                    return len({d["digest"] for d in dumps.values()}) == 1

                try:
                    await until(all_equal, GUARD, "convergence of all replicas")
                except AssertionError as exc:
                    raise AssertionError(f"{exc}: {differences(dumps)}") from None
                for p in nodes.values():
                    all_acks += p.acks
                final = dumps["hub"]
                text, log = final["text"], final["meta"]["log"]
                tags = acked_tags(all_acks)
                assert len(tags) > 40
                missing = [
                    f"{t} ({', '.join(where)})"
                    for t in tags
                    if (
                        where := [
                            place
                            for place, ok in (
                                ("notes", f"{t}\n" in text[f"notes/{t.split('.')[0]}"]),
                                ("shared", f"{t}\n" in text["shared"]),
                                ("log", t in log),
                            )
                            if not ok
                        ]
                    )
                ]
                metrics = {name: d["metrics"] for name, d in dumps.items()}
                assert not missing, f"acknowledged writes lost: {missing[:10]}; {metrics}"
                assert final["meta"]["agent/n1"]["gen"] == 1
                assert final["meta"]["agent/n4"]["gen"] == 2
                assert final["meta_compactions"] > 0  # the hub started new epochs
                if not durable:  # the restarted hub took back the nodes' previous history
                    assert final["meta_adopted"] + final["meta_merged"] > 0
                assert proxy.stats.lost and proxy.stats.duplicated and proxy.stats.disconnects
        except AssertionError as exc:
            tails = "\n".join(
                f"--- {p.name} (pid {p.proc.pid}) stderr:\n" + "\n".join(p.errors) for p in procs
            )
            raise AssertionError(f"{exc}\n{tails}") from None
        finally:
            for p in procs:
                await p.stop()

    run(main(), timeout=1800)


# -- worker processes -------------------------------------------------------------


def _commands() -> asyncio.Queue[str]:
    """Lines of stdin, delivered to the event loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()

    def reader() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line.strip())
        loop.call_soon_threadsafe(queue.put_nowait, "quit")

    threading.Thread(target=reader, daemon=True).start()
    return queue


def _dump(memory: Memory, links: list[Any]) -> None:
    counters = ("resyncs", "hunks_failed", "creation_conflicts", "merges", "fulls_sent")
    metrics = {c: sum(getattr(link.metrics, c) for link in links) for c in counters}
    state = {
        "digest": memory.digest(),
        "text": dict(memory.text),
        "meta": memory.meta.to_py(),
        "metrics": metrics,
        "meta_epoch": memory.meta.epoch,
        "meta_compactions": memory.meta.metrics.compactions,
        "meta_merged": memory.meta.metrics.merged_writes,
        "meta_adopted": memory.meta.metrics.adoptions,
    }
    print("DUMP " + json.dumps(state), flush=True)


async def _hub_worker(port: int, generation: int, data: str | None) -> None:
    secret = bytes.fromhex(os.environ[WORKER_ENV])
    memory = _worker_memory("hub", data)
    if generation == 1:
        # Created once, before any node writes: one list every node appends
        # to, one document with a section per node.
        memory.meta["log"] = []
        memory.text["shared"] = "".join(f"## n{i}\n" for i in range(1, 5))
    async with serve(memory, HOST, port, secret=secret, handshake_timeout=10) as hub:
        print(f"PORT {hub.port}", flush=True)
        commands = _commands()
        while True:
            command = await commands.get()
            if command == "dump":
                _dump(memory, list(hub.links.values()))
            elif command == "quit":
                return


def _append_to_section(text: str, name: str, tag: str) -> str:
    """Add a line at the end of the node's section of the shared document.

    Every node edits the one document concurrently, each in its own section:
    the engine's character-level three-way merge can interleave concurrent
    insertions of look-alike lines at neighbouring positions (it keeps every
    character but may split lines), so the writes are kept apart by at least
    a section header."""
    head = f"## {name}\n"
    at = text.find(head)
    if at < 0:
        return text + head + f"{tag}\n"
    end = text.find("## ", at + len(head))
    end = len(text) if end < 0 else end
    return text[:end] + f"{tag}\n" + text[end:]


async def _node_worker(name: str, url: str, generation: int, seed: int, data: str | None) -> None:
    secret = bytes.fromhex(os.environ[WORKER_ENV])
    rng = random.Random(seed)  # jitter between writes
    memory = _worker_memory(name, data)
    async with connect(memory, url, secret=secret, **FAST) as session:
        # Learn the swarm's state before writing: a replica restarted under its
        # old id must not write metadata before it has its own history back
        # (the CRDT client id derives from the replica id and the metadata
        # epoch): sync until two exchanges in a row bring nothing new.
        last = ""
        while True:
            try:
                await session.sync(timeout=5)
            except SyncTimeoutError:
                continue
            digest = memory.digest()
            if digest == last and "log" in memory.meta and "shared" in memory.text:
                break
            last = digest
        print("READY", flush=True)
        commands = _commands()
        writing, i = True, 0
        while True:
            if writing:
                i += 1
                tag = f"{name}.{generation}.{i}"
                own = f"notes/{name}"
                memory.text[own] = memory.text.get(own, "") + f"{tag}\n"
                memory.text["shared"] = _append_to_section(memory.text["shared"], name, tag)
                memory.meta[f"agent/{name}"] = {"gen": generation, "i": i}
                memory.meta["log"].append(tag)
                session.notify()
                if i % 3 == 0:
                    try:
                        await session.sync(timeout=2)
                        print(f"ACK {tag}", flush=True)
                    except SyncTimeoutError:
                        pass
            try:
                pause = rng.uniform(0.01, 0.05) if writing else 1.0
                command = await asyncio.wait_for(commands.get(), pause)
            except asyncio.TimeoutError:
                continue
            if command == "stop":
                writing = False
            elif command == "dump":
                _dump(memory, [session.link])
            elif command == "quit":
                return


if __name__ == "__main__":
    role, *rest = sys.argv[1:]
    if role == "hub":
        asyncio.run(_hub_worker(int(rest[0]), int(rest[1]), rest[2] if len(rest) > 2 else None))
    elif role == "node":
        data = rest[4] if len(rest) > 4 else None
        asyncio.run(_node_worker(rest[0], rest[1], int(rest[2]), int(rest[3]), data))
    else:
        raise SystemExit(f"unknown worker role {role!r}")
