"""`gpuhook hook prestart`: OCI state on stdin -> Plan -> applied to the starting container.

A container that could not have asked for anything leaves after two small JSON reads: no
config, no click, no YAML, no NVML (see fastpath.py).
"""

import os
import sys

from gpuhook.limits import read_regular
from gpuhook.runtime.fastpath import MAX_SPEC_BYTES, MAX_STATE_BYTES, loads, might_request


def prestart_main(args: list[str]) -> int:
    config_path = _config_arg(args)
    if isinstance(config_path, bool):
        print("gpuhook: usage: gpuhook hook prestart [--config FILE]", file=sys.stderr)
        return 2
    state_raw = sys.stdin.buffer.read(MAX_STATE_BYTES + 1)
    try:
        state = loads(state_raw)
        bundle = state["bundle"] if isinstance(state, dict) else None
        # A regular file only: a FIFO there would block this open (or read) forever.
        spec_raw = read_regular(os.path.join(bundle, "config.json"), MAX_SPEC_BYTES)  # type: ignore[arg-type]
        spec = loads(spec_raw)
    except (ValueError, LookupError, TypeError, OSError):
        # Anything odd goes to the full, validating path, which names the problem.
        return _full(config_path, state_raw, None)
    if not might_request(spec):
        return 0
    return _full(config_path, state_raw, spec_raw)


def _config_arg(args: list[str]) -> str | bool | None:
    """The --config value, None when absent, False on a usage error."""
    if not args:
        return None
    if len(args) == 2 and args[0] == "--config":
        return args[1]
    if len(args) == 1 and args[0].startswith("--config="):
        return args[0].split("=", 1)[1]
    return False


def _full(config_path: str | None, state_raw: bytes, spec_raw: bytes | None) -> int:
    from gpuhook.runtime.prestart import run

    return run(config_path, state_raw, spec_raw)
