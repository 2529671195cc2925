"""Console-script entry points. `gpuhook hook prestart` is dispatched before click is imported:
it runs on every container start on a node, GPU or not; so is `gpuhook hook create-container`,
spec mode's hook for every container with driver files. Both end without the interpreter's
teardown (`_exit_now`).

The launchers (bin/, packaging/deb/bin/) start the interpreter with -I -S: no site module at
start, which is ~2.7 ms of every runtime call, paid whether or not anything needs it. They put
gpuhook's own directories and its dependencies' on sys.path (the venv's site-packages and the
directories its .pth files name, Debian's dist-packages and gpuhook's vendor dir) and pass
`lazy_site=True`; `leave_fast_path()` then runs site for the CLI only, so the commands people
type see the sys.path they always had. The hooks and the shim never run it, GPU or not: what
site would add beyond the launchers' paths is /usr/local's dist-packages and .pth code, neither
wanted in a process a runtime starts as root, and it costs ~2 ms of every GPU start. A launcher
started without site for isolation (the node installer's bundle) passes nothing, and site never
runs.
"""

import sys

_deferred_site: list[bool] = []  # [True] while the launcher's deferred site has not run


def leave_fast_path() -> None:
    """Run the site module now if the launcher deferred it (see above); once."""
    if _deferred_site:
        _deferred_site.clear()
        import site

        site.main()


def _defer_site(lazy_site: bool) -> None:
    _deferred_site[:] = [True] if lazy_site and sys.flags.no_site else []


def main(lazy_site: bool = False) -> None:
    _defer_site(lazy_site)
    argv = sys.argv[1:]
    if argv[:1] == ["hook"] and not {"-h", "--help"} & set(argv[2:]):
        if argv[1:2] == ["prestart"]:
            from gpuhook.runtime.hook import prestart_main

            _exit_now(prestart_main(argv[2:]))
        if argv[1:2] == ["create-container"]:
            # No site here either: it needs gpuhook and prctl only, which the launchers put on
            # sys.path (the venv's site-packages, Debian's dist-packages).
            from gpuhook.runtime.create_container import main as create_container_main

            _exit_now(create_container_main(argv[2:]))
    leave_fast_path()
    from gpuhook.cli.main import cli

    cli(prog_name="gpuhook")


def _exit_now(code: int) -> None:
    """End a hook run without the interpreter's teardown (its final garbage collection and the
    freeing of every module: ~2-3 ms of a GPU start's hook, ~2 ms of create-container).
    Nothing is lost: gpuhook writes its files with os.write or closes them before it returns,
    registers no atexit handler, and the standard streams are flushed here."""
    import os

    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105  (no contextlib import for this)
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass  # a closed or missing stream: what it held could not have been written anyway
    os._exit(code)


def runtime_main(lazy_site: bool = False) -> None:
    _defer_site(lazy_site)
    from gpuhook.runtime.shim import main as shim_main

    sys.exit(shim_main(sys.argv))
