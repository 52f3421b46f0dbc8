"""The numeric core of `xent check`: derivatives by every method against independent oracles."""

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from xent_cli import gradcheck, losses


def naive_loss(z, label):
    """One sample's -log softmax(z)[label], written out plainly."""
    return -(z[label] - np.log(sum(np.exp(v) for v in z)))


def naive_gradient(z, label):
    """Hand-derived: dCE/dz_j = softmax(z)_j - [j == label], for every j."""
    e = np.exp(z - z.max())
    p = e / e.sum()
    return p - np.eye(len(z))[label]


def naive_numeric(z, labels, h=1e-6):
    """An entry-by-entry central difference with a Python loop, the slow obvious way."""
    out = np.zeros_like(z)
    for i in range(z.shape[0]):
        for c in range(z.shape[1]):
            plus, minus = z[i].copy(), z[i].copy()
            plus[c] += h
            minus[c] -= h
            out[i, c] = (naive_loss(plus, labels[i]) - naive_loss(minus, labels[i])) / (2 * h)
    return out


def seed_case1(grad, labels):
    """The seed post's gradient: right at the label, 0 elsewhere."""
    out = np.zeros_like(grad)
    rows = np.arange(len(labels))
    out[rows, labels] = grad[rows, labels]
    return out


logit_rows = st.integers(1, 6).flatmap(lambda n: st.integers(2, 6).flatmap(lambda k: st.tuples(
    hnp.arrays(np.float64, (n, k), elements=st.floats(-8, 8)),
    hnp.arrays(np.int64, (n,), elements=st.integers(0, k - 1)))))


@settings(max_examples=40, deadline=None)
@given(logit_rows)
def test_every_method_agrees_with_the_hand_derived_gradient(case):
    z, labels = case
    problem = gradcheck.problem(z, labels)
    expected = np.array([naive_gradient(z[i], labels[i]) for i in range(len(z))])
    np.testing.assert_allclose(problem.grad, expected, atol=1e-12)
    loss = gradcheck.xent_loss(problem.a)
    for method in gradcheck.METHODS:
        tol = gradcheck.tolerance(method)
        report = gradcheck.check_gradient(problem, expected, loss, tol, analytic_source="hand")
        assert report.passed, (method, report.failures[:1])


@settings(max_examples=30, deadline=None)
@given(logit_rows)
def test_the_seed_case1_gradient_fails_only_off_the_label(case):
    z, labels = case
    problem = gradcheck.problem(z, labels)
    seed = seed_case1(problem.grad, labels)
    report = gradcheck.check_gradient(problem, seed, gradcheck.xent_loss(problem.a),
                                      gradcheck.tolerance("complex"), analytic_source="seed")
    p = losses.softmax(z)
    off_label = np.ones_like(p, dtype=bool)
    off_label[np.arange(len(labels)), labels] = False
    # an off-label entry fails exactly when its p_j is visible above the tolerance
    visible = off_label & (p > 1e-12 + 1e-9 * p)
    assert report.failed == visible.sum() == report.failed_off_label
    assert all(f.cls != f.label and f.analytic == 0 for f in report.failures)


def test_vectorised_central_differences_match_the_entry_by_entry_loop():
    rng = np.random.default_rng(3)
    z, labels = rng.normal(size=(5, 4)), rng.integers(0, 4, 5)
    problem = gradcheck.problem(z, labels)
    numeric, estimate = gradcheck.derivative(gradcheck.xent_loss(problem.a), z, "central", 1e-6)
    assert estimate is None
    np.testing.assert_allclose(numeric, naive_numeric(z, labels), atol=1e-8)


