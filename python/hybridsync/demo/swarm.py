"""``hybridsync demo``: a live swarm of separate processes on loopback.

The coordinator (the ``hybridsync demo`` process) starts a hub process and one
process per agent, and runs one fault-injecting relay
(:class:`~hybridsync.net.FaultProxy`) between each agent and the hub that
loses, duplicates and reorders messages. For ``--duration`` seconds every
agent writes, through its relay:

* text: its own section of a shared plan (adds, checks off, rewords and
  drops steps) and a private notes document (appends observations);
* structured metadata: a shared task board (claims, progress, completion,
  new tasks; concurrent claims of one task are settled by the CRDT) and its
  entry in a shared status map;
* a KV cache: its own quantized cache ``kv/<agent>`` (Q4_0; the agent is its
  only writer, every other replica holds a read-only mirror), which grows by
  a few tokens of random keys and values on some ticks ("the context grows")
  and is now and then truncated back ("a tool result is dropped").

The processes report samples (digest, counters) on stdout; the coordinator
shows them live, waits for every replica to hold the same digest, checks that
no agent's own writes were lost, and prints what crossed the wire per channel
next to an estimate for a pure-CRDT stack. It writes ``swarm.png`` (bytes and
divergence over time), ``summary.json`` and the processes' logs to ``--out``.

How the numbers are obtained:

* *bytes per channel*: each process counts every frame its links emit (a
  wrapper around :meth:`hybridsync.Link.outgoing`, installed in the demo's
  worker processes only) and splits it by re-encoding the frame with only its
  text entries, only its metadata block and only its KV entries (a
  compressed frame's body is shared out in proportion; the KV section is
  never compressed and is counted exactly). Retransmissions count; the
  transport's MAC, counter and WebSocket headers are estimated from the
  relays' message counts.
* *pure-CRDT estimate*: every write of the run (logged with its time) is
  replayed in time order through one pycrdt document, one transaction per
  write; each incremental update is counted once up to the hub and once down
  to every other replica, with the y-protocols message header, on a lossless
  network, plus the initial state each agent downloads. A KV cache is a
  ``Map`` of one ``bytes`` value per (layer, K|V) buffer: Yjs has no partial
  update of a binary value, so every append or truncation replaces every
  buffer it changed (all of them) whole: each KV write costs about the
  cache's whole quantized size at that moment (zero-filled stand-ins of the
  right sizes go through pycrdt: binary content is stored as is).

Also the worker program: ``python -m hybridsync.demo.swarm hub|agent ...`` (the
secret comes from the environment, never from the command line).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import xxhash
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from hybridsync.channels.kv import KVCache
from hybridsync.channels.meta import canonical_json
from hybridsync.memory import Memory
from hybridsync.sync.frame import decode_frame, encode_frame
from hybridsync.sync.link import Link, LinkMetrics

__all__ = ["DemoConfig", "crdt_estimate", "run_demo", "split_frame"]

SECRET_ENV = "HYBRIDSYNC_DEMO_SECRET"
HOST = "127.0.0.1"
#: Session timing for the demo (loopback): quick cycles and retransmissions.
TIMING: dict[str, Any] = {
    "period": (0.03, 0.3),
    "backoff": (0.05, 1.0),
    "reply_timeout": (0.05, 0.4),
}
#: Seconds between samples while the agents write.
SAMPLE_EVERY = 0.25
#: Seconds between digest checks once the writes stopped.
CONVERGE_POLL = 0.01
#: Transport bytes per message besides the sync frame: counter (8) + kind (1) +
#: HMAC-SHA256 tag (32), and about 5 bytes of WebSocket header (2-4 server to
#: client, 6-8 client to server with the mask).
TRANSPORT_BYTES_PER_MESSAGE = 41 + 5
#: y-protocols sync message header before an update: type, sync step, varint length.
YJS_HEADER = 2
#: Each agent's KV cache: GGML Q4_0 with a small model's geometry (4 layers,
#: 2 KV heads of 64 values), pages of 64 tokens: 576 quantized bytes per token.
KV_GEOMETRY: dict[str, Any] = {
    "layers": 4,
    "kv_heads": 2,
    "head_dim": 64,
    "fmt": "q4_0",
    "page_tokens": 64,
}
#: Tokens an agent's context holds at most: past that, it is cut back to half
#: (as when an agent summarises its context); keeps long runs bounded.
KV_MAX_TOKENS = 2048

log = logging.getLogger("hybridsync.swarm")


# -- measuring frames -----------------------------------------------------------


def split_frame(data: bytes) -> tuple[int, int, int, int]:
    """``(header, text, metadata, kv)`` bytes of an encoded frame; they add
    up to ``len(data)``.

    The header is what the frame costs with no entries, no metadata block and
    no KV entries (magic, flags, sender, sequence, checksum). Text, metadata
    and KV are the extra bytes of re-encoding the frame with only its
    entries, only its metadata block or only its KV entries. The KV section
    (page payloads and hashes, token counts, digests, page tables) is never
    compressed and comes before the body, so its share is exact; a
    compressed body is shared out between text and metadata in proportion.
    """
    frame = decode_frame(data)
    bare = replace(frame, entries=(), meta=None, kv=())
    base = len(encode_frame(bare, compress_threshold=-1))
    kv = 0
    if frame.kv:
        kv = len(encode_frame(replace(bare, kv=frame.kv), compress_threshold=-1)) - base
    text_raw = len(encode_frame(replace(bare, entries=frame.entries), compress_threshold=-1)) - base
    meta_raw = len(encode_frame(replace(bare, meta=frame.meta), compress_threshold=-1)) - base
    body = len(data) - base - kv
    raw = text_raw + meta_raw
    if raw > 0 and body != raw:
        text = round(body * text_raw / raw)
        return base, text, body - text, kv
    return base, text_raw, meta_raw, kv


@dataclass
class ChannelBytes:
    """Bytes of the frames a process's links emitted, per channel."""

    frames: int = 0
    header: int = 0
    text: int = 0
    meta: int = 0
    kv: int = 0
    #: Bytes of frames sent again unchanged (included in the channels above).
    resent: int = 0

    @property
    def total(self) -> int:
        return self.header + self.text + self.meta + self.kv

    def add(self, other: ChannelBytes) -> None:
        self.frames += other.frames
        self.header += other.header
        self.text += other.text
        self.meta += other.meta
        self.kv += other.kv
        self.resent += other.resent


class FrameMeter:
    """Counts every frame the links of this process emit, per channel.

    Installs a wrapper around :meth:`Link.outgoing` for the whole process;
    only the demo's worker processes do this.
    """

    def __init__(self) -> None:
        self.totals = ChannelBytes()
        self._last: dict[int, tuple[bytes, tuple[int, int, int, int]]] = {}

    def count(self, link: Link, data: bytes) -> None:
        t = self.totals
        last = self._last.get(id(link))
        if last is not None and last[0] == data:
            parts = last[1]  # sent again unchanged: a retransmission
            t.resent += len(data)
        else:
            try:
                parts = split_frame(data)
            except Exception:  # pragma: no cover - our own frames always decode
                parts = (len(data), 0, 0, 0)
            self._last[id(link)] = (data, parts)
        t.frames += 1
        t.header += parts[0]
        t.text += parts[1]
        t.meta += parts[2]
        t.kv += parts[3]

    def install(self) -> None:
        original = Link.outgoing
        meter = self

        def outgoing(self: Link) -> bytes | None:
            data = original(self)
            if data is not None:
                meter.count(self, data)
            return data

        Link.outgoing = outgoing  # type: ignore[method-assign]


