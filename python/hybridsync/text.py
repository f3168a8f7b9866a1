"""Compatibility: this module moved to :mod:`hybridsync.channels.text`.

The old import path keeps working for one release (it is the same module
object, private names included); import from :mod:`hybridsync.channels.text` in new code.
"""

from __future__ import annotations

import sys

from hybridsync.channels import text as _moved
from hybridsync.channels.text import *  # noqa: F403
from hybridsync.channels.text import __all__ as __all__

sys.modules[__name__] = _moved
