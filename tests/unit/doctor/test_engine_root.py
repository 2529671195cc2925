"""`gpuhook doctor --engine-root DIR`: the DaemonSet's readiness probe reads the host's
registration from inside the installer's container, where the host's files are under /host and
every path in them (containerd's `imports`, BinaryName) is a host path. The fake host here is
probed with the manifest's own command (deploy/kubernetes/daemonset.yaml, its /host replaced by
the fake host's root) and registered by `gpuhook node install`'s own engine step (run_engine,
chrooted into the root), with a bundle laid out as payload.py writes it; each case breaks one
thing."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from gpuhook.cli.main import cli
from gpuhook.node import payload
from gpuhook.node.install import NodeOptions, run_engine

ORIGINAL = (b'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n'
            b'  default_runtime_name = "runc"\n'
            b'[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\n'
            b'  runtime_type = "io.containerd.runc.v2"\n')
BUNDLE_ID = "gpuhook-0123456789abcdef"
MANIFEST = Path(__file__).parents[3] / "deploy/kubernetes/daemonset.yaml"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")


def _host(root: Path) -> Path:
    (root / "etc/containerd").mkdir(parents=True)
    (root / "etc/containerd/config.toml").write_bytes(ORIGINAL)
    parent = root / payload.HOST_DIR.lstrip("/")
    bundle = f"{payload.HOST_DIR}/{BUNDLE_ID}"
    (parent / BUNDLE_ID / "bin").mkdir(parents=True)
    for prog, entry in (("gpuhook", "main"), ("gpuhook-runtime", "runtime_main")):
        exe = parent / BUNDLE_ID / "bin" / prog
        exe.write_bytes(payload.launcher(bundle, f"{payload.HOST_DIR}/config.toml",
                                         "/lib64/ld-linux-x86-64.so.2", entry, prog))
        exe.chmod(0o755)
    (parent / BUNDLE_ID / payload.COMPLETE).write_text(BUNDLE_ID + "\n")
    payload.switch_current(str(parent), BUNDLE_ID)
    run_engine(NodeOptions(host_root=str(root)), True, lambda _line: None)
    return root


def probe_command() -> list[str]:
    [ds] = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d["kind"] == "DaemonSet"]
    [c] = ds["spec"]["template"]["spec"]["containers"]
    command: list[str] = c["readinessProbe"]["exec"]["command"]
    return command


def _doctor(root: Path, config: Path) -> tuple[int, dict[str, Any]]:
    gpuhook, *args = probe_command()
    assert gpuhook == "gpuhook"
    args = [str(root) if a == "/host" else a for a in args]
    res = CliRunner().invoke(cli, [*args, "--json", "--config", str(config)])
    return res.exit_code, json.loads(res.output)


def _check(report: dict[str, Any], name: str) -> dict[str, Any]:
    [c] = [c for c in report["checks"] if c["name"] == name]
    found: dict[str, Any] = c
    return found


@pytest.fixture
def host(tmp_path: Path) -> Path:
    return _host(tmp_path / "host")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gpuhook.toml"
    path.write_text("allow-mig-monitor-unprivileged = true\n")  # the DaemonSet's ConfigMap
    return path


@needs_root
def test_a_node_installs_registration_passes_the_probe_read_through_the_host_root(
        host: Path, config: Path) -> None:
    code, report = _doctor(host, config)
    assert (code, report["status"]) == (0, "ok"), report
    detail = _check(report, "containerd")["detail"]
    assert detail.startswith("runtime 'nvidia' in /etc/containerd/conf.d/99-gpuhook.toml "), detail
    assert {c["name"] for c in report["checks"]} == {
        "config", "policy", "containerd", "crio", "docker", "oci-hooks"}


def _torn_bundle(root: Path) -> None:
    os.unlink(root / payload.HOST_DIR.lstrip("/") / BUNDLE_ID / payload.COMPLETE)


def _no_bundle(root: Path) -> None:
    shutil.rmtree(root / payload.HOST_DIR.lstrip("/"))


def _not_registered(root: Path) -> None:
    run_engine(NodeOptions(host_root=str(root)), False, lambda _line: None)


def _absolute_escape(root: Path) -> None:
    """`current` pointing at an absolute path: in the host root it is the host's bundle;
    read from outside it would be this machine's /usr/local/gpuhook (absent here)."""
    link = root / payload.HOST_DIR.lstrip("/") / payload.CURRENT
    link.unlink()
    link.symlink_to(f"{payload.HOST_DIR}/{BUNDLE_ID}")


BREAKS: list[tuple[str, Callable[[Path], None], int, str, str]] = [
    ("a torn bundle fails the probe", _torn_bundle, 1, "fail", "an incomplete bundle"),
    ("a registration without its bundle fails the probe", _no_bundle, 1, "fail",
     "/usr/local/gpuhook/current/bin/gpuhook-runtime does not exist"),
    ("not registered yet keeps a strict probe unready", _not_registered, 1, "warn",
     "not registered"),
    ("an absolute current link is read as the host's", _absolute_escape, 0, "ok",
     "runs gpuhook-runtime"),
]


@needs_root
@pytest.mark.parametrize(("breaks", "code", "status", "says"), [b[1:] for b in BREAKS],
                         ids=[b[0] for b in BREAKS])
def test_each_break_of_the_hosts_registration_is_named(
        host: Path, config: Path, breaks: Callable[[Path], None], code: int, status: str,
        says: str) -> None:
    breaks(host)
    got, report = _doctor(host, config)
    check = _check(report, "containerd")
    assert (got, check["status"]) == (code, status), report
    assert says in check["detail"], check


@needs_root
def test_without_strict_a_warning_does_not_fail(host: Path, config: Path) -> None:
    _not_registered(host)
    res = CliRunner().invoke(cli, ["doctor", "--config", str(config), "--only", "engines",
                                   "--engine-root", str(host)])
    assert res.exit_code == 0, res.output
    assert "WARN  containerd: gpuhook is not registered in /etc/containerd/config.toml" \
        in res.output


def test_an_engine_root_that_is_no_directory_fails_naming_it(tmp_path: Path,
                                                             config: Path) -> None:
    code, report = _doctor(tmp_path / "missing", config)
    assert code == 1
    check = _check(report, "engines")
    assert check["status"] == "fail" and str(tmp_path / "missing") in check["detail"], check
