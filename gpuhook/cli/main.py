"""The `gpuhook` command line. Each command reports a GpuhookError once: one line on stderr and
the error's exit code (1: cannot be satisfied, 2: usage or malformed input)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from gpuhook import __version__
from gpuhook.cli.common import CONFIG_HELP, report
from gpuhook.errors import GpuhookError

F = TypeVar("F", bound=Callable[..., Any])

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gpuhook")
def cli() -> None:
    """Decide which NVIDIA GPUs / MIG devices a container may use, and enforce it.

    \b
    For unprivileged containers the NVIDIA_VISIBLE_DEVICES env var is not trusted; only the
    device plugin's volume mounts (/dev/null at /var/run/nvidia-container-devices/<id>) are.

    \b
    Start with:  gpuhook dry-run BUNDLE      (what a container would get, changing nothing)
                 gpuhook doctor              (is this node ready?)
                 gpuhook explain POD         (why a pod got the GPUs it got)

    \b
    Examples:
      gpuhook install --runtime containerd --dry-run
      gpuhook dry-run EXAMPLE_BUNDLE --config EXAMPLE_CONFIG
    """


@cli.command("dry-run")
@click.argument("bundle", type=click.Path(file_okay=False, dir_okay=True))
@click.option("--config", "config_path", metavar="FILE", help=CONFIG_HELP)
@click.option("--inventory", metavar="FILE",
              help="Fake inventory YAML (or 'nvml'); overrides the config's `inventory`.")
@click.option("--host-root", metavar="DIR",
              help="Root for host files (proc/devices, mig-minors); overrides `host-root`.")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
def dry_run(bundle: str, config_path: str | None, inventory: str | None,
            host_root: str | None, as_json: bool) -> None:
    """Show the plan for the container in BUNDLE (a dir with config.json); change nothing.

    \b
    Exit 0: plan computed (an empty plan included).
    Exit 1: the request cannot be satisfied (unknown id, NVML error, policy, requirement).
    Exit 2: usage error, or unreadable / malformed input.

    In --json, file_mode is the mode as a decimal integer (438 is 0666).

    \b
    Example, with the shipped fake inventory:
      gpuhook dry-run EXAMPLE_BUNDLE --config EXAMPLE_CONFIG
    """
    from gpuhook.config import load_config
    from gpuhook.decide.render import render_json, render_text
    from gpuhook.decide.spec import MAX_SPEC_BYTES, parse_spec
    from gpuhook.runtime.bundle import read_limited
    from gpuhook.runtime.pipeline import plan_for_spec

    try:
        config = load_config(config_path).with_overrides(
            inventory=_abs(inventory), host_root=_abs(host_root))
        path = os.path.join(bundle, "config.json")
        spec = parse_spec(read_limited(path, MAX_SPEC_BYTES, "spec"), path)
        plan = plan_for_spec(spec, config)
    except GpuhookError as e:
        report(e, as_json)
        return
    click.echo(render_json(plan) if as_json else render_text(plan))


def _abs(path: str | None) -> str | None:
    if path is None or path == "nvml":
        return path
    return os.path.abspath(path)


@cli.group()
def hook() -> None:
    """OCI hooks. Registered in a spec as
    {"path": "/usr/bin/gpuhook", "args": ["gpuhook", "hook", "prestart"]}.

    \b
    Examples:
      gpuhook install --runtime podman      (writes the hooks.d file that runs it)
      gpuhook hook prestart --help
    """


@hook.command("prestart", context_settings={"ignore_unknown_options": True})
@click.option("--config", "config_path", metavar="FILE", help=CONFIG_HELP)
@click.option("--log", is_flag=True,
              help="Write the decision log even when run by hand from a terminal (by default "
                   "a hand run prints the record instead of adding it to the node's log).")
def hook_prestart(config_path: str | None, log: bool) -> None:
    """Read the OCI state on stdin and apply the plan to the starting container.

    Exit 0: applied, or nothing to do. Non-zero: the container must not start; one line on
    stderr says why, and a JSON line goes to the log file. With a terminal on stdin it prints
    its usage instead of waiting for the state.

    \b
    Example, by hand, as runc would call it (state JSON on stdin):
      echo '{"ociVersion": "1.0.2", "id": "c1", "pid": 4242, "bundle": "/run/b"}' \\
        | gpuhook hook prestart --config /etc/gpuhook/config.toml
    """
    from gpuhook.runtime.hook import prestart_main

    args = ["--config", config_path] if config_path else []
    sys.exit(prestart_main([*args, "--log"] if log else args))


def _examples() -> None:
    # The dry-run example points at the source tree's examples when gpuhook runs from one, else
    # at those the Debian package installs (GPUHOOK_EXAMPLES: the man page generator's choice).
    from gpuhook.cli.common import example_paths

    bundle, config = example_paths()
    for cmd in (cli, dry_run):
        cmd.help = (cmd.help or "").replace("EXAMPLE_BUNDLE", bundle).replace(
            "EXAMPLE_CONFIG", config)


@hook.command("create-container")
@click.option("--config", "config_path", metavar="FILE", help=CONFIG_HELP)
@click.option("--driver", "driver", metavar="JSON", required=True,
              help="The plan's driver part (links, library kinds, ld cache, GPUs for the "
                   "/proc/driver/nvidia view), as gpuhook-runtime writes it.")
def hook_create_container(config_path: str | None, driver: str) -> None:
    """Spec mode's createContainer hook: in the container's namespaces, before pivot_root,
    create the driver libraries' links, rebuild the ld cache with the host's ldconfig
    (chrooted in the rootfs) and cover /proc/driver/nvidia with a view of the granted GPUs.
    The OCI state comes on stdin. gpuhook-runtime writes this hook into config.json.

    \b
    Example (an entry of config.json's hooks.createContainer):

    \b
      {"path": "/usr/bin/gpuhook",
       "args": ["gpuhook", "hook", "create-container",
                "--driver", "{\\"library_kinds\\":[\\"library\\"],...}"],
       "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}
    """
    from gpuhook.runtime.create_container import main as create_container_main

    args = (["--config", config_path] if config_path else []) + ["--driver", driver]
    sys.exit(create_container_main(args))


def _register() -> None:
    # Command groups that live in their own modules (one job each).
    from gpuhook.cli.cdi import cdi
    from gpuhook.cli.doctor import doctor
    from gpuhook.cli.explain import explain
    from gpuhook.cli.install import install, uninstall
    from gpuhook.cli.inventory import inventory
    from gpuhook.cli.node import node

    cli.add_command(install)
    cli.add_command(uninstall)
    cli.add_command(inventory)
    cli.add_command(explain)
    cli.add_command(doctor)
    cli.add_command(cdi)
    cli.add_command(node)


_register()
_examples()
