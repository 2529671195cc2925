"""`gpuhook install/uninstall` for CRI-O (drop-in), Docker (daemon.json) and Podman (hooks.d),
through the real CLI on files in a temp dir."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuhook.cli.main import cli

RUNTIME = "/usr/bin/gpuhook-runtime"
HOOK = "/usr/bin/gpuhook"


def gpuhook(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_crio_gets_a_drop_in_runtime_table(tmp_path: Path) -> None:
    code, out = gpuhook("install", "--runtime", "crio", "--drop-in-dir", str(tmp_path),
                        "--runtime-binary", RUNTIME, "--set-as-default")
    assert code == 0, out
    data = tomllib.loads((tmp_path / "99-gpuhook.conf").read_text())
    assert data["crio"]["runtime"]["runtimes"]["nvidia"] == {
        "runtime_path": RUNTIME, "runtime_type": "oci"}
    assert data["crio"]["runtime"]["default_runtime"] == "nvidia"
    assert "restart crio to take effect" in out
    assert "nothing changed" in gpuhook("install", "--runtime", "crio", "--drop-in-dir",
                                        str(tmp_path), "--runtime-binary", RUNTIME,
                                        "--set-as-default")[1]
    assert gpuhook("uninstall", "--runtime", "crio", "--drop-in-dir", str(tmp_path))[0] == 0
    assert list(tmp_path.iterdir()) == []


def test_crio_drop_in_name_quotes_odd_runtime_names(tmp_path: Path) -> None:
    gpuhook("install", "--runtime", "crio", "--drop-in-dir", str(tmp_path), "--name",
            "gpu.hook", "--runtime-binary", RUNTIME)
    data = tomllib.loads((tmp_path / "99-gpuhook.conf").read_text())
    assert data["crio"]["runtime"]["runtimes"]["gpu.hook"]["runtime_path"] == RUNTIME


DAEMON_JSON = {
    "log-driver": "json-file",
    "log-opts": {"max-size": "10m"},
    "runtimes": {"crun": {"path": "/usr/bin/crun", "runtimeArgs": ["--debug"]}},
    "default-runtime": "runc",
}


def test_docker_daemon_json_gets_the_runtime_and_keeps_other_keys(tmp_path: Path) -> None:
    path = tmp_path / "daemon.json"
    original = json.dumps(DAEMON_JSON, indent=2).encode()
    path.write_bytes(original)
    code, out = gpuhook("install", "--runtime", "docker", "--engine-config", str(path),
                        "--runtime-binary", RUNTIME, "--set-as-default")
    assert code == 0, out
    data = json.loads(path.read_text())
    assert data["runtimes"] == {**DAEMON_JSON["runtimes"], "nvidia": {"path": RUNTIME}}  # type: ignore[dict-item]
    assert data["default-runtime"] == "nvidia"
    assert {k: v for k, v in data.items() if k not in ("runtimes", "default-runtime")} == {
        "log-driver": "json-file", "log-opts": {"max-size": "10m"}}
    assert "restart docker to take effect" in out
    once = path.read_bytes()
    gpuhook("install", "--runtime", "docker", "--engine-config", str(path), "--runtime-binary",
            RUNTIME, "--set-as-default")
    assert path.read_bytes() == once
    assert gpuhook("uninstall", "--runtime", "docker", "--engine-config", str(path))[0] == 0
    assert path.read_bytes() == original


def test_docker_uninstall_after_an_edit_keeps_the_edit(tmp_path: Path) -> None:
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps(DAEMON_JSON))
    gpuhook("install", "--runtime", "docker", "--engine-config", str(path), "--runtime-binary",
            RUNTIME, "--set-as-default")
    data = json.loads(path.read_text())
    data["debug"] = True
    path.write_text(json.dumps(data))
    gpuhook("uninstall", "--runtime", "docker", "--engine-config", str(path))
    assert json.loads(path.read_text()) == {**DAEMON_JSON, "debug": True}


def test_docker_without_a_daemon_json_gets_one(tmp_path: Path) -> None:
    path = tmp_path / "docker" / "daemon.json"
    code, out = gpuhook("install", "--runtime", "docker", "--engine-config", str(path),
                        "--runtime-binary", RUNTIME)
    assert code == 1 and f"{path.parent} does not exist" in out and "--create-dirs" in out
    assert not path.parent.exists(), "nothing half-written"
    assert gpuhook("install", "--runtime", "docker", "--engine-config", str(path),
                   "--runtime-binary", RUNTIME, "--create-dirs")[0] == 0
    assert json.loads(path.read_text()) == {"runtimes": {"nvidia": {"path": RUNTIME}}}


def test_podman_hooks_d_file_is_the_oci_hook_schema(tmp_path: Path) -> None:
    code, out = gpuhook("install", "--runtime", "podman", "--hooks-dir", str(tmp_path),
                        "--hook-binary", HOOK, "--config", "/etc/gpuhook/node.toml")
    assert code == 0, out
    hook = json.loads((tmp_path / "gpuhook.json").read_text())
    assert hook == {
        "version": "1.0.0",
        "hook": {"path": HOOK, "args": ["gpuhook", "hook", "prestart", "--config",
                                        "/etc/gpuhook/node.toml"],
                 "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]},
        "when": {"always": True},
        "stages": ["prestart"],
    }
    assert "nothing to restart" in out
    assert gpuhook("uninstall", "--runtime", "podman", "--hooks-dir", str(tmp_path))[0] == 0
    assert list(tmp_path.iterdir()) == []


def test_podman_uninstall_puts_back_a_hook_file_that_was_there(tmp_path: Path) -> None:
    mine = tmp_path / "gpuhook.json"
    mine.write_text('{"someone": "else"}\n')
    gpuhook("install", "--runtime", "podman", "--hooks-dir", str(tmp_path), "--hook-binary",
            HOOK)
    assert json.loads(mine.read_text())["hook"]["path"] == HOOK
    gpuhook("uninstall", "--runtime", "podman", "--hooks-dir", str(tmp_path))
    assert mine.read_text() == '{"someone": "else"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpuhook.json"]


@pytest.mark.parametrize("runtime, option", [
    ("crio", "--drop-in-dir"), ("podman", "--hooks-dir")],
    ids=["crio dry run", "podman dry run"])
def test_dry_run_shows_a_new_file_as_a_diff_and_writes_nothing(
        tmp_path: Path, runtime: str, option: str) -> None:
    code, out = gpuhook("install", "--runtime", runtime, option, str(tmp_path),
                        "--runtime-binary", RUNTIME, "--hook-binary", HOOK, "--dry-run")
    assert code == 0, out
    assert out.startswith("--- /dev/null\n+++ " + str(tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["install", "--runtime", "podman", "--engine-config", "/x"],
     "--engine-config is for containerd"),
    (["install", "--runtime", "docker", "--drop-in"], "--drop-in is for containerd"),
    (["install", "--runtime", "lxc"], "Invalid value for '--runtime'"),
    (["install"], "Missing option '--runtime'"),
], ids=["podman takes no --engine-config", "docker takes no --drop-in", "unknown engine",
        "--runtime is required"])
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    code, out = gpuhook(*args)
    assert code == 2
    assert message in out


@pytest.mark.parametrize("command", ["install", "uninstall"])
def test_help_has_examples(command: str) -> None:
    code, out = gpuhook(command, "--help")
    assert code == 0
    assert f"gpuhook {command} --runtime containerd" in out
    assert "--dry-run" in out


def _packaged(tmp_path: Path) -> tuple[Path, Path]:
    """A hooks.d file listed in a dpkg info dir's gpuhook.list, as the .deb leaves it."""
    hooks, info = tmp_path / "hooks.d", tmp_path / "dpkg-info"
    hooks.mkdir()
    info.mkdir()
    assert gpuhook("install", "--runtime", "podman", "--hooks-dir", str(hooks),
                   "--hook-binary", HOOK)[0] == 0
    (info / "gpuhook.list").write_text(f"/.\n/usr\n{hooks}\n{hooks / 'gpuhook.json'}\n")
    return hooks / "gpuhook.json", info


