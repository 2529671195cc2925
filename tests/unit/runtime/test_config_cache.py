"""The compiled config cache (gpuhook/config_cache.py): a fresh entry gives exactly what parsing
gives, without tomllib; a stale or untrusted entry is never used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import gpuhook.config as config_mod
from gpuhook import config_cache
from gpuhook.config import Config, load_config_lenient, parse_config_lenient
from tests.unit import specs
from tests.unit.runtime.test_launchers import world  # noqa: F401  (the fixture)
from tests.unit.runtime.test_shim_exec import World, imported_modules

VALID = ('inventory = "{inv}"\nhost-root = "{host}"\nlog-file = "gpuhook.log"\n'
         'runtimes = ["runc"]\nmode = "hook"\ngated-device-families = []\n')
TYPO = 'log-file = "/var/log/x.log"\nmdoe = "hook"\n'
NOT_TOML = 'log-file = "/var/log/x.log"\nthis is not toml\n'

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


class Env:
    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cache = tmp / "cache"
        self.config = tmp / "etc" / "config.toml"
        self.config.parent.mkdir()
        self.parses = 0
        monkeypatch.setattr(config_cache, "CACHE_DIR", str(self.cache))
        real = parse_config_lenient

        def counting(data: bytes, origin: str) -> tuple[Config, list[str]]:
            self.parses += 1
            return real(data, origin)

        monkeypatch.setattr(config_mod, "parse_config_lenient", counting)

    def write(self, text: str) -> None:
        self.config.write_text(text.format(inv=specs.MIG8, host=specs.MIG8_HOST))

    def load(self) -> tuple[Config, list[str]]:
        return load_config_lenient(str(self.config))

    def entry(self) -> Path:
        return self.cache / config_cache.entry_name(os.stat(self.config))

    def edit_entry(self, change: Callable[[dict[str, Any]], None]) -> None:
        doc = json.loads(self.entry().read_text())
        change(doc)
        self.entry().write_text(json.dumps(doc))


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    return Env(tmp_path, monkeypatch)


@pytest.mark.parametrize("text", [VALID, TYPO, NOT_TOML],
                         ids=["a valid config with a relative path",
                              "a config with an unknown key keeps its problem",
                              "a config that is not TOML keeps what its lines say"])
def test_a_fresh_entry_gives_exactly_what_parsing_gives(env: Env, text: str) -> None:
    env.write(text)
    first = env.load()
    assert env.parses == 1
    st = env.entry().stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o600, os.geteuid())
    assert env.load() == first
    assert env.parses == 1  # the second load parsed nothing
    assert first == parse_config_lenient(env.config.read_bytes(), str(env.config))


def _same_size_edit_in_the_same_tick(env: Env) -> None:
    before = os.stat(env.config)
    env.config.write_text(env.config.read_text().replace('mode = "hook"', 'mode = "spec"'))
    os.utime(env.config, ns=(before.st_atime_ns, before.st_mtime_ns))
    now = os.stat(env.config)
    assert now.st_size == before.st_size

    def same_identity(doc: dict[str, Any]) -> None:  # as if mtime and ctime had not moved
        doc["key"]["file"] = [now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns,
                              now.st_ctime_ns]
    env.edit_entry(same_identity)


def _replaced_by_a_new_file(env: Env) -> None:
    new = env.config.with_name("new.toml")
    new.write_text(env.config.read_text().replace('mode = "hook"', 'mode = "spec"'))
    os.replace(new, env.config)


def _touched(env: Env) -> None:
    env.config.write_text(env.config.read_text().replace('mode = "hook"', 'mode = "spec"'))


@pytest.mark.parametrize("stale", [_same_size_edit_in_the_same_tick, _replaced_by_a_new_file,
                                   _touched],
                         ids=["an edit of the same size within the same clock tick",
                              "the file replaced by another (a new inode)",
                              "the file edited in place (new mtime and ctime)"])
def test_an_entry_for_other_bytes_is_never_used(env: Env, stale: Callable[[Env], None]) -> None:
    env.write(VALID)
    assert env.load()[0].mode == "hook"
    stale(env)
    assert env.load()[0].mode == "spec"
    assert env.parses == 2


def test_an_entry_from_another_parser_or_path_is_not_used(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.write(VALID)
    env.load()
    monkeypatch.setattr(config_cache, "_parser_identity", lambda: [[1, 2, 3, 4]])
    env.load()
    assert env.parses == 2  # an upgraded gpuhook parses again
    link = env.config.with_name("link.toml")
    os.link(env.config, link)  # the same inode by another path: relative paths differ
    config, _ = load_config_lenient(str(link))
    assert env.parses == 3
    assert config.log_file == str(link.parent / "gpuhook.log")


def _symlink(env: Env) -> None:
    real = env.entry().with_name("elsewhere.json")
    env.entry().rename(real)
    env.entry().symlink_to(real)


def _fifo(env: Env) -> None:
    env.entry().unlink()
    os.mkfifo(env.entry(), 0o600)


def _other_owner(env: Env) -> None:
    os.chown(env.entry(), 1000, 1000)


def _readable_by_others(env: Env) -> None:
    env.entry().chmod(0o644)


def _dir_writable_by_others(env: Env) -> None:
    env.cache.chmod(0o777)


def _dir_of_other_owner(env: Env) -> None:
    os.chown(env.cache, 1000, 1000)


def _not_json(env: Env) -> None:
    env.entry().write_text('{"key": ')


def _a_field_of_the_wrong_type(env: Env) -> None:
    env.edit_entry(lambda doc: doc["config"].update(driver_files="yes"))


def _a_field_missing(env: Env) -> None:
    env.edit_entry(lambda doc: doc["config"].pop("mode"))


@pytest.mark.parametrize("untrusted", [
    _symlink, _fifo, pytest.param(_other_owner, marks=needs_root), _readable_by_others,
    _dir_writable_by_others, pytest.param(_dir_of_other_owner, marks=needs_root), _not_json,
    _a_field_of_the_wrong_type, _a_field_missing,
], ids=["an entry that is a symlink to a valid one", "an entry that is a FIFO (never waited on)",
        "an entry owned by another uid", "an entry readable by others (not 0600)",
        "a cache dir writable by others", "a cache dir owned by another uid",
        "an entry that is not JSON", "an entry with a field of the wrong type",
        "an entry that lacks a field"])
def test_an_untrusted_entry_is_ignored_and_the_file_parsed(
        env: Env, untrusted: Callable[[Env], None]) -> None:
    env.write(VALID)
    env.load()
    env.edit_entry(lambda doc: doc["config"].update(mode="spec"))  # a lie, if it were read
    untrusted(env)
    config, problems = env.load()
    assert (config.mode, problems, env.parses) == ("hook", [], 2)


def test_the_cache_keeps_at_most_max_entries_dropping_the_oldest(env: Env) -> None:
    env.cache.mkdir(mode=0o700)
    for i in range(config_cache.MAX_ENTRIES + 5):
        old = env.cache / f"config-1-{i}.json"
        old.write_text("{}")
        os.utime(old, ns=(i * 10**9, i * 10**9))
    other = env.cache / "inventory.json"
    other.write_text("{}")
    env.write(VALID)
    env.load()
    entries = sorted(p.name for p in env.cache.glob("config-*.json"))
    assert len(entries) == config_cache.MAX_ENTRIES
    assert env.entry().name in entries
    assert "config-1-0.json" not in entries  # the oldest went
    assert f"config-1-{config_cache.MAX_ENTRIES + 4}.json" in entries
    assert other.exists()  # nothing but config entries is touched


def test_no_entry_is_written_into_an_untrusted_dir(env: Env) -> None:
    env.cache.mkdir(mode=0o777)
    env.cache.chmod(0o777)
    env.write(VALID)
    env.load()
    assert list(env.cache.iterdir()) == []


def test_the_shims_gpu_create_reads_a_fresh_entry_without_tomllib(world: World) -> None:  # noqa: F811
    """The real path: the shim's GPU create writes the entry under /run/gpuhook, the next one
    reads it and imports no tomllib."""
    world.write_config(mode="hook")
    entry = Path(config_cache.CACHE_DIR) / config_cache.entry_name(os.stat(world.config))
    try:
        runs = []
        for name in ("first", "second"):
            b = world.bundle(specs.spec(ids=("3",)), name=name)
            result = world.shim("create", "-b", str(b), "c1", importtime=True)
            assert result.returncode == 7, result.stderr
            runs.append(imported_modules(result.stderr))
        assert "tomllib" in runs[0]
        assert entry.is_file()
        assert "tomllib" not in runs[1]
        assert "gpuhook.config_cache" in runs[1]
    finally:
        entry.unlink(missing_ok=True)


def test_a_run_as_another_user_neither_reads_nor_writes_roots_entries() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a child as another uid")
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="gpuhook-cache-"))  # /tmp: readable by uid 1000
    try:
        d.chmod(0o755)
        cfg = d / "c.toml"
        cfg.write_text('mode = "hook"\n')
        cfg.chmod(0o644)
        load_config_lenient(str(cfg))  # root writes the entry (/run/gpuhook, 0700)
        code = ("import sys; sys.path.insert(0, sys.argv[2]); import os; os.setgid(1000); "
                "os.setuid(1000); from gpuhook.config import load_config_lenient; "
                "print(load_config_lenient(sys.argv[1]))")
        out = subprocess.run([sys.executable, "-I", "-c", code, str(cfg),
                              str(Path(__file__).resolve().parents[3])],
                             capture_output=True, text=True, check=False, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "mode='hook'" in out.stdout and out.stdout.rstrip().endswith(", [])")
    finally:
        entry = Path(config_cache.CACHE_DIR) / config_cache.entry_name(os.stat(d / "c.toml"))
        entry.unlink(missing_ok=True)
        shutil.rmtree(d)
