"""What a Kubernetes node really sends, through real containerd: the NVIDIA device plugin's
Allocate responses (tests/data/deviceplugin/, v0.20.0) merged with a pod spec as the kubelet
does (tests/kubelet_merge.py), sent as CRI CreateContainer to containerd 1.6 with the `nvidia`
runtime handler `gpuhook install` registered (shim in spec mode). containerd itself merges the
image's env (a CUDA image's, with NVIDIA_VISIBLE_DEVICES=all) with the CRI envs, so the spec
gpuhook reads is the one a node writes; one test checks that merge against the transcription the
unit tests use.

Each container runs the busybox device probe (tests/e2e/device_probe.py) on the fake 8x A100
node: the granted nodes exist and open with ENXIO, no other NVIDIA node exists, every other
probed device number gives EPERM (a privileged container's cgroup allows every number). One
containerd and one pod for the whole module; every case is one container in that pod.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e import device_probe
from tests.e2e.containerd_harness import MINIMAL_PATH, Containerd, cri_missing, remove_cgroups
from tests.e2e.cri.client import CriClient, read_cri_log, running_pod
from tests.e2e.device_probe import CONTROL, GPU2, MIG_1_0, NOTHING, NUMBERS, PRIVILEGED_ALL, Expect
from tests.e2e.oci_image import ImageSpec, write_pod_images
from tests.kubelet_merge import (
    CUDA_IMAGE_ENV,
    containerd16_mount,
    containerd16_process_env,
    kubelet_container_config,
    load_fixture,
)

pytestmark: list[pytest.MarkDecorator] = [pytest.mark.e2e]

RUNTIME_NAME = "nvidia"
K8S_NAMESPACE = "k8s.io"  # the CRI plugin's containerd namespace
POD_CGROUP = f"gpuhook-e2e-dp-{os.getpid()}"
CUDA_IMAGE = "docker.io/nvidia/cuda:12.4.1-base-ubuntu22.04-gpuhook-busybox"
PAUSE_IMAGE = "docker.io/library/gpuhook-pause:e2e"
BIN = Path(sys.executable).parent
GPUHOOK = BIN / "gpuhook"
GPUHOOK_RUNTIME = BIN / "gpuhook-runtime"
ROOT = "/var/run/nvidia-container-devices"


def _missing() -> str | None:
    if not GPUHOOK_RUNTIME.exists():
        return f"{GPUHOOK_RUNTIME} missing: pip install -e . in the venv"
    return None


_why = cri_missing() or _missing()
if _why:
    pytestmark.append(pytest.mark.skip(reason=_why))


@dataclass
class Pod:
    containerd: Containerd
    cri: CriClient
    pod_id: str
    sandbox_config: object
    log_dir: Path
    gpuhook_log: Path


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    """One private containerd (gpuhook installed as `nvidia`, then restarted, as an operator
    does) with a CUDA-like image and one privileged pod sandbox run with that handler."""
    work = tmp_path_factory.mktemp("containerd-deviceplugin")
    archive = write_pod_images(
        work / "images.tar", ImageSpec(CUDA_IMAGE, cmd=["sh"], env=list(CUDA_IMAGE_ENV)),
        PAUSE_IMAGE)
    log = work / "gpuhook.log"
    config = device_probe.write_fake_node_config(work / "gpuhook.toml", log, mode="spec")
    cd = Containerd(work / "cd", sandbox_image=PAUSE_IMAGE, env={"GPUHOOK_CONFIG": str(config)})
    cd.write_config()
    try:
        with cd.running():
            assert {CUDA_IMAGE, PAUSE_IMAGE} <= set(cd.import_image(archive, K8S_NAMESPACE))
            res = subprocess.run(
                [str(GPUHOOK), "install", "--runtime", "containerd", "--config", str(cd.config),
                 "--name", RUNTIME_NAME],
                capture_output=True, text=True, env={"PATH": f"{BIN}:{MINIMAL_PATH}"},
                timeout=60, check=False,
            )  # fmt: skip
            assert res.returncode == 0, f"gpuhook install failed:\n{res.stdout}\n{res.stderr}"
            cd.restart()
            yield from _run_pod(cd, work, log)
    finally:
        left = remove_cgroups(POD_CGROUP)
        assert not left, f"cgroups still busy after containerd and its shims stopped: {left}"


def _run_pod(cd: Containerd, work: Path, log: Path) -> Iterator[Pod]:
    cri = CriClient(socket=cd.socket, gen_dir=work / "cri_gen")
    log_dir = work / "pod-logs"
    log_dir.mkdir()
    name = f"dp-{os.getpid()}"
    config = cri.sandbox_config(name=name, uid=name, log_dir=log_dir,
                                cgroup_parent=f"/{POD_CGROUP}", privileged=True)
    with running_pod(cri, config, RUNTIME_NAME) as pod_id:
        yield Pod(cd, cri, pod_id, config, log_dir, log)


def _create(pod: Pod, name: str, fixtures: tuple[str, ...], pod_env: tuple[tuple[str, str], ...],
            privileged: bool, command: list[str]) -> str:
    """CreateContainer with what the kubelet sends for this allocation and pod env."""
    cri = kubelet_container_config([load_fixture(f).response for f in fixtures], pod_env)
    return pod.cri.create_container(
        pod.pod_id, pod.sandbox_config, name=name, image=CUDA_IMAGE, command=command,
        env=list(cri.envs),
        mounts=[(m.host_path, m.container_path, m.readonly) for m in cri.mounts],
        annotations=dict(cri.annotations), log_path=f"{name}.log", privileged=privileged,
    )  # fmt: skip


def _run_probe(pod: Pod, name: str, fixtures: tuple[str, ...],
               pod_env: tuple[tuple[str, str], ...], privileged: bool) -> tuple[str, str]:
    """Create, start, wait for the probe to exit 0; (container id, probe output)."""
    cid = _create(pod, name, fixtures, pod_env, privileged, ["sh", "-c", device_probe.script()])
    try:
        pod.cri.start_container(cid)
        st = pod.cri.wait_exited(cid)
        assert (st.state, st.exit_code) == (2, 0), f"probe did not exit 0: {st}"
        return cid, _read_log_until(pod.log_dir / f"{name}.log", device_probe.END_MARK)
    finally:
        pod.cri.remove_container(cid)


def _read_log_until(path: Path, mark: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = read_cri_log(path) if path.exists() else ""
        if mark in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def _privileged(expect: Expect) -> Expect:
    """A privileged container's cgroup allows every device: the same nodes, every number."""
    return Expect(nodes=expect.nodes, allowed=frozenset(NUMBERS), exact=expect.exact)


