"""The fake NVIDIA driver for tests: C sources in this directory, built with gcc at test time into a
fake host tree that looks like a driver install to gpuhook (and to `ldconfig`).

API (tests/conftest.py wraps it in fixtures `fake_driver_build` (session) and `fake_driver_host`):

    build = build_fake_driver(workdir, fake="1gpu")   # compile once: FakeDriverBuild
    host = make_fake_host(build, tmp / "host")         # a fresh host tree: FakeHost
    host.root            # use as `host-root`; it also holds the fake host's proc/ and sys/ files
    host.inventory       # the fake inventory YAML (`inventory` config key)
    host.version         # its driver_version, e.g. "550.54.15"
    host.lib64 / lib32   # dirs (under root) holding the x86-64 / i386 libraries
    build.cuda_count     # a program for test IMAGES: dlopen("libcuda.so.1"), print the count
    build.nvidia_smi     # the fake nvidia-smi (also installed at <root>/usr/bin/nvidia-smi)

What the host tree holds (the layout of a distribution driver install, made with real tools):
- usr/lib/x86_64-linux-gnu: libnvidia-ml.so.<ver> (SONAME libnvidia-ml.so.1), libcuda.so.<ver>
  (SONAME libcuda.so.1) whose device count is the number of /dev/nvidia<N> nodes that open with
  ENXIO (allowed by the device cgroup, no driver); libnvidia-ptxjitcompiler.so.<ver>,
  libnvidia-cfg.so.<ver>, libGLX_nvidia.so.<ver> (SONAME libGLX_nvidia.so.0),
  libnvidia-glcore.so.<ver>, libnvidia-encode.so.<ver> as stubs; SONAME links for each, dev links
  libcuda.so -> libcuda.so.1 (not libnvidia-ml.so: gpuhook must create that one);
- usr/lib/i386-linux-gnu: a 32-bit libcuda.so.<ver> (libc6 flagged) + its SONAME link;
- usr/bin/nvidia-smi (`-L` only, loads libnvidia-ml.so.1 by SONAME);
- lib/firmware/nvidia/<ver>/gsp_ga10x.bin, gsp_tu10x.bin;
- run/nvidia-persistenced/socket (a real unix socket file);
- usr/share/glvnd/egl_vendor.d/10_nvidia.json, etc/vulkan/icd.d/nvidia_icd.json;
- etc/ld.so.conf and etc/ld.so.cache written by the real `ldconfig -X -r <root>` (-X: ldconfig
  must not rewrite the links above);
- the fake host's proc/ and sys/ files from gpuhook/fake/hosts/<fake>.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gpuhook.inventory.fake import load_fake

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FAKE = REPO / "gpuhook" / "fake"
LIB64 = "usr/lib/x86_64-linux-gnu"
LIB32 = "usr/lib/i386-linux-gnu"
LDCONFIG = "/sbin/ldconfig"
CC = "gcc"
# name stem -> SONAME suffix, for the stub libraries (the driver's own SONAMEs)
STUBS = {
    "libnvidia-cfg": "libnvidia-cfg.so.1",
    "libnvidia-ptxjitcompiler": "libnvidia-ptxjitcompiler.so.1",
    "libGLX_nvidia": "libGLX_nvidia.so.0",
    "libnvidia-glcore": "",  # "": the SONAME is the versioned file name, as in the driver
    "libnvidia-encode": "libnvidia-encode.so.1",
}
EGL_VENDOR_JSON = ('{"file_format_version": "1.0.0", "ICD": {"library_path": '
                   '"libEGL_nvidia.so.0"}}\n')
VULKAN_ICD_JSON = ('{"file_format_version": "1.0.0", "ICD": {"library_path": "libGLX_nvidia.so.0",'
                   ' "api_version": "1.3.277"}}\n')


def skip_reason() -> str | None:
    """Why the fake driver can't be built here (None when it can)."""
    for tool in (CC, LDCONFIG):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install gcc libc-bin)"
    return None


@dataclass(frozen=True)
class FakeDriverBuild:
    fake: str
    version: str
    cuda_version: str
    out: Path  # compiled files
    nvidia_smi: Path
    cuda_count: Path


@dataclass(frozen=True)
class FakeHost:
    root: Path
    inventory: Path
    version: str

    @property
    def lib64(self) -> Path:
        return self.root / LIB64

    @property
    def lib32(self) -> Path:
        return self.root / LIB32


def _cc(*args: str | Path) -> None:
    cmd = [CC, "-O1", "-Wall", "-Werror", *map(str, args)]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}\n{done.stderr}")


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _inventory_header(fake: str, out: Path) -> tuple[str, str]:
    """inventory.h: the fake GPUs' minors, names and UUIDs; returns (driver, CUDA version)."""
    inv = load_fake(str(FAKE / "inventories" / f"{fake}.yaml"))
    rows = ",\n".join(f"    {{{g.minor}, {_c_string(g.name)}, {_c_string(g.uuid)}}}"
                      for g in inv.gpus)
    (out / "inventory.h").write_text(
        f"/* generated from gpuhook/fake/inventories/{fake}.yaml */\n"
        "struct fake_gpu { unsigned int minor; const char *name; const char *uuid; };\n"
        f"static const struct fake_gpu FAKE_GPUS[] = {{\n{rows}\n}};\n")
    return inv.driver_version, inv.cuda_version


