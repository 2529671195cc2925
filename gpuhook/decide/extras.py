"""IMEX channels and gated device families, judged against the grant and added to a Plan. Pure.

What exists on the host comes in as data (gpuhook/host/devnodes.py reads it); the Plan gains the
nodes and their cgroup rules, so the hook, the runtime shim, dry-run and CDI generation all
apply them the way they apply a GPU's nodes.
"""

from __future__ import annotations

from gpuhook.config import Config
from gpuhook.decide.cdi_request import ALL_CHANNELS, ENV_IMEX, GATED_ENV, Asked
from gpuhook.decide.plan import CgroupRule, DeviceNode, DriverFile, Plan
from gpuhook.decide.policy import untrusted_env_reason
from gpuhook.decide.request import Ignored
from gpuhook.errors import HostError
from gpuhook.record import TYPE_CHECKING, dataclass, field, replace

if TYPE_CHECKING:
    from collections.abc import Mapping

IMEX_DIR = "/dev/nvidia-caps-imex-channels"
IMEX_MAJOR_NAME = "nvidia-caps-imex-channels"
# The toolkit's node sets (nvidia-container-toolkit v1.18 internal/discover/gds.go, mofed.go,
# gdrcopy.go, nvswitch.go), globbed under the host's /dev.
GATED_NODES = {
    "gds": ("/dev/nvidia-fs*",),
    "mofed": ("/dev/infiniband/uverbs*", "/dev/infiniband/rdma_cm"),
    "gdrcopy": ("/dev/gdrdrv",),
    "nvswitch": ("/dev/nvidia-nvswitchctl", "/dev/nvidia-nvswitch*"),
}


@dataclass(frozen=True)
class HostNode:
    """A character device node that exists on the host."""

    path: str  # as in the container: /dev/...
    major: int
    minor: int
    file_mode: int


# Files a family brings when its nodes exist (gds.go: /etc/cufile.json, and /run/udev, a directory,
# which gpuhook does not mount: driver files are regular files).
GATED_FILES = {"gds": ("/etc/cufile.json",)}


