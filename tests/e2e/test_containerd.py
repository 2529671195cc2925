"""gpuhook through real containerd: `gpuhook install` registers `gpuhook-runtime` in a private
containerd's config, then containers start through it both ways a node starts them:

- `ctr run --runc-binary gpuhook-runtime` (containerd's task API, runc v2 shim);
- the CRI gRPC API (runtime.v1) with the runtime handler `gpuhook install` registered, the way
  the kubelet runs a pod: pod sandbox (host network) + container with the device plugin's mount.

Both modes of the shim are proven, each with its own containerd (the mode is in the gpuhook
config, which reaches the shim through containerd's environment): `spec` (runc itself creates the
nodes and cgroup rules from the edited config.json) and `hook` (the shim adds gpuhook's prestart
hook, which does it).

Each container runs the busybox device probe (tests/e2e/device_probe.py) and must see exactly
what it asked for: the requested GPU's nodes open with ENXIO (the device cgroup allows them and
there is no driver), no other NVIDIA node exists, and every other NVIDIA device number is denied
(EPERM) by the device cgroup. The fake 8x A100 node (GPUs 0, 1 in MIG mode) stands in for NVML.
"""

from __future__ import annotations

import contextlib
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

from tests.e2e import device_probe
from tests.e2e.containerd_harness import (
    MINIMAL_PATH,
    Containerd,
    cri_missing,
    remove_cgroups,
    shim_pids,
)
from tests.e2e.cri.client import CriClient, read_cri_log, running_pod
from tests.e2e.device_probe import CASES, DEVICE_DIR, GPU2, Case
from tests.e2e.oci_image import PAUSE_SCRIPT, ImageSpec, write_pod_images

pytestmark: list[pytest.MarkDecorator] = [pytest.mark.e2e]

RUNTIME_NAME = "nvidia"
NAMESPACE = f"gpuhook-e2e-{os.getpid()}"  # also ctr's cgroup parent: /<namespace>/<id>
POD_CGROUP = f"gpuhook-e2e-pod-{os.getpid()}"
IMAGE = "docker.io/library/gpuhook-busybox:e2e"
PAUSE_IMAGE = "docker.io/library/gpuhook-pause:e2e"
BIN = Path(sys.executable).parent
GPUHOOK = BIN / "gpuhook"
GPUHOOK_RUNTIME = BIN / "gpuhook-runtime"

_ids = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_ids)}"


def _missing() -> str | None:
    if not GPUHOOK_RUNTIME.exists():
        return f"{GPUHOOK_RUNTIME} missing: pip install -e . in the venv"
    return None


_why = cri_missing() or _missing()
if _why:
    pytestmark.append(pytest.mark.skip(reason=_why))


def _register(config: Path) -> subprocess.CompletedProcess[str]:
    """`gpuhook install --runtime containerd --engine-config <file> --name nvidia`, as an
    operator."""
    return subprocess.run(
        [str(GPUHOOK), "install", "--runtime", "containerd", "--engine-config", str(config),
         "--name", RUNTIME_NAME],
        capture_output=True, text=True, env={"PATH": f"{BIN}:{MINIMAL_PATH}"}, timeout=60,
        check=False,
    )  # fmt: skip


@dataclass
class Node:
    mode: str  # the shim's: "spec" or "hook"
    containerd: Containerd
    gpuhook_config: Path
    gpuhook_log: Path
    workdir: Path


@pytest.fixture(scope="module", params=["spec", "hook"], ids=["shim-spec-mode", "shim-hook-mode"])
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    """A private containerd with the busybox and pause images imported and gpuhook installed
    (then restarted, as `gpuhook install` tells the operator to)."""
    mode = str(request.param)
    work = tmp_path_factory.mktemp(f"containerd-{mode}")
    archive = write_pod_images(work / "images.tar", ImageSpec(IMAGE, cmd=["sh"]), PAUSE_IMAGE)
    log = work / "gpuhook.log"
    config = device_probe.write_fake_node_config(work / "gpuhook.toml", log, mode=mode)
    cd = Containerd(work / "cd", sandbox_image=PAUSE_IMAGE, env={"GPUHOOK_CONFIG": str(config)})
    cd.write_config()
    try:
        yield from _run_node(mode, cd, archive, config, log, work)
    finally:
        left = [p for cg in (NAMESPACE, POD_CGROUP) for p in remove_cgroups(cg)]
        assert not left, f"cgroups still busy after containerd and its shims stopped: {left}"


