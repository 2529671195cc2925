"""The NVIDIA Container Toolkit's request semantics (v1.20 internal/config/image/, its legacy hook,
nvidia-container-cli), row by row as docs/compatibility.md lists them: each table here is one
section of that page. gpuhook matches the toolkit except where the page says why not."""

from __future__ import annotations

from typing import Any

import pytest

from gpuhook.decide.request import (
    clean_path,
    cuda_major_minor,
    device_list_path,
    driver_capabilities,
    is_legacy_image,
    parse_visible_devices,
    requirements,
)
from gpuhook.errors import InputError, PolicyError, ResolveError
from gpuhook.inventory.fake import load_fake
from tests.unit.specs import MIG8, ROOT, config, gpu_nodes, nodes, plan, spec

INV = load_fake(MIG8)
GPU = {g.index: g for g in INV.gpus}
MIG_1_0 = GPU[1].mig_devices[0]  # GI 7, CI 0
ALL_CAPS = ["compat32", "compute", "display", "graphics", "ngx", "utility", "video"]
CONTROL = ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]
ALL_WHOLE_GPUS = [f"/dev/nvidia{i}" for i in range(8)]  # GPUs 0, 1: parents of MIG devices


def mount(destination: str, source: str = "/dev/null") -> dict[str, Any]:
    return {"destination": destination, "source": source, "type": "bind",
            "options": ["rbind", "rprivate", "rw"]}


def env_plan(*env: str, privileged: bool = True, **cfg: Any) -> Any:
    return plan(spec(env=list(env), privileged=privileged), config(**cfg))


# --- volume mounts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "want"),
    [
        pytest.param("/dev/./null", "/dev/null", id="a dot component goes"),
        pytest.param("//dev/null", "/dev/null", id="a doubled leading slash goes"),
        pytest.param("/dev/null/", "/dev/null", id="a trailing slash goes"),
        pytest.param("/dev/x/../null", "/dev/null", id="dotdot folds its parent"),
        pytest.param("/../dev/null", "/dev/null", id="dotdot at the root stays at the root"),
        pytest.param("tmpfs", "tmpfs", id="a relative source stays relative"),
        pytest.param("", ".", id="empty is dot as in Go"),
    ],
)
def test_clean_path_is_go_filepath_clean(path: str, want: str) -> None:
    assert clean_path(path) == want


@pytest.mark.parametrize(
    "source", ["/dev/./null", "//dev/null", "/dev/null/", "/dev//null"],
    ids=["dot component", "doubled leading slash", "trailing slash", "doubled inner slash"],
)
def test_a_dev_null_source_is_matched_after_cleaning(source: str) -> None:
    p = plan(spec(mounts=[mount(f"{ROOT}/2", source)]))
    assert gpu_nodes(p) == ["/dev/nvidia2"]


@pytest.mark.parametrize(
    "destination",
    [f"/{ROOT}/2", f"{ROOT}/2/", f"{ROOT}/2//", "/var/run/./nvidia-container-devices/2",
     "/var//run/nvidia-container-devices/2"],
    ids=["doubled leading slash", "trailing slash", "two trailing slashes",
         "dot component in the root", "doubled slash in the root"],
)
def test_a_destination_is_matched_after_cleaning(destination: str) -> None:
    p = plan(spec(mounts=[mount(destination)]))
    assert p.device_ids == ("2",)
    assert gpu_nodes(p) == ["/dev/nvidia2"]


@pytest.mark.parametrize("destination", [ROOT, ROOT + "/", "/" + ROOT + "//"],
                         ids=["the root", "the root with a slash", "the root uncleaned"])
def test_a_mount_at_the_root_itself_is_skipped_with_a_note(destination: str) -> None:
    p = plan(spec(mounts=[mount(destination)]))
    assert p.empty and p.source == "none"
    assert [(i.source, i.reason) for i in p.ignored] == [
        ("volume-mounts", "the device-list root itself names no device")]


