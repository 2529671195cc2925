"""The host's `/etc/ld.so.cache`, parsed directly (no `ldconfig -p`, no child process).

Format facts, from glibc's `sysdeps/generic/dl-cache.h` and `ldconfig.h` (glibc 2.36, the
version Debian 12 ships) and checked against caches written by its `ldconfig -c old|new|compat`:

- old ("ld.so-1.7.0"): 11-byte magic, pad to 12, u32 nlibs, then nlibs entries of
  (i32 flags, u32 key, u32 value); string offsets count from the end of that entry array.
- new ("glibc-ld.so.cache" "1.1"): 20 bytes of magic+version, u32 nlibs, u32 len_strings,
  u8 flags (endianness: 0 unknown, 1 invalid, 2 little, 3 big), 3 pad, u32 extension_offset,
  3 u32 unused (48 bytes), then nlibs entries of (i32 flags, u32 key, u32 value,
  u32 osversion, u64 hwcap) = 24 bytes; string offsets count from the start of this header.
- compat: an old table followed, at the next 8-byte boundary, by a new one (glibc reads the
  new one; so do we).

Entry flags: low byte = type (1 ELF, 3 ELF libc6), high byte = arch: 0x0000 i386 (with an
ELF type), 0x0300 x86-64 (FLAG_X8664_LIB64), 0x0800 x32, 0x0a00 aarch64, ... The key is the
name the loader looks up (a SONAME or a dev-link name), the value the path ldconfig found it at
(relative to `ldconfig -r`'s root).
"""

from __future__ import annotations

import struct

from gpuhook.errors import HostError
from gpuhook.limits import MAX_LD_CACHE_BYTES
from gpuhook.record import dataclass

OLD_MAGIC = b"ld.so-1.7.0"
NEW_MAGIC = b"glibc-ld.so.cache1.1"
MAX_ENTRIES = 1 << 20
MAX_STRING = 4096  # PATH_MAX: no key or path is longer

OLD_HEADER = struct.Struct("<11sxI")  # 16 bytes
OLD_ENTRY = struct.Struct("<iII")  # 12
NEW_HEADER = struct.Struct("<20sIIB3xI12x")  # 48
NEW_ENTRY = struct.Struct("<iIIIQ")  # 24

FLAG_TYPE_MASK = 0x00FF
FLAG_ELF = 0x0001
FLAG_ELF_LIBC6 = 0x0003
FLAG_ARCH_MASK = 0xFF00
ARCHES = {
    0x0000: "i386",  # with an ELF type: 32-bit x86 (libnvidia-container's LIB32_ARCH)
    0x0100: "sparc64",
    0x0200: "ia64",
    0x0300: "x86-64",  # FLAG_X8664_LIB64 (libnvidia-container's LIB_ARCH)
    0x0400: "s390x",
    0x0500: "ppc64",
    0x0600: "mips64-n32",
    0x0700: "mips64",
    0x0800: "x32",
    0x0900: "armhf",
    0x0A00: "aarch64",
    0x0B00: "armsf",
}
ENDIAN_MASK = 3
ENDIAN_LITTLE = 2


@dataclass(frozen=True)
class LdCacheEntry:
    key: str  # the name looked up: "libcuda.so.1", "libcuda.so"
    path: str  # where ldconfig found it: "/usr/lib/x86_64-linux-gnu/libcuda.so.1"
    flags: int
    hwcap: int = 0

    @property
    def elf(self) -> bool:
        return self.flags & FLAG_TYPE_MASK in (FLAG_ELF, FLAG_ELF_LIBC6)

    @property
    def arch(self) -> str:
        """"x86-64", "i386", ...; "unknown-0x..." for an arch glibc added after 2.36."""
        arch = self.flags & FLAG_ARCH_MASK
        return ARCHES.get(arch, f"unknown-{arch:#06x}")


class LdCacheError(HostError):
    """The cache is not in a format glibc's loader would accept."""


def parse_ld_cache(data: bytes, name: str = "ld.so.cache") -> list[LdCacheEntry]:
    """Every entry of an old, new or compat cache, in file order. LdCacheError (one line that
    names `name` and what is wrong) on anything glibc would reject or that points outside."""
    if len(data) > MAX_LD_CACHE_BYTES:
        raise LdCacheError(f"{name}: {len(data)} bytes, more than {MAX_LD_CACHE_BYTES}")
    if data.startswith(NEW_MAGIC):
        return _parse_new(data, 0, name)
    if not data.startswith(OLD_MAGIC):
        raise LdCacheError(f"{name}: not an ld.so cache (magic {_show(data[:20])})")
    if len(data) < OLD_HEADER.size:
        raise LdCacheError(f"{name}: truncated old-format header")
    _, nlibs = OLD_HEADER.unpack_from(data)
    end = OLD_HEADER.size + _count(nlibs, OLD_ENTRY.size, len(data) - OLD_HEADER.size,
                                   name, "old-format")
    new_at = (end + 7) & ~7
    if data[new_at:new_at + len(NEW_MAGIC)] == NEW_MAGIC:
        return _parse_new(data, new_at, name)  # compat: glibc uses the new table
    strings = data[end:]
    entries = []
    for i in range(nlibs):  # bounded: _count checked nlibs against the file's size
        flags, key, value = OLD_ENTRY.unpack_from(data, OLD_HEADER.size + i * OLD_ENTRY.size)
        entries.append(LdCacheEntry(_string(strings, key, name, i),
                                    _string(strings, value, name, i), flags))
    return entries


def _parse_new(data: bytes, at: int, name: str) -> list[LdCacheEntry]:
    if len(data) - at < NEW_HEADER.size:
        raise LdCacheError(f"{name}: truncated header")
    _, nlibs, _len_strings, endian, _ext = NEW_HEADER.unpack_from(data, at)
    if endian & ENDIAN_MASK not in (0, ENDIAN_LITTLE):
        raise LdCacheError(f"{name}: written for a big-endian machine or marked invalid "
                           f"(flags {endian:#x})")
    first = at + NEW_HEADER.size
    _count(nlibs, NEW_ENTRY.size, len(data) - first, name, "new-format")
    strings = data[at:]
    entries = []
    for i in range(nlibs):
        flags, key, value, _os, hwcap = NEW_ENTRY.unpack_from(data, first + i * NEW_ENTRY.size)
        entries.append(LdCacheEntry(_string(strings, key, name, i),
                                    _string(strings, value, name, i), flags, hwcap))
    return entries


def _count(nlibs: int, size: int, room: int, name: str, what: str) -> int:
    if nlibs > MAX_ENTRIES:
        raise LdCacheError(f"{name}: {what} table claims {nlibs} entries, more than {MAX_ENTRIES}")
    if nlibs * size > room:
        raise LdCacheError(f"{name}: {what} table of {nlibs} entries runs past the end of the file")
    return nlibs * size


def _string(strings: bytes, offset: int, name: str, index: int) -> str:
    if offset >= len(strings):
        raise LdCacheError(f"{name}: entry {index} points past the end of the file")
    end = strings.find(b"\0", offset, offset + MAX_STRING + 1)
    if end < 0:
        raise LdCacheError(f"{name}: entry {index} has an unterminated or over-long string")
    raw = strings[offset:end]
    if not raw:
        raise LdCacheError(f"{name}: entry {index} has an empty string")
    return raw.decode("utf-8", "surrogateescape")


def _show(raw: bytes) -> str:
    return repr(raw)[1:]
