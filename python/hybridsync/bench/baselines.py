"""The pure-CRDT baselines of ``hybridsync bench``: pycrdt (Yjs) and Loro,
driven as their best users drive them (``benches/BASELINES.md`` says where
each choice comes from).

Both run the same star (``replicas[0]`` is the hub) over the same
:class:`~hybridsync.bench.lossy.LossyNet` as hybridsync, each link wrapped in
an acknowledged, ordered :class:`~hybridsync.bench.delivery.Channel` (what a
WebSocket over TCP gives a y-websocket user), with hybridsync's own
retransmission timer. Only the CRDT library and its encoding differ.

Data model (one CRDT document per replica):

- text document ``d``: a root text type named ``"text:d"``;
- metadata: a root map ``"meta"``; a dict or list value becomes a nested
  map or list container (recursively), anything else a plain value;
- KV caches: a root map ``"kv"`` holding, for cache ``c``, ``"c/shape"``
  (``"<layers>x<kv_heads>x<head_dim>"``), ``"c/tokens"`` and one entry per
  256-token page, ``"c/<layer>/<K|V>/<page>"``, holding that page's rows of
  every head (``[head][token]``), the page size hybridsync uses. An append
  rewrites the last, partial page and adds new ones; a truncation rewrites
  the page it cuts and deletes the pages after it.

Protocol, per link (y-protocols as y-websocket runs it; the same shape on
version vectors for Loro):

1. On connect (tick 0) the leaf sends ``STEP1`` (its version); the hub
   answers ``STEP2`` (what the leaf lacks) and its own ``STEP1``; the leaf
   answers with its ``STEP2``. The transport is reliable and ordered, so no
   gap ever needs another handshake and there is no periodic anti-entropy.
2. Each tick, every replica integrates what arrived (pycrdt: the updates
   from one peer merged into one ``apply_update``; Loro: ``import_batch``),
   then flushes **one message per link**: a leaf sends its local
   transactions since the last flush, the hub sends each leaf its own
   transactions and everything it integrated from the other leaves since
   the last flush (pycrdt: ``merge_updates`` of the transactions' updates;
   Loro: ``export(ExportMode.Updates(peer_version))`` with the version
   vector last sent to / heard from that peer).

:attr:`Engine.wire_bytes` counts every message put on the network:
retransmissions, bare acknowledgements, the delivery header and the
protocol framing included.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

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
    merge_updates,
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
    TextReplace,
    kv_rows,
)
from hybridsync.bench.delivery import Channel
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

_fdmp_missing: ImportError | None = None
try:  # the C++ diff-match-patch that the pycrdt engine diffs revisions with
    import fast_diff_match_patch
except ImportError as exc:  # pragma: no cover - depends on the environment
    _fdmp_missing = exc

__all__ = ["PAGE_TOKENS", "LoroEngine", "PycrdtEngine"]

_KINDS = ("K", "V")
#: Tokens per KV page entry (hybridsync's page size in the bench).
PAGE_TOKENS = 256


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
    """The star, the delivery channels and the tick loop shared by both
    baselines (see the module docstring); subclasses provide the CRDT side.

    Args:
        replicas: replica names; ``replicas[0]`` is the hub.
        net: the network's faults and seed.
        retransmit_after: ticks before an unacknowledged message is sent
            again (hybridsync's links use 2 in the bench: one round trip).
    """

    def __init__(
        self, replicas: Sequence[str], net: NetConfig, *, retransmit_after: int = 2
    ) -> None:
        super().__init__(replicas, net)
        if not self.replicas or len(set(self.replicas)) != len(self.replicas):
            raise ValueError(f"replica names must be distinct and not empty: {replicas!r}")
        self.hub = self.replicas[0]
        self.leaves = self.replicas[1:]
        self.network = LossyNet(net)
        #: Ticks run so far.
        self.ticks = 0
        #: Operations skipped because their target did not exist on the writing
        #: replica (a container not received yet, or deleted concurrently).
        self.skipped_ops = 0
        self.channels: dict[tuple[str, str], Channel] = {}
        for leaf in self.leaves:
            self.channels[(leaf, self.hub)] = Channel(retransmit_after)
            self.channels[(self.hub, leaf)] = Channel(retransmit_after)
        self._text_docs: set[str] = set()
        self._caches: set[str] = set()

    def peers(self, name: str) -> list[str]:
        return self.leaves if name == self.hub else [self.hub]

    def _connect(self) -> None:
        """The handshake's first message: every leaf's ``STEP1``."""
        for leaf in self.leaves:
            self.channels[(leaf, self.hub)].queue(self._step1(leaf))

    # ------------------------------------------------------------------ the tick

    def tick(self) -> None:
        arrived: dict[str, list[tuple[str, bytes]]] = {}
        for src, dst, message in self.network.deliver_due():
            for payload in self.channels[(dst, src)].receive(message):
                arrived.setdefault(dst, []).append((src, payload))
        for name in self.replicas:
            if name in arrived:
                self._integrate(name, arrived[name])
        now = self.network.now
        for name in self.replicas:
            for peer in self.peers(name):
                outgoing = self._outgoing(name, peer)
                channel = self.channels[(name, peer)]
                if outgoing is not None:
                    channel.queue(outgoing)
                for message in channel.flush(now):
                    self.network.send(name, peer, message)
                    self.wire_bytes += len(message)
                    self.messages += 1
            self._flushed(name)
        self.network.advance()
        self.ticks += 1

    @abstractmethod
    def _step1(self, replica: str) -> bytes:
        """``replica``'s ``STEP1`` message (its version)."""

    @abstractmethod
    def _integrate(self, dst: str, messages: list[tuple[str, bytes]]) -> None:
        """Handle the messages that arrived at ``dst`` this tick, in order;
        replies to handshake messages go out with this tick's flush."""

    @abstractmethod
    def _outgoing(self, name: str, peer: str) -> bytes | None:
        """The one message ``name`` sends ``peer`` this tick (None: nothing)."""

    def _flushed(self, name: str) -> None:
        """Called once ``name`` flushed every link this tick."""

    # ------------------------------------------------------------------ operations

    def apply(self, replica: str, ops: Sequence[Any]) -> None:
        if replica not in self.replicas:
            raise KeyError(f"unknown replica {replica!r}")
        for op in ops:
            if isinstance(op, (TextEdit, TextReplace, _Utf8Edit)):
                self._text_docs.add(op.doc)
            elif isinstance(op, (KVAppend, KVTruncate)):
                self._caches.add(op.cache)
            elif not op.path:
                raise ValueError(f"{op!r}: a metadata path names at least one key")
        self._transact(replica, lambda: self._dispatch(replica, ops))

    def _dispatch(self, replica: str, ops: Sequence[Any]) -> None:
        for op in ops:
            if isinstance(op, (TextEdit, _Utf8Edit)):
                self._text_edit(replica, op)
            elif isinstance(op, TextReplace):
                self._text_replace(replica, op)
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
        """Run ``body`` as one local transaction of ``replica``."""

    @abstractmethod
    def _text_edit(self, replica: str, op: Any) -> None: ...

    @abstractmethod
    def _text_replace(self, replica: str, op: TextReplace) -> None: ...

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
    def _kv_put(self, replica: str, entries: dict[str, Any], deleted: Sequence[str]) -> None:
        """Set ``entries`` and delete the keys ``deleted`` of ``replica``'s
        ``"kv"`` map (inside a transaction)."""

    # ------------------------------------------------------------------ KV caches

    def _kv_shape(self, replica: str, cache: str) -> tuple[int, int, int, int] | None:
        """(layers, kv_heads, head_dim, tokens) of ``cache`` on ``replica``."""
        shape = self._kv_get(replica, f"{cache}/shape")
        if shape is None:
            return None
        layers, heads, dim = (int(x) for x in str(shape).split("x"))
        return layers, heads, dim, int(self._kv_get(replica, f"{cache}/tokens"))

    def _kv_page(
        self, replica: str, cache: str, layer: int, kind: str, page: int, heads: int, row: int
    ) -> np.ndarray:
        value = self._kv_get(replica, f"{cache}/{layer}/{kind}/{page}")
        data = bytes(value) if value is not None else b""
        return np.frombuffer(data, np.uint8).reshape(heads, -1, row)

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
        total = old + op.tokens
        first_page = old // PAGE_TOKENS
        for layer in range(layers):
            for k, kind in enumerate(_KINDS):
                fresh = new[layer, k]
                if old % PAGE_TOKENS:
                    prior = self._kv_page(replica, op.cache, layer, kind, first_page, heads, row)
                    fresh = np.concatenate([prior, fresh], axis=1)
                for page in range(first_page, -(-total // PAGE_TOKENS)):
                    lo = page * PAGE_TOKENS - first_page * PAGE_TOKENS
                    chunk = fresh[:, lo : lo + PAGE_TOKENS]
                    entries[f"{op.cache}/{layer}/{kind}/{page}"] = chunk.tobytes()
        entries[f"{op.cache}/tokens"] = total
        self._kv_put(replica, entries, ())

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
        deleted: list[str] = []
        cut = keep // PAGE_TOKENS
        for layer in range(layers):
            for kind in _KINDS:
                if keep % PAGE_TOKENS:
                    page = self._kv_page(replica, op.cache, layer, kind, cut, heads, row)
                    key = f"{op.cache}/{layer}/{kind}/{cut}"
                    entries[key] = np.ascontiguousarray(page[:, : keep % PAGE_TOKENS]).tobytes()
                    first_gone = cut + 1
                else:
                    first_gone = cut
                for page_no in range(first_gone, -(-old // PAGE_TOKENS)):
                    deleted.append(f"{op.cache}/{layer}/{kind}/{page_no}")
        self._kv_put(replica, entries, deleted)

    def kv_digest(self, replica: str, cache: str) -> str:
        """xxh3-128 (hex) of the rows of ``cache`` over layers, K then V, each
        in ``[head][token]`` order ("" if absent)."""
        shape = self._kv_shape(replica, cache)
        if shape is None:
            return ""
        layers, heads, dim, tokens = shape
        row = dim // 32 * 18
        hasher = xxhash.xxh3_128()
        pages = -(-tokens // PAGE_TOKENS)
        for layer in range(layers):
            for kind in _KINDS:
                parts = [
                    self._kv_page(replica, cache, layer, kind, p, heads, row) for p in range(pages)
                ]
                if parts:
                    hasher.update(np.ascontiguousarray(np.concatenate(parts, axis=1)).tobytes())
        return hasher.hexdigest()

    # ------------------------------------------------------------------ convergence

    def converged(self) -> bool:
        """Every channel idle (nothing queued or unacknowledged), every
        version equal, then every text, the metadata and the KV map equal."""
        if not all(ch.idle for ch in self.channels.values()):
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

    @property
    def retransmissions(self) -> int:
        return sum(ch.retransmissions for ch in self.channels.values())


class _Utf8Edit:
    """A text edit in UTF-8 byte offsets (what yrs' ``Text`` indexes by)."""

    __slots__ = ("delete", "doc", "insert", "start")

    def __init__(self, doc: str, start: int, delete: int, insert: str) -> None:
        self.doc, self.start, self.delete, self.insert = doc, start, delete, insert


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


class PycrdtEngine(_StarEngine):
    """pycrdt (yrs, the Rust port of Yjs) with the y-protocol sync messages
    of y-websocket (see the module docstring).

    Each replica is a ``pycrdt.Doc`` (client id: xxh32 of the replica name,
    GC on: pycrdt's default). Messages are y-protocol ``SYNC`` messages,
    counted byte for byte with their framing (``[0, subtype, varuint length,
    payload]``). Every transaction's update comes from ``Doc.observe``
    (``TransactionEvent.update``), tagged with where it came from (local, or
    the peer whose message was applied); a flush merges a link's updates with
    ``merge_updates`` into one ``SYNC_UPDATE``.

    Text positions: yrs' ``Text`` counts UTF-8 bytes. :meth:`prepare`
    converts the trace's code-point positions outside the timed region; a
    :class:`~hybridsync.bench.core.TextReplace` is diffed inside it (the C++
    diff-match-patch, efficiency cleanup), positions converted while the ops
    are applied, as a pycrdt user must.
    """

    name = "pycrdt"

    def __init__(
        self, replicas: Sequence[str], net: NetConfig, *, retransmit_after: int = 2
    ) -> None:
        super().__init__(replicas, net, retransmit_after=retransmit_after)
        self.docs: dict[str, Doc[Any]] = {}
        #: The peer whose message is being applied (None: a local transaction).
        self._origin: str | None = None
        #: Per replica, the updates since its last flush: (origin, update).
        self._fresh: dict[str, list[tuple[str | None, bytes]]] = {n: [] for n in self.replicas}
        #: Handshake replies to send with the next flush, per (replica, peer).
        self._replies: dict[tuple[str, str], list[bytes]] = {}
        #: Texts as :meth:`prepare` last saw them, until the next tick (harness
        #: work: it saves reading the whole Y.Text for every keystroke).
        self._known_texts: dict[tuple[str, str], str] = {}
        for name in self.replicas:
            doc: Doc[Any] = Doc(client_id=xxhash.xxh32_intdigest(name.encode()))
            doc.observe(self._observer(name))
            self.docs[name] = doc
        self._connect()

    def _observer(self, name: str) -> Callable[[TransactionEvent], None]:
        fresh = self._fresh[name]

        def on_transaction(event: TransactionEvent) -> None:
            update = event.update
            if update != b"\x00\x00":
                fresh.append((self._origin, update))

        return on_transaction

    # protocol

    def _step1(self, replica: str) -> bytes:
        return create_sync_message(self.docs[replica])

    def _integrate(self, dst: str, messages: list[tuple[str, bytes]]) -> None:
        by_peer: dict[str, list[bytes]] = {}
        for src, bundle in messages:
            for payload in _unbundle(bundle):
                self._integrate_one(dst, src, payload, by_peer)
        self._apply_from(dst, by_peer)

    def _integrate_one(
        self, dst: str, src: str, payload: bytes, by_peer: dict[str, list[bytes]]
    ) -> None:
        doc = self.docs[dst]
        if len(payload) < 2 or payload[0] != YMessageType.SYNC:
            raise ValueError(f"not a y-protocol sync message: {payload[:8]!r}")
        if payload[1] == YSyncMessageType.SYNC_STEP1:
            self._apply_from(dst, by_peer)
            reply = handle_sync_message(payload[1:], doc)
            assert reply is not None
            out = self._replies.setdefault((dst, src), [])
            out.append(reply)
            if dst == self.hub:
                out.append(create_sync_message(doc))
            return
        if payload[1] not in (YSyncMessageType.SYNC_STEP2, YSyncMessageType.SYNC_UPDATE):
            raise ValueError(f"unknown y-protocol sync message type {payload[1]}")
        update = read_message(payload[2:])
        if update != b"\x00\x00":
            by_peer.setdefault(src, []).append(update)

    def _apply_from(self, dst: str, by_peer: dict[str, list[bytes]]) -> None:
        doc = self.docs[dst]
        for src, updates in by_peer.items():
            self._origin = src
            try:
                doc.apply_update(updates[0] if len(updates) == 1 else merge_updates(*updates))
            finally:
                self._origin = None
        by_peer.clear()

    def _outgoing(self, name: str, peer: str) -> bytes | None:
        replies = self._replies.pop((name, peer), None)
        if name == self.hub:  # its own transactions and the other leaves'
            updates = [u for origin, u in self._fresh[name] if origin != peer]
        else:  # its own transactions only
            updates = [u for origin, u in self._fresh[name] if origin is None]
        if not updates and not replies:
            return None
        parts = list(replies or ())
        if updates:
            merged = updates[0] if len(updates) == 1 else merge_updates(*updates)
            parts.append(create_update_message(merged))
        return b"".join(parts) if len(parts) == 1 else _bundle(parts)

    def _flushed(self, name: str) -> None:
        self._fresh[name].clear()

    def _versions_equal(self) -> bool:
        first = _decode_state_vector(self.docs[self.hub].get_state())
        return all(_decode_state_vector(self.docs[n].get_state()) == first for n in self.leaves)

    # operations

    def prepare(self, replica: str, ops: Sequence[Op]) -> Sequence[Any]:
        if not any(isinstance(op, TextEdit) for op in ops):
            return ops
        texts = self._known_texts
        out: list[Any] = []
        for op in ops:
            if not isinstance(op, TextEdit):
                out.append(op)
                continue
            key = (replica, op.doc)
            if key not in texts:
                texts[key] = self.text(replica, op.doc)
            current = texts[key]
            if op.pos < 0 or op.delete < 0 or op.pos + op.delete > len(current):
                raise ValueError(f"{op!r} is out of range for a text of {len(current)} code points")
            if current.isascii():
                start, length = op.pos, op.delete
            else:
                start = len(current[: op.pos].encode())
                length = len(current[op.pos : op.pos + op.delete].encode())
            out.append(_Utf8Edit(op.doc, start, length, op.insert))
            texts[key] = current[: op.pos] + op.insert + current[op.pos + op.delete :]
        return out

    def tick(self) -> None:
        self._known_texts.clear()  # a tick may change any replica's texts
        super().tick()

    def _transact(self, replica: str, body: Callable[[], None]) -> None:
        with self.docs[replica].transaction():
            body()

    def _text_edit(self, replica: str, op: Any) -> None:
        if not isinstance(op, _Utf8Edit):
            raise TypeError("pycrdt text edits go through PycrdtEngine.prepare")
        text = self.docs[replica].get(f"text:{op.doc}", type=Text)
        if op.delete:
            del text[op.start : op.start + op.delete]
        if op.insert:
            text.insert(op.start, op.insert)

    def _text_replace(self, replica: str, op: TextReplace) -> None:
        if _fdmp_missing is not None:
            raise ImportError(f"pycrdt revisions need fast-diff-match-patch: {_fdmp_missing}")
        text = self.docs[replica].get(f"text:{op.doc}", type=Text)
        old = str(text)
        ops = fast_diff_match_patch.diff(
            old, op.text, timelimit=0, checklines=True, cleanup="Efficiency", counts_only=True
        )
        ascii_only = old.isascii() and op.text.isascii()
        at = 0  # UTF-8 offset in the Y.Text
        i_old = i_new = 0  # code-point offsets in old and new
        for kind, n in ops:
            if kind == "=":
                at += n if ascii_only else len(old[i_old : i_old + n].encode())
                i_old += n
                i_new += n
            elif kind == "-":
                size = n if ascii_only else len(old[i_old : i_old + n].encode())
                del text[at : at + size]
                i_old += n
            else:
                piece = op.text[i_new : i_new + n]
                text.insert(at, piece)
                at += n if ascii_only else len(piece.encode())
                i_new += n

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

    def _kv_put(self, replica: str, entries: dict[str, Any], deleted: Sequence[str]) -> None:
        kv = self._kv_map(replica)
        for key, value in entries.items():
            kv[key] = value
        for key in deleted:
            if key in kv:
                del kv[key]

    def _kv_value(self, replica: str) -> Any:
        return self._kv_map(replica).to_py()

    # reading

    def text(self, replica: str, doc: str) -> str:
        return str(self.docs[replica].get(f"text:{doc}", type=Text))

    def meta(self, replica: str) -> Any:
        meta: Map[Any] = self.docs[replica].get("meta", type=Map)
        return _normalize(meta.to_py() or {})

    def state_bytes(self) -> int:
        """The largest ``len(doc.get_update())`` (the whole document, history
        garbage-collected as pycrdt does by default) over the replicas."""
        return max(len(doc.get_update()) for doc in self.docs.values())


def _bundle(parts: list[bytes]) -> bytes:
    """Several y-protocol messages in one delivery payload: a varint count,
    then each message with a varint length (y-websocket sends them as
    separate WebSocket messages; the count and lengths stand in for that
    framing)."""
    out = bytearray(_varint(len(parts)))
    for part in parts:
        out += _varint(len(part))
        out += part
    return bytes([0xFF]) + bytes(out)


def _unbundle(payload: bytes) -> list[bytes]:
    if not payload or payload[0] != 0xFF:
        return [payload]
    pos = 1
    count, pos = _read_varint(payload, pos)
    parts = []
    for _ in range(count):
        size, pos = _read_varint(payload, pos)
        parts.append(payload[pos : pos + size])
        pos += size
    return parts


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


# ---------------------------------------------------------------------- Loro

_STEP1, _STEP2, _UPDATE = 0, 1, 2


def _frame(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _varint(len(body)) + body


def _unframe_all(payload: bytes) -> list[tuple[int, bytes]]:
    """Every ``[type][varint length][body]`` message of a payload."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(payload):
        kind = payload[pos]
        size, pos = _read_varint(payload, pos + 1)
        body = payload[pos : pos + size]
        if len(body) != size:
            raise ValueError("truncated message")
        out.append((kind, body))
        pos += size
    return out


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
    """Loro with the same protocol shape on version vectors (see the module
    docstring).

    Each replica is a ``loro.LoroDoc`` (peer id: xxh64 of the replica name).
    Loro has no wire protocol of its own, so messages are framed as one type
    byte and a varint body length (counted in :attr:`wire_bytes`), and the
    bodies are Loro's own encodings:

    - ``STEP1``: ``doc.oplog_vv.encode()``; ``STEP2``:
      ``doc.export(ExportMode.Updates(their_vv))``;
    - update: once per tick and link, ``doc.export(ExportMode.Updates(vv))``
      where ``vv`` is what the peer is known to hold: what was last sent to
      it, merged with the end version of every blob received from it
      (``LoroDoc.decode_import_blob_meta``), so a hub never echoes a leaf's
      own changes back;
    - received blobs are imported together with ``doc.import_batch``.

    :meth:`state_bytes` is the shallow snapshot at the replica's current
    version (history dropped: what a replica must keep once every peer is at
    that version), :meth:`state_bytes_full` the full snapshot with history.
    """

    name = "loro"

    def __init__(
        self, replicas: Sequence[str], net: NetConfig, *, retransmit_after: int = 2
    ) -> None:
        if _loro_missing is not None:
            raise ImportError(f"LoroEngine needs the loro package: {_loro_missing}")
        super().__init__(replicas, net, retransmit_after=retransmit_after)
        self.docs: dict[str, LoroDoc] = {}
        #: (replica, peer) -> the version the peer is known to hold.
        self._peer_vv: dict[tuple[str, str], VersionVector] = {
            key: _new_vv() for key in self.channels
        }
        self._replies: dict[tuple[str, str], list[bytes]] = {}
        for name in self.replicas:
            doc = LoroDoc()  # type: ignore[no-untyped-call]
            doc.peer_id = xxhash.xxh64_intdigest(name.encode())
            self.docs[name] = doc
        self._connect()

    # protocol

    def _step1(self, replica: str) -> bytes:
        return _frame(_STEP1, self.docs[replica].oplog_vv.encode())

    def _integrate(self, dst: str, messages: list[tuple[str, bytes]]) -> None:
        doc = self.docs[dst]
        blobs: list[bytes] = []
        for src, payload in messages:
            for kind, body in _unframe_all(payload):
                if kind == _STEP1:
                    if blobs:
                        doc.import_batch(blobs)
                        blobs = []
                    theirs = VersionVector.decode(body)
                    out = self._replies.setdefault((dst, src), [])
                    ours = doc.oplog_vv
                    known = self._peer_vv[(dst, src)]
                    known.merge(theirs)
                    if not theirs.includes_vv(ours):
                        out.append(_frame(_STEP2, doc.export(ExportMode.Updates(theirs))))
                        known.merge(ours)
                    if dst == self.hub:
                        out.append(_frame(_STEP1, ours.encode()))
                elif kind in (_STEP2, _UPDATE):
                    blobs.append(body)
                    meta = LoroDoc.decode_import_blob_meta(body, False)
                    self._peer_vv[(dst, src)].merge(meta.partial_end_vv)
                else:
                    raise ValueError(f"unknown message type {kind}")
        if blobs:
            doc.import_batch(blobs)

    def _outgoing(self, name: str, peer: str) -> bytes | None:
        doc = self.docs[name]
        parts = self._replies.pop((name, peer), [])
        known = self._peer_vv[(name, peer)]
        ours = doc.oplog_vv
        if not known.includes_vv(ours):
            parts.append(_frame(_UPDATE, doc.export(ExportMode.Updates(known))))
            known.merge(ours)
        return b"".join(parts) if parts else None

    def _versions_equal(self) -> bool:
        first = self.docs[self.hub].oplog_vv
        return all(self.docs[n].oplog_vv == first for n in self.leaves)

    # operations

    def _transact(self, replica: str, body: Callable[[], None]) -> None:
        try:
            body()
        finally:
            self.docs[replica].commit()

    def _text_edit(self, replica: str, op: Any) -> None:
        text = self.docs[replica].get_text(f"text:{op.doc}")
        if op.delete:
            text.delete(op.pos, op.delete)
        if op.insert:
            text.insert(op.pos, op.insert)

    def prepare(self, replica: str, ops: Sequence[Op]) -> Sequence[Any]:
        for op in ops:
            if isinstance(op, TextEdit):
                size = self.docs[replica].get_text(f"text:{op.doc}").len_unicode
                if op.pos < 0 or op.delete < 0 or op.pos + op.delete > size:
                    raise ValueError(f"{op!r} is out of range for a text of {size} code points")
        return ops

    def _text_replace(self, replica: str, op: TextReplace) -> None:
        self.docs[replica].get_text(f"text:{op.doc}").update_by_line(op.text)

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

    def _kv_put(self, replica: str, entries: dict[str, Any], deleted: Sequence[str]) -> None:
        kv = self.docs[replica].get_map("kv")
        for key, value in entries.items():
            kv.insert(key, value)
        for key in deleted:
            kv.delete(key)

    def _kv_value(self, replica: str) -> Any:
        return self.docs[replica].get_map("kv").get_value()

    # reading

    def text(self, replica: str, doc: str) -> str:
        return self.docs[replica].get_text(f"text:{doc}").to_string()

    def meta(self, replica: str) -> Any:
        return _normalize(self.docs[replica].get_map("meta").get_deep_value())

    def state_bytes(self) -> int:
        """The largest shallow snapshot at the replica's current version
        (``ExportMode.ShallowSnapshot(doc.oplog_frontiers)``) over the replicas."""
        return max(
            len(doc.export(ExportMode.ShallowSnapshot(doc.oplog_frontiers)))
            for doc in self.docs.values()
        )

    def state_bytes_full(self) -> int:
        """The largest full snapshot (state and whole history) over the replicas."""
        return max(len(doc.export(ExportMode.Snapshot())) for doc in self.docs.values())
