"""Type stubs of the hybridsync._core extension module (checked by mypy.stubtest)."""

from typing import Any, Literal, TypeAlias, final

from numpy.typing import NDArray
from typing_extensions import Buffer

_Buf: TypeAlias = Buffer | NDArray[Any]

__all__ = [
    "DIFF_DELETE",
    "DIFF_EQUAL",
    "DIFF_INSERT",
    "PATCH_FORMAT_VERSION",
    "Hunk",
    "Patch",
    "__version__",
    "apply_patch",
    "diff",
    "kv_dequantize",
    "kv_gather_pages",
    "kv_hash_pages",
    "kv_page_hash",
    "kv_quantize",
    "kv_row_bytes",
    "kv_scatter_pages",
    "kv_verify_pages",
    "make_patch",
    "match",
    "patch_from_diffs",
]
__version__: str

DIFF_DELETE: Literal[-1]
DIFF_EQUAL: Literal[0]
DIFF_INSERT: Literal[1]
PATCH_FORMAT_VERSION: int

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
