"""The NVML backend against a fake pynvml module with real return types and error classes."""

from __future__ import annotations

import pytest

from gpuhook.errors import NvmlError
from gpuhook.inventory.fake import load_fake
from gpuhook.inventory.nvml import load_nvml
from tests.fakes import pynvml_fake as fake
from tests.unit.specs import MIG8


def a100_world(**kw: object) -> fake.World:
    gpus = [
        fake.FakeGpu("GPU-aaaa", "NVIDIA A100-SXM4-40GB", "00000000:07:00.0", minor=0,
                     mig_mode=1, migs={
                         0: fake.FakeMig("MIG-a0", 2, 0, "NVIDIA A100-SXM4-40GB MIG 3g.20gb"),
                         2: fake.FakeMig("MIG-a2", 5, 0, "NVIDIA A100-SXM4-40GB MIG 2g.10gb"),
                     }),
        fake.FakeGpu("GPU-bbbb", "NVIDIA A100-SXM4-40GB", "00000000:0F:00.0", minor=3),
        fake.FakeGpu("GPU-cccc", "Tesla T4", "00000000:00:1E.0", minor=1, mig_mode=None),
    ]
    return fake.World(gpus=gpus, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str answers", "bytes answers"])
def test_reads_gpus_and_mig_devices(as_bytes: bool) -> None:
    world = a100_world(as_bytes=as_bytes)
    inv = load_nvml(fake.module(world))
    assert (inv.driver_version, inv.cuda_version) == ("550.54.15", "12.4")
    assert [(g.index, g.minor, g.uuid, g.pci_bus_id, g.mig_enabled) for g in inv.gpus] == [
        (0, 0, "GPU-aaaa", "0000:07:00.0", True),
        (1, 3, "GPU-bbbb", "0000:0f:00.0", False),
        (2, 1, "GPU-cccc", "0000:00:1e.0", False),
    ]
    migs = inv.gpus[0].mig_devices
    assert [(m.index, m.uuid, m.gi, m.ci, m.profile) for m in migs] == [
        (0, "MIG-a0", 2, 0, "3g.20gb"), (2, "MIG-a2", 5, 0, "2g.10gb")]
    assert world.initialized == 0 and world.shutdowns == 1


def test_mig_not_supported_means_no_mig() -> None:
    inv = load_nvml(fake.module(a100_world()))
    assert inv.gpus[2].mig_enabled is False


@pytest.mark.parametrize(
    ("init_error", "advice"),
    [
        pytest.param(fake.NVML_ERROR_LIBRARY_NOT_FOUND, "libnvidia-ml.so.1 was not found",
                     id="library not found"),
        pytest.param(fake.NVML_ERROR_DRIVER_NOT_LOADED, "kernel driver is not loaded",
                     id="driver not loaded"),
        pytest.param(fake.NVML_ERROR_NO_PERMISSION, "run gpuhook as root", id="no permission"),
        pytest.param(fake.NVML_ERROR_UNKNOWN, "Unknown Error", id="unknown code keeps NVML's text"),
    ],
)
def test_init_errors_map_to_actionable_messages(init_error: int, advice: str) -> None:
    with pytest.raises(NvmlError, match=f"NVML nvmlInit failed: .*{advice}"):
        load_nvml(fake.module(a100_world(init_error=init_error)))


@pytest.mark.parametrize(
    ("call", "code", "advice"),
    [
        pytest.param("nvmlDeviceGetMinorNumber", fake.NVML_ERROR_NOT_SUPPORTED,
                     "does not support", id="minor not supported is an error not N/A"),
        pytest.param("nvmlDeviceGetUUID", fake.NVML_ERROR_GPU_IS_LOST, "fallen off the bus",
                     id="GPU lost"),
        pytest.param("nvmlDeviceGetHandleByIndex", fake.NVML_ERROR_NOT_FOUND, "not found",
                     id="device vanished"),
        pytest.param("nvmlSystemGetCudaDriverVersion", fake.NVML_ERROR_FUNCTION_NOT_FOUND,
                     "update the NVIDIA driver", id="function not found"),
        pytest.param("nvmlDeviceGetMigMode", fake.NVML_ERROR_NO_PERMISSION, "root",
                     id="MIG mode errors other than not-supported fail"),
    ],
)
def test_call_errors_fail_closed_and_shut_down(call: str, code: int, advice: str) -> None:
    world = a100_world(fail={call: code})
    with pytest.raises(NvmlError, match=f"NVML {call} failed: .*{advice}"):
        load_nvml(fake.module(world))
    assert world.initialized == 0, "NVML is shut down after a failed read"


def test_missing_function_names_the_right_distribution() -> None:
    mod = fake.module(a100_world())
    del mod.nvmlDeviceGetMaxMigDeviceCount
    with pytest.raises(NvmlError, match="install nvidia-ml-py"):
        load_nvml(mod)


def test_nvml_and_fake_backends_produce_the_same_model() -> None:
    inv = load_fake(MIG8)
    gpus = []
    for g in inv.gpus:
        bus = "0000" + g.pci_bus_id.upper()
        migs = {m.index: fake.FakeMig(m.uuid, m.gi, m.ci, f"{g.name} MIG {m.profile}")
                for m in g.mig_devices}
        gpus.append(fake.FakeGpu(g.uuid, g.name, bus, g.minor, int(g.mig_enabled), migs))
    world = fake.World(gpus=gpus, driver=inv.driver_version, cuda=12040)
    assert load_nvml(fake.module(world)) == inv


def test_mig_mode_not_found_is_an_error_not_no_mig() -> None:
    # Only NOT_SUPPORTED means "this GPU has no MIG"; reading NOT_FOUND as that would let a
    # whole MIG-mode GPU be handed out.
    world = a100_world(fail={"nvmlDeviceGetMigMode": fake.NVML_ERROR_NOT_FOUND})
    with pytest.raises(NvmlError, match="nvmlDeviceGetMigMode failed"):
        load_nvml(fake.module(world))


@pytest.mark.parametrize(
    ("brand", "name"),
    [
        pytest.param(fake.NVML_BRAND_TESLA, "Tesla", id="TESLA is Tesla"),
        pytest.param(fake.NVML_BRAND_QUADRO, "Quadro", id="QUADRO is Quadro"),
        pytest.param(fake.NVML_BRAND_NVS, "NVS", id="NVS is NVS"),
        pytest.param(fake.NVML_BRAND_GRID, "GRID", id="GRID is GRID"),
        pytest.param(fake.NVML_BRAND_GEFORCE, "GeForce", id="GEFORCE is GeForce"),
        pytest.param(fake.NVML_BRAND_TITAN, "TITAN", id="TITAN is TITAN"),
        pytest.param(fake.NVML_BRAND_NVIDIA, "Unknown",
                     id="NVIDIA (A100 H100 T4 today) is Unknown as libnvidia-container says"),
        pytest.param(fake.NVML_BRAND_QUADRO_RTX, "Unknown", id="QUADRO_RTX is Unknown"),
        pytest.param(fake.NVML_BRAND_NVIDIA_VWS, "Unknown", id="a vGPU brand is Unknown"),
        pytest.param(fake.NVML_BRAND_UNKNOWN, "Unknown", id="UNKNOWN is Unknown"),
        pytest.param(99, "Unknown", id="a brand newer than gpuhook is Unknown"),
    ],
)
def test_brand_is_named_as_libnvidia_container_names_it(brand: int, name: str) -> None:
    world = a100_world()
    world.gpus[1].brand = brand
    assert load_nvml(fake.module(world)).gpus[1].brand == name


def test_arch_is_the_compute_capability_per_gpu() -> None:
    world = a100_world()
    world.gpus[1].capability = (9, 0)
    world.gpus[2].capability = (7, 5)
    assert [g.arch for g in load_nvml(fake.module(world)).gpus] == ["8.0", "9.0", "7.5"]


@pytest.mark.parametrize(
    ("call", "code"),
    [
        pytest.param("nvmlDeviceGetBrand", fake.NVML_ERROR_NOT_SUPPORTED,
                     id="brand NOT_SUPPORTED is an error, nvml.h never answers it so"),
        pytest.param("nvmlDeviceGetBrand", fake.NVML_ERROR_GPU_IS_LOST, id="brand GPU lost"),
        pytest.param("nvmlDeviceGetCudaComputeCapability", fake.NVML_ERROR_NOT_SUPPORTED,
                     id="compute capability NOT_SUPPORTED is an error"),
        pytest.param("nvmlDeviceGetCudaComputeCapability", fake.NVML_ERROR_UNKNOWN,
                     id="compute capability unknown error"),
    ],
)
def test_arch_and_brand_errors_fail_closed(call: str, code: int) -> None:
    with pytest.raises(NvmlError, match=f"NVML {call} failed"):
        load_nvml(fake.module(a100_world(fail={call: code})))


def test_a_negative_compute_capability_is_refused() -> None:
    # NVML answers in C ints: a negative one is nonsense, not an arch to compare.
    world = a100_world()
    world.gpus[0].capability = (-1, 0)
    with pytest.raises(NvmlError, match=r"compute capability \(-1, 0\)"):
        load_nvml(fake.module(world))


def test_old_bindings_without_the_brand_call_name_the_right_distribution() -> None:
    mod = fake.module(a100_world())
    del mod.nvmlDeviceGetBrand
    with pytest.raises(NvmlError, match="install nvidia-ml-py"):
        load_nvml(mod)
