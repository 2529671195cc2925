"""Shared test setup. Under CI (CI=true) a skipped test is a failure: CI installs every tool the
e2e tests need, so a skip there means a missing install step, not a missing machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fakedriver import build
from tests.fakedriver.build import FakeDriverBuild, FakeHost

REPO = Path(__file__).resolve().parent.parent
FAKE = REPO / "gpuhook" / "fake"
INVENTORIES = FAKE / "inventories"
HOSTS = FAKE / "hosts"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped and call.when in ("setup", "call"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true (CI must run every test): {report.longrepr}"


# --- the fake NVIDIA driver (tests/fakedriver): built once per session with gcc -------------

@pytest.fixture(scope="session")
def fake_driver_build(tmp_path_factory: pytest.TempPathFactory) -> FakeDriverBuild:
    """The compiled fake driver for the 1gpu inventory: tests.fakedriver.build.FakeDriverBuild
    (nvidia_smi, cuda_count, version, out). Skips (a failure under CI) without gcc/ldconfig."""
    reason = build.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    return build.build_fake_driver(tmp_path_factory.mktemp("fakedriver"))


@pytest.fixture
def fake_driver_host(fake_driver_build: FakeDriverBuild, tmp_path: Path) -> FakeHost:
    """A fresh fake host tree with the driver installed (tests.fakedriver.build.FakeHost:
    root = host-root, inventory, version, lib64, lib32); per test, so a test may change it."""
    return build.make_fake_host(fake_driver_build, tmp_path / "fake-host")