def _run_node(
    mode: str, cd: Containerd, archive: Path, config: Path, log: Path, work: Path
) -> Iterator[Node]:
    with cd.running():
        for ns in (NAMESPACE, "k8s.io"):
            names = cd.import_image(archive, ns)
            assert {IMAGE, PAUSE_IMAGE} <= set(names), names
        res = _register(cd.config)
        assert res.returncode == 0, f"gpuhook install failed:\n{res.stdout}\n{res.stderr}"
        cd.restart()
        yield Node(mode=mode, containerd=cd, gpuhook_config=config, gpuhook_log=log, workdir=work)


def _runtime_flags(cd: Containerd) -> list[str]:
    """ctr's own way to name the OCI runtime: the runc v2 shim running gpuhook-runtime."""
    return ["--runtime", "io.containerd.runc.v2", "--runc-binary", str(GPUHOOK_RUNTIME),
            "--runc-root", str(cd.runc_root), "--fifo-dir", str(cd.fifo_dir)]  # fmt: skip


def _mount_flags(requested: tuple[str, ...]) -> list[str]:
    flags = []
    for dev in requested:
        flags += ["--mount", f"type=bind,src=/dev/null,dst={DEVICE_DIR}/{dev},options=rbind:ro"]
    return flags


def ctr_run(node: Node, cid: str, requested: tuple[str, ...], env: str | None,
            script: str, privileged: bool = False) -> subprocess.CompletedProcess[str]:
    args = ["run", "--rm", *_runtime_flags(node.containerd), *_mount_flags(requested)]
    if privileged:
        args.append("--privileged")
    if env is not None:
        args += ["--env", f"NVIDIA_VISIBLE_DEVICES={env}"]
    args += [IMAGE, cid, "sh", "-c", script]
    return node.containerd.ctr(*args, namespace=NAMESPACE, check=False, timeout=60)


# --- ctr run: containerd's task API with gpuhook-runtime as the runc binary -------------------


