"""library_dir: where driver libraries go in a rootfs, decided without following any link in it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuhook.decide.plan import DriverFile
from gpuhook.enforce.libdir import LibDir, destination, library_dir
from gpuhook.errors import ApplyError

DEBIAN = LibDir("/usr/lib/x86_64-linux-gnu", "/usr/lib/i386-linux-gnu")
OTHER = LibDir("/usr/lib64", "/usr/lib")
MUSL = LibDir("/usr/lib", "/usr/lib", "/etc/ld-musl-x86_64.path")


def _rootfs(tmp_path: Path, dirs: tuple[str, ...] = (), files: tuple[str, ...] = (),
            links: tuple[tuple[str, str], ...] = ()) -> Path:
    root = tmp_path / "rootfs"
    root.mkdir()
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("x")
    for name, target in links:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(target)
    return root


@pytest.fixture
def open_dir() -> Iterator[list[int]]:
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


def _choose(root: Path, fds: list[int]) -> LibDir:
    fds.append(os.open(root, os.O_RDONLY | os.O_DIRECTORY))
    return library_dir(fds[-1])


@pytest.mark.parametrize(("dirs", "files", "links", "want"), [
    (("usr/lib/x86_64-linux-gnu",), (), (), DEBIAN),
    (("bin",), ("etc/debian_version",), (), DEBIAN),
    (("usr/lib64", "usr/bin"), ("etc/redhat-release",), (("lib64", "usr/lib64"),), OTHER),
    ((), (), (), OTHER),
    (("usr/lib", "etc"), ("lib/ld-musl-x86_64.so.1",), (), MUSL),
    ((), (), (("etc/debian_version", "/etc/debian_version"),), OTHER),
    ((), (), (("lib", "/lib"),), OTHER),
], ids=["debian_multiarch_dir", "debian_version_file_only", "fedora_like_lib64",
        "an_empty_rootfs_gets_lib64_created", "alpine_musl_gets_its_path_file",
        "a_linked_debian_version_is_not_believed", "a_linked_lib_dir_is_not_scanned_for_musl"])
def test_library_dir_by_layout(tmp_path: Path, open_dir: list[int], dirs: tuple[str, ...],
                               files: tuple[str, ...], links: tuple[tuple[str, str], ...],
                               want: LibDir) -> None:
    assert _choose(_rootfs(tmp_path, dirs, files, links), open_dir) == want


@pytest.mark.parametrize(("dirs", "files", "links", "where"), [
    ((), ("etc/debian_version",), (("usr/lib/x86_64-linux-gnu", "/tmp"),),
     "/usr/lib/x86_64-linux-gnu is a symlink"),
    ((), (), (("usr", "/"),), "/usr is a symlink"),
    ((), ("usr/lib64",), (), "/usr/lib64 is not a directory"),
    (("usr/lib",), ("etc/debian_version",), (("usr/lib/i386-linux-gnu", "/etc"),),
     "/usr/lib/i386-linux-gnu is a symlink"),
], ids=["debian_lib_dir_linked_to_a_host_path", "usr_linked_to_the_host_root",
        "a_file_where_the_lib_dir_should_be", "the_32_bit_dir_linked_away"])
def test_hostile_rootfs_is_refused_naming_the_component(
        tmp_path: Path, open_dir: list[int], dirs: tuple[str, ...], files: tuple[str, ...],
        links: tuple[tuple[str, str], ...], where: str) -> None:
    root = _rootfs(tmp_path, dirs, files, links)
    with pytest.raises(ApplyError, match=where):
        _choose(root, open_dir)


@pytest.mark.parametrize(("file", "want"), [
    (DriverFile("library", "/h/libcuda.so.1.2", "libcuda.so.1.2"),
     "/usr/lib/x86_64-linux-gnu/libcuda.so.1.2"),
    (DriverFile("library32", "/h/libcuda.so.1.2", "libcuda.so.1.2"),
     "/usr/lib/i386-linux-gnu/libcuda.so.1.2"),
    (DriverFile("binary", "/h/usr/bin/nvidia-smi", "/usr/bin/nvidia-smi"), "/usr/bin/nvidia-smi"),
], ids=["a_library_goes_to_the_lib_dir", "a_32_bit_library_to_the_32_bit_dir",
        "anything_else_to_its_container_path"])
def test_destination(file: DriverFile, want: str) -> None:
    assert destination(file, DEBIAN) == want
