"""Damaged input to every loader raises only ``hybridsync.errors`` errors.

Property tests per loader: bit flips, truncation, edited headers, huge
declared sizes and deeply nested JSON. Each asserts that the loader either
returns or raises a :class:`HybridSyncError` (any other exception fails the
test), that the file it read is byte-for-byte unchanged, and, where a
declared size could make it allocate, that its memory stays small.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import sqlite3
import struct
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from unittest import mock

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridsync import KVCache, Link, Memory
from hybridsync.adapters.llama_cpp import from_llama_state, to_llama_state
from hybridsync.channels.events import Origin
from hybridsync.channels.meta import decode_state_vector
from hybridsync.cli.keys import MAX_SECRET_FILE_BYTES, load_secret
from hybridsync.errors import (
    CorruptionError,
    DecodeError,
    HybridSyncError,
    LimitExceededError,
    StorageError,
)
from hybridsync.store.sqlite import _sum
from hybridsync.traces import load_trace

_names = itertools.count()

#: JSON values that stand in for a header field: wrong types, huge and negative numbers.
WEIRD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**63, 2**64 - 1, 10**30, -1, 1e308]),
    st.text(max_size=8),
    st.sampled_from(["99999999999999", "4097", "-5", "1" * 5000, "F64", "U32", "zz"]),
    st.lists(st.integers(min_value=-(2**66), max_value=2**66), max_size=5),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
)


def _rng_cache(fmt: str, tokens: int) -> KVCache:
    rng = np.random.default_rng(7)
    cache = KVCache(2, 2, 64, fmt, 16, scale_type="bf16" if fmt == "mlx4" else "f16")
    k = rng.standard_normal((2, 2, tokens, 64)).astype(np.float32)
    cache.append(k, k * 0.5)
    return cache


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def cache_files(work: Path) -> dict[str, bytes]:
    out = {}
    for fmt, tokens in (("q4_0", 40), ("mlx4", 300), ("f16", 20)):
        path = work / f"base_{fmt}.safetensors"
        _rng_cache(fmt, tokens).save(path)
        out[fmt] = path.read_bytes()
    return out


def _loads_or_refuses(load: Callable[[Path], object], data: bytes, work: Path, suffix: str) -> Any:
    """Write ``data`` to a new file, load it, check the file did not change;
    the loaded object or the HybridSyncError raised."""
    path = work / f"f{next(_names)}{suffix}"
    path.write_bytes(data)
    try:
        return load(path)
    except HybridSyncError as exc:
        return exc
    finally:
        assert path.read_bytes() == data, "the loader changed the file it read"
        path.unlink()


@contextmanager
def _peak_allocation(limit: int) -> Iterator[None]:
    """Fail when Python and numpy allocate more than ``limit`` bytes at once."""
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit, f"{peak} bytes allocated for a small damaged file"


# -- mutations of a safetensors file ---------------------------------------------


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack_from("<Q", data)
    header: dict[str, Any] = json.loads(data[8 : 8 + n])
    return header, data[8 + n :]


def _join(header: object, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


#: Positions are drawn independently of the input's length (and reduced
#: modulo it), so that the examples Hypothesis stores replay on inputs whose
#: length differs between runs (random CRDT client ids, incarnations).
ANY_INDEX = st.integers(0, 2**32)


def _flip(data: bytes, flips: list[tuple[int, int]], prefix: int) -> bytes:
    """``data`` with bits flipped: ``(i, bit)`` flips in the first ``prefix``
    bytes for even ``i``, anywhere for odd ``i``."""
    out = bytearray(data)
    for i, bit in flips:
        at = (i // 2) % (min(prefix, len(out)) if i % 2 == 0 else len(out))
        out[at] ^= 1 << bit
    return bytes(out)


FLIPS = st.lists(st.tuples(ANY_INDEX, st.integers(0, 7)), min_size=1, max_size=8)


@st.composite
def bit_flips(draw: st.DrawFn, data: bytes) -> bytes:
    (n,) = struct.unpack_from("<Q", data)
    # Half in the length prefix and header, where a flip changes structure.
    return _flip(data, draw(FLIPS), 8 + n + 64)


@st.composite
def truncations(draw: st.DrawFn, data: bytes) -> bytes:
    return data[: draw(ANY_INDEX) % len(data)]


@st.composite
def header_edits(draw: st.DrawFn, data: bytes) -> bytes:
    header, body = _split(data)
    name = draw(st.sampled_from(sorted(header)))
    op = draw(st.sampled_from(["delete", "replace", "field", "meta", "length"]))
    if op == "delete":
        del header[name]
    elif op == "replace":
        header[name] = draw(WEIRD)
    elif op == "field" or (op == "meta" and name != "__metadata__"):
        entry = header[name]
        field = draw(st.sampled_from(sorted(entry)))
        entry[field] = draw(WEIRD)
    elif op == "meta":
        meta = header["__metadata__"]
        meta[draw(st.sampled_from(sorted(meta)))] = draw(WEIRD)
    else:
        raw = _join(header, body)
        length = draw(st.sampled_from([0, 1, 2**31, 2**63, 2**64 - 1, len(raw)]))
        return struct.pack("<Q", length) + raw[8:]
    return _join(header, body)


@st.composite
def huge_sizes(draw: st.DrawFn, data: bytes) -> bytes:
    """Declared shapes, offsets and counts far beyond the file, kept
    consistent with each other where the format lets them be."""
    header, body = _split(data)
    meta = header.get("__metadata__", {})
    huge = draw(st.sampled_from([2**20, 2**31, 2**40, 2**62, 10**12]))
    what = draw(st.sampled_from(["tokens", "layers", "shape", "offsets", "consistent"]))
    names = sorted(k for k in header if k != "__metadata__")
    name = draw(st.sampled_from(names))
    if what in ("tokens", "layers") and meta:
        meta[what] = str(huge)
    elif what == "shape":
        header[name]["shape"] = [huge, huge, 8]
    elif what == "offsets":
        header[name]["data_offsets"] = [0, huge]
    else:  # shape and offsets agree, only the file is too small for them
        header[name]["shape"] = [1, huge, 8]
        header[name]["data_offsets"] = [0, huge * 8]
    return _join(header, body)


@st.composite
def deep_json(draw: st.DrawFn, data: bytes) -> bytes:
    header, body = _split(data)
    depth = draw(st.integers(5, 200_000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    nested = opener * depth + "0" + closer * depth
    raw = json.dumps(header)[:-1] + ', "deep": ' + nested + "}"
    if draw(st.booleans()):  # the whole header is the nesting
        raw = nested
    encoded = raw.encode()
    return struct.pack("<Q", len(encoded)) + encoded + body


def _damage(data: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(
        bit_flips(data), truncations(data), header_edits(data), huge_sizes(data), deep_json(data)
    )


# -- KVCache.load -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["q4_0", "mlx4", "f16"])
@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_kvcache_load_raises_only_hybridsync_errors(
    cache_files: dict[str, bytes], work: Path, fmt: str, data: st.DataObject
) -> None:
    original = cache_files[fmt]
    damaged = data.draw(_damage(original))
    result = _loads_or_refuses(KVCache.load, damaged, work, ".safetensors")
    assert isinstance(result, (KVCache, HybridSyncError))


@pytest.mark.parametrize(
    "mutate",
    [huge_sizes, deep_json],
    ids=["huge-sizes", "deep-json"],
)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_kvcache_load_refuses_declared_sizes_before_allocating(
    cache_files: dict[str, bytes], work: Path, mutate: Any, data: st.DataObject
) -> None:
    damaged = data.draw(mutate(cache_files["q4_0"]))
    with _peak_allocation(8 << 20 if mutate is huge_sizes else 24 * len(damaged) + (8 << 20)):
        result = _loads_or_refuses(KVCache.load, damaged, work, ".safetensors")
    assert isinstance(result, DecodeError), result


def test_kvcache_load_names_what_is_wrong(cache_files: dict[str, bytes], work: Path) -> None:
    header, body = _split(cache_files["q4_0"])
    header["__metadata__"]["tokens"] = str(10**9)
    with pytest.raises(DecodeError, match=r"1000000000 tokens .* need"):
        _raise(_loads_or_refuses(KVCache.load, _join(header, body), work, ".safetensors"))
    nested = b"[" * 5000 + b"]" * 5000
    deep = struct.pack("<Q", len(nested)) + nested + body
    with pytest.raises(DecodeError, match="nested 5000 levels deep"):
        _raise(_loads_or_refuses(KVCache.load, deep, work, ".safetensors"))
    header, body = _split(cache_files["q4_0"])
    header["L0_K"]["data_offsets"] = [0, 2**64]
    with pytest.raises(DecodeError, match=r"L0_K.*outside"):
        _raise(_loads_or_refuses(KVCache.load, _join(header, body), work, ".safetensors"))
    with pytest.raises(DecodeError, match="not a regular file"):
        KVCache.load(Path("/dev/null"))


def _raise(result: object) -> None:
    if isinstance(result, BaseException):
        raise result


# -- mlx-lm prompt caches ---------------------------------------------------------------


@pytest.fixture(scope="module")
def prompt_cache_file(work: Path) -> bytes:
    pytest.importorskip("mlx_lm")
    from hybridsync.adapters.mlx_lm import save_prompt_cache

    path = work / "prompt.safetensors"
    save_prompt_cache(path, _rng_cache("mlx4", 40))
    return path.read_bytes()


@st.composite
def prompt_key_edits(draw: st.DrawFn, data: bytes) -> bytes:
    """Key names mlx's tree_unflatten would trust: huge list indices, deep
    dotted paths, foreign layer classes."""
    header, body = _split(data)
    name = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    new = draw(st.sampled_from(["0.999999999", "0." * 3000 + "0", "1.0.99999999999", "-5", "x.y"]))
    if draw(st.booleans()):
        header[new] = header.pop(name)
    else:
        header["__metadata__"]["1.0"] = draw(st.sampled_from(["KVCache", "RotatingKVCache", "x"]))
    return _join(header, body)


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_load_prompt_cache_raises_only_hybridsync_errors(
    prompt_cache_file: bytes, work: Path, data: st.DataObject
) -> None:
    from hybridsync.adapters.mlx_lm import load_prompt_cache

    damaged = data.draw(_damage(prompt_cache_file) | prompt_key_edits(prompt_cache_file))
    with _peak_allocation(64 << 20):
        _loads_or_refuses(load_prompt_cache, damaged, work, ".safetensors")


# -- llama.cpp sequence state --------------------------------------------------------


@pytest.fixture(scope="module")
def llama_states() -> list[bytes]:
    out = []
    for fmt, v_trans, prefix in (("q4_0", False, b""), ("f16", True, b"12345678")):
        out.append(to_llama_state(_rng_cache(fmt, 6), v_trans=v_trans, prefix=prefix))
    return out


@st.composite
def llama_damage(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    op = draw(st.sampled_from(["flip", "truncate", "field"]))
    if op == "truncate":
        return data[: draw(ANY_INDEX) % len(data)]
    if op == "flip":
        return _flip(data, draw(FLIPS), 200)
    # Overwrite a count or size with a huge value.
    at = draw(st.integers(0, 152))
    width = draw(st.sampled_from([4, 8]))
    out[at : at + width] = ((1 << (8 * width)) - draw(st.integers(1, 3))).to_bytes(width, "little")
    return bytes(out)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_from_llama_state_raises_only_hybridsync_errors(
    llama_states: list[bytes], data: st.DataObject
) -> None:
    state = data.draw(st.sampled_from(llama_states))
    damaged = data.draw(llama_damage(state))
    with _peak_allocation(4 * len(state) + (4 << 20)), suppress(HybridSyncError):
        from_llama_state(damaged, kv_heads=2, head_dim=64)


# -- the durable store ---------------------------------------------------------------


@pytest.fixture(scope="module")
def replica(work: Path) -> tuple[bytes, str]:
    """A durable replica's file (text, metadata, a KV cache, a link) and its digest."""
    path = work / "replica.db"
    # The store's loader alone (the audit log beside it has its own damage
    # tests in tests/test_audit.py).
    m = Memory("a", path=path, fsync=False, audit=False)
    link = Link(m, "s")
    server = Link(Memory("s"), "a", role="server")
    m.text["doc"] = "hello world\n" * 50
    m.meta["k"] = [1, {"x": "y"}]
    m.kv["c"] = _rng_cache("q4_0", 20)
    for _ in range(50):
        up = link.outgoing()
        if up is not None:
            server.incoming(up)
        down = server.outgoing()
        if down is not None:
            link.incoming(down)
    digest = m.digest()
    m.close()
    return path.read_bytes(), digest


