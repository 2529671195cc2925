"""Run a function with the host's root as `/`: a forked child chroots into the host root
(mounted in the installer's container) and does the engine's file work there, so every path it
reads, writes or follows (an absolute symlink in /etc included) is a host path, and what it writes
into the engine's config (`imports`, BinaryName) is what the host's engine will read. The engine
code is the same as `gpuhook install`'s; only its `/` differs. The child's answer comes back as
JSON on a pipe; an exception in it comes back as a message."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

MAX_REPLY = 4 << 20


class HostRootError(Exception):
    pass


def preload() -> None:
    """Import, before the chroot, what the engine code imports lazily (the host root has no
    Python, or another one)."""
    import difflib  # noqa: F401
    import glob  # noqa: F401
    import tempfile  # noqa: F401
    import tomllib  # noqa: F401

    import tomlkit
    import tomlkit.exceptions  # noqa: F401

    import gpuhook.engines  # noqa: F401


def run_in_root(root: str, fn: Callable[[], Any]) -> Any:
    """fn()'s JSON-serialisable result, computed with `root` as `/` (in this process if `root`
    is already `/`)."""
    if os.path.realpath(root) == "/":
        return fn()
    preload()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(r)
            os.chroot(root)
            os.chdir("/")
            reply = {"ok": fn()}
        except BaseException as e:  # report everything, including SystemExit from a bug
            reply = {"error": str(e) if isinstance(e, Exception) and str(e)
                     else type(e).__name__}
            code = 1
        try:
            data = json.dumps(reply).encode()
            while data:
                data = data[os.write(w, data):]
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    size = 0
    try:
        while chunk := os.read(r, 1 << 16):
            size += len(chunk)
            if size > MAX_REPLY:
                raise HostRootError(f"the chroot child's reply is over {MAX_REPLY} bytes")
            chunks.append(chunk)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        raise HostRootError(f"the chroot child into {root} died "
                            f"(wait status {status:#x}) without an answer") from None
    if "error" in reply:
        raise HostRootError(str(reply["error"]))
    return reply["ok"]
