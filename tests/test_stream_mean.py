"""`xent eval --output` with 'mean': the divisor comes from the targets alone, the logits are read once,
and the rows are the in-memory gradient of the mean, bit for bit, from every reader."""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xent_cli import bce, losses, stream
from xent_cli.cli import app

pl = pytest.importorskip("polars")

# weights with few mantissa bits: their sums are exact in float32 and float64 whatever the
# chunks, so the in-memory divisor of one piece is the streamed one
EXACT_WEIGHTS = (0.5, 2.0, 1.25, 0.75)


@pytest.fixture
def fast(monkeypatch):
    """Forces the fast block reader on every CSV, with blocks of about 10 lines."""
    monkeypatch.setattr(stream, "FAST_CSV_BYTES", 0)
    monkeypatch.setattr(stream, "BLOCK_BYTES", 400)


@pytest.fixture
def strict(monkeypatch):
    monkeypatch.setattr(stream, "FAST_CSV_BYTES", 1 << 60)


def _write(path, rows, names) -> str:
    path.write_text(",".join(names) + "\n" + "".join(",".join(map(repr, r)) + "\n" for r in rows))
    return str(path)


def _labelled(tmp_path, z, y) -> str:
    k = z.shape[1]
    rows = [row + [int(label)] for row, label in zip(z.tolist(), y)]
    return _write(tmp_path / "z.csv", rows, [f"z{c}" for c in range(k)] + ["label"])


def _problem(seed=0, n=120, k=4, ignored=False):
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=3, size=(n, k))
    y = rng.integers(0, k, size=n)
    if ignored:
        y[rng.random(n) < 0.3] = -1
        y[0] = 1
    return z, y


def _grad_rows(runner, path, *options) -> np.ndarray:
    out = path.parent / "rows.npy"
    result = runner.invoke(app, ["eval", str(path), "--show", "0", "--output", str(out), *options])
    assert result.exit_code == 0, result.output
    return np.load(out)["grad"]


def _same_bits(got: np.ndarray, expected: np.ndarray) -> bool:
    return got.dtype == expected.dtype and np.array_equal(got.view(np.uint8), expected.view(np.uint8))


# --- the rows are the in-memory gradient of the mean, bit for bit ----------------------------

