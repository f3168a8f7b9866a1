"""A drop-in MCP memory server whose memory is a hybridsync replica.

``python -m hybridsync.integrations.mcp`` (``pip install hybridsync[mcp]``)
serves the tools of the MCP reference memory server
(``@modelcontextprotocol/server-memory``), with the same names, argument
schemas and results -- ``create_entities``, ``create_relations``,
``add_observations``, ``delete_entities``, ``delete_observations``,
``delete_relations``, ``read_graph``, ``search_nodes``, ``open_nodes`` -- so a
client configured for the reference server works unchanged. It adds shared
text documents (``list_documents``, ``read_document``, ``write_document``,
``edit_document``, ``delete_document``) and ``sync_memory`` (wait until the
hub holds this server's writes).

Each server process is a replica: ``--data FILE`` keeps it durable (a tool
call returns once its write is saved, so a ``kill -9`` loses nothing that was
acknowledged), ``--join ws://HUB:PORT`` links it to a hub (``hybridsync
serve``), so agents on several machines, each with its own server, share one
memory. The swarm's secret is read as ``hybridsync serve`` and ``hybridsync
join`` read it: ``$HYBRIDSYNC_SECRET``, or ``--secret-env`` / ``--secret-file``.

The graph (``memory://knowledge-graph``), each entity (``memory://entity/NAME``)
and each document (``memory://doc/NAME``) are MCP resources; a subscribed
client (``resources/subscribe``, or ``subscriptions/listen`` on the 2026-07-28
protocol) receives ``notifications/resources/updated`` when one changes,
whether by a tool call here or by a write on another server once it arrives.

The server speaks stdio by default and streamable HTTP with ``--http``.
``--import memory.jsonl`` merges a reference server's memory file into the
replica and exits; ``--export FILE`` writes one and exits.

Concurrent semantics
--------------------
The graph lives in ``memory.meta``, one key per fact (see
:mod:`hybridsync.integrations.graph` for the layout), so concurrent writes on
different servers merge and every server ends with the same graph:

- concurrent observations on one entity all survive (observations are a set
  per entity: one string added twice is present once); concurrent creations
  of one entity merge their observations;
- relations are a set keyed by ``(from, relationType, to)``;
- a delete removes what its server had seen: an observation, relation or
  entity added concurrently elsewhere survives (add wins), except that an
  observation added concurrently to an entity that is deleted goes with it;
- relations do not depend on entities: one created concurrently with the
  deletion of its endpoint survives.

Text documents merge as every hybridsync text document does: concurrent edits
on both sides survive (three-way merge); ``write_document`` replaces the whole
text and the engine sends the difference.

Bad arguments, unknown entities or documents and oversized values give MCP
tool errors (``isError``) with a message saying what is wrong; the server
never exits on input.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import ssl as ssl_module
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import mcp.types as types
from mcp.server import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ResourceUpdated
from mcp.shared.exceptions import MCPError

import hybridsync
from hybridsync import Memory, connect, errors
from hybridsync.integrations.graph import (
    MAX_NAME_CHARS,
    GraphError,
    KnowledgeGraph,
    validate_name,
)
from hybridsync.net import secrets as secrets_

__all__ = ["MemoryServer", "build_parser", "main"]

log = logging.getLogger("hybridsync.mcp")

#: Longest text document a tool writes (characters).
MAX_DOCUMENT_CHARS = 4 * 1024 * 1024
#: Most items in one tool call's array argument.
MAX_ITEMS = 10_000
#: The reference server's limit on search queries.
SEARCH_QUERY_MAX_LENGTH = 2048
#: The reference server's resource: the whole graph.
GRAPH_URI = "memory://knowledge-graph"
ENTITY_PREFIX = "memory://entity/"
DOCUMENT_PREFIX = "memory://doc/"
#: JSON-RPC error code of an unknown resource (MCP specification).
RESOURCE_NOT_FOUND = -32002


def entity_uri(name: str) -> str:
    """The resource URI of an entity (its name percent-encoded)."""
    return ENTITY_PREFIX + quote(name, safe="")


def document_uri(name: str) -> str:
    """The resource URI of a text document (its name percent-encoded)."""
    return DOCUMENT_PREFIX + quote(name, safe="")


_TEMPLATES = [
    types.ResourceTemplate(
        uri_template=ENTITY_PREFIX + "{name}",
        name="entity",
        title="Entity",
        description="An entity of the knowledge graph with the relations touching it",
        mime_type="application/json",
    ),
    types.ResourceTemplate(
        uri_template=DOCUMENT_PREFIX + "{name}",
        name="document",
        title="Document",
        description="A shared text document",
        mime_type="text/plain",
    ),
]

# -- schemas (as the reference server declares them) ---------------------------------

_ENTITY = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "The name of the entity"},
        "entityType": {"type": "string", "description": "The type of the entity"},
        "observations": {
            "type": "array",
            "items": {"type": "string"},
            "description": "An array of observation contents associated with the entity",
        },
    },
    "required": ["name", "entityType", "observations"],
    "additionalProperties": False,
}

_RELATION = {
    "type": "object",
    "properties": {
        "from": {
            "type": "string",
            "description": "The name of the entity where the relation starts",
        },
        "to": {"type": "string", "description": "The name of the entity where the relation ends"},
        "relationType": {"type": "string", "description": "The type of the relation"},
    },
    "required": ["from", "to", "relationType"],
    "additionalProperties": False,
}

_GRAPH_OUT = {
    "type": "object",
    "properties": {
        "entities": {"type": "array", "items": _ENTITY},
        "relations": {"type": "array", "items": _RELATION},
    },
    "required": ["entities", "relations"],
    "additionalProperties": False,
}

_SUCCESS_OUT = {
    "type": "object",
    "properties": {"success": {"type": "boolean"}, "message": {"type": "string"}},
    "required": ["success", "message"],
    "additionalProperties": False,
}


def _obj(properties: dict[str, Any], required: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


def _annotations(read_only: bool, destructive: bool, idempotent: bool) -> types.ToolAnnotations:
    return types.ToolAnnotations(
        read_only_hint=read_only,
        destructive_hint=destructive,
        idempotent_hint=idempotent,
        open_world_hint=False,
    )


def _tools() -> list[types.Tool]:
    names = {"type": "array", "items": {"type": "string"}}
    doc_name = {"type": "string", "description": "The document's name"}
    return [
        types.Tool(
            name="create_entities",
            title="Create Entities",
            description="Create multiple new entities in the knowledge graph",
            input_schema=_obj({"entities": {"type": "array", "items": _ENTITY}}, ["entities"]),
            output_schema=_obj({"entities": {"type": "array", "items": _ENTITY}}, ["entities"]),
            annotations=_annotations(False, False, False),
        ),
        types.Tool(
            name="create_relations",
            title="Create Relations",
            description="Create multiple new relations between entities in the knowledge "
            "graph. Relations should be in active voice",
            input_schema=_obj({"relations": {"type": "array", "items": _RELATION}}, ["relations"]),
            output_schema=_obj({"relations": {"type": "array", "items": _RELATION}}, ["relations"]),
            annotations=_annotations(False, False, False),
        ),
        types.Tool(
            name="add_observations",
            title="Add Observations",
            description="Add new observations to existing entities in the knowledge graph",
            input_schema=_obj(
                {
                    "observations": {
                        "type": "array",
                        "items": _obj(
                            {
                                "entityName": {
                                    "type": "string",
                                    "description": "The name of the entity to add the "
                                    "observations to",
                                },
                                "contents": {
                                    **names,
                                    "description": "An array of observation contents to add",
                                },
                            },
                            ["entityName", "contents"],
                        ),
                    }
                },
                ["observations"],
            ),
            output_schema=_obj(
                {
                    "results": {
                        "type": "array",
                        "items": _obj(
                            {"entityName": {"type": "string"}, "addedObservations": names},
                            ["entityName", "addedObservations"],
                        ),
                    }
                },
                ["results"],
            ),
            annotations=_annotations(False, False, False),
        ),
        types.Tool(
            name="delete_entities",
            title="Delete Entities",
            description="Delete multiple entities and their associated relations from the "
            "knowledge graph",
            input_schema=_obj(
                {"entityNames": {**names, "description": "An array of entity names to delete"}},
                ["entityNames"],
            ),
            output_schema=_SUCCESS_OUT,
            annotations=_annotations(False, True, True),
        ),
        types.Tool(
            name="delete_observations",
            title="Delete Observations",
            description="Delete specific observations from entities in the knowledge graph",
            input_schema=_obj(
                {
                    "deletions": {
                        "type": "array",
                        "items": _obj(
                            {
                                "entityName": {
                                    "type": "string",
                                    "description": "The name of the entity containing the "
                                    "observations",
                                },
                                "observations": {
                                    **names,
                                    "description": "An array of observations to delete",
                                },
                            },
                            ["entityName", "observations"],
                        ),
                    }
                },
                ["deletions"],
            ),
            output_schema=_SUCCESS_OUT,
            annotations=_annotations(False, True, True),
        ),
        types.Tool(
            name="delete_relations",
            title="Delete Relations",
            description="Delete multiple relations from the knowledge graph",
            input_schema=_obj(
                {
                    "relations": {
                        "type": "array",
                        "items": _RELATION,
                        "description": "An array of relations to delete",
                    }
                },
                ["relations"],
            ),
            output_schema=_SUCCESS_OUT,
            annotations=_annotations(False, True, True),
        ),
        types.Tool(
            name="read_graph",
            title="Read Graph",
            description="Read the entire knowledge graph",
            input_schema=_obj({}),
            output_schema=_GRAPH_OUT,
            annotations=_annotations(True, False, True),
        ),
        types.Tool(
            name="search_nodes",
            title="Search Nodes",
            description="Search for nodes in the knowledge graph based on a query",
            input_schema=_obj(
                {
                    "query": {
                        "type": "string",
                        "maxLength": SEARCH_QUERY_MAX_LENGTH,
                        "description": "The search query to match against entity names, "
                        "types, and observation content",
                    }
                },
                ["query"],
            ),
            output_schema=_GRAPH_OUT,
            annotations=_annotations(True, False, True),
        ),
        types.Tool(
            name="open_nodes",
            title="Open Nodes",
            description="Open specific nodes in the knowledge graph by their names",
            input_schema=_obj(
                {"names": {**names, "description": "An array of entity names to retrieve"}},
                ["names"],
            ),
            output_schema=_GRAPH_OUT,
            annotations=_annotations(True, False, True),
        ),
        types.Tool(
            name="list_documents",
            title="List Documents",
            description="List the shared text documents (names and lengths in characters)",
            input_schema=_obj({}),
            output_schema=_obj(
                {
                    "documents": {
                        "type": "array",
                        "items": _obj(
                            {"name": {"type": "string"}, "length": {"type": "integer"}},
                            ["name", "length"],
                        ),
                    }
                },
                ["documents"],
            ),
            annotations=_annotations(True, False, True),
        ),
        types.Tool(
            name="read_document",
            title="Read Document",
            description="Read a shared text document",
            input_schema=_obj({"name": doc_name}, ["name"]),
            output_schema=_obj(
                {"name": {"type": "string"}, "text": {"type": "string"}}, ["name", "text"]
            ),
            annotations=_annotations(True, False, True),
        ),
        types.Tool(
            name="write_document",
            title="Write Document",
            description="Create a shared text document or replace its whole text. Edits "
            "made concurrently elsewhere are merged with this one",
            input_schema=_obj(
                {"name": doc_name, "text": {"type": "string", "description": "The new text"}},
                ["name", "text"],
            ),
            output_schema=_obj(
                {
                    "name": {"type": "string"},
                    "length": {"type": "integer"},
                    "created": {"type": "boolean"},
                },
                ["name", "length", "created"],
            ),
            annotations=_annotations(False, True, True),
        ),
        types.Tool(
            name="edit_document",
            title="Edit Document",
            description="Replace old_string by new_string in a shared text document. "
            "old_string must occur exactly once unless replace_all is true",
            input_schema=_obj(
                {
                    "name": doc_name,
                    "old_string": {"type": "string", "description": "The text to replace"},
                    "new_string": {"type": "string", "description": "The replacement text"},
                    "replace_all": {
                        "type": "boolean",
                        "default": False,
                        "description": "Replace every occurrence of old_string",
                    },
                },
                ["name", "old_string", "new_string"],
            ),
            output_schema=_obj(
                {
                    "name": {"type": "string"},
                    "replacements": {"type": "integer"},
                    "length": {"type": "integer"},
                },
                ["name", "replacements", "length"],
            ),
            annotations=_annotations(False, True, False),
        ),
        types.Tool(
            name="delete_document",
            title="Delete Document",
            description="Delete a shared text document",
            input_schema=_obj({"name": doc_name}, ["name"]),
            output_schema=_obj(
                {"name": {"type": "string"}, "deleted": {"type": "boolean"}}, ["name", "deleted"]
            ),
            annotations=_annotations(False, True, True),
        ),
        types.Tool(
            name="sync_memory",
            title="Sync Memory",
            description="Wait until the hub holds every write made on this server before the "
            "call, and bring in what the hub holds (no-op without a hub)",
            input_schema=_obj(
                {
                    "timeout": {
                        "type": "number",
                        "minimum": 0,
                        "maximum": 600,
                        "default": 30,
                        "description": "Seconds to wait at most",
                    }
                },
            ),
            output_schema=_obj(
                {
                    "synced": {"type": "boolean"},
                    "connected": {"type": "boolean"},
                    "message": {"type": "string"},
                },
                ["synced", "connected", "message"],
            ),
            annotations=_annotations(True, False, True),
        ),
    ]


# -- the server ------------------------------------------------------------------------


class ToolError(Exception):
    """A tool call refused; the message goes back to the client as a tool error."""


def _args(arguments: dict[str, Any] | None, required: Sequence[str]) -> dict[str, Any]:
    args = dict(arguments or {})
    for name in required:
        if name not in args:
            raise ToolError(f"Invalid arguments: {name} is required")
    return args


def _array(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ToolError(f"Invalid arguments: {where} must be an array")
    if len(value) > MAX_ITEMS:
        raise ToolError(
            f"Invalid arguments: {where} has {len(value)} items; the limit is {MAX_ITEMS}"
        )
    return value


def _text(value: object, where: str, max_chars: int) -> str:
    try:
        return validate_name(value, where, max_chars)
    except GraphError as exc:
        raise ToolError(f"Invalid arguments: {exc}") from None


class MemoryServer:
    """The MCP tools over one replica.

    Args:
        memory: the replica; touch it only from the event loop that runs the
            server (the sync session runs there too).
        session: the replica's upstream :func:`hybridsync.connect` session
            (``None``: no hub; ``sync_memory`` returns at once).
        graph: the knowledge graph's name in ``memory.meta``.
    """

    def __init__(
        self,
        memory: Memory,
        *,
        session: Any = None,
        graph: str = "memory",
        name: str = "hybridsync-memory",
    ) -> None:
        self.memory = memory
        self.session = session
        self.graph = KnowledgeGraph(memory, graph=graph)
        self.name = name
        self.tools = _tools()
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "create_entities": self._create_entities,
            "create_relations": self._create_relations,
            "add_observations": self._add_observations,
            "delete_entities": self._delete_entities,
            "delete_observations": self._delete_observations,
            "delete_relations": self._delete_relations,
            "read_graph": self._read_graph,
            "search_nodes": self._search_nodes,
            "open_nodes": self._open_nodes,
            "list_documents": self._list_documents,
            "read_document": self._read_document,
            "write_document": self._write_document,
            "edit_document": self._edit_document,
            "delete_document": self._delete_document,
            "sync_memory": self._sync_memory,
        }
        # Subscriptions: resources/subscribe (handshake-era clients), keyed by
        # connection, and subscriptions/listen streams (2026-07-28 clients).
        self._subscribers: dict[int, tuple[Any, set[str]]] = {}
        self._bus = InMemorySubscriptionBus()
        self._listen = ListenHandler(self._bus)
        self._tasks: set[asyncio.Task[None]] = set()
        self._observers = [
            memory.meta.observe(None, self._on_meta, deep=False),
            memory.text.observe(None, self._on_text),
        ]

    def close(self) -> None:
        """Stop observing the replica and end the subscription streams."""
        for subscription in self._observers:
            subscription.close()
        self.graph.close()
        self._listen.close()

    # -- MCP plumbing

    def server(self) -> Server[Any]:
        """A low-level MCP server object serving these tools."""
        version = getattr(hybridsync, "__version__", "")

        async def list_tools(
            ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
        ) -> types.ListToolsResult:
            return types.ListToolsResult(tools=self.tools)

        async def call_tool(
            ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
        ) -> types.CallToolResult:
            return await self.call(params.name, params.arguments)

        async def list_resources(
            ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
        ) -> types.ListResourcesResult:
            return types.ListResourcesResult(resources=self.resources())

        async def list_templates(
            ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
        ) -> types.ListResourceTemplatesResult:
            return types.ListResourceTemplatesResult(resource_templates=_TEMPLATES)

        async def read_resource(
            ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
        ) -> types.ReadResourceResult:
            return self.read(str(params.uri))

        async def subscribe(
            ctx: ServerRequestContext[Any], params: types.SubscribeRequestParams
        ) -> types.EmptyResult:
            key = id(getattr(ctx.session, "_connection", ctx.session))
            self._subscribers.setdefault(key, (ctx.session, set()))[1].add(str(params.uri))
            return types.EmptyResult()

        async def unsubscribe(
            ctx: ServerRequestContext[Any], params: types.UnsubscribeRequestParams
        ) -> types.EmptyResult:
            key = id(getattr(ctx.session, "_connection", ctx.session))
            if key in self._subscribers:
                self._subscribers[key][1].discard(str(params.uri))
            return types.EmptyResult()

        return Server(
            self.name,
            version=str(version),
            instructions="A knowledge graph and shared text documents, kept in sync with "
            "the other agents of the swarm.",
            on_list_tools=list_tools,
            on_call_tool=call_tool,
            on_list_resources=list_resources,
            on_list_resource_templates=list_templates,
            on_read_resource=read_resource,
            on_subscribe_resource=subscribe,
            on_unsubscribe_resource=unsubscribe,
            on_subscriptions_listen=self._listen,
        )

    # -- resources

    def resources(self) -> list[types.Resource]:
        """The knowledge graph, each entity and each document, as MCP resources."""
        out = [
            types.Resource(
                uri=GRAPH_URI,
                name="knowledge-graph",
                title="Knowledge Graph",
                description="The full knowledge graph with all entities and relations",
                mime_type="application/json",
            )
        ]
        out += [
            types.Resource(uri=entity_uri(n), name=n, mime_type="application/json")
            for n in self.graph.entity_names()
        ]
        out += [
            types.Resource(uri=document_uri(n), name=n, mime_type="text/plain")
            for n in sorted(self.memory.text)
        ]
        return out

    def read(self, uri: str) -> types.ReadResourceResult:
        """A resource's contents; :class:`MCPError` (resource not found) otherwise."""
        if uri == GRAPH_URI:
            text, mime = json.dumps(self.graph.read_graph(), indent=2, ensure_ascii=False), "json"
        elif uri.startswith(ENTITY_PREFIX):
            name = unquote(uri[len(ENTITY_PREFIX) :])
            found = self.graph.open_nodes([name])
            if not found["entities"]:
                raise MCPError(RESOURCE_NOT_FOUND, f"Resource not found: {uri}")
            text, mime = json.dumps(found, indent=2, ensure_ascii=False), "json"
        elif uri.startswith(DOCUMENT_PREFIX):
            try:
                text, mime = self.memory.text[unquote(uri[len(DOCUMENT_PREFIX) :])], "plain"
            except KeyError:
                raise MCPError(RESOURCE_NOT_FOUND, f"Resource not found: {uri}") from None
        else:
            raise MCPError(RESOURCE_NOT_FOUND, f"Resource not found: {uri}")
        mime_type = "application/json" if mime == "json" else "text/plain"
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type=mime_type, text=text)]
        )

    # -- change notifications (local writes and writes that arrive from the hub)

    def _on_meta(self, event: Any) -> None:
        found, names = self.graph.touched(event.keys)
        if found:
            self._changed([GRAPH_URI, *(entity_uri(n) for n in sorted(names))])

    def _on_text(self, event: Any) -> None:
        self._changed([document_uri(event.name)])

    def _changed(self, uris: Iterable[str]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a change made outside the server's loop: nobody listens
            return
        task = loop.create_task(self._publish(list(uris)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, uris: list[str]) -> None:
        for uri in uris:
            await self._bus.publish(ResourceUpdated(uri=uri))
            for key, (session, subscribed) in list(self._subscribers.items()):
                if uri not in subscribed:
                    continue
                try:
                    await session.send_resource_updated(uri)
                except Exception:  # the connection is gone
                    log.debug("dropping the subscriptions of a closed connection", exc_info=True)
                    self._subscribers.pop(key, None)

    async def call(self, name: str, arguments: dict[str, Any] | None) -> types.CallToolResult:
        """Run a tool; never raises (errors become tool errors)."""
        handler = self._handlers.get(name)
        if handler is None:
            return _error(f"Unknown tool: {name}")
        try:
            result = await handler(arguments if isinstance(arguments, dict) else {})
        except (ToolError, GraphError) as exc:
            return _error(str(exc))
        except errors.HybridSyncError as exc:
            return _error(f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            log.exception("tool %s failed", name)
            return _error(f"Internal error in {name}: {type(exc).__name__}: {exc}")
        text = result.pop("_text", None)
        if not isinstance(text, str):
            text = json.dumps(_first_value(name, result), indent=2, ensure_ascii=False)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=text)],
            structured_content=result,
        )

    def _committed(self) -> None:
        """A write is done: save it (durable replicas) and wake the sync session."""
        self.memory.flush()
        if self.session is not None:
            self.session.notify()

    # -- graph tools

    async def _create_entities(self, args: dict[str, Any]) -> dict[str, Any]:
        entities = _array(_args(args, ["entities"])["entities"], "entities")
        created = self.graph.create_entities(entities)
        self._committed()
        return {"entities": created}

    async def _create_relations(self, args: dict[str, Any]) -> dict[str, Any]:
        relations = _array(_args(args, ["relations"])["relations"], "relations")
        created = self.graph.create_relations(relations)
        self._committed()
        return {"relations": created}

    async def _add_observations(self, args: dict[str, Any]) -> dict[str, Any]:
        observations = _array(_args(args, ["observations"])["observations"], "observations")
        results = self.graph.add_observations(observations)
        self._committed()
        return {"results": results}

    async def _delete_entities(self, args: dict[str, Any]) -> dict[str, Any]:
        names = _array(_args(args, ["entityNames"])["entityNames"], "entityNames")
        deleted, not_found = self.graph.delete_entities(names)
        self._committed()
        message = (
            "Entities deleted successfully"
            if not not_found
            else f"Deleted {len(deleted)} of {len(names)} entities. "
            f"Not found: {', '.join(not_found)}"
        )
        return {"success": True, "message": message, "_text": message}

    async def _delete_observations(self, args: dict[str, Any]) -> dict[str, Any]:
        deletions = _array(_args(args, ["deletions"])["deletions"], "deletions")
        count, missing = self.graph.delete_observations(deletions)
        self._committed()
        requested = sum(
            len(d["observations"])
            for d in deletions
            if isinstance(d, dict) and isinstance(d.get("observations"), list)
        )
        message = (
            "Observations deleted successfully"
            if count == requested
            else f"Deleted {count} of {requested} observations."
            + (f" Entities not found: {', '.join(missing)}" if missing else "")
        )
        return {"success": True, "message": message, "_text": message}

    async def _delete_relations(self, args: dict[str, Any]) -> dict[str, Any]:
        relations = _array(_args(args, ["relations"])["relations"], "relations")
        count = self.graph.delete_relations(relations)
        self._committed()
        message = (
            "Relations deleted successfully"
            if count == len(relations)
            else f"Deleted {count} of {len(relations)} relations. The rest matched nothing."
        )
        return {"success": True, "message": message, "_text": message}

    async def _read_graph(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.graph.read_graph()

    async def _search_nodes(self, args: dict[str, Any]) -> dict[str, Any]:
        query = _text(_args(args, ["query"])["query"], "query", SEARCH_QUERY_MAX_LENGTH)
        return self.graph.search_nodes(query)

    async def _open_nodes(self, args: dict[str, Any]) -> dict[str, Any]:
        names = _array(_args(args, ["names"])["names"], "names")
        return self.graph.open_nodes(names)

    # -- documents

    def _doc_name(self, args: dict[str, Any]) -> str:
        name = _text(args["name"], "name", MAX_NAME_CHARS)
        if not name:
            raise ToolError("Invalid arguments: name must not be empty")
        return name

    def _existing(self, args: dict[str, Any]) -> tuple[str, str]:
        name = self._doc_name(args)
        try:
            return name, self.memory.text[name]
        except KeyError:
            raise ToolError(f"Document {name} not found") from None

    async def _list_documents(self, args: dict[str, Any]) -> dict[str, Any]:
        text = self.memory.text
        return {"documents": [{"name": n, "length": len(text[n])} for n in sorted(text)]}

    async def _read_document(self, args: dict[str, Any]) -> dict[str, Any]:
        name, text = self._existing(_args(args, ["name"]))
        return {"name": name, "text": text, "_text": text}

    async def _write_document(self, args: dict[str, Any]) -> dict[str, Any]:
        args = _args(args, ["name", "text"])
        name = self._doc_name(args)
        text = _text(args["text"], "text", MAX_DOCUMENT_CHARS)
        created = name not in self.memory.text
        self.memory.text[name] = text
        self._committed()
        return {"name": name, "length": len(text), "created": created}

    async def _edit_document(self, args: dict[str, Any]) -> dict[str, Any]:
        args = _args(args, ["name", "old_string", "new_string"])
        name, text = self._existing(args)
        old = _text(args["old_string"], "old_string", MAX_DOCUMENT_CHARS)
        new = _text(args["new_string"], "new_string", MAX_DOCUMENT_CHARS)
        replace_all = args.get("replace_all", False)
        if not isinstance(replace_all, bool):
            raise ToolError("Invalid arguments: replace_all must be a boolean")
        if not old:
            raise ToolError("old_string must not be empty")
        if old == new:
            raise ToolError("old_string and new_string are the same; nothing to change")
        count = text.count(old)
        if count == 0:
            raise ToolError(f"old_string was not found in document {name}")
        if count > 1 and not replace_all:
            raise ToolError(
                f"old_string occurs {count} times in document {name}; give more context to "
                "make it unique, or set replace_all"
            )
        edited = text.replace(old, new) if replace_all else text.replace(old, new, 1)
        if len(edited) > MAX_DOCUMENT_CHARS:
            raise ToolError(
                f"the edited document would be {len(edited)} characters long; "
                f"the limit is {MAX_DOCUMENT_CHARS}"
            )
        self.memory.text[name] = edited
        self._committed()
        return {"name": name, "replacements": count if replace_all else 1, "length": len(edited)}

    async def _delete_document(self, args: dict[str, Any]) -> dict[str, Any]:
        name = self._doc_name(_args(args, ["name"]))
        deleted = name in self.memory.text
        if deleted:
            del self.memory.text[name]
            self._committed()
        return {"name": name, "deleted": deleted}

    # -- sync

    async def _sync_memory(self, args: dict[str, Any]) -> dict[str, Any]:
        timeout = args.get("timeout", 30)
        if (
            not isinstance(timeout, (int, float))
            or isinstance(timeout, bool)
            or not 0 <= timeout <= 600
        ):
            raise ToolError("Invalid arguments: timeout must be a number of seconds in 0..600")
        if self.session is None:
            return {"synced": True, "connected": False, "message": "no hub: nothing to sync"}
        try:
            await self.session.sync(float(timeout))
            # A second round brings what the hub merged from the first.
            await self.session.sync(float(timeout))
        except errors.HybridSyncError as exc:
            return {
                "synced": False,
                "connected": bool(self.session.connected),
                "message": f"{type(exc).__name__}: {exc}",
            }
        except (TimeoutError, asyncio.TimeoutError) as exc:  # pragma: no cover - defensive
            return {"synced": False, "connected": bool(self.session.connected), "message": str(exc)}
        return {"synced": True, "connected": True, "message": "the hub holds every write"}


def _first_value(name: str, result: dict[str, Any]) -> Any:
    """The reference server's text content: the bare array for the create and
    add tools, the whole object otherwise."""
    key = {
        "create_entities": "entities",
        "create_relations": "relations",
        "add_observations": "results",
    }.get(name)
    return result[key] if key is not None else result


def _error(message: str) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=message)], is_error=True
    )


