"""Durable replicas: the SQLite file behind ``Memory(replica_id, path=...)``.

One SQLite database (WAL mode) holds everything a replica needs to resume:
its text documents, its metadata (the epoch's CRDT updates plus the log of
own writes), its KV caches (one row per page index, all layers and heads),
and the state of every link (per document: shadow, backup shadow, versions,
unacknowledged edits). Each row carries an xxh3-64 checksum of its key and
content, verified when the file is opened: a corrupted file raises
:class:`~hybridsync.errors.CorruptionError` instead of being served.

A replica saves in one transaction at every commit point: before a link
hands out a new frame (so whatever a peer can learn from us, an
acknowledgement included, is on disk first), and when the application calls
:meth:`Memory.flush`. Only what changed since the last save is written. A
process killed at any instant reopens in the state of its last commit
point, which is a state its peers have seen or will see again: the frames
since then are, to them, frames lost on the network, which the protocol
already heals.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import sqlite3
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import xxhash

from hybridsync.channels.events import ChangeBus, Origin
from hybridsync.channels.kv import Geometry, KVCache
from hybridsync.errors import (
    CorruptionError,
    HybridSyncError,
    InvalidArgumentError,
    StorageError,
)
from hybridsync.sync.link import Link, Replica

__all__ = ["Store"]

FORMAT_VERSION = 1
#: Appended metadata updates are folded into one row past this many.
_META_ROWS = 64
#: A page that grew by appends is stored as parts (rows appended since the
#: last save); past this many parts the page is rewritten as one.
_MAX_PARTS = 16

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value BLOB NOT NULL, sum INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS text (name TEXT PRIMARY KEY, body BLOB NOT NULL, sum INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta_updates (
    n INTEGER PRIMARY KEY, data BLOB NOT NULL, sum INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS kv_caches (
    name TEXT PRIMARY KEY, header BLOB NOT NULL, sum INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS kv_pages (
    name TEXT NOT NULL, page INTEGER NOT NULL, part INTEGER NOT NULL, data BLOB NOT NULL,
    sum INTEGER NOT NULL, PRIMARY KEY (name, page, part));
CREATE TABLE IF NOT EXISTS links (
    role TEXT NOT NULL, peer TEXT NOT NULL, header BLOB NOT NULL, sum INTEGER NOT NULL,
    PRIMARY KEY (role, peer));
CREATE TABLE IF NOT EXISTS link_docs (
    role TEXT NOT NULL, peer TEXT NOT NULL, name TEXT NOT NULL, state BLOB NOT NULL,
    sum INTEGER NOT NULL, PRIMARY KEY (role, peer, name));
"""
#: The tables of a replica file (every one exists from the file's creation on).
_TABLES = frozenset(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", _SCHEMA))

_SQLITE_MAGIC = b"SQLite format 3\x00"


def _sum(*parts: bytes | str) -> int:
    """xxh3-64 of length-prefixed parts, as a signed 64-bit SQLite integer."""
    h = xxhash.xxh3_64()
    for part in parts:
        if isinstance(part, str):
            data = part.encode()
        elif isinstance(part, bytes):
            data = part
        else:  # a damaged file: NULL or a number where a key or content belongs
            raise CorruptionError(
                f"a row holds a {type(part).__name__} where bytes or text belong: "
                "the replica file is damaged"
            )
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    v = h.intdigest()
    return v - (1 << 64) if v >= 1 << 63 else v


def _uint(x: object) -> bool:
    return type(x) is int and x >= 0


def _pack(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def _unpack(data: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise CorruptionError(f"{what} does not decode: {exc}") from None


def _page_fingerprints(cache: KVCache, first: int, last: int) -> list[int]:
    """One 64-bit fingerprint per page index (its hashes over every layer,
    K|V and head): equal fingerprints, equal page rows."""
    cache.refresh()
    table = cache.page_table.hashes
    out = []
    for p in range(first, last):
        out.append(xxhash.xxh3_64_intdigest(np.ascontiguousarray(table[..., p]).tobytes()))
    return out


class Store:
    """The SQLite file of one durable replica (used by :class:`Memory`)."""

    def __init__(self, path: str | os.PathLike[str], replica_id: str, *, fsync: bool) -> None:
        self.path = Path(path)
        #: Saves done and bytes written (row contents), for metrics.
        self.saves = 0
        self.bytes_written = 0
        if self.path.is_dir():
            raise InvalidArgumentError(f"{self.path} is a directory; give a file path")
        self._check_header()
        try:
            # isolation_level=None: transactions are explicit (BEGIN ... COMMIT).
            # Any thread may save (the network layer's loop thread does);
            # the replica's users serialise access to it.
            self._db = sqlite3.connect(
                self.path, isolation_level=None, timeout=0, check_same_thread=False
            )
            # Read before anything is written: a file that is not a database
            # fails here, and another application's database is left as it is.
            tables = {
                name
                for (name,) in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if tables and "info" not in tables:
                self._db.close()
                raise StorageError(
                    f"{self.path} is an SQLite database of another application (tables "
                    f"{', '.join(sorted(tables)[:5])}), not a hybridsync replica file"
                )
            missing = _TABLES - tables
            if tables and missing:
                # A replica file holds every table from its creation on: some
                # are gone from the schema (damage), and creating them again
                # would change a file that is refused anyway.
                self._db.close()
                raise CorruptionError(
                    f"{self.path} is not a readable replica file: tables "
                    f"{', '.join(sorted(missing))} are missing"
                )
            # Larger pages: KV page rows are megabytes; 16 KiB pages cut the
            # overflow-page bookkeeping 4x (takes effect when the file is created).
            self._db.execute("PRAGMA page_size=16384")
            self._db.execute("PRAGMA journal_mode=WAL")
            # Checkpoint (copy the log into the file) past ~64 MiB, not 4 MiB:
            # fewer, larger copies when big KV pages stream through.
            self._db.execute("PRAGMA wal_autocheckpoint=4096")
            self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            # One process holds a replica's file: a second open fails fast
            # instead of two replicas writing one history.
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.execute("BEGIN EXCLUSIVE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
        except (sqlite3.Error, UnicodeDecodeError) as exc:  # (a damaged schema's names)
            if hasattr(self, "_db"):
                self._db.close()
            if not isinstance(exc, sqlite3.OperationalError):
                raise CorruptionError(
                    f"{self.path} is not a readable replica file: {exc}"
                ) from None
            if "locked" in str(exc):
                raise StorageError(
                    f"{self.path} is open in another process (one process per replica file)"
                ) from None
            raise StorageError(f"cannot open {self.path}: {exc}") from None
        try:
            info = self._info()
            created = not info
            if created:
                self._put_info("format", FORMAT_VERSION)
                self._put_info("replica_id", replica_id)
                info["incarnation"] = secrets.token_bytes(16)
                self._put_info("incarnation", info["incarnation"])
            else:
                if info.get("format") != FORMAT_VERSION:
                    raise StorageError(
                        f"{self.path} uses replica file format {info.get('format')!r}; "
                        f"this build reads format {FORMAT_VERSION}"
                    )
                if info.get("replica_id") != replica_id:
                    raise InvalidArgumentError(
                        f"{self.path} holds replica {info.get('replica_id')!r}, not {replica_id!r}"
                    )
            if created:
                self._db.execute("COMMIT")
            # An existing file: the transaction stays open (nothing written)
            # until load() has read and checked it; a file it refuses is
            # closed with a rollback, as it was (committing, even nothing,
            # lets SQLite rewrite a damaged header).
            self._loading = not created
            #: Identifies the replica's history across reopenings (the hub
            #: handshake shows it: peers resume their links while it holds).
            incarnation = info.get("incarnation")
            if not isinstance(incarnation, bytes) or not 0 < len(incarnation) <= 64:
                raise CorruptionError(f"{self.path}: the replica's incarnation is malformed")
            self.incarnation = incarnation
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            # Damage SQLite finds only now (reading the info rows, committing).
            self._db.close()
            if isinstance(exc, sqlite3.OperationalError):
                raise StorageError(f"cannot open {self.path}: {exc}") from None
            raise CorruptionError(f"{self.path} is not a readable replica file: {exc}") from None
        except BaseException:
            self._db.close()
            raise
        #: What the file holds of the metadata document: (epoch, state vector, rows).
        self._meta_epoch = -1
        self._meta_state = b""
        self._meta_rows = 0
        self._meta_saved = b""
        self._meta_seen: tuple[Any, ...] = ()
        #: Checksums of the text rows on disk (their count and xor go in the manifest).
        self._text_sums: dict[str, int] = {}
        self._text_sums_committed: dict[str, int] = {}
        #: Per KV cache, the fingerprints of the pages on disk.
        self._kv_prints: dict[str, list[int]] = {}
        #: Per KV cache and page, where the page's parts on disk end (offsets).
        self._kv_parts: dict[str, dict[int, list[int]]] = {}
        self._kv_headers: dict[str, bytes] = {}
        self._kv_geometry: dict[str, Any] = {}
        self._deleted_saved = b""
        #: What changed since the last save (heard on the replica's change bus).
        self._unsaved_text: set[str] = set()
        self._unsaved_kv: dict[str, int] = {}
        self._changes: ChangeBus | None = None

    def _check_header(self) -> None:
        """Refuse an existing file that does not start as an SQLite database:
        SQLite would take a file of a few bytes (a truncated replica) for an
        empty one and overwrite it."""
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            return  # a new replica
        except OSError as exc:
            raise StorageError(f"cannot open {self.path}: {exc.strerror}") from None
        try:
            magic = os.read(fd, len(_SQLITE_MAGIC))
        except OSError as exc:
            raise StorageError(f"cannot read {self.path}: {exc.strerror}") from None
        finally:
            os.close(fd)
        if magic and magic != _SQLITE_MAGIC:
            raise CorruptionError(
                f"{self.path} is not a replica file: it does not start with the SQLite header "
                f"(a truncated or foreign file; {len(magic)}+ bytes)"
            )

    # -- what changed ------------------------------------------------------------

    def on_text_changed(self, name: str, origin: Origin) -> None:
        self._unsaved_text.add(name)

    def on_text_deleted(self, name: str, origin: Origin) -> None:
        self._unsaved_text.add(name)

    def on_meta_changed(self, origin: Origin) -> None:
        pass  # compared with the file's state at each save

    def on_kv_changed(
        self, name: str, first_page: int, source: object, *, reset: bool, first_token: int
    ) -> None:
        # The first token row written since the last save.
        token = 0 if reset else first_token
        self._unsaved_kv[name] = min(token, self._unsaved_kv.get(name, token))

    def on_kv_deleted(self, name: str, owner: str, uid: int, source: object) -> None:
        self._unsaved_kv[name] = 0

    # -- small helpers -----------------------------------------------------------

    def _rows(self, sql: str, *args: Any) -> list[Any]:
        try:
            return self._db.execute(sql, args).fetchall()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            raise CorruptionError(f"{self.path}: {exc}") from None

    def _info(self) -> dict[str, Any]:
        out = {}
        for key, value, s in self._rows("SELECT key, value, sum FROM info"):
            if _sum("info", key, value) != s:
                raise CorruptionError(f"{self.path}: checksum mismatch in info row {key!r}")
            out[key] = _unpack(value, f"info row {key!r}")
        return out

    def _put_info(self, key: str, value: Any) -> None:
        data = _pack(value)
        self._db.execute(
            "INSERT OR REPLACE INTO info VALUES (?, ?, ?)", (key, data, _sum("info", key, data))
        )
        self.bytes_written += len(data)

    def close(self) -> None:
        if self._changes is not None:
            self._changes.remove_listener(self)
            self._changes = None
        if getattr(self, "_loading", False):
            self._loading = False
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
        self._db.close()

    # -- loading -------------------------------------------------------------------

    def load(self, memory: Replica) -> None:
        """Fill a fresh replica from the file, and from then on hear of its
        changes (to save them). Raises CorruptionError.

        Every row is checksummed, so rows of the wrong shape come only from a
        file written by something else: whatever they make fail is reported
        as CorruptionError too, and no row can make the replica allocate more
        than the file holds (a KV cache's token count is checked against its
        page bytes on disk before any buffer is reserved). The replica is
        meant to be dropped when this raises (``Memory`` does)."""
        try:
            self._load(memory)
            if self._loading:
                self._loading = False
                self._db.execute("COMMIT")
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise CorruptionError(f"{self.path} is not a readable replica file: {exc}") from None
        except StorageError:
            raise
        except HybridSyncError as exc:  # a stored geometry or value the channels refuse
            raise CorruptionError(f"{self.path}: a stored value is refused: {exc}") from None
        except (
            KeyError,
            TypeError,
            ValueError,
            IndexError,
            AttributeError,
            OverflowError,
            RecursionError,
        ) as exc:
            raise CorruptionError(
                f"{self.path}: a row of the replica file is malformed ({type(exc).__name__}: {exc})"
            ) from None

    def _load(self, memory: Replica) -> None:
        self._changes = memory.changes
        memory.changes.add_listener(self)
        text = memory.text
        for name, body, s in self._rows("SELECT name, body, sum FROM text ORDER BY name"):
            if _sum("text", name, body) != s:
                raise CorruptionError(f"{self.path}: checksum mismatch in text document {name!r}")
            try:
                text.restore(name, body.decode())
            except UnicodeDecodeError:
                raise CorruptionError(f"{self.path}: text document {name!r} is not UTF-8") from None
            self._text_sums[name] = s
        self._text_sums_committed = dict(self._text_sums)
        info = self._info()
        manifest = info.get("manifest")
        if manifest is not None:
            self._check_manifest(manifest)
        saved = info.get("meta")
        if saved is not None:
            updates = []
            for n, data, s in self._rows("SELECT n, data, sum FROM meta_updates ORDER BY n"):
                if _sum("meta", str(n), data) != s:
                    raise CorruptionError(f"{self.path}: checksum mismatch in metadata update {n}")
                updates.append(bytes(data))
            try:
                memory.meta.restore_state(saved, bytes(info.get("meta_base", b"")), updates)
            except Exception as exc:  # pycrdt raises ValueError and RuntimeError
                raise CorruptionError(
                    f"{self.path}: metadata does not reload ({type(exc).__name__}: {exc})"
                ) from None
            self._meta_epoch = memory.meta.epoch_id
            self._meta_state = memory.meta.state()
            self._meta_rows = len(updates)
            self._meta_saved = _pack(memory.meta.saved_state())
            self._meta_seen = self._meta_key(memory)
        deleted = info.get("kv_deleted", {})
        port = memory.kv.port
        port.restore_deletions({k: (str(o), int(u)) for k, (o, u) in deleted.items()})
        self._deleted_saved = _pack(deleted)
        for name, header, s in self._rows("SELECT name, header, sum FROM kv_caches ORDER BY name"):
            if _sum("kv", name, header) != s:
                raise CorruptionError(f"{self.path}: checksum mismatch in KV cache {name!r}")
            h = _unpack(header, f"KV cache {name!r}")
            g = Geometry(*h["geometry"])
            g.check()
            tokens = h["tokens"]
            ((stored,),) = self._rows(
                "SELECT coalesce(sum(length(data)), 0) FROM kv_pages WHERE name = ?", name
            )
            need = g.layers * 2 * g.kv_heads * g.row_bytes * tokens if _uint(tokens) else -1
            if not 0 <= need <= stored:
                raise CorruptionError(
                    f"{self.path}: KV cache {name!r} declares {tokens!r} tokens; its pages on "
                    f"disk hold {stored} bytes"
                )
            cache = port.blank(g, tokens)
            pt = g.page_tokens
            rows = self._rows(
                "SELECT page, part, data, sum FROM kv_pages WHERE name = ? ORDER BY page, part",
                name,
            )
            ends: dict[int, list[int]] = {}  # page -> offsets where its parts end
            for page, part, data, s in rows:
                if _sum("kvpage", name, str(page), str(part), data) != s:
                    raise CorruptionError(
                        f"{self.path}: checksum mismatch in page {page} of KV cache {name!r}"
                    )
                done = ends.setdefault(page, [0])
                n, rest = divmod(len(data), g.layers * 2 * g.kv_heads * cache.row_bytes)
                t0 = page * pt + part
                if part != done[-1] or rest or not 0 < n <= min(tokens, (page + 1) * pt) - t0:
                    raise CorruptionError(
                        f"{self.path}: page {page} of KV cache {name!r} does not fit together"
                    )
                block = np.frombuffer(data, np.uint8).reshape(
                    g.layers, 2, g.kv_heads, n, cache.row_bytes
                )
                port.put_rows(cache, t0, block)
                done.append(part + n)
            for page in range(cache.pages):
                if ends.get(page, [0])[-1] != min(tokens, (page + 1) * pt) - page * pt:
                    raise CorruptionError(
                        f"{self.path}: page {page} of KV cache {name!r} is missing on disk"
                    )
            if len(ends) != cache.pages:
                raise CorruptionError(f"{self.path}: KV cache {name!r} has extra pages on disk")
            if cache.digest() != int(h["digest"]):
                raise CorruptionError(
                    f"{self.path}: KV cache {name!r} does not match its digest on reload"
                )
            port.attach(name, cache, str(h["owner"]), int(h["uid"]))
            self._kv_prints[name] = _page_fingerprints(cache, 0, cache.pages)
            self._kv_parts[name] = {p: e[1:] for p, e in ends.items()}
            self._kv_headers[name] = bytes(header)
            self._kv_geometry[name] = g

    def _check_manifest(self, manifest: dict[str, Any]) -> None:
        xor = 0
        for v in self._text_sums.values():
            xor ^= v
        if [len(self._text_sums), xor] != list(manifest["text"]):
            raise CorruptionError(
                f"{self.path}: the text documents on disk are not the ones last saved "
                "(rows missing or added)"
            )
        ((count,),) = self._rows("SELECT count(*) FROM meta_updates")
        if count != manifest["meta_rows"]:
            raise CorruptionError(
                f"{self.path}: {count} metadata update rows on disk, {manifest['meta_rows']} saved"
            )
        names = [name for (name,) in self._rows("SELECT name FROM kv_caches ORDER BY name")]
        if names != list(manifest["kv_caches"]):
            raise CorruptionError(f"{self.path}: the KV caches on disk are not the ones saved")

    def link_state(self, role: str, peer: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The saved header and documents of a link, or None."""
        row = self._rows("SELECT header, sum FROM links WHERE role = ? AND peer = ?", role, peer)
        if not row:
            return None
        header, s = row[0]
        if _sum("link", role, peer, header) != s:
            raise CorruptionError(f"{self.path}: checksum mismatch in the link to {peer!r}")
        docs = {}
        for name, state, s in self._rows(
            "SELECT name, state, sum FROM link_docs WHERE role = ? AND peer = ?", role, peer
        ):
            if _sum("linkdoc", role, peer, name, state) != s:
                raise CorruptionError(
                    f"{self.path}: checksum mismatch in the link to {peer!r}, document {name!r}"
                )
            docs[name] = _unpack(state, f"link state of {name!r}")
        saved = _unpack(header, f"link to {peer!r}")
        if not isinstance(saved, dict) or saved.get("docs") != len(docs):
            raise CorruptionError(
                f"{self.path}: the saved link to {peer!r} does not list the {len(docs)} "
                "documents the file holds for it"
            )
        return saved, docs

    def stored_links(self) -> list[tuple[str, str]]:
        """(role, peer id) of every saved link."""
        return [(r, p) for r, p in self._rows("SELECT role, peer FROM links ORDER BY role, peer")]

    # -- saving ----------------------------------------------------------------------

    @staticmethod
    def _meta_key(memory: Replica) -> tuple[Any, ...]:
        """Changes whenever the metadata's saved form would."""
        return memory.meta.persist_key()

    def save(self, memory: Replica) -> None:
        """Write what changed since the last save, in one transaction."""
        if not (
            self._unsaved_text
            or self._unsaved_kv
            or self._meta_key(memory) != self._meta_seen
            or any(link.unsaved for link in memory.links)
        ):
            return
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                self._save_text(memory)
                self._save_meta(memory)
                self._save_kv(memory)
                for link in memory.links:
                    self._save_link(link)
                self._put_info("manifest", self._manifest())
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                self._forget_saved(memory)
                raise
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"cannot write {self.path}: {exc}") from None
        # Only now, with the transaction committed, is the tracking reset.
        self._text_sums_committed = dict(self._text_sums)
        self._unsaved_text.clear()
        self._unsaved_kv.clear()
        for link in memory.links:
            link.mark_saved()
        self.saves += 1

    def _forget_saved(self, memory: Replica) -> None:
        """A save failed and rolled back: what this object believed the file
        holds is unreliable. The next save rewrites the metadata and every
        KV cache from scratch (text and links are tracked by the replica and
        kept until a save commits)."""
        for name in memory.kv:
            self._unsaved_kv[name] = 0
        self._meta_epoch = -1
        self._meta_saved = b""
        self._meta_seen = ()
        self._kv_prints.clear()
        self._kv_parts.clear()
        self._kv_headers.clear()
        self._kv_geometry.clear()
        self._deleted_saved = b""
        self._text_sums = dict(self._text_sums_committed)

    def _manifest(self) -> dict[str, Any]:
        """What rows the file must hold: missing or extra rows are corruption
        a per-row checksum cannot see."""
        xor = 0
        for v in self._text_sums.values():
            xor ^= v
        return {
            "text": [len(self._text_sums), xor],
            "meta_rows": self._meta_rows,
            "kv_caches": sorted(self._kv_headers),
        }

    def _save_text(self, memory: Replica) -> None:
        docs = memory.text
        for name in sorted(self._unsaved_text):
            body = docs.get(name)
            if body is None:
                self._db.execute("DELETE FROM text WHERE name = ?", (name,))
                self._text_sums.pop(name, None)
                continue
            data = body.encode()
            s = _sum("text", name, data)
            self._db.execute("INSERT OR REPLACE INTO text VALUES (?, ?, ?)", (name, data, s))
            self._text_sums[name] = s
            self.bytes_written += len(data)

    def _save_meta(self, memory: Replica) -> None:
        meta = memory.meta
        state = meta.state()
        if meta.epoch_id != self._meta_epoch:
            self._put_info("meta_base", meta.base)  # once per epoch
        if meta.epoch_id != self._meta_epoch or self._meta_rows >= _META_ROWS:
            self._db.execute("DELETE FROM meta_updates")
            rows = [meta.update_since(None)]
        elif state != self._meta_state:
            rows = [meta.update_since(self._meta_state)]
        else:
            rows = []
        if meta.epoch_id != self._meta_epoch or self._meta_rows >= _META_ROWS:
            self._meta_rows = 0
        for data in rows:
            n = self._meta_rows
            self._db.execute(
                "INSERT INTO meta_updates VALUES (?, ?, ?)", (n, data, _sum("meta", str(n), data))
            )
            self._meta_rows += 1
            self.bytes_written += len(data)
        self._meta_epoch, self._meta_state = meta.epoch_id, state
        state_saved = meta.saved_state()
        saved = _pack(state_saved)
        if saved != self._meta_saved:
            self._put_info("meta", state_saved)
            self._meta_saved = saved
        self._meta_seen = self._meta_key(memory)

    def _save_kv(self, memory: Replica) -> None:
        kv = memory.kv
        deletions = kv.port.deletions()
        deleted = _pack(deletions)
        if deleted != self._deleted_saved:
            self._put_info("kv_deleted", deletions)
            self._deleted_saved = deleted
        for name, first in sorted(self._unsaved_kv.items()):
            cache = kv.get(name)
            if cache is None:
                self._db.execute("DELETE FROM kv_caches WHERE name = ?", (name,))
                self._db.execute("DELETE FROM kv_pages WHERE name = ?", (name,))
                self._kv_prints.pop(name, None)
                self._kv_parts.pop(name, None)
                self._kv_headers.pop(name, None)
                self._kv_geometry.pop(name, None)
                continue
            self._save_cache(name, cache, first)

    def _save_cache(self, name: str, cache: KVCache, first_token: int) -> None:
        """Write the pages of ``cache`` that changed; ``first_token``: the
        first row written since the last save. A page that only grew gets a
        new part with the rows it gained."""
        g = cache.geometry
        header = _pack(
            {
                "geometry": list(dataclasses.astuple(g)),
                "owner": cache.owner,
                "uid": cache.uid,
                "tokens": cache.tokens,
                "digest": cache.digest(),  # refreshes the page table
            }
        )
        old_header = self._kv_headers.get(name)
        prints = self._kv_prints.get(name)
        parts = self._kv_parts.setdefault(name, {})
        if prints is None or self._kv_geometry.get(name) != g:
            self._db.execute("DELETE FROM kv_pages WHERE name = ?", (name,))
            prints = []
            parts.clear()
            first_token = 0
        pages = cache.pages
        pt = g.page_tokens
        first = min(first_token // pt, len(prints), pages)
        fresh = _page_fingerprints(cache, first, pages)
        for i, fp in enumerate(fresh):
            page = first + i
            if page < len(prints) and prints[page] == fp:
                continue
            end = min(cache.tokens, (page + 1) * pt) - page * pt
            held = parts.get(page, [])
            stored = held[-1] if held else 0
            # Rows below first_token are unchanged since the last save: when
            # the page on disk ends there or before, it only grew.
            if held and stored <= first_token - page * pt and len(held) < _MAX_PARTS:
                start = stored
            else:
                if held:
                    self._db.execute(
                        "DELETE FROM kv_pages WHERE name = ? AND page = ?", (name, page)
                    )
                held = parts[page] = []
                start = 0
            t0, t1 = page * pt + start, page * pt + end
            data = cache.rows(t0, t1).tobytes()
            self._db.execute(
                "INSERT OR REPLACE INTO kv_pages VALUES (?, ?, ?, ?, ?)",
                (name, page, start, data, _sum("kvpage", name, str(page), str(start), data)),
            )
            held.append(end)
            self.bytes_written += len(data)
        if len(prints) > pages:
            self._db.execute("DELETE FROM kv_pages WHERE name = ? AND page >= ?", (name, pages))
            for page in [p for p in parts if p >= pages]:
                del parts[page]
        self._kv_prints[name] = prints[:first] + fresh
        self._kv_geometry[name] = g
        if header != old_header:
            self._db.execute(
                "INSERT OR REPLACE INTO kv_caches VALUES (?, ?, ?)",
                (name, header, _sum("kv", name, header)),
            )
            self._kv_headers[name] = header

    def _save_link(self, link: Link) -> None:
        role, peer = link.role, link.peer_id
        changes = link.unsaved_changes()
        if changes.forget is not None:
            self._db.execute("DELETE FROM links WHERE role = ? AND peer = ?", changes.forget)
            self._db.execute("DELETE FROM link_docs WHERE role = ? AND peer = ?", changes.forget)
        if changes.reset:
            self._db.execute("DELETE FROM links WHERE role = ? AND peer = ?", (role, peer))
            self._db.execute("DELETE FROM link_docs WHERE role = ? AND peer = ?", (role, peer))
        if changes.header or changes.docs or changes.reset:
            header = _pack(link.saved_header())
            self._db.execute(
                "INSERT OR REPLACE INTO links VALUES (?, ?, ?, ?)",
                (role, peer, header, _sum("link", role, peer, header)),
            )
        for name in changes.docs:
            state = link.saved_doc(name)
            if state is None:
                self._db.execute(
                    "DELETE FROM link_docs WHERE role = ? AND peer = ? AND name = ?",
                    (role, peer, name),
                )
                continue
            data = _pack(state)
            self._db.execute(
                "INSERT OR REPLACE INTO link_docs VALUES (?, ?, ?, ?, ?)",
                (role, peer, name, data, _sum("linkdoc", role, peer, name, data)),
            )
            self.bytes_written += len(data)
