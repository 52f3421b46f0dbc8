"""`xent eval --output`: CSV, .npy and .parquet files that read back bit for bit, from either reader."""

from __future__ import annotations

import csv
import io
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xent_cli import bce, losses, rows_file, stream
from xent_cli.cli import app
from xent_cli.errors import InputError

pl = pytest.importorskip("polars")

# Floats whose spelling is easy to get wrong: signed zero, the smallest subnormal, huge and tiny
# magnitudes, the edges where notation switches, the largest float, and a float32's float64.
EDGES = [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1e-300, 1e-7, 1e-5, 2.5e-5,
         9.999999999999999e-05, 1e-4, 0.1, 1 / 3, 1.0, 1e15, 9999999999999998.0, 1e16, 1e22,
         1.7976931348623157e308, float(np.float32(0.1)), 2.0**53 + 2, float("inf"), float("-inf")]


def _bits(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).view(np.uint64)


def _table(z, y) -> str:
    k = z.shape[1]
    rows = [",".join(map(repr, row)) + f",{label}" for row, label in zip(z.tolist(), y.tolist())]
    return ",".join(f"z{c}" for c in range(k)) + ",label\n" + "\n".join(rows) + "\n"


def _read(path) -> dict[str, np.ndarray]:
    """Reads a per-sample file of any format into the columns it has, probabilities as 'probs'
    and the gradient as 'grad' (n, k): floats parsed by Python's float()."""
    if path.suffix == ".npy":
        records = np.load(path)
        return {"probs" if name == "prob" else name: records[name] for name in records.dtype.names}
    if path.suffix == ".parquet":
        frame = pl.read_parquet(path).to_dict()
    else:
        with open(path, newline="", encoding="utf-8") as file:
            cells = list(csv.reader(file, delimiter="\t" if path.suffix == ".tsv" else ","))
        frame = {name: [row[c] for row in cells[1:]] for c, name in enumerate(cells[0])}
        frame = {name: np.array([int(v) for v in values]) if name in ("sample", "line", "label", "pred")
                 else np.array([float(v) for v in values]) for name, values in frame.items()}
    columns = {name: np.asarray(frame[name]) for name in ("sample", "line", "label", "pred", "loss")
               if name in frame}
    for prefix, name in (("prob", "probs"), ("grad", "grad")):
        per_class = [np.asarray(values) for column, values in frame.items()
                     if column.startswith(prefix + "_")]
        if per_class:
            columns[name] = np.column_stack(per_class)
    return columns


@pytest.fixture(params=["strict", "fast"])
def reader(request, monkeypatch):
    """Runs each test through the strict reader and through the fast one, with small blocks."""
    monkeypatch.setattr(stream, "FAST_CSV_BYTES", 1 << 60 if request.param == "strict" else 0)
    monkeypatch.setattr(stream, "BLOCK_BYTES", 2000)
    monkeypatch.setattr(stream, "CHUNK_ROWS", 37)
    return request.param


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".npy", ".parquet"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_every_float_reads_back_bit_for_bit(runner, tmp_path, reader, suffix, reduction):
    rng = np.random.default_rng(11)
    z = rng.normal(scale=6, size=(200, 4))
    z[0] = [80.0, -80.0, 0.0, 1e-3]  # probabilities near 1e-70 and gradients near 5e-324 scaled
    y = rng.integers(0, 4, size=200)
    (tmp_path / "z.csv").write_text(_table(z, y))
    out = tmp_path / f"o{suffix}"
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--reduction", reduction,
                                 "--output", str(out)])
    assert result.exit_code == 0, result.output
    got = _read(out)
    reference = losses.cross_entropy(z, y, reduction=reduction)
    assert np.array_equal(got["sample"], np.arange(200)) and np.array_equal(got["line"], np.arange(2, 202))
    assert np.array_equal(got["label"], y) and np.array_equal(got["pred"], z.argmax(axis=1))
    for name, expected in (("loss", reference.per_sample), ("probs", reference.probs),
                           ("grad", reference.grad)):
        assert np.array_equal(_bits(got[name]), _bits(expected)), name
    # and the gradient is the true one: softmax(z) - onehot(y), scaled by the reduction
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    divisor = 200 if reduction == "mean" else 1
    np.testing.assert_allclose(got["grad"], (p - np.eye(4)[y]) / divisor, rtol=1e-12,
                               atol=1e-15 / divisor)  # p - 1 cancels digits near p = 1