@dataclass(frozen=True)
class ExtraFacts:
    imex_major: int | None = None
    imex_channels: Mapping[int, HostNode] = field(default_factory=dict)  # channel -> node
    gated: Mapping[str, tuple[HostNode, ...]] = field(default_factory=dict)
    gated_files: Mapping[str, tuple[DriverFile, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Wanted:
    """The IMEX channels (ALL_CHANNELS for `all`) and gated families a container may have, and
    what was ignored on the way."""

    channels: tuple[int, ...] = ()
    families: tuple[str, ...] = ()
    ignored: tuple[Ignored, ...] = ()

    @property
    def host_facts_needed(self) -> bool:
        return bool(self.channels or self.families)


def extras_wanted(plan: Plan, asked: Asked, config: Config) -> Wanted:
    ignored: list[Ignored] = []
    channels = _channels(asked, plan.privileged, plan.privileged_reason, config, ignored)
    families = _families(asked, plan, config, ignored)
    return Wanted(channels, families, tuple(ignored))


def _channels(asked: Asked, privileged: bool, privileged_reason: str, config: Config,
              ignored: list[Ignored]) -> tuple[int, ...]:
    """The device plugin's imex/ mounts first (as upstream), else the env var, which only a
    privileged container is believed."""
    mounts_on = config.accept_nvidia_visible_devices_as_volume_mounts
    if asked.imex_mounts and mounts_on:
        if asked.imex_env:
            ignored.append(Ignored("envvar", f"{ENV_IMEX}={asked.imex_env_raw}",
                                   "the device plugin's imex/ mounts take precedence"))
        return asked.imex_mounts
    if asked.imex_mounts:
        ignored.extend(Ignored("volume-mounts", f"imex/{_channel_list((c,))}",
                               "accept-nvidia-visible-devices-as-volume-mounts is false")
                       for c in asked.imex_mounts)
    if not asked.imex_env:
        return ()
    if privileged or config.accept_nvidia_visible_devices_envvar_when_unprivileged:
        return asked.imex_env
    ignored.append(Ignored("envvar", f"{ENV_IMEX}={asked.imex_env_raw}",
                           untrusted_env_reason(privileged_reason)))
    return ()


def _families(asked: Asked, plan: Plan, config: Config, ignored: list[Ignored]
              ) -> tuple[str, ...]:
    """Families asked (env, which anyone writes), listed in the config, for a container granted
    a GPU through the trusted path: the device plugin's mounts, or privileged."""
    trusted = bool(plan.devices) and (plan.source == "volume-mounts" or plan.privileged)
    out: list[str] = []
    for family in asked.gated:
        value = f"{GATED_ENV[family]}=enabled"
        if family not in config.gated_device_families:
            ignored.append(Ignored("envvar", value,
                                   f"{family} is not listed in gated-device-families"))
        elif not trusted:
            ignored.append(Ignored("envvar", value, "honoured only for a container granted a "
                                   "GPU by the device plugin's mounts, or a privileged one"))
        else:
            out.append(family)
    return tuple(out)


def extend_plan(plan: Plan, asked: Asked, wanted: Wanted, facts: ExtraFacts) -> Plan:
    """The plan with the channels' and families' nodes and rules added (a node the plan already
    holds is not added twice), and what was ignored and noted on the way."""
    nodes = list(plan.device_nodes)
    rules = list(plan.cgroup_rules)
    notes = list(plan.notes) + list(asked.notes)

    def add(node: HostNode) -> None:
        dn = DeviceNode(node.path, "c", node.major, node.minor, node.file_mode)
        if all(n.path != dn.path for n in nodes):
            nodes.append(dn)
            rules.append(CgroupRule("c", node.major, node.minor, "rwm"))

    granted: list[int] = []
    if wanted.channels:
        if facts.imex_major is None:
            raise HostError(f"IMEX channel {_channel_list(wanted.channels)} asked, but "
                            f"proc/devices lists no {IMEX_MAJOR_NAME} major; is an IMEX-capable "
                            "driver loaded?")
        every = ALL_CHANNELS in wanted.channels
        for ch in sorted(facts.imex_channels) if every else wanted.channels:
            node = facts.imex_channels.get(ch)
            if node is None:
                have = ", ".join(str(c) for c in sorted(facts.imex_channels)) or "none"
                raise HostError(f"IMEX channel {ch} asked, but the host has no character device "
                                f"{IMEX_DIR}/channel{ch} (gpuhook creates no host node); "
                                f"existing channels: {have}")
            add(node)
            granted.append(ch)
        notes.append("IMEX channels granted: " + (_channel_list(tuple(granted)) or "none exist"))
    files = list(plan.driver_files)
    for family in wanted.families:
        found = facts.gated.get(family, ())
        for node in found:
            add(node)
        # As upstream: the family's files only with its nodes (gds.go Mounts).
        extra = [f for f in facts.gated_files.get(family, ()) if found and f not in files]
        files.extend(extra)
        if extra:
            notes.append(f"{family} files: " + ", ".join(f.container_path for f in extra))
        notes.append(f"{GATED_ENV[family]}=enabled: " + (
            "granted " + ", ".join(n.path for n in found) if found else
            f"no {' or '.join(GATED_NODES[family])} on the host, nothing added"))
    return replace(plan, device_nodes=tuple(nodes), cgroup_rules=tuple(rules),
                   driver_files=tuple(files),
                   imex_channels=tuple(granted), gated_families=wanted.families,
                   ignored=plan.ignored + asked.ignored + wanted.ignored, notes=tuple(notes))


def _channel_list(channels: tuple[int, ...]) -> str:
    return ", ".join("all" if c == ALL_CHANNELS else str(c) for c in channels)