def build_fake_driver(workdir: Path, fake: str = "1gpu") -> FakeDriverBuild:
    """Compile the fake driver for the fake inventory `fake` into `workdir` (created)."""
    out = Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    version, cuda = _inventory_header(fake, out)
    major, _, minor = cuda.partition(".")
    inc = ("-I", out, "-I", HERE, f"-DFAKE_DRIVER_VERSION={_c_string(version)}",
           f"-DFAKE_CUDA_VERSION={int(major) * 1000 + int(minor or 0) * 10}")
    gpus = HERE / "gpus.c"
    shared = ("-shared", "-fPIC")
    _cc(*shared, *inc, "-Wl,-soname,libnvidia-ml.so.1", "-o", out / f"libnvidia-ml.so.{version}",
        HERE / "nvml.c", gpus)
    _cc(*shared, *inc, "-Wl,-soname,libcuda.so.1", "-o", out / f"libcuda.so.{version}",
        HERE / "cuda.c", gpus)
    for stem, soname in STUBS.items():
        name = f"{stem}.so.{version}"
        _cc(*shared, f"-Wl,-soname,{soname or name}", "-o", out / name, HERE / "stub.c")
    _cc("-o", out / "nvidia-smi", HERE / "nvidia-smi.c")
    _cc("-o", out / "cuda-count", HERE / "cuda-count.c")
    # 32-bit: no 32-bit libc here, so link against a 32-bit stub libc.so.6, which makes ldconfig
    # flag the library "libc6" like a real i386 driver library (without it: plain "ELF").
    libc32 = out / "i386"
    libc32.mkdir(exist_ok=True)
    _cc("-m32", *shared, "-nostdlib", "-Wl,-soname,libc.so.6", "-o", libc32 / "libc.so.6",
        HERE / "stub.c")
    _cc("-m32", *shared, "-nostdlib", "-Wl,--no-as-needed", "-Wl,-soname,libcuda.so.1", "-o",
        libc32 / f"libcuda.so.{version}", HERE / "stub.c", libc32 / "libc.so.6")
    return FakeDriverBuild(fake, version, cuda, out, out / "nvidia-smi", out / "cuda-count")


def _link(target: str, path: Path) -> None:
    path.symlink_to(target)


def make_fake_host(build: FakeDriverBuild, root: Path) -> FakeHost:
    """A fresh fake host tree at `root` (which must not exist) from a build."""
    root = Path(root)
    shutil.copytree(FAKE / "hosts" / build.fake, root, symlinks=True)
    ver = build.version
    lib64 = root / LIB64
    lib32 = root / LIB32
    lib64.mkdir(parents=True)
    lib32.mkdir(parents=True)
    for stem in ("libnvidia-ml", "libcuda", *STUBS):
        shutil.copy2(build.out / f"{stem}.so.{ver}", lib64)
    _link(f"libnvidia-ml.so.{ver}", lib64 / "libnvidia-ml.so.1")
    _link(f"libcuda.so.{ver}", lib64 / "libcuda.so.1")
    _link("libcuda.so.1", lib64 / "libcuda.so")
    for stem, soname in STUBS.items():
        if soname:
            _link(f"{stem}.so.{ver}", lib64 / soname)
    shutil.copy2(build.out / "i386" / f"libcuda.so.{ver}", lib32)
    _link(f"libcuda.so.{ver}", lib32 / "libcuda.so.1")
    bindir = root / "usr" / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(build.nvidia_smi, bindir / "nvidia-smi")
    firmware = root / "lib" / "firmware" / "nvidia" / ver
    firmware.mkdir(parents=True)
    for name in ("gsp_ga10x.bin", "gsp_tu10x.bin"):
        (firmware / name).write_bytes(b"fake GSP firmware " + name.encode() + b"\n")
    sock_dir = root / "run" / "nvidia-persistenced"
    sock_dir.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_dir / "socket"))  # the file stays after close, as a socket inode
    for rel, text in (("usr/share/glvnd/egl_vendor.d/10_nvidia.json", EGL_VENDOR_JSON),
                      ("etc/vulkan/icd.d/nvidia_icd.json", VULKAN_ICD_JSON)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "ld.so.conf").write_text(f"/{LIB64}\n/{LIB32}\n")
    subprocess.run([LDCONFIG, "-X", "-r", str(root)], check=True, capture_output=True,
                   text=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"})
    os.chmod(root, 0o755)
    return FakeHost(root, FAKE / "inventories" / f"{build.fake}.yaml", ver)
