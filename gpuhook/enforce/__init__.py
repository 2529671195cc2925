"""Plan -> the real system, for the prestart hook: device nodes in the container's mount
namespace, then cgroup rules (v1 devices.allow, or a v2 BPF device program).

The rootfs is looked up inside the container's mount namespace (where runc has mounted its
/dev tmpfs on `<rootfs>/dev`, since prestart hooks run before pivot_root) and checked to be the
same directory the hook sees at the bundle path; a runtime that pivots before the hook leaves
it as the init process's root, which is used then.

Order, so that a failure leaves no widened access: find the cgroup first (reads only), then
create the nodes (a node without a cgroup rule opens nothing: EPERM), then the driver files
(mounts, links, ld cache, /proc view: gpuhook.enforce.driver, only when the plan has them),
then allow the devices. If a later step fails, what the earlier ones did is undone and
ApplyError is raised.
"""

from __future__ import annotations

import os

from gpuhook.errors import ApplyError
from gpuhook.record import TYPE_CHECKING

# The submodules are imported where they are used, not here: any import of a submodule runs
# this file first, and the shim's spec edit (enforce.libdir) and the createContainer hook
# (enforce.driver) need neither the cgroup writer nor the node helper (nor, the shim, ctypes).
if TYPE_CHECKING:  # annotations only (the createContainer hook skips the decide stages)
    from collections.abc import Callable, Sequence
    from typing import Any

    from gpuhook.decide.plan import CgroupRule, Plan
    from gpuhook.enforce import cgroup, nodes


def apply_plan(plan: Plan, pid: int, rootfs: str, *, host_root: str = "/",
               ldconfig: str = "/sbin/ldconfig") -> list[str]:
    """Apply `plan` to the container whose init is `pid`; return what was done, for the log.
    Raises ApplyError, leaving no widened access behind. `host_root` and `ldconfig` are the
    config keys the driver files step reads (the /proc/driver/nvidia source, the ldconfig to
    run)."""
    if plan.empty:
        return []
    from gpuhook.enforce import cgroup

    return apply_to(plan, pid, rootfs, cgroup.find_device_cgroup(pid), host_root=host_root,
                    ldconfig=ldconfig)


def apply_to(plan: Plan, pid: int, rootfs: str, target: cgroup.DeviceCgroup, *,
             host_root: str = "/", ldconfig: str = "/sbin/ldconfig") -> list[str]:
    """`apply_plan` with the device cgroup already found (tests pass a temporary one)."""
    report = _create_nodes(pid, rootfs, plan)
    done = [f"node {p}: created" for p in report.created if p not in report.bound]
    done += [f"node {p}: bind-mounted (user namespace)" for p in report.bound]
    done += [f"node {p}: already present" for p in report.kept]
    driver_report = None
    try:
        if plan.driver_files or plan.symlinks or plan.update_ldcache or plan.proc_driver_gpus:
            from gpuhook.enforce import driver

            root = _Rootfs(pid, rootfs)
            try:
                driver_report = driver.apply_driver(plan, pid, rootfs, host_root=host_root,
                                                    ldconfig_path=ldconfig,
                                                    open_root=root.open_in_ns)
            finally:
                root.close()
            done += driver_report.lines()
        done += allow_devices(target, plan.cgroup_rules)
    except ApplyError as e:
        undo_failed = _undo_driver(pid, rootfs, driver_report)
        undo_failed += _remove_nodes(pid, rootfs, report)
        if undo_failed:
            raise ApplyError(f"{e}; could not remove the nodes created before: "
                             f"{', '.join(undo_failed)}") from None
        raise
    return done


def allow_devices(target: cgroup.DeviceCgroup, rules: Sequence[CgroupRule]) -> list[str]:
    """Allow `rules` in the container's device cgroup; all or nothing."""
    from gpuhook.enforce import cgroup

    if target.version == 1:
        lines = cgroup.allow_v1(target.path, rules)
        return [f"cgroup v1 {target.path}: allow {line}" for line in lines]
    from gpuhook.enforce import bpf  # ctypes + BPF encoding: only hosts in v2 mode pay for it

    return [bpf.add_device_rules(target.path, rules)]


