"""`gpuhook explain ID|POD`."""

from __future__ import annotations

import json
import os

import click

from gpuhook.cli.common import CONFIG_HELP


@click.command()
@click.argument("query", metavar="ID|POD")
@click.option("--config", "config_path", metavar="FILE", help=CONFIG_HELP)
@click.option("--log", "log_path", metavar="FILE",
              help="Decision log to read (default: the config's `log-file`).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the matching records, one JSON array.")
def explain(query: str, config_path: str | None, log_path: str | None, as_json: bool) -> None:
    """Say what a container asked for, what it got, what was ignored and why.

    ID is a container id (or a prefix of 6 characters or more); POD is NAME,
    NAMESPACE/NAME, NAMESPACE/NAME/CONTAINER or the pod's sandbox id, as the CRI annotations
    recorded them. Reads the decision log only. Exit 1 when nothing matches.

    \b
    Examples:
      gpuhook explain trainer-0
      gpuhook explain ml/trainer-0/cuda
      gpuhook explain 3f2a9c1b --json
    """
    from gpuhook.config import load_config_lenient
    from gpuhook.observe.explain import MAX_LOG_TAIL, not_found, parse_records, render, select

    # A broken config still names its log: explain is what an operator runs when things fail.
    log = log_path or load_config_lenient(config_path)[0].log_file
    try:
        with open(log, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - MAX_LOG_TAIL))
            text = f.read(MAX_LOG_TAIL).decode("utf-8", "replace")
    except OSError as e:
        raise click.ClickException(f"cannot read the decision log {log}: {e.strerror}") from None
    records = parse_records(text)
    found = select(records, query)
    if not found:
        click.echo(f"gpuhook: {not_found(query, log, len(records))}", err=True)
        raise SystemExit(1)
    click.echo(json.dumps(found, indent=2) if as_json else render(found), nl=as_json)
