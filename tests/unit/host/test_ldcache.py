"""parse_ld_cache on caches written by the real `ldconfig -r` (glibc 2.36 here) in all three
formats it writes, checked against what `ldconfig -p` itself reads from the same file; and on
hand-corrupted caches, which must give one clear LdCacheError, never a traceback."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from gpuhook.host.ldcache import (
    NEW_MAGIC,
    LdCacheEntry,
    LdCacheError,
    parse_ld_cache,
)
from gpuhook.limits import MAX_LD_CACHE_BYTES

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
LIB64 = "usr/lib/x86_64-linux-gnu"
LIB32 = "usr/lib/i386-linux-gnu"
# ldconfig -p's "(...)" text for each arch we parse (glibc elf/cache.c print_entry)
LDCONFIG_ARCH = {"libc6,x86-64": "x86-64", "libc6": "i386", "ELF": "i386"}


def _cc(out: Path, soname: str, *flags: str) -> None:
    src = out.parent / "stub.c"
    src.write_text("int stub(void) { return 0; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", *flags, f"-Wl,-soname,{soname}", "-o", str(out),
                    str(src)], check=True, capture_output=True, env=ENV)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with 64-bit libraries (SONAME + dev links) and a 32-bit one without libc (ELF)."""
    if shutil.which("gcc") is None or shutil.which("ldconfig") is None:
        pytest.skip("needs gcc and ldconfig (apt-get install gcc libc-bin)")
    root = tmp_path_factory.mktemp("ldroot")
    (root / LIB64).mkdir(parents=True)
    (root / LIB32).mkdir(parents=True)
    for stem, soname in (("libcuda", "libcuda.so.1"), ("libnvidia-ml", "libnvidia-ml.so.1"),
                         ("libnvidia-glcore", "libnvidia-glcore.so.550.54.15")):
        _cc(root / LIB64 / f"{stem}.so.550.54.15", soname)
        if soname != f"{stem}.so.550.54.15":
            (root / LIB64 / soname).symlink_to(f"{stem}.so.550.54.15")
    (root / LIB64 / "libcuda.so").symlink_to("libcuda.so.1")
    _cc(root / LIB32 / "libcuda.so.550.54.15", "libcuda.so.1", "-m32", "-nostdlib")
    (root / LIB32 / "libcuda.so.1").symlink_to("libcuda.so.550.54.15")
    (root / "etc").mkdir()
    (root / "etc/ld.so.conf").write_text(f"/{LIB64}\n/{LIB32}\n")
    return root


def _ldconfig_p(root: Path, cache: str) -> set[tuple[str, str, str]]:
    out = subprocess.run(["ldconfig", "-r", str(root), "-C", cache, "-p"], check=True,
                         capture_output=True, text=True, env=ENV).stdout
    entries = set()
    for line in out.splitlines()[1:]:
        if " => " not in line:
            continue
        left, path = line.strip().split(" => ")
        key, _, flags = left.partition(" (")
        entries.add((key, LDCONFIG_ARCH[flags.rstrip(")")], path))
    return entries


@pytest.mark.parametrize("fmt", ["new", "old", "compat"],
                         ids=["new_format_as_glibc_writes_by_default", "old_libc5_format",
                              "compat_old_then_new_format"])
def test_parse_agrees_with_ldconfig_p(tree: Path, fmt: str) -> None:
    cache = f"/etc/ld.so.cache.{fmt}"
    subprocess.run(["ldconfig", "-X", "-r", str(tree), "-c", fmt, "-C", cache], check=True,
                   capture_output=True, env=ENV)
    entries = parse_ld_cache((tree / cache.lstrip("/")).read_bytes())
    assert {(e.key, e.arch, e.path) for e in entries} == _ldconfig_p(tree, cache)
    assert len(entries) == 5  # cuda (x2 arches), cuda dev link, nvidia-ml, glcore
    assert all(e.elf for e in entries)


def test_the_new_format_keeps_flags_and_the_i386_entry(tree: Path) -> None:
    subprocess.run(["ldconfig", "-X", "-r", str(tree), "-C", "/etc/ld.so.cache"], check=True,
                   capture_output=True, env=ENV)
    entries = parse_ld_cache((tree / "etc/ld.so.cache").read_bytes())
    assert LdCacheEntry("libcuda.so.1", f"/{LIB64}/libcuda.so.1", 0x0303) in entries
    assert LdCacheEntry("libcuda.so.1", f"/{LIB32}/libcuda.so.1", 0x0001) in entries


def _new_cache(entries: list[tuple[int, bytes, bytes]], nlibs: int | None = None,
               endian: int = 2) -> bytes:
    """A new-format cache laid out as glibc's ldconfig writes it (header, entries, strings)."""
    head = 48 + 24 * len(entries)
    strings = b""
    table = b""
    for flags, key, value in entries:
        k = head + len(strings)
        strings += key + b"\0"
        v = head + len(strings)
        strings += value + b"\0"
        table += struct.pack("<iIIIQ", flags, k, v, 0, 0)
    header = struct.pack("<20sIIB3xI12x", NEW_MAGIC, len(entries) if nlibs is None else nlibs,
                         len(strings), endian, 0)
    return header + table + strings


GOOD = _new_cache([(0x0303, b"libcuda.so.1", b"/usr/lib/libcuda.so.1")])


def test_the_hand_made_cache_is_what_the_corruptions_start_from() -> None:
    assert parse_ld_cache(GOOD) == [LdCacheEntry("libcuda.so.1", "/usr/lib/libcuda.so.1", 0x0303)]


@pytest.mark.parametrize(("data", "message"), [
    (b"", "not an ld.so cache"),
    (b"\x7fELF" + b"\0" * 60, "not an ld.so cache"),
    (GOOD[:30], "truncated header"),
    (_new_cache([(0x0303, b"a", b"b")], nlibs=5), "runs past the end"),
    (_new_cache([(0x0303, b"a", b"b")], nlibs=0xFFFFFFFF), "more than"),
    (GOOD[:48] + struct.pack("<iIIIQ", 0x0303, 10_000, 72, 0, 0) + GOOD[72:],
     "points past the end"),
    (GOOD.rstrip(b"\0") + b"x" * 5000, "unterminated or over-long"),
    (GOOD[:48] + struct.pack("<iIIIQ", 0x0303, len(GOOD) - 1, 72, 0, 0) + GOOD[72:],
     "empty string"),
    (_new_cache([(0x0303, b"a", b"b")], endian=3), "big-endian"),
    (b"ld.so-1.7.0\0" + struct.pack("<I", 1000) + b"\0" * 20, "runs past the end"),
    (b"ld.so-1.7.0\0\x01", "truncated old-format header"),
    (b"glibc-ld.so.cache1.1" + b"\0" * (MAX_LD_CACHE_BYTES), "more than"),
], ids=["empty_file", "an_elf_file_is_not_a_cache", "truncated_header",
        "entry_count_beyond_the_file", "absurd_entry_count", "key_offset_past_the_end",
        "string_without_terminator", "empty_key", "big_endian_cache", "old_format_past_the_end",
        "old_format_truncated_header", "larger_than_the_size_cap"])
def test_corrupt_caches_give_one_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(LdCacheError) as info:
        parse_ld_cache(data, "/host/etc/ld.so.cache")
    text = str(info.value)
    assert message in text
    assert text.startswith("/host/etc/ld.so.cache: ")
    assert "\n" not in text
