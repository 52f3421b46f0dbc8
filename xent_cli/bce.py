"""Binary cross-entropy with logits, with the semantics of PyTorch's ``binary_cross_entropy_with_logits``.

Every class of every sample is its own yes/no question: σ(z) = 1 / (1 + e^{-z}) is the
probability of "yes", and with target t in [0, 1], class weight w and positive weight p_w,

    ℓ = −w [p_w t log σ(z) + (1 − t) log(1 − σ(z))] = w [p_w t softplus(−z) + (1 − t) softplus(z)]

since −log σ(z) = softplus(−z) and −log(1 − σ(z)) = softplus(z). Its derivative is

    ∂ℓ/∂z = w [(1 − t) σ(z) − p_w t σ(−z)]        (= w (σ(z) − t) when p_w = 1),

which involves only the element's own logit: unlike the softmax, the classes do not couple and a
sample's targets need not sum to 1. 'mean' divides the sum over all N × k elements by N × k,
'sum' returns it, 'none' returns the (N, k) elements.

Both forms are written so that no term cancels another: softplus(x) = max(x, 0) + log1p(e^{−|x|})
and σ(±z) come from the same e^{−|z|}, so every finite logit (±1e300 included) gives a finite loss
and gradient, and a confident right answer keeps its tiny loss (PyTorch's (1 − t) z + softplus(−z)
rounds e.g. z = −40, t = 0 to 0, where the loss is 4.2e−18).

Where xent departs from PyTorch, on purpose: logits must be finite and targets in [0, 1]
(PyTorch takes any number and returns a meaningless loss); these are InputErrors naming the
sample and class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from xent_cli.errors import InputError
from xent_cli.losses import REDUCTIONS, _first_bad, _weight


@dataclass(frozen=True)
class BinaryCrossEntropyResult:
    """The loss, its elements and its gradient with respect to the logits."""

    reduction: str
    loss: float | None  # the reduced loss for 'mean' and 'sum'; None for 'none'
    elements: np.ndarray  # (N, k) PyTorch's reduction='none'
    grad: np.ndarray  # (N, k) d loss / d z; for 'none', each element's own derivative
    total: float  # sum of all elements
    divisor: float  # what 'mean' divides total by: N × k
    logits: np.ndarray = field(repr=False, compare=False)  # (N, k) z, validated

    @cached_property
    def per_sample(self) -> np.ndarray:
        """(N,) each sample's loss: the sum over its classes."""
        return self.elements.sum(axis=1)

    @cached_property
    def probs(self) -> np.ndarray:
        """(N, k) σ(z) in the dtype of the gradient."""
        return sigmoid(self.logits.astype(self.grad.dtype, copy=False))


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Returns σ(z) = 1 / (1 + e^{-z}) elementwise, without overflow for any z."""
    z = np.asarray(z)
    small = np.exp(-np.abs(z))  # in (0, 1]: never overflows
    return np.where(z >= 0, 1 / (1 + small), small / (1 + small))


def binary_cross_entropy(z, target, *, weight=None, pos_weight=None, reduction: str = "mean",
                         dtype=np.float64) -> BinaryCrossEntropyResult:
    """Returns the binary cross-entropy of logits z (N, k) against targets t (N, k) in [0, 1].

    weight and pos_weight are per class (k,), as PyTorch broadcasts them over the rows.
    Raises InputError, with the sample and class, on bad input.
    """
    if reduction not in REDUCTIONS:
        raise InputError(f"reduction {reduction!r} is not one of {', '.join(REDUCTIONS)}")
    dtype = np.dtype(dtype)
    z, t = validate(z, target, dtype)
    n, k = z.shape
    divisor = mean_divisor(n, k)
    if reduction == "mean" and divisor == 0:
        raise InputError("there are no samples: the mean is undefined")
    elements, grad = elements_and_gradient(z, t, weight=weight, pos_weight=pos_weight,
                                           dtype=dtype)
    with np.errstate(over="ignore"):  # refused just below
        total = elements.sum(dtype=dtype)
    if not np.isfinite(total):
        raise InputError(f"the loss overflows {dtype.name}; the logits or weights are too large")
    if reduction == "mean":
        grad /= dtype.type(divisor)
    loss = float(total / divisor) if reduction == "mean" else float(total) if reduction == "sum" else None
    return BinaryCrossEntropyResult(reduction=reduction, loss=loss, elements=elements, grad=grad,
                                    total=float(total), divisor=float(divisor), logits=z)


def mean_divisor(n: int, k: int) -> int:
    """Returns what 'mean' divides the summed elements of n samples by: each of the n × k counts."""
    return n * k


def validate(z, target, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Returns logits and targets as (N, k) arrays of dtype; non-finite z, t outside [0, 1] are errors."""
    dtype = np.dtype(dtype)
    try:
        z = np.asarray(z, dtype=np.float64 if np.asarray(z).dtype.kind != "f" else None)
        t = np.asarray(target, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("logits and targets must be numbers") from None
    if z.ndim != 2 or z.shape[1] < 1:
        raise InputError(f"logits must be a 2-D array (samples x classes), got shape {z.shape}")
    if t.shape != z.shape:
        raise InputError(f"targets must have shape {z.shape} like the logits, got {t.shape}")
    with np.errstate(over="ignore"):
        cast = z.astype(dtype, copy=False)
    with np.errstate(invalid="ignore"):  # nan compares false: the finite check names it
        outside = (t < 0) | (t > 1)
    _first_bad((~np.isfinite(z),
                "logit is not a finite number; binary cross-entropy needs finite logits", True),
               (np.isinf(cast), f"logit does not fit in {dtype.name}", True),
               (~np.isfinite(t), "target is not a finite number"),
               (outside, "target is outside [0, 1]"))
    return cast, t.astype(dtype, copy=False)


def elements_and_gradient(z: np.ndarray, t: np.ndarray, *, weight=None, pos_weight=None,
                          dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Returns each element's loss and its derivative, unreduced; z and t must be validated."""
    dtype = np.dtype(dtype)
    k = z.shape[1]
    small = np.exp(-np.abs(z))  # e^{-|z|}: σ(±z) and softplus(±z) all come from it
    log_term = np.log1p(small)
    sigma = np.where(z >= 0, 1 / (1 + small), small / (1 + small))  # σ(z)
    sigma_neg = np.where(z >= 0, small / (1 + small), 1 / (1 + small))  # σ(−z) = 1 − σ(z)
    softplus_pos = np.maximum(z, 0) + log_term  # softplus(z) = −log(1 − σ(z))
    softplus_neg = np.maximum(-z, 0) + log_term  # softplus(−z) = −log σ(z)
    positive = t if pos_weight is None else t * _weight(pos_weight, k, dtype)
    with np.errstate(over="ignore"):  # an overflow shows in the total, which is checked
        elements = (1 - t) * softplus_pos + positive * softplus_neg
        grad = (1 - t) * sigma - positive * sigma_neg
        if weight is not None:
            w = _weight(weight, k, dtype)
            elements *= w
            grad *= w
    return elements.astype(dtype, copy=False), grad.astype(dtype, copy=False)


def predictions(z: np.ndarray) -> np.ndarray:
    """Returns the multi-hot prediction: class c is predicted when σ(z_c) > 1/2, i.e. z_c > 0."""
    return np.asarray(z) > 0


def decided(t: np.ndarray) -> np.ndarray:
    """Returns the multi-hot truth of targets: t > 1/2 (a probability target counts as its nearer label)."""
    return np.asarray(t) > 0.5


def exact_match(z, target) -> float:
    """Returns the share of samples whose every class is predicted right (subset accuracy)."""
    hits = (predictions(z) == decided(target)).all(axis=1)
    return float(hits.mean())


def hamming_loss(z, target) -> float:
    """Returns the share of (sample, class) elements predicted wrong."""
    return float((predictions(z) != decided(target)).mean())
