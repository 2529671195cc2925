"""File backend: a fake inventory YAML (schema in CONTRACT.md), loaded into the real model."""

from __future__ import annotations

from gpuhook.errors import InputError
from gpuhook.inventory.model import Inventory


def load_fake(path: str) -> Inventory:
    import yaml  # lazy: the hook's no-request path never gets here

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise InputError(f"inventory {path}: {e.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputError(f"inventory {path}: not valid YAML: {e}") from None
    return Inventory.from_dict(data, f"inventory {path}")
