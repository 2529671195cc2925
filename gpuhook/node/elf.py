"""Which shared libraries an ELF file loads: its PT_INTERP (the dynamic loader) read from the
program headers, and the loader's own answer (`ld.so --list FILE`, which resolves DT_NEEDED the
way a start would, without running the file)."""

from __future__ import annotations

import struct
import subprocess

MAX_HEADER = 64 * 1024
PT_INTERP = 3


class ElfError(Exception):
    pass


def interpreter(data: bytes) -> str | None:
    """PT_INTERP of a 64-bit little-endian ELF image (its first MAX_HEADER bytes), or None for a
    file with no loader (a shared object has none)."""
    if data[:4] != b"\x7fELF":
        raise ElfError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ElfError("only 64-bit little-endian ELF is supported")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        at = phoff + i * phentsize
        if at + 0x28 > len(data):
            raise ElfError("program headers beyond the file's first bytes")
        p_type, = struct.unpack_from("<I", data, at)
        if p_type != PT_INTERP:
            continue
        offset, = struct.unpack_from("<Q", data, at + 0x08)
        size, = struct.unpack_from("<Q", data, at + 0x20)
        raw = data[offset:offset + size]
        if len(raw) != size or not raw.endswith(b"\0"):
            raise ElfError("PT_INTERP beyond the file's first bytes")
        return raw[:-1].decode()
    return None


def file_interpreter(path: str) -> str | None:
    with open(path, "rb") as f:
        return interpreter(f.read(MAX_HEADER))


def parse_ld_list(text: str) -> list[str]:
    """Paths of the libraries in `ld.so --list` output (glibc's format):

        linux-vdso.so.1 (0x00007ffd...)                 the vDSO: no file
        libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x...)
        /lib64/ld-linux-x86-64.so.2 (0x...)              the loader itself
        libfoo.so.1 => not found                         an error
    """
    paths: list[str] = []
    missing: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("statically linked"):
            continue
        name, arrow, rest = line.partition(" => ")
        if arrow:
            if rest.startswith("not found"):
                missing.append(name)
                continue
            paths.append(rest.rsplit(" (", 1)[0])
        elif name.startswith("/"):
            paths.append(name.rsplit(" (", 1)[0])
    if missing:
        raise ElfError("libraries not found: " + ", ".join(missing))
    return paths


def needed_libraries(loader: str, path: str) -> list[str]:
    res = subprocess.run([loader, "--list", path], capture_output=True, text=True,
                         env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, timeout=30, check=False)
    if res.returncode != 0 and "statically linked" not in res.stdout + res.stderr:
        raise ElfError(f"{loader} --list {path}: {(res.stderr or res.stdout).strip()}")
    return parse_ld_list(res.stdout)
