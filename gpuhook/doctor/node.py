"""The node's side: driver and NVML, GPUs and MIG, the driver's files under `host-root`,
cgroups and BPF, the inventory snapshot."""

from __future__ import annotations

import os

from gpuhook.config import Config
from gpuhook.doctor import FAIL, OK, WARN, Check
from gpuhook.errors import GpuhookError
from gpuhook.host.proc import MIG_MINORS, PROC_DEVICES, HostPaths, read_majors, read_mig_minors
from gpuhook.inventory.model import Inventory

PERSISTENCED_SOCKET = "run/nvidia-persistenced/socket"
MOUNTINFO = "proc/self/mountinfo"
LD_CACHE = "etc/ld.so.cache"
# What each driver capability needs at least, as the toolkit's discovery lists them
# (nvidia-container-toolkit internal/discover/graphics.go, compute/utility libraries).
CAPABILITY_FILES = {
    "compute": ("libcuda.so.1", "libnvidia-ptxjitcompiler.so.1"),
    "utility": ("libnvidia-ml.so.1",),
    "video": ("libnvcuvid.so.1", "libnvidia-encode.so.1"),
    "graphics": ("libGLX_nvidia.so.0", "libEGL_nvidia.so.0"),
}
UTILITY_BINARIES = ("nvidia-smi",)
BIN_DIRS = ("usr/bin", "usr/sbin", "bin", "sbin")


def check_inventory(config: Config) -> tuple[Inventory | None, list[Check]]:
    """NVML (or the fake inventory) loads; the driver version; the GPUs and their MIG mode."""
    from gpuhook.inventory.load import read_backend

    fake = config.inventory != "nvml"
    name = "fake inventory" if fake else "NVML"
    try:
        inv = read_backend(config)
    except GpuhookError as e:
        return None, [Check("nvml", FAIL, f"{name}: {e}",
                            "install the NVIDIA driver (libnvidia-ml.so.1) and load its modules"
                            if not fake else f"fix {config.inventory}")]
    checks = [Check("nvml", WARN if fake else OK,
                    f"{name}{' ' + config.inventory if fake else ''} loads: driver "
                    f"{inv.driver_version}, CUDA {inv.cuda_version}",
                    "a fake inventory is for tests: set inventory = \"nvml\"" if fake else "")]
    if not inv.gpus:
        checks.append(Check("gpus", FAIL, "no GPU found",
                            "check `nvidia-smi -L` and the driver's kernel log"))
        return inv, checks
    parts, empty_mig = [], []
    for g in inv.gpus:
        mig = f", MIG on ({len(g.mig_devices)} MIG devices)" if g.mig_enabled else ""
        parts.append(f"{g.index}: {g.name}{mig}")
        if g.mig_enabled and not g.mig_devices:
            empty_mig.append(str(g.index))
    if empty_mig:
        checks.append(Check("gpus", WARN,
                            f"MIG mode is on but no MIG device exists on GPU {', '.join(empty_mig)}"
                            " (no container can use it, whole GPUs are refused)",
                            "create instances: nvidia-smi mig -i N -cgi PROFILES -C"))
    else:
        checks.append(Check("gpus", OK, "; ".join(parts)))
    return inv, checks


def check_host(config: Config, inv: Inventory | None) -> list[Check]:
    """The daemon, the majors in proc/devices, and mig-minors when MIG is on."""
    host = HostPaths(config.host_root)
    out = []
    if os.path.exists(host.path(PERSISTENCED_SOCKET)):
        out.append(Check("persistence", OK, "nvidia-persistenced is running"))
    else:
        out.append(Check("persistence", WARN,
                         f"no {host.path(PERSISTENCED_SOCKET)}: nvidia-persistenced is not "
                         "running, so the driver tears GPUs down when idle (slow starts)",
                         "systemctl enable --now nvidia-persistenced"))
    mig = bool(inv and any(g.mig_enabled for g in inv.gpus))
    try:
        majors = read_majors(host)
    except GpuhookError as e:
        out.append(Check("majors", FAIL, str(e),
                         "load the driver: modprobe nvidia nvidia-uvm (nvidia-modprobe -u -c0)"))
    else:
        caps = f", nvidia-caps {majors.caps}" if majors.caps is not None else ""
        if mig and majors.caps is None:
            out.append(Check("majors", FAIL,
                             f"{host.path(PROC_DEVICES)} lists no nvidia-caps major but MIG is "
                             "on", "use a MIG-capable driver (R450 or later)"))
        else:
            out.append(Check("majors", OK, f"nvidia-frontend {majors.frontend}, nvidia-uvm "
                                           f"{majors.uvm}{caps}"))
    if not mig:
        out.append(Check("mig-minors", OK, "no GPU in MIG mode: not needed"))
        return out
    try:
        minors = read_mig_minors(host)
    except GpuhookError as e:
        out.append(Check("mig-minors", FAIL, str(e),
                         "load nvidia with the nvidia-caps device (nvidia-modprobe -f "
                         f"{host.path(MIG_MINORS)})"))
    else:
        out.append(Check("mig-minors", OK, f"{len(minors)} capability minors"))
    return out