@pytest.mark.parametrize("reader", ["fast", "strict"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("weighted, ignored", [(False, False), (True, False), (False, True),
                                               (True, True)])
def test_csv_rows_with_labels(runner, tmp_path, request, reader, dtype, weighted, ignored):
    request.getfixturevalue(reader)
    z, y = _problem(1, ignored=ignored)
    path = tmp_path / "z.csv"
    _labelled(tmp_path, z, y)
    options = ["--dtype", dtype] + (["--ignore-index", "-1"] if ignored else [])
    options += ["--weight", ",".join(map(str, EXACT_WEIGHTS))] if weighted else []
    got = _grad_rows(runner, path, *options)
    expected = losses.cross_entropy(z, y, weight=EXACT_WEIGHTS if weighted else None,
                                    ignore_index=-1, reduction="mean", dtype=dtype).grad
    assert _same_bits(got, expected)
    # and it is the gradient of the mean: w_y (p - onehot(y)) / sum of the counted w_y
    w = np.asarray(EXACT_WEIGHTS if weighted else np.ones(4))
    counted = y != -1
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    by_hand = np.where(counted[:, None], w[np.where(counted, y, 0)][:, None]
                       * (p - np.eye(4)[np.where(counted, y, 0)]), 0) / w[y[counted]].sum()
    np.testing.assert_allclose(got, by_hand, rtol=1e-4 if dtype == "float32" else 1e-12,
                               atol=1e-7 if dtype == "float32" else 1e-15)


@pytest.mark.parametrize("reader", ["fast", "strict"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_csv_rows_with_soft_targets(runner, tmp_path, request, reader, dtype):
    request.getfixturevalue(reader)
    rng = np.random.default_rng(2)
    z, t = rng.normal(size=(90, 3)), rng.dirichlet(np.ones(3), size=90)
    names = ["a", "b", "c"]
    path = tmp_path / "z.csv"
    _write(path, z.tolist(), names)
    targets = _write(tmp_path / "t.csv", t.tolist(), names)
    got = _grad_rows(runner, path, "--targets", targets, "--dtype", dtype)
    assert _same_bits(got, losses.cross_entropy(z, t, reduction="mean", dtype=dtype).grad)


@pytest.mark.parametrize("reader", ["fast", "strict"])
@pytest.mark.parametrize("weighted", [False, True])
def test_csv_rows_of_binary_cross_entropy(runner, tmp_path, request, reader, weighted):
    request.getfixturevalue(reader)
    rng = np.random.default_rng(3)
    z, t = rng.normal(scale=2, size=(100, 3)), rng.integers(0, 2, size=(100, 3))
    names = ["a", "b", "c"]
    path = tmp_path / "z.csv"
    _write(path, z.tolist(), names)
    targets = _write(tmp_path / "t.csv", t.tolist(), names)
    options = ["--pos-weight", "2,1,0.5", "--weight", "1,3,1"] if weighted else []
    got = _grad_rows(runner, path, "--loss", "bce", "--targets", targets, *options)
    expected = bce.binary_cross_entropy(z, t, reduction="mean",
                                        weight=(1, 3, 1) if weighted else None,
                                        pos_weight=(2, 1, 0.5) if weighted else None).grad
    assert _same_bits(got, expected)
    sigma = 1 / (1 + np.exp(-z))
    if not weighted:  # σ(z) − t over all N × k elements
        np.testing.assert_allclose(got, (sigma - t) / 300, rtol=1e-13, atol=1e-17)


def _array_inputs(tmp_path, z, y):
    """Returns the same problem as .npy with --labels, .npz, .parquet and CSV: (path, options)."""
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    np.savez(tmp_path / "zy.npz", logits=z, labels=y)
    frame = pl.DataFrame({**{f"z{c}": z[:, c] for c in range(z.shape[1])}, "label": y})
    frame.write_parquet(tmp_path / "zy.parquet")
    csv = _labelled(tmp_path, z, y)
    return [(str(tmp_path / "z.npy"), dict(labels_path=str(tmp_path / "y.npy"))),
            (str(tmp_path / "zy.npz"), {}), (str(tmp_path / "zy.parquet"), {}), (csv, {})]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_in_memory_sources_in_many_chunks(tmp_path, strict, dtype):
    z, y = _problem(4, n=100, ignored=True)
    expected = losses.cross_entropy(z, y, weight=EXACT_WEIGHTS, ignore_index=-1,
                                    reduction="mean", dtype=dtype).grad
    for path, reading in _array_inputs(tmp_path, z, y):
        parts = []
        source = stream.open_source(path, chunk_rows=7, **reading)
        summary = stream.evaluate(source, weight=EXACT_WEIGHTS, ignore_index=-1, dtype=dtype,
                                  rows=parts.append)
        assert _same_bits(np.concatenate([p.grad for p in parts]), expected), path
        assert summary.n == 100 and summary.loss == pytest.approx(
            losses.cross_entropy(z, y, weight=EXACT_WEIGHTS, ignore_index=-1).loss, rel=1e-6)


def test_npz_soft_and_binary_targets_in_many_chunks(tmp_path):
    rng = np.random.default_rng(5)
    z, t = rng.normal(size=(50, 3)), rng.dirichlet(np.ones(3), size=50)
    np.savez(tmp_path / "soft.npz", logits=z, targets=t)
    for loss, expected in (("ce", losses.cross_entropy(z, t).grad),
                           ("bce", bce.binary_cross_entropy(z, t).grad)):
        parts = []
        source = stream.open_source(str(tmp_path / "soft.npz"), chunk_rows=6,
                                    min_classes=1 if loss == "bce" else 2)
        stream.evaluate(source, loss=loss, rows=parts.append)
        assert _same_bits(np.concatenate([p.grad for p in parts]), expected), loss


# --- the divisor of the pre-pass is the full pass's, bit for bit -------------------------------

@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 80), k=st.integers(2, 5),
       block=st.integers(30, 600), dtype=st.sampled_from(["float32", "float64"]),
       ignore=st.booleans())
def test_pre_pass_divisor_is_the_full_pass_divisor_with_any_weights(tmp_path_factory, seed, n, k,
                                                                     block, dtype, ignore):
    # float32 weights like 0.1 make every chunk's sum round: the weights are summed exactly once
    rng = np.random.default_rng(seed)
    z, y = rng.normal(size=(n, k)), rng.integers(0, k, size=n)
    if ignore:
        y[rng.random(n) < 0.3] = -100
    weight = tuple(np.round(rng.uniform(0.05, 3, size=k), 3))
    path = _labelled(tmp_path_factory.mktemp("d"), z, y)
    options = dict(weight=weight, dtype=dtype)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stream, "FAST_CSV_BYTES", 0)
        patch.setattr(stream, "BLOCK_BYTES", block)
        dt = np.dtype(dtype)
        w = np.asarray(weight).astype(dt)
        # whatever the chunks: the exact sum (fsum's), rounded once to the dtype
        by_hand = float(dt.type(math.fsum(w[y[y != -100]].tolist())))
        for source in (stream.open_source(path), stream.open_source(path, chunk_rows=block // 40 + 1)):
            pre = stream._divisor_pass(source, dict(loss="ce", ignore_index=-100, **options))
            assert pre == by_hand
            if by_hand > 0:
                full = stream.evaluate(source, show=0, **options)  # one pass, no rows: no pre-pass
                assert full.divisor == pre


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 300), k=st.integers(2, 6),
       dtype=st.sampled_from(["float32", "float64"]), weighted=st.booleans(),
       ignore_index=st.sampled_from([-100, 0, 2]))
def test_a_blocks_divisor_from_its_labels_alone_is_cross_entropys(seed, n, k, dtype, weighted,
                                                                   ignore_index):
    rng = np.random.default_rng(seed)
    z, y = rng.normal(size=(n, k)), rng.integers(0, k, size=n)
    y[rng.random(n) < 0.2] = ignore_index
    weight = tuple(rng.uniform(0.01, 5, size=k)) if weighted else None
    full = losses.cross_entropy(z, y, weight=weight, ignore_index=ignore_index, reduction="sum",
                                dtype=dtype)
    alone = losses.mean_divisor(y, k, weight=weight, ignore_index=ignore_index, dtype=dtype)
    assert alone == full.divisor
    # by hand: the counted samples' weights in dtype (ones without weights), summed exactly
    w = np.ones(k) if weight is None else np.asarray(weight)
    counted = w.astype(dtype)[y[y != ignore_index]].tolist()
    assert alone == float(np.dtype(dtype).type(math.fsum(counted)))
    soft = rng.dirichlet(np.ones(k), size=n)
    assert losses.mean_divisor(n, k, weight=weight, dtype=dtype) == losses.cross_entropy(
        z, soft, weight=weight, dtype=dtype).divisor == n


def test_a_label_that_is_no_class_counts_for_nothing_instead_of_crashing():
    y = np.array([0, 5, -3, 1, -100])  # 5 and -3 are refused by the full pass, not here
    assert losses.mean_divisor(y, 3, weight=(1.0, 2.0, 4.0)) == 3.0
    assert losses.mean_divisor(y, 3) == 2.0
    assert bce.mean_divisor(7, 3) == 21


@pytest.mark.parametrize("pre_pass", ["_row_count", "_divisor_pass"])
def test_a_divisor_that_disagrees_is_a_bug_said_plainly(tmp_path, fast, monkeypatch, pre_pass):
    z, y = _problem(6, n=30)
    source = stream.open_source(_labelled(tmp_path, z, y))
    monkeypatch.setattr(stream, "_row_count", lambda source, options: None)
    monkeypatch.setattr(stream, pre_pass, lambda source, options: 29.0)
    with pytest.raises(RuntimeError, match="29.0.*30.0"):
        stream.evaluate(source, rows=lambda rows: None)


# --- the logits are read once -----------------------------------------------------------------

@pytest.fixture
def counted(monkeypatch):
    """Counts full parses of a block, Polars' one-column parses and kernel calls."""
    calls = {"full": 0, "column": 0, "kernel": 0}

    def counting(name, function):
        def wrapper(*arguments, **keywords):
            calls[name] += 1
            return function(*arguments, **keywords)
        return wrapper

    monkeypatch.setattr(stream, "_parse_block", counting("full", stream._parse_block))
    monkeypatch.setattr(stream, "_parse_column", counting("column", stream._parse_column))
    for loss, kernel in list(stream._KERNELS.items()):
        monkeypatch.setitem(stream._KERNELS, loss, dataclasses.replace(
            kernel, chunk=counting("kernel", kernel.chunk)))
    return calls


def _blocks_of(path: str) -> int:
    _, offset = stream._plain_header(path, ",")
    with open(path, "rb") as file:
        return sum(1 for _ in stream._spans(file.fileno(), offset))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_labels_file_is_parsed_once_in_full(runner, tmp_path, fast, counted, reduction):
    z, y = _problem(7, n=200)
    path = _labelled(tmp_path, z, y)
    blocks = _blocks_of(path)
    assert blocks > 10
    _grad_rows(runner, tmp_path / "z.csv", "--reduction", reduction)
    # 'mean' reads the labels at the line ends for the divisor: no parse at all
    assert counted == {"full": blocks, "column": 0, "kernel": blocks}


def test_a_first_label_column_is_parsed_alone_for_a_weighted_divisor(runner, tmp_path, fast,
                                                                      counted):
    z, y = _problem(7, n=200)
    rows = [[int(label)] + row for row, label in zip(z.tolist(), y)]
    path = _write(tmp_path / "z.csv", rows, ["label", "z0", "z1", "z2", "z3"])
    blocks = _blocks_of(path)
    weights = ",".join(map(str, EXACT_WEIGHTS))
    got = _grad_rows(runner, tmp_path / "z.csv", "--weight", weights)
    assert counted == {"full": blocks, "column": blocks, "kernel": blocks}
    assert _same_bits(got, losses.cross_entropy(z, y, weight=EXACT_WEIGHTS).grad)


@pytest.mark.parametrize("header", [["label", "z0", "z1", "z2", "z3"], ["z0", "z1", "z2", "z3", "label"]])
def test_unweighted_labels_divide_by_the_rows_counted_without_parsing(runner, tmp_path, fast,
                                                                      counted, header):
    z, y = _problem(7, n=200)
    rows = [[int(label)] + row if header[0] == "label" else row + [int(label)]
            for row, label in zip(z.tolist(), y)]
    path = _write(tmp_path / "z.csv", rows, header)
    blocks = _blocks_of(path)
    got = _grad_rows(runner, tmp_path / "z.csv", "--label-smoothing", "0.1")
    assert counted == {"full": blocks, "column": 0, "kernel": blocks}
    assert _same_bits(got, losses.cross_entropy(z, y, label_smoothing=0.1).grad)


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(st.sampled_from(["1,2,0", "3.5,-1,2", "", '"1",2,0', "7,8,1\r"]),
                      min_size=0, max_size=40),
       newline=st.sampled_from(["\n", "\r\n"]), last=st.booleans(), piece=st.integers(1, 64))
