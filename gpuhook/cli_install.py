"""`gpuhook install` / `gpuhook uninstall`: register gpuhook with a container runtime."""

from __future__ import annotations

import click


@click.command()
def install() -> None:
    """Register gpuhook with containerd, CRI-O, Docker or Podman (not implemented yet)."""
    raise click.ClickException("not implemented yet")


@click.command()
def uninstall() -> None:
    """Undo `gpuhook install` (not implemented yet)."""
    raise click.ClickException("not implemented yet")
