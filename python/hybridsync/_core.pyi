"""Type stubs of the hybridsync._core extension module (checked by mypy.stubtest)."""

from collections.abc import Iterable, Sequence
from typing import Any, Literal, Protocol, TypeAlias, final, overload

from numpy.typing import NDArray
from typing_extensions import Buffer

_Buf: TypeAlias = Buffer | NDArray[Any]

__all__ = [
    "DELTA_FORMAT_VERSION",
    "DIFF_DELETE",
    "DIFF_EQUAL",
    "DIFF_INSERT",
    "PATCH_FORMAT_VERSION",
    "Delta",
    "Hunk",
    "PageGather",
    "Patch",
    "TextHashes",
    "__version__",
    "apply_patch",
    "audit_append",
    "audit_decode_entry",
    "audit_entry",
    "audit_entry_hash",
    "audit_hash",
    "audit_hash_parts",
    "audit_head_message",
    "audit_verify_chain",
    "decode_frame",
    "decode_frame_as",
    "diff",
    "encode_frame",
    "frame_checksum",
    "kv_apply_pages",
    "kv_dequantize",
    "kv_gather_pages",
    "kv_hash_pages",
    "kv_page_hash",
    "kv_plan_diff",
    "kv_quantize",
    "kv_row_bytes",
    "kv_scatter_pages",
    "kv_table_cut",
    "kv_table_hash",
    "kv_table_range_sum",
    "kv_table_set_pages",
    "kv_table_set_range",
    "kv_table_set_runs",
    "kv_verify_pages",
    "make_delta",
    "make_patch",
    "match",
    "patch_from_diffs",
]
__version__: str

DIFF_DELETE: Literal[-1]
DIFF_EQUAL: Literal[0]
DIFF_INSERT: Literal[1]
PATCH_FORMAT_VERSION: int
DELTA_FORMAT_VERSION: int

def diff(
    a: str,
    b: str,
    *,
    timeout: float = 1.0,
    cleanup: Literal["semantic", "efficiency", "none"] = "semantic",
    edit_cost: int = 4,
    checklines: bool = True,
) -> list[tuple[int, str]]: ...
def match(
    text: str,
    pattern: str,
    loc: int,
    *,
    threshold: float = 0.5,
    distance: int = 1000,
) -> int | None: ...
def make_patch(
    a: str,
    b: str,
    *,
    timeout: float = 1.0,
    edit_cost: int = 4,
    margin: int = 4,
) -> Patch: ...
def make_delta(a: str, b: str, *, timeout: float = 1.0, edit_cost: int = 4) -> Delta: ...
def patch_from_diffs(a: str, diffs: list[tuple[int, str]], *, margin: int = 4) -> Patch: ...
def apply_patch(
    patch: Patch,
    text: str,
    *,
    match_threshold: float = 0.5,
    match_distance: int = 1000,
    delete_threshold: float = 0.5,
    margin: int = 4,
    timeout: float = 1.0,
) -> tuple[str, list[bool]]: ...

@final
class Hunk:
    @property
    def start1(self) -> int: ...
    @property
    def start2(self) -> int: ...
    @property
    def length1(self) -> int: ...
    @property
    def length2(self) -> int: ...
    @property
    def diffs(self) -> list[tuple[int, str]]: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class Patch:
    def __len__(self) -> int: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...
    @property
    def hunks(self) -> list[Hunk]: ...
    def to_bytes(self) -> bytes: ...
    @staticmethod
    def from_bytes(data: bytes) -> Patch: ...
    def to_text(self) -> str: ...
    @staticmethod
    def from_text(text: str) -> Patch: ...
    def __reduce__(self) -> tuple[object, tuple[bytes]]: ...

@final
class Delta:
    def __len__(self) -> int: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...
    @property
    def ops(self) -> list[tuple[int, int | str]]: ...
    def apply(self, text: str) -> str | None: ...
    def to_bytes(self) -> bytes: ...
    @staticmethod
    def from_bytes(data: bytes) -> Delta: ...
    def __reduce__(self) -> tuple[object, tuple[bytes]]: ...

# -- KV-cache kernels: buffers are any C-contiguous buffer (numpy arrays, bytes) --

def kv_row_bytes(fmt: str, n: int, scale_type: str = "f16") -> int: ...
def kv_quantize(
    src: _Buf, src_type: str, n: int, fmt: str, dst: _Buf, scale_type: str = "f16"
) -> None: ...
def kv_dequantize(src: _Buf, fmt: str, n: int, dst: _Buf, scale_type: str = "f16") -> None: ...
def kv_hash_pages(
    buf: _Buf,
    heads: int,
    capacity: int,
    row_bytes: int,
    page_rows: int,
    rows: int,
    first: int,
    last: int,
    out: _Buf,
) -> None: ...
def kv_gather_pages(
    buf: _Buf,
    heads: int,
    capacity: int,
    row_bytes: int,
    page_rows: int,
    rows: int,
    head_index: _Buf,
    page_index: _Buf,
    offset: int = 0,
) -> bytes: ...

