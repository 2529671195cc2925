"""The container's `/proc/driver/nvidia`: a read-only tmpfs that holds only the granted GPUs.

The host's procfs directory lists every GPU (`gpus/<busid>/information`, ...) and its `params`
says `ModifyDeviceFiles: 1`, which tells the driver's user-space (nvidia-smi, libcuda through
nvidia-modprobe) that it may create device nodes. libnvidia-container's legacy path
(`src/nvc_mount.c`, mount_procfs / mount_procfs_gpu) covers it with a tmpfs holding copies of
`params` (with `ModifyDeviceFiles: 0`), `version` and `registry`, and each granted GPU's
`gpus/<busid>`; the toolkit's CDI path does not. gpuhook does it in both modes.

The view is built on the host as a detached tmpfs (fsopen/fsmount), filled through its fd,
made read-only, nosuid, nodev, noexec while still detached, and only then attached over the
container's `/proc/driver/nvidia` (gpuhook.enforce.driver). Its source is
`<host-root>/proc/driver/nvidia`, so a fake host tree can provide one.
"""

from __future__ import annotations

import os
import stat

from gpuhook.enforce import mountapi
from gpuhook.errors import ApplyError

TOP_FILES = ("params", "version", "registry")
MAX_FILE = 64 << 10
MAX_GPU_FILES = 32
TMPFS_OPTIONS = {"mode": "0555", "size": "1m", "nr_inodes": "1024"}


def normalize_busid(busid: str) -> str:
    """'00000000:3B:00.0' (NVML) and '0000:3b:00.0' (procfs) -> '0000:3b:00.0'."""
    busid = busid.strip().lower()
    domain, sep, rest = busid.partition(":")
    if not sep:
        return busid
    return f"{int(domain, 16):04x}:{rest}" if domain and all(
        c in "0123456789abcdef" for c in domain) else busid


def host_dir(host_root: str) -> str:
    return os.path.join(host_root, "proc/driver/nvidia")


def build(host_root: str, busids: tuple[str, ...]) -> tuple[int, list[str]] | None:
    """The detached, read-only view as a mount fd, and notes; None when the host has no
    `/proc/driver/nvidia` (no driver loaded: nothing to cover). Raises ApplyError when a
    granted GPU has no entry there."""
    src = host_dir(host_root)
    if not os.path.isdir(src):
        return None
    notes: list[str] = []
    wanted = {normalize_busid(b): b for b in busids}
    try:
        present = {normalize_busid(n): n for n in os.listdir(os.path.join(src, "gpus"))}
    except OSError:
        present = {}
    missing = [b for n, b in wanted.items() if n not in present]
    if missing:
        raise ApplyError(f"/proc/driver/nvidia view: {src}/gpus has no entry for granted "
                         f"GPU(s) {', '.join(missing)} (it has: "
                         f"{', '.join(sorted(present.values())) or 'none'})")
    fd = mountapi.new_tmpfs(TMPFS_OPTIONS)
    try:
        for name in TOP_FILES:
            data = _read_small(os.path.join(src, name))
            if data is None:
                notes.append(f"/proc/driver/nvidia/{name}: not on the host, left out")
                continue
            if name == "params":
                data = data.replace(b"ModifyDeviceFiles: 1", b"ModifyDeviceFiles: 0")
            _write(fd, name, data)
        os.mkdir("gpus", 0o555, dir_fd=fd)
        gpus = os.open("gpus", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
        try:
            for norm in sorted(wanted):
                name = present[norm]
                os.mkdir(name, 0o555, dir_fd=gpus)
                gdir = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=gpus)
                try:
                    entries = sorted(os.listdir(os.path.join(src, "gpus", name)))
                    for entry in entries[:MAX_GPU_FILES]:
                        data = _read_small(os.path.join(src, "gpus", name, entry))
                        if data is not None:
                            _write(gdir, entry, data)
                finally:
                    os.close(gdir)
        finally:
            os.close(gpus)
        mountapi.set_attrs(fd, mountapi.MOUNT_ATTR_RDONLY | mountapi.MOUNT_ATTR_NOSUID
                           | mountapi.MOUNT_ATTR_NODEV | mountapi.MOUNT_ATTR_NOEXEC)
    except OSError as e:
        os.close(fd)
        raise ApplyError(f"building the /proc/driver/nvidia view from {src}: "
                         f"{e.strerror}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd, notes


def _read_small(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, MAX_FILE)
    finally:
        os.close(fd)


def _write(dir_fd: int, name: str, data: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o444, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
