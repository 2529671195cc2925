"""Which libraries the bundle takes: glibc's `ld.so --list` output parsed, PT_INTERP read."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gpuhook.node.elf import ElfError, file_interpreter, interpreter, parse_ld_list

# `ld.so --list /usr/bin/python3.11` on Debian 12 (glibc 2.36), as printed.
PYTHON_LIST = """\
\tlinux-vdso.so.1 (0x00007ffc4c5f6000)
\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f1b17813000)
\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f1b177f4000)
\tlibexpat.so.1 => /lib/x86_64-linux-gnu/libexpat.so.1 (0x00007f1b177c9000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f1b175e7000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f1b17906000)
"""


@pytest.mark.parametrize(("text", "want"), [
    (PYTHON_LIST, ["/lib/x86_64-linux-gnu/libm.so.6", "/lib/x86_64-linux-gnu/libz.so.1",
                   "/lib/x86_64-linux-gnu/libexpat.so.1", "/lib/x86_64-linux-gnu/libc.so.6",
                   "/lib64/ld-linux-x86-64.so.2"]),
    ("\tstatically linked\n", []),
    ("", []),
], ids=["a dynamic binary lists its libraries and the loader but not the vDSO",
        "a static binary needs nothing", "no output needs nothing"])
def test_ld_list_output_gives_the_library_paths(text: str, want: list[str]) -> None:
    assert parse_ld_list(text) == want


def test_a_library_the_loader_cannot_find_is_an_error_naming_it() -> None:
    text = PYTHON_LIST + "\tlibcap.so.2 => not found\n"
    with pytest.raises(ElfError, match=r"libraries not found: libcap\.so\.2"):
        parse_ld_list(text)


def test_this_interpreter_has_a_loader() -> None:
    loader = file_interpreter(str(Path(sys.executable).resolve()))
    assert loader is not None and Path(loader).name.startswith("ld-")


@pytest.mark.parametrize(("data", "message"), [
    (b"#!/bin/sh\n", "not an ELF file"),
    (b"\x7fELF\x01\x01" + bytes(58), "64-bit little-endian"),
], ids=["a script is not ELF", "a 32-bit ELF is refused"])
def test_what_is_not_a_64_bit_elf_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(ElfError, match=message):
        interpreter(data)


def test_a_shared_object_has_no_loader() -> None:
    import _ctypes

    assert file_interpreter(str(_ctypes.__file__)) is None
