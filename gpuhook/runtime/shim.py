"""gpuhook-runtime: an OCI runtime (containerd's `BinaryName`) that edits the bundle's
config.json on `create` / `run` and then becomes the real runtime (runc, crun) with os.execve.

Every other command, and every flag, goes through unchanged. A container that asks for no GPU is
passed through with its spec untouched (not even rewritten). This module imports no click and
nothing heavy on the passthrough path: it runs for every runc call on a node.
"""

from __future__ import annotations

import os
import sys
import time

# No `typing`, `json`, `dataclasses` or `contextlib` at import: this module runs for every runc
# command containerd issues (create, start, state, kill, delete, ...). mypy sees the names.
# Nor `signal`: its enum classes cost ~4 ms (enum, functools, collections); `_signal`, the C
# module it wraps, has the same functions and constants as plain ints.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from typing import Any

    from gpuhook.config import Config
else:
    import _signal

PROG = "gpuhook-runtime"
# Set in the real runtime's environment. Seeing it on entry means the "real" runtime was us.
MARKER = "GPUHOOK_RUNTIME_SHIM"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EDIT_COMMANDS = ("create", "run")

# runc 1.1's flags (urfave/cli v1 on Go's flag package: `-name` and `--name`, `--name=value`).
GLOBAL_VALUE_FLAGS = frozenset({"root", "log", "log-format", "criu", "rootless"})
COMMAND_VALUE_FLAGS = frozenset({"bundle", "b", "console-socket", "pid-file", "preserve-fds",
                                 "pidfd-socket"})


class ShimError(Exception):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Invocation:
    """What the runtime was asked to do, as far as the shim cares."""

    __slots__ = ("bundle", "command", "container_id", "globals")

    def __init__(self, command: str | None, globals_: dict[str, str] | None = None,
                 bundle: str | None = None, container_id: str | None = None) -> None:
        self.command = command
        self.globals = globals_ or {}  # flag name -> value ("true": a boolean flag)
        self.bundle = bundle  # as given, None: the current directory
        self.container_id = container_id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Invocation) and all(
            getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # compared in tests, never a dict key

    def __repr__(self) -> str:
        return "Invocation(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__) + ")"

    @property
    def log_path(self) -> str | None:
        return self.globals.get("log") or None

    @property
    def log_format(self) -> str:
        return self.globals.get("log-format") or "text"

    @property
    def edits_spec(self) -> bool:
        return self.command in EDIT_COMMANDS


def _flag(token: str) -> tuple[str, str | None] | None:
    """`--name=value` / `-name value` -> (name, inline value); None for a non-flag."""
    if len(token) < 2 or not token.startswith("-") or token == "--":
        return None
    name = token[2:] if token.startswith("--") else token[1:]
    if not name or name.startswith("-"):
        return None
    key, sep, value = name.partition("=")
    return key, (value if sep else None)


def parse_args(args: list[str]) -> Invocation:
    """Parse runc's argv (without argv[0]). Global flags come before the command; command flags
    may come before or after the container id (urfave/cli v1 reorders them); `--` ends flags."""
    globals_: dict[str, str] = {}
    i = 0
    command: str | None = None
    while i < len(args):
        tok = args[i]
        if tok == "--":
            command = args[i + 1] if i + 1 < len(args) else None
            i += 2
            break
        parsed = _flag(tok)
        if parsed is None:
            command = tok
            i += 1
            break
        name, value = parsed
        if value is None and name in GLOBAL_VALUE_FLAGS:
            value = args[i + 1] if i + 1 < len(args) else ""
            i += 1
        globals_[name] = "true" if value is None else value
        i += 1
    if command not in EDIT_COMMANDS:
        return Invocation(command, globals_)
    bundle: str | None = None
    positional: list[str] = []
    rest = args[i:]
    j = 0
    while j < len(rest):
        tok = rest[j]
        if tok == "--":
            positional.extend(rest[j + 1:])
            break
        parsed = _flag(tok)
        if parsed is None:
            positional.append(tok)
            j += 1
            continue
        name, value = parsed
        if value is None and name in COMMAND_VALUE_FLAGS:
            value = rest[j + 1] if j + 1 < len(rest) else ""
            j += 1
        if name in ("bundle", "b"):
            bundle = value  # the last one wins, as in Go's flag package
        j += 1
    return Invocation(command, globals_, bundle, positional[0] if positional else None)


# ---- finding the real runtime ----------------------------------------------------------------

