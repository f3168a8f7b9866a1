"""Real nodes: hybridsync over authenticated WebSockets (asyncio).

- :func:`serve` -- a hub: ``async with serve(memory, host, port, secret=...) as hub``.
- :func:`connect` -- a node: ``async with connect(memory, url, secret=...) as session``;
  ``await session.sync()`` waits until the hub holds every earlier local change.
- :class:`SyncNode` -- the same from plain threads (a background event loop and a lock).
- :class:`FaultProxy` -- a relay that loses, delays, duplicates and reorders messages.

A replica can both serve and connect (hubs of hubs); links must form a tree.
Peers prove they hold the swarm's shared secret (challenge-response with
HMAC-SHA256), every message after that is authenticated with a per-connection,
per-direction key and a counter accepted once (in a 64-message replay window), and TLS is one
:class:`ssl.SSLContext` away. The wire format is described in
:mod:`hybridsync.net._secure`. Events are logged on the ``hybridsync.net``
logger; secrets and keys never are.
"""

from __future__ import annotations

from hybridsync.net._common import ClosedError, PeerStatus, SyncTimeoutError
from hybridsync.net._secure import PROTOCOL_LABEL, AuthenticationError, HandshakeError
from hybridsync.net.hub import Hub, serve
from hybridsync.net.proxy import FaultProxy, FaultStats
from hybridsync.net.session import Session, connect
from hybridsync.net.syncnode import NodeLock, SyncNode

__all__ = [
    "PROTOCOL_LABEL",
    "AuthenticationError",
    "ClosedError",
    "FaultProxy",
    "FaultStats",
    "HandshakeError",
    "Hub",
    "NodeLock",
    "PeerStatus",
    "Session",
    "SyncNode",
    "SyncTimeoutError",
    "connect",
    "serve",
]