def check_cgroups(config: Config) -> list[Check]:
    """cgroup v1 with the devices controller, or cgroup v2 (then a BPF device program must
    load: checked on the real root only)."""
    from gpuhook.enforce.cgroup import cgroup_version, parse_mountinfo

    host = HostPaths(config.host_root)
    try:
        mounts = parse_mountinfo(host.read_text(MOUNTINFO))
    except GpuhookError as e:
        return [Check("cgroup", FAIL, str(e), "mount /proc")]
    if cgroup_version(mounts) == 2:
        out = [Check("cgroup", OK, "cgroup v2: device rules are BPF programs")]
        out.append(_check_bpf(config))
        return out
    devices = [m for m in mounts if m.fstype == "cgroup" and "devices" in m.super_options]
    if not devices:
        return [Check("cgroup", FAIL, "cgroup v1 but no 'devices' controller is mounted",
                      "mount the devices controller at /sys/fs/cgroup/devices")]
    return [Check("cgroup", OK, f"cgroup v1: devices controller at {devices[-1].mount_point}")]


def _check_bpf(config: Config) -> Check:
    if os.path.realpath(config.host_root) != "/":
        return Check("bpf", OK, f"not tried: host-root is {config.host_root}, not this host")
    from gpuhook.enforce.bpf import allow_program, encode, load_device_program

    try:
        fd = load_device_program(encode(allow_program([])))
    except (OSError, GpuhookError) as e:
        return Check("bpf", FAIL, f"a BPF device program cannot be loaded: {e}",
                     "run as root (CAP_BPF/CAP_SYS_ADMIN); kernel with "
                     "CONFIG_CGROUP_BPF=y")
    os.close(fd)
    return Check("bpf", OK, "a BPF device program loads")


def check_snapshot(config: Config) -> Check:
    from gpuhook.inventory.snapshot import StaleSnapshot, fresh_snapshot

    try:
        fresh_snapshot(config)
    except StaleSnapshot as e:
        return Check("snapshot", WARN, f"{e}: every GPU container start reads NVML instead",
                     "gpuhook inventory refresh (and at boot, after MIG changes)")
    except GpuhookError as e:
        return Check("snapshot", WARN, str(e), "gpuhook inventory refresh")
    return Check("snapshot", OK, f"{config.inventory_cache} is fresh")


def check_driver_files(config: Config, inv: Inventory | None) -> list[Check]:
    """Each capability's libraries in the host's ld cache, and nvidia-smi for `utility`."""
    host = HostPaths(config.host_root)
    try:
        with open(host.path(LD_CACHE), "rb") as f:
            cache = f.read(64 << 20)
    except OSError as e:
        return [Check("driver-files", FAIL, f"{host.path(LD_CACHE)}: {e.strerror}",
                      "run ldconfig on the host")]
    out = []
    for cap, libs in CAPABILITY_FILES.items():
        missing = [lib for lib in libs if lib.encode() + b"\0" not in cache]
        if cap == "utility":
            missing += [b for b in UTILITY_BINARIES
                        if not any(os.path.isfile(host.path(f"{d}/{b}")) for d in BIN_DIRS)]
        if missing:
            out.append(Check(f"driver-files:{cap}", WARN if cap not in ("compute", "utility")
                             else FAIL, f"not found: {', '.join(missing)}",
                             "install the driver's user-space libraries "
                             f"(driver {inv.driver_version if inv else '?'}) and run ldconfig"))
        else:
            out.append(Check(f"driver-files:{cap}", OK, ", ".join(libs)))
    return out
