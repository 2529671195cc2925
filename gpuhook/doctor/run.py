"""All checks, in the order an operator fixes things."""

from __future__ import annotations

from dataclasses import asdict

from gpuhook.doctor import FAIL, GROUPS, Check, Where, engines, node, settings


def run_checks(config_path: str | None, where: Where, host_root: str | None = None,
               engine_root: str | None = None, only: tuple[str, ...] = GROUPS) -> list[Check]:
    """Every check of the groups in `only`, in the order an operator fixes things: config,
    driver and GPUs, host files, cgroups, snapshot, driver files, engines."""
    config, problems = settings.load(config_path, host_root)
    checks: list[Check] = []
    if "config" in only:
        checks += [settings.check_config(config, problems), *settings.check_policy(config)]
    if "node" in only:
        inventory, inv_checks = node.check_inventory(config)
        checks += inv_checks
        checks += node.check_host(config, inventory)
        checks += node.check_cgroups(config)
        checks.append(node.check_snapshot(config))
        checks += node.check_driver_files(config, inventory)
    if "engines" in only:
        checks += engines_in_root(where, engine_root)
    return checks


def engines_in_root(where: Where, engine_root: str | None) -> list[Check]:
    """The engines' checks with `engine_root` as `/` (a chrooted child, node/hostroot.py): the
    installer's container mounts the host's files under /host, and the paths in them (`imports`,
    BinaryName, the `current` link) are host paths, absolute symlinks included."""
    if engine_root is None:
        return engines.check_engines(where)
    from gpuhook.node import hostroot, payload  # noqa: F401  (payload: imported before chroot)

    try:
        found = hostroot.run_in_root(
            engine_root, lambda: [asdict(c) for c in engines.check_engines(where)])
    except (hostroot.HostRootError, OSError) as e:
        return [Check("engines", FAIL, f"the engines' files under {engine_root} cannot be read "
                                       f"with it as /: {e}",
                      "run as root with CAP_SYS_CHROOT, and mount the host's files under "
                      f"{engine_root}")]
    return [Check(**c) for c in found]
