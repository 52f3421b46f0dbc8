"""Numeric verification of a cross-entropy gradient: finite differences, complex step, Richardson.

Two losses share the machinery: the softmax cross-entropy ('ce') and the sigmoid binary
cross-entropy summed over a sample's classes ('bce'); a Problem says which, and loss_function,
gradient_function and xent_hessian pick the matching formulas.

Per-sample losses are independent, so one derivative column serves every sample at once:
perturbing column c of every row and evaluating the loss on the whole batch gives
dloss_i/dz_ic for all i. A gradient of N x k entries costs 2k loss evaluations (central),
k (complex step) or 6k (Richardson), never N·k.

A check compares an analytic gradient with a numeric one entry by entry, as torch.autograd.gradcheck
does: entry (i, c) fails when |analytic - numeric| > atol + rtol·|numeric| + round-off (+ the error
estimate, for Richardson), the round-off being what the differenced values carry,
ε·(2|f| + m_c) / 2h, m_c the size of what the loss computes from z_c. It returns a CheckReport;
the caller decides what to print and how to exit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from xent_cli import bce, data, losses, usercode
from xent_cli.errors import ExpressionError, InputError, XentError

METHODS = ("central", "complex", "richardson")

LOSSES = ("ce", "bce")

# The step and tolerances each method needs to be both sound and sharp, per precision of the code
# under test. central: h = cbrt(machine eps) balances truncation (h²) against round-off (eps/h);
# complex: no subtraction, so h can be tiny and the result is exact to round-off; richardson:
# extrapolation cancels the h² term, so a larger h keeps round-off low.
DEFAULTS = {
    ("central", "float64"): (6e-6, 1e-5, 1e-8),
    ("central", "float32"): (5e-3, 1e-3, 1e-3),
    ("complex", "float64"): (1e-20, 1e-9, 1e-12),
    ("complex", "float32"): (1e-20, 1e-4, 1e-5),
    ("richardson", "float64"): (1e-3, 1e-8, 1e-10),
    ("richardson", "float32"): (5e-2, 1e-3, 1e-3),
}

SWEEP_STEPS = tuple(10.0 ** -e for e in range(1, 14))  # 1e-1 ... 1e-13

# The step grows with |z| up to this, no further: round-off grows as ε·|z|, but the curvature of
# the softmax and sigmoid losses does not (their third derivatives stay below S/10), so beyond it
# a larger step costs more in truncation than it saves in round-off. Uncapped, xent's own
# gradient failed its check at near-ties of 3,000 (120 of 200 entries) and a right float32 loss
# at near-ties of 100 (180 of 200); capped at 30, none up to 10^4.
STEP_SCALE_CAP = 30.0

FAILURES_KEPT = 1000  # a report lists this many failing entries; it counts them all

Function = Callable[[np.ndarray], np.ndarray]  # z (N, k) -> (N,) losses or (N, k) gradients


@dataclass(frozen=True)
class Tolerance:
    """The step h and the tolerances of one check."""

    method: str
    eps: float
    rtol: float
    atol: float
    precision: str  # the dtype the defaults were chosen for
    # the dtype of the function differentiated: its steps are those between z ± h as it holds them
    step_precision: str = "float64"


def tolerance(method: str, precision: str = "float64", *, eps: float | None = None,
              rtol: float | None = None, atol: float | None = None,
              step_precision: str | None = None) -> Tolerance:
    """Returns the method's defaults for the precision, overridden where given.

    step_precision is the precision of the function differentiated, when it differs from that of
    the code under test: the step suits the function, the tolerances the code under test.
    """
    if method not in METHODS:
        raise InputError(f"method {method!r} is not one of {', '.join(METHODS)}")
    _, default_rtol, default_atol = DEFAULTS[method, precision]
    default_eps = DEFAULTS[method, step_precision or precision][0]
    return Tolerance(method=method, eps=default_eps if eps is None else eps,
                     rtol=default_rtol if rtol is None else rtol,
                     atol=default_atol if atol is None else atol, precision=precision,
                     step_precision=step_precision or precision)


@dataclass(frozen=True)
class Problem:
    """Logits and targets with the options of the loss whose gradient is checked.

    For 'ce', ``a`` holds the coefficients of loss_i = -sum_c a_ic log softmax(z_i)_c (weights,
    smoothing and ignored samples applied). For 'bce', loss_i = sum_c a_ic softplus(-z_ic) +
    b_ic softplus(z_ic): ``a`` = w·p_w·t weighs -log σ(z), ``b`` = w·(1 - t) weighs -log(1 - σ(z)).
    ``grad`` is xent's analytic gradient, row i of sample i's loss.
    """

    z: np.ndarray  # (N, k) float64
    target: np.ndarray  # (N,) int labels or (N, k) soft targets ('bce': (N, k) in [0, 1])
    a: np.ndarray  # (N, k)
    grad: np.ndarray  # (N, k) xent's analytic gradient of the per-sample losses
    per_sample: np.ndarray  # (N,) xent's per-sample losses
    source: str  # where the inputs come from, for the report
    loss: str = "ce"
    b: np.ndarray | None = None  # (N, k), 'bce' only
    # The options 'a' was built from, for gradients under other options (diagnose); 'ce' only
    weight: np.ndarray | None = None  # (k,) class weights as given, None without --weight
    label_smoothing: float = 0.0
    ignored: np.ndarray | None = None  # (N,) samples whose label is ignore_index
    divisor: float = 1.0  # what reduction='mean' divides the summed loss by

    @property
    def n(self) -> int:
        return self.z.shape[0]

    @property
    def k(self) -> int:
        return self.z.shape[1]

    @property
    def labels(self) -> np.ndarray | None:
        """Returns the class labels, or None for soft or per-class targets."""
        return self.target if self.target.ndim == 1 else None

    @functools.cached_property
    def probabilities(self) -> np.ndarray:
        """Returns p: softmax(z) row by row ('ce') or σ(z) entry by entry ('bce'), computed once
        (the diagnosis rebuilds many gradients from it)."""
        return bce.sigmoid(self.z) if self.loss == "bce" else losses.softmax(self.z)

    @property
    def class_targets(self) -> np.ndarray | None:
        """Returns the (N, k) targets of binary cross-entropy, one per class, else None."""
        return self.target if self.loss == "bce" else None


def problem(z, target, *, loss: str = "ce", weight=None, pos_weight=None, ignore_index: int = -100,
            label_smoothing: float = 0.0, dtype: str = "float64",
            source: str = "given logits") -> Problem:
    """Returns a Problem; the inputs are validated by xent's own loss (reduction 'sum')."""
    if loss not in LOSSES:
        raise InputError(f"loss {loss!r} is not one of {', '.join(LOSSES)}")
    if loss == "bce":
        if ignore_index != -100 or label_smoothing:
            raise InputError("ignore_index and label_smoothing do not apply to binary cross-entropy")
        return _bce_problem(z, target, weight, pos_weight, dtype, source)
    if pos_weight is not None:
        raise InputError("pos_weight applies to binary cross-entropy only")
    result = losses.cross_entropy(z, target, weight=weight, ignore_index=ignore_index,
                                  label_smoothing=label_smoothing, reduction="sum", dtype=dtype)
    z = _as_held(z, dtype)
    k = z.shape[1]
    given = None if weight is None else np.asarray(weight, dtype=np.float64)
    weight = np.ones(k) if weight is None else given
    target = np.asarray(target)
    if target.ndim == 1:
        target = target.astype(np.int64)
    a = losses.coefficients(target if target.ndim == 1 else target.astype(np.float64), k, weight,
                            label_smoothing, result.ignored)
    return Problem(z=z, target=target, a=a, grad=result.grad, per_sample=result.per_sample,
                   source=source, weight=given, label_smoothing=float(label_smoothing),
                   ignored=result.ignored, divisor=float(result.divisor))


def _as_held(z, dtype: str) -> np.ndarray:
    """Returns z in float64 as dtype holds it: the point where xent's gradient in dtype and the
    code under test (given z in dtype) are evaluated, so the numeric and symbolic sides are
    taken there too. float32 moves a logit of 1000 by up to 3e-5, and p with it: derive's
    gradient at the unrounded z differed from a right float32 one by 7e-6."""
    return np.asarray(z, dtype=dtype).astype(np.float64)