# -- command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The arguments of :func:`main` (and of ``hybridsync mcp``)."""
    p = argparse.ArgumentParser(
        prog="hybridsync mcp",
        description="An MCP memory server (the reference server's knowledge-graph tools plus "
        "shared text documents) whose memory is a hybridsync replica. Secrets come from "
        "$HYBRIDSYNC_SECRET (or --secret-env / --secret-file), never from the command line.",
    )
    p.add_argument("--data", type=Path, help="Keep the replica durable in this file (SQLite).")
    p.add_argument("--join", metavar="URL", help="Link the replica to the hub at ws://HOST:PORT.")
    p.add_argument(
        "--id",
        dest="replica_id",
        help="This replica's id, unique in the swarm (default: HOSTNAME-mcp-PID, or with "
        "--data HOSTNAME-mcp-HASH of the file's path, stable across restarts).",
    )
    p.add_argument("--hub-id", help="Refuse a hub with another replica id.")
    p.add_argument("--tls-ca", type=Path, help="CA certificates (PEM) to verify a wss:// hub.")
    p.add_argument(
        "--secret-env",
        default="HYBRIDSYNC_SECRET",
        metavar="VAR",
        help="Environment variable holding the swarm's shared secret (default: %(default)s).",
    )
    p.add_argument("--secret-file", type=Path, help="Read the secret from this file instead.")
    p.add_argument(
        "--graph", default="memory", help="The knowledge graph's name (default: %(default)s)."
    )
    p.add_argument("--http", action="store_true", help="Serve streamable HTTP instead of stdio.")
    p.add_argument(
        "--host", default="127.0.0.1", help="With --http: address (default: %(default)s)."
    )
    p.add_argument(
        "--port",
        type=int,
        default=8000,
        help="With --http: port (default: %(default)s; 0: any free port, printed at start).",
    )
    p.add_argument(
        "--path", default="/mcp", help="With --http: the endpoint's path (default: %(default)s)."
    )
    p.add_argument(
        "--import",
        dest="import_file",
        type=Path,
        metavar="FILE",
        help="Merge a reference memory file (JSON lines) into the replica, then exit.",
    )
    p.add_argument(
        "--export",
        dest="export_file",
        metavar="FILE",
        help="Write the graph as a reference memory file (JSON lines; - for stdout), then exit.",
    )
    p.add_argument(
        "--exit-sync-timeout",
        type=float,
        default=5.0,
        help="On exit, wait this long for the hub to acknowledge the latest writes "
        "(default: %(default)s s).",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="Log sync events.")
    return p


