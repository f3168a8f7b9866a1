"""Structured metadata: JSON-like values on a Yjs CRDT (pycrdt), with epochs.

``memory.meta`` is a mutable mapping of JSON-like values (dicts, lists, str,
int, float, bool, None). Concurrent writes from different replicas merge by
the CRDT's rules: writes to distinct keys all survive, writes to one key end
with one deterministic winner everywhere.

A CRDT keeps metadata about its history: every overwritten value leaves a
header behind. To keep that bounded by the live value, the root of the link
tree (the replica with no upstream link) runs a compaction pass each cycle;
past the :class:`CompactionPolicy` threshold it starts a new **epoch**: a
fresh document built from the live value. Every replica crosses to the new
epoch at its next exchange. Writes made on the old epoch that the root had
not integrated (unsent local writes, frames in flight, a replica partitioned
for a long time) are re-applied on the new epoch from their value-level
form, so nothing is lost and nothing is applied twice: each replica logs its
own writes tagged with the Yjs clock they produced, and the new epoch comes
with the old document's final state vector, which says exactly which of them
the root integrated.
"""

from __future__ import annotations

import json
import math
import secrets
from collections import Counter
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Union

import xxhash
from pycrdt import Array, Doc, Map

from hybridsync.channels.events import ChangeBus, MetaEvent, Origin, Subscription, check_meta_path
from hybridsync.errors import DecodeError, InvalidArgumentError, LimitExceededError

__all__ = ["CompactionPolicy", "Meta", "MetaList", "MetaMap", "MetaMetrics"]

#: A JSON-like value as stored.
Value = Union[None, bool, int, float, str, list["Value"], dict[str, "Value"]]  # noqa: UP007
Path = tuple[str | int, ...]
#: A value-level write: (kind, container path, key or index, value).
Op = tuple[str, Path, str | int | None, Any]

_ROOT = "meta"
_CLOCK = "clock"
_MAX_DEPTH = 64
_EXACT_FLOAT = 1 << 53
#: Frozen state vectors kept to move lagging replicas across epochs.
_EPOCH_HISTORY = 256
#: Own latest dict writes remembered for a crossing after a merge.
_LATEST_KEYS = 4096
#: An epoch id is a lineage tag (40 bits, random per replica incarnation that
#: starts epochs) above a 24-bit epoch counter.
_COUNTER_BITS = 24
_COUNTER_MASK = (1 << _COUNTER_BITS) - 1
#: Lineage tags remembered (with the highest counter seen under each).
_LINEAGE_TAGS = 64
#: Documents of the epochs a root ended most recently, kept to integrate
#: updates that arrive for them late (a request that crossed a compaction).
_ENDED_DOCS = 4


@dataclass(frozen=True)
class CompactionPolicy:
    """When the root starts a new epoch.

    A compaction runs when the encoded CRDT state exceeds ``max_ratio`` times
    the live value's compact JSON size plus ``slack_bytes``, or when more
    than ``max_clients`` CRDT client ids have written in the epoch.
    ``enabled=False`` keeps one epoch forever (plain CRDT behaviour).
    """

    max_ratio: float = 1.5
    slack_bytes: int = 2048
    max_clients: int = 64
    enabled: bool = True

    def __post_init__(self) -> None:
        if not (self.max_ratio >= 1.0 and self.slack_bytes >= 0 and self.max_clients >= 1):
            raise InvalidArgumentError(
                "CompactionPolicy needs max_ratio >= 1.0, slack_bytes >= 0, max_clients >= 1"
            )


@dataclass
class MetaMetrics:
    """Size and compaction counters of a replica's metadata."""

    #: Encoded CRDT state of the current epoch, in bytes (``len(get_update())``).
    encoded_bytes: int = 0
    #: The live value as compact JSON, in bytes.
    live_bytes: int = 0
    #: CRDT client ids in the current epoch's state vector.
    clients: int = 0
    epoch: int = 0
    #: Epochs this replica started (as the root).
    compactions: int = 0
    #: Epochs this replica crossed into.
    crossings: int = 0
    #: Own writes re-applied on a new epoch because the root had not integrated them.
    rebased_writes: int = 0
    #: Values written while merging downstream documents of another lineage.
    merged_writes: int = 0
    #: Values written from updates of an ended epoch that arrived late (root).
    late_writes: int = 0
    #: Largest encoded state seen (bytes).
    max_encoded_bytes: int = 0


# -- values ------------------------------------------------------------------


def _check(value: Any, depth: int = 0) -> Value:
    """Validate a JSON-like value (and copy containers)."""
    if depth > _MAX_DEPTH:
        raise LimitExceededError(f"metadata values nest at most {_MAX_DEPTH} levels deep")
    if value is None or isinstance(value, (bool, str)):
        if isinstance(value, str):
            _check_str(value)
        return value
    if isinstance(value, int):
        if not -_EXACT_FLOAT < value < _EXACT_FLOAT:
            raise InvalidArgumentError(
                f"integer {value} is beyond +-2**53: JSON numbers (and Yjs) hold it only "
                "approximately; store it as a string"
            )
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgumentError(f"metadata numbers must be finite (JSON), got {value}")
        return value
    if isinstance(value, (list, tuple)):
        return [_check(v, depth + 1) for v in value]
    if isinstance(value, dict):
        out: dict[str, Value] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidArgumentError(f"metadata keys are str, got {type(k).__name__}")
            _check_str(k)
            out[k] = _check(v, depth + 1)
        return out
    raise InvalidArgumentError(
        f"metadata holds JSON-like values (dict, list, str, int, float, bool, None), "
        f"got {type(value).__name__}"
    )


