"""Authentication and message protection of hybridsync connections.

A connection starts with a challenge-response handshake in three WebSocket
messages; both sides prove that they hold the swarm's shared secret without
revealing it, and derive one key per direction for this connection only::

    client -> hub  HELLO      magic, version, 1, nonce_c[32], client id
    hub -> client  CHALLENGE  magic, version, 2, nonce_s[32], incarnation[16],
                              hub id, proof_s[32]
    client -> hub  PROOF      magic, version, 3, proof_c[32]

``magic`` is ``b"HSNA"``, ``version`` 1, ids are UTF-8 with a 2-byte
little-endian length. With ``transcript`` = label, both nonces, the hub's
incarnation and both ids (length-prefixed), HKDF-SHA256 (RFC 5869) with the
nonces as salt and the secret as input key material gives
``proof_s``, ``proof_c``, the client-to-hub key and the hub-to-client key
(each bound to the transcript by the HKDF ``info``). Nonces are fresh per
connection, so proofs and keys never repeat; a captured handshake is useless
on another connection.

After the handshake every message is ``counter (8 bytes, little-endian) |
kind (1 byte) | body | tag (32 bytes)`` with ``tag = HMAC-SHA256(key of the
direction, counter | kind | body)``. Counters start at 1 and increase by one
per message and direction. The receiver accepts each counter once, within a
sliding window of the last :data:`REPLAY_WINDOW` counters (as IPsec and DTLS
do): a message overtaken by a later one still counts, while a replayed or
duplicated one, or one older than the window, is refused like a forged or
tampered one. ``kind`` 1 carries a sync frame, 3 a
reply frame after which the hub still has something to say ("poll again at
once"), 2 (empty) is a wake-up hint from a hub ("poll now: I have something
for you").

Nothing here logs, and no exception message contains the secret, a key, a
proof or a nonce.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct

from hybridsync.errors import (
    AuthenticationError,
    HandshakeError,
    HybridSyncError,
    InvalidArgumentError,
)

__all__ = [
    "KIND_FRAME",
    "KIND_FRAME_MORE",
    "KIND_POKE",
    "MESSAGE_OVERHEAD",
    "PROTOCOL_LABEL",
    "AuthenticationError",
    "Channel",
    "ClientHandshake",
    "HandshakeError",
    "RejectedMessage",
    "ServerHandshake",
    "check_secret",
]

#: Bound into every proof and key: a secret shared with another protocol
#: (or another version of this one) gives different proofs and keys.
PROTOCOL_LABEL = b"hybridsync-net/1"
MAGIC = b"HSNA"
VERSION = 1
HELLO, CHALLENGE, PROOF = 1, 2, 3
NONCE_BYTES = 32
INCARNATION_BYTES = 16
TAG_BYTES = 32
COUNTER_BYTES = 8
KIND_FRAME = 1
KIND_POKE = 2
KIND_FRAME_MORE = 3
#: Bytes a protected message adds to its body.
MESSAGE_OVERHEAD = COUNTER_BYTES + 1 + TAG_BYTES
#: The largest handshake message (and replica ids are at most 1 KiB).
MAX_ID_BYTES = 1024
MAX_HANDSHAKE_MESSAGE = 6 + NONCE_BYTES + INCARNATION_BYTES + 2 + MAX_ID_BYTES + TAG_BYTES
MIN_SECRET_BYTES = 16

_COUNTER = struct.Struct("<Q")
_LEN = struct.Struct("<H")


class RejectedMessage(HybridSyncError):
    """A message after the handshake failed authentication or is a replay."""


def check_secret(secret: object) -> bytes:
    """Validate the shared secret (bytes, at least 16 of them)."""
    if not isinstance(secret, (bytes, bytearray, memoryview)):
        raise InvalidArgumentError(
            f"secret must be bytes (at least {MIN_SECRET_BYTES}), got {type(secret).__name__}"
        )
    value = bytes(secret)
    if len(value) < MIN_SECRET_BYTES:
        # The length is not secret enough to matter; the value never appears.
        raise InvalidArgumentError(f"secret must be at least {MIN_SECRET_BYTES} bytes long")
    return value


def _encode_id(replica_id: str) -> bytes:
    raw = replica_id.encode()
    if not raw or len(raw) > MAX_ID_BYTES:
        raise InvalidArgumentError(f"replica ids on the network are 1..{MAX_ID_BYTES} bytes")
    return _LEN.pack(len(raw)) + raw


def _decode_id(data: bytes, at: int) -> tuple[str, int]:
    if at + 2 > len(data):
        raise HandshakeError("truncated handshake message")
    (n,) = _LEN.unpack_from(data, at)
    at += 2
    if n == 0 or n > MAX_ID_BYTES or at + n > len(data):
        raise HandshakeError("bad replica id length in handshake message")
    try:
        value = data[at : at + n].decode()
    except UnicodeDecodeError:
        raise HandshakeError("replica id in handshake message is not UTF-8") from None
    return value, at + n


def _header(data: object, kind: int) -> bytes:
    if not isinstance(data, bytes):
        raise HandshakeError("expected a binary handshake message, got text")
    if len(data) < 6 or data[:4] != MAGIC:
        raise HandshakeError("not a hybridsync handshake message")
    if data[4] != VERSION:
        raise HandshakeError(f"unsupported handshake version {data[4]} (this side speaks 1)")
    if data[5] != kind:
        names = {HELLO: "HELLO", CHALLENGE: "CHALLENGE", PROOF: "PROOF"}
        raise HandshakeError(
            f"expected a {names[kind]} message, got handshake message type {data[5]}"
        )
    return data


class _Keys:
    """Proofs and directional keys of one handshake (never printed)."""

    __slots__ = ("c2s", "client_proof", "s2c", "server_proof")

    def __init__(
        self,
        secret: bytes,
        nonce_c: bytes,
        nonce_s: bytes,
        incarnation: bytes,
        client_id: str,
        server_id: str,
    ) -> None:
        transcript = b"".join(
            (
                PROTOCOL_LABEL,
                b"\x00",
                nonce_c,
                nonce_s,
                incarnation,
                _encode_id(client_id),
                _encode_id(server_id),
            )
        )
        digest = hashlib.sha256(transcript).digest()
        # HKDF-Extract(salt = both nonces, IKM = secret), then one
        # HKDF-Expand block (32 bytes) per purpose.
        prk = hmac.new(nonce_c + nonce_s, secret, hashlib.sha256).digest()

        def expand(purpose: bytes) -> bytes:
            info = PROTOCOL_LABEL + b" " + purpose + b"\x00" + digest
            return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()

        self.server_proof = expand(b"server proof")
        self.client_proof = expand(b"client proof")
        self.c2s = expand(b"client to server")
        self.s2c = expand(b"server to client")

    def __repr__(self) -> str:
        return "<handshake keys (hidden)>"


class ClientHandshake:
    """The client's side of the handshake (sans-IO)."""

    def __init__(self, secret: bytes, client_id: str) -> None:
        self._secret = secret
        self.client_id = client_id
        self._nonce = secrets.token_bytes(NONCE_BYTES)
        self._keys: _Keys | None = None
        self.server_id = ""
        self.incarnation = b""

    def __repr__(self) -> str:
        return f"<ClientHandshake {self.client_id!r}>"

    def hello(self) -> bytes:
        return MAGIC + bytes((VERSION, HELLO)) + self._nonce + _encode_id(self.client_id)

    def challenge(self, data: object) -> bytes:
        """Check the hub's CHALLENGE; return our PROOF. Raises HandshakeError
        (malformed) or AuthenticationError (the hub's proof is wrong)."""
        msg = _header(data, CHALLENGE)
        at = 6
        end = at + NONCE_BYTES + INCARNATION_BYTES
        if len(msg) < end:
            raise HandshakeError("truncated CHALLENGE message")
        nonce_s = msg[at : at + NONCE_BYTES]
        incarnation = msg[at + NONCE_BYTES : end]
        server_id, at = _decode_id(msg, end)
        if len(msg) != at + TAG_BYTES:
            raise HandshakeError("CHALLENGE message has a wrong length")
        keys = _Keys(self._secret, self._nonce, nonce_s, incarnation, self.client_id, server_id)
        if not hmac.compare_digest(keys.server_proof, msg[at:]):
            raise AuthenticationError(
                f"the hub {server_id!r} did not prove that it holds the shared secret "
                "(the secrets differ, or something on the way altered the handshake)"
            )
        self._keys = keys
        self.server_id = server_id
        self.incarnation = incarnation
        return MAGIC + bytes((VERSION, PROOF)) + keys.client_proof

    def channel(self) -> Channel:
        assert self._keys is not None, "challenge() first"
        return Channel(self._keys.c2s, self._keys.s2c)


