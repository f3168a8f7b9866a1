"""The text channel of a replica: named text documents (``memory.text``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, TypeVar, overload

from hybridsync.channels.checks import check_encodable
from hybridsync.channels.events import ChangeBus, Origin, Subscription, TextEvent
from hybridsync.errors import InvalidArgumentError

__all__ = ["TextDocuments", "check_encodable"]

T = TypeVar("T")


class TextDocuments(MutableMapping[str, str]):
    """The named text documents of a replica (``memory.text``).

    A plain mutable mapping: assignment creates or replaces a document,
    ``del`` deletes it. Every change is announced on the replica's change
    bus: its links diff only the documents that changed, and observers
    (:meth:`observe`) hear of it.
    """

    def __init__(self, replica_id: str, changes: ChangeBus) -> None:
        self.replica_id = replica_id
        self._changes = changes
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
        check_encodable(name, "document name")
        check_encodable(value, f"text of {name!r}")
        self.put(name, value, Origin.LOCAL)

    def __delitem__(self, name: str) -> None:
        if name not in self._docs:
            raise KeyError(name)
        self.remove(name, Origin.LOCAL)

    def __iter__(self) -> Iterator[str]:
        return iter(self._docs)

    def __len__(self) -> int:
        return len(self._docs)

    def __contains__(self, name: object) -> bool:
        return name in self._docs

    @overload
    def get(self, name: str, /) -> str | None: ...
    @overload
    def get(self, name: str, /, default: str | T) -> str | T: ...
    def get(self, name: str, /, default: object = None) -> object:
        """The text of document ``name``, or ``default`` (one dict lookup:
        the links ask for it on every cycle)."""
        return self._docs.get(name, default)

    def __repr__(self) -> str:
        return f"<TextDocuments of {self.replica_id!r}: {len(self._docs)} documents>"

    # -- applying changes (the sync layer's entry points)

    def put(self, name: str, value: str, origin: Origin) -> None:
        """Store ``value`` as document ``name`` (checked by the caller),
        announcing the change with ``origin``; nothing happens if the
        document holds it already."""
        old = self._docs.get(name)
        if old == value:
            return
        self._docs[name] = value
        self._changes.text_changed(name, old, origin)

    def restore(self, name: str, value: str) -> None:
        """Reopening a durable replica: hold ``value`` as document ``name``
        without announcing it (nothing changed; observers that want what a
        replica holds ask for a replay)."""
        self._docs[name] = value

    def remove(self, name: str, origin: Origin) -> None:
        """Delete document ``name`` if present, announcing it with ``origin``."""
        old = self._docs.pop(name, None)
        if old is not None:
            self._changes.text_deleted(name, old, origin)

    # -- observers

    def observe(
        self, name: str | None, callback: Callable[[TextEvent], Any], *, replay: bool = False
    ) -> Subscription:
        """Call ``callback(event)`` (a :class:`~hybridsync.channels.events.TextEvent`)
        after each change set that changes document ``name`` (``None``: any
        document). Returns a :class:`~hybridsync.channels.events.Subscription`:
        ``close()`` it, or use it as a context manager, to stop. ``replay``:
        first call it once per matching document held now (kind
        ``"create"``, origin ``restore``)."""
        if name is not None and not isinstance(name, str):
            raise InvalidArgumentError(f"document names are str, got {type(name).__name__}")
        return self._changes.observe("text", name, callback, replay=replay)
