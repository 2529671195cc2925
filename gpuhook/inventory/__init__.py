"""What GPUs exist: the model both backends (NVML, fake YAML) produce."""

from gpuhook.inventory.model import Gpu, Inventory, MigDevice

__all__ = ["Gpu", "Inventory", "MigDevice"]
