"""`gpuhook install` / `uninstall` as data: each computes a list of file Changes from the files
as they are; `--dry-run` prints their unified diff, otherwise they are written. Nothing here
restarts a daemon.

containerd's config is edited with tomlkit so that comments, order and every other setting stay
byte-identical: scalar keys are replaced in place, and the runtime's tables are appended as one
block at the end of the file (TOML allows a table anywhere), indented like containerd's own
`config default` output when the file is indented. The original is kept as `<config>.gpuhook.bak`;
`uninstall` puts it back byte for byte when the config is exactly what install made of it;
otherwise only gpuhook's own keys are taken out. A runtime table that is already there is edited in
place (runtime_type and options.BinaryName only), so keys the operator added to it stay.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import json
import os
import re
import shutil
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import tomlkit
import tomlkit.items

from gpuhook.atomic import fsync_dir, write_atomic
from gpuhook.runtime.spec_edit import HOOK_ARGS, HOOK_ENV

BACKUP_SUFFIX = ".gpuhook.bak"
RUNC_V2 = "io.containerd.runc.v2"
RUNTIME_EXE = "gpuhook-runtime"

DEFAULTS = {
    "containerd_config": "/etc/containerd/config.toml",
    "containerd_drop_in_dir": "/etc/containerd/conf.d",
    "crio_drop_in_dir": "/etc/crio/crio.conf.d",
    "docker_config": "/etc/docker/daemon.json",
    "hooks_dir": "/usr/share/containers/oci/hooks.d",
}
DROP_IN_NAME = {"containerd": "99-gpuhook.toml", "crio": "99-gpuhook.conf"}
HOOK_FILE = "gpuhook.json"
PACKAGE = "gpuhook"
DPKG_INFO_DIR = "/var/lib/dpkg/info"
RESTART = {
    "containerd": "systemctl restart containerd",
    "crio": "systemctl restart crio",
    "docker": "systemctl restart docker",
    "podman": "",
}


class InstallError(Exception):
    """The file cannot be edited safely; the message says which file and why."""


@dataclass(frozen=True)
class Change:
    path: str
    old: bytes | None  # None: the file does not exist
    new: bytes | None  # None: remove the file
    backup: str | None = None  # install: copy `old` here first (kept if it exists already)
    drop_backup: str | None = None  # uninstall: the backup that `new` came from, to remove

    @property
    def changes(self) -> bool:
        return self.old != self.new


@dataclass(frozen=True)
class Options:
    runtime: str
    name: str = "nvidia"
    config: str | None = None
    set_as_default: bool = False
    drop_in: bool = False
    drop_in_dir: str | None = None
    hooks_dir: str | None = None
    runtime_binary: str = ""
    hook_binary: str = ""
    hook_config: str | None = None
    dpkg_info_dir: str = DPKG_INFO_DIR  # where <package>.list names the files a .deb owns


# ---- locating the executables -----------------------------------------------------------------

def find_executable(name: str) -> str:
    """`name` next to the running gpuhook script, next to the interpreter, else on PATH."""
    for d in (os.path.dirname(os.path.abspath(sys.argv[0])), os.path.dirname(sys.executable)):
        cand = os.path.join(d, name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    found = shutil.which(name)
    if found is None:
        raise InstallError(f"cannot find {name} next to {sys.argv[0]}, {sys.executable} or on "
                           "PATH; name it with --runtime-binary / --hook-binary")
    return os.path.abspath(found)


# ---- file helpers -----------------------------------------------------------------------------

def read_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise InstallError(f"{path}: {e.strerror}") from None


def _text(data: bytes | None, path: str) -> str:
    if data is None:
        return ""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InstallError(f"{path}: not UTF-8") from None


def diff(changes: list[Change]) -> str:
    out: list[str] = []
    for c in changes:
        if not c.changes:
            continue
        old = _text(c.old, c.path).splitlines(keepends=True)
        new = _text(c.new, c.path).splitlines(keepends=True)
        out.extend(difflib.unified_diff(old, new, "/dev/null" if c.old is None else c.path,
                                        "/dev/null" if c.new is None else c.path))
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n\\ No newline at end of file\n"
    return "".join(out)


def write(changes: list[Change]) -> list[str]:
    """Apply the changes (backup first, then atomic replace). Returns one line per action."""
    done: list[str] = []
    for c in changes:
        if c.changes and c.backup and c.old is not None and not os.path.exists(c.backup):
            write_atomic(c.backup, c.old, c.path)
            done.append(f"backup: {c.backup}")
        if c.changes and c.new is None:
            os.unlink(c.path)
            fsync_dir(os.path.dirname(os.path.abspath(c.path)))
            done.append(f"removed: {c.path}")
        elif c.changes and c.new is not None:
            write_atomic(c.path, c.new, c.path)
            done.append(f"wrote: {c.path}")
        if c.drop_backup and os.path.exists(c.drop_backup):
            os.unlink(c.drop_backup)
            done.append(f"removed backup: {c.drop_backup}")
    return done


# ---- containerd -------------------------------------------------------------------------------

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
    head = f"{style.prefix}.{_key(name)}"
    lines = [f"{style.header}[{head}]"]
    subtables = []
    for key, value in table.items():
        if isinstance(value, dict):
            subtables.append((key, value))
            continue
        lines.append(f"{style.key}{_key(key)} = {tomlkit.item(value).as_string()}")
    for key, value in subtables:
        lines += ["", f"{style.sub_header}[{head}.{_key(key)}]"]
        lines += [f"{style.sub_key}{_key(k)} = {tomlkit.item(v).as_string()}"
                  for k, v in value.items()]
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


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
    indent = _indented(text)
    if opts.set_as_default and not _is_table(_get(doc, base)):
        if _get(doc, base) is None:
            block = (f"{'  ' * (len(base) - 1) if indent else ''}[{_header(base)}]\n"
                     f"{'  ' * len(base) if indent else ''}default_runtime_name = "
                     f"{json.dumps(opts.name)}\n")
            out = _append(out, block)
        else:
            raise InstallError(f"{_header(base)} is not a table; edit it by hand")
    if existing is None:
        style = block_style(text, rt_path[:-1])
        out = _append(out, render_runtime_block(opts.name, table, style))
    elif add_options:
        style = block_style(text, rt_path[:-1])
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


# ---- plans ------------------------------------------------------------------------------------

def plan_install(opts: Options) -> tuple[list[Change], str]:
    """(changes, the command that restarts the daemon or "")."""
    r = opts.runtime
    if r == "containerd":
        return _containerd_install(opts), RESTART[r]
    if r == "crio":
        return [_owned_file(_owned_path(opts), crio_drop_in(opts).encode())], RESTART[r]
    if r == "docker":
        return [_docker_install(opts)], RESTART[r]
    if r == "podman":
        return [_owned_file(_owned_path(opts), hooks_json(opts).encode())], RESTART[r]
    raise InstallError(f"unknown runtime {r!r}")


def plan_uninstall(opts: Options) -> tuple[list[Change], str]:
    r = opts.runtime
    if r == "containerd":
        return _containerd_uninstall(opts), RESTART[r]
    if r in ("crio", "podman"):
        return [_remove_owned(_owned_path(opts), opts)], RESTART[r]
    if r == "docker":
        return [_docker_uninstall(opts)], RESTART[r]
    raise InstallError(f"unknown runtime {r!r}")


def _owned_path(opts: Options) -> str:
    """The whole file gpuhook writes for CRI-O (a drop-in) or podman (a hooks.d entry)."""
    if opts.runtime == "crio":
        return os.path.join(opts.drop_in_dir or DEFAULTS["crio_drop_in_dir"],
                            DROP_IN_NAME["crio"])
    return os.path.join(opts.hooks_dir or DEFAULTS["hooks_dir"], HOOK_FILE)


def _owned_file(path: str, content: bytes) -> Change:
    old = read_file(path)
    return Change(path, old, content, backup=path + BACKUP_SUFFIX)


def _remove_owned(path: str, opts: Options) -> Change:
    old = read_file(path)
    backup = read_file(path + BACKUP_SUFFIX)
    if backup is not None:
        return Change(path, old, backup, drop_backup=path + BACKUP_SUFFIX)
    if old is not None and _packaged(path, opts.dpkg_info_dir):
        raise InstallError(f"{path} belongs to package {PACKAGE} (listed in "
                           f"{opts.dpkg_info_dir}/{PACKAGE}.list); uninstall leaves it alone: "
                           f"remove the package instead (apt-get remove {PACKAGE})")
    return Change(path, old, None)


def _packaged(path: str, info_dir: str) -> bool:
    """Whether dpkg's file list of the package names `path` (read, dpkg is not run)."""
    wanted = {os.path.normpath(os.path.abspath(path)), os.path.realpath(path)}
    lists = [os.path.join(info_dir, f"{PACKAGE}.list"),
             *glob.glob(os.path.join(glob.escape(info_dir), f"{PACKAGE}:*.list"))]
    for name in lists:
        try:
            with open(name, encoding="utf-8", errors="replace") as f:
                listed = {os.path.normpath(line.rstrip("\n")) for line in f if line.strip()}
        except FileNotFoundError:
            continue
        except OSError as e:
            raise InstallError(f"{name}: {e.strerror}") from None
        if wanted & listed:
            return True
    return False


