"""Driver files applied in a real mount namespace (gpuhook.enforce.driver): bind mounts from fds
opened on the host, links, the ld.so.conf.d entry, the host's ldconfig chrooted in the rootfs,
undo on failure, and the attack rootfs that must not make gpuhook write outside it.

The "container" is a `sleep` in its own private mount namespace (`unshare -m`), so setns,
open_tree/move_mount and the chrooted ldconfig really run; the library is a real ELF shared
object with a SONAME (built with gcc), so the real ldconfig lists it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuhook.decide.plan import DriverFile, Symlink
from gpuhook.enforce import driver, ldconfig
from gpuhook.enforce.ns import run_in_mount_ns
from gpuhook.errors import ApplyError
from tests.e2e.driver_env import tree_hash
from tests.unit import specs

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("gcc") is None or shutil.which("unshare") is None,
    reason="needs root (setns, mounts, chroot), gcc (a real shared object) and unshare")

VER = "550.54.15"
LIBDIR = "usr/lib/x86_64-linux-gnu"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake host tree: libcuda.so.<ver> (SONAME libcuda.so.1), nvidia-smi, a firmware file,
    and proc/driver/nvidia with one GPU."""
    root = tmp_path_factory.mktemp("host")
    lib = root / LIBDIR
    lib.mkdir(parents=True)
    src = root / "cuda.c"
    src.write_text("int cuDeviceGetCount(int *n) { *n = 1; return 0; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o",
                    str(lib / f"libcuda.so.{VER}"), str(src)], check=True)
    (root / "usr/bin").mkdir(parents=True)
    shutil.copy2("/bin/true", root / "usr/bin/nvidia-smi")
    fw = root / f"lib/firmware/nvidia/{VER}"
    fw.mkdir(parents=True)
    (fw / "gsp_ga10x.bin").write_bytes(b"\0" * 64)
    gpu = root / "proc/driver/nvidia/gpus/0000:00:1e.0"
    gpu.mkdir(parents=True)
    (gpu / "information").write_text("Model: fake\n")
    (root / "proc/driver/nvidia/params").write_text("ModifyDeviceFiles: 1\nOther: 2\n")
    return root


def _plan(host: Path, **over: object) -> object:
    base = specs.plan(specs.spec(ids=["1:0"]))
    files = (DriverFile("library", str(host / LIBDIR / f"libcuda.so.{VER}"), f"libcuda.so.{VER}"),
             DriverFile("binary", str(host / "usr/bin/nvidia-smi"), "/usr/bin/nvidia-smi"),
             DriverFile("firmware", str(host / f"lib/firmware/nvidia/{VER}/gsp_ga10x.bin"),
                        f"/lib/firmware/nvidia/{VER}/gsp_ga10x.bin"))
    links = (Symlink("library", "libcuda.so.1", f"libcuda.so.{VER}"),
             Symlink("library", "libcuda.so", "libcuda.so.1"))
    fields = {"driver_files": files, "symlinks": links, "update_ldcache": True,
              "proc_driver_gpus": ()}
    fields.update(over)
    from gpuhook import record

    return record.replace(base, **fields)  # type: ignore[arg-type]


