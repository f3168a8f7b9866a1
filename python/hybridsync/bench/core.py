"""The shared vocabulary of ``hybridsync bench``: operations, network
settings and the engine interface every sync stack implements.

A benchmark cell runs one *workload* (a seeded script of local transactions
by named replicas, tick by tick) through one *engine* (a sync stack: hybridsync,
pycrdt with the Yjs sync protocol, Loro) over one simulated network (a star:
``replicas[0]`` is the hub, every other replica a leaf; messages cross in
ticks and are lost, duplicated and reordered at the configured rates, with
one seeded random generator). The runner applies each transaction with
:meth:`Engine.apply`, calls :meth:`Engine.tick` once per tick, and after the
last transaction keeps ticking until :meth:`Engine.converged`; it measures
wire bytes, CPU time, peak memory, state size over time and ticks to converge,
and checks correctness through :meth:`Engine.text`, :meth:`Engine.meta` and
:meth:`Engine.kv_digest`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

__all__ = [
    "Engine",
    "KVAppend",
    "KVTruncate",
    "MetaAppend",
    "MetaDelete",
    "MetaSet",
    "NetConfig",
    "Op",
    "TextEdit",
    "TextReplace",
    "faults",
    "kv_rows",
]


@dataclass(frozen=True)
class TextEdit:
    """Replace ``delete`` code points at ``pos`` of text document ``doc`` by
    ``insert`` (the document is created empty on first use)."""

    doc: str
    pos: int
    delete: int
    insert: str


@dataclass(frozen=True)
class TextReplace:
    """Replace the whole text document ``doc`` by ``text`` (an agent that
    regenerates a document). Each engine turns it into its own edits: hybridsync
    assigns the text (its link diffs it against the shadow), Loro calls
    ``LoroText.update_by_line`` (its documentation's advice for large texts;
    ``update`` took up to 0.6 s per version on the revision histories), pycrdt
    diffs old and new and applies the ops to ``Y.Text``; that work counts as
    the engine's CPU."""

    doc: str
    text: str


@dataclass(frozen=True)
class MetaSet:
    """Set the metadata value at ``path`` (a tuple of dict keys) to a
    JSON-like ``value`` (dicts, lists, str, int, float, bool, None).

    On a lossy network the writer may not have received a container on the
    way yet: the runner holds such a transaction back until the replica sees
    the container (and drops it, counted, after a while); an engine that is
    handed one anyway skips the op and counts it."""

    path: tuple[str, ...]
    value: Any


@dataclass(frozen=True)
class MetaDelete:
    """Delete the key at ``path`` (see :class:`MetaSet` for missing containers)."""

    path: tuple[str, ...]


@dataclass(frozen=True)
class MetaAppend:
    """Append ``value`` to the list at ``path`` (see :class:`MetaSet` for
    missing containers)."""

    path: tuple[str, ...]
    value: Any


@dataclass(frozen=True)
class KVAppend:
    """Append ``tokens`` token rows to the KV cache ``cache`` owned by the
    transaction's replica (created on first use with this geometry, GGML
    Q4_0: ``row_bytes = head_dim / 32 * 18`` per head and token). The rows'
    bytes are ``kv_rows(cache, first_token, tokens, ...)``: deterministic, so
    every engine writes the same bytes."""

    cache: str
    tokens: int
    layers: int = 8
    kv_heads: int = 8
    head_dim: int = 128


@dataclass(frozen=True)
class KVTruncate:
    """Keep the first ``tokens`` tokens of the owned cache ``cache``."""

    cache: str
    tokens: int


Op: TypeAlias = TextEdit | TextReplace | MetaSet | MetaDelete | MetaAppend | KVAppend | KVTruncate


@dataclass(frozen=True)
class NetConfig:
    """The simulated network of a cell (a star; ``replicas[0]`` is the hub).

    ``loss``, ``duplicate`` and ``reorder`` are per-message probabilities;
    a reordered message is delayed by 1 to ``reorder_ticks`` extra ticks;
    every message otherwise arrives at the next tick. ``seed`` seeds the
    network's one random generator.
    """

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_ticks: int = 3
    seed: int = 0


