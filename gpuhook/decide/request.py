"""OCI spec -> Request: what the container asked for, from which source. Pure.

Read as nvidia-container-toolkit v1.20.0 reads the same spec (internal/config/image/
cuda_image.go, devices.go, capabilities.go; cmd/nvidia-container-runtime-hook/container_config.go)
except where docs/compatibility.md says why not; tests/unit/decide/test_toolkit_rows.py."""

from __future__ import annotations

from gpuhook.decide.spec import SpecView
from gpuhook.errors import InputError
from gpuhook.limits import DEV_NULL
from gpuhook.record import TYPE_CHECKING, dataclass
from gpuhook.text import re_fullmatch

if TYPE_CHECKING:
    from collections.abc import Mapping

ENV_VISIBLE = "NVIDIA_VISIBLE_DEVICES"
ENV_DRIVER_CAPS = "NVIDIA_DRIVER_CAPABILITIES"
ENV_MIG_MONITOR = "NVIDIA_MIG_MONITOR_DEVICES"
ENV_MIG_CONFIG = "NVIDIA_MIG_CONFIG_DEVICES"
ENV_DISABLE_REQUIRE = "NVIDIA_DISABLE_REQUIRE"
ENV_REQUIRE_PREFIX = "NVIDIA_REQUIRE_"
ENV_REQUIRE_CUDA = "NVIDIA_REQUIRE_CUDA"
ENV_REQUIRE_JETPACK = "NVIDIA_REQUIRE_JETPACK"  # toolkit: not a requirement (any suffix)
ENV_CUDA_VERSION = "CUDA_VERSION"
CAP_SYS_ADMIN = "CAP_SYS_ADMIN"
MIG_MONITOR = "mig-monitor"
MIG_CONFIG = "mig-config"
SUPPORTED_DRIVER_CAPS = ("compat32", "compute", "display", "graphics", "ngx", "utility", "video")
DEFAULT_DRIVER_CAPS = ("compute", "utility")
MAX_IDS = 4096
MAX_ID_LEN = 256
MAX_VISIBLE_CHARS = MAX_IDS * (MAX_ID_LEN + 1)  # MAX_IDS ids of MAX_ID_LEN, comma-separated
MAX_UNKNOWN_CAPS = 16  # unsupported driver capabilities named in a message, at most
# Matched with fullmatch: `$` also matches before a trailing newline ("0\n").
_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789:_.-"
# The MIG device UUID drivers before R470 reported: MIG-GPU-<parent uuid>/<gi>/<ci>.
OLD_MIG_ID = r"(?i)MIG-GPU-[0-9A-Fa-f-]{1,64}/[0-9]{1,6}/[0-9]{1,6}"
# Go strconv.ParseBool's true spellings (NVIDIA_DISABLE_REQUIRE, toolkit image.HasDisableRequire).
GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")


@dataclass(frozen=True)
class Ignored:
    source: str
    value: str
    reason: str


@dataclass(frozen=True)
class EnvDevices:
    """NVIDIA_VISIBLE_DEVICES as asked: kind is "ids", "all", "none", "void" or "marker"."""

    raw: str
    kind: str  # "marker": the device plugin's volume-mount root, which names no device
    ids: tuple[str, ...] = ()
    legacy: bool = False
    # Why the ids cannot be used (malformed, too many). Raised only if the env is acted on: an
    # ignored request never stops a container.
    error: str | None = None


@dataclass(frozen=True)
class Request:
    privileged: bool
    privileged_reason: str
    mount_ids: tuple[str, ...]  # GPU ids from volume mounts, deduplicated, in order
    mount_caps: tuple[str, ...]  # mig-monitor / mig-config asked through volume mounts
    mount_ignored: tuple[Ignored, ...]
    mount_error: str | None  # a malformed device-list mount; raised only if mounts are accepted
    env_devices: EnvDevices | None  # None: nothing asked through env
    driver_capabilities: tuple[str, ...] | None  # None: not set, the default applies
    driver_capabilities_unsupported: tuple[str, ...]  # refused, if the request is granted
    legacy: bool  # a legacy CUDA image (toolkit image.IsLegacy)
    requirements: tuple[tuple[str, str], ...]  # (env name, expression)
    requirements_error: str | None  # an unparsable legacy CUDA_VERSION, if granted
    mig_monitor_env: str | None
    mig_config_env: str | None


