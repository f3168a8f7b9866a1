"""Quantized KV caches: codecs, paged storage and page tables.

A :class:`KVCache` holds the keys and values of ``layers`` attention layers
with ``kv_heads`` heads of ``head_dim`` values each, quantized as GGML
``"q4_0"`` / ``"q8_0"`` (llama.cpp) or MLX affine 4-bit, groups of 64
(``"mlx4"``, mlx-lm's ``QuantizedKVCache``). Storage per (layer, K|V) is one
``[kv_heads, capacity, row_bytes]`` byte array: one quantized row per token
and head. A **page** is ``page_tokens`` consecutive rows of one head of one
(layer, K|V); appending tokens leaves every earlier row byte-identical, so
only the pages that gained rows change.

Each cache keeps a table of xxh3-64 page hashes, refreshed lazily and only
for the pages written since the last refresh (O(changed), not O(cache)).
Links mirror a cache by comparing that table against a per-link table of
what the peer holds and sending only the pages that differ
(``docs/protocol.md`` section 6.10). :meth:`KVCache.scan` rehashes everything
and catches memory changed behind the API's back.

Values must be finite: NaN or infinity in keys or values raise
:class:`~hybridsync.errors.InvalidArgumentError` and change nothing (the
reference quantizers disagree on what to make of them). Quantization is
bit-exact with llama.cpp's reference quantizer / the ``gguf`` package (Q4_0,
Q8_0; the ``gguf`` package differs only in the sign of an all-zero Q4_0
block's scale, where llama.cpp is followed) and with ``mlx.core.quantize``
(mlx4); see ``tests/test_kv_codecs.py``. Values that overflow the cache's
scale type when rounded to it are refused too.

**One writer per cache.** The replica that assigns a cache to
``memory.kv[name]`` owns it; mirrors on other replicas are read-only
(:class:`~hybridsync.errors.OwnershipError`). When two replicas create
same-named caches, the one whose owner id sorts first (Python string order)
wins on every replica: the other cache is replaced by a mirror of the
winner, the loser's :class:`KVCache` object refuses further writes, and the
conflict is recorded in ``memory.kv.conflicts``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import numpy as np

from hybridsync._core import (
    kv_apply_pages,
    kv_dequantize,
    kv_gather_pages,
    kv_hash_pages,
    kv_plan_diff,
    kv_quantize,
    kv_row_bytes,
    kv_table_cut,
    kv_table_hash,
    kv_table_range_sum,
    kv_table_set_pages,
    kv_table_set_range,
    kv_table_set_runs,
)
from hybridsync.channels.checks import check_encodable
from hybridsync.channels.events import ChangeBus, KVEvent, Origin, Subscription
from hybridsync.errors import InvalidArgumentError, OwnershipError

_T = TypeVar("_T")

__all__ = [
    "FORMATS",
    "KVCache",
    "KVCaches",
    "KVConflict",
    "KVPort",
    "dequantize",
    "quantize",
]

#: Quantized formats a cache can use.
FORMATS = ("q4_0", "q8_0", "f16", "mlx4")
_SCALE_TYPES = ("f16", "bf16", "f32")
_GROUP = {"q4_0": 32, "q8_0": 32, "f16": 1, "mlx4": 64}
_MAX_LAYERS = 4096
_MAX_HEADS = 4096
_MAX_HEAD_DIM = 1 << 16
_MAX_PAGE_TOKENS = 1 << 16
#: Bytes of one page at most: a page must fit in one frame with room to spare.
MAX_PAGE_BYTES = 16 << 20
#: The largest runtime record of a geometry (UTF-8 bytes).
MAX_RUNTIME_BYTES = 4096
_MASK64 = (1 << 64) - 1
_U64 = np.uint64


# -- float inputs -------------------------------------------------------------


def _f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (nearest, ties to even), as raw bits."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    out: np.ndarray = (rounded >> np.uint32(16)).astype(np.uint16)
    return out


def _bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    out: np.ndarray = (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return out


def _float_input(x: Any, what: str) -> tuple[np.ndarray, str]:
    """``x`` as a C-contiguous numpy array and its float type name: float32
    and float16 as such, bfloat16 (mlx, or numpy with ml_dtypes) as uint16 bits."""
    if type(x).__module__.startswith("mlx"):
        import mlx.core as mx

        if x.dtype == mx.bfloat16:
            return np.ascontiguousarray(np.array(x.view(mx.uint16))), "bf16"
        if x.dtype in (mx.float16, mx.float32):
            arr = np.ascontiguousarray(np.array(x))
            return arr, "f16" if arr.dtype == np.float16 else "f32"
        raise InvalidArgumentError(f"{what} must be float16, bfloat16 or float32, got {x.dtype}")
    if not isinstance(x, np.ndarray):
        if not hasattr(x, "__array__"):
            raise InvalidArgumentError(f"{what} must be an array, got {type(x).__name__}")
        x = np.asarray(x)
    if x.dtype == np.float32:
        return np.ascontiguousarray(x), "f32"
    if x.dtype == np.float16:
        return np.ascontiguousarray(x), "f16"
    if x.dtype.name == "bfloat16" and x.dtype.itemsize == 2:
        return np.ascontiguousarray(x).view(np.uint16), "bf16"
    raise InvalidArgumentError(f"{what} must be float16, bfloat16 or float32, got {x.dtype}")


def _cast(arr: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Convert raw values between float types (bf16 as uint16 bits); refuses
    non-finite values and values the target type cannot hold."""
    if src == dst:
        return arr
    f32 = _bf16_bits_to_f32(arr) if src == "bf16" else arr.astype(np.float32)
    if not np.isfinite(f32).all():
        raise InvalidArgumentError("values must be finite: KV caches hold finite values")
    if dst == "bf16":
        out = _f32_to_bf16_bits(f32)
        finite = (out & np.uint16(0x7F80)) != np.uint16(0x7F80)
    else:
        with np.errstate(over="ignore"):
            out = f32.astype(np.float16 if dst == "f16" else np.float32)
        finite = np.isfinite(out)
    if not finite.all():
        raise InvalidArgumentError(f"values overflow the cache's scale type {dst}")
    return out


