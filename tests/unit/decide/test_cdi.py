"""CDI spec generation from gpuhook's own Plans: device names, edits, cdiVersion (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from gpuhook.decide.cdi import (
    CdiVersionError,
    build_spec,
    capability_names,
    choose_version,
    gpu_device_plans,
    required_version,
)
from gpuhook.decide.cdi_names import GPU_KIND
from gpuhook.decide.facts import HostInfo
from gpuhook.host.proc import HostPaths, read_capabilities, read_majors, read_mig_minors
from gpuhook.inventory.fake import load_fake
from gpuhook.inventory.model import Inventory
from tests.unit.specs import MIG8, MIG8_HOST, ONE, ONE_HOST, config, plan, spec


def _gpu_spec(inventory: str, host_root: str, version: str | None = None,
              **cfg: Any) -> dict[str, Any]:
    inv: Inventory = load_fake(inventory)
    host = HostPaths(host_root)
    names = capability_names(inv)
    caps = read_capabilities(host, names, read_mig_minors(host)) if names else {}
    plans, common = gpu_device_plans(inv, HostInfo(read_majors(host), caps),
                                     config(inventory, host_root, **cfg), ("compute", "utility"))
    return build_spec(GPU_KIND, plans, common, version)


MIG_SPEC = _gpu_spec(MIG8, MIG8_HOST)
ONE_SPEC = _gpu_spec(ONE, ONE_HOST)


def _device(s: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for d in s["devices"] if d["name"] == name)


def _paths(dev: dict[str, Any]) -> list[str]:
    return [n["path"] for n in dev["containerEdits"].get("deviceNodes", [])]


def test_every_gpu_and_mig_device_is_named_by_index_and_uuid_plus_all() -> None:
    inv = load_fake(MIG8)
    want = {"all"}
    for g in inv.gpus:
        if not g.mig_enabled:
            want |= {str(g.index), g.uuid}
        want |= {n for m in g.mig_devices for n in (f"{g.index}:{m.index}", m.uuid)}
    names = [d["name"] for d in MIG_SPEC["devices"]]
    assert sorted(names) == sorted(want)
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("name", "ids"),
    [
        pytest.param("2", ["2"], id="an index name has the nodes the plan grants for that id"),
        pytest.param("GPU-89442077-c0ba-5761-a2d3-9180a419ec66", ["2"],
                     id="a UUID name has the same nodes as its index name"),
        pytest.param("1:0", ["1:0"], id="a MIG name has its parent's node and its own caps"),
        pytest.param("all", ["all"], id="all has every node all grants"),
    ],
)
def test_device_edits_are_the_plans_nodes_minus_the_common_ones(name: str,
                                                                  ids: list[str]) -> None:
    p = plan(spec(ids=ids))
    control = {"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"}
    want = [n.path for n in p.device_nodes if n.path not in control]
    assert _paths(_device(MIG_SPEC, name)) == want


def test_a_mig_device_gets_only_its_own_capabilities() -> None:
    assert _paths(_device(MIG_SPEC, "1:0")) == [
        "/dev/nvidia1", "/dev/nvidia-caps/nvidia-cap201", "/dev/nvidia-caps/nvidia-cap202"]
    node = _device(MIG_SPEC, "1:0")["containerEdits"]["deviceNodes"][1]
    assert (node["type"], node["major"], node["minor"], node["permissions"]) == \
        ("c", 511, 201, "r")


def test_common_edits_hold_the_control_nodes_and_void() -> None:
    common = ONE_SPEC["containerEdits"]
    assert common["env"] == ["NVIDIA_VISIBLE_DEVICES=void"]
    assert [(n["path"], n["major"], n["minor"]) for n in common["deviceNodes"]] == [
        ("/dev/nvidiactl", 195, 255), ("/dev/nvidia-uvm", 510, 0),
        ("/dev/nvidia-uvm-tools", 510, 1)]


def test_a_whole_gpu_in_mig_mode_is_a_device_only_when_allowed() -> None:
    allowed = _gpu_spec(MIG8, MIG8_HOST, allow_full_gpu_on_mig_enabled=True)
    assert "0" not in [d["name"] for d in MIG_SPEC["devices"]]
    assert "0" in [d["name"] for d in allowed["devices"]]


@pytest.mark.parametrize(
    ("s", "want"),
    [
        pytest.param({"kind": "a.com/b", "devices": [{"name": "gpu0"}]}, "0.3.0",
                     id="letters-only names need nothing newer than 0.3.0"),
        pytest.param({"kind": "a.com/b", "devices": [{"name": "0"}]}, "0.5.0",
                     id="a name starting with a digit needs 0.5.0"),
        pytest.param({"kind": "a.com/b", "devices": [], "containerEdits": {
            "mounts": [{"hostPath": "/a", "containerPath": "/a", "type": "bind"}]}}, "0.4.0",
                     id="a mount type needs 0.4.0"),
        pytest.param({"kind": "a.com/b", "devices": [{"name": "x", "containerEdits": {
            "deviceNodes": [{"path": "/dev/x", "hostPath": "/dev/y"}]}}]}, "0.5.0",
                     id="a device node hostPath needs 0.5.0"),
        pytest.param({"kind": "a.com/b", "devices": [], "annotations": {"k": "v"}}, "0.6.0",
                     id="spec annotations need 0.6.0"),
        pytest.param({"kind": "a.com/b.c", "devices": []}, "0.6.0",
                     id="a dot in the class needs 0.6.0"),
        pytest.param({"kind": "a.com/b", "devices": [], "containerEdits": {
            "additionalGids": [44]}}, "0.7.0", id="additionalGids need 0.7.0"),
    ],
)
def test_required_version_follows_the_cdi_package(s: dict[str, Any], want: str) -> None:
    assert required_version(s) == want


def test_generated_specs_stay_at_0_5_0_which_podman_4_reads() -> None:
    assert MIG_SPEC["cdiVersion"] == "0.5.0" == ONE_SPEC["cdiVersion"]


@pytest.mark.parametrize(
    ("asked", "want"),
    [
        pytest.param(None, "0.5.0", id="by default the lowest the fields need"),
        pytest.param("0.6.0", "0.6.0", id="a newer version is written when asked"),
        pytest.param("0.4.0", "too old", id="a version the fields outgrow is refused"),
        pytest.param("0.9.0", "not a CDI version", id="an unknown version is refused"),
    ],
)
def test_cdi_version_option(asked: str | None, want: str) -> None:
    s = {"kind": GPU_KIND, "devices": [{"name": "0"}]}
    if want[0].isdigit():
        assert choose_version(s, asked) == want
    else:
        with pytest.raises(CdiVersionError, match=want):
            choose_version(s, asked)


def test_no_device_shares_an_edits_object_with_another() -> None:
    """A YAML dump writes anchors for shared objects; CDI readers need plain documents."""
    ids = [id(d["containerEdits"]) for d in MIG_SPEC["devices"]]
    assert len(ids) == len(set(ids))
