"""Durable replicas: reopen, resume links, crash at random points, backups,
corruption."""

from __future__ import annotations

import random
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from hybridsync import KVCache, Link, Memory
from hybridsync.errors import CorruptionError, InvalidArgumentError, StorageError
from hybridsync.meta import CompactionPolicy
from hybridsync.sync import link as link_module

# -- helpers ---------------------------------------------------------------------


def crash(memory: Memory) -> None:
    """Drop a durable replica the way a killed process does: no save; the
    file keeps what its last commit point wrote."""
    store = memory._store
    assert store is not None
    memory._store = None
    store.close()


def rows(seed: int, n: int, layers: int = 2, heads: int = 2, dim: int = 32) -> np.ndarray:
    """Deterministic float rows for tokens ``seed .. seed+n`` (one rng per token)."""
    out = np.empty((layers, heads, n, dim), np.float32)
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        out[:, :, i] = rng.standard_normal((layers, heads, dim))
    return out


class Wire:
    """Two queues of frames with seeded loss, duplication and reordering."""

    def __init__(self, rng: random.Random, loss: float = 0.2) -> None:
        self.rng = rng
        self.loss = loss
        self.up: list[bytes] = []  # client -> server
        self.down: list[bytes] = []
        self.bytes = 0

    def send(self, queue: list[bytes], frame: bytes | None) -> None:
        if frame is None:
            return
        self.bytes += len(frame)
        if self.rng.random() < self.loss:
            return
        queue.insert(
            self.rng.randrange(len(queue) + 1) if self.rng.random() < 0.2 else len(queue), frame
        )
        if self.rng.random() < 0.1:
            queue.append(frame)

    def step(self, client: Link, server: Link) -> None:
        self.send(self.up, client.outgoing())
        while self.up:
            server.incoming(self.up.pop(0))
        self.send(self.down, server.outgoing())
        while self.down:
            client.incoming(self.down.pop(0))


def settle(client: Link, server: Link, ticks: int = 200) -> int:
    wire = Wire(random.Random(0), loss=0.0)
    for _i in range(ticks):
        wire.step(client, server)
        if client.idle and server.idle and not client.awaiting_reply:
            wire.step(client, server)
            if client.idle and server.idle:
                return wire.bytes
    raise AssertionError("did not settle")


# -- reopening ---------------------------------------------------------------------