def test_the_row_total_is_the_rows_of_the_blocks_whatever_the_pieces(lines, newline, last, piece):
    import tempfile

    text = "z0,z1,label\n" + newline.join(lines) + (newline if last and lines else "")
    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/z.csv"
        with open(path, "w", newline="") as file:
            file.write(text)
        header, offset = stream._plain_header(path, ",")

        def rows(count, block_bytes):  # the rows counted, or the hand-over to the strict reader
            original, stream.BLOCK_BYTES = stream.BLOCK_BYTES, block_bytes
            try:
                return sum(count(path, offset, 3, ","))
            except stream._Unusual:
                return "strict reader"
            finally:
                stream.BLOCK_BYTES = original

        # pieces that cut lines, quotes and CRLF anywhere, against blocks of the same size cut at
        # line ends, as the full pass reads them
        assert rows(stream._row_total, piece) == rows(stream._block_rows, piece)


@pytest.mark.parametrize("first_ignored", [3, 150])
def test_an_ignored_label_makes_the_labels_the_divisor_and_the_rows_start_over(
        runner, tmp_path, fast, counted, first_ignored):
    z, y = _problem(8, n=200)
    y = y.astype(np.int64)
    y[first_ignored::7] = -100
    path = _labelled(tmp_path, z, y)
    _, offset = stream._plain_header(path, ",")
    with open(path, "rb") as file:
        ends = np.cumsum([stream._read_block(file.fileno(), *span).count(b"\n")
                          for span in stream._spans(file.fileno(), offset)])
    got = _grad_rows(runner, tmp_path / "z.csv")
    expected = losses.cross_entropy(z, y)
    assert expected.divisor == 200 - len(range(first_ignored, 200, 7))
    assert _same_bits(got, expected.grad)
    # the blocks up to the one with the first ignored label, then all of them again
    with_first = int(np.searchsorted(ends, first_ignored, side="right"))
    assert counted["kernel"] == with_first + 1 + len(ends) and counted["column"] == 0


