"""Class 1: privilege is host privilege. A container with its own user namespace holds
CAP_SYS_ADMIN only in that namespace: its env is not trusted, whatever its bounding set or
uidMappings say. And hook mode works for such a container when the trusted path (the device
plugin's mounts) grants it a GPU: the nodes are bind-mounted, and they open (ENXIO: the device
cgroup allows them, there is no driver), in runc's cgroup v1 and v2 modes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gpuhook.config import Config
from gpuhook.decide.request import is_privileged
from gpuhook.decide.spec import parse_spec
from gpuhook.runtime.pipeline import plan_for_spec
from tests.e2e import runc_harness as rh
from tests.security import entry as e
from tests.security.runc_userns import ROOT_HOST_ID, add_user_namespace, userns_supported

USERNS = {"type": "user"}


def view(caps: list[str], namespaces: list[dict[str, Any]], **linux: Any) -> Any:
    s = e.spec()
    s["process"]["capabilities"] = {"bounding": caps}
    s["linux"] = {"namespaces": namespaces, **linux}
    return parse_spec(json.dumps(s).encode())


@pytest.mark.parametrize(("caps", "namespaces", "linux", "privileged"), [
    (["CAP_SYS_ADMIN"], [{"type": "mount"}], {}, True),
    (["CAP_SYS_ADMIN"], [{"type": "mount"}, USERNS], {}, False),
    (["CAP_SYS_ADMIN"], [{"type": "user", "path": "/proc/1/ns/user"}], {}, False),
    (["CAP_SYS_ADMIN"], [USERNS], {"uidMappings": [{"containerID": 0, "hostID": 0,
                                                    "size": 65536}]}, False),
    (["CAP_CHOWN"], [{"type": "mount"}], {}, False),
], ids=["CAP_SYS_ADMIN without a user namespace is privileged",
        "CAP_SYS_ADMIN in a new user namespace is not",
        "CAP_SYS_ADMIN in a joined user namespace is not",
        "CAP_SYS_ADMIN with container root mapped to host root is not",
        "no CAP_SYS_ADMIN is not"])
def test_privilege_needs_cap_sys_admin_outside_any_user_namespace(
        caps: list[str], namespaces: list[dict[str, Any]], linux: dict[str, Any],
        privileged: bool) -> None:
    assert is_privileged(view(caps, namespaces, **linux)) is privileged


CONFIG = Config(inventory=str(e.MIG8), host_root=str(e.MIG8_HOST), log_file="/dev/null",
                inventory_cache="/nonexistent/snapshot.json")


@pytest.mark.parametrize("env", [
    ["NVIDIA_VISIBLE_DEVICES=all"],
    ["NVIDIA_VISIBLE_DEVICES=0:0,3"],
    ["CUDA_VERSION=12.4.0"],
    ["NVIDIA_VISIBLE_DEVICES=none", "NVIDIA_MIG_MONITOR_DEVICES=all",
     "NVIDIA_MIG_CONFIG_DEVICES=all"],
], ids=["all", "a list of ids", "the legacy CUDA image rule", "the MIG capabilities"])
def test_a_user_namespaced_container_with_cap_sys_admin_gets_nothing_from_env(
        env: list[str]) -> None:
    s = e.spec(env=env, privileged=True, userns=True)
    plan = plan_for_spec(parse_spec(json.dumps(s).encode()), CONFIG)
    assert not plan.privileged
    assert "user namespace" in plan.privileged_reason
    assert (plan.source, plan.device_nodes, plan.mig_monitor, plan.mig_config) == (
        "none", (), False, False)
    assert plan.ignored, "the log must say why the env was not honoured"


# ---- against runc --------------------------------------------------------------------------

def _run(open_dir: Path, runc_rootfs: Path, mode: str, opts: rh.BundleOptions,
         ) -> tuple[rh.RunResult, list[dict[str, Any]]]:
    reason = userns_supported()
    if reason is not None:
        pytest.skip(reason)
    log = open_dir / "gpuhook.log"
    cfg = rh.write_config(open_dir / "gpuhook.toml", log_file=log)
    bundle = rh.make_bundle(open_dir / "bundle", runc_rootfs, rh.BundleOptions(
        **{**opts.__dict__, "hook": rh.hook_command(cfg)}))
    add_user_namespace(bundle)
    result = rh.run_container(bundle, mode)
    assert result.left_behind == [], "runc left the container behind"
    return result, rh.read_log(log)


@pytest.mark.e2e
def test_a_user_namespaced_container_granted_by_mounts_gets_nodes_that_open(
        open_dir: Path, runc_rootfs: Path, cgroup_mode: str) -> None:
    caps_dir = "/dev/nvidia-caps"
    result, log = _run(open_dir, runc_rootfs, cgroup_mode, rh.BundleOptions(
        request_ids=("3", "0:0"),
        args=rh.probe_args(["/dev/nvidia3", "/dev/nvidia0", "/dev/nvidiactl",
                            "/dev/nvidia-uvm"], list_dirs=("/dev", caps_dir))))
    assert result.ok, result.stderr
    assert result.probe_done, result.stdout
    for path, (major, minor) in {"/dev/nvidia3": (195, 3), "/dev/nvidia0": (195, 0),
                                 "/dev/nvidiactl": (195, 255), "/dev/nvidia-uvm": (510, 0)
                                 }.items():
        p = result.probes[path]
        assert p.is_char and (p.major, p.minor) == (major, minor), p
        # ENXIO: the kernel let the open through the node (no nodev) and the device cgroup;
        # only the missing driver answers. On the namespace's own /dev it would be EACCES.
        assert (p.read, p.write) == ("ENXIO", "ENXIO"), p
        assert p.owner == "0:0", f"{path} is not owned by the container's root: {p.owner}"
    caps = result.listings[caps_dir]
    assert caps is not None and len(caps) == 2, result.stdout  # GI and CI access of 0:0
    assert sorted(n for n in result.listings["/dev"] or [] if n.startswith("nvidia")
                  and n[6:].isdigit()) == ["nvidia0", "nvidia3"]
    record = log[-1]
    assert record["decision"] == "applied", record
    assert any("bind-mounted (user namespace)" in step for step in record["applied"])


@pytest.mark.e2e
def test_a_user_namespaced_container_with_cap_sys_admin_and_env_all_gets_no_gpu(
        open_dir: Path, runc_rootfs: Path, cgroup_mode: str) -> None:
    result, log = _run(open_dir, runc_rootfs, cgroup_mode, rh.BundleOptions(
        privileged=True, env=("NVIDIA_VISIBLE_DEVICES=all",),
        args=rh.probe_args(["/dev/nvidiactl"])))
    assert result.ok, result.stderr
    assert not result.probes["/dev/nvidiactl"].exists
    assert not [n for n in result.listings["/dev"] or [] if n.startswith("nvidia")]
    assert log[-1]["decision"] == "empty" and log[-1]["ignored"][0]["value"] == "all"


@pytest.mark.e2e
def test_the_user_namespace_maps_container_root_to_the_host_id_this_suite_expects(
        open_dir: Path, runc_rootfs: Path) -> None:
    # Guards the test above: the nodes' 0:0 owner is the container's root only if the
    # container really ran with a mapping (here: its root is host uid ROOT_HOST_ID).
    result, _ = _run(open_dir, runc_rootfs, "v2", rh.BundleOptions(
        args=["sh", "-c", "cat /proc/self/uid_map"]))
    assert result.ok, result.stderr
    assert result.stdout.split()[:2] == ["0", str(ROOT_HOST_ID)], result.stdout


def _staged_apply_in_private_mount_ns(rootfs: Path) -> int:
    """In a forked child: a private mount namespace, then the user-namespace way of making
    nodes (staged on a detached tmpfs, bind-mounted onto empty files) under `rootfs`, where
    an image file waits at the last node's path. Prints what it found as JSON."""
    import ctypes
    import os

    from gpuhook.decide.plan import DeviceNode
    from gpuhook.enforce import nodes
    from gpuhook.errors import ApplyError

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x00020000) != 0 or libc.mount(b"none", b"/", None, 0x4000 | 0x40000,
                                                   None) != 0:  # MS_REC | MS_PRIVATE
        raise OSError(ctypes.get_errno(), "unshare/mount")
    plan = [DeviceNode("/dev/nvidiactl", "c", 195, 255, 0o666),
            DeviceNode("/dev/nvidia-caps/nvidia-cap21", "c", 511, 21, 0o444),
            DeviceNode("/dev/nvidia3", "c", 195, 3, 0o666)]
    staged = nodes.stage_nodes(plan, lambda n: (0, 0), (0, 0))
    try:
        nodes.create_nodes(str(rootfs), plan, staged=staged)
        error = ""
    except ApplyError as err:
        error = str(err)
    finally:
        staged.close()
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        left = [line.split()[4] for line in f if str(rootfs) in line.split()[4]]
    print(json.dumps({"error": error, "mounts": left,
                      "dev": sorted(os.listdir(rootfs / "dev"))}))
    return 0


def test_a_refused_staged_apply_unmounts_and_removes_what_it_attached(tmp_path: Path) -> None:
    reason = userns_supported()
    if reason is not None:
        pytest.skip(reason)
    rootfs = tmp_path / "rootfs"
    (rootfs / "dev").mkdir(parents=True)
    (rootfs / "dev" / "nvidia3").write_text("image file\n")
    run = e.run_forked(lambda: _staged_apply_in_private_mount_ns(rootfs))
    assert run.code == 0, run.describe()
    out = json.loads(run.stdout)
    assert "a file is already there" in out["error"]
    assert out["mounts"] == [], "a bind mount was left behind"
    assert out["dev"] == ["nvidia3"], "the attached nodes and the caps dir were not removed"
    assert (rootfs / "dev" / "nvidia3").read_text() == "image file\n"
