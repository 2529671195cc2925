"""Device programs laid out the way runc 1.1's devicefilter builds them, for tests: the baseline a
container's cgroup has before gpuhook extends it.

runc's layout: R2 = type, R3 = access, R4 = major, R5 = minor loaded once from the ctx (R1), then
one block per rule that jumps to the next block on a mismatch, using R1 as a scratch register for
the access check (so R1 is no longer the ctx after the first rule with partial access), and a
final `return default`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpuhook.decide.plan import CgroupRule
from gpuhook.enforce import bpf
from gpuhook.enforce.bpf import ALU_AND, ALU_MOV, ALU_RSH, JMP_JNE, R1, R2, R3, R4, R5, Insn


@dataclass(frozen=True)
class RuncRule:
    rule: CgroupRule
    allow: bool = True


def runc_style_program(rules: Sequence[RuncRule], default_allow: bool = False) -> list[Insn]:
    insns = [
        bpf.ldx_w(R2, R1, 0),
        bpf.alu32_imm(ALU_AND, R2, 0xFFFF),
        bpf.ldx_w(R3, R1, 0),
        bpf.alu32_imm(ALU_RSH, R3, 16),
        bpf.ldx_w(R4, R1, 4),
        bpf.ldx_w(R5, R1, 8),
    ]
    for r in rules:
        rule = r.rule
        block: list[Insn] = [bpf.jmp_imm(JMP_JNE, R2, bpf.DEV_TYPES[rule.type], 0)]
        mask = bpf.access_mask(rule.access)
        if mask != bpf.ACC_ALL:
            block += [
                bpf.alu32_reg(ALU_MOV, R1, R3),
                bpf.alu32_imm(ALU_AND, R1, mask),
                bpf.jmp_reg(JMP_JNE, R1, R3, 0),
            ]
        if rule.major != bpf.ANY:
            block.append(bpf.jmp_imm(JMP_JNE, R4, rule.major, 0))
        if rule.minor != bpf.ANY:
            block.append(bpf.jmp_imm(JMP_JNE, R5, rule.minor, 0))
        block += bpf.return_imm(1 if r.allow else 0)
        end = len(block)
        insns += [
            Insn(i.code, i.dst, i.src, end - n - 1, i.imm)
            if i.code & 0x07 == bpf.CLS_JMP and i.code != bpf.EXIT
            else i
            for n, i in enumerate(block)
        ]
    return [*insns, *bpf.return_imm(1 if default_allow else 0)]


def c(major: int, minor: int, access: str = "rwm") -> CgroupRule:
    return CgroupRule("c", major, minor, access)


def b(major: int, minor: int, access: str = "rwm") -> CgroupRule:
    return CgroupRule("b", major, minor, access)


# what runc allows every container by default (libcontainer/specconv AllowedDevices, abridged)
RUNC_DEFAULTS = (
    c(1, 3),  # /dev/null
    c(1, 5),  # /dev/zero
    c(1, 7),  # /dev/full
    c(5, 0),  # /dev/tty
    c(1, 8),  # /dev/random
    c(1, 9),  # /dev/urandom
    c(5, 2),  # /dev/ptmx
    c(136, bpf.ANY),  # /dev/pts/*
)
