"""Metadata epochs: the sync protocol's side of the metadata channel.

The metadata channel (:class:`hybridsync.channels.meta.Meta`) keeps one Yjs
document per *epoch* and a log of this replica's own writes. What makes
epochs a protocol lives here, in :class:`EpochMeta` (``memory.meta``):

- epoch ids: a lineage tag (40 bits, random per replica incarnation that
  starts epochs) above a 24-bit counter; the lineages a replica held;
- compaction: the root of the link tree starts a new epoch from the live
  value when the :class:`~hybridsync.channels.meta.CompactionPolicy` says
  so, keeping the frozen state vectors of ended epochs (and the last
  documents) to move lagging replicas across;
- crossing to an upstream's epoch (re-applying the own writes it lacks),
  late updates of an ended epoch, and merging a foreign lineage's document
  by value.

:mod:`hybridsync.sync.link` decides when each happens (docs/protocol.md,
section 6.9).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import xxhash
from pycrdt import Array, Doc, Map

from hybridsync.channels.events import ChangeBus, Origin
from hybridsync.channels.meta import (
    ROOT_KEY,
    CompactionPolicy,
    Meta,
    Op,
    Path,
    Value,
    apply_change,
    canonical_json,
    crdt_client_id,
    decode_state_vector,
    plain_value,
    prelim_value,
)
from hybridsync.errors import DecodeError

__all__ = ["EpochMeta"]

#: Frozen state vectors kept to move lagging replicas across epochs.
_EPOCH_HISTORY = 256
#: An epoch id is a lineage tag (40 bits, random per replica incarnation that
#: starts epochs) above a 24-bit epoch counter.
_COUNTER_BITS = 24
_COUNTER_MASK = (1 << _COUNTER_BITS) - 1
#: Lineage tags remembered (with the highest counter seen under each).
_LINEAGE_TAGS = 64
#: Documents of the epochs a root ended most recently, kept to integrate
#: updates that arrive for them late (a request that crossed a compaction,
#: a hub that lagged several compactions behind): at least _ENDED_DOCS, and
#: up to _ENDED_MAX while their encoded sizes (measured at each compaction)
#: add up to no more than _ENDED_BUDGET times the live value plus
#: _ENDED_SLACK bytes.
_ENDED_DOCS = 4
_ENDED_MAX = 64
_ENDED_BUDGET = 8
_ENDED_SLACK = 64 * 1024
#: A root that adopted a client's document holds its compaction (so that a
#: client on a later epoch descending from the one adopted can still be
#: adopted instead) while some client link has not reported its epoch, for
#: at most this many compaction checks.
_ADOPT_HOLD = 64
#: Root map of an epoch's base document: the lineages it descends from.
_ANCESTRY = "lineage"
#: The compaction check measures once the estimate grew by 1/_GROWTH of the
#: last measurement, or by 1/_NEAR when it may pass the threshold.
_GROWTH = 16
#: A client reporting an empty document holds an adoption up this many times.
_EMPTY_ROUNDS = 3
_NEAR = 256


def _later(ops: list[Op], i: int) -> set[str] | None:
    """For an anchored write ``ops[i]`` to a dict in a list: the values that
    dict took from it on, through our later writes to it (canonical JSON);
    None for another kind of op."""
    kind, _, key, v = ops[i]
    if kind != "at" or not (isinstance(v, list) and len(v) == 3 and isinstance(v[1], list)):
        return None
    first = _after(v[0], v[1], key, v[2])
    if first is None:
        return None
    seen = {first}
    for later in ops[i + 1 :]:
        k, _, lkey, lv = later
        if k != "at" or not (isinstance(lv, list) and len(lv) == 3 and isinstance(lv[1], list)):
            continue
        if lv[1] and lv[1][-1] in seen:
            after = _after(lv[0], lv[1], lkey, lv[2])
            if after is not None:
                seen.add(after)
    return seen


def _versions(ops: list[Op], i: int) -> set[bytes]:
    """The values the element inserted by ``ops[i]`` took through our later
    in-place writes to it (canonical JSON; empty for another kind of op)."""
    kind, path, _, value = ops[i]
    if kind != "insert":
        return set()
    seen = {canonical_json(value)}
    for later in ops[i + 1 :]:
        k, p, key, v = later
        if k != "at" or len(p) != len(path) + 1 or p[: len(path)] != path:
            continue
        if not (isinstance(v, list) and len(v) == 3 and isinstance(v[1], list) and v[1]):
            continue
        if str(v[1][-1]).encode() in seen:
            after = _after(v[0], v[1], key, v[2])
            if after is not None:
                seen.add(after.encode())
    return seen


def _landed(op: Op, old: Map[Any], new: Map[Any], versions: set[bytes] | None = None) -> bool:
    """For a crossing without a frozen state (what the new document holds
    of ours is known only as what our upstream acknowledged): True for a
    list insert or deletion of ours that the new document already shows,
    counted by value (it holds as many copies of the value as our document
    did after the write, or for a deletion no more), so that a write that
    landed without its acknowledgement is not applied twice."""
    kind, path, key, value = op
    if any(isinstance(part, int) for part in path):
        return False
    if kind in ("set", "del"):
        try:
            was, now = _at(old, path, key), _at(new, path, key)
        except KeyError:
            return False
        return was == now
    if kind not in ("insert", "ldel"):
        return False
    if kind == "ldel":
        if not (isinstance(value, list) and len(value) == 1):
            return False
        value = value[0]

    def count(root: Map[Any]) -> int | None:
        node: Any = root
        for part in path:
            if not isinstance(node, Map) or not isinstance(part, str) or part not in node:
                return None
            node = node[part]
        if not isinstance(node, Array):
            return None
        want = canonical_json(value)
        return sum(1 for v in node if canonical_json(plain_value(v)) == want)

    before, after = count(old), count(new)
    if before is None or after is None:
        return False
    if kind == "insert" and versions and len(versions) > 1:
        # A dict we changed in place since: it landed if the new document
        # holds it in any of the versions it went through.
        node: Any = new
        for part in path:
            node = node[part]
        return any(canonical_json(plain_value(v)) in versions for v in node)
    # (An inserted value our later writes changed counts 0 in our document:
    # it landed if the new document holds it as inserted.)
    return after >= max(before, 1) if kind == "insert" else after <= before


def _at(root: Map[Any], path: Path, key: Any) -> bytes | None:
    """The canonical JSON of the value at ``path`` / ``key`` (None: absent);
    KeyError when the container is missing."""
    node: Any = root
    for part in path:
        if not isinstance(node, Map) or not isinstance(part, str) or part not in node:
            raise KeyError(part)
        node = node[part]
    if not isinstance(node, Map) or not isinstance(key, str):
        raise KeyError(key)
    return canonical_json(plain_value(node[key])) if key in node else None


def _after(kind: Any, anchors: list[Any], key: Any, value: Any) -> str | None:
    """The canonical JSON of an anchored dict as a set or del of ``key`` in
    it left it (None when that is not the kind of write)."""
    if kind not in ("set", "del") or not anchors or not isinstance(key, str):
        return None
    try:
        element = json.loads(anchors[-1])
    except (TypeError, ValueError):
        return None
    if not isinstance(element, dict):
        return None
    if kind == "set":
        element[key] = value
    else:
        element.pop(key, None)
    return canonical_json(element).decode()


def _sv_clients(state: bytes) -> int:
    """The number of client ids in an encoded state vector (its first varint)."""
    n = shift = 0
    for b in state:
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n
        shift += 7
    return n


class EpochMeta(Meta):
    """The metadata channel with its epochs (``memory.meta``).

    Args:
        is_root: tells whether this replica is the root of its link tree now
            (the root owns compaction and remembers ended epochs).
    """

    def __init__(
        self,
        replica_id: str,
        changes: ChangeBus,
        policy: CompactionPolicy,
        incarnation: int | None = None,
        *,
        is_root: Callable[[], bool] = lambda: True,
    ) -> None:
        self._is_root = is_root
        #: Ended epochs we left by a MERGE (our clients on them get MERGE too).
        self._via_merge: set[int] = set()
        #: Root: the documents of the last epochs it ended (not saved).
        self._ended: dict[int, Doc[Any]] = {}
        #: Frozen state vectors of ended epochs (epoch -> encoded state vector).
        self._frozen: dict[int, bytes] = {}
        #: Own clock acknowledged by the upstream this epoch, per own client id.
        self._delivered: dict[int, int] = {}
        #: Lineage tags of documents we adopted (and their ancestors).
        #: Lineage tag -> counter below which its epochs are *uncertain*: held
        #: by others before we adopted (or, a hub, crossed into) that lineage,
        #: so what we hold of a client's writes there is inferred by value.
        self._uncertain: dict[int, int] = {}
        #: Documents offered for adoption: peer -> (epoch, epoch id, document, state).
        self._offers: dict[str, tuple[int, int, bytes, bytes]] = {}
        self._offer_rounds: dict[str, int] = {}
        #: Peers whose latest document was empty -> how many times in a row.
        self._empty_peers: dict[str, int] = {}
        #: Lineage tags of the epochs this replica held -> (lowest, highest counter).
        self._lineage: dict[int, tuple[int, int]] = {}
        #: Root: the epoch it adopted, while it is still on it (it has not
        #: compacted or crossed since): a client document of a later epoch
        #: descending from it is adopted instead (see :meth:`can_adopt`).
        self._adopted: int | None = None
        #: Compaction checks held since the adoption (see _ADOPT_HOLD).
        self._held = 0
        #: Root: the encoded size of each document in ``_ended``.
        self._ended_size: dict[int, int] = {}
        self._tag = 0
        super().__init__(replica_id, changes, policy, incarnation)

    # -- epoch ids and lineages

    def _first_epoch_id(self) -> int:
        self._tag = self._draw_tag()
        return self._tag << _COUNTER_BITS

    def _start_epoch(self, epoch: int, epoch_id: int, base: bytes) -> None:
        self._delivered = {}
        tag, counter = epoch_id >> _COUNTER_BITS, epoch_id & _COUNTER_MASK
        lo, hi = self._lineage.pop(tag, (counter, counter))
        self._lineage[tag] = (min(lo, counter), max(hi, counter))
        while len(self._lineage) > _LINEAGE_TAGS:
            del self._lineage[next(iter(self._lineage))]
        super()._start_epoch(epoch, epoch_id, base)

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
            (self._is_root() or tag in self._uncertain)
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

    def own_clients(self) -> set[int]:
        """The CRDT client ids of this replica's logged writes and current one."""
        return self._pending_clients | {self._client}

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

    def _measure_due(self) -> bool:
        """True when the compaction check must measure the encoded state
        (O(whole metadata)); otherwise the check costs O(clients). Due when
        more client ids wrote in the epoch than the policy allows; or when the
        estimate (last measured size plus the bytes of every update since, a
        bound from above) passes both the threshold and the base's floor
        (:meth:`_floor`) and has grown by 1/256 of the last measurement since;
        or, whatever it says, once it has grown by 1/16. Measuring is thus
        amortized over the bytes written."""
        since, measured = self._since, self._estimate - self._since
        if since <= 0:
            return False
        if _sv_clients(self._doc.get_state()) > self.policy.max_clients:
            return True
        if since * _GROWTH >= measured:
            return True
        return since * _NEAR >= measured and self._estimate > max(self._threshold(), self._floor())

    def _threshold(self) -> float:
        """The policy's threshold at the last measured live size."""
        p = self.policy
        return p.max_ratio * self.metrics.live_bytes + p.slack_bytes

    def _floor(self) -> int:
        """No compaction below this size: a fresh document of the live value
        would be about the epoch's base (whose encoding alone may pass the
        threshold); compacting again pays once the history grew by 1/8."""
        return self._base_size + self._base_size // 8 + 64

    def maybe_compact(self) -> bool:
        """Run the compaction pass: start a new epoch when the policy says so.
        Only the root of the link tree calls it. Returns True if it compacted.
        Costs O(size of the changes since the last pass), amortized: it
        measures only when :meth:`_measure_due`, and reads the live value
        only when the state passes the base's floor."""
        if not self._changed or self._holding():
            return False
        self._changed = False
        p = self.policy
        if not p.enabled or not self._measure_due():
            return False
        encoded = len(self._doc.get_update())
        clients = len(decode_state_vector(self._doc.get_state()))
        if encoded <= self._floor() and clients <= p.max_clients:
            self._measure(encoded, self.metrics.live_bytes, clients)
            return False
        live = self.to_py()
        self._measure(encoded, len(canonical_json(live)), clients)
        if encoded <= self._threshold() and clients <= p.max_clients:
            return False
        self._frozen[self.epoch_id] = self._doc.get_state()
        self._ended[self.epoch_id] = self._doc
        self._ended_size[self.epoch_id] = encoded
        budget = _ENDED_BUDGET * self.metrics.live_bytes + _ENDED_SLACK
        while len(self._ended) > _ENDED_DOCS and (
            len(self._ended) > _ENDED_MAX or sum(self._ended_size.values()) > budget
        ):
            oldest = next(iter(self._ended))
            del self._ended[oldest]
            self._ended_size.pop(oldest, None)
        self._trim_history()
        epoch_id = self._next_epoch_id()
        builder_id = crdt_client_id(self.replica_id, epoch_id, self._salt ^ 1)
        builder: Doc[Any] = Doc(client_id=builder_id)
        root = builder.get(ROOT_KEY, type=Map)
        ancestry = builder.get(_ANCESTRY, type=Map)
        with builder.transaction():
            for k, v in live.items():
                root[k] = prelim_value(v)
            # The lineages this epoch descends from, so that a root restarted
            # from nothing that adopts it knows their earlier epochs.
            for tag, (lo, hi) in self._lineage.items():
                ancestry[str(tag)] = f"{lo}:{hi}"
        self._start_epoch(self.epoch + 1, epoch_id, builder.get_update())
        self._pending.clear()  # the root integrated everything it wrote
        self._pending_clients.clear()
        self.metrics.compactions += 1
        self._measure(len(self._doc.get_update()), self.metrics.live_bytes, 1)
        self._changes.meta_changed(Origin.LOCAL)
        return True

    def _readopting(self) -> bool:
        """True on a root still on the epoch it adopted (it has not compacted
        or crossed since): a client on a later epoch descending from it may
        still be adopted instead."""
        return self._adopted is not None and self._adopted == self.epoch_id and self._is_root()

    def _holding(self) -> bool:
        """True while a root that adopted holds its compaction: some client
        link has not reported its epoch yet (it may be on a later epoch of
        what we adopted), at most _ADOPT_HOLD checks. Compacting would end
        the epoch the other clients are on, and with it the chance to adopt
        the later one: its clients' document merged by value instead would
        double dicts changed in place and bring back deletions."""
        if not self._readopting() or self._held >= _ADOPT_HOLD:
            return False
        # The links listening on our change bus; a server link does not know
        # its client's epoch until the client's first block.
        links = [getattr(w, "link", None) for w in self._changes.listeners]
        silent = any(
            getattr(link, "role", None) == "server"
            and getattr(link, "peer_epoch_known", True) is False
            for link in links
        )
        if silent:
            self._held += 1
        return silent

    def _descends(self, epoch_id: int, document: Doc[Any]) -> bool:
        """True when ``epoch_id`` (whose whole document is ``document``) is a
        later epoch descending from the one we adopted: a later counter of its
        lineage, or a base whose recorded lineages include it."""
        if self._adopted is None:
            return False
        tag, counter = self._adopted >> _COUNTER_BITS, self._adopted & _COUNTER_MASK
        if epoch_id >> _COUNTER_BITS == tag:
            return (epoch_id & _COUNTER_MASK) > counter
        span = document.get(_ANCESTRY, type=Map).get(str(tag))
        try:
            return int(str(span).split(":")[1]) >= counter
        except (ValueError, IndexError):
            return False

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
        before = plain_value(doc.get(ROOT_KEY, type=Map))
        scratch: Doc[Any] = Doc()
        try:
            scratch.apply_update(doc.get_update())
            scratch.apply_update(update)
        except ValueError as exc:
            raise DecodeError(f"invalid metadata update: {exc}") from exc
        doc.apply_update(update)
        if doc.get_state() == before_state:
            return True
        after = plain_value(doc.get(ROOT_KEY, type=Map))
        assert isinstance(before, dict) and isinstance(after, dict)
        with self._writing_for(origin), self._write() as ops:
            written: list[Op] = []
            apply_change(self._root, before, after, written)
            if written:
                ops.append(("merge", (), None, after))
            self.metrics.late_writes += len(written)
        self._frozen[epoch_id] = doc.get_state()
        self._changed = True
        return True

    def left_by_merge(self, epoch_id: int) -> bool:
        """True for an ended epoch we left because our upstream merged our
        document by value: our clients on it move by MERGE too (so that their
        own latest values win again over the merged ones); and, on a root
        that adopted a client's document, for the earlier epochs of that
        lineage (their replicas replay what did not visibly land)."""
        return epoch_id in self._via_merge or (
            (epoch_id & _COUNTER_MASK) < self._uncertain.get(epoch_id >> _COUNTER_BITS, 0)
            and self.forgotten(epoch_id)
        )

    def cross(
        self,
        epoch: int,
        epoch_id: int,
        document: bytes,
        frozen_state: bytes,
        *,
        merged: bool = False,
        adopting: bool = False,
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
        # After a MERGE without a state (our upstream adopted a document of
        # our lineage from another replica): nothing of ours is known to be
        # there; every logged write is replayed unless it visibly landed.
        uncertain = merged and not frozen_state
        integrated = frozen if frozen_state else {} if uncertain else self._delivered
        keep = [op for client, end, op in self._pending if end > integrated.get(client, 0)]
        # After a merge: our latest dict writes still current in our document
        # go again over the merged values (a container merges into the one
        # there instead of replacing what others put in it since).
        overlays = self._current_latest() if merged else []
        self._frozen[self.epoch_id] = frozen_state
        if merged:
            self._via_merge.add(self.epoch_id)
        self._trim_history()
        old_root = self._root
        self._start_epoch(epoch, epoch_id, document)
        if not self._is_root():
            # A hub: a client on an earlier epoch of this lineage (or of one
            # it descends from) whose frozen state we do not keep is moved by
            # MERGE without a state (it replays what did not visibly land).
            tag, counter = epoch_id >> _COUNTER_BITS, epoch_id & _COUNTER_MASK
            self._lineage[tag] = (0, max(counter, self._lineage.get(tag, (0, 0))[1]))
            self._uncertain[tag] = max(self._uncertain.get(tag, 0), counter + 1)
            self._learn_ancestry()
        self._pending = []
        self._pending_clients = set()
        self.metrics.crossings += 1
        if keep or overlays:
            with self._write() as ops:
                for i, op in enumerate(keep):
                    if uncertain and _landed(op, old_root, self._root, _versions(keep, i)):
                        continue
                    logged = self._replay(op, _later(keep, i) if uncertain else None)
                    if logged is not None:
                        ops.append(logged)
                for op in overlays:
                    self._overlay(op, ops)
                self.metrics.rebased_writes += len(ops)
        self._changed = True
        self._changes.meta_changed(origin)
        return len(keep)

    def can_adopt(self) -> bool:
        """True while this replica is still on the epoch it started on, never
        crossed, compacted or merged, and its document holds only its own
        writes (a server restarted from nothing): it may adopt a client's
        document instead of merging it by value."""
        if self._readopting():
            return True  # only a later epoch of the one adopted (see offer)
        m = self.metrics
        if m.crossings or m.compactions or m.merged_writes or m.adoptions or self.epoch:
            return False
        return set(decode_state_vector(self._doc.get_state())) <= self.own_clients()

    def offer(self, peer: str, epoch: int, epoch_id: int, update: bytes, state: bytes) -> bool:
        """A client's whole document of another lineage, offered for
        adoption (while :meth:`can_adopt`): kept, one per peer, until
        :meth:`adopt_newest`. False when ``update`` is not the whole
        document ``state`` describes; raises DecodeError if it does not
        decode."""
        scratch: Doc[Any] = Doc()
        try:
            scratch.apply_update(update)
        except (ValueError, RuntimeError) as exc:
            raise DecodeError(f"invalid metadata update: {exc}") from exc
        sv = decode_state_vector(scratch.get_state())
        if not sv:
            self._empty_peers[peer] = self._empty_peers.get(peer, 0) + 1
            return False  # empty: nothing to adopt (it merges)
        if sv != decode_state_vector(state):
            return False  # not the whole document
        if self._readopting() and not self._descends(epoch_id, scratch):
            return False  # adopted already: only a later epoch of it replaces it
        self._empty_peers.pop(peer, None)
        self._offers[peer] = (epoch, epoch_id, update, state)
        self._offer_rounds[peer] = self._offer_rounds.get(peer, 0) + 1
        return True

    def nothing_to_adopt(self, peers: list[str]) -> bool:
        """True when every one of ``peers`` reported an empty document."""
        return all(p in self._empty_peers for p in peers)

    def reported_empty(self, peer: str) -> bool:
        """True when ``peer``'s latest document was empty, fewer than
        _EMPTY_ROUNDS times (a hub restarted from nothing may adopt its own
        clients' document soon; a fresh replica stays empty)."""
        return 0 < self._empty_peers.get(peer, 0) < _EMPTY_ROUNDS

    def offers_waited(self, peer: str) -> int:
        """How many times ``peer`` offered its document (it waits meanwhile)."""
        return self._offer_rounds.get(peer, 0)

    def adopt_newest(self, origin: Origin = Origin.LOCAL) -> dict[str, tuple[int, bytes]]:
        """Take the newest offered document (the highest epoch counter; the
        largest on a tie) as our own epoch, re-applying our own writes on it,
        as a crossing would: the Yjs history stays shared with the replicas
        that hold it, so their later updates, deletions and in-place changes
        included, merge by the CRDT instead of by value. The other offers of
        that epoch are integrated as updates; those of other epochs merge by
        value right away (before their peers change anything more). The
        earlier epochs of the adopted lineage count as forgotten on the root
        (their clients cross keeping only what their upstream did not
        acknowledge). Returns the peers merged by value: peer -> (their
        epoch id, the state vector merged)."""
        if not self._offers:
            return {}
        offers = dict(self._offers)
        self._offers.clear()
        self._offer_rounds.clear()
        best = max(offers, key=lambda p: (offers[p][1] & _COUNTER_MASK, len(offers[p][2])))
        epoch, epoch_id, update, _ = offers.pop(best)
        previous = self.epoch_id if self._readopting() else None
        self.cross(epoch, epoch_id, update, b"", adopting=True, origin=origin)
        if previous is not None:
            # Adopted again (a later epoch of the one adopted): the clients
            # still on the earlier one hold writes this document may lack;
            # it counts as forgotten (below), so they cross by MERGE without
            # a state and replay what did not visibly land.
            self._frozen.pop(previous, None)
        self.metrics.crossings -= 1  # not a crossing to an upstream's epoch
        self.metrics.adoptions += 1
        self._base_size = 0  # a client's history, not a compacted base: no floor
        tag, counter = epoch_id >> _COUNTER_BITS, epoch_id & _COUNTER_MASK
        self._lineage[tag] = (0, counter)
        # Earlier epochs of this lineage were held by others; from this one
        # on (ours now), what we acknowledged we integrated.
        self._uncertain[tag] = max(self._uncertain.get(tag, 0), counter)
        self._learn_ancestry()
        if self._is_root():
            self._adopted, self._held = self.epoch_id, 0
        merged: dict[str, tuple[int, bytes]] = {}
        for peer, (_, other_id, other, state) in offers.items():
            if other_id == epoch_id:
                # Same epoch: the document shares its history (its peer was
                # answered as if integrated once we are on it).
                self._doc.apply_update(other)
                self._changed = True
            elif self.forgotten(other_id):
                continue  # an earlier epoch of what we adopted: its peer crosses
            elif self.merge_foreign(other, state):
                merged[peer] = (other_id, state)
        self._changes.meta_changed(Origin.LOCAL)
        return merged

    def _learn_ancestry(self) -> None:
        """Add the lineages the current document descends from (recorded by
        the root that built its epoch) to ours: their epochs up to the
        recorded counter count as ours (forgotten, on the root)."""
        ancestry = self._doc.get(_ANCESTRY, type=Map)
        for key, span in list(ancestry.items()):
            try:
                tag, hi = int(key), int(str(span).split(":")[1])
            except (ValueError, IndexError):
                continue  # not written by a compaction: ignored
            if tag == self.epoch_id >> _COUNTER_BITS or not 0 < tag < 1 << 40:
                continue
            _, old_hi = self._lineage.pop(tag, (0, hi))
            self._lineage[tag] = (0, max(old_hi, hi))
            self._uncertain[tag] = max(self._uncertain.get(tag, 0), hi + 1)
        while len(self._lineage) > _LINEAGE_TAGS:
            del self._lineage[next(iter(self._lineage))]

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
        theirs = plain_value(scratch.get(ROOT_KEY, type=Map))
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
                else key in node and canonical_json(plain_value(node[key])) == canonical_json(value)
            )
            if current:
                out.append(("del", path, key, None) if deleted else ("set", path, key, value))
            else:
                del self._latest[path, key]
        return out

    def _overlay(self, op: Op, ops: list[Op]) -> None:
        """Write an own dict write again over a merged value: a plain value
        or a deletion as it was; a dict into the dict that holds the key (our
        plain values win). A list there stays as it is: the merge added our
        values already, and adding them again would undo deletions since."""
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
                node[key] = prelim_value(value)
                ops.append(("set", path, key, value))
                continue
            ours = node[key]
            if isinstance(ours, Map) and isinstance(value, dict):
                self._merge_map(ours, (*path, key), value, ops, overwrite=overwrite)
            elif isinstance(ours, Array) and isinstance(value, list):
                if not overwrite:  # an overlay: the merge added its values already
                    self._merge_list(ours, (*path, key), value, ops)
            elif overwrite and (
                isinstance(ours, (Map, Array))
                or canonical_json(plain_value(ours)) != canonical_json(value)
            ):
                node[key] = prelim_value(value)
                ops.append(("set", path, key, value))

    @staticmethod
    def _merge_list(node: Array[Any], path: Path, theirs: list[Value], ops: list[Op]) -> None:
        ours = [canonical_json(plain_value(v)) for v in node]
        unmatched = Counter(ours)
        pos = 0  # insert after the last value of theirs found in ours
        for value in theirs:
            k = canonical_json(value)
            if unmatched[k] > 0:
                unmatched[k] -= 1
                if k in ours[pos:]:
                    pos = ours.index(k, pos) + 1
                continue
            node.insert(pos, prelim_value(value))
            ops.append(("insert", path, pos, value))
            ours.insert(pos, k)
            pos += 1

    def _anchor(
        self, path: Path, anchors: list[Any], landed: set[str] | None = None
    ) -> Path | None:
        """Where a path through list elements points now: at each list index,
        the element whose value is the anchor's, nearest to the old index
        (the index itself when none is); None when nothing is there, or when
        no element holds the last anchor's value and ``landed`` is given (the
        values the element took from this write on: one of them there means
        the write is there already; none, that the element is not)."""
        if sum(isinstance(part, int) for part in path) != len(anchors):
            return None
        out: list[str | int] = []
        node: Any = self._root
        it = iter(anchors)
        for part in path:
            if isinstance(part, int):
                if not isinstance(node, Array) or not len(node):
                    return None
                want = next(it)
                values = [canonical_json(plain_value(v)).decode() for v in node]
                found = [j for j, v in enumerate(values) if v == want]
                if not found and landed is not None and len(out) == len(path) - 1:
                    return None
                old = part
                part = min(found, key=lambda j: abs(j - old)) if found else min(old, len(node) - 1)
            elif not isinstance(node, Map) or part not in node:
                return None
            out.append(part)
            node = node[part]
        return tuple(out)

    def _replay(self, op: Op, landed: set[str] | None = None) -> Op | None:
        """Re-apply a logged write on the current document (value level);
        returns the op to log for it (None when its container no longer
        exists). ``landed``: for a replay without a frozen state, the values
        an anchored element took from this write on (see :meth:`_anchor`)."""
        kind, path, key, value = op
        if kind == "at":
            if not (isinstance(value, list) and len(value) == 3 and isinstance(value[1], list)):
                return None
            inner, anchors, inner_value = value
            where = self._anchor(path, anchors, landed)
            if where is None or not isinstance(key, (str, int)):
                return None
            logged = self._logged(str(inner), where, key, inner_value)
            return logged if self._replay((str(inner), where, key, inner_value)) else None
        try:
            node = self._resolve(path)
        except KeyError:
            return None
        if kind == "merge":
            if not isinstance(node, Map) or not isinstance(value, dict):
                return None
            self._merge_map(node, path, value, [])
            return op
        if kind in ("set", "del"):
            if not isinstance(node, Map) or not isinstance(key, str):
                return None
            if kind == "set":
                node[key] = prelim_value(value)
            elif key in node:
                del node[key]
            return op
        if not isinstance(node, Array) or not isinstance(key, int):
            return None
        n = len(node)
        if kind == "insert":
            node.insert(min(key, n), prelim_value(value))
        elif kind == "lset" and n:
            node[min(key, n - 1)] = prelim_value(value)
        elif kind == "ldel" and n:
            at = min(key, n - 1)
            if isinstance(value, list) and len(value) == 1:
                # Delete the value that was deleted: the one nearest to its
                # old index (a merge may have moved it); gone already: nothing.
                want = canonical_json(value[0])
                found = [j for j in range(n) if canonical_json(plain_value(node[j])) == want]
                if not found:
                    return op
                at = min(found, key=lambda j: abs(j - key))
            del node[at]
        return op

    # -- sync

    def apply_remote(self, update: bytes, origin: Origin) -> None:
        """Integrate an update of the current epoch from a peer; a root
        checks the compaction policy right away."""
        super().apply_remote(update, origin)
        if self._is_root() and self.policy.enabled and self._measure_due():
            # Check right away: a root integrating many peers' updates in one
            # cycle stays bounded between them too.
            self.maybe_compact()

    # -- persistence (hybridsync.store)

    def _persist_extra(self) -> tuple[Any, ...]:
        return (tuple(sorted(self._delivered.items())),)

    def _saved(self) -> dict[str, Any]:
        saved = super()._saved()
        return {
            "epoch": saved["epoch"],
            "epoch_id": saved["epoch_id"],
            "frozen": [[k, v] for k, v in self._frozen.items()],
            "pending": saved["pending"],
            "ticks": saved["ticks"],
            "latest": saved["latest"],
            "delivered": dict(self._delivered),
            "lineage": [[t, lo, hi] for t, (lo, hi) in self._lineage.items()],
            "via_merge": sorted(self._via_merge),
            "uncertain": [[t, c] for t, c in self._uncertain.items()],
        }

    def _restore(self, saved: dict[str, Any], base: bytes, updates: list[bytes]) -> None:
        super()._restore(saved, base, updates)
        # A file written before epochs had ids holds no usable frozen states.
        frozen = saved["frozen"] if "epoch_id" in saved else []
        self._frozen = {int(k): bytes(v) for k, v in frozen}
        self._delivered = {int(k): int(v) for k, v in saved.get("delivered", {}).items()}
        for tag, lo, hi in saved.get("lineage", []):
            old_lo, old_hi = self._lineage.pop(int(tag), (int(lo), int(hi)))
            self._lineage[int(tag)] = (min(old_lo, int(lo)), max(old_hi, int(hi)))
        self._via_merge = {int(e) for e in saved.get("via_merge", [])} & self._frozen.keys()
        self._uncertain = {int(t): int(c) for t, c in saved.get("uncertain", [])}
