"""One side of a differential-synchronization link (sans-IO).

A :class:`Link` joins a :class:`~hybridsync.Memory` to one peer. It never
touches a socket or a clock: :meth:`Link.outgoing` returns the next frame to
send and :meth:`Link.incoming` applies a frame that arrived; when to call
them is the caller's policy.

The protocol is Fraser's differential synchronization with guaranteed
delivery, run as stop-and-wait exchanges: the ``"client"`` side (the one
farther from the root of the link tree) sends requests, the ``"server"``
side answers each with one reply. Per document and link each side keeps a
shadow of what the peer has, a backup shadow, versions and a stack of
unacknowledged edits; edits apply strictly to the shadow and are merged into
the live text (three-way when it changed meanwhile). The same frames carry
the structured metadata's CRDT updates and epoch changes.
``docs/protocol.md`` specifies the frames and the rules.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import xxhash

from hybridsync.channels.checks import check_encodable
from hybridsync.channels.documents import TextDocuments
from hybridsync.channels.events import ChangeBus, Origin
from hybridsync.channels.kv import KVCaches
from hybridsync.channels.meta import decode_state_vector, merge_state_vectors
from hybridsync.channels.text import (
    Delta,
    Patch,
    apply_patch,
    common_lines,
    make_delta,
    make_patch,
    merge3,
)
from hybridsync.errors import DecodeError, InvalidArgumentError, ProtocolError
from hybridsync.sync.epochs import EpochMeta
from hybridsync.sync.frame import (
    MARK,
    PROTOCOL_VERSION,
    Edit,
    Entry,
    Frame,
    Kind,
    MetaBlock,
    MetaKind,
    decode_frame,
    encode_frame,
    parse_change,
)
from hybridsync.sync.kv import KVChannel

#: The first byte of the frames this build sends.
_FRAME_MARK = bytes([MARK | PROTOCOL_VERSION])
#: Sets of document names at most this large are rebuilt each cycle (see outgoing).
_SMALL_SET = 64

__all__ = ["Link", "LinkChanges", "LinkMetrics", "LinkWatch", "Replica", "Role"]

Role = Literal["client", "server"]

# A strict patch must fit exactly where it was made: no fuzz at all.
_STRICT = {"match_threshold": 0.0, "match_distance": 0, "delete_threshold": 0.0}
#: Rounds a hub waits, before crossing, for its clients' latest writes to go up.
_DEFER_ROUNDS = 3
#: A server restarted from nothing adopts at the latest on a client's 8th
#: offer; a hub waits for that at most 8 replies before it crosses.
_ADOPT_ROUNDS = 8


@dataclass
class LinkMetrics:
    """Counters of one link side."""

    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    #: Frames ignored as duplicates, reordered or answering an older request.
    stale_frames: int = 0
    #: Frames resent unchanged (a request awaiting its reply, or a lost reply).
    retransmits: int = 0
    #: Documents diffed against their shadow.
    docs_diffed: int = 0
    #: New edits made (one per changed document per exchange).
    edits_made: int = 0
    #: Peer edits applied.
    edits_applied: int = 0
    #: Peer edits merged three-way into a live text that had changed locally.
    merges: int = 0
    #: Fuzzy hunks that did not apply while re-basing onto a whole document.
    hunks_failed: int = 0
    #: Divergence detections (checksum mismatch, version from the future, a
    #: strict patch that did not fit) that re-initialised a document.
    resyncs: int = 0
    #: Whole documents sent (creation or re-initialisation).
    fulls_sent: int = 0
    #: Both sides created the same document independently; both texts were kept.
    creation_conflicts: int = 0
    #: KV pages sent / received, and the page bytes sent.
    kv_pages_sent: int = 0
    kv_pages_received: int = 0
    kv_page_bytes_sent: int = 0
    #: KV digests that did not match after a transfer (the table was re-based).
    kv_resyncs: int = 0
    #: Same-named KV caches of different owners met on this link.
    kv_conflicts: int = 0


class _Doc:
    """Per-document state of one link side."""

    __slots__ = (
        "ack_due",
        "backup",
        "backup_local",
        "backup_remote",
        "full_pending",
        "local",
        "remote",
        "shadow",
        "sources",
        "stack",
        "summary",
        "tombstone",
        "want_full",
    )

    def __init__(self, shadow: str, local: int, remote: int) -> None:
        self.shadow = shadow
        self.local = local  # our edits incorporated in the shadow (Fraser's n)
        self.remote = remote  # peer edits incorporated in the shadow (Fraser's m)
        self.backup = shadow
        self.backup_local = local
        self.backup_remote = remote
        self.stack: list[Edit] = []
        #: The shadow each edit of the stack applies to (None: unknown, an edit
        #: reloaded from an older file), to carry unacknowledged edits over a
        #: FULL: a delta has no context to apply it anywhere else.
        self.sources: list[str | None] = []
        self.ack_due = False
        #: The next acknowledgement must carry the shadow checksum (a summary
        #: after a reopening); otherwise it follows a verified exchange.
        self.summary = False
        self.full_pending = False
        self.want_full = False
        self.tombstone = False

    def push(self, edit: Edit, source: str | None) -> None:
        self.stack.append(edit)
        self.sources.append(source)

    def drop_acknowledged(self, ack: int) -> None:
        """Keep on the stack only the edits the peer has not applied."""
        if self.stack and self.stack[0].version < ack:
            keep = [i for i, s in enumerate(self.stack) if s.version >= ack]
            self.stack = [self.stack[i] for i in keep]
            self.sources = [self.sources[i] for i in keep]

    def clear_stack(self) -> None:
        self.stack.clear()
        self.sources.clear()

    def take_backup(self) -> None:
        self.backup, self.backup_local, self.backup_remote = self.shadow, self.local, self.remote

    def needs_send(self) -> bool:
        return bool(
            self.stack or self.ack_due or self.full_pending or self.want_full or self.tombstone
        )


def _checksum(text: str) -> int:
    """The shadow checksum: the low 32 bits of xxh3-64 of the UTF-8 text."""
    return xxhash.xxh3_64_intdigest(text.encode()) & 0xFFFFFFFF


@dataclass(frozen=True)
class LinkChanges:
    """What a durable replica must save of a link (:meth:`Link.unsaved_changes`)."""

    #: (role, peer) of a saved link to drop (the peer turned out to be another id).
    forget: tuple[str, str] | None
    #: Drop everything saved of this link first.
    reset: bool
    #: The header changed (:meth:`Link.saved_header`).
    header: bool
    #: Documents whose state changed (:meth:`Link.saved_doc`), sorted.
    docs: tuple[str, ...]


class Replica(Protocol):
    """What a link needs of the replica it joins (:class:`hybridsync.Memory`)."""

    @property
    def replica_id(self) -> str: ...

    @property
    def text(self) -> TextDocuments: ...

    @property
    def meta(self) -> EpochMeta: ...

    @property
    def kv(self) -> KVCaches: ...

    @property
    def changes(self) -> ChangeBus: ...

    @property
    def durable(self) -> bool: ...

    @property
    def is_root(self) -> bool: ...

    @property
    def links(self) -> tuple[Link, ...]: ...

    def flush(self) -> None: ...

    def digest(self) -> str: ...

    def saved_link_state(
        self, role: str, peer_id: str
    ) -> tuple[dict[str, Any], dict[str, list[Any]]] | None: ...


class LinkWatch:
    """A link's ear on its replica's change bus: marks what changed for
    sending (a change is not sent back over the link it came from)."""

    __slots__ = ("link",)

    def __init__(self, link: Link) -> None:
        self.link = link

    def on_text_changed(self, name: str, origin: Origin) -> None:
        # Also for the link it came from: the merged text may differ from
        # the peer's (its next diff tells).
        self.link._mark_dirty(name)

    def on_text_deleted(self, name: str, origin: Origin) -> None:
        if origin.link is not self.link:
            self.link._mark_deleted(name)

    def on_meta_changed(self, origin: Origin) -> None:
        if origin.link is not self.link:
            self.link._meta_dirty = True

    def on_kv_changed(
        self, name: str, first_page: int, source: object, *, reset: bool, first_token: int
    ) -> None:
        if source is not self.link._kv:
            self.link._kv.mark(name, first_page, reset, first_token)

    def on_kv_deleted(self, name: str, owner: str, uid: int, source: object) -> None:
        if source is not self.link._kv:
            self.link._kv.mark_deleted(name, owner, uid)


def _on_upstream_epoch(memory: Replica) -> bool:
    """True for the root, or for a hub whose upstream last reported the
    metadata epoch this replica is on (it may merge its clients' documents
    of other epochs: before that, a value could travel from the upstream's
    epoch through ours back into it and be doubled)."""
    meta_epoch = memory.meta.epoch_id
    return all(link._peer_epoch == meta_epoch for link in memory.links if link.role == "client")


class Link:
    """One side of a diff-sync link between ``memory`` and the peer ``peer_id``.

    Args:
        memory: the local replica.
        peer_id: the peer's ``replica_id`` (frames from anyone else are refused).
        role: ``"client"`` sends requests (the side farther from the root of
            the link tree), ``"server"`` answers them. Links must form a tree.
        epoch: identifies this incarnation of a client link; a server that
            sees a new epoch starts the link afresh. Random by default.
        compress_threshold: frames whose body is at least this many bytes are
            zstd-compressed (when that helps); negative disables compression.
        max_frame_bytes: larger incoming frames are refused.
        kv_frame_bytes: KV page bytes per frame at most (a larger change
            travels over several exchanges; one page always fits).
        max_kv_bytes: KV caches announced larger than this are refused.
        resume: durable replicas only: continue the saved state of this
            replica's link to ``peer_id`` in this role (its shadows,
            versions and unacknowledged edits), so that only what differs
            travels; ``False`` starts the link afresh (and forgets the saved
            one at the next save). Without a saved link it starts afresh.
    """

    def __init__(
        self,
        memory: Replica,
        peer_id: str,
        *,
        role: Role = "client",
        epoch: int | None = None,
        compress_threshold: int = 1024,
        max_frame_bytes: int = 64 << 20,
        kv_frame_bytes: int = 8 << 20,
        max_kv_bytes: int = 1 << 36,
        resume: bool = True,
    ) -> None:
        if role not in ("client", "server"):
            raise InvalidArgumentError(f"role must be 'client' or 'server', got {role!r}")
        if not isinstance(peer_id, str) or not peer_id:
            raise InvalidArgumentError("peer_id must be a non-empty str")
        check_encodable(peer_id, "peer_id")
        if epoch is not None and not (isinstance(epoch, int) and 0 < epoch < 1 << 63):
            raise InvalidArgumentError(f"epoch must be an int in 1 .. 2**63-1, got {epoch!r}")
        self.memory = memory
        self.peer_id = peer_id
        self.role: Role = role
        self.compress_threshold = compress_threshold
        self.max_frame_bytes = max_frame_bytes
        self.max_kv_bytes = max_kv_bytes
        self.metrics = LinkMetrics()
        self._docs: dict[str, _Doc] = {}
        self._dirty: set[str] = set(memory.text)
        self._pending: set[str] = set()
        self._deleted_acks: set[str] = set()
        self._absent: set[str] = set()  # ABSENT answers to send
        self._epoch: int | None
        if role == "client":
            # Bit 34 set and 34 random bits below it: the varint is always 5 bytes.
            self._epoch = epoch if epoch is not None else (1 << 34) | secrets.randbits(34)
        else:
            self._epoch = epoch
        #: Server: client incarnations replaced, oldest first (a dict as an ordered set).
        self._retired_epochs: dict[int, None] = {}
        # Metadata channel: the peer's epoch and what it is known to hold.
        self._meta_dirty = not memory.meta.is_empty()
        self._peer_epoch: int | None = None  # the id of the peer's epoch, once known
        #: Server: (epoch id, state vector) of a downstream document of another
        #: lineage that we merged; the peer moves to our epoch with it.
        self._merged: tuple[int, bytes] | None = None
        #: Client: the latest reply integrated all our request carried (False
        #: when it moved us to an epoch without some of our metadata writes:
        #: we wrote them again and the next request carries them; or when it
        #: says RENAME: the server dropped the entries it could not resolve).
        self.reply_complete = True
        #: Client of a hub: (epoch id, state, times) of the EPOCH or MERGE we
        #: did not cross with yet, to pass on what our clients wrote past it.
        self._deferred: tuple[int, bytes, int] | None = None
        #: Client of a hub restarted from nothing: replies not crossed with
        #: while it may adopt its clients' document.
        self._adopt_wait = 0
        self._peer_state: bytes | None = None
        self._sent_state: bytes | None = None  # our state vector in the last frame built
        #: The peer's metadata epoch number (informative), with _peer_epoch.
        self._peer_epoch_no = 0
        #: The metadata epoch id of the latest block we built, and the one the
        #: peer is known to have seen (a frame of ours that carried it was
        #: answered): while ours is still that one, a frame with nothing to
        #: say about metadata carries no block at all.
        self._block_epoch: int | None = None
        self._peer_knows_epoch: int | None = None
        # Document indices (section 3.3): ours, by name; the names whose index
        # the peer has (a frame of ours that bound it was answered); the names
        # bound in our latest frame; the peer's indices; and whether we lost
        # the peer's indices (our next frame asks for names again).
        self._out_refs: dict[str, int] = {}
        self._out_known: set[str] = set()
        self._out_pending: list[str] = []
        self._in_names: dict[int, str] = {}
        self._rename_due = False
        self._seq = 0  # client: latest request sent; server: latest request processed
        self._awaiting = False  # client: latest request not answered yet
        self._last_frame = b""  # client: latest request; server: latest reply
        self._reply_due = False  # server: a request awaits its reply
        self._resend_reply = False  # server: a duplicate request asks for the reply again
        self._kv = KVChannel(self, kv_frame_bytes)
        # Durable replicas: what changed since the last save, and whether
        # this side (or the peer) reopened from disk.
        self._unsaved: set[str] = set()
        self._unsaved_header = True
        self._unsaved_reset = False
        self._resume = False  # our next new frame says we reopened from disk
        self._forget: tuple[str, str] | None = None  # saved link to drop (renamed peer)
        #: The transport's id of the peer's incarnation (a hub's), saved with the link.
        self.peer_incarnation: bytes | None = None
        self._peer_resumed: set[str] = set()  # documents to merge as if new
        self._watch = LinkWatch(self)
        self._origin: Origin | None = None
        if memory.durable:
            if any(link.role == role and link.peer_id == peer_id for link in memory.links):
                raise InvalidArgumentError(
                    f"the durable replica {memory.replica_id!r} already has a {role} link to "
                    f"{peer_id!r}"
                )
            saved = memory.saved_link_state(role, peer_id) if resume else None
            if saved is not None:
                self._load(*saved)
            else:
                self._unsaved_reset = True
        memory.changes.add_listener(self._watch)

    def __repr__(self) -> str:
        return (
            f"<Link {self.memory.replica_id!r} -> {self.peer_id!r} ({self.role}), "
            f"{len(self._docs)} documents, {'idle' if self.idle else 'busy'}>"
        )

    def close(self) -> None:
        """Detach from the replica; the link stops tracking changes. A
        durable replica saves first (the link's state must be saved with
        the text it changed) and keeps the link's saved state for a later
        ``Link`` to the same peer to resume."""
        self.memory.flush()
        self.memory.changes.remove_listener(self._watch)

    # -- durability (hybridsync.store) ----------------------------------------

    @property
    def unsaved(self) -> bool:
        """True when a durable replica has something of this link to save."""
        return bool(self._unsaved or self._unsaved_header or self._unsaved_reset)

    def unsaved_changes(self) -> LinkChanges:
        """What changed of this link since the store last saved it."""
        return LinkChanges(
            self._forget, self._unsaved_reset, self._unsaved_header, tuple(sorted(self._unsaved))
        )

    def mark_saved(self) -> None:
        """The store committed :meth:`unsaved_changes`."""
        self._unsaved.clear()
        self._unsaved_header = self._unsaved_reset = False
        self._forget = None

    def state_bytes(self, seen: set[int] | None = None) -> int:
        """Bytes this link keeps about its peer: text shadows and backups
        (UTF-8), unacknowledged edits, and the page tables of the KV caches
        it mirrors. A shadow is usually the very string object the replica
        holds as the document's text (and its backup the same object as the
        shadow): ``seen`` holds the ids of the strings counted already (the
        replica's texts, other links' shadows), and each is counted once."""
        if seen is None:
            seen = set()
        total = 0
        for doc in self._docs.values():
            for text in (doc.shadow, doc.backup, *doc.sources):
                if text is not None and id(text) not in seen:
                    seen.add(id(text))
                    total += len(text.encode())
            total += sum(len(edit.raw) for edit in doc.stack)
        return total + self._kv.state_bytes()

    def set_peer_incarnation(self, incarnation: bytes | None) -> None:
        """The transport's id of the peer's incarnation (saved with the link)."""
        self.peer_incarnation = incarnation
        self._unsaved_header = True

    def saved_header(self) -> dict[str, object]:
        """The link's state besides its documents, as plain data (the store saves it)."""
        return {
            "epoch": self._epoch,
            "seq": self._seq,
            "retired": list(self._retired_epochs)[-64:],
            "peer_incarnation": self.peer_incarnation,
            "docs": len(self._docs),
            # A server's latest reply, so that a copy of the latest request
            # gets it again byte for byte after a reopening; none while the
            # reply is still due (it is built after reopening).
            "reply": self._last_frame if self.role == "server" and not self._reply_due else b"",
            "reply_due": self._reply_due,
        }

    def rename_peer(self, peer_id: str) -> None:
        """The peer turned out to be ``peer_id`` (a session learns its hub's
        id when it connects); a durable replica saves the link under it."""
        if peer_id == self.peer_id:
            return
        if self.memory.durable:
            self._forget = (self.role, self.peer_id)
            self._unsaved_reset = True
            self._unsaved.update(self._docs)
            self._unsaved_header = True
        self.peer_id = peer_id

    def saved_doc(self, name: str) -> list[object] | None:
        """The link's state of document ``name`` as plain data (None: none held)."""
        doc = self._docs.get(name)
        if doc is None:
            return None
        # A shadow equal to the document's text (the usual case) is saved as
        # None: the store saves that text in the same transaction, and a
        # reopened link shares it again instead of holding a copy.
        text = self.memory.text.get(name)
        return [
            None if doc.shadow is text or doc.shadow == text else doc.shadow,
            doc.local,
            doc.remote,
            None if doc.backup == doc.shadow else doc.backup,  # usually equal: saved once
            doc.backup_local,
            doc.backup_remote,
            [[e.version, e.raw, src] for e, src in zip(doc.stack, doc.sources, strict=True)],
            doc.full_pending,
            doc.want_full,
            doc.tombstone,
        ]

    def _load(self, header: dict[str, Any], docs: dict[str, list[Any]]) -> None:
        """Continue a saved link. A client starts a new link epoch; both
        sides announce the reopening (section 5.5) and summarise every
        document in their next frame, so versions and checksums show what
        the peer still agrees with."""
        from hybridsync.errors import CorruptionError, DecodeError

        try:
            for name, (shadow, local, remote, backup, bl, br, stack, fp, wf, tomb) in docs.items():
                if shadow is None:
                    shadow = self.memory.text.get(name)
                    if shadow is None:
                        raise KeyError(f"the text its shadow refers to, {name!r}, is not held")
                doc = _Doc(str(shadow), int(local), int(remote))
                doc.backup = doc.shadow if backup is None else str(backup)
                doc.backup_local, doc.backup_remote = int(bl), int(br)
                for v, raw, *src in stack:
                    source = src[0] if src else None
                    doc.push(
                        Edit(int(v), parse_change(bytes(raw)), bytes(raw)),
                        None if source is None else str(source),
                    )
                doc.full_pending, doc.want_full, doc.tombstone = bool(fp), bool(wf), bool(tomb)
                doc.ack_due = doc.summary = not doc.tombstone
                self._docs[name] = doc
            incarnation = header.get("peer_incarnation")
            self.peer_incarnation = None if incarnation is None else bytes(incarnation)
            if self.role == "server":
                epoch = header["epoch"]
                self._epoch = None if epoch is None else int(epoch)
                self._seq = int(header["seq"])
                self._retired_epochs = dict.fromkeys(int(e) for e in header["retired"])
                reply = bytes(header["reply"])
                # A reply saved by a build of another protocol version is not
                # resent (the peer would refuse it, and send its request
                # again, forever): a copy of that request gets a reply afresh.
                self._last_frame = reply if reply[:1] == _FRAME_MARK else b""
                self._reply_due = bool(header["reply_due"])
        except (ValueError, TypeError, KeyError, DecodeError) as exc:
            raise CorruptionError(
                f"the saved link of {self.memory.replica_id!r} to {self.peer_id!r} does not "
                f"reload: {exc}"
            ) from None
        for name in self._docs:
            self._refresh(name)
        self._resume = True
        self._unsaved_header = True

    # -- state --------------------------------------------------------------

    @property
    def origin(self) -> Origin:
        """The origin of the changes this link applies (remote, from its peer)."""
        origin = self._origin
        if origin is None or origin.peer != self.peer_id:
            origin = self._origin = Origin("remote", self.peer_id, self)
        return origin

    @property
    def idle(self) -> bool:
        """True when this side has nothing to tell the peer but acknowledgements."""
        return not (
            self._dirty
            or self._pending
            or self._deleted_acks
            or self._absent
            or self._meta_dirty
            or self._epoch_frozen() is not None
            or not self._kv.idle
        )

    @property
    def peer_epoch_known(self) -> bool:
        """True once the peer told us its metadata epoch (its first block)."""
        return self._peer_epoch is not None

    @property
    def awaiting_reply(self) -> bool:
        """Client side: the latest request has not been answered yet."""
        return self._awaiting

    def _refresh(self, name: str) -> None:
        doc = self._docs.get(name)
        if doc is not None and doc.needs_send():
            self._pending.add(name)
        else:
            self._pending.discard(name)

    def _mark_dirty(self, name: str) -> None:
        self._dirty.add(name)
        if self.memory.durable and name in self._docs:
            # The saved shadow may be a reference to the text that just
            # changed (saved_doc): save it explicitly in the same transaction.
            self._unsaved.add(name)

    def _mark_deleted(self, name: str) -> None:
        self._dirty.discard(name)
        if self.memory.durable:
            self._unsaved.add(name)
        doc = self._docs.get(name)
        if doc is None:
            return
        doc.tombstone = True
        doc.clear_stack()
        doc.full_pending = doc.want_full = doc.ack_due = False
        self._pending.add(name)

    # -- sending --------------------------------------------------------------

    def outgoing(self) -> bytes | None:
        """Run one cycle and return the frame to send, or ``None``.

        Client: a new request (diffing every changed document), or the
        unanswered latest request again. Server: the reply to the latest
        request, or ``None`` when no request awaits one.
        """
        durable = self.memory.durable
        if self.role == "client":
            if self._awaiting:
                if durable:
                    self.memory.flush()  # what arrived since the last save
                return self._sent(self._last_frame, retransmit=True)
            self._seq += 1
            self._awaiting = True
        else:
            if not self._reply_due:
                if self._resend_reply and self._last_frame:
                    self._resend_reply = False
                    if durable:
                        self.memory.flush()
                    return self._sent(self._last_frame, retransmit=True)
                return None
            self._reply_due = self._resend_reply = False
        names = sorted(self._dirty | self._pending | self._deleted_acks | self._absent)
        # A set keeps the table it grew to when its items go (a link's first
        # exchange marks every document), and copying or iterating it costs
        # that table's size: rebuilt small, a cycle costs O(documents changed).
        if len(self._dirty) <= _SMALL_SET:
            self._dirty = set(self._dirty)
        if len(self._pending) <= _SMALL_SET:
            self._pending = set(self._pending)
        if durable:
            self._unsaved.update(names)
            self._unsaved_header = True
        entries = []
        pending: list[str] = []
        out_refs, out_known = self._out_refs, self._out_known
        for name in names:
            # Name a document by its index once the peer has it.
            ref = out_refs.get(name)
            if ref is None:
                ref = out_refs[name] = len(out_refs) + 1
            known = name in out_known
            entry = self._entry_for(name, "" if known else name, -ref if known else ref)
            if entry is not None:
                entries.append(entry)
                if not known:
                    pending.append(name)
            self._refresh(name)
        self._out_pending = pending
        assert self._epoch is not None  # a server only replies after a request set it
        meta = self._meta_block()
        if meta is not None:
            self._block_epoch = meta.epoch_id
        frame = Frame(
            # Who we are: in the first exchange of a link epoch and after a reopening.
            self.memory.replica_id if self._seq == 1 or self._resume else "",
            self._epoch,
            self._seq,
            self.role == "server",
            tuple(entries),
            meta,
            self._kv.entries(),
            self._resume,
            self._rename_due,
        )
        self._resume = self._rename_due = False
        data = encode_frame(frame, compress_threshold=self.compress_threshold)
        self._last_frame = data
        if durable:
            # The commit point: whatever the peer can learn from this frame
            # is on disk before the frame leaves.
            self.memory.flush()
        return self._sent(data, retransmit=False)

    def _epoch_frozen(self) -> bytes | None:
        """Server: what our epoch holds of the peer's epoch, when the peer
        must move to ours (it is on an ended epoch of our lineage, or on
        another lineage whose document we merged); otherwise None."""
        meta = self.memory.meta
        peer = self._peer_epoch
        if self.role != "server" or peer is None or peer == meta.epoch_id:
            return None
        if self._merged is not None and self._merged[0] == peer:
            return self._merged[1]
        frozen = meta.frozen_state(peer)
        if frozen is None and meta.forgotten(peer):
            return b""  # we carried that epoch but no longer keep its final state
        return frozen

    def _await_adoption(self) -> bool:
        """A hub that may still adopt its clients' document (restarted from
        nothing, and some client link has not reported its epoch) does not
        cross yet: at most _ADOPT_ROUNDS replies."""
        meta = self.memory.meta
        if not meta.can_adopt() or self._adopt_wait >= _ADOPT_ROUNDS:
            return False
        servers = [link for link in self.memory.links if link.role == "server"]
        if all(link._peer_epoch is not None for link in servers):
            # Every client reported: adopt what they offered (if anything),
            # and move with our upstream from there.
            if self._adopt_offers(self.origin) is not None:
                return True
            if meta.nothing_to_adopt([link.peer_id for link in servers]):
                return False
        self._adopt_wait += 1
        return True

    def _adopt_offers(self, origin: Origin | None = None) -> int | None:
        """Adopt the newest document our clients offered (see
        EpochMeta.adopt_newest); the other offers, merged by value, move
        their peers by MERGE. Returns the adopted epoch id, None without
        offers."""
        meta = self.memory.meta
        before = meta.epoch_id
        by_value = meta.adopt_newest(origin or self.origin)
        for link in self.memory.links:
            if link.role == "server" and link.peer_id in by_value:
                link._merged = by_value[link.peer_id]
        return meta.epoch_id if meta.epoch_id != before else None

    def _defer_crossing(self, blk: MetaBlock) -> bool:
        """A hub told to cross holds writes of others (its clients) past the
        state the new epoch covers (they reached it after its request left):
        cross only once the upstream had a chance to take them (the same
        block twice means it could not; clients that keep writing get three
        rounds, then write theirs again after crossing as usual)."""
        if not any(link.role == "server" for link in self.memory.links):
            return False
        times = 0
        if self._deferred is not None and self._deferred[0] == blk.epoch_id:
            if self._deferred[1] == blk.b or self._deferred[2] >= _DEFER_ROUNDS:
                return False
            times = self._deferred[2]
        meta = self.memory.meta
        frozen = decode_state_vector(blk.b)
        own = meta.own_clients()
        ours = decode_state_vector(meta.state())
        if not any(clock > frozen.get(c, 0) for c, clock in ours.items() if c not in own):
            return False
        self._deferred = (blk.epoch_id, blk.b, times + 1)
        return True

    def _meta_block(self) -> MetaBlock | None:
        meta = self.memory.meta
        if self.memory.is_root:
            meta.maybe_compact()  # the compaction pass runs during each cycle
        # _sent_state: what the peer holds once it has this frame.
        frozen = self._epoch_frozen()
        if frozen is not None:
            # Move the peer to our epoch with our whole document (so nothing
            # else is due); its own writes that the document lacks it re-applies.
            # What it holds afterwards its next UPDATE says (a hub may take
            # its clients' document first instead of crossing).
            self._meta_dirty = False
            self._sent_state = None
            peer = self._peer_epoch
            assert peer is not None
            merged = self._merged is not None and self._merged[0] == peer
            kind = MetaKind.MERGE if merged or meta.left_by_merge(peer) else MetaKind.EPOCH
            return MetaBlock(meta.epoch, kind, meta.update_since(None), frozen, meta.epoch_id)
        if self._meta_dirty or (self.role == "client" and self._peer_epoch != meta.epoch_id):
            # A client whose server is on another epoch sends its whole
            # document until the server moves it across.
            self._meta_dirty = False
            known = self._peer_state if self._peer_epoch == meta.epoch_id else None
            # A server's UPDATE reaches a client on another epoch unapplied.
            same = self.role == "client" or self._peer_epoch == meta.epoch_id
            state = meta.state()
            self._sent_state = state if same else None
            update = meta.update_since(known)
            return MetaBlock(meta.epoch, MetaKind.UPDATE, state, update, meta.epoch_id)
        self._sent_state = None
        if self._peer_knows_epoch == meta.epoch_id:
            return None  # nothing new, and the peer knows our epoch
        return MetaBlock(meta.epoch, MetaKind.NONE, epoch_id=meta.epoch_id)

    def _receive_meta(self, blk: MetaBlock | None, delivered: bool) -> None:
        """Apply a frame's metadata block. ``delivered``: the peer has our last
        frame (its content is in the peer's state). Raises DecodeError before
        changing anything if the block is invalid."""
        meta = self.memory.meta
        if self.role == "client":
            self.reply_complete = True
        if delivered:
            self._peer_knows_epoch = self._block_epoch
        if blk is None:
            if self._peer_epoch is None:
                return
            # No block: the peer is still on the epoch it last told us, with
            # nothing new.
            blk = MetaBlock(self._peer_epoch_no, MetaKind.NONE, epoch_id=self._peer_epoch)
        if blk.kind == MetaKind.UPDATE:
            decode_state_vector(blk.a)  # validate before anything changes
        epoch_before = meta.epoch_id
        if blk.epoch_id == meta.epoch_id:
            if blk.kind == MetaKind.UPDATE:
                meta.apply_remote(blk.b, self.origin)
        elif self.role == "client":
            if blk.kind in (MetaKind.EPOCH, MetaKind.MERGE) and self._await_adoption():
                # A hub restarted from nothing first adopts its clients'
                # newest document (their history), then moves with it.
                self.reply_complete = False
                if meta.epoch_id != epoch_before:  # adopted: our upstream lacks it
                    epoch_before = meta.epoch_id
                    self._peer_state, self._sent_state = None, None
            elif blk.kind in (MetaKind.EPOCH, MetaKind.MERGE) and self._defer_crossing(blk):
                # Our clients' writes the new epoch lacks go up first (as an
                # update of our epoch, which the root integrates late or
                # merges); the next reply's state covers them.
                self.reply_complete = False
                self._meta_dirty = True
            elif blk.kind in (MetaKind.EPOCH, MetaKind.MERGE):
                self._deferred = None
                merged = blk.kind == MetaKind.MERGE
                uncovered = meta.cross(
                    blk.epoch, blk.epoch_id, blk.a, blk.b, merged=merged, origin=self.origin
                )
                # Own writes the upstream's document does not hold (written
                # again, they travel in our next request): not acknowledged.
                self.reply_complete = not uncovered
            elif meta.has_pending_writes():
                # The server is on another epoch and did not move us (a hub
                # waiting for its own upstream): our writes are not with it.
                self.reply_complete = False
        elif blk.kind == MetaKind.UPDATE and meta.frozen_state(blk.epoch_id) is not None:
            # An ended epoch of ours: a root integrates what the update
            # brings to it (it keeps the last epochs' documents); the reply
            # moves the peer across with a frozen state that covers it.
            meta.apply_late(blk.epoch_id, blk.b, self.origin)
        elif (
            blk.kind == MetaKind.UPDATE
            and meta.frozen_state(blk.epoch_id) is None
            and not meta.forgotten(blk.epoch_id)
            and meta.can_adopt()
            and meta.offer(self.peer_id, blk.epoch, blk.epoch_id, blk.b, blk.a)
        ):
            # A server restarted from nothing takes the newest of its
            # clients' documents as its epoch (shared history; its own writes
            # re-applied on it), once every client link has reported a
            # document (an empty one may be a hub restarted too, about to
            # adopt its own clients'), or once this client offered its
            # document _ADOPT_ROUNDS times (nobody holds the others up).
            if meta.offers_waited(self.peer_id) >= _ADOPT_ROUNDS or all(
                link is self
                or link._peer_epoch == meta.epoch_id
                or (link._peer_epoch is not None and not meta.reported_empty(link.peer_id))
                for link in self.memory.links
                if link.role == "server"
            ):
                self._adopt_offers()
                if meta.epoch_id != epoch_before:
                    # The peer holds its own document, which may not be the
                    # one adopted (then it is on another epoch).
                    epoch_before = meta.epoch_id
                    self._peer_state, self._sent_state = None, None
        elif (
            blk.kind == MetaKind.UPDATE
            and meta.frozen_state(blk.epoch_id) is None
            and not meta.forgotten(blk.epoch_id)
            and _on_upstream_epoch(self.memory)
            and not (meta.ahead(blk.epoch_id) and not self.memory.is_root)
            and self._merged != (blk.epoch_id, blk.a)  # merged already: nothing new
            and meta.merge_foreign(blk.b, blk.a, self.origin)
        ):
            # A downstream document of another lineage: its values merged,
            # the peer moves to our epoch (re-applying what it wrote after
            # this state). Not the whole document, or a hub not yet on its
            # upstream's epoch: nothing merged, the client sends it again.
            self._merged = (blk.epoch_id, blk.a)
        if meta.epoch_id != epoch_before:
            self._peer_state = meta.base_state
        elif blk.epoch_id == meta.epoch_id:
            known = self._peer_state if self._peer_epoch == meta.epoch_id else None
            if delivered and self._sent_state is not None:
                known = merge_state_vectors(known, self._sent_state)
                if self.role == "client":
                    meta.note_delivered(self._sent_state)
            if blk.kind == MetaKind.UPDATE:
                known = merge_state_vectors(known, blk.a)
            self._peer_state = known
            self._merged = None
            if self._peer_epoch != blk.epoch_id:
                # The peer just came to our epoch (it may have adopted its own
                # clients' copy of it): tell it what it lacks.
                self._meta_dirty = True
        self._peer_epoch = blk.epoch_id
        self._peer_epoch_no = blk.epoch

    def _sent(self, data: bytes, *, retransmit: bool) -> bytes:
        m = self.metrics
        m.frames_sent += 1
        m.bytes_sent += len(data)
        m.retransmits += retransmit
        return data

    def _entry_for(self, name: str, wire: str, ref: int) -> Entry | None:
        """The entry for document ``name``, or None; ``wire`` and ``ref``:
        how it names the document (section 3.3)."""
        if name in self._deleted_acks:
            self._deleted_acks.discard(name)
            return Entry(wire, Kind.DELETED, ref=ref)
        if name in self._absent:
            self._absent.discard(name)
            if name not in self._docs and name not in self.memory.text:
                return Entry(wire, Kind.ABSENT, ref=ref)
        text = self.memory.text.get(name)
        doc = self._docs.get(name)
        if doc is None:
            self._dirty.discard(name)
            if text is None:
                return None
            # A document new to this link travels whole.
            doc = self._docs[name] = _Doc(text, 1, 0)
            doc.full_pending = True
            return self._full(wire, ref, doc)
        if doc.tombstone:
            return Entry(wire, Kind.DELETE, ref=ref)
        if doc.want_full:
            return Entry(wire, Kind.RESYNC, ref=ref)
        if doc.full_pending:
            return self._full(wire, ref, doc)
        if name in self._dirty:
            self._dirty.discard(name)
            if text is not None and text != doc.shadow:
                self.metrics.docs_diffed += 1
                delta = make_delta(doc.shadow, text)
                doc.push(Edit(doc.local, delta, delta.to_bytes()), doc.shadow)
                doc.shadow = text
                doc.local += 1
                self.metrics.edits_made += 1
        if not (doc.stack or doc.ack_due):
            return None
        doc.ack_due = False
        if not doc.stack and not doc.summary:
            # Only an acknowledgement, of edits or a FULL whose result both
            # sides checked: no checksum.
            return Entry(wire, Kind.ACK, ack=doc.remote, local=doc.local, ref=ref)
        doc.summary = False
        return Entry(
            wire,
            Kind.EDITS,
            ack=doc.remote,
            local=doc.local,
            edits=tuple(doc.stack),
            checksum=_checksum(doc.shadow),
            ref=ref,
        )

    def _full(self, wire: str, ref: int, doc: _Doc) -> Entry:
        self.metrics.fulls_sent += 1
        doc.ack_due = False
        return Entry(wire, Kind.FULL, ack=doc.remote, local=doc.local, text=doc.shadow, ref=ref)

    # -- receiving ------------------------------------------------------------

    def incoming(self, data: bytes) -> None:
        """Apply a frame from the peer.

        Duplicated, reordered and superseded frames are ignored. Raises
        :class:`~hybridsync.errors.DecodeError` (malformed, truncated, unknown
        version), :class:`~hybridsync.errors.LimitExceededError` (too large)
        or :class:`~hybridsync.errors.ProtocolError` (wrong sender or
        direction); on any error nothing changes.
        """
        with self.memory.changes.change_set():
            self._incoming(data)

    def _incoming(self, data: bytes) -> None:
        frame = decode_frame(data, max_bytes=self.max_frame_bytes, max_kv_bytes=self.max_kv_bytes)
        if frame.sender and frame.sender != self.peer_id:
            raise ProtocolError(
                f"frame from {frame.sender!r} on the link to {self.peer_id!r}: refused"
            )
        if frame.reply != (self.role == "client"):
            kind = "reply" if frame.reply else "request"
            raise ProtocolError(f"a {kind} frame cannot be sent to the {self.role} side of a link")
        restart = False
        if self.role == "client":
            if frame.epoch != self._epoch or not self._awaiting or frame.seq != self._seq:
                self._count_received(data, stale=True)
                return
        elif frame.epoch != self._epoch:
            # A fresh server link adopts the first client it hears from;
            # after that only the first request of a client incarnation never
            # seen before starts the link afresh, anything else is a late frame.
            if self._epoch is not None:
                if frame.seq != 1 or frame.epoch in self._retired_epochs:
                    self._count_received(data, stale=True)
                    return
                restart = True
        elif frame.seq <= self._seq:
            self._count_received(data, stale=True)
            if frame.seq == self._seq:
                if self._last_frame:
                    self._resend_reply = True  # our reply was lost
                else:
                    self._reply_due = True  # reopened from disk: reply afresh
            return
        entries, lost = self._resolve(frame)
        delivered = not restart and self._seq > 0  # the peer answered our last frame
        # The metadata block is the only part that can still fail: apply it
        # before anything else changes.
        if restart:
            saved = (self._peer_epoch, self._peer_state, self._sent_state, self._merged)
            self._peer_epoch, self._peer_state, self._sent_state = None, None, None
            self._merged = None
            try:
                self._receive_meta(frame.meta, delivered=False)
            except Exception:
                self._peer_epoch, self._peer_state, self._sent_state, self._merged = saved
                raise
        else:
            # A reply, or a request following one we answered: the peer has our last frame.
            self._receive_meta(frame.meta, delivered=self._seq > 0)
        self._count_received(data, stale=False)
        if self.memory.durable:
            self._unsaved_header = True
            self._unsaved.update(name for name, _ in entries)
        if self.role == "client":
            self._awaiting = False
        else:
            if restart:
                assert self._epoch is not None
                self._retired_epochs[self._epoch] = None
                self._restart(keep_docs=frame.resume)
            self._epoch = frame.epoch
            self._seq = frame.seq
            self._reply_due = True
        if frame.resume:
            self._peer_reopened()
        if delivered:
            self._out_known.update(self._out_pending)
            self._out_pending = []
        if frame.rename:
            # The peer lost what we told it before (a link created afresh or
            # reopened): our indices, so it dropped the entries that used
            # them (this reply does not acknowledge all our request carried),
            # and our metadata epoch: we send both again.
            self._out_known.clear()
            self._out_pending = []
            self._peer_knows_epoch = None
            if self.role == "client":
                self.reply_complete = False
        if lost or (frame.meta is None and self._peer_epoch is None):
            # We lost the peer's indices, or never heard its metadata epoch
            # (it thinks we know it): ask it to introduce itself again.
            self._rename_due = True
        for entry in frame.entries:
            if entry.ref > 0:
                self._in_names[entry.ref] = entry.name
        for name, entry in entries:
            self._receive(entry, name)
            self._refresh(name)
        for kv_entry in frame.kv:
            self._kv.receive(kv_entry)

    def _resolve(self, frame: Frame) -> tuple[list[tuple[str, Entry]], bool]:
        """The frame's entries with the names of their documents (an entry
        naming its document by index decodes with an empty name). An entry
        whose index we do not know (we lost the peer's indices: a fresh or
        reopened link) is dropped, as if lost on the way, and our next frame
        asks for names again. Raises DecodeError (nothing changed) if two
        entries name one document. Returns the entries and whether any was
        dropped."""
        known = {} if frame.resume else self._in_names
        entries: list[tuple[str, Entry]] = []
        names: set[str] = set()
        lost = False
        for e in frame.entries:
            name = e.name
            if e.ref < 0:
                found = known.get(-e.ref)
                if found is None:
                    lost = True
                    continue
                name = found
            if name in names:
                raise DecodeError(f"document {name!r} appears twice in one frame")
            names.add(name)
            entries.append((name, e))
        return entries, lost

    def _count_received(self, data: bytes, *, stale: bool) -> None:
        self.metrics.frames_received += 1
        self.metrics.bytes_received += len(data)
        self.metrics.stale_frames += stale

    def _restart(self, *, keep_docs: bool = False) -> None:
        """The client link restarted (new epoch): start every document afresh,
        or, when the client reopened its saved link state (``keep_docs``),
        keep the documents' shadows and versions: their summaries show what
        still agrees."""
        self._meta_dirty = not self.memory.meta.is_empty()
        self._peer_knows_epoch = None
        self._in_names.clear()
        self._out_known.clear()
        self._out_pending = []
        if keep_docs:
            for doc in self._docs.values():
                doc.ack_due = doc.summary = not doc.tombstone
        else:
            self._docs.clear()
            self._pending.clear()
            self._unsaved_reset = self.memory.durable
        self._deleted_acks.clear()
        self._absent.clear()
        self._dirty = set(self.memory.text)
        self._seq = 0
        self._last_frame = b""
        self._kv.restart()

    def _peer_reopened(self) -> None:
        """The peer reopened a durable replica; its state may be older than
        what it told us before (a backup): forget what we knew it held. A
        document that has to travel whole merges like one meeting without
        shared history, so that nothing we hold is overwritten."""
        self._peer_state = self._sent_state = None
        self._peer_knows_epoch = None
        self._in_names.clear()
        self._out_known.clear()
        self._out_pending = []
        self._meta_dirty = True
        self._kv.restart()
        self._peer_resumed = set(self._docs)

    def _receive(self, e: Entry, name: str) -> None:
        doc = self._docs.get(name)
        if e.kind == Kind.EDITS or e.kind == Kind.ACK:
            self._receive_edits(e, doc, name)
        elif e.kind == Kind.FULL:
            self._receive_full(e, doc, name)
        elif e.kind == Kind.DELETE:
            self.memory.text.remove(name, self.origin)
            self._docs.pop(name, None)
            self._dirty.discard(name)
            self._deleted_acks.add(name)
        elif e.kind == Kind.DELETED:
            if doc is not None and doc.tombstone:
                del self._docs[name]
                if name in self.memory.text:
                    self._dirty.add(name)  # re-created since: it travels anew
        elif e.kind == Kind.RESYNC:
            text = self.memory.text.get(name)
            if doc is not None and doc.tombstone:
                return  # our DELETE answers it
            if text is None:
                self._docs.pop(name, None)
                self._absent.add(name)
                return
            self._send_whole(name, doc, text)
        elif e.kind == Kind.ABSENT:
            # The peer has nothing: our copy (if any) travels whole.
            text = self.memory.text.get(name)
            if doc is not None and doc.tombstone:
                return
            if text is None:
                self._docs.pop(name, None)
            else:
                self._send_whole(name, doc, text)

    def _send_whole(self, name: str, doc: _Doc | None, text: str) -> None:
        fresh = _Doc(text, (doc.local + 1) if doc else 1, doc.remote if doc else 0)
        fresh.full_pending = True
        self._docs[name] = fresh
        self._dirty.discard(name)

    def _receive_edits(self, e: Entry, doc: _Doc | None, name: str) -> None:
        if doc is None:
            # The peer has state we lack. A server holding the document sends
            # it whole; otherwise ask for the peer's copy.
            text = self.memory.text.get(name)
            if self.role == "server" and text is not None:
                doc = self._docs[name] = _Doc(text, 1, 0)
                doc.full_pending = True
                self._dirty.discard(name)
            else:
                doc = self._docs[name] = _Doc(text or "", 0, 0)
                doc.want_full = True
            return
        if doc.tombstone or doc.want_full:
            return  # a deletion wins; a resync waits for its FULL
        if doc.full_pending:
            if e.ack < doc.local:
                return  # the peer has not adopted our FULL yet
            doc.full_pending = False
        if e.ack != doc.local and e.ack == doc.backup_local:
            # The peer never received our latest edits: roll back to the
            # backup shadow; the next diff sends them again.
            doc.shadow, doc.local, doc.remote = doc.backup, doc.backup_local, doc.backup_remote
            doc.clear_stack()
            self._dirty.add(name)
        if e.ack > doc.local:
            self._diverged(name, doc)
            return
        doc.drop_acknowledged(e.ack)
        for edit in e.edits:
            if edit.version < doc.remote:
                continue  # already applied
            if edit.version > doc.remote:
                self._diverged(name, doc)
                return
            change = edit.patch
            if isinstance(change, Delta):
                applied = change.apply(doc.shadow)
                if applied is None:  # it does not fit: not the shadow it was made on
                    self._diverged(name, doc)
                    return
                shadow = applied
            else:
                shadow, flags = apply_patch(change, doc.shadow, **_STRICT)  # type: ignore[arg-type]
                if not all(flags):
                    self._diverged(name, doc)
                    return
            self._apply_to_text(name, doc.shadow, shadow)
            doc.shadow = shadow
            doc.remote += 1
            self.metrics.edits_applied += 1
        if e.edits:
            doc.ack_due = True
        if (doc.remote, doc.local) != (e.local, e.ack) or (
            e.kind == Kind.EDITS and _checksum(doc.shadow) != e.checksum
        ):
            self._diverged(name, doc)
            return
        doc.take_backup()
        self._peer_resumed.discard(name)

    def _apply_to_text(self, name: str, old_shadow: str, new_shadow: str) -> None:
        text = self.memory.text.get(name, "")
        if text == old_shadow:
            new_text = new_shadow
        else:
            # The text changed since the shadow: both derive from the old
            # shadow, so merge three-way (every edit on both sides survives)
            # rather than patch fuzzily (a coarse hunk could overwrite text
            # edited here meanwhile).
            new_text = merge3(old_shadow, new_shadow, text)
            self.metrics.merges += 1
        self.memory.text.put(name, new_text, self.origin)

    def _diverged(self, name: str, doc: _Doc) -> None:
        """Re-initialise a document: the server sends its text whole, a
        client asks for it."""
        self.metrics.resyncs += 1
        text = self.memory.text.get(name)
        doc.clear_stack()
        doc.ack_due = False
        if self.role == "server" and text is not None:
            doc.shadow = text
            doc.local += 1
            doc.full_pending = True
            doc.want_full = False
            doc.take_backup()
            self._dirty.discard(name)
        else:
            doc.want_full = True
            doc.full_pending = False

    def _receive_full(self, e: Entry, doc: _Doc | None, name: str) -> None:
        text = self.memory.text.get(name)
        if doc is not None and doc.tombstone:
            return  # a deletion wins
        if (
            self.role == "server"
            and text is not None
            and text != e.text
            and doc is not None
            and doc.full_pending
        ):
            # Crossing whole documents: the server's travels on; the client
            # merges when it arrives (below), so nothing is merged twice.
            return
        new_text = e.text
        creation = (
            doc is None
            or (doc.full_pending and (doc.local, doc.remote) == (1, 0))
            or name in self._peer_resumed
        )
        self._peer_resumed.discard(name)
        if text is not None and text != e.text and creation:
            # Both sides hold the document without a shared history on this
            # link: independent creations, or copies of one document meeting
            # again (a peer restarted without its state). Keep both texts,
            # the incoming one first, but the lines they share only once.
            new_text = merge3(common_lines(e.text, text), e.text, text)
            self.metrics.creation_conflicts += 1
        elif doc is not None and text is not None:
            # Carry over our changes the peer does not have: from the shadow
            # our oldest unacknowledged edit applies to, to our text.
            pending: list[Patch] = []
            unacked = [i for i, s in enumerate(doc.stack) if s.version >= e.ack]
            source = doc.sources[unacked[0]] if unacked else doc.shadow
            if source is None:  # reloaded without its source: its patches, as sent
                pending = [p for i in unacked if isinstance(p := doc.stack[i].patch, Patch)]
                source = doc.shadow
            if text != source:
                pending.append(make_patch(source, text))
            for patch in pending:
                new_text, flags = apply_patch(patch, new_text)
                self.metrics.hunks_failed += flags.count(False)
        fresh = self._docs[name] = _Doc(e.text, e.ack, e.local)
        fresh.ack_due = True
        self.memory.text.put(name, new_text, self.origin)
        self._dirty.add(name)