def self_paths(argv0: str, path_env: str) -> set[str]:
    """Real paths this very program may have: argv[0] (what the kernel ran), the file argv[0]
    names on PATH when it has no slash, and the gpuhook-runtime installed next to this
    interpreter (the console script)."""
    found = {os.path.realpath(argv0)} if os.sep in argv0 else set()
    installed = os.path.join(os.path.dirname(sys.executable), PROG)
    if os.path.isfile(installed):
        found.add(os.path.realpath(installed))
    if os.sep not in argv0:
        for d in absolute_path_dirs(path_env):
            cand = os.path.join(d, argv0)
            if os.path.isfile(cand):
                found.add(os.path.realpath(cand))
    return found


def absolute_path_dirs(path_env: str) -> list[str]:
    """The absolute entries of a PATH value. Empty and relative entries are skipped, as Go's
    exec.LookPath does since Go 1.19: they name the current directory, which is the bundle or
    wherever containerd happens to run us, never a place to take a runtime from."""
    return [d for d in path_env.split(os.pathsep) if d.startswith("/")]


def find_runtime(names: tuple[str, ...], path_env: str, exclude: set[str]) -> str:
    """The first executable of `names` (absolute paths, or bare names looked up on the absolute
    PATH entries) that is not this program. A relative path is never run."""
    tried: list[str] = []
    for name in names:
        if os.sep in name and not name.startswith("/"):
            tried.append(f"{name} (a relative path: refused)")
            continue
        cands = [name] if os.sep in name else [os.path.join(d, name)
                                               for d in absolute_path_dirs(path_env)]
        seen = False
        for cand in cands:
            if not (os.path.isfile(cand) and os.access(cand, os.X_OK)):
                continue
            seen = True
            if os.path.realpath(cand) in exclude:
                tried.append(f"{cand} (is {PROG} itself)")
                continue
            return cand
        if not seen:
            tried.append(f"{name} (not found)")
    raise ShimError(f"no real OCI runtime found: tried {', '.join(tried)} with "
                    f"PATH={path_env}; set `runtimes` in the gpuhook config", 127)


def exec_runtime(runtime: str, argv: list[str]) -> None:
    env = dict(os.environ)
    env[MARKER] = "1"
    # Python ignores SIGPIPE and SIGXFSZ; an ignored disposition survives exec. Give the real
    # runtime what its caller gave us.
    for sig in (_signal.SIGPIPE, _signal.SIGXFSZ):
        _signal.signal(sig, _signal.SIG_DFL)
    for stream in (sys.stdout, sys.stderr):
        # try/except, not contextlib.suppress: no contextlib import on this path.
        try:  # noqa: SIM105
            stream.flush()
        except (OSError, ValueError):
            pass  # a read-only or closed stdio: nothing of ours is lost (see report)
    try:
        os.execve(runtime, [runtime, *argv[1:]], env)
    except UnicodeEncodeError:
        # Only a caller that is not a real exec can hand us such an argument (the kernel's argv
        # decodes to encodable text): refuse it in one line rather than a traceback.
        raise ShimError("an argument cannot be encoded for the runtime's command line "
                        "(a lone surrogate?)", 2) from None


# ---- the bundle ------------------------------------------------------------------------------

def read_spec(bundle: str) -> tuple[str, bytes]:
    """<bundle>/config.json's path and bytes (at most the spec limit + 1)."""
    from gpuhook.runtime.bundle import read_limited
    from gpuhook.runtime.fastpath import MAX_SPEC_BYTES

    path = os.path.join(bundle, "config.json")
    return path, read_limited(path, MAX_SPEC_BYTES, "spec")


def might_request(raw: bytes, roots: tuple[str, ...]) -> bool:
    from gpuhook.runtime.fastpath import loads
    from gpuhook.runtime.fastpath import might_request as spec_might_request

    try:
        return spec_might_request(loads(raw), roots)
    except ValueError:
        return True  # the validating parser names the problem


