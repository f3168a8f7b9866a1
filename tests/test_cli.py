"""The ``hybridsync`` command: help, a hub and two nodes in separate processes
(files mirrored both ways, status, a wrong secret refused, the secret never
printed), and a short run of the live demo.

Every wait polls a condition (no fixed sleep decides a result) against a
hang guard of minutes, which a healthy run never gets near, however slow the
machine.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from hybridsync.cli import main

CLI = [sys.executable, "-m", "hybridsync.cli"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Hang guard of each wait for an event or a process.
GUARD = 300.0


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = GUARD) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class Proc:
    """A CLI process whose output is collected by background threads."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [*CLI, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self.threads:
            t.start()

    @staticmethod
    def _pump(stream: object, sink: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            sink.append(line)

    @property
    def output(self) -> str:
        return "".join(self.out) + "".join(self.err)

    def stop(self, timeout: float = GUARD) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.args[0]} did not stop on SIGINT:\n{self.output}") from None
        finally:
            self.close()
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for t in self.threads:
            t.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = GUARD
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def documents_in_status(folder: Path) -> int | None:
    """The ``documents`` count of the one status record in ``folder``, if any."""
    records = list(folder.glob("*.json"))
    if len(records) != 1:
        return None
    try:
        value = json.loads(records[0].read_text())["documents"]
    except (OSError, ValueError, KeyError):
        return None  # replaced or removed meanwhile
    return int(value)


def read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return None


# -- help -------------------------------------------------------------------------


def test_help() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    for command in ("serve", "join", "status", "demo", "keygen"):
        assert command in result.output
        sub = runner.invoke(main, [command, "--help"])
        assert sub.exit_code == 0, sub.output
    assert "--secret-env" in runner.invoke(main, ["serve", "--help"]).output
    # No option takes the secret itself.
    assert "--secret " not in runner.invoke(main, ["join", "--help"]).output
    # The module runs as a program too (what the console script calls).
    proc = subprocess.run([*CLI, "--help"], capture_output=True, text=True, timeout=GUARD)
    assert proc.returncode == 0 and "hybridsync" in proc.stdout


def test_keygen_makes_distinct_usable_secrets(tmp_path: Path) -> None:
    runner = CliRunner()
    a, b = runner.invoke(main, ["keygen"]), runner.invoke(main, ["keygen"])
    assert a.exit_code == b.exit_code == 0
    assert a.output != b.output and len(a.output.strip()) >= 32
    target = tmp_path / "secret"
    assert runner.invoke(main, ["keygen", "--out", str(target)]).exit_code == 0
    assert target.stat().st_mode & 0o777 == 0o600
    again = runner.invoke(main, ["keygen", "--out", str(target)])
    assert again.exit_code != 0 and "not overwriting" in again.output


# -- serve, join, status ---------------------------------------------------------------


