"""`gpuhook inventory ...`: the NVML snapshot that lets container starts skip NVML."""

from __future__ import annotations

import click


@click.group()
def inventory() -> None:
    """Inventory snapshot commands."""
