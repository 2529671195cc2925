"""CDI spec files: generate one from the inventory and host facts now, write it atomically,
remember where, and say whether a spec on disk still matches.

The spec itself is built by decide/cdi.py from the Plans gpuhook's own stages make; this module
does the reading and writing around it. Written specs are recorded next to the inventory snapshot
(`<dir of inventory-cache>/cdi-specs.json`) so that `gpuhook inventory refresh` regenerates them
after a driver or MIG change.
"""

from __future__ import annotations

import json
import os

from gpuhook.atomic import write_atomic
from gpuhook.config import Config
from gpuhook.decide.cdi import (
    CLASSES,
    KINDS,
    JsonObj,
    build_spec,
    capability_names,
    driver_mounts,
    gpu_device_plans,
    imex_device_plans,
)
from gpuhook.decide.cdi_names import GPU_CLASS, IMEX_CLASS
from gpuhook.decide.extras import ExtraFacts
from gpuhook.decide.facts import Capability, HostInfo
from gpuhook.decide.plan import Plan
from gpuhook.errors import GpuhookError, HostError, InputError
from gpuhook.record import TYPE_CHECKING, dataclass, replace

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

# Where podman 4.x, containerd >= 1.7 and CRI-O look for specs (CDI's default spec dirs).
CDI_DIRS = ("/etc/cdi", "/var/run/cdi")
DEFAULT_OUTPUT = {GPU_CLASS: "/var/run/cdi/nvidia.yaml",
                  IMEX_CLASS: "/var/run/cdi/nvidia-imex-channel.yaml"}
FORMATS = ("yaml", "json")
RECORD_NAME = "cdi-specs.json"
MAX_SPEC_FILE = 16 << 20
MAX_RECORDED = 64


class CdiError(GpuhookError):
    pass


def generate(config: Config, cls: str = GPU_CLASS, version: str | None = None) -> JsonObj:
    """The spec for `cls` as gpuhook would apply it now (the inventory backend, never the
    snapshot: a spec outlives the start that would have checked the snapshot's freshness)."""
    from gpuhook.host.proc import HostPaths

    if cls not in CLASSES:
        raise InputError(f"CDI class {cls!r}: gpuhook generates {', '.join(CLASSES)}")
    host = HostPaths(config.host_root)
    try:
        if cls == IMEX_CLASS:
            from gpuhook.host.devnodes import read_imex

            major, channels = read_imex(host)
            if not channels:
                raise HostError(f"no IMEX channel nodes under "
                                f"{host.path('dev/nvidia-caps-imex-channels')} (major "
                                f"{major if major is not None else 'not in proc/devices'}); "
                                "nothing to generate")
            return build_spec(KINDS[cls], imex_device_plans(
                config, ExtraFacts(imex_major=major, imex_channels=channels)), None, version,
                void_env=False)
        return _gpu_spec(config, host, version)
    except ValueError as e:  # CdiVersionError, or a name twice
        raise InputError(str(e)) from None


def _gpu_spec(config: Config, host: Any, version: str | None) -> JsonObj:
    from gpuhook.host.proc import read_capabilities, read_majors, read_mig_minors
    from gpuhook.inventory.load import read_backend

    inv = read_backend(config)
    majors = read_majors(host)
    names = capability_names(inv)
    caps: dict[str, Capability] = {}
    if names:
        if majors.caps is None:
            raise HostError(f"{host.path('proc/devices')} lists no nvidia-caps major, needed "
                            "for the MIG devices' capabilities")
        caps = read_capabilities(host, names, read_mig_minors(host))
    info = HostInfo(majors, caps)
    if config.driver_files:
        from gpuhook.host.driver import discover_driver

        # Sockets come and go with their daemons: a spec written once does not name them.
        info = replace(info, driver=discover_driver(host, inv.driver_version))
    plans, common = gpu_device_plans(inv, info, config, config.cdi_driver_capabilities)
    return build_spec(KINDS[GPU_CLASS], plans, common, version,
                      common_extra=_driver_edits(common, config))