GPU2_3 = Expect(
    nodes=frozenset({*CONTROL, "/dev/nvidia2", "/dev/nvidia3"}),
    allowed=frozenset({*CONTROL.values(), (195, 2), (195, 3)}),
)
POD_ALL = (("NVIDIA_VISIBLE_DEVICES", "all"),)
POD_MARKER = (("NVIDIA_VISIBLE_DEVICES", ROOT),)

# (id, fixtures, pod env, privileged, expect)
CASES = [
    ("a CUDA image that asked for nothing gets nothing", (), (), False, NOTHING),
    ("envvar by uuid is ignored for an unprivileged container", ("envvar-uuid-1gpu",), (),
     False, NOTHING),
    ("envvar by index is ignored for an unprivileged container", ("envvar-index-1gpu",), (),
     False, NOTHING),
    ("envvar by uuid grants GPU 2 to a privileged container", ("envvar-uuid-1gpu",), (), True,
     _privileged(GPU2)),
    ("envvar by index grants GPUs 2 and 3 to a privileged container", ("envvar-index-2gpu",),
     (), True, _privileged(GPU2_3)),
    ("envvar MIG by uuid grants MIG 1:0 to a privileged container", ("envvar-mig-uuid",), (),
     True, _privileged(MIG_1_0)),
    ("volume mounts by uuid grant GPU 2 despite the marker and the image's all",
     ("volume-mounts-uuid-1gpu",), (), False, GPU2),
    ("volume mounts by index grant GPU 2", ("volume-mounts-index-1gpu",), (), False, GPU2),
    ("volume mounts by uuid grant GPUs 2 and 3", ("volume-mounts-uuid-2gpu",), (), False,
     GPU2_3),
    ("volume mounts MIG by index grant MIG 1:0", ("volume-mounts-mig-index",), (), False,
     MIG_1_0),
    ("volume mounts by uuid grant GPU 2 to a privileged container",
     ("volume-mounts-uuid-1gpu",), (), True, _privileged(GPU2)),
    ("volume mounts by index grant GPU 2 to a privileged container",
     ("volume-mounts-index-1gpu",), (), True, _privileged(GPU2)),
    ("volume mounts win over the pod's own NVIDIA_VISIBLE_DEVICES=all",
     ("volume-mounts-uuid-1gpu",), POD_ALL, False, GPU2),
    ("the marker without mounts grants nothing and starts", (), POD_MARKER, False, NOTHING),
    ("the marker without mounts grants nothing to a privileged container", (), POD_MARKER, True,
     _privileged(NOTHING)),
    # CDI: the plugin sends no env and containerd 1.6 passes no cdi.k8s.io annotation into the
    # spec unless the runtime's container_annotations lists it (served then:
    # test_cdi_containerd.py): the image's all is left, ignored when unprivileged.
    ("cdi-annotations grant nothing to an unprivileged container yet",
     ("cdi-annotations-uuid-1gpu",), (), False, NOTHING),
    ("cdi-annotations leave a privileged container its image's all",
     ("cdi-annotations-uuid-1gpu",), (), True, PRIVILEGED_ALL),
]


