"""A replica of an agent swarm's working memory."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import xxhash

from hybridsync.audit import AuditLog, AuditPolicy, audit_path
from hybridsync.channels.checks import check_encodable
from hybridsync.channels.documents import TextDocuments
from hybridsync.channels.events import ChangeBus, EventStream, Origin
from hybridsync.channels.kv import KVCaches
from hybridsync.channels.meta import CompactionPolicy, canonical_json
from hybridsync.errors import InvalidArgumentError
from hybridsync.store import Store
from hybridsync.sync.epochs import EpochMeta
from hybridsync.sync.link import Link, LinkWatch

__all__ = ["Memory", "TextDocuments"]

#: The channels ``Memory.events`` can report on.
_CHANNELS = ("text", "meta", "kv")

# The name earlier releases used.
_check_encodable = check_encodable


class Memory:
    """One replica of a swarm's shared working memory.

    ``memory.text`` holds named text documents, ``memory.meta`` structured
    metadata (a CRDT), ``memory.kv`` quantized KV caches
    (:class:`hybridsync.kv.KVCache`, one writer each). Connect replicas with
    :class:`hybridsync.Link` objects (one per peer); links carry every change
    in both directions.

    Args:
        replica_id: a name unique in the swarm (it travels in every frame).
        compaction: when the root of the link tree starts a new metadata
            epoch (see :class:`hybridsync.meta.CompactionPolicy`).
        incarnation: salts this replica's CRDT client ids, so that a
            replica restarted under the same id never reuses the ids (and
            clocks) of its previous life. Random by default; give a value
            (a 64-bit int, different per incarnation) for reproducible runs.
        path: a file that makes the replica durable (SQLite, created if
            missing): everything it holds and the state of its links is
            saved there at every commit point (before a link hands out a new
            frame, and at :meth:`flush`), and reloaded when a replica is
            opened on the file again. ``None``: in memory only.
        fsync: durable replicas only: ``True`` (default) makes each save
            survive power loss; ``False`` survives process crashes
            (``kill -9``) only, and saves faster.
        audit: the audit log (:mod:`hybridsync.audit`): ``None`` (default)
            keeps one for durable replicas (in ``<path>.audit``) and none in
            memory; ``True`` keeps one in any case (in memory for an
            in-memory replica), ``False`` none; an
            :class:`~hybridsync.audit.AuditPolicy` keeps one with that policy.

    A durable replica is a context manager (``with Memory("a", path=...) as
    memory:``); leaving it saves and closes the file.
    """

    def __init__(
        self,
        replica_id: str,
        *,
        compaction: CompactionPolicy | None = None,
        incarnation: int | None = None,
        path: str | os.PathLike[str] | None = None,
        fsync: bool = True,
        audit: bool | AuditPolicy | None = None,
    ) -> None:
        if not isinstance(replica_id, str) or not replica_id:
            raise InvalidArgumentError("replica_id must be a non-empty str")
        check_encodable(replica_id, "replica_id")
        self.replica_id = replica_id
        #: Where the channels announce their changes: to the links and the
        #: store at once, and to observers once per change set.
        self.changes = ChangeBus()
        self._links: tuple[Link, ...] = ()
        self._links_version = 0
        self.text = TextDocuments(replica_id, self.changes)
        if incarnation is not None and not (
            isinstance(incarnation, int) and 0 <= incarnation < 1 << 64
        ):
            raise InvalidArgumentError(
                f"incarnation must be an int in 0 .. 2**64-1, got {incarnation!r}"
            )
        self.meta = EpochMeta(
            replica_id,
            self.changes,
            compaction or CompactionPolicy(),
            incarnation,
            is_root=lambda: self.is_root,
        )
        self.kv = KVCaches(replica_id, self.changes)
        self.changes.bind(self.text, self.meta, self.kv)
        self._store: Store | None = None
        if path is not None:
            store = Store(path, replica_id, fsync=fsync)
            try:
                store.load(self)
            except BaseException:
                store.close()
                raise
            self._store = store
        policy = audit if isinstance(audit, AuditPolicy) else AuditPolicy()
        #: The replica's audit log (:class:`hybridsync.audit.AuditLog`), or None.
        self.audit: AuditLog | None = None
        if (
            (audit is None and path is not None)
            or audit is True
            or (isinstance(audit, AuditPolicy) and audit.enabled)
        ):
            try:
                self.audit = AuditLog(
                    self, None if path is None else audit_path(path), policy, fsync=fsync
                )
            except BaseException:
                if self._store is not None:
                    self._store.close()
                raise

    # -- durability ----------------------------------------------------------

    @property
    def durable(self) -> bool:
        """True for a replica opened with a ``path``."""
        return self._store is not None

    def flush(self) -> None:
        """Save everything changed since the last save (durable replicas; a
        no-op in memory). Local writes are durable once this returns; a
        frame a link hands out saves first as well. The audit log commits
        first (its entries never lag the saved state)."""
        if self.audit is not None:
            self.audit.commit()
        if self._store is not None:
            self._store.save(self)

    def close(self) -> None:
        """Save and close the replica's file (durable replicas). The object
        stays usable in memory; further changes are not saved."""
        if self.audit is not None and self.audit.path is not None:
            audit, self.audit = self.audit, None
            audit.close()
        if self._store is not None:
            store = self._store
            store.save(self)
            self._store = None
            store.close()

    def __enter__(self) -> Memory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Memory {self.replica_id!r}: {len(self.text)} text documents, "
            f"{len(self.meta)} metadata keys (epoch {self.meta.epoch}), "
            f"{len(self.kv)} KV caches>"
        )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group several metadata writes into one change::

        with memory.transaction():
            memory.meta["tasks"]["t1"]["status"] = "done"
            memory.meta["log"].append("t1 done")

        Observers hear of everything written inside (text and KV writes
        too) once the block ends, as one change set."""
        with self.changes.change_set(), self.meta.transaction():
            yield

    @property
    def is_root(self) -> bool:
        """True when no link has this replica as its client side: the root of
        the link tree, which owns metadata compaction."""
        return not any(link.role == "client" for link in self.links)

    @property
    def links(self) -> tuple[Link, ...]:
        """The links attached to this replica."""
        if self._links_version != self.changes.listeners_version:
            self._links = tuple(w.link for w in self.changes.listeners if isinstance(w, LinkWatch))
            self._links_version = self.changes.listeners_version
        return self._links

    @property
    def incarnation(self) -> bytes | None:
        """A durable replica's incarnation id, kept in its file (a replica
        reopened is the same incarnation); None for an in-memory replica."""
        return None if self._store is None else self._store.incarnation

    def saved_links(self) -> list[tuple[str, str]]:
        """(role, peer id) of every link a durable replica saved."""
        return [] if self._store is None else self._store.stored_links()

    def saved_link_state(
        self, role: str, peer_id: str
    ) -> tuple[dict[str, Any], dict[str, list[Any]]] | None:
        """A durable replica's saved state of its ``role`` link to
        ``peer_id`` (what a resuming :class:`~hybridsync.Link` continues), or None."""
        return None if self._store is None else self._store.link_state(role, peer_id)

    # -- observers -----------------------------------------------------------

    def events(self, *channels: str, replay: bool = False) -> EventStream:
        """The events of ``channels`` (``"text"``, ``"meta"``, ``"kv"``; all
        three by default) as an async iterator, for asyncio runtimes::

            async with memory.events("text") as events:
                async for event in events:
                    ...

        Call it from a running event loop; events are queued on that loop
        (unbounded: none is lost), also when the changes happen on another
        thread (a :class:`~hybridsync.SyncNode`'s). See
        :mod:`hybridsync.channels.events` for when events fire and in what
        order. ``replay``: the content held now comes first, as events of
        origin ``restore`` (a durable replica reopened from its file: what
        it loaded)."""
        for c in channels:
            if c not in _CHANNELS:
                raise InvalidArgumentError(f"channels are {', '.join(_CHANNELS)}; got {c!r}")
        return EventStream(self.changes, channels or _CHANNELS, replay=replay)

    @property
    def observer_errors(self) -> list[Any]:
        """The latest exceptions raised by observers (at most 100, oldest
        first), as :class:`~hybridsync.channels.events.ObserverError`."""
        return list(self.changes.errors)

    def digest(self) -> str:
        """Deterministic content hash (xxh3-128, hex) of everything the replica
        holds: equal digests iff equal content."""
        h = xxhash.xxh3_128()
        docs = self.text
        for name in sorted(docs):
            for part in (b"text", name.encode(), docs[name].encode()):
                h.update(len(part).to_bytes(8, "little"))
                h.update(part)
        meta = canonical_json(self.meta.to_py())
        for part in (b"meta", meta):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
        caches = self.kv
        for name in sorted(caches):
            c = caches[name]
            g = c.geometry
            shape = f"{g.fmt}/{g.scale_type}/{g.layers}/{g.kv_heads}/{g.head_dim}/{g.page_tokens}"
            for part in (b"kv", name.encode(), str(c.owner).encode(), shape.encode()):
                h.update(len(part).to_bytes(8, "little"))
                h.update(part)
            h.update(c.tokens.to_bytes(8, "little"))
            h.update(c.digest().to_bytes(8, "little"))
        return h.hexdigest()

    def _kv_changed(
        self,
        name: str,
        first_page: int,
        source: object,
        *,
        reset: bool = False,
        first_token: int = 0,
    ) -> None:
        """Announce a change of KV cache ``name`` (as a local write would)."""
        self.kv.port.announce(
            name, first_page, source, Origin.LOCAL, reset=reset, first_token=first_token
        )
