"""The bounds of one decision-log record: every string cut to a length, every list to a count of
items (its full length kept beside it), the whole record to a byte size (log_record.py says
which env keys may be in it). Apart from the decision stages: the createContainer hook logs
through this without loading them."""

from __future__ import annotations

from gpuhook import fastjson
from gpuhook.limits import MAX_MESSAGE_CHARS
from gpuhook.record import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

MAX_LOG_VALUE = 256  # characters of an env value or an ignored value (container text)
MAX_LOG_STRING = 1024  # characters of any other string (notes, applied steps, paths)
MAX_LOG_ITEMS = 32  # items of any one list (ids, ignored values, notes, applied steps)
MAX_RECORD_BYTES = 16384  # one JSON line, newline included
_KEEP_ALWAYS = ("time", "event", "id", "pid", "bundle", "decision", "source", "error")


def cut(text: str, limit: int = MAX_LOG_STRING) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...(+{len(text) - limit} chars)"


def bounded_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """`record` with strings cut, lists cut (`<key>_count` keeps a cut list's length), and, if
    the JSON line is still over MAX_RECORD_BYTES, its largest fields replaced by their sizes."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, (list, tuple)) and len(value) > MAX_LOG_ITEMS:
            out[f"{key}_count"] = len(value)
        if isinstance(value, str):
            out[key] = cut(value, MAX_MESSAGE_CHARS if key == "error" else MAX_LOG_STRING)
        else:
            out[key] = _bound(value, 0)
    while _size(out) > MAX_RECORD_BYTES:
        victim = max((k for k in out if k not in _KEEP_ALWAYS), key=lambda k: _size(out[k]),
                     default=None)
        if victim is None:
            out = {k: cut(v, 64) if isinstance(v, str) else v
                   for k, v in out.items() if k in _KEEP_ALWAYS}
            break
        out[victim] = f"(dropped: {_size(out[victim])} bytes over the record cap)"
        out["truncated"] = True
    return out


def _bound(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return cut(value)
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if depth >= 3:
        return cut(str(value))
    if isinstance(value, dict):  # every mapping gpuhook logs is one; other objects: text
        items = list(value.items())[:MAX_LOG_ITEMS]
        return {cut(str(k), 64): _bound(v, depth + 1) for k, v in items}
    if isinstance(value, (list, tuple)):
        return [_bound(v, depth + 1) for v in value[:MAX_LOG_ITEMS]]
    return cut(str(value))


def _size(value: Any) -> int:
    return len(fastjson.dumps(value, separators=(",", ":"), default=str))
