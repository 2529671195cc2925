"""File backend: a fake inventory YAML (schema in CONTRACT.md), loaded into the real model."""

from __future__ import annotations

from gpuhook.errors import InputError
from gpuhook.files import read_regular
from gpuhook.inventory.model import Inventory
from gpuhook.limits import MAX_INVENTORY_BYTES


def load_fake(path: str) -> Inventory:
    import yaml  # lazy: the hook's no-request path never gets here

    try:
        raw = read_regular(path, MAX_INVENTORY_BYTES)
    except OSError as e:
        raise InputError(f"inventory {path}: {e.strerror}") from None
    if len(raw) > MAX_INVENTORY_BYTES:
        raise InputError(f"inventory {path}: larger than {MAX_INVENTORY_BYTES} bytes")
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputError(f"inventory {path}: not valid YAML: {e}") from None
    except ValueError as e:  # an integer past Python's digit limit
        raise InputError(f"inventory {path}: {e}") from None
    except RecursionError:
        raise InputError(f"inventory {path}: nested too deeply") from None
    return Inventory.from_dict(data, f"inventory {path}")
