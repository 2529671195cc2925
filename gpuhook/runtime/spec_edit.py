"""Plan -> edited OCI spec (`config.json`), as data. Pure: no I/O.

The spec is edited as the JSON dicts it was parsed into, never through a model, so every field
gpuhook does not know survives. Every edit is idempotent: applying the same Plan twice gives the
same spec as applying it once.

Spec mode (the runtime shim's default) writes what runc itself then enforces:
- `linux.devices`: runc creates each node (mknod, or a bind mount in a user namespace) with the
  given type, major, minor, fileMode, uid and gid;
- `linux.resources.devices`: allow rules that runc puts into its own cgroup config (v1
  devices.allow, or the v2 eBPF device program). runc does not derive cgroup rules from
  `linux.devices`, so both are written. Because the rules are part of runc's cgroup config they
  survive `systemctl daemon-reload` and `runc update`, unlike rules a hook adds behind runc's back.
The rules are appended after every existing rule: runc evaluates them in order and the last match
wins, so a deny-all written earlier by the engine stays in force for everything else.

- `mounts`: the Plan's driver files as read-only bind mounts (options: plan.mount_options),
  libraries in the rootfs's library dir (enforce/libdir.py, decided by the shim from the rootfs
  before runc runs), and a `createContainer` hook `gpuhook hook create-container` for the
  symlinks, the ld cache and the /proc/driver/nvidia view. The hook entry always carries an
  explicit `env`: without one runc gives a hook the container's environment (CVE-2025-23266).

Hook mode adds a prestart hook running `gpuhook hook prestart` instead.
"""

from __future__ import annotations

from gpuhook.decide.plan import Plan, mount_options
from gpuhook.enforce.libdir import LibDir, destination
from gpuhook.errors import InputError
from gpuhook.record import TYPE_CHECKING, dataclass

if TYPE_CHECKING:
    from typing import Any

HOOK_ARGS = ("gpuhook", "hook", "prestart")
HOOK_ENV = ("PATH=/usr/sbin:/usr/bin:/sbin:/bin",)
CREATE_CONTAINER_ARGS = ("gpuhook", "hook", "create-container")


@dataclass(frozen=True)
class DriverEdit:
    """What spec mode needs beyond the Plan to write its driver files."""

    libdir: LibDir  # from the rootfs (enforce.libdir.library_dir)
    hook_path: str  # the gpuhook executable
    hook_args: tuple[str, ...]  # gpuhook hook create-container ... (runtime.create_container)

JsonObj = dict[str, "Any"]  # Any only to mypy: typing is not imported at run time


def _json_copy(spec: JsonObj) -> JsonObj:
    """A deep copy of parsed JSON (dicts, lists and scalars), without `copy`'s import cost."""
    return {k: _json_value(v) for k, v in spec.items()}


def _json_value(value: object) -> object:
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


class SpecShapeError(InputError):
    """A field gpuhook must edit has a shape it cannot edit without losing data."""


def apply_plan(spec: JsonObj, plan: Plan, driver: DriverEdit | None = None) -> JsonObj:
    """Spec mode: the plan's device nodes, cgroup allow rules and env, written into a copy;
    with driver files also their mounts and the createContainer hook (`driver` required)."""
    out = _json_copy(spec)
    if plan.empty and not plan.env and not plan.mounts:
        return out
    linux = _table(out, "linux", "linux")
    devices = _list(linux, "devices", "linux.devices")
    # Where each path first appears, built once: linear in the spec's devices, not their product
    # with the plan's nodes.
    index: dict[object, int] = {}
    for i, d in enumerate(devices):
        if isinstance(d, dict) and isinstance(d.get("path"), str):
            index.setdefault(d["path"], i)
    for node in plan.device_nodes:
        entry = {"path": node.path, "type": node.type, "major": node.major,
                 "minor": node.minor, "fileMode": node.file_mode, "uid": node.uid,
                 "gid": node.gid}
        _put_device(devices, entry, index)
    resources = _table(linux, "resources", "linux.resources")
    rules = _list(resources, "devices", "linux.resources.devices")
    wanted = [{"allow": True, "type": r.type, "major": r.major, "minor": r.minor,
               "access": r.access} for r in plan.cgroup_rules]
    keys = {_rule_key(w) for w in wanted}
    # Drop our own rules wherever they are, then append them last (last match wins).
    rules[:] = [r for r in rules if _rule_key(r) not in keys] + wanted
    if plan.env:
        process = _table(out, "process", "process")
        env = _list(process, "env", "process.env")
        for key, value in plan.env:
            set_env(env, key, value)
    for m in plan.mounts:
        mounts = _list(out, "mounts", "mounts")
        entry = {"destination": m.destination, "type": "bind", "source": m.source,
                 "options": list(m.options)}
        if entry not in mounts:
            mounts.append(entry)
    if plan.driver_files or plan.symlinks or plan.update_ldcache or plan.proc_driver_gpus:
        if driver is None:
            raise ValueError("apply_plan: the plan has driver files but no DriverEdit was given")
        _add_driver(out, plan, driver)
    return out


