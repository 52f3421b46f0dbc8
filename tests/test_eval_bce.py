"""`xent eval --loss bce`: binary cross-entropy per class against hand values, the naive formula,
PyTorch, chunked reading, and every bad input."""

import csv
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import table_rows
from test_eval import assert_bad_input_fails_cleanly
from xent_cli import bce, data, stream
from xent_cli.cli import app

ROOT = pathlib.Path(__file__).resolve().parent.parent
LOGITS = ROOT / "examples" / "multilabel_logits.csv"
TARGETS = ROOT / "examples" / "multilabel_targets.csv"

Z = [[2.0, -1.0, 0.0, -3.0], [-2.0, 1.5, 0.5, -0.5], [0.0, 0.0, 0.0, 0.0],
     [3.0, 2.0, -2.0, -1.0], [-1.0, -2.0, 1.0, 2.5], [1.0, -0.5, -1.5, 0.5]]
T = [[1, 0, 1, 0], [0, 1, 1, 0], [1, 0, 0, 1], [1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 0, 0]]
# probability targets: rows need not sum to 1
SOFT_Z = [[0.3, -1.2, 2.0], [1.0, 0.0, -0.7]]
SOFT_T = [[0.2, 0.9, 1.0], [0.0, 0.5, 0.35]]


# --- an independent oracle: the textbook formula, one element at a time ------------------------

def naive_elements(z, t, weight=None, pos_weight=None):
    """Returns the (N, k) losses -w [p_w t log σ(z) + (1 - t) log(1 - σ(z))], written plainly."""
    out = []
    for row, targets in zip(z, t):
        k = len(row)
        w, pw = weight or [1.0] * k, pos_weight or [1.0] * k
        out.append([])
        for c, (v, y) in enumerate(zip(row, targets)):
            sigma = 1 / (1 + math.exp(-v))
            out[-1].append(-w[c] * (pw[c] * y * math.log(sigma) + (1 - y) * math.log(1 - sigma)))
    return out


def naive_gradient(z, t, reduction, weight=None, pos_weight=None):
    """Returns d(reported loss)/dz: w [(1 - t) σ - p_w t (1 - σ)], over N × k for 'mean'."""
    divisor = len(z) * len(z[0]) if reduction == "mean" else 1
    grad = []
    for row, targets in zip(z, t):
        k = len(row)
        w, pw = weight or [1.0] * k, pos_weight or [1.0] * k
        grad.append([w[c] * ((1 - y) * s - pw[c] * y * (1 - s)) / divisor
                     for c, (y, s) in enumerate(zip(targets, (1 / (1 + math.exp(-v)) for v in row)))])
    return grad


def write_table(path, rows, names):
    path.write_text(",".join(names) + "\n" + "".join(",".join(map(repr, r)) + "\n" for r in rows))
    return str(path)


def run(runner, *arguments):
    result = runner.invoke(app, ["eval", "--loss", "bce", *map(str, arguments)])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    return result


def summary_of(runner, *arguments):
    return json.loads(run(runner, *arguments, "--format", "json").stdout)


# --- the example and its golden output --------------------------------------------------------

def test_example_matches_its_golden_output(runner, golden, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = run(runner, "examples/multilabel_logits.csv", "--targets",
                 "examples/multilabel_targets.csv", "--show", "2")
    golden("eval_bce_multilabel.txt", result.stdout)


def test_example_files_are_the_hand_made_ones_these_tests_use():
    assert np.array_equal(np.loadtxt(LOGITS, delimiter=",", skiprows=1), Z)
    assert np.array_equal(np.loadtxt(TARGETS, delimiter=",", skiprows=1), T)


def test_example_by_hand(runner):
    summary = summary_of(runner, LOGITS, "--targets", TARGETS, "--reduction", "sum")
    # sample 2 has z = 0 everywhere: σ = 1/2, so each class loses log 2 whatever its target
    assert (summary["n"], summary["k"], summary["divisor"]) == (6, 4, 24.0)
    # predictions (z > 0) against targets: sample 0 misses bird (z = 0 is 'no'), sample 2 cat and
    # fish, sample 5 says fish; samples 1, 3 and 4 are right in every class
    assert summary["exact_match"] == 3 / 6
    assert summary["hamming_loss"] == 4 / 24
    assert "accuracy" not in summary and "perplexity" not in summary
    # softplus values: log(1 + e^-2) = 0.126928..., log(1 + e^-1) = 0.313261..., and so on
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731  -log σ(-x)
    hand = (softplus(-2) + softplus(-1) + math.log(2) + softplus(-3)  # sample 0
            + softplus(-2) + softplus(-1.5) + softplus(-0.5) + softplus(-0.5)
            + 4 * math.log(2)
            + softplus(-3) + softplus(-2) + softplus(-2) + softplus(-1)
            + softplus(-1) + softplus(-2) + softplus(-1) + softplus(-2.5)
            + softplus(-1) + softplus(-0.5) + softplus(-1.5) + softplus(0.5))
    assert summary["loss"] == pytest.approx(hand, rel=1e-15)


def test_worked_sample_shows_sigma_element_loss_and_gradient(runner):
    shown = run(runner, LOGITS, "--targets", TARGETS, "--show", "3").stdout
    assert "sample 2 (line 4)" in shown and "sample 3" not in shown
    assert "σ(z)" in shown and "σ − t" in shown
    assert f"{math.log(2):.6g}" in shown  # sample 2's element loss
    assert f"{0.5 / 24:.6g}" in shown and f"{-0.5 / 24:.6g}" in shown  # its mean gradient
    assert f"{4 * math.log(2):.6g}" in shown  # and its loss, the sum over the classes
    assert "/ 24 (the mean divides by N × k)" in shown
    assert "perplexity" not in shown and "exact match" in shown and "Hamming loss" in shown


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_confident_elements_sigma_minus_t_agrees_with_its_gradient(runner, tmp_path, dtype):
    # σ(50) rounds to 1: σ − t was shown 0 beside a gradient of −σ(−50) / 2 = −9.6e-23
    (tmp_path / "z.csv").write_text("a,b\n50,-50\n")
    (tmp_path / "t.csv").write_text("a,b\n1,0\n")
    shown = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--loss", "bce", "--targets",
                                str(tmp_path / "t.csv"), "--dtype", dtype]).stdout
    rows = table_rows(shown)
    tiny = float(np.exp(np.array(-50.0, dtype=dtype)))  # σ(−50) to the dtype's precision
    assert rows["σ − t"] == [f"{-tiny:.6g}", f"{tiny:.6g}"]
    assert rows["gradient"] == [f"{-tiny / 2:.6g}", f"{tiny / 2:.6g}"]


