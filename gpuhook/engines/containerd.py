"""containerd: the runtime table in config.toml (v1, v2 and v3 layouts), optionally through a
drop-in that the main config imports.

The config is edited with tomlkit so that comments, order and every other setting stay
byte-identical: scalar keys are replaced in place, and the runtime's tables are appended as one
block at the end of the file (TOML allows a table anywhere), indented like containerd's own
`config default` output when the file is indented. The original is kept as `<config>.gpuhook.bak`;
`uninstall` puts it back byte for byte when the config is exactly what install made of it;
otherwise only gpuhook's own keys are taken out. A runtime table that is already there is edited in
place (runtime_type and options.BinaryName only), so keys the operator added to it stay.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import tomlkit
import tomlkit.items

from gpuhook.engines.common import (
    BACKUP_SUFFIX,
    DEFAULTS,
    DROP_IN_NAME,
    RUNTIME_EXE,
    Change,
    InstallError,
    Options,
    owned_file,
    read_file,
    remove_owned,
    text_of,
    toml_key,
)

RUNC_V2 = "io.containerd.runc.v2"


def containerd_version(doc: tomlkit.TOMLDocument) -> int:
    v = doc.get("version", 1)
    if not isinstance(v, int) or v not in (1, 2, 3):
        raise InstallError(f"containerd config version {v!r}: gpuhook knows versions 1, 2, 3")
    return int(v)


def cri_path(version: int) -> list[str]:
    """Key path of the table that holds `containerd.runtimes` and `default_runtime_name`."""
    return {1: ["plugins", "cri"], 2: ["plugins", "io.containerd.grpc.v1.cri"],
            3: ["plugins", "io.containerd.cri.v1.runtime"]}[version] + ["containerd"]


def _get(doc: Any, path: list[str]) -> Any:
    node = doc
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _header(path: list[str]) -> str:
    return ".".join(k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)
                    for k in path)


def _indented(text: str) -> bool:
    return any(line.startswith((" ", "\t")) and line.lstrip().startswith("[")
               for line in text.splitlines())


def runtime_table(doc: Any, version: int, binary: str) -> dict[str, Any]:
    """Our runtime: the default runc runtime's settings, runtime_type runc.v2, our BinaryName."""
    runtimes = _get(doc, [*cri_path(version), "runtimes"]) or {}
    runc = runtimes.get("runc") if isinstance(runtimes, dict) else None
    base: dict[str, Any] = _plain(runc) if isinstance(runc, dict) else {}
    table = {k: v for k, v in base.items() if k != "options"}
    table["runtime_type"] = RUNC_V2
    options = dict(base.get("options") or {})
    options["BinaryName"] = binary
    table["options"] = options
    return table


@dataclass(frozen=True)
class BlockStyle:
    """How the config writes the runc runtime's tables, so ours looks like a sibling."""

    prefix: str  # the header text up to `.runtimes`, quoting as the file has it
    header: str = ""
    key: str = ""
    sub_header: str = ""
    sub_key: str = ""


_HEADER = re.compile(r"^([ \t]*)\[([^\[\]]+)\][ \t]*(#.*)?$")


def block_style(text: str, runtimes_path: list[str]) -> BlockStyle:
    lines = text.splitlines()
    found: dict[str, tuple[int, str]] = {}  # "runc" | "options" -> (line index, indent)
    prefix = None
    for i, line in enumerate(lines):
        m = _HEADER.match(line)
        if m is None:
            continue
        try:
            keys = _header_keys(m.group(2))
        except ValueError:
            continue
        if keys == [*runtimes_path, "runc"]:
            found["runc"] = (i, m.group(1))
            prefix = m.group(2).strip().rsplit(".", 1)[0].rstrip()
        elif keys == [*runtimes_path, "runc", "options"]:
            found["options"] = (i, m.group(1))
    if prefix is None:
        flat = not _indented(text)
        depth = len(runtimes_path)
        pad = ("" if flat else "  " * depth, "" if flat else "  " * (depth + 1))
        sub = ("" if flat else "  " * (depth + 1), "" if flat else "  " * (depth + 2))
        return BlockStyle(_header(runtimes_path), pad[0], pad[1], sub[0], sub[1])
    header = found["runc"][1]
    key = _key_indent(lines, found["runc"][0], header + "  ")
    sub_header = found["options"][1] if "options" in found else header
    sub_key = (_key_indent(lines, found["options"][0], sub_header + "  ")
               if "options" in found else key)
    return BlockStyle(prefix, header, key, sub_header, sub_key)


