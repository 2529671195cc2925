"""The forked namespace helper, and `apply_to` (nodes, then v1 rules, rollback) against a
temporary rootfs and a temporary stand-in for the cgroup directory. The "container" is a
`sleep` child in this test's own mount namespace, so `setns` really runs."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuhook.enforce import apply_to
from gpuhook.enforce.cgroup import DeviceCgroup
from gpuhook.enforce.ns import NamespaceWorkError, run_forked, run_in_mount_ns
from gpuhook.errors import ApplyError
from tests.unit import specs

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="setns and mknod need root")


def test_forked_work_returns_its_json_result() -> None:
    assert run_forked(lambda: {"pid": os.getpid()})["pid"] != os.getpid()


def _raise_oserror() -> None:
    raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/dev/x")


def _raise_apply_error() -> None:
    raise ApplyError("refusing /dev: it is a symlink")


def _die() -> None:
    os._exit(3)


@pytest.mark.parametrize(("work", "message", "err"), [
    (_raise_oserror, "/dev/x: No such file or directory", errno.ENOENT),
    (_raise_apply_error, "refusing /dev: it is a symlink", None),
    (_die, r"died without a reply \(wait status 768\)", None),
], ids=["an OSError keeps its errno and file name", "an ApplyError keeps its message",
        "a child that dies is reported"])
def test_child_errors_come_back_as_namespace_work_errors(work: object, message: str,
                                                         err: int | None) -> None:
    assert callable(work)
    with pytest.raises(NamespaceWorkError, match=message) as info:
        run_forked(work)
    assert info.value.errno == err


@pytest.mark.parametrize("work", [
    lambda: "x" * (2 << 20),
], ids=["a reply larger than the limit is refused, not parsed"])
def test_a_broken_reply_is_a_namespace_work_error(work: object) -> None:
    assert callable(work)
    with pytest.raises(NamespaceWorkError, match="broken reply"):
        run_forked(work)


@needs_root
def test_work_runs_after_setns_into_the_target_mount_namespace() -> None:
    with subprocess.Popen(["sleep", "30"]) as sleeper:
        try:
            ns = run_in_mount_ns(sleeper.pid, lambda: os.readlink("/proc/self/ns/mnt"))
        finally:
            sleeper.kill()
    assert ns == os.readlink(f"/proc/{os.getpid()}/ns/mnt")


def _status() -> dict[str, str]:
    with open("/proc/self/status") as f:
        return dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)


@needs_root
def test_the_child_holds_only_the_capabilities_its_work_needs() -> None:
    with subprocess.Popen(["sleep", "30"]) as sleeper:
        try:
            status = run_in_mount_ns(sleeper.pid, _status)
        finally:
            sleeper.kill()
    # CAP_CHOWN 0, CAP_DAC_OVERRIDE 1, CAP_FOWNER 3, CAP_MKNOD 27: no CAP_SYS_ADMIN, no SETUID...
    want = (1 << 0) | (1 << 1) | (1 << 3) | (1 << 27)
    assert int(status["CapEff"], 16) == want
    assert int(status["CapPrm"], 16) == want
    assert status["NoNewPrivs"].strip() == "1"


def test_a_gone_process_is_reported_with_its_namespace_path() -> None:
    with pytest.raises(NamespaceWorkError, match=r"cannot open /proc/999999999/ns/mnt"):
        run_in_mount_ns(999999999, lambda: None)


@pytest.fixture
def container(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    rootfs = tmp_path / "rootfs"
    (rootfs / "dev").mkdir(parents=True)
    with subprocess.Popen(["sleep", "60"]) as sleeper:
        try:
            yield sleeper.pid, rootfs
        finally:
            sleeper.kill()


MIG_PLAN = specs.plan(specs.spec(ids=["1:0"]))


@needs_root
def test_apply_creates_nodes_then_allows_each_rule(container: tuple[int, Path],
                                                   tmp_path: Path) -> None:
    pid, rootfs = container
    cg = tmp_path / "cgroup"
    cg.mkdir()
    (cg / "devices.allow").write_text("")
    done = apply_to(MIG_PLAN, pid, str(rootfs), DeviceCgroup(1, str(cg)))
    for node in MIG_PLAN.device_nodes:
        assert (rootfs / node.path.lstrip("/")).is_char_device()
    assert (cg / "devices.allow").read_text() == "".join(
        f"c {r.major}:{r.minor} {r.access}" for r in MIG_PLAN.cgroup_rules)
    assert f"node {MIG_PLAN.device_nodes[0].path}: created" in done
    assert any(d.startswith(f"cgroup v1 {cg}: allow c 511:") for d in done)


@needs_root
def test_apply_removes_its_nodes_when_allowing_fails(container: tuple[int, Path],
                                                     tmp_path: Path) -> None:
    pid, rootfs = container
    os.mknod(rootfs / "dev" / "nvidiactl", 0o20666, os.makedev(195, 255))  # already there
    with pytest.raises(ApplyError, match=r"devices\.allow"):
        apply_to(MIG_PLAN, pid, str(rootfs), DeviceCgroup(1, str(tmp_path / "no-cgroup")))
    assert os.listdir(rootfs / "dev") == ["nvidiactl"]


@needs_root
def test_a_symlinked_dev_fails_before_any_rule_is_written(container: tuple[int, Path],
                                                          tmp_path: Path) -> None:
    pid, rootfs = container
    (rootfs / "dev").rmdir()
    (rootfs / "dev").symlink_to(tmp_path)
    cg = tmp_path / "cgroup"
    cg.mkdir()
    (cg / "devices.allow").write_text("")
    with pytest.raises(ApplyError, match=r"creating device nodes .*: refusing .* /dev .*symlink"):
        apply_to(MIG_PLAN, pid, str(rootfs), DeviceCgroup(1, str(cg)))
    assert (cg / "devices.allow").read_text() == ""


def _spawn_in_own_mount_ns(script: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                             "sh", *args], env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def _wait_for_root(pid: int, want: Path) -> None:
    target = want.stat()
    for _ in range(200):
        try:
            st = os.stat(f"/proc/{pid}/root")
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never got {want} as its root")


@needs_root
def test_a_runtime_that_pivoted_before_the_hook_gets_nodes_in_the_init_root(
        tmp_path: Path) -> None:
    # In the "container's" mount namespace the bundle path is covered by a tmpfs, and the init
    # process's root is a bind mount of the real rootfs, as after pivot_root.
    rootfs = tmp_path / "rootfs"
    (rootfs / "dev").mkdir(parents=True)
    (rootfs / "bin").mkdir()
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    hidden = tmp_path / "pivoted"
    hidden.mkdir()
    cg = tmp_path / "cgroup"
    cg.mkdir()
    (cg / "devices.allow").write_text("")
    script = ('mount --bind "$1" "$2" && mount -t tmpfs none "$1" && '
              'exec chroot "$2" /bin/busybox sleep 60')
    with _spawn_in_own_mount_ns(script, str(rootfs), str(hidden)) as proc:
        try:
            _wait_for_root(proc.pid, rootfs)
            apply_to(MIG_PLAN, proc.pid, str(rootfs), DeviceCgroup(1, str(cg)))
        finally:
            proc.kill()
    for node in MIG_PLAN.device_nodes:
        assert (rootfs / node.path.lstrip("/")).is_char_device()


@needs_root
def test_a_rootfs_found_neither_at_its_path_nor_as_init_root_is_refused(
        tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "dev").mkdir(parents=True)
    cg = tmp_path / "cgroup"
    cg.mkdir()
    (cg / "devices.allow").write_text("")
    ready = tmp_path / "ready"
    script = 'mount -t tmpfs none "$1" && touch "$2" && exec sleep 60'
    with _spawn_in_own_mount_ns(script, str(rootfs), str(ready)) as proc:
        try:
            for _ in range(200):
                if ready.exists():
                    break
                time.sleep(0.01)
            with pytest.raises(ApplyError, match=r"neither at that path .* refusing to guess"):
                apply_to(MIG_PLAN, proc.pid, str(rootfs), DeviceCgroup(1, str(cg)))
        finally:
            proc.kill()
    assert os.listdir(rootfs / "dev") == []
    assert (cg / "devices.allow").read_text() == ""


SPY = """
import os, sys
sys.path.insert(0, {repo!r})
parent, log = os.getpid(), {log!r}

