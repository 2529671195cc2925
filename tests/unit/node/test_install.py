"""`gpuhook node install`'s decisions that need no engine running: when a change is effective
(restart or not), what a dry run prints and leaves alone, and which option sets are refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpuhook.engines import Change
from gpuhook.node.install import NodeError, NodeOptions, check, effective
from gpuhook.node.payload import launcher

GPUHOOK = Path(sys.executable).parent / "gpuhook"
MAIN = b'version = 2\nimports = []\n[plugins."io.containerd.grpc.v1.cri"]\nsandbox_image = "p"\n'


@pytest.mark.parametrize(("changes", "want"), [
    ([Change("/etc/containerd/config.toml", MAIN, MAIN)], False),
    ([Change("/etc/containerd/config.toml", MAIN, b"# a comment\n" + MAIN)], False),
    ([Change("/etc/containerd/config.toml", MAIN,
             MAIN.replace(b"imports = []", b'imports = ["/etc/containerd/conf.d/x.toml"]'))],
     True),
    ([Change("/etc/containerd/conf.d/99-gpuhook.toml", None, b"version = 2\n")], True),
    ([Change("/etc/containerd/conf.d/99-gpuhook.toml", b"version = 2\n", None)], True),
    ([Change("/etc/containerd/config.toml", b"not = [toml", b"not = [toml ")], True),
], ids=["an unchanged file is not effective", "a comment is not effective",
        "a new import is effective", "a new drop-in is effective", "a removed drop-in is effective",
        "an unparsable file compares as bytes"])
def test_a_change_is_effective_when_the_engine_would_read_other_settings(
        changes: list[Change], want: bool) -> None:
    assert effective(changes) is want


@pytest.mark.parametrize(("opts", "message"), [
    (NodeOptions(host_root="/", runtime="docker"), "--runtime 'docker'"),
    (NodeOptions(host_root="/", restart="reboot"), "--restart 'reboot'"),
    (NodeOptions(host_root="/", runtime="crio", restart="signal"), "signal is for containerd"),
    (NodeOptions(host_root="/nonexistent-host-root"), "not a directory"),
], ids=["docker is not a CRI engine", "an unknown restart mode",
        "CRI-O is not restarted by a signal", "a host root that is not mounted"])
def test_option_sets_that_cannot_work_are_refused(opts: NodeOptions, message: str) -> None:
    with pytest.raises(NodeError, match=message):
        check(opts)


def test_the_launcher_runs_the_bundled_interpreter_through_the_bundled_loader(
        tmp_path: Path) -> None:
    text = launcher("/usr/local/gpuhook/gpuhook-x", "/usr/local/gpuhook/config.toml",
                    "/lib64/ld-linux-x86-64.so.2", "runtime_main", "gpuhook-runtime").decode()
    assert text.startswith("#!/bin/sh\n")
    assert ('exec /usr/local/gpuhook/gpuhook-x/lib/ld-linux-x86-64.so.2 --inhibit-cache '
            '--library-path /usr/local/gpuhook/gpuhook-x/lib '
            '/usr/local/gpuhook/gpuhook-x/bin/python3 -I -S -B -c ') in text
    assert 'GPUHOOK_CONFIG="${GPUHOOK_CONFIG:-/usr/local/gpuhook/config.toml}"' in text
    # the -c program is one sh word that sh hands to Python unchanged
    script = tmp_path / "launcher"
    script.write_text(text.replace("exec ", "printf '%s\\n' "))
    out = subprocess.run(["sh", str(script), "a b"], capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin"}).stdout.splitlines()
    code = out[out.index("-c") + 1]
    assert "from gpuhook.entry import runtime_main" in code
    assert out[-1] == "a b"


@pytest.mark.skipif(os.geteuid() != 0, reason="the engine step chroots into the host root")
def test_a_dry_run_prints_the_host_paths_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "host"
    (root / "etc/containerd").mkdir(parents=True)
    (root / "etc/containerd/config.toml").write_bytes(MAIN)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    res = subprocess.run([str(GPUHOOK), "node", "install", "--host-root", str(root),
                          "--dry-run"], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert (root / "etc/containerd/config.toml").read_bytes() == MAIN
    assert "+++ /etc/containerd/conf.d/99-gpuhook.toml" in res.stdout
    assert '+imports = ["/etc/containerd/conf.d/99-gpuhook.toml"]' in res.stdout
    assert 'BinaryName = "/usr/local/gpuhook/current/bin/gpuhook-runtime"' in res.stdout
    assert "restart: would restart containerd" in res.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="the engine step chroots into the host root")
def test_a_failed_restart_undoes_the_install(tmp_path: Path) -> None:
    """Nothing half-applied: with no containerd behind the socket the restart fails, and the
    config, the drop-in and the bundle are back as they were."""
    root = tmp_path / "host"
    (root / "etc/containerd").mkdir(parents=True)
    (root / "etc/containerd/config.toml").write_bytes(MAIN)
    res = subprocess.run([str(GPUHOOK), "node", "install", "--host-root", str(root),
                          "--no-wait", "--timeout", "1"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode != 0
    assert "restart: cannot reach containerd at /run/containerd/containerd.sock" in res.stderr
    assert "undone what it had done" in res.stdout
    assert (root / "etc/containerd/config.toml").read_bytes() == MAIN
    assert not (root / "etc/containerd/conf.d/99-gpuhook.toml").exists()
    assert not (root / "etc/containerd/config.toml.gpuhook.bak").exists()
    left = sorted(os.listdir(root / "usr/local/gpuhook"))
    assert left == [], left  # the lock file too: it goes with the instance that held it


def _host_with_containerd(tmp_path: Path, config: bytes = MAIN) -> Path:
    root = tmp_path / "host"
    (root / "etc/containerd").mkdir(parents=True)
    (root / "etc/containerd/config.toml").write_bytes(config)
    return root


def _install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GPUHOOK), "node", *args, "--host-root", str(root)],
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="the engine step chroots into the host root")
@pytest.mark.parametrize(("config", "args", "code", "says"), [
    (MAIN, ("install", "--no-wait", "--restart", "none"), 0, "installed"),
    (MAIN, ("install", "--no-wait", "--timeout", "1"), 1, "undone what it had done"),
    (b"version = = 2\n", ("install", "--no-wait", "--restart", "none"), 1,
     "engine: containerd in"),
    (MAIN, ("uninstall", "--restart", "none"), 0, "uninstalled"),
], ids=["an install that succeeded leaves no lock file",
        "an install whose restart failed leaves no lock file",
        "an install whose engine step failed leaves no lock file",
        "an uninstall leaves no lock file"])
def test_no_exit_path_leaves_the_lock_file(tmp_path: Path, config: bytes,
                                          args: tuple[str, ...], code: int, says: str) -> None:
    root = _host_with_containerd(tmp_path, config)
    res = _install(root, *args)
    assert res.returncode == code, res.stdout + res.stderr
    assert says in res.stdout + res.stderr
    lock = root / "usr/local/gpuhook/.lock"
    assert not lock.exists(), res.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="the engine step chroots into the host root")
def test_an_instance_refused_by_the_lock_leaves_the_holders_lock_file(tmp_path: Path) -> None:
    import fcntl

    root = _host_with_containerd(tmp_path)
    lock = root / "usr/local/gpuhook/.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("4242\n")
    with open(lock, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        inode = os.fstat(held.fileno()).st_ino
        res = _install(root, "install", "--no-wait", "--restart", "none")
        assert res.returncode == 1, res.stdout
        assert "holds /usr/local/gpuhook/.lock (pid 4242 in its pid namespace)" in res.stderr
        assert os.stat(lock).st_ino == inode and lock.read_text() == "4242\n"
    assert (root / "etc/containerd/config.toml").read_bytes() == MAIN


def test_crio_gets_a_drop_in_naming_the_host_runtime_path(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the engine step chroots into the host root")
    root = tmp_path / "host"
    (root / "etc/crio").mkdir(parents=True)
    res = subprocess.run([str(GPUHOOK), "node", "install", "--host-root", str(root),
                          "--runtime", "crio", "--restart", "none", "--dry-run"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert "+++ /etc/crio/crio.conf.d/99-gpuhook.conf" in res.stdout
    assert '+runtime_path = "/usr/local/gpuhook/current/bin/gpuhook-runtime"' in res.stdout
