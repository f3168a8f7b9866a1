"""hybridsync as a bench engine: :class:`~hybridsync.Memory` replicas joined
by :class:`~hybridsync.Link` pairs over :class:`hybridsync.sim.Network`.

The star of :class:`~hybridsync.bench.core.NetConfig` becomes a
:class:`~hybridsync.sim.Network` built with the cell's replica names
(``replicas[0]`` the hub and parent of every other replica), the same loss,
duplication, reordering and seed, and a delay of exactly one tick. Every
frame a link emits -- requests, replies, retransmissions, bare polls and
acknowledgements -- is counted: :attr:`wire_bytes` and :attr:`messages` are
the network's ``bytes_sent`` and ``frames_sent`` summed over every edge and
direction (copies the network itself duplicates are not counted, for any
engine).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import xxhash

from hybridsync import KVCache, Memory
from hybridsync.bench.core import (
    Engine,
    KVAppend,
    KVTruncate,
    MetaAppend,
    MetaDelete,
    MetaSet,
    NetConfig,
    Op,
    TextEdit,
    TextReplace,
    kv_rows,
)
from hybridsync.sim import Network

__all__ = ["HybridEngine", "kv_digest_of", "state_bytes_of"]

#: Bytes of one page hash in a page table (xxh3-64).
PAGE_HASH_BYTES = 8


def kv_digest_of(cache: KVCache) -> str:
    """xxh3-128 (hex) over the cache's quantized rows in ``kv_rows`` order:
    for each layer, K then V, the ``[head][token]`` rows of
    :meth:`KVCache.quantized`."""
    h = xxhash.xxh3_128()
    for layer in range(cache.layers):
        for kind in ("k", "v"):
            h.update(np.ascontiguousarray(cache.quantized(layer, kind)).tobytes())
    return h.hexdigest()


def _page_table_bytes(cache: KVCache) -> int:
    return PAGE_HASH_BYTES * cache.layers * 2 * cache.kv_heads * cache.pages


def state_bytes_of(memory: Memory) -> int:
    """What ``memory`` keeps to synchronise, in bytes (see :meth:`HybridEngine.state_bytes`).
    A string object held in several places (a document's text, the shadows
    and backups of the links that agree with it) is counted once: it is
    held once."""
    seen: set[int] = set()
    total = 0
    for text in memory.text.values():
        if id(text) not in seen:
            seen.add(id(text))
            total += len(text.encode())
    total += len(memory.meta.update_since(None))
    for cache in memory.kv.values():
        total += cache.nbytes + _page_table_bytes(cache)
    return total + sum(link.state_bytes(seen) for link in memory.links)


class HybridEngine(Engine):
    """hybridsync over the simulated star.

    Args:
        replicas: replica names; ``replicas[0]`` is the hub (server side of
            every link), the others its clients.
        net: loss, duplication, reordering and the seed of the network.
        **options: passed to :class:`~hybridsync.sim.Network`
            (``poll_interval``, ``retransmit_after``). ``retransmit_after``
            defaults to 2: a client resends an unanswered request once a round
            trip (two ticks at the bench's one-tick delay) has passed, instead
            of on every tick (the simulator's default, which would resend
            every request once even on a perfect network).

    Text edits replace the agent's copy by ``old[:pos] + insert + old[pos + delete:]``
    with ``pos`` and ``delete`` clamped to the document as the replica holds
    it (only concurrent workloads ever need the clamp); the replica gets the
    text once per tick, before its links run (what an agent editing its own
    buffer does). A :class:`~hybridsync.bench.core.TextReplace` hands it the
    new text as is. A transaction's
    metadata operations run in one :meth:`Memory.transaction`. A replica owns
    the KV caches it appends to: a q4_0 :class:`~hybridsync.kv.KVCache` with
    256-token pages, created by the first :class:`KVAppend`.
    """

    name: ClassVar[str] = "hybridsync"

    def __init__(self, replicas: Sequence[str], net: NetConfig, **options: Any) -> None:
        super().__init__(replicas, net)
        if not self.replicas:
            raise ValueError("a bench network needs at least one replica")
        options.setdefault("retransmit_after", 2)
        self.network = Network(
            net.seed,
            loss=net.loss,
            duplicate=net.duplicate,
            reorder=net.reorder,
            reorder_ticks=net.reorder_ticks,
            **options,
        )
        for name in self.replicas:
            self.network.add_replica(name)
        hub = self.replicas[0]
        for name in self.replicas[1:]:
            self.network.connect(hub, name)
        #: Texts written since the last tick: (replica, doc) -> text. An agent
        #: edits its own buffer and hands the replica the text once per tick.
        self._pending: dict[tuple[str, str], str] = {}

    def memory(self, replica: str) -> Memory:
        """The :class:`Memory` of ``replica``."""
        return self.network.memory(replica)

    # -- the engine interface ----------------------------------------------------

    def apply(self, replica: str, ops: Sequence[Op]) -> None:
        memory = self.network.memory(replica)
        meta_ops = [op for op in ops if isinstance(op, (MetaSet, MetaDelete, MetaAppend))]
        if meta_ops:
            with memory.transaction():
                for meta_op in meta_ops:
                    _apply_meta(memory, meta_op)
        for op in ops:
            if isinstance(op, TextEdit):
                key = (replica, op.doc)
                old = self._pending.get(key)
                if old is None:
                    old = memory.text.get(op.doc, "")
                pos = min(op.pos, len(old))
                end = min(pos + op.delete, len(old))
                self._pending[key] = old[:pos] + op.insert + old[end:]
            elif isinstance(op, TextReplace):
                self._pending[(replica, op.doc)] = op.text
            elif isinstance(op, KVAppend):
                self._kv_append(memory, op)
            elif isinstance(op, KVTruncate):
                memory.kv[op.cache].truncate(op.tokens)

    @staticmethod
    def _kv_append(memory: Memory, op: KVAppend) -> None:
        cache = memory.kv.get(op.cache)
        if cache is None:
            cache = KVCache(op.layers, op.kv_heads, op.head_dim, "q4_0", page_tokens=256)
            memory.kv[op.cache] = cache
        row = cache.row_bytes
        data = kv_rows(op.cache, cache.tokens, op.tokens, op.layers, op.kv_heads, op.head_dim)
        rows = np.frombuffer(data, dtype=np.uint8).reshape(
            op.layers, 2, op.kv_heads, op.tokens, row
        )
        cache.append_quantized(rows[:, 0], rows[:, 1])

    def _write_pending(self) -> None:
        for (replica, doc), value in self._pending.items():
            self.network.memory(replica).text[doc] = value
        self._pending.clear()

    def tick(self) -> None:
        self._write_pending()
        self.network.tick()
        totals = self.network.totals()
        self.wire_bytes = totals.bytes_sent
        self.messages = totals.frames_sent

    def converged(self) -> bool:
        """:meth:`Network.quiescent`: equal replica digests (text, metadata
        and KV caches), every link idle, no frame that may carry edits in
        flight; and no text written since the last tick."""
        return not self._pending and self.network.quiescent()

    def text(self, replica: str, doc: str) -> str:
        pending = self._pending.get((replica, doc))
        if pending is not None:
            return pending
        return self.network.memory(replica).text.get(doc, "")

    def meta(self, replica: str) -> Any:
        return self.network.memory(replica).meta.to_py()

    def kv_digest(self, replica: str, cache: str) -> str:
        found = self.network.memory(replica).kv.get(cache)
        return "" if found is None else kv_digest_of(found)

    def state_bytes(self) -> int:
        """The largest, over replicas, of what a replica keeps to synchronise:

        - its text documents (UTF-8 bytes);
        - for every link and document, the shadow and the backup shadow
          (UTF-8 bytes), each string object once: a shadow that is the very
          string the replica holds as the text (the usual case once a link is
          in step) costs nothing more, in memory as in a durable replica's
          file (which saves such a shadow as a reference to the text);
        - the edits a link has not had acknowledged yet;
        - the metadata CRDT document of the current epoch, encoded
          (``len(meta.update_since(None))``, i.e. Yjs ``get_update()``: the
          same measure as ``meta.measure().encoded_bytes``);
        - the quantized bytes of every KV cache it holds (owned or mirrored,
          ``KVCache.nbytes``), plus the page tables: 8 bytes per page hash
          (one hash per layer, K/V, head and page) for the cache's own table
          and for every link's shadow of the peer's table.

        Python object overhead is not counted (peak RSS covers it).
        """
        return max(state_bytes_of(self.network.memory(name)) for name in self.replicas)


def _apply_meta(memory: Memory, op: MetaSet | MetaDelete | MetaAppend) -> None:
    container: Any = memory.meta
    path = op.path
    if isinstance(op, MetaAppend):
        for key in path:
            container = container[key]
        container.append(op.value)
        return
    for key in path[:-1]:
        container = container[key]
    if isinstance(op, MetaSet):
        container[path[-1]] = op.value
    else:
        del container[path[-1]]
