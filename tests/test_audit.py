"""The audit log: entries for every applied change, verification that names
the first bad entry after any tampering, signed heads, equivocation across
replicas, attribution through a hub, and bad input that raises
hybridsync.errors without stopping sync."""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridsync import KVCache, Link, Memory
from hybridsync._core import (
    TextHashes,
    audit_decode_entry,
    audit_entry,
    audit_entry_hash,
    audit_hash,
    audit_hash_parts,
)
from hybridsync.audit import (
    META_PREFIX,
    AuditError,
    AuditPolicy,
    SignedHead,
    SigningKeyError,
    attribute,
    audit_path,
    find_equivocations,
    load_signing_key,
    verify_log,
)
from hybridsync.audit.keys import key_to_pem, key_to_text
from hybridsync.audit.log import MAX_CLAIMS
from hybridsync.audit.segments import GROW, encode_records, parse_records
from hybridsync.cli import main
from hybridsync.errors import HybridSyncError, InvalidArgumentError, StorageError


def exchange(cl: Link, sv: Link) -> None:
    frame = cl.outgoing()
    assert frame is not None
    sv.incoming(frame)
    reply = sv.outgoing()
    assert reply is not None
    cl.incoming(reply)


def settle(pairs: list[tuple[Link, Link]], rounds: int = 6) -> None:
    for _ in range(rounds):
        for cl, sv in pairs:
            exchange(cl, sv)


def kv_rows(rng: np.random.Generator, cache: KVCache, n: int) -> tuple[np.ndarray, np.ndarray]:
    shape = (cache.layers, cache.kv_heads, n, cache.head_dim)
    return (
        rng.standard_normal(shape).astype(np.float32),
        rng.standard_normal(shape).astype(np.float32),
    )


def durable_log(tmp_path: Path, n: int = 12, sign_every: int = 4) -> Path:
    """A durable replica's store with ``n`` text and metadata writes, closed."""
    path = tmp_path / "a.db"
    with Memory("a", path=path, audit=AuditPolicy(sign_every=sign_every)) as m:
        for i in range(n):
            if i % 2:
                m.text[f"doc{i % 3}"] = f"version {i}"
            else:
                m.meta[f"k{i % 4}"] = {"i": i}
            m.flush()
    return path


def segment(path: Path) -> Path:
    (seg,) = sorted(audit_path(path).glob("seg-*.log"))
    return seg


def bodies(path: Path) -> list[tuple[int, bytes]]:
    """The entries of a log of one segment, with their positions."""
    records, _ = parse_records(segment(path).read_bytes())
    return [(i + 1, b) for i, b in enumerate(records)]


def rewrite(path: Path, entries: list[bytes]) -> None:
    segment(path).write_bytes(encode_records(entries))


def db_of(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(audit_path(path) / "audit.sqlite", isolation_level=None)


# -- an untouched log ------------------------------------------------------------


def test_every_change_appends_an_entry_and_the_untouched_log_verifies(tmp_path: Path) -> None:
    path = durable_log(tmp_path, n=12)
    report = verify_log(path)
    assert report.ok, report.problems
    assert report.entries == 12 and report.last_seq == 12
    assert report.signed_seq == 12  # closing signs the tail
    entries = list(attribute(path))
    assert [a.entry.seq for a in entries] == list(range(1, 13))
    assert {a.entry.channel for a in entries} == {"text", "meta"}
    assert all(a.writer == "a" and a.confirmed for a in entries)
    # The chain: each entry holds the hash of the one before it.
    rows = bodies(path)
    for (_, before), (_, after) in itertools.pairwise(rows):
        assert audit_decode_entry(after)[10] == audit_entry_hash(before)
    # Reopening continues the same chain.
    with Memory("a", path=path, audit=AuditPolicy(sign_every=4)) as m:
        m.text["doc0"] = "after reopening"
    report = verify_log(path)
    assert report.ok and report.last_seq == 13


def test_claims_signed_at_closing_go_out_with_the_next_head(tmp_path: Path) -> None:
    """Closing signs the tail (with the claims of the last writes) without
    publishing it; after reopening, the next head claims those writes again,
    so a peer attributes them."""
    path = tmp_path / "w.db"
    policy = AuditPolicy(sign_every=2)
    with Memory("w", path=path, audit=policy) as m:
        m.text["late"] = "written just before closing"
    reader = Memory("r", audit=policy)
    with Memory("w", path=path, audit=policy) as m:
        pair = (Link(reader, "w", role="client", epoch=3), Link(m, "r", role="server"))
        settle([pair])
        assert reader.audit is not None
        assert [r.confirmed for r in attribute(reader.audit, doc="late")] == [False]
        m.text["next"] = "1"
        m.text["next"] = "2"  # two entries: the next head, claiming "late" again
        settle([pair])
        (r,) = attribute(reader.audit, doc="late")
        assert (r.writer, r.confirmed, r.writer_seq) == ("w", True, 1)


@pytest.mark.parametrize("durable", [False, True])
def test_a_head_is_signed_whenever_its_claims_are_full(tmp_path: Path, durable: bool) -> None:
    """However rarely the policy signs, no local write loses its claim: a
    head is signed as soon as MAX_CLAIMS subjects await one, also in the
    middle of one commit of many writes."""
    policy = AuditPolicy(sign_every=1_000_000)
    m = Memory("w", path=tmp_path / "w.db" if durable else None, audit=policy)
    names = [f"doc{i}" for i in range(2 * MAX_CLAIMS + 300)]
    for i, name in enumerate(names[:700]):
        m.text[name] = str(i)
        if i % 50 == 0:
            m.flush()
    with m.changes.change_set():
        for i, name in enumerate(names[700:]):  # one batch past two heads' worth
            m.text[name] = str(i)
    m.flush()
    assert m.audit is not None
    m.audit.sign()
    heads = m.audit.heads()
    assert len(heads) >= 3 and all(len(h.claims) <= MAX_CLAIMS for h in heads)
    claimed = {(c.subject, c.seq) for h in heads for c in h.claims}
    logged = {(e.subject, e.seq) for e in m.audit.entries()}
    assert claimed == logged and len(logged) == len(names)
    if durable:
        m.close()
        assert verify_log(tmp_path / "w.db").ok


def test_versions_of_a_long_document_are_not_held_until_a_commit() -> None:
    """An in-memory replica's link never commits: the versions of a document
    wait in the log for their hash, but never more than _MAX_PENDING_CHARS
    characters of them; every version is logged with its own hash."""
    from hybridsync.audit.log import _MAX_PENDING_CHARS

    m = Memory("a", audit=True)
    log = m.audit
    assert log is not None
    versions = [f"{i}" + "x" * (1 << 20) for i in range(12)]
    for v in versions:
        m.text["big"] = v
        held = sum(len(e[9]) for e in log._pending if isinstance(e[9], str))
        assert held <= _MAX_PENDING_CHARS
    assert [e.content for e in log.entries()] == [audit_hash(v.encode()) for v in versions]


@settings(max_examples=60, deadline=None)
@given(
    start=st.integers(0, 300_000) | st.integers(40_000, 300_000),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["insert", "delete", "append", "cut", "unicode", "other"]),
            st.integers(0, 1 << 30),
            st.integers(0, 40_000),
        ),
        min_size=1,
        max_size=10,
    ),
    min_len=st.sampled_from([0, 1 << 16]),
    max_bytes=st.sampled_from([0, 250_000, 64 << 20, 64 << 20]),
)
def test_text_hashes_are_blake3_of_each_version(
    start: int, edits: list[tuple[str, int, int]], min_len: int, max_bytes: int
) -> None:
    """TextHashes rehashes a long document from where a version differs
    from the one before (BLAKE3's tree); whatever the edits, the sizes, the
    documents it keeps or evicts, each hash is BLAKE3 of the version (the
    reference: audit_hash of its UTF-8)."""
    texts = TextHashes(min_len=min_len, max_bytes=max_bytes)
    docs = {"a": "".join(chr(97 + i % 26) for i in range(start)), "b": "b" * 70_000}
    for what, at, n in edits:
        name = "b" if what == "other" else "a"
        t = docs[name]
        at %= len(t) + 1
        if what == "insert":
            t = t[:at] + "x" * (n % 3000) + t[at:]
        elif what == "delete":
            t = t[:at] + t[at + n :]
        elif what == "append":
            t += "line\n" * (n % 5000)
        elif what == "cut":
            t = t[:at]
        elif what == "unicode":
            t = t[:at] + "\u00e9\u4e2d" + t[at:]
        else:
            t = t + "b"
        docs[name] = t
        assert texts.hash(name, t) == audit_hash(t.encode()), (what, len(t))
        assert texts.kept_bytes <= max_bytes
    texts.forget("a")
    assert texts.hash("a", docs["a"]) == audit_hash(docs["a"].encode())


