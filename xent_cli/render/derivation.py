"""Renders a Derivation: Rich tables, Markdown with $$…$$ math, a LaTeX align* fragment, JSON."""

from __future__ import annotations

import json

import sympy as sp
from rich.console import Group
from rich.table import Table
from rich.text import Text

from xent_cli.derivation import Derivation, Entry, Step

SUMMARY_ROWS = 3  # first and last rows shown for large k without --full
MAX_TEXT = 160  # characters of a long expression shown without --full

MARK = {True: "✓", False: "✗"}


def _text(expr, full: bool) -> str:
    text = sp.sstr(expr).replace("**", "^")
    return text if full or len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _lhs(step: Step) -> str:
    return sp.sstr(step.lhs).replace("Derivative(CE, ", "dCE/d(").replace(", ", ",")


def _rows(items: list, full: bool) -> list:
    """Returns all items, or the first and last few with None marking the gap."""
    if full or len(items) <= 2 * SUMMARY_ROWS + 1:
        return items
    return items[:SUMMARY_ROWS] + [None] + items[-SUMMARY_ROWS:]


def _header(derivation: Derivation) -> str:
    targets = "soft targets y1…yK with Σy = 1" if derivation.soft else f"one-hot target at ℓ = {derivation.label}"
    return (f"∂CE/∂z for K = {derivation.k} classes, {targets}; "
            "S = Σ_n exp(z_n), p_n = exp(z_n)/S")


def _steps_table(title: str, steps, full: bool, at: bool) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("", no_wrap=True)
    table.add_column("case", no_wrap=True)
    table.add_column("rule")
    table.add_column("step")
    if at:
        table.add_column("at z", justify="right")
    table.add_column("verified by")
    for step in steps:
        row = [MARK[step.verification.ok], step.case, step.rule,
               f"{_lhs(step)} = {_text(step.expr, full)}"]
        if at:
            row.append(step.at or "")
        row.append(step.verification.method if step.verification.ok
                   else f"FAILED: {step.verification.detail}")
        table.add_row(*row)
    return table


def _entries_table(title: str, entries: list[Entry], full: bool, at: bool) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("", no_wrap=True)
    table.add_column("entry", no_wrap=True)
    table.add_column("SymPy's direct derivative")
    table.add_column("closed form")
    if at:
        table.add_column("at z", justify="right")
    table.add_column("verified by")
    for entry in _rows(entries, full):
        if entry is None:
            table.add_row("…", "…", "…", "…", *(["…"] if at else []), "…")
            continue
        row = [MARK[entry.verification.ok], ",".join(map(str, entry.index)),
               _text(entry.direct, full), _text(entry.closed, full)]
        if at:
            row.append("" if entry.at is None else f"{entry.at:.6g}")
        row.append(entry.verification.method)
        table.add_row(*row)
    return table


def _count(entries) -> str:
    good = sum(e.verification.ok for e in entries)
    return f"{good} of {len(entries)} entries verified"


def to_rich(derivation: Derivation, *, full: bool = False) -> Group:
    """Returns the derivation as Rich tables: steps, pitfall, gradient and Hessian."""
    at = derivation.at is not None
    parts = [Text(_header(derivation))]
    if at:
        parts.append(Text("at z = (" + ", ".join(f"{v:g}" for v in derivation.at) + ")"))
    parts.append(_steps_table("steps", derivation.steps, full, at))
    if derivation.pitfall is not None:
        step = derivation.pitfall
        parts.append(_steps_table("why the seed's Case 1 fails", [step], full, at))
    parts.append(_entries_table(f"gradient: {_count(derivation.gradient)}",
                                list(derivation.gradient), full, at))
    if derivation.hessian is not None:
        parts.append(_steps_table("Hessian steps", derivation.hessian_steps, full, at))
        entries = [e for row in derivation.hessian for e in row]
        parts.append(_entries_table(f"Hessian diag(p) − p pᵀ: {_count(entries)}", entries, full, at))
    verdict = "every step and entry verified" if derivation.verified else "SOME STEPS FAILED"
    parts.append(Text(f"∇CE = p − y: {verdict}"))
    return Group(*parts)


def _latex_lhs(step: Step) -> str:
    return sp.latex(step.lhs)


def _latex_lines(steps) -> list[str]:
    lines = []
    for step in steps:
        mark = r"\checkmark" if step.verification.ok else r"\text{FAILED}"
        lines.append(f"{_latex_lhs(step)} &= {sp.latex(step.expr)} "
                     rf"&& \text{{{step.rule}, {step.case}}}\ {mark}")
    return lines