def test_python_and_polars_spell_every_float_alike():
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2**64 - 1, size=200_000, dtype=np.uint64, endpoint=True)
    scaled = rng.random(50_000) * 10.0 ** rng.integers(-320, 308, size=50_000)
    values = np.concatenate([bits.view(np.float64), scaled, -scaled, EDGES, np.negative(EDGES)])
    polars_text = pl.DataFrame({"x": values}).write_csv(include_header=False).split("\n")[:-1]
    python_text = [rows_file._spell(x) for x in values.tolist()]
    assert python_text == polars_text
    finite = np.isfinite(values) | np.isinf(values)
    assert np.array_equal(_bits([float(s) for s in np.array(python_text)[finite]]), _bits(values[finite]))
    assert rows_file._spell(float("nan")) == "NaN" and float("NaN") != float("NaN")


def test_edge_floats_spelling_by_hand():
    spelled = {x: rows_file._spell(x) for x in (-0.0, 5e-324, 1e22, 2.5e-5, 1e-7, 1e16, 1e15)}
    assert spelled == {-0.0: "-0.0", 5e-324: "5e-324", 1e22: "1e+22", 2.5e-5: "0.000025",
                       1e-7: "1e-7", 1e16: "1e+16", 1e15: "1000000000000000.0"}
    assert struct.pack("<d", float(spelled[-0.0])) == struct.pack("<d", -0.0)


def test_small_and_large_blocks_write_identical_bytes(runner, tmp_path, monkeypatch, reader):
    rng = np.random.default_rng(2)
    z = rng.normal(scale=30, size=(300, 5)) * 10.0 ** rng.integers(-6, 3, size=(300, 1))
    (tmp_path / "z.csv").write_text(_table(z, rng.integers(0, 5, size=300)))
    texts = {}
    for name, threshold in (("python", 1 << 60), ("polars", 0)):
        monkeypatch.setattr(rows_file, "_PYTHON_FLOATS", threshold)
        out = tmp_path / f"{name}.csv"
        result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--dtype", "float32",
                                     "--output", str(out)])
        assert result.exit_code == 0, result.output
        texts[name] = out.read_bytes()
    assert texts["python"] == texts["polars"]
    assert b"e-" in texts["python"]  # the tiny gradients went through the exponent spelling


def test_tsv_is_the_csv_text_with_tabs(runner, tmp_path, monkeypatch):
    rng = np.random.default_rng(8)
    z = rng.normal(scale=4, size=(120, 3))
    (tmp_path / "z.csv").write_text(_table(z, rng.integers(0, 3, size=120)))
    for threshold in (1 << 60, 0):  # spelled in Python, then by Polars
        monkeypatch.setattr(rows_file, "_PYTHON_FLOATS", threshold)
        texts = {}
        for suffix in (".csv", ".tsv"):
            out = tmp_path / f"o{suffix}"
            result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--output", str(out)])
            assert result.exit_code == 0, result.output
            texts[suffix] = out.read_text()
        assert "\t" not in texts[".csv"] and "," not in texts[".tsv"]
        assert texts[".tsv"] == texts[".csv"].replace(",", "\t")
        assert texts[".tsv"].splitlines()[0].split("\t")[:5] == ["sample", "line", "label", "pred", "loss"]


@pytest.mark.parametrize("name", ["o.npz", "o.json", "o.csv.gz", "O.NPZ", "o.pt", "grads.pth"])
def test_a_format_output_does_not_write_is_refused_before_the_input_is_read(
        runner, tmp_path, monkeypatch, name):
    (tmp_path / "z.csv").write_text("z0,z1,label\n1,2,0\n")
    monkeypatch.chdir(tmp_path)

    def no_reading(*arguments, **options):
        raise AssertionError("the input was read")

    monkeypatch.setattr(stream, "open_source", no_reading)
    result = runner.invoke(app, ["eval", "z.csv", "--output", name])
    assert result.exit_code == 2
    suffix = name.lower().rsplit(".", 1)[1]
    assert result.stderr.strip().splitlines() == [
        f"Error: {name}: --output writes .csv, .tsv, .npy or .parquet, not .{suffix}"
        + (" (.npy holds every column: np.load(path)['grad'])" if suffix == "npz" else "")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.csv"]


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_binary_formats_keep_float32(runner, tmp_path, suffix):
    (tmp_path / "z.csv").write_text("a,b,c,label\n1,2,3,0\n0.5,0.1,-1,2\n")
    out = tmp_path / f"o{suffix}"
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--dtype", "float32", "--output", str(out)])
    assert result.exit_code == 0, result.output
    got = _read(out)
    assert got["grad"].dtype == np.float32 and got["loss"].dtype == np.float32
    z = np.array([[1, 2, 3], [0.5, 0.1, -1]], dtype=np.float32)
    assert np.array_equal(got["grad"], losses.cross_entropy(z, np.array([0, 2]), dtype=np.float32).grad)


def _bce_output(runner, tmp_path, suffix, *options):
    """Writes --loss bce rows of two samples of 3 classes; returns the logits, targets and file."""
    z = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    t = np.array([[1, 0, 1], [0, 1, 0]])
    (tmp_path / "z.csv").write_text("a,b,c\n" + "\n".join(",".join(map(repr, r)) for r in z.tolist()) + "\n")
    (tmp_path / "t.csv").write_text("a,b,c\n" + "\n".join(",".join(map(str, r)) for r in t.tolist()) + "\n")
    out = tmp_path / f"o{suffix}"
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--loss", "bce", "--targets",
                                 str(tmp_path / "t.csv"), "--output", str(out), *options])
    assert result.exit_code == 0, result.output
    return z, t, out


