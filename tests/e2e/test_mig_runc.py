"""MIG devices and the MIG monitor capability in a real runc container, cgroup v1 and v2
(issue 6, e2e part).

The shipped fake 8x A100 node has GPU 1 split into 7x 1g.5gb. Capability minors and modes come
from its fake host tree (`proc/driver/nvidia-caps/mig-minors`, `.../capabilities/...`), read
here with gpuhook's own parser so the test follows the data.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuhook.host.proc import parse_mig_minors
from tests.e2e import runc_harness as rh

pytestmark = pytest.mark.e2e

FAKE_HOST = rh.FAKE / "hosts" / "8xa100-mig"
MINORS = parse_mig_minors((FAKE_HOST / "proc/driver/nvidia-caps/mig-minors").read_text())
FRONTEND, CAPS = 195, 511
# GPU 1's MIG devices 0 and 1 are GI 7 and GI 8, both CI 0 (see the fake inventory).
MIG_1_0_UUID = "MIG-205e24ca-2066-514f-80c3-cb66869f6a1b"


def cap_path(name: str) -> str:
    return f"/dev/nvidia-caps/nvidia-cap{MINORS[name]}"


OWN_CAPS = [cap_path("gpu1/gi7/access"), cap_path("gpu1/gi7/ci0/access")]
SIBLING_CAPS = [cap_path("gpu1/gi8/access"), cap_path("gpu1/gi8/ci0/access")]
MONITOR_CAP = cap_path("monitor")


def run(tmp_path: Path, rootfs: Path, mode: str, request_ids: tuple[str, ...],
        probe: list[str], extra: dict[str, object] | None = None) -> rh.RunResult:
    cfg = rh.write_config(tmp_path / "gpuhook.toml", fake="8xa100-mig",
                          log_file=tmp_path / "gpuhook.log", extra=extra)
    # The spec places the sibling MIG instance's capability nodes, without an allow rule.
    siblings = tuple(rh.SpecDevice(p, CAPS, int(p.rsplit("nvidia-cap", 1)[1]), file_mode=0o444)
                     for p in SIBLING_CAPS)
    bundle = rh.make_bundle(tmp_path / "bundle", rootfs, rh.BundleOptions(
        request_ids=request_ids, devices=siblings, hook=rh.hook_command(cfg),
        args=rh.probe_args(probe, ("/dev", "/dev/nvidia-caps"))))
    result = rh.run_container(bundle, mode)
    assert result.ok, result.stderr
    assert result.probe_done, result.stdout
    return result


def assert_read_only_cap(result: rh.RunResult, path: str) -> None:
    p = result.probes[path]
    listing = result.listings.get("/dev/nvidia-caps")
    assert p.exists, f"{path} missing; /dev/nvidia-caps has {listing}"
    assert (p.is_char, p.major, p.mode, p.owner) == (True, CAPS, 0o444, "0:0")
    assert p.minor == int(path.rsplit("nvidia-cap", 1)[1])
    assert (p.read, p.write) == ("ENXIO", "EPERM"), \
        f"{path}: expected read allowed (ENXIO) and write denied (EPERM)"


@pytest.mark.parametrize("request_id", ["1:0", MIG_1_0_UUID],
                         ids=["index form gpu:mig", "MIG uuid form"])
def test_unprivileged_mig_request_opens_parent_and_its_own_capabilities_only(
        runc_rootfs: Path, cgroup_mode: str, tmp_path: Path, request_id: str) -> None:
    result = run(tmp_path, runc_rootfs, cgroup_mode, (request_id,),
                 ["/dev/nvidia1", "/dev/nvidia0", *OWN_CAPS, *SIBLING_CAPS, MONITOR_CAP])
    parent = result.probes["/dev/nvidia1"]
    assert (parent.is_char, parent.major, parent.minor) == (True, FRONTEND, 1)
    assert (parent.read, parent.write) == ("ENXIO", "ENXIO")
    assert not result.probes["/dev/nvidia0"].exists
    for path in OWN_CAPS:
        assert_read_only_cap(result, path)
    for path in SIBLING_CAPS:
        p = result.probes[path]
        assert p.exists, f"{path}: the spec placed it"
        assert (p.read, p.write) == ("EPERM", "EPERM"), f"{path}: sibling MIG capability allowed"
    assert not result.probes[MONITOR_CAP].exists
    caps_dir = result.listings["/dev/nvidia-caps"]
    assert caps_dir is not None
    assert sorted(caps_dir) == sorted(p.rsplit("/", 1)[1] for p in OWN_CAPS + SIBLING_CAPS)


def test_mig_monitor_mount_grants_read_only_monitor_capability_when_config_allows(
        runc_rootfs: Path, cgroup_mode: str, tmp_path: Path) -> None:
    result = run(tmp_path, runc_rootfs, cgroup_mode, ("1:0", "mig-monitor"),
                 [MONITOR_CAP, *OWN_CAPS, *SIBLING_CAPS],
                 extra={"allow-mig-monitor-unprivileged": True})
    assert_read_only_cap(result, MONITOR_CAP)
    for path in OWN_CAPS:
        assert_read_only_cap(result, path)
    for path in SIBLING_CAPS:
        assert (result.probes[path].read, result.probes[path].write) == ("EPERM", "EPERM")


def test_mig_monitor_mount_grants_nothing_when_config_disallows(
        runc_rootfs: Path, cgroup_mode: str, tmp_path: Path) -> None:
    result = run(tmp_path, runc_rootfs, cgroup_mode, ("1:0", "mig-monitor"),
                 [MONITOR_CAP, *OWN_CAPS])
    assert not result.probes[MONITOR_CAP].exists
    for path in OWN_CAPS:
        assert_read_only_cap(result, path)
