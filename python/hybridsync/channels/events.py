"""Change notification: what the data channels tell the layers above them.

Every change a channel applies goes two ways:

1. **Listeners** (:class:`ChangeListener`), called at once, synchronously:
   the sync layer's links (which mark what to send) and the store (which
   marks what to save). They see every change, with its origin, and never
   raise.
2. **Observers**, the application's callbacks (``memory.text.observe``,
   ``memory.meta.observe``, ``memory.kv.observe``, ``memory.events``),
   called once per applied *change set* after the replica is consistent
   again:

   - a local write: one text assignment or deletion, one metadata
     transaction (or single write), one KV cache write;
   - a frame from a peer (:meth:`hybridsync.Link.incoming`): everything the
     frame changed, delivered after the whole frame is applied.

   Within one change set the events come text first (documents by name),
   then metadata, then KV caches (by name); each event goes to the matching
   observers in the order they subscribed. A text document changed several
   times in one change set gives one event with the combined delta. A
   callback that writes to the replica starts a new change set: its events
   are delivered after the current ones (never nested).

   A callback that raises does not stop the others nor sync: the exception
   is logged on the ``hybridsync.events`` logger and kept in
   :attr:`ChangeBus.errors` (the latest 100, as :class:`ObserverError`;
   ``memory.observer_errors``).

   Callbacks run on the thread that applied the change, while the replica
   is consistent (for a :class:`hybridsync.SyncNode`: its event-loop
   thread, holding the node's lock): keep them short, or hand the event
   over (``memory.events()`` queues them on an asyncio loop).
   ``memory.transaction()`` makes one change set of everything written
   inside it.

   The metadata's events come from comparing its value before and after
   the change set (dicts key by key, lists whole): while a metadata
   observer is subscribed, each change set costs a walk of the metadata.

Events report content changes only: a frame that changes nothing (an
acknowledgement, a peer echoing our own write back) gives no event.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Literal, Protocol

from hybridsync.channels.text import DIFF_DELETE, DIFF_INSERT, diff
from hybridsync.errors import InvalidArgumentError

__all__ = [
    "ChangeBus",
    "ChangeListener",
    "EventStream",
    "KVEvent",
    "MetaChange",
    "MetaEvent",
    "ObserverError",
    "Origin",
    "Subscription",
    "TextEvent",
]

logger = logging.getLogger("hybridsync.events")

#: How many observer failures :attr:`ChangeBus.errors` keeps.
MAX_ERRORS = 100

OriginKind = Literal["local", "remote", "restore"]


@dataclass(frozen=True, eq=False)
class Origin:
    """Where a change came from.

    - ``kind == "local"``: written on this replica through its API.
    - ``kind == "remote"``: arrived from the peer ``peer`` (its replica id)
      over ``link`` (the :class:`hybridsync.Link` that applied it).
    - ``kind == "restore"``: not a change but content the replica already
      held, replayed to an observer that subscribed with ``replay=True``
      (on a durable replica reopened from its file: what it loaded).
    """

    kind: OriginKind
    peer: str | None = None
    link: Any = None

    LOCAL: ClassVar[Origin]
    RESTORE: ClassVar[Origin]

    @property
    def local(self) -> bool:
        """True for a change written on this replica."""
        return self.kind == "local"

    @property
    def remote(self) -> bool:
        """True for a change that came from a peer."""
        return self.kind == "remote"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Origin):
            return NotImplemented
        return (self.kind, self.peer) == (other.kind, other.peer) and self.link is other.link

    def __hash__(self) -> int:
        return hash((self.kind, self.peer, id(self.link)))

    def __repr__(self) -> str:
        if self.kind == "remote":
            return f"Origin(remote from {self.peer!r})"
        return f"Origin({self.kind})"


Origin.LOCAL = Origin("local")
Origin.RESTORE = Origin("restore")


# -- events --------------------------------------------------------------------


@dataclass(frozen=True)
class TextEvent:
    """A text document changed.

    ``delta`` takes the old text to the new one, in code points, as in
    pycrdt's and Yjs' text deltas: a list of ``{"retain": n}``,
    ``{"delete": n}`` and ``{"insert": "..."}``. ``kind``: ``"create"``
    (``old is None``), ``"update"``, or ``"delete"`` (``new is None``).
    """

    name: str
    kind: Literal["create", "update", "delete"]
    old: str | None
    new: str | None
    delta: list[dict[str, Any]]
    origin: Origin
    channel: ClassVar[str] = "text"


@dataclass(frozen=True)
class MetaChange:
    """One changed value of the metadata: the value at ``path`` (keys from
    the root) went from ``old`` to ``new``. ``kind``: ``"add"`` (``old`` is
    None: there was no value), ``"update"``, or ``"delete"`` (``new`` is
    None). Dicts are compared key by key; a changed list is reported whole."""

    path: tuple[str, ...]
    kind: Literal["add", "update", "delete"]
    old: Any
    new: Any


@dataclass(frozen=True)
class MetaEvent:
    """The metadata under ``path`` (the observed path; ``()`` for the root)
    changed: ``changes`` lists each changed value, in key order."""

    path: tuple[str, ...]
    changes: tuple[MetaChange, ...]
    origin: Origin
    channel: ClassVar[str] = "meta"

    @property
    def keys(self) -> set[str]:
        """The keys of the observed dict that changed (directly or inside)."""
        n = len(self.path)
        return {c.path[n] for c in self.changes if len(c.path) > n}


@dataclass(frozen=True)
class KVEvent:
    """A KV cache changed.

    ``kind``: ``"update"`` (pages written, or a new cache or mirror) or
    ``"delete"``. ``tokens`` and ``pages``: what the cache holds now;
    ``first_token``: the first token row that changed. ``ready``: the cache
    holds its owner's whole cache as last sent (always True on the owner),
    so it can be restored into a runtime now.
    """

    name: str
    kind: Literal["update", "delete"]
    owner: str | None
    tokens: int
    pages: int
    first_token: int
    ready: bool
    origin: Origin
    channel: ClassVar[str] = "kv"


Event = TextEvent | MetaEvent | KVEvent


@dataclass(frozen=True)
class ObserverError:
    """A callback raised ``error`` while handling ``event``."""

    callback: Callable[..., Any]
    event: Event
    error: BaseException


# -- listeners (the layers above the channels) ---------------------------------


class ChangeListener(Protocol):
    """What a layer above the channels implements to hear of every change
    at once (links mark what to send, the store what to save).

    ``source``: for KV changes, the object that fed the change (a link's KV
    channel), so that it does not send the change back."""

    def on_text_changed(self, name: str, origin: Origin) -> None: ...

    def on_text_deleted(self, name: str, origin: Origin) -> None: ...

    def on_meta_changed(self, origin: Origin) -> None: ...

    def on_kv_changed(
        self,
        name: str,
        first_page: int,
        source: object,
        *,
        reset: bool,
        first_token: int,
    ) -> None: ...

    def on_kv_deleted(self, name: str, owner: str, uid: int, source: object) -> None: ...


class _Valued(Protocol):
    def to_py(self) -> dict[str, Any]: ...

    def watch_paths(self, on: bool) -> None: ...

    def take_touched(self) -> set[tuple[str, ...]] | None: ...

    def value_at(self, path: tuple[str, ...]) -> tuple[bool, Any]: ...


# -- subscriptions ---------------------------------------------------------------


class Subscription:
    """An observer's registration: :meth:`close` (or leaving a ``with``
    block) unsubscribes. Closing twice is fine."""

    def __init__(self, bus: ChangeBus, observer: _Observer) -> None:
        self._bus = bus
        self._observer = observer

    @property
    def active(self) -> bool:
        """True until closed."""
        return self._observer in self._bus._observers

    def close(self) -> None:
        """Stop delivering events to this observer."""
        self._bus.unobserve(self._observer)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "active" if self.active else "closed"
        return f"<Subscription {self._observer.describe()} ({state})>"


@dataclass(eq=False)
class _Observer:
    channel: str
    target: Any  # text/kv: a name or None; meta: a path tuple
    callback: Callable[[Any], None]
    deep: bool = True

    def describe(self) -> str:
        target = "*" if self.target is None else self.target
        return f"{self.channel}:{target!r}"


@dataclass
class _Pending:
    """One change set's changes, coalesced."""

    text: dict[str, tuple[str | None, Origin]] = field(default_factory=dict)
    meta: Origin | None = None
    kv: dict[str, tuple[int, Origin, bool]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.text or self.meta is not None or self.kv)


