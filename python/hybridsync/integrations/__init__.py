"""hybridsync behind the interfaces agent runtimes already speak.

- :mod:`hybridsync.integrations.graph` -- a knowledge graph (entities,
  observations, relations) kept in ``memory.meta``, so that concurrent writes
  on different replicas merge (the model of the MCP reference memory server).
- :mod:`hybridsync.integrations.mcp` -- an MCP server with the reference memory
  server's tools plus shared text documents; each server process is a replica
  (``pip install hybridsync[mcp]``; ``python -m hybridsync.integrations.mcp``).
- :mod:`hybridsync.integrations.langgraph` -- a LangGraph store and checkpointer
  on a replica (``pip install hybridsync[langgraph]``).

Each integration imports its runtime's package only when it is imported itself.
"""

from __future__ import annotations

__all__: list[str] = []
