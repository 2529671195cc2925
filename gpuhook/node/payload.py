"""A self-contained gpuhook for a node's host, built from the running interpreter: the
interpreter, its standard library, the shared libraries they load (the dynamic loader and glibc
included), gpuhook and its Python dependencies, and two sh launchers. The host needs /bin/sh and
nothing else: no Python (a Kubernetes node often has none, or one older than 3.11) and no glibc
as new as the image's, since the launchers start the bundled interpreter through the bundled
loader (`ld.so --inhibit-cache --library-path <bundle>/lib`).

Layout on the host (HOST_DIR is the DaemonSet's one hostPath for it):

    /usr/local/gpuhook/
      current -> <id>               replaced atomically (a new symlink renamed over it)
      <id>/bin/gpuhook              the launchers: what containerd and the shim exec
      <id>/bin/gpuhook-runtime
      <id>/bin/python3              the interpreter
      <id>/lib/                     ld.so, libc, libm, libz, libexpat, libffi, libyaml, libcap…
      <id>/lib/python3.11/          the standard library (sys.prefix is <id>)
      <id>/site/                    gpuhook, click, yaml, tomlkit, prctl, pynvml
      config.toml                   gpuhook's config ($GPUHOOK_CONFIG of both launchers)
      state.json                    host directories the install created (for the undo)
      .lock                         one `gpuhook node install` per node

<id> is a digest of every file's bundle path, mode and content, so a bundle that is already
there is recognised without copying anything, and the engine's config names
`current/bin/gpuhook-runtime`: a new gpuhook changes no engine config and needs no restart.
"""

from __future__ import annotations

import compileall
import hashlib
import importlib.util
import os
import shutil
import stat
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass

from gpuhook.node import elf

HOST_DIR = "/usr/local/gpuhook"
CURRENT = "current"
CONFIG_NAME = "config.toml"
LOCK_NAME = ".lock"
STATE_NAME = "state.json"  # what the undo needs to know beyond the engine's own backups
COMPLETE = ".complete"  # written last into a bundle dir: a dir without it is a torn copy
ID_PREFIX = "gpuhook-"
LAUNCHER_FORMAT = "1"  # part of the digest: a change to launcher() makes a new <id>
# gpuhook and what it imports at run time (pyproject's dependencies; pynvml is nvidia-ml-py's
# module, vendored by the .deb; _yaml and _prctl are the C halves of yaml and prctl).
MODULES = ("gpuhook", "click", "yaml", "_yaml", "tomlkit", "prctl", "_prctl", "pynvml")
OPTIONAL = frozenset({"_yaml"})  # PyYAML falls back to pure Python without it
# Parts of the standard library gpuhook never imports: tests, GUI, build and packaging tools.
STDLIB_SKIP = frozenset({"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
                         "pydoc_data", "distutils", "venv", "site-packages", "dist-packages",
                         "config-3.11-x86_64-linux-gnu", "EXTERNALLY-MANAGED"})
# Extension modules gpuhook never imports whose libraries would double the bundle (sqlite,
# readline/ncurses, Berkeley DB, NIS/Kerberos).
DYNLOAD_SKIP = ("_sqlite3", "readline", "_curses", "_curses_panel", "_dbm", "_gdbm", "nis",
                "_crypt", "_tkinter")
MAX_FILES = 20000


class BundleError(Exception):
    pass


