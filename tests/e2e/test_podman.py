"""gpuhook through real podman, by the hook path: `gpuhook install --runtime podman --hooks-dir D`
writes an OCI hooks.d file; podman (4.3, which runs Debian's runc here) reads it on every
container start and adds gpuhook's prestart hook to the spec; the hook creates the granted nodes
in the container and opens them in its device cgroup.

Podman is fully private to the test: its storage, run and tmp dirs are temporary (nothing under
/var/lib/containers), the network is `none`, cgroups are managed by podman itself (no systemd)
under a parent named for this run, and the ulimits are explicit (the defaults exceed this
machine's limits). Each container runs the same busybox device probe as the containerd tests.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e import device_probe
from tests.e2e.containerd_harness import (
    MINIMAL_PATH,
    remove_cgroups,
    unmount_under,
    wait_for_processes_using,
)
from tests.e2e.device_probe import CASES, DEVICE_DIR, Case
from tests.e2e.oci_image import find_busybox, write_rootfs

pytestmark: list[pytest.MarkDecorator] = [pytest.mark.e2e]

GPUHOOK = Path(sys.executable).parent / "gpuhook"
CGROUP_PARENT = f"gpuhook-e2e-podman-{os.getpid()}"
_ids = itertools.count()


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (podman with cgroupfs, runc)"
    for tool in ("podman", "conmon", "runc"):
        if shutil.which(tool, path=f"{MINIMAL_PATH}:/usr/libexec/podman") is None:
            return f"{tool} not installed (apt: podman, runc)"
    if find_busybox() is None:
        return "busybox not installed (apt: busybox-static)"
    return None


_why = _missing()
if _why:
    pytestmark.append(pytest.mark.skip(reason=_why))


@dataclass
class Podman:
    work: Path
    hooks_dir: Path
    rootfs: Path
    gpuhook_log: Path

    def global_flags(self) -> list[str]:
        return [
            "--root", str(self.work / "storage"),
            "--runroot", str(self.work / "run"),
            "--tmpdir", str(self.work / "tmp"),
            "--hooks-dir", str(self.hooks_dir),
            # runc, named: Debian's podman prefers crun when installed, and crun 1.8 refuses
            # this kernel's hybrid cgroup layout ("cgroups in hybrid mode not supported").
            "--runtime", "runc",
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "none",
        ]  # fmt: skip

    def podman(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["podman", *self.global_flags(), *args],
            capture_output=True, text=True, check=False, timeout=timeout,
            env={"PATH": MINIMAL_PATH, "HOME": str(self.work)}, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def run(self, name: str, case: Case, script: str) -> subprocess.CompletedProcess[str]:
        args = ["run", "--rm", "--name", name, "--network", "none",
                "--cidfile", str(self.work / f"{name}.cid"),
                "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768",
                "--cgroup-parent", f"/{CGROUP_PARENT}",
                # podman's default capabilities lack CAP_MKNOD; the probe uses it to ask the
                # device cgroup about numbers that have no node (it decides, not the node).
                "--cap-add", "MKNOD"]  # fmt: skip
        for dev in case.requested:
            args += ["--mount", f"type=bind,src=/dev/null,dst={DEVICE_DIR}/{dev},ro"]
        if case.env is not None:
            args += ["--env", f"NVIDIA_VISIBLE_DEVICES={case.env}"]
        if case.privileged:
            args.append("--privileged")
        args += ["--rootfs", str(self.rootfs), "sh", "-c", script]
        return self.podman(*args)

    def decisions(self) -> list[dict[str, object]]:
        if not self.gpuhook_log.exists():
            return []
        return [json.loads(line) for line in self.gpuhook_log.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    work = tmp_path_factory.mktemp("podman")
    busybox = find_busybox()
    assert busybox is not None
    log = work / "gpuhook.log"
    config = device_probe.write_fake_node_config(work / "gpuhook.toml", log)
    hooks = work / "hooks.d"
    res = subprocess.run(
        [str(GPUHOOK), "install", "--runtime", "podman", "--hooks-dir", str(hooks),
         "--config", str(config), "--create-dirs"],
        capture_output=True, text=True, check=False, timeout=60, env={"PATH": MINIMAL_PATH},
    )  # fmt: skip
    assert res.returncode == 0, f"gpuhook install failed:\n{res.stdout}\n{res.stderr}"
    pm = Podman(work=work, hooks_dir=hooks, rootfs=write_rootfs(work / "rootfs", busybox),
                gpuhook_log=log)  # fmt: skip
    try:
        yield pm
    finally:
        pm.podman("rm", "--all", "--force", "--time", "0")
        # conmon runs `podman container cleanup` after each container exits, in the background;
        # it mounts podman's storage dir again, so unmount only once those are gone.
        wait_for_processes_using(work)
        unmount_under(work)
        left = remove_cgroups(CGROUP_PARENT)
        assert not left, f"cgroups still busy after podman's containers were removed: {left}"


def _name() -> str:
    return f"gpuhook-e2e-{os.getpid()}-{next(_ids)}"


def test_install_writes_a_prestart_hook_podman_reads(engine: Podman) -> None:
    files = list(engine.hooks_dir.iterdir())
    assert [f.name for f in files] == ["gpuhook.json"]
    hook = json.loads(files[0].read_text())
    assert hook["version"] == "1.0.0"
    assert hook["stages"] == ["prestart"]
    assert hook["when"] == {"always": True}
    assert hook["hook"]["path"] == str(GPUHOOK)
    assert hook["hook"]["args"][:3] == ["gpuhook", "hook", "prestart"]


def test_podman_runs_its_containers_with_runc(engine: Podman) -> None:
    """The setting the rest of this file is proof for: runc runs the prestart hook."""
    res = engine.podman("info", "--format", "{{.Host.OCIRuntime.Name}}")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "runc"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_podman_run_through_the_hooks_dir(engine: Podman, case: Case) -> None:
    res = engine.run(_name(), case, device_probe.script())
    assert res.returncode == 0, f"podman run failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    problems = case.expect.check(device_probe.parse(res.stdout))
    assert not problems, "\n".join(problems) + "\n--- probe output:\n" + res.stdout


def test_the_hook_sees_the_container_pid_and_bundle(engine: Podman) -> None:
    """The state podman's runtime (runc) hands the prestart hook names a live container process
    and the bundle podman wrote under its private storage: the decision log records both."""
    name = _name()
    gpu2 = next(c for c in CASES if c.requested == ("2",))
    res = engine.run(name, gpu2, "echo ran")
    assert res.returncode == 0, res.stderr
    cid = (engine.work / f"{name}.cid").read_text().strip()
    mine = [d for d in engine.decisions() if d.get("id") == cid]
    assert [d.get("event") for d in mine] == ["prestart"], engine.decisions()
    record = mine[0]
    assert record.get("decision") == "applied"
    assert record.get("device_ids") == ["2"]
    pid = record.get("pid")
    assert isinstance(pid, int) and pid > 1, record
    bundle = str(record.get("bundle", ""))
    assert bundle.startswith(str(engine.work / "storage")) and cid in bundle, bundle


def test_an_unknown_gpu_stops_the_container_naming_it(engine: Podman) -> None:
    """Fail closed: the hook exits non-zero, runc aborts the start, podman reports the reason."""
    case = Case("unknown", ("9",), None, device_probe.NOTHING)
    res = engine.run(_name(), case, "echo started")
    assert res.returncode != 0
    assert "started" not in res.stdout
    assert "error running hook" in res.stderr, res.stderr
    assert "gpuhook: " in res.stderr and "9 not found; available:" in res.stderr, res.stderr
