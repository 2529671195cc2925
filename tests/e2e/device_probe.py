"""What a container may open, seen from inside it with nothing but busybox `sh` and `mknod`.

There is no GPU and no NVIDIA driver on the test machines, and the fake majors (195, 510, 511 in
the fake host's proc/devices) have no driver either. So opening a character device tells the
device cgroup's verdict apart from everything else:

- ENXIO "No such device or address": the cgroup allowed the open, the kernel found no driver;
- EPERM "Operation not permitted": the device cgroup denied it.

The probe reports, for each `/dev` node of interest, whether it exists and what opening it gives,
and for each (major, minor) it creates a fresh node under /tmp with `mknod` (the container has
CAP_MKNOD; the device cgroup, not the node, decides) and opens that: this shows what the cgroup
allows whatever nodes exist.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import HOSTS, INVENTORIES

ENXIO = "ENXIO"
EPERM = "EPERM"
ABSENT = "absent"

# Every node name gpuhook could create on the fake 8x A100 node, plus the MIG capability nodes the
# tests request.
NODES = (
    *(f"/dev/nvidia{i}" for i in range(8)),
    "/dev/nvidiactl",
    "/dev/nvidia-modeset",
    "/dev/nvidia-uvm",
    "/dev/nvidia-uvm-tools",
    "/dev/nvidia-caps/nvidia-cap1",
    "/dev/nvidia-caps/nvidia-cap2",
    "/dev/nvidia-caps/nvidia-cap201",
    "/dev/nvidia-caps/nvidia-cap202",
)

# (major, minor) pairs the probe mknods and opens: every GPU, control, modeset, UVM and the MIG
# config / monitor / one MIG device's capabilities (gpu1 gi7: 201, 202).
NUMBERS = (
    *((195, i) for i in range(8)),
    (195, 254),
    (195, 255),
    (510, 0),
    (510, 1),
    (511, 1),
    (511, 2),
    (511, 201),
    (511, 202),
)

_SH_FUNCS = r"""
verdict() {
    err=$( (: < "$1") 2>&1 )
    case "$err" in
        *"No such device or address"*) echo ENXIO ;;
        *"Operation not permitted"*) echo EPERM ;;
        "") echo opened ;;
        *) echo "other:$(echo "$err" | tr ' ' '_')" ;;
    esac
}
node() {
    if [ -e "$1" ] || [ -L "$1" ]; then echo "node $1 $(verdict "$1")";
    else echo "node $1 absent"; fi
}
number() {
    p=/tmp/gpuhook-probe-$1-$2
    rm -f "$p"
    if mknod "$p" c "$1" "$2" 2>/dev/null; then echo "mknod $1:$2 $(verdict "$p")";
    else echo "mknod $1:$2 mknod-failed"; fi
    rm -f "$p"
}
"""

END_MARK = "gpuhook-probe-end"


def script(nodes: Iterable[str] = NODES, numbers: Iterable[tuple[int, int]] = NUMBERS) -> str:
    """A busybox sh script printing one line per node and per number, then END_MARK."""
    lines = [_SH_FUNCS]
    lines += [f"node {n}" for n in nodes]
    lines += [f"number {ma} {mi}" for ma, mi in numbers]
    lines.append('for f in /dev/nvidia* /dev/nvidia-caps/*; do [ -c "$f" ] && echo "seen $f"; done')
    lines.append(f"echo {END_MARK}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ProbeResult:
    nodes: dict[str, str]  # path -> ENXIO | EPERM | absent | opened | other:...
    numbers: dict[tuple[int, int], str]
    seen: frozenset[str]  # every /dev/nvidia* node present in the container

    def present_nodes(self) -> set[str]:
        return {p for p, v in self.nodes.items() if v != ABSENT} | set(self.seen)

    def allowed_numbers(self) -> set[tuple[int, int]]:
        return {k for k, v in self.numbers.items() if v == ENXIO}


class ProbeOutputError(AssertionError):
    pass


def parse(output: str) -> ProbeResult:
    if END_MARK not in output:
        raise ProbeOutputError(f"probe did not finish; output:\n{output}")
    nodes: dict[str, str] = {}
    numbers: dict[tuple[int, int], str] = {}
    seen: set[str] = set()
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "node":
            nodes[parts[1]] = parts[2]
        elif len(parts) == 3 and parts[0] == "mknod":
            ma, mi = parts[1].split(":")
            numbers[(int(ma), int(mi))] = parts[2]
        elif len(parts) == 2 and parts[0] == "seen":
            seen.add(parts[1])
    return ProbeResult(nodes=nodes, numbers=numbers, seen=frozenset(seen))


@dataclass(frozen=True)
class Expect:
    """What a container must see: `nodes` exist and open with ENXIO, no other NVIDIA node exists
    (unless `exact` is False); exactly the `allowed` numbers open with ENXIO, every other probed
    number gives EPERM."""

    nodes: frozenset[str]
    allowed: frozenset[tuple[int, int]]
    exact: bool = True

    def check(self, got: ProbeResult) -> list[str]:
        """Human-readable differences; empty when the container saw exactly what it should."""
        problems = []
        present = got.present_nodes() if self.exact else set(self.nodes)
        for extra in sorted(present - self.nodes):
            problems.append(f"{extra} exists but was not granted ({got.nodes.get(extra, 'seen')})")
        for path in sorted(self.nodes):
            verdict = got.nodes.get(path, ABSENT)
            if verdict != ENXIO:
                problems.append(f"{path}: want ENXIO (granted, no driver), got {verdict}")
        for num, verdict in sorted(got.numbers.items()):
            want = ENXIO if num in self.allowed else EPERM
            if verdict != want:
                problems.append(f"mknod {num[0]}:{num[1]}: want {want}, got {verdict}")
        missing = set(self.allowed) - set(got.numbers)
        problems += [f"{m} not probed" for m in sorted(missing)]
        return problems


# The facts the e2e tests assert, per request, on the fake 8x A100 node (8xa100-mig): the control
# nodes come with any GPU; GPUs 0 and 1 are in MIG mode; MIG 1:0 is gpu1 gi7 ci0 (caps 201, 202).
CONTROL = {
    "/dev/nvidiactl": (195, 255),
    "/dev/nvidia-uvm": (510, 0),
    "/dev/nvidia-uvm-tools": (510, 1),
}
GPU2 = Expect(
    nodes=frozenset({*CONTROL, "/dev/nvidia2"}),
    allowed=frozenset({*CONTROL.values(), (195, 2)}),
)
MIG_1_0 = Expect(
    nodes=frozenset({*CONTROL, "/dev/nvidia1", "/dev/nvidia-caps/nvidia-cap201",
                     "/dev/nvidia-caps/nvidia-cap202"}),
    allowed=frozenset({*CONTROL.values(), (195, 1), (511, 201), (511, 202)}),
)  # fmt: skip
NOTHING = Expect(nodes=frozenset(), allowed=frozenset())
# A privileged container's NVIDIA_VISIBLE_DEVICES=all is honoured: every GPU's node (and every MIG
# capability, not all of them probed here) exists, and its device cgroup allows everything.
PRIVILEGED_ALL = Expect(
    nodes=frozenset({*CONTROL, *(f"/dev/nvidia{i}" for i in range(8)),
                     "/dev/nvidia-caps/nvidia-cap201", "/dev/nvidia-caps/nvidia-cap202"}),
    allowed=frozenset(NUMBERS),
    exact=False,
)  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One container request and what the container must then see."""

    id: str
    requested: tuple[str, ...]  # ids the device plugin mounts under DEVICE_DIR
    env: str | None  # NVIDIA_VISIBLE_DEVICES, None = unset
    expect: Expect
    privileged: bool = False


