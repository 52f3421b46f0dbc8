"""`xent check` names the typical mistake behind a wrong gradient, only when it explains every entry.

Each mistake is written here as a learner would write it, in a gradient file of their own; the
diagnosis must name it with its parameter. Gradients wrong in other ways must be named nothing.
The property test holds every diagnosis against formulas written out again in this file.
"""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xent_cli import gradcheck
from xent_cli.cli import app

# The learner's file: p the row softmax, y1 the one-hot labels, k the classes; BODY returns.
HEADER = ("import numpy as np\n\n\ndef grad(z, y):\n"
          "    k = z.shape[1]\n"
          "    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)\n"
          "    y1 = np.eye(k)[y]\n")


def user_grad(tmp_path, body: str) -> str:
    code = tmp_path / "mine.py"
    code.write_text(HEADER + "".join(f"    {line}\n" for line in body.splitlines()))
    return f"{code}:grad"


def check(runner, spec, *argv):
    """Returns the rich result and the JSON report of one check (random inputs N=8, k=4, seed 0)."""
    result = runner.invoke(app, ["check", "--grad-fn", spec, *argv])
    report = json.loads(runner.invoke(app, ["check", "--grad-fn", spec, *argv,
                                            "--format", "json"]).stdout)
    return result, report


def words(text: str) -> str:
    return " ".join(text.split())


MISTAKES = [
    # body, options given to xent, mistake, parameter, what the report says
    ("return p - (0.9 * y1 + 0.1 / k)", [], "label_smoothing", 0.1,
     "with ε = 0.1: your gradient smooths the targets and xent was not told: give "
     "--label-smoothing 0.1"),
    ("return p - y1", ["--label-smoothing", "0.2"], "label_smoothing", 0.0,
     "Every analytic entry is p − y, unsmoothed: your gradient does not smooth the targets, and "
     "xent was given --label-smoothing 0.2"),
    ("return p - (0.95 * y1 + 0.05 / k)", ["--label-smoothing", "0.1"], "label_smoothing", 0.05,
     "with ε = 0.05: xent was given --label-smoothing 0.1, another ε."),
    # the convention that gives the label 1 − ε and each other class ε/(k − 1): PyTorch's ε·k/(k − 1)
    ("return p - (0.9 * y1 + 0.1 / (k - 1) * (1 - y1))", ["--label-smoothing", "0.1"],
     "label_smoothing", 0.1 * 4 / 3, "xent was given --label-smoothing 0.1, and the gradient "
                                     "spreads that ε over the k − 1 other classes (ε/(k − 1) "
                                     "each, the label keeping 1 − ε), which is PyTorch's ε = "
                                     "0.133333"),
    ("return p - np.eye(k)[y - 1]", [], "shifted_labels", -1,
     "p − onehot(y − 1): the one-hot sits one class below each label"),
    ("return p - np.eye(k)[(y + 1) % k]", [], "shifted_labels", 1,
     "p − onehot(y + 1): the one-hot sits one class above each label"),
    ("return p - np.eye(k)[1 - y]", ["--k", "2"], "shifted_labels", -1,
     "p − onehot(1 − y): the one-hot marks the other class: the labels are swapped."),
    ("w = np.array([0.5, 2.0, 1.0, 3.0])\nreturn w[y][:, None] * (p - y1)", [], "class_weights",
     [0.5, 2.0, 1.0, 3.0], "w = (0.5, 2, 1, 3): your gradient weighs each sample by its class's "
                           "weight and xent was not told: give --weight 0.5,2,1,3"),
    ("return p - y1", ["--weight", "0.5,2,1,3"], "class_weights", [1.0, 1.0, 1.0, 1.0],
     "the unweighted gradient: your gradient leaves out the class weights xent was given "
     "(--weight 0.5,2,1,3)"),
    ("w = np.array([0.5, 2.0, 1.0, 3.0])\nreturn w[y][:, None] * (p - y1)",
     ["--weight", "1,1,2,1"], "class_weights", [0.5, 2.0, 1.0, 3.0],
     "w = (0.5, 2, 1, 3): xent was given --weight 1,1,2,1: the gradient's weights are others."),
    # the seed post's Case 1: the normaliser's dependence on z_j, j ≠ ℓ, left out
    ("g = np.zeros_like(p)\nrows = np.arange(len(y))\ng[rows, y] = p[rows, y] - 1\nreturn g", [],
     "label_only", None, "Every analytic entry is p − y at the label, 0 off it: the normaliser "
                         "log Σ exp(z) depends on every logit, so ∂CE/∂z_j = p_j for j ≠ ℓ"),
    ("return p", [], "target_missing", None, "Every analytic entry is p: the target is never "
                                             "subtracted"),
    ("return -y1", [], "softmax_missing", None, "Every analytic entry is −y: the softmax term is "
                                                "missing"),
    ("return -y1 / p", [], "by_probabilities", None,
     "Every analytic entry is −y/p: that is ∂loss/∂p, the derivative by the probabilities"),
    ("return np.exp(z) / np.exp(z).sum(axis=0) - y1", [], "softmax_axis", None,
     "softmax(z, axis=0) − y: the softmax runs down each class's column"),
    ("return 1 / (1 + np.exp(-z)) - y1", [], "sigmoid", None,
     "σ(z) − y: a sigmoid stands in for the softmax"),
    ("return np.exp(z) - y1", [], "normaliser_missing", None,
     "exp(z) − y: the softmax lacks its normaliser"),
]


