"""Invariants of the mathematics over random inputs (issue 6), against a straightforward oracle.

tests/test_losses.py holds the same invariants for a fixed shape with class-index targets; here the
shape is random, targets are class indices or soft distributions, and the properties reach through
the streaming reader and the symbolic derivation.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xent_cli import losses, stream
from xent_cli.cli import app

REDUCTIONS = ["mean", "sum", "none"]


def naive_cross_entropy(z: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Returns each row's -Σ a_c log softmax(z)_c, with the log-sum-exp written out."""
    m = z.max(axis=1, keepdims=True)
    log_p = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    return -(a * log_p).sum(axis=1)


@st.composite
def problems(draw, logit=st.floats(-30, 30), max_n=6):
    """Returns (z, target, weight, smoothing): index or soft targets, random N and k."""
    n, k = draw(st.integers(1, max_n)), draw(st.integers(2, 6))
    z = np.array(draw(st.lists(st.lists(logit, min_size=k, max_size=k), min_size=n, max_size=n)))
    if draw(st.booleans()):
        target = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    else:
        raw = np.array(draw(st.lists(st.lists(st.floats(0, 1), min_size=k, max_size=k),
                                     min_size=n, max_size=n)))
        raw[:, 0] += 1e-3  # a row of zeros has no distribution
        target = raw / raw.sum(axis=1, keepdims=True)
    weight = draw(st.one_of(st.none(), st.lists(st.floats(0.1, 5), min_size=k, max_size=k)))
    smoothing = draw(st.sampled_from([0.0, 0.1, 0.5]))
    return z, target, None if weight is None else np.array(weight), smoothing


def run(problem, z=None, reduction="none"):
    z0, target, weight, smoothing = problem
    return losses.cross_entropy(z0 if z is None else z, target, weight=weight,
                                label_smoothing=smoothing, reduction=reduction)


@settings(max_examples=80, deadline=None)
@given(problems())
def test_loss_is_non_negative_and_gradient_rows_sum_to_zero(problem):
    r = run(problem)
    assert (r.per_sample >= 0).all()
    np.testing.assert_allclose(r.grad.sum(axis=1), 0, atol=1e-12 * (1 + np.abs(r.grad).max()))


@settings(max_examples=80, deadline=None)
@given(problems())
def test_the_loss_is_the_straightforward_formula(problem):
    z, target, weight, eps = problem
    k = z.shape[1]
    y = np.eye(k)[target] if target.ndim == 1 else target
    y = (1 - eps) * y + eps / k
    w = np.ones(k) if weight is None else weight
    a = y * w
    expected = naive_cross_entropy(z, a)
    np.testing.assert_allclose(run(problem).per_sample, expected, rtol=1e-10, atol=1e-12)


@settings(max_examples=80, deadline=None)
@given(problems(), st.data())
def test_shifting_each_row_changes_nothing(problem, data):
    z = problem[0]
    shift = np.array(data.draw(st.lists(st.floats(-1e3, 1e3), min_size=len(z), max_size=len(z))))
    before, after = run(problem), run(problem, z + shift[:, None])
    np.testing.assert_allclose(after.per_sample, before.per_sample, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(after.grad, before.grad, rtol=1e-9, atol=1e-11)


@settings(max_examples=80, deadline=None)
@given(problems(), st.randoms(use_true_random=False), st.sampled_from(REDUCTIONS))
def test_permuting_classes_permutes_the_gradient(problem, random, reduction):
    z, target, weight, eps = problem
    k = z.shape[1]
    order = np.array(random.sample(range(k), k))  # new class c is old class order[c]
    inverse = np.argsort(order)
    moved = inverse[target] if target.ndim == 1 else target[:, order]
    before = run(problem, reduction=reduction)
    after = losses.cross_entropy(z[:, order], moved,
                                 weight=None if weight is None else weight[order],
                                 label_smoothing=eps, reduction=reduction)
    np.testing.assert_allclose(after.per_sample, before.per_sample, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(after.grad, before.grad[:, order], rtol=1e-10, atol=1e-15)


EXTREME = st.one_of(st.floats(-1e300, 1e300), st.sampled_from([1e300, -1e300, 0.0, 5e-324]))


@settings(max_examples=80, deadline=None)
@given(problems(logit=EXTREME), st.sampled_from(REDUCTIONS))
def test_finite_input_gives_finite_output_or_a_clear_refusal(problem, reduction):
    # A loss of ~1e300 is finite and computed; a log-probability below -1.8e308 is refused.
    try:
        r = run(problem, reduction=reduction)
    except losses.InputError as error:
        assert "overflows float64" in error.message
        return
    assert np.isfinite(r.per_sample).all() and np.isfinite(r.grad).all()
    assert math.isfinite(r.total) and (r.loss is None or math.isfinite(r.loss))
    assert (r.per_sample >= 0).all()


@settings(max_examples=80, deadline=None)
@given(problems(logit=st.sampled_from([1e300, -1e300, 0.0, 1.0])))
def test_plus_minus_1e300_give_their_exact_loss(problem):
    # with logits 0, 1 and ±1e300 every term is exact: log p is 0, -1e300, -2e300 or log-sum-exp of
    # small numbers; the refusal happens only when a weighted sum leaves float64
    z, target, weight, eps = problem
    try:
        r = run(problem)
    except losses.InputError:
        return
    k = z.shape[1]
    y = np.eye(k)[target] if target.ndim == 1 else target
    a = ((1 - eps) * y + eps / k) * (np.ones(k) if weight is None else weight)
    np.testing.assert_allclose(r.per_sample, naive_cross_entropy(z, a), rtol=1e-12)


def _table(header: list[str], rows: np.ndarray) -> str:
    return ",".join(header) + "\n" + "".join(",".join(map(repr, row)) + "\n" for row in rows.tolist())


def _csv(z: np.ndarray, y: np.ndarray) -> str:
    header = ",".join(f"z{c}" for c in range(z.shape[1])) + ",label\n"
    return header + "".join(",".join(map(repr, row)) + f",{label}\n"
                            for row, label in zip(z.tolist(), y.tolist()))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 60), k=st.integers(2, 5), seed=st.integers(0, 2**32 - 1),
       block=st.integers(16, 600), chunk=st.integers(1, 40), reduction=st.sampled_from(REDUCTIONS),
       fast=st.booleans(), soft=st.booleans())
