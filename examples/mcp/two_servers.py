"""Two MCP memory servers on one machine, syncing through a hub.

    python examples/mcp/two_servers.py

Starts a hub (``hybridsync.serve``), then two ``hybridsync.integrations.mcp``
server processes joined to it, each driven by an MCP client over stdio, as
two agents' runtimes would (Claude Code, Cursor, ... each start their own
server from a config like ``mcp.json`` next to this file). Agent 1 writes
entities, observations and a document; agent 2 sees them once synced and adds
its own; both end with the same graph.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator
from typing import Any

from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from hybridsync import Memory, serve


@contextlib.asynccontextmanager
async def agent(hub_url: str, replica_id: str, secret: str) -> AsyncIterator[ClientSession]:
    """An MCP client session on a fresh server process joined to the hub."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "hybridsync.integrations.mcp", "--join", hub_url, "--id", replica_id],
        env={**os.environ, "HYBRIDSYNC_SECRET": secret},
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def call(session: ClientSession, tool: str, **args: Any) -> Any:
    result = await session.call_tool(tool, args)
    if result.is_error:
        raise RuntimeError(f"{tool}: {result.content}")
    return result.structured_content


async def main() -> None:
    secret = secrets.token_urlsafe(32)
    async with serve(Memory("hub"), secret=secret.encode()) as hub:
        print(f"hub listening at {hub.url}")
        async with (
            agent(hub.url, "agent-1", secret) as one,
            agent(hub.url, "agent-2", secret) as two,
        ):
            await call(
                one,
                "create_entities",
                entities=[
                    {"name": "build", "entityType": "task", "observations": ["fails on ARM"]},
                    {"name": "agent-1", "entityType": "agent", "observations": []},
                ],
            )
            await call(
                one,
                "create_relations",
                relations=[{"from": "agent-1", "to": "build", "relationType": "investigates"}],
            )
            await call(one, "write_document", name="plan", text="1. bisect\n2. fix\n")
            # Concurrently, agent 2 notes something about the same task once it sees it.
            await call(one, "sync_memory")
            await call(two, "sync_memory")
            await call(
                two,
                "add_observations",
                observations=[{"entityName": "build", "contents": ["passes on x86"]}],
            )
            await call(one, "add_observations", observations=[
                {"entityName": "build", "contents": ["regressed in 2.3"]},
            ])  # fmt: skip
            await call(
                two, "edit_document", name="plan", old_string="2. fix", new_string="2. fix it"
            )
            for session in (one, two, one):
                await call(session, "sync_memory")
            graph_one = await call(one, "read_graph")
            graph_two = await call(two, "read_graph")
            plan = (await call(one, "read_document", name="plan"))["text"]
            print(json.dumps(graph_two, indent=2))
            print("plan:", plan.replace("\n", " | "))
            print("same graph on both servers:", graph_one == graph_two)


if __name__ == "__main__":
    asyncio.run(main())
