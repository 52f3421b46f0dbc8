"""Softmax cross-entropy and its gradient with the semantics of PyTorch's ``F.cross_entropy``.

Every sample i has coefficients a_ic >= 0 and loss_i = -sum_c a_ic * log p_ic, p = softmax(z_i):

- index target y_i: a_ic = (1 - eps) * w[y_i] * [c = y_i] + (eps / k) * w[c], which is
  PyTorch's (1 - eps) * nll_i + (eps / k) * smooth_i; ignored samples (y_i == ignore_index)
  have a_i = 0 and are not counted;
- soft target t_i (a probability row): a_ic = w[c] * t_ic, with t <- t * (1 - eps) + eps / k.

The gradient of loss_i is dloss_i/dz_ic = (sum_c' a_ic') * p_ic - a_ic. For every class j,
not only the target, it carries p_ij: the normaliser sum_n exp(z_in) depends on every z_ij.
'mean' divides the total by the sum of the target-class weights of the counted samples (index
targets) or by N (soft targets); 'sum' returns the total; 'none' returns every sample's loss.

Where xent departs from PyTorch, it does so on purpose:

- A logit of -inf masks its class: 0 * log 0 counts as 0, so a masked class with a zero
  coefficient adds nothing (PyTorch's soft-target path gives NaN there). A masked class with a
  positive coefficient (the target class, or any weighted class under smoothing) makes the loss
  infinite: that is an InputError naming the sample, never a silent inf or NaN.
- 'mean' over samples that are all ignored (PyTorch: NaN) is an InputError; 'sum' gives 0.
- Soft target rows must be >= 0 and sum to 1 within SOFT_TARGET_TOLERANCE * k.

The computation runs in the requested dtype, as torch would for float32 logits. The log-softmax
subtracts each row's maximum, so every finite float64 logit (+-1e300 included) gives a finite
loss and gradient; only a loss that truly exceeds the dtype's range is reported as an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xent_cli.errors import InputError

REDUCTIONS = ("mean", "sum", "none")

# How far a soft target row's sum may stray from 1, per class (rows are often rounded text).
SOFT_TARGET_TOLERANCE = 1e-6


@dataclass(frozen=True)
class CrossEntropyResult:
    """The loss, its per-sample parts and its gradient with respect to the logits."""

    reduction: str
    loss: float | None  # the reduced loss for 'mean' and 'sum'; None for 'none'
    per_sample: np.ndarray  # (N,) PyTorch's reduction='none' (weights and smoothing applied)
    grad: np.ndarray  # (N, k) d loss / d z; for 'none', each sample's own gradient
    probs: np.ndarray  # (N, k) softmax(z)
    log_probs: np.ndarray  # (N, k) log_softmax(z)
    total: float  # sum of per_sample
    divisor: float  # what 'mean' divides total by; kept so chunks combine exactly
    ignored: np.ndarray  # (N,) bool


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Returns log softmax(z) row by row: z - max - log sum exp(z - max).

    The largest entry of each row contributes exactly 1 to the sum, so the log is a log1p of the
    rest: a confident prediction keeps its tiny loss instead of rounding it to 0.
    A logit of -inf gives -inf; a row of only -inf has no distribution (NaN).
    """
    z = np.asarray(z)
    top = z.argmax(axis=1)[:, None]
    with np.errstate(over="ignore"):  # a spread beyond the dtype's range gives -inf, as it must
        shifted = z - np.take_along_axis(z, top, axis=1)
    rest = np.exp(shifted)
    np.put_along_axis(rest, top, 0, axis=1)
    shifted -= np.log1p(rest.sum(axis=1, keepdims=True))
    return shifted


def softmax(z: np.ndarray) -> np.ndarray:
    """Returns softmax(z) row by row, from the stable log-softmax."""
    return np.exp(log_softmax(z))


def coefficients(target: np.ndarray, k: int, weight: np.ndarray, label_smoothing: float,
                 ignored: np.ndarray) -> np.ndarray:
    """Returns a (N, k) with loss_i = -sum_c a_ic log p_ic; targets must be validated already."""
    eps = weight.dtype.type(label_smoothing)
    if target.ndim == 2:
        return weight * (target * (1 - eps) + eps / k)
    a = np.zeros((len(target), k), dtype=weight.dtype)
    if eps:
        a += (eps / k) * weight
    y = np.where(ignored, 0, target)[:, None]
    np.put_along_axis(a, y, np.take_along_axis(a, y, axis=1) + (1 - eps) * weight[y], axis=1)
    a[ignored] = 0
    return a


