"""Bundles for runc containers with their own user namespace (container root = host uid
ROOT_HOST_ID), built on tests/e2e/runc_harness.py. runc's init runs as that host uid while it
sets the container up, so the bundle lives in a directory it can traverse (pytest's tmp dirs
are 0700)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import runc_harness as rh

ROOT_HOST_ID = 100000
ID_RANGE = 65536


def add_user_namespace(bundle: rh.Bundle, host_id: int = ROOT_HOST_ID) -> None:
    """A new user namespace (what Kubernetes' hostUsers: false asks containerd for)."""
    linux = bundle.spec["linux"]
    linux["namespaces"].append({"type": "user"})
    linux["uidMappings"] = [{"containerID": 0, "hostID": host_id, "size": ID_RANGE}]
    linux["gidMappings"] = [{"containerID": 0, "hostID": host_id, "size": ID_RANGE}]
    bundle.write_spec()
    # The rootfs's directories belong to the container's root, as an engine prepares them for
    # a user namespace (runc makes mount points in them). Files stay: busybox is hard-linked
    # from the session's shared rootfs.
    for dirpath, _, _ in os.walk(bundle.rootfs):
        os.lchown(dirpath, host_id, host_id)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A scratch dir that the container's mapped root may traverse (0711 up to /tmp)."""
    reason = rh.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    path = Path(tempfile.mkdtemp(prefix="gpuhook-userns-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def userns_supported() -> str | None:
    try:
        with open("/proc/sys/user/max_user_namespaces", encoding="ascii") as f:
            if int(f.read().strip()) == 0:
                return "user namespaces are disabled (user.max_user_namespaces = 0)"
    except OSError:
        return "no /proc/sys/user/max_user_namespaces: kernel without user namespaces"
    return None if os.geteuid() == 0 else "needs root"
