"""IMEX channels and gated device families through runc and gpuhook's prestart hook, in cgroup v1
and v2 mode, on a private copy of the fake 8x A100 host with fake host nodes added: the IMEX
channels (major from the copy's proc/devices `nvidia-caps-imex-channels` line) and the GDS /
GDRCopy nodes, as real character devices whose majors have no driver here. Inside the container
ENXIO means the device cgroup allows the node, EPERM that it denies it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.e2e import runc_harness as rh

pytestmark = pytest.mark.e2e

IMEX, NVFS, GDRDRV = 234, 235, 236  # unregistered on the test machines: no driver, ENXIO
IMEX_DIR = "/dev/nvidia-caps-imex-channels"
CUFILE = '{"logging": {"level": "ERROR"}}\n'


def _node(root: Path, rel: str, major: int, minor: int) -> None:
    path = root / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
    os.chmod(path, 0o666)


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """The shipped fake host, plus IMEX channels 0, 1, 5 and the GDS / GDRCopy nodes."""
    root = tmp_path / "host"
    shutil.copytree(rh.FAKE / "hosts" / "8xa100-mig", root)
    devices = root / "proc" / "devices"
    text = devices.read_text().replace(
        "Character devices:\n", f"Character devices:\n{IMEX} nvidia-caps-imex-channels\n")
    devices.write_text(text)
    for ch in (0, 1, 5):
        _node(root, f"{IMEX_DIR}/channel{ch}", IMEX, ch)
    _node(root, "/dev/nvidia-fs0", NVFS, 0)
    _node(root, "/dev/gdrdrv", GDRDRV, 0)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "cufile.json").write_text(CUFILE)
    return root


def _run(tmp_path: Path, rootfs: Path, mode: str, host: Path, opts: rh.BundleOptions,
         extra: dict[str, object] | None = None) -> tuple[rh.RunResult, Path]:
    log = tmp_path / "gpuhook.log"
    cfg = rh.write_config(tmp_path / "gpuhook.toml", log_file=log,
                          extra={"host-root": str(host), **(extra or {})})
    bundle = rh.make_bundle(tmp_path / "bundle", rootfs,
                            dataclasses.replace(opts, hook=rh.hook_command(cfg)))
    return rh.run_container(bundle, mode), log


def _verdict(result: rh.RunResult, path: str) -> tuple[bool, str, str]:
    p = result.probes[path]
    return p.exists, p.read, p.write


def test_an_imex_mount_grants_that_channel_only(runc_rootfs: Path, cgroup_mode: str,
                                                tmp_path: Path, host: Path) -> None:
    # The device plugin mounts imex/1; the spec itself places channel 5 (no allow rule), which
    # must stay denied; channel 0 is not placed at all.
    ch = [f"{IMEX_DIR}/channel{c}" for c in (0, 1, 5)]
    result, log = _run(tmp_path, runc_rootfs, cgroup_mode, host, rh.BundleOptions(
        request_ids=("imex/1",), env=("NVIDIA_IMEX_CHANNELS=0,5",),
        devices=(rh.SpecDevice(ch[2], IMEX, 5),), args=rh.probe_args(ch)))
    assert result.ok, result.stderr
    assert result.probe_done, result.stdout
    assert _verdict(result, ch[1]) == (True, "ENXIO", "ENXIO")
    assert _verdict(result, ch[2]) == (True, "EPERM", "EPERM")
    assert not result.probes[ch[0]].exists
    assert (result.probes[ch[1]].major, result.probes[ch[1]].minor) == (IMEX, 1)
    [entry] = [e for e in rh.read_log(log) if e.get("id") == result.container_id]
    assert entry["imex_channels"] == [1]
    assert any(i["value"].startswith("NVIDIA_IMEX_CHANNELS=") for i in entry["ignored"])


def test_gds_for_a_device_plugin_gpu_grants_its_nodes_and_not_an_unlisted_family(
        runc_rootfs: Path, cgroup_mode: str, tmp_path: Path, host: Path) -> None:
    # GPU 3 by the device plugin's mount, with NVIDIA_GDS and NVIDIA_GDRCOPY enabled; only gds
    # is listed in the config. The spec places /dev/gdrdrv itself: it must stay denied.
    result, log = _run(tmp_path, runc_rootfs, cgroup_mode, host, rh.BundleOptions(
        request_ids=("3",), env=("NVIDIA_GDS=enabled", "NVIDIA_GDRCOPY=enabled"),
        devices=(rh.SpecDevice("/dev/gdrdrv", GDRDRV, 0),),
        args=rh.probe_args(["/dev/nvidia3", "/dev/nvidia-fs0", "/dev/gdrdrv",
                            "/etc/cufile.json"])),
        extra={"gated-device-families": ["gds"], "driver-files": False})
    assert result.ok, result.stderr
    assert result.probe_done, result.stdout
    assert _verdict(result, "/dev/nvidia3") == (True, "ENXIO", "ENXIO")
    assert _verdict(result, "/dev/nvidia-fs0") == (True, "ENXIO", "ENXIO")
    # GDS's config file, as the toolkit mounts it with the nodes: there, and read-only.
    assert _verdict(result, "/etc/cufile.json") == (True, "OK", "EROFS")
    assert _verdict(result, "/dev/gdrdrv") == (True, "EPERM", "EPERM")
    [entry] = [e for e in rh.read_log(log) if e.get("id") == result.container_id]
    assert entry["gated_families"] == ["gds"]
    assert any(i["value"] == "NVIDIA_GDRCOPY=enabled" for i in entry["ignored"])


def test_gds_without_a_gpu_grant_gets_nothing(runc_rootfs: Path, cgroup_mode: str,
                                              tmp_path: Path, host: Path) -> None:
    result, _ = _run(tmp_path, runc_rootfs, cgroup_mode, host, rh.BundleOptions(
        env=("NVIDIA_GDS=enabled", "NVIDIA_VISIBLE_DEVICES=3"),
        args=rh.probe_args(["/dev/nvidia-fs0", "/dev/nvidia3"])),
        extra={"gated-device-families": ["gds"]})
    assert result.ok, result.stderr
    assert not result.probes["/dev/nvidia-fs0"].exists
    assert not result.probes["/dev/nvidia3"].exists
