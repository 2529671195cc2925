"""gpuhook-runtime's reading of runc's command line: every flag form runc 1.1 accepts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuhook.runtime.shim import Invocation, parse_args, runtime_log_line

CASES: list[tuple[str, list[str], Invocation]] = [
    ("containerd's create call",
     ["--root", "/run/containerd/runc/k8s.io", "--log", "/run/x/log.json", "--log-format",
      "json", "--systemd-cgroup", "create", "--bundle", "/run/b", "--pid-file", "/run/b/pid",
      "cid"],
     Invocation("create", {"root": "/run/containerd/runc/k8s.io", "log": "/run/x/log.json",
                           "log-format": "json", "systemd-cgroup": "true"}, "/run/b", "cid")),
    ("--bundle=X",
     ["create", "--bundle=/b", "cid"], Invocation("create", {}, "/b", "cid")),
    ("-b X", ["run", "-b", "/b", "cid"], Invocation("run", {}, "/b", "cid")),
    ("-b=X", ["run", "-b=/b", "cid"], Invocation("run", {}, "/b", "cid")),
    ("single-dash -bundle X", ["create", "-bundle", "/b", "cid"],
     Invocation("create", {}, "/b", "cid")),
    ("double-dash --b X", ["create", "--b", "/b", "cid"], Invocation("create", {}, "/b", "cid")),
    ("no bundle flag: the current directory", ["create", "cid"],
     Invocation("create", {}, None, "cid")),
    ("flags after the container id (urfave/cli reorders them)",
     ["create", "cid", "--bundle", "/b"], Invocation("create", {}, "/b", "cid")),
    ("the last --bundle wins", ["create", "-b", "/one", "--bundle=/two", "cid"],
     Invocation("create", {}, "/two", "cid")),
    ("value flags are not mistaken for the bundle or the id",
     ["create", "--console-socket", "/s.sock", "--pid-file", "-b", "--preserve-fds", "2",
      "--no-pivot", "cid"],
     Invocation("create", {}, None, "cid")),
    ("run's own boolean flags", ["run", "-d", "--keep", "--no-subreaper", "-b", "/b", "cid"],
     Invocation("run", {}, "/b", "cid")),
    ("`--` ends the flags", ["create", "--", "-b"], Invocation("create", {}, None, "-b")),
    ("single-dash global flags", ["-root", "/r", "-log", "/l", "-log-format", "text", "create",
                                  "x"],
     Invocation("create", {"root": "/r", "log": "/l", "log-format": "text"}, None, "x")),
    ("--flag=value global flags",
     ["--root=/r", "--log=/l", "--log-format=json", "--criu=/usr/sbin/criu",
      "--rootless=auto", "--debug", "create", "x"],
     Invocation("create", {"root": "/r", "log": "/l", "log-format": "json",
                           "criu": "/usr/sbin/criu", "rootless": "auto", "debug": "true"},
                None, "x")),
    ("--criu X and --rootless X take values", ["--criu", "/c", "--rootless", "true", "run",
                                               "x"],
     Invocation("run", {"criu": "/c", "rootless": "true"}, None, "x")),
    ("a boolean written --debug=false", ["--debug=false", "create", "x"],
     Invocation("create", {"debug": "false"}, None, "x")),
    ("a global value that looks like a command", ["--root", "create", "state", "x"],
     Invocation("state", {"root": "create"})),
    ("start is passed through", ["--root", "/r", "start", "cid"],
     Invocation("start", {"root": "/r"})),
    ("delete is passed through", ["delete", "--force", "cid"], Invocation("delete", {})),
    ("exec is passed through even with -b-like args", ["exec", "cid", "sh", "-b", "x"],
     Invocation("exec", {})),
    ("--version alone", ["--version"], Invocation(None, {"version": "true"})),
    ("nothing at all", [], Invocation(None, {})),
]


@pytest.mark.parametrize("argv, expected", [(a, e) for _, a, e in CASES],
                         ids=[name for name, _, _ in CASES])
def test_parse_args(argv: list[str], expected: Invocation) -> None:
    assert parse_args(argv) == expected


@pytest.mark.parametrize("command, edits", [
    ("create", True), ("run", True), ("start", False), ("state", False), ("kill", False),
    ("delete", False), ("exec", False), ("update", False), ("features", False)])
def test_only_create_and_run_edit_the_spec(command: str, edits: bool) -> None:
    assert parse_args([command, "x"]).edits_spec is edits


def test_log_format_defaults_to_text_like_runc() -> None:
    assert parse_args(["create", "x"]).log_format == "text"
    assert parse_args(["--log-format", "json", "create", "x"]).log_format == "json"


def test_json_log_line_is_what_containerd_parses() -> None:
    line = runtime_log_line('gpuhook-runtime: GPU "9" not found', "json", now=0)
    assert line == ('{"level": "error", "msg": "gpuhook-runtime: GPU \\"9\\" not found", '
                    '"time": "1970-01-01T00:00:00Z"}\n')


def test_text_log_line_is_logrus_text_format() -> None:
    line = runtime_log_line('bad "id"', "text", now=0)
    assert line == 'time="1970-01-01T00:00:00Z" level=error msg="bad \\"id\\""\n'


FLAGS = ["--root", "-root", "--log", "--log-format", "--systemd-cgroup", "--debug", "--criu",
         "--rootless", "-b", "--bundle", "-bundle", "--pid-file", "--console-socket", "--",
         "-d", "--keep", "create", "run", "state", "delete", "exec", "id", "/b", "=", "-",
         "--bundle=/x", "-b=", "--="]


@given(st.lists(st.sampled_from(FLAGS) | st.text(max_size=8), max_size=12))
@settings(max_examples=300, deadline=None)
def test_any_argv_parses_without_error(argv: list[str]) -> None:
    inv = parse_args(argv)
    assert inv.edits_spec == (inv.command in ("create", "run"))
    if not inv.edits_spec:
        assert inv.bundle is None


@given(st.lists(st.sampled_from(["--systemd-cgroup", "--debug", "--root=/r", "-log=/l"]),
                max_size=4),
       st.sampled_from(["-b", "--bundle", "-bundle", "--b"]), st.text(min_size=1, max_size=10))
@settings(max_examples=200, deadline=None)
def test_the_bundle_is_found_behind_any_global_flags(globals_: list[str], flag: str,
                                                     bundle: str) -> None:
    inv = parse_args([*globals_, "create", flag, bundle, "cid"])
    assert (inv.command, inv.bundle, inv.container_id) == ("create", bundle, "cid")
