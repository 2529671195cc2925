"""`gpuhook hook prestart`: OCI state on stdin -> Plan -> applied to the starting container.

A container that could not have asked for anything leaves after two small JSON reads: no
config, no click, no YAML, no NVML (see fastpath.py).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

MAX_STATE_BYTES = 1 << 20
MAX_SPEC_BYTES = 16 << 20


def prestart_main(args: list[str]) -> int:
    config_path = _config_arg(args)
    if config_path is False:
        print("gpuhook: usage: gpuhook hook prestart [--config FILE]", file=sys.stderr)
        return 2
    state_raw = sys.stdin.buffer.read(MAX_STATE_BYTES + 1)
    try:
        bundle = json.loads(state_raw)["bundle"]
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            spec_raw = f.read(MAX_SPEC_BYTES + 1)
        spec = json.loads(spec_raw)
    except (ValueError, LookupError, TypeError, OSError):
        # Anything odd goes to the full, validating path, which names the problem.
        return _full(config_path, state_raw, None)
    from gpuhook.fastpath import might_request

    if not might_request(spec):
        return 0
    return _full(config_path, state_raw, spec_raw)


def _config_arg(args: list[str]) -> str | bool | None:
    if not args:
        return None
    if len(args) == 2 and args[0] == "--config":
        return args[1]
    if len(args) == 1 and args[0].startswith("--config="):
        return args[0].split("=", 1)[1]
    return False


def _full(config_path: str | bool | None, state_raw: bytes, spec_raw: bytes | None) -> int:
    from gpuhook.config import Config, load_config
    from gpuhook.decision_log import log_decision
    from gpuhook.errors import GpuhookError

    assert config_path is not False
    record: dict[str, Any] = {"event": "prestart"}
    config: Config | None = None
    try:
        config = load_config(config_path if isinstance(config_path, str) else None)
        return _decide_and_apply(config, state_raw, spec_raw, record)
    except GpuhookError as e:
        record.update(decision="refused", error=str(e))
        print(f"gpuhook: {record.get('id', '?')}: {e}", file=sys.stderr)
        return e.exit_code
    finally:
        if config is not None and len(record) > 1:
            log_decision(config.log_file, record)


def _decide_and_apply(config: Any, state_raw: bytes, spec_raw: bytes | None,
                      record: dict[str, Any]) -> int:
    from gpuhook.errors import ApplyError
    from gpuhook.pipeline import plan_for_spec
    from gpuhook.render import plan_json
    from gpuhook.request import extract_request
    from gpuhook.spec import decode_json, parse_spec, parse_state, read_limited

    if len(state_raw) > MAX_STATE_BYTES:
        from gpuhook.errors import InputError

        raise InputError(f"hook state on stdin is larger than {MAX_STATE_BYTES} bytes")
    state = parse_state(state_raw)
    record.update(id=state.id, pid=state.pid, bundle=state.bundle)
    spec_path = os.path.join(state.bundle, "config.json")
    if spec_raw is None:
        spec_raw = read_limited(spec_path, MAX_SPEC_BYTES, "spec")
    if len(spec_raw) > MAX_SPEC_BYTES:
        from gpuhook.errors import InputError

        raise InputError(f"spec {spec_path}: larger than {MAX_SPEC_BYTES} bytes")
    spec = parse_spec(spec_raw, spec_path)
    record["nvidia_env"] = dict(extract_request(spec, config.volume_mount_root).nvidia_env)
    plan = plan_for_spec(spec, config)
    summary = plan_json(plan)
    record.update(decision="empty" if plan.empty else "apply", source=plan.source,
                  device_ids=summary["device_ids"], ignored=summary["ignored"],
                  devices=summary["devices"], notes=list(plan.notes))
    if plan.empty:
        return 0
    root = spec.root_path or "rootfs"
    rootfs = root if os.path.isabs(root) else os.path.join(state.bundle, root)
    from gpuhook.apply import apply_plan

    raw_spec = decode_json(spec_raw, spec_path)
    assert isinstance(raw_spec, dict)
    try:
        record["applied"] = apply_plan(plan, state.pid, rootfs, raw_spec)
    except ApplyError:
        record["decision"] = "apply-failed"
        raise
    record["decision"] = "applied"
    return 0