@pytest.mark.parametrize(
    "destination",
    [
        pytest.param(f"{ROOT}/../../etc/passwd", id="dotdot out of the root"),
        pytest.param(f"{ROOT}/2/..", id="trailing dotdot"),
        pytest.param(f"{ROOT}/5/../2", id="dotdot inside the id"),
        pytest.param("/var/run/x/../nvidia-container-devices/2", id="dotdot before the root"),
        pytest.param(f"{ROOT}//2", id="empty component after the root"),
        pytest.param(f"{ROOT}/imex//0", id="empty component inside the id"),
        pytest.param(f"{ROOT}/./2", id="dot component in the id"),
    ],
)
def test_traversal_and_empty_components_in_the_id_are_refused(destination: str) -> None:
    with pytest.raises(InputError, match=r"volume mount"):
        plan(spec(mounts=[mount(destination)]))


def test_a_malformed_mount_is_not_read_when_mounts_are_not_accepted() -> None:
    cfg = config(accept_nvidia_visible_devices_as_volume_mounts=False)
    p = plan(spec(mounts=[mount(f"{ROOT}/../../etc/passwd"), mount(f"{ROOT}/2;rm")]), cfg)
    assert p.empty and p.source == "none"


@pytest.mark.parametrize(
    ("destination", "want"),
    [
        pytest.param("/var/run/nvidia-container-devicesX/3", None,
                     id="a longer name is not under the root"),
        pytest.param("var/run/nvidia-container-devices/3", None, id="a relative path is not"),
        pytest.param("/var/run/nvidia-container-devices/imex/0", "imex/0", id="imex path"),
        pytest.param("/var/run/nvidia-container-devices", "", id="the root itself is empty"),
        pytest.param("/etc/../var/run/nvidia-container-devices/../x", None,
                     id="dotdot that cleans to elsewhere is not a request"),
    ],
)
def test_device_list_path(destination: str, want: str | None) -> None:
    assert device_list_path(destination, ROOT) == want


def test_the_old_mig_uuid_form_is_a_mount_id() -> None:
    old = f"MIG-{GPU[1].uuid}/{MIG_1_0.gi}/{MIG_1_0.ci}"
    p = plan(spec(mounts=[mount(f"{ROOT}/{old}")]))
    assert [d.uuid for d in p.devices] == [MIG_1_0.uuid]


# --- the device plugin's marker -----------------------------------------------------------------

MARKER = f"NVIDIA_VISIBLE_DEVICES={ROOT}"


@pytest.mark.parametrize("privileged", [False, True], ids=["unprivileged", "privileged"])
def test_the_marker_without_mounts_grants_nothing_and_says_why(privileged: bool) -> None:
    p = env_plan(MARKER, privileged=privileged)
    assert p.empty and p.source == "none"
    assert [(i.source, i.value) for i in p.ignored] == [("envvar", ROOT)]
    assert p.ignored[0].reason.startswith("device-plugin marker without mounts")


@pytest.mark.parametrize("value", [ROOT + "/", f" {ROOT} ", "/" + ROOT],
                         ids=["trailing slash", "spaces", "doubled leading slash"])
def test_the_marker_is_recognised_cleaned(value: str) -> None:
    p = env_plan(f"NVIDIA_VISIBLE_DEVICES={value}")
    assert p.empty and "device-plugin marker" in p.ignored[0].reason


def test_the_marker_with_mounts_yields_to_them() -> None:
    p = plan(spec(env=["NVIDIA_VISIBLE_DEVICES=all", MARKER], ids=["2"]))
    assert p.source == "volume-mounts" and gpu_nodes(p) == ["/dev/nvidia2"]
    assert [(i.source, i.value) for i in p.ignored] == [("envvar", ROOT)]
    assert "take precedence" in p.ignored[0].reason


def test_the_marker_is_never_refused_by_the_fail_action() -> None:
    p = env_plan(MARKER, privileged=False, unprivileged_envvar_action="fail")
    assert p.empty


