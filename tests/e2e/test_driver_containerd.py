"""Driver files through real containerd's CRI API (the kubelet's path): a pod sandbox run with
the `nvidia` runtime handler that `gpuhook install` registers, then a container from a
glibc-capable image with the device plugin's mount for one GPU. Inside, `nvidia-smi -L` prints
one line and a program that dlopen()s libcuda.so.1 counts one GPU; a container without a
request gets no driver file. The fake driver (tests/fakedriver) stands in for the real one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e import glibc_rootfs
from tests.e2e.containerd_harness import Containerd, remove_cgroups
from tests.e2e.cri.client import CriClient, running_pod
from tests.e2e.device_probe import DEVICE_DIR
from tests.e2e.driver_env import file_hash, tree_hash, write_config
from tests.e2e.oci_image import find_busybox, pause_image, write_oci_archive
from tests.e2e.test_containerd import (
    PAUSE_IMAGE,
    RUNTIME_NAME,
    _read_log_until,
    _register,
    unique,
)
from tests.e2e.test_containerd import pytestmark as containerd_marks
from tests.fakedriver import build as fakedriver

pytestmark = list(containerd_marks)

GPUMODES = ("hook", "spec")
IMAGE = "docker.io/library/gpuhook-glibc:e2e"
POD_CGROUP = f"gpuhook-e2e-driver-pod-{os.getpid()}"
SCRIPT = ("nvidia-smi -L 2>&1; echo \"COUNT $(cuda-count 2>&1)\"; "
          "ls /usr/lib/x86_64-linux-gnu | grep -c -E 'nvidia|cuda'; echo END-OF-RUN")


@dataclass
class DriverPod:
    cri: CriClient
    pod_id: str
    sandbox_config: object
    log_dir: Path
    host: fakedriver.FakeHost


@pytest.fixture(scope="module", params=GPUMODES, ids=[f"shim-{m}-mode" for m in GPUMODES])
def driver_pod(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               driver_build: fakedriver.FakeDriverBuild,
               glibc_image: Path) -> Iterator[DriverPod]:
    mode = str(request.param)
    work = tmp_path_factory.mktemp(f"containerd-driver-{mode}")
    busybox = find_busybox()
    assert busybox is not None
    pause = write_oci_archive(work / "pause.tar", [pause_image(PAUSE_IMAGE)], busybox)
    image = glibc_rootfs.write_image_archive(work / "glibc.tar", IMAGE, glibc_image)
    host = fakedriver.make_fake_host(driver_build, work / "host")
    config = write_config(work / "gpuhook.toml", host.inventory, host.root,
                          work / "gpuhook.log", mode)
    cd = Containerd(work / "cd", sandbox_image=PAUSE_IMAGE, env={"GPUHOOK_CONFIG": str(config)})
    cd.write_config()
    try:
        with cd.running():
            assert IMAGE in cd.import_image(image, "k8s.io")
            assert PAUSE_IMAGE in cd.import_image(pause, "k8s.io")
            res = _register(cd.config)
            assert res.returncode == 0, res.stdout + res.stderr
            cd.restart()
            cri = CriClient(socket=cd.socket, gen_dir=work / "cri_gen")
            log_dir = work / "pod-logs"
            log_dir.mkdir()
            name = unique("driver-pod")
            sandbox = cri.sandbox_config(name=name, uid=name, log_dir=log_dir,
                                         cgroup_parent=f"/{POD_CGROUP}", privileged=True)
            with running_pod(cri, sandbox, RUNTIME_NAME) as pod_id:
                yield DriverPod(cri, pod_id, sandbox, log_dir, host)
    finally:
        assert not remove_cgroups(POD_CGROUP)


def run(pod: DriverPod, requested: tuple[str, ...]) -> list[str]:
    name = unique("driver")
    cid = pod.cri.create_container(
        pod.pod_id, pod.sandbox_config, name=name, image=IMAGE, command=["sh", "-c", SCRIPT],
        env={"NVIDIA_DRIVER_CAPABILITIES": "compute,utility"},
        mounts=[("/dev/null", f"{DEVICE_DIR}/{d}") for d in requested],
        log_path=f"{name}.log")
    try:
        pod.cri.start_container(cid)
        st = pod.cri.wait_exited(cid)
        assert st.state == 2, st
        return _read_log_until(pod.log_dir / f"{name}.log", "END-OF-RUN").splitlines()
    finally:
        pod.cri.remove_container(cid)


def test_a_cri_container_with_one_gpu_runs_nvidia_smi_and_loads_libcuda(
        driver_pod: DriverPod) -> None:
    before = tree_hash(driver_pod.host.root), file_hash("/etc/ld.so.cache")
    lines = run(driver_pod, ("2",))
    assert lines[0].startswith("GPU 0: "), lines
    assert lines[1] == "COUNT 1", lines
    assert int(lines[2]) >= 4, lines  # libcuda + libnvidia-ml, versioned files and links
    assert (tree_hash(driver_pod.host.root), file_hash("/etc/ld.so.cache")) == before


def test_a_cri_container_without_a_request_gets_no_driver_file(driver_pod: DriverPod) -> None:
    lines = run(driver_pod, ())
    assert "not found" in lines[0], lines
    assert lines[1].startswith("COUNT cuda-count: libcuda.so.1: cannot open"), lines
    assert lines[2] == "0", lines



