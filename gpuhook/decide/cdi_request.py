"""CDI device names, IMEX channels and gated device families asked in a spec: the requests gpuhook
serves itself for runtimes without CDI (containerd 1.6). Pure.

How each is asked, transcribed from the programs that write them:
- volume mounts, `/dev/null` at `<root>/cdi/<vendor>/<class>/<dev>` or
  `<root>/cdi/<vendor>/<class>=<dev>` (nvidia-container-toolkit v1.18
  internal/config/image/cuda_image.go, cdiDeviceMountRequest);
  `<root>/imex/<N>` for IMEX channels (same file, imexChannelsFromMounts). Written by the device
  plugin: trusted as the plain id mounts are.
- annotations `cdi.k8s.io/<plugin>_<id>` = `<vendor>/<class>=<dev>[,...]`: the device plugin's
  `cdi-annotations` strategy (k8s-device-plugin v0.20 internal/plugin/server.go
  getCDIDeviceAnnotations -> container-device-interface v1.1.0 pkg/cdi/annotations.go
  UpdateAnnotations, key "cdi.k8s.io/nvidia-device-plugin_<uuid>"). The kubelet copies the Allocate
  response's annotations into the CRI container config, and containerd passes container
  annotations into the spec when its `container_annotations` allow-list names them. A pod author
  cannot write container annotations, so they are trusted as the mounts are, unless containerd's
  `pod_annotations` allow-list also lets pod annotations with that prefix through (`gpuhook
  install` warns about that).
- `NVIDIA_VISIBLE_DEVICES` entries that are qualified names, and `NVIDIA_IMEX_CHANNELS`: env,
  which a pod author writes, so believed for privileged containers only (policy's env rule;
  `NVIDIA_IMEX_CHANNELS=all` is ignored, as upstream does).
- `NVIDIA_GDS`, `NVIDIA_MOFED`, `NVIDIA_GDRCOPY`, `NVIDIA_NVSWITCH` = `enabled`: env set by the
  device plugin (server.go getAllocateResponse) but writable by a pod author too: honoured only
  for a container granted a GPU through the trusted path (a mount, or privileged) and only for
  the families the config lists (`gated-device-families`, default none).

`nvidia.com/gpu` names are gpuhook's own ids (the generated spec names each device by its index
and UUID, plus `all`), so they become plain id requests and take the same path as every other
GPU request. The device plugin names the same devices under its own vendor,
`k8s.device-plugin.nvidia.com/gpu=<uuid or index>` (v0.20 cmd/nvidia-device-plugin/
plugin-manager.go `cdi.WithVendor`, device names by its deviceIDStrategy, internal/cdi/cdi.go
QualifiedName), and `.../imex-channel=<N>`: those are served alike. Other vendors' names, and
NVIDIA classes gpuhook does not generate, are left to the runtime and noted.
"""

from __future__ import annotations

from gpuhook.decide.cdi_names import GPU_CLASS, IMEX_CLASS, VENDOR, parse_qualified_name
from gpuhook.decide.request import (
    ENV_VISIBLE,
    MAX_IDS,
    Ignored,
    clean_path,
    device_list_path,
)
from gpuhook.decide.spec import Mount, SpecView
from gpuhook.errors import InputError
from gpuhook.limits import DEV_NULL
from gpuhook.record import TYPE_CHECKING, dataclass, replace

if TYPE_CHECKING:
    from collections.abc import Mapping

CDI_ANNOTATION_PREFIX = "cdi.k8s.io/"
DEVICE_PLUGIN_VENDOR = "k8s.device-plugin.nvidia.com"
SERVED_VENDORS = (VENDOR, DEVICE_PLUGIN_VENDOR)
ENV_IMEX = "NVIDIA_IMEX_CHANNELS"
MAX_CDI_ANNOTATIONS = 256
MAX_ANNOTATION_VALUE = 64 << 10
MAX_IMEX_CHANNEL = (1 << 20) - 1  # a dev_t minor (the toolkit's maxImexChannelID)
ALL_CHANNELS = -1
SOURCE_MOUNTS = "volume-mounts"
SOURCE_ENV = "envvar"
SOURCE_ANNOTATION = "cdi-annotation"
# Family -> the env var the device plugin sets (server.go) and the toolkit reads
# (internal/modifier/cdi.go gatedDevices), in the toolkit's order.
GATED_ENV = {"gds": "NVIDIA_GDS", "mofed": "NVIDIA_MOFED", "gdrcopy": "NVIDIA_GDRCOPY",
             "nvswitch": "NVIDIA_NVSWITCH"}
