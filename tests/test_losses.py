"""The numeric core of eval: hand-derived values, a naive oracle, finite differences, invariants."""

import itertools
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xent_cli import losses
from xent_cli.errors import InputError
from xent_cli.losses import REDUCTIONS, accuracy, cross_entropy, log_softmax, softmax

LOG3 = math.log(3)


# --- values derived by hand ------------------------------------------------------------------

def test_uniform_logits_cost_log_k_and_pull_the_label_up():
    r = cross_entropy(np.zeros((1, 3)), np.array([0]))
    # p = (1/3, 1/3, 1/3); loss = -log(1/3); grad = p - onehot.
    assert r.loss == pytest.approx(LOG3, rel=1e-15)
    np.testing.assert_allclose(r.grad, [[1 / 3 - 1, 1 / 3, 1 / 3]], rtol=1e-15)
    assert r.divisor == 1.0 and r.total == pytest.approx(LOG3)


def test_every_class_gets_gradient_not_only_the_label():
    # The seed blog post's Case 1 claims dCE/dz_j = 0 for j != label; it is softmax(z)_j.
    r = cross_entropy(np.array([[1.0, 2.0, 3.0]]), np.array([0]))
    e = [math.e, math.e ** 2, math.e ** 3]
    p = [x / sum(e) for x in e]
    np.testing.assert_allclose(r.grad, [[p[0] - 1, p[1], p[2]]], rtol=1e-14)
    assert r.grad[0, 1] > 0.2


def test_weighted_mean_divides_by_the_target_weights():
    # loss_0 = w[2] * -(3 - log(e + e^2 + e^3)) = 3 * log(1 + e^-1 + e^-2); divisor = w[2] = 3.
    one = math.log(1 + math.exp(-1) + math.exp(-2))
    z = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    y = np.array([2, -100])
    r = cross_entropy(z, y, weight=[1.0, 2.0, 3.0])
    assert r.per_sample.tolist() == pytest.approx([3 * one, 0.0], rel=1e-14)
    assert (r.total, r.divisor, r.loss) == pytest.approx((3 * one, 3.0, one), rel=1e-14)
    assert r.ignored.tolist() == [False, True]
    # mean gradient = 3 * (p - onehot) / 3; the ignored row gets nothing.
    p = softmax(z[:1])[0]
    np.testing.assert_allclose(r.grad[0], p - [0, 0, 1], rtol=1e-14)
    assert r.grad[1].tolist() == [0.0, 0.0, 0.0]
    s = cross_entropy(z, y, weight=[1.0, 2.0, 3.0], reduction="sum")
    assert s.loss == pytest.approx(3 * one, rel=1e-14)
    np.testing.assert_allclose(s.grad[0], 3 * (p - [0, 0, 1]), rtol=1e-14)


def test_label_smoothing_mixes_nll_and_the_weighted_sum_of_all_classes():
    # z = 0, k = 3, eps = 0.3, label 1, w = (1, 2, 3): every log p = -log 3.
    # nll = 2 log 3; smooth = (1 + 2 + 3) log 3; per = 0.7 * 2 log 3 + 0.1 * 6 log 3 = 2 log 3.
    r = cross_entropy(np.zeros((1, 3)), np.array([1]), weight=[1.0, 2.0, 3.0],
                      label_smoothing=0.3, reduction="none")
    assert r.per_sample[0] == pytest.approx(2 * LOG3, rel=1e-14)
    assert r.loss is None
    # a = (0.1, 0.1*2 + 0.7*2, 0.1*3) = (0.1, 1.6, 0.3), sum 2; grad = 2/3 - a.
    np.testing.assert_allclose(r.grad, [[2 / 3 - 0.1, 2 / 3 - 1.6, 2 / 3 - 0.3]], rtol=1e-14)
    mean = cross_entropy(np.zeros((1, 3)), np.array([1]), weight=[1.0, 2.0, 3.0],
                         label_smoothing=0.3)
    assert mean.divisor == 2.0 and mean.loss == pytest.approx(LOG3, rel=1e-14)


def test_soft_targets():
    # z = (0, log 2, log 3): p = (1/6, 2/6, 3/6); t = (1/2, 1/2, 0).
    z = np.array([[0.0, math.log(2), math.log(3)]])
    t = np.array([[0.5, 0.5, 0.0]])
    r = cross_entropy(z, t)
    assert r.loss == pytest.approx(0.5 * math.log(6) + 0.5 * math.log(3), rel=1e-14)
    np.testing.assert_allclose(r.grad, [[1 / 6 - 1 / 2, 1 / 3 - 1 / 2, 1 / 2]], rtol=1e-14)
    # Smoothing eps = 0.3: t = (0.45, 0.45, 0.1); weights do not change the divisor N = 1.
    w = cross_entropy(z, t, weight=[2.0, 1.0, 1.0], label_smoothing=0.3)
    expected = -(2 * 0.45 * math.log(1 / 6) + 0.45 * math.log(1 / 3) + 0.1 * math.log(1 / 2))
    assert w.loss == pytest.approx(expected, rel=1e-14) and w.divisor == 1.0


def test_masked_class_adds_nothing():
    z = np.array([[0.0, 0.0, -np.inf]])
    r = cross_entropy(z, np.array([0]))
    assert r.loss == pytest.approx(math.log(2), rel=1e-15)
    assert r.grad.tolist() == [[-0.5, 0.5, 0.0]]
    soft = cross_entropy(z, np.array([[0.5, 0.5, 0.0]]))  # PyTorch: NaN (0 * -inf)
    assert soft.loss == pytest.approx(math.log(2), rel=1e-15)
    assert soft.grad.tolist() == [[0.0, 0.0, 0.0]]
    weighted = cross_entropy(z, np.array([1]), weight=[1.0, 1.0, 0.0], label_smoothing=0.5)
    assert math.isfinite(weighted.loss)


