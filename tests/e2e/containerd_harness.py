"""Run Debian's containerd as a plain child process, fully private to one test session.

Everything containerd writes lives in one temporary directory: root, state, the gRPC and ttrpc
sockets, the `opt` plugin dir, the CRI plugin's (empty) CNI dirs. The config starts from the
installed containerd's own `containerd config default` (so `gpuhook install` meets the real-world
file) and changes only what must be private or what this machine needs:

- `restrict_oom_score_adj = true`: there is no CAP_SYS_RESOURCE here, so the CRI plugin must not
  try to lower a container's oom_score_adj below its own.
- `sandbox_image`: a locally imported busybox "pause" image (no registry is reachable).
- unused snapshotters are disabled (the v1 runtime must stay: 1.6's tasks service needs it), and
  the CRI plugin is required, so a CRI that fails to load fails the start instead of a test.

Shims outlive containerd by design; `stop()` ends the ones started for this socket (found by their
`-address` argument) and unmounts whatever is left under the temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tomlkit

CONTAINERD = "containerd"
CTR = "ctr"
SHIM = "containerd-shim-runc-v2"
CRI_PLUGIN = "io.containerd.grpc.v1.cri"
MINIMAL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

DISABLED_PLUGINS = [
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
]


class ContainerdError(RuntimeError):
    pass


APT = {"unshare": "util-linux"}  # the Debian package of a tool not in containerd's or runc's


def cri_missing(*extra_tools: str) -> str | None:
    """Why a CRI e2e (containerd + runc + the CRI client, busybox images) cannot run here, for
    its skip; None when it can. `extra_tools`: what the test needs besides."""
    from tests.e2e.oci_image import find_busybox

    if os.geteuid() != 0:
        return "needs root (containerd, runc, cgroups, mount namespaces)"
    for tool in (CONTAINERD, CTR, SHIM, "runc", *extra_tools):
        if shutil.which(tool, path=MINIMAL_PATH) is None:
            return f"{tool} not installed (apt: {APT.get(tool, 'containerd, runc')})"
    if find_busybox() is None:
        return "busybox not installed (apt: busybox-static)"
    try:
        import grpc_tools  # noqa: F401
    except ImportError:
        return "grpcio-tools missing (pyproject test extra)"
    return None


def default_config_text() -> str:
    """The installed containerd's default config (version 2 for containerd 1.6)."""
    out = subprocess.run(
        [CONTAINERD, "config", "default"],
        check=True,
        capture_output=True,
        text=True,
        env={"PATH": MINIMAL_PATH},
        timeout=30,
    )
    return out.stdout


def private_config(workdir: Path, sandbox_image: str, base: str | None = None) -> str:
    """`base` (default: `containerd config default`) with every path moved under `workdir`."""
    doc = tomlkit.parse(base if base is not None else default_config_text())
    doc["root"] = str(workdir / "root")
    doc["state"] = str(workdir / "state")
    doc["disabled_plugins"] = DISABLED_PLUGINS
    doc["required_plugins"] = [CRI_PLUGIN, "io.containerd.grpc.v1.tasks"]
    doc["oom_score"] = 0
    grpc = doc.setdefault("grpc", tomlkit.table())
    grpc["address"] = str(workdir / "containerd.sock")
    ttrpc = doc.setdefault("ttrpc", tomlkit.table())
    ttrpc["address"] = str(workdir / "containerd.sock.ttrpc")
    debug = doc.setdefault("debug", tomlkit.table())
    debug["address"] = ""
    debug["level"] = "info"
    metrics = doc.setdefault("metrics", tomlkit.table())
    metrics["address"] = ""
    plugins = doc.setdefault("plugins", tomlkit.table())
    opt = plugins.setdefault("io.containerd.internal.v1.opt", tomlkit.table())
    opt["path"] = str(workdir / "opt")
    cri = plugins.setdefault(CRI_PLUGIN, tomlkit.table())
    cri["sandbox_image"] = sandbox_image
    cri["restrict_oom_score_adj"] = True
    cri["disable_apparmor"] = True
    cri["stream_server_port"] = "0"  # a free port: parallel sessions must not collide
    cni = cri.setdefault("cni", tomlkit.table())
    cni["bin_dir"] = str(workdir / "cni" / "bin")
    cni["conf_dir"] = str(workdir / "cni" / "conf")
    # runc's state (the shim's default is /run/containerd/runc/<namespace>, shared by all).
    runtimes = cri.setdefault("containerd", tomlkit.table()).setdefault("runtimes", tomlkit.table())
    runc_opts = runtimes.setdefault("runc", tomlkit.table()).setdefault("options", tomlkit.table())
    runc_opts["Root"] = str(workdir / "runc")
    return tomlkit.dumps(doc)


