"""`gpuhook inventory ...`: the NVML snapshot that lets container starts skip NVML."""

from __future__ import annotations

import json

import click

from gpuhook.cli.common import CONFIG_HELP, report
from gpuhook.config import Config
from gpuhook.errors import GpuhookError


@click.group()
def inventory() -> None:
    """Inventory snapshot commands.

    \b
    The hook reads the snapshot at the config's `inventory-cache` (default
    /run/gpuhook/inventory.json) instead of NVML when it is fresh: same driver version, GPU
    set, proc/devices, mig-minors (content and mtime), MIG capability tree, inventory source
    and host-root as when it was written. Otherwise it reads the backend and notes why.

    \b
    Examples:
      gpuhook inventory refresh
      gpuhook inventory show
    """


@inventory.command("refresh")
@click.option("--config", "config_path", metavar="FILE", help=CONFIG_HELP)
@click.option("--dry-run", is_flag=True, help="Print the snapshot instead of writing it.")
def refresh(config_path: str | None, dry_run: bool) -> None:
    """Read the inventory backend (NVML or the fake YAML), majors and mig-minors, and write
    them atomically (mode 0600, dir 0700) to `inventory-cache`.

    Run it at boot and after every driver or MIG change (a stale snapshot is never used, but
    then every GPU container start pays for NVML again).

    \b
    Examples:
      gpuhook inventory refresh
      gpuhook inventory refresh --dry-run --config /etc/gpuhook/config.toml
    """
    from gpuhook.config import load_config
    from gpuhook.inventory.load import read_backend
    from gpuhook.inventory.snapshot import build_snapshot, write_snapshot

    try:
        config = load_config(config_path)
        snap = build_snapshot(config, read_backend)
        if dry_run:
            click.echo(json.dumps(snap, indent=1, sort_keys=True))
            return
        write_snapshot(config.inventory_cache, snap)
    except GpuhookError as e:
        report(e)
        return
    except OSError as e:
        report(GpuhookError(f"cannot write {e.filename or 'snapshot'}: {e.strerror}"))
        return
    inv = snap["inventory"]
    migs = sum(len(g.get("mig_devices", [])) for g in inv["gpus"])
    click.echo(f"wrote {config.inventory_cache}: {len(inv['gpus'])} GPUs, {migs} MIG devices, "
               f"driver {inv['driver_version']}, source {snap['key']['source']['backend']}")
    _refresh_cdi_specs(config)


def _refresh_cdi_specs(config: Config) -> None:
    """Rewrite the CDI specs `gpuhook cdi generate --output` wrote before: a spec that names
    the old devices is what makes runtimes fail after a driver or MIG change."""
    from gpuhook.runtime.cdi_spec import regenerate_recorded

    try:
        lines, errors = regenerate_recorded(config)
    except GpuhookError as e:
        report(e)
        return
    for line in lines:
        click.echo(f"cdi: {line}")
    for error in errors:
        click.echo(f"gpuhook: cdi: {error}", err=True)
    if errors:
        raise SystemExit(1)


@inventory.command("show")
@click.option("--config", "config_path", metavar="FILE", help=CONFIG_HELP)
def show(config_path: str | None) -> None:
    """Say whether the snapshot would be used now, and why not. Exit 0: fresh; 1: not used
    (what changed, with the recorded and the current value).

    \b
    Example:
      gpuhook inventory show || gpuhook inventory refresh
    """
    from gpuhook.config import load_config
    from gpuhook.inventory.snapshot import StaleSnapshot, fresh_snapshot_driver

    try:
        config = load_config(config_path)
    except GpuhookError as e:
        report(e)
        return
    try:
        inv, _, driver, why_not = fresh_snapshot_driver(config)
    except StaleSnapshot as e:
        click.echo(f"not used: {e}")
        raise SystemExit(1) from None
    migs = sum(len(g.mig_devices) for g in inv.gpus)
    click.echo(f"fresh: {config.inventory_cache}: {len(inv.gpus)} GPUs, {migs} MIG devices, "
               f"driver {inv.driver_version}")
    if config.driver_files:
        # The driver files have their own key: stale ones are discovered at each start.
        click.echo(f"driver files: fresh, {len(driver.libraries)} libraries, "
                   f"{len(driver.files)} other files" if driver is not None
                   else f"driver files: discovered at each start ({why_not})")
