"""Plan -> the real system, for the prestart hook: device nodes in the container's mount
namespace, then cgroup rules (v1 devices.allow, or a v2 BPF device program)."""

from __future__ import annotations

from typing import Any

from gpuhook.errors import ApplyError
from gpuhook.plan import Plan


def apply_plan(plan: Plan, pid: int, rootfs: str, spec: dict[str, Any]) -> list[str]:
    """Apply `plan` to the container whose init is `pid`; return what was done, for the log.
    Raises ApplyError, leaving no widened access behind."""
    raise ApplyError("applying plans is not implemented yet")
