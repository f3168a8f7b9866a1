"""The ``--nats`` options of ``hybridsync serve`` and ``hybridsync join``.

WebSockets stay the default; naming ``--nats URL`` carries the links over a
NATS server (or cluster) instead (``pip install 'hybridsync[nats]'``).
Credentials and TLS follow NATS' own conventions: a ``.creds`` file (user JWT
and NKey seed), a CA to verify the servers, a client certificate for mutual
TLS; ``tls://`` URLs require TLS.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

__all__ = ["NatsOptions", "nats_click_options", "parse_nats_options"]


@dataclasses.dataclass
class NatsOptions:
    servers: list[str]
    swarm: str
    #: serve: the swarm's hubs in failover order; join: the hubs to join, in order.
    hubs: list[str]
    creds: Path | None = None
    tls: ssl.SSLContext | None = None


nats_click_options: list[Callable[[Any], Any]] = [
    click.option(
        "--nats",
        "nats_url",
        metavar="URL",
        default=None,
        help="Synchronise over NATS instead of WebSockets: nats://HOST:4222 (tls://... "
        "for TLS; several servers of a cluster separated by commas).",
    ),
    click.option(
        "--swarm",
        default="default",
        show_default=True,
        help="With --nats: the swarm's subject namespace (subjects hybridsync.SWARM.*).",
    ),
    click.option(
        "--hubs",
        metavar="ID,ID,...",
        default=None,
        help="With --nats: the swarm's hub ids in failover order. A node joins the first "
        "that answers and moves to the next when its hub is gone; a hub links upward to "
        "the first live hub listed before its own id (join default: hub).",
    ),
    click.option(
        "--nats-creds",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="With --nats: a NATS credentials file (.creds: user JWT and NKey seed).",
    ),
    click.option(
        "--nats-tls-ca",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="With --nats: CA certificates (PEM) to verify the NATS servers.",
    ),
    click.option(
        "--nats-tls-cert",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="With --nats: a client certificate chain (PEM) for mutual TLS.",
    ),
    click.option(
        "--nats-tls-key",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="With --nats: the client certificate's private key (PEM).",
    ),
]


def _tls(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if ca is None and cert is None and key is None:
        return None
    if key is not None and cert is None:
        raise click.UsageError("--nats-tls-key needs --nats-tls-cert")
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
        if cert is not None:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise click.UsageError(f"cannot load the NATS TLS files: {exc}") from None
    return context


def parse_nats_options(
    *,
    role: str,
    replica_id: str,
    nats_url: str | None,
    swarm: str,
    hubs: str | None,
    nats_creds: Path | None,
    nats_tls_ca: Path | None,
    nats_tls_cert: Path | None,
    nats_tls_key: Path | None,
) -> NatsOptions | None:
    """The NATS options of a command, or None without ``--nats`` (then none
    of the other NATS options may be given)."""
    if nats_url is None:
        given = [
            name
            for name, value in (
                ("--hubs", hubs),
                ("--nats-creds", nats_creds),
                ("--nats-tls-ca", nats_tls_ca),
                ("--nats-tls-cert", nats_tls_cert),
                ("--nats-tls-key", nats_tls_key),
            )
            if value is not None
        ]
        if swarm != "default":
            given.append("--swarm")
        if given:
            raise click.UsageError(f"{', '.join(given)} only apply with --nats")
        return None
    servers = [u.strip() for u in nats_url.split(",") if u.strip()]
    if not servers:
        raise click.UsageError("--nats needs a URL")
    hub_list = [h.strip() for h in (hubs or "").split(",") if h.strip()]
    if role == "serve":
        if not hub_list:
            hub_list = [replica_id]
        if replica_id not in hub_list:
            raise click.UsageError(f"--hubs must list this hub's own id {replica_id!r}")
    else:
        hub_list = hub_list or ["hub"]
        if replica_id in hub_list:
            raise click.UsageError("--hubs must not list this node's own id")
    if len(set(hub_list)) != len(hub_list):
        raise click.UsageError("--hubs lists a hub twice")
    try:
        from hybridsync.net.nats import subject_prefix
    except ImportError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        subject_prefix(swarm)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    return NatsOptions(
        servers=servers,
        swarm=swarm,
        hubs=hub_list,
        creds=nats_creds,
        tls=_tls(nats_tls_ca, nats_tls_cert, nats_tls_key),
    )