def test_serve_join_status_end_to_end(tmp_path: Path) -> None:
    secret = secrets.token_urlsafe(32)
    env = dict(
        os.environ,
        HYBRIDSYNC_SECRET=secret,
        HYBRIDSYNC_STATUS_DIR=str(tmp_path / "status"),
        COLUMNS="200",
    )
    fast = ["--status-interval", "0.2", "--scan-interval", "0.05"]
    dirs = {name: tmp_path / name for name in ("hub", "a", "b")}
    for folder in dirs.values():
        folder.mkdir()
    procs: list[Proc] = []
    outputs: list[str] = []
    try:
        # No secret: refused before anything starts, with a clear message.
        bare = {k: v for k, v in env.items() if k != "HYBRIDSYNC_SECRET"}
        refused = run_cli(["serve", "--port", "0"], bare)
        assert refused.returncode == 2
        assert "HYBRIDSYNC_SECRET" in refused.stderr
        outputs += [refused.stdout, refused.stderr]

        hub = Proc(["serve", "--port", "0", "--id", "hub", "--dir", str(dirs["hub"]), *fast], env)
        procs.append(hub)
        url_of: list[str] = []

        def hub_url() -> bool:
            match = re.search(r"serving on (ws://\S+)", "".join(hub.out))
            if match:
                url_of.append(match.group(1))
            assert hub.proc.poll() is None, hub.output
            return bool(match)

        wait_for(hub_url, "the hub's URL")
        url = url_of[0]
        nodes = {
            name: Proc(["join", url, "--id", name, "--dir", str(dirs[name]), *fast], env)
            for name in ("a", "b")
        }
        procs.extend(nodes.values())

        # A file written in one node's folder reaches every folder.
        (dirs["a"] / "plan.md").write_text("1. collect failing tests\n2. bisect\n")
        (dirs["b"] / "notes").mkdir(parents=True)
        (dirs["b"] / "notes" / "b.md").write_text("b was here\n")

        def same_everywhere(name: str, expect: Callable[[str], bool]) -> Callable[[], bool]:
            def check() -> bool:
                texts = {read(d / name) for d in dirs.values()}
                return len(texts) == 1 and all(t is not None and expect(t) for t in texts)

            return check

        wait_for(same_everywhere("plan.md", lambda t: "bisect" in t), "plan.md everywhere")
        wait_for(same_everywhere("notes/b.md", lambda t: "b was" in t), "notes/b.md")

        # Concurrent edits of one document in two folders: both survive.
        plan_b = dirs["b"] / "plan.md"
        plan_a = dirs["a"] / "plan.md"
        plan_a.write_text(plan_a.read_text() + "3. edit from a\n")
        plan_b.write_text("0. edit from b\n" + plan_b.read_text())
        wait_for(
            same_everywhere("plan.md", lambda t: "edit from a" in t and "edit from b" in t),
            "both concurrent edits in every folder",
        )

        # status: the hub's links, by URL, HOST:PORT and from the JSON record.
        port = url.rsplit(":", 1)[1]
        table = run_cli(["status", url], env)
        assert table.returncode == 0, table.stdout + table.stderr
        assert "upstream" not in table.stdout and "child" in table.stdout
        for name in ("a", "b"):
            assert re.search(rf"\b{name}\b.*connected", table.stdout), table.stdout
        outputs += [table.stdout, table.stderr]

        def record(target: str) -> dict[str, object]:
            result = run_cli(["status", "--json", target], env)
            outputs.extend([result.stdout, result.stderr])
            assert result.returncode == 0, result.stderr
            value = json.loads(result.stdout)
            assert isinstance(value, dict)
            return value

        def digests_equal() -> bool:
            return len({record(t)["digest"] for t in (f"127.0.0.1:{port}", "a", "b")}) == 1

        wait_for(digests_equal, "equal digests in the status records")
        hub_record = record(port)
        links = {link["peer_id"]: link for link in hub_record["links"]}  # type: ignore[attr-defined]
        assert set(links) == {"a", "b"}
        for link in links.values():
            assert link["connected"] and link["exchanges"] > 0
            assert link["link"]["bytes_sent"] > 0 and link["link"]["resyncs"] == 0
        assert run_cli(["status", "127.0.0.1:1"], env).returncode != 0

        # A node with the wrong secret is refused and stops with a clear error.
        intruder_env = dict(env, HYBRIDSYNC_SECRET=secrets.token_urlsafe(32))
        intruder = run_cli(
            ["join", url, "--id", "intruder", "--dir", str(tmp_path / "intruder")],
            intruder_env,
        )
        assert intruder.returncode != 0
        assert "authentication" in (intruder.stdout + intruder.stderr).lower()
        assert not list((tmp_path / "intruder").rglob("*.md"))
        outputs += [intruder.stdout, intruder.stderr]
        assert {link["peer_id"] for link in record(port)["links"]} == {"a", "b"}  # type: ignore[attr-defined]
        status_files = sorted((tmp_path / "status").glob("*.json"))
        assert len(status_files) == 3
        outputs += [p.read_text() for p in status_files]

        # Ctrl-C: every process stops cleanly and removes its status file.
        for proc in [*nodes.values(), hub]:
            assert proc.stop() == 0, proc.output
        assert not list((tmp_path / "status").glob("*.json"))
        for name in ("hub", "a", "b"):
            assert read(dirs[name] / "plan.md") == read(dirs["a"] / "plan.md")
    finally:
        for proc in procs:
            proc.close()
            outputs.append(proc.output)
    leaked = [text for text in outputs if secret in text or secret[:16] in text]
    assert not leaked, "the secret appeared in an output"