def test_the_marker_with_mounts_not_accepted_says_so() -> None:
    cfg = config(accept_nvidia_visible_devices_as_volume_mounts=False)
    p = plan(spec(env=[MARKER], ids=["2"], privileged=True), cfg)
    assert p.empty
    assert "its volume mounts are not accepted" in p.ignored[-1].reason


# --- an ignored request never refuses the container ---------------------------------------------

BAD_ENV = [
    pytest.param("NVIDIA_VISIBLE_DEVICES=0;reboot", id="shell characters"),
    pytest.param("NVIDIA_VISIBLE_DEVICES=" + "A" * 300, id="an over-long id"),
    pytest.param("NVIDIA_VISIBLE_DEVICES=" + ",".join(map(str, range(5000))), id="5000 ids"),
    pytest.param("NVIDIA_VISIBLE_DEVICES=2/../3", id="a path"),
]


@pytest.mark.parametrize("bad", BAD_ENV)
def test_an_ignored_env_var_never_refuses_because_of_its_content(bad: str) -> None:
    p = env_plan(bad, privileged=False)
    assert p.empty
    assert [i.source for i in p.ignored] == ["envvar"]
    assert "not trusted" in p.ignored[0].reason


@pytest.mark.parametrize("bad", BAD_ENV)
def test_an_env_var_beside_mounts_never_refuses_because_of_its_content(bad: str) -> None:
    p = plan(spec(env=[bad], ids=["2"], privileged=True))
    assert gpu_nodes(p) == ["/dev/nvidia2"]


@pytest.mark.parametrize("bad", BAD_ENV)
def test_an_env_var_acted_on_is_refused_when_malformed(bad: str) -> None:
    with pytest.raises(InputError, match=r"NVIDIA_VISIBLE_DEVICES"):
        env_plan(bad)


def test_the_fail_action_still_refuses_an_unprivileged_env_request() -> None:
    with pytest.raises(PolicyError, match=r"refused"):
        env_plan("NVIDIA_VISIBLE_DEVICES=0;reboot", privileged=False,
                 unprivileged_envvar_action="fail")


# --- NVIDIA_VISIBLE_DEVICES ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind", "ids"),
    [
        pytest.param("0,none", "none", (), id="0 then none is none"),
        pytest.param("none,all", "none", (), id="none then all is none"),
        pytest.param("all,none", "all", ("all",), id="all then none is all"),
        pytest.param("2,all", "all", ("all",), id="an id then all is all"),
        pytest.param("ALL", "all", ("all",), id="ALL selects every device as the cli does"),
        pytest.param("2,All", "all", ("all",), id="an id then All is all"),
        pytest.param("ALL,none", "none", (), id="ALL is not all to the hook so none decides"),
        pytest.param("2,void,all", "void", (), id="void anywhere is void"),
        pytest.param(" , ,", "void", (), id="only empty items is void"),
        pytest.param(" 3 , 2 ,3", "ids", ("3", "2"), id="items trimmed and deduplicated"),
    ],
)
def test_visible_devices_first_of_all_or_none_decides(value: str, kind: str,
                                                      ids: tuple[str, ...]) -> None:
    got = parse_visible_devices({"NVIDIA_VISIBLE_DEVICES": value}, ROOT)
    assert got is not None and (got.kind, got.ids) == (kind, ids)


@pytest.mark.parametrize(
    ("value", "want_gpus", "want_control"),
    [
        pytest.param("0,none", [], True, id="0 then none gives control nodes only"),
        pytest.param("none,all", [], True, id="none then all gives control nodes only"),
        pytest.param("2,ALL", ALL_WHOLE_GPUS, True, id="2 then ALL gives every GPU"),
    ],
)
def test_visible_devices_rows_as_granted(value: str, want_gpus: list[str],
                                         want_control: bool) -> None:
    p = env_plan(f"NVIDIA_VISIBLE_DEVICES={value}")
    assert gpu_nodes(p) == want_gpus
    assert (CONTROL[0] in nodes(p)) is want_control


