"""`xent check` end to end: the user's gradient, loss and Hessian; every exit code; JSON; golden."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from xent_cli import gradcheck
from xent_cli.cli import app

ROOT = pathlib.Path(__file__).resolve().parent.parent
MY_GRAD = str(ROOT / "examples" / "my_grad.py")
CASES = str(ROOT / "tests" / "fixtures" / "usercode_cases.py")
LOGITS_K3 = str(ROOT / "examples" / "logits_k3.csv")


def check(runner, *argv):
    return runner.invoke(app, ["check", *argv])


def as_json(result):
    return json.loads(result.stdout)


def test_without_user_code_three_routes_agree(runner):
    result = check(runner)
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.stdout and "entries checked │ 32" in result.stdout
    report = as_json(check(runner, "--format", "json"))
    assert report["numeric"] == "central differences of xent's loss"
    assert [c["first"] for c in report["cross_checks"]] == ["derive's symbolic gradient (verified)"]
    assert report["cross_checks"][0]["passed"]


def test_the_symbolic_route_is_skipped_for_large_inputs_unless_asked(runner):
    large = as_json(check(runner, "--random", "2000", "--format", "json"))
    assert large["cross_checks"] == []
    asked = as_json(check(runner, "--random", "2000", "--symbolic", "--format", "json"))
    assert asked["cross_checks"][0]["passed"]
    result = check(runner, "--k", "13", "--symbolic")
    assert result.exit_code == 2 and "the symbolic route needs k <= 12, got 13" in result.stderr


@pytest.mark.parametrize("method", ["central", "complex", "richardson"])
def test_a_correct_user_gradient_passes_with_every_method(runner, method):
    result = check(runner, "--grad-fn", f"{MY_GRAD}:grad", "--loss-fn", f"{MY_GRAD}:loss",
                   "--method", method, "--format", "json")
    assert result.exit_code == 0, result.output
    report = as_json(result)
    assert report["passed"] and report["method"] == method and report["failures"] == []
    assert report["cross_checks"][0]["passed"]


def test_the_seed_case1_gradient_fails_and_names_the_off_label_entries(runner):
    result = check(runner, "--grad-fn", f"{MY_GRAD}:seed_grad", "--random", "4", "--k", "3",
                   "--format", "json")
    assert result.exit_code == 1, result.output
    report = as_json(result)
    assert not report["passed"]
    assert report["failed"] == report["failed_off_label"] == 8  # 4 samples x 2 wrong classes
    rng = np.random.default_rng(0)  # random inputs: 2·N(0,1) logits, uniform labels
    z = 2.0 * rng.standard_normal((4, 3))
    labels = rng.integers(0, 3, size=4)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    for failure in report["failures"]:
        i, c = failure["sample"], failure["class"]
        assert c != labels[i] and failure["label"] == labels[i]
        assert failure["analytic"] == 0
        assert failure["numeric"] == pytest.approx(p[i, c], rel=1e-8)


def test_golden_report_of_the_seed_gradient(runner, golden):
    result = check(runner, "--grad-fn", f"{MY_GRAD}:seed_grad", "--random", "3", "--k", "3")
    assert result.exit_code == 1, result.output
    golden("check_seed_case1.txt", result.stdout.replace(str(ROOT) + "/", ""))


def test_an_error_of_relative_1e6_is_caught_by_the_complex_step_at_its_defaults(runner):
    result = check(runner, "--grad-fn", f"{CASES}:off_by_1e6", "--method", "complex",
                   "--format", "json")
    assert result.exit_code == 1, result.output
    report = as_json(result)
    assert report["max_rel_err"] == pytest.approx(1e-6, rel=1e-3)
    assert {"passed", "method", "max_abs_err", "max_rel_err", "failures"} <= report.keys()
    assert {"sample", "class", "analytic", "numeric"} <= report["failures"][0].keys()


@pytest.mark.parametrize("argv", [
    ["--grad-fn", f"{CASES}:grad32"],
    ["--grad-fn", f"{CASES}:grad32", "--loss-fn", f"{CASES}:loss32"],
    ["--grad-fn", f"{CASES}:grad32", "--method", "richardson"],
    ["--grad-fn", f"{CASES}:grad", "--dtype", "float32", "--method", "complex"],
    ["--dtype", "float32", "--random", "200", "--k", "5"],
    ["--loss-fn", f"{CASES}:loss32"],  # a float32 loss beside xent's float64 gradient
], ids=["grad32", "grad32-loss32", "richardson", "dtype-complex", "xent-float32", "loss32"])
def test_a_float32_implementation_passes_at_float32_defaults(runner, argv):
    result = check(runner, *argv, "--format", "json")
    assert result.exit_code == 0, result.output
    assert as_json(result)["precision"] == "float32"


@pytest.mark.parametrize("argv", [
    ["--grad-fn", f"{CASES}:grad32"],
    ["--grad-fn", f"{CASES}:grad32", "--method", "richardson"],
    ["--dtype", "float32", "--hessian"],
], ids=["grad32", "richardson", "xent-float32"])
def test_a_float32_gradient_passes_at_confident_logits_of_100_to_1000(runner, tmp_path, argv):
    # xent's float64 loss is differentiated with float64's step: float32's, 5e-3·|z|, is 5 at
    # z = 1000, and the differences of the softmax over such a step are no derivative at all
    rng = np.random.default_rng(0)
    z = np.vstack([100 * rng.standard_normal((20, 10)), [[1000, 0, -1000, 999] + [0] * 6]])
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", np.r_[rng.integers(0, 10, 20), 0])
    result = check(runner, str(tmp_path / "z.npy"), "--labels", str(tmp_path / "y.npy"), *argv,
                   "--format", "json")
    assert result.exit_code == 0, result.output
    report = as_json(result)
    assert report["precision"] == "float32" and report["eps"] == gradcheck.DEFAULTS[
        report["method"], "float64"][0]
    wrong = check(runner, str(tmp_path / "z.npy"), "--labels", str(tmp_path / "y.npy"),
                  "--grad-fn", f"{MY_GRAD}:seed_grad", "--dtype", "float32")
    assert wrong.exit_code == 1, wrong.output


def near_ties(tmp_path, s: float) -> list[str]:
    """Returns the arguments of a file of confident near-ties at logits of size s, and labels."""
    z = np.array([[s, s + 1, s - 1, s], [s, -s, s + 0.5, 0], [-s, -s + 2, -s - 1, -s]] * 4)
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", np.array([0, 2, 1] * 4))
    return [str(tmp_path / "z.npy"), "--labels", str(tmp_path / "y.npy")]


@pytest.mark.parametrize("s, argv", [
    (3000, []),
    (3000, ["--method", "richardson"]),
    (10000, ["--directional"]),
    (3000, ["--hessian"]),
    (100, ["--loss-fn", f"{CASES}:loss32"]),
    (100, ["--grad-fn", f"{CASES}:grad32", "--hessian"]),
], ids=["xent", "richardson", "directional", "hessian", "loss32", "grad32-hessian"])
def test_right_code_passes_at_near_ties_of_large_logits(runner, tmp_path, s, argv):
    # the softmax's curvature does not fall as |z| grows: a step of eps·|z| (1.8e-2 at 3,000;
    # 0.5 in float32 at 100) fell far from the derivative where two classes nearly tie
    result = check(runner, *near_ties(tmp_path, s), *argv, "--format", "json")
    assert result.exit_code == 0, result.output
    assert as_json(result)["step_cap"] == gradcheck.STEP_SCALE_CAP
    shown = check(runner, *near_ties(tmp_path, s), *argv).stdout
    assert f"× min(max(1, |z|), {gradcheck.STEP_SCALE_CAP:g})" in shown
    options = argv[2:] if argv[:1] in (["--loss-fn"], ["--grad-fn"]) else argv
    wrong = check(runner, *near_ties(tmp_path, s), "--grad-fn", f"{MY_GRAD}:seed_grad", *options)
    assert wrong.exit_code == 1, wrong.output


@pytest.mark.parametrize("s, method", [(1000, "central"), (3000, "central"),
                                       (3000, "richardson"), (10000, "central")])
def test_a_float32_loss_passes_at_logits_of_1000_and_3000_within_its_round_off(runner, tmp_path,
                                                                              s, method):
    # losses of thousands are spaced 5e-4 apart in float32: differenced over a step of 0.3 that
    # round-off reaches 2e-3, beyond rtol and atol alone (without the term: 1 entry of 2,000
    # failed at 1,000, 33 at 3,000, 1 with Richardson); at 10,000, float32 rounds z ± h to
    # multiples of 1e-3, off the step of 0.3 by 0.3 % (5 entries failed: 2h is the step taken)
    rng = np.random.default_rng(1)
    np.save(tmp_path / "z.npy", s * rng.standard_normal((200, 10)))
    np.save(tmp_path / "y.npy", rng.integers(0, 10, 200))
    argv = [str(tmp_path / "z.npy"), "--labels", str(tmp_path / "y.npy"), "--loss-fn",
            f"{CASES}:loss32", "--method", method]
    result = check(runner, *argv, "--format", "json")
    assert result.exit_code == 0, result.output
    report = as_json(result)
    assert report["roundoff_passed"] > 0 and report["max_roundoff"] > report["atol"]
    shown = check(runner, *argv).stdout
    assert "≤ 0.001 + 0.001·|numeric| + round-off" in shown
    assert "│ round-off       │ ε·(2|f| + m)/2h of the values differenced, up to " \
           f"{report['max_roundoff']:.3g}; {report['roundoff_passed']} " in shown


@pytest.mark.parametrize("method", ["central", "complex", "richardson"])
def test_a_gradient_off_by_a_relative_1e_3_still_fails_at_moderate_logits(runner, tmp_path,
                                                                          method):
    # the round-off allowance of float64 losses of a few units is some 1e-12: no cover for a bug
    (tmp_path / "off.py").write_text(
        "import numpy as np\n"
        "def grad(z, y):\n"
        "    e = np.exp(z - z.max(axis=1, keepdims=True))\n"
        "    return 1.001 * (e / e.sum(axis=1, keepdims=True) - np.eye(z.shape[1])[y])\n")
    result = check(runner, "--grad-fn", f"{tmp_path / 'off.py'}:grad", "--random", "50", "--k",
                   "10", "--method", method, "--format", "json")
    assert result.exit_code == 1, result.output
    report = as_json(result)
    assert report["failed"] > 400 and report["roundoff_passed"] == 0
    assert report["scale"] == pytest.approx(1.001)
    if method != "complex":
        assert report["max_roundoff"] < 1e-9


@pytest.mark.parametrize("method", ["central", "richardson"])
def test_a_bce_gradient_off_by_a_relative_1e_3_still_fails_over_300_classes(runner, tmp_path,
                                                                           method):
    # a loss summed over 300 classes at logits 2·N(0, 1) is some 300: 2ε·|f|/2h, the round-off
    # of its sums, stays near 1e-8, a thousandth of the error
    (tmp_path / "off.py").write_text(
        "import numpy as np\n"
        "def grad(z, y):\n"
        "    return 1.001 * (1 / (1 + np.exp(-z)) - y)\n")
    result = check(runner, "--loss", "bce", "--grad-fn", f"{tmp_path / 'off.py'}:grad",
                   "--random", "4", "--k", "300", "--method", method, "--format", "json")
    assert result.exit_code == 1, result.output
    report = as_json(result)
    assert report["failed"] == 1200 and report["roundoff_passed"] == 0
    assert report["max_roundoff"] < 1e-7


# fuzz_check seeds (of 0-5999 and 9000-24199) whose RIGHT code failed by the round-off allowance
# of values rounded once, ε·|f|/2h: losses summed over 33 to 300 classes (bce; float32 softmax
# losses smoothed over 7 and 33 classes at logits of 3,000), within 2ε·|f|/2h; and a float32
# softmax smoothed over 100 classes at logits of 9,000 (16523), 2.4 times ε·|f|/2h off, its
# log-sum-exp a multiple of 9.8e-4, which ε·S·|lse| holds. The seeds from 18200 on were run
# after the rule was chosen on the others.
SUMMED_LOSS_SEEDS = (2534, 5764, 5840, 9720, 11007, 12378, 13533, 13754, 14334, 14581, 15720,
                     16523, 17194, 19103, 19694, 19825, 20498, 21568, 22929)


@pytest.mark.parametrize("seed", SUMMED_LOSS_SEEDS)
def test_right_losses_summed_over_many_classes_pass_within_their_round_off(tmp_path, seed):
    import fuzz_check

    case = fuzz_check.make_case(seed)
    if case["code"] == "torch":
        pytest.importorskip("torch")
    code, report, output, _ = fuzz_check.run_case(case, str(tmp_path))
    assert code == 0, output
    assert report["roundoff_passed"] > 0  # the JSON says where the term mattered


def test_float32_is_checked_at_z_as_float32_holds_it(runner, tmp_path):
    # float32 moves 1000.1 by 2.4e-5 and 1000.13 by 5e-6: xent's float32 gradient there was
    # held against derive's at the unrounded z, 7e-6 away, beyond float32's 1e-6: exit 1
    np.save(tmp_path / "z.npy", np.array([[1000.1, 1000.13, 0.0], [-3.0, 2.5, 2.4]]))
    np.save(tmp_path / "y.npy", np.array([0, 2]))
    argv = [str(tmp_path / "z.npy"), "--labels", str(tmp_path / "y.npy"), "--dtype", "float32"]
    result = check(runner, *argv, "--format", "json")
    assert result.exit_code == 0, result.output
    symbolic = as_json(result)["cross_checks"][0]
    assert symbolic["passed"] and symbolic["max_abs_diff"] < 1e-7
    wrong = check(runner, *argv, "--grad-fn", f"{MY_GRAD}:seed_grad")
    assert wrong.exit_code == 1, wrong.output


def test_a_float32_logsumexp_loss_agrees_with_xents_at_logits_of_3000(runner, tmp_path):
    # logsumexp(z) − z_y in float32 rounds logsumexp to 2.4e-4 at 3000 before the subtraction:
    # weighted 3.25, a loss of 1.13 was 2.3e-4 off xent's, beyond 1e-4·(1 + 1.13), exit 1
    (tmp_path / "lse32.py").write_text(
        "import numpy as np\n"
        "W = np.array([3.25, 1.0, 2.0])\n"
        "def loss(z, y):\n"
        "    m = z.real.max(axis=1)\n"
        "    lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))\n"
        "    return W[y].astype(np.float32) * (lse - z[np.arange(len(y)), y])\n")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "z.npy", 3000 + rng.uniform(-1, 1, (40, 3)))
    np.save(tmp_path / "y.npy", rng.integers(0, 3, 40))
    argv = [str(tmp_path / "z.npy"), "--labels", str(tmp_path / "y.npy"), "--weight", "3.25,1,2",
            "--dtype", "float32", "--method", "complex", "--format", "json"]
    result = check(runner, *argv, "--loss-fn", f"{tmp_path / 'lse32.py'}:loss")
    assert result.exit_code == 0, result.output
    assert as_json(result)["cross_checks"][0]["passed"]
    # a loss whose weights are left out is still told apart
    (tmp_path / "unweighted.py").write_text(
        (tmp_path / "lse32.py").read_text().replace("[3.25, 1.0, 2.0]", "[1.0, 1.0, 1.0]"))
    wrong = check(runner, *argv, "--loss-fn", f"{tmp_path / 'unweighted.py'}:loss")
    assert wrong.exit_code == 1 and not as_json(wrong)["cross_checks"][0]["passed"]


def test_the_step_cap_is_named_only_where_it_holds(runner):
    report = as_json(check(runner, "--format", "json"))
    assert report["step_cap"] is None
    assert "6e-06 × max(1, |z|) " in check(runner).stdout
    # the explanation beside a sweep gives the rule, cap and all
    shown = " ".join(check(runner, "--sweep").stdout.split())
    assert "The default h ≈ ε^(1/3)·min(max(1, |z|), 30) balances the two" in shown


def test_the_seed_gradient_still_fails_at_float32_defaults(runner):
    result = check(runner, "--grad-fn", f"{MY_GRAD}:seed_grad", "--dtype", "float32")
    assert result.exit_code == 1, result.output


@pytest.mark.parametrize("argv, message", [
    (["--grad-fn", f"{CASES}:raises"],
     "usercode_cases.py:raises raised ZeroDivisionError: division by zero"),
    (["--grad-fn", f"{CASES}:transposed"],
     "usercode_cases.py:transposed returned shape (4, 8); the gradient must have shape (8, 4) "
     "(8 x 4: row i is sample i's gradient); (4, 8) is its transpose (a row per class): "
     "return g.T"),
    (["--grad-fn", f"{CASES}:returns_ints"], "returned integers (int64); a gradient is a float"),
    (["--grad-fn", f"{CASES}:returns_text"], "returned an array of <U5, not numbers"),
    (["--loss-fn", f"{CASES}:loss_mean"],
     "usercode_cases.py:loss_mean returned shape (); the loss must have shape (8,)"),
    (["--grad-fn", f"{CASES}:nope"], "has no name 'nope'; it defines grad,"),
    (["--grad-fn", f"{CASES}:NOT_A_FUNCTION"], "NOT_A_FUNCTION is an int, not a function"),
    (["--grad-fn", str(ROOT / "tests" / "fixtures" / "syntax_error.py:grad")],
     "syntax_error.py raised SyntaxError"),
    (["--grad-fn", "no_such_file.py:grad"], "no such file no_such_file.py"),
    (["--grad-fn", CASES], "expected FILE.py:NAME"),
    (["--hess-fn", f"{CASES}:grad"], "returned shape (8, 4); the Hessian must have shape (8, 4, 4)"),
    (["--loss-fn", f"{CASES}:loss_real_only", "--method", "complex"],
     "loss_real_only is not complex-safe: it returns float64 for complex input"),
    (["--loss-fn", f"{CASES}:loss_float", "--method", "complex"],
     "loss_float is not complex-safe"),
    (["--grad-fn", f"{CASES}:grad", "--expr", "p - y"], "--grad-fn and --expr exclude each other"),
    ([str(ROOT / "examples" / "logits_k3.csv"), "--labels", "y.csv", "--targets", "t.csv"],
     "--labels and --targets exclude each other"),
    (["--sweep", "--directional"], "--sweep and --directional exclude each other"),
    (["--eps", "0"], "--eps must be greater than 0"),
    (["--method", "forward"], "Invalid value for '--method'"),
    (["--random", "0"], "Invalid value for '--random'"),
    (["--weight", "1,2"], "--weight has 2 entries; the logits have 4 classes"),
    ([str(ROOT / "missing.csv")], "missing.csv: no such file"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_a_check_that_cannot_run_says_why_in_one_line_and_exits_2(runner, argv, message):
    result = check(runner, *argv)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("formula, passes", [
    ("p - y", True),
    ("p_j - [j = l]", True),
    ("exp(z) / sum(exp(z)) - y", True),
    ("[j = l] * (p - y)", False),  # the seed's Case 1: nothing off the label
    ("p", False),
])
def test_an_expression_is_checked_as_a_gradient_formula(runner, formula, passes):
    result = check(runner, "--expr", formula, "--method", "complex", "--format", "json")
    assert result.exit_code == (0 if passes else 1), result.output
    assert as_json(result)["analytic"] == f"the expression {formula}"


def test_an_expression_follows_the_loss_options_of_a_file(runner):
    result = check(runner, LOGITS_K3, "--expr", "p - y", "--weight", "1,2,3", "--label-smoothing",
                   "0.2", "--ignore-index", "1", "--method", "complex")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("formula", ["__import__('os').system('true')", "p - ", "p.__class__"])
def test_an_expression_is_never_python(runner, formula):
    result = check(runner, "--expr", formula)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"Error: --expr {formula!r}: ")


def test_nan_and_inf_from_the_users_gradient_are_reported_as_such(runner):
    result = check(runner, "--grad-fn", f"{CASES}:nan_grad")
    assert result.exit_code == 1, result.output
    assert ("the analytic gradient has 1 NaN and 1 infinite entries (first at sample 1, class 2)"
            in " ".join(result.stdout.split()))
    report = as_json(check(runner, "--grad-fn", f"{CASES}:nan_grad", "--format", "json"))
    assert report["failures"][0]["analytic"] is None and report["nonfinite"]


@pytest.mark.parametrize("argv", [[], ["--method", "richardson"], ["--directional"],
                                  ["--directional", "--method", "richardson"], ["--sweep"]],
                         ids=["central", "richardson", "directional", "directional-richardson",
                              "sweep"])
def test_a_user_loss_of_inf_is_reported_as_nan_without_numpys_warnings(runner, tmp_path,
                                                                       recwarn, argv):
    # -log of a softmax without the max subtracted: exp(1000) overflows, the loss is inf or nan
    code = tmp_path / "naive.py"
    code.write_text("import numpy as np\n\n"
                    "def loss(z, y):\n"
                    "    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)\n"
                    "    return -np.log(p[np.arange(len(y)), y])\n")
    np.save(tmp_path / "z.npy", np.array([[1000.0, 0, -1000], [0.5, 1.5, -1], [-1000, 0, 1000]]))
    np.save(tmp_path / "y.npy", np.array([0, 1, 0]))
    result = check(runner, str(tmp_path / "z.npy"), "--labels", str(tmp_path / "y.npy"),
                   "--loss-fn", f"{code}:loss", *argv, "--format", "json")
    assert result.exit_code == 1, result.output
    assert as_json(result)["nonfinite"].startswith("the numeric ")
    assert [str(w.message) for w in recwarn] == []


def test_output_of_the_users_subprocesses_and_c_code_goes_to_stderr_too(tmp_path):
    # a process of its own: what os.system, a subprocess or C code writes goes to descriptor 1,
    # past sys.stdout, and was read as the start of the JSON on stdout
    code = tmp_path / "noisy.py"
    code.write_text("import os\nimport subprocess\nimport sys\n\n"
                    f"sys.path.insert(0, {str(CASES.rsplit('/', 1)[0])!r})\n"
                    "from usercode_cases import grad as right\n"
                    "os.write(1, b'loading\\n')\n\n\n"
                    "def grad(z, y):\n"
                    "    subprocess.run([sys.executable, '-c', 'print(\"from a subprocess\")'])\n"
                    "    os.write(1, b'from C\\n')\n"
                    "    return right(z, y)\n")
    done = subprocess.run([sys.executable, "-m", "xent_cli", "check", "--grad-fn",
                           f"{code}:grad", "--format", "json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["passed"]
    assert done.stderr == "loading\nfrom a subprocess\nfrom C\n"


def test_numpys_error_state_set_by_the_users_file_stays_the_users(tmp_path):
    # a process of its own, as the state would outlive the test: np.seterr(all="raise") at a
    # file's top level made exp's underflow at logits of 1000 a FloatingPointError traceback in
    # xent's own loss, exit 1 as if the gradient were wrong
    code = tmp_path / "strict.py"
    code.write_text("import sys\nimport warnings\n\nimport numpy as np\n\n"
                    f"sys.path.insert(0, {str(CASES.rsplit('/', 1)[0])!r})\n"
                    "from usercode_cases import grad\n\n"
                    "np.seterr(all='raise')\nwarnings.simplefilter('error')\n\n\n"
                    "def seed(z, y):  # the seed's Case 1: 0 off the label\n"
                    "    return np.where(np.eye(z.shape[1])[y] > 0, grad(z, y), 0.0)\n")
    np.save(tmp_path / "z.npy", np.array([[1000.0, 0, -1000], [0.5, 1.5, -1]]))
    np.save(tmp_path / "y.npy", np.array([0, 1]))
    for name, status in (("grad", 0), ("seed", 1)):
        done = subprocess.run([sys.executable, "-m", "xent_cli", "check", str(tmp_path / "z.npy"),
                               "--labels", str(tmp_path / "y.npy"), "--grad-fn", f"{code}:{name}",
                               "--format", "json"], capture_output=True, text=True)
        assert done.returncode == status, done.stderr
        assert done.stderr == ""


@pytest.mark.parametrize("imports", ["from .ops import softmax",
                                     "from {package}.ops import softmax"])
def test_a_file_in_a_package_imports_its_package(runner, tmp_path, monkeypatch, imports):
    # a package's module imports its siblings relatively or by the package's name: imported by
    # its path alone, it raised 'attempted relative import with no known parent package', or
    # 'No module named ...' with the advice to install the package
    package = f"grads_{tmp_path.name}"  # a name of its own: the module stays imported
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "ops.py").write_text(
        "import numpy as np\n\n\ndef softmax(z):\n"
        "    e = np.exp(z - z.max(axis=1, keepdims=True))\n"
        "    return e / e.sum(axis=1, keepdims=True)\n")
    (tmp_path / package / "losses.py").write_text(
        f"import numpy as np\n\n{imports.format(package=package)}\n\n\n"
        "def grad(z, y):\n    return softmax(z) - np.eye(z.shape[1])[y]\n")
    monkeypatch.chdir(tmp_path)
    for spec in (f"{package}.losses:grad", f"{package}/losses.py:grad",
                 f"{tmp_path / package / 'losses.py'}:grad"):
        result = check(runner, "--grad-fn", spec)
        assert result.exit_code == 0, result.output


def test_a_package_named_as_a_module_imported_already_is_read_by_its_files_path(runner,
                                                                                tmp_path):
    # 'json' is the standard library's, imported already: json.mine would be looked for there
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "__init__.py").write_text("")
    (tmp_path / "json" / "mine.py").write_text(
        f"import sys\n\nsys.path.insert(0, {str(CASES.rsplit('/', 1)[0])!r})\n"
        "from usercode_cases import grad  # noqa: E402\n")
    result = check(runner, "--grad-fn", f"{tmp_path / 'json' / 'mine.py'}:grad")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("dtype, limit", [("float64", "709.8"), ("float32", "88.7")])
def test_nan_from_exp_overflowing_at_large_logits_names_the_shift(runner, tmp_path, dtype, limit):
    code = tmp_path / "naive.py"
    code.write_text("import numpy as np\n\n\ndef grad(z, y):  # no max subtracted\n"
                    "    e = np.exp(z)\n"
                    "    return e / e.sum(axis=1, keepdims=True) - np.eye(z.shape[1])[y]\n")
    big = 800.0 if dtype == "float64" else 100.0
    np.save(tmp_path / "z.npy", np.array([[big, 0, -1], [0.5, 1.5, -1], [-1, 0, big]]))
    np.save(tmp_path / "y.npy", np.array([0, 1, 2]))
    result = check(runner, str(tmp_path / "z.npy"), "--labels", str(tmp_path / "y.npy"),
                   "--grad-fn", f"{code}:grad", "--dtype", dtype)
    assert result.exit_code == 1, result.output
    assert (f"each sample with NaN or inf has a logit beyond ±{limit}, where exp overflows "
            f"{dtype}: subtract each row's max before exp, exp(z − max z), as a stable softmax does"
            in " ".join(result.stdout.split())), result.stdout
    elsewhere = check(runner, "--grad-fn", f"{CASES}:nan_grad")  # NaN at modest logits
    assert elsewhere.exit_code == 1 and "exp overflows" not in elsewhere.stdout


@pytest.mark.parametrize("signature, hint", [
    ("z, y, weight", "give its other parameters defaults, or wrap it, def wrapped(z, y): "
                     "return grad(z, y, ...)"),
    ("z", "take y as its second parameter"),
])
def test_a_function_that_takes_other_arguments_is_told_how_to_fit_the_call(runner, tmp_path,
                                                                          signature, hint):
    # code written for a training loop of its own: grad(logits, labels, weight); the call fails
    # before the body runs
    code = tmp_path / "loop.py"
    code.write_text(f"def grad({signature}):\n    return None\n")
    result = check(runner, "--grad-fn", f"{code}:grad")
    assert result.exit_code == 2, result.output
    assert result.stderr.rstrip().endswith(f"class labels; xent calls it with two arguments, z "
                                           f"and y: {hint}"), result.stderr
    inside = tmp_path / "inside.py"  # a TypeError of the function's own body: no such hint
    inside.write_text("def grad(z, y):\n    return z + 'a'\n")
    assert "xent calls it" not in check(runner, "--grad-fn", f"{inside}:grad").stderr


def test_a_callable_without_a_readable_signature_gets_the_plain_message(runner, tmp_path):
    # inspect.signature raises TypeError here: the hint is left out, not a traceback
    code = tmp_path / "odd.py"
    code.write_text("class Grad:\n"
                    "    __signature__ = 'not a signature'\n"
                    "    def __call__(self, z):\n"
                    "        return z\n"
                    "grad = Grad()\n")
    result = check(runner, "--grad-fn", f"{code}:grad")
    assert result.exit_code == 2, result.output
    assert "raised TypeError" in result.stderr and "xent calls it" not in result.stderr


def test_a_user_loss_that_disagrees_with_xents_is_a_failure(runner):
    result = check(runner, "--loss-fn", f"{CASES}:wrong_loss", "--format", "json")
    assert result.exit_code == 1, result.output
    cross = as_json(result)["cross_checks"][0]
    assert not cross["passed"] and "gives" in cross["note"]
    shown = " ".join(check(runner, "--loss-fn", f"{CASES}:wrong_loss").stdout.split())
    assert "DISAGREE" in shown and "; the finite differences follow usercode_cases.py:wrong_loss" \
        in shown, shown


def test_a_logits_file_is_read_as_eval_reads_it_with_weights_and_smoothing(runner):
    argv = [LOGITS_K3, "--weight", "1,2,0.5", "--label-smoothing", "0.1", "--format", "json"]
    result = check(runner, *argv, "--method", "complex")
    assert result.exit_code == 0, result.output
    assert as_json(result)["entries"] == 12 and as_json(result)["inputs"] == LOGITS_K3
    # the plain p - y of my_grad is not the gradient of the weighted, smoothed loss
    wrong = check(runner, *argv, "--grad-fn", f"{MY_GRAD}:grad")
    assert wrong.exit_code == 1, wrong.output


def test_soft_targets_reach_the_users_function_as_an_n_by_k_array(runner, tmp_path):
    logits, targets = tmp_path / "z.csv", tmp_path / "t.csv"
    logits.write_text("z0,z1,z2\n1,2,0.5\n-1,0,3\n")
    targets.write_text("t0,t1,t2\n0.2,0.5,0.3\n0,0,1\n")
    code = tmp_path / "soft.py"
    code.write_text("import numpy as np\n"
                    "def grad(z, y):\n"
                    "    assert y.shape == z.shape\n"
                    "    e = np.exp(z - z.max(axis=1, keepdims=True))\n"
                    "    return e / e.sum(axis=1, keepdims=True) - y\n")
    for argv in ([], ["--grad-fn", f"{code}:grad"], ["--expr", "p - y"]):
        result = check(runner, str(logits), "--targets", str(targets), "--method", "complex", *argv)
        assert result.exit_code == 0, (argv, result.output)


def test_arrays_are_read_as_eval_reads_them(runner, tmp_path):
    z = np.array([[1.0, 2.0, 0.5], [-1.0, 0.0, 3.0]])
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", np.array([2, 0]))
    np.savez(tmp_path / "both.npz", logits=z, labels=np.array([2, 0]))
    for argv in ([str(tmp_path / "z.npy"), "--labels", str(tmp_path / "y.npy")],
                 [str(tmp_path / "both.npz")]):
        right = check(runner, *argv, "--expr", "p - y", "--method", "complex", "--format", "json")
        assert right.exit_code == 0, right.output
        assert as_json(right)["entries"] == 6
        assert check(runner, *argv, "--expr", "p").exit_code == 1  # the label's -1 is missing
    np.save(tmp_path / "bad.npy", np.array([2, 3]))
    bad = check(runner, str(tmp_path / "z.npy"), "--labels", str(tmp_path / "bad.npy"))
    assert bad.exit_code == 2
    assert "bad.npy, row 1: label 3 is not a class index 0..2" in bad.stderr


def test_a_bad_logits_file_gets_evals_message(runner, tmp_path):
    bad = tmp_path / "z.csv"
    bad.write_text("z0,z1,label\n1,abc,0\n")
    result = check(runner, str(bad))
    assert result.exit_code == 2
    assert "z.csv, line 2, column 'z1': logit 'abc' is not a number" in result.stderr


def test_a_saved_row_index_is_refused_as_eval_refuses_it(runner, tmp_path):
    # pandas' to_csv with df.index.name = 'id' saves the index as the first column: read as a
    # class it made k = 4, labels named the wrong classes, and the check passed at logits that
    # are not the user's (the index's 0..49 dwarfs them), exit 0
    rng = np.random.default_rng(5)
    z, y = rng.normal(size=(50, 3)), rng.integers(0, 3, size=50)
    rows = "".join(f"{i},{a!r},{b!r},{c!r},{label}\n" for i, ((a, b, c), label)
                   in enumerate(zip(z.tolist(), y.tolist())))
    (tmp_path / "z.csv").write_text("id,z0,z1,z2,label\n" + rows)
    result = check(runner, str(tmp_path / "z.csv"), "--expr", "p - y")
    evaluated = runner.invoke(app, ["eval", str(tmp_path / "z.csv")])
    assert result.exit_code == evaluated.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr == evaluated.stderr
    assert "z.csv, column 'id': holds distinct whole numbers (0, 1, 2, …)" in result.stderr


def test_the_hessian_check_passes_for_the_right_matrix_and_fails_for_a_wrong_one(runner):
    right = check(runner, "--hess-fn", f"{CASES}:hessian", "--grad-fn", f"{CASES}:grad",
                  "--method", "complex", "--format", "json")
    assert right.exit_code == 0, right.output
    assert as_json(right)["hessian"]["entries"] == 8 * 16
    assert check(runner, "--hessian").exit_code == 0
    wrong = check(runner, "--hess-fn", f"{CASES}:wrong_hessian", "--format", "json")
    assert wrong.exit_code == 1
    report = as_json(wrong)
    assert report["failures"] == [] and not report["hessian"]["passed"]
    assert {"sample", "class", "column"} <= report["hessian"]["failures"][0].keys()


def test_the_sweep_marks_the_best_step(runner):
    result = check(runner, "--sweep")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if "e-" in line and line.count("│") == 4]
    assert len(rows) == 13 and sum("← best" in row for row in rows) == 1
    # its title on one line, not wrapped to the narrow table's width
    assert "\nerror of central differences against the step h (h × max(1, |z|))\n" in result.stdout
    report = as_json(check(runner, "--sweep", "--format", "json"))
    assert 1e-7 <= report["best_h"] <= 1e-4 and len(report["sweep"]) == 13


@pytest.mark.parametrize("argv", [["--grad-fn", f"{MY_GRAD}:grad", "--hessian"],
                                  ["--loss-fn", f"{MY_GRAD}:loss"]], ids=["grad", "loss"])
def test_complex_safe_code_passes_where_the_first_class_has_no_derivative(runner, tmp_path, argv):
    # class 0 lies 1000 below each row's max: its p underflows to 0, so the complex step along
    # it leaves no imaginary part in right code either; it was refused as not complex-safe
    np.save(tmp_path / "z.npy", np.array([[-1000.0, 2.0, 0.5], [-999.0, 0.0, 1.0]]))
    np.save(tmp_path / "y.npy", np.array([1, 2]))
    result = check(runner, str(tmp_path / "z.npy"), "--labels", str(tmp_path / "y.npy"), *argv,
                   "--method", "complex")
    assert result.exit_code == 0, result.output


def test_bce_code_that_keeps_the_imaginary_part_passes_with_a_class_weighted_0(runner, tmp_path):
    # the class weighted 0 adds nothing to the loss: no imaginary part along it, in right code
    (tmp_path / "weighted.py").write_text(
        "import numpy as np\n"
        "W = np.array([0.0, 1.0, 2.0])\n"
        "def loss(z, y):\n"
        "    e = np.log1p(np.exp(-np.where(z.real >= 0, z, -z)))\n"
        "    softplus = np.where(z.real >= 0, z, 0) + e\n"
        "    return (W * (y * (softplus - z) + (1 - y) * softplus)).sum(axis=1)\n"
        "def dropped(z, y):\n"
        "    out = loss(z.real, y)  # complex for complex z, but the imaginary part is gone\n"
        "    return out + 0j if np.iscomplexobj(z) else out\n")
    argv = ["--loss", "bce", "--weight", "0,1,2", "--k", "3", "--method", "complex"]
    result = check(runner, "--loss-fn", f"{tmp_path / 'weighted.py'}:loss", *argv)
    assert result.exit_code == 0, result.output
    dropped = check(runner, "--loss-fn", f"{tmp_path / 'weighted.py'}:dropped", *argv)
    assert dropped.exit_code == 2
    assert "dropped is not complex-safe: its result has no imaginary part" in dropped.stderr


def test_a_failure_within_numeric_error_is_explained_and_the_complex_step_settles_it(runner):
    strict = ["--rtol", "0", "--atol", "1e-13", "--no-symbolic"]
    # truncation at a step of 1e-4·|z|, some 1e-9, beyond the round-off allowance (2e-11)
    central = check(runner, *strict, "--eps", "1e-4")
    assert central.exit_code == 1, central.output
    assert "truncation" in central.stdout and "--method complex" in central.stdout
    exact = check(runner, *strict, "--method", "complex")
    assert exact.exit_code == 0, exact.output


def test_plot_writes_a_png_or_says_how_to_get_matplotlib(runner, tmp_path, monkeypatch):
    path = tmp_path / "sweep.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        result = check(runner, "--plot", str(path))
        assert result.exit_code == 0, result.output
        assert path.read_bytes().startswith(b"\x89PNG")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = check(runner, "--plot", str(tmp_path / "other.png"))
    assert result.exit_code == 2
    assert "pip install 'xent-cli[plot]'" in result.stderr


def test_a_plot_that_cannot_be_written_leaves_the_old_image_and_no_partial_one(runner, tmp_path,
                                                                                monkeypatch):
    pytest.importorskip("matplotlib")
    path = tmp_path / "sweep.png"
    path.write_bytes(b"the previous plot")

    def full_disk(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    result = check(runner, "--plot", str(path))
    assert result.exit_code == 2, result.output
    assert result.stderr == f"Error: {path}: cannot be written: No space left on device\n"
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == [path] and path.read_bytes() == b"the previous plot"


@pytest.mark.parametrize("name", ["sweep.csv", "sweep"])
def test_plot_refuses_a_name_without_an_image_extension(runner, tmp_path, name):
    pytest.importorskip("matplotlib")
    result = check(runner, "--plot", str(tmp_path / name))
    assert result.exit_code == 2, result.output
    assert ".png" in result.stderr and "Traceback" not in result.output
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, message", [("sweep", "image format's extension"),
                                           ("folder.png", "is a directory")])
def test_a_plot_it_cannot_write_is_refused_before_the_check_runs(runner, tmp_path, monkeypatch,
                                                                 name, message):
    pytest.importorskip("matplotlib")
    from xent_cli import gradcheck

    (tmp_path / "folder.png").mkdir()
    monkeypatch.setattr(gradcheck, "run", lambda *a, **k: pytest.fail("the check ran"))
    result = check(runner, "--plot", str(tmp_path / name))
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert result.stdout == "" and sorted(p.name for p in tmp_path.iterdir()) == ["folder.png"]


@pytest.mark.parametrize("argv", [["--loss-fn", f"{CASES}:loss32"],
                                  ["--grad-fn", f"{CASES}:grad32", "--loss-fn", f"{CASES}:loss32"]],
                         ids=["loss32", "grad32-loss32"])
def test_directional_steps_no_logit_further_than_the_step(runner, tmp_path, argv):
    # v of 33 standard normals spreads over 4.5: at float32's step of 0.15 the truncation error
    # along it, at near-ties of 60, reached 0.028 and failed 51 of 200 right samples
    rng = np.random.default_rng(0)
    z = 30 * rng.standard_normal((200, 33))
    z[:, :3] = [61.0, 62.0, 60.0]
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", rng.integers(0, 33, 200))
    inputs = [str(tmp_path / "z.npy"), "--labels", str(tmp_path / "y.npy"), "--directional"]
    result = check(runner, *inputs, *argv, "--format", "json")
    assert result.exit_code == 0, result.output
    assert as_json(result)["max_abs_err"] < 2e-3
    wrong = check(runner, *inputs, "--grad-fn", f"{MY_GRAD}:seed_grad", "--dtype", "float32",
                  "--format", "json")
    assert wrong.exit_code == 1 and as_json(wrong)["failed"] > 190


def test_directional_mode_serves_large_inputs(runner):
    right = check(runner, "--directional", "--random", "20000", "--k", "50", "--format", "json")
    assert right.exit_code == 0, right.output
    assert as_json(right)["entries"] == 20000
    wrong = check(runner, "--directional", "--random", "20000", "--k", "50",
                  "--grad-fn", f"{MY_GRAD}:seed_grad", "--show", "0")
    assert wrong.exit_code == 1


def test_sys_exit_in_the_users_code_is_not_a_pass(runner, tmp_path):
    code = tmp_path / "quits.py"
    code.write_text("import sys\ndef grad(z, y):\n    sys.exit(0)\n")
    result = check(runner, "--grad-fn", f"{code}:grad")
    assert result.exit_code == 2 and "quits.py:grad raised SystemExit" in result.stderr


def test_ctrl_c_in_the_users_code_exits_130(runner, tmp_path):
    code = tmp_path / "interrupt.py"
    code.write_text("def grad(z, y):\n    raise KeyboardInterrupt\n")
    result = check(runner, "--grad-fn", f"{code}:grad")
    assert result.exit_code == 130


def test_the_examples_of_the_help_run_as_documented(runner, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    help_text = check(runner, "--help").stdout
    examples = [line.strip() for line in help_text.split("Examples:")[1].split("\n\n")[0]
                .splitlines() if line.strip()]
    assert len(examples) == 5
    for line in examples:
        line = line.partition(" #")[0]  # the shell comment that says an example exits 1
        argv = [arg.strip('"') for arg in line.replace('"p - y"', "P_MINUS_Y").split()[2:]]
        argv = ["p - y" if arg == "P_MINUS_Y" else arg for arg in argv]
        argv = [str(tmp_path / arg) if arg.endswith(".png") else arg for arg in argv]
        if "--plot" in argv and importlib.util.find_spec("matplotlib") is None:
            continue  # the optional extra is not installed
        result = check(runner, *argv)
        assert result.exit_code == (1 if "seed_grad" in line else 0), (line, result.output)


def test_help_documents_the_contract_with_an_example(runner):
    result = check(runner, "--help")
    assert result.exit_code == 0
    assert "xent check --grad-fn examples/my_grad.py:grad --method complex" in result.stdout
    assert "(N, k)" in result.stdout


@pytest.mark.parametrize("body, says", [
    # backward() of F.cross_entropy's default reduction='mean': every entry 1/N of sample i's own
    ("    return (p - y1) / len(z)\n", "1/8 of the numeric one (1/N for N = 8 samples)"),
    ("    return y1 - p\n", "-1 times the numeric one: the sign is flipped"),
    ("    return 2.5 * (p - y1)\n", "2.5 times the numeric one: a constant factor is off"),
])
def test_a_gradient_off_by_a_constant_factor_says_so(runner, tmp_path, body, says):
    code = tmp_path / "scaled.py"
    code.write_text("import numpy as np\n\n\ndef grad(z, y):\n"
                    "    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)\n"
                    "    y1 = np.eye(z.shape[1])[y]\n" + body)
    result = check(runner, "--grad-fn", f"{code}:grad")
    assert result.exit_code == 1, result.output
    assert says in " ".join(result.stdout.split()), result.stdout
    report = as_json(check(runner, "--grad-fn", f"{code}:grad", "--format", "json"))
    expected = 1 / 8 if "len(z)" in body else 2.5 if "2.5" in body else -1.0
    assert report["scale"] == pytest.approx(expected, rel=1e-6)


def test_a_wrong_gradient_without_a_constant_factor_has_no_scale(runner):
    report = as_json(check(runner, "--grad-fn", f"{MY_GRAD}:seed_grad", "--format", "json"))
    assert report["scale"] is None


def test_a_mean_gradients_hessian_names_the_side_of_the_code_under_test(runner, tmp_path):
    # with --hessian the user's gradient is differentiated numerically, against xent's Hessian:
    # backward() of a 'mean' loss makes the numeric side 1/N, not the analytic side N times
    code = tmp_path / "mean.py"
    code.write_text("import numpy as np\n\n\ndef grad(z, y):\n"
                    "    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)\n"
                    "    return (p - np.eye(z.shape[1])[y]) / len(z)\n")
    result = check(runner, "--grad-fn", f"{code}:grad", "--hessian")
    assert result.exit_code == 1, result.output
    hessian = " ".join(result.stdout.split("check of the Hessian")[1].split())
    assert "Every numeric entry is 1/8 of the analytic one" in hessian, hessian
    assert "reduction='mean'" in hessian, hessian


@pytest.mark.parametrize("body, scale", [
    # noise far below the tolerance is not 1e-10 times the gradient: a small factor needs the
    # entries to fit as closely, relative to their size
    ("    return 1e-9 * np.sin(7.3 * np.arange(z.size)).reshape(z.shape)\n", None),
    ("    return np.where(np.abs(p - y1) < 0.05, 0.0, p - y1)\n", None),  # right except zeros
    ("    return 1e-9 * (p - y1)\n", 1e-9),
    ("    return 1000 * (p - y1)\n", 1000),
])
def test_a_constant_factor_fits_every_entry_at_its_own_size(runner, tmp_path, body, scale):
    code = tmp_path / "scaled.py"
    code.write_text("import numpy as np\n\n\ndef grad(z, y):\n"
                    "    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)\n"
                    "    y1 = np.eye(z.shape[1])[y]\n" + body)
    report = as_json(check(runner, "--grad-fn", f"{code}:grad", "--format", "json"))
    assert report["failed"] > 0
    assert report["scale"] == (None if scale is None else pytest.approx(scale, rel=1e-6))


@pytest.mark.parametrize("given", [["--k", "5"], ["--random", "3"], ["--random", "3", "--k", "3"]])
def test_random_input_options_with_a_file_are_refused(runner, given):
    # they shaped nothing: the file gives N and k, and a user who typed --k 5 would not know
    result = runner.invoke(app, ["check", LOGITS_K3, "--expr", "p - y", *given])
    assert result.exit_code == 2, result.output
    named = " and ".join(option for option in ("--random", "--k") if option in given)
    verb = "shape" if " and " in named else "shapes"
    assert result.stderr == (f"Error: {named} {verb} random inputs; {LOGITS_K3} gives its own "
                             f"samples and classes: drop {named}\n")


# --- the user's code as people write it ----------------------------------------------------------


def test_the_users_prints_go_to_stderr_and_leave_json_clean(runner, tmp_path):
    # a debugging print on stdout would corrupt the JSON a script reads there
    code = tmp_path / "chatty.py"
    code.write_text("import numpy as np\nprint('loading my grads')\n\n\ndef grad(z, y):\n"
                    "    print('grad of', z.shape)\n"
                    "    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)\n"
                    "    return p - np.eye(z.shape[1])[y]\n")
    result = check(runner, "--grad-fn", f"{code}:grad", "--format", "json")
    assert result.exit_code == 0, result.output
    assert as_json(result)["passed"] is True
    assert "loading my grads" in result.stderr and "grad of (8, 4)" in result.stderr


def test_an_exception_in_the_users_code_names_its_line_and_the_inputs(runner, tmp_path):
    code = tmp_path / "onehot.py"
    code.write_text("import numpy as np\n\n\ndef grad(z, y):\n"
                    "    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)\n"
                    "    return p - y  # y taken for one-hot rows\n")
    result = check(runner, "--grad-fn", f"{code}:grad")
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    message = result.stderr
    assert "onehot.py:grad raised ValueError: operands could not be broadcast" in message
    assert "onehot.py, line 6" in message, message
    assert "z (8, 4) float64 and y (8,) int64 class labels" in message, message
    assert "np.eye(k)[y]" in message, message


def test_a_missing_module_says_which_python_runs_the_code(runner, tmp_path):
    # xent often lives in a venv of its own, without the user's torch
    code = tmp_path / "needs.py"
    code.write_text("import numpy as np\nimport no_such_module_xent_test\n")
    result = check(runner, "--grad-fn", f"{code}:grad")
    assert result.exit_code == 2, result.output
    assert "ModuleNotFoundError: No module named 'no_such_module_xent_test'" in result.stderr
    assert "line 2" in result.stderr and sys.executable in result.stderr, result.stderr


@pytest.mark.parametrize("spec", ["mine:grad", "pkg.mine:grad", "./mine.py:grad"])
def test_a_module_colon_function_spec_finds_the_file(runner, tmp_path, monkeypatch, spec):
    # module:function is how uvicorn, entry points and pytest name code; the file is module.py
    source = pathlib.Path(CASES).read_text()
    (tmp_path / "mine.py").write_text(source)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mine.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    result = check(runner, "--grad-fn", spec)
    assert result.exit_code == 0, result.output
    assert "mine.py:grad" in result.stdout


@pytest.mark.parametrize("spec, says", [
    ("mine.py", "mine.py defines grad, hessian, loss"),
    ("mine.grad", "e.g. mine.py:grad"),
    ("nothere:grad", "no such file nothere.py"),
])
def test_a_spec_without_a_function_name_lists_the_files_functions(runner, tmp_path, monkeypatch,
                                                                    spec, says):
    (tmp_path / "mine.py").write_text("import numpy as np\n\n\ndef grad(z, y):\n    return z\n\n\n"
                                      "def hessian(z, y):\n    return z\n\n\n"
                                      "def loss(z, y):\n    return z\n\n\ndef _private(z):\n"
                                      "    return z\n")
    monkeypatch.chdir(tmp_path)
    result = check(runner, "--grad-fn", spec)
    assert result.exit_code == 2, result.output
    assert says in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_a_result_numpy_cannot_read_says_why(runner, tmp_path):
    # torch's tensor that requires grad refuses np.asarray; its own message names the fix
    code = tmp_path / "tensor.py"
    code.write_text("class Tensor:\n    def __array__(self, dtype=None, copy=None):\n"
                    "        raise RuntimeError(\"Can't call numpy() on Tensor that requires grad. "
                    "Use tensor.detach().numpy() instead.\")\n\n\n"
                    "def grad(z, y):\n    return Tensor()\n")
    result = check(runner, "--grad-fn", f"{code}:grad")
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    assert ("tensor.py:grad returned a Tensor that NumPy cannot read (RuntimeError: Can't call "
            "numpy() on Tensor that requires grad. Use tensor.detach().numpy() instead.)"
            in result.stderr), result.stderr


def test_a_user_gradient_that_indexes_with_the_ignore_index_is_told_of_it(runner, tmp_path):
    # p[rows, y] -= 1 with y = -100 raises for k < 100: the user's code never saw the ignore index
    code = tmp_path / "indexes.py"
    code.write_text("import numpy as np\n\n\ndef grad(z, y):\n"
                    "    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)\n"
                    "    p[np.arange(len(y)), y] -= 1\n    return p\n")
    logits = tmp_path / "z.csv"
    logits.write_text("z0,z1,z2,label\n1,2,3,0\n0,0,0,-100\n1,0,0,2\n0,1,0,-100\n")
    result = check(runner, str(logits), "--grad-fn", f"{code}:grad")
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    assert "IndexError: index -100 is out of bounds" in result.stderr
    assert ("y holds the ignore index -100 for 2 samples (the first is sample 1): their loss and "
            "gradient rows are 0" in result.stderr), result.stderr


def test_a_loss_function_given_to_loss_points_to_loss_fn(runner):
    # --loss picks xent's loss (ce or bce); a newcomer hands it their own function
    result = check(runner, "--loss", f"{CASES}:loss")
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"is not one of 'ce', 'bce'; your own loss function is checked with xent check --loss-fn {CASES}:loss" \
        in result.stderr, result.stderr
    assert "--loss-fn" not in check(runner, "--loss", "mse").stderr


@pytest.mark.parametrize("given", [["--grad-fn", f"{CASES}:grad"], ["--expr", "p - y"]])
def test_symbolic_with_a_gradient_of_the_users_is_refused(runner, given):
    # the symbolic route checks xent's own gradient: asked for beside the user's, it did nothing
    result = check(runner, *given, "--symbolic")
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"Error: --symbolic compares xent's own gradient with SymPy's; "
                             f"{given[0]} is checked against finite differences: drop --symbolic\n")
    assert check(runner, *given, "--no-symbolic").exit_code == 0


def test_a_file_named_by_several_options_is_imported_once(runner, tmp_path):
    # its top level may load a checkpoint or print: --grad-fn, --loss-fn and --hess-fn share it
    code = tmp_path / "once.py"
    code.write_text(pathlib.Path(CASES).read_text() + "\nprint('imported')\n")
    result = check(runner, "--grad-fn", f"{code}:grad", "--loss-fn", f"{code}:loss",
                   "--hess-fn", f"{code}:hessian")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("imported") == 1, result.stderr


@pytest.mark.parametrize("body, says", [
    ("    p = np.exp(z)\n", "returned None; the gradient is an array of shape (8, 4): is a return "
                           "statement missing?"),
    ("    return {'grad': z}\n", "returned a dict, not an array of numbers"),
    ("    return z, y\n", "returned a tuple of 2, not an array of numbers: return the gradient "
                         "alone"),
])
def test_a_result_that_is_no_array_says_what_it_is(runner, tmp_path, body, says):
    code = tmp_path / "odd.py"
    code.write_text("import numpy as np\n\n\ndef grad(z, y):\n" + body)
    result = check(runner, "--grad-fn", f"{code}:grad")
    assert result.exit_code == 2, result.output
    assert f"odd.py:grad {says}" in result.stderr and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize("method, evaluations", [("central", 8), ("complex", 4), ("richardson", 24)])
def test_a_long_full_check_says_how_to_check_faster_on_stderr(runner, monkeypatch, method,
                                                               evaluations):
    # entry by entry, 4 samples of 50,257 classes ran for minutes without a word
    from xent_cli import gradcheck

    quiet = check(runner, "--random", "3", "--k", "4", "--method", method, "--format", "json")
    assert quiet.exit_code == 0 and quiet.stderr == ""
    monkeypatch.setattr(gradcheck, "SLOW_CHECK_NUMBERS", 3 * 4 * evaluations - 1)
    noted = check(runner, "--random", "3", "--k", "4", "--method", method, "--format", "json")
    assert noted.exit_code == 0 and noted.stdout == quiet.stdout  # the report is the same
    assert noted.stderr == (
        f"Note: checking 3 × 4 entries one by one evaluates the loss {evaluations} times over the "
        f"whole batch ({3 * 4 * evaluations:.1e} numbers), which may take minutes; --directional "
        f"checks one random direction per sample in 2 evaluations\n")
    monkeypatch.setattr(gradcheck, "SLOW_CHECK_NUMBERS", 3 * 4 * evaluations)  # just within
    assert check(runner, "--random", "3", "--k", "4", "--method", method).stderr == ""
    directional = check(runner, "--random", "3", "--k", "4", "--method", method, "--directional")
    assert directional.exit_code == 0 and directional.stderr == ""


@pytest.mark.parametrize("options", [["--hessian"], ["--hessian", "--directional"]])
def test_a_hessian_too_large_to_hold_is_refused_before_any_check(runner, monkeypatch, options):
    # 4 samples of 20,000 classes: Hessians of 13 GB each, where the machine ran out of memory
    from xent_cli import gradcheck

    monkeypatch.setattr(gradcheck, "HESSIAN_MAX_ENTRIES", 2 * 4 * 4 - 1)
    monkeypatch.setattr(gradcheck, "SLOW_CHECK_NUMBERS", 1)  # no note of a wait that never comes
    checked = []
    monkeypatch.setattr(gradcheck, "check_gradient", lambda *a, **o: checked.append(1))
    result = check(runner, "--random", "2", "--k", "4", *options)
    assert result.exit_code == 2 and result.stdout == "" and checked == []
    assert result.stderr == (
        "Error: --hessian of 2 samples of 4 classes holds 32 entries (0.0 GB of float64, several "
        "times over); check the Hessian of fewer samples or classes (up to 31 entries)\n")
    monkeypatch.undo()
    monkeypatch.setattr(gradcheck, "HESSIAN_MAX_ENTRIES", 2 * 4 * 4)
    assert check(runner, "--random", "2", "--k", "4", *options).exit_code == 0


def test_a_user_loss_divided_by_n_is_told_to_return_each_samples_own_loss(runner, tmp_path):
    # the loss under test, not a gradient: backward() has no part in it
    code = tmp_path / "mine.py"
    code.write_text(f"import sys\nsys.path.insert(0, {str(CASES.rsplit('/', 1)[0])!r})\n"
                    "from usercode_cases import loss\n\n\n"
                    "def loss_per_n(z, y):\n    return loss(z, y) / len(y)\n")
    result = check(runner, "--loss-fn", f"{code}:loss_per_n")
    assert result.exit_code == 1, result.output
    shown = " ".join(result.stdout.split())
    assert ("Every numeric entry is 1/8 of the analytic one (1/N for N = 8 samples): that is each "
            "sample's loss divided as a reduction='mean' loss divides it; give each sample's own "
            "loss (reduction='none')." in shown), shown