# -- the shared workload ------------------------------------------------------------

_VERBS = (
    "profile",
    "bisect",
    "review",
    "summarise",
    "reproduce",
    "benchmark",
    "document",
    "refactor",
    "test",
    "compare",
    "trace",
    "shard",
)
_OBJECTS = (
    "the tokenizer cache",
    "the flaky nightly test",
    "retrieval latency",
    "memory growth in worker 3",
    "the retry policy",
    "prompt templates",
    "the embedding index",
    "tool-call errors",
    "the eval harness",
    "context-window overflow",
    "the rate limiter",
    "log ingestion",
)
_FINDINGS = (
    "p95 latency up 12% after the cache change",
    "two failures share a stack trace in the parser",
    "the index rebuild takes 41 s on the small box",
    "retries hide a timeout in the search tool",
    "the summary drops the second table",
    "agent handoff loses the open question list",
    "warm cache cuts the first-token time in half",
    "the regression starts at the dependency bump",
)


def _phrase(rng: random.Random) -> str:
    return f"{rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"


def section_bounds(plan: str, name: str) -> tuple[int, int]:
    """Start and end of agent ``name``'s section of the plan (after its header line)."""
    header = f"## {name}\n"
    at = 0 if plan.startswith(header) else plan.index(f"\n{header}") + 1
    start = at + len(header)
    nxt = plan.find("\n## ", start - 1)
    return start, (nxt + 1 if nxt >= 0 else len(plan))


def splice(old: str, new: str) -> tuple[int, int, str]:
    """``(position, deleted count, inserted text)`` turning ``old`` into ``new``."""
    limit = min(len(old), len(new))
    p = 0
    while p < limit and old[p] == new[p]:
        p += 1
    s = 0
    while s < limit - p and old[len(old) - 1 - s] == new[len(new) - 1 - s]:
        s += 1
    return p, len(old) - p - s, new[p : len(new) - s]


def seed_state(memory: Memory, agents: int, rng: random.Random) -> list[dict[str, Any]]:
    """The hub's initial plan and task board; returns the writes for the replay."""
    now = time.time()
    parts = ["# Shared plan: nightly regression sweep\n\n"]
    for i in range(1, agents + 1):
        parts.append(f"## agent-{i}\n")
        parts.extend(f"- [ ] {_phrase(rng)}\n" for _ in range(2))
    plan = "".join(parts)
    memory.text["plan"] = plan
    tasks = {
        f"t{k:02d}": {"title": _phrase(rng), "status": "todo", "owner": None, "progress": 0}
        for k in range(1, 13)
    }
    with memory.transaction():
        memory.meta["tasks"] = tasks
        memory.meta["status"] = {}
    return [
        {"t": now, "who": "hub", "doc": "plan", "section": None, "pos": 0, "del": 0, "ins": plan},
        {"t": now, "who": "hub", "meta": [[[], "tasks", tasks], [[], "status", {}]]},
    ]


def ready_to_write(memory: Memory, name: str) -> bool:
    """The agent holds the initial state (writing before would race its creation)."""
    plan = memory.text.get("plan", "")
    return f"## {name}\n" in plan and "tasks" in memory.meta and "status" in memory.meta


