"""cgroup v2 device access: widen the cgroup's BPF device program(s) by exactly the Plan's rules.

In cgroup v2 every `BPF_CGROUP_DEVICE` program attached to a cgroup must allow an access, so
attaching one more program can only narrow. Instead, for each program attached to the cgroup we
read its translated instructions back from the kernel, load a copy with allow checks for the new
rules prepended, and swap it in for the original (`BPF_F_REPLACE` in multi mode, an atomic
same-flags attach otherwise). The copy returns 1 for a new rule's device and otherwise runs the
original unchanged, so a device in neither set stays denied.

Everything is raw `bpf(2)` through ctypes. The instruction encoding, the allow prefix and the
"can this program be copied" check are pure functions; the syscall layer raises `OSError` and
`add_device_rules` turns failures into one `ApplyError` that names the cgroup and the step.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import struct
import sys
from contextlib import contextmanager

from gpuhook.decide.plan import CgroupRule
from gpuhook.errors import ApplyError
from gpuhook.record import TYPE_CHECKING, dataclass

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

# --- eBPF instruction encoding (include/uapi/linux/bpf.h, bpf_common.h) --------------------------

CLS_LD, CLS_LDX, CLS_ST, CLS_STX, CLS_ALU, CLS_JMP, CLS_JMP32, CLS_ALU64 = range(8)
SZ_W, SZ_DW = 0x00, 0x18
MODE_IMM, MODE_MEM = 0x00, 0x60
SRC_K, SRC_X = 0x00, 0x08
ALU_AND, ALU_RSH, ALU_MOV = 0x50, 0x70, 0xB0
JMP_JA, JMP_JNE, JMP_CALL, JMP_EXIT = 0x00, 0x50, 0x80, 0x90

R0, R1, R2, R3, R4, R5 = range(6)
R10 = 10  # read-only frame pointer; anything above is a kernel-internal register

LD_IMM64 = CLS_LD | SZ_DW | MODE_IMM
CALL = CLS_JMP | JMP_CALL
EXIT = CLS_JMP | JMP_EXIT

INSN = struct.Struct("<BBhi")  # code, dst_reg:4 | src_reg:4 (little-endian bitfields), off, imm

# struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }
# access_type = (access << 16) | type
DEV_BLOCK, DEV_CHAR = 1, 2
ACC_MKNOD, ACC_READ, ACC_WRITE = 1, 2, 4
ACC_ALL = ACC_MKNOD | ACC_READ | ACC_WRITE
DEV_TYPES = {"b": DEV_BLOCK, "c": DEV_CHAR}
ACCESS_BITS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}
ANY = -1  # major/minor wildcard, as runc's rules use it
MAX_DEV_NUMBER = 0x7FFF_FFFF  # compared as a sign-extended imm32 against a u32


@dataclass(frozen=True)
class Insn:
    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0


def encode(insns: Sequence[Insn]) -> bytes:
    return b"".join(INSN.pack(i.code, (i.src << 4) | i.dst, i.off, i.imm) for i in insns)


def decode(code: bytes) -> list[Insn]:
    if len(code) % INSN.size:
        raise ValueError(f"{len(code)} bytes is not a whole number of {INSN.size}-byte insns")
    return [
        Insn(op, regs & 0x0F, regs >> 4, off, imm) for op, regs, off, imm in INSN.iter_unpack(code)
    ]


def ldx_w(dst: int, src: int, off: int) -> Insn:
    return Insn(CLS_LDX | SZ_W | MODE_MEM, dst, src, off)


def alu32_imm(op: int, dst: int, imm: int) -> Insn:
    return Insn(CLS_ALU | op | SRC_K, dst, 0, 0, imm)


def alu32_reg(op: int, dst: int, src: int) -> Insn:
    return Insn(CLS_ALU | op | SRC_X, dst, src)


def jmp_imm(op: int, dst: int, imm: int, off: int) -> Insn:
    return Insn(CLS_JMP | op | SRC_K, dst, 0, off, imm)


def jmp_reg(op: int, dst: int, src: int, off: int) -> Insn:
    return Insn(CLS_JMP | op | SRC_X, dst, src, off)


def exit_insn() -> Insn:
    return Insn(EXIT)


def return_imm(value: int) -> list[Insn]:
    return [alu32_imm(ALU_MOV, R0, value), exit_insn()]


# --- rules -> allow prefix (pure) ----------------------------------------------------------------


def access_mask(access: str) -> int:
    mask = 0
    for ch in access:
        mask |= ACCESS_BITS[ch]
    return mask


def check_rule(rule: CgroupRule) -> None:
    """Raise ApplyError unless `rule` is a device rule a BPF program can express."""
    problems = []
    if rule.type not in DEV_TYPES:
        problems.append(f"type {rule.type!r} is not 'c' or 'b'")
    if not rule.access or set(rule.access) - set(ACCESS_BITS):
        problems.append(f"access {rule.access!r} is not a non-empty subset of 'rwm'")
    for name, value in (("major", rule.major), ("minor", rule.minor)):
        if value != ANY and not 0 <= value <= MAX_DEV_NUMBER:
            problems.append(f"{name} {value} is out of range (0..{MAX_DEV_NUMBER}, or -1 for any)")
    if problems:
        raise ApplyError(f"cgroup v2 device rule {format_rule(rule)}: " + "; ".join(problems))


def format_rule(rule: CgroupRule) -> str:
    def num(n: int) -> str:
        return "*" if n == ANY else str(n)

    return f"{rule.type} {num(rule.major)}:{num(rule.minor)} {rule.access}"


def _rule_block(rule: CgroupRule) -> list[Insn]:
    """Checks that jump to the block's end (`off` patched later, marked -1) on a mismatch, then
    `return 1`. Uses R0 as the scratch register so R1 (ctx) survives for the program after us."""
    checks = [jmp_imm(JMP_JNE, R2, DEV_TYPES[rule.type], -1)]
    mask = access_mask(rule.access)
    if mask != ACC_ALL:
        # requested access must be a subset of the rule's: (R3 & mask) == R3
        checks += [
            alu32_reg(ALU_MOV, R0, R3),
            alu32_imm(ALU_AND, R0, mask),
            jmp_reg(JMP_JNE, R0, R3, -1),
        ]
    if rule.major != ANY:
        checks.append(jmp_imm(JMP_JNE, R4, rule.major, -1))
    if rule.minor != ANY:
        checks.append(jmp_imm(JMP_JNE, R5, rule.minor, -1))
    block = checks + return_imm(1)
    # every "-1" jump skips to just past this block
    return [
        Insn(i.code, i.dst, i.src, len(block) - n - 1, i.imm) if i.off == -1 else i
        for n, i in enumerate(block)
    ]


def allow_prefix(rules: Sequence[CgroupRule]) -> list[Insn]:
    """Instructions that return 1 when the access matches one of `rules` and otherwise fall
    through to whatever follows them, with R1 (the ctx pointer) unchanged and nothing on the
    stack. Registers R0 and R2..R5 are clobbered; a program appended after this prefix was
    verified with them uninitialised at entry, so it never reads them before writing."""
    for rule in rules:
        check_rule(rule)
    unique = list(dict.fromkeys(rules))
    if not unique:
        return []
    insns = [
        ldx_w(R2, R1, 0),  # access_type
        alu32_reg(ALU_MOV, R3, R2),
        alu32_imm(ALU_AND, R2, 0xFFFF),  # R2 = device type
        alu32_imm(ALU_RSH, R3, 16),  # R3 = requested access
        ldx_w(R4, R1, 4),  # major
        ldx_w(R5, R1, 8),  # minor
    ]
    for rule in unique:
        insns += _rule_block(rule)
    return insns


def allow_program(rules: Sequence[CgroupRule], default: int = 0) -> list[Insn]:
    """A whole device program: allow `rules`, otherwise return `default` (0 = deny)."""
    return allow_prefix(rules) + return_imm(default)


def copy_problem(insns: Sequence[Insn]) -> str | None:
    """Why translated instructions read back from the kernel can't be loaded again as they are,
    or None when they can. Helper/subprogram calls come back with kernel-internal immediates,
    map references as map ids, and constant blinding uses the hidden register 11."""
    if not insns:
        return "it has no instructions"
    for n, i in enumerate(insns):
        if i.code == CALL:
            return f"instruction {n} calls a helper or subprogram"
        if i.code == LD_IMM64 and i.src != 0:
            return f"instruction {n} loads a map or kernel object reference"
        if i.dst > R10 or i.src > R10:
            return (
                f"instruction {n} uses a kernel-internal register (constant blinding, "
                "net.core.bpf_jit_harden)"
            )
    return None


# --- the bpf(2) syscall --------------------------------------------------------------------------

BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16

BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_OVERRIDE = 1
BPF_F_ALLOW_MULTI = 2
BPF_F_REPLACE = 4
BPF_F_QUERY_EFFECTIVE = 1

ATTR_SIZE = 144  # sizeof(union bpf_attr) in 6.x headers; the tail is zero, which any kernel accepts
PROG_INFO_SIZE = 232  # sizeof(struct bpf_prog_info) in 6.x headers
PROG_INFO_TYPE, PROG_INFO_ID = 0, 4
PROG_INFO_XLATED_LEN, PROG_INFO_XLATED_INSNS = 20, 32
LICENSE = b"GPL\0"
PROG_NAME = b"gpuhook_dev"
LOG_SIZE = 1 << 20
LOG_TAIL_CHARS = 4000

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361}  # little-endian hosts only
_libc = ctypes.CDLL(None, use_errno=True)


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    nr = _SYS_BPF.get(os.uname().machine)
    if nr is None:
        raise OSError(errno.ENOSYS, f"bpf(2) syscall number unknown on {os.uname().machine}")
    ret = int(_libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(ATTR_SIZE)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _attr(*fields: tuple[int, str, int]) -> ctypes.Array[ctypes.c_char]:
    attr = ctypes.create_string_buffer(ATTR_SIZE)
    for offset, fmt, value in fields:
        struct.pack_into("<" + fmt, attr, offset, value)
    return attr


def _addr(buf: ctypes.Array[ctypes.c_char] | ctypes.Array[ctypes.c_uint32]) -> int:
    return ctypes.addressof(buf)


def query_programs(cgroup_fd: int, effective: bool = False) -> tuple[int, list[int]]:
    """(attach flags, ids of the device programs attached to the cgroup, in run order)."""
    count = 64  # BPF_CGROUP_MAX_PROGS
    while True:
        ids = (ctypes.c_uint32 * count)()
        attr = _attr(
            (0, "I", cgroup_fd),
            (4, "I", BPF_CGROUP_DEVICE),
            (8, "I", BPF_F_QUERY_EFFECTIVE if effective else 0),
            (16, "Q", _addr(ids)),
            (24, "I", count),
        )
        try:
            _bpf(BPF_PROG_QUERY, attr)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                count *= 4
                continue
            raise
        flags, n = struct.unpack_from("<I", attr, 12)[0], struct.unpack_from("<I", attr, 24)[0]
        return flags, list(ids[:n])


def prog_fd_by_id(prog_id: int) -> int:
    return _bpf(BPF_PROG_GET_FD_BY_ID, _attr((0, "I", prog_id)))


def _prog_info(prog_fd: int, xlated: ctypes.Array[ctypes.c_char] | None) -> bytes:
    info = ctypes.create_string_buffer(PROG_INFO_SIZE)
    if xlated is not None:
        struct.pack_into("<I", info, PROG_INFO_XLATED_LEN, len(xlated))
        struct.pack_into("<Q", info, PROG_INFO_XLATED_INSNS, _addr(xlated))
    _bpf(
        BPF_OBJ_GET_INFO_BY_FD,
        _attr((0, "I", prog_fd), (4, "I", PROG_INFO_SIZE), (8, "Q", _addr(info))),
    )
    return info.raw


def prog_id(prog_fd: int) -> int:
    return int(struct.unpack_from("<I", _prog_info(prog_fd, None), PROG_INFO_ID)[0])


def prog_xlated(prog_fd: int) -> tuple[int, bytes]:
    """(program type, translated instructions) of a loaded program."""
    first = _prog_info(prog_fd, None)
    prog_type, length = (
        struct.unpack_from("<I", first, PROG_INFO_TYPE)[0],
        struct.unpack_from("<I", first, PROG_INFO_XLATED_LEN)[0],
    )
    if length == 0:
        raise OSError(errno.EPERM, "the kernel withheld the instructions (needs CAP_BPF)")
    buf = ctypes.create_string_buffer(length)
    second = _prog_info(prog_fd, buf)
    if struct.unpack_from("<I", second, PROG_INFO_XLATED_LEN)[0] != length:
        raise OSError(errno.EAGAIN, "program length changed while reading it")
    return prog_type, buf.raw


def _load(code: bytes, log: ctypes.Array[ctypes.c_char] | None) -> int:
    insns = ctypes.create_string_buffer(code, len(code))
    license_buf = ctypes.create_string_buffer(LICENSE, len(LICENSE))
    fields = [
        (0, "I", BPF_PROG_TYPE_CGROUP_DEVICE),
        (4, "I", len(code) // INSN.size),
        (8, "Q", _addr(insns)),
        (16, "Q", _addr(license_buf)),
    ]
    if log is not None:
        fields += [(24, "I", 1), (28, "I", len(log)), (32, "Q", _addr(log))]
    attr = _attr(*fields)
    struct.pack_into("16s", attr, 48, PROG_NAME)
    return _bpf(BPF_PROG_LOAD, attr)


def _raise_memlock() -> bool:
    """Kernels before 5.11 charge programs to RLIMIT_MEMLOCK; lift it for this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY:
        return False
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))
        if hard != resource.RLIM_INFINITY:
            resource.setrlimit(
                resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
            )
    except (ValueError, OSError):
        pass
    return resource.getrlimit(resource.RLIMIT_MEMLOCK)[0] != soft


