"""The data channels of a replica, below the sync protocol.

- :mod:`~hybridsync.channels.text` -- the diff/match/patch kernels (Rust core).
- :mod:`~hybridsync.channels.documents` -- named text documents (``memory.text``).
- :mod:`~hybridsync.channels.meta` -- structured metadata, a Yjs CRDT (``memory.meta``).
- :mod:`~hybridsync.channels.kv` -- quantized, paged KV caches and their codecs
  (``memory.kv``); :mod:`~hybridsync.channels.kvfile` -- their safetensors files.
- :mod:`~hybridsync.channels.events` -- change notification: listeners (the
  layers above) and observers (the application).

Nothing here imports the sync protocol (:mod:`hybridsync.sync`), the store,
the transport or :class:`hybridsync.Memory`.
"""

from __future__ import annotations

from hybridsync.channels.events import (
    KVEvent,
    MetaChange,
    MetaEvent,
    ObserverError,
    Origin,
    Subscription,
    TextEvent,
)

__all__ = [
    "KVEvent",
    "MetaChange",
    "MetaEvent",
    "ObserverError",
    "Origin",
    "Subscription",
    "TextEvent",
]
