"""Driver files end to end with the real runc 1.1, cgroup v1 and v2, in both gpuhook modes
(issue 14): the prestart hook (hook mode: gpuhook bind-mounts from the host into the container's
mount namespace) and gpuhook-runtime (spec mode: runc mounts what the shim wrote into
config.json, then runs `gpuhook hook create-container` for links and the ld cache).

The driver is the fake one from tests/fakedriver (built with gcc: libcuda / libnvidia-ml whose
device count is the number of /dev/nvidia<N> that open with ENXIO, i.e. that the device cgroup
allows, and an `nvidia-smi -L`), in a fake host tree whose etc/ld.so.cache the real ldconfig
wrote. The image is glibc-capable (tests/e2e/glibc_rootfs.py), with `cuda-count`, a program
that dlopen()s libcuda.so.1 through the image's own loader and ld cache.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.e2e import runc_harness as rh
from tests.e2e.driver_env import file_hash, shim_wrapper, tree_hash, write_config
from tests.fakedriver import build as fakedriver

pytestmark = pytest.mark.e2e

GPUMODES = ("hook", "spec")

LIBDIR = "/usr/lib/x86_64-linux-gnu"
# What the container reports, one tagged line per fact; `|| true` keeps going after a failure.
SCRIPT = r"""
echo "SMI-BEGIN"; nvidia-smi -L 2>&1; echo "SMI-END rc=$?"
echo "COUNT $(cuda-count 2>&1 | tr '\n' ' ')"
echo "CACHE $(ldconfig -p | grep -c 'libcuda.so.1 ')"
echo "LIBS $(ls /usr/lib/x86_64-linux-gnu | grep -E 'nvidia|cuda' | tr '\n' ' ')"
echo "SMI-FILE $(ls /usr/bin/nvidia-smi 2>&1 | tr '\n' ' ')"
for f in /usr/lib/x86_64-linux-gnu/libcuda.so.* /usr/bin/nvidia-smi; do
  [ -f "$f" ] || continue
  if (exec 3>>"$f") 2>/dev/null; then echo "WRITABLE $f"; else echo "READONLY $f"; fi
