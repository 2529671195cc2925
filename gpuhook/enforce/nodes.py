"""Create the Plan's device nodes under a container rootfs without following any symlink.

Every path is walked from a directory fd of the rootfs, one component at a time, with
`openat(O_DIRECTORY | O_NOFOLLOW)`, `mkdirat`, `mknodat`, `fstatat(AT_SYMLINK_NOFOLLOW)` and
`unlinkat`: a symlink anywhere under the rootfs (`dev -> /etc`, `dev/nvidia-caps -> /`) makes
the walk fail, so nothing is ever written outside the rootfs (CVE-2024-0132/0134 class). The
rootfs path itself comes from the bundle, which the runtime controls.

These functions do plain file-system work; `gpuhook.enforce` runs them inside the container's
mount namespace (where runc's /dev tmpfs is mounted on `<rootfs>/dev`).

No deputy writes: the helper has root's power inside the container's file system, so it only
ever creates. An entry already at a node's path is kept when it is that very device and refused
otherwise: never replaced, chmod-ed or chown-ed (runc keeps an existing entry too: EEXIST from
mknod is success in its createDeviceNode). A node whose directory is on another mount than the
container's own `<rootfs>/dev` (a volume mounted over `/dev/nvidia-caps`, say) is refused: that
directory belongs to whoever provided the volume, and a node written there would outlive the
container or show up in another one.

In its own user namespace the container's /dev refuses device nodes (see userns.py): the nodes
are made on a private tmpfs by the hook (`stage_nodes`) and bind-mounted onto empty files that
the helper creates as the container's root (fsuid/fsgid), as runc does with the host's nodes.
"""

from __future__ import annotations

import errno
import os
import stat

from gpuhook.enforce import mountapi
from gpuhook.errors import ApplyError
from gpuhook.record import TYPE_CHECKING, dataclass, field

if TYPE_CHECKING:  # annotations only (the createContainer hook skips the decide stages)
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from gpuhook.decide.plan import DeviceNode

DIR_MODE = 0o755
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class NodeReport:
    """What a create pass did, in order: enough to undo it."""

    created: list[str] = field(default_factory=list)  # entries made by us
    kept: list[str] = field(default_factory=list)  # already the right device: untouched
    bound: list[str] = field(default_factory=list)  # subset of created: a staged node on top
    dirs: list[str] = field(default_factory=list)  # directories made by us, parents first

    def as_json(self) -> dict[str, list[str]]:
        return {"created": self.created, "kept": self.kept, "bound": self.bound,
                "dirs": self.dirs}

    @classmethod
    def from_json(cls, data: dict[str, list[str]]) -> NodeReport:
        return cls(list(data["created"]), list(data["kept"]), list(data["bound"]),
                   list(data["dirs"]))


@dataclass(frozen=True)
class Staged:
    """Nodes made on a private tmpfs for a user-namespaced container: a detached bind mount of
    each (by container path), and the host ids of the container's root, which own the entries
    the helper creates in the container's /dev."""

    trees: Mapping[str, int]
    fs_uid: int
    fs_gid: int

    def close(self) -> None:
        for fd in self.trees.values():
            os.close(fd)


def stage_nodes(nodes: Sequence[DeviceNode], owner: Callable[[DeviceNode], tuple[int, int]],
                fs_ids: tuple[int, int]) -> Staged:
    """In the hook's own namespaces: each node made on a new, detached tmpfs (created with the
    hook's credentials, so its nodes open; no mount point anywhere), owned by `owner(node)`
    (host ids), as a detached bind mount ready to be attached in the container."""
    trees: dict[str, int] = {}
    old_umask = os.umask(0)
    try:
        tmp = mountapi.new_tmpfs()
        try:
            for i, node in enumerate(nodes):
                name = f"node{i}"
                os.mknod(name, stat.S_IFCHR | (node.file_mode & 0o7777),
                         os.makedev(node.major, node.minor), dir_fd=tmp)
                uid, gid = owner(node)
                os.chown(name, uid, gid, dir_fd=tmp, follow_symlinks=False)
                trees[node.path] = mountapi.clone_tree(tmp, name)
        finally:
            os.close(tmp)
    except OSError as e:
        Staged(trees, *fs_ids).close()
        raise ApplyError(f"staging device nodes for a user-namespaced container: "
                         f"{e.strerror}") from None
    finally:
        os.umask(old_umask)
    return Staged(trees, *fs_ids)


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
                 root_fd: int | None = None, staged: Staged | None = None) -> NodeReport:
    """Create `nodes` under `rootfs` (or under the directory fd `root_fd`, with `rootfs` only
    naming it in messages); with `staged`, attach those instead of making nodes. On error, undo
    this call's changes and raise ApplyError."""
    report = NodeReport()
    old_umask = os.umask(0)
    try:
        root_fd = _open_rootfs(rootfs) if root_fd is None else os.dup(root_fd)
        try:
            dev_mount = _dev_mount(root_fd, rootfs, report)
            for node in nodes:
                _create_one(root_fd, rootfs, node, report, dev_mount, staged)
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