def load_device_program(code: bytes) -> int:
    """Load `code` as a BPF_PROG_TYPE_CGROUP_DEVICE program; return its fd. On failure raise
    ApplyError carrying the kernel verifier's log (the load is retried with logging on)."""
    try:
        return _load(code, None)
    except OSError as e:
        if e.errno == errno.EPERM and _raise_memlock():
            return load_device_program(code)
        first = e
    log = ctypes.create_string_buffer(LOG_SIZE)
    try:
        return _load(code, log)  # a load that only failed transiently
    except OSError as e:
        text = log.value.decode(errors="replace").strip()
        if len(text) > LOG_TAIL_CHARS:
            text = "..." + text[-LOG_TAIL_CHARS:]
        detail = f"; verifier log:\n{text}" if text else " (the verifier left no log)"
        raise ApplyError(
            f"BPF_PROG_LOAD of a {len(code) // INSN.size}-instruction cgroup device program "
            f"failed: {e.strerror or first.strerror}{detail}"
        ) from None


def attach(cgroup_fd: int, prog_fd: int, flags: int, replace_fd: int | None = None) -> None:
    fields = [
        (0, "I", cgroup_fd),
        (4, "I", prog_fd),
        (8, "I", BPF_CGROUP_DEVICE),
        (12, "I", flags | (BPF_F_REPLACE if replace_fd is not None else 0)),
    ]
    if replace_fd is not None:
        fields.append((16, "I", replace_fd))
    _bpf(BPF_PROG_ATTACH, _attr(*fields))


