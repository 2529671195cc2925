"""The JSON-lines decision log: only the env keys gpuhook reads, every record bounded
(runtime/log_record.py). The file is created 0600 (it holds pod env values and ids; root reads
it) and never through a symlink, a FIFO or a device: such a path is reported, not written."""

from __future__ import annotations

import os
import stat
import time

from gpuhook import fastjson
from gpuhook.record import TYPE_CHECKING
from gpuhook.text import escape

if TYPE_CHECKING:  # the createContainer hook logs without importing the decision stages
    from collections.abc import Mapping
    from typing import Any

    from gpuhook.decide.plan import Plan

LOG_MODE = 0o600


def log_decision(path: str, record: dict[str, Any]) -> str | None:
    """Append one line. A log that cannot be written is never fatal (the decision itself is
    already made and enforced): the warning is returned for the caller to put where it belongs
    (the shim: the runtime's --log, never stderr, which is the container's stdio at create)."""
    # log_bounds, not log_record: that one loads decide/request.py for its env names, which the
    # createContainer hook (it logs no env) would import for nothing
    from gpuhook.runtime.log_bounds import bounded_record

    stamped = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record}
    # ensure_ascii: control characters, line separators and lone surrogates become \u escapes.
    line = fastjson.dumps(bounded_record(stamped), separators=(",", ":"), default=str) + "\n"
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                     | os.O_NONBLOCK | os.O_NOCTTY, LOG_MODE)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(22, "not a regular file")
            os.write(fd, line.encode())  # one write: lines from concurrent hooks do not interleave
        finally:
            os.close(fd)
    except OSError as e:
        return f"warning: cannot write decision log {escape(path, 512)}: {e.strerror}"
    return None


def plan_record(plan: Plan, env: Mapping[str, str]) -> dict[str, Any]:
    """What the log says about a plan (hook and shim alike)."""
    from gpuhook.decide.render import plan_json
    from gpuhook.runtime.log_record import loggable_env, loggable_ignored

    summary = plan_json(plan)
    return {"decision": "empty" if plan.empty else "apply", "source": plan.source,
            "device_ids": summary["device_ids"],
            "ignored": loggable_ignored(summary["ignored"]),
            "devices": summary["devices"], "imex_channels": summary["imex_channels"],
            "gated_families": summary["gated_families"], "notes": list(plan.notes),
            "nvidia_env": loggable_env(env)}
