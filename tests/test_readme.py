"""The README's, the docs' and the help texts' examples are true: each command shown runs, and
each output shown is what the command prints today.

In a code fence of README.md or docs/*.md:

- A transcript is a line ``$ xent ARGS`` and the lines after it, up to the next ``$`` line or
  the fence's end: the output it shows. That output must equal the command's (stdout and stderr
  as a terminal shows them) line for line, trailing spaces stripped; a line ``...`` stands for
  any number of lines, none included. A transcript that shows no output is a command line.
- A command line is a line ``xent ARGS`` (output not shown), or the ``xent ARGS`` after ``&&``
  in a line such as ``pip install . && xent derive --k 3``.
- The exit status shown must be the command's: ``$ echo $?`` and the number on the next line, or
  a comment ``# exit status N`` / ``# exit N ...``; a comment that begins ``does not hold`` (a
  claim) or ``fails`` (a check) means 1. A command that says nothing exits 0.

The docstrings of examples/*.py show command lines too (indented ``xent ...`` lines): the same
rules hold for them.

A command that does not exit 2 (bad input) writes nothing on stderr: no warning.

Each command's ``--help`` shows at least one example, a line ``xent COMMAND ...``, and each such
line runs and exits as its comment says (0 when it says nothing).

Every command runs in a sandbox directory: ``examples/`` there is the repository's, so paths
read as from the repository root, and what a command writes (``--output``, ``--plot``) never
lands in the repository. The help texts name files of the reader's own (``logits.csv``,
``labels.npy``, ...): the sandbox holds them, made from ``examples/``.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import os
import pathlib
import re
import shlex
import shutil
import sys

import numpy as np
import pytest
import typer
from conftest import PLAIN_TERMINAL
from typer.testing import CliRunner

from xent_cli.cli import app

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

ANY_LINES = "..."
# An exit status said in a comment: "# exit status 1", "# exit 1: names each entry",
# "# exit 0 if the claim holds, 1 if not" (the first number is the example's own).
EXIT_SAID = re.compile(r"\bexit(?: status)? (\d+)")


@dataclasses.dataclass(frozen=True)
class Example:
    """One command shown in a document or a help text, with what it must print and exit."""

    where: str  # "README.md:123" or "xent eval --help"
    command: str  # the line as written, "xent ..." without the prompt
    output: tuple[str, ...] | None  # None: a command line, whose output is not shown
    exit_code: int


def split_comment(line: str) -> tuple[str, str]:
    """Returns the command and its shell comment (the text after a '#' outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def said_exit(comment: str) -> int:
    """Returns the exit status a comment states; 0 when it states none."""
    said = EXIT_SAID.search(comment)
    if said:
        return int(said.group(1))
    return 1 if comment.startswith(("does not hold", "fails")) else 0


def fences(path: pathlib.Path) -> list[list[tuple[int, str]]]:
    """Returns the lines of each code fence of a Markdown file, with their line numbers."""
    blocks, block = [], None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("```"):
            if block is None:
                block = []
            else:
                blocks.append(block)
                block = None
        elif block is not None:
            block.append((number, line))
    return blocks


def document_examples(path: pathlib.Path) -> list[Example]:
    """Returns the transcripts and command lines of a Markdown file's code fences."""
    examples = []
    for block in fences(path):
        i = 0
        while i < len(block):
            number, line = block[i]
            i += 1
            prompt = line.startswith("$ xent ")
            if not prompt and " && xent " in line:  # pip install . && xent ...
                line = line[line.index(" && xent ") + len(" && "):]
            if not (prompt or line.startswith("xent ")):
                continue
            command, comment = split_comment(line.removeprefix("$ "))
            output = []
            while prompt and i < len(block) and not block[i][1].startswith("$ "):
                output.append(block[i][1])
                i += 1
            exit_code = said_exit(comment)
            if prompt and i + 1 < len(block) and block[i][1].strip() == "$ echo $?":
                exit_code = int(block[i + 1][1])
                i += 2
            examples.append(Example(f"{path.relative_to(ROOT)}:{number}", command,
                                    tuple(output) if output else None, exit_code))
    return examples


def docstring_examples(path: pathlib.Path) -> list[Example]:
    """Returns the command lines of a Python file's module docstring."""
    module = ast.parse(path.read_text(encoding="utf-8"))
    docstring = ast.get_docstring(module, clean=False) or ""
    examples = []
    for number, line in enumerate(docstring.splitlines(), start=module.body[0].lineno):
        if line.strip().startswith("xent "):
            command, comment = split_comment(line.strip())
            examples.append(Example(f"{path.relative_to(ROOT)}:{number}", command, None,
                                    said_exit(comment)))
    return examples


def help_text(name: str | None) -> str:
    """Returns what ``xent [NAME] --help`` prints."""
    result = CliRunner(env=PLAIN_TERMINAL).invoke(app, [*([name] if name else []), "--help"])
    assert result.exit_code == 0, result.output
    return result.stdout


COMMANDS = sorted(typer.main.get_command(app).commands)


def help_examples(name: str | None) -> list[Example]:
    """Returns the example lines of a command's help (the root's with name None)."""
    where = f"xent {name + ' ' if name else ''}--help"
    examples = []
    for line in help_text(name).splitlines():
        if line.strip().startswith("xent "):
            command, comment = split_comment(line.strip())
            examples.append(Example(where, command, None, said_exit(comment)))
    return examples


EXAMPLES = ([example for path in DOCUMENTS for example in document_examples(path)]
            + [example for path in sorted((ROOT / "examples").glob("*.py"))
               for example in docstring_examples(path)])
HELP_EXAMPLES = [example for name in [None, *COMMANDS] for example in help_examples(name)]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> pathlib.Path:
    """A directory with the repository's examples/ and the files the help texts name."""
    where = tmp_path_factory.mktemp("sandbox")
    (where / "examples").symlink_to(ROOT / "examples")
    table = np.genfromtxt(ROOT / "examples" / "logits_k3.csv", delimiter=",", names=True)
    z = np.column_stack([table[name] for name in ("z0", "z1", "z2")])
    labels = table["label"].astype(np.int64)
    shutil.copy(ROOT / "examples" / "logits_k3.csv", where / "big.csv")
    np.savetxt(where / "logits.csv", z, delimiter=",", header="z0,z1,z2", comments="")
    np.savetxt(where / "labels.csv", labels, fmt="%d", header="label", comments="")
    np.save(where / "logits.npy", z)
    np.save(where / "labels.npy", labels)
    return where


@contextlib.contextmanager
def inside(directory: pathlib.Path):
    before = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(before)


_RESULTS: dict[tuple[str, ...], object] = {}  # a command shown twice runs once


def run(runner, sandbox: pathlib.Path, command: str):
    """Runs a shown command line in the sandbox and returns the result."""
    args = tuple(shlex.split(command))
    assert args[0] == "xent", command
    if "--plot" in args:
        pytest.importorskip("matplotlib")
    if args not in _RESULTS:
        with inside(sandbox):
            _RESULTS[args] = runner.invoke(app, list(args[1:]))
    return _RESULTS[args]


def matches(shown: list[str], real: list[str]) -> bool:
    """Tells whether the real lines are the shown ones, each '...' standing for any lines."""
    if ANY_LINES not in shown:
        return shown == real
    at = shown.index(ANY_LINES)
    head, rest = shown[:at], shown[at + 1:]
    if real[:len(head)] != head:
        return False
    return any(matches(rest, real[start:]) for start in range(len(head), len(real) + 1))


def unified_diff(shown: list[str], real: list[str]) -> str:
    return "\n".join(difflib.unified_diff(shown, real, "shown", "real", lineterm=""))


def check(example: Example, result) -> None:
    """Asserts that a command exits and prints as its example shows."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{example.where}: `{example.command}` raised") from result.exception
    assert result.exit_code == example.exit_code, (
        f"{example.where}: `{example.command}` exits {result.exit_code}, "
        f"shown {example.exit_code}\n{result.output}")
    if example.exit_code != 2:  # results go to stdout; a warning there would surprise a reader
        assert result.stderr == "", f"{example.where}: `{example.command}` warns\n{result.stderr}"
    if example.output is None:
        return
    shown = [line.rstrip() for line in example.output]
    real = [line.rstrip() for line in result.output.splitlines()]
    while real and not real[-1]:  # a fence does not show the blank line that ends the output
        real.pop()
    assert matches(shown, real), (
        f"{example.where}: the output of `{example.command}` has drifted\n"
        f"{unified_diff(shown, real)}")


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.where for example in EXAMPLES])
def test_document_example_is_true(example, runner, sandbox):
    check(example, run(runner, sandbox, example.command))


@pytest.mark.parametrize("example", HELP_EXAMPLES,
                         ids=[f"{example.where}: {example.command}" for example in HELP_EXAMPLES])
def test_help_example_runs(example, runner, sandbox):
    check(example, run(runner, sandbox, example.command))


def test_the_first_help_runs_in_a_fresh_clone(runner, tmp_path):
    """`xent --help` is a newcomer's first read: its examples run from the repository's root,
    with only its examples/, not the files of the reader's own that the sandbox holds."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    for example in help_examples(None):
        with inside(tmp_path):
            check(example, runner.invoke(app, shlex.split(example.command)[1:]))


def test_a_help_example_that_needs_an_extra_says_how_to_get_it():
    """A fresh install has no matplotlib: --plot's example exits 2 there unless it says so."""
    lines = [line.strip() for name in COMMANDS for line in help_text(name).splitlines()
             if line.strip().startswith("xent ") and " --plot " in line]
    assert lines and all("'xent-cli[plot]'" in split_comment(line)[1] for line in lines), lines


@pytest.mark.parametrize("name", ["eval", "check"])
def test_the_logits_argument_names_every_format_it_reads(name):
    """A newcomer with an array reads LOGITS' line to learn whether it will do."""
    argument = " ".join(help_text(name).split("Arguments:")[1].split("Options:")[0].split())
    assert all(suffix in argument for suffix in (".npy", ".npz", ".parquet")), argument


@pytest.mark.parametrize("name", [None, *COMMANDS])
def test_help_shows_an_example(name):
    assert any(example.command.startswith(f"xent {name or ''}") for example in help_examples(name))


def test_the_documents_show_commands():
    """The parser finds what the documents hold: a guard against examples silently skipped."""
    transcripts = [example for example in EXAMPLES if example.output is not None]
    assert len(transcripts) >= 5 and len(EXAMPLES) >= 15
    assert any(example.exit_code == 1 for example in transcripts)
    assert any(ANY_LINES in example.output for example in transcripts)


def test_a_document_is_read_as_transcripts_and_command_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "doc.md").write_text(
        "xent eval not-in-a-fence.csv\n"
        "```\n"
        "$ xent check --k 3   # shown failing\n"
        "check of the gradient\n"
        "...\n"
        "$ echo $?\n"
        "1\n"
        "$ xent derive --k 2\n"
        "```\n"
        "```\n"
        "xent derive --claim '0'   # exit status 1\n"
        "pip install . && xent derive --k 3   # install, then derive\n"
        "```\n", encoding="utf-8")
    assert document_examples(tmp_path / "doc.md") == [
        Example("doc.md:3", "xent check --k 3", ("check of the gradient", "..."), 1),
        Example("doc.md:8", "xent derive --k 2", None, 0),
        Example("doc.md:11", "xent derive --claim '0'", None, 1),
        Example("doc.md:12", "xent derive --k 3", None, 0),
    ]


