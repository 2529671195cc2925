"""`gpuhook hook create-container`'s arguments: the `--driver` JSON the shim writes from a Plan,
read back exactly, and every malformed form refused with one line before any work."""

from __future__ import annotations

import dataclasses
import json

import pytest

from gpuhook.decide.plan import DriverFile, Symlink
from gpuhook.enforce.driver import DriverWork
from gpuhook.errors import InputError
from gpuhook.runtime import create_container as cc
from tests.unit import specs

PLAN = dataclasses.replace(
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
