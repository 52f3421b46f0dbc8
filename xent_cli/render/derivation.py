"""Renders a Derivation: Rich tables, Markdown with $$…$$ math, a LaTeX align* fragment, JSON."""

from __future__ import annotations

import json

import sympy as sp
from rich.console import Group
from sympy.printing.latex import LatexPrinter
from sympy.printing.str import StrPrinter
from rich.table import Table
from rich.text import Text

from xent_cli.derivation import Derivation, Entry, Step

SUMMARY_ROWS = 3  # first and last rows shown for large k without --full
MAX_TEXT = 160  # characters of a long expression shown without --full

MARK = {True: "✓", False: "✗"}
# SymPy's text has no spaces inside a term, -y1*log(exp(z1)/S): a narrow column folds such a
# word onto the next line, where Rich would cut it short with '…'
FOLD = "fold"


def _printing(derivation: Derivation) -> dict:
    """SymPy printer settings: BCE's sums print class by class, as built (and without the
    sorting that costs seconds at large K); softmax's as SymPy orders them."""
    return {"order": "none"} if derivation.loss == "bce" else {}


def _as_built(printing: dict) -> dict:
    """Printer settings for SymPy's direct derivatives: their terms as built, unsorted. Each holds
    the K-term sum S, built in the classes' order, and sorting it for every row took 20 s for
    the 500 rows of --k 500 --full."""
    return {**printing, "order": "none"}


class _Reading(StrPrinter):
    """SymPy's plain text for reading: a derivative is ∂f/∂z1 (or ∂/∂z1 (f) for a long f), twice
    by one variable ∂²f/∂z1², as it is written by hand."""

    def _print_Derivative(self, expr):
        power = {1: "", 2: "²"}
        by = "".join(f"∂{self._print(v)}{power.get(n, f'^{n}')}" for v, n in expr.variable_count)
        order = sum(n for _, n in expr.variable_count)
        d = "∂" if order == 1 else "∂²" if order == 2 else f"∂^{order}"
        inner = self._print(expr.expr)
        if isinstance(expr.expr, sp.Symbol):
            return f"{d}{inner}/{by}"
        return f"{d}/{by} ({inner})"


class _Latex(LatexPrinter):
    r"""SymPy's LaTeX with every derivative partial, as CE depends on every z_n: ∂CE/∂z1 is
    \frac{\partial CE}{\partial z_{1}}, where SymPy writes \frac{d}{d z_{1}} CE."""

    def __init__(self, settings=None):
        super().__init__(settings)
        self._settings["diff_operator_latex"] = r"\partial"

    def _print_Derivative(self, expr):
        if not isinstance(expr.expr, sp.Symbol):
            return super()._print_Derivative(expr)
        order = sum(n for _, n in expr.variable_count)
        by = " ".join(rf"\partial {self._print(v)}" + (f"^{{{n}}}" if n > 1 else "")
                      for v, n in reversed(expr.variable_count))
        top = r"\partial" if order == 1 else rf"\partial^{{{order}}}"
        return rf"\frac{{{top} {self._print(expr.expr)}}}{{{by}}}"


def _latex(expr, printing: dict | None = None) -> str:
    """Returns expr in LaTeX, every derivative partial."""
    return _Latex(printing).doprint(expr)


# pdfLaTeX reads only ASCII outside math: the symbols of rule and case names, in math mode
_TEX_SYMBOLS = {"ℓ": r"$\ell$", "≠": r"$\neq$", "σ": r"$\sigma$", "−": "$-$"}


def _tex_text(text: str) -> str:
    """Returns text for LaTeX text mode, its symbols in math mode."""
    return "".join(_TEX_SYMBOLS.get(char, char) for char in text)


def _tex_label(step: Step) -> str:
    """A step's rule and case in LaTeX text mode; a case like j ≠ ℓ in math mode."""
    case = step.case
    if "=" in case or "≠" in case:
        case = "$" + case.replace("ℓ", r"\ell").replace("≠", r"\neq") + "$"
    return f"{_tex_text(step.rule)}, {case}"


def _text(expr, full: bool, printing: dict) -> str:
    text = _Reading(printing).doprint(expr).replace("**", "^")
    return text if full or len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _lhs(step: Step) -> str:
    return _Reading().doprint(step.lhs)


