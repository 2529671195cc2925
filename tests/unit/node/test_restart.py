"""How `gpuhook node install` makes the engine read its config: who gets the signal (and who
never does), the systemd command, and what `none` says."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuhook.node.restart import RestartError, Target, peer_pid, restart, systemd_argv


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[Path]:
    """A unix socket served by this test process (not containerd) at <root>/run/x.sock."""
    path = tmp_path / "run" / "x.sock"
    path.parent.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        s.listen(4)
        yield path


def test_the_peer_of_a_socket_is_the_process_serving_it(listening: Path) -> None:
    assert peer_pid(str(listening)) == os.getpid()


def test_a_socket_served_by_something_else_than_the_engine_is_never_signalled(
        listening: Path, tmp_path: Path) -> None:
    with pytest.raises(RestartError, match=r"served by pid \d+ .*not containerd; not signal"):
        restart("signal", Target("containerd", str(tmp_path), "/run/x.sock", timeout=1))


def test_an_engine_that_is_not_there_is_an_error_naming_its_socket(tmp_path: Path) -> None:
    with pytest.raises(RestartError, match=r"cannot reach containerd at /run/containerd/c\.sock"):
        restart("signal", Target("containerd", str(tmp_path), "/run/containerd/c.sock"))


@pytest.mark.parametrize(("root", "runtime", "want"), [
    ("/", "containerd", ["systemctl", "restart", "containerd"]),
    ("/host", "containerd", ["chroot", "/host", "systemctl", "restart", "containerd"]),
    ("/host", "crio", ["chroot", "/host", "systemctl", "restart", "crio"]),
], ids=["on the host itself systemctl runs directly",
        "from a container systemctl runs chrooted into the host root",
        "CRI-O's unit is crio"])
def test_the_systemd_restart_command(root: str, runtime: str, want: list[str]) -> None:
    assert systemd_argv(Target(runtime, root, "/run/x.sock")) == want


def test_restart_none_only_says_what_to_run(tmp_path: Path) -> None:
    line = restart("none", Target("containerd", str(tmp_path), "/run/x.sock"))
    assert "not restarted (--restart none)" in line and "systemctl restart containerd" in line