@final
class PageGather:
    """The rows a planned run sends, where they lie in one of a cache's
    tensors: the frame encoder copies them straight into the frame."""

    def __len__(self) -> int: ...
    def __bytes__(self) -> bytes: ...

def kv_verify_pages(
    payload: _Buf,
    heads: int,
    capacity: int,
    row_bytes: int,
    page_rows: int,
    rows: int,
    head_index: _Buf,
    page_index: _Buf,
    hashes: _Buf,
) -> None: ...
def kv_scatter_pages(
    buf: _Buf,
    heads: int,
    capacity: int,
    row_bytes: int,
    page_rows: int,
    rows: int,
    head_index: _Buf,
    page_index: _Buf,
    hashes: _Buf,
    payload: _Buf,
    offset: int = 0,
) -> None: ...
def kv_page_hash(data: _Buf) -> int: ...

# Page tables: u64 [rows, width] buffers; writes return the change of the sum.
def kv_table_range_sum(table: _Buf, rows: int, width: int, first: int, last: int) -> int: ...
def kv_table_set_range(table: _Buf, rows: int, width: int, first: int, block: _Buf) -> int: ...
def kv_table_cut(table: _Buf, rows: int, width: int, first: int, last: int) -> int: ...
def kv_table_set_pages(
    table: _Buf,
    rows: int,
    width: int,
    heads: int,
    row0: int,
    head_index: _Buf,
    page_index: _Buf,
    hashes: _Buf,
) -> tuple[int | None, int]: ...
def kv_table_set_runs(
    table: _Buf, rows: int, width: int, heads: int, runs: Iterable[_RunLike]
) -> tuple[int | None, int]: ...
def kv_apply_pages(
    tensors: Sequence[_Buf],
    heads: int,
    capacity: int,
    row_bytes: int,
    page_rows: int,
    rows: int,
    runs: Iterable[_RunLike],
    first_row: int,
    stale_page: int,
    table: _Buf,
    width: int,
) -> tuple[int, bool, int]: ...
def kv_table_hash(
    bufs: Sequence[_Buf],
    heads: int,
    capacity: int,
    row_bytes: int,
    page_rows: int,
    rows: int,
    first: int,
    last: int,
    table: _Buf,
    width: int,
) -> int: ...
@overload
def kv_plan_diff(
    mine: _Buf,
    acked: _Buf,
    rows: int,
    mine_width: int,
    acked_width: int,
    heads: int,
    first: int,
    pages: int,
    tokens: int,
    held: int,
    page_rows: int,
    row_bytes: int,
    tail_page: int | None,
    budget: int,
    acked_end: int,
    same_sum: bool,
    *,
    tensors: None = None,
    capacity: int = 0,
) -> tuple[list[tuple[int, int, bytes, bytes, bytes]], int, int, int | None, int, int] | None: ...
@overload
def kv_plan_diff(
    mine: _Buf,
    acked: _Buf,
    rows: int,
    mine_width: int,
    acked_width: int,
    heads: int,
    first: int,
    pages: int,
    tokens: int,
    held: int,
    page_rows: int,
    row_bytes: int,
    tail_page: int | None,
    budget: int,
    acked_end: int,
    same_sum: bool,
    *,
    tensors: Sequence[_Buf],
    capacity: int = 0,
) -> (
    tuple[list[tuple[int, int, bytes, bytes, bytes, PageGather]], int, int, int | None, int, int]
    | None
): ...