@pytest.mark.parametrize("body, options, mistake, parameter, says", MISTAKES,
                         ids=[f"{m[2]}-{i}" for i, m in enumerate(MISTAKES)])
def test_each_typical_mistake_is_named_with_its_parameter(runner, tmp_path, body, options,
                                                          mistake, parameter, says):
    result, report = check(runner, user_grad(tmp_path, body), *options)
    assert result.exit_code == 1, result.output
    assert says in words(result.stdout), result.stdout
    diagnosis = report["diagnosis"]
    assert diagnosis["mistake"] == mistake and diagnosis["divisor"] is None
    assert diagnosis["parameter"] == (None if parameter is None else pytest.approx(parameter))
    assert words(diagnosis["note"]) in words(result.stdout)
    assert report["scale"] is None


def test_a_mistake_inside_backward_of_a_mean_names_both(runner, tmp_path):
    spec = user_grad(tmp_path, "return (p - (0.9 * y1 + 0.1 / k)) / len(z)")
    result, report = check(runner, spec)
    assert result.exit_code == 1, result.output
    text = words(result.stdout)
    assert "Every analytic entry is (p − ((1 − ε)·y + ε/k)) / 8 with ε = 0.1" in text, text
    assert "The / 8 is backward() of a reduction='mean' loss" in text, text
    assert report["diagnosis"]["divisor"] == 8
    assert report["diagnosis"]["parameter"] == pytest.approx(0.1)


def test_the_weighted_mean_divides_by_the_labels_weights(runner, tmp_path):
    # PyTorch's weighted 'mean' divides by Σ_i w_{y_i}, here 3+0.5+1+1+3+1+2+2 = 13.5
    spec = user_grad(tmp_path, "w = np.array([0.5, 2.0, 1.0, 3.0])\n"
                               "return w[y][:, None] * p / w[y].sum()")
    result, report = check(runner, spec, "--weight", "0.5,2,1,3")
    assert result.exit_code == 1, result.output
    assert report["diagnosis"]["mistake"] == "target_missing"
    assert report["diagnosis"]["divisor"] == pytest.approx(13.5)
    assert "p / 13.5 (times each sample's weight)" in words(result.stdout), result.stdout


def test_a_class_no_sample_weighs_is_left_open(runner, tmp_path):
    rng = np.random.default_rng(0)  # random inputs: 2·N(0,1) logits, then uniform labels
    rng.standard_normal((6, 4))
    assert list(rng.integers(0, 4, size=6)) == [1, 2, 3, 1, 1, 3]  # class 0: no sample
    spec = user_grad(tmp_path, "w = np.array([0.5, 2.0, 1.0, 3.0])\n"
                               "return w[y][:, None] * (p - y1)")
    result, report = check(runner, spec, "--random", "6")
    assert result.exit_code == 1, result.output
    weights = report["diagnosis"]["parameter"]
    assert weights[0] is None and weights[1:] == pytest.approx([2.0, 1.0, 3.0])
    assert "give --weight ?,2,1,3 (no sample shows the weight of class 0)" in \
        words(result.stdout), result.stdout