def test_the_xent_loss_is_xents_per_sample_loss_with_weights_and_smoothing_also_for_complex():
    rng = np.random.default_rng(4)
    z, labels = rng.normal(size=(6, 3)) * 3, rng.integers(0, 3, 6)
    labels[2] = -100
    problem = gradcheck.problem(z, labels, weight=[1.0, 2.0, 0.5], label_smoothing=0.1)
    loss = gradcheck.xent_loss(problem.a)
    np.testing.assert_allclose(loss(z), problem.per_sample, rtol=1e-13)
    np.testing.assert_allclose(loss(z + 0j).real, problem.per_sample, rtol=1e-13)
    report = gradcheck.check_gradient(problem, problem.grad, loss, gradcheck.tolerance("complex"),
                                      analytic_source="xent")
    assert report.passed and report.max_abs_err < 1e-14
    assert not problem.grad[2].any()  # the ignored sample


def test_complex_step_catches_a_relative_1e6_error_that_central_differences_cannot_see():
    problem = gradcheck.random_problem(200, 10, 1)
    loss = gradcheck.xent_loss(problem.a)
    off = problem.grad * (1 + 1e-6)
    complex_report = gradcheck.check_gradient(problem, off, loss, gradcheck.tolerance("complex"),
                                              analytic_source="off")
    central_report = gradcheck.check_gradient(problem, off, loss, gradcheck.tolerance("central"),
                                              analytic_source="off")
    assert not complex_report.passed
    assert complex_report.max_rel_err == pytest.approx(1e-6, rel=1e-3)
    assert central_report.passed  # why the complex step exists


def test_a_float32_gradient_passes_at_float32_defaults_and_not_at_float64s():
    problem = gradcheck.random_problem(500, 10, 2)
    grad32 = losses.cross_entropy(problem.z, problem.target, reduction="sum",
                                  dtype=np.float32).grad
    assert grad32.dtype == np.float32
    loss = gradcheck.xent_loss(problem.a)
    for method in gradcheck.METHODS:
        report = gradcheck.check_gradient(problem, grad32, loss,
                                          gradcheck.tolerance(method, "float32"),
                                          analytic_source="float32")
        assert report.passed, method
    strict = gradcheck.check_gradient(problem, grad32, loss, gradcheck.tolerance("complex"),
                                      analytic_source="float32")
    assert not strict.passed


def test_richardson_estimates_its_own_error():
    problem = gradcheck.random_problem(100, 5, 5)
    numeric, estimate = gradcheck.derivative(gradcheck.xent_loss(problem.a), problem.z,
                                             "richardson", 1e-3)
    error = np.abs(numeric - problem.grad)
    assert error.max() < 1e-10
    assert estimate.max() < 1e-10
    # a step too large for the estimate to be small is flagged by the estimate itself
    _, coarse = gradcheck.derivative(gradcheck.xent_loss(problem.a), problem.z, "richardson", 0.5)
    assert coarse.max() > 1e-6


@pytest.mark.parametrize("method, weight", [("central", 1.0),
                                            ("richardson", (64 * 4 + 20 * 2 + 1) / 45)])
def test_the_round_off_allowance_is_eps_2f_plus_m_over_2h(method, weight):
    # a float32 loss of 1000 whatever z: its differences are pure round-off, whose bound is
    # ε·(2|f| + m) / 2h, m the row's log-sum-exp (Richardson: each step's, h/4's counting most,
    # through its weights 64, −20, 1)
    z = np.array([[0.25, 4.0], [-40.0, 1.0]])
    problem = gradcheck.problem(z, np.array([0, 1]))
    tol = gradcheck.tolerance(method, "float32", eps=2.0**-8)  # z ± h exact in float32

    def loss(z):
        return np.full(len(z), 1000.0, dtype=np.float32)

    h = tol.eps * np.minimum(np.maximum(1.0, np.abs(z)), gradcheck.STEP_SCALE_CAP)
    lse = np.log(np.exp(z).sum(axis=1, keepdims=True))  # 4.03 and 1.0: S = 1, unweighted
    allowance = weight * float(np.finfo(np.float32).eps) * (2 * 1000.0 + lse) / (2 * h)
    within = gradcheck.check_gradient(problem, 0.99 * allowance + tol.atol, loss, tol,
                                      analytic_source="g")
    assert within.passed and within.max_roundoff == pytest.approx(allowance.max(), rel=1e-12)
    assert within.roundoff_passed == 4
    beyond = gradcheck.check_gradient(problem, 1.01 * allowance + tol.atol, loss, tol,
                                      analytic_source="g")
    assert beyond.failed == 4 and beyond.roundoff_passed == 0