def test_a_drifted_transcript_fails_with_its_line_and_a_diff(runner, sandbox):
    """The same check, on a transcript whose loss is shown one digit off, fails and says where."""
    shown = next(example for example in EXAMPLES
                 if example.command == "xent eval examples/logits_k3.csv" and example.output)
    stale = tuple(line.replace("0.4369983899", "0.4369983898") for line in shown.output)
    assert stale != shown.output
    with pytest.raises(AssertionError) as failure:
        check(dataclasses.replace(shown, output=stale), run(runner, sandbox, shown.command))
    message = str(failure.value)
    assert message.startswith(f"{shown.where}: the output of `{shown.command}` has drifted")
    assert "-│ loss        │ 0.4369983898" in message and "+│ loss        │ 0.4369983899" in message


OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def test_every_option_the_documents_name_exists():
    """An option renamed or removed in the code is not left behind in the prose."""
    known = {option for name in [None, *COMMANDS] for option in OPTION.findall(help_text(name))}
    # docs/reliability.md is generated from real commands, and names a --bogus option on purpose
    named = {option for path in (ROOT / "README.md", ROOT / "docs" / "expressions.md")
             for option in OPTION.findall(path.read_text(encoding="utf-8"))}
    unknown = named - known - {"--quick"}  # --quick is bench/run.py's (README's Speed), not xent's
    assert not unknown, f"the documents name options xent does not have: {sorted(unknown)}"


