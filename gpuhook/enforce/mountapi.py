"""The few Linux calls Python's os module lacks, through ctypes: the new mount API (fsopen,
fsconfig, fsmount, open_tree, move_mount; Linux 5.2; mount_setattr, Linux 5.12), umount2,
setfsuid/setfsgid, and statx's mount id (Linux 5.8). Each raises OSError(errno, strerror) as the
os module does (pyroute2's habit). x86_64 and aarch64 syscall numbers: these calls were added
after the unified table.

Why driver files use this API rather than `mount --bind /proc/self/fd/N`: a mount made with
`open_tree(OPEN_TREE_CLONE)` on the host is a *detached* mount held by an fd. Its read-only /
nosuid / nodev / noexec flags are set with `mount_setattr` while it is still detached, so it
never exists writable in the container; the fd survives `setns` into the container's mount
namespace, where `move_mount` attaches it to a name in a directory fd that was reached without
following any symlink (no MOVE_MOUNT_T_SYMLINKS: the final name is not followed either). No host
path is resolved inside the container, nothing of the container on the host. A tmpfs made with
fsopen/fsmount is filled on the host through its fd before it is attached, the same way.
"""

from __future__ import annotations

import ctypes
import os
import struct

_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
_SYS_MOUNT_SETATTR = 442

FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x1
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
AT_RECURSIVE = 0x8000
STATX_MNT_ID = 0x1000
_STATX_SIZE = 256
_STATX_MNT_ID_OFFSET = 144


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


_LIBC: list[ctypes.CDLL] = []  # loaded once (functools.cache would import collections)


def _lib() -> ctypes.CDLL:
    if not _LIBC:
        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    return _LIBC[0]


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _syscall(nr: int, what: str, *args: object) -> int:
    return _check(int(_lib().syscall(ctypes.c_long(nr), *args)), what)


def new_tmpfs(options: dict[str, str] | None = None,
              attrs: int = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC) -> int:
    """A detached tmpfs (no mount point anywhere) as an fd usable as a dir_fd; created with
    the caller's credentials, so in the initial user namespace device nodes in it open.
    `options`: fsconfig strings (default mode 0700); `attrs`: MOUNT_ATTR_* at fsmount."""
    fs = _syscall(_SYS_FSOPEN, "fsopen tmpfs", b"tmpfs", ctypes.c_uint(FSOPEN_CLOEXEC))
    try:
        for key, value in (options or {"mode": "0700"}).items():
            _syscall(_SYS_FSCONFIG, f"fsconfig {key}", ctypes.c_int(fs),
                     ctypes.c_uint(FSCONFIG_SET_STRING), os.fsencode(key), os.fsencode(value),
                     ctypes.c_int(0))
        _syscall(_SYS_FSCONFIG, "fsconfig create", ctypes.c_int(fs),
                 ctypes.c_uint(FSCONFIG_CMD_CREATE), None, None, ctypes.c_int(0))
        return _syscall(_SYS_FSMOUNT, "fsmount", ctypes.c_int(fs),
                        ctypes.c_uint(FSMOUNT_CLOEXEC), ctypes.c_uint(attrs))
    finally:
        os.close(fs)


def clone_tree(dir_fd: int, name: str, recursive: bool = False) -> int:
    """open_tree(OPEN_TREE_CLONE): a detached bind mount of `name` under `dir_fd` (AT_FDCWD and
    an absolute path for a host path), the final component not followed; `recursive`: with the
    mounts below it (rbind)."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_SYMLINK_NOFOLLOW
    return _syscall(_SYS_OPEN_TREE, f"open_tree {name}", ctypes.c_int(dir_fd),
                    os.fsencode(name), ctypes.c_uint(flags | (AT_RECURSIVE if recursive else 0)))


def set_attrs(mount_fd: int, attrs: int) -> None:
    """mount_setattr on the (detached) mount `mount_fd` itself, not recursive: add `attrs`."""
    attr = _MountAttr(attrs, 0, 0, 0)
    _syscall(_SYS_MOUNT_SETATTR, "mount_setattr", ctypes.c_int(mount_fd), b"",
             ctypes.c_uint(AT_EMPTY_PATH), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))


def move_mount_to(tree_fd: int, dir_fd: int, name: str) -> None:
    """Attach the detached mount `tree_fd` on `name` under `dir_fd` (the final component is
    not followed: move_mount follows a target symlink only with MOVE_MOUNT_T_SYMLINKS)."""
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"mount point name {name!r} is not a single component")
    _syscall(_SYS_MOVE_MOUNT, f"move_mount onto {name}", ctypes.c_int(tree_fd), b"",
             ctypes.c_int(dir_fd), os.fsencode(name), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH))


def detach_mount(dir_fd: int, name: str) -> None:
    """umount2(MNT_DETACH | UMOUNT_NOFOLLOW) of `name` under `dir_fd`."""
    cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fchdir(dir_fd)
        _check(int(_lib().umount2(os.fsencode(name), ctypes.c_int(MNT_DETACH | UMOUNT_NOFOLLOW))),
               f"umount {name}")
    finally:
        os.fchdir(cwd)
        os.close(cwd)


def set_fs_ids(uid: int, gid: int) -> None:
    """setfsuid/setfsgid: files this thread creates get these owners. (The calls return the
    previous id, never an error; the new one is verified by a second call.)"""
    lib = _lib()
    lib.setfsgid(ctypes.c_uint(gid))
    lib.setfsuid(ctypes.c_uint(uid))
    if lib.setfsuid(ctypes.c_uint(uid)) != uid or lib.setfsgid(ctypes.c_uint(gid)) != gid:
        raise OSError(1, f"setfsuid {uid} / setfsgid {gid}: not permitted")


def mount_id(fd: int) -> int:
    """The id of the mount `fd` (a directory) is on: statx(STATX_MNT_ID)."""
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    _check(int(_lib().statx(ctypes.c_int(fd), b"", ctypes.c_int(AT_EMPTY_PATH),
                            ctypes.c_uint(STATX_MNT_ID), buf)), "statx")
    mask = struct.unpack_from("I", buf.raw, 0)[0]
    if not mask & STATX_MNT_ID:
        raise OSError(95, "statx: no mount id (Linux < 5.8)")
    value: int = struct.unpack_from("Q", buf.raw, _STATX_MNT_ID_OFFSET)[0]
    return value
