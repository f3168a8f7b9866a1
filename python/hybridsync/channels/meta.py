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

This module is the channel: values, path proxies, one document per epoch,
the log of own writes, observers. The epoch machinery of the sync protocol
(epoch ids and lineages, compaction, crossing, late updates, merges of a
foreign document) is :class:`hybridsync.sync.epochs.EpochMeta`, the class
of ``memory.meta``.
"""

from __future__ import annotations

import json
import math
import secrets
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any, Union

import xxhash
from pycrdt import Array, Doc, Map, TransactionEvent, merge_updates
from pycrdt import get_update as diff_update

from hybridsync.channels.events import ChangeBus, MetaEvent, Origin, Subscription, check_meta_path
from hybridsync.errors import DecodeError, InvalidArgumentError, LimitExceededError

__all__ = ["CompactionPolicy", "Meta", "MetaList", "MetaMap", "MetaMetrics"]

#: A JSON-like value as stored.
Value = Union[None, bool, int, float, str, list["Value"], dict[str, "Value"]]  # noqa: UP007
Path = tuple[str | int, ...]
#: A value-level write: (kind, container path, key or index, value).
Op = tuple[str, Path, str | int | None, Any]

ROOT_KEY = "meta"
_CLOCK = "clock"
_MAX_DEPTH = 64
_EXACT_FLOAT = 1 << 53
#: Own latest dict writes remembered for a crossing after a merge.
_LATEST_KEYS = 4096


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

    #: Encoded CRDT state of the current epoch, in bytes (``len(get_update())``),
    #: as of the last measurement (the root's compaction checks measure when
    #: due; :meth:`Meta.measure` measures now). The same for the next two.
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
    #: Clients' documents of another lineage this replica took as its epoch
    #: (a server restarted from nothing, instead of merging them by value).
    adoptions: int = 0
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


def prelim_value(value: Value) -> Any:
    """A checked value as pycrdt content (containers become shared types)."""
    if isinstance(value, dict):
        return Map({k: prelim_value(v) for k, v in value.items()})
    if isinstance(value, list):
        return Array([prelim_value(v) for v in value])
    return value


def plain_value(value: Any) -> Value:
    """A stored value as plain Python. Numbers follow JSON: integral values
    within +-2**53 read back as int."""
    if isinstance(value, (Map, dict)):
        return {k: plain_value(v) for k, v in value.items()}
    if isinstance(value, (Array, list)):
        return [plain_value(v) for v in value]
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


def apply_change(
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
            apply_change(ours, old, value, ops)
        elif isinstance(value, list) and isinstance(old, list) and isinstance(ours, Array):
            _apply_list_change(ours, old, value, ops)
        elif not (key in node and canonical_json(plain_value(ours)) == canonical_json(value)):
            node[key] = prelim_value(value)
            ops.append(("set", (), key, value))
    for key in before:
        if key not in after and key in node:
            del node[key]
            ops.append(("del", (), key, None))


def _apply_list_change(
    node: Array[Any], before: list[Value], after: list[Value], ops: list[Op]
) -> None:
    # A dict changed in place (one for one, at its place in the list): the
    # change goes into that dict of ours, which stays where it is.
    bj = [canonical_json(v) for v in before]
    aj = [canonical_json(v) for v in after]
    ours = [canonical_json(plain_value(v)) for v in node]
    changed_b: set[int] = set()
    changed_a: set[int] = set()
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, bj, aj, autojunk=False).get_opcodes():
        if tag != "replace" or i2 - i1 != j2 - j1:
            continue
        for i, j in zip(range(i1, i2), range(j1, j2), strict=True):
            b, a = before[i], after[j]
            found = [k for k, v in enumerate(ours) if v == bj[i]]
            if not (isinstance(b, dict) and isinstance(a, dict) and found):
                continue
            at = min(found, key=lambda k, i=i: abs(k - i))  # type: ignore[misc]
            target = node[at]
            if isinstance(target, Map):
                apply_change(target, b, a, ops)
                ours[at] = aj[j]
                changed_b.add(i)
                changed_a.add(j)
    if changed_b:
        before = [v for i, v in enumerate(before) if i not in changed_b]
        after = [v for j, v in enumerate(after) if j not in changed_a]
    old = Counter(canonical_json(v) for v in before)
    want = Counter(canonical_json(v) for v in after)
    ours = [canonical_json(plain_value(v)) for v in node]
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
        node.append(prelim_value(v))
        have[k] += 1
        old[k] += 1
        ops.append(("insert", (), len(node) - 1, v))


_MISSING = object()


def _op_kind(op: Op) -> str:
    """The kind of a logged write (that of the write an ``at`` op anchors)."""
    if op[0] == "at" and isinstance(op[3], list) and op[3]:
        return str(op[3][0])
    return op[0]


# -- state vectors -------------------------------------------------------------


def _varint(data: bytes, pos: int, what: str) -> tuple[int, int]:
    """The unsigned varint of a Yjs (v1) encoding at ``data[pos]`` and the
    position after it; DecodeError (naming ``what``) if it is cut off or
    longer than 64 bits."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise DecodeError(f"truncated {what}")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise DecodeError(f"{what} varint longer than 64 bits")


