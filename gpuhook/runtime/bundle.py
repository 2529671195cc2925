"""Reading a bundle's files: bounded, so a parser can refuse anything over its limit."""

from gpuhook.errors import InputError


def read_limited(path: str, limit: int, what: str) -> bytes:
    """At most limit + 1 bytes of `path`: the parsers refuse anything over the limit."""
    try:
        with open(path, "rb") as f:
            return f.read(limit + 1)
    except OSError as e:
        raise InputError(f"{what} {path}: {e.strerror}") from None