@pytest.mark.parametrize("suffix", [".csv", ".npy", ".parquet"])
def test_binary_cross_entropy_has_neither_label_nor_pred(runner, tmp_path, suffix):
    z, t, out = _bce_output(runner, tmp_path, suffix)
    got = _read(out)
    assert set(got) == {"sample", "line", "loss", "probs", "grad"}
    if suffix == ".csv":
        assert out.read_text().splitlines()[0] == ("sample,line,loss,prob_0,prob_1,prob_2,"
                                                   "grad_0,grad_1,grad_2")
    sigma = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(got["probs"], sigma, rtol=1e-15)
    np.testing.assert_allclose(got["grad"], (sigma - t) / 6, rtol=1e-14)  # 'mean' over N × k
    expected = bce.binary_cross_entropy(z, t, reduction="mean")
    assert np.array_equal(_bits(got["grad"]), _bits(expected.grad))


# --- --columns: a choice of the columns ---------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".npy", ".parquet"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chosen", ["grad,loss", "loss,prob", "pred,line", "label,grad,sample"])
def test_chosen_columns_are_written_in_file_order_bit_for_bit(runner, tmp_path, reader, suffix,
                                                              reduction, chosen):
    rng = np.random.default_rng(12)
    z = rng.normal(scale=4, size=(150, 3))
    y = rng.integers(0, 3, size=150)
    (tmp_path / "z.csv").write_text(_table(z, y))
    out = tmp_path / f"o{suffix}"
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--reduction", reduction,
                                 "--output", str(out), "--columns", chosen])
    assert result.exit_code == 0, result.output
    names = [name for name in ("sample", "line", "label", "pred", "loss", "prob", "grad")
             if name in chosen.split(",")]
    if suffix == ".csv":
        header = []
        for name in names:
            header += [f"{name}_{c}" for c in range(3)] if name in ("prob", "grad") else [name]
        assert out.read_text().splitlines()[0] == ",".join(header)
    if suffix == ".npy":
        assert list(np.load(out).dtype.names) == names
    got = _read(out)
    assert set(got) == {"probs" if name == "prob" else name for name in names}
    reference = losses.cross_entropy(z, y, reduction=reduction)
    expected = {"sample": np.arange(150), "line": np.arange(2, 152), "label": y,
                "pred": z.argmax(axis=1)}
    for name, values in got.items():
        if name in expected:
            assert np.array_equal(values, expected[name]), name
        else:
            assert np.array_equal(_bits(values), _bits(getattr(reference, name if name != "loss"
                                                                 else "per_sample"))), name


@pytest.mark.parametrize("suffix", [".csv", ".npy", ".parquet"])
def test_binary_cross_entropy_loss_and_gradient_only(runner, tmp_path, suffix):
    z, t, out = _bce_output(runner, tmp_path, suffix, "--columns", "loss,grad")
    got = _read(out)
    expected = bce.binary_cross_entropy(z, t, reduction="mean")
    assert set(got) == {"loss", "grad"}
    np.testing.assert_allclose(got["grad"], (1 / (1 + np.exp(-z)) - t) / 6, rtol=1e-14)
    assert np.array_equal(_bits(got["grad"]), _bits(expected.grad))
    assert np.array_equal(_bits(got["loss"]), _bits(expected.elements.sum(axis=1)))