class Spy:
    # Records every module a process other than this one (a forked helper) looks up.
    def find_spec(self, name, path=None, target=None):
        if os.getpid() != parent:
            with open(log, "a") as f:
                f.write(name + "\\n")
        return None

from gpuhook.enforce import apply_to
from gpuhook.enforce.cgroup import DeviceCgroup
from tests.unit import specs

plan = specs.plan(specs.spec(ids=["1:0"]))
sys.meta_path.insert(0, Spy())
apply_to(plan, int(sys.argv[1]), sys.argv[2], DeviceCgroup(1, sys.argv[3]))
"""


@needs_root
def test_the_helper_imports_no_module_in_the_containers_mount_namespace(
        container: tuple[int, Path], tmp_path: Path) -> None:
    # A module the helper imported after setns would be read from the container's view of
    # the file system: everything it runs is imported by the hook before the fork.
    pid, rootfs = container
    cg = tmp_path / "cgroup"
    cg.mkdir()
    (cg / "devices.allow").write_text("")
    log = tmp_path / "child-imports"
    repo = str(Path(__file__).resolve().parents[3])
    subprocess.run([sys.executable, "-c", SPY.format(repo=repo, log=str(log)), str(pid),
                    str(rootfs), str(cg)], check=True, timeout=60)
    assert (cg / "devices.allow").read_text()  # the helper ran
    assert not log.exists(), log.read_text()
