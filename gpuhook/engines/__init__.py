"""Registration of gpuhook with each container engine, as data: `plan_install` /
`plan_uninstall` compute the file Changes from the files as they are; `--dry-run` prints their
unified diff, otherwise `write` applies them. Nothing here restarts a daemon."""

from __future__ import annotations

from collections.abc import Callable

from gpuhook.engines import containerd, crio, docker, podman
from gpuhook.engines.common import (
    RESTART,
    RUNTIME_EXE,
    Change,
    InstallError,
    Options,
    diff,
    find_executable,
    write,
)

__all__ = ["ENGINES", "RUNTIME_EXE", "Change", "InstallError", "Options", "diff",
           "find_executable", "plan_install", "plan_uninstall", "write"]

Plan = Callable[[Options], list[Change]]
# engine -> (install, uninstall)
ENGINES: dict[str, tuple[Plan, Plan]] = {
    "containerd": (containerd.install, containerd.uninstall),
    "crio": (crio.install, crio.uninstall),
    "docker": (docker.install, docker.uninstall),
    "podman": (podman.install, podman.uninstall),
}


def _engine(runtime: str) -> tuple[Plan, Plan]:
    try:
        return ENGINES[runtime]
    except KeyError:
        raise InstallError(f"unknown runtime {runtime!r}") from None


def plan_install(opts: Options) -> tuple[list[Change], str]:
    """(changes, the command that restarts the daemon or "")."""
    return _engine(opts.runtime)[0](opts), RESTART[opts.runtime]


def plan_uninstall(opts: Options) -> tuple[list[Change], str]:
    return _engine(opts.runtime)[1](opts), RESTART[opts.runtime]