@pytest.mark.parametrize("body", [
    "return (p - y1) / -np.log((p * y1).sum(axis=1, keepdims=True))",  # the gradient of log(loss)
    "return (p - y1) * np.arange(1, len(y) + 1)[:, None]",  # a factor of each sample's own
])
def test_each_sample_s_own_factor_is_not_named_class_weights(runner, tmp_path, body):
    # --random 3 --k 4 draws labels 1, 3, 2: one sample a class, so a weight per class fits any
    # factor per sample, and which of the two the gradient has cannot be told
    rng = np.random.default_rng(0)
    rng.standard_normal((3, 4))
    assert list(rng.integers(0, 4, size=3)) == [1, 3, 2]
    result, report = check(runner, user_grad(tmp_path, body), "--random", "3")
    assert result.exit_code == 1, result.output
    assert report["diagnosis"] is None, report["diagnosis"]


@pytest.mark.parametrize("body", [
    "return p - np.eye(k)[p.argmax(axis=1)]",  # the predicted class for the label
    "return p - np.eye(k)[k - 1 - y]",  # the labels reversed
])
def test_a_wrong_label_in_one_sample_is_not_named_a_shift(runner, tmp_path, body):
    # with k = 3 either other class is one off the label, so one labelled class cannot tell a
    # 1-based reading, which a shift names, from any other wrong one-hot
    result, report = check(runner, user_grad(tmp_path, body), "--random", "1", "--k", "3")
    assert result.exit_code == 1, result.output
    assert report["diagnosis"] is None, report["diagnosis"]


def test_one_sample_s_column_softmax_is_not_named(runner, tmp_path):
    # down a column of one sample the softmax is 1 everywhere: 1 − y is no sign of its axis
    result, report = check(runner, user_grad(tmp_path, "return 1.0 - y1"), "--random", "1")
    assert result.exit_code == 1, result.output
    assert report["diagnosis"] is None, report["diagnosis"]
    many = check(runner, user_grad(tmp_path, "return np.exp(z) / np.exp(z).sum(axis=0) - y1"),
                 "--random", "2")[1]
    assert many["diagnosis"]["mistake"] == "softmax_axis"  # two samples: the axis shows


@pytest.mark.parametrize("argv, off_label", [
    # by hand: ∂/∂z_j of −Σ_c w_c·y_c·log p_c is S·p_j − w_j·y_j, S = Σ_c w_c·y_c; off the label
    # y_j is ε/k when smoothed, else 0, where S = w_ℓ
    (["--label-smoothing", "0.1"], "∂CE/∂z_j = p_j − y_j for j ≠ ℓ"),
    (["--weight", "0.5,2,1,3"], "∂CE/∂z_j = w_ℓ·p_j for j ≠ ℓ"),
    (["--weight", "0.5,2,1,3", "--label-smoothing", "0.1"],
     "∂CE/∂z_j = S·p_j − w_j·y_j (S = Σ_c w_c·y_c) for j ≠ ℓ"),
])
def test_the_seed_s_case_1_is_told_the_right_off_label_entry_under_options(runner, tmp_path, argv,
                                                                          off_label):
    body = ("eps = 0.1 if '0.1' in " + repr(" ".join(argv)) + " else 0.0\n"
            "w = np.array([0.5, 2.0, 1.0, 3.0]) if 'weight' in " + repr(" ".join(argv)) +
            " else np.ones(k)\n"
            "t = (1 - eps) * y1 + eps / k\ns = (w * t).sum(axis=1)\n"
            "g = np.zeros_like(p)\nrows = np.arange(len(y))\n"
            "g[rows, y] = s * p[rows, y] - w[y] * t[rows, y]\nreturn g")
    result, report = check(runner, user_grad(tmp_path, body), *argv)
    assert result.exit_code == 1, result.output
    assert report["diagnosis"]["mistake"] == "label_only"
    assert off_label in words(result.stdout), result.stdout


