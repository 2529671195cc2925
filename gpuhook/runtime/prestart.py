"""The prestart hook's full path, for containers that may have asked for something: validate
state and spec, compute the Plan, apply it, and log the decision (runtime/hook.py decides when)."""

from __future__ import annotations

import os
import sys
from typing import Any

from gpuhook.config import Config, load_config
from gpuhook.decide.spec import MAX_SPEC_BYTES, parse_spec, parse_state
from gpuhook.errors import ApplyError, GpuhookError
from gpuhook.limits import MAX_MESSAGE_CHARS
from gpuhook.runtime.bundle import read_limited
from gpuhook.runtime.decision_log import log_decision, plan_record
from gpuhook.runtime.pipeline import plan_for_spec
from gpuhook.text import escape


def run(config_path: str | None, state_raw: bytes, spec_raw: bytes | None) -> int:
    """The full hook: validate state and spec, compute the Plan, apply it, log the decision."""
    record: dict[str, Any] = {"event": "prestart"}
    config: Config | None = None
    try:
        config = load_config(config_path)
        return _decide_and_apply(config, state_raw, spec_raw, record)
    except GpuhookError as e:
        # "apply-failed" (set where the apply failed) says more than "refused": keep it.
        if record.get("decision") != "apply-failed":
            record["decision"] = "refused"
        record["error"] = str(e)
        # Container text (ids, env values, paths) is in messages: one line, printable, bounded.
        print("gpuhook: " + escape(f"{record.get('id', '?')}: {e}", MAX_MESSAGE_CHARS),
              file=sys.stderr)
        return e.exit_code
    finally:
        if config is not None and len(record) > 1:
            log_decision(config.log_file, record)


def _decide_and_apply(config: Config, state_raw: bytes, spec_raw: bytes | None,
                      record: dict[str, Any]) -> int:
    state = parse_state(state_raw)
    record.update(id=state.id, pid=state.pid, bundle=state.bundle)
    spec_path = os.path.join(state.bundle, "config.json")
    if spec_raw is None:
        spec_raw = read_limited(spec_path, MAX_SPEC_BYTES, "spec")
    spec = parse_spec(spec_raw, spec_path)
    plan = plan_for_spec(spec, config)
    record.update(plan_record(plan, spec.env))
    if plan.empty:
        return 0
    root = spec.root_path or "rootfs"
    rootfs = root if os.path.isabs(root) else os.path.join(state.bundle, root)
    from gpuhook.enforce import apply_plan

    try:
        record["applied"] = apply_plan(plan, state.pid, rootfs)
    except ApplyError:
        record["decision"] = "apply-failed"
        raise
    record["decision"] = "applied"
    return 0