def _dev_mount(root_fd: int, rootfs: str, report: NodeReport) -> int:
    """The mount id of the container's /dev (made as a directory if the rootfs lacks it)."""
    dev_fd = _walk_dirs(root_fd, rootfs, ["dev"], report)
    try:
        return _mount_id(dev_fd, "/dev", rootfs)
    finally:
        os.close(dev_fd)


def _mount_id(fd: int, path: str, rootfs: str) -> int:
    try:
        return mountapi.mount_id(fd)
    except OSError as e:
        raise ApplyError(f"cannot tell which mount {path} in rootfs {rootfs} is on: "
                         f"{e.strerror}") from None


def _create_one(root_fd: int, rootfs: str, node: DeviceNode, report: NodeReport,
                dev_mount: int, staged: Staged | None) -> None:
    if node.type != "c":
        raise ApplyError(f"device node {node.path}: type {node.type!r} is not supported "
                         f"(only 'c')")
    parts = split_container_path(node.path)
    if parts[0] != "dev" or len(parts) < 2:
        raise ApplyError(f"device node path {node.path!r} is not under /dev")
    dir_fd = _walk_dirs(root_fd, rootfs, parts[:-1], report)
    try:
        parent = "/" + "/".join(parts[:-1])
        if _mount_id(dir_fd, parent, rootfs) != dev_mount:
            raise ApplyError(f"refusing to create device node {node.path} in rootfs {rootfs}: "
                             f"{parent} is on another mount than the container's /dev (a volume "
                             f"mounted over it?); gpuhook writes only into the runtime's /dev")
        if staged is None:
            _place_node(dir_fd, rootfs, node, parts[-1], report)
        else:
            _attach_node(dir_fd, rootfs, node, parts[-1], report, staged)
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


def _already_there(dir_fd: int, rootfs: str, node: DeviceNode, name: str) -> bool:
    """True when `name` is already this very device; ApplyError when something else is there
    (it is not ours to replace, chmod or chown); False when nothing is."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(node.major, node.minor):
        return True
    kind = ("a symlink" if stat.S_ISLNK(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode)
            else "another device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            else "a file")
    raise ApplyError(f"refusing to create device node {node.path} in rootfs {rootfs}: {kind} is "
                     f"already there (gpuhook never replaces, chmods or chowns an entry it did "
                     f"not create)")


def _place_node(dir_fd: int, rootfs: str, node: DeviceNode, name: str,
                report: NodeReport) -> None:
    if _already_there(dir_fd, rootfs, node, name):
        report.kept.append(node.path)
        return
    _os_call(lambda: os.mknod(name, stat.S_IFCHR | (node.file_mode & 0o7777),
                              os.makedev(node.major, node.minor), dir_fd=dir_fd),
             node.path, rootfs, "mknod")
    report.created.append(node.path)
    _os_call(lambda: os.chown(name, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False),
             node.path, rootfs, "chown")


def _attach_node(dir_fd: int, rootfs: str, node: DeviceNode, name: str, report: NodeReport,
                 staged: Staged) -> None:
    """User namespace: an empty file (O_EXCL, O_NOFOLLOW) with the staged node bind-mounted on
    it; move_mount does not follow a symlink at its target."""
    if _already_there(dir_fd, rootfs, node, name):
        report.kept.append(node.path)
        return
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    _os_call(lambda: os.close(os.open(name, flags, 0o000, dir_fd=dir_fd)), node.path, rootfs,
             "create mount point")
    report.created.append(node.path)
    _os_call(lambda: mountapi.move_mount_to(staged.trees[node.path], dir_fd, name), node.path,
             rootfs, "bind-mount")
    report.bound.append(node.path)


def _os_call(fn: Callable[[], object], path: str, rootfs: str, what: str) -> None:
    try:
        fn()
    except OSError as e:
        code = errno.errorcode.get(e.errno or 0, "?")
        raise ApplyError(f"{what} {path} in rootfs {rootfs}: {e.strerror} ({code})") from None


def _undo(root_fd: int, report: NodeReport) -> list[str]:
    failed: list[str] = []
    for path in reversed(report.created):
        if not _unlink_in(root_fd, split_container_path(path), path in report.bound):
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


def _unlink_in(root_fd: int, parts: list[str], mounted: bool = False) -> bool:
    fd = _open_parent(root_fd, parts[:-1])
    if fd is None:
        return False
    try:
        if mounted:
            mountapi.detach_mount(fd, parts[-1])
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
