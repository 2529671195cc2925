"""`gpuhook dry-run`: exit codes, the contract's JSON, and a corpus of malformed inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.fakedriver.build import FakeHost
from tests.unit.specs import MIG8, MIG8_HOST, spec

GPUHOOK = [sys.executable, "-m", "gpuhook"]
# Keys beyond the contract's: the driver files (README "Driver files").
DRIVER_KEYS = {"driver_files", "symlinks", "update_ldcache", "proc_driver_gpus"}
# The shipped defaults, but no driver files: the shipped fake hosts have no driver user-space.
NO_DRIVER_CONFIG = REPO / "tests" / "data" / "no-driver-files.toml"
CONTRACT_KEYS = {"privileged", "source", "device_ids", "ignored", "devices", "device_nodes",
                 "cgroup_rules", "driver_capabilities", "mig_monitor", "mig_config"}
CDI_KEYS = {"imex_channels", "gated_families"}  # issue 15


def dry_run(bundle: Path, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ["PATH"], "GPUHOOK_CONFIG": "/nonexistent-use-flags"}
    cmd = [*GPUHOOK, "dry-run", str(bundle), "--inventory", MIG8, "--host-root", MIG8_HOST,
           "--config", str(NO_DRIVER_CONFIG), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or base, check=False,
                          cwd=REPO)


def bundle_with(tmp_path: Path, content: bytes | str | dict[str, Any]) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = json.dumps(content).encode() if isinstance(content, dict) else (
        content.encode() if isinstance(content, str) else content)
    (tmp_path / "config.json").write_bytes(data)
    return tmp_path


def test_example_bundle_with_shipped_config() -> None:
    r = subprocess.run([*GPUHOOK, "dry-run", "examples/bundle", "--config",
                        "examples/config.toml"], capture_output=True, text=True, cwd=REPO,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert "request: from volume-mounts: 3, MIG-" in r.stdout
    assert "ignored: envvar 'all'" in r.stdout
    assert "node: /dev/nvidia3 c 195:3 mode 0666" in r.stdout
    assert "cgroup: allow c 511:" in r.stdout


def test_json_is_exactly_one_contract_object(tmp_path: Path) -> None:
    r = dry_run(bundle_with(tmp_path, spec(ids=["1:0", "3"])), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) == CONTRACT_KEYS | DRIVER_KEYS | CDI_KEYS
    assert out["source"] == "volume-mounts"
    assert out["device_ids"] == ["1:0", "3"]
    assert out["devices"][0] == {"kind": "mig", "index": "1:0", "uuid": out["devices"][0]["uuid"],
                                 "minor": 1}
    assert out["devices"][0]["uuid"].startswith("MIG-")
    assert {"path": "/dev/nvidiactl", "type": "c", "major": 195, "minor": 255,
            "file_mode": 0o666} in out["device_nodes"]
    assert {"type": "c", "major": 195, "minor": 3, "access": "rwm"} in out["cgroup_rules"]
    assert out["driver_capabilities"] == ["compute", "utility"]
    assert (out["mig_monitor"], out["mig_config"]) == (False, False)


def test_empty_plan_exits_zero(tmp_path: Path) -> None:
    r = dry_run(bundle_with(tmp_path, spec()), "--json")
    assert r.returncode == 0
    out = json.loads(r.stdout)
    assert (out["source"], out["device_nodes"], out["devices"]) == ("none", [], [])


def test_unknown_id_exits_one_with_json_error(tmp_path: Path) -> None:
    r = dry_run(bundle_with(tmp_path, spec(ids=["GPU-nope"])), "--json")
    assert r.returncode == 1
    err = json.loads(r.stdout)["error"]
    assert "GPU-nope not found; available: MIG-" in err and "(0:0)" in err
    assert "(0), " not in err, "GPU 0 is in MIG mode: not grantable whole"
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_policy_fail_exits_one(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('unprivileged-envvar-action = "fail"\ndriver-files = false\n')
    b = bundle_with(tmp_path / "b", spec(env=["NVIDIA_VISIBLE_DEVICES=all"]))
    r = subprocess.run([*GPUHOOK, "dry-run", str(b), "--config", str(cfg), "--inventory", MIG8,
                        "--host-root", MIG8_HOST], capture_output=True, text=True, check=False)
    assert r.returncode == 1
    assert "refused" in r.stderr


def test_config_from_environment_variable(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'inventory = "{MIG8}"\nhost-root = "{MIG8_HOST}"\ndriver-files = false\n'
                   "accept-nvidia-visible-devices-envvar-when-unprivileged = true\n")
    b = bundle_with(tmp_path / "b", spec(env=["NVIDIA_VISIBLE_DEVICES=3"]))
    r = subprocess.run([*GPUHOOK, "dry-run", str(b), "--json"], capture_output=True, text=True,
                       check=False, env={"PATH": os.environ["PATH"], "GPUHOOK_CONFIG": str(cfg)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["source"] == "envvar"


def test_help_teaches_exit_codes_and_example() -> None:
    r = subprocess.run([*GPUHOOK, "dry-run", "--help"], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0
    assert "Exit 1" in r.stdout and "Exit 2" in r.stdout and "examples/bundle" in r.stdout


def _env(*items: str) -> dict[str, Any]:
    return spec(env=list(items))


def _privileged_env(*items: str) -> dict[str, Any]:
    """A privileged container's env is acted on, so its content can be malformed; an
    unprivileged container's is ignored whatever it holds."""
    return spec(env=list(items), privileged=True)


