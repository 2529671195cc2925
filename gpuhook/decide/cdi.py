"""Plans -> a CDI spec (as plain data): what `gpuhook cdi generate` writes. Pure.

A CDI spec is one more consumer of the Plan: each device's edits are the nodes of the Plan that
gpuhook's own pipeline builds for a privileged container asking for that one device, minus the
control nodes every such Plan shares, which go to the spec's common edits. Nothing here decides
what a device is: the request, policy, resolve and plan stages do, as for a container start.

Facts transcribed from the CDI specification's Go package, container-device-interface
(tags.cncf.io/container-device-interface v1.1.0, specs-go/version.go `requiresV0x0`;
pkg/parser/parser.go for names):
- a device name starting with a digit needs 0.5.0, as does a device node's `hostPath`;
- a mount's `type` needs 0.4.0; annotations (spec or device) or a '.' in the kind's class need
  0.6.0; `additionalGids` or `intelRdt` need 0.7.0; `netDevices` need 1.1.0. gpuhook never writes
  annotations, additionalGids, intelRdt or netDevices.
- podman 4.3 (container-device-interface 0.5.x) knows the versions 0.1.0 .. 0.5.0 only and drops
  a whole file that names a newer one, or that holds a field it does not know (UnmarshalStrict).
"""

from __future__ import annotations

import posixpath

from gpuhook.config import Config
from gpuhook.decide.cdi_names import GPU_CLASS, GPU_KIND, IMEX_CLASS, IMEX_KIND
from gpuhook.decide.cdi_request import cdi_requests
from gpuhook.decide.extras import ExtraFacts, extend_plan, extras_wanted
from gpuhook.decide.facts import HostInfo, Majors
from gpuhook.decide.plan import (
    DeviceNode,
    Plan,
    build_plan,
    mig_capability_names,
    mount_options,
    needs_host,
)
from gpuhook.decide.policy import decide
from gpuhook.decide.request import CAP_SYS_ADMIN, ENV_DRIVER_CAPS, ENV_VISIBLE, extract_request
from gpuhook.decide.resolve import Resolved, resolve
from gpuhook.decide.spec import Mount, SpecView
from gpuhook.inventory.model import Inventory
from gpuhook.limits import DEV_NULL
from gpuhook.record import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any

CLASSES = (GPU_CLASS, IMEX_CLASS)
KINDS = {GPU_CLASS: GPU_KIND, IMEX_CLASS: IMEX_KIND}
DEFAULT_VERSION = "0.5.0"
# Every cdiVersion the CDI package has released, oldest first.
KNOWN_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0",
                  "1.0.0", "1.1.0")
VOID_ENV = "NVIDIA_VISIBLE_DEVICES=void"
# Where libraries go when the host's own dir is unknown (no library of that kind).
DEFAULT_LIB64 = "/usr/lib/x86_64-linux-gnu"
DEFAULT_LIB32 = "/usr/lib/i386-linux-gnu"

JsonObj = dict[str, "Any"]  # Any only to mypy: typing is not imported at run time

class CdiVersionError(ValueError):
    pass


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def required_version(spec: Mapping[str, Any]) -> str:
    """The lowest cdiVersion whose fields cover everything `spec` uses."""
    need = "0.3.0"

    def bump(v: str) -> None:
        nonlocal need
        if version_key(v) > version_key(need):
            need = v

    devices = spec.get("devices") or []
    edits = [spec.get("containerEdits") or {}] + [d.get("containerEdits") or {} for d in devices]
    if any(str(d.get("name", ""))[:1].isdigit() for d in devices):
        bump("0.5.0")
    for e in edits:
        if any(m.get("type") for m in e.get("mounts") or []):
            bump("0.4.0")
        if any(n.get("hostPath") for n in e.get("deviceNodes") or []):
            bump("0.5.0")
        if e.get("additionalGids") or "intelRdt" in e:
            bump("0.7.0")
        if e.get("netDevices"):
            bump("1.1.0")
    if spec.get("annotations") or any(d.get("annotations") for d in devices):
        bump("0.6.0")
    if "." in str(spec.get("kind", "")).partition("/")[2]:
        bump("0.6.0")
    return need