def test_the_last_of_duplicate_env_entries_counts() -> None:
    """containerd 1.6 writes the image's NVIDIA_VISIBLE_DEVICES and the CRI config's both; the
    toolkit (image.WithEnv, a map) and runc keep the last."""
    p = env_plan("NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_VISIBLE_DEVICES=2")
    assert gpu_nodes(p) == ["/dev/nvidia2"]


# --- device ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device_id", "want_uuid"),
    [
        pytest.param(GPU[2].uuid.lower(), GPU[2].uuid,
                     id="GPU uuid in lower case"),
        pytest.param(GPU[2].uuid.upper(), GPU[2].uuid, id="GPU uuid in upper case"),
        pytest.param(MIG_1_0.uuid.lower(), MIG_1_0.uuid, id="MIG uuid in lower case"),
        pytest.param("0000:47:00.0", GPU[2].uuid, id="PCI bus id as in proc"),
        pytest.param("00000000:47:00.0", GPU[2].uuid, id="PCI bus id as NVML writes it"),
        pytest.param("0:47:0.0", GPU[2].uuid, id="PCI bus id without zero padding"),
        pytest.param("0000:47:00", GPU[2].uuid, id="PCI bus id without function"),
        pytest.param(f"MIG-{GPU[1].uuid}/{MIG_1_0.gi}/{MIG_1_0.ci}", MIG_1_0.uuid,
                     id="old MIG form by parent uuid gi and ci"),
        pytest.param(f"mig-{GPU[1].uuid.lower()}/7/0", MIG_1_0.uuid,
                     id="old MIG form in lower case"),
    ],
)
def test_id_forms_of_the_toolkit(device_id: str, want_uuid: str) -> None:
    p = env_plan(f"NVIDIA_VISIBLE_DEVICES={device_id}")
    assert [d.uuid for d in p.devices] == [want_uuid]


@pytest.mark.parametrize(
    ("device_id", "message"),
    [
        pytest.param("0000:47:00.1", "is not a device id", id="a PCI function other than 0"),
        pytest.param("0000:99:00.0", "not found; available", id="a PCI bus id not on the node"),
        pytest.param(f"MIG-{GPU[1].uuid}/99/0", "not found: MIG devices of GPU 1",
                     id="old MIG form with an unknown gi"),
        pytest.param(f"MIG-{GPU[1].uuid[:-1]}0/7/0", "not found; available",
                     id="old MIG form with an unknown parent"),
    ],
)
def test_unknown_id_forms_fail_naming_what_exists(device_id: str, message: str) -> None:
    with pytest.raises(ResolveError, match=message):
        env_plan(f"NVIDIA_VISIBLE_DEVICES={device_id}")


# --- driver capabilities ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "want"),
    [
        pytest.param([], ["compute", "utility"], id="unset is compute utility"),
        pytest.param(["NVIDIA_DRIVER_CAPABILITIES="], ["compute", "utility"],
                     id="set but empty is the default"),
        pytest.param(["NVIDIA_DRIVER_CAPABILITIES= "], [], id="whitespace only is none"),
        pytest.param(["NVIDIA_DRIVER_CAPABILITIES=video, compute"], ["compute", "video"],
                     id="items trimmed"),
        pytest.param(["NVIDIA_DRIVER_CAPABILITIES=bogus,all"], ALL_CAPS,
                     id="all anywhere is all even beside an unknown name"),
        pytest.param(["CUDA_VERSION=12.4.1"], ALL_CAPS, id="unset in a legacy image is all"),
        pytest.param(["CUDA_VERSION=12.4.1", "NVIDIA_DRIVER_CAPABILITIES="],
                     ["compute", "utility"], id="set but empty in a legacy image is the default"),
    ],
)
def test_driver_capability_rows(env: list[str], want: list[str]) -> None:
    p = plan(spec(env=env, ids=["2"]))
    assert list(p.driver_capabilities) == want


