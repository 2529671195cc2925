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
        click.option("--engine-config", "engine_config", metavar="PATH",
                     help="The engine's own file. containerd: its config.toml (default "
                          "/etc/containerd/config.toml); docker: daemon.json (default "
                          "/etc/docker/daemon.json)."),
        click.option("--config", "config", metavar="FILE",
                     help="gpuhook's config (as everywhere in gpuhook); install checks that it "
                          "loads, and podman's hook is given `--config FILE`. Deprecated: a "
                          "--config FILE that is not a gpuhook config but containerd's or "
                          "Docker's file is still taken as --engine-config, with a warning."),
        click.option("--create-dirs", is_flag=True,
                     help="Create a missing directory for the files written. Without it a "
                          "missing directory is refused: it usually means the engine is not "
                          "installed, or the path is mistyped."),
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
@click.option("--hook-config", metavar="FILE", hidden=True,
              help="Deprecated spelling of --config.")
def install(runtime: str, engine_config: str | None, config: str | None, create_dirs: bool,
            name: str, drop_in: bool, drop_in_dir: str | None, hooks_dir: str | None,
            dry_run: bool, set_as_default: bool, runtime_binary: str | None,
            hook_binary: str | None, hook_config: str | None) -> None:
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
    printed when this host says which it is (a systemd unit), else that it is not known.
    With --set-as-default every container the engine starts goes through gpuhook (pods
    without a RuntimeClass, pause sandboxes); containers that ask for no GPU are passed
    through untouched, even when gpuhook's config is broken.

    \b
    Examples:
      gpuhook install --runtime containerd --dry-run
      gpuhook install --runtime containerd --set-as-default
      gpuhook install --runtime containerd --drop-in
      gpuhook install --runtime crio
      gpuhook install --runtime docker --engine-config /etc/docker/daemon.json
      gpuhook install --runtime podman --config /etc/gpuhook/config.toml
    """
    from gpuhook import engines as inst

    try:
        engine_config, gpuhook_config = _configs(runtime, config, engine_config, hook_config)
        opts = inst.Options(
            runtime=runtime, name=name, config=_abs(engine_config),
            set_as_default=set_as_default,
            drop_in=drop_in, drop_in_dir=_abs(drop_in_dir), hooks_dir=_abs(hooks_dir),
            runtime_binary=_abs(runtime_binary) or (
                inst.find_executable(inst.RUNTIME_EXE) if runtime != "podman" else ""),
            hook_binary=_abs(hook_binary) or (
                inst.find_executable("gpuhook") if runtime == "podman" else ""),
            hook_config=_abs(gpuhook_config) if runtime == "podman" else None)
        _check(opts)
        changes, _ = inst.plan_install(opts)
        _finish(changes, runtime, dry_run, create_dirs, "installed")
        if gpuhook_config and runtime != "podman":
            _config_note(runtime, gpuhook_config)
        if runtime == "containerd":
            _warn_cdi_annotations(changes, name)
    except (inst.InstallError, OSError) as e:
        raise click.ClickException(str(e)) from None


@click.command()
@_common
@click.option("--dpkg-info-dir", metavar="DIR", default="/var/lib/dpkg/info", hidden=True,
              help="Where dpkg keeps gpuhook.list (tests point it elsewhere).")
def uninstall(runtime: str, engine_config: str | None, config: str | None,
              create_dirs: bool, name: str, drop_in: bool, drop_in_dir: str | None,
              hooks_dir: str | None, dry_run: bool, dpkg_info_dir: str) -> None:
    """Undo `gpuhook install` with the same --runtime / --engine-config / --name / dirs.

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
        engine_config, _ = _configs(runtime, config, engine_config, None)
        opts = inst.Options(runtime=runtime, name=name, config=_abs(engine_config),
                            drop_in_dir=_abs(drop_in_dir), hooks_dir=_abs(hooks_dir),
                            dpkg_info_dir=dpkg_info_dir)
        _check(opts)
        changes, _ = inst.plan_uninstall(opts)
        _finish(changes, runtime, dry_run, create_dirs, "uninstalled")
    except (inst.InstallError, OSError) as e:
        raise click.ClickException(str(e)) from None