def test_install_registers_the_runtime_in_containerd_config(node: Node) -> None:
    """After `gpuhook install`, containerd's CRI plugin loaded a runtime `nvidia` whose binary is
    gpuhook-runtime (read back from containerd's own view of its config, not from the file)."""
    res = subprocess.run(
        ["containerd", "--config", str(node.containerd.config), "config", "dump"],
        capture_output=True, text=True, env={"PATH": MINIMAL_PATH}, timeout=30, check=True,
    )  # fmt: skip
    import tomlkit

    dumped = tomlkit.parse(res.stdout).unwrap()
    cri = dumped["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]
    rt = cri["runtimes"][RUNTIME_NAME]
    assert rt["runtime_type"] == "io.containerd.runc.v2"
    assert rt["options"]["BinaryName"] == str(GPUHOOK_RUNTIME)
    # the other options come from the runc runtime (here: the private runc root)
    assert rt["options"]["Root"] == cri["runtimes"]["runc"]["options"]["Root"]
    assert rt["options"]["Root"] == str(node.containerd.runc_root)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_ctr_run_through_gpuhook_runtime(node: Node, case: Case) -> None:
    res = ctr_run(node, unique("ctr"), case.requested, case.env, device_probe.script(),
                  privileged=case.privileged)
    assert res.returncode == 0, f"ctr run failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    problems = case.expect.check(device_probe.parse(res.stdout))
    assert not problems, "\n".join(problems) + "\n--- probe output:\n" + res.stdout


def test_ctr_run_of_an_unknown_gpu_fails_naming_it(node: Node) -> None:
    """Fail closed: a request for GPU 9 on an 8-GPU node must not start the container, and the
    reason (from gpuhook-runtime's --log, relayed by the shim) names the id."""
    res = ctr_run(node, unique("ctr-unknown"), ("9",), None, "echo started")
    assert res.returncode != 0, f"container started:\n{res.stdout}"
    assert "started" not in res.stdout
    assert "OCI runtime create failed: gpuhook-runtime: create " in res.stderr, res.stderr
    assert "9 not found; available:" in res.stderr, res.stderr


@contextlib.contextmanager
def detached(node: Node, requested: tuple[str, ...]) -> Iterator[str]:
    """A running ctr container (a TERM-aware sleep loop) with `requested` GPUs; its id."""
    cd = node.containerd
    cid = unique("ctr-detached")
    cd.ctr("run", "--detach", *_runtime_flags(cd), *_mount_flags(requested),
           IMAGE, cid, "sh", "-c", PAUSE_SCRIPT, namespace=NAMESPACE)  # fmt: skip
    try:
        yield cid
    finally:
        cd.ctr("task", "kill", "-s", "KILL", cid, namespace=NAMESPACE, check=False)
        _wait_task_gone(cd, cid)
        cd.ctr("container", "rm", cid, namespace=NAMESPACE, check=False)


def ctr_exec_probe(node: Node, cid: str) -> str:
    cd = node.containerd
    res = cd.ctr("task", "exec", "--exec-id", unique("probe"), "--fifo-dir", str(cd.fifo_dir),
                 cid, "sh", "-c", device_probe.script(), namespace=NAMESPACE)  # fmt: skip
    return res.stdout


def test_the_shim_and_runtime_see_gpuhook_config(node: Node) -> None:
    """containerd passes its environment to its shims, and they to the OCI runtime: the
    GPUHOOK_CONFIG containerd was started with reaches gpuhook-runtime (its decision log, named
    only in that config, records the container)."""
    cd = node.containerd
    with detached(node, ("2",)) as cid:
        pids = shim_pids(cd.socket)
        assert pids, "no containerd-shim-runc-v2 for our socket"
        envs = [Path(f"/proc/{p}/environ").read_bytes().split(b"\0") for p in pids]
        want = f"GPUHOOK_CONFIG={node.gpuhook_config}".encode()
        assert all(want in env for env in envs), "a shim lacks GPUHOOK_CONFIG"
    assert node.gpuhook_log.exists(), "gpuhook-runtime wrote no decision log: config not seen"
    records = [json.loads(line) for line in node.gpuhook_log.read_text().splitlines()]
    events = sorted(str(r.get("event")) for r in records if r.get("id") == cid)
    # spec mode: the shim alone decides at `create`; hook mode: the shim adds the hook, which
    # decides again at prestart with the container's pid (and --config from the shim).
    assert events == (["create"] if node.mode == "spec" else ["create", "prestart"]), records


def test_a_grant_survives_runc_update(node: Node) -> None:
    """`runc update` (what a resource change does to a running container) rewrites the
    container's cgroup from runc's saved config; the GPU grant must still hold afterwards, and
    nothing more may be allowed. Exec'd processes go through gpuhook-runtime untouched."""
    with detached(node, ("2",)) as cid:
        before = device_probe.parse(ctr_exec_probe(node, cid))
        assert not GPU2.check(before), GPU2.check(before)
        res = subprocess.run(
            ["runc", "--root", str(node.containerd.runc_root / NAMESPACE), "update",
             "--memory", str(256 << 20), "--pids-limit", "1000", cid],
            capture_output=True, text=True, env={"PATH": MINIMAL_PATH}, timeout=30, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        out = ctr_exec_probe(node, cid)
        problems = GPU2.check(device_probe.parse(out))
        assert not problems, "\n".join(problems) + "\n--- probe output after update:\n" + out


def _wait_task_gone(cd: Containerd, cid: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = cd.ctr("task", "delete", cid, namespace=NAMESPACE, check=False)
        if res.returncode == 0 or "not found" in res.stderr:
            return
        time.sleep(0.1)


# --- CRI: the kubelet's path, runtime handler "nvidia" ------------------------------------------


@dataclass
class Pod:
    cri: CriClient
    pod_id: str
    sandbox_config: object
    log_dir: Path


@pytest.fixture(scope="module")
def pod(node: Node) -> Iterator[Pod]:
    """One pod sandbox (host network, no CNI) run with the `nvidia` handler; the sandbox itself
    is a container without a GPU request, so it also goes through gpuhook-runtime untouched."""
    cri = CriClient(socket=node.containerd.socket, gen_dir=node.workdir / "cri_gen")
    runtime_name, _ = cri.version()  # the CRI plugin answers runtime.v1 on this socket
    assert runtime_name == "containerd"
    log_dir = node.workdir / "pod-logs"
    log_dir.mkdir()
    name = unique("pod")
    config = cri.sandbox_config(
        name=name, uid=name, log_dir=log_dir, cgroup_parent=f"/{POD_CGROUP}", privileged=True
    )
    with running_pod(cri, config, RUNTIME_NAME) as pod_id:
        yield Pod(cri=cri, pod_id=pod_id, sandbox_config=config, log_dir=log_dir)


def _cri_run(pod: Pod, name: str, case: Case, script: str) -> tuple[str, str]:
    """Create + start a container running `script`, wait for it to exit; (id, log text)."""
    cri = pod.cri
    env = {"NVIDIA_VISIBLE_DEVICES": case.env} if case.env is not None else {}
    cid = cri.create_container(
        pod.pod_id, pod.sandbox_config, name=name, image=IMAGE, command=["sh", "-c", script],
        env=env, mounts=[("/dev/null", f"{DEVICE_DIR}/{d}") for d in case.requested],
        log_path=f"{name}.log", privileged=case.privileged,
    )  # fmt: skip
    try:
        cri.start_container(cid)
        st = cri.wait_exited(cid)
        assert st.state == 2, f"container did not exit: {st}"
        assert st.exit_code == 0, f"probe exited {st.exit_code}: {st}"
        return cid, _read_log_until(pod.log_dir / f"{name}.log", device_probe.END_MARK)
    finally:
        cri.remove_container(cid)


def _read_log_until(path: Path, mark: str, timeout: float = 5.0) -> str:
    """The CRI log's text once it holds `mark` (containerd may report the exit before its log
    writer has drained the container's stdout), or whatever it holds at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        text = read_cri_log(path) if path.exists() else ""
        if mark in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cri_container_through_the_nvidia_handler(pod: Pod, case: Case) -> None:
    _, out = _cri_run(pod, unique("probe"), case, device_probe.script())
    problems = case.expect.check(device_probe.parse(out))
    assert not problems, "\n".join(problems) + "\n--- probe output:\n" + out


def test_cri_start_of_an_unknown_gpu_fails_naming_it(pod: Pod) -> None:
    """Fail closed through the kubelet's path: StartContainer (or CreateContainer) fails with an
    error naming the id; the container never runs."""
    import grpc

    cri = pod.cri
    name = unique("unknown")
    with pytest.raises(grpc.RpcError) as info:
        cid = cri.create_container(
            pod.pod_id, pod.sandbox_config, name=name, image=IMAGE,
            command=["sh", "-c", "echo started"], env={},
            mounts=[("/dev/null", f"{DEVICE_DIR}/9")], log_path=f"{name}.log",
        )  # fmt: skip
        try:
            cri.start_container(cid)
        finally:
            cri.remove_container(cid)
    details = str(info.value.details())
    assert "OCI runtime create failed: gpuhook-runtime: create " in details, details
    assert "9 not found; available:" in details, details
    log = pod.log_dir / f"{name}.log"
    assert not log.exists() or "started" not in log.read_text()


def test_cri_exec_passes_through_and_sees_the_same_devices(pod: Pod) -> None:
    """`runc exec` goes through gpuhook-runtime untouched: a process exec'd into a running GPU
    container sees what the container's own process saw."""
    cri = pod.cri
    name = unique("exec")
    cid = cri.create_container(
        pod.pod_id, pod.sandbox_config, name=name, image=IMAGE,
        command=["sh", "-c", PAUSE_SCRIPT], env={"NVIDIA_VISIBLE_DEVICES": "all"},
        mounts=[("/dev/null", f"{DEVICE_DIR}/2")], log_path=f"{name}.log",
    )  # fmt: skip
    try:
        cri.start_container(cid)
        res = cri.exec_sync(cid, ["sh", "-c", device_probe.script()])
        assert res.exit_code == 0, res
        problems = GPU2.check(device_probe.parse(res.stdout))
        assert not problems, "\n".join(problems) + "\n--- probe output:\n" + res.stdout
    finally:
        cri.stop_container(cid, timeout_s=2)
        cri.remove_container(cid)


# --- the operator's path: a broken gpuhook config, stdio on /dev/null, explain -----------------


@contextlib.contextmanager
def broken_gpuhook_config(node: Node) -> Iterator[None]:
    """The node's gpuhook config with a typo (an unknown key), as an operator's edit leaves it;
    containerd's shims read it on every call, so no restart is involved."""
    good = node.gpuhook_config.read_text()
    node.gpuhook_config.write_text(good + 'inventry = "nvml"\n')
    try:
        yield
    finally:
        node.gpuhook_config.write_text(good)


def test_ctr_null_io_refusal_reaches_ctr(node: Node) -> None:
    """`ctr run --null-io`: the runtime's stdout/stderr are a read-only /dev/null (go-runc's
    NewNullIO); the refusal still reaches ctr through the runtime's --log."""
    cd = node.containerd
    res = cd.ctr("run", "--rm", "--null-io", *_runtime_flags(cd), *_mount_flags(("9",)),
                 IMAGE, unique("ctr-null"), "sh", "-c", "echo started",
                 namespace=NAMESPACE, check=False)  # fmt: skip
    assert res.returncode != 0
    assert "gpuhook-runtime: create " in res.stderr, res.stderr
    assert "9 not found; available:" in res.stderr, res.stderr
    assert "exit status 120" not in res.stderr and "log.json" not in res.stderr, res.stderr


def test_ctr_null_io_with_a_broken_config_names_the_config(node: Node) -> None:
    cd = node.containerd
    with broken_gpuhook_config(node):
        res = cd.ctr("run", "--rm", "--null-io", *_runtime_flags(cd), *_mount_flags(("2",)),
                     IMAGE, unique("ctr-null"), "sh", "-c", "echo started",
                     namespace=NAMESPACE, check=False)  # fmt: skip
    assert res.returncode != 0
    assert "unknown key 'inventry' (did you mean 'inventory'?)" in res.stderr, res.stderr


def test_cri_broken_config_starts_a_gpu_less_pod_and_refuses_a_gpu_pod_by_name(
        node: Node) -> None:
    """With a typo in gpuhook's config: a new pod's sandbox (NullIO: stdio on a read-only
    /dev/null) and its GPU-less container start through the nvidia handler; a GPU container in
    the same pod is refused, and the config's problem is in the CRI error kubelet gets."""
    import grpc

    cri = CriClient(socket=node.containerd.socket, gen_dir=node.workdir / "cri_gen_broken")
    log_dir = node.workdir / "pod-logs-broken"
    log_dir.mkdir(exist_ok=True)
    name = unique("broken-pod")
    config = cri.sandbox_config(name=name, uid=name, log_dir=log_dir,
                                cgroup_parent=f"/{POD_CGROUP}", privileged=True)
    try:
        with broken_gpuhook_config(node):
            pod_id = cri.run_pod_sandbox(config, runtime_handler=RUNTIME_NAME)
            try:
                pod = Pod(cri=cri, pod_id=pod_id, sandbox_config=config, log_dir=log_dir)
                plain = next(c for c in CASES if not c.requested and c.env is None)
                _, out = _cri_run(pod, unique("plain"), plain, device_probe.script())
                problems = plain.expect.check(device_probe.parse(out))
                assert not problems, "\n".join(problems) + "\n--- probe output:\n" + out
                gname = unique("gpu")
                with pytest.raises(grpc.RpcError) as info:
                    gid = cri.create_container(
                        pod_id, config, name=gname, image=IMAGE,
                        command=["sh", "-c", "echo started"], env={},
                        mounts=[("/dev/null", f"{DEVICE_DIR}/2")], log_path=f"{gname}.log",
                    )  # fmt: skip
                    try:
                        cri.start_container(gid)
                    finally:
                        cri.remove_container(gid)
                details = str(info.value.details())
                assert "unknown key 'inventry'" in details, details
                assert "refused: the container asks for GPUs (2, through volume-mounts)" \
                    in details, details
            finally:
                cri.stop_pod_sandbox(pod_id)
                cri.remove_pod_sandbox(pod_id)
    finally:
        cri.close()
    # the refusal is in the decision log under the pod's name: `gpuhook explain` finds it
    res = subprocess.run([str(GPUHOOK), "explain", name, "--config", str(node.gpuhook_config)],
                         capture_output=True, text=True, timeout=60, check=False,
                         env={"PATH": MINIMAL_PATH})  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"pod gpuhook-e2e/{name}  container {gname}" in res.stdout, res.stdout
    assert "REFUSED" in res.stdout and "unknown key 'inventry'" in res.stdout, res.stdout


def test_explain_finds_a_cri_pod_by_name(node: Node, pod: Pod) -> None:
    """A GPU container run through the kubelet's path is in the decision log under its pod's
    namespace and name (containerd's CRI annotations), and `gpuhook explain POD` tells it."""
    name = unique("explained")
    case = next(c for c in CASES if c.requested == ("2",) and not c.privileged)
    cid, _ = _cri_run(pod, name, case, device_probe.script())
    pod_name = pod.sandbox_config.metadata.name  # type: ignore[attr-defined]
    res = subprocess.run(
        [str(GPUHOOK), "explain", f"gpuhook-e2e/{pod_name}/{name}", "--config",
         str(node.gpuhook_config)],
        capture_output=True, text=True, timeout=60, check=False, env={"PATH": MINIMAL_PATH},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"container {cid}  pod gpuhook-e2e/{pod_name}  container {name}" in res.stdout
    assert "asked:   2 through volume-mounts" in res.stdout, res.stdout
    assert "got:     GPU 2 (GPU-" in res.stdout, res.stdout


def test_doctor_reads_the_registration_install_made(node: Node) -> None:
    """`gpuhook doctor` on the config `gpuhook install` edited (and containerd loaded): the
    runtime is found and its binary is gpuhook's."""
    res = subprocess.run(
        [str(GPUHOOK), "doctor", "--json", "--config", str(node.gpuhook_config),
         "--containerd-config", str(node.containerd.config),
         "--containerd-drop-in-dir", str(node.workdir / "no-conf.d")],
        capture_output=True, text=True, timeout=120, check=False, env={"PATH": MINIMAL_PATH},
    )  # fmt: skip
    report = json.loads(res.stdout)
    [check] = [c for c in report["checks"] if c["name"] == "containerd"]
    assert check["status"] == "ok", check
    assert f"runtime '{RUNTIME_NAME}'" in check["detail"], check
    assert "runs gpuhook-runtime" in check["detail"], check
    [config] = [c for c in report["checks"] if c["name"] == "config"]
    assert config["status"] == "ok", config