def test_the_round_off_allowance_holds_what_a_class_term_rounds_before_it_cancels():
    # bce in PyTorch's form, max(z, 0) − z·t + log1p(exp(−|z|)), rounds z·t at 3,000 however
    # small the loss left: 0 here, so the allowance is ε·(a + b)·|z_c| / 2h alone
    z = np.array([[3000.0, -2000.0, 0.5]])
    problem = gradcheck.problem(z, np.array([[1.0, 0.0, 1.0]]), loss="bce", weight=[2.0, 1.0, 1.0])
    tol = gradcheck.tolerance("central")

    def loss(z):
        return np.zeros(len(z))

    h = tol.eps * np.minimum(np.maximum(1.0, np.abs(z)), gradcheck.STEP_SCALE_CAP)
    allowance = np.finfo(np.float64).eps * np.array([2.0, 1.0, 1.0]) * np.abs(z) / (2 * h)
    assert allowance[0, 0] == pytest.approx(2 * 3000 * 2.2204e-16 / 3.6e-4, rel=1e-4)  # 3.7e-9
    within = gradcheck.check_gradient(problem, 0.99 * allowance + tol.atol, loss, tol,
                                      analytic_source="g")
    assert within.passed and within.max_roundoff == pytest.approx(allowance.max(), rel=1e-12)
    beyond = gradcheck.check_gradient(problem, 1.01 * allowance + tol.atol, loss, tol,
                                      analytic_source="g")
    assert beyond.failed == 3 and beyond.roundoff_passed == 0


def test_a_float32_sum_over_300_classes_carries_more_than_one_rounding():
    # softplus summed over 300 classes: the pairwise sum rounds every partial sum holding the
    # class stepped, so two values differ by more than ε·|f|, the bound of values rounded once
    # (55 of 2,400 entries, up to 1.5 times), and by less than 2ε·|f|, which those sums add up to
    rng = np.random.default_rng(0)
    z = (4 * rng.standard_normal((8, 300))).astype(np.float32).astype(np.float64)

    def loss(z):
        return np.logaddexp(np.float32(0), z.astype(np.float32)).sum(axis=1)

    problem = gradcheck.problem(z, np.zeros(z.shape), loss="bce")  # gradient σ(z)
    tol = gradcheck.tolerance("central", "float32", rtol=0.0, atol=0.0)  # round-off alone
    numeric, _ = gradcheck.derivative(loss, problem.z, "central", tol.eps, "float32")
    h = tol.eps * np.minimum(np.maximum(1.0, np.abs(z)), gradcheck.STEP_SCALE_CAP)
    rounded_once = np.finfo(np.float32).eps * np.abs(loss(z))[:, None] / (2 * h)
    error = np.abs(numeric - problem.grad)
    assert (error > rounded_once).sum() > 20 and (error < 2 * rounded_once).all()
    report = gradcheck.check_gradient(problem, problem.grad, loss, tol, analytic_source="σ(z)")
    assert report.passed, report.failures[:3]


def test_a_float32_function_is_stepped_between_the_points_it_sees():
    # f(z) = z in float32: z ± h rounds to multiples of 2.4e-4 at 3000, so (f(z+h) − f(z−h))
    # / 2h misses 1 by up to 0.1 %; divided by the step between the rounded points, it is exact
    z = np.array([[3000.0, 1.0], [-12345.0, 2.0]])

    def f(z):
        return z.astype(np.float32)[:, 0].astype(np.float64)  # its values exact: no round-off

    for method in ("central", "richardson"):
        held, _ = gradcheck.derivative(f, z, method, 5e-3, held="float32")
        assert (held == [[1, 0], [1, 0]]).all()
        unheld, _ = gradcheck.derivative(f, z, method, 5e-3)
        assert np.abs(unheld[:, 0] - 1).max() > 1e-4


