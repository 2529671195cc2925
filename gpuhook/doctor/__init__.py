"""`gpuhook doctor`: is this node ready for GPU containers? Each check reads one thing and says
ok / warn / fail, with the fix. Checks only read: nothing here changes the node.

Every path is injectable (`Where`, and the config's `host-root`), so each check is tested
against a fake host tree per failure (tests/unit/doctor)."""

from __future__ import annotations

from dataclasses import dataclass, field

OK, WARN, FAIL = "ok", "warn", "fail"
RANK = {OK: 0, WARN: 1, FAIL: 2}
GROUPS = ("config", "node", "engines")  # what `doctor --only` selects (doctor/run.py)


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Where:
    """Where the engines keep their files (defaults: the engines' own, as `install` uses)."""

    containerd_config: str = "/etc/containerd/config.toml"
    containerd_drop_in_dir: str = "/etc/containerd/conf.d"
    crio_drop_in_dir: str = "/etc/crio/crio.conf.d"
    docker_config: str = "/etc/docker/daemon.json"
    hooks_dirs: tuple[str, ...] = field(default=("/usr/share/containers/oci/hooks.d",
                                                 "/etc/containers/oci/hooks.d"))
    runtime_name: str = "nvidia"


def worst(checks: list[Check]) -> str:
    return max((c.status for c in checks), key=RANK.__getitem__, default=OK)