def test_help_shows_the_bce_example_and_the_options(runner):
    result = runner.invoke(app, ["eval", "--help"])
    assert result.exit_code == 0
    assert "--loss bce --targets examples/multilabel_targets.csv" in result.stdout
    assert "--pos-weight" in result.stdout


def test_eval_bce_imports_neither_sympy_nor_dataframe_engines():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from xent_cli.cli import app\n"
        f"result = CliRunner().invoke(app, ['eval', {str(LOGITS)!r}, '--loss', 'bce', '--targets', "
        f"{str(TARGETS)!r}])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in ('sympy', 'polars', 'pandas', 'torch') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


# --- PyTorch's semantics: the naive formula and torch itself, every reduction ------------------

CASES = {
    "plain": {},
    "weight": {"weight": [1.0, 2.0, 0.5, 0.0]},
    "pos-weight": {"pos_weight": [3.0, 0.5, 1.0, 2.0]},
    "both": {"weight": [0.5, 1.5, 2.0, 1.0], "pos_weight": [2.0, 1.0, 0.25, 4.0]},
}


def options_of(case):
    arguments = []
    for name, option in (("weight", "--weight"), ("pos_weight", "--pos-weight")):
        if name in case:
            arguments += [option, ",".join(map(str, case[name]))]
    return arguments


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", CASES)
def test_loss_follows_the_naive_formula(runner, case, reduction):
    options = CASES[case]
    summary = summary_of(runner, LOGITS, "--targets", TARGETS, "--reduction", reduction,
                         *options_of(options))
    elements = naive_elements(Z, T, **options)
    total = math.fsum(sum(elements, []))
    assert summary["loss_sum"] == pytest.approx(total, rel=1e-14)
    assert summary["loss_mean"] == pytest.approx(total / 24, rel=1e-14)
    expected = {"mean": total / 24, "sum": total, "none": elements}[reduction]
    if reduction == "none":  # PyTorch's (N, k) array
        np.testing.assert_allclose(summary["loss"], expected, rtol=1e-14, atol=1e-300)
    else:
        assert summary["loss"] == pytest.approx(expected, rel=1e-14)
    assert (summary["weight"], summary["pos_weight"]) == (options.get("weight"),
                                                         options.get("pos_weight"))