class UsageError(Exception):
    """Bad command-line arguments or environment."""


def load_secret(secret_env: str, secret_file: Path | None) -> bytes:
    """The swarm's secret, read as ``hybridsync serve`` and ``join`` read it."""
    try:
        return secrets_.load_secret(secret_env, secret_file)
    except secrets_.SecretError as exc:
        raise UsageError(str(exc)) from None


def default_replica_id(data: Path | None) -> str:
    host = socket.gethostname() or "host"
    if data is None:
        return f"{host}-mcp-{os.getpid()}"
    digest = hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:8]
    return f"{host}-mcp-{digest}"


def _hub_url(url: str) -> str:
    if "://" not in url:
        url = "ws://" + url
    return url


async def _run(opts: argparse.Namespace) -> int:
    replica_id = opts.replica_id or default_replica_id(opts.data)
    secret = load_secret(opts.secret_env, opts.secret_file) if opts.join else None
    ssl_ctx: ssl_module.SSLContext | None = None
    if opts.tls_ca is not None:
        ssl_ctx = ssl_module.create_default_context(cafile=str(opts.tls_ca))
    memory = Memory(replica_id, path=opts.data)
    try:
        async with contextlib.AsyncExitStack() as stack:
            session = None
            if opts.join:
                assert secret is not None
                session = await stack.enter_async_context(
                    connect(
                        memory, _hub_url(opts.join), secret=secret, ssl=ssl_ctx, hub_id=opts.hub_id
                    )
                )
            app = MemoryServer(memory, session=session, graph=opts.graph)
            stack.callback(app.close)
            if opts.import_file is not None or opts.export_file is not None:
                await _import_export(app, opts)
            else:
                await _until_stopped(_serve_http(app, opts) if opts.http else _serve_stdio(app))
            if session is not None and opts.exit_sync_timeout > 0:
                try:
                    await session.sync(opts.exit_sync_timeout)
                except errors.HybridSyncError as exc:
                    log.warning("the hub did not acknowledge the latest writes: %s", exc)
    finally:
        memory.close()
    return 0


