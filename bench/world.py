"""The fake worlds the benchmarks run in: generated inventories with matching host trees, gpuhook
configs, OCI bundles and runc containers. Everything lives under one temporary directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
PYTHON = VENV_BIN / "python"
GPUHOOK = VENV_BIN / "gpuhook"
RUNTIME = VENV_BIN / "gpuhook-runtime"
FAKE = REPO / "gpuhook" / "fake"
VOLUME_MOUNT_ROOT = "/var/run/nvidia-container-devices"
MINIMAL_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "LC_ALL": "C"}
DRIVER = "550.54.15"
# An A100's seven 1g.5gb instances have GPU instance ids 7..13 (compute instance 0 each).
GI_1G = tuple(range(7, 14))
CAP_MODE = 292  # 0444, as the driver declares access capabilities


def _uuid(kind: str, *parts: int) -> str:
    return f"{kind}-{uuid.uuid5(uuid.NAMESPACE_OID, f'gpuhook-bench-{kind}-{parts}')}"


def generate_node(dest: Path, gpus: int, migs_per_gpu: int) -> tuple[Path, Path]:
    """A fake node: `gpus` A100s, each in MIG mode with `migs_per_gpu` 1g.5gb instances
    (0: MIG off). Returns (inventory YAML, host-root), consistent with each other the way the
    shipped 8xa100-mig pair is: mig-minors lists every possible capability, the capabilities
    tree only the instances that exist."""
    host = dest / "host"
    inv_gpus: list[dict[str, Any]] = []
    minors = ["config 1", "monitor 2"]
    next_minor = 3
    caps = host / "proc/driver/nvidia/capabilities"
    for name, minor in (("config", 1), ("monitor", 2)):
        _write(caps / "mig" / name, f"DeviceFileMinor: {minor}\nDeviceFileMode: 256\n"
               "DeviceFileModify: 1\n")
    minor_of: dict[str, int] = {}
    for g in range(gpus):
        for gi in range(15):
            for sub in ["access", *(f"ci{ci}/access" for ci in range(8))]:
                key = f"gpu{g}/gi{gi}/{sub}"
                minors.append(f"{key} {next_minor}")
                minor_of[key] = next_minor
                next_minor += 1
    for g in range(gpus):
        bus = f"0000:{(g * 8 + 7) % 256:02x}:{g // 32:02x}.0"
        gpu_uuid = _uuid("GPU", g)
        entry: dict[str, Any] = {"index": g, "minor": g, "uuid": gpu_uuid, "pci_bus_id": bus,
                                 "name": "NVIDIA A100-SXM4-40GB",
                                 "mig_enabled": migs_per_gpu > 0}
        migs = []
        for m in range(migs_per_gpu):
            gi = GI_1G[m]
            migs.append({"index": m, "uuid": _uuid("MIG", g, m), "gi": gi, "ci": 0,
                         "profile": "1g.5gb"})
            for sub in ("access", "ci0/access"):
                key = f"gpu{g}/gi{gi}/{sub}"
                _write(caps / f"gpu{g}" / "mig" / f"gi{gi}" / sub,
                       f"DeviceFileMinor: {minor_of[key]}\nDeviceFileMode: {CAP_MODE}\n"
                       "DeviceFileModify: 1\n")
        if migs:
            entry["mig_devices"] = migs
        inv_gpus.append(entry)
        _write(host / "proc/driver/nvidia/gpus" / bus / "information",
               f"Model: \t\t NVIDIA A100-SXM4-40GB\nGPU UUID: \t {gpu_uuid}\n"
               f"Device Minor: \t {g}\nBus Location: \t {bus}\n")
    _write(host / "proc/driver/nvidia-caps/mig-minors", "\n".join(minors) + "\n")
    shutil.copy(FAKE / "hosts/8xa100-mig/proc/devices", _mkparent(host / "proc/devices"))
    _write(host / "sys/module/nvidia/version", DRIVER + "\n")
    _write(host / "proc/driver/nvidia/version",
           f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {DRIVER}\n")
    import yaml

    inventory = dest / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({"driver_version": DRIVER, "cuda_version": "12.4",
                                         "gpus": inv_gpus}, sort_keys=False))
    return inventory, host


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _write(path: Path, text: str) -> None:
    _mkparent(path).write_text(text)


def write_config(path: Path, inventory: Path, host: Path, log_file: Path,
                 cache: Path | None = None, extra: Mapping[str, object] | None = None) -> Path:
    keys: dict[str, object] = {"inventory": str(inventory), "host-root": str(host),
                               "log-file": str(log_file), "driver-files": False}
    keys["inventory-cache"] = str(cache if cache else path.parent / "no-snapshot.json")
    keys.update(extra or {})
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items()))
    return path


def refresh(config: Path) -> None:
    subprocess.run([str(GPUHOOK), "inventory", "refresh", "--config", str(config)], check=True,
                   capture_output=True, env=MINIMAL_ENV)


# --- OCI bundles ---------------------------------------------------------------------------------

_SPEC: dict[str, Any] = {}


def runc_spec(workdir: Path) -> dict[str, Any]:
    """`runc spec`'s default config.json (generated once), as a fresh copy."""
    if not _SPEC:
        d = workdir / "runc-spec"
        d.mkdir(exist_ok=True)
        subprocess.run(["runc", "spec"], cwd=d, check=True, env=MINIMAL_ENV, capture_output=True)
        _SPEC.update(json.loads((d / "config.json").read_text()))
    spec: dict[str, Any] = json.loads(json.dumps(_SPEC))
    return spec