def _flush_left(style: BlockStyle) -> BlockStyle:
    """The style's quoting, without its indentation (for a block appended at the end)."""
    return BlockStyle(style.prefix)


def _header_keys(header: str) -> list[str]:
    import tomllib

    table = tomllib.loads(f"[{header}]\n")
    keys: list[str] = []
    while isinstance(table, dict) and len(table) == 1:
        (k, table), = table.items()
        keys.append(k)
    return keys


def _key_indent(lines: list[str], header_at: int, default: str) -> str:
    for line in lines[header_at + 1:]:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("["):
            return default
        return line[:len(line) - len(line.lstrip())]
    return default


def render_runtime_block(name: str, table: dict[str, Any], style: BlockStyle) -> str:
    head = f"{style.prefix}.{toml_key(name)}"
    lines = [f"{style.header}[{head}]"]
    subtables = []
    for key, value in table.items():
        if isinstance(value, dict):
            subtables.append((key, value))
            continue
        lines.append(f"{style.key}{toml_key(key)} = {tomlkit.item(value).as_string()}")
    for key, value in subtables:
        lines += ["", f"{style.sub_header}[{head}.{toml_key(key)}]"]
        lines += [f"{style.sub_key}{toml_key(k)} = {tomlkit.item(v).as_string()}"
                  for k, v in value.items()]
    return "\n".join(lines) + "\n"


def _set_scalar(table: Any, key: str, value: Any) -> None:
    """Replace in place (keeps the line's comment), else add, indented like its siblings."""
    if key in table:
        table[key] = value
        return
    item = tomlkit.item(value)
    body = table.value.body if isinstance(table, tomlkit.items.Table) else []
    for existing in body:
        k, v = existing
        if k is not None and hasattr(v, "trivia"):
            item.trivia.indent = v.trivia.indent
            break
    table.add(key, item)


def containerd_edit(text: str, opts: Options, drop_in_path: str | None) -> tuple[str, str | None]:
    """(new main config text, drop-in text or None)."""
    if not text.strip():
        text = "version = 2\n"  # a new config: the schema every containerd >= 1.5 reads
    doc = tomlkit.parse(text)
    version = containerd_version(doc)
    base = cri_path(version)
    rt_path = [*base, "runtimes", opts.name]
    table = runtime_table(doc, version, opts.runtime_binary)
    if drop_in_path is not None:
        return _containerd_with_imports(doc, text, drop_in_path), _containerd_drop_in(
            doc, version, table, opts)
    existing = _get(doc, rt_path)
    add_options = False
    if existing is not None:
        add_options = _update_runtime(existing, opts.runtime_binary, _header(rt_path))
    if opts.set_as_default:
        parent = _get(doc, base)
        if parent is not None and _is_table(parent):
            _set_scalar(parent, "default_runtime_name", opts.name)
    out = tomlkit.dumps(doc)
    # Blocks are appended at the end of the file, after whatever table is last there: flush
    # left, since indenting them like the runc runtime's would read as nested in that table.
    if opts.set_as_default and not _is_table(_get(doc, base)):
        if _get(doc, base) is None:
            block = (f"[{_header(base)}]\n"
                     f"default_runtime_name = {json.dumps(opts.name)}\n")
            out = _append(out, block)
        else:
            raise InstallError(f"{_header(base)} is not a table; edit it by hand")
    if existing is None:
        style = _flush_left(block_style(text, rt_path[:-1]))
        out = _append(out, render_runtime_block(opts.name, table, style))
    elif add_options:
        style = _flush_left(block_style(text, rt_path[:-1]))
        block = render_runtime_block(opts.name, {"options": {"BinaryName": opts.runtime_binary}},
                                     style)
        out = _append(out, block.split("\n", 2)[2])  # the options table only
    _check_runtime(out, rt_path, opts.runtime_binary)
    return out, None


