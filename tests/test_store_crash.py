"""kill -9 at random points: two durable replicas in their own processes.

A hub (server side) and a leaf (client side), each a ``tests/crash_node.py``
process on its own SQLite file, write text, metadata and KV caches (pages of
~590 KB) while the test relays their frames with loss, duplication and
reordering, and SIGKILLs one of them over and over: mid-cycle, mid-save,
mid-compaction, while large KV pages are written, wherever the kill lands.

The kills follow events, not the clock: each one is planned (seeded) as "the
victim's k-th message since the last kill", where the messages counted are
the victim's report that it opened its file and the frames it hands out.
``k = 0`` kills at once (a freshly restarted victim dies while it starts or
opens its file), ``k = 1`` right after a restarted victim opened its file,
larger ``k`` after that many frames, so the number of frames between kills
does not depend on the machine's speed. The model: what each process
reported durable (after a save) must be there when it reopens, and at the
end, after both converge, every acknowledged log line is there exactly once
on both replicas, and the KV caches hold exactly the rows their owners wrote.

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
#: Hang guards only: a healthy run, however slow the machine, never gets near.
SILENCE_LIMIT = 300.0  # seconds without a single message from either process
CONVERGENCE_LIMIT = 900.0  # seconds from the last kill to equal digests


class Proc:
    def __init__(self, role: str, rid: str, peer: str, path: Path, seed: int) -> None:
        self.role, self.rid, self.peer, self.path = role, rid, peer, path
        self.seed = seed
        self.acked_lines = 0
        self.acked_kv = 0
        self.starts = 0
        self.reopened = 0  # openings that found acknowledged lines to check
        self.digest = ""
        self.events = 0  # openings reported and frames handed out since the last kill
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

    def kill(self) -> list[tuple[bytes, bytes]]:
        """SIGKILL the process; return the messages it wrote before it died
        that were not read yet (its acknowledgements count)."""
        assert self.proc is not None and self.proc.stdout is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.outbox.put(None)
        rest = []
        while chunk := os.read(self.proc.stdout.fileno(), 1 << 22):
            rest += self._parse(chunk)
        self.proc.stdout.close()
        return rest

    def send(self, kind: bytes, body: bytes = b"") -> None:
        self.outbox.put(HEAD.pack(kind, len(body)) + body)

    def messages(self) -> list[tuple[bytes, bytes]]:
        assert self.proc is not None and self.proc.stdout is not None
        chunk = os.read(self.proc.stdout.fileno(), 1 << 22)
        if not chunk:
            code = self.proc.wait()
            raise AssertionError(f"{self.rid} exited by itself with code {code}")
        return self._parse(chunk)

    def _parse(self, chunk: bytes) -> list[tuple[bytes, bytes]]:
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
    hub = Proc("server", "hub", "leaf", tmp_path / "hub.db", 1)
    leaf = Proc("client", "leaf", "hub", tmp_path / "leaf.db", 2)
    sel = selectors.DefaultSelector()
    for p in (hub, leaf):
        p.start()
        sel.register(p.proc.stdout, selectors.EVENT_READ, p)  # type: ignore[union-attr]
    try:
        _run(hub, leaf, sel)
    finally:
        for p in (hub, leaf):
            if p.proc is not None and p.proc.poll() is None:
                p.kill()
            elif p.proc is not None and p.proc.stdout is not None:
                p.proc.stdout.close()


def _plan(schedule: random.Random, hub: Proc, leaf: Proc) -> tuple[Proc, int]:
    """The next kill: the victim and its number of events (an opening
    reported, a frame handed out) since the last kill to wait for."""
    victim = schedule.choice((hub, leaf))
    r = schedule.random()
    k = 0 if r < 0.08 else 1 if r < 0.16 else schedule.randint(2, 30)
    return victim, k


def _run(hub: Proc, leaf: Proc, sel: selectors.BaseSelector) -> None:
    # Two generators: the kill schedule is fixed by the seed whatever order
    # the frames of the two processes arrive in.
    schedule = random.Random(20261125)
    network = random.Random(20261126)
    peer_of = {id(hub): leaf, id(leaf): hub}
    kills = 0
    frames = 0
    victim, due = _plan(schedule, hub, leaf)
    quiet_since: float | None = None
    heard = time.monotonic()

    def handle(p: Proc, kind: bytes, body: bytes) -> None:
        nonlocal frames
        if kind == b"O":
            opened = json.loads(body)
            lines = opened["lines"]
            # Everything acknowledged survived the kill, exactly once.
            assert lines[: p.acked_lines] == [f"{p.rid}:{i}" for i in range(p.acked_lines)]
            assert len(lines) >= p.acked_lines
            assert opened["kv"] >= p.acked_kv
            p.reopened += p.acked_lines > 0
            p.events += 1
        elif kind == b"A":
            ack = json.loads(body)
            p.acked_lines = max(p.acked_lines, ack["lines"])
            p.acked_kv = ack["kv"]
        elif kind == b"F":
            frames += 1
            p.events += 1
            other = peer_of[id(p)]
            if network.random() < 0.15:
                return  # lost
            other.send(b"F", body)
            if network.random() < 0.05:
                other.send(b"F", body)  # duplicated
        elif kind == b"D":
            p.digest = body.decode()

    def kill_due() -> bool:
        return quiet_since is None and victim.events >= due

    def kill_victim(unread: list[tuple[bytes, bytes]]) -> None:
        """Kill the victim, take what it wrote before dying (``unread``: the
        rest of the batch the kill event came in), restart it, plan the next
        kill (or, after the last one, tell both processes to quiesce)."""
        nonlocal kills, victim, due, quiet_since
        sel.unregister(victim.proc.stdout)  # type: ignore[union-attr]
        for kind, body in unread + victim.kill():
            handle(victim, kind, body)
        kills += 1
        victim.start()
        sel.register(victim.proc.stdout, selectors.EVENT_READ, victim)  # type: ignore[union-attr]
        hub.events = leaf.events = 0
        if kills < KILLS:
            victim, due = _plan(schedule, hub, leaf)
        else:
            quiet_since = time.monotonic()
            for p in (hub, leaf):
                p.send(b"Q")

    while True:
        if kill_due():
            kill_victim([])  # k = 0: at once
            continue
        if quiet_since is not None:
            if hub.digest and hub.digest == leaf.digest:
                break
            assert time.monotonic() - quiet_since < CONVERGENCE_LIMIT, (
                "hang guard: no convergence after the last kill"
            )
        events = sel.select(timeout=1.0)
        if events:
            heard = time.monotonic()
        else:
            assert time.monotonic() - heard < SILENCE_LIMIT, "hang guard: both processes silent"
        for key, _ in events:
            p: Proc = key.data
            batch = p.messages()
            for i, (kind, body) in enumerate(batch):
                handle(p, kind, body)
                if p is victim and kill_due():
                    kill_victim(batch[i + 1 :])
                    break
    for p in (hub, leaf):
        p.send(b"X")
        assert p.proc is not None
        assert p.proc.wait(timeout=SILENCE_LIMIT) == 0
        p.outbox.put(None)
        assert p.proc.stdout is not None
        p.proc.stdout.close()
    assert kills == KILLS and frames > 10 * KILLS
    # The reopenings checked acknowledged data, not empty files.
    assert hub.reopened > 0 and leaf.reopened > 0
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
