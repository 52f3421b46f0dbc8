"""`xent eval` as a user runs it: every option against an independent oracle, every bad input."""

import csv
import io
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import table_rows
from xent_cli.cli import app
from xent_cli.losses import cross_entropy

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

K3 = "z0,z1,z2,label\n2.0,1.0,0.1,0\n0.5,2.5,-1.0,1\n-1.0,0.0,3.0,2\n1.2,0.8,1.0,2\n"
Z = [[2.0, 1.0, 0.1], [0.5, 2.5, -1.0], [-1.0, 0.0, 3.0], [1.2, 0.8, 1.0]]
Y = [0, 1, 2, 2]


# --- an independent oracle: PyTorch's documented formula, one sample at a time ---------------

def oracle_losses(z, target, weight=None, ignore_index=-100, eps=0.0):
    """Returns (per-sample losses, mean divisor) as torch.nn.functional.cross_entropy defines them.

    Index target y: (1 - eps) * (-w[y] log p_y) + (eps / k) * (-sum_c w[c] log p_c);
    soft target t: -sum_c w[c] * ((1 - eps) t_c + eps / k) log p_c.
    """
    per, divisor = [], 0.0
    for row, t in zip(z, target):
        k = len(row)
        w = weight or [1.0] * k
        log_norm = math.log(sum(math.exp(v) for v in row))
        log_p = [v - log_norm for v in row]
        if isinstance(t, list):
            per.append(-sum(w[c] * ((1 - eps) * t[c] + eps / k) * log_p[c] for c in range(k)))
            divisor += 1
        elif t == ignore_index:
            per.append(0.0)
        else:
            nll = -w[t] * log_p[t]
            smooth = -sum(w[c] * log_p[c] for c in range(k))
            per.append((1 - eps) * nll + eps / k * smooth)
            divisor += w[t]
    return per, divisor


def oracle_reduced(z, target, reduction, **options):
    per, divisor = oracle_losses(z, target, **options)
    return sum(per) / divisor if reduction == "mean" else sum(per)


def finite_difference_grad(z, target, reduction, h=1e-6, **options):
    """Returns d(reduced loss)/dz by central differences ('none': each sample's own loss)."""
    grad = []
    for i, row in enumerate(z):
        grad.append([])
        for c in range(len(row)):
            def f(shift):
                moved = [list(r) for r in z]
                moved[i][c] += shift
                if reduction == "none":
                    return oracle_losses(moved, target, **options)[0][i]
                return oracle_reduced(moved, target, reduction, **options)
            grad[-1].append((f(h) - f(-h)) / (2 * h))
    return grad


