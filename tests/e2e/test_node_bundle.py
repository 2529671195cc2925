"""The bundle `gpuhook node install` copies to a host is self-contained: chrooted into a root
that holds nothing but busybox as /bin/sh and the bundle, `gpuhook` runs (its own loader, libc,
interpreter, standard library and dependencies) and computes a plan; the runtime shim's
launcher starts too. A host needs /bin/sh and nothing else."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gpuhook.node import payload
from tests.conftest import HOSTS, INVENTORIES
from tests.e2e.containerd_harness import MINIMAL_PATH
from tests.e2e.oci_image import find_busybox

pytestmark: list[pytest.MarkDecorator] = [pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (chroot)"
    if find_busybox() is None:
        return "busybox not installed (apt: busybox-static)"
    return None


_why = _missing()
if _why:
    pytestmark.append(pytest.mark.skip(reason=_why))


@pytest.fixture(scope="module")
def bare_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bare-host")
    busybox = find_busybox()
    assert busybox is not None
    (root / "bin").mkdir()
    shutil.copy2(busybox, root / "bin" / "sh")
    parent = root / payload.HOST_DIR.lstrip("/")
    parent.mkdir(parents=True)
    b = payload.collect()
    payload.write(b, str(parent))
    payload.switch_current(str(parent), b.id)
    (parent / payload.CONFIG_NAME).write_text("")
    # the data a dry run reads: a bundle and the fake node (as files, not from the host)
    shutil.copytree(ROOT / "examples" / "bundle", root / "data" / "bundle")
    shutil.copytree(HOSTS / "8xa100-mig", root / "data" / "host")
    shutil.copy2(INVENTORIES / "8xa100-mig.yaml", root / "data" / "inventory.yaml")
    (root / "data" / "config.toml").write_text(
        'inventory = "/data/inventory.yaml"\nhost-root = "/data/host"\nlog-file = "/data/log"\n'
        'driver-files = false\n')  # the shipped fake host has no driver user-space
    return root


def _chroot(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    chroot = shutil.which("chroot", path=MINIMAL_PATH)
    assert chroot is not None
    return subprocess.run([chroot, str(root), *argv], capture_output=True, text=True,
                          env={"PATH": "/bin"}, timeout=120, check=False)


def test_the_root_holds_nothing_but_sh_the_bundle_and_test_data(bare_root: Path) -> None:
    assert sorted(os.listdir(bare_root)) == ["bin", "data", "usr"]
    assert os.listdir(bare_root / "bin") == ["sh"]
    assert os.listdir(bare_root / "usr") == ["local"]


def test_gpuhook_runs_from_the_bundle_alone_and_plans(bare_root: Path) -> None:
    gpuhook = f"{payload.HOST_DIR}/{payload.CURRENT}/bin/gpuhook"
    res = _chroot(bare_root, gpuhook, "dry-run", "/data/bundle", "--config",
                  "/data/config.toml", "--json")
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    assert plan["device_ids"], plan


def test_the_runtime_launcher_starts_the_shim_from_the_bundle(bare_root: Path) -> None:
    """With no runc in this root the shim must fail closed, naming what it looked for: proof
    that the bundled interpreter reached gpuhook's shim code."""
    runtime = f"{payload.HOST_DIR}/{payload.CURRENT}/bin/gpuhook-runtime"
    res = _chroot(bare_root, runtime, "--root", "/run/x", "state", "nothing")
    assert res.returncode != 0
    assert "no real OCI runtime found" in res.stderr, res.stderr
