"""Pick the inventory backend the config names."""

from __future__ import annotations

from gpuhook.config import Config
from gpuhook.inventory.model import Inventory

NVML = "nvml"


def load_inventory(config: Config) -> Inventory:
    if config.inventory == NVML:
        from gpuhook.inventory.nvml import load_nvml

        return load_nvml()
    from gpuhook.inventory.fake import load_fake

    return load_fake(config.inventory)
