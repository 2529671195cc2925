"""Plan nodes + the spec's mounts -> the mounts that would put a node somewhere other than the
runtime's own /dev. Pure.

The runtime mounts a fresh tmpfs on /dev for every container; that is the only place gpuhook
creates nodes, or asks runc to. A mount the pod chose over `/dev` itself (a bind: runc then
creates no device at all, libcontainer/rootfs_linux.go needsSetupDev, v1.1.5), over a directory
a node goes in (`/dev/nvidia-caps`) or over a node's own path would make the hook (or runc, in
spec mode) write device nodes into that volume: a host directory, or a volume another pod
mounts too. Such a container is refused, naming the mount; the hook checks the same again on the
real mounts (enforce/nodes.py), which also catches mounts not in the spec.
"""

from __future__ import annotations

import posixpath

from gpuhook.decide.plan import DeviceNode
from gpuhook.decide.spec import Mount
from gpuhook.record import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

DEV = "/dev"
BIND_OPTIONS = frozenset({"bind", "rbind"})


def clean_destination(destination: str) -> str:
    """An absolute, normalised container path, as runc's utils.CleanPath makes it."""
    return "/" + posixpath.normpath("/" + destination).lstrip("/")


def is_bind(mount: Mount) -> bool:
    return mount.type == "bind" or not BIND_OPTIONS.isdisjoint(mount.options)


def node_mount_conflicts(nodes: Sequence[DeviceNode], mounts: Sequence[Mount]) -> list[str]:
    """One message per mount that covers /dev (as a bind), a directory of a node, or a node."""
    if not nodes:
        return []
    covered: dict[str, str] = {}  # container path -> the node it would hold or contain
    for node in nodes:
        path = clean_destination(node.path)
        covered.setdefault(path, node.path)
        parent = posixpath.dirname(path)
        while parent not in (DEV, "/"):
            covered.setdefault(parent, node.path)
            parent = posixpath.dirname(parent)
    conflicts: list[str] = []
    for i, mount in enumerate(mounts):  # one pass: the node paths are a handful
        dest = clean_destination(mount.destination)
        if dest == DEV and is_bind(mount):
            conflicts.append(f"mounts[{i}] binds {mount.source!r} over /dev, where the device "
                             "nodes go")
        elif dest in covered:
            conflicts.append(f"mounts[{i}] mounts {mount.source!r} on {dest}, which would hold "
                             f"{covered[dest]}")
    return conflicts
