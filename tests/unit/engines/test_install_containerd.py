"""`gpuhook install/uninstall --runtime containerd` on real-world configs: what containerd
itself writes (`containerd config default`, captured from 1.6.20 and also generated live), a
containerd 2.x v3 config, a commented hand-kept config that already has an nvidia runtime, and a
version-1 config. Through the real CLI (click), on files in a temp dir."""

from __future__ import annotations

import difflib
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gpuhook.cli.main import cli
from tests.conftest import REPO

DATA = REPO / "tests" / "data" / "containerd"
BINARY = "/usr/bin/gpuhook-runtime"

SAMPLES = {
    "containerd 1.6.20 config default": ("config-default-1.6.20.toml", 2),
    "containerd 2.x version 3 config": ("config-v3-2.0.toml", 3),
    "commented config with an existing nvidia runtime": ("config-v2-comments-nvidia.toml", 2),
    "version 1 config (plugins.cri)": ("config-v1.toml", 1),
}
CRI = {1: ["plugins", "cri"], 2: ["plugins", "io.containerd.grpc.v1.cri"],
       3: ["plugins", "io.containerd.cri.v1.runtime"]}


def gpuhook(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def install(config: Path, *extra: str) -> tuple[int, str]:
    return gpuhook("install", "--runtime", "containerd", "--engine-config", str(config),
                   "--runtime-binary", BINARY, *extra)


def uninstall(config: Path, *extra: str) -> tuple[int, str]:
    return gpuhook("uninstall", "--runtime", "containerd", "--engine-config", str(config), *extra)


def get(data: Any, path: list[str]) -> Any:
    for key in path:
        data = data[key]
    return data


@pytest.fixture(params=list(SAMPLES), ids=list(SAMPLES))
def sample(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, bytes, int]:
    name, version = SAMPLES[request.param]
    path = tmp_path / "config.toml"
    shutil.copyfile(DATA / name, path)
    return path, path.read_bytes(), version


def test_install_adds_the_runtime_with_runcs_options(sample: tuple[Path, bytes, int]) -> None:
    path, original, version = sample
    code, out = install(path)
    assert code == 0, out
    before = tomllib.loads(original.decode())
    after = tomllib.loads(path.read_text())
    runtimes = [*CRI[version], "containerd", "runtimes"]
    ours = get(after, [*runtimes, "nvidia"])
    # A runtime table that is there is edited in place; a new one copies runc's settings.
    runc = get(before, [*runtimes, "nvidia" if b"runtimes.nvidia]" in original else "runc"])
    assert ours["runtime_type"] == "io.containerd.runc.v2"
    assert ours["options"]["BinaryName"] == BINARY
    assert {k: v for k, v in ours["options"].items() if k != "BinaryName"} == {
        k: v for k, v in runc.get("options", {}).items() if k != "BinaryName"}
    assert {k: v for k, v in ours.items() if k != "options"} == {
        **{k: v for k, v in runc.items() if k != "options"},
        "runtime_type": "io.containerd.runc.v2"}
    # Everything else is the same data...
    get(after, runtimes).pop("nvidia")
    get(before, runtimes).pop("nvidia", None)
    assert after == before
    assert "restart containerd to take effect" in out


def test_install_keeps_every_original_byte_but_a_replaced_runtime(
        sample: tuple[Path, bytes, int]) -> None:
    path, original, _ = sample
    install(path)
    old = original.decode().splitlines(keepends=True)
    new = path.read_text().splitlines(keepends=True)
    removed = [line[2:] for line in difflib.ndiff(old, new) if line.startswith("- ")]
    if b"runtimes.nvidia]" not in original:
        assert path.read_bytes().startswith(original)  # the runtime is appended; all else kept
        return
    # The nvidia runtime that was there is edited in place: only its BinaryName line changes.
    assert removed == [line for line in old if "BinaryName" in line and "nvidia" in line]
    assert len(removed) == 1


def test_second_install_changes_nothing(sample: tuple[Path, bytes, int]) -> None:
    path, _, _ = sample
    assert install(path, "--set-as-default")[0] == 0
    once = path.read_bytes()
    code, out = install(path, "--set-as-default")
    assert code == 0
    assert "nothing changed" in out
    assert path.read_bytes() == once


@pytest.mark.parametrize("extra", [(), ("--set-as-default",)],
                         ids=["plain install", "install as the default runtime"])
def test_uninstall_restores_the_original_byte_for_byte(
        sample: tuple[Path, bytes, int], extra: tuple[str, ...]) -> None:
    path, original, _ = sample
    install(path, *extra)
    assert path.read_bytes() != original
    assert Path(str(path) + ".gpuhook.bak").read_bytes() == original
    code, out = uninstall(path)
    assert code == 0, out
    assert path.read_bytes() == original
    assert not Path(str(path) + ".gpuhook.bak").exists()


def test_dry_run_prints_the_diff_and_changes_nothing(sample: tuple[Path, bytes, int]) -> None:
    path, original, _ = sample
    code, out = install(path, "--set-as-default", "--dry-run")
    assert code == 0
    assert out.startswith(f"--- {path}\n+++ {path}\n@@ ")
    # an appended table is flush left: indented like runc's, it would read as nested in the
    # table that happens to be last in the file
    assert b"runtimes.nvidia]" in original or (
        '\n+runtime_type = "io.containerd.runc.v2"' in out and "\n+[plugins" in out
        and not any(line.startswith(("+ ", "+\t")) and line.lstrip("+ \t").startswith("[")
                    for line in out.splitlines()))
    assert f'BinaryName = "{BINARY}"' in out
    assert "restart containerd" in out
    assert path.read_bytes() == original
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.toml"]


def test_set_as_default_sets_default_runtime_name(sample: tuple[Path, bytes, int]) -> None:
    path, _, version = sample
    install(path, "--set-as-default")
    after = tomllib.loads(path.read_text())
    assert get(after, [*CRI[version], "containerd", "default_runtime_name"]) == "nvidia"


def test_existing_nvidia_runtime_is_replaced_and_uninstall_brings_it_back(
        tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    shutil.copyfile(DATA / "config-v2-comments-nvidia.toml", path)
    original = path.read_bytes()
    install(path)
    nvidia = tomllib.loads(path.read_text())["plugins"]["io.containerd.grpc.v1.cri"][
        "containerd"]["runtimes"]["nvidia"]
    assert nvidia["options"] == {"SystemdCgroup": True, "BinaryName": BINARY}
    text = path.read_text()
    assert "nvidia-container-runtime" not in text.replace("# Added by `nvidia-ctk", "")
    assert "# Do not regenerate" in text and "# mirrored" in text
    uninstall(path)
    assert path.read_bytes() == original


def test_uninstall_after_a_user_edit_removes_only_gpuhooks_keys(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    shutil.copyfile(DATA / "config-default-1.6.20.toml", path)
    install(path, "--set-as-default")
    edited = path.read_text().replace('sandbox_image = "registry.k8s.io/pause:3.6"',
                                      'sandbox_image = "my.registry/pause:3.9"')
    path.write_text(edited)
    code, out = uninstall(path)
    assert code == 0, out
    after = tomllib.loads(path.read_text())
    cri = after["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "my.registry/pause:3.9"
    assert "nvidia" not in cri["containerd"]["runtimes"]
    assert cri["containerd"]["default_runtime_name"] == "runc"
    expected = (DATA / "config-default-1.6.20.toml").read_text().replace(
        "registry.k8s.io/pause:3.6", "my.registry/pause:3.9")
    assert path.read_text() == expected


def test_drop_in_writes_a_file_listed_in_imports_and_uninstall_removes_both(
        tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    shutil.copyfile(DATA / "config-default-1.6.20.toml", path)
    original = path.read_bytes()
    conf_d = tmp_path / "conf.d"
    code, out = install(path, "--drop-in", "--drop-in-dir", str(conf_d), "--set-as-default",
                        "--create-dirs")
    assert code == 0, out
    drop_in = conf_d / "99-gpuhook.toml"
    main = tomllib.loads(path.read_text())
    assert main["imports"] == [str(drop_in)]
    assert "nvidia" not in main["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    extra = tomllib.loads(drop_in.read_text())
    assert extra["version"] == 2
    cri = extra["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["containerd"]["runtimes"]["nvidia"]["options"]["BinaryName"] == BINARY
    assert cri["containerd"]["default_runtime_name"] == "nvidia"
    # containerd 1.x replaces a whole plugin section from an import: the drop-in carries it all.
    assert cri["sandbox_image"] == main["plugins"]["io.containerd.grpc.v1.cri"]["sandbox_image"]
    assert cri["containerd"]["runtimes"]["runc"] == \
        main["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["runc"]
    once = (path.read_bytes(), drop_in.read_bytes())
    assert "nothing changed" in install(path, "--drop-in", "--drop-in-dir", str(conf_d),
                                        "--set-as-default")[1]
    assert (path.read_bytes(), drop_in.read_bytes()) == once
    code, out = uninstall(path, "--drop-in-dir", str(conf_d))
    assert code == 0, out
    assert path.read_bytes() == original
    assert not drop_in.exists()


def test_a_missing_config_gets_a_version_2_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    code, out = install(path, "--set-as-default")
    assert code == 0, out
    data = tomllib.loads(path.read_text())
    assert data["version"] == 2
    containerd = data["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]
    assert containerd["default_runtime_name"] == "nvidia"
    assert containerd["runtimes"]["nvidia"]["options"]["BinaryName"] == BINARY


@pytest.mark.parametrize("text, message", [
    ("version = 7\n", "version 7"),
    ("version = 2\n[plugins\n", "config.toml"),
], ids=["an unknown config version is refused", "a config that is not TOML is refused"])
def test_bad_configs_are_refused_and_left_alone(tmp_path: Path, text: str,
                                                message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    code, out = install(path)
    assert code == 1
    assert message in out
    assert path.read_text() == text


def _containerd_default() -> str:
    if shutil.which("containerd") is None:
        pytest.skip("containerd is not installed (apt-get install containerd)")
    return subprocess.run(["containerd", "config", "default"], check=True, capture_output=True,
                          text=True, timeout=60).stdout


def test_live_containerd_config_default_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(_containerd_default())
    original = path.read_bytes()
    assert install(path, "--set-as-default")[0] == 0
    once = path.read_bytes()
    assert install(path, "--set-as-default")[0] == 0
    assert path.read_bytes() == once
    dump = subprocess.run(["containerd", "--config", str(path), "config", "dump"], check=True,
                          capture_output=True, text=True, timeout=60).stdout
    runtime = tomllib.loads(dump)["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]
    assert runtime["default_runtime_name"] == "nvidia"
    assert runtime["runtimes"]["nvidia"]["options"]["BinaryName"] == BINARY
    assert runtime["runtimes"]["nvidia"]["runtime_type"] == "io.containerd.runc.v2"
    assert uninstall(path)[0] == 0
    assert path.read_bytes() == original


def test_live_containerd_reads_the_drop_in_with_the_main_settings(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(_containerd_default().replace('sandbox_image = "registry.k8s.io/pause:3.6"',
                                                  'sandbox_image = "local/pause:1"'))
    install(path, "--drop-in", "--drop-in-dir", str(tmp_path / "conf.d"), "--create-dirs")
    dump = subprocess.run(["containerd", "--config", str(path), "config", "dump"], check=True,
                          capture_output=True, text=True, timeout=60).stdout
    cri = tomllib.loads(dump)["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["containerd"]["runtimes"]["nvidia"]["options"]["BinaryName"] == BINARY
    assert cri["sandbox_image"] == "local/pause:1"
    assert "runc" in cri["containerd"]["runtimes"]


def _add_after(text: str, anchor_suffix: str, line: str) -> str:
    """Insert `line` (indented like the anchor's next line) after the line ending in anchor."""
    lines = text.splitlines(keepends=True)
    at = next(i for i, x in enumerate(lines) if x.rstrip().endswith(anchor_suffix))
    nxt = lines[at + 1] if at + 1 < len(lines) and lines[at + 1].strip() else lines[at]
    indent = nxt[:len(nxt) - len(nxt.lstrip())]
    if nxt is lines[at]:
        indent += "  "
    lines.insert(at + 1, indent + line + "\n")
    return "".join(lines)


def test_second_install_keeps_keys_the_operator_added_to_our_runtime(
        sample: tuple[Path, bytes, int]) -> None:
    path, _, version = sample
    assert install(path)[0] == 0
    text = path.read_text()
    text = _add_after(text, "runtimes.nvidia]", 'sandbox_mode = "podsandbox"  # ours')
    text = _add_after(text, "runtimes.nvidia.options]", "operator_note = \"keep me\"")
    path.write_text(text)
    edited = path.read_bytes()
    code, out = install(path)
    assert code == 0, out
    assert "nothing changed" in out
    assert path.read_bytes() == edited
    # A changed binary rewrites that one line only; the operator's keys stay.
    code, out = install(path, "--runtime-binary", "/opt/gpuhook/bin/gpuhook-runtime")
    assert code == 0, out
    old, new = edited.decode().splitlines(), path.read_text().splitlines()
    assert len(old) == len(new)
    changed = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
    assert len(changed) == 1
    assert changed[0][1].strip() == 'BinaryName = "/opt/gpuhook/bin/gpuhook-runtime"'
    ours = get(tomllib.loads(path.read_text()), [*CRI[version], "containerd", "runtimes",
                                                 "nvidia"])
    assert ours["sandbox_mode"] == "podsandbox"
    assert ours["options"]["operator_note"] == "keep me"
    assert ours["options"]["BinaryName"] == "/opt/gpuhook/bin/gpuhook-runtime"


def test_install_over_a_runtime_without_options_adds_only_binary_name(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    original = ('version = 2\n\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]\n'
                '  runtime_type = "io.containerd.runtime.v1.linux"  # old shim\n'
                '  pod_annotations = ["a"]\n')
    path.write_text(original)
    code, out = install(path)
    assert code == 0, out
    text = path.read_text()
    assert "# old shim" in text
    nvidia = tomllib.loads(text)["plugins"]["io.containerd.grpc.v1.cri"]["containerd"][
        "runtimes"]["nvidia"]
    assert nvidia == {"runtime_type": "io.containerd.runc.v2", "pod_annotations": ["a"],
                      "options": {"BinaryName": BINARY}}
    assert "nothing changed" in install(path)[1]
    assert uninstall(path)[0] == 0
    assert path.read_text() == original


@pytest.mark.parametrize("name", ["config-default-1.6.20.toml",
                                  "config-v2-comments-nvidia.toml"],
                         ids=["a fresh runtime table", "a runtime table that was there"])
def test_uninstall_keeps_a_comment_added_after_install(tmp_path: Path, name: str) -> None:
    path = tmp_path / "config.toml"
    shutil.copyfile(DATA / name, path)
    original = path.read_text()
    install(path, "--set-as-default")
    note = "# operator: GPU nodes pinned to pause 3.9"
    path.write_text(_add_after(path.read_text(), '.v1.cri"]', note))
    code, out = uninstall(path)
    assert code == 0, out
    assert path.read_text() == _add_after(original, '.v1.cri"]', note)
    assert not Path(str(path) + ".gpuhook.bak").exists()


MINIMAL = 'version = 2\n\n[grpc]\n  address = "/run/containerd/containerd.sock"\n'
EMPTY_RUNTIMES = ('version = 2\n\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes]\n\n'
                  '[grpc]\n  address = "/run/containerd/containerd.sock"\n')


@pytest.mark.parametrize("original, kept", [(MINIMAL, False), (EMPTY_RUNTIMES, True)],
                         ids=["tables that install made go",
                              "an empty runtimes that was there stays"])
@pytest.mark.parametrize("extra", [(), ("--set-as-default",)],
                         ids=["plain install", "install as the default runtime"])
def test_uninstall_after_an_edit_drops_only_tables_install_made(
        tmp_path: Path, extra: tuple[str, ...], original: str, kept: bool) -> None:
    path = tmp_path / "config.toml"
    path.write_text(original)
    install(path, *extra)
    path.write_text(path.read_text().replace("[grpc]", "[grpc]  # edited"))
    code, out = uninstall(path)
    assert code == 0, out
    data = tomllib.loads(path.read_text())
    assert data == tomllib.loads(original)
    cri = data.get("plugins", {}).get("io.containerd.grpc.v1.cri", {})
    assert ("runtimes" in cri.get("containerd", {})) is kept
    if not kept:
        assert path.read_text() == original.replace("[grpc]", "[grpc]  # edited")
    assert not Path(str(path) + ".gpuhook.bak").exists()


@pytest.mark.parametrize("original", [
    '[plugins.cri.containerd]\n  snapshotter = "overlayfs"\n',
    '# no version key\n[grpc]\nversionX = 1\naddress = "/run/c.sock"\n',
    'versionX = 1\nroot = "/var/lib/containerd"\n\n[grpc]\naddress = "/run/c.sock"\n',
], ids=["the first line is a table header", "a table holds an unindented versionX key",
        "a top-level versionX key and no version"])
def test_drop_in_imports_is_a_top_level_key(tmp_path: Path, original: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(original)
    conf_d = tmp_path / "conf.d"
    code, out = install(path, "--drop-in", "--drop-in-dir", str(conf_d), "--create-dirs")
    assert code == 0, out
    data = tomllib.loads(path.read_text())
    assert data.pop("imports") == [str(conf_d / "99-gpuhook.toml")]
    assert data == tomllib.loads(original)
    assert uninstall(path, "--drop-in-dir", str(conf_d))[0] == 0
    assert path.read_text() == original