def read_output(path):
    with open(path, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    k = sum(1 for name in rows[0] if name.startswith("grad_"))
    assert list(rows[0])[:3] == ["sample", "line", "loss"]  # no label, no argmax prediction
    column = lambda prefix: [[float(r[f"{prefix}_{c}"]) for c in range(k)] for r in rows]  # noqa: E731
    return [float(r["loss"]) for r in rows], column("prob"), column("grad"), [int(r["line"]) for r in rows]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", CASES)
def test_output_rows_follow_the_naive_formula(runner, tmp_path, case, reduction):
    options = CASES[case]
    out = tmp_path / "rows.csv"
    run(runner, LOGITS, "--targets", TARGETS, "--reduction", reduction, "--output", out,
        *options_of(options))
    per_sample, probs, grad, lines = read_output(out)
    assert lines == [2, 3, 4, 5, 6, 7]
    assert per_sample == pytest.approx([sum(row) for row in naive_elements(Z, T, **options)],
                                       rel=1e-14)
    np.testing.assert_allclose(probs, [[1 / (1 + math.exp(-v)) for v in row] for row in Z],
                               rtol=1e-15)
    np.testing.assert_allclose(grad, naive_gradient(Z, T, reduction, **options), rtol=1e-14,
                               atol=1e-300)


def test_probability_targets_need_not_sum_to_1(runner, tmp_path):
    z = write_table(tmp_path / "z.csv", SOFT_Z, ["a", "b", "c"])
    t = write_table(tmp_path / "t.csv", SOFT_T, ["a", "b", "c"])
    summary = summary_of(runner, z, "--targets", t, "--reduction", "sum")
    assert summary["loss"] == pytest.approx(math.fsum(sum(naive_elements(SOFT_Z, SOFT_T), [])),
                                            rel=1e-14)
    # t > 0.5 counts as 'yes': row 0 is (no, yes, yes), predicted (yes, no, yes): 2 wrong;
    # row 1 is (no, no, no) (0.5 is not above 1/2), predicted (yes, no, no): 1 wrong
    assert summary["hamming_loss"] == 3 / 6 and summary["exact_match"] == 0.0


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", CASES)
def test_matches_torch(runner, case, reduction):
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("torch.nn.functional")
    options = CASES[case]
    summary = summary_of(runner, LOGITS, "--targets", TARGETS, "--reduction", reduction,
                         *options_of(options))
    kwargs = {name: torch.tensor(value, dtype=torch.float64) for name, value in options.items()}
    z = torch.tensor(Z, dtype=torch.float64, requires_grad=True)
    loss = functional.binary_cross_entropy_with_logits(
        z, torch.tensor(T, dtype=torch.float64), reduction=reduction, **kwargs)
    if reduction == "none":
        np.testing.assert_allclose(summary["loss"], loss.detach().numpy(), rtol=1e-13, atol=1e-300)
    else:
        assert summary["loss"] == pytest.approx(loss.item(), rel=1e-14)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", CASES)
def test_output_gradient_is_torchs(runner, tmp_path, case, reduction):
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("torch.nn.functional")
    options = CASES[case]
    out = tmp_path / "rows.csv"
    run(runner, LOGITS, "--targets", TARGETS, "--reduction", reduction, "--output", out,
        *options_of(options))
    per_sample, probs, grad, _ = read_output(out)
    kwargs = {name: torch.tensor(value, dtype=torch.float64) for name, value in options.items()}
    z = torch.tensor(Z, dtype=torch.float64, requires_grad=True)
    loss = functional.binary_cross_entropy_with_logits(
        z, torch.tensor(T, dtype=torch.float64), reduction=reduction, **kwargs)
    # 'none': each element's own derivative, what backward() of the summed elements gives
    (loss.sum() if reduction == "none" else loss).backward()
    np.testing.assert_allclose(grad, z.grad.numpy(), rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(probs, torch.sigmoid(z).detach().numpy(), rtol=1e-15)
    elements = functional.binary_cross_entropy_with_logits(
        z, torch.tensor(T, dtype=torch.float64), reduction="none", **kwargs)
    np.testing.assert_allclose(per_sample, elements.sum(dim=1).detach().numpy(), rtol=1e-14)


def test_output_in_small_chunks_is_the_one_piece_file(runner, tmp_path, monkeypatch):
    # 'mean': the gradient rows divide by N × k of the whole file, known before the rows are written
    z, t = _pair(tmp_path, n=50, k=6, seed=3)
    files = {}
    for chunk in (50, 7):
        monkeypatch.setattr(stream, "CHUNK_ROWS", chunk)
        out = tmp_path / f"rows{chunk}.csv"
        result = run(runner, z, "--targets", t, "--output", out, "--format", "json")
        files[chunk] = (result.stdout, out.read_bytes())
    assert files[7] == files[50]
    _, _, grad, _ = read_output(tmp_path / "rows7.csv")
    loaded = data.read_eval_input(z, targets_path=t)
    assert np.array_equal(grad, bce.binary_cross_entropy(loaded.logits, loaded.targets).grad)


def test_float32_agrees_with_float64_to_float32_precision(runner):
    low = summary_of(runner, LOGITS, "--targets", TARGETS, "--dtype", "float32")
    high = summary_of(runner, LOGITS, "--targets", TARGETS)
    assert low["dtype"] == "float32"
    assert low["loss"] == pytest.approx(high["loss"], rel=1e-6)


def test_large_logits_stay_finite_and_exact(runner, tmp_path):
    # a confident right answer keeps its tiny loss e^-40; a confident wrong one costs |z|
    z = write_table(tmp_path / "z.csv", [[-40.0, 1e300, -1e300]], ["a", "b", "c"])
    t = write_table(tmp_path / "t.csv", [[0, 0, 0]], ["a", "b", "c"])
    summary = summary_of(runner, z, "--targets", t, "--reduction", "none")
    assert summary["loss"][0][0] == pytest.approx(math.exp(-40), rel=1e-15)
    assert summary["loss"][0][1] == 1e300 and summary["loss"][0][2] == 0.0


def test_csv_summary_has_the_multilabel_fields(runner):
    result = run(runner, LOGITS, "--targets", TARGETS, "--format", "csv", "--pos-weight",
                 "1,2,3,4")
    rows = list(csv.DictReader(result.stdout.splitlines()))
    assert len(rows) == 1
    assert (rows[0]["criterion"], rows[0]["exact_match"], rows[0]["pos_weight"]) == (
        "bce", "0.5", "1.0;2.0;3.0;4.0")
    assert float(rows[0]["hamming_loss"]) == 4 / 24


def test_npz_targets_and_npy_logits_read_like_csv(runner, tmp_path):
    expected = summary_of(runner, LOGITS, "--targets", TARGETS)["loss"]
    np.savez(tmp_path / "both.npz", logits=np.array(Z), targets=np.array(T, dtype=float))
    assert summary_of(runner, tmp_path / "both.npz")["loss"] == expected
    np.save(tmp_path / "z.npy", np.array(Z))
    np.save(tmp_path / "t.npy", np.array(T, dtype=np.int64))  # integer multi-hot is fine
    assert summary_of(runner, tmp_path / "z.npy", "--targets", tmp_path / "t.npy")["loss"] == expected
    assert summary_of(runner, LOGITS, "--targets", tmp_path / "t.npy")["loss"] == expected  # CSV logits


# --- chunks change nothing ---------------------------------------------------------------------

def _collect(source, options):
    parts = []
    summary = stream.evaluate(source, loss="bce", rows=parts.append, **options)
    stack = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    assert all(p.labels is None and p.predictions is None for p in parts)  # the RowsOut contract
    return summary, stack("per_sample"), stack("probs"), stack("grad")


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 12), chunk=st.integers(1, 17),
       seed=st.integers(0, 2**32 - 1), reduction=st.sampled_from(["mean", "sum", "none"]),
       weighted=st.booleans(), positive=st.booleans(), soft=st.booleans(),
       dtype=st.sampled_from(["float64", "float32"]))
