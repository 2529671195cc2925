"""`gpuhook doctor [--json]`."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from gpuhook.cli.common import CONFIG_HELP
from gpuhook.doctor import GROUPS, Where

_W = Where()


@click.command()
@click.option("--config", "config_path", metavar="FILE", help=CONFIG_HELP)
@click.option("--host-root", metavar="DIR", help="Root for host files; overrides `host-root`.")
@click.option("--containerd-config", metavar="FILE", default=_W.containerd_config,
              show_default=True)
@click.option("--containerd-drop-in-dir", metavar="DIR", default=_W.containerd_drop_in_dir,
              show_default=True)
@click.option("--crio-drop-in-dir", metavar="DIR", default=_W.crio_drop_in_dir,
              show_default=True)
@click.option("--docker-config", metavar="FILE", default=_W.docker_config, show_default=True)
@click.option("--hooks-dir", "hooks_dirs", metavar="DIR", multiple=True,
              help=f"OCI hooks.d directory (repeatable; default: {', '.join(_W.hooks_dirs)}).")
@click.option("--name", default=_W.runtime_name, show_default=True,
              help="The runtime name gpuhook was installed under.")
@click.option("--engine-root", metavar="DIR",
              help="Read the engines' files (and the runtime binaries and bundle they name) "
                   "with DIR as / (a chrooted child; needs CAP_SYS_CHROOT): the host's files "
                   "mounted into a container, as the DaemonSet's probe does.")
@click.option("--only", "groups", multiple=True, type=click.Choice(GROUPS),
              help="Run only this group of checks (repeatable; default all): config = config, "
                   "policy; node = nvml .. driver-files; engines = containerd .. oci-hooks.")
@click.option("--strict", is_flag=True,
              help="A warning fails too (exit 1): for a readiness probe, where 'not registered "
                   "yet' must keep the pod unready.")
@click.option("--json", "as_json", is_flag=True,
              help='One JSON object: {"status": worst, "checks": [{name, status, detail, fix}]}.')
def doctor(config_path: str | None, host_root: str | None, containerd_config: str,
           containerd_drop_in_dir: str, crio_drop_in_dir: str, docker_config: str,
           hooks_dirs: tuple[str, ...], name: str, engine_root: str | None,
           groups: tuple[str, ...], strict: bool, as_json: bool) -> None:
    """Check that this node is ready for GPU containers; change nothing.

    \b
    Checks, each ok / warn / fail with the fix:
      config        gpuhook's config loads (a typo refuses every GPU container)
      policy        what unprivileged containers may ask for (loud if env is trusted)
      nvml          NVML (or the fake inventory) loads; driver and CUDA version
      gpus          the GPUs and their MIG mode (MIG on without MIG devices)
      persistence   nvidia-persistenced is running
      majors        nvidia-frontend / nvidia-uvm / nvidia-caps in proc/devices
      mig-minors    the MIG capability minors, when a GPU is in MIG mode
      cgroup, bpf   cgroup v1 devices controller, or cgroup v2 and a BPF program loads
      snapshot      the inventory snapshot is fresh
      driver-files  each capability's libraries in the ld cache, nvidia-smi
      containerd, crio, docker, oci-hooks
                    registration: the file parses, the runtime binary exists and is
                    gpuhook's, a drop-in is imported, no CDI annotation passes to it

    Exit 0 when nothing fails (warnings included; with --strict, nothing warns either), 1
    otherwise.

    \b
    Examples:
      gpuhook doctor
      gpuhook doctor --json | jq '.checks[] | select(.status != "ok")'
      gpuhook doctor --containerd-config /etc/k3s/containerd/config.toml
      gpuhook doctor --engine-root /host --only config --only engines --strict
    """
    from gpuhook.doctor import FAIL, WARN, worst
    from gpuhook.doctor.run import run_checks

    where = Where(containerd_config=containerd_config,
                  containerd_drop_in_dir=containerd_drop_in_dir,
                  crio_drop_in_dir=crio_drop_in_dir, docker_config=docker_config,
                  hooks_dirs=hooks_dirs or _W.hooks_dirs, runtime_name=name)
    checks = run_checks(config_path, where, host_root, engine_root, groups or GROUPS)
    status = worst(checks)
    if as_json:
        click.echo(json.dumps({"status": status, "checks": [asdict(c) for c in checks]},
                              indent=2))
    else:
        for c in checks:
            click.echo(f"{c.status.upper():4}  {c.name}: {c.detail}")
            if c.fix and c.status != "ok":
                click.echo(f"      fix: {c.fix}")
        click.echo(f"\n{status}: {sum(c.status == 'fail' for c in checks)} failed, "
                   f"{sum(c.status == 'warn' for c in checks)} warnings")
    raise SystemExit(1 if status == FAIL or (strict and status == WARN) else 0)
