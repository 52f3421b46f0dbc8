"""xent derive --loss bce: steps re-evaluated on their own, SymPy vs NumPy (xent_cli.bce) vs finite
differences, the Hessian's diagonal, the pitfall's counterexample, JSON fields, exit codes, golden."""

import json
import math
import random
import re
from fractions import Fraction

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from xent_cli import bce, derivation_bce
from xent_cli.cli import app
from xent_cli.derivation import verify
from xent_cli.derivation_bce import FULL_CHECK_K, BinarySymbols, derive_bce


def naive_bce(z, y):
    """The definition in plain floats, class by class."""
    total = 0.0
    for zn, yn in zip(z, y):
        s = 1 / (1 + math.exp(-zn))
        total -= yn * math.log(s) + (1 - yn) * math.log(1 - s)
    return total


def finite_difference_gradient(z, y, h=1e-6):
    grad = []
    for j in range(len(z)):
        up, down = list(z), list(z)
        up[j] += h
        down[j] -= h
        grad.append((naive_bce(up, y) - naive_bce(down, y)) / (2 * h))
    return np.array(grad)


def symbols(k):
    return (sp.symbols(f"z1:{k + 1}", real=True), sp.symbols(f"y1:{k + 1}", real=True),
            sp.symbols(f"p1:{k + 1}", positive=True))


def evaluate(expr, k, z_values, y_values):
    """A step's shown expression at a point, from this test's own p_n = 1/(1 + e^{−z_n})."""
    z, y, p = symbols(k)
    expr = expr.xreplace({pn: 1 / (1 + sp.exp(-zn)) for pn, zn in zip(p, z)}).doit()
    point = {zn: sp.Float(v, 30) for zn, v in zip(z, z_values)} | {
        yn: sp.Float(v, 30) for yn, v in zip(y, y_values)}
    return float(expr.xreplace(point).evalf(30))


@pytest.mark.parametrize("k", [1, 2, 3, 5, FULL_CHECK_K + 3])
def test_every_loss_step_is_the_loss_and_every_gradient_step_its_derivative(k):
    derivation = derive_bce(k)
    assert derivation.verified and derivation.loss == "bce"
    rng = random.Random(k)
    for _ in range(2):
        z = [rng.uniform(-6, 6) for _ in range(k)]
        y = [rng.choice([0.0, 1.0, rng.random()]) for _ in range(k)]  # need not sum to 1
        truth = naive_bce(z, y)
        numpy_loss = bce.binary_cross_entropy([z], [y], reduction="sum").loss
        assert numpy_loss == pytest.approx(truth, rel=1e-12)
        for step in (s for s in derivation.steps if s.case == "loss"):
            assert evaluate(step.expr, k, z, y) == pytest.approx(truth, rel=1e-12), step.rule
        # the gradient steps are for j = 1
        expected = bce.elements_and_gradient(np.array([z]), np.array([y]))[1][0][0]
        assert finite_difference_gradient(z, y)[0] == pytest.approx(expected, abs=1e-6)
        for step in (s for s in derivation.steps if s.case == "every j" and s.lhs.args[1][0] != sp.Symbol("z_j")):
            assert evaluate(step.expr, k, z, y) == pytest.approx(expected, abs=1e-12), step.rule