def prepare_bundle(path: str, raw: bytes, config: Config, record: dict[str, Any],
                   problems: list[str] | None = None, roots: tuple[str, ...] = ()) -> str:
    """Edit the bundle's config.json (`path`, whose bytes are `raw`) for the container's plan.
    Returns what happened: "untouched" (empty plan, or already edited) or "edited".
    `problems`: why the config did not load (`config` is then the lenient one): the spec is
    never edited, and a request gpuhook would act on is refused (broken_config.py)."""
    from gpuhook import fastjson
    from gpuhook.decide.spec import decode_json, spec_view
    from gpuhook.runtime import spec_edit
    from gpuhook.runtime.decision_log import plan_record
    from gpuhook.runtime.fastpath import MAX_SPEC_BYTES
    from gpuhook.runtime.pipeline import plan_for_spec
    from gpuhook.runtime.pod import pod_identity

    if len(raw) > MAX_SPEC_BYTES:
        from gpuhook.errors import InputError

        raise InputError(f"spec {path}: larger than {MAX_SPEC_BYTES} bytes")
    spec = decode_json(raw, path)
    view = spec_view(spec, path)  # checks that it is an object, among the rest
    assert isinstance(spec, dict)
    record.update(pod_identity(spec.get("annotations")))
    if problems:
        from gpuhook.runtime import broken_config

        decision = broken_config.judge(view, config, problems, roots)
        record.update(decision="untouched-broken-config", config_errors=problems[:8],
                      ignored=[vars(i) for i in decision.ignored])
        return "untouched"
    plan = plan_for_spec(view, config)
    record.update(plan_record(plan, view.env), mode=config.mode)
    if plan.empty and not plan.env:
        return "untouched"

    if config.mode == "hook":
        edited = spec_edit.apply_hook(spec, plan, gpuhook_executable(),
                                      hook_args(config.source))
    else:
        driver = None
        if plan.driver_files:
            driver = driver_edit(plan, spec, os.path.dirname(os.path.abspath(path)), config)
        edited = spec_edit.apply_plan(spec, plan, driver)
    record["decision"] = "applied"
    if edited == spec:
        return "untouched"  # idempotent: already carries the plan; no rewrite
    try:
        data = fastjson.dumps(edited, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        from gpuhook.errors import InputError

        raise InputError(f"spec {path}: a number out of JSON's range (1e400?) cannot be "
                         "written back") from None
    from gpuhook.atomic import write_atomic

    try:
        encoded = data.encode()
    except UnicodeEncodeError:
        # A lone surrogate (`"\ud800"` in the JSON) has no UTF-8 form: write it back escaped,
        # as it came in, which Go's decoder in runc reads exactly as before.
        encoded = fastjson.dumps(edited, separators=(",", ":"), allow_nan=False).encode()
    write_atomic(path, encoded)
    return "edited"


def driver_edit(plan: Any, spec: dict[str, Any], bundle: str, config: Config) -> Any:
    """Spec mode's DriverEdit: the rootfs's library dir (decided from the rootfs runc is about to
    use, no link in it followed) and the createContainer hook's command line."""
    from gpuhook.enforce.libdir import library_dir
    from gpuhook.errors import InputError
    from gpuhook.runtime.create_container import hook_args as create_container_args
    from gpuhook.runtime.spec_edit import DriverEdit

    root = spec.get("root")
    rel = root.get("path") if isinstance(root, dict) else None
    if not isinstance(rel, str) or not rel:
        raise InputError(f"spec {bundle}/config.json: root.path is missing; driver files need "
                         "the rootfs")
    rootfs = rel if os.path.isabs(rel) else os.path.join(bundle, rel)
    try:
        fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise InputError(f"rootfs {rootfs}: {e.strerror}") from None
    try:
        libdir = library_dir(fd)
    finally:
        os.close(fd)
    return DriverEdit(libdir, gpuhook_executable(),
                      create_container_args(plan, _named_config(config.source)))


def _named_config(config_source: str) -> str | None:
    """The config a hook must be told about on its command line (it runs with a minimal
    environment, so one found through $GPUHOOK_CONFIG would be lost); None for the system one."""
    from gpuhook.config import SYSTEM_CONFIG

    if os.path.isfile(config_source) and os.path.abspath(config_source) != SYSTEM_CONFIG:
        return os.path.abspath(config_source)
    return None


def hook_args(config_source: str) -> tuple[str, ...]:
    from gpuhook.runtime.spec_edit import HOOK_ARGS

    named = _named_config(config_source)
    return HOOK_ARGS if named is None else (*HOOK_ARGS, "--config", named)


def gpuhook_executable(argv0: str | None = None) -> str:
    """`gpuhook` next to this program (same bin dir), else next to the interpreter, else PATH."""
    me = argv0 or sys.argv[0]
    # A bare argv[0] (found on PATH by our caller) says nothing about where we are: its
    # abspath would be the current directory, which is never a place to take a program from.
    dirs = [os.path.dirname(os.path.abspath(me))] if os.sep in me else []
    dirs.append(os.path.dirname(sys.executable))
    dirs += absolute_path_dirs(os.environ.get("PATH", DEFAULT_PATH))
    for d in dirs:
        cand = os.path.join(d, "gpuhook")
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise ShimError(f"hook mode: no gpuhook executable next to {argv0 or sys.argv[0]}, "
                    f"{sys.executable} or on PATH")


# ---- reporting -------------------------------------------------------------------------------

def runtime_log_line(message: str, log_format: str, now: float | None = None,
                     level: str = "error") -> str:
    """One line as runc's logrus writes it (containerd reads the last error from it)."""
    from gpuhook import fastjson

    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))
    if log_format == "json":
        return fastjson.dumps({"level": level, "msg": message, "time": stamp}) + "\n"
    return f"time={fastjson.dumps(stamp)} level={level} msg={fastjson.dumps(message)}\n"


