"""A fake `pynvml` module with real semantics for the NVML backend's tests (no GPU here).

It mirrors nvidia-ml-py's surface that gpuhook uses: an NVMLError class carrying `value` (the
nvml.h return code) with per-code subclasses, functions that return the same types the real
bindings return (str or bytes, ints, a PciInfo structure with `busId`, (current, pending) MIG
mode), handles that are opaque objects, and init/shutdown reference counting.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999

# nvmlBrandType_t, as nvidia-ml-py defines NVML_BRAND_* (packaging/deb/vendor/pynvml.py).
NVML_BRAND_UNKNOWN = 0
NVML_BRAND_QUADRO = 1
NVML_BRAND_TESLA = 2
NVML_BRAND_NVS = 3
NVML_BRAND_GRID = 4
NVML_BRAND_GEFORCE = 5
NVML_BRAND_TITAN = 6
NVML_BRAND_NVIDIA_VWS = 10
NVML_BRAND_QUADRO_RTX = 12
NVML_BRAND_NVIDIA_RTX = 13
NVML_BRAND_NVIDIA = 14  # A100, H100, T4 on current drivers (nvidia-smi -q "Product Brand")

_NAMES = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _NAMES.get(self.value, f"Unknown Error {self.value}")


class NVMLError_NotSupported(NVMLError): ...


class NVMLError_NotFound(NVMLError): ...


class NVMLError_DriverNotLoaded(NVMLError): ...


class NVMLError_LibraryNotFound(NVMLError): ...


_CLASSES: dict[int, type[NVMLError]] = {
    NVML_ERROR_NOT_SUPPORTED: NVMLError_NotSupported,
    NVML_ERROR_NOT_FOUND: NVMLError_NotFound,
    NVML_ERROR_DRIVER_NOT_LOADED: NVMLError_DriverNotLoaded,
    NVML_ERROR_LIBRARY_NOT_FOUND: NVMLError_LibraryNotFound,
}


def _raise(code: int) -> None:
    raise _CLASSES.get(code, NVMLError)(code)


@dataclass
class FakeMig:
    uuid: str
    gi: int
    ci: int
    name: str


@dataclass
class FakeGpu:
    uuid: str
    name: str
    bus_id: str  # as NVML reports it: 8-digit domain
    minor: int
    mig_mode: int | None = 0  # None: NOT_SUPPORTED
    migs: dict[int, FakeMig] = field(default_factory=dict)  # slot -> device
    max_migs: int = 7
    persistence: int | None = 1  # NVML_FEATURE_ENABLED / DISABLED; None: NOT_SUPPORTED
    capability: tuple[int, int] = (8, 0)  # nvmlDeviceGetCudaComputeCapability (A100: 8.0)
    brand: int = NVML_BRAND_NVIDIA  # nvmlDeviceGetBrand


@dataclass
class PciInfo:
    busId: str


@dataclass
class World:
    gpus: list[FakeGpu]
    driver: str = "550.54.15"
    cuda: int = 12040
    init_error: int | None = None
    fail: dict[str, int] = field(default_factory=dict)  # function name -> error code
    as_bytes: bool = False  # older bindings return bytes
    initialized: int = 0
    shutdowns: int = 0


def module(world: World) -> types.ModuleType:
    mod = types.ModuleType("pynvml")
    handles: dict[int, Any] = {}

    def text(s: str) -> str | bytes:
        return s.encode() if world.as_bytes else s

    def check(name: str) -> None:
        if world.initialized <= 0:
            _raise(NVML_ERROR_UNINITIALIZED)
        if name in world.fail:
            _raise(world.fail[name])

    def nvmlInit() -> None:
        if world.init_error is not None:
            _raise(world.init_error)
        world.initialized += 1

    def nvmlShutdown() -> None:
        check("nvmlShutdown")
        world.initialized -= 1
        world.shutdowns += 1

    def nvmlSystemGetDriverVersion() -> str | bytes:
        check("nvmlSystemGetDriverVersion")
        return text(world.driver)

    def nvmlSystemGetCudaDriverVersion() -> int:
        check("nvmlSystemGetCudaDriverVersion")
        return world.cuda

    def nvmlDeviceGetCount() -> int:
        check("nvmlDeviceGetCount")
        return len(world.gpus)

    def nvmlDeviceGetHandleByIndex(i: int) -> object:
        check("nvmlDeviceGetHandleByIndex")
        if not 0 <= i < len(world.gpus):
            _raise(NVML_ERROR_NOT_FOUND)
        h = object()
        handles[id(h)] = world.gpus[i]
        return h

    def dev(h: object) -> Any:
        return handles[id(h)]

    def nvmlDeviceGetUUID(h: object) -> str | bytes:
        check("nvmlDeviceGetUUID")
        return text(dev(h).uuid)

    def nvmlDeviceGetName(h: object) -> str | bytes:
        check("nvmlDeviceGetName")
        return text(dev(h).name)

    def nvmlDeviceGetPciInfo(h: object) -> PciInfo:
        check("nvmlDeviceGetPciInfo")
        return PciInfo(busId=dev(h).bus_id)

    def nvmlDeviceGetMinorNumber(h: object) -> int:
        check("nvmlDeviceGetMinorNumber")
        return int(dev(h).minor)

    def nvmlDeviceGetMigMode(h: object) -> list[int]:
        check("nvmlDeviceGetMigMode")
        mode = dev(h).mig_mode
        if mode is None:
            _raise(NVML_ERROR_NOT_SUPPORTED)
        return [mode, mode]

    def nvmlDeviceGetPersistenceMode(h: object) -> int:
        check("nvmlDeviceGetPersistenceMode")
        mode = dev(h).persistence
        if mode is None:
            _raise(NVML_ERROR_NOT_SUPPORTED)
        return int(mode)

    def nvmlDeviceGetCudaComputeCapability(h: object) -> tuple[int, int]:
        # nvidia-ml-py returns (c_major.value, c_minor.value): a tuple of two ints.
        check("nvmlDeviceGetCudaComputeCapability")
        major, minor = dev(h).capability
        return (int(major), int(minor))

    def nvmlDeviceGetBrand(h: object) -> int:
        # nvidia-ml-py returns the _nvmlBrandType_t (c_uint) value: a plain int.
        check("nvmlDeviceGetBrand")
        return int(dev(h).brand)

    def nvmlDeviceGetMaxMigDeviceCount(h: object) -> int:
        check("nvmlDeviceGetMaxMigDeviceCount")
        return int(dev(h).max_migs)

    def nvmlDeviceGetMigDeviceHandleByIndex(h: object, slot: int) -> object:
        check("nvmlDeviceGetMigDeviceHandleByIndex")
        mig = dev(h).migs.get(slot)
        if mig is None:
            _raise(NVML_ERROR_NOT_FOUND)
        mh = object()
        handles[id(mh)] = mig
        return mh

    def nvmlDeviceGetGpuInstanceId(h: object) -> int:
        check("nvmlDeviceGetGpuInstanceId")
        return int(dev(h).gi)

    def nvmlDeviceGetComputeInstanceId(h: object) -> int:
        check("nvmlDeviceGetComputeInstanceId")
        return int(dev(h).ci)

    for fn in (nvmlInit, nvmlShutdown, nvmlSystemGetDriverVersion,
               nvmlSystemGetCudaDriverVersion, nvmlDeviceGetCount, nvmlDeviceGetHandleByIndex,
               nvmlDeviceGetUUID, nvmlDeviceGetName, nvmlDeviceGetPciInfo,
               nvmlDeviceGetMinorNumber, nvmlDeviceGetMigMode, nvmlDeviceGetPersistenceMode,
               nvmlDeviceGetMaxMigDeviceCount, nvmlDeviceGetMigDeviceHandleByIndex,
               nvmlDeviceGetGpuInstanceId, nvmlDeviceGetComputeInstanceId,
               nvmlDeviceGetCudaComputeCapability, nvmlDeviceGetBrand):
        setattr(mod, fn.__name__, fn)
    mod.NVMLError = NVMLError  # type: ignore[attr-defined]
    return mod