def detach(cgroup_fd: int, prog_fd: int) -> None:
    _bpf(
        BPF_PROG_DETACH, _attr((0, "I", cgroup_fd), (4, "I", prog_fd), (8, "I", BPF_CGROUP_DEVICE))
    )


# --- the applier ---------------------------------------------------------------------------------


@dataclass
class _Swap:
    old_id: int
    old_fd: int
    new_fd: int
    new_id: int = 0


@contextmanager
def _step(cgroup_dir: str, what: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        raise ApplyError(f"cgroup v2 {cgroup_dir}: {what}: {e.strerror}") from None


def _mode_name(flags: int) -> str:
    if flags & BPF_F_ALLOW_MULTI:
        return "multi"
    return "override" if flags & BPF_F_ALLOW_OVERRIDE else "exclusive"


def _inherited_note(cgroup_fd: int, attached: int) -> str:
    try:
        effective = len(query_programs(cgroup_fd, effective=True)[1])
    except OSError:
        return ""
    if effective > attached:
        return (
            f"; {effective - attached} device program(s) inherited from ancestor cgroups "
            "also decide and were left unchanged"
        )
    return ""


def add_device_rules(
    cgroup_dir: str, rules: Sequence[CgroupRule], *, use_replace: bool = True
) -> str:
    """Allow `rules` in the cgroup v2 directory `cgroup_dir` on top of what its device
    program(s) already allow, and nothing more; return a note for the log.

    Every program attached to the cgroup is replaced by a copy of itself with the allow checks
    prepended. All copies are loaded before anything is attached, so a verifier failure changes
    nothing; a failed attach puts back the programs already swapped. `use_replace=False` takes
    the path for kernels without BPF_F_REPLACE (attach the copy, then detach the original)."""
    if sys.byteorder != "little":
        raise ApplyError("cgroup v2 device programs are only supported on little-endian hosts")
    prefix = allow_prefix(rules)
    if not prefix:
        return f"cgroup v2 {cgroup_dir}: no device rules to add"
    fds: list[int] = []
    try:
        with _step(cgroup_dir, "opening the cgroup directory"):
            cg_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fds.append(cg_fd)
        return _extend_all(cgroup_dir, cg_fd, fds, prefix, len(set(rules)), use_replace)
    finally:
        for fd in reversed(fds):
            os.close(fd)


def _extend_all(
    cgroup_dir: str, cg_fd: int, fds: list[int], prefix: list[Insn], n_rules: int, replace: bool
) -> str:
    try:
        flags, ids = query_programs(cg_fd)
    except OSError as e:
        hint = " (is it a cgroup v2 directory?)" if e.errno == errno.EBADF else ""
        raise ApplyError(
            f"cgroup v2 {cgroup_dir}: BPF_PROG_QUERY of the device programs: {e.strerror}{hint}"
        ) from None
    if not ids:
        return (
            f"cgroup v2 {cgroup_dir}: no device program attached, so every device is already "
            f"allowed here; attached nothing for {n_rules} rule(s)" + _inherited_note(cg_fd, 0)
        )
    swaps = [_prepare(cgroup_dir, fds, old_id, prefix) for old_id in ids]
    _swap_all(cgroup_dir, cg_fd, flags, swaps, replace)
    with _step(cgroup_dir, "BPF_PROG_QUERY after the swap"):
        _, now = query_programs(cg_fd)
    expected = {s.new_id for s in swaps}
    if set(now) != expected:
        raise ApplyError(
            f"cgroup v2 {cgroup_dir}: after replacing device programs "
            f"{_ids(s.old_id for s in swaps)} the cgroup has programs {_ids(now)}, expected "
            f"{_ids(expected)} (another process changed them concurrently?)"
        )
    old, new = _ids(s.old_id for s in swaps), _ids(s.new_id for s in swaps)
    plural = "s" if len(swaps) > 1 else ""
    each = " each" if len(swaps) > 1 else ""
    return (
        f"cgroup v2 {cgroup_dir}: replaced device program{plural} id {old} with id {new} "
        f"({_mode_name(flags)} mode, +{n_rules} allow rule{'s' if n_rules > 1 else ''}{each})"
        + _inherited_note(cg_fd, len(ids))
    )


def _ids(ids: Iterator[int] | Sequence[int] | set[int]) -> str:
    return ", ".join(str(i) for i in sorted(ids))


def _prepare(cgroup_dir: str, fds: list[int], old_id: int, prefix: list[Insn]) -> _Swap:
    """Load the extended copy of program `old_id` (not attached yet); its fds go to `fds`."""
    with _step(cgroup_dir, f"opening device program id {old_id}"):
        old_fd = prog_fd_by_id(old_id)
    fds.append(old_fd)
    with _step(cgroup_dir, f"reading device program id {old_id}"):
        prog_type, code = prog_xlated(old_fd)
    if prog_type != BPF_PROG_TYPE_CGROUP_DEVICE:
        raise ApplyError(
            f"cgroup v2 {cgroup_dir}: program id {old_id} has type {prog_type}, "
            f"not a cgroup device program"
        )
    old = decode(code)
    problem = copy_problem(old)
    if problem:
        raise ApplyError(
            f"cgroup v2 {cgroup_dir}: cannot extend device program id {old_id}: {problem}; "
            "left it unchanged"
        )
    try:
        new_fd = load_device_program(encode(prefix + old))
    except ApplyError as e:
        raise ApplyError(
            f"cgroup v2 {cgroup_dir}: extending device program id {old_id}: {e}"
        ) from None
    fds.append(new_fd)
    swap = _Swap(old_id, old_fd, new_fd)
    with _step(cgroup_dir, "reading the new program's id"):
        swap.new_id = prog_id(new_fd)
    return swap


def _swap_one(cg_fd: int, flags: int, swap: _Swap, use_replace: bool, back: bool = False) -> None:
    out_fd, in_fd = (swap.new_fd, swap.old_fd) if back else (swap.old_fd, swap.new_fd)
    if not flags & BPF_F_ALLOW_MULTI:
        # exclusive/override mode holds one program; attaching with the same flags swaps it
        # atomically. Never detach here: in this mode DETACH removes whatever is attached.
        attach(cg_fd, in_fd, flags)
    elif use_replace:
        attach(cg_fd, in_fd, flags, replace_fd=out_fd)
    else:
        # both attached in between: every access must pass both, which only narrows
        attach(cg_fd, in_fd, flags)
        detach(cg_fd, out_fd)


def _swap_all(cgroup_dir: str, cg_fd: int, flags: int, swaps: list[_Swap], replace: bool) -> None:
    for n, swap in enumerate(swaps):
        try:
            try:
                _swap_one(cg_fd, flags, swap, replace)
            except OSError as e:
                # kernels before 5.6 reject BPF_F_REPLACE with EINVAL: take the other path
                if not (
                    replace and n == 0 and flags & BPF_F_ALLOW_MULTI and e.errno == errno.EINVAL
                ):
                    raise
                replace = False
                _swap_one(cg_fd, flags, swap, replace)
        except OSError as e:
            undone = _undo(cg_fd, flags, swaps[:n], replace)
            raise ApplyError(
                f"cgroup v2 {cgroup_dir}: BPF_PROG_ATTACH replacing device program id "
                f"{swap.old_id} with id {swap.new_id} ({_mode_name(flags)} mode): {e.strerror}; "
                + undone
            ) from None


def _undo(cg_fd: int, flags: int, done: list[_Swap], replace: bool) -> str:
    if not done:
        return "nothing was changed"
    failed = []
    for swap in reversed(done):
        try:
            _swap_one(cg_fd, flags, swap, replace, back=True)
        except OSError as e:
            failed.append(f"id {swap.new_id} ({e.strerror})")
    if failed:
        # the extended copies left in place still run the originals after their allow checks
        return "could not put back " + ", ".join(failed)
    return f"put back {_ids(s.old_id for s in done)}"
