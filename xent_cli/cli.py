"""The command-line shell: parse options, call the core, render, map errors to exit codes.

Heavy modules (sympy, the data engines) are imported inside the command that needs them,
so that ``xent --help`` and ``xent eval`` start fast.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import typer
from rich.console import Console

from xent_cli import __version__
from xent_cli.errors import ExitStatus, XentError

app = typer.Typer(
    name="xent",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def stdout() -> Console:
    """Returns the console for results."""
    return Console(highlight=False)


def stderr() -> Console:
    """Returns the console for diagnostics and progress."""
    return Console(stderr=True, highlight=False)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turns XentError into one line on stderr and exit 2; Ctrl-C into exit 130.

    Any other exception is a bug of ours and keeps its traceback.
    """
    try:
        yield
    except XentError as error:
        stderr().print(f"Error: {error}", markup=False, soft_wrap=True)
        raise typer.Exit(ExitStatus.USAGE) from None
    except KeyboardInterrupt:
        stderr().print("Interrupted.", markup=False)
        raise typer.Exit(ExitStatus.INTERRUPTED) from None


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"xent {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Derive, evaluate and verify the softmax cross-entropy loss and its gradient.

    \b
    Examples:
      xent derive --k 3
      xent eval examples/logits_k3.csv
      xent check --grad-fn my_grad.py:grad
    """


def main() -> None:
    """Runs the app as the ``xent`` console script."""
    app(prog_name="xent")
