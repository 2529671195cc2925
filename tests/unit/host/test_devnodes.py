"""IMEX channels and gated-family nodes read from a fake host root with real character devices
(mknod needs root; the nodes' numbers are never opened)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gpuhook.host.devnodes import read_gated, read_imex
from gpuhook.host.proc import HostPaths

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mknod of character devices needs root")

PROC_DEVICES = "Character devices:\n  1 mem\n195 nvidia\n234 nvidia-caps-imex-channels\n\n" \
               "Block devices:\n  8 sd\n"


def chr_node(root: Path, rel: str, major: int, minor: int, mode: int = 0o666) -> None:
    path = root / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | mode, os.makedev(major, minor))
    os.chmod(path, mode)  # mknod's mode passes through the umask


@pytest.fixture
def host(tmp_path: Path) -> Path:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "devices").write_text(PROC_DEVICES)
    d = "dev/nvidia-caps-imex-channels"
    chr_node(tmp_path, f"{d}/channel0", 234, 0)
    chr_node(tmp_path, f"{d}/channel5", 234, 5, 0o660)
    chr_node(tmp_path, f"{d}/channel6", 234, 9)  # numbers that are not channel 6's
    (tmp_path / d / "channel7").write_text("")  # a regular file is no channel
    os.symlink("channel0", tmp_path / d / "channel8")  # a link is never followed
    chr_node(tmp_path, "dev/nvidia-fs0", 241, 0)
    chr_node(tmp_path, "dev/nvidia-fs12", 241, 12)
    chr_node(tmp_path, "dev/infiniband/uverbs0", 231, 192)
    chr_node(tmp_path, "dev/infiniband/rdma_cm", 10, 58)
    chr_node(tmp_path, "dev/nvidia-nvswitchctl", 236, 255)
    (tmp_path / "dev" / "gdrdrv").write_text("")
    return tmp_path


def test_imex_channels_are_the_char_nodes_carrying_their_own_numbers(host: Path) -> None:
    major, chans = read_imex(HostPaths(str(host)))
    assert major == 234
    assert sorted(chans) == [0, 5]
    assert chans[5].file_mode == 0o660
    assert chans[5].path == "/dev/nvidia-caps-imex-channels/channel5"


def test_no_imex_major_means_no_channels(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "devices").write_text("Character devices:\n195 nvidia\n")
    assert read_imex(HostPaths(str(tmp_path))) == (None, {})


@pytest.mark.parametrize(
    ("family", "want"),
    [
        pytest.param("gds", ["/dev/nvidia-fs0", "/dev/nvidia-fs12"],
                     id="gds globs nvidia-fs star"),
        pytest.param("mofed", ["/dev/infiniband/uverbs0", "/dev/infiniband/rdma_cm"],
                     id="mofed takes uverbs star and rdma_cm"),
        pytest.param("gdrcopy", [], id="a regular file named gdrdrv is no node"),
        pytest.param("nvswitch", ["/dev/nvidia-nvswitchctl"],
                     id="nvswitch takes the control node even without switches"),
    ],
)
def test_gated_family_nodes(host: Path, family: str, want: list[str]) -> None:
    got = read_gated(HostPaths(str(host)), [family])[family]
    assert [n.path for n in got] == want
