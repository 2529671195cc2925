"""Decision + resolved devices + host facts -> Plan: exactly what a container gets. Pure.

The hook, the runtime shim and dry-run all consume this Plan; none re-derives it.
"""

from __future__ import annotations

from gpuhook.decide.driver import select as select_driver
from gpuhook.decide.facts import HostInfo
from gpuhook.decide.policy import Decision
from gpuhook.decide.request import Ignored
from gpuhook.decide.resolve import Resolved
from gpuhook.record import dataclass, replace

NODE_MODE = 0o666
CTL_MINOR = 255
MODESET_MINOR = 254
CAPS_DIR = "/dev/nvidia-caps"


@dataclass(frozen=True)
class DeviceNode:
    path: str
    type: str
    major: int
    minor: int
    file_mode: int
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class CgroupRule:
    type: str
    major: int
    minor: int
    access: str


@dataclass(frozen=True)
class PlannedDevice:
    kind: str  # gpu | mig
    index: str  # "0", or "<gpu>:<mig>"
    uuid: str
    minor: int  # the GPU's NVML minor (the parent's for MIG)
    name: str
    parent_uuid: str = ""
    gi: int = -1
    ci: int = -1
    profile: str = ""
    capability_nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Mount:
    source: str
    destination: str
    options: tuple[str, ...]


# What a Plan injects besides device nodes: driver files (bind mounts) and symlinks.
DRIVER_KINDS = ("library", "library32", "binary", "firmware", "socket", "config")


@dataclass(frozen=True)
class DriverFile:
    kind: str  # one of DRIVER_KINDS
    # Absolute path on the real root (host-root already applied) of the resolved file, never a
    # link: a regular file; for "socket" a socket, or the MPS pipe directory.
    host_path: str
    # Absolute path in the container; for "library"/"library32" the bare file name
    # ("libcuda.so.550.54.15"): its directory is the rootfs's library dir, chosen at apply time
    # (gpuhook.enforce.libdir.library_dir).
    container_path: str


@dataclass(frozen=True)
class Symlink:
    kind: str  # "library" / "library32": `path` is relative to that library dir; "abs": absolute
    path: str  # the link's name: "libcuda.so.1", "libcuda.so"
    target: str  # the link's text: "libcuda.so.550.54.15", "libcuda.so.1"


@dataclass(frozen=True)
class Plan:
    privileged: bool
    privileged_reason: str
    source: str
    device_ids: tuple[str, ...]
    ignored: tuple[Ignored, ...]
    devices: tuple[PlannedDevice, ...]
    device_nodes: tuple[DeviceNode, ...]
    cgroup_rules: tuple[CgroupRule, ...]
    driver_capabilities: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # only a runtime shim can still set these
    mounts: tuple[Mount, ...]
    notes: tuple[str, ...]
    mig_monitor: bool
    mig_config: bool
    imex_channels: tuple[int, ...] = ()  # IMEX channels whose nodes the plan holds
    gated_families: tuple[str, ...] = ()  # gds / mofed / gdrcopy / nvswitch, as granted
    # Driver files (interface shared by the shim's spec mode and the hooks; see mount_options).
    driver_files: tuple[DriverFile, ...] = ()
    symlinks: tuple[Symlink, ...] = ()
    update_ldcache: bool = False  # True when any library is injected
    # PCI bus ids ("0000:07:00.0", as named in /proc/driver/nvidia/gpus) of the granted GPUs,
    # for the /proc/driver/nvidia view; empty: no view.
    proc_driver_gpus: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.device_nodes


def mount_options(kind: str) -> tuple[str, ...]:
    """Bind-mount options for a DriverFile of `kind`: read-only, nosuid, nodev; noexec too
    except for libraries (mmap(PROT_EXEC) of a library on a noexec mount fails, so dlopen would)
    and binaries; sockets (and the MPS pipe dir) read-write, noexec."""
    if kind not in DRIVER_KINDS:
        raise ValueError(f"unknown driver file kind {kind!r}")
    if kind == "socket":
        return ("rbind", "nosuid", "nodev", "noexec")
    base = ("bind", "ro", "nosuid", "nodev")
    return base if kind in ("library", "library32", "binary") else (*base, "noexec")


def needed_capabilities(decision: Decision, devices: tuple[Resolved, ...]) -> list[str]:
    """The mig-minors names the plan will need, in plan order."""
    names: list[str] = []
    for dev in devices:
        if dev.mig is not None:
            names.extend(mig_capability_names(dev))
    if decision.mig_monitor:
        names.append("monitor")
    if decision.mig_config:
        names.append("config")
    return list(dict.fromkeys(names))


def mig_capability_names(dev: Resolved) -> tuple[str, str]:
    assert dev.mig is not None
    gi = f"gpu{dev.gpu.minor}/gi{dev.mig.gi}"
    return f"{gi}/access", f"{gi}/ci{dev.mig.ci}/access"


def needs_host(decision: Decision, devices: tuple[Resolved, ...]) -> bool:
    """Whether the plan holds any node, and so needs the host's majors (and capabilities)."""
    return decision.control_nodes or bool(devices)