def _image(root: Path) -> Path:
    (root / LIBDIR).mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/ld.so.conf").write_text("include /etc/ld.so.conf.d/*.conf\n")
    (root / "etc/debian_version").write_text("12.0\n")
    shutil.copy2("/lib/x86_64-linux-gnu/libc.so.6", root / LIBDIR / "libc.so.6")
    subprocess.run([ldconfig.DEFAULT_LDCONFIG, "-r", str(root)], check=True)
    return root


@pytest.fixture
def container(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    rootfs = _image(tmp_path / "rootfs")
    (rootfs / "proc").mkdir()
    # like runc: a proc mount in the rootfs, whose /proc/1/root is the host's root
    with subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                           f"mount -t proc proc {rootfs}/proc && exec sleep 60"]) as p:
        try:
            for _ in range(200):  # until unshare has exec'd sleep in the new namespace
                if os.readlink(f"/proc/{p.pid}/exe").endswith("sleep"):
                    break
                subprocess.run(["sleep", "0.01"], check=True)
            yield p.pid, rootfs
        finally:
            p.kill()


def _in_ns(pid: int, fn: object) -> object:
    assert callable(fn)
    return run_in_mount_ns(pid, fn, caps=driver.DRIVER_CAPS)


def _mountinfo() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return f.read().splitlines()


def _driver_mounts(mountinfo: object, rootfs: Path) -> list[str]:
    """Mount points under `rootfs` other than the fixture's /proc."""
    assert isinstance(mountinfo, list)
    points = [line.split()[4] for line in mountinfo]
    return [p for p in points if p.startswith(f"{rootfs}/") and p != f"{rootfs}/proc"]


def _cache_names(rootfs: Path) -> str:
    return subprocess.run([ldconfig.DEFAULT_LDCONFIG, "-p", "-C", str(rootfs / "etc/ld.so.cache")],
                          check=True, capture_output=True, text=True).stdout


def test_hook_mode_mounts_links_and_rebuilds_the_ld_cache(container: tuple[int, Path],
                                                           host: Path) -> None:
    pid, rootfs = container
    before = tree_hash(host)
    report = driver.apply_driver(_plan(host), pid, str(rootfs))  # type: ignore[arg-type]
    lib = f"/{LIBDIR}/libcuda.so.{VER}"
    assert report.mounts == [lib, "/usr/bin/nvidia-smi",
                             f"/lib/firmware/nvidia/{VER}/gsp_ga10x.bin"]
    mounts = _in_ns(pid, _mountinfo)
    assert isinstance(mounts, list)
    opts = {line.split()[4]: line.split()[5] for line in mounts}
    assert opts[f"{rootfs}{lib}"].startswith("ro,nosuid,nodev")
    assert "noexec" not in opts[f"{rootfs}{lib}"]
    assert "noexec" in opts[f"{rootfs}/lib/firmware/nvidia/{VER}/gsp_ga10x.bin"]
    # the mounts exist only in the container's namespace
    assert _driver_mounts(_mountinfo(), rootfs) == []
    assert os.readlink(rootfs / LIBDIR / "libcuda.so.1") == f"libcuda.so.{VER}"
    assert os.readlink(rootfs / LIBDIR / "libcuda.so") == "libcuda.so.1"
    conf = (rootfs / "etc/ld.so.conf.d" / driver.CONF_NAME).read_text()
    assert conf == f"/{LIBDIR}\n"
    assert f"libcuda.so.1 (libc6,x86-64) => /{LIBDIR}/libcuda.so.1" in _cache_names(rootfs)
    assert tree_hash(host) == before

    def write_lib() -> str:
        try:
            with open(f"{rootfs}{lib}", "ab"):
                return "written"
        except OSError as e:
            return str(e.strerror)

    assert _in_ns(pid, write_lib) == "Read-only file system"


def test_undo_restores_the_rootfs_as_it_was(container: tuple[int, Path], host: Path) -> None:
    pid, rootfs = container
    before = tree_hash(rootfs)
    report = driver.apply_driver(_plan(host), pid, str(rootfs))  # type: ignore[arg-type]
    assert driver.undo_driver(report, pid, str(rootfs)) == []
    assert tree_hash(rootfs) == before
    assert _driver_mounts(_in_ns(pid, _mountinfo), rootfs) == []


def test_a_failing_ldconfig_undoes_everything_and_names_it(container: tuple[int, Path],
                                                           host: Path, tmp_path: Path) -> None:
    pid, rootfs = container
    before = tree_hash(rootfs)
    with pytest.raises(ApplyError, match=r"host ldconfig .*/sh is dynamically linked"):
        driver.apply_driver(_plan(host), pid, str(rootfs),  # type: ignore[arg-type]
                            ldconfig_path="/bin/sh")
    fake = tmp_path / "ldconfig"
    fake.write_bytes(Path("/bin/busybox").read_bytes() if Path("/bin/busybox").exists()
                     else b"")
    if fake.stat().st_size:  # a static binary that fails: busybox without an applet name
        with pytest.raises(ApplyError, match=r"the host's ldconfig on rootfs .* failed"):
            driver.apply_driver(_plan(host), pid, str(rootfs),  # type: ignore[arg-type]
                                ldconfig_path=str(fake))
    assert tree_hash(rootfs) == before


def test_an_image_file_at_a_link_name_is_left_alone_and_noted(container: tuple[int, Path],
                                                              host: Path) -> None:
    pid, rootfs = container
    (rootfs / LIBDIR / "libcuda.so").write_text("the image's own\n")
    report = driver.apply_driver(_plan(host), pid, str(rootfs))  # type: ignore[arg-type]
    assert (rootfs / LIBDIR / "libcuda.so").read_text() == "the image's own\n"
    assert any("libcuda.so: the image has its own file there" in n for n in report.notes)


