"""Class 3: the decision log records only what gpuhook acts on. Attacks: secrets under the
NVIDIA_ prefix, values and id lists large enough to flood the log, a record built to exceed
any line size, and a symlink or FIFO planted where the log file goes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from gpuhook.runtime.log_record import (
    LOGGED_ENV_KEYS,
    MAX_LOG_ITEMS,
    MAX_LOG_VALUE,
    MAX_RECORD_BYTES,
    bounded_record,
)
from tests.security import entry as e

SECRETS = ["NVIDIA_API_KEY=nvapi-SECRET1", "NVIDIA_NGC_TOKEN=SECRET2", "NGC_API_KEY=SECRET3",
           "NVIDIA_REQUIRE_TOKEN=SECRET4", "AWS_SECRET_ACCESS_KEY=SECRET5"]


def hook(tmp_path: Path, s: dict[str, Any], log: Path | None = None) -> tuple[e.Run, Path]:
    log = log or tmp_path / "gpuhook.log"
    config = e.write_config(tmp_path / "gpuhook.toml", log)
    run = e.run_process(e.hook_argv(config), stdin=e.state_for(e.bundle_with(tmp_path, s)))
    return run, log


def records(log: Path) -> list[dict[str, Any]]:
    raw = log.read_bytes()
    lines = raw.split(b"\n")
    assert lines[-1] == b"", "the log ends with a newline"
    for line in lines[:-1]:
        assert len(line) + 1 <= MAX_RECORD_BYTES, f"a record of {len(line)} bytes"
        assert all(b >= 0x20 for b in line), "a raw control byte in the log"
    return [json.loads(line) for line in lines[:-1]]


@pytest.mark.parametrize("privileged", [False, True], ids=["unprivileged", "privileged"])
def test_only_the_env_keys_gpuhook_reads_are_logged_never_other_nvidia_keys(
        tmp_path: Path, privileged: bool) -> None:
    s = e.spec(env=["NVIDIA_VISIBLE_DEVICES=void", "NVIDIA_DRIVER_CAPABILITIES=compute",
                    *SECRETS], privileged=privileged)
    run, log = hook(tmp_path, s)
    e.assert_clean_exit(run, allowed=(0,))
    raw = log.read_text()
    assert "SECRET" not in raw
    (record,) = records(log)
    assert set(record["nvidia_env"]) <= {*LOGGED_ENV_KEYS, "(other NVIDIA_REQUIRE_* keys)"}
    assert record["nvidia_env"]["(other NVIDIA_REQUIRE_* keys)"] == "1"


def test_a_huge_env_value_is_cut_with_its_length_kept(tmp_path: Path) -> None:
    value = ",".join(f"GPU-{i:040d}" for i in range(4000))  # 4000 well-formed ids, 180 KB
    run, log = hook(tmp_path, e.spec(env=[f"NVIDIA_VISIBLE_DEVICES={value}"]))
    e.assert_clean_exit(run, allowed=(0,))  # unprivileged: ignored, and it starts
    (record,) = records(log)
    logged = record["nvidia_env"]["NVIDIA_VISIBLE_DEVICES"]
    assert logged == value[:MAX_LOG_VALUE] + f"...(+{len(value) - MAX_LOG_VALUE} chars)"
    assert record["ignored"][0]["value"].endswith(f"...(+{len(value) - MAX_LOG_VALUE} chars)")


def test_thousands_of_ignored_mounts_log_32_with_their_count(tmp_path: Path) -> None:
    mounts = [{"destination": f"{e.ROOT}/{i}", "type": "bind", "source": f"/srv/{'x' * 200}"}
              for i in range(5000)]
    # (the env entry takes the hook past its fast path, which leaves no record)
    run, log = hook(tmp_path, e.spec(env=["NVIDIA_VISIBLE_DEVICES=void"], mounts=mounts))
    e.assert_clean_exit(run, allowed=(0,))
    (record,) = records(log)
    assert record["ignored_count"] == 5000
    assert len(record.get("ignored", [])) <= MAX_LOG_ITEMS or "dropped" in str(
        record["ignored"])


def test_ids_are_cut_with_their_count_kept(tmp_path: Path) -> None:
    # "2", "02", "002", ...: 40 distinct ids for GPU 2 (an index is read as a number).
    ids = tuple("0" * n + "2" for n in range(40))
    run, log = hook(tmp_path, e.spec(ids=ids))
    e.assert_clean_exit(run, allowed=(1,))  # DEAD_PID: decided, then the apply step fails
    (record,) = records(log)
    assert record["device_ids_count"] == 40
    assert record["device_ids"] == list(ids[:MAX_LOG_ITEMS])


def test_a_record_over_the_size_cap_drops_its_largest_fields_first() -> None:
    record = {"event": "prestart", "id": "c", "decision": "applied",
              "notes": ["n" * 1000] * 32, "applied": ["a" * 1000] * 32, "error": "e" * 5000}
    out = bounded_record(record)
    assert len(json.dumps(out, separators=(",", ":"))) <= MAX_RECORD_BYTES
    assert out["truncated"] is True
    assert (out["event"], out["id"], out["decision"]) == ("prestart", "c", "applied")
    assert out["error"].startswith("e" * 2048) and out["error"].endswith("(+2952 chars)")


def test_the_log_file_is_created_0600(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        run, log = hook(tmp_path, e.spec(env=["NVIDIA_VISIBLE_DEVICES=all"]))
    finally:
        os.umask(old)
    e.assert_clean_exit(run, allowed=(0,))
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_a_symlink_at_the_log_path_is_not_followed_and_the_container_still_starts(
        tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    log = tmp_path / "gpuhook.log"
    log.symlink_to(victim)
    run, _ = hook(tmp_path, e.spec(env=["NVIDIA_VISIBLE_DEVICES=all"]), log)
    assert run.code == 0, run.describe()
    assert victim.read_text() == "precious\n"
    line = e.assert_one_line(run.stderr)
    assert "cannot write" in line


def test_a_fifo_at_the_log_path_neither_blocks_nor_is_written(tmp_path: Path) -> None:
    log = tmp_path / "gpuhook.log"
    os.mkfifo(log)
    run, _ = hook(tmp_path, e.spec(env=["NVIDIA_VISIBLE_DEVICES=all"]), log)
    assert run.code == 0 and not run.timed_out, run.describe()
    assert "cannot write" in e.assert_one_line(run.stderr)
