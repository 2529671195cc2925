"""What the kubelet and containerd 1.6 make of a device plugin's `ContainerAllocateResponse`:
the CRI `ContainerConfig` the kubelet sends, and the OCI process env and mounts containerd 1.6
writes from it. Facts transcribed from their code (cited per function); the real containerd
does the second half in the e2e tests, and they check this transcription against its spec.

Fixtures: tests/data/deviceplugin/*.json (README there cites the device plugin v0.20.0).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent / "data" / "deviceplugin"

# containerd 1.6 oci/spec_opts.go `defaultUnixEnv`, set by `WithDefaultPathEnv`.
CONTAINERD_DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# NVIDIA_REQUIRE_CUDA of the CUDA 12.4.1 images for x86_64: cuda>=12.4, or one of the R470, R525,
# R535 driver branches on any of these brands (the same groups, in this order, for each branch).
_BRANDS = ("tesla", "unknown", "nvidia", "nvidiartx", "geforce", "geforcertx", "quadro",
           "quadrortx", "titan", "titanrtx")
REQUIRE_CUDA_12_4 = "cuda>=12.4 " + " ".join(
    f"brand={b},driver>={d},driver<{d + 1}" for d in (470, 525, 535) for b in _BRANDS)

# The env of nvidia/cuda:12.4.1-base-ubuntu22.04 in image-config order (Dockerfile ENV order; PATH
# keeps the place the ubuntu base image gave it): gitlab.com/nvidia/container-images/cuda,
# dist/12.4.1/ubuntu2204/base/Dockerfile (stage base-amd64, then the common part).
CUDA_IMAGE_ENV = (
    "PATH=/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin"
    ":/usr/bin:/sbin:/bin",
    "NVARCH=x86_64",
    f"NVIDIA_REQUIRE_CUDA={REQUIRE_CUDA_12_4}",
    "NV_CUDA_CUDART_VERSION=12.4.127-1",
    "NV_CUDA_COMPAT_PACKAGE=cuda-compat-12-4",
    "CUDA_VERSION=12.4.1",
    "LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64",
    "NVIDIA_VISIBLE_DEVICES=all",
    "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
)
PLAIN_IMAGE_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)

# containerd 1.6 oci/spec.go defaultUnixCaps: an unprivileged CRI container's bounding set when
# the pod adds or drops nothing. A privileged one gets every capability (oci.WithPrivileged).
CONTAINERD_DEFAULT_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)


@dataclass(frozen=True)
class PluginMount:
    container_path: str
    host_path: str
    read_only: bool


@dataclass(frozen=True)
class AllocateResponse:
    """One `ContainerAllocateResponse` (k8s.io/kubelet deviceplugin/v1beta1)."""

    envs: tuple[tuple[str, str], ...] = ()
    mounts: tuple[PluginMount, ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    cdi_devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fixture:
    name: str
    plugin: Mapping[str, Any]
    allocate_request_ids: tuple[str, ...]
    response: AllocateResponse


def load_fixture(name: str) -> Fixture:
    doc = json.loads((FIXTURES / f"{name}.json").read_text())
    r = doc["container_allocate_response"]
    resp = AllocateResponse(
        envs=tuple(r.get("envs", {}).items()),
        mounts=tuple(PluginMount(m["container_path"], m["host_path"], bool(m.get("read_only")))
                     for m in r.get("mounts", [])),
        annotations=tuple(r.get("annotations", {}).items()),
        cdi_devices=tuple(d["name"] for d in r.get("cdi_devices", [])),
    )
    return Fixture(name, doc["plugin"], tuple(doc["allocate_request_ids"]), resp)


def fixture_names() -> list[str]:
    return sorted(p.stem for p in FIXTURES.glob("*.json"))


@dataclass(frozen=True)
class CriMount:
    container_path: str
    host_path: str
    readonly: bool


@dataclass(frozen=True)
class CriContainer:
    """The fields of a CRI `ContainerConfig` the kubelet fills from allocations and pod env."""

    envs: tuple[tuple[str, str], ...]
    mounts: tuple[CriMount, ...]
    annotations: tuple[tuple[str, str], ...]
    cdi_devices: tuple[str, ...] = field(default=())


def kubelet_container_config(responses: Sequence[AllocateResponse],
                             pod_env: Sequence[tuple[str, str]] = ()) -> CriContainer:
    """kubernetes pkg/kubelet/cm/devicemanager/pod_devices.go `deviceRunContainerOptions`: across
    the container's resources an env key, a mount's container path or an annotation key already
    taken is skipped (first wins, a conflict only logged); then pkg/kubelet/kubelet_pods.go
    `GenerateRunContainerOptions` appends the pod's own env (`makeEnvironmentVariables`, in
    which a name declared twice keeps its last value) after the device plugin's, with no
    de-duplication between the two; pkg/kubelet/kuberuntime/kuberuntime_container.go
    `generateContainerConfig` turns each into one CRI KeyValue, in that order, and each device
    mount into a CRI Mount with its read_only (propagation PRIVATE, the default)."""
    envs: list[tuple[str, str]] = []
    env_keys: set[str] = set()
    mounts: list[CriMount] = []
    paths: set[str] = set()
    annotations: list[tuple[str, str]] = []
    cdi: list[str] = []
    for resp in responses:
        for k, v in resp.envs:
            if k not in env_keys:
                env_keys.add(k)
                envs.append((k, v))
        for m in resp.mounts:
            if m.container_path not in paths:
                paths.add(m.container_path)
                mounts.append(CriMount(m.container_path, m.host_path, m.read_only))
        for k, v in resp.annotations:
            if k not in dict(annotations):
                annotations.append((k, v))
        cdi.extend(d for d in resp.cdi_devices if d not in cdi)
    pod = dict(pod_env)  # a name declared twice in the pod spec keeps its last value
    envs.extend(pod.items())
    return CriContainer(tuple(envs), tuple(mounts), tuple(annotations), tuple(cdi))


def replace_or_append_env(defaults: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """containerd 1.6 oci/spec_opts.go `replaceOrAppendEnvValues`: an override whose key is in
    `defaults` replaces that entry; any other override is appended, every time: the lookup
    holds only the keys of `defaults`, so two overrides with one key both stay. An override
    without '=' removes the default of that name."""
    index = {e.split("=", 1)[0]: i for i, e in enumerate(defaults)}
    out: list[str | None] = list(defaults)
    for value in overrides:
        key, sep, _ = value.partition("=")
        if not sep:
            if key in index:
                out[index[key]] = None
            continue
        if key in index:
            out[index[key]] = value
        else:
            out.append(value)
    return [e for e in out if e]


def containerd16_process_env(image_env: Sequence[str], cri_envs: Sequence[tuple[str, str]],
                             hostname: str) -> list[str]:
    """containerd 1.6 pkg/cri/server/container_create_linux.go `containerSpec`: `WithDefaultPathEnv`
    (PATH), then `WithEnv([HOSTNAME=…])`, then `WithEnv(image env + CRI envs)` — "image env
    first, so that envs from container config can override them". So a key the image and the
    CRI config both set (NVIDIA_VISIBLE_DEVICES) is in the spec twice, the image's first."""
    env = replace_or_append_env([CONTAINERD_DEFAULT_PATH], [f"HOSTNAME={hostname}"])
    return replace_or_append_env(env, [*image_env, *(f"{k}={v}" for k, v in cri_envs)])


def containerd16_mount(m: CriMount) -> dict[str, Any]:
    """containerd 1.6 pkg/cri/opts/spec_linux.go `WithMounts` for one CRI mount (PRIVATE
    propagation, the kubelet's default)."""
    return {"destination": m.container_path, "type": "bind", "source": m.host_path,
            "options": ["rbind", "rprivate", "ro" if m.readonly else "rw"]}


def oci_spec(image_env: Sequence[str], cri: CriContainer, privileged: bool,
             hostname: str = "node") -> dict[str, Any]:
    """The parts of the OCI spec containerd 1.6 writes that gpuhook reads, for unit tests (the
    e2e tests compare this with the spec the real containerd wrote)."""
    caps = [*CONTAINERD_DEFAULT_CAPS, *(("CAP_SYS_ADMIN",) if privileged else ())]
    return {
        "ociVersion": "1.0.2-dev",
        "process": {"args": ["sh"], "cwd": "/",
                    "env": containerd16_process_env(image_env, cri.envs, hostname),
                    "capabilities": {"bounding": caps, "effective": caps, "permitted": caps}},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   *(containerd16_mount(m) for m in cri.mounts)],
        "annotations": {"io.kubernetes.cri.container-type": "container"},
    }
