"""gpuhook as runc's prestart hook, in cgroup v1 and v2 mode (issue 4, "Proof in CI")."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import runc_harness as rh

pytestmark = pytest.mark.e2e


def test_container_without_request_starts_and_gets_no_nodes(
        runc_rootfs: Path, cgroup_mode: str, tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    cfg = rh.write_config(tmp_path / "gpuhook.toml", log_file=log)
    bundle = rh.make_bundle(tmp_path / "bundle", runc_rootfs, rh.BundleOptions(
        args=rh.probe_args(["/dev/nvidiactl", "/dev/null"]), hook=rh.hook_command(cfg)))
    result = rh.run_container(bundle, cgroup_mode)
    assert result.ok, result.stderr
    assert result.probe_done
    assert not result.probes["/dev/nvidiactl"].exists
    assert result.probes["/dev/null"].read == "OK"
    listing = result.listings["/dev"]
    assert listing is not None
    assert not [n for n in listing if n.startswith("nvidia")]
    assert result.left_behind == []
