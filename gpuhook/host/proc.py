"""Host facts under an injectable root: device majors, MIG capability minors and modes.

Parsers take text and are pure; the readers are thin wrappers over `HostPaths`.
"""

from __future__ import annotations

from gpuhook.decide.facts import Capability, Majors
from gpuhook.errors import HostError
from gpuhook.files import read_regular
from gpuhook.limits import MAX_HOST_FILE_BYTES
from gpuhook.record import TYPE_CHECKING, dataclass
from gpuhook.text import decimal

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

NVIDIA_FRONTEND_FALLBACK_MAJOR = 195
PROC_DEVICES = "proc/devices"
MIG_MINORS = "proc/driver/nvidia-caps/mig-minors"
CAPABILITIES_DIR = "proc/driver/nvidia/capabilities"
DEFAULT_CAP_MODE = 0o444


@dataclass(frozen=True)
class HostPaths:
    """Where host files are read: `root` is the config key `host-root`."""

    root: str = "/"

    def path(self, rel: str) -> str:
        return self.root.rstrip("/") + "/" + rel.lstrip("/")

    def read_text(self, rel: str) -> str:
        path = self.path(rel)
        try:
            data = read_regular(path, MAX_HOST_FILE_BYTES)
            if len(data) > MAX_HOST_FILE_BYTES:
                raise HostError(f"cannot read {path}: larger than {MAX_HOST_FILE_BYTES} bytes")
            return data.decode("utf-8")
        except OSError as e:
            raise HostError(f"cannot read {path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise HostError(f"cannot read {path}: not UTF-8 text") from None


def parse_proc_devices(text: str) -> dict[str, int]:
    """Character-device majors by name from /proc/devices (the block section is skipped)."""
    majors: dict[str, int] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.endswith(":"):
            section = line[:-1].strip().lower()
            continue
        if section != "character devices":
            continue
        num, _, name = line.partition(" ")
        major = decimal(num)
        if major is not None and name.strip():
            majors.setdefault(name.strip(), major)
    return majors


def parse_mig_minors(text: str) -> dict[str, int]:
    """`mig-minors` lines like `gpu0/gi1/ci0/access 13` -> {"gpu0/gi1/ci0/access": 13}."""
    minors: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        minor = decimal(parts[1]) if len(parts) == 2 else None
        if minor is None:
            raise HostError(f"{MIG_MINORS}:{lineno}: unexpected line {line[:200]!r}")
        minors[parts[0]] = minor
    return minors


def parse_capability_file(text: str) -> dict[str, str]:
    """A driver capability file (`DeviceFileMinor: 12` ...) as a dict of its fields."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def capability_file(name: str) -> str:
    """Where the driver declares capability `name` (a mig-minors key), relative to host-root."""
    if name in ("monitor", "config"):
        return f"{CAPABILITIES_DIR}/mig/{name}"
    gpu, _, rest = name.partition("/")
    return f"{CAPABILITIES_DIR}/{gpu}/mig/{rest}"


def majors_from_devices(majors: Mapping[str, int], source: str) -> Majors:
    frontend = majors.get("nvidia-frontend", majors.get("nvidia", NVIDIA_FRONTEND_FALLBACK_MAJOR))
    uvm = majors.get("nvidia-uvm")
    if uvm is None:
        raise HostError(f"{source} lists no nvidia-uvm major; is the nvidia-uvm module loaded?")
    return Majors(frontend=frontend, uvm=uvm, caps=majors.get("nvidia-caps"))


def read_majors(host: HostPaths) -> Majors:
    return majors_from_devices(parse_proc_devices(host.read_text(PROC_DEVICES)),
                               host.path(PROC_DEVICES))


def read_mig_minors(host: HostPaths) -> dict[str, int]:
    return parse_mig_minors(host.read_text(MIG_MINORS))


def read_capabilities(host: HostPaths, names: Iterable[str],
                      minors: Mapping[str, int]) -> dict[str, Capability]:
    """Minor (from mig-minors) and file mode (from the driver's capability file) of each name."""
    caps: dict[str, Capability] = {}
    for name in names:
        minor = minors.get(name)
        if minor is None:
            raise HostError(f"capability {name!r} not in {host.path(MIG_MINORS)}; "
                            f"{len(minors)} entries exist")
        caps[name] = Capability(name, minor, _cap_mode(host, name))
    return caps


def _cap_mode(host: HostPaths, name: str) -> int:
    fields = parse_capability_file(host.read_text(capability_file(name)))
    raw = fields.get("DeviceFileMode")
    if raw is None:
        return DEFAULT_CAP_MODE
    mode = decimal(raw)
    if mode is None:
        raise HostError(f"{host.path(capability_file(name))}: DeviceFileMode {raw[:40]!r} "
                        "is not a decimal number")
    return mode & 0o777
