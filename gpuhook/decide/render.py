"""Plan -> what `gpuhook dry-run` prints: the contract's JSON object, or an explanation."""

from __future__ import annotations

from gpuhook.decide.plan import Plan, mount_options
from gpuhook.record import TYPE_CHECKING
from gpuhook.text import escape

if TYPE_CHECKING:
    from typing import Any


def plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "privileged": plan.privileged,
        "source": plan.source,
        "device_ids": list(plan.device_ids),
        "ignored": [{"source": i.source, "value": i.value, "reason": i.reason}
                    for i in plan.ignored],
        "devices": [{"kind": d.kind, "index": d.index, "uuid": d.uuid, "minor": d.minor}
                    for d in plan.devices],
        "device_nodes": [{"path": n.path, "type": n.type, "major": n.major, "minor": n.minor,
                          "file_mode": n.file_mode} for n in plan.device_nodes],
        "cgroup_rules": [{"type": r.type, "major": r.major, "minor": r.minor,
                          "access": r.access} for r in plan.cgroup_rules],
        "driver_capabilities": list(plan.driver_capabilities),
        "mig_monitor": plan.mig_monitor,
        "mig_config": plan.mig_config,
        "imex_channels": list(plan.imex_channels),
        "gated_families": list(plan.gated_families),
        # beyond the contract's keys: the driver files (README "Driver files")
        "driver_files": [{"kind": f.kind, "host_path": f.host_path,
                          "container_path": f.container_path,
                          "options": list(mount_options(f.kind))} for f in plan.driver_files],
        "symlinks": [{"kind": s.kind, "path": s.path, "target": s.target}
                     for s in plan.symlinks],
        "update_ldcache": plan.update_ldcache,
        "proc_driver_gpus": list(plan.proc_driver_gpus),
    }


def render_json(plan: Plan) -> str:
    import json  # indent: the C encoder has none; dry-run and CDI only

    return json.dumps(plan_json(plan), indent=2)


def render_text(plan: Plan) -> str:
    out: list[str] = []
    priv = "privileged" if plan.privileged else "unprivileged"
    out.append(f"container: {priv} ({plan.privileged_reason})")
    if plan.source == "none":
        out.append("request: none accepted")
    else:
        ids = ", ".join(plan.device_ids) or "(none: control nodes only)"
        out.append(f"request: from {plan.source}: {ids}")
    for ign in plan.ignored:
        out.append(f"ignored: {ign.source} {ign.value!r}: {ign.reason}")
    if plan.driver_capabilities:
        out.append("driver capabilities: " + ", ".join(plan.driver_capabilities))
    for d in plan.devices:
        if d.kind == "gpu":
            out.append(f"device: GPU {d.index} {d.uuid} (minor {d.minor}, {d.name})")
        else:
            out.append(f"device: MIG {d.index} {d.uuid} profile {d.profile}, parent GPU "
                       f"{d.parent_uuid} (minor {d.minor}), GI {d.gi}, CI {d.ci}, capability "
                       f"nodes {', '.join(d.capability_nodes)}")
    out.append(f"mig monitor: {'granted' if plan.mig_monitor else 'not granted'}; "
               f"mig config: {'granted' if plan.mig_config else 'not granted'}")
    if plan.imex_channels:
        out.append("imex channels: " + ", ".join(str(c) for c in plan.imex_channels))
    if plan.gated_families:
        out.append("gated families: " + ", ".join(plan.gated_families))
    for n in plan.device_nodes:
        out.append(f"node: {n.path} {n.type} {n.major}:{n.minor} mode {n.file_mode:04o}")
    for r in plan.cgroup_rules:
        out.append(f"cgroup: allow {r.type} {r.major}:{r.minor} {r.access}")
    for f in plan.driver_files:
        where = (f"<{f.kind} dir>/{f.container_path}" if f.kind in ("library", "library32")
                 else f.container_path)
        out.append(f"driver file: {f.kind} {where} <- {f.host_path} "
                   f"({','.join(mount_options(f.kind))})")
    for link in plan.symlinks:
        where = f"<{link.kind} dir>/{link.path}" if link.kind != "abs" else link.path
        out.append(f"symlink: {where} -> {link.target}")
    if plan.update_ldcache:
        out.append("ld cache: rebuilt in the container by the host's ldconfig")
    if plan.proc_driver_gpus:
        out.append("/proc/driver/nvidia: a view with only " + ", ".join(plan.proc_driver_gpus))
    for k, v in plan.env:
        out.append(f"env: {k}={v}")
    for note in plan.notes:
        out.append(f"note: {note}")
    if plan.empty:
        out.append("plan: nothing to inject")
    # Notes and ignored values quote container text: each line stays one printable line.
    return "\n".join(escape(line) for line in out)