def _rows(items: list, full: bool) -> list:
    """Returns all items, or the first and last few with None marking the gap."""
    if full or len(items) <= 2 * SUMMARY_ROWS + 1:
        return items
    return items[:SUMMARY_ROWS] + [None] + items[-SUMMARY_ROWS:]


def _header(derivation: Derivation) -> str:
    if derivation.loss == "bce":
        return (f"∂BCE/∂z for K = {derivation.k} classes, targets y1…yK each in [0, 1] on its own; "
                "p_n = σ(z_n) = 1/(1 + exp(−z_n))")
    targets = "soft targets y1…yK with Σy = 1" if derivation.soft else f"one-hot target at ℓ = {derivation.label}"
    return (f"∂CE/∂z for K = {derivation.k} classes, {targets}; "
            "S = Σ_n exp(z_n), p_n = exp(z_n)/S")


def _steps_table(title: str, steps, full: bool, at: bool, printing: dict) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("", no_wrap=True)
    table.add_column("case", no_wrap=True)
    table.add_column("rule", overflow=FOLD)
    table.add_column("step", overflow=FOLD)
    if at:
        table.add_column("at z", justify="right", overflow=FOLD)
    table.add_column("verified by", overflow=FOLD)
    for step in steps:
        row = [MARK[step.verification.ok], step.case, step.rule,
               f"{_lhs(step)} = {_text(step.expr, full, printing)}"]
        if at:
            row.append(step.at or "")
        row.append(step.verification.method if step.verification.ok
                   else f"FAILED: {step.verification.detail}")
        table.add_row(*row)
    return table


def _entries_table(title: str, entries: list[Entry], full: bool, at: bool,
                   printing: dict) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("", no_wrap=True)
    table.add_column("entry", no_wrap=True)
    table.add_column("SymPy's direct derivative", overflow=FOLD)
    table.add_column("closed form", overflow=FOLD)
    if at:
        table.add_column("at z", justify="right", overflow=FOLD)
    table.add_column("verified by", overflow=FOLD)
    for entry in _rows(entries, full):
        if entry is None:
            table.add_row("…", "…", "…", "…", *(["…"] if at else []), "…")
            continue
        row = [MARK[entry.verification.ok], ",".join(map(str, entry.index)),
               _text(entry.direct, full, _as_built(printing)), _text(entry.closed, full, printing)]
        if at:
            row.append("" if entry.at is None else f"{entry.at:.6g}")
        row.append(entry.verification.method)
        table.add_row(*row)
    return table


PITFALL = {"seed's Case 1": "the seed's Case 1",
           "softmax carried over": "carrying softmax's gradient over"}


def _pitfall_title(step: Step) -> str:
    return f"why {PITFALL.get(step.rule, step.rule)} fails"


def _hessian_title(derivation: Derivation) -> str:
    return "diag(σ(z)(1 − σ(z)))" if derivation.loss == "bce" else "diag(p) − p pᵀ"


def _verdict(derivation: Derivation) -> str:
    verdict = "every step and entry verified" if derivation.verified else "SOME STEPS FAILED"
    result = "∇BCE = σ(z) − y" if derivation.loss == "bce" else "∇CE = p − y"
    return f"{result}: {verdict}"


def _contrast_table(derivation: Derivation) -> Table:
    table = Table(title="binary cross-entropy against softmax cross-entropy", title_justify="left")
    table.add_column("", no_wrap=True)
    for name in ("", "softmax cross-entropy", "binary cross-entropy", "shown here by"):
        table.add_column(name, overflow=FOLD)
    for row in derivation.contrast:
        table.add_row(MARK[row.ok], row.topic, row.softmax, row.bce, row.evidence)
    return table


def _point(derivation: Derivation) -> str:
    """The --at line: the logits, and the targets when they were given (bce's --y)."""
    def vector(values) -> str:
        return "(" + ", ".join(f"{v:g}" for v in values) + ")"

    text = f"at z = {vector(derivation.at)}"
    return text if derivation.at_targets is None else f"{text}, y = {vector(derivation.at_targets)}"


def _count(entries) -> str:
    good = sum(e.verification.ok for e in entries)
    return f"{good} of {len(entries)} entries verified"