def _with(path: tuple[str, ...], value: object) -> dict[str, Any]:
    s = spec(ids=["3"])
    node: Any = s
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return s


def _without(*keys: str) -> dict[str, Any]:
    s = spec(ids=["3"])
    for k in keys:
        del s[k]
    return s


MALFORMED: list[Any] = [
    pytest.param(b"", id="empty file"),
    pytest.param(b"{", id="truncated JSON"),
    pytest.param(b"not json", id="not JSON"),
    pytest.param(b"\xff\xfe{}", id="non UTF-8 bytes"),
    pytest.param(b'{"process": {"env": ["A=\xe9"]}}', id="latin-1 byte inside a string"),
    pytest.param(b"[]", id="top level is a list"),
    pytest.param(b"null", id="top level is null"),
    pytest.param(b'"spec"', id="top level is a string"),
    pytest.param(b"[" * 100000 + b"]" * 100000, id="nested too deeply"),
    pytest.param(_without("process"), id="missing process"),
    pytest.param(_with(("process",), "sh"), id="process is a string"),
    pytest.param(_with(("process",), None), id="process is null"),
    pytest.param(_with(("process", "env"), "A=1"), id="env is a string"),
    pytest.param(_with(("process", "env"), [1, 2]), id="env entries are numbers"),
    pytest.param(_with(("process", "env"), ["NOEQUALS"]), id="env entry without equals"),
    pytest.param(_with(("process", "env"), ["=value"]), id="env entry with empty key"),
    pytest.param(_env("NVIDIA_VISIBLE_DEVICES=0\u0000,1"), id="NUL byte in env"),
    pytest.param(_with(("process", "env"), [f"V{i}=x" for i in range(70000)]),
                 id="huge env"),
    pytest.param(_privileged_env("NVIDIA_VISIBLE_DEVICES="
                                 + ",".join(str(i) for i in range(5000))),
                 id="huge device list"),
    pytest.param(_privileged_env("NVIDIA_VISIBLE_DEVICES=0;reboot"),
                 id="device id with shell characters"),
    pytest.param(_privileged_env("NVIDIA_VISIBLE_DEVICES=" + "A" * 300), id="over long device id"),
    pytest.param(_with(("process", "capabilities"), "CAP_SYS_ADMIN"),
                 id="capabilities is a string"),
    pytest.param(_with(("process", "capabilities"), {"bounding": "CAP_SYS_ADMIN"}),
                 id="bounding is a string"),
    pytest.param(_with(("process", "capabilities"), {"bounding": [1]}),
                 id="bounding has a number"),
    pytest.param(_with(("mounts",), {"destination": "/x"}), id="mounts is an object"),
    pytest.param(_with(("mounts",), ["/dev/null"]), id="mount is a string"),
    pytest.param(_with(("mounts",), [{"source": "/dev/null"}]), id="mount without destination"),
    pytest.param(_with(("mounts",), [{"destination": 5, "source": "/dev/null"}]),
                 id="mount destination is a number"),
    pytest.param(_with(("mounts",), [{"destination": "/var/run/nvidia-container-devices/0\u0000",
                                      "source": "/dev/null"}]), id="NUL byte in mount"),
    pytest.param(_with(("mounts",), [{"destination": "/var/run/nvidia-container-devices/0",
                                      "source": ["/dev/null"]}]), id="mount source is a list"),
    pytest.param(_with(("mounts",),
                       [{"destination": "/var/run/nvidia-container-devices/../../etc",
                         "source": "/dev/null"}]), id="traversal in device mount"),
    pytest.param(_with(("root",), "rootfs"), id="root is a string"),
    pytest.param(_with(("root",), {"path": 7}), id="root path is a number"),
    pytest.param(_with(("ociVersion",), 1), id="ociVersion is a number"),
    pytest.param(b"x" * (17 << 20), id="spec larger than 16 MiB"),
]


@pytest.mark.parametrize("content", MALFORMED)
def test_malformed_input_exits_two_with_one_clear_line(tmp_path: Path, content: Any) -> None:
    r = dry_run(bundle_with(tmp_path, content))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpuhook: "), r.stderr
    assert len(lines[0]) < 600