@pytest.mark.parametrize("case", ["labels", "soft", "bce"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chosen", ["loss,grad", "prob"])
def test_chosen_columns_agree_with_pytorch(runner, tmp_path, reader, case, reduction, chosen):
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    rng = np.random.default_rng(14)
    z = rng.normal(scale=3, size=(120, 3))
    header = "z0,z1,z2"
    arguments = ["--reduction", reduction, "--weight", "0.5,2,1"]
    if case == "labels":
        y = rng.integers(0, 3, size=120)
        y[::9] = -100
        (tmp_path / "z.csv").write_text(_table(z, y))
        arguments += ["--label-smoothing", "0.1"]
    else:
        t = rng.random((120, 3))
        t = t / t.sum(axis=1, keepdims=True) if case == "soft" else (t > 0.5).astype(float)
        rows = lambda a: "".join(",".join(map(repr, row)) + "\n" for row in a.tolist())  # noqa: E731
        (tmp_path / "z.csv").write_text(f"{header}\n{rows(z)}")
        (tmp_path / "t.csv").write_text(f"{header}\n{rows(t)}")
        arguments += ["--targets", str(tmp_path / "t.csv")]
        arguments += ["--loss", "bce", "--pos-weight", "3,1,0.5"] if case == "bce" else []
    out = tmp_path / "o.npy"
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), *arguments, "--output", str(out),
                                 "--columns", chosen])
    assert result.exit_code == 0, result.output

    logits = torch.tensor(z, requires_grad=True)
    weight = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    if case == "bce":
        target = torch.tensor(t)
        options = dict(weight=weight, pos_weight=torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64))
        loss = functional.binary_cross_entropy_with_logits(logits, target, reduction=reduction,
                                                           **options)
        each = functional.binary_cross_entropy_with_logits(
            logits.detach(), target, reduction="none", **options).sum(dim=1)
        p = torch.sigmoid(logits.detach())
    else:
        target = torch.tensor(y) if case == "labels" else torch.tensor(t)
        options = dict(weight=weight, label_smoothing=0.1 if case == "labels" else 0.0)
        loss = functional.cross_entropy(logits, target, reduction=reduction, **options)
        each = functional.cross_entropy(logits.detach(), target, reduction="none", **options)
        p = torch.softmax(logits.detach(), dim=1)
    (loss.sum() if reduction == "none" else loss).backward()
    expected = {"loss": each.numpy(), "prob": p.numpy(), "grad": logits.grad.numpy()}
    got = np.load(out)
    assert list(got.dtype.names) == chosen.split(",")
    for name in got.dtype.names:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, atol=1e-15, err_msg=name)


def test_what_is_not_written_is_not_computed(runner, tmp_path, monkeypatch):
    """Without grad no 'mean' pre-pass is needed and the kernel computes no gradient."""
    (tmp_path / "z.csv").write_text("a,b,label\n1,2,0\n3,1,1\n0,0,1\n")
    asked = []
    kernel = losses.loss_and_gradient_into

    def recording(z, target, grad, per_sample, **options):
        asked.append((grad is not None, options.get("probs") is not None))
        return kernel(z, target, grad, per_sample, **options)

    def no_pre_pass(*_):
        raise AssertionError("the divisor pre-pass ran")

    monkeypatch.setattr(losses, "loss_and_gradient_into", recording)
    monkeypatch.setattr(stream, "_divisor_pass", no_pre_pass)
    out = tmp_path / "o.npy"
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--output", str(out),
                                 "--columns", "loss,prob", "--show", "0"])  # shown rows have theirs
    assert result.exit_code == 0, result.output
    assert asked and all(probs and not grad for grad, probs in asked)
    p = np.exp([[1, 2], [3, 1], [0, 0]]) / np.exp([[1, 2], [3, 1], [0, 0]]).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(_read(out)["probs"], p, rtol=1e-15)


@pytest.mark.parametrize(("arguments", "message"), [
    (["--columns", "loss,probs", "--targets", "t.csv"],
     "--columns: 'probs' is not one of sample, line, label, pred, loss, prob, grad"),
    (["--columns", "", "--targets", "t.csv"], "--columns: '' is not one of"),
    (["--columns", "label,loss", "--targets", "t.csv"], "--columns: there is no label column"),
    (["--columns", "pred", "--loss", "bce", "--targets", "t.csv"],
     "there is no pred column for --loss bce"),
])
def test_a_column_that_is_not_there_is_a_usage_error_and_writes_nothing(runner, tmp_path,
                                                                        monkeypatch, arguments,
                                                                        message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "z.csv").write_text("a,b\n1,2\n3,1\n")
    (tmp_path / "t.csv").write_text("a,b\n1,0\n0,1\n")
    result = runner.invoke(app, ["eval", "z.csv", "--output", "o.csv", *arguments])
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "z.csv"]


@settings(max_examples=60, deadline=None)
@given(names=st.lists(st.sampled_from(["sample", "line", "label", "pred", "loss", "prob", "grad"]),
                      min_size=1, max_size=10),
       spaces=st.lists(st.sampled_from(["", " ", "  "]), min_size=20, max_size=20))
def test_columns_are_the_names_given_in_file_order_whatever_their_order(names, spaces):
    spelled = ",".join(spaces[2 * i] + name + spaces[2 * i + 1] for i, name in enumerate(names))
    file_order = ("sample", "line", "label", "pred", "loss", "prob", "grad")
    chosen = rows_file.columns(spelled, has_labels=True, has_predictions=True)
    assert chosen == tuple(name for name in file_order if name in names)


