"""Ids + Inventory -> devices, or a ResolveError naming the id and what exists. Pure."""

from __future__ import annotations

from gpuhook.errors import ResolveError
from gpuhook.inventory.model import Gpu, Inventory, MigDevice
from gpuhook.record import TYPE_CHECKING, dataclass
from gpuhook.text import MAX_DIGITS, decimal, re_fullmatch

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

# fullmatch, ASCII: `$` would accept a trailing newline and `\d` accepts any Unicode digit.
# libnvidia-container src/cli/common.c matches_pci_format: "%x:%02x:%02x.0" (domain:bus:device).
_PCI_BUS_ID = r"([0-9A-Fa-f]{1,8}):([0-9A-Fa-f]{1,2}):([0-9A-Fa-f]{1,2})(?:\.0)?"
# MIG-GPU-<parent uuid>/<gi>/<ci>: the MIG UUID drivers before R470 reported.
_OLD_MIG = r"(?i)MIG-(GPU-[0-9A-Fa-f-]+)/([0-9]+)/([0-9]+)"
# Real CUDA images carry a few dozen alternatives (about 1 KiB); the bounds leave room.
MAX_REQUIREMENT_CHARS = 65536
MAX_REQUIREMENT_NOTES = 16
# dsl.c's operators are =, !=, <, <=, >, >=; `==` is accepted here too (it was before).
_CONSTRAINT_KEYS = ("cuda", "driver", "arch", "brand")
_CONSTRAINT_OPS = (">=", "<=", "!=", "==", "=", ">", "<")


@dataclass(frozen=True)
class Resolved:
    gpu: Gpu
    mig: MigDevice | None = None

    @property
    def kind(self) -> str:
        return "gpu" if self.mig is None else "mig"

    @property
    def index(self) -> str:
        return str(self.gpu.index) if self.mig is None else f"{self.gpu.index}:{self.mig.index}"

    @property
    def uuid(self) -> str:
        return self.gpu.uuid if self.mig is None else self.mig.uuid


def resolve(ids: Iterable[str], inv: Inventory, allow_full_gpu_on_mig: bool
            ) -> tuple[Resolved, ...]:
    out: list[Resolved] = []
    # (GPU index, MIG index): unique in an inventory, so equal keys are equal devices; `in out`
    # would compare whole dataclasses, O(n^2) for `all` on a big node.
    seen: set[tuple[int, int | None]] = set()
    for device_id in ids:
        for dev in _resolve_one(device_id, inv, allow_full_gpu_on_mig):
            key = (dev.gpu.index, None if dev.mig is None else dev.mig.index)
            if key not in seen:
                seen.add(key)
                out.append(dev)
    return tuple(out)


def _resolve_one(device_id: str, inv: Inventory, allow_full: bool) -> list[Resolved]:
    if device_id.lower() == "all":  # nvidia-container-cli: str_case_equal(dev, "all")
        # On a MIG-enabled GPU the schedulable units are its MIG devices: `all` means those,
        # unless whole MIG-enabled GPUs are allowed.
        out: list[Resolved] = []
        for gpu in inv.gpus:
            if gpu.mig_enabled and not allow_full:
                out.extend(Resolved(gpu, m) for m in gpu.mig_devices)
            else:
                out.append(Resolved(gpu))
        return out
    # One or more ASCII digits, however many (ids are bounded when the request is read).
    index = decimal(device_id, len(device_id))
    if index is not None:
        gpu = _gpu_by(lambda g: g.index == index, inv, device_id, allow_full)
        return [_full(gpu, device_id, allow_full)]
    gpu_part, colon, mig_part = device_id.partition(":")
    gpu_index, mig_index = decimal(gpu_part, len(gpu_part)), decimal(mig_part, len(mig_part))
    if colon and gpu_index is not None and mig_index is not None:
        gpu = _gpu_by(lambda g: g.index == gpu_index, inv, device_id, allow_full)
        for mig in gpu.mig_devices:
            if mig.index == mig_index:
                return [Resolved(gpu, mig)]
        raise ResolveError(f"{device_id} not found: {_mig_list(gpu)}")
    # UUIDs are matched case-insensitively, as nvidia-container-cli does (strcasecmp).
    wanted = device_id.lower()
    if wanted.startswith("gpu-"):
        gpu = _gpu_by(lambda g: g.uuid.lower() == wanted, inv, device_id, allow_full)
        return [_full(gpu, device_id, allow_full)]
    old = re_fullmatch(_OLD_MIG, device_id) if "/" in device_id else None
    if old:
        parent = old.group(1).lower()
        gpu = _gpu_by(lambda g: g.uuid.lower() == parent, inv, device_id, allow_full)
        for mig in gpu.mig_devices:
            if (mig.gi, mig.ci) == (int(old.group(2)), int(old.group(3))):
                return [Resolved(gpu, mig)]
        raise ResolveError(f"{device_id} not found: {_mig_list(gpu)}")
    if wanted.startswith("mig-"):
        for gpu in inv.gpus:
            for mig in gpu.mig_devices:
                if mig.uuid.lower() == wanted:
                    return [Resolved(gpu, mig)]
        migs = [f"{m.uuid} ({g.index}:{m.index})" for g in inv.gpus for m in g.mig_devices]
        raise ResolveError(f"{device_id} not found; available MIG devices: "
                           + (", ".join(migs) if migs else "none (no GPU is in MIG mode)"))
    pci = _pci_key(device_id)
    if pci is not None:
        gpu = _gpu_by(lambda g: _pci_key(g.pci_bus_id) == pci, inv, device_id, allow_full)
        return [_full(gpu, device_id, allow_full)]
    raise ResolveError(f"{device_id!r} is not a device id (expected an index like 0, "
                       f"a MIG index like 0:1, GPU-<uuid>, MIG-<uuid>, a PCI bus id like "
                       f"0000:07:00.0 or all); available: {_gpu_list(inv, allow_full)}")