def test_any_chunk_size_gives_the_one_piece_results(n, k, chunk, seed, reduction, weighted,
                                                    positive, soft, dtype):
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=4, size=(n, k))
    t = rng.random((n, k)) if soft else (rng.random((n, k)) < 0.4).astype(float)
    loaded = data.EvalInput(
        logits=z, labels=None, targets=t, class_names=tuple(f"c{c}" for c in range(k)),
        source="z.csv", lines=tuple(range(2, n + 2)), target_source="t.csv", target_column=None,
        target_lines=tuple(range(2, n + 2)))
    weight = tuple(rng.uniform(0, 2, size=k)) if weighted else None
    pos_weight = tuple(rng.uniform(0.2, 5, size=k)) if positive else None
    options = dict(weight=weight, pos_weight=pos_weight, reduction=reduction, dtype=dtype, show=2)
    reference = bce.binary_cross_entropy(z, t, weight=weight, pos_weight=pos_weight,
                                         reduction=reduction, dtype=dtype)
    summary, per_sample, probs, grad = _collect(stream._in_memory(loaded, chunk), options)
    # row-wise results do not see the chunks: bit for bit
    assert np.array_equal(per_sample, reference.per_sample)
    assert np.array_equal(probs, reference.probs)
    assert np.array_equal(grad, reference.grad)
    # the total is the sum of every element, rounded once, whatever the chunks (but for an exact
    # sum within 2**-64 of a rounding boundary, which rounds to either side: test_stream's case)
    one_piece = stream.evaluate(stream._in_memory(loaded, n), loss="bce", **options)
    assert abs(summary.total - one_piece.total) <= math.ulp(summary.total)
    assert math.isclose(summary.total, reference.total, rel_tol=1e-6 if dtype == "float32" else 1e-13,
                        abs_tol=1e-30)
    assert summary.divisor == n * k
    if reduction != "none":
        assert math.isclose(summary.loss, reference.loss, rel_tol=1e-6 if dtype == "float32" else 1e-13,
                            abs_tol=1e-30)
    else:
        assert np.array_equal(summary.elements, reference.elements)
    assert summary.exact_match == bce.exact_match(z, t)
    assert summary.hamming_loss == bce.hamming_loss(z, t)
    for worked, i in zip(summary.worked, range(2)):
        assert np.array_equal(worked.grad, reference.grad[i])
        assert worked.loss == reference.per_sample[i]
        assert np.array_equal(worked.sigma, reference.probs[i])
        # (1 − t) σ(z) − t σ(−z): σ − t without its cancellation where σ rounds to 1
        np.testing.assert_allclose(worked.sigma_minus_t,
                                   reference.probs[i].astype(np.float64) - t[i], rtol=0,
                                   atol=1e-7 if dtype == "float32" else 1e-15)


@pytest.fixture(params=["polars", "cut"])
def fast(request, monkeypatch):
    """Forces the fast block reader on every CSV, with blocks of a few lines,
    parsed by Polars' CSV reader or cut into cells and cast (as a file of many columns is)."""
    monkeypatch.setattr(stream, "FAST_CSV_BYTES", 0)
    monkeypatch.setattr(stream, "BLOCK_BYTES", 64)
    if request.param == "cut":
        monkeypatch.setattr(stream, "WIDE_CSV_COLUMNS", 0)


def _pair(tmp_path, n=200, k=5, seed=11, soft=False):
    rng = np.random.default_rng(seed)
    names = [f"c{c}" for c in range(k)]
    targets = (rng.dirichlet(np.ones(k), size=n) if soft
               else (rng.random((n, k)) < 0.3).astype(int)).tolist()
    return (write_table(tmp_path / "z.csv", rng.normal(scale=3, size=(n, k)).tolist(), names),
            write_table(tmp_path / "t.csv", targets, names))


@pytest.mark.parametrize("loss, extra", [
    ("bce", []), ("bce", ["--pos-weight", "1,2,3,4,5", "--weight", "0.5,1,1,2,0"]),
    ("bce", ["--reduction", "none", "--dtype", "float32"]), ("bce", ["--reduction", "sum"]),
    ("ce", []), ("ce", ["--label-smoothing", "0.1", "--reduction", "none"]),
])
def test_the_fast_reader_reads_targets_as_the_strict_one(runner, tmp_path, monkeypatch, loss, extra):
    # the targets' lines are shorter than the logits', so their blocks hold other row counts
    z, t = _pair(tmp_path, soft=loss == "ce")
    outputs = {}
    for name, threshold in (("strict", 1 << 60), ("fast", 0)):
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", threshold)
        monkeypatch.setattr(stream, "BLOCK_BYTES", 500)
        monkeypatch.setattr(stream, "CHUNK_ROWS", 23)
        assert stream.open_source(z, targets_path=t).unit == ("rows" if name == "strict" else "bytes")
        out = tmp_path / f"{name}.csv"
        result = runner.invoke(app, ["eval", z, "--targets", t, "--loss", loss, "--format", "json",
                                     "--output", str(out), *extra])
        assert result.exit_code == 0, result.output
        outputs[name] = (result.stdout, out.read_bytes())
    assert outputs["fast"] == outputs["strict"]
    assert outputs["fast"][1].count(b"\n") == 201  # a header and every sample