def _bce_problem(z, target, weight, pos_weight, dtype: str, source: str) -> Problem:
    """Returns the Problem of the binary cross-entropy, each sample's loss summed over classes."""
    result = bce.binary_cross_entropy(z, target, weight=weight, pos_weight=pos_weight,
                                      reduction="sum", dtype=dtype)
    z = _as_held(z, dtype)
    t = np.asarray(target, dtype=np.float64)
    k = z.shape[1]
    w = np.ones(k) if weight is None else np.asarray(weight, dtype=np.float64)
    positive = np.ones(k) if pos_weight is None else np.asarray(pos_weight, dtype=np.float64)
    return Problem(z=z, target=t, a=w * positive * t, b=w * (1 - t), grad=result.grad,
                   per_sample=result.per_sample, source=source, loss="bce")


def random_problem(n: int, k: int, seed: int, *, loss: str = "ce", **options) -> Problem:
    """Returns N samples of k standard-normal logits (scale 2) with random targets.

    'ce': uniform random labels; 'bce': multi-hot targets, each class 0 or 1 with chance 1/2.
    """
    rng = np.random.default_rng(seed)
    z = 2.0 * rng.standard_normal((n, k))
    source = f"random: N={n}, k={k}, seed {seed}"
    if loss == "bce":
        targets = rng.integers(0, 2, size=(n, k)).astype(np.float64)
        return problem(z, targets, loss=loss, source=f"{source}, multi-hot targets", **options)
    labels = rng.integers(0, k, size=n)
    return problem(z, labels, loss=loss, source=source, **options)


def file_problem(loaded: data.EvalInput, *, loss: str = "ce", weight=None, pos_weight=None,
                 ignore_index: int = -100, label_smoothing: float = 0.0,
                 dtype: str = "float64") -> Problem:
    """Returns the Problem of logits read by stream.read_input, with errors placed in the file."""
    options = dict(loss=loss, weight=weight, pos_weight=pos_weight, ignore_index=ignore_index,
                   label_smoothing=label_smoothing, dtype=dtype)
    if loss == "bce" and loaded.targets is None:
        raise InputError("binary cross-entropy needs a target per class: give --targets FILE",
                         source=loaded.source)
    target = loaded.labels if loaded.labels is not None else loaded.targets
    try:
        return problem(loaded.logits, target, source=loaded.source, **options)
    except InputError as error:  # the core names a sample; the user needs the file's line
        raise data.locate(error, loaded) from None


# --- xent's own functions, complex-capable -----------------------------------------------------

def xent_loss(a: np.ndarray) -> Function:
    """Returns z -> per-sample loss_i = sum_c a_ic (lse(z_i) - z_ic), real or complex z.

    The log-sum-exp shifts by the max of the real parts, so complex z (the complex step) is as
    stable as real z; masked classes (logit -inf) have a_ic = 0 and add nothing.
    """
    counted = a > 0

    def loss(z: np.ndarray) -> np.ndarray:
        m = np.max(z.real, axis=1, keepdims=True)
        with np.errstate(invalid="ignore"):
            lse = np.log(np.exp(z - m).sum(axis=1, keepdims=True))
        neg_log_p = np.where(counted, (m - np.where(counted, z, 0)) + lse, 0)
        return (a * neg_log_p).sum(axis=1)

    return loss


def xent_gradient(a: np.ndarray) -> Function:
    """Returns z -> per-sample gradient S_i·softmax(z_i) − a_i, real or complex z."""
    total = a.sum(axis=1, keepdims=True)

    def gradient(z: np.ndarray) -> np.ndarray:
        m = np.max(z.real, axis=1, keepdims=True)
        e = np.exp(z - m)
        return total * e / e.sum(axis=1, keepdims=True) - a

    return gradient


def xent_hessian(problem: Problem) -> np.ndarray:
    """Returns the per-sample Hessians, shape (N, k, k).

    'ce': S_i (diag(p_i) − p_i p_iᵀ); 'bce': diagonal, (a + b)·σ(z)(1 − σ(z)) per class, since a
    class's loss depends on its own logit only.
    """
    if problem.loss == "bce":
        # σ(−z) rather than 1 − σ(z): the subtraction would lose every digit for large z
        curvature = (problem.a + problem.b) * bce.sigmoid(problem.z) * bce.sigmoid(-problem.z)
        return curvature[:, :, None] * np.eye(problem.k)
    p = problem.probabilities
    total = problem.a.sum(axis=1)[:, None, None]
    return total * (p[:, :, None] * np.eye(problem.k) - p[:, :, None] * p[:, None, :])