@pytest.mark.parametrize("options", [{"weight": [0.0, 1.0]}, {"ignore_index": 0}])
def test_a_masked_label_that_counts_for_nothing_raises_no_warning(options):
    # inf loss times a weight of 0 is NaN with a RuntimeWarning on stderr, though it is set to 0
    z = np.array([[-np.inf, 2.0], [3.0, 1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = cross_entropy(z, np.array([0, 1]), reduction="none", **options)
    p = math.exp(1) / (math.exp(1) + math.exp(3))
    assert r.per_sample[0] == 0 and r.per_sample[1] == pytest.approx(-math.log(p), rel=1e-15)
    assert r.grad[0].tolist() == [0.0, 0.0]


def test_extreme_logits_stay_finite_and_exact():
    z = np.array([[1e300, -1e300, 0.0], [-1e300, 1e300, 1e300]])
    r = cross_entropy(z, np.array([1, 0]), reduction="none")
    # Sample 0: log p_1 = -2e300 exactly; p = (1, 0, 0). Sample 1: log p_0 = -1e300 - 1e300 - log 2.
    assert r.per_sample.tolist() == [2e300, 2e300]
    np.testing.assert_array_equal(r.grad, [[1.0, -1.0, 0.0], [-1.0, 0.5, 0.5]])
    right = cross_entropy(z, np.array([0, 1]), reduction="none")
    assert right.per_sample[0] == 0.0
    assert right.per_sample[1] == pytest.approx(math.log(2), rel=1e-15)


def test_confident_prediction_keeps_its_tiny_loss():
    r = cross_entropy(np.array([[50.0, 0.0]]), np.array([0]))
    assert r.loss == pytest.approx(math.log1p(math.exp(-50)), rel=1e-14)
    assert r.loss > 0


def test_sum_of_all_ignored_is_zero():
    r = cross_entropy(np.ones((2, 3)), np.array([-100, -100]), reduction="sum")
    assert r.loss == 0.0 and r.divisor == 0.0 and not r.grad.any()


@pytest.mark.parametrize("k", [3, losses.CLASS_MAJOR_MAX_K + 1])
def test_an_ignored_sample_and_a_certain_one_have_a_gradient_of_plus_zero(k):
    # PyTorch writes 0.0 there; a -0.0 in an --output file reads as if it had a sign
    z = np.zeros((3, k))
    z[2, 1:] = -np.inf  # p = (1, 0, ...): p_y - 1 = 0
    r = cross_entropy(z, np.array([-100, 1, 0]), reduction="sum")
    assert not r.grad[[0, 2]].any() and not np.signbit(r.grad[[0, 2]]).any()


def test_chunks_combine_exactly_through_total_and_divisor():
    rng = np.random.default_rng(1)
    z, y = rng.normal(size=(10, 4)), rng.integers(0, 4, 10)
    y[3] = -100
    w = [0.5, 1.0, 2.0, 3.0]
    whole = cross_entropy(z, y, weight=w)
    parts = [cross_entropy(z[s], y[s], weight=w) for s in (slice(0, 4), slice(4, 10))]
    combined = sum(p.total for p in parts) / sum(p.divisor for p in parts)
    assert combined == pytest.approx(whole.loss, rel=1e-14)


def test_log_softmax_and_softmax_are_normalised():
    z = np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0]])
    np.testing.assert_allclose(softmax(z).sum(axis=1), 1.0, rtol=1e-15)
    np.testing.assert_allclose(log_softmax(z)[0], np.array([1, 2, 3]) - math.log(
        math.exp(1) + math.exp(2) + math.exp(3)), rtol=1e-15)
    assert log_softmax(z)[1].tolist() == [0.0, -1000.0, -2000.0]


def test_accuracy():
    z = np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0], [5.0, 5.0, 0.0]])
    assert accuracy(z, np.array([1, 1, 2, 0])) == 0.75  # the tie goes to class 0
    assert accuracy(z, np.array([1, -100, 2, 1])) == pytest.approx(2 / 3)
    with pytest.raises(InputError, match="every sample is ignored"):
        accuracy(z, np.full(4, -100))


# --- an independent, deliberately naive oracle -----------------------------------------------

def naive(z, target, weight, ignore_index, eps, reduction):
    """PyTorch's formulas written out literally, sample by sample, with math."""
    n, k = len(z), len(z[0])
    w = [1.0] * k if weight is None else list(weight)
    per, grads, divisor = [], [], 0.0
    for i in range(n):
        m = max(z[i])
        lse = m + math.log(math.fsum(math.exp(x - m) for x in z[i]))
        logp = [x - lse for x in z[i]]
        p = [math.exp(v) for v in logp]
        if isinstance(target[i], (list, np.ndarray)):  # soft: t <- t (1 - eps) + eps / k
            t = [tc * (1 - eps) + eps / k for tc in target[i]]
            per.append(-math.fsum(w[c] * t[c] * logp[c] for c in range(k)))
            # d/dz_c of -sum_j w_j t_j log p_j = sum_j w_j t_j (p_c - [c = j])
            grads.append([math.fsum(w[j] * t[j] * (p[c] - (c == j)) for j in range(k))
                          for c in range(k)])
            divisor += 1
            continue
        y = int(target[i])
        if y == ignore_index:
            per.append(0.0)
            grads.append([0.0] * k)
            continue
        nll = -w[y] * logp[y]
        smooth = -math.fsum(w[c] * logp[c] for c in range(k))
        per.append((1 - eps) * nll + eps / k * smooth)
        d_nll = [w[y] * (p[c] - (c == y)) for c in range(k)]
        d_smooth = [math.fsum(w[j] * (p[c] - (c == j)) for j in range(k)) for c in range(k)]
        grads.append([(1 - eps) * d_nll[c] + eps / k * d_smooth[c] for c in range(k)])
        divisor += w[y]
    if reduction == "none":
        return None, per, grads
    if reduction == "sum":
        return math.fsum(per), per, grads
    return math.fsum(per) / divisor, per, [[g / divisor for g in row] for row in grads]


def grid_case(soft, ignored_present, seed=0, n=7, k=4):
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=3, size=(n, k))
    if soft:
        t = rng.random((n, k))
        return z, t / t.sum(axis=1, keepdims=True)
    y = rng.integers(0, k, n)
    if ignored_present:
        y[[1, 4]] = -1
    return z, y


GRID = list(itertools.product(REDUCTIONS, [None, (0.5, 1.0, 2.0, 3.5)], [False, True],
                              [0.0, 0.2], [False, True]))


