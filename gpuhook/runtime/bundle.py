"""Reading a bundle's files: bounded, so a parser can refuse anything over its limit."""

from gpuhook.errors import InputError
from gpuhook.files import read_regular
from gpuhook.text import escape


def read_limited(path: str, limit: int, what: str) -> bytes:
    """At most limit + 1 bytes of `path` (a regular file): the parsers refuse anything over the
    limit."""
    try:
        return read_regular(path, limit)
    except OSError as e:
        raise InputError(f"{what} {escape(path, 512)}: {e.strerror}") from None
