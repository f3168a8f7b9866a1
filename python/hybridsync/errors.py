"""The one exception hierarchy of hybridsync.

Every error the library raises on bad input is a :class:`HybridSyncError`.
The Rust core reports a single error type; the extension module maps each of
its kinds onto one class below, so ``except HybridSyncError`` catches all of
them and the stdlib base classes (``ValueError``, ``TimeoutError``) keep
working for callers that already expect those.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ClosedError",
    "CorruptionError",
    "DecodeError",
    "HandshakeError",
    "HybridSyncError",
    "IncompatibleCacheError",
    "InvalidArgumentError",
    "LimitExceededError",
    "OwnershipError",
    "ProtocolError",
    "StorageError",
    "SyncTimeoutError",
]


class HybridSyncError(Exception):
    """Base class of every error raised by hybridsync."""


class DecodeError(HybridSyncError, ValueError):
    """Bytes or text from outside (a frame, a patch) are malformed, truncated or
    of an unknown version. Nothing was changed."""


class InvalidArgumentError(HybridSyncError, ValueError):
    """An argument is out of its allowed range (a negative timeout, a
    threshold outside 0..1, an unknown option)."""


class LimitExceededError(HybridSyncError, ValueError):
    """An input is larger than a configured or structural limit."""


class ProtocolError(HybridSyncError):
    """A well-formed frame that this link must not accept: from another
    sender than the link's peer, or of the wrong direction (a reply sent to a
    server, a request sent to a client). Nothing was changed."""


class AuthenticationError(HybridSyncError):
    """A peer did not prove that it holds the swarm's shared secret (or we
    do not hold the one it has): the connection was refused."""


class HandshakeError(HybridSyncError):
    """A handshake message is malformed, unexpected or from an unsupported
    version (not an authentication failure: the peer may not be hybridsync)."""


class SyncTimeoutError(HybridSyncError, TimeoutError):
    """A synchronisation (``sync``, ``wait_connected``) did not complete in
    time. Nothing is lost: the transport keeps trying."""


class ClosedError(HybridSyncError, ConnectionError):
    """The session or node is closed (or failed for good, see its cause)."""


class OwnershipError(HybridSyncError):
    """A write to a KV cache this replica does not own: a mirror of another
    replica's cache, or a cache superseded by a same-named cache of a replica
    whose id sorts first (see :mod:`hybridsync.kv`). Nothing was changed."""


class StorageError(HybridSyncError):
    """A durable replica's file cannot be opened or written: held by another
    process, of an unknown format version, or the disk refused a write (a
    failed save changes nothing on disk)."""


class CorruptionError(StorageError, DecodeError):
    """A durable replica's file failed a checksum or does not decode: it is
    never served. Restore the file from a backup (or remove it and let the
    replica resync from its peers)."""


class IncompatibleCacheError(HybridSyncError, ValueError):
    """A KV cache cannot be restored into this runtime context: the context
    differs from the one that wrote the cache in a field the restore must
    match (``field``: the model fingerprint, the cache type, the rotation of
    quantized caches, a positional parameter, the state format). Restoring it
    anyway would give wrong logits without an error; nothing was changed."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        #: The record field that differs (empty when the runtime refused the
        #: bytes without saying why).
        self.field = field
