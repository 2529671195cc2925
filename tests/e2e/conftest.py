"""Fixtures for the real-runtime tests: one busybox rootfs per session, per-test work dirs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import glibc_rootfs
from tests.e2e import runc_harness as rh
from tests.fakedriver import build as fakedriver


@pytest.fixture(scope="session")
def runc_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox-static rootfs, built once; bundles copy (hard-link) it."""
    reason = rh.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    return rh.build_rootfs(tmp_path_factory.mktemp("rootfs") / "rootfs")


@pytest.fixture(params=["v1", "v2"], ids=["cgroup-v1", "cgroup-v2"])
def cgroup_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """Both cgroup modes runc supports here: v1 (hybrid host) and v2 (own mount ns)."""
    reason = rh.mode_skip_reason(str(request.param))
    if reason is not None:
        pytest.skip(reason)
    yield str(request.param)


@pytest.fixture(scope="session")
def driver_build(tmp_path_factory: pytest.TempPathFactory) -> fakedriver.FakeDriverBuild:
    """The fake NVIDIA driver (tests/fakedriver), built once for the 8-GPU fake node."""
    reason = rh.skip_reason() or fakedriver.skip_reason() or glibc_rootfs.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    return fakedriver.build_fake_driver(tmp_path_factory.mktemp("fakedriver"),
                                        fake="8xa100-mig")


@pytest.fixture(scope="session")
def glibc_image(driver_build: fakedriver.FakeDriverBuild,
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A glibc-capable image with `cuda-count` (dlopen libcuda.so.1); bundles hard-link it."""
    return glibc_rootfs.build_glibc_rootfs(tmp_path_factory.mktemp("glibc") / "rootfs",
                                           {"cuda-count": driver_build.cuda_count})
