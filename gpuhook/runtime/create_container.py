"""`gpuhook hook create-container`: spec mode's createContainer hook (symlinks, ld cache, the
/proc/driver/nvidia view).

Where runc runs it (runc 1.1.5 libcontainer/rootfs_linux.go prepareRootfs, checked against the
tag): in `runc init`, i.e. inside the container's mount (and pid, net, ipc, uts, cgroup)
namespaces and already in its cgroup, after every mount of config.json (the driver files the
shim listed included) and the /dev setup, and BEFORE pivot_root: the rootfs is still at its
path (runc bind-mounts it onto itself) and the host's files are still visible at their paths,
so the hook's own binary, its config and the host's ldconfig open normally. The hook gets the
state on stdin (its `pid` is runc init's, 1 in a new pid namespace) and exactly the `env` of its
hook entry (Go's exec.Cmd with a non-nil Env; with none it would inherit runc init's
environment: CVE-2025-23266, so the shim always writes one).

The Plan's driver part comes in the hook's arguments (`--driver JSON`, written by the shim from
the same Plan as the mounts: `hook_args`), so this hook neither resolves devices again nor reads
the inventory; only `host-root` and `ldconfig` come from the config.
"""

from __future__ import annotations

import os
import sys

from gpuhook import fastjson
from gpuhook.record import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

    from gpuhook.decide.plan import Plan
    from gpuhook.enforce.driver import DriverWork

MAX_DRIVER_ARG = 256 << 10
MAX_STATE = 64 << 10
USAGE = ("usage: gpuhook hook create-container [--config FILE] --driver JSON  (OCI state on "
         "stdin; written by gpuhook-runtime into config.json as a createContainer hook)")


def driver_arg(plan: Plan, library_dir: tuple[str, str] | None = None) -> str:
    """The `--driver` value for `plan` (the shim writes it; compact, stable key order).
    `library_dir` (64-bit, 32-bit): fixed dirs instead of the rootfs's, for a CDI spec, whose
    mounts are written before any rootfs exists."""
    kinds = sorted({f.kind for f in plan.driver_files if f.kind in ("library", "library32")})
    data: dict[str, Any] = {"symlinks": [[s.kind, s.path, s.target] for s in plan.symlinks],
                            "library_kinds": kinds, "update_ldcache": bool(plan.update_ldcache),
                            "proc_driver_gpus": list(plan.proc_driver_gpus)}
    if library_dir is not None:
        data["library_dir"] = list(library_dir)
    return fastjson.dumps(data, separators=(",", ":"), sort_keys=True)


def hook_args(plan: Plan, config_path: str | None,
              library_dir: tuple[str, str] | None = None) -> tuple[str, ...]:
    """argv of the createContainer hook entry for `plan` (argv[0] included)."""
    args: tuple[str, ...] = ("gpuhook", "hook", "create-container")
    if config_path:
        args += ("--config", config_path)
    return (*args, "--driver", driver_arg(plan, library_dir))


def parse_library_dir(text: str) -> tuple[str, str] | None:
    """The fixed library dirs a CDI spec's hook names in `--driver`, if any (checked as paths
    when the hook uses them)."""
    try:
        data = _decode(text)
    except ValueError:
        return None  # parse_driver_arg names the problem
    return _library_dir(data)


def parse_driver_arg(text: str) -> DriverWork:
    return parse_driver(text)[0]


def parse_driver(text: str) -> tuple[DriverWork, tuple[str, str] | None]:
    """`--driver`, bounded, then parsed once: the work, and the fixed library dirs of a CDI
    spec's hook (None: the rootfs's own). InputError names what is wrong."""
    from gpuhook.enforce.driver import DriverWork
    from gpuhook.errors import InputError

    if len(text) > MAX_DRIVER_ARG:
        raise InputError(f"--driver is {len(text)} bytes, more than {MAX_DRIVER_ARG}")
    try:
        data = _decode(text)
    except ValueError:
        raise InputError("--driver is not the JSON gpuhook-runtime writes: not a JSON object"
                         ) from None
    try:
        links = tuple((str(k), str(p), str(t)) for k, p, t in data["symlinks"])
        kinds = tuple(str(k) for k in data["library_kinds"])
        ldcache = data["update_ldcache"]
        gpus = tuple(str(b) for b in data["proc_driver_gpus"])
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"--driver is not the JSON gpuhook-runtime writes: {e}") from None
    if not isinstance(ldcache, bool) or any(k not in ("library", "library32") for k in kinds):
        raise InputError("--driver: update_ldcache must be a boolean and library_kinds "
                         "'library'/'library32'")
    return DriverWork((), links, kinds, ldcache, gpus), _library_dir(data)