class AgentWriter:
    """One agent's writes, logged with their times for the pure-CRDT replay."""

    def __init__(self, name: str, memory: Memory, rng: random.Random) -> None:
        self.name = name
        self.memory = memory
        self.rng = rng
        self.ops: list[dict[str, Any]] = []
        self.ticks = self.text_writes = self.meta_writes = 0
        self.current: str | None = None
        self.done = self.added = self.lost_claims = 0
        self.last_write = 0.0
        self.started = time.time()
        self.last_status: dict[str, Any] | None = None
        # The KV cache, created on the first tick; its random keys and values
        # come from a generator seeded by the agent's rng (deterministic).
        self.kv_name = f"kv/{name}"
        self.cache: KVCache | None = None
        self.np_rng = np.random.default_rng(rng.getrandbits(64))
        self.kv_appends = self.kv_truncations = 0
        #: Tokens and quantized bytes appended, and the tokens the cache should hold.
        self.kv_appended = self.kv_appended_bytes = self.kv_tokens = 0

    @property
    def kv_writes(self) -> int:
        return self.kv_appends + self.kv_truncations

    @property
    def writes(self) -> int:
        return self.text_writes + self.meta_writes + self.kv_writes

    def tick(self) -> None:
        self.ticks += 1
        r = self.rng.random
        if r() < 0.55:
            self.edit_plan()
        if r() < 0.45:
            self.append_note()
        if r() < 0.5:
            self.work_on_task()
        if r() < 0.4:
            self.update_status()
        if self.cache is None:
            self.create_cache()
        roll = r()
        if roll < 0.3:
            self.grow_context()
        elif roll < 0.35:
            self.drop_context()

    # -- text

    def _text(self, doc: str, section: str | None, old: str, new: str) -> None:
        pos, delete, insert = splice(old, new)
        now = time.time()
        self.ops.append(
            {
                "t": now,
                "who": self.name,
                "doc": doc,
                "section": section,
                "pos": pos,
                "del": delete,
                "ins": insert,
            }
        )
        self.text_writes += 1
        self.last_write = now

    def own_section(self) -> str:
        plan = self.memory.text["plan"]
        start, end = section_bounds(plan, self.name)
        return plan[start:end]

    def edit_plan(self) -> None:
        rng = self.rng
        plan = self.memory.text["plan"]
        start, end = section_bounds(plan, self.name)
        section = plan[start:end]
        lines = section.splitlines(keepends=True)
        open_ = [i for i, line in enumerate(lines) if line.startswith("- [ ]")]
        closed = [i for i, line in enumerate(lines) if line.startswith("- [x]")]
        roll = rng.random()
        if len(lines) > 10 and closed and roll < 0.3:
            del lines[rng.choice(closed)]
        elif open_ and roll < 0.55:
            i = rng.choice(open_)
            lines[i] = "- [x]" + lines[i][5:]
        elif open_ and roll < 0.7:
            i = rng.choice(open_)
            lines[i] = f"- [ ] {_phrase(rng)}\n"
        else:
            lines.insert(rng.randint(0, len(lines)), f"- [ ] {_phrase(rng)}\n")
        new_section = "".join(lines)
        if new_section == section:
            return
        self.memory.text["plan"] = plan[:start] + new_section + plan[end:]
        self._text("plan", self.name, section, new_section)

    def append_note(self) -> None:
        doc = f"notes/{self.name}"
        old = self.memory.text.get(doc, "")
        head = "" if old else f"# notes of {self.name}\n"
        stamp = time.time() - self.started
        new = f"{old}{head}[{stamp:6.2f}s] {self.rng.choice(_FINDINGS)}\n"
        self.memory.text[doc] = new
        self._text(doc, None, old, new)

    # -- metadata

    def _meta(self, sets: list[list[Any]]) -> None:
        now = time.time()
        self.ops.append({"t": now, "who": self.name, "meta": sets})
        self.meta_writes += 1
        self.last_write = now

    def work_on_task(self) -> None:
        rng = self.rng
        meta = self.memory.meta
        board = meta["tasks"].to_py()
        if self.current is not None:
            task = board.get(self.current)
            if not isinstance(task, dict) or task.get("owner") != self.name:
                self.lost_claims += 1  # a concurrent claim won
                self.current = None
                return
            progress = int(task.get("progress") or 0) + rng.randint(10, 40)
            path = ["tasks", self.current]
            if progress >= 100:
                with self.memory.transaction():
                    meta["tasks"][self.current]["status"] = "done"
                    meta["tasks"][self.current]["progress"] = 100
                self._meta([[path, "status", "done"], [path, "progress", 100]])
                self.done += 1
                self.current = None
            else:
                meta["tasks"][self.current]["progress"] = progress
                self._meta([[path, "progress", progress]])
            return
        todo = sorted(
            tid
            for tid, task in board.items()
            if isinstance(task, dict) and task.get("status") == "todo" and task.get("owner") is None
        )
        if todo and rng.random() < 0.8:
            tid = rng.choice(todo)
            with self.memory.transaction():
                meta["tasks"][tid]["owner"] = self.name
                meta["tasks"][tid]["status"] = "doing"
            self._meta([[["tasks", tid], "owner", self.name], [["tasks", tid], "status", "doing"]])
            self.current = tid
        else:
            self.added += 1
            tid = f"{self.name}/{self.added}"
            task = {"title": _phrase(rng), "status": "todo", "owner": None, "progress": 0}
            meta["tasks"][tid] = task
            self._meta([[["tasks"], tid, task]])

    # -- KV cache

    def _kv(self, op: str, tokens: int, appended_bytes: int = 0) -> None:
        """Log a KV write: ``tokens`` added (or removed, negative) and the size
        of each (layer, K|V) buffer afterwards, for the pure-CRDT replay."""
        cache = self.cache
        assert cache is not None
        now = time.time()
        self.ops.append(
            {
                "t": now,
                "who": self.name,
                "kv": self.kv_name,
                "op": op,
                "tokens": tokens,
                "layers": cache.layers,
                "buffer_bytes": cache.kv_heads * cache.tokens * cache.row_bytes,
                "bytes": appended_bytes,
            }
        )
        if op != "create":
            self.last_write = now

    def create_cache(self) -> None:
        self.cache = KVCache(**KV_GEOMETRY)
        self.memory.kv[self.kv_name] = self.cache  # this replica owns it
        self._kv("create", 0)

    def grow_context(self) -> None:
        """The agent's context grows by a few tokens (random keys and values)."""
        cache = self.cache
        assert cache is not None
        n = self.rng.randint(8, 24)
        if cache.tokens + n > KV_MAX_TOKENS:
            self.drop_context(cache.tokens // 2)
        shape = (cache.layers, cache.kv_heads, n, cache.head_dim)
        keys = self.np_rng.standard_normal(shape, dtype=np.float32)
        values = self.np_rng.standard_normal(shape, dtype=np.float32)
        before = cache.nbytes
        cache.append(keys, values)
        self.kv_appends += 1
        self.kv_appended += n
        self.kv_tokens += n
        self.kv_appended_bytes += cache.nbytes - before
        self._kv("append", n, cache.nbytes - before)

    def drop_context(self, n: int | None = None) -> None:
        """The agent drops its last ``n`` tokens (default: a tool result's worth)."""
        cache = self.cache
        assert cache is not None
        if n is None:
            n = self.rng.randint(8, 48)
        n = min(n, cache.tokens)
        if n <= 0:
            return
        cache.truncate(cache.tokens - n)
        self.kv_truncations += 1
        self.kv_tokens -= n
        self._kv("truncate", -n)

    def update_status(self) -> None:
        value = {
            "state": "working" if self.current else "idle",
            "task": self.current,
            "tick": self.ticks,
            "done": self.done,
        }
        self.memory.meta["status"][self.name] = value
        self.last_status = value
        self._meta([[["status"], self.name, value]])


# -- worker processes ------------------------------------------------------------------


def _emit(tag: str, payload: Any = None) -> None:
    line = tag if payload is None else f"{tag} {json.dumps(payload, separators=(',', ':'))}"
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _commands() -> asyncio.Queue[str]:
    """Lines of stdin, delivered to the event loop; end of input means quit."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()

    def reader() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line.strip())
        loop.call_soon_threadsafe(queue.put_nowait, "quit")

    threading.Thread(target=reader, daemon=True).start()
    return queue


def doc_hashes(memory: Memory) -> dict[str, str]:
    """A short hash per document, one for the metadata and one per KV cache
    (``"(kv) NAME"``: its token count and page-table digest)."""
    out = {name: xxhash.xxh3_64_hexdigest(value.encode()) for name, value in memory.text.items()}
    out["(metadata)"] = xxhash.xxh3_64_hexdigest(canonical_json(memory.meta.to_py()))
    for name, cache in memory.kv.items():
        out[f"(kv) {name}"] = f"{cache.tokens}:{cache.digest():016x}"
    return out


def kv_content_hash(cache: KVCache) -> str:
    """xxh3-64 of a cache's token count and quantized rows, read through the
    public API (independent of the page tables that the sync compares)."""
    h = xxhash.xxh3_64()
    h.update(cache.tokens.to_bytes(8, "little"))
    for layer in range(cache.layers):
        for kind in ("k", "v"):
            h.update(np.ascontiguousarray(cache.quantized(layer, kind)).tobytes())
    return h.hexdigest()


def kv_caches(memory: Memory) -> dict[str, dict[str, Any]]:
    """What a replica holds of each KV cache (for the final checks)."""
    return {
        name: {
            "owner": cache.owner,
            "tokens": cache.tokens,
            "digest": f"{cache.digest():016x}",
            "content": kv_content_hash(cache),
            "nbytes": cache.nbytes,
            "pages": cache.pages * cache.layers * 2 * cache.kv_heads,
        }
        for name, cache in sorted(memory.kv.items())
    }


def _sum_metrics(items: list[LinkMetrics]) -> dict[str, int]:
    total: dict[str, int] = {}
    for m in items:
        for key, value in asdict(m).items():
            total[key] = total.get(key, 0) + int(value)
    return total


class Sampler:
    """Reports the replica's state on stdout: every :data:`SAMPLE_EVERY` seconds
    while writing; once ``fast``, checks the digest every :data:`CONVERGE_POLL`
    seconds and reports each change (and otherwise twice a second)."""

    def __init__(
        self,
        name: str,
        memory: Memory,
        meter: FrameMeter,
        links: Callable[[], dict[str, Any]],
        counters: Callable[[], dict[str, Any]],
    ) -> None:
        self.name = name
        self.memory = memory
        self.meter = meter
        self.links = links
        self.counters = counters
        self.fast = False
        self.digest = memory.digest()
        self.changed_at = time.time()
        self._wake = asyncio.Event()

    def go_fast(self) -> None:
        """Writes stopped: watch the digest closely from now on."""
        self.fast = True
        self._wake.set()

    def sample(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "t": time.time(),
            "digest": self.digest,
            "changed_at": self.changed_at,
            "docs": doc_hashes(self.memory),
            "kv_tokens": sum(c.tokens for c in self.memory.kv.values()),
            "sent": asdict(self.meter.totals),
            **self.links(),
            **self.counters(),
        }

    async def run(self) -> None:
        last_emit = 0.0
        while True:
            digest = self.memory.digest()
            now = time.time()
            changed = digest != self.digest
            if changed:
                self.digest, self.changed_at = digest, now
            if (self.fast and changed) or now - last_emit >= (0.5 if self.fast else SAMPLE_EVERY):
                _emit("S", self.sample())
                last_emit = now
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), CONVERGE_POLL if self.fast else SAMPLE_EVERY
                )
            self._wake.clear()


def _secret() -> bytes:
    value = os.environ.get(SECRET_ENV)
    if not value:
        raise SystemExit(f"the demo worker needs the secret in ${SECRET_ENV}")
    return bytes.fromhex(value)


async def _hub_worker(agents: int, seed: int) -> None:
    from hybridsync.net import serve

    memory = Memory("hub")
    seed_ops = seed_state(memory, agents, random.Random(seed))
    meter = FrameMeter()
    meter.install()
    async with serve(memory, HOST, 0, secret=_secret()) as hub:

        def links() -> dict[str, Any]:
            peers = hub.peers
            return {
                "link": _sum_metrics([p.link for p in peers.values()]),
                "rejected": sum(p.rejected for p in peers.values()),
                "connected": sum(p.connected for p in peers.values()),
            }

        sampler = Sampler("hub", memory, meter, links, dict)
        task = asyncio.create_task(sampler.run())
        _emit("PORT", hub.port)
        commands = _commands()
        try:
            while True:
                command = await commands.get()
                if command == "fast":
                    sampler.go_fast()
                elif command == "final":
                    _emit(
                        "FINAL",
                        {
                            **sampler.sample(),
                            "text": dict(memory.text),
                            "meta": memory.meta.to_py(),
                            "kv": kv_caches(memory),
                            "meta_metrics": asdict(memory.meta.measure()),
                            "ops": seed_ops,
                        },
                    )
                elif command == "quit":
                    return
        finally:
            task.cancel()


async def _agent_worker(name: str, url: str, seed: int) -> None:
    from hybridsync.net import SyncTimeoutError, connect

    memory = Memory(name)
    meter = FrameMeter()
    meter.install()
    rng = random.Random(seed)
    writer = AgentWriter(name, memory, rng)
    async with connect(memory, url, secret=_secret(), **TIMING) as session:
        while not ready_to_write(memory, name):
            with contextlib.suppress(SyncTimeoutError):
                await session.sync(timeout=2)

        def links() -> dict[str, Any]:
            status = session.status()
            return {
                "link": _sum_metrics([status.link]),
                "rejected": status.rejected,
                "timeouts": status.timeouts,
                "connected": int(status.connected),
            }

        def counters() -> dict[str, Any]:
            return {
                "ticks": writer.ticks,
                "text_writes": writer.text_writes,
                "meta_writes": writer.meta_writes,
                "kv_writes": writer.kv_writes,
            }

        sampler = Sampler(name, memory, meter, links, counters)
        task = asyncio.create_task(sampler.run())
        _emit("READY")
        commands = _commands()
        try:
            command = await commands.get()
            if command == "go":
                writer.started = time.time()
                while True:
                    writer.tick()
                    session.notify()
                    try:
                        command = await asyncio.wait_for(commands.get(), rng.uniform(0.08, 0.2))
                    except asyncio.TimeoutError:
                        continue
                    if command in ("stop", "quit"):
                        break
            sampler.go_fast()
            _emit("STOPPED", {"last_write": writer.last_write, **counters()})
            while command != "quit":
                command = await commands.get()
                if command == "final":
                    _emit(
                        "FINAL",
                        {
                            **sampler.sample(),
                            "ops": writer.ops,
                            "own_section": writer.own_section(),
                            "own_notes": memory.text.get(f"notes/{name}", ""),
                            "own_status": writer.last_status,
                            "kv": kv_caches(memory),
                            "own_kv": {
                                "tokens": writer.kv_tokens,
                                "appends": writer.kv_appends,
                                "truncations": writer.kv_truncations,
                                "appended_tokens": writer.kv_appended,
                                "appended_bytes": writer.kv_appended_bytes,
                            },
                            "done": writer.done,
                            "added": writer.added,
                            "lost_claims": writer.lost_claims,
                        },
                    )
        finally:
            task.cancel()


def _worker_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m hybridsync.demo.swarm")
    sub = parser.add_subparsers(dest="role", required=True)
    hub = sub.add_parser("hub")
    hub.add_argument("--agents", type=int, required=True)
    hub.add_argument("--seed", type=int, default=0)
    agent = sub.add_parser("agent")
    agent.add_argument("--id", required=True)
    agent.add_argument("--url", required=True)
    agent.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s: %(message)s"
    )
    if args.role == "hub":
        asyncio.run(_hub_worker(args.agents, args.seed))
    else:
        asyncio.run(_agent_worker(args.id, args.url, args.seed))


# -- the pure-CRDT estimate ------------------------------------------------------------


def _varint_len(n: int) -> int:
    return max(1, math.ceil(n.bit_length() / 7))


@dataclass
class CrdtEstimate:
    """The same writes through pycrdt (see :func:`crdt_estimate`)."""

    initial_state: int = 0
    #: Updates of the text and metadata writes, and their bytes.
    updates: int = 0
    update_bytes: int = 0
    #: Updates of the KV writes (creations, appends, truncations), and their bytes.
    kv_updates: int = 0
    kv_update_bytes: int = 0
    #: Everything sent (all channels, the initial states included) ...
    wire_bytes: int = 0
    #: ... of which for the KV caches.
    kv_wire_bytes: int = 0
    #: Quantized bytes the agents appended to their KV caches (the data itself).
    kv_appended_bytes: int = 0
    final_state: int = 0
    texts: dict[str, str] = field(default_factory=dict)
    #: ``(time, cumulative wire bytes for text and metadata, for KV, KV bytes
    #: appended so far)`` after each write.
    timeline: list[tuple[float, int, int, int]] = field(default_factory=list)


def _crdt_value(value: Any) -> Any:
    from pycrdt import Array, Map

    if isinstance(value, dict):
        return Map({k: _crdt_value(v) for k, v in value.items()})
    if isinstance(value, list):
        return Array([_crdt_value(v) for v in value])
    return value


def crdt_estimate(
    seed_ops: list[dict[str, Any]], agent_ops: list[dict[str, Any]], agents: int
) -> CrdtEstimate:
    """Replay the writes through one pycrdt document in time order, one
    transaction per write, and count what a star of y-websocket-style peers
    would send: the initial state to each agent, then each incremental update
    once up to the hub and once down to every other agent (lossless).

    A KV cache is a root ``Map`` holding one ``bytes`` value per (layer, K|V)
    buffer (``[kv_heads, tokens, row_bytes]``, as :class:`KVCache` stores
    it). Yjs cannot update part of a binary value, so an append or a
    truncation, which changes every buffer, sets every buffer again whole:
    each KV write's update is about the cache's whole quantized size at that
    moment. Zero-filled values of the logged sizes stand in for the data
    (Yjs stores binary content as is, so the update sizes are exact).
    """
    from pycrdt import Doc, Map, Text

    doc: Doc[Any] = Doc()
    sizes: list[int] = []
    doc.observe(lambda event: sizes.append(len(event.update)))
    root = doc.get("meta", type=Map)

    def apply(op: dict[str, Any]) -> None:
        with doc.transaction():
            if "doc" in op:
                text = doc.get(op["doc"], type=Text)
                base = 0
                if op["section"] is not None:
                    base = section_bounds(str(text), op["section"])[0]
                at = base + op["pos"]
                if op["del"]:
                    del text[at : at + op["del"]]
                if op["ins"]:
                    text.insert(at, op["ins"])
            elif "kv" in op:
                cache = doc.get(op["kv"], type=Map)
                if op["op"] == "create":
                    cache["geometry"] = _crdt_value(KV_GEOMETRY)
                for layer in range(int(op["layers"])):
                    for kind in "KV":
                        cache[f"{layer}{kind}"] = bytes(int(op["buffer_bytes"]))
            else:
                for path, key, value in op["meta"]:
                    node: Any = root
                    for part in path:
                        node = node[part]
                    node[key] = _crdt_value(value)

    est = CrdtEstimate()
    for op in seed_ops:
        apply(op)
    est.initial_state = len(doc.get_update())
    wire = est.initial_state * agents
    kv_wire = 0
    for op in sorted(agent_ops, key=lambda o: float(o["t"])):
        before = len(sizes)
        apply(op)
        is_kv = "kv" in op
        est.kv_appended_bytes += int(op.get("bytes", 0)) if is_kv else 0
        for size in sizes[before:]:
            sent = agents * (size + YJS_HEADER + _varint_len(size))
            if is_kv:
                est.kv_updates += 1
                est.kv_update_bytes += size
                kv_wire += sent
            else:
                est.updates += 1
                est.update_bytes += size
                wire += sent
        est.timeline.append((float(op["t"]), wire, kv_wire, est.kv_appended_bytes))
    est.wire_bytes = wire + kv_wire
    est.kv_wire_bytes = kv_wire
    est.final_state = len(doc.get_update())
    names = {op["doc"] for op in [*seed_ops, *agent_ops] if "doc" in op}
    est.texts = {name: str(doc.get(name, type=Text)) for name in sorted(names)}
    return est


# -- the coordinator ---------------------------------------------------------------------


@dataclass
class DemoConfig:
    duration: float = 30.0
    agents: int = 3
    loss: float = 0.2
    duplicate: float = 0.1
    reorder: float = 0.1
    out: Path = Path("demo-out")
    seed: int = 1
    converge_timeout: float = 60.0


class _Child:
    """A worker process and what it reported."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.samples: list[dict[str, Any]] = []
        self.events: dict[str, asyncio.Future[Any]] = {}
        self.reader = asyncio.create_task(self._read())

    def event(self, tag: str) -> asyncio.Future[Any]:
        if tag not in self.events:
            self.events[tag] = asyncio.get_running_loop().create_future()
        return self.events[tag]

    @property
    def latest(self) -> dict[str, Any] | None:
        return self.samples[-1] if self.samples else None

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            tag, _, rest = raw.decode(errors="replace").rstrip("\n").partition(" ")
            try:
                payload = json.loads(rest) if rest else None
            except ValueError:
                continue  # not a line of the worker protocol
            if tag == "S" and isinstance(payload, dict):
                self.samples.append(payload)
            elif tag in ("PORT", "READY", "STOPPED", "FINAL"):
                future = self.event(tag)
                if not future.done():
                    future.set_result(payload)

    async def wait(self, tag: str, timeout: float) -> Any:
        future = self.event(tag)
        done, _ = await asyncio.wait(
            {future, self.reader}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if future.done():
            return future.result()
        if self.reader in done:
            raise RuntimeError(
                f"the {self.name} process exited (code {self.proc.returncode}) before {tag}"
            )
        raise TimeoutError(f"no {tag} from {self.name} within {timeout:.0f} s")

    async def send(self, command: str) -> None:
        stdin = self.proc.stdin
        if stdin is None or stdin.is_closing() or self.proc.returncode is not None:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            stdin.write(command.encode() + b"\n")
            await stdin.drain()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            await self.send("quit")
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.reader, 5)


async def _spawn(name: str, args: list[str], env: dict[str, str], logs: Path) -> _Child:
    log_file = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - the child writes it
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hybridsync.demo.swarm",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            env=env,
            limit=1 << 26,
        )
    finally:
        log_file.close()
    return _Child(name, proc)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if abs(n) < 1024 or unit == "MB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _live_table(children: list[_Child], proxies: list[Any]) -> Table:
    table = Table(title_justify="left", expand=False, caption_justify="left")
    table.add_column("replica")
    columns = ("ticks", "writes t/m/kv", "frames", "text", "meta", "kv", "headers", "kv tok")
    for column in (*columns, "retx", "refused"):
        table.add_column(column, justify="right")
    table.add_column("digest")
    digests = [c.latest["digest"] for c in children if c.latest]
    common = max(set(digests), key=digests.count) if digests else ""
    for child in children:
        s = child.latest
        if s is None:
            table.add_row(child.name, *["-"] * 11)
            continue
        sent, link = s["sent"], s["link"]
        writes = (
            f"{s['text_writes']:,}/{s['meta_writes']:,}/{s['kv_writes']:,}"
            if "text_writes" in s
            else "-"
        )
        table.add_row(
            child.name,
            f"{s['ticks']:,}" if "ticks" in s else "-",
            writes,
            f"{sent['frames']:,}",
            _human(sent["text"]),
            _human(sent["meta"]),
            _human(sent["kv"]),
            _human(sent["header"]),
            f"{s['kv_tokens']:,}",
            f"{link.get('retransmits', 0):,}",
            f"{s.get('rejected', 0):,}",
            Text(s["digest"][:8], style="green" if s["digest"] == common else "yellow"),
        )
    lost = sum(p.stats.lost for p in proxies)
    dup = sum(p.stats.duplicated for p in proxies)
    reo = sum(p.stats.reordered for p in proxies)
    msgs = sum(p.stats.messages for p in proxies)
    table.caption = (
        f"relays: {msgs:,} messages, {lost:,} lost, {dup:,} duplicated, {reo:,} reordered; "
        f"distinct digests now: {len(set(digests))}"
    )
    return table