def test_the_proc_view_holds_only_the_granted_gpu_with_modify_device_files_off(
        host: Path, tmp_path: Path) -> None:
    from gpuhook.enforce import procview

    other = host / "proc/driver/nvidia/gpus/0000:00:1f.0"
    other.mkdir(exist_ok=True)
    (other / "information").write_text("Model: other\n")
    built = procview.build(str(host), ("00000000:00:1E.0",))
    assert built is not None
    fd, _ = built
    target = tmp_path / "view"
    target.mkdir()
    script = ("import os,sys; from gpuhook.enforce import mountapi; "
              "d=os.open(sys.argv[1], os.O_RDONLY|os.O_DIRECTORY); "
              f"mountapi.move_mount_to({fd}, d, 'view'); "
              "print(sorted(os.listdir(sys.argv[1]+'/view/gpus'))); "
              "print(open(sys.argv[1]+'/view/params').read(), end=''); "
              "open(sys.argv[1]+'/view/x','w')")
    out = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable,
                          "-c", script, str(tmp_path)], pass_fds=(fd,), capture_output=True,
                         text=True, check=False)
    os.close(fd)
    assert out.stdout == "['0000:00:1e.0']\nModifyDeviceFiles: 0\nOther: 2\n"
    assert "Read-only file system" in out.stderr
    with pytest.raises(ApplyError, match=r"no entry for granted GPU\(s\) 0000:00:99.0"):
        procview.build(str(host), ("0000:00:99.0",))


# ---------------------------------------------------------------------------------------------
# attack rootfs: each plants a link or a file; nothing outside the rootfs may change


def _link(rootfs: Path, rel: str, target: Path) -> None:
    p = rootfs / rel
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()
    p.parent.mkdir(parents=True, exist_ok=True)
    p.symlink_to(target)


def _victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim"
    (v / "etc/ld.so.conf.d").mkdir(parents=True)
    (v / "etc/ld.so.cache").write_bytes(b"host cache")
    (v / "etc/ld.so.conf").write_text("host\n")
    (v / "lib").mkdir()
    (v / "lib/libcuda.so.1").write_text("host lib\n")
    shutil.copy2("/lib/x86_64-linux-gnu/libc.so.6", v / "lib/libvictim.so.6")
    (v / "bin").mkdir()
    return v


