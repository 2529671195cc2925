"""Driver discovery under host-root: links resolved inside host-root only, versioned targets kept,
the real fake driver tree (tests/fakedriver) read back completely."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gpuhook.host.driver import Unresolvable, discover_driver, discover_sockets, resolve_in_root
from gpuhook.host.proc import HostPaths
from tests.fakedriver.build import LIB64, FakeHost


def _tree(tmp_path: Path, links: dict[str, str], files: tuple[str, ...] = ()) -> Path:
    root = tmp_path / "root"
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    for rel, target in links.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(target)
    return root


@pytest.mark.parametrize(("links", "files", "path", "want"), [
    ({"lib/a.so.1": "a.so.550"}, ("lib/a.so.550",), "/lib/a.so.1", "/lib/a.so.550"),
    ({"lib/a.so.1": "/lib/a.so.550"}, ("lib/a.so.550",), "/lib/a.so.1", "/lib/a.so.550"),
    ({"lib/a.so.1": "../../../../lib/a.so.550"}, ("lib/a.so.550",), "lib/a.so.1",
     "/lib/a.so.550"),
    ({"usr/lib": "../lib", "lib/a.so.1": "a.so.550"}, ("lib/a.so.550",), "/usr/lib/a.so.1",
     "/lib/a.so.550"),
], ids=["relative_link", "absolute_link_is_taken_inside_host_root",
        "dotdot_stops_at_host_root", "a_linked_directory_is_followed_inside_host_root"])
def test_links_resolve_inside_host_root(tmp_path: Path, links: dict[str, str],
                                        files: tuple[str, ...], path: str, want: str) -> None:
    root = _tree(tmp_path, links, files)
    assert resolve_in_root(str(root), path) == want


@pytest.mark.parametrize(("links", "files", "path"), [
    ({"lib/a.so.1": "/etc/hostname"}, (), "/lib/a.so.1"),
    ({"lib/a": "b", "lib/b": "a"}, (), "/lib/a"),
    ({}, ("lib/file",), "/lib/file/x"),
], ids=["a_link_to_a_real_host_file_is_not_found_inside_host_root", "a_link_loop",
        "walking_through_a_file"])
def test_unresolvable_paths(tmp_path: Path, links: dict[str, str], files: tuple[str, ...],
                            path: str) -> None:
    root = _tree(tmp_path, links, files)
    with pytest.raises(Unresolvable):
        resolve_in_root(str(root), path)


def test_the_fake_driver_is_discovered_whole(fake_driver_host: FakeHost) -> None:
    root = str(fake_driver_host.root)
    facts = discover_driver(HostPaths(root), fake_driver_host.version)
    ver = fake_driver_host.version
    libs = {(lib.arch, lib.stem): lib for lib in facts.libraries}
    cuda = libs[("x86-64", "libcuda.so")]
    assert cuda.host_path == f"{root}/{LIB64}/libcuda.so.{ver}"
    assert sorted(cuda.links) == ["libcuda.so", "libcuda.so.1"]
    assert libs[("i386", "libcuda.so")].host_path.endswith(f"i386-linux-gnu/libcuda.so.{ver}")
    assert libs[("x86-64", "libnvidia-glcore.so")].links == (f"libnvidia-glcore.so.{ver}",)
    assert set(libs) == {("x86-64", s) for s in (
        "libcuda.so", "libnvidia-ml.so", "libnvidia-cfg.so", "libnvidia-ptxjitcompiler.so",
        "libGLX_nvidia.so", "libnvidia-glcore.so", "libnvidia-encode.so")} | {
        ("i386", "libcuda.so")}
    assert {(f.kind, f.container_path) for f in facts.files} == {
        ("binary", "/usr/bin/nvidia-smi"),
        ("firmware", f"/lib/firmware/nvidia/{ver}/gsp_ga10x.bin"),
        ("firmware", f"/lib/firmware/nvidia/{ver}/gsp_tu10x.bin"),
        ("config", "/usr/share/glvnd/egl_vendor.d/10_nvidia.json"),
        ("config", "/etc/vulkan/icd.d/nvidia_icd.json")}
    assert all(os.path.realpath(f.host_path) == f.host_path for f in facts.files)
    assert facts.notes == ()


def test_another_driver_versions_libraries_are_not_taken(fake_driver_host: FakeHost) -> None:
    facts = discover_driver(HostPaths(str(fake_driver_host.root)), "535.104.05")
    assert facts.libraries == ()
    assert [f.kind for f in facts.files] == ["binary", "config", "config"]  # no firmware


def test_a_cache_entry_whose_link_points_out_of_host_root_is_skipped(
        fake_driver_host: FakeHost) -> None:
    lib = fake_driver_host.lib64 / "libnvidia-ml.so.1"
    lib.unlink()
    lib.symlink_to(f"/../../..{fake_driver_host.lib64}/libnvidia-ml.so.{fake_driver_host.version}")
    facts = discover_driver(HostPaths(str(fake_driver_host.root)), fake_driver_host.version)
    assert "libnvidia-ml.so" not in {x.stem for x in facts.libraries}


def test_a_missing_cache_is_a_note_not_an_error(fake_driver_host: FakeHost) -> None:
    (fake_driver_host.root / "etc/ld.so.cache").unlink()
    facts = discover_driver(HostPaths(str(fake_driver_host.root)), fake_driver_host.version)
    assert facts.libraries == ()
    assert "ld.so.cache" in facts.notes[0]


def test_sockets_are_taken_only_when_they_are_sockets(fake_driver_host: FakeHost) -> None:
    root = fake_driver_host.root
    (root / "run/nvidia-fabricmanager").mkdir()
    (root / "run/nvidia-fabricmanager/socket").write_text("a regular file")
    (root / "tmp/nvidia-mps").mkdir(parents=True)
    found = discover_sockets(HostPaths(str(root)))
    assert [(f.container_path, f.kind) for f in found] == [
        ("/run/nvidia-persistenced/socket", "socket"), ("/tmp/nvidia-mps", "socket")]


def test_a_second_copy_of_a_library_elsewhere_is_not_taken_twice(
        fake_driver_host: FakeHost) -> None:
    root = fake_driver_host.root
    other = root / "usr/lib64"
    other.mkdir()
    name = f"libcuda.so.{fake_driver_host.version}"
    shutil.copy(fake_driver_host.lib64 / name, other / name)
    (other / "libcuda.so.1").symlink_to(name)
    (root / "etc/ld.so.conf").write_text(f"/{LIB64}\n/usr/lib64\n/usr/lib/i386-linux-gnu\n")
    subprocess.run(["ldconfig", "-X", "-r", str(root)], check=True,
                   env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    facts = discover_driver(HostPaths(str(root)), fake_driver_host.version)
    cudas = [lib for lib in facts.libraries if lib.stem == "libcuda.so" and lib.arch == "x86-64"]
    assert len(cudas) == 1