def test_fast_chunks_give_the_one_piece_rows_bit_for_bit(tmp_path, fast):
    z, t = _pair(tmp_path, n=60, k=9)
    source = stream.open_source(z, targets_path=t)
    assert source.unit == "bytes"
    summary, per_sample, probs, grad = _collect(source, dict(pos_weight=(2.0,) * 9))
    loaded = data.read_eval_input(z, targets_path=t)
    reference = bce.binary_cross_entropy(loaded.logits, loaded.targets, pos_weight=(2.0,) * 9)
    assert np.array_equal(per_sample, reference.per_sample)
    assert np.array_equal(probs, reference.probs)
    assert np.array_equal(grad, reference.grad)
    assert summary.total == math.fsum(reference.elements.ravel().tolist())


@pytest.mark.parametrize("logits, targets, fragment", [
    ("a,b\n1,2\n3,4\n5,6\n7,8\n", "a,b\n1,0\n0,1\n1,1\n0,1.5\n", "t.csv, line 5, column 'b': target is outside"),
    ("a,b\n1,2\n3,4\n5,6\n7,8\n", "a,b\n1,0\n0,1\n1,1\n", "z.csv, line 5: this sample has no partner"),
    ("a,b\n1,2\n3,4\n", "a,b\n1,0\n0,1\n1,1\n", "t.csv, line 4: t.csv has 3 target rows"),
    ("a,b\n1,2\n3,4\n", "a,b\n1,0\n\n0,-1\n", "t.csv, line 4, column 'b': target probability -1 is negative"),
    ("a,b\n1,2\n3,4\n", "a,b\n1,0\n0,\n", "t.csv, line 3, column 'b': probability is missing"),
    ("a,b\n1,2\n3,-inf\n", "a,b\n1,0\n0,1\n", "z.csv, line 3, column 'b': logit is not a finite number"),
    ("a,b,label\n1,2,0\n", "a,b\n1,0\n", "z.csv, line 1: has a column 'label'"),
    ("a,b\n1,2\n3,4\n", "b,a\n1,0\n0,1\n", "t.csv, line 1: has the logits' class columns in another order"),
])
def test_bad_inputs_read_the_same_on_the_fast_path(runner, tmp_path, monkeypatch, fast, logits, targets,
                                                   fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "z.csv").write_text(logits)
    (tmp_path / "t.csv").write_text(targets)
    result = runner.invoke(app, ["eval", "z.csv", "--targets", "t.csv", "--loss", "bce"])
    assert result.exit_code == 2 and fragment in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("option", ["--weight", "--pos-weight"])
def test_a_bad_weight_entry_names_its_own_option(runner, tmp_path, monkeypatch, option):
    assert_bad_input_fails_cleanly(
        runner, tmp_path, monkeypatch, {}, [str(LOGITS), "--targets", str(TARGETS), "--loss", "bce",
                                            option, "1,2,oops,1"],
        f"Error: {option} entry 2 (class 2): 'oops' is not a number\n")


@pytest.mark.parametrize("reader", ["strict", "fast"])
@pytest.mark.parametrize("loss, target, message", [
    ("bce", "1.5", "target is outside [0, 1]"),
    ("ce", "-0.5", "target probability -0.5 is negative"),
])
def test_a_bad_target_names_the_targets_files_own_column(runner, tmp_path, monkeypatch, reader, loss,
                                                          target, message):
    # the two files' headers differ: the error is in t.csv, so it names t.csv's column
    if reader == "fast":
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", 0)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "z.csv").write_text("z0,z1\n1,2\n3,4\n")
    (tmp_path / "t.csv").write_text(f"cat,dog\n0.5,0.5\n0.5,{target}\n")
    result = runner.invoke(app, ["eval", "z.csv", "--targets", "t.csv", "--loss", loss])
    assert result.exit_code == 2
    assert f"t.csv, line 3, column 'dog': {message}" in result.stderr, result.stderr


def test_blank_lines_in_the_targets_fall_back_and_keep_the_samples_paired(runner, tmp_path, fast):
    (tmp_path / "z.csv").write_text("a,b\n0,0\n0,0\n")
    (tmp_path / "t.csv").write_text("a,b\n\n1,1\n\n0,0\n")
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--targets", str(tmp_path / "t.csv"),
                                 "--loss", "bce", "--format", "json", "--reduction", "sum"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["loss"] == pytest.approx(4 * math.log(2), rel=1e-15)


# --- bad input: one line naming file, line and column; exit 2; no output file -----------------