def test_podman_uninstall_refuses_to_delete_a_packaged_hook_file(tmp_path: Path) -> None:
    hook, info = _packaged(tmp_path)
    content = hook.read_bytes()
    code, out = gpuhook("uninstall", "--runtime", "podman", "--hooks-dir", str(hook.parent),
                        "--dpkg-info-dir", str(info))
    assert code == 1
    assert str(hook) in out and "package gpuhook" in out and "apt-get remove gpuhook" in out
    assert hook.read_bytes() == content


def test_podman_install_over_the_packaged_hook_file_changes_nothing(tmp_path: Path) -> None:
    hook, _ = _packaged(tmp_path)
    code, out = gpuhook("install", "--runtime", "podman", "--hooks-dir", str(hook.parent),
                        "--hook-binary", HOOK)
    assert code == 0 and "nothing changed" in out


def test_podman_uninstall_of_a_file_no_package_lists_removes_it(tmp_path: Path) -> None:
    hook, info = _packaged(tmp_path)
    (info / "gpuhook.list").write_text("/usr/share/containers/oci/hooks.d/gpuhook.json\n")
    code, out = gpuhook("uninstall", "--runtime", "podman", "--hooks-dir", str(hook.parent),
                        "--dpkg-info-dir", str(info))
    assert code == 0, out
    assert not hook.exists()


@pytest.mark.parametrize("original, kept", [
    ({"debug": True}, False),
    ({"debug": True, "runtimes": {}}, True),
], ids=["runtimes that install made goes", "an empty runtimes that was there stays"])
def test_docker_uninstall_after_an_edit_drops_only_a_runtimes_object_install_made(
        tmp_path: Path, original: dict[str, object], kept: bool) -> None:
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps(original))
    gpuhook("install", "--runtime", "docker", "--engine-config", str(path), "--runtime-binary",
            RUNTIME)
    data = json.loads(path.read_text())
    data["log-level"] = "warn"
    path.write_text(json.dumps(data, indent=4) + "\n")
    assert gpuhook("uninstall", "--runtime", "docker", "--engine-config", str(path))[0] == 0
    assert json.loads(path.read_text()) == {**original, "log-level": "warn"}
    assert ("runtimes" in json.loads(path.read_text())) is kept


def test_podman_uninstall_puts_back_a_packaged_hook_file_that_install_changed(
        tmp_path: Path) -> None:
    hook, info = _packaged(tmp_path)
    packaged = hook.read_bytes()
    assert gpuhook("install", "--runtime", "podman", "--hooks-dir", str(hook.parent),
                   "--hook-binary", HOOK, "--config", "/etc/gpuhook/node.toml")[0] == 0
    assert hook.read_bytes() != packaged
    code, out = gpuhook("uninstall", "--runtime", "podman", "--hooks-dir", str(hook.parent),
                        "--dpkg-info-dir", str(info))
    assert code == 0, out
    assert hook.read_bytes() == packaged
    assert sorted(p.name for p in hook.parent.iterdir()) == ["gpuhook.json"]
