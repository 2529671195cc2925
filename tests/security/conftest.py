"""tests/security: attacks on gpuhook, one module per class of issue 16. The fuzzers count the
examples they ran; the counts are printed in the terminal summary of every run (no -s needed)."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import cgroup_mode, runc_rootfs
from tests.security.fuzzcount import EXAMPLES
from tests.security.runc_userns import open_dir

__all__ = ["cgroup_mode", "open_dir", "runc_rootfs"]  # fixtures shared with tests/e2e


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not EXAMPLES:
        return
    terminalreporter.section("security fuzzing: examples run")
    for name, count in sorted(EXAMPLES.items()):
        terminalreporter.write_line(f"{name}: {count} examples")
    terminalreporter.write_line(f"total: {sum(EXAMPLES.values())} examples")