def test_crlf_and_quoted_blocks_still_give_the_in_memory_rows(runner, tmp_path, fast, counted):
    z, y = _problem(13, n=60)
    lines = [",".join(map(repr, row)) + f",{label}" for row, label in zip(z.tolist(), y)]
    lines[30] = '"' + lines[30].replace(",", '",', 1)  # its first cell quoted
    path = tmp_path / "z.csv"
    path.write_bytes(("z0,z1,z2,z3,label\r\n" + "\r\n".join(lines) + "\r\n").encode())
    assert b'"' in path.read_bytes()
    got = _grad_rows(runner, path, "--weight", ",".join(map(str, EXACT_WEIGHTS)),
                     "--dtype", "float32")
    # the fast reader read it all (the strict one would have run the kernel on its own chunks)
    assert counted["full"] == counted["kernel"] == _blocks_of(str(path))
    assert counted["column"] == 1  # the quoted block only
    expected = losses.cross_entropy(z, y, weight=EXACT_WEIGHTS, dtype="float32").grad
    assert _same_bits(got, expected)


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_targets_files_are_parsed_once_in_full(runner, tmp_path, fast, counted, loss):
    rng = np.random.default_rng(8)
    z, t = rng.normal(size=(150, 3)), rng.dirichlet(np.ones(3), size=150)
    path = _write(tmp_path / "z.csv", z.tolist(), ["a", "b", "c"])
    targets = _write(tmp_path / "t.csv", t.tolist(), ["a", "b", "c"])
    blocks, target_blocks = _blocks_of(path), _blocks_of(targets)
    _grad_rows(runner, tmp_path / "z.csv", "--loss", loss, "--targets", targets)
    # the divisor needs only each block's lines, counted
    assert counted == {"full": blocks + target_blocks, "column": 0, "kernel": blocks}


