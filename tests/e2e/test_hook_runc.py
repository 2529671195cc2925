"""gpuhook as runc's prestart hook, in cgroup v1 and v2 mode (issue 4, "Proof in CI").

Fake GPUs: the shipped 8x A100 inventory (GPUs 0 and 1 are in MIG mode, so full-GPU requests
use GPUs 2..7) with its fake host tree: majors 195 / 510 / 511, which have no driver here. So
inside the container an open gives ENXIO exactly when the device cgroup allows the device, and
EPERM when it denies it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from pathlib import Path

import pytest

from tests.e2e import runc_harness as rh

pytestmark = pytest.mark.e2e

FRONTEND, UVM = 195, 510
CONTROL_NODES = {"/dev/nvidiactl": (FRONTEND, 255), "/dev/nvidia-uvm": (UVM, 0),
                 "/dev/nvidia-uvm-tools": (UVM, 1)}
GPU_NODE = re.compile(r"nvidia\d+")


def gpu_nodes(listing: list[str] | None) -> set[str]:
    assert listing is not None, "the probe could not list /dev"
    return {n for n in listing if GPU_NODE.fullmatch(n)}


def assert_usable(result: rh.RunResult, path: str, major: int, minor: int) -> None:
    """The node exists as the right char device and the cgroup allows read and write."""
    p = result.probes[path]
    assert p.exists, f"{path} missing; /dev has {result.listings.get('/dev')}"
    assert (p.is_char, p.major, p.minor, p.mode, p.owner) == (True, major, minor, 0o666, "0:0")
    assert (p.read, p.write) == ("ENXIO", "ENXIO"), f"{path}: cgroup does not allow it"


def assert_denied(result: rh.RunResult, path: str) -> None:
    p = result.probes[path]
    assert p.exists and p.is_char, f"{path} should exist (placed by the spec)"
    assert (p.read, p.write) == ("EPERM", "EPERM"), f"{path}: the cgroup allows it"


def run(tmp_path: Path, rootfs: Path, mode: str, opts: rh.BundleOptions,
        config_extra: dict[str, object] | None = None, fake: str = "8xa100-mig",
        ) -> tuple[rh.RunResult, Path, rh.Bundle]:
    log = tmp_path / "gpuhook.log"
    cfg = rh.write_config(tmp_path / "gpuhook.toml", fake=fake, log_file=log,
                          extra=config_extra)
    opts = dataclasses.replace(opts, hook=rh.hook_command(cfg))
    bundle = rh.make_bundle(tmp_path / "bundle", rootfs, opts)
    return rh.run_container(bundle, mode), log, bundle


def test_mounted_gpu_request_gets_that_gpu_and_nothing_more(
        runc_rootfs: Path, cgroup_mode: str, tmp_path: Path) -> None:
    # The device plugin mounts GPU 3; NVIDIA_VISIBLE_DEVICES=all in the image is ignored; the
    # spec itself places /dev/nvidia5 (no allow rule): it must stay denied.
    result, log, bundle = run(tmp_path, runc_rootfs, cgroup_mode, rh.BundleOptions(
        request_ids=("3",), env=("NVIDIA_VISIBLE_DEVICES=all",),
        devices=(rh.SpecDevice("/dev/nvidia5", FRONTEND, 5),),
        args=rh.probe_args(["/dev/nvidia3", *CONTROL_NODES, "/dev/nvidia5", "/dev/null",
                            "/dev/zero"])))
    assert result.ok, result.stderr
    assert result.probe_done, result.stdout
    assert_usable(result, "/dev/nvidia3", FRONTEND, 3)
    for path, (major, minor) in CONTROL_NODES.items():
        assert_usable(result, path, major, minor)
    assert gpu_nodes(result.listings["/dev"]) == {"nvidia3", "nvidia5"}
    assert_denied(result, "/dev/nvidia5")
    for path in ("/dev/null", "/dev/zero"):
        assert (result.probes[path].read, result.probes[path].write) == ("OK", "OK")
    [entry] = [e for e in rh.read_log(log) if e.get("id") == result.container_id]
    assert entry["decision"] == "applied"
    assert entry["source"] == "volume-mounts"
    assert entry["device_ids"] == ["3"]
    # The hook found the container's own cgroup, in the mode runc used.
    version = cgroup_mode[1]
    cgroup_lines = [a for a in entry["applied"] if a.startswith("cgroup ")]
    assert cgroup_lines and all(a.startswith(f"cgroup v{version} ") and
                                f"{bundle.cgroups_path}:" in a for a in cgroup_lines), \
        entry["applied"]


def test_privileged_envvar_gets_exactly_the_listed_gpus(
        runc_rootfs: Path, cgroup_mode: str, tmp_path: Path) -> None:
    result, _, _ = run(tmp_path, runc_rootfs, cgroup_mode, rh.BundleOptions(
        privileged=True, env=("NVIDIA_VISIBLE_DEVICES=2,4",),
        devices=(rh.SpecDevice("/dev/nvidia3", FRONTEND, 3),),
        args=rh.probe_args(["/dev/nvidia2", "/dev/nvidia4", "/dev/nvidia3", *CONTROL_NODES])))
    assert result.ok, result.stderr
    assert_usable(result, "/dev/nvidia2", FRONTEND, 2)
    assert_usable(result, "/dev/nvidia4", FRONTEND, 4)
    for path, (major, minor) in CONTROL_NODES.items():
        assert_usable(result, path, major, minor)
    assert gpu_nodes(result.listings["/dev"]) == {"nvidia2", "nvidia3", "nvidia4"}
    assert_denied(result, "/dev/nvidia3")


@pytest.mark.parametrize("request_id", [
    pytest.param("9", id="index beyond the eight GPUs"),
    pytest.param("GPU-00000000-0000-0000-0000-000000000000", id="unknown GPU uuid"),
])
def test_unknown_id_fails_the_start_with_gpuhooks_message(
        runc_rootfs: Path, cgroup_mode: str, tmp_path: Path, request_id: str) -> None:
    result, log, _ = run(tmp_path, runc_rootfs, cgroup_mode, rh.BundleOptions(
        request_ids=(request_id,), args=rh.probe_args(["/dev/nvidiactl"])))
    assert not result.ok
    assert not result.probe_done, "the container ran"
    assert "gpuhook: " in result.stderr and request_id in result.stderr, result.stderr
    assert result.left_behind == [], "runc left the failed container behind"
    assert not result.cgroup_left
    [entry] = [e for e in rh.read_log(log) if e.get("id") == result.container_id]
    assert entry["decision"] == "refused"


def test_container_without_request_starts_and_gets_no_nodes(
        runc_rootfs: Path, cgroup_mode: str, tmp_path: Path) -> None:
    result, log, _ = run(tmp_path, runc_rootfs, cgroup_mode, rh.BundleOptions(
        args=rh.probe_args(["/dev/nvidiactl", "/dev/null"])))
    assert result.ok, result.stderr
    assert result.probe_done
    assert not result.probes["/dev/nvidiactl"].exists
    assert result.probes["/dev/null"].read == "OK"
    listing = result.listings["/dev"]
    assert listing is not None
    assert [n for n in listing if n.startswith("nvidia")] == []
    assert rh.read_log(log) == [], "the no-request path should not even log"
    assert result.left_behind == []


# --- attack bundles: symlinks in the rootfs must never lead gpuhook outside it ---------------

MIG_REQUEST = "1:0"  # GPU 1, MIG 0: nvidiactl, uvm, nvidia1 and /dev/nvidia-caps/... nodes


def snapshot(tree: Path) -> dict[str, tuple[int, int]]:
    """Every entry under `tree` (not following symlinks): relative path -> (mode, rdev)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(tree))] = (st.st_mode, st.st_rdev)
    return out


