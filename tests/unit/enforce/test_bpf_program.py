"""The cgroup v2 device program as data: instruction encoding, the allow prefix, and what
"prefix + a copy of runc's program" decides, checked with a small interpreter of the eBPF subset
these programs use (it refuses reads of uninitialised registers and ctx reads through anything but
the ctx pointer, as the kernel verifier would)."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuhook.decide.plan import CgroupRule
from gpuhook.enforce import bpf
from gpuhook.enforce.bpf import ANY, Insn
from gpuhook.errors import ApplyError
from tests.bpf_fixtures import RUNC_DEFAULTS, RuncRule, b, c, runc_style_program

MASK64 = (1 << 64) - 1
MASK32 = (1 << 32) - 1


class Ctx:
    """The R1 value at entry: a pointer to struct bpf_cgroup_dev_ctx."""


CTX = Ctx()


class Rejected(Exception):
    pass


def run(insns: Sequence[Insn], dev_type: int, access: int, major: int, minor: int) -> int:
    ctx = struct.pack("<III", (access << 16) | dev_type, major, minor)
    regs: dict[int, int | Ctx] = {1: CTX}

    def val(reg: int) -> int:
        v = regs.get(reg)
        if not isinstance(v, int):
            raise Rejected(f"R{reg} read while {'the ctx pointer' if v is CTX else 'unset'}")
        return v

    pc = 0
    for _ in range(10_000):
        i = insns[pc]
        cls, op, from_reg = i.code & 0x07, i.code & 0xF0, i.code & bpf.SRC_X
        if i.code == bpf.CLS_LDX | bpf.SZ_W | bpf.MODE_MEM:
            if regs.get(i.src) is not CTX or i.off not in (0, 4, 8):
                raise Rejected(f"insn {pc}: ldx from R{i.src}+{i.off}, not the ctx")
            regs[i.dst] = struct.unpack_from("<I", ctx, i.off)[0]
        elif cls in (bpf.CLS_ALU, bpf.CLS_ALU64):
            width = MASK32 if cls == bpf.CLS_ALU else MASK64
            src = val(i.src) if from_reg else i.imm & MASK64
            if op == bpf.ALU_MOV:
                regs[i.dst] = src & width
            else:
                dst = val(i.dst)
                if op == bpf.ALU_AND:
                    regs[i.dst] = dst & src & width
                elif op == bpf.ALU_RSH:
                    regs[i.dst] = (dst & width) >> src
                else:
                    raise Rejected(f"insn {pc}: ALU op {op:#x} outside the tested subset")
        elif i.code == bpf.EXIT:
            return val(0)
        elif cls in (bpf.CLS_JMP, bpf.CLS_JMP32):
            width = MASK32 if cls == bpf.CLS_JMP32 else MASK64
            if op == bpf.JMP_JA:
                pc += i.off
            else:
                a, s = val(i.dst) & width, (val(i.src) if from_reg else i.imm) & width
                taken = {bpf.JMP_JNE: a != s, 0x10: a == s}[op]
                pc += i.off if taken else 0
        else:
            raise Rejected(f"insn {pc}: opcode {i.code:#x} outside the tested subset")
        pc += 1
        if not 0 <= pc < len(insns):
            raise Rejected(f"jumped to {pc}, outside the program")
    raise Rejected("did not exit")


def matches(rule: CgroupRule, dev_type: int, access: int, major: int, minor: int) -> bool:
    return (
        bpf.DEV_TYPES[rule.type] == dev_type
        and access & ~bpf.access_mask(rule.access) == 0
        and rule.major in (ANY, major)
        and rule.minor in (ANY, minor)
    )


def runc_decides(rules: Sequence[RuncRule], default_allow: bool, *dev: int) -> int:
    for r in rules:
        if matches(r.rule, *dev):
            return int(r.allow)
    return int(default_allow)


CHAR, BLOCK = bpf.DEV_CHAR, bpf.DEV_BLOCK
R, W, M = bpf.ACC_READ, bpf.ACC_WRITE, bpf.ACC_MKNOD
GRID = [
    (t, acc, major, minor)
    for t in (CHAR, BLOCK)
    for acc in range(1, 8)
    for major in (1, 5, 136, 195, 510)
    for minor in (0, 1, 3, 9)
]


# --- encoding ------------------------------------------------------------------------------------

insn_st = st.builds(
    Insn,
    code=st.integers(0, 255),
    dst=st.integers(0, 15),
    src=st.integers(0, 15),
    off=st.integers(-(2**15), 2**15 - 1),
    imm=st.integers(-(2**31), 2**31 - 1),
)


@given(st.lists(insn_st, max_size=40))
def test_encode_then_decode_gives_back_the_same_instructions(insns: list[Insn]) -> None:
    code = bpf.encode(insns)
    assert len(code) == 8 * len(insns)
    assert bpf.decode(code) == insns


@given(st.binary(max_size=64).map(lambda b: b[: len(b) - len(b) % 8]))
def test_decode_then_encode_gives_back_the_same_bytes(code: bytes) -> None:
    assert bpf.encode(bpf.decode(code)) == code


def test_decode_refuses_a_partial_instruction() -> None:
    with pytest.raises(ValueError, match="not a whole number"):
        bpf.decode(b"\x95" + b"\0" * 10)


def test_register_nibbles_are_dst_low_src_high() -> None:
    assert bpf.encode([bpf.ldx_w(2, 1, 4)]) == bytes.fromhex("6112040000000000")


def test_prefix_for_one_rw_rule_is_exactly_these_instructions() -> None:
    expected = bytes.fromhex(
        "6112000000000000"  # r2 = *(u32 *)(r1 + 0)        access_type
        "bc23000000000000"  # w3 = w2
        "54020000ffff0000"  # w2 &= 0xffff                  type
        "7403000010000000"  # w3 >>= 16                     access
        "6114040000000000"  # r4 = *(u32 *)(r1 + 4)        major
        "6115080000000000"  # r5 = *(u32 *)(r1 + 8)        minor
        "5502070002000000"  # if r2 != 2 (char) goto +7
        "bc30000000000000"  # w0 = w3
        "5400000006000000"  # w0 &= rw
        "5d30040000000000"  # if r0 != r3 goto +4           asked for more than rw
        "55040300c3000000"  # if r4 != 195 goto +3
        "5505020000000000"  # if r5 != 0 goto +2
        "b400000001000000"  # w0 = 1
        "9500000000000000"  # exit
    )
    assert bpf.encode(bpf.allow_prefix([c(195, 0, "rw")])) == expected


@pytest.mark.parametrize(
    ("rule", "block_len"),
    [
        pytest.param(c(195, 0, "rwm"), 5, id="rwm needs no access check"),
        pytest.param(c(195, 0, "r"), 8, id="partial access adds three instructions"),
        pytest.param(c(136, ANY, "rwm"), 4, id="a wildcard minor is not compared"),
        pytest.param(c(ANY, ANY, "rwm"), 3, id="a type-only rule compares just the type"),
    ],
)
def test_rule_block_length(rule: CgroupRule, block_len: int) -> None:
    assert len(bpf.allow_prefix([rule])) == 6 + block_len


def test_duplicate_rules_are_checked_once() -> None:
    assert bpf.allow_prefix([c(195, 0), c(195, 0)]) == bpf.allow_prefix([c(195, 0)])


def test_no_rules_gives_no_prefix() -> None:
    assert bpf.allow_prefix([]) == []


# --- what the prefix may touch -------------------------------------------------------------------

SOME_RULES = [c(195, 0, "rw"), c(195, 255), b(8, ANY, "r"), c(510, 1, "m"), c(ANY, ANY, "w")]


def test_prefix_never_writes_r1_the_frame_pointer_or_the_stack() -> None:
    for i in bpf.allow_prefix(SOME_RULES):
        cls = i.code & 0x07
        assert cls not in (bpf.CLS_ST, bpf.CLS_STX), i
        if cls in (bpf.CLS_ALU, bpf.CLS_ALU64, bpf.CLS_LDX):
            assert i.dst not in (bpf.R1, bpf.R10), i


def test_prefix_jumps_stay_inside_it_or_fall_through_to_what_follows() -> None:
    prefix = bpf.allow_prefix(SOME_RULES)
    for n, i in enumerate(prefix):
        if i.code & 0x07 == bpf.CLS_JMP and i.code != bpf.EXIT:
            assert 0 < n + 1 + i.off <= len(prefix), (n, i)
    # and the only way to leave without falling through returns 1
    exits = [n for n, i in enumerate(prefix) if i.code == bpf.EXIT]
    assert all(prefix[n - 1] == bpf.alu32_imm(bpf.ALU_MOV, bpf.R0, 1) for n in exits)


# --- rule validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        pytest.param(CgroupRule("a", 1, 3, "rwm"), "type 'a'", id="type a is refused"),
        pytest.param(CgroupRule("p", 1, 3, "rwm"), "type 'p'", id="an unknown type is refused"),
        pytest.param(c(1, 3, ""), "access ''", id="empty access is refused"),
        pytest.param(c(1, 3, "rx"), "access 'rx'", id="unknown access letters are refused"),
        pytest.param(c(-2, 3), "major -2", id="a negative major other than -1 is refused"),
        pytest.param(c(1, 2**31), "minor 2147483648", id="a minor beyond imm32 is refused"),
    ],
)
def test_invalid_rule_is_an_apply_error_naming_it(rule: CgroupRule, message: str) -> None:
    with pytest.raises(ApplyError, match=message):
        bpf.allow_prefix([c(1, 5), rule])


# --- which read-back programs can be copied ------------------------------------------------------


@pytest.mark.parametrize(
    ("insns", "problem"),
    [
        pytest.param([], "no instructions", id="an empty program"),
        pytest.param(
            [Insn(bpf.CALL, imm=14), *bpf.return_imm(1)], "calls a helper", id="a helper call"
        ),
        pytest.param(
            [Insn(bpf.LD_IMM64, 1, 1, 0, 7), Insn(0), *bpf.return_imm(1)],
            "map",
            id="a map reference",
        ),
        pytest.param(
            [bpf.alu32_imm(bpf.ALU_MOV, 11, 5), *bpf.return_imm(1)],
            "bpf_jit_harden",
            id="a blinded constant in the hidden register",
        ),
    ],
)
def test_programs_that_cannot_be_reloaded_are_named(insns: list[Insn], problem: str) -> None:
    found = bpf.copy_problem(insns)
    assert found is not None
    assert problem in found


@pytest.mark.parametrize(
    "insns",
    [
        pytest.param(runc_style_program([RuncRule(r) for r in RUNC_DEFAULTS]), id="runc's"),
        pytest.param(
            [Insn(bpf.LD_IMM64, 0, 0, 0, 1), Insn(0), *bpf.return_imm(1)],
            id="one with a plain 64-bit constant",
        ),
    ],
)
def test_plain_programs_can_be_copied(insns: list[Insn]) -> None:
    assert bpf.copy_problem(insns) is None


# --- semantics: prefix + a copy of runc's program ------------------------------------------------


def test_runc_style_fixture_decides_like_runc() -> None:
    rules = [RuncRule(c(1, 3)), RuncRule(c(195, ANY, "r")), RuncRule(c(195, 1), allow=False)]
    prog = runc_style_program(rules)
    for dev in GRID:
        assert run(prog, *dev) == runc_decides(rules, False, *dev), dev


@pytest.mark.parametrize(
    ("dev", "allowed"),
    [
        pytest.param((CHAR, R | W, 1, 3), 1, id="dev null stays allowed"),
        pytest.param((CHAR, R, 195, 0), 1, id="a new rule's device is allowed for reading"),
        pytest.param((CHAR, W, 195, 0), 0, id="a new read-only rule does not allow writing"),
        pytest.param((CHAR, M, 195, 1), 1, id="mknod is allowed by an m rule"),
        pytest.param((CHAR, R, 195, 1), 0, id="an m rule does not allow reading"),
        pytest.param((BLOCK, R, 195, 0), 0, id="a char rule does not allow the block device"),
        pytest.param((CHAR, R | W, 510, 9), 0, id="a device in neither set stays denied"),
        pytest.param((CHAR, R | W, 136, 4), 1, id="the old wildcard pts rule still applies"),
    ],
)
def test_extended_runc_program(dev: tuple[int, int, int, int], allowed: int) -> None:
    old = runc_style_program([RuncRule(r) for r in RUNC_DEFAULTS])
    new = bpf.allow_prefix([c(195, 0, "r"), c(195, 1, "m")]) + old
    assert run(new, *dev) == allowed


def test_extended_deny_list_program_keeps_its_denials() -> None:
    old = runc_style_program([RuncRule(c(510, 3), allow=False)], default_allow=True)
    new = bpf.allow_prefix([c(510, 1)]) + old
    assert run(new, CHAR, R, 510, 3) == 0
    assert run(new, CHAR, R, 510, 9) == 1


def test_the_interpreter_rejects_a_program_that_lost_its_ctx_pointer() -> None:
    # what would happen if the prefix used R1 as scratch, as runc's own blocks do
    clobbering = [bpf.alu32_imm(bpf.ALU_MOV, bpf.R1, 0)]
    old = runc_style_program([RuncRule(c(1, 3))])
    with pytest.raises(Rejected, match="not the ctx"):
        run(clobbering + old, CHAR, R, 1, 3)


rule_st = st.builds(
    CgroupRule,
    type=st.sampled_from("cb"),
    major=st.sampled_from([1, 5, 136, 195, ANY]),
    minor=st.sampled_from([0, 1, 3, ANY]),
    access=st.sets(st.sampled_from("rwm"), min_size=1).map(lambda s: "".join(sorted(s))),
)


@settings(max_examples=60, deadline=None)
@given(
    old_rules=st.lists(st.builds(RuncRule, rule_st, st.booleans()), max_size=4),
    default_allow=st.booleans(),
    new_rules=st.lists(rule_st, min_size=1, max_size=4),
)
def test_extended_program_allows_exactly_the_new_rules_or_what_the_old_allowed(
    old_rules: list[RuncRule], default_allow: bool, new_rules: list[CgroupRule]
) -> None:
    new = bpf.allow_prefix(new_rules) + runc_style_program(old_rules, default_allow)
    for dev in GRID:
        expected = any(matches(r, *dev) for r in new_rules) or runc_decides(
            old_rules, default_allow, *dev
        )
        assert run(new, *dev) == int(expected), dev


@pytest.mark.parametrize("default", [0, 1], ids=["deny by default", "allow by default"])
def test_allow_program_returns_its_default_for_other_devices(default: int) -> None:
    prog = bpf.allow_program([c(1, 3)], default)
    assert run(prog, CHAR, R, 1, 3) == 1
    assert run(prog, CHAR, R, 1, 5) == default
