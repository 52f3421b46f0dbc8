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
- A weighted 'mean' whose weights sum beyond the dtype's range is an InputError too (PyTorch
  divides by inf: a loss and gradient of 0); weights scaled down give the same mean.
- Soft target rows must be >= 0 and sum to 1 within SOFT_TARGET_TOLERANCE * k.

The computation runs in row blocks of about BLOCK_LOGITS logits, in place in the gradient, so
memory is the gradient and little more; a block's rows never see the others, so splitting the
input (``loss_and_gradient_into``, for streams) changes no bit of any row.

The computation runs in the requested dtype, as torch would for float32 logits. The log-softmax
subtracts each row's maximum, so every finite float64 logit (+-1e300 included) gives a finite
loss and gradient; only a loss that truly exceeds the dtype's range is reported as an error.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from xent_cli.errors import InputError

REDUCTIONS = ("mean", "sum", "none")

# How far a soft target row's sum may stray from 1, per class (rows are often rounded text).
SOFT_TARGET_TOLERANCE = 1e-6


@dataclass(frozen=True)
class CrossEntropyResult:
    """The loss, its per-sample parts and its gradient with respect to the logits.

    ``probs`` and ``log_probs`` are computed on first use from the logits, which the result holds
    by reference: most callers never need these two (N, k) arrays, and they cost as much as the
    gradient. Do not change the logits in place before reading them.
    """

    reduction: str
    loss: float | None  # the reduced loss for 'mean' and 'sum'; None for 'none'
    per_sample: np.ndarray  # (N,) PyTorch's reduction='none' (weights and smoothing applied)
    grad: np.ndarray  # (N, k) d loss / d z; for 'none', each sample's own gradient
    total: float  # sum of per_sample
    divisor: float  # what 'mean' divides total by; kept so chunks combine exactly
    ignored: np.ndarray  # (N,) bool
    logits: np.ndarray = field(repr=False, compare=False)  # (N, k) z as given, as floats

    @cached_property
    def log_probs(self) -> np.ndarray:
        """(N, k) log_softmax(z) in the dtype of the gradient."""
        return log_softmax(self.logits.astype(self.grad.dtype, copy=False))

    @cached_property
    def probs(self) -> np.ndarray:
        """(N, k) softmax(z) in the dtype of the gradient."""
        return softmax(self.logits.astype(self.grad.dtype, copy=False))


@dataclass(frozen=True)
class BlockSums:
    """What a block of samples adds to a loss: blocks combine through total and divisor."""

    total: float  # sum of the block's per-sample losses
    divisor: float  # the block's share of what 'mean' divides by
    ignored: np.ndarray  # (n,) bool


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
    _check_smoothing(label_smoothing)
    dtype = np.dtype(dtype)
    z = _logit_array(z)
    n, k = z.shape
    weighted = weight is not None
    weight = _weight(weight, k, dtype)
    target, ignored = _target_after_earlier_samples(
        z, target, ignore_index, dtype, weight if weighted else None, label_smoothing)
    divisor = _divisor(target, ignored, weight if weighted else None, dtype)
    if reduction == "mean" and not divisor > 0:
        raise InputError(_no_mean_reason(n, ignored, ignore_index))
    if reduction == "mean" and np.isinf(divisor):  # total / inf would be a silent 0
        raise InputError(divisor_beyond_range(dtype))

    grad = np.empty((n, k), dtype=dtype)
    per_sample = np.empty(n, dtype=dtype)
    scale = dtype.type(1) / divisor if reduction == "mean" else dtype.type(1)
    with np.errstate(over="ignore"):  # an overflow shows in the total, refused just below
        _fill(z, target, ignored, weight if weighted else None, label_smoothing, scale, grad,
              per_sample)
        total = per_sample.sum(dtype=dtype)
    if not np.isfinite(total):
        raise InputError(f"the loss overflows {dtype.name}; the logits or weights are too large")

    loss = None
    if reduction == "mean":
        loss = float(total / divisor)
    elif reduction == "sum":
        loss = float(total)
    return CrossEntropyResult(
        reduction=reduction, loss=loss, per_sample=per_sample, grad=grad, total=float(total),
        divisor=float(divisor), ignored=ignored, logits=z,
    )


