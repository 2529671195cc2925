"""Class 2: bounded work before anything super-linear. Nothing here times a run: each input is
big enough that a quadratic path would run for minutes to hours (the arithmetic is beside each
case) and must answer within entry.TIMEOUT (20 s) instead, or the test counts the operations
the code does past a limit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gpuhook.decide import request
from gpuhook.decide.spec import parse_spec
from tests.security import entry as e

ROOT = e.ROOT


def dry_run(tmp_path: Path, s: dict[str, Any]) -> e.Run:
    config = e.write_config(tmp_path / "gpuhook.toml", tmp_path / "gpuhook.log")
    return e.run_process(e.dry_run_argv(e.bundle_with(tmp_path, s), config, as_json=True))


def test_distinct_ids_in_the_env_var_are_deduplicated_in_linear_time(tmp_path: Path) -> None:
    # 165 000 distinct ids just under the length limit: deduplicating them with `not in list`
    # is 1.4e10 string comparisons (hours); a dict does it in milliseconds.
    ids = ",".join(str(i) for i in range(165_000))
    assert len(ids) < request.MAX_VISIBLE_CHARS
    run = dry_run(tmp_path, e.spec(env=[f"NVIDIA_VISIBLE_DEVICES={ids}"], privileged=True))
    e.assert_clean_exit(run, allowed=(2,))
    assert f"more than {request.MAX_IDS}".encode() in run.stderr, run.describe()


def test_an_env_var_past_its_length_limit_is_refused_before_it_is_split(
        tmp_path: Path) -> None:
    # 15 MiB of commas: 15 million empty items if split first.
    run = dry_run(tmp_path, e.spec(env=["NVIDIA_VISIBLE_DEVICES=" + "," * (15 << 20)],
                                   privileged=True))
    e.assert_clean_exit(run, allowed=(2,))
    assert b"characters, more than" in run.stderr, run.describe()


def test_volume_mount_ids_stop_at_the_limit_counting_each_check(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 16 384 mounts (the spec limit) with distinct ids: the id check runs at most MAX_IDS + 1
    # times, not once per mount, and deduplication is not a scan of the ids so far.
    checks = []
    real = request._id_problem

    def counting(device_id: str, where: str) -> str | None:
        checks.append(device_id)
        return real(device_id, where)

    monkeypatch.setattr(request, "_id_problem", counting)
    s = e.spec(ids=tuple(f"GPU-{i:08d}" for i in range(16_383)))  # + /dev: the spec limit
    view = parse_spec(json.dumps(s).encode())
    # The error is the request's, raised only if the mounts are acted on (an ignored request
    # never stops a container).
    asked = request.extract_request(view, ROOT)
    assert asked.mount_error == f"more than {request.MAX_IDS} device ids in volume mounts"
    assert len(checks) == request.MAX_IDS + 1


def test_a_huge_list_of_unknown_driver_capabilities_costs_one_pass_and_a_short_line(
        tmp_path: Path) -> None:
    # 1.4 million unknown capabilities: matching each against a list of all asked would be
    # 2e12 comparisons. A granted request with an unsupported capability is refused (as the
    # toolkit does, docs/compatibility.md); the line names 16 of them and counts the rest.
    caps = ",".join(f"c{i}" for i in range(1_400_000))
    run = dry_run(tmp_path, e.spec(env=[f"NVIDIA_DRIVER_CAPABILITIES={caps}"], ids=("0:0",)))
    e.assert_clean_exit(run, allowed=(1, 2))
    assert b"(and 1399984 more)" in run.stderr
    assert len(run.stderr) < 1024


def test_a_requirement_with_a_million_alternatives_is_refused_before_evaluation(
        tmp_path: Path) -> None:
    expr = " ".join(["arch=sm_90"] * 1_000_000)
    run = dry_run(tmp_path, e.spec(env=[f"NVIDIA_REQUIRE_CUDA={expr}"], ids=("0:0",)))
    e.assert_clean_exit(run, allowed=(1,))
    assert b"more than 65536" in run.stderr


def test_unjudged_alternatives_give_at_most_sixteen_notes(tmp_path: Path) -> None:
    # Unjudged: the GPU's arch is unknown, as in a fake inventory written before the key.
    old = tmp_path / "inventory.yaml"
    old.write_text("".join(line for line in e.MIG8.read_text().splitlines(keepends=True)
                           if not line.lstrip().startswith(("arch:", "brand:"))))
    config = e.write_config(tmp_path / "gpuhook.toml", tmp_path / "gpuhook.log",
                            inventory=str(old))
    expr = " ".join(f"arch=sm_{i}" for i in range(5000))
    s = e.spec(env=[f"NVIDIA_REQUIRE_CUDA={expr}"], ids=("0:0",))
    run = e.run_process(e.dry_run_argv(e.bundle_with(tmp_path, s), config, as_json=True))
    e.assert_clean_exit(run, allowed=(0,))
    text = e.run_process(e.dry_run_argv(tmp_path / "bundle", tmp_path / "gpuhook.toml"))
    notes = [line for line in text.stdout.decode().splitlines() if "NVIDIA_REQUIRE_CUDA" in line]
    assert len(notes) == 17 and "4984 more alternatives not evaluated" in notes[-1]


def test_the_shim_edits_a_spec_with_many_devices_in_one_pass(tmp_path: Path) -> None:
    # 200 000 devices already in linux.devices: the edit indexes their paths once instead of
    # scanning them for each planned node.
    config = e.write_config(tmp_path / "gpuhook.toml", tmp_path / "gpuhook.log")
    s = e.spec(ids=("0:0",))
    s["linux"]["devices"] = [{"path": f"/dev/x{i}", "type": "c", "major": 1, "minor": 3}
                             for i in range(200_000)]
    bundle = e.bundle_with(tmp_path, s)
    run = e.run_forked(e.shim_main(bundle, config))
    e.assert_clean_exit(run, allowed=(0,))
    edited = json.loads((bundle / "config.json").read_text())
    assert len(edited["linux"]["devices"]) == 200_000 + 6  # ctl, uvm, uvm-tools, GPU, 2 caps
