"""Configuration: flat TOML keys; built-in defaults equal the shipped config/config.toml."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NamedTuple

from gpuhook.errors import InputError

SYSTEM_CONFIG = "/etc/gpuhook/config.toml"
ENV_CONFIG = "GPUHOOK_CONFIG"


class Config(NamedTuple):
    """The configuration, immutable. A NamedTuple rather than a dataclass: the runtime shim
    loads it for every runc command, and `dataclasses` (with `inspect`) costs ~7 ms to import."""

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
_KEYS = {name.replace("_", "-"): name for name in Config._fields if name != "source"}


def find_config_path(explicit: str | None, environ: Mapping[str, str]) -> str | None:
    """`--config`, else $GPUHOOK_CONFIG, else /etc/gpuhook/config.toml if it exists."""
    if explicit:
        return explicit
    if environ.get(ENV_CONFIG):
        return environ[ENV_CONFIG]
    return SYSTEM_CONFIG if os.path.exists(SYSTEM_CONFIG) else None


def load_config(explicit: str | None = None,
                environ: Mapping[str, str] | None = None) -> Config:
    path = find_config_path(explicit, os.environ if environ is None else environ)
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"config {path}: {e.strerror}") from None
    return parse_config(data, path)


def parse_config(data: bytes, origin: str) -> Config:
    import tomllib

    try:
        table = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"config {origin}: {e}") from None
    values: dict[str, Any] = {}
    for key, value in table.items():
        name = _KEYS.get(key)
        if name is None:
            raise InputError(f"config {origin}: unknown key {key!r}; known keys: "
                             + ", ".join(sorted(_KEYS)))
        values[name] = _check(origin, key, name, value)
    base = os.path.dirname(os.path.abspath(origin))
    for name in _PATH_KEYS:
        value = values.get(name)
        if isinstance(value, str) and value != "nvml" and not os.path.isabs(value):
            # A relative path in a config file is relative to that file, not to the cwd.
            values[name] = os.path.join(base, value)
    return Config(source=origin, **values)


def _check(origin: str, key: str, name: str, value: object) -> object:
    default = Config._field_defaults[name]
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