def test_in_memory_source_is_evaluated_once(tmp_path, counted):
    z, y = _problem(9, n=100)
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    source = stream.open_source(str(tmp_path / "z.npy"), labels_path=str(tmp_path / "y.npy"),
                                chunk_rows=9)
    stream.evaluate(source, rows=lambda rows: None)
    assert counted == {"full": 0, "column": 0, "kernel": 12}


# --- what the fast reader hands over still reads right ----------------------------------------

@pytest.mark.parametrize("suffix", [".csv", ".npy"])
def test_a_nan_in_the_middle_is_the_strict_readers_error_and_no_file(runner, tmp_path, fast,
                                                                    suffix):
    z, y = _problem(10, n=100)
    _labelled(tmp_path, z, y)
    text = (tmp_path / "z.csv").read_text().splitlines(keepends=True)
    text[60] = "0.5,nan,1.0,2.0,3\n"  # line 61, in a block well past the first
    (tmp_path / "z.csv").write_text("".join(text))
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--output",
                                 str(tmp_path / f"o{suffix}")])
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"Error: {tmp_path / 'z.csv'}, line 61, column 'z1': "
                             "logit 'nan' is not a finite number\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.csv"]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_blank_line_in_the_middle_gives_the_strict_readers_rows(runner, tmp_path, fast, dtype):
    z, y = _problem(11, n=80)
    _labelled(tmp_path, z, y)
    text = (tmp_path / "z.csv").read_text().splitlines(keepends=True)
    text.insert(41, "\n")  # after line 41: sample 40 is on line 43
    (tmp_path / "z.csv").write_text("".join(text))
    out = tmp_path / "o.npy"
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--weight", "0.1,0.7,1.3,2.9",
                                 "--dtype", dtype, "--output", str(out)])
    assert result.exit_code == 0, result.output
    records = np.load(out)
    assert records["line"].tolist() == list(range(2, 42)) + list(range(43, 83))
    # the strict reader reads one piece: its divisor is the in-memory one
    expected = losses.cross_entropy(z, y, weight=(0.1, 0.7, 1.3, 2.9), dtype=dtype).grad
    assert _same_bits(records["grad"], expected)


def test_every_sample_ignored_is_the_usual_error_and_no_file(runner, tmp_path, fast):
    z = np.zeros((40, 2))
    _labelled(tmp_path, z, np.full(40, -100))
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--output", str(tmp_path / "o.npy")])
    assert result.exit_code == 2 and "every sample is ignored" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.csv"]


def test_a_label_out_of_range_is_named_at_its_line_with_weights(runner, tmp_path, fast):
    z, y = _problem(12, n=60)
    y[33] = 7  # line 35; with weights, indexing weight[7] would crash a careless divisor
    _labelled(tmp_path, z, y)
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--weight", "1,2,3,4",
                                 "--output", str(tmp_path / "o.csv")])
    assert result.exit_code == 2, result.output
    assert "line 35" in result.stderr and "label 7 is not a class index" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.csv"]


