"""Plan -> the real system, for the prestart hook: device nodes in the container's mount
namespace, then cgroup rules (v1 devices.allow, or a v2 BPF device program).

Order, so that a failure leaves no widened access: find the cgroup first (reads only), then
create the nodes (a node without a cgroup rule opens nothing: EPERM), then allow the devices.
If allowing fails, the nodes this call created are removed again and ApplyError is raised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gpuhook.apply import cgroup, nodes, ns
from gpuhook.errors import ApplyError
from gpuhook.plan import CgroupRule, Plan


def apply_plan(plan: Plan, pid: int, rootfs: str, spec: dict[str, Any]) -> list[str]:
    """Apply `plan` to the container whose init is `pid`; return what was done, for the log.
    Raises ApplyError, leaving no widened access behind."""
    del spec  # the plan already holds everything; kept for the hook's stable call
    if plan.empty:
        return []
    return apply_to(plan, pid, rootfs, cgroup.find_device_cgroup(pid))


def apply_to(plan: Plan, pid: int, rootfs: str, target: cgroup.DeviceCgroup) -> list[str]:
    """`apply_plan` with the device cgroup already found (tests pass a temporary one)."""
    report = _create_nodes(pid, rootfs, plan)
    done = [f"node {p}: created" for p in report.created if p not in report.replaced]
    done += [f"node {p}: replaced" for p in report.replaced]
    done += [f"node {p}: already present" for p in report.kept]
    try:
        done += allow_devices(target, plan.cgroup_rules)
    except ApplyError as e:
        undo_failed = _remove_nodes(pid, rootfs, report)
        if undo_failed:
            raise ApplyError(f"{e}; could not remove the nodes created before: "
                             f"{', '.join(undo_failed)}") from None
        raise
    return done


def allow_devices(target: cgroup.DeviceCgroup, rules: Sequence[CgroupRule]) -> list[str]:
    """Allow `rules` in the container's device cgroup; all or nothing."""
    if target.version == 1:
        lines = cgroup.allow_v1(target.path, rules)
        return [f"cgroup v1 {target.path}: allow {line}" for line in lines]
    from gpuhook.apply import bpf  # ctypes + BPF encoding: only hosts in v2 mode pay for it

    return [bpf.add_device_rules(target.path, rules)]


def _create_nodes(pid: int, rootfs: str, plan: Plan) -> nodes.NodeReport:
    node_list = plan.device_nodes
    try:
        data = ns.run_in_mount_ns(pid, lambda: nodes.create_nodes(rootfs, node_list).as_json())
    except ApplyError as e:
        raise ApplyError(f"creating device nodes for container pid {pid}: {e}") from None
    return nodes.NodeReport.from_json(data)


def _remove_nodes(pid: int, rootfs: str, report: nodes.NodeReport) -> list[str]:
    try:
        failed = ns.run_in_mount_ns(pid, lambda: nodes.remove_nodes(rootfs, report))
    except ApplyError:
        return list(report.created)
    return [str(p) for p in failed]
