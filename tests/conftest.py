"""Shared fixtures: a CLI runner with a fixed, colourless terminal, and golden files."""

import pathlib

import pytest
from typer.testing import CliRunner

GOLDEN = pathlib.Path(__file__).parent / "golden"
EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"

# A fixed width and no colour make rendered output byte-for-byte stable.
PLAIN_TERMINAL = {"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"}


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/* from the current output instead of comparing")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env=PLAIN_TERMINAL)


@pytest.fixture
def golden(request):
    """Compares text with tests/golden/NAME, or rewrites it under --update-golden."""

    def compare(name: str, text: str) -> None:
        path = GOLDEN / name
        if request.config.getoption("--update-golden"):
            path.write_text(text, encoding="utf-8")
        assert path.exists(), f"missing golden file {path}; run pytest --update-golden"
        assert text == path.read_text(encoding="utf-8"), f"output differs from {path}"

    return compare


def table_rows(shown: str) -> dict[str, list[str]]:
    """Returns a rendered table's rows by their first cell, each other cell as shown."""
    rows = {}
    for line in shown.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) > 1:
            rows[cells[0]] = cells[1:]
    return rows