def _plant_ldconfig(rootfs: Path, victim: Path) -> None:
    for d in ("sbin", "usr/sbin"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
        trap = rootfs / d / "ldconfig"
        trap.write_text(f"#!/bin/sh\necho ran > {victim}/ran\n")
        trap.chmod(0o755)


ATTACKS = [
    ("usr/lib/x86_64-linux-gnu is a link to a host dir", "refuses",
     lambda r, v: _link(r, LIBDIR, v / "lib")),
    ("etc is a link to the host's etc", "refuses", lambda r, v: _link(r, "etc", v / "etc")),
    ("etc/ld.so.conf.d is a link to a host dir", "refuses",
     lambda r, v: _link(r, "etc/ld.so.conf.d", v / "etc/ld.so.conf.d")),
    ("etc/ld.so.cache is a link to a host file", "contained",
     lambda r, v: _link(r, "etc/ld.so.cache", v / "etc/ld.so.cache")),
    ("usr/bin is a link to a host dir", "refuses", lambda r, v: _link(r, "usr/bin", v / "bin")),
    ("libcuda.so.1 is a planted link to a host file", "contained",
     lambda r, v: _link(r, f"{LIBDIR}/libcuda.so.1", v / "lib/libcuda.so.1")),
    ("the library's own name is a planted link", "refuses",
     lambda r, v: _link(r, f"{LIBDIR}/libcuda.so.{VER}", v / "lib/libcuda.so.1")),
    ("a file where the usr/bin directory is expected", "refuses",
     lambda r, v: (r / "usr/bin").write_text("x")),
    ("the image ships its own ldconfig, a trap", "contained",
     _plant_ldconfig),
    ("etc/ld.so.conf lists a host dir through /proc/1/root", "contained",
     lambda r, v: (r / "etc/ld.so.conf").write_text(f"/proc/1/root{v}/lib\n")),
    ("etc/ld.so.cache~ (ldconfig's temp file) is a link through /proc/1/root", "refuses",
     lambda r, v: _link(r, "etc/ld.so.cache~", Path(f"/proc/1/root{v}/etc/ld.so.cache"))),
    ("etc/ld.so.cache is a link through /proc/1/root", "contained",
     lambda r, v: _link(r, "etc/ld.so.cache", Path(f"/proc/1/root{v}/etc/ld.so.cache"))),
]


@pytest.mark.parametrize(("expect", "plant"), [(a[1], a[2]) for a in ATTACKS],
                         ids=[f"{a[0]}: nothing outside the rootfs changes" for a in ATTACKS])
def test_an_attack_rootfs_never_makes_gpuhook_write_outside_it(
        container: tuple[int, Path], host: Path, tmp_path: Path, expect: str,
        plant: object) -> None:
    pid, rootfs = container
    victim = _victim(tmp_path)
    assert callable(plant)
    plant(rootfs, victim)
    before_victim, before_host = tree_hash(victim), tree_hash(host)
    plan = _plan(host)
    if expect == "refuses":
        refusal = r"(symlink|not a directory|not a regular file|symbolic links)"
        with pytest.raises(ApplyError, match=refusal):
            driver.apply_driver(plan, pid, str(rootfs))  # type: ignore[arg-type]
    else:
        driver.apply_driver(plan, pid, str(rootfs))  # type: ignore[arg-type]
    assert tree_hash(victim) == before_victim
    assert tree_hash(host) == before_host
    assert not (victim / "ran").exists()
    if expect == "contained":
        cache = _cache_names(rootfs)
        assert f"libcuda.so.1 (libc6,x86-64) => /{LIBDIR}/libcuda.so.1" in cache
        assert str(victim) not in cache


MERGED = [
    ("lib", "usr/lib", "/lib/firmware/nvidia/x/gsp.bin", "/usr/lib/firmware/nvidia/x/gsp.bin"),
    ("lib", "/usr/lib", "/lib/firmware/a.bin", "/usr/lib/firmware/a.bin"),
    ("bin", "usr/bin", "/bin/nvidia-smi", "/usr/bin/nvidia-smi"),
    ("lib", "/tmp/host-lib", "/lib/firmware/a.bin", "/lib/firmware/a.bin"),
    ("lib", "usr/lib64", "/lib/firmware/a.bin", "/lib/firmware/a.bin"),
    ("etc", "usr/etc", "/etc/vulkan/icd.d/nvidia_icd.json", "/etc/vulkan/icd.d/nvidia_icd.json"),
]


@pytest.mark.parametrize(("top", "text", "path", "want"), MERGED, ids=[
    "a merged-/usr lib link sends firmware to /usr/lib",
    "the absolute form of the merged-/usr link is recognised too",
    "a merged-/usr bin link sends binaries to /usr/bin",
    "a lib link anywhere else is left for the walk to refuse",
    "a lib link to another /usr dir is not the merged-/usr layout",
    "only the merged-/usr top-level names are rewritten",
])
def test_merged_usr_links_are_recognised_by_their_text_never_followed(
        tmp_path: Path, top: str, text: str, path: str, want: str) -> None:
    (tmp_path / top).symlink_to(text)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert driver.merged_usr(fd, path) == want
    finally:
        os.close(fd)


def test_a_failing_cgroup_step_undoes_the_driver_files_and_the_nodes(
        container: tuple[int, Path], host: Path, tmp_path: Path) -> None:
    from gpuhook.enforce import apply_to
    from gpuhook.enforce.cgroup import DeviceCgroup

    pid, rootfs = container
    (rootfs / "dev").mkdir()
    before = tree_hash(rootfs)
    with pytest.raises(ApplyError, match="no-cgroup"):
        apply_to(_plan(host), pid, str(rootfs),  # type: ignore[arg-type]
                 DeviceCgroup(1, str(tmp_path / "no-cgroup")))
    assert tree_hash(rootfs) == before
    assert _driver_mounts(_in_ns(pid, _mountinfo), rootfs) == []


@pytest.fixture
def bare_container(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A container whose rootfs has no proc mount: a plain proc/driver/nvidia directory stands
    where the driver's procfs directory is on a GPU host."""
    rootfs = _image(tmp_path / "rootfs")
    (rootfs / "proc/driver/nvidia").mkdir(parents=True)
    with subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "60"]) as p:
        try:
            for _ in range(200):
                if os.readlink(f"/proc/{p.pid}/exe").endswith("sleep"):
                    break
                subprocess.run(["sleep", "0.01"], check=True)
            yield p.pid, rootfs
        finally:
            p.kill()