#: Recently decoded state vectors (a cycle decodes the same few several times).
_SV_CACHE: dict[bytes, dict[int, int]] = {}
_SV_CACHE_SIZE = 64


def decode_state_vector(data: bytes) -> dict[int, int]:
    """Decode a Yjs (v1) state vector: client id -> clock (a new dict)."""
    if not data:
        return {}
    if type(data) is not bytes:
        return _decode_state_vector(data)
    cached = _SV_CACHE.get(data)
    if cached is not None:
        return dict(cached)
    out = _decode_state_vector(data)
    if len(_SV_CACHE) >= _SV_CACHE_SIZE:
        with suppress(StopIteration, RuntimeError, KeyError):
            del _SV_CACHE[next(iter(_SV_CACHE))]
    _SV_CACHE[data] = dict(out)
    return out


def _decode_state_vector(data: bytes) -> dict[int, int]:
    n, pos = _varint(data, 0, "state vector")
    if n > len(data):
        raise DecodeError("state vector entry count exceeds its size")
    out: dict[int, int] = {}
    for _ in range(n):
        client, pos = _varint(data, pos, "state vector")
        out[client], pos = _varint(data, pos, "state vector")
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


def crdt_client_id(replica_id: str, epoch_id: int, salt: int) -> int:
    """A CRDT client id unique to (replica incarnation, epoch), within
    JavaScript's 53 bits. ``salt`` is random per :class:`Meta` instance: a
    restarted replica (or a restarted root building an epoch base again)
    never reuses the ids, and so the clocks, of its previous life."""
    key = f"{replica_id}\x00{epoch_id}\x00{salt}".encode()
    return xxhash.xxh64_intdigest(key) & ((1 << 53) - 1)


# -- the log of the document's updates (incremental answers) -------------------

#: Bounds of :class:`_UpdateLog`: sealed entries, their bytes (the oldest go
#: first), and the deletions carried in every answer (past it the log is off).
_LOG_ENTRIES = 1024
_LOG_BYTES = 256 << 10
_LOOSE_BYTES = 16 << 10
#: Applied updates that left something pending, kept for a re-check.
_SUSPECTS = 64
#: The newest points of the log kept decoded (a peer is usually a point or two behind).
_RECENT = 8
#: A Yjs (v1) update that changes nothing: no structs, an empty delete set.
EMPTY_UPDATE = b"\x00\x00"


