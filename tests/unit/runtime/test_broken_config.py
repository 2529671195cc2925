"""The operator's path through the shim and the hook as processes: a config that does not load
stops only what gpuhook would act on, every command reaches the same runtime, the refusal
reaches runc's --log even when stdio is a read-only /dev/null (containerd's NullIO), and
gpuhook's own warnings never go to the container's stdio."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.unit import specs
from tests.unit.runtime.test_shim_exec import SHIM, World, gpu_spec, make_world

TYPO = 'runtimes = ["{rt}"]\nlog-file = "{log}"\ninventry = "nvml"\n'


@pytest.fixture
def world(tmp_path: Path) -> World:
    """test_shim_exec's world: a recording fake runc and a valid config naming it."""
    return make_world(tmp_path)


def broken(w: World) -> None:
    """A config with a typo (an unknown key) that still names the runtime and the log."""
    w.config.write_text(TYPO.format(rt=w.runtime, log=w.log))


def run_null_io(w: World, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The shim with stdout/stderr on /dev/null opened read-only, as go-runc's NewNullIO
    (containerd v1.6.20 vendor/github.com/containerd/go-runc/io.go: os.Open(os.DevNull))
    gives them to runc for a pod sandbox or `ctr run --null-io`: every write is EBADF."""
    with open(os.devnull, "rb") as null:
        return subprocess.run([str(SHIM), *args], stdin=null, stdout=null, stderr=null,
                              cwd=w.root, env=w.env(), timeout=60, check=False)


def records(w: World) -> list[dict[str, Any]]:
    if not w.log.exists():
        return []
    return [json.loads(line) for line in w.log.read_text().splitlines()]


@pytest.mark.parametrize("spec", [
    specs.spec(),
    specs.spec(env=("NVIDIA_VISIBLE_DEVICES=all",)),
    specs.spec(mounts=[{"destination": "/etc/x", "source": "/dev/null", "type": "bind"}]),
], ids=["a pause sandbox asking for nothing", "an unprivileged CUDA image whose env is ignored",
        "a dev null mount outside the device-list root"])
def test_a_broken_config_starts_what_asks_for_nothing_gpuhook_would_grant(
        world: World, spec: dict[str, Any]) -> None:
    broken(world)
    b = world.bundle(spec)
    raw = (b / "config.json").read_bytes()
    log = world.root / "runc.log"
    result = world.shim("--log", str(log), "--log-format", "json", "create", "-b", str(b), "c1")
    assert result.returncode == 7, result.stderr
    assert world.argv() == [str(world.runtime), "--log", str(log), "--log-format", "json",
                            "create", "-b", str(b), "c1"]
    assert (b / "config.json").read_bytes() == raw
    assert result.stderr == "", "a warning reached the container's stdio"
    for rec in records(world):  # only the env case reaches the config at all
        assert rec["decision"] == "untouched-broken-config"
        assert "unknown key 'inventry' (did you mean 'inventory'?)" in rec["config_errors"][0]
        [entry] = [json.loads(x) for x in log.read_text().splitlines()]
        assert entry["level"] == "warning" and "starts untouched" in entry["msg"]


def test_a_broken_config_refuses_a_gpu_request_naming_the_problem(world: World) -> None:
    broken(world)
    b = world.bundle(gpu_spec("3"))
    result = world.shim("create", "-b", str(b), "c1")
    assert result.returncode == 2
    assert "unknown key 'inventry'" in result.stderr
    assert "refused: the container asks for GPUs (3, through volume-mounts)" in result.stderr
    assert world.argv() is None
    [rec] = records(world)  # the log-file line is kept too: the refusal is where one looks
    assert rec["decision"] == "refused" and "a broken config cannot decide" in rec["error"]
    [rec] = records(world)
    assert rec["decision"] == "refused"


def test_a_broken_config_sends_every_command_to_the_same_runtime(world: World) -> None:
    broken(world)  # names world.runtime, which is not on PATH: only the config finds it
    b = world.bundle(specs.spec())
    for args in (["create", "-b", str(b), "c1"], ["state", "c1"], ["delete", "c1"]):
        result = world.shim(*args, env=world.env(PATH="/nonexistent"))
        assert result.returncode == 7, result.stderr
        assert world.argv() == [str(world.runtime), *args]


def test_the_refusal_reaches_the_runtime_log_with_stdio_on_read_only_dev_null(
        world: World) -> None:
    b = world.bundle(gpu_spec("99"))
    log = world.root / "log.json"
    result = run_null_io(world, "--log", str(log), "--log-format", "json",
                         "create", "--bundle", str(b), "c1")
    assert result.returncode == 1, "a failed stderr write changed the exit code"
    [entry] = [json.loads(x) for x in log.read_text().splitlines()]
    assert entry["level"] == "error"
    assert entry["msg"].startswith("gpuhook-runtime: create c1: ")
    assert "99 not found; available:" in entry["msg"]


def test_a_broken_config_refusal_reaches_the_runtime_log_with_null_io(world: World) -> None:
    broken(world)
    b = world.bundle(gpu_spec("3"))
    log = world.root / "log.json"
    result = run_null_io(world, "--log", str(log), "--log-format", "json",
                         "create", "--bundle", str(b), "c1")
    assert result.returncode == 2
    [entry] = [json.loads(x) for x in log.read_text().splitlines()]
    assert "unknown key 'inventry'" in entry["msg"]


def test_an_unwritable_decision_log_is_a_warning_in_the_runtime_log_only(world: World) -> None:
    world.write_config(**{"log-file": "/proc/gpuhook-cannot-write/decisions.log"})
    b = world.bundle(gpu_spec("3"))
    log = world.root / "runc.log"
    result = world.shim("--log", str(log), "create", "-b", str(b), "c1")
    assert result.returncode == 7
    assert result.stderr == "", "the warning went to the container's stdio"
    [line] = log.read_text().splitlines()
    assert "level=warning" in line and "cannot write decision log" in line


# ---- pod identity -------------------------------------------------------------------------------

CONTAINERD = {  # containerd v1.6.20 pkg/cri/server/container_create_linux.go
    "io.kubernetes.cri.container-type": "container",
    "io.kubernetes.cri.sandbox-id": "4f1a" * 16,
    "io.kubernetes.cri.sandbox-namespace": "ml",
    "io.kubernetes.cri.sandbox-name": "trainer-0",
    "io.kubernetes.cri.container-name": "cuda",
    "io.kubernetes.cri.image-name": "nvcr.io/nvidia/cuda:12.4.0-base-ubuntu22.04",
}
CRIO = {  # cri-o internal/factory/container/container.go: own keys + the kubelet's labels
    "io.kubernetes.cri-o.SandboxID": "9b2c" * 16,
    "io.kubernetes.cri-o.ContainerName": "k8s_cuda_trainer-0_ml_0d2e_0",
    "io.kubernetes.pod.namespace": "ml",
    "io.kubernetes.pod.name": "trainer-0",
    "io.kubernetes.container.name": "cuda",
}


@pytest.mark.parametrize(("annotations", "sandbox"), [
    (CONTAINERD, "4f1a" * 16), (CRIO, "9b2c" * 16),
], ids=["containerd's CRI annotations", "CRI-O's annotations and the kubelet's labels"])
def test_the_decision_log_names_the_pod(world: World, annotations: dict[str, str],
                                        sandbox: str) -> None:
    s = gpu_spec("3")
    s["annotations"] = annotations
    b = world.bundle(s)
    assert world.shim("create", "-b", str(b), "c1").returncode == 7
    [rec] = records(world)
    assert rec["pod"] == {"namespace": "ml", "name": "trainer-0", "container": "cuda",
                          "sandbox_id": sandbox}


def test_pod_identity_is_bounded_and_strings_only(world: World) -> None:
    s = gpu_spec("3")
    s["annotations"] = {"io.kubernetes.cri.sandbox-name": "p" * 100000,
                        "io.kubernetes.cri.sandbox-namespace": "ml",
                        "io.kubernetes.cri.container-name": ""}
    b = world.bundle(s)
    assert world.shim("create", "-b", str(b), "c1").returncode == 7
    [rec] = records(world)
    assert rec["pod"] == {"namespace": "ml", "name": "p" * 253}


# ---- the hook -----------------------------------------------------------------------------------

def run_hook(tmp_path: Path, s: dict[str, Any], config_text: str,
             annotations: dict[str, str] | None = None,
             ) -> tuple[subprocess.CompletedProcess[str], Path]:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(s))
    log = tmp_path / "gpuhook.log"
    cfg = tmp_path / "config.toml"
    cfg.write_text(config_text.format(log=log))
    state = {"ociVersion": "1.0.2", "id": "ctr-1", "pid": 1, "bundle": str(bundle),
             "annotations": annotations or {}}
    r = subprocess.run([sys.executable, "-m", "gpuhook", "hook", "prestart", "--config",
                        str(cfg)], input=json.dumps(state), capture_output=True, text=True,
                       check=False, env={"PATH": "/usr/bin:/bin"}, timeout=60)
    return r, log


def test_the_hook_with_a_broken_config_passes_an_ignored_request(tmp_path: Path) -> None:
    r, log = run_hook(tmp_path, specs.spec(env=("NVIDIA_VISIBLE_DEVICES=all",)),
                      'log-file = "{log}"\nmdoe = "hook"\n')
    assert r.returncode == 0, r.stderr
    [rec] = [json.loads(x) for x in log.read_text().splitlines()]
    assert rec["decision"] == "untouched-broken-config"


def test_the_hook_with_a_broken_config_refuses_a_gpu_request(tmp_path: Path) -> None:
    r, log = run_hook(tmp_path, specs.spec(ids=("0",)), 'log-file = "{log}"\nmdoe = "hook"\n',
                      annotations=CONTAINERD)
    assert r.returncode == 2
    assert r.stderr.startswith("gpuhook: ctr-1: config ")
    assert "unknown key 'mdoe' (did you mean 'mode'?)" in r.stderr
    [rec] = [json.loads(x) for x in log.read_text().splitlines()]
    assert rec["decision"] == "refused"
    assert rec["pod"]["name"] == "trainer-0"


def test_the_hook_at_a_terminal_prints_usage_instead_of_waiting(tmp_path: Path) -> None:
    import pty

    primary, secondary = pty.openpty()
    try:
        r = subprocess.run([sys.executable, "-m", "gpuhook", "hook", "prestart"],
                           stdin=secondary, capture_output=True, text=True, timeout=30,
                           env={"PATH": "/usr/bin:/bin", "GPUHOOK_CONFIG": "/nonexistent"},
                           check=False)
    finally:
        os.close(primary)
        os.close(secondary)
    assert r.returncode == 2
    assert "usage: gpuhook hook prestart" in r.stderr
    assert "gpuhook dry-run BUNDLE" in r.stderr


@pytest.mark.parametrize("args", [["state", "c1"], ["create", "-b", "{b}", "c1"]],
                         ids=["a passthrough command", "create of a container with no request"])
def test_the_common_paths_parse_no_toml(world: World, args: list[str]) -> None:
    """The runtimes and the volume-mount root are read from the config's one-line values
    (early.py): the common paths import neither tomllib nor the config module."""
    from tests.unit.runtime.test_shim_exec import imported_modules

    b = world.bundle(specs.spec())
    result = world.shim(*[a.format(b=b) for a in args], importtime=True)
    assert result.returncode == 7
    modules = imported_modules(result.stderr)
    assert "gpuhook.runtime.early" in modules
    assert not modules & {"tomllib", "gpuhook.config", "typing"}


def _hook_at_a_terminal(tmp_path: Path, *extra: str) -> tuple[int, Path]:
    """`gpuhook hook prestart` run by hand: state piped in, stdout/stderr on a terminal."""
    import pty

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(specs.spec(ids=("3",))))
    log = tmp_path / "gpuhook.log"
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'inventory = "{specs.MIG8}"\nhost-root = "{specs.MIG8_HOST}"\n'
                   f'log-file = "{log}"\ndriver-files = false\n')
    state = json.dumps({"ociVersion": "1.0.2", "id": "ctr-1", "pid": 999999999,
                        "bundle": str(bundle)})
    primary, secondary = pty.openpty()
    try:
        r = subprocess.run([sys.executable, "-m", "gpuhook", "hook", "prestart", "--config",
                            str(cfg), *extra], input=state.encode(), stdout=secondary,
                           stderr=secondary, timeout=60, check=False,
                           env={"PATH": "/usr/bin:/bin"})
    finally:
        os.close(primary)
        os.close(secondary)
    return r.returncode, log


def test_a_hook_run_by_hand_does_not_write_the_nodes_log(tmp_path: Path) -> None:
    _, log = _hook_at_a_terminal(tmp_path)
    assert not log.exists()


def test_a_hook_run_by_hand_with_log_writes_it(tmp_path: Path) -> None:
    _, log = _hook_at_a_terminal(tmp_path, "--log")
    [rec] = [json.loads(x) for x in log.read_text().splitlines()]
    assert rec["id"] == "ctr-1" and rec["device_ids"] == ["3"]


def test_a_config_tomllib_cannot_parse_still_refuses_a_request_under_its_own_root(
        world: World) -> None:
    """The configured root is read line by line (early.py) when TOML fails: a device-plugin
    mount under it is a request a working config would act on, so it is refused, not ignored."""
    world.config.write_text(f'runtimes = ["{world.runtime}"]\nvolume-mount-root = "/gpus"\n'
                            f'log-file = "{world.log}"\nthis is not toml = = =\n')
    s = specs.spec(mounts=[{"destination": "/gpus/3", "source": "/dev/null", "type": "bind"}])
    b = world.bundle(s)
    result = world.shim("create", "-b", str(b), "c1")
    assert result.returncode == 2, result.stderr
    assert "refused: the container asks for GPUs (3, through volume-mounts)" in result.stderr
    assert world.argv() is None
    [rec] = records(world)  # the log-file line is kept too: the refusal is where one looks
    assert rec["decision"] == "refused" and "a broken config cannot decide" in rec["error"]
