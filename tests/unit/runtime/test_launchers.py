"""The launchers (bin/gpuhook, bin/gpuhook-runtime) start the interpreter with -I -S: the site
module, ~2.7 ms of every runtime call, runs only where a command leaves its fast path
(gpuhook.entry.leave_fast_path); gpuhook's own directories are found without it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit import specs
from tests.unit.runtime.test_shim_exec import (
    BIN,
    World,
    imported_modules,
    interpreter_line,
    make_world,
)

GPUHOOK = BIN / "gpuhook"
RUNTIME = BIN / "gpuhook-runtime"
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def world(tmp_path: Path) -> World:
    """test_shim_exec's world: a recording fake runc and a valid config naming it."""
    return make_world(tmp_path)


def test_the_installed_launchers_run_isolated_without_site() -> None:
    for launcher in (GPUHOOK, RUNTIME):
        assert interpreter_line(launcher)[1:] == ["-IS"], launcher


@pytest.mark.parametrize(("args", "site_runs"), [
    (["state", "c1"], False),
    (["create", "-b", "{b}", "c1"], False),
    (["create", "-b", "{gpu}", "c1"], False),
], ids=["a passthrough command runs no site",
        "create of a container with no request runs no site",
        "create of a container with a GPU request runs no site either (edits the spec)"])
def test_the_shim_runs_no_site(world: World, args: list[str], site_runs: bool) -> None:
    b = world.bundle(specs.spec())
    gpu = world.bundle(specs.spec(ids=("3",)), name="gpu")
    result = world.shim(*[a.format(b=b, gpu=gpu) for a in args], importtime=True)
    assert result.returncode == 7, result.stderr
    modules = imported_modules(result.stderr)
    assert "gpuhook.runtime.shim" in modules
    assert ("site" in modules) is site_runs


def test_the_shims_spec_edit_loads_no_enforcement_module_but_the_library_dir(
        world: World) -> None:
    # spec_edit imports enforce.libdir, which runs enforce/__init__: that package imports its
    # cgroup writer, node helper and mount API (ctypes) only where the hook uses them
    gpu = world.bundle(specs.spec(ids=("3",)), name="gpu")
    result = world.shim("create", "-b", str(gpu), "c1", importtime=True)
    assert result.returncode == 7, result.stderr
    modules = imported_modules(result.stderr)
    assert "gpuhook.enforce.libdir" in modules
    assert not {"ctypes", "gpuhook.enforce.cgroup", "gpuhook.enforce.nodes",
                "gpuhook.enforce.ns", "gpuhook.enforce.mountapi"} & modules


def test_the_cli_runs_the_deferred_site_and_finds_its_dependencies() -> None:
    r = subprocess.run([*interpreter_line(GPUHOOK), "-X", "importtime", str(GPUHOOK),
                        "--version"], capture_output=True, text=True, check=False, timeout=60,
                       env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("gpuhook, version ")
    modules = imported_modules(r.stderr)
    assert {"site", "click"} <= modules


@pytest.mark.parametrize("launcher", [GPUHOOK, RUNTIME], ids=["gpuhook", "gpuhook-runtime"])
def test_a_launcher_started_with_site_as_plain_pip_writes_it_still_runs(launcher: Path) -> None:
    # pip's `#!<python>` line without flags: site has run, nothing is deferred.
    r = subprocess.run([sys.executable, str(launcher), "--version"], capture_output=True,
                       text=True, check=False, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    # gpuhook's own version, or the real runc's: the shim passes `--version` through
    want = "gpuhook, version " if launcher == GPUHOOK else "runc version "
    assert r.stdout.startswith(want), r.stdout


def test_the_deferred_site_runs_once_and_only_when_deferred() -> None:
    code = ("import sys, gpuhook.entry as e\n"
            "e._defer_site(True)\n"
            "before = 'site' in sys.modules\n"
            "e.leave_fast_path()\n"
            "after = 'site' in sys.modules\n"
            "e.leave_fast_path()\n"
            "print(before, after, e._deferred_site)\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-c",
                          f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
                          + code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["False", "True", "[]"]
    # With site already run (no -S), nothing is deferred.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split()[2] == "[]"


def test_create_container_runs_no_site_click_or_decision_stage_and_reports_in_one_line(
        tmp_path: Path) -> None:
    # spec mode's hook, on every container with driver files: like `hook prestart`, dispatched
    # before site, and its refusal (stderr, the decision log) survives the teardown-free exit.
    log = tmp_path / "gpuhook.log"
    config = tmp_path / "gpuhook.toml"
    config.write_text(f'log-file = "{log}"\n')
    r = subprocess.run([*interpreter_line(GPUHOOK), "-X", "importtime", str(GPUHOOK), "hook",
                        "create-container", "--config", str(config), "--driver", "{not json"],
                       input=b"{}", capture_output=True, check=False, timeout=60,
                       env={"PATH": "/usr/bin:/bin"})
    err = r.stderr.decode()
    assert r.returncode == 2, err
    lines = [x for x in err.splitlines() if not x.startswith("import time:")]
    assert lines == ["gpuhook: ?: --driver is not the JSON gpuhook-runtime writes: not a JSON "
                     "object"], err
    modules = imported_modules(err)
    assert "gpuhook.runtime.create_container" in modules
    assert not {"site", "click", "gpuhook.decide", "gpuhook.enforce.cgroup",
                "gpuhook.enforce.userns"} & modules
    assert '"decision":"refused"' in log.read_text()
