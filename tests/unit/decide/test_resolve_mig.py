"""Id forms, unknown ids, MIG devices and MIG capabilities, requirements."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gpuhook.errors import HostError, ResolveError
from gpuhook.inventory.fake import load_fake
from tests.unit.specs import MIG8, MIG8_HOST, ONE, ONE_HOST, config, gpu_nodes, nodes, plan, spec

INV = load_fake(MIG8)
GPU = {g.index: g for g in INV.gpus}
MIG_1_0 = GPU[1].mig_devices[0]  # 1g.5gb, GI 7, CI 0
MIG_0_2 = GPU[0].mig_devices[2]  # 2g.10gb, GI 5, CI 0


def caps_of(gpu_minor: int, gi: int, ci: int) -> set[str]:
    """Capability nodes of one MIG device, by reading the fake host's mig-minors."""
    text = Path(MIG8_HOST, "proc/driver/nvidia-caps/mig-minors").read_text()
    table = dict(line.split() for line in text.splitlines())
    return {f"/dev/nvidia-caps/nvidia-cap{table[f'gpu{gpu_minor}/gi{gi}/access']}",
            f"/dev/nvidia-caps/nvidia-cap{table[f'gpu{gpu_minor}/gi{gi}/ci{ci}/access']}"}


@pytest.mark.parametrize(
    ("device_id", "want_uuid"),
    [
        pytest.param("3", GPU[3].uuid, id="index"),
        pytest.param(GPU[3].uuid, GPU[3].uuid, id="GPU uuid"),
        pytest.param("1:0", MIG_1_0.uuid, id="gpu colon mig index"),
        pytest.param(MIG_1_0.uuid, MIG_1_0.uuid, id="MIG uuid"),
        pytest.param("0:2", MIG_0_2.uuid, id="MIG index on the mixed-layout GPU"),
    ],
)
def test_each_id_form_resolves(device_id: str, want_uuid: str) -> None:
    p = plan(spec(ids=[device_id]))
    assert [d.uuid for d in p.devices] == [want_uuid]


def test_same_device_by_index_and_uuid_appears_once() -> None:
    p = plan(spec(ids=["3", GPU[3].uuid]))
    assert [d.index for d in p.devices] == ["3"]
    assert gpu_nodes(p) == ["/dev/nvidia3"]


def test_gpu_node_uses_nvml_minor_not_index(tmp_path: Path) -> None:
    path = tmp_path / "inv.yaml"
    path.write_text(Path(MIG8).read_text().replace("    minor: 5\n", "    minor: 9\n"))
    p = plan(spec(ids=["5"]), config(inventory=str(path)))
    assert gpu_nodes(p) == ["/dev/nvidia9"]
    assert p.devices[0].minor == 9


@pytest.mark.parametrize(
    ("device_id", "message"),
    [
        pytest.param("9", r"9 not found; available: MIG-\S+ \(0:0\), .*MIG-\S+ \(1:6\), "
                          r"GPU-\S+ \(2\), ",
                     id="unknown index lists what could be granted: MIG devices of a GPU in "
                        "MIG mode, whole GPUs otherwise"),
        pytest.param("GPU-1234", r"GPU-1234 not found; available: .*\(7\)",
                     id="unknown GPU uuid lists GPUs"),
        pytest.param("MIG-1234", r"MIG-1234 not found; available MIG devices: .*\(1:6\)",
                     id="unknown MIG uuid lists MIG devices"),
        pytest.param("1:9", r"1:9 not found: MIG devices of GPU 1: .*\(1:0, 1g.5gb\)",
                     id="unknown MIG index lists that GPU's MIG devices"),
        pytest.param("2:0", r"2:0 not found: GPU 2 has no MIG devices",
                     id="MIG index on a GPU without MIG"),
        pytest.param("gpu0", r"'gpu0' is not a device id", id="unknown id form"),
    ],
)
def test_unknown_ids_fail_naming_what_exists(device_id: str, message: str) -> None:
    with pytest.raises(ResolveError, match=message):
        plan(spec(ids=[device_id]))


def test_unknown_id_among_good_ones_fails_the_whole_request() -> None:
    with pytest.raises(ResolveError):
        plan(spec(ids=["3", "42"]))


def test_no_gpus_inventory_says_so() -> None:
    with pytest.raises(ResolveError, match="available: GPU-"):
        plan(spec(ids=["1"]), config(inventory=ONE, host_root=ONE_HOST))


def test_mig_device_gets_parent_and_only_its_own_capabilities() -> None:
    p = plan(spec(ids=[MIG_1_0.uuid]))
    assert gpu_nodes(p) == ["/dev/nvidia1"]
    caps = {n for n in nodes(p) if "nvidia-caps" in n}
    assert caps == caps_of(1, 7, 0)
    assert not caps & caps_of(1, 8, 0), "a sibling MIG instance must not be exposed"
    assert {"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"} <= set(nodes(p))


