"""The swarm's shared secret: read from an environment variable or a file,
never from a command line (arguments are visible to every user in ``ps``).

The secret is the UTF-8 bytes of that value (surrounding whitespace removed),
at least :data:`MIN_SECRET_BYTES` bytes; a file is read up to
:data:`MAX_SECRET_FILE_BYTES` (a pipe such as ``<(pass show swarm)`` works
too). Errors never contain the secret.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from hybridsync.errors import InvalidArgumentError

__all__ = ["MAX_SECRET_FILE_BYTES", "MIN_SECRET_BYTES", "SecretError", "load_secret"]

log = logging.getLogger("hybridsync.net")

#: The shortest secret accepted.
MIN_SECRET_BYTES = 16
#: A secret file longer than this is not a secret (keygen writes 44 bytes).
MAX_SECRET_FILE_BYTES = 4096


class SecretError(InvalidArgumentError):
    """No usable secret: a missing, unreadable, too short or too long secret
    file or variable. Its message never contains the secret."""


def _read_secret_file(secret_file: Path) -> bytes:
    try:
        with open(secret_file, "rb") as fh:
            info = os.fstat(fh.fileno())
            if stat.S_ISDIR(info.st_mode):
                raise SecretError(f"the secret file {secret_file} is a directory")
            data = fh.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise SecretError(
            f"cannot read the secret file {secret_file}: {exc.strerror or exc}"
        ) from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise SecretError(
            f"the secret file {secret_file} is longer than {MAX_SECRET_FILE_BYTES} bytes: "
            "not a secret file (`hybridsync keygen --out FILE` makes one)"
        )
    if stat.S_ISREG(info.st_mode) and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("the secret file %s is readable by other users (chmod 600 it)", secret_file)
    return data.strip()


def load_secret(secret_env: str, secret_file: Path | None) -> bytes:
    """The secret from ``secret_file`` if given, else from the environment
    variable ``secret_env``. Raises :class:`SecretError`."""
    if secret_file is not None:
        data = _read_secret_file(Path(secret_file))
        where = f"the secret file {secret_file}"
    else:
        value = os.environ.get(secret_env, "")
        if not value.strip():
            raise SecretError(
                f"no secret: set the environment variable {secret_env} or use --secret-file "
                "(a secret is never taken from the command line; `hybridsync keygen` makes one)"
            )
        data = value.strip().encode()
        where = f"${secret_env}"
    if len(data) < MIN_SECRET_BYTES:
        raise SecretError(
            f"the secret in {where} is too short: at least {MIN_SECRET_BYTES} bytes "
            "(`hybridsync keygen` makes one)"
        )
    return data