def _delete_ranges(data: bytes, pos: int) -> Iterator[tuple[int, int, int]]:
    """``(client, clock, length)`` of each range of the v1 delete set that
    starts at ``data[pos]`` (raises DecodeError if it does not decode)."""
    clients, pos = _varint(data, pos, "delete set")
    for _ in range(clients):
        client, pos = _varint(data, pos, "delete set")
        ranges, pos = _varint(data, pos, "delete set")
        for _ in range(ranges):
            clock, pos = _varint(data, pos, "delete set")
            length, pos = _varint(data, pos, "delete set")
            yield client, clock, length


def _leaves_pending(update: bytes, state: bytes) -> bool:
    """True if a document whose state vector is now ``state``, having
    applied ``update``, may hold part of it pending: structs it could not
    integrate yet (its state vector does not cover them) or deletions of
    items it does not hold yet. O(size of the update) (and of ``state`` if
    the update deletes)."""
    try:
        rest = diff_update(update, state)  # what of it the state does not cover
        if rest[:1] != b"\x00":
            return True  # structs beyond the state vector: waiting for others
        ranges = list(_delete_ranges(rest, 1))
        if not ranges:
            return False
        sv = decode_state_vector(state)
        return any(clock + length > sv.get(c, 0) for c, clock, length in ranges)
    except (ValueError, RuntimeError, DecodeError):
        return True


def _weakly(target: Any, method: str, *extra: Any) -> Callable[[Any], None]:
    """A callback calling ``target.<method>(event, *extra)`` that holds
    ``target`` by a weak reference (does nothing once it is gone)."""
    ref = weakref.ref(target)

    def call(event: Any) -> None:
        obj = ref()
        if obj is not None:
            getattr(obj, method)(event, *extra)

    return call


def _unobserve_all(subs: list[tuple[Any, Any]]) -> None:
    """Drop the subscriptions ``(document or type, subscription)``."""
    while subs:
        owner, sub = subs.pop()
        with suppress(ValueError, RuntimeError):  # dropped already
            owner.unobserve(sub)


def _covers(state: dict[int, int], point: dict[int, int]) -> bool:
    """True if the state vector ``state`` holds everything ``point`` does."""
    return all(state.get(client, 0) >= clock for client, clock in point.items())


