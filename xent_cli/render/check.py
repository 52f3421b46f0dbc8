"""Renders CheckReports: a summary, the failing entries, the sweep, JSON, and a log-log plot."""

from __future__ import annotations

import io
import json
import os

from rich.console import Group
from rich.table import Table
from rich.text import Text

from xent_cli.errors import XentError
from xent_cli.gradcheck import STEP_SCALE_CAP, CheckReport, Diagnosis, Failure, method_name
from xent_cli.render import finite

FAILURES_SHOWN = 20

EXPLAIN = {
    "central": (
        "Central differences (f(z+h) − f(z−h)) / 2h err in two ways: truncation, about "
        "h²·|f'''|/6, shrinks with the step h; round-off, about ε·|f|/h (ε = 2.2e-16 in float64), "
        "grows as h shrinks. The default h ≈ ε^(1/3)·min(max(1, |z|), 30) balances the two, so "
        "about 10 digits are right. A wrong formula misses by far more; an error near the "
        "tolerance may be numeric: --method complex has no round-off arm, and --sweep shows the "
        "V."),
    "complex": (
        "The complex step Im f(z + ih) / h subtracts nothing, so round-off cannot cancel digits and "
        "h = 1e-20 leaves a truncation error (~h²) far below ε: the numeric values are right to "
        "machine precision, and a disagreement lies in the analytic side."),
    "richardson": (
        "Richardson extrapolation combines central differences at h, h/2 and h/4 so that their h² "
        "and h⁴ truncation terms cancel; the change made by the last step estimates the remaining "
        "error, and that estimate is added to the tolerance."),
}


def _g(x: float | None) -> str:
    return "—" if x is None else f"{x:.9g}"


