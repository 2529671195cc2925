"""CDI device names, IMEX channels and gated families as a container asks for them, served by
gpuhook's own pipeline (tables against the shipped fake 8x A100 node; GPUs 0 and 1 are in MIG
mode)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gpuhook.decide.cdi_names import parse_qualified_name
from gpuhook.decide.cdi_request import ALL_CHANNELS, cdi_requests
from gpuhook.decide.extras import ExtraFacts, HostNode, extend_plan, extras_wanted
from gpuhook.decide.plan import DriverFile, Plan
from gpuhook.decide.spec import parse_spec
from gpuhook.errors import HostError, InputError
from gpuhook.runtime.pipeline import gpu_plan
from tests.conftest import REPO
from tests.unit.specs import ROOT, config, gpu_nodes, plan, spec

UUID2 = "GPU-89442077-c0ba-5761-a2d3-9180a419ec66"
# The device plugin's cdi-annotations key: "cdi.k8s.io/" + "nvidia-device-plugin" + "_" + a
# uuid4 per Allocate (k8s-device-plugin v0.20 internal/plugin/server.go getCDIDeviceAnnotations,
# container-device-interface v1.1.0 pkg/cdi/annotations.go AnnotationKey).
DP_KEY = "cdi.k8s.io/nvidia-device-plugin_7d1b5b1e-0c9e-4a5a-9b8e-0f2f6b1f6a55"


def mount(rel: str) -> dict[str, Any]:
    return {"destination": f"{ROOT}/{rel}", "type": "bind", "source": "/dev/null",
            "options": ["rbind", "ro"]}


def with_annotations(s: dict[str, Any], annotations: dict[str, str]) -> dict[str, Any]:
    return {**s, "annotations": annotations}


@pytest.mark.parametrize(
    ("text", "want"),
    [
        pytest.param("nvidia.com/gpu=0", ("nvidia.com", "gpu", "0"), id="an index name parses"),
        pytest.param("nvidia.com/gpu=1:0", ("nvidia.com", "gpu", "1:0"),
                     id="a MIG index name with a colon parses"),
        pytest.param("nvidia.com/gpu=all", ("nvidia.com", "gpu", "all"), id="all parses"),
        pytest.param("vendor.com/class=x", ("vendor.com", "class", "x"),
                     id="another vendor's name parses"),
        pytest.param("nvidia.com/gpu", None, id="a kind without a device is not a name"),
        pytest.param("gpu=0", None, id="a name without a vendor is not qualified"),
        pytest.param("nvidia.com/gpu=0/../x", None, id="a slash in the device name is refused"),
        pytest.param("nvidia.com/gpu=-0", None, id="a device name starting with '-' is refused"),
        pytest.param("1vendor/gpu=0", None, id="a vendor starting with a digit is refused"),
    ],
)
def test_qualified_names_follow_the_cdi_parser(text: str, want: object) -> None:
    assert parse_qualified_name(text) == want


@pytest.mark.parametrize(
    ("s", "ids", "gpus"),
    [
        pytest.param(spec(mounts=[mount("cdi/nvidia.com/gpu/3")]), ("3",), ["/dev/nvidia3"],
                     id="a cdi/<vendor>/<class>/<dev> mount grants that GPU"),
        pytest.param(spec(mounts=[mount("cdi/nvidia.com/gpu=2")]), ("2",), ["/dev/nvidia2"],
                     id="a cdi/<vendor>/<class>=<dev> mount grants that GPU"),
        pytest.param(spec(mounts=[mount(f"cdi/nvidia.com/gpu/{UUID2}")]), (UUID2,),
                     ["/dev/nvidia2"], id="a CDI UUID name grants that GPU"),
        pytest.param(spec(mounts=[mount("cdi/nvidia.com/gpu=1:0")]), ("1:0",),
                     ["/dev/nvidia1"], id="a CDI MIG name grants its parent node"),
        pytest.param(with_annotations(spec(), {DP_KEY: "nvidia.com/gpu=4,nvidia.com/gpu=5"}),
                     ("4", "5"), ["/dev/nvidia4", "/dev/nvidia5"],
                     id="the device plugin's cdi annotation grants its devices unprivileged"),
        pytest.param(spec(ids=["3"], mounts=[mount("cdi/nvidia.com/gpu/3")]), ("3",),
                     ["/dev/nvidia3"], id="a GPU asked by id and by CDI name is granted once"),
        pytest.param(spec(env=["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=2"], privileged=True),
                     ("2",), ["/dev/nvidia2"],
                     id="a CDI name in NVIDIA_VISIBLE_DEVICES is honoured when privileged"),
        pytest.param(spec(env=["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=2"]), (), [],
                     id="a CDI name in NVIDIA_VISIBLE_DEVICES is ignored when unprivileged"),
        pytest.param(spec(env=["NVIDIA_VISIBLE_DEVICES=amd.com/gpu=0", "CUDA_VERSION=12.4"],
                          privileged=True), (), [],
                     id="env naming only another vendor grants nothing, not the legacy all"),
        pytest.param(with_annotations(spec(), {"other.io/x": "nvidia.com/gpu=2"}), (), [],
                     id="an annotation without the CDI prefix is not a request"),
    ],
)
def test_cdi_names_for_nvidia_gpus_take_the_gpu_path(s: dict[str, Any], ids: tuple[str, ...],
                                                      gpus: list[str]) -> None:
    p = plan(s)
    assert p.device_ids == ids
    assert gpu_nodes(p) == gpus


@pytest.mark.parametrize(
    "s",
    [
        pytest.param(spec(mounts=[mount("cdi/vendor.com/net/1")]),
                     id="another vendor's CDI mount"),
        pytest.param(with_annotations(spec(), {DP_KEY: "vendor.com/net=1"}),
                     id="another vendor's CDI annotation"),
        pytest.param(spec(mounts=[mount("cdi/nvidia.com/mig-1g.5gb/0")]),
                     id="an NVIDIA class gpuhook does not generate"),
    ],
)
def test_other_cdi_devices_are_left_to_the_runtime_and_noted(s: dict[str, Any]) -> None:
    p = plan(s)
    assert p.empty
    assert len(p.ignored) == 1
    assert "left to the runtime's CDI support" in p.ignored[0].reason


@pytest.mark.parametrize(
    ("s", "needle"),
    [
        pytest.param(spec(mounts=[mount("cdi/nvidia.com/gpu")]), "is not a CDI device",
                     id="a CDI mount without a device name"),
        pytest.param(spec(mounts=[mount("cdi/nvidia.com/gpu/0/x")]), "is not a CDI device",
                     id="a CDI mount with an extra component"),
        pytest.param(spec(mounts=[mount("cdi/../../etc/x")]), r"'\.\.'",
                     id="a CDI mount with dotdot components"),
        pytest.param(with_annotations(spec(), {DP_KEY: "nvidia.com/gpu=0;rm"}),
                     "is not a CDI device name", id="a malformed name in a CDI annotation"),
        pytest.param(with_annotations(spec(), {f"cdi.k8s.io/p_{i}": "nvidia.com/gpu=0"
                                               for i in range(257)}),
                     "more than 256", id="more CDI annotations than the bound"),
        pytest.param(with_annotations(spec(), {DP_KEY: "nvidia.com/gpu=0," * 20000}),
                     "larger than", id="a CDI annotation value over the size bound"),
        pytest.param(spec(mounts=[mount("imex/channelx")]), "is not an IMEX channel",
                     id="an IMEX mount that is not a number"),
        pytest.param(spec(mounts=[mount("imex/1048576")]), "is not an IMEX channel",
                     id="an IMEX channel beyond a 20-bit minor"),
    ],
)
def test_malformed_requests_fail_closed_naming_them(s: dict[str, Any], needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        plan(s)


# --- IMEX channels and gated families, given what the host has -----------------------------------

IMEX_MAJOR = 234
FACTS = ExtraFacts(
    imex_major=IMEX_MAJOR,
    imex_channels={c: HostNode(f"/dev/nvidia-caps-imex-channels/channel{c}", IMEX_MAJOR, c,
                               0o666) for c in (0, 1, 7)},
    gated={"gds": (HostNode("/dev/nvidia-fs0", 241, 0, 0o666),
                   HostNode("/dev/nvidia-fs1", 241, 1, 0o666)),
           "gdrcopy": (HostNode("/dev/gdrdrv", 242, 0, 0o666),),
           "mofed": ()},
    gated_files={"gds": (DriverFile("config", "/host/etc/cufile.json", "/etc/cufile.json"),)},
)


def extended(s: dict[str, Any], facts: ExtraFacts = FACTS, **cfg: Any) -> Plan:
    """The pipeline's plan for `s`, with the host's dev nodes given as data."""
    c = config(**cfg)
    view, asked = cdi_requests(parse_spec(json.dumps(s).encode()), c.volume_mount_root)
    base = gpu_plan(view, c)
    return extend_plan(base, asked, extras_wanted(base, asked, c), facts)


def channels(p: Plan) -> list[tuple[str, int, int]]:
    return [(n.path, n.major, n.minor) for n in p.device_nodes if "imex" in n.path]


@pytest.mark.parametrize(
    ("s", "want"),
    [
        pytest.param(spec(mounts=[mount("imex/1")]), [1],
                     id="the device plugin's imex mount grants that channel unprivileged"),
        pytest.param(spec(mounts=[mount("imex/channel7")]), [7],
                     id="a channel<N> mount name is read as N"),
        pytest.param(spec(mounts=[mount("imex/all")]), [0, 1, 7],
                     id="an imex/all mount grants every channel the host has"),
        pytest.param(spec(mounts=[mount("cdi/nvidia.com/imex-channel/1")]), [1],
                     id="a CDI imex-channel name grants that channel"),
        pytest.param(spec(env=["NVIDIA_IMEX_CHANNELS=0,7"], privileged=True), [0, 7],
                     id="NVIDIA_IMEX_CHANNELS is honoured for a privileged container"),
        pytest.param(spec(env=["NVIDIA_IMEX_CHANNELS=0"]), [],
                     id="NVIDIA_IMEX_CHANNELS is ignored for an unprivileged container"),
        pytest.param(spec(env=["NVIDIA_IMEX_CHANNELS=all"], privileged=True), [],
                     id="NVIDIA_IMEX_CHANNELS=all is ignored even when privileged"),
        pytest.param(spec(env=["NVIDIA_IMEX_CHANNELS=0"], mounts=[mount("imex/1")],
                          privileged=True), [1],
                     id="the device plugin's mounts take precedence over the env var"),
    ],
)
def test_imex_channels_granted(s: dict[str, Any], want: list[int]) -> None:
    p = extended(s)
    assert p.imex_channels == tuple(want)
    assert channels(p) == [(f"/dev/nvidia-caps-imex-channels/channel{c}", IMEX_MAJOR, c)
                           for c in want]
    rules = {(r.major, r.minor, r.access) for r in p.cgroup_rules}
    assert all((IMEX_MAJOR, c, "rwm") in rules for c in want)


def test_an_imex_channel_the_host_lacks_fails_naming_what_exists() -> None:
    with pytest.raises(HostError, match=r"channel 3 asked.*existing channels: 0, 1, 7"):
        extended(spec(mounts=[mount("imex/3")]))


def test_imex_without_the_driver_major_fails_closed() -> None:
    with pytest.raises(HostError, match="lists no nvidia-caps-imex-channels major"):
        extended(spec(mounts=[mount("imex/0")]), ExtraFacts())


def test_all_channels_are_never_an_id() -> None:
    _, asked = cdi_requests(parse_spec(json.dumps(spec(mounts=[mount("imex/all")])).encode()),
                            ROOT)
    assert asked.imex_mounts == (ALL_CHANNELS,)


GDS = ["NVIDIA_GDS=enabled"]


@pytest.mark.parametrize(
    ("s", "families", "want", "why"),
    [
        pytest.param(spec(env=GDS, ids=["2"]), ["gds"], ["/dev/nvidia-fs0", "/dev/nvidia-fs1"],
                     "", id="NVIDIA_GDS with a device plugin GPU and gds listed grants the nodes"),
        pytest.param(spec(env=GDS, ids=["2"]), [], [], "not listed in gated-device-families",
                     id="a family the config does not list is ignored"),
        pytest.param(spec(env=GDS), ["gds"], [], "granted a GPU",
                     id="NVIDIA_GDS without a granted GPU is ignored"),
        pytest.param(spec(env=[*GDS, "NVIDIA_VISIBLE_DEVICES=2"]), ["gds"], [], "granted a GPU",
                     id="NVIDIA_GDS with an env-only GPU in an unprivileged container is ignored"),
        pytest.param(spec(env=[*GDS, "NVIDIA_VISIBLE_DEVICES=2"], privileged=True), ["gds"],
                     ["/dev/nvidia-fs0", "/dev/nvidia-fs1"], "",
                     id="a privileged container's env GPU is trusted for the family"),
        pytest.param(spec(env=["NVIDIA_GDRCOPY=enabled"], ids=["2"]), ["gdrcopy"],
                     ["/dev/gdrdrv"], "", id="NVIDIA_GDRCOPY grants /dev/gdrdrv"),
        pytest.param(spec(env=["NVIDIA_GDS=yes"], ids=["2"]), ["gds"], [], "",
                     id="a value other than enabled asks for nothing"),
    ],
)
def test_gated_families(s: dict[str, Any], families: list[str], want: list[str],
                        why: str) -> None:
    p = extended(s, gated_device_families=tuple(families))
    got = [n.path for n in p.device_nodes if not n.path.startswith("/dev/nvidia") or
           n.path.startswith("/dev/nvidia-fs")]
    assert got == want
    assert p.gated_families == (tuple(families) if want else ())
    if why:
        assert any(why in i.reason for i in p.ignored), p.ignored


def test_a_listed_family_the_host_lacks_adds_nothing_and_says_so() -> None:
    p = extended(spec(env=["NVIDIA_MOFED=enabled"], ids=["2"]), gated_device_families=("mofed",))
    assert not [n for n in p.device_nodes if "infiniband" in n.path]
    assert any("nothing added" in n for n in p.notes)


# --- the device plugin's cdi-annotations strategy, as recorded (tests/data/deviceplugin) ---------

def _fixture_annotations(name: str) -> dict[str, str]:
    doc = json.loads((REPO / "tests" / "data" / "deviceplugin" / f"{name}.json").read_text())
    annotations: dict[str, str] = doc["container_allocate_response"]["annotations"]
    return annotations


def test_the_device_plugins_cdi_annotation_grants_its_gpu() -> None:
    p = plan(with_annotations(spec(), _fixture_annotations("cdi-annotations-uuid-1gpu")))
    assert p.device_ids == (UUID2,)
    assert gpu_nodes(p) == ["/dev/nvidia2"]
    assert p.source == "volume-mounts"
    assert any("k8s.device-plugin.nvidia.com/gpu=" in n for n in p.notes)


def test_the_device_plugins_cdi_annotation_with_imex_grants_gpu_and_channel() -> None:
    p = extended(with_annotations(spec(), _fixture_annotations("cdi-annotations-imex-uuid-1gpu")))
    assert gpu_nodes(p) == ["/dev/nvidia2"]
    assert p.imex_channels == (0,)


def test_gds_brings_cufile_json_with_its_nodes_only() -> None:
    granted = extended(spec(env=GDS, ids=["2"]), gated_device_families=("gds",))
    assert [(f.kind, f.container_path) for f in granted.driver_files
            if f.container_path == "/etc/cufile.json"] == [("config", "/etc/cufile.json")]
    no_nodes = ExtraFacts(gated={"gds": ()}, gated_files=FACTS.gated_files)
    p = extended(spec(env=GDS, ids=["2"]), no_nodes, gated_device_families=("gds",))
    assert not [f for f in p.driver_files if f.container_path == "/etc/cufile.json"]


@pytest.mark.parametrize(
    ("s", "value"),
    [
        pytest.param(spec(env=["NVIDIA_IMEX_CHANNELS=foo"]), "NVIDIA_IMEX_CHANNELS=foo",
                     id="a malformed NVIDIA_IMEX_CHANNELS is ignored, not fatal"),
        pytest.param(spec(env=["NVIDIA_IMEX_CHANNELS=99999999999"], privileged=True),
                     "NVIDIA_IMEX_CHANNELS=99999999999",
                     id="an out-of-range env channel is ignored even when privileged"),
        pytest.param(spec(env=["NVIDIA_VISIBLE_DEVICES=a=b"], privileged=True), "a=b",
                     id="a malformed CDI name in NVIDIA_VISIBLE_DEVICES is ignored, not fatal"),
    ],
)
def test_env_never_stops_a_container(s: dict[str, Any], value: str) -> None:
    p = extended(s)
    assert p.device_ids == () and not channels(p)
    assert value in [i.value for i in p.ignored]


def test_imex_env_none_asks_nothing() -> None:
    p = extended(spec(env=["NVIDIA_IMEX_CHANNELS=none"], privileged=True))
    assert not channels(p) and not p.ignored


def test_cdi_and_imex_mounts_are_not_read_when_mounts_are_not_accepted() -> None:
    cfg = config(accept_nvidia_visible_devices_as_volume_mounts=False)
    p = plan(spec(mounts=[mount("cdi/nvidia.com/gpu/2"), mount("cdi/nvidia.com/gpu"),
                          mount("imex/x")]), cfg)
    assert p.empty and p.source == "none"
    assert all("accept-nvidia-visible-devices-as-volume-mounts" in i.reason for i in p.ignored)


def test_a_cdi_mount_spelled_uncleaned_is_read_as_the_toolkit_cleans_it() -> None:
    m = {"destination": f"/{ROOT}/cdi/nvidia.com/gpu/3/", "type": "bind",
         "source": "//dev/./null", "options": ["ro"]}
    assert gpu_nodes(plan(spec(mounts=[m]))) == ["/dev/nvidia3"]
