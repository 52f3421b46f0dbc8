"""Renders an Evaluation: a Rich summary, the step-by-step arithmetic, JSON and CSV text."""

from __future__ import annotations

import csv
import io
import json

from rich.console import Group
from rich.table import Table
from rich.text import Text

from xent_cli.data import Evaluation, WorkedSample


def _g(x: float) -> str:
    """Formats a number for reading (the machine formats keep every digit)."""
    return f"{x:.6g}"


def _finite(x: float | None) -> float | None:
    """Returns x, or None where it is infinite or undefined (JSON has no inf or NaN)."""
    return x if x is not None and x - x == 0 else None


def _reduction_note(evaluation: Evaluation) -> str:
    """Says what the reported loss and gradient are."""
    result = evaluation.result
    if result.reduction == "mean":
        return f"mean: total / {_g(result.divisor)}"
    if result.reduction == "sum":
        return "sum over the samples"
    return "none: one loss per sample (PyTorch returns the vector)"


def summary_table(evaluation: Evaluation) -> Table:
    """Returns the summary: n, k, reduction, loss, accuracy and, for labels, perplexity."""
    result, data = evaluation.result, evaluation.data
    table = Table(title=f"cross-entropy of {data.source}", show_header=False, title_justify="left")
    table.add_column("quantity", style="bold")
    table.add_column("value")
    table.add_row("samples (n)", str(evaluation.n))
    table.add_row("classes (k)", f"{evaluation.k}: {', '.join(data.class_names)}")
    targets = (f"labels from {data.target_source}" if data.labels is not None
               else f"soft targets from {data.target_source}")
    table.add_row("targets", targets)
    ignored = int(result.ignored.sum())
    if ignored:
        table.add_row("ignored", f"{ignored} (label {evaluation.ignore_index})")
    if evaluation.weight is not None:
        table.add_row("weight", ", ".join(_g(w) for w in evaluation.weight))
    if evaluation.label_smoothing:
        table.add_row("label smoothing", _g(evaluation.label_smoothing))
    table.add_row("reduction", _reduction_note(evaluation))
    if result.loss is not None:
        table.add_row("loss", f"{result.loss:.10g}")
    else:
        table.add_row("loss (sum)", f"{result.total:.10g}")
        mean = _finite(evaluation.mean_loss)
        table.add_row("loss (mean)", "undefined: no sample counts" if mean is None else f"{mean:.10g}")
    if evaluation.accuracy is not None:
        what = "accuracy" if data.labels is not None else "accuracy (vs argmax of targets)"
        table.add_row(what, f"{evaluation.accuracy:.4%}")
    if evaluation.perplexity is not None:
        table.add_row("perplexity", f"{evaluation.perplexity:.6g}  (exp of the mean loss)")
    table.add_row("dtype", evaluation.dtype)
    return table


def _identity(evaluation: Evaluation, sample: WorkedSample) -> str:
    """States gradient = scale × (p − y) for this sample, and where the scale comes from."""
    result = evaluation.result
    if sample.ignored:
        return "ignored: this sample adds no loss and no gradient"
    reasons = []
    if evaluation.weight is not None or evaluation.label_smoothing:
        reasons.append(f"this sample's target weights sum to {_g(sample.weight_sum)}")
    if result.reduction == "mean":
        reasons.append(f"the mean divides by {_g(result.divisor)}")
    else:
        reasons.append(f"reduction {result.reduction!r} keeps each sample's own gradient")
    return f"gradient = {_g(sample.scale)} × (p − y): {'; '.join(reasons)}"


