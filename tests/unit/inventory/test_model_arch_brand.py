"""Per-GPU `arch` and `brand` in the inventory model: optional, validated, round-tripped."""

from __future__ import annotations

from typing import Any

import pytest

from gpuhook.errors import InputError
from gpuhook.inventory.fake import load_fake
from gpuhook.inventory.model import Inventory
from tests.unit.specs import MIG8


def doc(**gpu: Any) -> dict[str, Any]:
    entry = {"index": 0, "minor": 0, "uuid": "GPU-0", "pci_bus_id": "0000:07:00.0",
             "name": "NVIDIA A100-SXM4-40GB", "mig_enabled": False, **gpu}
    return {"driver_version": "550.54.15", "cuda_version": "12.4", "gpus": [entry]}


@pytest.mark.parametrize(
    ("gpu", "arch", "brand"),
    [
        pytest.param({}, None, None, id="an inventory without the keys still loads as unknown"),
        pytest.param({"arch": "8.0", "brand": "Unknown"}, "8.0", "Unknown",
                     id="arch and brand as libnvidia-container names them"),
        pytest.param({"arch": "12.0", "brand": "tesla"}, "12.0", "Tesla",
                     id="a brand in any case is kept as libnvidia-container spells it"),
        pytest.param({"brand": "GeForce"}, None, "GeForce", id="each key is optional alone"),
    ],
)
def test_arch_and_brand_load(gpu: dict[str, Any], arch: str | None, brand: str | None) -> None:
    inv = Inventory.from_dict(doc(**gpu), "test")
    assert (inv.gpus[0].arch, inv.gpus[0].brand) == (arch, brand)
    assert Inventory.from_dict(inv.to_dict(), "again") == inv


@pytest.mark.parametrize(
    ("gpu", "message"),
    [
        pytest.param({"arch": 8.0}, "arch must be str", id="an arch given as a YAML float"),
        pytest.param({"arch": "sm_80"}, "compute capability", id="an arch that is not major.minor"),
        pytest.param({"arch": "8"}, "compute capability", id="an arch without its minor"),
        pytest.param({"brand": "NVIDIA"}, "must be one of", id="an NVML brand libnvidia-container "
                     "does not name"),
        pytest.param({"brand": None}, "brand must be str", id="a null brand"),
    ],
)
def test_bad_arch_or_brand_is_refused_with_the_field(gpu: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=rf"test: gpus\[0\]: .*{message}"):
        Inventory.from_dict(doc(**gpu), "test")


def test_shipped_fake_inventory_has_arch_and_brand() -> None:
    assert {(g.arch, g.brand) for g in load_fake(MIG8).gpus} == {("8.0", "Unknown")}
