"""podman (and CRI-O, which reads the same directory): an OCI hooks.d entry that runs
`gpuhook hook prestart` for every container."""

from __future__ import annotations

import json
import os

from gpuhook.engines.common import DEFAULTS, HOOK_FILE, Change, Options, owned_file, remove_owned
from gpuhook.runtime.spec_edit import HOOK_ARGS, HOOK_ENV


def hook_path(opts: Options) -> str:
    return os.path.join(opts.hooks_dir or DEFAULTS["hooks_dir"], HOOK_FILE)


def install(opts: Options) -> list[Change]:
    return [owned_file(hook_path(opts), hooks_json(opts).encode())]


def uninstall(opts: Options) -> list[Change]:
    return [remove_owned(hook_path(opts), opts)]


def hooks_json(opts: Options) -> str:
    args = list(HOOK_ARGS)
    if opts.hook_config:
        args += ["--config", opts.hook_config]
    hook = {"version": "1.0.0",
            "hook": {"path": opts.hook_binary, "args": args, "env": list(HOOK_ENV)},
            "when": {"always": True},
            "stages": ["prestart"]}
    return json.dumps(hook, indent=2) + "\n"
