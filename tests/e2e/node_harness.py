"""A sandbox node for `gpuhook node install`: a directory that plays the host's root (what the
DaemonSet mounts at /host), with a real containerd that runs off *that root's* config, as
systemd would run it on a node:

- containerd runs in its own mount namespace in which the sandbox's `etc/containerd` is bind
  mounted on /etc/containerd and its `usr/local/gpuhook` on /usr/local/gpuhook (over a private
  tmpfs /usr/local, so nothing on this machine's root changes). The host paths the installer
  writes into the config (the `imports` entry, BinaryName) therefore resolve for containerd and
  its shims exactly as on a node; nothing else of this machine's root is hidden.
- a supervisor thread starts containerd again whenever it exits, like systemd's
  `Restart=always` in containerd.service (the installer's `--restart signal` relies on it), and
  counts the starts.
- its socket is `<root>/run/containerd/containerd.sock`, i.e. the host path
  /run/containerd/containerd.sock; everything else it writes is under `<root>/var/lib/cd`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import tomlkit

from tests.e2e import device_probe
from tests.e2e.containerd_harness import (
    CTR,
    MINIMAL_PATH,
    ContainerdError,
    kill_shims,
    log_tail,
    private_config,
    unmount_under,
)
from tests.e2e.cri.client import CriClient, read_cri_log, running_pod

SOCKET = "/run/containerd/containerd.sock"  # the host path
CONFIG = "/etc/containerd/config.toml"
HOST_DIR = "/usr/local/gpuhook"


def node_config(root: Path, sandbox_image: str) -> str:
    """The harness's private containerd config, its sockets moved to the root's /run."""
    doc = tomlkit.parse(private_config(root / "var/lib/cd", sandbox_image))
    doc["grpc"]["address"] = str(root / SOCKET.lstrip("/"))
    doc["ttrpc"]["address"] = str(root / SOCKET.lstrip("/")) + ".ttrpc"
    return tomlkit.dumps(doc)


class SandboxNode:
    def __init__(self, root: Path, sandbox_image: str) -> None:
        self.root = root
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        for d in ("etc/containerd", "usr/local/gpuhook", "run/containerd", "var/lib/cd/cni/bin",
                  "var/lib/cd/cni/conf", "var/lib/cd/opt", "var/lib/cd/runc"):
            (root / d).mkdir(parents=True, exist_ok=True)
        self.config.write_text(node_config(root, sandbox_image))

    def here(self, host_path: str) -> Path:
        return self.root / host_path.lstrip("/")

    @property
    def config(self) -> Path:
        return self.here(CONFIG)

    @property
    def socket(self) -> Path:
        return self.here(SOCKET)

    @property
    def log_path(self) -> Path:
        return self.root / "var/lib/cd/containerd.log"

    def _argv(self) -> list[str]:
        script = (
            "set -e; mount --make-rprivate /; "
            "mount -t tmpfs -o mode=0755 gpuhook-e2e-usr-local /usr/local; "
            f"mkdir -p {HOST_DIR}; "
            f'mount --bind "$1/usr/local/gpuhook" {HOST_DIR}; '
            'mount --bind "$1/etc/containerd" /etc/containerd; '
            f"exec containerd --config {CONFIG}"
        )
        return ["unshare", "--mount", "sh", "-c", script, "sh", str(self.root)]

    def _spawn(self) -> subprocess.Popen[bytes]:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        with self.log_path.open("ab") as log:
            return subprocess.Popen(self._argv(), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=log, env={"PATH": MINIMAL_PATH, "HOME": "/root"},
                                    start_new_session=True)

    def _supervise(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                proc = self.proc
            if proc is None or proc.poll() is not None:
                if self._stop.is_set():
                    return
                with self._lock:
                    self.proc = self._spawn()
                    self.starts += 1
            time.sleep(0.05)

    def start(self, timeout: float = 30.0) -> None:
        self._thread = threading.Thread(target=self._supervise, daemon=True)
        self._thread.start()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.socket.exists() and self.ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise ContainerdError(f"containerd not serving after {timeout}s:\n{self.log_tail()}")

    def pid(self) -> int | None:
        with self._lock:
            return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        kill_shims(self.socket)
        unmount_under(self.root)

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def ctr(self, *args: str, namespace: str = "k8s.io", check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [CTR, "--address", str(self.socket), "--namespace", namespace, *args]
        res = subprocess.run(cmd, check=False, capture_output=True, text=True,
                             env={"PATH": MINIMAL_PATH}, timeout=timeout,
                             stdin=subprocess.DEVNULL)
        if check and res.returncode != 0:
            raise ContainerdError(f"{' '.join(cmd)} -> {res.returncode}\n{res.stderr}")
        return res

    def dump(self) -> str:
        """containerd's own view of its effective config (imports merged), in its namespace."""
        res = subprocess.run(
            ["unshare", "--mount", "sh", "-c",
             'mount --make-rprivate / && mount --bind "$1/etc/containerd" /etc/containerd && '
             f"exec containerd --config {CONFIG} config dump", "sh", str(self.root)],
            capture_output=True, text=True, env={"PATH": MINIMAL_PATH}, timeout=30, check=True)
        return res.stdout


