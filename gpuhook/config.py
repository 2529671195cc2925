"""Configuration: flat TOML keys; built-in defaults equal the shipped config/config.toml."""

from __future__ import annotations

import os

from gpuhook.errors import InputError
from gpuhook.record import TYPE_CHECKING, dataclass, fields, replace
from gpuhook.runtime.early import ENV_CONFIG, SYSTEM_CONFIG
from gpuhook.runtime.early import find_config_path as _find_config_path

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

__all__ = ["DEFAULTS", "ENV_CONFIG", "FIELDS", "SYSTEM_CONFIG", "Config", "find_config_path",
           "load_config", "load_config_lenient", "parse_config", "parse_config_lenient"]


@dataclass(frozen=True)
class Config:
    """The configuration, immutable (a gpuhook.record: the runtime shim loads it for every runc
    command, and `dataclasses` or `typing` would cost more than the rest of a passthrough)."""

    inventory: str = "nvml"
    host_root: str = "/"
    log_file: str = "/var/log/gpuhook.log"
    accept_nvidia_visible_devices_envvar_when_unprivileged: bool = False
    accept_nvidia_visible_devices_as_volume_mounts: bool = True
    volume_mount_root: str = "/var/run/nvidia-container-devices"
    unprivileged_envvar_action: str = "ignore"
    mode: str = "spec"
    runtimes: tuple[str, ...] = ("runc", "crun")
    allow_mig_monitor_unprivileged: bool = False
    allow_full_gpu_on_mig_enabled: bool = False
    inventory_cache: str = "/run/gpuhook/inventory.json"
    gated_device_families: tuple[str, ...] = ()
    cdi_driver_capabilities: tuple[str, ...] = ("compute", "utility")
    driver_files: bool = True
    ldconfig: str = "/sbin/ldconfig"
    source: str = "built-in defaults"  # where this config came from, for messages

    def with_overrides(self, **changes: Any) -> Config:
        return self._replace(**{k: v for k, v in changes.items() if v is not None})

    def _replace(self, **changes: Any) -> Config:
        """A copy with `changes` (the name it had as a NamedTuple)."""
        return replace(self, **changes)

    def _asdict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}


FIELDS = fields(Config)
DEFAULTS: dict[str, Any] = {name: getattr(Config, name) for name in FIELDS}


_CHOICES = {
    "unprivileged_envvar_action": ("ignore", "fail"),
    "mode": ("spec", "hook"),
}
_MAY_BE_EMPTY = ("gated_device_families",)
# The gated device families (NVIDIA_GDS, _MOFED, _GDRCOPY, _NVSWITCH=enabled).
_LIST_CHOICES = {"gated_device_families": ("gds", "mofed", "gdrcopy", "nvswitch"),
                 "cdi_driver_capabilities": ("compat32", "compute", "display", "graphics", "ngx",
                                             "utility", "video")}
_PATH_KEYS = ("inventory", "host_root", "log_file", "inventory_cache")
_KEYS = {name.replace("_", "-"): name for name in FIELDS if name != "source"}


def find_config_path(explicit: str | None, environ: Mapping[str, str]) -> str | None:
    """`--config`, else $GPUHOOK_CONFIG, else /etc/gpuhook/config.toml if it exists."""
    return _find_config_path(explicit, environ)


def load_config(explicit: str | None = None,
                environ: Mapping[str, str] | None = None) -> Config:
    config, problems = load_config_lenient(explicit, environ)
    if problems:
        raise InputError(problems[0])
    return config


def load_config_lenient(explicit: str | None = None, environ: Mapping[str, str] | None = None,
                        ) -> tuple[Config, list[str]]:
    """See parse_config_lenient; a file that cannot be read is a problem, with the defaults."""
    path = find_config_path(explicit, os.environ if environ is None else environ)
    if path is None:
        return Config(), []
    from gpuhook import config_cache
    from gpuhook.files import read_regular_stat
    from gpuhook.limits import MAX_CONFIG_BYTES
    try:
        data, st = read_regular_stat(path, MAX_CONFIG_BYTES)
    except OSError as e:
        return Config(source=path), [f"config {path}: {e.strerror}"]
    if len(data) > MAX_CONFIG_BYTES:
        return Config(source=path), [f"config {path}: larger than {MAX_CONFIG_BYTES} bytes"]
    hit = config_cache.lookup(path, data, st)
    cached = _from_cache(*hit) if hit is not None else None
    if cached is not None:
        return cached
    config, problems = parse_config_lenient(data, path)
    config_cache.store(path, data, st, config._asdict(), problems)
    return config, problems


