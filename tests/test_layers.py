"""The package's layers: the import contracts hold (``lint-imports``), the old
module paths still work (the same module objects), and the library imports
none of the tools."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hybridsync
from hybridsync.channels import documents, events, kv, kvfile, meta, text
from hybridsync.sync import frame, link
from hybridsync.sync import kv as kvsync

ROOT = Path(__file__).resolve().parents[1]

MOVED = {
    "hybridsync.text": text,
    "hybridsync.meta": meta,
    "hybridsync.kv": kv,
    "hybridsync.kvfile": kvfile,
    "hybridsync.frame": frame,
    "hybridsync.link": link,
    "hybridsync.kvsync": kvsync,
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_import_paths_are_the_moved_modules(old: str) -> None:
    module = importlib.import_module(old)
    assert module is MOVED[old]
    for name in getattr(module, "__all__", []):
        assert hasattr(module, name), f"{old}.{name}"


def test_public_names_keep_their_identity() -> None:
    from hybridsync.kv import KVCache
    from hybridsync.link import Link
    from hybridsync.memory import Memory, TextDocuments
    from hybridsync.meta import CompactionPolicy
    from hybridsync.store import Store
    from hybridsync.store.sqlite import Store as SqliteStore

    assert hybridsync.KVCache is KVCache is kv.KVCache
    assert hybridsync.Link is Link is link.Link
    assert hybridsync.Memory is Memory
    assert TextDocuments is documents.TextDocuments
    assert CompactionPolicy is meta.CompactionPolicy
    assert Store is SqliteStore
    assert hybridsync.text is text


def test_the_channels_do_not_load_the_layers_above() -> None:
    """A fresh interpreter importing only the data channels loads nothing of
    the sync protocol, the store, the transport or the facade (the package's
    ``__init__`` is bypassed by loading the channel modules by path)."""
    code = (
        "import importlib.util, sys, types\n"
        f"root = {str(ROOT / 'python' / 'hybridsync')!r}\n"
        "pkg = types.ModuleType('hybridsync'); pkg.__path__ = [root]\n"
        "sys.modules['hybridsync'] = pkg\n"
        "import hybridsync.channels.documents, hybridsync.channels.meta\n"
        "import hybridsync.channels.kv, hybridsync.channels.kvfile\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('hybridsync.sync',"
        " 'hybridsync.store', 'hybridsync.net', 'hybridsync.memory', 'hybridsync.demo',"
        " 'hybridsync.bench', 'hybridsync.cli', 'hybridsync.link', 'hybridsync.sim')))\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_metadata_channel_leaves_epochs_to_the_sync_layer() -> None:
    from hybridsync.sync.epochs import EpochMeta

    memory = hybridsync.Memory("m")
    assert type(memory.meta) is EpochMeta and isinstance(memory.meta, meta.Meta)
    for name in ("cross", "maybe_compact", "merge_foreign", "apply_late", "frozen_state"):
        assert hasattr(EpochMeta, name) and not hasattr(meta.Meta, name), name


def test_events_module_names_what_it_exports() -> None:
    for name in events.__all__:
        assert hasattr(events, name)


def test_import_contracts_hold() -> None:
    """The contracts in pyproject.toml ([tool.importlinter]): layers, the
    channels' independence, no tool or old path imported by the library."""
    exe = Path(sys.executable).with_name("lint-imports")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    result = subprocess.run(
        [str(exe), "--config", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


# One module reads another's objects only through their public attributes.
# ``x._name`` is allowed only where ``x`` is ``self``/``cls`` or ``_name`` is
# an attribute this module itself defines (its own classes' privates).


def _modules() -> list[Path]:
    return sorted((ROOT / "python" / "hybridsync").rglob("*.py"))


def _own_privates(tree: ast.Module) -> set[str]:
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    own.add(item.target.id)
                elif isinstance(item, ast.Assign):
                    own.update(t.id for t in item.targets if isinstance(t, ast.Name))
            for item in ast.walk(node):
                if isinstance(item, ast.Constant) and isinstance(item.value, str):
                    own.add(item.value)  # __slots__ entries
    return own


def _reach_through(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = _own_privates(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        attr = node.attr
        if not attr.startswith("_") or attr.startswith("__") or attr in own:
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        found.append(f"{path.name}:{node.lineno}: .{attr}")
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_private_reach_through_between_modules(path: Path) -> None:
    assert _reach_through(path) == []


def test_the_reach_through_check_catches_a_private_read(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f(link):\n    return link._unsaved_header\n", encoding="utf-8")
    assert _reach_through(bad) == ["bad.py:2: ._unsaved_header"]
    good = tmp_path / "good.py"
    good.write_text(
        "class A:\n    def __init__(self):\n        self._x = 1\n\ndef f(a):\n    return a._x\n",
        encoding="utf-8",
    )
    assert _reach_through(good) == []
