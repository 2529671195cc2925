"""The three entry points as a container start meets them (`gpuhook hook prestart`,
`gpuhook-runtime create`, `gpuhook dry-run`), run on hostile input, and what every run must
show: an exit code of 0, 1 or 2, and on failure exactly one printable line on stderr.

Two ways to run them. `run_process` starts the installed executable (what runc and containerd
do). `run_forked` forks this test process and calls the same entry function in the child, with
fds 0-2 on pipes: the real code path and a real exit status (the shim really execs its runtime),
at a fraction of an interpreter start, so fuzzers can afford hundreds of examples.

No run can touch a real container: the hook's state always names DEAD_PID, a pid above the
kernel's PID_MAX_LIMIT, so an apply step that is reached fails on /proc/<pid>.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import HOSTS, INVENTORIES

BIN = Path(sys.executable).parent
GPUHOOK = BIN / "gpuhook"
SHIM = BIN / "gpuhook-runtime"
DEAD_PID = 4194305  # PID_MAX_LIMIT is 4194304 (include/linux/threads.h): no process has it
MIG8 = INVENTORIES / "8xa100-mig.yaml"
MIG8_HOST = HOSTS / "8xa100-mig"
ROOT = "/var/run/nvidia-container-devices"
TIMEOUT = 20.0  # generous: a quadratic path or a blocking open would take far longer
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


@dataclass(frozen=True)
class Run:
    code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False

    def describe(self) -> str:
        return (f"exit {self.code}{' (timed out)' if self.timed_out else ''}, "
                f"stderr {self.stderr[-2000:]!r}")


def write_config(path: Path, log: Path, **extra: Any) -> Path:
    keys: dict[str, Any] = {"inventory": str(MIG8), "host-root": str(MIG8_HOST),
                            "log-file": str(log), "runtimes": ["/bin/true"],
                            "inventory-cache": str(path.parent / "no-snapshot.json"),
                            # the shipped fake host has no driver user-space
                            "driver-files": False}
    keys.update(extra)
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items()))
    return path


def state_for(bundle: Path | str, cid: str = "ctr-1") -> bytes:
    return json.dumps({"ociVersion": "1.0.2", "id": cid, "pid": DEAD_PID,
                       "bundle": str(bundle)}).encode()


def spec(env: list[str] | None = None, ids: tuple[str, ...] = (), privileged: bool = False,
         mounts: list[dict[str, Any]] | None = None, userns: bool = False) -> dict[str, Any]:
    caps = ["CAP_CHOWN", "CAP_KILL"] + (["CAP_SYS_ADMIN"] if privileged else [])
    all_mounts: list[dict[str, Any]] = [
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
        *({"destination": f"{ROOT}/{i}", "type": "bind", "source": "/dev/null",
           "options": ["rbind", "ro"]} for i in ids),
        *(mounts or []),
    ]
    out: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {"args": ["sh"], "env": ["PATH=/bin", *(env or [])], "cwd": "/",
                    "capabilities": {"bounding": caps, "effective": caps}},
        "root": {"path": "rootfs"}, "mounts": all_mounts,
        "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}]},
    }
    if userns:
        out["linux"]["namespaces"].append({"type": "user"})
        out["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 0, "size": 65536}]
        out["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 0, "size": 65536}]
    return out


def bundle_with(root: Path, content: bytes | dict[str, Any], name: str = "bundle") -> Path:
    b = root / name
    b.mkdir(exist_ok=True)
    data = json.dumps(content).encode() if isinstance(content, dict) else content
    (b / "config.json").write_bytes(data)
    return b


# ---- running ------------------------------------------------------------------------------

def hook_argv(config: Path) -> list[str]:
    return [str(GPUHOOK), "hook", "prestart", "--config", str(config)]


def shim_argv(bundle: Path | str, cid: str = "ctr-1") -> list[str]:
    return [str(SHIM), "--root", "/run/never", "create", "--bundle", str(bundle), cid]


def dry_run_argv(bundle: Path | str, config: Path, as_json: bool = False) -> list[str]:
    return [str(GPUHOOK), "dry-run", str(bundle), "--config", str(config),
            *(["--json"] if as_json else [])]


def run_process(argv: list[str], stdin: bytes = b"", env: dict[str, str] | None = None,
                cwd: Path | None = None, timeout: float = TIMEOUT) -> Run:
    try:
        p = subprocess.run(argv, input=stdin, capture_output=True, env=env or ENV, cwd=cwd,
                           timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        return Run(-1, e.stdout or b"", e.stderr or b"", timed_out=True)
    return Run(p.returncode, p.stdout, p.stderr)


def hook_main(config: Path) -> Callable[[], int]:
    def main() -> int:
        from gpuhook.runtime.hook import prestart_main

        return prestart_main(["--config", str(config)])
    return main


def shim_main(bundle: Path | str, config: Path, cid: str = "ctr-1") -> Callable[[], int]:
    def main() -> int:
        from gpuhook.runtime.shim import main as shim

        os.environ.clear()
        os.environ.update(ENV, GPUHOOK_CONFIG=str(config))
        return shim(shim_argv(bundle, cid))
    return main


def dry_run_main(bundle: Path | str, config: Path, as_json: bool = False) -> Callable[[], int]:
    def main() -> int:
        from gpuhook.cli.main import cli

        cli.main(args=dry_run_argv(bundle, config, as_json)[1:], prog_name="gpuhook")
        return 0
    return main


def run_forked(main: Callable[[], int], stdin: bytes = b"", timeout: float = TIMEOUT) -> Run:
    """`main()` in a forked child whose fds 0, 1, 2 are pipes; its exit status as a process's
    (SystemExit honoured; any other exception printed as a traceback, exit 99)."""
    pipes = [os.pipe() for _ in range(3)]
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 99
        try:
            for target, (r, w) in enumerate(pipes):
                os.dup2(r if target == 0 else w, target)
            for r, w in pipes:
                os.close(r)
                os.close(w)
            sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)))
            sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
            sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True,
                                          errors="backslashreplace")
            try:
                code = main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 99
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code & 0xFF)
    os.close(pipes[0][0])  # the parent writes stdin and reads stdout and stderr
    os.close(pipes[1][1])
    os.close(pipes[2][1])
    stdin_w = pipes[0][1]
    with contextlib.suppress(OSError):  # EPIPE: the child exited without reading it all
        os.write(stdin_w, stdin)  # small (fuzzers' states): never more than a pipe holds
    os.close(stdin_w)
    out, err = _collect(pipes[1][0], pipes[2][0], time.monotonic() + timeout)
    timed_out = out is None
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return Run(code, out or b"", err or b"", timed_out)


def _collect(out_fd: int, err_fd: int, deadline: float) -> tuple[bytes | None, bytes | None]:
    bufs: dict[int, list[bytes]] = {out_fd: [], err_fd: []}
    open_fds = {out_fd, err_fd}
    try:
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, b"".join(bufs[err_fd])
            ready, _, _ = select.select(list(open_fds), [], [], left)
            for fd in ready:
                chunk = os.read(fd, 65536)
                if chunk:
                    bufs[fd].append(chunk)
                else:
                    open_fds.discard(fd)
    finally:
        os.close(out_fd)
        os.close(err_fd)
    return b"".join(bufs[out_fd]), b"".join(bufs[err_fd])


# ---- what every run must show --------------------------------------------------------------

def assert_clean_exit(run: Run, allowed: tuple[int, ...] = (0, 1, 2)) -> None:
    """Exit 0, 1 or 2; no traceback; on failure one line on stderr, every character of it
    printable (container text escaped)."""
    assert not run.timed_out, f"no answer within {TIMEOUT}s: {run.describe()}"
    assert run.code in allowed, run.describe()
    assert b"Traceback" not in run.stderr, run.describe()
    if run.code != 0:
        assert_one_line(run.stderr)


def assert_one_line(stderr: bytes) -> str:
    text = stderr.decode("utf-8", "strict")
    assert text.endswith("\n") and text.count("\n") == 1, f"not one line: {text!r}"
    line = text[:-1]
    assert line and line.isprintable(), f"unescaped characters in {line!r}"
    return line
