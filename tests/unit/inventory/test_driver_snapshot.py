"""The snapshot's driver part: used while its own key (ld.so.cache identity, the watched dirs)
matches; a rebuilt cache or a new binary makes the start discover live, while the inventory part
stays fresh."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuhook.cli.main import cli
from gpuhook.config import Config
from gpuhook.inventory.load import load_with_driver, read_backend
from gpuhook.inventory.snapshot import build_snapshot, write_snapshot
from tests.fakedriver.build import FakeHost
from tests.unit.specs import plan, spec

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


@pytest.fixture
def config(fake_driver_host: FakeHost, tmp_path: Path) -> Config:
    c = Config(inventory=str(fake_driver_host.inventory), host_root=str(fake_driver_host.root),
               log_file="/dev/null", inventory_cache=str(tmp_path / "run/gpuhook/inv.json"))
    write_snapshot(c.inventory_cache, build_snapshot(c, read_backend))
    return c


def test_a_fresh_snapshot_gives_the_driver_files(config: Config) -> None:
    inv, note, _, driver = load_with_driver(config)
    assert note == f"inventory: fresh snapshot {config.inventory_cache}"
    assert driver is not None and driver.version == inv.driver_version
    assert any(lib.stem == "libcuda.so" for lib in driver.libraries)
    p = plan(spec(ids=["0"]), config)
    assert any(f.container_path == f"libcuda.so.{inv.driver_version}" for f in p.driver_files)


def test_a_rebuilt_ld_cache_means_live_discovery_and_a_fresh_inventory(
        config: Config, fake_driver_host: FakeHost) -> None:
    lib = fake_driver_host.lib64
    shutil.copy(lib / f"libnvidia-encode.so.{fake_driver_host.version}",
                lib / f"libnvcuvid.so.{fake_driver_host.version}")
    subprocess.run(["ldconfig", "-X", "-r", str(fake_driver_host.root)], check=True, env=ENV)
    _, note, _, driver = load_with_driver(config)
    assert driver is None
    assert note.startswith(f"inventory: fresh snapshot {config.inventory_cache}; driver files "
                           "discovered live (")
    assert "ld.so.cache changed" in note or "a driver dir changed" in note


def test_a_new_binary_means_live_discovery(config: Config, fake_driver_host: FakeHost) -> None:
    smi = fake_driver_host.root / "usr/bin/nvidia-smi"
    shutil.copy(smi, smi.parent / "nvidia-debugdump")
    _, note, _, driver = load_with_driver(config)
    assert driver is None and "a driver dir changed since the snapshot" in note
    p = plan(spec(ids=["0"]), config)
    assert "/usr/bin/nvidia-debugdump" in [f.container_path for f in p.driver_files]


def test_driver_files_off_records_no_driver_part(fake_driver_host: FakeHost,
                                                 tmp_path: Path) -> None:
    c = Config(inventory=str(fake_driver_host.inventory), host_root=str(fake_driver_host.root),
               log_file="/dev/null", driver_files=False,
               inventory_cache=str(tmp_path / "run/gpuhook/inv.json"))
    assert "driver" not in build_snapshot(c, read_backend)


def test_inventory_show_says_whether_the_driver_files_are_fresh(
        config: Config, fake_driver_host: FakeHost, tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'inventory = "{config.inventory}"\nhost-root = "{config.host_root}"\n'
                    f'inventory-cache = "{config.inventory_cache}"\nlog-file = "/dev/null"\n')
    fresh = CliRunner().invoke(cli, ["inventory", "show", "--config", str(path)])
    assert fresh.exit_code == 0, fresh.output
    assert "driver files: fresh, 8 libraries, 5 other files" in fresh.output
    (fake_driver_host.root / "usr/bin/nvidia-smi").unlink()
    stale = CliRunner().invoke(cli, ["inventory", "show", "--config", str(path)])
    assert stale.exit_code == 0, stale.output
    assert ("driver files: discovered at each start (a driver dir changed since the snapshot)"
            in stale.output)