@pytest.mark.parametrize(("arguments", "message"), [
    (["--columns", "loss,grads"], "'grads' is not one of"),
    (["--columns", "label", "--targets", "t.csv"], "there is no label column"),
    (["--columns", "pred", "--loss", "bce", "--targets", "t.csv"], "there is no pred column"),
])
def test_a_misspelt_column_is_told_before_the_input_is_read(runner, tmp_path, monkeypatch,
                                                             arguments, message):
    def no_reading(*_, **__):
        raise AssertionError("the input was read first")  # minutes, for a large strict input

    monkeypatch.chdir(tmp_path)
    (tmp_path / "z.csv").write_text("a,b\n1,2\n")
    (tmp_path / "t.csv").write_text("a,b\n1,0\n")
    monkeypatch.setattr(stream, "open_source", no_reading)
    result = runner.invoke(app, ["eval", "z.csv", "--output", "o.npy", *arguments])
    assert result.exit_code == 2 and message in result.stderr, result.output


def test_columns_without_output_is_a_usage_error(runner, tmp_path):
    (tmp_path / "z.csv").write_text("a,b,label\n1,2,0\n")
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--columns", "loss"])
    assert result.exit_code == 2 and "give --output too" in result.stderr, result.output


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_a_restart_leaves_only_the_last_run(runner, tmp_path, monkeypatch, suffix):
    monkeypatch.setattr(stream, "FAST_CSV_BYTES", 0)
    monkeypatch.setattr(stream, "BLOCK_BYTES", 64)
    # a masked logit deep in the file sends the fast reader back to the strict one
    rows = [f"{i % 3},{-i},1" for i in range(60)] + ["3,-inf,0"]
    (tmp_path / "z.csv").write_text("a,b,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / f"o{suffix}"
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    got = _read(out)
    assert np.array_equal(got["sample"], np.arange(61)) and np.array_equal(got["line"], np.arange(2, 63))
    assert got["probs"][-1].tolist() == [1.0, 0.0]


@pytest.mark.parametrize("suffix", [".csv", ".npy", ".parquet"])
def test_a_failure_leaves_no_file(runner, tmp_path, monkeypatch, suffix):
    monkeypatch.setattr(stream, "CHUNK_ROWS", 2)
    (tmp_path / "z.csv").write_text("a,b,label\n1,2,0\n3,4,1\n5,6,1\n7,8,9\n")  # label 9 out of range
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--reduction", "sum",
                                 "--output", str(tmp_path / f"o{suffix}")])
    assert result.exit_code == 2 and "line 5" in result.stderr, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.csv"]


def test_npy_header_is_rewritten_in_place_for_any_length(tmp_path):
    k = 400
    rows = stream.RowsOut(start=0, lines=range(2, 5), labels=np.array([0, 1, 2]),
                          predictions=np.array([1, 1, 1]), per_sample=np.ones(3),
                          probs=np.full((3, k), 1 / k), grad=np.zeros((3, k)))
    with rows_file.writer(str(tmp_path / "o.npy")) as write:
        write(rows)
    records = np.load(tmp_path / "o.npy")
    assert records.shape == (3,) and records["prob"].shape == (3, k)
    assert np.array_equal(records["line"], [2, 3, 4])
    header = rows_file._npy_header(records.dtype, 0)
    assert len(header) % 64 == 0 and len(header) == len(rows_file._npy_header(records.dtype, 2**63 - 1))