GATED_FAMILIES = tuple(GATED_ENV)


@dataclass(frozen=True)
class Asked:
    """What a spec asks beyond plain GPU ids, before it is judged against the grant."""

    imex_mounts: tuple[int, ...] = ()  # ALL_CHANNELS for `all`
    imex_env: tuple[int, ...] = ()
    imex_env_raw: str | None = None
    gated: tuple[str, ...] = ()  # families whose env var is "enabled"
    ignored: tuple[Ignored, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def anything(self) -> bool:
        return bool(self.imex_mounts or self.imex_env or self.imex_env_raw or self.gated)


def cdi_requests(spec: SpecView, root: str, accept_mounts: bool = True
                 ) -> tuple[SpecView, Asked]:
    """The view the GPU request stages read (CDI `nvidia.com/gpu` names turned into plain ids;
    `cdi/` and `imex/` mounts taken out) and everything else that was asked."""
    ignored: list[Ignored] = []
    notes: list[str] = []
    mounts: list[Mount] = []
    extra_ids: list[str] = []
    imex_mounts: list[int] = []
    prefix = root.rstrip("/") + "/"  # where the plain id mounts made from CDI names go
    for m in spec.mounts:
        # Read as request.py reads the device list (the toolkit's cleaning; traversal refused
        # there, where this mount stays when it is not one of ours).
        try:
            rel = device_list_path(m.destination, root)
        except InputError:
            rel = None
        if not rel or m.source is None or clean_path(m.source) != DEV_NULL:
            mounts.append(m)
            continue
        head, _, rest = rel.partition("/")
        if head not in ("cdi", "imex"):
            mounts.append(m)
            continue
        if not accept_mounts:  # not read at all, as request.py does with the id mounts
            ignored.append(Ignored(SOURCE_MOUNTS, rel[:200], "accept-nvidia-visible-devices-"
                                   "as-volume-mounts is false"))
            continue
        if head == "cdi":
            name = _mount_cdi_name(rest, f"volume mount {m.destination[:200]!r}")
            gpu_id = _serve(name, f"volume mount {m.destination[:200]!r}", SOURCE_MOUNTS,
                            ignored, notes, imex_mounts)
            if gpu_id is not None:
                extra_ids.append(gpu_id)
        else:
            imex_mounts.append(_channel(rest, f"volume mount {m.destination[:200]!r}",
                                        allow_all=True))
    for key, value in _cdi_annotations(spec.annotations):
        for name in value.split(","):
            parsed = parse_qualified_name(name)
            if parsed is None:
                raise InputError(f"annotation {key[:120]!r}: {name[:80]!r} is not a CDI device "
                                 "name (<vendor>/<class>=<device>)")
            gpu_id = _serve(name, f"annotation {key[:120]!r}", SOURCE_ANNOTATION, ignored,
                            notes, imex_mounts)
            if gpu_id is not None:
                extra_ids.append(gpu_id)
    env = dict(spec.env)
    visible = env.get(ENV_VISIBLE)
    if visible is not None and "=" in visible:
        env[ENV_VISIBLE] = _env_ids(visible, ignored, notes)
    for gpu_id in dict.fromkeys(extra_ids):
        mounts.append(Mount(prefix + gpu_id, DEV_NULL, "bind"))
    if len(extra_ids) > MAX_IDS:
        raise InputError(f"{len(extra_ids)} CDI device names, more than {MAX_IDS}")
    imex_env_raw = env.get(ENV_IMEX)
    imex_env = _env_channels(imex_env_raw, ignored)
    gated = tuple(f for f, var in GATED_ENV.items() if env.get(var, "").strip() == "enabled")
    asked = Asked(imex_mounts=tuple(dict.fromkeys(imex_mounts)), imex_env=imex_env,
                  imex_env_raw=imex_env_raw, gated=gated, ignored=tuple(ignored),
                  notes=tuple(notes))
    return replace(spec, mounts=tuple(mounts), env=env), asked


def _mount_cdi_name(rest: str, where: str) -> str:
    """`<vendor>/<class>/<dev>` or `<vendor>/<class>=<dev>` -> the qualified name."""
    if parse_qualified_name(rest) is not None:
        return rest
    parts = rest.split("/")
    name = "=".join(("/".join(parts[:2]), parts[2])) if len(parts) == 3 else ""
    if not name or parse_qualified_name(name) is None:
        raise InputError(f"{where}: {rest[:80]!r} is not a CDI device "
                         "(cdi/<vendor>/<class>/<device> or cdi/<vendor>/<class>=<device>)")
    return name


def _serve(name: str, where: str, source: str, ignored: list[Ignored], notes: list[str],
           imex: list[int]) -> str | None:
    """A gpuhook id for an nvidia.com/gpu name; an IMEX channel is added to `imex`; anything
    else is noted as left to the runtime."""
    parsed = parse_qualified_name(name)
    assert parsed is not None
    vendor, cls, dev = parsed
    if vendor in SERVED_VENDORS and cls == GPU_CLASS:
        notes.append(f"CDI {name} ({where}) served by gpuhook as id {dev}")
        return dev
    if vendor in SERVED_VENDORS and cls == IMEX_CLASS:
        imex.append(_channel(dev, where, allow_all=True))
        notes.append(f"CDI {name} ({where}) served by gpuhook as IMEX channel {dev}")
        return None
    ignored.append(Ignored(source, name, "not a device gpuhook generates; left to the "
                                         "runtime's CDI support"))
    return None


def _cdi_annotations(annotations: Mapping[str, str]) -> list[tuple[str, str]]:
    """The CDI annotations, sorted by key (as the toolkit reads them), bounded."""
    found = sorted((k, v) for k, v in annotations.items() if k.startswith(CDI_ANNOTATION_PREFIX))
    if len(found) > MAX_CDI_ANNOTATIONS:
        raise InputError(f"{len(found)} {CDI_ANNOTATION_PREFIX} annotations, more than "
                         f"{MAX_CDI_ANNOTATIONS}")
    for key, value in found:
        if len(value) > MAX_ANNOTATION_VALUE:
            raise InputError(f"annotation {key[:80]!r}: value larger than "
                             f"{MAX_ANNOTATION_VALUE} bytes")
    return found


def _env_ids(raw: str, ignored: list[Ignored], notes: list[str]) -> str:
    """NVIDIA_VISIBLE_DEVICES with nvidia.com/gpu names as plain ids; other vendors' names
    dropped (noted); `void` when nothing of gpuhook's is left, so that no legacy rule applies."""
    out: list[str] = []
    for part in raw.split(","):
        item = part.strip()
        if "=" not in item:
            if item:
                out.append(item)
            continue
        parsed = parse_qualified_name(item)
        if parsed is None:
            # Env is anyone's to write: a malformed name is dropped and noted, never fatal.
            ignored.append(Ignored(SOURCE_ENV, item[:80], "not a CDI device name "
                                   "(<vendor>/<class>=<device>)"))
            continue
        vendor, cls, dev = parsed
        if vendor in SERVED_VENDORS and cls == GPU_CLASS:
            notes.append(f"CDI {item} ({ENV_VISIBLE}) read as id {dev}")
            out.append(dev)
        else:
            ignored.append(Ignored(SOURCE_ENV, item, "not a device gpuhook generates; left to "
                                                     "the runtime's CDI support"))
    return ",".join(out) if out else "void"


def _channel(text: str, where: str, allow_all: bool) -> int:
    value = text[len("channel"):] if text.startswith("channel") else text
    if allow_all and value == "all":
        return ALL_CHANNELS
    if not value.isdigit() or len(value) > 8 or int(value) > MAX_IMEX_CHANNEL:
        raise InputError(f"{where}: {text[:80]!r} is not an IMEX channel (0..{MAX_IMEX_CHANNEL})")
    return int(value)


def _env_channels(raw: str | None, ignored: list[Ignored]) -> tuple[int, ...]:
    """NVIDIA_IMEX_CHANNELS as channels; `all` and anything malformed are ignored and noted
    (env is anyone's to write: it never stops a container)."""
    if raw is None:
        return ()
    items = [p.strip() for p in raw.split(",") if p.strip() not in ("", "none", "void")]
    if items == ["all"]:
        ignored.append(Ignored(SOURCE_ENV, f"{ENV_IMEX}=all",
                               "all IMEX channels are never granted through env"))
        return ()
    if len(items) > MAX_IDS:
        ignored.append(Ignored(SOURCE_ENV, ENV_IMEX, f"{len(items)} channels, more than "
                                                    f"{MAX_IDS}"))
        return ()
    out: list[int] = []
    for item in items:
        try:
            out.append(_channel(item, ENV_IMEX, allow_all=False))
        except InputError as e:
            ignored.append(Ignored(SOURCE_ENV, f"{ENV_IMEX}={item[:80]}", str(e)))
    return tuple(dict.fromkeys(out))