def _open_or_refuse(data: bytes, work: Path, digest: str | None = None) -> HybridSyncError | None:
    """Open a replica on a copy holding ``data``. Refused: the file must not
    have changed. Opened (damage SQLite tolerates, in unused space): it must
    hold exactly the content of ``digest``."""
    folder = work / f"r{next(_names)}"
    folder.mkdir()
    path = folder / "a.db"
    path.write_bytes(data)
    try:
        m = Memory("a", path=path, fsync=False, audit=False)
    except HybridSyncError as exc:
        assert path.read_bytes() == data, "a refused replica file was changed"
        assert [p.name for p in folder.iterdir()] == ["a.db"]
        return exc
    else:
        try:
            assert digest is None or m.digest() == digest, "damage changed the content served"
        finally:
            m.close()
        return None
    finally:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()


@st.composite
def sqlite_damage(draw: st.DrawFn, data: bytes) -> bytes:
    if draw(st.booleans()):
        # Not to 0 bytes: SQLite (and Memory) take an empty file for a new one.
        return data[: 1 + draw(ANY_INDEX) % (len(data) - 1)]
    return _flip(data, draw(FLIPS), 200)  # half in the database header


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_store_open_raises_only_hybridsync_errors_and_leaves_the_file(
    replica: tuple[bytes, str], work: Path, data: st.DataObject
) -> None:
    original, digest = replica
    _open_or_refuse(data.draw(sqlite_damage(original)), work, digest)


MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.text(max_size=6)
    | st.binary(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=10,
)

#: (table, key column, key, content column, checksum parts before the content)
ROWS = [
    ("info", "key", "manifest", "value", ("info", "manifest")),
    ("info", "key", "meta", "value", ("info", "meta")),
    ("info", "key", "kv_deleted", "value", ("info", "kv_deleted")),
    ("info", "key", "incarnation", "value", ("info", "incarnation")),
    ("kv_caches", "name", "c", "header", ("kv", "c")),
    ("text", "name", "doc", "body", ("text", "doc")),
    ("meta_updates", "n", 0, "data", ("meta", "0")),
]


def _rewrite(data: bytes, work: Path, row: tuple[Any, ...], content: bytes) -> bytes:
    """``data`` with one row's content replaced and its checksum recomputed
    (what a file written by something else than hybridsync could hold)."""
    table, key_col, key, col, parts = row
    path = work / f"w{next(_names)}.db"
    path.write_bytes(data)
    db = sqlite3.connect(path)
    db.execute(
        f"UPDATE {table} SET {col} = ?, sum = ? WHERE {key_col} = ?",
        (content, _sum(*parts, content), key),
    )
    db.commit()
    db.close()
    out = path.read_bytes()
    path.unlink()
    return out


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_store_rows_with_valid_checksums_but_foreign_content_are_corruption(
    replica: tuple[bytes, str], work: Path, data: st.DataObject
) -> None:
    row = data.draw(st.sampled_from(ROWS))
    if data.draw(st.booleans()):
        content = msgpack.packb(data.draw(MSGPACK_VALUES), use_bin_type=True)
    else:
        content = data.draw(st.binary(max_size=40))
    damaged = _rewrite(replica[0], work, row, content)
    result = _open_or_refuse(damaged, work)
    assert result is None or isinstance(result, CorruptionError), result


