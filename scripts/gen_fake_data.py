"""Regenerate the shipped fake node data in gpuhook/fake/ (inventories and host trees).

Run from the repo root: `python3 scripts/gen_fake_data.py gpuhook/fake`. The outputs are committed;
this script documents how they were made. mig-minors lists every possible GI/CI of each GPU, the
way the driver does (config 1, monitor 2, then 9 minors per GI: its access and 8 CIs), while the
capabilities tree only has the instances that exist. Majors have no driver on a test machine
(nvidia-uvm 510, nvidia-caps 511), so opening an allowed node gives ENXIO, not a real device.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

DRIVER = "550.54.15"
PROC_DEVICES = """Character devices:
  1 mem
  4 /dev/vc/0
  4 tty
  5 /dev/tty
  5 /dev/console
  5 /dev/ptmx
 10 misc
128 ptm
136 pts
195 nvidia-frontend
195 nvidia
510 nvidia-uvm
511 nvidia-caps

Block devices:
  7 loop
259 blkext
"""
GIS_PER_GPU = 15
CIS_PER_GI = 8
BUSES = ["07", "0f", "47", "4e", "87", "90", "b7", "bd"]
# arch: the compute capability (A100 8.0, T4 7.5: CUDA C Programming Guide, "Compute
# Capabilities"). brand: libnvidia-container's name for nvmlDeviceGetBrand's answer. On current
# drivers both GPUs report NVML_BRAND_NVIDIA (`nvidia-smi -q` "Product Brand : NVIDIA": an
# A100-SXM4-80GB on 525.60.13, a Tesla T4 on 530.30.02 and 535.183.01, as posted in public
# logs), which libnvidia-container (src/driver.c driver_get_device_brand_1_svc) calls "Unknown";
# "Tesla" was what drivers before that brand reported for these boards.
A100_ARCH, T4_ARCH, BRAND = "8.0", "7.5", "Unknown"


def stable_uuid(prefix: str, *key: object) -> str:
    return f"{prefix}-{uuid.uuid5(uuid.NAMESPACE_OID, 'gpuhook/' + '/'.join(map(str, key)))}"


def capability(minor: int, mode: int) -> str:
    return f"DeviceFileMinor: {minor}\nDeviceFileMode: {mode}\nDeviceFileModify: 1\n"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def host_tree(base: Path, name: str, gpus: list[dict[str, Any]]) -> None:
    root = base / "hosts" / name
    write(root / "proc/devices", PROC_DEVICES)
    minors = {"config": 1, "monitor": 2}
    for g in range(len(gpus)):
        for gi in range(GIS_PER_GPU):
            first = 3 + (g * GIS_PER_GPU + gi) * (1 + CIS_PER_GI)
            minors[f"gpu{g}/gi{gi}/access"] = first
            for ci in range(CIS_PER_GI):
                minors[f"gpu{g}/gi{gi}/ci{ci}/access"] = first + 1 + ci
    write(root / "proc/driver/nvidia-caps/mig-minors",
          "".join(f"{k} {v}\n" for k, v in minors.items()))
    caps = root / "proc/driver/nvidia/capabilities"
    write(caps / "mig/config", capability(minors["config"], 0o400))
    write(caps / "mig/monitor", capability(minors["monitor"], 0o444))
    for gpu in gpus:
        write(root / f"proc/driver/nvidia/gpus/{gpu['pci_bus_id']}/information",
              f"Model: \t\t {gpu['name']}\nGPU UUID: \t {gpu['uuid']}\n"
              f"Device Minor: \t {gpu['minor']}\n")
        for m in gpu["mig_devices"]:
            key = f"gpu{gpu['minor']}/gi{m['gi']}"
            write(caps / f"gpu{gpu['minor']}/mig/gi{m['gi']}/access",
                  capability(minors[f"{key}/access"], 0o444))
            write(caps / f"gpu{gpu['minor']}/mig/gi{m['gi']}/ci{m['ci']}/access",
                  capability(minors[f"{key}/ci{m['ci']}/access"], 0o444))
    write(root / "sys/module/nvidia/version", f"{DRIVER}\n")
    write(root / "proc/driver/nvidia/version",
          f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {DRIVER}  "
          "Tue Mar  5 22:23:56 UTC 2024\n")


def inventory_yaml(base: Path, name: str, gpus: list[dict[str, Any]], comment: str) -> None:
    out = [f"# {comment}", f'driver_version: "{DRIVER}"', 'cuda_version: "12.4"', "gpus:"]
    for g in gpus:
        out += [f"  - index: {g['index']}", f"    minor: {g['minor']}", f"    uuid: {g['uuid']}",
                f"    pci_bus_id: \"{g['pci_bus_id']}\"", f"    name: {g['name']}",
                f"    arch: \"{g['arch']}\"", f"    brand: {g['brand']}",
                f"    mig_enabled: {'true' if g['mig_devices'] else 'false'}"]
        if g["mig_devices"]:
            out.append("    mig_devices:")
            out += [f"      - {{index: {m['index']}, uuid: {m['uuid']}, gi: {m['gi']}, "
                    f"ci: {m['ci']}, profile: {m['profile']}}}" for m in g["mig_devices"]]
    write(base / "inventories" / f"{name}.yaml", "\n".join(out) + "\n")


def a100(i: int, layout: list[tuple[int, str]]) -> dict[str, Any]:
    return {"index": i, "minor": i, "uuid": stable_uuid("GPU", "a100", i),
            "pci_bus_id": f"0000:{BUSES[i]}:00.0", "name": "NVIDIA A100-SXM4-40GB",
            "arch": A100_ARCH, "brand": BRAND,
            "mig_devices": [{"index": j, "uuid": stable_uuid("MIG", "a100", i, gi), "gi": gi,
                             "ci": 0, "profile": profile}
                            for j, (gi, profile) in enumerate(layout)]}


def main(base: Path) -> None:
    # GI ids as `nvidia-smi mig -cgi 9,14,14 -C` and `-cgi 19,19,19,19,19,19,19 -C` give them.
    mixed = [a100(0, [(2, "3g.20gb"), (3, "2g.10gb"), (5, "2g.10gb")]),
             a100(1, [(gi, "1g.5gb") for gi in range(7, 14)])]
    mixed += [a100(i, []) for i in range(2, 8)]
    inventory_yaml(base, "8xa100-mig", mixed, "8x A100-SXM4-40GB; GPU 0 in MIG mode "
                   "(1x 3g.20gb + 2x 2g.10gb), GPU 1 in MIG mode (7x 1g.5gb)")
    host_tree(base, "8xa100-mig", mixed)
    one = [{"index": 0, "minor": 0, "uuid": stable_uuid("GPU", "t4", 0),
            "pci_bus_id": "0000:00:1e.0", "name": "Tesla T4", "arch": T4_ARCH,
            "brand": BRAND, "mig_devices": []}]
    inventory_yaml(base, "1gpu", one, "one Tesla T4, no MIG")
    host_tree(base, "1gpu", one)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
