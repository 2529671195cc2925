"""gpuhook.atomic: the shim's config.json writes. The temp file is a new entry of our own, never
one that was waiting at its name (as tempfile.mkstemp guarantees), and nothing is left behind."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuhook import atomic


def test_a_new_file_gets_the_bytes_and_mode_0644_and_no_temp_file_stays(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    atomic.write_atomic(str(target), b"{}")
    assert target.read_bytes() == b"{}"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["config.json"]


def test_a_replaced_file_keeps_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    target.write_bytes(b"old")
    target.chmod(0o600)
    atomic.write_atomic(str(target), b"new")
    assert (target.read_bytes(), stat.S_IMODE(target.stat().st_mode)) == (b"new", 0o600)


def test_a_link_or_file_waiting_at_the_temp_name_is_skipped_and_left_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names: Iterator[bytes] = iter([b"\x00" * 6, b"\x00" * 6, b"\x01" * 6])
    monkeypatch.setattr(os, "urandom", lambda n: next(names))
    victim = tmp_path / "victim"
    victim.write_text("host file\n")
    planted = tmp_path / (".config.json." + "00" * 6)
    planted.symlink_to(victim)
    fd, name = atomic._create_temp(str(tmp_path), ".config.json.")
    os.close(fd)
    assert name == str(tmp_path / (".config.json." + "01" * 6))
    assert stat.S_IMODE(os.stat(name).st_mode) == 0o600
    assert planted.is_symlink() and victim.read_text() == "host file\n"


def test_it_gives_up_when_every_name_is_taken(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "urandom", lambda n: b"\x00" * n)
    (tmp_path / (".x." + "00" * 6)).write_text("")
    with pytest.raises(FileExistsError, match="no unused temporary name"):
        atomic._create_temp(str(tmp_path), ".x.")
