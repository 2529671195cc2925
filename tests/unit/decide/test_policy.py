"""Privilege x source x config: which ids are accepted, what is ignored and why."""

from __future__ import annotations

from typing import Any

import pytest

from gpuhook.errors import InputError, PolicyError
from tests.unit.specs import config, gpu_nodes, plan, spec

CTL = ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]


@pytest.mark.parametrize(
    ("privileged", "env", "ids", "cfg", "source", "want_gpus"),
    [
        pytest.param(False, ["NVIDIA_VISIBLE_DEVICES=all"], [], {}, "none", [],
                     id="unprivileged envvar all grants nothing"),
        pytest.param(False, ["NVIDIA_VISIBLE_DEVICES=2,3"], [], {}, "none", [],
                     id="unprivileged envvar list grants nothing"),
        pytest.param(True, ["NVIDIA_VISIBLE_DEVICES=2,3"], [], {}, "envvar",
                     ["/dev/nvidia2", "/dev/nvidia3"], id="privileged envvar list is honoured"),
        pytest.param(False, ["NVIDIA_VISIBLE_DEVICES=2"], [],
                     {"accept_nvidia_visible_devices_envvar_when_unprivileged": True},
                     "envvar", ["/dev/nvidia2"],
                     id="unprivileged envvar honoured when config says so"),
        pytest.param(False, ["NVIDIA_VISIBLE_DEVICES=all"], ["4"], {}, "volume-mounts",
                     ["/dev/nvidia4"], id="unprivileged mounts win over envvar all"),
        pytest.param(True, ["NVIDIA_VISIBLE_DEVICES=all"], ["4"], {}, "volume-mounts",
                     ["/dev/nvidia4"], id="privileged mounts also win over envvar"),
        pytest.param(False, [], ["4", "5"], {}, "volume-mounts",
                     ["/dev/nvidia4", "/dev/nvidia5"], id="mounts without envvar"),
        pytest.param(False, [], ["4"],
                     {"accept_nvidia_visible_devices_as_volume_mounts": False}, "none", [],
                     id="mounts ignored when config turns them off"),
        pytest.param(True, ["NVIDIA_VISIBLE_DEVICES=2"], ["4"],
                     {"accept_nvidia_visible_devices_as_volume_mounts": False}, "envvar",
                     ["/dev/nvidia2"], id="mounts off falls back to envvar when privileged"),
        pytest.param(False, [], [], {}, "none", [], id="nothing asked nothing granted"),
    ],
)
def test_source_selection(privileged: bool, env: list[str], ids: list[str], cfg: dict[str, Any],
                          source: str, want_gpus: list[str]) -> None:
    p = plan(spec(env=env, ids=ids, privileged=privileged), config(**cfg))
    assert p.source == source
    assert gpu_nodes(p) == want_gpus


def test_unprivileged_envvar_ignored_records_reason() -> None:
    p = plan(spec(env=["NVIDIA_VISIBLE_DEVICES=all"]))
    assert p.empty
    assert [(i.source, i.value) for i in p.ignored] == [("envvar", "all")]
    assert "not trusted" in p.ignored[0].reason


def test_unprivileged_envvar_fail_action_refuses_container() -> None:
    with pytest.raises(PolicyError, match=r"NVIDIA_VISIBLE_DEVICES=0,1 refused"):
        plan(spec(env=["NVIDIA_VISIBLE_DEVICES=0,1"]),
             config(unprivileged_envvar_action="fail"))


def test_fail_action_does_not_refuse_void() -> None:
    p = plan(spec(env=["NVIDIA_VISIBLE_DEVICES=void"]), config(unprivileged_envvar_action="fail"))
    assert p.empty and not p.ignored


def test_fail_action_does_not_apply_when_mounts_present() -> None:
    p = plan(spec(env=["NVIDIA_VISIBLE_DEVICES=all"], ids=["3"]),
             config(unprivileged_envvar_action="fail"))
    assert gpu_nodes(p) == ["/dev/nvidia3"]


