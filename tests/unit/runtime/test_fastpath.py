"""The hook's json-free reader agrees with json, and refuses what json refuses."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuhook.runtime.fastpath import loads, might_request

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


@given(JSON, st.sampled_from(["", " ", "\n\t"]))
def test_loads_equals_json_loads(value: object, ws: str) -> None:
    data = (ws + json.dumps(value) + ws).encode()
    assert loads(data) == json.loads(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"   ", b"{", b'{"a": 1} x', b"\xff{}", b'{"a": 1}{"b": 2}', b"[1,]", b"nul",
     b"[" * 100000],
    ids=["empty", "blank", "truncated", "trailing garbage", "not UTF-8", "two documents",
         "trailing comma", "bad literal", "too deep"],
)
def test_loads_refuses_what_json_refuses(data: bytes) -> None:
    with pytest.raises(ValueError):
        loads(data)


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        pytest.param({"process": {"env": ["PATH=/bin"]}, "mounts": []}, False,
                     id="plain container cannot request"),
        pytest.param({"process": {"env": ["NVIDIA_VISIBLE_DEVICES=all"]}}, True,
                     id="NVIDIA env may request"),
        pytest.param({"process": {"env": ["CUDA_VERSION=12.0"]}}, True,
                     id="legacy CUDA image may request"),
        pytest.param({"process": {"env": []},
                      "mounts": [{"source": "//dev/./null/",
                                  "destination": "//var/run/./nvidia-container-devices/0/"}]},
                     True, id="an uncleaned dev null mount under the root may be a device id"),
        pytest.param({"process": {"env": []},
                      "mounts": [{"source": "/dev/null",
                                  "destination": "/var/run/nvidia-container-devices/../x"}]},
                     True, id="a destination with dot-dot goes to the full path"),
        pytest.param({"process": {"env": []},
                      "mounts": [{"source": "/dev/null",
                                  "destination": "/var/run/nvidia-container-devices-x/0"}]},
                     False, id="a sibling of the root is not under it"),
        pytest.param({"process": {"env": []},
                      "mounts": [{"destination": "/dev/shm", "type": "tmpfs"},
                                 {"source": "proc", "destination": "/proc"}]}, False,
                     id="mounts without a null source cannot request"),
        pytest.param({"process": {"env": []},
                      "mounts": [{"source": "/dev/null", "destination": "/x"}]}, False,
                     id="a dev null mount outside the device-list root asks for nothing"),
        pytest.param({"process": {"env": []},
                      "mounts": [{"source": "/dev/null",
                                  "destination": "/var/run/nvidia-container-devices/0"}]}, True,
                     id="a dev null mount under the default root may be a device id"),
        pytest.param({"process": {"env": []},
                      "mounts": [{"source": "/dev/null",
                                  "destination": "/var/run/nvidia-container-devices"}]}, True,
                     id="a dev null mount on the root itself goes to the full path"),
        pytest.param({"process": {"env": []},
                      "mounts": [{"source": "/tmp/x",
                                  "destination": "/var/run/nvidia-container-devices/0"}]}, False,
                     id="a mount under the root from another source asks for nothing"),
        pytest.param({"process": {"env": []},
                      "mounts": [{"source": "/dev/null", "destination": 7}]}, True,
                     id="an odd destination goes to the full path"),
        pytest.param({"process": {"env": "oops"}}, True, id="odd env goes to the full path"),
        pytest.param({"mounts": []}, True, id="missing process goes to the full path"),
        pytest.param([], True, id="non-object goes to the full path"),
        pytest.param({"process": {"env": []}, "annotations": {
            "cdi.k8s.io/nvidia-device-plugin_x": "nvidia.com/gpu=0"}}, True,
                     id="a CDI annotation may request"),
        pytest.param({"process": {"env": []}, "annotations": {"io.kubernetes.pod.name": "p"}},
                     False, id="other annotations cannot request"),
        pytest.param({"process": {"env": []}, "annotations": "oops"}, True,
                     id="odd annotations go to the full path"),
    ],
)
def test_might_request(spec: object, want: bool) -> None:
    assert might_request(spec) is want


@pytest.mark.parametrize(("roots", "destination", "want"), [
    (("/var/run/nvidia-container-devices", "/gpus"), "/gpus/0", True),
    (("/var/run/nvidia-container-devices", "/gpus"), "/var/run/nvidia-container-devices/0", True),
    (("/var/run/nvidia-container-devices", "/gpus"), "/gpusx/0", False),
    (("/var/run/nvidia-container-devices", "/"), "/anything", True),
], ids=["under the configured root", "under the default root while another is configured",
        "a sibling whose name starts like the root", "the root / covers every mount"])
def test_might_request_under_configured_roots(roots: tuple[str, ...], destination: str,
                                              want: bool) -> None:
    s = {"process": {"env": []}, "mounts": [{"source": "/dev/null", "destination": destination}]}
    assert might_request(s, roots) is want
