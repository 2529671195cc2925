"""Class 5: one line means one line. Text from the container (env values, ids, paths, the
container id) reaches stderr, runc's log and the decision log only escaped, so it can neither
forge a second line nor drive a terminal; and the id pattern matches the whole id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuhook.decide.request import _id_problem
from gpuhook.text import decimal, escape
from tests.security import entry as e

NASTY = "\n\r\x1b]0;pwned\x07\x1b[2J\x00\x7f\x85\u2028\u2029\u202e\ud800"


@pytest.mark.parametrize(("raw", "shown"), [
    ("plain text, kept", "plain text, kept"),
    ("two\nlines", "two\\x0alines"),
    ("\x1b[31mred", "\\x1b[31mred"),
    ("bell\x07", "bell\\x07"),
    ("next line\x85", "next line\\x85"),
    ("line\u2028separator", "line\\u2028separator"),
    ("\u202eright-to-left", "\\u202eright-to-left"),
    ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
    ("tab\there", "tab\\x09here"),
], ids=["printable text is unchanged", "a newline", "an ANSI escape", "a bell", "NEL (C1)",
        "a line separator", "a bidi override", "a lone surrogate", "a tab"])
def test_escape_makes_one_printable_line(raw: str, shown: str) -> None:
    assert escape(raw) == shown
    assert escape(raw).isprintable()


def test_escape_cuts_and_says_how_much() -> None:
    assert escape("x" * 10 + "\n", 4) == "xxxx...(+7 chars)"


@pytest.mark.parametrize(("text", "value"), [
    ("12", 12), ("\u00b2", None), ("\u0663", None), ("\uff11", None), ("", None),
    ("1" * 19, None), ("-1", None), (" 1", None),
], ids=["ASCII digits", "a superscript two", "an Arabic-Indic three", "a fullwidth one",
        "nothing", "more digits than any field has", "a sign", "a space"])
def test_decimal_reads_ascii_digits_only(text: str, value: int | None) -> None:
    assert decimal(text) == value


@pytest.mark.parametrize("device_id", ["0\n", "0\r", "GPU-x\n", "0:0\n", "0\u0660"],
                         ids=["index and newline", "index and CR", "uuid and newline",
                              "MIG index and newline", "a trailing Arabic-Indic zero"])
def test_an_id_must_match_as_a_whole(device_id: str) -> None:
    assert "malformed device id" in (_id_problem(device_id, "test") or "")


def test_a_mount_id_with_a_newline_is_refused_not_read_as_gpu_0(tmp_path: Path) -> None:
    config = e.write_config(tmp_path / "gpuhook.toml", tmp_path / "gpuhook.log")
    bundle = e.bundle_with(tmp_path, e.spec(ids=("0\n",)))
    run = e.run_process(e.dry_run_argv(bundle, config, as_json=True))
    e.assert_clean_exit(run, allowed=(2,))
    assert "malformed device id" in json.loads(run.stdout)["error"]


@pytest.mark.parametrize("which", ["hook", "shim", "dry-run"])
def test_control_characters_in_a_requirement_reach_stderr_and_the_log_escaped(
        tmp_path: Path, which: str) -> None:
    # The constraint's value is echoed in the error ("cuda>=99<ESC>... but the node has ...").
    log = tmp_path / "gpuhook.log"
    config = e.write_config(tmp_path / "gpuhook.toml", log)
    s = e.spec(env=[f"NVIDIA_REQUIRE_CUDA=cuda>=99{NASTY.replace(chr(0), '')}"], ids=("0:0",))
    s["process"]["env"] = [v.replace("\n", "").replace("\r", "").replace("\x85", "")
                           .replace("\u2028", "").replace("\u2029", "") if v.startswith(
                               "NVIDIA_REQUIRE") else v for v in s["process"]["env"]]
    bundle = e.bundle_with(tmp_path, s)
    argv = {"hook": e.hook_argv(config), "shim": e.shim_argv(bundle),
            "dry-run": e.dry_run_argv(bundle, config)}[which]
    run = e.run_process(argv, stdin=e.state_for(bundle),
                        env={**e.ENV, "GPUHOOK_CONFIG": str(config)})
    e.assert_clean_exit(run, allowed=(1,))
    line = e.assert_one_line(run.stderr)
    assert "\\x1b]0;pwned\\x07" in line
    if which != "dry-run":
        for raw in log.read_bytes().split(b"\n")[:-1]:
            assert all(b >= 0x20 and b < 0x7f for b in raw), raw


def test_the_shim_escapes_a_container_id_on_stderr_and_in_runcs_log(tmp_path: Path) -> None:
    config = e.write_config(tmp_path / "gpuhook.toml", tmp_path / "gpuhook.log")
    # argv is bytes: a lone surrogate cannot be passed, but \xff can (Python reads it as \udcff).
    cid = "ctr" + NASTY.replace("\x00", "").replace("\ud800", "\udcff")
    runc_log = tmp_path / "runc-log.json"
    argv = [str(e.SHIM), "--log", str(runc_log), "--log-format", "json", "create", "--bundle",
            str(tmp_path / "no-such-bundle"), cid]
    run = e.run_process(argv, env={**e.ENV, "GPUHOOK_CONFIG": str(config)})
    e.assert_clean_exit(run, allowed=(2,))
    line = e.assert_one_line(run.stderr)
    assert "ctr\\x0a\\x0d\\x1b]0;pwned" in line
    lines = runc_log.read_bytes().split(b"\n")
    assert len(lines) == 2 and lines[1] == b"", lines  # one line, newline-terminated
    assert json.loads(lines[0])["msg"].isprintable()


def test_hook_stderr_names_a_hostile_state_id_escaped(tmp_path: Path) -> None:
    config = e.write_config(tmp_path / "gpuhook.toml", tmp_path / "gpuhook.log")
    bundle = e.bundle_with(tmp_path, e.spec(ids=("99",)))  # no GPU 99: exit 1 naming the id
    run = e.run_process(e.hook_argv(config), stdin=e.state_for(bundle, cid="c\n\x1b[2Jforged"))
    e.assert_clean_exit(run, allowed=(1,))
    assert e.assert_one_line(run.stderr).startswith("gpuhook: c\\x0a\\x1b[2Jforged: ")


def test_dry_run_text_output_quotes_container_text_escaped(tmp_path: Path) -> None:
    # An ignored env value is named in the text output.
    config = e.write_config(tmp_path / "gpuhook.toml", tmp_path / "gpuhook.log")
    s = e.spec(env=["NVIDIA_VISIBLE_DEVICES=\x1b[2Jx\u2028y"], ids=("0:0",))
    run = e.run_process(e.dry_run_argv(e.bundle_with(tmp_path, s), config))
    e.assert_clean_exit(run, allowed=(0,))
    lines = run.stdout.decode().splitlines()
    assert all(line.isprintable() for line in lines), lines
    assert any("\\x1b[2Jx\\u2028y" in line for line in lines), lines
