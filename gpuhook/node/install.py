"""`gpuhook node install` / `uninstall`: what the DaemonSet's container does to its node.

install, one line per step:
  1. lock     HOST_DIR/.lock (flock): one instance per node; a second one fails naming the pid.
  2. bundle   a self-contained gpuhook under HOST_DIR (payload.py); `current` points at it.
  3. config   gpuhook's config at HOST_DIR/config.toml (the launchers' $GPUHOOK_CONFIG).
  4. engine   the engine's registration, the very code of `gpuhook install` (engines/), run in
              a child chrooted into the host root (hostroot.py), so the drop-in it writes, the
              `imports` entry and BinaryName are host paths: containerd gets
              /etc/containerd/conf.d/99-gpuhook.toml imported from its config.toml, CRI-O a
              crio.conf.d drop-in.
  5. restart  only when the engine's *effective* config changed (the parsed TOML of a file it
              reads differs; a second start, or a comment, changes nothing), by restart.py.
Then (`run`) it waits for SIGTERM / SIGINT (blocked from the start, so one that arrives during
the install is acted on once the install is complete) and undoes it: uninstall.

uninstall: the engine's `gpuhook uninstall` in the host root (the config put back byte for byte
from the backup install took, the drop-in removed), one restart if that changed the effective
config, then the bundle, `current` and the config removed. The lock file goes whenever the
instance that holds it ends (locked()).

A failure during install undoes the steps already done (nothing is left half-applied) and
raises NodeError naming the step.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gpuhook.node import hostroot, payload
from gpuhook.node import restart as restarts

if TYPE_CHECKING:
    from gpuhook.engines import Options

RUNTIMES = ("containerd", "crio")
WAIT_SIGNALS = (signal.SIGTERM, signal.SIGINT)

Echo = Callable[[str], None]


class NodeError(Exception):
    pass


@dataclass(frozen=True)
class NodeOptions:
    host_root: str
    runtime: str = "containerd"
    restart: str = "signal"
    name: str = "nvidia"
    socket: str | None = None  # host path; default per runtime (restarts.SOCKETS)
    config: bytes = b""  # gpuhook's config for the host
    dry_run: bool = False
    timeout: float = 60.0

    def here(self, host_path: str) -> str:
        """Where a host path is in this process's view (under --host-root)."""
        return os.path.join(self.host_root, host_path.lstrip("/"))

    @property
    def target(self) -> restarts.Target:
        return restarts.Target(self.runtime, self.host_root,
                              self.socket or restarts.SOCKETS[self.runtime], self.timeout)

    @property
    def runtime_binary(self) -> str:
        return f"{payload.HOST_DIR}/{payload.CURRENT}/bin/gpuhook-runtime"


def check(opts: NodeOptions) -> None:
    if opts.runtime not in RUNTIMES:
        raise NodeError(f"--runtime {opts.runtime!r}: one of {', '.join(RUNTIMES)}")
    if opts.restart not in restarts.MODES:
        raise NodeError(f"--restart {opts.restart!r}: one of {', '.join(restarts.MODES)}")
    if opts.runtime == "crio" and opts.restart == "signal":
        raise NodeError("--restart signal is for containerd; CRI-O: --restart systemd or none")
    if not os.path.isdir(opts.host_root):
        raise NodeError(f"--host-root {opts.host_root}: not a directory (mount the host's / "
                        "there)")


# ---- 1. lock ---------------------------------------------------------------------------------

@contextlib.contextmanager
def locked(opts: NodeOptions, echo: Echo) -> Iterator[None]:
    """Hold HOST_DIR/.lock for the block; the file is removed on every way out of it (done,
    failed, signalled), while still held, so no lock file outlives its instance (only a SIGKILL
    leaves one, which the next instance takes over). An instance refused here removes nothing."""
    parent = opts.here(payload.HOST_DIR)
    os.makedirs(parent, exist_ok=True)
    path = os.path.join(parent, payload.LOCK_NAME)
    fd = _acquire(path)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        echo(f"lock: {payload.HOST_DIR}/{payload.LOCK_NAME} held by pid {os.getpid()}")
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _acquire(path: str, tries: int = 10) -> int:
    """flock the file at `path`. The holder unlinks it on its way out, so a lock taken on an
    inode that is no longer `path` (opened just before that unlink) is dropped and taken again
    on the new file."""
    for _ in range(tries):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise NodeError(f"another gpuhook node install holds {payload.HOST_DIR}/"
                            f"{payload.LOCK_NAME} (pid {holder} in its pid namespace); one per "
                            "node") from None
        except BaseException:
            os.close(fd)
            raise
        held = os.fstat(fd)
        try:
            now = os.stat(path)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)
    raise NodeError(f"{payload.HOST_DIR}/{payload.LOCK_NAME}: replaced {tries} times while "
                    "being locked; another instance keeps starting")


