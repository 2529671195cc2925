"""gpuhook-runtime in front of the real runc 1.1, cgroup v1 and v2 (issue 5).

`gpuhook-runtime --root R run -b BUNDLE ID`: in spec mode the shim writes the Plan into
config.json and runc itself creates the nodes (linux.devices) and the cgroup rules
(linux.resources.devices; v1 devices.allow, v2 eBPF program). Fake majors 195 / 510 / 511 have
no driver here, so an open gives ENXIO when the cgroup allows the device and EPERM when not.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.e2e import runc_harness as rh

pytestmark = pytest.mark.e2e

SHIM = Path(sys.executable).parent / "gpuhook-runtime"
FRONTEND, UVM, CAPS = 195, 510, 511
CONTROL = {"/dev/nvidiactl": (FRONTEND, 255), "/dev/nvidia-uvm": (UVM, 0),
           "/dev/nvidia-uvm-tools": (UVM, 1)}
MIG_UUID = "MIG-205e24ca-2066-514f-80c3-cb66869f6a1b"  # GPU 1, GI 1 CI 0 in the fake node

# Like the harness's run script, with the shim in runc's place; always cleans up.
_RUN = r"""
SHIM="$1"; R="$2"; B="$3"; ID="$4"; CG="$5"; MODE="$6"
if [ "$MODE" = v2 ]; then
  mount --make-rprivate / && mount -t cgroup2 none /sys/fs/cgroup || exit 97