def build_plan(decision: Decision, devices: tuple[Resolved, ...], host: HostInfo | None,
               extra_notes: tuple[str, ...] = ()) -> Plan:
    """`host` may be None only when `needs_host` is false: then the plan holds no node."""
    if not needs_host(decision, devices):
        return _plan(decision, (), (), (), (), list(decision.notes) + list(extra_notes))
    if host is None:
        raise ValueError("build_plan: the plan has nodes but no host facts were given")
    majors = host.majors
    nodes: list[DeviceNode] = []
    rules: list[CgroupRule] = []
    planned: list[PlannedDevice] = []
    seen: set[tuple[str, int, int, int]] = set()  # the nodes' fields: `in nodes` is O(n) each

    def add(path: str, major: int, minor: int, mode: int, access: str) -> None:
        if (path, major, minor, mode) not in seen:
            seen.add((path, major, minor, mode))
            nodes.append(DeviceNode(path, "c", major, minor, mode))
            rules.append(CgroupRule("c", major, minor, access))

    def add_cap(name: str) -> str:
        cap = host.capabilities[name]
        assert majors.caps is not None, "capabilities read without an nvidia-caps major"
        path = f"{CAPS_DIR}/nvidia-cap{cap.minor}"
        # Capability nodes are checked by the driver on open; read access is all it needs.
        add(path, majors.caps, cap.minor, cap.file_mode, "r")
        return path

    add("/dev/nvidiactl", majors.frontend, CTL_MINOR, NODE_MODE, "rwm")
    add("/dev/nvidia-uvm", majors.uvm, 0, NODE_MODE, "rwm")
    add("/dev/nvidia-uvm-tools", majors.uvm, 1, NODE_MODE, "rwm")
    if devices and "display" in decision.driver_capabilities:
        add("/dev/nvidia-modeset", majors.frontend, MODESET_MINOR, NODE_MODE, "rwm")
    for dev in devices:
        add(f"/dev/nvidia{dev.gpu.minor}", majors.frontend, dev.gpu.minor, NODE_MODE, "rwm")
        if dev.mig is None:
            planned.append(PlannedDevice("gpu", dev.index, dev.uuid, dev.gpu.minor,
                                         dev.gpu.name))
            continue
        caps = tuple(add_cap(n) for n in mig_capability_names(dev))
        planned.append(PlannedDevice("mig", dev.index, dev.uuid, dev.gpu.minor, dev.gpu.name,
                                     parent_uuid=dev.gpu.uuid, gi=dev.mig.gi, ci=dev.mig.ci,
                                     profile=dev.mig.profile, capability_nodes=caps))
    if decision.mig_monitor:
        add_cap("monitor")
    if decision.mig_config:
        add_cap("config")

    env: tuple[tuple[str, str], ...] = ()
    notes = list(decision.notes) + list(extra_notes)
    if decision.mig_monitor or any(d.mig is not None for d in devices):
        # MIG devices and monitoring tools enumerate in PCI order; the hook cannot change env
        # after create, so only the runtime shim applies this.
        env = (("CUDA_DEVICE_ORDER", "PCI_BUS_ID"),)
        notes.append("env CUDA_DEVICE_ORDER=PCI_BUS_ID: set by gpuhook-runtime (spec mode); "
                     "a prestart hook cannot change env")
    plan = _plan(decision, tuple(planned), tuple(nodes), tuple(rules), env, notes)
    if host.driver is None or not decision.driver_capabilities:
        return plan
    return _with_driver(plan, decision.driver_capabilities, devices, host)


def _with_driver(plan: Plan, caps: tuple[str, ...], devices: tuple[Resolved, ...],
                 host: HostInfo) -> Plan:
    """The plan plus the driver files, symlinks, ld cache and /proc view its capabilities ask
    for. Raises MissingDriver (a HostError) when a GPU needs libcuda and the driver has none."""
    assert host.driver is not None
    sel = select_driver(caps, host.driver, host.sockets, gpus_granted=bool(devices))
    libs = tuple(DriverFile(kind, lib.host_path, lib.name) for kind, lib in sel.libraries)
    files = tuple(dict.fromkeys(libs + tuple(sel.files)))
    return replace(
        plan,
        driver_files=files,
        symlinks=tuple(dict.fromkeys(Symlink(*link) for link in sel.links)),
        update_ldcache=bool(libs),
        proc_driver_gpus=tuple(dict.fromkeys(d.gpu.pci_bus_id for d in devices)),
        notes=plan.notes + tuple(sel.notes),
    )


def _plan(decision: Decision, devices: tuple[PlannedDevice, ...],
          nodes: tuple[DeviceNode, ...], rules: tuple[CgroupRule, ...],
          env: tuple[tuple[str, str], ...], notes: list[str]) -> Plan:
    return Plan(
        privileged=decision.privileged,
        privileged_reason=decision.privileged_reason,
        source=decision.source,
        device_ids=decision.device_ids,
        ignored=decision.ignored,
        devices=devices,
        device_nodes=nodes,
        cgroup_rules=rules,
        driver_capabilities=decision.driver_capabilities,
        env=env,
        mounts=(),
        notes=tuple(notes),
        mig_monitor=decision.mig_monitor,
        mig_config=decision.mig_config,
    )
