"""Each engine's registration, read from its files (never by asking the daemon): the file
parses, the runtime's binary exists and is gpuhook's, a drop-in is imported, and no CDI
annotation can reach the runtime past gpuhook's policy."""

from __future__ import annotations

import glob
import json
import os
from typing import Any

from gpuhook.doctor import FAIL, OK, WARN, Check, Where
from gpuhook.engines.containerd import cri_path, runtime_cdi_warning

RUNTIME_EXE = "gpuhook-runtime"
DROP_IN = {"containerd": "99-gpuhook.toml", "crio": "99-gpuhook.conf"}
HOOK_FILE = "gpuhook.json"
# Both launchers (bin/ and packaging/deb/bin/) end in this import.
MARKERS = {RUNTIME_EXE: b"from gpuhook.entry import runtime_main", "gpuhook": b"gpuhook.entry"}


def check_engines(where: Where) -> list[Check]:
    return [check_containerd(where), check_crio(where), check_docker(where),
            *check_hooks(where)]


def is_gpuhooks(path: str, exe: str = RUNTIME_EXE) -> str | None:
    """None when `path` is gpuhook's `exe`; else what is wrong with it."""
    if not os.path.isfile(path):
        return f"{path} does not exist"
    if not os.access(path, os.X_OK):
        return f"{path} is not executable"
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        return f"{path}: {e.strerror}"
    if MARKERS[exe] not in head:
        return f"{path} is not gpuhook's {exe} launcher"
    return _bundle_problem(path)


def _bundle_problem(launcher: str) -> str | None:
    """A launcher `gpuhook node install` put on the host (HOST_DIR/<id>/bin/…, reached through
    `current`) runs only from a complete bundle: a torn copy (no `.complete`) is named."""
    from gpuhook.node import payload

    bundle = os.path.dirname(os.path.dirname(os.path.realpath(launcher)))
    if os.path.dirname(bundle) != payload.HOST_DIR or payload.is_complete(bundle):
        return None
    return (f"{launcher} is in {bundle}, an incomplete bundle (no {payload.COMPLETE}: a copy "
            "that was cut off)")


def _toml(path: str) -> dict[str, Any]:
    import tomllib

    with open(path, "rb") as f:
        return tomllib.loads(f.read().decode("utf-8"))


