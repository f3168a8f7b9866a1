"""Durability: the SQLite file behind ``Memory(replica_id, path=...)``
(:mod:`hybridsync.store.sqlite`)."""

from __future__ import annotations

from hybridsync.store.sqlite import FORMAT_VERSION, Store

__all__ = ["FORMAT_VERSION", "Store"]
