"""gpuhook's own config: does it load, and what policy does it put in force."""

from __future__ import annotations

from gpuhook.config import Config, load_config_lenient
from gpuhook.doctor import FAIL, OK, WARN, Check


def load(config_path: str | None, host_root: str | None) -> tuple[Config, list[str]]:
    config, problems = load_config_lenient(config_path)
    if host_root:
        config = config.with_overrides(host_root=host_root)
    return config, problems


def check_config(config: Config, problems: list[str]) -> Check:
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return Check("config", FAIL, problems[0] + more,
                     f"edit {config.source}; until then GPU containers are refused (containers "
                     "that ask for nothing still start)")
    if config.source == Config().source:
        return Check("config", OK, "no config file: the built-in defaults")
    return Check("config", OK, f"{config.source} loads")


def check_policy(config: Config) -> list[Check]:
    out = []
    if config.accept_nvidia_visible_devices_envvar_when_unprivileged:
        out.append(Check(
            "policy", WARN,
            "!!! accept-nvidia-visible-devices-envvar-when-unprivileged = true: ANY pod can use "
            "EVERY GPU on this node by setting NVIDIA_VISIBLE_DEVICES=all (CUDA base images set "
            "it), whatever the scheduler gave it",
            f"set it to false in {config.source} and let the device plugin's volume mounts "
            "(DEVICE_LIST_STRATEGY=volume-mounts) carry the request"))
    if not config.accept_nvidia_visible_devices_as_volume_mounts:
        out.append(Check(
            "policy", WARN,
            "accept-nvidia-visible-devices-as-volume-mounts = false: the device plugin's mounts "
            "are ignored, so an unprivileged pod gets no GPU",
            f"set it to true in {config.source}"))
    if not out:
        out.append(Check("policy", OK,
                         "unprivileged containers get GPUs only from the device plugin's "
                         f"volume mounts under {config.volume_mount_root}; "
                         f"NVIDIA_VISIBLE_DEVICES there: {config.unprivileged_envvar_action}"))
    return out