def to_rich(derivation: Derivation, *, full: bool = False) -> Group:
    """Returns the derivation as Rich tables: steps, pitfall, gradient and Hessian."""
    at = derivation.at is not None
    parts = [Text(_header(derivation))]
    if at:
        parts.append(Text(_point(derivation)))
    printing = _printing(derivation)
    parts.append(_steps_table("steps", derivation.steps, full, at, printing))
    if derivation.pitfall is not None:
        step = derivation.pitfall
        parts.append(_steps_table(_pitfall_title(step), [step], full, at, printing))
    parts.append(_entries_table(f"gradient: {_count(derivation.gradient)}",
                                list(derivation.gradient), full, at, printing))
    if derivation.hessian is not None:
        parts.append(_steps_table("Hessian steps", derivation.hessian_steps, full, at, printing))
        entries = [e for row in derivation.hessian for e in row]
        parts.append(_entries_table(f"Hessian {_hessian_title(derivation)}: {_count(entries)}",
                                    entries, full, at, printing))
    if derivation.contrast:
        parts.append(_contrast_table(derivation))
    parts.append(Text(_verdict(derivation)))
    return Group(*parts)


def _latex_lhs(step: Step) -> str:
    return _latex(step.lhs)


def _latex_lines(steps, printing: dict, label=lambda step: f"{step.rule}, {step.case}") -> list:
    """One align line a step; label gives its rule and case as LaTeX text mode."""
    lines = []
    for step in steps:
        mark = r"\checkmark" if step.verification.ok else r"\text{FAILED}"
        lines.append(f"{_latex_lhs(step)} &= {_latex(step.expr, printing)} "
                     rf"&& \text{{{label(step)}}}\ {mark}")
    return lines


def to_markdown(derivation: Derivation, *, full: bool = False) -> str:
    """Returns Markdown with $$…$$ LaTeX blocks, ready for a blog post."""
    printing = _printing(derivation)
    out = [f"## {_header(derivation)}", ""]
    for step in derivation.steps:
        mark = "✓" if step.verification.ok else "✗ **failed**"
        out += [f"**{step.rule}** ({step.case}) {mark}: {step.description}. "
                f"*Verified by {step.verification.method}*"
                + ("" if step.verification.ok else f": {step.verification.detail}")
                + (f"; at z: {step.at}" if step.at else "") + ".", "",
                f"$$ {_latex_lhs(step)} = {_latex(step.expr, printing)} $$", ""]
    if derivation.pitfall is not None:
        step = derivation.pitfall
        title = _pitfall_title(step)
        out += [f"### {title[0].upper()}{title[1:]}", "",
                f"$$ {_latex_lhs(step)} \\overset{{?}}{{=}} {_latex(step.expr, printing)} $$", "",
                f"✗ **failed**: {step.verification.detail}.", ""]
    at = derivation.at is not None
    out += [f"### Gradient ({_count(derivation.gradient)})", "",
            "| | j | SymPy's direct derivative | closed form |" + (" at z |" if at else ""),
            "|---|---|---|---|" + ("---|" if at else "")]
    for entry in _rows(list(derivation.gradient), full):
        if entry is None:
            out.append("| … | … | … | … |" + (" … |" if at else ""))
            continue
        value = "" if not at else f" {'' if entry.at is None else f'{entry.at:.6g}'} |"
        out.append(f"| {MARK[entry.verification.ok]} | {entry.index[0]} | "
                   f"${_latex(entry.direct, _as_built(printing))}$ | "
                   f"${_latex(entry.closed, printing)}$ |{value}")
    if derivation.hessian is not None:
        entries = [e for row in derivation.hessian for e in row]
        out += ["", f"### Hessian {_hessian_title(derivation)} ({_count(entries)})", "",
                "$$ \\begin{aligned}"]
        out += [line + r" \\" for line in _latex_lines(derivation.hessian_steps, printing)]
        out += ["\\end{aligned} $$"]
    if derivation.contrast:
        out += ["", "### Binary cross-entropy against softmax cross-entropy", "",
                "| | | softmax cross-entropy | binary cross-entropy | shown here by |",
                "|---|---|---|---|---|"]
        out += [f"| {MARK[row.ok]} | {row.topic} | {row.softmax} | {row.bce} | {row.evidence} |"
                for row in derivation.contrast]
    return "\n".join(out) + "\n"