def test_capability_nodes_are_read_only_with_driver_mode() -> None:
    p = plan(spec(ids=["1:0"]))
    caps = [n for n in p.device_nodes if "nvidia-caps" in n.path]
    assert {n.file_mode for n in caps} == {0o444}
    assert {n.major for n in caps} == {511}
    cap_rules = [r for r in p.cgroup_rules if r.major == 511]
    assert {r.access for r in cap_rules} == {"r"}
    assert len(cap_rules) == 2


def test_two_mig_devices_of_one_gpu_share_the_parent_node() -> None:
    p = plan(spec(ids=["0:0", "0:1"]))
    assert gpu_nodes(p) == ["/dev/nvidia0"]
    assert [d.kind for d in p.devices] == ["mig", "mig"]
    assert {n for n in nodes(p) if "caps" in n} == caps_of(0, 2, 0) | caps_of(0, 3, 0)


def test_mig_device_reports_parent_gi_ci_profile() -> None:
    p = plan(spec(ids=["0:2"]))
    d = p.devices[0]
    assert (d.kind, d.index, d.minor, d.parent_uuid, d.gi, d.ci, d.profile) == (
        "mig", "0:2", 0, GPU[0].uuid, 5, 0, "2g.10gb")


@pytest.mark.parametrize("device_id", ["0", GPU[1].uuid], ids=["by index", "by uuid"])
def test_full_gpu_on_mig_enabled_is_refused_naming_mig_devices(device_id: str) -> None:
    with pytest.raises(ResolveError, match=r"in MIG mode; request one of its MIG devices"
                                           r".*MIG-.*allow-full-gpu-on-mig-enabled"):
        plan(spec(ids=[device_id]))


def test_full_gpu_on_mig_enabled_allowed_by_config() -> None:
    p = plan(spec(ids=["0"]), config(allow_full_gpu_on_mig_enabled=True))
    assert gpu_nodes(p) == ["/dev/nvidia0"]
    assert not [n for n in nodes(p) if "caps" in n]


def test_all_on_mixed_node_means_mig_devices_of_mig_gpus() -> None:
    p = plan(spec(env=["NVIDIA_VISIBLE_DEVICES=all"], privileged=True))
    kinds = [(d.kind, d.index) for d in p.devices]
    assert ("gpu", "0") not in kinds and ("gpu", "1") not in kinds
    assert ("mig", "0:0") in kinds and ("mig", "1:6") in kinds
    assert [k for k in kinds if k[0] == "gpu"] == [("gpu", str(i)) for i in range(2, 8)]


def test_all_with_full_gpus_allowed_means_whole_gpus() -> None:
    p = plan(spec(env=["NVIDIA_VISIBLE_DEVICES=all"], privileged=True),
             config(allow_full_gpu_on_mig_enabled=True))
    assert [d.index for d in p.devices] == [str(i) for i in range(8)]


MONITOR_NODE = "/dev/nvidia-caps/nvidia-cap2"
CONFIG_NODE = "/dev/nvidia-caps/nvidia-cap1"


@pytest.mark.parametrize(
    ("privileged", "env", "caps_mounts", "allow", "monitor", "mig_config"),
    [
        pytest.param(True, ["NVIDIA_MIG_MONITOR_DEVICES=all"], [], False, True, False,
                     id="monitor via env for privileged"),
        pytest.param(False, ["NVIDIA_MIG_MONITOR_DEVICES=all"], [], True, False, False,
                     id="monitor via env never for unprivileged"),
        pytest.param(False, [], ["mig-monitor"], True, True, False,
                     id="monitor via mount when config allows"),
        pytest.param(False, [], ["mig-monitor"], False, False, False,
                     id="monitor via mount refused when config does not allow"),
        pytest.param(True, ["NVIDIA_MIG_CONFIG_DEVICES=all"], [], False, False, True,
                     id="config via env for privileged"),
        pytest.param(False, ["NVIDIA_MIG_CONFIG_DEVICES=all"], [], True, False, False,
                     id="config via env never for unprivileged"),
        pytest.param(False, [], ["mig-config"], True, False, False,
                     id="config via mount never for unprivileged"),
        pytest.param(True, [], ["mig-config"], False, False, True,
                     id="config via mount for privileged"),
        pytest.param(True, ["NVIDIA_MIG_MONITOR_DEVICES=0"], [], False, False, False,
                     id="monitor env other than all is ignored"),
    ],
)
def test_mig_monitor_and_config(privileged: bool, env: list[str], caps_mounts: list[str],
                                allow: bool, monitor: bool, mig_config: bool) -> None:
    p = plan(spec(env=env, ids=caps_mounts, privileged=privileged),
             config(allow_mig_monitor_unprivileged=allow))
    assert (p.mig_monitor, p.mig_config) == (monitor, mig_config)
    assert (MONITOR_NODE in nodes(p)) == monitor
    assert (CONFIG_NODE in nodes(p)) == mig_config
    if not (monitor or mig_config):
        assert p.empty
        assert p.ignored, "a refused capability request is recorded with its reason"