def _update_runtime(node: Any, binary: str, where: str) -> bool:
    """Set runtime_type and options.BinaryName of a runtime table that is there, in place;
    every other key and comment stays. True: it has no options table, append one."""
    if not isinstance(node, MutableMapping):
        raise InstallError(f"{where} is not a table; edit it by hand")
    if node.get("runtime_type") != RUNC_V2:
        _set_scalar(node, "runtime_type", RUNC_V2)
    options = node.get("options")
    if options is None:
        if isinstance(node, tomlkit.items.InlineTable):
            node["options"] = tomlkit.inline_table()
            node["options"]["BinaryName"] = binary
            return False
        return True
    if not isinstance(options, MutableMapping):
        raise InstallError(f"{where}.options is not a table; edit it by hand")
    if options.get("BinaryName") != binary:
        _set_scalar(options, "BinaryName", binary)
    return False


def _check_runtime(out: str, rt_path: list[str], binary: str) -> None:
    """Fail closed when the edit did not come out as meant (an odd layout tomlkit mis-edits)."""
    import tomllib

    try:
        got = _get(tomllib.loads(out), rt_path)
    except tomllib.TOMLDecodeError as e:
        raise InstallError(f"editing {_header(rt_path)} gave invalid TOML ({e}); "
                           "edit it by hand") from None
    if not (isinstance(got, dict) and got.get("runtime_type") == RUNC_V2
            and isinstance(got.get("options"), dict)
            and got["options"].get("BinaryName") == binary):
        raise InstallError(f"could not set {_header(rt_path)} in place; edit it by hand")


def _is_table(node: Any) -> bool:
    # A table split by later [sub.tables] comes back as tomlkit's out-of-order proxy.
    return isinstance(node, MutableMapping) and not isinstance(node, tomlkit.items.InlineTable)


def _plain(node: Any) -> Any:
    return node.unwrap() if hasattr(node, "unwrap") else node


def _append(text: str, block: str) -> str:
    if text and not text.endswith("\n"):
        text += "\n"
    return f"{text}\n{block}" if text.strip() else block


def _containerd_with_imports(doc: tomlkit.TOMLDocument, text: str, drop_in: str) -> str:
    imports = doc.get("imports")
    if imports is not None and not isinstance(imports, list):
        raise InstallError("containerd config: imports must be a list")
    if imports is not None and drop_in in imports:
        return text
    if imports is None:
        # tomlkit puts a new top-level key after the last one, before the first table.
        doc.add("imports", [drop_in])
        return tomlkit.dumps(doc)
    imports.append(drop_in)
    return tomlkit.dumps(doc)


def _containerd_drop_in(doc: tomlkit.TOMLDocument, version: int, table: dict[str, Any],
                        opts: Options) -> str:
    """containerd 1.x replaces a whole plugin's section with an imported file's (it does not
    merge deeper), so the drop-in carries a copy of the main config's CRI plugin section with the
    runtime added. Settings changed later in the main file's section are shadowed by this copy:
    run `gpuhook install` again after editing them."""
    plugin = cri_path(version)[:2]
    section = _plain(_get(doc, plugin)) or {}
    section = json.loads(json.dumps(section, default=str))  # a deep, plain copy
    containerd = section.setdefault("containerd", {})
    containerd.setdefault("runtimes", {})[opts.name] = table
    if opts.set_as_default:
        containerd["default_runtime_name"] = opts.name
    out = tomlkit.document()
    out.add(tomlkit.comment("Written by `gpuhook install --runtime containerd --drop-in`; "
                            "`gpuhook uninstall` removes it."))
    out["version"] = version
    plugins = tomlkit.table(is_super_table=True)
    plugins[plugin[1]] = section
    out["plugins"] = plugins
    return tomlkit.dumps(out)


def _containerd_config(opts: Options) -> str:
    return opts.config or DEFAULTS["containerd_config"]


def _drop_in_path(opts: Options) -> str:
    return os.path.join(opts.drop_in_dir or DEFAULTS["containerd_drop_in_dir"],
                        DROP_IN_NAME["containerd"])


def install(opts: Options) -> list[Change]:
    path = _containerd_config(opts)
    old = read_file(path)
    text = text_of(old, path)
    drop_in = _drop_in_path(opts) if opts.drop_in else None
    try:
        main, drop_text = containerd_edit(text, opts, drop_in)
    except tomlkit.exceptions.TOMLKitError as e:
        raise InstallError(f"{path}: {e}") from None
    changes = [Change(path, old, main.encode(), backup=path + BACKUP_SUFFIX)]
    if drop_in is not None and drop_text is not None:
        # The drop-in first: the main config never imports a file that is not there yet.
        changes.insert(0, owned_file(drop_in, drop_text.encode()))
    return changes


