"""kill -9 at random instants: two durable replicas in their own processes.

A hub (server side) and a leaf (client side), each a ``tests/crash_node.py``
process on its own SQLite file, write text, metadata and KV caches (pages of
~590 KB) while the test relays their frames with loss, duplication and
reordering, and SIGKILLs one of them at a random instant (mid-cycle,
mid-save, mid-compaction, while large KV pages are written: wherever the
kill lands) over and over. The model: what each process reported durable
(after a save) must be there when it reopens, and at the end, after both
converge, every acknowledged log line is there exactly once on both
replicas, and the KV caches hold exactly the rows their owners wrote.

``HYBRIDSYNC_CRASH_KILLS`` sets the number of kills (default 200).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from hybridsync import KVCache, Memory

sys.path.insert(0, str(Path(__file__).parent))
from crash_node import GEOMETRY, HEAD, rows

NODE = Path(__file__).with_name("crash_node.py")
KILLS = int(os.environ.get("HYBRIDSYNC_CRASH_KILLS", "200"))


class Proc:
    def __init__(self, role: str, rid: str, peer: str, path: Path, seed: int) -> None:
        self.role, self.rid, self.peer, self.path = role, rid, peer, path
        self.seed = seed
        self.acked_lines = 0
        self.acked_kv = 0
        self.starts = 0
        self.digest = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.buf = b""

    def start(self) -> None:
        self.starts += 1
        self.buf = b""
        self.digest = ""
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(NODE),
                self.role,
                self.rid,
                self.peer,
                str(self.path),
                str(self.seed * 1000 + self.starts),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        # Writes go through a thread: a blocking write to a child that is
        # itself blocked writing to us would deadlock the relay.
        self.outbox: queue.Queue[bytes | None] = queue.Queue()
        threading.Thread(target=self._writer, args=(self.proc, self.outbox), daemon=True).start()

    @staticmethod
    def _writer(proc: subprocess.Popen[bytes], outbox: queue.Queue[bytes | None]) -> None:
        assert proc.stdin is not None
        try:
            while (data := outbox.get()) is not None:
                proc.stdin.write(data)
                proc.stdin.flush()
        except OSError:
            pass  # the child was killed
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.outbox.put(None)
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def send(self, kind: bytes, body: bytes = b"") -> None:
        self.outbox.put(HEAD.pack(kind, len(body)) + body)

    def messages(self) -> list[tuple[bytes, bytes]]:
        assert self.proc is not None and self.proc.stdout is not None
        chunk = os.read(self.proc.stdout.fileno(), 1 << 22)
        self.buf += chunk
        out = []
        while len(self.buf) >= HEAD.size:
            kind, n = HEAD.unpack_from(self.buf)
            if len(self.buf) < HEAD.size + n:
                break
            out.append((kind, self.buf[HEAD.size : HEAD.size + n]))
            self.buf = self.buf[HEAD.size + n :]
        return out


def test_kill_9_at_random_points_loses_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(20261125)
    hub = Proc("server", "hub", "leaf", tmp_path / "hub.db", 1)
    leaf = Proc("client", "leaf", "hub", tmp_path / "leaf.db", 2)
    sel = selectors.DefaultSelector()
    for p in (hub, leaf):
        p.start()
        sel.register(p.proc.stdout, selectors.EVENT_READ, p)  # type: ignore[union-attr]
    try:
        _run(rng, hub, leaf, sel)
    finally:
        for p in (hub, leaf):
            if p.proc is not None and p.proc.poll() is None:
                p.kill()
            elif p.proc is not None and p.proc.stdout is not None:
                p.proc.stdout.close()


def _run(rng: random.Random, hub: Proc, leaf: Proc, sel: selectors.BaseSelector) -> None:
    peer_of = {id(hub): leaf, id(leaf): hub}
    kills = 0
    quiet = False
    next_kill = time.monotonic() + rng.uniform(0.3, 0.8)
    deadline = None
    frames = 0
    while True:
        now = time.monotonic()
        if not quiet and now >= next_kill:
            victim = rng.choice((hub, leaf))
            sel.unregister(victim.proc.stdout)  # type: ignore[union-attr]
            victim.kill()
            kills += 1
            victim.start()
            sel.register(victim.proc.stdout, selectors.EVENT_READ, victim)  # type: ignore[union-attr]
            # Startup takes ~0.3 s; the kill lands anywhere from loading to
            # well into the sync loop.
            next_kill = now + rng.uniform(0.25, 0.9)
            if kills >= KILLS:
                quiet = True
                deadline = now + 120
                for p in (hub, leaf):
                    p.send(b"Q")
        if quiet:
            assert deadline is not None and now < deadline, "no convergence after the last kill"
            if hub.digest and hub.digest == leaf.digest:
                break
        for key, _ in sel.select(timeout=0.01):
            p: Proc = key.data
            for kind, body in p.messages():
                if kind == b"O":
                    opened = json.loads(body)
                    lines = opened["lines"]
                    # Everything acknowledged survived the kill, exactly once.
                    assert lines[: p.acked_lines] == [f"{p.rid}:{i}" for i in range(p.acked_lines)]
                    assert len(lines) >= p.acked_lines
                    assert opened["kv"] >= p.acked_kv
                elif kind == b"A":
                    ack = json.loads(body)
                    p.acked_lines = max(p.acked_lines, ack["lines"])
                    p.acked_kv = ack["kv"]
                elif kind == b"F":
                    frames += 1
                    other = peer_of[id(p)]
                    if rng.random() < 0.15:
                        continue  # lost
                    other.send(b"F", body)
                    if rng.random() < 0.05:
                        other.send(b"F", body)  # duplicated
                elif kind == b"D":
                    p.digest = body.decode()
            if quiet:
                p.send(b"Q")  # a restarted process must quiesce too
    for p in (hub, leaf):
        p.send(b"X")
        assert p.proc is not None
        assert p.proc.wait(timeout=60) == 0
        p.outbox.put(None)
        assert p.proc.stdout is not None
        p.proc.stdout.close()
    assert kills >= KILLS and frames > 10 * KILLS
    replicas = [Memory("hub", path=hub.path), Memory("leaf", path=leaf.path)]
    assert replicas[0].digest() == replicas[1].digest()
    for p in (hub, leaf):
        for m in replicas:
            lines = m.text.get(f"log-{p.rid}", "").splitlines()
            assert lines == [f"{p.rid}:{i}" for i in range(len(lines))]
            assert len(lines) >= p.acked_lines
            cache = m.kv.get(f"kv-{p.rid}")
            if cache is not None and cache.tokens:
                want = KVCache(**GEOMETRY)  # type: ignore[arg-type]
                want.append(rows(0, cache.tokens), rows(1_000_000, cache.tokens))
                assert cache.digest() == want.digest()
                assert np.array_equal(cache.quantized(3, "v"), want.quantized(3, "v"))
    for m in replicas:
        m.close()
