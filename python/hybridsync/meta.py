"""Compatibility: this module moved to :mod:`hybridsync.channels.meta`.

The old import path keeps working for one release (it is the same module
object, private names included); import from :mod:`hybridsync.channels.meta` in new code.
"""

from __future__ import annotations

import sys

from hybridsync.channels import meta as _moved
from hybridsync.channels.meta import *  # noqa: F403
from hybridsync.channels.meta import __all__ as __all__
from hybridsync.channels.meta import canonical_json as canonical_json
from hybridsync.channels.meta import decode_state_vector as decode_state_vector
from hybridsync.channels.meta import merge_state_vectors as merge_state_vectors

sys.modules[__name__] = _moved