@pytest.mark.parametrize("body, formula", [
    ("return -(w * t)", "−y"),  # the weight of each class's part, not one of each sample's
    ("return -(w * t) / p", "−y/p"),
])
def test_weighted_smoothed_targets_are_not_said_to_carry_each_sample_s_weight(runner, tmp_path,
                                                                              body, formula):
    # with smoothing every class has a part in y, each weighed by its own class's weight
    spec = user_grad(tmp_path, "w = np.array([0.5, 2.0, 1.0, 3.0])\n"
                               "t = 0.9 * y1 + 0.1 / k\n" + body)
    result, report = check(runner, spec, "--weight", "0.5,2,1,3", "--label-smoothing", "0.1")
    assert result.exit_code == 1, result.output
    assert report["diagnosis"] is not None
    text = words(result.stdout)
    assert "each sample's weight" not in text
    assert (f"Every analytic entry is {formula} (weighted as PyTorch's weight= does: y_c as "
            f"w_c·y_c, p as S·p with S = Σ_c w_c·y_c)") in text, text


def test_weighted_soft_targets_are_not_said_to_carry_each_sample_s_weight(runner, tmp_path):
    rng = np.random.default_rng(5)
    np.savetxt(tmp_path / "z.csv", rng.standard_normal((6, 3)), delimiter=",", header="a,b,c",
               comments="")
    np.savetxt(tmp_path / "t.csv", rng.dirichlet(np.ones(3), size=6), delimiter=",",
               header="a,b,c", comments="")
    (tmp_path / "soft.py").write_text("import numpy as np\n\n\ndef grad(z, y):\n"
                                      "    return -np.array([0.5, 2.0, 1.0]) * y\n")
    result = runner.invoke(app, ["check", str(tmp_path / "z.csv"), "--targets",
                                 str(tmp_path / "t.csv"), "--weight", "0.5,2,1",
                                 "--grad-fn", f"{tmp_path / 'soft.py'}:grad"])
    assert result.exit_code == 1, result.output
    assert ("Every analytic entry is −y (weighted as PyTorch's weight= does: y_c as w_c·y_c"
            in words(result.stdout)), result.stdout


def test_soft_targets_are_diagnosed_too(runner, tmp_path):
    targets = tmp_path / "targets.csv"
    logits = tmp_path / "logits.csv"
    rng = np.random.default_rng(5)
    np.savetxt(logits, rng.standard_normal((6, 3)), delimiter=",", header="a,b,c", comments="")
    np.savetxt(targets, rng.dirichlet(np.ones(3), size=6), delimiter=",", header="a,b,c",
               comments="")
    code = tmp_path / "soft.py"
    code.write_text("import numpy as np\n\n\ndef grad(z, y):\n"
                    "    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)\n"
                    "    return p - (0.7 * y + 0.3 / 3)\n")
    result = runner.invoke(app, ["check", str(logits), "--targets", str(targets),
                                 "--grad-fn", f"{code}:grad", "--format", "json"])
    assert result.exit_code == 1, result.output
    diagnosis = json.loads(result.stdout)["diagnosis"]
    assert diagnosis["mistake"] == "label_smoothing"
    assert diagnosis["parameter"] == pytest.approx(0.3)


def test_ignored_samples_keep_a_zero_row_in_every_mistake():
    # a sample labelled ignore_index adds nothing: its row is 0 in the right gradient and in the
    # mistake's, so a learner who zeroes it and smooths the rest is still named
    z = 2.0 * np.random.default_rng(3).standard_normal((6, 3))
    labels = np.array([0, 2, -100, 1, 1, 0])
    counted = labels >= 0
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    y1 = np.where(counted[:, None], np.eye(3)[np.where(counted, labels, 0)], 0.0)
    analytic = np.where(counted[:, None], p - (0.8 * y1 + 0.2 / 3), 0.0)
    problem = gradcheck.problem(z, labels)
    diagnosis = gradcheck.diagnose(problem, analytic, gradcheck.tolerance("central"))
    assert diagnosis.mistake == "label_smoothing" and diagnosis.parameter == pytest.approx(0.2)
    analytic[2] = p[2] - 0.2 / 3  # the ignored row smoothed too: not the mistake, nor any other
    assert gradcheck.diagnose(problem, analytic, gradcheck.tolerance("central")) is None


def test_an_expression_is_diagnosed_as_a_gradient_file_is(runner):
    result = runner.invoke(app, ["check", "--expr", "exp(z) - y"])
    assert result.exit_code == 1, result.output
    assert "the softmax lacks its normaliser" in words(result.stdout)


