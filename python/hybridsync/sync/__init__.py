"""The sync protocol (sans-IO), above the data channels.

- :mod:`~hybridsync.sync.link` -- :class:`~hybridsync.sync.link.Link`, one side
  of a differential-synchronization link: text shadows and edit stacks, the
  metadata block and its epochs.
- :mod:`~hybridsync.sync.frame` -- the wire format of a frame.
- :mod:`~hybridsync.sync.kv` -- the KV channel's wire part: page-table shadows
  and page diffs.

A link drives its replica through the channels' public interface and hears
of local changes on the replica's change bus
(:class:`~hybridsync.channels.events.ChangeBus`).
"""

from __future__ import annotations

from hybridsync.sync.link import Link, LinkMetrics

__all__ = ["Link", "LinkMetrics"]
