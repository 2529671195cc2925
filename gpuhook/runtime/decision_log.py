"""The JSON-lines decision log. Only NVIDIA_* / CUDA_VERSION env keys are ever logged."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the createContainer hook logs without importing the decision stages
    from gpuhook.decide.plan import Plan


def log_decision(path: str, record: dict[str, Any]) -> str | None:
    """Append one line. A log that cannot be written is never fatal (the decision itself is
    already made and enforced): the warning is returned for the caller to put where it belongs
    (the shim: the runtime's --log, never stderr, which is the container's stdio at create)."""
    line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record},
                      separators=(",", ":"), default=str) + "\n"
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o640)
        try:
            os.write(fd, line.encode())  # one write: lines from concurrent hooks do not interleave
        finally:
            os.close(fd)
    except OSError as e:
        return f"warning: cannot write decision log {path}: {e.strerror}"
    return None


def plan_record(plan: Plan, env: Mapping[str, str]) -> dict[str, Any]:
    """What the log says about a plan (hook and shim alike)."""
    from gpuhook.decide.render import plan_json
    from gpuhook.decide.request import loggable_env

    summary = plan_json(plan)
    return {"decision": "empty" if plan.empty else "apply", "source": plan.source,
            "device_ids": summary["device_ids"], "ignored": summary["ignored"],
            "devices": summary["devices"], "imex_channels": summary["imex_channels"],
            "gated_families": summary["gated_families"], "notes": list(plan.notes),
            "nvidia_env": loggable_env(env)}