@pytest.mark.parametrize("cache", [64 << 20, 0])
def test_a_long_document_is_logged_with_the_hash_of_every_version(cache: int) -> None:
    """Appends to and edits in the middle of a long document, through the
    log: every entry's content is BLAKE3 of that version (with the previous
    versions kept, or none)."""
    m = Memory("a", audit=AuditPolicy(text_cache_bytes=cache))
    log = m.audit
    assert log is not None
    text = "".join(f"line {i}\n" for i in range(20_000))
    versions = []
    for i in range(30):
        if i % 3 == 2:
            mid = len(text) // 2
            text = text[:mid] + f"edit {i}" + text[mid + 5 :]
        else:
            text += f"appended {i}\n"
        m.text["log"] = text
        versions.append(text)
        if i % 4 == 0:
            log.commit()
    assert len(log._texts) == (1 if cache else 0)
    del m.text["log"]
    assert [e.content for e in log.entries()] == [
        *(audit_hash(v.encode()) for v in versions),
        bytes(32),
    ]
    assert len(log._texts) == 0  # forgotten with the deletion


def test_the_log_is_on_for_durable_replicas_and_can_be_turned_off(tmp_path: Path) -> None:
    with Memory("a", path=tmp_path / "on.db") as m:
        assert m.audit is not None
    assert audit_path(tmp_path / "on.db").exists()
    with Memory("a", path=tmp_path / "off.db", audit=False) as m:
        assert m.audit is None
    assert not audit_path(tmp_path / "off.db").exists()
    assert Memory("a").audit is None
    assert Memory("a", audit=True).audit is not None


@pytest.mark.parametrize("kv_content", ["rows", "pages"])
def test_kv_writes_are_logged_with_their_owner_and_a_hash_of_the_rows(kv_content: str) -> None:
    rng = np.random.default_rng(1)
    policy = AuditPolicy(kv_content=kv_content)  # type: ignore[arg-type]
    owner, mirror = Memory("w", audit=policy), Memory("r", audit=policy)
    cl, sv = Link(mirror, "w", role="client", epoch=5), Link(owner, "r", role="server")
    cache = KVCache(2, 2, 32, "q8_0", page_tokens=16)
    owner.kv["ctx"] = cache
    cache.append(*kv_rows(rng, cache, 40))
    settle([(cl, sv)])
    cache.append(*kv_rows(rng, cache, 3))
    settle([(cl, sv)])
    assert owner.audit is not None and mirror.audit is not None
    own = [a for a in attribute(owner.audit, kv="ctx")]
    seen = [a for a in attribute(mirror.audit, kv="ctx")]
    assert len(own) == 3 and all(a.writer == "w" for a in own)
    assert seen and all(a.writer == "w" and a.entry.via == "w" for a in seen)
    # Different rows, different content hashes; the mirror's match the owner's.
    assert len({a.entry.content for a in own}) == 3
    assert own[-1].entry.content == seen[-1].entry.content