async def _import_export(app: MemoryServer, opts: argparse.Namespace) -> None:
    if opts.data is None and not opts.join:
        raise UsageError("--import and --export need --data or --join (a replica to work on)")
    if opts.import_file is not None:
        try:
            text = opts.import_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {opts.import_file}: {exc}") from None
        report = app.graph.import_jsonl(text)
        app._committed()
        for line, why in report.skipped:
            log.warning("%s:%d skipped: %s", opts.import_file, line, why)
        print(
            f"imported {report.entities_created} entities, {report.observations_added} "
            f"observations, {report.relations_created} relations "
            f"({len(report.skipped)} lines skipped)",
            file=sys.stderr,
        )
    if app.session is not None:
        await app.session.wait_connected(60.0)
        await app.session.sync(60.0)
        await app.session.sync(60.0)
    if opts.export_file is not None:
        data = app.graph.export_jsonl()
        if opts.export_file == "-":
            sys.stdout.write(data)
            sys.stdout.flush()
        else:
            target = Path(opts.export_file)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            tmp.write_text(data, encoding="utf-8")
            os.replace(tmp, target)


async def _until_stopped(serving: Coroutine[Any, Any, None]) -> None:
    """Run ``serving`` until it ends or SIGTERM / SIGINT arrive (then stop it
    and return, so that the replica syncs and closes)."""
    task = asyncio.ensure_future(serving)
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, task.cancel)
            handled.append(sig)
    try:
        await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise
        log.info("stopped by a signal")
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


