"""The few Linux calls Python's os module lacks, through ctypes: the new mount API (fsopen,
fsconfig, fsmount, open_tree, move_mount; Linux 5.2), umount2, setfsuid/setfsgid, and statx's
mount id (Linux 5.8). Each raises OSError(errno, strerror) as the os module does (pyroute2's
habit). x86_64 and aarch64 syscall numbers: these calls were added after the unified table."""

from __future__ import annotations

import ctypes
import functools
import os
import struct

_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432

FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NOEXEC = 0x8
OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
STATX_MNT_ID = 0x1000
_STATX_SIZE = 256
_STATX_MNT_ID_OFFSET = 144

@functools.cache
def _lib() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _syscall(nr: int, what: str, *args: object) -> int:
    return _check(int(_lib().syscall(ctypes.c_long(nr), *args)), what)


def new_tmpfs() -> int:
    """A detached tmpfs (no mount point anywhere) as an fd usable as a dir_fd; created with
    the caller's credentials, so in the initial user namespace device nodes in it open."""
    fs = _syscall(_SYS_FSOPEN, "fsopen tmpfs", b"tmpfs", ctypes.c_uint(FSOPEN_CLOEXEC))
    try:
        _syscall(_SYS_FSCONFIG, "fsconfig mode", ctypes.c_int(fs),
                 ctypes.c_uint(FSCONFIG_SET_STRING), b"mode", b"0700", ctypes.c_int(0))
        _syscall(_SYS_FSCONFIG, "fsconfig create", ctypes.c_int(fs),
                 ctypes.c_uint(FSCONFIG_CMD_CREATE), None, None, ctypes.c_int(0))
        return _syscall(_SYS_FSMOUNT, "fsmount", ctypes.c_int(fs),
                        ctypes.c_uint(FSMOUNT_CLOEXEC),
                        ctypes.c_uint(MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC))
    finally:
        os.close(fs)


def clone_tree(dir_fd: int, name: str) -> int:
    """open_tree(OPEN_TREE_CLONE): a detached bind mount of `name` under `dir_fd`."""
    return _syscall(_SYS_OPEN_TREE, f"open_tree {name}", ctypes.c_int(dir_fd),
                    os.fsencode(name), ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC
                                                     | AT_SYMLINK_NOFOLLOW))


def move_mount_to(tree_fd: int, dir_fd: int, name: str) -> None:
    """Attach the detached mount `tree_fd` on `name` under `dir_fd` (the final component is
    not followed: move_mount follows a target symlink only with MOVE_MOUNT_T_SYMLINKS)."""
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
    """The id of the mount `fd` is on: statx(STATX_MNT_ID) (Linux 5.8), else the `mnt_id:`
    line of /proc/self/fdinfo/<fd> (Linux 3.15)."""
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    if int(_lib().statx(ctypes.c_int(fd), b"", ctypes.c_int(AT_EMPTY_PATH),
                        ctypes.c_uint(STATX_MNT_ID), buf)) == 0:
        mask = struct.unpack_from("I", buf.raw, 0)[0]
        if mask & STATX_MNT_ID:
            value: int = struct.unpack_from("Q", buf.raw, _STATX_MNT_ID_OFFSET)[0]
            return value
    with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key == "mnt_id" and rest.strip().isdigit():
                return int(rest.strip())
    raise OSError(95, "no mount id from statx or /proc/self/fdinfo")
