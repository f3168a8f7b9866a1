"""The KV-cache channel of a link: page-table shadows and page diffs.

Per link and cache, the sending side keeps a :class:`~hybridsync.kv.PageTable`
of what the peer holds (its shadow: hashes, no data). A cycle refreshes the
cache's own table for the pages written since the last cycle, compares that
range against the shadow and sends the pages whose hash differs, up to a
per-frame byte budget; the receiver verifies every page hash while decoding
the frame and applies nothing unless all check out. A PAGES entry that
completes the transfer carries the sender's table digest: a receiver that
ends up with another digest answers with its whole table (HAVE), and the
sender re-bases its shadow on it and sends only what differs. A link that
does not know the peer's table (a new or restarted link) probes with its
digest first, so a peer that already holds the cache receives nothing but
the pages it lacks. Delivery rides on the link's stop-and-wait exchange: a
frame is resent until answered, so the shadow is updated when a frame is
built. ``docs/protocol.md`` section 6.10 specifies it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from hybridsync.channels.kv import KVCache, KVCaches, KVConflict, KVPort, PageTable
from hybridsync.sync.frame import (
    KV_COMPLETE,
    KV_PROBE,
    KVEntry,
    KVKind,
    KVRun,
    _kv_pages,
    _kv_run,
)

if TYPE_CHECKING:
    from hybridsync.sync.link import Link

__all__ = ["KVChannel"]

_U32LE = np.dtype("<u4")
_U64LE = np.dtype("<u8")


class _Out:
    """What one link knows of the peer's copy of one cache."""

    __slots__ = ("acked", "dirty_from", "dirty_token", "probe")

    def __init__(self) -> None:
        self.acked: PageTable | None = None  # None: unknown, probe first
        self.probe: PageTable | None = None  # our table when we probed
        self.dirty_from: int | None = 0  # first page that may differ
        self.dirty_token: int | None = 0  # first token row written since the last send


