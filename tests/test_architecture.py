"""The functional core stays free of the shell; heavy imports stay out of fast paths."""

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "xent_cli"
SHELL_MODULES = {"cli.py", "__main__.py"}


def imported_roots(path: pathlib.Path) -> set[str]:
    """Returns the top-level package names a module imports, at any depth of its code."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


CORE = sorted(p for p in PACKAGE.glob("*.py") if p.name not in SHELL_MODULES)
RENDERERS = sorted((PACKAGE / "render").glob("*.py"))


@pytest.mark.parametrize("module", CORE, ids=lambda p: p.name)
def test_core_modules_import_neither_typer_nor_rich(module):
    assert imported_roots(module).isdisjoint({"typer", "rich", "click"}), module.name


@pytest.mark.parametrize("module", RENDERERS, ids=lambda p: p.name)
def test_renderers_do_not_import_typer(module):
    assert imported_roots(module).isdisjoint({"typer", "click"}), module.name


def modules_loaded_by(*argv: str) -> set[str]:
    """Runs the CLI in a fresh interpreter and returns the top-level modules it loaded."""
    code = (
        "import sys\n"
        "from xent_cli.cli import app\n"
        "try:\n"
        f"    app({list(argv)!r}, prog_name='xent')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stderr.strip().splitlines()[-1].split())


def test_help_imports_no_heavy_module():
    loaded = modules_loaded_by("--help")
    assert loaded.isdisjoint({"sympy", "pandas", "torch", "polars", "matplotlib", "numpy"})


def test_usage_errors_are_one_line_with_exit_2(runner):
    from xent_cli.cli import app

    for argv in (["bogus"], ["eval"], ["eval", "x.csv", "--no-such-option"]):
        result = runner.invoke(app, argv)
        assert result.exit_code == 2, argv
        assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