@pytest.mark.parametrize("reduction, weight, ignored_present, eps, soft", GRID)
def test_matches_naive_oracle(reduction, weight, ignored_present, eps, soft):
    z, target = grid_case(soft, ignored_present)
    r = cross_entropy(z, target, weight=weight, ignore_index=-1, label_smoothing=eps,
                      reduction=reduction)
    loss, per, grads = naive(z.tolist(), list(target), weight, -1, eps, reduction)
    np.testing.assert_allclose(r.per_sample, per, rtol=1e-12, atol=0)
    np.testing.assert_allclose(r.grad, grads, rtol=1e-12, atol=1e-16)
    assert r.total == pytest.approx(math.fsum(per), rel=1e-12)
    if reduction == "none":
        assert r.loss is None
    else:
        assert r.loss == pytest.approx(loss, rel=1e-12)
    assert r.ignored.tolist() == [not soft and ignored_present and i in (1, 4) for i in range(7)]


@pytest.mark.parametrize("reduction, weight, ignored_present, eps, soft", GRID)
def test_gradient_matches_central_differences(reduction, weight, ignored_present, eps, soft):
    z, target = grid_case(soft, ignored_present, seed=2, n=5)

    def reduced(zz):
        r = cross_entropy(zz, target, weight=weight, ignore_index=-1, label_smoothing=eps,
                          reduction=reduction)
        return r.total if reduction == "none" else r.loss

    h = 1e-6
    numeric = np.zeros_like(z)
    for index in np.ndindex(z.shape):
        up, down = z.copy(), z.copy()
        up[index] += h
        down[index] -= h
        numeric[index] = (reduced(up) - reduced(down)) / (2 * h)
    analytic = cross_entropy(z, target, weight=weight, ignore_index=-1, label_smoothing=eps,
                             reduction=reduction).grad
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("reduction, weight, ignored_present, eps, soft", GRID)
def test_matches_torch(reduction, weight, ignored_present, eps, soft):
    torch = pytest.importorskip("torch")
    z, target = grid_case(soft, ignored_present, seed=3)
    r = cross_entropy(z, target, weight=weight, ignore_index=-1, label_smoothing=eps,
                      reduction=reduction)
    logits = torch.tensor(z, requires_grad=True)
    kwargs = dict(ignore_index=-1, label_smoothing=eps)
    if weight is not None:
        kwargs["weight"] = torch.tensor(weight, dtype=torch.float64)
    t = torch.tensor(target)
    per = torch.nn.functional.cross_entropy(logits, t, reduction="none", **kwargs)
    np.testing.assert_allclose(r.per_sample, per.detach().numpy(), rtol=1e-12, atol=1e-300)
    reduced = torch.nn.functional.cross_entropy(logits, t, reduction=reduction, **kwargs)
    (reduced.sum() if reduction == "none" else reduced).backward()
    np.testing.assert_allclose(r.grad, logits.grad.numpy(), rtol=1e-12, atol=1e-16)
    if r.loss is not None:
        assert r.loss == pytest.approx(reduced.item(), rel=1e-12)



@pytest.mark.parametrize("soft", [False, True])
def test_float32_matches_torch_float32(soft):
    torch = pytest.importorskip("torch")
    z, target = grid_case(soft, ignored_present=not soft, seed=4, n=50, k=6)
    weight = np.linspace(0.5, 3, 6)
    r = cross_entropy(z, target, weight=weight, ignore_index=-1, label_smoothing=0.1,
                      dtype=np.float32)
    logits = torch.tensor(z, dtype=torch.float32, requires_grad=True)
    t = torch.tensor(target, dtype=torch.float32) if soft else torch.tensor(target)
    loss = torch.nn.functional.cross_entropy(
        logits, t, weight=torch.tensor(weight, dtype=torch.float32), ignore_index=-1,
        label_smoothing=0.1)
    loss.backward()
    assert r.grad.dtype == np.float32
    assert r.loss == pytest.approx(loss.item(), rel=1e-6)
    np.testing.assert_allclose(r.grad, logits.grad.numpy(), rtol=1e-5, atol=1e-8)

# --- invariants ------------------------------------------------------------------------------

K = 4
finite_logit = st.floats(-30, 30)
extreme_logit = st.one_of(st.floats(-1e300, 1e300), st.sampled_from([1e300, -1e300, 0.0]))


@st.composite
def problems(draw, logit=finite_logit, n=3):
    z = np.array(draw(st.lists(st.lists(logit, min_size=K, max_size=K), min_size=n,
                               max_size=n)))
    y = np.array(draw(st.lists(st.integers(0, K - 1), min_size=n, max_size=n)))
    weight = draw(st.one_of(st.none(), st.lists(st.floats(0.1, 5), min_size=K, max_size=K)))
    eps = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    return z, y, weight, eps


@settings(max_examples=60, deadline=None)
@given(problems())
def test_loss_is_non_negative_and_gradient_rows_sum_to_zero(problem):
    z, y, weight, eps = problem
    r = cross_entropy(z, y, weight=weight, label_smoothing=eps, reduction="none")
    assert (r.per_sample >= 0).all()
    scale = 1 + np.abs(r.grad).max()
    np.testing.assert_allclose(r.grad.sum(axis=1), 0, atol=1e-12 * scale)


