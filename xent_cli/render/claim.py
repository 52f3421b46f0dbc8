"""Renders a ClaimVerdict: a Rich panel, JSON, Markdown and LaTeX."""

from __future__ import annotations

import json

from rich.console import Group
from rich.table import Table
from rich.text import Text

from xent_cli.claims import ClaimVerdict


def _headline(verdict: ClaimVerdict) -> str:
    word = "holds" if verdict.holds else "does NOT hold"
    return f"The claim {word} for dCE/dz_j, {verdict.scope} (k = {verdict.k}, ℓ = {verdict.label})"


def _targets(verdict: ClaimVerdict) -> str:
    return "soft (any y with Σ y = 1)" if verdict.soft else "one-hot at ℓ"


def _vector(values) -> str:
    return "(" + ", ".join(str(value) for value in values) + ")"


def _value(exact: str, decimal: str | None) -> str:
    if decimal is None:
        return "undefined"
    return decimal if exact == decimal else f"{exact} ≈ {decimal}"


def claim_to_rich(verdict: ClaimVerdict):
    """Returns the verdict as a headline, a table of what was checked and any counterexample."""
    headline = Text(("✓ " if verdict.holds else "✗ ") + _headline(verdict),
                    style="bold green" if verdict.holds else "bold red")
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("claim", verdict.claim)
    table.add_row("read as", verdict.claimed)
    table.add_row("true dCE/dz_j", f"{verdict.expected}  (p = softmax(z))")
    table.add_row("targets", _targets(verdict))
    table.add_row("checked for j", ", ".join(str(j) for j in verdict.classes))
    table.add_row("verified by", verdict.method)
    parts = [headline, table]
    example = verdict.counterexample
    if example is not None:
        j = example["j"]
        found = Table(title="counterexample", title_justify="left", show_header=False)
        found.add_column("what", style="bold")
        found.add_column("value", overflow="fold")
        found.add_row("z", _vector(example["z"]))
        found.add_row("y", _vector(example["y"]))
        found.add_row("j", str(j))
        found.add_row("claim gives", _value(example["claimed"], example["claimed_decimal"]))
        found.add_row(f"p_{j} − y_{j} is", _value(example["actual"], example["actual_decimal"]))
        parts.append(found)
    parts.append(Text(verdict.reason))
    return Group(*parts)


def claim_fields(verdict: ClaimVerdict) -> dict:
    """Returns the verdict as plain JSON-ready data (no NaN: an undefined value is null)."""
    return {
        "claim": verdict.claim,
        "holds": verdict.holds,
        "scope": verdict.scope,
        "read_as": verdict.claimed,
        "expected": verdict.expected,
        "k": verdict.k,
        "label": verdict.label,
        "soft": verdict.soft,
        "classes": list(verdict.classes),
        "method": verdict.method,
        "reason": verdict.reason,
        "counterexample": None if verdict.counterexample is None else dict(verdict.counterexample),
    }


def claim_to_json(verdict: ClaimVerdict) -> str:
    """Returns the verdict as one indented JSON object (claim_fields), non-ASCII as written."""
    return json.dumps(claim_fields(verdict), indent=2, ensure_ascii=False)


def _equation(verdict: ClaimVerdict) -> str:
    """The claimed equation in LaTeX: ∂CE/∂z_j =? the claim, with its case."""
    condition = {"every j": "", "j = ℓ": r"\quad (j = \ell)", "j ≠ ℓ": r"\quad (j \neq \ell)"}
    return (rf"\frac{{\partial \mathrm{{CE}}}}{{\partial z_j}} \overset{{?}}{{=}} "
            rf"{verdict.claimed_latex}{condition[verdict.scope]}")


def claim_to_markdown(verdict: ClaimVerdict) -> str:
    """Returns the verdict as a Markdown section, the claimed equation in a $$ block."""
    lines = [
        f"### Claim: `{verdict.claim}`",
        "",
        f"$$ {_equation(verdict)} $$",
        "",
        f"**{_headline(verdict)}.**",
        "",
        f"- read as: `{verdict.claimed}`",
        f"- true dCE/dz_j: `{verdict.expected}` with p = softmax(z)",
        f"- targets: {_targets(verdict)}",
        f"- checked for j = {', '.join(str(j) for j in verdict.classes)}",
        f"- verified by: {verdict.method}",
    ]
    example = verdict.counterexample
    if example is not None:
        j = example["j"]
        lines += [
            "",
            "| counterexample | value |",
            "|---|---|",
            f"| z | {_vector(example['z'])} |",
            f"| y | {_vector(example['y'])} |",
            f"| j | {j} |",
            f"| claim gives | {_value(example['claimed'], example['claimed_decimal'])} |",
            f"| p_{j} − y_{j} is | {_value(example['actual'], example['actual_decimal'])} |",
        ]
    lines += ["", verdict.reason, ""]
    return "\n".join(lines)


def claim_to_latex(verdict: ClaimVerdict) -> str:
    """Returns the verdict as a LaTeX fragment: the claimed equation, then the verdict."""
    verb = "holds" if verdict.holds else "does not hold"
    lines = [
        r"\[",
        _equation(verdict),
        r"\]",
        rf"The claim {verb} (k = {verdict.k}, $\ell = {verdict.label}$); the true gradient is "
        r"$p_j - y_j$ with $p = \mathrm{softmax}(z)$.",
    ]
    example = verdict.counterexample
    if example is not None:
        j = example["j"]
        claimed = ("no number" if example["claimed_decimal"] is None
                   else f"${example['claimed_decimal']}$")
        lines.append(
            rf"Counterexample: $z = {_vector(example['z'])}$, $y = {_vector(example['y'])}$, "
            rf"$j = {j}$: the claim gives {claimed} but $p_{{{j}}} - y_{{{j}}} = "
            rf"{example['actual_decimal']}$.")
    return "\n".join(lines) + "\n"
