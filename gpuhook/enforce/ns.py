"""Run a function inside another process's mount namespace, in a forked child.

`setns(CLONE_NEWNS)` changes the calling process's whole view of the file system and fails in a
multithreaded process, so the work happens in a fork: the child enters the namespace, runs the
function, and sends back its JSON result or its error through a pipe. The parent never changes
namespace. Python 3.11 has no `os.setns`, hence ctypes.
"""

from __future__ import annotations

import ctypes
import errno
import os

from gpuhook import fastjson
from gpuhook.enforce import caps as capabilities  # here, not in the child: see _child
from gpuhook.errors import ApplyError
from gpuhook.record import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

CLONE_NEWNS = 0x00020000
MAX_REPLY = 1 << 20
# What the child needs for its work in the container's /dev, and nothing more: mknod, chown to
# the plan's owner, and writing into / replacing entries of directories it does not own.
CHILD_CAPS = ("mknod", "chown", "dac_override", "fowner")
# In a user-namespaced container the helper attaches nodes the hook staged (move_mount, umount:
# sys_admin) and creates entries as the container's root (setfsuid/setfsgid: setuid, setgid),
# so it needs no override of file permissions at all.
USERNS_CHILD_CAPS = ("sys_admin", "setuid", "setgid")


class NamespaceWorkError(ApplyError):
    """The work in the child failed; `errno` is the OSError's errno, when it was one."""

    def __init__(self, message: str, err: int | None = None) -> None:
        super().__init__(message)
        self.errno = err


def setns(fd: int, nstype: int) -> None:
    """setns(2); raises OSError(errno, strerror) like the os module does."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def run_in_mount_ns(pid: int, work: Callable[[], Any],
                    caps: tuple[str, ...] = CHILD_CAPS) -> Any:
    """Run `work()` in a child that has joined the mount namespace of `pid`; return its
    JSON-serialisable result. Raises NamespaceWorkError with the child's error text."""
    path = f"/proc/{pid}/ns/mnt"
    try:
        ns_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise NamespaceWorkError(f"cannot open {path}: {e.strerror} (did the container exit?)",
                                 e.errno) from None
    try:
        return _fork_and_run(ns_fd, work, caps)
    finally:
        os.close(ns_fd)


def run_forked(work: Callable[[], Any], caps: tuple[str, ...] = CHILD_CAPS) -> Any:
    """Run `work()` in a forked child without changing namespace, holding only `caps` (tests;
    the createContainer hook, which runc already runs in the container's namespaces)."""
    return _fork_and_run(None, work, caps)


def _fork_and_run(ns_fd: int | None, work: Callable[[], Any],
                  caps: tuple[str, ...] = CHILD_CAPS) -> Any:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the caller's stack
        code = 0
        try:
            os.close(r)
            reply = _child(ns_fd, work, caps)
            data = fastjson.dumps(reply).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(w, view):]
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    try:
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            if sum(map(len, chunks)) > MAX_REPLY:
                break
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    raw = b"".join(chunks)
    if not raw:
        raise NamespaceWorkError(f"namespace helper process died without a reply "
                                 f"(wait status {status})")
    try:
        answer: object = fastjson.loads(raw)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not ("ok" in answer or "error" in answer):
        raise NamespaceWorkError(f"namespace helper process sent a broken reply of {len(raw)} "
                                 f"bytes (wait status {status})")
    if "error" in answer:
        raise NamespaceWorkError(str(answer["error"]), answer.get("errno"))
    if status != 0:
        raise NamespaceWorkError(f"namespace helper process failed after its reply "
                                 f"(wait status {status})")
    return answer["ok"]


def _child(ns_fd: int | None, work: Callable[[], Any], caps: tuple[str, ...]
           ) -> dict[str, Any]:
    try:
        # No import from here on: after setns, a path on sys.path resolves in the container.
        capabilities.die_with_parent()  # never outlive the hook
        if ns_fd is not None:
            setns(ns_fd, CLONE_NEWNS)
        # Inside the container's file system, hold only what the work needs.
        capabilities.no_new_privs()
        capabilities.limit(*caps)
        return {"ok": work()}
    except OSError as e:
        text = e.strerror or errno.errorcode.get(e.errno or 0, "error")
        if e.filename is not None:
            text = f"{e.filename}: {text}"
        return {"error": text, "errno": e.errno}
    except ApplyError as e:
        return {"error": str(e)}
    except Exception as e:  # reported, not swallowed: the parent raises it as ApplyError
        return {"error": f"{type(e).__name__}: {e}"}