def _decode(text: str) -> dict[str, Any]:
    """The `--driver` object; ValueError when it is not one."""
    data = fastjson.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _library_dir(data: dict[str, Any]) -> tuple[str, str] | None:
    from gpuhook.errors import InputError

    value = data.get("library_dir")
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, str) and 0 < len(v) < 4096 for v in value)):
        raise InputError("--driver: library_dir must be [64-bit dir, 32-bit dir]")
    return value[0], value[1]


def main(args: list[str]) -> int:
    config_path: str | None = None
    driver: str | None = None
    rest = list(args)
    while rest:
        flag = rest.pop(0)
        if flag in ("--config", "--driver") and rest:
            if flag == "--config":
                config_path = rest.pop(0)
            else:
                driver = rest.pop(0)
        else:
            print(f"gpuhook: {USAGE}", file=sys.stderr)
            return 2
    if driver is None:
        print(f"gpuhook: {USAGE}", file=sys.stderr)
        return 2
    return run(config_path, driver, sys.stdin.buffer.read(MAX_STATE + 1))


def run(config_path: str | None, driver: str, state_raw: bytes) -> int:
    from gpuhook.config import Config, load_config
    from gpuhook.errors import GpuhookError
    from gpuhook.runtime.decision_log import log_decision

    record: dict[str, Any] = {"event": "create-container"}
    config: Config | None = None
    try:
        config = load_config(config_path)
        work, fixed = parse_driver(driver)
        cid, bundle, rootfs = read_bundle(state_raw)
        record.update(id=cid, bundle=bundle)
        from gpuhook.enforce.driver import apply_in_current_ns
        from gpuhook.enforce.libdir import fixed_library_dir, library_dir

        record["applied"] = apply_in_current_ns(
            work, rootfs, host_root=config.host_root, ldconfig_path=config.ldconfig,
            libdirs=library_dir if fixed is None else fixed_library_dir(*fixed))
        record["decision"] = "applied"
        return 0
    except GpuhookError as e:
        record.update(decision="refused", error=str(e))
        print(f"gpuhook: {record.get('id', '?')}: {e}", file=sys.stderr)
        return e.exit_code
    finally:
        if config is not None and len(record) > 1:
            log_decision(config.log_file, record)


def read_bundle(state_raw: bytes) -> tuple[str, str, str]:
    """(container id, bundle, rootfs) from the OCI state and the bundle's config.json, both
    bounded and read with the fast path's JSON reader (the full spec parser and the decision
    stages are not needed here: the Plan came in --driver)."""
    from gpuhook.errors import InputError
    from gpuhook.runtime.fastpath import MAX_SPEC_BYTES, MAX_STATE_BYTES, loads

    if len(state_raw) > MAX_STATE_BYTES:
        raise InputError(f"hook state (stdin) is larger than {MAX_STATE_BYTES} bytes")
    try:
        state = loads(state_raw)
    except ValueError:
        raise InputError("hook state (stdin) is not JSON") from None
    bundle = state.get("bundle") if isinstance(state, dict) else None
    cid = state.get("id") if isinstance(state, dict) else None
    if not isinstance(bundle, str) or not os.path.isabs(bundle):
        raise InputError("hook state (stdin): bundle must be an absolute path")
    spec_path = os.path.join(bundle, "config.json")
    try:
        with open(spec_path, "rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
    except OSError as e:
        raise InputError(f"spec {spec_path}: {e.strerror}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise InputError(f"spec {spec_path} is larger than {MAX_SPEC_BYTES} bytes")
    try:
        spec = loads(raw)
    except ValueError:
        raise InputError(f"spec {spec_path} is not JSON") from None
    root = spec.get("root") if isinstance(spec, dict) else None
    path = root.get("path", "rootfs") if isinstance(root, dict) else "rootfs"
    if not isinstance(path, str) or not path:
        raise InputError(f"spec {spec_path}: root.path must be a non-empty string")
    rootfs = path if os.path.isabs(path) else os.path.join(bundle, path)
    return (cid if isinstance(cid, str) else "?"), bundle, rootfs
