"""`gpuhook node install` / `gpuhook node uninstall`: the DaemonSet's entrypoint."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def _common(f: F) -> F:
    options = [
        click.option("--host-root", required=True, metavar="DIR",
                     help="Where the host's / is mounted (hostPath) in this container."),
        click.option("--runtime", default="containerd", show_default=True,
                     type=click.Choice(["containerd", "crio"]), help="The node's CRI engine."),
        click.option("--restart", "restart_mode", default="signal", show_default=True,
                     type=click.Choice(["signal", "systemd", "none"]),
                     help="How the engine is made to read its config, only when it changed: "
                          "signal = SIGHUP to the process behind its socket (containerd; "
                          "needs hostPID, its supervisor restarts it); systemd = chroot "
                          "HOST_ROOT systemctl restart; none = print the command."),
        click.option("--socket", metavar="PATH",
                     help="The engine's socket, a host path (default "
                          "/run/containerd/containerd.sock; CRI-O /var/run/crio/crio.sock)."),
        click.option("--name", default="nvidia", show_default=True,
                     help="Runtime handler name (RuntimeClass handler)."),
        click.option("--timeout", default=60.0, show_default=True, metavar="SECONDS",
                     help="How long to wait for the engine to serve again after a restart."),
        click.option("--dry-run", is_flag=True,
                     help="Print each step and the engine's diff (host paths); change nothing."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _echo(line: str) -> None:
    click.echo(f"gpuhook node: {line}")
    sys.stdout.flush()


@click.group()
def node() -> None:
    """Install gpuhook on this Kubernetes node from a container (the DaemonSet's command).

    \b
    Examples:
      gpuhook node install --host-root /host --dry-run
      gpuhook node status --host-root /host
    """


@node.command("install")
@_common
@click.option("--gpuhook-config", metavar="FILE",
              help="gpuhook config to install on the host (default: $GPUHOOK_CONFIG, else "
                   "/etc/gpuhook/config.toml in this container, e.g. the ConfigMap; else the "
                   "built-in defaults).")
@click.option("--no-wait", is_flag=True,
              help="Return after installing instead of waiting for SIGTERM to undo it.")
def install_cmd(host_root: str, runtime: str, restart_mode: str, socket: str | None,
                name: str, timeout: float, dry_run: bool, gpuhook_config: str | None,
                no_wait: bool) -> None:
    """Install gpuhook on the node, register it with the engine, then wait; undo on SIGTERM.

    \b
    Steps, one line each: lock (one instance per node), bundle (a self-contained gpuhook,
    its own interpreter and libraries, under /usr/local/gpuhook on the host), config
    (/usr/local/gpuhook/config.toml), engine (a drop-in naming host paths: containerd
    /etc/containerd/conf.d/99-gpuhook.toml, imported from config.toml; CRI-O
    /etc/crio/crio.conf.d/99-gpuhook.conf), restart (only when the engine's effective config
    changed). On SIGTERM or SIGINT: the engine's config is put back byte for byte, the
    drop-in and the bundle removed, the engine restarted once.

    \b
    Examples:
      gpuhook node install --host-root /host --dry-run
      gpuhook node install --host-root /host --runtime containerd --restart signal
      gpuhook node install --host-root /host --runtime crio --restart systemd --no-wait
    """
    from gpuhook.config import find_config_path
    from gpuhook.node.install import NodeError, NodeOptions, run

    path = find_config_path(gpuhook_config, os.environ)
    try:
        data = _read(path) if path else DEFAULT_CONFIG
        opts = NodeOptions(host_root=os.path.abspath(host_root), runtime=runtime,
                           restart=restart_mode, name=name, socket=socket, config=data,
                           dry_run=dry_run, timeout=timeout)
        run(opts, _echo, wait=not no_wait)
    except (NodeError, OSError) as e:
        raise click.ClickException(str(e)) from None


@node.command("uninstall")
@_common
def uninstall_cmd(host_root: str, runtime: str, restart_mode: str, socket: str | None,
                  name: str, timeout: float, dry_run: bool) -> None:
    """Undo `gpuhook node install` (what its SIGTERM does), e.g. after it was SIGKILLed.

    \b
    Examples:
      gpuhook node uninstall --host-root /host --dry-run
      gpuhook node uninstall --host-root /host --restart systemd
    """
    from gpuhook.node.install import NodeError, NodeOptions, remove

    try:
        opts = NodeOptions(host_root=os.path.abspath(host_root), runtime=runtime,
                           restart=restart_mode, name=name, socket=socket, dry_run=dry_run,
                           timeout=timeout)
        remove(opts, _echo)
    except (NodeError, OSError) as e:
        raise click.ClickException(str(e)) from None


@node.command("status")
@click.option("--host-root", required=True, metavar="DIR",
              help="Where the host's / is mounted (hostPath) in this container.")
@click.option("--runtime", default="containerd", show_default=True,
              type=click.Choice(["containerd", "crio"]), help="The node's CRI engine.")
@click.option("--name", default="nvidia", show_default=True, help="Runtime handler name.")
def status_cmd(host_root: str, runtime: str, name: str) -> None:
    """Exit 0 when the node is installed: the bundle is complete and the engine's config
    registers it (a new install would change nothing). The DaemonSet's readiness probe.

    \b
    Example:
      gpuhook node status --host-root /host
    """
    from gpuhook.node.install import NodeOptions, status_problems

    problems = status_problems(NodeOptions(host_root=os.path.abspath(host_root),
                                           runtime=runtime, name=name))
    if problems:
        raise click.ClickException("not ready: " + "; ".join(problems))
    click.echo("gpuhook node: ready")


DEFAULT_CONFIG = (b"# Written by `gpuhook node install`: no config was given, so gpuhook's "
                  b"built-in defaults apply.\n")


def _read(path: str) -> bytes:
    from gpuhook.config import parse_config
    from gpuhook.errors import InputError

    with open(path, "rb") as f:
        data = f.read(1 << 20)
    try:
        parse_config(data, path)  # refuse to install a config gpuhook would refuse
    except InputError as e:
        raise click.ClickException(str(e)) from None
    return data
