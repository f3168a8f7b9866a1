"""LangGraph long-term memory and thread state on a hybridsync replica.

``pip install hybridsync[langgraph]``.

- :class:`HybridStore` -- a LangGraph :class:`~langgraph.store.base.BaseStore`
  (``get``, ``put`` with TTL, ``delete``, ``search`` by namespace prefix with
  ``filter``, ``limit``/``offset`` and, given ``index={"embed": ..., "dims":
  ...}``, semantic ``query``; ``list_namespaces``).
- :class:`HybridSaver` -- a LangGraph
  :class:`~langgraph.checkpoint.base.BaseCheckpointSaver`: a thread
  checkpointed on one replica resumes on another once they have synced.

Both keep their data in ``memory.meta``, one key per item, checkpoint,
channel value and pending write, so that writes on different replicas merge::

    from hybridsync import Memory, SyncNode
    from hybridsync.integrations.langgraph import HybridSaver, HybridStore

    node = SyncNode(Memory("agent-1", path="agent-1.db"), url="ws://hub:8765", secret=key)
    graph = builder.compile(checkpointer=HybridSaver(node), store=HybridStore(node))

Given a :class:`hybridsync.SyncNode`, they hold ``node.lock`` while they touch
the replica and wake the node after each write; given a bare
:class:`hybridsync.Memory`, they use a lock of their own (then nothing else may
touch the replica from another thread). A durable replica saves each write
before the call returns.

Concurrent semantics
--------------------
- Store items: puts of different keys all survive; concurrent puts of one key
  (namespace, key) end with one of the values on every replica (the CRDT picks
  the same one everywhere); a delete removes the value its replica had seen, a
  concurrent put survives it.
- Checkpoints, channel values and pending writes are immutable and uniquely
  keyed (checkpoint ids are time-ordered UUIDs), so replicas never conflict on
  them: two replicas that run one thread concurrently fork it, and the latest
  checkpoint id wins as the thread's head, as in any LangGraph checkpointer.
- ``delete_thread`` removes what its replica had of the thread.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    ensure_embeddings,
    get_text_at_path,
    tokenize_path,
)

from hybridsync import Memory, SyncNode

__all__ = ["HybridSaver", "HybridStore"]


class _Replica:
    """The replica, the lock that guards it, and what to do after a write."""

    def __init__(self, target: Memory | SyncNode, lock: AbstractContextManager[Any] | None) -> None:
        if isinstance(target, SyncNode):
            self.memory = target.memory
            self.lock: AbstractContextManager[Any] = lock or target.lock
            self._node: SyncNode | None = target
        elif isinstance(target, Memory):
            self.memory = target
            self.lock = lock or threading.RLock()
            self._node = None
        else:
            raise TypeError(
                f"expected a hybridsync Memory or SyncNode, got {type(target).__name__}"
            )

    def committed(self) -> None:
        """Call after a write, holding the lock: save it, wake the node."""
        self.memory.flush()
        if self._node is not None:
            self._node.notify()


def _key(prefix: str, parts: Sequence[Any]) -> str:
    return prefix + json.dumps(list(parts), ensure_ascii=False, separators=(",", ":"))


def _scan(memory: Memory, prefix: str) -> Iterator[tuple[str, list[Any]]]:
    """(key, parsed key parts) of the keys of ``memory.meta`` under ``prefix``."""
    for key in memory.meta:
        if key.startswith(prefix):
            try:
                parts = json.loads(key[len(prefix) :])
            except ValueError:
                continue
            if isinstance(parts, list):
                yield key, parts


def _get_json(memory: Memory, key: str) -> Any:
    try:
        raw = memory.meta[key]
        return json.loads(raw) if isinstance(raw, str) else None
    except (KeyError, ValueError):
        return None


# -- the store --------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _compare(item_value: Any, filter_value: Any) -> bool:
    """LangGraph's filter semantics (JSONB-like; ``$eq``, ``$ne``, ``$gt``,
    ``$gte``, ``$lt``, ``$lte``)."""
    if isinstance(filter_value, dict):
        if any(k.startswith("$") for k in filter_value):
            return all(_operator(item_value, k, v) for k, v in filter_value.items())
        if not isinstance(item_value, dict):
            return False
        return all(_compare(item_value.get(k), v) for k, v in filter_value.items())
    if isinstance(filter_value, (list, tuple)):
        return (
            isinstance(item_value, (list, tuple))
            and len(item_value) == len(filter_value)
            and all(_compare(a, b) for a, b in zip(item_value, filter_value, strict=True))
        )
    return bool(item_value == filter_value)


def _operator(value: Any, operator: str, operand: Any) -> bool:
    if operator == "$eq":
        return bool(value == operand)
    if operator == "$ne":
        return bool(value != operand)
    if operator in ("$gt", "$gte", "$lt", "$lte"):
        try:
            a, b = float(value), float(operand)
        except (TypeError, ValueError):
            return False
        return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[operator]
    raise ValueError(f"Unsupported operator: {operator}")


def _matches(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = condition.path
    if len(namespace) < len(path):
        return False
    if condition.match_type == "prefix":
        pairs = zip(namespace, path, strict=False)
    elif condition.match_type == "suffix":
        pairs = zip(reversed(namespace), reversed(path), strict=False)
    else:
        raise ValueError(f"Unsupported match type: {condition.match_type}")
    return all(p == "*" or k == p for k, p in pairs)


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na > 0 and nb > 0 else 0.0


class HybridStore(BaseStore):
    """A LangGraph store whose items live in a replica's ``memory.meta``.

    Args:
        target: a :class:`hybridsync.SyncNode` (its lock is held while the
            store touches the replica, and it is woken after writes) or a
            :class:`hybridsync.Memory` (used from this store only).
        name: the store's name in ``memory.meta`` (several can share a swarm).
        index: semantic search, as LangGraph's own stores take it:
            ``{"embed": fn_or_embeddings, "dims": N, "fields": ["$"]}``. Each
            replica embeds the items it searches (and caches the vectors).
        ttl: LangGraph's TTL configuration (``default_ttl`` in minutes,
            ``refresh_on_read``). Expired items are hidden on every replica
            and removed by :meth:`sweep_ttl`.
        lock: a lock to hold instead of the node's.
        clock: seconds since the epoch (TTL and timestamps).
    """

    supports_ttl = True

    def __init__(
        self,
        target: Memory | SyncNode,
        *,
        name: str = "store",
        index: IndexConfig | None = None,
        ttl: TTLConfig | None = None,
        lock: AbstractContextManager[Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._replica = _Replica(target, lock)
        self._prefix = f"lgs:{name}:"
        self._clock = clock
        self.ttl_config = ttl
        self.index_config = dict(index) if index else None
        self._fields: list[tuple[str, Any]] = []
        self._embeddings: Any = None
        if index:
            self._embeddings = ensure_embeddings(index.get("embed"))
            self._fields = [
                (p, tokenize_path(p) if p != "$" else p) for p in (index.get("fields") or ["$"])
            ]
        #: (namespace, key, updated_at, path) -> vector
        self._vectors: dict[tuple[tuple[str, ...], str, str, str], list[float]] = {}

    @property
    def memory(self) -> Memory:
        return self._replica.memory

    # -- records

    def _record(self, key: str) -> dict[str, Any] | None:
        record = _get_json(self.memory, key)
        if not isinstance(record, dict) or not isinstance(record.get("value"), dict):
            return None
        return record

    def _expired(self, record: Mapping[str, Any], now: float) -> bool:
        expires = record.get("expires_at")
        return isinstance(expires, (int, float)) and expires <= now

    @staticmethod
    def _item(namespace: tuple[str, ...], key: str, record: Mapping[str, Any]) -> Item:
        return Item(
            value=record["value"],
            key=key,
            namespace=namespace,
            created_at=datetime.fromisoformat(record["created_at"]),
            updated_at=datetime.fromisoformat(record["updated_at"]),
        )

    def _refresh(self, skey: str, record: dict[str, Any], now: float) -> None:
        ttl = record.get("ttl")
        if isinstance(ttl, (int, float)):
            record["expires_at"] = now + ttl * 60.0
            self.memory.meta[skey] = json.dumps(record, ensure_ascii=False)

    def _items(self) -> Iterator[tuple[str, tuple[str, ...], str]]:
        for skey, parts in _scan(self.memory, self._prefix):
            if (
                len(parts) == 2
                and isinstance(parts[0], list)
                and all(isinstance(p, str) for p in parts[0])
                and isinstance(parts[1], str)
            ):
                yield skey, tuple(parts[0]), parts[1]

    # -- batch

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        vectors = {q: self._embeddings.embed_query(q) for q in self._queries_to_embed(ops)}
        return self._run(ops, vectors, self._embed_sync)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        vectors = {q: await self._embeddings.aembed_query(q) for q in self._queries_to_embed(ops)}
        # The replica is touched (and item vectors a search needs are embedded)
        # in a worker thread: the replica's lock may be held by a node's loop.
        return await asyncio.to_thread(self._run, ops, vectors, self._embed_sync)

    def _queries_to_embed(self, ops: list[Op]) -> list[str]:
        if self._embeddings is None:
            return []
        return sorted({op.query for op in ops if isinstance(op, SearchOp) and op.query})

    def _embed_sync(self, texts: list[str]) -> list[list[float]]:
        return [list(map(float, v)) for v in self._embeddings.embed_documents(texts)]

    def _run(
        self,
        ops: list[Op],
        query_vectors: dict[str, list[float]],
        embed: Callable[[list[str]], list[list[float]]],
    ) -> list[Result]:
        results: list[Result] = []
        wrote = False
        with self._replica.lock, self.memory.transaction():
            now = self._clock()
            for op in ops:
                if isinstance(op, GetOp):
                    results.append(self._get(op, now))
                    wrote = wrote or op.refresh_ttl
                elif isinstance(op, PutOp):
                    self._put(op, now)
                    results.append(None)
                    wrote = True
                elif isinstance(op, SearchOp):
                    results.append(self._search(op, now, query_vectors, embed))
                    wrote = wrote or op.refresh_ttl
                elif isinstance(op, ListNamespacesOp):
                    results.append(self._list_namespaces(op, now))
                else:
                    raise ValueError(f"Unknown operation type: {type(op)}")
        if wrote:
            with self._replica.lock:
                self._replica.committed()
        return results

    def _get(self, op: GetOp, now: float) -> Item | None:
        skey = _key(self._prefix, [list(op.namespace), op.key])
        record = self._record(skey)
        if record is None or self._expired(record, now):
            return None
        if op.refresh_ttl:
            self._refresh(skey, record, now)
        return self._item(tuple(op.namespace), op.key, record)

    def _put(self, op: PutOp, now: float) -> None:
        skey = _key(self._prefix, [list(op.namespace), op.key])
        if op.value is None:
            if skey in self.memory.meta:
                del self.memory.meta[skey]
            return
        stamp = datetime.fromtimestamp(now, timezone.utc).isoformat()
        old = self._record(skey)
        created = old["created_at"] if old is not None and not self._expired(old, now) else stamp
        ttl = op.ttl
        record = {
            "value": dict(op.value),
            "created_at": created,
            "updated_at": stamp,
            "ttl": ttl,
            "expires_at": now + ttl * 60.0 if ttl is not None else None,
            "index": op.index if isinstance(op.index, list) else op.index is not False,
        }
        try:
            encoded = json.dumps(record, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"store values must be JSON-serializable: {exc}") from None
        self.memory.meta[skey] = encoded

    def _search(
        self,
        op: SearchOp,
        now: float,
        query_vectors: dict[str, list[float]],
        embed: Callable[[list[str]], list[list[float]]],
    ) -> list[SearchItem]:
        prefix = tuple(op.namespace_prefix)
        n = len(prefix)
        found: list[tuple[str, tuple[str, ...], str, dict[str, Any]]] = []
        for skey, namespace, key in self._items():
            if namespace[:n] != prefix:
                continue
            record = self._record(skey)
            if record is None or self._expired(record, now):
                continue
            if op.filter and not all(
                _compare(record["value"].get(k), v) for k, v in op.filter.items()
            ):
                continue
            found.append((skey, namespace, key, record))
        # Most recently updated first, the same order on every replica
        # (ties by namespace and key).
        found.sort(key=lambda f: (f[1], f[2]))
        found.sort(key=lambda f: str(f[3]["updated_at"]), reverse=True)
        scores: dict[str, float | None] = {}
        if op.query and self._embeddings is not None:
            qv = query_vectors[op.query]
            for skey, namespace, key, record in found:
                vectors = self._item_vectors(namespace, key, record, embed)
                scores[skey] = max((_cosine(qv, v) for v in vectors), default=None)
            # Best first; items without a vector (not indexed) last.
            found.sort(key=lambda f: (scores[f[0]] is None, -(scores[f[0]] or 0.0)))
        page = found[op.offset : op.offset + op.limit]
        out = []
        for skey, namespace, key, record in page:
            if op.refresh_ttl:
                self._refresh(skey, record, now)
            out.append(
                SearchItem(
                    namespace=namespace,
                    key=key,
                    value=record["value"],
                    created_at=datetime.fromisoformat(record["created_at"]),
                    updated_at=datetime.fromisoformat(record["updated_at"]),
                    score=scores.get(skey),
                )
            )
        return out

    def _item_vectors(
        self,
        namespace: tuple[str, ...],
        key: str,
        record: Mapping[str, Any],
        embed: Callable[[list[str]], list[list[float]]],
    ) -> list[list[float]]:
        index = record.get("index", True)
        if index is False:
            return []
        fields = [(p, tokenize_path(p)) for p in index] if isinstance(index, list) else self._fields
        vectors: list[list[float]] = []
        missing: list[tuple[tuple[tuple[str, ...], str, str, str], str]] = []
        for path, tokens in fields:
            for i, text in enumerate(get_text_at_path(record["value"], tokens)):
                vkey = (namespace, key, str(record["updated_at"]), f"{path}.{i}")
                if vkey in self._vectors:
                    vectors.append(self._vectors[vkey])
                else:
                    missing.append((vkey, text))
        if missing:
            for (vkey, _), vector in zip(missing, embed([t for _, t in missing]), strict=True):
                self._vectors[vkey] = vector
                vectors.append(vector)
        return vectors

    def _list_namespaces(self, op: ListNamespacesOp, now: float) -> list[tuple[str, ...]]:
        namespaces = set()
        for skey, namespace, _ in self._items():
            record = self._record(skey)
            if record is None or self._expired(record, now):
                continue
            if op.match_conditions and not all(_matches(c, namespace) for c in op.match_conditions):
                continue
            namespaces.add(namespace[: op.max_depth] if op.max_depth is not None else namespace)
        return sorted(namespaces)[op.offset : op.offset + op.limit]

    def sweep_ttl(self) -> int:
        """Delete the expired items; returns how many. Any replica may sweep
        (concurrent sweeps delete each item once)."""
        with self._replica.lock:
            now = self._clock()
            doomed = [
                skey
                for skey, _, _ in self._items()
                if (r := self._record(skey)) is not None and self._expired(r, now)
            ]
            if doomed:
                with self.memory.transaction():
                    for skey in doomed:
                        del self.memory.meta[skey]
                self._replica.committed()
        return len(doomed)


# -- the checkpointer -----------------------------------------------------------------


def _enc(typed: tuple[str, bytes]) -> list[str]:
    return [typed[0], base64.b64encode(typed[1]).decode("ascii")]


def _dec(value: Any) -> tuple[str, bytes]:
    return (str(value[0]), base64.b64decode(value[1]))


class HybridSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer whose checkpoints live in a replica's ``memory.meta``.

    Args:
        target: a :class:`hybridsync.SyncNode` or a :class:`hybridsync.Memory`
            (see :class:`HybridStore`).
        name: the checkpointer's name in ``memory.meta``.
        serde: LangGraph's serializer (default: its JSON+ serializer).
        lock: a lock to hold instead of the node's.
    """

    def __init__(
        self,
        target: Memory | SyncNode,
        *,
        name: str = "checkpoints",
        serde: SerializerProtocol | None = None,
        lock: AbstractContextManager[Any] | None = None,
    ) -> None:
        super().__init__(serde=serde)
        self._replica = _Replica(target, lock)
        self._prefix = f"lgc:{name}:"

    @property
    def memory(self) -> Memory:
        return self._replica.memory

    # -- keys: ["c", thread, ns, id] ["b", thread, ns, channel, version]
    #          ["w", thread, ns, id, task, idx]

    def _k(self, *parts: Any) -> str:
        return _key(self._prefix, parts)

    def _checkpoints(
        self, thread_id: str | None, checkpoint_ns: str | None
    ) -> dict[tuple[str, str, str], Any]:
        out: dict[tuple[str, str, str], Any] = {}
        for skey, parts in _scan(self.memory, self._prefix):
            if len(parts) != 4 or parts[0] != "c":
                continue
            _, tid, ns, cid = parts
            if thread_id is not None and tid != thread_id:
                continue
            if checkpoint_ns is not None and ns != checkpoint_ns:
                continue
            value = _get_json(self.memory, skey)
            if isinstance(value, list) and len(value) == 3:
                out[(tid, ns, cid)] = value
        return out

    def _index(
        self, thread_id: str | None, checkpoint_ns: str | None
    ) -> tuple[dict[tuple[str, str, str], str], dict[tuple[str, str, str], list[Any]]]:
        """One pass over the keys (values untouched): the checkpoints' keys and
        their pending writes' ``(task_id, idx, key)``, of a thread (``None``:
        all) and namespace (``None``: all)."""
        checkpoints: dict[tuple[str, str, str], str] = {}
        writes: dict[tuple[str, str, str], list[Any]] = {}
        for skey, parts in _scan(self.memory, self._prefix):
            if len(parts) < 4 or parts[0] not in ("c", "w"):
                continue
            if (thread_id is not None and parts[1] != thread_id) or (
                checkpoint_ns is not None and parts[2] != checkpoint_ns
            ):
                continue
            key = (parts[1], parts[2], parts[3])
            if parts[0] == "c" and len(parts) == 4:
                checkpoints[key] = skey
            elif parts[0] == "w" and len(parts) == 6:
                writes.setdefault(key, []).append((parts[4], parts[5], skey))
        return checkpoints, writes

    def _tuple(
        self, key: tuple[str, str, str], stored: Any, write_keys: list[Any]
    ) -> CheckpointTuple:
        tid, ns, cid = key
        ckpt_enc, meta_enc, parent = stored
        checkpoint: Checkpoint = self.serde.loads_typed(_dec(ckpt_enc))
        values: dict[str, Any] = {}
        for channel, version in checkpoint["channel_versions"].items():
            blob = _get_json(self.memory, self._k("b", tid, ns, channel, version))
            if isinstance(blob, list) and len(blob) == 2 and blob[0] != "empty":
                values[channel] = self.serde.loads_typed(_dec(blob))
        writes = []
        for task_id, idx, skey in write_keys:
            value = _get_json(self.memory, skey)
            if isinstance(value, list) and len(value) == 4:
                writes.append((task_id, idx, value))
        # LangGraph's order: by task path, task id, then write index.
        writes.sort(key=lambda w: writes_sort_key(w[2][3], w[0], w[1]))
        return CheckpointTuple(
            config={"configurable": {"thread_id": tid, "checkpoint_ns": ns, "checkpoint_id": cid}},
            checkpoint={**checkpoint, "channel_values": values},
            metadata=self.serde.loads_typed(_dec(meta_enc)),
            parent_config=(
                {"configurable": {"thread_id": tid, "checkpoint_ns": ns, "checkpoint_id": parent}}
                if parent
                else None
            ),
            pending_writes=[(w[0], w[1], self.serde.loads_typed(_dec(w[2]))) for _, _, w in writes],
        )

    def _stored(self, skey: str) -> Any:
        value = _get_json(self.memory, skey)
        return value if isinstance(value, list) and len(value) == 3 else None

    # -- the interface

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        configurable = config["configurable"]
        tid = str(configurable["thread_id"])
        ns = str(configurable.get("checkpoint_ns", ""))
        cid = get_checkpoint_id(config)
        with self._replica.lock:
            checkpoints, writes = self._index(tid, ns)
            if cid:
                key = (tid, ns, cid)
                if key not in checkpoints:
                    return None
            elif checkpoints:
                key = max(checkpoints, key=lambda k: k[2])
            else:
                return None
            stored = self._stored(checkpoints[key])
            if stored is None:
                return None
            found = self._tuple(key, stored, writes.get(key, []))
        if cid:
            return CheckpointTuple(
                config=config,
                checkpoint=found.checkpoint,
                metadata=found.metadata,
                parent_config=found.parent_config,
                pending_writes=found.pending_writes,
            )
        return found

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        configurable = config["configurable"] if config else {}
        tid = configurable.get("thread_id")
        ns = configurable.get("checkpoint_ns")
        cid = get_checkpoint_id(config) if config else None
        before_id = get_checkpoint_id(before) if before else None
        with self._replica.lock:
            checkpoints, writes = self._index(
                str(tid) if tid is not None else None, str(ns) if ns is not None else None
            )
            results: list[CheckpointTuple] = []
            for key in sorted(checkpoints, reverse=True):
                if cid and key[2] != cid:
                    continue
                if before_id and key[2] >= before_id:
                    continue
                if limit is not None and len(results) >= limit:
                    break
                stored = self._stored(checkpoints[key])
                if stored is None:
                    continue
                if filter:
                    metadata = self.serde.loads_typed(_dec(stored[1]))
                    if not all(metadata.get(k) == v for k, v in filter.items()):
                        continue
                results.append(self._tuple(key, stored, writes.get(key, [])))
        yield from results

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        c = checkpoint.copy()
        configurable = config["configurable"]
        tid = str(configurable["thread_id"])
        ns = str(configurable.get("checkpoint_ns", ""))
        values: dict[str, Any] = c.pop("channel_values")  # type: ignore[misc]
        with self._replica.lock:
            with self.memory.transaction():
                for channel, version in new_versions.items():
                    blob = (
                        _enc(self.serde.dumps_typed(values[channel]))
                        if channel in values
                        else ["empty", ""]
                    )
                    self.memory.meta[self._k("b", tid, ns, channel, version)] = json.dumps(blob)
                self.memory.meta[self._k("c", tid, ns, checkpoint["id"])] = json.dumps(
                    [
                        _enc(self.serde.dumps_typed(c)),
                        _enc(self.serde.dumps_typed(get_checkpoint_metadata(config, metadata))),
                        configurable.get("checkpoint_id"),
                    ]
                )
            self._replica.committed()
        return {
            "configurable": {
                "thread_id": tid,
                "checkpoint_ns": ns,
                "checkpoint_id": checkpoint["id"],
            }
        }

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        configurable = config["configurable"]
        tid = str(configurable["thread_id"])
        ns = str(configurable.get("checkpoint_ns", ""))
        cid = str(configurable["checkpoint_id"])
        with self._replica.lock:
            with self.memory.transaction():
                for idx, (channel, value) in enumerate(writes):
                    widx = WRITES_IDX_MAP.get(channel, idx)
                    skey = self._k("w", tid, ns, cid, task_id, widx)
                    if widx >= 0 and skey in self.memory.meta:
                        continue
                    self.memory.meta[skey] = json.dumps(
                        [task_id, channel, _enc(self.serde.dumps_typed(value)), task_path]
                    )
            self._replica.committed()

    def delete_thread(self, thread_id: str) -> None:
        with self._replica.lock:
            doomed = [
                skey
                for skey, parts in _scan(self.memory, self._prefix)
                if len(parts) >= 2 and parts[1] == thread_id
            ]
            if doomed:
                with self.memory.transaction():
                    for skey in doomed:
                        del self.memory.meta[skey]
                self._replica.committed()

    def _drop(self, doomed: set[tuple[str, str, str]]) -> None:
        """Delete checkpoints, their pending writes, and the channel values no
        remaining checkpoint of their threads refers to (holding the lock)."""
        if not doomed:
            return
        threads = {(tid, ns) for tid, ns, _ in doomed}
        kept: set[tuple[str, str, str, Any]] = set()
        for (tid, ns, cid), stored in self._checkpoints(None, None).items():
            if (tid, ns) in threads and (tid, ns, cid) not in doomed:
                checkpoint = self.serde.loads_typed(_dec(stored[0]))
                for channel, version in checkpoint["channel_versions"].items():
                    kept.add((tid, ns, channel, json.dumps(version)))
        keys = []
        for skey, parts in _scan(self.memory, self._prefix):
            kind, size = parts[0], len(parts)
            if kind == "b" and size == 5:
                unused = (parts[1], parts[2]) in threads and (
                    parts[1],
                    parts[2],
                    parts[3],
                    json.dumps(parts[4]),
                ) not in kept
            else:
                unused = (kind, size) in (("c", 4), ("w", 6)) and tuple(parts[1:4]) in doomed
            if unused:
                keys.append(skey)
        with self.memory.transaction():
            for skey in keys:
                del self.memory.meta[skey]
        self._replica.committed()

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and their writes) that the given runs made."""
        runs = set(run_ids)
        if not runs:
            return
        with self._replica.lock:
            doomed = {
                key
                for key, stored in self._checkpoints(None, None).items()
                if self.serde.loads_typed(_dec(stored[1])).get("run_id") in runs
            }
            self._drop(doomed)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``"keep_latest"``: keep each namespace's latest checkpoint of the
        threads (with its writes and channel values); ``"delete"``: delete the
        threads. (Graphs with ``DeltaChannel`` need their history: do not prune
        those with ``keep_latest``.)"""
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r}")
        threads = set(thread_ids)
        if not threads:
            return
        if strategy == "delete":
            for tid in threads:
                self.delete_thread(tid)
            return
        with self._replica.lock:
            latest: dict[tuple[str, str], str] = {}
            found = [k for k in self._checkpoints(None, None) if k[0] in threads]
            for tid, ns, cid in found:
                if cid > latest.get((tid, ns), ""):
                    latest[(tid, ns)] = cid
            self._drop({k for k in found if latest[(k[0], k[1])] != k[2]})

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        with self._replica.lock:
            copies: list[tuple[str, str]] = []
            for skey, parts in _scan(self.memory, self._prefix):
                if len(parts) >= 2 and parts[1] == source_thread_id:
                    raw = self.memory.meta[skey]
                    if not isinstance(raw, str):
                        continue
                    copies.append((self._k(parts[0], target_thread_id, *parts[2:]), raw))
            if copies:
                with self.memory.transaction():
                    for skey, raw in copies:
                        self.memory.meta[skey] = raw
                self._replica.committed()

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        found = await asyncio.to_thread(
            lambda: list(self.list(config, filter=filter, before=before, limit=limit))
        )
        for item in found:
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await asyncio.to_thread(self.prune, thread_ids, strategy=strategy)

    def get_next_version(self, current: str | None, channel: None) -> str:
        """Versions as LangGraph's in-memory saver makes them: a counter, then a
        random fraction (so two replicas never mint the same version)."""
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(str(current).split(".")[0])
        return f"{current_v + 1:032}.{random.random():016}"