def test_small_file_output_needs_no_polars(tmp_path):
    (tmp_path / "z.csv").write_text("a,b,label\n1,2,0\n")
    code = ("import sys\nfrom xent_cli.cli import app\n"
            f"app(['eval', {str(tmp_path / 'z.csv')!r}, '--output', {str(tmp_path / 'o.csv')!r}],"
            " standalone_mode=False)\nprint('polars' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False"


def _blocks(sizes, k=3, start=0, seed=0, dtype=np.float64):
    """Returns RowsOut blocks of the given sizes, one after another from start, with random values."""
    rng = np.random.default_rng(seed)
    blocks = []
    for n in sizes:
        z = rng.normal(scale=3, size=(n, k))
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        y = rng.integers(0, k, size=n)
        blocks.append(stream.RowsOut(
            start=start, lines=tuple(range(start + 2, start + n + 2)), labels=y,
            predictions=z.argmax(axis=1), per_sample=(-np.log(p[np.arange(n), y])).astype(dtype),
            probs=p.astype(dtype), grad=(p - np.eye(k)[y]).astype(dtype)))
        start += n
    return blocks


def _expected(blocks) -> dict[str, np.ndarray]:
    """Returns the columns a per-sample file of these blocks holds, straight from the blocks."""
    n = sum(len(b.per_sample) for b in blocks)
    start = blocks[0].start
    return {"sample": np.arange(start, start + n), "line": np.arange(start + 2, start + n + 2),
            "label": np.concatenate([b.labels for b in blocks]),
            "pred": np.concatenate([b.predictions for b in blocks]),
            "loss": np.concatenate([b.per_sample for b in blocks]),
            "probs": np.concatenate([b.probs for b in blocks]),
            "grad": np.concatenate([b.grad for b in blocks])}


def _assert_holds(path, blocks):
    got, expected = _read(path), _expected(blocks)
    assert set(got) == set(expected)
    for name, values in expected.items():
        if values.dtype.kind == "f":
            assert np.array_equal(_bits(got[name]), _bits(values)), name
        else:
            assert np.array_equal(got[name], values), name


@pytest.fixture
def small_frames(monkeypatch):
    """Polars writes every block (no Python spelling) in frames of 4 rows of 3 classes."""
    monkeypatch.setattr(rows_file, "_PYTHON_FLOATS", 0)
    monkeypatch.setattr(rows_file, "_FRAME_FLOATS", 4 * 7)


@pytest.mark.parametrize("suffix", [".csv", ".npy", ".parquet"])
def test_a_restart_after_buffered_rows_leaves_only_the_last_run(tmp_path, small_frames, suffix):
    first, last = _blocks([5, 6, 3], seed=1), _blocks([7, 2, 9, 1], seed=2)
    out = tmp_path / f"o{suffix}"
    with rows_file.writer(str(out)) as write:
        for rows in first + last:  # the last run starts at 0 again, rows of the first in flight
            write(rows)
    _assert_holds(out, last)


def test_a_runs_new_file_is_not_truncated_and_a_used_one_is_emptied():
    # ext4 writes back a file truncated to 0 as it closes: 0.3 s at the end of 748 MB
    class Spy(io.BytesIO):
        truncated = 0

        def truncate(self, size=None):
            self.truncated += 1
            return super().truncate(size)

    new, used = Spy(), Spy(b"the run before")
    used.seek(4)
    for file in (new, used):
        rows_file._emptied(file)
    assert (new.truncated, used.truncated) == (0, 1)
    assert used.getvalue() == b"" and (new.tell(), used.tell()) == (0, 0)


@pytest.mark.parametrize("k, floats, rows", [(7, 60, 3), (7, 1 << 30, rows_file.ROW_GROUP_ROWS),
                                              (7, 1, 1)])
def test_parquet_row_groups_hold_as_many_numbers_whatever_k(tmp_path, monkeypatch, k, floats, rows):
    # a row group a frame (131 rows of 1000 classes) grew the footer, and the RSS, with the file
    blocks = _blocks([50, 1, 23], k=k, seed=4)
    monkeypatch.setattr(rows_file, "ROW_GROUP_FLOATS", floats)
    asked, sink = [], pl.LazyFrame.sink_parquet
    monkeypatch.setattr(pl.LazyFrame, "sink_parquet",
                        lambda lazy, *a, **o: asked.append(o["row_group_size"]) or sink(lazy, *a, **o))
    out = tmp_path / "o.parquet"
    with rows_file.writer(str(out)) as write:
        for block in blocks:
            write(block)
    _assert_holds(out, blocks)
    assert asked == [rows]  # 2k + 5 = 19 columns: 60 numbers are 3 rows; at least 1 row


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
@pytest.mark.parametrize("columns", [rows_file.COLUMNS, ("loss", "grad")])
def test_wide_rows_are_spelled_as_polars_writer_spells_them(tmp_path, monkeypatch, suffix,
                                                            columns):
    # past WIDE_COLUMNS, rows are spelled from one column of all their numbers (50,257 classes
    # through Polars' writer took 45 s and 2.0 GB for 400 rows)
    blocks = _blocks([50, 1, 23, 8], k=4, seed=5)
    edges = np.array(EDGES + [float("nan")])  # 24 floats hard to spell, in every column
    blocks[0].per_sample[:24], blocks[0].grad[:6] = edges, edges.reshape(6, 4)
    blocks[0].probs[6:12] = edges[::-1].reshape(6, 4)
    monkeypatch.setattr(rows_file, "_PYTHON_FLOATS", 0)
    monkeypatch.setattr(rows_file, "_FRAME_FLOATS", 5 * 9)  # frames of 5 rows
    written = {}
    for name, wide in (("polars", 1 << 30), ("spelled", 0)):
        monkeypatch.setattr(rows_file, "WIDE_COLUMNS", wide)
        out = tmp_path / f"{name}{suffix}"
        with rows_file.writer(str(out), columns=columns) as write:
            for rows in blocks:
                write(rows)
        written[name] = out.read_bytes()
    assert written["spelled"] == written["polars"]
    assert written["spelled"].count(b"\n") == 83  # the header and 82 rows


@pytest.mark.parametrize("columns, count", [(None, 11), ("loss,grad", 4), ("loss,pred", None)])
def test_parquet_too_wide_for_its_footer_is_refused_before_anything_is_read(
        runner, tmp_path, monkeypatch, columns, count):
    monkeypatch.setattr(rows_file, "WIDE_COLUMNS", 3)  # 3 classes: loss and grad are 4 columns
    read, evaluate = [], stream.evaluate
    monkeypatch.setattr(stream, "evaluate", lambda *a, **o: read.append(1) or evaluate(*a, **o))
    out = tmp_path / "o.parquet"
    (tmp_path / "z.csv").write_text("a,b,c,label\n1,2,3,0\n")
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--output", str(out),
                                 *(["--columns", columns] if columns else [])])
    if count is None:
        assert result.exit_code == 0 and read == [1] and out.exists()
        return
    assert result.exit_code == 2 and read == [] and not out.exists()
    assert result.stderr.startswith(f"Error: {out}: --output .parquet would hold {count} columns")
    assert "write .npy (a field of 3 values a sample) or .csv" in result.stderr
    # and a writer not told k refuses at the first block, before a row is written
    with pytest.raises(InputError, match="would hold 11 columns, one per class for prob and grad"):
        with rows_file.writer(str(out)) as write:
            write(_blocks([4])[0])
    assert not out.exists()


