"""NVML backend: the only module that imports pynvml (from nvidia-ml-py), and lazily.

Every NVML failure becomes an NvmlError that says what to check. A hook fails closed: an answer
NVML cannot give is an error, never "N/A" (MIG mode NOT_SUPPORTED is an answer: no MIG).
"""

from __future__ import annotations

import contextlib
from types import ModuleType

from gpuhook.errors import NvmlError
from gpuhook.inventory.model import Gpu, Inventory, MigDevice, is_arch
from gpuhook.record import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

# NVML return codes (nvml.h), so the mapping holds whatever the module's class names are.
_ADVICE = {
    1: "NVML was used before nvmlInit",
    3: "this GPU or driver does not support the query",
    4: "permission denied: run gpuhook as root",
    6: "the device was not found (unplugged, or reset?)",
    9: "the NVIDIA kernel driver is not loaded: check `lsmod | grep nvidia` and dmesg",
    12: "libnvidia-ml.so.1 was not found: install the NVIDIA driver's user-space libraries",
    13: "the installed libnvidia-ml is older than this call: update the NVIDIA driver",
    15: "the GPU has fallen off the bus or is otherwise inaccessible: check dmesg (Xid)",
    17: "the driver and libnvidia-ml versions differ: reboot or reload the driver",
}
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_DEVICE_MIG_ENABLE = 1
NVML_FEATURE_ENABLED = 1
# nvmlBrandType_t (nvml.h; nvidia-ml-py NVML_BRAND_*) -> libnvidia-container's name (src/driver.c
# driver_get_device_brand_1_svc, NVIDIA/libnvidia-container at 947344949f26); any other value,
# NVML_BRAND_NVIDIA (14, what A100/H100/T4 report on current drivers) included, is "Unknown".
_BRANDS = {1: "Quadro", 2: "Tesla", 3: "NVS", 4: "GRID", 5: "GeForce", 6: "TITAN"}


def _import() -> ModuleType:
    try:
        import pynvml
    except ImportError as e:
        raise NvmlError(f"cannot import pynvml ({e}); install nvidia-ml-py or set "
                        "`inventory` to a fake inventory file") from None
    return pynvml  # type: ignore[no-any-return]


def nvml_error(err: BaseException, call: str) -> NvmlError:
    code = getattr(err, "value", None)
    advice = _ADVICE.get(code) if isinstance(code, int) else None
    text = str(err) or type(err).__name__
    return NvmlError(f"NVML {call} failed: {text}" + (f"; {advice}" if advice else ""))


class _Nvml:
    def __init__(self, nv: ModuleType) -> None:
        self.nv = nv

    def _fn(self, name: str) -> Any:
        fn = getattr(self.nv, name, None)
        if fn is None:
            raise NvmlError(f"NVML {name} is missing from pynvml: install nvidia-ml-py "
                            ">= 12.535, not the deprecated `pynvml` distribution")
        return fn

    def call(self, name: str, *args: Any) -> Any:
        return self.code_of(name, *args, tolerate=())[0]

    def code_of(self, name: str, *args: Any, tolerate: tuple[int, ...]) -> tuple[Any, int | None]:
        """Call and return (result, None), or (None, code) for a return code in `tolerate`
        (an answer, like NOT_SUPPORTED for MIG mode); any other error is an NvmlError."""
        fn = self._fn(name)
        try:
            return fn(*args), None
        except self.nv.NVMLError as e:
            code = getattr(e, "value", None)
            if code in tolerate:
                return None, code
            raise nvml_error(e, name) from None


def load_nvml(module: ModuleType | None = None) -> Inventory:
    nv = module if module is not None else _import()
    api = _Nvml(nv)
    api.call("nvmlInit")
    try:
        return _read(api)
    finally:
        # Shutting down after the read: its answer already stands either way.
        with contextlib.suppress(nv.NVMLError):
            nv.nvmlShutdown()


def load_persistence(module: ModuleType | None = None) -> list[tuple[int, str, bool | None]]:
    """Each GPU's persistence mode as (index, uuid, enabled); None where NVML answers
    NOT_SUPPORTED (nvml.h nvmlDeviceGetPersistenceMode: Linux only). For `gpuhook doctor`."""
    nv = module if module is not None else _import()
    api = _Nvml(nv)
    api.call("nvmlInit")
    try:
        out: list[tuple[int, str, bool | None]] = []
        for i in range(int(api.call("nvmlDeviceGetCount"))):
            h = api.call("nvmlDeviceGetHandleByIndex", i)
            mode, _ = api.code_of("nvmlDeviceGetPersistenceMode", h,
                                  tolerate=(NVML_ERROR_NOT_SUPPORTED,))
            enabled = None if mode is None else int(mode) == NVML_FEATURE_ENABLED
            out.append((i, _text(api.call("nvmlDeviceGetUUID", h)), enabled))
        return out
    finally:
        with contextlib.suppress(nv.NVMLError):
            nv.nvmlShutdown()


