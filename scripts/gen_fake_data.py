"""Generate the shipped fake inventories and host trees (run once; outputs are committed)."""
import os, uuid, sys
base = sys.argv[1]
def u(prefix, *key):
    return f"{prefix}-" + str(uuid.uuid5(uuid.NAMESPACE_OID, "gpuhook/" + "/".join(map(str, key))))
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
def host_tree(name, gpus):
    root = f"{base}/hosts/{name}"
    os.makedirs(f"{root}/proc/driver/nvidia-caps", exist_ok=True)
    open(f"{root}/proc/devices", "w").write(PROC_DEVICES)
    lines = ["config 1", "monitor 2"]
    for g in range(len(gpus)):
        for gi in range(15):
            base_minor = 3 + g * 15 * 9 + gi * 9
            lines.append(f"gpu{g}/gi{gi}/access {base_minor}")
            for ci in range(8):
                lines.append(f"gpu{g}/gi{gi}/ci{ci}/access {base_minor + 1 + ci}")
    open(f"{root}/proc/driver/nvidia-caps/mig-minors", "w").write("\n".join(lines) + "\n")
    minors = dict(l.split() for l in lines)
    capdir = f"{root}/proc/driver/nvidia/capabilities"
    os.makedirs(f"{capdir}/mig", exist_ok=True)
    for cap, mode in (("config", 256), ("monitor", 292)):
        open(f"{capdir}/mig/{cap}", "w").write(f"DeviceFileMinor: {minors[cap]}\nDeviceFileMode: {mode}\nDeviceFileModify: 1\n")
    for g, gpu in enumerate(gpus):
        os.makedirs(f"{root}/proc/driver/nvidia/gpus/{gpu['pci_bus_id']}", exist_ok=True)
        open(f"{root}/proc/driver/nvidia/gpus/{gpu['pci_bus_id']}/information", "w").write(
            f"Model: \t\t {gpu['name']}\nGPU UUID: \t {gpu['uuid']}\nDevice Minor: \t {gpu['minor']}\n")
        for m in gpu.get("mig_devices", []):
            gdir = f"{capdir}/gpu{gpu['minor']}/mig/gi{m['gi']}"
            os.makedirs(f"{gdir}/ci{m['ci']}", exist_ok=True)
            key = f"gpu{gpu['minor']}/gi{m['gi']}"
            open(f"{gdir}/access", "w").write(f"DeviceFileMinor: {minors[key + '/access']}\nDeviceFileMode: 292\nDeviceFileModify: 1\n")
            ci_minor = minors[f"{key}/ci{m['ci']}/access"]
            open(f"{gdir}/ci{m['ci']}/access", "w").write(f"DeviceFileMinor: {ci_minor}\nDeviceFileMode: 292\nDeviceFileModify: 1\n")
    os.makedirs(f"{root}/sys/module/nvidia", exist_ok=True)
    open(f"{root}/sys/module/nvidia/version", "w").write("550.54.15\n")
    open(f"{root}/proc/driver/nvidia/version", "w").write("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n")

def yaml_inv(name, gpus, comment):
    out = [f"# {comment}", 'driver_version: "550.54.15"', 'cuda_version: "12.4"', "gpus:"]
    for g in gpus:
        out += [f"  - index: {g['index']}", f"    minor: {g['minor']}", f"    uuid: {g['uuid']}",
                f"    pci_bus_id: \"{g['pci_bus_id']}\"", f"    name: {g['name']}",
                f"    mig_enabled: {'true' if g['mig_enabled'] else 'false'}"]
        if g["mig_enabled"]:
            out.append("    mig_devices:")
            for m in g["mig_devices"]:
                out.append(f"      - {{index: {m['index']}, uuid: {m['uuid']}, gi: {m['gi']}, ci: {m['ci']}, profile: {m['profile']}}}")
    os.makedirs(f"{base}/inventories", exist_ok=True)
    open(f"{base}/inventories/{name}.yaml", "w").write("\n".join(out) + "\n")

BUSES = ["07", "0f", "47", "4e", "87", "90", "b7", "bd"]
def a100(i, layout):
    g = {"index": i, "minor": i, "uuid": u("GPU", "a100", i), "pci_bus_id": f"0000:{BUSES[i]}:00.0",
         "name": "NVIDIA A100-SXM4-40GB", "mig_enabled": bool(layout), "mig_devices": []}
    for j, (gi, profile) in enumerate(layout):
        g["mig_devices"].append({"index": j, "uuid": u("MIG", "a100", i, gi), "gi": gi, "ci": 0, "profile": profile})
    return g
mig8 = [a100(0, [(2, "3g.20gb"), (3, "2g.10gb"), (5, "2g.10gb")]),
        a100(1, [(gi, "1g.5gb") for gi in range(7, 14)])] + [a100(i, []) for i in range(2, 8)]
yaml_inv("8xa100-mig", mig8, "8x A100-SXM4-40GB; GPU 0 in MIG mode (1x 3g.20gb + 2x 2g.10gb), GPU 1 in MIG mode (7x 1g.5gb)")
host_tree("8xa100-mig", mig8)
one = [{"index": 0, "minor": 0, "uuid": u("GPU", "t4", 0), "pci_bus_id": "0000:00:1e.0", "name": "Tesla T4", "mig_enabled": False}]
yaml_inv("1gpu", one, "one Tesla T4, no MIG")
host_tree("1gpu", one)
