"""What the hook and the shim need from the config before (and without) loading it: the
volume-mount roots, to tell whether a container could ask for anything, and the real runtimes,
where every runc command goes.

Both run for every container start on a node, so this reads the config file's bytes once and
does not import tomllib (~10 ms) for the common file: the two keys are read by an exact reader
for the one-line form the shipped config uses (`key = "string"`, `key = ["a", "b"]`), and the
whole file goes to tomllib only when anything could make that reader wrong (a section, a quoted
key, a multi-line string, an escape, a key given twice, another value form).

A config that does not load (a typo elsewhere, an unknown key) still gives these two keys where
they are valid: a broken config never changes which runtime a command reaches, and never stops
a container that asks for nothing. The compiled config cache (gpuhook/config_cache.py) serves
the full load (config.load_config_lenient), where tomllib would otherwise run; this reader
already needs neither, so it reads the file itself.
"""

import os

from gpuhook.limits import MAX_CONFIG_BYTES

SYSTEM_CONFIG = "/etc/gpuhook/config.toml"
ENV_CONFIG = "GPUHOOK_CONFIG"
DEFAULT_VOLUME_MOUNT_ROOT = "/var/run/nvidia-container-devices"
DEFAULT_RUNTIMES = ("runc", "crun")
ROOT_KEY = "volume-mount-root"
RUNTIMES_KEY = "runtimes"


class EarlyConfig:
    __slots__ = ("path", "roots", "runtimes")

    def __init__(self, path: "str | None", roots: "tuple[str, ...]",
                 runtimes: "tuple[str, ...]") -> None:
        self.path = path  # None: no config file, the built-in defaults
        self.roots = roots  # the default root, and the configured one when it differs
        self.runtimes = runtimes


def find_config_path(explicit: "str | None", environ: "object") -> "str | None":
    """`--config`, else $GPUHOOK_CONFIG, else /etc/gpuhook/config.toml if it exists.
    `environ` is a mapping (os.environ in production)."""
    if explicit:
        return explicit
    value = environ.get(ENV_CONFIG)  # type: ignore[attr-defined]
    if value:
        return str(value)
    return SYSTEM_CONFIG if os.path.exists(SYSTEM_CONFIG) else None


def early_config(explicit: "str | None" = None, environ: "object" = None) -> EarlyConfig:
    path = find_config_path(explicit, os.environ if environ is None else environ)
    data = b""
    if path is not None:
        from gpuhook.files import read_regular  # a FIFO or a device never blocks the read

        try:
            data = read_regular(path, MAX_CONFIG_BYTES)
        except OSError:
            data = b""  # the full path names the problem; the defaults hold here
    root, runtimes = read_keys(data)
    roots: tuple[str, ...] = (DEFAULT_VOLUME_MOUNT_ROOT,)
    if root is not None and root != DEFAULT_VOLUME_MOUNT_ROOT:
        roots = (DEFAULT_VOLUME_MOUNT_ROOT, root)
    return EarlyConfig(path, roots, runtimes or DEFAULT_RUNTIMES)


def read_keys(data: bytes) -> "tuple[str | None, tuple[str, ...] | None]":
    """(volume-mount-root, runtimes) as the config sets them, None where unset or invalid."""
    if not data or len(data) > MAX_CONFIG_BYTES:
        return None, None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, None
    simple = _simple_lines(text, (ROOT_KEY, RUNTIMES_KEY))
    if simple is None:
        return _from_toml(text)
    root = simple.get(ROOT_KEY)
    runtimes = simple.get(RUNTIMES_KEY)
    root_value = _string(root) if root is not None else None
    runtimes_value = _strings(runtimes) if runtimes is not None else None
    if (root is not None and root_value is None) or (runtimes is not None
                                                     and runtimes_value is None):
        return _from_toml(text)  # a form this reader does not know: let TOML say
    return _valid_root(root_value), _valid_runtimes(runtimes_value)


def read_string(data: bytes, key: str) -> "str | None":
    """A one-line string value of `key`, read line by line; None when unset, given twice or
    in another form. For a file TOML cannot parse (config.parse_config_lenient keeps its
    log-file and volume-mount-root with it)."""
    try:
        simple = _simple_lines(data.decode("utf-8"), (key,), strict=False)
    except UnicodeDecodeError:
        return None
    raw = simple.get(key) if simple is not None else None
    value = _string(raw) if raw is not None else None
    return None if value is None or "\\" in value else value  # an escape: not plain


def _simple_lines(text: str, keys: "tuple[str, ...]",
                  strict: bool = True) -> "dict[str, str] | None":
    """The raw values of `keys`; None when a key is given twice or (strict) when the file has
    anything that could make a line-based reading differ from TOML's."""
    if strict and ('"""' in text or "'''" in text or "\\" in text):
        return None
    found: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.lstrip(" \t")
        if strict and stripped[:1] in ("[", '"', "'"):
            return None
        for key in keys:
            if stripped.startswith(key) and stripped[len(key):].lstrip(" \t")[:1] == "=":
                if key in found:
                    return None
                found[key] = stripped[len(key):].lstrip(" \t")[1:]
    return found


def _value_and_rest(raw: str) -> "tuple[str, str] | None":
    """A one-line quoted string at the start of `raw` (no escapes: checked by the caller), and
    what follows it."""
    raw = raw.lstrip(" \t")
    quote = raw[:1]
    if quote not in ('"', "'"):
        return None
    end = raw.find(quote, 1)
    if end < 0:
        return None
    return raw[1:end], raw[end + 1:]


def _only_comment(rest: str) -> bool:
    rest = rest.strip(" \t\r")
    return not rest or rest.startswith("#")


def _string(raw: str) -> "str | None":
    parsed = _value_and_rest(raw)
    if parsed is None or not _only_comment(parsed[1]):
        return None
    return parsed[0]


def _strings(raw: str) -> "tuple[str, ...] | None":
    raw = raw.lstrip(" \t")
    if not raw.startswith("["):
        return None
    rest = raw[1:]
    items: list[str] = []
    while True:
        rest = rest.lstrip(" \t")
        if rest.startswith("]"):
            break
        parsed = _value_and_rest(rest)
        if parsed is None:
            return None
        items.append(parsed[0])
        rest = parsed[1].lstrip(" \t")
        if rest.startswith(","):
            rest = rest[1:]
        elif not rest.startswith("]"):
            return None
    return tuple(items) if _only_comment(rest[1:]) else None


def _from_toml(text: str) -> "tuple[str | None, tuple[str, ...] | None]":
    import tomllib

    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None, None
    root = table.get(ROOT_KEY)
    runtimes = table.get(RUNTIMES_KEY)
    return (_valid_root(root if isinstance(root, str) else None),
            _valid_runtimes(tuple(runtimes) if isinstance(runtimes, list) else None))


def _valid_root(value: "str | None") -> "str | None":
    # As the request parser reads a root: its non-empty components, from "/".
    if not value:
        return None
    return "/" + "/".join(p for p in value.split("/") if p)


def _valid_runtimes(value: "tuple[object, ...] | None") -> "tuple[str, ...] | None":
    if not value or not all(isinstance(v, str) and v for v in value):
        return None
    return tuple(str(v) for v in value)
