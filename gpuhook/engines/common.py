"""What every engine's registration shares: the options, a file Change computed before anything
is written (so `--dry-run` prints the very diff that `install` writes), backups, the dpkg check,
and finding gpuhook's own executables."""

from __future__ import annotations

import difflib
import glob
import json
import os
import shutil
import sys
from dataclasses import dataclass

from gpuhook.atomic import fsync_dir, write_atomic

BACKUP_SUFFIX = ".gpuhook.bak"
RUNC_V2 = "io.containerd.runc.v2"
RUNTIME_EXE = "gpuhook-runtime"

DEFAULTS = {
    "containerd_config": "/etc/containerd/config.toml",
    "containerd_drop_in_dir": "/etc/containerd/conf.d",
    "crio_drop_in_dir": "/etc/crio/crio.conf.d",
    "docker_config": "/etc/docker/daemon.json",
    "hooks_dir": "/usr/share/containers/oci/hooks.d",
}
DROP_IN_NAME = {"containerd": "99-gpuhook.toml", "crio": "99-gpuhook.conf"}
HOOK_FILE = "gpuhook.json"
PACKAGE = "gpuhook"
DPKG_INFO_DIR = "/var/lib/dpkg/info"
RESTART = {
    "containerd": "systemctl restart containerd",
    "crio": "systemctl restart crio",
    "docker": "systemctl restart docker",
    "podman": "",
}


class InstallError(Exception):
    """The file cannot be edited safely; the message says which file and why."""


@dataclass(frozen=True)
class Change:
    path: str
    old: bytes | None  # None: the file does not exist
    new: bytes | None  # None: remove the file
    backup: str | None = None  # install: copy `old` here first (kept if it exists already)
    drop_backup: str | None = None  # uninstall: the backup that `new` came from, to remove

    @property
    def changes(self) -> bool:
        return self.old != self.new


@dataclass(frozen=True)
class Options:
    runtime: str
    name: str = "nvidia"
    config: str | None = None
    set_as_default: bool = False
    drop_in: bool = False
    drop_in_dir: str | None = None
    hooks_dir: str | None = None
    runtime_binary: str = ""
    hook_binary: str = ""
    hook_config: str | None = None
    dpkg_info_dir: str = DPKG_INFO_DIR  # where <package>.list names the files a .deb owns


# ---- locating the executables -----------------------------------------------------------------

def find_executable(name: str) -> str:
    """`name` next to the running gpuhook script, next to the interpreter, else on PATH."""
    for d in (os.path.dirname(os.path.abspath(sys.argv[0])), os.path.dirname(sys.executable)):
        cand = os.path.join(d, name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    found = shutil.which(name)
    if found is None:
        raise InstallError(f"cannot find {name} next to {sys.argv[0]}, {sys.executable} or on "
                           "PATH; name it with --runtime-binary / --hook-binary")
    return os.path.abspath(found)


# ---- file helpers -----------------------------------------------------------------------------

def read_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise InstallError(f"{path}: {e.strerror}") from None


def text_of(data: bytes | None, path: str) -> str:
    if data is None:
        return ""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InstallError(f"{path}: not UTF-8") from None


def diff(changes: list[Change]) -> str:
    out: list[str] = []
    for c in changes:
        if not c.changes:
            continue
        old = text_of(c.old, c.path).splitlines(keepends=True)
        new = text_of(c.new, c.path).splitlines(keepends=True)
        out.extend(difflib.unified_diff(old, new, "/dev/null" if c.old is None else c.path,
                                        "/dev/null" if c.new is None else c.path))
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n\\ No newline at end of file\n"
    return "".join(out)


def write(changes: list[Change]) -> list[str]:
    """Apply the changes (backup first, then atomic replace). Returns one line per action."""
    done: list[str] = []
    for c in changes:
        if c.changes and c.backup and c.old is not None and not os.path.exists(c.backup):
            write_atomic(c.backup, c.old, c.path)
            done.append(f"backup: {c.backup}")
        if c.changes and c.new is None:
            os.unlink(c.path)
            fsync_dir(os.path.dirname(os.path.abspath(c.path)))
            done.append(f"removed: {c.path}")
        elif c.changes and c.new is not None:
            write_atomic(c.path, c.new, c.path)
            done.append(f"wrote: {c.path}")
        if c.drop_backup and os.path.exists(c.drop_backup):
            os.unlink(c.drop_backup)
            done.append(f"removed backup: {c.drop_backup}")
    return done


def owned_file(path: str, content: bytes) -> Change:
    old = read_file(path)
    return Change(path, old, content, backup=path + BACKUP_SUFFIX)


def remove_owned(path: str, opts: Options) -> Change:
    old = read_file(path)
    backup = read_file(path + BACKUP_SUFFIX)
    if backup is not None:
        return Change(path, old, backup, drop_backup=path + BACKUP_SUFFIX)
    if old is not None and _packaged(path, opts.dpkg_info_dir):
        raise InstallError(f"{path} belongs to package {PACKAGE} (listed in "
                           f"{opts.dpkg_info_dir}/{PACKAGE}.list); uninstall leaves it alone: "
                           f"remove the package instead (apt-get remove {PACKAGE})")
    return Change(path, old, None)


def _packaged(path: str, info_dir: str) -> bool:
    """Whether dpkg's file list of the package names `path` (read, dpkg is not run)."""
    wanted = {os.path.normpath(os.path.abspath(path)), os.path.realpath(path)}
    lists = [os.path.join(info_dir, f"{PACKAGE}.list"),
             *glob.glob(os.path.join(glob.escape(info_dir), f"{PACKAGE}:*.list"))]
    for name in lists:
        try:
            with open(name, encoding="utf-8", errors="replace") as f:
                listed = {os.path.normpath(line.rstrip("\n")) for line in f if line.strip()}
        except FileNotFoundError:
            continue
        except OSError as e:
            raise InstallError(f"{name}: {e.strerror}") from None
        if wanted & listed:
            return True
    return False


def toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)
