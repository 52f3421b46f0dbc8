"""Renders a Summary of cross-entropy: a Rich summary, the step-by-step arithmetic, JSON and CSV text.

Softmax cross-entropy shows accuracy and perplexity; binary cross-entropy (multi-label) shows
exact match and Hamming loss instead, and works each class out on its own.
"""

from __future__ import annotations

import csv
import io
import json

from rich.console import Group
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from xent_cli.data import WorkedSample
from xent_cli.render import finite
from xent_cli.stream import BinaryWorkedSample, Summary


def _g(x: float) -> str:
    """Formats a number for reading (the machine formats keep every digit)."""
    return f"{x:.6g}"


MAX_LISTED = 12  # classes (names, weights, worked columns) shown in full; beyond, a selection


def _listed(items) -> str:
    """Joins items, the first three and the last of a long list around an ellipsis."""
    items = list(items)
    if len(items) > MAX_LISTED:
        items = items[:3] + ["…", items[-1]]
    return ", ".join(items)


def _reduction_note(summary: Summary) -> str:
    """Says what the reported loss and gradient are."""
    if summary.criterion == "bce":
        if summary.reduction == "mean":
            return f"mean over the N × k elements: total / {_g(summary.divisor)}"
        if summary.reduction == "sum":
            return "sum over the N × k elements"
        return "none: one loss per element (PyTorch returns the N × k array)"
    if summary.reduction == "mean":
        return f"mean: total / {_g(summary.divisor)}"
    if summary.reduction == "sum":
        return "sum over the samples"
    return "none: one loss per sample (PyTorch returns the vector)"


def summary_table(summary: Summary) -> Table:
    """Returns the summary: n, k, reduction, loss, accuracy and, for labels, perplexity.

    Binary cross-entropy has exact match and Hamming loss in place of accuracy and perplexity.
    """
    if summary.criterion == "bce":
        return _binary_summary_table(summary)
    table = _summary_head(summary, "cross-entropy")
    targets = (f"labels from {summary.target_source}" if summary.has_labels
               else f"soft targets from {summary.target_source}")
    table.add_row("targets", targets)
    if summary.ignored:
        table.add_row("ignored", f"{summary.ignored} (label {summary.ignore_index})")
    if summary.weight is not None:
        table.add_row("weight", _listed(_g(w) for w in summary.weight))
    if summary.label_smoothing:
        table.add_row("label smoothing", _g(summary.label_smoothing))
    _add_loss_rows(table, summary)
    if summary.accuracy is not None:
        what = "accuracy" if summary.has_labels else "accuracy (vs argmax of targets)"
        table.add_row(what, f"{summary.accuracy:.4%}")
    if summary.perplexity is not None:
        table.add_row("perplexity", f"{summary.perplexity:.6g}  (exp of the mean loss)")
    table.add_row("dtype", summary.dtype)
    return table


def _add_loss_rows(table: Table, summary: Summary) -> None:
    """Adds the reduction and the loss: the reduced loss, or for 'none' its sum and mean (the
    mean undefined where no sample counts)."""
    table.add_row("reduction", _reduction_note(summary))
    if summary.loss is not None:
        table.add_row("loss", f"{summary.loss:.10g}")
    else:
        table.add_row("loss (sum)", f"{summary.total:.10g}")
        mean = finite(summary.mean_loss)
        table.add_row("loss (mean)", "undefined: no sample counts" if mean is None else f"{mean:.10g}")


def _summary_head(summary: Summary, loss: str) -> Table:
    """Returns a summary table titled by the loss and the file, with its n and k rows."""
    table = Table(title=f"{loss} of {summary.source}", show_header=False, title_justify="left")
    table.add_column("quantity", style="bold")
    table.add_column("value")
    table.add_row("samples (n)", str(summary.n))
    table.add_row("classes (k)", f"{summary.k}: {_listed(summary.class_names)}")
    return table


def _binary_summary_table(summary: Summary) -> Table:
    """Returns the summary of binary cross-entropy: n, k, reduction, loss and the multi-label metrics."""
    table = _summary_head(summary, "binary cross-entropy")
    table.add_row("targets", f"one per class from {summary.target_source}")
    if summary.weight is not None:
        table.add_row("weight", _listed(_g(w) for w in summary.weight))
    if summary.pos_weight is not None:
        table.add_row("pos_weight", _listed(_g(w) for w in summary.pos_weight))
    _add_loss_rows(table, summary)
    table.add_row("exact match", f"{summary.exact_match:.4%}  (every class right: z > 0 ⇔ t > 0.5)")
    table.add_row("Hamming loss", f"{summary.hamming_loss:.4%}  (share of classes wrong)")
    table.add_row("dtype", summary.dtype)
    return table


