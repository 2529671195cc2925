"""The no-request test the hook runs before importing anything heavy. Stdlib-free on purpose."""

from __future__ import annotations

from typing import Any

DEV_NULL = "/dev/null"


def might_request(spec: Any) -> bool:
    """False only when no config could make this spec request anything: no /dev/null mount
    (a device-plugin id or MIG capability) and no NVIDIA_* or CUDA_VERSION env entry.
    Anything unexpected answers True, so the full, validating path decides."""
    if not isinstance(spec, dict):
        return True
    mounts = spec.get("mounts") or []
    process = spec.get("process")
    if not isinstance(mounts, list) or not isinstance(process, dict):
        return True
    for m in mounts:
        if not isinstance(m, dict) or m.get("source") == DEV_NULL:
            return True
    env = process.get("env") or []
    if not isinstance(env, list):
        return True
    for item in env:
        if not isinstance(item, str) or item.startswith(("NVIDIA_", "CUDA_VERSION=")):
            return True
    return False
