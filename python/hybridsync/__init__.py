"""hybridsync: differential synchronization of an agent swarm's working memory."""

from __future__ import annotations

from hybridsync import errors, text
from hybridsync._core import __version__

__all__ = ["__version__", "errors", "text"]
