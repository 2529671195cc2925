"""Every command and sub-command's --help carries an example, with paths that exist where
gpuhook runs from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from gpuhook.cli.common import INSTALLED_EXAMPLES, example_paths
from gpuhook.cli.main import cli

GPUHOOK = Path(sys.executable).parent / "gpuhook"


def commands(group: click.Group = cli, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        sub = group.get_command(ctx, name)
        if sub is None or sub.hidden:
            continue
        if isinstance(sub, click.Group):
            found += commands(sub, (*path, name))
        else:
            found.append((*path, name))
    return found


ALL = commands()


@pytest.mark.parametrize("path", ALL, ids=[" ".join(p) or "gpuhook" for p in ALL])
def test_every_help_has_an_example(path: tuple[str, ...]) -> None:
    r = subprocess.run([str(GPUHOOK), *path, "--help"], capture_output=True, text=True,
                       timeout=60, check=False, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert "Example" in r.stdout, r.stdout
    assert "EXAMPLE_" not in r.stdout


def test_the_command_list_covers_the_groups() -> None:
    assert {("hook", "prestart"), ("inventory", "refresh"), ("inventory", "show"), ("doctor",),
            ("explain",), ("dry-run",), ("install",), ("uninstall",)} <= set(ALL)


def test_help_examples_point_at_the_installed_examples_without_a_source_tree(
        monkeypatch: pytest.MonkeyPatch) -> None:
    bundle, _ = example_paths()
    assert os.path.isdir(bundle) or os.path.isdir(Path(__file__).parents[3] / bundle)
    monkeypatch.setenv("GPUHOOK_EXAMPLES", INSTALLED_EXAMPLES)
    assert example_paths() == (f"{INSTALLED_EXAMPLES}/bundle", f"{INSTALLED_EXAMPLES}/config.toml")
