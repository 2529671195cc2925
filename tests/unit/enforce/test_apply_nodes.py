"""Device node creation under a rootfs, without namespaces: a temporary directory stands in for
the container rootfs. mknod needs root (CI runs as root).

The attack cases plant symlinks where an image author could: `dev` itself, `dev/nvidia-caps`,
and a node path; nothing may appear outside the rootfs, and a refused call leaves nothing of
its own behind.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuhook.decide.plan import DeviceNode
from gpuhook.enforce.nodes import NodeReport, create_nodes, remove_nodes, split_container_path
from gpuhook.errors import ApplyError

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")

CTL = DeviceNode("/dev/nvidiactl", "c", 195, 255, 0o666)
GPU1 = DeviceNode("/dev/nvidia1", "c", 195, 1, 0o666)
CAP = DeviceNode("/dev/nvidia-caps/nvidia-cap201", "c", 511, 201, 0o444)
CAP2 = DeviceNode("/dev/nvidia-caps/nvidia-cap202", "c", 511, 202, 0o444)
PLAN_NODES = [CTL, GPU1, CAP, CAP2]


@pytest.fixture
def rootfs(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "rootfs"
    (root / "dev").mkdir(parents=True)
    old = os.umask(0o077)  # a hostile umask: modes must still be the Plan's
    try:
        yield root
    finally:
        os.umask(old)


def tree(top: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            st = (Path(dirpath) / name).lstat()
            out[str((Path(dirpath) / name).relative_to(top))] = (st.st_mode, st.st_rdev)
    return out


def assert_node(root: Path, node: DeviceNode) -> None:
    st = (root / node.path.lstrip("/")).lstat()
    assert stat.S_ISCHR(st.st_mode)
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (node.major, node.minor)
    assert stat.S_IMODE(st.st_mode) == node.file_mode
    assert (st.st_uid, st.st_gid) == (0, 0)


@pytest.mark.parametrize(("path", "parts"), [
    ("/dev/nvidia0", ["dev", "nvidia0"]),
    ("/dev/nvidia-caps/nvidia-cap1", ["dev", "nvidia-caps", "nvidia-cap1"]),
], ids=["node in /dev", "node in a sub-directory"])
def test_container_paths_split_into_components(path: str, parts: list[str]) -> None:
    assert split_container_path(path) == parts


@pytest.mark.parametrize("path", ["dev/nvidia0", "/dev/../etc/x", "/dev//nvidia0", "/dev/./x",
                                  "/"],
                         ids=["relative", "dot-dot", "empty component", "dot", "root itself"])
def test_odd_container_paths_are_refused(path: str) -> None:
    with pytest.raises(ApplyError, match="device node path"):
        split_container_path(path)


@needs_root
def test_nodes_are_created_with_the_plans_device_mode_and_owner(rootfs: Path) -> None:
    report = create_nodes(str(rootfs), PLAN_NODES)
    for node in PLAN_NODES:
        assert_node(rootfs, node)
    caps = (rootfs / "dev" / "nvidia-caps").lstat()
    assert stat.S_ISDIR(caps.st_mode) and stat.S_IMODE(caps.st_mode) == 0o755
    assert report.created == [n.path for n in PLAN_NODES]
    assert report.dirs == ["/dev/nvidia-caps"]
    assert (report.kept, report.bound) == ([], [])


@needs_root
def test_the_same_device_already_there_is_kept_untouched(rootfs: Path) -> None:
    os.mknod(rootfs / "dev" / "nvidia1", stat.S_IFCHR | 0o600, os.makedev(195, 1))
    inode = (rootfs / "dev" / "nvidia1").lstat().st_ino
    report = create_nodes(str(rootfs), [GPU1])
    assert report.kept == ["/dev/nvidia1"] and report.created == []
    assert (rootfs / "dev" / "nvidia1").lstat().st_ino == inode


@needs_root
@pytest.mark.parametrize(("existing", "kind"), [
    ("other device", "another device"), ("regular file", "a file"), ("fifo", "a file"),
], ids=["a different device", "a regular file", "a fifo"])
def test_anything_else_at_the_node_path_is_refused_and_left_as_it_was(
        rootfs: Path, existing: str, kind: str) -> None:
    path = rootfs / "dev" / "nvidia1"
    if existing == "other device":
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    elif existing == "regular file":
        path.write_text("x")
    else:
        os.mkfifo(path, 0o600)
    before = path.lstat()
    with pytest.raises(ApplyError, match=f"{kind} is already there"):
        create_nodes(str(rootfs), [GPU1])
    after = path.lstat()
    assert (after.st_ino, after.st_mode, after.st_uid, after.st_rdev) == (
        before.st_ino, before.st_mode, before.st_uid, before.st_rdev)


@needs_root
def test_a_symlink_at_the_node_path_is_refused_never_followed(rootfs: Path,
                                                               tmp_path: Path) -> None:
    victim = tmp_path / "host-file"
    victim.write_text("precious\n")
    (rootfs / "dev" / "nvidia1").symlink_to(victim)
    with pytest.raises(ApplyError, match="a symlink is already there"):
        create_nodes(str(rootfs), [GPU1])
    assert (rootfs / "dev" / "nvidia1").is_symlink()
    assert victim.read_text() == "precious\n" and stat.S_ISREG(victim.lstat().st_mode)


@needs_root
@pytest.mark.parametrize(("link", "target"), [
    ("dev", "absolute"), ("dev", "relative"),
    ("dev/nvidia-caps", "absolute"), ("dev/nvidia-caps", "relative"),
], ids=["dev to an absolute host dir", "dev climbing out with ..",
        "dev/nvidia-caps to an absolute host dir", "dev/nvidia-caps climbing out with .."])
def test_symlinked_directories_are_refused_and_nothing_lands_outside(
        rootfs: Path, tmp_path: Path, link: str, target: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    where = rootfs / link
    if where.is_dir():
        where.rmdir()
    depth = link.count("/") + 1  # climb out of rootfs, into tmp_path
    where.symlink_to(outside if target == "absolute" else Path("../" * depth + "outside"))
    assert where.resolve() == outside.resolve()
    before = tree(tmp_path)
    with pytest.raises(ApplyError, match="symlink"):
        create_nodes(str(rootfs), PLAN_NODES)
    assert tree(tmp_path) == before, "something was created or removed"


@needs_root
def test_a_refused_call_removes_the_nodes_and_dirs_it_made(rootfs: Path) -> None:
    # nvidiactl and nvidia1 are made, then a directory is in the way of the capability node.
    (rootfs / "dev" / "nvidia-caps").mkdir()
    (rootfs / "dev" / "nvidia-caps" / "nvidia-cap201").mkdir()
    (rootfs / "dev" / "nvidia-caps" / "nvidia-cap201" / "x").write_text("")
    with pytest.raises(ApplyError, match="a directory is already there"):
        create_nodes(str(rootfs), [CTL, GPU1, DeviceNode("/dev/sub/nvidia-cap9", "c", 511, 9,
                                                         0o444), CAP])
    assert sorted(os.listdir(rootfs / "dev")) == ["nvidia-caps"]


@needs_root
def test_a_file_where_a_directory_belongs_is_an_error(rootfs: Path) -> None:
    (rootfs / "dev" / "nvidia-caps").write_text("not a dir")
    with pytest.raises(ApplyError, match="exists and is not a directory"):
        create_nodes(str(rootfs), [CAP])


@needs_root
def test_remove_nodes_undoes_a_report_but_keeps_what_was_already_there(rootfs: Path) -> None:
    os.mknod(rootfs / "dev" / "nvidiactl", stat.S_IFCHR | 0o666, os.makedev(195, 255))
    report = create_nodes(str(rootfs), PLAN_NODES)
    assert report.kept == ["/dev/nvidiactl"]
    again = NodeReport.from_json(report.as_json())
    assert remove_nodes(str(rootfs), again) == []
    assert sorted(os.listdir(rootfs / "dev")) == ["nvidiactl"]


def test_only_char_devices_are_supported(rootfs: Path) -> None:
    with pytest.raises(ApplyError, match="type 'b' is not supported"):
        create_nodes(str(rootfs), [DeviceNode("/dev/sda", "b", 8, 0, 0o660)])


def test_a_missing_rootfs_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ApplyError, match="cannot open container rootfs"):
        create_nodes(str(tmp_path / "nope"), [GPU1])
