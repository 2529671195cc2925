"""early.py reads the two keys the fast paths need exactly as TOML does, without tomllib for
the one-line forms, and keeps them from a config that does not load."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gpuhook.config import parse_config_lenient
from gpuhook.runtime.early import DEFAULT_RUNTIMES, DEFAULT_VOLUME_MOUNT_ROOT, read_keys

SHIPPED = Path(__file__).resolve().parents[3] / "config" / "config.toml"


@pytest.mark.parametrize(("text", "want"), [
    ("", (None, None)),
    ('volume-mount-root = "/gpus"\n', ("/gpus", None)),
    ('volume-mount-root="/gpus"   # the plugin\'s\n', ("/gpus", None)),
    ("volume-mount-root = '/gpus'\n", ("/gpus", None)),
    ('runtimes = ["/usr/bin/crun", "runc",]\n', (None, ("/usr/bin/crun", "runc"))),
    ('runtimes = [ "runc" ] # only runc\n', (None, ("runc",))),
    ('runtimes = []\n', (None, None)),
    ('runtimes = ["runc", 3]\n', (None, None)),
    ('volume-mount-root = "gpus/"\n', ("/gpus", None)),
    ('"volume-mount-root" = "/q"\n', ("/q", None)),
    ('volume-mount-root = "/\\u0067pus"\n', ("/gpus", None)),
    ('runtimes = [\n  "crun",\n]\n', (None, ("crun",))),
    ('x = """\nruntimes = ["evil"]\n"""\nruntimes = ["runc"]\n', (None, ("runc",))),
    ('volume-mount-root-x = "/no"\n', (None, None)),
    ('typo-key = 1\nruntimes = ["crun"]\n', (None, ("crun",))),
    ('this is not toml = = =\nruntimes = ["crun"]\n', (None, ("crun",))),
    ('[section]\nruntimes = ["crun"]\n', (None, None)),
], ids=["an empty file sets neither", "a root", "a root without spaces, with a comment",
        "a literal-string root", "runtimes with a trailing comma", "one runtime, a comment",
        "an empty list is invalid", "a non-string runtime is invalid",
        "a relative root is read from / as the request parser does",
        "a quoted key goes to TOML", "an escape goes to TOML", "a multi-line array goes to TOML",
        "a multi-line string cannot fool the reader", "a longer key is another key",
        "an unknown key elsewhere does not hide runtimes",
        "a syntax error elsewhere does not hide a one-line runtimes",
        "a section goes to TOML, where the keys are not top-level"])
def test_read_keys(text: str, want: tuple[object, object]) -> None:
    assert read_keys(text.encode()) == want


def test_the_shipped_config_is_read_without_toml_and_agrees_with_it() -> None:
    data = SHIPPED.read_bytes()
    table = tomllib.loads(data.decode())
    assert read_keys(data) == (table["volume-mount-root"], tuple(table["runtimes"]))
    assert read_keys(data) == (DEFAULT_VOLUME_MOUNT_ROOT, DEFAULT_RUNTIMES)
    code = ("import sys; from gpuhook.runtime.early import read_keys; "
            f"read_keys(open({str(SHIPPED)!r}, 'rb').read()); "
            "print('tomllib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("text", [
    'runtimes = ["crun"]\nvolume-mount-root = "/gpus"\nmode = "spec"\n',
    'mode = "hook"\nruntimes = ["/usr/sbin/runc"]\n',
], ids=["root and runtimes", "runtimes only"])
def test_read_keys_agrees_with_the_full_parser(text: str, tmp_path: Path) -> None:
    config, problems = parse_config_lenient(text.encode(), str(tmp_path / "c.toml"))
    assert not problems
    root, runtimes = read_keys(text.encode())
    assert runtimes == config.runtimes
    assert (root or DEFAULT_VOLUME_MOUNT_ROOT) == config.volume_mount_root


def test_a_config_error_suggests_the_closest_key(tmp_path: Path) -> None:
    _, problems = parse_config_lenient(b'runtime = ["crun"]\nmode = "fast"\n', "c.toml")
    assert problems[0].startswith("config c.toml: unknown key 'runtime' (did you mean "
                                  "'runtimes'?)")
    assert "mode must be one of spec, hook" in problems[1]
