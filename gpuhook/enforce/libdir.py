"""Where injected driver libraries go in a container rootfs, decided from the rootfs itself
without following any link in it.

- Debian-like (`usr/lib/x86_64-linux-gnu` is a real directory, or `etc/debian_version` is a
  regular file): `/usr/lib/x86_64-linux-gnu`, 32-bit `/usr/lib/i386-linux-gnu` (Debian's
  multiarch dirs, which its ld.so.conf.d lists);
- otherwise: `/usr/lib64`, 32-bit `/usr/lib` (the Red Hat / SUSE layout, built into their
  glibc's default search path);
- musl (a `lib/ld-musl-<arch>.so.1` loader): `/usr/lib`, in musl's default search path, and the
  path file `/etc/ld-musl-<arch>.path` (musl has no ld cache: that file, when it exists,
  replaces the default path, so the injector keeps `/usr/lib` in it instead of running ldconfig).

A chosen directory is walked component by component with O_NOFOLLOW: any component that exists
and is not a real directory (a symlink included, wherever it points) refuses the choice with an
ApplyError that names it. Components that do not exist yet are fine (the injector creates them).
"""

from __future__ import annotations

import errno
import os
import stat

from gpuhook.errors import ApplyError
from gpuhook.record import TYPE_CHECKING, dataclass

if TYPE_CHECKING:  # annotations only: the createContainer hook does not import the decide stages
    from collections.abc import Callable

    from gpuhook.decide.plan import DriverFile

DEBIAN_LIB64 = "/usr/lib/x86_64-linux-gnu"
DEBIAN_LIB32 = "/usr/lib/i386-linux-gnu"
OTHER_LIB64 = "/usr/lib64"
OTHER_LIB32 = "/usr/lib"
MUSL_LIB = "/usr/lib"
MUSL_LOADER_DIRS = ("lib", "usr/lib")
MAX_LIB_ENTRIES = 100_000  # a directory listing bound while looking for the musl loader
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class LibDir:
    lib64: str  # absolute container path for kind "library"
    lib32: str  # for kind "library32"
    musl_path_file: str | None = None  # "/etc/ld-musl-x86_64.path" on musl; None on glibc

    def for_kind(self, kind: str) -> str:
        return self.lib32 if kind == "library32" else self.lib64


def library_dir(rootfs_fd: int) -> LibDir:
    """The library dirs for the rootfs open at `rootfs_fd` (a directory fd). ApplyError when a
    chosen dir crosses something that is not a real directory."""
    musl = _musl_arch(rootfs_fd)
    if musl is not None:
        choice = LibDir(MUSL_LIB, MUSL_LIB, f"/etc/ld-musl-{musl}.path")
    elif (_state(rootfs_fd, DEBIAN_LIB64) == "dir"
          or _state(rootfs_fd, "/etc/debian_version") == "file"):
        choice = LibDir(DEBIAN_LIB64, DEBIAN_LIB32)
    else:
        choice = LibDir(OTHER_LIB64, OTHER_LIB32)
    for path in dict.fromkeys((choice.lib64, choice.lib32)):
        _check_walkable(rootfs_fd, path)
    return choice


def _musl_arch(rootfs_fd: int) -> str | None:
    for rel in MUSL_LOADER_DIRS:
        fd = _open_dir(rootfs_fd, rel)
        if fd is None:
            continue
        try:
            with os.scandir(fd) as it:
                for n, entry in enumerate(it):
                    if n >= MAX_LIB_ENTRIES:
                        break
                    name = entry.name
                    if name.startswith("ld-musl-") and name.endswith(".so.1"):
                        arch = name[len("ld-musl-"):-len(".so.1")]
                        if arch and all(c.isalnum() or c in "_-" for c in arch):
                            return arch
        finally:
            os.close(fd)
    return None


def _open_dir(rootfs_fd: int, rel: str) -> int | None:
    """A real directory `rel` under the rootfs, opened without following links; None otherwise."""
    fd = os.dup(rootfs_fd)
    try:
        for part in [p for p in rel.split("/") if p]:
            try:
                nfd = os.open(part, _DIR, dir_fd=fd)
            except OSError:
                return None
            os.close(fd)
            fd = nfd
        out, fd = fd, -1
        return out
    finally:
        if fd >= 0:
            os.close(fd)


def _state(rootfs_fd: int, path: str) -> str:
    """"dir", "file", "missing" or "other" for `path`, with no link followed anywhere."""
    parts = [p for p in path.split("/") if p]
    parent = _open_dir(rootfs_fd, "/".join(parts[:-1]))
    if parent is None:
        return "missing"
    try:
        st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
    except OSError:
        return "missing"
    finally:
        os.close(parent)
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    return "file" if stat.S_ISREG(st.st_mode) else "other"


def _describe(dir_fd: int, name: str, error: OSError) -> str:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return error.strerror or "unusable"
    if stat.S_ISLNK(st.st_mode):
        return "a symlink"
    return "not a directory" if error.errno in (errno.ENOTDIR, errno.ELOOP) else (
        error.strerror or "unusable")


def _check_walkable(rootfs_fd: int, path: str) -> None:
    fd = os.dup(rootfs_fd)
    walked = ""
    try:
        for part in [p for p in path.split("/") if p]:
            walked += "/" + part
            try:
                nfd = os.open(part, _DIR, dir_fd=fd)
            except FileNotFoundError:
                return  # the rest is created by the injector
            except OSError as e:
                what = _describe(fd, part, e)
                raise ApplyError(f"container rootfs: {walked} is {what}; gpuhook puts driver "
                                 f"libraries in {path} and never follows links in a container"
                                 ) from None
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)


def fixed_library_dir(lib64: str, lib32: str) -> Callable[[int], LibDir]:
    """A chooser that always answers the given dirs (a CDI spec fixed them when it was
    generated, before any rootfs existed), still refusing a rootfs in which they cross anything
    but real directories."""
    for path in (lib64, lib32):
        parts = path.split("/")
        if not path.startswith("/") or any(p in ("", ".", "..") for p in parts[1:]):
            raise ApplyError(f"library dir {path[:200]!r} is not a plain absolute path")

    def choose(rootfs_fd: int) -> LibDir:
        for path in dict.fromkeys((lib64, lib32)):
            _check_walkable(rootfs_fd, path)
        return LibDir(lib64, lib32)

    return choose


def destination(file: DriverFile, libdir: LibDir) -> str:
    """The container path a DriverFile is mounted at: a library in its kind's library dir,
    anything else at its own container path."""
    if file.kind in ("library", "library32"):
        return f"{libdir.for_kind(file.kind)}/{file.container_path}"
    return file.container_path
