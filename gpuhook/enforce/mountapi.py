"""The kernel's new mount API (open_tree, move_mount, mount_setattr, fsopen/fsconfig/fsmount),
through ctypes: Python 3.11 has none of them.

Why this API and not `mount --bind /proc/self/fd/N`: a mount made with `open_tree(OPEN_TREE_CLONE)`
on the host is a *detached* mount held by an fd. Its read-only / nosuid / nodev / noexec flags
are set with `mount_setattr` while it is still detached, so it never exists writable in the
container; the fd survives `setns` into the container's mount namespace, where `move_mount`
attaches it to a mount point that was opened without following any symlink (`to_dirfd` from an
O_NOFOLLOW walk, a plain final name, and no MOVE_MOUNT_T_SYMLINKS). No host path is ever resolved
inside the container, and nothing of the container is resolved on the host. A tmpfs made with
fsopen/fsmount is populated on the host through its fd before it is attached, the same way.
Linux >= 5.12 (mount_setattr); gpuhook targets x86-64 (syscall numbers below are the generic
table's, the same on x86-64 and arm64 for these calls).
"""

from __future__ import annotations

import ctypes
import os

# include/uapi/asm-generic/unistd.h (shared by x86-64 and arm64 for these numbers)
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432
SYS_MOUNT_SETATTR = 442
SYS_UMOUNT2 = 166  # x86-64

# include/uapi/linux/mount.h, fcntl.h
OPEN_TREE_CLONE = 1
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x04
FSOPEN_CLOEXEC = 0x01
FSMOUNT_CLOEXEC = 0x01
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
MOUNT_ATTR_RDONLY = 0x01
MOUNT_ATTR_NOSUID = 0x02
MOUNT_ATTR_NODEV = 0x04
MOUNT_ATTR_NOEXEC = 0x08
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


_LIBC: list[ctypes.CDLL] = []


def _syscall(name: str, nr: int, *args: object) -> int:
    if not _LIBC:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        _LIBC.append(libc)
    ret = int(_LIBC[0].syscall(ctypes.c_long(nr), *args))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return ret


def _path(p: str) -> ctypes.c_char_p:
    return ctypes.c_char_p(os.fsencode(p))


def clone_file(path: str, recursive: bool = False) -> int:
    """A detached bind mount of `path` (not following a final symlink), as a close-on-exec fd;
    `recursive`: with the mounts below it (rbind)."""
    flags = OPEN_TREE_CLONE | os.O_CLOEXEC | AT_SYMLINK_NOFOLLOW
    return _syscall("open_tree", SYS_OPEN_TREE, ctypes.c_int(-100), _path(path),
                    ctypes.c_uint(flags | (AT_RECURSIVE if recursive else 0)))


def set_attrs(mount_fd: int, attrs: int) -> None:
    """mount_setattr on the mount `mount_fd` itself (not recursive)."""
    attr = _MountAttr(attrs, 0, 0, 0)
    _syscall("mount_setattr", SYS_MOUNT_SETATTR, ctypes.c_int(mount_fd), _path(""),
             ctypes.c_uint(AT_EMPTY_PATH), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))


def attach(mount_fd: int, dir_fd: int, name: str) -> None:
    """Attach the detached mount `mount_fd` on `name` in the directory `dir_fd`. The final
    name is not followed if it is a symlink (no MOVE_MOUNT_T_SYMLINKS), and `name` must be a
    single component: the caller walked to `dir_fd` without following links."""
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"mount point name {name!r} is not a single component")
    _syscall("move_mount", SYS_MOVE_MOUNT, ctypes.c_int(mount_fd), _path(""),
             ctypes.c_int(dir_fd), _path(name), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH))


def new_tmpfs(options: dict[str, str]) -> int:
    """A detached, empty tmpfs (fsopen/fsconfig/fsmount) as an fd usable as a directory fd."""
    fs_fd = _syscall("fsopen", SYS_FSOPEN, _path("tmpfs"), ctypes.c_uint(FSOPEN_CLOEXEC))
    try:
        for key, value in options.items():
            _syscall("fsconfig", SYS_FSCONFIG, ctypes.c_int(fs_fd),
                     ctypes.c_uint(FSCONFIG_SET_STRING), _path(key), _path(value), ctypes.c_int(0))
        _syscall("fsconfig", SYS_FSCONFIG, ctypes.c_int(fs_fd), ctypes.c_uint(FSCONFIG_CMD_CREATE),
                 None, None, ctypes.c_int(0))
        return _syscall("fsmount", SYS_FSMOUNT, ctypes.c_int(fs_fd),
                        ctypes.c_uint(FSMOUNT_CLOEXEC), ctypes.c_uint(0))
    finally:
        os.close(fs_fd)


def detach(dir_fd: int, name: str) -> None:
    """Lazily unmount what is mounted on `name` in `dir_fd`, never following a final symlink
    (the directory is reached through the fd's /proc/self/fd link, which names it exactly)."""
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"mount point name {name!r} is not a single component")
    _syscall("umount2", SYS_UMOUNT2, _path(f"/proc/self/fd/{dir_fd}/{name}"),
             ctypes.c_int(MNT_DETACH | UMOUNT_NOFOLLOW))
