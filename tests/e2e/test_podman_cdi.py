"""The spec `gpuhook cdi generate` writes, consumed by real podman 4.3 (its own CDI support, no
gpuhook hook involved): `podman run --device nvidia.com/gpu=<name>` by index name, UUID name and
`all` gives exactly that device's nodes, which open with ENXIO (the device cgroup allows them, no
driver), and every other probed NVIDIA number gives EPERM. With the fake driver
(tests/fakedriver) the spec's common edits mount the driver files and run gpuhook's
createContainer hook (links, the container's ld cache): `nvidia-smi -L` inside lists exactly the
granted GPUs.

podman reads specs only from /etc/cdi and /var/run/cdi, so the spec goes to /var/run/cdi under a
name unique to this run and is removed afterwards. podman drops a whole spec file it cannot
decode (a newer cdiVersion, an unknown field) and then only says "unresolvable CDI devices"; the
last test shows that this is what a 0.6.0 spec gets, which is why gpuhook writes 0.5.0.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import HOSTS, INVENTORIES
from tests.e2e import device_probe
from tests.e2e.containerd_harness import (
    MINIMAL_PATH,
    remove_cgroups,
    unmount_under,
    wait_for_processes_using,
)
from tests.e2e.device_probe import CONTROL, MIG_1_0, NUMBERS, Expect
from tests.e2e.driver_env import file_hash, tree_hash
from tests.e2e.oci_image import find_busybox, write_rootfs
from tests.e2e.runc_harness import copy_rootfs
from tests.fakedriver import build as fakedriver

pytestmark: list[pytest.MarkDecorator] = [pytest.mark.e2e]

GPUHOOK = Path(sys.executable).parent / "gpuhook"
CDI_DIR = Path("/var/run/cdi")
CGROUP_PARENT = f"gpuhook-e2e-podman-cdi-{os.getpid()}"
UUID3 = "GPU-6eaae5d6-fed8-5df3-83e2-2bafa8032e65"  # GPU 3 of the fake 8x A100 node
_ids = itertools.count()


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (podman with cgroupfs, runc, /var/run/cdi)"
    for tool in ("podman", "conmon", "runc"):
        if shutil.which(tool, path=f"{MINIMAL_PATH}:/usr/libexec/podman") is None:
            return f"{tool} not installed (apt: podman, runc)"
    if find_busybox() is None:
        return "busybox not installed (apt: busybox-static)"
    return None


_why = _missing()
if _why:
    pytestmark.append(pytest.mark.skip(reason=_why))


def _gpu(n: int) -> Expect:
    return Expect(nodes=frozenset({*CONTROL, f"/dev/nvidia{n}"}),
                  allowed=frozenset({*CONTROL.values(), (195, n)}))


# `all` on this node: every MIG device of GPUs 0 and 1 (their parents' nodes, their own caps)
# and GPUs 2..7; not modeset (no display capability), not the MIG monitor/config caps.
ALL = Expect(
    nodes=frozenset({*CONTROL, *(f"/dev/nvidia{i}" for i in range(8)),
                     "/dev/nvidia-caps/nvidia-cap201", "/dev/nvidia-caps/nvidia-cap202"}),
    allowed=frozenset(NUMBERS) - {(195, 254), (511, 1), (511, 2)},
    exact=False,
)  # fmt: skip


@dataclass
class Podman:
    work: Path
    rootfs: Path
    spec: Path

    def podman(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        flags = ["--root", str(self.work / "storage"), "--runroot", str(self.work / "run"),
                 "--tmpdir", str(self.work / "tmp"), "--hooks-dir", str(self.work / "hooks"),
                 "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]
        return subprocess.run(
            ["podman", *flags, *args], capture_output=True, text=True, check=False,
            timeout=timeout, env={"PATH": MINIMAL_PATH, "HOME": str(self.work)},
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def run_device(self, device: str, script: str,
                   rootfs: Path | None = None) -> subprocess.CompletedProcess[str]:
        name = f"gpuhook-e2e-cdi-{os.getpid()}-{next(_ids)}"
        return self.podman(
            "run", "--rm", "--name", name, "--network", "none",
            "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768",
            "--cgroup-parent", f"/{CGROUP_PARENT}", "--cap-add", "MKNOD",
            "--device", device, "--rootfs", str(rootfs or self.rootfs), "sh", "-c", script,
        )  # fmt: skip

    def write_spec(self, *extra: str) -> None:
        cfg = device_probe.write_fake_node_config(self.work / "gpuhook.toml",
                                                  self.work / "gpuhook.log")
        res = subprocess.run(
            [str(GPUHOOK), "cdi", "generate", "--config", str(cfg), "--output", str(self.spec),
             *extra],
            capture_output=True, text=True, check=False, timeout=60,
            env={"PATH": MINIMAL_PATH, "GPUHOOK_CONFIG": "/nonexistent"},
        )  # fmt: skip
        assert res.returncode == 0, res.stderr


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    work = tmp_path_factory.mktemp("podman-cdi")
    (work / "hooks").mkdir()  # no OCI hooks at all: only podman's CDI support acts
    busybox = find_busybox()
    assert busybox is not None
    pm = Podman(work=work, rootfs=write_rootfs(work / "rootfs", busybox),
                spec=CDI_DIR / f"gpuhook-e2e-{os.getpid()}.yaml")
    try:
        pm.write_spec()
        yield pm
    finally:
        pm.spec.unlink(missing_ok=True)
        pm.podman("rm", "--all", "--force", "--time", "0")
        wait_for_processes_using(work)
        unmount_under(work)
        left = remove_cgroups(CGROUP_PARENT)
        assert not left, f"cgroups still busy after podman's containers were removed: {left}"


@pytest.mark.parametrize(
    ("device", "expect"),
    [
        pytest.param("nvidia.com/gpu=2", _gpu(2), id="an index name gives that GPU only"),
        pytest.param(f"nvidia.com/gpu={UUID3}", _gpu(3), id="a UUID name gives that GPU only"),
        pytest.param("nvidia.com/gpu=1:0", MIG_1_0,
                     id="a MIG name gives its parent node and its own capabilities only"),
        pytest.param("nvidia.com/gpu=all", ALL, id="all gives every device all names"),
    ],
)
def test_podman_run_with_a_cdi_device(engine: Podman, device: str, expect: Expect) -> None:
    res = engine.run_device(device, device_probe.script())
    assert res.returncode == 0, f"podman run failed ({res.returncode}):\n{res.stderr[-4000:]}"
    problems = expect.check(device_probe.parse(res.stdout))
    assert not problems, "\n".join(problems) + "\n--- probe output:\n" + res.stdout


def test_an_unknown_cdi_name_is_refused_by_podman(engine: Podman) -> None:
    res = engine.run_device("nvidia.com/gpu=9", "echo started")
    assert res.returncode != 0
    assert "started" not in res.stdout
    assert "unresolvable CDI devices nvidia.com/gpu=9" in res.stderr, res.stderr


def test_podman_4_drops_a_spec_with_a_newer_cdi_version(engine: Podman) -> None:
    """Why the default is 0.5.0: the same spec, labelled 0.6.0, is dropped whole (podman 4.3
    logs no reason even at debug level), and the 0.5.0 one rewritten in its place works."""
    try:
        engine.write_spec("--cdi-version", "0.6.0")
        res = engine.run_device("nvidia.com/gpu=2", "echo started")
        assert res.returncode != 0 and "unresolvable CDI devices" in res.stderr, res.stderr
        assert "started" not in res.stdout
    finally:
        engine.write_spec()
    res = engine.run_device("nvidia.com/gpu=2", "echo started")
    assert res.returncode == 0 and "started" in res.stdout, res.stderr


# --- with the fake driver: the common edits' driver files and createContainer hook -------------

DRIVER_SCRIPT = r"""
echo "SMI-BEGIN"; nvidia-smi -L 2>&1; echo "SMI-END rc=$?"
echo "COUNT $(cuda-count 2>&1 | tr '\n' ' ')"
echo "CACHE $(ldconfig -p | grep -c 'libcuda.so.1 ')"
if (exec 3>>/usr/bin/nvidia-smi) 2>/dev/null; then echo "SMI-WRITABLE"; fi
echo "DONE"
"""


@pytest.mark.parametrize(
    ("device", "gpus"),
    [
        pytest.param("nvidia.com/gpu=2", 1, id="one GPU: nvidia-smi lists one, dlopen counts one"),
        pytest.param("nvidia.com/gpu=all", 8,
                     id="all: nvidia-smi lists the eight GPU nodes all grants"),
    ],
)
def test_podman_cdi_with_the_fake_driver_runs_nvidia_smi(
        engine: Podman, driver_build: fakedriver.FakeDriverBuild, glibc_image: Path,
        tmp_path: Path, device: str, gpus: int) -> None:
    host = fakedriver.make_fake_host(driver_build, tmp_path / "host")
    cfg = tmp_path / "gpuhook.toml"
    cfg.write_text(f'inventory = "{host.inventory}"\nhost-root = "{host.root}"\n'
                   f'log-file = "{tmp_path / "gpuhook.log"}"\n'
                   f'inventory-cache = "{tmp_path / "run" / "inventory.json"}"\n')
    before = tree_hash(host.root), file_hash("/etc/ld.so.cache")
    try:
        res = subprocess.run(
            [str(GPUHOOK), "cdi", "generate", "--config", str(cfg), "--output", str(engine.spec)],
            capture_output=True, text=True, check=False, timeout=60,
            env={"PATH": MINIMAL_PATH, "GPUHOOK_CONFIG": "/nonexistent"},
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        rootfs = copy_rootfs(glibc_image, tmp_path / "rootfs")
        res = engine.run_device(device, DRIVER_SCRIPT, rootfs=rootfs)
    finally:
        engine.write_spec()  # the shipped fake node's spec again, for the other tests
    assert res.returncode == 0, f"podman run failed ({res.returncode}):\n{res.stderr[-4000:]}"
    lines = [x.rstrip() for x in res.stdout.splitlines()]
    assert "DONE" in lines, res.stdout + res.stderr
    smi = lines[lines.index("SMI-BEGIN") + 1:next(i for i, x in enumerate(lines)
                                                  if x.startswith("SMI-END"))]
    assert len(smi) == gpus and all(x.startswith("GPU ") for x in smi), res.stdout
    assert f"COUNT {gpus}" in lines, res.stdout
    assert "CACHE 1" in lines, res.stdout  # libcuda.so.1 in the container's own ld cache
    assert "SMI-WRITABLE" not in lines  # driver files are read-only
    assert (tree_hash(host.root), file_hash("/etc/ld.so.cache")) == before


def test_podman_cdi_imex_channel_gives_that_channel_only(engine: Podman, tmp_path: Path) -> None:
    """`gpuhook cdi generate --class imex-channel` on a host with channels 0 and 1 (fake nodes,
    major 234: no driver here), then `--device nvidia.com/imex-channel=1`."""
    import shutil
    import stat

    host = tmp_path / "host"
    shutil.copytree(HOSTS / "8xa100-mig", host)
    devices = host / "proc" / "devices"
    devices.write_text(devices.read_text().replace(
        "Character devices:\n", "Character devices:\n234 nvidia-caps-imex-channels\n"))
    chans = host / "dev" / "nvidia-caps-imex-channels"
    chans.mkdir(parents=True)
    for c in (0, 1):
        os.mknod(chans / f"channel{c}", stat.S_IFCHR | 0o666, os.makedev(234, c))
    cfg = tmp_path / "gpuhook.toml"
    cfg.write_text(f'inventory = "{INVENTORIES / "8xa100-mig.yaml"}"\n'
                   f'host-root = "{host}"\nlog-file = "{tmp_path / "log"}"\n'
                   f'inventory-cache = "{tmp_path / "run" / "inventory.json"}"\n')
    spec = CDI_DIR / f"gpuhook-e2e-imex-{os.getpid()}.yaml"
    try:
        res = subprocess.run(
            [str(GPUHOOK), "cdi", "generate", "--class", "imex-channel", "--config", str(cfg),
             "--output", str(spec)],
            capture_output=True, text=True, check=False, timeout=60,
            env={"PATH": MINIMAL_PATH, "GPUHOOK_CONFIG": "/nonexistent"},
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        channel = "/dev/nvidia-caps-imex-channels/channel1"
        script = device_probe.script(nodes=(channel, "/dev/nvidia-caps-imex-channels/channel0"),
                                     numbers=((234, 0), (234, 1), (195, 2)))
        res = engine.run_device("nvidia.com/imex-channel=1", script)
    finally:
        spec.unlink(missing_ok=True)
    assert res.returncode == 0, res.stderr[-3000:]
    got = device_probe.parse(res.stdout)
    assert got.nodes[channel] == device_probe.ENXIO
    assert got.nodes["/dev/nvidia-caps-imex-channels/channel0"] == device_probe.ABSENT
    assert got.numbers == {(234, 0): "EPERM", (234, 1): "ENXIO", (195, 2): "EPERM"}
