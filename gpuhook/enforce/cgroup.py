"""Find a container's device cgroup and allow the Plan's devices in it.

Discovery reads `/proc/<pid>/cgroup` (where the container is) and `/proc/self/mountinfo` (where
the hook sees the hierarchies), both under an injectable root. The mode is what the hook's own
mount namespace has at `/sys/fs/cgroup`: cgroup2 there means runc used v2 (BPF device
programs); anything else (a tmpfs of v1 controllers, possibly with a hybrid `unified` cgroup2
beside them) means v1 and the `devices` controller. In v2 mode `/proc/<pid>/cgroup` still lists
the v1 hierarchies, so it cannot tell the mode. No systemd assumptions.
"""

from __future__ import annotations

import os
import posixpath

from gpuhook.errors import ApplyError
from gpuhook.record import TYPE_CHECKING, dataclass
from gpuhook.text import decimal, mountinfo_unescape

if TYPE_CHECKING:  # annotations only (the createContainer hook skips the decide stages)
    from collections.abc import Sequence

    from gpuhook.decide.plan import CgroupRule

CGROUP_BASE = "/sys/fs/cgroup"


@dataclass(frozen=True)
class MountInfo:
    mount_id: int
    parent_id: int
    root: str  # the path inside the file system that is mounted here
    mount_point: str
    options: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]


@dataclass(frozen=True)
class CgroupEntry:
    hierarchy_id: int
    controllers: tuple[str, ...]  # () for the unified (v2) hierarchy
    path: str


@dataclass(frozen=True)
class DeviceCgroup:
    version: int  # 1 or 2
    path: str  # the container's cgroup directory as the hook sees it


def parse_mountinfo(text: str) -> list[MountInfo]:
    """/proc/<pid>/mountinfo -> mounts in file order (later mounts cover earlier ones)."""
    mounts = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            mounts.append(MountInfo(
                mount_id=int(fields[0]), parent_id=int(fields[1]),
                root=mountinfo_unescape(fields[3]), mount_point=mountinfo_unescape(fields[4]),
                options=tuple(fields[5].split(",")), fstype=fields[sep + 1],
                source=mountinfo_unescape(fields[sep + 2]),
                super_options=tuple(fields[sep + 3].split(",")) if len(fields) > sep + 3
                else ()))
        except (ValueError, IndexError):
            raise ApplyError(f"mountinfo line {n} is malformed: {line!r}") from None
    return mounts


def parse_cgroup_file(text: str) -> list[CgroupEntry]:
    """/proc/<pid>/cgroup -> entries ("5:devices:/x" -> CgroupEntry(5, ("devices",), "/x"))."""
    entries = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        hid, sep1, rest = line.partition(":")
        ctrls, sep2, path = rest.partition(":")
        if not (sep1 and sep2 and decimal(hid) is not None and path.startswith("/")):
            raise ApplyError(f"cgroup file line {n} is malformed: {line!r}")
        entries.append(CgroupEntry(int(hid), tuple(c for c in ctrls.split(",") if c), path))
    return entries


def cgroup_version(mounts: Sequence[MountInfo], base: str = CGROUP_BASE) -> int:
    """2 when the topmost mount at `base` is cgroup2, else 1."""
    at_base = [m for m in mounts if m.mount_point == base]
    return 2 if at_base and at_base[-1].fstype == "cgroup2" else 1


def locate_device_cgroup(mounts: Sequence[MountInfo], entries: Sequence[CgroupEntry],
                         base: str = CGROUP_BASE) -> DeviceCgroup:
    """The container's device cgroup directory, from parsed mountinfo and cgroup file."""
    if cgroup_version(mounts, base) == 2:
        unified = [e for e in entries if e.hierarchy_id == 0 and not e.controllers]
        if not unified:
            raise ApplyError(f"{base} is cgroup2 but the container has no unified cgroup "
                             f"(no '0::' line in its cgroup file)")
        mount = [m for m in mounts if m.mount_point == base][-1]
        return DeviceCgroup(2, _join(mount, unified[0].path))
    dev = [e for e in entries if "devices" in e.controllers]
    if not dev:
        known = ", ".join(",".join(e.controllers) or "unified" for e in entries) or "none"
        raise ApplyError(f"cgroup v1 mode ({base} is not cgroup2) but the container is in no "
                         f"'devices' hierarchy; its hierarchies: {known}")
    candidates = [m for m in mounts if m.fstype == "cgroup" and "devices" in m.super_options]
    if not candidates:
        raise ApplyError("cgroup v1 mode but no cgroup 'devices' controller is mounted in the "
                         "hook's mount namespace")
    # Prefer the usual place; otherwise the last mount (it covers earlier ones).
    usual = [m for m in candidates if posixpath.dirname(m.mount_point) == base]
    return DeviceCgroup(1, _join((usual or candidates)[-1], dev[0].path))