def _e(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"


def _verdict(report: CheckReport) -> Text:
    if report.passed:
        return Text("PASSED", style="bold green")
    return Text("FAILED", style="bold red")


def summary(report: CheckReport) -> Table:
    """Returns what was checked against what, the tolerances, the largest errors and the verdict."""
    tol = report.tolerance
    table = Table(title=f"check of the {report.quantity}", show_header=False,
                  title_justify="left")
    table.add_column("quantity", style="bold")
    table.add_column("value")
    table.add_row("analytic", report.analytic_source)
    table.add_row("numeric", report.numeric_source)
    table.add_row("inputs", report.source)
    if report.loss == "bce":
        table.add_row("loss", "sigmoid binary cross-entropy, summed over each sample's classes")
    table.add_row("step h", f"{tol.eps:g}" + ("" if tol.method == "complex" else
                                               f" × {_step_rule(report)}"))
    # the round-off term is named where it passed an entry: elsewhere it changed nothing
    roundoff = report.roundoff_passed > 0
    table.add_row("tolerance", f"|analytic − numeric| ≤ {tol.atol:g} + {tol.rtol:g}·|numeric|"
                  + (" + round-off" if roundoff else "")
                  + (" + estimate" if report.max_error_estimate is not None else "")
                  + f"  ({tol.precision} defaults)")
    table.add_row("entries checked", str(report.entries))
    table.add_row("max abs error", _e(report.max_abs_err))
    table.add_row("max rel error", _e(report.max_rel_err))
    if roundoff:
        entries = "entry" if report.roundoff_passed == 1 else "entries"
        table.add_row("round-off", f"ε·(2|f| + m)/2h of the values differenced, up to "
                                   f"{_e(report.max_roundoff)}; {report.roundoff_passed} {entries} "
                                   f"pass by it alone")
    if report.max_error_estimate is not None:
        table.add_row("error estimate", f"{_e(report.max_error_estimate)} (largest)")
    for agreement in report.agreements:
        word = "agree" if agreement.passed else "DISAGREE"
        table.add_row("cross-check", f"{agreement.first} and {agreement.second} {word}: max "
                                     f"difference {_e(agreement.max_abs_diff)}")
    failed = f"{report.failed} of {report.entries}"
    if report.failed_off_label is not None and report.failed:
        failed += f" ({report.failed_off_label} off the label, " \
                  f"{report.failed - report.failed_off_label} on it)"
    table.add_row("failed", failed)
    table.add_row("result", _verdict(report))
    return table


def failures_table(report: CheckReport, limit: int = FAILURES_SHOWN) -> Table:
    """Returns the first failing entries: where, both values, and their errors."""
    shown = report.failures[:limit]
    more = report.failed - len(shown)
    caption = f"… and {more} more failing entries" if more > 0 else None
    numeric = "complex step" if report.tolerance.method == "complex" else "finite differences"
    sides = f"analytic: the code under test; numeric: {numeric}"
    if report.numeric_under_test:
        sides = f"analytic: xent's; numeric: {numeric} of the code under test"
    table = Table(title=f"failing entries ({sides})",
                  title_justify="left", caption=caption, caption_justify="left")
    table.add_column("sample", justify="right")
    has_labels = any(f.label is not None for f in shown)
    if has_labels:
        table.add_column("label", justify="right")
    table.add_column("class" if report.quantity != "Hessian" else "classes", justify="right")
    has_targets = any(f.target is not None for f in shown)
    if has_targets:
        table.add_column("target", justify="right")
    for name in ("analytic", "numeric", "abs error", "rel error"):
        table.add_column(name, justify="right", no_wrap=True)
    for failure in shown:
        row = [str(failure.sample)]
        if has_labels:
            row.append(str(failure.label))
        row.append(_where(failure))
        if has_targets:
            row.append(_g(failure.target))
        row += [_g(failure.analytic), _g(failure.numeric), _e(failure.abs_err), _e(failure.rel_err)]
        table.add_row(*row)
    return table


def _where(failure: Failure) -> str:
    if failure.cls is None:
        return "—"
    return str(failure.cls) if failure.column is None else f"{failure.cls}, {failure.column}"


def _step_rule(report: CheckReport) -> str:
    """Returns the factor of eps in a step as the report's inputs make it."""
    return f"min(max(1, |z|), {STEP_SCALE_CAP:g})" if report.step_capped else "max(1, |z|)"


def sweep_table(report: CheckReport) -> Group:
    """Returns the error of the numeric derivative at each step h, the best step marked."""
    best = report.best_step
    method = report.tolerance.method
    # a line above the table: as its title, it wrapped over three lines of the narrow columns
    title = Text(f"error of {method_name(method)} against the step h (h × {_step_rule(report)})"
                 if method != "complex" else "error of the complex step against the step h")
    table = Table()
    table.add_column("h", justify="right")
    table.add_column("max abs error", justify="right")
    table.add_column("")
    for point in report.sweep:
        table.add_row(f"{point.h:.0e}", _e(point.max_abs_err), "← best" if point.h == best else "")
    return Group(title, table)


def render(report: CheckReport, *, limit: int = FAILURES_SHOWN) -> Group:
    """Returns the whole report: summary, failing entries, notes and the sweep; the method's
    error is explained beside a sweep, or where every failure is near the tolerance."""
    parts: list = [summary(report)]
    if report.nonfinite:
        parts.append(Text(f"NaN/inf: {report.nonfinite}.", style="bold red"))
    for agreement in report.agreements:
        if agreement.note:
            parts.append(Text(f"{agreement.first}: {agreement.note}"))
    if report.failed:
        if limit:
            parts += [Text(), failures_table(report, limit)]
        parts.append(Text(_first_failure(report)))
    if report.sweep:
        parts += [Text(), sweep_table(report)]
    if report.sweep or (report.near_tolerance and report.tolerance.method != "complex"):
        parts += [Text(), Text(EXPLAIN[report.tolerance.method])]
    return Group(*parts)


def _first_failure(report: CheckReport) -> str:
    first = report.failures[0]
    text = f"First failure: {first.describe()}."
    if report.scale is not None:
        return text + " " + _scale_note(report)  # the cause, named: the notes below miss it
    if report.diagnosis is not None:
        return text + " " + diagnosis_note(report)
    text += _one_class(report)
    if report.loss == "bce" and report.quantity == "gradient":
        text += (" In binary cross-entropy each class is its own yes/no question: the derivative "
                 "by z_c is σ(z_c) − y_c (times the weights), from its own logit only, with no "
                 "softmax coupling the classes.")
    return text


def _one_class(report: CheckReport) -> str:
    """Says when every failing entry is in one class of a gradient: a slip in that column's code
    (a sign, an index) rather than in the formula."""
    classes = {failure.cls for failure in report.failures}
    if (report.quantity != "gradient" or report.k < 3 or len(classes) != 1 or None in classes
            or report.failed != len(report.failures) or report.failed < 2):
        return ""
    return (f" Every failing entry is in class {classes.pop()} ({report.failed} of {report.n} "
            f"samples); the other classes are right: look at what the code under test does to "
            f"that class's column.")


def _scale_note(report: CheckReport) -> str:
    """Names a constant factor between the code under test and xent, and its likely cause."""
    side, other, given = "analytic", "numeric", report.quantity
    source, divides, fix = "backward() of a", "", "(reduction='sum' or 'none')"
    if report.numeric_under_test:  # e.g. the Hessian of the gradient under test
        side, other, given = "numeric", "analytic", "gradient"
    if report.numeric_under_test and report.quantity == "gradient":  # the loss under test
        source, divides, given, fix = ("each sample's loss divided as a", " divides it", "loss",
                                       "(reduction='none')")
    cause = report.factor_cause
    if cause == "bce_mean":  # BCEWithLogitsLoss's mean
        return (f"Every {side} entry is 1/{report.n * report.k} of the {other} one (1/(N·k) for "
                f"N = {report.n} samples of k = {report.k} classes): that is {source} "
                f"reduction='mean' loss{divides}, which averages every element; give each "
                f"sample's own {given} {fix}.")
    if cause == "weighted_mean":
        return (f"Every {side} entry is 1/{_number(report.weighted_divisor)} of the {other} one "
                f"(1/Σ w_y, the labels' class weights summed): that is {source} weighted "
                f"reduction='mean' loss{divides}; give each sample's own {given} {fix}.")
    if cause == "mean":
        return (f"Every {side} entry is 1/{report.n} of the {other} one (1/N for N = "
                f"{report.n} samples): that is {source} reduction='mean' loss{divides}; give each "
                f"sample's own {given} {fix}.")
    if cause == "sign":
        gradient = (f"; the gradient of the loss is {'σ(z)' if report.loss == 'bce' else 'p'} − y"
                    if report.quantity == "gradient" else "")
        return f"Every {side} entry is -1 times the {other} one: the sign is flipped{gradient}."
    return (f"Every {side} entry is {report.factor:.6g} times the {other} one: a constant factor "
            f"is off.")


def _number(x: float) -> str:
    return f"{x:.6g}"


def _weights(weights) -> str:
    """Returns weights as --weight takes them, '?' for a class whose weight does not show."""
    return ",".join("?" if w is None else _number(w) for w in weights)


def _smoothing_cause(d: Diagnosis, report: CheckReport) -> str:
    eps, given = d.parameter, d.given
    if d.versus_given == "untold":
        return (f"your gradient smooths the targets and xent was not told: give --label-smoothing "
                f"{_number(eps)} (PyTorch's label_smoothing={_number(eps)}), or drop the smoothing "
                f"from the gradient.")
    if d.versus_given == "left_out":
        return (f"your gradient does not smooth the targets, and xent was given --label-smoothing "
                f"{_number(given)}: use (1 − ε)·y + ε/k in the gradient, or drop the option.")
    if d.versus_given == "spread":
        return (f"xent was given --label-smoothing {_number(given)}, and the gradient spreads that "
                f"ε over the k − 1 other classes (ε/(k − 1) each, the label keeping 1 − ε), "
                f"which is PyTorch's ε = {_number(eps)}; PyTorch's label_smoothing gives ε/k to "
                f"every class, the label's too: smooth as (1 − ε)·y + ε/k.")
    return f"xent was given --label-smoothing {_number(given)}, another ε."


def _shift_cause(d: Diagnosis, report: CheckReport) -> str:
    if report.k == 2:
        return "the one-hot marks the other class: the labels are swapped."
    if d.parameter < 0:
        return ("the one-hot sits one class below each label (class 0's at the last class): "
                "np.eye(k)[y - 1] reads the labels as 1-based; xent passes them 0-based, as "
                "PyTorch takes them.")
    return ("the one-hot sits one class above each label (the last class's at class 0): the "
            "labels were made 1-based; xent passes them 0-based, as PyTorch takes them.")


def _weights_cause(d: Diagnosis, report: CheckReport) -> str:
    if d.versus_given == "untold":
        unseen = [str(c) for c, w in enumerate(d.parameter) if w is None]
        text = ("your gradient weighs each sample by its class's weight and xent was not told: "
                f"give --weight {_weights(d.parameter)}")
        if unseen:
            text += f" (no sample shows the weight of class {', '.join(unseen)})"
        return text + ", or drop the weights from the gradient."
    if d.versus_given == "left_out":
        return (f"your gradient leaves out the class weights xent was given (--weight "
                f"{_weights(d.given)}): weigh each sample's terms as PyTorch's weight= does, or "
                f"drop the option.")
    return f"xent was given --weight {_weights(d.given)}: the gradient's weights are others."


# The cause of each of gradcheck.MISTAKES and its fix, after "Every analytic entry is <formula>: "
def _off_label(d: Diagnosis) -> str:
    """Returns the right ∂CE/∂z_j off the label ℓ, S·p_j − w_j·y_j with S = Σ_c w_c·y_c, as the
    options make it: y_j is 0 there unless smoothed (ε/k), and w is 1 unless weighted."""
    if d.weighted and d.smoothed:
        return "S·p_j − w_j·y_j (S = Σ_c w_c·y_c)"
    return {(False, False): "p_j", (False, True): "p_j − y_j",
            (True, False): "w_ℓ·p_j"}[d.weighted, d.smoothed]


def _ignore_index_read(index: int) -> str:
    """Says how code that knows no ignore index reads it: NumPy wraps a negative one around."""
    if index < 0:
        return (f" (y = {index} indexes class k − {-index} in NumPy, where PyTorch skips the "
                f"sample)")
    return (f" (label {index} is a class to your gradient; xent was given --ignore-index "
            f"{index}, whose samples PyTorch skips)")


CAUSES = {
    "label_smoothing": _smoothing_cause,
    "shifted_labels": _shift_cause,
    "class_weights": _weights_cause,
    "label_only": lambda d, report: (
        f"the normaliser log Σ exp(z) depends on every logit, so ∂CE/∂z_j = {_off_label(d)} "
        f"for j ≠ ℓ, and the gradient is p − y in every entry."),
    "ignored_kept": lambda d, report: (
        "the samples whose label is the ignore index count for nothing in the loss, so their "
        "rows of the gradient are 0" + (
            _ignore_index_read(d.given) if d.parameter == "onehot" else "")
        + ": set them to 0, as g[y == ignore_index] = 0."),
    "target_missing": lambda d, report: (
        "the target is never subtracted; the gradient is p − y."),
    "softmax_missing": lambda d, report: (
        "the softmax term is missing: ∂/∂z_j of log Σ exp(z) is p_j, so the gradient is p − y."),
    "by_probabilities": lambda d, report: (
        "that is ∂loss/∂p, the derivative by the probabilities; the chain rule through the "
        "softmax, ∂p/∂z = diag(p) − ppᵀ, turns it into ∂loss/∂z = p − y."),
    "softmax_axis": lambda d, report: (
        "the softmax runs down each class's column, over the samples; take it along each "
        "sample's row, over the classes (axis=1; PyTorch's dim=1)."),
    "sigmoid": lambda d, report: (
        "a sigmoid stands in for the softmax; σ(z) − y is binary cross-entropy's gradient "
        "(--loss bce), the softmax cross-entropy's is softmax(z) − y."),
    "normaliser_missing": lambda d, report: (
        "the softmax lacks its normaliser Σ exp(z); the gradient is exp(z) / Σ exp(z) − y."),
}


def _formula(d: Diagnosis, report: CheckReport) -> tuple[str, str]:
    """Returns the mistake's gradient with its parameter, and what the parameter is."""
    if d.mistake == "ignored_kept":
        kept = "p − onehot(y)" if d.parameter == "onehot" else "p"
        return f"the right gradient, but {kept} in the rows of ignored samples", ""
    if d.mistake == "label_smoothing":
        if d.versus_given == "left_out":
            return "p − y", ", unsmoothed"
        return d.formula, f" with ε = {_number(d.parameter)}"
    if d.mistake == "shifted_labels":
        if report.k == 2:
            return "p − onehot(1 − y)", ""
        return f"p − onehot(y {'−' if d.parameter < 0 else '+'} 1)", ""
    if d.mistake == "class_weights":
        if d.versus_given == "left_out":
            return "the unweighted gradient", ""
        shown = _weights(d.parameter).replace(",", ", ")
        return "the gradient with class weights", f" w = ({shown})"
    if d.weighted and d.smoothed:  # each class's part of y carries its own class's weight
        return d.formula, (" (weighted as PyTorch's weight= does: y_c as w_c·y_c, p as S·p with "
                           "S = Σ_c w_c·y_c)")
    where = " (times each sample's weight)" if d.weighted else ""
    return d.formula, where


def diagnosis_note(report: CheckReport) -> str:
    """Names the typical mistake that explains every entry, and its fix."""
    d = report.diagnosis
    formula, where = _formula(d, report)
    if d.divisor is not None:
        formula = f"({formula}) / {_number(d.divisor)}" if " " in formula else \
            f"{formula} / {_number(d.divisor)}"
    text = f"Every analytic entry is {formula}{where}: {CAUSES[d.mistake](d, report)}"
    if d.divisor is not None:
        text += (f" The / {_number(d.divisor)} is backward() of a reduction='mean' loss; give "
                 f"each sample's own gradient (reduction='sum' or 'none').")
    return text


def fields(report: CheckReport) -> dict:
    """Returns the report as plain values."""
    tol = report.tolerance
    return {
        "passed": report.passed,
        "loss": report.loss,
        "quantity": report.quantity,
        "method": tol.method,
        "eps": tol.eps,
        "step_cap": STEP_SCALE_CAP if report.step_capped else None,  # h = eps·min(max(1, |z|), cap)
        "rtol": tol.rtol,
        "atol": tol.atol,
        "precision": tol.precision,
        "analytic": report.analytic_source,
        "numeric": report.numeric_source,
        "inputs": report.source,
        "n": report.n,
        "k": report.k,
        "entries": report.entries,
        "failed": report.failed,
        "failed_off_label": report.failed_off_label,
        "scale": report.scale,
        "diagnosis": _diagnosis_fields(report),
        "max_abs_err": finite(report.max_abs_err),
        "max_rel_err": finite(report.max_rel_err),
        "max_error_estimate": report.max_error_estimate,
        "max_roundoff": report.max_roundoff,  # ε·(2|f| + m)/2h, added to the tolerance
        "roundoff_passed": report.roundoff_passed,  # entries within it only
        "nonfinite": report.nonfinite,
        "cross_checks": [{"first": a.first, "second": a.second,
                          "max_abs_diff": finite(a.max_abs_diff), "passed": a.passed,
                          "note": a.note} for a in report.agreements],
        "failures": [{"sample": f.sample, "class": f.cls, **({"column": f.column}
                      if f.column is not None else {}), "label": f.label,
                      **({"target": f.target} if f.target is not None else {}),
                      "analytic": finite(f.analytic), "numeric": finite(f.numeric),
                      "abs_err": finite(f.abs_err), "rel_err": finite(f.rel_err)}
                     for f in report.failures],
        "sweep": [{"h": p.h, "max_abs_err": finite(p.max_abs_err)} for p in report.sweep],
        "best_h": report.best_step,
    }


def _diagnosis_fields(report: CheckReport) -> dict | None:
    d = report.diagnosis
    if d is None:
        return None
    parameter = list(d.parameter) if isinstance(d.parameter, tuple) else d.parameter
    given = list(d.given) if isinstance(d.given, tuple) else d.given
    return {"mistake": d.mistake, "formula": d.formula, "parameter": parameter, "given": given,
            "divisor": d.divisor, "max_abs_diff": d.max_abs_diff, "note": diagnosis_note(report)}


def to_json(report: CheckReport, hessian: CheckReport | None = None) -> str:
    """Returns one JSON object; with a Hessian check, its report sits under 'hessian'."""
    out = fields(report)
    if hessian is not None:
        out["hessian"] = fields(hessian)
        out["passed"] = report.passed and hessian.passed
    return json.dumps(out)


def plot_format(path: str) -> str:
    """Returns the image format path's extension names for --plot; raises XentError where
    matplotlib is missing or knows no such format (the CLI asks before the check runs)."""
    try:
        import matplotlib
    except ImportError:
        raise XentError("--plot needs matplotlib: pip install 'xent-cli[plot]'") from None
    matplotlib.use("Agg")
    from matplotlib.backend_bases import FigureCanvasBase

    # matplotlib picks the format by extension: an unknown one is its ValueError, a missing one
    # silently writes PATH.png; both are the user's to fix, before anything is computed
    formats = FigureCanvasBase.get_supported_filetypes()
    extension = os.path.splitext(path)[1].lstrip(".").lower()
    if extension not in formats:
        raise XentError(f"--plot {path}: the name must end in an image format's extension: "
                        + ", ".join(f".{name}" for name in sorted(formats)))
    return extension


def plot_sweep(report: CheckReport, path: str) -> bytes:
    """Returns a log-log plot of the sweep (error against h), in the image format path's
    extension names; needs matplotlib."""
    extension = plot_format(path)
    from matplotlib import pyplot

    points = [p for p in report.sweep if p.max_abs_err > 0]
    figure, axes = pyplot.subplots(figsize=(6, 4))
    axes.loglog([p.h for p in points], [p.max_abs_err for p in points], "o-")
    best = report.best_step
    if best is not None:
        axes.axvline(best, linestyle=":", color="grey", label=f"best h = {best:.0e}")
        axes.legend()
    axes.set_xlabel("step h")
    axes.set_ylabel("max |analytic − numeric|")
    axes.set_title(f"{method_name(report.tolerance.method)}: truncation against round-off")
    axes.grid(True, which="both", alpha=0.3)
    image = io.BytesIO()
    try:
        figure.savefig(image, format=extension, dpi=120, bbox_inches="tight")
    finally:
        pyplot.close(figure)
    return image.getvalue()