def test_streaming_agrees_with_in_memory_for_any_chunk_size(runner, tmp_path, monkeypatch, n, k, seed,
                                                            block, chunk, reduction, fast, soft):
    rng = np.random.default_rng(seed)
    z, y = rng.normal(scale=5, size=(n, k)), rng.integers(0, k, size=n)
    path, out, targets = tmp_path / "z.csv", tmp_path / "o.csv", tmp_path / "t.csv"
    a = rng.dirichlet(np.ones(k), size=n) if soft else np.eye(k)[y]
    if soft:  # logits alone, and a file of soft targets read alongside, block by block
        path.write_text(_table([f"z{c}" for c in range(k)], z))
        targets.write_text(_table([f"p{c}" for c in range(k)], a))
    else:
        path.write_text(_csv(z, y))
    monkeypatch.setattr(stream, "FAST_CSV_BYTES", 0 if fast else 1 << 60)
    monkeypatch.setattr(stream, "BLOCK_BYTES", block)
    monkeypatch.setattr(stream, "CHUNK_ROWS", chunk)
    result = runner.invoke(app, ["eval", str(path), "--reduction", reduction, "--format", "json",
                                 "--output", str(out), *(["--targets", str(targets)] if soft else [])])
    assert result.exit_code == 0, result.output
    per_sample = naive_cross_entropy(z, a)
    summary = json.loads(result.stdout)
    assert summary["loss_sum"] == pytest.approx(per_sample.sum(), rel=1e-12)
    if reduction != "none":
        expected = per_sample.mean() if reduction == "mean" else per_sample.sum()
        assert summary["loss"] == pytest.approx(expected, rel=1e-12)
    rows = np.loadtxt(out, delimiter=",", skiprows=1, ndmin=2)
    loss_column = 3 if soft else 4  # sample, line, (label), pred, loss, prob_c..., grad_c...
    np.testing.assert_allclose(rows[:, loss_column], per_sample, rtol=1e-12, atol=1e-15)


@settings(max_examples=10, deadline=None)
@given(k=st.integers(2, 4), data=st.data())
def test_derives_symbolic_gradient_is_the_numeric_one_at_random_points(k, data):
    from xent_cli.derivation import derive

    label = data.draw(st.integers(1, k))
    z = np.array(data.draw(st.lists(st.floats(-5, 5), min_size=k, max_size=k)))
    derivation = derive(k, label, at=tuple(z))
    h = 1e-6

    def loss(point):
        return naive_cross_entropy(point[None, :], np.eye(k)[[label - 1]])[0]

    numeric = [(loss(z + h * e) - loss(z - h * e)) / (2 * h) for e in np.eye(k)]
    symbolic = [entry.at for entry in derivation.gradient]
    np.testing.assert_allclose(symbolic, numeric, atol=1e-8)
