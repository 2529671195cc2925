"""Bounded reads of files gpuhook is handed (config, inventory, host files): only regular files,
never blocking, at most a limit + 1 bytes so that callers refuse anything over the limit."""

import os


def open_regular(path: str) -> int:
    """A read-only fd of `path` if it is a regular file, else OSError (see read_regular)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except ValueError:
        raise OSError(22, "the path holds a NUL byte or cannot be encoded", path) from None
    if os.fstat(fd).st_mode & 0o170000 != 0o100000:  # S_IFMT, S_IFREG (no `stat` import)
        os.close(fd)
        raise OSError(22, "not a regular file", path)
    return fd


def read_regular(path: str, limit: int) -> bytes:
    """At most limit + 1 bytes of `path` (callers refuse anything over the limit), only if it is
    a regular file: a FIFO would block the open or the read forever, a device could feed bytes
    without end. The open never blocks (O_NONBLOCK), and a path Python cannot pass to the
    kernel (a NUL, a lone surrogate) is an OSError here too, so callers catch one thing."""
    return read_regular_stat(path, limit)[0]


def read_regular_stat(path: str, limit: int) -> "tuple[bytes, os.stat_result]":
    """read_regular, and the fstat of the file it read (its identity: the config cache)."""
    fd = open_regular(path)
    try:
        st = os.fstat(fd)
        chunks = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(limit + 1 - total, 1 << 16))  # procfs: small reads
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)
