"""Build OCI specs and plans for table tests, against the shipped fake node."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from gpuhook.config import Config
from gpuhook.decide.plan import Plan
from gpuhook.decide.spec import parse_spec
from gpuhook.runtime.pipeline import plan_for_spec
from tests.conftest import HOSTS, INVENTORIES

ROOT = "/var/run/nvidia-container-devices"
BASE_CAPS = ["CAP_CHOWN", "CAP_KILL", "CAP_SETUID", "CAP_SETGID"]

MIG8 = str(INVENTORIES / "8xa100-mig.yaml")
MIG8_HOST = str(HOSTS / "8xa100-mig")
ONE = str(INVENTORIES / "1gpu.yaml")
ONE_HOST = str(HOSTS / "1gpu")


def spec(env: Iterable[str] = (), ids: Iterable[str] = (), privileged: bool = False,
         mounts: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    caps = [*BASE_CAPS, "CAP_SYS_ADMIN"] if privileged else list(BASE_CAPS)
    all_mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"}]
    all_mounts += [{"destination": f"{ROOT}/{i}", "type": "bind", "source": "/dev/null",
                    "options": ["rbind", "ro"]} for i in ids]
    all_mounts += list(mounts)
    return {
        "ociVersion": "1.0.2",
        "process": {"args": ["sh"], "env": ["PATH=/bin", *env], "cwd": "/",
                    "capabilities": {"bounding": caps, "effective": caps}},
        "root": {"path": "rootfs"},
        "mounts": all_mounts,
    }


def config(inventory: str = MIG8, host_root: str = MIG8_HOST, **kw: Any) -> Config:
    # The shipped fake hosts have no driver user-space (tests/fakedriver builds one).
    kw.setdefault("driver_files", False)
    return Config(inventory=inventory, host_root=host_root, log_file="/dev/null", **kw)


def plan(s: dict[str, Any], cfg: Config | None = None) -> Plan:
    view = parse_spec(json.dumps(s).encode())
    return plan_for_spec(view, cfg or config())


def nodes(p: Plan) -> list[str]:
    return [n.path for n in p.device_nodes]


def gpu_nodes(p: Plan) -> list[str]:
    return sorted(n for n in nodes(p) if n[len("/dev/nvidia"):].isdigit())