def tree(root: Path) -> dict[str, bytes]:
    """Every file (bytes) and symlink (target) under etc/containerd and usr/local/gpuhook; the
    lock file's pid aside."""
    found = {}
    for top in ("etc/containerd", HOST_DIR.lstrip("/")):
        for dirpath, _dirs, files in os.walk(root / top):
            for name in files:
                p = Path(dirpath) / name
                if name == ".lock":
                    continue
                found[str(p.relative_to(root))] = (
                    os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
        if (root / HOST_DIR.lstrip("/") / "current").is_symlink():
            found["current"] = os.readlink(root / HOST_DIR.lstrip("/") / "current").encode()
    return found


def wait_log(path: Path, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = read_cri_log(path) if path.exists() else ""
        if device_probe.END_MARK in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def gpu_probe_pod(node: SandboxNode, work: Path, image: str, cgroup_parent: str,
                  gpu: str = "2") -> str:
    """A pod through the `nvidia` handler (CRI, as the kubelet runs it) whose container has
    the device plugin's mount for `gpu` and runs the device probe; the probe's output."""
    cri = CriClient(socket=node.socket, gen_dir=work / "cri_gen")
    log_dir = work / f"pod-logs-{time.monotonic_ns()}"
    log_dir.mkdir()
    config = cri.sandbox_config(name=log_dir.name, uid=log_dir.name, log_dir=log_dir,
                                cgroup_parent=f"/{cgroup_parent}", privileged=True)
    with running_pod(cri, config, "nvidia") as pod_id:
        cid = cri.create_container(
            pod_id, config, name="probe", image=image,
            command=["sh", "-c", device_probe.script()],
            env={"NVIDIA_VISIBLE_DEVICES": "all"},
            mounts=[("/dev/null", f"{device_probe.DEVICE_DIR}/{gpu}")], log_path="probe.log")
        cri.start_container(cid)
        st = cri.wait_exited(cid)
        assert st.exit_code == 0, st
        out = wait_log(log_dir / "probe.log")
        cri.remove_container(cid)
    return out


def nvidia_handler_error(node: SandboxNode, work: Path, cgroup_parent: str) -> str:
    """RunPodSandbox with the `nvidia` handler must fail now; containerd's error text."""
    import grpc

    cri = CriClient(socket=node.socket, gen_dir=work / "cri_gen")
    try:
        config = cri.sandbox_config(name="after", uid="after", log_dir=work,
                                    cgroup_parent=f"/{cgroup_parent}")
        try:
            pod_id = cri.run_pod_sandbox(config, runtime_handler="nvidia")
        except grpc.RpcError as e:
            return str(e.details())
        cri.stop_pod_sandbox(pod_id)
        cri.remove_pod_sandbox(pod_id)
        raise AssertionError("a pod sandbox still ran with the nvidia handler")
    finally:
        cri.close()
