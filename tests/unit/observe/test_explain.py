"""`gpuhook explain` on a decision log that gpuhook-runtime itself wrote."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gpuhook.observe.explain import matches, parse_records
from tests.unit import specs
from tests.unit.runtime.test_broken_config import CONTAINERD, CRIO
from tests.unit.runtime.test_shim_exec import FAKE_RUNTIME, GPUHOOK, SHIM, gpu_spec

POD_ID = "4f1a" * 16


def shim_create(tmp: Path, cid: str, spec: dict[str, Any], config: Path) -> None:
    b = tmp / cid
    b.mkdir()
    (b / "config.json").write_text(json.dumps(spec))
    subprocess.run([str(SHIM), "create", "-b", str(b), cid], capture_output=True, timeout=60,
                   env={"PATH": "/usr/bin:/bin", "GPUHOOK_CONFIG": str(config)}, check=False)


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three containers of pod ml/trainer-0 (granted, refused, env ignored) and one of CRI-O."""
    tmp = tmp_path_factory.mktemp("explain")
    runtime = tmp / "fake-runc"
    runtime.write_text(FAKE_RUNTIME.replace("@RECORD_DIR@", str(tmp)))
    runtime.chmod(0o755)
    log = tmp / "decisions.log"
    config = tmp / "gpuhook.toml"
    config.write_text(f'inventory = "{specs.MIG8}"\nhost-root = "{specs.MIG8_HOST}"\n'
                      f'log-file = "{log}"\nruntimes = ["{runtime}"]\n'
                      # the shipped fake host has no driver user-space
                      'driver-files = false\n')
    granted = gpu_spec("3")
    granted["annotations"] = CONTAINERD
    refused = gpu_spec("99")
    refused["annotations"] = {**CONTAINERD, "io.kubernetes.cri.container-name": "sidecar"}
    ignored = specs.spec(env=("NVIDIA_VISIBLE_DEVICES=all",))
    ignored["annotations"] = {**CONTAINERD, "io.kubernetes.cri.container-name": "cuda-env"}
    crio = gpu_spec("2")
    crio["annotations"] = {**CRIO, "io.kubernetes.pod.name": "other"}
    for cid, s in (("c-granted-1", granted), ("c-refused-1", refused),
                   ("c-ignored-1", ignored), ("c-crio-1", crio)):
        shim_create(tmp, cid, s, config)
    with log.open("a") as f:
        f.write('{"torn": \n')  # a torn line (a full disk) is skipped
    return log


def explain(log: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GPUHOOK), "explain", *args, "--log", str(log)],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": "/usr/bin:/bin", "GPUHOOK_CONFIG": "/nonexistent"})


def test_explain_by_pod_name_tells_each_container(log: Path) -> None:
    r = explain(log, "trainer-0")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "container c-granted-1  pod ml/trainer-0  container cuda" in out
    assert "create: granted" in out and "asked:   3 through volume-mounts" in out
    assert "got:     GPU 3 (GPU-" in out
    assert "container c-refused-1  pod ml/trainer-0  container sidecar" in out
    assert "REFUSED" in out and "99 not found; available:" in out
    assert "ignored: envvar 'all':" in out
    assert "c-crio-1" not in out


@pytest.mark.parametrize(("query", "ids"), [
    ("ml/trainer-0/sidecar", ["c-refused-1"]),
    ("c-granted-1", ["c-granted-1"]),
    ("c-gran", ["c-granted-1"]),
    (POD_ID[:8], ["c-granted-1", "c-refused-1", "c-ignored-1"]),
    ("ml/other", ["c-crio-1"]),
], ids=["namespace/name/container names one container", "a container id",
        "a container id prefix", "a sandbox id prefix names the pod",
        "a CRI-O pod by namespace/name"])
def test_explain_json_selects(log: Path, query: str, ids: list[str]) -> None:
    r = explain(log, query, "--json")
    assert r.returncode == 0, r.stderr
    assert [rec["id"] for rec in json.loads(r.stdout)] == ids


def test_explain_of_an_unknown_pod_says_why_there_may_be_no_record(log: Path) -> None:
    r = explain(log, "no-such-pod")
    assert r.returncode == 1
    assert "no decision about 'no-such-pod'" in r.stderr
    assert "4 records read" in r.stderr
    assert "DEVICE_LIST_STRATEGY=volume-mounts" in r.stderr


@pytest.mark.parametrize(("query", "want"), [("c-g", False), ("trainer", False)],
                         ids=["a short prefix is not an id", "part of a pod name is no match"])
def test_matches_needs_a_whole_name_or_a_long_prefix(query: str, want: bool) -> None:
    rec = parse_records(json.dumps({"id": "c-granted-1", "pod": {"name": "trainer-0"}}))[0]
    assert matches(rec, query) is want


def test_render_escapes_what_a_terminal_would_interpret() -> None:
    from gpuhook.observe.explain import render

    rec = {"id": "c1", "event": "create", "decision": "empty",
           "pod": {"namespace": "ml", "name": "evil\x1b]0;owned\x07\nFAKE LINE"},
           "nvidia_env": {"NVIDIA_VISIBLE_DEVICES": "all\r\n"}}
    out = render([rec])
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert "evil\\x1b]0;owned\\x07\\nFAKE LINE" in out
    assert not any(line.startswith("FAKE LINE") for line in out.splitlines())
