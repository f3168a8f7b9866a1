"""Checks shared by the data channels."""

from __future__ import annotations

from hybridsync.errors import InvalidArgumentError

__all__ = ["check_encodable"]


def check_encodable(s: str, what: str) -> None:
    """Refuse lone surrogates: they cannot cross the wire as UTF-8."""
    if not s.isascii():
        try:
            s.encode()
        except UnicodeEncodeError as exc:
            raise InvalidArgumentError(
                f"{what} contains a lone surrogate at index {exc.start}"
            ) from None
