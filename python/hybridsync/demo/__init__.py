"""The demos, a tool on top of the library (which never imports them).

- ``python -m hybridsync.demo`` (:mod:`hybridsync.demo.__main__`) -- the
  in-process demo: a real editing trace as patches, merges, a simulated
  lossy swarm.
- :mod:`hybridsync.demo.swarm` -- the live multi-process demo behind
  ``hybridsync demo``: a hub and agent processes behind lossy relays.
"""

from __future__ import annotations

__all__: list[str] = []
