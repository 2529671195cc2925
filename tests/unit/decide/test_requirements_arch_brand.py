"""NVIDIA_REQUIRE_* `arch` and `brand` judged per granted GPU, as nvidia-container-cli does.

libnvidia-container (src/cli/configure.c configure_command, src/cli/dsl.c, src/driver.c;
NVIDIA/libnvidia-container at e27a4a75805 / 5823754b857 / 947344949f26): every expression must
hold for each selected GPU (a MIG device: its parent), `arch` is the compute capability compared
as a version, `brand` the driver.c name of nvmlDeviceGetBrand's answer compared with `=` / `!=`
case-insensitively; with no device both hold.
"""

from __future__ import annotations

import pytest

from gpuhook.decide.resolve import Resolved, check_requirements
from gpuhook.errors import ResolveError
from gpuhook.inventory.model import Gpu, Inventory, MigDevice

# nvidia/cuda 11.8.0 base image, ubuntu22.04 (gitlab.com/nvidia/container-images/cuda,
# dist/11.8.0/ubuntu2204/base/Dockerfile, `ENV NVIDIA_REQUIRE_CUDA`), transcribed exactly as two
# independent public copies of that Dockerfile quote it.
CUDA_11_8 = (
    "cuda>=11.8 brand=tesla,driver>=470,driver<471 brand=unknown,driver>=470,driver<471 "
    "brand=nvidia,driver>=470,driver<471 brand=nvidiartx,driver>=470,driver<471 "
    "brand=geforce,driver>=470,driver<471 brand=geforcertx,driver>=470,driver<471 "
    "brand=quadro,driver>=470,driver<471 brand=quadrortx,driver>=470,driver<471 "
    "brand=titan,driver>=470,driver<471 brand=titanrtx,driver>=470,driver<471"
)


def gpu(index: int, arch: str | None, brand: str | None, migs: int = 0) -> Gpu:
    return Gpu(index=index, minor=index, uuid=f"GPU-{index}", pci_bus_id=f"0000:0{index}:00.0",
               name="test GPU", mig_enabled=migs > 0,
               mig_devices=tuple(MigDevice(j, f"MIG-{index}-{j}", j + 1, 0, "1g.5gb")
                                 for j in range(migs)),
               arch=arch, brand=brand)


# `nvidia-smi -q` "Product Brand": NVIDIA (NVML_BRAND_NVIDIA, libnvidia-container's "Unknown")
# for an A100-SXM4-80GB on 525.60.13; Tesla for a Tesla V100-PCIE-32GB on 470.103.01.
A100 = gpu(0, "8.0", "Unknown")
V100 = gpu(1, "7.0", "Tesla")
T4 = gpu(2, "7.5", "Unknown")
GRID = gpu(3, "8.6", "GRID")
OLD = gpu(4, None, None)  # a fake inventory written before arch/brand existed
MIGGED = gpu(5, "8.0", "Unknown", migs=2)


def node(driver: str, cuda: str) -> Inventory:
    return Inventory(driver_version=driver, cuda_version=cuda,
                     gpus=(A100, V100, T4, GRID, OLD, MIGGED))


def on(*gpus: Gpu) -> tuple[Resolved, ...]:
    return tuple(Resolved(g) for g in gpus)


R470 = node("470.82.01", "11.4")
R550 = node("550.54.15", "12.4")
R510 = node("510.47.03", "11.6")