def _identity(summary: Summary, sample: WorkedSample) -> str:
    """States gradient = scale × (p − y) for this sample, and where the scale comes from."""
    if sample.ignored:
        return "ignored: this sample adds no loss and no gradient"
    reasons = []
    if summary.weight is not None or summary.label_smoothing:
        reasons.append(f"this sample's target weights sum to {_g(sample.weight_sum)}")
    if summary.reduction == "mean":
        reasons.append(f"the mean divides by {_g(summary.divisor)}")
    else:
        reasons.append(f"reduction {summary.reduction!r} keeps each sample's own gradient")
    return f"gradient = {_g(sample.scale)} × (p − y): {'; '.join(reasons)}"


def _sample_name(sample) -> str:
    """Returns 'sample i (line l)', or 'sample i' in an array file, where i is the row."""
    return f"sample {sample.sample}" + ("" if sample.line is None else f" (line {sample.line})")


class _StepsByClass:
    """A worked sample's table: a row per step, a column per class.

    Beyond MAX_LISTED classes, or where every class's column would not fit the width it is
    drawn at (10 classes need some 150 characters: at 100, each number was cut to '1.552…'),
    the columns are the first two, the classes in keep (the target's, the prediction) and the
    last, with '…' where classes are left out.
    """

    def __init__(self, title: str, names, rows, keep=()):
        self.title, self.names, self.rows = title, names, rows
        k = len(names)
        picked = sorted({0, 1, k - 1, *(int(c) for c in keep if 0 <= c < k)})
        self.picked: list = []
        for c in picked:
            if self.picked and c != self.picked[-1] + 1:
                self.picked.append(None)  # a gap
            self.picked.append(c)

    def table(self, shown) -> Table:
        table = Table(title=self.title, title_justify="left")
        table.add_column("step")
        for c in shown:
            table.add_column("…" if c is None else self.names[c], justify="right")
        for label, values in self.rows:
            table.add_row(label, *("…" if c is None else _g(values[c]) for c in shown))
        return table

    def __rich_console__(self, console, options):
        if len(self.names) <= MAX_LISTED:
            every = self.table(range(len(self.names)))
            # measured unbounded: a table's measure is clamped to the width it is given
            natural = Measurement.get(console, options.update_width(1 << 20), every).maximum
            if natural <= options.max_width:
                yield every
                return
        yield self.table(self.picked)


def _steps_by_class(title: str, names, rows, keep=()) -> _StepsByClass:
    """Returns a worked sample's table, its columns chosen by the width it is drawn at."""
    return _StepsByClass(title, names, rows, keep)


def worked_sample(summary: Summary, sample: WorkedSample) -> Group:
    """Returns one sample's derivation, a row per step, a column per class."""
    names = summary.class_names
    target = (f"label {sample.label}" if sample.label is not None else "soft target")
    table = _steps_by_class(f"{_sample_name(sample)}, {target}", names, [
        ("logit z", sample.z),
        ("z − max z", sample.shifted),
        ("exp(z − max z)", sample.exps),
        ("p = exp / sum", sample.p),
        ("target y", sample.y),
        ("p − y", sample.p_minus_y),
        ("gradient", sample.grad),
    ], keep=(int(sample.y.argmax()), int(sample.z.argmax())))  # the target's main class, the guess
    lines = [f"sum of exp = {_g(sample.exp_sum)}"]
    weighted = summary.weight is not None or bool(summary.label_smoothing)
    if sample.neg_log_p is not None:
        p = _g(sample.p[sample.label])
        if p == "1" and sample.neg_log_p > 0:  # not '−log 1 = 4e-44'
            p = f"(1 − {_g(sample.rest)})"
        lines.append(f"−log p[{sample.label}] = −log {p} = {_g(sample.neg_log_p)}")
    if not sample.ignored and (weighted or sample.neg_log_p is None):
        # unweighted soft targets sum to 1: a factor '× 1' would only puzzle
        factor = f" × {_g(sample.weight_sum)}" if weighted else ""
        lines.append(f"loss = −Σ_c y_c log p_c{factor} = {_g(sample.loss)}"
                     + ("  (weights and smoothing applied)" if weighted else ""))
    lines.append(_identity(summary, sample))
    return Group(table, Text("\n".join(lines)), Text(""))


IDENTITY_NOTE = ("Every class j gets p_j − y_j, not only the label: the normaliser Σ exp(z) "
                 "depends on every logit.")


