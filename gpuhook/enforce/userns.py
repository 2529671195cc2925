"""The container's user namespace, as the hook sees it from the host: whether it has its own,
and which host ids its ids are (/proc/<pid>/uid_map, gid_map).

In its own user namespace a container's /dev is a tmpfs that namespace mounted: the kernel
refuses to open a device node on it (SB_I_NODEV) and to create any entry there owned by an id
the namespace does not map (EOVERFLOW). runc therefore bind-mounts each node from the host's
/dev for such containers (libcontainer/rootfs_linux.go, createDevices, v1.1.5); the hook does the
same with nodes it makes on a private tmpfs of its own (see nodes.py).
"""

from __future__ import annotations

import os

from gpuhook.errors import ApplyError
from gpuhook.text import decimal


def has_own_user_namespace(pid: int) -> bool:
    """True when `pid` is in another user namespace than this process."""
    try:
        theirs = os.stat(f"/proc/{pid}/ns/user")
        ours = os.stat("/proc/self/ns/user")
    except OSError as e:
        raise ApplyError(f"container pid {pid}: {e.filename}: {e.strerror}") from None
    return (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino)


def parse_id_map(text: str) -> list[tuple[int, int, int]]:
    """uid_map / gid_map lines `inside outside count` -> [(inside, outside, count)]."""
    entries: list[tuple[int, int, int]] = []
    for line in text.splitlines():
        fields = [decimal(f, 10) for f in line.split()]
        if not fields:
            continue
        if len(fields) != 3 or None in fields:
            raise ApplyError(f"id map line {line[:80]!r} is not `inside outside count`")
        entries.append((fields[0], fields[1], fields[2]))  # type: ignore[arg-type]
    return entries


def to_host(entries: list[tuple[int, int, int]], inside: int, what: str) -> int:
    """The host id of namespace id `inside`; ApplyError when the namespace does not map it."""
    for start, outside, count in entries:
        if start <= inside < start + count:
            return outside + (inside - start)
    raise ApplyError(f"{what} {inside} is not mapped in the container's user namespace "
                     f"({len(entries)} ranges)")


def host_ids(pid: int, uid: int, gid: int) -> tuple[int, int]:
    """The host uid and gid that are `uid` and `gid` inside the user namespace of `pid`."""
    maps = []
    for name in ("uid_map", "gid_map"):
        path = f"/proc/{pid}/{name}"
        try:
            with open(path, encoding="ascii") as f:
                maps.append(parse_id_map(f.read(65536)))
        except (OSError, UnicodeDecodeError) as e:
            raise ApplyError(f"cannot read {path}: {e}") from None
    return to_host(maps[0], uid, "uid"), to_host(maps[1], gid, "gid")
