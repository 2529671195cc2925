"""Create the Plan's device nodes under a container rootfs without following any symlink.

Every path is walked from a directory fd of the rootfs, one component at a time, with
`openat(O_DIRECTORY | O_NOFOLLOW)`, `mkdirat`, `mknodat`, `fstatat(AT_SYMLINK_NOFOLLOW)` and
`unlinkat`: a symlink anywhere under the rootfs (`dev -> /etc`, `dev/nvidia-caps -> /`) makes
the walk fail, so nothing is ever written outside the rootfs (CVE-2024-0132/0134 class). The
rootfs path itself comes from the bundle, which the runtime controls.

These functions do plain file-system work; `gpuhook.enforce` runs them inside the container's
mount namespace (where runc's /dev tmpfs is mounted on `<rootfs>/dev`).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gpuhook.errors import ApplyError

if TYPE_CHECKING:  # annotations only (the createContainer hook skips the decide stages)
    from gpuhook.decide.plan import DeviceNode

DIR_MODE = 0o755
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class NodeReport:
    """What a create pass did, in order: enough to undo it."""

    created: list[str] = field(default_factory=list)  # nodes made by us (new or replacing)
    kept: list[str] = field(default_factory=list)  # already the right device: untouched
    replaced: list[str] = field(default_factory=list)  # subset of created: something was there
    dirs: list[str] = field(default_factory=list)  # directories made by us, parents first

    def as_json(self) -> dict[str, list[str]]:
        return {"created": self.created, "kept": self.kept, "replaced": self.replaced,
                "dirs": self.dirs}

    @classmethod
    def from_json(cls, data: dict[str, list[str]]) -> NodeReport:
        return cls(list(data["created"]), list(data["kept"]), list(data["replaced"]),
                   list(data["dirs"]))


def split_container_path(path: str) -> list[str]:
    """'/dev/nvidia-caps/nvidia-cap1' -> ['dev', 'nvidia-caps', 'nvidia-cap1']; refuses
    relative paths, '.', '..' and empty components."""
    if not path.startswith("/"):
        raise ApplyError(f"device node path {path!r} is not absolute")
    parts = path.split("/")[1:]
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise ApplyError(f"device node path {path!r} has an empty, '.' or '..' component")
    return parts


def create_nodes(rootfs: str, nodes: Sequence[DeviceNode],
                 root_fd: int | None = None) -> NodeReport:
    """Create `nodes` under `rootfs` (or under the directory fd `root_fd`, with `rootfs` only
    naming it in messages). On error, undo this call's changes and raise ApplyError."""
    report = NodeReport()
    old_umask = os.umask(0)
    try:
        root_fd = _open_rootfs(rootfs) if root_fd is None else os.dup(root_fd)
        try:
            for node in nodes:
                _create_one(root_fd, rootfs, node, report)
        except ApplyError as e:
            stuck = _undo(root_fd, report)
            if stuck:
                raise ApplyError(f"{e}; could not remove the nodes created before: "
                                 f"{', '.join(stuck)}") from None
            raise
        except BaseException:
            _undo(root_fd, report)
            raise
        finally:
            os.close(root_fd)
    finally:
        os.umask(old_umask)
    return report


def remove_nodes(rootfs: str, report: NodeReport, root_fd: int | None = None) -> list[str]:
    """Undo `report` (nodes we created, then directories we made); return what failed."""
    root_fd = _open_rootfs(rootfs) if root_fd is None else os.dup(root_fd)
    try:
        return _undo(root_fd, report)
    finally:
        os.close(root_fd)


def open_container_root(rootfs: str, identity: tuple[int, int], init_root_fd: int) -> int:
    """In the container's mount namespace: a directory fd of the rootfs the runtime set up,
    checked against `identity` ((st_dev, st_ino) of the rootfs as the hook sees it; a bind
    mount keeps both). Prestart hooks run before pivot_root (runc, crun), so the rootfs is at
    its bundle path: from the namespace's root, or, when the runtime itself runs chrooted (setns
    puts us at the namespace's real root), from the init process's root (`init_root_fd`, from
    /proc/<pid>/root, which before pivot_root is the runtime's root in the container's mount
    namespace). A runtime that pivots first leaves the rootfs as the init's root itself."""
    for base, path in ((None, rootfs), (init_root_fd, rootfs.lstrip("/") or ".")):
        try:
            fd = (os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if base is None
                  else os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=base))
        except OSError:
            continue
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == identity:
            return fd
        os.close(fd)
    st = os.fstat(init_root_fd)
    if (st.st_dev, st.st_ino) == identity:
        return os.dup(init_root_fd)
    raise ApplyError(f"container rootfs {rootfs} is neither at that path in the container's "
                     f"mount namespace nor its init process's root; refusing to guess")


