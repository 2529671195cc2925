"""Driver files in a running container: mounts, symlinks, the ld cache and the /proc view.

Two callers, one implementation:
- hook mode (the prestart hook, runtime namespaces): `apply_driver` forks a child that joins the
  container's mount namespace and does everything below, including the bind mounts;
- spec mode (`gpuhook hook create-container`, which runc runs inside the container's namespaces
  after the mounts and before pivot_root, runc 1.1 libcontainer/rootfs_linux.go prepareRootfs):
  runc already mounted the driver files from config.json; `apply_in_current_ns` forks a child
  in place and does the rest.

Everything from the host is opened on the host BEFORE the child touches the container: each
driver file as a detached bind mount (open_tree, made read-only + nosuid + nodev, + noexec
unless it is a binary or a library, while detached: gpuhook.enforce.mountapi), the view of
/proc/driver/nvidia as a detached read-only tmpfs (gpuhook.enforce.procview), the host's ldconfig
as a sealed memfd (gpuhook.enforce.ldconfig). In the container, every path is walked from the
rootfs fd with O_NOFOLLOW (as gpuhook.enforce.nodes does): a symlink anywhere in a walked
directory refuses, mount points are created with O_EXCL|O_NOFOLLOW and mounts attach to a name
in an fd, so nothing outside the rootfs is ever written. Existing regular files at a link name
are left alone and noted. A failure undoes this call's work (mounts, files, links, ld.so.conf.d
entry, the previous ld.so.cache) and raises ApplyError with one line.
"""

from __future__ import annotations

import binascii
import os
import stat

from gpuhook.enforce import ldconfig, mountapi, ns, procview
from gpuhook.enforce.libdir import LibDir, library_dir
from gpuhook.enforce.nodes import split_container_path
from gpuhook.errors import ApplyError
from gpuhook.record import TYPE_CHECKING, dataclass, field

if TYPE_CHECKING:  # annotations only: the createContainer hook does not import the decide stages
    from collections.abc import Callable, Sequence
    from typing import Any

    from gpuhook.decide.plan import DriverFile, Plan

# What the child in the container's mount namespace needs: move_mount / umount / unshare for
# the ldconfig grandchild (sys_admin), its chroot (sys_chroot), dropping the grandchild's
# bounding set (setpcap), and writing into image directories it does not own.
DRIVER_CAPS = ("sys_admin", "sys_chroot", "setpcap", "dac_override", "fowner")
DIR_MODE = 0o755
CONF_DIR = "/etc/ld.so.conf.d"
CONF_NAME = "gpuhook-driver.conf"
LD_SO_CONF = "/etc/ld.so.conf"
LD_SO_CACHE = "/etc/ld.so.cache"
PROC_VIEW = "/proc/driver/nvidia"
MAX_CACHE_BACKUP = 64 << 20
MAX_LINK_TEXT = 4096
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
LIBRARY_KINDS = ("library", "library32")
EXEC_KINDS = ("library", "library32", "binary")


@dataclass
class DriverReport:
    """What one apply did, in order: enough to undo it (JSON-able)."""
    mounts: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # mount point files created
    dirs: list[str] = field(default_factory=list)  # directories created, parents first
    links: list[list[Any]] = field(default_factory=list)  # [path, old text or None]
    written: list[list[Any]] = field(default_factory=list)  # [path, old bytes b64 or None]
    cache: list[Any] | None = None  # ["absent"] | ["file", b64] | ["link", text]
    view: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DriverReport:
        return cls(**data)

    def lines(self) -> list[str]:
        """For the decision log."""
        out = [f"driver file {p}: mounted" for p in self.mounts]
        out += [f"driver link {p}: created" + ("" if old is None else " (replaced a link)")
                for p, old in self.links]
        out += [f"driver {p}: written" for p, _ in self.written]
        if self.cache is not None:
            out.append(f"ld cache {LD_SO_CACHE}: rebuilt by the host's ldconfig")
        if self.view:
            out.append(f"{self.view}: read-only view of the granted GPUs")
        return out + [f"note: {n}" for n in self.notes]