def test_the_complex_step_has_no_round_off_allowance():
    problem = gradcheck.random_problem(3, 4, 0)
    report = gradcheck.check_gradient(problem, problem.grad, gradcheck.xent_loss(problem.a),
                                      gradcheck.tolerance("complex"), analytic_source="g")
    assert report.passed and report.max_roundoff is None and report.roundoff_passed == 0


def test_the_sweep_traces_the_v_of_truncation_against_round_off():
    problem = gradcheck.random_problem(50, 5, 6)
    loss = gradcheck.xent_loss(problem.a)
    points = gradcheck.sweep_steps(loss, problem.z, problem.grad, "central")
    errors = {p.h: p.max_abs_err for p in points}
    assert [p.h for p in points] == [10.0 ** -e for e in range(1, 14)]
    best = min(errors, key=errors.get)
    assert 1e-7 <= best <= 1e-4  # near cbrt(machine eps)
    assert errors[1e-1] > 100 * errors[best] and errors[1e-13] > 100 * errors[best]
    # truncation falls as h² on the left arm: a decade of h is two decades of error
    assert errors[1e-2] / errors[1e-3] == pytest.approx(100, rel=0.1)
    flat = gradcheck.sweep_steps(loss, problem.z, problem.grad, "complex")
    # truncation (h²) only: once it is below round-off the error stays at machine precision
    assert all(p.max_abs_err < 1e-15 for p in flat if p.h <= 1e-7)


def test_the_hessian_is_diag_p_minus_ppt_by_finite_differences_of_the_gradient():
    problem = gradcheck.random_problem(20, 4, 7, weight=[1.0, 3.0, 1.0, 2.0])
    hessian = gradcheck.xent_hessian(problem)
    i = 3
    p = losses.softmax(problem.z[i:i + 1])[0]
    weight_sum = problem.a[i].sum()
    np.testing.assert_allclose(hessian[i], weight_sum * (np.diag(p) - np.outer(p, p)), atol=1e-15)
    np.testing.assert_allclose(hessian.sum(axis=2), 0, atol=1e-13)  # grad rows sum to a constant
    for method in gradcheck.METHODS:
        report = gradcheck.check_hessian(problem, hessian, gradcheck.xent_gradient(problem.a),
                                         gradcheck.tolerance(method), analytic_source="H",
                                         gradient_source="g")
        assert report.passed and report.entries == 20 * 16, method
    wrong = hessian * (1 + np.eye(4))
    assert not gradcheck.check_hessian(problem, wrong, gradcheck.xent_gradient(problem.a),
                                       gradcheck.tolerance("central"), analytic_source="H",
                                       gradient_source="g").passed


def test_directional_mode_catches_the_seed_gradient_in_every_sample():
    problem = gradcheck.random_problem(1000, 10, 8)
    loss = gradcheck.xent_loss(problem.a)
    tol = gradcheck.tolerance("central")
    right = gradcheck.check_directional(problem, problem.grad, loss, tol, analytic_source="g")
    wrong = gradcheck.check_directional(problem, seed_case1(problem.grad, problem.labels), loss,
                                        tol, analytic_source="seed")
    assert right.passed and right.entries == 1000
    assert wrong.failed > 990


def test_a_masked_class_has_derivative_zero_and_checks_clean():
    z = np.array([[1.0, -np.inf, 0.5], [-np.inf, 2.0, 0.0]])
    labels = np.array([0, 2])
    problem = gradcheck.problem(z, labels)
    for method in gradcheck.METHODS:
        report = gradcheck.check_gradient(problem, problem.grad, gradcheck.xent_loss(problem.a),
                                          gradcheck.tolerance(method), analytic_source="g")
        assert report.passed and report.nonfinite is None, method
        along = gradcheck.check_directional(problem, problem.grad, gradcheck.xent_loss(problem.a),
                                            gradcheck.tolerance(method), analytic_source="g")
        assert along.passed, method