@pytest.mark.parametrize(
    ("env", "want_gpus", "want_control"),
    [
        pytest.param(["NVIDIA_VISIBLE_DEVICES="], [], False, id="empty grants nothing"),
        pytest.param(["NVIDIA_VISIBLE_DEVICES=void"], [], False, id="void grants nothing"),
        pytest.param(["NVIDIA_VISIBLE_DEVICES=2,void"], [], False, id="void anywhere wins"),
        pytest.param(["NVIDIA_VISIBLE_DEVICES=none"], [], True, id="none gives control nodes only"),
        pytest.param([], [], False, id="unset grants nothing"),
        pytest.param(["CUDA_VERSION=12.4.1"],
                     [f"/dev/nvidia{i}" for i in range(8)], True,
                     id="legacy CUDA image means all"),
        pytest.param(["CUDA_VERSION=12.4.1", "NVIDIA_REQUIRE_CUDA=cuda>=12.0"], [], False,
                     id="CUDA image with requirement and no list means nothing"),
        pytest.param(["NVIDIA_VISIBLE_DEVICES= 2 , 3,2 ,,3"], ["/dev/nvidia2", "/dev/nvidia3"],
                     True, id="whitespace trimmed and duplicates removed"),
        pytest.param(["NVIDIA_VISIBLE_DEVICES=2", "NVIDIA_VISIBLE_DEVICES=3"], ["/dev/nvidia3"],
                     True, id="the last definition of a key wins"),
    ],
)
def test_privileged_envvar_forms(env: list[str], want_gpus: list[str],
                                 want_control: bool) -> None:
    p = plan(spec(env=env, privileged=True))
    assert gpu_nodes(p) == want_gpus
    assert ("/dev/nvidiactl" in [n.path for n in p.device_nodes]) == want_control


def test_envvar_duplicates_keep_first_order_in_device_ids() -> None:
    p = plan(spec(env=["NVIDIA_VISIBLE_DEVICES=3,2,3"], privileged=True))
    assert p.device_ids == ("3", "2")


def test_mount_ids_deduplicated_in_order() -> None:
    p = plan(spec(ids=["5", "4", "5"]))
    assert p.device_ids == ("5", "4")


@pytest.mark.parametrize(
    "destination",
    [
        pytest.param("/var/run/nvidia-container-devices/../../etc/passwd", id="dotdot traversal"),
        pytest.param("/var/run/nvidia-container-devices/2/..", id="trailing dotdot"),
        pytest.param("/var/run/nvidia-container-devices//2", id="empty component"),
        pytest.param("/var/run/nvidia-container-devices/./2", id="dot component"),
        pytest.param("/var/run/nvidia-container-devices/a/b",
                     id="nested path that is not imex or cdi"),
        pytest.param("/var/run/nvidia-container-devices/2;rm", id="shell metacharacters"),
    ],
)
def test_bad_mount_destinations_are_refused_not_trimmed(destination: str) -> None:
    bad = {"destination": destination, "source": "/dev/null", "type": "bind"}
    with pytest.raises(InputError):
        plan(spec(mounts=[bad]))


def test_mount_with_other_source_is_ignored() -> None:
    m = {"destination": "/var/run/nvidia-container-devices/3", "source": "/tmp/x"}
    p = plan(spec(mounts=[m]))
    assert p.empty
    assert "not /dev/null" in p.ignored[0].reason


def test_volume_mount_root_is_configurable() -> None:
    m = {"destination": "/gpus/3", "source": "/dev/null"}
    p = plan(spec(mounts=[m]), config(volume_mount_root="/gpus"))
    assert gpu_nodes(p) == ["/dev/nvidia3"]


def test_mount_elsewhere_is_not_a_request() -> None:
    m = {"destination": "/var/run/nvidia-container-devicesX/3", "source": "/dev/null"}
    assert plan(spec(mounts=[m])).source == "none"


