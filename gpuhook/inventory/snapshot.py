"""The inventory snapshot: what NVML (or the fake YAML) said, plus majors and mig-minors, saved
by `gpuhook inventory refresh` so that a container start needs no NVML.

Trust rule: a snapshot is used only when nothing casts doubt on it. Its freshness key is
recomputed on every use from cheap host reads under `host-root`:

- the driver version files (`sys/module/nvidia/version`, `proc/driver/nvidia/version`: content),
- `proc/devices` and `proc/sys/kernel/random/boot_id` (content: a module reload or a reboot),
- `proc/driver/nvidia-caps/mig-minors` (content and mtime),
- the names under `proc/driver/nvidia/gpus/` (a GPU added, removed or fallen off the bus),
- the names of the whole `proc/driver/nvidia/capabilities/` tree (MIG mode changes and GI/CI
  creation or destruction add and remove `gpuN/mig/giG/ciC` entries there; mig-minors itself
  lists every possible minor and never changes),
- the inventory source: `nvml`, or the fake YAML's absolute path, content, size and mtime
  (so editing a fake inventory invalidates its snapshot, just as reconfiguring MIG does on a
  real node), and the absolute host-root.

Contents are recorded verbatim and compared exactly (no digest: nothing can collide, and the
start path needs no hashlib/OpenSSL import). Any difference, an unreadable or malformed file,
a snapshot not owned by root (or the caller), one readable or writable by group or others, or
one in a directory others can write: the snapshot is not used and the backend is read instead.
A missing file is recorded as `null`, so its appearance also counts as a change. procfs may
give a file a new mtime when its inode is rebuilt; that only makes a snapshot stale, never
wrongly fresh.

Not visible to the key: destroying a MIG instance and recreating one with the same GI/CI ids
(same names in the capabilities tree) gives a new MIG uuid the snapshot does not know; a request
for it fails closed (unknown id) until the next refresh. Run `gpuhook inventory refresh` from
whatever reconfigures MIG (e.g. a mig-parted hook) and at boot.

`refresh` computes the key before and after reading the backend and writes only if both agree,
so a reconfiguration during the read cannot produce a snapshot that claims the new state.
"""

from __future__ import annotations

import os
import stat
import time

from gpuhook import fastjson
from gpuhook.config import Config
from gpuhook.decide.facts import DriverFacts
from gpuhook.errors import GpuhookError, HostError
from gpuhook.files import open_regular
from gpuhook.host.proc import (
    CAPABILITIES_DIR,
    MIG_MINORS,
    PROC_DEVICES,
    HostPaths,
    parse_mig_minors,
    parse_proc_devices,
)
from gpuhook.inventory.driver_snapshot import driver_record, fresh_driver
from gpuhook.inventory.model import Inventory
from gpuhook.record import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

# /2: GPUs carry arch and brand. A /1 snapshot (written before) is refused as "not a /2
# document" and the backend read instead, rather than read as "arch/brand unknown".
FORMAT = "gpuhook-inventory-snapshot/2"
NVML = "nvml"
VERSION_FILES = ("sys/module/nvidia/version", "proc/driver/nvidia/version")
BOOT_ID = "proc/sys/kernel/random/boot_id"
GPUS_DIR = "proc/driver/nvidia/gpus"
WATCHED_FILES = (*VERSION_FILES, PROC_DEVICES, MIG_MINORS, BOOT_ID)
MAX_SNAPSHOT_BYTES = 64 << 20
MAX_WATCHED_BYTES = 16 << 20
READ_CHUNK = 1 << 16
MAX_TREE_ENTRIES = 100_000
TREE_DEPTH = 4  # lists capabilities/, gpuN/, gpuN/mig/, gpuN/mig/giG/ (ciC: names only)


class StaleSnapshot(Exception):
    """The snapshot must not be used; the message says why (for the decision log)."""


# --- the freshness key -------------------------------------------------------------------------

def freshness_key(config: Config) -> dict[str, Any]:
    """What the snapshot's validity depends on, read now. Raises GpuhookError when it cannot
    be read completely (which callers treat as doubt)."""
    host = HostPaths(config.host_root)
    files = {rel: _content(host.path(rel)) for rel in WATCHED_FILES}
    if all(files[rel] is None for rel in VERSION_FILES):
        raise HostError(f"neither {host.path(VERSION_FILES[0])} nor {host.path(VERSION_FILES[1])} "
                        "exists: is the NVIDIA driver loaded?")
    return {
        "source": source_key(config.inventory),
        "host_root": os.path.abspath(config.host_root),
        "files": files,
        "mig_minors_mtime_ns": _mtime_ns(host.path(MIG_MINORS)),
        "gpus": _names(host.path(GPUS_DIR)),
        "capabilities": _tree_names(host.path(CAPABILITIES_DIR)),
    }


def source_key(inventory: str) -> dict[str, Any]:
    if inventory == NVML:
        return {"backend": NVML}
    path = os.path.abspath(inventory)
    try:
        fd = open_regular(path)
        try:
            st = os.fstat(fd)
            data = _read_limited(fd, path)
        finally:
            os.close(fd)
    except OSError as e:
        raise HostError(f"inventory {path}: {e.strerror}") from None
    return {"backend": "file", "path": path, "content": _text(data), "size": st.st_size,
            "mtime_ns": st.st_mtime_ns}