def test_the_parquet_refusal_under_bce_names_columns_bce_writes(runner, tmp_path, monkeypatch):
    # it had said "fewer --columns (loss, pred)", and --columns loss,pred is an error under bce
    monkeypatch.setattr(rows_file, "WIDE_COLUMNS", 3)
    (tmp_path / "z.csv").write_text("a,b,c\n1,2,3\n")
    (tmp_path / "t.csv").write_text("a,b,c\n1,0,1\n")
    out = tmp_path / "o.parquet"
    arguments = ["eval", str(tmp_path / "z.csv"), "--loss", "bce", "--targets",
                 str(tmp_path / "t.csv"), "--output", str(out)]
    refused = runner.invoke(app, arguments)
    assert refused.exit_code == 2 and not out.exists()
    assert refused.stderr.rstrip().endswith("or .csv, or fewer --columns (loss)"), refused.stderr
    result = runner.invoke(app, [*arguments, "--columns", "loss"])
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(out).columns == ["loss"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_many_frames_hold_what_one_frame_holds(tmp_path, monkeypatch, suffix):
    blocks = _blocks([50, 1, 23, 8, 40], k=4, seed=3, dtype=np.float32)
    monkeypatch.setattr(rows_file, "_PYTHON_FLOATS", 0)
    written = {}
    for name, floats in (("one", 1 << 30), ("many", 3 * 9), ("rows", 1)):  # a frame, 3 rows, 1 row
        monkeypatch.setattr(rows_file, "_FRAME_FLOATS", floats)
        out = tmp_path / f"{name}{suffix}"
        with rows_file.writer(str(out)) as write:
            for rows in blocks:
                write(rows)
        _assert_holds(out, blocks)
        written[name] = out.read_bytes()
    if suffix == ".csv":  # and the text is the one Python spells, byte for byte, or starts to
        for name, floats in (("python", 1 << 60), ("mixed", 51 * 4)):  # 2 blocks, then Polars
            monkeypatch.setattr(rows_file, "_PYTHON_FLOATS", floats)
            with rows_file.writer(str(tmp_path / f"{name}.csv")) as write:
                for rows in blocks:
                    write(rows)
            written[name] = (tmp_path / f"{name}.csv").read_bytes()
        assert len(set(written.values())) == 1, {name: len(text) for name, text in written.items()}


@pytest.mark.parametrize("suffix", [".csv", ".npy", ".parquet"])
def test_blocks_are_copied_when_written(tmp_path, small_frames, suffix):
    # a caller may fill the same arrays again for its next block
    blocks = _blocks([6, 6], seed=4)
    reused = blocks[0]
    out = tmp_path / f"o{suffix}"
    with rows_file.writer(str(out)) as write:
        write(reused)
        for name in ("labels", "predictions", "per_sample", "probs", "grad"):
            getattr(reused, name)[...] = getattr(blocks[1], name)
        write(blocks[1])
    _assert_holds(out, _blocks([6, 6], seed=4))  # the same values, generated afresh


def test_npy_blocks_of_changing_sizes(tmp_path):
    blocks = _blocks([4, 9, 2, 9, 11, 1], k=5, seed=5)
    with rows_file.writer(str(tmp_path / "o.npy")) as write:
        for rows in blocks:
            write(rows)
    _assert_holds(tmp_path / "o.npy", blocks)


def test_npy_record_buffers_are_reused_not_piled_up(tmp_path, monkeypatch):
    buffers = []  # every buffer a block was gathered into (held, so no id is reused)
    gather = rows_file._Npy._buffer

    def recording(self, n):
        records = gather(self, n)
        base = records.base if records.base is not None else records
        if all(base is not seen for seen in buffers):
            buffers.append(base)
        return records

    monkeypatch.setattr(rows_file._Npy, "_buffer", recording)
    blocks = _blocks([64] * 200, k=4, seed=9)
    with rows_file.writer(str(tmp_path / "o.npy")) as write:
        for rows in blocks:
            write(rows)
    # one filled, two queued, one being written: no more are ever in use at once
    assert 1 <= len(buffers) <= 4
    _assert_holds(tmp_path / "o.npy", blocks)


@pytest.mark.parametrize("suffix", [".csv", ".npy", ".parquet"])
def test_an_error_mid_stream_leaves_no_file_and_is_the_one_raised(tmp_path, small_frames, suffix):
    class Stop(Exception):
        pass

    with pytest.raises(Stop):
        with rows_file.writer(str(tmp_path / f"o{suffix}")) as write:
            for rows in _blocks([5, 7, 3], seed=6):  # frames already written, one half full
                write(rows)
            raise Stop
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".csv", ".npy", ".parquet"])
def test_a_failure_after_frames_were_written_leaves_no_file(runner, tmp_path, monkeypatch,
                                                            small_frames, suffix):
    monkeypatch.setattr(stream, "CHUNK_ROWS", 3)
    rows = [f"{i},{-i},{i % 2}" for i in range(30)] + ["7,8,9"]  # label 9 out of range on line 32
    (tmp_path / "z.csv").write_text("a,b,label\n" + "\n".join(rows) + "\n")
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--reduction", "sum",
                                 "--output", str(tmp_path / f"o{suffix}")])
    assert result.exit_code == 2 and "line 32" in result.stderr, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.csv"]


