"""Provenance: a verifiable, signed audit trail of every change a replica applies.

- :class:`AuditLog` (``memory.audit``): one hash-chained entry per applied
  change (text, metadata, KV; local or from a peer), in its own SQLite file
  next to a durable replica's store (``<path>.audit``), on by default for
  durable replicas (``Memory(..., audit=False)`` turns it off).
- Signed heads (Ed25519, :mod:`hybridsync.audit.keys`), published to the
  other replicas through the replicated metadata; the heads they receive are
  kept and checked.
- :func:`verify_log` (``hybridsync audit``): chain, signatures, checkpoint,
  and cross-checks against other replicas' logs (equivocation);
  :func:`attribute` answers who wrote a document, key or cache.
"""

from hybridsync.audit.keys import (
    KEY_ENV,
    SigningKeyError,
    load_signing_key,
    new_signing_key,
    public_key_bytes,
)
from hybridsync.audit.log import (
    META_PREFIX,
    AuditEntry,
    AuditError,
    AuditLog,
    AuditPolicy,
    Claim,
    SignedHead,
    audit_path,
)
from hybridsync.audit.verify import (
    Attribution,
    AuditReport,
    Problem,
    attribute,
    find_equivocations,
    verify_log,
)

__all__ = [
    "KEY_ENV",
    "META_PREFIX",
    "Attribution",
    "AuditEntry",
    "AuditError",
    "AuditLog",
    "AuditPolicy",
    "AuditReport",
    "Claim",
    "Problem",
    "SignedHead",
    "SigningKeyError",
    "attribute",
    "audit_path",
    "find_equivocations",
    "load_signing_key",
    "new_signing_key",
    "public_key_bytes",
    "verify_log",
]