def uninstall(opts: Options) -> list[Change]:
    path = _containerd_config(opts)
    old = read_file(path)
    if old is None:
        raise InstallError(f"{path}: no such file")
    backup_path = path + BACKUP_SUFFIX
    backup = read_file(backup_path)
    drop_in = _drop_in_path(opts)
    # The main config first, the drop-in after: never an import of a missing file.
    last: list[Change] = [remove_owned(drop_in, opts)] if os.path.exists(drop_in) else []
    text = text_of(old, path)
    try:
        doc = tomlkit.parse(text)
        bdoc = tomlkit.parse(text_of(backup, backup_path)) if backup is not None else None
    except tomlkit.exceptions.TOMLKitError as e:
        raise InstallError(f"{path}: {e}") from None
    version = containerd_version(doc)
    orig_default = None
    if bdoc is not None:
        orig_default = (_plain(_get(bdoc, cri_path(version))) or {}).get("default_runtime_name")
    if bdoc is not None and _containerd_made_from(backup or b"", old, doc, opts, drop_in,
                                                  version):
        return [Change(path, old, backup, drop_backup=backup_path), *last]
    # The backup is spent either way: the file now holds the operator's edits, not gpuhook's.
    return [Change(path, old, _containerd_remove(doc, opts, drop_in, version, orig_default,
                                                 bdoc).encode(),
                   drop_backup=backup_path if backup is not None else None), *last]


def _containerd_made_from(backup: bytes, current: bytes, doc: tomlkit.TOMLDocument,
                          opts: Options, drop_in: str, version: int) -> bool:
    """Whether `current` is byte for byte what install makes of `backup`, with any of the
    options install may have had (the binary is the one the config names)."""
    ours = _get(doc, [*cri_path(version), "runtimes", opts.name])
    binary = _plain(ours).get("options", {}).get("BinaryName", "") if isinstance(
        ours, MutableMapping) else ""
    text = backup.decode("utf-8", errors="replace")
    for default in (False, True):
        for d in (None, drop_in):
            try:
                made, _ = containerd_edit(text, dataclasses.replace(
                    opts, set_as_default=default, runtime_binary=str(binary)), d)
            except (InstallError, tomlkit.exceptions.TOMLKitError):
                continue
            if made.encode() == current:
                return True
    return False


def _prune_empty(doc: tomlkit.TOMLDocument, path: list[str],
                 bdoc: tomlkit.TOMLDocument | None) -> None:
    """Drop the tables on `path` that are empty now and that the backup did not have (install
    made them, e.g. the CRI section of a config that had none); an empty one that was there
    stays. The same rule as Docker's `runtimes`."""
    for depth in range(len(path), 0, -1):
        node = _get(doc, path[:depth])
        if not isinstance(node, MutableMapping) or len(node) or (
                bdoc is not None and _get(bdoc, path[:depth]) is not None):
            return
        container = doc if depth == 1 else _get(doc, path[:depth - 1])
        del container[path[depth - 1]]


def _restore_runtime(node: Any, before: dict[str, Any]) -> None:
    """Put back runtime_type and options.BinaryName as the backup had them, in place."""
    if "runtime_type" in before:
        _set_scalar(node, "runtime_type", before["runtime_type"])
    elif "runtime_type" in node:
        del node["runtime_type"]
    options = node.get("options")
    old_options = before.get("options")
    if not isinstance(options, MutableMapping):
        return
    if isinstance(old_options, dict) and "BinaryName" in old_options:
        _set_scalar(options, "BinaryName", old_options["BinaryName"])
    elif "BinaryName" in options:
        del options["BinaryName"]
        if not options and old_options is None:
            del node["options"]