@dataclass
class _Timeline:
    times: list[float]
    header: list[int]
    text: list[int]
    meta: list[int]
    kv: list[int]
    distinct: list[int]
    differing: list[int]


def _timeline(children: list[_Child], start: float, end: float, step: float = 0.1) -> _Timeline:
    """Resample every process's latest sample onto a common time grid."""
    series = [sorted(c.samples, key=lambda s: float(s["t"])) for c in children]
    idx = [-1] * len(series)
    tl = _Timeline([], [], [], [], [], [], [])
    t = start
    while t <= end + 1e-9:
        latest: list[dict[str, Any]] = []
        for k, samples in enumerate(series):
            while idx[k] + 1 < len(samples) and float(samples[idx[k] + 1]["t"]) <= t:
                idx[k] += 1
            if idx[k] >= 0:
                latest.append(samples[idx[k]])
        tl.times.append(t)
        tl.header.append(sum(s["sent"]["header"] for s in latest))
        tl.text.append(sum(s["sent"]["text"] for s in latest))
        tl.meta.append(sum(s["sent"]["meta"] for s in latest))
        tl.kv.append(sum(s["sent"]["kv"] for s in latest))
        tl.distinct.append(len({s["digest"] for s in latest}) if latest else 0)
        keys = set().union(*(s["docs"] for s in latest)) if latest else set()
        tl.differing.append(sum(1 for key in keys if len({s["docs"].get(key) for s in latest}) > 1))
        t += step
    return tl


