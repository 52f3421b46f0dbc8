"""Labels and targets in a Parquet table beside any logits, and every eval input read in slices.

The losses are checked against a NumPy computation written here; the sliced readers against the
whole readers (summary, messages and --output bytes), with slices of a few rows so that the
slicing is exercised on small files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from xent_cli import stream
from xent_cli.cli import app

pl = pytest.importorskip("polars")

N, K = 40, 3
# The fast paths; each returns None to hand its input to the whole reader.
FAST = ("_fast_csv", "_fast_csv_array", "_fast_csv_targets", "_fast_parquet", "_fast_mapped")


@pytest.fixture
def small_slices(monkeypatch):
    """Makes every reader take its input a few rows (or bytes) at a time."""
    monkeypatch.setattr(stream, "FAST_CSV_BYTES", 0)
    monkeypatch.setattr(stream, "BLOCK_BYTES", 64)
    monkeypatch.setattr(stream, "PARQUET_ROWS", 9)
    monkeypatch.setattr(stream, "CHUNK_ROWS", 11)


@pytest.fixture
def inputs(tmp_path):
    """Writes logits, labels and soft targets of N samples in every format eval reads."""
    rng = np.random.default_rng(7)
    z = rng.normal(scale=2, size=(N, K)).round(6)
    y = rng.integers(0, K, size=N)
    t = rng.dirichlet(np.ones(K), size=N).round(6)
    logits = {f"z{c}": z[:, c] for c in range(K)}
    pl.DataFrame(logits).write_csv(tmp_path / "z.csv")
    pl.DataFrame(logits).write_parquet(tmp_path / "z.parquet", row_group_size=7)
    np.save(tmp_path / "z.npy", z)
    np.savez(tmp_path / "z.npz", logits=z)
    pl.DataFrame({"label": y}).write_parquet(tmp_path / "y.parquet", row_group_size=7)
    pl.DataFrame({"label": y}).write_csv(tmp_path / "y.csv")
    np.save(tmp_path / "y.npy", y)
    targets = {f"t{c}": t[:, c] for c in range(K)}
    pl.DataFrame(targets).write_parquet(tmp_path / "t.parquet", row_group_size=5)
    pl.DataFrame(targets).write_csv(tmp_path / "t.csv")
    np.save(tmp_path / "t.npy", t)
    return z, y, t


def _logsumexp(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=1)
    return top + np.log(np.exp(z - top[:, None]).sum(axis=1))


def _expected(loss: str, z: np.ndarray, y: np.ndarray, t: np.ndarray, side: str) -> float:
    """The mean loss, computed here from its definition."""
    if loss == "bce":  # log(1 + e^z) − t z per element, over all N × k
        return float(np.mean(np.logaddexp(0, z) - t * z))
    if side == "labels":
        return float(np.mean(_logsumexp(z) - z[np.arange(len(y)), y]))
    return float(np.mean(-(t * (z - _logsumexp(z)[:, None])).sum(axis=1)))


def _eval(runner, tmp_path, arguments, output="out.csv"):
    """Runs xent eval with --output; returns exit code, stdout, stderr and the output bytes."""
    out = tmp_path / output
    out.unlink(missing_ok=True)
    result = runner.invoke(app, ["eval", *arguments, "--format", "json", "--output", str(out)])
    return result.exit_code, result.stdout, result.stderr, out.read_bytes() if out.exists() else None


def _both_readers(runner, tmp_path, monkeypatch, arguments):
    """Returns what the sliced readers and the whole readers make of the same input, and
    whether the sliced run read anything whole."""
    whole_reads = []
    in_memory = stream._in_memory
    monkeypatch.setattr(stream, "_in_memory",
                        lambda *args: whole_reads.append(1) or in_memory(*args))
    sliced = _eval(runner, tmp_path, arguments, "sliced.csv")
    read_whole = bool(whole_reads)
    for name in FAST:
        monkeypatch.setattr(stream, name, lambda *args, **kwargs: None)
    whole = _eval(runner, tmp_path, arguments, "whole.csv")
    return sliced, whole, read_whole


COMBINATIONS = [(logits, option, side, loss)
                for logits in ("z.csv", "z.npy", "z.npz", "z.parquet")
                for option, side, loss in (("--labels", "y.parquet", "ce"),
                                           ("--targets", "t.parquet", "ce"),
                                           ("--targets", "t.parquet", "bce"),
                                           ("--labels", "y.npy", "ce"), ("--labels", "y.csv", "ce"),
                                           ("--targets", "t.npy", "ce"),
                                           ("--targets", "t.csv", "bce"))]


@pytest.mark.parametrize("logits, option, side, loss", COMBINATIONS)
def test_a_side_file_gives_the_loss_computed_from_its_definition(runner, tmp_path, inputs,
                                                                  logits, option, side, loss):
    z, y, t = inputs
    code, stdout, stderr, _ = _eval(runner, tmp_path, [
        str(tmp_path / logits), option, str(tmp_path / side), "--loss", loss])
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["n"] == N and summary["k"] == K
    assert summary["loss"] == pytest.approx(_expected(loss, z, y, t, option[2:]), rel=1e-13)


@pytest.mark.parametrize("logits, option, side, loss", COMBINATIONS)
def test_sliced_and_whole_readers_give_the_same_bytes(runner, tmp_path, inputs, small_slices,
                                                       monkeypatch, logits, option, side, loss):
    arguments = [str(tmp_path / logits), option, str(tmp_path / side), "--loss", loss]
    sliced, whole, read_whole = _both_readers(runner, tmp_path, monkeypatch, arguments)
    assert sliced[0] == 0, sliced[2]
    assert sliced == whole
    assert not read_whole  # the logits, and targets beside them, were read a slice at a time


@pytest.mark.parametrize("layout", ["C", "F", "big-endian", "float32", "int16"])
@pytest.mark.parametrize("suffix", [".npy", ".npz", ".npz compressed"])
def test_rows_of_a_mapped_array_read_again_after_their_pages_left_are_the_same(tmp_path, layout,
                                                                               suffix):
    z = np.random.default_rng(2).normal(scale=9, size=(3000, 4))  # 96 kB: pages on pages
    z = {"C": z, "F": np.asfortranarray(z), "big-endian": z.astype(">f8"),
         "float32": z.astype(np.float32), "int16": z.astype(np.int16)}[layout]
    if suffix == ".npy":
        np.save(tmp_path / "z.npy", z)
        array = stream._load_npy(str(tmp_path / "z.npy"))
    else:
        (np.savez if suffix == ".npz" else np.savez_compressed)(tmp_path / "z.npz", logits=z)
        array = stream._load_npz(str(tmp_path / "z.npz"))["logits"]
    first = stream._rows(array, 0, 100)
    for start in range(100, 3000, 100):  # every 8 reads the pages of the rows before go
        rows = stream._rows(array, start, 100)
        assert rows.dtype == np.float64
        assert np.array_equal(rows, z[start:start + 100].astype(np.float64))
    assert np.array_equal(first, z[:100].astype(np.float64))  # a view of the map, read again
    assert np.array_equal(stream._rows(array, 0, 3000), z.astype(np.float64))


def test_a_parquet_table_of_targets_is_read_a_slice_at_a_time(tmp_path, inputs, small_slices,
                                                              monkeypatch):
    reads = []
    sliced = stream._parquet_slices

    def recorded(path, columns, rows):
        for frame in sliced(path, columns, rows):
            reads.append((path[-9:], tuple(columns), frame.height))
            yield frame

    monkeypatch.setattr(stream, "_parquet_slices", recorded)
    monkeypatch.setattr(stream, "_read_parquet", None)  # never the whole table
    source = stream.open_source(str(tmp_path / "z.parquet"),
                                targets_path=str(tmp_path / "t.parquet"))
    chunks = list(source.chunks())
    assert [chunk.data.lines for chunk in chunks] == [range(s, min(s + 9, N)) for s in range(0, N, 9)]
    assert np.array_equal(np.concatenate([chunk.data.targets for chunk in chunks]), inputs[2])
    assert [(columns, rows) for name, columns, rows in reads if name == "t.parquet"] == [
        (("t0", "t1", "t2"), min(9, N - s)) for s in range(0, N, 9)]


def _with(tmp_path, name, **columns):
    pl.DataFrame(columns, strict=False).write_parquet(tmp_path / name, row_group_size=7)
    return str(tmp_path / name)


def _labels_with(y, at, value):
    labels = y.astype(object).tolist()
    labels[at] = value
    return labels


def _targets_with(t, at, value):
    column = t[:, 1].astype(object).tolist()
    column[at] = value
    return {"t0": t[:, 0], "t1": column, "t2": t[:, 2]}


@pytest.mark.parametrize("logits", ["z.csv", "z.npy", "z.parquet"])
@pytest.mark.parametrize("case, message", [
    ("null label", "y_bad.parquet, row 23, column 'label': label nan is not a whole number"),
    ("label 2.5", "y_bad.parquet, row 23, column 'label': label 2.5 is not a whole number"),
    ("label 7", "y_bad.parquet, row 23, column 'label': label 7 is not a class index 0..2 "
                "(nor the ignore index -100)"),
    ("a label short", "y_bad.parquet: has 39 labels for 40 rows of logits"),
    ("a text label", "y_bad.parquet: column 'label' holds String, not numbers; labels are class "
                     "indices, one integer per sample"),
    ("null target", "t_bad.parquet, row 23, column 't1': target probability is not a finite number"),
    ("nan target", "t_bad.parquet, row 23, column 't1': target probability is not a finite number"),
    ("negative target", "t_bad.parquet, row 23, column 't1': target probability -0.5 is negative"),
    ("a target row more", "t_bad.parquet: has 41 target rows for 40 rows of logits"),
    ("a date column", "t_bad.parquet: column 'when' holds Date, not numbers; every column is a "
                      "class's target: drop it"),
])
def test_what_is_wrong_in_a_side_table_is_named_by_both_readers(runner, tmp_path, inputs,
                                                                 small_slices, monkeypatch,
                                                                 logits, case, message):
    import datetime

    z, y, t = inputs
    if "label" in case:
        option = "--labels"
        table = {"null label": dict(label=_labels_with(y, 23, None)),
                 "label 2.5": dict(label=_labels_with(y, 23, 2.5)),
                 "label 7": dict(label=_labels_with(y, 23, 7)),
                 "a label short": dict(label=y[:-1]),
                 "a text label": dict(label=[str(v) for v in y])}[case]
        side = _with(tmp_path, "y_bad.parquet", **table)
    else:
        option = "--targets"
        table = {"null target": _targets_with(t, 23, None),
                 "nan target": _targets_with(t, 23, float("nan")),
                 "negative target": _targets_with(t, 23, -0.5),
                 "a target row more": {f"t{c}": np.append(t[:, c], 0.5) for c in range(K)},
                 "a date column": {"when": [datetime.date(2026, 1, 1)] * N,
                                   **{f"t{c}": t[:, c] for c in range(K)}}}[case]
        side = _with(tmp_path, "t_bad.parquet", **table)
    sliced, whole, _ = _both_readers(runner, tmp_path, monkeypatch,
                                     [str(tmp_path / logits), option, side])
    assert sliced == whole
    assert (sliced[0], sliced[2]) == (2, f"Error: {tmp_path}/{message}\n")


def test_a_table_without_its_label_column_is_refused_before_its_rows_are_read(
        runner, tmp_path, small_slices, monkeypatch):
    # the whole reader read the table first: 2M x 10 with its labels under 'target' took 1.0 s
    # and 450 MB to say so, now 0.4 s and 83 MB
    _with(tmp_path, "z.parquet", z0=[1.0, 2.0, 0.0], z1=[0.5, 0.1, 3.0], target=[0, 1, 1])
    whole_read, calls = stream._read_parquet, []
    monkeypatch.setattr(stream, "_read_parquet",
                        lambda *args: calls.append(1) or whole_read(*args))
    sliced, whole, _ = _both_readers(runner, tmp_path, monkeypatch, [str(tmp_path / "z.parquet")])
    assert sliced == whole and calls == [1]  # the whole reader's run alone read the table
    assert sliced[2] == (f"Error: {tmp_path}/z.parquet: has no column 'label' (its columns: z0, "
                         "z1, target); if 'target' holds the labels, give --label-col target; "
                         "else give --labels or --targets\n")


@pytest.mark.parametrize("logits", ["z.csv", "z.parquet"])
def test_a_bad_logit_beside_a_side_table_is_the_whole_reader_s_to_name(runner, tmp_path, inputs,
                                                                       small_slices, monkeypatch,
                                                                       logits):
    z = inputs[0].astype(object)
    z[31, 2] = None if logits == "z.parquet" else float("inf")
    frame = pl.DataFrame({f"z{c}": z[:, c].tolist() for c in range(K)}, strict=False)
    frame.write_parquet(tmp_path / "z.parquet", row_group_size=7)
    frame.write_csv(tmp_path / "z.csv")
    sliced, whole, _ = _both_readers(runner, tmp_path, monkeypatch,
                                     [str(tmp_path / logits), "--targets", str(tmp_path / "t.parquet")])
    assert sliced == whole and sliced[0] == 2
    assert ("row 31, column 'z2'" if logits == "z.parquet" else "line 33, column 'z2'") in sliced[2]


@pytest.mark.parametrize("columns, option, expected", [
    (("id", "label"), [], "label"),  # the column named as the label column
    (("y",), [], "y"),  # a table of one column, whatever its name
    (("id", "y"), ["--label-col", "y"], "y"),
    (("id", "y"), [], None),  # which one: the message says how to tell
])
def test_a_labels_table_of_several_columns_gives_its_label_column(runner, tmp_path, inputs,
                                                                  columns, option, expected):
    z, y, t = inputs
    values = {"id": np.arange(N) + 100, "label": y, "y": y}
    side = _with(tmp_path, "labels.parquet", **{name: values[name] for name in columns})
    code, stdout, stderr, _ = _eval(runner, tmp_path,
                                    [str(tmp_path / "z.parquet"), "--labels", side, *option])
    if expected is None:
        assert code == 2 and stderr == (f"Error: {side}: has 2 columns (id, y) and none is named "
                                        "'label'; give the labels in a table of one column, or "
                                        "name their column with --label-col\n")
    else:
        assert code == 0, stderr
        assert json.loads(stdout)["loss"] == pytest.approx(_expected("ce", z, y, t, "labels"), rel=1e-13)


def test_pandas_index_columns_of_a_side_table_are_skipped(runner, tmp_path, inputs, small_slices):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")  # pandas writes Parquet through pyarrow
    z, y, t = inputs
    kept = np.arange(N) % 3 != 1  # a filtered frame: to_parquet keeps its index as a column
    pd.DataFrame({"label": y})[kept].to_parquet(tmp_path / "y.parquet")
    pd.DataFrame({f"t{c}": t[:, c] for c in range(K)})[kept].to_parquet(tmp_path / "t.parquet")
    np.save(tmp_path / "z.npy", z[kept])
    for option, side, expected in (
            ("--labels", "y.parquet", _expected("ce", z[kept], y[kept], t, "labels")),
            ("--targets", "t.parquet", _expected("ce", z[kept], y, t[kept], "targets"))):
        code, stdout, stderr, _ = _eval(runner, tmp_path,
                                        [str(tmp_path / "z.npy"), option, str(tmp_path / side)])
        assert code == 0, stderr
        assert json.loads(stdout)["loss"] == pytest.approx(expected, rel=1e-13)


@pytest.mark.parametrize("option, side, loss", [("--labels", "y.parquet", "ce"),
                                                ("--targets", "t.parquet", "ce"),
                                                ("--targets", "t.parquet", "bce")])
@pytest.mark.parametrize("logits", ["z.csv", "z.parquet"])
def test_check_reads_side_tables_as_eval_does(runner, tmp_path, inputs, logits, option, side, loss):
    result = runner.invoke(app, ["check", str(tmp_path / logits), option, str(tmp_path / side),
                                 "--loss", loss, "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and (report["n"], report["k"]) == (N, K)


def test_check_names_a_null_in_a_side_table(runner, tmp_path, inputs):
    side = _with(tmp_path, "y_bad.parquet", label=_labels_with(inputs[1], 5, None))
    result = runner.invoke(app, ["check", str(tmp_path / "z.parquet"), "--labels", side])
    assert result.exit_code == 2
    assert result.stderr == f"Error: {side}, row 5, column 'label': label nan is not a whole number\n"


@pytest.mark.parametrize("layout", ["F float32", "C float16", "big-endian", "npz F"])
@pytest.mark.parametrize("option, side", [("--labels", "y.npy"), ("--targets", "t.parquet")])
def test_mapped_logits_of_any_layout_read_in_chunks_give_the_whole_reader_s_bytes(
        runner, tmp_path, inputs, small_slices, monkeypatch, layout, option, side):
    z = inputs[0]
    z = {"F float32": np.asfortranarray(z).astype(np.float32, order="F"),
         "C float16": z.astype(np.float16), "big-endian": z.astype(">f8"),
         "npz F": np.asfortranarray(z)}[layout]
    logits = tmp_path / ("z.npz" if layout.startswith("npz") else "z.npy")
    np.savez(logits, logits=z) if logits.suffix == ".npz" else np.save(logits, z)
    sliced, whole, read_whole = _both_readers(
        runner, tmp_path, monkeypatch, [str(logits), option, str(tmp_path / side), "--show", "2"])
    assert sliced[0] == 0, sliced[2]
    assert sliced == whole and not read_whole


@pytest.mark.parametrize("flipped", [None, 3, 70_000])  # intact; a byte in the first, a late page
def test_an_npz_member_is_checked_window_by_window(tmp_path, monkeypatch, flipped):
    import mmap

    from xent_cli.errors import InputError

    z = np.random.default_rng(4).normal(size=(1000, 10))  # 80 kB: many windows of a page
    np.savez(tmp_path / "z.npz", logits=z)
    raw = bytearray((tmp_path / "z.npz").read_bytes())
    if flipped is not None:
        raw[raw.find(z.tobytes()) + flipped] ^= 0x40
    (tmp_path / "z.npz").write_bytes(bytes(raw))
    monkeypatch.setattr(stream, "CRC_WINDOW", mmap.PAGESIZE)
    if flipped is None:
        assert isinstance(stream._load_npz(str(tmp_path / "z.npz"))["logits"], np.memmap)
    else:
        with pytest.raises(InputError, match="Bad CRC-32"):  # NumPy's own message, as it reads it
            stream._load_npz(str(tmp_path / "z.npz"))["logits"]


@pytest.mark.parametrize("held, flaw", [("labels", None), ("targets", None), ("labels", 9),
                                        ("labels", 2.5), ("targets", -0.5), ("targets", np.nan)])
@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_an_npz_s_own_labels_or_targets_read_in_chunks_as_the_whole_reader_reads_them(
        runner, tmp_path, inputs, small_slices, monkeypatch, held, flaw, loss):
    z, y, t = inputs
    y, t = y.astype(np.float64 if flaw == 2.5 else np.int64), t.copy()
    if flaw is not None:
        (y if held == "labels" else t[:, 1])[29] = flaw
    np.savez(tmp_path / "zy.npz", logits=z, **{held: y if held == "labels" else t})
    sliced, whole, read_whole = _both_readers(runner, tmp_path, monkeypatch,
                                              [str(tmp_path / "zy.npz"), "--loss", loss])
    assert sliced == whole
    if flaw is None and (loss == "ce" or held == "targets"):
        assert sliced[0] == 0 and not read_whole
        assert json.loads(sliced[1])["loss"] == pytest.approx(_expected(loss, z, y, t, held), rel=1e-13)
    elif held == "labels" and loss == "bce" and flaw != 2.5:  # told once labels are read
        assert sliced[0] == 2 and "needs a target per class" in sliced[2]
    else:
        column = "'labels'" if held == "labels" else "'1'"
        assert sliced[0] == 2 and f"zy.npz, row 29, column {column}: " in sliced[2]


@pytest.mark.parametrize("logit", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("option, side", [("--labels", "y.npy"), ("--targets", "t.npy"),
                                          ("--targets", "t.parquet")])
def test_a_mapped_logit_that_is_no_finite_number_is_judged_as_the_whole_reader_judges_it(
        runner, tmp_path, inputs, small_slices, monkeypatch, logit, option, side):
    z = inputs[0].copy()
    z[27, 1] = logit
    np.save(tmp_path / "z.npy", z)
    sliced, whole, _ = _both_readers(runner, tmp_path, monkeypatch,
                                     [str(tmp_path / "z.npy"), option, str(tmp_path / side)])
    assert sliced == whole
    # a masked class (-inf) is computed; with a soft target on it, the loss is infinite
    assert sliced[0] == 2 and "z.npy, row 27, column '1': " in sliced[2] or logit == -np.inf