def test_store_refuses_a_huge_declared_kv_cache_before_allocating(
    replica: tuple[bytes, str], work: Path
) -> None:
    replica_file = replica[0]
    db_path = work / "probe.db"
    db_path.write_bytes(replica_file)
    db = sqlite3.connect(db_path)
    ((header,),) = db.execute("SELECT header FROM kv_caches WHERE name = 'c'").fetchall()
    db.close()
    db_path.unlink()
    h = msgpack.unpackb(header, raw=False)
    h["tokens"] = 2**40
    (kv_row,) = (row for row in ROWS if row[0] == "kv_caches")
    damaged = _rewrite(replica_file, work, kv_row, msgpack.packb(h, use_bin_type=True))
    with _peak_allocation(16 << 20):
        result = _open_or_refuse(damaged, work)
    assert isinstance(result, CorruptionError)
    assert "declares 1099511627776 tokens" in str(result)


def test_store_leaves_another_applications_database_alone(work: Path) -> None:
    path = work / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (body TEXT)")
    db.execute("INSERT INTO notes VALUES ('mine')")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(StorageError, match="another application"):
        Memory("a", path=path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in work.glob("other.db*")) == ["other.db"]


# -- metadata from peers ---------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=64))
def test_decode_state_vector_raises_only_decode_errors(raw: bytes) -> None:
    try:
        sv = decode_state_vector(raw)
    except DecodeError:
        return
    assert all(c >= 0 and k >= 0 for c, k in sv.items())