def test_a_kv_entry_hashes_the_documented_bytes() -> None:
    """BLAKE3 of ``uid:first:tokens`` then rows first..tokens of every layer,
    keys then values, head by head, checked against one contiguous copy (the
    core reads the rows in place, through views wider than the cache)."""
    rng = np.random.default_rng(7)
    owner = Memory("w", audit=True)
    cache = KVCache(3, 2, 32, "q4_0", page_tokens=16)
    owner.kv["ctx"] = cache
    cache.append(*kv_rows(rng, cache, 40))
    cache.append(*kv_rows(rng, cache, 300))  # capacity beyond the tokens held
    cache.truncate(37)
    cache.append(*kv_rows(rng, cache, 5))
    assert owner.audit is not None
    last = list(owner.audit.entries())[-1]
    rows = [
        cache.quantized(layer, kind)[h, 37:42].tobytes()
        for layer in range(3)
        for kind in "kv"
        for h in range(2)
    ]
    assert last.content == audit_hash(f"{cache.uid}:37:42".encode() + b"".join(rows))
    # Pieces of any size hash as their concatenation.
    data = rng.integers(0, 256, 100_000, np.uint8)
    cuts = [0, 15, 18_447, 18_448, 40_000, 65_551, 100_000]
    parts = [data[a:b] for a, b in itertools.pairwise(cuts)]
    assert audit_hash_parts(parts) == audit_hash(data)


def test_kv_row_views_must_have_contiguous_rows() -> None:
    rows = np.zeros((2, 8, 18), np.uint8)
    assert audit_hash_parts([b"p", rows], rows=(2, 5)) == audit_hash(
        b"p" + rows[0, 2:5].tobytes() + rows[1, 2:5].tobytes()
    )
    for bad, span in (
        (rows[:, ::2], (0, 2)),  # rows not adjacent
        (rows[:, :, ::2], (0, 2)),  # bytes not adjacent
        (rows.view(np.uint16), (0, 2)),  # not bytes
        (rows[0], (0, 2)),  # not [heads, tokens, row_bytes]
        (rows, (5, 9)),  # past the tokens
        (rows, (5, 4)),
    ):
        with pytest.raises(InvalidArgumentError):
            audit_hash_parts([b"p", bad], rows=span)


# -- tampering -------------------------------------------------------------------


def reencode(body: bytes, **changes: Any) -> bytes:
    f: list[Any] = list(audit_decode_entry(body))
    names = ["seq", "time_ns", "channel", "kind", "origin", "subject", "writer", "via"]
    for k, v in changes.items():
        f[names.index(k)] = v
    new, _ = audit_entry(*f)
    return new


@pytest.mark.parametrize("k", [1, 2, 5, 11])
def test_editing_an_entry_names_it(tmp_path: Path, k: int) -> None:
    path = durable_log(tmp_path)
    rows = dict(bodies(path))
    rows[k] = reencode(rows[k], writer="mallory")
    rewrite(path, list(rows.values()))
    report = verify_log(path)
    assert not report.ok and report.first_bad == k


def test_editing_the_last_entry_is_caught_by_its_signed_head(tmp_path: Path) -> None:
    path = durable_log(tmp_path)
    rows = dict(bodies(path))
    rows[12] = reencode(rows[12], via="x")
    rewrite(path, list(rows.values()))
    report = verify_log(path)
    assert not report.ok and report.first_bad == 12
    assert [p.kind for p in report.problems] == ["rewritten"]


@pytest.mark.parametrize("k", [1, 6, 11])
def test_deleting_an_entry_names_it(tmp_path: Path, k: int) -> None:
    path = durable_log(tmp_path)
    rewrite(path, [b for s, b in bodies(path) if s != k])
    report = verify_log(path)
    assert not report.ok and report.first_bad == k


@pytest.mark.parametrize("k", [1, 4, 10])
def test_reordering_entries_names_the_first_moved(tmp_path: Path, k: int) -> None:
    path = durable_log(tmp_path)
    rows = dict(bodies(path))
    rows[k], rows[k + 1] = rows[k + 1], rows[k]
    rewrite(path, list(rows.values()))
    report = verify_log(path)
    assert not report.ok and report.first_bad == k


@pytest.mark.parametrize("k", [1, 7, 12])
def test_inserting_an_entry_names_it(tmp_path: Path, k: int) -> None:
    """A forged entry slipped in at position k, linked to the entry before
    it, the later ones renumbered."""
    path = durable_log(tmp_path)
    rows = dict(bodies(path))
    prev = audit_entry_hash(rows[k - 1]) if k > 1 else bytes(32)
    forged, _ = audit_entry(k, 1, 0, 1, 0, "doc0", "mallory", "", k, bytes(32), prev)
    entries = list(rows.values())
    entries.insert(k - 1, forged)
    rewrite(path, entries)
    report = verify_log(path)
    assert not report.ok and report.first_bad == k


def test_truncating_the_log_is_caught(tmp_path: Path) -> None:
    path = durable_log(tmp_path)
    rewrite(path, [b for s, b in bodies(path) if s <= 9])
    report = verify_log(path)
    assert not report.ok and report.first_bad == 10
    assert {p.kind for p in report.problems} == {"truncated"}


def test_a_swapped_signature_is_caught(tmp_path: Path) -> None:
    path = durable_log(tmp_path)
    with db_of(path) as db:
        (a, sa), (b, sb) = db.execute("SELECT rowid, sig FROM heads LIMIT 2").fetchall()
        db.execute("UPDATE heads SET sig = ? WHERE rowid = ?", (sb, a))
        db.execute("UPDATE heads SET sig = ? WHERE rowid = ?", (sa, b))
        first = db.execute("SELECT seq FROM heads WHERE rowid = ?", (a,)).fetchone()[0]
    report = verify_log(path)
    assert not report.ok and report.first_bad == first
    assert {p.kind for p in report.problems} == {"signature"}


def test_a_replayed_old_head_is_caught(tmp_path: Path) -> None:
    path = durable_log(tmp_path)
    with db_of(path) as db:
        old = db.execute("SELECT * FROM heads ORDER BY rowid LIMIT 1").fetchone()
        db.execute(f"INSERT INTO heads VALUES ({', '.join('?' * len(old))})", old)
    report = verify_log(path)
    assert not report.ok and report.first_bad == old[0]
    assert {p.kind for p in report.problems} == {"replay"}