def test_the_proc_view_is_mounted_over_proc_driver_nvidia_and_undone(
        bare_container: tuple[int, Path], host: Path) -> None:
    pid, rootfs = bare_container
    plan = _plan(host, proc_driver_gpus=("00000000:00:1E.0",))
    report = driver.apply_driver(plan, pid, str(rootfs),  # type: ignore[arg-type]
                                 host_root=str(host))
    assert report.view == "/proc/driver/nvidia"
    view = f"{rootfs}/proc/driver/nvidia"

    def look() -> list[str]:
        out = sorted(os.listdir(f"{view}/gpus"))
        with open(f"{view}/params") as f:
            out.append(f.read().splitlines()[0])
        try:
            open(f"{view}/x", "w").close()
        except OSError as e:
            out.append(str(e.strerror))
        return out

    assert _in_ns(pid, look) == ["0000:00:1e.0", "ModifyDeviceFiles: 0", "Read-only file system"]
    assert os.listdir(view) == []  # only in the container's namespace
    assert driver.undo_driver(report, pid, str(rootfs)) == []
    assert _in_ns(pid, lambda: os.listdir(view)) == []


def test_a_musl_image_gets_its_path_file_and_no_ldconfig_run(
        bare_container: tuple[int, Path], host: Path) -> None:
    pid, rootfs = bare_container
    for p in ("usr/lib/x86_64-linux-gnu", "etc/debian_version", "etc/ld.so.cache"):
        target = rootfs / p
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    (rootfs / "lib").mkdir()
    (rootfs / "lib/ld-musl-x86_64.so.1").write_bytes(b"\x7fELF")
    (rootfs / "etc/ld-musl-x86_64.path").write_text("/lib\n/usr/local/lib\n")
    report = driver.apply_driver(_plan(host), pid, str(rootfs))  # type: ignore[arg-type]
    assert f"/usr/lib/libcuda.so.{VER}" in report.mounts
    assert (rootfs / "etc/ld-musl-x86_64.path").read_text() == "/lib\n/usr/local/lib\n/usr/lib\n"
    assert not (rootfs / "etc/ld.so.cache").exists()
    assert driver.undo_driver(report, pid, str(rootfs)) == []
    assert (rootfs / "etc/ld-musl-x86_64.path").read_text() == "/lib\n/usr/local/lib\n"


def test_the_driver_child_holds_only_what_mounts_links_and_the_jail_need(
        container: tuple[int, Path]) -> None:
    pid, _ = container

    def caps() -> list[str]:
        with open("/proc/self/status") as f:
            return [line.split()[1] for line in f if line.startswith(("CapEff", "NoNewPrivs"))]

    # CAP_DAC_OVERRIDE 1, CAP_FOWNER 3, CAP_SETPCAP 8, CAP_SYS_CHROOT 18, CAP_SYS_ADMIN 21
    want = (1 << 1) | (1 << 3) | (1 << 8) | (1 << 18) | (1 << 21)
    assert _in_ns(pid, caps) == [f"{want:016x}", "1"]


@pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="needs busybox-static")
def test_the_jailed_program_sees_the_rootfs_as_root_and_an_empty_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """busybox (static) in ldconfig's place: its output comes back in the error, one line.
    (busybox sh sets SHLVL, PATH and PWD itself; nothing of the caller's environment passes.)"""
    monkeypatch.setenv("GPUHOOK_TEST_LEAK", "1")
    rootfs = _image(tmp_path / "rootfs")
    (rootfs / "proc").mkdir()
    # a real proc mount in the rootfs, as runc makes one: the jail must detach it
    subprocess.run(["mount", "-t", "proc", "proc", str(rootfs / "proc")], check=True)
    memfd = ldconfig.sealed_copy("/bin/busybox")
    root_fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY)
    script = "echo ROOT $(ls /); echo ENV[$(env)]; ls /proc/1/root; exit 3"
    try:
        with pytest.raises(ApplyError, match=r"exit status 3\): 'ROOT etc proc usr; ENV\[.*\]; "
                                             r"ls: /proc/1/root: No such file or directory'") as e:
            ldconfig.run(memfd, root_fd, str(rootfs), ("sh", "-c", script))
        assert "GPUHOOK_TEST_LEAK" not in str(e.value)
        assert (rootfs / "proc/self").is_symlink()  # the proc mount is still there outside
    finally:
        os.close(root_fd)
        os.close(memfd)
        subprocess.run(["umount", "-l", str(rootfs / "proc")], check=True)