def loss_and_gradient_into(z, target, grad: np.ndarray | None, per_sample: np.ndarray, *,
                           weight=None, ignore_index: int = -100, label_smoothing: float = 0.0,
                           scale: float = 1.0, first_sample: int = 0, probs: np.ndarray | None = None,
                           predictions: np.ndarray | None = None, whole: bool = True) -> BlockSums:
    """Writes a block's per-sample losses into per_sample and scale * d(their sum)/dz into grad.

    per_sample (n,) sets the dtype of the computation; grad, when given, must be a C-contiguous
    (n, k) array of it; without it no gradient is computed (a loss-only pass is about half the
    work). probs (n, k), when given, receives softmax(z) with the bits of ``softmax``, and
    predictions (n,) each sample's first largest logit, as argmax gives it.
    The block is validated as cross_entropy validates its input; errors
    name the sample as first_sample + its row, and whole = False says that the block is part
    of a larger input (a hint about its labels would need the others). With scale = 1 the
    gradient is unscaled, so a
    stream of blocks gives 'sum' directly and 'mean' after dividing by the summed divisors; a
    pass with scale = dtype(1) / divisor gives cross_entropy's 'mean' rows bit for bit.
    Unlike cross_entropy it does not refuse a total that overflows: check the sum of totals.
    """
    _check_smoothing(label_smoothing)
    try:
        z = _logit_array(z)
        n, k = z.shape
        dtype = per_sample.dtype
        if per_sample.shape != (n,) or dtype.kind != "f":
            raise ValueError(f"per_sample must be a ({n},) array of floats")
        for name, out in (("grad", grad), ("probs", probs)):
            if out is not None and (out.shape != (n, k) or not out.flags.c_contiguous
                                    or out.dtype != dtype):
                raise ValueError(f"{name} must be a C-contiguous ({n}, {k}) array of {dtype.name}")
        if predictions is not None and (predictions.shape != (n,)
                                        or predictions.dtype.kind not in "iu"):
            raise ValueError(f"predictions must be a ({n},) array of integers")
        weighted = weight is not None
        weight = _weight(weight, k, dtype)
        target, ignored = _target_after_earlier_samples(
            z, target, ignore_index, dtype, weight if weighted else None, label_smoothing, whole)
        _fill(z, target, ignored, weight if weighted else None, label_smoothing,
              dtype.type(scale), grad, per_sample, probs, predictions)
    except InputError as error:
        raise _moved(error, first_sample) from None
    divisor = _divisor(target, ignored, weight if weighted else None, dtype)
    with np.errstate(over="ignore"):  # an overflow shows in the total, which the caller checks
        total = per_sample.sum(dtype=dtype)
    return BlockSums(total=float(total), divisor=float(divisor), ignored=ignored)


# A block holds about this many logits, so that its temporaries stay in the processor's cache.
BLOCK_LOGITS = 1 << 17

# Up to this many classes a block is worked class-major, as (k, n): every NumPy operation then
# runs over n samples at once instead of k classes at a time, which is slow for small k.
CLASS_MAJOR_MAX_K = 32


# From this many logits on, a call is worked in row ranges by several threads (NumPy lets go
# of the GIL); below, starting threads costs more than they save. A CSV block of 8 MB holds
# about 820,000 logits: the stream's parser threads keep the other cores busy meanwhile.
THREADED_LOGITS = 1 << 20