def _from_cache(values: dict[str, object], problems: list[str],
                ) -> tuple[Config, list[str]] | None:
    """The Config of a cache entry (config_cache.py) if every field has its type; else None."""
    if set(values) != set(FIELDS):
        return None
    fields: dict[str, Any] = {}
    for name, value in values.items():
        default = DEFAULTS.get(name, "")
        if isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                return None
            fields[name] = tuple(value)
        elif type(value) is not type(default):
            return None
        else:
            fields[name] = value
    return Config(**fields), list(problems)


def parse_config(data: bytes, origin: str) -> Config:
    """The config in `data`; the first problem raises InputError naming the file and the key."""
    config, problems = parse_config_lenient(data, origin)
    if problems:
        raise InputError(problems[0])
    return config


def parse_config_lenient(data: bytes, origin: str) -> tuple[Config, list[str]]:
    """The config with every valid key of `data` and the defaults for the rest, and what is
    wrong with it. For deciding what a broken config must not stop (a container that asks for
    nothing gpuhook would act on); never for granting."""
    import tomllib

    try:
        table = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        # Not TOML: keep what a line still says plainly, so a refusal is logged where the
        # operator looks and a request under the configured root is seen (runtime/early.py).
        return _kept(data, origin), [f"config {origin}: {e}"]
    except ValueError as e:  # an integer past Python's digit limit
        return _kept(data, origin), [f"config {origin}: {e}"]
    except RecursionError:
        return _kept(data, origin), [f"config {origin}: nested too deeply"]
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in table.items():
        name = _KEYS.get(key)
        if name is None:
            problems.append(f"config {origin}: unknown key {key!r}{_closest(key)}; known keys: "
                            + ", ".join(sorted(_KEYS)))
            continue
        try:
            values[name] = _check(origin, key, name, value)
        except InputError as e:
            problems.append(str(e))
    base = os.path.dirname(os.path.abspath(origin))
    for name in _PATH_KEYS:
        value = values.get(name)
        if isinstance(value, str) and value != "nvml" and not os.path.isabs(value):
            # A relative path in a config file is relative to that file, not to the cwd.
            values[name] = os.path.join(base, value)
    return Config(source=origin, **values), problems


def _closest(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(_KEYS), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _kept(data: bytes, origin: str) -> Config:
    """What a config that is not TOML still says plainly on a line of its own."""
    from gpuhook.runtime.early import read_string

    kept: dict[str, Any] = {}
    for key in ("log-file", "volume-mount-root"):
        value = read_string(data, key)
        if value:
            kept[_KEYS[key]] = value
    if "log_file" in kept and not os.path.isabs(kept["log_file"]):
        kept["log_file"] = os.path.join(os.path.dirname(os.path.abspath(origin)),
                                        kept["log_file"])
    return Config(source=origin, **kept)


def _check(origin: str, key: str, name: str, value: object) -> object:
    default = DEFAULTS[name]
    if isinstance(default, tuple):
        empty_ok = name in _MAY_BE_EMPTY
        if not isinstance(value, list) or not (value or empty_ok) or not all(
                isinstance(v, str) and v for v in value):
            what = "a list of strings" if empty_ok else "a non-empty list of strings"
            raise InputError(f"config {origin}: {key} must be {what}")
        allowed = _LIST_CHOICES.get(name)
        bad = [v for v in value if allowed is not None and v not in allowed]
        if bad:
            raise InputError(f"config {origin}: {key}: unknown {', '.join(map(repr, bad))}; "
                             f"known: {', '.join(allowed or ())}")
        if name == "runtimes":
            bad = [v for v in value if "/" in v and not v.startswith("/")]
            if bad:
                raise InputError(f"config {origin}: {key}: {bad[0]!r} is a relative path; "
                                 "name a runtime by an absolute path or a bare name looked "
                                 "up on PATH's absolute entries")
        return tuple(value)
    if type(value) is not type(default):
        raise InputError(f"config {origin}: {key} must be {type(default).__name__}, "
                         f"got {type(value).__name__}")
    choices = _CHOICES.get(name)
    if choices and value not in choices:
        raise InputError(f"config {origin}: {key} must be one of {', '.join(choices)}; "
                         f"got {value!r}")
    if isinstance(value, str) and not value:
        raise InputError(f"config {origin}: {key} must not be empty")
    return value