# ---- 2. bundle, 3. config --------------------------------------------------------------------

def install_payload(opts: NodeOptions, echo: Echo) -> Callable[[], None] | None:
    """Write the bundle and point `current` at it; the undo of what this did, or None."""
    parent = opts.here(payload.HOST_DIR)
    b = payload.collect()
    where = f"{payload.HOST_DIR}/{b.id}"
    there = payload.is_complete(os.path.join(parent, b.id))
    try:
        before = os.readlink(os.path.join(parent, payload.CURRENT))
    except OSError:
        before = None
    if opts.dry_run:
        echo(f"bundle: {where} " + ("already there" if there else
             f"would be written ({len(b.files)} files, {b.size() >> 20} MiB)"))
        return None
    if not there:
        payload.write(b, parent)
        echo(f"bundle: wrote {where} ({len(b.files)} files, {b.size() >> 20} MiB)")
    else:
        echo(f"bundle: {where} already there")
    if payload.switch_current(parent, b.id):
        echo(f"bundle: {payload.HOST_DIR}/{payload.CURRENT} -> {b.id}")
    for old in payload.bundle_dirs(parent):
        # The bundle `current` pointed at until now stays for runtimes exec'd from it a moment
        # ago; older ones go.
        if old not in (b.id, before):
            shutil.rmtree(os.path.join(parent, old))
            echo(f"bundle: removed the older {payload.HOST_DIR}/{old}")

    def undo() -> None:
        if before is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(parent, payload.CURRENT))
        else:
            payload.switch_current(parent, before)
        if not there:
            shutil.rmtree(os.path.join(parent, b.id), ignore_errors=True)

    return undo


def install_config(opts: NodeOptions, echo: Echo) -> Callable[[], None] | None:
    from gpuhook.atomic import write_atomic

    host = f"{payload.HOST_DIR}/{payload.CONFIG_NAME}"
    path = opts.here(host)
    old = _read_or_none(path)
    if old == opts.config:
        echo(f"config: {host} unchanged")
        return None
    if opts.dry_run:
        echo(f"config: {host} would be written ({len(opts.config)} bytes)")
        return None
    write_atomic(path, opts.config)
    echo(f"config: wrote {host} ({len(opts.config)} bytes)")

    return _put_back(path, old)


# ---- 4. engine -------------------------------------------------------------------------------

def _parsed(data: bytes | None) -> Any:
    import tomllib

    if data is None:
        return None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return data  # compared as bytes


def effective(changes: list[Any]) -> bool:
    """Whether the engine would read different settings: a file it reads parses differently."""
    return any(c.changes and _parsed(c.old) != _parsed(c.new) for c in changes)


def engine_step(opts: NodeOptions, install: bool) -> dict[str, Any]:
    """Runs with the host's root as `/` (hostroot.run_in_root)."""
    from gpuhook import engines

    plan = engines.plan_install if install else engines.plan_uninstall
    changes, _ = plan(_engine_options(opts, install))
    out: dict[str, Any] = {"effective": effective(changes),
                           "changed": any(c.changes for c in changes),
                           "made_dirs": _missing_dirs(c.path for c in changes
                                                      if c.changes and c.new is not None)}
    if opts.dry_run:
        out["diff"] = engines.diff(changes)
        out["lines"] = []
    else:
        out["lines"] = engines.write(changes)
    return out


def _missing_dirs(paths: Iterable[str]) -> list[str]:
    """The directories writing `paths` will create, deepest first."""
    missing: set[str] = set()
    for path in paths:
        d = os.path.dirname(path)
        while d not in ("", "/") and not os.path.isdir(d):
            missing.add(d)
            d = os.path.dirname(d)
    return sorted(missing, key=lambda d: d.count("/"), reverse=True)


