"""The parsers a common start runs without importing `re` (gpuhook/text.py explains why) accept
exactly what the regular expressions they replace accepted: each is held against that
expression, over hand-picked edge cases and generated text."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuhook.decide import resolve
from gpuhook.decide.request import _id_problem
from gpuhook.inventory.model import is_arch

# The expressions as they were (decide/resolve.py, decide/request.py, inventory/model.py).
CONSTRAINT = re.compile(r"(cuda|driver|arch|brand)[ \t]*(>=|<=|!=|==|=|>|<)[ \t]*(\S+)")
ID_CHARS = re.compile(r"[A-Za-z0-9:_.\-]+")
OLD_MIG_ID = re.compile(r"MIG-GPU-[0-9A-Fa-f-]{1,64}/[0-9]{1,6}/[0-9]{1,6}", re.IGNORECASE)
ARCH = re.compile(r"[0-9]{1,4}\.[0-9]{1,4}")

CONSTRAINTS = ["cuda>=12.0", "cuda >= 12.0", "cuda\t>=\t12.0", "driver>=470", "arch=8.0",
               "brand=tesla", "cuda>=", "cuda>", "cuda>==", "cuda>=\u00a012", "cuda>=1 2",
               "cuda>= 1\u20032", "cudax>=1", "CUDA>=1", "cuda=>1", "cuda!=1", "cuda<=1",
               "cuda==1", "cuda<1", "brand=", "brand= ", "arch>=\t", "", "cuda", "driver>=4\n"]


def _want_constraint(text: str) -> tuple[str, str, str] | None:
    m = CONSTRAINT.fullmatch(text)
    return None if m is None else (m.group(1), m.group(2), m.group(3))


@pytest.mark.parametrize("text", CONSTRAINTS)
def test_a_constraint_splits_as_the_regex_did(text: str) -> None:
    assert resolve._constraint(text) == _want_constraint(text)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.tuples(st.sampled_from(["cuda", "driver", "arch", "brand", "cud", "x"]),
                 st.text(" \t\u00a0\n", max_size=2),
                 st.sampled_from([">=", "<=", "!=", "==", "=", ">", "<", "=>", ""]),
                 st.text(" \t\u2003", max_size=2),
                 st.text("=<>1.2a \t\u00a0", max_size=5)).map("".join))
def test_generated_constraints_split_as_the_regex_did(text: str) -> None:
    assert resolve._constraint(text) == _want_constraint(text)


IDS = ["0", "GPU-8a4c4e2b-5a0c-4b1f-9d6e-0f6b1c2d3e4f", "0:1", "MIG-GPU-ab12/1/0",
       "mig-gpu-AB12/7/0", "MIG-GPU-/1/0", "MİG-GPU-a/1/1", "a b", "0/1", "", "GPU-1\n",
       "٣", "²", "0000:07:00.0", "MIG-GPU-a/1234567/0", "all"]


@pytest.mark.parametrize("device_id", IDS)
def test_a_device_id_is_well_formed_exactly_when_the_regexes_said_so(device_id: str) -> None:
    want = bool(device_id) and bool(ID_CHARS.fullmatch(device_id)
                                    or OLD_MIG_ID.fullmatch(device_id))
    assert (_id_problem(device_id, "here") is None) == want


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.text("aZ09:_.-/ G\u0130\u0131\u0663\n", max_size=12))
def test_generated_device_ids_are_judged_as_the_regexes_did(device_id: str) -> None:
    want = bool(ID_CHARS.fullmatch(device_id) or OLD_MIG_ID.fullmatch(device_id))
    assert (_id_problem(device_id, "here") is None) == want


@pytest.mark.parametrize("text", ["8.0", "10.12", "1234.5678", "12345.0", "8.", ".0", "8",
                                  "8.0.1", "٣.0", "8.0\n", "a.b", ""])
def test_an_arch_is_valid_exactly_when_the_regex_said_so(text: str) -> None:
    assert is_arch(text) == bool(ARCH.fullmatch(text))
