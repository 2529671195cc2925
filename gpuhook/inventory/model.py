"""The inventory model and its validation: one shape for NVML answers, fake YAML and snapshots."""

from __future__ import annotations

from gpuhook.errors import InputError
from gpuhook.record import TYPE_CHECKING, dataclass
from gpuhook.text import decimal

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, TypeVar

# The brand names libnvidia-container gives nvmlDeviceGetBrand's answers (src/driver.c
# driver_get_device_brand_1_svc, NVIDIA/libnvidia-container at 947344949f26): QUADRO, TESLA,
# NVS, GRID, GEFORCE, TITAN by name, every other value (NVIDIA, NVIDIA_RTX, QUADRO_RTX, the
# vGPU brands, ...) "Unknown". NVIDIA_REQUIRE_* compares them case-insensitively.
BRANDS = ("Quadro", "Tesla", "NVS", "GRID", "GeForce", "TITAN", "Unknown")
# The compute capability as libnvidia-container prints it ("%u.%u" of
# nvmlDeviceGetCudaComputeCapability, src/driver.c driver_get_device_arch).
def is_arch(text: str) -> bool:
    """`text` is "<1-4 digits>.<1-4 digits>" (ASCII), the form libnvidia-container prints."""
    major, dot, minor = text.partition(".")
    return bool(dot) and decimal(major, 4) is not None and decimal(minor, 4) is not None


@dataclass(frozen=True)
class MigDevice:
    index: int
    uuid: str
    gi: int
    ci: int
    profile: str


@dataclass(frozen=True)
class Gpu:
    index: int
    minor: int
    uuid: str
    pci_bus_id: str
    name: str
    mig_enabled: bool
    mig_devices: tuple[MigDevice, ...] = ()
    # Optional (fake inventories written before they existed): None = unknown, and an
    # arch/brand requirement on this GPU is then not judged (decide/resolve.py).
    arch: str | None = None  # compute capability "major.minor", e.g. "8.0" for an A100
    brand: str | None = None  # one of BRANDS


@dataclass(frozen=True)
class Inventory:
    driver_version: str
    cuda_version: str
    gpus: tuple[Gpu, ...]

    def __post_init__(self) -> None:
        _check_unique("GPU index", [g.index for g in self.gpus])
        _check_unique("GPU minor", [g.minor for g in self.gpus])
        _check_unique("uuid", [g.uuid for g in self.gpus] + [
            m.uuid for g in self.gpus for m in g.mig_devices])
        for gpu in self.gpus:
            if gpu.mig_devices and not gpu.mig_enabled:
                raise InputError(f"GPU {gpu.index} has mig_devices but mig_enabled is false")
            where = f"GPU {gpu.index}"
            _check_unique(f"MIG index on {where}", [m.index for m in gpu.mig_devices])
            _check_unique(f"MIG (gi, ci) on {where}", [(m.gi, m.ci) for m in gpu.mig_devices])

    def to_dict(self) -> dict[str, Any]:
        """The fake-inventory YAML schema, as plain data (also the snapshot's inventory part)."""
        gpus: list[dict[str, Any]] = []
        for g in self.gpus:
            entry: dict[str, Any] = {
                "index": g.index, "minor": g.minor, "uuid": g.uuid,
                "pci_bus_id": g.pci_bus_id, "name": g.name, "mig_enabled": g.mig_enabled,
            }
            if g.arch is not None:
                entry["arch"] = g.arch
            if g.brand is not None:
                entry["brand"] = g.brand
            if g.mig_enabled:
                entry["mig_devices"] = [
                    {"index": m.index, "uuid": m.uuid, "gi": m.gi, "ci": m.ci,
                     "profile": m.profile}
                    for m in g.mig_devices
                ]
            gpus.append(entry)
        return {"driver_version": self.driver_version, "cuda_version": self.cuda_version,
                "gpus": gpus}

    @classmethod
    def from_dict(cls, data: object, origin: str) -> Inventory:
        """Validate plain data in the fake-inventory schema; errors name `origin` and the field."""
        top = _mapping(data, origin)
        gpus_raw = top.get("gpus", [])
        if not isinstance(gpus_raw, list):
            raise InputError(f"{origin}: gpus must be a list")
        gpus = tuple(_gpu(g, f"{origin}: gpus[{i}]") for i, g in enumerate(gpus_raw))
        return cls(
            driver_version=_field(top, "driver_version", str, origin),
            cuda_version=_field(top, "cuda_version", str, origin),
            gpus=gpus,
        )