def test_monitor_node_is_read_only_and_monitor_mode() -> None:
    p = plan(spec(ids=["1:0", "mig-monitor"]), config(allow_mig_monitor_unprivileged=True))
    node = next(n for n in p.device_nodes if n.path == MONITOR_NODE)
    rule = next(r for r in p.cgroup_rules if (r.major, r.minor) == (511, 2))
    assert (node.file_mode, rule.access) == (0o444, "r")


def test_mig_grant_sets_pci_bus_order_env_for_the_shim_and_notes_it() -> None:
    p = plan(spec(ids=["1:0"]))
    assert p.env == (("CUDA_DEVICE_ORDER", "PCI_BUS_ID"),)
    assert any("CUDA_DEVICE_ORDER" in n and "hook" in n for n in p.notes)


def test_full_gpu_grant_sets_no_env() -> None:
    assert plan(spec(ids=["3"])).env == ()


def test_missing_mig_minors_fails_closed(tmp_path: Path) -> None:
    host = tmp_path / "host"
    shutil.copytree(MIG8_HOST, host)
    (host / "proc/driver/nvidia-caps/mig-minors").unlink()
    with pytest.raises(HostError, match="mig-minors"):
        plan(spec(ids=["1:0"]), config(host_root=str(host)))


def test_missing_uvm_major_fails_closed(tmp_path: Path) -> None:
    host = tmp_path / "host"
    shutil.copytree(MIG8_HOST, host)
    devices = host / "proc/devices"
    devices.write_text(devices.read_text().replace("510 nvidia-uvm\n", ""))
    with pytest.raises(HostError, match="nvidia-uvm"):
        plan(spec(ids=["3"]), config(host_root=str(host)))


@pytest.mark.parametrize(
    ("env", "ok"),
    [
        pytest.param(["NVIDIA_REQUIRE_CUDA=cuda>=12.0"], True, id="cuda requirement met"),
        pytest.param(["NVIDIA_REQUIRE_CUDA=cuda>=12.5"], False, id="cuda requirement failed"),
        pytest.param(["NVIDIA_REQUIRE_CUDA=cuda>=12.5", "NVIDIA_DISABLE_REQUIRE=true"], True,
                     id="disable require"),
        pytest.param(["NVIDIA_REQUIRE_CUDA=cuda>=13.0 brand=tesla,driver>=470,driver<471"],
                     False, id="no alternative met"),
        pytest.param(["NVIDIA_REQUIRE_CUDA=cuda>=13.0 driver>=550"], True,
                     id="space separated alternatives are ORed"),
        pytest.param(["NVIDIA_REQUIRE_DRIVER=driver>=550,driver<551"], True,
                     id="comma separated constraints are ANDed"),
        pytest.param(["NVIDIA_REQUIRE_DRIVER=driver>=550,driver<550.50"], False,
                     id="one failed constraint fails the alternative"),
        pytest.param(["NVIDIA_REQUIRE_A=cuda>=12.0", "NVIDIA_REQUIRE_B=cuda>=12.9"], False,
                     id="several requirement vars are ANDed"),
        pytest.param(["NVIDIA_REQUIRE_CUDA=arch=8.0,cuda>=13.0"], False,
                     id="a met arch before a failing constraint does not hide it"),
        pytest.param(["NVIDIA_REQUIRE_CUDA=brand=unknown,driver>=999"], False,
                     id="a met brand before a failing driver does not hide it"),
        pytest.param(["NVIDIA_REQUIRE_CUDA=brand=Unknown,driver>=550"], True,
                     id="a met brand with a met driver passes"),
    ],
)
def test_requirements(env: list[str], ok: bool) -> None:
    s = spec(env=env, ids=["3"])
    if ok:
        assert gpu_nodes(plan(s)) == ["/dev/nvidia3"]
    else:
        with pytest.raises(ResolveError, match=r"not met: .*the node has"):
            plan(s)


def test_requirement_message_names_both_versions() -> None:
    with pytest.raises(ResolveError, match=r"cuda>=12.5 but the node has cuda 12.4"):
        plan(spec(env=["NVIDIA_REQUIRE_CUDA=cuda>=12.5"], ids=["3"]))


def test_legacy_image_requires_its_cuda_version() -> None:
    with pytest.raises(ResolveError, match=r"cuda>=12.6 but the node has cuda 12.4"):
        plan(spec(env=["CUDA_VERSION=12.6.0"], privileged=True))


def test_requirements_not_checked_when_nothing_granted() -> None:
    p = plan(spec(env=["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_REQUIRE_CUDA=cuda>=99"]))
    assert p.empty