def _containerd_remove(doc: tomlkit.TOMLDocument, opts: Options, drop_in: str, version: int,
                       orig_default: Any, bdoc: tomlkit.TOMLDocument | None) -> str:
    """Take out gpuhook's keys from a config edited since install (the backup no longer fits).
    A runtime table is removed only when its BinaryName is gpuhook-runtime."""
    parent = _get(doc, cri_path(version))
    if parent is not None:
        runtimes = parent.get("runtimes")
        ours = runtimes.get(opts.name) if runtimes is not None else None
        binary = _plain(ours or {}).get("options", {}).get("BinaryName", "")
        if ours is not None and os.path.basename(str(binary)) == RUNTIME_EXE:
            before = _get(bdoc, [*cri_path(version), "runtimes", opts.name]) if bdoc else None
            if before is None:
                del runtimes[opts.name]
                had = _get(bdoc, [*cri_path(version), "runtimes"]) if bdoc else None
                if not runtimes and had is None:
                    del parent["runtimes"]  # install made it; an empty one that was there stays
            else:
                _restore_runtime(ours, _plain(before))
        if parent.get("default_runtime_name") == opts.name:
            if orig_default is None:
                del parent["default_runtime_name"]
            else:
                parent["default_runtime_name"] = orig_default
        _prune_empty(doc, cri_path(version), bdoc)
    imports = doc.get("imports")
    if isinstance(imports, list) and drop_in in imports:
        imports.remove(drop_in)
    out = tomlkit.dumps(doc)
    # install put one blank line before its block at the end; take that back too.
    if out.endswith("\n\n") and not (bdoc is not None and bdoc.as_string().endswith("\n\n")):
        out = out.rstrip("\n") + "\n"
    return out


# --- CDI annotations: who may write them ---------------------------------------------------------
# containerd's CRI plugin copies a pod's annotations into every container's spec when the runtime's
# `pod_annotations` allow-list matches them, and the container's own (the kubelet's, which hold the
# device plugin's `cdi.k8s.io/` annotations) when `container_annotations` does. Each pattern is
# matched with Go's path.Match (containerd v1.6.20 pkg/cri/server/helpers.go,
# getPassthroughAnnotations). A pod author writes pod annotations: if they reach the spec under the
# CDI prefix, they read as the device plugin's and gpuhook would serve them.

CDI_PROBE_KEY = "cdi.k8s.io/nvidia-device-plugin_0"


def go_path_match(pattern: str, name: str) -> bool:
    """Go's path.Match: `*` and `?` never match '/', `[...]` classes (`^` negates), `\\`
    escapes. A malformed pattern matches nothing (path.Match returns ErrBadPattern, which
    containerd ignores)."""
    regex: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            regex.append("[^/]*")
        elif c == "?":
            regex.append("[^/]")
        elif c == "\\":
            i += 1
            if i == len(pattern):
                return False
            regex.append(re.escape(pattern[i]))
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1:i + 2] == "^" else i + 1)
            if end < 0:
                return False
            body = pattern[i + 1:end]
            negate = body.startswith("^")
            if negate:
                body = body[1:]
            if not body:
                return False
            cls = "".join("\\" + ch if ch in "\\]^[" else ch for ch in body)
            regex.append(f"[{'^' if negate else ''}{cls}]")
            i = end
        else:
            regex.append(re.escape(c))
        i += 1
    return re.fullmatch("".join(regex), name) is not None


def cdi_annotation_warnings(text: str, runtime_name: str) -> list[str]:
    """Warnings for a containerd config (main file or drop-in text) whose runtime
    `runtime_name` lets pod annotations with the CDI prefix into a container's spec (its
    `pod_annotations`). For `gpuhook install`; [] when the runtime is not in this text."""
    import tomllib

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return []
    version = doc.get("version", 1)
    if version not in (1, 2, 3):
        return []
    table = _get(doc, [*cri_path(int(version)), "runtimes", runtime_name])
    warning = runtime_cdi_warning(runtime_name, table)
    return [warning] if warning else []


def runtime_cdi_warning(runtime_name: str, table: object) -> str | None:
    """The warning for one parsed runtime table (`...containerd.runtimes.<name>`) whose
    `pod_annotations` pass the CDI prefix, or None. The one judgement `gpuhook install` (above)
    and `gpuhook doctor` (doctor/engines.py, which finds the table across imported files) share.
    """
    if not isinstance(table, dict):
        return None
    pods = table.get("pod_annotations") or []
    bad = [p for p in pods if isinstance(p, str) and go_path_match(p, CDI_PROBE_KEY)]
    if not bad:
        return None
    return (f"runtime {runtime_name!r}: pod_annotations {bad!r} lets pod authors write "
            "cdi.k8s.io/ annotations into the container spec, which gpuhook serves as the "
            "device plugin's CDI requests (a pod names CDI devices past gpuhook's policy): "
            "remove those patterns (only container_annotations should pass cdi.k8s.io/*)")
