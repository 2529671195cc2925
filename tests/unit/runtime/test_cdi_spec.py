"""`gpuhook cdi generate` / `cdi list` and `inventory refresh` on CDI specs, through the CLI,
against the shipped fake nodes: the spec is valid against the CDI JSON schema Debian ships, uses
only the fields podman 4.3's CDI package knows, matches the golden files, is written atomically,
and goes stale (and is rewritten) when the inventory changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import HOSTS, INVENTORIES, REPO

GPUHOOK = [sys.executable, "-m", "gpuhook"]
GOLDEN = REPO / "tests" / "data" / "cdi"
# Debian 12: golang-github-container-orchestrated-devices-container-device-interface-dev 0.5.2.
SCHEMA_DIR = Path("/usr/share/gocode/src/github.com/container-orchestrated-devices/"
                  "container-device-interface/schema")
# The fields of container-device-interface 0.5.x's specs-go/config.go (what podman 4.3 decodes
# with UnmarshalStrict: any other field drops the whole file).
KNOWN_FIELDS = {
    "spec": {"cdiVersion", "kind", "devices", "containerEdits"},
    "device": {"name", "containerEdits"},
    "edits": {"env", "deviceNodes", "hooks", "mounts"},
    "node": {"path", "hostPath", "type", "major", "minor", "fileMode", "permissions", "uid",
             "gid"},
    "mount": {"hostPath", "containerPath", "options", "type"},
    "hook": {"hookName", "path", "args", "env", "timeout"},
}


def run(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [*GPUHOOK, *args] + (["--config", str(config)] if config else [])
    return subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO,
                          env={"PATH": os.environ["PATH"], "GPUHOOK_CONFIG": "/nonexistent"})


def node_config(tmp: Path, inventory: Path, host: Path, driver_files: bool = False) -> Path:
    """A config for a fake node; the shipped fake hosts have no driver user-space."""
    cfg = tmp / "gpuhook.toml"
    cfg.write_text(f'inventory = "{inventory}"\nhost-root = "{host}"\n'
                   f'log-file = "{tmp / "log"}"\ninventory-cache = "{tmp / "run" / "inv.json"}"\n'
                   f'driver-files = {"true" if driver_files else "false"}\n')
    return cfg


def generate(tmp: Path, inventory: str, fmt: str = "yaml") -> str:
    res = run("cdi", "generate", "--format", fmt,
              config=node_config(tmp, INVENTORIES / f"{inventory}.yaml", HOSTS / inventory))
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.mark.parametrize(("inventory", "fmt", "golden"), [
    pytest.param("8xa100-mig", "yaml", "8xa100-mig.yaml", id="the MIG node's spec as YAML"),
    pytest.param("1gpu", "json", "1gpu.json", id="the one-GPU node's spec as JSON"),
])
def test_generated_spec_matches_golden(inventory: str, fmt: str, golden: str,
                                       tmp_path: Path) -> None:
    assert generate(tmp_path, inventory, fmt) == (GOLDEN / golden).read_text()


def _schema_validator() -> Any:
    if not (SCHEMA_DIR / "schema.json").exists():
        pytest.skip("CDI schema missing (apt: golang-github-container-orchestrated-devices-"
                    "container-device-interface-dev)")
    from jsonschema import Draft7Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT7

    schema = json.loads((SCHEMA_DIR / "schema.json").read_text())
    defs = json.loads((SCHEMA_DIR / "defs.json").read_text())
    registry: Registry[Any] = Registry().with_resource(
        "defs.json", Resource.from_contents(defs, default_specification=DRAFT7))
    return Draft7Validator(schema, registry=registry)


@pytest.mark.parametrize("golden", ["8xa100-mig.yaml", "1gpu.json"])
def test_spec_is_valid_against_the_cdi_schema(golden: str) -> None:
    spec = yaml.safe_load((GOLDEN / golden).read_text())
    errors = [e.message for e in _schema_validator().iter_errors(spec)]
    assert errors == []


def test_the_schema_check_can_fail() -> None:
    bad = {"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu",
           "devices": [{"name": "0", "containerEdits": {"deviceNodes": [{"major": 1}]}}]}
    assert list(_schema_validator().iter_errors(bad))


def _unknown_fields(spec: dict[str, Any]) -> list[str]:
    bad = [f"spec.{k}" for k in set(spec) - KNOWN_FIELDS["spec"]]
    edits = [("containerEdits", spec.get("containerEdits", {}))] + [
        (f"devices[{d['name']}]", d.get("containerEdits", {})) for d in spec["devices"]]
    bad += [f"device.{k}" for d in spec["devices"] for k in set(d) - KNOWN_FIELDS["device"]]
    for where, e in edits:
        bad += [f"{where}.{k}" for k in set(e) - KNOWN_FIELDS["edits"]]
        for part, key in (("node", "deviceNodes"), ("mount", "mounts"), ("hook", "hooks")):
            bad += [f"{where}.{key}.{k}" for item in e.get(key, [])
                    for k in set(item) - KNOWN_FIELDS[part]]
    return bad


@pytest.mark.parametrize("golden", ["8xa100-mig.yaml", "1gpu.json"])
def test_spec_uses_only_fields_podman_4_knows(golden: str) -> None:
    assert _unknown_fields(yaml.safe_load((GOLDEN / golden).read_text())) == []


def test_yaml_quotes_names_a_yaml_1_1_reader_would_take_for_numbers() -> None:
    text = (GOLDEN / "8xa100-mig.yaml").read_text()
    assert 'name: "1:0"' in text and 'cdiVersion: "0.5.0"' in text


def test_output_is_written_atomically_and_refresh_rewrites_it(tmp_path: Path) -> None:
    inv = tmp_path / "inv.yaml"
    inv.write_text((INVENTORIES / "1gpu.yaml").read_text())
    cfg = node_config(tmp_path, inv, HOSTS / "1gpu")
    out = tmp_path / "cdi" / "nvidia.yaml"
    res = run("cdi", "generate", "--output", str(out), config=cfg)
    assert res.returncode == 0, res.stderr
    assert out.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in out.parent.iterdir()] == ["nvidia.yaml"]  # no temp file left
    listed = run("cdi", "list", "--cdi-dir", str(out.parent), config=cfg)
    assert listed.returncode == 0 and f"{out}: nvidia.com/gpu: current" in listed.stdout

    # The GPU's UUID changes (a different board in the slot): the spec on disk is stale.
    old_uuid = yaml.safe_load(inv.read_text())["gpus"][0]["uuid"]
    inv.write_text(inv.read_text().replace(old_uuid, "GPU-00000000-1111-2222-3333-444444444444"))
    listed = run("cdi", "list", "--cdi-dir", str(out.parent), config=cfg)
    assert listed.returncode == 1
    assert "stale" in listed.stdout and old_uuid in listed.stdout

    res = run("inventory", "refresh", config=cfg)
    assert res.returncode == 0, res.stderr
    assert f"cdi: {out}: rewritten" in res.stdout
    assert "GPU-00000000-1111-2222-3333-444444444444" in out.read_text()
    assert run("cdi", "list", "--cdi-dir", str(out.parent), config=cfg).returncode == 0


def test_list_names_two_files_defining_the_same_kind(tmp_path: Path) -> None:
    cfg = node_config(tmp_path, INVENTORIES / "1gpu.yaml", HOSTS / "1gpu")
    d = tmp_path / "cdi"
    for name in ("a.yaml", "b.json"):
        assert run("cdi", "generate", "--output", str(d / name), config=cfg).returncode == 0
    listed = run("cdi", "list", "--cdi-dir", str(d), config=cfg)
    assert f"kind also defined in {d / 'b.json'}" in listed.stdout, listed.stdout


@pytest.mark.parametrize(("args", "needle"), [
    pytest.param(["--output", "/tmp/x.txt"], "must end in .yaml or .json",
                 id="a file name runtimes would skip is refused"),
    pytest.param(["--output", "/tmp/x.yaml", "--format", "json"], "does not match",
                 id="a format that contradicts the extension is refused"),
    pytest.param(["--cdi-version", "0.4.0"], "too old", id="a version too old is refused"),
])
def test_generate_refuses(args: list[str], needle: str, tmp_path: Path) -> None:
    cfg = node_config(tmp_path, INVENTORIES / "1gpu.yaml", HOSTS / "1gpu")
    res = run("cdi", "generate", *args, config=cfg)
    assert res.returncode == 2
    assert needle in res.stderr


# --- with a driver: the common edits carry its files and the createContainer hook ---------------

@pytest.fixture(scope="module")
def driver_spec(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    """(spec text, host root, config) for the fake driver on the 8-GPU fake node."""
    from tests.fakedriver import build as fakedriver

    reason = fakedriver.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("cdi-driver")
    host = fakedriver.make_fake_host(fakedriver.build_fake_driver(tmp / "build", "8xa100-mig"),
                                     tmp / "host")
    cfg = node_config(tmp, host.inventory, host.root, driver_files=True)
    res = run("cdi", "generate", config=cfg)
    assert res.returncode == 0, res.stderr
    return res.stdout, host.root, cfg


def _normalized(text: str, host: Path, cfg: Path) -> str:
    return (text.replace(str(host), "/HOST").replace(str(cfg), "/CONFIG")
            .replace(sys.executable.rsplit("/", 1)[0] + "/gpuhook", "/GPUHOOK"))


def test_driver_spec_matches_golden(driver_spec: tuple[str, Path, Path]) -> None:
    text, host, cfg = driver_spec
    assert _normalized(text, host, cfg) == (GOLDEN / "fakedriver-8xa100-mig.yaml").read_text()


def test_driver_spec_is_valid_and_podman_4_readable(driver_spec: tuple[str, Path, Path]) -> None:
    spec = yaml.safe_load(driver_spec[0])
    assert [e.message for e in _schema_validator().iter_errors(spec)] == []
    assert _unknown_fields(spec) == []
    assert spec["cdiVersion"] == "0.5.0"


def test_driver_files_are_read_only_mounts_and_the_hook_has_its_own_env(
        driver_spec: tuple[str, Path, Path]) -> None:
    edits = yaml.safe_load(driver_spec[0])["containerEdits"]
    targets = {m["containerPath"] for m in edits["mounts"]}
    assert {"/usr/bin/nvidia-smi", "/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15"} <= targets
    assert all({"ro", "nosuid", "nodev"} <= set(m["options"]) for m in edits["mounts"])
    [hook] = edits["hooks"]
    assert hook["hookName"] == "createContainer"
    assert hook["args"][:3] == ["gpuhook", "hook", "create-container"]
    assert hook["env"] == ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
    driver = json.loads(hook["args"][hook["args"].index("--driver") + 1])
    assert driver["library_dir"] == ["/usr/lib/x86_64-linux-gnu", "/usr/lib/i386-linux-gnu"]
    assert driver["proc_driver_gpus"] == []  # per container, not per spec
    assert ["library", "libcuda.so.1", "libcuda.so.550.54.15"] in driver["symlinks"]


def test_imex_channel_spec_names_each_host_channel(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod of the fake IMEX channels needs root")
    import shutil
    import stat

    host = tmp_path / "host"
    shutil.copytree(HOSTS / "1gpu", host)
    devices = host / "proc" / "devices"
    devices.write_text(devices.read_text().replace(
        "Character devices:\n", "Character devices:\n234 nvidia-caps-imex-channels\n"))
    chans = host / "dev" / "nvidia-caps-imex-channels"
    chans.mkdir(parents=True)
    for c in (0, 3):
        os.mknod(chans / f"channel{c}", stat.S_IFCHR | 0o666, os.makedev(234, c))
    cfg = node_config(tmp_path, INVENTORIES / "1gpu.yaml", host)
    res = run("cdi", "generate", "--class", "imex-channel", "--format", "json", config=cfg)
    assert res.returncode == 0, res.stderr
    spec = json.loads(res.stdout)
    assert spec["kind"] == "nvidia.com/imex-channel" and spec["cdiVersion"] == "0.5.0"
    nodes = {d["name"]: [(n["path"], n["major"], n["minor"])
                         for n in d["containerEdits"]["deviceNodes"]] for d in spec["devices"]}
    assert nodes == {
        "0": [("/dev/nvidia-caps-imex-channels/channel0", 234, 0)],
        "3": [("/dev/nvidia-caps-imex-channels/channel3", 234, 3)],
        "all": [("/dev/nvidia-caps-imex-channels/channel0", 234, 0),
                ("/dev/nvidia-caps-imex-channels/channel3", 234, 3)]}
    assert "containerEdits" not in spec  # no void: asking for a channel asks for no GPU
    assert [e.message for e in _schema_validator().iter_errors(spec)] == []


def test_imex_channel_spec_without_channels_is_an_error(tmp_path: Path) -> None:
    cfg = node_config(tmp_path, INVENTORIES / "1gpu.yaml", HOSTS / "1gpu")
    res = run("cdi", "generate", "--class", "imex-channel", config=cfg)
    assert res.returncode == 1
    assert "no IMEX channel nodes" in res.stderr


def test_refresh_rewrites_what_it_can_and_names_what_it_cannot(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod of the fake IMEX channel needs root")
    import shutil
    import stat

    host = tmp_path / "host"
    shutil.copytree(HOSTS / "1gpu", host)
    devices = host / "proc" / "devices"
    devices.write_text(devices.read_text().replace(
        "Character devices:\n", "Character devices:\n234 nvidia-caps-imex-channels\n"))
    channel = host / "dev" / "nvidia-caps-imex-channels" / "channel0"
    channel.parent.mkdir(parents=True)
    os.mknod(channel, stat.S_IFCHR | 0o666, os.makedev(234, 0))
    cfg = node_config(tmp_path, INVENTORIES / "1gpu.yaml", host)
    gpu, imex = tmp_path / "cdi" / "nvidia.yaml", tmp_path / "cdi" / "imex.json"
    assert run("cdi", "generate", "--output", str(gpu), config=cfg).returncode == 0
    assert run("cdi", "generate", "--class", "imex-channel", "--output", str(imex),
               config=cfg).returncode == 0
    channel.unlink()  # the IMEX daemon's channels are gone
    gpu.write_text("stale\n")
    res = run("inventory", "refresh", config=cfg)
    assert res.returncode == 1
    assert f"cdi: {gpu}: rewritten" in res.stdout
    assert f"{imex}: not rewritten: no IMEX channel nodes" in res.stderr
    assert yaml.safe_load(gpu.read_text())["kind"] == "nvidia.com/gpu"
    listed = run("cdi", "list", "--cdi-dir", str(gpu.parent), config=cfg)
    assert listed.returncode == 1
    assert f"{gpu}: nvidia.com/gpu: current" in listed.stdout
    assert f"{imex}: nvidia.com/imex-channel: stale (cannot generate it now" in listed.stdout


@pytest.mark.parametrize(("args", "path"), [
    pytest.param([], "/var/run/cdi/nvidia.yaml", id="--output alone means /var/run/cdi"),
    pytest.param(["--class", "imex-channel"], "/var/run/cdi/nvidia-imex-channel.yaml",
                 id="the imex class has its own default file"),
])
def test_output_without_a_file_names_the_default_location(args: list[str], path: str,
                                                          tmp_path: Path) -> None:
    if args and os.geteuid() != 0:
        pytest.skip("the imex case needs root for its channel node")
    host = HOSTS / "1gpu"
    if args:
        import shutil
        import stat

        host = tmp_path / "host"
        shutil.copytree(HOSTS / "1gpu", host)
        devices = host / "proc" / "devices"
        devices.write_text(devices.read_text().replace(
            "Character devices:\n", "Character devices:\n234 nvidia-caps-imex-channels\n"))
        (host / "dev" / "nvidia-caps-imex-channels").mkdir(parents=True)
        os.mknod(host / "dev" / "nvidia-caps-imex-channels" / "channel0",
                 stat.S_IFCHR | 0o666, os.makedev(234, 0))
    cfg = node_config(tmp_path, INVENTORIES / "1gpu.yaml", host)
    res = run("cdi", "generate", *args, "--output", "--dry-run", config=cfg)
    assert res.returncode == 0, res.stderr
    assert f"dry run: would write {path}" in res.stderr
    assert not Path(path).exists() or "gpuhook" not in Path(path).read_text()[:200]