def test_reopen_restores_text_metadata_and_kv(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    a = Memory("a", path=path)
    a.text["plan"] = "step 1\nstep 2\n"
    a.text["gone"] = "x"
    del a.text["gone"]
    with a.transaction():
        a.meta["tasks"] = {"t1": {"status": "open", "tags": ["x", "y"]}}
        a.meta["n"] = 3.5
    a.meta["tasks"]["t1"]["tags"].append("z")
    cache = KVCache(2, 2, 32, "q4_0", page_tokens=4)
    cache.append(rows(0, 10), rows(100, 10))
    a.kv["ctx"] = cache
    other = KVCache(2, 2, 64, "mlx4", page_tokens=8, scale_type="bf16")
    other.append(rows(5, 3, dim=64), rows(6, 3, dim=64))
    a.kv["old"] = other
    del a.kv["old"]
    digest = a.digest()
    a.close()
    with Memory("a", path=path) as b:
        assert b.durable
        assert b.digest() == digest
        assert dict(b.text) == {"plan": "step 1\nstep 2\n"}
        assert b.meta.to_py() == {
            "tasks": {"t1": {"status": "open", "tags": ["x", "y", "z"]}},
            "n": 3.5,
        }
        assert b.kv["ctx"].writable and b.kv["ctx"].tokens == 10
        assert np.array_equal(b.kv["ctx"].quantized(1, "v"), cache.quantized(1, "v"))
        assert "old" in b.kv._deleted
        # The reopened replica keeps writing; its own cache stays its own.
        b.kv["ctx"].append(rows(10, 3), rows(110, 3))
        b.meta["n"] = 4
        digest = b.digest()
    with Memory("a", path=path) as c:
        assert c.digest() == digest


def test_unflushed_writes_are_not_on_disk_and_flush_makes_them_durable(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    a = Memory("a", path=path)
    a.text["x"] = "kept"
    a.flush()
    a.text["y"] = "lost"
    a.meta["k"] = "lost"
    crash(a)
    b = Memory("a", path=path)
    assert dict(b.text) == {"x": "kept"} and b.meta.to_py() == {}


def test_a_reopened_replica_writes_under_new_crdt_client_ids(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    a = Memory("a", path=path)
    a.meta["k"] = 1
    old = a.meta._client
    a.close()
    b = Memory("a", path=path)
    assert b.meta._client != old
    b.meta["k"] = 2
    assert b.meta["k"] == 2


def test_a_reopened_root_keeps_its_epoch_its_lineage_and_its_latest_writes(
    tmp_path: Path,
) -> None:
    """The metadata epoch (id and frozen states), the lineage and the own
    latest writes reload; epochs the reopened root starts get a new tag, so
    they never reuse an id its previous life may have used after the save."""
    path = tmp_path / "root.db"
    root = Memory("root", path=path, compaction=CompactionPolicy(max_ratio=1.0, slack_bytes=0))
    for i in range(20):
        root.meta["k"] = f"{i}" * 100
        root.meta.maybe_compact()
    del root.meta["k"]
    root.meta["last"] = "x"
    assert root.meta.metrics.compactions > 0
    saved = (root.meta.epoch_id, dict(root.meta._frozen), dict(root.meta._lineage))
    latest = dict(root.meta._latest)
    root.close()
    again = Memory("root", path=path, compaction=CompactionPolicy(max_ratio=1.0, slack_bytes=0))
    epoch_id, frozen, lineage = saved
    assert again.meta.epoch_id == epoch_id
    assert again.meta._frozen == frozen
    assert all(again.meta._lineage.get(tag) == n for tag, n in lineage.items())
    assert again.meta._latest == latest
    assert all(again.meta.forgotten(e) is False for e in frozen)  # kept, so not forgotten
    for i in range(20):
        again.meta["k"] = f"{i}" * 100
        again.meta.maybe_compact()
    assert again.meta.epoch_id >> 24 != epoch_id >> 24  # a new tag
    assert again.meta.epoch_id not in frozen


def test_second_open_wrong_replica_and_bad_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    a = Memory("a", path=path)
    with pytest.raises(StorageError, match="another process"):
        Memory("a", path=path)
    a.close()
    with pytest.raises(InvalidArgumentError, match="holds replica 'a'"):
        Memory("b", path=path)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CorruptionError):
        Memory("a", path=junk)
    with pytest.raises(InvalidArgumentError):
        Memory("a", path=tmp_path)


def _tamper(path: Path, sql: str) -> None:
    db = sqlite3.connect(path)
    db.execute(sql)
    db.commit()
    db.close()


@pytest.mark.parametrize(
    "sql",
    [
        # Rows whose content changed: their checksums.
        "UPDATE text SET body = CAST('step 9' AS BLOB)",
        "UPDATE meta_updates SET data = substr(data, 1, length(data) - 1)",
        "UPDATE info SET value = x'00' WHERE key = 'meta'",
        "UPDATE kv_pages SET data = zeroblob(length(data)) WHERE page = 1",
        "UPDATE kv_caches SET header = x'80'",
        "UPDATE link_docs SET state = x'90'",
        "UPDATE links SET header = x'80'",
        # Rows missing or added: the manifest and the per-link document count.
        "DELETE FROM kv_pages WHERE page = 2",
        "DELETE FROM text WHERE name = 'b'",
        "INSERT INTO text SELECT 'c', body, sum FROM text WHERE name = 'a'",
        "DELETE FROM meta_updates WHERE n = 0",
        "DELETE FROM kv_caches",
        "DELETE FROM link_docs WHERE name = 'a'",
    ],
)
def test_tampered_missing_or_extra_rows_are_detected(tmp_path: Path, sql: str) -> None:
    path = tmp_path / "a.db"
    m = Memory("a", path=path)
    link = Link(m, "s")
    server = Link(Memory("s"), "a", role="server")
    m.text["a"] = "first\n"
    m.text["b"] = "second\n"
    m.meta["k"] = [1, 2]
    cache = KVCache(2, 2, 32, "q4_0", page_tokens=4)
    cache.append(rows(0, 10), rows(100, 10))
    m.kv["c"] = cache
    settle(link, server)
    m.close()
    _tamper(path, sql)
    with pytest.raises(CorruptionError):
        reopened = Memory("a", path=path)
        Link(reopened, "s")


def test_flipped_bits_in_the_file_are_detected(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    a = Memory("a", path=path, fsync=False)
    a.text["doc"] = "abcdefghij" * 2000
    a.close()
    # Checkpointed: the rows live in the main file now. Flip a byte of the text.
    data = bytearray(path.read_bytes())
    at = data.find(b"abcdefghij" * 10)
    assert at > 0
    data[at + 5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match="checksum mismatch in text document 'doc'"):
        Memory("a", path=path)


# -- links resume -------------------------------------------------------------------


def test_a_reopened_client_resumes_with_summaries_only(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    a = Memory("a", path=path)
    b = Memory("b")
    server = Link(b, "a", role="server")
    client = Link(a, "b")
    rng = random.Random(1)
    for i in range(50):
        a.text[f"doc{i}"] = "".join(f"{rng.getrandbits(64):x}\n" for _ in range(40))
    cache = KVCache(2, 2, 32, "q4_0", page_tokens=4)
    cache.append(rows(0, 64), rows(100, 64))
    a.kv["ctx"] = cache
    a.meta["k"] = "v"
    full = settle(client, server)
    a.close()
    a = Memory("a", path=path)
    client = Link(a, "b")
    a.text["doc7"] += "one more line\n"
    resumed = settle(client, server)
    assert a.digest() == b.digest()
    assert b.text["doc7"].endswith("one more line\n")
    assert client.metrics.fulls_sent == 0 and server.metrics.fulls_sent == 0
    assert client.metrics.resyncs == 0 and server.metrics.resyncs == 0
    assert client.metrics.kv_pages_sent == 0
    # A summary per document, the metadata state, a digest probe per cache.
    assert resumed < full / 10, (resumed, full)


def test_a_fresh_link_on_a_durable_replica_forgets_the_saved_one(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    a = Memory("a", path=path)
    b = Memory("b")
    server = Link(b, "a", role="server")
    client = Link(a, "b")
    a.text["x"] = "hello\n"
    settle(client, server)
    with pytest.raises(InvalidArgumentError, match="already has a client link"):
        Link(a, "b")
    a.close()
    a = Memory("a", path=path)
    assert a._store is not None and a._store.link_state("client", "b") is not None
    fresh = Link(a, "b", resume=False)
    a.flush()
    assert a._store.link_state("client", "b") is not None  # rewritten, empty
    assert a._store.link_state("client", "b")[1] == {}
    assert fresh._docs == {}


def _backup(path: Path, to: Path) -> None:
    """An online backup (sqlite3's backup API reads a consistent snapshot)."""
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    dst = sqlite3.connect(to)
    src.backup(dst)
    src.close()
    dst.close()


def test_restoring_an_older_backup_resyncs_only_what_differs(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    a = Memory("a", path=path)
    b = Memory("b")
    server = Link(b, "a", role="server")
    client = Link(a, "b")
    for i in range(40):
        a.text[f"doc{i}"] = f"document {i}\n" * 50
    cache = KVCache(4, 2, 32, "q4_0", page_tokens=16)
    cache.append(rows(0, 256, layers=4), rows(1000, 256, layers=4))
    a.kv["ctx"] = cache
    a.meta["facts"] = {"f1": 1}
    settle(client, server)
    a.close()
    backup = tmp_path / "backup.db"
    shutil.copy(path, backup)
    # Life goes on: edits to 3 documents, 2 pages of KV, a fact.
    a = Memory("a", path=path)
    client = Link(a, "b")
    for i in (3, 4, 5):
        a.text[f"doc{i}"] += "later line\n"
    a.kv["ctx"].append(rows(256, 20, layers=4), rows(1256, 20, layers=4))
    a.meta["facts"]["f2"] = 2
    settle(client, server)
    newer = a.digest()
    crash(a)
    # The disk dies; the replica comes back from the older backup.
    shutil.copy(backup, path)
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    a = Memory("a", path=path)
    assert a.digest() != newer
    client = Link(a, "b")
    settle(client, server)
    assert a.digest() == b.digest()
    # The hub's newer copy wins back what the backup lacks...
    assert a.text["doc4"].endswith("later line\n")
    assert a.meta["facts"].to_py() == {"f1": 1, "f2": 2}
    # ...but the KV cache's owner is this replica: its (older) cache is the truth.
    assert a.kv["ctx"].tokens == 256 and b.kv["ctx"].tokens == 256
    # Only the three documents that differ travelled whole.
    assert server.metrics.fulls_sent + client.metrics.fulls_sent == 3
    # No KV page travelled (the hub only cut its copy to the owner's tokens).
    assert client.metrics.kv_pages_sent <= 2 * 4 * 2  # at most the cut partial page


def test_a_reopened_hub_resumes_and_keeps_acknowledged_edits(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    hub = Memory("hub", path=path)
    leaf = Memory("leaf")
    server = Link(hub, "leaf", role="server")
    client = Link(leaf, "hub")
    leaf.text["notes"] = "line 1\n"
    settle(client, server)
    leaf.text["notes"] += "line 2\n"
    frame = client.outgoing()
    assert frame is not None
    server.incoming(frame)
    reply = server.outgoing()  # saved before it leaves
    assert reply is not None
    crash(hub)  # the reply is lost with the hub
    hub = Memory("hub", path=path)
    assert hub.text["notes"] == "line 1\nline 2\n"
    server = Link(hub, "leaf", role="server")
    settle(client, server)
    assert hub.digest() == leaf.digest()
    assert hub.text["notes"] == "line 1\nline 2\n"


# -- random crash schedules (in process) -------------------------------------------------


class Node:
    """A durable replica, its link and the model of what it acknowledged."""

    def __init__(self, rid: str, peer: str, role: str, path: Path, seed: int) -> None:
        self.rid, self.peer, self.role, self.path = rid, peer, role, path
        self.policy = CompactionPolicy(max_ratio=1.2, slack_bytes=256)
        self.written = 0  # lines written (0 .. written-1)
        self.acked = 0  # lines known durable
        self.kv_written = 0
        self.kv_acked = 0
        self.crashes = 0
        self.open()

    def open(self) -> None:
        self.memory = Memory(self.rid, path=self.path, compaction=self.policy, fsync=False)
        self.link = Link(self.memory, self.peer, role=self.role)  # type: ignore[arg-type]
        log = self.memory.text.get(f"log-{self.rid}", "")
        # After a crash the replica holds its last commit point: at least
        # everything acknowledged, maybe more.
        lines = log.splitlines()
        assert lines[: self.acked] == [f"{self.rid}:{i}" for i in range(self.acked)]
        self.written = len(lines)
        cache = self.memory.kv.get(f"kv-{self.rid}")
        self.kv_written = cache.tokens if cache is not None else 0
        assert self.kv_written >= self.kv_acked

    def write(self, rng: random.Random) -> None:
        m = self.memory
        r = rng.random()
        if r < 0.4:
            name = f"log-{self.rid}"
            m.text[name] = m.text.get(name, "") + f"{self.rid}:{self.written}\n"
            self.written += 1
        elif r < 0.6:
            with m.transaction():
                m.meta[f"count-{self.rid}"] = self.written
                m.meta.setdefault(f"seen-{self.rid}", [])
                m.meta[f"seen-{self.rid}"].append(self.written)
            # Keep the list short: compaction has work, the test stays fast.
            if len(m.meta[f"seen-{self.rid}"]) > 8:
                del m.meta[f"seen-{self.rid}"][0]
        elif r < 0.8:
            name = f"kv-{self.rid}"
            if name not in m.kv:
                m.kv[name] = KVCache(2, 2, 32, "q4_0", page_tokens=8)
            n = rng.randint(1, 12)
            t = m.kv[name].tokens
            m.kv[name].append(rows(t, n), rows(10_000 + t, n))
            self.kv_written = t + n
        else:
            m.text["shared"] = m.text.get("shared", "") + f"{self.rid} was here\n"

    def committed(self) -> None:
        """A save happened: everything written so far is acknowledged."""
        self.acked = self.written
        self.kv_acked = self.kv_written

    def crash(self) -> None:
        crash(self.memory)
        self.crashes += 1
        self.open()


@pytest.mark.parametrize("seed", range(12))
def test_random_crashes_lose_nothing_acknowledged(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    hub = Node("hub", "leaf", "server", tmp_path / "hub.db", seed)
    leaf = Node("leaf", "hub", "client", tmp_path / "leaf.db", seed)
    wire = Wire(rng, loss=0.2)
    for _ in range(300):
        for node in (hub, leaf):
            if rng.random() < 0.5:
                node.write(rng)
            if rng.random() < 0.05:
                node.memory.flush()
                node.committed()
        up = leaf.link.outgoing()
        if up is not None:
            leaf.committed()  # a frame handed out: saved first
        wire.send(wire.up, up)
        while wire.up:
            hub.link.incoming(wire.up.pop(0))
        down = hub.link.outgoing()
        if down is not None:
            hub.committed()
        wire.send(wire.down, down)
        while wire.down:
            leaf.link.incoming(wire.down.pop(0))
        if rng.random() < 0.04:
            rng.choice((hub, leaf)).crash()
    assert hub.crashes + leaf.crashes >= 5
    settle(leaf.link, hub.link, ticks=500)
    assert hub.memory.digest() == leaf.memory.digest()
    for node in (hub, leaf):
        for m in (hub.memory, leaf.memory):
            lines = m.text.get(f"log-{node.rid}", "").splitlines()
            # Exactly once, in order, everything acknowledged.
            assert lines == [f"{node.rid}:{i}" for i in range(len(lines))]
            assert len(lines) >= node.acked
            cache = m.kv.get(f"kv-{node.rid}")
            tokens = cache.tokens if cache is not None else 0
            assert tokens >= node.kv_acked
            if tokens:
                want = KVCache(2, 2, 32, "q4_0", page_tokens=8)
                want.append(rows(0, tokens), rows(10_000, tokens))
                assert cache is not None and cache.digest() == want.digest()


# -- regressions ------------------------------------------------------------------------


def test_a_failed_save_leaves_nothing_half_known(tmp_path: Path) -> None:
    """A save that fails (disk full) rolls back; the next one that succeeds
    writes everything since the last committed save."""
    path = tmp_path / "a.db"
    m = Memory("a", path=path)
    m.meta["base"] = 1
    m.flush()
    assert m._store is not None
    db = m._store._db
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    db.execute(f"PRAGMA max_page_count={pages + 2}")  # the disk is full
    m.meta["x"] = "written later"
    big = KVCache(4, 4, 128, "q4_0", page_tokens=64)
    big.append(rows(0, 256, 4, 4, 128), rows(1, 256, 4, 4, 128))
    m.kv["big"] = big
    with pytest.raises(StorageError, match="full"):
        m.flush()
    db.execute("PRAGMA max_page_count=1073741823")  # space again
    m.kv["small"] = KVCache(2, 2, 32, "q4_0", page_tokens=4)
    m.kv["small"].append(rows(0, 6), rows(1, 6))
    m.flush()
    digest = m.digest()
    m.close()
    with Memory("a", path=path) as again:
        assert again.meta.to_py() == {"base": 1, "x": "written later"}
        assert again.kv["big"].tokens == 256 and again.digest() == digest


def _a_request_answered_by_a_durable_server(
    tmp_path: Path,
) -> tuple[Memory, Memory, Link, bytes, bytes]:
    """A client in memory and a durable server in step, then one more
    request and the server's reply to it (not yet delivered)."""
    a, s = Memory("a"), Memory("s", path=tmp_path / "s.db")
    client, server = Link(a, "s"), Link(s, "a", role="server")
    a.meta["k0"] = 0
    a.text["d"] = "hello\n"
    settle(client, server)
    request = client.outgoing()
    assert request is not None
    server.incoming(request)
    reply = server.outgoing()
    assert reply is not None
    return a, s, client, request, reply


def test_a_reopened_server_resends_its_saved_reply_to_a_late_duplicate(tmp_path: Path) -> None:
    a, s, client, request, reply = _a_request_answered_by_a_durable_server(tmp_path)
    client.incoming(reply)
    s.meta["new"] = "written on s"
    s.flush()
    crash(s)
    s = Memory("s", path=tmp_path / "s.db")
    server = Link(s, "a", role="server")
    server.incoming(request)  # a late duplicate of the answered request
    assert server.outgoing() == reply  # byte for byte, as before the crash
    settle(client, server)
    assert a.digest() == s.digest() and a.meta["new"] == "written on s"


def test_a_saved_reply_of_another_protocol_version_is_answered_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The replica was saved by a build of another protocol version: its
    # saved reply would be refused by the client, so a late duplicate of the
    # request gets a reply built afresh, which the client accepts.
    a, s, client, request, reply = _a_request_answered_by_a_durable_server(tmp_path)
    crash(s)  # the reply is lost on the way
    monkeypatch.setattr(link_module, "_FRAME_MARK", bytes([reply[0] ^ 0x0F]))
    s = Memory("s", path=tmp_path / "s.db")
    server = Link(s, "a", role="server")
    server.incoming(request)
    again = server.outgoing()
    assert again is not None and again != reply
    client.incoming(again)
    a.text["d"] = "hello again\n"
    settle(client, server)
    assert a.digest() == s.digest() and s.text["d"] == "hello again\n"


def test_saved_retired_epochs_are_the_latest_ones(tmp_path: Path) -> None:
    s, c = Memory("s", path=tmp_path / "s.db"), Memory("c")
    server = Link(s, "c", role="server")
    late = b""
    for epoch in [*range(1000, 1065), 5]:
        old = Link(c, "s", epoch=epoch)
        first = old.outgoing()
        assert first is not None
        server.incoming(first)
        old.incoming(server.outgoing() or b"")
        late = first
        old.close()
    live = Link(c, "s", epoch=2000)
    settle(live, server)
    crash(s)
    s = Memory("s", path=tmp_path / "s.db")
    server = Link(s, "c", role="server")
    server.incoming(late)  # the first request of a replaced incarnation, late
    server.outgoing()
    c.text["doc"] = "written on the live client\n"
    settle(live, server)
    assert server._epoch == 2000 and s.text["doc"] == "written on the live client\n"


def test_closing_a_link_saves_it_with_the_text_it_changed(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    a, s = Memory("a", path=path), Memory("s")
    client, server = Link(a, "s"), Link(s, "a", role="server")
    s.text["d"] = "one\nthree\n"
    settle(client, server)
    s.text["d"] = "one\ntwo\nthree\n"
    request = client.outgoing()
    assert request is not None
    server.incoming(request)
    client.incoming(server.outgoing() or b"")  # the reply brings "two"
    a.text["d"] = a.text["d"].replace("two\n", "two\ntwo and a half\n")
    client.close()
    a.close()
    a = Memory("a", path=path)
    client = Link(a, "s")
    settle(client, server)
    assert a.text["d"] == s.text["d"] == "one\ntwo\ntwo and a half\nthree\n"


def test_kv_appends_save_only_the_new_rows_and_reload_exactly(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    rng = random.Random(3)
    m = Memory("a", path=path, fsync=False)
    cache = KVCache(2, 2, 32, "q4_0", page_tokens=16)
    m.kv["c"] = cache
    t = 0
    for step in range(120):
        r = rng.random()
        if r < 0.7:
            n = rng.choice((1, 1, 2, 5, 16, 23))
            cache.append(rows(t, n), rows(50_000 + t, n))
            t += n
            assert m._store is not None
            before = m._store.bytes_written
            m.flush()
            written = m._store.bytes_written - before
            # The new rows, the cache's header and the manifest (a part
            # rewrites a whole page only every 16 parts).
            assert written <= n * cache.row_bytes * 2 * 2 * 2 + 16 * cache.row_bytes * 8 + 600
        elif r < 0.8 and t:
            t = rng.randrange(t)
            cache.truncate(t)
            m.flush()
        else:
            digest = m.digest()
            m.close()
            m = Memory("a", path=path, fsync=False)
            assert m.digest() == digest
            cache = m.kv["c"]
            want = KVCache(2, 2, 32, "q4_0", page_tokens=16)
            if t:
                want.append(rows(0, t), rows(50_000, t))
            assert cache.tokens == t and cache.digest() == want.digest(), step


def test_a_write_saved_before_it_was_sent_survives_a_crash(tmp_path: Path) -> None:
    """A link saves a shadow equal to its document's text as a reference to
    that text; a local write saved (by a flush) before any frame carried it
    must not drag the saved shadow along: after a crash and a reopening the
    write is still sent, and nothing is resynchronised. Reopened and in step,
    a link holds no second copy of the texts."""
    path = tmp_path / "a.db"
    a, b = Memory("a", path=path), Memory("b")
    server, client = Link(b, "a", role="server"), Link(a, "b")
    for i in range(5):
        a.text[f"doc{i}"] = f"{i}. first line\n"
    settle(client, server)
    a.text["doc3"] += "a second line\n"
    a.flush()  # on disk, not sent
    crash(a)
    a = Memory("a", path=path)
    client = Link(a, "b")
    settle(client, server)
    assert a.text["doc3"] == b.text["doc3"] == "3. first line\na second line\n"
    assert a.digest() == b.digest()
    assert client.metrics.resyncs == 0 and server.metrics.resyncs == 0
    texts = {id(t) for t in a.text.values()}
    assert client.state_bytes(texts) == 0  # every shadow is the replica's own text
    a.close()