# --- the line-end reader of labels agrees with Polars wherever the full pass reads a block -----

# labels as a file may spell them: mostly ones the full pass takes, then odd ones
PLAIN = ["0", "7", "12", "-100", "-0", "007", "123456789", "2.0", "+5", '"4"']
ODD = ["1.5", "1e2", " 3", "3 ", "", "1234567890", "-", "--1", "x"]


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.one_of(st.tuples(st.sampled_from(["0.5", "-1", '"2"']),
                                         st.sampled_from(PLAIN * 3 + ODD)),
                               st.just(None)), min_size=1, max_size=8),
       newline=st.sampled_from(["\n", "\r\n", "\r"]), extra=st.sampled_from(["", "\r", ",1"]))
def test_line_end_labels_are_polars_labels(rows, newline, extra):
    lines = ["" if row is None else f"{row[0]},{row[1]}" for row in rows]
    block = (newline.join(lines) + extra + "\n").encode()
    labels = stream._last_cells(block, ",")
    try:
        full = stream._parse_block(block, 2, ",")
    except stream._Unusual:
        return  # the full pass hands the block to the strict reader
    if stream._plain_lines(block):
        assert block.count(b"\n") == len(full)  # lines are rows
    if labels is not None and np.isfinite(full).all():
        assert len(labels) == len(full)
        whole = full[:, 1] == np.round(full[:, 1])  # else the full pass hands the block over
        assert np.array_equal(labels[whole], full[whole, 1].astype(np.int64))


def test_line_end_labels_by_hand():
    assert stream._last_cells(b"1,2,0\n3,4,12\n", ",").tolist() == [0, 12]
    assert stream._last_cells(b"1,2,-100\r\n3,4,007\r\n", ",").tolist() == [-100, 7]
    assert stream._last_cells(b"1\t2\t3\n", "\t").tolist() == [3]
    for odd in (b"1,2,0\n\n3,4,1\n", b"12\n", b"1,2,1.5\n", b'1,"2",0\n', b"1,2,0\r3,4,1\n",
                b"1,2,--5\n", b"1,2, 3\n", b"1,2,1234567890\n", b"1,-\n"):
        assert stream._last_cells(odd, ",") is None, odd  # Polars reads these blocks


@pytest.mark.parametrize("header", ["label,z0,z1", "z0,z1,label"])
@pytest.mark.parametrize(("pre_pass", "options"), [("_row_count", []),
                                                   ("_divisor_pass", ["--weight", "1,2"])])
def test_a_quote_left_open_stops_the_pre_pass_and_the_strict_reader_says_where(
        runner, tmp_path, fast, monkeypatch, header, pre_pass, options):
    rows = [header] + ["0,1.5,1" for _ in range(30)]
    rows[20] = rows[20].replace(",", ',"', 1)  # line 21
    (tmp_path / "z.csv").write_text("\n".join(rows) + "\n")
    handed_over = []
    counting = getattr(stream, pre_pass)

    def watched(source, options):
        try:
            return counting(source, options)
        except stream._Unusual:
            handed_over.append(source.name)
            raise

    monkeypatch.setattr(stream, pre_pass, watched)
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--output", str(tmp_path / "o.csv"),
                                 *options])
    assert result.exit_code == 2 and handed_over == [str(tmp_path / "z.csv")]  # by the pre-pass
    assert result.stderr.startswith(f"Error: {tmp_path / 'z.csv'}, line 21: a quoted cell runs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.csv"]


def test_the_row_total_reads_on_after_a_short_read(tmp_path, monkeypatch):
    # a read may return fewer bytes than asked before the end of a file (a network or FUSE file
    # system): the piece's other lines went uncounted, and the divisor's cross-check then
    # stopped the run with a RuntimeError
    path = tmp_path / "z.csv"
    path.write_text("z0,z1,label\n" + "".join(f"{i},{-i},{i % 2}\n" for i in range(500)))
    _, offset = stream._plain_header(str(path), ",")
    monkeypatch.setattr(stream, "BLOCK_BYTES", 256)

    class Short(io.FileIO):
        def readinto(self, buffer):
            return super().readinto(memoryview(buffer)[:37])

    monkeypatch.setattr(stream, "open", lambda *a, **k: Short(a[0], "rb"), raising=False)
    assert sum(stream._row_total(str(path), offset, 3, ",")) == 500