def choose_version(spec: Mapping[str, Any], asked: str | None) -> str:
    """`asked` (--cdi-version) when it is a known version that covers the fields used, else an
    error naming what is needed; None: the lowest that does, never below the default 0.5.0."""
    need = required_version(spec)
    if asked is None:
        return max(need, DEFAULT_VERSION, key=version_key)
    if asked not in KNOWN_VERSIONS:
        raise CdiVersionError(f"cdiVersion {asked!r} is not a CDI version; known: "
                              + ", ".join(KNOWN_VERSIONS))
    if version_key(asked) < version_key(need):
        raise CdiVersionError(f"cdiVersion {asked} is too old for this spec: its fields need "
                              f"{need} (device names starting with a digit need 0.5.0)")
    return asked


def node_entry(node: DeviceNode, access: str) -> JsonObj:
    return {"path": node.path, "type": node.type, "major": node.major, "minor": node.minor,
            "fileMode": node.file_mode, "permissions": access}


def plan_nodes(plan: Plan, skip: Iterable[str] = ()) -> list[JsonObj]:
    """The plan's nodes, each with the access its cgroup rule gives, except the paths in
    `skip`."""
    access = {(r.type, r.major, r.minor): r.access for r in plan.cgroup_rules}
    skipped = set(skip)
    return [node_entry(n, access.get((n.type, n.major, n.minor), "rwm"))
            for n in plan.device_nodes if n.path not in skipped]


def plan_edits(plan: Plan, skip: Iterable[str] = ()) -> JsonObj:
    edits: JsonObj = {}
    nodes = plan_nodes(plan, skip)
    if nodes:
        edits["deviceNodes"] = nodes
    if plan.env:
        edits["env"] = [f"{k}={v}" for k, v in plan.env]
    return edits


def build_spec(kind: str, devices: Sequence[tuple[Sequence[str], Plan]], common: Plan | None,
               version: str | None = None, void_env: bool = True,
               common_extra: Mapping[str, Any] | None = None) -> JsonObj:
    """The spec for `kind`: one device per name (a pair's names share its Plan's edits); what
    `common` holds (the control nodes every device needs) goes to the common edits, with
    NVIDIA_VISIBLE_DEVICES=void (`void_env`) so that no other injector acts on the container
    again. `version`: --cdi-version, checked against the fields used."""
    common_paths = {n.path for n in common.device_nodes} if common is not None else set()
    out_devices: list[JsonObj] = []
    seen: set[str] = set()
    for names, plan in devices:
        for name in names:
            if name in seen:
                raise ValueError(f"CDI device name {name!r} twice in {kind}")
            seen.add(name)
            # A fresh dict per name: a YAML dump would otherwise write anchors and aliases.
            out_devices.append({"name": name, "containerEdits": plan_edits(plan, common_paths)})
    common_edits: JsonObj = {"env": [VOID_ENV]} if void_env else {}
    nodes = plan_nodes(common) if common is not None else []
    if nodes:
        common_edits["deviceNodes"] = nodes
    common_edits.update(common_extra or {})
    spec: JsonObj = {"cdiVersion": DEFAULT_VERSION, "kind": kind, "devices": out_devices}
    if common_edits:
        spec["containerEdits"] = common_edits
    spec["cdiVersion"] = choose_version(spec, version)
    return spec


# --- Plans per CDI device: the same stages a container start runs --------------------------------

def _view(env: Mapping[str, str], mounts: tuple[Mount, ...] = ()) -> SpecView:
    """A privileged container asking through env (and mounts): the request CDI stands for."""
    return SpecView(oci_version="1.0.2", env=dict(env), mounts=mounts,
                    capabilities=frozenset({CAP_SYS_ADMIN}), root_path=None,
                    has_capabilities=True)