@st.composite
def damaged_updates(draw: st.DrawFn) -> bytes:
    m = Memory("peer")
    m.meta["k"] = draw(st.lists(st.integers(-(2**53) + 1, 2**53 - 1), max_size=3))
    m.meta["t"] = {"x": draw(st.text(max_size=5))}
    update = _flip(m.meta.update_since(None), draw(FLIPS), 1 << 20)
    return update[: 1 + draw(ANY_INDEX) % len(update)]


@settings(max_examples=150, deadline=None)
@given(update=damaged_updates())
def test_damaged_metadata_updates_raise_only_hybridsync_errors(update: bytes) -> None:
    m = Memory("a")
    m.meta["mine"] = 1
    digest = m.digest()
    try:
        m.meta.apply_remote(update, Origin("remote", "peer"))
    except HybridSyncError:
        assert m.digest() == digest


#: A damaged update (found by the property above) that pycrdt refuses with
#: RuntimeError("block parent ... must be deleted or shared ref type").
PYCRDT_RUNTIME_ERROR = bytes.fromhex(
    "0105a8edb98ba8aab804002101016d0161012701016d0175020400a8edb98ba8aab804010568656c6c6f"
    "2701016d016e012800a8edb98ba8aab80405017a0175027c3f80000075027c4000000075017c40400000"
    "01a8edb98ba8aab804010001"
)


def test_a_metadata_update_pycrdt_refuses_with_runtime_error_is_a_decode_error() -> None:
    m = Memory("a")
    m.meta["mine"] = 1
    digest = m.digest()
    with pytest.raises(DecodeError):
        m.meta.apply_remote(PYCRDT_RUNTIME_ERROR, Origin("remote", "peer"))
    assert m.digest() == digest


# -- editing traces -----------------------------------------------------------------------

TRACE = {
    "startContent": "ab",
    "endContent": "xaby",
    "txns": [{"time": "t", "patches": [[0, 0, "x"]]}, {"patches": [[3, 0, "y"], [0, 0, ""]]}],
}