def extract_request(spec: SpecView, volume_mount_root: str) -> Request:
    privileged, why = privilege(spec)
    mount_ids, mount_caps, mount_ignored, mount_error = _mount_requests(spec, volume_mount_root)
    env = spec.env
    env_devices = parse_visible_devices(env, volume_mount_root)
    caps, caps_unsupported = driver_capabilities(env)
    legacy = is_legacy_image(env)
    reqs, reqs_error = requirements(env, legacy)
    return Request(
        privileged=privileged,
        privileged_reason=why,
        mount_ids=mount_ids,
        mount_caps=mount_caps,
        mount_ignored=mount_ignored,
        mount_error=mount_error,
        env_devices=env_devices,
        driver_capabilities=caps,
        driver_capabilities_unsupported=caps_unsupported,
        legacy=legacy,
        requirements=reqs,
        requirements_error=reqs_error,
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


def _mount_requests(spec: SpecView, root: str) -> tuple[
        tuple[str, ...], tuple[str, ...], tuple[Ignored, ...], str | None]:
    """The device-list mounts, read as the toolkit reads them (cuda_image.go requestsFromMounts):
    source and destination cleaned, the source /dev/null, the destination under `root`. The
    first malformed one is returned as an error, not raised: it counts only if mounts do."""
    ids: list[str] = []
    seen: set[str] = set()
    caps: list[str] = []
    ignored: list[Ignored] = []
    error: str | None = None
    for mount in spec.mounts:
        try:
            rel = device_list_path(mount.destination, root)
        except InputError as e:
            error = error or str(e)
            continue
        if rel is None:
            continue
        if mount.source is None or clean_path(mount.source) != DEV_NULL:
            ignored.append(Ignored("volume-mounts", mount.destination,
                                   f"source is {mount.source!r}, not {DEV_NULL}"))
            continue
        if not rel:
            ignored.append(Ignored("volume-mounts", mount.destination,
                                   "the device-list root itself names no device"))
            continue
        parts = rel.split("/")
        if parts[0] == "imex":
            ignored.append(Ignored("volume-mounts", rel,
                                   "IMEX channel: not a GPU id; gpuhook does not inject channels"))
        elif parts[0] == "cdi":
            ignored.append(Ignored("volume-mounts", rel,
                                   "CDI device name: not a GPU id; the runtime's CDI support "
                                   "injects it"))
        elif len(parts) > 1 and not re_fullmatch(OLD_MIG_ID, rel):
            error = error or (f"volume mount {mount.destination!r}: {rel!r} is not a device id "
                              "(ids have no '/'; only imex/ and cdi/ entries are paths)")
        elif rel in (MIG_MONITOR, MIG_CONFIG):
            if rel not in caps:
                caps.append(rel)
        else:
            problem = _id_problem(rel, f"volume mount {mount.destination!r}")
            if problem:
                error = error or problem
            elif rel not in seen:
                seen.add(rel)
                ids.append(rel)
                if len(ids) > MAX_IDS:  # counted as they come: no work past the limit
                    error = f"more than {MAX_IDS} device ids in volume mounts"
                    break
    return tuple(ids), tuple(caps), tuple(ignored), error


def clean_path(path: str) -> str:
    """Go's filepath.Clean for a slash path (what the toolkit applies to mount paths): no empty
    or '.' components, '..' folded, no trailing '/'."""
    rooted = path.startswith("/")
    out: list[str] = []
    for c in path.split("/"):
        if c in ("", "."):
            continue
        if c == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(c)
    joined = "/".join(out)
    return "/" + joined if rooted else joined or "."


def device_list_path(destination: str, root: str) -> str | None:
    """The part of a mount destination under the device-list root: None when the mount is not
    under it, "" for the root itself. Separators are cleaned as the toolkit cleans them
    (`//var/run/…`, `/./`, a trailing '/'); '..' anywhere (where it would land the path under the
    root) and an empty or '.' component inside the id are refused, never cleaned away."""
    if not destination.startswith("/"):
        return None
    root_parts = [p for p in root.split("/") if p]
    comps = destination.rstrip("/").split("/")[1:]
    i = matched = 0
    while matched < len(root_parts) and i < len(comps):
        if comps[i] not in ("", "."):
            if comps[i] != root_parts[matched]:
                break
            matched += 1
        i += 1
    if matched < len(root_parts):
        if ".." in comps and _under(clean_path(destination), root_parts):
            raise InputError(f"volume mount {destination!r}: '..' reaches {root}")
        return None
    rest = comps[i:]
    for p in rest:
        if p in ("", ".", ".."):
            raise InputError(f"volume mount {destination!r}: empty, '.' or '..' component "
                             f"under {root}")
    return "/".join(rest)


def _under(path: str, root_parts: list[str]) -> bool:
    return path.split("/")[1:][: len(root_parts)] == root_parts


def _id_problem(device_id: str, where: str) -> str | None:
    # Every character one of _ID_CHARS (stripping them leaves nothing), or an old MIG id.
    if len(device_id) <= MAX_ID_LEN and device_id and (
            not device_id.strip(_ID_CHARS) or re_fullmatch(OLD_MIG_ID, device_id)):
        return None
    return f"{where}: malformed device id {device_id[:80]!r}"


def parse_visible_devices(env: Mapping[str, str], volume_mount_root: str = ""
                          ) -> EnvDevices | None:
    """NVIDIA_VISIBLE_DEVICES as the toolkit reads it (cuda_image.go devicesFromEnvvars,
    devices.go NewVisibleDevices): items trimmed, empty ones dropped; nothing or `void` anywhere
    is void; else the first `all` or `none` decides; else the ids. Unset in a legacy CUDA image
    means all. The device plugin's marker (the volume-mount root) is no id at all. Ids are not
    validated here: `error` says what is wrong, for whoever acts on them."""
    raw = env.get(ENV_VISIBLE)
    if raw is None:
        if is_legacy_image(env):
            return EnvDevices(raw="", kind="all", ids=("all",), legacy=True)
        return None
    if len(raw) > MAX_VISIBLE_CHARS:  # before any loop over it; an error only if acted on
        return EnvDevices(raw=raw, kind="ids", error=(
            f"{ENV_VISIBLE}: {len(raw)} characters, more than {MAX_VISIBLE_CHARS} "
            f"({MAX_IDS} ids of at most {MAX_ID_LEN})"))
    # Deduplicated in order, in linear time: the value may be as long as the spec allows.
    items = list(dict.fromkeys(i for i in (part.strip() for part in raw.split(",")) if i))
    if not items or "void" in items:
        return EnvDevices(raw=raw, kind="void")
    if volume_mount_root and len(items) == 1 and clean_path(items[0]) == clean_path(
            volume_mount_root):
        return EnvDevices(raw=raw, kind="marker")
    for item in items:
        if item == "all":
            return EnvDevices(raw=raw, kind="all", ids=("all",))
        if item == "none":
            return EnvDevices(raw=raw, kind="none")
    if any(i.lower() == "all" for i in items):
        # Not `all` to the toolkit's hook, but nvidia-container-cli selects every device for it.
        return EnvDevices(raw=raw, kind="all", ids=("all",))
    ids = tuple(items)
    if len(ids) > MAX_IDS:
        return EnvDevices(raw=raw, kind="ids", ids=ids[:MAX_IDS],
                          error=f"{ENV_VISIBLE}: {len(ids)} ids, more than {MAX_IDS}")
    problems = [p for p in (_id_problem(i, ENV_VISIBLE) for i in ids) if p]
    return EnvDevices(raw=raw, kind="ids", ids=ids, error=problems[0] if problems else None)


def is_legacy_image(env: Mapping[str, str]) -> bool:
    """toolkit cuda_image.go IsLegacy: CUDA_VERSION non-empty, NVIDIA_REQUIRE_CUDA empty or
    unset, whatever NVIDIA_VISIBLE_DEVICES says."""
    return bool(env.get(ENV_CUDA_VERSION)) and not env.get(ENV_REQUIRE_CUDA)


def driver_capabilities(env: Mapping[str, str]
                        ) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    """(capabilities, unsupported names). None: unset, so the default (or a legacy image's all)
    applies. As the toolkit's hook (container_config.go getDriverCapabilities): set but empty is
    the default; whitespace only is none; `all` anywhere is all."""
    raw = env.get(ENV_DRIVER_CAPS)
    if raw is None:
        return None, ()
    if raw == "":
        return DEFAULT_DRIVER_CAPS, ()
    asked = list(dict.fromkeys(c.strip() for c in raw.split(",") if c.strip()))
    if "all" in asked:
        return SUPPORTED_DRIVER_CAPS, ()
    wanted = set(asked)
    caps = tuple(c for c in SUPPORTED_DRIVER_CAPS if c in wanted)
    unsupported = tuple(c[:64] for c in asked if c not in SUPPORTED_DRIVER_CAPS)
    if len(unsupported) > MAX_UNKNOWN_CAPS:
        unsupported = (*unsupported[:MAX_UNKNOWN_CAPS],
                       f"(and {len(unsupported) - MAX_UNKNOWN_CAPS} more)")
    return caps, unsupported


def requirements(env: Mapping[str, str], legacy: bool
                 ) -> tuple[tuple[tuple[str, str], ...], str | None]:
    """(requirements, error): every non-empty NVIDIA_REQUIRE_* but NVIDIA_REQUIRE_JETPACK*, and
    for a legacy image cuda>=<major>.<minor> of CUDA_VERSION (toolkit GetRequirements); none at
    all when NVIDIA_DISABLE_REQUIRE is true to Go's ParseBool. An unparsable legacy
    CUDA_VERSION is the error, for the policy to raise if the request is granted."""
    if env.get(ENV_DISABLE_REQUIRE) in GO_TRUE:
        return (), None
    # Filtered before sorted: the sort costs only what gpuhook reads, not the whole env.
    reqs = sorted((k, v) for k, v in env.items()
                  if k.startswith(ENV_REQUIRE_PREFIX) and not k.startswith(ENV_REQUIRE_JETPACK)
                  and v.strip())
    if not legacy:
        return tuple(reqs), None
    version = env[ENV_CUDA_VERSION]
    major_minor = cuda_major_minor(version)
    if major_minor is None:
        return tuple(reqs), (f"{ENV_CUDA_VERSION}={version[:80]!r} (a legacy CUDA image: "
                             f"{ENV_REQUIRE_CUDA} unset) is not a version like 12.4 or 12.4.1")
    reqs.append((ENV_CUDA_VERSION, f"cuda>={major_minor}"))
    return tuple(reqs), None


_SEMVER_NUM = r"(?:0|[1-9][0-9]*)"
_SEMVER_IDENT = r"[0-9A-Za-z-]+"
_SEMVER_PRE = rf"(?:{_SEMVER_NUM}|[0-9A-Za-z-]*[A-Za-z-][0-9A-Za-z-]*)"
_SEMVER = (
    rf"v?({_SEMVER_NUM})(?:\.({_SEMVER_NUM})(?:\.{_SEMVER_NUM}"
    rf"(?:-{_SEMVER_PRE}(?:\.{_SEMVER_PRE})*)?(?:\+{_SEMVER_IDENT}(?:\.{_SEMVER_IDENT})*)?)?)?")


def cuda_major_minor(version: str) -> str | None:
    """"<major>.<minor>" of a CUDA_VERSION as the toolkit reads it (cuda_image.go
    parseMajorMinorVersion: an optional 'v', then golang.org/x/mod/semver: `12` is 12.0,
    `12.4.1-rc1` is 12.4, a pre-release needs all three numbers, no leading zeros; major and
    minor fit 32 bits), else None."""
    if len(version) > 256:  # before the regex; a CUDA version is a few characters
        return None
    m = re_fullmatch(_SEMVER, version)
    if m is None:
        return None
    major, minor = m.group(1), m.group(2) or "0"
    # At most 10 digits before int(): past Python's digit limit int() raises.
    if len(major) > 10 or len(minor) > 10 or int(major) >= 1 << 32 or int(minor) >= 1 << 32:
        return None
    return f"{major}.{minor}"