def binary_worked_sample(summary: Summary, sample: BinaryWorkedSample) -> Group:
    """Returns one sample's binary cross-entropy, a row per step, a column per class."""
    table = _steps_by_class(_sample_name(sample), summary.class_names, [
        ("logit z", sample.z),
        ("σ(z) = 1/(1+e^−z)", sample.sigma),
        ("target t", sample.t),
        ("loss ℓ", sample.elements),
        ("σ − t", sample.sigma_minus_t),
        ("gradient", sample.grad),
    ], keep=(int(sample.z.argmax()), *sample.t.nonzero()[0][:3]))  # and the first 3 yeses
    weighted = summary.weight is not None or summary.pos_weight is not None
    element = ("ℓ = −w [p_w t log σ + (1 − t) log(1 − σ)]" if weighted
               else "ℓ = −[t log σ + (1 − t) log(1 − σ)]")
    derivative = "w [(1 − t) σ − p_w t (1 − σ)]" if weighted else "(σ − t)"
    scale = (f" / {_g(sample.scale)} (the mean divides by N × k)" if summary.reduction == "mean"
             else f" (reduction {summary.reduction!r} keeps each element's own)")
    lines = [f"{element} per class; the sample's loss is their sum = {_g(sample.loss)}",
             f"gradient = {derivative}{scale}"]
    return Group(table, Text("\n".join(lines)), Text(""))


BINARY_NOTE = ("Each class is its own yes/no question: ∂ℓ_c/∂z_c = σ(z_c) − t_c involves only "
               "z_c (no normaliser couples the classes) and the targets need not sum to 1.")


def steps(summary: Summary) -> Group:
    """Returns the worked samples, one after another, and the identity they illustrate."""
    if summary.criterion == "bce":
        return Group(*(binary_worked_sample(summary, s) for s in summary.worked),
                     Text(BINARY_NOTE))
    return Group(*(worked_sample(summary, s) for s in summary.worked), Text(IDENTITY_NOTE))


def _fields(summary: Summary) -> dict:
    """Returns the summary as plain values for JSON and CSV."""
    if summary.criterion == "bce":
        return _binary_fields(summary)
    return {
        "source": summary.source,
        "n": summary.n,
        "k": summary.k,
        "targets": "labels" if summary.has_labels else "soft",
        "reduction": summary.reduction,
        "loss": summary.loss,
        "loss_sum": summary.total,
        "loss_mean": finite(summary.mean_loss),
        "divisor": finite(summary.divisor),
        "accuracy": summary.accuracy,
        "perplexity": finite(summary.perplexity),
        "ignored": summary.ignored,
        "ignore_index": summary.ignore_index,
        "weight": list(summary.weight) if summary.weight is not None else None,
        "label_smoothing": summary.label_smoothing,
        "dtype": summary.dtype,
        "criterion": "ce",  # last, so the columns before it keep their places
    }


def _binary_fields(summary: Summary) -> dict:
    """Returns a binary cross-entropy summary as plain values for JSON and CSV."""
    return {
        "source": summary.source,
        "n": summary.n,
        "k": summary.k,
        "targets": "per-class",
        "reduction": summary.reduction,
        "loss": summary.loss,
        "loss_sum": summary.total,
        "loss_mean": finite(summary.mean_loss),
        "divisor": finite(summary.divisor),
        "exact_match": summary.exact_match,
        "hamming_loss": summary.hamming_loss,
        "weight": list(summary.weight) if summary.weight is not None else None,
        "pos_weight": list(summary.pos_weight) if summary.pos_weight is not None else None,
        "dtype": summary.dtype,
        "criterion": "bce",
    }


def to_json(summary: Summary) -> str:
    """Returns the summary as one JSON object; for reduction 'none', loss is what PyTorch returns.
    notes holds what looks wrong in a valid input (probabilities given as logits), as on stderr.

    That is the per-sample list for softmax cross-entropy, the (N, k) rows for binary.
    """
    fields = _fields(summary)
    if summary.reduction == "none" and summary.criterion == "bce":
        fields["loss"] = summary.elements.astype(float).tolist()
    elif summary.reduction == "none":
        fields["loss"] = [float(x) for x in summary.per_sample]
    fields["notes"] = list(summary.notes)  # last, as on stderr: CSV's one row keeps to numbers
    return json.dumps(fields)


def to_csv(summary: Summary) -> str:
    """Returns the summary as a header row and one row; loss is empty for reduction 'none'."""
    fields = _fields(summary)
    for name in ("weight", "pos_weight"):
        if name in fields:
            fields[name] = ";".join(repr(w) for w in fields[name] or ())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(fields)
    writer.writerow("" if value is None else value for value in fields.values())
    return buffer.getvalue()