@dataclass
class Prepared:
    """Host-side fds, opened before entering the container. Close with `close()`."""
    mounts: list[tuple[str, str, str, int]] = field(default_factory=list)  # kind, path, host, fd
    symlinks: list[tuple[str, str, str]] = field(default_factory=list)  # kind, path, target
    ldconfig_fd: int | None = None
    view_fd: int | None = None
    libdir_kinds: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        for fd in [m[3] for m in self.mounts] + [self.ldconfig_fd, self.view_fd]:
            if fd is not None:
                os.close(fd)
        self.mounts.clear()
        self.ldconfig_fd = self.view_fd = None


@dataclass(frozen=True)
class DriverWork:
    """What to do in one container: the Plan's driver part. `files` are mounted by gpuhook
    (hook mode); in spec mode runc mounted them and only their library kinds are passed."""
    files: tuple[DriverFile, ...]
    symlinks: tuple[tuple[str, str, str], ...]  # kind, path, target
    library_kinds: tuple[str, ...]
    update_ldcache: bool
    proc_driver_gpus: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (self.files or self.symlinks or self.update_ldcache
                    or self.proc_driver_gpus)


def work_for_plan(plan: Plan, *, mount_files: bool) -> DriverWork:
    kinds = {f.kind for f in plan.driver_files if f.kind in LIBRARY_KINDS}
    kinds |= {s.kind for s in plan.symlinks if s.kind in LIBRARY_KINDS}
    return DriverWork(plan.driver_files if mount_files else (),
                      tuple((s.kind, s.path, s.target) for s in plan.symlinks),
                      tuple(sorted(kinds)), plan.update_ldcache, plan.proc_driver_gpus)


def prepare(work: DriverWork, *, host_root: str = "/",
            ldconfig_path: str = ldconfig.DEFAULT_LDCONFIG) -> Prepared:
    """Open on the host what the container will get: detached mounts (hook mode), the
    ldconfig memfd, the /proc view. Raises ApplyError naming the file."""
    prep = Prepared(symlinks=list(work.symlinks), libdir_kinds=work.library_kinds)
    try:
        for f in work.files:
            prep.mounts.append((f.kind, f.container_path, f.host_path,
                                _open_host_file(f.kind, f.host_path)))
        if work.update_ldcache:
            prep.ldconfig_fd = ldconfig.sealed_copy(ldconfig_path)
        if work.proc_driver_gpus:
            built = procview.build(host_root, work.proc_driver_gpus)
            if built is None:
                prep.notes.append(f"{procview.host_dir(host_root)} does not exist (no driver "
                                  f"loaded): no /proc/driver/nvidia view to mount")
            else:
                prep.view_fd, notes = built
                prep.notes += notes
    except BaseException:
        prep.close()
        raise
    return prep