@dataclass(frozen=True)
class Entry:
    """One file of the bundle: copied from `source`, or written from `content`."""

    path: str  # relative to the bundle's <id> directory
    mode: int
    source: str | None = None
    content: bytes | None = None

    def digest(self) -> str:
        h = hashlib.sha256()
        if self.content is not None:
            h.update(self.content)
        else:
            assert self.source is not None
            with open(self.source, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    id: str
    files: tuple[Entry, ...]  # launchers last

    def size(self) -> int:
        return sum(len(e.content) if e.content is not None else os.path.getsize(str(e.source))
                   for e in self.files)


def launcher(bundle_dir: str, config: str, loader: str, entry: str, prog: str) -> bytes:
    """The sh launcher: the bundled interpreter through the bundled loader, isolated (-I: no
    PYTHON* variables, no user site; -S: no site module, so no host or image site-packages;
    -B: the bundle is not written to), the bundle's site dir first, argv[0] the launcher itself
    (the shim's hook mode finds `gpuhook` next to it)."""
    lib = f"{bundle_dir}/lib"
    code = (f"import sys; sys.path[:0] = [{bundle_dir + '/site'!r}]; "
            f"sys.argv[0] = {bundle_dir + '/bin/' + prog!r}; "
            f"from gpuhook.entry import {entry}; sys.exit({entry}())")
    return (
        "#!/bin/sh\n"
        f"# {prog}, installed by `gpuhook node install`; removed by `gpuhook node uninstall`.\n"
        f'GPUHOOK_CONFIG="${{GPUHOOK_CONFIG:-{config}}}"\n'
        "export GPUHOOK_CONFIG\n"
        f"exec {lib}/{os.path.basename(loader)} --inhibit-cache --library-path {lib} "
        f"{bundle_dir}/bin/python3 -I -S -B -c {_sh_quote(code)} \"$@\"\n"
    ).encode()


def _sh_quote(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


def _walk(root: str, rel: str, skip: frozenset[str] = frozenset()) -> Iterator[tuple[str, str]]:
    """(source, bundle path) of every regular file under root, without __pycache__ (compiled
    again into the bundle, see write()) and without the top-level names in `skip`."""
    for dirpath, dirnames, filenames in os.walk(root):
        top = dirpath == root
        dirnames[:] = sorted(d for d in dirnames
                             if d != "__pycache__" and not (top and d in skip))
        for name in sorted(filenames):
            src = os.path.join(dirpath, name)
            if (top and name in skip) or not os.path.isfile(src) or name.endswith(".pyc"):
                continue
            yield src, os.path.join(rel, os.path.relpath(src, root))


def _module_files(name: str) -> list[tuple[str, str]]:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        if name in OPTIONAL:
            return []
        raise BundleError(f"module {name} not found on sys.path {sys.path}; gpuhook's "
                          "dependencies (pyproject.toml) must be importable here")
    if spec.submodule_search_locations:
        return list(_walk(next(iter(spec.submodule_search_locations)), f"site/{name}"))
    return [(spec.origin, f"site/{os.path.basename(spec.origin)}")]


def _mode(path: str) -> int:
    return 0o755 if os.stat(path).st_mode & stat.S_IXUSR else 0o644


def collect(host_dir: str = HOST_DIR) -> Bundle:
    """The bundle this interpreter makes; launchers name `host_dir`/<id> (host paths)."""
    python = os.path.realpath(sys.executable)
    loader = elf.file_interpreter(python)
    if loader is None:
        raise BundleError(f"{python} has no ELF interpreter (a static Python is not supported)")
    stdlib = sysconfig.get_path("stdlib")
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    files: list[tuple[str, str]] = [(python, "bin/python3")]
    files += [(src, rel) for src, rel in _walk(stdlib, f"lib/{version}", STDLIB_SKIP)
              if not (rel.split("/")[2] == "lib-dynload"
                      and os.path.basename(rel).split(".")[0] in DYNLOAD_SKIP)]
    for name in MODULES:
        files += _module_files(name)
    elves = [src for src, rel in files if rel == "bin/python3" or rel.endswith(".so")]
    libs: dict[str, str] = {os.path.basename(loader): os.path.realpath(loader)}
    for path in elves:
        for lib in elf.needed_libraries(loader, path):
            libs.setdefault(os.path.basename(lib), os.path.realpath(lib))
    files += [(src, f"lib/{name}") for name, src in sorted(libs.items())]
    entries = [Entry(rel, _mode(src), source=src) for src, rel in files]
    if len(entries) > MAX_FILES:
        raise BundleError(f"{len(entries)} files to bundle, more than {MAX_FILES}")
    if len({e.path for e in entries}) != len(entries):
        raise BundleError("two sources for one bundle path")
    h = hashlib.sha256(f"launcher {LAUNCHER_FORMAT} {host_dir}\n".encode())
    for e in entries:
        h.update(f"{e.path}\0{e.mode:o}\0{e.digest()}\n".encode())
    bundle_id = ID_PREFIX + h.hexdigest()[:16]
    config = f"{host_dir}/{CONFIG_NAME}"
    for prog, entry in (("gpuhook", "main"), ("gpuhook-runtime", "runtime_main")):
        content = launcher(f"{host_dir}/{bundle_id}", config, loader, entry, prog)
        entries.append(Entry(f"bin/{prog}", 0o755, content=content))
    return Bundle(bundle_id, tuple(entries))


def is_complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, COMPLETE))


def write(bundle: Bundle, parent: str) -> str:
    """Copy the bundle to `parent`/<id> (through a temporary dir renamed into place, so a
    reader never sees half a bundle), byte-compiled for this interpreter. Returns its path."""
    final = os.path.join(parent, bundle.id)
    tmp = os.path.join(parent, f".{bundle.id}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for e in bundle.files:
            dst = os.path.join(tmp, e.path)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if e.content is not None:
                with open(dst, "wb") as f:
                    f.write(e.content)
            else:
                assert e.source is not None
                shutil.copy2(e.source, dst)
            os.chmod(dst, e.mode)
        # .pyc next to each module, with the host path as the file name in tracebacks; the
        # launchers' -B keeps the interpreter from writing any at run time.
        for sub in ("lib", "site"):
            ok = compileall.compile_dir(os.path.join(tmp, sub), quiet=2,
                                        stripdir=tmp, prependdir=final, workers=1)
            if not ok:
                raise BundleError(f"byte-compiling {sub} of the bundle failed")
        with open(os.path.join(tmp, COMPLETE), "w") as f:
            f.write(bundle.id + "\n")
        if os.path.isdir(final):
            shutil.rmtree(final)  # a torn copy from a killed run (no COMPLETE in it)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def switch_current(parent: str, bundle_id: str) -> bool:
    """Point `current` at `bundle_id` (a symlink renamed over the old one). True if it moved."""
    link = os.path.join(parent, CURRENT)
    try:
        if os.readlink(link) == bundle_id:
            return False
    except (FileNotFoundError, OSError):
        pass
    tmp = f"{link}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(bundle_id, tmp)
    os.rename(tmp, link)
    return True


def bundle_dirs(parent: str) -> list[str]:
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(ID_PREFIX) and
                  os.path.isdir(os.path.join(parent, n)) and
                  not os.path.islink(os.path.join(parent, n)))