@settings(max_examples=60, deadline=None)
@given(problems(), st.floats(-100, 100))
def test_shifting_a_row_changes_nothing(problem, shift):
    z, y, weight, eps = problem
    before = cross_entropy(z, y, weight=weight, label_smoothing=eps, reduction="none")
    z2 = z.copy()
    z2[0] += shift
    after = cross_entropy(z2, y, weight=weight, label_smoothing=eps, reduction="none")
    np.testing.assert_allclose(after.per_sample, before.per_sample, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(after.grad, before.grad, rtol=1e-9, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(problems(), st.permutations(range(K)))
def test_permuting_classes_permutes_the_gradient(problem, order):
    z, y, weight, eps = problem
    order = np.array(order)
    inverse = np.argsort(order)  # class c moves to position inverse[c]
    before = cross_entropy(z, y, weight=weight, label_smoothing=eps)
    after = cross_entropy(z[:, order], inverse[y],
                          weight=None if weight is None else np.array(weight)[order],
                          label_smoothing=eps)
    assert after.loss == pytest.approx(before.loss, rel=1e-12, abs=1e-15)
    np.testing.assert_allclose(after.grad, before.grad[:, order], rtol=1e-10, atol=1e-15)


@settings(max_examples=60, deadline=None)
@given(problems(logit=extreme_logit), st.sampled_from(REDUCTIONS))
def test_finite_logits_give_finite_results(problem, reduction):
    z, y, weight, eps = problem
    r = cross_entropy(z, y, weight=weight, label_smoothing=eps, reduction=reduction)
    assert np.isfinite(r.per_sample).all() and np.isfinite(r.grad).all()
    assert np.isfinite(r.total) and (r.loss is None or math.isfinite(r.loss))
    assert (r.per_sample >= 0).all()


@settings(max_examples=40, deadline=None)
@given(problems(logit=st.floats(-20, 20)))
def test_float32_is_close_to_float64(problem):
    z, y, weight, eps = problem
    wide = cross_entropy(z, y, weight=weight, label_smoothing=eps)
    narrow = cross_entropy(z, y, weight=weight, label_smoothing=eps, dtype=np.float32)
    assert narrow.grad.dtype == np.float32 and narrow.per_sample.dtype == np.float32
    assert narrow.loss == pytest.approx(wide.loss, rel=1e-4, abs=1e-5)
    np.testing.assert_allclose(narrow.grad, wide.grad, rtol=1e-3, atol=1e-5)


# --- validation ------------------------------------------------------------------------------

Z = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
Y = np.array([2, 0])


@pytest.mark.parametrize("z, target, options, message, sample, column", [
    (np.array([[1.0, np.nan, 3.0], [0, 0, 0]]), Y, {}, "logit is NaN", 0, "class 1"),
    (np.array([[1.0, 2.0, 3.0], [0, 0, np.inf]]), Y, {}, r"logit is \+inf", 1, "class 2"),
    (np.array([[1.0, 2.0, 3.0], [-np.inf] * 3]), Y, {}, "every logit is -inf", 1, None),
    (np.array([1.0, 2.0]), Y, {}, r"2-D array .* shape \(2,\)", None, None),
    (np.array([[1.0], [2.0]]), Y, {}, "at least 2 classes, got 1", None, None),
    (np.array([["a", "b"]]), Y[:1], {}, "logits must be numbers", None, None),
    (Z, np.array([2, 3]), {}, r"label 3 is not a class index 0\.\.2 \(nor the ignore index -100\)$",
     1, None),  # no 0 among them, but no 1 either: nothing says they count from 1
    (Z, np.array([1, 3]), {}, r"-100\); the labels run 1\.\.3 with no 0: counted from 1\?", 1, None),
    (np.zeros((3, 3)), np.array([1, -100, 3]), {}, "labels run 1..3 with no 0", 2, None),
    (np.zeros((3, 3)), np.array([1, 0, 3]), {}, r"0\.\.2 \(nor the ignore index -100\)$", 2, None),
    # another ignore index chosen: no room for -1 as a second one
    (Z, np.array([-1, 255]), {"ignore_index": 255}, r"label -1 .* ignore index 255\)$", 0, None),
    (Z, np.array([-1, 0]), {}, r"label -1 .* ignore index -100\); if -1 marks samples to leave "
     r"out, make it the ignore index \(--ignore-index -1\)$", 0, None),
    (Z, np.array([2.0, 1.5]), {}, "label is not an integer", 1, None),
    (Z, np.array([np.inf, 1.0]), {}, "label is not an integer", 0, None),
    (Z, np.array([2, 0, 1]), {}, "targets must be 2 class indices", None, None),
    (Z, Y, {"weight": [1.0, 2.0]}, r"one entry per class \(3\)", None, None),
    (Z, Y, {"weight": [1.0, -2.0, 1.0]}, "weight -2.0 is not a finite number >= 0", None,
     "class 1"),
    (Z, Y, {"weight": [1.0, 1.0, np.nan]}, "weight nan", None, "class 2"),
    (Z, Y, {"label_smoothing": 1.5}, r"label smoothing 1.5 is outside \[0, 1\]", None, None),
    (Z, Y, {"label_smoothing": float("nan")}, "label smoothing nan", None, None),
    (Z, Y, {"reduction": "avg"}, "reduction 'avg' is not one of mean, sum, none", None, None),
    (Z, np.array([[0.5, 0.5, 0.0], [0.2, -0.1, 0.9]]), {}, "target probability is negative", 1,
     "class 1"),
    (Z, np.array([[0.5, 0.5, 0.0], [0.2, 0.1, 0.6]]), {}, "sum to 0.9, not 1", 1, None),
    (Z, np.array([[0.5, 0.5], [0.2, 0.8]]), {}, r"shape \(2, 3\) like the logits", None, None),
    (np.array([[1.0, 2.0, -np.inf], [0, 0, 0]]), Y, {}, "class is masked .* infinite", 0,
     "class 2"),
    (np.array([[1.0, -np.inf, 3.0], [0, 0, 0]]), Y, {"label_smoothing": 0.1},
     "class is masked .* infinite", 0, "class 1"),
    (np.array([[1.0, 2.0, -np.inf]] * 2), np.array([[0.5, 0.0, 0.5]] * 2), {},
     "class is masked", 0, "class 2"),
    (np.array([[1e300, 0.0, 0.0]]), Y[:1], {"dtype": np.float32},
     "logit does not fit in float32", 0, "class 0"),
    (np.array([[1.7e308, -1.7e308]]), np.array([1]), {}, "overflows float64", 0, "class 1"),
    (Z, np.array([-100, -100]), {}, "every sample is ignored .* reduction 'sum'", None, None),
    (Z, Y, {"weight": [0.0, 1.0, 0.0]}, "target-class weights .* sum to 0", None, None),
    (np.zeros((0, 3)), np.zeros(0, dtype=int), {}, "there are no samples", None, None),
])
def test_bad_input_is_refused_with_its_place(z, target, options, message, sample, column):
    with pytest.raises(InputError, match=message) as caught:
        cross_entropy(z, target, **options)
    assert (caught.value.sample, caught.value.column) == (sample, column)


def test_a_weighted_mean_whose_divisor_overflows_is_refused_not_zero():
    # Σ w_y = 3e308 is inf in float64: the mean total / Σ w_y came out 0, a silent wrong loss.
    # The true mean, about 0.21 here, does not change when every weight is scaled down.
    z, y = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, -1.0], [-1.0, 0.0, 3.0]]), np.array([0, 1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no RuntimeWarning on the way
        with pytest.raises(InputError, match="sum beyond float64's range.*scale the weights down"):
            cross_entropy(z, y, weight=[1e308] * 3)
        assert cross_entropy(z, y, weight=[1e308] * 3, reduction="sum").loss == pytest.approx(
            1e308 * float(-log_softmax(z)[[0, 1, 2], y].sum()), rel=1e-12)
    assert cross_entropy(z, y, weight=[1.0] * 3).loss == pytest.approx(
        float(-log_softmax(z)[[0, 1, 2], y].mean()), rel=1e-12)


def test_soft_target_tolerance_scales_with_k():
    t = np.array([[0.5, 0.5 + 2e-6, 0.0]])  # off by 2e-6 < 3 * 1e-6
    assert cross_entropy(np.zeros((1, 3)), t).loss == pytest.approx(1.000002 * LOG3, rel=1e-14)
    with pytest.raises(InputError, match="not 1"):
        cross_entropy(np.zeros((1, 3)), np.array([[0.5, 0.5 + 4e-6, 0.0]]))


def test_empty_input_sums_to_zero():
    r = cross_entropy(np.zeros((0, 3)), np.zeros(0, dtype=int), reduction="sum")
    assert r.loss == 0.0 and r.grad.shape == (0, 3)


def test_integral_float_labels_are_class_indices_and_inputs_stay_untouched():
    z, y = Z.copy(), np.array([2.0, 0.0])
    r = cross_entropy(z, y, label_smoothing=0.1)
    assert r.loss == pytest.approx(cross_entropy(Z, Y, label_smoothing=0.1).loss, rel=1e-15)
    assert (z == Z).all() and y.tolist() == [2.0, 0.0]


# --- blocks: the kernel works in row blocks, class-major for small k ---------------------------

def straightforward(z, y, weight, ignore_index, reduction):
    """Whole-array NumPy, written independently of xent: per-sample loss and gradient."""
    n, k = z.shape
    w = np.ones(k) if weight is None else np.asarray(weight)
    counted = y != ignore_index
    safe = np.where(counted, y, 0)
    shifted = z - z.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    c = np.where(counted, w[safe], 0.0)
    per = -c * log_p[np.arange(n), safe]
    grad = c[:, None] * (np.exp(log_p) - np.eye(k)[safe])
    if reduction == "mean":
        grad /= c.sum()
    return per, grad


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few samples, so that small inputs cross many block boundaries."""
    monkeypatch.setattr(losses, "BLOCK_LOGITS", 40)


@pytest.mark.parametrize("k", [3, losses.CLASS_MAJOR_MAX_K, losses.CLASS_MAJOR_MAX_K + 1, 70])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_blocks_match_a_straightforward_whole_array_version(small_blocks, k, weighted, reduction):
    rng = np.random.default_rng(k)
    n = 53  # not a multiple of any block's row count
    z, y = rng.normal(scale=4, size=(n, k)), rng.integers(0, k, n)
    y[[0, 17, 52]] = -1
    weight = rng.random(k) + 0.5 if weighted else None
    r = cross_entropy(z, y, weight=weight, ignore_index=-1, reduction=reduction)
    per, grad = straightforward(z, y, weight, -1, reduction)
    np.testing.assert_allclose(r.per_sample, per, rtol=1e-12)
    np.testing.assert_allclose(r.grad, grad, rtol=1e-11, atol=1e-17)
    assert r.per_sample[[0, 17, 52]].tolist() == [0.0] * 3 and not r.grad[[0, 17, 52]].any()


@settings(max_examples=30, deadline=None)
@given(problems(logit=extreme_logit, n=9), st.booleans(), st.sampled_from([-100, 0]))
def test_splitting_into_blocks_changes_no_bit(problem, soft, ignore_index):
    z, y, weight, eps = problem
    with np.errstate(invalid="ignore", over="ignore"):  # a row of zeros gives NaN targets:
        target = np.abs(z) / np.abs(z).sum(axis=1, keepdims=True) if soft else y  # both refuse
    options = dict(weight=weight, label_smoothing=eps, ignore_index=ignore_index,
                   reduction="sum")
    try:
        whole = cross_entropy(z, target, **options)
    except InputError:  # e.g. 1e300 * weight overflows; the blocks must then refuse too
        with pytest.raises(InputError):
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(losses, "BLOCK_LOGITS", K)
                cross_entropy(z, target, **options)
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(losses, "BLOCK_LOGITS", K)  # one sample per block
        blocked = cross_entropy(z, target, **options)
    np.testing.assert_array_equal(blocked.per_sample, whole.per_sample)
    np.testing.assert_array_equal(blocked.grad, whole.grad)


def threaded(patch: pytest.MonkeyPatch, threads: int = 3) -> None:
    """Makes a small input go to several threads, whatever cores the machine has."""
    patch.setattr(losses, "_cores", lambda: threads)
    patch.setattr(losses, "THREADED_LOGITS", 1)


@settings(max_examples=30, deadline=None)
@given(problems(logit=extreme_logit, n=9), st.booleans(), st.sampled_from([-100, 0]),
       st.sampled_from([np.float64, np.float32]), st.integers(2, 9))
def test_threads_change_no_bit_and_refuse_the_same_sample(problem, soft, ignore_index, dtype,
                                                          threads):
    z, y, weight, eps = problem
    with np.errstate(invalid="ignore", over="ignore"):  # a row of zeros gives NaN targets:
        target = np.abs(z) / np.abs(z).sum(axis=1, keepdims=True) if soft else y  # both refuse
    n, k = z.shape

    def run():
        out = np.empty((n, k), dtype), np.empty(n, dtype), np.empty((n, k), dtype)
        predictions = np.empty(n, dtype=np.intp)
        try:
            with np.errstate(over="ignore"):
                losses.loss_and_gradient_into(z, target, out[0], out[1], weight=weight,
                                              ignore_index=ignore_index, label_smoothing=eps,
                                              probs=out[2], predictions=predictions,
                                              first_sample=5)
        except InputError as error:
            return str(error), error.sample
        return (*out, predictions)

    one = run()
    with pytest.MonkeyPatch.context() as patch:
        threaded(patch, threads)
        several = run()
    assert len(several) == len(one)
    for got, expected in zip(several, one):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("bad", [[2, 40], [40], [47]])
def test_threads_name_the_first_bad_sample_in_file_order(bad):
    z, y = np.zeros((48, 4)), np.zeros(48, dtype=int)
    z[bad, 1] = np.nan
    with pytest.MonkeyPatch.context() as patch:
        threaded(patch, 4)  # rows 0-11, 12-23, 24-35, 36-47
        with pytest.raises(InputError, match="logit is NaN") as caught:
            cross_entropy(z, y)
    assert (caught.value.sample, caught.value.column) == (bad[0], "class 1")


def test_a_large_input_is_worked_by_several_threads(monkeypatch):
    # the threads are real: each range is worked by a thread of its own
    monkeypatch.setattr(losses, "_cores", lambda: 2)
    seen, fill_index = set(), losses._fill_index

    def spy(z, *rest):
        import threading

        seen.add((threading.current_thread().name, len(z)))
        return fill_index(z, *rest)

    monkeypatch.setattr(losses, "_fill_index", spy)
    n = 2 * losses.THREADED_LOGITS // 10 + 1  # 2 * THREADED_LOGITS logits and a few
    cross_entropy(np.zeros((n, 10)), np.zeros(n, dtype=int))
    assert {rows for _, rows in seen} == {n // 2, n - n // 2}
    assert all(name.startswith("xent-kernel") for name, _ in seen)
    seen.clear()
    cross_entropy(np.zeros((n // 4, 10)), np.zeros(n // 4, dtype=int))  # too small to share
    assert [rows for _, rows in seen] == [n // 4]


@pytest.mark.parametrize("k", [10, losses.CLASS_MAJOR_MAX_K, losses.CLASS_MAJOR_MAX_K + 1])
@pytest.mark.parametrize("eps, soft, masked", [(0.0, False, False), (0.1, False, False),
                                               (0.0, True, False), (0.0, True, True)])
def test_a_sample_alone_in_its_block_gets_the_bits_it_gets_among_others(k, eps, soft, masked):
    # a stream's chunk may end in a block of one sample: NumPy sums a lone (k, 1) column
    # pairwise, a wider class-major block one class after another
    rng = np.random.default_rng(k)
    n = 30
    z = rng.normal(scale=5, size=(n, k))
    target = rng.dirichlet(np.ones(k), size=n) if soft else rng.integers(0, k, n)
    if masked:  # soft targets with no mass on a masked class: the loss sums around -inf
        z[::3, -1] = -np.inf
        target[::3, -1] = 0
        target /= target.sum(axis=1, keepdims=True)

    def kernel(rows):
        m = z[rows].shape[0]
        out = np.empty((m, k)), np.empty(m), np.empty((m, k))
        losses.loss_and_gradient_into(z[rows], target[rows], out[0], out[1], label_smoothing=eps,
                                      probs=out[2])
        return out

    together = kernel(slice(None))
    for i in range(n):
        alone = kernel(slice(i, i + 1))
        for got, expected in zip(alone, together):
            assert np.array_equal(got[0], expected[i]), i


@pytest.mark.parametrize("k", [3, 40])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_bad_logit_in_a_later_block_is_named_by_its_sample(small_blocks, k, dtype):
    z = np.zeros((50, k))
    z[37, 1] = np.nan
    with pytest.raises(InputError, match="logit is NaN") as caught:
        cross_entropy(z, np.zeros(50, dtype=int), dtype=dtype)
    assert (caught.value.sample, caught.value.column) == (37, "class 1")
    z[37, 1] = -1e300  # fits float64; would become a silent -inf in float32
    if dtype == np.float32:
        with pytest.raises(InputError, match="does not fit in float32") as caught:
            cross_entropy(z, np.zeros(50, dtype=int), dtype=dtype)
        assert caught.value.sample == 37
    z[37, 1] = -np.inf
    with pytest.raises(InputError, match="class is masked") as caught:
        cross_entropy(z, np.ones(50, dtype=int), dtype=dtype)
    assert (caught.value.sample, caught.value.column) == (37, "class 1")
    labels = np.ones(50, dtype=int)
    labels[37] = -100  # the masked label is not counted: nothing is infinite
    assert np.isfinite(cross_entropy(z, labels, dtype=dtype).loss)


def test_a_confident_label_keeps_its_tiny_gradient():
    # p_0 - 1 = -e^-50 / (1 + e^-50): computed as p_0 - 1 it would round to exactly 0.
    r = cross_entropy(np.array([[50.0, 0.0], [0.0, 50.0]]), np.array([0, 1]), reduction="sum")
    tiny = math.exp(-50) / (1 + math.exp(-50))
    np.testing.assert_allclose(r.grad, [[-tiny, tiny], [tiny, -tiny]], rtol=1e-14)
    np.testing.assert_allclose(r.per_sample, math.log1p(math.exp(-50)), rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_probs_and_log_probs_are_computed_on_demand_and_exact(dtype):
    z = np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -np.inf]])
    r = cross_entropy(z, np.array([2, 0]), dtype=dtype)
    assert r.probs.dtype == dtype and r.log_probs.dtype == dtype
    np.testing.assert_array_equal(r.log_probs, log_softmax(z.astype(dtype)))
    np.testing.assert_array_equal(r.probs, softmax(z.astype(dtype)))
    # within an ulp or two of the other route, exp(log p)
    np.testing.assert_allclose(r.probs, np.exp(log_softmax(z.astype(dtype))),
                               rtol=4 * np.finfo(dtype).eps, atol=0)
    assert r.log_probs[1].tolist() == [0.0, -1000.0, -np.inf]
    assert r.probs is r.probs  # computed once


# --- loss_and_gradient_into: the kernel for a stream of blocks --------------------------------

@pytest.mark.parametrize("k, eps", [(4, 0.0), (4, 0.2), (40, 0.0)])
def test_streamed_blocks_combine_to_the_whole(k, eps):
    rng = np.random.default_rng(7)
    z, y = rng.normal(size=(30, k)), rng.integers(0, k, 30)
    y[5] = -100
    weight = rng.random(k) + 0.5
    whole = cross_entropy(z, y, weight=weight, label_smoothing=eps)
    grad, per = np.empty_like(z), np.empty(30)
    totals, divisors = [], []
    for start, stop in ((0, 11), (11, 12), (12, 30)):
        sums = losses.loss_and_gradient_into(z[start:stop], y[start:stop], grad[start:stop],
                                             per[start:stop], weight=weight,
                                             label_smoothing=eps, first_sample=start)
        totals.append(sums.total)
        divisors.append(sums.divisor)
        assert sums.ignored.tolist() == (y[start:stop] == -100).tolist()
    assert sum(divisors) == pytest.approx(whole.divisor, rel=1e-15)
    assert math.fsum(totals) / sum(divisors) == pytest.approx(whole.loss, rel=1e-13)
    np.testing.assert_allclose(per, whole.per_sample, rtol=1e-15)
    np.testing.assert_allclose(grad / sum(divisors), whole.grad, rtol=1e-13, atol=1e-18)


def test_streamed_block_names_the_sample_in_the_whole_stream():
    z = np.zeros((4, 3))
    z[2, 0] = np.inf
    with pytest.raises(InputError, match=r"\+inf") as caught:
        losses.loss_and_gradient_into(z, np.zeros(4, dtype=int), np.empty((4, 3)), np.empty(4),
                                      first_sample=1000)
    assert (caught.value.sample, caught.value.column) == (1002, "class 0")
    with pytest.raises(InputError, match="label 7") as caught:
        losses.loss_and_gradient_into(np.zeros((4, 3)), np.array([0, 7, 0, 0]),
                                      np.empty((4, 3)), np.empty(4), first_sample=1000)
    assert caught.value.sample == 1001


def test_streamed_block_refuses_buffers_of_the_wrong_shape():
    with pytest.raises(ValueError, match="C-contiguous"):
        losses.loss_and_gradient_into(np.zeros((4, 3)), np.zeros(4, dtype=int),
                                      np.empty((3, 4)).T, np.empty(4))
    # per_sample sets the dtype: a gradient of another dtype is refused
    with pytest.raises(ValueError, match="grad must be .* of float32"):
        losses.loss_and_gradient_into(np.zeros((4, 3)), np.zeros(4, dtype=int),
                                      np.empty((4, 3)), np.empty(4, dtype=np.float32))
    with pytest.raises(ValueError, match="per_sample"):
        losses.loss_and_gradient_into(np.zeros((4, 3)), np.zeros(4, dtype=int), None,
                                      np.empty(3))


@pytest.mark.parametrize("k", [3, 40])  # class-major and row-major blocks
@pytest.mark.parametrize("eps, soft", [(0.0, False), (0.1, False), (0.0, True)])
def test_block_kernel_gives_losses_alone_probabilities_and_predictions(monkeypatch, k, eps, soft):
    monkeypatch.setattr(losses, "BLOCK_LOGITS", 7 * k)  # several blocks, a short last one
    rng = np.random.default_rng(k)
    n = 30
    z = np.round(rng.normal(size=(n, k)), 1)  # rounded: ties at the top are common
    z[0] = 0.5  # every class tied: argmax is class 0
    z[1, -1] = z[1].max() + 1
    target = rng.dirichlet(np.ones(k), size=n) if soft else rng.integers(0, k, n)
    grad, full, alone = np.empty((n, k)), np.empty(n), np.empty(n)
    probs, predictions = np.empty((n, k)), np.full(n, -1)
    losses.loss_and_gradient_into(z, target, grad, full, label_smoothing=eps)
    losses.loss_and_gradient_into(z, target, None, alone, label_smoothing=eps, probs=probs,
                                  predictions=predictions)
    assert np.array_equal(alone, full)  # the same losses, without the gradient
    assert np.array_equal(predictions, z.argmax(axis=1))  # first of the tied maxima
    # an independent softmax, to the last ulps, and the public softmax to the bit
    shifted = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, shifted / shifted.sum(axis=1, keepdims=True), rtol=1e-15)
    assert np.array_equal(probs, losses.softmax(z))


@pytest.mark.parametrize("label_dtype", [np.uint8, np.int16, np.int32, np.float32])
def test_any_label_dtype_gives_the_int64_result(small_blocks, label_dtype):
    # Flat indices reach rows * k: they must not be computed in the labels' own narrow dtype.
    rng = np.random.default_rng(3)
    z, y = rng.normal(size=(300, 5)), rng.integers(0, 5, 300)
    expected = cross_entropy(z, y, weight=[1.0, 2.0, 1.0, 1.0, 0.5])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(losses, "BLOCK_LOGITS", 1 << 17)  # blocks of 26,214 rows: indices > 2**15
        big = np.tile(z, (100, 1))
        r = cross_entropy(big, np.tile(y, 100).astype(label_dtype),
                          weight=[1.0, 2.0, 1.0, 1.0, 0.5])
    np.testing.assert_array_equal(r.per_sample, np.tile(expected.per_sample, 100))
    got = cross_entropy(z, y.astype(label_dtype), weight=[1.0, 2.0, 1.0, 1.0, 0.5])
    np.testing.assert_array_equal(got.grad, expected.grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_logits_give_the_result_of_their_float64_values(dtype):
    rng = np.random.default_rng(5)
    z32 = rng.normal(scale=5, size=(40, 6)).astype(np.float32)
    z32[3, 2] = -np.inf
    y = rng.integers(0, 6, 40)
    y[3] = 0
    narrow = cross_entropy(z32, y, dtype=dtype, reduction="none")
    wide = cross_entropy(z32.astype(np.float64), y, dtype=dtype, reduction="none")
    assert narrow.grad.dtype == dtype
    np.testing.assert_array_equal(narrow.per_sample, wide.per_sample)
    np.testing.assert_array_equal(narrow.grad, wide.grad)
    np.testing.assert_array_equal(narrow.probs, wide.probs)


@pytest.mark.parametrize("k_pad", [0, losses.CLASS_MAJOR_MAX_K])  # class-major and row-major
def test_a_masked_class_with_zero_coefficient_leaves_the_other_terms(k_pad):
    # z = (1, 0, -inf, -inf...): p = (e, 1, 0...) / (e + 1). Soft t = (1/4, 3/4, 0...):
    # loss = -(1/4 log p_0 + 3/4 log p_1) = log(e + 1) - 1/4; grad = p - t.
    pad = [-np.inf] * (1 + k_pad)
    z = np.array([[1.0, 0.0] + pad] * 2)
    t = np.array([[0.25, 0.75] + [0.0] * len(pad)] * 2)
    r = cross_entropy(z, t, reduction="none")
    expected = math.log(math.e + 1) - 0.25
    np.testing.assert_allclose(r.per_sample, [expected] * 2, rtol=1e-15)
    p0 = math.e / (math.e + 1)
    np.testing.assert_allclose(r.grad[:, :2], [[p0 - 0.25, 1 - p0 - 0.75]] * 2, rtol=1e-14)
    assert not r.grad[:, 2:].any()
    # Smoothing with weight 0 on the masked classes: (1 - eps) nll + (eps / k) sum_c w_c -log p_c.
    k = z.shape[1]
    weight = [1.0, 1.0] + [0.0] * len(pad)
    s = cross_entropy(z, np.array([1, 0]), weight=weight, label_smoothing=0.5, reduction="none")
    nll = [math.log(math.e + 1), math.log(math.e + 1) - 1]
    smooth = 2 * math.log(math.e + 1) - 1
    np.testing.assert_allclose(s.per_sample, [0.5 * v + 0.5 / k * smooth for v in nll],
                               rtol=1e-14)


@pytest.mark.parametrize("row, message, column", [
    ([0.2, 0.8, np.nan], "not a finite number", "class 2"),
    ([np.inf, 0.5, 0.5], "not a finite number", "class 0"),
    ([0.5, -0.5, 1.0], "negative", "class 1"),  # sums to 1: only the entries show it
])
def test_a_bad_soft_target_is_found_in_its_row(row, message, column):
    t = np.array([[0.5, 0.5, 0.0], row, [0.1, 0.1, 0.8]])
    with pytest.raises(InputError, match=message) as caught:
        cross_entropy(np.zeros((3, 3)), t)
    assert (caught.value.sample, caught.value.column) == (1, column)


@pytest.mark.parametrize("k", [3, losses.CLASS_MAJOR_MAX_K + 1])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_general_coefficients_across_blocks_match_the_naive_oracle(small_blocks, k, soft,
                                                                   reduction):
    rng = np.random.default_rng(11)
    n = 23
    z = rng.normal(scale=5, size=(n, k))
    z[4, 1] = 40.0  # a confident sample: its tiny terms must survive
    if soft:
        target = rng.dirichlet(np.ones(k), size=n)
    else:
        target = rng.integers(0, k, n)
        target[[2, 9]] = -1
    weight = list(rng.random(k) + 0.5)
    r = cross_entropy(z, target, weight=weight, ignore_index=-1, label_smoothing=0.15,
                      reduction=reduction)
    loss, per, grads = naive(z.tolist(), list(target), weight, -1, 0.15, reduction)
    np.testing.assert_allclose(r.per_sample, per, rtol=1e-12)
    np.testing.assert_allclose(r.grad, grads, rtol=1e-11, atol=1e-16)
    assert r.loss == pytest.approx(loss, rel=1e-12)


def test_the_kernel_bench_reports_rows_bench_run_can_read():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).parent.parent / "bench" / "bench_kernel.py"
    spec = importlib.util.spec_from_file_location("bench_kernel", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.run(cases=((300, 4), (20, 50)), repeat=1, echo=False)
    assert [(row["n"], row["k"]) for row in rows] == [(300, 4)] * 2 + [(20, 50)] * 2
    for row in rows:
        assert {"name", "seconds", "baseline", "baseline_seconds", "ratio", "target"} <= set(row)
        assert row["seconds"] > 0
        if not row["skipped"]:
            assert row["ratio"] == pytest.approx(row["baseline_seconds"] / row["seconds"])
    assert "torch" in rows[1]["baseline"] and rows[1]["target"] == 1.5
    assert "kernel 300 x 4" in bench.table(rows)


# --- the first bad sample is the error, however the input is cut --------------------------------

SOFTMAX_FAULTS = ("nan", "+inf", "all -inf", "too large", "label out of range",
                  "label not an integer", "negative target", "nan target", "sum 2",
                  "label masked")


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 7), st.integers(2, 4), st.booleans(), st.booleans(),
       st.lists(st.tuples(st.sampled_from(SOFTMAX_FAULTS), st.integers(0, 6)), max_size=3),
       st.integers(0, 2**32 - 1))
def test_the_whole_input_names_the_error_of_its_first_bad_sample(n, k, soft, narrow, faults, seed):
    # a stream meets the samples in order: the whole input must name the error that the first
    # bad sample alone names, whatever else is wrong further on
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k))
    target = rng.dirichlet(np.ones(k), size=n) if soft else rng.integers(0, k, n).astype(float)
    for fault, row in faults:
        row %= n
        if fault == "nan":
            z[row, rng.integers(k)] = np.nan
        elif fault == "+inf":
            z[row, rng.integers(k)] = np.inf
        elif fault == "all -inf":
            z[row] = -np.inf
        elif fault == "too large":
            z[row, rng.integers(k)] = 1e300  # beyond float32
        elif soft and fault == "negative target":
            target[row, 0] = -0.5
        elif soft and fault == "nan target":
            target[row, 0] = np.nan
        elif soft and fault == "sum 2":
            target[row] *= 2
        elif not soft and fault == "label out of range":
            target[row] = k
        elif not soft and fault == "label not an integer":
            target[row] = 0.5
        elif fault == "label masked":  # the label's class -inf: its log p is -inf
            label = target[row].argmax() if soft else target[row]
            if 0 <= label < k and label == int(label):
                z[row, int(label)] = -np.inf
    dtype = np.float32 if narrow else np.float64

    def error(rows: slice):
        part = target[rows]
        try:
            with np.errstate(all="ignore"):
                losses.loss_and_gradient_into(z[rows], part, None, np.empty(len(part), dtype),
                                              first_sample=rows.start, whole=False)
        except InputError as caught:
            return caught.message, caught.sample, caught.column
        return None

    whole = error(slice(0, n))
    firsts = [found for i in range(n) if (found := error(slice(i, i + 1))) is not None]
    assert whole == (firsts[0] if firsts else None)


@pytest.mark.parametrize("z, target, message, sample", [
    # a later NaN or a later bad label came first, named before the earlier fault
    ([[0.0, 1.0], [np.inf, 0.0], [np.nan, 0.0]], [0, 0, 0], r"\+inf", 1),
    ([[0.0, 1.0], [np.nan, 0.0], [0.0, 1.0]], [0, 0, 5], "NaN", 1),
    ([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]], [0.0, 7.0, 0.5], "label 7", 1),
    ([[0.0, 1.0], [0.0, 1.0]], [[0.5, 0.5], [1.0, 1.0]], "sum to 2", 1),
])
def test_the_first_bad_sample_is_named_whatever_its_fault(z, target, message, sample):
    with pytest.raises(InputError, match=message) as caught:
        cross_entropy(np.array(z), np.array(target))
    assert caught.value.sample == sample


def test_a_huge_soft_target_is_refused_without_a_numpy_warning():
    # the rounding hint scaled 1e308 by 10: NumPy's overflow warning reached the user's stderr
    # above the one-line error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match=r"sum to 1e\+308, not 1$"):
            losses.cross_entropy(np.array([[1.0, 2.0]]), np.array([[1e308, 0.5]]))