def _sigmoid_halves(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns Re z >= 0, e = exp(−z) there and exp(z) elsewhere, and log(1 + e); complex-safe.

    Re of the exponent is never positive, so e cannot overflow and softplus, σ(z) and σ(−z) all
    follow from e without cancellation, as in bce.elements_and_gradient.
    """
    upper = z.real >= 0
    e = np.exp(np.where(upper, -z, z))
    return upper, e, np.log1p(e)


def bce_loss(a: np.ndarray, b: np.ndarray) -> Function:
    """Returns z -> per-sample loss_i = Σ_c a_ic softplus(−z_ic) + b_ic softplus(z_ic), real or complex z."""

    def loss(z: np.ndarray) -> np.ndarray:
        upper, _, log_term = _sigmoid_halves(z)
        softplus = np.where(upper, z, 0) + log_term  # −log(1 − σ(z))
        softplus_neg = np.where(upper, 0, -z) + log_term  # −log σ(z)
        return (a * softplus_neg + b * softplus).sum(axis=1)

    return loss


def bce_gradient(a: np.ndarray, b: np.ndarray) -> Function:
    """Returns z -> per-sample gradient b·σ(z) − a·σ(−z), real or complex z."""

    def gradient(z: np.ndarray) -> np.ndarray:
        upper, e, _ = _sigmoid_halves(z)
        sigma = np.where(upper, 1 / (1 + e), e / (1 + e))
        sigma_neg = np.where(upper, e / (1 + e), 1 / (1 + e))
        return b * sigma - a * sigma_neg

    return gradient


def loss_function(problem: Problem) -> Function:
    """Returns xent's complex-capable per-sample loss of the problem's kind."""
    return bce_loss(problem.a, problem.b) if problem.loss == "bce" else xent_loss(problem.a)


def gradient_function(problem: Problem) -> Function:
    """Returns xent's complex-capable per-sample gradient of the problem's kind."""
    return bce_gradient(problem.a, problem.b) if problem.loss == "bce" else xent_gradient(problem.a)


# --- numeric derivatives ------------------------------------------------------------------------

def _steps(z: np.ndarray, eps: float, method: str) -> np.ndarray:
    """Returns the step of every entry: eps·min(max(1, |z|), STEP_SCALE_CAP) (absolute eps for
    the complex step).

    Masked entries (logit -inf) get step 0: their derivative is 0 and stays 0.
    """
    finite = np.isfinite(z)
    scale = 1.0 if method == "complex" else _step_scale(np.abs(np.where(finite, z, 0)))
    return np.where(finite, eps * scale, 0.0)


def _step_scale(magnitude: np.ndarray) -> np.ndarray:
    """Returns min(max(1, |z|), STEP_SCALE_CAP), the factor of eps in a step."""
    return np.minimum(np.maximum(1.0, magnitude), STEP_SCALE_CAP)


def step_capped(z: np.ndarray, method: str) -> bool:
    """Says whether some step of a check at z is held to eps·STEP_SCALE_CAP."""
    finite = np.abs(z[np.isfinite(z)])
    return method != "complex" and bool(finite.size) and float(finite.max()) > STEP_SCALE_CAP


def _central(f: Function, z: np.ndarray, h: np.ndarray, held: str = "float64",
             sizes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Returns (f(z + h e_c) − f(z − h e_c)) / 2h for every column c, stacked on a last axis,
    and the round-off that carries, ε·(2·max |f(z ± h e_c)| + sizes_c) / 2h (0 where the step
    is 0; sizes (N, k) as term_sizes gives them, none for a gradient differenced).

    z ± h are taken as the dtype held holds them, and 2h is the difference of those: a float32
    function rounds 3000 + h to a multiple of 2.4e-4, off the step of 0.15 by up to 0.1 %.
    """
    columns, roundoff = [], []
    for c in range(z.shape[1]):  # k evaluations per side, each over the whole batch
        plus, minus = z.copy(), z.copy()
        plus[:, c] += h[:, c]
        minus[:, c] -= h[:, c]
        if held != "float64":
            with np.errstate(over="ignore"):
                plus[:, c], minus[:, c] = (x[:, c].astype(held).astype(np.float64)
                                           for x in (plus, minus))
        high, low = f(plus), f(minus)
        with np.errstate(invalid="ignore"):  # -inf − -inf: a masked entry, whose step is 0
            width = _broadcast(np.where(h[:, c] > 0, plus[:, c] - minus[:, c], 0.0), high)
        with np.errstate(divide="ignore"):
            columns.append((high - low) / np.where(width > 0, width, 1.0))
            roundoff.append(_roundoff(high, low, width, 0.0 if sizes is None else sizes[:, c]))
    return np.stack(columns, axis=-1), np.stack(roundoff, axis=-1)


def _roundoff(high: np.ndarray, low: np.ndarray, width: np.ndarray,
              size: np.ndarray | float = 0.0) -> np.ndarray:
    """Returns ε·(2·max(|high|, |low|) + size) / width, ε the machine epsilon of their dtype:
    what two computed values of a loss may differ by, more or less than they should.

    A loss summed over classes is not rounded once but at every partial sum holding the class
    stepped; pairwise summation (NumPy's, torch's) halves those sums level by level, so they
    total under 2|f|, each rounded to within ε/2 in either value. ε·|f|, two values each
    rounded once, failed right float32 and float64 losses of 100 to 300 classes, off by up to
    1.6ε·|f| (fuzz_check, 12 of 15,200 seeds). size is what the class's own terms round
    before they cancel (term_sizes), however small the loss they leave.

    0 where width is 0 (no step) or a value is not finite: a NaN allowance would pass any entry,
    and NaN or inf values fail as such.
    """
    dtype = np.result_type(high, low)
    eps = np.finfo(dtype if np.issubdtype(dtype, np.inexact) else np.float64).eps
    with np.errstate(invalid="ignore", over="ignore"):
        out = eps * (2 * np.maximum(np.abs(high), np.abs(low)) + size) / np.where(
            width > 0, width, np.inf)
    return np.where(np.isfinite(out), out, 0.0)


def term_sizes(problem: Problem) -> np.ndarray:
    """Returns, entry by entry, the size of what a loss computes from z_c before it cancels,
    weighted as the class enters the loss: the log-sum-exp every softmax term holds, S·|lse|
    (S the weights summed), or the z_c of bce's class term in PyTorch's form max(z, 0) − z·t,
    (a + b)·|z_c|. Each is rounded to ε of its size, whatever the loss left once they cancel:
    a float32 lse near 9,000 is a multiple of 9.8e-4, and so is lse − z_y.
    """
    if problem.loss == "bce":
        return (problem.a + problem.b) * np.abs(np.where(np.isfinite(problem.z), problem.z, 0.0))
    lse = np.logaddexp.reduce(problem.z, axis=1, keepdims=True)  # a masked class adds nothing
    return np.broadcast_to(problem.a.sum(axis=1, keepdims=True) * np.abs(lse), problem.z.shape)


def _broadcast(h: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Returns the per-sample h shaped to divide an (N,) or (N, k) output."""
    return h.reshape((-1,) + (1,) * (np.ndim(like) - 1))


def _complex_step(f: Function, z: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Returns Im f(z + i h e_c) / h for every column c: no subtraction, no cancellation."""
    columns = []
    for c in range(z.shape[1]):
        shifted = z.astype(np.complex128)
        shifted[:, c] += 1j * h[:, c]
        out = f(shifted)
        step = _broadcast(np.where(h[:, c] > 0, h[:, c], 1.0), out)
        columns.append(np.imag(out) / step)
    return np.stack(columns, axis=-1)


def derivative(f: Function, z: np.ndarray, method: str, eps: float,
               held: str = "float64") -> tuple[np.ndarray, np.ndarray | None]:
    """Returns the numeric derivative of f at z and an error estimate (Richardson only).

    The derivative by z_ic sits on a new last axis of size k: (N,) losses give (N, k),
    (N, k) gradients give (N, k, k). held is the dtype f computes in (see _central).
    """
    numeric, estimate, _ = _derivative(f, z, method, eps, held)
    return numeric, estimate


def _derivative(f: Function, z: np.ndarray, method: str, eps: float, held: str = "float64",
                sizes: np.ndarray | None = None,
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Returns derivative's two and the round-off the numeric derivative carries (None for the
    complex step, which subtracts nothing; sizes as _central takes them)."""
    h = _steps(z, eps, method)
    # a loss of inf (log 0) makes inf − inf: the report names NaN from the values, not warned
    with np.errstate(invalid="ignore", over="ignore"):
        if method == "complex":
            return _complex_step(f, z, h), None, None
        if method == "central":
            numeric, roundoff = _central(f, z, h, held, sizes)
            return numeric, None, roundoff
        # Richardson: central differences at h, h/2, h/4; two rounds of extrapolation cancel
        # the h² and h⁴ terms; the change of the last round estimates the remaining error.
        (d1, e1), (d2, e2), (d4, e4) = (_central(f, z, h / s, held, sizes) for s in (1, 2, 4))
        r12, r24 = (4 * d2 - d1) / 3, (4 * d4 - d2) / 3
        best = (16 * r24 - r12) / 15  # = (64·d4 − 20·d2 + d1) / 45
        # each step's round-off carried through those weights: the finest step's counts most
        return best, np.abs(best - r24), (64 * e4 + 20 * e2 + e1) / 45


def directional(f: Function, z: np.ndarray, v: np.ndarray, method: str,
                eps: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Returns d/dt f(z + t v) at t = 0 per sample, with 2 evaluations (1 for the complex step),
    and the round-off it carries (None for the complex step), as derivative's.

    Masked entries (logit -inf) do not move: v is 0 there.
    """
    finite = np.isfinite(z)
    scale = _step_scale(np.abs(np.where(finite, z, 0)).max(axis=1, keepdims=True))
    v = np.where(finite, v, 0.0)
    if method == "complex":
        return np.imag(f(z + 1j * eps * v)) / eps, None
    h = eps * scale
    with np.errstate(invalid="ignore", over="ignore"):  # inf − inf is reported as NaN
        d, e = [], []
        for s in (1,) if method == "central" else (1, 2, 4):
            high, low = f(z + (h / s) * v), f(z - (h / s) * v)
            d.append((high - low) / (2 * h[:, 0] / s))
            e.append(_roundoff(high, low, 2 * h[:, 0] / s))
        if method == "central":
            return d[0], e[0]
        r12, r24 = (4 * d[1] - d[0]) / 3, (4 * d[2] - d[1]) / 3
        return (16 * r24 - r12) / 15, (64 * e[2] + 20 * e[1] + e[0]) / 45


# --- reports ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Failure:
    """One entry where the analytic and numeric values disagree beyond the tolerance."""

    sample: int
    cls: int | None  # the class (None for a directional derivative, one number per sample)
    analytic: float
    numeric: float
    abs_err: float
    rel_err: float
    column: int | None = None  # the second class of a Hessian entry d²loss / dz_cls dz_column
    label: int | None = None  # the sample's label, when the targets are labels
    target: float | None = None  # the entry's own target, for binary cross-entropy

    def describe(self) -> str:
        """Names the entry and both values, saying which is which."""
        where = f"sample {self.sample}"
        if self.cls is not None:
            where += f", class {self.cls}" if self.column is None else \
                f", classes ({self.cls}, {self.column})"
        if self.target is not None:
            where += f" (target {self.target:g})"
        return (f"{where}: analytic {self.analytic:.10g}, numeric {self.numeric:.10g} "
                f"(abs error {self.abs_err:.3g}, rel error {self.rel_err:.3g})")


@dataclass(frozen=True)
class Agreement:
    """Two independent routes to the same numbers, and how far apart they are."""

    first: str
    second: str
    max_abs_diff: float
    tolerance: float
    passed: bool
    note: str = ""


@dataclass(frozen=True)
class SweepPoint:
    """The largest error of the numeric derivative at one step h."""

    h: float
    max_abs_err: float


@dataclass(frozen=True)
class Diagnosis:
    """A typical mistake that explains every entry of a failing gradient within the tolerance.

    The code under test computes the mistake's gradient (``formula``, with ``parameter``),
    divided by ``divisor`` when it is backward() of a reduction='mean' loss.
    """

    mistake: str  # the name of one of MISTAKES
    formula: str  # the wrong gradient, e.g. "p − ((1 − ε)·y + ε/k)"
    parameter: float | int | str | tuple[float | None, ...] | None = None  # ε, the shift, weights
    given: float | tuple[float, ...] | None = None  # what xent was given in its place
    divisor: float | None = None  # what the gradient is divided by, if anything
    max_abs_diff: float = 0.0  # the largest |analytic · divisor − the mistake's gradient|
    weighted: bool = False  # xent was given class weights: each row carries its sample's S
    smoothed: bool = False  # smoothed or soft targets: y_j is not 0 off the label
    # how a fitted ε or w stands to what xent was given (see _versus_given)
    versus_given: str | None = None


@dataclass(frozen=True)
class CheckReport:
    """The verdict of one check, entry by entry, with everything a reader needs to trust it."""

    quantity: str  # "gradient", "Hessian" or "directional derivative"
    analytic_source: str  # what was checked, e.g. "my_grad.py:grad"
    numeric_source: str  # what the numbers come from, e.g. "central differences of xent's loss"
    source: str  # the inputs
    tolerance: Tolerance
    n: int
    k: int
    entries: int
    failed: int
    failures: tuple[Failure, ...]  # the first FAILURES_KEPT, in sample order
    failed_off_label: int | None  # failing gradient entries whose class is not the label
    max_abs_err: float  # over the entries where both values are finite
    max_rel_err: float
    max_error_estimate: float | None = None  # Richardson's own estimate of its error
    # the largest round-off allowance ε·(2|f| + m)/2h of an entry (None for the complex step),
    # and how many entries pass only by it
    max_roundoff: float | None = None
    roundoff_passed: int = 0
    nonfinite: str | None = None  # NaN or inf in the analytic or numeric values, said plainly
    agreements: tuple[Agreement, ...] = ()
    sweep: tuple[SweepPoint, ...] = field(default=())
    loss: str = "ce"  # the loss whose derivative this is: 'ce' or 'bce'
    scale: float | None = None  # a failing analytic side that is this constant times the numeric
    diagnosis: Diagnosis | None = None  # a typical mistake that explains every entry, if one does
    weighted_divisor: float | None = None  # a weighted 'mean' divides by Σ_i w_{y_i}, not N
    # the code under test is the numeric side (--loss-fn, or --hessian beside --grad-fn: its
    # derivative), held against xent's own analytic values
    numeric_under_test: bool = False
    step_capped: bool = False  # some |z| is above STEP_SCALE_CAP, so its step is eps·cap

    @property
    def passed(self) -> bool:
        return self.failed == 0 and self.nonfinite is None and all(a.passed for a in self.agreements)

    @property
    def near_tolerance(self) -> bool:
        """Tells whether every failure is small enough that numeric error could explain it."""
        worst = max((f.rel_err for f in self.failures), default=0.0)
        return self.failed > 0 and self.nonfinite is None and worst < 1e-3

    @property
    def best_step(self) -> float | None:
        """Returns the step h with the smallest error in the sweep."""
        finite = [p for p in self.sweep if np.isfinite(p.max_abs_err)]
        return min(finite, key=lambda p: p.max_abs_err).h if finite else None

    @property
    def factor(self) -> float | None:
        """Returns c when the code under test gives c times xent's values everywhere, else None."""
        if self.scale is None:
            return None
        return 1 / self.scale if self.numeric_under_test else self.scale

    @property
    def factor_cause(self) -> str | None:
        """Names the usual cause of factor: 'bce_mean' (1/(N·k): backward() of BCE's mean over
        every element), 'weighted_mean' (1/Σ_i w_{y_i}), 'mean' (1/N), 'sign' (−1); else None."""
        c = self.factor
        if c is None:
            return None
        if self.loss == "bce" and abs(c * self.n * self.k - 1) < 1e-6:
            return "bce_mean"
        divisor = self.weighted_divisor
        if divisor and abs(c * self.n - 1) >= 1e-6 and abs(c * divisor - 1) < 1e-6:
            return "weighted_mean"
        if abs(c * self.n - 1) < 1e-6:
            return "mean"
        if abs(c + 1) < 1e-6:
            return "sign"
        return None


def _relative(abs_err: np.ndarray, analytic: np.ndarray, numeric: np.ndarray) -> np.ndarray:
    """Returns abs_err / max(|analytic|, |numeric|), 0 where both are 0."""
    scale = np.maximum(np.abs(analytic), np.abs(numeric))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(abs_err == 0, 0.0, abs_err / np.where(scale > 0, scale, 1.0))


def _overflow_cause(report: "CheckReport", z: np.ndarray) -> "CheckReport":
    """Adds the usual cause to a report of NaN or inf when every sample they hit has a logit
    beyond log(largest float): exp overflowed there, in code that does not keep it small."""
    hit = sorted({failure.sample for failure in report.failures
                  if not (np.isfinite(failure.analytic) and np.isfinite(failure.numeric))})
    if report.nonfinite is None or not hit:
        return report
    limit = float(np.log(np.finfo(report.tolerance.precision).max))  # 709.8, float32 88.7
    magnitude = np.abs(np.where(np.isfinite(z), z, 0)).max(axis=1)
    if not (magnitude[hit] > limit).all():
        return report
    fix = ("compute the loss with softplus, np.logaddexp(0, z), and σ(z) without exp of a large "
           "argument (scipy.special.expit)" if report.loss == "bce" else
           "subtract each row's max before exp, exp(z − max z), as a stable softmax does")
    return replace(report, nonfinite=f"{report.nonfinite}; each sample with NaN or inf has a "
                                     f"logit beyond ±{limit:.1f}, where exp overflows "
                                     f"{report.tolerance.precision}: {fix}")


def _nonfinite_note(values: np.ndarray, what: str) -> str | None:
    """Says how many entries are NaN or infinite, and where the first one is."""
    nan, inf = np.isnan(values), np.isinf(values)
    if not (nan.any() or inf.any()):
        return None
    first = tuple(int(x) for x in np.argwhere(nan | inf)[0])
    where = f"sample {first[0]}" + (f", class {first[1]}" if len(first) > 1 else "") + \
        (f", column {first[2]}" if len(first) > 2 else "")
    return (f"{what} has {int(nan.sum())} NaN and {int(inf.sum())} infinite entries "
            f"(first at {where})")


def compare(analytic: np.ndarray, numeric: np.ndarray, tol: Tolerance, *, quantity: str,
            analytic_source: str, numeric_source: str, source: str,
            estimate: np.ndarray | None = None, roundoff: np.ndarray | None = None,
            agreements: tuple[Agreement, ...] = (),
            sweep: tuple[SweepPoint, ...] = (), labels: np.ndarray | None = None,
            loss: str = "ce", targets: np.ndarray | None = None) -> CheckReport:
    """Returns the report of analytic against numeric, entry by entry.

    Entry e fails when |analytic − numeric| > atol + rtol·|numeric| + the round-off of the
    numeric side (+ the error estimate); a NaN or infinite value on either side fails and is
    named in the report. labels (N,) or per-class targets (N, k) are shown beside a failing
    gradient entry.
    """
    analytic = np.asarray(analytic, dtype=np.float64)
    numeric = np.asarray(numeric, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        abs_err = np.abs(analytic - numeric)
        allowed = tol.atol + tol.rtol * np.abs(numeric)
    if estimate is not None:
        allowed = allowed + estimate
    finite = np.isfinite(analytic) & np.isfinite(numeric)
    roundoff_passed = 0
    if roundoff is not None:
        # the entries that pass only by the round-off allowance: where it mattered
        within = (abs_err > allowed) & (abs_err <= allowed + roundoff)
        roundoff_passed = int((finite & within).sum())
        allowed = allowed + roundoff
    failing = ~finite | (abs_err > allowed)
    rel_err = _relative(abs_err, analytic, numeric)
    failures = tuple(_failure(tuple(int(x) for x in index), analytic, numeric, abs_err, rel_err,
                              labels, targets) for index in np.argwhere(failing)[:FAILURES_KEPT])
    off_label = None
    if labels is not None and failing.ndim == 2:
        on_label = np.zeros_like(failing)
        counted = (labels >= 0) & (labels < failing.shape[1])
        on_label[np.flatnonzero(counted), labels[counted]] = True
        off_label = int((failing & ~on_label).sum())
    scale = _constant_factor(analytic, numeric, allowed) if failing.any() and finite.all() else None
    notes = [note for note in (_nonfinite_note(analytic, f"the analytic {quantity}"),
                               _nonfinite_note(numeric, f"the numeric {quantity}")) if note]
    shape = analytic.shape
    return CheckReport(
        quantity=quantity, analytic_source=analytic_source, numeric_source=numeric_source,
        source=source, tolerance=tol, n=shape[0], k=shape[1] if len(shape) > 1 else 0,
        entries=int(analytic.size), failed=int(failing.sum()), failures=failures,
        failed_off_label=off_label,
        max_abs_err=float(abs_err[finite].max(initial=0.0)),
        max_rel_err=float(rel_err[finite].max(initial=0.0)),
        max_error_estimate=None if estimate is None else float(
            estimate[np.isfinite(estimate)].max(initial=0.0)),
        max_roundoff=None if roundoff is None else float(roundoff[finite].max(initial=0.0)),
        roundoff_passed=roundoff_passed,
        nonfinite="; ".join(notes) or None, agreements=agreements, sweep=sweep, loss=loss,
        scale=scale)


def _constant_factor(analytic: np.ndarray, numeric: np.ndarray, allowed: np.ndarray) -> float | None:
    """Returns c when analytic = c · numeric within the tolerance everywhere (c ≠ 0, 1), else None.

    A gradient off by one factor is a reduction or a sign: backward() of a 'mean' loss gives
    1/N of each sample's own gradient, and y − p is −1 times p − y.
    """
    norm = float(np.dot(numeric.ravel(), numeric.ravel()))
    if norm == 0:
        return None
    c = float(np.dot(analytic.ravel(), numeric.ravel())) / norm  # least squares
    if c == 0 or np.isclose(c, 1.0):
        return None
    # analytic / c must meet the numeric side within the tolerance: a tiny c with a tolerance
    # not scaled by it would call any gradient far below the tolerance a multiple
    fits = np.abs(analytic - c * numeric) <= allowed * abs(c)
    return c if bool(fits.all()) else None


def _failure(index: tuple[int, ...], analytic, numeric, abs_err, rel_err,
             labels: np.ndarray | None, targets: np.ndarray | None = None) -> Failure:
    return Failure(sample=index[0], cls=index[1] if len(index) > 1 else None,
                   label=None if labels is None else int(labels[index[0]]),
                   target=float(targets[index]) if targets is not None and len(index) == 2
                   else None,
                   column=index[2] if len(index) > 2 else None,
                   analytic=float(analytic[index]), numeric=float(numeric[index]),
                   abs_err=float(abs_err[index]), rel_err=float(rel_err[index]))


def method_name(method: str) -> str:
    """Returns how a method is named in a report."""
    return {"central": "central differences", "complex": "complex step",
            "richardson": "Richardson-extrapolated central differences"}[method]


# --- checks -------------------------------------------------------------------------------------

def check_gradient(problem: Problem, analytic: np.ndarray, loss: Function, tol: Tolerance, *,
                   analytic_source: str, loss_source: str = "xent's loss",
                   agreements: tuple[Agreement, ...] = (), sweep: bool = False) -> CheckReport:
    """Checks a per-sample gradient (N, k) against the numeric derivative of the loss."""
    numeric, estimate, roundoff = _derivative(loss, problem.z, tol.method, tol.eps,
                                              tol.step_precision, term_sizes(problem))
    points = sweep_steps(loss, problem.z, analytic, tol.method) if sweep else ()
    report = compare(analytic, numeric, tol, quantity="gradient", analytic_source=analytic_source,
                     numeric_source=f"{method_name(tol.method)} of {loss_source}",
                     source=problem.source, estimate=estimate, roundoff=roundoff,
                     agreements=agreements,
                     sweep=points, labels=problem.labels, loss=problem.loss,
                     targets=problem.class_targets)
    report = _overflow_cause(replace(report, step_capped=step_capped(problem.z, tol.method)),
                             problem.z)
    if report.failed and report.scale is None and report.nonfinite is None:
        report = replace(report, diagnosis=diagnose(problem, analytic, tol))
    if problem.loss == "ce" and problem.weight is not None and problem.labels is not None:
        report = replace(report, weighted_divisor=problem.divisor)
    return report


# Numbers a full check may run the loss through before it says how to check faster: entry by
# entry it evaluates the loss 2k times over the batch (k for the complex step, 6k for
# Richardson), n·k numbers each time: 4 samples of 20,000 classes took 36 s here, of 50,257
# over two minutes, where --directional takes two evaluations (0.4 s with start-up).
SLOW_CHECK_NUMBERS = 10**9
EVALUATIONS_PER_CLASS = {"central": 2, "complex": 1, "richardson": 6}
# Entries of the per-sample Hessians (n·k², 200 MB of float64) a Hessian check holds at most:
# the analytic and the numeric one, and their differences, are a few such arrays (4 samples of
# 1000 classes: 288 MB in all); 4 of 20,000 would be 13 GB each.
HESSIAN_MAX_ENTRIES = 25 * 10**6


def slow_check_note(n: int, k: int, method: str, hessian: bool = False) -> str | None:
    """Returns a note for a full check of n samples of k classes that runs the loss through
    more than SLOW_CHECK_NUMBERS numbers, naming the faster check; else None, and None where
    run refuses the Hessian before any check."""
    evaluations = EVALUATIONS_PER_CLASS[method] * k
    numbers = evaluations * n * k
    if numbers <= SLOW_CHECK_NUMBERS or hessian and n * k * k > HESSIAN_MAX_ENTRIES:
        return None
    return (f"checking {n:,} × {k:,} entries one by one evaluates the loss {evaluations:,} times "
            f"over the whole batch ({numbers:.1e} numbers), which may take minutes; --directional "
            f"checks one random direction per sample in 2 evaluations")


def check_directional(problem: Problem, analytic: np.ndarray, loss: Function, tol: Tolerance, *,
                      analytic_source: str, loss_source: str = "xent's loss", seed: int = 0,
                      agreements: tuple[Agreement, ...] = ()) -> CheckReport:
    """Checks g_i · v_i against d/dt loss_i(z + t v) for one random direction v per sample.

    Two loss evaluations whatever k: for inputs too large for a full check. A wrong entry
    shows in its sample's directional derivative unless v happens to be orthogonal to it.
    """
    v = np.random.default_rng(seed).standard_normal(problem.z.shape)
    v = np.where(np.isfinite(problem.z), v, 0.0)
    # no logit moves by more than the step, as in the check entry by entry: the truncation error
    # grows with the cube of v's spread, 4.5 for 33 standard normals (a right float32 loss failed
    # at near-ties of 60, 0.011 off along v)
    largest = np.abs(v).max(axis=1, keepdims=True, initial=0.0)
    v = v / np.where(largest > 0, largest, 1.0)
    numeric, roundoff = directional(loss, problem.z, v, tol.method, tol.eps)
    with np.errstate(invalid="ignore"):
        projected = np.einsum("ic,ic->i", np.asarray(analytic, dtype=np.float64), v)
    report = compare(projected, numeric, tol, quantity="directional derivative",
                     analytic_source=f"{analytic_source} · v",
                     numeric_source=f"{method_name(tol.method)} of {loss_source} along v",
                     source=problem.source, agreements=agreements, labels=problem.labels,
                     loss=problem.loss, roundoff=roundoff)
    return _overflow_cause(replace(report, step_capped=step_capped(problem.z, tol.method)),
                           problem.z)


def check_hessian(problem: Problem, analytic: np.ndarray, gradient: Function, tol: Tolerance, *,
                  analytic_source: str, gradient_source: str) -> CheckReport:
    """Checks per-sample Hessians (N, k, k) against the numeric derivative of the gradient."""
    numeric, estimate, roundoff = _derivative(gradient, problem.z, tol.method, tol.eps,
                                              tol.step_precision)
    report = compare(analytic, numeric, tol, quantity="Hessian", analytic_source=analytic_source,
                     numeric_source=f"{method_name(tol.method)} of {gradient_source}",
                     source=problem.source, estimate=estimate, roundoff=roundoff,
                     labels=problem.labels,
                     loss=problem.loss)
    return replace(report, step_capped=step_capped(problem.z, tol.method))


def sweep_steps(f: Function, z: np.ndarray, analytic: np.ndarray, method: str,
                steps: tuple[float, ...] = SWEEP_STEPS) -> tuple[SweepPoint, ...]:
    """Returns the largest error of the numeric derivative at each step h.

    For central differences the errors trace a V: truncation (~h²) falls as h shrinks until
    round-off (~machine eps / h) takes over; the complex step has no round-off arm.
    """
    analytic = np.asarray(analytic, dtype=np.float64)
    points = []
    for h in steps:
        numeric, _ = derivative(f, z, method, h)
        with np.errstate(invalid="ignore"):
            err = np.abs(analytic - numeric)
        counted = err[~np.isnan(err)]  # all NaN (a loss of inf at every step): NaN, not warned
        points.append(SweepPoint(h=h, max_abs_err=float(counted.max()) if counted.size else
                                 float("nan") if err.size else 0.0))
    return tuple(points)


def loss_agreement(problem: Problem, values: np.ndarray, name: str,
                   precision: str = "float64") -> Agreement:
    """Compares a user's per-sample losses with xent's at the inputs.

    Beside rtol, a sample's loss may be off by ε·S·max |z| (S its weights summed): in float32 a
    logit of 3000 is itself held to 2.4e-4, and logsumexp(z) − z_y rounds to that before the
    subtraction, whatever the loss's own size.
    """
    rtol = 1e-9 if precision == "float64" else 1e-4
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        diff = np.abs(values - problem.per_sample)
    weight = problem.a.sum(axis=1) + (0 if problem.b is None else problem.b.sum(axis=1))
    magnitude = np.abs(np.where(np.isfinite(problem.z), problem.z, 0)).max(axis=1, initial=0.0)
    allowed = (rtol * (1 + np.abs(problem.per_sample))
               + np.finfo(precision).eps * weight * magnitude)
    bad = ~np.isfinite(diff) | (diff > allowed)
    note = ""
    if bad.any():
        i = int(np.argmax(bad))
        note = (f"sample {i}: {name} gives {values[i]:.10g}, xent's loss {problem.per_sample[i]:.10g}"
                f"; the finite differences follow {name}")
    largest = float(diff.max(initial=0.0)) if np.isfinite(diff).all() else float("inf")
    return Agreement(first=name, second="xent's per-sample loss", max_abs_diff=largest,
                     tolerance=rtol, passed=not bad.any(), note=note)


def expression_gradient(problem: Problem, text: str) -> np.ndarray:
    """Returns a gradient formula of the expression language evaluated on every sample, (N, k).

    'ce': the formula is the gradient of -Σ_j y_j log p_j for one sample, with y the target
    distribution (smoothing applied; one-hot for a label); row i is scaled by the sample's
    total weight S_i = Σ_c a_ic (1 without weights, 0 for an ignored sample), as xent's is.
    'bce': p is σ(z) and the formula is the derivative of -[y log p + (1 - y) log(1 - p)] for
    each class; weights enter as y = a / (a + b) and the scale S = a + b per class (y = t and
    S = 1 without weights), since b·σ − a·(1 − σ) = S·(σ − y).
    """
    from xent_cli import expressions  # the parser reads the text; nothing is evaluated as Python

    try:
        node = expressions.parse_expression(text)
    except ExpressionError as error:
        raise ExpressionError(f"--expr {text!r}: {error}") from None
    y, total = _target_distribution(problem)
    if problem.labels is not None:
        labels = np.where((problem.labels >= 0) & (problem.labels < problem.k), problem.labels, 0)
    else:
        labels = problem.target.argmax(axis=1)
    value = expressions.evaluate(node, z=problem.z, p=problem.probabilities, y=y, labels=labels)
    with np.errstate(invalid="ignore"):
        return np.where(total > 0, total * value, 0.0)


SYMBOLIC_MAX_K = 12  # derive's symbolic gradient is lambdified for every k classes
SYMBOLIC_MAX_N = 1000  # by default: above it the user wants speed (SymPy adds about 0.5 s)


def _target_distribution(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """Returns y = a / S and S: 'ce' S = Σ_c a_ic, (N, 1); 'bce' S = a + b, (N, k).

    For 'ce', y is the target distribution (smoothing applied, one-hot for a label); for
    'bce', each class's target (pos_weight folded in).
    """
    if problem.loss == "bce":
        total = problem.a + problem.b
    else:
        total = problem.a.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.where(total > 0, problem.a / np.where(total > 0, total, 1.0), 0.0)
    return y, total


def symbolic_agreement(problem: Problem, analytic: np.ndarray,
                       precision: str = "float64") -> Agreement:
    """Compares a gradient with the symbolic gradient of 'xent derive', lambdified for k.

    derive's soft-target derivation gives d/dz_j of -Σ_n y_n log p_n for any distribution y
    (for 'bce', of -Σ_n [y_n log σ(z_n) + (1 - y_n) log(1 - σ(z_n))], y_n in [0, 1]); entries
    are scaled by S as xent's loss is (see _target_distribution).
    """
    if problem.k > SYMBOLIC_MAX_K:
        raise InputError(f"the symbolic route needs k <= {SYMBOLIC_MAX_K}, got {problem.k}")
    y, total = _target_distribution(problem)
    if problem.loss == "bce":
        derivative, verified = _bce_symbolic_gradient(problem.z, y)
    else:
        derivative, verified = _ce_symbolic_gradient(problem.z, y)
    with np.errstate(invalid="ignore", over="ignore"):
        symbolic = np.where(total > 0, total * derivative, 0.0)
        diff = np.abs(symbolic - np.asarray(analytic, dtype=np.float64))
    tolerance = 1e-12 if precision == "float64" else 1e-6  # both sides are closed forms
    allowed = tolerance * (1 + np.abs(symbolic))
    bad = ~np.isfinite(diff) | (diff > allowed)
    note = ""
    if bad.any():
        i, c = (int(x) for x in np.argwhere(bad)[0])
        note = (f"sample {i}, class {c}: derive's symbolic gradient gives {symbolic[i, c]:.10g}, "
                f"the analytic one {analytic[i, c]:.10g}")
    largest = float(diff.max(initial=0.0)) if np.isfinite(diff).all() else float("inf")
    word = "verified" if verified else "NOT verified"
    return Agreement(first=f"derive's symbolic gradient ({word})",
                     second="the analytic gradient", max_abs_diff=largest, tolerance=tolerance,
                     passed=not bad.any() and verified, note=note)


def _ce_symbolic_gradient(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, bool]:
    """Returns derive's softmax gradient at every row (N, k), and whether derive verified it."""
    import sympy

    from xent_cli import derivation

    n, k = z.shape
    derived = derivation.derive(k, soft=True)
    symbols = derivation.Symbols(k, True, 1)
    function = sympy.lambdify(symbols.z + symbols.y, [entry.direct for entry in derived.gradient],
                              "numpy")
    # softmax is unchanged by a shift of the row; the shift keeps exp() of large logits finite
    z = z - z.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore"):
        columns = function(*z.T, *y.T)
    return np.column_stack([np.broadcast_to(c, (n,)) for c in columns]), derived.verified


# Where derive's BCE derivative, SymPy's derivative of the definition, can be evaluated in
# float64: it divides by 1 − σ(z), which loses about |z|/ln 10 digits to cancellation, so beyond
# |z| = 5 it is evaluated in decimal arithmetic with those digits added. σ(±700) differs from
# 0 or 1 by under 1e-304, so logits are clipped there: the derivative moves by less than that.
BCE_FLOAT_LIMIT = 5.0
BCE_CLIP = 700.0


def _bce_symbolic_gradient(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, bool]:
    """Returns derive's BCE gradient at every entry (N, k), and whether derive verified it."""
    import sympy

    from xent_cli import derivation_bce

    n, k = z.shape
    derived = derivation_bce.derive_bce(k)
    symbols = derivation_bce.BinarySymbols(k)
    z = np.clip(z, -BCE_CLIP, BCE_CLIP)
    out = np.empty((n, k))
    for c, entry in enumerate(derived.gradient):
        direct = symbols.value(entry.direct)  # in z and y: p_n stands for σ(z_n)
        arguments = symbols.z + symbols.y
        fast = sympy.lambdify(arguments, direct, "numpy")
        free = direct.free_symbols
        with np.errstate(all="ignore"):
            out[:, c] = np.broadcast_to(fast(*z.T, *y.T), (n,))
        for i in np.flatnonzero(np.abs(z[:, c]) > BCE_FLOAT_LIMIT):
            digits = 20 + int(abs(z[i, c]) / np.log(10))
            # Floats of the exact binary values at that precision; evalf's own subs= gives up
            # silently on the cancellation at |z| = 700
            point = {symbol: sympy.Float(float(v), digits)
                     for symbol, v in zip(arguments, (*z[i], *y[i])) if symbol in free}
            out[i, c] = float(direct.xreplace(point).evalf(digits))
    return out, derived.verified


# --- diagnosis: the typical mistakes behind a wrong gradient -------------------------------------

@dataclass(frozen=True)
class Mistake:
    """A typical wrong gradient of the softmax cross-entropy, computed from the problem.

    ``fit(problem, g)`` returns (gradient, parameter) pairs: the mistake's gradients nearest g
    (a fitted ε or weights; each label shift), none where the mistake cannot apply.
    """

    name: str
    formula: str  # the wrong gradient, in the report's notation (y: the targets xent uses)
    fit: Callable[[Problem, np.ndarray], list[tuple[np.ndarray, object]]]
    divisible: bool = True  # tried divided by the mean's divisor too (fitted weights absorb it)


def _ce_gradient(problem: Problem, *, target: np.ndarray | None = None,
                 weight: np.ndarray | None = None, label_smoothing: float | None = None,
                 p: np.ndarray | None = None) -> np.ndarray:
    """Returns S·p − a, the per-sample gradient with some of the problem's options replaced."""
    if weight is None:
        weight = np.ones(problem.k) if problem.weight is None else problem.weight
    a = _ce_gradient_coefficients(problem, weight, target=target, label_smoothing=label_smoothing)
    p = problem.probabilities if p is None else p
    total = a.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):  # S = 0 on ignored rows, where p may be inf (exp)
        return np.where(total > 0, total * p, 0) - a


def _ce_gradient_coefficients(problem: Problem, weight: np.ndarray, *,
                              target: np.ndarray | None = None,
                              label_smoothing: float | None = None) -> np.ndarray:
    """Returns a of loss_i = −Σ_c a_ic log p_ic under the given weights (and target, smoothing)."""
    target = problem.target if target is None else target
    if target.ndim == 2:
        target = target.astype(np.float64)
    smoothing = problem.label_smoothing if label_smoothing is None else label_smoothing
    return losses.coefficients(target, problem.k, weight, smoothing, problem.ignored)


def _free_entries(problem: Problem) -> int:
    """Returns how many entries a fitted parameter has to explain: each row sums to 0, so k − 1."""
    return int(np.count_nonzero(~problem.ignored)) * (problem.k - 1)


def _smoothing(problem: Problem, g: np.ndarray) -> list[tuple[np.ndarray, object]]:
    """p − ((1 − ε)·y + ε/k), ε fitted by least squares: smoothing xent was not told of, or another ε."""
    g0 = _ce_gradient(problem, label_smoothing=0.0)
    d = _ce_gradient(problem, label_smoothing=1.0) - g0  # the gradient is linear in ε
    norm = float(np.vdot(d, d))
    if norm == 0 or _free_entries(problem) <= 1:
        return []
    eps = float(np.vdot(g - g0, d)) / norm
    if not -1e-9 <= eps <= 1 + 1e-9:  # PyTorch takes ε in [0, 1]
        return []
    eps = min(max(eps, 0.0), 1.0)
    return [(g0 + eps * d, eps)]


def _shifted_labels(problem: Problem, g: np.ndarray) -> list[tuple[np.ndarray, object]]:
    """p − onehot(y ∓ 1): each label one class off, as 1-based labels read as 0-based do."""
    labels = problem.labels
    if labels is None:
        return []
    if problem.k > 2 and len(np.unique(labels[~problem.ignored])) < 2:
        return []  # one labelled class: either other class next to it fits any wrong one-hot
    shifts = (-1,) if problem.k == 2 else (-1, 1)  # with two classes both name the other one
    return [(_ce_gradient(problem, target=np.where(problem.ignored, labels,
                                                    (labels + shift) % problem.k)), shift)
            for shift in shifts]


def _weights(problem: Problem, g: np.ndarray) -> list[tuple[np.ndarray, object]]:
    """Σ_c w_c·u_c·(p − e_c), w fitted: class weights left out, or applied unasked.

    u = (1 − ε)·y + ε/k is the unweighted target; PyTorch weighs its class-c part by w_c, so
    the gradient S·p − a is linear in w, and w solves the k x k normal equations, built from
    u and p without the (N·k, k) matrix of one gradient per class.
    """
    k = problem.k
    u = _ce_gradient_coefficients(problem, np.ones(k))
    p = problem.probabilities
    # <p_i − e_c, p_i − e_d> = |p_i|² − p_ic − p_id + [c = d], summed over i with u_ic·u_id
    up = u * p
    gram = (u.T @ (u * (p * p).sum(axis=1, keepdims=True)) - u.T @ up - up.T @ u
            + np.diag((u * u).sum(axis=0)))
    rhs = u.T @ (g * p).sum(axis=1) - (u * g).sum(axis=0)
    seen = np.diag(gram) > 0  # a class no sample weighs has no say
    one_class_a_row = (np.count_nonzero(u, axis=1) <= 1).all()  # hard labels, unsmoothed
    if one_class_a_row and np.count_nonzero(u.any(axis=1)) <= np.count_nonzero(seen):
        return []  # a sample a class: a factor of each sample's own fits as well as weights
    gram = gram[np.ix_(seen, seen)]
    rank = np.linalg.matrix_rank(gram, hermitian=True) if gram.size else 0
    if rank == 0 or rank < len(gram) or _free_entries(problem) <= rank:
        return []
    w = np.zeros(k)
    w[seen] = np.linalg.solve(gram, rhs[seen])
    given = (np.ones(k) if problem.weight is None else problem.weight)[seen]
    if np.allclose(w[seen] * given[0], given * w[seen][0], rtol=1e-9, atol=0):
        return []  # the right weights times a constant: the scale note's case, not weights
    return [(_ce_gradient(problem, weight=w),
             tuple(float(x) if s else None for x, s in zip(w, seen)))]


def _label_only(problem: Problem, g: np.ndarray) -> list[tuple[np.ndarray, object]]:
    """The right gradient at each label's entry and 0 off it: the normaliser's dependence on
    the other logits dropped, as if log Σ exp(z) moved with z_ℓ alone."""
    if problem.labels is None:
        return []
    on_label = np.zeros(problem.grad.shape, dtype=bool)
    kept = np.flatnonzero(~problem.ignored)
    on_label[kept, problem.labels[kept]] = True
    return [(np.where(on_label, problem.grad, 0.0), None)]


def _ignored_kept(problem: Problem, g: np.ndarray) -> list[tuple[np.ndarray, object]]:
    """The right gradient, but the rows of ignored samples not 0: p − onehot(y) with y the
    ignore index as NumPy indexes it (-100 is class k − 100), or p alone."""
    if problem.labels is None or not problem.ignored.any():
        return []
    rows, k = np.flatnonzero(problem.ignored), problem.k
    labels, p = problem.labels[rows], problem.probabilities
    candidates = []
    if ((labels >= -k) & (labels < k)).all():  # an index NumPy takes
        kept = p.copy()
        kept[rows, labels % k] -= 1
        candidates.append((np.where(problem.ignored[:, None], kept, problem.grad), "onehot"))
    candidates.append((np.where(problem.ignored[:, None], p, problem.grad), "p"))
    return candidates


def _probabilities(problem: Problem, g: np.ndarray) -> list[tuple[np.ndarray, object]]:
    """S·p: the target never subtracted."""
    return [(problem.a.sum(axis=1, keepdims=True) * problem.probabilities, None)]


def _target_only(problem: Problem, g: np.ndarray) -> list[tuple[np.ndarray, object]]:
    """−a: the softmax term missing, only −y left."""
    return [(-problem.a, None)]


def _by_probabilities(problem: Problem, g: np.ndarray) -> list[tuple[np.ndarray, object]]:
    """−a/p: the derivative by the probabilities, the chain rule through the softmax left out."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return [(np.where(problem.a == 0, 0.0, -problem.a / problem.probabilities), None)]


def _column_softmax(problem: Problem, g: np.ndarray) -> list[tuple[np.ndarray, object]]:
    """S·softmax(z, axis=0) − a: the softmax over the samples of each class, not each row."""
    if problem.n < 2:
        return []  # down one sample's column the softmax is 1: any gradient 1 − y would fit
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(problem.z - problem.z.max(axis=0, keepdims=True))
        return [(_ce_gradient(problem, p=e / e.sum(axis=0, keepdims=True)), None)]


def _sigmoid(problem: Problem, g: np.ndarray) -> list[tuple[np.ndarray, object]]:
    """S·σ(z) − a: a sigmoid in place of the softmax."""
    return [(_ce_gradient(problem, p=bce.sigmoid(problem.z)), None)]


def _unnormalised(problem: Problem, g: np.ndarray) -> list[tuple[np.ndarray, object]]:
    """S·exp(z) − a: the softmax without its normaliser Σ exp(z)."""
    with np.errstate(over="ignore"):
        return [(_ce_gradient(problem, p=np.exp(problem.z)), None)]


# Tried in this order, the fewest fitted parameters first: where few samples let two mistakes
# explain the same numbers (k weights can mimic smoothing when every label is one class), the
# plainer one is named. The first that explains every entry is the diagnosis.
MISTAKES = (
    Mistake("label_only", "p − y at the label, 0 off it", _label_only),
    Mistake("ignored_kept", "p − y in the rows of ignored samples too", _ignored_kept),
    Mistake("target_missing", "p", _probabilities),
    Mistake("softmax_missing", "−y", _target_only),
    Mistake("shifted_labels", "p − onehot(y + s)", _shifted_labels),
    Mistake("by_probabilities", "−y/p", _by_probabilities),
    Mistake("softmax_axis", "softmax(z, axis=0) − y", _column_softmax),
    Mistake("sigmoid", "σ(z) − y", _sigmoid),
    Mistake("normaliser_missing", "exp(z) − y", _unnormalised),
    Mistake("label_smoothing", "p − ((1 − ε)·y + ε/k)", _smoothing),
    Mistake("class_weights", "the gradient weighted by w", _weights, divisible=False),
)


def _within(analytic: np.ndarray, candidate: np.ndarray, tol: Tolerance) -> np.ndarray:
    """Returns where analytic meets candidate by the check's own test, entry by entry."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.abs(analytic - candidate) <= tol.atol + tol.rtol * np.abs(candidate)


def diagnose(problem: Problem, analytic: np.ndarray, tol: Tolerance) -> Diagnosis | None:
    """Returns the first typical mistake whose gradient is the analytic one at every entry.

    A mistake counts only when it explains every entry within the check's tolerance and its
    gradient is not the right one: a diagnosis is never a guess. Each is tried as it stands
    and divided by what reduction='mean' divides by (backward() of a mean loss).
    """
    if problem.loss != "ce" or problem.ignored is None:
        return None
    analytic = np.asarray(analytic, dtype=np.float64)
    if not np.isfinite(analytic).all():
        return None
    divisors = [None] + sorted({d for d in (problem.divisor, float(problem.n)) if d not in (0, 1)})
    given = {"label_smoothing": problem.label_smoothing,
             "class_weights": None if problem.weight is None else tuple(
                 float(w) for w in problem.weight),
             "ignored_kept": int(problem.labels[problem.ignored][0])
             if problem.labels is not None and problem.ignored.any() else None}
    for mistake in MISTAKES:
        for divisor in divisors if mistake.divisible else [None]:
            g = analytic if divisor is None else analytic * divisor
            with np.errstate(all="ignore"):  # a candidate of inf or NaN just does not match
                candidates = mistake.fit(problem, g)
            for candidate, parameter in candidates:
                if _within(g, candidate, tol).all() and not _within(candidate, problem.grad,
                                                                    tol).all():
                    with np.errstate(invalid="ignore", over="ignore"):
                        diff = float(np.abs(g - candidate).max(initial=0.0))
                    return Diagnosis(mistake=mistake.name, formula=mistake.formula,
                                     parameter=parameter, given=given.get(mistake.name),
                                     versus_given=_versus_given(mistake.name, parameter,
                                                                given.get(mistake.name), problem.k),
                                     divisor=divisor, max_abs_diff=diff,
                                     weighted=problem.weight is not None,
                                     smoothed=(problem.label_smoothing > 0
                                               or problem.labels is None))
    return None


def _versus_given(mistake: str, parameter, given, k: int) -> str | None:
    """Says how a fitted ε or w stands to what xent was given: 'untold' (xent was given none),
    'left_out' (the gradient has none: ε = 0, or every w = 1), 'spread' (ε/(k − 1) to each
    other class, PyTorch's ε = ε_given·k/(k − 1)) or 'other'; None for other mistakes."""
    if mistake == "label_smoothing":
        if not given:
            return "untold"
        if parameter == 0:
            return "left_out"
        return "spread" if abs(parameter * (k - 1) / k - given) < 1e-6 else "other"
    if mistake == "class_weights":
        if given is None:
            return "untold"
        if all(w is None or abs(w - 1) < 1e-6 for w in parameter):
            return "left_out"
        return "other"
    return None


# --- the whole check ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """The gradient report and, when asked for, the Hessian report."""

    gradient: CheckReport
    hessian: CheckReport | None = None

    @property
    def passed(self) -> bool:
        return self.gradient.passed and (self.hessian is None or self.hessian.passed)


# How a report names xent's own analytic gradient, loss, gradient function and Hessian.
XENT_NAMES = {
    "ce": ("xent's analytic gradient", "xent's loss", "xent's gradient",
           "xent's Hessian S·(diag(p) − ppᵀ)"),
    "bce": ("xent's analytic BCE gradient", "xent's BCE loss", "xent's BCE gradient",
            "xent's Hessian diag(S·σ(1 − σ))"),
}


def run(problem: Problem, *, grad: usercode.UserFunction | None = None,
        loss: usercode.UserFunction | None = None, hess: usercode.UserFunction | None = None,
        expr: str | None = None,
        method: str = "central", dtype: str = "float64", eps: float | None = None,
        rtol: float | None = None, atol: float | None = None, hessian: bool = False,
        sweep: bool = False, directional: bool = False, symbolic: bool | None = None,
        seed: int = 0) -> Outcome:
    """Checks a gradient (the user's ``grad``, a formula ``expr``, or xent's) and its Hessian.

    grad, loss and hess are the user's functions, when given. The tolerances follow the method and
    the precision: float32 when dtype is, or when the user's gradient or loss comes back as
    float32.
    symbolic None means: the route through 'xent derive' for xent's own gradient, for modest
    sizes (N <= SYMBOLIC_MAX_N, k <= SYMBOLIC_MAX_K).
    """
    n, k, y = problem.n, problem.k, problem.target
    if (hessian or hess is not None) and n * k * k > HESSIAN_MAX_ENTRIES:  # before any work
        raise XentError(f"--hessian of {n:,} samples of {k:,} classes holds {n * k * k:,} entries "
                        f"({n * k * k * 8 / 1e9:.1f} GB of float64, several times over); check "
                        f"the Hessian of fewer samples or classes (up to "
                        f"{HESSIAN_MAX_ENTRIES:,} entries)")
    cast = dtype if dtype == "float32" else None
    if grad is not None:
        analytic, analytic_source = usercode.gradient(grad, y, n, k, cast)(problem.z), grad.name
    elif expr is not None:
        analytic, analytic_source = expression_gradient(problem, expr), f"the expression {expr}"
    else:
        analytic, analytic_source = problem.grad, f"{XENT_NAMES[problem.loss][0]} ({dtype})"
    precision = _precision(dtype, analytic)

    _, loss_source, gradient_source, hessian_source = XENT_NAMES[problem.loss]
    agreements = []
    loss_numeric = loss_function(problem)
    # xent's loss is float64 whatever the gradient under test: float32's step of 5e-3·|z| on it
    # failed a right float32 gradient at logits of 100 and more
    loss_precision = "float64"
    if loss is not None:
        loss_numeric, loss_source = usercode.loss(loss, y, n, cast), loss.name
        values = loss_numeric(problem.z)
        # a float32 loss differentiated with float64's step and tolerances fails where it is right
        loss_precision = _precision(dtype, values)
        precision = _precision(precision, values)
        agreements.append(loss_agreement(problem, values, loss.name, precision))
    if symbolic is None:
        symbolic = n <= SYMBOLIC_MAX_N and k <= SYMBOLIC_MAX_K
    if symbolic and grad is None and expr is None:
        agreements.append(symbolic_agreement(problem, analytic, precision))

    tol = tolerance(method, precision, eps=eps, rtol=rtol, atol=atol,
                    step_precision=loss_precision)
    check = check_directional if directional else check_gradient
    extra = dict(seed=seed) if directional else dict(sweep=sweep)
    report = check(problem, analytic, loss_numeric, tol, analytic_source=analytic_source,
                   loss_source=loss_source, agreements=tuple(agreements), **extra)
    if loss is not None and grad is None and expr is None:
        report = replace(report, numeric_under_test=True)
    if not (hessian or hess is not None):
        return Outcome(report)

    if hess is not None:
        analytic_hessian = usercode.hessian(hess, y, n, k, cast)(problem.z)
        hessian_source = hess.name
    else:
        analytic_hessian = xent_hessian(problem)
    if grad is not None:
        gradient, gradient_source = usercode.gradient(grad, y, n, k, cast), grad.name
    else:
        gradient = gradient_function(problem)
    hessian_tol = tolerance(method, _precision(precision, analytic_hessian), eps=eps, rtol=rtol,
                            atol=atol, step_precision=_precision(dtype, analytic)
                            if grad is not None else "float64")
    hessian_report = check_hessian(problem, analytic_hessian, gradient, hessian_tol,
                                   analytic_source=hessian_source, gradient_source=gradient_source)
    return Outcome(report, replace(hessian_report,
                                   numeric_under_test=hess is None and grad is not None))


def _precision(dtype: str, values: np.ndarray) -> str:
    """Returns float32 when asked for or when values come back in a narrower float."""
    return "float32" if dtype == "float32" or np.asarray(values).dtype.itemsize < 8 else "float64"