def gpuhook_writes(before: dict[str, tuple[int, int]],
                   after: dict[str, tuple[int, int]]) -> list[str]:
    """New entries that gpuhook could have made: char devices, or anything nvidia-named.
    (Debian's runc 1.1.5 itself writes its fd/ptmx/std* symlinks through a symlinked `dev`.)"""
    return sorted(p for p, (mode, _) in after.items()
                  if p not in before and (stat.S_ISCHR(mode) or "nvidia" in p))


@pytest.mark.parametrize("target", ["absolute", "relative"],
                         ids=["symlink to an absolute host path",
                              "symlink climbing out with .."])
def test_symlinked_dev_makes_gpuhook_write_nothing_outside_the_rootfs(
        runc_rootfs: Path, cgroup_mode: str, tmp_path: Path, target: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("host file\n")
    log = tmp_path / "gpuhook.log"
    cfg = rh.write_config(tmp_path / "gpuhook.toml", log_file=log)
    bundle = rh.make_bundle(tmp_path / "bundle", runc_rootfs, rh.BundleOptions(
        request_ids=(MIG_REQUEST,), hook=rh.hook_command(cfg),
        args=rh.probe_args(["/dev/nvidiactl"])))
    dev = bundle.rootfs / "dev"
    dev.rmdir()
    # rootfs is bundle/rootfs: "../outside" is bundle/outside, so point one level higher.
    dev.symlink_to(outside if target == "absolute" else Path("../../outside"))
    before = snapshot(outside)
    result = rh.run_container(bundle, cgroup_mode)
    assert gpuhook_writes(before, snapshot(outside)) == []
    assert (outside / "keep").read_text() == "host file\n"
    # gpuhook refuses (fail closed): the container does not start.
    assert not result.ok
    assert "symlink" in result.stderr, result.stderr
    assert result.left_behind == []


@pytest.mark.parametrize("target", ["absolute", "relative"],
                         ids=["symlink to an absolute host path",
                              "symlink climbing out with .."])
def test_symlinked_nvidia_caps_makes_gpuhook_write_nothing_outside_and_roll_back(
        runc_rootfs: Path, cgroup_mode: str, tmp_path: Path, target: str) -> None:
    # Without a /dev tmpfs in the spec, the rootfs's own dev/ is used, and its nvidia-caps is
    # the image author's symlink.
    outside = tmp_path / "outside"
    outside.mkdir()
    log = tmp_path / "gpuhook.log"
    cfg = rh.write_config(tmp_path / "gpuhook.toml", log_file=log)
    bundle = rh.make_bundle(tmp_path / "bundle", runc_rootfs, rh.BundleOptions(
        request_ids=(MIG_REQUEST,), hook=rh.hook_command(cfg),
        args=rh.probe_args(["/dev/nvidiactl"])))
    bundle.spec["mounts"] = [m for m in bundle.spec["mounts"] if m["destination"] != "/dev"
                             and not m["destination"].startswith("/dev/")]
    bundle.write_spec()
    caps = bundle.rootfs / "dev" / "nvidia-caps"
    caps.symlink_to(outside if target == "absolute" else Path("../../../outside"))
    assert caps.resolve() == outside.resolve()
    before = snapshot(outside)
    result = rh.run_container(bundle, cgroup_mode)
    assert gpuhook_writes(before, snapshot(outside)) == []
    assert not result.ok
    assert "symlink" in result.stderr, result.stderr
    # The nodes made before the refusal (nvidiactl, uvm, nvidia1) were rolled back.
    assert sorted(p.name for p in (bundle.rootfs / "dev").iterdir()
                  if p.name.startswith("nvidia")) == ["nvidia-caps"]
    assert result.left_behind == []


def test_symlink_at_a_node_path_is_refused_never_followed(
        runc_rootfs: Path, cgroup_mode: str, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_text("host file\n")
    log = tmp_path / "gpuhook.log"
    cfg = rh.write_config(tmp_path / "gpuhook.toml", log_file=log)
    bundle = rh.make_bundle(tmp_path / "bundle", runc_rootfs, rh.BundleOptions(
        request_ids=("3",), hook=rh.hook_command(cfg),
        args=rh.probe_args(["/dev/nvidia3"])))
    bundle.spec["mounts"] = [m for m in bundle.spec["mounts"] if m["destination"] != "/dev"
                             and not m["destination"].startswith("/dev/")]
    bundle.write_spec()
    (bundle.rootfs / "dev" / "nvidia3").symlink_to(victim)
    result = rh.run_container(bundle, cgroup_mode)
    # Not ours to replace (no deputy writes): the container does not start, and says why.
    assert not result.ok
    assert "a symlink is already there" in result.stderr, result.stderr
    assert victim.read_text() == "host file\n"
    assert stat.S_ISREG(victim.lstat().st_mode)
    assert (bundle.rootfs / "dev" / "nvidia3").is_symlink()
    assert result.left_behind == []
