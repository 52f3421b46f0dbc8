"""Runs the CLI as ``python -m xent_cli`` and as the ``xent`` console script."""

import sys

from xent_cli.errors import ExitStatus


def run() -> None:
    """Loads the CLI and runs it. Ctrl-C while Typer, Rich and NumPy load (a tenth of a
    second) is told as it is inside a command, not as a traceback of the imports."""
    try:
        from xent_cli.cli import main
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        raise SystemExit(ExitStatus.INTERRUPTED) from None
    main()


if __name__ == "__main__":
    run()
