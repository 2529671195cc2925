"""CRI-O: one drop-in under crio.conf.d that names gpuhook-runtime as an OCI runtime."""

from __future__ import annotations

import json
import os

from gpuhook.engines.common import (
    DEFAULTS,
    DROP_IN_NAME,
    Change,
    Options,
    owned_file,
    remove_owned,
    toml_key,
)


def drop_in_path(opts: Options) -> str:
    return os.path.join(opts.drop_in_dir or DEFAULTS["crio_drop_in_dir"], DROP_IN_NAME["crio"])


def install(opts: Options) -> list[Change]:
    return [owned_file(drop_in_path(opts), crio_drop_in(opts).encode())]


def uninstall(opts: Options) -> list[Change]:
    return [remove_owned(drop_in_path(opts), opts)]


def crio_drop_in(opts: Options) -> str:
    lines = ["# Written by `gpuhook install --runtime crio`; `gpuhook uninstall` removes it."]
    if opts.set_as_default:
        lines += ["[crio.runtime]", f"default_runtime = {json.dumps(opts.name)}", ""]
    lines += [f"[crio.runtime.runtimes.{toml_key(opts.name)}]",
              f"runtime_path = {json.dumps(opts.runtime_binary)}",
              'runtime_type = "oci"']
    return "\n".join(lines) + "\n"
