"""Request + privilege + config -> Decision: which ids are accepted, what is ignored and why.

The env var is written by whoever writes the pod spec; the volume mounts by the device plugin.
Unprivileged containers are therefore judged by the mounts only, unless config says otherwise.
Pure.
"""

from __future__ import annotations

from gpuhook.config import Config
from gpuhook.decide.request import (
    DEFAULT_DRIVER_CAPS,
    ENV_DRIVER_CAPS,
    ENV_MIG_CONFIG,
    ENV_MIG_MONITOR,
    ENV_VISIBLE,
    MIG_CONFIG,
    MIG_MONITOR,
    SUPPORTED_DRIVER_CAPS,
    Ignored,
    Request,
)
from gpuhook.errors import InputError, PolicyError
from gpuhook.record import dataclass

SOURCE_MOUNTS = "volume-mounts"
SOURCE_ENV = "envvar"
SOURCE_NONE = "none"


@dataclass(frozen=True)
class Decision:
    privileged: bool
    privileged_reason: str
    source: str  # volume-mounts | envvar | none
    device_ids: tuple[str, ...]
    control_nodes: bool  # the control nodes are wanted (any device, `none`, or a MIG capability)
    ignored: tuple[Ignored, ...]
    driver_capabilities: tuple[str, ...]
    requirements: tuple[tuple[str, str], ...]
    mig_monitor: bool
    mig_config: bool
    notes: tuple[str, ...]


def decide(req: Request, config: Config) -> Decision:
    ignored = list(req.mount_ignored)
    notes: list[str] = []
    source, ids, control = _devices(req, config, ignored, notes)
    monitor = _mig_capability(req, config, MIG_MONITOR, req.mig_monitor_env, ENV_MIG_MONITOR,
                              ignored, notes)
    mig_config = _mig_capability(req, config, MIG_CONFIG, req.mig_config_env, ENV_MIG_CONFIG,
                                 ignored, notes)
    granted = source != SOURCE_NONE
    caps = req.driver_capabilities
    if caps is None:
        # The toolkit's hook: a legacy CUDA image without NVIDIA_DRIVER_CAPABILITIES gets them
        # all, wherever its devices come from (its own env could have said `all` anyway).
        caps = SUPPORTED_DRIVER_CAPS if req.legacy else DEFAULT_DRIVER_CAPS
    if granted:
        _refuse_unusable_request(req)
    return Decision(
        privileged=req.privileged,
        privileged_reason=req.privileged_reason,
        source=source,
        device_ids=ids,
        control_nodes=control or monitor or mig_config,
        ignored=tuple(ignored),
        driver_capabilities=caps if granted else (),
        requirements=req.requirements if granted else (),
        mig_monitor=monitor,
        mig_config=mig_config,
        notes=tuple(notes),
    )


