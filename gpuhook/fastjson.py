"""JSON through the C accelerator (`_json`) alone: what `json` itself runs for `loads` and for
`dumps` without indent, without importing `json`, whose decoder and encoder import `re` (and
with it `enum`, `functools`, `collections`): ~5 ms of every GPU start, each time a fresh
interpreter. `loads` gives no detail on bad input (ValueError); a caller that must name the
problem asks `json` then, on that rare path. tests/unit/test_fastjson.py holds both side by side.
"""

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["dumps", "loads"]

_WS = " \t\n\r"


class _Ctx:
    # The attributes the C scanner reads from json.JSONDecoder (its defaults).
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity, as json.loads reads them


_scan = _json.make_scanner(_Ctx())  # type: ignore[arg-type]  # duck-typed: the attributes above


def loads(data: "bytes | str") -> object:
    """json.loads of one document (UTF-8 if bytes). ValueError on anything odd."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        start = len(text) - len(text.lstrip(_WS))
        obj, end = _scan(text, start)
    except Exception as e:
        # On bad input the scanner raises StopIteration, or a SystemError when json.decoder
        # (where its error class lives) is not loaded: either way, not ours to explain here.
        raise ValueError(f"not JSON: {type(e).__name__}") from None
    if text[end:].strip(_WS):
        raise ValueError("extra data after the JSON document")
    return obj


def _not_serializable(o: object) -> object:  # json.JSONEncoder.default's words
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def dumps(obj: object, *, separators: "tuple[str, str]" = (", ", ": "), sort_keys: bool = False,
          ensure_ascii: bool = True, allow_nan: bool = True,
          default: "Callable[[object], object] | None" = None) -> str:
    """json.dumps(obj, ...) with these options (no indent), checking for cycles as it does."""
    encode = _json.encode_basestring_ascii if ensure_ascii else _json.encode_basestring
    item_separator, key_separator = separators
    chunks = _json.make_encoder(
        {}, default or _not_serializable, encode, None, key_separator, item_separator,
        sort_keys, False, allow_nan)(obj, 0)
    return "".join(chunks)