class _FullDisk:
    """An output file, full for what the writer threads write (the header, written on the
    main thread, still goes in)."""

    def __init__(self, file):
        self.file = file

    def write(self, data):
        if threading.current_thread() is not threading.main_thread():
            raise OSError(28, "No space left on device")
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)


def _fill_up(monkeypatch, writer_class) -> None:
    """Gives every writer_class a full disk for its writer threads."""
    opened = writer_class.__init__
    monkeypatch.setattr(writer_class, "__init__",
                        lambda self, file, columns: opened(self, _FullDisk(file), columns))


def test_a_failing_npy_write_in_the_writer_thread_is_raised_and_leaves_no_file(tmp_path,
                                                                              monkeypatch):
    _fill_up(monkeypatch, rows_file._Npy)
    blocks = _blocks([5, 7, 3], seed=8)
    with pytest.raises(InputError, match="cannot be written: No space left on device"):
        with rows_file.writer(str(tmp_path / "o.npy")) as write:
            for rows in blocks:
                write(rows)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_full_disk_under_polars_writer_is_one_line_and_leaves_no_file(runner, tmp_path,
                                                                        monkeypatch, small_frames,
                                                                        suffix):
    _fill_up(monkeypatch, rows_file._Framed)  # Polars' writer writes in threads of its own
    rows = "".join(f"{i},{-i},{i % 2}\n" for i in range(30))
    (tmp_path / "z.csv").write_text("a,b,label\n" + rows)
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--output",
                                 str(tmp_path / f"o{suffix}")])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"Error: {tmp_path / f'o{suffix}'}: cannot be written: ")
    assert "No space left on device" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.csv"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_failing_polars_writer_leaves_no_file(tmp_path, monkeypatch, small_frames, suffix):
    def fail(lazy, file, **options):
        lazy.collect()  # takes every frame, up to the last
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rows_file, "_sink_csv" if suffix == ".csv" else "_sink_parquet", fail)
    blocks = _blocks([5, 7, 3], seed=7)
    with pytest.raises(InputError, match="cannot be written: No space left on device"):
        with rows_file.writer(str(tmp_path / f"o{suffix}")) as write:
            for rows in blocks:
                write(rows)
    assert list(tmp_path.iterdir()) == []

    class Stop(Exception):
        pass

    with pytest.raises(Stop):  # an error of the caller's is the one told, not the writer's
        with rows_file.writer(str(tmp_path / f"o{suffix}")) as write:
            write(blocks[0])
            raise Stop
    assert list(tmp_path.iterdir()) == []


def test_a_writer_whose_iterator_outlives_its_failure_is_still_closed():
    """Polars cancelled by Ctrl-C raises KeyboardInterrupt in the writer thread while a thread of
    its own still waits for the next frame, and may take the end marker first: closing the
    abandoned file must not wait for a marker that never comes (it hung, Ctrl-C again too)."""
    import time

    def consume(items):
        threading.Thread(target=next, args=(items, None), daemon=True).start()  # waits for a frame
        time.sleep(0.1)
        raise KeyboardInterrupt

    worker = rows_file._Worker(consume)
    time.sleep(0.2)  # the iterator left behind waits first, so it is woken first by close
    closing = threading.Thread(target=worker.close, kwargs={"complete": False}, daemon=True)
    closing.start()
    closing.join(timeout=5)
    assert not closing.is_alive(), "close waits for ever"
    assert isinstance(worker.error, KeyboardInterrupt)
