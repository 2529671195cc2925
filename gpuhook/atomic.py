"""Replace a file so that a reader sees the old bytes or the new, never a mix, and a crash keeps
one of them: the runtime shim's config.json edits and `gpuhook install`'s config edits."""

import os


def write_atomic(path: str, data: bytes, mode_from: str | None = None) -> None:
    """Write `data` to a temp file in `path`'s directory with the mode (and, as root, owner) of
    `mode_from` (default: `path` itself; 0644 when it does not exist), fsync it, rename it over
    `path`, and fsync the directory."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    try:
        st: os.stat_result | None = os.stat(mode_from or path)
    except FileNotFoundError:
        st = None
    fd, tmp = _create_temp(directory, "." + os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), (st.st_mode & 0o7777) if st else 0o644)
            if st is not None and os.geteuid() == 0:
                os.fchown(f.fileno(), st.st_uid, st.st_gid)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def _create_temp(directory: str, prefix: str) -> tuple[int, str]:
    """tempfile.mkstemp(prefix=prefix, dir=directory): a new file, mode 0600, never an existing
    entry or a link. `tempfile` itself costs ~10 ms to import (shutil, random, re, bz2, lzma),
    more than the rest of the shim's spec edit."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        name = os.path.join(directory, prefix + os.urandom(6).hex())
        try:
            return os.open(name, flags, 0o600), name
        except FileExistsError:
            continue
    raise FileExistsError(f"no unused temporary name in {directory}")


def fsync_dir(directory: str) -> None:
    """Make a rename or unlink in `directory` itself durable."""
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
