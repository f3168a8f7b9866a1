"""``python -m hybridsync.cli``."""

from __future__ import annotations

from hybridsync.cli import main

if __name__ == "__main__":
    main()
