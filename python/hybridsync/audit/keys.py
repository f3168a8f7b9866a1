"""Ed25519 signing keys of the audit log (``cryptography`` does the signing).

A key is read like the swarm's secret (:mod:`hybridsync.net.secrets`): from a
file (at most 4 KiB, ``hybridsync keygen --signing --out FILE`` writes one)
or from an environment variable, never from the command line. Either holds
a PKCS#8 PEM private key or the 32-byte Ed25519 seed in base64 (the form
``hybridsync keygen --signing`` prints). Errors never contain the key.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from hybridsync.errors import InvalidArgumentError

__all__ = [
    "KEY_ENV",
    "MAX_KEY_FILE_BYTES",
    "SigningKey",
    "SigningKeyError",
    "load_signing_key",
    "new_signing_key",
    "public_key_bytes",
    "verify_signature",
]

#: The environment variable a signing key is read from by default.
KEY_ENV = "HYBRIDSYNC_AUDIT_KEY"

SigningKey = Ed25519PrivateKey

#: A key file longer than this is not a key file.
MAX_KEY_FILE_BYTES = 4096

log = logging.getLogger("hybridsync.audit")


class SigningKeyError(InvalidArgumentError):
    """No usable signing key: a missing, unreadable or malformed key file or
    variable. Its message never contains the key."""


def new_signing_key() -> Ed25519PrivateKey:
    """A fresh random Ed25519 key."""
    return Ed25519PrivateKey.generate()


def key_to_text(key: Ed25519PrivateKey) -> str:
    """The key's 32-byte seed, URL-safe base64 (what the variable holds)."""
    return base64.urlsafe_b64encode(key.private_bytes_raw()).decode()


def key_to_pem(key: Ed25519PrivateKey) -> bytes:
    """The key as an unencrypted PKCS#8 PEM (what a key file holds)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def parse_signing_key(data: bytes, where: str) -> Ed25519PrivateKey:
    """A key from PEM or base64-seed bytes; :class:`SigningKeyError` otherwise."""
    data = data.strip()
    if data.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise SigningKeyError(f"{where} is not an unencrypted PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError(f"{where} holds a {type(key).__name__}, not an Ed25519 key")
        return key
    try:
        seed = base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))
    except (binascii.Error, ValueError):
        raise SigningKeyError(f"{where} is neither a PEM key nor a base64 Ed25519 seed") from None
    if len(seed) != 32:
        raise SigningKeyError(f"{where} does not hold a 32-byte Ed25519 seed")
    return Ed25519PrivateKey.from_private_bytes(seed)


def load_signing_key(
    key_env: str = KEY_ENV, key_file: str | os.PathLike[str] | None = None
) -> Ed25519PrivateKey:
    """The signing key from ``key_file`` if given, else from the environment
    variable ``key_env``. Raises :class:`SigningKeyError`."""
    if key_file is not None:
        path = Path(os.fspath(key_file))
        where = f"the key file {path}"
        try:
            with open(path, "rb") as fh:
                info = os.fstat(fh.fileno())
                if stat.S_ISDIR(info.st_mode):
                    raise SigningKeyError(f"{where} is a directory")
                data = fh.read(MAX_KEY_FILE_BYTES + 1)
        except OSError as exc:
            raise SigningKeyError(f"cannot read {where}: {exc.strerror or exc}") from None
        if len(data) > MAX_KEY_FILE_BYTES:
            raise SigningKeyError(f"{where} is longer than {MAX_KEY_FILE_BYTES} bytes")
        if stat.S_ISREG(info.st_mode) and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("the key file %s is readable by other users (chmod 600 it)", path)
    else:
        where = f"${key_env}"
        data = os.environ.get(key_env, "").encode()
        if not data.strip():
            raise SigningKeyError(
                f"no signing key: set {key_env} or give a key file "
                "(`hybridsync keygen --signing` makes one)"
            )
    return parse_signing_key(data, where)


def public_key_bytes(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key."""
    return key.public_key().public_bytes_raw()


def verify_signature(public: bytes, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is ``public``'s Ed25519 signature of ``message``."""
    if len(public) != 32 or len(signature) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