def _join(mount: MountInfo, cgroup_path: str) -> str:
    if ".." in cgroup_path.split("/"):
        raise ApplyError(f"the container's cgroup path {cgroup_path} escapes its hierarchy")
    root = mount.root.rstrip("/") or "/"
    if root != "/" and not (cgroup_path == root or cgroup_path.startswith(root + "/")):
        raise ApplyError(f"the container's cgroup {cgroup_path} is outside the hierarchy "
                         f"mounted at {mount.mount_point} (mount root {mount.root})")
    rel = cgroup_path[len(root):] if root != "/" else cgroup_path
    rel = posixpath.normpath("/" + rel.lstrip("/"))
    return mount.mount_point.rstrip("/") + (rel if rel != "/" else "")


def find_device_cgroup(pid: int, root: str = "/") -> DeviceCgroup:
    """Read `<root>/proc/<pid>/cgroup` and `<root>/proc/self/mountinfo`; the returned path is
    under `root` too (tests point `root` at a temporary tree)."""
    def read(rel: str) -> str:
        path = posixpath.join(root, rel)
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                return f.read()
        except OSError as e:
            raise ApplyError(f"cannot read {path}: {e.strerror}") from None

    mounts = parse_mountinfo(read("proc/self/mountinfo"))
    entries = parse_cgroup_file(read(f"proc/{pid}/cgroup"))
    found = locate_device_cgroup(mounts, entries)
    path = posixpath.join(root, found.path.lstrip("/"))
    if not os.path.isdir(path):
        raise ApplyError(f"the container's cgroup v{found.version} directory {path} does not "
                         f"exist (container pid {pid})")
    return DeviceCgroup(found.version, path)


def v1_rule_line(rule: CgroupRule) -> str:
    """The devices.allow / devices.deny line for `rule`: 'c 195:1 rwm'."""
    if rule.type not in ("c", "b", "a") or not rule.access or \
            set(rule.access) - set("rwm"):
        raise ApplyError(f"cgroup rule {rule} is not a valid device rule")
    return f"{rule.type} {rule.major}:{rule.minor} {rule.access}"


def allow_v1(cgroup_dir: str, rules: Sequence[CgroupRule]) -> list[str]:
    """Write one devices.allow line per rule (one write each: the kernel parses one rule per
    write). On failure, deny what this call allowed and raise ApplyError."""
    lines = [v1_rule_line(r) for r in rules]
    written: list[str] = []
    path = posixpath.join(cgroup_dir, "devices.allow")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as e:
        raise ApplyError(f"cannot open {path}: {e.strerror}") from None
    try:
        for line in lines:
            try:
                os.write(fd, line.encode())
            except OSError as e:
                stuck = deny_v1(cgroup_dir, written)
                left = f"; could not deny again: {', '.join(stuck)}" if stuck else ""
                raise ApplyError(f"writing {line!r} to {path}: {e.strerror}{left}") from None
            written.append(line)
    finally:
        os.close(fd)
    return written


def deny_v1(cgroup_dir: str, lines: Sequence[str]) -> list[str]:
    """Undo allow lines (best effort); return the lines that could not be denied."""
    failed: list[str] = []
    path = posixpath.join(cgroup_dir, "devices.deny")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return list(lines)
    try:
        for line in lines:
            try:
                os.write(fd, line.encode())
            except OSError:
                failed.append(line)
    finally:
        os.close(fd)
    return failed
