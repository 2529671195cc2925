"""Attack bundles against the driver-files step, with the real runc 1.1 in both gpuhook modes
(issue 14): images whose library dir, /etc, /etc/ld.so.conf.d, /etc/ld.so.cache or /usr/bin are
links to host paths, planted links at the driver's library names, a file where a directory is
expected, and an image that ships its own (trapped) ldconfig.

For each: nothing outside the rootfs changes (a victim tree on the host, the fake driver's host
tree and the host's own /etc/ld.so.cache hash the same before and after), the image's ldconfig
never runs, and the container either is refused with one line naming the link, or starts with
the driver working and the planted link contained in the rootfs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e import runc_harness as rh
from tests.e2e.driver_env import file_hash, shim_wrapper, tree_hash, write_config
from tests.fakedriver import build as fakedriver

pytestmark = pytest.mark.e2e

GPUMODES = ("hook", "spec")

LIBDIR = "usr/lib/x86_64-linux-gnu"
Plant = Callable[[Path, Path, str], None]


def _replace(rootfs: Path, rel: str) -> Path:
    """Remove `rel` from the bundle's rootfs copy (whose files are hard links to the shared
    image: never write into them) and return its path."""
    p = rootfs / rel
    if p.is_dir() and not p.is_symlink():
        for dirpath, dirnames, filenames in os.walk(p, topdown=False):
            for n in filenames:
                os.unlink(os.path.join(dirpath, n))
            for n in dirnames:
                d = os.path.join(dirpath, n)
                os.unlink(d) if os.path.islink(d) else os.rmdir(d)
        p.rmdir()
    elif p.exists() or p.is_symlink():
        p.unlink()
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def link_to(rel: str, victim_rel: str) -> Plant:
    def plant(rootfs: Path, victim: Path, version: str) -> None:
        _replace(rootfs, rel.format(ver=version)).symlink_to(victim / victim_rel)
    return plant


def file_at(rel: str) -> Plant:
    def plant(rootfs: Path, victim: Path, version: str) -> None:
        _replace(rootfs, rel).write_text("not a directory\n")
    return plant


def trapped_ldconfig(rootfs: Path, victim: Path, version: str) -> None:
    for rel in ("sbin/ldconfig", "usr/sbin/ldconfig"):
        p = _replace(rootfs, rel)
        p.write_text(f"#!/bin/sh\necho image-ldconfig-ran > /image-ldconfig-ran\n"
                     f"echo ran > {victim}/ran\n")
        p.chmod(0o755)


# (what, outcome in hook mode, outcome in spec mode, plant). In spec mode runc mounts the files
# itself and resolves a destination's links inside the rootfs (securejoin, runc 1.1
# libcontainer/rootfs_linux.go mountToRootfs), so a link it can resolve inside is "contained"
# there; gpuhook's own walk (hook mode, and the createContainer hook) refuses any link.
ATTACKS: list[tuple[str, str, str, Plant]] = [
    ("the library dir is a link to a host dir", "refused", "refused", link_to(LIBDIR, "lib")),
    ("etc/ld.so.conf.d is a link to a host dir", "refused", "refused",
     link_to("etc/ld.so.conf.d", "etc/ld.so.conf.d")),
    ("etc/ld.so.cache is a link to a host file", "contained", "contained",
     link_to("etc/ld.so.cache", "etc/ld.so.cache")),
    ("usr/bin is a link to a host dir", "refused", "contained", link_to("usr/bin", "bin")),
    ("libcuda.so.1 is a planted link to a host file", "contained", "contained",
     link_to(LIBDIR + "/libcuda.so.1", "lib/libcuda.so.1")),
    ("the versioned libcuda name is a planted link to a host file", "refused", "contained",
     link_to(LIBDIR + "/libcuda.so.{ver}", "lib/libcuda.so.1")),
    ("a file where the usr/bin directory is expected", "refused", "refused",
     file_at("usr/bin")),
    ("the image ships its own ldconfig (a trap)", "contained", "contained", trapped_ldconfig),
]


def victim_tree(root: Path) -> Path:
    for d in ("etc/ld.so.conf.d", "lib", "bin"):
        (root / d).mkdir(parents=True)
    (root / "etc/ld.so.cache").write_bytes(b"the host's cache\n")
    (root / "etc/ld.so.conf.d/host.conf").write_text("/opt/host\n")
    (root / "lib/libcuda.so.1").write_text("the host's file\n")
    (root / "bin/tool").write_text("#!/bin/sh\n")
    return root


SCRIPT = ("cuda-count; nvidia-smi -L; ls /image-ldconfig-ran 2>/dev/null; "
          "readlink /usr/lib/x86_64-linux-gnu/libcuda.so.1")


CASES = [(mode, a[1] if mode == "hook" else a[2], a[3], f"{a[0]}, {mode} mode: "
          f"{a[1] if mode == 'hook' else a[2]}, nothing outside the rootfs changes")
         for a in ATTACKS for mode in GPUMODES]


@pytest.mark.parametrize(("gpumode", "expect", "plant"), [c[:3] for c in CASES],
                         ids=[c[3] for c in CASES])
def test_an_attack_image_cannot_make_gpuhook_touch_the_host(
        tmp_path: Path, driver_build: fakedriver.FakeDriverBuild, glibc_image: Path,
        gpumode: str, expect: str, plant: Plant) -> None:
    host = fakedriver.make_fake_host(driver_build, tmp_path / "host")
    victim = victim_tree(tmp_path / "victim")
    log = tmp_path / "gpuhook.log"
    cfg = write_config(tmp_path / "gpuhook.toml", host.inventory, host.root, log, gpumode)
    opts = rh.BundleOptions(request_ids=("2",), args=("sh", "-c", SCRIPT),
                            env=("NVIDIA_DRIVER_CAPABILITIES=compute,utility",),
                            hook=rh.hook_command(cfg) if gpumode == "hook" else None)
    bundle = rh.make_bundle(tmp_path / "bundle", glibc_image, opts)
    plant(bundle.rootfs, victim, host.version)
    before = tree_hash(victim), tree_hash(host.root), file_hash("/etc/ld.so.cache")
    runtime = str(shim_wrapper(tmp_path / "shim", cfg)) if gpumode == "spec" else "runc"
    # v2: runc in its own mount namespace with cgroup2, which works on v1, hybrid and v2 hosts
    result = rh.run_container(bundle, "v2", timeout=120, runtime=runtime)
    assert (tree_hash(victim), tree_hash(host.root), file_hash("/etc/ld.so.cache")) == before
    assert not (victim / "ran").exists() and not (bundle.rootfs / "image-ldconfig-ran").exists()
    if expect == "refused":
        assert not result.ok, result.stdout
        # one line naming it: gpuhook's, or in spec mode runc's own mount refusing the path
        assert "symlink" in result.stderr or "not a directory" in result.stderr, result.stderr
        assert gpumode == "spec" or "gpuhook" in result.stderr, result.stderr
    else:
        assert result.ok, result.stderr + (log.read_text() if log.exists() else "")
        lines = result.stdout.splitlines()
        assert lines[0] == "1" and lines[1].startswith("GPU 0"), result.stdout
        assert lines[-1] == f"libcuda.so.{host.version}"