def test_nan_and_inf_are_named_and_fail():
    problem = gradcheck.random_problem(4, 3, 9)
    grad = problem.grad.copy()
    grad[1, 2], grad[2, 0] = np.nan, -np.inf
    report = gradcheck.check_gradient(problem, grad, gradcheck.xent_loss(problem.a),
                                      gradcheck.tolerance("central"), analytic_source="g")
    assert not report.passed and report.failed == 2
    assert report.nonfinite == ("the analytic gradient has 1 NaN and 1 infinite entries "
                                "(first at sample 1, class 2)")
    assert np.isfinite(report.max_abs_err)


def test_a_failure_names_the_entry_and_says_which_value_is_which():
    failure = gradcheck.Failure(sample=3, cls=1, analytic=0.0, numeric=0.25, abs_err=0.25,
                                rel_err=1.0)
    assert failure.describe() == ("sample 3, class 1: analytic 0, numeric 0.25 "
                                  "(abs error 0.25, rel error 1)")


def test_a_full_central_check_of_10000_by_10_takes_well_under_a_second():
    problem = gradcheck.random_problem(10_000, 10, 10)
    start = time.perf_counter()
    report = gradcheck.check_gradient(problem, problem.grad, gradcheck.xent_loss(problem.a),
                                      gradcheck.tolerance("central"), analytic_source="g")
    assert report.passed and report.entries == 100_000
    assert time.perf_counter() - start < 1.0


def test_derives_symbolic_gradient_agrees_with_xents_and_catches_the_seed():
    problem = gradcheck.random_problem(30, 4, 11, weight=[1.0, 2.0, 0.5, 1.0],
                                       label_smoothing=0.1)
    agreement = gradcheck.symbolic_agreement(problem, problem.grad)
    assert agreement.passed and agreement.max_abs_diff < 1e-14
    wrong = gradcheck.symbolic_agreement(problem, seed_case1(problem.grad, problem.labels))
    assert not wrong.passed and wrong.note.startswith("sample 0, class ")


def test_the_symbolic_route_keeps_large_logits_finite():
    z = np.array([[800.0, 799.0, 0.0], [-700.0, 5.0, 4.0]])
    problem = gradcheck.problem(z, np.array([0, 2]))
    assert gradcheck.symbolic_agreement(problem, problem.grad).passed


options = st.fixed_dictionaries({
    "weight": st.none() | st.lists(st.floats(0.1, 3), min_size=4, max_size=4),
    "label_smoothing": st.sampled_from([0.0, 0.1, 0.5]),
    "soft": st.booleans(),
})


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.float64, (5, 4), elements=st.floats(-10, 10)), options, st.integers(0, 99))
def test_under_any_loss_options_gradient_and_hessian_match_the_complex_step(z, opts, seed):
    rng = np.random.default_rng(seed)
    if opts["soft"]:
        target = rng.dirichlet(np.ones(4), size=5)
    else:
        target = rng.integers(0, 4, size=5)
        target[0] = -100  # one ignored sample
    problem = gradcheck.problem(z, target, weight=opts["weight"],
                                label_smoothing=opts["label_smoothing"])
    tol = gradcheck.tolerance("complex")
    gradient = gradcheck.check_gradient(problem, problem.grad, gradcheck.xent_loss(problem.a), tol,
                                        analytic_source="xent")
    hessian = gradcheck.check_hessian(problem, gradcheck.xent_hessian(problem),
                                      gradcheck.xent_gradient(problem.a), tol,
                                      analytic_source="H", gradient_source="g")
    assert gradient.passed, gradient.failures[:1]
    assert hessian.passed, hessian.failures[:1]