class ServerHandshake:
    """The hub's side of the handshake (sans-IO)."""

    def __init__(self, secret: bytes, server_id: str, incarnation: bytes) -> None:
        self._secret = secret
        self.server_id = server_id
        self.incarnation = incarnation
        self._keys: _Keys | None = None
        self.client_id = ""

    def __repr__(self) -> str:
        return f"<ServerHandshake {self.server_id!r}>"

    def hello(self, data: object) -> bytes:
        """Read a client's HELLO; return our CHALLENGE (with our proof)."""
        msg = _header(data, HELLO)
        if len(msg) < 6 + NONCE_BYTES:
            raise HandshakeError("truncated HELLO message")
        nonce_c = msg[6 : 6 + NONCE_BYTES]
        client_id, at = _decode_id(msg, 6 + NONCE_BYTES)
        if at != len(msg):
            raise HandshakeError("HELLO message has a wrong length")
        nonce_s = secrets.token_bytes(NONCE_BYTES)
        self._keys = _Keys(
            self._secret, nonce_c, nonce_s, self.incarnation, client_id, self.server_id
        )
        self.client_id = client_id
        return b"".join(
            (
                MAGIC,
                bytes((VERSION, CHALLENGE)),
                nonce_s,
                self.incarnation,
                _encode_id(self.server_id),
                self._keys.server_proof,
            )
        )

    def proof(self, data: object) -> None:
        """Check the client's PROOF. Raises HandshakeError or AuthenticationError."""
        msg = _header(data, PROOF)
        assert self._keys is not None, "hello() first"
        if len(msg) != 6 + TAG_BYTES:
            raise HandshakeError("PROOF message has a wrong length")
        if not hmac.compare_digest(self._keys.client_proof, msg[6:]):
            raise AuthenticationError(
                f"the peer claiming to be {self.client_id!r} did not prove that it holds "
                "the shared secret"
            )

    def channel(self) -> Channel:
        assert self._keys is not None, "hello() first"
        return Channel(self._keys.s2c, self._keys.c2s)