def write_runtime_log(message: str, inv: Invocation, level: str = "error") -> bool:
    """Append to runc's --log, where containerd looks for the reason; False if not written.
    `message` is escaped (one_line)."""
    message = one_line(message)
    if not inv.log_path:
        return False
    line = runtime_log_line(f"{PROG}: {message}", inv.log_format, level=level)
    try:
        fd = os.open(inv.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:
        return False
    return True


def report(message: str, inv: Invocation) -> None:
    """The refusal: --log first (containerd reads it even when stdio is /dev/null), then
    stderr, whose failure changes nothing (runtime/stderr.py)."""
    from gpuhook.runtime.stderr import write_stderr

    write_runtime_log(message, inv)
    write_stderr(f"{PROG}: {one_line(message)}")


def one_line(message: str) -> str:
    """Container text (ids, env values, paths) is in messages: one line, printable, bounded."""
    from gpuhook.limits import MAX_MESSAGE_CHARS
    from gpuhook.text import escape

    return escape(message, MAX_MESSAGE_CHARS)


def warn(message: str, inv: Invocation) -> None:
    """gpuhook's own warning: the runtime's --log only. Never stderr: for `create` that is the
    container's stdout/stderr (the workload's log)."""
    write_runtime_log(message, inv, level="warning")


def main(argv: list[str]) -> int:
    inv = parse_args(argv[1:])
    try:
        return _run(argv, inv)
    except ShimError as e:
        report(str(e), inv)
        return e.exit_code


def _run(argv: list[str], inv: Invocation) -> int:
    from gpuhook.runtime.early import early_config

    if os.environ.get(MARKER):
        raise ShimError(f"called by itself ({MARKER} is set): the real runtime named by "
                        "`runtimes` in the gpuhook config is gpuhook-runtime; name runc or crun",
                        126)
    path_env = os.environ.get("PATH", DEFAULT_PATH)
    # The same runtimes for every command, read without loading the config: a broken config
    # neither stops `state` / `kill` / `delete` nor sends them to another runtime than `create`.
    early = early_config()
    runtime = find_runtime(early.runtimes, path_env, self_paths(argv[0], path_env))
    if not inv.edits_spec:
        exec_runtime(runtime, argv)
        return 0  # not reached
    from gpuhook.errors import GpuhookError

    record: dict[str, Any] = {"event": "create", "id": inv.container_id or "?"}
    log_file: str | None = None
    try:
        bundle = os.path.abspath(inv.bundle or ".")
        record["bundle"] = bundle
        path, raw = read_spec(bundle)
        if might_request(raw, early.roots):
            # No site (gpuhook.entry): the launchers put gpuhook's dependencies on sys.path.
            from gpuhook.config import load_config_lenient

            config, problems = load_config_lenient()
            log_file = config.log_file
            prepare_bundle(path, raw, config, record, problems, early.roots)
            if problems:
                from gpuhook.runtime.broken_config import warning

                warn(f"{inv.container_id or '?'}: {warning(problems)}", inv)
    except (GpuhookError, OSError, ShimError) as e:
        record.update(decision="refused", error=str(e))
        if log_file is None:
            from gpuhook.config import load_config_lenient

            log_file = load_config_lenient()[0].log_file
        if isinstance(e, ShimError):
            raise
        code = e.exit_code if isinstance(e, GpuhookError) else 1
        raise ShimError(f"{inv.command} {inv.container_id or '?'}: {e}", code) from None
    finally:
        if log_file is not None and "decision" in record:
            from gpuhook.runtime.decision_log import log_decision

            failed = log_decision(log_file, record)
            if failed:
                warn(failed, inv)
    exec_runtime(runtime, argv)
    return 0  # not reached