Z2 = "a,b\n1,2\n3,4\n"
BCE = ["--loss", "bce"]
BAD_INPUTS = [
    ("target-above-1", {"z.csv": Z2, "t.csv": "a,b\n1,0\n0,1.5\n"}, ["z.csv", "--targets", "t.csv", *BCE],
     "t.csv, line 3, column 'b': target is outside [0, 1]"),
    ("target-negative", {"z.csv": Z2, "t.csv": "a,b\n1,-0.5\n0,1\n"}, ["z.csv", "--targets", "t.csv", *BCE],
     "t.csv, line 2, column 'b': target probability -0.5 is negative"),
    ("target-not-a-number", {"z.csv": Z2, "t.csv": "a,b\n1,yes\n0,1\n"}, ["z.csv", "--targets", "t.csv", *BCE],
     "t.csv, line 2, column 'b': probability 'yes' is not a number"),
    ("ragged-targets", {"z.csv": Z2, "t.csv": "a,b\n1,0\n0\n"}, ["z.csv", "--targets", "t.csv", *BCE],
     "t.csv, line 3: row has 1 cell, the header has 2"),
    ("target-columns", {"z.csv": Z2, "t.csv": "a,b,c\n1,0,0\n0,1,0\n"}, ["z.csv", "--targets", "t.csv", *BCE],
     "t.csv, line 1: has 3 target columns, the logits have 2 classes"),
    ("target-rows", {"z.csv": Z2, "t.csv": "a,b\n1,0\n"}, ["z.csv", "--targets", "t.csv", *BCE],
     "z.csv, line 3: this sample has no partner: t.csv has only 1 target rows for 2 rows"),
    ("masked-logit", {"z.csv": "a,b\n1,-inf\n", "t.csv": "a,b\n1,0\n"}, ["z.csv", "--targets", "t.csv", *BCE],
     "z.csv, line 2, column 'b': logit is not a finite number; binary cross-entropy needs finite"),
    ("float32-overflow", {"z.csv": "a,b\n1,1e39\n", "t.csv": "a,b\n1,0\n"},
     ["z.csv", "--targets", "t.csv", "--dtype", "float32", *BCE],
     "z.csv, line 2, column 'b': logit does not fit in float32"),
    ("labels", {"z.csv": Z2, "y.csv": "0\n1\n"}, ["z.csv", "--labels", "y.csv", *BCE],
     "--labels does not apply to --loss bce, which takes a target per class: a binary "
     "classifier's 0/1 labels are targets, --targets y.csv (a CSV with a header line)"),
    # a binary classifier's labels without a header, given as --targets as the message above says
    ("headerless-targets", {"z.csv": "z\n1.5\n-0.3\n", "y.csv": "0\n1\n"},
     ["z.csv", "--targets", "y.csv", *BCE],
     "z.csv, line 3: this sample has no partner: y.csv has only 1 target rows for 2 rows of "
     "logits; its first line, 0, was read as the header: a CSV of targets begins with one (a name "
     "per class)"),
    ("label-smoothing", {"z.csv": Z2, "t.csv": "a,b\n1,0\n0,1\n"},
     ["z.csv", "--targets", "t.csv", "--label-smoothing", "0.1", *BCE],
     "--label-smoothing does not apply to --loss bce"),
    ("ignore-index", {"z.csv": Z2, "t.csv": "a,b\n1,0\n0,1\n"},
     ["z.csv", "--targets", "t.csv", "--ignore-index", "0", *BCE], "--ignore-index does not apply to --loss bce"),
    ("no-targets", {"z.csv": "a,b,label\n1,2,0\n"}, ["z.csv", *BCE],
     "--loss bce needs --targets FILE: a CSV with a header and one 0/1 or probability column per "
     "class (for a binary classifier, its 0/1 labels)"),
    ("npz-labels", {}, ["labels.npz", *BCE], "labels.npz: binary cross-entropy needs a target per class"),
    ("pos-weight-with-ce", {"z.csv": "a,b,label\n1,2,0\n"}, ["z.csv", "--pos-weight", "1,2"],
     "--pos-weight applies to --loss bce only"),
    ("pos-weight-length", {"z.csv": Z2, "t.csv": "a,b\n1,0\n0,1\n"},
     ["z.csv", "--targets", "t.csv", "--pos-weight", "1,2,3", *BCE],
     "--pos-weight has 3 entries; the logits have 2 classes"),
    ("pos-weight-negative", {"z.csv": Z2, "t.csv": "a,b\n1,0\n0,1\n"},
     ["z.csv", "--targets", "t.csv", "--pos-weight", "1,-2", *BCE], "--pos-weight entry 1 (class 1): -2 is negative"),
    ("weight-length", {"z.csv": Z2, "t.csv": "a,b\n1,0\n0,1\n"},
     ["z.csv", "--targets", "t.csv", "--weight", "1", *BCE], "--weight has 1 entries"),
]