def test_a_legacy_image_gets_all_capabilities_with_mounts_too() -> None:
    """Devices from the device plugin's mounts, capabilities from the image (as the toolkit);
    `display` brings the modeset node."""
    p = plan(spec(env=["CUDA_VERSION=12.4.1", "NVIDIA_VISIBLE_DEVICES=all"], ids=["2"]))
    assert list(p.driver_capabilities) == ALL_CAPS
    assert "/dev/nvidia-modeset" in nodes(p)


@pytest.mark.parametrize("value", ["compute,bogus", "none", "utility,Compute"],
                         ids=["an unknown name", "none is no capability name",
                              "names are case sensitive"])
def test_an_unsupported_capability_refuses_a_granted_request(value: str) -> None:
    with pytest.raises(InputError, match=r"unsupported driver capabilities"):
        plan(spec(env=[f"NVIDIA_DRIVER_CAPABILITIES={value}"], ids=["2"]))


def test_an_unsupported_capability_of_an_ignored_request_is_not_read() -> None:
    p = env_plan("NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=bogus",
                 privileged=False)
    assert p.empty


def test_driver_capabilities_parse_reports_unsupported_names_once() -> None:
    assert driver_capabilities({"NVIDIA_DRIVER_CAPABILITIES": "x,compute,x"}) == (
        ("compute",), ("x",))


# --- legacy images and requirements -------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "legacy"),
    [
        pytest.param({"CUDA_VERSION": "12.4.1"}, True, id="CUDA_VERSION alone"),
        pytest.param({"CUDA_VERSION": "12.4.1", "NVIDIA_REQUIRE_CUDA": ""}, True,
                     id="an empty NVIDIA_REQUIRE_CUDA counts as unset"),
        pytest.param({"CUDA_VERSION": "12.4.1", "NVIDIA_VISIBLE_DEVICES": "2"}, True,
                     id="whatever NVIDIA_VISIBLE_DEVICES says"),
        pytest.param({"CUDA_VERSION": ""}, False, id="an empty CUDA_VERSION is not legacy"),
        pytest.param({"CUDA_VERSION": "12.4.1", "NVIDIA_REQUIRE_CUDA": "cuda>=12.4"}, False,
                     id="NVIDIA_REQUIRE_CUDA set is not legacy"),
    ],
)
def test_legacy_image_rule(env: dict[str, str], legacy: bool) -> None:
    assert is_legacy_image(env) is legacy


@pytest.mark.parametrize(
    ("env", "want_gpus"),
    [
        pytest.param(["CUDA_VERSION=12.4.1"], ALL_WHOLE_GPUS, id="unset means all"),
        pytest.param(["CUDA_VERSION=12.4.1", "NVIDIA_VISIBLE_DEVICES="], [],
                     id="set but empty is void"),
        pytest.param(["CUDA_VERSION="], [], id="empty CUDA_VERSION asks nothing"),
    ],
)
def test_legacy_image_devices_for_a_privileged_container(env: list[str],
                                                         want_gpus: list[str]) -> None:
    assert gpu_nodes(env_plan(*env)) == want_gpus


@pytest.mark.parametrize(
    ("version", "want"),
    [
        pytest.param("12", "12.0", id="major only"),
        pytest.param("12.4", "12.4", id="major minor"),
        pytest.param("12.4.1", "12.4", id="full"),
        pytest.param("v12.4.1", "12.4", id="a leading v"),
        pytest.param("12.4.1-rc1", "12.4", id="a pre-release on a full version"),
        pytest.param("12.4.1+build.7", "12.4", id="build metadata"),
        pytest.param("12.4-rc1", None, id="a pre-release needs three numbers"),
        pytest.param("012.4", None, id="a leading zero"),
        pytest.param("12.4.1.2", None, id="four numbers"),
        pytest.param("vv12.4", None, id="two vs"),
        pytest.param("12.4.1-01", None, id="a numeric pre-release with a leading zero"),
        pytest.param("4294967296.0", None, id="a major over 32 bits"),
        pytest.param("twelve", None, id="words"),
        pytest.param("12.4\n", None, id="a trailing newline"),
    ],
)
def test_cuda_version_is_read_as_go_semver(version: str, want: str | None) -> None:
    assert cuda_major_minor(version) == want


