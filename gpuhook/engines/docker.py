"""Docker: a `runtimes` entry in daemon.json (and `default-runtime` when asked)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from gpuhook.engines.common import (
    BACKUP_SUFFIX,
    DEFAULTS,
    Change,
    InstallError,
    Options,
    read_file,
)


def _load_json(path: str, data: bytes | None) -> dict[str, Any]:
    if data is None or not data.strip():
        return {}
    try:
        value = json.loads(data)
    except ValueError as e:
        raise InstallError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(value, dict):
        raise InstallError(f"{path}: expected a JSON object")
    return value


def install(opts: Options) -> list[Change]:
    path = opts.config or DEFAULTS["docker_config"]
    return [_docker_edit(path, read_file(path), opts)]


def _docker_edit(path: str, old: bytes | None, opts: Options) -> Change:
    data = _load_json(path, old)
    want = dict(data)
    runtimes = want.get("runtimes") or {}
    if not isinstance(runtimes, dict):
        raise InstallError(f"{path}: runtimes must be an object")
    prev = runtimes.get(opts.name) or {}
    if not isinstance(prev, dict):
        raise InstallError(f"{path}: runtimes.{opts.name} must be an object")
    entry = {**prev, "path": opts.runtime_binary}
    runtimes = {**runtimes, opts.name: entry}
    want["runtimes"] = runtimes
    if opts.set_as_default:
        want["default-runtime"] = opts.name
    if want == data and old is not None:
        return Change(path, old, old)
    return Change(path, old, (json.dumps(want, indent=4) + "\n").encode(),
                  backup=path + BACKUP_SUFFIX)


def uninstall(opts: Options) -> list[Change]:
    path = opts.config or DEFAULTS["docker_config"]
    old = read_file(path)
    if old is None:
        raise InstallError(f"{path}: no such file")
    backup_path = path + BACKUP_SUFFIX
    backup = read_file(backup_path)
    data = _load_json(path, old)
    before = _load_json(backup_path, backup) if backup is not None else None

    def strip(d: dict[str, Any]) -> dict[str, Any]:
        d = json.loads(json.dumps(d))
        if isinstance(d.get("runtimes"), dict):
            d["runtimes"].pop(opts.name, None)
            if not d["runtimes"] and (before is None or "runtimes" not in before):
                d.pop("runtimes")  # install made it; an empty one that was there stays
        if d.get("default-runtime") == opts.name:
            d.pop("default-runtime")
            if before is not None and "default-runtime" in before:
                d["default-runtime"] = before["default-runtime"]
        return d

    if backup is not None and _docker_made_from(path, backup, old, data, opts):
        return [Change(path, old, backup, drop_backup=backup_path)]
    out = strip(data)
    if before is not None:
        prev = (before.get("runtimes") or {}).get(opts.name)
        if prev is not None:
            out.setdefault("runtimes", {})[opts.name] = prev
    return [Change(path, old, (json.dumps(out, indent=4) + "\n").encode(),
                   drop_backup=backup_path if backup is not None else None)]


def _docker_made_from(path: str, backup: bytes, current: bytes, data: dict[str, Any],
                      opts: Options) -> bool:
    """Whether `current` is byte for byte what install makes of `backup`."""
    ours = (data.get("runtimes") or {}).get(opts.name) if isinstance(
        data.get("runtimes"), dict) else None
    binary = ours.get("path", "") if isinstance(ours, dict) else ""
    for default in (False, True):
        try:
            made = _docker_edit(path, backup, dataclasses.replace(
                opts, set_as_default=default, runtime_binary=str(binary)))
        except InstallError:
            continue
        if made.new == current:
            return True
    return False