class _UpdateLog:
    """The updates of one epoch's document since a state it had, so that a
    peer known to hold one of the states passed on the way gets only what
    came after it (:meth:`Meta.update_since`), in time and bytes proportional
    to that, instead of ``get_update(state)``, which encodes the document's
    whole delete set every time (O(document)).

    ``points[i]`` is a state vector the document had (encoded, as compact as
    it gets; the newest ``_RECENT`` also decoded), ``updates[i]`` takes a
    document from ``points[i]`` to ``points[i + 1]`` (the transactions'
    ``TransactionEvent.update`` in between, merged); ``open`` holds those
    since the last point, which the next answer seals into an entry. A
    transaction costs O(size of its update) here; an answer O(size of what it
    returns) plus O(clients) to find its point (O(clients · log2 entries)
    for a peer more than ``_RECENT`` points behind).

    Bounds: at most ``_LOG_ENTRIES`` (1,024) entries and ``_LOG_BYTES``
    (256 KiB) of updates, the oldest dropped first (a peer behind the oldest
    point gets ``get_update(state)``); transactions between two answers
    past 256 KiB restart the log at the next answer; deletions carried in every
    answer (below) at most ``_LOOSE_BYTES`` (16 KiB), past which the log is
    off until the next epoch.

    Why an answer equals ``get_update(state)`` in effect. A Yjs state vector
    says which structs (insertions) a document holds, not which deletions,
    which is why ``get_update`` sends the whole delete set. Here a peer at
    ``state`` is sent, from the newest point ``p <= state``, every update
    after ``p`` (structs and deletions; those structs ``state`` covers
    filtered out), so it lacks nothing of ours if it holds the deletions
    made up to ``p``. It holds those made in a transaction whose insertions
    it holds: updates travel as whole transactions (this log, a peer's
    transaction updates) or whole documents (``get_update``), and this
    channel's writes that delete also insert (a clock tick), so every
    deletion rides with a struct that ``state`` covers. A transaction that
    only deletes (a late update's effect applied by a root, a writer that is
    not this channel) is carried in every answer ("loose" deletions), and so
    is an applied update without structs, an applied update that left
    something pending (its deletions apply later, with other structs), and
    a restored document's delete set (its history is unknown). While an
    update applied to the document may have left structs or deletions
    pending (they wait for others; ``get_update`` would pass the structs
    on), every answer is ``get_update(state)``. What this rests on: a peer
    holds our structs with the deletions we integrated with them, which a
    tree of links gives (what we hold reaches a peer through us, or came from
    it); a peer that got them through another path, from a replica that
    integrated them with other deletions, is not covered.
    """

    def __init__(self, start: bytes) -> None:
        #: Encoded state vectors (compact: a log of a document with many
        #: clients holds many), and the newest of them decoded (once needed).
        self.points: list[bytes] = [start]
        self.recent: list[dict[int, int] | None] = [None]
        self.updates: list[bytes] = []
        self.size = 0
        self.open: list[bytes] = []
        self.open_size = 0
        self.loose: bytes | None = None
        self.suspects: list[bytes] = []
        self.off = False
        #: Answers given from the log, and requests it could not answer.
        self.answered = 0
        self.declined = 0

    def stop(self) -> None:
        """No more answers (the document is no longer the epoch's)."""
        self.off = True
        self.points, self.updates, self.open, self.suspects = [], [], [], []
        self.loose = None

    def record(self, update: bytes) -> None:
        """A transaction committed with this update (O(its size))."""
        if self.off or update == EMPTY_UPDATE:
            return
        if update[:1] == b"\x00":
            # Deletions only: no clock tells who holds them, so every answer carries them.
            self.carry(update)
            if self.off:
                return
        self.open.append(update)
        self.open_size += len(update)
        if self.open_size > _LOG_BYTES:
            # Too much between two answers: the log starts again at the next one.
            self.points, self.updates, self.size = [], [], 0
            self.open, self.open_size = [], 0

    def carry(self, deletions: bytes) -> None:
        """Carry ``deletions`` (an update; its deletions matter) in every answer."""
        self.loose = deletions if self.loose is None else merge_updates(self.loose, deletions)
        if len(self.loose) > _LOOSE_BYTES:
            self.stop()

    def applied(self, update: bytes, state: bytes) -> None:
        """``update`` was applied to the document, whose state is now ``state``."""
        if self.off:
            return
        if update[:1] == b"\x00" and update != EMPTY_UPDATE:
            # Deletions only (applied now or once their items arrive, in
            # whatever transaction that is): carried in every answer.
            self.carry(update)
        if self.off or not _leaves_pending(update, state):
            return
        # Its deletions may apply later, in a transaction whose structs a peer
        # may hold without them: it goes with every answer too.
        self.carry(update)
        if self.off:
            return
        self.suspects.append(update)
        if len(self.suspects) > _SUSPECTS:
            self.suspects = [merge_updates(*self.suspects)]
            if len(self.suspects[0]) > _LOG_BYTES:
                self.stop()

    def restart(self, start: bytes) -> None:
        """Drop the entries: the log covers the state ``start`` onwards."""
        self.points, self.updates, self.size = [start], [], 0
        self.recent = [None]
        self.open, self.open_size = [], 0

    def _seal(self, current: bytes) -> None:
        if not self.points:
            self.restart(current)
            return
        if not self.open:
            return
        group = self.open[0] if len(self.open) == 1 else merge_updates(*self.open)
        self.open, self.open_size = [], 0
        self.recent.append(None)
        if len(self.recent) > _RECENT:
            del self.recent[0]
        self.points.append(current)
        self.updates.append(group)
        self.size += len(group)
        while len(self.updates) > _LOG_ENTRIES or self.size > _LOG_BYTES:
            self.size -= len(self.updates.pop(0))
            self.points.pop(0)
            if len(self.recent) > len(self.points):
                del self.recent[0]

    def answer(self, raw: bytes, current: bytes) -> bytes | None:
        """What a holder of the state vector ``raw`` lacks, given the
        document's state vector ``current``; None when the log cannot tell
        (ask the document). Raises DecodeError if ``raw`` does not decode."""
        if self.off:
            return None
        self._seal(current)
        if self.suspects:
            self.suspects = [u for u in self.suspects if _leaves_pending(u, current)]
        points = self.points
        if self.suspects:
            self.declined += 1
            return None
        # The newest point the peer holds (points only grow: a prefix does);
        # most often one of the last, as encoded by us.
        n, recent = len(points), self.recent
        older = n - len(recent)  # points[older:] have their decoded form in recent
        at, exact = -1, True
        for j in range(n - 1, older - 1, -1):
            if points[j] == raw:
                at = j
                break
        state = decode_state_vector(raw) if at < 0 else {}
        for j in range(len(recent) - 1 if at < 0 else -1, -1, -1):
            point = recent[j]
            if point is None:
                point = recent[j] = decode_state_vector(points[older + j])
            if _covers(state, point):
                at, exact = older + j, state == point
                break
        if at < 0:
            if not older or not _covers(state, decode_state_vector(points[0])):
                self.declined += 1
                return None
            lo, hi = 0, older - 1
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if _covers(state, decode_state_vector(points[mid])):
                    lo = mid
                else:
                    hi = mid - 1
            at, exact = lo, raw == points[lo]
        parts = self.updates[at:]
        if self.loose is not None:
            parts = [self.loose, *parts]
        self.answered += 1
        if not parts:
            return EMPTY_UPDATE
        update = parts[0] if len(parts) == 1 else merge_updates(*parts)
        if not exact:
            update = diff_update(update, raw)  # without the structs the peer holds
        return update