@pytest.mark.parametrize("name, files, arguments, fragment", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_no_output(runner, tmp_path, monkeypatch, name, files,
                                                    arguments, fragment):
    if name == "npz-labels":
        np.savez(tmp_path / "labels.npz", logits=np.zeros((2, 2)), labels=np.array([0, 1]))
    assert_bad_input_fails_cleanly(runner, tmp_path, monkeypatch, files, arguments, fragment)


def test_headerless_targets_beside_an_array_say_their_first_line_was_the_header(runner, tmp_path):
    np.save(tmp_path / "z.npy", np.array([[1.5], [-0.3]]))
    (tmp_path / "y.csv").write_text("0\n1\n")
    result = runner.invoke(app, ["eval", str(tmp_path / "z.npy"), "--targets",
                                 str(tmp_path / "y.csv"), *BCE])
    assert result.exit_code == 2
    assert result.stderr == (f"Error: {tmp_path / 'y.csv'}: has 1 target rows for 2 rows of "
                             "logits; its first line, 0, was read as the header: a CSV of targets "
                             "begins with one (a name per class)\n")


def test_a_bad_target_in_a_later_chunk_names_its_own_line(runner, tmp_path, monkeypatch):
    monkeypatch.setattr(stream, "CHUNK_ROWS", 3)
    z = write_table(tmp_path / "z.csv", [[0.0, 1.0]] * 10, ["a", "b"])
    t = write_table(tmp_path / "t.csv", [[0.0, 1.0]] * 7 + [[2.0, 0.0]] + [[0.0, 1.0]] * 2, ["a", "b"])
    result = runner.invoke(app, ["eval", z, "--targets", t, "--loss", "bce"])
    assert result.exit_code == 2
    assert f"{t}, line 9, column 'a': target is outside [0, 1]" in result.stderr


# --- one logit column: the usual binary classifier ----------------------------------------------

ONE_Z, ONE_T = [[2.0], [-1.0], [0.5]], [[1.0], [0.0], [0.25]]


def _one_column(tmp_path):
    return (write_table(tmp_path / "z.csv", ONE_Z, ["score"]),
            write_table(tmp_path / "t.csv", ONE_T, ["spam"]))


def _hand_losses():
    """log1p(e^-2) for z = 2, t = 1; -log(1 - σ(-1)) = log1p(e^-1); the soft row from logs."""
    s = 1 / (1 + math.exp(-0.5))
    return [math.log1p(math.exp(-2)), math.log1p(math.exp(-1)),
            -(0.25 * math.log(s) + 0.75 * math.log(1 - s))]


@pytest.mark.parametrize("reader", ["strict", "fast"])
def test_one_logit_column_gives_the_hand_losses_and_gradients(runner, tmp_path, monkeypatch, reader):
    if reader == "fast":
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", 0)
    z, t = _one_column(tmp_path)
    unit = stream.open_source(z, targets_path=t, min_classes=1).unit
    assert unit == ("bytes" if reader == "fast" else "rows")
    summary = summary_of(runner, z, "--targets", t, "--reduction", "none")
    assert summary["k"] == 1
    np.testing.assert_allclose(np.ravel(summary["loss"]), _hand_losses(), rtol=1e-14)
    out = tmp_path / "rows.csv"
    run(runner, z, "--targets", t, "--reduction", "sum", "--output", out)
    per_sample, probs, grad, lines = read_output(out)
    assert lines == [2, 3, 4]
    assert per_sample == pytest.approx(_hand_losses(), rel=1e-14)
    # σ(2) − 1 = −1/(1 + e²), σ(−1) − 0 = 1/(1 + e), σ(0.5) − 0.25
    expected = [-1 / (1 + math.exp(2)), 1 / (1 + math.e), 1 / (1 + math.exp(-0.5)) - 0.25]
    np.testing.assert_allclose(np.ravel(grad), expected, rtol=1e-14)
    mean = summary_of(runner, z, "--targets", t)
    assert mean["loss"] == pytest.approx(sum(_hand_losses()) / 3, rel=1e-14)


def test_one_logit_column_in_npy_and_npz_reads_like_csv(runner, tmp_path):
    z, t = _one_column(tmp_path)
    expected = summary_of(runner, z, "--targets", t)["loss"]
    np.save(tmp_path / "z.npy", np.array(ONE_Z))
    np.save(tmp_path / "t.npy", np.array(ONE_T))
    assert summary_of(runner, tmp_path / "z.npy", "--targets", tmp_path / "t.npy")["loss"] == expected
    np.savez(tmp_path / "both.npz", logits=np.array(ONE_Z), targets=np.array(ONE_T))
    assert summary_of(runner, tmp_path / "both.npz")["loss"] == expected
    # a binary classifier's arrays are often flat, shape (N,): one column
    np.save(tmp_path / "flat_z.npy", np.ravel(ONE_Z))
    np.save(tmp_path / "flat_t.npy", np.ravel(ONE_T))
    assert summary_of(runner, tmp_path / "flat_z.npy", "--targets", tmp_path / "flat_t.npy")["loss"] == expected
    assert summary_of(runner, z, "--targets", tmp_path / "flat_t.npy")["loss"] == expected  # CSV logits


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_one_logit_column_matches_torch(runner, tmp_path, reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    z_values, t_values = rng.normal(scale=4, size=(50, 1)), rng.random((50, 1)).round(2)
    z = write_table(tmp_path / "z.csv", z_values.tolist(), ["logit"])
    t = write_table(tmp_path / "t.csv", t_values.tolist(), ["target"])
    out = tmp_path / "rows.csv"
    summary = summary_of(runner, z, "--targets", t, "--reduction", reduction, "--output", out)
    logits = torch.tensor(z_values, requires_grad=True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.tensor(t_values), reduction=reduction)
    loss.backward()
    assert summary["loss"] == pytest.approx(loss.item(), rel=1e-13)
    np.testing.assert_allclose(read_output(out)[2], logits.grad.numpy(), rtol=1e-13, atol=1e-300)


@pytest.mark.parametrize("reader", ["strict", "fast"])
def test_softmax_still_refuses_one_logit_column(runner, tmp_path, monkeypatch, reader):
    if reader == "fast":
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", 0)
    z, t = _one_column(tmp_path)
    labelled = write_table(tmp_path / "zl.csv", [[2.0, 0], [1.0, 0]], ["score", "label"])
    for arguments in ([z, "--targets", t], [labelled]):
        result = runner.invoke(app, ["eval", *arguments])
        assert result.exit_code == 2, result.output
        assert ("found 1 logit column; cross-entropy needs at least 2 classes; one logit column is a binary classifier: --loss bce"
                in result.stderr)
    np.save(tmp_path / "z.npy", np.array(ONE_Z))
    result = runner.invoke(app, ["eval", str(tmp_path / "z.npy"), "--targets", t])
    assert result.exit_code == 2
    assert "z.npy: cross-entropy needs at least 2 classes; one logit column is a binary classifier: --loss bce" in result.stderr


def test_bce_refuses_logits_without_a_column(runner, tmp_path):
    np.save(tmp_path / "z.npy", np.zeros((3, 0)))
    np.save(tmp_path / "t.npy", np.zeros((3, 0)))
    result = runner.invoke(app, ["eval", str(tmp_path / "z.npy"), "--targets",
                                 str(tmp_path / "t.npy"), "--loss", "bce"])
    assert result.exit_code == 2
    assert "binary cross-entropy needs at least 1 logit column" in result.stderr


def test_a_cut_worked_sample_keeps_the_positive_targets(runner, tmp_path):
    # beyond 12 classes the columns are a selection: a class whose target is 1 is the one a
    # reader checks σ − t at (it is −0.5 at z = 0, where every other class has 0.5)
    k = 13
    t = np.zeros((1, k))
    t[0, 7] = 1
    np.save(tmp_path / "z.npy", np.zeros((1, k)))
    np.save(tmp_path / "t.npy", t)
    result = run(runner, tmp_path / "z.npy", "--targets", tmp_path / "t.npy", "--show", "1")
    header = next(line for line in result.stdout.splitlines() if "step" in line)
    assert " 7 " in header, header
    row = next(line for line in result.stdout.splitlines() if line.startswith("│ σ − t"))
    assert "-0.5" in row, row


def test_a_one_logit_column_named_with_a_space_is_read(runner, tmp_path):
    # a binary classifier's single column 'spam score' is a name, not cells separated by ' ':
    # its rows hold one number each
    (tmp_path / "z.csv").write_text("spam score\n1.5\n-2\n")
    (tmp_path / "t.csv").write_text("spam score\n1\n0\n")
    result = run(runner, tmp_path / "z.csv", "--targets", tmp_path / "t.csv", "--format", "json",
                 "--show", "0")
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    assert json.loads(result.stdout)["loss"] == pytest.approx((softplus(-1.5) + softplus(-2)) / 2)


def test_space_separated_cells_are_named(runner, tmp_path):
    (tmp_path / "z.csv").write_text("a b\n1.5 2\n")
    (tmp_path / "t.csv").write_text("a,b\n1,0\n")
    result = runner.invoke(app, ["eval", "--loss", "bce", str(tmp_path / "z.csv"), "--targets",
                                 str(tmp_path / "t.csv")])
    assert result.exit_code == 2
    assert "give --delimiter ' '" in result.stderr


def test_an_npz_without_named_targets_asks_for_targets(runner, tmp_path):
    # binary cross-entropy takes per-class targets, never class labels
    np.savez(tmp_path / "z.npz", logits=np.zeros((2, 3)), t=np.zeros((2, 3)))
    result = runner.invoke(app, ["eval", "--loss", "bce", str(tmp_path / "z.npz")])
    assert result.exit_code == 2
    assert "has no targets; its arrays are logits, t: name the targets np.savez(path, logits=z, " \
           "targets=t), or give --targets" in " ".join(result.stderr.split())
    assert "--labels" not in result.stderr


@pytest.mark.parametrize("reader", ["strict", "fast", "npy"])
@pytest.mark.parametrize("logit, dtype, message", [
    ("-inf", "float64", "logit is not a finite number"), ("1e39", "float32", "logit does not fit in float32"),
])
def test_one_logit_columns_bad_logit_is_named_in_the_logits(runner, tmp_path, monkeypatch,
                                                            reader, logit, dtype, message):
    # one class: the fault's mask is (N, 1), taken for a row's, so it was placed at the targets
    # ('t.csv, line 3: logit is not a finite number' for line 3 of z.csv)
    monkeypatch.setattr(stream, "FAST_CSV_BYTES", 0 if reader == "fast" else 1 << 60)
    (tmp_path / "t.csv").write_text("t0\n1\n0\n1\n")
    if reader == "npy":
        np.save(tmp_path / "z.npy", np.array([[0.5], [float(logit)], [1.0]]))
        logits, place = tmp_path / "z.npy", "row 1, column '0'"
    else:
        (tmp_path / "z.csv").write_text(f"z0\n0.5\n{logit}\n1\n")
        logits, place = tmp_path / "z.csv", "line 3, column 'z0'"
    result = runner.invoke(app, ["eval", str(logits), "--loss", "bce", "--targets",
                                 str(tmp_path / "t.csv"), "--dtype", dtype])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {logits}, {place}: {message}"), result.stderr