def _containerd_config(opts: Options) -> str:
    return opts.config or DEFAULTS["containerd_config"]


def _drop_in_path(opts: Options) -> str:
    return os.path.join(opts.drop_in_dir or DEFAULTS["containerd_drop_in_dir"],
                        DROP_IN_NAME["containerd"])


def _containerd_install(opts: Options) -> list[Change]:
    path = _containerd_config(opts)
    old = read_file(path)
    text = _text(old, path)
    drop_in = _drop_in_path(opts) if opts.drop_in else None
    try:
        main, drop_text = containerd_edit(text, opts, drop_in)
    except tomlkit.exceptions.TOMLKitError as e:
        raise InstallError(f"{path}: {e}") from None
    changes = [Change(path, old, main.encode(), backup=path + BACKUP_SUFFIX)]
    if drop_in is not None and drop_text is not None:
        # The drop-in first: the main config never imports a file that is not there yet.
        changes.insert(0, _owned_file(drop_in, drop_text.encode()))
    return changes


def _containerd_uninstall(opts: Options) -> list[Change]:
    path = _containerd_config(opts)
    old = read_file(path)
    if old is None:
        raise InstallError(f"{path}: no such file")
    backup_path = path + BACKUP_SUFFIX
    backup = read_file(backup_path)
    drop_in = _drop_in_path(opts)
    # The main config first, the drop-in after: never an import of a missing file.
    last: list[Change] = [_remove_owned(drop_in, opts)] if os.path.exists(drop_in) else []
    text = _text(old, path)
    try:
        doc = tomlkit.parse(text)
        bdoc = tomlkit.parse(_text(backup, backup_path)) if backup is not None else None
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


