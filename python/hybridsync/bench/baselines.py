"""The pure-CRDT baselines of ``hybridsync bench``: pycrdt (Yjs) and Loro.

Both run the same star (``replicas[0]`` is the hub) over a
:class:`~hybridsync.bench.lossy.LossyNet`, with the same data model and the
same protocol shape; only the CRDT library and its wire encoding differ.

Data model (one CRDT document per replica):

- text document ``d``: a root text type named ``"text:d"``;
- metadata: a root map ``"meta"``; a dict or list value becomes a nested
  map or list container (recursively), anything else a plain value;
- KV caches: a root map ``"kv"`` holding, for cache ``c``, ``"c/shape"``
  (``"<layers>x<kv_heads>x<head_dim>"``), ``"c/tokens"`` (the token count)
  and one entry ``"c/<layer>/K"`` / ``"c/<layer>/V"`` per layer holding the
  whole buffer bytes, rows ordered ``[head][token]``. A map entry can only be
  replaced whole, so every :class:`~hybridsync.bench.core.KVAppend` or
  :class:`~hybridsync.bench.core.KVTruncate` rewrites every (layer, K|V)
  buffer of the cache: that is what storing cache bytes in a pure CRDT
  costs.

Protocol (per tick, in this order):

1. the messages due arrive and are handled; the replies and relays they cause
   are sent at once (they arrive next tick at the earliest);
2. *updates*: each replica sends one update message per local transaction
   since the last tick, a leaf to the hub, the hub to every leaf. The hub
   also relays everything that a message from a leaf changed in its document
   (updates and anti-entropy replies alike) to every other leaf, as an
   update message, as soon as it has applied it;
3. *anti-entropy* (a network may lose messages; TCP would retransmit them):
   every leaf sends its version (``STEP1``) to the hub on every tick that is a
   multiple of ``antientropy_ticks`` (the first tick included: the handshake
   of a connection), and also when ``retry_ticks`` ticks passed since its last
   ``STEP1`` while it knows the hub lacks some of its changes (its version is
   not covered by the hub's version last heard). The hub answers with the
   changes the leaf lacks (``STEP2``) and its own ``STEP1`` (which also tells
   the leaf what the hub has); the leaf answers that ``STEP1`` with a
   ``STEP2``. The periodic rounds are aligned on the clock.

Duplicated and reordered messages are harmless: both CRDTs ignore changes
they have, and a change whose causal predecessors are missing waits until
they arrive (in Loro's pending set; for pycrdt in the engine, see
:class:`PycrdtEngine`). :attr:`Engine.wire_bytes` counts every message sent, retries
and anti-entropy included, framing included.

Text positions of :class:`~hybridsync.bench.core.TextEdit` are code points:
Loro's ``LoroText.insert``/``delete`` take code points; pycrdt's ``Text``
takes UTF-8 byte offsets (yrs' default), so the pycrdt engine converts.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import xxhash
from pycrdt import (
    Array,
    Decoder,
    Doc,
    Map,
    Text,
    TransactionEvent,
    YMessageType,
    YSyncMessageType,
    create_sync_message,
    create_update_message,
    handle_sync_message,
    read_message,
)

from hybridsync.bench.core import (
    Engine,
    KVAppend,
    KVTruncate,
    MetaAppend,
    MetaDelete,
    MetaSet,
    NetConfig,
    Op,
    TextEdit,
    kv_rows,
)
from hybridsync.bench.lossy import LossyNet

_loro_missing: ImportError | None = None
try:  # Loro is optional (the "bench" extra); PycrdtEngine works without it
    from loro import (
        ExportMode,
        LoroDoc,
        LoroList,
        LoroMap,
        ValueOrContainer,
        VersionVector,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    _loro_missing = exc

__all__ = ["LoroEngine", "PycrdtEngine"]

_KINDS = ("K", "V")


def _normalize(value: Any) -> Any:
    """Plain JSON-like Python: pycrdt reads numbers back as floats, so integral
    floats (below 2**53) read as ints; byte strings as ``bytes``."""
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalize(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, bytearray):
        return bytes(value)
    return value


class _StarEngine(Engine, ABC):
    """The protocol driver shared by both baselines (see the module docstring);
    subclasses provide the CRDT documents and message encoding.

    Args:
        replicas: replica names; ``replicas[0]`` is the hub.
        net: the network's faults and seed.
        antientropy_ticks: the period of the anti-entropy rounds, in ticks; 0
            turns anti-entropy off (the plain relay: right only on a
            network that loses nothing).
        retry_ticks: a leaf that knows the hub lacks some of its changes sends
            a ``STEP1`` every this many ticks (default ``max(2,
            antientropy_ticks // 2)``; 2 ticks is the round trip).
    """

    def __init__(
        self,
        replicas: Sequence[str],
        net: NetConfig,
        *,
        antientropy_ticks: int = 8,
        retry_ticks: int | None = None,
    ) -> None:
        super().__init__(replicas, net)
        if not self.replicas or len(set(self.replicas)) != len(self.replicas):
            raise ValueError(f"replica names must be distinct and not empty: {replicas!r}")
        if antientropy_ticks < 0 or (retry_ticks is not None and retry_ticks < 1):
            raise ValueError("antientropy_ticks must be >= 0 and retry_ticks >= 1")
        self.hub = self.replicas[0]
        self.leaves = self.replicas[1:]
        self.network = LossyNet(net)
        self.antientropy_ticks = antientropy_ticks
        self.retry_ticks = max(2, antientropy_ticks // 2) if retry_ticks is None else retry_ticks
        #: Ticks run so far.
        self.ticks = 0
        #: Operations skipped because their target did not exist on the writing
        #: replica (a container not received yet, or deleted concurrently).
        self.skipped_ops = 0
        #: ``STEP1`` messages sent by leaves (anti-entropy rounds started).
        self.antientropy_rounds = 0
        self._outbox: dict[str, list[bytes]] = {name: [] for name in self.replicas}
        self._last_step1: dict[str, float] = dict.fromkeys(self.leaves, -math.inf)
        self._text_docs: set[str] = set()
        self._caches: set[str] = set()

    # ------------------------------------------------------------------ the protocol

    def _send(self, src: str, dst: str, message: bytes) -> None:
        self.network.send(src, dst, message)
        self.wire_bytes += len(message)
        self.messages += 1

    def tick(self) -> None:
        for src, dst, payload in self.network.deliver_due():
            self._receive(dst, src, payload)
        for name in self.replicas:
            updates = self._outbox[name]
            if not updates:
                continue
            self._outbox[name] = []
            targets = self.leaves if name == self.hub else [self.hub]
            for update in updates:
                message = self._update_message(update)
                for target in targets:
                    self._send(name, target, message)
        if self.antientropy_ticks > 0:
            now = self.network.now
            for leaf in self.leaves:
                if now % self.antientropy_ticks == 0 or (
                    now - self._last_step1[leaf] >= self.retry_ticks and self._unacked(leaf)
                ):
                    self._last_step1[leaf] = now
                    self.antientropy_rounds += 1
                    self._send(leaf, self.hub, self._step1_message(leaf))
        self.network.advance()
        self.ticks += 1

    @abstractmethod
    def _receive(self, dst: str, src: str, payload: bytes) -> None:
        """Handle a message arriving at ``dst`` from ``src``."""

    @abstractmethod
    def _update_message(self, update: bytes) -> bytes:
        """The message carrying one local update."""

    @abstractmethod
    def _step1_message(self, replica: str) -> bytes:
        """``replica``'s ``STEP1`` (its version)."""

    @abstractmethod
    def _unacked(self, leaf: str) -> bool:
        """Whether ``leaf`` knows the hub lacks some of its changes."""

    # ------------------------------------------------------------------ operations

    def apply(self, replica: str, ops: Sequence[Op]) -> None:
        if replica not in self._outbox:
            raise KeyError(f"unknown replica {replica!r}")
        for op in ops:
            if isinstance(op, TextEdit):
                self._text_docs.add(op.doc)
            elif isinstance(op, (KVAppend, KVTruncate)):
                self._caches.add(op.cache)
            elif not op.path:
                raise ValueError(f"{op!r}: a metadata path names at least one key")
        self._transact(replica, lambda: self._dispatch(replica, ops))

    def _dispatch(self, replica: str, ops: Sequence[Op]) -> None:
        for op in ops:
            if isinstance(op, TextEdit):
                self._text_edit(replica, op)
            elif isinstance(op, MetaSet):
                if not self._meta_set(replica, op.path, op.value):
                    self.skipped_ops += 1
            elif isinstance(op, MetaDelete):
                if not self._meta_delete(replica, op.path):
                    self.skipped_ops += 1
            elif isinstance(op, MetaAppend):
                if not self._meta_append(replica, op.path, op.value):
                    self.skipped_ops += 1
            elif isinstance(op, KVAppend):
                self._kv_append(replica, op)
            else:
                self._kv_truncate(replica, op)

    @abstractmethod
    def _transact(self, replica: str, body: Callable[[], None]) -> None:
        """Run ``body`` as one local transaction of ``replica`` and queue its
        update for the next tick."""

    @abstractmethod
    def _text_edit(self, replica: str, op: TextEdit) -> None: ...

    @abstractmethod
    def _meta_set(self, replica: str, path: tuple[str, ...], value: Any) -> bool:
        """Set; False if the container at ``path[:-1]`` is missing."""

    @abstractmethod
    def _meta_delete(self, replica: str, path: tuple[str, ...]) -> bool:
        """Delete; False if the key is missing."""

    @abstractmethod
    def _meta_append(self, replica: str, path: tuple[str, ...], value: Any) -> bool:
        """Append; False if there is no list at ``path``."""

    @abstractmethod
    def _kv_get(self, replica: str, key: str) -> Any:
        """The value of ``key`` in ``replica``'s ``"kv"`` map (None if absent)."""

    @abstractmethod
    def _kv_put(self, replica: str, entries: dict[str, Any]) -> None:
        """Set entries of ``replica``'s ``"kv"`` map (inside a transaction)."""

    # ------------------------------------------------------------------ KV caches

    def _kv_shape(self, replica: str, cache: str) -> tuple[int, int, int, int] | None:
        """(layers, kv_heads, head_dim, tokens) of ``cache`` on ``replica``."""
        shape = self._kv_get(replica, f"{cache}/shape")
        if shape is None:
            return None
        layers, heads, dim = (int(x) for x in str(shape).split("x"))
        return layers, heads, dim, int(self._kv_get(replica, f"{cache}/tokens"))

    def _kv_buffer(self, replica: str, cache: str, layer: int, kind: str) -> bytes:
        value = self._kv_get(replica, f"{cache}/{layer}/{kind}")
        return bytes(value) if value is not None else b""

    def _kv_append(self, replica: str, op: KVAppend) -> None:
        shape = self._kv_shape(replica, op.cache)
        entries: dict[str, Any] = {}
        if shape is None:
            layers, heads, dim, old = op.layers, op.kv_heads, op.head_dim, 0
            entries[f"{op.cache}/shape"] = f"{layers}x{heads}x{dim}"
        else:
            layers, heads, dim, old = shape
        row = dim // 32 * 18
        new = np.frombuffer(
            kv_rows(op.cache, old, op.tokens, layers, heads, dim), np.uint8
        ).reshape(layers, 2, heads, op.tokens, row)
        for layer in range(layers):
            for k, kind in enumerate(_KINDS):
                fresh = new[layer, k]
                if old:
                    prior = np.frombuffer(
                        self._kv_buffer(replica, op.cache, layer, kind), np.uint8
                    ).reshape(heads, old, row)
                    fresh = np.concatenate([prior, fresh], axis=1)
                entries[f"{op.cache}/{layer}/{kind}"] = fresh.tobytes()
        entries[f"{op.cache}/tokens"] = old + op.tokens
        self._kv_put(replica, entries)

    def _kv_truncate(self, replica: str, op: KVTruncate) -> None:
        shape = self._kv_shape(replica, op.cache)
        if shape is None:
            self.skipped_ops += 1
            return
        layers, heads, dim, old = shape
        keep = max(0, op.tokens)
        if keep >= old:
            return
        row = dim // 32 * 18
        entries: dict[str, Any] = {f"{op.cache}/tokens": keep}
        for layer in range(layers):
            for kind in _KINDS:
                prior = np.frombuffer(self._kv_buffer(replica, op.cache, layer, kind), np.uint8)
                kept = prior.reshape(heads, old, row)[:, :keep]
                entries[f"{op.cache}/{layer}/{kind}"] = kept.tobytes()
        self._kv_put(replica, entries)

    def kv_digest(self, replica: str, cache: str) -> str:
        """xxh3-128 (hex) of the buffers of ``cache`` concatenated over layers,
        K then V, each in ``[head][token]`` row order ("" if absent)."""
        shape = self._kv_shape(replica, cache)
        if shape is None:
            return ""
        hasher = xxhash.xxh3_128()
        for layer in range(shape[0]):
            for kind in _KINDS:
                hasher.update(self._kv_buffer(replica, cache, layer, kind))
        return hasher.hexdigest()

    # ------------------------------------------------------------------ convergence

    def converged(self) -> bool:
        """No local update left unsent, every version (state vector) equal,
        then every text, the metadata and the KV map equal on every replica.

        Messages still in flight are not waited for: a CRDT replica's state
        only grows, and every message carries part of some replica's state, so
        once every replica holds the same state no message can change any of
        them (a replica holding changes it cannot apply yet has a smaller
        version). Waiting for an empty network would instead measure when the
        periodic anti-entropy rounds happen to leave a gap: with reordering a
        round can outlast the period, and such gaps can take hundreds of ticks.
        """
        if any(self._outbox.values()):
            return False
        if not self._versions_equal():
            return False
        first = self._content(self.hub)
        return all(self._content(name) == first for name in self.leaves)

    @abstractmethod
    def _versions_equal(self) -> bool:
        """Whether every replica has the same version (state vector)."""

    def _content(self, replica: str) -> tuple[Any, ...]:
        texts = tuple(self.text(replica, d) for d in sorted(self._text_docs))
        return texts, self.meta(replica), self._kv_value(replica)

    @abstractmethod
    def _kv_value(self, replica: str) -> Any:
        """The whole ``"kv"`` map as plain Python (for comparisons)."""


# ---------------------------------------------------------------------- pycrdt


def _prelim(value: Any) -> Any:
    """A pycrdt value: nested ``Map``/``Array`` for dicts and lists."""
    if isinstance(value, dict):
        return Map({k: _prelim(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return Array([_prelim(v) for v in value])
    return value


def _decode_state_vector(data: bytes) -> dict[int, int]:
    """A Yjs state vector (``varuint count, (client, clock)*``) as a dict."""
    decoder = Decoder(data)
    out: dict[int, int] = {}
    for _ in range(decoder.read_var_uint()):
        client = decoder.read_var_uint()
        out[client] = decoder.read_var_uint()
    return out


class _Reader:
    """lib0 decoding, just enough to walk a Yjs v1 update."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        value = self.data[self.pos]
        self.pos += 1
        return value

    def uint(self) -> int:
        value = shift = 0
        while True:
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    def skip_bytes(self) -> None:
        size = self.uint()
        self.pos += size

    def string(self) -> str:
        size = self.uint()
        self.pos += size
        return self.data[self.pos - size : self.pos].decode()

    def skip_any(self) -> None:
        tag = self.byte()
        if tag in (127, 126, 121, 120):  # undefined, null, false, true
            return
        if tag == 125:  # signed varint
            while self.byte() >= 0x80:
                pass
        elif tag == 124:
            self.pos += 4
        elif tag in (123, 122):
            self.pos += 8
        elif tag in (119, 116):  # string, bytes
            self.skip_bytes()
        elif tag == 118:  # object
            for _ in range(self.uint()):
                self.skip_bytes()
                self.skip_any()
        elif tag == 117:  # array
            for _ in range(self.uint()):
                self.skip_any()
        else:
            raise ValueError(f"unknown lib0 Any tag {tag}")


class _UpdateNeeds(NamedTuple):
    """What a Yjs v1 update needs of the document it is applied to (clocks per
    client): ``before`` -- the document must already hold every clock below
    (where the update's structs start, the holes it skips); ``after`` -- clocks
    it refers to (origins, parents, deleted ranges), which the document or the
    update itself must hold; ``ends`` -- the clocks its structs reach."""

    before: dict[int, int]
    after: dict[int, int]
    ends: dict[int, int]


def _update_needs(update: bytes) -> _UpdateNeeds:
    """Walk a Yjs v1 update (structs, then the delete set)."""
    r = _Reader(update)
    before: dict[int, int] = {}
    after: dict[int, int] = {}
    ends: dict[int, int] = {}

    def need(into: dict[int, int], client: int, clock: int) -> None:
        if clock > into.get(client, 0):
            into[client] = clock

    for _ in range(r.uint()):
        count, client, clock = r.uint(), r.uint(), r.uint()
        need(before, client, clock)
        for _ in range(count):
            info = r.byte()
            ref = info & 0x1F
            if ref in (0, 10):  # GC, Skip
                size = r.uint()
                if ref == 10:
                    need(before, client, clock + size)
                clock += size
                continue
            if info & 0x80:
                need(after, r.uint(), r.uint() + 1)
            if info & 0x40:
                need(after, r.uint(), r.uint() + 1)
            if not info & 0xC0:
                if r.uint() == 1:
                    r.skip_bytes()  # a root type's name
                else:
                    need(after, r.uint(), r.uint() + 1)
                if info & 0x20:
                    r.skip_bytes()  # the map key
            if ref == 1:  # deleted
                size = r.uint()
            elif ref == 2:  # JSON
                size = r.uint()
                for _ in range(size):
                    r.skip_bytes()
            elif ref == 4:  # string: UTF-16 code units
                size = len(r.string().encode("utf-16-le")) // 2
            elif ref == 8:  # Any
                size = r.uint()
                for _ in range(size):
                    r.skip_any()
            else:
                size = 1
                if ref in (3, 5):  # binary, embed
                    r.skip_bytes()
                elif ref == 6:  # format
                    r.skip_bytes()
                    r.skip_bytes()
                elif ref == 7:  # type
                    if r.uint() in (3, 5):  # XmlElement, XmlHook
                        r.skip_bytes()
                elif ref == 9:  # subdocument
                    r.skip_bytes()
                    r.skip_any()
                else:
                    raise ValueError(f"unknown Yjs content type {ref}")
            clock += size
        ends[client] = clock
    for _ in range(r.uint()):  # the delete set
        client = r.uint()
        for _ in range(r.uint()):
            start = r.uint()
            need(after, client, start + r.uint())
    return _UpdateNeeds(before, after, ends)


def _applicable(needs: _UpdateNeeds, state: dict[int, int]) -> bool:
    """Whether a document at ``state`` can integrate the whole update at once."""
    if any(clock > state.get(c, 0) for c, clock in needs.before.items()):
        return False
    return all(
        clock <= max(state.get(c, 0), needs.ends.get(c, 0)) for c, clock in needs.after.items()
    )


class PycrdtEngine(_StarEngine):
    """pycrdt (yrs, the Rust port of Yjs) with the y-protocol sync messages of
    y-websocket, adapted to a lossy network (see the module docstring).

    Each replica is a ``pycrdt.Doc`` (client id: xxh32 of the replica name).
    Messages are y-protocol ``SYNC`` messages, counted byte for byte with
    their framing (``[0, subtype, varuint length, payload]``):

    - ``SYNC_UPDATE``: the update of one transaction (``TransactionEvent.update``,
      ``create_update_message``), leaf to hub; the hub sends its own
      transactions' updates, and the update of every transaction that a message
      from a leaf caused on its document, to every other leaf;
    - ``SYNC_STEP1``: the sender's state vector (``create_sync_message``);
    - ``SYNC_STEP2``: ``doc.get_update(their_state_vector)``, the reply to a
      ``STEP1`` (``handle_sync_message``) -- always sent, as y-protocol does:
      a Yjs state vector does not cover deletions, and every ``STEP2``
      carries the sender's whole delete set.

    A leaf knows the hub lacks some of its changes when its own clock in its
    state vector is ahead of the hub's last ``STEP1``; deletion-only
    transactions do not move the clock, so a lost one is healed by the periodic
    exchange. Duplicated updates are ignored by yrs.

    Out-of-order updates: yrs 0.28 (pycrdt 0.14.13) mishandles its own pending
    set -- an update integrated once its missing predecessor arrives can be
    dropped (the state vector then shows the gap), and encoding such a document
    can panic ("Could not get parent branch info for item") or crash the
    process. So the engine holds back a ``SYNC_UPDATE`` until the document has
    everything it builds on (read from the update's struct headers, origins,
    parents and delete set), and applies it then, so that yrs never sees a
    gap. A ``STEP2`` (the diff from the receiver's own state vector) always
    applies whole. Nothing is ever sent because of this hold-back.
    """

    name = "pycrdt"

    def __init__(
        self,
        replicas: Sequence[str],
        net: NetConfig,
        *,
        antientropy_ticks: int = 8,
        retry_ticks: int | None = None,
    ) -> None:
        super().__init__(
            replicas, net, antientropy_ticks=antientropy_ticks, retry_ticks=retry_ticks
        )
        self.docs: dict[str, Doc[Any]] = {}
        #: The replica a message being applied came from (None: a local transaction).
        self._origin: str | None = None
        self._hub_state: dict[str, dict[int, int]] = {leaf: {} for leaf in self.leaves}
        #: Per replica, updates received before what they build on: (from, update, needs).
        self._held: dict[str, list[tuple[str, bytes, _UpdateNeeds]]] = {
            name: [] for name in self.replicas
        }
        for name in self.replicas:
            doc: Doc[Any] = Doc(client_id=xxhash.xxh32_intdigest(name.encode()))
            doc.observe(self._observer(name))
            self.docs[name] = doc

    def _observer(self, name: str) -> Callable[[TransactionEvent], None]:
        def on_transaction(event: TransactionEvent) -> None:
            update = bytes(event.update)
            if update == b"\x00\x00":
                return
            origin = self._origin
            if origin is None:
                self._outbox[name].append(update)
            elif name == self.hub:
                message = create_update_message(update)
                for leaf in self.leaves:
                    if leaf != origin:
                        self._send(self.hub, leaf, message)

        return on_transaction

    # protocol

    def _update_message(self, update: bytes) -> bytes:
        return create_update_message(update)

    def _step1_message(self, replica: str) -> bytes:
        return create_sync_message(self.docs[replica])

    def _unacked(self, leaf: str) -> bool:
        doc = self.docs[leaf]
        own = _decode_state_vector(doc.get_state()).get(doc.client_id, 0)
        return own > self._hub_state[leaf].get(doc.client_id, 0)

    def _receive(self, dst: str, src: str, payload: bytes) -> None:
        if len(payload) < 2 or payload[0] != YMessageType.SYNC:
            raise ValueError(f"not a y-protocol sync message: {payload[:8]!r}")
        doc = self.docs[dst]
        if payload[1] == YSyncMessageType.SYNC_STEP1:
            if dst != self.hub:
                self._hub_state[dst] = _decode_state_vector(read_message(payload[2:]))
            reply = handle_sync_message(payload[1:], doc)
            assert reply is not None
            self._send(dst, src, reply)
            if dst == self.hub:
                self._send(dst, src, create_sync_message(doc))
            return
        if payload[1] not in (YSyncMessageType.SYNC_STEP2, YSyncMessageType.SYNC_UPDATE):
            raise ValueError(f"unknown y-protocol sync message type {payload[1]}")
        update = read_message(payload[2:])
        if update == b"\x00\x00":
            return
        held = self._held[dst]
        if payload[1] == YSyncMessageType.SYNC_STEP2:
            # The diff from our own state vector: it always applies whole.
            self._apply_remote(dst, src, update)
            if not held:
                return
        else:
            held.append((src, update, _update_needs(update)))
        progress = True
        while progress:
            progress = False
            state = _decode_state_vector(doc.get_state())
            for i, (origin, waiting, needs) in enumerate(held):
                if _applicable(needs, state):
                    del held[i]
                    self._apply_remote(dst, origin, waiting)
                    progress = True
                    break

    def _apply_remote(self, dst: str, src: str, update: bytes) -> None:
        self._origin = src
        try:
            self.docs[dst].apply_update(update)
        finally:
            self._origin = None

    def _versions_equal(self) -> bool:
        first = _decode_state_vector(self.docs[self.hub].get_state())
        return all(_decode_state_vector(self.docs[n].get_state()) == first for n in self.leaves)

    # operations

    def _transact(self, replica: str, body: Callable[[], None]) -> None:
        with self.docs[replica].transaction():
            body()

    def _text_edit(self, replica: str, op: TextEdit) -> None:
        text = self.docs[replica].get(f"text:{op.doc}", type=Text)
        current = str(text)
        if op.pos < 0 or op.delete < 0 or op.pos + op.delete > len(current):
            raise ValueError(f"{op!r} is out of range for a text of {len(current)} code points")
        if current.isascii():
            start, length = op.pos, op.delete
        else:  # yrs counts UTF-8 bytes
            start = len(current[: op.pos].encode())
            length = len(current[op.pos : op.pos + op.delete].encode())
        if length:
            del text[start : start + length]
        if op.insert:
            text.insert(start, op.insert)

    def _container(self, replica: str, path: Sequence[str]) -> Map[Any] | None:
        node: Map[Any] = self.docs[replica].get("meta", type=Map)
        for key in path:
            child = node.get(key)
            if not isinstance(child, Map):
                return None
            node = child
        return node

    def _meta_set(self, replica: str, path: tuple[str, ...], value: Any) -> bool:
        node = self._container(replica, path[:-1])
        if node is None:
            return False
        node[path[-1]] = _prelim(value)
        return True

    def _meta_delete(self, replica: str, path: tuple[str, ...]) -> bool:
        node = self._container(replica, path[:-1])
        if node is None or path[-1] not in node:
            return False
        del node[path[-1]]
        return True

    def _meta_append(self, replica: str, path: tuple[str, ...], value: Any) -> bool:
        node = self._container(replica, path[:-1])
        target = None if node is None else node.get(path[-1])
        if not isinstance(target, Array):
            return False
        target.append(_prelim(value))
        return True

    def _kv_map(self, replica: str) -> Map[Any]:
        kv: Map[Any] = self.docs[replica].get("kv", type=Map)
        return kv

    def _kv_get(self, replica: str, key: str) -> Any:
        return self._kv_map(replica).get(key)

    def _kv_put(self, replica: str, entries: dict[str, Any]) -> None:
        kv = self._kv_map(replica)
        for key, value in entries.items():
            kv[key] = value

    def _kv_value(self, replica: str) -> Any:
        return self._kv_map(replica).to_py()

    # reading

    def text(self, replica: str, doc: str) -> str:
        return str(self.docs[replica].get(f"text:{doc}", type=Text))

    def meta(self, replica: str) -> Any:
        meta: Map[Any] = self.docs[replica].get("meta", type=Map)
        return _normalize(meta.to_py() or {})

    def state_bytes(self) -> int:
        """The largest ``len(doc.get_update())`` (the whole document, GC'd
        history included) over the replicas."""
        return max(len(doc.get_update()) for doc in self.docs.values())


# ---------------------------------------------------------------------- Loro

_STEP1, _STEP2, _UPDATE = 0, 1, 2


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.append(n)
    return bytes(out)


def _frame(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _varint(len(body)) + body


def _unframe(message: bytes) -> tuple[int, bytes]:
    length = shift = 0
    i = 1
    while True:
        byte = message[i]
        i += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            break
    body = message[i : i + length]
    if len(body) != length:
        raise ValueError("truncated message")
    return message[0], body


def _new_map() -> LoroMap:
    return LoroMap()  # type: ignore[no-untyped-call]  # loro's stub lacks a return type


def _new_list() -> LoroList:
    return LoroList()  # type: ignore[no-untyped-call]


def _new_vv() -> VersionVector:
    return VersionVector()  # type: ignore[no-untyped-call]


def _loro_child(node: LoroMap, key: str) -> Any:
    got = node.get(key)
    if ValueOrContainer.is_container(got):
        return got.container
    return None


def _loro_set(node: LoroMap, key: str, value: Any) -> None:
    if isinstance(value, dict):
        child = node.insert_container(key, _new_map())
        assert isinstance(child, LoroMap)
        for k, v in value.items():
            _loro_set(child, k, v)
    elif isinstance(value, (list, tuple)):
        seq = node.insert_container(key, _new_list())
        assert isinstance(seq, LoroList)
        for v in value:
            _loro_push(seq, v)
    else:
        node.insert(key, value)


def _loro_push(node: LoroList, value: Any) -> None:
    if isinstance(value, dict):
        child = node.push_container(_new_map())
        assert isinstance(child, LoroMap)
        for k, v in value.items():
            _loro_set(child, k, v)
    elif isinstance(value, (list, tuple)):
        seq = node.push_container(_new_list())
        assert isinstance(seq, LoroList)
        for v in value:
            _loro_push(seq, v)
    else:
        node.push(value)


class LoroEngine(_StarEngine):
    """Loro with the same protocol as :class:`PycrdtEngine`, on version
    vectors (see the module docstring).

    Each replica is a ``loro.LoroDoc`` (peer id: xxh64 of the replica name).
    Loro has no wire protocol of its own, so messages are framed as one type
    byte and a varint body length (a small framing estimate, counted in
    :attr:`wire_bytes`), and the bodies are Loro's own encodings:

    - update: ``doc.export(ExportMode.Updates(from_=vv_before))`` after each
      local transaction (``commit``), leaf to hub; the hub sends its own, and
      ``export(Updates(from_=vv_before_import))`` of everything a message from a
      leaf added to its document, to every other leaf;
    - ``STEP1``: ``doc.oplog_vv.encode()``;
    - ``STEP2``: ``doc.export(ExportMode.Updates(from_=their_vv))``, only when
      the receiver's version does not cover the sender's (a Loro version
      vector covers every operation, deletions included, so nothing is
      missed).

    A leaf knows the hub lacks some of its changes while its own counter in its
    version vector is ahead of the hub's last ``STEP1``. Loro keeps its whole history
    (that is its design): :meth:`state_bytes` is the full snapshot, and
    :meth:`state_bytes_shallow` the history-free snapshot a joiner could fetch.
    """

    name = "loro"

    def __init__(
        self,
        replicas: Sequence[str],
        net: NetConfig,
        *,
        antientropy_ticks: int = 8,
        retry_ticks: int | None = None,
    ) -> None:
        if _loro_missing is not None:
            raise ImportError(f"LoroEngine needs the loro package: {_loro_missing}")
        super().__init__(
            replicas, net, antientropy_ticks=antientropy_ticks, retry_ticks=retry_ticks
        )
        self.docs: dict[str, LoroDoc] = {}
        self._hub_vv: dict[str, VersionVector] = {leaf: _new_vv() for leaf in self.leaves}
        for name in self.replicas:
            doc = LoroDoc()  # type: ignore[no-untyped-call]
            doc.peer_id = xxhash.xxh64_intdigest(name.encode())
            self.docs[name] = doc

    # protocol

    def _update_message(self, update: bytes) -> bytes:
        return _frame(_UPDATE, update)

    def _step1_message(self, replica: str) -> bytes:
        return _frame(_STEP1, self.docs[replica].oplog_vv.encode())

    def _unacked(self, leaf: str) -> bool:
        doc = self.docs[leaf]
        own = doc.oplog_vv.get_last(doc.peer_id)
        if own is None:
            return False
        known = self._hub_vv[leaf].get_last(doc.peer_id)
        return known is None or own > known

    def _receive(self, dst: str, src: str, payload: bytes) -> None:
        kind, body = _unframe(payload)
        doc = self.docs[dst]
        if kind == _STEP1:
            theirs = VersionVector.decode(body)
            if dst != self.hub:
                self._hub_vv[dst] = theirs
            ours = doc.oplog_vv
            if not theirs.includes_vv(ours):
                self._send(dst, src, _frame(_STEP2, doc.export(ExportMode.Updates(theirs))))
            if dst == self.hub:
                self._send(dst, src, _frame(_STEP1, ours.encode()))
            return
        if kind not in (_STEP2, _UPDATE):
            raise ValueError(f"unknown message type {kind}")
        before = doc.oplog_vv
        doc.import_(body)
        if dst == self.hub:
            after = doc.oplog_vv
            if after != before:
                message = _frame(_UPDATE, doc.export(ExportMode.Updates(before)))
                for leaf in self.leaves:
                    if leaf != src:
                        self._send(self.hub, leaf, message)

    def _versions_equal(self) -> bool:
        first = self.docs[self.hub].oplog_vv
        return all(self.docs[n].oplog_vv == first for n in self.leaves)

    # operations

    def _transact(self, replica: str, body: Callable[[], None]) -> None:
        doc = self.docs[replica]
        before = doc.oplog_vv
        try:
            body()
        finally:
            doc.commit()
        if doc.oplog_vv != before:
            self._outbox[replica].append(doc.export(ExportMode.Updates(before)))

    def _text_edit(self, replica: str, op: TextEdit) -> None:
        text = self.docs[replica].get_text(f"text:{op.doc}")
        size = text.len_unicode
        if op.pos < 0 or op.delete < 0 or op.pos + op.delete > size:
            raise ValueError(f"{op!r} is out of range for a text of {size} code points")
        if op.delete:
            text.delete(op.pos, op.delete)
        if op.insert:
            text.insert(op.pos, op.insert)

    def _container(self, replica: str, path: Sequence[str]) -> LoroMap | None:
        node = self.docs[replica].get_map("meta")
        for key in path:
            child = _loro_child(node, key)
            if not isinstance(child, LoroMap):
                return None
            node = child
        return node

    def _meta_set(self, replica: str, path: tuple[str, ...], value: Any) -> bool:
        node = self._container(replica, path[:-1])
        if node is None:
            return False
        _loro_set(node, path[-1], value)
        return True

    def _meta_delete(self, replica: str, path: tuple[str, ...]) -> bool:
        node = self._container(replica, path[:-1])
        if node is None or node.get(path[-1]) is None:
            return False
        node.delete(path[-1])
        return True

    def _meta_append(self, replica: str, path: tuple[str, ...], value: Any) -> bool:
        node = self._container(replica, path[:-1])
        target = None if node is None else _loro_child(node, path[-1])
        if not isinstance(target, LoroList):
            return False
        _loro_push(target, value)
        return True

    def _kv_get(self, replica: str, key: str) -> Any:
        got = self.docs[replica].get_map("kv").get(key)
        return got.value if ValueOrContainer.is_value(got) else None

    def _kv_put(self, replica: str, entries: dict[str, Any]) -> None:
        kv = self.docs[replica].get_map("kv")
        for key, value in entries.items():
            kv.insert(key, value)

    def _kv_value(self, replica: str) -> Any:
        return self.docs[replica].get_map("kv").get_value()

    # reading

    def text(self, replica: str, doc: str) -> str:
        return self.docs[replica].get_text(f"text:{doc}").to_string()

    def meta(self, replica: str) -> Any:
        return _normalize(self.docs[replica].get_map("meta").get_deep_value())

    def state_bytes(self) -> int:
        """The largest ``len(doc.export(ExportMode.Snapshot()))`` (state and
        whole history) over the replicas."""
        return max(len(doc.export(ExportMode.Snapshot())) for doc in self.docs.values())

    def state_bytes_shallow(self) -> int:
        """The largest ``len(doc.export(ExportMode.ShallowSnapshot(frontiers)))``
        at the replica's current frontiers (history dropped) over the replicas."""
        return max(
            len(doc.export(ExportMode.ShallowSnapshot(doc.oplog_frontiers)))
            for doc in self.docs.values()
        )