@dataclass
class Containerd:
    """One private containerd. Use `start()`/`stop()` or the `running()` context manager."""

    workdir: Path
    sandbox_image: str
    env: Mapping[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.workdir / "config.toml"

    @property
    def socket(self) -> Path:
        return self.workdir / "containerd.sock"

    @property
    def runc_root(self) -> Path:
        """runc's --root for the runc runtime (the shim adds /<namespace>)."""
        return self.workdir / "runc"

    @property
    def fifo_dir(self) -> Path:
        """For `ctr run/exec --fifo-dir` (ctr's default is /run/containerd/fifo)."""
        return self.workdir / "fifo"

    @property
    def log_path(self) -> Path:
        return self.workdir / "containerd.log"

    def write_config(self, base: str | None = None) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for d in ("cni/bin", "cni/conf", "opt", "runc", "fifo"):
            (self.workdir / d).mkdir(parents=True, exist_ok=True)
        self.config.write_text(private_config(self.workdir, self.sandbox_image, base))
        return self.config

    def process_env(self) -> dict[str, str]:
        """containerd's environment, which its shims (and so the OCI runtime) inherit."""
        return {"PATH": MINIMAL_PATH, "HOME": "/root", **self.env}

    def start(self, timeout: float = 30.0) -> None:
        if not self.config.exists():
            self.write_config()
        if self.proc is not None and self.proc.poll() is None:
            raise ContainerdError("already running")
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                [CONTAINERD, "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.process_env(),
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ContainerdError(
                    f"containerd exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if self.socket.exists():
                probe = self.ctr("version", check=False, timeout=10)
                if probe.returncode == 0:
                    return
            time.sleep(0.1)
        raise ContainerdError(f"containerd socket not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop containerd (TERM, then KILL). Shims are left alone: see `cleanup()`."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """After `stop()`: kill the shims serving this socket and unmount leftovers."""
        self.stop()
        kill_shims(self.socket)
        unmount_under(self.workdir)

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def ctr(
        self,
        *args: str,
        namespace: str = "default",
        check: bool = True,
        timeout: float = 60,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [CTR, "--address", str(self.socket), "--namespace", namespace, *args]
        res = subprocess.run(
            cmd,
            check=False,
            capture_output=True,
            text=True,
            env={"PATH": MINIMAL_PATH},
            timeout=timeout,
            input=input_text,
            stdin=None if input_text is not None else subprocess.DEVNULL,
        )
        if check and res.returncode != 0:
            raise ContainerdError(
                f"{' '.join(cmd)} -> {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"
            )
        return res

    def import_image(self, archive: Path, namespace: str) -> list[str]:
        """`ctr image import`, then the image names now present in `namespace`."""
        self.ctr("image", "import", str(archive), namespace=namespace, timeout=120)
        listed = self.ctr("image", "ls", "-q", namespace=namespace)
        return listed.stdout.split()

    @contextlib.contextmanager
    def running(self) -> Iterator[Containerd]:
        try:
            self.start()
            yield self
        finally:
            self.cleanup()


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def shim_pids(socket: Path) -> list[int]:
    """containerd-shim-runc-v2 processes whose `-address` is `socket` (ours, nobody else's)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = _cmdline(int(entry))
        if not argv or not argv[0].endswith(SHIM):
            continue
        if _flag_value(argv, "address") == str(socket):
            found.append(int(entry))
    return found


def kill_shims(socket: Path, timeout: float = 5.0) -> None:
    """SIGKILL the shims serving `socket` (they outlive their containerd) and wait for them."""
    for pid in shim_pids(socket):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while shim_pids(socket) and time.monotonic() < deadline:
        time.sleep(0.05)


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a containerd log, for an assertion message."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no containerd log)"
    return "\n".join(text.splitlines()[-lines:])


def _flag_value(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        for prefix in (f"-{name}", f"--{name}"):
            if arg == prefix and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(prefix + "="):
                return arg.split("=", 1)[1]
    return None


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root` in this mount namespace, deepest first."""
    prefix = str(root.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = fields[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def cgroup_mounts() -> list[str]:
    """Every cgroup (v1) and cgroup2 mount point in this mount namespace."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        if post.split(" ", 1)[0] in ("cgroup", "cgroup2"):
            points.append(pre.split()[4])
    return points


def remove_cgroups(name: str, timeout: float = 10.0) -> list[Path]:
    """rmdir `/<name>` and everything below it in every hierarchy (deepest first), retrying
    until `timeout`: an exited process keeps a cgroup v1 busy until it is reaped, which for a
    daemon's orphan (conmon, a shim) happens a little later. Returns what is still there (a
    cgroup still holding a live process is a leak to see, not to hide)."""
    if not name.strip("/") or ".." in Path(name).parts:
        raise ValueError(f"bad cgroup name {name!r}")
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for mnt in cgroup_mounts():
            top = Path(mnt) / name.strip("/")
            if not top.is_dir():
                continue
            dirs = [Path(d) for d, _, _ in os.walk(top)]
            for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    d.rmdir()
            if top.is_dir():
                left.append(top)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def wait_for_processes_using(path: Path, timeout: float = 15.0) -> None:
    """Wait until no process but this one has `path` in its command line (podman's conmon runs
    `podman container cleanup` in the background after each container exits)."""
    needle = str(path).encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                    busy = True
                    break
            except OSError:
                continue
        if not busy:
            return
        time.sleep(0.05)


def unmount_under(root: Path) -> None:
    for point in mounts_under(root):
        subprocess.run(
            ["umount", "-l", point],
            capture_output=True,
            env={"PATH": MINIMAL_PATH},
            check=False,
            timeout=30,
        )