def _open_host_file(kind: str, host_path: str) -> int:
    try:
        fd = mountapi.clone_tree(mountapi.AT_FDCWD, host_path, recursive=kind == "socket")
    except OSError as e:
        raise ApplyError(f"driver file {host_path}: cannot open it on the host for a bind "
                         f"mount: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if kind == "socket":
            ok, want = stat.S_ISSOCK(mode) or stat.S_ISDIR(mode), "socket or directory"
        else:
            ok, want = stat.S_ISREG(mode), "regular file"
        if not ok:
            raise ApplyError(f"driver file {host_path}: expected a {want} on the host")
        attrs = mountapi.MOUNT_ATTR_NOSUID | mountapi.MOUNT_ATTR_NODEV
        if kind != "socket":
            attrs |= mountapi.MOUNT_ATTR_RDONLY
        if kind not in EXEC_KINDS:
            attrs |= mountapi.MOUNT_ATTR_NOEXEC
        mountapi.set_attrs(fd, attrs)
    except OSError as e:
        os.close(fd)
        raise ApplyError(f"driver file {host_path}: cannot set mount flags: "
                         f"{e.strerror}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


# ---------------------------------------------------------------------------------------------
# the two entry points


def apply_driver(plan: Plan, pid: int, rootfs: str, *, host_root: str = "/",
                 ldconfig_path: str = ldconfig.DEFAULT_LDCONFIG,
                 open_root: Callable[[], int] | None = None) -> DriverReport:
    """Hook mode: mount the plan's driver files into the container whose init is `pid`, then
    links, ld cache and /proc view, in a child that joined its mount namespace. `open_root`
    opens the identity-checked rootfs there (gpuhook.enforce passes its own). Undoes its work
    and raises ApplyError on failure."""
    work = work_for_plan(plan, mount_files=True)
    if work.empty:
        return DriverReport()
    prep = prepare(work, host_root=host_root, ldconfig_path=ldconfig_path)
    opener = open_root or (lambda: _open_plain(rootfs))
    try:
        data = ns.run_in_mount_ns(pid, lambda: _with_root(opener, lambda fd: apply_in_ns(
            prep, fd, rootfs, library_dir).as_json()), caps=DRIVER_CAPS)
    except ApplyError as e:
        raise ApplyError(f"driver files for container pid {pid}: {e}") from None
    finally:
        prep.close()
    return DriverReport.from_json(data)


def undo_driver(report: DriverReport, pid: int, rootfs: str,
                open_root: Callable[[], int] | None = None) -> list[str]:
    """Undo a finished `apply_driver` (a later step failed); return what could not be."""
    opener = open_root or (lambda: _open_plain(rootfs))
    try:
        failed = ns.run_in_mount_ns(pid, lambda: _with_root(
            opener, lambda fd: undo_in_ns(report, fd)), caps=DRIVER_CAPS)
    except ApplyError:
        return report.mounts + [p for p, _ in report.links] + [p for p, _ in report.written]
    return [str(p) for p in failed]


def apply_in_current_ns(work: DriverWork, rootfs: str, *, host_root: str = "/",
                        ldconfig_path: str = ldconfig.DEFAULT_LDCONFIG,
                        libdirs: Callable[[int], LibDir] = library_dir) -> list[str]:
    """Spec mode (createContainer hook, already in the container's mount namespace before
    pivot_root, rootfs at its bundle path): links, ld cache, /proc view, in a forked child
    with only DRIVER_CAPS. Returns the log lines; raises ApplyError after undoing."""
    if work.empty:
        return []
    prep = prepare(work, host_root=host_root, ldconfig_path=ldconfig_path)
    try:
        data = ns.run_forked(lambda: _with_root(lambda: _open_plain(rootfs), lambda fd: apply_in_ns(
            prep, fd, rootfs, libdirs).as_json()), caps=DRIVER_CAPS)
    finally:
        prep.close()
    return DriverReport.from_json(data).lines()


def _open_plain(rootfs: str) -> int:
    """The rootfs by its path: the runtime's own (bundle) path, as runc uses it."""
    try:
        return os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise ApplyError(f"cannot open container rootfs {rootfs}: {e.strerror}") from None


def _with_root(opener: Callable[[], int], fn: Callable[[int], Any]) -> Any:
    fd = opener()
    try:
        return fn(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# in the container's mount namespace (a forked child)


def apply_in_ns(prep: Prepared, root_fd: int, rootfs: str,
                libdirs: Callable[[int], LibDir] = library_dir) -> DriverReport:
    """Do the work under the rootfs dir fd `root_fd`; on failure undo it and raise."""
    report = DriverReport(notes=list(prep.notes))
    old_umask = os.umask(0o022)
    try:
        dirs = libdirs(root_fd) if prep.libdir_kinds or prep.mounts else LibDir("", "")
        for kind, path, host, fd in prep.mounts:
            _mount_one(root_fd, rootfs, _container_path(kind, path, dirs, root_fd), host, fd,
                       report)
        for kind, path, target in prep.symlinks:
            _link_one(root_fd, rootfs, _container_path(kind, path, dirs, root_fd), target,
                      report)
        conf_dirs = [dirs.for_kind(k) for k in prep.libdir_kinds]
        if dirs.musl_path_file is not None and conf_dirs:
            _update_musl_path(root_fd, rootfs, dirs.musl_path_file, conf_dirs, report)
        elif prep.ldconfig_fd is not None:
            _write_conf(root_fd, rootfs, conf_dirs, report)
            _backup_cache(root_fd, report)
            ldconfig.run(prep.ldconfig_fd, root_fd, rootfs)
        if prep.view_fd is not None:
            _mount_view(root_fd, rootfs, prep.view_fd, report)
    except BaseException as e:
        stuck = undo_in_ns(report, root_fd)
        if isinstance(e, ApplyError) and stuck:
            raise ApplyError(f"{e}; could not undo: {', '.join(stuck)}") from None
        raise
    finally:
        os.umask(old_umask)
    return report


def _container_path(kind: str, path: str, dirs: LibDir, root_fd: int) -> str:
    if kind in LIBRARY_KINDS:
        if "/" in path or path in ("", ".", ".."):
            raise ApplyError(f"library name {path!r} is not a plain file name")
        return f"{dirs.for_kind(kind)}/{path}"
    return merged_usr(root_fd, path)


MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


def merged_usr(root_fd: int, path: str) -> str:
    """`/lib/firmware/...` -> `/usr/lib/firmware/...` when the rootfs's `/lib` is the
    merged-/usr link (its text exactly `usr/lib` or `/usr/lib`, as Debian >= 12, Ubuntu, Fedora
    ship it). The link is recognised by its text, never followed: the rewritten path is then
    walked with O_NOFOLLOW like any other. Any other link stays a refusal."""
    parts = split_container_path(path)
    top = parts[0]
    if top not in MERGED_USR or len(parts) < 2:
        return path
    try:
        text = os.readlink(top, dir_fd=root_fd)
    except OSError:
        return path  # a real directory, or absent: walk it as it is
    if text in (f"usr/{top}", f"/usr/{top}"):
        return "/usr/" + "/".join(parts)
    return path


def _walk(root_fd: int, rootfs: str, parts: Sequence[str], report: DriverReport | None) -> int:
    """Open rootfs/parts... as a directory fd without following links; create missing
    directories when `report` is given (recorded for undo)."""
    fd = os.dup(root_fd)
    walked = ""
    try:
        for name in parts:
            walked += "/" + name
            try:
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if report is None:
                    raise
                try:
                    os.mkdir(name, DIR_MODE, dir_fd=fd)
                    report.dirs.append(walked)
                except FileExistsError:
                    pass
                nfd = _open_dir(fd, name, walked, rootfs)
            except OSError as e:
                raise _walk_error(walked, rootfs, e) from None
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_dir(fd: int, name: str, walked: str, rootfs: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=fd)
    except OSError as e:
        raise _walk_error(walked, rootfs, e) from None


def _walk_error(walked: str, rootfs: str, e: OSError) -> ApplyError:
    if e.errno in (40, 20):  # ELOOP, ENOTDIR
        what = "a symlink" if e.errno == 40 else "not a directory"
        return ApplyError(f"refusing to place driver files under {walked} in rootfs {rootfs}: "
                          f"it is {what} (gpuhook never follows links in a container rootfs)")
    return ApplyError(f"cannot open {walked} in rootfs {rootfs}: {e.strerror}")


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _mount_one(root_fd: int, rootfs: str, path: str, host: str, tree_fd: int,
               report: DriverReport) -> None:
    parts = split_container_path(path)
    d = _walk(root_fd, rootfs, parts[:-1], report)
    try:
        name = parts[-1]
        st = _lstat(d, name)
        is_dir = stat.S_ISDIR(os.fstat(tree_fd).st_mode)
        if st is None:
            try:
                if is_dir:
                    os.mkdir(name, DIR_MODE, dir_fd=d)
                    report.dirs.append(path)
                else:
                    os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                     | os.O_CLOEXEC, 0o644, dir_fd=d))
                    report.files.append(path)
            except OSError as e:
                raise ApplyError(f"cannot create mount point {path} in rootfs {rootfs}: "
                                 f"{e.strerror}") from None
        elif stat.S_ISREG(st.st_mode) and not is_dir:
            report.notes.append(f"{path}: the image's own file is covered by the host's")
        elif stat.S_ISDIR(st.st_mode) and is_dir:
            report.notes.append(f"{path}: the image's own directory is covered by the host's")
        else:
            what = "a symlink" if stat.S_ISLNK(st.st_mode) else (
                "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file")
            raise ApplyError(f"cannot mount driver file {host} on {path} in rootfs {rootfs}: "
                             f"it is {what} there")
        try:
            mountapi.move_mount_to(tree_fd, d, name)
        except OSError as e:
            raise ApplyError(f"cannot mount driver file {host} on {path} in rootfs {rootfs}: "
                             f"{e.strerror}") from None
        report.mounts.append(path)
    finally:
        os.close(d)


def _link_one(root_fd: int, rootfs: str, path: str, target: str,
              report: DriverReport) -> None:
    if not target or "\0" in target or len(target) > MAX_LINK_TEXT:
        raise ApplyError(f"symlink {path}: bad target {target[:64]!r}")
    parts = split_container_path(path)
    d = _walk(root_fd, rootfs, parts[:-1], report)
    try:
        name = parts[-1]
        st = _lstat(d, name)
        old: str | None = None
        if st is not None:
            if not stat.S_ISLNK(st.st_mode):
                kind = "directory" if stat.S_ISDIR(st.st_mode) else "file"
                report.notes.append(f"{path}: the image has its own {kind} there; left alone")
                return
            old = os.readlink(name, dir_fd=d)
            if old == target:
                return
            os.unlink(name, dir_fd=d)
        try:
            os.symlink(target, name, dir_fd=d)
        except OSError as e:
            if old is not None:
                os.symlink(old, name, dir_fd=d)
            raise ApplyError(f"cannot create symlink {path} in rootfs {rootfs}: "
                             f"{e.strerror}") from None
        report.links.append([path, old])
    finally:
        os.close(d)


def _write_conf(root_fd: int, rootfs: str, dirs: list[str], report: DriverReport) -> None:
    etc = _walk(root_fd, rootfs, ["etc"], report)
    try:
        if _lstat(etc, "ld.so.conf") is None:
            _replace_file(etc, "ld.so.conf", b"include /etc/ld.so.conf.d/*.conf\n")
            report.written.append([LD_SO_CONF, None])
    finally:
        os.close(etc)
    d = _walk(root_fd, rootfs, split_container_path(CONF_DIR), report)
    try:
        text = "".join(f"{x}\n" for x in dict.fromkeys(dirs)).encode()
        old = _read_regular(d, CONF_NAME)
        if old == text:
            return
        _replace_file(d, CONF_NAME, text)
        report.written.append([f"{CONF_DIR}/{CONF_NAME}",
                               None if old is None else _b64(old)])
    finally:
        os.close(d)


def _update_musl_path(root_fd: int, rootfs: str, path_file: str, dirs: list[str],
                      report: DriverReport) -> None:
    """musl has no ld cache. Its path file, when the image has one, replaces the default search
    path (which holds /usr/lib): add the library dirs to it; without one there is nothing to do."""
    parts = split_container_path(path_file)
    d = _walk(root_fd, rootfs, parts[:-1], None)
    try:
        old = _read_regular(d, parts[-1])
        if old is None:
            return
        lines = old.decode("utf-8", "replace").split()
        missing = [x for x in dirs if x not in lines]
        if not missing:
            return
        text = old + (b"" if old.endswith(b"\n") or not old else b"\n")
        _replace_file(d, parts[-1], text + "".join(f"{x}\n" for x in missing).encode())
        report.written.append([path_file, _b64(old)])
    finally:
        os.close(d)


def _backup_cache(root_fd: int, report: DriverReport) -> None:
    etc = _walk(root_fd, "", ["etc"], None)
    try:
        st = _lstat(etc, "ld.so.cache")
        if st is None:
            report.cache = ["absent"]
        elif stat.S_ISLNK(st.st_mode):
            report.cache = ["link", os.readlink("ld.so.cache", dir_fd=etc)]
        elif stat.S_ISREG(st.st_mode) and st.st_size <= MAX_CACHE_BACKUP:
            data = _read_regular(etc, "ld.so.cache")
            report.cache = ["file", _b64(data or b"")]
        else:
            raise ApplyError(f"{LD_SO_CACHE} in the rootfs is not a regular file of at most "
                             f"{MAX_CACHE_BACKUP} bytes")
    finally:
        os.close(etc)


def _mount_view(root_fd: int, rootfs: str, view_fd: int, report: DriverReport) -> None:
    try:
        d = _walk(root_fd, rootfs, ["proc", "driver"], None)
    except (ApplyError, FileNotFoundError):
        report.notes.append(f"{PROC_VIEW} does not exist in the container: no view mounted")
        return
    try:
        st = _lstat(d, "nvidia")
        if st is None or not stat.S_ISDIR(st.st_mode):
            report.notes.append(f"{PROC_VIEW} is not a directory in the container: "
                                f"no view mounted")
            return
        try:
            mountapi.move_mount_to(view_fd, d, "nvidia")
        except OSError as e:
            raise ApplyError(f"cannot mount the view on {PROC_VIEW} in rootfs {rootfs}: "
                             f"{e.strerror}") from None
        report.view = PROC_VIEW
    finally:
        os.close(d)


def _read_regular(dir_fd: int, name: str) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == 40:
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _replace_file(dir_fd: int, name: str, data: bytes) -> None:
    """Write `name` in `dir_fd` through a new temporary entry and rename (replacing whatever
    entry is there, a link included, never its target)."""
    tmp = f".{name}.gpuhook-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.close(fd)
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def undo_in_ns(report: DriverReport, root_fd: int) -> list[str]:
    """Undo `report` in reverse order; return what could not be undone."""
    stuck: list[str] = []

    def step(what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except (OSError, ApplyError):
            stuck.append(what)

    def at(path: str, fn: Callable[[int, str], None]) -> Callable[[], None]:
        def run() -> None:
            parts = split_container_path(path)
            d = _walk(root_fd, "", parts[:-1], None)
            try:
                fn(d, parts[-1])
            finally:
                os.close(d)
        return run

    if report.view:
        step(report.view, at(report.view, mountapi.detach_mount))
        report.view = None
    if report.cache is not None:
        step(LD_SO_CACHE, at(LD_SO_CACHE, lambda d, n: _restore(d, n, report.cache)))
    for path, old in reversed(report.written):
        step(path, at(path, _restoring_written(old)))
    for path, old in reversed(report.links):
        step(path, at(path, _relinking(old)))
    for path in reversed(report.mounts):
        step(path, at(path, mountapi.detach_mount))
    for path in reversed(report.files):
        step(path, at(path, lambda d, n: os.unlink(n, dir_fd=d)))
    for path in reversed(report.dirs):
        try:  # noqa: SIM105 (no contextlib on the start path)
            at(path, lambda d, n: os.rmdir(n, dir_fd=d))()
        except (OSError, ApplyError):  # someone else's entries, or gone
            pass
    return stuck


def _restore(d: int, name: str, old: list[Any] | None) -> None:
    if old is None or old[0] == "absent":
        _unlink_if_there(d, name)
    elif old[0] == "link":
        _unlink_relink(d, name, str(old[1]))
    else:
        _replace_file(d, name, binascii.a2b_base64(old[1]))


def _restoring_written(old: str | None) -> Callable[[int, str], None]:
    return lambda d, name: _restore(d, name, ["absent"] if old is None else ["file", old])


def _relinking(old: str | None) -> Callable[[int, str], None]:
    return lambda d, name: _unlink_relink(d, name, old)


def _unlink_if_there(d: int, name: str) -> None:
    try:  # noqa: SIM105 (no contextlib on the start path)
        os.unlink(name, dir_fd=d)
    except FileNotFoundError:
        pass


def _b64(data: bytes) -> str:
    """base64.b64encode(data).decode(), without base64's import of `re`."""
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _unlink_relink(d: int, name: str, old: str | None) -> None:
    _unlink_if_there(d, name)
    if old is not None:
        os.symlink(old, name, dir_fd=d)