def test_a_legacy_requirement_holds_for_devices_from_mounts() -> None:
    with pytest.raises(ResolveError, match=r"cuda>=12.6 but the node has cuda 12.4"):
        plan(spec(env=["CUDA_VERSION=12.6.0"], ids=["2"]))


def test_an_unparsable_legacy_cuda_version_refuses_a_granted_request() -> None:
    with pytest.raises(InputError, match=r"CUDA_VERSION='12.4-rc1' .* is not a version"):
        plan(spec(env=["CUDA_VERSION=12.4-rc1"], ids=["2"]))


def test_an_unparsable_legacy_cuda_version_of_an_ignored_request_is_not_read() -> None:
    assert env_plan("CUDA_VERSION=12.4-rc1", privileged=False).empty


REQUIRE_FAILING = {"NVIDIA_REQUIRE_CUDA": "cuda>=99"}


@pytest.mark.parametrize(
    ("value", "disabled"),
    [*(pytest.param(v, True, id=f"{v!r} disables") for v in
       ("1", "t", "T", "TRUE", "true", "True")),
     *(pytest.param(v, False, id=f"{v!r} does not disable") for v in
       ("yes", "on", " true", "tRUE", "0", "false", ""))],
)
def test_disable_require_is_go_parse_bool(value: str, disabled: bool) -> None:
    reqs, _ = requirements({**REQUIRE_FAILING, "NVIDIA_DISABLE_REQUIRE": value}, legacy=False)
    assert (reqs == ()) is disabled


def test_jetpack_is_not_a_requirement() -> None:
    reqs, _ = requirements({"NVIDIA_REQUIRE_JETPACK": "csv-mounts=all",
                            "NVIDIA_REQUIRE_JETPACK_HOST_MOUNTS": "x",
                            "NVIDIA_REQUIRE_DRIVER": "driver>=550"}, legacy=False)
    assert reqs == (("NVIDIA_REQUIRE_DRIVER", "driver>=550"),)


def test_an_empty_requirement_is_no_requirement() -> None:
    reqs, error = requirements({"NVIDIA_REQUIRE_CUDA": "", "NVIDIA_REQUIRE_X": " "},
                               legacy=False)
    assert (reqs, error) == ((), None)


@pytest.mark.parametrize(
    ("requirement", "ok"),
    [
        pytest.param("cuda>=99", False, id="cuda still checked with none"),
        pytest.param("driver>=999", False, id="driver still checked with none"),
        pytest.param("arch>=9.0", True, id="arch holds with no GPU to judge"),
        pytest.param("brand=geforce,cuda>=12.0", True, id="brand holds with no GPU to judge"),
    ],
)
def test_requirements_with_none(requirement: str, ok: bool) -> None:
    env = ("NVIDIA_VISIBLE_DEVICES=none", f"NVIDIA_REQUIRE_X={requirement}")
    if not ok:
        with pytest.raises(ResolveError, match=r"not met"):
            env_plan(*env)
        return
    p = env_plan(*env)
    assert nodes(p) == CONTROL and gpu_nodes(p) == []
    assert not [n for n in p.notes if "not evaluated" in n]


def test_arch_with_a_gpu_is_judged_on_that_gpu() -> None:
    # GPU 2 of the fake inventory is an A100: compute capability 8.0.
    with pytest.raises(ResolveError, match=r"arch>=9.0 but GPU 2 \(GPU-[0-9a-f-]+\) has arch 8.0"):
        plan(spec(env=["NVIDIA_REQUIRE_X=arch>=9.0"], ids=["2"]))
    p = plan(spec(env=["NVIDIA_REQUIRE_X=arch>=8.0"], ids=["2"]))
    assert not [n for n in p.notes if "not evaluated" in n]