def _row_bytes(fmt: str, head_dim: int, scale_type: str) -> int:
    return kv_row_bytes(fmt, head_dim, scale_type)


# -- standalone codecs --------------------------------------------------------


def quantize(x: Any, fmt: str, *, scale_type: str | None = None) -> np.ndarray:
    """Quantize the last axis of ``x`` (float16, bfloat16 or float32).

    Returns raw quantized rows, ``uint8`` shaped ``[..., row_bytes]``: for
    ``"q4_0"`` / ``"q8_0"`` the GGML blocks (what ``gguf.quants.quantize``
    returns); for ``"mlx4"`` the packed codes, then the scales, then the
    biases of each row (split them with :func:`mlx4_parts`). ``scale_type``
    (mlx4 only) defaults to the input's type, like ``mlx.core.quantize``.
    """
    _check_format(fmt)
    arr, src = _float_input(x, "x")
    if arr.ndim == 0:
        raise InvalidArgumentError("x must have at least one axis")
    n = arr.shape[-1]
    st = src if scale_type is None else scale_type
    if st not in _SCALE_TYPES:
        raise InvalidArgumentError(f"scale_type must be one of {_SCALE_TYPES}, got {st!r}")
    if fmt == "mlx4" and st != src:
        arr, src = _cast(arr, src, st), st
    rb = _row_bytes(fmt, n, st)
    out = np.empty((*arr.shape[:-1], rb), dtype=np.uint8)
    kv_quantize(arr.reshape(-1).view(np.uint8), src, n, fmt, out.reshape(-1), st)
    return out


def dequantize(q: np.ndarray, fmt: str, n: int, *, scale_type: str = "f16") -> np.ndarray:
    """Inverse of :func:`quantize`: rows of ``n`` float32 values."""
    _check_format(fmt)
    if not isinstance(q, np.ndarray) or q.dtype != np.uint8:
        raise InvalidArgumentError("quantized rows are a uint8 numpy array")
    q = np.ascontiguousarray(q)
    rb = _row_bytes(fmt, n, scale_type)
    if q.ndim == 0 or q.shape[-1] != rb:
        raise InvalidArgumentError(f"quantized rows of {n} {fmt} values have {rb} bytes")
    out = np.empty((*q.shape[:-1], n), dtype=np.float32)
    kv_dequantize(q.reshape(-1), fmt, n, out.reshape(-1), scale_type)
    return out


def mlx4_parts(rows: np.ndarray, head_dim: int, scale_type: str) -> tuple[np.ndarray, ...]:
    """Views of mlx4 rows as mlx's three arrays: ``uint32`` codes
    ``[..., head_dim/8]``, scales and biases ``[..., head_dim/64]``
    (float16 / float32, or uint16 bits for bf16)."""
    half = head_dim // 2
    groups = head_dim // 64
    dt = {"f16": np.float16, "bf16": np.uint16, "f32": np.float32}[scale_type]
    size = np.dtype(dt).itemsize
    w = rows[..., :half].view(np.uint32)
    s = rows[..., half : half + groups * size].view(dt)
    b = rows[..., half + groups * size :].view(dt)
    return w, s, b


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise InvalidArgumentError(f"unknown KV format {fmt!r}: use one of {FORMATS}")


# -- page tables --------------------------------------------------------------

_M1 = _U64(0x9E3779B97F4A7C15)
_U32 = np.dtype(np.uint32)


