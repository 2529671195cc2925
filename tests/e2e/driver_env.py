"""Shared by the driver-files e2e tests: the gpuhook config for a fake driver host, the shim
wrapper that gives gpuhook-runtime its config, and tree hashes that prove nothing changed."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

SHIM = Path(sys.executable).parent / "gpuhook-runtime"


def write_config(path: Path, inventory: Path, host_root: Path, log: Path, mode: str) -> Path:
    path.write_text(f'inventory = "{inventory}"\nhost-root = "{host_root}"\n'
                    f'log-file = "{log}"\nruntimes = ["runc"]\nmode = "{mode}"\n')
    return path


def shim_wrapper(path: Path, config: Path) -> Path:
    """An executable that runs gpuhook-runtime with GPUHOOK_CONFIG set, for the harness's
    `runtime=` (which runs it with a minimal environment)."""
    path.write_text(f'#!/bin/sh\nGPUHOOK_CONFIG="{config}" exec "{SHIM}" "$@"\n')
    path.chmod(0o755)
    return path


def tree_hash(root: Path) -> str:
    """Names, modes, sizes, link texts and contents of everything under `root`."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames + dirnames):
            p = Path(dirpath) / name
            st = p.lstat()
            h.update(f"{p.relative_to(root)} {st.st_mode:o} {st.st_size}\n".encode())
            if p.is_symlink():
                h.update(os.readlink(p).encode())
            elif p.is_file():
                h.update(p.read_bytes())
    return h.hexdigest()


def file_hash(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
