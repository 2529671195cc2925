"""gpuhook-runtime: the OCI runtime shim. Placeholder until the shim issue lands: exec runc."""

from __future__ import annotations

import os
import shutil


def main(argv: list[str]) -> int:
    runc = shutil.which("runc")
    if runc is None:
        print("gpuhook-runtime: runc not found on PATH")
        return 127
    os.execv(runc, ["runc", *argv[1:]])