done
echo "DONE"
"""


@dataclasses.dataclass(frozen=True)
class Seen:
    smi: list[str]
    count: str
    cache_hits: int
    libs: list[str]
    smi_file: bool
    writable: list[str]
    readonly: list[str]


def parse(stdout: str) -> Seen:
    lines = stdout.splitlines()
    assert "DONE" in lines, stdout
    smi = lines[lines.index("SMI-BEGIN") + 1:next(i for i, x in enumerate(lines)
                                                  if x.startswith("SMI-END"))]
    tag = {x.split(" ", 1)[0]: x.split(" ", 1)[1] for x in lines if " " in x}
    return Seen(smi=smi, count=tag["COUNT"].strip(), cache_hits=int(tag["CACHE"]),
                libs=tag["LIBS"].split(), smi_file="No such file" not in tag["SMI-FILE"],
                writable=[x.split()[1] for x in lines if x.startswith("WRITABLE ")],
                readonly=[x.split()[1] for x in lines if x.startswith("READONLY ")])


def start(tmp_path: Path, build: fakedriver.FakeDriverBuild, image: Path, gpumode: str,
          cgroup: str, opts: rh.BundleOptions) -> tuple[rh.RunResult, Path, str]:
    host = fakedriver.make_fake_host(build, tmp_path / "host")
    log = tmp_path / "gpuhook.log"
    cfg = write_config(tmp_path / "gpuhook.toml", host.inventory, host.root, log, gpumode)
    before = tree_hash(host.root), file_hash("/etc/ld.so.cache")
    args = ["sh", "-c", SCRIPT]
    if gpumode == "hook":
        bundle = rh.make_bundle(tmp_path / "bundle", image, dataclasses.replace(
            opts, args=args, hook=rh.hook_command(cfg)))
        result = rh.run_container(bundle, cgroup, timeout=120)
    else:
        shim = shim_wrapper(tmp_path / "shim", cfg)
        bundle = rh.make_bundle(tmp_path / "bundle", image, dataclasses.replace(opts, args=args))
        result = rh.run_container(bundle, cgroup, timeout=120, runtime=str(shim))
    assert (tree_hash(host.root), file_hash("/etc/ld.so.cache")) == before, \
        "the fake host tree or the host's ld cache changed"
    return result, log, host.version


CASES = [
    # (id, request ids, capabilities, expected nvidia-smi lines, expected cuda-count)
    ("one GPU with compute,utility: nvidia-smi lists one, dlopen counts one",
     ("2",), "compute,utility", 1, "1"),
    ("two GPUs: nvidia-smi lists two, dlopen counts two", ("2", "3"), "compute,utility", 2, "2"),
]


@pytest.mark.parametrize("gpumode", GPUMODES)
@pytest.mark.parametrize(("ids", "caps", "lines", "count"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_a_granted_container_runs_nvidia_smi_and_loads_libcuda(
        tmp_path: Path, driver_build: fakedriver.FakeDriverBuild, glibc_image: Path,
        cgroup_mode: str, gpumode: str, ids: tuple[str, ...], caps: str, lines: int,
        count: str) -> None:
    opts = rh.BundleOptions(request_ids=ids, env=(f"NVIDIA_DRIVER_CAPABILITIES={caps}",))
    result, log, version = start(tmp_path, driver_build, glibc_image, gpumode, cgroup_mode, opts)
    assert result.ok, result.stderr + log.read_text()
    seen = parse(result.stdout)
    assert len(seen.smi) == lines and all(x.startswith("GPU ") for x in seen.smi), seen.smi
    assert seen.count == count
    assert seen.cache_hits == 1  # the image's own ldconfig -p lists libcuda.so.1
    assert f"libcuda.so.{version}" in seen.libs and "libcuda.so.1" in seen.libs
    assert seen.writable == []
    assert f"{LIBDIR}/libcuda.so.{version}" in seen.readonly
    assert "/usr/bin/nvidia-smi" in seen.readonly


@pytest.mark.parametrize("gpumode", GPUMODES)
def test_utility_only_gets_nvidia_smi_but_no_libcuda(
        tmp_path: Path, driver_build: fakedriver.FakeDriverBuild, glibc_image: Path,
        cgroup_mode: str, gpumode: str) -> None:
    opts = rh.BundleOptions(request_ids=("2",), env=("NVIDIA_DRIVER_CAPABILITIES=utility",))
    result, log, _ = start(tmp_path, driver_build, glibc_image, gpumode, cgroup_mode, opts)
    assert result.ok, result.stderr + log.read_text()
    seen = parse(result.stdout)
    assert len(seen.smi) == 1 and seen.smi[0].startswith("GPU "), seen.smi
    assert not any(x.startswith("libcuda") for x in seen.libs), seen.libs
    assert seen.cache_hits == 0
    assert "libcuda.so.1" in seen.count  # cuda-count: dlopen fails, naming it


NOTHING = [
    ("no request at all", rh.BundleOptions()),
    ("an unprivileged NVIDIA_VISIBLE_DEVICES=all without a device plugin mount",
     rh.BundleOptions(env=("NVIDIA_VISIBLE_DEVICES=all",
                           "NVIDIA_DRIVER_CAPABILITIES=compute,utility"))),
]


@pytest.mark.parametrize("gpumode", GPUMODES)
@pytest.mark.parametrize("opts", [n[1] for n in NOTHING],
                         ids=[f"{n[0]} gets no driver file" for n in NOTHING])
def test_a_container_granted_nothing_gets_no_driver_file(
        tmp_path: Path, driver_build: fakedriver.FakeDriverBuild, glibc_image: Path,
        cgroup_mode: str, gpumode: str, opts: rh.BundleOptions) -> None:
    result, _, _ = start(tmp_path, driver_build, glibc_image, gpumode, cgroup_mode, opts)
    assert result.ok, result.stderr
    seen = parse(result.stdout)
    assert seen.libs == [] and not seen.smi_file
    assert seen.smi and "not found" in seen.smi[0]  # the operators' check: nvidia-smi is absent
    assert seen.cache_hits == 0
