"""Host-file parsers on real file contents, and the config file."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuhook.config import Config, load_config, parse_config
from gpuhook.errors import HostError, InputError
from gpuhook.host.proc import (
    capability_file,
    majors_from_devices,
    parse_capability_file,
    parse_mig_minors,
    parse_proc_devices,
)
from tests.conftest import REPO

# As printed by a node with the 550 driver (trimmed).
PROC_DEVICES = """Character devices:
  1 mem
  5 /dev/tty
195 nvidia-frontend
195 nvidia
234 nvidia-nvlink
235 nvidia-caps
237 nvidia-caps-imex-channels
507 nvidia-uvm

Block devices:
  8 sd
235 nvidia-uvm-block-impostor
"""


def test_proc_devices_char_section_only() -> None:
    majors = parse_proc_devices(PROC_DEVICES)
    assert majors["nvidia-frontend"] == 195
    assert majors["nvidia-caps"] == 235
    assert majors["nvidia-uvm"] == 507
    assert "nvidia-uvm-block-impostor" not in majors and "sd" not in majors


@pytest.mark.parametrize(
    ("text", "frontend"),
    [
        pytest.param("Character devices:\n196 nvidia-frontend\n507 nvidia-uvm\n", 196,
                     id="nvidia-frontend"),
        pytest.param("Character devices:\n197 nvidia\n507 nvidia-uvm\n", 197,
                     id="older drivers say nvidia"),
        pytest.param("Character devices:\n507 nvidia-uvm\n", 195, id="fallback 195"),
    ],
)
def test_frontend_major(text: str, frontend: int) -> None:
    assert majors_from_devices(parse_proc_devices(text), "x").frontend == frontend


def test_no_uvm_major_is_an_error() -> None:
    with pytest.raises(HostError, match="nvidia-uvm"):
        majors_from_devices(parse_proc_devices("Character devices:\n195 nvidia\n"), "x")


def test_mig_minors() -> None:
    text = "config 1\nmonitor 2\ngpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\n\n"
    assert parse_mig_minors(text) == {"config": 1, "monitor": 2, "gpu0/gi1/access": 12,
                                      "gpu0/gi1/ci0/access": 13}


@pytest.mark.parametrize("line", ["gpu0/gi1/access", "gpu0/gi1/access x", "a b c"])
def test_mig_minors_rejects_odd_lines(line: str) -> None:
    with pytest.raises(HostError, match="unexpected line"):
        parse_mig_minors(f"config 1\n{line}\n")


def test_capability_file() -> None:
    text = "DeviceFileMinor: 13\nDeviceFileMode: 292\nDeviceFileModify: 1\n"
    assert parse_capability_file(text) == {"DeviceFileMinor": "13", "DeviceFileMode": "292",
                                           "DeviceFileModify": "1"}


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("monitor", "proc/driver/nvidia/capabilities/mig/monitor"),
        ("config", "proc/driver/nvidia/capabilities/mig/config"),
        ("gpu0/gi1/access", "proc/driver/nvidia/capabilities/gpu0/mig/gi1/access"),
        ("gpu3/gi2/ci0/access", "proc/driver/nvidia/capabilities/gpu3/mig/gi2/ci0/access"),
    ],
)
def test_capability_file_locations(name: str, path: str) -> None:
    assert capability_file(name) == path


def test_shipped_config_equals_builtin_defaults() -> None:
    path = REPO / "config" / "config.toml"
    shipped = parse_config(path.read_bytes(), str(path))
    assert shipped == Config(source=str(path))


def test_shipped_config_documents_every_key() -> None:
    text = (REPO / "config" / "config.toml").read_text()
    for key in ("inventory", "host-root", "log-file",
                "accept-nvidia-visible-devices-envvar-when-unprivileged",
                "accept-nvidia-visible-devices-as-volume-mounts", "unprivileged-envvar-action",
                "mode", "runtimes", "allow-mig-monitor-unprivileged",
                "allow-full-gpu-on-mig-enabled", "inventory-cache", "volume-mount-root"):
        assert f"\n{key} = " in text, key


def test_config_search_order(tmp_path: Path) -> None:
    a = tmp_path / "a.toml"
    b = tmp_path / "b.toml"
    a.write_text('mode = "hook"\n')
    b.write_text('mode = "spec"\nlog-file = "/x.log"\n')
    assert load_config(str(a), {"GPUHOOK_CONFIG": str(b)}).mode == "hook"
    assert load_config(None, {"GPUHOOK_CONFIG": str(b)}).log_file == "/x.log"


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "sub" / "c.toml"
    cfg.parent.mkdir()
    cfg.write_text('inventory = "inv.yaml"\nhost-root = "../host"\n')
    c = load_config(str(cfg), {})
    assert c.inventory == str(tmp_path / "sub" / "inv.yaml")
    assert c.host_root == str(tmp_path / "sub" / ".." / "host")


def test_nvml_inventory_is_not_a_path(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('inventory = "nvml"\n')
    assert load_config(str(cfg), {}).inventory == "nvml"


def test_unknown_key_suggests_the_closest_and_lists_known_keys() -> None:
    with pytest.raises(InputError, match=r"unknown key 'host_root' \(did you mean "
                                         r"'host-root'\?\); known keys: .*inventory"):
        parse_config(b'host_root = "/"\n', "c.toml")