class PageTable:
    """Page hashes ``[layers, 2, heads, pages]`` (0 = no page) and a digest
    maintained incrementally: the sum of the keyed mixes of every hash
    (``hybridsync_core::kv::table``; every write returns the change of the
    sum, so its cost follows the pages written, not the table)."""

    __slots__ = ("_end", "_rows", "_sum", "hashes", "heads", "layers", "tokens")

    def __init__(self, layers: int, heads: int, pages: int = 0) -> None:
        self.layers = layers
        self.heads = heads
        self.tokens = 0
        self.hashes = np.zeros((layers, 2, heads, max(pages, 1)), dtype=_U64)
        self._rows = layers * 2 * heads
        self._sum = 0
        #: Every page from here on is 0 (none): cuts and copies stop here,
        #: so their cost follows the pages held, not the capacity reserved.
        self._end = 0

    def copy(self) -> PageTable:
        t = PageTable(self.layers, self.heads)
        t.hashes = self.hashes[..., : max(self._end, 1)].copy()
        t.tokens = self.tokens
        t._sum = self._sum
        t._end = self._end
        return t

    def _range_sum(self, first: int, last: int) -> int:
        width = self.hashes.shape[-1]
        last = min(last, width)
        if last <= first:
            return 0
        return kv_table_range_sum(self.hashes, self._rows, width, first, last)

    def _add(self, delta: int) -> None:
        self._sum = (self._sum + delta) & _MASK64

    def reserve(self, pages: int) -> None:
        have = self.hashes.shape[-1]
        if pages > have:
            grown = np.zeros((*self.hashes.shape[:-1], max(pages, have + have // 2)), dtype=_U64)
            grown[..., :have] = self.hashes
            self.hashes = grown

    def set_range(self, first: int, block: np.ndarray) -> None:
        """Replace pages ``first .. first + block.shape[-1]``."""
        last = first + block.shape[-1]
        self.reserve(last)
        block = np.ascontiguousarray(block, dtype=_U64)
        self._add(kv_table_set_range(self.hashes, self._rows, self.hashes.shape[-1], first, block))
        self._end = max(self._end, last)

    def set_pages(
        self, layer: int, kind: int, heads: np.ndarray, pages: np.ndarray, hashes: np.ndarray
    ) -> None:
        """Set page ``pages[i]`` of head ``heads[i]`` of ``(layer, K|V)`` to
        ``hashes[i]``."""
        h = np.ascontiguousarray(heads, dtype=_U32)
        p = np.ascontiguousarray(pages, dtype=_U32)
        x = np.ascontiguousarray(hashes, dtype=_U64)
        row0 = (layer * 2 + kind) * self.heads
        while True:
            delta, end = kv_table_set_pages(
                self.hashes, self._rows, self.hashes.shape[-1], self.heads, row0, h, p, x
            )
            if delta is not None:
                break
            self.reserve(end)
        self._add(delta)
        self._end = max(self._end, end)

    def set_runs(self, runs: Sequence[Any]) -> None:
        """:meth:`set_pages` for every run of a PAGES entry (objects with
        ``layer``, ``kind``, ``heads``, ``pages`` and ``hashes``, as
        :class:`~hybridsync.sync.frame.KVRun`), in one core call."""
        while True:
            delta, end = kv_table_set_runs(
                self.hashes, self._rows, self.hashes.shape[-1], self.heads, runs
            )
            if delta is not None:
                break
            self.reserve(end)
        self._add(delta)
        self._end = max(self._end, end)

    def cut(self, pages: int) -> None:
        """Forget every page from ``pages`` on."""
        width = self.hashes.shape[-1]
        last = min(self._end, width)
        if pages < last:
            self._add(kv_table_cut(self.hashes, self._rows, width, pages, last))
            self._end = pages

    def hash_pages(self, cache: KVCache, first: int, last: int) -> None:
        """Rehash pages ``first .. last`` of ``cache`` (of this table's shape)."""
        self.reserve(last)
        g = cache.geometry
        self._add(
            kv_table_hash(
                cache._tensors,
                g.kv_heads,
                cache._capacity,
                cache._row_bytes,
                g.page_tokens,
                cache._tokens,
                first,
                last,
                self.hashes,
                self.hashes.shape[-1],
            )
        )
        self._end = max(self._end, last)

    def take_diff(
        self,
        mine: PageTable,
        first: int,
        tokens: int,
        page_tokens: int,
        row_bytes: int,
        tail_page: int | None,
        budget: int,
        cache: KVCache | None = None,
    ) -> tuple[list[tuple[Any, ...]], int, int, int | None] | None:
        """This table is what a peer holds of a cache whose table is ``mine``
        (``tokens`` tokens): plan the pages from ``first`` on that the peer
        lacks, earliest first while ``budget`` bytes last (``tail_page``: the
        peer's partial last page, sent from its first missing row), and
        record them as held. Returns None, changing nothing, when the peer
        holds everything; else ``(runs, pages, bytes, resume)``: runs
        ``(layer * 2 + kind, offset, heads, pages, hashes)`` (little-endian
        ``u32``, ``u32``, ``u64`` bytes) and the first page not sent when the
        budget ran out (else None). With ``cache`` (the cache whose table is
        ``mine``) each run also carries its payload: a
        :class:`~hybridsync._core.PageGather` of the rows where they lie,
        which the frame encoder copies straight into the frame."""
        pages = -(-tokens // page_tokens)
        self.reserve(max(pages, first))
        plan = kv_plan_diff(
            mine.hashes,
            self.hashes,
            self._rows,
            mine.hashes.shape[-1],
            self.hashes.shape[-1],
            self.heads,
            first,
            pages,
            tokens,
            self.tokens,
            page_tokens,
            row_bytes,
            tail_page,
            budget,
            self._end,
            self._sum == mine._sum,
            tensors=None if cache is None else cache._tensors,
            capacity=0 if cache is None else cache._capacity,
        )
        if plan is None:
            return None
        runs, sent, used, resume, delta, end = plan
        self.tokens = tokens
        self._add(delta)
        self._end = end
        return runs, sent, used, resume

    def same_pages(self, other: PageTable) -> bool:
        """True when both tables hold the same page hashes (their keyed sums
        agree; token counts aside)."""
        return self._sum == other._sum

    def digest(self) -> int:
        t = self.tokens * int(_M1) + 0x632BE59BD9B4E019
        return (self._sum + t) & 0xFFFFFFFFFFFFFFFF


# -- the cache ----------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """What defines a cache's layout (and travels with its pages).

    The frame decoder makes instances without running ``__init__``
    (``hybridsync.sync.frame``): the class stays plain (no ``__slots__``,
    no ``__post_init__``); the frame module checks its fields at import."""

    layers: int
    kv_heads: int
    head_dim: int
    fmt: str
    page_tokens: int
    scale_type: str
    #: What a restore must match: an opaque text written by the adapter that
    #: exported the cache (``hybridsync.adapters.runtime``; at most
    #: :data:`MAX_RUNTIME_BYTES` of UTF-8, empty for none).
    runtime: str = ""

    @property
    def row_bytes(self) -> int:
        return _row_bytes(self.fmt, self.head_dim, self.scale_type)

    def check(self) -> None:
        _check_format(self.fmt)
        for name, value, top in (
            ("layers", self.layers, _MAX_LAYERS),
            ("kv_heads", self.kv_heads, _MAX_HEADS),
            ("head_dim", self.head_dim, _MAX_HEAD_DIM),
            ("page_tokens", self.page_tokens, _MAX_PAGE_TOKENS),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= top:
                raise InvalidArgumentError(f"{name} must be an int in 1..{top}, got {value!r}")
        group = _GROUP[self.fmt]
        if self.head_dim % group:
            raise InvalidArgumentError(
                f"head_dim {self.head_dim} is not a multiple of {group} ({self.fmt} groups)"
            )
        try:
            runtime_bytes = len(self.runtime.encode()) if isinstance(self.runtime, str) else -1
        except UnicodeEncodeError:  # a lone surrogate
            runtime_bytes = -1
        if not 0 <= runtime_bytes <= MAX_RUNTIME_BYTES:
            raise InvalidArgumentError(
                f"runtime must be a str of at most {MAX_RUNTIME_BYTES} UTF-8 bytes"
            )
        if self.scale_type not in _SCALE_TYPES:
            raise InvalidArgumentError(
                f"scale_type must be one of {_SCALE_TYPES}, got {self.scale_type!r}"
            )
        if self.page_tokens * self.row_bytes > MAX_PAGE_BYTES:
            raise InvalidArgumentError(
                f"a page of {self.page_tokens} tokens x {self.row_bytes} bytes exceeds "
                f"{MAX_PAGE_BYTES} bytes: use fewer page_tokens"
            )


class KVCache:
    """A quantized, paged KV cache.

    Args:
        layers, kv_heads, head_dim: the model's attention geometry.
        fmt: ``"q4_0"``, ``"q8_0"`` (GGML, groups of 32), ``"f16"`` (plain
            half floats, llama.cpp's default cache type; finite inputs beyond
            its range round to infinity) or ``"mlx4"`` (MLX affine 4-bit,
            groups of 64).
        page_tokens: tokens per page (the unit of change detection and transfer).
        scale_type: mlx4 only: the type of scales and biases (``"f16"``,
            ``"bf16"`` or ``"f32"``; mlx uses the model's dtype). Inputs of
            another type are rounded to it first, as mlx-lm does. GGML
            formats always use ``"f16"`` (their block scale).
        runtime: what a restore must match (:attr:`Geometry.runtime`): the
            adapters write it; it travels with every mirror.
    """

    def __init__(
        self,
        layers: int,
        kv_heads: int,
        head_dim: int,
        fmt: str = "q4_0",
        page_tokens: int = 256,
        *,
        scale_type: str = "f16",
        runtime: str = "",
    ) -> None:
        if fmt != "mlx4":
            scale_type = "f16"  # GGML blocks hold fp16 scales; f16 rows have none
        g = Geometry(layers, kv_heads, head_dim, fmt, page_tokens, scale_type, runtime)
        g.check()
        self.geometry = g
        self._row_bytes = g.row_bytes
        self._tokens = 0
        self._capacity = 0
        self._bufs = [
            [np.zeros((kv_heads, 0, self._row_bytes), np.uint8) for _ in range(2)]
            for _ in range(layers)
        ]
        #: The same tensors in (layer, K|V) order, as the table kernels take them.
        self._tensors = [buf for layer in self._bufs for buf in layer]
        self._table = PageTable(layers, kv_heads)
        self._stale_from: int | None = None
        #: The replica's caches this one is attached to (as owned or mirror).
        self._caches: KVCaches | None = None
        self._name: str | None = None
        self.owner: str | None = None  # replica id of the writer, once attached
        self.uid = 0  # this cache's incarnation, set when its owner attaches it
        self._source: Any = None  # mirrors: the link channel their pages come through
        self._mirror = False
        self._superseded_by: str | None = None
        #: Mirrors: the last pages received completed the owner's cache.
        self._complete = False

    # -- geometry -----------------------------------------------------------

    @property
    def layers(self) -> int:
        return self.geometry.layers

    @property
    def kv_heads(self) -> int:
        return self.geometry.kv_heads

    @property
    def head_dim(self) -> int:
        return self.geometry.head_dim

    @property
    def fmt(self) -> str:
        return self.geometry.fmt

    @property
    def page_tokens(self) -> int:
        return self.geometry.page_tokens

    @property
    def tokens(self) -> int:
        """Tokens held."""
        return self._tokens

    @property
    def pages(self) -> int:
        """Pages per (layer, K|V, head)."""
        return -(-self._tokens // self.geometry.page_tokens)

    @property
    def row_bytes(self) -> int:
        """Bytes of one quantized token row of one head."""
        return self._row_bytes

    @property
    def nbytes(self) -> int:
        """Bytes of quantized data in use."""
        return self.layers * 2 * self.kv_heads * self._tokens * self._row_bytes

    @property
    def ready(self) -> bool:
        """True when the cache can be restored into a runtime: always for a
        cache this replica owns; for a mirror, once the pages last received
        completed the owner's cache (a larger change travels over several
        exchanges: until its last pages arrive, the mirror is partial)."""
        return not self._mirror or self._complete

    @property
    def writable(self) -> bool:
        """False for mirrors of another replica's cache and superseded caches."""
        return not (self._mirror or self._superseded_by)

    @property
    def page_table(self) -> PageTable:
        """The page-hash table as of the last :meth:`refresh` (links and the
        store compare against it). Read it, do not modify it; ``copy()`` it
        to keep it."""
        return self._table

    @property
    def source(self) -> Any:
        """Mirrors: the link part that fed the pages received last (None for
        a cache this replica owns, or one restored from disk)."""
        return self._source

    def rows(self, t0: int, t1: int) -> np.ndarray:
        """Rows ``t0 .. t1`` of every (layer, K|V, head): a copy, ``uint8``
        shaped ``[layers, 2, kv_heads, t1 - t0, row_bytes]``."""
        if not 0 <= t0 <= t1 <= self._tokens:
            raise InvalidArgumentError(f"rows {t0}..{t1} outside 0..{self._tokens}")
        return np.stack([np.stack([lay[0][:, t0:t1], lay[1][:, t0:t1]]) for lay in self._bufs])

    def gather_pages(
        self, layer: int, kind: int, heads: np.ndarray, pages: np.ndarray, offset: int
    ) -> bytes:
        """The rows of pages ``pages[i]`` of heads ``heads[i]`` of ``(layer,
        K|V)``, each from row ``offset`` of its page on, back to back (what a
        PAGES run carries)."""
        buf = self._bufs[layer][kind]
        payload: bytes = kv_gather_pages(
            buf,
            self.kv_heads,
            buf.shape[1],
            self._row_bytes,
            self.geometry.page_tokens,
            self._tokens,
            heads,
            pages,
            offset,
        )
        return payload

    def __repr__(self) -> str:
        g = self.geometry
        role = "mirror" if self._mirror else "superseded" if self._superseded_by else "owned"
        return (
            f"<KVCache {g.fmt} {g.layers}x{g.kv_heads}x{g.head_dim}, {self._tokens} tokens, "
            f"{self.nbytes} bytes, {role}>"
        )

    # -- writing --------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._superseded_by is not None:
            raise OwnershipError(
                f"KV cache {self._name!r} was superseded by the same-named cache of "
                f"{self._superseded_by!r} (its owner id sorts first); this object is read-only"
            )
        if self._mirror:
            raise OwnershipError(
                f"KV cache {self._name!r} is a mirror of {self.owner!r}'s cache: only its "
                "owner writes to it"
            )

    def _reserve(self, tokens: int) -> None:
        if tokens <= self._capacity:
            return
        p = self.geometry.page_tokens
        cap = max(tokens, self._capacity + self._capacity // 2)
        cap = -(-cap // p) * p
        for layer in self._bufs:
            for kind in range(2):
                old = layer[kind]
                new = np.zeros((self.kv_heads, cap, self._row_bytes), np.uint8)
                new[:, : self._tokens] = old[:, : self._tokens]
                layer[kind] = new
        self._tensors = [buf for layer in self._bufs for buf in layer]
        self._capacity = cap

    def _stale(self, token: int) -> None:
        """Rows from ``token`` on were written (or cut)."""
        page = token // self.geometry.page_tokens
        self._stale_from = page if self._stale_from is None else min(self._stale_from, page)
        if self._caches is not None and self._name is not None:
            self._caches._announce(self._name, page, None, Origin.LOCAL, first_token=token)

    def _quantize_all(self, x: Any, what: str) -> np.ndarray:
        g = self.geometry
        arr, src = _float_input(x, what)
        if arr.ndim != 4 or arr.shape[0] != g.layers or arr.shape[1] != g.kv_heads:
            raise InvalidArgumentError(
                f"{what} must be shaped [layers={g.layers}, kv_heads={g.kv_heads}, "
                f"n_new, head_dim={g.head_dim}], got {list(arr.shape)}"
            )
        if arr.shape[3] != g.head_dim:
            raise InvalidArgumentError(
                f"{what} has head_dim {arr.shape[3]}, the cache {g.head_dim}"
            )
        if g.fmt == "mlx4" and src != g.scale_type:
            arr, src = _cast(arr, src, g.scale_type), g.scale_type
        out = np.empty((*arr.shape[:3], self._row_bytes), np.uint8)
        kv_quantize(
            arr.reshape(-1).view(np.uint8), src, g.head_dim, g.fmt, out.reshape(-1), g.scale_type
        )
        return out

    def append(self, keys: Any, values: Any) -> None:
        """Quantize and append ``n_new`` tokens.

        ``keys`` and ``values``: float16, bfloat16 or float32 arrays (numpy
        or mlx) shaped ``[layers, kv_heads, n_new, head_dim]``. Raises
        InvalidArgumentError (shape, dtype, non-finite value) or
        OwnershipError (not the owner); on error nothing changes.
        """
        self._check_writable()
        qk = self._quantize_all(keys, "keys")
        qv = self._quantize_all(values, "values")
        if qk.shape[2] != qv.shape[2]:
            raise InvalidArgumentError(f"keys hold {qk.shape[2]} new tokens, values {qv.shape[2]}")
        n = qk.shape[2]
        if n == 0:
            return
        self._write_rows(self._tokens, qk, qv)

    def _write_rows(self, t0: int, qk: np.ndarray, qv: np.ndarray) -> None:
        n = qk.shape[2]
        self._reserve(t0 + n)
        for li, layer in enumerate(self._bufs):
            layer[0][:, t0 : t0 + n] = qk[li]
            layer[1][:, t0 : t0 + n] = qv[li]
        self._tokens = max(self._tokens, t0 + n)
        self._stale(t0)

    def append_quantized(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Append already-quantized rows, ``uint8`` shaped
        ``[layers, kv_heads, n_new, row_bytes]`` (runtime adapters use this)."""
        self._check_writable()
        g = self.geometry
        want = (g.layers, g.kv_heads)
        for what, q in (("keys", keys), ("values", values)):
            if (
                not isinstance(q, np.ndarray)
                or q.dtype != np.uint8
                or q.ndim != 4
                or q.shape[:2] != want
                or q.shape[3] != self._row_bytes
            ):
                raise InvalidArgumentError(
                    f"quantized {what} must be uint8 [layers={g.layers}, kv_heads={g.kv_heads}, "
                    f"n_new, row_bytes={self._row_bytes}]"
                )
        if keys.shape[2] != values.shape[2]:
            raise InvalidArgumentError("quantized keys and values differ in token count")
        if keys.shape[2]:
            self._write_rows(self._tokens, keys, values)

    def truncate(self, tokens: int) -> None:
        """Keep the first ``tokens`` tokens (0 <= tokens <= self.tokens)."""
        self._check_writable()
        self._truncate(tokens)

    def _truncate(self, tokens: int) -> None:
        is_int = isinstance(tokens, int) and not isinstance(tokens, bool)
        if not is_int or not 0 <= tokens <= self._tokens:
            raise InvalidArgumentError(f"truncate to 0..{self._tokens} tokens, got {tokens!r}")
        if tokens == self._tokens:
            return
        for layer in self._bufs:
            for buf in layer:
                buf[:, tokens : self._tokens] = 0
        self._tokens = tokens
        self._stale(tokens)

    # -- reading ----------------------------------------------------------------

    def _kind(self, kind: str) -> int:
        if kind not in ("k", "v"):
            raise InvalidArgumentError(f"kind must be 'k' or 'v', got {kind!r}")
        return 0 if kind == "k" else 1

    def _layer(self, layer: int) -> int:
        if not isinstance(layer, int) or not 0 <= layer < self.layers:
            raise InvalidArgumentError(f"layer must be in 0..{self.layers - 1}, got {layer!r}")
        return layer

    def quantized(self, layer: int, kind: str = "k") -> np.ndarray:
        """A read-only, zero-copy view of the quantized rows of one layer:
        ``uint8 [kv_heads, tokens, row_bytes]``."""
        buf = self._bufs[self._layer(layer)][self._kind(kind)]
        # Through a read-only buffer: the view cannot be made writable again.
        flat: Any = buf.reshape(-1)
        ro = np.frombuffer(memoryview(flat).toreadonly(), dtype=np.uint8)
        return ro.reshape(buf.shape)[:, : self._tokens]

    def mlx_arrays(self, layer: int, kind: str = "k") -> tuple[np.ndarray, ...]:
        """mlx4 only: zero-copy views ``(codes uint32 [H, T, D/8], scales
        [H, T, D/64], biases [H, T, D/64])`` (bf16 as uint16 bits)."""
        if self.fmt != "mlx4":
            raise InvalidArgumentError(f"mlx_arrays needs an mlx4 cache, this one is {self.fmt}")
        return mlx4_parts(self.quantized(layer, kind), self.head_dim, self.geometry.scale_type)

    def _dequantized(self, layer: int, kind: str) -> np.ndarray:
        rows = np.ascontiguousarray(self.quantized(layer, kind))
        return dequantize(rows, self.fmt, self.head_dim, scale_type=self.geometry.scale_type)

    def keys(self, layer: int) -> np.ndarray:
        """Dequantized keys of one layer, float32 ``[kv_heads, tokens, head_dim]``."""
        return self._dequantized(layer, "k")

    def values(self, layer: int) -> np.ndarray:
        """Dequantized values of one layer, float32 ``[kv_heads, tokens, head_dim]``."""
        return self._dequantized(layer, "v")

    # -- page hashes ------------------------------------------------------------

    def _hash_range(self, first: int, last: int) -> np.ndarray:
        g = self.geometry
        out = np.zeros((g.layers, 2, g.kv_heads, max(last - first, 0)), dtype=_U64)
        if last <= first:
            return out
        tmp = np.empty((g.kv_heads, last - first), dtype=_U64)
        for li, layer in enumerate(self._bufs):
            for kind in range(2):
                buf = layer[kind]
                kv_hash_pages(
                    buf.reshape(-1),
                    g.kv_heads,
                    buf.shape[1],
                    self._row_bytes,
                    g.page_tokens,
                    self._tokens,
                    first,
                    last,
                    tmp,
                )
                out[li, kind] = tmp
        return out

    def refresh(self) -> int | None:
        """Rehash the pages written since the last refresh. Returns the first
        rehashed page, or None when nothing was stale."""
        first = self._stale_from
        if first is None:
            return None
        self._stale_from = None
        pages = self.pages
        self._table.cut(pages)
        self._table.tokens = self._tokens
        if first < pages:
            self._table.hash_pages(self, first, pages)
        return first

    def page_hashes(self) -> np.ndarray:
        """The page-hash table ``uint64 [layers, 2, kv_heads, pages]`` (0 = no
        page), refreshed; a copy."""
        self.refresh()
        table: np.ndarray = self._table.hashes[..., : self.pages].copy()
        return table

    def digest(self) -> int:
        """A 64-bit digest of the page-hash table and token count."""
        self.refresh()
        return self._table.digest()

    def scan(self) -> int:
        """Rehash every page and compare with the table: catches memory
        changed behind the API's back. Changed pages are marked for sending
        again; returns how many changed."""
        self.refresh()
        pages = self.pages
        fresh = self._hash_range(0, pages)
        changed = fresh != self._table.hashes[..., :pages]
        count = int(changed.sum())
        if count:
            first = int(np.nonzero(changed.any(axis=(0, 1, 2)))[0][0])
            self._table.set_range(0, fresh)
            if self._caches is not None and self._name is not None:
                self._caches._announce(
                    self._name,
                    first,
                    None,
                    Origin.LOCAL,
                    first_token=first * self.geometry.page_tokens,
                )
        return count

    # -- mirrors (used by links) ------------------------------------------------

    def _apply(
        self, e: Any, source: Any, origin: Origin, complete_digest: int | None = None
    ) -> bool:
        """Apply a decoded (hash-verified) PAGES entry fed through ``source``
        (a link's KV channel); returns True when page tails did not complete
        our pages (divergence). ``complete_digest``: the owner's digest when
        these pages complete its cache."""
        g = self.geometry
        old = self._tokens
        if e.tokens < old:
            for layer in self._bufs:
                for buf in layer:
                    buf[:, e.tokens : old] = 0
        self._reserve(e.tokens)
        self._tokens = e.tokens
        pages = self.pages
        table = self._table
        table.cut(pages)
        table.tokens = e.tokens
        table.reserve(pages)
        stale = self._stale_from
        try:
            # One core call: every run checked and written (whole pages were
            # verified while decoding; tails that do not complete our pages
            # -- our first rows differ from the sender's, divergence -- are
            # left as they are, and the digest check after this entry asks
            # for the sender's pages again), and the table brought up to
            # date: written pages take the hashes just checked, the others
            # from the first row touched on are hashed.
            first_token, diverged, delta = kv_apply_pages(
                self._tensors,
                g.kv_heads,
                self._capacity,
                self._row_bytes,
                g.page_tokens,
                e.tokens,
                e.runs,
                min(old, e.tokens),
                pages if stale is None else stale,
                table.hashes,
                table.hashes.shape[-1],
            )
        except BaseException:
            self._stale_from = 0  # some runs may be written: rehash all
            raise
        table._add(delta)
        table._end = max(table._end, pages)
        self._stale_from = None
        self._source = source
        first = first_token // g.page_tokens
        self._complete = (
            complete_digest is not None and not diverged and table.digest() == complete_digest
        )
        if self._caches is not None and self._name is not None:
            self._caches._announce(self._name, first, source, origin, first_token=first_token)
        return diverged

    # -- persistence -----------------------------------------------------------

    def save(self, path: Any) -> None:
        """Write the cache to a safetensors file, atomically (temp file + rename)."""
        from hybridsync.channels.kvfile import save_cache

        save_cache(self, path)

    @classmethod
    def load(cls, path: Any) -> KVCache:
        """Read a cache written by :meth:`save` (or an agent-memory mlx4 file)."""
        from hybridsync.channels.kvfile import load_cache

        return load_cache(path)


# -- memory.kv ----------------------------------------------------------------


@dataclass(frozen=True)
class KVConflict:
    """Two replicas created same-named caches; ``winner``'s was kept."""

    name: str
    winner: str
    loser: str


class KVCaches(MutableMapping[str, KVCache]):
    """The KV caches of a replica (``memory.kv``).

    ``memory.kv[name] = cache`` makes this replica the cache's owner (its
    only writer) and mirrors it over every link; caches owned elsewhere
    appear here as read-only mirrors. ``del memory.kv[name]`` (owner only)
    deletes it everywhere.
    """

    def __init__(self, replica_id: str, changes: ChangeBus) -> None:
        self.replica_id = replica_id
        self._changes = changes
        self._caches: dict[str, KVCache] = {}
        #: Deleted caches: name -> (owner, uid). Pages of them are answered
        #: with a deletion instead of bringing them back.
        self._deleted: dict[str, tuple[str, int]] = {}
        #: Ownership conflicts seen, oldest first.
        self.conflicts: list[KVConflict] = []
        self._port = KVPort(self)

    @property
    def port(self) -> KVPort:
        """What the sync and store layers do to these caches beyond the user
        API (mirroring, applying pages, restoring from disk)."""
        return self._port

    def __getitem__(self, name: str) -> KVCache:
        return self._caches[name]

    @overload
    def get(self, name: str, /) -> KVCache | None: ...
    @overload
    def get(self, name: str, /, default: KVCache | _T) -> KVCache | _T: ...
    def get(self, name: str, /, default: Any = None) -> Any:
        # Links look caches up several times a cycle: no detour through
        # Mapping.get and __getitem__.
        return self._caches.get(name, default)

    def __setitem__(self, name: str, cache: KVCache) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError("KV cache names are non-empty str")
        check_encodable(name, "KV cache name")
        if not isinstance(cache, KVCache):
            raise InvalidArgumentError(
                f"memory.kv holds KVCache objects, got {type(cache).__name__}"
            )
        if cache._caches is not None:
            raise InvalidArgumentError(f"this KVCache is already attached to {cache._caches!r}")
        old = self._caches.get(name)
        rid = self.replica_id
        if old is not None and old.owner != rid:
            raise OwnershipError(
                f"KV cache {name!r} is {old.owner!r}'s here (a mirror): only its owner writes it"
            )
        if old is not None:
            old._caches = None
        cache._caches, cache._name, cache.owner = self, name, rid
        if not cache.uid:  # a new cache; one loaded from a file keeps its identity
            cache.uid = secrets.randbits(63) | 1
        cache._stale_from = 0
        self._caches[name] = cache
        self._deleted.pop(name, None)
        self._announce(name, 0, None, Origin.LOCAL, reset=True)

    def __delitem__(self, name: str) -> None:
        cache = self._caches[name]
        if cache.owner != self.replica_id:
            raise OwnershipError(f"KV cache {name!r} is a mirror of {cache.owner!r}'s cache")
        self._drop(name, None)

    def _drop(self, name: str, source: Any, origin: Origin = Origin.LOCAL) -> None:
        cache = self._caches.pop(name)
        cache._caches = None
        assert cache.owner is not None
        self._deleted[name] = (cache.owner, cache.uid)
        self._changes.kv_deleted(name, cache.owner, cache.uid, source, origin)

    def _announce(
        self,
        name: str,
        first_page: int,
        source: Any,
        origin: Origin,
        *,
        reset: bool = False,
        first_token: int = 0,
    ) -> None:
        self._changes.kv_changed(
            name, first_page, source, origin, reset=reset, first_token=first_token
        )

    def observe(
        self, cache: str | None, callback: Callable[[KVEvent], Any], *, replay: bool = False
    ) -> Subscription:
        """Call ``callback(event)`` (a :class:`~hybridsync.channels.events.KVEvent`)
        after each change set that changes KV cache ``cache`` (``None``: any
        cache); ``event.ready`` tells when a mirror can be restored. Returns
        a :class:`~hybridsync.channels.events.Subscription`. ``replay``:
        first call it once per matching cache held now (origin ``restore``)."""
        if cache is not None and not isinstance(cache, str):
            raise InvalidArgumentError(f"KV cache names are str, got {type(cache).__name__}")
        return self._changes.observe("kv", cache, callback, replay=replay)

    def __iter__(self) -> Iterator[str]:
        return iter(self._caches)

    def __len__(self) -> int:
        return len(self._caches)

    def __contains__(self, name: object) -> bool:
        return name in self._caches

    def __repr__(self) -> str:
        return f"<KVCaches of {self.replica_id!r}: {len(self._caches)} caches>"

    def _mirror(
        self,
        name: str,
        owner: str,
        uid: int,
        g: Geometry,
        source: Any,
        origin: Origin = Origin.LOCAL,
    ) -> KVCache:
        """A fresh read-only mirror of ``owner``'s cache ``uid`` (replacing
        any copy), fed through the link channel ``source``."""
        cache = KVCache(
            g.layers,
            g.kv_heads,
            g.head_dim,
            g.fmt,
            g.page_tokens,
            scale_type=g.scale_type,
            runtime=g.runtime,
        )
        cache._mirror = True
        cache._caches, cache._name, cache.owner = self, name, owner
        cache.uid, cache._source = uid, source
        old = self._caches.get(name)
        if old is not None:
            old._caches = None
        self._caches[name] = cache
        self._deleted.pop(name, None)
        self._announce(name, 0, source, origin, reset=True)
        return cache

    def _supersede(
        self, name: str, winner: str, uid: int, g: Geometry, source: Any, origin: Origin
    ) -> KVCache:
        """Replace our same-named cache by a mirror of ``winner``'s."""
        old = self._caches[name]
        old._superseded_by = winner
        cache = self._mirror(name, winner, uid, g, None, origin)
        cache._source = source
        return cache

    def scan(self) -> int:
        """:meth:`KVCache.scan` on every cache; returns the pages that changed."""
        return sum(c.scan() for c in self._caches.values())


class KVPort:
    """The sync and store layers' access to a replica's caches
    (``memory.kv.port``): what links do with another replica's caches
    (mirror them, apply verified pages, drop deleted ones) and what the store
    does when it reopens a replica. Agents use :class:`KVCaches` and
    :class:`KVCache` instead."""

    def __init__(self, caches: KVCaches) -> None:
        self._kv = caches

    # -- links

    def deleted(self, name: str) -> tuple[str, int] | None:
        """``(owner, uid)`` of the cache ``name`` deleted here last, or None."""
        return self._kv._deleted.get(name)

    def mirror(
        self, name: str, owner: str, uid: int, g: Geometry, source: Any, origin: Origin
    ) -> KVCache:
        """A fresh read-only mirror of ``owner``'s cache ``uid`` (replacing
        any copy), fed through the link part ``source``."""
        return self._kv._mirror(name, owner, uid, g, source, origin)

    def supersede(
        self, name: str, winner: str, uid: int, g: Geometry, source: Any, origin: Origin
    ) -> KVCache:
        """Replace our same-named cache by a mirror of ``winner``'s (its
        owner id sorts first); the old object turns read-only."""
        return self._kv._supersede(name, winner, uid, g, source, origin)

    def drop(self, name: str, source: Any, origin: Origin = Origin.LOCAL) -> None:
        """Delete cache ``name`` (a deletion that arrived, or a mirror that
        turned out to be of our own id)."""
        self._kv._drop(name, source, origin)

    @staticmethod
    def follow(cache: KVCache, uid: int, source: Any) -> None:
        """The owner's cache has a new incarnation ``uid``: the mirror keeps
        its rows (page tables tell what differs) and follows it."""
        cache.uid, cache._source = uid, source

    @staticmethod
    def apply(
        cache: KVCache, e: Any, source: Any, origin: Origin, complete_digest: int | None
    ) -> bool:
        """Apply a decoded, hash-verified PAGES entry to the mirror ``cache``;
        True when page tails did not complete its pages (divergence)."""
        return cache._apply(e, source, origin, complete_digest)

    def announce(
        self,
        name: str,
        first_page: int,
        source: Any,
        origin: Origin,
        *,
        reset: bool = False,
        first_token: int = 0,
    ) -> None:
        """Announce a change of cache ``name`` from ``first_page`` on."""
        self._kv._announce(name, first_page, source, origin, reset=reset, first_token=first_token)

    # -- the store

    def deletions(self) -> dict[str, tuple[str, int]]:
        """Every deletion remembered: name -> (owner, uid) (a copy)."""
        return dict(self._kv._deleted)

    def restore_deletions(self, deleted: dict[str, tuple[str, int]]) -> None:
        """Reopening: the deletions remembered when the replica was saved."""
        self._kv._deleted = dict(deleted)

    @staticmethod
    def blank(g: Geometry, tokens: int) -> KVCache:
        """Reopening: an unattached cache of ``tokens`` zero rows, to be
        filled with :meth:`put_rows` and attached with :meth:`attach`."""
        cache = KVCache(
            g.layers,
            g.kv_heads,
            g.head_dim,
            g.fmt,
            g.page_tokens,
            scale_type=g.scale_type,
            runtime=g.runtime,
        )
        cache._reserve(tokens)
        cache._tokens = tokens
        cache._stale_from = 0
        return cache

    @staticmethod
    def put_rows(cache: KVCache, t0: int, block: np.ndarray) -> None:
        """Reopening: rows ``t0 ..`` of every (layer, K|V, head) from ``block``
        (``uint8 [layers, 2, kv_heads, n, row_bytes]``), into a cache made
        by :meth:`blank`."""
        n = block.shape[3]
        for li, layer in enumerate(cache._bufs):
            layer[0][:, t0 : t0 + n] = block[li, 0]
            layer[1][:, t0 : t0 + n] = block[li, 1]
        cache._stale_from = 0

    def attach(self, name: str, cache: KVCache, owner: str, uid: int) -> None:
        """Reopening: hold ``cache`` as ``name`` again (owned, or a mirror
        of ``owner``'s), without announcing it."""
        kv = self._kv
        cache._caches, cache._name, cache.owner = kv, name, owner
        cache.uid = uid
        cache._mirror = owner != kv.replica_id
        kv._caches[name] = cache
