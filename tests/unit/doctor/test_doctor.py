"""`gpuhook doctor` against fake host trees: a healthy node first, then one tree per failure,
each breaking exactly one thing and expecting exactly that check to say so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gpuhook.config import Config
from gpuhook.doctor.node import bpf_attach_check, check_persistence
from gpuhook.host.proc import HostPaths
from tests.fakedriver import build
from tests.fakes import pynvml_fake as fake
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


@pytest.fixture(scope="module")
def mig8_driver(tmp_path_factory: pytest.TempPathFactory) -> build.FakeDriverBuild:
    """The fake driver (gcc at test time) for the shipped 8x A100 inventory."""
    reason = build.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    return build.build_fake_driver(tmp_path_factory.mktemp("fakedriver"), "8xa100-mig")


@pytest.fixture
def node(tmp_path: Path, mig8_driver: build.FakeDriverBuild) -> Node:
    """The shipped fake 8x A100 host, made healthy: the fake driver installed (its libraries,
    nvidia-smi, GSP firmware, persistenced's socket, an ld.so.cache written by the real
    `ldconfig -r`), a v1 devices cgroup, a fresh snapshot, and gpuhook registered with
    containerd."""
    root = build.make_fake_host(mig8_driver, tmp_path / "host").root
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/mountinfo").write_text(MOUNTINFO_V1)
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
    ("libcuda missing (its ld cache links lead nowhere)", _rm(
        "usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15"), "driver-files:compute", "fail",
     "needs libcuda.so.550.54.15"),
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


@pytest.mark.parametrize(("modes", "want", "says"), [
    ((1, 1), "ok", "persistence mode on for 2 GPU(s)"),
    ((1, None), "ok", "not supported on 1"),
    ((1, 0), "warn", "persistence mode is off on GPU 1 (GPU-bbbb)"),
], ids=["on everywhere", "not supported on one", "off on one GPU"])
def test_persistence_mode_is_asked_of_nvml_per_gpu(
        tmp_path: Path, modes: tuple[int | None, ...], want: str, says: str) -> None:
    world = fake.World(gpus=[
        fake.FakeGpu(f"GPU-{c * 4}", "NVIDIA A100-SXM4-40GB", f"00000000:0{i}:00.0", minor=i,
                     persistence=m) for i, (c, m) in enumerate(zip("ab", modes, strict=True))])
    check = check_persistence(Config(), HostPaths(str(tmp_path)), fake.module(world))
    assert (check.status, says in check.detail) == (want, True), check
    assert world.initialized == 0 and world.shutdowns == 1


def test_persistence_mode_that_nvml_cannot_tell_is_a_warning_naming_the_error(
        tmp_path: Path) -> None:
    world = fake.World(gpus=[], init_error=fake.NVML_ERROR_DRIVER_NOT_LOADED)
    check = check_persistence(Config(), HostPaths(str(tmp_path)), fake.module(world))
    assert check.status == "warn" and "not loaded" in check.detail, check


CGROUP2 = "/sys/fs/cgroup/unified"  # this machine's cgroup2 (hybrid); /sys/fs/cgroup on v2


@pytest.mark.skipif(os.geteuid() != 0, reason="attaching a BPF program needs root")
def test_bpf_check_attaches_a_device_program_to_a_scratch_cgroup_and_removes_it() -> None:
    root = CGROUP2 if os.path.isdir(CGROUP2) else "/sys/fs/cgroup"
    before = set(os.listdir(root))
    check = bpf_attach_check(root)
    assert check.status == "ok" and "loads and attaches" in check.detail, check
    assert set(os.listdir(root)) == before  # the scratch cgroup is gone


def test_bpf_check_without_a_cgroup2_fails_with_the_fix() -> None:
    if os.geteuid() != 0:
        pytest.skip("loading a BPF program needs root")
    check = bpf_attach_check(None)
    assert check.status == "fail" and "no cgroup2 is mounted" in check.detail, check


@pytest.mark.skipif(os.geteuid() != 0, reason="attaching a BPF program needs root")
def test_bpf_check_names_a_cgroup_it_cannot_make(tmp_path: Path) -> None:
    check = bpf_attach_check(str(tmp_path / "not-a-cgroup-fs" / "missing"))
    assert check.status == "fail" and "cannot make a scratch cgroup" in check.detail, check


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
