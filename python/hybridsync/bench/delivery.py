"""Acknowledged delivery for the pure-CRDT baselines: what TCP (or a
y-websocket connection) gives them, over the bench's lossy network.

hybridsync heals loss inside its own protocol: a client resends its
unanswered request after ``retransmit_after`` ticks, a server resends its
last reply to a duplicate request, and every frame acknowledges the peer's
versions. A CRDT sync protocol (y-protocols, Loro's update exchange) assumes
a reliable, ordered transport instead. :class:`Channel` is that transport,
with the same retransmission policy as hybridsync's links, so that a cell
compares sync algorithms, not retry policies:

- every data message gets a sequence number (1, 2, ...); the receiver hands
  payloads to the engine **in order**, exactly once (duplicates dropped,
  early arrivals buffered until the gap is filled);
- every message in the other direction acknowledges cumulatively (the last
  in-order sequence number) and selectively (the out-of-order ones held);
  a receiver with nothing to send back sends a bare acknowledgement in the
  flush of the tick that brought it data;
- a data message not acknowledged ``retransmit_after`` ticks after it was
  last sent is sent again (the default 2 ticks is one round trip at the
  bench's one-tick delay: hybridsync's links use the same).

Header, counted in the wire bytes like any framing: a varint sequence number
(0: no data), a varint cumulative acknowledgement, a varint count of
selective acknowledgements and their varint offsets above the cumulative
one -- 3 bytes for a typical message.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["Channel", "decode_header", "encode_header"]


def _put(out: bytearray, n: int) -> None:
    while n > 0x7F:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.append(n)


def _get(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated delivery header")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos
        if shift > 63:
            raise ValueError("varint too long in delivery header")


def encode_header(seq: int, ack: int, sacks: list[int]) -> bytes:
    """``seq`` (0: a bare acknowledgement), the cumulative ``ack`` and the
    selectively acknowledged sequence numbers (all above ``ack``)."""
    out = bytearray()
    _put(out, seq)
    _put(out, ack)
    _put(out, len(sacks))
    for s in sacks:
        _put(out, s - ack)
    return bytes(out)


def decode_header(message: bytes) -> tuple[int, int, list[int], bytes]:
    """``(seq, ack, sacks, payload)`` of a message."""
    seq, pos = _get(message, 0)
    ack, pos = _get(message, pos)
    count, pos = _get(message, pos)
    sacks = []
    for _ in range(count):
        off, pos = _get(message, pos)
        sacks.append(ack + off)
    return seq, ack, sacks, message[pos:]


@dataclass
class Channel:
    """One endpoint's side of a reliable link to one peer (both directions).

    The engine calls :meth:`queue` for each payload to send (one per flush),
    :meth:`receive` for each message that arrives from the peer (returns the
    payloads now deliverable in order), and :meth:`flush` once per tick to get
    the messages to put on the network (new data, retransmissions, a bare
    acknowledgement when one is owed).
    """

    retransmit_after: int = 2
    #: Next sequence number to assign.
    next_seq: int = 1
    #: Sent and not yet acknowledged: seq -> (payload, tick last sent).
    unacked: dict[int, tuple[bytes, int]] = field(default_factory=dict)
    #: Payloads queued since the last flush.
    pending: list[bytes] = field(default_factory=list)
    #: Highest sequence number received in order.
    delivered: int = 0
    #: Received early: seq -> payload.
    early: dict[int, bytes] = field(default_factory=dict)
    #: Whether the peer is owed an acknowledgement.
    ack_owed: bool = False
    #: Data messages sent again.
    retransmissions: int = 0

    def queue(self, payload: bytes) -> None:
        self.pending.append(payload)

    def receive(self, message: bytes) -> list[bytes]:
        seq, ack, sacks, payload = decode_header(message)
        for s in [s for s in self.unacked if s <= ack or s in sacks]:
            del self.unacked[s]
        if seq == 0:
            return []
        self.ack_owed = True
        if seq <= self.delivered or seq in self.early:
            return []  # a duplicate
        self.early[seq] = payload
        out: list[bytes] = []
        while self.delivered + 1 in self.early:
            self.delivered += 1
            out.append(self.early.pop(self.delivered))
        return out

    def _header(self, seq: int) -> bytes:
        return encode_header(seq, self.delivered, sorted(self.early))

    def flush(self, now: int) -> Iterator[bytes]:
        """The messages to send at tick ``now``."""
        sent = False
        for seq, (payload, last) in sorted(self.unacked.items()):
            if now - last >= self.retransmit_after:
                self.unacked[seq] = (payload, now)
                self.retransmissions += 1
                sent = True
                yield self._header(seq) + payload
        for payload in self.pending:
            seq = self.next_seq
            self.next_seq += 1
            self.unacked[seq] = (payload, now)
            sent = True
            yield self._header(seq) + payload
        self.pending = []
        if self.ack_owed and not sent:
            yield self._header(0)
        self.ack_owed = False

    @property
    def idle(self) -> bool:
        """Nothing queued, nothing unacknowledged."""
        return not self.pending and not self.unacked
