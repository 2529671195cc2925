"""The prestart hook's full path, for containers that may have asked for something: validate
state and spec, compute the Plan, apply it, and log the decision (runtime/hook.py decides when)."""

from __future__ import annotations

import os

from gpuhook.config import Config, load_config_lenient
from gpuhook.decide.spec import MAX_SPEC_BYTES, parse_spec, parse_state
from gpuhook.errors import ApplyError, GpuhookError
from gpuhook.limits import MAX_MESSAGE_CHARS
from gpuhook.record import TYPE_CHECKING
from gpuhook.runtime import broken_config
from gpuhook.runtime.bundle import read_limited
from gpuhook.runtime.decision_log import log_decision, plan_record
from gpuhook.runtime.pipeline import plan_for_spec
from gpuhook.runtime.pod import pod_identity
from gpuhook.runtime.stderr import write_stderr
from gpuhook.text import escape

if TYPE_CHECKING:
    from typing import Any


def run(config_path: str | None, state_raw: bytes, spec_raw: bytes | None,
        write_log: bool = True) -> int:
    """The full hook: validate state and spec, compute the Plan, apply it, log the decision.
    A config that does not load refuses only what gpuhook would act on (broken_config.py)."""
    record: dict[str, Any] = {"event": "prestart"}
    config, problems = load_config_lenient(config_path)
    try:
        return _decide_and_apply(config, problems, state_raw, spec_raw, record)
    except GpuhookError as e:
        # "apply-failed" (set where the apply failed) says more than "refused": keep it.
        if record.get("decision") != "apply-failed":
            record["decision"] = "refused"
        record["error"] = str(e)
        # runc puts the hook's stderr into its own error (and --log): the line reaches kubelet.
        # Container text (ids, env values, paths) is in messages: one line, printable, bounded.
        write_stderr("gpuhook: " + escape(f"{record.get('id', '?')}: {e}", MAX_MESSAGE_CHARS))
        return e.exit_code
    finally:
        if len(record) > 1 and not write_log:
            from gpuhook import fastjson

            write_stderr(f"gpuhook: run by hand (a terminal): not written to {config.log_file} "
                         f"(add --log to write it): {fastjson.dumps(record, default=str)}")
        elif len(record) > 1:
            failed = log_decision(config.log_file, record)
            if failed:
                write_stderr(f"gpuhook: {failed}")


def _decide_and_apply(config: Config, problems: list[str], state_raw: bytes,
                      spec_raw: bytes | None, record: dict[str, Any]) -> int:
    state = parse_state(state_raw)
    record.update(id=state.id, pid=state.pid, bundle=state.bundle)
    record.update(pod_identity(dict(state.annotations)))
    spec_path = os.path.join(state.bundle, "config.json")
    if spec_raw is None:
        spec_raw = read_limited(spec_path, MAX_SPEC_BYTES, "spec")
    spec = parse_spec(spec_raw, spec_path)
    if problems:
        from gpuhook.runtime.early import early_config

        roots = early_config(config.source).roots  # problems come from a file: it is named
        decision = broken_config.judge(spec, config, problems, roots)
        record.update(decision="untouched-broken-config", config_errors=problems[:8],
                      ignored=[vars(i) for i in decision.ignored])
        write_stderr("gpuhook: " + escape(f"{state.id}: {broken_config.warning(problems)}",
                                          MAX_MESSAGE_CHARS))
        return 0
    plan = plan_for_spec(spec, config)
    record.update(plan_record(plan, spec.env))
    if plan.empty:
        return 0
    root = spec.root_path or "rootfs"
    rootfs = root if os.path.isabs(root) else os.path.join(state.bundle, root)
    from gpuhook.enforce import apply_plan

    try:
        record["applied"] = apply_plan(plan, state.pid, rootfs, host_root=config.host_root,
                                       ldconfig=config.ldconfig)
    except ApplyError:
        record["decision"] = "apply-failed"
        raise
    record["decision"] = "applied"
    return 0
