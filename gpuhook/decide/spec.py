"""Read the OCI runtime spec (`config.json`) and hook state: only the fields gpuhook needs,
each checked, with errors that name the field. The spec is never rewritten from this view."""

from __future__ import annotations

from gpuhook import fastjson
from gpuhook.errors import InputError
from gpuhook.limits import MAX_SPEC_BYTES, MAX_STATE_BYTES
from gpuhook.record import TYPE_CHECKING, dataclass, field

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["MAX_SPEC_BYTES", "MAX_STATE_BYTES", "SpecView", "State", "parse_spec", "parse_state",
           "spec_view"]

MAX_ENV_ENTRIES = 65536
MAX_MOUNTS = 16384
MAX_ANNOTATIONS = 16384


@dataclass(frozen=True)
class Mount:
    destination: str
    source: str | None
    type: str | None
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class SpecView:
    """What a container asks for, as written in its spec."""

    oci_version: str
    env: Mapping[str, str]
    mounts: tuple[Mount, ...]
    capabilities: frozenset[str]  # bounding set (flat list for ociVersion 1.0.0-rc1..rc5)
    root_path: str | None
    has_capabilities: bool
    # The spec's string-valued annotations (containerd passes the allow-listed pod and container
    # annotations here; the device plugin's CDI requests arrive as container annotations).
    annotations: Mapping[str, str] = field(default_factory=dict)
    # linux.namespaces has a "user" entry: the container's capabilities are held in its own user
    # namespace (a new one, or the one at `path`), never in the host's.
    user_namespace: bool = False


@dataclass(frozen=True)
class State:
    oci_version: str
    id: str
    pid: int
    bundle: str
    annotations: Mapping[str, str]


def _check_size(data: bytes, limit: int, what: str) -> None:
    if len(data) > limit:
        raise InputError(f"{what}: larger than {limit} bytes")


def decode_json(data: bytes, what: str) -> object:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{what}: not UTF-8 (byte {e.start})") from None
    try:
        return fastjson.loads(text)
    except ValueError:
        pass  # json names the problem (or reads what the C scanner alone leaves to it)
    except RecursionError:
        raise InputError(f"{what}: invalid JSON: nested too deeply") from None
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{what}: invalid JSON: {e.msg} at line {e.lineno} column {e.colno}"
                         ) from None
    except RecursionError:
        raise InputError(f"{what}: invalid JSON: nested too deeply") from None
    except ValueError:  # not a JSONDecodeError: an integer past Python's digit limit
        raise InputError(f"{what}: invalid JSON: a number with more digits than Python "
                         "converts (sys.get_int_max_str_digits)") from None


def parse_spec(data: bytes, what: str = "config.json") -> SpecView:
    _check_size(data, MAX_SPEC_BYTES, what)
    return spec_view(decode_json(data, what), what)


def spec_view(spec: object, what: str = "config.json") -> SpecView:
    """The checked view of a spec already decoded from JSON (the runtime shim edits that same
    object afterwards, so it is decoded once)."""
    top = _obj(spec, what)
    oci = _opt_str(top, "ociVersion", what) or ""
    process = top.get("process")
    if process is None:
        raise InputError(f"{what}: missing process")
    proc = _obj(process, f"{what}: process")
    env = _env(proc.get("env", []), f"{what}: process.env")
    caps, has_caps = _capabilities(proc.get("capabilities"), f"{what}: process.capabilities")
    mounts_raw = top.get("mounts", [])
    if not isinstance(mounts_raw, list):
        raise InputError(f"{what}: mounts must be a list")
    if len(mounts_raw) > MAX_MOUNTS:
        raise InputError(f"{what}: {len(mounts_raw)} mounts, more than {MAX_MOUNTS}")
    mounts = tuple(_mount(m, f"{what}: mounts[{i}]") for i, m in enumerate(mounts_raw))
    root_path = None
    if "root" in top:
        root = _obj(top["root"], f"{what}: root")
        root_path = _opt_str(root, "path", f"{what}: root")
    userns = _has_user_namespace(top.get("linux"), f"{what}: linux")
    return SpecView(oci, env, mounts, caps, root_path, has_caps,
                    _annotations(top.get("annotations"), f"{what}: annotations"), userns)