class ChangeBus:
    """The change notifications of one replica's channels (``memory.changes``)."""

    def __init__(self) -> None:
        self.listeners: list[ChangeListener] = []
        #: Changes each time a listener is added or removed.
        self.listeners_version = 0
        self._observers: list[_Observer] = []
        #: The latest observer failures, oldest first.
        self.errors: deque[ObserverError] = deque(maxlen=MAX_ERRORS)
        self._depth = 0
        self._pending = _Pending()
        self._queue: deque[Event] = deque()
        self._delivering = False
        # Set by the replica: the channels whose state events describe.
        self._text: Mapping[str, str] | None = None
        self._meta: _Valued | None = None
        self._kv: Mapping[str, Any] | None = None
        #: The metadata as of the last delivered event (while observed).
        self._meta_seen: dict[str, Any] | None = None

    def bind(self, text: Mapping[str, str], meta: _Valued, kv: Mapping[str, Any]) -> None:
        """Tell the bus which channels it reports on."""
        self._text, self._meta, self._kv = text, meta, kv

    # -- listeners

    def add_listener(self, listener: ChangeListener) -> None:
        """Hear of every change at once (see :class:`ChangeListener`)."""
        self.listeners.append(listener)
        self.listeners_version += 1

    def remove_listener(self, listener: ChangeListener) -> None:
        """Stop hearing of changes (no error if not registered)."""
        with contextlib.suppress(ValueError):
            self.listeners.remove(listener)
            self.listeners_version += 1

    # -- observers

    def observe(
        self,
        channel: str,
        target: Any,
        callback: Callable[[Any], None],
        *,
        deep: bool = True,
        replay: bool = False,
    ) -> Subscription:
        """Register ``callback`` for events of ``channel`` about ``target``;
        with ``replay``, first call it with the content held now (see
        :func:`replay_events`)."""
        if not callable(callback):
            raise InvalidArgumentError(f"an observer must be callable, got {callback!r}")
        observer = _Observer(channel, target, callback, deep)
        if channel == "meta" and self._meta is not None and not self._observed("meta"):
            self._meta.watch_paths(True)
            self._meta.take_touched()
            self._meta_seen = self._meta.to_py()
        self._observers.append(observer)
        if replay:
            for event in self._replay(channel, target):
                self._call(observer, event)
        return Subscription(self, observer)

    def _replay(self, channel: str, target: Any) -> list[Event]:
        """The content held now as events of origin ``restore``."""
        events: list[Event] = []
        if channel == "text" and self._text is not None:
            names = sorted(self._text) if target is None else [target]
            for name in names:
                body = self._text.get(name)
                if body is not None:
                    delta = [{"insert": body}] if body else []
                    events.append(TextEvent(name, "create", None, body, delta, Origin.RESTORE))
        elif channel == "meta" and self._meta is not None:
            value = _at(self._meta.to_py(), target)
            if isinstance(value, dict) and value:
                changes = tuple(
                    MetaChange((*target, k), "add", None, value[k]) for k in sorted(value)
                )
                events.append(MetaEvent(target, changes, Origin.RESTORE))
        elif channel == "kv" and self._kv is not None:
            names = sorted(self._kv) if target is None else [target]
            for name in names:
                cache = self._kv.get(name)
                if cache is not None:
                    events.append(
                        KVEvent(
                            name,
                            "update",
                            cache.owner,
                            cache.tokens,
                            cache.pages,
                            0,
                            cache.ready,
                            Origin.RESTORE,
                        )
                    )
        return events

    def unobserve(self, observer: _Observer) -> None:
        """Drop ``observer`` (no error if it is gone already)."""
        with contextlib.suppress(ValueError):
            self._observers.remove(observer)
            if observer.channel == "meta" and not self._observed("meta"):
                self._meta_seen = None
                if self._meta is not None:
                    self._meta.watch_paths(False)

    def _observed(self, channel: str) -> bool:
        return any(o.channel == channel for o in self._observers)

    # -- change sets

    @contextlib.contextmanager
    def change_set(self) -> Iterator[None]:
        """Group the changes made inside into one change set: observers hear
        of them when the outermost block ends (also when it raises: what was
        applied was applied)."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth:
                self._flush()

    def _done(self) -> None:
        if not self._depth:
            self._flush()

    # -- called by the channels

    def text_changed(self, name: str, old: str | None, origin: Origin) -> None:
        for listener in self.listeners:
            listener.on_text_changed(name, origin)
        self._note_text(name, old, origin)

    def text_deleted(self, name: str, old: str, origin: Origin) -> None:
        for listener in self.listeners:
            listener.on_text_deleted(name, origin)
        self._note_text(name, old, origin)

    def _note_text(self, name: str, old: str | None, origin: Origin) -> None:
        if self._observed("text"):
            first = self._pending.text.get(name)
            self._pending.text[name] = (old if first is None else first[0], origin)
        self._done()

    def meta_changed(self, origin: Origin, *, event_origin: Origin | None = None) -> None:
        """``origin``: what listeners see (a link does not send a change back
        over the link it came from); ``event_origin``: what observers see,
        when it differs (a merge of a peer's values that every link sends)."""
        for listener in self.listeners:
            listener.on_meta_changed(origin)
        if self._meta_seen is not None and self._observed("meta"):
            shown = event_origin or origin
            if self._pending.meta is None or not self._pending.meta.remote:
                self._pending.meta = shown
        self._done()

    def kv_changed(
        self,
        name: str,
        first_page: int,
        source: object,
        origin: Origin,
        *,
        reset: bool = False,
        first_token: int = 0,
    ) -> None:
        for listener in self.listeners:
            listener.on_kv_changed(name, first_page, source, reset=reset, first_token=first_token)
        self._note_kv(name, 0 if reset else first_token, origin, False)

    def kv_deleted(self, name: str, owner: str, uid: int, source: object, origin: Origin) -> None:
        for listener in self.listeners:
            listener.on_kv_deleted(name, owner, uid, source)
        self._note_kv(name, 0, origin, True)

    def _note_kv(self, name: str, first_token: int, origin: Origin, deleted: bool) -> None:
        if self._observed("kv"):
            before = self._pending.kv.get(name)
            if before is not None:
                first_token = min(first_token, before[0])
            self._pending.kv[name] = (first_token, origin, deleted)
        self._done()

    # -- delivery

    def _flush(self) -> None:
        if not self._pending and not self._queue:
            return  # nothing observed changed (the common case without observers)
        pending, self._pending = self._pending, _Pending()
        if pending:
            self._queue.extend(self._events(pending))
        if self._delivering:
            return  # the delivery loop below (further up the stack) takes them
        self._delivering = True
        try:
            while self._queue:
                self._deliver(self._queue.popleft())
        finally:
            self._delivering = False

    def _events(self, p: _Pending) -> list[Event]:
        events: list[Event] = []
        text = self._text
        for name in sorted(p.text):
            old, origin = p.text[name]
            new = None if text is None else text.get(name)
            if old == new:
                continue
            kind: Literal["create", "update", "delete"] = (
                "create" if old is None else "delete" if new is None else "update"
            )
            events.append(TextEvent(name, kind, old, new, text_delta(old or "", new or ""), origin))
        if p.meta is not None and self._meta is not None and self._meta_seen is not None:
            changes = self._meta_changes(self._meta, self._meta_seen)
            if changes:
                events.append(MetaEvent((), tuple(changes), p.meta))
        for name in sorted(p.kv):
            first_token, origin, deleted = p.kv[name]
            cache = None if self._kv is None or deleted else self._kv.get(name)
            if cache is None:
                events.append(KVEvent(name, "delete", None, 0, 0, 0, False, origin))
            else:
                events.append(
                    KVEvent(
                        name,
                        "update",
                        cache.owner,
                        cache.tokens,
                        cache.pages,
                        min(first_token, cache.tokens),
                        cache.ready,
                        origin,
                    )
                )
        return events

    def _meta_changes(self, meta: _Valued, seen: dict[str, Any]) -> list[MetaChange]:
        """What changed since ``seen`` (updated in place): only at the paths
        the channel says were touched, everything when it cannot tell. The
        snapshot never shares objects with the events handed out."""
        touched = meta.take_touched()
        changes: list[MetaChange] = []
        if touched is not None:
            # Outermost paths only (an enclosing value is compared whole).
            paths = [
                p for p in sorted(touched) if not any(p[:i] in touched for i in range(1, len(p)))
            ]
            found = [_at(seen, path[:-1]) if path else None for path in paths]
            parents: list[dict[str, Any]] = [p for p in found if isinstance(p, dict)]
            if len(parents) != len(paths):
                # Not in the snapshot's shape (a parent the channel did not
                # report): compare everything rather than guess.
                touched = None
                paths, parents = [], []
            for path, parent in zip(paths, parents, strict=True):
                key = path[-1]
                had, old = key in parent, parent.get(key)
                has, new = meta.value_at(path)
                if had and not has:
                    changes.append(MetaChange(path, "delete", old, None))
                    del parent[key]
                elif has and not had:
                    changes.append(MetaChange(path, "add", None, new))
                    parent[key] = copy.deepcopy(new)
                elif has:
                    _diff_values(path, old, new, changes)
                    parent[key] = copy.deepcopy(new)
        if touched is None:
            now = meta.to_py()
            changes = []
            _diff_values((), self._meta_seen, now, changes)
            self._meta_seen = copy.deepcopy(now)
        changes.sort(key=lambda c: c.path)
        return changes

    def _deliver(self, event: Event) -> None:
        for observer in list(self._observers):
            if observer.channel != event.channel:
                continue
            shown: Any = event
            if isinstance(event, MetaEvent):
                shown = _meta_view(event, observer.target, observer.deep)
                if shown is None:
                    continue
            elif observer.target is not None and observer.target != event.name:
                continue
            self._call(observer, shown)

    def _call(self, observer: _Observer, event: Event) -> None:
        try:
            observer.callback(event)
        except Exception as exc:
            self.errors.append(ObserverError(observer.callback, event, exc))
            logger.exception("observer %s raised on %r", observer.describe(), event)


def _meta_view(event: MetaEvent, path: tuple[str, ...], deep: bool) -> MetaEvent | None:
    """The part of ``event`` under ``path``; shallow observers see only
    changes of that dict's own keys."""
    n = len(path)
    changes = []
    for c in event.changes:
        if c.path[:n] == path and len(c.path) > n:
            if deep or len(c.path) == n + 1:
                changes.append(c)
        elif path[: len(c.path)] == c.path:
            # A value at or above the observed path was replaced or removed.
            old, new = _at(c.old, path[len(c.path) :]), _at(c.new, path[len(c.path) :])
            if old != new:
                changes.append(MetaChange(path, c.kind, old, new))
    if not changes:
        return None
    return MetaEvent(path, tuple(changes), event.origin)


def _at(value: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _diff_values(path: tuple[str, ...], old: Any, new: Any, out: list[MetaChange]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(old.keys() | new.keys()):
            sub = (*path, key)
            if key not in new:
                out.append(MetaChange(sub, "delete", old[key], None))
            elif key not in old:
                out.append(MetaChange(sub, "add", None, new[key]))
            else:
                _diff_values(sub, old[key], new[key], out)
    elif old != new or type(old) is not type(new):
        out.append(MetaChange(path, "update", old, new))


def text_delta(old: str, new: str) -> list[dict[str, Any]]:
    """A delta (``retain``/``delete``/``insert``, in code points) taking
    ``old`` to ``new``."""
    delta: list[dict[str, Any]] = []
    for op, part in diff(old, new, timeout=0.1):
        key = "insert" if op == DIFF_INSERT else "delete" if op == DIFF_DELETE else "retain"
        value: Any = part if key == "insert" else len(part)
        if delta and key in delta[-1]:
            delta[-1][key] += value
        else:
            delta.append({key: value})
    if delta and "retain" in delta[-1]:
        delta.pop()  # a trailing retain says nothing
    return delta


def check_meta_path(path: Any) -> tuple[str, ...]:
    """``None``, a key, or a sequence of keys, as a path tuple."""
    if path is None:
        return ()
    if isinstance(path, str):
        return (path,)
    if isinstance(path, (tuple, list)) and all(isinstance(k, str) for k in path):
        return tuple(path)
    raise InvalidArgumentError(f"a metadata path is a key or a sequence of keys, got {path!r}")


# -- asyncio -------------------------------------------------------------------


class EventStream:
    """``async for event in memory.events(...)``: the events of the chosen
    channels, queued (unbounded: none is lost) on the event loop that
    created the stream, also when the changes happen on another thread.
    Leaving ``async with`` or calling :meth:`close` unsubscribes; the
    iteration then ends once the queued events are taken."""

    _CLOSED: ClassVar[object] = object()

    def __init__(self, bus: ChangeBus, channels: tuple[str, ...], *, replay: bool = False) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._closed = False
        self._subs = [
            bus.observe(c, None if c != "meta" else (), self._put, replay=replay) for c in channels
        ]

    def _put(self, event: Any) -> None:
        if threading.get_ident() == self._thread:
            self._queue.put_nowait(event)
        else:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    def close(self) -> None:
        """Unsubscribe; queued events can still be taken."""
        if not self._closed:
            self._closed = True
            for sub in self._subs:
                sub.close()
            self._put(self._CLOSED)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is self._CLOSED:
            raise StopAsyncIteration
        return event  # type: ignore[no-any-return]

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