def _dig(node: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _cri(version: object) -> tuple[str, ...]:
    """engines/containerd.py's table for this config version; a path that finds nothing for a
    version it does not know."""
    return tuple(cri_path(version)) if version in (1, 2, 3) else ("?",)


def check_containerd(where: Where) -> Check:
    path = where.containerd_config
    if not os.path.exists(path):
        return Check("containerd", OK, f"no {path}: containerd not configured here, not checked")
    try:
        main = _toml(path)
    except (OSError, ValueError) as e:
        return Check("containerd", FAIL, f"{path} does not parse: {e}",
                     f"fix {path} (`containerd config dump` shows what containerd reads)")
    version = main.get("version", 1)
    docs = [(path, main)]
    imports = main.get("imports") or []
    imported: list[str] = []
    for pattern in imports if isinstance(imports, list) else []:
        for file in sorted(glob.glob(str(pattern))):
            imported.append(os.path.realpath(file))
            try:
                docs.append((file, _toml(file)))
            except (OSError, ValueError) as e:
                return Check("containerd", FAIL, f"{file} (imported) does not parse: {e}",
                             f"fix {file}")
    drop_in = os.path.join(where.containerd_drop_in_dir, DROP_IN["containerd"])
    if os.path.exists(drop_in) and os.path.realpath(drop_in) not in imported:
        return Check("containerd", FAIL, f"{drop_in} exists but {path} does not import it",
                     "gpuhook install --runtime containerd --drop-in (adds it to `imports`)")
    found = []
    for file, doc in docs:
        cri = _dig(doc, *_cri(version))
        runtimes = _dig(cri, "runtimes") or {}
        for name, table in runtimes.items() if isinstance(runtimes, dict) else ():
            binary = _dig(table, "options", "BinaryName")
            if name == where.runtime_name or (isinstance(binary, str)
                                              and os.path.basename(binary) == RUNTIME_EXE):
                found.append((file, name, table, _dig(cri, "default_runtime_name")))
    if not found:
        return Check("containerd", WARN, f"gpuhook is not registered in {path}",
                     "gpuhook install --runtime containerd (then restart containerd)")
    for file, name, table, _ in found:
        binary = _dig(table, "options", "BinaryName")
        if not isinstance(binary, str):
            return Check("containerd", FAIL, f"runtime {name!r} in {file} has no "
                                             "options.BinaryName", "gpuhook install again")
        wrong = is_gpuhooks(binary)
        if wrong:
            return Check("containerd", FAIL, f"runtime {name!r} in {file}: {wrong}",
                         f"gpuhook install --runtime containerd --name {name}")
        leak = runtime_cdi_warning(name, table)
        if leak:
            return Check("containerd", FAIL, f"{file}: {leak}",
                         f"remove those patterns from runtime {name!r}'s pod_annotations")
    file, name, _, default = found[0]
    note = " (the default runtime: every pod goes through gpuhook)" if default == name else ""
    return Check("containerd", OK, f"runtime {name!r} in {file} runs gpuhook-runtime{note}")


def check_crio(where: Where) -> Check:
    path = os.path.join(where.crio_drop_in_dir, DROP_IN["crio"])
    if not os.path.exists(path):
        return Check("crio", OK, f"no {path}: not registered with CRI-O, not checked")
    try:
        doc = _toml(path)
    except (OSError, ValueError) as e:
        return Check("crio", FAIL, f"{path} does not parse: {e}", f"fix or remove {path}")
    runtimes = _dig(doc, "crio", "runtime", "runtimes") or {}
    for name, table in runtimes.items() if isinstance(runtimes, dict) else ():
        binary = _dig(table, "runtime_path")
        wrong = is_gpuhooks(binary) if isinstance(binary, str) else "no runtime_path"
        if wrong:
            return Check("crio", FAIL, f"runtime {name!r} in {path}: {wrong}",
                         "gpuhook install --runtime crio")
        return Check("crio", OK, f"runtime {name!r} in {path} runs gpuhook-runtime")
    return Check("crio", FAIL, f"{path} holds no runtime", "gpuhook install --runtime crio")


def check_docker(where: Where) -> Check:
    path = where.docker_config
    if not os.path.exists(path):
        return Check("docker", OK, f"no {path}: Docker not configured here, not checked")
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except (OSError, ValueError) as e:
        return Check("docker", FAIL, f"{path} does not parse: {e}", f"fix {path}")
    runtimes = _dig(doc, "runtimes") or {}
    ours = {n: t for n, t in runtimes.items() if isinstance(t, dict) and (
        n == where.runtime_name or os.path.basename(str(t.get("path"))) == RUNTIME_EXE)
    } if isinstance(runtimes, dict) else {}
    if not ours:
        return Check("docker", WARN, f"gpuhook is not registered in {path}",
                     "gpuhook install --runtime docker")
    for name, table in ours.items():
        wrong = is_gpuhooks(str(table.get("path")))
        if wrong:
            return Check("docker", FAIL, f"runtime {name!r} in {path}: {wrong}",
                         "gpuhook install --runtime docker")
    return Check("docker", OK, f"runtime {', '.join(ours)} in {path} runs gpuhook-runtime")


def check_hooks(where: Where) -> list[Check]:
    """podman (and CRI-O) read OCI hooks.d: a gpuhook.json there runs the hook for every
    container those engines start."""
    out = []
    for d in where.hooks_dirs:
        path = os.path.join(d, HOOK_FILE)
        if not os.path.exists(path):
            continue
        try:
            with open(path, "rb") as f:
                hook = json.loads(f.read())
            binary = hook["hook"]["path"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            out.append(Check("oci-hooks", FAIL, f"{path} is not an OCI hook file: {e}",
                             "gpuhook install --runtime podman"))
            continue
        wrong = is_gpuhooks(str(binary), "gpuhook")
        out.append(Check("oci-hooks", FAIL, f"{path}: {wrong}", "gpuhook install --runtime podman")
                   if wrong else Check("oci-hooks", OK, f"{path} runs {binary} for podman and "
                                                         "CRI-O"))
    return out or [Check("oci-hooks", OK, "no gpuhook.json in "
                                          f"{', '.join(where.hooks_dirs)}: not registered with "
                                          "podman / CRI-O hooks")]
