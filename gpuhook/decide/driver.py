"""Which driver files a container gets for its driver capabilities. Pure.

The lists are libnvidia-container's (src/nvc_info.c at commit 00b4b47: utility_libs,
compute_libs, video_libs, graphics_libs, graphics_libs_glvnd, ngx_libs, utility_bins,
compute_bins; graphics_libs_compat is only looked up without GLVND, so not here; src/options.h:
which capability takes which list), the config files the toolkit's graphics discoverer mounts
(nvidia-container-toolkit internal/discover/graphics.go at commit d34b304), and the IPC paths of
`lookup_ipcs` (NV_PERSISTENCED_SOCKET, NV_FABRICMANAGER_SOCKET, NV_MPS_PIPE_DIR; the toolkit's
internal/discover/ipc.go has the same three).

Least privilege: a container gets what its capabilities name, nothing more. (The toolkit's
jit-cdi mode instead mounts every `*.so.<driver version>` in the ld cache whatever the
capabilities say: see README "Driver files".)
"""

from __future__ import annotations

from gpuhook.decide.facts import DriverFacts, DriverLibrary
from gpuhook.errors import HostError
from gpuhook.record import TYPE_CHECKING, dataclass, field

if TYPE_CHECKING:  # plan.py imports this module and builds the Plan's objects
    from gpuhook.decide.plan import DriverFile

UTILITY_LIBS = ("libnvidia-ml.so", "libnvidia-cfg.so", "libnvidia-nscq.so")
COMPUTE_LIBS = (
    "libcuda.so", "libcudadebugger.so", "libnvidia-opencl.so", "libnvidia-gpucomp.so",
    "libnvidia-ptxjitcompiler.so", "libnvidia-fatbinaryloader.so", "libnvidia-allocator.so",
    "libnvidia-compiler.so", "libnvidia-pkcs11.so", "libnvidia-pkcs11-openssl3.so",
    "libnvidia-nvvm.so", "libnvidia-tileiras.so",
)
VIDEO_LIBS = ("libvdpau_nvidia.so", "libnvidia-encode.so", "libnvidia-opticalflow.so",
              "libnvcuvid.so")
GRAPHICS_LIBS = (
    "libnvidia-eglcore.so", "libnvidia-glcore.so", "libnvidia-tls.so", "libnvidia-glsi.so",
    "libnvidia-fbc.so", "libnvidia-ifr.so", "libnvidia-rtcore.so", "libnvoptix.so",
    # GLVND vendor libraries (graphics_libs_glvnd)
    "libGLX_nvidia.so", "libEGL_nvidia.so", "libGLESv2_nvidia.so", "libGLESv1_CM_nvidia.so",
    "libnvidia-glvkspirv.so", "libnvidia-cbl.so",
)
NGX_LIBS = ("libnvidia-ngx.so",)
UTILITY_BINS = ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced")
COMPUTE_BINS = ("nvidia-cuda-mps-control", "nvidia-cuda-mps-server")

CAPABILITY_LIBS: dict[str, tuple[str, ...]] = {
    "utility": UTILITY_LIBS,
    "compute": COMPUTE_LIBS,
    "video": VIDEO_LIBS + COMPUTE_LIBS,  # options.h: video = VIDEO_LIBS|COMPUTE_LIBS
    "graphics": GRAPHICS_LIBS,
    "display": GRAPHICS_LIBS,  # display = DISPLAY|GRAPHICS_LIBS|DISPLAY_LIBS
    "ngx": NGX_LIBS,
}
CAPABILITY_BINS: dict[str, tuple[str, ...]] = {"utility": UTILITY_BINS, "compute": COMPUTE_BINS}

# (path under /etc or an XDG data dir, the container dir it goes to), graphics and display
CONFIG_FILES = (
    ("glvnd/egl_vendor.d/10_nvidia.json", "/usr/share"),
    ("egl/egl_external_platform.d/15_nvidia_gbm.json", "/usr/share"),
    ("egl/egl_external_platform.d/10_nvidia_wayland.json", "/usr/share"),
    ("vulkan/icd.d/nvidia_icd.json", "/etc"),
    ("vulkan/icd.d/nvidia_layers.json", "/etc"),
    ("vulkan/implicit_layer.d/nvidia_layers.json", "/etc"),
    ("OpenCL/vendors/nvidia.icd", "/etc"),
)
FIRMWARE_DIR = "lib/firmware/nvidia/{version}"
# (path under host-root, is a directory), by capability
SOCKETS_BY_CAPABILITY = {
    "utility": (("run/nvidia-persistenced/socket", False),
                ("run/nvidia-fabricmanager/socket", False)),
    "compute": (("tmp/nvidia-mps", True),),
}
SOCKETS = tuple(s for group in SOCKETS_BY_CAPABILITY.values() for s in group)
ALL_LIBRARY_STEMS = tuple(dict.fromkeys(s for libs in CAPABILITY_LIBS.values() for s in libs))
ALL_BINARIES = UTILITY_BINS + COMPUTE_BINS
# dev links users and frameworks dlopen (toolkit issue #1479, libnvidia-container #292)
DEV_LINKS = {"libcuda.so": "libcuda.so.1", "libnvidia-ml.so": "libnvidia-ml.so.1"}
GLX_INDIRECT = "libGLX_indirect.so.0"


