"""Secrets: reading the swarm's shared secret, and ``hybridsync keygen``."""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

import click

from hybridsync.errors import InvalidArgumentError

log = logging.getLogger("hybridsync.cli")

MIN_SECRET_BYTES = 16


# -- secrets -------------------------------------------------------------------


#: A secret file longer than this is not a secret (keygen writes 44 bytes).
MAX_SECRET_FILE_BYTES = 4096


class SecretError(click.UsageError, InvalidArgumentError):
    """No usable secret: a missing, unreadable, too short or too long secret
    file or variable. A command-line usage error (exit status 2) and a
    :class:`~hybridsync.errors.InvalidArgumentError`; its message never
    contains the secret."""


def _read_secret_file(secret_file: Path) -> bytes:
    """At most :data:`MAX_SECRET_FILE_BYTES` (+1) bytes of ``secret_file``
    (a pipe such as ``<(pass show swarm)`` works too)."""
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
    """The swarm's shared secret from a file or an environment variable.

    Raises :class:`SecretError` (a :class:`click.UsageError` and an
    :class:`~hybridsync.errors.InvalidArgumentError`) with a message that
    never contains it; reads at most :data:`MAX_SECRET_FILE_BYTES` of a file.
    """
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


_secret_options = [
    click.option(
        "--secret-env",
        default="HYBRIDSYNC_SECRET",
        show_default=True,
        metavar="VAR",
        help="Environment variable holding the swarm's shared secret.",
    ),
    click.option(
        "--secret-file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Read the secret from this file instead (keep it chmod 600).",
    ),
]


@click.command()
@click.option(
    "--out",
    "out_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the secret to this new file (mode 600) instead of printing it.",
)
def keygen(out_file: Path | None) -> None:
    """Make a new random swarm secret (32 random bytes, URL-safe base64).

    Use it as: export HYBRIDSYNC_SECRET="$(hybridsync keygen)"
    """
    value = secrets.token_urlsafe(32)
    if out_file is None:
        click.echo(value)
        return
    try:
        fd = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise click.ClickException(f"{out_file} exists; not overwriting a secret") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    click.echo(f"new secret written to {out_file}")
