"""The node's side: driver and NVML, GPUs and MIG, the driver's files under `host-root`,
cgroups and BPF, the inventory snapshot."""

from __future__ import annotations

import os
from types import ModuleType

from gpuhook.config import Config
from gpuhook.doctor import FAIL, OK, WARN, Check
from gpuhook.enforce.cgroup import MountInfo
from gpuhook.errors import GpuhookError
from gpuhook.host.proc import MIG_MINORS, PROC_DEVICES, HostPaths, read_majors, read_mig_minors
from gpuhook.inventory.model import Inventory

PERSISTENCED_SOCKET = "run/nvidia-persistenced/socket"
MOUNTINFO = "proc/self/mountinfo"


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
    out.append(check_persistence(config, host))
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


def check_persistence(config: Config, host: HostPaths,
                      module: ModuleType | None = None) -> Check:
    """With NVML: each GPU's persistence mode (`module`: pynvml, injectable for tests). With a
    fake inventory there is no NVML to ask: the daemon's socket under host-root stands in."""
    fix = "nvidia-smi -pm 1, or: systemctl enable --now nvidia-persistenced"
    if config.inventory != "nvml":
        if os.path.exists(host.path(PERSISTENCED_SOCKET)):
            return Check("persistence", OK, "nvidia-persistenced is running (fake inventory: "
                                            "its socket checked, not NVML)")
        return Check("persistence", WARN,
                     f"no {host.path(PERSISTENCED_SOCKET)}: nvidia-persistenced is not "
                     "running, so the driver tears GPUs down when idle (slow starts)",
                     "systemctl enable --now nvidia-persistenced")
    from gpuhook.inventory.nvml import load_persistence

    try:
        modes = load_persistence(module)
    except GpuhookError as e:
        return Check("persistence", WARN, f"persistence mode not read: {e}", fix)
    off = [f"GPU {i} ({uuid})" for i, uuid, on in modes if on is False]
    if off:
        return Check("persistence", WARN,
                     f"persistence mode is off on {', '.join(off)}: the driver tears those "
                     "GPUs down when idle (slow container starts, lost clocks)", fix)
    unsupported = sum(1 for _, _, on in modes if on is None)
    return Check("persistence", OK, f"persistence mode on for {len(modes) - unsupported} "
                                    f"GPU(s)" + (f"; not supported on {unsupported}"
                                                 if unsupported else ""))


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
        out.append(_check_bpf(config, mounts))
        return out
    devices = [m for m in mounts if m.fstype == "cgroup" and "devices" in m.super_options]
    if not devices:
        return [Check("cgroup", FAIL, "cgroup v1 but no 'devices' controller is mounted",
                      "mount the devices controller at /sys/fs/cgroup/devices")]
    return [Check("cgroup", OK, f"cgroup v1: devices controller at {devices[-1].mount_point}")]


def _check_bpf(config: Config, mounts: list[MountInfo]) -> Check:
    if os.path.realpath(config.host_root) != "/":
        return Check("bpf", OK, f"not tried: host-root is {config.host_root}, not this host")
    cgroup2 = [m.mount_point for m in mounts if m.fstype == "cgroup2"]
    return bpf_attach_check(cgroup2[-1] if cgroup2 else None)


def bpf_attach_check(cgroup2_root: str | None) -> Check:
    """Load an allow-nothing device program and attach it to a scratch cgroup under
    `cgroup2_root` (made for this and removed after): what the hook does in cgroup v2 mode."""
    from gpuhook.enforce.bpf import (
        BPF_F_ALLOW_MULTI,
        allow_program,
        attach,
        detach,
        encode,
        load_device_program,
    )

    fix = "run as root (CAP_BPF/CAP_SYS_ADMIN); kernel with CONFIG_CGROUP_BPF=y"
    try:
        prog = load_device_program(encode(allow_program([])))
    except (OSError, GpuhookError) as e:
        return Check("bpf", FAIL, f"a BPF device program cannot be loaded: {e}", fix)
    try:
        if cgroup2_root is None:
            return Check("bpf", FAIL, "a BPF device program loads, but no cgroup2 is mounted "
                                      "to attach it to", "mount cgroup2 at /sys/fs/cgroup")
        scratch = os.path.join(cgroup2_root, f"gpuhook-doctor-{os.getpid()}")
        try:
            os.mkdir(scratch, 0o700)
        except OSError as e:
            return Check("bpf", FAIL, f"cannot make a scratch cgroup {scratch}: {e.strerror}",
                         fix)
        try:
            cg = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                attach(cg, prog, BPF_F_ALLOW_MULTI)
                detach(cg, prog)
            finally:
                os.close(cg)
        except OSError as e:
            return Check("bpf", FAIL, f"a BPF device program loads but cannot be attached to "
                                      f"a cgroup under {cgroup2_root}: {e.strerror}", fix)
        finally:
            os.rmdir(scratch)
        return Check("bpf", OK, f"a BPF device program loads and attaches (tried on a scratch "
                                f"cgroup under {cgroup2_root})")
    finally:
        os.close(prog)


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
    """Each capability's files as a container's plan would get them: the same discovery
    (host/driver.py: the host's ld.so.cache, each link resolved under host-root to the
    inventory's driver version) and selection (decide/driver.py) as the hook and the shim."""
    if not config.driver_files:
        return [Check("driver-files", OK, "driver-files = false: no driver file is injected")]
    if inv is None:
        return [Check("driver-files", FAIL, "not checked: the driver version is unknown",
                      "fix the nvml check first")]
    from gpuhook.decide.driver import (
        GRAPHICS_LIBS,
        UTILITY_BINS,
        VIDEO_LIBS,
        MissingDriver,
        select,
    )
    from gpuhook.host.driver import discover_driver, discover_sockets

    host = HostPaths(config.host_root)
    version = inv.driver_version
    fix = f"install the NVIDIA driver's user-space files (driver {version}) and run ldconfig"
    try:
        facts = discover_driver(host, version)
        sockets = discover_sockets(host)
    except GpuhookError as e:
        return [Check("driver-files", FAIL, str(e), fix)]
    # capability -> (severity when unusable, the libraries of which at least one must be there,
    # or all of them for compute and utility)
    needs = {"compute": (FAIL, ("libcuda.so",)), "utility": (FAIL, ("libnvidia-ml.so",)),
             "video": (WARN, VIDEO_LIBS), "graphics": (WARN, GRAPHICS_LIBS)}
    out = []
    for cap, (severity, own) in needs.items():
        try:
            sel = select((cap,), facts, sockets, gpus_granted=True)
        except MissingDriver as e:
            out.append(Check(f"driver-files:{cap}", FAIL, str(e), fix))
            continue
        have = [lib for kind, lib in sel.libraries if kind == "library"]
        stems = {lib.stem for lib in have}
        bins = {f.container_path.rsplit("/", 1)[-1] for f in sel.files if f.kind == "binary"}
        missing_bins = [b for b in UTILITY_BINS if b not in bins] if cap == "utility" else []
        usable = (all(s in stems for s in own) if severity == FAIL
                  else any(s in stems for s in own)) and "nvidia-smi" not in missing_bins
        detail = (f"{len(have)} libraries at driver {version}"
                  + (f" ({', '.join(sorted(lib.name for lib in have)[:6])}"
                     + (", ..." if len(have) > 6 else "") + ")" if have else "")
                  + "".join(f"; {n}" for n in sel.notes))
        if missing_bins:
            detail += f"; not found: {', '.join(missing_bins)}"
        out.append(Check(f"driver-files:{cap}", OK if usable else severity, detail,
                         "" if usable else fix))
    return out