class _RunLike(Protocol):
    """A run of KV pages (``hybridsync.sync.frame.KVRun``)."""

    @property
    def layer(self) -> int: ...
    @property
    def kind(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def heads(self) -> _Buf: ...
    @property
    def pages(self) -> _Buf: ...
    @property
    def hashes(self) -> _Buf: ...
    @property
    def payload(self) -> _Buf | PageGather: ...

# -- the frame codec (hybridsync.sync.frame builds its dataclasses around it) --

class _EditLike(Protocol):
    @property
    def version(self) -> int: ...
    @property
    def raw(self) -> Buffer: ...

class _EntryLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> int: ...
    @property
    def ack(self) -> int: ...
    @property
    def local(self) -> int: ...
    @property
    def edits(self) -> Iterable[_EditLike]: ...
    @property
    def checksum(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def ref(self) -> int: ...

class _MetaLike(Protocol):
    @property
    def epoch(self) -> int: ...
    @property
    def kind(self) -> int: ...
    @property
    def a(self) -> Buffer: ...
    @property
    def b(self) -> Buffer: ...
    @property
    def epoch_id(self) -> int: ...

#: (format code, layers, kv_heads, head_dim, page_tokens, runtime record)
_GeometryTuple: TypeAlias = tuple[int, int, int, int, int, str]
#: (layer, kind, offset, heads, pages, hashes, payload): u32/u32/u64 LE buffers
#: and the pages' bytes (a buffer, or a PageGather of them where they lie)
_KVRunIn: TypeAlias = tuple[int, int, int, _Buf, _Buf, _Buf, _Buf | PageGather]
#: (name, kind, owner, uid, geometry, tokens, digest, flags, runs, table)
_KVEntryIn: TypeAlias = tuple[
    str, int, str, int, _GeometryTuple | None, int, int, int, Sequence[_KVRunIn], _Buf | None
]
#: (version, patch, raw)
_EditOut: TypeAlias = tuple[int, Delta | Patch, bytes]
#: (name, kind, ack, local, edits, checksum, text)
_EntryOut: TypeAlias = tuple[str, int, int, int, tuple[_EditOut, ...], int, str, int]
#: (epoch, kind, a, b, epoch_id)
_MetaOut: TypeAlias = tuple[int, int, bytes, bytes, int]
#: (layer, kind, offset, pages, heads_at, pages_at, hashes_at, payload_at, payload_len)
_KVRunOut: TypeAlias = tuple[int, int, int, int, int, int, int, int, int]
#: (name, kind, owner, uid, geometry, tokens, digest, flags, runs, (table_at, count))
_KVEntryOut: TypeAlias = tuple[
    str,
    int,
    str,
    int,
    _GeometryTuple | None,
    int,
    int,
    int,
    list[_KVRunOut],
    tuple[int, int] | None,
]

def encode_frame(
    sender: str,
    epoch: int,
    seq: int,
    reply: bool,
    resume: bool,
    entries: Iterable[_EntryLike],
    meta: _MetaLike | None,
    kv: Sequence[_KVEntryIn],
    *,
    rename: bool = False,
    compress_threshold: int = 1024,
    level: int = 3,
) -> bytes: ...
def frame_checksum(signed: bytes) -> int: ...
def decode_frame(
    data: bytes, *, max_bytes: int = 67108864, max_kv_bytes: int = 68719476736
) -> tuple[
    str,
    int,
    int,
    bool,
    bool,
    list[_EntryOut],
    _MetaOut | None,
    list[_KVEntryOut],
    bool,
]: ...
def decode_frame_as(
    data: bytes,
    types: tuple[type, type, type, type, tuple[Any, ...], tuple[Any, ...]],
    *,
    max_bytes: int = 67108864,
    max_kv_bytes: int = 68719476736,
    kv_types: tuple[type, type, type, tuple[Any, ...], tuple[Any, ...], Any, Any, Any]
    | None = None,
) -> tuple[Any, list[_KVEntryOut]]: ...

# -- the audit log (hybridsync.audit) --------------------------------------------

def audit_hash(data: _Buf) -> bytes: ...
def audit_hash_parts(parts: Sequence[_Buf], *, rows: tuple[int, int] | None = None) -> bytes: ...
def audit_entry(
    seq: int,
    time_ns: int,
    channel: int,
    kind: int,
    origin: int,
    subject: str,
    writer: str,
    via: str,
    writer_seq: int,
    content: bytes,
    prev: bytes,
) -> tuple[bytes, bytes]: ...
def audit_decode_entry(
    body: bytes,
) -> tuple[int, int, int, int, int, str, str, str, int, bytes, bytes]: ...
def audit_entry_hash(body: bytes) -> bytes: ...
def audit_verify_chain(
    buf: bytes, first_seq: int, prev: bytes
) -> tuple[int, bytes, str | None]: ...
def audit_head_message(replica: str, seq: int, head: bytes, time_ns: int) -> bytes: ...
def audit_append(
    entries: Sequence[tuple[int, int, int, int, int, str, str | None, str, int, str | bytes]],
    prev: bytes,
    claims: dict[tuple[str, str, bytes], str],
    texts: TextHashes | None = None,
) -> tuple[bytes, bytes, bytes]: ...

@final
class TextHashes:
    def __new__(cls, min_len: int = 65536, max_bytes: int = 67108864) -> TextHashes: ...
    def hash(self, name: str, text: str) -> bytes: ...
    def forget(self, name: str) -> None: ...
    @property
    def kept_bytes(self) -> int: ...
    def __len__(self) -> int: ...