def test_a_rewritten_and_resigned_history_is_caught_by_a_peer(tmp_path: Path) -> None:
    """The replica rewrites its own log (with its own key) after a peer kept
    its head: the cross-check names the first entry that differs."""
    key = Ed25519PrivateKey.generate()
    policy = AuditPolicy(sign_every=1, key=key)
    a = Memory("a", path=tmp_path / "a.db", audit=policy)
    b = Memory("b", path=tmp_path / "b.db", audit=AuditPolicy(sign_every=1))
    cl, sv = Link(b, "a", role="client", epoch=3), Link(a, "b", role="server")
    a.text["plan"] = "the truth"
    settle([(cl, sv)])
    a.close()
    b.close()
    assert verify_log(tmp_path / "a.db", against=[tmp_path / "b.db"]).ok
    # Rewrite a's history: a fresh log, another first entry, signed by a's key.
    with Memory("a", path=tmp_path / "forged.db", audit=policy) as forged_m:
        forged_m.text["plan"] = "a lie"
    shutil.rmtree(audit_path(tmp_path / "a.db"))
    audit_path(tmp_path / "forged.db").rename(audit_path(tmp_path / "a.db"))
    report = verify_log(tmp_path / "a.db", against=[tmp_path / "b.db"])
    assert not report.ok
    assert "equivocation" in {p.kind for p in report.problems}
    assert report.first_bad == 1


@pytest.mark.parametrize("seed", range(6))
def test_random_tampering_is_caught_and_never_crashes(tmp_path: Path, seed: int) -> None:
    """Random byte flips in random entries of a log signed entry by entry:
    verification names the flipped entry; listing it raises AuditError (an
    entry that no longer decodes) or lists it, never anything else."""
    rng = random.Random(seed)
    path = durable_log(tmp_path, n=10, sign_every=1)
    rows = dict(bodies(path))
    k = rng.randrange(1, 11)
    body = bytearray(rows[k])
    i = rng.randrange(len(body))
    body[i] ^= 1 << rng.randrange(8)
    rows[k] = bytes(body)
    rewrite(path, list(rows.values()))
    report = verify_log(path)
    assert not report.ok
    assert report.first_bad == k, report.problems
    with contextlib.suppress(AuditError):
        attribute(path)


# -- pruning ---------------------------------------------------------------------


def test_pruning_keeps_verifiability_from_a_signed_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    policy = AuditPolicy(sign_every=5, max_entries=10, segment_entries=5)
    with Memory("p", path=path, audit=policy) as m:
        for i in range(40):
            m.text["d"] = f"v{i}"
            m.flush()
    report = verify_log(path)
    assert report.ok, report.problems
    assert report.first_seq > 1 and report.entries < 20 and report.last_seq == 40
    with db_of(path) as db:
        db.execute("UPDATE info SET v = ? WHERE k = 'checkpoint_head'", (bytes(32),))
    report = verify_log(path)
    assert not report.ok and {p.kind for p in report.problems} >= {"checkpoint"}


# -- heads across replicas -------------------------------------------------------


def test_a_hub_forking_its_log_towards_two_leaves_is_caught() -> None:
    """Two instances of hub "h" share its key but hold different histories;
    leaf a syncs with one, leaf b with the other. Each leaf alone sees a
    valid head; the heads meet in a cross-check and the fork is proven."""
    key = Ed25519PrivateKey.generate()
    h1 = Memory("h", audit=AuditPolicy(sign_every=1, key=key))
    h2 = Memory("h", audit=AuditPolicy(sign_every=1, key=key))
    a = Memory("a", audit=AuditPolicy(sign_every=1))
    b = Memory("b", audit=AuditPolicy(sign_every=1))
    h1.text["plan"] = "ship on monday"
    h2.text["plan"] = "ship on friday"
    pa = (Link(a, "h", role="client", epoch=7), Link(h1, "a", role="server"))
    pb = (Link(b, "h", role="client", epoch=8), Link(h2, "b", role="server"))
    settle([pa, pb])
    assert a.audit and b.audit and h1.audit
    assert verify_log(a.audit).ok and verify_log(b.audit).ok
    forks = find_equivocations([a.audit, b.audit])
    assert forks and all(p.kind == "equivocation" and "'h'" in p.message for p in forks)
    report = verify_log(h1.audit, against=[b.audit])
    assert not report.ok and "equivocation" in {p.kind for p in report.problems}
    assert verify_log(h1.audit, against=[a.audit]).ok


def test_a_forked_hub_is_caught_in_band_when_the_leaves_heads_meet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The leaves' signed heads carry the hub heads they saw (witnesses):
    once leaf a's head reaches leaf b by any path, b's own log proves the
    fork (two valid signatures of "h" for one entry), without either hub
    log or a's log."""
    key = Ed25519PrivateKey.generate()
    h1 = Memory("h", audit=AuditPolicy(sign_every=1, key=key))
    h2 = Memory("h", audit=AuditPolicy(sign_every=1, key=key))
    a = Memory("a", audit=AuditPolicy(sign_every=1))
    b = Memory("b", audit=AuditPolicy(sign_every=1))
    h1.text["plan"] = "ship on monday"
    h2.text["plan"] = "ship on friday"
    pa = (Link(a, "h", role="client", epoch=7), Link(h1, "a", role="server"))
    pb = (Link(b, "h", role="client", epoch=8), Link(h2, "b", role="server"))
    settle([pa, pb])
    a.text["note"] = "seen"
    settle([pa, pb])
    assert a.audit is not None and b.audit is not None
    assert verify_log(b.audit).ok
    head_of_a = a.audit.heads()[-1]
    assert {w.replica for w in head_of_a.witness} == {"h"}
    with caplog.at_level("WARNING", logger="hybridsync.audit"):
        b.audit.receive_head(head_of_a, via="elsewhere")
    assert any("equivocation" in r.message and "'h'" in r.message for r in caplog.records)
    report = verify_log(b.audit)
    assert not report.ok and any(
        p.kind == "equivocation" and "'h'" in p.message for p in report.problems
    )
    # A forged witness (a's signature over a head of h that h never signed)
    # is not taken for h's: it does not verify under h's key.
    forged_h = SignedHead("h", 1, bytes(32), 1, key.public_key().public_bytes_raw(), bytes(64))
    assert not forged_h.valid()


