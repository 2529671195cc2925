"""What the decision needs to know about the host, as data: the host/ readers fill it in, the
Plan is built from it. Kept here so that decide/ depends on no reader."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


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
class HostInfo:
    majors: Majors
    capabilities: Mapping[str, Capability] = field(default_factory=dict)
