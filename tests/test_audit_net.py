"""The audit log over the real transport: a durable hub and three durable
agents on WebSockets; each value is attributed to the agent that wrote it
on every replica, and a forged head from one agent is refused by the hub,
which keeps syncing.

Waits poll a condition; the deadline is a hang guard only (minutes)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from hybridsync import Memory
from hybridsync.audit import META_PREFIX, AuditPolicy, SignedHead, attribute, verify_log
from hybridsync.audit.verify import received_heads
from hybridsync.net import connect, serve

SECRET = secrets.token_bytes(32)
GUARD = 300.0
FAST: dict[str, Any] = {
    "period": (0.02, None),
    "backoff": (0.02, 0.5),
    "reply_timeout": (0.2, 2.0),
    "handshake_timeout": 10.0,
}


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 900.0))


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + GUARD
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"hang guard: still waiting for {what}")
        await asyncio.sleep(0.02)


def test_attribution_and_forged_heads_through_a_real_hub(tmp_path: Path) -> None:
    policy = AuditPolicy(sign_every=1)

    async def main() -> None:
        hub = Memory("hub", path=tmp_path / "hub.db", audit=policy)
        agents = {n: Memory(n, path=tmp_path / f"{n}.db", audit=policy) for n in "abc"}
        async with serve(hub, "127.0.0.1", 0, secret=SECRET) as server:
            sessions = [
                await connect(m, server.url, secret=SECRET, **FAST).start() for m in agents.values()
            ]
            try:
                agents["a"].text["plan.md"] = "1. gather facts\n"
                agents["b"].meta["tasks"] = {"t1": "open"}
                await wait_until(
                    lambda: all(
                        m.text.get("plan.md") == "1. gather facts\n" and "tasks" in m.meta
                        for m in agents.values()
                    ),
                    "the first writes everywhere",
                )

                # Every replica holds a's key (first use) before c forges.
                def holds_a_head(m: Memory) -> bool:
                    assert m.audit is not None
                    return any(h.replica == "a" for h in received_heads(m.audit.db))

                await wait_until(
                    lambda: all(holds_a_head(m) for m in [hub, agents["b"], agents["c"]]),
                    "a's head on every other replica",
                )
                # c impersonates a: a head named "a" under c's own key.
                assert agents["c"].audit is not None
                c_log = agents["c"].audit
                fake = SignedHead("a", 99, bytes(32), 1, c_log.public_key, b"")
                fake = SignedHead(
                    "a", 99, bytes(32), 1, c_log.public_key, c_log.key.sign(fake.message())
                )
                agents["c"].meta[META_PREFIX + "a"] = fake.to_value()
                agents["c"].text["plan.md"] = "1. gather facts\n2. write the report\n"

                def claimed_everywhere() -> bool:
                    for m in [hub, *agents.values()]:
                        assert m.audit is not None
                        rows = attribute(m.audit, doc="plan.md")
                        if [(r.writer, r.confirmed) for r in rows][-2:] != [
                            ("a", True),
                            ("c", True),
                        ]:
                            return False
                    return True

                await wait_until(claimed_everywhere, "every replica attributing both writes")
                assert hub.audit is not None
                report = verify_log(hub.audit)
                assert report.ok, report.problems
                assert any(w.kind == "forged-head" and "'a'" in w.message for w in report.warnings)
                tasks = attribute(agents["a"].audit, key="tasks")  # type: ignore[arg-type]
                assert {(r.writer, r.confirmed) for r in tasks} == {("b", True)}
            finally:
                for s in sessions:
                    await s.close()
        for m in [hub, *agents.values()]:
            m.close()
        for name in ["hub", *agents]:
            assert verify_log(tmp_path / f"{name}.db").ok

    run(main())
