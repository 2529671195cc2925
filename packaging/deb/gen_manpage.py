"""Write gpuhook(1) in roff from the click command tree, so the man page is the --help text.

Run at package build time from the source tree root: `python3 packaging/deb/gen_manpage.py`.
Needs only click (a build dependency); every command's help, options and sub-commands appear.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
# The man page documents the installed package: its examples, not the source tree's.
os.environ["GPUHOOK_EXAMPLES"] = "/usr/share/doc/gpuhook/examples"

import click

from gpuhook import __version__
from gpuhook.cli.main import cli

FILES = [
    ("/etc/gpuhook/config.toml", "The configuration (TOML, flat keys; every key documented "
     "inside). A dpkg conffile: kept on remove, deleted on purge."),
    ("/usr/share/containers/oci/hooks.d/gpuhook.json", "Not shipped: written by \"gpuhook "
     "install --runtime podman\" (podman and CRI-O then run \"gpuhook hook prestart\" for "
     "every container; one without a GPU request exits at once)."),
    ("/var/log/gpuhook.log", "JSON-lines decision log (config key log-file); \"gpuhook "
     "explain\" reads it. Rotated weekly by /etc/logrotate.d/gpuhook. Deleted on purge."),
    ("/run/gpuhook/inventory.json", "NVML snapshot written by \"gpuhook inventory refresh\" "
     "(config key inventory-cache)."),
    ("/usr/lib/gpuhook/vendor/pynvml.py", "The NVML bindings from nvidia-ml-py, vendored."),
    ("/usr/share/doc/gpuhook/examples/", "A bundle and a config using the fake 8-GPU "
     "inventory shipped with gpuhook: try \"gpuhook dry-run\" without a GPU."),
]


def esc(text: str) -> str:
    """Escape text for roff: backslashes, minus signs, and a leading control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = []
    for line in text.splitlines():
        stripped = line.lstrip()
        lines.append("\\&" + line if stripped[:1] in (".", "'") else line)
    return "\n".join(lines)


def paragraphs(help_text: str) -> list[tuple[bool, str]]:
    """Split click help into (verbatim, text) paragraphs; click's \\b marks a verbatim one."""
    out = []
    for para in inspect.cleandoc(help_text).split("\n\n"):
        if para.startswith("\b\n"):
            out.append((True, para[2:]))
        elif para.strip():
            out.append((False, " ".join(para.split())))
    return out


def body(help_text: str | None) -> list[str]:
    lines: list[str] = []
    for verbatim, text in paragraphs(help_text or ""):
        if verbatim:
            lines += [".PP", ".nf", esc(text), ".fi"]
        else:
            lines += [".PP", esc(text)]
    return lines


def command_section(cmd: click.Command, path: list[str], parent: click.Context) -> list[str]:
    ctx = click.Context(cmd, info_name=path[-1], parent=parent)
    lines: list[str] = []
    if path[1:]:
        usage = " ".join(cmd.collect_usage_pieces(ctx))
        lines += [".SS " + esc(" ".join(path)), ".PP", ".B " + esc(" ".join(path)),
                  esc(usage)]
        lines += body(cmd.help)
        for param in cmd.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None and "--help" not in record[0]:
                lines += [".TP", ".B " + esc(record[0]), esc(record[1] or "")]
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                lines += command_section(sub, [*path, name], ctx)
    return lines


def manpage(prog: str) -> str:
    root = click.Context(cli, info_name=prog)
    summary = cli.get_short_help_str(limit=200).rstrip(".")
    lines = [
        f'.TH {prog.upper()} 1 "" "{prog} {__version__}" "User Commands"',
        ".SH NAME", f"{esc(prog)} \\- {esc(summary[0].lower() + summary[1:])}",
        ".SH SYNOPSIS", f".B {esc(prog)}", "\\fICOMMAND\\fR [\\fIOPTIONS\\fR] [\\fIARGS\\fR]",
        ".SH DESCRIPTION", *body(cli.help),
        ".SH COMMANDS", *command_section(cli, [prog], root),
        ".SH ENVIRONMENT", ".TP", ".B GPUHOOK_CONFIG",
        esc("Config file used when --config is not given; else /etc/gpuhook/config.toml, "
            "else the built-in defaults (equal to the shipped config.toml)."),
        ".SH REGISTRATION",
        esc("Installing the package registers gpuhook with no container engine. Run "
            "\"gpuhook install --runtime containerd\" (or crio, docker, podman) to register it, "
            "\"gpuhook doctor\" to check the node, and \"gpuhook uninstall\" with the same "
            "options before removing the package."),
        ".SH FILES",
    ]
    for path, what in FILES:
        lines += [".TP", ".I " + esc(path), esc(what)]
    lines += [".SH SEE ALSO", ".BR gpuhook\\-runtime (1),", ".BR runc (8)"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(manpage(sys.argv[1] if sys.argv[1:] else "gpuhook"))
