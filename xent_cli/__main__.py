"""Runs the CLI as ``python -m xent_cli``."""

from xent_cli.cli import main

main()
