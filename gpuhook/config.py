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
    source: str = "built-in defaults"  # where this config came from, for messages

    def with_overrides(self, **changes: Any) -> Config:
        return self._replace(**{k: v for k, v in changes.items() if v is not None})


_CHOICES = {
    "unprivileged_envvar_action": ("ignore", "fail"),
    "mode": ("spec", "hook"),
}
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
    from gpuhook.limits import MAX_CONFIG_BYTES, read_regular

    try:
        data = read_regular(path, MAX_CONFIG_BYTES)
    except OSError as e:
        raise InputError(f"config {path}: {e.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise InputError(f"config {path}: larger than {MAX_CONFIG_BYTES} bytes")
    return parse_config(data, path)


def parse_config(data: bytes, origin: str) -> Config:
    import tomllib

    try:
        table = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"config {origin}: {e}") from None
    except ValueError as e:  # an integer past Python's digit limit
        raise InputError(f"config {origin}: {e}") from None
    except RecursionError:
        raise InputError(f"config {origin}: nested too deeply") from None
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
        if not isinstance(value, list) or not value or not all(
                isinstance(v, str) and v for v in value):
            raise InputError(f"config {origin}: {key} must be a non-empty list of strings")
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