def _has_user_namespace(raw: object, what: str) -> bool:
    if raw is None:
        return False
    if not isinstance(raw, dict):
        raise InputError(f"{what} must be an object, got {_kind(raw)}")
    namespaces = raw.get("namespaces")
    if namespaces is None:
        return False
    if not isinstance(namespaces, list):
        raise InputError(f"{what}.namespaces must be a list, got {_kind(namespaces)}")
    found = False
    for i, ns in enumerate(namespaces):  # runc refuses a spec whose entries are not objects
        found = _opt_str(_obj(ns, f"{what}.namespaces[{i}]"), "type",
                         f"{what}.namespaces[{i}]") == "user" or found
    return found


def parse_state(data: bytes, what: str = "hook state (stdin)") -> State:
    _check_size(data, MAX_STATE_BYTES, what)
    top = _obj(decode_json(data, what), what)
    pid = top.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise InputError(f"{what}: pid must be a positive integer, got {pid!r}")
    bundle = _opt_str(top, "bundle", what)
    if not bundle:
        raise InputError(f"{what}: missing bundle")
    annotations_raw = top.get("annotations") or {}
    annotations = _obj(annotations_raw, f"{what}: annotations")
    return State(
        oci_version=_opt_str(top, "ociVersion", what) or "",
        id=_opt_str(top, "id", what) or "",
        pid=pid,
        bundle=bundle,
        annotations={k: v for k, v in annotations.items() if isinstance(v, str)},
    )


def _obj(value: object, what: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise InputError(f"{what}: expected an object, got {_kind(value)}")
    return value


def _opt_str(obj: Mapping[str, object], key: str, what: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"{what}: {key} must be a string, got {_kind(value)}")
    _no_nul(value, f"{what}: {key}")
    return value


def _no_nul(value: str, what: str) -> None:
    if "\0" in value:
        raise InputError(f"{what} contains a NUL byte")


def _env(raw: object, what: str) -> dict[str, str]:
    if not isinstance(raw, list):
        raise InputError(f"{what} must be a list, got {_kind(raw)}")
    if len(raw) > MAX_ENV_ENTRIES:
        raise InputError(f"{what}: {len(raw)} entries, more than {MAX_ENV_ENTRIES}")
    env: dict[str, str] = {}
    for i, item in enumerate(raw):
        if not isinstance(item, str):
            raise InputError(f"{what}[{i}] must be a string, got {_kind(item)}")
        _no_nul(item, f"{what}[{i}]")
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"{what}[{i}] is not KEY=VALUE: {item[:60]!r}")
        env[key] = value  # the last definition wins, as in a Go map built from the list
    return env


def _capabilities(raw: object, what: str) -> tuple[frozenset[str], bool]:
    if raw is None:
        return frozenset(), False
    if isinstance(raw, list):
        # ociVersion 1.0.0-rc1 .. rc5: capabilities was one flat list.
        return frozenset(_str_list(raw, what)), True
    caps = _obj(raw, what)
    return frozenset(_str_list(caps.get("bounding") or [], f"{what}.bounding")), True


def _str_list(raw: object, what: str) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise InputError(f"{what} must be a list of strings")
    return raw


def _mount(raw: object, what: str) -> Mount:
    m = _obj(raw, what)
    dest = _opt_str(m, "destination", what)
    if not dest:
        raise InputError(f"{what}: missing destination")
    options = m.get("options")
    opts = tuple(_str_list(options, f"{what}: options")) if options is not None else ()
    return Mount(dest, _opt_str(m, "source", what), _opt_str(m, "type", what), opts)


def _annotations(raw: object, what: str) -> dict[str, str]:
    """The string-valued annotations (the runtime spec defines no other kind), bounded."""
    if raw is None:
        return {}
    obj = _obj(raw, what)
    if len(obj) > MAX_ANNOTATIONS:
        raise InputError(f"{what}: {len(obj)} entries, more than {MAX_ANNOTATIONS}")
    out: dict[str, str] = {}
    for key, value in obj.items():
        if isinstance(value, str):
            _no_nul(key + value, f"{what}[{key[:60]!r}]")
            out[key] = value
    return out


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value),
                                                                        type(value).__name__)