class _Rootfs:
    """The container rootfs as the hook sees it: its identity and its init's root, both taken
    before entering the container's mount namespace, and the functions the helper calls there,
    imported here, in the hook: a module the helper imported itself would be read from the
    container's mount namespace."""

    def __init__(self, pid: int, rootfs: str) -> None:
        from gpuhook.enforce import mountapi, nodes

        self._open_root = nodes.open_container_root
        self.set_fs_ids = mountapi.set_fs_ids
        self.path = rootfs
        try:
            st = os.stat(rootfs)
            self.identity = (st.st_dev, st.st_ino)
            self.init_root = os.open(f"/proc/{pid}/root",
                                     os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise ApplyError(f"container pid {pid}, rootfs {rootfs}: {e.filename}: "
                             f"{e.strerror}") from None

    def open_in_ns(self) -> int:
        return self._open_root(self.path, self.identity, self.init_root)

    def close(self) -> None:
        os.close(self.init_root)


def _in_ns(root: _Rootfs, work: Callable[[int], Any],
           fs_ids: tuple[int, int] | None = None) -> Any:
    fd = root.open_in_ns()
    try:
        if fs_ids is not None:
            # The container's root creates (and removes) entries in its own /dev: ids its user
            # namespace maps, no override of its permissions.
            root.set_fs_ids(*fs_ids)
        return work(fd)
    finally:
        os.close(fd)


def _fs_ids(pid: int) -> tuple[int, int] | None:
    """Host ids of the container's root when it has its own user namespace, else None."""
    from gpuhook.enforce import userns

    return userns.host_ids(pid, 0, 0) if userns.has_own_user_namespace(pid) else None


def _create_nodes(pid: int, rootfs: str, plan: Plan) -> nodes.NodeReport:
    from gpuhook.enforce import nodes, ns, userns

    node_list = plan.device_nodes
    root = _Rootfs(pid, rootfs)
    staged: nodes.Staged | None = None
    try:
        fs_ids = _fs_ids(pid)
        if fs_ids is not None:
            staged = nodes.stage_nodes(node_list, lambda n: userns.host_ids(pid, n.uid, n.gid),
                                       fs_ids)
        data = ns.run_in_mount_ns(pid, lambda: _in_ns(
            root, lambda fd: nodes.create_nodes(rootfs, node_list, fd, staged).as_json(),
            fs_ids), ns.CHILD_CAPS if staged is None else ns.USERNS_CHILD_CAPS)
    except ApplyError as e:
        raise ApplyError(f"creating device nodes for container pid {pid}: {e}") from None
    finally:
        root.close()
        if staged is not None:
            staged.close()  # attached copies stay; the detached tmpfs goes with the last fd
    return nodes.NodeReport.from_json(data)


def _undo_driver(pid: int, rootfs: str, report: Any) -> list[str]:
    if report is None:
        return []
    from gpuhook.enforce import driver

    try:
        root = _Rootfs(pid, rootfs)
    except ApplyError:
        return list(report.mounts)
    try:
        return driver.undo_driver(report, pid, rootfs, open_root=root.open_in_ns)
    finally:
        root.close()


def _remove_nodes(pid: int, rootfs: str, report: nodes.NodeReport) -> list[str]:
    from gpuhook.enforce import nodes, ns

    try:
        root = _Rootfs(pid, rootfs)
        try:
            fs_ids = _fs_ids(pid)
            failed = ns.run_in_mount_ns(pid, lambda: _in_ns(
                root, lambda fd: nodes.remove_nodes(rootfs, report, fd), fs_ids),
                ns.CHILD_CAPS if fs_ids is None else ns.USERNS_CHILD_CAPS)
        finally:
            root.close()
    except ApplyError:
        return list(report.created)
    return [str(p) for p in failed]
