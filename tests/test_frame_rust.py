"""The frame codec of the Rust core (``_core.encode_frame``/``decode_frame``/
``decode_frame_as``, behind ``hybridsync.frame.encode_frame``/``decode_frame``)
against the Python reference codec (``hybridsync.frame._py_encode_frame``/
``_py_decode_frame``).

Frames built by either encoder are byte-identical (zstd-compressed bodies
included) and decode to the same frame with either decoder; corrupted or
random bytes make both decoders fail alike, and only with
``hybridsync.errors`` errors."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridsync import _core
from hybridsync import frame as F
from hybridsync.errors import DecodeError, HybridSyncError, LimitExceededError
from textcases import examples

#: The Python reference codec.
PY_ENCODE = F._py_encode_frame
PY_DECODE = F._py_decode_frame

FUZZ = settings(max_examples=examples(300), deadline=timedelta(minutes=1))

U64 = st.integers(0, (1 << 64) - 1)
U32 = st.integers(0, (1 << 32) - 1)
#: Format codes of the wire and the (fmt, scale_type) they stand for.
FMT_CODES = {("q4_0", "f16"): 1, ("q8_0", "f16"): 2, ("f16", "f16"): 6}
FMT_CODES.update({("mlx4", t): 3 + i for i, t in enumerate(("f16", "bf16", "f32"))})
FMT_NAMES = {v: k for k, v in FMT_CODES.items()}
GROUP = {"q4_0": 32, "q8_0": 32, "f16": 1, "mlx4": 64}


# -- the Rust codec, shaped as the Python one ------------------------------------


def _kv_tuple(e: F.KVEntry) -> Any:
    """A KV entry as the Rust encoder takes it (the frame module's own conversion)."""
    return F._kv_tuple(e)


def rust_encode(frame: F.Frame, *, compress_threshold: int = 1024, level: int = 3) -> bytes:
    return _core.encode_frame(
        frame.sender,
        frame.epoch,
        frame.seq,
        frame.reply,
        frame.resume,
        frame.entries,
        frame.meta,
        [_kv_tuple(e) for e in frame.kv],
        rename=frame.rename,
        compress_threshold=compress_threshold,
        level=level,
    )


def rust_decode(data: bytes, *, max_bytes: int = 64 << 20, max_kv_bytes: int = 1 << 36) -> F.Frame:
    sender, epoch, seq, reply, resume, entries, meta, kv, rename = _core.decode_frame(
        data, max_bytes=max_bytes, max_kv_bytes=max_kv_bytes
    )
    view = memoryview(data)
    kv_entries = []
    for name, kind, owner, uid, geo, tokens, digest, flags, runs, table in kv:
        if geo is None:
            kv_entries.append(F.KVEntry(name, F.KVKind(kind), owner, uid))
            continue
        code, layers, heads, dim, page, runtime = geo
        fmt, scale = FMT_NAMES[code]
        g = F.Geometry(layers, heads, dim, fmt, page, scale, runtime)
        arr = None
        if table is not None:
            at, count = table
            pages = -(-tokens // page)
            arr = np.frombuffer(view[at : at + 8 * count], "<u8").astype(np.uint64)
            arr = arr.reshape(layers, 2, heads, pages)
        kv_runs = tuple(
            F.KVRun(
                layer,
                rkind,
                np.frombuffer(view[h : h + 4 * n], "<u4").astype(np.uint32),
                np.frombuffer(view[p : p + 4 * n], "<u4").astype(np.uint32),
                np.frombuffer(view[x : x + 8 * n], "<u8").astype(np.uint64),
                view[at : at + size],
                offset,
            )
            for layer, rkind, offset, n, h, p, x, at, size in runs
        )
        kv_entries.append(
            F.KVEntry(name, F.KVKind(kind), owner, uid, g, tokens, digest, flags, kv_runs, arr)
        )
    return F.Frame(
        sender,
        epoch,
        seq,
        reply,
        tuple(
            F.Entry(n, F.Kind(k), a, lo, tuple(F.Edit(*e) for e in ed), c, t, ref)
            for n, k, a, lo, ed, c, t, ref in entries
        ),
        None if meta is None else F.MetaBlock(meta[0], F.MetaKind(meta[1]), *meta[2:]),
        tuple(kv_entries),
        resume,
        rename,
    )


def _by_code(kinds: Any) -> tuple[Any, ...]:
    members = {int(k): k for k in kinds}
    return tuple(members.get(code) for code in range(max(members) + 1))


TYPES = (F.Frame, F.Entry, F.Edit, F.MetaBlock, _by_code(F.Kind), _by_code(F.MetaKind))


def rust_decode_as(
    data: bytes, *, max_bytes: int = 64 << 20, max_kv_bytes: int = 1 << 36
) -> F.Frame:
    """``decode_frame_as``: the dataclasses built in Rust (KV entries as tuples,
    turned into objects by the tuple path above)."""
    frame, kv = _core.decode_frame_as(data, TYPES, max_bytes=max_bytes, max_kv_bytes=max_kv_bytes)
    assert type(frame) is F.Frame
    if kv:
        frame = dataclasses.replace(frame, kv=rust_decode(data, max_kv_bytes=max_kv_bytes).kv)
    return frame


def norm(frame: F.Frame) -> Any:
    """A frame as plain comparable values (numpy arrays and views as bytes)."""
    kv = tuple(
        (
            e.name,
            int(e.kind),
            e.owner,
            e.uid,
            e.geometry,
            e.tokens,
            e.digest,
            e.flags,
            tuple(
                (
                    r.layer,
                    r.kind,
                    r.offset,
                    r.heads.astype("<u4").tobytes(),
                    r.pages.astype("<u4").tobytes(),
                    r.hashes.astype("<u8").tobytes(),
                    bytes(r.payload),
                )
                for r in e.runs
            ),
            None if e.table is None else (e.table.shape, e.table.astype("<u8").tobytes()),
        )
        for e in frame.kv
    )
    entries = tuple(
        (
            e.name,
            int(e.kind),
            e.ack,
            e.local,
            tuple((d.version, d.raw, d.patch) for d in e.edits),
            e.checksum,
            e.text,
            e.ref,
        )
        for e in frame.entries
    )
    return (
        frame.sender,
        frame.epoch,
        frame.seq,
        frame.reply,
        frame.resume,
        frame.rename,
        entries,
        frame.meta,
        kv,
    )


def outcome(decode: Any, data: bytes, **limits: int) -> Any:
    """``("ok", frame)`` or ``("error", class)``; any other exception escapes."""
    try:
        return ("ok", norm(decode(data, **limits)))
    except HybridSyncError as exc:
        return ("error", type(exc))


def resign(data: bytes) -> bytes:
    """``data`` with the checksum trailer its other bytes call for (whole KV
    pages left out, as a sender leaves them; a plain xxh3 where the KV
    section does not decode)."""
    body = data[:-4]
    try:
        sum32 = _core.frame_checksum(body)
    except HybridSyncError:
        sum32 = xxhash.xxh3_64_intdigest(body) & 0xFFFFFFFF
    return body + sum32.to_bytes(4, "little")


# -- strategies ----------------------------------------------------------------------


@st.composite
def edits_of(draw: st.DrawFn) -> tuple[int, tuple[F.Edit, ...]]:
    versions = sorted(draw(st.sets(st.integers(0, 1 << 40), max_size=3)))
    out = []
    for v in versions:
        a, b = draw(st.text(max_size=30)), draw(st.text(max_size=30))
        change = _core.make_delta(a, b) if draw(st.booleans()) else _core.make_patch(a, b)
        out.append(F.Edit(v, change, change.to_bytes()))
    local = (versions[-1] + 1 if versions else 0) + draw(st.integers(0, 1 << 20))
    return local, tuple(out)


@st.composite
def entries(draw: st.DrawFn, name: str, index: int) -> F.Entry:
    """An entry naming its document by name, by name and index, or by index alone."""
    ref = draw(st.sampled_from([0, index, -index]))
    return dataclasses.replace(draw(bare_entries(name)), name="" if ref < 0 else name, ref=ref)


@st.composite
def bare_entries(draw: st.DrawFn, name: str) -> F.Entry:
    kind = draw(st.sampled_from(F.Kind))
    if kind == F.Kind.EDITS:
        local, edits = draw(edits_of())
        return F.Entry(name, kind, draw(U64), local, edits, draw(U32))
    if kind == F.Kind.ACK:
        return F.Entry(name, kind, draw(U64), draw(U64))
    if kind == F.Kind.FULL:
        return F.Entry(name, kind, draw(U64), draw(U64), text=draw(st.text(max_size=200)))
    return F.Entry(name, kind)


@st.composite
def metas(draw: st.DrawFn) -> F.MetaBlock:
    kind = draw(st.sampled_from(F.MetaKind))
    a = b = b""
    if kind != F.MetaKind.NONE:
        a, b = draw(st.binary(max_size=60)), draw(st.binary(max_size=60))
    return F.MetaBlock(draw(U64), kind, a, b, draw(U64))


@st.composite
def kv_entries(draw: st.DrawFn, name: str) -> F.KVEntry:
    kind = draw(st.sampled_from(F.KVKind))
    owner = draw(st.text(min_size=1, max_size=8))
    uid = draw(U64)
    if kind == F.KVKind.DELETE:
        return F.KVEntry(name, kind, owner, uid)
    fmt, scale = draw(st.sampled_from(sorted(FMT_CODES)))
    layers, heads, page = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 4))
    runtime = draw(st.one_of(st.just(""), st.text(min_size=1, max_size=40)))
    g = F.Geometry(layers, heads, GROUP[fmt] * 2, fmt, page, scale, runtime)
    rb = g.row_bytes
    tokens = draw(st.integers(0, 10))
    pages = -(-tokens // page)
    digest = draw(U64)
    if kind == F.KVKind.HAVE:
        table = None
        if draw(st.booleans()):
            n = layers * 2 * heads * pages
            table = np.array(draw(st.lists(U64, min_size=n, max_size=n)), np.uint64)
            table = table.reshape(layers, 2, heads, pages)
        return F.KVEntry(name, kind, owner, uid, g, tokens, digest, table=table)
    runs = []
    for layer in range(layers):
        for kv_kind in (0, 1):
            if not pages or not draw(st.booleans()):
                continue
            chosen = draw(st.sets(st.tuples(st.integers(0, heads - 1), st.integers(0, pages - 1))))
            whole = sorted(chosen)
            # Tails of one row in: of the pages with more than one row in use.
            tails = [hp for hp in whole if min(page, tokens - hp[1] * page) > 1]
            tails = [hp for hp in tails if draw(st.booleans())]
            whole = [hp for hp in whole if hp not in tails]
            for offset, chosen_pages in ((0, whole), (1, tails)):
                if not chosen_pages and offset:
                    continue
                payload = bytearray()
                hashes = []
                for _head, p in chosen_pages:
                    rows = min(page, tokens - p * page) - offset
                    data = draw(st.binary(min_size=rows * rb, max_size=rows * rb))
                    payload += data
                    hashes.append(_core.kv_page_hash(data) if offset == 0 else draw(U64))
                runs.append(
                    F.KVRun(
                        layer,
                        kv_kind,
                        np.array([h for h, _ in chosen_pages], np.uint32),
                        np.array([p for _, p in chosen_pages], np.uint32),
                        np.array(hashes, np.uint64),
                        bytes(payload),
                        offset,
                    )
                )
    flags = draw(st.sampled_from([0, F.KV_COMPLETE, F.KV_PROBE, F.KV_COMPLETE | F.KV_PROBE]))
    return F.KVEntry(name, kind, owner, uid, g, tokens, digest, flags, tuple(runs))


@st.composite
def frames(draw: st.DrawFn) -> F.Frame:
    names = draw(st.lists(st.text(max_size=16), unique=True, max_size=6))
    kv_names = draw(st.lists(st.text(min_size=1, max_size=8), unique=True, max_size=2))
    return F.Frame(
        draw(st.text(max_size=12)),
        draw(U64),
        draw(U64),
        draw(st.booleans()),
        tuple(draw(entries(n, i + 1)) for i, n in enumerate(names)),
        draw(st.none() | metas()),
        tuple(draw(kv_entries(n)) for n in kv_names),
        draw(st.booleans()),
        draw(st.booleans()),
    )


THRESHOLDS = st.sampled_from([-1, 0, 64, 1024])


# -- tests -------------------------------------------------------------------------


@FUZZ
@given(frames(), THRESHOLDS)
def test_encoders_agree_and_decoders_agree(frame: F.Frame, threshold: int) -> None:
    py = PY_ENCODE(frame, compress_threshold=threshold)
    rs = rust_encode(frame, compress_threshold=threshold)
    assert rs == py
    assert F.encode_frame(frame, compress_threshold=threshold) == py
    assert norm(F.decode_frame(py)) == norm(frame)
    assert norm(rust_decode(py)) == norm(frame)
    assert norm(rust_decode_as(py)) == norm(frame)
    assert norm(PY_DECODE(rs)) == norm(frame)


def test_large_bodies_compress_identically() -> None:
    text = "".join(f"line {i}: the quick brown fox\n" for i in range(2000))
    frame = F.Frame("a", 1, 2, False, (F.Entry("doc", F.Kind.FULL, 0, 1, text=text),))
    for level in (1, 3, 9):
        py = PY_ENCODE(frame, level=level)
        assert py[1] & F.FLAG_COMPRESSED
        assert rust_encode(frame, level=level) == py
        assert norm(rust_decode(py)) == norm(frame)


def _mutate(data: bytes, changes: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    span = len(out) - 14
    for at, byte in changes:
        if span > 0:
            out[6 + at % span] = byte
    return resign(bytes(out))


@FUZZ
@given(
    frames(),
    THRESHOLDS,
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_decoders_agree_on_corrupted_frames(
    frame: F.Frame, threshold: int, changes: list[tuple[int, int]]
) -> None:
    data = _mutate(PY_ENCODE(frame, compress_threshold=threshold), changes)
    expected = outcome(PY_DECODE, data)
    assert outcome(rust_decode, data) == expected
    assert outcome(rust_decode_as, data) == expected
    assert outcome(F.decode_frame, data) == expected
    # Truncated or extended, the checksum fails.
    assert outcome(rust_decode, data[:-1]) == ("error", DecodeError)
    assert outcome(rust_decode, data + b"\0") == ("error", DecodeError)


@FUZZ
@given(st.integers(0, 255), st.binary(max_size=300))
def test_signed_garbage_raises_only_library_errors(flags: int, body: bytes) -> None:
    data = resign(b"HSYN\x01" + bytes([flags]) + body + bytes(8))
    assert outcome(rust_decode, data) == outcome(PY_DECODE, data)


@FUZZ
@given(st.binary(max_size=64))
def test_random_bytes_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        _core.decode_frame(data)


@FUZZ
@given(frames(), st.integers(0, 4096), st.integers(0, 1 << 12))
def test_limits_agree(frame: F.Frame, max_bytes: int, max_kv_bytes: int) -> None:
    data = PY_ENCODE(frame, compress_threshold=64)
    limits = {"max_bytes": max_bytes, "max_kv_bytes": max_kv_bytes}
    expected = outcome(PY_DECODE, data, **limits)
    assert outcome(rust_decode, data, **limits) == expected
    assert outcome(rust_decode_as, data, **limits) == expected
    assert outcome(F.decode_frame, data, **limits) == expected


def test_defects_and_their_errors() -> None:
    frame = F.Frame("alice", 1, 2, True, (F.Entry("doc", F.Kind.DELETE),))
    data = rust_encode(frame)
    assert norm(rust_decode(data)) == norm(frame)
    for decode in (_core.decode_frame, PY_DECODE):
        with pytest.raises(DecodeError, match="protocol version 4; this build speaks version 3"):
            decode(resign(bytes([F.MARK | 4]) + data[1:]))
        with pytest.raises(DecodeError, match="protocol version 1; this build speaks version 3"):
            decode(b"HSYN\x01" + data[1:])
        with pytest.raises(DecodeError, match="not a hybridsync frame"):
            decode(resign(b"X" + data[1:]))
        with pytest.raises(DecodeError, match="empty sender"):
            decode(resign(data[:2] + b"\x00" + data[8:]))
    with pytest.raises(DecodeError, match="checksum"):
        _core.decode_frame(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(LimitExceededError):
        _core.decode_frame(data, max_bytes=len(data) - 1)
    # A patch that does not parse fails the whole frame.
    bad = F.Frame(
        "a",
        0,
        0,
        False,
        (F.Entry("d", F.Kind.EDITS, 0, 2, (F.Edit(1, _core.make_patch("a", "b"), b"\xff"),)),),
    )
    with pytest.raises(DecodeError):
        _core.decode_frame(rust_encode(bad))
    with pytest.raises(DecodeError):
        PY_DECODE(PY_ENCODE(bad))


def test_large_frames_decode_without_the_gil() -> None:
    # Above the detach threshold both ways; the results stay the same.
    pages = np.arange(64, dtype=np.uint32)
    g = F.Geometry(1, 1, 64, "f16", 4, "f16")
    payload = bytes(range(256)) * (64 * 4 * g.row_bytes // 256)
    hashes = np.array(
        [
            _core.kv_page_hash(payload[i * 4 * g.row_bytes : (i + 1) * 4 * g.row_bytes])
            for i in range(64)
        ],
        np.uint64,
    )
    run = F.KVRun(0, 0, np.zeros(64, np.uint32), pages, hashes, payload)
    kv = F.KVEntry("c", F.KVKind.PAGES, "o", 1, g, 256, 7, F.KV_COMPLETE, (run,))
    frame = F.Frame(
        "a", 0, 0, False, (F.Entry("d", F.Kind.FULL, 0, 1, text="x" * 10000),), kv=(kv,)
    )
    data = PY_ENCODE(frame)
    assert len(data) > 10000
    assert rust_encode(frame) == data
    back = rust_decode(data)
    assert norm(back) == norm(frame)
    # The payload is a view into the frame, not a copy.
    assert isinstance(back.kv[0].runs[0].payload, memoryview)
    assert back.kv[0].runs[0].payload.obj is data


def test_objects_built_in_rust_are_ordinary_dataclasses() -> None:
    patch = _core.make_patch("hello", "hello world")
    frame = F.Frame(
        "alice",
        3,
        4,
        True,
        (
            F.Entry("a", F.Kind.EDITS, 1, 9, (F.Edit(7, patch, patch.to_bytes()),), 5),
            F.Entry("b", F.Kind.FULL, 2, 3, text="text"),
            F.Entry("c", F.Kind.RESYNC),
        ),
        F.MetaBlock(5, F.MetaKind.UPDATE, b"sv", b"update", 11),
        resume=True,
    )
    back = rust_decode_as(rust_encode(frame))
    assert back == frame
    assert hash(back) == hash(frame)
    assert repr(back) == repr(frame)
    assert back.entries[0].kind is F.Kind.EDITS
    assert back.meta is not None and back.meta.kind is F.MetaKind.UPDATE
    with pytest.raises(dataclasses.FrozenInstanceError):
        back.seq = 5  # type: ignore[misc]
    assert dataclasses.replace(back, seq=5).seq == 5


def test_edits_and_metadata_accept_any_bytes_like() -> None:
    patch = _core.make_patch("a", "ab")
    raw = patch.to_bytes()
    frame = F.Frame(
        "s",
        0,
        0,
        False,
        (F.Entry("d", F.Kind.EDITS, 0, 2, (F.Edit(1, patch, raw),)),),
        F.MetaBlock(1, F.MetaKind.UPDATE, b"sv", b"up", 2),
    )
    expected = PY_ENCODE(frame)
    for wrap in (bytearray, memoryview, lambda b: np.frombuffer(b, np.uint8)):
        loose = F.Frame(
            "s",
            0,
            0,
            False,
            (F.Entry("d", F.Kind.EDITS, 0, 2, (F.Edit(1, patch, wrap(raw)),)),),  # type: ignore[arg-type]
            F.MetaBlock(1, F.MetaKind.UPDATE, wrap(b"sv"), wrap(b"up"), 2),  # type: ignore[arg-type]
        )
        assert rust_encode(loose) == expected


def test_the_frame_module_runs_the_rust_codec() -> None:
    frame = F.Frame("a", 1, 2, False, (F.Entry("doc", F.Kind.FULL, 0, 1, text="x"),))
    data = F.encode_frame(frame)
    assert data == PY_ENCODE(frame)
    for form in (data, bytearray(data), memoryview(data)):
        assert F.decode_frame(form) == frame
    with pytest.raises(DecodeError, match="a frame is bytes"):
        F.decode_frame("text")  # type: ignore[arg-type]
    with pytest.raises(LimitExceededError):
        F.decode_frame(data, max_bytes=-1)
    # A KV entry without geometry is refused by the encoder.
    kv = F.KVEntry("c", F.KVKind.HAVE, "o")
    with pytest.raises(HybridSyncError):
        F.encode_frame(dataclasses.replace(frame, kv=(kv,)))


def test_runs_of_no_pages_are_judged_alike_by_both_decoders() -> None:
    """Whole-page runs (offset 0), whose payloads the frame checksum leaves
    out: a run of no pages and no bytes is accepted, one of no pages that
    carries bytes is refused, the same by the Rust and the Python decoder."""
    g = F.Geometry(1, 1, 32, "q4_0", 4, "f16")
    none = np.zeros(0, np.uint32)

    def frame(payload: bytes) -> bytes:
        run = F.KVRun(0, 0, none, none, np.zeros(0, np.uint64), payload, 0)
        e = F.KVEntry("c", F.KVKind.PAGES, "o", 1, g, 4, 0, F.KV_COMPLETE, (run,))
        data = PY_ENCODE(F.Frame("s", 1, 1, False, kv=(e,)))
        assert data == rust_encode(F.Frame("s", 1, 1, False, kv=(e,)))
        return data

    empty = frame(b"")
    assert outcome(rust_decode, empty) == outcome(PY_DECODE, empty)
    assert norm(rust_decode(empty)) == norm(PY_DECODE(empty))
    stuffed = frame(b"\x00" * 18)
    assert outcome(rust_decode, stuffed) == outcome(PY_DECODE, stuffed) == ("error", DecodeError)
