"""Plan -> edited spec (spec_edit): what runc is told to create and allow, idempotence, and
that nothing gpuhook does not know about is lost."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from gpuhook import record
from gpuhook.decide.plan import DriverFile, Plan, Symlink
from gpuhook.enforce.libdir import LibDir
from gpuhook.errors import InputError
from gpuhook.runtime import spec_edit
from tests.unit import specs

MIG_UUID = "MIG-205e24ca-2066-514f-80c3-cb66869f6a1b"


def gpu_spec(**kw: Any) -> dict[str, Any]:
    s = specs.spec(ids=kw.pop("ids", ("3",)), **kw)
    s["linux"] = {"resources": {"devices": [{"allow": False, "access": "rwm"}]},
                  "namespaces": [{"type": "mount"}]}
    return s


def test_devices_and_allow_rules_are_the_plans() -> None:
    s = gpu_spec(ids=("3", MIG_UUID))
    plan = specs.plan(s)
    out = spec_edit.apply_plan(s, plan)
    assert out["linux"]["devices"] == [
        {"path": n.path, "type": "c", "major": n.major, "minor": n.minor,
         "fileMode": n.file_mode, "uid": 0, "gid": 0} for n in plan.device_nodes]
    assert out["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}] + [
        {"allow": True, "type": "c", "major": r.major, "minor": r.minor, "access": r.access}
        for r in plan.cgroup_rules]
    assert {r["access"] for r in out["linux"]["resources"]["devices"][1:]} <= {"rwm", "r"}


def test_mig_plan_sets_cuda_device_order_in_process_env() -> None:
    s = gpu_spec(ids=(MIG_UUID,), env=("CUDA_DEVICE_ORDER=FASTEST_FIRST", "A=1",
                                       "CUDA_DEVICE_ORDER=again"))
    out = spec_edit.apply_plan(s, specs.plan(s))
    assert out["process"]["env"] == ["PATH=/bin", "CUDA_DEVICE_ORDER=PCI_BUS_ID", "A=1"]


def test_applying_twice_equals_applying_once() -> None:
    s = gpu_spec(ids=("3", MIG_UUID))
    plan = specs.plan(s)
    once = spec_edit.apply_plan(s, plan)
    assert spec_edit.apply_plan(once, plan) == once


def test_the_input_spec_is_not_modified() -> None:
    s = gpu_spec()
    before = copy.deepcopy(s)
    spec_edit.apply_plan(s, specs.plan(s))
    assert s == before


def test_unknown_fields_survive_everywhere() -> None:
    s = gpu_spec()
    s["x-vendor"] = {"nested": [1, 2.5, None, True]}
    s["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []}
    s["linux"]["resources"]["memory"] = {"limit": 1 << 40}
    s["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    s["annotations"] = {"io.kubernetes.cri.container-name": "cuda"}
    out = spec_edit.apply_plan(s, specs.plan(s))
    for key in ("x-vendor", "annotations"):
        assert out[key] == s[key]
    assert out["linux"]["seccomp"] == s["linux"]["seccomp"]
    assert out["linux"]["resources"]["memory"] == {"limit": 1 << 40}
    assert out["process"]["rlimits"] == s["process"]["rlimits"]


def test_our_rules_move_after_a_later_deny() -> None:
    # An allow written earlier would be undone by a later deny: ours always go last.
    s = gpu_spec()
    s["linux"]["resources"]["devices"] = [
        {"allow": True, "type": "c", "major": 195, "minor": 255, "access": "rwm"},
        {"allow": False, "type": "c", "major": 195, "access": "rwm"},
    ]
    out = spec_edit.apply_plan(s, specs.plan(s))
    rules = out["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "type": "c", "major": 195, "access": "rwm"}
    assert rules.count({"allow": True, "type": "c", "major": 195, "minor": 255,
                        "access": "rwm"}) == 1


def test_a_device_already_at_a_planned_path_is_replaced_in_place() -> None:
    s = gpu_spec()
    s["linux"]["devices"] = [
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229},
        {"path": "/dev/nvidia3", "type": "c", "major": 1, "minor": 3, "fileMode": 0o600,
         "x-extra": "kept"},
    ]
    out = spec_edit.apply_plan(s, specs.plan(s))
    devices = out["linux"]["devices"]
    assert devices[0] == {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}
    assert devices[1] == {"path": "/dev/nvidia3", "type": "c", "major": 195, "minor": 3,
                          "fileMode": 0o666, "uid": 0, "gid": 0, "x-extra": "kept"}
    assert [d["path"] for d in devices].count("/dev/nvidia3") == 1


def test_an_empty_plan_changes_nothing_at_all() -> None:
    s = specs.spec(env=("NVIDIA_VISIBLE_DEVICES=all",))  # unprivileged: env var ignored
    plan = specs.plan(s)
    assert plan.empty
    assert spec_edit.apply_plan(s, plan) == s


@pytest.mark.parametrize("mutate, field", [
    (lambda s: s["linux"].__setitem__("devices", {"a": 1}), "linux.devices"),
    (lambda s: s.__setitem__("linux", []), "linux"),
    (lambda s: s["linux"].__setitem__("resources", "x"), "linux.resources"),
    (lambda s: s["linux"]["resources"].__setitem__("devices", 5), "linux.resources.devices"),
], ids=["devices not a list", "linux not an object", "resources not an object",
        "cgroup device rules not a list"])
def test_a_field_of_the_wrong_shape_is_an_input_error(mutate: Any, field: str) -> None:
    s = gpu_spec()
    plan = specs.plan(s)
    mutate(s)
    with pytest.raises(InputError, match=field):
        spec_edit.apply_plan(s, plan)


def test_hook_mode_adds_one_prestart_hook_after_existing_ones() -> None:
    s = gpu_spec()
    s["hooks"] = {"prestart": [{"path": "/usr/bin/other"}],
                  "poststop": [{"path": "/bin/true"}]}
    plan = specs.plan(s)
    out = spec_edit.apply_hook(s, plan, "/usr/bin/gpuhook")
    assert out["hooks"]["prestart"] == [
        {"path": "/usr/bin/other"},
        {"path": "/usr/bin/gpuhook", "args": ["gpuhook", "hook", "prestart"],
         "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}]
    assert out["hooks"]["poststop"] == [{"path": "/bin/true"}]
    assert "devices" not in out["linux"]
    assert spec_edit.apply_hook(out, plan, "/usr/bin/gpuhook") == out


def test_hook_mode_counts_a_hook_with_extra_args_as_present() -> None:
    s = gpu_spec()
    args = ("gpuhook", "hook", "prestart", "--config", "/etc/x.toml")
    once = spec_edit.apply_hook(s, specs.plan(s), "/usr/bin/gpuhook", args)
    assert once["hooks"]["prestart"][0]["args"] == list(args)
    twice = spec_edit.apply_hook(once, specs.plan(s), "/usr/bin/gpuhook")
    assert len(twice["hooks"]["prestart"]) == 1


def test_hook_mode_still_sets_env_only_a_runtime_can_set() -> None:
    s = gpu_spec(ids=(MIG_UUID,))
    out = spec_edit.apply_hook(s, specs.plan(s), "/usr/bin/gpuhook")
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in out["process"]["env"]


@pytest.mark.parametrize("env, expected", [
    ([], ["K=v"]),
    (["A=1"], ["A=1", "K=v"]),
    (["K=old", "A=1"], ["K=v", "A=1"]),
    (["A=1", "K=old", "K=older", "B=2"], ["A=1", "K=v", "B=2"]),
    (["KEY=1"], ["KEY=1", "K=v"]),
], ids=["empty env gets it", "appended after others", "replaced in place",
        "later duplicates dropped", "a longer name with the same prefix is not it"])
def test_set_env(env: list[str], expected: list[str]) -> None:
    spec_edit.set_env(env, "K", "v")
    assert env == expected


def test_edited_spec_is_plain_json() -> None:
    s = gpu_spec(ids=("3", MIG_UUID))
    out = spec_edit.apply_plan(s, specs.plan(s))
    assert json.loads(json.dumps(out)) == out


# ---- driver files (spec mode) ---------------------------------------------------------------

def _driver_plan() -> Plan:
    base = specs.plan(specs.spec(ids=["3"]))
    return record.replace(
        base, driver_files=(DriverFile("library", "/h/libcuda.so.9.9", "libcuda.so.9.9"),
                            DriverFile("socket", "/h/run/s", "/run/s")),
        symlinks=(Symlink("library", "libcuda.so.1", "libcuda.so.9.9"),), update_ldcache=True)


def _edit() -> spec_edit.DriverEdit:
    return spec_edit.DriverEdit(LibDir("/usr/lib64", "/usr/lib"), "/usr/bin/gpuhook",
                                ("gpuhook", "hook", "create-container", "--driver", "{}"))


def test_driver_files_become_bind_mounts_and_one_create_container_hook_after_the_engines(
        ) -> None:
    s = specs.spec(ids=["3"])
    engine_hook = {"path": "/usr/bin/other", "args": ["other"]}
    s["hooks"] = {"createContainer": [engine_hook]}
    out = spec_edit.apply_plan(s, _driver_plan(), _edit())
    assert out["mounts"][-2:] == [
        {"destination": "/usr/lib64/libcuda.so.9.9", "type": "bind", "source": "/h/libcuda.so.9.9",
         "options": ["bind", "ro", "nosuid", "nodev"]},
        {"destination": "/run/s", "type": "bind", "source": "/h/run/s",
         "options": ["rbind", "nosuid", "nodev", "noexec"]}]
    assert out["hooks"]["createContainer"] == [
        engine_hook, {"path": "/usr/bin/gpuhook", "args": list(_edit().hook_args),
                      "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}]
    assert spec_edit.apply_plan(out, _driver_plan(), _edit()) == out


def test_a_plan_with_driver_files_needs_the_driver_edit() -> None:
    with pytest.raises(ValueError, match="DriverEdit"):
        spec_edit.apply_plan(specs.spec(ids=["3"]), _driver_plan())