def run_engine(opts: NodeOptions, install: bool, echo: Echo,
               made_dirs: list[str] | None = None) -> bool:
    """The engine's registration (or its removal) on the host; whether to restart. The host
    directories the writes created are appended to `made_dirs`."""
    from gpuhook.engines import InstallError

    try:
        out = hostroot.run_in_root(opts.host_root, lambda: engine_step(opts, install))
    except (hostroot.HostRootError, InstallError, OSError) as e:
        raise NodeError(f"engine: {opts.runtime} in {opts.host_root}: {e}") from None
    if made_dirs is not None and not opts.dry_run:
        made_dirs.extend(out["made_dirs"])
    for line in out["lines"]:
        echo(f"engine: {line}")
    if opts.dry_run and out["diff"]:
        echo("engine: would change (host paths):\n" + out["diff"].rstrip("\n"))
    if not out["changed"]:
        echo(f"engine: {opts.runtime} already {'registered' if install else 'clean'}; "
             "nothing changed")
    elif not out["effective"]:
        echo(f"engine: {opts.runtime}'s effective config is the same")
    return bool(out["effective"])


# ---- 5. restart ------------------------------------------------------------------------------

def run_restart(opts: NodeOptions, needed: bool, echo: Echo) -> None:
    if not needed:
        echo(f"restart: not needed ({opts.runtime}'s effective config did not change)")
        return
    if opts.dry_run:
        echo(f"restart: would restart {opts.runtime} (--restart {opts.restart})")
        return
    try:
        echo("restart: " + restarts.restart(opts.restart, opts.target))
    except (restarts.RestartError, OSError, ValueError) as e:
        raise NodeError(f"restart: {e}") from None


# ---- install / uninstall / run ---------------------------------------------------------------

def install(opts: NodeOptions, echo: Echo) -> None:
    undo: list[Callable[[], None]] = []
    made: list[str] = []
    try:
        for step in (install_payload, install_config):
            u = step(opts, echo)
            if u is not None:
                undo.append(u)
        needed = run_engine(opts, True, echo, made)
        if needed and not opts.dry_run:
            undo.append(lambda: _undo_engine(opts, made))
        if made and not opts.dry_run:
            undo.append(_remember_dirs(opts, made))
        run_restart(opts, needed, echo)
    except BaseException as e:
        for u in reversed(undo):
            with contextlib.suppress(Exception):
                u()
        if undo:
            echo(f"install failed; undone what it had done ({e})")
        raise
    echo("installed" + (" (dry run: nothing written)" if opts.dry_run else ""))


def _undo_engine(opts: NodeOptions, made_dirs: list[str]) -> None:
    run_engine(opts, False, lambda _line: None)
    _remove_dirs(opts, made_dirs, lambda _line: None)


def _remove_dirs(opts: NodeOptions, made_dirs: list[str], echo: Echo) -> None:
    """rmdir what the install created (an engine drop-in dir), if nothing else is in it now."""
    for d in made_dirs:
        try:
            os.rmdir(opts.here(d))
            echo(f"remove: {d} (made by the install, empty now)")
        except OSError:
            pass  # not empty (someone else's files), or gone


def _state_path(opts: NodeOptions) -> str:
    return opts.here(f"{payload.HOST_DIR}/{payload.STATE_NAME}")


def _remembered_dirs(opts: NodeOptions) -> list[str]:
    import json

    try:
        with open(_state_path(opts), "rb") as f:
            state = json.loads(f.read(1 << 16))
    except (FileNotFoundError, ValueError):
        return []
    dirs = state.get("made_dirs", []) if isinstance(state, dict) else []
    return [d for d in dirs if isinstance(d, str) and d.startswith("/") and ".." not in d]


def _remember_dirs(opts: NodeOptions, made: list[str]) -> Callable[[], None]:
    """Keep, on the host, which directories the install created: a later undo (after a SIGKILL,
    by another pod) removes them too. Returns the undo of this."""
    import json

    from gpuhook.atomic import write_atomic

    path = _state_path(opts)
    old = _read_or_none(path)
    dirs = sorted(set(_remembered_dirs(opts)) | set(made), key=lambda d: (-d.count("/"), d))
    write_atomic(path, (json.dumps({"made_dirs": dirs}, indent=1) + "\n").encode())

    return _put_back(path, old)


