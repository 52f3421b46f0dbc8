"""`xent check --loss bce`: the sigmoid binary cross-entropy's gradient and Hessian, verified.

The oracles are written here from the definition: σ(z) = 1 / (1 + e^{-z}), a sample's loss the sum
over its classes of -[y log σ + (1 - y) log(1 - σ)], its gradient σ(z) - y, its Hessian diagonal.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from xent_cli import gradcheck
from xent_cli.cli import app

ROOT = pathlib.Path(__file__).resolve().parent.parent
MY_BCE = str(ROOT / "examples" / "my_bce_grad.py")
MULTILABEL = str(ROOT / "examples" / "multilabel_logits.csv")
MULTILABEL_TARGETS = str(ROOT / "examples" / "multilabel_targets.csv")


def check(runner, *argv):
    return runner.invoke(app, ["check", "--loss", "bce", *argv])


def as_json(result):
    return json.loads(result.stdout)


def random_inputs(n, k, seed=0):
    """Returns the random inputs of 'check --loss bce': 2·N(0, 1) logits, then 0/1 targets."""
    rng = np.random.default_rng(seed)
    z = 2.0 * rng.standard_normal((n, k))
    return z, rng.integers(0, 2, size=(n, k)).astype(float)


def naive_sigmoid(z):
    return 1 / (1 + np.exp(-z))


def write_user_code(tmp_path, body, name="user.py"):
    path = tmp_path / name
    path.write_text("import numpy as np\n\n" + body)
    return str(path)


WEIGHTED = ["--weight", "1,2,0.5,0", "--pos-weight", "3,1,0.25,2"]


# --- xent's own gradient, three methods --------------------------------------------------------

@pytest.mark.parametrize("method", ["central", "complex", "richardson"])
def test_xents_bce_gradient_passes_with_every_method(runner, method):
    result = check(runner, "--method", method, "--no-symbolic", "--format", "json")
    assert result.exit_code == 0, result.output
    report = as_json(result)
    assert report["passed"] and report["loss"] == "bce" and report["entries"] == 32
    assert report["numeric"].endswith("of xent's BCE loss")
    assert report["inputs"] == "random: N=8, k=4, seed 0, multi-hot targets"
    assert report["cross_checks"] == []


def test_three_routes_agree_numeric_analytic_and_derives_symbolic(runner):
    result = check(runner, *WEIGHTED, "--format", "json")
    assert result.exit_code == 0, result.output
    (symbolic,) = as_json(result)["cross_checks"]
    assert symbolic["first"] == "derive's symbolic gradient (verified)" and symbolic["passed"]
    assert symbolic["max_abs_diff"] < 1e-13
    large = as_json(check(runner, "--random", "2000", "--format", "json"))
    assert large["cross_checks"] == []  # above 1000 samples only when asked


def test_the_symbolic_route_holds_at_large_logits_and_sees_a_1e_9_error():
    z = np.array([[-40.0, 40, 700, -700, 1e5, -1e5, 10, -10]])
    t = np.array([[0, 1, 0.3, 0.7, 1, 0, 0.5, 0.5]])
    problem = gradcheck.problem(z, t, loss="bce")
    right = gradcheck.symbolic_agreement(problem, naive_sigmoid(np.clip(z, -700, 700)) - t)
    assert right.passed and right.max_abs_diff < 1e-15
    wrong = problem.grad.copy()
    wrong[0, 6] += 1e-9  # at z = 10 the float64 form of derive's derivative would lose 4 digits
    agreement = gradcheck.symbolic_agreement(problem, wrong)
    assert not agreement.passed
    assert agreement.note.startswith("sample 0, class 6: derive's symbolic gradient gives "
                                     f"{naive_sigmoid(10) - 0.5:.10g}")


def test_the_three_methods_agree_with_each_other_and_with_sigma_minus_y():
    z, t = random_inputs(50, 6, seed=3)
    problem = gradcheck.problem(z, t, loss="bce")
    oracle = naive_sigmoid(z) - t
    loss = gradcheck.loss_function(problem)
    numeric = {method: gradcheck.derivative(loss, z, method, gradcheck.tolerance(method).eps)[0]
               for method in gradcheck.METHODS}
    assert np.abs(numeric["complex"] - oracle).max() < 1e-14
    assert np.abs(numeric["richardson"] - oracle).max() < 1e-9
    assert np.abs(numeric["central"] - oracle).max() < 1e-8
    assert np.abs(numeric["central"] - numeric["richardson"]).max() < 1e-8
    assert np.array_equal(problem.grad, gradcheck.gradient_function(problem)(z))
    assert np.abs(problem.grad - oracle).max() < 1e-15


# --- the user's gradient ------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["central", "complex", "richardson"])
def test_a_correct_user_gradient_passes(runner, method):
    result = check(runner, "--grad-fn", f"{MY_BCE}:grad", "--loss-fn", f"{MY_BCE}:loss",
                   "--method", method, "--format", "json")
    assert result.exit_code == 0, result.output
    report = as_json(result)
    assert report["passed"] and report["failures"] == []
    assert report["cross_checks"][0]["passed"]  # the user's loss equals xent's


def test_one_wrong_entry_fails_and_is_named_with_both_values(runner, tmp_path):
    code = write_user_code(tmp_path, (
        "def grad(z, y):\n"
        "    g = 1 / (1 + np.exp(-z)) - y\n"
        "    g[1, 2] += 1e-3\n"
        "    return g\n"))
    result = check(runner, "--grad-fn", f"{code}:grad", "--method", "complex")
    assert result.exit_code == 1, result.output
    z, t = random_inputs(8, 4)
    right = naive_sigmoid(z[1, 2]) - t[1, 2]
    first = " ".join(result.stdout.split()).split("First failure: ")[1]
    assert first.startswith(f"sample 1, class 2 (target {t[1, 2]:g}): analytic "
                            f"{right + 1e-3:.10g}, numeric {right:.10g}")
    report = as_json(check(runner, "--grad-fn", f"{code}:grad", "--method", "complex",
                           "--format", "json"))
    assert report["failed"] == 1 and report["failed_off_label"] is None
    (failure,) = report["failures"]
    assert (failure["sample"], failure["class"], failure["label"]) == (1, 2, None)
    assert failure["target"] == t[1, 2]
    assert failure["analytic"] == pytest.approx(right + 1e-3, abs=1e-15)
    assert failure["numeric"] == pytest.approx(right, abs=1e-15)


def test_a_softmax_in_place_of_the_sigmoid_fails_on_every_entry(runner):
    result = check(runner, "--grad-fn", f"{MY_BCE}:softmax_grad", "--format", "json")
    assert result.exit_code == 1, result.output
    report = as_json(result)
    z, t = random_inputs(8, 4)
    e = np.exp(z)
    softmax = e / e.sum(axis=1, keepdims=True)
    for failure in report["failures"]:
        i, c = failure["sample"], failure["class"]
        assert failure["analytic"] == pytest.approx(softmax[i, c] - t[i, c], rel=1e-12)
        assert failure["numeric"] == pytest.approx(naive_sigmoid(z[i, c]) - t[i, c], rel=1e-7)
    # σ and softmax differ at every entry of these inputs
    assert report["failed"] == 32
    text = " ".join(check(runner, "--grad-fn", f"{MY_BCE}:softmax_grad").stdout.split())
    assert "its own yes/no question" in text and "sigmoid binary cross-entropy" in text


def test_golden_report_of_a_softmax_gradient(runner, golden):
    result = check(runner, "--grad-fn", f"{MY_BCE}:softmax_grad", "--random", "3", "--k", "3")
    assert result.exit_code == 1, result.output
    golden("check_bce_softmax_grad.txt", result.stdout)


def test_the_users_function_gets_the_n_by_k_targets(runner, tmp_path):
    code = write_user_code(tmp_path, (
        "def grad(z, y):\n"
        "    assert y.shape == z.shape and y.dtype.kind == 'f'\n"
        "    assert set(np.unique(y)) <= {0.0, 1.0}\n"
        "    return 1 / (1 + np.exp(-z)) - y\n"))
    result = check(runner, "--grad-fn", f"{code}:grad", "--random", "5", "--k", "7")
    assert result.exit_code == 0, result.output


# --- weights --------------------------------------------------------------------------------------

def test_weights_and_pos_weight_follow_pytorchs_formula(runner, tmp_path):
    code = write_user_code(tmp_path, (
        "W = np.array([1, 2, 0.5, 0])\n"
        "P = np.array([3, 1, 0.25, 2])\n"
        "def grad(z, y):\n"
        "    s = 1 / (1 + np.exp(-z))\n"
        "    return W * ((1 - y) * s - P * y * (1 - s))\n"))
    for argv in ([], ["--grad-fn", f"{code}:grad"], ["--expr", "p - y"]):
        result = check(runner, *WEIGHTED, "--method", "complex", "--hessian", *argv)
        assert result.exit_code == 0, (argv, result.output)
    # the unweighted σ(z) − y is not the gradient of the weighted loss
    wrong = check(runner, *WEIGHTED, "--grad-fn", f"{MY_BCE}:grad")
    assert wrong.exit_code == 1, wrong.output


def test_xents_weighted_loss_and_gradient_match_torch():
    torch = pytest.importorskip("torch")
    z, t = random_inputs(6, 4, seed=5)
    weight, pos_weight = np.array([1, 2, 0.5, 0]), np.array([3, 1, 0.25, 2])
    problem = gradcheck.problem(z, t, loss="bce", weight=weight, pos_weight=pos_weight)
    logits = torch.tensor(z, requires_grad=True)
    elements = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.tensor(t), weight=torch.tensor(weight), pos_weight=torch.tensor(pos_weight),
        reduction="none")
    elements.sum().backward()
    assert np.allclose(problem.per_sample, elements.sum(dim=1).detach().numpy(), rtol=1e-12)
    assert np.allclose(problem.grad, logits.grad.numpy(), rtol=1e-12, atol=1e-15)
    loss = gradcheck.loss_function(problem)
    assert np.allclose(loss(z), problem.per_sample, rtol=1e-14)


# --- the Hessian ----------------------------------------------------------------------------------

def test_xents_hessian_is_diagonal_sigma_times_one_minus_sigma():
    z, t = random_inputs(5, 4, seed=1)
    weight, pos_weight = np.array([1, 2, 0.5, 1]), np.array([3, 1, 1, 0.5])
    problem = gradcheck.problem(z, t, loss="bce", weight=weight, pos_weight=pos_weight)
    hessian = gradcheck.xent_hessian(problem)
    assert hessian.shape == (5, 4, 4)
    off_diagonal = hessian * (1 - np.eye(4))
    assert not off_diagonal.any()
    s = naive_sigmoid(z)
    # d/dz of w[(1 − t)σ − p_w t (1 − σ)] = w (1 − t + p_w t) σ(1 − σ)
    expected = weight * (1 - t + pos_weight * t) * s * (1 - s)
    assert np.allclose(np.diagonal(hessian, axis1=1, axis2=2), expected, rtol=1e-13)


def test_the_hessian_check_passes_for_the_diagonal_and_fails_for_the_softmax_one(runner, tmp_path):
    right = check(runner, "--hessian", "--format", "json")
    assert right.exit_code == 0, right.output
    assert as_json(right)["hessian"]["entries"] == 8 * 16
    assert as_json(right)["hessian"]["analytic"] == "xent's Hessian diag(S·σ(1 − σ))"
    mine = check(runner, "--grad-fn", f"{MY_BCE}:grad", "--hess-fn", f"{MY_BCE}:hessian",
                 "--method", "complex")
    assert mine.exit_code == 0, mine.output
    code = write_user_code(tmp_path, (
        "def hessian(z, y):\n"
        "    e = np.exp(z - z.max(axis=1, keepdims=True))\n"
        "    p = e / e.sum(axis=1, keepdims=True)\n"
        "    return p[:, :, None] * np.eye(z.shape[1]) - p[:, :, None] * p[:, None, :]\n"))
    wrong = check(runner, "--hess-fn", f"{code}:hessian", "--format", "json")
    assert wrong.exit_code == 1, wrong.output
    report = as_json(wrong)
    assert report["passed"] is False and report["failures"] == []
    failures = report["hessian"]["failures"]
    # the softmax Hessian's off-diagonal −p_c p_d is wrong everywhere: bce's is 0 there
    off = [f for f in failures if f["class"] != f["column"]]
    assert off and all(f["numeric"] == pytest.approx(0, abs=1e-9) for f in off)


# --- the expression language ----------------------------------------------------------------------

@pytest.mark.parametrize("formula, passes", [
    ("p - y", True),
    ("1 / (1 + exp(-z)) - y", True),
    ("p * (1 - y) - (1 - p) * y", True),
    ("exp(z) / sum(exp(z)) - y", False),  # the softmax: couples the classes
    ("p", False),
])
def test_in_an_expression_p_means_the_sigmoid(runner, formula, passes):
    result = check(runner, "--expr", formula, "--method", "complex", "--format", "json")
    assert result.exit_code == (0 if passes else 1), result.output
    assert as_json(result)["analytic"] == f"the expression {formula}"


def test_the_expression_p_fails_exactly_where_the_target_is_1(runner):
    result = check(runner, "--expr", "p", "--method", "complex", "--format", "json")
    assert result.exit_code == 1, result.output
    z, t = random_inputs(8, 4)
    report = as_json(result)
    named = {(f["sample"], f["class"]) for f in report["failures"]}
    assert named == {(int(i), int(c)) for i, c in np.argwhere(t == 1)}
    assert {f["target"] for f in report["failures"]} == {1.0}
    for failure in report["failures"]:
        i, c = failure["sample"], failure["class"]
        assert failure["analytic"] == pytest.approx(naive_sigmoid(z[i, c]), rel=1e-12)
        assert failure["numeric"] == pytest.approx(naive_sigmoid(z[i, c]) - 1, rel=1e-9)
    text = check(runner, "--expr", "p").stdout
    assert "First failure: sample 0, class" in text


# --- files ------------------------------------------------------------------------------------------

def test_a_file_with_targets_is_read_as_eval_reads_it(runner):
    argv = [MULTILABEL, "--targets", MULTILABEL_TARGETS, "--format", "json"]
    result = check(runner, *argv, "--grad-fn", f"{MY_BCE}:grad", "--method", "complex")
    assert result.exit_code == 0, result.output
    report = as_json(result)
    assert report["inputs"] == MULTILABEL and report["entries"] == 24 and report["k"] == 4
    assert check(runner, *argv, "--grad-fn", f"{MY_BCE}:softmax_grad").exit_code == 1


def test_probability_targets_need_not_sum_to_1(runner, tmp_path):
    logits, targets = tmp_path / "z.csv", tmp_path / "t.csv"
    logits.write_text("a,b,c\n1,2,0.5\n-1,0,3\n30,-30,0\n")
    targets.write_text("a,b,c\n0.9,0.8,0.7\n0,0,0\n1,0.5,1\n")
    for argv in ([], ["--grad-fn", f"{MY_BCE}:grad"], ["--expr", "p - y"], ["--hessian"],
                 ["--method", "richardson"], ["--directional"]):
        result = check(runner, str(logits), "--targets", str(targets), *argv)
        assert result.exit_code == 0, (argv, result.output)


def test_large_logits_keep_the_check_exact(runner, tmp_path):
    logits, targets = tmp_path / "z.csv", tmp_path / "t.csv"
    logits.write_text("a,b,c,d\n-40,40,700,-700\n")
    targets.write_text("a,b,c,d\n0,1,0.3,0.7\n")
    for method in ("central", "complex", "richardson"):
        result = check(runner, str(logits), "--targets", str(targets), "--method", method,
                       "--grad-fn", f"{MY_BCE}:grad", "--hessian", "--format", "json")
        assert result.exit_code == 0, (method, result.output)


def test_a_loss_in_pytorchs_form_passes_where_its_terms_cancel_at_large_logits(runner, tmp_path):
    # max(z, 0) − z·t at z = 9,000 and t = 0.999 is 9 after rounding z·t to 1e-12: ε·|f| of a
    # loss of 240 missed that, and Richardson failed 2 of 400 right entries by 1.5e-10
    rng = np.random.default_rng(0)
    z = 3000 * rng.standard_normal((4, 100))
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "t.npy", np.where(z > 0, 0.999, 0.001))
    code = write_user_code(tmp_path, (
        "def loss(z, t):\n"
        "    return (np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))).sum(axis=1)\n"))
    argv = [str(tmp_path / "z.npy"), "--targets", str(tmp_path / "t.npy"), "--method", "richardson"]
    result = check(runner, *argv, "--loss-fn", f"{code}:loss", "--format", "json")
    assert result.exit_code == 0, result.output
    wrong = check(runner, *argv, "--grad-fn", f"{MY_BCE}:softmax_grad")
    assert wrong.exit_code == 1, wrong.output


# --- the rest of check's options ----------------------------------------------------------------------

def test_sweep_and_directional_work_for_bce(runner):
    sweep = as_json(check(runner, "--sweep", "--format", "json"))
    assert sweep["passed"] and len(sweep["sweep"]) == 13 and 1e-8 <= sweep["best_h"] <= 1e-3
    right = check(runner, "--directional", "--random", "5000", "--k", "20", "--format", "json")
    assert right.exit_code == 0, right.output
    wrong = check(runner, "--directional", "--random", "5000", "--k", "20", "--show", "0",
                  "--grad-fn", f"{MY_BCE}:softmax_grad")
    assert wrong.exit_code == 1


def test_float32_implementations_pass_at_float32_defaults(runner, tmp_path):
    code = write_user_code(tmp_path, (
        "def grad(z, y):\n"
        "    z = z.astype(np.float32)\n"
        "    return (1 / (1 + np.exp(-z)) - y).astype(np.float32)\n"))
    for argv in (["--grad-fn", f"{code}:grad"], ["--dtype", "float32"]):
        result = check(runner, *argv, "--format", "json")
        assert result.exit_code == 0, result.output
        assert as_json(result)["precision"] == "float32"


@pytest.mark.parametrize("argv, message", [
    ([MULTILABEL], "--loss bce needs --targets FILE"),
    ([MULTILABEL, "--labels", "labels.csv"], "--labels does not apply to --loss bce"),
    (["--ignore-index", "0"], "--ignore-index does not apply to --loss bce"),
    (["--label-smoothing", "0.1"], "--label-smoothing does not apply to --loss bce"),
    (["--pos-weight", "1,2"], "--pos-weight has 2 entries; the logits have 4 classes"),
    (["--pos-weight", "1,x,1,1"], "Error: --pos-weight entry 1 (class 1): 'x' is not a number\n"),
    (["--pos-weight", "1,1,-2,1"], "--pos-weight entry 2 (class 2): -2 is negative; weights are >= 0"),
    (["--k", "13", "--symbolic"], "the symbolic route needs k <= 12, got 13"),
    (["--grad-fn", f"{MY_BCE}:loss"],
     "my_bce_grad.py:loss returned shape (8,); the gradient must have shape (8, 4)"),
    (["--loss", "mse"], "Invalid value for '--loss'"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_a_check_that_cannot_run_says_why_in_one_line_and_exits_2(runner, argv, message):
    result = check(runner, *argv)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == ""


def test_an_npz_of_logits_and_class_labels_is_refused_for_bce(runner, tmp_path):
    # an .npz may carry its own targets, so --targets is not demanded up front; labels are no
    # target per class
    path = tmp_path / "z.npz"
    np.savez(path, logits=np.zeros((3, 2)), labels=np.array([0, 1, 0]))
    result = check(runner, str(path))
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"Error: {path}: binary cross-entropy needs a target per class: "
                             "give --targets FILE\n")


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_a_loss_that_overflows_is_one_line_without_numpys_warnings(loss):
    # a process of its own: in-process, pytest collects NumPy's RuntimeWarnings off stderr
    done = subprocess.run([sys.executable, "-m", "xent_cli", "check", "--loss", loss,
                           "--weight", "1e308,1e308,1e308,1e308"], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr == "Error: the loss overflows float64; the logits or weights are too large\n"


def test_pos_weight_is_refused_for_the_softmax(runner):
    result = runner.invoke(app, ["check", "--pos-weight", "1,1,1,1"])
    assert result.exit_code == 2 and "--pos-weight applies to --loss bce only" in result.stderr


@pytest.mark.parametrize("logits_text, targets_text, message", [
    ("a,b\n1,2\n3,4\n", "a,b\n0,1\n1,1.5\n", "t.csv, line 3, column 'b': target is outside [0, 1]"),
    ("a,b\n1,2\n3,abc\n", "a,b\n0,1\n1,1\n", "z.csv, line 3, column 'b': logit 'abc' is not a number"),
    ("a,b\n1,2\n3,inf\n", "a,b\n0,1\n1,1\n", "z.csv, line 3, column 'b': logit 'inf' is not a finite number"),
    ("a,b\n1,2\n", "a,b\n0,1\n1,1\n", "t.csv"),
    ("a,b\n1,2\n", "a,b,c\n0,1,1\n", "has 3 target columns, the logits have 2 classes"),
])
def test_bad_files_are_named_at_their_line(runner, tmp_path, logits_text, targets_text, message):
    logits, targets = tmp_path / "z.csv", tmp_path / "t.csv"
    logits.write_text(logits_text)
    targets.write_text(targets_text)
    result = check(runner, str(logits), "--targets", str(targets))
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stdout == ""


def test_help_documents_bce_and_its_examples_run(runner, monkeypatch):
    monkeypatch.chdir(ROOT)
    help_text = runner.invoke(app, ["check", "--help"]).stdout
    assert "--loss" in help_text and "--pos-weight" in help_text
    examples = [line.strip() for line in help_text.split("Binary cross-entropy:")[1]
                .split("\n\n")[0].splitlines() if line.strip()]
    assert len(examples) == 3
    for line in examples:
        line = line.partition(" #")[0]  # the shell comment that says an example exits 1
        argv = [arg.strip('"') for arg in line.replace('"p - y"', "P_MINUS_Y").split()[2:]]
        argv = ["p - y" if arg == "P_MINUS_Y" else arg for arg in argv]
        result = runner.invoke(app, ["check", *argv])
        assert result.exit_code == (1 if "softmax_grad" in line else 0), (line, result.output)


# --- properties -----------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(z=hnp.arrays(np.float64, (3, 4), elements=st.floats(-60, 60)),
       t=hnp.arrays(np.float64, (3, 4), elements=st.floats(0, 1)))
def test_the_complex_step_of_xents_bce_loss_is_its_gradient(z, t):
    problem = gradcheck.problem(z, t, loss="bce")
    numeric, _ = gradcheck.derivative(gradcheck.loss_function(problem), z, "complex", 1e-20)
    # σ(z) − t cancels near σ(z) = t: both sides then carry round-off of the size of eps
    assert np.allclose(numeric, problem.grad, rtol=1e-12, atol=1e-15)
    assert np.allclose(gradcheck.loss_function(problem)(z), problem.per_sample, rtol=1e-13,
                       atol=1e-300)
    hessian, _ = gradcheck.derivative(gradcheck.gradient_function(problem), z, "complex", 1e-20)
    assert np.allclose(hessian, gradcheck.xent_hessian(problem), rtol=1e-12, atol=1e-300)


@settings(max_examples=40, deadline=None)
@given(z=hnp.arrays(np.float64, (3, 4), elements=st.floats(-30, 30)),
       t=hnp.arrays(np.float64, (3, 4), elements=st.floats(0, 1)),
       weight=hnp.arrays(np.float64, 4, elements=st.floats(0, 5)),
       pos_weight=hnp.arrays(np.float64, 4, elements=st.floats(0.01, 5)))
def test_p_minus_y_is_the_weighted_gradient_as_documented(z, t, weight, pos_weight):
    problem = gradcheck.problem(z, t, loss="bce", weight=weight, pos_weight=pos_weight)
    s = naive_sigmoid(z)
    oracle = weight * ((1 - t) * s - pos_weight * t * (1 - s))  # PyTorch's formula, by hand
    scale = weight * (1 + pos_weight)  # bounds |oracle| and the round-off of either side
    assert np.all(np.abs(problem.grad - oracle) <= 1e-14 * scale + 1e-300)
    via_expression = gradcheck.expression_gradient(problem, "p - y")
    assert np.all(np.abs(via_expression - oracle) <= 1e-14 * scale + 1e-300)
    assert np.all(np.abs(gradcheck.gradient_function(problem)(z) - oracle) <= 1e-14 * scale + 1e-300)


# --- one logit column: the usual binary classifier ----------------------------------------------

def test_one_logit_is_log1p_of_e_to_minus_z_with_gradient_sigma_minus_1():
    problem = gradcheck.problem(np.array([[2.0]]), np.array([[1.0]]), loss="bce")
    assert problem.per_sample[0] == pytest.approx(np.log1p(np.exp(-2.0)), rel=1e-15)
    assert problem.grad[0, 0] == pytest.approx(1 / (1 + np.exp(-2.0)) - 1, rel=1e-15)


def test_random_inputs_with_k_1_pass_and_a_wrong_sign_fails(runner, tmp_path):
    result = check(runner, "--k", "1", "--random", "6", "--format", "json")
    assert result.exit_code == 0, result.output
    report = as_json(result)
    assert report["passed"] and report["k"] == 1 and report["entries"] == 6
    code = write_user_code(tmp_path, "def grad(z, y):\n    return y - 1 / (1 + np.exp(-z))\n")
    wrong = check(runner, "--k", "1", "--grad-fn", f"{code}:grad", "--format", "json")
    assert wrong.exit_code == 1, wrong.output


def test_a_file_with_one_logit_column_is_checked(runner, tmp_path):
    z, t = tmp_path / "z.csv", tmp_path / "t.csv"
    z.write_text("score\n2\n-1\n0.5\n")
    t.write_text("spam\n1\n0\n0.25\n")
    # the user's function gets (N, 1) logits and targets; a wrong shape would fail the check
    code = write_user_code(tmp_path, "def grad(z, y):\n    assert z.shape == y.shape == (3, 1)\n"
                                     "    return 1 / (1 + np.exp(-z)) - y\n")
    result = check(runner, str(z), "--targets", str(t), "--grad-fn", f"{code}:grad",
                   "--format", "json")
    assert result.exit_code == 0, result.output
    report = as_json(result)
    assert report["passed"] and (report["n"], report["k"], report["entries"]) == (3, 1, 3)
    hessian = check(runner, str(z), "--targets", str(t), "--expr", "p - y", "--hessian")
    assert hessian.exit_code == 0, hessian.output
    assert "PASSED" in hessian.stdout and "FAILED" not in hessian.stdout


def test_one_logit_column_loss_and_gradient_match_torch():
    torch = pytest.importorskip("torch")
    z, t = random_inputs(7, 1, seed=2)
    problem = gradcheck.problem(z, t, loss="bce")
    logits = torch.tensor(z, requires_grad=True)
    torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.tensor(t), reduction="sum").backward()
    assert np.allclose(problem.grad, logits.grad.numpy(), rtol=1e-13, atol=1e-16)


def test_softmax_still_refuses_one_class(runner, tmp_path):
    result = runner.invoke(app, ["check", "--k", "1"])
    assert result.exit_code == 2
    assert "--k 1: cross-entropy needs at least 2 classes" in result.stderr
    (tmp_path / "z.csv").write_text("score,label\n2,0\n1,0\n")
    result = runner.invoke(app, ["check", str(tmp_path / "z.csv")])
    assert result.exit_code == 2
    assert ("found 1 logit column; cross-entropy needs at least 2 classes; one logit column is a binary classifier: --loss bce"
            in result.stderr)
    assert check(runner, "--k", "0").exit_code == 2  # below 1 is refused for bce too


def test_backward_of_a_mean_bce_loss_is_named(runner, tmp_path):
    # BCEWithLogitsLoss's reduction='mean' averages over every element, N·k of them: its
    # backward() is 1/(N·k) of each sample's own gradient, the bce user's first mistake
    code = write_user_code(tmp_path, "def grad(z, t):\n"
                                     "    return (1 / (1 + np.exp(-z)) - t) / z.size\n")
    result = check(runner, "--grad-fn", f"{code}:grad", "--random", "8", "--k", "3")
    assert result.exit_code == 1, result.output
    text = " ".join(result.stdout.split())
    assert "1/24 of the numeric one" in text and "reduction='mean'" in text, text


def test_a_bce_loss_of_elements_is_told_to_sum_each_samples_classes(runner, tmp_path):
    # PyTorch's reduction='none' is (N, k) for BCE: the check takes each sample's sum over classes
    code = tmp_path / "elements.py"
    code.write_text("import numpy as np\n\n\ndef loss(z, y):\n"
                    "    return np.logaddexp(0, z) - y * z\n")
    result = runner.invoke(app, ["check", "--loss", "bce", "--loss-fn", f"{code}:loss"])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    assert ("elements.py:loss returned shape (8, 4), a loss per element; the loss must have shape "
            "(8,): sum each sample's, loss.sum(axis=1)" in result.stderr), result.stderr
    code.write_text("import numpy as np\n\n\ndef loss(z, y):\n"
                    "    return (np.logaddexp(0, z) - y * z).sum(axis=1)\n")
    assert runner.invoke(app, ["check", "--loss", "bce", "--loss-fn", f"{code}:loss"]).exit_code == 0
