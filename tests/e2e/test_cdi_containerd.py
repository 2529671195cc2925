"""The device plugin's `cdi-annotations` strategy served by gpuhook-runtime under containerd 1.6,
which has no CDI support of its own, through the CRI API the kubelet uses.

The Allocate response is the recorded one (tests/data/deviceplugin/cdi-annotations-uuid-1gpu.json,
NVIDIA k8s-device-plugin v0.20.0): no env, no mount, one annotation
`cdi.k8s.io/nvidia-device-plugin_<uuid>` = `k8s.device-plugin.nvidia.com/gpu=<GPU 2's UUID>`.
The kubelet puts a response's annotations into the CRI ContainerConfig's annotations
(pkg/kubelet/kuberuntime/kuberuntime_container.go generateContainerConfig, via
devicemanager's deviceRunContainerOptions); containerd 1.6 copies container annotations into
the OCI spec only when the runtime's `container_annotations` allow-list matches them
(pkg/cri/server/container_create_linux.go, getPassthroughAnnotations with path.Match), so the
operator lists `cdi.k8s.io/*` there -- and never in `pod_annotations`, which would let a pod
author's annotations through the same way (the second test shows that a pod annotation does not
reach gpuhook when only container_annotations names the prefix).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomlkit

from tests.conftest import REPO
from tests.e2e import device_probe
from tests.e2e.containerd_harness import MINIMAL_PATH, Containerd, cri_missing, remove_cgroups
from tests.e2e.cri.client import CriClient, read_cri_log, running_pod
from tests.e2e.device_probe import GPU2, NOTHING, Expect
from tests.e2e.oci_image import ImageSpec, write_pod_images

pytestmark: list[pytest.MarkDecorator] = [pytest.mark.e2e]

RUNTIME = "nvidia"
POD_CGROUP = f"gpuhook-e2e-cdi-pod-{os.getpid()}"
IMAGE = "docker.io/library/gpuhook-busybox:e2e"
PAUSE_IMAGE = "docker.io/library/gpuhook-pause:e2e"
BIN = Path(sys.executable).parent
FIXTURE = REPO / "tests" / "data" / "deviceplugin" / "cdi-annotations-uuid-1gpu.json"
_ids = itertools.count()

_why = cri_missing()
if _why:
    pytestmark.append(pytest.mark.skip(reason=_why))


def _annotations() -> dict[str, str]:
    doc = json.loads(FIXTURE.read_text())
    resp = doc["container_allocate_response"]
    assert resp["envs"] == {} and "mounts" not in resp  # cdi-annotations alone asks
    annotations: dict[str, str] = resp["annotations"]
    return annotations


@dataclass
class Pod:
    cri: CriClient
    pod_id: str
    sandbox_config: object
    log_dir: Path
    gpuhook_log: Path


def _allow_container_annotations(cd: Containerd) -> None:
    """What the operator adds for containerd < 1.7: the runtime passes the kubelet's
    cdi.k8s.io/ container annotations into the spec (pod annotations: none)."""
    doc = tomlkit.parse(cd.config.read_text())
    runtime = doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"][RUNTIME]
    runtime["container_annotations"] = ["cdi.k8s.io/*"]
    cd.config.write_text(tomlkit.dumps(doc))


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    work = tmp_path_factory.mktemp("containerd-cdi")
    archive = write_pod_images(work / "images.tar", ImageSpec(IMAGE, cmd=["sh"]), PAUSE_IMAGE)
    config = device_probe.write_fake_node_config(work / "gpuhook.toml", work / "gpuhook.log",
                                                 mode="spec")
    cd = Containerd(work / "cd", sandbox_image=PAUSE_IMAGE, env={"GPUHOOK_CONFIG": str(config)})
    cd.write_config()
    try:
        with cd.running():
            assert {IMAGE, PAUSE_IMAGE} <= set(cd.import_image(archive, "k8s.io"))
            res = subprocess.run(
                [str(BIN / "gpuhook"), "install", "--runtime", "containerd", "--config",
                 str(cd.config), "--name", RUNTIME],
                capture_output=True, text=True, env={"PATH": f"{BIN}:{MINIMAL_PATH}"},
                timeout=60, check=False,
            )  # fmt: skip
            assert res.returncode == 0, res.stderr
            assert "WARNING" not in res.stderr  # the default config passes no pod annotation
            _allow_container_annotations(cd)
            cd.restart()
            yield from _pod(cd, work)
    finally:
        left = remove_cgroups(POD_CGROUP)
        assert not left, f"cgroups still busy after containerd and its shims stopped: {left}"


def _pod(cd: Containerd, work: Path) -> Iterator[Pod]:
    cri = CriClient(socket=cd.socket, gen_dir=work / "cri_gen")
    log_dir = work / "pod-logs"
    log_dir.mkdir()
    name = f"pod-{os.getpid()}"
    config = cri.sandbox_config(name=name, uid=name, log_dir=log_dir,
                                cgroup_parent=f"/{POD_CGROUP}", privileged=True)
    # A pod author's annotation with the CDI prefix, naming every GPU: containerd must not pass
    # it into any container's spec (pod_annotations is empty).
    config.annotations["cdi.k8s.io/forged"] = "k8s.device-plugin.nvidia.com/gpu=all"
    with running_pod(cri, config, RUNTIME) as pod_id:
        yield Pod(cri=cri, pod_id=pod_id, sandbox_config=config, log_dir=log_dir,
                  gpuhook_log=work / "gpuhook.log")


def _probe(pod: Pod, annotations: dict[str, str]) -> str:
    name = f"cdi-{os.getpid()}-{next(_ids)}"
    cid = pod.cri.create_container(
        pod.pod_id, pod.sandbox_config, name=name, image=IMAGE,
        command=["sh", "-c", device_probe.script()], env={}, mounts=[],
        log_path=f"{name}.log", annotations=annotations,
    )  # fmt: skip
    try:
        pod.cri.start_container(cid)
        st = pod.cri.wait_exited(cid)
        assert st.exit_code == 0, f"probe exited {st.exit_code}: {st}"
        text = ""
        for _ in range(100):
            text = read_cri_log(pod.log_dir / f"{name}.log")
            if device_probe.END_MARK in text:
                break
            time.sleep(0.05)
        return text
    finally:
        pod.cri.remove_container(cid)


@pytest.mark.parametrize(
    ("annotations", "expect"),
    [
        pytest.param(_annotations(), GPU2,
                     id="the device plugin's cdi annotation gets exactly its GPU"),
        pytest.param({}, NOTHING,
                     id="a container without it gets nothing despite the pod's forged one"),
    ],
)
def test_cri_container_with_cdi_annotations(pod: Pod, annotations: dict[str, str],
                                            expect: Expect) -> None:
    out = _probe(pod, annotations)
    problems = expect.check(device_probe.parse(out))
    assert not problems, "\n".join(problems) + "\n--- probe output:\n" + out


def test_the_shim_logs_the_cdi_annotation_it_served(pod: Pod) -> None:
    _probe(pod, _annotations())
    records = [json.loads(line) for line in pod.gpuhook_log.read_text().splitlines() if line]
    served = [r for r in records if r.get("event") == "create"
              and r.get("device_ids") == ["GPU-89442077-c0ba-5761-a2d3-9180a419ec66"]]
    assert served, records
    assert any("annotation 'cdi.k8s.io/nvidia-device-plugin_" in n and "served by gpuhook" in n
               for n in served[-1]["notes"]), served[-1]
    assert not any("forged" in json.dumps(r) for r in records)