def _configs(runtime: str, config: str | None, engine_config: str | None,
             hook_config: str | None) -> tuple[str | None, str | None]:
    """(the engine's file, gpuhook's config) from --engine-config, --config and the deprecated
    --hook-config; gpuhook's config must load."""
    gpuhook_config = None
    if hook_config:
        _warn("--hook-config is deprecated: use --config (gpuhook's config)")
        gpuhook_config = hook_config
    if config:
        if engine_config is None and runtime in ("containerd", "docker") \
                and not _is_gpuhook_config(config):
            _warn(f"--config {config}: naming {runtime}'s file with --config is deprecated; "
                  "use --engine-config (--config names gpuhook's config)")
            engine_config = config
        else:
            gpuhook_config = config
    if gpuhook_config:
        import os

        from gpuhook.config import load_config
        from gpuhook.errors import GpuhookError

        if not os.path.exists(gpuhook_config):
            _warn(f"{gpuhook_config} does not exist yet: until it does, containers that ask "
                  "for a GPU are refused")
            return engine_config, gpuhook_config
        try:
            load_config(gpuhook_config)
        except GpuhookError as e:
            raise click.ClickException(f"{e}; fix it before registering gpuhook") from None
    return engine_config, gpuhook_config


def _is_gpuhook_config(path: str) -> bool:
    """A TOML file with at least one key and only gpuhook's keys."""
    import tomllib

    from gpuhook.config import FIELDS

    known = {f.replace("_", "-") for f in FIELDS}
    try:
        with open(path, "rb") as f:
            table = tomllib.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return False
    return bool(table) and set(table) <= known


def _warn(message: str) -> None:
    click.echo(f"gpuhook: warning: {message}", err=True)


def _config_note(runtime: str, path: str) -> None:
    import os

    from gpuhook.config import SYSTEM_CONFIG

    if os.path.abspath(path) != SYSTEM_CONFIG:
        click.echo(f"note: gpuhook-runtime reads $GPUHOOK_CONFIG from {runtime}'s environment, "
                   f"else {SYSTEM_CONFIG}: set GPUHOOK_CONFIG={os.path.abspath(path)} in "
                   f"{runtime}'s service environment for it to be read")


def _check(opts: Any) -> None:
    if opts.config and opts.runtime in ("crio", "podman"):
        raise click.UsageError(f"--engine-config is for containerd and docker; {opts.runtime} "
                               "gets a file of its own (see --drop-in-dir / --hooks-dir)")
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


def _missing_dirs(changes: list[Any]) -> list[str]:
    import os

    return sorted({os.path.dirname(c.path) for c in changes
                   if c.changes and c.new is not None
                   and not os.path.isdir(os.path.dirname(c.path))})


def _finish(changes: list[Any], runtime: str, dry_run: bool, create_dirs: bool,
            verb: str) -> None:
    import os

    from gpuhook import engines as inst
    from gpuhook.engines.restart import restart_hint

    missing = _missing_dirs(changes)
    hint = restart_hint(runtime)
    if dry_run:
        text = inst.diff(changes)
        click.echo(text if text else "no changes", nl=not text)
        for d in missing:
            what = "it would be created" if create_dirs else "refused without --create-dirs"
            click.echo(f"(directory {d} does not exist: {what})")
        if text:
            click.echo(f"(dry run: nothing written; afterwards: {hint})")
        return
    if missing and not create_dirs:
        raise click.ClickException(
            f"{', '.join(missing)} does not exist (is {runtime} installed here, and is the path "
            "right?); nothing was written; pass --create-dirs to create it")
    if not any(c.changes for c in changes):
        click.echo(f"already {verb}; nothing changed")
        return
    for d in missing:
        os.makedirs(d, mode=0o755, exist_ok=True)
        click.echo(f"created: {d}")
    for line in inst.write(changes):
        click.echo(line)
    click.echo(hint)


def _abs(path: str | None) -> str | None:
    import os

    return os.path.abspath(path) if path else None
