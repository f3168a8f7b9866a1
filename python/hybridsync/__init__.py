"""hybridsync: differential synchronization of an agent swarm's working memory.

- :class:`Memory` -- one replica (``memory.text``: named text documents,
  ``memory.meta``: structured metadata, ``memory.kv``: KV caches).
- :class:`KVCache` -- a quantized, paged KV cache (:mod:`hybridsync.kv`;
  runtime adapters in :mod:`hybridsync.adapters`).
- :class:`Link` -- one side of a diff-sync link to a peer (sans-IO).
- :mod:`hybridsync.text` -- the Rust diff/match/patch kernels.
- :mod:`hybridsync.sim` -- a deterministic network simulator.
- :mod:`hybridsync.net` -- hubs and nodes over authenticated WebSockets
  (asyncio: :func:`serve`, :func:`connect`; :class:`SyncNode` for threads).
- ``hybridsync`` -- the command line (serve, join, status, demo).
- :mod:`hybridsync.errors` -- the exception hierarchy.
"""

from __future__ import annotations

from hybridsync import errors, text
from hybridsync._core import __version__
from hybridsync.kv import KVCache
from hybridsync.link import Link, LinkMetrics
from hybridsync.memory import Memory
from hybridsync.net import SyncNode, connect, serve

__all__ = [
    "KVCache",
    "Link",
    "LinkMetrics",
    "Memory",
    "SyncNode",
    "__version__",
    "connect",
    "errors",
    "serve",
    "text",
]
