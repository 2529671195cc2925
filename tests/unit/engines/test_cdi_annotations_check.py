"""containerd's pod_annotations allow-list must not pass cdi.k8s.io/ annotations (a pod author
would forge the device plugin's CDI requests): `gpuhook install` warns, and the check is there
for `gpuhook doctor` (engines/containerd.py cdi_annotation_warnings)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuhook.cli.main import cli
from gpuhook.engines.containerd import cdi_annotation_warnings, go_path_match

KEY = "cdi.k8s.io/nvidia-device-plugin_5f0c2a2e-3d43-4b8e-9b0f-6f3c1e2b7a10"


@pytest.mark.parametrize(
    ("pattern", "name", "want"),
    [
        pytest.param("cdi.k8s.io/*", KEY, True, id="the CDI prefix glob matches"),
        pytest.param("*", KEY, False, id="a lone star stops at the slash (path.Match)"),
        pytest.param("*/*", KEY, True, id="star slash star matches"),
        pytest.param("cdi.k8s.io/nvidia-device-plugin_?f0c*", KEY, True,
                     id="question mark matches one character"),
        pytest.param("cdi.k8s.io/[m-o]*", KEY, True, id="a character range matches"),
        pytest.param("cdi.k8s.io/[^n]*", KEY, False, id="a negated class excludes"),
        pytest.param("cdi.k8s.io/\\*", "cdi.k8s.io/*", True, id="an escaped star is literal"),
        pytest.param("cdi.k8s.io/[", KEY, False, id="a malformed pattern matches nothing"),
        pytest.param("io.kubernetes.*", KEY, False, id="another prefix does not match"),
    ],
)
def test_go_path_match(pattern: str, name: str, want: bool) -> None:
    assert go_path_match(pattern, name) is want


def config_text(pod: list[str], runtime: str = "nvidia") -> str:
    items = ", ".join(f'"{p}"' for p in pod)
    return (f'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{runtime}]\n'
            f'  runtime_type = "io.containerd.runc.v2"\n  pod_annotations = [{items}]\n'
            f'  container_annotations = ["cdi.k8s.io/*"]\n')


@pytest.mark.parametrize(
    ("pod", "warned"),
    [
        pytest.param(["cdi.k8s.io/*"], True, id="pod_annotations with the CDI prefix warns"),
        pytest.param(["*/*"], True, id="a catch-all pod_annotations warns"),
        pytest.param(["io.katacontainers.*"], False, id="an unrelated allow-list is fine"),
        pytest.param([], False, id="no pod_annotations is fine"),
    ],
)
def test_warnings_for_the_runtime(pod: list[str], warned: bool) -> None:
    got = cdi_annotation_warnings(config_text(pod), "nvidia")
    assert bool(got) is warned
    if warned:
        assert "pod_annotations" in got[0] and "cdi.k8s.io/" in got[0]


def test_other_runtimes_are_not_judged() -> None:
    assert cdi_annotation_warnings(config_text(["cdi.k8s.io/*"], "kata"), "nvidia") == []


def test_install_warns_loudly_when_runc_passes_cdi_pod_annotations(tmp_path: Path) -> None:
    """install copies runc's settings into its runtime, pod_annotations included: the copy
    must be named on stderr."""
    cfg = tmp_path / "config.toml"
    cfg.write_text(config_text(["cdi.k8s.io/*"], "runc"))
    res = CliRunner().invoke(cli, ["install", "--runtime", "containerd", "--config", str(cfg),
                                   "--runtime-binary", "/usr/bin/gpuhook-runtime"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "gpuhook: WARNING:" in res.stderr
    assert "runtime 'nvidia': pod_annotations ['cdi.k8s.io/*']" in res.stderr


def test_install_is_quiet_without_cdi_pod_annotations(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(config_text([], "runc"))
    res = CliRunner().invoke(cli, ["install", "--runtime", "containerd", "--config", str(cfg),
                                   "--runtime-binary", "/usr/bin/gpuhook-runtime"],
                             catch_exceptions=False)
    assert res.exit_code == 0
    assert "WARNING" not in res.stderr
