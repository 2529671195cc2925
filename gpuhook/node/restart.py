"""Making the engine read its config again, the three ways nvidia-ctk-installer offers
(cmd/nvidia-ctk-installer/container/container.go, toolkit v1.18: restart modes none / signal /
systemd), and waiting until it serves again.

`signal` (containerd): the peer of containerd's own socket is containerd (SO_PEERCRED gives its
pid, as nvidia-ctk-installer's SignalContainerd does); it gets SIGHUP. containerd 1.x handles only
TERM, INT, USR1 and PIPE (cmd/containerd/command/main_unix.go, handledSignals), so SIGHUP ends it
and its supervisor (systemd's `Restart=always` in containerd.service) starts it again with the
new config; running containers keep running (their shims outlive containerd). The pid must be in
this pid namespace: the DaemonSet runs with hostPID. We then wait until the socket answers from a
new pid.

`systemd`: `chroot <host-root> systemctl restart <unit>` (needs the host's /run/systemd and the
whole host root). `none`: print the command for the operator.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass

MODES = ("signal", "systemd", "none")
UNITS = {"containerd": "containerd", "crio": "crio"}
SOCKETS = {"containerd": "/run/containerd/containerd.sock", "crio": "/var/run/crio/crio.sock"}
COMMS = {"containerd": ("containerd",), "crio": ("crio",)}
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class RestartError(Exception):
    pass


@dataclass(frozen=True)
class Target:
    runtime: str
    host_root: str
    socket: str  # host path
    timeout: float = 60.0

    @property
    def socket_here(self) -> str:
        return os.path.join(self.host_root, self.socket.lstrip("/"))


def peer_pid(path: str) -> int:
    """The pid of the process listening on the unix socket `path` (0: not in our pid ns)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        raw = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _, _ = struct.unpack("3i", raw)
    return int(pid)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def signal_engine(t: Target) -> str:
    """SIGHUP to the engine behind its socket, then wait for a new one. One line: what happened."""
    try:
        pid = peer_pid(t.socket_here)
    except OSError as e:
        raise RestartError(f"cannot reach {t.runtime} at {t.socket} ({t.socket_here}): "
                           f"{e.strerror or e}") from None
    if pid <= 0:
        raise RestartError(f"the process behind {t.socket} is not in this pid namespace "
                           "(run with hostPID: true, or use --restart systemd)")
    comm = _comm(pid)
    if comm not in COMMS[t.runtime]:
        raise RestartError(f"{t.socket} is served by pid {pid} ({comm!r}), not "
                           f"{' or '.join(COMMS[t.runtime])}; not signalling it")
    os.kill(pid, signal.SIGHUP)
    new = wait_serving(t, old_pid=pid)
    return f"{t.runtime} restarted: SIGHUP to pid {pid}, serving again as pid {new}"


def wait_serving(t: Target, old_pid: int = 0) -> int:
    """Wait until the socket answers from a process other than `old_pid`; its pid."""
    deadline = time.monotonic() + t.timeout
    last = "not tried"
    while time.monotonic() < deadline:
        try:
            pid = peer_pid(t.socket_here)
            if pid != old_pid:
                return pid
            last = f"still pid {pid}"
        except OSError as e:
            last = e.strerror or str(e)
        time.sleep(0.1)
    raise RestartError(f"{t.runtime} did not serve {t.socket} again within {t.timeout:.0f}s "
                       f"({last}); is it supervised (systemd Restart=always)?")


def systemd_argv(t: Target) -> list[str]:
    argv = ["systemctl", "restart", UNITS[t.runtime]]
    return argv if os.path.realpath(t.host_root) == "/" else ["chroot", t.host_root, *argv]


def systemd_restart(t: Target) -> str:
    argv = systemd_argv(t)
    res = subprocess.run(argv, capture_output=True, text=True, env={"PATH": PATH},
                         timeout=t.timeout, check=False)
    if res.returncode != 0:
        raise RestartError(f"{' '.join(argv)} exited {res.returncode}: "
                           f"{(res.stderr or res.stdout).strip()[:500]!r}")
    return f"{t.runtime} restarted: {' '.join(argv)}"


def restart(mode: str, t: Target) -> str:
    if mode == "signal":
        return signal_engine(t)
    if mode == "systemd":
        return systemd_restart(t)
    if mode == "none":
        return (f"{t.runtime} not restarted (--restart none): run "
                f"`systemctl restart {UNITS[t.runtime]}` on the node for it to take effect")
    raise RestartError(f"unknown restart mode {mode!r}; one of {', '.join(MODES)}")