def _read(api: _Nvml) -> Inventory:
    driver = _text(api.call("nvmlSystemGetDriverVersion"))
    cuda = _cuda(api.call("nvmlSystemGetCudaDriverVersion"))
    gpus = []
    for i in range(int(api.call("nvmlDeviceGetCount"))):
        h = api.call("nvmlDeviceGetHandleByIndex", i)
        gpus.append(_gpu(api, i, h))
    return Inventory(driver_version=driver, cuda_version=cuda, gpus=tuple(gpus))


def _gpu(api: _Nvml, index: int, h: Any) -> Gpu:
    uuid = _text(api.call("nvmlDeviceGetUUID", h))
    name = _text(api.call("nvmlDeviceGetName", h))
    pci = _text(api.call("nvmlDeviceGetPciInfo", h).busId)
    minor = int(api.call("nvmlDeviceGetMinorNumber", h))
    mode, _ = api.code_of("nvmlDeviceGetMigMode", h, tolerate=(NVML_ERROR_NOT_SUPPORTED,))
    mig_enabled = mode is not None and int(mode[0]) == NVML_DEVICE_MIG_ENABLE
    migs: list[MigDevice] = []
    if mig_enabled:
        for j in range(int(api.call("nvmlDeviceGetMaxMigDeviceCount", h))):
            mh, code = api.code_of("nvmlDeviceGetMigDeviceHandleByIndex", h, j,
                                   tolerate=(NVML_ERROR_NOT_FOUND,))
            if code is not None:
                continue  # an empty slot, not an error
            migs.append(MigDevice(
                index=j,
                uuid=_text(api.call("nvmlDeviceGetUUID", mh)),
                gi=int(api.call("nvmlDeviceGetGpuInstanceId", mh)),
                ci=int(api.call("nvmlDeviceGetComputeInstanceId", mh)),
                profile=_profile(_text(api.call("nvmlDeviceGetName", mh))),
            ))
    return Gpu(index=index, minor=minor, uuid=uuid, pci_bus_id=_pci(pci), name=name,
               mig_enabled=mig_enabled, mig_devices=tuple(migs),
               arch=_arch(api.call("nvmlDeviceGetCudaComputeCapability", h)),
               brand=_brand(api.call("nvmlDeviceGetBrand", h)))


# Neither call tolerates an error: nvml.h lists no NOT_SUPPORTED for them (nvmlDeviceGetBrand:
# UNINITIALIZED, INVALID_ARGUMENT, GPU_IS_LOST, UNKNOWN; nvmlDeviceGetCudaComputeCapability:
# UNINITIALIZED, INVALID_ARGUMENT, GPU_IS_LOST, UNKNOWN), and libnvidia-container fails its device
# query on any error of either (src/nvc_info.c nvc_device_info_new).
def _arch(value: object) -> str:
    """(major, minor) from nvidia-ml-py -> "major.minor", as libnvidia-container prints it."""
    if (not isinstance(value, tuple) or len(value) != 2
            or not all(type(v) is int and v >= 0 for v in value)):
        raise NvmlError(f"NVML returned compute capability {value!r}")
    arch = f"{value[0]}.{value[1]}"
    if not is_arch(arch):
        raise NvmlError(f"NVML returned compute capability {value!r}")
    return arch


def _brand(value: object) -> str:
    if type(value) is not int:
        raise NvmlError(f"NVML returned brand {value!r}")
    return _BRANDS.get(value, "Unknown")


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    raise NvmlError(f"NVML returned {type(value).__name__} where text was expected")


def _cuda(value: object) -> str:
    if not isinstance(value, int) or value <= 0:
        raise NvmlError(f"NVML returned CUDA driver version {value!r}")
    return f"{value // 1000}.{value % 1000 // 10}"


def _pci(bus_id: str) -> str:
    # NVML reports an 8-digit domain ("00000000:07:00.0"); the toolkit and sysfs use 4.
    domain, sep, rest = bus_id.partition(":")
    if sep and len(domain) == 8 and domain.startswith("0000"):
        return f"{domain[4:]}:{rest}".lower()
    return bus_id.lower()


def _profile(mig_name: str) -> str:
    # "NVIDIA A100-SXM4-40GB MIG 1g.5gb" -> "1g.5gb"
    _, sep, profile = mig_name.rpartition("MIG ")
    return profile.strip() if sep else mig_name
