"""The compiled config cache: what parse_config_lenient made of a config file, kept as JSON under
/run/gpuhook so that the hook's and the shim's full paths (every GPU container start) read it
with the C JSON scanner instead of importing tomllib (with `re`, `datetime`, `string`: ~4 ms)
and parsing the TOML again.

A cache entry is used only when all of this holds, else the file is parsed as before:
- its name is the config file's (st_dev, st_ino), and it records that identity with st_size,
  st_mtime_ns and st_ctime_ns, the config's absolute path (relative paths in a config are
  relative to it) and the parser's own files (gpuhook/config.py and this module: an upgrade
  parses again); all equal to what they are now;
- it holds the config's whole text, equal to the bytes just read: an edit that keeps the size
  and lands within the same clock tick (same mtime and ctime) is still seen;
- the entry is a regular file (opened with O_NOFOLLOW, O_NONBLOCK: a symlink or a FIFO is never
  followed or waited on) of mode 0600 owned by root (or by the user running gpuhook), in a
  directory owned by the same and not writable by group or others, at most MAX_CACHE_BYTES.
The cache maps (path, text, parser) to a result that depends on nothing else, so a hit gives
exactly what parsing gives. Writing is best effort and atomic (a temp file renamed over the
entry): a full path that cannot write (not root, read-only /run) just parses every time. Past
MAX_ENTRIES entries, a write removes the oldest.

No `typing`, no `json`: the C accelerator alone (gpuhook/fastjson.py) reads and writes entries.
"""

import os

CACHE_DIR = "/run/gpuhook"
FORMAT = "gpuhook-config-cache/1"
MAX_CACHE_BYTES = 8 << 20  # the text of a config (<= 1 MiB), JSON-escaped, and its result
MAX_ENTRIES = 32  # a node has one or two configs; a test run makes hundreds: the oldest go
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def entry_name(st: os.stat_result) -> str:
    return f"config-{st.st_dev}-{st.st_ino}.json"


def _parser_identity() -> "list[list[int]]":
    from gpuhook import config

    out = []
    for path in (config.__file__, __file__):
        s = os.stat(path)
        out.append([s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns])
    return out


def _key(origin: str, st: os.stat_result) -> "dict[str, object]":
    return {"format": FORMAT, "path": os.path.abspath(origin),
            "file": [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns],
            "parser": _parser_identity()}


def _trusted(st: os.stat_result, directory: bool) -> bool:
    if st.st_uid not in (0, os.geteuid()):
        return False
    if directory:
        return st.st_mode & 0o170000 == 0o040000 and not st.st_mode & 0o022
    return st.st_mode & 0o170000 == 0o100000 and not st.st_mode & 0o077


def lookup(origin: str, data: bytes, st: os.stat_result, cache_dir: "str | None" = None,
           ) -> "tuple[dict[str, object], list[str]] | None":
    """(the Config's fields as JSON values, the problems) cached for the config file `origin`
    whose bytes are `data` and whose fstat is `st`; None when there is no entry to trust."""
    try:
        dfd = os.open(cache_dir or CACHE_DIR, _DIR_FLAGS)
    except (OSError, ValueError):
        return None
    try:
        if not _trusted(os.fstat(dfd), directory=True):
            return None
        fd = os.open(entry_name(st), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dfd)
        try:
            fst = os.fstat(fd)
            if not _trusted(fst, directory=False) or fst.st_size > MAX_CACHE_BYTES:
                return None
            raw = os.read(fd, fst.st_size + 1)
        finally:
            os.close(fd)
    except OSError:
        return None
    finally:
        os.close(dfd)
    if len(raw) != fst.st_size:
        return None
    from gpuhook.runtime.fastpath import loads

    try:
        doc = loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("key") != _key(origin, st) \
            or doc.get("text") != data.decode("latin-1"):
        return None
    values, problems = doc.get("config"), doc.get("problems")
    if not isinstance(values, dict) or not isinstance(problems, list) \
            or not all(isinstance(p, str) for p in problems):
        return None
    return values, problems


def store(origin: str, data: bytes, st: os.stat_result, values: "dict[str, object]",
          problems: "list[str]", cache_dir: "str | None" = None) -> bool:
    """Write the entry for `origin` (see lookup); False when it could not be written."""
    from gpuhook import fastjson

    doc = {"key": _key(origin, st), "text": data.decode("latin-1"),
           "config": {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()},
           "problems": problems}
    raw = fastjson.dumps(doc, separators=(",", ":")).encode()
    if len(raw) > MAX_CACHE_BYTES:
        return False
    cache_dir = cache_dir or CACHE_DIR
    try:
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        dfd = os.open(cache_dir, _DIR_FLAGS)
    except (OSError, ValueError):
        return False
    name = entry_name(st)
    tmp = f".{name}.{os.getpid()}.tmp"
    try:
        if not _trusted(os.fstat(dfd), directory=True):
            return False
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dfd)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        _prune(dfd, name)
        return True
    except OSError:
        try:  # noqa: SIM105 (no contextlib on this path)
            os.unlink(tmp, dir_fd=dfd)
        except OSError:
            pass
        return False
    finally:
        os.close(dfd)


def _prune(dfd: int, keep: str) -> None:
    """Remove the oldest entries beyond MAX_ENTRIES (a reader that loses one parses)."""
    names = [n for n in os.listdir(dfd) if n.startswith("config-") and n.endswith(".json")
             and n != keep]
    if len(names) < MAX_ENTRIES:
        return
    aged = []
    for n in names:
        try:
            aged.append((os.stat(n, dir_fd=dfd, follow_symlinks=False).st_mtime_ns, n))
        except OSError:
            continue
    for _, n in sorted(aged)[:len(aged) - MAX_ENTRIES + 1]:
        try:  # noqa: SIM105 (no contextlib on this path)
            os.unlink(n, dir_fd=dfd)
        except OSError:
            pass