def _add_driver(spec: JsonObj, plan: Plan, driver: DriverEdit) -> None:
    mounts = _list(spec, "mounts", "mounts")
    for f in plan.driver_files:
        entry = {"destination": destination(f, driver.libdir), "type": "bind",
                 "source": f.host_path, "options": list(mount_options(f.kind))}
        if entry not in mounts:
            mounts.append(entry)
    hooks = _table(spec, "hooks", "hooks")
    create = _list(hooks, "createContainer", "hooks.createContainer")
    wanted = {"path": driver.hook_path, "args": list(driver.hook_args), "env": list(HOOK_ENV)}
    # One entry of ours: an earlier one (same executable, same command) is replaced in place.
    for i, h in enumerate(create):
        if (isinstance(h, dict) and h.get("path") == driver.hook_path
                and isinstance(h.get("args"), list)
                and h["args"][:3] == list(CREATE_CONTAINER_ARGS)):
            create[i] = wanted
            return
    create.append(wanted)


def apply_hook(spec: JsonObj, plan: Plan, hook_path: str,
               args: tuple[str, ...] = HOOK_ARGS) -> JsonObj:
    """Hook mode: the plan's env (a prestart hook cannot set env) and the prestart hook."""
    out = _json_copy(spec)
    if plan.env:
        env = _list(_table(out, "process", "process"), "env", "process.env")
        for key, value in plan.env:
            set_env(env, key, value)
    return add_prestart_hook(out, hook_path, args)


def add_prestart_hook(spec: JsonObj, hook_path: str, args: tuple[str, ...] = HOOK_ARGS,
                      env: tuple[str, ...] = HOOK_ENV) -> JsonObj:
    """A prestart hook running gpuhook, added once: a hook whose path is `hook_path` and whose
    args start with `gpuhook hook prestart` counts as already there."""
    out = _json_copy(spec)
    hooks = _table(out, "hooks", "hooks")
    prestart = _list(hooks, "prestart", "hooks.prestart")
    for h in prestart:
        if (isinstance(h, dict) and h.get("path") == hook_path
                and isinstance(h.get("args"), list) and h["args"][:3] == list(HOOK_ARGS)):
            return out
    prestart.append({"path": hook_path, "args": list(args), "env": list(env)})
    return out


def set_env(env: list[Any], key: str, value: str) -> None:
    """KEY=value replaces the first KEY= entry in place and drops later ones; else appended."""
    prefix = key + "="
    item = prefix + value
    hits = [i for i, e in enumerate(env) if isinstance(e, str) and e.startswith(prefix)]
    if not hits:
        env.append(item)
        return
    env[hits[0]] = item
    for i in reversed(hits[1:]):
        del env[i]


def _put_device(devices: list[Any], entry: JsonObj, index: dict[object, int]) -> None:
    i = index.get(entry["path"])
    if i is not None:
        # The plan decides what this path is; keep any extra fields the engine wrote.
        devices[i] = {**devices[i], **entry}
        return
    index[entry["path"]] = len(devices)
    devices.append(entry)


def _rule_key(rule: object) -> tuple[object, ...] | None:
    if not isinstance(rule, dict):
        return None
    return (rule.get("allow"), rule.get("type"), rule.get("major"), rule.get("minor"),
            rule.get("access"))


def _table(parent: JsonObj, key: str, what: str) -> JsonObj:
    value = parent.get(key)
    if value is None:
        value = parent[key] = {}
    if not isinstance(value, dict):
        raise SpecShapeError(f"{what} must be an object, got {type(value).__name__}")
    return value


def _list(parent: JsonObj, key: str, what: str) -> list[Any]:
    value = parent.get(key)
    if value is None:
        value = parent[key] = []
    if not isinstance(value, list):
        raise SpecShapeError(f"{what} must be a list, got {type(value).__name__}")
    return value
