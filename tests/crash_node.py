"""A durable replica in its own process, for tests/test_store_crash.py.

``python crash_node.py ROLE REPLICA PEER PATH SEED``. Frames travel over
stdin/stdout as messages (1 type byte, 4-byte little-endian length, body):
the parent relays frames between two such processes and kills them (SIGKILL)
at random points: after a random number of the messages they send (an
opening, frames), never at a time of the clock. Messages to the parent:
``O`` (opened: what the file held, JSON), ``A`` (a save happened: what is
durable now, JSON), ``F`` (a frame), ``D`` (quiesced and idle: the replica
digest). From the parent: ``F`` (a frame), ``Q`` (stop writing, report the
digest when idle), ``X`` (save, close and exit).
"""

from __future__ import annotations

import json
import os
import random
import select
import struct
import sys
import time

import numpy as np

from hybridsync import KVCache, Link, Memory
from hybridsync.meta import CompactionPolicy

HEAD = struct.Struct("<cI")
# Large pages (4 layers x 4 heads x 128 dims, q4_0, 256 tokens: ~590 KB per
# page) so that kills land inside writes of large KV pages too.
GEOMETRY = dict(layers=4, kv_heads=4, head_dim=128, fmt="q4_0", page_tokens=256)
MAX_TOKENS = 3000


def rows(seed: int, n: int) -> np.ndarray:
    """Deterministic rows for tokens ``seed .. seed+n``."""
    g = GEOMETRY
    out = np.empty((g["layers"], g["kv_heads"], n, g["head_dim"]), np.float32)
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        out[:, :, i] = rng.standard_normal((g["layers"], g["kv_heads"], g["head_dim"]))
    return out


def send(kind: bytes, body: bytes) -> None:
    out = sys.stdout.buffer
    out.write(HEAD.pack(kind, len(body)) + body)
    out.flush()


def main() -> None:
    role, rid, peer, path, seed = sys.argv[1:6]
    rng = random.Random(int(seed))
    policy = CompactionPolicy(max_ratio=1.2, slack_bytes=512)
    memory = Memory(rid, path=path, compaction=policy, fsync=False)
    link = Link(memory, peer, role=role)  # type: ignore[arg-type]
    log_name, kv_name = f"log-{rid}", f"kv-{rid}"
    lines = memory.text.get(log_name, "").splitlines()
    written = len(lines)
    cache = memory.kv.get(kv_name)
    send(b"O", json.dumps({"lines": lines, "kv": cache.tokens if cache else 0}).encode())

    def ack(kv: int | None = None) -> None:
        c = memory.kv.get(kv_name)
        if kv is None:
            kv = c.tokens if c else 0
        send(b"A", json.dumps({"lines": written, "kv": kv}).encode())

    if cache is not None and cache.tokens > MAX_TOKENS:
        ack(0)  # about to cut the cache: the parent expects no tokens from now on
        cache.truncate(rng.randint(0, 600))
        memory.flush()
    ack()
    stdin = sys.stdin.buffer.raw  # type: ignore[attr-defined]
    buf = b""
    quiet = False
    last_send = 0.0
    last_digest = 0.0
    while True:
        ready, _, _ = select.select([stdin], [], [], 0.002)
        if ready:
            chunk = os.read(stdin.fileno(), 1 << 20)
            if not chunk:
                return  # the parent is gone
            buf += chunk
        while len(buf) >= HEAD.size:
            kind, n = HEAD.unpack_from(buf)
            if len(buf) < HEAD.size + n:
                break
            body, buf = buf[HEAD.size : HEAD.size + n], buf[HEAD.size + n :]
            if kind == b"F":
                link.incoming(body)
            elif kind == b"Q":
                quiet = True
            elif kind == b"X":
                memory.close()
                return
        if not quiet and rng.random() < 0.3:
            r = rng.random()
            if r < 0.45:
                memory.text[log_name] = memory.text.get(log_name, "") + f"{rid}:{written}\n"
                written += 1
            elif r < 0.7:
                with memory.transaction():
                    memory.meta[f"count-{rid}"] = written
                    memory.meta[f"note-{rid}-{written % 7}"] = {"at": written, "by": rid}
            elif r < 0.8:
                memory.text["shared"] = memory.text.get("shared", "") + f"{rid} {written}\n"
            else:
                c = memory.kv.get(kv_name)
                if c is None:
                    c = memory.kv[kv_name] = KVCache(**GEOMETRY)  # type: ignore[arg-type]
                t, n = c.tokens, rng.choice((1, 3, 17, 64, 300))
                c.append(rows(t, n), rows(1_000_000 + t, n))
        if not quiet and rng.random() < 0.02:
            memory.flush()
            ack()
        now = time.monotonic()
        frame = None
        if role == "server":
            frame = link.outgoing()
        elif now - last_send > (0.03 if link.awaiting_reply else 0.005):
            frame = link.outgoing()
            last_send = now
        if frame is not None:
            ack()  # the frame's state was saved before it was handed out
            send(b"F", frame)
        if quiet and now - last_digest > 0.1 and link.idle and not link.awaiting_reply:
            last_digest = now
            send(b"D", memory.digest().encode())


if __name__ == "__main__":
    main()