@pytest.mark.parametrize(
    ("caps", "privileged"),
    [
        pytest.param({"bounding": ["CAP_SYS_ADMIN"]}, True, id="SYS_ADMIN in bounding"),
        pytest.param({"effective": ["CAP_SYS_ADMIN"], "bounding": []}, False,
                     id="SYS_ADMIN only in effective does not count"),
        pytest.param(["CAP_SYS_ADMIN", "CAP_KILL"], True, id="rc-era flat capability list"),
        pytest.param(None, False, id="no capabilities at all"),
    ],
)
def test_privilege_is_sys_admin_in_bounding(caps: object, privileged: bool) -> None:
    s = spec(env=["NVIDIA_VISIBLE_DEVICES=2"])
    if caps is None:
        del s["process"]["capabilities"]
    else:
        s["process"]["capabilities"] = caps
    p = plan(s)
    assert p.privileged is privileged
    assert (gpu_nodes(p) == ["/dev/nvidia2"]) is privileged


@pytest.mark.parametrize(
    ("value", "want"),
    [
        pytest.param(None, ["compute", "utility"], id="default compute utility"),
        pytest.param("", ["compute", "utility"], id="empty means default"),
        pytest.param("all", ["compat32", "compute", "display", "graphics", "ngx", "utility",
                             "video"], id="all"),
    ],
)
def test_driver_capabilities(value: str | None, want: list[str]) -> None:
    env = ["NVIDIA_VISIBLE_DEVICES=2"] + ([] if value is None else
                                          [f"NVIDIA_DRIVER_CAPABILITIES={value}"])
    p = plan(spec(env=env, privileged=True))
    assert list(p.driver_capabilities) == want


def test_legacy_image_gets_all_driver_capabilities() -> None:
    p = plan(spec(env=["CUDA_VERSION=12.0"], privileged=True))
    assert "display" in p.driver_capabilities and "graphics" in p.driver_capabilities


def test_display_capability_adds_modeset_node() -> None:
    p = plan(spec(env=["NVIDIA_VISIBLE_DEVICES=2", "NVIDIA_DRIVER_CAPABILITIES=display"],
                  privileged=True))
    modeset = [n for n in p.device_nodes if n.path == "/dev/nvidia-modeset"]
    assert [(n.major, n.minor) for n in modeset] == [(195, 254)]


def test_no_modeset_without_display() -> None:
    p = plan(spec(env=["NVIDIA_VISIBLE_DEVICES=2"], privileged=True))
    assert "/dev/nvidia-modeset" not in [n.path for n in p.device_nodes]


def test_no_driver_capabilities_when_nothing_granted() -> None:
    p = plan(spec(env=["NVIDIA_VISIBLE_DEVICES=all"]))
    assert p.driver_capabilities == ()


def _userns(s: dict[str, Any]) -> dict[str, Any]:
    s["linux"] = {"namespaces": [{"type": "user"}, {"type": "mount"}]}
    return s


def _no_caps(s: dict[str, Any]) -> dict[str, Any]:
    del s["process"]["capabilities"]
    return s


@pytest.mark.parametrize(("privileged", "shape", "why", "not_said"), [
    pytest.param(False, lambda s: s, "CAP_SYS_ADMIN is not in process.capabilities.bounding",
                 "own user namespace", id="no CAP_SYS_ADMIN is said as such"),
    pytest.param(True, _userns, "has its own user namespace", "no CAP_SYS_ADMIN",
                 id="CAP_SYS_ADMIN in its own user namespace is said as such, not as no cap"),
    pytest.param(False, _no_caps, "the spec grants no capabilities", "no CAP_SYS_ADMIN",
                 id="a spec without capabilities is said as such"),
])
@pytest.mark.parametrize("env", ["NVIDIA_VISIBLE_DEVICES=2", "NVIDIA_IMEX_CHANNELS=0"],
                         ids=["for the GPU env var", "for the IMEX env var"])
def test_an_ignored_env_var_gives_the_true_reason_the_container_is_unprivileged(
        privileged: bool, shape: Any, why: str, not_said: str, env: str) -> None:
    p = plan(shape(spec(env=[env], privileged=privileged)))
    assert not p.privileged and why in p.privileged_reason
    [reason] = [i.reason for i in p.ignored if i.source == "envvar"]
    assert f"unprivileged container ({p.privileged_reason}): the env var is not trusted" \
        in reason
    assert why in reason and not_said not in reason, reason