fi
"$SHIM" --root "$R" --log "$B/runc-log.json" --log-format json run -b "$B" "$ID" </dev/null
rc=$?
runc --root "$R" delete -f "$ID" >/dev/null 2>&1
for c in /sys/fs/cgroup/*"$CG" /sys/fs/cgroup"$CG"; do [ -d "$c" ] && rmdir "$c" 2>/dev/null; done
exit $rc
"""


def run_through_shim(tmp_path: Path, rootfs: Path, mode: str, opts: rh.BundleOptions,
                     config_extra: dict[str, object] | None = None,
                     ) -> tuple[subprocess.CompletedProcess[str], rh.Bundle, Path]:
    log = tmp_path / "gpuhook.log"
    cfg = rh.write_config(tmp_path / "gpuhook.toml", log_file=log,
                          extra={"runtimes": ["runc"], **(config_extra or {})})
    bundle = rh.make_bundle(tmp_path / "bundle", rootfs, opts)
    cid = f"gpuhook-shim-{uuid.uuid4().hex[:12]}"
    argv = ["bash", "-c", _RUN, "run", str(SHIM), str(tmp_path / "runc-root"),
            str(bundle.path), cid, bundle.cgroups_path, mode]
    if mode == "v2":
        argv = ["unshare", "-m", "--propagation", "private", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          env={**rh.MINIMAL_ENV, "GPUHOOK_CONFIG": str(cfg)},
                          stdin=subprocess.DEVNULL)
    return proc, bundle, log


def usable(probes: dict[str, rh.Probe], path: str, major: int, minor: int,
           mode: int = 0o666) -> None:
    p = probes[path]
    assert p.exists, f"{path} was not created"
    assert (p.is_char, p.major, p.minor, p.mode, p.owner) == (True, major, minor, mode, "0:0")


def test_spec_mode_gpu_request_is_created_and_allowed_by_runc_itself(
        runc_rootfs: Path, cgroup_mode: str, tmp_path: Path) -> None:
    paths = ["/dev/nvidia3", *CONTROL, "/dev/nvidia4", "/dev/nvidia-modeset", "/dev/null"]
    proc, bundle, log = run_through_shim(tmp_path, runc_rootfs, cgroup_mode, rh.BundleOptions(
        request_ids=("3",), env=("NVIDIA_VISIBLE_DEVICES=all",), args=rh.probe_args(paths)))
    assert proc.returncode == 0, proc.stderr
    probes, listings = rh.parse_probe(proc.stdout)
    usable(probes, "/dev/nvidia3", FRONTEND, 3)
    assert (probes["/dev/nvidia3"].read, probes["/dev/nvidia3"].write) == ("ENXIO", "ENXIO")
    for path, (major, minor) in CONTROL.items():
        usable(probes, path, major, minor)
        assert (probes[path].read, probes[path].write) == ("ENXIO", "ENXIO"), path
    # The env var asked for all GPUs: ignored for an unprivileged container.
    assert not probes["/dev/nvidia4"].exists
    assert not probes["/dev/nvidia-modeset"].exists
    assert (probes["/dev/null"].read, probes["/dev/null"].write) == ("OK", "OK")
    dev = listings["/dev"]
    assert dev is not None
    assert sorted(n for n in dev if n.startswith("nvidia")) == [
        "nvidia-uvm", "nvidia-uvm-tools", "nvidia3", "nvidiactl"]
    spec = json.loads(bundle.config_json.read_text())
    assert "hooks" not in spec  # spec mode: runc did it all, no hook ran
    [entry] = [json.loads(x) for x in log.read_text().splitlines()]
    assert (entry["event"], entry["decision"], entry["device_ids"]) == ("create", "applied",
                                                                        ["3"])


def test_spec_mode_mig_capabilities_are_read_only_in_the_cgroup(
        runc_rootfs: Path, cgroup_mode: str, tmp_path: Path) -> None:
    caps = ["/dev/nvidia-caps/nvidia-cap201", "/dev/nvidia-caps/nvidia-cap202"]
    proc, bundle, _ = run_through_shim(tmp_path, runc_rootfs, cgroup_mode, rh.BundleOptions(
        request_ids=(MIG_UUID,), args=rh.probe_args(["/dev/nvidia1", *caps],
                                                    ["/dev", "/dev/nvidia-caps"])))
    assert proc.returncode == 0, proc.stderr
    probes, _ = rh.parse_probe(proc.stdout)
    usable(probes, "/dev/nvidia1", FRONTEND, 1)
    for cap in caps:
        usable(probes, cap, CAPS, int(cap.rsplit("cap", 1)[1]), mode=0o444)
        # Access "r": a read open reaches the (absent) driver, a write open is denied.
        assert (probes[cap].read, probes[cap].write) == ("ENXIO", "EPERM"), cap
    env = json.loads(bundle.config_json.read_text())["process"]["env"]
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in env


def test_no_request_leaves_the_spec_byte_identical_and_no_gpu_nodes(
        runc_rootfs: Path, tmp_path: Path) -> None:
    proc, bundle, _ = run_through_shim(tmp_path, runc_rootfs, "v1", rh.BundleOptions(
        args=rh.probe_args(["/dev/nvidiactl"])))
    assert proc.returncode == 0, proc.stderr
    assert bundle.config_json.read_text() == json.dumps(bundle.spec, indent=1)
    probes, _ = rh.parse_probe(proc.stdout)
    assert not probes["/dev/nvidiactl"].exists


def test_a_refused_request_never_starts_the_container(runc_rootfs: Path,
                                                      tmp_path: Path) -> None:
    proc, bundle, _ = run_through_shim(tmp_path, runc_rootfs, "v1", rh.BundleOptions(
        request_ids=("GPU-00000000-0000-0000-0000-000000000000",),
        args=["echo", "STARTED"]))
    assert proc.returncode == 1
    assert "STARTED" not in proc.stdout
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("gpuhook-runtime:")]
    assert "GPU-00000000-0000-0000-0000-000000000000" in line
    [logged] = (bundle.path / "runc-log.json").read_text().splitlines()
    assert json.loads(logged)["msg"] == line


def test_hook_mode_goes_through_gpuhook_hook_prestart(runc_rootfs: Path, cgroup_mode: str,
                                                      tmp_path: Path) -> None:
    proc, bundle, log = run_through_shim(
        tmp_path, runc_rootfs, cgroup_mode,
        rh.BundleOptions(request_ids=("3",), args=rh.probe_args(["/dev/nvidia3", "/dev/nvidia4"])),
        config_extra={"mode": "hook"})
    assert proc.returncode == 0, proc.stderr
    probes, _ = rh.parse_probe(proc.stdout)
    usable(probes, "/dev/nvidia3", FRONTEND, 3)
    assert (probes["/dev/nvidia3"].read, probes["/dev/nvidia3"].write) == ("ENXIO", "ENXIO")
    assert not probes["/dev/nvidia4"].exists
    spec = json.loads(bundle.config_json.read_text())
    assert "devices" not in spec["linux"]
    assert [h["args"][:3] for h in spec["hooks"]["prestart"]] == [["gpuhook", "hook",
                                                                   "prestart"]]
    events = [json.loads(x)["event"] for x in log.read_text().splitlines()]
    assert events == ["create", "prestart"]


_UPDATE = r"""
SHIM="$1"; R="$2"; B="$3"; ID="$4"; CG="$5"; MODE="$6"; PROBE="$7"
if [ "$MODE" = v2 ]; then
  mount --make-rprivate / && mount -t cgroup2 none /sys/fs/cgroup || exit 97
fi
trap 'runc --root "$R" delete -f "$ID" >/dev/null 2>&1
  for c in /sys/fs/cgroup/*"$CG" /sys/fs/cgroup"$CG"; do [ -d "$c" ] && rmdir "$c" 2>/dev/null
  done' EXIT
"$SHIM" --root "$R" run -d -b "$B" "$ID" </dev/null >/dev/null 2>"$B/run-err" || {
  cat "$B/run-err" >&2; exit 3; }
echo '{}' | runc --root "$R" update -r - "$ID" || exit 4
cp "$R/$ID/state.json" "$B/state.json"
runc --root "$R" exec "$ID" sh -c "$PROBE" probe /dev/nvidia3 /dev/nvidia4 --ls
"""


def test_spec_mode_rules_are_runcs_own_and_survive_runc_update(
        runc_rootfs: Path, cgroup_mode: str, tmp_path: Path) -> None:
    # The rules live in runc's container config (state.json): `runc update` re-applies them
    # rather than dropping access that something else added behind runc's back.
    log = tmp_path / "gpuhook.log"
    cfg = rh.write_config(tmp_path / "gpuhook.toml", log_file=log, extra={"runtimes": ["runc"]})
    bundle = rh.make_bundle(tmp_path / "bundle", runc_rootfs, rh.BundleOptions(
        request_ids=("3",), args=["sleep", "60"]))
    cid = f"gpuhook-shim-{uuid.uuid4().hex[:12]}"
    probe = rh.probe_args([])[2]
    argv = ["bash", "-c", _UPDATE, "update", str(SHIM), str(tmp_path / "runc-root"),
            str(bundle.path), cid, bundle.cgroups_path, cgroup_mode, probe]
    if cgroup_mode == "v2":
        argv = ["unshare", "-m", "--propagation", "private", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          env={**rh.MINIMAL_ENV, "GPUHOOK_CONFIG": str(cfg)},
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    probes, _ = rh.parse_probe(proc.stdout)
    usable(probes, "/dev/nvidia3", FRONTEND, 3)
    assert (probes["/dev/nvidia3"].read, probes["/dev/nvidia3"].write) == ("ENXIO", "ENXIO")
    assert not probes["/dev/nvidia4"].exists
    state = json.loads((bundle.path / "state.json").read_text())
    rules = state["config"]["cgroups"]["devices"]  # runc 1.1 inlines Resources
    assert {"type": ord("c"), "major": FRONTEND, "minor": 3, "permissions": "rwm",
            "allow": True} in rules