@st.composite
def damaged_traces(draw: st.DrawFn) -> bytes:
    trace: Any = json.loads(json.dumps(TRACE))
    op = draw(st.sampled_from(["field", "patch", "deep", "gzip", "bytes"]))
    if op == "field":
        key = draw(st.sampled_from(["startContent", "endContent", "txns", "extra"]))
        trace[key] = draw(WEIRD)
    elif op == "patch":
        trace["txns"][draw(st.integers(0, 1))]["patches"][0][draw(st.integers(0, 2))] = draw(WEIRD)
    elif op == "deep":
        depth = draw(st.integers(9, 100_000))
        raw = '{"txns": ' + "[" * depth + "]" * depth + "}"
        return gzip.compress(raw.encode(), mtime=0)
    compressed = gzip.compress(json.dumps(trace).encode(), mtime=0)
    if op == "gzip":
        flipped = _flip(compressed, draw(FLIPS), 1 << 20)
        return flipped[: draw(ANY_INDEX) % (len(flipped) + 1)]
    if op == "bytes":
        return gzip.compress(draw(st.binary(max_size=40)), mtime=0)
    return compressed


@contextmanager
def _trace_folder(work: Path) -> Iterator[Path]:
    folder = work / "traces"
    folder.mkdir(exist_ok=True)
    with mock.patch.dict(os.environ, {"HYBRIDSYNC_TRACES": str(folder)}):
        yield folder


@settings(max_examples=150, deadline=None)
@given(data=damaged_traces())
def test_load_trace_raises_only_hybridsync_errors(work: Path, data: bytes) -> None:
    with _trace_folder(work) as folder:
        name = f"t{next(_names)}"
        path = folder / f"{name}.json.gz"
        path.write_bytes(data)
        try:
            trace = load_trace(name)
            assert isinstance(trace.start, str) and all(
                isinstance(p, int) for txn in trace.txns for s in txn for p in s[:2]
            )
        except HybridSyncError:
            pass
        finally:
            assert path.read_bytes() == data
            path.unlink()


def test_load_trace_refuses_a_decompression_bomb(work: Path) -> None:
    bomb = gzip.compress(b'{"txns": [' + b" " * (64 << 20) + b"]}", compresslevel=9, mtime=0)
    with _trace_folder(work) as folder:
        (folder / "bomb.json.gz").write_bytes(bomb)
        # 64 MiB inflated from ~64 KiB; the limit is about 7 MiB.
        with _peak_allocation(32 << 20), pytest.raises(LimitExceededError, match="decompresses"):
            load_trace("bomb")
    assert load_trace_ok(work)


def load_trace_ok(work: Path) -> bool:
    with _trace_folder(work) as folder:
        (folder / "ok.json.gz").write_bytes(gzip.compress(json.dumps(TRACE).encode()))
        return load_trace("ok").replay() == TRACE["endContent"]


# -- secret files --------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(content=st.binary(max_size=MAX_SECRET_FILE_BYTES + 64))
def test_secret_files_raise_only_hybridsync_errors(work: Path, content: bytes) -> None:
    path = work / f"s{next(_names)}"
    path.write_bytes(content)
    path.chmod(0o600)
    try:
        assert load_secret("HYBRIDSYNC_TEST_UNSET", path) == content.strip()
        assert len(content.strip()) >= 16 and len(content) <= MAX_SECRET_FILE_BYTES
    except HybridSyncError:
        pass
    finally:
        assert path.read_bytes() == content
        path.unlink()


def test_a_huge_or_endless_secret_file_is_refused_after_a_few_bytes(work: Path) -> None:
    big = work / "big-secret"
    with open(big, "wb") as fh:
        fh.truncate(1 << 30)  # sparse: 1 GiB of zeros
    for path in (big, Path("/dev/zero")):
        with _peak_allocation(1 << 20), pytest.raises(HybridSyncError, match="longer than"):
            load_secret("HYBRIDSYNC_TEST_UNSET", path)
    with pytest.raises(HybridSyncError, match="cannot read"):
        load_secret("HYBRIDSYNC_TEST_UNSET", work)