def build_rootfs(dest: Path) -> Path:
    """busybox-static with a few applet links: what every benchmark container runs."""
    for d in ("bin", "proc", "dev", "sys", "tmp", "etc"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", dest / "bin" / "busybox")
    for name in ("sh", "true", "ls", "cat", "echo", "sleep"):
        (dest / "bin" / name).symlink_to("busybox")
    return dest


def make_bundle(path: Path, rootfs: Path, workdir: Path, *, args: Sequence[str] = ("true",),
                request_ids: Sequence[str] = (), hook: Sequence[str] | None = None) -> Path:
    """A bundle dir whose config.json is `runc spec`'s default with our args, the device
    plugin's /dev/null mounts for `request_ids`, and optionally a prestart hook. The rootfs is
    shared and read-only (root.path absolute), so bundles are cheap."""
    path.mkdir(parents=True)
    spec = runc_spec(workdir)
    spec["process"]["terminal"] = False
    spec["process"]["args"] = list(args)
    spec["root"] = {"path": str(rootfs), "readonly": True}
    for rid in request_ids:
        spec["mounts"].append({"destination": f"{VOLUME_MOUNT_ROOT}/{rid}", "type": "bind",
                               "source": "/dev/null", "options": ["rbind", "ro"]})
    spec["linux"].pop("cgroupsPath", None)
    if hook is not None:
        spec["hooks"] = {"prestart": [{"path": hook[0], "args": list(hook[1:]),
                                       "env": [f"PATH={MINIMAL_ENV['PATH']}"]}]}
    (path / "config.json").write_text(json.dumps(spec, indent=1))
    return path


def hook_argv(config: Path) -> list[str]:
    return [str(GPUHOOK), "gpuhook", "hook", "prestart", "--config", str(config)]


def state_json(bundle: Path, pid: int = 1, cid: str = "bench") -> bytes:
    return json.dumps({"ociVersion": "1.0.2", "id": cid, "pid": pid, "status": "creating",
                       "bundle": str(bundle)}).encode()


class Runc:
    """runc with a private --root, and a unique container id per call."""

    def __init__(self, root: Path, binary: str = "runc") -> None:
        self.root = root
        self.binary = binary
        self.counter = 0

    def new_id(self, prefix: str = "gpuhook-bench") -> str:
        self.counter += 1
        return f"{prefix}-{os.getpid()}-{self.counter}"

    def argv(self, *args: str, binary: str | None = None) -> list[str]:
        return [binary or self.binary, "--root", str(self.root), *args]

    def create(self, bundle: Path, cid: str) -> None:
        """`runc create` (not started). Its init keeps runc's stdio, so no pipes here."""
        with tempfile.TemporaryFile() as err:
            rc = subprocess.run(self.argv("create", "-b", str(bundle), cid), env=MINIMAL_ENV,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, check=False).returncode
            if rc != 0:
                err.seek(0)
                self.delete(cid)
                raise RuntimeError(f"runc create {cid} exited {rc}: "
                                   f"{err.read().decode(errors='replace').strip()[-400:]}")

    def delete(self, cid: str) -> None:
        subprocess.run(self.argv("delete", "-f", cid), check=False, capture_output=True,
                       env=MINIMAL_ENV)

    def state(self, cid: str) -> dict[str, Any]:
        out = subprocess.run(self.argv("state", cid), check=True, capture_output=True,
                             env=MINIMAL_ENV).stdout
        state: dict[str, Any] = json.loads(out)
        return state

    def leftovers(self) -> list[str]:
        out = subprocess.run(self.argv("list", "-q"), check=False, capture_output=True,
                             env=MINIMAL_ENV, text=True).stdout
        return out.split()
