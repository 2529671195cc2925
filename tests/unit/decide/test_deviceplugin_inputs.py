"""What gpuhook decides for what a Kubernetes node really sends: the NVIDIA device plugin's
Allocate responses (tests/data/deviceplugin/, v0.20.0) merged with a pod spec the way the kubelet
and containerd 1.6 merge them (tests/kubelet_merge.py), into the OCI spec gpuhook reads. The same
inputs go through the real containerd in tests/e2e/test_deviceplugin_cri.py."""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from gpuhook.decide.plan import Plan
from gpuhook.errors import HostError
from gpuhook.inventory.fake import load_fake
from gpuhook.runtime.fastpath import might_request
from tests.kubelet_merge import (
    CUDA_IMAGE_ENV,
    PLAIN_IMAGE_ENV,
    AllocateResponse,
    containerd16_process_env,
    fixture_names,
    kubelet_container_config,
    load_fixture,
    oci_spec,
)
from tests.unit.specs import MIG8, MIG8_HOST, ROOT, config, plan

INV = load_fake(MIG8)
GPU = {g.index: g for g in INV.gpus}
G2, G3 = GPU[2].uuid, GPU[3].uuid
M10 = GPU[1].mig_devices[0].uuid
EVERYTHING = "every GPU"  # `all`: the MIG devices of GPUs 0 and 1, whole GPUs 2-7
ALL_DEVICES = [*(m.uuid for m in GPU[0].mig_devices), *(m.uuid for m in GPU[1].mig_devices),
               *(GPU[i].uuid for i in range(2, 8))]
POD_ALL = (("NVIDIA_VISIBLE_DEVICES", "all"),)
POD_MARKER = (("NVIDIA_VISIBLE_DEVICES", ROOT),)


def decide_for(fixtures: Sequence[str], pod_env: Sequence[tuple[str, str]] = (),
               privileged: bool = False, image_env: Sequence[str] = CUDA_IMAGE_ENV) -> Plan:
    responses = [load_fixture(f).response for f in fixtures]
    cri = kubelet_container_config(responses, pod_env)
    return plan(oci_spec(image_env, cri, privileged))


def granted(p: Plan) -> list[str]:
    return sorted(d.uuid for d in p.devices)


def want(uuids: list[str] | str) -> list[str]:
    return sorted(ALL_DEVICES if uuids == EVERYTHING else uuids)