def test_malformed_corpus_is_big_enough() -> None:
    assert len(MALFORMED) >= 30


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        pytest.param(["dry-run"], "Missing argument", id="no bundle"),
        pytest.param(["dry-run", "/nonexistent-bundle"], "config.json", id="missing bundle"),
        pytest.param(["dry-run", "examples/bundle", "--inventory", "/nonexistent.yaml"],
                     "/nonexistent.yaml", id="missing inventory file"),
        pytest.param(["dry-run", "examples/bundle", "--config", "/nonexistent.toml"],
                     "/nonexistent.toml", id="missing config file"),
        pytest.param(["dry-run", "examples/bundle", "--bogus"], "No such option",
                     id="unknown option"),
    ],
)
def test_usage_errors_exit_two(args: list[str], fragment: str) -> None:
    r = subprocess.run([*GPUHOOK, *args], capture_output=True, text=True, cwd=REPO, check=False)
    assert r.returncode == 2, r.stderr
    assert fragment in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("config_text", "fragment"),
    [
        pytest.param("bogus-key = 1\n", "unknown key 'bogus-key'", id="unknown key"),
        pytest.param("mode = 'fast'\n", "mode must be one of spec, hook", id="bad choice"),
        pytest.param("allow-mig-monitor-unprivileged = 'yes'\n", "must be bool",
                     id="wrong type"),
        pytest.param("runtimes = []\n", "non-empty list", id="empty runtimes"),
        pytest.param("inventory = \n", "config", id="invalid TOML"),
    ],
)
def test_bad_config_exits_two(tmp_path: Path, config_text: str, fragment: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(config_text)
    r = subprocess.run([*GPUHOOK, "dry-run", "examples/bundle", "--config", str(cfg)],
                       capture_output=True, text=True, cwd=REPO, check=False)
    assert r.returncode == 2
    assert fragment in r.stderr


@pytest.mark.parametrize(
    ("yaml_text", "fragment"),
    [
        pytest.param("gpus: [\n", "not valid YAML", id="broken YAML"),
        pytest.param("- 1\n", "expected a mapping", id="top level list"),
        pytest.param('driver_version: "1"\ncuda_version: "1"\ngpus:\n  - {index: 0}\n',
                     "missing uuid", id="GPU without uuid"),
        pytest.param('driver_version: "1"\ncuda_version: "1"\ngpus:\n'
                     "  - {index: 0, minor: 0, uuid: GPU-a, pci_bus_id: x, name: n}\n"
                     "  - {index: 1, minor: 0, uuid: GPU-b, pci_bus_id: y, name: n}\n",
                     "duplicate GPU minor 0", id="duplicate minors"),
        pytest.param('driver_version: "1"\ncuda_version: "1"\ngpus:\n'
                     "  - {index: 0, minor: 0, uuid: GPU-a, pci_bus_id: x, name: n,"
                     " mig_devices: [{index: 0, uuid: MIG-a, gi: 1, ci: 0, profile: p}]}\n",
                     "mig_enabled is false", id="MIG devices on a non-MIG GPU"),
        pytest.param('driver_version: "1"\ncuda_version: "1"\ngpus:\n'
                     "  - {index: true, minor: 0, uuid: GPU-a, pci_bus_id: x, name: n}\n",
                     "index must be int", id="boolean index"),
    ],
)
def test_bad_inventory_exits_two(tmp_path: Path, yaml_text: str, fragment: str) -> None:
    inv = tmp_path / "inv.yaml"
    inv.write_text(yaml_text)
    b = bundle_with(tmp_path / "b", spec(ids=["0"]))
    r = subprocess.run([*GPUHOOK, "dry-run", str(b), "--inventory", str(inv), "--host-root",
                        MIG8_HOST], capture_output=True, text=True, check=False,
                       env={"PATH": os.environ["PATH"]})
    assert r.returncode == 2, r.stderr
    assert fragment in r.stderr


def test_dry_run_shows_the_driver_files_of_the_fake_driver(
        tmp_path: Path, fake_driver_host: FakeHost) -> None:
    b = bundle_with(tmp_path / "b", spec(ids=["0"]))
    args = [*GPUHOOK, "dry-run", str(b), "--inventory", str(fake_driver_host.inventory),
            "--host-root", str(fake_driver_host.root), "--config", str(REPO / "config" /
                                                                   "config.toml")]
    env = {"PATH": os.environ["PATH"]}
    out = json.loads(subprocess.run([*args, "--json"], capture_output=True, text=True,
                                    check=True, env=env).stdout)
    libcuda = f"libcuda.so.{fake_driver_host.version}"
    assert {"kind": "library", "host_path": str(fake_driver_host.lib64 / libcuda),
            "container_path": libcuda, "options": ["bind", "ro", "nosuid", "nodev"]
            } in out["driver_files"]
    assert {"kind": "library", "path": "libcuda.so", "target": "libcuda.so.1"} in out["symlinks"]
    assert out["update_ldcache"] is True
    assert out["proc_driver_gpus"] == ["0000:00:1e.0"]
    text = subprocess.run(args, capture_output=True, text=True, check=True, env=env).stdout
    assert f"driver file: library <library dir>/{libcuda} <- " in text
    assert "symlink: <library dir>/libcuda.so -> libcuda.so.1" in text
    assert "driver file: binary /usr/bin/nvidia-smi <- " in text