#: Counters behind the newest accepted one that may still arrive (once each).
REPLAY_WINDOW = 64
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1


class Channel:
    """Protects the messages of one authenticated connection (sans-IO)."""

    __slots__ = ("_recv_key", "_seen", "_send_key", "received", "sent")

    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        self._send_key = send_key
        self._recv_key = recv_key
        self.sent = 0  # counter of the last message sealed
        self.received = 0  # the newest counter accepted
        self._seen = 0  # bit i: counter received - i was accepted

    def __repr__(self) -> str:
        return f"<Channel sent={self.sent} received={self.received}>"

    def seal(self, kind: int, body: bytes = b"") -> bytes:
        """The next message to send (counter, kind, body, tag)."""
        self.sent += 1
        head = _COUNTER.pack(self.sent) + bytes((kind,))
        mac = hmac.new(self._send_key, head, hashlib.sha256)
        mac.update(body)
        return b"".join((head, body, mac.digest()))

    def open(self, message: object) -> tuple[int, bytes]:
        """Authenticate a received message; return ``(kind, body)``.

        Raises :class:`RejectedMessage` (and changes nothing) when the
        message is text, too short, forged or tampered with, or its counter
        was accepted before (a replay, a duplicate) or lies more than
        :data:`REPLAY_WINDOW` behind the newest accepted one.
        """
        if not isinstance(message, bytes):
            raise RejectedMessage("text message on a binary channel")
        if len(message) < MESSAGE_OVERHEAD:
            raise RejectedMessage(f"message of {len(message)} bytes is too short to be valid")
        cut = len(message) - TAG_BYTES
        expected = hmac.new(self._recv_key, memoryview(message)[:cut], hashlib.sha256).digest()
        if not hmac.compare_digest(expected, message[cut:]):
            raise RejectedMessage("message authentication failed (forged or tampered)")
        (counter,) = _COUNTER.unpack_from(message)
        if counter > self.received:
            shift = counter - self.received
            self._seen = ((self._seen << shift) | 1) & _WINDOW_MASK if shift < REPLAY_WINDOW else 1
            self.received = counter
        else:
            age = self.received - counter
            if counter == 0 or age >= REPLAY_WINDOW or (self._seen >> age) & 1:
                raise RejectedMessage(
                    f"replayed or reordered message (counter {counter}, "
                    f"last accepted {self.received})"
                )
            self._seen |= 1 << age
        return message[COUNTER_BYTES], message[COUNTER_BYTES + 1 : cut]