def to_markdown(derivation: Derivation, *, full: bool = False) -> str:
    """Returns Markdown with $$…$$ LaTeX blocks, ready for a blog post."""
    out = [f"## {_header(derivation)}", ""]
    for step in derivation.steps:
        mark = "✓" if step.verification.ok else "✗ **failed**"
        out += [f"**{step.rule}** ({step.case}) {mark}: {step.description}. "
                f"*Verified by {step.verification.method}*"
                + ("" if step.verification.ok else f": {step.verification.detail}")
                + (f"; at z: {step.at}" if step.at else "") + ".", "",
                f"$$ {_latex_lhs(step)} = {sp.latex(step.expr)} $$", ""]
    if derivation.pitfall is not None:
        step = derivation.pitfall
        out += ["### Why the seed's Case 1 fails", "",
                f"$$ {_latex_lhs(step)} \\overset{{?}}{{=}} {sp.latex(step.expr)} $$", "",
                f"✗ **failed**: {step.verification.detail}.", ""]
    out += [f"### Gradient ({_count(derivation.gradient)})", "",
            "| | j | SymPy's direct derivative | closed form |", "|---|---|---|---|"]
    for entry in _rows(list(derivation.gradient), full):
        if entry is None:
            out.append("| … | … | … | … |")
            continue
        out.append(f"| {MARK[entry.verification.ok]} | {entry.index[0]} | "
                   f"${sp.latex(entry.direct)}$ | ${sp.latex(entry.closed)}$ |")
    if derivation.hessian is not None:
        entries = [e for row in derivation.hessian for e in row]
        out += ["", f"### Hessian diag(p) − p pᵀ ({_count(entries)})", "", "$$ \\begin{aligned}"]
        out += [line + r" \\" for line in _latex_lines(derivation.hessian_steps)]
        out += ["\\end{aligned} $$"]
    return "\n".join(out) + "\n"


def to_latex(derivation: Derivation, *, full: bool = False) -> str:
    """Returns an align* fragment (needs amsmath and amssymb)."""
    steps = list(derivation.steps) + list(derivation.hessian_steps)
    lines = _latex_lines(steps)
    body = " \\\\\n".join(lines)
    out = [f"% {_header(derivation)}", "\\begin{align*}", body, "\\end{align*}"]
    if derivation.pitfall is not None:
        step = derivation.pitfall
        out += ["% the seed's Case 1, checked and failed: " + step.verification.detail,
                "\\begin{align*}",
                f"{_latex_lhs(step)} &\\neq {sp.latex(step.expr)} && \\text{{seed's Case 1: FAILED}}",
                "\\end{align*}"]
    return "\n".join(out) + "\n"


def _step_json(step: Step) -> dict:
    return {"rule": step.rule, "case": step.case, "lhs": sp.sstr(step.lhs), "expr": sp.sstr(step.expr),
            "value": sp.sstr(step.value), "verified": step.verification.ok,
            "verification": step.verification.method, "detail": step.verification.detail,
            "at": step.at}


def to_json(derivation: Derivation) -> str:
    """Returns one JSON object: k, label, gradient (strings in z and y), hessian, steps."""
    z = sp.symbols(f"z1:{derivation.k + 1}", real=True)
    p = sp.symbols(f"p1:{derivation.k + 1}", positive=True)
    # A placeholder printed once as the K-term sum: printing the sum inside every entry
    # would cost O(K log K) per entry.
    placeholder = sp.Symbol("NORMALISER_", positive=True)
    normaliser = "(" + sp.sstr(sp.Add(*(sp.exp(zn) for zn in z))) + ")"
    softmax = {pn: sp.exp(zn) / placeholder for pn, zn in zip(p, z)}

    def concrete(entry: Entry) -> str:
        # In z (and y) only, so that sympy.sympify reads it without our definitions of p and S.
        return sp.sstr(entry.closed.xreplace(softmax)).replace(placeholder.name, normaliser)

    data = {
        "k": derivation.k, "label": derivation.label, "soft": derivation.soft,
        "verified": derivation.verified,
        "at": list(derivation.at) if derivation.at is not None else None,
        "gradient": [concrete(e) for e in derivation.gradient],
        "gradient_verified": [e.verification.ok for e in derivation.gradient],
        "steps": [_step_json(s) for s in derivation.steps],
        "pitfall": _step_json(derivation.pitfall) if derivation.pitfall is not None else None,
    }
    if derivation.hessian is not None:
        data["hessian"] = [[concrete(e) for e in row] for row in derivation.hessian]
        data["hessian_verified"] = [[e.verification.ok for e in row] for row in derivation.hessian]
        data["hessian_steps"] = [_step_json(s) for s in derivation.hessian_steps]
    return json.dumps(data, indent=2, ensure_ascii=False)
