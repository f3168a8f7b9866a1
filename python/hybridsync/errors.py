"""The one exception hierarchy of hybridsync.

Every error the library raises on bad input is a :class:`HybridSyncError`.
The Rust core reports a single error type; the extension module maps each of
its kinds onto one class below, so ``except HybridSyncError`` catches all of
them and the stdlib base classes (``ValueError``, ``TimeoutError``) keep
working for callers that already expect those.
"""

from __future__ import annotations

__all__ = [
    "DecodeError",
    "HybridSyncError",
    "InvalidArgumentError",
    "LimitExceededError",
    "ProtocolError",
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
