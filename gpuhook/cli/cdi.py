"""`gpuhook cdi ...`: CDI specs generated from the same Plans the hook and the shim apply."""

from __future__ import annotations

import os

import click

from gpuhook.cli.common import CONFIG_HELP, report
from gpuhook.errors import GpuhookError

_DEFAULT = "\0default"  # --output given without a value


@click.group()
def cdi() -> None:
    """CDI (Container Device Interface) specs for runtimes that read them: podman >= 4.1,
    containerd >= 1.7, CRI-O, Docker >= 25.

    \b
    podman 4.x reads specs only from /etc/cdi and /var/run/cdi, knows cdiVersion up to 0.5.0,
    and silently drops a whole file that has a newer version or a field it does not know; it
    also refuses a device name that two files define. `gpuhook cdi list` checks for that.

    \b
    Examples:
      gpuhook cdi generate --output            # /var/run/cdi/nvidia.yaml
      gpuhook cdi list
    """


@cdi.command("generate")
@click.option("--config", "config_path", metavar="FILE", help=CONFIG_HELP)
@click.option("--class", "cls", type=click.Choice(["gpu", "imex-channel"]), default="gpu",
              show_default=True,
              help="nvidia.com/gpu (GPUs, MIG devices, all) or nvidia.com/imex-channel.")
@click.option("--output", metavar="FILE", is_flag=False, flag_value=_DEFAULT,
              help="Write the spec here atomically (the extension, .yaml or .json, is its "
                   "format) and remember it for `gpuhook inventory refresh`. Without FILE: "
                   "/var/run/cdi/nvidia.yaml (nvidia-imex-channel.yaml for --class "
                   "imex-channel). Default: print to stdout.")
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default=None,
              help="Output format (default yaml; with --output, the file's extension).")
@click.option("--cdi-version", metavar="VERSION",
              help="cdiVersion to write; refused when the fields used need a newer one. "
                   "Default: the lowest they need (0.5.0: index names start with a digit).")
@click.option("--inventory", metavar="FILE",
              help="Fake inventory YAML (or 'nvml'); overrides the config's `inventory`.")
@click.option("--host-root", metavar="DIR", help="Root for host files; overrides `host-root`.")
@click.option("--dry-run", is_flag=True, help="With --output: print what would be written.")
def generate(config_path: str | None, cls: str, output: str | None, fmt: str | None,
             cdi_version: str | None, inventory: str | None, host_root: str | None,
             dry_run: bool) -> None:
    """Generate the CDI spec: one device per GPU and per MIG device under its index name (0,
    1:0) and its UUID, plus `all`, each with the nodes gpuhook grants for it; the control nodes
    and NVIDIA_VISIBLE_DEVICES=void as common edits.

    \b
    Examples:
      gpuhook cdi generate --output                  # -> /var/run/cdi/nvidia.yaml
      gpuhook cdi generate --format json | jq .devices[].name
      podman run --device nvidia.com/gpu=0 ...       # then, with the spec in place
    """
    from gpuhook.config import load_config
    from gpuhook.runtime.cdi_spec import (
        DEFAULT_OUTPUT,
        Written,
        format_for,
        generate,
        remember,
        render,
        write,
    )

    try:
        config = load_config(config_path).with_overrides(
            inventory=_abs(inventory), host_root=_abs(host_root))
        path = None if output is None else (DEFAULT_OUTPUT[cls] if output == _DEFAULT
                                            else os.path.abspath(output))
        fmt = format_for(path, fmt) if path is not None else (fmt or "yaml")
        spec = generate(config, cls, cdi_version)
        if path is None or dry_run:
            if path is not None:
                click.echo(f"dry run: would write {path}", err=True)
            click.echo(render(spec, fmt).decode(), nl=False)
            return
        write(path, spec)
        remember(config, Written(path, cls, cdi_version))
    except GpuhookError as e:
        report(e)
        return
    except OSError as e:
        report(GpuhookError(f"cannot write {e.filename or path}: {e.strerror}"))
        return
    click.echo(f"wrote {path}: {spec['kind']}, {len(spec['devices'])} devices, cdiVersion "
               f"{spec['cdiVersion']}")


@cdi.command("list")
@click.option("--config", "config_path", metavar="FILE", help=CONFIG_HELP)
@click.option("--cdi-dir", "dirs", metavar="DIR", multiple=True,
              help="Spec dir to scan (repeatable). Default: /etc/cdi and /var/run/cdi.")
def list_specs(config_path: str | None, dirs: tuple[str, ...]) -> None:
    """List the CDI specs on this node and say whether each NVIDIA one gpuhook generates still
    matches the inventory (same device names, same nodes each). Exit 1 when one is stale.

    \b
    Example:
      gpuhook cdi list && echo "specs current"
    """
    from gpuhook.config import load_config
    from gpuhook.runtime.cdi_spec import CDI_DIRS, statuses

    try:
        found = statuses(load_config(config_path), dirs or CDI_DIRS)
    except GpuhookError as e:
        report(e)
        return
    if not found:
        click.echo("no CDI specs found in " + ", ".join(dirs or CDI_DIRS))
    for s in found:
        click.echo(f"{s.path}: {s.kind}: {s.state}" + (f" ({s.detail})" if s.detail else ""))
    if any(s.state == "stale" for s in found):
        raise SystemExit(1)


def _abs(path: str | None) -> str | None:
    if path is None or path == "nvml":
        return path
    return os.path.abspath(path)