def _check_str(s: str) -> None:
    if not s.isascii():
        try:
            s.encode()
        except UnicodeEncodeError:
            raise InvalidArgumentError("metadata strings cannot hold lone surrogates") from None


def _prelim(value: Value) -> Any:
    """A checked value as pycrdt content (containers become shared types)."""
    if isinstance(value, dict):
        return Map({k: _prelim(v) for k, v in value.items()})
    if isinstance(value, list):
        return Array([_prelim(v) for v in value])
    return value


def _plain(value: Any) -> Value:
    """A stored value as plain Python. Numbers follow JSON: integral values
    within +-2**53 read back as int."""
    if isinstance(value, (Map, dict)):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (Array, list)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < _EXACT_FLOAT:
        return int(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray)):
        return "bytes:" + bytes(value).hex()  # a peer stored non-JSON content
    return None


def canonical_json(value: Value) -> bytes:
    """Compact, key-sorted JSON of a plain value (sizes and digests)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _apply_change(
    node: Map[Any], before: dict[str, Value], after: dict[str, Value], ops: list[Op]
) -> None:
    """Write on ``node`` what changed from ``before`` to ``after`` (a late
    update's effect on an ended epoch): keys set or changed are written,
    dicts and lists recurse, keys deleted are deleted; list values added are
    inserted (if ``node``'s list does not hold more of them already) and
    list values removed are removed by value."""
    for key, value in after.items():
        old = before.get(key, _MISSING)
        if key in before and canonical_json(old) == canonical_json(value):  # type: ignore[arg-type]
            continue
        ours = node.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and isinstance(ours, Map):
            _apply_change(ours, old, value, ops)
        elif isinstance(value, list) and isinstance(old, list) and isinstance(ours, Array):
            _apply_list_change(ours, old, value, ops)
        elif not (key in node and canonical_json(_plain(ours)) == canonical_json(value)):
            node[key] = _prelim(value)
            ops.append(("set", (), key, value))
    for key in before:
        if key not in after and key in node:
            del node[key]
            ops.append(("del", (), key, None))


def _apply_list_change(
    node: Array[Any], before: list[Value], after: list[Value], ops: list[Op]
) -> None:
    old = Counter(canonical_json(v) for v in before)
    want = Counter(canonical_json(v) for v in after)
    ours = [canonical_json(_plain(v)) for v in node]
    for k in (old - want).elements():  # removed: by value
        if k in ours:
            j = ours.index(k)
            del node[j]
            del ours[j]
            ops.append(("ldel", (), j, None))
    have = Counter(ours)
    for v in after:
        k = canonical_json(v)
        if have[k] >= want[k] or old[k] >= want[k]:
            continue  # not added, or our list holds as many already
        node.append(_prelim(v))
        have[k] += 1
        old[k] += 1
        ops.append(("insert", (), len(node) - 1, v))


_MISSING = object()


# -- state vectors -------------------------------------------------------------


def decode_state_vector(data: bytes) -> dict[int, int]:
    """Decode a Yjs (v1) state vector: client id -> clock."""
    pos = 0

    def uint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            if pos >= len(data):
                raise DecodeError("truncated state vector")
            b = data[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise DecodeError("state vector varint longer than 64 bits")

    if not data:
        return {}
    n = uint()
    if n > len(data):
        raise DecodeError("state vector entry count exceeds its size")
    out: dict[int, int] = {}
    for _ in range(n):
        client = uint()
        out[client] = uint()
    if pos != len(data):
        raise DecodeError("trailing bytes after a state vector")
    return out


def encode_state_vector(sv: dict[int, int]) -> bytes:
    """Encode a Yjs (v1) state vector."""
    out = bytearray()

    def uint(v: int) -> None:
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)

    uint(len(sv))
    for client in sorted(sv):
        uint(client)
        uint(sv[client])
    return bytes(out)


def merge_state_vectors(a: bytes | None, b: bytes) -> bytes:
    """The state vector covering both ``a`` and ``b`` (per-client maximum)."""
    if not a:
        return b
    merged = decode_state_vector(a)
    for client, clock in decode_state_vector(b).items():
        if clock > merged.get(client, 0):
            merged[client] = clock
    return encode_state_vector(merged)


def _client_id(replica_id: str, epoch_id: int, salt: int) -> int:
    """A CRDT client id unique to (replica incarnation, epoch), within
    JavaScript's 53 bits. ``salt`` is random per :class:`Meta` instance: a
    restarted replica (or a restarted root building an epoch base again)
    never reuses the ids, and so the clocks, of its previous life."""
    key = f"{replica_id}\x00{epoch_id}\x00{salt}".encode()
    return xxhash.xxh64_intdigest(key) & ((1 << 53) - 1)


# -- proxies -------------------------------------------------------------------


class _LiveMapping(MutableMapping[str, Any]):
    """A mapping whose stored dicts and lists read back as live proxies."""

    def setdefault(self, key: str, default: Any = None) -> Any:
        """``self[key]``, storing ``default`` first if the key is missing; a
        stored dict or list comes back as its live proxy (so
        ``meta.setdefault("log", []).append(x)`` writes through)."""
        if key not in self:
            self[key] = default
        return self[key]


class MetaMap(_LiveMapping):
    """A dict inside ``memory.meta``, addressed by its path: it stays valid
    across epochs (a fresh document replaces the old one)."""

    def __init__(self, meta: Meta, path: Path) -> None:
        self._meta = meta
        self._path = path

    def _node(self) -> Map[Any]:
        node = self._meta._resolve(self._path)
        if not isinstance(node, Map):
            raise KeyError(f"{self._path!r} is no longer a dict")
        return node

    def __getitem__(self, key: str) -> Any:
        return self._meta._wrap(self._node()[key], (*self._path, key))

    def __setitem__(self, key: str, value: Any) -> None:
        self._meta._set(self._path, key, value)

    def __delitem__(self, key: str) -> None:
        self._meta._delete(self._path, key)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._node().keys()))

    def __len__(self) -> int:
        return len(self._node())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._node()

    def to_py(self) -> dict[str, Value]:
        """The dict as plain Python values."""
        out = _plain(self._node())
        assert isinstance(out, dict)
        return out

    def __repr__(self) -> str:
        return f"MetaMap({self.to_py()!r})"


class MetaList:
    """A list inside ``memory.meta``, addressed by its path."""

    def __init__(self, meta: Meta, path: Path) -> None:
        self._meta = meta
        self._path = path

    def _node(self) -> Array[Any]:
        node = self._meta._resolve(self._path)
        if not isinstance(node, Array):
            raise KeyError(f"{self._path!r} is no longer a list")
        return node

    def __len__(self) -> int:
        return len(self._node())

    def __getitem__(self, index: int) -> Any:
        node = self._node()
        i = _index(index, len(node))
        return self._meta._wrap(node[i], (*self._path, i))

    def __setitem__(self, index: int, value: Any) -> None:
        self._meta._list_set(self._path, index, value)

    def __delitem__(self, index: int) -> None:
        self._meta._list_delete(self._path, index)

    def __iter__(self) -> Iterator[Any]:
        return iter([self[i] for i in range(len(self))])

    def append(self, value: Any) -> None:
        """Append a value."""
        self._meta._list_insert(self._path, len(self), value)

    def insert(self, index: int, value: Any) -> None:
        """Insert a value before ``index`` (clamped to the list)."""
        self._meta._list_insert(self._path, index, value)

    def to_py(self) -> list[Value]:
        """The list as plain Python values."""
        out = _plain(self._node())
        assert isinstance(out, list)
        return out

    def __repr__(self) -> str:
        return f"MetaList({self.to_py()!r})"


def _index(index: int, length: int) -> int:
    if not isinstance(index, int):
        raise InvalidArgumentError(f"list indices are int, got {type(index).__name__}")
    i = index + length if index < 0 else index
    if not 0 <= i < length:
        raise IndexError(f"list index {index} out of range for a list of {length}")
    return i


# -- the channel ---------------------------------------------------------------


class Meta(_LiveMapping):
    """The structured metadata of a replica (``memory.meta``)."""

    def __init__(
        self,
        replica_id: str,
        changes: ChangeBus,
        policy: CompactionPolicy,
        incarnation: int | None = None,
        *,
        is_root: Callable[[], bool] = lambda: True,
    ) -> None:
        self.replica_id = replica_id
        self._changes = changes
        #: Whether this replica is the root of its link tree now (it owns
        #: compaction and remembers ended epochs).
        self._is_root = is_root
        #: The origin observers see for the writes of the current _write().
        self._event_origin = Origin.LOCAL
        self.policy = policy
        self.metrics = MetaMetrics()
        self._txn_depth = 0
        self._txn_ops: list[Op] = []
        self._ticks = 0
        #: Own writes not known to be integrated by the root: (CRDT client id,
        #: clock end, op). A reopened durable replica writes under a new
        #: client id, so the log can hold several of its ids in one epoch.
        self._pending: list[tuple[int, int, Op]] = []
        self._pending_limit = 256
        #: This replica's latest write of each dict key it wrote (most recent
        #: last, at most _LATEST_KEYS): (path, key) -> (deleted, value). A
        #: server that merged our document by value keeps its own plain
        #: values; those of ours still current in our document go again.
        self._latest: dict[tuple[Path, str], tuple[bool, Value]] = {}
        #: Ended epochs we left by a MERGE (our clients on them get MERGE too).
        self._via_merge: set[int] = set()
        #: Root: the documents of the last epochs it ended (not saved).
        self._ended: dict[int, Doc[Any]] = {}
        #: Frozen state vectors of ended epochs (epoch -> encoded state vector).
        self._frozen: dict[int, bytes] = {}
        self._changed = True  # since the last compaction check
        self._client = 0
        self._salt = secrets.randbits(64) if incarnation is None else incarnation
        self._estimate = 0
        self._base_size = 0
        #: Own clock acknowledged by the upstream this epoch, per own client id.
        self._delivered: dict[int, int] = {}
        #: Lineage tags of the epochs this replica held -> (lowest, highest counter).
        self._lineage: dict[int, tuple[int, int]] = {}
        self._tag = self._draw_tag()
        # Every replica starts on an epoch 0 of its own: the first exchange
        # with an upstream moves it onto the upstream's epoch.
        self._start_epoch(0, self._tag << _COUNTER_BITS, b"")

    # -- epochs

    def _start_epoch(self, epoch: int, epoch_id: int, base: bytes) -> None:
        self._delivered = {}
        tag, counter = epoch_id >> _COUNTER_BITS, epoch_id & _COUNTER_MASK
        lo, hi = self._lineage.pop(tag, (counter, counter))
        self._lineage[tag] = (min(lo, counter), max(hi, counter))
        while len(self._lineage) > _LINEAGE_TAGS:
            del self._lineage[next(iter(self._lineage))]
        self.epoch = epoch
        self.epoch_id = epoch_id
        self.base = base
        self._client = _client_id(self.replica_id, epoch_id, self._salt)
        self._doc: Doc[Any] = Doc(client_id=self._client)
        if base:
            self._doc.apply_update(base)
        self._root = self._doc.get(_ROOT, type=Map)
        self._clock = self._doc.get(_CLOCK, type=Map)
        self.base_state = self._doc.get_state()
        self._base_size = len(base)
        self.metrics.epoch = epoch

    def _draw_tag(self, n: int = 0) -> int:
        """A lineage tag for epochs this incarnation starts (40 bits, not 0)."""
        key = f"{self.replica_id}\x00tag\x00{self._salt}\x00{n}"
        return (xxhash.xxh64_intdigest(key.encode()) >> _COUNTER_BITS) or 1

    def _next_epoch_id(self) -> int:
        """The id of the epoch this replica starts next (as the root): our
        incarnation's tag above the counter after the current epoch's."""
        counter = (self.epoch_id & _COUNTER_MASK) + 1
        attempt = 0
        while counter > _COUNTER_MASK or self._lineage.get(self._tag, (0, -1))[1] >= counter:
            # The counter ran out, or the tag came back: a fresh tag.
            attempt += 1
            self._tag = self._draw_tag(self.epoch_id + attempt)
            counter = 1
        return (self._tag << _COUNTER_BITS) | counter

    def forgotten(self, epoch_id: int) -> bool:
        """True, on the root, for an ended epoch it held whose frozen state it
        no longer keeps (the peer was away for longer): what the root
        acknowledged on it, it integrated. (A hub may have acknowledged
        writes it never passed on: it merges such a peer's document.)"""
        tag, counter = epoch_id >> _COUNTER_BITS, epoch_id & _COUNTER_MASK
        lo, hi = self._lineage.get(tag, (1, 0))
        return (
            self._is_root()
            and epoch_id != self.epoch_id
            and epoch_id not in self._frozen
            and lo <= counter <= hi
        )

    def ahead(self, epoch_id: int) -> bool:
        """True for a later epoch of a lineage we carry (our upstream moved
        on and we have not heard yet): a hub waits to cross instead of
        merging a client on it by value."""
        tag, counter = epoch_id >> _COUNTER_BITS, epoch_id & _COUNTER_MASK
        return tag in self._lineage and counter > self._lineage[tag][1]

    def has_pending_writes(self) -> bool:
        """True while own writes are not known to be integrated by the root."""
        return bool(self._pending)

    def own_clients(self) -> set[int]:
        """The CRDT client ids of this replica's logged writes and current one."""
        return {c for c, _, _ in self._pending} | {self._client}

    def note_delivered(self, state: bytes) -> None:
        """Our upstream acknowledged a frame that carried ``state`` (a state
        vector of the current epoch)."""
        sv = decode_state_vector(state)
        for client in self.own_clients():
            clock = sv.get(client, 0)
            if clock > self._delivered.get(client, 0):
                self._delivered[client] = clock

    def frozen_state(self, epoch_id: int) -> bytes | None:
        """What the current epoch holds of an ended epoch of this lineage (its
        final state vector), or None if ``epoch_id`` is not one of them."""
        return self._frozen.get(epoch_id)

    def maybe_compact(self) -> bool:
        """Run the compaction pass: start a new epoch when the policy says so.
        Only the root of the link tree calls it. Returns True if it compacted."""
        if not self._changed:
            return False
        self._changed = False
        live = self.to_py()
        encoded = len(self._doc.get_update())
        clients = len(decode_state_vector(self._doc.get_state()))
        self._measure(encoded, len(canonical_json(live)), clients)
        p = self.policy
        if not p.enabled:
            return False
        if encoded <= p.max_ratio * self.metrics.live_bytes + p.slack_bytes and (
            clients <= p.max_clients
        ):
            return False
        if encoded <= self._base_size + 64 and clients <= p.max_clients:
            return False  # nothing to gain: the history is the base already
        self._frozen[self.epoch_id] = self._doc.get_state()
        self._ended[self.epoch_id] = self._doc
        while len(self._ended) > _ENDED_DOCS:
            del self._ended[next(iter(self._ended))]
        self._trim_history()
        epoch_id = self._next_epoch_id()
        builder_id = _client_id(self.replica_id, epoch_id, self._salt ^ 1)
        builder: Doc[Any] = Doc(client_id=builder_id)
        root = builder.get(_ROOT, type=Map)
        with builder.transaction():
            for k, v in live.items():
                root[k] = _prelim(v)
        self._start_epoch(self.epoch + 1, epoch_id, builder.get_update())
        self._pending.clear()  # the root integrated everything it wrote
        self.metrics.compactions += 1
        self._measure(len(self._doc.get_update()), self.metrics.live_bytes, 1)
        self._changes.meta_changed(Origin.LOCAL)
        return True

    def _trim_history(self) -> None:
        while len(self._frozen) > _EPOCH_HISTORY:
            del self._frozen[next(iter(self._frozen))]
        self._via_merge &= self._frozen.keys()

    def apply_late(self, epoch_id: int, update: bytes, origin: Origin = Origin.LOCAL) -> bool:
        """Root: integrate an update of an epoch it ended recently (a request
        built before the peer heard of the compaction). The update goes into
        that epoch's kept document; what it changed there (value level) is
        written on the current epoch, and the epoch's frozen state grows to
        cover it, so the peer re-applies none of it. False when the epoch's
        document is no longer kept (the peer re-applies its own writes).
        Raises DecodeError (nothing changes) if the update does not decode."""
        doc = self._ended.get(epoch_id)
        if doc is None:
            return False
        before_state = doc.get_state()
        before = _plain(doc.get(_ROOT, type=Map))
        scratch: Doc[Any] = Doc()
        try:
            scratch.apply_update(doc.get_update())
            scratch.apply_update(update)
        except ValueError as exc:
            raise DecodeError(f"invalid metadata update: {exc}") from exc
        doc.apply_update(update)
        if doc.get_state() == before_state:
            return True
        after = _plain(doc.get(_ROOT, type=Map))
        assert isinstance(before, dict) and isinstance(after, dict)
        with self._writing_for(origin), self._write() as ops:
            written: list[Op] = []
            _apply_change(self._root, before, after, written)
            if written:
                ops.append(("merge", (), None, after))
            self.metrics.late_writes += len(written)
        self._frozen[epoch_id] = doc.get_state()
        self._changed = True
        return True

    def left_by_merge(self, epoch_id: int) -> bool:
        """True for an ended epoch we left because our upstream merged our
        document by value: our clients on it move by MERGE too (so that their
        own latest values win again over the merged ones)."""
        return epoch_id in self._via_merge

    def cross(
        self,
        epoch: int,
        epoch_id: int,
        document: bytes,
        frozen_state: bytes,
        *,
        merged: bool = False,
        origin: Origin = Origin.LOCAL,
    ) -> int:
        """Move to the upstream's epoch ``epoch_id`` (``document``: its whole
        document), re-applying the own writes that ``frozen_state`` (what
        that document holds of our current epoch) does not cover, and with
        ``merged`` (the upstream merged our document by value) our own dict
        writes too. ``origin``: the link the document came through (it
        holds it; our other links have news). Returns how many logged own
        writes ``frozen_state`` did not cover (written again here).
        Raises DecodeError (nothing changes) if the document or the state is bad."""
        frozen = decode_state_vector(frozen_state)
        probe: Doc[Any] = Doc()
        try:
            probe.apply_update(document)
        except ValueError as exc:
            raise DecodeError(f"invalid epoch document: {exc}") from exc
        # Without a frozen state (the upstream no longer keeps it: we were
        # away for longer), what our upstream acknowledged counts as
        # integrated: it was, by a replica of this lineage.
        integrated = frozen if frozen_state else self._delivered
        keep = [op for client, end, op in self._pending if end > integrated.get(client, 0)]
        # After a merge: our latest dict writes still current in our document
        # go again over the merged values (a container merges into the one
        # there instead of replacing what others put in it since).
        overlays = self._current_latest() if merged else []
        self._frozen[self.epoch_id] = frozen_state
        if merged:
            self._via_merge.add(self.epoch_id)
        self._trim_history()
        self._start_epoch(epoch, epoch_id, document)
        self._pending = []
        self.metrics.crossings += 1
        if keep or overlays:
            with self._write() as ops:
                for op in keep:
                    if self._replay(op):
                        ops.append(op)
                for op in overlays:
                    self._overlay(op, ops)
                self.metrics.rebased_writes += len(ops)
        self._changed = True
        self._changes.meta_changed(origin)
        return len(keep)

    def merge_foreign(self, update: bytes, state: bytes, origin: Origin = Origin.LOCAL) -> bool:
        """Fold in a downstream replica's whole document of an epoch that is
        not of this lineage (this replica restarted without its state, or the
        peer comes from another tree): no shared history tells what is new, so
        the values merge. Keys we lack are set, dicts merge key by key, lists
        gain the values they lack (compared by value, counted, so nothing we
        hold is doubled); where both hold a different plain value, ours stays.
        The merge is our own write (logged, so it survives our own crossings).
        Returns False, changing nothing, when ``update`` is not the whole
        document that ``state`` describes; raises DecodeError if it does not
        decode."""
        scratch: Doc[Any] = Doc()
        try:
            scratch.apply_update(update)
        except ValueError as exc:
            raise DecodeError(f"invalid metadata update: {exc}") from exc
        if decode_state_vector(scratch.get_state()) != decode_state_vector(state):
            return False
        theirs = _plain(scratch.get(_ROOT, type=Map))
        assert isinstance(theirs, dict)
        with self._writing_for(origin), self._write() as ops:
            written: list[Op] = []
            self._merge_map(self._root, (), theirs, written)
            if written:
                # Logged as one merge: replayed (after a crossing of our own)
                # it merges again, so it never replaces or doubles anything.
                ops.append(("merge", (), None, theirs))
            self.metrics.merged_writes += len(written)
        self._changed = True
        return True

    def _note_latest(self, path: Path, key: str, deleted: bool, value: Value) -> None:
        if any(isinstance(part, int) for part in path):
            return  # inside a list: the index may point elsewhere later
        target = (path, key)
        self._latest.pop(target, None)
        self._latest[target] = (deleted, value)
        if len(self._latest) > _LATEST_KEYS:
            del self._latest[next(iter(self._latest))]

    def _current_latest(self) -> list[Op]:
        """Our latest dict writes that the document still shows (as ops);
        the others (superseded by someone since) are forgotten."""
        out: list[Op] = []
        for (path, key), (deleted, value) in list(self._latest.items()):
            try:
                node = self._resolve(path)
            except KeyError:
                node = None
            current = isinstance(node, Map) and (
                key not in node
                if deleted
                else key in node and canonical_json(_plain(node[key])) == canonical_json(value)
            )
            if current:
                out.append(("del", path, key, None) if deleted else ("set", path, key, value))
            else:
                del self._latest[path, key]
        return out

    def _overlay(self, op: Op, ops: list[Op]) -> None:
        """Write an own dict write again over a merged value: a plain value
        or a deletion as it was; a dict or list into the container that
        holds the key (our values win, list values are added if missing)."""
        kind, path, key, value = op
        try:
            node = self._resolve(path)
        except KeyError:
            return
        if not isinstance(node, Map) or not isinstance(key, str):
            return
        if kind == "del":
            if key in node:
                del node[key]
                ops.append(op)
            return
        self._merge_map(node, path, {key: value}, ops, overwrite=True)

    def _merge_map(
        self,
        node: Map[Any],
        path: Path,
        theirs: dict[str, Value],
        ops: list[Op],
        *,
        overwrite: bool = False,
    ) -> None:
        """Merge ``theirs`` into ``node``; where both hold a different plain
        value (or different kinds of value), ours stays unless ``overwrite``."""
        for key, value in theirs.items():
            if key not in node:
                node[key] = _prelim(value)
                ops.append(("set", path, key, value))
                continue
            ours = node[key]
            if isinstance(ours, Map) and isinstance(value, dict):
                self._merge_map(ours, (*path, key), value, ops, overwrite=overwrite)
            elif isinstance(ours, Array) and isinstance(value, list):
                self._merge_list(ours, (*path, key), value, ops)
            elif overwrite and (
                isinstance(ours, (Map, Array))
                or canonical_json(_plain(ours)) != canonical_json(value)
            ):
                node[key] = _prelim(value)
                ops.append(("set", path, key, value))

    @staticmethod
    def _merge_list(node: Array[Any], path: Path, theirs: list[Value], ops: list[Op]) -> None:
        ours = [canonical_json(_plain(v)) for v in node]
        unmatched = Counter(ours)
        pos = 0  # insert after the last value of theirs found in ours
        for value in theirs:
            k = canonical_json(value)
            if unmatched[k] > 0:
                unmatched[k] -= 1
                if k in ours[pos:]:
                    pos = ours.index(k, pos) + 1
                continue
            node.insert(pos, _prelim(value))
            ops.append(("insert", path, pos, value))
            ours.insert(pos, k)
            pos += 1

    # -- persistence (hybridsync.store)

    def _saved(self) -> dict[str, Any]:
        """Everything but the current epoch's document and base, as plain data."""
        return {
            "epoch": self.epoch,
            "epoch_id": self.epoch_id,
            "frozen": [[k, v] for k, v in self._frozen.items()],
            "pending": [[c, e, k, list(p), key, v] for c, e, (k, p, key, v) in self._pending],
            "ticks": self._ticks,
            "latest": [[list(p), k, d, v] for (p, k), (d, v) in self._latest.items()],
            "delivered": dict(self._delivered),
            "lineage": [[t, lo, hi] for t, (lo, hi) in self._lineage.items()],
            "via_merge": sorted(self._via_merge),
        }

    def _restore(self, saved: dict[str, Any], base: bytes, updates: list[bytes]) -> None:
        """Reload what :meth:`_saved` returned, the epoch's base and the
        document's updates.
        The replica writes under a new client id from now on (its salt is
        this incarnation's), so it never reuses clocks of its previous life,
        even when the file is an older backup."""
        # A file written before epochs had ids: the replica continues on an
        # epoch of its own (its upstream merges its document by value).
        epoch_id = saved.get("epoch_id") or self._next_epoch_id()
        self._start_epoch(int(saved["epoch"]), int(epoch_id), base)
        for update in updates:
            self._doc.apply_update(update)
        frozen = saved["frozen"] if "epoch_id" in saved else []
        self._frozen = {int(k): bytes(v) for k, v in frozen}
        self._pending = [
            (int(c), int(e), (str(k), tuple(p), key, v)) for c, e, k, p, key, v in saved["pending"]
        ]
        self._pending_limit = 2 * len(self._pending) + 256
        self._ticks = int(saved["ticks"])
        self._delivered = {int(k): int(v) for k, v in saved.get("delivered", {}).items()}
        for tag, lo, hi in saved.get("lineage", []):
            old_lo, old_hi = self._lineage.pop(int(tag), (int(lo), int(hi)))
            self._lineage[int(tag)] = (min(old_lo, int(lo)), max(old_hi, int(hi)))
        self._via_merge = {int(e) for e in saved.get("via_merge", [])} & self._frozen.keys()
        self._latest = {(tuple(p), str(k)): (bool(d), v) for p, k, d, v in saved.get("latest", [])}
        self._changed = True

    # -- sync

    def is_empty(self) -> bool:
        """True for a replica that never held any metadata (nothing to send)."""
        return self.epoch == 0 and not decode_state_vector(self._doc.get_state())

    def state(self) -> bytes:
        """The encoded state vector of the current epoch's document."""
        return self._doc.get_state()

    def update_since(self, state: bytes | None) -> bytes:
        """Everything a holder of ``state`` (of this epoch) lacks."""
        return self._doc.get_update(state) if state else self._doc.get_update()

    def apply_remote(self, update: bytes, origin: Origin) -> None:
        """Integrate an update of the current epoch from a peer."""
        try:
            self._doc.apply_update(update)
        except ValueError as exc:
            raise DecodeError(f"invalid metadata update: {exc}") from exc
        self._changed = True
        self._changes.meta_changed(origin)
        self._estimate += len(update)
        p = self.policy
        if (
            self._is_root()
            and p.enabled
            and self._estimate > p.max_ratio * self.metrics.live_bytes + p.slack_bytes
        ):
            # Check right away (the estimate, last measured size plus the
            # updates since, bounds the state): a root integrating many peers'
            # updates in one cycle stays bounded between them too.
            self.maybe_compact()

    def _measure(self, encoded: int, live: int, clients: int) -> None:
        self._estimate = encoded
        m = self.metrics
        m.encoded_bytes, m.live_bytes, m.clients = encoded, live, clients
        m.max_encoded_bytes = max(m.max_encoded_bytes, encoded)

    def measure(self) -> MetaMetrics:
        """Measure the encoded state and the live value now."""
        self._measure(
            len(self._doc.get_update()),
            len(canonical_json(self.to_py())),
            len(decode_state_vector(self._doc.get_state())),
        )
        return self.metrics

    # -- writes

    def observe(
        self,
        path: str | tuple[str, ...] | list[str] | None,
        callback: Callable[[MetaEvent], Any],
        *,
        deep: bool = True,
        replay: bool = False,
    ) -> Subscription:
        """Call ``callback(event)`` (a :class:`~hybridsync.channels.events.MetaEvent`)
        after each change set that changes the metadata under ``path`` (a
        key, a sequence of keys from the root, or ``None`` for the root).
        ``deep=False``: only changes of that dict's own keys (a key added,
        deleted, or given a new value; not a change inside a nested dict).
        Returns a :class:`~hybridsync.channels.events.Subscription`.
        ``replay``: first call it with the dict at ``path`` as held now (its
        keys as ``"add"`` changes, origin ``restore``), if not empty."""
        return self._changes.observe(
            "meta", check_meta_path(path), callback, deep=deep, replay=replay
        )

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes into one CRDT transaction (one change on the wire)."""
        with self._write():
            yield

    @contextmanager
    def _writing_for(self, origin: Origin) -> Iterator[None]:
        """Writes made inside are reported to observers with ``origin`` (a
        merge of a peer's values); links still send them everywhere."""
        saved, self._event_origin = self._event_origin, origin
        try:
            yield
        finally:
            self._event_origin = saved

    @contextmanager
    def _write(self) -> Iterator[list[Op]]:
        if self._txn_depth:
            self._txn_depth += 1
            try:
                yield self._txn_ops
            finally:
                self._txn_depth -= 1
            return
        self._txn_depth = 1
        self._txn_ops = []
        try:
            with self._doc.transaction(origin="local"):
                yield self._txn_ops
                if any(op[0] in ("del", "ldel") for op in self._txn_ops):
                    # A deletion alone does not advance our clock; this write
                    # does, so each logged write has a clock to be acknowledged by.
                    self._ticks += 1
                    self._clock[str(self._client)] = self._ticks
        finally:
            self._txn_depth = 0
        if self._txn_ops:
            end = decode_state_vector(self._doc.get_state()).get(self._client, 0)
            self._pending.extend((self._client, end, op) for op in self._txn_ops)
            self._txn_ops = []
            if len(self._pending) > self._pending_limit:
                self._collapse_pending()
            self._changed = True
            self._changes.meta_changed(Origin.LOCAL, event_origin=self._event_origin)

    def _collapse_pending(self) -> None:
        """Bound the log of own writes: a later set/del of a dict key makes
        earlier writes to that key, and to anything inside it, irrelevant."""
        kept: list[tuple[int, int, Op]] = []
        replaced: set[Path] = set()
        for client, end, op in reversed(self._pending):
            kind, path, key, _ = op
            if any(path[: len(p)] == p for p in replaced):
                continue
            if kind in ("set", "del") and isinstance(key, str):
                target = (*path, key)
                if target in replaced:
                    continue
                replaced.add(target)
            kept.append((client, end, op))
        kept.reverse()
        self._pending = kept
        self._pending_limit = 2 * len(kept) + 256

    def _resolve(self, path: Path) -> Any:
        node: Any = self._root
        for part in path:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                raise KeyError(f"no metadata at {path!r}") from None
        return node

    def _wrap(self, value: Any, path: Path) -> Any:
        if isinstance(value, Map):
            return MetaMap(self, path)
        if isinstance(value, Array):
            return MetaList(self, path)
        return _plain(value)

    def _set(self, path: Path, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise InvalidArgumentError(f"metadata keys are str, got {type(key).__name__}")
        _check_str(key)
        checked = _check(value)
        node = self._resolve(path)
        with self._write() as ops:
            node[key] = _prelim(checked)
            ops.append(("set", path, key, checked))
        self._note_latest(path, key, False, checked)

    def _delete(self, path: Path, key: str) -> None:
        node = self._resolve(path)
        if key not in node:
            raise KeyError(key)
        with self._write() as ops:
            del node[key]
            ops.append(("del", path, key, None))
        self._note_latest(path, key, True, None)

    def _list_set(self, path: Path, index: int, value: Any) -> None:
        checked = _check(value)
        node = self._resolve(path)
        i = _index(index, len(node))
        with self._write() as ops:
            node[i] = _prelim(checked)
            ops.append(("lset", path, i, checked))

    def _list_insert(self, path: Path, index: int, value: Any) -> None:
        checked = _check(value)
        node = self._resolve(path)
        if not isinstance(index, int):
            raise InvalidArgumentError(f"list indices are int, got {type(index).__name__}")
        i = max(0, min(index + len(node) if index < 0 else index, len(node)))
        with self._write() as ops:
            node.insert(i, _prelim(checked))
            ops.append(("insert", path, i, checked))

    def _list_delete(self, path: Path, index: int) -> None:
        node = self._resolve(path)
        i = _index(index, len(node))
        old = _plain(node[i])
        with self._write() as ops:
            del node[i]
            ops.append(("ldel", path, i, [old]))  # the value, to find it again

    def _replay(self, op: Op) -> bool:
        """Re-apply a logged write on the current document (value level);
        False when its container no longer exists."""
        kind, path, key, value = op
        try:
            node = self._resolve(path)
        except KeyError:
            return False
        if kind == "merge":
            if not isinstance(node, Map) or not isinstance(value, dict):
                return False
            self._merge_map(node, path, value, [])
            return True
        if kind in ("set", "del"):
            if not isinstance(node, Map) or not isinstance(key, str):
                return False
            if kind == "set":
                node[key] = _prelim(value)
            elif key in node:
                del node[key]
            return True
        if not isinstance(node, Array) or not isinstance(key, int):
            return False
        n = len(node)
        if kind == "insert":
            node.insert(min(key, n), _prelim(value))
        elif kind == "lset" and n:
            node[min(key, n - 1)] = _prelim(value)
        elif kind == "ldel" and n:
            at = min(key, n - 1)
            if isinstance(value, list) and len(value) == 1:
                # Delete the value that was deleted: the one nearest to its
                # old index (a merge may have moved it); gone already: nothing.
                want = canonical_json(value[0])
                found = [j for j in range(n) if canonical_json(_plain(node[j])) == want]
                if not found:
                    return True
                at = min(found, key=lambda j: abs(j - key))
            del node[at]
        return True

    # -- the mapping

    def __getitem__(self, key: str) -> Any:
        return self._wrap(self._root[key], (key,))

    def __setitem__(self, key: str, value: Any) -> None:
        self._set((), key, value)

    def __delitem__(self, key: str) -> None:
        self._delete((), key)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._root.keys()))

    def __len__(self) -> int:
        return len(self._root)

    def __contains__(self, key: object) -> bool:
        return key in self._root

    def to_py(self) -> dict[str, Value]:
        """The whole metadata as plain Python values."""
        out = _plain(self._root)
        assert isinstance(out, dict)
        return out

    def __repr__(self) -> str:
        return f"<Meta of {self.replica_id!r}: epoch {self.epoch}, {len(self)} keys>"
