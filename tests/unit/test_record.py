"""gpuhook.record behaves as `dataclasses` for everything gpuhook's records use: each case builds
the same class with both and compares what an instance does."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gpuhook import record

REPO = Path(__file__).resolve().parents[2]


def _pair(body: Callable[[Any, Any], type]) -> tuple[type, type]:
    """The class `body` defines, once with dataclasses and once with gpuhook.record."""
    return body(dataclasses.dataclass, dataclasses.field), body(record.dataclass, record.field)


def _point(dc: Any, fld: Any) -> type:
    @dc(frozen=True)
    class Point:
        x: int
        y: str = "a"
        tags: tuple[str, ...] = ()
        notes: list[str] = fld(default_factory=list)
        extra: int = fld(default=7)
    return Point


def _outcome(call: Callable[[], object]) -> tuple[str, str]:
    try:
        return "ok", repr(call())
    except Exception as e:  # the kind of error and its words are part of the behaviour
        return type(e).__name__, str(e).replace("__init__() ", "").split(".", 1)[-1]


CALLS: list[tuple[str, Callable[[type], object]]] = [
    ("keywords", lambda c: c(x=1, y="b")),
    ("positional", lambda c: c(1, "b", ("t",))),
    ("defaults and factories filled", lambda c: c(x=3)),
    ("a missing required field is an error", lambda c: c(y="b")),
    ("an unknown keyword is an error", lambda c: c(x=1, z=2)),
    ("an unknown keyword beside a missing field is an error", lambda c: c(z=2)),
    ("too many positional arguments is an error", lambda c: c(1, "b", (), [], 7, 8)),
    ("a field given twice is an error", lambda c: c(1, x=2)),
    ("eq: same values", lambda c: c(x=1) == c(x=1)),
    ("eq: other values", lambda c: c(x=1) == c(x=2)),
    ("eq: a tuple is not equal", lambda c: c(x=1) == (1, "a", (), [], 7)),
    ("hash of a hashable record", lambda c: hash(c(x=1, notes=None)) == hash(c(x=1, notes=None))),
    ("hash of a list field is an error", lambda c: hash(c(x=1))),
    ("factories give a new object each time", lambda c: c(x=1).notes is c(x=1).notes),
    ("a class attribute holds the default", lambda c: vars(c)["y"]),
]


@pytest.mark.parametrize(("name", "call"), CALLS, ids=[c[0] for c in CALLS])
def test_an_instance_behaves_as_a_frozen_dataclass(
        name: str, call: Callable[[type], object]) -> None:
    std, ours = _pair(_point)
    assert _outcome(lambda: call(ours)) == _outcome(lambda: call(std))


@pytest.mark.parametrize("attr", ["x", "new"], ids=["a field", "a new attribute"])
def test_assignment_and_deletion_raise_frozen_instance_error(attr: str) -> None:
    _, ours = _pair(_point)
    p = ours(x=1)
    with pytest.raises(record.FrozenInstanceError, match=f"cannot assign to field '{attr}'"):
        setattr(p, attr, 2)
    with pytest.raises(record.FrozenInstanceError, match="cannot delete field"):
        delattr(p, "x")
    assert isinstance(record.FrozenInstanceError(), AttributeError)


def test_repr_names_every_field_in_order_like_dataclasses() -> None:
    std, ours = _pair(_point)
    assert repr(ours(x=1, notes=["n"])) == repr(std(x=1, notes=["n"]))


def test_replace_changes_only_the_named_fields_and_runs_post_init() -> None:
    seen: list[int] = []

    def body(dc: Any, fld: Any) -> type:
        @dc(frozen=True)
        class Checked:
            a: int
            b: int = 0

            def __post_init__(self) -> None:
                seen.append(self.a)
                if self.a < 0:
                    raise ValueError("a < 0")
        return Checked

    std, ours = _pair(body)
    for cls, repl in ((std, dataclasses.replace), (ours, record.replace)):
        seen.clear()
        c = repl(cls(1, 2), b=5)
        assert (c.a, c.b, seen) == (1, 5, [1, 1])
        with pytest.raises(ValueError, match="a < 0"):
            repl(c, a=-1)
        with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
            repl(c, nope=1)


def test_a_subclass_adds_its_fields_after_its_base() -> None:
    def body(dc: Any, fld: Any) -> type:
        @dc(frozen=True)
        class Base:
            a: int
            b: int = 1

        @dc(frozen=True)
        class Child(Base):
            c: int = 2
        return Child

    std, ours = _pair(body)
    assert repr(ours(0, c=5)) == repr(std(0, c=5))
    assert record.fields(ours) == tuple(f.name for f in dataclasses.fields(std))


@pytest.mark.parametrize("body", [
    pytest.param(lambda dc, fld: dc(frozen=True)(type("M", (), {"__annotations__": {"a": "int"},
                                                                "a": []})),
                 id="a mutable default"),
    pytest.param(lambda dc, fld: dc(frozen=True)(type("O", (), {
        "__annotations__": {"a": "int", "b": "int"}, "a": 1})),
        id="a required field after a default"),
])
def test_class_definitions_dataclasses_refuse_are_refused(body: Callable[[Any, Any], type],
                                                            ) -> None:
    with pytest.raises((TypeError, ValueError)):
        body(dataclasses.dataclass, dataclasses.field)
    with pytest.raises((TypeError, ValueError)):
        body(record.dataclass, record.field)


@pytest.mark.parametrize("option", [{"order": True}, {"slots": True}, {"kw_only": True},
                                    {"eq": False}], ids=["order", "slots", "kw_only", "eq"])
def test_options_it_does_not_implement_fail_at_import_not_later(option: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        record.dataclass(frozen=True, **option)
    with pytest.raises(TypeError):
        record.field(default=1, **option)


def test_a_mutable_record_takes_assignment_and_is_unhashable_like_a_dataclass() -> None:
    def body(dc: Any, fld: Any) -> type:
        @dc
        class Report:
            done: list[str] = fld(default_factory=list)
            cache: str | None = None
        return Report

    std, ours = _pair(body)
    for cls in (std, ours):
        r = cls()
        r.cache = "x"
        r.done.append("a")
        assert repr(r).endswith(".Report(done=['a'], cache='x')")
        assert r == cls(["a"], "x")
        with pytest.raises(TypeError, match="unhashable"):
            hash(r)


# What the start of a GPU container imports (the hook applying a plan, the shim writing one, the
# createContainer hook): none of it may pull in the modules gpuhook.record exists to avoid.
GPU_PATH = ["gpuhook.runtime.prestart", "gpuhook.runtime.pipeline", "gpuhook.inventory.load",
            "gpuhook.inventory.snapshot", "gpuhook.decide.render", "gpuhook.runtime.log_record",
            "gpuhook.enforce", "gpuhook.enforce.driver", "gpuhook.runtime.shim",
            "gpuhook.runtime.spec_edit", "gpuhook.runtime.create_container", "gpuhook.config"]
HEAVY = ["dataclasses", "typing", "inspect", "ast", "dis", "copy", "json", "re", "enum",
         "collections", "signal", "prctl"]


def test_the_gpu_path_imports_neither_dataclasses_nor_typing() -> None:
    # As the launchers run it: -I -S, with the package and its dependencies' directories
    # (python-prctl's _prctl) on sys.path, and nothing that site would import.
    paths = [str(REPO), *(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))]
    code = (f"import sys\nsys.path[:0] = {paths!r}\nfor m in {GPU_PATH!r}: __import__(m)\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                         text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "[]"


def test_a_cuda_image_request_is_decided_without_re_json_or_typing(tmp_path: Path) -> None:
    """The decision for a real CUDA image (its NVIDIA_REQUIRE_CUDA, judged per granted GPU) on
    the shipped 8-GPU fake, from the inventory snapshot as a node starts containers: granted,
    and none of the modules above loaded on the way."""
    import json

    from tests.unit.decide.test_requirements_arch_brand import CUDA_11_8
    from tests.unit.specs import MIG8, MIG8_HOST, spec

    cfg, cache, log = tmp_path / "config.toml", tmp_path / "run/inventory.json", tmp_path / "log"
    cfg.write_text(f'inventory = "{MIG8}"\nhost-root = "{MIG8_HOST}"\ndriver-files = false\n'
                   f'inventory-cache = "{cache}"\nlog-file = "{log}"\n')
    subprocess.run([sys.executable, "-m", "gpuhook", "inventory", "refresh", "--config",
                    str(cfg)], check=True, capture_output=True, cwd=REPO)
    raw = json.dumps(spec(env=[f"NVIDIA_REQUIRE_CUDA={CUDA_11_8}"], ids=["2", "3"])).encode()
    paths = [str(REPO), *(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))]
    code = (f"import sys\nsys.path[:0] = {paths!r}\n"
            "from gpuhook.config import load_config\n"
            "from gpuhook.decide.spec import parse_spec\n"
            "from gpuhook.runtime.pipeline import plan_for_spec\n"
            f"plan = plan_for_spec(parse_spec({raw!r}), load_config({str(cfg)!r}))\n"
            "print(sorted(d.path for d in plan.device_nodes if d.path[-1].isdigit()))\n"
            "print([n for n in plan.notes if 'snapshot' in n])\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                         text=True, check=True, cwd=REPO).stdout.splitlines()
    assert out[0] == "['/dev/nvidia2', '/dev/nvidia3']"
    assert "fresh snapshot" in out[1], "decided from the snapshot, as a start is"
    assert out[2] == "[]"
