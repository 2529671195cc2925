"""What every command shares: the --config help text, and reporting a GpuhookError once (one
line on stderr, the error's exit code; with --json also the contract's {"error": ...} object)."""

from __future__ import annotations

import json
import sys

import click

from gpuhook.errors import GpuhookError
from gpuhook.limits import MAX_MESSAGE_CHARS
from gpuhook.text import escape

CONFIG_HELP = ("Config file (TOML). Default: $GPUHOOK_CONFIG, else /etc/gpuhook/config.toml, "
               "else built-in defaults.")


def report(err: GpuhookError, as_json: bool = False) -> None:
    if as_json:
        click.echo(json.dumps({"error": str(err)}))
    # Container text (ids, env values, paths) is in messages: one line, printable, bounded.
    click.echo("gpuhook: " + escape(str(err), MAX_MESSAGE_CHARS), err=True)
    sys.exit(err.exit_code)


INSTALLED_EXAMPLES = "/usr/share/doc/gpuhook/examples"


def example_paths() -> tuple[str, str]:
    """(bundle, config) for --help examples: the source tree's when gpuhook runs from one,
    else the installed package's."""
    import os

    base = os.environ.get("GPUHOOK_EXAMPLES")
    if not base:
        tree = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)))), "examples")
        base = "examples" if os.path.isdir(os.path.join(tree, "bundle")) else INSTALLED_EXAMPLES
    return os.path.join(base, "bundle"), os.path.join(base, "config.toml")
