"""`gpuhook hook prestart` up to the apply step: fast path, errors, and the decision log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.unit.specs import MIG8, MIG8_HOST, spec

HEAVY = ("click", "yaml", "pynvml", "tomllib", "gpuhook.config", "gpuhook.runtime.pipeline")


def run_hook(tmp_path: Path, s: dict[str, Any] | None, state: bytes | None = None,
             importtime: bool = False) -> tuple[subprocess.CompletedProcess[str], Path]:
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    if s is not None:
        (bundle / "config.json").write_text(json.dumps(s))
    log = tmp_path / "gpuhook.log"
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'inventory = "{MIG8}"\nhost-root = "{MIG8_HOST}"\nlog-file = "{log}"\n'
                   "driver-files = false\n")
    if state is None:
        state = json.dumps({"ociVersion": "1.0.2", "id": "ctr-1", "pid": 1,
                            "bundle": str(bundle)}).encode()
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "gpuhook",
           "hook", "prestart", "--config", str(cfg)]
    r = subprocess.run(cmd, input=state.decode(errors="replace"), capture_output=True,
                       text=True, check=False, env={"PATH": "/usr/bin:/bin"})
    return r, log


def imported(stderr: str) -> set[str]:
    return {line.split("|")[-1].strip() for line in stderr.splitlines()
            if line.startswith("import time:")}


def test_no_request_exits_zero_without_heavy_imports_or_log(tmp_path: Path) -> None:
    r, log = run_hook(tmp_path, spec(env=["HOME=/root"]), importtime=True)
    assert r.returncode == 0
    mods = imported(r.stderr)
    assert "gpuhook.runtime.hook" in mods, "importtime output was read"
    assert not {m for m in mods if m.split(".")[0] in HEAVY or m in HEAVY}
    assert not log.exists(), "a container that asked for nothing leaves no trace"


def test_ignored_envvar_is_logged_with_reason_and_no_secrets(tmp_path: Path) -> None:
    s = spec(env=["NVIDIA_VISIBLE_DEVICES=all", "AWS_SECRET_ACCESS_KEY=hunter2"])
    r, log = run_hook(tmp_path, s)
    assert r.returncode == 0, r.stderr
    record = json.loads(log.read_text())
    assert record["id"] == "ctr-1"
    assert record["decision"] == "empty"
    assert record["source"] == "none"
    assert record["ignored"][0]["value"] == "all"
    assert record["nvidia_env"] == {"NVIDIA_VISIBLE_DEVICES": "all"}
    assert "hunter2" not in log.read_text()


def test_unknown_id_fails_with_one_line_and_logs(tmp_path: Path) -> None:
    r, log = run_hook(tmp_path, spec(ids=["GPU-missing"]))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1
    assert "ctr-1" in r.stderr and "GPU-missing not found; available: MIG-" in r.stderr
    record = json.loads(log.read_text())
    assert (record["decision"], record["id"]) == ("refused", "ctr-1")
    assert "GPU-missing" in record["error"]


@pytest.mark.parametrize(
    "state",
    [
        pytest.param(b"", id="empty stdin"),
        pytest.param(b"{", id="broken JSON"),
        pytest.param(b'{"pid": 1}', id="no bundle"),
        pytest.param(b'{"pid": "1", "bundle": "/tmp"}', id="pid is a string"),
        pytest.param(b'{"pid": 1, "bundle": "/nonexistent-bundle"}', id="bundle without spec"),
    ],
)
def test_malformed_state_exits_two(tmp_path: Path, state: bytes) -> None:
    r, _ = run_hook(tmp_path, None, state=state)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_usage_error_exits_two(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "gpuhook", "hook", "prestart", "--bogus"],
                       input="", capture_output=True, text=True, check=False)
    assert r.returncode == 2
    assert "usage" in r.stderr


def test_hook_help_goes_through_click() -> None:
    r = subprocess.run([sys.executable, "-m", "gpuhook", "hook", "--help"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "prestart" in r.stdout