def test_the_layout_names_every_module_and_example():
    """README's Layout block lists each core module and each file of examples/ that exists."""
    layout = next("\n".join(line for _, line in block) for block in fences(ROOT / "README.md")
                  if block and block[0][1] == "xent_cli/")
    modules = [path.name for path in (ROOT / "xent_cli").glob("*.py")
               if path.name not in ("__init__.py", "__main__.py")]
    examples = [path.name for path in (ROOT / "examples").iterdir()
                if path.suffix in (".py", ".csv")]
    missing = [name for name in sorted(modules + examples) if name not in layout]
    assert not missing, f"README.md's Layout does not name {', '.join(missing)}"


@pytest.mark.parametrize(("shown", "real", "expected"), [
    (["a", "b"], ["a", "b"], True),
    (["a", "b"], ["a", "c"], False),
    (["a", "..."], ["a", "b", "c"], True),
    (["a", "..."], ["a"], True),
    (["...", "c"], ["a", "b", "c"], True),
    (["a", "...", "c"], ["a", "c"], True),
    (["a", "...", "c"], ["a", "b", "c", "d"], False),
    (["a", "...", "c", "...", "e"], ["a", "b", "c", "d", "e"], True),
    (["a", "...", "d", "...", "c"], ["a", "c", "d"], False),
])
def test_any_lines_stand_for_any_number_of_lines(shown, real, expected):
    assert matches(shown, real) is expected


@pytest.mark.parametrize(("line", "command", "exit_code"), [
    ('xent derive --k 3 --claim "j != l: 0"      # exit status 1', 'xent derive --k 3 --claim "j != l: 0"', 1),
    ("xent check --grad-fn f.py:g   # exit 1: names each entry", "xent check --grad-fn f.py:g", 1),
    ('xent derive --claim "p_j - y_j"  # exit 0 if the claim holds, 1 if not', 'xent derive --claim "p_j - y_j"', 0),
    ('xent derive --claim "0"   # does not hold', 'xent derive --claim "0"', 1),
    ("xent check --grad-fn f.py:g      # fails: names the entries", "xent check --grad-fn f.py:g", 1),
    ('xent derive --claim "p_j"   # holds: the case j ≠ ℓ', 'xent derive --claim "p_j"', 0),
    ("xent derive --k 3                      # steps, the failing Case 1", "xent derive --k 3", 0),
    ('xent check --expr "# not a comment"', 'xent check --expr "# not a comment"', 0),
])
def test_comments_state_the_exit_status(line, command, exit_code):
    shown, comment = split_comment(line)
    assert (shown, said_exit(comment)) == (command, exit_code)