def _devices(req: Request, config: Config, ignored: list[Ignored], notes: list[str]
             ) -> tuple[str, tuple[str, ...], bool]:
    env = req.env_devices
    env_value = "" if env is None else (env.raw or "(unset; legacy CUDA image)")
    mounts_on = config.accept_nvidia_visible_devices_as_volume_mounts
    if mounts_on and req.mount_error:
        raise InputError(req.mount_error)
    if req.mount_ids and not mounts_on:
        ignored.extend(Ignored(SOURCE_MOUNTS, i, "accept-nvidia-visible-devices-as-volume-mounts"
                               " is false") for i in req.mount_ids)
    if req.mount_ids and mounts_on:
        if env is not None:
            ignored.append(Ignored(SOURCE_ENV, env_value,
                                   "the device plugin's volume mounts take precedence"))
        return SOURCE_MOUNTS, req.mount_ids, True
    if env is None:
        return SOURCE_NONE, (), False
    if env.kind == "marker":
        # NVIDIA_VISIBLE_DEVICES=/var/run/nvidia-container-devices: what the device plugin's
        # volume-mounts strategy writes beside its mounts. Without them it names nothing.
        reason = ("device-plugin marker without mounts: it names no device" if not req.mount_ids
                  else "device-plugin marker; its volume mounts are not accepted "
                  "(accept-nvidia-visible-devices-as-volume-mounts is false)")
        ignored.append(Ignored(SOURCE_ENV, env.raw, reason))
        return SOURCE_NONE, (), False
    if not req.privileged and not config.accept_nvidia_visible_devices_envvar_when_unprivileged:
        if env.kind == "void":
            return SOURCE_NONE, (), False
        reason = untrusted_env_reason(req.privileged_reason)
        if config.unprivileged_envvar_action == "fail":
            raise PolicyError(f"{ENV_VISIBLE}={env_value} refused: {reason} and "
                              "unprivileged-envvar-action is \"fail\"")
        ignored.append(Ignored(SOURCE_ENV, env_value, reason))
        return SOURCE_NONE, (), False
    if env.kind == "void":
        return SOURCE_NONE, (), False
    if env.error:
        raise InputError(env.error)
    if env.legacy:
        notes.append("legacy CUDA image (CUDA_VERSION set, NVIDIA_REQUIRE_CUDA and "
                     f"{ENV_VISIBLE} unset): all GPUs, all driver capabilities")
    if env.kind == "none":
        notes.append(f"{ENV_VISIBLE}=none: control nodes only, no GPU")
        return SOURCE_ENV, (), True
    return SOURCE_ENV, env.ids, True


def untrusted_env_reason(privileged_reason: str) -> str:
    """Why an unprivileged container's env var is ignored, with request.privilege()'s reason
    (no CAP_SYS_ADMIN, or CAP_SYS_ADMIN only inside its own user namespace, or no capabilities):
    what the log, dry-run and explain show."""
    return (f"unprivileged container ({privileged_reason}): the env var is not trusted; "
            "accept-nvidia-visible-devices-envvar-when-unprivileged is false")


def _refuse_unusable_request(req: Request) -> None:
    """What the toolkit's hook refuses in a request it acts on (container_config.go
    getNvidiaConfig): unsupported driver capabilities, an unparsable legacy CUDA_VERSION."""
    if req.driver_capabilities_unsupported:
        raise InputError(f"{ENV_DRIVER_CAPS}: unsupported driver capabilities "
                         + ", ".join(repr(c[:40]) for c in req.driver_capabilities_unsupported)
                         + "; supported: " + ", ".join(SUPPORTED_DRIVER_CAPS) + ", all")
    if req.requirements_error:
        raise InputError(req.requirements_error)


def _mig_capability(req: Request, config: Config, name: str, env_value: str | None,
                    env_name: str, ignored: list[Ignored], notes: list[str]) -> bool:
    granted = False
    if name in req.mount_caps:
        if req.privileged:
            granted = True
            notes.append(f"{name} granted: privileged container, orchestrator mount")
        elif name == MIG_MONITOR and config.allow_mig_monitor_unprivileged:
            granted = True
            notes.append(f"{name} granted read-only: orchestrator mount and "
                         "allow-mig-monitor-unprivileged is true")
        else:
            why = ("never granted to unprivileged containers" if name == MIG_CONFIG else
                   "allow-mig-monitor-unprivileged is false")
            ignored.append(Ignored(SOURCE_MOUNTS, name, why))
    if env_value is not None and env_value.strip():
        value = env_value.strip()
        if not req.privileged:
            ignored.append(Ignored(SOURCE_ENV, f"{env_name}={value}",
                                   "honoured only for privileged containers"))
        elif value != "all":
            ignored.append(Ignored(SOURCE_ENV, f"{env_name}={value}",
                                   "only 'all' is supported (the capability is node-wide)"))
        elif not granted:
            granted = True
            notes.append(f"{name} granted: privileged container, {env_name}=all")
    return granted
