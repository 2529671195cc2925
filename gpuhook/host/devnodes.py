"""Host device nodes outside the GPU set: IMEX channels and the gated families' nodes, under
host-root. Only character devices count (lstat: a link is never followed); gpuhook never creates
a host node, so what is not here is not granted."""

from __future__ import annotations

import fnmatch
import os
import stat

from gpuhook.decide.extras import (
    GATED_FILES,
    GATED_NODES,
    IMEX_DIR,
    IMEX_MAJOR_NAME,
    ExtraFacts,
    HostNode,
)
from gpuhook.decide.plan import DriverFile
from gpuhook.errors import HostError
from gpuhook.host.proc import PROC_DEVICES, HostPaths, parse_proc_devices
from gpuhook.record import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

MAX_DIR_ENTRIES = 1 << 16


def char_node(host: HostPaths, path: str) -> HostNode | None:
    """The character device at container path `path` (host-root applied), or None."""
    try:
        st = os.lstat(host.path(path))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise HostError(f"cannot stat {host.path(path)}: {e.strerror}") from None
    if not stat.S_ISCHR(st.st_mode):
        return None
    return HostNode(path, os.major(st.st_rdev), os.minor(st.st_rdev), st.st_mode & 0o777)


def _entries(host: HostPaths, directory: str) -> list[str]:
    try:
        with os.scandir(host.path(directory)) as it:
            names: list[str] = []
            for entry in it:
                names.append(entry.name)
                if len(names) > MAX_DIR_ENTRIES:
                    raise HostError(f"{host.path(directory)}: more than {MAX_DIR_ENTRIES} "
                                    "entries")
            return sorted(names)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        raise HostError(f"cannot list {host.path(directory)}: {e.strerror}") from None


def read_imex(host: HostPaths) -> tuple[int | None, dict[int, HostNode]]:
    """The nvidia-caps-imex-channels major and the channel nodes that carry it, by channel."""
    major = parse_proc_devices(host.read_text(PROC_DEVICES)).get(IMEX_MAJOR_NAME)
    channels: dict[int, HostNode] = {}
    if major is None:
        return None, channels
    for name in _entries(host, IMEX_DIR):
        num = name[len("channel"):]
        if not name.startswith("channel") or not num.isdigit() or len(num) > 8:
            continue
        node = char_node(host, f"{IMEX_DIR}/{name}")
        # A node whose numbers are not the driver's channel<N> is not that channel.
        if node is not None and node.major == major and node.minor == int(num):
            channels[int(num)] = node
    return major, channels


def read_gated(host: HostPaths, families: Iterable[str]) -> dict[str, tuple[HostNode, ...]]:
    out: dict[str, tuple[HostNode, ...]] = {}
    for family in families:
        found: list[HostNode] = []
        for pattern in GATED_NODES[family]:
            directory, _, base = pattern.rpartition("/")
            names = _entries(host, directory) if "*" in base else [base]
            for name in names:
                if fnmatch.fnmatchcase(name, base):
                    node = char_node(host, f"{directory}/{name}")
                    if node is not None and node not in found:
                        found.append(node)
        out[family] = tuple(found)
    return out


def read_gated_files(host: HostPaths, families: Iterable[str]
                     ) -> dict[str, tuple[DriverFile, ...]]:
    """A family's files that exist on the host as regular files (lstat: never a link)."""
    out: dict[str, tuple[DriverFile, ...]] = {}
    for family in families:
        found: list[DriverFile] = []
        for path in GATED_FILES.get(family, ()):
            try:
                st = os.lstat(host.path(path))
            except FileNotFoundError:
                continue
            except OSError as e:
                raise HostError(f"cannot stat {host.path(path)}: {e.strerror}") from None
            if stat.S_ISREG(st.st_mode):
                found.append(DriverFile("config", host.path(path), path))
        out[family] = tuple(found)
    return out


def read_extra_facts(host: HostPaths, imex: bool, families: Iterable[str]) -> ExtraFacts:
    major, channels = read_imex(host) if imex else (None, {})
    families = tuple(families)
    return ExtraFacts(imex_major=major, imex_channels=channels, gated=read_gated(host, families),
                      gated_files=read_gated_files(host, families))