def worked_sample(evaluation: Evaluation, sample: WorkedSample) -> Group:
    """Returns one sample's derivation, a row per step, a column per class."""
    names = evaluation.data.class_names
    target = (f"label {sample.label}" if sample.label is not None else "soft target")
    table = Table(title=f"sample {sample.sample} (line {sample.line}), {target}",
                  title_justify="left")
    table.add_column("step")
    for name in names:
        table.add_column(name, justify="right")
    rows = [
        ("logit z", sample.z),
        ("z − max z", sample.shifted),
        ("exp(z − max z)", sample.exps),
        ("p = exp / sum", sample.p),
        ("target y", sample.y),
        ("p − y", sample.p_minus_y),
        ("gradient", sample.grad),
    ]
    for label, values in rows:
        table.add_row(label, *(_g(v) for v in values))
    lines = [f"sum of exp = {_g(sample.exp_sum)}"]
    weighted = evaluation.weight is not None or bool(evaluation.label_smoothing)
    if sample.neg_log_p is not None:
        lines.append(f"−log p[{sample.label}] = −log {_g(sample.p[sample.label])} = "
                     f"{_g(sample.neg_log_p)}")
    if sample.ignored:
        pass
    elif weighted or sample.neg_log_p is None:
        lines.append(f"loss = −Σ_c y_c log p_c × {_g(sample.weight_sum)} = {_g(sample.loss)}"
                     + ("  (weights and smoothing applied)" if weighted else ""))
    lines.append(_identity(evaluation, sample))
    return Group(table, Text("\n".join(lines)), Text(""))


IDENTITY_NOTE = ("Every class j gets p_j − y_j, not only the label: the normaliser Σ exp(z) "
                 "depends on every logit.")


def steps(evaluation: Evaluation) -> Group:
    """Returns the worked samples, one after another, and the identity they illustrate."""
    return Group(*(worked_sample(evaluation, s) for s in evaluation.worked), Text(IDENTITY_NOTE))


def _fields(evaluation: Evaluation) -> dict:
    """Returns the summary as plain values for JSON and CSV."""
    result, data = evaluation.result, evaluation.data
    return {
        "source": data.source,
        "n": evaluation.n,
        "k": evaluation.k,
        "targets": "labels" if data.labels is not None else "soft",
        "reduction": result.reduction,
        "loss": result.loss,
        "loss_sum": result.total,
        "loss_mean": _finite(evaluation.mean_loss),
        "divisor": result.divisor,
        "accuracy": evaluation.accuracy,
        "perplexity": _finite(evaluation.perplexity),
        "ignored": int(result.ignored.sum()),
        "ignore_index": evaluation.ignore_index,
        "weight": list(evaluation.weight) if evaluation.weight is not None else None,
        "label_smoothing": evaluation.label_smoothing,
        "dtype": evaluation.dtype,
    }


def to_json(evaluation: Evaluation) -> str:
    """Returns the summary as one JSON object; for reduction 'none', loss is the per-sample list."""
    fields = _fields(evaluation)
    if evaluation.result.reduction == "none":
        fields["loss"] = [float(x) for x in evaluation.result.per_sample]
    return json.dumps(fields)


def to_csv(evaluation: Evaluation) -> str:
    """Returns the summary as a header row and one row; loss is empty for reduction 'none'."""
    fields = _fields(evaluation)
    fields["weight"] = ";".join(repr(w) for w in evaluation.weight or ())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(fields)
    writer.writerow("" if value is None else value for value in fields.values())
    return buffer.getvalue()


def per_sample_csv(evaluation: Evaluation) -> str:
    """Returns one row per sample: label, pred, loss, prob_c and grad_c, floats in repr.

    loss is PyTorch's reduction='none' value; grad_c is d(reported loss)/dz_c.
    """
    result, data = evaluation.result, evaluation.data
    k = evaluation.k
    header = ["sample", "line"]
    header += ["label"] if data.labels is not None else []
    header += ["pred", "loss"] + [f"prob_{c}" for c in range(k)] + [f"grad_{c}" for c in range(k)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    predictions = evaluation.predictions.tolist()
    per_sample = result.per_sample.tolist()
    probs = result.probs.tolist()
    grad = result.grad.tolist()
    labels = data.labels.tolist() if data.labels is not None else None
    for i, line in enumerate(data.lines):
        row = [i, line] + ([labels[i]] if labels is not None else [])
        row += [predictions[i], repr(per_sample[i])]
        row += [repr(x) for x in probs[i]] + [repr(x) for x in grad[i]]
        writer.writerow(row)
    return buffer.getvalue()