def _pci_key(bus_id: str) -> tuple[int, int, int] | None:
    """(domain, bus, device) of a PCI bus id, whatever the zero padding (NVML writes an 8-digit
    domain, /proc/driver/nvidia/gpus a 4-digit one)."""
    m = re_fullmatch(_PCI_BUS_ID, bus_id) if ":" in bus_id else None
    if m is None:
        return None
    return int(m.group(1), 16), int(m.group(2), 16), int(m.group(3), 16)


def _gpu_by(pred: Callable[[Gpu], bool], inv: Inventory, device_id: str,
            allow_full: bool) -> Gpu:
    for gpu in inv.gpus:
        if pred(gpu):
            return gpu
    raise ResolveError(f"{device_id} not found; available: {_gpu_list(inv, allow_full)}")


def _full(gpu: Gpu, device_id: str, allow_full: bool) -> Resolved:
    if gpu.mig_enabled and not allow_full:
        raise ResolveError(
            f"{device_id} is GPU {gpu.index} ({gpu.uuid}), which is in MIG mode; request one of "
            f"its MIG devices instead ({_mig_list(gpu)}) or set "
            "allow-full-gpu-on-mig-enabled = true")
    return Resolved(gpu)


def _gpu_list(inv: Inventory, allow_full: bool) -> str:
    """What could be granted: whole GPUs, and for a GPU in MIG mode (unless whole ones are
    allowed) its MIG devices instead."""
    units: list[str] = []
    for g in inv.gpus:
        if g.mig_enabled and not allow_full:
            units += [f"{m.uuid} ({g.index}:{m.index})" for m in g.mig_devices]
        else:
            units.append(f"{g.uuid} ({g.index})")
    return ", ".join(units) if units else "nothing (no GPU, or MIG mode without MIG devices)"


def _mig_list(gpu: Gpu) -> str:
    if not gpu.mig_devices:
        return f"GPU {gpu.index} has no MIG devices"
    return f"MIG devices of GPU {gpu.index}: " + ", ".join(
        f"{m.uuid} ({gpu.index}:{m.index}, {m.profile})" for m in gpu.mig_devices)


def check_requirements(reqs: Iterable[tuple[str, str]], inv: Inventory,
                       devices: Iterable[Resolved] = ()) -> list[str]:
    """Raise when a NVIDIA_REQUIRE_* expression fails; return notes on what was not judged.

    As nvidia-container-cli does (src/cli/configure.c configure_command and src/cli/dsl.c
    dsl_evaluate, NVIDIA/libnvidia-container at e27a4a75805 / 5823754b857): space-separated
    alternatives are ORed, comma-separated constraints ANDed, and every expression must hold for
    each granted device in turn (a MIG device: its parent GPU), with `arch` and `brand` read from
    that GPU; with no device (`none`) it is evaluated once and `arch` / `brand` hold, while
    `cuda` and `driver` are still checked.

    A GPU whose arch or brand the inventory does not know (a fake inventory without the keys):
    an alternative that needs it is not judged (a note), neither passing nor failing. The
    expression then holds only if another alternative does, or if no alternative fails; the
    toolkit would take an unknown brand as holding, so gpuhook refuses at most more, never less.
    """
    gpus: list[Gpu | None] = []
    for dev in devices:
        if dev.gpu not in gpus:  # MIG devices of one GPU: judged once, as that GPU
            gpus.append(dev.gpu)
    if not gpus:
        gpus = [None]
    notes: list[str] = []
    for name, expr in reqs:
        if len(expr) > MAX_REQUIREMENT_CHARS:  # before any loop over it
            raise ResolveError(f"requirement {name}: {len(expr)} characters, more than "
                               f"{MAX_REQUIREMENT_CHARS}")
        unjudged = 0
        for gpu in gpus:
            unjudged += _expression(name, expr, inv, gpu, notes, unjudged)
        if unjudged > MAX_REQUIREMENT_NOTES:
            notes.append(f"{name}: {unjudged - MAX_REQUIREMENT_NOTES} more alternatives not "
                         "evaluated")
    return notes