# ---- CRI-O, Docker, hooks.d -------------------------------------------------------------------

def crio_drop_in(opts: Options) -> str:
    lines = ["# Written by `gpuhook install --runtime crio`; `gpuhook uninstall` removes it."]
    if opts.set_as_default:
        lines += ["[crio.runtime]", f"default_runtime = {json.dumps(opts.name)}", ""]
    lines += [f"[crio.runtime.runtimes.{_key(opts.name)}]",
              f"runtime_path = {json.dumps(opts.runtime_binary)}",
              'runtime_type = "oci"']
    return "\n".join(lines) + "\n"


def hooks_json(opts: Options) -> str:
    args = list(HOOK_ARGS)
    if opts.hook_config:
        args += ["--config", opts.hook_config]
    hook = {"version": "1.0.0",
            "hook": {"path": opts.hook_binary, "args": args, "env": list(HOOK_ENV)},
            "when": {"always": True},
            "stages": ["prestart"]}
    return json.dumps(hook, indent=2) + "\n"


def _load_json(path: str, data: bytes | None) -> dict[str, Any]:
    if data is None or not data.strip():
        return {}
    try:
        value = json.loads(data)
    except ValueError as e:
        raise InstallError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(value, dict):
        raise InstallError(f"{path}: expected a JSON object")
    return value


def _docker_install(opts: Options) -> Change:
    path = opts.config or DEFAULTS["docker_config"]
    return _docker_edit(path, read_file(path), opts)


def _docker_edit(path: str, old: bytes | None, opts: Options) -> Change:
    data = _load_json(path, old)
    want = dict(data)
    runtimes = want.get("runtimes") or {}
    if not isinstance(runtimes, dict):
        raise InstallError(f"{path}: runtimes must be an object")
    prev = runtimes.get(opts.name) or {}
    if not isinstance(prev, dict):
        raise InstallError(f"{path}: runtimes.{opts.name} must be an object")
    entry = {**prev, "path": opts.runtime_binary}
    runtimes = {**runtimes, opts.name: entry}
    want["runtimes"] = runtimes
    if opts.set_as_default:
        want["default-runtime"] = opts.name
    if want == data and old is not None:
        return Change(path, old, old)
    return Change(path, old, (json.dumps(want, indent=4) + "\n").encode(),
                  backup=path + BACKUP_SUFFIX)


def _docker_uninstall(opts: Options) -> Change:
    path = opts.config or DEFAULTS["docker_config"]
    old = read_file(path)
    if old is None:
        raise InstallError(f"{path}: no such file")
    backup_path = path + BACKUP_SUFFIX
    backup = read_file(backup_path)
    data = _load_json(path, old)
    before = _load_json(backup_path, backup) if backup is not None else None

    def strip(d: dict[str, Any]) -> dict[str, Any]:
        d = json.loads(json.dumps(d))
        if isinstance(d.get("runtimes"), dict):
            d["runtimes"].pop(opts.name, None)
            if not d["runtimes"] and (before is None or "runtimes" not in before):
                d.pop("runtimes")  # install made it; an empty one that was there stays
        if d.get("default-runtime") == opts.name:
            d.pop("default-runtime")
            if before is not None and "default-runtime" in before:
                d["default-runtime"] = before["default-runtime"]
        return d

    if backup is not None and _docker_made_from(path, backup, old, data, opts):
        return Change(path, old, backup, drop_backup=backup_path)
    out = strip(data)
    if before is not None:
        prev = (before.get("runtimes") or {}).get(opts.name)
        if prev is not None:
            out.setdefault("runtimes", {})[opts.name] = prev
    return Change(path, old, (json.dumps(out, indent=4) + "\n").encode(),
                  drop_backup=backup_path if backup is not None else None)


def _docker_made_from(path: str, backup: bytes, current: bytes, data: dict[str, Any],
                      opts: Options) -> bool:
    """Whether `current` is byte for byte what install makes of `backup`."""
    ours = (data.get("runtimes") or {}).get(opts.name) if isinstance(
        data.get("runtimes"), dict) else None
    binary = ours.get("path", "") if isinstance(ours, dict) else ""
    for default in (False, True):
        try:
            made = _docker_edit(path, backup, dataclasses.replace(
                opts, set_as_default=default, runtime_binary=str(binary)))
        except InstallError:
            continue
        if made.new == current:
            return True
    return False