def _open_rootfs(rootfs: str) -> int:
    try:
        return os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise ApplyError(f"cannot open container rootfs {rootfs}: {e.strerror}") from None


def _create_one(root_fd: int, rootfs: str, node: DeviceNode, report: NodeReport) -> None:
    if node.type != "c":
        raise ApplyError(f"device node {node.path}: type {node.type!r} is not supported "
                         f"(only 'c')")
    parts = split_container_path(node.path)
    dir_fd = _walk_dirs(root_fd, rootfs, parts[:-1], report)
    try:
        _place_node(dir_fd, rootfs, node, parts[-1], report)
    finally:
        os.close(dir_fd)


def _walk_dirs(root_fd: int, rootfs: str, parts: Sequence[str], report: NodeReport) -> int:
    """Open (creating as needed) rootfs/parts... as a directory fd, refusing symlinks."""
    fd = os.dup(root_fd)
    walked = ""
    try:
        for name in parts:
            walked += "/" + name
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                try:
                    os.mkdir(name, DIR_MODE, dir_fd=fd)
                    report.dirs.append(walked)
                except FileExistsError:
                    pass
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise ApplyError(f"refusing to create device nodes under {walked} in "
                                 f"rootfs {rootfs}: it is a symlink (gpuhook never follows "
                                 f"symlinks in a container rootfs)")
            if not stat.S_ISDIR(st.st_mode):
                raise ApplyError(f"cannot create device nodes under {walked} in rootfs "
                                 f"{rootfs}: it exists and is not a directory")
            try:
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                # ELOOP / ENOTDIR: swapped for a symlink or file since the stat.
                raise ApplyError(f"cannot open {walked} in rootfs {rootfs} without following "
                                 f"symlinks: {e.strerror}") from None
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _place_node(dir_fd: int, rootfs: str, node: DeviceNode, name: str,
                report: NodeReport) -> None:
    rdev = os.makedev(node.major, node.minor)
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    if st is not None:
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == rdev:
            report.kept.append(node.path)
            return
        if stat.S_ISDIR(st.st_mode):
            raise ApplyError(f"cannot create device node {node.path} in rootfs {rootfs}: "
                             f"a directory is in the way")
        # A different device, a file or a symlink: remove the entry itself (never its target).
        _os_call(lambda: os.unlink(name, dir_fd=dir_fd), node.path, rootfs, "remove")
    _os_call(lambda: os.mknod(name, stat.S_IFCHR | (node.file_mode & 0o7777), rdev,
                              dir_fd=dir_fd), node.path, rootfs, "mknod")
    report.created.append(node.path)
    if st is not None:
        report.replaced.append(node.path)
    _os_call(lambda: os.chown(name, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False),
             node.path, rootfs, "chown")


def _os_call(fn: Callable[[], object], path: str, rootfs: str, what: str) -> None:
    try:
        fn()
    except OSError as e:
        code = errno.errorcode.get(e.errno or 0, "?")
        raise ApplyError(f"{what} {path} in rootfs {rootfs}: {e.strerror} ({code})") from None


def _undo(root_fd: int, report: NodeReport) -> list[str]:
    failed: list[str] = []
    for path in reversed(report.created):
        if not _unlink_in(root_fd, split_container_path(path)):
            failed.append(path)
    for path in reversed(report.dirs):
        _rmdir_in(root_fd, split_container_path(path))
    return failed


def _open_parent(root_fd: int, parts: Iterable[str]) -> int | None:
    fd = os.dup(root_fd)
    for name in parts:
        try:
            nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = nfd
    return fd


def _unlink_in(root_fd: int, parts: list[str]) -> bool:
    fd = _open_parent(root_fd, parts[:-1])
    if fd is None:
        return False
    try:
        os.unlink(parts[-1], dir_fd=fd)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _rmdir_in(root_fd: int, parts: list[str]) -> None:
    fd = _open_parent(root_fd, parts[:-1])
    if fd is None:
        return
    try:
        os.rmdir(parts[-1], dir_fd=fd)
    except OSError:
        pass  # not empty (someone else's entries) or gone: leave it
    finally:
        os.close(fd)
