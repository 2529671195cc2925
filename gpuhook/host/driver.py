"""The driver's user-space files under `host-root`: libraries from the host's ld.so.cache,
binaries, GSP firmware, vendor config files and IPC sockets. Read here, chosen per capability in
decide/driver.py.

What is looked for is libnvidia-container's list (src/nvc_info.c, the `*_libs` / `*_bins`
arrays and `lookup_ipcs`/`lookup_firmwares`) plus the toolkit's graphics config files
(internal/discover/graphics.go): see gpuhook/decide/driver.py for the names and versions.

Every path is resolved under `host-root` the way `ldconfig -r` and libnvidia-container's
`path_resolve` do: component by component, a link's absolute target taken relative to
host-root and `..` stopped at it, at most MAX_LINKS links. So nothing outside host-root is ever
opened, whatever the links in it say.
"""

from __future__ import annotations

import os
import stat

from gpuhook.decide.driver import (
    ALL_BINARIES,
    ALL_LIBRARY_STEMS,
    CONFIG_FILES,
    FIRMWARE_DIR,
    SOCKETS,
)
from gpuhook.decide.facts import DriverFacts, DriverLibrary
from gpuhook.decide.plan import DriverFile
from gpuhook.errors import HostError
from gpuhook.host.ldcache import LdCacheEntry, parse_ld_cache
from gpuhook.host.proc import HostPaths
from gpuhook.limits import MAX_LD_CACHE_BYTES

LD_CACHE = "etc/ld.so.cache"
BIN_DIRS = ("usr/bin", "usr/sbin", "bin", "sbin")
CONFIG_ROOTS = ("etc", "usr/local/share", "usr/share")  # the toolkit's: /etc + XDG_DATA_DIRS
MAX_LINKS = 40  # the kernel's limit for one path walk
MAX_FIRMWARE = 256
ARCH_64 = "x86-64"
ARCH_32 = "i386"


class Unresolvable(Exception):
    """A path that does not lead to something under host-root (missing, loop, not a dir)."""


