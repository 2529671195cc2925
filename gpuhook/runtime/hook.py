"""`gpuhook hook prestart`: OCI state on stdin -> Plan -> applied to the starting container.

A container that could not have asked for anything leaves after two small JSON reads: no
config, no click, no YAML, no NVML (see fastpath.py).
"""

import os
import sys

from gpuhook.files import read_regular
from gpuhook.runtime.fastpath import MAX_SPEC_BYTES, MAX_STATE_BYTES, loads, might_request

USAGE = ("usage: gpuhook hook prestart [--config FILE] [--log]\n"
         "An OCI prestart hook: the runtime writes the container's state JSON to its stdin.\n"
         "To see what a container would get, run: gpuhook dry-run BUNDLE\n")


def prestart_main(args: list[str]) -> int:
    parsed = _parse_args(args)
    if parsed is None or sys.stdin is None or sys.stdin.isatty():
        # A usage error, or a run by hand at a terminal: nothing to read, nothing logged.
        from gpuhook.runtime.stderr import write_stderr

        write_stderr("gpuhook: " + USAGE)
        return 2
    config_path, log = parsed
    state_raw = sys.stdin.buffer.read(MAX_STATE_BYTES + 1)
    try:
        state = loads(state_raw)
        bundle = state["bundle"] if isinstance(state, dict) else None
        # A regular file only: a FIFO there would block this open (or read) forever.
        spec_raw = read_regular(os.path.join(bundle, "config.json"), MAX_SPEC_BYTES)  # type: ignore[arg-type]
        spec = loads(spec_raw)
    except (ValueError, LookupError, TypeError, OSError):
        # Anything odd goes to the full, validating path, which names the problem.
        return _full(config_path, state_raw, None, log)
    from gpuhook.runtime.early import early_config

    if not might_request(spec, early_config(config_path).roots):
        return 0
    return _full(config_path, state_raw, spec_raw, log)


def _parse_args(args: list[str]) -> tuple[str | None, bool] | None:
    """(--config value or None, --log given); None on a usage error."""
    config: str | None = None
    log = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" and i + 1 < len(args):
            config, i = args[i + 1], i + 2
        elif arg.startswith("--config="):
            config, i = arg.split("=", 1)[1], i + 1
        elif arg == "--log":
            log, i = True, i + 1
        else:
            return None
    return config, log


def _full(config_path: str | None, state_raw: bytes, spec_raw: bytes | None,
          log: bool) -> int:
    # No site here (gpuhook.entry): the launchers put gpuhook's dependencies on sys.path.
    from gpuhook.runtime.prestart import run

    # A runtime gives a hook pipes for stdout and stderr; a terminal there is a run by hand,
    # which must not add to the node's decision log unless asked (--log).
    by_hand = any(s is not None and s.isatty() for s in (sys.stdout, sys.stderr))
    return run(config_path, state_raw, spec_raw, write_log=log or not by_hand)
