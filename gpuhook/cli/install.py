"""`gpuhook install` / `gpuhook uninstall`: register gpuhook with a container runtime."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])
RUNTIMES = ("containerd", "crio", "docker", "podman")


def _common(f: F) -> F:
    options = [
        click.option("--runtime", "runtime", required=True, type=click.Choice(RUNTIMES),
                     help="The container engine to register with."),
        click.option("--config", "config", metavar="PATH",
                     help="containerd: its config.toml (default /etc/containerd/config.toml); "
                          "docker: daemon.json (default /etc/docker/daemon.json)."),
        click.option("--name", default="nvidia", show_default=True,
                     help="Runtime name (containerd runtime handler, CRI-O / Docker runtime)."),
        click.option("--drop-in", is_flag=True,
                     help="containerd: write the runtime to DIR/99-gpuhook.toml, listed in "
                          "`imports`, instead of editing the config's tables. containerd 1.x "
                          "replaces a whole plugin section from an import, so the drop-in holds "
                          "a copy of the CRI section: run install again after editing it."),
        click.option("--drop-in-dir", metavar="DIR",
                     help="Drop-in directory (default /etc/containerd/conf.d for containerd, "
                          "/etc/crio/crio.conf.d for CRI-O)."),
        click.option("--hooks-dir", metavar="DIR",
                     help="podman: OCI hooks.d directory "
                          "(default /usr/share/containers/oci/hooks.d)."),
        click.option("--dry-run", is_flag=True,
                     help="Print the unified diff of every file; change nothing."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@click.command()
@_common
@click.option("--set-as-default", is_flag=True,
              help="Also make it the default runtime (containerd default_runtime_name, CRI-O "
                   "default_runtime, Docker default-runtime).")
@click.option("--runtime-binary", metavar="PATH",
              help="gpuhook-runtime to register (default: next to this gpuhook, else on PATH).")
@click.option("--hook-binary", metavar="PATH",
              help="gpuhook for the hooks.d file (default: this gpuhook's path).")
@click.option("--hook-config", metavar="FILE",
              help="podman: pass `--config FILE` to the hook (its environment is minimal, so "
                   "$GPUHOOK_CONFIG does not reach it).")
def install(runtime: str, config: str | None, name: str, drop_in: bool,
            drop_in_dir: str | None, hooks_dir: str | None, dry_run: bool,
            set_as_default: bool, runtime_binary: str | None, hook_binary: str | None,
            hook_config: str | None) -> None:
    """Register gpuhook with containerd, CRI-O, Docker or Podman.

    \b
    containerd  adds runtime NAME (runtime_type io.containerd.runc.v2, options.BinaryName =
                gpuhook-runtime, other options copied from the runc runtime) under the CRI
                plugin of the config's version (1, 2 or 3); comments and every other line
                stay byte-identical; the original is kept as CONFIG.gpuhook.bak.
    crio        writes DIR/99-gpuhook.conf: [crio.runtime.runtimes.NAME] runtime_path,
                runtime_type = "oci".
    docker      adds runtimes.NAME.path to daemon.json, keeping every other key.
    podman      writes an OCI hook (stage prestart, when always) to HOOKS_DIR/gpuhook.json;
                CRI-O reads the same hooks.d directory, so this also serves CRI-O with the
                hook instead of the runtime.

    A second install changes nothing. Daemons are never restarted: the command to do it is
    printed.

    \b
    Examples:
      gpuhook install --runtime containerd --dry-run
      gpuhook install --runtime containerd --set-as-default
      gpuhook install --runtime containerd --drop-in
      gpuhook install --runtime crio
      gpuhook install --runtime docker --config /etc/docker/daemon.json
      gpuhook install --runtime podman --hooks-dir /etc/containers/oci/hooks.d
    """
    from gpuhook import engines as inst

    try:
        opts = inst.Options(
            runtime=runtime, name=name, config=_abs(config), set_as_default=set_as_default,
            drop_in=drop_in, drop_in_dir=_abs(drop_in_dir), hooks_dir=_abs(hooks_dir),
            runtime_binary=_abs(runtime_binary) or (
                inst.find_executable(inst.RUNTIME_EXE) if runtime != "podman" else ""),
            hook_binary=_abs(hook_binary) or (
                inst.find_executable("gpuhook") if runtime == "podman" else ""),
            hook_config=_abs(hook_config))
        _check(opts)
        changes, restart = inst.plan_install(opts)
        _finish(changes, restart, dry_run, "installed")
        if runtime == "containerd":
            _warn_cdi_annotations(changes, name)
    except (inst.InstallError, OSError) as e:
        raise click.ClickException(str(e)) from None


@click.command()
@_common
@click.option("--dpkg-info-dir", metavar="DIR", default="/var/lib/dpkg/info", hidden=True,
              help="Where dpkg keeps gpuhook.list (tests point it elsewhere).")
def uninstall(runtime: str, config: str | None, name: str, drop_in: bool,
              drop_in_dir: str | None, hooks_dir: str | None, dry_run: bool,
              dpkg_info_dir: str) -> None:
    """Undo `gpuhook install` with the same --runtime / --config / --name / dirs.

    Where the config holds nothing new but gpuhook's keys, the backup taken by install
    (CONFIG.gpuhook.bak) is put back byte for byte and removed. Otherwise only gpuhook's keys
    are taken out (a runtime table only if its BinaryName is gpuhook-runtime). A drop-in
    written by install is removed either way (--drop-in is accepted for symmetry). A file
    that the gpuhook package owns (the packaged hooks.d entry) is not removed: remove the
    package instead.

    \b
    Examples:
      gpuhook uninstall --runtime containerd --dry-run
      gpuhook uninstall --runtime containerd
      gpuhook uninstall --runtime podman
    """
    from gpuhook import engines as inst

    del drop_in  # both forms are always cleaned up
    try:
        opts = inst.Options(runtime=runtime, name=name, config=_abs(config),
                            drop_in_dir=_abs(drop_in_dir), hooks_dir=_abs(hooks_dir),
                            dpkg_info_dir=dpkg_info_dir)
        _check(opts)
        changes, restart = inst.plan_uninstall(opts)
        _finish(changes, restart, dry_run, "uninstalled")
    except (inst.InstallError, OSError) as e:
        raise click.ClickException(str(e)) from None


def _check(opts: Any) -> None:
    if opts.config and opts.runtime in ("crio", "podman"):
        raise click.UsageError(f"--config is for containerd and docker; {opts.runtime} gets a "
                               "file of its own (see --drop-in-dir / --hooks-dir)")
    if opts.drop_in and opts.runtime != "containerd":
        raise click.UsageError("--drop-in is for containerd (CRI-O always gets a drop-in)")


def _warn_cdi_annotations(changes: list[Any], name: str) -> None:
    """Loudly, on stderr: a pod_annotations allow-list that passes cdi.k8s.io/ lets pod authors
    forge the device plugin's CDI requests."""
    from gpuhook.engines.containerd import cdi_annotation_warnings

    for change in changes:
        text = (change.new or b"").decode("utf-8", "replace")
        for warning in cdi_annotation_warnings(text, name):
            click.echo(f"gpuhook: WARNING: {change.path}: {warning}", err=True)


def _finish(changes: list[Any], restart: str, dry_run: bool, verb: str) -> None:
    from gpuhook import engines as inst

    if dry_run:
        text = inst.diff(changes)
        click.echo(text if text else "no changes", nl=not text)
        if restart and text:
            click.echo(f"(dry run: nothing written; afterwards run: {restart})")
        return
    if not any(c.changes for c in changes):
        click.echo(f"already {verb}; nothing changed")
        return
    for line in inst.write(changes):
        click.echo(line)
    click.echo(f"restart to take effect: {restart}" if restart
               else "nothing to restart: podman reads hooks.d on every container start")


def _abs(path: str | None) -> str | None:
    import os

    return os.path.abspath(path) if path else None