@pytest.mark.parametrize("k", [2, 4, FULL_CHECK_K + 3])
def test_json_gradient_and_direct_derivatives_match_numpy_and_finite_differences(k, runner):
    result = runner.invoke(app, ["derive", "--loss", "bce", "--k", str(k), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["loss"] == "bce" and data["k"] == k and data["label"] is None and data["soft"] is None
    assert data["verified"] and all(data["gradient_verified"])
    derivation = derive_bce(k)  # its entries' direct derivatives, as the table shows them
    z_symbols, y_symbols = sp.symbols(f"z1:{k + 1}"), sp.symbols(f"y1:{k + 1}")  # as sympify reads
    rng = np.random.default_rng(k)
    for _ in range(2):
        z = rng.normal(size=k) * 3
        y = rng.random(size=k)
        y[0] = 1.0  # multi-hot and probabilities mixed
        point = dict(zip(z_symbols, z)) | dict(zip(y_symbols, y))
        from_json = np.array([float(sp.sympify(g).subs(point)) for g in data["gradient"]])
        numpy_grad = bce.elements_and_gradient(z[None, :], y[None, :])[1][0]
        assert np.allclose(from_json, numpy_grad, atol=1e-13)
        assert np.allclose(from_json, finite_difference_gradient(z, y), atol=1e-7)
        direct = [evaluate(entry.direct, k, z, y) for entry in derivation.gradient]
        assert np.allclose(direct, numpy_grad, atol=1e-13)


@pytest.mark.parametrize("k", [1, 3, FULL_CHECK_K + 2])
def test_hessian_is_diagonal_sigma_times_one_minus_sigma(k, runner):
    result = runner.invoke(app, ["derive", "--loss", "bce", "--k", str(k), "--hessian",
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert all(all(row) for row in data["hessian_verified"])
    z = np.random.default_rng(k).normal(size=k) * 2
    y = np.random.default_rng(k + 1).random(size=k)
    point = dict(zip(sp.symbols(f"z1:{k + 1}"), z)) | dict(zip(sp.symbols(f"y1:{k + 1}"), y))
    h = 1e-5
    for i in range(k):
        for j in range(k):
            if i != j:
                assert data["hessian"][i][j] == "0"
                continue
            step = np.zeros(k)
            step[j] = h
            numeric = (bce.elements_and_gradient((z + step)[None, :], y[None, :])[1][0][i]
                       - bce.elements_and_gradient((z - step)[None, :], y[None, :])[1][0][i]) / (2 * h)
            value = float(sp.sympify(data["hessian"][i][j]).subs(point))
            s = 1 / (1 + math.exp(-z[i]))
            assert value == pytest.approx(s * (1 - s), rel=1e-12)
            assert value == pytest.approx(numeric, abs=1e-8)


def test_the_softmax_gradient_carried_over_fails_at_a_real_counterexample():
    for k in (1, 2, 3, 6):
        pitfall = derive_bce(k).pitfall
        assert pitfall is not None and not pitfall.verification.ok
        detail = pitfall.verification.detail
        found = re.search(r"differs at z = \(([^)]*)\), y = \(([^)]*)\)", detail)
        assert found, detail
        z = [float(Fraction(v)) for v in found.group(1).split(", ")]
        y = [float(Fraction(v)) for v in found.group(2).split(", ")]
        softmax = np.exp(z - np.max(z)) / np.exp(z - np.max(z)).sum()
        sigma = 1 / (1 + math.exp(-z[0]))
        # this test's own arithmetic: the two really differ there
        assert abs((softmax[0] - y[0]) - (sigma - y[0])) > 1e-6
        assert "involves z_j alone" in detail


def test_the_softmax_gradient_carried_over_fails_at_the_logits_of_at():
    # Like the seed's Case 1: the counterexample was a random point beside the one given.
    z = np.array([1.0, 0.0, -1.0])
    detail = derive_bce(3, at=tuple(z)).pitfall.verification.detail
    sigma, softmax = 1 / (1 + math.exp(-z[0])), np.exp(z[0]) / np.exp(z).sum()
    assert f"at z = (1, 0, -1), σ(z1) = {sigma:.6g} but softmax(z)_1 = e^(z1)/S = {softmax:.6g}" \
        in detail, detail
    # with two classes softmax(z)_1 = σ(z1 − z2), which is σ(z1) where z2 = 0: no counterexample
    # there, so a point where they differ is shown instead
    detail = derive_bce(2, at=(1.0, 0.0)).pitfall.verification.detail
    assert "differs at z" in detail and "at z = (1, 0)" not in detail


def test_contrast_rows_are_checked_and_in_json(runner):
    result = runner.invoke(app, ["derive", "--loss", "bce", "--k", "3", "--hessian", "--format", "json"])
    assert result.exit_code == 0, result.output
    contrast = json.loads(result.stdout)["contrast"]
    assert [row["topic"] for row in contrast] == ["coupling", "Hessian", "targets", "probabilities"]
    assert all(row["verified"] for row in contrast)
    assert "off-diagonal entries 0" in contrast[1]["bce"]


def test_a_coupled_gradient_fails_the_contrast():
    derivation = derive_bce(3)
    assert all(row.ok for row in derivation.contrast)
    s = BinarySymbols(3)
    entries = list(derivation.gradient)
    first = entries[0]
    # Inject coupling, as softmax has it: entry 1 also involves z2.
    entries[0] = type(first)(first.index, first.direct + sp.exp(s.z[1]), first.closed,
                             first.verification)
    rows = derivation_bce._contrast(s, derivation.steps, entries, None)
    assert not rows[0].ok and not rows[1].ok


def test_a_wrong_sigmoid_fails_the_derivation(monkeypatch):
    # σ(z) = 1/(1 + e^{z}) instead: log(1 − σ) = −z + log σ no longer holds, nor does σ − y.
    monkeypatch.setattr(derivation_bce, "sigmoid", lambda z: 1 / (1 + sp.exp(z)))
    for k in (2, FULL_CHECK_K + 1):
        derivation = derive_bce(k)
        assert not derivation.verified
        assert not all(e.verification.ok for e in derivation.gradient)


def test_wrong_closed_forms_fail_the_check():
    s = BinarySymbols(3)
    z1, y1, p1 = s.z[0], s.y[0], s.p[0]
    term = s.value(-(y1 * sp.log(p1) + (1 - y1) * sp.log(1 - p1)))
    direct = sp.diff(term, z1)
    assert verify(s, direct, s.value(p1 - y1)).method == "identity"
    for wrong in (p1 - y1 + 1, p1 * (1 - p1) - y1, y1 - p1, sp.exp(z1) / s.S - y1):
        verification = verify(s, direct, s.in_z(s.value(wrong)))
        assert not verification.ok and "differs at z" in verification.detail


@settings(max_examples=15, deadline=None)
@given(st.fractions(-5, 5, max_denominator=1000).filter(lambda c: c != 0),
       st.fractions(-3, 3, max_denominator=1000).filter(lambda a: a != 1))
def test_the_verifier_refuses_every_perturbed_gradient(shift, scale):
    # (a gap below 1e-30, the random points' tolerance at 40 digits, would pass: by design)
    s = BinarySymbols(2)
    z1, y1, p1 = s.z[0], s.y[0], s.p[0]
    direct = sp.diff(s.value(-(y1 * sp.log(p1) + (1 - y1) * sp.log(1 - p1))), z1)
    shift, scale = sp.Rational(shift.numerator, shift.denominator), sp.Rational(scale.numerator,
                                                                               scale.denominator)
    for wrong in (p1 - y1 + shift, scale * p1 - y1):
        assert not verify(s, direct, s.value(wrong)).ok, wrong


_DERIVATIONS = {}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(-30, 30), st.floats(0, 1)), min_size=4, max_size=4))
def test_direct_derivatives_are_numpys_gradient(pairs):
    if 4 not in _DERIVATIONS:
        _DERIVATIONS[4] = derive_bce(4)
    derivation = _DERIVATIONS[4]
    z = [a for a, _ in pairs]
    y = [b for _, b in pairs]
    numpy_grad = bce.elements_and_gradient(np.array([z]), np.array([y]))[1][0]
    direct = [evaluate(entry.direct, 4, z, y) for entry in derivation.gradient]
    closed = [evaluate(entry.closed, 4, z, y) for entry in derivation.gradient]
    assert np.allclose(direct, numpy_grad, rtol=1e-12, atol=1e-15)
    assert np.allclose(closed, numpy_grad, rtol=1e-12, atol=1e-15)


def test_at_evaluates_steps_and_the_hessian(runner):
    result = runner.invoke(app, ["derive", "--loss", "bce", "--k", "3", "--at", "1,0,-1",
                                 "--hessian", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["at"] == [1.0, 0.0, -1.0]
    cancel = next(s for s in data["steps"] if s["rule"] == "cancel")
    y1 = sp.Symbol("y1")
    for target in (0.0, 0.3, 1.0):  # y stays a symbol: the value is σ(1) − y1
        value = float(sp.sympify(cancel["at"]).subs(y1, target))
        assert value == pytest.approx(1 / (1 + math.exp(-1)) - target, abs=1e-6)
    loss = next(s for s in data["steps"] if s["rule"] == "softplus")
    y = sp.symbols("y1:4")
    targets = [1.0, 0.0, 0.5]
    assert float(sp.sympify(loss["at"]).subs(dict(zip(y, targets)))) == pytest.approx(
        naive_bce([1.0, 0.0, -1.0], targets), rel=1e-5)


def test_at_with_targets_gives_numbers(runner):
    z, y = [1.5, -0.5, 0.0], [1.0, 0.25, 0.0]
    result = runner.invoke(app, ["derive", "--loss", "bce", "--k", "3", "--at", "1.5,-0.5,0",
                                 "--y", "1,0.25,0", "--hessian", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["at_targets"] == y
    for step in data["steps"]:
        if step["case"] == "loss":
            assert float(step["at"]) == pytest.approx(naive_bce(z, y), rel=1e-5)
    derivation = derive_bce(3, hessian=True, at=tuple(z), at_targets=tuple(y))
    assert [e.at for e in derivation.gradient] == pytest.approx(finite_difference_gradient(z, y),
                                                                abs=1e-7)
    sigma = 1 / (1 + np.exp(-np.array(z)))
    assert [derivation.hessian[n][n].at for n in range(3)] == pytest.approx(sigma * (1 - sigma))
    # the JSON carries them too; without --y, y stays a symbol and the entries have no number
    assert data["gradient_at"] == pytest.approx(sigma - np.array(y), rel=1e-12)
    assert np.diag(data["hessian_at"]) == pytest.approx(sigma * (1 - sigma), rel=1e-12)
    without_y = runner.invoke(app, ["derive", "--loss", "bce", "--k", "3", "--at", "1.5,-0.5,0",
                                    "--format", "json"])
    assert json.loads(without_y.stdout)["gradient_at"] == [None, None, None]


@pytest.mark.parametrize("argv", [
    ["--k", "2", "--y", "1,0"], ["--k", "2", "--at", "0,0", "--y", "1"],
    ["--k", "2", "--at", "0,0", "--y", "1,1.5"], ["--k", "2", "--at", "0,0", "--y", "1,nan"],
    ["--k", "2", "--at", "0,0", "--y", "1,x"],
])
def test_bad_targets_are_one_line_and_exit_2(argv, runner):
    result = runner.invoke(app, ["derive", "--loss", "bce", *argv])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    softmax = runner.invoke(app, ["derive", "--k", "2", "--at", "0,0", "--y", "1,0"])
    assert softmax.exit_code == 2 and "--loss bce only" in softmax.stderr


@pytest.mark.parametrize("argv", [
    ["--k", "0"], ["--k", "501"], ["--k", "61", "--hessian"], ["--k", "3", "--label", "2"],
    ["--k", "3", "--soft"], ["--k", "3", "--claim", "p_j - y_j"], ["--k", "3", "--at", "1,2"],
    ["--k", "3", "--at", "1,x,2"], ["--k", "3", "--at", "1,inf,2"], ["--loss", "mse"],
    ["--k", "2", "--at", "0,-1e6"],
])
def test_bad_input_is_one_line_and_exit_2(argv, runner):
    result = runner.invoke(app, ["derive", "--loss", "bce", *argv] if argv[0] != "--loss"
                           else ["derive", *argv])
    assert result.exit_code == 2, result.output
    if argv[0] != "--loss":  # Click's own usage errors take several lines
        assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr


def test_logits_too_large_to_evaluate_exactly_are_refused_at_once(runner):
    # 1 − σ(z) needs about |z| / ln 10 exact digits: at z = 1e6 evalf ran for minutes
    result = runner.invoke(app, ["derive", "--loss", "bce", "--k", "2", "--at", "3,1e6"])
    assert result.exit_code == 2, result.output
    assert "z2 = 1e+06 is beyond ±10000" in result.stderr


def test_exit_1_when_a_step_fails(monkeypatch, runner):
    monkeypatch.setattr(derivation_bce, "sigmoid", lambda z: 1 / (1 + sp.exp(z)))
    result = runner.invoke(app, ["derive", "--loss", "bce", "--k", "2"])
    assert result.exit_code == 1, result.output
    assert "SOME STEPS FAILED" in result.stdout


def test_softmax_json_says_its_loss(runner):
    result = runner.invoke(app, ["derive", "--k", "2", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["loss"] == "ce" and "contrast" not in data


def test_latex_names_the_pitfall_and_the_contrast(runner):
    result = runner.invoke(app, ["derive", "--loss", "bce", "--k", "2", "--format", "latex"])
    assert result.exit_code == 0, result.output
    assert "softmax carried over: FAILED" in result.stdout and "% coupling:" in result.stdout


def test_golden_k3(runner, golden):
    for fmt, name in (("markdown", "derive_bce_k3.md"), ("rich", "derive_bce_k3.txt")):
        result = runner.invoke(app, ["derive", "--loss", "bce", "--k", "3", "--format", fmt])
        assert result.exit_code == 0, result.output
        golden(name, result.stdout)


def test_large_k_prints_a_summary(runner):
    result = runner.invoke(app, ["derive", "--loss", "bce", "--k", "40"])
    assert result.exit_code == 0, result.output
    assert "40 of 40 entries verified" in result.stdout and "…" in result.stdout


@pytest.mark.parametrize("z, y", [(80.0, 0.0), (800.0, 0.5), (-800.0, 1.0), (75.5, 0.25)])
def test_large_logits_at_a_point_show_the_true_loss(runner, z, y):
    # 1 − σ(z) underflows at any fixed precision for large z: the point must be exact
    result = runner.invoke(app, ["derive", "--loss", "bce", "--k", "1", "--at", str(z), "--y", str(y),
                                 "--hessian", "--format", "json"])
    assert result.exit_code == 0, result.output
    steps = json.loads(result.stdout)["steps"]
    expected = float(bce.binary_cross_entropy([[z]], [[y]], reduction="sum").loss)
    loss_steps = [step for step in steps if step["case"] == "loss"]
    assert loss_steps and all(float(step["at"]) == pytest.approx(expected, rel=1e-6) for step in loss_steps)
