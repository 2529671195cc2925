"""`gpuhook doctor` against fake host trees: a healthy node first, then one tree per failure,
each breaking exactly one thing and expecting exactly that check to say so."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.unit import specs

BIN = Path(sys.executable).parent
GPUHOOK = BIN / "gpuhook"
RUNTIME = BIN / "gpuhook-runtime"

# This machine's /proc/self/mountinfo (Debian 12, cgroup hybrid): the v1 devices controller.
MOUNTINFO_V1 = (
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")
MOUNTINFO_NO_DEVICES = MOUNTINFO_V1.splitlines(keepends=True)[0] + \
    MOUNTINFO_V1.splitlines(keepends=True)[2]
# The names ldconfig writes into /etc/ld.so.cache, NUL-terminated (its string table).
LIBS = [b"libcuda.so.1", b"libnvidia-ptxjitcompiler.so.1", b"libnvidia-ml.so.1",
        b"libnvcuvid.so.1", b"libnvidia-encode.so.1", b"libGLX_nvidia.so.0",
        b"libEGL_nvidia.so.0"]
CONTAINERD_V2 = """version = 2
{imports}
[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "runc"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]
  runtime_type = "io.containerd.runc.v2"
  {pod_annotations}
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]
  BinaryName = "{binary}"
"""


@dataclass
class Node:
    root: Path  # the fake host tree (host-root)
    etc: Path  # the engines' files
    config: Path

    def write_config(self, **extra: object) -> None:
        keys: dict[str, object] = {"inventory": specs.MIG8, "host-root": str(self.root),
                                   "log-file": str(self.root / "gpuhook.log"),
                                   "inventory-cache": str(self.root / "run/inventory.json")}
        keys.update(extra)
        self.config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items()))

    def containerd(self, binary: str = str(RUNTIME), imports: str = "",
                   pod_annotations: str = "") -> None:
        (self.etc / "containerd/config.toml").write_text(CONTAINERD_V2.format(
            binary=binary, imports=imports, pod_annotations=pod_annotations))

    def doctor(self) -> tuple[int, dict[str, Any]]:
        r = subprocess.run(
            [str(GPUHOOK), "doctor", "--json", "--config", str(self.config),
             "--containerd-config", str(self.etc / "containerd/config.toml"),
             "--containerd-drop-in-dir", str(self.etc / "containerd/conf.d"),
             "--crio-drop-in-dir", str(self.etc / "crio/crio.conf.d"),
             "--docker-config", str(self.etc / "docker/daemon.json"),
             "--hooks-dir", str(self.etc / "hooks.d")],
            capture_output=True, text=True, timeout=120, check=False,
            env={"PATH": "/usr/bin:/bin"})
        assert r.stderr == "", r.stderr
        return r.returncode, json.loads(r.stdout)


def status(report: dict[str, Any], name: str) -> tuple[str, str, str]:
    [c] = [c for c in report["checks"] if c["name"] == name]
    return c["status"], c["detail"], c["fix"]


@pytest.fixture
def node(tmp_path: Path) -> Node:
    """The shipped fake 8x A100 host, made healthy: persistenced's socket, a v1 devices
    cgroup, the driver's libraries in the ld cache, nvidia-smi, a fresh snapshot, and gpuhook
    registered with containerd."""
    root = tmp_path / "host"
    shutil.copytree(specs.MIG8_HOST, root)
    (root / "run/nvidia-persistenced").mkdir(parents=True)
    (root / "run/nvidia-persistenced/socket").write_text("")
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/mountinfo").write_text(MOUNTINFO_V1)
    (root / "etc").mkdir()
    (root / "etc/ld.so.cache").write_bytes(b"glibc-ld.so.cache1.1" + b"\0".join(LIBS) + b"\0")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/nvidia-smi").write_text("")
    etc = tmp_path / "etc"
    for d in ("containerd/conf.d", "crio/crio.conf.d", "docker", "hooks.d"):
        (etc / d).mkdir(parents=True)
    n = Node(root, etc, tmp_path / "gpuhook.toml")
    n.write_config()
    n.containerd()
    r = subprocess.run([str(GPUHOOK), "inventory", "refresh", "--config", str(n.config)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    return n


def test_a_healthy_node_passes_every_check(node: Node) -> None:
    code, report = node.doctor()
    bad = [c for c in report["checks"] if c["status"] != "ok" and c["name"] != "nvml"]
    assert not bad, bad
    assert status(report, "nvml")[0] == "warn"  # a fake inventory is for tests: said so
    assert (code, report["status"]) == (0, "warn")
    names = {c["name"] for c in report["checks"]}
    assert {"config", "policy", "nvml", "gpus", "persistence", "majors", "mig-minors",
            "cgroup", "snapshot", "driver-files:compute", "driver-files:utility",
            "containerd", "crio", "docker", "oci-hooks"} <= names


def _rm(rel: str) -> Callable[[Node], object]:
    return lambda n: os.remove(n.root / rel)


def _text(rel: str, text: str) -> Callable[[Node], object]:
    return lambda n: (n.root / rel).write_text(text)


FAILURES: list[tuple[str, Callable[[Node], object], str, str, str]] = [
    ("a typo in gpuhook's config", lambda n: n.config.write_text(
        n.config.read_text() + "mdoe = 'spec'\n"), "config", "fail", "did you mean 'mode'?"),
    ("env trusted for unprivileged containers", lambda n: n.write_config(**{
        "accept-nvidia-visible-devices-envvar-when-unprivileged": True}),
     "policy", "warn", "ANY pod can use EVERY GPU"),
    ("NVML (the inventory) does not load", lambda n: n.write_config(
        inventory=str(n.root / "missing.yaml")), "nvml", "fail", "missing.yaml"),
    ("MIG mode on without MIG devices", lambda n: n.write_config(
        inventory=_one_gpu_mig_empty(n)), "gpus", "warn", "no MIG device exists on GPU 0"),
    ("nvidia-persistenced not running", _rm("run/nvidia-persistenced/socket"),
     "persistence", "warn", "not running"),
    ("nvidia-uvm not loaded", _text("proc/devices", "Character devices:\n195 nvidia-frontend\n"),
     "majors", "fail", "no nvidia-uvm major"),
    ("MIG on but no mig-minors", _rm("proc/driver/nvidia-caps/mig-minors"),
     "mig-minors", "fail", "mig-minors"),
    ("cgroup v1 without the devices controller", _text("proc/self/mountinfo",
                                                      MOUNTINFO_NO_DEVICES),
     "cgroup", "fail", "no 'devices' controller"),
    ("a stale snapshot", _text("proc/driver/nvidia/version", "NVRM version: changed\n"),
     "snapshot", "warn", "stale"),
    ("libcuda missing from the ld cache", lambda n: (n.root / "etc/ld.so.cache").write_bytes(
        b"\0".join(x for x in LIBS if x != b"libcuda.so.1")), "driver-files:compute", "fail",
     "libcuda.so.1"),
    ("no nvidia-smi", _rm("usr/bin/nvidia-smi"), "driver-files:utility", "fail", "nvidia-smi"),
    ("containerd's config does not parse", lambda n: (
        n.etc / "containerd/config.toml").write_text("version = = 2\n"), "containerd", "fail",
     "does not parse"),
    ("BinaryName does not exist", lambda n: n.containerd(binary="/nope/gpuhook-runtime"),
     "containerd", "fail", "/nope/gpuhook-runtime does not exist"),
    ("BinaryName is not gpuhook's", lambda n: n.containerd(binary="/bin/true"),
     "containerd", "fail", "is not gpuhook's gpuhook-runtime launcher"),
    ("a drop-in that is not imported", lambda n: (
        n.etc / "containerd/conf.d/99-gpuhook.toml").write_text("version = 2\n"),
     "containerd", "fail", "does not import it"),
    ("CDI annotations passed to the runtime", lambda n: n.containerd(
        pod_annotations='pod_annotations = ["cdi.k8s.io/*"]'), "containerd", "fail",
     "past gpuhook's policy"),
    ("gpuhook not registered with containerd", lambda n: (
        n.etc / "containerd/config.toml").write_text("version = 2\n"), "containerd", "warn",
     "not registered"),
    ("a CRI-O drop-in naming another binary", lambda n: (
        n.etc / "crio/crio.conf.d/99-gpuhook.conf").write_text(
        '[crio.runtime.runtimes.nvidia]\nruntime_path = "/bin/true"\n'), "crio", "fail",
     "not gpuhook's"),
    ("daemon.json naming a missing runtime", lambda n: (
        n.etc / "docker/daemon.json").write_text(
        '{"runtimes": {"nvidia": {"path": "/gone/gpuhook-runtime"}}}'), "docker", "fail",
     "does not exist"),
    ("a hooks.d file naming another binary", lambda n: (n.etc / "hooks.d/gpuhook.json")
     .write_text('{"version": "1.0.0", "hook": {"path": "/bin/true"}, "when": {"always": '
                 'true}, "stages": ["prestart"]}'), "oci-hooks", "fail", "not gpuhook's"),
]


def _one_gpu_mig_empty(n: Node) -> str:
    path = n.root / "mig-empty.yaml"
    path.write_text(
        'driver_version: "550.54.15"\ncuda_version: "12.4"\ngpus:\n'
        "  - {index: 0, minor: 0, uuid: GPU-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c,\n"
        '     pci_bus_id: "0000:07:00.0", name: NVIDIA A100-SXM4-40GB, mig_enabled: true,\n'
        "     mig_devices: []}\n")
    return str(path)


@pytest.mark.parametrize(("breaks", "check", "want", "says"),
                         [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES])
def test_each_failure_is_named_by_its_check(node: Node, breaks: Callable[[Node], object],
                                            check: str, want: str, says: str) -> None:
    breaks(node)
    code, report = node.doctor()
    got, detail, fix = status(report, check)
    assert (got, says in detail) == (want, True), detail
    assert fix, "a failing check says how to fix it"
    assert code == (1 if want == "fail" else 0)


def test_text_output_prints_each_fix(node: Node) -> None:
    _rm("run/nvidia-persistenced/socket")(node)
    r = subprocess.run([str(GPUHOOK), "doctor", "--config", str(node.config),
                        "--containerd-config", str(node.etc / "containerd/config.toml")],
                       capture_output=True, text=True, timeout=120, check=False)
    assert "WARN  persistence: no " in r.stdout
    assert "      fix: systemctl enable --now nvidia-persistenced" in r.stdout


def test_inventory_show_names_the_old_and_the_new_driver_version(node: Node) -> None:
    (node.root / "proc/driver/nvidia/version").write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  555.42.02  Thu May 16 2024\n")
    r = subprocess.run([str(GPUHOOK), "inventory", "show", "--config", str(node.config)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 1
    assert "proc/driver/nvidia/version changed (was 'NVRM version:" in r.stdout
    assert "now 'NVRM version: NVIDIA UNIX x86_64 Kernel Module  555.42.02" in r.stdout


@pytest.mark.parametrize("pattern", [
    pytest.param("cdi.k8s.io/*", id="the CDI prefix is named by doctor as install names it"),
    pytest.param("*/*", id="a catch-all is named by doctor as install names it"),
    pytest.param("*", id="a lone star passes nothing with a slash for doctor as for install"),
])
def test_doctor_judges_pod_annotations_as_install_does(node: Node, pattern: str) -> None:
    """One judgement (engines/containerd.py): doctor fails exactly when install warns, with
    install's words."""
    from gpuhook.engines.containerd import cdi_annotation_warnings

    node.containerd(pod_annotations=f'pod_annotations = ["{pattern}"]')
    warnings = cdi_annotation_warnings(
        (node.etc / "containerd/config.toml").read_text(), "nvidia")
    code, report = node.doctor()
    got, detail, _ = status(report, "containerd")
    assert (got, code) == (("fail", 1) if warnings else ("ok", 0)), detail
    assert all(w in detail for w in warnings), (warnings, detail)