def faults(level: float, seed: int = 0) -> NetConfig:
    """The network of a cell at fault level ``level``: each message is lost,
    duplicated and delayed out of order (by 1 to 3 ticks) with probability
    ``level`` each (0: a perfect network)."""
    return NetConfig(loss=level, duplicate=level, reorder=level, seed=seed)


def kv_rows(
    cache: str, first: int, tokens: int, layers: int, kv_heads: int, head_dim: int
) -> bytes:
    """Deterministic stand-in rows for ``tokens`` new tokens of ``cache``
    from token ``first`` on: ``layers x 2 x kv_heads x tokens`` rows of
    ``head_dim / 32 * 18`` bytes, ordered ``[layer][K, V][head][token]``
    (random-looking bytes, as quantized data is; seeded by the cache name
    and ``first``)."""
    import numpy as np
    import xxhash

    row = head_dim // 32 * 18
    seed = xxhash.xxh64_intdigest(f"{cache}\x00{first}".encode())
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=layers * 2 * kv_heads * tokens * row, dtype=np.uint8).tobytes()


class Engine(ABC):
    """One sync stack running a star of replicas over a simulated network.

    Args:
        replicas: replica names; ``replicas[0]`` is the hub.
        net: the network's faults and seed.
    """

    #: The engine's name in reports ("hybridsync", "pycrdt", "loro").
    name: ClassVar[str]

    def __init__(self, replicas: Sequence[str], net: NetConfig) -> None:
        self.replicas = list(replicas)
        self.net = net
        #: Bytes of every message sent (retransmissions and duplicates included).
        self.wire_bytes = 0
        #: Messages sent (before loss).
        self.messages = 0

    def prepare(self, replica: str, ops: Sequence[Op]) -> Sequence[Any]:
        """Turn ``ops`` into what :meth:`apply` takes, outside the timed region.

        The harness's own work lives here: converting the trace's code-point
        positions into the index an engine's text type uses (yrs counts UTF-8
        bytes; an editor built on it would track those natively), for
        instance. The default returns ``ops`` unchanged."""
        return ops

    @abstractmethod
    def apply(self, replica: str, ops: Sequence[Any]) -> None:
        """Apply ``ops`` (as :meth:`prepare` returned them) on ``replica`` as
        one local transaction (nothing is sent until the next :meth:`tick`)."""

    @abstractmethod
    def tick(self) -> None:
        """One tick: every replica runs its sync cycle (sends what its
        protocol sends), and the messages due arrive (after faults)."""

    @abstractmethod
    def converged(self) -> bool:
        """Every replica holds the same content, and that content is stable:
        nothing local is left unsent and nothing still in flight can change
        it (for a CRDT: equal state vectors; for hybridsync: equal digests
        and idle links), so it is not a lucky instant."""

    @abstractmethod
    def text(self, replica: str, doc: str) -> str:
        """Text document ``doc`` of ``replica`` ("" if absent)."""

    @abstractmethod
    def meta(self, replica: str) -> Any:
        """The metadata of ``replica`` as a plain JSON value (a dict);
        numbers compare by value (an engine may read 1 back as 1.0)."""

    @abstractmethod
    def kv_digest(self, replica: str, cache: str) -> str:
        """A hex digest of the bytes of KV cache ``cache`` as ``replica``
        holds them (rows in ``kv_rows`` order; "" if absent)."""

    @abstractmethod
    def state_bytes(self) -> int:
        """The smallest honest encoded size of the synchronisation state the
        largest replica keeps, in bytes: what it must hold to go on syncing
        (pycrdt: the GC'd document; Loro: the shallow snapshot at its current
        version; hybridsync: texts, every link's shadow and backup (each string once), the
        metadata document, KV pages and page tables)."""

    def state_bytes_full(self) -> int | None:
        """The full encoded state with history where the engine keeps one
        beside :meth:`state_bytes` (Loro's full snapshot); None otherwise."""
        return None
