"""What driver files a plan holds, per driver capability, on the fake driver host (least
privilege: what the capabilities ask for and nothing else)."""

from __future__ import annotations

import pytest

from gpuhook.config import Config
from gpuhook.decide.driver import MissingDriver
from gpuhook.decide.plan import Plan, Symlink, mount_options
from tests.fakedriver.build import FakeHost
from tests.unit.specs import plan, spec


def _config(host: FakeHost) -> Config:
    return Config(inventory=str(host.inventory), host_root=str(host.root), log_file="/dev/null",
                  inventory_cache="/nonexistent/inventory.json")


def _names(p: Plan, kind: str) -> list[str]:
    return sorted(f.container_path.rsplit("/", 1)[-1] for f in p.driver_files if f.kind == kind)


def _caps_plan(host: FakeHost, caps: str) -> Plan:
    return plan(spec(ids=["0"], env=[f"NVIDIA_DRIVER_CAPABILITIES={caps}"]), _config(host))


V = "550.54.15"


@pytest.mark.parametrize(("caps", "libs", "bins"), [
    ("utility", [f"libnvidia-cfg.so.{V}", f"libnvidia-ml.so.{V}"], ["nvidia-smi"]),
    ("compute", [f"libcuda.so.{V}", f"libnvidia-ptxjitcompiler.so.{V}"], []),
    ("compute,utility", [f"libcuda.so.{V}", f"libnvidia-cfg.so.{V}", f"libnvidia-ml.so.{V}",
                         f"libnvidia-ptxjitcompiler.so.{V}"], ["nvidia-smi"]),
    ("video", [f"libcuda.so.{V}", f"libnvidia-encode.so.{V}",
               f"libnvidia-ptxjitcompiler.so.{V}"], []),
    ("graphics", [f"libGLX_nvidia.so.{V}", f"libnvidia-glcore.so.{V}"], []),
], ids=["utility_gets_nvml_and_nvidia_smi_only", "compute_gets_libcuda_and_its_jit_only",
        "the_default_pair_gets_both", "video_implies_compute", "graphics_gets_the_glvnd_set"])
def test_libraries_and_binaries_follow_the_capabilities(
        fake_driver_host: FakeHost, caps: str, libs: list[str], bins: list[str]) -> None:
    p = _caps_plan(fake_driver_host, caps)
    assert _names(p, "library") == libs
    assert _names(p, "binary") == bins
    assert _names(p, "library32") == []
    assert p.update_ldcache


def test_compute_gets_soname_and_dev_links(fake_driver_host: FakeHost) -> None:
    p = _caps_plan(fake_driver_host, "compute,utility")
    assert set(p.symlinks) >= {
        Symlink("library", "libcuda.so.1", f"libcuda.so.{V}"),
        Symlink("library", "libcuda.so", "libcuda.so.1"),
        Symlink("library", "libnvidia-ml.so.1", f"libnvidia-ml.so.{V}"),
        Symlink("library", "libnvidia-ml.so", "libnvidia-ml.so.1")}


def test_graphics_gets_glx_indirect_and_the_vendor_files(fake_driver_host: FakeHost) -> None:
    p = _caps_plan(fake_driver_host, "graphics")
    assert Symlink("library", "libGLX_indirect.so.0", f"libGLX_nvidia.so.{V}") in p.symlinks
    assert Symlink("library", "libGLX_nvidia.so.0", f"libGLX_nvidia.so.{V}") in p.symlinks
    assert not any(s.path.startswith("libnvidia-glcore") for s in p.symlinks)
    assert sorted(f.container_path for f in p.driver_files if f.kind == "config") == [
        "/etc/vulkan/icd.d/nvidia_icd.json", "/usr/share/glvnd/egl_vendor.d/10_nvidia.json"]


def test_compat32_adds_the_i386_libraries(fake_driver_host: FakeHost) -> None:
    p = _caps_plan(fake_driver_host, "compute,compat32")
    assert _names(p, "library32") == [f"libcuda.so.{V}"]
    assert Symlink("library32", "libcuda.so.1", f"libcuda.so.{V}") in p.symlinks
    assert Symlink("library32", "libcuda.so", "libcuda.so.1") not in p.symlinks


def test_a_granted_gpu_gets_firmware_the_socket_and_its_proc_view(
        fake_driver_host: FakeHost) -> None:
    p = _caps_plan(fake_driver_host, "utility")
    assert _names(p, "firmware") == ["gsp_ga10x.bin", "gsp_tu10x.bin"]
    assert [f.container_path for f in p.driver_files if f.kind == "socket"] == [
        "/run/nvidia-persistenced/socket"]
    assert p.proc_driver_gpus == ("0000:00:1e.0",)


def test_compute_alone_gets_no_utility_socket(fake_driver_host: FakeHost) -> None:
    assert _names(_caps_plan(fake_driver_host, "compute"), "socket") == []


@pytest.mark.parametrize("s", [
    spec(),
    spec(env=["NVIDIA_VISIBLE_DEVICES=all"]),
], ids=["no_request_gets_no_driver_file", "an_ignored_unprivileged_envvar_gets_no_driver_file"])
def test_nothing_granted_means_no_driver_files(fake_driver_host: FakeHost,
                                               s: dict[str, object]) -> None:
    p = plan(s, _config(fake_driver_host))
    assert (p.driver_files, p.symlinks, p.update_ldcache, p.proc_driver_gpus) == ((), (), False, ())


def test_none_gets_the_driver_but_no_gpu_firmware(fake_driver_host: FakeHost) -> None:
    p = plan(spec(env=["NVIDIA_VISIBLE_DEVICES=none"], privileged=True),
             _config(fake_driver_host))
    assert "libnvidia-ml.so." + V in _names(p, "library")
    assert _names(p, "firmware") == []
    assert p.proc_driver_gpus == ()


def test_driver_files_false_gives_nodes_only(fake_driver_host: FakeHost) -> None:
    p = plan(spec(ids=["0"]), _config(fake_driver_host)._replace(driver_files=False))
    assert p.device_nodes and p.driver_files == ()


def test_compute_without_libcuda_refuses_naming_it(fake_driver_host: FakeHost) -> None:
    (fake_driver_host.lib64 / "libcuda.so.1").unlink()
    (fake_driver_host.lib64 / "libcuda.so").unlink()
    (fake_driver_host.root / "etc/ld.so.cache").unlink()
    with pytest.raises(MissingDriver, match=rf"compute needs libcuda\.so\.{V}.*ld\.so\.cache"):
        _caps_plan(fake_driver_host, "compute")


def test_utility_without_nvidia_smi_is_a_note(fake_driver_host: FakeHost) -> None:
    (fake_driver_host.root / "usr/bin/nvidia-smi").unlink()
    p = _caps_plan(fake_driver_host, "utility")
    assert _names(p, "binary") == []
    assert any("nvidia-smi" in n and "not found" in n for n in p.notes)


@pytest.mark.parametrize(("kind", "want"), [
    ("library", ("bind", "ro", "nosuid", "nodev")),
    ("binary", ("bind", "ro", "nosuid", "nodev")),
    ("firmware", ("bind", "ro", "nosuid", "nodev", "noexec")),
    ("socket", ("rbind", "nosuid", "nodev", "noexec")),
], ids=["libraries_stay_executable_for_dlopen", "binaries_read_only",
        "firmware_read_only_noexec", "sockets_read_write_noexec"])
def test_mount_options(kind: str, want: tuple[str, ...]) -> None:
    assert mount_options(kind) == want
