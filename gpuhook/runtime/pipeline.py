"""Spec + config -> Plan: the one path every consumer (hook, shim, dry-run) takes.

Host files and the inventory are read only when the decision needs them, so a container that
asks for nothing costs no NVML and no YAML.
"""

from __future__ import annotations

from collections.abc import Mapping

from gpuhook.config import Config
from gpuhook.decide.dev_mounts import node_mount_conflicts
from gpuhook.decide.facts import Capability, HostInfo
from gpuhook.decide.plan import Plan, build_plan, needed_capabilities, needs_host
from gpuhook.decide.policy import decide
from gpuhook.decide.request import extract_request
from gpuhook.decide.resolve import Resolved, check_requirements, resolve
from gpuhook.decide.spec import SpecView
from gpuhook.errors import HostError, PolicyError
from gpuhook.host.proc import (
    HostPaths,
    read_capabilities,
    read_majors,
    read_mig_minors,
)


def plan_for_spec(spec: SpecView, config: Config) -> Plan:
    decision = decide(extract_request(spec, config.volume_mount_root), config)
    devices: tuple[Resolved, ...] = ()
    notes: list[str] = []
    minors: Mapping[str, int] | None = None
    if decision.device_ids:
        from gpuhook.inventory.load import load_for_plan

        # The snapshot if fresh (with its parsed mig-minors), else the backend; noted either way.
        inv, origin, minors = load_for_plan(config)
        notes.append(origin)
        notes.extend(check_requirements(decision.requirements, inv))
        devices = resolve(decision.device_ids, inv, config.allow_full_gpu_on_mig_enabled)
    if not needs_host(decision, devices):
        return build_plan(decision, devices, None, tuple(notes))
    host = HostPaths(config.host_root)
    majors = read_majors(host)
    caps: dict[str, Capability] = {}
    names = needed_capabilities(decision, devices)
    if names:
        if majors.caps is None:
            raise HostError(f"{host.path('proc/devices')} lists no nvidia-caps major, needed "
                            f"for {', '.join(names)}; is the driver MIG-capable?")
        caps = read_capabilities(host, names,
                                 read_mig_minors(host) if minors is None else minors)
    plan = build_plan(decision, devices, HostInfo(majors, caps), tuple(notes))
    conflicts = node_mount_conflicts(plan.device_nodes, spec.mounts)
    if conflicts:
        raise PolicyError("refusing to create device nodes under a volume: "
                          + "; ".join(conflicts[:4])
                          + " (gpuhook writes device nodes only into the runtime's own /dev)")
    return plan
