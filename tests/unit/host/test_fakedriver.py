"""The fake driver other tests rely on behaves like the real one where it matters: ldconfig
lists its libraries under their SONAMEs, nvidia-smi -L counts the /dev/nvidia<N> nodes that open
with ENXIO, and libcuda.so.1 loads by SONAME."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fakedriver.build import FakeDriverBuild, FakeHost

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=False, capture_output=True, text=True,
                          env={**ENV, **env}, timeout=30)


def test_ldconfig_lists_the_fake_driver_under_its_sonames(fake_driver_host: FakeHost) -> None:
    out = _run(["ldconfig", "-r", str(fake_driver_host.root), "-p"]).stdout
    assert "libcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1" in out
    assert "libcuda.so.1 (libc6) => /usr/lib/i386-linux-gnu/libcuda.so.1" in out
    assert "libnvidia-ml.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1" in out
    assert "libnvidia-ml.so (" not in out  # gpuhook must make that dev link itself


def test_the_fake_host_has_firmware_a_socket_and_nvidia_smi(fake_driver_host: FakeHost) -> None:
    root = fake_driver_host.root
    assert sorted(p.name for p in (root / "lib/firmware/nvidia" / fake_driver_host.version)
                  .iterdir()) == ["gsp_ga10x.bin", "gsp_tu10x.bin"]
    assert (root / "run/nvidia-persistenced/socket").is_socket()
    assert os.access(root / "usr/bin/nvidia-smi", os.X_OK)


def test_nvidia_smi_without_libnvidia_ml_says_so(fake_driver_build: FakeDriverBuild) -> None:
    done = _run([str(fake_driver_build.nvidia_smi), "-L"])
    assert (done.returncode, done.stdout.startswith("NVIDIA-SMI couldn't find")) == (12, True)


def _in_private_dev(script: str, host: FakeHost, build: FakeDriverBuild
                    ) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (a private /dev tmpfs with mknod)")
    return _run(["unshare", "-m", "--propagation", "private", "sh", "-euc",
                 "mount -t tmpfs none /dev; " + script],
                LD_LIBRARY_PATH=str(host.lib64), SMI=str(build.nvidia_smi),
                COUNT=str(build.cuda_count))


@pytest.mark.parametrize(("minors", "want"), [
    ((), "No devices were found\n"),
    ((0,), "GPU 0: Tesla T4 (UUID: GPU-4efa34fa-12c4-593e-b09f-7c846ed10983)\n"),
], ids=["no_nvidia_node_means_no_devices", "one_allowed_node_is_one_gpu_with_its_uuid"])
def test_nvidia_smi_counts_nodes_that_open_with_enxio(
        minors: tuple[int, ...], want: str, fake_driver_host: FakeHost,
        fake_driver_build: FakeDriverBuild) -> None:
    mknods = "".join(f"mknod /dev/nvidia{m} c 195 {m}; " for m in minors)
    done = _in_private_dev(mknods + '"$SMI" -L || true', fake_driver_host, fake_driver_build)
    assert done.stdout == want, done.stderr


def test_cuda_count_loads_libcuda_by_soname_and_counts(
        fake_driver_host: FakeHost, fake_driver_build: FakeDriverBuild) -> None:
    done = _in_private_dev('mknod /dev/nvidia0 c 195 0; mknod /dev/nvidia1 c 195 1; '
                           'mknod /dev/nvidiactl c 195 255; "$COUNT"',
                           fake_driver_host, fake_driver_build)
    assert done.stdout == "2\n", done.stderr


def test_cuda_count_without_libcuda_fails(fake_driver_build: FakeDriverBuild,
                                          tmp_path: Path) -> None:
    done = _run([str(fake_driver_build.cuda_count)], LD_LIBRARY_PATH=str(tmp_path))
    assert done.returncode == 1
    assert "libcuda.so.1" in done.stderr