def _put_back(path: str, old: bytes | None) -> Callable[[], None]:
    """The undo of writing `path` whose content was `old` (None: it did not exist)."""
    from gpuhook.atomic import write_atomic

    def undo() -> None:
        if old is None:
            os.unlink(path)
        else:
            write_atomic(path, old)

    return undo


def _read_or_none(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def uninstall(opts: NodeOptions, echo: Echo) -> None:
    needed = run_engine(opts, False, echo)
    if not opts.dry_run:
        _remove_dirs(opts, _remembered_dirs(opts), echo)
    run_restart(opts, needed, echo)
    parent = opts.here(payload.HOST_DIR)
    gone = [*payload.bundle_dirs(parent), payload.CURRENT, payload.CONFIG_NAME,
            payload.STATE_NAME]
    for name in gone:
        path = os.path.join(parent, name)
        if not os.path.lexists(path):
            continue
        if opts.dry_run:
            echo(f"remove: would remove {payload.HOST_DIR}/{name}")
        elif os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
            echo(f"remove: {payload.HOST_DIR}/{name}")
        else:
            os.unlink(path)
            echo(f"remove: {payload.HOST_DIR}/{name}")
    echo("uninstalled" + (" (dry run: nothing written)" if opts.dry_run else ""))


def run(opts: NodeOptions, echo: Echo, wait: bool = True) -> None:
    """install; then, with `wait`, block until SIGTERM/SIGINT and uninstall."""
    check(opts)
    if opts.dry_run:  # no lock either: a dry run writes nothing
        install(opts, echo)
        return
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, WAIT_SIGNALS)
    try:
        with locked(opts, echo):
            install(opts, echo)
            if not wait:
                return
            echo("waiting for SIGTERM to undo the install")
            got = signal.sigwait(WAIT_SIGNALS)
            echo(f"{signal.Signals(got).name}: undoing the install")
            uninstall(opts, echo)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def remove(opts: NodeOptions, echo: Echo) -> None:
    check(opts)
    if opts.dry_run:
        uninstall(opts, echo)
        return
    with locked(opts, echo):
        uninstall(opts, echo)


# ---- status (the readiness probe) ------------------------------------------------------------

def status_problems(opts: NodeOptions) -> list[str]:
    """What keeps the node from running GPU pods through gpuhook; empty when ready: the
    bundle `current` names is complete and its launcher is there, and the engine's config, read
    in the host root, registers the runtime with that launcher."""
    problems = []
    parent = opts.here(payload.HOST_DIR)
    try:
        current = os.readlink(os.path.join(parent, payload.CURRENT))
    except OSError:
        return [f"{payload.HOST_DIR}/{payload.CURRENT}: missing (not installed)"]
    if not payload.is_complete(os.path.join(parent, current)):
        problems.append(f"{payload.HOST_DIR}/{current}: incomplete bundle")
    if not os.access(opts.here(opts.runtime_binary), os.X_OK):
        problems.append(f"{opts.runtime_binary}: not executable")
    try:
        registered = hostroot.run_in_root(opts.host_root, lambda: _registered_binary(opts))
    except (hostroot.HostRootError, OSError) as e:
        return [*problems, f"engine: {e}"]
    if registered != opts.runtime_binary:
        problems.append(f"engine: runtime {opts.name!r} runs {registered or 'nothing'}, not "
                        f"{opts.runtime_binary}")
    return problems


def _registered_binary(opts: NodeOptions) -> str | None:
    """What a fresh install would not change: the engine's plan for this install is empty."""
    from gpuhook import engines

    changes, _ = engines.plan_install(_engine_options(opts, True))
    return None if any(c.changes for c in changes) else opts.runtime_binary


def _engine_options(opts: NodeOptions, install: bool) -> Options:
    """`gpuhook install`'s options for this node: a containerd drop-in, the bundle's runtime."""
    from gpuhook import engines

    return engines.Options(runtime=opts.runtime, name=opts.name,
                           drop_in=opts.runtime == "containerd",
                           runtime_binary=opts.runtime_binary if install else "")

