"""Console-script entry points. `gpuhook hook prestart` is dispatched before click is imported:
it runs on every container start on a node, GPU or not."""

import sys


def main() -> None:
    argv = sys.argv[1:]
    if argv[:2] == ["hook", "prestart"] and not {"-h", "--help"} & set(argv[2:]):
        from gpuhook.runtime.hook import prestart_main

        sys.exit(prestart_main(argv[2:]))
    if argv[:2] == ["hook", "create-container"] and not {"-h", "--help"} & set(argv[2:]):
        from gpuhook.runtime.create_container import main as create_container_main

        sys.exit(create_container_main(argv[2:]))
    from gpuhook.cli.main import cli

    cli(prog_name="gpuhook")


def runtime_main() -> None:
    from gpuhook.runtime.shim import main as shim_main

    sys.exit(shim_main(sys.argv))