def _expression(name: str, expr: str, inv: Inventory, gpu: Gpu | None, notes: list[str],
                noted: int) -> int:
    """Judge `expr` for one GPU (None: no device); raise when it fails. Appends notes (up to
    MAX_REQUIREMENT_NOTES in all) and returns how many alternatives were not judged."""
    failures: list[str] = []
    unjudged = 0
    for alternative in expr.split():
        verdict, why = _alternative(alternative, inv, gpu)
        if verdict is None:
            unjudged += 1
            if noted + unjudged <= MAX_REQUIREMENT_NOTES:
                notes.append(f"{name}: {alternative!r} not evaluated ({why})")
        elif verdict:
            return unjudged
        else:
            failures.append(why)
    if failures:  # each reason names the GPU where the GPU decided it
        raise ResolveError(f"requirement {name}={expr[:200]!r} not met: "
                           + "; ".join(failures[:MAX_REQUIREMENT_NOTES]))
    return unjudged


def _constraint(text: str) -> tuple[str, str, str] | None:
    """(key, op, value) of `text` as the pattern `(cuda|driver|arch|brand)[ \\t]*(>=|<=|!=|==|=
    |>|<)[ \\t]*(\\S+)` matches all of it: the operators are tried in that order, and one that
    leaves no value (`cuda>=`) gives way to the next (`>` with the value `=`), as the regex's
    backtracking does."""
    for key in _CONSTRAINT_KEYS:
        if text.startswith(key):
            rest = text[len(key):].lstrip(" \t")
            break
    else:
        return None
    for op in _CONSTRAINT_OPS:
        if rest.startswith(op):
            value = rest[len(op):].lstrip(" \t")
            if value and not any(c.isspace() for c in value):
                return key, op, value
    return None


def _alternative(alternative: str, inv: Inventory, gpu: Gpu | None
                 ) -> tuple[bool | None, str]:
    """An AND group: False when any checkable constraint fails (wherever it stands), else None
    when one cannot be judged (the GPU's arch / brand is unknown), else True."""
    unjudged = ""
    for constraint in alternative.split(","):
        parsed = _constraint(constraint.strip())
        if parsed is None:
            raise ResolveError(f"requirement {constraint[:200]!r}: expected e.g. cuda>=12.0")
        key, op, want = parsed
        if key in ("arch", "brand"):
            if gpu is None:  # configure.c: "No device is visible, assume the arch is ok"
                continue
            have = gpu.arch if key == "arch" else gpu.brand
            if have is None:
                unjudged = unjudged or (f"GPU {gpu.index} has no {key} in the inventory; "
                                        "add it to the fake inventory")
                continue
            if key == "arch":
                ok = _compare(_version(have, key), op, _version(want, key))
            else:
                ok = _same_brand(have, op, want)
            if not ok:
                return False, (f"{key}{op}{want[:40]} but GPU {gpu.index} ({gpu.uuid}) has "
                               f"{key} {have}")
            continue
        have = inv.cuda_version if key == "cuda" else inv.driver_version
        if not _compare(_version(have, key), op, _version(want, key)):
            return False, f"{key}{op}{want} but the node has {key} {have}"
    return (None, unjudged) if unjudged else (True, "")


def _same_brand(have: str, op: str, want: str) -> bool:
    """dsl.c dsl_compare_string: `=` and `!=` only, ASCII case-insensitive (strcasecmp); any
    other operator is an invalid expression there, so a refusal here."""
    if op not in ("=", "!="):
        raise ResolveError(f"requirement brand{op}{want[:40]!r}: a brand is compared with = or "
                           "!= only")
    same = have.encode().lower() == want.encode().lower()  # bytes.lower: ASCII only
    return same if op == "=" else not same


def _version(text: str, key: str) -> tuple[int, ...]:
    parts = tuple(decimal(p) for p in text.strip().split("."))
    if None in parts:
        raise ResolveError(f"{key} version {text!r} is not dotted numbers (ASCII digits, at "
                           f"most {MAX_DIGITS} each)")
    return parts  # type: ignore[return-value]  # no None left


def _compare(have: tuple[int, ...], op: str, want: tuple[int, ...]) -> bool:
    n = max(len(have), len(want))
    a = have + (0,) * (n - len(have))
    b = want + (0,) * (n - len(want))
    return {">=": a >= b, "<=": a <= b, "==": a == b, "=": a == b, "!=": a != b, ">": a > b,
            "<": a < b}[op]