def read_output(path):
    with open(path, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    k = sum(1 for name in rows[0] if name.startswith("grad_"))
    per = [float(r["loss"]) for r in rows]
    grad = [[float(r[f"grad_{c}"]) for c in range(k)] for r in rows]
    probs = [[float(r[f"prob_{c}"]) for c in range(k)] for r in rows]
    return rows, per, grad, probs


@pytest.fixture
def k3(tmp_path):
    path = tmp_path / "logits_k3.csv"
    path.write_text(K3, encoding="utf-8")
    return path


# --- the example and its golden output --------------------------------------------------------

def test_example_k3_matches_its_golden_output(runner, golden, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, ["eval", "examples/logits_k3.csv"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    golden("eval_logits_k3.txt", result.stdout)


def test_example_k3_is_the_hand_made_file_these_tests_use():
    assert (EXAMPLES / "logits_k3.csv").read_text(encoding="utf-8") == K3


def test_digits_mean_loss_equals_sklearn_log_loss(runner):
    metrics = pytest.importorskip("sklearn.metrics")
    path = EXAMPLES / "digits_logits.csv"
    table = np.loadtxt(path, delimiter=",", skiprows=1)
    z, labels = table[:, :-1], table[:, -1].astype(int)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    expected = metrics.log_loss(labels, p, labels=list(range(10)))
    result = runner.invoke(app, ["eval", str(path), "--format", "json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["n"], summary["k"]) == (450, 10)
    assert abs(summary["loss"] - expected) <= 1e-9
    assert summary["accuracy"] == pytest.approx(np.mean(z.argmax(axis=1) == labels), abs=1e-15)
    assert 0.85 < summary["accuracy"] < 1  # a real, imperfect classifier


def test_eval_does_not_import_sympy():
    code = (
        "import sys\n"
        "from xent_cli.cli import app\n"
        "try:\n"
        f"    app(['eval', {str(EXAMPLES / 'logits_k3.csv')!r}, '--show', '0'], prog_name='xent')\n"
        "except SystemExit as done:\n"
        "    assert done.code in (0, None), done.code\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(done.stderr.strip().splitlines()[-1].split())
    assert "numpy" in loaded  # the command did run
    # pydantic: Typer 0.29 imports it for every command (0.1 s); pyproject keeps Typer below it
    assert loaded.isdisjoint({"sympy", "pandas", "torch", "matplotlib", "pydantic"})


def _eval_threads(environment: dict) -> tuple[str, int]:
    """Runs eval in a fresh process; returns its OPENBLAS_NUM_THREADS and its number of threads."""
    code = (
        "import os, sys\n"
        "from xent_cli.cli import app\n"
        "try:\n"
        f"    app(['eval', {str(EXAMPLES / 'logits_k3.csv')!r}, '--show', '0'], prog_name='xent')\n"
        "except SystemExit as done:\n"
        "    assert done.code in (0, None), done.code\n"
        "print(os.environ.get('OPENBLAS_NUM_THREADS', 'unset'),\n"
        "      len(os.listdir('/proc/self/task')), file=sys.stderr)\n"
    )
    env = {name: value for name, value in os.environ.items() if name != "OPENBLAS_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**env, **environment})
    setting, threads = done.stderr.split()[-2:]
    return setting, int(threads)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_eval_starts_no_blas_threads_unless_asked():
    # eval does no linear algebra; OpenBLAS's idle workers spun for 0.1 CPU s of every run
    assert _eval_threads({}) == _eval_threads({"OPENBLAS_NUM_THREADS": "1"})
    assert _eval_threads({})[0] == "1"
    assert _eval_threads({"OPENBLAS_NUM_THREADS": "2"})[0] == "2"  # the user's setting wins


def test_help_shows_an_example(runner):
    result = runner.invoke(app, ["eval", "--help"])
    assert result.exit_code == 0
    assert "xent eval examples/logits_k3.csv" in result.stdout


# --- every option, against the oracle and finite differences ----------------------------------

OPTION_CASES = {
    "defaults": ([], {}),
    "sum": (["--reduction", "sum"], {"reduction": "sum"}),
    "none": (["--reduction", "none"], {"reduction": "none"}),
    "weight": (["--weight", "1,2,0.5"], {"weight": [1.0, 2.0, 0.5]}),
    "weight-sum": (["--weight", "1,2,0.5", "--reduction", "sum"],
                   {"weight": [1.0, 2.0, 0.5], "reduction": "sum"}),
    "smoothing": (["--label-smoothing", "0.2"], {"eps": 0.2}),
    "smoothing-weight-none": (["--label-smoothing", "0.1", "--weight", "3,1,2", "--reduction", "none"],
                              {"eps": 0.1, "weight": [3.0, 1.0, 2.0], "reduction": "none"}),
    "ignore-index": (["--ignore-index", "2"], {"ignore_index": 2}),
    "ignore-weight-smoothing": (["--ignore-index", "1", "--weight", "1,4,2", "--label-smoothing", "0.3"],
                                {"ignore_index": 1, "weight": [1.0, 4.0, 2.0], "eps": 0.3}),
}


@pytest.mark.parametrize("name", OPTION_CASES)
def test_options_follow_pytorch_semantics(runner, k3, tmp_path, name):
    args, options = OPTION_CASES[name][0], dict(OPTION_CASES[name][1])
    reduction = options.pop("reduction", "mean")
    out = tmp_path / "per_sample.csv"
    result = runner.invoke(app, ["eval", str(k3), "--format", "json", "--output", str(out), *args])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    per, divisor = oracle_losses(Z, Y, **options)
    _, got_per, got_grad, _ = read_output(out)
    assert got_per == pytest.approx(per, rel=1e-13, abs=1e-15)
    np.testing.assert_allclose(got_grad, finite_difference_grad(Z, Y, reduction, **options),
                               atol=1e-8)
    assert summary["reduction"] == reduction
    if reduction == "none":
        assert summary["loss"] == pytest.approx(per, rel=1e-13)
    else:
        assert summary["loss"] == pytest.approx(oracle_reduced(Z, Y, reduction, **options), rel=1e-13)
    assert summary["loss_sum"] == pytest.approx(sum(per), rel=1e-13)
    assert summary["loss_mean"] == pytest.approx(sum(per) / divisor, rel=1e-13)
    ignore = options.get("ignore_index", -100)
    counted = [i for i, y in enumerate(Y) if y != ignore]
    hits = sum(np.argmax(Z[i]) == Y[i] for i in counted)
    assert summary["accuracy"] == pytest.approx(hits / len(counted), abs=1e-15)
    assert summary["perplexity"] == pytest.approx(math.exp(sum(per) / divisor), rel=1e-12)


@pytest.mark.parametrize("name", OPTION_CASES)
def test_options_match_torch(runner, k3, tmp_path, name):
    torch = pytest.importorskip("torch")
    args, options = OPTION_CASES[name]
    out = tmp_path / "per_sample.csv"
    result = runner.invoke(app, ["eval", str(k3), "--format", "json", "--output", str(out), *args])
    assert result.exit_code == 0, result.output
    kwargs = {"reduction": options.get("reduction", "mean"),
              "ignore_index": options.get("ignore_index", -100),
              "label_smoothing": options.get("eps", 0.0)}
    if "weight" in options:
        kwargs["weight"] = torch.tensor(options["weight"], dtype=torch.float64)
    logits = torch.tensor(Z, dtype=torch.float64, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(Y), **kwargs)
    (loss.sum() if kwargs["reduction"] == "none" else loss).backward()
    _, per, grad, _ = read_output(out)
    np.testing.assert_allclose(grad, logits.grad.numpy(), rtol=1e-12, atol=1e-15)
    if kwargs["reduction"] == "none":
        np.testing.assert_allclose(per, loss.detach().numpy(), rtol=1e-12)
    else:
        assert json.loads(result.stdout)["loss"] == pytest.approx(loss.item(), rel=1e-12)


def test_label_col_names_the_label_column(runner, tmp_path):
    path = tmp_path / "z.csv"
    path.write_text("y,a,b\n1,0,3\n0,2,-1\n", encoding="utf-8")
    result = runner.invoke(app, ["eval", str(path), "--label-col", "y", "--format", "json"])
    assert result.exit_code == 0, result.output
    per, _ = oracle_losses([[0, 3], [2, -1]], [1, 0])
    assert json.loads(result.stdout)["loss"] == pytest.approx(sum(per) / 2, rel=1e-13)


@pytest.mark.parametrize("with_header", [True, False])
def test_labels_from_a_file_of_their_own(runner, tmp_path, with_header):
    logits, labels = tmp_path / "z.csv", tmp_path / "y.csv"
    logits.write_text("z0,z1,z2\n" + "".join(",".join(map(str, r)) + "\n" for r in Z))
    labels.write_text(("label\n" if with_header else "") + "\n".join(map(str, Y)) + "\n")
    result = runner.invoke(app, ["eval", str(logits), "--labels", str(labels), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["loss"] == pytest.approx(oracle_reduced(Z, Y, "mean"), rel=1e-13)


def test_soft_targets_divide_the_mean_by_n_and_one_hot_equals_labels(runner, tmp_path):
    logits, targets = tmp_path / "z.csv", tmp_path / "t.csv"
    logits.write_text("z0,z1,z2\n" + "".join(",".join(map(str, r)) + "\n" for r in Z))
    soft = [[0.7, 0.2, 0.1], [0, 1, 0], [0.25, 0.25, 0.5], [0, 0, 1]]
    targets.write_text("p0,p1,p2\n" + "".join(",".join(map(str, r)) + "\n" for r in soft))
    for eps, weight in [(0.0, None), (0.2, [1.0, 2.0, 3.0])]:
        args = ["--label-smoothing", str(eps)] + (["--weight", "1,2,3"] if weight else [])
        result = runner.invoke(app, ["eval", str(logits), "--targets", str(targets),
                                     "--format", "json", *args])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        per, divisor = oracle_losses(Z, soft, eps=eps, weight=weight)
        assert divisor == 4
        assert summary["loss"] == pytest.approx(sum(per) / 4, rel=1e-13)
        assert summary["perplexity"] is None and summary["targets"] == "soft"
    shown = runner.invoke(app, ["eval", str(logits), "--targets", str(targets), "--show", "1"])
    loss = oracle_losses(Z[:1], soft[:1])[0][0]
    assert f"loss = −Σ_c y_c log p_c = {loss:.6g}\n" in shown.stdout, shown.stdout  # no '× 1'
    one_hot = [[float(c == y) for c in range(3)] for y in Y]
    targets.write_text("p0,p1,p2\n" + "".join(",".join(map(str, r)) + "\n" for r in one_hot))
    result = runner.invoke(app, ["eval", str(logits), "--targets", str(targets), "--format", "json"])
    assert json.loads(result.stdout)["loss"] == pytest.approx(oracle_reduced(Z, Y, "mean"), rel=1e-14)


def test_a_language_models_class_weights_come_from_a_file(runner, tmp_path):
    # 50,257 weights written out are some 400 KB, past what one shell argument holds (128 KiB)
    rng = np.random.default_rng(7)
    k, n = 50_257, 6
    z, y = rng.normal(size=(n, k)) * 3, rng.integers(0, k, size=n)
    w = rng.uniform(0.5, 2.0, size=k)
    for name, value in (("z.npy", z), ("y.npy", y), ("w.npy", w)):
        np.save(tmp_path / name, value)
    np.savetxt(tmp_path / "w.txt", w)
    log_p = z - z.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    expected = -(w[y] * log_p[np.arange(n), y]).sum() / w[y].sum()
    for weights in ("w.npy", "w.txt"):
        result = runner.invoke(app, ["eval", str(tmp_path / "z.npy"), "--labels",
                                     str(tmp_path / "y.npy"), "--weight",
                                     f"@{tmp_path / weights}", "--format", "json"])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["loss"] == pytest.approx(expected, rel=1e-12)
        assert summary["divisor"] == pytest.approx(w[y].sum(), rel=1e-15)


def test_float32_computes_in_single_precision(runner, k3, tmp_path):
    out64, out32 = tmp_path / "64.csv", tmp_path / "32.csv"
    for dtype, out in [("float64", out64), ("float32", out32)]:
        result = runner.invoke(app, ["eval", str(k3), "--dtype", dtype, "--output", str(out),
                                     "--format", "json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["dtype"] == dtype
    _, per64, grad64, _ = read_output(out64)
    _, per32, grad32, _ = read_output(out32)
    assert all(float(np.float32(x)) == x for x in per32 + sum(grad32, []))  # float32 values
    np.testing.assert_allclose(per32, per64, rtol=1e-6)
    np.testing.assert_allclose(grad32, grad64, atol=1e-7)
    assert per32 != per64


def test_delimiter_option_and_tsv_by_extension(runner, tmp_path):
    semi, tsv = tmp_path / "z.txt", tmp_path / "z.tsv"
    semi.write_text(K3.replace(",", ";"))
    tsv.write_text(K3.replace(",", "\t"))
    expected = oracle_reduced(Z, Y, "mean")
    for args in (["--delimiter", ";"], ["--delimiter", "\\t"]):
        path = semi if ";" in args else tsv
        result = runner.invoke(app, ["eval", str(path), "--format", "json", *args])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["loss"] == pytest.approx(expected, rel=1e-13)
    result = runner.invoke(app, ["eval", str(tsv), "--format", "json"])
    assert json.loads(result.stdout)["loss"] == pytest.approx(expected, rel=1e-13)


@pytest.mark.parametrize("raw", [
    K3.replace("\n", "\r\n"), "\ufeff" + K3, K3.rstrip("\n"), K3.replace(",", ", "), K3 + "\n\n",
], ids=["crlf", "bom", "no-final-newline", "spaces-after-commas", "blank-tail"])
def test_dialects_just_work(runner, tmp_path, raw):
    path = tmp_path / "z.csv"
    path.write_bytes(raw.encode("utf-8"))
    result = runner.invoke(app, ["eval", str(path), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["loss"] == pytest.approx(oracle_reduced(Z, Y, "mean"), rel=1e-13)


def test_stdin_as_dash(runner):
    result = runner.invoke(app, ["eval", "-", "--format", "json"], input=K3)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["source"] == "-"
    assert summary["loss"] == pytest.approx(oracle_reduced(Z, Y, "mean"), rel=1e-13)


# --- output formats ---------------------------------------------------------------------------

def test_json_has_the_summary_fields(runner, k3):
    result = runner.invoke(app, ["eval", str(k3), "--format", "json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert {"n", "k", "reduction", "loss", "accuracy", "perplexity"} <= set(summary)
    assert (summary["n"], summary["k"], summary["reduction"]) == (4, 3, "mean")
    assert summary["accuracy"] == 0.75  # sample 3's largest logit is class 0, its label 2


def test_csv_format_is_a_header_and_one_row(runner, k3):
    result = runner.invoke(app, ["eval", str(k3), "--format", "csv", "--reduction", "sum"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(result.stdout.splitlines()))
    assert len(rows) == 1
    assert (rows[0]["n"], rows[0]["k"], rows[0]["reduction"]) == ("4", "3", "sum")
    assert float(rows[0]["loss"]) == pytest.approx(oracle_reduced(Z, Y, "sum"), rel=1e-13)
    assert float(rows[0]["accuracy"]) == 0.75


def test_output_round_trips_bit_for_bit_to_the_core_arrays(runner, tmp_path):
    path = EXAMPLES / "digits_logits.csv"
    out = tmp_path / "per_sample.csv"
    result = runner.invoke(app, ["eval", str(path), "--show", "0", "--output", str(out),
                                 "--weight", ",".join(["1"] * 5 + ["2"] * 5), "--label-smoothing", "0.05"])
    assert result.exit_code == 0, result.output
    table = np.loadtxt(path, delimiter=",", skiprows=1)
    core = cross_entropy(table[:, :-1], table[:, -1].astype(int), weight=[1.0] * 5 + [2.0] * 5,
                         label_smoothing=0.05)
    rows, per, grad, probs = read_output(out)
    assert list(rows[0])[:5] == ["sample", "line", "label", "pred", "loss"]
    assert np.array_equal(per, core.per_sample)
    assert np.array_equal(grad, core.grad)
    assert np.array_equal(probs, core.probs)
    assert [int(r["pred"]) for r in rows] == table[:, :-1].argmax(axis=1).tolist()
    assert [int(r["line"]) for r in rows] == list(range(2, len(rows) + 2))


def test_show_prints_the_arithmetic_of_the_first_samples(runner, k3):
    shown = runner.invoke(app, ["eval", str(k3), "--show", "2"]).stdout
    assert "sample 1 (line 3)" in shown and "sample 2" not in shown
    assert "z − max z" in shown and "sum of exp" in shown and "gradient = 0.25 × (p − y)" in shown
    # sample 0: z - max z = (0, -1, -1.9); -log p_0 = log(1 + e^-1 + e^-1.9)
    assert f"{math.log(1 + math.exp(-1) + math.exp(-1.9)):.6g}" in shown
    hidden = runner.invoke(app, ["eval", str(k3), "--show", "0"]).stdout
    assert "z − max z" not in hidden and "loss" in hidden


@pytest.mark.parametrize("dtype, tiny", [("float64", "7.66765e-53"), ("float32", "0")])
def test_a_confident_samples_worked_rows_agree_with_its_gradient(runner, tmp_path, dtype, tiny):
    # p_0 = 1 / (1 + e^-100 + e^-120) rounds to 1: p − y was shown 0 beside a gradient of
    # −e^-100, −log p as '−log 1 = 3.7e-44', and float32's table held float64's exps
    path = tmp_path / "z.csv"
    path.write_text("a,b,c,label\n100,0,-20,0\n")
    shown = runner.invoke(app, ["eval", str(path), "--dtype", dtype]).stdout
    rows = table_rows(shown)
    e100 = f"{float(np.exp(np.array(-100, dtype=dtype))):.6g}"  # 3.72008e-44; float32 3.78351e-44
    assert rows["exp(z − max z)"] == ["1", e100, tiny]
    assert rows["p − y"] == rows["gradient"] == [f"-{e100}", e100, tiny]
    assert f"−log p[0] = −log (1 − {e100}) = {e100}" in shown


def test_reduction_none_reports_sum_and_mean(runner, k3):
    shown = runner.invoke(app, ["eval", str(k3), "--reduction", "none", "--show", "0"]).stdout
    per, _ = oracle_losses(Z, Y)
    assert f"{sum(per):.10g}" in shown and f"{sum(per) / 4:.10g}" in shown
    assert "one loss per sample" in shown


# --- bad input: one line on stderr naming file, line and column; exit 2; no output file -------

BAD_INPUTS = [
    # (name, files {name: text or bytes}, arguments, fragment of the error)
    ("missing-file", {}, ["nope.csv"], "nope.csv: no such file"),
    ("directory", {"d/x": "1"}, ["d"], "d: is a directory"),
    ("binary", {"z.csv": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"}, ["z.csv"], "z.csv: is binary"),
    ("not-utf8", {"z.csv": b"z0,z1,label\n\xff\xfe,1,0\n"}, ["z.csv"], "z.csv, line 2: is not UTF-8"),
    ("empty", {"z.csv": ""}, ["z.csv"], "z.csv: the file is empty"),
    ("header-only", {"z.csv": "z0,z1,label\n"}, ["z.csv"], "header but no data rows"),
    ("non-numeric", {"z.csv": "z0,z1,label\n1,2,0\n1,abc,0\n"}, ["z.csv"],
     "z.csv, line 3, column 'z1': logit 'abc' is not a number"),
    ("empty-cell", {"z.csv": "z0,z1,label\n1,,0\n"}, ["z.csv"], "line 2, column 'z1': logit is missing (empty cell)"),
    ("python-only-literal", {"z.csv": "z0,z1,label\n1_000,2,0\n"}, ["z.csv"],
     "line 2, column 'z0': logit '1_000' is not a number"),
    ("ragged", {"z.csv": "z0,z1,label\n1,2,0\n1,2\n"}, ["z.csv"],
     "z.csv, line 3: row has 2 cells, the header has 3"),
    ("nan", {"z.csv": "z0,z1,label\nnan,2,0\n"}, ["z.csv"], "line 2, column 'z0': logit 'nan' is not a finite"),
    ("inf", {"z.csv": "z0,z1,label\n1,inf,0\n"}, ["z.csv"], "line 2, column 'z1': logit 'inf' is not a finite"),
    ("masked-target", {"z.csv": "z0,z1,label\n1,-inf,1\n"}, ["z.csv"], "line 2, column 'z1': class is masked (logit -inf)"),
    ("overflow", {"z.csv": "z0,z1,label\n1,2,0\n1e400,2,0\n"}, ["z.csv"],
     "line 3, column 'z0': logit '1e400' overflows float64"),
    ("label-not-integer", {"z.csv": "z0,z1,label\n1,2,0.5\n"}, ["z.csv"],
     "line 2, column 'label': label '0.5' is not an integer"),
    ("label-not-a-number", {"z.csv": "z0,z1,label\n1,2,cat\n"}, ["z.csv"],
     "line 2, column 'label': label 'cat' is not a number"),
    ("label-out-of-range", {"z.csv": "z0,z1,label\n1,2,0\n1,2,2\n"}, ["z.csv"],
     "z.csv, line 3, column 'label': label 2 is not a class index 0..1"),
    ("label-negative", {"z.csv": "z0,z1,label\n1,2,-1\n"}, ["z.csv"], "line 2, column 'label': label -1"),
    ("weight-length", {"z.csv": K3}, ["z.csv", "--weight", "1,2"], "--weight has 2 entries; the logits have 3 classes"),
    ("weight-negative", {"z.csv": K3}, ["z.csv", "--weight", "1,-2,1"], "--weight entry 1 (class 1): -2 is negative"),
    ("weight-not-number", {"z.csv": K3}, ["z.csv", "--weight", "1,a,1"], "--weight entry 1"),
    ("soft-negative", {"z.csv": "a,b\n1,2\n", "t.csv": "p0,p1\n-0.5,1.5\n"}, ["z.csv", "--targets", "t.csv"],
     "t.csv, line 2, column 'p0': target probability -0.5 is negative"),
    ("soft-sum", {"z.csv": "a,b\n1,2\n3,4\n", "t.csv": "p0,p1\n0.5,0.5\n0.3,0.3\n"},
     ["z.csv", "--targets", "t.csv"], "t.csv, line 3: target probabilities sum to 0.6, not 1"),
    ("soft-columns", {"z.csv": "a,b\n1,2\n", "t.csv": "p0,p1,p2\n0.5,0.5,0\n"}, ["z.csv", "--targets", "t.csv"],
     "t.csv, line 1: has 3 target columns, the logits have 2 classes"),
    ("soft-nan", {"z.csv": "a,b\n1,2\n", "t.csv": "p0,p1\nnan,1\n"}, ["z.csv", "--targets", "t.csv"],
     "t.csv, line 2, column 'p0': probability 'nan' is not a finite number"),
    ("fewer-labels", {"z.csv": "a,b\n1,2\n3,4\n5,6\n", "y.csv": "1\n0\n"}, ["z.csv", "--labels", "y.csv"],
     "z.csv, line 4: this sample has no partner: y.csv has only 2 labels for 3 rows"),
    ("more-labels", {"z.csv": "a,b\n1,2\n", "y.csv": "label\n1\n0\n"}, ["z.csv", "--labels", "y.csv"],
     "y.csv, line 3: y.csv has 2 labels but z.csv has only 1 rows"),
    ("more-targets", {"z.csv": "a,b\n1,2\n", "t.csv": "p0,p1\n1,0\n0,1\n"}, ["z.csv", "--targets", "t.csv"],
     "t.csv, line 3: t.csv has 2 target rows"),
    ("labels-two-columns", {"z.csv": "a,b\n1,2\n", "y.csv": "1,0\n"}, ["z.csv", "--labels", "y.csv"],
     "y.csv, line 1: a labels file has one column"),
    ("labels-file-bad-label", {"z.csv": "a,b\n1,2\n3,4\n", "y.csv": "label\n1\n0.5\n"},
     ["z.csv", "--labels", "y.csv"], "y.csv, line 3, column 'label': label '0.5' is not an integer"),
    ("labels-file-out-of-range", {"z.csv": "a,b\n1,2\n3,4\n", "y.csv": "1\n5\n"},
     ["z.csv", "--labels", "y.csv"], "y.csv, line 2: label 5 is not a class index 0..1"),
    ("one-class", {"z.csv": "z0,label\n1,0\n"}, ["z.csv"], "z.csv, line 1: found 1 logit column"),
    ("no-label-column", {"z.csv": "a,b\n1,2\n"}, ["z.csv"], "z.csv, line 1: there is no column 'label'"),
    ("label-column-and-labels", {"z.csv": K3, "y.csv": "0\n1\n2\n2\n"}, ["z.csv", "--labels", "y.csv"],
     "z.csv, line 1: has a column 'label' and labels come from y.csv"),
    ("labels-and-targets", {"z.csv": "a,b\n1,2\n", "y.csv": "0\n", "t.csv": "p,q\n1,0\n"},
     ["z.csv", "--labels", "y.csv", "--targets", "t.csv"], "--labels and --targets exclude each other"),
    ("duplicate-header", {"z.csv": "a,a,label\n1,2,0\n"}, ["z.csv"], "column name 'a' appears twice"),
    ("all-ignored-mean", {"z.csv": "a,b,label\n1,2,-100\n"}, ["z.csv"], "every sample is ignored"),
    ("float32-overflow", {"z.csv": "a,b,label\n1e39,2,0\n"}, ["z.csv", "--dtype", "float32"],
     "z.csv, line 2, column 'a': logit does not fit in float32"),
    ("bad-delimiter", {"z.csv": K3}, ["z.csv", "--delimiter", ";;"], "--delimiter must be one character"),
    ("output-is-directory", {"z.csv": K3, "d/x": "1"}, ["z.csv", "--output", "d"], "d: is a directory"),
    ("output-missing-directory", {"z.csv": K3}, ["z.csv", "--output", "no/such/out.csv"], "does not exist"),
    ("output-is-input", {"z.csv": K3}, ["z.csv", "--output", "z.csv"], "z.csv: is an input file"),
]


def assert_bad_input_fails_cleanly(runner, tmp_path, monkeypatch, files, arguments, fragment):
    """Runs eval on bad input: one line on stderr, exit 2, nothing on stdout, no file left."""
    monkeypatch.chdir(tmp_path)
    for relative, content in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    extra = [] if "--output" in arguments else ["--output", "out.csv"]
    result = runner.invoke(app, ["eval", *arguments, *extra])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert fragment in result.stderr, result.stderr
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and isinstance(result.exception, SystemExit)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # no output, no temporary file, inputs untouched


@pytest.mark.parametrize("name, files, arguments, fragment", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_no_output(runner, tmp_path, monkeypatch, name, files,
                                                    arguments, fragment):
    assert_bad_input_fails_cleanly(runner, tmp_path, monkeypatch, files, arguments, fragment)  # no output, no temporary file, inputs untouched


@pytest.mark.parametrize("value", ["1.5", "-0.1"])
def test_label_smoothing_outside_0_1_is_a_usage_error(runner, k3, tmp_path, value):
    out = tmp_path / "out.csv"
    result = runner.invoke(app, ["eval", str(k3), "--label-smoothing", value, "--output", str(out)])
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: Invalid value for '--label-smoothing'")
    assert result.stderr.count("\n") == 1, "a usage error is one line, like every other error"
    assert not out.exists()


def test_an_unknown_reduction_is_a_usage_error(runner, k3):
    result = runner.invoke(app, ["eval", str(k3), "--reduction", "average"])
    assert result.exit_code == 2 and "'average' is not one of" in result.stderr


def test_an_existing_output_survives_a_failed_run(runner, tmp_path):
    bad, out = tmp_path / "z.csv", tmp_path / "out.csv"
    bad.write_text("z0,z1,label\n1,2,0\n1,2,9\n")
    out.write_text("previous\n")
    result = runner.invoke(app, ["eval", str(bad), "--output", str(out)])
    assert result.exit_code == 2
    assert out.read_text() == "previous\n"
    assert sorted(os.listdir(tmp_path)) == ["out.csv", "z.csv"]


def test_soft_targets_accuracy_uses_the_target_argmax_whatever_the_ignore_index(runner, tmp_path):
    logits, targets = tmp_path / "z.csv", tmp_path / "t.csv"
    logits.write_text("a,b\n2,0\n0,2\n2,0\n")
    targets.write_text("p,q\n0.9,0.1\n0.2,0.8\n0.4,0.6\n")
    for ignore in ("-100", "0", "1"):
        result = runner.invoke(app, ["eval", str(logits), "--targets", str(targets),
                                     "--ignore-index", ignore, "--format", "json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["accuracy"] == pytest.approx(2 / 3)  # PyTorch ignores nothing


def test_all_ignored_under_sum_is_zero_and_json_stays_valid(runner, tmp_path):
    path = tmp_path / "z.csv"
    path.write_text("a,b,label\n1,2,-100\n0,0,-100\n")
    result = runner.invoke(app, ["eval", str(path), "--reduction", "sum", "--format", "json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # json.loads accepts NaN; check the text as well
    assert "NaN" not in result.stdout and "Infinity" not in result.stdout
    assert (summary["loss"], summary["ignored"]) == (0.0, 2)
    assert summary["accuracy"] is None and summary["loss_mean"] is None


def test_a_minus_inf_logit_masks_its_class(runner, tmp_path):
    # With class 1 masked, the row is a 2-class problem over z0 and z2: loss = log(1 + e^(z2 - z0)).
    path = tmp_path / "masked.csv"
    path.write_text("z0,z1,z2,label\n2,-inf,0,0\n")
    result = runner.invoke(app, ["eval", str(path), "--format", "json", "--output",
                                 str(tmp_path / "out.csv")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["loss"] == pytest.approx(math.log1p(math.exp(-2)), rel=1e-15)
    with open(tmp_path / "out.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert float(rows[0]["prob_1"]) == 0.0 and float(rows[0]["grad_1"]) == 0.0


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("beside", ["column", "labels.npy", "labels.csv", "targets.csv"])
def test_a_row_of_masked_logits_is_named_in_the_logits_file(runner, tmp_path, monkeypatch,
                                                             fast, beside):
    # the error has no class, and was placed at the labels or targets: 'y.npy, row 1: every
    # logit is -inf' for a row of z.csv, whose labels file holds no logit
    from xent_cli import stream

    monkeypatch.setattr(stream, "FAST_CSV_BYTES", 0 if fast else 1 << 60)
    monkeypatch.setattr(stream, "BLOCK_BYTES", 16)
    rows = ["0.5,1", "-inf,-inf", "1,2"]
    arguments = ["eval", str(tmp_path / "z.csv")]
    if beside == "column":
        rows = [row + f",{i % 2}" for i, row in enumerate(rows)]
    elif beside == "labels.npy":
        np.save(tmp_path / "y.npy", np.array([0, 1, 0]))
        arguments += ["--labels", str(tmp_path / "y.npy")]
    elif beside == "labels.csv":
        (tmp_path / "y.csv").write_text("0\n1\n0\n")
        arguments += ["--labels", str(tmp_path / "y.csv")]
    else:
        (tmp_path / "t.csv").write_text("p0,p1\n0.5,0.5\n0.5,0.5\n1,0\n")
        arguments += ["--targets", str(tmp_path / "t.csv")]
    header = "z0,z1,label" if beside == "column" else "z0,z1"
    (tmp_path / "z.csv").write_text("\n".join([header, *rows]) + "\n")
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2
    assert result.stderr == (f"Error: {tmp_path / 'z.csv'}, line 3: every logit is -inf: all "
                             f"classes are masked\n")


def test_class_names_are_shown_as_written_not_as_markup(runner, tmp_path):
    path = tmp_path / "marked.csv"
    path.write_text("[red]z0,:smile:,label\n1,2,0\n")
    result = runner.invoke(app, ["eval", str(path), "--show", "1"])
    assert result.exit_code == 0, result.output
    assert "[red]z0" in result.stdout and ":smile:" in result.stdout


def test_a_language_models_vocabulary_stays_readable(runner, tmp_path):
    # (N·T, V) logits with V in the thousands: the summary listed every class name and each
    # worked sample was a table of 3000 empty columns.
    rng = np.random.default_rng(5)
    v = 3000
    z = rng.standard_normal((4, v))
    labels = np.array([17, -100, 2999, 5])
    z[0, 1234] = 9.0  # sample 0 predicts class 1234
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", labels)
    result = runner.invoke(app, ["eval", str(tmp_path / "z.npy"), "--labels", str(tmp_path / "y.npy"),
                                 "--weight", ",".join(["1"] * v), "--show", "1"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert len(out.splitlines()) < 60, out
    assert "3000: 0, 1, 2, …, 2999" in out
    assert "weight      │ 1, 1, 1, …, 1" in out
    header = next(line for line in out.splitlines() if "step" in line)
    for shown in ("0", "1", "17", "1234", "2999", "…"):
        assert f" {shown} " in header, header
    p = np.exp(z[0] - z[0].max())
    p /= p.sum()
    row = next(line for line in out.splitlines() if line.startswith("│ p = exp / sum"))
    cells = [cell.strip() for cell in row.split("│")[2:-1]]
    assert cells[0] == f"{p[0]:.6g}" and f"{p[17]:.6g}" in cells and f"{p[1234]:.6g}" in cells


@pytest.mark.parametrize("names", ["0,1,2", "-1,0,1", "+1,0,-1"])
def test_a_header_of_class_numbers_is_a_header(runner, tmp_path, names):
    # sentiment classes -1, 0, 1 are names, not a headerless first sample (np.savetxt writes
    # its logits as decimals: 1.000000000000000000e+00)
    (tmp_path / "z.csv").write_text(f"{names}\n1,2,3\n0,0,5\n")
    (tmp_path / "y.txt").write_text("0\n2\n")
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--labels",
                                 str(tmp_path / "y.txt"), "--show", "0", "--format", "json"])
    assert result.exit_code == 0, result.output
    expected = np.mean([np.log(np.exp([1, 2, 3]).sum()) - 1, np.log(np.exp([0, 0, 5]).sum()) - 5])
    assert json.loads(result.stdout)["loss"] == pytest.approx(expected, rel=1e-12)


def test_a_cut_worked_sample_keeps_a_soft_targets_main_class(runner, tmp_path):
    # soft targets have no label: the class most of the target's mass is on is the one to see
    k = 20
    z = np.zeros((1, k))
    t = np.full((1, k), 0.1 / (k - 1))
    t[0, 9] = 0.9
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "t.npy", t)
    result = runner.invoke(app, ["eval", str(tmp_path / "z.npy"), "--targets",
                                 str(tmp_path / "t.npy"), "--show", "1"])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if "step" in line)
    assert [cell.strip() for cell in header.split("┃")[2:-1]] == ["0", "1", "…", "9", "…", "19"]


def test_a_worked_sample_wider_than_its_terminal_shows_some_classes_whole(runner):
    # the digits' 10 classes need some 150 characters: at 100, every number was cut ('1.552…')
    result = runner.invoke(app, ["eval", str(EXAMPLES / "digits_logits.csv"), "--show", "1"])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if "step" in line)
    assert [cell.strip() for cell in header.split("┃")[2:-1]] == ["z0", "z1", "z2", "…", "z9"]
    assert "1.55264" in result.stdout and not re.search(r"\d…", result.stdout)  # no number cut
    # wide enough, every class
    from rich.console import Console

    from xent_cli.render.eval import _steps_by_class

    wide = Console(width=200, file=io.StringIO(), color_system=None)
    wide.print(_steps_by_class("t", [f"z{c}" for c in range(10)],
                               [("logit z", [1.5526412] * 10)], keep=(2,)))
    header = next(line for line in wide.file.getvalue().splitlines() if "step" in line)
    assert [cell.strip() for cell in header.split("┃")[2:-1]] == [f"z{c}" for c in range(10)]


def test_too_few_labels_for_more_samples_than_classes_is_not_called_transposed(runner, tmp_path):
    # (5 samples, 3 classes) with 3 labels: z.T would be read as 3 samples of 5 classes, and the
    # labels 0..2 would pass as a wrong result. Saved transposed, classes are usually the fewer.
    np.save(tmp_path / "z.npy", np.zeros((5, 3)))
    np.save(tmp_path / "y.npy", np.array([0, 1, 2]))
    result = runner.invoke(app, ["eval", str(tmp_path / "z.npy"), "--labels",
                                 str(tmp_path / "y.npy")])
    assert result.exit_code == 2
    assert "has 3 labels for 5 rows of logits" in result.stderr
    assert "transposed" not in result.stderr


@pytest.mark.parametrize("index", ["filtered", "named"])
def test_a_pandas_parquet_files_index_is_no_class(runner, tmp_path, index):
    # to_parquet keeps a non-range index as a column (__index_level_0__, or its name) and says
    # so in its metadata: read as a logit, it made a class of row numbers
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    rng = np.random.default_rng(7)
    z, y = rng.normal(size=(12, 3)), rng.integers(0, 3, 12)
    frame = pd.DataFrame({"a": z[:, 0], "b": z[:, 1], "c": z[:, 2], "label": y})
    kept = frame[frame.label != 1] if index == "filtered" else frame.set_index(
        pd.Index(rng.permutation(12) * 10, name="id"))
    kept.to_parquet(tmp_path / "z.parquet")
    result = runner.invoke(app, ["eval", str(tmp_path / "z.parquet"), "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = kept[["a", "b", "c"]].to_numpy()
    expected = np.mean(np.log(np.exp(rows).sum(axis=1)) - rows[np.arange(len(rows)), kept.label])
    assert report["k"] == 3
    assert report["loss"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("typed, shown", [(True, False), (False, True)])
def test_the_stdin_copy_line_shows_for_a_pipe_not_for_rows_typed_in(monkeypatch, typed, shown):
    import io
    import sys

    from rich.console import Console

    from xent_cli import cli

    class Stdin(io.StringIO):
        def isatty(self):
            return typed

    monkeypatch.setattr(sys, "stdin", Stdin())
    monkeypatch.setattr(cli, "stderr", lambda: Console(file=io.StringIO(), force_terminal=True))
    with cli._copy_progress(quiet=False) as update:
        assert (update is not None) == shown


# --- random inputs in every format against torch: the first seeds of tests/fuzz_eval_torch.py --

@pytest.mark.parametrize("seed", range(24))
def test_random_inputs_in_every_format_agree_with_torch(seed):
    # every third seed runs again in tiny chunks, the fast CSV readers forced: the same bytes
    pytest.importorskip("torch")
    import fuzz_eval_torch

    assert fuzz_eval_torch.disagreements(seed, streamed=seed % 3 == 0) == []
