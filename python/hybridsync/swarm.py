"""Compatibility: this module moved to :mod:`hybridsync.demo.swarm`.

The old import path keeps working for one release (it is the same module
object, private names included); import from :mod:`hybridsync.demo.swarm` in new code.
"""

from __future__ import annotations

import sys

from hybridsync.demo import swarm as _moved
from hybridsync.demo.swarm import *  # noqa: F403
from hybridsync.demo.swarm import __all__ as __all__

sys.modules[__name__] = _moved