@pytest.mark.parametrize("body, options", [
    ("return p - y1", []),
    ("return p - (0.9 * y1 + 0.1 / k)", ["--label-smoothing", "0.1"]),
    ("w = np.array([0.5, 2.0, 1.0, 3.0])\nreturn w[y][:, None] * (p - y1)",
     ["--weight", "0.5,2,1,3"]),
])
def test_a_right_gradient_names_nothing(runner, tmp_path, body, options):
    result, report = check(runner, user_grad(tmp_path, body), *options)
    assert result.exit_code == 0, result.output
    assert report["diagnosis"] is None and "Every analytic entry" not in result.stdout


@pytest.mark.parametrize("body", [
    "return p - y1 + 1e-3 * np.sin(7.3 * np.arange(z.size)).reshape(z.shape)",  # noise
    "g = p - y1\ng[0, 0] += 0.1\nreturn g",  # one entry off
    "g = p - (0.9 * y1 + 0.1 / k)\ng[5, 2] *= 1.01\nreturn g",  # a mistake, and one entry more
    "return p - y1 * p",  # a mistake of no rule: (1 - y)·p
    # zero off the label, and the label's entry wrong too: not the normaliser left out alone
    "g = np.zeros_like(p)\nrows = np.arange(len(y))\ng[rows, y] = p[rows, y] - 0.9\nreturn g",
])
def test_a_gradient_wrong_in_another_way_names_nothing(runner, tmp_path, body):
    result, report = check(runner, user_grad(tmp_path, body))
    assert result.exit_code == 1, result.output
    assert report["diagnosis"] is None and "Every analytic entry is" not in result.stdout


def test_a_constant_factor_stays_the_scale_note(runner, tmp_path):
    # the right gradient divided by N is the scale note's case, not a mistake of the list
    result, report = check(runner, user_grad(tmp_path, "return (p - y1) / len(z)"))
    assert result.exit_code == 1, result.output
    assert report["scale"] == pytest.approx(1 / 8) and report["diagnosis"] is None
    assert "1/8 of the numeric one (1/N for N = 8 samples)" in words(result.stdout)


# --- the property: a diagnosis is never a cause the gradient does not have ---------------------

def softmax_rows(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def smoothed(labels, k, eps):
    return (1 - eps) * np.eye(k)[labels] + eps / k


def oracle(name, parameter, z, labels, eps0, w0):
    """Returns the gradient of a named mistake, written out again from its description.

    PyTorch's loss with class weights w0 and smoothing eps0 is −Σ_c a_c log p_c with
    a = w0·((1 − eps0)·onehot + eps0/k); its gradient is S·p − a, S = Σ_c a_c.
    """
    n, k = z.shape
    p = softmax_rows(z)
    a = w0 * smoothed(labels, k, eps0)
    total = a.sum(axis=1, keepdims=True)

    def gradient(a):
        return a.sum(axis=1, keepdims=True) * p - a

    if name == "label_smoothing":
        return gradient(w0 * smoothed(labels, k, parameter))
    if name == "shifted_labels":
        return gradient(w0 * smoothed((labels + parameter) % k, k, eps0))
    if name == "class_weights":
        return gradient(np.array([0.0 if v is None else v for v in parameter])
                        * smoothed(labels, k, eps0))
    if name == "target_missing":
        return total * p
    if name == "softmax_missing":
        return -a
    if name == "by_probabilities":
        return -a / p
    if name == "softmax_axis":
        return total * softmax_rows(z.T).T - a
    if name == "sigmoid":
        return total / (1 + np.exp(-z)) - a
    if name == "normaliser_missing":
        return total * np.exp(z) - a
    if name == "right":
        return gradient(a)
    raise AssertionError(name)


KINDS = ["label_smoothing", "shifted_labels", "class_weights", "target_missing",
         "softmax_missing", "by_probabilities", "softmax_axis", "sigmoid", "normaliser_missing"]


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 6), k=st.integers(2, 5), seed=st.integers(0, 2**32 - 1),
       eps0=st.sampled_from([0.0, 0.1]), weighted=st.booleans(), kind=st.sampled_from(KINDS),
       spoil=st.sampled_from([None, "noise", "one entry", "right plus noise"]),
       mean=st.booleans())
