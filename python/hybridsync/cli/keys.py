"""Secrets: reading the swarm's shared secret, and ``hybridsync keygen``."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

import click

from hybridsync.net import secrets as secrets_
from hybridsync.net.secrets import MAX_SECRET_FILE_BYTES, MIN_SECRET_BYTES

__all__ = [
    "MAX_SECRET_FILE_BYTES",
    "MIN_SECRET_BYTES",
    "SecretError",
    "keygen",
    "load_secret",
]

log = logging.getLogger("hybridsync.cli")


class SecretError(click.UsageError, secrets_.SecretError):
    """No usable secret (see :func:`hybridsync.net.secrets.load_secret`): a
    command-line usage error (exit status 2) and a
    :class:`~hybridsync.errors.InvalidArgumentError`; its message never
    contains the secret."""


def load_secret(secret_env: str, secret_file: Path | None) -> bytes:
    """The swarm's shared secret from a file or an environment variable
    (:func:`hybridsync.net.secrets.load_secret`, as a usage error)."""
    try:
        return secrets_.load_secret(secret_env, secret_file)
    except secrets_.SecretError as exc:
        raise SecretError(str(exc)) from None


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
