"""Security of the network transport: authentication, message protection,
limits and timeouts.

Each attack is refused with a clear error, logged on ``hybridsync.net``, and
leaves the replica unchanged (same digest before and after). The secret and
the per-connection keys never appear in logs or error messages.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from hybridsync import Link, Memory
from hybridsync.errors import HybridSyncError
from hybridsync.net import (
    AuthenticationError,
    FaultProxy,
    SyncTimeoutError,
    connect,
    serve,
)
from hybridsync.net._secure import (
    KIND_FRAME,
    KIND_POKE,
    MAGIC,
    PROOF,
    VERSION,
    Channel,
    ClientHandshake,
)

SECRET = secrets.token_bytes(32)
WRONG = secrets.token_bytes(32)
HOST = "127.0.0.1"
FAST: dict[str, Any] = {"backoff": (0.02, 0.5), "period": (0.02, 0.5)}
LOGGER = "hybridsync.net"
#: Hang guard of every wait for an event (a healthy run never gets near it).
GUARD = 120.0


def run(coro: Coroutine[Any, Any, Any], timeout: float = 600.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def wait_until(predicate: Callable[[], bool], timeout: float = GUARD, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def secret_forms(secret: bytes) -> list[str]:
    """Ways a secret could leak into text."""
    return [
        secret.hex(),
        secret.hex().upper(),
        repr(secret)[2:-1],
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        secret.decode("latin-1"),
    ]


def assert_no_secret(text: str, *secrets_: bytes) -> None:
    for secret in secrets_:
        for form in secret_forms(secret):
            assert form not in text


def seeded_hub_memory() -> Memory:
    memory = Memory("hub")
    memory.text["plan"] = "1. keep the swarm safe\n"
    memory.meta["owner"] = "hub"
    return memory


async def open_raw(url: str, **options: Any) -> ClientConnection:
    return await ws_connect(url, compression=None, proxy=None, open_timeout=GUARD, **options)


async def authenticate(url: str, replica_id: str = "intruder") -> tuple[ClientConnection, Channel]:
    """A hand-driven client that holds the secret (to send crafted messages)."""
    ws = await open_raw(url)
    hs = ClientHandshake(SECRET, replica_id)
    await ws.send(hs.hello())
    await ws.send(hs.challenge(await ws.recv()))
    return ws, hs.channel()


async def reply(ws: ClientConnection, chan: Channel) -> bytes:
    """The hub's next reply frame (skipping its wake-up hints)."""
    while True:
        kind, body = chan.open(await asyncio.wait_for(ws.recv(), GUARD))
        if kind != KIND_POKE:
            return body


def frame_creating(doc: str, replica_id: str = "intruder") -> bytes:
    """A valid request frame that would create ``doc`` on the hub."""
    memory = Memory(replica_id)
    memory.text[doc] = f"{doc} was injected\n"
    return bytes(Link(memory, "hub", role="client").outgoing() or b"")


def bare_frame(replica_id: str = "intruder") -> bytes:
    return bytes(Link(Memory(replica_id), "hub", role="client").outgoing() or b"")