class MissingDriver(HostError):
    """Compute asked for and the driver's libcuda is absent: the GPU request must fail."""


@dataclass
class Selection:
    """What a container gets of the driver; plan.py turns it into DriverFiles and Symlinks."""

    libraries: list[tuple[str, DriverLibrary]] = field(default_factory=list)  # (kind, lib)
    files: list[DriverFile] = field(default_factory=list)  # binaries, firmware, configs, sockets
    links: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, name, target)
    notes: list[str] = field(default_factory=list)


def select(caps: tuple[str, ...], facts: DriverFacts, sockets: tuple[DriverFile, ...],
           gpus_granted: bool) -> Selection:
    """The driver files for driver capabilities `caps`. Raises MissingDriver when a GPU is
    granted with compute (or video) and there is no libcuda.so.<version>."""
    out = Selection(notes=list(facts.notes))
    stems = _wanted(CAPABILITY_LIBS, caps)
    arches = ("x86-64", "i386") if "compat32" in caps else ("x86-64",)
    libs = [lib for lib in facts.libraries if lib.stem in stems and lib.arch in arches]
    if gpus_granted and "libcuda.so" in stems and not any(
            lib.stem == "libcuda.so" and lib.arch == "x86-64" for lib in libs):
        why = (f"which {facts.ld_cache} does not list (resolved under host-root)"
               if not facts.notes else "; ".join(facts.notes))
        raise MissingDriver(
            f"driver capability {'compute' if 'compute' in caps else 'video'} needs "
            f"libcuda.so.{facts.version}, but {why}; install the NVIDIA driver's user-space "
            "libraries, fix host-root, or set driver-files = false")
    for lib in libs:
        kind = "library" if lib.arch == "x86-64" else "library32"
        out.libraries.append((kind, lib))
        out.links.extend(_links(kind, lib))
    _note_missing(out.notes, caps, stems, libs, facts.version)
    bins = _wanted(CAPABILITY_BINS, caps)
    have = {f.container_path.rsplit("/", 1)[-1]: f for f in facts.files if f.kind == "binary"}
    out.files.extend(have[b] for b in bins if b in have)
    missing = [b for b in bins if b not in have]
    if missing:
        out.notes.append("not found under host-root (usr/bin, usr/sbin, bin, sbin): "
                         + ", ".join(missing))
    if gpus_granted:
        firmware = [f for f in facts.files if f.kind == "firmware"]
        out.files.extend(firmware)
        if not firmware:
            out.notes.append("no GSP firmware under host-root "
                             f"{FIRMWARE_DIR.format(version=facts.version)}/gsp*.bin")
    if "graphics" in caps or "display" in caps:
        out.files.extend(f for f in facts.files if f.kind == "config")
    want_sockets = {"/" + rel for c in caps for rel, _ in SOCKETS_BY_CAPABILITY.get(c, ())}
    out.files.extend(s for s in sockets if s.container_path in want_sockets)
    return out


def _wanted(table: dict[str, tuple[str, ...]], caps: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n for c in caps for n in table.get(c, ())))


def _links(kind: str, lib: DriverLibrary) -> list[tuple[str, str, str]]:
    sonames = [k for k in lib.links if k != lib.name and not k.endswith(".so")]
    links = [(kind, soname, lib.name) for soname in sonames]
    if kind == "library":
        for dev, soname in DEV_LINKS.items():
            if lib.stem == dev and soname in sonames:
                links.append((kind, dev, soname))
        if lib.stem == "libGLX_nvidia.so":
            links.append((kind, GLX_INDIRECT, lib.name))
    return links


def _note_missing(notes: list[str], caps: tuple[str, ...], stems: tuple[str, ...],
                  libs: list[DriverLibrary], version: str) -> None:
    have = {lib.stem for lib in libs if lib.arch == "x86-64"}
    missing = [s for s in stems if s not in have]
    if missing:
        notes.append(f"driver {version}: no {', '.join(missing)} (.so.{version}) in the host's "
                     f"ld cache, asked for by {', '.join(caps)}")
