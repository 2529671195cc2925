"""OCI spec -> Request: what the container asked for, from which source. Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from gpuhook.decide.spec import SpecView
from gpuhook.errors import InputError
from gpuhook.limits import DEV_NULL
from gpuhook.text import decimal

ENV_VISIBLE = "NVIDIA_VISIBLE_DEVICES"
ENV_DRIVER_CAPS = "NVIDIA_DRIVER_CAPABILITIES"
ENV_MIG_MONITOR = "NVIDIA_MIG_MONITOR_DEVICES"
ENV_MIG_CONFIG = "NVIDIA_MIG_CONFIG_DEVICES"
ENV_DISABLE_REQUIRE = "NVIDIA_DISABLE_REQUIRE"
ENV_REQUIRE_PREFIX = "NVIDIA_REQUIRE_"
ENV_CUDA_VERSION = "CUDA_VERSION"
CAP_SYS_ADMIN = "CAP_SYS_ADMIN"
MIG_MONITOR = "mig-monitor"
MIG_CONFIG = "mig-config"
SUPPORTED_DRIVER_CAPS = ("compat32", "compute", "display", "graphics", "ngx", "utility", "video")
DEFAULT_DRIVER_CAPS = ("compute", "utility")
MAX_IDS = 4096
MAX_ID_LEN = 256
MAX_VISIBLE_CHARS = MAX_IDS * (MAX_ID_LEN + 1)  # MAX_IDS ids of MAX_ID_LEN, comma-separated
MAX_UNKNOWN_CAPS = 16  # unsupported driver capabilities named in a note, at most
# Matched with fullmatch: `$` also matches before a trailing newline ("0\n").
_ID_CHARS = re.compile(r"[A-Za-z0-9:_.\-]+")


@dataclass(frozen=True)
class Ignored:
    source: str
    value: str
    reason: str


@dataclass(frozen=True)
class EnvDevices:
    """NVIDIA_VISIBLE_DEVICES as asked: kind is "ids", "all", "none" or "void"."""

    raw: str
    kind: str
    ids: tuple[str, ...] = ()
    legacy: bool = False


@dataclass(frozen=True)
class Request:
    privileged: bool
    privileged_reason: str
    mount_ids: tuple[str, ...]  # GPU ids from volume mounts, deduplicated, in order
    mount_caps: tuple[str, ...]  # mig-monitor / mig-config asked through volume mounts
    mount_ignored: tuple[Ignored, ...]
    env_devices: EnvDevices | None  # None: nothing asked through env
    driver_capabilities: tuple[str, ...] | None  # None: not set, the default applies
    driver_capabilities_ignored: tuple[str, ...]
    requirements: tuple[tuple[str, str], ...]  # (env name, expression)
    mig_monitor_env: str | None
    mig_config_env: str | None


def extract_request(spec: SpecView, volume_mount_root: str) -> Request:
    privileged, why = privilege(spec)
    mount_ids, mount_caps, mount_ignored = _mount_requests(spec, volume_mount_root)
    env = spec.env
    env_devices = parse_visible_devices(env)
    caps, caps_ignored = driver_capabilities(env)
    return Request(
        privileged=privileged,
        privileged_reason=why,
        mount_ids=mount_ids,
        mount_caps=mount_caps,
        mount_ignored=mount_ignored,
        env_devices=env_devices,
        driver_capabilities=caps,
        driver_capabilities_ignored=caps_ignored,
        requirements=requirements(env, legacy=bool(env_devices and env_devices.legacy)),
        mig_monitor_env=env.get(ENV_MIG_MONITOR),
        mig_config_env=env.get(ENV_MIG_CONFIG),
    )


def is_privileged(spec: SpecView) -> bool:
    """Host privilege: CAP_SYS_ADMIN in the bounding set and no user namespace. In a user
    namespace the capabilities are that namespace's: the kernel checks mknod, the device cgroup
    and every host device against the initial namespace, where the container holds nothing,
    whatever its uidMappings say (even container root mapped to host uid 0 only changes file
    ownership). So a user-namespaced container is unprivileged, and its env is not trusted."""
    return CAP_SYS_ADMIN in spec.capabilities and not spec.user_namespace


def privilege(spec: SpecView) -> tuple[bool, str]:
    if is_privileged(spec):
        return True, "CAP_SYS_ADMIN is in process.capabilities.bounding, no user namespace"
    if CAP_SYS_ADMIN in spec.capabilities:
        return False, ("CAP_SYS_ADMIN is in process.capabilities.bounding, but the container "
                       "has its own user namespace (linux.namespaces): no host privilege")
    if not spec.has_capabilities:
        return False, "the spec grants no capabilities"
    return False, "CAP_SYS_ADMIN is not in process.capabilities.bounding"


def _mount_requests(spec: SpecView, root: str
                    ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[Ignored, ...]]:
    ids: dict[str, None] = {}  # insertion-ordered set: deduplication in linear time
    caps: list[str] = []
    ignored: list[Ignored] = []
    for mount in spec.mounts:
        rel = _under_root(mount.destination, root)
        if rel is None:
            continue
        if mount.source != DEV_NULL:
            ignored.append(Ignored("volume-mounts", mount.destination,
                                   f"source is {mount.source!r}, not {DEV_NULL}"))
            continue
        parts = rel.split("/")
        if parts[0] == "imex":
            ignored.append(Ignored("volume-mounts", rel,
                                   "IMEX channel: not a GPU id; gpuhook does not inject channels"))
        elif parts[0] == "cdi":
            ignored.append(Ignored("volume-mounts", rel,
                                   "CDI device name: not a GPU id; the runtime's CDI support "
                                   "injects it"))
        elif len(parts) > 1:
            raise InputError(f"volume mount {mount.destination!r}: {rel!r} is not a device id "
                             "(ids have no '/'; only imex/ and cdi/ entries are paths)")
        elif rel in (MIG_MONITOR, MIG_CONFIG):
            if rel not in caps:
                caps.append(rel)
        else:
            _check_id(rel, f"volume mount {mount.destination!r}")
            ids[rel] = None
            if len(ids) > MAX_IDS:  # checked as they come: no work past the limit
                raise InputError(f"more than {MAX_IDS} device ids in volume mounts")
    return tuple(ids), tuple(caps), tuple(ignored)


def _under_root(destination: str, root: str) -> str | None:
    """The id part of a destination under root, or None when the mount is elsewhere.
    Traversal or empty components under the root are refused, never trimmed."""
    root_parts = [p for p in root.split("/") if p]
    if not destination.startswith("/"):
        return None
    parts = destination.split("/")[1:]
    if parts[: len(root_parts)] != root_parts:
        return None
    rest = parts[len(root_parts):]
    if not rest:
        raise InputError(f"volume mount {destination!r} names the device-list root, not an id")
    for p in rest:
        if p in ("", ".", ".."):
            raise InputError(f"volume mount {destination!r}: empty, '.' or '..' component "
                             f"under {root}")
    return "/".join(rest)


def _check_id(device_id: str, where: str) -> None:
    if len(device_id) > MAX_ID_LEN or not _ID_CHARS.fullmatch(device_id):
        raise InputError(f"{where}: malformed device id {device_id[:80]!r}")


def parse_visible_devices(env: Mapping[str, str]) -> EnvDevices | None:
    raw = env.get(ENV_VISIBLE)
    if raw is None:
        if ENV_CUDA_VERSION in env and "NVIDIA_REQUIRE_CUDA" not in env:
            return EnvDevices(raw="", kind="all", ids=("all",), legacy=True)
        return None
    if len(raw) > MAX_VISIBLE_CHARS:  # before any loop over it
        raise InputError(f"{ENV_VISIBLE}: {len(raw)} characters, more than {MAX_VISIBLE_CHARS} "
                         f"({MAX_IDS} ids of at most {MAX_ID_LEN})")
    # An insertion-ordered set: deduplication in linear time.
    items = list(dict.fromkeys(item for item in (p.strip() for p in raw.split(",")) if item))
    if not items or "void" in items:
        return EnvDevices(raw=raw, kind="void")
    if "all" in items:
        return EnvDevices(raw=raw, kind="all", ids=("all",))
    ids = tuple(i for i in items if i != "none")
    if not ids:
        return EnvDevices(raw=raw, kind="none")
    if len(ids) > MAX_IDS:
        raise InputError(f"{ENV_VISIBLE}: {len(ids)} ids, more than {MAX_IDS}")
    for i in ids:
        _check_id(i, ENV_VISIBLE)
    return EnvDevices(raw=raw, kind="ids", ids=ids)


def driver_capabilities(env: Mapping[str, str]
                        ) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    raw = env.get(ENV_DRIVER_CAPS)
    if raw is None or not raw.strip():
        return None, ()
    asked = list(dict.fromkeys(c.strip() for c in raw.split(",") if c.strip()))
    if "all" in asked:
        return SUPPORTED_DRIVER_CAPS, ()
    wanted = set(asked)
    caps = tuple(c for c in SUPPORTED_DRIVER_CAPS if c in wanted)
    unknown = tuple(c[:64] for c in asked if c not in SUPPORTED_DRIVER_CAPS)
    if len(unknown) > MAX_UNKNOWN_CAPS:
        unknown = (*unknown[:MAX_UNKNOWN_CAPS], f"(and {len(unknown) - MAX_UNKNOWN_CAPS} more)")
    return caps, unknown


def requirements(env: Mapping[str, str], legacy: bool) -> tuple[tuple[str, str], ...]:
    if env.get(ENV_DISABLE_REQUIRE, "").strip().lower() in ("1", "true", "yes", "on"):
        return ()
    # Filtered before sorted: the sort costs only what gpuhook reads, not the whole env.
    reqs = sorted((k, v) for k, v in env.items() if k.startswith(ENV_REQUIRE_PREFIX) and v.strip())
    if legacy:
        parts = env[ENV_CUDA_VERSION].split(".")
        major, minor = (decimal(p) for p in [*parts, "", ""][:2])
        if major is not None and minor is not None:
            reqs.append((ENV_CUDA_VERSION, f"cuda>={major}.{minor}"))
    return tuple(reqs)