@pytest.mark.parametrize(
    ("expr", "inv", "devices", "refused"),
    [
        pytest.param(CUDA_11_8, R550, on(A100), None,
                     id="the CUDA 11.8 image runs on a 12.4 driver through cuda>=11.8"),
        pytest.param(CUDA_11_8, R470, on(A100), None,
                     id="the CUDA 11.8 image runs on an R470 A100 through brand=unknown"),
        pytest.param(CUDA_11_8, R470, on(V100), None,
                     id="the CUDA 11.8 image runs on an R470 Tesla through brand=tesla"),
        pytest.param(CUDA_11_8, R470, on(GRID), "brand=tesla but GPU 3 (GPU-3) has brand GRID",
                     id="the CUDA 11.8 image is refused on an R470 GRID GPU: no brand listed"),
        pytest.param(CUDA_11_8, R470, on(A100, GRID), "GPU 3",
                     id="the expression must hold for every granted GPU, not just one"),
        pytest.param(CUDA_11_8, R510, on(V100), "driver<471 but the node has driver 510",
                     id="the CUDA 11.8 image is refused on R510 with cuda 11.6"),
        pytest.param(CUDA_11_8, R470, (), None,
                     id="with no device the brand alternatives hold and the driver decides"),
        pytest.param(CUDA_11_8, R510, (), "cuda>=11.8 but the node has cuda 11.6",
                     id="with no device cuda and driver are still checked"),
        pytest.param("brand=TESLA", R550, on(V100), None,
                     id="brand is compared case-insensitively"),
        pytest.param("brand!=tesla", R550, on(V100), "brand!=tesla but GPU 1",
                     id="brand != refuses the brand named"),
        pytest.param("brand!=tesla", R550, on(A100), None,
                     id="brand != passes another brand"),
        pytest.param("arch>=7.5", R550, on(A100, T4), None,
                     id="arch is a version: 8.0 and 7.5 both meet >=7.5"),
        pytest.param("arch>=7.5", R550, on(A100, V100), "arch>=7.5 but GPU 1 (GPU-1) has arch 7.0",
                     id="arch 7.0 fails >=7.5 and names the GPU"),
        pytest.param("arch=8", R550, on(A100), None,
                     id="arch 8.0 equals 8 as dsl.c compares versions"),
        pytest.param("arch<8.0 arch>8.5", R550, on(A100), "arch<8.0",
                     id="arch 8.0 meets neither alternative"),
        pytest.param("arch!=8.0", R550, on(T4), None, id="arch != passes another arch"),
        pytest.param("arch>=9.0", R550, (Resolved(MIGGED, MIGGED.mig_devices[0]),),
                     "GPU 5 (GPU-5) has arch 8.0",
                     id="a MIG device is judged by its parent GPU"),
        pytest.param("arch>=9.0", R550, (), None, id="arch holds with no device"),
        pytest.param("brand=geforce", R550, (), None, id="brand holds with no device"),
        pytest.param("brand>=tesla", R550, on(V100), "compared with = or != only",
                     id="brand with an ordering operator is an invalid expression"),
        pytest.param("arch>=sm_80", R550, on(A100), "not dotted numbers",
                     id="an arch that is not a version is an invalid expression"),
    ],
)
def test_arch_and_brand(expr: str, inv: Inventory, devices: tuple[Resolved, ...],
                        refused: str | None) -> None:
    reqs = (("NVIDIA_REQUIRE_CUDA", expr),)
    if refused is None:
        assert check_requirements(reqs, inv, devices) == []
    else:
        with pytest.raises(ResolveError) as e:
            check_requirements(reqs, inv, devices)
        assert refused in str(e.value)


@pytest.mark.parametrize(
    ("expr", "devices", "refused"),
    [
        pytest.param("brand=tesla,driver>=550", on(OLD), None,
                     id="an unknown brand with a met driver passes with a note"),
        pytest.param("arch>=9.0", on(OLD), None,
                     id="an unknown arch alone passes with a note"),
        pytest.param("brand=tesla,driver>=999", on(OLD), "driver>=999",
                     id="an unknown brand does not hide a failing driver"),
        pytest.param("cuda>=13.0 brand=tesla,driver>=550", on(OLD), "cuda>=13.0",
                     id="an unjudged alternative never outweighs a failing one"),
        pytest.param("cuda>=12.0 brand=tesla", on(OLD), None,
                     id="a met alternative before an unjudged one needs no note"),
        pytest.param("arch>=9.0", on(A100, OLD), "GPU 0",
                     id="a known GPU's failure refuses whatever the unknown one says"),
    ],
)
def test_unknown_arch_or_brand_is_noted_not_passed_silently(
        expr: str, devices: tuple[Resolved, ...], refused: str | None) -> None:
    reqs = (("NVIDIA_REQUIRE_CUDA", expr),)
    if refused is not None:
        with pytest.raises(ResolveError, match=refused):
            check_requirements(reqs, R550, devices)
        return
    notes = check_requirements(reqs, R550, devices)
    if expr.startswith("cuda>=12.0"):
        assert notes == []
    else:
        assert len(notes) == 1
        assert "not evaluated" in notes[0] and "GPU 4 has no" in notes[0]


def test_mig_devices_of_one_gpu_are_judged_once() -> None:
    devices = tuple(Resolved(MIGGED, m) for m in MIGGED.mig_devices)
    old_migs = gpu(4, None, None, migs=2)
    inv = Inventory("550.54.15", "12.4", (old_migs,))
    notes = check_requirements((("NVIDIA_REQUIRE_X", "arch>=8.0"),), inv,
                               tuple(Resolved(old_migs, m) for m in old_migs.mig_devices))
    assert len(notes) == 1  # one note for the parent, not one per MIG device
    assert check_requirements((("NVIDIA_REQUIRE_X", "arch>=8.0"),), node("550.54.15", "12.4"),
                              devices) == []


def test_notes_stay_bounded_over_many_unknown_gpus() -> None:
    gpus = tuple(gpu(i, None, None) for i in range(8))
    inv = Inventory("550.54.15", "12.4", gpus)
    expr = " ".join(f"brand=tesla,driver>={550 - i}" for i in range(10))
    notes = check_requirements((("NVIDIA_REQUIRE_CUDA", expr),), inv, on(*gpus))
    assert len(notes) == 17
    assert notes[-1] == "NVIDIA_REQUIRE_CUDA: 64 more alternatives not evaluated"