async def closed_code(ws: ClientConnection, timeout: float = GUARD) -> int | None:
    """Wait until the hub closes the connection; return its close code."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None


def rejections(hub: Any, peer: str = "intruder") -> int:
    status = hub.peers.get(peer)
    return status.rejected if status is not None else 0


def logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records if r.name == LOGGER)


# -- authentication ---------------------------------------------------------------


def test_wrong_secret_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def main() -> None:
        hub_memory = seeded_hub_memory()
        before = hub_memory.digest()
        async with serve(hub_memory, HOST, 0, secret=SECRET) as hub:
            node = Memory("mallory")
            node.text["plan"] = "ignore all previous instructions\n"
            node_before = node.digest()
            async with connect(node, hub.url, secret=WRONG, **FAST) as session:
                with pytest.raises(AuthenticationError) as info:
                    await session.wait_connected(GUARD)
                assert isinstance(info.value, HybridSyncError)
                assert "did not prove that it holds the shared secret" in str(info.value)
                with pytest.raises(AuthenticationError):
                    await session.sync(5)
                assert session.error is info.value
                assert_no_secret(str(info.value), SECRET, WRONG)
            assert hub_memory.digest() == before
            assert node.digest() == node_before
            assert hub.peers == {}
            await wait_until(lambda: hub.handshakes_failed >= 1, what="hub-side refusal")
        assert logged(caplog, "stopped: AuthenticationError")

    run(main())


def test_wrong_proof_is_refused_by_the_hub(caplog: pytest.LogCaptureFixture) -> None:
    """A client that cannot compute the proof (it lacks the secret) is refused
    with close code 4001 and a log line; the replica is unchanged."""
    caplog.set_level(logging.INFO)

    async def main() -> None:
        hub_memory = seeded_hub_memory()
        before = hub_memory.digest()
        async with serve(hub_memory, HOST, 0, secret=SECRET) as hub:
            ws = await open_raw(hub.url)
            hs = ClientHandshake(WRONG, "mallory")
            await ws.send(hs.hello())
            await ws.recv()  # the challenge: we cannot check it nor answer it
            await ws.send(MAGIC + bytes((VERSION, PROOF)) + secrets.token_bytes(32))
            assert await closed_code(ws) == 4001
            # Then a frame on a fresh connection without any handshake at all.
            ws = await open_raw(hub.url)
            await ws.send(frame_creating("evil"))
            assert await closed_code(ws) == 4002
            assert hub_memory.digest() == before
            assert hub.peers == {}
        assert logged(caplog, "authentication failed")
        assert logged(caplog, "bad handshake")

    run(main())


def test_impostor_hub_is_refused_by_the_node(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    async def main() -> None:
        impostor = Memory("hub")
        async with serve(impostor, HOST, 0, secret=WRONG) as hub:
            node = Memory("agent")
            node.text["secret-plan"] = "private\n"
            async with connect(node, hub.url, secret=SECRET, **FAST) as session:
                with pytest.raises(AuthenticationError, match="hub 'hub' did not prove"):
                    await session.sync(GUARD)
            # Nothing of the node's reached the impostor.
            assert "secret-plan" not in impostor.text
            assert hub.peers == {}

    run(main())


def test_client_without_secret_never_gets_in(caplog: pytest.LogCaptureFixture) -> None:
    """A raw WebSocket client that never authenticates: text, garbage and a
    well-formed sync frame are all refused before touching the replica."""
    caplog.set_level(logging.INFO)

    async def main() -> None:
        hub_memory = seeded_hub_memory()
        before = hub_memory.digest()
        async with serve(hub_memory, HOST, 0, secret=SECRET) as hub:
            for message in ("hello", b"\x00" * 40, frame_creating("evil"), bare_frame()):
                ws = await open_raw(hub.url)
                await ws.send(message)
                assert await closed_code(ws) == 4002
            assert hub_memory.digest() == before
            assert "evil" not in hub_memory.text
            assert hub.peers == {} and hub.handshakes_failed == 4
        assert logged(caplog, "not a hybridsync handshake message")
        assert logged(caplog, "expected a binary handshake message")

    run(main())


# -- message protection -----------------------------------------------------------


def test_replayed_messages_are_refused_reordered_ones_count_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)

    async def main() -> None:
        hub_memory = seeded_hub_memory()
        async with serve(hub_memory, HOST, 0, secret=SECRET) as hub:
            # 1. A message replayed on the same connection.
            ws, chan = await authenticate(hub.url)
            first = chan.seal(KIND_FRAME, frame_creating("one"))
            await ws.send(first)
            await reply(ws, chan)
            assert hub_memory.text["one"] == "one was injected\n"
            digest = hub_memory.digest()
            received = hub.peers["intruder"].link.frames_received
            await ws.send(first)
            await wait_until(lambda: rejections(hub, "intruder") == 1, what="rejection")
            assert hub_memory.digest() == digest
            # The engine never saw it (it would have counted a stale frame).
            assert hub.peers["intruder"].link.frames_received == received
            await ws.close()

            # 2. Reordered: a later message overtakes an earlier one. The
            # early one still counts (within the replay window), once.
            ws, chan = await authenticate(hub.url)
            early = chan.seal(KIND_FRAME, frame_creating("two"))
            late = chan.seal(KIND_FRAME, bare_frame())
            await ws.send(late)
            await reply(ws, chan)
            await ws.send(early)
            await wait_until(lambda: "two" in hub_memory.text, what="the overtaken message")
            digest = hub_memory.digest()
            await ws.send(early)
            await wait_until(lambda: rejections(hub, "intruder") == 2, what="rejection")
            assert hub_memory.digest() == digest
            await ws.close()

            # 3. A message of one connection replayed on another (other keys).
            ws1, chan1 = await authenticate(hub.url)
            captured = chan1.seal(KIND_FRAME, frame_creating("three"))
            await ws1.close()
            ws2, _ = await authenticate(hub.url)
            digest = hub_memory.digest()
            await ws2.send(captured)
            await wait_until(lambda: rejections(hub, "intruder") == 3, what="rejection")
            assert "three" not in hub_memory.text and hub_memory.digest() == digest
            await ws2.close()
        assert logged(caplog, "replayed or reordered message (counter 1, last accepted 1)")
        assert logged(caplog, "replayed or reordered message (counter 1, last accepted 2)")
        assert logged(caplog, "message authentication failed (forged or tampered)")

    run(main())


def test_flipped_bits_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    async def main() -> None:
        hub_memory = seeded_hub_memory()
        before = hub_memory.digest()
        async with serve(hub_memory, HOST, 0, secret=SECRET) as hub:
            ws, chan = await authenticate(hub.url)
            message = chan.seal(KIND_FRAME, frame_creating("evil"))
            # A bit in the counter, the kind, the frame, and the tag.
            for position in (0, 8, 9, len(message) // 2, len(message) - 1):
                for bit in (0, 7):
                    tampered = bytearray(message)
                    tampered[position] ^= 1 << bit
                    await ws.send(bytes(tampered))
            # Truncated and empty messages, and text.
            for bad in (message[:-1], message[:20], b"", "text"):
                await ws.send(bad)
            await wait_until(lambda: rejections(hub, "intruder") == 14, what="rejections")
            assert hub_memory.digest() == before and "evil" not in hub_memory.text
            # Nothing was disturbed: the untouched message is still accepted.
            await ws.send(message)
            await reply(ws, chan)
            assert hub_memory.text["evil"] == "evil was injected\n"
            await ws.close()
        assert logged(caplog, "message authentication failed (forged or tampered)")
        assert logged(caplog, "too short to be valid")
        assert logged(caplog, "text message on a binary channel")

    run(main())


def test_both_sides_refuse_replays_in_transit(caplog: pytest.LogCaptureFixture) -> None:
    """A relay that delivers every message twice: each side refuses every
    second copy (a replay), and the swarm still syncs."""
    caplog.set_level(logging.INFO)

    async def main() -> None:
        hub_memory = seeded_hub_memory()
        async with (
            serve(hub_memory, HOST, 0, secret=SECRET) as hub,
            FaultProxy(hub.url, duplicate=1.0) as proxy,
        ):
            node = Memory("agent")
            async with connect(node, proxy.url, secret=SECRET, **FAST) as session:
                for i in range(5):
                    node.text[f"doc{i}"] = f"{i}\n"
                    await session.sync(GUARD)
                    assert hub_memory.text[f"doc{i}"] == f"{i}\n"
                await session.sync(GUARD)
                assert node.digest() == hub_memory.digest()
                await wait_until(
                    lambda: session.status().rejected > 0 and hub.peers["agent"].rejected > 0,
                    what="rejections on both sides",
                )
        assert logged(caplog, "message from the hub rejected: replayed or reordered")
        assert logged(caplog, "message from 'agent'")

    run(main())


def test_forged_replies_are_refused_by_the_node(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    async def main() -> None:
        hub_memory = seeded_hub_memory()
        async with serve(hub_memory, HOST, 0, secret=SECRET) as hub:
            node = Memory("agent")
            async with connect(node, hub.url, secret=SECRET, **FAST) as session:
                await session.sync(GUARD)
                digest = node.digest()
                conn = session._conn
                assert conn is not None
                # A reply that creates a document, sealed with a key we made up.
                evil = Memory("hub")
                evil.text["evil"] = "injected\n"
                server = Link(evil, "agent", role="server")
                server.incoming(bare_frame("agent"))
                reply = server.outgoing() or b""
                forged = Channel(secrets.token_bytes(32), b"").seal(KIND_FRAME, reply)
                session._on_message(conn, forged)
                assert node.digest() == digest and "evil" not in node.text
                assert session.status().rejected == 1
                await session.sync(GUARD)  # the real hub is still heard
        assert logged(caplog, "message from the hub rejected: message authentication failed")

    run(main())


# -- limits and timeouts ----------------------------------------------------------


def test_oversized_messages_close_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    async def main() -> None:
        hub_memory = seeded_hub_memory()
        before = hub_memory.digest()
        limit = 64 << 10
        async with serve(hub_memory, HOST, 0, secret=SECRET, max_frame_bytes=limit) as hub:
            # Authenticated, then one message over the limit.
            ws, chan = await authenticate(hub.url)
            huge = Memory("intruder")
            huge.text["big"] = secrets.token_hex(limit)
            frame = Link(huge, "hub", role="client", compress_threshold=-1).outgoing() or b""
            assert len(frame) > limit
            await ws.send(chan.seal(KIND_FRAME, frame))
            assert await closed_code(ws) == 1009
            assert "big" not in hub_memory.text and hub_memory.digest() == before
            await wait_until(lambda: rejections(hub, "intruder") == 1, what="rejection")
            # Before authentication the limit is a few KiB: a huge HELLO.
            ws = await open_raw(hub.url)
            await ws.send(b"HSNA\x01\x01" + b"\x00" * (32 << 10))
            assert await closed_code(ws) == 1009
            assert hub_memory.digest() == before

            # A node refuses a reply over its own limit and keeps its replica.
            hub_memory.text["big"] = secrets.token_hex(8 << 10)
            node = Memory("agent")
            async with connect(
                node, hub.url, secret=SECRET, max_frame_bytes=4096, **FAST
            ) as session:
                await wait_until(
                    lambda: logged(caplog, "reply from the hub rejected"), what="the refusal"
                )
                with pytest.raises(SyncTimeoutError):
                    await session.sync(1)  # never acknowledged, however long
                assert "big" not in node.text
        assert logged(caplog, "exceeded the size limit of 65577 bytes")
        assert logged(caplog, "exceeded the size limit")
        assert logged(caplog, "reply from the hub rejected")

    run(main())


def test_slow_loris_connections_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    """Connections that never complete the WebSocket or the authentication
    handshake are dropped after ``handshake_timeout``, and the hub keeps
    serving others meanwhile."""
    caplog.set_level(logging.INFO)
    timeout = 3.0

    async def dribble(port: int) -> tuple[bool, float]:
        """Send an HTTP upgrade request one byte every 0.1 s (it never ends:
        the header block is never closed) until the hub closes the
        connection or the hang guard; return whether the hub closed it and
        how long it let it go on."""
        reader, writer = await asyncio.open_connection(HOST, port)
        started = time.monotonic()
        closed = False
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
            while time.monotonic() - started < GUARD:
                writer.write(b"x")
                await writer.drain()
                try:
                    if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                        closed = True  # closed by the hub
                        break
                except asyncio.TimeoutError:
                    continue
        except (ConnectionError, OSError):
            closed = True
        finally:
            writer.close()
        return closed, time.monotonic() - started

    async def main() -> None:
        hub_memory = seeded_hub_memory()
        before = hub_memory.digest()
        async with serve(hub_memory, HOST, 0, secret=SECRET, handshake_timeout=timeout) as hub:
            # 1. Dribbling the HTTP request.
            closed, lasted = await dribble(hub.port)
            # Dropped by the hub, not before its timeout (a slower machine
            # only makes it later).
            assert closed and lasted > timeout * 0.8
            # 2. A WebSocket that never says HELLO; 3. one that stops after it.
            silent = await open_raw(hub.url)
            halfway = await open_raw(hub.url)
            await halfway.send(ClientHandshake(SECRET, "lazy").hello())
            # Meanwhile an honest node gets served.
            node = Memory("agent")
            async with connect(node, hub.url, secret=SECRET, **FAST) as session:
                await session.sync(GUARD)
                assert node.digest() == hub_memory.digest()
            assert await closed_code(silent) == 4003
            assert await closed_code(halfway) == 4003
            assert hub_memory.digest() == before
            assert hub.handshakes_failed >= 3
        assert logged(caplog, "opening handshake did not complete within 3.0 s")
        assert logged(caplog, "the handshake did not complete within 3.0 s")

    run(main())


# -- TLS --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls(tls_files: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    cert, key = tls_files
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def main() -> None:
        hub_memory = seeded_hub_memory()
        async with serve(hub_memory, HOST, 0, secret=SECRET, ssl=server_ctx) as hub:
            assert hub.url.startswith("wss://")
            node = Memory("agent")
            node.text["notes"] = "over TLS\n"
            async with connect(node, hub.url, secret=SECRET, ssl=client_ctx, **FAST) as s:
                await s.sync(GUARD)
                await s.sync(GUARD)
                assert node.digest() == hub_memory.digest()
            # Without trusting the certificate: no connection at all.
            stranger = Memory("stranger")
            async with connect(stranger, hub.url, secret=SECRET, **FAST) as s:
                await wait_until(
                    lambda: logged(caplog, "SSLCertVerificationError"), what="a refused attempt"
                )
                with pytest.raises(SyncTimeoutError):
                    await s.wait_connected(1)  # never connects, however long
            # Plain WebSocket to a TLS hub: no connection either.
            plain = hub.url.replace("wss://", "ws://")
            async with connect(stranger, plain, secret=SECRET, **FAST) as s:
                with pytest.raises(SyncTimeoutError):
                    await s.wait_connected(2)  # never connects, however long
            assert "stranger" not in hub.peers
        assert logged(caplog, "SSLCertVerificationError")

    run(main())


# -- no secret in logs or errors --------------------------------------------------


def test_secret_and_keys_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, websockets' frame dumps included
    messages: list[str] = []
    key_material: list[bytes] = []

    async def main() -> None:
        hub_memory = seeded_hub_memory()
        async with serve(hub_memory, HOST, 0, secret=SECRET, handshake_timeout=3.0) as hub:
            node = Memory("agent")
            async with connect(node, hub.url, secret=SECRET, **FAST) as session:
                await session.sync(GUARD)
                messages.append(repr(session) + repr(hub) + repr(session.status()))
            async with connect(Memory("m"), hub.url, secret=WRONG, **FAST) as bad:
                try:
                    await bad.sync(GUARD)
                except HybridSyncError as exc:
                    messages.append(f"{exc!r} {exc}")
            # A hand-driven client: its handshake derives the same kind of keys.
            ws = await open_raw(hub.url)
            hs = ClientHandshake(SECRET, "probe")
            await ws.send(hs.hello())
            proof = hs.challenge(await ws.recv())
            await ws.send(proof)
            keys = hs._keys
            assert keys is not None
            key_material.extend((keys.c2s, keys.s2c, keys.client_proof, keys.server_proof))
            messages.append(repr(hs) + repr(keys) + repr(hs.channel()))
            chan = hs.channel()
            tampered = bytearray(chan.seal(KIND_FRAME, bare_frame("probe")))
            tampered[-1] ^= 1
            await ws.send(bytes(tampered))
            await wait_until(lambda: rejections(hub, "probe") == 1, what="rejection")
            await ws.close()
            slow = await open_raw(hub.url)
            assert await closed_code(slow) == 4003

    run(main())
    everything = caplog.text + "\n".join(messages)
    assert "AuthenticationError" in everything and "rejected" in everything
    assert_no_secret(everything, SECRET, WRONG, *key_material)
    assert "(hidden)" in "\n".join(messages)


def test_secret_is_validated_without_echoing_it() -> None:
    with pytest.raises(HybridSyncError) as info:
        serve(Memory("hub"), HOST, 0, secret=b"short")
    assert "at least 16 bytes" in str(info.value) and "short" not in str(info.value)
    with pytest.raises(HybridSyncError):
        connect(Memory("a"), "ws://127.0.0.1:1", secret="a str secret!!!!!!")  # type: ignore[arg-type]
    with pytest.raises(HybridSyncError, match="ws:// or wss://"):
        connect(Memory("a"), "http://user:pw@127.0.0.1:1", secret=SECRET)
    with pytest.raises(HybridSyncError) as info:
        connect(Memory("a"), "ftp://user:hunter2@example.org", secret=SECRET)
    assert "hunter2" not in str(info.value)


def test_hub_refuses_its_own_replica_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    async def main() -> None:
        hub_memory = seeded_hub_memory()
        before = hub_memory.digest()
        async with serve(hub_memory, HOST, 0, secret=SECRET) as hub:
            twin = Memory("hub")
            twin.text["x"] = "y"
            async with connect(twin, hub.url, secret=SECRET, **FAST) as session:
                with pytest.raises(HybridSyncError, match="refused"):
                    await session.sync(GUARD)
            assert hub_memory.digest() == before

    run(main())


def test_handshake_and_channel_sans_io() -> None:
    """The protocol core without sockets: proofs both ways, keys per
    direction, counters, reflection and cross-session replay."""
    from hybridsync.net._secure import RejectedMessage, ServerHandshake

    def pair(secret_c: bytes, secret_s: bytes) -> tuple[ClientHandshake, ServerHandshake]:
        return ClientHandshake(secret_c, "agent"), ServerHandshake(secret_s, "hub", b"i" * 16)

    client, server = pair(SECRET, SECRET)
    server.proof(client.challenge(server.hello(client.hello())))
    assert (client.server_id, server.client_id) == ("hub", "agent")
    up, down = client.channel(), server.channel()
    assert down.open(up.seal(KIND_FRAME, b"request")) == (KIND_FRAME, b"request")
    assert up.open(down.seal(KIND_POKE)) == (KIND_POKE, b"")
    replay = up.seal(KIND_FRAME, b"again")
    down.open(replay)
    with pytest.raises(RejectedMessage, match="replayed"):
        down.open(replay)
    # Reordering within the window: each counter counts once; older ones never.
    from hybridsync.net._secure import REPLAY_WINDOW

    batch = [up.seal(KIND_FRAME, bytes([i])) for i in range(REPLAY_WINDOW + 2)]
    assert down.open(batch[-1]) == (KIND_FRAME, bytes([REPLAY_WINDOW + 1]))
    for message in (batch[2], batch[-2], batch[3]):  # batch[2]: the oldest still in
        down.open(message)
        with pytest.raises(RejectedMessage, match="replayed or reordered"):
            down.open(message)
    with pytest.raises(RejectedMessage, match="replayed or reordered"):
        down.open(batch[1])  # REPLAY_WINDOW behind the newest: too old
    with pytest.raises(RejectedMessage, match="authentication failed"):
        up.open(up.seal(KIND_FRAME, b"reflected"))  # our own message sent back
    other_client, other_server = pair(SECRET, SECRET)
    other_server.proof(other_client.challenge(other_server.hello(other_client.hello())))
    with pytest.raises(RejectedMessage, match="authentication failed"):
        other_server.channel().open(up.seal(KIND_FRAME, b"other session"))
    # Wrong secrets, either way round.
    client, server = pair(WRONG, SECRET)
    with pytest.raises(AuthenticationError):
        client.challenge(server.hello(client.hello()))
    client, server = pair(SECRET, SECRET)
    challenge = server.hello(client.hello())
    forged = ClientHandshake(WRONG, "agent")
    forged._nonce = client._nonce  # same transcript, another secret
    with pytest.raises(AuthenticationError):
        forged.challenge(challenge)
    with pytest.raises(AuthenticationError):
        server.proof(MAGIC + bytes((VERSION, PROOF)) + bytes(32))
