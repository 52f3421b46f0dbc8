"""Binary cross-entropy with logits: hand values, a naive oracle, torch, finite differences, properties."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from xent_cli import bce
from xent_cli.errors import InputError


def naive(z, t, weight=None, pos_weight=None):
    """The definition, element by element, in plain floats: −w [p_w t log σ(z) + (1 − t) log(1 − σ(z))]."""
    n, k = len(z), len(z[0])
    out = []
    for i in range(n):
        row = []
        for c in range(k):
            s = 1 / (1 + math.exp(-z[i][c]))
            w = 1.0 if weight is None else weight[c]
            pw = 1.0 if pos_weight is None else pos_weight[c]
            row.append(-w * (pw * t[i][c] * math.log(s) + (1 - t[i][c]) * math.log(1 - s)))
        out.append(row)
    return np.array(out)


Z = [[0.5, -1.0, 2.0], [-0.3, 0.0, 1.5]]
T = [[1.0, 0.0, 1.0], [0.0, 0.25, 1.0]]


def test_hand_value():
    # z = 0, t = 1: −log σ(0) = log 2; z = 0, t = 0: the same; mean of the two.
    result = bce.binary_cross_entropy([[0.0, 0.0]], [[1.0, 0.0]])
    assert result.loss == pytest.approx(math.log(2), rel=1e-15)
    assert result.grad.tolist() == [[-0.25, 0.25]]  # (σ(0) − t) / (N k) = (±1/2) / 2


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weight,pos_weight", [(None, None), ([1.0, 2.0, 0.5], None),
                                               (None, [3.0, 1.0, 0.2]), ([0.5, 1.0, 2.0], [2.0, 0.0, 1.5])])
def test_matches_the_definition(reduction, weight, pos_weight):
    result = bce.binary_cross_entropy(Z, T, weight=weight, pos_weight=pos_weight, reduction=reduction)
    expected = naive(Z, T, weight, pos_weight)
    np.testing.assert_allclose(result.elements, expected, rtol=1e-13)
    if reduction == "mean":
        assert result.loss == pytest.approx(expected.mean(), rel=1e-13)
    elif reduction == "sum":
        assert result.loss == pytest.approx(expected.sum(), rel=1e-13)
    else:
        assert result.loss is None
    np.testing.assert_allclose(result.per_sample, expected.sum(axis=1), rtol=1e-13)


@pytest.mark.parametrize("weight,pos_weight", [(None, None), ([0.5, 1.0, 2.0], [2.0, 0.0, 1.5])])
def test_gradient_matches_central_differences(weight, pos_weight):
    z = np.array(Z)
    result = bce.binary_cross_entropy(z, T, weight=weight, pos_weight=pos_weight, reduction="sum")
    h = 1e-6
    for i in range(z.shape[0]):
        for c in range(z.shape[1]):
            up, down = z.copy(), z.copy()
            up[i, c] += h
            down[i, c] -= h
            numeric = (naive(up, T, weight, pos_weight).sum() - naive(down, T, weight, pos_weight).sum()) / (2 * h)
            assert result.grad[i, c] == pytest.approx(numeric, rel=1e-7, abs=1e-9)


def test_gradient_is_sigma_minus_t_without_pos_weight():
    z = np.array(Z)
    result = bce.binary_cross_entropy(z, T, reduction="none")
    np.testing.assert_allclose(result.grad, 1 / (1 + np.exp(-z)) - np.array(T), rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(result.probs, 1 / (1 + np.exp(-z)), rtol=1e-15)


def test_mean_divides_by_every_element():
    result = bce.binary_cross_entropy(Z, T, reduction="mean")
    summed = bce.binary_cross_entropy(Z, T, reduction="sum")
    assert result.divisor == 6
    np.testing.assert_allclose(result.grad * 6, summed.grad, rtol=1e-15)


def test_large_logits_stay_finite_and_exact():
    # −log σ(−1000) = 1000; −log(1 − σ(−40)) = log1p(e^−40) ≈ e^−40, not 0.
    result = bce.binary_cross_entropy([[-1000.0, -40.0, 1e300]], [[1.0, 0.0, 1.0]], reduction="none")
    assert result.elements[0, 0] == 1000.0
    assert result.elements[0, 1] == pytest.approx(math.exp(-40), rel=1e-15)
    assert result.elements[0, 2] == 0.0
    assert result.grad.tolist()[0][:2] == [-1.0, pytest.approx(math.exp(-40), rel=1e-15)]
    assert np.isfinite(result.grad).all()


def test_single_logit_column_is_binary_classification():
    result = bce.binary_cross_entropy([[2.0], [-1.0]], [[1.0], [0.0]])
    assert result.loss == pytest.approx((math.log1p(math.exp(-2)) + math.log1p(math.exp(-1))) / 2, rel=1e-15)


@pytest.mark.parametrize("z,t,message", [
    ([[0.0, float("nan")]], [[1, 0]], "sample 0, column class 1: logit is not a finite number"),
    ([[float("-inf"), 0.0]], [[1, 0]], "sample 0, column class 0: logit is not a finite number"),
    ([[0.0, 1.0]], [[1.0, 1.5]], "sample 0, column class 1: target is outside [0, 1]"),
    ([[0.0, 1.0]], [[-0.1, 1.0]], "sample 0, column class 0: target is outside [0, 1]"),
    ([[0.0, 1.0]], [[1.0]], "targets must have shape (1, 2)"),
])
def test_bad_input_is_named(z, t, message):
    with pytest.raises(InputError) as error:
        bce.binary_cross_entropy(z, t)
    assert message in str(error.value)


def test_weights_are_checked():
    with pytest.raises(InputError, match="class 1"):
        bce.binary_cross_entropy(Z, T, pos_weight=[1.0, -1.0, 1.0])
    with pytest.raises(InputError, match="one entry per class"):
        bce.binary_cross_entropy(Z, T, weight=[1.0, 2.0])


def test_metrics_match_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    z = rng.normal(size=(200, 5))
    t = (rng.random((200, 5)) < 0.4).astype(float)
    truth, predicted = t.astype(int), (z > 0).astype(int)
    assert bce.hamming_loss(z, t) == pytest.approx(metrics.hamming_loss(truth, predicted), abs=1e-15)
    assert bce.exact_match(z, t) == pytest.approx(metrics.accuracy_score(truth, predicted), abs=1e-15)


def test_float32_runs_in_float32():
    result = bce.binary_cross_entropy(np.array(Z), T, dtype="float32")
    assert result.grad.dtype == np.float32
    assert result.loss == pytest.approx(naive(Z, T).mean(), rel=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_torch(reduction, weighted):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    z = rng.normal(scale=4, size=(9, 4))
    t = rng.random((9, 4))
    t[:4] = t[:4] > 0.5
    weight = rng.random(4) * 2 if weighted else None
    pos_weight = rng.random(4) * 3 if weighted else None
    zt = torch.tensor(z, requires_grad=True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        zt, torch.tensor(t), weight=None if weight is None else torch.tensor(weight),
        pos_weight=None if pos_weight is None else torch.tensor(pos_weight), reduction=reduction)
    (loss if reduction != "none" else loss).sum().backward()
    result = bce.binary_cross_entropy(z, t, weight=weight, pos_weight=pos_weight, reduction=reduction)
    if reduction == "none":
        np.testing.assert_allclose(result.elements, loss.detach().numpy(), rtol=1e-12, atol=1e-15)
    else:
        assert result.loss == pytest.approx(loss.item(), rel=1e-12)
    np.testing.assert_allclose(result.grad, zt.grad.numpy(), rtol=1e-12, atol=1e-15)


finite = st.floats(-1e300, 1e300, allow_nan=False)
shapes = st.tuples(st.integers(1, 6), st.integers(1, 5))


@settings(max_examples=60, deadline=None)
@given(shapes.flatmap(lambda s: st.tuples(arrays(np.float64, s, elements=finite),
                                          arrays(np.float64, s, elements=st.floats(0, 1)))))
def test_finite_nonnegative_and_bounded_gradient(case):
    z, t = case
    result = bce.binary_cross_entropy(z, t, reduction="none")
    assert (result.elements >= 0).all() and np.isfinite(result.elements).all()
    # |∂ℓ/∂z| = |(1 − t) σ(z) − t σ(−z)| <= 1 for unit weights.
    assert (np.abs(result.grad) <= 1).all()


@settings(max_examples=60, deadline=None)
@given(shapes.flatmap(lambda s: arrays(np.float64, s, elements=st.floats(-30, 30))), st.data())
def test_classes_do_not_couple(z, data):
    # Changing one class's logit changes only that element's loss and gradient.
    t = (z > 0.3).astype(float)
    c = data.draw(st.integers(0, z.shape[1] - 1))
    moved = z.copy()
    moved[:, c] += 1.0
    before = bce.binary_cross_entropy(z, t, reduction="none")
    after = bce.binary_cross_entropy(moved, t, reduction="none")
    others = np.arange(z.shape[1]) != c
    assert np.array_equal(before.grad[:, others], after.grad[:, others])
    assert np.array_equal(before.elements[:, others], after.elements[:, others])


@pytest.mark.parametrize("z, t, message, sample", [
    # the fuzzer's case: a NaN logit on the later row was named first
    ([[0.0, 1.0], [1e300, 0.0], [np.nan, 0.0]], [[0.0, 1.0]] * 3, "does not fit in float32", 1),
    ([[0.0, 1.0], [0.0, 1.0], [np.inf, 0.0]], [[0.0, 1.0], [0.0, 2.0], [0.0, 1.0]],
     r"outside \[0, 1\]", 1),
    ([[0.0, 1.0], [0.0, np.nan]], [[np.nan, 1.0], [0.0, 1.0]], "target is not a finite", 0),
])
def test_the_first_bad_sample_is_named_whatever_its_fault(z, t, message, sample):
    with pytest.raises(InputError, match=message) as caught:
        bce.binary_cross_entropy(np.array(z), np.array(t), dtype=np.float32)
    assert caught.value.sample == sample
