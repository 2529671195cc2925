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

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gpuhook.decide.plan import DeviceNode, Plan

VENDOR = "nvidia.com"
GPU_CLASS = "gpu"
IMEX_CLASS = "imex-channel"
GPU_KIND = f"{VENDOR}/{GPU_CLASS}"
IMEX_KIND = f"{VENDOR}/{IMEX_CLASS}"
CLASSES = (GPU_CLASS, IMEX_CLASS)
DEFAULT_VERSION = "0.5.0"
# Every cdiVersion the CDI package has released, oldest first.
KNOWN_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0",
                  "1.0.0", "1.1.0")
VOID_ENV = "NVIDIA_VISIBLE_DEVICES=void"

JsonObj = dict[str, Any]

_VENDOR_OR_CLASS = re.compile(r"^[A-Za-z]([A-Za-z0-9_.\-]*[A-Za-z0-9])?$")
_DEVICE_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.:\-]*[A-Za-z0-9])?$")


class CdiVersionError(ValueError):
    pass


def qualified_name(kind: str, name: str) -> str:
    return f"{kind}={name}"


def parse_qualified_name(text: str) -> tuple[str, str, str] | None:
    """`<vendor>/<class>=<name>` -> (vendor, class, name), or None when it is not a valid fully
    qualified CDI device name (the CDI package's parser.ParseQualifiedName rules)."""
    kind, sep, name = text.partition("=")
    vendor, slash, cls = kind.partition("/")
    if not sep or not slash or not vendor or not cls or not name:
        return None
    if not (_VENDOR_OR_CLASS.match(vendor) and _VENDOR_OR_CLASS.match(cls)
            and _DEVICE_NAME.match(name)):
        return None
    return vendor, cls, name


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
               version: str | None = None, common_extra: Mapping[str, Any] | None = None
               ) -> JsonObj:
    """The spec for `kind`: one device per name, each pair's names sharing its Plan's edits;
    `common` (a Plan holding only what every device needs, e.g. the control nodes) becomes the
    common edits, with NVIDIA_VISIBLE_DEVICES=void so that no other injector acts again."""
    common_paths = {n.path for n in common.device_nodes} if common is not None else set()
    out_devices: list[JsonObj] = []
    seen: set[str] = set()
    for names, plan in devices:
        edits = plan_edits(plan, common_paths)
        for name in names:
            if name in seen:
                raise ValueError(f"CDI device name {name!r} twice in {kind}")
            seen.add(name)
            out_devices.append({"name": name, "containerEdits": edits})
    common_edits: JsonObj = {"env": [VOID_ENV]}
    if common is not None:
        nodes = plan_nodes(common)
        if nodes:
            common_edits["deviceNodes"] = nodes
    for key, value in (common_extra or {}).items():
        common_edits[key] = value
    spec: JsonObj = {"cdiVersion": DEFAULT_VERSION, "kind": kind, "devices": out_devices,
                     "containerEdits": common_edits}
    spec["cdiVersion"] = choose_version(spec, version)
    return spec