def _driver_edits(common: Plan, config: Config) -> JsonObj:
    """The driver files as read-only bind mounts and the createContainer hook (links, ld
    cache), with an explicit env: without one a runtime gives a hook the container's."""
    if not (common.driver_files or common.symlinks or common.update_ldcache):
        return {}
    from gpuhook.runtime.create_container import hook_args
    from gpuhook.runtime.shim import gpuhook_executable
    from gpuhook.runtime.spec_edit import HOOK_ENV

    mounts, libdirs = driver_mounts(common, config.host_root)
    # No /proc/driver/nvidia view: its GPU list is per container, the hook here is per spec.
    plan = replace(common, proc_driver_gpus=())
    hook = {"hookName": "createContainer", "path": gpuhook_executable(),
            "args": list(hook_args(plan, _named_config(config), libdirs)),
            "env": list(HOOK_ENV)}
    return {"mounts": mounts, "hooks": [hook]}


def _named_config(config: Config) -> str | None:
    """The config file the hook must be told about (it runs with a minimal env, so one found
    through $GPUHOOK_CONFIG would be lost); None for the system one or the built-in defaults."""
    from gpuhook.config import SYSTEM_CONFIG

    source = config.source
    if os.path.isfile(source) and os.path.abspath(source) != SYSTEM_CONFIG:
        return os.path.abspath(source)
    return None


def render(spec: Mapping[str, Any], fmt: str) -> bytes:
    if fmt == "json":
        return (json.dumps(spec, indent=2) + "\n").encode()
    import yaml

    class Quoted(str):
        pass

    class Dumper(yaml.SafeDumper):
        pass

    # Device names like 0:0 and the version read as strings to every YAML parser only quoted.
    Dumper.add_representer(Quoted, lambda d, v: d.represent_scalar(
        "tag:yaml.org,2002:str", str(v), style='"'))
    doc = dict(spec)
    doc["cdiVersion"] = Quoted(spec["cdiVersion"])
    doc["devices"] = [{**d, "name": Quoted(d["name"])} for d in spec["devices"]]
    head = f"# {spec['kind']} devices, written by `gpuhook cdi generate`; regenerated by " \
           "`gpuhook inventory refresh`.\n"
    return (head + yaml.dump(doc, Dumper=Dumper, sort_keys=False,
                             default_flow_style=False)).encode()


def format_for(path: str, fmt: str | None) -> str:
    """The format a spec file at `path` must have: the CDI cache loads only *.yaml and *.json
    and decodes each by its extension, so a name that says otherwise is refused."""
    ext = os.path.splitext(path)[1].lstrip(".")
    if ext not in FORMATS:
        raise InputError(f"{path}: a CDI spec file must end in .yaml or .json (runtimes skip "
                         "any other name)")
    if fmt is not None and fmt != ext:
        raise InputError(f"{path}: --format {fmt} does not match the .{ext} extension")
    return ext


def write(path: str, spec: Mapping[str, Any]) -> None:
    write_atomic(path, render(spec, format_for(path, None)))
    os.chmod(path, 0o644)


# --- the record of written specs -----------------------------------------------------------------

@dataclass(frozen=True)
class Written:
    path: str
    cls: str
    version: str | None  # --cdi-version as asked (None: the lowest the fields need)


def record_path(config: Config) -> str:
    return os.path.join(os.path.dirname(config.inventory_cache), RECORD_NAME)


def recorded(config: Config) -> list[Written]:
    path = record_path(config)
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(1 << 20))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise CdiError(f"cannot read {path}: {e}") from None
    out: list[Written] = []
    for item in data.get("specs", []) if isinstance(data, dict) else []:
        if (isinstance(item, dict) and isinstance(item.get("path"), str)
                and item.get("class") in CLASSES
                and isinstance(item.get("version"), (str, type(None)))):
            out.append(Written(item["path"], item["class"], item["version"]))
    return out


def remember(config: Config, written: Written) -> None:
    others = [w for w in recorded(config) if w.path != written.path]
    specs = [*others, written][-MAX_RECORDED:]
    data = {"specs": [{"path": w.path, "class": w.cls, "version": w.version} for w in specs]}
    os.makedirs(os.path.dirname(record_path(config)), mode=0o700, exist_ok=True)
    write_atomic(record_path(config), (json.dumps(data, indent=1) + "\n").encode())


def regenerate_recorded(config: Config) -> tuple[list[str], list[str]]:
    """Rewrite every spec written before (that still exists): (one line per spec, the errors).
    One spec that cannot be generated (its IMEX channels gone, say) does not keep the others
    stale."""
    lines: list[str] = []
    errors: list[str] = []
    for w in recorded(config):
        if not os.path.exists(w.path):
            lines.append(f"{w.path}: gone, not rewritten")
            continue
        try:
            write(w.path, generate(config, w.cls, w.version))
        except GpuhookError as e:
            errors.append(f"{w.path}: not rewritten: {e}")
            continue
        except OSError as e:
            errors.append(f"{w.path}: not rewritten: {e.strerror}")
            continue
        lines.append(f"{w.path}: rewritten ({KINDS[w.cls]})")
    return lines, errors


