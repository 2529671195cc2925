"""install / uninstall flags: --config is gpuhook's config everywhere, the engine's file has
--engine-config (the old --config spelling still works, with a warning), missing directories
are refused unless --create-dirs, and the restart hint names a command only when the host
says which one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuhook.cli.main import cli
from gpuhook.engines.restart import restart_hint

RUNTIME = "/usr/bin/gpuhook-runtime"
HOOK = "/usr/bin/gpuhook"


def gpuhook(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_the_old_config_spelling_for_containerds_file_still_works_with_a_warning(
        tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n'
                    '  default_runtime_name = "runc"\n')
    code, out = gpuhook("install", "--runtime", "containerd", "--config", str(path),
                        "--runtime-binary", RUNTIME)
    assert code == 0, out
    assert "naming containerd's file with --config is deprecated; use --engine-config" in out
    assert f'BinaryName = "{RUNTIME}"' in path.read_text()


def test_config_names_gpuhooks_config_which_must_load(tmp_path: Path) -> None:
    engine = tmp_path / "config.toml"
    engine.write_text("version = 2\n")
    mine = tmp_path / "gpuhook.toml"
    mine.write_text('mode = "hook"\nmdoe = "spec"\n')
    code, out = gpuhook("install", "--runtime", "containerd", "--engine-config", str(engine),
                        "--config", str(mine), "--runtime-binary", RUNTIME)
    assert code == 1
    assert "unknown key 'mdoe' (did you mean 'mode'?)" in out and "fix it before" in out
    assert engine.read_text() == "version = 2\n", "nothing written"


def test_a_gpuhook_config_for_containerd_says_how_the_shim_reads_it(tmp_path: Path) -> None:
    engine = tmp_path / "config.toml"
    engine.write_text("version = 2\n")
    mine = tmp_path / "gpuhook.toml"
    mine.write_text('mode = "hook"\n')
    code, out = gpuhook("install", "--runtime", "containerd", "--engine-config", str(engine),
                        "--config", str(mine), "--runtime-binary", RUNTIME)
    assert code == 0, out
    assert f"set GPUHOOK_CONFIG={mine} in containerd's service environment" in out


def test_podman_config_is_passed_to_the_hook(tmp_path: Path) -> None:
    mine = tmp_path / "gpuhook.toml"
    mine.write_text('log-file = "/var/log/gpuhook.log"\n')
    code, out = gpuhook("install", "--runtime", "podman", "--hooks-dir", str(tmp_path),
                        "--hook-binary", HOOK, "--config", str(mine))
    assert code == 0, out
    hook = json.loads((tmp_path / "gpuhook.json").read_text())["hook"]
    assert hook["args"][-2:] == ["--config", str(mine)]


@pytest.mark.parametrize(("runtime", "flag", "file"), [
    ("containerd", "--drop-in-dir", "99-gpuhook.toml"),
    ("crio", "--drop-in-dir", "99-gpuhook.conf"),
    ("podman", "--hooks-dir", "gpuhook.json"),
], ids=["a containerd drop-in dir", "a CRI-O drop-in dir", "a hooks.d dir"])
def test_a_missing_directory_is_refused_unless_asked(tmp_path: Path, runtime: str, flag: str,
                                                     file: str) -> None:
    d = tmp_path / "not-there"
    extra = ["--engine-config", str(tmp_path / "config.toml"), "--drop-in"] \
        if runtime == "containerd" else []
    if runtime == "containerd":
        (tmp_path / "config.toml").write_text("version = 2\n")
    args = ["install", "--runtime", runtime, flag, str(d), "--runtime-binary", RUNTIME,
            "--hook-binary", HOOK, *extra]
    code, out = gpuhook(*args)
    assert code == 1 and f"{d} does not exist" in out and "nothing was written" in out
    assert not d.exists()
    if runtime == "containerd":
        assert (tmp_path / "config.toml").read_text() == "version = 2\n"
    code, out = gpuhook(*args, "--create-dirs")
    assert code == 0, out
    assert (d / file).exists()


@pytest.mark.parametrize(("files", "runtime", "want"), [
    (["run/systemd/system/", "lib/systemd/system/containerd.service"], "containerd",
     "restart to take effect: systemctl restart containerd"),
    (["run/systemd/system/", "etc/systemd/system/crio.service"], "crio",
     "systemctl restart crio"),
    (["run/systemd/system/"], "containerd", "no systemd unit containerd.service here"),
    (["lib/systemd/system/docker.service"], "docker", "no systemd unit docker.service here"),
    ([], "podman", "nothing to restart"),
], ids=["containerd's unit on a systemd host", "a CRI-O unit in /etc",
        "systemd without a containerd unit (k3s)", "a unit file but systemd not running",
        "podman reads hooks.d itself"])
def test_restart_hint(tmp_path: Path, files: list[str], runtime: str, want: str) -> None:
    for f in files:
        p = tmp_path / f
        if f.endswith("/"):
            p.mkdir(parents=True, exist_ok=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("[Unit]\n")
    assert want in restart_hint(runtime, str(tmp_path))
