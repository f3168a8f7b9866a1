"""Compatibility: this module moved to :mod:`hybridsync.channels.kv`.

The old import path keeps working for one release (it is the same module
object, private names included); import from :mod:`hybridsync.channels.kv` in new code.
"""

from __future__ import annotations

import sys

from hybridsync.channels import kv as _moved
from hybridsync.channels.kv import *  # noqa: F403
from hybridsync.channels.kv import MAX_PAGE_BYTES as MAX_PAGE_BYTES
from hybridsync.channels.kv import Geometry as Geometry
from hybridsync.channels.kv import PageTable as PageTable
from hybridsync.channels.kv import __all__ as __all__
from hybridsync.channels.kv import mlx4_parts as mlx4_parts

sys.modules[__name__] = _moved
