"""The JSON-lines decision log. Only NVIDIA_* / CUDA_VERSION env keys are ever logged."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the createContainer hook logs without importing the decision stages
    from gpuhook.decide.plan import Plan


def log_decision(path: str, record: dict[str, Any]) -> None:
    """Append one line. A log that cannot be written is reported on stderr, never fatal: the
    decision itself is already made and enforced."""
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
        print(f"gpuhook: warning: cannot write log {path}: {e.strerror}", file=sys.stderr)


def plan_record(plan: Plan, env: Mapping[str, str]) -> dict[str, Any]:
    """What the log says about a plan (hook and shim alike)."""
    from gpuhook.decide.render import plan_json
    from gpuhook.decide.request import loggable_env

    summary = plan_json(plan)
    return {"decision": "empty" if plan.empty else "apply", "source": plan.source,
            "device_ids": summary["device_ids"], "ignored": summary["ignored"],
            "devices": summary["devices"], "notes": list(plan.notes),
            "nvidia_env": loggable_env(env)}