def _gpu(raw: object, where: str) -> Gpu:
    g = _mapping(raw, where)
    mig_enabled = _field(g, "mig_enabled", bool, where, default=False)
    migs_raw = g.get("mig_devices", [])
    if not isinstance(migs_raw, list):
        raise InputError(f"{where}: mig_devices must be a list")
    migs = tuple(_mig(m, f"{where}.mig_devices[{i}]") for i, m in enumerate(migs_raw))
    uuid = _field(g, "uuid", str, where)
    if not uuid.startswith("GPU-"):
        raise InputError(f"{where}: uuid {uuid!r} must start with 'GPU-'")
    return Gpu(
        index=_nonneg(g, "index", where),
        minor=_nonneg(g, "minor", where),
        uuid=uuid,
        pci_bus_id=_field(g, "pci_bus_id", str, where),
        name=_field(g, "name", str, where),
        mig_enabled=mig_enabled,
        mig_devices=migs,
        arch=_arch(g, where),
        brand=_brand(g, where),
    )


def _arch(g: Mapping[str, object], where: str) -> str | None:
    arch = _field(g, "arch", str, where) if "arch" in g else None
    if arch is not None and not is_arch(arch):
        raise InputError(f"{where}: arch {arch[:40]!r} must be a compute capability like "
                         "\"8.0\"")
    return arch


def _brand(g: Mapping[str, object], where: str) -> str | None:
    brand = _field(g, "brand", str, where) if "brand" in g else None
    if brand is None:
        return None
    for known in BRANDS:  # as libnvidia-container spells it, whatever the case given
        if brand.lower() == known.lower():
            return known
    raise InputError(f"{where}: brand {brand[:40]!r} must be one of {', '.join(BRANDS)}")


def _mig(raw: object, where: str) -> MigDevice:
    m = _mapping(raw, where)
    uuid = _field(m, "uuid", str, where)
    if not uuid.startswith("MIG-"):
        raise InputError(f"{where}: uuid {uuid!r} must start with 'MIG-'")
    return MigDevice(
        index=_nonneg(m, "index", where),
        uuid=uuid,
        gi=_nonneg(m, "gi", where),
        ci=_nonneg(m, "ci", where),
        profile=_field(m, "profile", str, where),
    )


def _mapping(raw: object, where: str) -> Mapping[str, object]:
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected a mapping, got {type(raw).__name__}")
    return raw


_MISSING = object()
if TYPE_CHECKING:
    T = TypeVar("T")


def _field(m: Mapping[str, object], key: str, kind: type[T], where: str,
              default: object = _MISSING) -> T:
    value = m.get(key, default)
    if value is _MISSING:
        raise InputError(f"{where}: missing {key}")
    # bool is an int subclass: an index of `true` is a mistake, not 1.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InputError(f"{where}: {key} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _nonneg(m: Mapping[str, object], key: str, where: str) -> int:
    value = _field(m, key, int, where)
    if value < 0:
        raise InputError(f"{where}: {key} must be >= 0, got {value}")
    return value


def _check_unique(what: str, values: list[Any]) -> None:
    seen: set[Any] = set()
    for v in values:
        if v in seen:
            raise InputError(f"inventory: duplicate {what} {v!r}")
        seen.add(v)