DEVICE_DIR = "/var/run/nvidia-container-devices"

# The same table drives every engine (ctr, CRI, podman).
CASES = [
    Case("the device plugin's mount for GPU 2 grants GPU 2 and the control nodes only",
         ("2",), "all", GPU2),
    Case("NVIDIA_VISIBLE_DEVICES=all alone grants nothing to an unprivileged container",
         (), "all", NOTHING),
    Case("a MIG mount grants the parent GPU node and that MIG device's capabilities only",
         ("1:0",), None, MIG_1_0),
    Case("a container that asks for no GPU gets no NVIDIA device",
         (), None, NOTHING),
    Case("NVIDIA_VISIBLE_DEVICES=all is honoured for a privileged container",
         (), "all", PRIVILEGED_ALL, privileged=True),
]  # fmt: skip


def write_fake_node_config(path: Path, log: Path, mode: str | None = None) -> Path:
    """A gpuhook config pointing at the shipped fake 8x A100 node, logging to `log`; `mode` is
    the shim's (`spec` or `hook`), default when None. The inventory snapshot (and what is
    recorded beside it, such as the CDI specs written) lives beside the config, never in the
    machine's /run/gpuhook."""
    path.write_text(
        f'inventory = "{INVENTORIES / "8xa100-mig.yaml"}"\n'
        f'host-root = "{HOSTS / "8xa100-mig"}"\n'
        f'inventory-cache = "{path.parent / "run" / "inventory.json"}"\n'
        f'log-file = "{log}"\ndriver-files = false\n' + (f'mode = "{mode}"\n' if mode else "")
    )
    return path
