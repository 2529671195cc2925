"""gpuhook's error kinds.

Each error is raised where the fact is known, with a message that says what was asked, what exists
and what to do; the CLI reports it once and exits with the error's code.
"""


class GpuhookError(Exception):
    """The request cannot be satisfied (exit 1)."""

    exit_code = 1


class InputError(GpuhookError):
    """Usage error, or unreadable / malformed input: spec, state, config, inventory (exit 2)."""

    exit_code = 2


class PolicyError(GpuhookError):
    """The privilege policy refuses the container (config `unprivileged-envvar-action = "fail"`)."""


class ResolveError(GpuhookError):
    """A requested id names no device, or a requirement fails."""


class HostError(GpuhookError):
    """A host file under `host-root` is missing or says something unexpected."""


class NvmlError(GpuhookError):
    """NVML failed; the message says what to check on the node."""


class ApplyError(GpuhookError):
    """Applying a plan (nodes, cgroup rules) failed; nothing widened is left behind."""
