"""The command that makes an engine read its new configuration, when this host says which one:
a systemd unit of that name. Otherwise the hint says the command is not known here (k3s, RKE2,
a containerd started by hand or by another unit) instead of naming a wrong one."""

from __future__ import annotations

import os

SYSTEMD_RUNNING = "/run/systemd/system"  # sd_booted(3)
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system",
             "/lib/systemd/system", "/usr/lib/systemd/system")
UNITS = {"containerd": "containerd", "crio": "crio", "docker": "docker"}


def restart_hint(runtime: str, root: str = "/") -> str:
    """One line for after the files are written (`root`: tests point it at a fake tree)."""
    if runtime == "podman":
        return "nothing to restart: podman reads hooks.d on every container start"
    unit = UNITS[runtime]

    def under(path: str) -> str:
        return os.path.join(root, path.lstrip("/"))

    if os.path.isdir(under(SYSTEMD_RUNNING)) and any(
            os.path.exists(under(os.path.join(d, f"{unit}.service"))) for d in UNIT_DIRS):
        return f"restart to take effect: systemctl restart {unit}"
    return (f"restart {runtime} to take effect: no systemd unit {unit}.service here, so the "
            "command is not known (k3s: systemctl restart k3s or k3s-agent; otherwise restart "
            f"{runtime} the way it was started)")