CASES = [
    # (id, fixtures, pod env, privileged, source, granted)
    ("a CUDA image that asked for nothing gets nothing", [], (), False, "none", []),
    ("a privileged CUDA image that asked for nothing gets its env's all", [], (), True,
     "envvar", EVERYTHING),
    ("envvar by uuid is not trusted from an unprivileged container", ["envvar-uuid-1gpu"], (),
     False, "none", []),
    ("envvar by uuid grants one GPU to a privileged container", ["envvar-uuid-1gpu"], (), True,
     "envvar", [G2]),
    ("envvar by uuid grants two GPUs to a privileged container", ["envvar-uuid-2gpu"], (), True,
     "envvar", [G2, G3]),
    ("envvar by index grants one GPU to a privileged container", ["envvar-index-1gpu"], (),
     True, "envvar", [G2]),
    ("envvar by index grants two GPUs to a privileged container", ["envvar-index-2gpu"], (),
     True, "envvar", [G2, G3]),
    ("envvar MIG by uuid grants the MIG device to a privileged container", ["envvar-mig-uuid"],
     (), True, "envvar", [M10]),
    ("envvar MIG by index grants the MIG device to a privileged container",
     ["envvar-mig-index"], (), True, "envvar", [M10]),
    ("envvar MIG is not trusted from an unprivileged container", ["envvar-mig-uuid"], (), False,
     "none", []),
    ("a pod's own all after the plugin's envvar counts for a privileged container",
     ["envvar-uuid-1gpu"], POD_ALL, True, "envvar", EVERYTHING),
    ("volume mounts by uuid grant one GPU", ["volume-mounts-uuid-1gpu"], (), False,
     "volume-mounts", [G2]),
    ("volume mounts by uuid grant two GPUs", ["volume-mounts-uuid-2gpu"], (), False,
     "volume-mounts", [G2, G3]),
    ("volume mounts by index grant one GPU", ["volume-mounts-index-1gpu"], (), False,
     "volume-mounts", [G2]),
    ("volume mounts by index grant two GPUs", ["volume-mounts-index-2gpu"], (), False,
     "volume-mounts", [G2, G3]),
    ("volume mounts MIG by uuid grant the MIG device", ["volume-mounts-mig-uuid"], (), False,
     "volume-mounts", [M10]),
    ("volume mounts MIG by index grant the MIG device", ["volume-mounts-mig-index"], (), False,
     "volume-mounts", [M10]),
    ("volume mounts win over a privileged container's env", ["volume-mounts-uuid-1gpu"], (),
     True, "volume-mounts", [G2]),
    ("volume mounts win over a pod's own all", ["volume-mounts-uuid-1gpu"], POD_ALL, False,
     "volume-mounts", [G2]),
    ("both list strategies end as volume mounts", ["envvar+volume-mounts-uuid-1gpu"], (), False,
     "volume-mounts", [G2]),
    ("the marker without mounts grants nothing", [], POD_MARKER, False, "none", []),
    ("the marker without mounts grants nothing to a privileged container", [], POD_MARKER, True,
     "none", []),
    # CDI requests: no env from the plugin, and containerd 1.6 passes no container annotation
    # into the spec unless its runtime's container_annotations lists cdi.k8s.io/* (then gpuhook
    # serves them: tests/e2e/test_cdi_containerd.py, tests/unit/decide/test_cdi_request.py), so
    # here the image's NVIDIA_VISIBLE_DEVICES=all is what is left.
    ("cdi-annotations grant nothing to an unprivileged container (issue 15)",
     ["cdi-annotations-uuid-1gpu"], (), False, "none", []),
    ("cdi-annotations leave a privileged container its image's all (issue 15)",
     ["cdi-annotations-uuid-1gpu"], (), True, "envvar", EVERYTHING),
    ("cdi-annotations with IMEX grant nothing to an unprivileged container (issue 15)",
     ["cdi-annotations-imex-uuid-1gpu"], (), False, "none", []),
    ("cdi-cri grants nothing to an unprivileged container (issue 15)", ["cdi-cri-uuid-1gpu"],
     (), False, "none", []),
]