async def _serve_stdio(app: MemoryServer) -> None:
    from mcp.server.stdio import stdio_server

    server = app.server()
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


async def _serve_http(app: MemoryServer, opts: argparse.Namespace) -> None:
    import uvicorn

    server = app.server()
    starlette_app = server.streamable_http_app(streamable_http_path=opts.path, host=opts.host)
    config = uvicorn.Config(
        starlette_app, host=opts.host, port=opts.port, log_level="warning", lifespan="on"
    )

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # the caller handles the signals (and exits normally)

    http = _Server(config)
    serving = asyncio.create_task(http.serve())
    while not http.started and not serving.done():
        await asyncio.sleep(0.01)
    if http.started:
        port = opts.port
        for listener in http.servers:
            for sock in listener.sockets:
                port = sock.getsockname()[1]
        print(
            f"hybridsync mcp: serving streamable HTTP at http://{opts.host}:{port}{opts.path}",
            file=sys.stderr,
            flush=True,
        )
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        http.should_exit = True  # a graceful shutdown: open requests finish
        await serving
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """``hybridsync mcp``: run the MCP memory server until the client leaves
    (stdio) or Ctrl-C (``--http``). Returns the exit status."""
    opts = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG
        if opts.verbose > 1
        else logging.INFO
        if opts.verbose
        else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        return asyncio.run(_run(opts))
    except UsageError as exc:
        print(f"hybridsync mcp: error: {exc}", file=sys.stderr)
        return 2
    except errors.HybridSyncError as exc:
        print(f"hybridsync mcp: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