def plan_for_view(view: SpecView, config: Config, inv: Inventory, host: HostInfo) -> Plan:
    """request -> policy -> resolve -> plan, with the inventory and host facts given."""
    decision = decide(extract_request(view, config.volume_mount_root), config)
    devices = resolve(decision.device_ids, inv, config.allow_full_gpu_on_mig_enabled)
    return build_plan(decision, devices, host if needs_host(decision, devices) else None)


def capability_names(inv: Inventory) -> list[str]:
    """Every MIG device's GI and CI access capability (mig-minors keys)."""
    return [n for g in inv.gpus for m in g.mig_devices
            for n in mig_capability_names(Resolved(g, m))]


def gpu_device_plans(inv: Inventory, host: HostInfo, config: Config,
                     caps: Sequence[str]) -> tuple[list[tuple[list[str], Plan]], Plan]:
    """(names, Plan) per GPU and per MIG device -- index name and UUID -- plus `all`, and the
    Plan of what all of them share (the control nodes). A whole GPU in MIG mode is a device
    only when allow-full-gpu-on-mig-enabled is true, as for a container start."""
    cap_env = ",".join(caps)

    def plan(device_id: str) -> Plan:
        env = {ENV_VISIBLE: device_id, ENV_DRIVER_CAPS: cap_env}
        return plan_for_view(_view(env), config, inv, host)

    out: list[tuple[list[str], Plan]] = []
    for gpu in inv.gpus:
        if not gpu.mig_enabled or config.allow_full_gpu_on_mig_enabled:
            out.append(([str(gpu.index), gpu.uuid], plan(str(gpu.index))))
        for mig in gpu.mig_devices:
            index = f"{gpu.index}:{mig.index}"
            out.append(([index, mig.uuid], plan(index)))
    out.append((["all"], plan("all")))
    return out, plan("none")


def imex_device_plans(config: Config, facts: ExtraFacts) -> list[tuple[list[str], Plan]]:
    """(names, Plan) per IMEX channel the host has, as the device plugin's imex/<N> mount asks
    for it, plus `all`."""
    root = config.volume_mount_root.rstrip("/")
    empty = Inventory(driver_version="", cuda_version="", gpus=())

    def plan(channel: str) -> Plan:
        view, asked = cdi_requests(_view({}, (Mount(f"{root}/imex/{channel}", DEV_NULL,
                                                     "bind"),)), root)
        base = plan_for_view(view, config, empty, HostInfo(Majors(0, 0, None)))
        return extend_plan(base, asked, extras_wanted(base, asked, config), facts)

    out = [([str(c)], plan(str(c))) for c in sorted(facts.imex_channels)]
    if out:
        out.append((["all"], plan("all")))
    return out


def driver_mounts(plan: Plan, host_root: str) -> tuple[list[JsonObj], tuple[str, str]]:
    """CDI mounts for the plan's driver files, and the (64-bit, 32-bit) library dirs they use.

    A spec is written before any rootfs exists, so the library dir cannot be the rootfs's (as
    in spec mode): libraries go to the dir they have on the host (relative to host-root), and
    the createContainer hook is told that dir for the links and the ld cache."""
    root = host_root.rstrip("/")

    def on_host(path: str) -> str:
        return path[len(root):] if root and path.startswith(root + "/") else path

    dirs: dict[str, str] = {}
    for f in plan.driver_files:
        if f.kind in ("library", "library32"):
            dirs.setdefault(f.kind, posixpath.dirname(on_host(f.host_path)))
    lib = (dirs.get("library", DEFAULT_LIB64), dirs.get("library32", DEFAULT_LIB32))
    mounts: list[JsonObj] = []
    for f in plan.driver_files:
        dest = (f"{lib[1] if f.kind == 'library32' else lib[0]}/{f.container_path}"
                if f.kind in ("library", "library32") else f.container_path)
        mounts.append({"hostPath": f.host_path, "containerPath": dest,
                       "options": list(mount_options(f.kind)), "type": "bind"})
    return mounts, lib
