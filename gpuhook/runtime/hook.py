"""`gpuhook hook prestart`: OCI state on stdin -> Plan -> applied to the starting container.

A container that could not have asked for anything leaves after two small JSON reads: no
config, no click, no YAML, no NVML (see fastpath.py).
"""

import os
import sys

from gpuhook.runtime.fastpath import MAX_SPEC_BYTES, MAX_STATE_BYTES, loads, might_request

USAGE = ("usage: gpuhook hook prestart [--config FILE]\n"
         "An OCI prestart hook: the runtime writes the container's state JSON to its stdin.\n"
         "To see what a container would get, run: gpuhook dry-run BUNDLE\n")


def prestart_main(args: list[str]) -> int:
    config_path = _config_arg(args)
    if isinstance(config_path, bool) or sys.stdin is None or sys.stdin.isatty():
        # A usage error, or a run by hand at a terminal: nothing to read, nothing logged.
        from gpuhook.runtime.stderr import write_stderr

        write_stderr("gpuhook: " + USAGE)
        return 2
    state_raw = sys.stdin.buffer.read(MAX_STATE_BYTES + 1)
    try:
        state = loads(state_raw)
        bundle = state["bundle"] if isinstance(state, dict) else None
        with open(os.path.join(bundle, "config.json"), "rb") as f:  # type: ignore[arg-type]
            spec_raw = f.read(MAX_SPEC_BYTES + 1)
        spec = loads(spec_raw)
    except (ValueError, LookupError, TypeError, OSError):
        # Anything odd goes to the full, validating path, which names the problem.
        return _full(config_path, state_raw, None)
    from gpuhook.runtime.early import early_config

    if not might_request(spec, early_config(config_path).roots):
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
