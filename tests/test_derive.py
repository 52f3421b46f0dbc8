"""xent derive: every step re-verified independently, the JSON gradient against NumPy, golden output."""

import json
import random

import numpy as np
import pytest
import sympy as sp

from xent_cli.cli import app
from xent_cli.derivation import derive


def softmax(z):
    e = np.exp(z - np.max(z))
    return e / e.sum()


def independent_value(step, k, point):
    """Evaluates a step's shown expression at a point, from its own definitions of S and p."""
    z = sp.symbols(f"z1:{k + 1}", real=True)
    p = sp.symbols(f"p1:{k + 1}", positive=True)
    S = sp.Symbol("S", positive=True)
    normaliser = sum(sp.exp(zn) for zn in z)
    expr = step.expr.xreplace({pn: sp.exp(zn) / S for pn, zn in zip(p, z)})
    expr = expr.xreplace({S: normaliser}).doit()
    return complex(expr.xreplace(point).evalf(30))


def random_point(k, rng, soft):
    z = sp.symbols(f"z1:{k + 1}", real=True)
    point = {zn: sp.Float(rng.uniform(-3, 3), 30) for zn in z}
    if soft:
        w = [rng.uniform(0.1, 1) for _ in range(k)]
        point.update({sp.Symbol(f"y{n + 1}", real=True): sp.Float(v / sum(w), 30)
                      for n, v in enumerate(w)})
    return point


