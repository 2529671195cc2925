"""The inventory snapshot: what NVML (or the fake YAML) said, plus majors and mig-minors, saved
by `gpuhook inventory refresh` so that a container start needs no NVML.

Trust rule: a snapshot is used only when nothing casts doubt on it. Its freshness key is
recomputed on every use from cheap host reads under `host-root`:

- the driver version files (`sys/module/nvidia/version`, `proc/driver/nvidia/version`: content),
- `proc/devices` and `proc/sys/kernel/random/boot_id` (content: a module reload or a reboot),
- `proc/driver/nvidia-caps/mig-minors` (content and mtime),
- the names under `proc/driver/nvidia/gpus/` (a GPU added, removed or fallen off the bus),
- the names of the `proc/driver/nvidia/capabilities/` tree (MIG mode changes and GI/CI
  creation or destruction add and remove `gpuN/mig/giG/ciC` entries there; mig-minors itself
  lists every possible minor and never changes): on every use the part outside the GPUs' own
  `gpuN/` dirs (their names included, so a GPU dir that comes or goes is seen by every start),
  and below `gpuN/` only for the GPUs the request names (see "Per request" below),
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

Per request: the file is a header line plus sections (format below, at encode_snapshot), so a
start with device ids reads the header, finds the GPUs its ids name (an index from the header,
a uuid from a text index), and parses and checks only those GPUs: what it costs does not grow
with the node. The decision on `63:6` depends on GPU 63's inventory entry, its MIG capability
subtree and its mig-minors entries, and on the node-wide facts (driver, majors, boot, GPU set),
which are all checked; a change on another GPU cannot change it. Ids the index cannot place
(`all`, a PCI bus id, an unknown id) load and check the whole inventory, as a full read does;
a partial inventory that does not resolve its ids is never the answer: the whole one is loaded
and resolves them (runtime/pipeline.py), so an error lists everything that exists.
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
from gpuhook.text import decimal

if TYPE_CHECKING:
    from typing import Any

# /3: a header line and sections (one per GPU, the uuid index, the big watched files), so that a
# start parses and checks only the GPUs its request names. A /2 (one JSON document) or /1
# snapshot is refused as "not a /3 document" and the backend read instead.
FORMAT = "gpuhook-inventory-snapshot/3"
NVML = "nvml"
VERSION_FILES = ("sys/module/nvidia/version", "proc/driver/nvidia/version")
BOOT_ID = "proc/sys/kernel/random/boot_id"
GPUS_DIR = "proc/driver/nvidia/gpus"
WATCHED_FILES = (*VERSION_FILES, PROC_DEVICES, MIG_MINORS, BOOT_ID)
SMALL_FILES = (*VERSION_FILES, PROC_DEVICES, BOOT_ID)  # in the header; mig-minors is a section
MAX_SNAPSHOT_BYTES = 64 << 20
MAX_WATCHED_BYTES = 16 << 20
READ_CHUNK = 1 << 16
MAX_TREE_ENTRIES = 100_000
TREE_DEPTH = 4  # lists capabilities/, gpuN/, gpuN/mig/, gpuN/mig/giG/ (ciC: names only)
MAX_INDEX_DIGITS = 9  # a GPU or MIG index longer than this is not looked up (the full path is)
MANY_IDS = 32  # more uuid ids than this: the uuid index is parsed once, not searched per id


class StaleSnapshot(Exception):
    """The snapshot must not be used; the message says why (for the decision log)."""


# --- the freshness key -------------------------------------------------------------------------

def freshness_key(config: Config) -> dict[str, Any]:
    """What the snapshot's validity depends on, read now, whole (the capabilities tree in one
    walk). Raises GpuhookError when it cannot be read completely (which callers treat as
    doubt). `refresh` compares two of these; a start checks the same facts split the way the
    file is (see _check)."""
    host = HostPaths(config.host_root)
    files = {rel: _content(host.path(rel)) for rel in WATCHED_FILES}
    _check_driver_loaded(host, files)
    return {
        "source": source_key(config.inventory),
        "host_root": os.path.abspath(config.host_root),
        "files": files,
        "mig_minors_mtime_ns": _mtime_ns(host.path(MIG_MINORS)),
        "gpus": _names(host.path(GPUS_DIR)),
        "capabilities": _tree_names(host.path(CAPABILITIES_DIR)),
    }


def _check_driver_loaded(host: HostPaths, files: dict[str, Any]) -> None:
    if all(files[rel] is None for rel in VERSION_FILES):
        raise HostError(f"neither {host.path(VERSION_FILES[0])} nor {host.path(VERSION_FILES[1])} "
                        "exists: is the NVIDIA driver loaded?")


def source_key(inventory: str) -> dict[str, Any]:
    key, data = _source_now(inventory)
    return key if data is None else {**key, "content": _text(data)}


def _source_now(inventory: str) -> tuple[dict[str, Any], bytes | None]:
    """The inventory source's key without its content, and the content (None: NVML)."""
    if inventory == NVML:
        return {"backend": NVML}, None
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
    return {"backend": "file", "path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}, data


def _content(path: str) -> str | None:
    data = _raw(path)
    return None if data is None else _text(data)


def _raw(path: str) -> bytes | None:
    try:
        fd = open_regular(path)
        try:
            return _read_limited(fd, path)
        finally:
            os.close(fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise HostError(f"cannot read {path}: {e.strerror}") from None


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


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


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


def _tree_names(path: str, depth: int = TREE_DEPTH,
                skip: frozenset[str] = frozenset()) -> str | None:
    """Every path below `path` down to `depth` levels, sorted, one per line: names only, no
    file is opened. For the capabilities tree that is gpuN/mig/giG/ciC; a ciC dir holds only its
    `access` file, which comes and goes with the dir. The top-level names in `skip` are listed
    but not descended into (their subtrees are walked on their own: _gpu_tree)."""
    entries: list[str] = []
    level = [""]
    try:
        os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise HostError(f"cannot stat {path}: {e.strerror}") from None
    for d in range(depth):
        last = d == depth - 1
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
                        if entry.is_dir(follow_symlinks=False) and not (d == 0 and name in skip):
                            below.append(name)
            except OSError as e:
                raise HostError(f"cannot list {where}: {e.strerror}") from None
        if len(entries) > MAX_TREE_ENTRIES:
            raise HostError(f"{path} has more than {MAX_TREE_ENTRIES} entries")
        level = below
    entries.sort()
    return "\n".join(entries)


def _gpu_tree(host: HostPaths, minor: int) -> str | None:
    """The capabilities tree below gpu<minor>/ (None: no such directory), names relative to
    it: exactly what the whole walk lists under that prefix."""
    path = host.path(f"{CAPABILITIES_DIR}/gpu{minor}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise HostError(f"cannot stat {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):  # the whole walk does not descend into it either
        return None
    return _tree_names(path, TREE_DEPTH - 1)


def _split_tree(host: HostPaths, minors: list[int]
                ) -> tuple[str | None, dict[str, str | None]]:
    """The capabilities tree as the file keeps it: the part outside the GPUs' own dirs
    (their names included), and each GPU's subtree by minor."""
    common = _tree_names(host.path(CAPABILITIES_DIR), TREE_DEPTH,
                         frozenset(f"gpu{m}" for m in minors))
    return common, {str(m): None if common is None else _gpu_tree(host, m) for m in minors}


def _joined_tree(common: str | None, own: dict[str, str | None]) -> str | None:
    """_split_tree's parts as the one walk lists them."""
    if common is None:
        return None
    lines = common.split("\n") if common else []
    for minor, text in own.items():
        if text:
            lines.extend(f"gpu{minor}/{line}" for line in text.split("\n"))
    lines.sort()
    return "\n".join(lines)


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
    # The tree once more, split per GPU as a start checks it: it must be the tree both keys saw.
    common, own = _split_tree(HostPaths(config.host_root), [g.minor for g in inventory.gpus])
    if _joined_tree(common, own) != after["capabilities"]:
        raise HostError("the host changed while the inventory was read (capabilities); "
                        "run `gpuhook inventory refresh` again")
    # Parsed from exactly the contents the key records, so they can never disagree.
    devices = parse_proc_devices(after["files"][PROC_DEVICES] or "")
    minors_text = after["files"][MIG_MINORS]
    minors = parse_mig_minors(minors_text) if minors_text is not None else {}
    return {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "key": {**after, "capabilities": common, "gpu_capabilities": own},
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

    data = encode_snapshot(snapshot)
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


# --- the file: a header line, then the sections it points at -----------------------------------
#
# Header (one line of JSON): format, created, majors, driver, the freshness key without its big
# parts, driver and CUDA version, the mig-minors entries of no GPU ("monitor", "config"), and
# [offset, length] references (bytes after the header line) to the sections:
#   blobs.mig-minors / blobs.source: the key's mig-minors and fake-inventory contents, verbatim
#     (a start compares the host's bytes with them: no JSON string to scan, no decoding);
#   gpus: [offset, length, index, minor] per GPU, in inventory order; a GPU section is JSON:
#     {"gpu": its inventory entry, "capabilities": its subtree, "mig_minors": its entries};
#   uuids: "\n<uuid, lowercase> <position in gpus>\n..." for every GPU and MIG uuid (ASCII,
#     no whitespace), searched as text: a uuid request finds its GPU without a parse;
#   other_minors: JSON, the mig-minors entries of GPUs the inventory does not have.

def _json(value: object) -> bytes:
    return fastjson.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _owner(name: str) -> int | None:
    """The GPU minor a mig-minors name belongs to (`gpu12/gi1/access` -> 12), else None."""
    head, sep, _ = name.partition("/")
    digits = head[3:]
    number = decimal(digits, MAX_INDEX_DIGITS) if sep and head.startswith("gpu") else None
    return number if number is not None and str(number) == digits else None


def encode_snapshot(doc: dict[str, Any]) -> bytes:
    """build_snapshot's document as the file holds it (decode_snapshot gives it back)."""
    body = bytearray()

    def put(data: bytes) -> list[int]:
        ref = [len(body), len(data)]
        body.extend(data)
        return ref

    key = dict(doc["key"])
    source = dict(key["source"])
    content = source.pop("content", None)
    files = dict(key["files"])
    minors_text = files.pop(MIG_MINORS, None)
    own_trees = key.pop("gpu_capabilities", {})
    inventory = doc["inventory"]
    own: dict[int, dict[str, int]] = {g["minor"]: {} for g in inventory["gpus"]}
    common: dict[str, int] = {}
    other: dict[str, int] = {}
    for name, minor in doc["mig_minors"].items():
        owner = _owner(name)
        (common if owner is None else own.get(owner, other))[name] = minor
    table: list[list[int]] = []
    index: list[str] = []
    for position, gpu in enumerate(inventory["gpus"]):
        section = {"gpu": gpu, "capabilities": own_trees.get(str(gpu["minor"])),
                   "mig_minors": own[gpu["minor"]]}
        table.append([*put(_json(section)), gpu["index"], gpu["minor"]])
        for uuid in [gpu["uuid"], *(m["uuid"] for m in gpu.get("mig_devices", []))]:
            if uuid.isascii() and uuid.isprintable() and " " not in uuid:
                index.append(f"{uuid.lower()} {position}\n")
    header = {
        **{k: v for k, v in doc.items() if k not in ("key", "inventory", "mig_minors")},
        "key": {**key, "source": source, "files": files},
        "blobs": {"source": None if content is None else put(_bytes(content)),
                  "mig-minors": None if minors_text is None else put(_bytes(minors_text))},
        "driver_version": inventory["driver_version"],
        "cuda_version": inventory["cuda_version"],
        "gpus": table,
        "uuids": put(("\n" + "".join(index)).encode()),
        "mig_minors": common,
        "other_minors": put(_json(other)),
    }
    return _json(header) + b"\n" + bytes(body)


class _File:
    """A snapshot file: its header, read at once, and its sections, read when asked for. From
    an open fd (a start: only the header and the sections it needs are read, so a big node's
    file costs no more memory than a small one's) or from bytes (decode_snapshot)."""

    __slots__ = ("fd", "header", "path", "raw", "size", "start")

    def __init__(self, path: str, size: int, fd: int = -1, raw: bytes = b"") -> None:
        self.path = path
        self.size = size
        self.fd = fd
        self.raw = raw
        head = self.read(0, min(size, READ_CHUNK))
        while (end := head.find(b"\n")) < 0 and len(head) < size:
            head += self.read(len(head), min(size - len(head), len(head)))
        self.start = len(head) if end < 0 else end + 1
        try:
            header = fastjson.loads(head[:self.start])
        except (ValueError, UnicodeDecodeError):
            raise StaleSnapshot(f"{path} is not valid JSON") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise StaleSnapshot(f"{path} is not a {FORMAT} document")
        self.header: dict[str, Any] = header

    def read(self, offset: int, length: int) -> bytes:
        if self.fd < 0:
            return self.raw[offset:offset + length]
        try:
            data = os.pread(self.fd, length, offset)
        except OSError as e:
            raise StaleSnapshot(f"cannot read {self.path}: {e.strerror}") from None
        if len(data) != length:
            raise StaleSnapshot(f"{self.path} changed while it was read")
        return data

    def ref(self, ref: object, what: str) -> list[int]:
        """A section reference [offset, length], checked to lie in the file."""
        if not (isinstance(ref, list) and len(ref) == 2
                and all(type(v) is int and v >= 0 for v in ref)
                and self.start + ref[0] + ref[1] <= self.size):
            raise StaleSnapshot(f"{self.path}: {what} is not a section of the file")
        return ref

    def section(self, ref: object, what: str) -> bytes:
        offset, length = self.ref(ref, what)
        return self.read(self.start + offset, length)

    def json_section(self, ref: object, what: str) -> Any:
        try:
            return fastjson.loads(self.section(ref, what))
        except (ValueError, UnicodeDecodeError):
            raise StaleSnapshot(f"{self.path}: {what} is not valid JSON") from None

    def blob_ref(self, name: str) -> list[int] | None:
        blobs = self.header.get("blobs")
        if not isinstance(blobs, dict):
            raise StaleSnapshot(f"{self.path} has no blobs")
        ref = blobs.get(name)
        return None if ref is None else self.ref(ref, name)

    def blob(self, name: str) -> bytes | None:
        ref = self.blob_ref(name)
        return None if ref is None else self.section(ref, name)

    def table(self) -> list[list[int]]:
        table = self.header.get("gpus")
        if not isinstance(table, list) or not all(
                isinstance(row, list) and len(row) == 4
                and all(type(v) is int and v >= 0 for v in row) for row in table):
            raise StaleSnapshot(f"{self.path}: gpus must be [offset, length, index, minor] rows")
        return table

    def gpu(self, row: list[int], position: int) -> dict[str, Any]:
        what = f"GPU section {position}"
        section = self.json_section(row[:2], what)
        if not (isinstance(section, dict) and isinstance(section.get("gpu"), dict)
                and section["gpu"].get("minor") == row[3]
                and section["gpu"].get("index") == row[2]):
            raise StaleSnapshot(f"{self.path}: {what} does not match its row")
        return section


def decode_snapshot(raw: bytes, path: str) -> dict[str, Any]:
    """The file's contents as build_snapshot's document (for `inventory show`-like readers and
    tests; a start reads only the parts it needs)."""
    f = _File(path, len(raw), raw=raw)
    doc = {k: v for k, v in f.header.items()
           if k not in ("blobs", "gpus", "uuids", "other_minors", "driver_version",
                        "cuda_version")}
    key = doc.get("key")
    sections = [f.gpu(row, i) for i, row in enumerate(f.table())]
    if isinstance(key, dict):
        key = doc["key"] = dict(key)
        source, files = key.get("source"), key.get("files")
        content = f.blob("source")
        if isinstance(source, dict) and content is not None:
            key["source"] = {**source, "content": _text(content)}
        if isinstance(files, dict):
            text = f.blob("mig-minors")
            key["files"] = {**files, MIG_MINORS: _maybe_text(text)}
        key["gpu_capabilities"] = {str(s["gpu"]["minor"]): s.get("capabilities")
                                   for s in sections}
    minors = f.header.get("mig_minors")
    other = f.json_section(f.header.get("other_minors"), "other_minors")
    if isinstance(minors, dict):
        minors = {**minors, **(other if isinstance(other, dict) else {})}
        for s in sections:
            own = s.get("mig_minors")
            minors.update(own if isinstance(own, dict) else {})
    doc["mig_minors"] = minors
    doc["inventory"] = {"driver_version": f.header.get("driver_version"),
                        "cuda_version": f.header.get("cuda_version"),
                        "gpus": [s["gpu"] for s in sections]}
    return doc


# --- reading and judging -----------------------------------------------------------------------

def read_snapshot(path: str) -> dict[str, Any]:
    """The snapshot document if the file is trustworthy; StaleSnapshot otherwise."""
    fd, size = _open_file(path)
    try:
        raw = os.read(fd, size + 1)
    except OSError as e:
        raise StaleSnapshot(f"cannot read {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(raw) != size:
        raise StaleSnapshot(f"{path} changed while it was read")
    return decode_snapshot(raw, path)


def _open_file(path: str) -> tuple[int, int]:
    """(fd, size) of the snapshot file if it is trustworthy; StaleSnapshot otherwise. The
    caller closes the fd. `refresh` replaces the file by rename, so what the fd reads is one
    whole file, old or new."""
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
    except OSError as e:
        os.close(fd)
        raise StaleSnapshot(f"cannot read {path}: {e.strerror}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


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
    inventory, minors, driver, why, _ = fresh_for_request(config, None)
    return inventory, minors, driver, why


def fresh_snapshot_doc(config: Config
                       ) -> tuple[Inventory, dict[str, int] | None, dict[str, Any]]:
    """The whole inventory, mig-minors and the file's header (its `driver` record)."""
    inventory, minors, header, _ = _fresh(config, None)
    return inventory, minors, header


def fresh_for_request(config: Config, ids: list[str] | tuple[str, ...] | None
                      ) -> tuple[Inventory, dict[str, int] | None, DriverFacts | None, str,
                                 bool]:
    """fresh_snapshot_driver for a request for `ids` (None: everything), and whether the
    inventory is partial: then it holds only the GPUs the ids name, each checked against the
    host now; mig-minors hold the entries of those GPUs and of none. An id the index cannot
    place (`all`, a PCI bus id, an unknown one) gives the whole inventory. A partial inventory
    resolves the ids exactly as the whole one does (indices and uuids are unique); one that
    fails to resolve them is no verdict: ask again with None for the whole one's answer."""
    inventory, minors, header, partial = _fresh(config, ids)
    facts, why = fresh_driver(header.get("driver"), config, inventory.driver_version)
    return inventory, minors, facts, why, partial


def _fresh(config: Config, ids: list[str] | tuple[str, ...] | None
           ) -> tuple[Inventory, dict[str, int] | None, dict[str, Any], bool]:
    path = config.inventory_cache
    fd, size = _open_file(path)
    try:
        return _fresh_from(_File(path, size, fd), config, ids)
    finally:
        os.close(fd)


def _fresh_from(f: _File, config: Config, ids: list[str] | tuple[str, ...] | None
                ) -> tuple[Inventory, dict[str, int] | None, dict[str, Any], bool]:
    path = f.path
    if not isinstance(f.header.get("key"), dict):
        raise StaleSnapshot(f"{path} has no freshness key")
    table = f.table()
    chosen = _select(f, table, ids)
    positions = range(len(table)) if chosen is None else chosen
    sections = [f.gpu(table[p], p) for p in positions]
    mig_minors_now = _check(f, config, table, sections)
    try:
        inventory = Inventory.from_dict(
            {"driver_version": f.header.get("driver_version"),
             "cuda_version": f.header.get("cuda_version"),
             "gpus": [s["gpu"] for s in sections]}, f"snapshot {path}")
    except GpuhookError as e:
        raise StaleSnapshot(str(e)) from None
    if not mig_minors_now:
        return inventory, None, f.header, chosen is not None
    minors = f.header.get("mig_minors")
    parts = [s.get("mig_minors") for s in sections]
    if chosen is None:
        parts.append(f.json_section(f.header.get("other_minors"), "other_minors"))
    merged: dict[str, int] = {}
    for part in [minors, *parts]:
        if not isinstance(part, dict) or not all(
                type(v) is int and v >= 0 for v in part.values()):
            raise StaleSnapshot(f"{path}: mig_minors must map names to minors")
        merged.update(part)
    return inventory, merged, f.header, chosen is not None


def _select(f: _File, table: list[list[int]], ids: list[str] | tuple[str, ...] | None
            ) -> list[int] | None:
    """Positions (in inventory order) of the GPUs `ids` name, found through the header's
    index and the uuid index without parsing any GPU; None: every GPU is needed (`all`, None,
    a PCI bus id, an id the snapshot does not know: the whole inventory answers those)."""
    if ids is None:
        return None
    by_index: dict[int, int] | None = None
    uuids: str | dict[str, str] | None = None
    chosen: set[int] = set()
    for device_id in ids:
        gpu, sep, mig = device_id.partition(":")
        if decimal(gpu, MAX_INDEX_DIGITS) is not None and (
                not sep or decimal(mig, MAX_INDEX_DIGITS) is not None):
            if by_index is None:
                by_index = {row[2]: p for p, row in enumerate(table)}
            position = by_index.get(int(gpu))
        elif device_id[:4].lower() in ("gpu-", "mig-") and device_id.isascii() \
                and device_id.isprintable() and " " not in device_id:
            if uuids is None:
                uuids = _uuid_index(f, len(ids) > MANY_IDS)
            position = _lookup(uuids, device_id.lower(), len(table))
        else:
            return None
        if position is None:
            return None
        chosen.add(position)
    return sorted(chosen)


def _uuid_index(f: _File, many: bool) -> str | dict[str, str]:
    """The uuid index as text (a few ids: each one a search at C speed, nothing built) or, for
    many ids, as a dict (each search would scan the whole index)."""
    try:
        text = f.section(f.header.get("uuids"), "uuids").decode("ascii")
        if not many:
            return text
        return dict(line.split(" ", 1) for line in text.split("\n") if line)
    except (UnicodeDecodeError, ValueError):
        raise StaleSnapshot(f"{f.path}: uuids must be ASCII lines of a uuid and a position") \
            from None


def _lookup(uuids: str | dict[str, str], wanted: str, count: int) -> int | None:
    if isinstance(uuids, dict):
        position = decimal(uuids.get(wanted, ""), MAX_INDEX_DIGITS)
        return position if position is not None and position < count else None
    at = uuids.find(f"\n{wanted} ")
    if at < 0:
        return None
    begin = at + len(wanted) + 2
    end = uuids.find("\n", begin)
    position = decimal(uuids[begin:end] if end >= 0 else "", MAX_INDEX_DIGITS)
    return position if position is not None and position < count else None


def _check(f: _File, config: Config, table: list[list[int]],
           sections: list[dict[str, Any]]) -> bool:
    """Compare the header's key, the blobs and the chosen GPUs' subtrees with the host now;
    StaleSnapshot naming every difference. True when the host has mig-minors."""
    host = HostPaths(config.host_root)
    recorded: dict[str, Any] = f.header["key"]
    minors_path = host.path(MIG_MINORS)
    try:
        source, same_source = _source_matches(config.inventory, f)
        files = {rel: _content(host.path(rel)) for rel in SMALL_FILES}
        same_minors, has_minors = _file_matches(minors_path, f, f.blob_ref("mig-minors"))
        _check_driver_loaded(host, files)
        now = {
            "source": source,
            "host_root": os.path.abspath(config.host_root),
            "files": files,
            "mig_minors_mtime_ns": _mtime_ns(minors_path),
            "gpus": _names(host.path(GPUS_DIR)),
            "capabilities": _tree_names(host.path(CAPABILITIES_DIR), TREE_DEPTH,
                                        frozenset(f"gpu{row[3]}" for row in table)),
        }
        trees = [_gpu_tree(host, s["gpu"]["minor"]) if now["capabilities"] is not None
                 else None for s in sections]
        what = [_describe(k, recorded.get(k), now.get(k))
                for k in sorted(now.keys() | recorded.keys()) if now.get(k) != recorded.get(k)]
        if not same_source:
            what.append(_describe("source", recorded.get("source"), source))
        if not same_minors:  # the slow path: both read whole, for the message
            what.append(_describe("files", {MIG_MINORS: _maybe_text(f.blob("mig-minors"))},
                                  {MIG_MINORS: _content(minors_path)}))
    except GpuhookError as e:
        raise StaleSnapshot(f"cannot check {f.path}: {e}") from None
    for s, tree in zip(sections, trees, strict=True):
        if s.get("capabilities") != tree:
            what.append(_describe("capabilities", s.get("capabilities"), tree)
                        + f" below gpu{s['gpu']['minor']}")
    if what:
        raise StaleSnapshot(f"{f.path} is stale: {'; '.join(what)}")
    return has_minors


def _source_matches(inventory: str, f: _File) -> tuple[dict[str, Any], bool]:
    """The inventory source's key without its content, and whether its content is the one
    recorded (compared from the same open file)."""
    ref = f.blob_ref("source")
    if inventory == NVML:
        return {"backend": NVML}, ref is None
    path = os.path.abspath(inventory)
    try:
        fd = open_regular(path)
        try:
            st = os.fstat(fd)
            same = _same_bytes(fd, path, f, ref)
        finally:
            os.close(fd)
    except OSError as e:
        raise HostError(f"inventory {path}: {e.strerror}") from None
    return {"backend": "file", "path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}, same


def _file_matches(path: str, f: _File, ref: list[int] | None) -> tuple[bool, bool]:
    """(whether the host file at `path` holds exactly the section `ref`, None: recorded as
    absent; whether the file exists)."""
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        return ref is None, False
    except OSError as e:
        raise HostError(f"cannot read {path}: {e.strerror}") from None
    try:
        return _same_bytes(fd, path, f, ref), True
    except OSError as e:
        raise HostError(f"cannot read {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def _same_bytes(fd: int, path: str, f: _File, ref: list[int] | None) -> bool:
    """Whether what `fd` reads is exactly the section `ref` (None: no content was recorded),
    compared a chunk at a time: neither file is held whole, so a start on a big node allocates
    (and page-faults) no more than on a small one. In chunks for procfs too (see
    _read_limited); a file over MAX_WATCHED_BYTES is doubt, as when it is read whole."""
    if ref is None:
        return False
    offset, left = f.start + ref[0], ref[1]
    total = 0
    while chunk := os.read(fd, READ_CHUNK):
        total += len(chunk)
        if total > MAX_WATCHED_BYTES:
            raise HostError(f"{path} is larger than {MAX_WATCHED_BYTES} bytes")
        if len(chunk) > left or f.read(offset, len(chunk)) != chunk:
            return False
        offset += len(chunk)
        left -= len(chunk)
    return left == 0


def _maybe_text(data: bytes | None) -> str | None:
    return None if data is None else _text(data)


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
