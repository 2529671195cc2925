"""Properties over random specs and inventories: nothing is granted that was not asked for."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuhook.config import Config
from gpuhook.decide.facts import Capability, HostInfo, Majors
from gpuhook.decide.plan import Plan, build_plan, needed_capabilities
from gpuhook.decide.policy import decide
from gpuhook.decide.request import extract_request
from gpuhook.decide.resolve import resolve
from gpuhook.decide.spec import parse_spec
from gpuhook.errors import GpuhookError
from gpuhook.inventory import Gpu, Inventory, MigDevice
from tests.unit.specs import ROOT

MAJORS = Majors(frontend=195, uvm=510, caps=511)


@st.composite
def inventories(draw: st.DrawFn) -> Inventory:
    n = draw(st.integers(0, 6))
    minors = draw(st.permutations(list(range(16))))[:n]
    gpus = []
    for i in range(n):
        mig = draw(st.booleans())
        migs: tuple[MigDevice, ...] = ()
        if mig:
            gis = draw(st.lists(st.integers(1, 14), min_size=0, max_size=4, unique=True))
            migs = tuple(MigDevice(j, f"MIG-{i}-{gi}", gi, 0, "1g.5gb")
                         for j, gi in enumerate(gis))
        gpus.append(Gpu(i, minors[i], f"GPU-{i}", f"0000:{i:02x}:00.0", "A100", mig, migs))
    return Inventory("550.54.15", "12.4", tuple(gpus))


def id_pool(inv: Inventory) -> list[str]:
    ids = ["all", "none", "void", "7", "GPU-x", "MIG-x", "9:9"]
    for g in inv.gpus:
        ids += [str(g.index), g.uuid]
        ids += [f"{g.index}:{m.index}" for m in g.mig_devices] + [m.uuid for m in g.mig_devices]
    return ids


@st.composite
def cases(draw: st.DrawFn) -> tuple[Inventory, dict[str, Any], Config]:
    inv = draw(inventories())
    pool = id_pool(inv)
    env: list[str] = []
    if draw(st.booleans()):
        env.append("NVIDIA_VISIBLE_DEVICES=" + ",".join(draw(st.lists(st.sampled_from(pool),
                                                                        max_size=4))))
    if draw(st.booleans()):
        env.append("CUDA_VERSION=12.0")
    if draw(st.booleans()):
        env.append("NVIDIA_MIG_MONITOR_DEVICES=all")
    mount_ids = draw(st.lists(st.sampled_from([*pool, "mig-monitor", "mig-config"]),
                              max_size=4))
    privileged = draw(st.booleans())
    caps = ["CAP_KILL", "CAP_SYS_ADMIN"] if privileged else ["CAP_KILL"]
    spec = {"process": {"env": env, "capabilities": {"bounding": caps}},
            "mounts": [{"destination": f"{ROOT}/{i}", "source": "/dev/null"}
                       for i in mount_ids]}
    config = Config(
        accept_nvidia_visible_devices_envvar_when_unprivileged=draw(st.booleans()),
        accept_nvidia_visible_devices_as_volume_mounts=draw(st.booleans()),
        allow_full_gpu_on_mig_enabled=draw(st.booleans()),
        allow_mig_monitor_unprivileged=draw(st.booleans()),
    )
    return inv, spec, config


def make_plan(inv: Inventory, spec: dict[str, Any], config: Config) -> Plan:
    decision = decide(extract_request(parse_spec(json.dumps(spec).encode()), ROOT), config)
    devices = resolve(decision.device_ids, inv, config.allow_full_gpu_on_mig_enabled)
    caps = {name: Capability(name, 1000 + k, 0o444)
            for k, name in enumerate(needed_capabilities(decision, devices))}
    return build_plan(decision, devices, HostInfo(MAJORS, caps))


def implied(inv: Inventory, ids: list[str]) -> set[str]:
    """Every uuid the ids could name, with `all` meaning everything."""
    out: set[str] = set()
    for g in inv.gpus:
        for m in g.mig_devices:
            if {"all", m.uuid, f"{g.index}:{m.index}"} & set(ids):
                out.add(m.uuid)
        if {"all", g.uuid, str(g.index)} & set(ids):
            out.add(g.uuid)
    return out


def asked(spec: dict[str, Any], source: str) -> list[str]:
    if source == "volume-mounts":
        return [m["destination"].rsplit("/", 1)[1] for m in spec["mounts"]]
    env: dict[str, str] = dict(e.split("=", 1) for e in spec["process"]["env"])
    if "NVIDIA_VISIBLE_DEVICES" not in env and "CUDA_VERSION" in env:
        return ["all"]
    return env.get("NVIDIA_VISIBLE_DEVICES", "").split(",")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_plan_holds_only_requested_devices(case: tuple[Inventory, dict[str, Any], Config]
                                           ) -> None:
    inv, spec, config = case
    try:
        plan = make_plan(inv, spec, config)
    except GpuhookError:
        return  # refusing is always safe
    granted = {d.uuid for d in plan.devices}
    assert granted <= implied(inv, asked(spec, plan.source))
    minors = {g.minor for g in inv.gpus if g.uuid in granted or any(
        m.uuid in granted for m in g.mig_devices)}
    gpu_nodes = {n.minor for n in plan.device_nodes if n.major == 195 and n.minor < 254}
    assert gpu_nodes == minors
    assert {(r.major, r.minor) for r in plan.cgroup_rules} == {
        (n.major, n.minor) for n in plan.device_nodes}
    for g in inv.gpus:
        if g.mig_enabled and g.uuid in granted:
            assert config.allow_full_gpu_on_mig_enabled


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_unprivileged_env_never_grants_under_default_config(
        case: tuple[Inventory, dict[str, Any], Config]) -> None:
    inv, spec, _ = case
    spec["process"]["capabilities"]["bounding"] = ["CAP_KILL"]
    spec["mounts"] = [m for m in spec["mounts"]
                      if m["destination"].rsplit("/", 1)[1] not in ("mig-monitor", "mig-config")]
    with_env = spec
    without_env = json.loads(json.dumps(spec))
    # Only the device-selecting env goes: CUDA_VERSION (a legacy image) also chooses driver
    # capabilities, as NVIDIA_DRIVER_CAPABILITIES would (all of them, so `display` and its
    # modeset node), which the env may do for a granted container (toolkit getDriverCapabilities).
    without_env["process"]["env"] = [e for e in without_env["process"]["env"]
                                     if e.startswith("CUDA_VERSION=")]
    try:
        a = make_plan(inv, with_env, Config())
    except GpuhookError:
        return
    b = make_plan(inv, without_env, Config())
    assert (a.devices, a.device_nodes, a.cgroup_rules) == (b.devices, b.device_nodes,
                                                           b.cgroup_rules)
    assert not a.mig_monitor and not a.mig_config