def resolve_in_root(root: str, path: str) -> str:
    """`path` (absolute or relative, as seen from host-root) with every link followed inside
    `root`; the result is absolute, relative to `root`. Unresolvable when a component is missing,
    a non-directory is walked through, or there are more than MAX_LINKS links."""
    todo = [p for p in path.split("/") if p][::-1]  # a stack: next component last
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop()
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        full = _join(root, [*done, part])
        try:
            st = os.lstat(full)
        except OSError as e:
            raise Unresolvable(f"{full}: {e.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                raise Unresolvable(f"{full}: more than {MAX_LINKS} links")
            target = os.readlink(full)
            if target.startswith("/"):
                done = []
            todo.extend([p for p in target.split("/") if p][::-1])
            continue
        if todo and not stat.S_ISDIR(st.st_mode):
            raise Unresolvable(f"{full}: not a directory")
        done.append(part)
    return "/" + "/".join(done)


def _join(root: str, parts: list[str]) -> str:
    return root.rstrip("/") + "/" + "/".join(parts)


def read_ld_cache(host: HostPaths) -> tuple[list[LdCacheEntry], str]:
    """(entries, the cache's real path) of <host-root>/etc/ld.so.cache; HostError when it is
    missing, too large or malformed."""
    try:
        real = host.path(resolve_in_root(host.root, LD_CACHE))
    except Unresolvable as e:
        raise HostError(f"cannot read the host's library cache: {e}") from None
    try:
        with open(real, "rb", buffering=0) as f:
            data = f.read(MAX_LD_CACHE_BYTES + 1)
    except OSError as e:
        raise HostError(f"cannot read {real}: {e.strerror}") from None
    return parse_ld_cache(data, real), real


def discover_driver(host: HostPaths, version: str) -> DriverFacts:
    """Everything of driver `version` that any capability could ask for; sockets excluded
    (they come and go with their daemons: `discover_sockets` reads them at each start)."""
    notes: list[str] = []
    try:
        entries, cache = read_ld_cache(host)
    except HostError as e:
        entries, cache = [], host.path(LD_CACHE)
        notes.append(str(e))
    return DriverFacts(
        version=version,
        ld_cache=cache,
        libraries=tuple(_libraries(host, entries, version)),
        files=tuple(_binaries(host) + _firmware(host, version) + _configs(host)),
        notes=tuple(notes),
    )


def _libraries(host: HostPaths, entries: list[LdCacheEntry], version: str) -> list[DriverLibrary]:
    suffix = ".so." + version
    found: dict[tuple[str, str], DriverLibrary] = {}
    for entry in entries:
        if not entry.elf or entry.arch not in (ARCH_64, ARCH_32):
            continue
        stem = next((s for s in ALL_LIBRARY_STEMS if entry.key.startswith(s)), None)
        if stem is None:
            continue
        try:
            rel = resolve_in_root(host.root, entry.path)
        except Unresolvable:
            continue  # a stale cache entry; the capability's note names what is missing
        real = host.path(rel)
        if not rel.endswith(suffix) or not _is_regular(real):
            continue
        # One file per name and arch, the first the cache lists (the cache's order is the
        # loader's preference): a second copy elsewhere would land on the same container path.
        key = (entry.arch, rel.rsplit("/", 1)[-1])
        have = found.get(key)
        if have is not None and have.host_path != real:
            continue
        links = (have.links if have else ()) + (entry.key,)
        found[key] = DriverLibrary(host_path=real, arch=entry.arch, stem=stem,
                                   links=tuple(dict.fromkeys(links)))
    return list(found.values())


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _first(host: HostPaths, candidates: list[str], want: int) -> str | None:
    for rel in candidates:
        try:
            real = host.path(resolve_in_root(host.root, rel))
            if stat.S_IFMT(os.lstat(real).st_mode) == want:
                return real
        except (Unresolvable, OSError):
            continue
    return None


def _binaries(host: HostPaths) -> list[DriverFile]:
    files = []
    for name in ALL_BINARIES:
        real = _first(host, [f"{d}/{name}" for d in BIN_DIRS], stat.S_IFREG)
        if real is not None:
            files.append(DriverFile("binary", real, f"/usr/bin/{name}"))
    return files


def _firmware(host: HostPaths, version: str) -> list[DriverFile]:
    rel_dir = FIRMWARE_DIR.format(version=version)
    try:
        real_dir = host.path(resolve_in_root(host.root, rel_dir))
        names = sorted(n for n in os.listdir(real_dir)
                       if n.startswith("gsp") and n.endswith(".bin"))
    except (Unresolvable, OSError):
        return []
    if len(names) > MAX_FIRMWARE:
        raise HostError(f"{real_dir}: more than {MAX_FIRMWARE} gsp*.bin files")
    files = []
    for name in names:
        real = _first(host, [f"{rel_dir}/{name}"], stat.S_IFREG)
        if real is not None:
            files.append(DriverFile("firmware", real, f"/{rel_dir}/{name}"))
    return files


def _configs(host: HostPaths) -> list[DriverFile]:
    files = []
    for rel, container_dir in CONFIG_FILES:
        real = _first(host, [f"{r}/{rel}" for r in CONFIG_ROOTS], stat.S_IFREG)
        if real is not None:
            files.append(DriverFile("config", real, f"{container_dir}/{rel}"))
    return files


def discover_sockets(host: HostPaths) -> tuple[DriverFile, ...]:
    """The IPC endpoints present now: persistenced and fabricmanager sockets, the MPS pipe dir."""
    files = []
    for rel, is_dir in SOCKETS:
        real = _first(host, [rel], stat.S_IFDIR if is_dir else stat.S_IFSOCK)
        if real is not None:
            files.append(DriverFile("socket", real, "/" + rel))
    return tuple(files)