class KVChannel:
    """The KV part of one :class:`~hybridsync.Link`."""

    def __init__(self, link: Link, frame_budget: int) -> None:
        self.link = link
        self.budget = frame_budget
        self.out: dict[str, _Out] = {}
        self.pending: set[str] = set()
        self.haves: dict[str, KVEntry] = {}
        self.deletes: dict[str, tuple[str, int]] = {}  # name -> (owner, uid)
        self.restart()

    @property
    def kv(self) -> KVCaches:
        return self.link.memory.kv

    @property
    def port(self) -> KVPort:
        return self.link.memory.kv.port

    def restart(self) -> None:
        """Forget everything about the peer: probe every cache again."""
        self.out = {name: _Out() for name in self.kv}
        self.pending = set(self.kv)
        self.haves.clear()
        self.deletes.clear()

    @property
    def idle(self) -> bool:
        return not (self.pending or self.haves or self.deletes)

    def state_bytes(self) -> int:
        """Bytes of the page tables kept of what the peer holds (8 per page
        of every layer, K|V and head, for each cache it is known to hold)."""
        total = 0
        for name, o in self.out.items():
            cache = self.kv.get(name)
            if cache is not None and o.acked is not None:
                total += 8 * cache.layers * 2 * cache.kv_heads * cache.pages
        return total

    # -- local changes ----------------------------------------------------------

    def mark(self, name: str, first_page: int, reset: bool, first_token: int = 0) -> None:
        cache = self.kv.get(name)
        if cache is not None and not cache.writable and cache.source is self:
            # A mirror changed towards its own source (a scan found rot): it
            # never sends pages upstream; a probe makes the owner's side
            # compare tables and send what differs.
            reset = True
        o = self.out.get(name)
        if o is None or reset:
            o = self.out[name] = _Out()
        else:
            if o.dirty_from is None or first_page < o.dirty_from:
                o.dirty_from = first_page
            if o.dirty_token is None or first_token < o.dirty_token:
                o.dirty_token = first_token
        self.deletes.pop(name, None)
        self.pending.add(name)

    def mark_deleted(self, name: str, owner: str, uid: int) -> None:
        self.out.pop(name, None)
        self.pending.discard(name)
        self.haves.pop(name, None)
        self.deletes[name] = (owner, uid)

    # -- sending ------------------------------------------------------------------

    def entries(self) -> tuple[KVEntry, ...]:
        """This frame's KV entries: at most one per cache (a HAVE waiting
        behind another entry for the same cache goes in the next frame)."""
        if not (self.pending or self.haves or self.deletes):
            return ()
        out: list[KVEntry] = []
        named: set[str] = set()
        if self.deletes:
            out = [
                KVEntry(name, KVKind.DELETE, owner, uid)
                for name, (owner, uid) in sorted(self.deletes.items())
            ]
            self.deletes.clear()
            named = {e.name for e in out}
        budget = self.budget
        caches = self.kv
        for name in sorted(self.pending):
            cache = caches.get(name)
            o = self.out.get(name)
            if cache is None or o is None or cache.owner is None:
                self.pending.discard(name)
                continue
            if name in named:
                continue
            if o.acked is None:
                self.pending.discard(name)
                if o.probe is None:
                    cache.refresh()
                    o.probe = cache.page_table.copy()
                    out.append(self._pages_entry(name, cache, KV_COMPLETE | KV_PROBE, ()))
                    named.add(name)
                continue
            entry, used = self._diff(name, cache, o, budget)
            budget = max(budget - used, 0)
            if o.dirty_from is None:
                self.pending.discard(name)
            if entry is not None:
                out.append(entry)
                named.add(name)
        if self.haves:
            for name in sorted(self.haves):
                if name not in named:
                    out.append(self.haves.pop(name))
        return tuple(out)

    def _pages_entry(
        self, name: str, cache: KVCache, flags: int, runs: tuple[KVRun, ...]
    ) -> KVEntry:
        assert cache.owner is not None
        digest = cache.page_table.digest() if flags & KV_COMPLETE else 0
        return _kv_pages(
            name, cache.owner, cache.uid, cache.geometry, cache.tokens, digest, flags, runs
        )

    def _diff(self, name: str, cache: KVCache, o: _Out, budget: int) -> tuple[KVEntry | None, int]:
        """Pages of ``cache`` the peer lacks, from ``o.dirty_from`` on.

        When the rows the peer holds are unchanged since the last send and
        its last page is partial, that page travels as a *tail*: only the
        rows the peer lacks, with the hash of the page they complete. The
        comparison, the budget and the update of what the peer holds are one
        core call (:meth:`PageTable.take_diff`) over the pages from
        ``o.dirty_from`` on only."""
        assert o.acked is not None
        cache.refresh()
        first = o.dirty_from or 0
        touched = o.dirty_token
        o.dirty_from = o.dirty_token = None
        acked = o.acked
        mine = cache.page_table
        tokens = cache.tokens
        pt = cache.page_tokens
        held = acked.tokens
        tail_page = None
        if touched is not None and touched >= held and held % pt and held < tokens:
            tail_page = held // pt  # the peer's partial last page only grew
        plan = acked.take_diff(mine, first, tokens, pt, cache.row_bytes, tail_page, budget, cache)
        if plan is None:
            return None, 0
        planned, sent, used, resume = plan
        flags = KV_COMPLETE
        if resume is not None:
            # Whole pages below the first unsent one went; resume there.
            o.dirty_from = resume
            o.dirty_token = resume * pt
            flags = 0
        # Each run of one (layer, K|V): pages ``pidx[i]`` of heads ``heads[i]``
        # (little-endian ``u32``) with their hashes (``u64``), each from row
        # ``offset`` of its page on, and those rows: a PageGather of where they
        # lie in the cache, read when this frame is encoded, in this same
        # outgoing() call (the pages must not change in between: another
        # thread writing this cache meanwhile would make them disagree with
        # their planned hashes, and the receiver refuse the frame).
        runs = tuple(
            _kv_run(
                lk >> 1,
                lk & 1,
                np.frombuffer(heads, _U32LE),
                np.frombuffer(pidx, _U32LE),
                np.frombuffer(hashes, _U64LE),
                payload,
                offset,
            )
            for lk, offset, heads, pidx, hashes, payload in planned
        )
        m = self.link.metrics
        m.kv_pages_sent += sent
        m.kv_page_bytes_sent += used
        return self._pages_entry(name, cache, flags, runs), used

    # -- receiving ----------------------------------------------------------------

    def receive(self, e: KVEntry) -> None:
        if e.kind == KVKind.DELETE:
            cache = self.kv.get(e.name)
            if cache is None or cache.owner != e.owner:
                return
            if cache.writable or cache.uid != e.uid:
                # Not the cache deleted: ours (or the one we mirror) is newer
                # and travels to the peer.
                self.mark(e.name, 0, reset=True)
                return
            self.out.pop(e.name, None)
            self.pending.discard(e.name)
            self.port.drop(e.name, self, self.link.origin)
            return
        if e.kind == KVKind.HAVE:
            self._receive_have(e)
            return
        self._receive_pages(e)

    def _conflict(self, name: str, winner: str, loser: str) -> None:
        conflicts = self.link.memory.kv.conflicts
        c = KVConflict(name, winner, loser)
        if c not in conflicts:
            conflicts.append(c)
            self.link.metrics.kv_conflicts += 1

    def _receive_pages(self, e: KVEntry) -> None:
        memory = self.link.memory
        caches = memory.kv
        port = caches.port
        assert e.geometry is not None
        cache = caches.get(e.name)
        if cache is not None and not cache.writable and cache.owner == memory.replica_id:
            port.drop(e.name, None)  # a mirror of our own id: not a cache we hold
            cache = None
        if cache is None and (
            e.owner == memory.replica_id or port.deleted(e.name) == (e.owner, e.uid)
        ):
            # Pages of a cache deleted here (by us, its owner, or a deletion
            # we relayed): the deletion travels back instead.
            self.deletes[e.name] = (e.owner, e.uid)
            return
        if cache is not None and cache.owner != e.owner:
            ours = cache.owner
            assert ours is not None
            if e.owner < ours:
                self._conflict(e.name, e.owner, ours)
                cache = port.supersede(e.name, e.owner, e.uid, e.geometry, self, self.link.origin)
                self.out[e.name] = _Out()
            else:
                self._conflict(e.name, ours, e.owner)
                self.mark(e.name, 0, reset=True)  # our winner travels to the peer
                return
        elif cache is not None and cache.writable:
            # A mirror of a cache we own speaks first (a new link, or we
            # restarted and it remembers, or it found rot), or it holds an
            # older incarnation: ours is the truth. Ignore its pages and
            # probe it, so that only the pages that differ travel.
            self.mark(e.name, 0, reset=True)
            return
        elif cache is None or cache.geometry != e.geometry:
            cache = port.mirror(e.name, e.owner, e.uid, e.geometry, self, self.link.origin)
            self.out[e.name] = _Out()
        elif cache.uid != e.uid:
            # The owner's cache of another incarnation (it re-created or
            # reloaded it): keep our rows, the page tables tell what differs.
            port.follow(cache, e.uid, self)
        o = self.out.get(e.name)
        if o is None:
            o = self.out[e.name] = _Out()
        o.probe = None
        o.dirty_from = None
        self.pending.discard(e.name)
        if e.flags & KV_PROBE:
            # The peer asks what we hold: change nothing, answer with our
            # digest, and our table unless it matches.
            cache.refresh()
            o.acked = cache.page_table.copy()
            self._have(e, cache, cache.page_table.digest() == e.digest)
            return
        complete = e.digest if e.flags & KV_COMPLETE else None
        diverged = port.apply(cache, e, self, self.link.origin, complete)
        if o.acked is None:
            o.acked = cache.page_table.copy()
        else:
            o.acked.tokens = cache.tokens
            o.acked.cut(cache.pages)
            if e.runs:
                o.acked.set_runs(e.runs)
        received = 0
        for r in e.runs:
            received += len(r.heads)
        self.link.metrics.kv_pages_received += received
        if diverged or (e.flags & KV_COMPLETE and cache.page_table.digest() != e.digest):
            self.link.metrics.kv_resyncs += 1
            o.acked = cache.page_table.copy()
            self._have(e, cache, False)

    def _have(self, e: KVEntry, cache: KVCache, match: bool) -> None:
        self.haves[e.name] = KVEntry(
            e.name,
            KVKind.HAVE,
            e.owner,
            cache.uid,
            cache.geometry,
            cache.tokens,
            cache.page_table.digest(),
            table=None if match else cache.page_table.hashes[..., : cache.pages].copy(),
        )

    def _table_of(self, e: KVEntry) -> PageTable:
        assert e.geometry is not None
        t = PageTable(e.geometry.layers, e.geometry.kv_heads)
        t.tokens = e.tokens
        if e.table is not None and e.table.shape[-1]:
            t.set_range(0, e.table)
        return t

    def _receive_have(self, e: KVEntry) -> None:
        cache = self.kv.get(e.name)
        if cache is None or cache.owner != e.owner:
            return  # deleted since, or a conflict that PAGES entries resolve
        o = self.out.setdefault(e.name, _Out())
        o.dirty_token = 0  # what the peer holds is re-based: no tails until the next send
        if cache.uid != e.uid:
            # The peer holds another incarnation: it rebuilds on our pages.
            o.acked = PageTable(cache.layers, cache.kv_heads)
            o.probe = None
            o.dirty_from = 0
            self.pending.add(e.name)
            return
        if cache.geometry != e.geometry:
            # The peer mirrors an older layout: it rebuilds on our pages.
            o.acked = PageTable(cache.layers, cache.kv_heads)
        elif e.table is not None:
            o.acked = self._table_of(e)
        elif o.probe is not None and o.probe.digest() == e.digest:
            o.acked = o.probe
        elif o.acked is None or o.acked.digest() != e.digest:
            o.acked = None  # cannot tell: probe again
        o.probe = None
        o.dirty_from = 0
        self.pending.add(e.name)