# -- the demo ------------------------------------------------------------------------


def test_demo_short_run(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = dict(os.environ, COLUMNS="160")
    # The agents write for 5 s; convergence after that is waited for, not
    # timed (the timeouts are hang guards).
    args = ["demo", "--duration", "5", "--converge-timeout", str(GUARD), "--out", str(out)]
    result = run_cli(args, env, timeout=3 * GUARD)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "convergence" in output and "yes" in output
    assert "pure CRDT" in output
    # The KV channel: a row in the results, the bytes table and the comparison.
    assert re.search(r"KV caches\s*[│|]\s*identical on all 4 replicas", output), output
    assert re.search(r"KV caches\s*[│|]\s*[\d,]+\s*[│|]", output), output
    assert "not yet" not in output
    png = out / "swarm.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    summary = json.loads((out / "summary.json").read_text())
    assert summary["converged"] is True and summary["lost_writes"] == []
    assert len(set(summary["digests"].values())) == 1 and len(summary["digests"]) == 4
    assert summary["faults"]["lost"] > 0
    assert summary["bytes"]["total"] == summary["bytes"]["link_counters"]
    assert summary["pure_crdt_estimate"]["replay_reproduces_texts"] is True
    # Every agent wrote its own KV cache; every replica ended with the same caches.
    kv = summary["kv_caches"]
    assert kv["replicas_agree"] is True
    assert sorted(kv["caches"]) == ["kv/agent-1", "kv/agent-2", "kv/agent-3"]
    for name, cache in kv["caches"].items():
        assert cache["owner"] == name.removeprefix("kv/")
    assert kv["appends"] > 0 and kv["appended_tokens"] > 0 and kv["tokens"] > 0
    assert summary["writes"]["kv"] == kv["appends"] + kv["truncations"]
    assert summary["bytes"]["kv"] > 0 and kv["pages_sent"] > 0
    assert summary["pure_crdt_estimate"]["kv_wire_bytes"] > 0


def test_serve_with_data_keeps_the_replica_across_restarts(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        HYBRIDSYNC_SECRET=secrets.token_urlsafe(32),
        HYBRIDSYNC_STATUS_DIR=str(tmp_path / "status"),
    )
    fast = ["--status-interval", "0.2", "--scan-interval", "0.05", "--no-live"]
    data = tmp_path / "hub.db"
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    args = ["serve", "--port", "0", "--id", "hub", "--data", str(data)]
    hub = Proc([*args, "--dir", str(first), *fast], env)
    try:
        (first / "plan.md").write_text("1. keep me\n")
        wait_for(lambda: "serving on" in "".join(hub.out), "the hub")
        # Until a scan of the folder took the document in (the status record
        # is written after the scan), not for a fixed time.
        wait_for(lambda: documents_in_status(tmp_path / "status") == 1, "plan.md scanned")
        assert hub.stop() == 0, hub.output
    finally:
        hub.close()
    assert data.exists()
    # Restarted on the same file with an empty folder: the document is back.
    again = Proc([*args, "--dir", str(second), *fast], env)
    try:
        wait_for(lambda: read(second / "plan.md") == "1. keep me\n", "plan.md restored")
        assert again.stop() == 0, again.output
    finally:
        again.close()
    # A second process on the same file is refused with a clear error.
    holder = Proc([*args, *fast], env)
    try:
        wait_for(lambda: "serving on" in "".join(holder.out), "the hub")
        refused = run_cli([*args, *fast], env)
        assert refused.returncode != 0
        assert "another process" in refused.stderr, refused.stderr
    finally:
        holder.stop()