def test_a_diagnosis_is_never_a_cause_the_gradient_does_not_have(n, k, seed, eps0, weighted,
                                                                 kind, spoil, mean):
    rng = np.random.default_rng(seed)
    z = 2.0 * rng.standard_normal((n, k))
    labels = rng.integers(0, k, size=n)
    w0 = rng.choice([0.5, 1.0, 2.0, 3.0], size=k) if weighted else np.ones(k)
    parameter = {"label_smoothing": float(rng.choice([0.05, 0.2, 0.5])),
                 "shifted_labels": int(rng.choice([-1, 1])) if k > 2 else -1,
                 "class_weights": tuple(float(w) for w in rng.choice([0.5, 2.0, 3.0], size=k)),
                 }.get(kind)
    analytic = oracle("right" if spoil == "right plus noise" else kind, parameter, z, labels,
                      eps0, w0)
    if spoil in ("noise", "right plus noise"):
        analytic = analytic + 1e-2 * (1 + np.abs(analytic)) * rng.standard_normal((n, k))
    elif spoil == "one entry":
        analytic = analytic.copy()
        i, c = rng.integers(n), rng.integers(k)
        analytic[i, c] += 0.1 * (1 + abs(analytic[i, c]))  # beyond the tolerance at its size
    if mean:  # backward() of PyTorch's 'mean': divided by the labels' weights summed
        analytic = analytic / w0[labels].sum()
    problem = gradcheck.problem(z, labels, label_smoothing=eps0,
                                weight=w0 if weighted else None)
    tol = gradcheck.tolerance("central")
    diagnosis = gradcheck.diagnose(problem, analytic, tol)

    if diagnosis is not None:  # whatever it names, the gradient has: every entry fits
        explained = oracle(diagnosis.mistake, diagnosis.parameter, z, labels, eps0, w0)
        scaled = analytic * (diagnosis.divisor or 1)
        assert np.all(np.abs(scaled - explained) <= tol.atol + tol.rtol * np.abs(explained))
        right = oracle("right", None, z, labels, eps0, w0)
        assert not np.allclose(explained, right, rtol=tol.rtol, atol=tol.atol)
    if spoil is not None:
        assert diagnosis is None, diagnosis
    elif kind == "class_weights" and n * (k - 1) <= k or kind == "label_smoothing" and \
            n * (k - 1) <= 1:
        pass  # too few entries to fit the parameter: no diagnosis is no guess
    elif kind == "class_weights" and not eps0 and n <= len(set(labels)):
        pass  # a sample a class: each sample's own factor would fit as well
    elif kind == "shifted_labels" and k > 2 and len(set(labels)) < 2:
        pass  # one labelled class: any wrong class next to it would fit as well
    elif kind == "softmax_axis" and n < 2:
        pass  # down one sample's column the softmax is 1: any gradient 1 − y would fit
    elif kind == "class_weights" and len({parameter[c] / w0[c] for c in (
            range(k) if eps0 else set(labels))}) == 1:
        pass  # weights in proportion to xent's (where the samples show them): the scale note's
    else:
        assert diagnosis is not None and diagnosis.mistake == kind, (kind, diagnosis)


def test_backward_of_a_weighted_mean_is_named_by_its_divisor(runner, tmp_path):
    # PyTorch's weighted 'mean' divides by Σ_i w_{y_i}: labels 3 0 2 2 3 2 1 1 (seed 0) give 13.5
    spec = user_grad(tmp_path, "w = np.array([0.5, 2.0, 1.0, 3.0])\n"
                               "return w[y][:, None] * (p - y1) / w[y].sum()")
    result, report = check(runner, spec, "--weight", "0.5,2,1,3")
    assert result.exit_code == 1, result.output
    assert report["scale"] == pytest.approx(1 / 13.5) and report["diagnosis"] is None
    assert "1/13.5 of the numeric one (1/Σ w_y, the labels' class weights summed)" in \
        words(result.stdout), result.stdout


def test_binary_cross_entropy_gets_no_softmax_diagnosis(runner):
    # the mistakes are the softmax's: σ(z) − y is bce's right gradient, and p there means σ(z)
    result = runner.invoke(app, ["check", "--loss", "bce", "--expr", "p", "--format", "json"])
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["diagnosis"] is None


