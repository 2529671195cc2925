"""The driver-files part of the inventory snapshot: what discovery found under host-root
(gpuhook/host/driver.py), so a container start need not parse the host's ld.so.cache again.

It has its own freshness key, checked at every use, separate from the inventory's: installing
any library runs ldconfig and rewrites the cache, which must not throw away the NVML part.
The key is cheap (no file is read): the identity of <host-root>/etc/ld.so.cache (device, inode,
size, mtime and ctime in ns; ldconfig replaces it by rename, so a rebuild is a new inode) and
the mtime of every directory discovery looks in (binaries, the version's firmware dir, the
vendor config dirs), so a file added or removed there is seen. A file replaced in place (same
name, the dir unchanged) is not seen: package managers replace by rename, which touches the
dir. Sockets are never snapshotted (they come and go with their daemons).

Stale or malformed: the facts are not used and discovery runs live (noted in the plan).
"""

from __future__ import annotations

import os

from gpuhook.config import Config
from gpuhook.decide.driver import CONFIG_FILES, FIRMWARE_DIR
from gpuhook.decide.facts import DriverFacts, DriverLibrary
from gpuhook.decide.plan import DRIVER_KINDS, DriverFile
from gpuhook.errors import HostError
from gpuhook.host.driver import BIN_DIRS, CONFIG_ROOTS, LD_CACHE, discover_driver
from gpuhook.host.proc import HostPaths
from gpuhook.record import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any


def watched_dirs(version: str) -> tuple[str, ...]:
    dirs = [*BIN_DIRS, FIRMWARE_DIR.format(version=version)]
    for root in CONFIG_ROOTS:
        dirs.extend(f"{root}/{rel.rsplit('/', 1)[0]}" for rel, _ in CONFIG_FILES)
    return tuple(dict.fromkeys(dirs))


def driver_key(config: Config, version: str) -> dict[str, Any]:
    host = HostPaths(config.host_root)
    cache = _lstat(host.path(LD_CACHE))
    return {
        "version": version,
        "ld_cache": None if cache is None else [cache.st_dev, cache.st_ino, cache.st_size,
                                                cache.st_mtime_ns, cache.st_ctime_ns],
        "dirs": {rel: _mtime(host.path(rel)) for rel in watched_dirs(version)},
    }


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)  # never follows: host-root's own links are not its files
    except FileNotFoundError:
        return None
    except OSError as e:
        raise HostError(f"cannot stat {path}: {e.strerror}") from None


def _mtime(path: str) -> int | None:
    st = _lstat(path)
    return None if st is None else st.st_mtime_ns


def driver_record(config: Config, version: str) -> dict[str, Any]:
    """Key (read first: a change during discovery then makes the record stale) and facts."""
    key = driver_key(config, version)
    facts = discover_driver(HostPaths(config.host_root), version)
    return {"key": key, "facts": facts_to_dict(facts)}


def facts_to_dict(facts: DriverFacts) -> dict[str, Any]:
    return {
        "version": facts.version, "ld_cache": facts.ld_cache, "notes": list(facts.notes),
        "libraries": [{"host_path": lib.host_path, "arch": lib.arch, "stem": lib.stem,
                       "links": list(lib.links)} for lib in facts.libraries],
        "files": [{"kind": f.kind, "host_path": f.host_path, "container_path": f.container_path}
                  for f in facts.files],
    }


def facts_from_dict(data: Any) -> DriverFacts:
    """ValueError on anything that is not what facts_to_dict writes."""
    if not isinstance(data, dict):
        raise ValueError("driver facts must be an object")
    libs = tuple(DriverLibrary(_str(d, "host_path"), _str(d, "arch"), _str(d, "stem"),
                               tuple(_strs(d, "links"))) for d in _dicts(data, "libraries"))
    files = tuple(DriverFile(_str(d, "kind"), _str(d, "host_path"), _str(d, "container_path"))
                  for d in _dicts(data, "files"))
    if any(f.kind not in DRIVER_KINDS for f in files):
        raise ValueError("unknown driver file kind")
    return DriverFacts(_str(data, "version"), _str(data, "ld_cache"), libs, files,
                       tuple(_strs(data, "notes")))


def _str(d: dict[str, Any], key: str) -> str:
    value = d.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value


def _strs(d: dict[str, Any], key: str) -> list[str]:
    value = d.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key} must be a list of strings")
    return value


def _dicts(d: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = d.get(key)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ValueError(f"{key} must be a list of objects")
    return value


def fresh_driver(record: Any, config: Config, version: str) -> tuple[DriverFacts | None, str]:
    """(the recorded facts, "") when the record's key matches the host now; (None, why) else."""
    if not isinstance(record, dict):
        return None, "the snapshot has no driver files"
    try:
        now = driver_key(config, version)
    except HostError as e:
        return None, str(e)
    if record.get("key") != now:
        was = record.get("key")
        what = "driver version" if not isinstance(was, dict) or was.get("version") != version \
            else "ld.so.cache" if was.get("ld_cache") != now["ld_cache"] else "a driver dir"
        return None, f"{what} changed since the snapshot"
    try:
        return facts_from_dict(record.get("facts")), ""
    except ValueError as e:
        return None, f"the snapshot's driver files are malformed: {e}"
