"""``--dir``: a replica's text documents mirrored to files, both ways."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hybridsync.channels import text as text_kernels
from hybridsync.errors import HybridSyncError
from hybridsync.memory import Memory

log = logging.getLogger("hybridsync.cli")

#: Files larger than this are not mirrored into the replica.
MAX_MIRROR_FILE_BYTES = 16 << 20


# -- the replica on disk -----------------------------------------------------------


class FolderMirror:
    """Mirror a replica's text documents to files in a folder, both ways.

    Call :meth:`scan` (files -> replica) and then :meth:`flush` (replica ->
    files) periodically, on the thread that owns the replica. A file edited
    locally while its document changed remotely is merged three-way
    (:func:`hybridsync.text.merge3`), so neither edit is lost.
    """

    def __init__(self, memory: Memory, root: Path) -> None:
        self.memory = memory
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        #: The content a file and its document last agreed on.
        self.known: dict[str, str] = {}
        self._stat: dict[str, tuple[int, int]] = {}
        self._warned: set[str] = set()

    def path_of(self, name: str) -> Path | None:
        """The file of a document, or ``None`` if its name cannot be a relative path."""
        parts = name.split("/")
        for part in parts:
            if part in ("", ".", "..") or part.startswith(".") or "\\" in part or "\0" in part:
                return None
        return self.root.joinpath(*parts)

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def _read(self, path: Path) -> str | None:
        try:
            if path.stat().st_size > MAX_MIRROR_FILE_BYTES:
                self._warn_once(f"big:{path}", "not mirroring %s: larger than 16 MB", path)
                return None
            with open(path, encoding="utf-8", newline="") as fh:
                return fh.read()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            self._warn_once(f"read:{path}", "not mirroring %s: %s", path, exc)
            return None

    def _files(self) -> Iterator[tuple[str, Path]]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                if filename.startswith("."):
                    continue
                path = Path(dirpath) / filename
                if not path.is_file() or path.is_symlink():
                    continue
                yield path.relative_to(self.root).as_posix(), path

    def scan(self) -> bool:
        """Read files changed since the last call into the replica; True if it changed."""
        changed = False
        seen: set[str] = set()
        docs = self.memory.text
        for name, path in self._files():
            seen.add(name)
            try:
                info = path.stat()
            except OSError:
                continue
            key = (info.st_mtime_ns, info.st_size)
            if self._stat.get(name) == key and name in self.known:
                continue
            content = self._read(path)
            if content is None:
                continue
            self._stat[name] = key
            base = self.known.get(name)
            if content == base:
                continue
            current = docs.get(name)
            if base is not None and current is not None and current != base:
                # Edited here and remotely since they last agreed: keep both.
                merged = text_kernels.merge3(base, current, content)
            else:
                merged = content
            try:
                if current != merged:
                    docs[name] = merged
                    changed = True
            except HybridSyncError as exc:
                self._warn_once(f"set:{name}", "not mirroring %s: %s", path, exc)
                continue
            self.known[name] = content  # flush() rewrites the file if merged differs
        for name in [n for n in self.known if n not in seen]:
            # Deleted locally.
            del self.known[name]
            self._stat.pop(name, None)
            if name in docs:
                del docs[name]
                changed = True
        return changed

    def flush(self) -> None:
        """Write documents that changed in the replica to their files."""
        docs = self.memory.text
        for name in list(docs):
            value = docs[name]
            if self.known.get(name) == value:
                continue
            path = self.path_of(name)
            if path is None:
                self._warn_once(f"name:{name}", "document %r has no file name: not mirrored", name)
                continue
            on_disk = self._read(path) if path.exists() else None
            if on_disk != self.known.get(name):
                continue  # edited (or deleted) locally since: the next scan merges it
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
                with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                    fh.write(value)
                os.replace(tmp, path)
                info = path.stat()
            except OSError as exc:
                self._warn_once(f"write:{name}", "cannot write %s: %s", path, exc)
                continue
            self.known[name] = value
            self._stat[name] = (info.st_mtime_ns, info.st_size)
        for name in [n for n in self.known if n not in docs]:
            # Deleted remotely.
            path = self.path_of(name)
            if path is not None and self._read(path) == self.known[name]:
                with contextlib.suppress(OSError):
                    path.unlink()
            del self.known[name]
            self._stat.pop(name, None)