@pytest.mark.parametrize("k", range(2, 11))
def test_every_step_agrees_with_the_one_before_at_random_points(k):
    rng = random.Random(k)
    for label in range(1, k + 1):
        derivation = derive(k, label)
        assert derivation.verified
        for _ in range(2):
            point = random_point(k, rng, soft=False)
            loss = [s for s in derivation.steps if s.case == "loss"]
            z = np.array([float(point[sp.Symbol(f"z{n + 1}", real=True)]) for n in range(k)])
            truth = -np.log(softmax(z)[label - 1])
            for step in loss[1:]:
                assert independent_value(step, k, point).real == pytest.approx(truth, rel=1e-9)
            for case in ("j = ℓ", "j ≠ ℓ"):
                chain = [s for s in derivation.steps if s.case == case]
                j = int(str(chain[0].lhs.args[1][0])[1:]) - 1
                expected = softmax(z)[j] - (1.0 if j == label - 1 else 0.0)
                for step in chain:
                    assert independent_value(step, k, point).real == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_soft_steps_hold_when_targets_sum_to_one(k):
    derivation = derive(k, 1, soft=True)
    assert derivation.verified
    assert any(s.rule == "targets sum to 1" for s in derivation.steps)
    rng = random.Random(k)
    point = random_point(k, rng, soft=True)
    z = np.array([float(point[sp.Symbol(f"z{n + 1}", real=True)]) for n in range(k)])
    y = np.array([float(point[sp.Symbol(f"y{n + 1}", real=True)]) for n in range(k)])
    truth = -(y * np.log(softmax(z))).sum()
    for step in derivation.steps:
        if step.case == "loss":
            assert independent_value(step, k, point).real == pytest.approx(truth, rel=1e-9)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_hessian_matches_finite_differences_of_numpy_softmax(k, runner):
    result = runner.invoke(app, ["derive", "--k", str(k), "--hessian", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    z = np.random.default_rng(k).normal(size=k)
    zs = sp.symbols(f"z1:{k + 1}")  # as sympify reads them: no assumptions
    h = 1e-6
    for i in range(k):
        for j in range(k):
            step = np.zeros(k)
            step[j] = h
            numeric = (softmax(z + step)[i] - softmax(z - step)[i]) / (2 * h)
            value = float(sp.sympify(data["hessian"][i][j]).subs(dict(zip(zs, z))))
            assert value == pytest.approx(numeric, abs=1e-8)
    assert all(all(row) for row in data["hessian_verified"])


@pytest.mark.parametrize("k,label,soft", [(2, 1, False), (4, 3, False), (6, 6, False), (3, 2, True)])
def test_json_gradient_is_softmax_minus_y(k, label, soft, runner):
    argv = ["derive", "--k", str(k), "--label", str(label), "--format", "json"] + (["--soft"] if soft else [])
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["k"] == k and all(s["verified"] for s in data["steps"])
    # soft targets have no true class: --label only picks the j whose steps are shown
    assert data["label"] == (None if soft else label)
    assert f"Derivative(CE, z{label})" in {s["lhs"] for s in data["steps"]}
    rng = np.random.default_rng(k)
    for _ in range(3):
        z = rng.normal(size=k) * 3
        y = rng.dirichlet(np.ones(k)) if soft else np.eye(k)[label - 1]
        names = {f"z{n + 1}": z[n] for n in range(k)} | {f"y{n + 1}": y[n] for n in range(k)}
        got = [float(sp.sympify(g).subs({sp.Symbol(n): v for n, v in names.items()}))
               for g in data["gradient"]]
        assert np.allclose(got, softmax(z) - y, atol=1e-12)


def test_the_seeds_case_1_is_reported_failed_with_a_counterexample():
    derivation = derive(3, 1)
    pitfall = derivation.pitfall
    assert pitfall is not None and not pitfall.verification.ok
    assert "∂CE/∂z2 = p_2 = 1/3, not 0" in pitfall.verification.detail


def test_case_1_is_refuted_where_a_student_can_check_it_by_hand():
    # The counterexample was a random point, z = (0, -11/3, 1) with p_2 = 0.00682762: right,
    # but no student checks that by hand, and it ignored the logits given with --at.
    for k, label in ((2, 1), (3, 1), (5, 5)):
        detail = derive(k, label).pitfall.verification.detail
        j = label % k + 1
        zeros = "(" + ", ".join(["0"] * k) + ")"
        assert f"at z = {zeros}, ∂CE/∂z{j} = p_{j} = 1/{k}" in detail, detail
        # where the post goes wrong: it sums only n ≠ ℓ and drops the ℓ-th term, −log p_ℓ
        assert f"drops −log p_{label} = log S − z{label}" in detail, detail
    at = (1.0, 2.0, 0.0)
    detail = derive(3, 1, at=at).pitfall.verification.detail
    shown = float(detail.split("∂CE/∂z2 = p_2 = ")[1].split(",")[0])
    assert "at z = (1, 2, 0)" in detail
    assert shown == pytest.approx(softmax(np.array(at))[1], rel=1e-5)


@pytest.mark.parametrize("label, soft", [(1, False), (2, False), (1, True)])
def test_two_classes_are_the_binary_cross_entropy_of_the_difference(label, soft, runner):
    # With K = 2, p_1 = σ(z1 − z2): softmax cross-entropy is --loss bce's one logit z1 − z2,
    # the link a course draws between the two, now a step checked like the others.
    from xent_cli.derivation_bce import derive_bce

    derivation = derive(2, label, soft=soft)
    step = next(s for s in derivation.steps if s.rule == "two classes")
    assert step.verification.method == "identity" and derivation.verified
    binary = derive_bce(1).gradient[0]  # ∂BCE/∂z1 of one class, σ(z1) − y1, by its own steps
    z1, z2, y1 = sp.symbols("z1 z2 y1", real=True)
    rng = np.random.default_rng(label)
    for _ in range(3):
        z = rng.normal(size=2) * 3
        y = rng.dirichlet(np.ones(2)) if soft else np.eye(2)[label - 1]
        point = {z1: z[0], z2: z[1], y1: y[0]}
        bce = binary.direct.xreplace({z1: z[0] - z[1], y1: y[0]})
        assert float(step.value.xreplace(point)) == pytest.approx(float(bce), abs=1e-12)
        assert float(step.value.xreplace(point)) == pytest.approx(softmax(z)[0] - y[0], abs=1e-12)
    latex = runner.invoke(app, ["derive", "--k", "2", "--format", "latex"]).stdout
    assert r"\sigma{\left(z_{1} - z_{2} \right)}" in latex, latex
    assert "two classes" not in runner.invoke(app, ["derive", "--k", "3"]).stdout


def test_at_evaluates_every_step(runner):
    result = runner.invoke(app, ["derive", "--k", "3", "--at", "1,2,0", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    p = softmax(np.array([1.0, 2.0, 0.0]))
    assert float(data["steps"][-2]["at"]) == pytest.approx(p[1], rel=1e-5)  # j ≠ ℓ: p_2


@pytest.mark.parametrize("label", [1, 3])
def test_json_at_carries_every_entry_the_tables_show(label, runner):
    # The tables show each gradient and Hessian entry at --at; the JSON held only the steps'
    # values, for one representative j, so a script had no ∂CE/∂z3 at the point.
    z = np.array([1.0, 2.0, 0.0, -1.5])
    result = runner.invoke(app, ["derive", "--k", "4", "--label", str(label), "--hessian",
                                 "--at", "1,2,0,-1.5", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    p = softmax(z)
    assert data["gradient_at"] == pytest.approx(p - np.eye(4)[label - 1], rel=1e-12, abs=1e-15)
    assert np.array(data["hessian_at"]) == pytest.approx(np.diag(p) - np.outer(p, p), abs=1e-15)
    plain = json.loads(runner.invoke(app, ["derive", "--k", "4", "--format", "json"]).stdout)
    assert plain["gradient_at"] is None and "hessian_at" not in plain


@pytest.mark.parametrize("argv", [
    ["--k", "1"], ["--k", "501"], ["--k", "61", "--hessian"], ["--k", "3", "--label", "4"],
    ["--k", "3", "--label", "0"], ["--k", "3", "--at", "1,2"], ["--k", "3", "--at", "1,x,2"],
    ["--k", "3", "--at", "1,nan,2"], ["--k", "3", "--claim", "p_j +"],
])
def test_bad_input_is_one_line_and_exit_2(argv, runner):
    result = runner.invoke(app, ["derive", *argv])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize("argv, cap", [
    (["--k", "501", "--soft"], "the cap of 500 for derive"),  # --soft has no cap of its own
    (["--k", "61", "--soft", "--hessian"], "the cap of 60 with --hessian"),
])
def test_the_cap_message_names_the_option_that_sets_it(argv, cap, runner):
    result = runner.invoke(app, ["derive", *argv])
    assert result.exit_code == 2, result.output
    assert cap in result.stderr


def test_claims_exit_1_when_false_and_0_when_true(runner):
    false = runner.invoke(app, ["derive", "--k", "3", "--claim", "0", "--format", "json"])
    assert false.exit_code == 1, false.output
    assert json.loads(false.stdout)["counterexample"] is not None
    true = runner.invoke(app, ["derive", "--k", "3", "--claim", "p_j - y_j"])
    assert true.exit_code == 0, true.output


def test_golden_k3(runner, golden):
    for fmt, name in (("markdown", "derive_k3.md"), ("rich", "derive_k3.txt")):
        result = runner.invoke(app, ["derive", "--k", "3", "--format", fmt])
        assert result.exit_code == 0, result.output
        golden(name, result.stdout)


def test_full_tables_of_many_classes_print_in_seconds():
    # Each direct derivative holds the K-term sum S; printed in SymPy's sorted order, every row
    # sorted it again: --k 500 --full took 25 s in silence. As built, it prints the same text.
    import time

    from xent_cli.render.derivation import to_markdown, to_rich

    derivation = derive(300)
    started = time.process_time()  # CPU time: the machine is shared
    to_rich(derivation, full=True)
    to_markdown(derivation, full=True)
    assert time.process_time() - started < 6.0  # 12 s before, 2.5 s after


def test_large_k_prints_a_summary(runner):
    result = runner.invoke(app, ["derive", "--k", "40"])
    assert result.exit_code == 0, result.output
    assert "40 of 40 entries verified" in result.stdout and "…" in result.stdout


@pytest.mark.parametrize("soft", [False, True])
def test_a_wrong_closed_form_still_fails_the_fast_check(soft):
    from xent_cli.derivation import Symbols, verify

    s = Symbols(4, soft, 1)
    y2 = s.y[1]
    right = s.value(s.p[1] - y2)
    direct = s.d(-s.value(sp.log(s.p[0])) if not soft else
                 sp.Add(*(-yn * sp.log(sp.exp(zn) / s.S) for yn, zn in zip(s.y, s.z))), s.z[1])
    assert verify(s, direct, right, targets_sum_to_one=soft).ok
    for wrong in (s.value(s.p[1]) + 1, -s.value(s.p[1]), s.value(s.p[1] ** 2 - y2)):
        verification = verify(s, direct, wrong, targets_sum_to_one=soft)
        assert not verification.ok and "differs at z" in verification.detail


def test_treating_s_as_constant_fails_every_derivation(monkeypatch):
    from xent_cli.derivation import Symbols

    # The seed's mistake, injected: ∂S/∂z_j = 0. Steps and entries must be reported failed.
    monkeypatch.setattr(Symbols, "dS", lambda self, zj: sp.Integer(0))
    for kwargs in (dict(k=3), dict(k=3, soft=True), dict(k=3, hessian=True)):
        derivation = derive(**kwargs)
        assert not derivation.verified
        assert not all(e.verification.ok for e in derivation.gradient)


def test_soft_targets_reach_large_k():
    derivation = derive(100, 7, soft=True)
    assert derivation.verified
    assert {e.verification.method for e in derivation.gradient} == {"identity"}


def test_at_keeps_the_digits_that_p_l_minus_1_cancels():
    # At z = (100, 0, -100), p_1 − 1 = −(e^-100 + e^-200)/(1 + e^-100 + e^-200) ≈ −3.7e-44: 30
    # working digits leave only rounding noise of −1 + e^100/S (about 1e-31), a wrong number.
    derivation = derive(3, 1, hessian=True, at=(100.0, 0.0, -100.0))
    q = np.exp(-100.0) + np.exp(-200.0)
    p = softmax(np.array([100.0, 0.0, -100.0]))
    assert derivation.gradient[0].at == pytest.approx(-q / (1 + q), rel=1e-9, abs=0)
    assert derivation.hessian[0][0].at == pytest.approx(q / (1 + q) ** 2, rel=1e-9, abs=0)
    assert derivation.hessian[1][1].at == pytest.approx(p[1] * (1 - p[1]), rel=1e-9, abs=0)
    for step in derivation.steps:
        if step.case == "j = ℓ" and step.at is not None and step.rule != "differentiate":
            assert float(step.at) == pytest.approx(-q / (1 + q), rel=1e-5, abs=0), step


@pytest.mark.parametrize("argv", [["--k", "3", "--hessian"], ["--k", "3", "--label", "2", "--soft"],
                                  ["--loss", "bce", "--k", "2", "--hessian"]])
def test_latex_compiles_under_pdflatex_and_writes_partial_derivatives(argv, runner):
    # A teacher pastes this into slides: pdfLaTeX stops at ℓ, ≠ or σ outside math ("Unicode
    # character not set up"), and CE depends on every z_n, so d/dz_1 would be the wrong symbol.
    result = runner.invoke(app, ["derive", *argv, "--format", "latex"])
    assert result.exit_code == 0, result.output
    body = [line for line in result.stdout.splitlines() if not line.startswith("%")]
    assert all(line.isascii() for line in body), [line for line in body if not line.isascii()]
    assert "\\partial" in result.stdout and "\\frac{d}" not in result.stdout
    assert "\\frac{d^{2}}" not in result.stdout and "d z_{" not in result.stdout


@pytest.mark.parametrize("argv, shown", [
    (["--k", "3"], r"\frac{\partial CE}{\partial z_{2}} &= p_{2} \neq 0 "),
    (["--k", "4", "--label", "4"], r"\frac{\partial CE}{\partial z_{1}} &= p_{1} \neq 0 "),
    (["--loss", "bce", "--k", "2"],
     r"\frac{\partial BCE}{\partial z_{1}} &= p_{1} - y_{1} \neq - y_{1} + \frac{e^{z_{1}}}{S} "),
])
def test_latex_shows_what_the_pitfall_should_have_found(argv, shown, runner):
    # Compiled, the slide showed only '∂CE/∂z_2 ≠ 0, FAILED': the counterexample is a comment,
    # and nothing on the line said what the derivative is.
    result = runner.invoke(app, ["derive", *argv, "--format", "latex"])
    assert result.exit_code == 0, result.output
    assert shown in result.stdout, result.stdout


def test_markdown_writes_partial_derivatives(runner):
    result = runner.invoke(app, ["derive", "--k", "3", "--hessian", "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert "\\frac{\\partial CE}{\\partial z_{1}}" in result.stdout
    assert "\\frac{d}" not in result.stdout and "d z_{" not in result.stdout


@pytest.mark.parametrize("at", [(1e6, 0.0, -1e6), (1e300, 0.0, -1e300)])
def test_at_far_from_0_finishes_and_shows_what_float64_holds(at):
    # The working digits follow the spread of z only as far as float64 can show the difference:
    # digits for a spread of 2e6 took minutes, and 1e300 crashed SymPy's evalf.
    derivation = derive(3, 1, hessian=True, at=at)
    assert derivation.verified
    assert [abs(e.at) for e in derivation.gradient] == [0.0, 0.0, 0.0]  # p − y underflows
    assert abs(derivation.hessian[0][1].at) == 0.0


def test_second_derivatives_read_as_written_by_hand(runner):
    # twice by one variable is ∂²CE/∂z1², not ∂²CE/∂z1∂z1; mixed stays ∂²CE/∂z1∂z2
    result = runner.invoke(app, ["derive", "--k", "2", "--hessian"])
    assert result.exit_code == 0, result.output
    assert "∂²CE/∂z1² = ∂p1/∂z1" in result.stdout
    assert "∂²CE/∂z1∂z2 = ∂p1/∂z2" in result.stdout
    assert "∂z1∂z1" not in result.stdout


@pytest.mark.parametrize("argv", [["--k", "3"], ["--k", "3", "--hessian", "--at", "1,0,-1"],
                                  ["--loss", "bce", "--k", "2"]])
@pytest.mark.parametrize("fmt", ["rich", "markdown", "latex", "json"])
def test_output_writes_what_stdout_shows(argv, fmt, runner, tmp_path):
    # A teacher keeps the LaTeX for slides: 'derive ... > case1.tex' leaves an empty file when
    # the command is refused, as the shell makes it first.
    shown = runner.invoke(app, ["derive", *argv, "--format", fmt])
    path = tmp_path / f"derivation.{fmt}"
    written = runner.invoke(app, ["derive", *argv, "--format", fmt, "--output", str(path)])
    assert written.exit_code == shown.exit_code == 0, written.output
    assert written.stdout == "" and path.read_text(encoding="utf-8") == shown.stdout


def test_output_of_a_false_claim_is_written_and_exits_1(runner, tmp_path):
    path = tmp_path / "claim.md"
    shown = runner.invoke(app, ["derive", "--k", "3", "--claim", "j != l: 0",
                                "--format", "markdown"])
    written = runner.invoke(app, ["derive", "--k", "3", "--claim", "j != l: 0", "--format",
                                  "markdown", "--output", str(path)])
    assert written.exit_code == shown.exit_code == 1, written.output
    assert path.read_text(encoding="utf-8") == shown.stdout


@pytest.mark.parametrize("argv", [["--k", "1"], ["--k", "3", "--at", "1,2"],
                                  ["--k", "3", "--claim", "p_j +"]])
def test_output_is_left_as_it_was_when_the_input_is_refused(argv, runner, tmp_path):
    path = tmp_path / "kept.tex"
    path.write_text("old slides\n")
    result = runner.invoke(app, ["derive", *argv, "--output", str(path)])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert path.read_text() == "old slides\n" and sorted(tmp_path.iterdir()) == [path]


def test_output_in_a_missing_directory_is_refused_before_deriving(runner, tmp_path):
    result = runner.invoke(app, ["derive", "--k", "3", "--output", str(tmp_path / "no" / "d.md")])
    assert result.exit_code == 2, result.output
    assert "does not exist" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize("kwargs", [dict(k=3, at=(1.0, 2.0, 0.0)), dict(k=3, hessian=True),
                                    dict(k=4, label=2, soft=True)])
@pytest.mark.parametrize("width", [60, 80])
def test_narrow_terminals_fold_long_expressions_instead_of_cutting_them(kwargs, width):
    # At 80 columns the definition read 'CE = -y1*log(exp(z… - y2*log(exp(z2…': SymPy's text has
    # no spaces inside a term, and Rich cut each such word at the column's width.
    import io

    from rich.console import Console

    from xent_cli.render.derivation import to_rich

    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None).print(to_rich(derive(**kwargs)))
    cut = [line for line in buffer.getvalue().replace("y1…yK", "y1..yK").splitlines()
           if "…" in line and not set(line) <= set("│… ")]  # a summary row is only '…'
    assert not cut, cut


@pytest.mark.parametrize("argv", [["--k", "2", "--hessian"], ["--loss", "bce", "--k", "2"]])
def test_json_steps_say_what_their_rule_means(argv, runner):
    # The Markdown printed each rule's meaning; the JSON gave only its name, 'linearity', so a
    # page built from it could not say what a step does, nor what the seed's Case 1 did wrong.
    result = runner.invoke(app, ["derive", *argv, "--format", "json"])
    data = json.loads(result.stdout)
    steps = data["steps"] + data.get("hessian_steps", []) + [data["pitfall"]]
    assert all(len(step["description"]) > 10 for step in steps), steps
    if data["loss"] == "ce":
        assert "drops −log p_ℓ" in data["pitfall"]["description"]


def test_markdown_gradient_table_has_the_values_at_at(runner):
    # The rich table has a column 'at z'; the Markdown one had none, so a post written with
    # --at 1,2,0 showed ∂CE/∂z3 only as a formula.
    result = runner.invoke(app, ["derive", "--k", "3", "--at", "1,2,0", "--format", "markdown"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ✓ |")]
    p = softmax(np.array([1.0, 2.0, 0.0])) - np.eye(3)[0]
    assert [float(row.split("|")[-2]) for row in rows] == pytest.approx(p, rel=1e-5)
    plain = runner.invoke(app, ["derive", "--k", "3", "--format", "markdown"]).stdout
    assert "| | j | SymPy's direct derivative | closed form |" in plain.splitlines()


def test_the_sum_s_is_written_in_the_order_of_the_classes(runner):
    # SymPy sorts exp(z10) before exp(z2) by name: the table read 'exp(z1) + exp(z10) + exp(z11)
    # + exp(z12) + exp(z2) + …', which a student reads as a sum with classes missing.
    natural = " + ".join(f"exp(z{n})" for n in range(1, 13))
    import io

    from rich.console import Console

    from xent_cli.render.derivation import to_rich

    wide = io.StringIO()  # wide enough that no row wraps
    Console(file=wide, width=400, color_system=None).print(to_rich(derive(12), full=True))
    assert f"exp(z5)/({natural})" in wide.getvalue()
    data = json.loads(runner.invoke(app, ["derive", "--k", "12", "--format", "json"]).stdout)
    assert data["gradient"][4] == f"exp(z5)/({natural})"
    latex = runner.invoke(app, ["derive", "--k", "12", "--format", "markdown"]).stdout
    assert " + ".join(f"e^{{z_{{{n}}}}}" for n in range(1, 13)) in latex