# --- is a spec on disk current? ------------------------------------------------------------------

@dataclass(frozen=True)
class SpecStatus:
    path: str
    kind: str
    state: str  # current | stale | other | unreadable
    detail: str = ""


def read_spec(path: str) -> JsonObj:
    with open(path, "rb") as f:
        data = f.read(MAX_SPEC_FILE + 1)
    if len(data) > MAX_SPEC_FILE:
        raise ValueError(f"larger than {MAX_SPEC_FILE} bytes")
    if path.endswith(".json"):
        obj = json.loads(data)
    else:
        import yaml

        obj = yaml.safe_load(data)
    if not isinstance(obj, dict):
        raise ValueError("not a mapping")
    return obj


def _device_nodes(spec: Mapping[str, Any]) -> dict[str, set[tuple[str, int, int]]]:
    out: dict[str, set[tuple[str, int, int]]] = {}
    for dev in spec.get("devices") or []:
        if not isinstance(dev, dict):
            continue
        edits = dev.get("containerEdits") or {}
        out[str(dev.get("name"))] = {
            (str(n.get("path")), int(n.get("major") or 0), int(n.get("minor") or 0))
            for n in edits.get("deviceNodes") or [] if isinstance(n, dict)}
    return out


def compare(on_disk: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """'' when the devices on disk are the ones gpuhook would generate now (names, and each
    one's nodes); else what differs."""
    old, new = _device_nodes(on_disk), _device_nodes(now)
    parts: list[str] = []
    gone = sorted(set(old) - set(new))
    added = sorted(set(new) - set(old))
    changed = sorted(n for n in set(old) & set(new) if old[n] != new[n])
    for label, names in (("no longer exist", gone), ("missing", added),
                         ("with other nodes", changed)):
        if names:
            shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6
                                            else "")
            parts.append(f"devices {label}: {shown}")
    return "; ".join(parts)


def spec_files(dirs: Iterable[str], extra: Iterable[str]) -> list[str]:
    files: list[str] = []
    for d in dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        files += [os.path.join(d, n) for n in names if n.endswith((".yaml", ".json"))]
    for p in extra:
        if p not in files:
            files.append(p)
    return files


def statuses(config: Config, dirs: Iterable[str] = CDI_DIRS) -> list[SpecStatus]:
    """Every spec in the CDI dirs and every recorded one: NVIDIA kinds gpuhook generates are
    compared with what it would generate now; two files defining the same kind are named (a
    runtime refuses a device name defined twice)."""
    rec = {w.path: w for w in recorded(config)}
    out: list[SpecStatus] = []
    fresh: dict[str, JsonObj] = {}
    failed: dict[str, str] = {}
    kinds: dict[str, list[str]] = {}
    for path in spec_files(dirs, rec):
        try:
            spec = read_spec(path)
        except (OSError, ValueError) as e:
            out.append(SpecStatus(path, "?", "unreadable", str(e)[:200]))
            continue
        kind = str(spec.get("kind", "?"))
        kinds.setdefault(kind, []).append(path)
        cls = next((c for c, k in KINDS.items() if k == kind), None)
        if cls is None:
            out.append(SpecStatus(path, kind, "other", "not a kind gpuhook generates"))
            continue
        if cls not in fresh:
            try:
                fresh[cls] = generate(config, cls)
            except GpuhookError as e:
                # Nothing to compare with: the spec names devices gpuhook cannot find now.
                failed[cls] = str(e)
        if cls in failed:
            out.append(SpecStatus(path, kind, "stale", f"cannot generate it now: {failed[cls]}"))
            continue
        diff = compare(spec, fresh[cls])
        out.append(SpecStatus(path, kind, "stale" if diff else "current", diff))
    for paths in kinds.values():
        if len(paths) > 1:
            for i, s in enumerate(out):
                if s.path in paths:
                    others = ", ".join(p for p in paths if p != s.path)
                    out[i] = SpecStatus(s.path, s.kind, s.state,
                                        (s.detail + "; " if s.detail else "")
                                        + f"kind also defined in {others}")
    return out
