"""All checks, in the order an operator fixes things."""

from __future__ import annotations

from gpuhook.doctor import Check, Where, engines, node, settings


def run_checks(config_path: str | None, where: Where, host_root: str | None = None
               ) -> list[Check]:
    """Every check, in the order an operator fixes things: config, driver and GPUs, host
    files, cgroups, snapshot, driver files, engines."""
    config, problems = settings.load(config_path, host_root)
    checks = [settings.check_config(config, problems), *settings.check_policy(config)]
    inventory, inv_checks = node.check_inventory(config)
    checks += inv_checks
    checks += node.check_host(config, inventory)
    checks += node.check_cgroups(config)
    checks.append(node.check_snapshot(config))
    checks += node.check_driver_files(config, inventory)
    checks += engines.check_engines(where)
    return checks
