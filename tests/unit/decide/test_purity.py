"""decide/ is pure: it imports no module that does I/O. Read from the source (not from what happens
to be loaded), so a new import anywhere in decide/ is judged the day it is written."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DECIDE = Path(__file__).resolve().parents[3] / "gpuhook" / "decide"

# Data models, config and errors are fine; everything else of gpuhook's is a stage that reads,
# writes or runs something.
ALLOWED_GPUHOOK = ("gpuhook.decide", "gpuhook.errors", "gpuhook.config", "gpuhook.limits",
                   "gpuhook.inventory.model", "gpuhook.text", "gpuhook.record", "gpuhook.fastjson")
# Standard-library modules whose use is computation only.
ALLOWED_STDLIB = {"__future__", "collections", "collections.abc", "dataclasses", "typing", "re",
                  "json", "enum", "functools", "itertools", "posixpath", "string", "types"}


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: inside decide/
                base = "gpuhook.decide" + (f".{base}" if base else "")
            if base == "gpuhook":
                names.extend(f"gpuhook.{alias.name}" for alias in node.names)
            else:
                names.append(base)
    return names


def _allowed(name: str) -> bool:
    if name == "gpuhook" or name.startswith("gpuhook."):
        return any(name == a or name.startswith(a + ".") for a in ALLOWED_GPUHOOK)
    return name in ALLOWED_STDLIB


SOURCES = sorted(DECIDE.glob("*.py"))


def test_decide_has_modules() -> None:
    assert len(SOURCES) >= 6


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_decide_module_imports_nothing_that_does_io(path: Path) -> None:
    bad = [name for name in _imports(path) if not _allowed(name)]
    assert bad == [], f"{path.name} imports {bad}: decide/ must stay pure"


@pytest.mark.parametrize("name", ["gpuhook.host", "gpuhook.host.proc", "gpuhook.enforce.nodes",
                                  "gpuhook.runtime.pipeline", "gpuhook.engines", "gpuhook.cli",
                                  "gpuhook.inventory.load", "gpuhook.inventory.nvml",
                                  "gpuhook.inventory.fake", "gpuhook.inventory.snapshot", "os",
                                  "subprocess", "socket", "ctypes", "pathlib", "io", "shutil"])
def test_the_rule_refuses_io_modules(name: str) -> None:
    assert not _allowed(name)
