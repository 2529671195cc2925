"""`gpuhook hook create-container`'s arguments: the `--driver` JSON the shim writes from a Plan,
read back exactly, and every malformed form refused with one line before any work."""

from __future__ import annotations

import json

import pytest

from gpuhook import record
from gpuhook.decide.plan import DriverFile, Symlink
from gpuhook.enforce.driver import DriverWork
from gpuhook.errors import InputError
from gpuhook.runtime import create_container as cc
from tests.unit import specs

PLAN = record.replace(
    specs.plan(specs.spec(ids=["1:0"])),
    driver_files=(DriverFile("library", "/h/libcuda.so.550.1", "libcuda.so.550.1"),
                  DriverFile("library32", "/h32/libcuda.so.550.1", "libcuda.so.550.1"),
                  DriverFile("binary", "/h/nvidia-smi", "/usr/bin/nvidia-smi")),
    symlinks=(Symlink("library", "libcuda.so.1", "libcuda.so.550.1"),),
    update_ldcache=True, proc_driver_gpus=("0000:07:00.0",))


def test_the_driver_argument_round_trips_the_plans_driver_part() -> None:
    args = cc.hook_args(PLAN, "/etc/x.toml")
    assert args[:5] == ("gpuhook", "hook", "create-container", "--config", "/etc/x.toml")
    assert args[5] == "--driver"
    assert cc.parse_driver_arg(args[6]) == DriverWork(
        (), (("library", "libcuda.so.1", "libcuda.so.550.1"),), ("library", "library32"), True,
        ("0000:07:00.0",))


BAD = [
    ("x" * (cc.MAX_DRIVER_ARG + 1), "more than"),
    ("{not json", "not the JSON"),
    (json.dumps({"symlinks": []}), "not the JSON"),
    (json.dumps({"symlinks": [["library", "a"]], "library_kinds": [], "update_ldcache": True,
                 "proc_driver_gpus": []}), "not the JSON"),
    (json.dumps({"symlinks": [], "library_kinds": ["binary"], "update_ldcache": True,
                 "proc_driver_gpus": []}), "library_kinds"),
    (json.dumps({"symlinks": [], "library_kinds": [], "update_ldcache": "yes",
                 "proc_driver_gpus": []}), "boolean"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[
    "an oversized argument is refused before parsing",
    "text that is not JSON is refused",
    "a missing key is refused",
    "a link that is not kind, path, target is refused",
    "a library kind other than library/library32 is refused",
    "update_ldcache that is not a boolean is refused",
])
def test_a_malformed_driver_argument_is_refused_with_one_line(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        cc.parse_driver_arg(text)


@pytest.mark.parametrize("args", [[], ["--driver"], ["--config", "x"], ["--bogus", "1"]],
                         ids=["no arguments", "--driver without a value", "no --driver",
                              "an unknown flag"])
def test_usage_errors_exit_2_before_reading_stdin(args: list[str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert cc.main(args) == 2
    assert "usage: gpuhook hook create-container" in capsys.readouterr().err


def _bundle(tmp_path: object, spec: object) -> str:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    (tmp_path / "config.json").write_text(spec if isinstance(spec, str) else json.dumps(spec))
    return str(tmp_path)


@pytest.mark.parametrize(("spec", "want"), [
    ({"root": {"path": "rootfs"}}, "{b}/rootfs"),
    ({"root": {"path": "/abs/root"}}, "/abs/root"),
    ({}, "{b}/rootfs"),
], ids=["a relative root.path is under the bundle", "an absolute root.path is kept",
        "no root means the bundle's rootfs"])
def test_the_rootfs_comes_from_the_bundles_spec(tmp_path: object, spec: object,
                                                 want: str) -> None:
    b = _bundle(tmp_path, spec)
    state = json.dumps({"id": "c1", "bundle": b, "pid": 1}).encode()
    assert cc.read_bundle(state) == ("c1", b, want.format(b=b))


@pytest.mark.parametrize(("state", "spec", "message"), [
    (b"{not json", {}, "not JSON"),
    (b'{"bundle": "relative/b"}', {}, "absolute path"),
    (b"x" * ((1 << 20) + 1), {}, "larger than"),
    (None, "{oops", "is not JSON"),
    (None, {"root": {"path": 3}}, "root.path must be"),
], ids=["a state that is not JSON", "a relative bundle", "an oversized state",
        "a config.json that is not JSON", "a root.path that is not a string"])
def test_a_bad_state_or_spec_is_refused_with_one_line(tmp_path: object, state: bytes | None,
                                                     spec: object, message: str) -> None:
    b = _bundle(tmp_path, spec)
    raw = state if state is not None else json.dumps({"bundle": b}).encode()
    with pytest.raises(InputError, match=message):
        cc.read_bundle(raw)