@pytest.mark.parametrize(("fixtures", "pod_env", "privileged", "expect"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_device_plugin_allocation_through_cri(
        pod: Pod, request: pytest.FixtureRequest, fixtures: tuple[str, ...],
        pod_env: tuple[tuple[str, str], ...], privileged: bool, expect: Expect) -> None:
    name = f"case-{request.node.callspec.indices['fixtures']}-{os.getpid()}"
    cid, out = _run_probe(pod, name, fixtures, pod_env, privileged)
    problems = expect.check(device_probe.parse(out))
    assert not problems, "\n".join(problems) + "\n--- probe output:\n" + out
    if pod_env == POD_MARKER:
        records = [json.loads(line) for line in pod.gpuhook_log.read_text().splitlines()]
        mine = [r for r in records if r.get("id") == cid]
        assert mine and all(r.get("decision") == "empty" for r in mine), mine
        reasons = [i["reason"] for r in mine for i in r.get("ignored", [])]
        assert any(x.startswith("device-plugin marker without mounts") for x in reasons), mine


def test_an_imex_channel_the_node_lacks_stops_the_start_naming_it(pod: Pod) -> None:
    """The plugin's imex/0 mount on this fake node, which has no IMEX channel: gpuhook creates
    no host node, so the start fails closed with the channels that exist (issue 15; a node with
    the channel grants it: test_imex_gated_runc.py, test_deviceplugin_inputs.py)."""
    import grpc

    name = f"imex-{os.getpid()}"
    with pytest.raises(grpc.RpcError) as info:
        cid = _create(pod, name, ("volume-mounts-imex-uuid-1gpu",), (), False,
                      ["sh", "-c", "echo started"])
        try:
            pod.cri.start_container(cid)
        finally:
            pod.cri.remove_container(cid)
    assert "IMEX channel 0" in str(info.value.details()), info.value.details()


def test_containerd_writes_the_merge_the_unit_tests_assume(pod: Pod) -> None:
    """The spec containerd 1.6 itself built for a volume-mounts allocation to a CUDA image whose
    pod also sets NVIDIA_VISIBLE_DEVICES: the env (NVIDIA_VISIBLE_DEVICES three times, the
    image's first, the pod's last) and the device mount are exactly tests/kubelet_merge.py's,
    and the container's process sees the last value, as gpuhook and the toolkit read it."""
    fixtures = ("volume-mounts-uuid-1gpu",)
    name = f"merge-{os.getpid()}"
    cid = _create(pod, name, fixtures, POD_ALL, False,
                  ["sh", "-c", "echo NVD=$NVIDIA_VISIBLE_DEVICES"])
    try:
        info = pod.containerd.ctr("containers", "info", cid, namespace=K8S_NAMESPACE)
        spec = json.loads(info.stdout)["Spec"]
        pod.cri.start_container(cid)
        st = pod.cri.wait_exited(cid)
        assert (st.state, st.exit_code) == (2, 0), st
        seen = _read_log_until(pod.log_dir / f"{name}.log", "NVD=")
    finally:
        pod.cri.remove_container(cid)
    assert seen.strip() == "NVD=all", "the process sees the last entry (runc sets them in order)"
    cri = kubelet_container_config([load_fixture(f).response for f in fixtures], POD_ALL)
    assert spec["process"]["env"] == containerd16_process_env(CUDA_IMAGE_ENV, cri.envs,
                                                              socket.gethostname())
    device_mounts = [m for m in spec["mounts"] if m["destination"].startswith(ROOT)]
    assert device_mounts == [containerd16_mount(m) for m in cri.mounts]
    assert "CAP_SYS_ADMIN" not in spec["process"]["capabilities"]["bounding"]
