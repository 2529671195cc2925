"""gpuhook.fastjson reads and writes what `json` does, byte for byte, for every option gpuhook
passes; it never imports `json` or `re` on the way."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuhook import fastjson

REPO = Path(__file__).resolve().parents[2]

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                               max_size=4),
    max_leaves=20)
OPTIONS = [{}, {"separators": (",", ":")}, {"separators": (",", ":"), "sort_keys": True},
           {"ensure_ascii": False, "separators": (",", ":"), "allow_nan": False}]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(values, st.sampled_from(OPTIONS))
def test_dumps_writes_what_json_writes_and_loads_reads_it_back(value: object,
                                                               options: dict[str, Any]) -> None:
    text = fastjson.dumps(value, **options)
    assert text == json.dumps(value, **options)
    assert fastjson.loads(text) == json.loads(text)
    assert fastjson.loads(text.encode()) == json.loads(text)


@pytest.mark.parametrize("text", [
    '  {"a": [1, 2.5, -0.0, 1e400, "\\u00e9\\ud83d\\ude00"], "b": null}\n', "[NaN, -Infinity]",
    '"\\u2028"', "0", "[]"])
def test_loads_reads_what_json_reads(text: str) -> None:
    got, want = fastjson.loads(text), json.loads(text)
    assert repr(got) == repr(want) or (isinstance(got, list) and all(
        math.isnan(g) if isinstance(g, float) and math.isnan(g) else g == w
        for g, w in zip(got, want, strict=True)))


@pytest.mark.parametrize("text", ["", "  ", "{", '{"a": 1} x', "[1,]", "'a'", "\xff", "nul",
                                  '{"a": 1}{"b": 2}'])
def test_what_json_refuses_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        fastjson.loads(text)


@pytest.mark.parametrize(("value", "options", "error"), [
    pytest.param(float("nan"), {"allow_nan": False}, ValueError, id="NaN when not allowed"),
    pytest.param({1j}, {}, TypeError, id="an object json cannot write"),
])
def test_what_json_cannot_write_raises_the_same_error(value: object, options: dict[str, Any],
                                                      error: type[Exception]) -> None:
    with pytest.raises(error):
        json.dumps(value, **options)
    with pytest.raises(error):
        fastjson.dumps(value, **options)


def test_a_cycle_is_refused_as_json_refuses_it() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        fastjson.dumps(loop)


def test_default_writes_what_json_writes_for_an_unknown_object() -> None:
    value = {"p": Path("/x"), "b": b"y"}
    assert fastjson.dumps(value, default=str) == json.dumps(value, default=str)


def test_it_imports_neither_json_nor_re() -> None:
    code = (f"import sys\nsys.path.insert(0, {str(REPO)!r})\nfrom gpuhook import fastjson\n"
            "fastjson.loads(fastjson.dumps({'a': [1, 2.5, None]}))\n"
            "print(sorted(m for m in ('json', 're', 'enum') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"
