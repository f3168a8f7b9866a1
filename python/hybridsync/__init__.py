"""hybridsync: differential synchronization of an agent swarm's working memory.

- :class:`Memory` -- one replica (``memory.text``: named text documents,
  ``memory.meta``: structured metadata, ``memory.kv``: KV caches); each
  channel has ``observe(...)``, and ``memory.events()`` is an async iterator
  of change events (:mod:`hybridsync.channels.events`).
- :class:`KVCache` -- a quantized, paged KV cache (:mod:`hybridsync.channels.kv`;
  runtime adapters in :mod:`hybridsync.adapters`).
- :class:`Link` -- one side of a diff-sync link to a peer (sans-IO,
  :mod:`hybridsync.sync`).
- :mod:`hybridsync.text` -- the Rust diff/match/patch kernels
  (:mod:`hybridsync.channels.text`).
- :mod:`hybridsync.sim` -- a deterministic network simulator.
- :mod:`hybridsync.net` -- hubs and nodes over authenticated WebSockets
  (asyncio: :func:`serve`, :func:`connect`; :class:`SyncNode` for threads).
- ``hybridsync`` -- the command line (:mod:`hybridsync.cli`: serve, join,
  status, keygen, demo, bench).
- :mod:`hybridsync.errors` -- the exception hierarchy.

Layers, top to bottom: tools (``cli``, ``demo``, ``bench``), ``sim``, ``net``,
``memory`` (the facade), ``store``, ``sync``, ``channels``, ``errors``; a
module imports only from the layers below it (``make lint`` checks it). The
old module paths (``hybridsync.link``, ``hybridsync.kv``, ``hybridsync.meta``,
...) are the moved modules under their former names, for one release.
"""

from __future__ import annotations

from hybridsync import errors
from hybridsync._core import __version__
from hybridsync.channels import text
from hybridsync.channels.kv import KVCache
from hybridsync.memory import Memory
from hybridsync.net import SyncNode, connect, serve
from hybridsync.sync.link import Link, LinkMetrics

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
