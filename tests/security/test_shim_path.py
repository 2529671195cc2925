"""Class 7: the shim never runs a relative path. containerd starts the shim in the bundle (or
wherever it runs), so an empty or relative PATH entry, or a relative `runtimes` entry, would
run a file from a directory the container's owner may fill. Each attack plants a `runc` that
leaves a mark in such a place; a real runtime stand-in sits on an absolute PATH entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.security import entry as e

PLANTED = """#!/bin/sh
echo planted > "${0%/*}/PWNED"
exit 0
"""
REAL = """#!/bin/sh
echo real > "${0%/*}/RAN"
exit 0
"""


def script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(0o755)
    return path


@pytest.fixture
def world(tmp_path: Path) -> Path:
    cwd = tmp_path / "cwd"
    for rel in ("runc", "bin/runc", "sub/dir/runc"):
        script(cwd / rel, PLANTED)
    script(tmp_path / "abs" / "runc", REAL)
    return tmp_path


def planted(world: Path) -> list[str]:
    return sorted(str(p.relative_to(world)) for p in world.rglob("PWNED"))


def shim(world: Path, path_env: str, runtimes: list[str], command: list[str]) -> e.Run:
    config = e.write_config(world / "gpuhook.toml", world / "gpuhook.log", runtimes=runtimes)
    return e.run_process([str(e.SHIM), *command], cwd=world / "cwd",
                         env={"PATH": path_env, "GPUHOOK_CONFIG": str(config)})


COMMANDS = {"state (passthrough)": ["state", "ctr-1"],
            "create": ["create", "--bundle", "BUNDLE", "ctr-1"]}


def argv_for(world: Path, name: str) -> list[str]:
    bundle = e.bundle_with(world, e.spec())
    return [str(bundle) if a == "BUNDLE" else a for a in COMMANDS[name]]


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("path_env", ["", ":", ".", "bin", "sub/dir", "::bin:."],
                         ids=["empty PATH", "empty entries", "dot", "a relative dir",
                              "a relative subdir", "all of them"])
def test_relative_path_entries_are_skipped_before_an_absolute_one(
        world: Path, path_env: str, command: str) -> None:
    run = shim(world, f"{path_env}:{world / 'abs'}", ["runc"], argv_for(world, command))
    assert run.code == 0, run.describe()
    assert planted(world) == []
    assert (world / "abs" / "RAN").exists()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_only_relative_path_entries_find_no_runtime(world: Path, command: str) -> None:
    run = shim(world, ":.:bin:sub/dir", ["runc"], argv_for(world, command))
    assert run.code == 127, run.describe()
    assert "no real OCI runtime found" in e.assert_one_line(run.stderr)
    assert planted(world) == []


@pytest.mark.parametrize("runtime", ["./runc", "bin/runc", "sub/dir/runc"])
def test_a_relative_runtimes_entry_is_a_config_error(world: Path, runtime: str) -> None:
    run = shim(world, f".:{world / 'abs'}", [runtime], argv_for(world, "create"))
    # 2 from the config's own check, or 127 from the lookup when `runtimes` was read before the
    # config (runtime/early.py): either way named, never run.
    e.assert_clean_exit(run, allowed=(2, 127))
    assert "relative path" in e.assert_one_line(run.stderr)
    assert planted(world) == []


def test_an_absolute_runtimes_entry_is_run_as_named(world: Path) -> None:
    run = shim(world, ".", [str(world / "abs" / "runc")], argv_for(world, "create"))
    assert run.code == 0, run.describe()
    assert planted(world) == [] and (world / "abs" / "RAN").exists()
    assert json.loads((world / "bundle" / "config.json").read_text())  # untouched, still JSON


def test_hook_mode_never_takes_gpuhook_from_the_current_directory(
        world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # containerd may start us by a bare name (argv[0] "gpuhook-runtime") in the bundle dir.
    from gpuhook.runtime.shim import gpuhook_executable

    script(world / "cwd" / "gpuhook", PLANTED)
    monkeypatch.chdir(world / "cwd")
    monkeypatch.setenv("PATH", ".::bin")
    found = gpuhook_executable("gpuhook-runtime")
    assert Path(found).is_absolute() and Path(found).parent != world / "cwd", found
