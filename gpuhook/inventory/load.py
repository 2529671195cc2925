"""Pick the inventory backend the config names, preferring a fresh snapshot.

A start with a GPU request reads the snapshot at `inventory-cache` when it is trustworthy and
its freshness key matches the host now (see snapshot.py); otherwise the backend itself: NVML,
or the fake inventory YAML. Either way the caller learns which, for the decision log.
"""

from __future__ import annotations

from gpuhook.config import Config
from gpuhook.decide.facts import DriverFacts
from gpuhook.inventory.model import Inventory
from gpuhook.record import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

NVML = "nvml"


def load_inventory_noted(config: Config, read: Callable[[Config], Inventory] | None = None,
                         ) -> tuple[Inventory, str]:
    """The inventory and a note saying where it came from (and why not the snapshot).
    `read` replaces the backend (tests count its calls)."""
    inventory, note, _ = load_for_plan(config, read)
    return inventory, note


def load_for_plan(config: Config, read: Callable[[Config], Inventory] | None = None,
                  ) -> tuple[Inventory, str, dict[str, int] | None]:
    """Also mig-minors as the fresh snapshot parsed them (its key holds the file verbatim, so
    they are the host's now); None: the plan must read the host's mig-minors itself."""
    inventory, note, minors, _ = load_with_driver(config, read)
    return inventory, note, minors


def load_with_driver(config: Config, read: Callable[[Config], Inventory] | None = None,
                     ) -> tuple[Inventory, str, dict[str, int] | None, DriverFacts | None]:
    """load_for_plan plus the snapshot's driver files when they are fresh too (None: the
    caller discovers them live; the note says why)."""
    inventory, note, minors, driver, _ = load_for_request(config, None, read)
    return inventory, note, minors, driver


def load_for_request(config: Config, ids: list[str] | tuple[str, ...] | None,
                     read: Callable[[Config], Inventory] | None = None,
                     ) -> tuple[Inventory, str, dict[str, int] | None, DriverFacts | None, bool]:
    """load_with_driver for a request for `ids` (None: everything). From a fresh snapshot the
    inventory may be partial (the last item True): only the GPUs the ids name, so a start on
    a big node parses and checks one GPU, not all (snapshot.fresh_for_request). A partial
    inventory that does not resolve the ids is no verdict: load again with None."""
    from gpuhook.inventory.snapshot import StaleSnapshot, fresh_for_request

    try:
        inventory, minors, driver, why_not, partial = fresh_for_request(config, ids)
    except StaleSnapshot as e:
        why = str(e)
    else:
        note = f"inventory: fresh snapshot {config.inventory_cache}"
        if config.driver_files and driver is None:
            note += f"; driver files discovered live ({why_not})"
        return inventory, note, minors, driver, partial
    return ((read or read_backend)(config),
            f"inventory: read {_backend_name(config)} ({why})", None, None, False)


def read_backend(config: Config) -> Inventory:
    """The backend itself, never the snapshot: what `gpuhook inventory refresh` saves."""
    if config.inventory == NVML:
        from gpuhook.inventory.nvml import load_nvml

        return load_nvml()
    from gpuhook.inventory.fake import load_fake

    return load_fake(config.inventory)


def _backend_name(config: Config) -> str:
    return "NVML" if config.inventory == NVML else f"fake inventory {config.inventory}"
