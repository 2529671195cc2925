"""Class 4: no deputy writes. The node helper has root's power in the container's file system;
it creates nodes only in the runtime's own /dev and never replaces, chmods or chowns an entry
it did not make. Attacks: a host directory mounted over /dev or /dev/nvidia-caps (in the spec,
and behind the spec's back), and a file, a FIFO or another device waiting at a node's path.
The refusals are logged as `apply-failed` (not `refused`) when the apply step found them."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuhook.decide.dev_mounts import node_mount_conflicts
from gpuhook.decide.plan import DeviceNode
from gpuhook.decide.spec import Mount
from tests.e2e import runc_harness as rh
from tests.security import entry as e

CAP = DeviceNode("/dev/nvidia-caps/nvidia-cap21", "c", 511, 21, 0o444)
GPU = DeviceNode("/dev/nvidia3", "c", 195, 3, 0o666)


@pytest.mark.parametrize(("mount", "conflict"), [
    (Mount("/dev", "tmpfs", "tmpfs"), False),
    (Mount("/dev", "/srv/host-dev", "bind", ("rbind",)), True),
    (Mount("/dev", "/srv/host-dev", None, ("bind", "rw")), True),
    (Mount("/dev/nvidia-caps", "/var/lib/kubelet/pods/x/volumes/empty-dir", "bind"), True),
    (Mount("/dev/./nvidia-caps/", "/srv/x", "bind"), True),
    (Mount("//dev/nvidia3", "/dev/nvidia3", "bind"), True),
    (Mount("/dev/shm", "shm", "tmpfs"), False),
    (Mount("/dev/nvidia-capsule", "/srv/x", "bind"), False),
], ids=["the runtime's own /dev tmpfs is fine", "a bind over /dev is not",
        "a bind (by option) over /dev is not", "an emptyDir over /dev/nvidia-caps is not",
        "a dotted path to /dev/nvidia-caps is the same path", "a bind onto a node's path is not",
        "/dev/shm is fine", "a sibling with a common prefix is fine"])
def test_mounts_that_would_hold_a_node_are_conflicts(mount: Mount, conflict: bool) -> None:
    assert bool(node_mount_conflicts([GPU, CAP], [mount])) is conflict


@pytest.mark.parametrize("where", ["/dev/nvidia-caps", "/dev"])
def test_dry_run_refuses_a_volume_over_the_nodes_place_naming_it(
        tmp_path: Path, where: str) -> None:
    config = e.write_config(tmp_path / "gpuhook.toml", tmp_path / "gpuhook.log")
    s = e.spec(ids=("0:0",), mounts=[{"destination": where, "type": "bind",
                                      "source": "/srv/volume", "options": ["rbind"]}])
    if where == "/dev":
        s["mounts"] = [m for m in s["mounts"] if m["source"] != "tmpfs"]
    run = e.run_process(e.dry_run_argv(e.bundle_with(tmp_path, s), config))
    e.assert_clean_exit(run, allowed=(1,))
    assert f"'/srv/volume' on {where}".encode() in run.stderr or b"over /dev" in run.stderr, \
        run.describe()


# ---- against runc, hook mode -----------------------------------------------------------------

def tree(path: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for dirpath, dirs, files in os.walk(path):
        for name in dirs + files:
            st = (Path(dirpath) / name).lstat()
            out[str(Path(dirpath, name).relative_to(path))] = (st.st_mode, st.st_uid,
                                                                st.st_ino)
    return out


def bundle_for(tmp_path: Path, rootfs: Path, ids: tuple[str, ...],
               extra: tuple[dict[str, Any], ...] = (), dev_tmpfs: bool = True,
               ) -> tuple[rh.Bundle, Path]:
    log = tmp_path / "gpuhook.log"
    cfg = rh.write_config(tmp_path / "gpuhook.toml", log_file=log)
    bundle = rh.make_bundle(tmp_path / "bundle", rootfs, rh.BundleOptions(
        request_ids=ids, hook=rh.hook_command(cfg), args=rh.probe_args(["/dev/nvidia0"])))
    if not dev_tmpfs:
        bundle.spec["mounts"] = [m for m in bundle.spec["mounts"] if m["destination"] != "/dev"
                                 and not m["destination"].startswith("/dev/")]
    bundle.spec["mounts"].extend(extra)
    bundle.write_spec()
    return bundle, log


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    v = tmp_path / "volume"
    v.mkdir()
    (v / "someone-elses-file").write_text("data\n")
    return v


@pytest.mark.e2e
@pytest.mark.parametrize("where", ["/dev/nvidia-caps", "/dev"])
def test_a_volume_in_the_spec_over_the_nodes_place_stops_the_start_and_is_not_written(
        tmp_path: Path, runc_rootfs: Path, cgroup_mode: str, volume: Path, where: str) -> None:
    mount = {"destination": where, "type": "bind", "source": str(volume),
             "options": ["rbind", "rw"]}
    bundle, log = bundle_for(tmp_path, runc_rootfs, ("0:0",), (mount,), dev_tmpfs=where != "/dev")
    before = tree(volume)
    result = rh.run_container(bundle, cgroup_mode)
    assert not result.ok
    assert "refusing to create device nodes under a volume" in result.stderr, result.stderr
    assert tree(volume) == before
    assert result.left_behind == []
    assert rh.read_log(log)[-1]["decision"] == "refused"


@pytest.fixture
def host_mount(volume: Path) -> Iterator[list[Path]]:
    """Bind mounts made on the host under a bundle's rootfs (runc's rootfs rbind carries them
    into the container, and the spec does not list them); unmounted afterwards."""
    made: list[Path] = []
    yield made
    for target in reversed(made):
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


@pytest.mark.e2e
def test_a_volume_behind_the_specs_back_is_refused_by_the_helper_itself(
        tmp_path: Path, runc_rootfs: Path, cgroup_mode: str, volume: Path,
        host_mount: list[Path]) -> None:
    bundle, log = bundle_for(tmp_path, runc_rootfs, ("0:0",), dev_tmpfs=False)
    target = bundle.rootfs / "dev" / "nvidia-caps"
    target.mkdir()
    subprocess.run(["mount", "--bind", str(volume), str(target)], check=True)
    host_mount.append(target)
    before = tree(volume)
    result = rh.run_container(bundle, cgroup_mode)
    assert not result.ok
    assert "is on another mount than the container's /dev" in result.stderr, result.stderr
    assert tree(volume) == before
    # The nodes made before the refusal (nvidiactl, uvm, nvidia0) were removed again.
    assert sorted(p.name for p in (bundle.rootfs / "dev").iterdir()
                  if p.name.startswith("nvidia")) == ["nvidia-caps"]
    record = rh.read_log(log)[-1]
    assert record["decision"] == "apply-failed", record


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["a regular file", "a FIFO", "another device"])
def test_an_entry_waiting_at_a_node_path_is_neither_replaced_nor_chmodded(
        tmp_path: Path, runc_rootfs: Path, cgroup_mode: str, kind: str) -> None:
    bundle, log = bundle_for(tmp_path, runc_rootfs, ("0:0",), dev_tmpfs=False)
    path = bundle.rootfs / "dev" / "nvidia0"
    if kind == "a regular file":
        path.write_text("image data\n")
        path.chmod(0o600)
    elif kind == "a FIFO":
        os.mkfifo(path, 0o600)
    else:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.lchown(path, 1234, 1234)
    before = path.lstat()
    result = rh.run_container(bundle, cgroup_mode)
    assert not result.ok
    assert "is already there" in result.stderr, result.stderr
    after = path.lstat()
    assert (after.st_ino, after.st_mode, after.st_uid, after.st_gid, after.st_rdev) == (
        before.st_ino, before.st_mode, before.st_uid, before.st_gid, before.st_rdev)
    record = rh.read_log(log)[-1]
    # The apply step found it: the log says apply-failed (once overwritten by "refused").
    assert record["decision"] == "apply-failed", record
    assert "is already there" in record["error"]


def test_the_log_keeps_apply_failed_in_the_record(tmp_path: Path) -> None:
    # Without runc: DEAD_PID makes the apply step fail; the record must say so.
    config = e.write_config(tmp_path / "gpuhook.toml", tmp_path / "gpuhook.log")
    bundle = e.bundle_with(tmp_path, e.spec(ids=("0:0",)))
    run = e.run_process(e.hook_argv(config), stdin=e.state_for(bundle))
    e.assert_clean_exit(run, allowed=(1,))
    record = json.loads((tmp_path / "gpuhook.log").read_text().splitlines()[-1])
    assert record["decision"] == "apply-failed", record
