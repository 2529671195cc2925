"""The library dirs a CDI spec fixes for its createContainer hook: used as given, but still never
through a link in the rootfs, and only plain absolute paths."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gpuhook.enforce.libdir import LibDir, fixed_library_dir
from gpuhook.errors import ApplyError, InputError
from gpuhook.runtime.create_container import parse_library_dir

LIB64, LIB32 = "/usr/lib/x86_64-linux-gnu", "/usr/lib/i386-linux-gnu"


def _choose(root: Path) -> LibDir:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return fixed_library_dir(LIB64, LIB32)(fd)
    finally:
        os.close(fd)


def test_a_fixed_dir_is_used_whatever_the_rootfs_layout(tmp_path: Path) -> None:
    (tmp_path / "usr" / "lib64").mkdir(parents=True)  # a Red Hat layout: still the fixed dir
    assert _choose(tmp_path) == LibDir(LIB64, LIB32)


def test_a_fixed_dir_through_a_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "usr" / "lib").mkdir(parents=True)
    os.symlink("/etc", tmp_path / "usr" / "lib" / "x86_64-linux-gnu")
    with pytest.raises(ApplyError):
        _choose(tmp_path)


@pytest.mark.parametrize("path", ["usr/lib", "/usr/../etc", "/usr//lib", "/usr/./lib"],
                         ids=["relative", "dotdot", "empty component", "dot component"])
def test_a_fixed_dir_that_is_not_a_plain_absolute_path_is_refused(path: str) -> None:
    with pytest.raises(ApplyError):
        fixed_library_dir(path, LIB32)


@pytest.mark.parametrize(("driver", "want"), [
    pytest.param({"library_dir": [LIB64, LIB32]}, (LIB64, LIB32), id="both dirs are read"),
    pytest.param({}, None, id="without it the rootfs decides"),
])
def test_parse_library_dir(driver: dict[str, object], want: object) -> None:
    assert parse_library_dir(json.dumps(driver)) == want


def test_a_malformed_library_dir_is_refused() -> None:
    with pytest.raises(InputError):
        parse_library_dir(json.dumps({"library_dir": [LIB64]}))