def test_heads_round_trip_and_malformed_values_raise_audit_errors() -> None:
    rng = random.Random(5)
    a = Memory("a", audit=AuditPolicy(sign_every=1))
    a.text["x"] = "1"
    assert a.audit is not None
    head = a.audit.heads()[-1]
    again = SignedHead.from_value("a", head.to_value())
    assert again == head and again.valid()
    raw = head.to_value()
    for _ in range(300):
        chars = list(raw)
        for _ in range(rng.randrange(1, 4)):
            chars[rng.randrange(3, len(chars))] = rng.choice("AZaz09-_=!")
        cut = "".join(chars)[: rng.randrange(3, len(raw) + 1)]
        try:
            parsed = SignedHead.from_value("a", cut)
        except AuditError:
            continue
        assert parsed == head or not parsed.valid()


def test_attribution_end_to_end_three_agents_through_a_hub() -> None:
    """Agents a, b, c write through hub h; every replica attributes each
    value to the agent that wrote it (confirmed by the writer's signed
    claim), not to the hub that relayed it."""
    rng = np.random.default_rng(3)
    policy = AuditPolicy(sign_every=1)
    hub = Memory("h", audit=policy)
    agents = {n: Memory(n, audit=policy) for n in "abc"}
    pairs = [
        (Link(m, "h", role="client", epoch=10 + i), Link(hub, n, role="server"))
        for i, (n, m) in enumerate(agents.items())
    ]
    agents["a"].text["plan.md"] = "1. gather facts\n"
    agents["b"].meta["tasks"] = {"t1": {"owner": "b", "status": "open"}}
    cache = KVCache(1, 2, 32, "q4_0", page_tokens=8)
    agents["c"].kv["ctx"] = cache
    cache.append(*kv_rows(rng, cache, 12))
    settle(pairs)
    agents["c"].text["plan.md"] += "2. write the report\n"
    settle(pairs)
    expected_plan = "1. gather facts\n2. write the report\n"
    for name, m in [*agents.items(), ("h", hub)]:
        assert m.text["plan.md"] == expected_plan
        assert m.audit is not None
        assert verify_log(m.audit).ok
        plan = attribute(m.audit, doc="plan.md")
        assert [(r.writer, r.confirmed) for r in plan] == [("a", True), ("c", True)], name
        tasks = attribute(m.audit, key="tasks")
        assert tasks and {(r.writer, r.confirmed) for r in tasks} == {("b", True)}, name
        ctx = attribute(m.audit, kv="ctx")
        assert ctx and {r.writer for r in ctx} == {"c"}, name
    leaf = attribute(agents["b"].audit, doc="plan.md")  # type: ignore[arg-type]
    assert [r.entry.via for r in leaf] == ["h", "h"]
    # Each value names the writer's entry and the writer's head that signed it.
    for r in leaf:
        writer_log = agents[r.writer].audit
        assert writer_log is not None and r.writer_seq is not None and r.writer_head is not None
        (own,) = [a for a in attribute(writer_log, doc="plan.md") if a.entry.seq == r.writer_seq]
        assert own.entry.content == r.entry.content
        assert any(h.seq == r.writer_head for h in writer_log.heads())


# -- bad input -------------------------------------------------------------------


def test_forged_and_malformed_heads_are_refused_and_sync_goes_on() -> None:
    hub = Memory("h", audit=AuditPolicy(sign_every=1))
    a = Memory("a", audit=AuditPolicy(sign_every=1))
    pair = (Link(a, "h", role="client", epoch=4), Link(hub, "a", role="server"))
    a.text["x"] = "1"
    settle([pair])
    assert hub.audit is not None and a.audit is not None
    good = a.audit.heads()[-1]
    # Impersonating b: a's signature over a head that names b.
    forged = SignedHead("b", good.seq, good.head, good.time_ns, good.key, good.signature)
    a.meta[META_PREFIX + "b"] = forged.to_value()
    a.meta[META_PREFIX + "c"] = "not a head"
    a.text["x"] = "2"
    settle([pair])
    assert hub.text["x"] == "2"  # the hub kept syncing
    report = verify_log(hub.audit)
    assert report.ok and any("'b'" in w.message for w in report.warnings)
    with pytest.raises(AuditError):
        hub.audit.receive_head(forged, via="a")
    with pytest.raises(AuditError):
        SignedHead.from_value("c", {"seq": "x"})
    assert issubclass(AuditError, HybridSyncError)


def test_an_impersonating_head_is_refused() -> None:
    """Replica m publishes a head that names a, signed with m's own key: a
    hub that already holds a's key (first use) refuses it, and so does one
    told a's key in advance; a's claims keep attributing a's writes."""
    a_key, m_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    hub = Memory("h", audit=AuditPolicy(sign_every=1))
    pinned = Memory(
        "p", audit=AuditPolicy(trusted_keys={"a": a_key.public_key().public_bytes_raw()})
    )
    a = Memory("a", audit=AuditPolicy(sign_every=1, key=a_key))
    m = Memory("m", audit=AuditPolicy(sign_every=1, key=m_key))
    pairs = [
        (Link(a, "h", role="client", epoch=1), Link(hub, "a", role="server")),
        (Link(m, "h", role="client", epoch=2), Link(hub, "m", role="server")),
    ]
    a.text["plan"] = "a's plan"
    settle(pairs)
    assert m.audit is not None and hub.audit is not None and pinned.audit is not None
    real = a.audit.heads()[-1] if a.audit else None
    assert real is not None
    # m claims to be a: the same plan text, claimed under m's key.
    fake_unsigned = SignedHead("a", 1, bytes(32), 1, m.audit.public_key, b"", real.claims)
    fake = SignedHead(
        "a", 1, bytes(32), 1, m.audit.public_key, m_key.sign(fake_unsigned.message()), real.claims
    )
    assert fake.valid()  # a good signature, of the wrong key
    for log_ in (hub.audit, pinned.audit):
        with pytest.raises(AuditError, match="another key"):
            log_.receive_head(fake, via="m")
    m.meta[META_PREFIX + "a"] = fake.to_value()
    settle(pairs)
    assert [(r.writer, r.confirmed) for r in attribute(hub.audit, doc="plan")] == [("a", True)]
    warnings = verify_log(hub.audit).warnings
    assert any(w.kind == "forged-head" and "'a'" in w.message for w in warnings)
    with pytest.raises(HybridSyncError):
        AuditPolicy(trusted_keys={"a": b"short"})


