"""What the decision needs to know about the host, as data: the host/ readers fill it in, the
Plan is built from it. Kept here so that decide/ depends on no reader."""

from __future__ import annotations

from gpuhook.record import TYPE_CHECKING, dataclass, field

if TYPE_CHECKING:  # plan.py imports this module; these are only annotations here
    from collections.abc import Mapping

    from gpuhook.decide.plan import DriverFile


@dataclass(frozen=True)
class Majors:
    frontend: int
    uvm: int
    caps: int | None  # None when nvidia-caps is not registered (no MIG-capable driver)


@dataclass(frozen=True)
class Capability:
    name: str  # mig-minors key: "gpu0/gi1/access", "gpu0/gi1/ci0/access", "monitor", "config"
    minor: int
    file_mode: int


@dataclass(frozen=True)
class DriverLibrary:
    """A driver library found through the host's ld.so.cache."""

    host_path: str  # the resolved versioned file on the real root
    arch: str  # "x86-64" or "i386" (the cache entry's flags)
    stem: str  # the libnvidia-container list entry it matched: "libcuda.so"
    links: tuple[str, ...]  # the cache keys resolving to it: ("libcuda.so.1", "libcuda.so")

    @property
    def name(self) -> str:
        return self.host_path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class DriverFacts:
    """The driver's user-space under host-root, for every capability (chosen per container in
    decide/driver.py). Sockets are not here: they are read at each start."""

    version: str
    ld_cache: str  # the cache read, for messages
    libraries: tuple[DriverLibrary, ...] = ()
    files: tuple[DriverFile, ...] = ()  # binaries, firmware, config files
    notes: tuple[str, ...] = ()  # what discovery could not read


@dataclass(frozen=True)
class HostInfo:
    majors: Majors
    capabilities: Mapping[str, Capability] = field(default_factory=dict)
    driver: DriverFacts | None = None  # None: no driver files wanted
    sockets: tuple[DriverFile, ...] = ()  # IPC endpoints present now