def cross_entropy(z, target, *, weight=None, ignore_index: int = -100,
                  label_smoothing: float = 0.0, reduction: str = "mean",
                  dtype=np.float64) -> CrossEntropyResult:
    """Returns the cross-entropy of logits z (N, k) against targets, and its gradient.

    target is an integer array (N,) of class indices or a float array (N, k) of class
    probabilities (soft targets). Raises InputError, with the sample and class, on bad input.
    """
    if reduction not in REDUCTIONS:
        raise InputError(f"reduction {reduction!r} is not one of {', '.join(REDUCTIONS)}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise InputError(f"label smoothing {label_smoothing} is outside [0, 1]")
    dtype = np.dtype(dtype)
    z = _logits(z, dtype)
    n, k = z.shape
    weight = _weight(weight, k, dtype)
    target, ignored = _target(target, n, k, ignore_index, dtype)

    if target.ndim == 2:
        divisor = dtype.type(n)
    else:
        divisor = weight[target[~ignored]].sum(dtype=dtype)
    if reduction == "mean" and not divisor > 0:
        raise InputError(_no_mean_reason(n, ignored, ignore_index))

    log_probs = log_softmax(z)
    probs = np.exp(log_probs)
    a = coefficients(target, k, weight, label_smoothing, ignored)
    masked = np.isneginf(log_probs)
    if masked.any():
        _refuse_infinite_loss(z, masked & (a > 0))
        log_probs_finite = np.where(masked, 0, log_probs)  # 0 * log 0 = 0
    else:
        log_probs_finite = log_probs
    per_sample = -np.einsum("ic,ic->i", a, log_probs_finite)
    per_sample += 0  # ignored samples: -0 becomes 0
    grad = probs * a.sum(axis=1, keepdims=True)
    grad -= a
    total = per_sample.sum(dtype=dtype)
    if not np.isfinite(total):
        raise InputError(f"the loss overflows {dtype.name}; the logits or weights are too large")

    loss = None
    if reduction == "mean":
        loss = float(total / divisor)
        grad /= divisor
    elif reduction == "sum":
        loss = float(total)
    return CrossEntropyResult(
        reduction=reduction, loss=loss, per_sample=per_sample, grad=grad, probs=probs,
        log_probs=log_probs, total=float(total), divisor=float(divisor), ignored=ignored,
    )


def accuracy(z, labels, ignore_index: int = -100) -> float:
    """Returns the share of non-ignored samples whose largest logit is the label's.

    Ties go to the first largest class, as numpy's and torch's argmax do.
    """
    z = _logits(z, np.dtype(np.float64))
    n, k = z.shape
    labels, ignored = _target(labels, n, k, ignore_index, z.dtype)
    if labels.ndim != 1:
        raise InputError("accuracy needs class-index labels, not soft targets")
    if ignored.all():
        raise InputError(_no_mean_reason(n, ignored, ignore_index))
    hits = z.argmax(axis=1) == labels
    return float(hits[~ignored].mean())


def _logits(z, dtype: np.dtype) -> np.ndarray:
    """Returns z as a (N, k) array of dtype; NaN, +inf and rows of only -inf are errors."""
    try:
        raw = np.asarray(z, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("logits must be numbers") from None
    if raw.ndim != 2:
        raise InputError(f"logits must be a 2-D array (samples x classes), got shape {raw.shape}")
    if raw.shape[1] < 2:
        raise InputError(f"there must be at least 2 classes, got {raw.shape[1]}")
    _first_bad(np.isnan(raw), "logit is NaN; only -inf (a masked class) is allowed")
    _first_bad(np.isposinf(raw), "logit is +inf; only -inf (a masked class) is allowed")
    _first_bad(np.isneginf(raw).all(axis=1, keepdims=True),
               "every logit is -inf: all classes are masked")
    if raw.dtype == dtype:
        return raw
    with np.errstate(over="ignore"):
        z = raw.astype(dtype)
    _first_bad(np.isinf(z) & ~np.isinf(raw), f"logit does not fit in {dtype.name}")
    return z


def _weight(weight, k: int, dtype: np.dtype) -> np.ndarray:
    """Returns the class weights as (k,) of dtype, all ones when none are given."""
    if weight is None:
        return np.ones(k, dtype=dtype)
    weight = np.asarray(weight, dtype=np.float64)
    if weight.shape != (k,):
        raise InputError(f"weight must have one entry per class ({k}), got shape {weight.shape}")
    bad = np.flatnonzero(~np.isfinite(weight) | (weight < 0))
    if bad.size:
        c = bad[0]
        raise InputError(f"weight {weight[c]} is not a finite number >= 0", column=f"class {c}")
    return weight.astype(dtype)


def _target(target, n: int, k: int, ignore_index: int,
            dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Returns validated targets (int (N,) or dtype (N, k)) and the ignored mask (N,)."""
    target = np.asarray(target)
    if target.ndim == 2:
        return _soft_target(target, n, k, dtype), np.zeros(n, dtype=bool)
    if target.ndim != 1 or len(target) != n:
        raise InputError(f"targets must be {n} class indices or a {n} x {k} array of "
                         f"probabilities, got shape {target.shape}")
    if not np.issubdtype(target.dtype, np.integer):
        try:
            as_float = target.astype(np.float64)
        except (TypeError, ValueError):
            raise InputError("labels must be integer class indices") from None
        fractional = ~np.isfinite(as_float) | (as_float != np.round(as_float))
        _first_bad(fractional[:, None], "label is not an integer")
        target = as_float.astype(np.int64)
    ignored = target == ignore_index
    bad = np.flatnonzero(~ignored & ((target < 0) | (target >= k)))
    if bad.size:
        i = bad[0]
        raise InputError(f"label {target[i]} is not a class index 0..{k - 1} "
                         f"(nor the ignore index {ignore_index})", sample=int(i))
    return target, ignored


def _soft_target(t: np.ndarray, n: int, k: int, dtype: np.dtype) -> np.ndarray:
    """Returns soft targets as (N, k) of dtype; rows must be probabilities."""
    if t.shape != (n, k):
        raise InputError(f"soft targets must have shape ({n}, {k}) like the logits, got {t.shape}")
    try:
        t = t.astype(np.float64)
    except (TypeError, ValueError):
        raise InputError("soft targets must be numbers") from None
    _first_bad(~np.isfinite(t), "target probability is not a finite number")
    _first_bad(t < 0, "target probability is negative")
    sums = t.sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1) > SOFT_TARGET_TOLERANCE * k)
    if off.size:
        i = off[0]
        raise InputError(f"target probabilities sum to {sums[i]:.9g}, not 1", sample=int(i))
    return t.astype(dtype)


def _first_bad(bad: np.ndarray, message: str) -> None:
    """Raises InputError at the first (sample, class) where bad is True."""
    if bad.any():
        i, c = np.argwhere(bad)[0]
        column = f"class {c}" if bad.shape[1] > 1 else None
        raise InputError(message, sample=int(i), column=column)


def _refuse_infinite_loss(z: np.ndarray, infinite: np.ndarray) -> None:
    """Raises InputError where a class with log p = -inf has a positive coefficient."""
    if infinite.any():
        i, c = np.argwhere(infinite)[0]
        if np.isneginf(z[i, c]):
            why = "class is masked (logit -inf) but counts in the loss: the loss is infinite"
        else:
            why = (f"logit is so far below the row's largest that its log-probability "
                   f"overflows {z.dtype.name}: the loss is infinite")
        raise InputError(why, sample=int(i), column=f"class {c}")


def _no_mean_reason(n: int, ignored: np.ndarray, ignore_index: int) -> str:
    """Says why a mean over the samples is undefined."""
    if n == 0:
        return "there are no samples: the mean is undefined"
    if ignored.all():
        return (f"every sample is ignored (label {ignore_index}): the mean is undefined; "
                f"use reduction 'sum'")
    return "the target-class weights of the counted samples sum to 0: the mean is undefined"