def test_damaged_log_files_raise_hybridsync_errors(tmp_path: Path) -> None:
    path = durable_log(tmp_path)
    (audit_path(path) / "audit.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError):
        verify_log(path)
    with pytest.raises(StorageError):
        Memory("a", path=path)
    with pytest.raises(StorageError):
        verify_log(tmp_path / "missing.db")
    (tmp_path / "x").mkdir()
    other = durable_log(tmp_path / "x")
    # Another replica's log next to this replica's store.
    shutil.copytree(audit_path(other), audit_path(tmp_path / "b.db"))
    with pytest.raises(AuditError):
        Memory("b", path=tmp_path / "b.db")


def test_keys_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes_raw()
    pem = tmp_path / "k.pem"
    pem.write_bytes(key_to_pem(key))
    pem.chmod(0o600)
    assert load_signing_key(key_file=pem).public_key().public_bytes_raw() == raw
    monkeypatch.setenv("HYBRIDSYNC_AUDIT_KEY", key_to_text(key))
    assert load_signing_key().public_key().public_bytes_raw() == raw
    with Memory("a", audit=True) as m:
        assert m.audit is not None and m.audit.public_key == raw
    for bad in ("", "not base64 at all!", key_to_text(key)[:20]):
        monkeypatch.setenv("HYBRIDSYNC_AUDIT_KEY", bad)
        with pytest.raises(SigningKeyError) as info:
            load_signing_key()
        assert key_to_text(key) not in str(info.value)
    (tmp_path / "big").write_bytes(b"x" * 5000)
    with pytest.raises(SigningKeyError):
        load_signing_key(key_file=tmp_path / "big")


# -- the command line ------------------------------------------------------------


def test_cli_audit_verifies_lists_and_fails_on_tampering(tmp_path: Path) -> None:
    path = durable_log(tmp_path)
    runner = CliRunner()
    ok = runner.invoke(main, ["audit", str(path)])
    assert ok.exit_code == 0, ok.output
    assert "OK" in ok.output
    folder = runner.invoke(main, ["audit", str(audit_path(path)), "--json"])
    assert folder.exit_code == 0 and json.loads(folder.output)["report"]["ok"]
    listed = runner.invoke(main, ["audit", str(path), "--doc", "doc1", "--json"])
    assert listed.exit_code == 0, listed.output
    data = json.loads(listed.output)
    assert data["report"]["ok"] and data["entries"]
    assert all(e["subject"] == "doc1" and e["attributed_to"] == "a" for e in data["entries"])
    keyed = json.loads(runner.invoke(main, ["audit", str(path), "--key", "k0", "--json"]).output)
    assert keyed["entries"] and all(e["subject"][0] == "k0" for e in keyed["entries"])
    rewrite(path, [b for s, b in bodies(path) if s != 3])
    bad = runner.invoke(main, ["audit", str(path), "--json"])
    assert bad.exit_code == 1
    assert json.loads(bad.output)["report"]["first_bad"] == 3
    table = runner.invoke(main, ["audit", str(path)])
    assert table.exit_code == 1 and "FAILED" in table.output


def test_cli_keygen_signing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    printed = runner.invoke(main, ["keygen", "--signing"])
    assert printed.exit_code == 0
    monkeypatch.setenv("HYBRIDSYNC_AUDIT_KEY", printed.output.strip())
    load_signing_key()
    out = tmp_path / "audit.pem"
    assert runner.invoke(main, ["keygen", "--signing", "--out", str(out)]).exit_code == 0
    assert out.stat().st_mode & 0o777 == 0o600
    load_signing_key(key_file=out)
    assert runner.invoke(main, ["keygen", "--signing", "--out", str(out)]).exit_code != 0
    secret = runner.invoke(main, ["keygen"])  # the swarm secret, as before
    assert secret.exit_code == 0 and len(secret.output.strip()) >= 43


# -- crashes ---------------------------------------------------------------------


def test_a_torn_last_record_is_repaired_on_reopening(tmp_path: Path) -> None:
    path = durable_log(tmp_path, n=6)
    seg = segment(path)
    whole = seg.read_bytes()
    seg.write_bytes(whole + whole[:7])  # a write cut short by a crash
    report = verify_log(path)  # read as it is (a live log can end so too)
    assert report.ok and [w.kind for w in report.warnings] == ["torn-record"]
    with Memory("a", path=path, audit=AuditPolicy(sign_every=4)) as m:
        assert m.audit is not None and m.audit.seq == 6
        m.text["doc0"] = "after the crash"
    report = verify_log(path)
    assert report.ok and report.last_seq == 7


def test_the_segment_being_written_is_mapped_and_cut_to_its_records(tmp_path: Path) -> None:
    """A live log's segment has room after its records (zeros): a reader
    sees only the records; closing cuts the file to them; a batch whose
    first length byte never made it (a process killed while copying it) ends
    the segment there, and reopening removes it."""
    path = tmp_path / "a.db"
    m = Memory("a", path=path, audit=AuditPolicy(sign_every=4))
    for i in range(6):
        m.text[f"d{i}"] = f"v{i}"
        m.flush()
    seg = segment(path)
    assert seg.stat().st_size >= GROW  # mapped, with room
    live = verify_log(path)
    assert live.ok and not live.warnings and live.last_seq == 6
    m.close()
    data = seg.read_bytes()
    records, used = parse_records(data)
    assert used == len(data) and len(records) == 6
    # What a kill in the middle of appending two records leaves: everything
    # but the batch's first length byte, then the file's room.
    extra = encode_records([records[4], records[5]])
    seg.write_bytes(data + b"\0" + extra[1:] + bytes(4096))
    report = verify_log(path)
    assert report.ok and report.last_seq == 6, report.problems
    with Memory("a", path=path, audit=AuditPolicy(sign_every=4)) as m:
        assert m.audit is not None and m.audit.seq == 6
        m.text["d0"] = "after the crash"
    assert parse_records(seg.read_bytes())[1] == seg.stat().st_size
    report = verify_log(path)
    assert report.ok and report.last_seq == 7


def test_a_full_disk_is_a_storage_error_and_loses_no_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Room for the mapped segment is allocated before anything is copied
    into it: a full disk raises StorageError from the commit (not a SIGBUS
    in the copy), the entries stay noted, and the next commit writes them."""
    import errno

    import hybridsync.audit.segments as segments

    allocate = segments._allocate

    def full(fd: int, start: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(segments, "GROW", 64)  # each commit grows the segment
    path = tmp_path / "a.db"
    m = Memory("a", path=path, audit=AuditPolicy(sign_every=4))
    m.text["d0"] = "before"
    m.flush()
    for i in range(1, 4):
        m.text[f"d{i}"] = f"v{i}"
    monkeypatch.setattr(segments, "_allocate", full)
    with pytest.raises(StorageError, match="No space left"):
        m.flush()
    monkeypatch.setattr(segments, "_allocate", allocate)
    m.text["d4"] = "after"
    m.flush()
    m.close()
    report = verify_log(path)
    assert report.ok and report.last_seq == 5, report.problems
    with Memory("a", path=path) as m:
        assert m.audit is not None
        assert [e.subject for e in m.audit.entries()] == [f"d{i}" for i in range(5)]


def test_an_empty_last_segment_does_not_restart_the_positions(tmp_path: Path) -> None:
    """A segment created after a roll, with nothing in it yet (a crash or a
    full disk before its first record; its room allocated, or not): the log
    reopens at the entries of the segment before, and removes it."""
    path = tmp_path / "a.db"
    policy = AuditPolicy(sign_every=2, segment_entries=2)
    with Memory("a", path=path, audit=policy) as m:
        for i in range(5):
            m.text[f"d{i}"] = f"v{i}"
            m.flush()
    folder = audit_path(path)
    segs = sorted(folder.glob("seg-*.log"))
    last_first = int(segs[-1].name[4:-4])
    n = len(parse_records(segs[-1].read_bytes())[0])
    assert last_first + n - 1 == 5
    for room in (b"", bytes(4096)):
        empty = folder / f"seg-{last_first + n:020d}.log"
        empty.write_bytes(room)
        with Memory("a", path=path, audit=policy) as m:
            assert m.audit is not None and m.audit.seq == 5
        assert not empty.exists()
        report = verify_log(path)
        assert report.ok, report.problems
    with Memory("a", path=path, audit=policy) as m:
        m.text["more"] = "after"
    report = verify_log(path)
    assert report.ok and report.last_seq == 6, report.problems


def test_an_unfinished_record_after_the_signed_head_is_cut_on_reopening(
    tmp_path: Path,
) -> None:
    """A power loss can leave a record whose length reached the disk and
    whose end did not (the segment's room reads as zeros): after the latest
    signed head, such a record is cut when the log reopens; at or below it,
    the log refuses to open and changes nothing."""
    path = tmp_path / "a.db"
    policy = AuditPolicy(sign_every=4)
    m = Memory("a", path=path, audit=policy)
    for i in range(6):
        m.text[f"d{i}"] = f"v{i}"
        m.flush()
    crashed, m.audit = m.audit, None  # as if the power went: no closing head,
    m.close()  # the segment not cut (only the store closes)
    seg = segment(path)
    data = seg.read_bytes()
    records, _ = parse_records(data[: data.index(bytes(64))])
    assert len(records) == 6
    # Entry 6 (after the head at 4) with its last 40 bytes lost: zeros.
    body = records[5][:-40] + bytes(40)
    seg.write_bytes(encode_records(records[:5]) + encode_records([body]) + bytes(1000))
    with Memory("a", path=path, audit=policy) as m2:
        assert m2.audit is not None and m2.audit.seq == 5
        m2.text["d9"] = "after the power loss"
    report = verify_log(path)
    assert report.ok and report.last_seq == 6, report.problems
    # A zero in place of a signed entry's length: refused, untouched.
    data = seg.read_bytes()
    records, _ = parse_records(data)
    damaged = encode_records(records[:2]) + b"\0" + encode_records(records[2:])[1:]
    seg.write_bytes(damaged)
    with pytest.raises(AuditError, match="below its latest signed head"):
        Memory("a", path=path, audit=policy)
    assert seg.read_bytes() == damaged
    assert crashed is not None


@pytest.mark.parametrize("damage", ["zeros", "tail"])
def test_a_damaged_first_record_after_a_roll_is_cut_not_kept_or_refused(
    tmp_path: Path, damage: str
) -> None:
    """The last segment starts after a signed head; its first record (not
    yet signed) is checked against the entry before it, in the previous
    segment: zeroed whole or at its end by a power loss, it is cut, and the
    log reopens at the signed head (not refused, not kept broken)."""
    path = tmp_path / "a.db"
    policy = AuditPolicy(sign_every=2, segment_entries=2)
    m = Memory("a", path=path, audit=policy)
    for i in range(5):
        m.text[f"d{i}"] = f"v{i}"
        m.flush()
    crashed, m.audit = m.audit, None
    m.close()
    seg = sorted(audit_path(path).glob("seg-*.log"))[-1]
    data = seg.read_bytes()
    (record,) = parse_records(data[: data.index(bytes(64))])[0]
    body = bytes(len(record)) if damage == "zeros" else record[:30] + bytes(len(record) - 30)
    seg.write_bytes(encode_records([body]) + bytes(1000))
    with Memory("a", path=path, audit=policy) as m2:
        assert m2.audit is not None and m2.audit.seq == 4
        m2.text["after"] = "y"
    report = verify_log(path)
    assert report.ok and report.last_seq == 5, report.problems
    assert crashed is not None


def test_a_failed_signature_in_a_commit_keeps_every_entry(tmp_path: Path) -> None:
    """A database error while a head is signed in the middle of a commit
    (its claims full): the entries not yet written stay noted, and the next
    commit writes them."""
    path = tmp_path / "a.db"
    m = Memory("a", path=path, audit=AuditPolicy(sign_every=1_000_000))
    log = m.audit
    assert log is not None
    for i in range(MAX_CLAIMS - 24):
        m.text[f"d{i}"] = "x"
    m.flush()
    db = log._db

    class Failing:
        def execute(self, sql: str, *args: Any) -> Any:
            if sql.startswith("INSERT INTO heads"):
                raise sqlite3.OperationalError("database or disk is full")
            return db.execute(sql, *args)

        def __getattr__(self, name: str) -> Any:
            return getattr(db, name)

        def __enter__(self) -> Any:
            return db.__enter__()

        def __exit__(self, *exc: Any) -> Any:
            return db.__exit__(*exc)

    for i in range(100):
        m.text[f"e{i}"] = "y"
    log._db = Failing()  # type: ignore[assignment]
    with pytest.raises(sqlite3.OperationalError):
        m.flush()
    log._db = db
    m.flush()
    m.close()
    with Memory("a", path=path) as m2:
        assert m2.audit is not None
        logged = [e.subject for e in m2.audit.entries()]
    assert sorted(s for s in logged if s.startswith("e")) == sorted(f"e{i}" for i in range(100))
    assert verify_log(path).ok


def test_a_failed_roll_keeps_the_heads_claims_for_the_next_one(tmp_path: Path) -> None:
    """Closing the full segment after a signature fails: the head is kept
    (not published), its claims go out with the next head."""
    path = tmp_path / "a.db"
    m = Memory("a", path=path, audit=AuditPolicy(sign_every=1_000_000, segment_entries=2))
    log = m.audit
    assert log is not None
    m.text["d0"] = "x"
    m.text["d1"] = "y"
    m.flush()
    close = log.segments.close

    def failing() -> None:
        close()
        raise StorageError("cannot close the audit log: EIO")

    log.segments.close = failing  # type: ignore[method-assign]
    with pytest.raises(StorageError):
        log.sign()
    log.segments.close = close  # type: ignore[method-assign]
    m.text["d2"] = "z"
    m.flush()
    head = log.sign()
    assert head is not None and [c.subject for c in head.claims] == ["d0", "d1", "d2"]
    m.close()


def test_claims_restored_at_reopening_never_overfill_a_head(tmp_path: Path) -> None:
    """A head signed at closing with MAX_CLAIMS claims: after reopening, the
    next head still holds at most MAX_CLAIMS (the latest), and the log
    verifies."""
    path = tmp_path / "w.db"
    policy = AuditPolicy(sign_every=1_000_000)
    m = Memory("w", path=path, audit=policy)
    for i in range(MAX_CLAIMS - 1):
        m.text[f"d{i}"] = "x"
    m.flush()
    m.text["last"] = "x"
    m.close()
    with Memory("w", path=path, audit=policy) as m:
        m.text["after"] = "y"
        m.flush()
        assert m.audit is not None
        m.audit.sign()
        heads = m.audit.heads()
        assert all(len(h.claims) <= MAX_CLAIMS for h in heads)
        assert any(c.subject == "after" for c in heads[-1].claims)
    report = verify_log(path)
    assert report.ok, report.problems


def test_killed_process_keeps_every_flushed_entry(tmp_path: Path) -> None:
    """A replica killed with SIGKILL (no close): every entry written before
    its last flush is in the log, which reopens and verifies."""
    script = f"""
import os, signal
from hybridsync import Memory
from hybridsync.audit import AuditPolicy
m = Memory("k", path={str(tmp_path / "k.db")!r}, audit=AuditPolicy(sign_every=3))
for i in range(10):
    m.text["d"] = f"v{{i}}"
    m.meta["n"] = i
    m.flush()
m.text["d"] = "not flushed"
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", script], check=False)
    assert proc.returncode == -signal.SIGKILL
    report = verify_log(tmp_path / "k.db")
    assert report.ok, report.problems
    assert report.last_seq == 20 and report.signed_seq == 20  # signed at 4, 8, .., 20
    with Memory("k", path=tmp_path / "k.db") as m:
        assert m.text["d"] == "v9" and m.audit is not None and m.audit.seq == 20
    assert verify_log(tmp_path / "k.db").ok


# -- randomized schedules --------------------------------------------------------


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    schedule=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 3), st.text(max_size=12), st.booleans()),
        min_size=1,
        max_size=25,
    ),
    sign_every=st.integers(1, 4),
)
def test_random_schedules_attribute_every_value_to_its_writer(
    schedule: list[tuple[int, int, str, bool]], sign_every: int
) -> None:
    """Agents write documents they own (text or metadata) in a random order,
    exchanging with the hub at random points; once settled (and each log
    signed), every replica's log verifies and attributes each document's and
    key's latest value to its owner, confirmed by the owner's claim."""
    policy = AuditPolicy(sign_every=sign_every)
    hub = Memory("h", audit=policy)
    agents = [Memory(f"a{i}", audit=policy) for i in range(3)]
    pairs = [
        (Link(m, "h", role="client", epoch=20 + i), Link(hub, m.replica_id, role="server"))
        for i, m in enumerate(agents)
    ]
    owner: dict[str, str] = {}
    for who, doc, value, meta in schedule:
        m = agents[who]
        name = f"{m.replica_id}-{doc}"
        if meta:
            m.meta[name] = value
            owner["meta:" + name] = m.replica_id
        else:
            m.text[name] = value
            owner["text:" + name] = m.replica_id
        if doc % 2:
            exchange(*pairs[who])
    for m in [hub, *agents]:
        assert m.audit is not None
        m.audit.sign()
    settle(pairs, rounds=4)
    for m in [hub, *agents]:
        assert m.audit is not None
        m.audit.sign()
    settle(pairs, rounds=4)
    for m in [hub, *agents]:
        assert m.audit is not None
        assert verify_log(m.audit).ok
        for key, writer in owner.items():
            channel, name = key.split(":", 1)
            rows = (
                attribute(m.audit, key=name) if channel == "meta" else attribute(m.audit, doc=name)
            )
            if not rows:  # a value equal to what the replica held: no change to log
                continue
            last = rows[-1]
            assert (last.writer, last.confirmed) == (writer, True), (m.replica_id, key)