@pytest.mark.parametrize("k, body, parameter", [
    (120, "return p - np.eye(k)[y]", "onehot"),  # NumPy reads y = -100 as class k - 100
    (4, "return p - np.eye(k)[np.where(y < 0, 0, y)] * (y >= 0)[:, None]", "p"),
])
def test_rows_of_ignored_samples_left_standing_are_named(runner, tmp_path, k, body, parameter):
    rng = np.random.default_rng(2)
    y = rng.integers(0, k, size=6)
    y[[1, 4]] = -100
    np.savez(tmp_path / "z.npz", logits=rng.normal(size=(6, k)), labels=y)
    def spec(code: str) -> str:  # HEADER's one-hot of y would trip over -100 at k = 4
        (tmp_path / "kept.py").write_text(
            "import numpy as np\n\n\ndef grad(z, y):\n    k = z.shape[1]\n"
            "    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)\n"
            + "".join(f"    {line}\n" for line in code.splitlines()))
        return f"{tmp_path / 'kept.py'}:grad"

    result, report = check(runner, spec(body), str(tmp_path / "z.npz"))
    assert result.exit_code == 1, result.output
    assert report["diagnosis"]["mistake"] == "ignored_kept"
    assert report["diagnosis"]["parameter"] == parameter
    assert "set them to 0, as g[y == ignore_index] = 0" in words(result.stdout)
    # the same gradient with those rows set to 0 is right
    fixed = spec(body.replace("return ", "g = ") + "\ng[y == -100] = 0\nreturn g")
    assert check(runner, fixed, str(tmp_path / "z.npz"))[0].exit_code == 0


def test_a_probability_that_underflows_names_nothing_and_warns_nothing(runner, tmp_path, recwarn):
    # p of the label e^-720, a subnormal: −y/p, one of the mistakes tried, overflowed to inf, and
    # NumPy's 'overflow encountered in divide' came on stderr beside the report
    np.save(tmp_path / "z.npy", np.array([[0.0, 720.0, 1.0], [0.5, -1.0, 2.0]]))
    np.save(tmp_path / "y.npy", np.array([0, 2]))
    code = tmp_path / "mine.py"
    code.write_text("import numpy as np\n\n\ndef grad(z, y):\n    return np.full(z.shape, 0.5)\n")
    result = runner.invoke(app, ["check", str(tmp_path / "z.npy"), "--labels",
                                 str(tmp_path / "y.npy"), "--grad-fn", f"{code}:grad",
                                 "--format", "json"])
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["diagnosis"] is None
    assert [str(w.message) for w in recwarn] == []


def test_rows_of_an_ignore_index_that_is_a_class_index_are_told_as_such(runner, tmp_path):
    # --ignore-index 1 to xent, but the gradient takes label 1 as a class: NumPy's reading of
    # -100 as class k − 100 has nothing to do with it
    result, report = check(runner, user_grad(tmp_path, "return p - y1"), "--ignore-index", "1")
    assert result.exit_code == 1, result.output
    assert report["diagnosis"]["mistake"] == "ignored_kept" and report["diagnosis"]["given"] == 1
    shown = words(result.stdout)
    assert ("(label 1 is a class to your gradient; xent was given --ignore-index 1, whose "
            "samples PyTorch skips): set them to 0" in shown), shown
    assert "-100" not in shown


def test_failures_in_one_class_alone_are_told_so(runner, tmp_path):
    # a sign slipped in one column: no typical mistake, but where to look
    result, report = check(runner, user_grad(tmp_path, "g = p - y1\ng[:, 2] *= -1\nreturn g"))
    assert result.exit_code == 1, result.output
    assert report["diagnosis"] is None and {f["class"] for f in report["failures"]} == {2}
    assert ("Every failing entry is in class 2 (8 of 8 samples); the other classes are right: "
            "look at what the code under test does to that class's column."
            in words(result.stdout)), result.stdout
    spread = check(runner, user_grad(tmp_path, "g = p - y1\ng[:, 2] *= -1\ng[0, 1] += 1\n"
                                               "return g"))[0]
    assert "Every failing entry" not in words(spread.stdout)
