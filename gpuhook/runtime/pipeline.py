"""Spec + config -> Plan: the one path every consumer (hook, shim, dry-run) takes.

Host files and the inventory are read only when the decision needs them, so a container that
asks for nothing costs no NVML and no YAML.
"""

from __future__ import annotations

from gpuhook.config import Config
from gpuhook.decide.cdi_request import cdi_requests
from gpuhook.decide.dev_mounts import node_mount_conflicts
from gpuhook.decide.facts import Capability, DriverFacts, HostInfo
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
from gpuhook.inventory.model import Inventory
from gpuhook.record import TYPE_CHECKING, replace

if TYPE_CHECKING:
    from collections.abc import Mapping


def plan_for_spec(spec: SpecView, config: Config) -> Plan:
    # CDI names become plain ids here; IMEX channels and gated families join the GPU plan after.
    spec, asked = cdi_requests(spec, config.volume_mount_root,
                               config.accept_nvidia_visible_devices_as_volume_mounts)
    plan = gpu_plan(spec, config)
    if asked.anything or asked.ignored or asked.notes:
        # Only here: the extras' models are three more dataclasses to create at import, which
        # a plain GPU start (the 8-GPU hook, bench/run P2) does not need.
        from gpuhook.decide.extras import ExtraFacts, extend_plan, extras_wanted

        wanted = extras_wanted(plan, asked, config)
        facts = ExtraFacts()
        if wanted.host_facts_needed:
            from gpuhook.host.devnodes import read_extra_facts

            facts = read_extra_facts(HostPaths(config.host_root), bool(wanted.channels),
                                     wanted.families)
        plan = extend_plan(plan, asked, wanted, facts)
    conflicts = node_mount_conflicts(plan.device_nodes, spec.mounts)
    if conflicts:
        raise PolicyError("refusing to create device nodes under a volume: "
                          + "; ".join(conflicts[:4])
                          + " (gpuhook writes device nodes only into the runtime's own /dev)")
    return plan


def gpu_plan(spec: SpecView, config: Config) -> Plan:
    """The GPU part: request, policy, resolve, plan (CDI names already turned into ids)."""
    decision = decide(extract_request(spec, config.volume_mount_root), config)
    devices: tuple[Resolved, ...] = ()
    notes: list[str] = []
    minors: Mapping[str, int] | None = None
    inv: Inventory | None = None
    snapshot_driver: DriverFacts | None = None
    # Driver files need the driver version, so `none` (control nodes and the driver, no GPU)
    # reads the inventory too; so does `none` with requirements (cuda and driver versions are
    # still checked).
    wants_driver = bool(decision.driver_capabilities) and config.driver_files
    if decision.device_ids or decision.requirements or wants_driver:
        # The snapshot if fresh (with its parsed mig-minors and driver files), else the backend;
        # noted either way. From the snapshot, only the GPUs the ids name.
        inv, origin, minors, snapshot_driver, devices = _load_and_resolve(decision.device_ids,
                                                                          config)
        notes.append(origin)
    if decision.requirements:
        assert inv is not None
        # Per granted device (arch, brand); with none, once (cuda, driver).
        notes.extend(check_requirements(decision.requirements, inv, devices))
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
    info = HostInfo(majors, caps)
    if wants_driver:
        assert inv is not None
        from gpuhook.host.driver import discover_driver, discover_sockets

        facts = snapshot_driver or discover_driver(host, inv.driver_version)
        info = replace(info, driver=facts, sockets=discover_sockets(host))
    return build_plan(decision, devices, info, tuple(notes))


def _load_and_resolve(ids: tuple[str, ...], config: Config
                      ) -> tuple[Inventory, str, Mapping[str, int] | None, DriverFacts | None,
                                 tuple[Resolved, ...]]:
    """The inventory for `ids` and the devices they name. A partial inventory (a fresh
    snapshot's GPUs that the ids name) resolves them as the whole one would; when it does not,
    the whole inventory is loaded and answers (its error names everything that exists)."""
    from gpuhook.errors import ResolveError
    from gpuhook.inventory.load import load_for_request

    inv, origin, minors, driver, partial = load_for_request(config, ids)
    if not ids:
        return inv, origin, minors, driver, ()
    try:
        return inv, origin, minors, driver, resolve(ids, inv,
                                                    config.allow_full_gpu_on_mig_enabled)
    except ResolveError:
        if not partial:
            raise
    inv, origin, minors, driver, _ = load_for_request(config, None)
    return inv, origin, minors, driver, resolve(ids, inv, config.allow_full_gpu_on_mig_enabled)
