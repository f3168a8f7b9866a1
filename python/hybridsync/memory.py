"""A replica of an agent swarm's working memory."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, MutableMapping
from types import TracebackType
from typing import TYPE_CHECKING

import xxhash

from hybridsync.errors import InvalidArgumentError
from hybridsync.kv import KVCaches
from hybridsync.meta import CompactionPolicy, Meta, canonical_json

if TYPE_CHECKING:
    from hybridsync.kvsync import KVChannel
    from hybridsync.link import Link
    from hybridsync.store import Store

__all__ = ["Memory", "TextDocuments"]


def _check_encodable(s: str, what: str) -> None:
    """Refuse lone surrogates: they cannot cross the wire as UTF-8."""
    if not s.isascii():
        try:
            s.encode()
        except UnicodeEncodeError as exc:
            raise InvalidArgumentError(
                f"{what} contains a lone surrogate at index {exc.start}"
            ) from None


class TextDocuments(MutableMapping[str, str]):
    """The named text documents of a replica (``memory.text``).

    A plain mutable mapping: assignment creates or replaces a document,
    ``del`` deletes it. Every change is noted by the replica's links, which
    diff only the documents that changed.
    """

    def __init__(self, memory: Memory) -> None:
        self._memory = memory
        self._docs: dict[str, str] = {}

    def __getitem__(self, name: str) -> str:
        return self._docs[name]

    def __setitem__(self, name: str, value: str) -> None:
        if not isinstance(name, str):
            raise InvalidArgumentError(f"document names are str, got {type(name).__name__}")
        if not isinstance(value, str):
            raise InvalidArgumentError(
                f"text documents hold str, got {type(value).__name__} for {name!r}"
            )
        _check_encodable(name, "document name")
        _check_encodable(value, f"text of {name!r}")
        if self._docs.get(name) == value:
            return
        self._docs[name] = value
        self._memory._text_changed(name, None)

    def __delitem__(self, name: str) -> None:
        del self._docs[name]
        self._memory._text_deleted(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._docs)

    def __len__(self) -> int:
        return len(self._docs)

    def __contains__(self, name: object) -> bool:
        return name in self._docs

    def __repr__(self) -> str:
        return f"<TextDocuments of {self._memory.replica_id!r}: {len(self._docs)} documents>"


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
    ) -> None:
        if not isinstance(replica_id, str) or not replica_id:
            raise InvalidArgumentError("replica_id must be a non-empty str")
        _check_encodable(replica_id, "replica_id")
        self.replica_id = replica_id
        self._links: list[Link] = []
        self.text = TextDocuments(self)
        if incarnation is not None and not (
            isinstance(incarnation, int) and 0 <= incarnation < 1 << 64
        ):
            raise InvalidArgumentError(
                f"incarnation must be an int in 0 .. 2**64-1, got {incarnation!r}"
            )
        self.meta = Meta(self, compaction or CompactionPolicy(), incarnation)
        self.kv = KVCaches(self)
        #: What changed since the last save (durable replicas only).
        self._unsaved_text: set[str] = set()
        self._unsaved_kv: dict[str, int] = {}
        self._store: Store | None = None
        if path is not None:
            from hybridsync.store import Store

            store = Store(path, replica_id, fsync=fsync)
            try:
                store.load(self)
            except BaseException:
                store.close()
                raise
            self._store = store

    # -- durability ----------------------------------------------------------

    @property
    def durable(self) -> bool:
        """True for a replica opened with a ``path``."""
        return self._store is not None

    def flush(self) -> None:
        """Save everything changed since the last save (durable replicas; a
        no-op in memory). Local writes are durable once this returns; a
        frame a link hands out saves first as well."""
        if self._store is not None:
            self._store.save(self)

    def close(self) -> None:
        """Save and close the replica's file (durable replicas). The object
        stays usable in memory; further changes are not saved."""
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

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Group several metadata writes into one change::

        with memory.transaction():
            memory.meta["tasks"]["t1"]["status"] = "done"
            memory.meta["log"].append("t1 done")
        """
        return self.meta.transaction()

    @property
    def is_root(self) -> bool:
        """True when no link has this replica as its client side: the root of
        the link tree, which owns metadata compaction."""
        return not any(link.role == "client" for link in self._links)

    def _on_upstream_epoch(self) -> bool:
        """True for the root, or for a hub whose upstream last reported the
        metadata epoch this replica is on (it may merge its clients' documents
        of other epochs: before that, a value could travel from the
        upstream's epoch through ours back into it and be doubled)."""
        meta_epoch = self.meta.epoch_id
        return all(link._peer_epoch == meta_epoch for link in self._links if link.role == "client")

    @property
    def links(self) -> tuple[Link, ...]:
        """The links attached to this replica."""
        return tuple(self._links)

    def digest(self) -> str:
        """Deterministic content hash (xxh3-128, hex) of everything the replica
        holds: equal digests iff equal content."""
        h = xxhash.xxh3_128()
        docs = self.text._docs
        for name in sorted(docs):
            for part in (b"text", name.encode(), docs[name].encode()):
                h.update(len(part).to_bytes(8, "little"))
                h.update(part)
        meta = canonical_json(self.meta.to_py())
        for part in (b"meta", meta):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
        caches = self.kv._caches
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

    # -- used by links -----------------------------------------------------

    def _attach(self, link: Link) -> None:
        self._links.append(link)

    def _detach(self, link: Link) -> None:
        self._links.remove(link)

    def _text_changed(self, name: str, origin: Link | None) -> None:
        if self._store is not None:
            self._unsaved_text.add(name)
        for link in self._links:
            link._mark_dirty(name)

    def _text_deleted(self, name: str, origin: Link | None) -> None:
        if self._store is not None:
            self._unsaved_text.add(name)
        for link in self._links:
            if link is not origin:
                link._mark_deleted(name)

    def _set_text(self, name: str, value: str, origin: Link) -> None:
        """Store text that arrived over ``origin``."""
        if self.text._docs.get(name) == value:
            return
        self.text._docs[name] = value
        self._text_changed(name, origin)

    def _meta_changed(self, origin: Link | None, *, epoch_changed: bool = False) -> None:
        for link in self._links:
            if link is not origin:
                link._meta_dirty = True

    def _kv_changed(
        self,
        name: str,
        first_page: int,
        origin: KVChannel | None,
        *,
        reset: bool = False,
        first_token: int = 0,
    ) -> None:
        if self._store is not None:
            # The first token row written since the last save.
            token = 0 if reset else first_token
            self._unsaved_kv[name] = min(token, self._unsaved_kv.get(name, token))
        for link in self._links:
            if link._kv is not origin:
                link._kv.mark(name, first_page, reset, first_token)

    def _kv_deleted(self, name: str, owner: str, uid: int, origin: KVChannel | None) -> None:
        if self._store is not None:
            self._unsaved_kv[name] = 0
        for link in self._links:
            if link._kv is not origin:
                link._kv.mark_deleted(name, owner, uid)

    def _delete_text(self, name: str, origin: Link) -> None:
        """Delete a document because ``origin``'s peer deleted it."""
        if name in self.text._docs:
            del self.text._docs[name]
            self._text_deleted(name, origin)