@pytest.mark.parametrize(("fixtures", "pod_env", "privileged", "source", "uuids"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_device_plugin_response_through_kubelet_and_containerd(
        fixtures: list[str], pod_env: tuple[tuple[str, str], ...], privileged: bool,
        source: str, uuids: list[str] | str) -> None:
    p = decide_for(fixtures, pod_env, privileged)
    assert (p.source, granted(p)) == (source, want(uuids))


# IMEX channels (issue 15): the plugin's channel 0, served from a host that has it.
IMEX_CASES = [
    ("an IMEX channel mount grants channel 0 and the GPU", "volume-mounts-imex-uuid-1gpu", False),
    ("an IMEX channel env grants channel 0 and the GPU to a privileged container",
     "envvar-imex-uuid-1gpu", True),
]


@pytest.fixture
def imex_host(tmp_path: Path) -> Path:
    """The shipped fake node plus the nvidia-caps-imex-channels major and channel 0's node."""
    if os.geteuid() != 0:
        pytest.skip("mknod of the fake IMEX channel needs root")
    host = tmp_path / "host"
    shutil.copytree(MIG8_HOST, host)
    devices = host / "proc" / "devices"
    devices.write_text(devices.read_text().replace(
        "Character devices:\n", "Character devices:\n234 nvidia-caps-imex-channels\n"))
    (host / "dev" / "nvidia-caps-imex-channels").mkdir(parents=True)
    os.mknod(host / "dev" / "nvidia-caps-imex-channels" / "channel0", stat.S_IFCHR | 0o666,
             os.makedev(234, 0))
    return host


@pytest.mark.parametrize(("fixture", "privileged"), [c[1:] for c in IMEX_CASES],
                         ids=[c[0] for c in IMEX_CASES])
def test_the_plugins_imex_channel_is_served(fixture: str, privileged: bool,
                                            imex_host: Path) -> None:
    cri = kubelet_container_config([load_fixture(fixture).response])
    p = plan(oci_spec(CUDA_IMAGE_ENV, cri, privileged), config(host_root=str(imex_host)))
    assert granted(p) == [G2]
    assert p.imex_channels == (0,)


def test_an_imex_channel_the_host_lacks_stops_the_container_naming_it() -> None:
    cri = kubelet_container_config([load_fixture("volume-mounts-imex-uuid-1gpu").response])
    with pytest.raises(HostError, match="IMEX channel 0"):
        plan(oci_spec(CUDA_IMAGE_ENV, cri, False))


def test_every_fixture_is_in_a_case() -> None:
    used = {f for c in CASES for f in c[1]} | {c[1] for c in IMEX_CASES}
    assert used == set(fixture_names())


@pytest.mark.parametrize("privileged", [False, True], ids=["unprivileged", "privileged"])
def test_the_marker_without_mounts_is_logged_as_such(privileged: bool) -> None:
    p = decide_for([], POD_MARKER, privileged)
    assert p.empty
    assert [i.reason.split(":")[0] for i in p.ignored] == ["device-plugin marker without mounts"]


def test_a_plain_image_with_volume_mounts_gets_the_gpu() -> None:
    p = decide_for(["volume-mounts-uuid-1gpu"], image_env=PLAIN_IMAGE_ENV)
    assert granted(p) == [G2]


def test_a_plain_image_that_asked_for_nothing_takes_the_fast_path() -> None:
    spec = oci_spec(PLAIN_IMAGE_ENV, kubelet_container_config([]), privileged=False)
    assert not might_request(json.loads(json.dumps(spec)))


def test_containerd_16_writes_the_image_and_the_plugin_value_both() -> None:
    """The merge the tests rely on: the image's all first, the plugin's marker, the pod's own."""
    cri = kubelet_container_config([load_fixture("volume-mounts-uuid-1gpu").response], POD_ALL)
    env = containerd16_process_env(CUDA_IMAGE_ENV, cri.envs, "node")
    assert [e for e in env if e.startswith("NVIDIA_VISIBLE_DEVICES=")] == [
        "NVIDIA_VISIBLE_DEVICES=all", f"NVIDIA_VISIBLE_DEVICES={ROOT}",
        "NVIDIA_VISIBLE_DEVICES=all"]
    assert env[:2] == [CUDA_IMAGE_ENV[0], "HOSTNAME=node"]  # PATH replaced in place


def test_two_resources_keep_only_the_first_envvar_but_every_mount() -> None:
    """A container asking for nvidia.com/gpu and nvidia.com/mig-1g.5gb: the kubelet keeps the
    first NVIDIA_VISIBLE_DEVICES (a conflict it only logs; resources in map order), so the
    envvar strategy loses one; the volume mounts of both survive."""
    gpu, mig = load_fixture("envvar-uuid-1gpu"), load_fixture("envvar-mig-uuid")
    for order in ((gpu, mig), (mig, gpu)):
        cri = kubelet_container_config([f.response for f in order])
        assert cri.envs == order[0].response.envs
    responses = [load_fixture(f).response for f in ("volume-mounts-uuid-1gpu",
                                                    "volume-mounts-mig-uuid")]
    p = plan(oci_spec(CUDA_IMAGE_ENV, kubelet_container_config(responses), privileged=False))
    assert granted(p) == sorted([G2, M10])


def test_a_mount_path_given_twice_is_mounted_once() -> None:
    r = load_fixture("volume-mounts-uuid-1gpu").response
    cri = kubelet_container_config([r, AllocateResponse(mounts=r.mounts)])
    assert len(cri.mounts) == 1
