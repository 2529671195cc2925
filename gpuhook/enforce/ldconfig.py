"""Run the HOST's ldconfig on a container rootfs, so that it can never touch anything else.

CVE-2025-23267 (nvidia-container-toolkit's update-ldcache hook): `ldconfig -r <rootfs>` resolves
the image's symlinks (`etc -> /host/...`) on the host and writes the cache there. Here that is
impossible by construction:

- the binary is opened on the host (config key `ldconfig`; `<path>.real` when it exists, as on
  Ubuntu where `/sbin/ldconfig` is a shell wrapper) and copied into a sealed memfd before
  anything of the container is touched; it must be a static ELF (no PT_INTERP): a dynamic one
  would load its loader and libc from the container image after the chroot;
- it runs in a grandchild that makes its own private mount namespace (nothing it does to mounts
  propagates anywhere), detaches every proc and sysfs mount under the rootfs (their magic links,
  `/proc/1/root`, lead out of any chroot), re-opens the rootfs in that namespace (an fd opened
  before unshare still walks the old namespace's mounts, proc included) and checks it is the
  directory the caller opened without following links and checked against the runtime's rootfs
  identity, chroots into it,
  closes every other fd, and drops to CAP_DAC_OVERRIDE only (bounding set too, no_new_privs),
  with rlimits on CPU, address space, file size and open files and an empty environment. Every
  link the image holds then resolves inside the rootfs: `/` is the rootfs;
- it is exec'd from the memfd (execveat on the fd): nothing from the container is ever run,
  and the image's own ldconfig never is.

Arguments: `-X` (gpuhook makes the links itself, from the Plan), `-f /etc/ld.so.conf -C
/etc/ld.so.cache` (explicit, so a host ldconfig built with other defaults writes where the
image's loader reads).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import resource
import select
import struct
import time

from gpuhook.enforce import caps
from gpuhook.errors import ApplyError
from gpuhook.text import mountinfo_unescape

DEFAULT_LDCONFIG = "/sbin/ldconfig"
MAX_LDCONFIG_BYTES = 32 << 20  # Debian 12's static ldconfig is ~1 MiB
ARGS = ("ldconfig", "-X", "-f", "/etc/ld.so.conf", "-C", "/etc/ld.so.cache")
TIMEOUT_S = 30.0
RLIMITS = ((resource.RLIMIT_CPU, 20), (resource.RLIMIT_AS, 1 << 30),
           (resource.RLIMIT_FSIZE, 256 << 20), (resource.RLIMIT_NOFILE, 256))
CAPS = ("dac_override",)  # to write /etc/ld.so.cache in an image whose /etc root does not own
MAX_STDERR = 4096
CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
PT_INTERP = 3


def resolve_path(configured: str) -> str:
    """The ldconfig to run: `<configured>.real` when that exists (Ubuntu), else `configured`."""
    if not os.path.isabs(configured):
        raise ApplyError(f"config key ldconfig = {configured!r} is not an absolute path")
    real = configured + ".real"
    return real if os.path.exists(real) else configured


def sealed_copy(configured: str) -> int:
    """Open the host's ldconfig and return a sealed, close-on-exec memfd copy of it."""
    path = resolve_path(configured)
    try:
        src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise ApplyError(f"cannot open the host's ldconfig {path} (config key ldconfig): "
                         f"{e.strerror}") from None
    try:
        st = os.fstat(src)
        if not (st.st_mode & 0o170000 == 0o100000) or st.st_size > MAX_LDCONFIG_BYTES:
            raise ApplyError(f"host ldconfig {path} is not a regular file of at most "
                             f"{MAX_LDCONFIG_BYTES} bytes")
        fd = os.memfd_create("gpuhook-ldconfig", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            offset = 0
            while offset < st.st_size:  # a kernel copy: no round trip through Python bytes
                sent = os.sendfile(fd, src, offset, st.st_size - offset)
                if sent == 0:
                    raise ApplyError(f"host ldconfig {path} shrank while it was copied")
                offset += sent
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK
                        | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
            check_static_elf(_headers(fd, st.st_size), path)  # the bytes that will run
        except BaseException:
            os.close(fd)
            raise
    finally:
        os.close(src)
    return fd


def check_static_elf(data: bytes, path: str) -> None:
    """Refuse anything but a 64-bit little-endian ELF without a program interpreter."""
    if len(data) < 64 or data[:6] != b"\x7fELF\x02\x01":
        raise ApplyError(f"host ldconfig {path} is not a 64-bit little-endian ELF file")
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    if phentsize < 4 or phoff + phentsize * phnum > len(data):
        raise ApplyError(f"host ldconfig {path} has a broken program header table")
    for i in range(phnum):
        p_type, = struct.unpack_from("<I", data, phoff + i * phentsize)
        if p_type == PT_INTERP:
            raise ApplyError(f"host ldconfig {path} is dynamically linked: chrooted in the "
                             f"container it would load the image's loader and libc; point "
                             f"config key ldconfig at a static one (glibc's ldconfig is)")


def run(memfd: int, root_fd: int, rootfs: str, args: tuple[str, ...] = ARGS) -> None:
    """Run the sealed ldconfig `memfd` chrooted at `root_fd` (the rootfs, opened and checked
    by the caller, in the container's mount namespace) with `args` (argv, ARGS but in tests).
    Raises ApplyError with its output."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            _exec_jailed(memfd, root_fd, w, args)
        finally:
            os._exit(127)
    os.close(w)
    err = b""
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, 9)  # SIGKILL
                break
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                continue
            chunk = os.read(r, 4096)
            if not chunk:
                break
            if len(err) < MAX_STDERR:
                err += chunk
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    if status != 0:
        text = err[:MAX_STDERR].decode("utf-8", "replace").strip().replace("\n", "; ")
        why = (f"exit status {os.waitstatus_to_exitcode(status)}" if os.WIFEXITED(status)
               else f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"wait status {status}")
        raise ApplyError(f"the host's ldconfig on rootfs {rootfs} failed ({why})"
                         + (f": {text!r}" if text else ""))


def _exec_jailed(memfd: int, root_fd: int, err_fd: int, args: tuple[str, ...]) -> None:
    """In the grandchild: private mounts, no proc/sys under the rootfs, chroot, fds, rlimits,
    capabilities, exec. Any failure is written to `err_fd` and the caller exits 127."""
    try:
        caps.die_with_parent()
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(ctypes.c_int(CLONE_NEWNS)) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
        if libc.mount(None, b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None) != 0:
            raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
        path = os.readlink(f"/proc/self/fd/{root_fd}")
        _detach_pseudo_fs(libc, path)
        # root_fd was opened in the old namespace: a walk from it would cross that namespace's
        # mounts (the proc just detached included). Re-open the rootfs here, by the kernel's own
        # name for it, and accept it only if it is the same directory.
        new_root = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        want, got = os.fstat(root_fd), os.fstat(new_root)
        if (want.st_dev, want.st_ino) != (got.st_dev, got.st_ino):
            raise OSError(0, f"rootfs {path} changed while entering the jail")
        devnull = os.open("/dev/null", os.O_RDONLY)
        os.fchdir(new_root)
        os.chroot(".")
        os.chdir("/")
        os.dup2(devnull, 0)
        os.dup2(err_fd, 1)
        os.dup2(err_fd, 2)
        keep = sorted({0, 1, 2, memfd})
        for lo, hi in zip(keep, [*keep[1:], 1 << 16], strict=True):
            os.closerange(lo + 1, hi)
        for res, limit in RLIMITS:
            resource.setrlimit(res, (limit, limit))
        caps.no_new_privs()
        caps.limit(*CAPS, bounding=True, inheritable=True)
        os.execve(memfd, list(args), {})
    except BaseException as e:  # the parent reports this text
        try:  # noqa: SIM105 (no contextlib on the start path)
            os.write(err_fd, f"gpuhook: cannot start ldconfig: {e}".encode())
        except OSError:
            pass


def _detach_pseudo_fs(libc: ctypes.CDLL, rootfs_path: str) -> None:
    """Lazily unmount every proc/sysfs mount at or under `rootfs_path` in this (private) mount
    namespace, deepest first: their magic links lead out of a chroot."""
    prefix = rootfs_path.rstrip("/") + "/"
    targets = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields, _, rest = line.partition(" - ")
            parts = fields.split()
            if len(parts) < 5 or not rest:
                continue
            point = mountinfo_unescape(parts[4])
            fstype = rest.split()[0]
            if fstype in ("proc", "sysfs") and point.startswith(prefix):
                targets.append(point)
    for point in sorted(targets, key=len, reverse=True):
        if libc.umount2(os.fsencode(point), ctypes.c_int(2 | 8)) != 0:  # MNT_DETACH|NOFOLLOW
            err = ctypes.get_errno()
            if err not in (22, 2):  # EINVAL: already gone with a parent; ENOENT
                raise OSError(err, f"umount {point}")


def _headers(fd: int, size: int) -> bytes:
    """The ELF header and program header table (what check_static_elf reads)."""
    head = os.pread(fd, 64, 0)
    if len(head) < 64:
        return head
    phoff, = struct.unpack_from("<Q", head, 32)
    phentsize, phnum = struct.unpack_from("<HH", head, 54)
    end = min(size, phoff + phentsize * phnum)
    return os.pread(fd, end, 0) if end > 64 else head