def _plot(
    path: Path,
    tl: _Timeline,
    crdt: CrdtEstimate,
    t0: float,
    stop_at: float,
    converged_at: float | None,
    agents: int,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [t - t0 for t in tl.times]
    fig, (ax1, ax_kv, ax2) = plt.subplots(
        3, 1, figsize=(10, 9.5), sharex=True, height_ratios=[3, 2.5, 2]
    )
    kb = 1 / 1024
    ax1.stackplot(
        x,
        [v * kb for v in tl.text],
        [v * kb for v in tl.meta],
        [v * kb for v in tl.header],
        labels=["text entries", "metadata block", "frame headers"],
        colors=["#4c72b0", "#dd8452", "#bbbbbb"],
        alpha=0.85,
    )
    cx = [x[0], *(t - t0 for t, *_ in crdt.timeline)]
    if crdt.timeline:
        cy = [crdt.initial_state * agents * kb, *(b * kb for _, b, _, _ in crdt.timeline)]
        ax1.step(cx, cy, where="post", color="#c44e52", linestyle="--", linewidth=1.5)
        ax1.plot([], [], color="#c44e52", linestyle="--", label="pure CRDT (estimate, lossless)")
    ax1.set_ylabel("cumulative sync bytes (KB)")
    ax1.set_title(
        "hybridsync swarm: bytes sent by all replicas (frames, incl. retransmissions)\n"
        "text and metadata channels"
    )
    ax1.legend(loc="upper left", fontsize=8)
    ax1.grid(alpha=0.3)
    # KV caches: their own panel (megabytes, not kilobytes).
    mb = kb / 1024
    ax_kv.fill_between(
        x, [v * mb for v in tl.kv], color="#55a868", alpha=0.85, label="KV pages (hybridsync)"
    )
    if crdt.timeline:
        ky = [0.0, *(k * mb for _, _, k, _ in crdt.timeline)]
        ax_kv.step(cx, ky, where="post", color="#c44e52", linestyle="--", linewidth=1.5)
        fy = [0.0, *(a * agents * mb for *_, a in crdt.timeline)]
        ax_kv.step(cx, fy, where="post", color="#333333", linestyle=":", linewidth=1.2)
        ax_kv.plot(
            [],
            [],
            color="#333333",
            linestyle=":",
            label=f"KV data appended x {agents} other replicas (what must travel at least)",
        )
        ax_kv.plot(
            [],
            [],
            color="#c44e52",
            linestyle="--",
            label="pure CRDT, whole (layer, K|V) buffers per write (estimate, lossless)",
        )
    ax_kv.set_ylabel("cumulative KV bytes (MB)")
    ax_kv.set_title("KV-cache channel", fontsize=10)
    ax_kv.legend(loc="upper left", fontsize=8)
    ax_kv.grid(alpha=0.3)
    ax2.step(x, tl.distinct, where="post", label="distinct replica digests", color="#55a868")
    ax2.step(x, tl.differing, where="post", label="documents differing", color="#8172b3")
    ax2.set_ylabel("divergence")
    ax2.set_xlabel("seconds since the agents started writing")
    ax2.grid(alpha=0.3)
    for ax in (ax1, ax_kv, ax2):
        ax.axvspan(0, stop_at - t0, color="#eeeeee", zorder=0)
        if converged_at is not None:
            ax.axvline(converged_at - t0, color="#55a868", linestyle=":", linewidth=1.2)
    top = max([*tl.distinct, *tl.differing, 1])
    ax2.text(0.2, top + 0.3, "agents writing (shaded)", fontsize=8, color="#666666")
    if converged_at is not None:
        ax2.text(
            converged_at - t0,
            top + 0.3,
            "all replicas equal ",
            fontsize=8,
            color="#55a868",
            ha="right",
        )
    ax2.set_ylim(0, top + 1)
    ax2.legend(loc="center left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def _run(config: DemoConfig, console: Console) -> int:
    from hybridsync.net import FaultProxy

    wall = time.monotonic()
    out = config.out
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **{SECRET_ENV: secrets.token_bytes(32).hex()})
    n = config.agents
    children: list[_Child] = []
    proxies: list[FaultProxy] = []
    try:
        console.print(
            f"[bold]hybridsync demo[/]: a hub and {n} agents as separate processes; each agent "
            f"reaches the hub through a relay with {config.loss:.0%} loss, "
            f"{config.duplicate:.0%} duplication, {config.reorder:.0%} reordering"
        )
        hub = await _spawn(
            "hub", ["hub", "--agents", str(n), "--seed", str(config.seed)], env, logs
        )
        children.append(hub)
        port = await hub.wait("PORT", 60)
        for i in range(1, n + 1):
            proxy = FaultProxy(
                f"ws://{HOST}:{port}",
                seed=config.seed * 1000 + i,
                loss=config.loss,
                duplicate=config.duplicate,
                reorder=config.reorder,
                delay=(0.0, 0.003),
            )
            proxies.append(await proxy.start())
        agents = [
            await _spawn(
                f"agent-{i}",
                [
                    "agent",
                    "--id",
                    f"agent-{i}",
                    "--url",
                    proxies[i - 1].url,
                    "--seed",
                    str(config.seed * 1000 + i),
                ],
                env,
                logs,
            )
            for i in range(1, n + 1)
        ]
        children.extend(agents)
        for child in agents:
            await child.wait("READY", 60)

        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:>5.1f} s"),
            TimeElapsedColumn(),
        )
        writing = progress.add_task("agents writing", total=config.duration)
        t0 = time.time()
        for child in agents:
            await child.send("go")
        stop_at = t0 + config.duration
        converged_at: float | None = None
        last_write = 0.0
        with Live(console=console, refresh_per_second=4, transient=False) as live:

            def show(note: str = "") -> None:
                parts: list[Any] = [progress, _live_table(children, proxies)]
                if note:
                    parts.append(Text(note))
                live.update(Group(*parts))

            while time.time() < stop_at:
                progress.update(writing, completed=min(config.duration, time.time() - t0))
                show()
                await asyncio.sleep(0.25)
            progress.update(writing, completed=config.duration)
            for child in agents:
                await child.send("stop")
            await hub.send("fast")
            stopped = [await child.wait("STOPPED", 30) for child in agents]
            stop_at = time.time()
            last_write = max(float(s["last_write"]) for s in stopped)
            converging = progress.add_task("converging", total=config.converge_timeout)
            deadline = time.monotonic() + config.converge_timeout
            while time.monotonic() < deadline:
                latest = [c.latest for c in children]
                if all(latest) and len({s["digest"] for s in latest if s}) == 1:
                    break
                progress.update(converging, completed=time.time() - stop_at)
                show("waiting for every replica to hold the same digest ...")
                await asyncio.sleep(0.05)
            show()
        console.print()
        finals: list[dict[str, Any]] = []
        for child in children:
            await child.send("final")
        for child in children:
            final = await child.wait("FINAL", 30)
            finals.append(final)
            child.samples.append(final)  # the final state closes the timeline
    finally:
        for child in children:
            await child.stop()
        for proxy in proxies:
            await proxy.close()

    # -- results
    digests = {f["name"]: f["digest"] for f in finals}
    converged = len(set(digests.values())) == 1
    if converged:
        converged_at = max(float(f["changed_at"]) for f in finals)
    hub_final = finals[0]
    agent_finals = finals[1:]
    lost: list[str] = []
    hub_plan = hub_final["text"].get("plan", "")
    for f in agent_finals:
        name = f["name"]
        try:
            start, end = section_bounds(hub_plan, name)
            if hub_plan[start:end] != f["own_section"]:
                lost.append(f"{name}: plan section")
        except ValueError:
            lost.append(f"{name}: plan section missing")
        if hub_final["text"].get(f"notes/{name}", "") != f["own_notes"]:
            lost.append(f"{name}: notes")
        if f["own_status"] is not None and hub_final["meta"]["status"].get(name) != f["own_status"]:
            lost.append(f"{name}: status")
        # The agent's own KV cache: it holds every token it wrote, and the hub
        # holds the same cache (tokens, page-table digest, quantized rows).
        own = f["kv"].get(f"kv/{name}")
        on_hub = hub_final["kv"].get(f"kv/{name}")
        if own is None or own["owner"] != name:
            lost.append(f"{name}: KV cache not its own")
        elif own["tokens"] != f["own_kv"]["tokens"]:
            lost.append(
                f"{name}: KV cache holds {own['tokens']} tokens, wrote {f['own_kv']['tokens']}"
            )
        elif on_hub is None:
            lost.append(f"{name}: KV cache missing on the hub")
        elif on_hub != own:
            lost.append(f"{name}: KV cache")
    sent = ChannelBytes()
    link_bytes = 0
    for f in finals:
        sent.add(ChannelBytes(**f["sent"]))
        link_bytes += int(f["link"]["bytes_sent"])
    totals = {
        key: sum(int(f["link"].get(key, 0)) for f in finals)
        for key in (
            "retransmits",
            "resyncs",
            "stale_frames",
            "merges",
            "edits_applied",
            "kv_pages_sent",
            "kv_page_bytes_sent",
            "kv_resyncs",
            "kv_conflicts",
        )
    }
    rejected = sum(int(f.get("rejected", 0)) for f in finals)
    text_writes = sum(int(f["text_writes"]) for f in agent_finals)
    meta_writes = sum(int(f["meta_writes"]) for f in agent_finals)
    kv_writes = sum(int(f["kv_writes"]) for f in agent_finals)
    # KV: every replica holds the same caches (one per agent), byte for byte.
    hub_kv: dict[str, dict[str, Any]] = hub_final["kv"]
    kv_agree = len(hub_kv) == n and all(f["kv"] == hub_kv for f in finals)
    kv_stats = {
        key: sum(int(f["own_kv"][key]) for f in agent_finals)
        for key in ("appends", "truncations", "appended_tokens", "appended_bytes")
    }
    kv_tokens = sum(int(c["tokens"]) for c in hub_kv.values())
    kv_nbytes = sum(int(c["nbytes"]) for c in hub_kv.values())
    kv_pages = sum(int(c["pages"]) for c in hub_kv.values())
    relayed = sum(p.stats.messages for p in proxies)
    stats = {
        "lost": sum(p.stats.lost for p in proxies),
        "duplicated": sum(p.stats.duplicated for p in proxies),
        "reordered": sum(p.stats.reordered for p in proxies),
    }
    all_ops = [op for f in agent_finals for op in f["ops"]]
    crdt = crdt_estimate(hub_final["ops"], all_ops, n)
    replay_exact = all(hub_final["text"].get(k) == v for k, v in crdt.texts.items())
    board = hub_final["meta"].get("tasks", {})
    by_status = {
        s: sum(1 for t in board.values() if t.get("status") == s) for s in ("todo", "doing", "done")
    }
    hub_meta = hub_final["meta_metrics"]
    hub_text_bytes = sum(len(v.encode()) for v in hub_final["text"].values())

    # -- tables
    ok = converged and not lost and kv_agree
    table = Table(title="hybridsync demo: results", title_justify="left", show_lines=False)
    table.add_column("what")
    table.add_column("result")
    verdict = Text("yes" if converged else "NO", style="bold green" if converged else "bold red")
    table.add_row(
        "convergence",
        Text.assemble(
            verdict,
            f": {len(set(digests.values()))} distinct digest(s) over {len(digests)} replicas "
            f"({next(iter(digests.values()))[:16]})"
            if converged
            else f": {len(set(digests.values()))} distinct digests over {len(digests)} replicas",
        ),
    )
    if converged and converged_at is not None:
        table.add_row(
            "time to converge after the last write",
            f"{max(0.0, converged_at - last_write) * 1000:,.0f} ms",
        )
    table.add_row(
        "writes lost",
        Text(
            "none (every agent's plan section, notes, status and KV cache are on every replica)"
            if not lost
            else f"{len(lost)}: {', '.join(lost)}",
            style="green" if not lost else "bold red",
        ),
    )
    table.add_row(
        "writes",
        f"{text_writes + meta_writes + kv_writes:,} in {config.duration:.0f} s: "
        f"{text_writes:,} text, {meta_writes:,} metadata (task board: {len(board)} tasks, "
        f"{by_status['done']} done, {by_status['doing']} doing, {by_status['todo']} to do; "
        f"{sum(int(f['lost_claims']) for f in agent_finals)} claims lost to a concurrent claim), "
        f"{kv_writes:,} KV ({kv_stats['appends']:,} appends, "
        f"{kv_stats['truncations']:,} truncations)",
    )
    table.add_row(
        "faults injected",
        f"{relayed:,} messages relayed: {stats['lost']:,} lost, {stats['duplicated']:,} "
        f"duplicated, {stats['reordered']:,} reordered",
    )
    table.add_row(
        "healing",
        f"{totals['retransmits']:,} frames retransmitted, {rejected:,} messages refused "
        f"(replayed/reordered), {totals['stale_frames']:,} stale frames ignored, "
        f"{totals['resyncs']:,} resyncs (divergence detections), {totals['merges']:,} "
        f"three-way merges, {totals['kv_resyncs']:,} KV resyncs (digest mismatches)",
    )
    g = KV_GEOMETRY
    table.add_row(
        "KV caches",
        Text.assemble(
            Text("identical" if kv_agree else "DIFFER", style="green" if kv_agree else "bold red"),
            f" on all {len(finals)} replicas: {len(hub_kv)} caches ({g['fmt']}, {g['layers']} "
            f"layers x {g['kv_heads']} KV heads x {g['head_dim']}, pages of {g['page_tokens']} "
            f"tokens), one per agent, mirrored read-only elsewhere; "
            f"{kv_stats['appended_tokens']:,} tokens appended "
            f"({_human(kv_stats['appended_bytes'])} quantized), now {kv_tokens:,} tokens "
            f"({_human(kv_nbytes)}, {kv_pages:,} pages); {totals['kv_pages_sent']:,} pages "
            f"sent ({_human(totals['kv_page_bytes_sent'])} of page data), "
            f"{totals['kv_conflicts']:,} ownership conflicts",
        ),
    )
    console.print(table)

    bytes_table = Table(
        title="bytes on the wire (all frames the replicas' links sent, retransmissions included)",
        title_justify="left",
    )
    bytes_table.add_column("channel")
    bytes_table.add_column("bytes", justify="right")
    bytes_table.add_column("share", justify="right")
    bytes_table.add_column("how it is counted")
    total = max(1, sent.total)
    for label, value, how in (
        ("text", sent.text, "document entries: edits, acks, checksums (split per frame*)"),
        ("metadata", sent.meta, "metadata block: state vectors, Yjs updates (split per frame*)"),
        ("KV caches", sent.kv, "KV entries: pages with their hashes, digests, tables (exact*)"),
        ("frame headers", sent.header, "magic, flags, sender, sequence, checksum"),
    ):
        bytes_table.add_row(label, f"{value:,}", f"{value / total:.0%}", how)
    bytes_table.add_row(
        Text("sync frames, total", style="bold"),
        Text(f"{sent.total:,}", style="bold"),
        "100%",
        f"{sent.frames:,} frames (the links' own counters: {link_bytes:,} B)",
    )
    bytes_table.add_row(
        "  of which sent again",
        f"{sent.resent:,}",
        f"{sent.resent / total:.0%}",
        "retransmissions of lost or unanswered frames (in the rows above)",
    )
    transport = relayed * TRANSPORT_BYTES_PER_MESSAGE
    bytes_table.add_row(
        "transport overhead",
        f"~{transport:,}",
        "",
        f"estimate: {relayed:,} messages x {TRANSPORT_BYTES_PER_MESSAGE} B (MAC, counter, "
        "WebSocket header)",
    )
    console.print(bytes_table)
    console.print(
        "[dim]* each frame re-encoded with only its text entries / only its metadata block / "
        "only its KV entries; a compressed frame's body is shared out in proportion between "
        "text and metadata (the KV section is never compressed).[/]"
    )

    crdt_table = Table(
        title="the same work on a pure-CRDT stack (pycrdt; an estimate, not a run)",
        title_justify="left",
    )
    crdt_table.add_column("")
    crdt_table.add_column("hybridsync (measured)", justify="right")
    crdt_table.add_column("pure CRDT (estimate)", justify="right")
    crdt_table.add_column("ratio", justify="right")
    crdt_table.add_row(
        "sync bytes for the run",
        f"{sent.total:,}",
        f"{crdt.wire_bytes:,}",
        f"{sent.total / max(1, crdt.wire_bytes):.2f}x",
    )
    first_sends = sent.total - sent.resent
    crdt_table.add_row(
        "  without retransmissions",
        f"{first_sends:,}",
        f"{crdt.wire_bytes:,}",
        f"{first_sends / max(1, crdt.wire_bytes):.2f}x",
    )
    text_meta = sent.total - sent.kv
    crdt_text_meta = crdt.wire_bytes - crdt.kv_wire_bytes
    crdt_table.add_row(
        "  text and metadata (and headers)",
        f"{text_meta:,}",
        f"{crdt_text_meta:,}",
        f"{text_meta / max(1, crdt_text_meta):.2f}x",
    )
    crdt_table.add_row(
        "  KV caches",
        f"{sent.kv:,}",
        f"{crdt.kv_wire_bytes:,}",
        f"{sent.kv / max(1, crdt.kv_wire_bytes):.2f}x",
    )
    # A newcomer downloads the texts, the compacted metadata and every KV page
    # with its head, page index and hash (4 + 4 + 8 bytes).
    newcomer = hub_text_bytes + int(hub_meta["encoded_bytes"]) + kv_nbytes + 16 * kv_pages
    crdt_table.add_row(
        "state a new replica downloads",
        f"{newcomer:,}",
        f"{crdt.final_state:,}",
        f"{newcomer / max(1, crdt.final_state):.2f}x",
    )
    console.print(crdt_table)
    console.print(
        f"[dim]pure CRDT: the {text_writes + meta_writes:,} logged text and metadata writes "
        f"replayed in time order through one pycrdt document ({crdt.updates:,} updates, "
        f"{crdt.update_bytes:,} B); each update sent "
        f"once to the hub and once to each of the other {n - 1} agents with a {YJS_HEADER}+ B "
        f"y-protocols header, plus the initial state ({crdt.initial_state:,} B) to each agent; "
        f"no losses, no retransmissions, no authentication. hybridsync's bytes were measured "
        f"under {config.loss:.0%} loss. Replay reproduces the final texts: "
        f"{'yes' if replay_exact else 'NO'}. New replica: hybridsync sends the texts, the "
        f"compacted metadata (epoch {hub_meta['epoch']}) and the KV pages; the CRDT document "
        f"keeps its history.[/]"
    )
    kv_floor = crdt.kv_appended_bytes * n
    console.print(
        f"[dim]KV caches, pure CRDT: each cache a pycrdt Map of one bytes value per (layer, "
        f"K|V) buffer; Yjs cannot update part of a binary value, so each of the "
        f"{kv_writes:,} appends and truncations re-sends every buffer whole (about the "
        f"cache's full quantized size at that moment): {crdt.kv_updates:,} updates (the "
        f"caches' creation included), "
        f"{crdt.kv_update_bytes:,} B, times {n} (to the hub and on to the other agents). "
        f"For scale: the agents appended {crdt.kv_appended_bytes:,} B of quantized KV data, "
        f"which must reach the {n} other replicas: {kv_floor:,} B, about the least a scheme that "
        f"sends each appended byte once to each replica needs; hybridsync sent "
        f"{sent.kv / max(1, kv_floor):.2f}x that (it re-sends a partly filled page whole, and "
        f"its bytes include retransmissions). A Yjs Array of appended chunks would come nearer "
        f"that floor than the Map estimated here.[/]"
    )

    t_first = min((float(s["t"]) for c in children for s in c.samples), default=t0)
    t_last = max((float(s["t"]) for c in children for s in c.samples), default=stop_at) + 0.3
    tl = _timeline(children, max(t_first, t0 - 1.0), t_last)
    png = out / "swarm.png"
    _plot(png, tl, crdt, t0, stop_at, converged_at if converged else None, n)
    summary = {
        "config": {**asdict(config), "out": str(config.out)},
        "converged": converged,
        "digests": digests,
        "time_to_converge_s": (converged_at - last_write) if converged and converged_at else None,
        "reached_final_state_s": {
            f["name"]: round(float(f["changed_at"]) - last_write, 3) for f in finals
        },
        "lost_writes": lost,
        "writes": {"text": text_writes, "meta": meta_writes, "kv": kv_writes},
        "bytes": {**asdict(sent), "total": sent.total, "link_counters": link_bytes},
        "transport_overhead_estimate": transport,
        "faults": {"relayed": relayed, **stats},
        "healing": {**totals, "refused": rejected},
        "pure_crdt_estimate": {
            "wire_bytes": crdt.wire_bytes,
            "kv_wire_bytes": crdt.kv_wire_bytes,
            "initial_state": crdt.initial_state,
            "updates": crdt.updates,
            "update_bytes": crdt.update_bytes,
            "kv_updates": crdt.kv_updates,
            "kv_update_bytes": crdt.kv_update_bytes,
            "kv_appended_bytes": crdt.kv_appended_bytes,
            "final_state": crdt.final_state,
            "replay_reproduces_texts": replay_exact,
        },
        "newcomer_bytes": newcomer,
        "kv_caches": {
            "geometry": KV_GEOMETRY,
            "replicas_agree": kv_agree,
            "caches": hub_kv,
            **kv_stats,
            "tokens": kv_tokens,
            "nbytes": kv_nbytes,
            "pages_sent": totals["kv_pages_sent"],
            "page_bytes_sent": totals["kv_page_bytes_sent"],
            "kv_resyncs": totals["kv_resyncs"],
            "kv_conflicts": totals["kv_conflicts"],
        },
        "wall_seconds": time.monotonic() - wall,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    console.print(
        f"plot: {png}; summary: {out / 'summary.json'}; logs: {logs}/ "
        f"(wall time {time.monotonic() - wall:.1f} s)"
    )
    if not ok:
        console.print(
            "[bold red]the replicas did not converge, lost writes or hold different KV caches[/]"
        )
    return 0 if ok else 1


def run_demo(config: DemoConfig, console: Console | None = None) -> int:
    """Run the demo; 0 when every replica converged and no write was lost."""
    console = console or Console()
    try:
        return asyncio.run(_run(config, console))
    except (TimeoutError, RuntimeError) as exc:
        console.print(f"[bold red]demo failed:[/] {exc} (see {config.out / 'logs'})")
        return 2


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