def to_latex(derivation: Derivation) -> str:
    """Returns an align* fragment of the steps (needs amsmath and amssymb), each written whole."""
    steps = list(derivation.steps) + list(derivation.hessian_steps)
    printing = _printing(derivation)
    lines = _latex_lines(steps, printing, _tex_label)
    body = " \\\\\n".join(lines)
    out = [f"% {_header(derivation)}", "\\begin{align*}", body, "\\end{align*}"]
    if derivation.pitfall is not None:
        step = derivation.pitfall
        # what the steps derived for the same entry, on the line: the counterexample that
        # says so is a comment, which a compiled slide does not show
        derived = next((s for s in reversed(derivation.steps) if s.lhs == step.lhs), None)
        found = "" if derived is None else f"= {_latex(derived.expr, printing)} "
        out += [f"% {PITFALL.get(step.rule, step.rule)}, checked and failed: "
                + step.verification.detail,
                "\\begin{align*}",
                f"{_latex_lhs(step)} &{found}\\neq {_latex(step.expr, printing)} "
                f"&& \\text{{{_tex_text(step.rule)}: FAILED}}",
                "\\end{align*}"]
    out += [f"% {row.topic}: softmax {row.softmax}; binary {row.bce} ({row.evidence})"
            for row in derivation.contrast]
    return "\n".join(out) + "\n"


def _step_json(step: Step, printing: dict) -> dict:
    return {"rule": step.rule, "description": step.description, "case": step.case,
            "lhs": sp.sstr(step.lhs),
            "expr": sp.sstr(step.expr, **printing), "value": sp.sstr(step.value, **printing),
            "verified": step.verification.ok,
            "verification": step.verification.method, "detail": step.verification.detail,
            "at": step.at}


def to_json(derivation: Derivation) -> str:
    """Returns one JSON object: loss, k, label, gradient (strings in z and y), hessian, their
    values at --at, steps; label is null for soft targets (--label then only picks the j the
    steps work out) and for bce (p_n = σ(z_n)), which also has contrast, how it differs from
    softmax."""
    z = sp.symbols(f"z1:{derivation.k + 1}", real=True)
    p = sp.symbols(f"p1:{derivation.k + 1}", positive=True)
    # A placeholder printed once as the K-term sum: printing the sum inside every entry
    # would cost O(K log K) per entry.
    placeholder = sp.Symbol("NORMALISER_", positive=True)
    printing = _printing(derivation)
    if derivation.loss == "bce":
        normaliser = ""
        softmax = {pn: 1 / (1 + sp.exp(-zn)) for pn, zn in zip(p, z)}  # p_n = σ(z_n)
    else:
        terms = sp.Add(*(sp.exp(zn) for zn in z), evaluate=False)  # in the classes' order
        normaliser = "(" + sp.sstr(terms, order="none") + ")"
        softmax = {pn: sp.exp(zn) / placeholder for pn, zn in zip(p, z)}

    def concrete(entry: Entry) -> str:
        # In z (and y) only, so that sympy.sympify reads it without our definitions of p and S.
        return sp.sstr(entry.closed.xreplace(softmax)).replace(placeholder.name, normaliser)

    def at(entries):
        # as the tables show them at --at (null where y stays a symbol: bce without --y)
        return None if derivation.at is None else [e.at for e in entries]

    data = {
        "loss": derivation.loss,
        # soft targets have no true class: the label only named the j of the steps
        "k": derivation.k, "label": None if derivation.soft else derivation.label,
        "soft": derivation.soft,
        "verified": derivation.verified,
        "at": list(derivation.at) if derivation.at is not None else None,
        **({"at_targets": None if derivation.at_targets is None else list(derivation.at_targets)}
           if derivation.loss == "bce" else {}),
        "gradient": [concrete(e) for e in derivation.gradient],
        "gradient_verified": [e.verification.ok for e in derivation.gradient],
        "gradient_at": at(derivation.gradient),
        "steps": [_step_json(s, printing) for s in derivation.steps],
        "pitfall": (_step_json(derivation.pitfall, printing) if derivation.pitfall is not None
                    else None),
    }
    if derivation.hessian is not None:
        data["hessian"] = [[concrete(e) for e in row] for row in derivation.hessian]
        data["hessian_verified"] = [[e.verification.ok for e in row] for row in derivation.hessian]
        data["hessian_at"] = (None if derivation.at is None
                              else [at(row) for row in derivation.hessian])
        data["hessian_steps"] = [_step_json(s, printing) for s in derivation.hessian_steps]
    if derivation.contrast:
        data["contrast"] = [{"topic": row.topic, "softmax": row.softmax, "bce": row.bce,
                             "evidence": row.evidence, "verified": row.ok}
                            for row in derivation.contrast]
    return json.dumps(data, indent=2, ensure_ascii=False)
