"""Compatibility: this module moved to :mod:`hybridsync.sync.frame`.

The old import path keeps working for one release (it is the same module
object, private names included); import from :mod:`hybridsync.sync.frame` in new code.
"""

from __future__ import annotations

import sys

from hybridsync.sync import frame as _moved
from hybridsync.sync.frame import *  # noqa: F403
from hybridsync.sync.frame import __all__ as __all__

sys.modules[__name__] = _moved
