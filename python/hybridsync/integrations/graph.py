"""A knowledge graph in ``memory.meta`` whose concurrent writes merge.

The model is the MCP reference memory server's: *entities* (a unique name, an
entity type, a list of observation strings) and directed *relations* ``(from,
relationType, to)``. :class:`KnowledgeGraph` offers the reference server's
operations on one :class:`hybridsync.Memory` replica; the replica's links carry
every write to the rest of the swarm.

Layout
------
Every fact is one key at the top level of ``memory.meta`` (the prefix is
``kg:GRAPH:``, then a JSON array naming the fact)::

    kg:memory:["e","Alice"]                  -> '["person", T, "replica-a"]'
    kg:memory:["o","Alice","likes tea"]      -> '[T, "replica-a"]'
    kg:memory:["r","Alice","knows","Bob"]    -> '[T, "replica-a"]'

No fact lives inside a container that two replicas could create concurrently
(two concurrent creations of one container keep one of them and drop what was
written into the other), so the graph merges fact by fact. ``T`` is a hybrid
clock (milliseconds, strictly increasing per process); it orders entities,
observations and relations by creation, ties broken by replica id and content,
so every replica lists the same graph in the same order.

Concurrent semantics
--------------------
Writes are concurrent when neither replica had received the other's write
when it made its own. Whatever the timing, all replicas end with the same
graph, and:

- **Observations are a set per entity.** Concurrent ``add_observations`` on
  one entity all survive; the same string added on two replicas is present
  once. Concurrent ``create_entities`` of one name merge: the entity exists
  once, with the observations of every creation (if the entity types differ,
  one of them wins, the same on every replica).
- **Relations are a set of (from, relationType, to) triples**: one triple
  created on two replicas is present once.
- **A delete removes what its replica had seen.** ``delete_observations``,
  ``delete_relations`` and ``delete_entities`` remove the facts present on the
  deleting replica when it deleted them. A fact added concurrently on another
  replica (the same observation string added again, the same relation created
  again, an entity created again under the deleted name) survives: *add wins*
  over a concurrent delete of what the adder had not seen.
- **An entity's deletion takes its observations with it, even concurrent
  ones.** An observation added concurrently to an entity that another replica
  deletes is not shown (an observation belongs to a live entity); creating
  the entity again starts without it. This is the one case where a delete wins
  over a concurrent add.
- **Relations do not depend on entities.** ``delete_entities`` removes the
  relations to and from the entity that its replica had seen; a relation
  created concurrently survives, naming an entity that no longer exists (the
  reference server shows such relations too, e.g. from older memory files).
- ``create_relations`` and ``add_observations`` check that the entities exist
  *on the replica that runs them*; that is all a replica can know.

No decision depends on timing: each follows from the CRDT's rules on the keys
above (a key written concurrently on two replicas keeps one value, the same
everywhere; a delete removes only the values its replica had seen).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

from hybridsync import Memory, errors

__all__ = [
    "Entity",
    "GraphError",
    "ImportReport",
    "KnowledgeGraph",
    "Relation",
    "validate_name",
]

#: Longest entity name, entity type, relation type or document name (characters).
MAX_NAME_CHARS = 1024
#: Longest observation (characters).
MAX_OBSERVATION_CHARS = 64 * 1024


class Entity(TypedDict):
    """An entity as the reference memory server returns it."""

    name: str
    entityType: str
    observations: list[str]


Relation = TypedDict("Relation", {"from": str, "to": str, "relationType": str})
Relation.__doc__ = "A relation as the reference memory server returns it."


class GraphError(errors.InvalidArgumentError):
    """A graph operation refused (unknown entity, bad value); the message says why."""


def _has_surrogate(s: str) -> bool:
    if s.isascii():
        return False
    try:
        s.encode()
    except UnicodeEncodeError:
        return True
    return False


def validate_name(value: object, where: str, max_chars: int = MAX_NAME_CHARS) -> str:
    """``value`` as a str of at most ``max_chars`` characters, or :class:`GraphError`."""
    if not isinstance(value, str):
        raise GraphError(f"{where} must be a string, got {_json_type(value)}")
    if len(value) > max_chars:
        raise GraphError(f"{where} is {len(value)} characters long; the limit is {max_chars}")
    if _has_surrogate(value):
        raise GraphError(f"{where} contains a lone surrogate (not valid Unicode text)")
    return value


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


@dataclass
class ImportReport:
    """What :meth:`KnowledgeGraph.import_jsonl` did."""

    entities_created: int = 0
    observations_added: int = 0
    relations_created: int = 0
    #: Lines skipped, with the reason (1-based line numbers).
    skipped: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class _Snapshot:
    """The graph as one replica holds it now, in display order."""

    #: name -> (entityType, order)
    entities: dict[str, tuple[str, tuple[int, str]]]
    #: name -> {observation: order}
    observations: dict[str, dict[str, tuple[int, str]]]
    #: (from, relationType, to) -> order
    relations: dict[tuple[str, str, str], tuple[int, str]]

    def entity(self, name: str) -> Entity:
        etype, _ = self.entities[name]
        obs = self.observations.get(name, {})
        ordered = sorted(obs, key=lambda text: (obs[text], text))
        return {"name": name, "entityType": etype, "observations": ordered}

    def entity_names(self) -> list[str]:
        return sorted(self.entities, key=lambda n: (self.entities[n][1], n))

    def relation_keys(self) -> list[tuple[str, str, str]]:
        return sorted(self.relations, key=lambda k: (self.relations[k], k))

    def apply(self, parts: list[Any], value: Any) -> None:
        """Take in the fact named ``parts`` (a parsed key) holding ``value``
        (its parsed value; ``None``: the fact was deleted)."""
        if not parts or not all(isinstance(p, str) for p in parts):
            return
        kind = parts[0]
        if kind == "e" and len(parts) == 2:
            self.entities.pop(parts[1], None)
            if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str):
                order = _order(value[1:])
                if order is not None:
                    self.entities[parts[1]] = (value[0], order)
        elif kind == "o" and len(parts) == 3:
            observations = self.observations.setdefault(parts[1], {})
            observations.pop(parts[2], None)
            order = _order(value)
            if order is not None:
                observations[parts[2]] = order
            elif not observations:
                del self.observations[parts[1]]
        elif kind == "r" and len(parts) == 4:
            key = (parts[1], parts[2], parts[3])
            self.relations.pop(key, None)
            order = _order(value)
            if order is not None:
                self.relations[key] = order


def _relation(key: tuple[str, str, str]) -> Relation:
    return {"from": key[0], "to": key[2], "relationType": key[1]}


def _order(value: object) -> tuple[int, str] | None:
    if (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], int)
        and not isinstance(value[0], bool)
        and isinstance(value[1], str)
    ):
        return (value[0], value[1])
    return None


class KnowledgeGraph:
    """The reference memory server's knowledge graph on one replica.

    Args:
        memory: the replica (touch it from one thread at a time, as any
            :class:`~hybridsync.Memory`).
        graph: the graph's name; several graphs can share a swarm.
        clock: seconds since the epoch (for the creation order).

    Methods validate their arguments and raise :class:`GraphError` with a
    message fit for a tool result; nothing is written when they raise.

    The object keeps an index of the graph, updated by a metadata observer
    after every change set (local writes and frames from peers), so reads do
    not walk the metadata. Do not run its operations inside a caller's
    ``memory.transaction()`` (the index catches up when the transaction
    ends); :meth:`close` stops the observer.
    """

    def __init__(
        self,
        memory: Memory,
        *,
        graph: str = "memory",
        clock: Any = time.time,
    ) -> None:
        validate_name(graph, "the graph name")
        self.memory = memory
        self.graph = graph
        self._prefix = f"kg:{graph}:"
        self._clock = clock
        self._last_tick = 0
        # The graph as the replica holds it, kept current by a metadata
        # observer (called after every change set: local writes and frames
        # from peers), so that an operation does not read the whole metadata.
        self._index = self._scan()
        self._subscription = memory.meta.observe(None, self._on_meta, deep=False)

    def close(self) -> None:
        """Stop following the replica's changes (the graph object is unusable after)."""
        self._subscription.close()

    def _on_meta(self, event: Any) -> None:
        prefix = self._prefix
        for change in event.changes:
            key = change.path[0] if change.path else None
            if not isinstance(key, str) or not key.startswith(prefix):
                continue
            try:
                parts = json.loads(key[len(prefix) :])
            except ValueError:
                continue
            try:
                value = json.loads(change.new) if isinstance(change.new, str) else None
            except ValueError:
                value = None
            if isinstance(parts, list):
                self._index.apply(parts, value)

    # -- keys ---------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return self._prefix + json.dumps(list(parts), ensure_ascii=False, separators=(",", ":"))

    def _tick(self) -> int:
        now = int(self._clock() * 1000)
        self._last_tick = max(now, self._last_tick + 1)
        return self._last_tick

    def _stamp(self) -> str:
        return json.dumps([self._tick(), self.memory.replica_id], separators=(",", ":"))

    def _facts(self) -> Iterator[tuple[str, list[Any], Any]]:
        """(key, parsed key, parsed value) of every fact of this graph."""
        prefix = self._prefix
        meta = self.memory.meta
        for key in meta:
            if not key.startswith(prefix):
                continue
            try:
                parts = json.loads(key[len(prefix) :])
                value = json.loads(meta[key]) if isinstance(meta[key], str) else None
            except ValueError:
                continue
            if isinstance(parts, list) and parts and all(isinstance(p, str) for p in parts):
                yield key, parts, value

    def _scan(self) -> _Snapshot:
        """The graph read from the whole metadata."""
        snap = _Snapshot({}, {}, {})
        for _, parts, value in self._facts():
            snap.apply(parts, value)
        return snap

    def _snapshot(self) -> _Snapshot:
        """The graph now (read-only: operations keep their own changes aside).
        Graph operations must not run inside a caller's ``memory.transaction()``:
        the snapshot follows the replica's change sets."""
        return self._index

    def touched(self, keys: Iterable[str]) -> tuple[bool, set[str]]:
        """Which of these ``memory.meta`` keys are facts of this graph:
        ``(any, names of the entities they concern)`` (a relation concerns
        both of its entities)."""
        prefix = self._prefix
        found = False
        names: set[str] = set()
        for key in keys:
            if not key.startswith(prefix):
                continue
            found = True
            try:
                parts = json.loads(key[len(prefix) :])
            except ValueError:
                continue
            if isinstance(parts, list) and all(isinstance(p, str) for p in parts):
                if len(parts) in (2, 3) and parts[0] in ("e", "o"):
                    names.add(parts[1])
                elif len(parts) == 4 and parts[0] == "r":
                    names.update((parts[1], parts[3]))
        return found, names

    # -- writes -------------------------------------------------------------

    def create_entities(self, entities: Iterable[Mapping[str, Any]]) -> list[Entity]:
        """Create the entities whose names do not exist yet (and the first of
        each name within the call); returns those created."""
        items = [_entity_arg(e, f"entities[{i}]") for i, e in enumerate(entities)]
        snap = self._snapshot()
        created: list[Entity] = []
        seen: set[str] = set()
        with self.memory.transaction():
            for name, etype, observations in items:
                if name in snap.entities or name in seen:
                    continue
                seen.add(name)
                # Leftovers of an earlier life of this name (observations added
                # concurrently with its deletion) do not come back.
                for text in list(snap.observations.get(name, {})):
                    del self.memory.meta[self._key("o", name, text)]
                self.memory.meta[self._key("e", name)] = json.dumps(
                    [etype, self._tick(), self.memory.replica_id], ensure_ascii=False
                )
                unique = list(dict.fromkeys(observations))
                for text in unique:
                    self.memory.meta[self._key("o", name, text)] = self._stamp()
                created.append({"name": name, "entityType": etype, "observations": unique})
        return created

    def create_relations(self, relations: Iterable[Mapping[str, Any]]) -> list[Relation]:
        """Create the relations not present yet; both entities must exist.
        Returns those created."""
        items = [_relation_arg(r, f"relations[{i}]") for i, r in enumerate(relations)]
        snap = self._snapshot()
        for source, _, target in items:
            for name in (source, target):
                if name not in snap.entities:
                    raise GraphError(f"Entity with name {name} not found")
        created: list[Relation] = []
        with self.memory.transaction():
            for key in dict.fromkeys(items):
                if key not in snap.relations:
                    self.memory.meta[self._key("r", *key)] = self._stamp()
                    created.append(_relation(key))
        return created

    def add_observations(self, observations: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Add observations to existing entities; returns, per item, the
        observations that were new (``{"entityName", "addedObservations"}``)."""
        items: list[tuple[str, list[str]]] = []
        for i, item in enumerate(observations):
            where = f"observations[{i}]"
            obj = _object(item, where)
            name = validate_name(_field(obj, "entityName", where), f"{where}.entityName")
            contents = _str_list(
                _field(obj, "contents", where), f"{where}.contents", MAX_OBSERVATION_CHARS
            )
            items.append((name, contents))
        snap = self._snapshot()
        for name, _ in items:
            if name not in snap.entities:
                raise GraphError(f"Entity with name {name} not found")
        results: list[dict[str, Any]] = []
        with self.memory.transaction():
            written: set[tuple[str, str]] = set()
            for name, contents in items:
                present = snap.observations.get(name, {})
                added: list[str] = []
                for text in contents:
                    if text in present or (name, text) in written:
                        continue
                    written.add((name, text))
                    self.memory.meta[self._key("o", name, text)] = self._stamp()
                    added.append(text)
                results.append({"entityName": name, "addedObservations": added})
        return results

    def delete_entities(self, names: Iterable[object]) -> tuple[list[str], list[str]]:
        """Delete entities, their observations and the relations to and from
        them; returns ``(deleted, not_found)``."""
        wanted = _str_list(list(names), "entityNames", MAX_NAME_CHARS)
        snap = self._snapshot()
        doomed = set(wanted)
        deleted = [n for n in wanted if n in snap.entities]
        not_found = [n for n in wanted if n not in snap.entities]
        with self.memory.transaction():
            for name in dict.fromkeys(deleted):
                del self.memory.meta[self._key("e", name)]
            for name in doomed:
                for text in list(snap.observations.get(name, {})):
                    del self.memory.meta[self._key("o", name, text)]
            for key in list(snap.relations):
                if key[0] in doomed or key[2] in doomed:
                    del self.memory.meta[self._key("r", *key)]
        return deleted, not_found

    def delete_observations(self, deletions: Iterable[Mapping[str, Any]]) -> tuple[int, list[str]]:
        """Delete observations; returns ``(deleted_count, missing_entities)``."""
        items: list[tuple[str, list[str]]] = []
        for i, item in enumerate(deletions):
            where = f"deletions[{i}]"
            obj = _object(item, where)
            name = validate_name(_field(obj, "entityName", where), f"{where}.entityName")
            texts = _str_list(
                _field(obj, "observations", where), f"{where}.observations", MAX_OBSERVATION_CHARS
            )
            items.append((name, texts))
        snap = self._snapshot()
        count = 0
        missing: list[str] = []
        gone: set[tuple[str, str]] = set()
        with self.memory.transaction():
            for name, texts in items:
                if name not in snap.entities:
                    missing.append(name)
                    continue
                present = snap.observations.get(name, {})
                for text in dict.fromkeys(texts):
                    if text in present and (name, text) not in gone:
                        gone.add((name, text))
                        del self.memory.meta[self._key("o", name, text)]
                        count += 1
        return count, missing

    def delete_relations(self, relations: Iterable[Mapping[str, Any]]) -> int:
        """Delete relations; returns how many were present."""
        items = [_relation_arg(r, f"relations[{i}]") for i, r in enumerate(relations)]
        snap = self._snapshot()
        count = 0
        with self.memory.transaction():
            for key in dict.fromkeys(items):
                if key in snap.relations:
                    del self.memory.meta[self._key("r", *key)]
                    count += 1
        return count

    # -- reads --------------------------------------------------------------

    def read_graph(self) -> dict[str, Any]:
        """``{"entities": [...], "relations": [...]}``: the whole graph."""
        snap = self._snapshot()
        return {
            "entities": [snap.entity(n) for n in snap.entity_names()],
            "relations": [_relation(k) for k in snap.relation_keys()],
        }

    def search_nodes(self, query: str) -> dict[str, Any]:
        """Entities whose name, type or an observation contains ``query``
        (case-insensitive), and the relations touching them."""
        q = query.lower()
        snap = self._snapshot()
        found = []
        for name in snap.entity_names():
            entity = snap.entity(name)
            if (
                q in name.lower()
                or q in entity["entityType"].lower()
                or any(q in o.lower() for o in entity["observations"])
            ):
                found.append(entity)
        return self._with_relations(snap, found)

    def open_nodes(self, names: Iterable[object]) -> dict[str, Any]:
        """The named entities (those that exist) and the relations touching them."""
        wanted = set(_str_list(list(names), "names", MAX_NAME_CHARS))
        snap = self._snapshot()
        found = [snap.entity(n) for n in snap.entity_names() if n in wanted]
        return self._with_relations(snap, found)

    @staticmethod
    def _with_relations(snap: _Snapshot, entities: list[Entity]) -> dict[str, Any]:
        names = {e["name"] for e in entities}
        relations = [_relation(k) for k in snap.relation_keys() if k[0] in names or k[2] in names]
        return {"entities": entities, "relations": relations}

    def entity(self, name: str) -> Entity | None:
        """One entity, or ``None``."""
        snap = self._snapshot()
        return snap.entity(name) if name in snap.entities else None

    def entity_names(self) -> list[str]:
        """The entities' names, in creation order."""
        return self._snapshot().entity_names()

    # -- files --------------------------------------------------------------

    def export_jsonl(self) -> str:
        """The graph in the reference server's memory file format (JSON lines)."""
        graph = self.read_graph()
        lines = [json.dumps({"type": "entity", **e}, ensure_ascii=False) for e in graph["entities"]]
        lines += [
            json.dumps({"type": "relation", **r}, ensure_ascii=False) for r in graph["relations"]
        ]
        return "".join(line + "\n" for line in lines)

    def import_jsonl(self, text: str) -> ImportReport:
        """Merge a reference memory file into the graph: missing entities are
        created, missing observations added, missing relations created.
        Importing a file twice changes nothing the second time. Lines that do
        not parse are skipped and reported."""
        report = ImportReport()
        entities: list[tuple[str, str, list[str]]] = []
        relations: list[tuple[str, str, str]] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise GraphError("not a JSON object")
                kind = record.get("type")
                if kind == "entity":
                    entities.append(_entity_arg(record, "entity"))
                elif kind == "relation":
                    relations.append(_relation_arg(record, "relation"))
                else:
                    raise GraphError(f"unknown record type {kind!r}")
            except (ValueError, GraphError) as exc:
                report.skipped.append((number, str(exc)))
        # One record per entity name (observations of repeated lines merged).
        merged: dict[str, tuple[str, list[str]]] = {}
        for name, etype, observations in entities:
            if name in merged:
                merged[name][1].extend(observations)
            else:
                merged[name] = (etype, list(observations))
        snap = self._snapshot()
        new = [
            {"name": n, "entityType": t, "observations": o}
            for n, (t, o) in merged.items()
            if n not in snap.entities
        ]
        more = [
            {"entityName": n, "contents": o} for n, (_, o) in merged.items() if n in snap.entities
        ]
        fresh = [key for key in dict.fromkeys(relations) if key not in snap.relations]
        with self.memory.transaction():
            created = self.create_entities(new)
            added = self.add_observations(more)
            for key in fresh:
                self.memory.meta[self._key("r", *key)] = self._stamp()
        report.entities_created = len(created)
        report.observations_added = sum(len(e["observations"]) for e in created) + sum(
            len(a["addedObservations"]) for a in added
        )
        report.relations_created = len(fresh)
        return report


# -- argument checks ------------------------------------------------------------


def _object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise GraphError(f"{where} must be an object, got {_json_type(value)}")
    return value


def _field(obj: Mapping[str, Any], name: str, where: str) -> Any:
    if name not in obj:
        raise GraphError(f"{where}.{name} is required")
    return obj[name]


def _str_list(value: object, where: str, max_chars: int) -> list[str]:
    if not isinstance(value, list):
        raise GraphError(f"{where} must be an array of strings, got {_json_type(value)}")
    return [validate_name(v, f"{where}[{i}]", max_chars) for i, v in enumerate(value)]


def _entity_arg(value: object, where: str) -> tuple[str, str, list[str]]:
    obj = _object(value, where)
    name = validate_name(_field(obj, "name", where), f"{where}.name")
    etype = validate_name(_field(obj, "entityType", where), f"{where}.entityType")
    observations = _str_list(
        _field(obj, "observations", where), f"{where}.observations", MAX_OBSERVATION_CHARS
    )
    return name, etype, observations


def _relation_arg(value: object, where: str) -> tuple[str, str, str]:
    obj = _object(value, where)
    source = validate_name(_field(obj, "from", where), f"{where}.from")
    target = validate_name(_field(obj, "to", where), f"{where}.to")
    rtype = validate_name(_field(obj, "relationType", where), f"{where}.relationType")
    return source, rtype, target
