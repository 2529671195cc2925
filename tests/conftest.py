"""Shared test setup. Under CI (CI=true) a skipped test is a failure: CI installs every tool the
e2e tests need, so a skip there means a missing install step, not a missing machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