def _content(path: str) -> str | None:
    try:
        fd = open_regular(path)
        try:
            data = _read_limited(fd, path)
        finally:
            os.close(fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise HostError(f"cannot read {path}: {e.strerror}") from None
    return _text(data)


def _read_limited(fd: int, path: str) -> bytes:
    # In chunks: procfs allocates a kernel buffer of the size asked for, so one huge read()
    # of /proc/sys/kernel/random/boot_id fails with ENOMEM.
    chunks: list[bytes] = []
    total = 0
    while chunk := os.read(fd, READ_CHUNK):
        chunks.append(chunk)
        total += len(chunk)
        if total > MAX_WATCHED_BYTES:
            raise HostError(f"{path} is larger than {MAX_WATCHED_BYTES} bytes")
    return b"".join(chunks)


def _text(data: bytes) -> str:
    # surrogateescape: any bytes round-trip through JSON and still compare exactly.
    return data.decode("utf-8", "surrogateescape")


def _mtime_ns(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None
    except OSError as e:
        raise HostError(f"cannot stat {path}: {e.strerror}") from None


def _names(path: str) -> list[str] | None:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise HostError(f"cannot list {path}: {e.strerror}") from None


def _tree_names(path: str) -> str | None:
    """Every path below `path` down to TREE_DEPTH levels, sorted, one per line: names only, no
    file is opened. For the capabilities tree that is gpuN/mig/giG/ciC; a ciC dir holds only its
    `access` file, which comes and goes with the dir."""
    entries: list[str] = []
    level = [""]
    try:
        os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise HostError(f"cannot stat {path}: {e.strerror}") from None
    for depth in range(TREE_DEPTH):
        last = depth == TREE_DEPTH - 1
        below: list[str] = []
        for rel in level:
            prefix = rel + "/" if rel else ""
            where = path + "/" + rel if rel else path
            try:
                if last:  # no descent below: names suffice, and listdir is cheaper
                    entries.extend(prefix + name for name in os.listdir(where))
                    continue
                with os.scandir(where) as it:
                    for entry in it:
                        name = prefix + entry.name
                        entries.append(name)
                        if entry.is_dir(follow_symlinks=False):
                            below.append(name)
            except OSError as e:
                raise HostError(f"cannot list {where}: {e.strerror}") from None
        if len(entries) > MAX_TREE_ENTRIES:
            raise HostError(f"{path} has more than {MAX_TREE_ENTRIES} entries")
        level = below
    entries.sort()
    return "\n".join(entries)


# --- building and writing ----------------------------------------------------------------------

def build_snapshot(config: Config, read_backend: Any) -> dict[str, Any]:
    """Read the backend between two freshness keys; the snapshot only if both keys agree."""
    before = freshness_key(config)
    inventory: Inventory = read_backend(config)
    after = freshness_key(config)
    if before != after:
        changed = sorted(k for k in before if before[k] != after.get(k))
        raise HostError("the host changed while the inventory was read (" + ", ".join(changed)
                        + "); run `gpuhook inventory refresh` again")
    # Parsed from exactly the contents the key records, so they can never disagree.
    devices = parse_proc_devices(after["files"][PROC_DEVICES] or "")
    minors_text = after["files"][MIG_MINORS]
    minors = parse_mig_minors(minors_text) if minors_text is not None else {}
    return {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "key": after,
        "inventory": inventory.to_dict(),
        "majors": {name: devices[name] for name in ("nvidia-frontend", "nvidia", "nvidia-uvm",
                                                     "nvidia-caps") if name in devices},
        "mig_minors": minors,
        **({"driver": driver_record(config, inventory.driver_version)}
           if config.driver_files else {}),
    }


def write_snapshot(path: str, snapshot: dict[str, Any]) -> None:
    """Atomically: temp file (0600) in the same dir + fsync + rename + fsync of the dir.
    The dir is created 0700; an existing dir must be the caller's and not writable by others."""
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise HostError(f"{directory}: must be a directory owned by uid {os.geteuid()} and "
                        f"not writable by group or others (is {stat.filemode(st.st_mode)}, "
                        f"uid {st.st_uid})")
    import tempfile  # only `refresh` writes

    data = fastjson.dumps(snapshot, separators=(",", ":"), sort_keys=True).encode() + b"\n"
    fd, tmp = tempfile.mkstemp(prefix=".inventory-", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# --- reading and judging -----------------------------------------------------------------------

def read_snapshot(path: str) -> dict[str, Any]:
    """The snapshot document if the file is trustworthy; StaleSnapshot otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise StaleSnapshot(f"no snapshot at {path}") from None
    except OSError as e:
        raise StaleSnapshot(f"cannot open {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        _check_owner(path, st, file=True)
        _check_owner(os.path.dirname(os.path.abspath(path)),
                     os.stat(os.path.dirname(os.path.abspath(path))), file=False)
        if st.st_size > MAX_SNAPSHOT_BYTES:
            raise StaleSnapshot(f"{path} is larger than {MAX_SNAPSHOT_BYTES} bytes")
        # A regular file (checked above): read(size + 1) allocates only what is there and
        # still sees a file that grew since fstat.
        raw = os.read(fd, st.st_size + 1)
    except OSError as e:
        raise StaleSnapshot(f"cannot read {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(raw) != st.st_size:
        raise StaleSnapshot(f"{path} changed while it was read")
    try:
        doc = fastjson.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise StaleSnapshot(f"{path} is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StaleSnapshot(f"{path} is not a {FORMAT} document")
    return doc


def _check_owner(path: str, st: os.stat_result, file: bool) -> None:
    trusted = {0, os.geteuid()}
    if file and not stat.S_ISREG(st.st_mode):
        raise StaleSnapshot(f"{path} is not a regular file")
    if st.st_uid not in trusted:
        raise StaleSnapshot(f"{path} is owned by uid {st.st_uid}, not root")
    forbidden = 0o077 if file else 0o022
    if st.st_mode & forbidden:
        raise StaleSnapshot(f"{path} has mode {stat.filemode(st.st_mode)}; "
                            f"{'0600' if file else 'no group/other write'} expected")


def fresh_inventory(config: Config) -> Inventory:
    """The snapshot's inventory when the snapshot is trustworthy and its key matches the host
    now; StaleSnapshot naming the first reason otherwise."""
    return fresh_snapshot(config)[0]


def fresh_snapshot(config: Config) -> tuple[Inventory, dict[str, int] | None]:
    """(inventory, mig-minors as parsed at refresh, None when the host had none) when the
    snapshot is trustworthy and its key (which holds mig-minors verbatim) matches the host now;
    StaleSnapshot naming the first reason otherwise."""
    inventory, minors, _ = fresh_snapshot_doc(config)
    return inventory, minors


def fresh_snapshot_driver(config: Config
                          ) -> tuple[Inventory, dict[str, int] | None, DriverFacts | None, str]:
    """fresh_snapshot plus the driver facts when their own key matches the host now (else None
    and why): see driver_snapshot.py."""
    inventory, minors, doc = fresh_snapshot_doc(config)
    facts, why = fresh_driver(doc.get("driver"), config, inventory.driver_version)
    return inventory, minors, facts, why


def fresh_snapshot_doc(config: Config
                       ) -> tuple[Inventory, dict[str, int] | None, dict[str, Any]]:
    path = config.inventory_cache
    doc = read_snapshot(path)
    recorded = doc.get("key")
    if not isinstance(recorded, dict):
        raise StaleSnapshot(f"{path} has no freshness key")
    try:
        current = freshness_key(config)
    except GpuhookError as e:
        raise StaleSnapshot(f"cannot check {path}: {e}") from None
    if recorded != current:
        changed = sorted(k for k in current.keys() | recorded.keys()
                         if current.get(k) != recorded.get(k))
        what = [_describe(k, recorded.get(k), current.get(k)) for k in changed]
        raise StaleSnapshot(f"{path} is stale: {'; '.join(what)}")
    try:
        inventory = Inventory.from_dict(doc.get("inventory"), f"snapshot {path}")
    except GpuhookError as e:
        raise StaleSnapshot(str(e)) from None
    if current["files"][MIG_MINORS] is None:
        return inventory, None, doc
    minors = doc.get("mig_minors")
    if not isinstance(minors, dict) or not all(
            type(v) is int and v >= 0 for v in minors.values()):
        raise StaleSnapshot(f"{path}: mig_minors must map names to minors")
    return inventory, minors, doc


def _describe(key: str, was: object, now: object) -> str:
    """What changed, with the recorded and the current value (first line, bounded)."""
    if key == "files" and isinstance(was, dict) and isinstance(now, dict):
        return "; ".join(f"{rel} changed (was {_short(was.get(rel))}, now {_short(now.get(rel))})"
                         for rel in sorted(now.keys() | was.keys())
                         if was.get(rel) != now.get(rel))
    name = {"source": "inventory source", "host_root": "host-root",
            "mig_minors_mtime_ns": "mig-minors mtime", "gpus": "GPU set",
            "capabilities": "MIG capability tree"}.get(key, key)
    if isinstance(was, list) and isinstance(now, list):
        gone = sorted(set(map(str, was)) - set(map(str, now)))
        new = sorted(set(map(str, now)) - set(map(str, was)))
        return (f"{name} changed (gone: {_short(', '.join(gone)) if gone else 'none'}; "
                f"new: {_short(', '.join(new)) if new else 'none'})")
    return f"{name} changed (was {_short(was)}, now {_short(now)})"


def _short(value: object, limit: int = 80) -> str:
    if value is None:
        return "absent"
    if isinstance(value, dict):  # the inventory source: the file or the backend
        value = value.get("path") or value.get("backend")
    text = str(value).strip().splitlines()[0] if str(value).strip() else "empty"
    return repr(text[:limit] + ("..." if len(text) > limit else ""))