def _fill(z: np.ndarray, target: np.ndarray, ignored: np.ndarray, weight: np.ndarray | None,
          label_smoothing: float, scale, grad: np.ndarray | None, per_sample: np.ndarray,
          probs: np.ndarray | None = None, predictions: np.ndarray | None = None) -> None:
    """Writes per-sample losses and, where asked, scale * their gradient, the probabilities and
    the predicted classes, block by block; a large input in row ranges, one a thread.

    A row's bits do not depend on the rows beside it, so the ranges change none of them, and
    an error is the one of the first bad sample, as one thread would raise it.
    """
    def fill(start: int, stop: int) -> None:
        rows = slice(start, stop)
        cut = (lambda array: None if array is None else array[rows])
        try:
            if target.ndim == 1 and not label_smoothing:
                _fill_index(z[rows], target[rows], ignored[rows], weight, scale, cut(grad),
                            per_sample[rows], cut(probs), cut(predictions))
            else:
                _fill_general(z[rows], target[rows], ignored[rows], weight, label_smoothing,
                              scale, cut(grad), per_sample[rows], cut(probs), cut(predictions))
        except InputError as error:
            raise _moved(error, start) from None

    n, k = z.shape
    parts = min(n * k // THREADED_LOGITS, n)  # first: no system call for the many small calls
    threads = min(_cores(), parts) if parts >= 2 else 1
    if threads < 2:
        fill(0, n)
        return
    from concurrent.futures import ThreadPoolExecutor

    bounds = [n * part // threads for part in range(threads + 1)]
    with ThreadPoolExecutor(threads, thread_name_prefix="xent-kernel") as pool:
        done = [pool.submit(fill, start, stop) for start, stop in zip(bounds, bounds[1:])]
    for part in done:  # in row order: the first range's error holds the first bad sample
        part.result()


def _cores() -> int:
    """Returns how many cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):  # Linux: the CPUs taskset or a cpuset leaves it
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _moved(error: InputError, start: int) -> InputError:
    """Returns a core error of the rows from start on, its sample counted from row 0."""
    if not start or error.sample is None:
        return error
    return error.replace(sample=error.sample + start)


class _Blocks:
    """The row blocks of z, each copied into a working array in the layout that suits k.

    Up to CLASS_MAJOR_MAX_K classes a block is worked class-major, as (k, rows); above, as
    (rows, k), in place in the gradient when there is one.
    """

    def __init__(self, z: np.ndarray, dtype: np.dtype, grad: np.ndarray | None):
        k = z.shape[1]
        self.z, self.dtype, self.grad = z, dtype, grad
        self.class_major = k <= CLASS_MAJOR_MAX_K
        self.axis = 0 if self.class_major else 1
        self.rows = max(1, BLOCK_LOGITS // k)
        self.shape = (k, self.rows) if self.class_major else (self.rows, k)
        self.buffer = (np.empty(self.shape, dtype=dtype)
                       if self.class_major or grad is None else None)
        if self.class_major:  # for predict: k <= 32 fits in a byte
            self.top_bytes, self.score = (np.empty(self.shape, dtype=np.uint8) for _ in range(2))
            self.class_score = np.arange(k, 0, -1, dtype=np.uint8)[:, None]

    def __iter__(self):
        """Yields (start, stop, e): e holds z[start:stop] - its row maxima, validated."""
        n = self.z.shape[0]
        for start in range(0, n, self.rows):
            stop = min(start + self.rows, n)
            e = (self.grad[start:stop] if self.buffer is None  # row-major: in place in grad
                 else self.cut(self.buffer, stop - start))
            with np.errstate(over="ignore"):  # a logit too large for dtype is refused just below
                e[...] = self.z[start:stop].T if self.class_major else self.z[start:stop]
            top = e.max(axis=self.axis, keepdims=True)
            try:
                _check_block(self.z, e, top, self.dtype, start, stop)
            except InputError as error:
                # the rows before the bad logit are worked first: a masked class at the label
                # of one of them is the earlier error, which a stream cut there would name
                good = error.sample - start
                if good > 0:
                    e = self.cut(e, good)
                    with np.errstate(over="ignore"):
                        np.subtract(e, self.cut(top, good) if self.class_major else top[:good],
                                    out=e)
                    yield start, start + good, e
                raise
            with np.errstate(over="ignore"):  # a spread beyond the dtype's range gives -inf
                np.subtract(e, top, out=e)
            yield start, stop, e

    def cut(self, array: np.ndarray, count: int) -> np.ndarray:
        """Returns the first count samples of a block-shaped array."""
        return array[:, :count] if self.class_major else array[:count]

    def put(self, out: np.ndarray, start: int, stop: int, block: np.ndarray) -> None:
        """Writes a block-shaped array into rows start:stop of an (N, k) array."""
        out[start:stop] = block.T if self.class_major else block

    def predict(self, g: np.ndarray, out: np.ndarray) -> None:
        """Writes each sample's first class where g = z - max z is 0: argmax, ties to the first."""
        if not self.class_major:
            out[...] = g.argmax(axis=1)
            return
        # class c at the top scores k - c, any other 0: the largest score is the first top class.
        # Whole-block operations in bytes: several times faster than argmax across the classes.
        k, count = g.shape
        top, score = self.top_bytes[:, :count], self.score[:, :count]
        np.equal(g, 0, out=top.view(bool))
        np.multiply(top, self.class_score, out=score)
        np.subtract(k, score.max(axis=0), out=out, casting="unsafe")

    def probabilities(self, e: np.ndarray, out: np.ndarray, start: int, stop: int) -> None:
        """Writes e / (its sum over classes), e = exp(z - max z), into rows start:stop of out."""
        total = _sum_classes(e, self.axis, keepdims=True)
        self.put(out, start, stop, e / total)


def softmax(z: np.ndarray) -> np.ndarray:
    """Returns softmax(z) row by row: exp(z - max) / sum exp(z - max), in the dtype of z.

    The same blocks and arithmetic as the loss kernel's probabilities, so the bits agree. A row
    with NaN or +inf, or only -inf, is an InputError.
    """
    z = _logit_array(z)
    probs = np.empty(z.shape, dtype=z.dtype)
    blocks = _Blocks(z, z.dtype, None)
    for start, stop, e in blocks:
        np.exp(e, out=e)
        blocks.probabilities(e, probs, start, stop)
    return probs


def _fill_index(z: np.ndarray, y: np.ndarray, ignored: np.ndarray, weight: np.ndarray | None,
                scale, grad: np.ndarray | None, per_sample: np.ndarray, probs: np.ndarray | None,
                predictions: np.ndarray | None) -> None:
    """Plain class indices: loss_i = c_i * -log p_iy, grad_i = scale * c_i * (p_i - onehot(y_i)).

    c_i is w[y_i], or 1 without weights, and 0 for an ignored sample. No (N, k) coefficient
    matrix: the label's entry is read and written by flat fancy indexing.
    """
    n, k = z.shape
    dtype = per_sample.dtype
    y = y.astype(np.intp, copy=False)  # flat indices below outgrow uint8 or int16 labels
    c = None
    if weight is not None or ignored.any():
        y = np.where(ignored, 0, y)
        c = np.ones(n, dtype=dtype) if weight is None else weight[y]
        c[ignored] = 0
    blocks = _Blocks(z, dtype, grad)
    rows = blocks.rows
    if blocks.class_major:
        first_class = np.arange(rows)  # flat index of each sample's class 0; classes are rows apart
        class_step = rows
    else:
        first_class = np.arange(rows) * k
        class_step = 1
    for start, stop, e in blocks:
        count = stop - start
        flat = (blocks.buffer if blocks.class_major else e).reshape(-1)
        if predictions is not None:
            blocks.predict(e, predictions[start:stop])
        label = y[start:stop] * class_step
        label += first_class[:count]
        shifted_label = flat[label]
        np.exp(e, out=e)
        if probs is not None:
            blocks.probabilities(e, probs, start, stop)
        e_label = flat[label]
        flat[label] = 0
        rest = _sum_classes(e, blocks.axis)  # sum_{c != y} exp(z_c - max), exact if y is confident
        # -log p_y = log1p(rest + e_y - 1) - (z_y - max). At the maximum e_y - 1 = 0, and log1p
        # keeps a confident sample's tiny loss; below it rest >= 1 (the maximum's own exp(0)),
        # the loss exceeds log 2, and neither part cancels the other.
        loss = np.log1p(rest + (e_label - 1)) - shifted_label
        per = per_sample[start:stop]
        if c is None:
            per[...] = loss
        else:
            block_c = c[start:stop]
            with np.errstate(invalid="ignore"):  # inf * 0 at a masked label, set to 0 below
                np.multiply(loss, block_c, out=per)
            per[block_c == 0] = 0  # an ignored or zero-weight sample adds 0, even at a masked label
        if not np.isfinite(per).all():
            _refuse_infinite_label(z, y, c, dtype, start, stop)
        if grad is None:
            continue
        total = rest + e_label
        factor = scale / total
        if c is not None:
            factor *= c[start:stop]
        e *= factor if blocks.class_major else factor[:, None]
        # p_y - 1 = -rest / total, without cancellation; + 0 turns the -0 of an ignored or
        # certain sample into 0, as PyTorch writes it
        flat[label] = -rest * factor + 0
        if blocks.class_major:
            grad[start:stop] = e.T


def _fill_general(z: np.ndarray, target: np.ndarray, ignored: np.ndarray,
                  weight: np.ndarray | None, label_smoothing: float, scale,
                  grad: np.ndarray | None, per_sample: np.ndarray, probs: np.ndarray | None,
                  predictions: np.ndarray | None) -> None:
    """Any coefficients a (smoothing, soft targets): loss_i = -sum_c a_ic log p_ic, per block.

    With g = z - max z, e = exp(g) and lse = log sum e: loss_i = S_i lse_i - sum_c a_ic g_ic
    (both terms >= 0, so nothing cancels) and grad_i = scale (S_i e_i / sum e_i - a_i), where
    S_i = sum_c a_ic. The block's a is built in the block's layout, never for all N samples.
    """
    k = z.shape[1]
    dtype = per_sample.dtype
    weight = np.ones(k, dtype=dtype) if weight is None else weight
    eps = dtype.type(label_smoothing)
    blocks = _Blocks(z, dtype, grad)
    class_major, axis, rows = blocks.class_major, blocks.axis, blocks.rows
    shifted, a, work = (np.empty(blocks.shape, dtype=dtype) for _ in range(3))
    is_one = np.empty(blocks.shape, dtype=bool)
    if target.ndim == 1:
        y = np.where(ignored, 0, target).astype(np.intp)
        first_class = np.arange(rows) if class_major else np.arange(rows) * k
        class_step = rows if class_major else 1
        smooth = (eps / k) * weight
        label_part = (1 - eps) * weight
    for start, stop, e in blocks:
        count = stop - start
        g, ab, tmp, one = (blocks.cut(array, count) for array in (shifted, a, work, is_one))

        def block(array):  # rows start:stop of an (N, k) array, in the block's layout
            return array[start:stop].T if class_major else array[start:stop]

        g[...] = e
        if predictions is not None:
            blocks.predict(g, predictions[start:stop])
        np.exp(g, out=e)
        if probs is not None:
            blocks.probabilities(e, probs, start, stop)
        # The largest entries are exactly exp(0) = 1. Summing the rest apart keeps it exact when
        # it is tiny, and lse = log1p(rest) keeps a confident sample's tiny loss.
        np.equal(e, 1, out=one)
        np.subtract(e, one, out=tmp)
        rest = _sum_classes(tmp, axis)
        rest += one.sum(axis=axis) - 1  # ties at the top count 1 each
        lse = np.log1p(rest)

        if target.ndim == 2:  # as coefficients(): w * (t (1 - eps) + eps / k)
            ab[...] = block(target)
            ab *= 1 - eps
            ab += eps / k
            ab *= weight[:, None] if class_major else weight
        else:
            ab[...] = smooth[:, None] if class_major else smooth
            label = y[start:stop] * class_step
            label += first_class[:count]
            ab_flat = a.reshape(-1) if class_major else ab.reshape(-1)
            ab_flat[label] += label_part[y[start:stop]]
            if class_major:
                ab[:, ignored[start:stop]] = 0
            else:
                ab[ignored[start:stop]] = 0
        total_a = _sum_classes(ab, axis)
        with np.errstate(invalid="ignore"):  # 0 * -inf at a masked class: see _masked_cross
            np.multiply(ab, g, out=tmp)
        cross = _sum_classes(tmp, axis)  # sum_c a_ic g_ic <= 0; NaN where a masked class has a = 0
        bad = ~np.isfinite(cross)
        if bad.any():
            cross[bad] = _masked_cross(z, g, ab, bad, class_major, dtype, start)
        per = per_sample[start:stop]
        np.multiply(total_a, lse, out=per)
        per -= cross
        per += 0  # ignored samples: -0 becomes 0
        if grad is None:
            continue
        factor = total_a / (1 + rest)
        e *= factor if class_major else factor[:, None]
        e -= ab
        if scale != 1:  # last, so that 'mean' is exactly 'sum' times 1 / divisor
            e *= scale
        if class_major:
            grad[start:stop] = e.T


def _masked_cross(z: np.ndarray, g: np.ndarray, a: np.ndarray, bad: np.ndarray,
                  class_major: bool, dtype: np.dtype, start: int) -> np.ndarray:
    """Returns sum_c a_ic g_ic for the bad samples, where 0 * log 0 counts as 0.

    Raises InputError where a class with g = -inf (log p = -inf) has a positive coefficient.
    """
    g_bad, a_bad = (g[:, bad], a[:, bad]) if class_major else (g[bad], a[bad])
    infinite = np.isneginf(g_bad) & (a_bad > 0)
    if infinite.any():
        rows = np.flatnonzero(bad)
        where = np.zeros((len(bad), z.shape[1]), dtype=bool)
        where[rows] = infinite.T if class_major else infinite
        stop = start + len(bad)
        _refuse_infinite_loss(z[start:stop].astype(dtype), where, start)
    with np.errstate(invalid="ignore"):  # 0 * -inf, replaced by 0 at once
        product = np.where(a_bad > 0, a_bad * g_bad, 0)
    if class_major:  # the boolean index left it column-major, which NumPy would sum pairwise
        product = np.ascontiguousarray(product)
    return _sum_classes(product, 0 if class_major else 1)


def _sum_classes(x: np.ndarray, axis: int, keepdims: bool = False) -> np.ndarray:
    """Returns x summed over its class axis, the same bits whatever samples share the block.

    NumPy adds a class-major (k, n) block one class after another, but a lone sample's (k, 1)
    column pairwise, which changes the last bits: that column is added in order too.
    """
    if axis == 0 and x.shape[1] == 1:
        total = np.add.accumulate(x, axis=0)[-1:]
        return total if keepdims else total[0]
    return x.sum(axis=axis, keepdims=keepdims)


def _check_block(z: np.ndarray, block: np.ndarray, top: np.ndarray, dtype: np.dtype, start: int,
                 stop: int) -> None:
    """Validates rows start:stop of z, copied into block in dtype, from their maxima top.

    A row's maximum is finite unless the row holds NaN or +inf or is all -inf; a narrower dtype
    may also turn a large logit into +-inf. Only then are the rows searched for the culprit.
    """
    suspect = not np.isfinite(top).all()
    if not suspect and np.finfo(dtype).max < np.finfo(z.dtype).max:
        suspect = np.isinf(block).any()
    if suspect:
        _check_logits(z[start:stop], dtype, start)


def _refuse_infinite_label(z: np.ndarray, y: np.ndarray, c: np.ndarray | None, dtype: np.dtype,
                           start: int, stop: int) -> None:
    """Raises InputError where a counted sample's label has log p = -inf in rows start:stop."""
    block = z[start:stop].astype(dtype)
    rows = np.arange(stop - start)
    infinite = np.zeros(block.shape, dtype=bool)
    counted = True if c is None else c[start:stop] > 0
    infinite[rows, y[start:stop]] = np.isneginf(log_softmax(block)[rows, y[start:stop]]) & counted
    _refuse_infinite_loss(block, infinite, start)


def _divisor(target: np.ndarray, ignored: np.ndarray, weight: np.ndarray | None,
             dtype: np.dtype):
    """Returns what 'mean' divides by: the counted samples' target weights, or N for soft targets."""
    if target.ndim == 2:
        return dtype.type(len(target))
    if weight is None:
        return dtype.type(len(target) - np.count_nonzero(ignored))
    counts = np.bincount(target[~ignored].astype(np.intp), minlength=len(weight))
    return _weighted_count(weight, counts, dtype)


def _weighted_count(weight: np.ndarray, counts: np.ndarray, dtype: np.dtype):
    """Returns sum_c weight[c] * counts[c] in dtype, summed exactly and rounded once (inf beyond
    the dtype's range: 'mean' refuses it, 'sum' does not need it).

    Rounded once, the divisor has the same bits however the samples were cut into chunks: a
    stream adds up the counts. Summed in dtype chunk by chunk, 300,000 float32 weighted labels
    had a divisor 0.03 apart on the fast and the strict reader, and every gradient entry moved.
    """
    total = 0  # in units of 2**-1074, the smallest float64: every weight is a whole number of them
    for w, count in zip(weight[counts > 0].tolist(), counts[counts > 0].tolist()):
        numerator, denominator = w.as_integer_ratio()
        total += numerator * count << (1075 - denominator.bit_length())
    try:
        exact = total / (1 << 1074)  # Python rounds a quotient of integers correctly
    except OverflowError:
        exact = math.inf
    with np.errstate(over="ignore"):
        return dtype.type(exact)


def label_counts(labels, k: int, ignore_index: int = -100) -> np.ndarray:
    """Returns how many samples each of the k classes has among labels, those ignored and any
    label that is no class index left out."""
    labels = np.asarray(labels)
    counted = labels[(labels != ignore_index) & (labels >= 0) & (labels < k)]
    return np.bincount(counted.astype(np.intp), minlength=k)


def weighted_divisor(counts: np.ndarray, weight, dtype=np.float64) -> float:
    """Returns what 'mean' divides by for class weights, counts[c] samples labelled c: the same
    bits as cross_entropy's divisor of those samples, however they were counted."""
    dtype = np.dtype(dtype)
    return float(_weighted_count(_weight(weight, len(counts), dtype), counts, dtype))


def mean_divisor(target, k: int, *, weight=None, ignore_index: int = -100,
                 dtype=np.float64) -> float:
    """Returns what 'mean' divides a block's summed loss by, bit for bit as cross_entropy does.

    target is the block's integer labels (n,) or, for soft targets, only their number n. A
    label that is no class index counts as ignored here: cross_entropy refuses it anyway.
    """
    dtype = np.dtype(dtype)
    if np.ndim(target) == 0:  # soft targets: only the number of rows matters
        return float(_divisor(np.empty((int(target), 0)), None, None, dtype))
    labels = np.asarray(target)
    ignored = (labels == ignore_index) | (labels < 0) | (labels >= k)
    weight = None if weight is None else _weight(weight, k, dtype)
    return float(_divisor(labels, ignored, weight, dtype))


def _check_smoothing(label_smoothing: float) -> None:
    if not 0.0 <= label_smoothing <= 1.0:
        raise InputError(f"label smoothing {label_smoothing} is outside [0, 1]")


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
    raw = _logit_array(z)
    _check_logits(raw, dtype)
    return raw.astype(dtype, copy=False)


def _logit_array(z) -> np.ndarray:
    """Returns z as a float array of shape (N, k >= 2); its values are checked apart.

    A float array keeps its dtype (the blocks convert it): float32 logits are not widened whole.
    """
    try:
        raw = np.asarray(z)
        if raw.dtype.kind != "f":
            raw = raw.astype(np.float64)
    except (TypeError, ValueError):
        raise InputError("logits must be numbers") from None
    if raw.ndim != 2:
        raise InputError(f"logits must be a 2-D array (samples x classes), got shape {raw.shape}")
    if raw.shape[1] < 2:
        raise InputError(f"there must be at least 2 classes, got {raw.shape[1]}")
    return raw


def _check_logits(raw: np.ndarray, dtype: np.dtype, offset: int = 0) -> None:
    """Raises InputError at the first bad logit of raw, whose row 0 is sample offset."""
    checks = [(np.isnan(raw), "logit is NaN; only -inf (a masked class) is allowed", True),
              (np.isposinf(raw), "logit is +inf; only -inf (a masked class) is allowed", True),
              (np.isneginf(raw).all(axis=1), "every logit is -inf: all classes are masked", True)]
    if raw.dtype != dtype:
        with np.errstate(over="ignore"):
            z = raw.astype(dtype)
        checks.append((np.isinf(z) & ~np.isinf(raw), f"logit does not fit in {dtype.name}", True))
    _first_bad(*checks, offset=offset)


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


def _target_after_earlier_samples(z: np.ndarray, target, ignore_index: int, dtype: np.dtype,
                                  weight: np.ndarray | None, label_smoothing: float,
                                  whole: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Returns _target's targets and ignored mask; where a target is bad, the samples before it
    are worked first, and an error of theirs (a bad logit, a masked label) is the one raised, as a
    stream that meets the samples in order raises it."""
    n, k = z.shape
    try:
        return _target(target, n, k, ignore_index, dtype, whole)
    except InputError as error:
        if error.sample:
            before = error.sample
            loss_and_gradient_into(z[:before], np.asarray(target)[:before], None,
                                   np.empty(before, dtype=dtype), weight=weight,
                                   ignore_index=ignore_index, label_smoothing=label_smoothing,
                                   whole=False)
        raise


def _target(target, n: int, k: int, ignore_index: int, dtype: np.dtype,
            whole: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Returns validated targets (int (N,) or dtype (N, k)) and the ignored mask (N,); whole
    says that these are all the input's labels, so that a hint drawn from them holds."""
    target = np.asarray(target)
    if target.ndim == 2:
        return _soft_target(target, n, k, dtype), np.zeros(n, dtype=bool)
    if target.ndim != 1 or len(target) != n:
        raise InputError(f"targets must be {n} class indices or a {n} x {k} array of "
                         f"probabilities, got shape {target.shape}")
    fractional = np.zeros(n, dtype=bool)
    if not np.issubdtype(target.dtype, np.integer):
        try:
            as_float = target.astype(np.float64)
        except (TypeError, ValueError):
            raise InputError("labels must be integer class indices") from None
        fractional = ~np.isfinite(as_float) | (as_float != np.round(as_float))
        with np.errstate(invalid="ignore"):  # nan and inf become some integer, unused
            target = np.where(fractional, ignore_index, as_float).astype(np.int64)
    ignored = target == ignore_index
    bad = np.flatnonzero(fractional | (~ignored & ((target < 0) | (target >= k))))
    if bad.size:
        i = bad[0]
        if fractional[i]:  # the first bad sample's fault, whichever comes first
            raise InputError("label is not an integer", sample=int(i))
        counted = target[~ignored]
        hint = ""
        # MATLAB, R and Julia count from 1: labels 1..k, none 0, are those shifted by one (told
        # only from all the labels: a block of a larger input may lack the 0s of another)
        if whole and target[i] == k and counted.min() == 1 and counted.max() == k:
            hint = counted_from_one_hint(k)
        # -1 marks unlabelled samples in many datasets (scikit-learn's, TensorFlow's); with
        # another ignore index chosen, there is no room for a second
        if target[i] < 0 and ignore_index == -100:
            hint = (f"; if {target[i]} marks samples to leave out, make it the ignore index "
                    f"(--ignore-index {target[i]})")
        raise InputError(f"label {target[i]} is not a class index 0..{k - 1} "
                         f"(nor the ignore index {ignore_index}){hint}", sample=int(i))
    return target, ignored


def counted_from_one_hint(k: int) -> str:
    """Returns what a label k adds when all the labels run 1..k with no 0."""
    return (f"; the labels run 1..{k} with no 0: counted from 1? Classes count from 0, as in "
            f"PyTorch: subtract 1")


def _soft_target(t: np.ndarray, n: int, k: int, dtype: np.dtype) -> np.ndarray:
    """Returns soft targets as (N, k) of dtype; rows must be probabilities."""
    if t.shape != (n, k):
        raise InputError(f"soft targets must have shape ({n}, {k}) like the logits, got {t.shape}")
    try:
        t = np.asarray(t, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("soft targets must be numbers") from None
    sums = t.sum(axis=1)
    # NaN and +-inf reach the row sums and NaN the minimum: search entries only when one is off.
    off = np.abs(sums - 1) > SOFT_TARGET_TOLERANCE * k  # false at NaN
    first_off = int(off.argmax()) if off.any() else n
    if not (np.isfinite(sums).all() and (t.size == 0 or t.min() >= 0)):
        head = t[:first_off + 1]  # a bad entry after a row that does not sum to 1 comes second
        _first_bad((~np.isfinite(head), "target probability is not a finite number"),
                   (head < 0, "target probability is negative"))
    if off.any():
        i = first_off
        multi_hot = sums[i] > 1 and np.isin(t[i], (0.0, 1.0)).all()
        decimals = _rounded_to(t[i])
        rounded = (decimals is not None and not multi_hot
                   and abs(sums[i] - 1) <= k * 0.5 * 10.0**-decimals)
        raise InputError(f"target probabilities sum to {sums[i]:.9g}, not 1"
                         + ("; several 1s in a row are multi-label targets: --loss bce"
                            if multi_hot else "")
                         + (f"; written to {decimals} decimal{'s' if decimals > 1 else ''}, "
                            f"rounding may explain it: write more digits, or divide each row by "
                            f"its sum (t / t.sum(axis=1, keepdims=True))" if rounded else ""),
                         sample=int(i))
    return t.astype(dtype, copy=False)


def _rounded_to(row: np.ndarray) -> int | None:
    """Returns the fewest decimals (1 to 4) that write every entry of a row, else None: a row of
    thirds written 0.33 sums to 0.99."""
    with np.errstate(over="ignore", invalid="ignore"):  # 1e308 scales to inf: no such row
        for decimals in range(1, 5):
            scaled = row * 10.0**decimals
            if np.all(np.abs(scaled - np.round(scaled)) < 1e-6):
                return decimals
    return None


def _first_bad(*checks: tuple, offset: int = 0) -> None:
    """Raises InputError at the first sample any check's (N, k) mask, or (N,) for a fault of a
    whole row, finds bad, with the message of the first check that finds it bad, at that check's
    first class there; row 0 is sample offset. A check is (mask, message), or (mask, message,
    True) where the fault is the logits'.

    The first bad sample, not the first check's: a stream cut into chunks meets the samples in
    order, so the whole input must name the error a chunk would (bce named a NaN logit on line 3
    where a chunk of line 2 alone named its logit too large for float32).
    """
    found = [(int(rows.argmax()), i) for i, (bad, *_) in enumerate(checks)
             if (rows := bad.any(axis=1) if bad.ndim == 2 else bad).any()]
    if found:
        row, i = min(found)
        bad, message, *in_logits = checks[i]
        # a class even where there is one (bce of one logit column)
        column = f"class {int(bad[row].argmax())}" if bad.ndim == 2 else None
        raise InputError(message, sample=offset + row, column=column, in_logits=bool(in_logits))


def _refuse_infinite_loss(z: np.ndarray, infinite: np.ndarray, offset: int = 0) -> None:
    """Raises InputError where a class with log p = -inf has a positive coefficient.

    Row 0 of z and infinite is sample offset.
    """
    if infinite.any():
        i, c = np.argwhere(infinite)[0]
        if np.isneginf(z[i, c]):
            why = "class is masked (logit -inf) but counts in the loss: the loss is infinite"
        else:
            why = (f"logit is so far below the row's largest that its log-probability "
                   f"overflows {z.dtype.name}: the loss is infinite")
        raise InputError(why, sample=offset + int(i), column=f"class {c}", in_logits=True)


def divisor_beyond_range(dtype: np.dtype) -> str:
    """Returns why a weighted 'mean' whose divisor overflows is refused: total / inf is 0."""
    return (f"the target-class weights of the counted samples sum beyond {dtype.name}'s range, "
            f"so the mean cannot be taken; scale the weights down, which leaves the mean unchanged")


def _no_mean_reason(n: int, ignored: np.ndarray, ignore_index: int) -> str:
    """Says why a mean over the samples is undefined."""
    if n == 0:
        return "there are no samples: the mean is undefined"
    if ignored.all():
        return (f"every sample is ignored (label {ignore_index}): the mean is undefined; "
                f"use reduction 'sum'")
    return "the target-class weights of the counted samples sum to 0: the mean is undefined"