class _Doc(Doc[Any]):
    """An epoch's document: every update applied to it is shown to its log,
    which must know when something may be left pending."""

    log: _UpdateLog | None = None

    def apply_update(self, update: bytes) -> None:
        super().apply_update(update)
        if self.log is not None and not self.log.off:
            self.log.applied(update, self.get_state())


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
        out = plain_value(self._node())
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
        out = plain_value(self._node())
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
    ) -> None:
        self.replica_id = replica_id
        self._changes = changes
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
        #: The client ids in _pending (kept along with it: read every cycle).
        self._pending_clients: set[int] = set()
        self._pending_limit = 256
        #: This replica's latest write of each dict key it wrote (most recent
        #: last, at most _LATEST_KEYS): (path, key) -> (deleted, value). A
        #: server that merged our document by value keeps its own plain
        #: values; those of ours still current in our document go again.
        self._latest: dict[tuple[Path, str], tuple[bool, Value]] = {}
        self._changed = True  # since the last compaction check
        self._client = 0
        self._salt = secrets.randbits(64) if incarnation is None else incarnation
        #: The encoded state as last measured plus the bytes of every update
        #: integrated or written since (``_since``): an estimate from above
        #: that costs nothing to keep (the compaction check measures only
        #: when it says a measurement is due).
        self._estimate = 0
        self._since = 0
        self._base_size = 0
        #: While observed: the paths whose values changed since the last
        #: take_touched() (None: unknown, compare everything).
        self._watching = False
        self._watch: Any = None  # the observe_deep subscription while watching
        #: (document or type, subscription) of the current epoch's observers.
        self._subs: list[tuple[Any, Any]] = []
        weakref.finalize(self, _unobserve_all, self._subs).atexit = False
        self._touched: set[tuple[str, ...]] | None = None
        # Every replica starts on an epoch 0 of its own: the first exchange
        # with an upstream moves it onto the upstream's epoch.
        self._start_epoch(0, self._first_epoch_id(), b"")

    # -- epochs: generations of the document (the sync layer decides when
    # -- to start one: hybridsync.sync.epochs)

    def _first_epoch_id(self) -> int:
        """The id of the epoch 0 this replica starts on."""
        return 0

    def _next_epoch_id(self) -> int:
        """The id of the epoch this replica would start next."""
        return self.epoch_id + 1

    def _start_epoch(self, epoch: int, epoch_id: int, base: bytes) -> None:
        """Start a new document (epoch ``epoch``, id ``epoch_id``) from
        ``base`` (an update holding the whole document, or empty)."""
        self.epoch = epoch
        self.epoch_id = epoch_id
        self.base = base
        self._client = crdt_client_id(self.replica_id, epoch_id, self._salt)
        old = getattr(self, "_doc", None)
        if isinstance(old, _Doc) and old.log is not None:
            old.log.stop()  # an ended epoch's document (a root may keep it for late updates)
            old.log = None
        _unobserve_all(self._subs)  # the ended document's observers
        doc = _Doc(client_id=self._client)
        self._doc: Doc[Any] = doc
        if base:
            self._doc.apply_update(base)
        self._root = self._doc.get(ROOT_KEY, type=Map)
        self._clock = self._doc.get(_CLOCK, type=Map)
        self.base_state = self._doc.get_state()
        self._base_size = len(base)
        self._estimate, self._since = len(base), 0
        # The log answers peers that hold one of the states it passed; it
        # starts at the base (a peer on this epoch got the base whole).
        log = _UpdateLog(self.base_state)
        if base:
            log.applied(base, self.base_state)
        self._log = log
        doc.log = log
        # Every transaction's update (own writes and peers' updates alike)
        # feeds the estimate and the log: O(size of the change).
        # The CRDT holds its callbacks, and they hold the document, from
        # native code, where the garbage collector cannot see the cycle: the
        # callbacks hold us weakly, and each document's subscriptions are
        # dropped when its epoch ends or we are freed (self._subs), or every
        # document ever observed would stay in memory.
        self._subs.append((doc, doc.observe(_weakly(self, "_count_update", log))))
        self.metrics.epoch = epoch
        if self._watching:
            self._watch = self._root.observe_deep(_weakly(self, "_note_paths"))
            self._subs.append((self._root, self._watch))
            self._touched = None  # a new document: compare everything once

    # -- what changed, for observers (hybridsync.channels.events)

    def watch_paths(self, on: bool) -> None:
        """Record (``on``) or stop recording which paths change, so that
        observers compare only those (O(size of the change), not O(state))."""
        if on and not self._watching:
            self._watch = self._root.observe_deep(_weakly(self, "_note_paths"))
            self._subs.append((self._root, self._watch))
        elif not on and self._watching:
            self._subs[:] = [sub for sub in self._subs if sub[1] is not self._watch]
            self._root.unobserve(self._watch)
            self._watch = None
        self._watching = on
        self._touched = None

    def take_touched(self) -> set[tuple[str, ...]] | None:
        """The paths (from the root) whose values may have changed since the
        last call; None when unknown (compare everything). Paths stop at the
        first list: a change inside a list counts as a change of the list."""
        touched = self._touched
        self._touched = set()
        return touched

    def _note_paths(self, events: list[Any]) -> None:
        if not self._watching or self._touched is None:
            return
        for event in events:
            path = tuple(event.path)
            keys = getattr(event, "keys", None)
            targets = [(*path, k) for k in keys] if isinstance(keys, dict) else [path]
            for target in targets:
                parts: list[str] = []
                for part in target:
                    if not isinstance(part, str):
                        break  # inside a list: the list holding it changed
                    parts.append(part)
                self._touched.add(tuple(parts))

    def value_at(self, path: tuple[str, ...]) -> tuple[bool, Value]:
        """``(True, value)`` of the value at ``path`` (keys from the root),
        or ``(False, None)`` when there is none."""
        node: Any = self._root
        for key in path:
            if not isinstance(node, Map) or key not in node:
                return False, None
            node = node[key]
        return True, plain_value(node)

    def has_pending_writes(self) -> bool:
        """True while own writes are not known to be integrated by the root."""
        return bool(self._pending)

    def _note_latest(self, path: Path, key: str, deleted: bool, value: Value) -> None:
        if any(isinstance(part, int) for part in path):
            return  # inside a list: the index may point elsewhere later
        target = (path, key)
        self._latest.pop(target, None)
        self._latest[target] = (deleted, value)
        if len(self._latest) > _LATEST_KEYS:
            del self._latest[next(iter(self._latest))]

    # -- persistence (hybridsync.store)

    def saved_state(self) -> dict[str, Any]:
        """What the store saves besides the document's updates and the
        epoch's base (plain data; :meth:`restore_state` reloads it)."""
        return self._saved()

    def restore_state(self, saved: dict[str, Any], base: bytes, updates: list[bytes]) -> None:
        """Reopening: reload :meth:`saved_state`, the epoch's base and the
        document's updates into a fresh replica."""
        self._restore(saved, base, updates)

    def persist_key(self) -> tuple[Any, ...]:
        """Changes whenever what the store saves would (cheap to compute)."""
        return (
            self.epoch_id,
            self.state(),
            len(self._pending),
            self._ticks,
            *self._persist_extra(),
        )

    def _persist_extra(self) -> tuple[Any, ...]:
        return ()

    def _saved(self) -> dict[str, Any]:
        """Everything but the current epoch's document and base, as plain data."""
        return {
            "epoch": self.epoch,
            "epoch_id": self.epoch_id,
            "pending": [[c, e, k, list(p), key, v] for c, e, (k, p, key, v) in self._pending],
            "ticks": self._ticks,
            "latest": [[list(p), k, d, v] for (p, k), (d, v) in self._latest.items()],
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
        # Who holds which deletions of a restored document is unknown: its
        # delete set goes with every answer of the log (or, past the log's
        # bound, every answer is get_update(state) until the next epoch).
        state = self._doc.get_state()
        self._log.restart(state)
        deletions = self._doc.get_update(state)
        if deletions != EMPTY_UPDATE:
            self._log.carry(deletions)
        self._pending = [
            (int(c), int(e), (str(k), tuple(p), key, v)) for c, e, k, p, key, v in saved["pending"]
        ]
        self._pending_clients = {c for c, _, _ in self._pending}
        self._pending_limit = 2 * len(self._pending) + 256
        self._ticks = int(saved["ticks"])
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
        """Everything a holder of ``state`` (of this epoch) lacks.

        ``None``: the whole document. Otherwise, when ``state`` holds one of
        the states this document passed since its log began (the epoch's
        start; the log keeps at most 1,024 entries and 256 KiB of updates), the
        updates since the newest such state, merged (O(size of the change)),
        which a holder of ``state`` integrates to the same document as
        ``get_update(state)``, whose delete set is the whole document's
        (O(document)); see :class:`_UpdateLog` for why and when the log
        answers. Otherwise (an unknown or older state, a restored replica
        whose delete set is large, updates left pending) ``get_update(state)``.
        """
        if not state:
            return self._doc.get_update()
        try:
            answer = self._log.answer(state, self._doc.get_state())
        except DecodeError:
            answer = None
        return self._doc.get_update(state) if answer is None else answer

    def apply_remote(self, update: bytes, origin: Origin) -> None:
        """Integrate an update of the current epoch from a peer."""
        try:
            self._doc.apply_update(update)
        except (ValueError, RuntimeError) as exc:  # pycrdt refuses damaged updates with either
            raise DecodeError(f"invalid metadata update: {exc}") from exc
        self._changed = True
        self._changes.meta_changed(origin)

    def _count_update(self, event: TransactionEvent, log: _UpdateLog) -> None:
        update = event.update
        n = len(update)
        self._estimate += n
        self._since += n
        log.record(update)

    def _measure(self, encoded: int, live: int, clients: int) -> None:
        self._estimate, self._since = encoded, 0
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
                if any(_op_kind(op) in ("del", "ldel") for op in self._txn_ops):
                    # A deletion alone does not advance our clock; this write
                    # does, so each logged write has a clock to be acknowledged by.
                    self._ticks += 1
                    self._clock[str(self._client)] = self._ticks
        finally:
            self._txn_depth = 0
        if self._txn_ops:
            end = decode_state_vector(self._doc.get_state()).get(self._client, 0)
            self._pending.extend((self._client, end, op) for op in self._txn_ops)
            self._pending_clients.add(self._client)
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
            if any(path[:i] in replaced for i in range(1, len(path) + 1)):
                continue
            if kind in ("set", "del") and isinstance(key, str):
                target = (*path, key)
                if target in replaced:
                    continue
                replaced.add(target)
            kept.append((client, end, op))
        kept.reverse()
        self._pending = kept
        self._pending_clients = {c for c, _, _ in kept}
        self._pending_limit = 2 * len(kept) + 256

    def _logged(self, kind: str, path: Path, key: str | int, value: Any) -> Op:
        """The op to log for a write at ``path``, before it is made. A path
        through a list element is logged as an ``at`` op with each such
        element's value as it was (canonical JSON): replayed on another
        epoch, where the index may point elsewhere, the write goes to the
        element holding that value nearest to its old index."""
        if not any(isinstance(part, int) for part in path):
            return (kind, path, key, value)
        anchors: list[str] = []
        node: Any = self._root
        for part in path:
            node = node[part]
            if isinstance(part, int):
                anchors.append(canonical_json(plain_value(node)).decode())
        return ("at", path, key, [kind, anchors, value])

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
        return plain_value(value)

    def _set(self, path: Path, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise InvalidArgumentError(f"metadata keys are str, got {type(key).__name__}")
        _check_str(key)
        checked = _check(value)
        node = self._resolve(path)
        with self._write() as ops:
            ops.append(self._logged("set", path, key, checked))
            node[key] = prelim_value(checked)
        self._note_latest(path, key, False, checked)

    def _delete(self, path: Path, key: str) -> None:
        node = self._resolve(path)
        if key not in node:
            raise KeyError(key)
        with self._write() as ops:
            ops.append(self._logged("del", path, key, None))
            del node[key]
        self._note_latest(path, key, True, None)

    def _list_set(self, path: Path, index: int, value: Any) -> None:
        checked = _check(value)
        node = self._resolve(path)
        i = _index(index, len(node))
        with self._write() as ops:
            ops.append(self._logged("lset", path, i, checked))
            node[i] = prelim_value(checked)

    def _list_insert(self, path: Path, index: int, value: Any) -> None:
        checked = _check(value)
        node = self._resolve(path)
        if not isinstance(index, int):
            raise InvalidArgumentError(f"list indices are int, got {type(index).__name__}")
        i = max(0, min(index + len(node) if index < 0 else index, len(node)))
        with self._write() as ops:
            ops.append(self._logged("insert", path, i, checked))
            node.insert(i, prelim_value(checked))

    def _list_delete(self, path: Path, index: int) -> None:
        node = self._resolve(path)
        i = _index(index, len(node))
        old = plain_value(node[i])
        with self._write() as ops:
            ops.append(self._logged("ldel", path, i, [old]))  # the value, to find it again
            del node[i]

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
        out = plain_value(self._root)
        assert isinstance(out, dict)
        return out

    def __repr__(self) -> str:
        return f"<Meta of {self.replica_id!r}: epoch {self.epoch}, {len(self)} keys>"
