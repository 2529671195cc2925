"""A config that does not load must stop only the containers gpuhook would act on.

The config is read leniently (every valid key, the defaults for the rest) and the request
decided with it. If anything would be granted (a device, the control nodes, a MIG capability),
the container is refused with the config's problem: gpuhook cannot decide it. Otherwise the
request is one that gpuhook ignores anyway, so the container starts untouched, and the problem
is a warning in the decision log and the runtime's log. Nothing is ever granted from a broken
config."""

from __future__ import annotations

from gpuhook.config import Config
from gpuhook.decide.policy import Decision, decide
from gpuhook.decide.request import extract_request
from gpuhook.decide.spec import SpecView
from gpuhook.errors import InputError


def acts(decision: Decision) -> bool:
    """Whether gpuhook would change anything for this decision."""
    return bool(decision.device_ids or decision.control_nodes or decision.mig_monitor
                or decision.mig_config)


def judge(view: SpecView, config: Config, problems: list[str],
          roots: tuple[str, ...] = ()) -> Decision:
    """The decision under the lenient config when it grants nothing; else InputError naming
    the config's problem and what the container asked for. `roots`: the volume-mount roots
    the fast path looked under (early.py reads the configured one even from a file TOML cannot
    parse): a request under any of them is one a working config could act on."""
    decision = decide(extract_request(view, config.volume_mount_root), config)
    for root in roots:
        if root != config.volume_mount_root and not acts(decision):
            decision = decide(extract_request(view, root),
                              config._replace(volume_mount_root=root))
    if acts(decision):
        asked = ", ".join(decision.device_ids) or ", ".join(
            n for n, on in (("mig-monitor", decision.mig_monitor),
                            ("mig-config", decision.mig_config)) if on) or "no device"
        raise InputError(f"{problems[0]}; refused: the container asks for GPUs ({asked}, "
                         f"through {decision.source}) and a broken config cannot decide them; "
                         "fix the config (`gpuhook doctor` checks it)")
    return decision


def warning(problems: list[str]) -> str:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return (f"warning: {problems[0]}{more}; the container asks for nothing gpuhook would "
            "grant, so it starts untouched")
