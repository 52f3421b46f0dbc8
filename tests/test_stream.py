"""Streaming xent eval: chunks change nothing, the fast reader agrees with the strict one, formats."""

from __future__ import annotations

import bz2
import gc
import gzip
import io
import json
import lzma
import math
import os
import re
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from test_eval import BAD_INPUTS, assert_bad_input_fails_cleanly
from xent_cli import data, losses, stream
from xent_cli.cli import app
from xent_cli.errors import InputError


@pytest.fixture(params=["polars", "cut"])
def fast(request, monkeypatch):
    """Forces the fast block reader on every CSV, with blocks of a few lines,
    parsed by Polars' CSV reader or cut into cells and cast (as a file of many columns is)."""
    monkeypatch.setattr(stream, "FAST_CSV_BYTES", 0)
    monkeypatch.setattr(stream, "BLOCK_BYTES", 64)
    if request.param == "cut":
        monkeypatch.setattr(stream, "WIDE_CSV_COLUMNS", 0)


def _csv(z: np.ndarray, y: np.ndarray) -> str:
    k = z.shape[1]
    rows = [",".join(map(repr, row)) + f",{label}" for row, label in zip(z.tolist(), y.tolist())]
    return ",".join(f"z{c}" for c in range(k)) + ",label\n" + "\n".join(rows) + "\n"


def _collect(source, chunk_options):
    """Returns the summary and the per-sample arrays a streamed evaluation hands out."""
    parts = []
    summary = stream.evaluate(source, rows=parts.append, **chunk_options)
    stack = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    return summary, stack("per_sample"), stack("probs"), stack("grad")


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(2, 6), chunk=st.integers(1, 17), seed=st.integers(0, 2**32 - 1),
       reduction=st.sampled_from(["mean", "sum", "none"]), weighted=st.booleans(),
       smoothing=st.sampled_from([0.0, 0.1]), ignore=st.booleans(), soft=st.booleans())
def test_any_chunk_size_gives_the_in_memory_results(n, k, chunk, seed, reduction, weighted, smoothing,
                                                     ignore, soft):
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=3, size=(n, k))
    labels = rng.integers(0, k, size=n)
    if ignore:
        labels[rng.random(n) < 0.3] = -100
        labels[0] = 0  # 'mean' needs a counted sample
    targets = rng.dirichlet(np.ones(k), size=n) if soft else None
    loaded = data.EvalInput(
        logits=z, labels=None if soft else labels, targets=targets,
        class_names=tuple(f"z{c}" for c in range(k)), source="z.csv", lines=tuple(range(2, n + 2)),
        target_source="z.csv", target_column="'label'", target_lines=tuple(range(2, n + 2)))
    weight = tuple(rng.uniform(0.5, 2, size=k)) if weighted else None
    options = dict(weight=weight, label_smoothing=smoothing, reduction=reduction, show=2)
    reference = data.evaluate(loaded, **options)
    summary, per_sample, probs, grad = _collect(stream._in_memory(loaded, chunk), options)
    # row-wise results do not see the chunks
    assert np.array_equal(per_sample, reference.result.per_sample)
    assert np.array_equal(probs, reference.result.probs)
    assert np.array_equal(grad, reference.result.grad)  # the divisor too: weights summed once
    # the total is the correctly rounded sum whatever the chunks
    assert summary.total == math.fsum(reference.result.per_sample.tolist())
    assert math.isclose(summary.total, reference.result.total, rel_tol=1e-15, abs_tol=1e-300)
    assert summary.divisor == reference.result.divisor
    assert summary.accuracy == reference.accuracy
    assert summary.ignored == int(reference.result.ignored.sum())
    one_chunk = stream.evaluate(stream._in_memory(loaded, n), **options)
    # a chunk's extended-precision sum may leave out 2**-64 of it: an exact total that close to
    # a float64 rounding boundary rounds to either side (n=27, k=3, chunk=1, seed=3, weighted)
    assert abs(summary.total - one_chunk.total) <= math.ulp(summary.total)
    assert summary.divisor == one_chunk.divisor
    for streamed, worked in zip(summary.worked, reference.worked):
        assert np.array_equal(streamed.grad, worked.grad)
        assert streamed.loss == worked.loss
        assert streamed.scale == worked.scale


OPTIONS = [
    [],
    ["--reduction", "sum"],
    ["--reduction", "none", "--format", "json"],
    ["--weight", "1,2,0.5", "--format", "json"],
    ["--label-smoothing", "0.1", "--format", "csv"],
    ["--ignore-index", "1", "--reduction", "mean"],
    ["--dtype", "float32", "--format", "json"],
    # float32 sums of these weights round: summed chunk by chunk, the divisor moved with the chunks
    ["--weight", "0.2397947701362042,2.7553550874082435,1.018796113027463", "--dtype", "float32",
     "--format", "json"],
    ["--weight", "0.3,1,3", "--label-smoothing", "0.2", "--ignore-index", "2", "--reduction", "sum"],
]


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=12),
       last_newline=st.booleans(), offset=st.integers(0, 30), block=st.integers(1, 90),
       peek=st.integers(1, 50))
def test_blocks_are_whole_lines_cut_at_the_first_line_end_past_the_block_size(
        tmp_path_factory, lines, last_newline, offset, block, peek):
    content = b"\n".join(lines) + (b"\n" if last_newline and lines else b"")
    path = tmp_path_factory.mktemp("blocks") / "f.csv"
    path.write_bytes(content)
    original = stream.BLOCK_BYTES, stream.PEEK_BYTES
    stream.BLOCK_BYTES, stream.PEEK_BYTES = block, peek
    try:
        with open(path, "rb") as file:
            spans = list(stream._spans(file.fileno(), offset))
            blocks = [stream._read_block(file.fileno(), *span) for span in spans]
    finally:
        stream.BLOCK_BYTES, stream.PEEK_BYTES = original
    # the oracle: from each start, BLOCK_BYTES and then up to and with the next newline, up to
    # the file's end less the blank lines and spaces that end it, where a peek holds them
    tail = content[max(0, len(content) - peek):]
    kept = tail.rstrip(b" \t\r\n")
    end = len(content) - (len(tail) - len(kept)) if kept else len(content)
    expected, start = [], offset
    while start < end:
        newline = content.find(b"\n", min(start + block, end) - 1)
        stop = len(content) if newline < 0 else newline + 1
        expected.append((content[start:stop], stop))
        start = stop
    assert [stop for _, stop in spans] == [stop for _, stop in expected]
    assert [start for start, _ in spans] == [offset, *(stop for _, stop in expected)][:len(spans)]
    assert blocks == [b if b.endswith(b"\n") else b + b"\n" for b, _ in expected]


def test_a_last_line_a_writer_finishes_during_the_read_is_read_whole(tmp_path, monkeypatch):
    # the blocks go to the file's size when the read begins; a line cut there by a writer that
    # appends was read as a whole row ('3,4.2' of '3,4.25'), a wrong number without a word
    path = tmp_path / "z.csv"
    path.write_bytes(b"1,2\n" * 10 + b"3,4.2")
    monkeypatch.setattr(stream, "BLOCK_BYTES", 8)
    monkeypatch.setattr(stream, "PEEK_BYTES", 4)
    blocks = stream._parsed_blocks(str(path), 0, bytes)
    read = [next(blocks)[0]]
    with open(path, "ab") as file:
        file.write(b"5\n1,2\n")  # the line is finished, and one more begun after the read
    read += [block for block, _ in blocks]
    assert b"".join(read) == b"1,2\n" * 10 + b"3,4.25\n"


def test_a_block_read_short_is_read_on_to_its_end(tmp_path, monkeypatch):
    # pread may return fewer bytes than asked before the end of a file (a network or FUSE file
    # system): the rest of the block was skipped, as the next block starts where this one ends,
    # and a short peek was taken for the end of the file, cutting a line in two
    content = b"".join(b"%d,%d\n" % (i, i * 7) for i in range(400))
    path = tmp_path / "z.csv"
    path.write_bytes(content)
    monkeypatch.setattr(stream, "BLOCK_BYTES", 300)
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, at: real(fd, min(n, 97), at))
    read = [block for block, _ in stream._parsed_blocks(str(path), 0, bytes)]
    assert b"".join(read) == content


def test_blocks_left_in_a_cycle_close_when_collected_in_a_parser_thread(tmp_path, monkeypatch):
    # the garbage collector closes a generator in whichever thread it runs: in one of the
    # generator's own parser threads, waiting for them all ended in 'cannot join current
    # thread', printed as an exception ignored, with the file closed under the other's read
    import threading

    path = tmp_path / "z.csv"
    path.write_bytes(b"".join(b"%02d,2\n" % i for i in range(40)))
    monkeypatch.setattr(stream, "BLOCK_BYTES", 16)
    dropped, collected, ignored = threading.Event(), threading.Event(), []
    monkeypatch.setattr(sys, "unraisablehook", ignored.append)

    def parse(block: bytes) -> bytes:
        # the second block, told by its first line: the threads may start the two in any order
        # (and only two are asked for before the first is yielded)
        if not block.startswith(b"00,") and dropped.wait(timeout=5):
            gc.collect()  # finds the cycle below, in this parser thread
            collected.set()
        return block

    blocks = stream._parsed_blocks(str(path), 0, parse)
    gc.disable()
    try:
        next(blocks)
        cycle: list = [blocks]
        cycle.append(cycle)
        del blocks, cycle
        dropped.set()
        assert collected.wait(timeout=5)
        time.sleep(0.2)  # the closing thread's exception, if any, is reported after gc.collect
    finally:
        gc.enable()
    assert not ignored, ignored[0].exc_value


@pytest.mark.parametrize("options", OPTIONS, ids=[" ".join(o) or "default" for o in OPTIONS])
def test_fast_reader_gives_the_same_bytes_as_the_strict_one(runner, tmp_path, monkeypatch, options):
    rng = np.random.default_rng(7)
    z = rng.normal(scale=4, size=(300, 3))
    (tmp_path / "z.csv").write_text(_csv(z, rng.integers(0, 3, size=300)))
    outputs = {}
    for name, threshold, wide in (("strict", 1 << 60, 1 << 30), ("fast", 0, 1 << 30),
                                  ("cut", 0, 0)):
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", threshold)
        monkeypatch.setattr(stream, "WIDE_CSV_COLUMNS", wide)
        monkeypatch.setattr(stream, "BLOCK_BYTES", 1000)  # about 20 lines a block
        monkeypatch.setattr(stream, "CHUNK_ROWS", 23)
        out = tmp_path / f"{name}.csv"
        result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--output", str(out), *options])
        assert result.exit_code == 0, result.output
        outputs[name] = (result.stdout, out.read_bytes())
    assert outputs["fast"] == outputs["strict"] == outputs["cut"]
    text = outputs["fast"][1].decode().splitlines()
    assert len(text) == 301 and text[1].startswith("0,2,")  # header, then sample 0 on line 2


def _strict_then_fast(runner, monkeypatch, arguments, output=None, *refused, exit_code=0,
                      whole=False):
    """Runs eval with the strict reader, then the fast one, which must exit alike and must not
    hand the whole file to the strict reader (unless whole) nor call the refused (module, name)
    pairs; returns both runs' stdout (stderr where the exit is not 0) and output bytes."""
    results = []
    for threshold in (1 << 60, 0):
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", threshold)
        result = runner.invoke(app, arguments)
        assert result.exit_code == exit_code, result.output
        said = result.stdout if exit_code == 0 else result.stderr
        results.append((said, None if output is None else output.read_bytes()))
        for module, name in (() if whole else ((stream, "read_input"),)) + refused:
            monkeypatch.setattr(module, name,
                                lambda *a, name=name, **k: pytest.fail(f"{name} called"))
    return results


@pytest.mark.parametrize("cell, message", [
    ("-inf", None), ("-Infinity", None),  # masked classes: Polars' parse stands
    ("-1e400", "overflows float64"), ("nan", "is not a finite number"),  # Polars reads -inf, nan
    ("", "is missing"), ("abc", "is not a number"), ("1.5", None),  # 1.5 in the label column
])
@pytest.mark.parametrize("labels", ["column", "file"])
def test_a_block_the_fast_reader_cannot_judge_is_the_strict_readers_alone(
        runner, tmp_path, monkeypatch, cell, message, labels):
    # handed the whole file, the strict reader took 9.3 s and 1.2 GB for 82 MB with one masked
    # class: a file larger than memory could not be read. Only that block is its own now.
    rng = np.random.default_rng(31)
    z, y = rng.normal(size=(300, 3)), rng.integers(0, 3, size=300)
    lines = _csv(z, y).splitlines()
    row = lines[250].split(",")
    if cell == "1.5":
        row[-1] = cell if labels == "column" else row[-1]
        message = "label '1.5' is not an integer" if labels == "column" else None
    else:
        row[1] = cell
    lines[250] = ",".join(row)
    text = "\n".join(lines) + "\n"
    arguments = ["eval", str(tmp_path / "z.csv"), "--format", "json", "--output",
                 str(tmp_path / "o.csv")]
    if labels == "file":
        np.save(tmp_path / "y.npy", y)
        text = "\n".join(",".join(line.split(",")[:-1]) for line in text.splitlines()) + "\n"
        arguments += ["--labels", str(tmp_path / "y.npy")]
    (tmp_path / "z.csv").write_text(text)
    monkeypatch.setattr(stream, "BLOCK_BYTES", 600)  # some 10 lines a block
    results, read_block, blocks = [], data.read_block, []
    for threshold in (1 << 60, 0):  # strict, then fast
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", threshold)
        result = runner.invoke(app, arguments)
        output = (tmp_path / "o.csv").read_bytes() if result.exit_code == 0 else None
        results.append((result.exit_code, result.stdout, result.stderr, output))
        # the fast reader never hands the whole file over, and a block alone only where needed
        monkeypatch.setattr(stream, "read_input", lambda *a, **k: pytest.fail("whole file read"))
        monkeypatch.setattr(data, "read_block", lambda *a: blocks.append(a) or read_block(*a))
    assert results[0] == results[1]
    # blocks by first line: the lines above a bad cell are read again, to be worked first
    assert len({call[4] for call in blocks}) == (0 if cell.startswith("-inf") or cell == "-Infinity"
                           or cell == "1.5" and labels == "file" else 1)
    if message is None:
        assert results[1][0] == 0
    else:
        assert results[1][0] == 2 and "line 251" in results[1][2] and message in results[1][2]


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("early, late", [
    ((4, 0, "-inf"), (10, 0, "abc")),  # a masked class at the label above a bad cell
    ((4, 0, "-inf"), (10, 3, None)),  # above a row of too few cells
    ((6, 2, "2.5"), (10, 0, "abc")),  # a bad label above a bad logit: the logits are read first
])
@pytest.mark.parametrize("labels", ["column", "file"])
def test_the_fast_readers_error_is_the_first_bad_samples_whatever_its_blocks(
        runner, tmp_path, monkeypatch, wide, early, late, labels):
    # a block read by the strict reader named its bad cell before the rows above it were
    # worked: a masked class at the label of line 4 was named with blocks of a line or two,
    # 'line 10: logit abc' with blocks of 4 KB
    rows = [[f"{i % 3}.5", f"{i % 2}.25", str(i % 2)] for i in range(20)]
    for line, column, cell in (early, late):
        if cell is None:
            del rows[line - 2][1:]
        else:
            rows[line - 2][column] = cell
    if labels == "file" and early[1] == 2:
        pytest.skip("a label of its own file is no cell of the logits")
    arguments = ["eval", str(tmp_path / "z.csv")]
    header = "z0,z1,label"
    if labels == "file":
        np.save(tmp_path / "y.npy", np.arange(20) % 2)
        rows, header = [row[:2] for row in rows], "z0,z1"
        arguments += ["--labels", str(tmp_path / "y.npy")]
    (tmp_path / "z.csv").write_text("\n".join([header, *map(",".join, rows)]) + "\n")
    monkeypatch.setattr(stream, "FAST_CSV_BYTES", 0)
    monkeypatch.setattr(stream, "WIDE_CSV_COLUMNS", 0 if wide else 1 << 30)
    errors = set()
    for block in (16, 64, 4096):
        monkeypatch.setattr(stream, "BLOCK_BYTES", block)
        result = runner.invoke(app, arguments)
        assert result.exit_code == 2
        errors.add(result.stderr)
    assert len(errors) == 1
    assert re.match(rf"Error: {re.escape(str(tmp_path / 'z.csv'))}, line {early[0]}\b", errors.pop())


@pytest.mark.parametrize("targets", ["csv", "npy"])
@pytest.mark.parametrize("bad", [-0.5, np.nan])
def test_a_bad_target_is_handed_over_after_the_rows_above_it_are_worked(
        runner, tmp_path, monkeypatch, targets, bad):
    # a bad target sent its whole block to the whole reader, which names its cell first: a
    # masked class given probability 1 on line 4 was named with small blocks, the target on
    # line 10 with one block of 4 KB
    rows = [f"{i % 3}.5,{i % 2}.25" for i in range(20)]
    rows[2] = "-inf,1"
    t = np.tile([0.25, 0.75], (20, 1))
    t[2], t[8] = [1.0, 0.0], [bad, 1.0]
    (tmp_path / "z.csv").write_text("z0,z1\n" + "\n".join(rows) + "\n")
    if targets == "csv":
        (tmp_path / "t.csv").write_text(
            "p0,p1\n" + "\n".join(f"{a},{b}".replace("nan", "") for a, b in t.tolist()) + "\n")
    else:
        np.save(tmp_path / "t.npy", t)
    monkeypatch.setattr(stream, "FAST_CSV_BYTES", 0)
    errors = set()
    for block in (16, 64, 4096):
        monkeypatch.setattr(stream, "BLOCK_BYTES", block)
        result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--targets",
                                     str(tmp_path / f"t.{targets}")])
        assert result.exit_code == 2
        errors.add(result.stderr)
    assert errors == {f"Error: {tmp_path / 'z.csv'}, line 4, column 'z0': class is masked (logit "
                      f"-inf) but counts in the loss: the loss is infinite\n"}


def test_a_space_after_a_number_keeps_its_block_with_the_fast_reader(runner, tmp_path,
                                                                     monkeypatch):
    # Polars refuses '1.0 ,2', which the strict reader reads: a cell so written in every block
    # sent every block to the strict reader (154 MB: 19.9 s against 0.85 s); cut, it stays
    rng = np.random.default_rng(5)
    z, y = rng.normal(size=(200, 3)), rng.integers(0, 3, size=200)
    lines = _csv(z, y).splitlines()
    for i in range(1, 201, 7):
        lines[i] = lines[i].replace(",", " ,", 1)
    (tmp_path / "z.csv").write_text("\n".join(lines) + "\n")
    arguments = ["eval", str(tmp_path / "z.csv"), "--format", "json", "--output",
                 str(tmp_path / "o.csv")]
    monkeypatch.setattr(stream, "BLOCK_BYTES", 600)
    results = _strict_then_fast(runner, monkeypatch, arguments, tmp_path / "o.csv",
                                (data, "read_block"))
    assert results[0] == results[1]


def test_a_csv_of_many_classes_is_cut_into_cells_and_reads_as_the_strict_reader_reads_it(
        runner, tmp_path, monkeypatch):
    # Polars' CSV reader took 380 ms and some 600 MB of RSS for a block of 50,257 classes
    rng = np.random.default_rng(15)
    k = stream.WIDE_CSV_COLUMNS  # with the label, one column more than the threshold
    z, y = rng.normal(scale=3, size=(30, k)).round(4), rng.integers(0, k, size=30)
    (tmp_path / "z.csv").write_text(_csv(z, y).replace("\n", "\r\n"))  # Windows' line ends too
    cut, blocks = stream._cut_and_cast, []
    monkeypatch.setattr(stream, "_cut_and_cast", lambda *a: blocks.append(1) or cut(*a))
    monkeypatch.setattr(stream, "BLOCK_BYTES", 100_000)  # some 3 rows a block
    results = []
    for threshold in (0, 1 << 60):  # fast, strict
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", threshold)
        out = tmp_path / "o.csv"
        result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--format", "json",
                                     "--output", str(out), "--columns", "loss,pred"])
        assert result.exit_code == 0, result.output
        results.append((result.stdout, out.read_bytes()))
    assert results[0] == results[1] and len(blocks) >= 5
    assert json.loads(results[0][0])["loss"] == pytest.approx(losses.cross_entropy(z, y).loss, rel=1e-14)


@pytest.mark.parametrize("delimiter, padded", [(",", ", "), (",", " , "), ("\t", " \t "),
                                               (";", ";\t")])
def test_cells_cut_with_spaces_around_them_are_read_without_the_strict_reader(
        runner, tmp_path, monkeypatch, delimiter, padded):
    # np.savetxt(delimiter=", ") pads every cell: cut cells ' 1.5' were nan, so a language
    # model's 50,257 classes went to the strict reader (120 rows: 22.8 s and 812 MB, not 1.0 s)
    rng = np.random.default_rng(21)
    z, y = rng.normal(scale=3, size=(40, 4)), rng.integers(0, 4, size=40)
    (tmp_path / "z.csv").write_text(_csv(z, y).replace(",", padded).replace("\n", " \n"))
    arguments = ["eval", str(tmp_path / "z.csv"), "--delimiter", delimiter, "--format", "json",
                 "--output", str(tmp_path / "o.csv")]
    monkeypatch.setattr(stream, "BLOCK_BYTES", 200)
    monkeypatch.setattr(stream, "FAST_CSV_BYTES", 1 << 60)  # the strict reader
    strict = runner.invoke(app, arguments)
    expected = (strict.exit_code, strict.stdout, (tmp_path / "o.csv").read_bytes())
    monkeypatch.setattr(stream, "FAST_CSV_BYTES", 0)
    monkeypatch.setattr(stream, "WIDE_CSV_COLUMNS", 0)
    monkeypatch.setattr(data, "_read_text", lambda *a: pytest.fail("read by the strict reader"))
    cut = runner.invoke(app, arguments)
    assert (cut.exit_code, cut.stdout, (tmp_path / "o.csv").read_bytes()) == expected
    assert expected[0] == 0 and json.loads(expected[1])["n"] == 40


@pytest.mark.parametrize("options", [[], ["--label-smoothing", "0.1"], ["--dtype", "float32"]])
def test_chunks_ending_in_a_one_sample_block_give_the_same_bytes(runner, tmp_path, monkeypatch,
                                                                 options):
    # k = 10: NumPy would sum a lone sample's classes in another order than a wider block's
    from xent_cli import losses

    rng = np.random.default_rng(8)
    z = rng.normal(scale=4, size=(120, 10))
    (tmp_path / "z.csv").write_text(_csv(z, rng.integers(0, 10, size=120)))
    monkeypatch.setattr(losses, "BLOCK_LOGITS", 40)  # blocks of 4 samples
    monkeypatch.setattr(stream, "BLOCK_BYTES", 1000)  # about 5 lines a fast block
    monkeypatch.setattr(stream, "CHUNK_ROWS", 9)  # strict chunks of blocks of 4, 4 and 1
    outputs = {}
    for name, threshold in (("strict", 1 << 60), ("fast", 0)):
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", threshold)
        out = tmp_path / f"{name}.npy"
        result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--output", str(out),
                                     "--format", "json", *options])
        assert result.exit_code == 0, result.output
        outputs[name] = (result.stdout, out.read_bytes())
    assert outputs["fast"] == outputs["strict"]


def test_output_rows_are_the_in_memory_arrays(runner, tmp_path, fast):
    rng = np.random.default_rng(3)
    z, y = rng.normal(size=(50, 4)), rng.integers(0, 4, size=50)
    (tmp_path / "z.csv").write_text(_csv(z, y))
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--output", str(tmp_path / "o.csv")])
    assert result.exit_code == 0, result.output
    table = np.loadtxt(tmp_path / "o.csv", delimiter=",", skiprows=1)
    from xent_cli.losses import cross_entropy
    reference = cross_entropy(z, y)
    assert np.array_equal(table[:, 1], np.arange(2, 52))
    assert np.array_equal(table[:, 4], reference.per_sample)
    assert np.array_equal(table[:, 9:], reference.grad)


@pytest.mark.parametrize("name, files, arguments, fragment", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_read_the_same_on_the_fast_path(runner, tmp_path, monkeypatch, fast, name, files,
                                                   arguments, fragment):
    assert_bad_input_fails_cleanly(runner, tmp_path, monkeypatch, files, arguments, fragment)


@pytest.mark.parametrize("text, fragment", [
    ("a,b,label\n1,2,0\n\n3,nan,1\n", "line 4, column 'b': logit 'nan' is not a finite number"),
    ("a,b,label\n1,2,0\n3,1e400,1\n", "line 3, column 'b': logit '1e400' overflows float64"),
    ("a,b,label\n1,2,0\n3,,1\n", "line 3, column 'b': logit is missing"),
    ("a,b,label\n1,2,0\n3,4,1.5\n", "line 3, column 'label': label '1.5' is not an integer"),
    ("a,b,label\n1,2,0\n3,inf,1\n", "line 3, column 'b': logit 'inf' is not a finite number"),
    ("a,b,label\n1,2,0\n3,4\n", "line 3: row has 2 cells, the header has 3"),
    ("a,b,label\n1,2,0\n3,4\r,1\n", "line 3: row has 2 cells, the header has 3"),  # a lone \r ends a line
])
def test_what_the_fast_parser_would_accept_is_still_refused_at_its_line(runner, tmp_path, fast, text,
                                                                        fragment):
    (tmp_path / "z.csv").write_text(text)
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv")])
    assert result.exit_code == 2 and fragment in result.stderr, result.stderr


def test_a_large_csv_without_its_label_column_is_refused_at_its_header(runner, tmp_path, fast,
                                                                      monkeypatch):
    # the strict reader read every row before it looked for the label column: 97 MB with the
    # labels under 'target' took 6.6 s and 1.3 GB to say so, now 0.6 s and 66 MB
    (tmp_path / "z.csv").write_text("z0,z1,target\n1,2,0\n3,4,1\n")
    monkeypatch.setattr(data, "read_table", lambda *args, **kwargs: pytest.fail("read whole"))
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv")])
    assert result.exit_code == 2
    assert result.stderr == (f"Error: {tmp_path / 'z.csv'}, line 1: there is no column 'label' "
                             "(its columns: z0, z1, target); if 'target' holds the labels, give "
                             "--label-col target; else give --labels or --targets\n")


def test_a_large_json_file_is_refused_by_its_name(runner, tmp_path, fast):
    # read as CSV, its first line was a header and the rest one row of many cells
    (tmp_path / "z.json").write_text("[[1.5, 2.0, 0.1],\n [0.3, 0.2, 0.9]]\n")
    result = runner.invoke(app, ["eval", str(tmp_path / "z.json")])
    assert result.exit_code == 2
    assert result.stderr == (f"Error: {tmp_path / 'z.json'}: is JSON, which xent does not read: "
                             "save it as CSV, .npy, .npz or .parquet (np.save('z.npy', array))\n")


@pytest.mark.parametrize("count", [1, 5, 299, 301])
@pytest.mark.parametrize("side", ["y.npy", "y.csv", "y0.csv"])  # y0.csv: no header
def test_labels_of_another_count_are_told_without_the_whole_file_read(runner, tmp_path,
                                                                      monkeypatch, count, side):
    # the fast reader handed the whole file to the strict reader to say so: 97 MB of logits
    # beside 999,999 labels took 12.7 s and 1.4 GB, now 1.3 s and 170 MB
    rng = np.random.default_rng(5)
    (tmp_path / "z.csv").write_text(_csv(rng.normal(size=(300, 3)), np.zeros(300, int))
                                    .replace(",label", "").replace(",0\n", "\n"))
    y = rng.integers(0, 3, size=count)
    if side == "y.npy":
        np.save(tmp_path / side, y)
    else:
        (tmp_path / side).write_text(("label\n" if side == "y.csv" else "")
                                     + "".join(f"{v}\n" for v in y))
    arguments = ["eval", str(tmp_path / "z.csv"), "--labels", str(tmp_path / side)]
    monkeypatch.setattr(stream, "BLOCK_BYTES", 600)  # some 10 lines a block
    said = [stderr for stderr, _ in _strict_then_fast(runner, monkeypatch, arguments, exit_code=2)]
    assert said[0] == said[1] and "300 rows of logits" in said[1], said


@pytest.mark.parametrize("count", [1, 5, 299, 301])
@pytest.mark.parametrize("bad", [None, 3, 200])  # a bad logit above the last target row, below it
def test_target_rows_of_another_count_are_told_without_the_whole_file_read(runner, tmp_path,
                                                                           monkeypatch, count, bad):
    # handed to the strict reader: 97 MB of logits beside 222 MB of targets one row short took
    # 18.5 s and 3.2 GB to say so, now 1.4 s and 250 MB
    rng = np.random.default_rng(6)
    lines = ["z0,z1,z2"] + [",".join(map(repr, row)) for row in rng.normal(size=(300, 3)).tolist()]
    if bad is not None:
        lines[bad + 1] = "1,abc,2"
    (tmp_path / "z.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "t.csv").write_text("t0,t1,t2\n" + "0.25,0.25,0.5\n" * count)
    arguments = ["eval", str(tmp_path / "z.csv"), "--targets", str(tmp_path / "t.csv")]
    monkeypatch.setattr(stream, "BLOCK_BYTES", 600)  # some 10 lines a block
    said = [stderr for stderr, _ in _strict_then_fast(runner, monkeypatch, arguments, exit_code=2,
                                                      whole=bad is not None)]
    assert said[0] == said[1], said
    assert ("300 rows of logits" if bad is None else "logit 'abc' is not a number") in said[1]


@pytest.mark.parametrize("bad", [50, 200])  # above the last label, below it
def test_too_few_labels_beside_a_bad_cell_are_told_as_the_strict_reader_tells_them(
        runner, tmp_path, monkeypatch, bad):
    lines = ["z0,z1"] + [f"{i % 7},{i % 3}" for i in range(300)]
    lines[bad + 1] = "1,abc"
    (tmp_path / "z.csv").write_text("\n".join(lines) + "\n")
    np.save(tmp_path / "y.npy", np.zeros(100, int))
    monkeypatch.setattr(stream, "BLOCK_BYTES", 100)
    said = []
    for threshold in (1 << 60, 0):  # strict, then fast
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", threshold)
        result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--labels",
                                     str(tmp_path / "y.npy")])
        said.append(result.stderr)
    assert said[0] == said[1] and f"line {bad + 2}, column 'z1': logit 'abc'" in said[1], said


def test_blank_lines_and_masked_logits_fall_back_and_keep_line_numbers(runner, tmp_path, fast):
    (tmp_path / "z.csv").write_text("a,b,label\n1,2,0\n\n3,-inf,0\n")
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--output", str(tmp_path / "o.csv")])
    assert result.exit_code == 0, result.output
    assert [row.split(",")[1] for row in (tmp_path / "o.csv").read_text().splitlines()[1:]] == ["2", "4"]


# Two samples whose losses are each near 1e308: every chunk's sum, and the whole, pass float64.
OVERFLOWING = "z0,z1,z2,label\n1.5,-2,0.25,0\n0,0,1e308,1\n0,0,1e308,1\n-7.5,2,1e2,1\n"


@pytest.mark.parametrize("reader", ["strict", "fast"])
@pytest.mark.parametrize("chunk_rows", [None, 1])
def test_a_total_beyond_float64_is_one_line_whatever_the_chunks(tmp_path, monkeypatch, reader,
                                                               chunk_rows):
    # A chunk's pair from _split_sum was (inf, -inf), and fsum of chunks near 1e308 overflows on
    # the way: both raised out of math.fsum as a traceback.
    if reader == "fast":
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", 0)
        monkeypatch.setattr(stream, "BLOCK_BYTES", 16 if chunk_rows else 1 << 20)
    path = tmp_path / "z.csv"
    path.write_text(OVERFLOWING)
    source = stream.open_source(str(path), chunk_rows=chunk_rows)
    with pytest.raises(InputError, match="^the loss overflows float64; the logits or weights"):
        stream.evaluate(source, fallback=lambda: stream.strict_source(str(path)))


def test_a_total_beyond_float64_is_one_line_on_stderr(tmp_path):
    (tmp_path / "z.csv").write_text(OVERFLOWING)
    done = subprocess.run([sys.executable, "-m", "xent_cli", "eval", str(tmp_path / "z.csv")],
                          capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "Error: the loss overflows float64; the logits or weights are too large\n"


@pytest.mark.parametrize("chunk_rows", [None, 1])
def test_a_weighted_mean_whose_divisor_overflows_is_refused_and_sum_has_no_mean(
        runner, tmp_path, chunk_rows, monkeypatch):
    # weights of 1e308: the divisor, the sum of the samples' weights, is beyond float64, and
    # total / inf gave a mean loss of 0 with exit 0 (a perplexity of 1 under 'sum')
    monkeypatch.setattr(stream, "CHUNK_ROWS", chunk_rows or stream.CHUNK_ROWS)
    # confident samples: each weighted loss, and their total, stay within float64
    z = np.array([[9.0, 0.0, 0.5], [0.0, -1.0, 12.0], [1.0, 10.0, 2.0]])
    y = np.array([0, 2, 1])
    path = tmp_path / "z.csv"
    path.write_text(_csv(z, y))
    weights = ["--weight", "1e308,1e308,1e308"]
    out = tmp_path / "o.csv"
    refused = runner.invoke(app, ["eval", str(path), *weights, "--output", str(out)])
    assert refused.exit_code == 2 and not out.exists()
    assert refused.stderr.count("\n") == 1 and "sum beyond float64's range" in refused.stderr
    summed = runner.invoke(app, ["eval", str(path), *weights, "--reduction", "sum",
                                 "--format", "json"])
    assert summed.exit_code == 0, summed.output
    report = json.loads(summed.stdout)
    # the oracle: sum of w * -log softmax(z)_y = w * log1p(sum over c != y of e^(z_c - z_y))
    expected = math.fsum(
        1e308 * math.log1p(sum(math.exp(v - row[label]) for c, v in enumerate(row) if c != label))
        for row, label in zip(z.tolist(), y.tolist()))
    assert report["loss"] == pytest.approx(expected, rel=1e-12)
    assert (report["loss_mean"], report["perplexity"], report["divisor"]) == (None, None, None)


def test_progress_is_hidden_off_a_terminal_and_with_quiet(runner, k3_path):
    for extra in ([], ["--quiet"]):
        result = runner.invoke(app, ["eval", k3_path, "--show", "0", *extra])
        assert result.exit_code == 0 and result.stderr == ""


def test_progress_callback_reaches_the_whole_file(tmp_path, monkeypatch, fast):
    rng = np.random.default_rng(1)
    (tmp_path / "z.csv").write_text(_csv(rng.normal(size=(40, 2)), rng.integers(0, 2, size=40)))
    calls = []
    source = stream.open_source(str(tmp_path / "z.csv"))
    stream.evaluate(source, progress=lambda done, total, rows: calls.append((done, total, rows)))
    assert source.unit == "bytes" and len(calls) > 1
    assert calls[-1] == (source.size, source.size, 40)
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)


@pytest.fixture
def k3_path():
    import pathlib
    return str(pathlib.Path(__file__).parent.parent / "examples" / "logits_k3.csv")


@pytest.fixture
def arrays(tmp_path):
    rng = np.random.default_rng(5)
    z, y = rng.normal(size=(30, 4)), rng.integers(0, 4, size=30)
    (tmp_path / "z.csv").write_text(_csv(z, y))
    return z, y


def _json(runner, *arguments):
    result = runner.invoke(app, ["eval", *arguments, "--format", "json"])
    assert result.exit_code == 0, result.output
    fields = json.loads(result.stdout)
    return fields["loss"], fields["accuracy"], fields["n"]


def test_npy_npz_and_csv_agree(runner, tmp_path, arrays):
    z, y = arrays
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    np.savez(tmp_path / "both.npz", logits=z, labels=y)
    expected = _json(runner, str(tmp_path / "z.csv"))
    assert _json(runner, str(tmp_path / "z.npy"), "--labels", str(tmp_path / "y.npy")) == expected
    assert _json(runner, str(tmp_path / "both.npz")) == expected
    (tmp_path / "y.csv").write_text("label\n" + "\n".join(map(str, y)) + "\n")
    assert _json(runner, str(tmp_path / "z.npy"), "--labels", str(tmp_path / "y.csv")) == expected
    # and a CSV of logits alone takes its labels from an array, or its soft targets
    logits_only = "\n".join(",".join(map(repr, row)) for row in z.tolist())
    (tmp_path / "logits.csv").write_text("a,b,c,d\n" + logits_only + "\n")
    assert _json(runner, str(tmp_path / "logits.csv"), "--labels", str(tmp_path / "y.npy")) == expected
    assert _json(runner, str(tmp_path / "logits.csv"), "--labels", str(tmp_path / "both.npz")) == expected
    np.save(tmp_path / "t.npy", np.eye(4)[y])
    loss, accuracy, n = _json(runner, str(tmp_path / "logits.csv"), "--targets", str(tmp_path / "t.npy"))
    assert math.isclose(loss, expected[0], rel_tol=1e-14) and (accuracy, n) == expected[1:]


def test_an_array_file_has_rows_and_a_csv_beside_it_lines(runner, tmp_path, arrays):
    z, y = arrays
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    shown = runner.invoke(app, ["eval", str(tmp_path / "z.npy"), "--labels", str(tmp_path / "y.npy"),
                                "--show", "2"]).stdout
    assert f"sample 1, label {y[1]}" in shown and "(line" not in shown  # the sample is the row
    bad = y.copy()
    bad[4] = 9
    np.save(tmp_path / "bad.npy", bad)
    result = runner.invoke(app, ["eval", str(tmp_path / "z.npy"), "--labels", str(tmp_path / "bad.npy")])
    assert result.exit_code == 2
    assert "bad.npy, row 4: label 9 is not a class index 0..3" in result.stderr
    # a headerless CSV of labels: label 4 is on line 5
    (tmp_path / "bad.csv").write_text("\n".join(map(str, bad)) + "\n")
    result = runner.invoke(app, ["eval", str(tmp_path / "z.npy"), "--labels", str(tmp_path / "bad.csv")])
    assert result.exit_code == 2
    assert "bad.csv, line 5: label 9 is not a class index 0..3" in result.stderr
    assert str(InputError("m", source="f.npy", row=0, column="'c'")) == "f.npy, row 0, column 'c': m"


@pytest.mark.parametrize("what", ["labels", "targets"])
def test_a_large_csv_beside_an_array_is_read_in_blocks_as_the_strict_reader_reads_it(
        runner, tmp_path, monkeypatch, what):
    rng = np.random.default_rng(9)
    z, y = rng.normal(scale=3, size=(300, 4)), rng.integers(0, 4, size=300)
    (tmp_path / "z.csv").write_text("a,b,c,d\n" + "".join(",".join(map(repr, row)) + "\n"
                                                          for row in z.tolist()))
    side = tmp_path / f"{what}.npy"
    np.save(side, y if what == "labels" else 0.8 * np.eye(4)[y] + 0.05)
    monkeypatch.setattr(stream, "BLOCK_BYTES", 2000)  # some 25 blocks
    monkeypatch.setattr(stream, "CHUNK_ROWS", 37)
    runs = {}
    for reader, threshold in (("strict", 1 << 60), ("fast", 0)):
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", threshold)
        source = stream.open_source(str(tmp_path / "z.csv"), **{f"{what}_path": str(side)})
        assert source.unit == ("bytes" if reader == "fast" else "rows")
        out = tmp_path / f"{reader}.npy"
        result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), f"--{what}", str(side),
                                     "--output", str(out), "--format", "json", "--show", "2"])
        assert result.exit_code == 0, result.output
        runs[reader] = (result.stdout, out.read_bytes())
    assert runs["fast"] == runs["strict"]
    # an error deep in the file names the array's row, or the CSV's line after the hand-over
    if what == "labels":
        bad = y.copy()
        bad[250] = 9
        np.save(side, bad)
        result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--labels", str(side)])
        assert result.exit_code == 2
        assert "labels.npy, row 250: label 9 is not a class index 0..3" in result.stderr
        np.save(side, y[:280])
        result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--labels", str(side)])
        assert result.exit_code == 2 and "labels.npy: has 280 labels for 300 rows of logits" in result.stderr
        np.save(side, y)
        text = (tmp_path / "z.csv").read_text().splitlines()
        text[200] = "1,2,nan,4"
        (tmp_path / "z.csv").write_text("\n".join(text) + "\n")
        result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--labels", str(side)])
        assert result.exit_code == 2
        assert "z.csv, line 201, column 'c': logit 'nan' is not a finite number" in result.stderr


def test_npz_soft_targets_and_npy_without_labels(runner, tmp_path, arrays):
    z, y = arrays
    np.savez(tmp_path / "soft.npz", logits=z, targets=np.eye(4)[y])
    loss, _, _ = _json(runner, str(tmp_path / "soft.npz"))
    assert math.isclose(loss, _json(runner, str(tmp_path / "z.csv"))[0], rel_tol=1e-14)
    np.save(tmp_path / "z.npy", z)
    result = runner.invoke(app, ["eval", str(tmp_path / "z.npy")])
    assert result.exit_code == 2 and "has no labels; give --labels" in result.stderr


@pytest.mark.parametrize("command", ["eval", "check"])
def test_targets_held_in_the_logits_file_and_given_again_are_refused(runner, tmp_path, arrays, command):
    """As a CSV with a label column and --labels: one of the two would be dropped without a word."""
    pl = pytest.importorskip("polars")
    z, y = arrays
    np.savez(tmp_path / "zy.npz", logits=z, labels=y)
    np.savez(tmp_path / "zt.npz", logits=z, targets=np.eye(4)[y])
    pl.DataFrame({**{f"z{c}": z[:, c] for c in range(4)}, "label": y}).write_parquet(tmp_path / "zy.parquet")
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "t.npy", np.full((len(y), 4), 0.25))  # not the held targets: a loss would differ
    for logits, own, option, given in (
            ("zy.npz", "an array 'labels'", "--targets", "t.npy"),
            ("zy.npz", "an array 'labels'", "--labels", "y.npy"),
            ("zt.npz", "an array 'targets'", "--labels", "y.npy"),
            ("zy.parquet", "a column 'label'", "--targets", "t.npy")):
        result = runner.invoke(app, [command, str(tmp_path / logits), option, str(tmp_path / given)])
        assert result.exit_code == 2, (logits, given, result.output)
        what = "labels" if option == "--labels" else "targets"
        assert result.stderr == (f"Error: {tmp_path / logits}: has {own} and {what} come from "
                                 f"{tmp_path / given}; remove one of them\n")


def test_npy_is_memory_mapped(tmp_path, arrays):
    z, y = arrays
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    loaded = stream._read_array_input(str(tmp_path / "z.npy"), ".npy", "label",
                                      str(tmp_path / "y.npy"), None, None)
    assert isinstance(loaded.logits, np.memmap)


def test_parquet_reads_like_csv(runner, tmp_path, arrays):
    pl = pytest.importorskip("polars")
    z, y = arrays
    frame = pl.DataFrame({**{f"z{c}": z[:, c] for c in range(4)}, "label": y})
    frame.write_parquet(tmp_path / "z.parquet")
    assert _json(runner, str(tmp_path / "z.parquet")) == _json(runner, str(tmp_path / "z.csv"))


def test_eval_on_a_small_file_imports_neither_sympy_nor_dataframe_engines(k3_path, tmp_path):
    code = (
        "import sys\n"
        "from xent_cli.cli import app\n"
        "from typer.testing import CliRunner\n"
        f"result = CliRunner().invoke(app, ['eval', {k3_path!r}, '--output', {str(tmp_path / 'o.csv')!r}])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in ('sympy', 'pandas', 'polars', 'torch', 'pyarrow') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_mean_with_output_reports_one_bar_over_its_one_pass(tmp_path, fast):
    rng = np.random.default_rng(2)
    (tmp_path / "z.csv").write_text(_csv(rng.normal(size=(30, 3)), rng.integers(0, 3, size=30)))
    calls = []
    source = stream.open_source(str(tmp_path / "z.csv"))
    stream.evaluate(source, rows=lambda rows: None,
                    progress=lambda done, total, n: calls.append((done, total)))
    assert calls[-1] == (source.size, source.size)  # the divisor's pre-pass reports nothing
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)


def test_ctrl_c_exits_130_and_leaves_no_file(tmp_path):
    import contextlib
    import os
    import signal
    import time
    rng = np.random.default_rng(4)
    (tmp_path / "z.csv").write_text(_csv(rng.normal(size=(200_000, 3)), rng.integers(0, 3, size=200_000)))
    out = tmp_path / "o.csv"
    process = subprocess.Popen([sys.executable, "-m", "xent_cli", "eval", str(tmp_path / "z.csv"),
                                "--output", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    def writing() -> bool:
        for name in os.listdir(tmp_path):
            with contextlib.suppress(FileNotFoundError):  # renamed when the run ends
                if name.startswith(".xent-") and (tmp_path / name).stat().st_size > 0:
                    return True
        return False

    deadline = time.monotonic() + 30  # interrupt while the output is written, before the end
    while not writing() and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    if process.returncode == 0:
        pytest.skip("the run finished before the interrupt")
    assert process.returncode == 130 and b"Interrupted." in err
    assert sorted(os.listdir(tmp_path)) == ["z.csv"]


@given(st.lists(st.sampled_from([b"1", b",", b"\r", b"\n", b"\r\n"]), max_size=12).map(b"".join))
@settings(max_examples=200, deadline=None)
def test_a_lone_carriage_return_is_found_wherever_it_stands(block):
    assert stream._lone_carriage_return(block) == (block.count(b"\r") != block.count(b"\r\n"))


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("blank", ["", " ", ",,", " , , "])
def test_a_blank_line_anywhere_keeps_the_line_numbers(runner, tmp_path, fast, newline, blank):
    # the fast reader relies on Polars keeping a blank line as a row of nulls
    rows = ["a,b,label", "1,2,0", "3,4,1", blank, "5,6,0", blank, "7,8,1"]
    (tmp_path / "z.csv").write_bytes(newline.join(rows).encode() + newline.encode())
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--output", str(tmp_path / "o.csv")])
    assert result.exit_code == 0, result.output
    lines = [row.split(",")[1] for row in (tmp_path / "o.csv").read_text().splitlines()[1:]]
    assert lines == ["2", "3", "5", "7"]


@pytest.mark.parametrize(("k", "most"), [(10, 8192), (1000, 102)])
def test_output_pieces_hold_about_as_many_numbers_whatever_k(tmp_path, k, most):
    # a piece of 8192 rows of 1000 classes would be 131 MB, and the .npy writer holds four
    z = np.random.default_rng(0).normal(size=(9000 if k == 10 else 250, k))
    np.savez(tmp_path / "z.npz", logits=z, labels=np.zeros(len(z), dtype=int))
    pieces = []
    stream.evaluate(stream.open_source(str(tmp_path / "z.npz")), rows=pieces.append, show=0)
    assert max(len(piece.per_sample) for piece in pieces) == most
    assert np.array_equal(np.concatenate([piece.grad for piece in pieces]),
                          losses.cross_entropy(z, np.zeros(len(z), dtype=int)).grad)


def test_a_corrupt_npz_is_refused_and_its_file_closed(tmp_path):
    path = tmp_path / "c.npz"
    path.write_bytes(b"PK\x03\x04" + bytes(40))  # a zip's magic, then nothing a zip holds
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputError, match="is not a readable .npz archive"):
            stream.open_source(str(path))
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_an_npy_array_named_npz_is_told_so(tmp_path):
    np.save(tmp_path / "z.npy", np.zeros((3, 2)))
    (tmp_path / "z.npy").rename(tmp_path / "z.npz")
    with pytest.raises(InputError, match="holds one array, as an .npy file does.*name it .npy"):
        stream.open_source(str(tmp_path / "z.npz"))


# --- stdin: copied to a temporary file, so that a large stream streams ---------------------------

@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """Points temporary files at a directory of the test's own, to see what is left there."""
    import tempfile

    directory = tmp_path / "scratch"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def test_stdin_takes_the_fast_reader_and_gives_the_file_s_results(runner, tmp_path, monkeypatch,
                                                                  fast, scratch):
    rng = np.random.default_rng(11)
    text = _csv(rng.normal(scale=3, size=(200, 4)), rng.integers(0, 4, size=200))
    (tmp_path / "z.csv").write_text(text)
    opened = []
    real = stream._fast_csv
    monkeypatch.setattr(stream, "_fast_csv", lambda *a, **o: opened.append(a[0]) or real(*a, **o))
    for reduction in ("mean", "sum"):
        piped_out, file_out = tmp_path / f"piped_{reduction}.csv", tmp_path / f"file_{reduction}.csv"
        piped = runner.invoke(app, ["eval", "-", "--format", "json", "--reduction", reduction,
                                    "--output", str(piped_out)], input=text)
        from_file = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--format", "json",
                                        "--reduction", reduction, "--output", str(file_out)])
        assert piped.exit_code == from_file.exit_code == 0, piped.output + from_file.output
        piped_fields, file_fields = json.loads(piped.stdout), json.loads(from_file.stdout)
        assert piped_fields.pop("source") == "-"
        assert file_fields.pop("source") == str(tmp_path / "z.csv")
        assert piped_fields == file_fields
        assert piped_out.read_bytes() == file_out.read_bytes()  # 'mean' reads its input twice
    assert len(opened) == 4 and all(path.startswith(str(scratch)) for path in opened[::2])
    assert list(scratch.iterdir()) == []  # the copy is gone


def test_stdin_errors_name_dash_and_leave_no_copy(runner, fast, scratch):
    # the fast reader meets 'x', the strict reader reads the copy again and names the line
    result = runner.invoke(app, ["eval", "-"], input="z0,z1,label\n1,2,0\n3,x,1\n")
    assert result.exit_code == 2
    assert result.stderr == "Error: -, line 3, column 'z1': logit 'x' is not a number\n"
    assert list(scratch.iterdir()) == []


def test_stdin_table_names_dash_for_the_input_and_its_labels(runner, scratch):
    result = runner.invoke(app, ["eval", "-", "--show", "0"], input="z0,z1,label\n1,2,0\n3,4,1\n")
    assert result.exit_code == 0, result.output
    assert "cross-entropy of -" in result.stdout and "labels from -" in result.stdout


def test_stdin_that_cannot_be_copied_is_one_line(runner, monkeypatch, scratch):
    import errno

    class Full(io.BytesIO):
        def write(self, piece):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stream, "open", lambda *arguments: Full(), raising=False)
    result = runner.invoke(app, ["eval", "-"], input="z0,z1,label\n1,2,0\n")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: -: cannot be copied to a temporary file in ")
    assert result.stderr.endswith(": No space left on device; set TMPDIR to a directory with "
                                  "room for it\n")
    assert list(scratch.iterdir()) == []


def test_stdin_errors_name_dash_inside_their_message_too(runner, tmp_path, scratch):
    (tmp_path / "z.csv").write_text("z0,z1\n1,2\n3,4\n")
    (tmp_path / "y.csv").write_text("label\n0\n1\n1\n0\n")
    labels = str(tmp_path / "y.csv")
    from_file = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--labels", labels])
    piped = runner.invoke(app, ["eval", "-", "--labels", labels], input="z0,z1\n1,2\n3,4\n")
    assert from_file.exit_code == piped.exit_code == 2
    assert str(tmp_path / "z.csv") in from_file.stderr  # the message names the logits' file
    assert piped.stderr == from_file.stderr.replace(str(tmp_path / "z.csv"), "-")


def test_stdin_notes_name_dash_as_its_errors_do(runner, scratch):
    # the note on probabilities named the temporary copy (/tmp/xent-.../stdin.csv), a file the
    # user never gave and that is gone when the note is read
    result = runner.invoke(app, ["eval", "-", "--format", "json"], input="z0,z1,label\n0.3,0.7,1\n")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("Note: -: the logits of its first rows lie in [0, 1] ")
    assert json.loads(result.stdout)["source"] == "-"


def test_stdin_without_a_temporary_directory_is_one_line(runner, monkeypatch, tmp_path):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))  # mkdtemp cannot make one
    result = runner.invoke(app, ["eval", "-"], input="z0,z1,label\n1,2,0\n")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: -: cannot be copied to a temporary file in ")
    assert result.stderr.endswith("; set TMPDIR to a directory with room for it\n")
    assert result.stderr.count("\n") == 1


def test_stdin_copy_shows_its_progress_and_ends_it_before_the_reading(monkeypatch, scratch):
    import contextlib

    text = "z0,z1,label\n" + "1,2,0\n" * 300_000  # 1.8 MB: two pieces of 1 MiB
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    shown, events = [], []

    @contextlib.contextmanager
    def progress():
        events.append("shown")
        yield shown.append
        events.append("hidden")

    with stream.stdin_copied("-", progress=progress) as path:
        events.append("read")
        assert open(path, encoding="utf-8").read() == text
    assert shown == [1 << 20, len(text)] and events == ["shown", "hidden", "read"]


# --- Parquet: read in slices of rows, the whole table only for what is unusual -----------------

def _parquet(path, z, labels, **columns):
    import polars as pl

    pl.DataFrame({**{f"z{c}": z[:, c] for c in range(z.shape[1])}, "label": labels,
                  **columns}).write_parquet(path, row_group_size=7)
    return str(path)


@pytest.mark.parametrize("options", [[], ["--reduction", "sum"], ["--weight", "1,2,0.5"],
                                     ["--label-smoothing", "0.2", "--dtype", "float32"],
                                     ["--ignore-index", "1"]])
def test_parquet_slices_give_the_whole_table_s_bytes(runner, tmp_path, monkeypatch, options):
    rng = np.random.default_rng(3)
    z = rng.normal(scale=3, size=(100, 3)).astype(np.float32)  # float32 columns, read as float64
    path = _parquet(tmp_path / "z.parquet", z, rng.integers(0, 3, size=100).astype(np.uint8))
    monkeypatch.setattr(stream, "PARQUET_ROWS", 9)  # slices across row groups of 7
    outputs = {}
    for name in ("sliced", "whole"):
        out = tmp_path / f"{name}.csv"
        result = runner.invoke(app, ["eval", path, "--output", str(out), "--format", "json",
                                     *options])
        assert result.exit_code == 0, result.output
        outputs[name] = (result.stdout, out.read_bytes())
        monkeypatch.setattr(stream, "_fast_parquet", lambda *arguments: None)
    assert outputs["sliced"] == outputs["whole"]
    assert json.loads(outputs["sliced"][0])["n"] == 100


@pytest.mark.parametrize("ending", ["\n", "\n\n  \n\r\n", " \t\n\n"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_blank_lines_ending_a_file_keep_it_with_the_fast_reader(runner, tmp_path, monkeypatch,
                                                                ending, reduction):
    # print(df.to_csv()) ends a file in a blank line: Polars read it as a row of nulls, and the
    # whole file went to the strict reader (19 MB: 2.95 s and 382 MB against 0.68 s and 123 MB)
    rng = np.random.default_rng(37)
    z, y = rng.normal(size=(200, 3)), rng.integers(0, 3, size=200)
    (tmp_path / "z.csv").write_text(_csv(z, y).rstrip("\n") + ending)
    arguments = ["eval", str(tmp_path / "z.csv"), "--format", "json", "--reduction", reduction,
                 "--output", str(tmp_path / "o.npy"), "--columns", "loss,grad"]
    monkeypatch.setattr(stream, "BLOCK_BYTES", 600)
    results = _strict_then_fast(runner, monkeypatch, arguments, tmp_path / "o.npy")
    assert results[0] == results[1]
    assert json.loads(results[1][0])["n"] == 200


@pytest.mark.parametrize("value, message", [(-np.inf, None), (np.inf, r"\+inf"),
                                            (np.nan, "NaN")])
def test_a_masked_class_keeps_a_parquet_table_in_slices(runner, tmp_path, monkeypatch, value,
                                                        message):
    # a masked class sent the whole table to the whole reader: all of it in memory
    rng = np.random.default_rng(17)
    z, y = rng.normal(size=(60, 3)), rng.integers(0, 3, size=60)
    z[40, 1], y[40] = value, 0
    path = _parquet(tmp_path / "z.parquet", z, y)

    def run(name):
        out = tmp_path / f"{name}.csv"
        result = runner.invoke(app, ["eval", path, "--output", str(out), "--format", "json"])
        return (result.exit_code, result.stdout, result.stderr,
                out.read_bytes() if out.exists() else None)

    with monkeypatch.context() as patch:
        patch.setattr(stream, "PARQUET_ROWS", 9)
        if message is None:  # the slices alone: no whole read
            patch.setattr(stream, "read_input", lambda *a, **k: pytest.fail("whole table read"))
        sliced = run("sliced")
    monkeypatch.setattr(stream, "_fast_parquet", lambda *arguments: None)
    assert sliced == run("whole")
    if message is None:
        assert sliced[0] == 0
    else:
        assert sliced[0] == 2 and "row 40" in sliced[2] and re.search(message, sliced[2])


@pytest.mark.parametrize("fault", ["label 2.5", "label null", "target -0.5", "logit nan"])
def test_a_slice_the_whole_reader_must_judge_is_handed_over_after_the_rows_above_it(
        runner, tmp_path, monkeypatch, fault):
    # the slice went over at once, and the whole reader judges every label or target before
    # any logit: a masked class at the label of row 2 was named with slices of 4 rows, the
    # label 2.5 of row 8 with slices of 1,000
    z = np.tile([0.5, 1.5], (20, 1))
    z[2, 0] = -np.inf  # at the label 0 of row 2
    y = np.zeros(20)
    arguments = ["eval", str(tmp_path / "z.parquet")]
    if fault.startswith("target"):
        t = np.tile([0.25, 0.75], (20, 1))
        t[2], t[8] = [1.0, 0.0], [-0.5, 1.5]
        np.save(tmp_path / "z.npy", z)
        np.save(tmp_path / "t.npy", t)
        arguments = ["eval", str(tmp_path / "z.npy"), "--targets", str(tmp_path / "t.npy")]
    elif fault == "logit nan":
        z[8, 1] = np.nan
        _parquet(tmp_path / "z.parquet", z, y)
    else:
        y = y.tolist()
        y[8] = 2.5 if fault == "label 2.5" else None
        _parquet(tmp_path / "z.parquet", z, y)
    errors = set()
    for rows in (4, 1000):
        monkeypatch.setattr(stream, "PARQUET_ROWS", rows)
        monkeypatch.setattr(stream, "CHUNK_ROWS", rows)
        result = runner.invoke(app, arguments)
        assert result.exit_code == 2
        errors.add(result.stderr)
    assert len(errors) == 1
    assert re.search(r", row 2, column '(z)?0': class is masked \(logit -inf\)", errors.pop())


def test_parquet_slices_have_their_rows_whatever_batches_polars_hands_out(tmp_path, monkeypatch):
    import polars as pl

    rng = np.random.default_rng(13)
    z = rng.normal(size=(50, 4))
    path = _parquet(tmp_path / "z.parquet", z, rng.integers(0, 4, size=50))
    sizes = [5, 1, 13, 0, 20, 11]  # batches of other sizes than asked for, one empty

    def batches(lazy, chunk_size=None, **options):
        whole, at = lazy.collect(), 0
        for size in sizes:
            yield whole.slice(at, size)
            at += size

    monkeypatch.setattr(pl.LazyFrame, "collect_batches", batches)
    frames = list(stream._parquet_slices(path, ["z0", "z3"], 16))
    assert [frame.height for frame in frames] == [16, 16, 16, 2]
    assert np.array_equal(np.concatenate([frame.to_numpy() for frame in frames]), z[:, [0, 3]])


@pytest.mark.parametrize("name", ["b*.parquet", "c[1].parquet", "d?.parquet"])
@pytest.mark.parametrize("reader", ["sliced", "whole"])
def test_a_parquet_file_named_like_a_glob_is_read_as_itself(runner, tmp_path, monkeypatch, name,
                                                            reader):
    # Polars takes a path as a glob: 'b*.parquet' read bb.parquet too, 'c[1].parquet' nothing
    rng = np.random.default_rng(14)
    for other in ("bb.parquet", "c1.parquet", "dd.parquet", "y1.parquet"):
        _parquet(tmp_path / other, rng.normal(size=(9, 3)), rng.integers(0, 3, size=9))
    z, y = rng.normal(size=(5, 3)), rng.integers(0, 3, size=5)
    _parquet(tmp_path / name, z, y)
    import polars as pl

    pl.DataFrame({"label": y}).write_parquet(tmp_path / "y[1].parquet")
    np.save(tmp_path / "z.npy", z)
    if reader == "whole":
        monkeypatch.setattr(stream, "_fast_parquet", lambda *arguments: None)
    expected = losses.cross_entropy(z, y)
    for arguments in ([name], ["z.npy", "--labels", "y[1].parquet"]):
        result = runner.invoke(app, ["eval", *(str(tmp_path / a) if "." in a else a
                                               for a in arguments), "--format", "json"])
        assert result.exit_code == 0, result.output
        fields = json.loads(result.stdout)
        assert fields["n"] == 5 and fields["loss"] == pytest.approx(expected.loss, rel=1e-15)


@pytest.mark.parametrize("rows", [30, 70])
def test_a_parquet_table_rewritten_while_read_is_read_as_it_is_now(runner, tmp_path, monkeypatch,
                                                                   rows):
    # the rows counted when the file was opened (50) are 'mean's divisor of --output's gradient:
    # a table shorter now had failed with a RuntimeError, the divisor against the pass's
    rng = np.random.default_rng(14)
    path = _parquet(tmp_path / "z.parquet", rng.normal(size=(50, 3)), rng.integers(0, 3, size=50))
    z, y = rng.normal(size=(rows, 3)), rng.integers(0, 3, size=rows)
    monkeypatch.setattr(stream, "PARQUET_ROWS", 8)
    sliced = stream._parquet_slices

    def rewritten(*arguments):
        _parquet(tmp_path / "z.parquet", z, y)  # as the first slice is read
        monkeypatch.setattr(stream, "_parquet_slices", sliced)
        return sliced(*arguments)

    monkeypatch.setattr(stream, "_parquet_slices", rewritten)
    result = runner.invoke(app, ["eval", path, "--format", "json", "--output",
                                 str(tmp_path / "o.csv")])
    assert result.exit_code == 0, result.output
    monkeypatch.setattr(stream, "_fast_parquet", lambda *arguments: None)
    whole = runner.invoke(app, ["eval", path, "--format", "json", "--output",
                                str(tmp_path / "whole.csv")])
    assert json.loads(result.stdout)["n"] == rows and result.stdout == whole.stdout
    assert (tmp_path / "o.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()


def test_parquet_is_read_in_slices_of_its_rows(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    path = _parquet(tmp_path / "z.parquet", rng.normal(size=(50, 4)), rng.integers(0, 4, size=50))
    monkeypatch.setattr(stream, "PARQUET_ROWS", 16)
    source = stream.open_source(path)
    assert [chunk.data.lines for chunk in source.chunks()] == [
        range(0, 16), range(16, 32), range(32, 48), range(48, 50)]
    assert source.class_names == ("z0", "z1", "z2", "z3") and list(source.rows()) == [50]


@pytest.mark.parametrize("logit, label", [(None, 2), (float("nan"), 2), (float("inf"), 2),
                                          (1.0, None), (1.0, 2.5), (1.0, 7), (1.0, -3),
                                          (float("-inf"), 2)])
def test_parquet_slices_hand_the_unusual_to_the_whole_reader(runner, tmp_path, monkeypatch,
                                                             logit, label):
    import polars as pl

    rng = np.random.default_rng(5)
    z = rng.normal(size=(40, 4)).tolist()
    labels = rng.integers(0, 4, size=40).tolist()
    z[33][1], labels[33] = logit, label
    pl.DataFrame({**{f"z{c}": [row[c] for row in z] for c in range(4)}, "label": labels},
                 strict=False).write_parquet(tmp_path / "z.parquet")
    monkeypatch.setattr(stream, "PARQUET_ROWS", 16)
    results = []
    for _ in ("sliced", "whole"):
        results.append(runner.invoke(app, ["eval", str(tmp_path / "z.parquet"), "--format", "json"]))
        monkeypatch.setattr(stream, "_fast_parquet", lambda *arguments: None)
    sliced, whole = results
    assert (sliced.exit_code, sliced.stdout, sliced.stderr) == (whole.exit_code, whole.stdout,
                                                                whole.stderr)
    if logit == float("-inf"):  # a masked class is computed
        assert sliced.exit_code == 0 and json.loads(sliced.stdout)["n"] == 40
    else:
        assert sliced.exit_code == 2 and "row 33" in sliced.stderr



@pytest.mark.parametrize("files", ["npy", "npz", "compressed npz", "npy targets", "csv", "parquet"])
def test_a_chunk_of_many_classes_holds_fewer_rows_and_gives_the_same_bytes(runner, tmp_path,
                                                                           monkeypatch, files):
    # a language model's 50,257 classes in chunks of 65,536 rows would be 26 GB: a chunk holds
    # at most CHUNK_LOGITS logits, whatever k
    rng = np.random.default_rng(12)
    z, y = rng.normal(scale=3, size=(23, 7)), rng.integers(0, 7, size=23)
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "t.npy", np.eye(7)[y])
    np.savez(tmp_path / "both.npz", logits=z, labels=y)
    np.savez_compressed(tmp_path / "packed.npz", logits=z, labels=y)
    (tmp_path / "z.csv").write_text(_csv(z, y))
    _parquet(tmp_path / "z.parquet", z, y)
    arguments = {"npy": ["z.npy", "--labels", "y.npy"], "npz": ["both.npz"],
                 "compressed npz": ["packed.npz"], "npy targets": ["z.npy", "--targets", "t.npy"],
                 "csv": ["z.csv"], "parquet": ["z.parquet"]}[files]
    arguments = [str(tmp_path / arguments[0]), *arguments[1:]]
    arguments = [str(tmp_path / a) if a.endswith(".npy") else a for a in arguments]
    outputs = []
    for logits in (None, 20):  # 20 logits: chunks of 2 rows of 7 classes
        if logits:
            monkeypatch.setattr(stream, "CHUNK_LOGITS", logits)
        out = tmp_path / f"out{logits}.csv"
        result = runner.invoke(app, ["eval", *arguments, "--format", "json", "--output", str(out)])
        assert result.exit_code == 0, result.output
        outputs.append((result.stdout, out.read_bytes()))
    assert outputs[0] == outputs[1] and json.loads(outputs[0][0])["n"] == 23
    source = stream.open_source(arguments[0], labels_path=arguments[2] if "--labels" in arguments
                                else None, targets_path=arguments[2] if "--targets" in arguments
                                else None)
    assert [len(chunk.data.lines) for chunk in source.chunks()] == [2] * 11 + [1]
    monkeypatch.setattr(stream, "CHUNK_LOGITS", 3)  # fewer logits than a row's: a row a chunk
    assert stream._chunk_rows(7) == 1 and stream._chunk_rows(7, 5) == 1


# --- memory maps in another dtype: rows become float64 chunk by chunk ---------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int16])
def test_a_mapped_npy_in_another_dtype_is_converted_chunk_by_chunk(runner, tmp_path, monkeypatch,
                                                                   dtype):
    rng = np.random.default_rng(8)
    z = (rng.normal(scale=3, size=(300, 5)) * (10 if dtype == np.int16 else 1)).astype(dtype)
    y = rng.integers(0, 5, size=300)
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    loaded = stream.read_input(str(tmp_path / "z.npy"), labels_path=str(tmp_path / "y.npy"))
    assert isinstance(loaded.logits, np.memmap) and loaded.logits.dtype == dtype  # not copied
    monkeypatch.setattr(stream, "CHUNK_ROWS", 64)
    result = runner.invoke(app, ["eval", str(tmp_path / "z.npy"), "--labels", str(tmp_path / "y.npy"),
                                 "--format", "json", "--reduction", "sum"])
    assert result.exit_code == 0, result.output
    expected = losses.cross_entropy(z.astype(np.float64), y, reduction="none").per_sample
    assert json.loads(result.stdout)["loss"] == pytest.approx(math.fsum(expected), rel=1e-15)


@pytest.mark.parametrize("layout", ["C", "F", "big-endian", "float32"])
def test_an_uncompressed_npz_is_memory_mapped_a_compressed_one_read(tmp_path, layout):
    rng = np.random.default_rng(9)
    z = rng.normal(size=(6, 3))
    z = {"C": z, "F": np.asfortranarray(z), "big-endian": z.astype(">f8"),
         "float32": z.astype(np.float32)}[layout]
    y = rng.integers(0, 3, size=6)
    np.savez(tmp_path / "plain.npz", logits=z, labels=y)
    np.savez_compressed(tmp_path / "packed.npz", logits=z, labels=y)
    plain, packed = (stream._load_npz(str(tmp_path / name)) for name in ("plain.npz", "packed.npz"))
    assert all(isinstance(plain[name], np.memmap) for name in ("logits", "labels"))
    assert not any(isinstance(packed[name], np.memmap) for name in ("logits", "labels"))
    for arrays in (plain, packed):
        assert arrays["logits"].dtype == z.dtype and np.array_equal(arrays["logits"], z)
        assert np.array_equal(arrays["labels"], y)
    results = [stream.evaluate(stream.open_source(str(tmp_path / name)), show=0)
               for name in ("plain.npz", "packed.npz")]
    assert results[0].total == results[1].total and results[0].n == 6


@pytest.mark.parametrize("damage", ["a flipped data byte", "a header claiming more rows"])
def test_a_damaged_uncompressed_npz_is_refused_as_np_load_refuses_it(tmp_path, damage):
    z = np.arange(30, dtype=np.float64).reshape(10, 3) / 7
    np.savez(tmp_path / "good.npz", logits=z, labels=np.arange(10) % 3)
    raw = bytearray((tmp_path / "good.npz").read_bytes())
    if damage == "a flipped data byte":
        raw[raw.find(z.tobytes()) + 3] ^= 0x40
    else:  # a map of 11 rows would read on into the next member's bytes
        at = raw.find(b"(10, 3)")
        raw[at:at + 7] = b"(11, 3)"
    (tmp_path / "bad.npz").write_bytes(bytes(raw))
    with pytest.raises(Exception) as np_load:  # the oracle: NumPy reading the archive itself
        np.load(tmp_path / "bad.npz")["logits"]
    with pytest.raises(InputError, match="is not a readable .npz archive") as ours:
        stream.open_source(str(tmp_path / "bad.npz"))
    assert str(np_load.value) in str(ours.value)


# --- a CSV of logits beside a CSV of labels: the labels read whole by Polars -------------------

def _labels_text(y, header="label", newline="\n"):
    lines = ([header] if header else []) + [str(label) for label in y]
    return newline.join(lines) + newline


LABEL_FILES = {
    "header": lambda y: _labels_text(y),
    "no-header": lambda y: _labels_text(y, header=None),
    "crlf": lambda y: _labels_text(y, newline="\r\n"),
    "whole-floats": lambda y: _labels_text([f"{label}.0" for label in y]),
    "blank-line": lambda y: _labels_text(y).replace("\n", "\n\n", 5),
    "out-of-range": lambda y: _labels_text([*y[:40], 7, *y[41:]]),
    "not-a-number": lambda y: _labels_text([*y[:40], "x", *y[41:]]),
    "not-whole": lambda y: _labels_text([*y[:40], "1.5", *y[41:]]),
    "fewer": lambda y: _labels_text(y[:-3]),
    "more": lambda y: _labels_text([*y, 0, 1]),
    "two-columns": lambda y: "label,w\n" + "".join(f"{label},1\n" for label in y),
}


@pytest.mark.parametrize("name", LABEL_FILES)
def test_csv_labels_beside_a_large_csv_read_as_the_strict_reader_does(runner, tmp_path,
                                                                     monkeypatch, name):
    rng = np.random.default_rng(12)
    z, y = rng.normal(scale=3, size=(90, 4)), rng.integers(0, 4, size=90)
    (tmp_path / "z.csv").write_text("z0,z1,z2,z3\n" + "".join(
        ",".join(map(repr, row)) + "\n" for row in z.tolist()))
    (tmp_path / "y.csv").write_text(LABEL_FILES[name](y.tolist()))
    read = []
    real = stream._csv_labels
    monkeypatch.setattr(stream, "_csv_labels", lambda *a: read.append(real(*a)) or read[-1])
    results = {}
    for reader, threshold in (("fast", 0), ("strict", 1 << 60)):
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", threshold)
        monkeypatch.setattr(stream, "BLOCK_BYTES", 500)  # blocks of about 7 lines
        out = tmp_path / f"{reader}.csv"
        result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--labels",
                                     str(tmp_path / "y.csv"), "--output", str(out)])
        results[reader] = (result.exit_code, result.stdout, result.stderr,
                           out.read_bytes() if out.exists() else None)
    assert results["fast"] == results["strict"]
    accepted = ("header", "no-header", "crlf", "whole-floats", "blank-line")
    assert results["fast"][0] == (0 if name in accepted else 2)
    # Polars reads the labels unless the strict reader has to judge them; a label out of range
    # or a count that differs is refused later, in the strict reader's words all the same
    assert (read[0] is not None) == (name not in ("blank-line", "not-a-number", "not-whole",
                                                  "two-columns"))


@pytest.mark.parametrize("name", LABEL_FILES)
def test_csv_labels_beside_an_npy_read_as_the_strict_reader_does(runner, tmp_path, monkeypatch,
                                                                 name):
    rng = np.random.default_rng(13)
    z, y = rng.normal(scale=3, size=(90, 4)), rng.integers(0, 4, size=90)
    np.save(tmp_path / "z.npy", z)
    (tmp_path / "y.csv").write_text(LABEL_FILES[name](y.tolist()))
    results = {}
    for reader, threshold in (("polars", 0), ("strict", 1 << 60)):
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", threshold)
        result = runner.invoke(app, ["eval", str(tmp_path / "z.npy"), "--labels",
                                     str(tmp_path / "y.csv"), "--format", "json"])
        results[reader] = (result.exit_code, result.stdout, result.stderr)
    assert results["polars"] == results["strict"]


@pytest.mark.parametrize("header", ['"z0","z1","z2","label"',  # R's write.csv
                                    '"z0", "z1", "z2", "label"',
                                    '"a,b",z1,"z ""2""",label'])
def test_a_quoted_header_takes_the_fast_reader_with_the_strict_reader_s_names(
        runner, tmp_path, monkeypatch, header):
    rng = np.random.default_rng(14)
    rows = "".join(",".join(map(repr, row)) + f",{label}\n" for row, label in
                   zip(rng.normal(size=(60, 3)).tolist(), rng.integers(0, 3, size=60).tolist()))
    (tmp_path / "z.csv").write_text(header + "\n" + rows)
    parsed = []
    real = stream._parse_block
    monkeypatch.setattr(stream, "_parse_block", lambda *a, **o: parsed.append(1) or real(*a, **o))
    results = {}
    for reader, threshold in (("fast", 0), ("strict", 1 << 60)):
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", threshold)
        monkeypatch.setattr(stream, "BLOCK_BYTES", 400)
        out = tmp_path / f"{reader}.csv"
        result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--output", str(out)])
        assert result.exit_code == 0, result.output
        results[reader] = (result.stdout, out.read_bytes())
    assert results["fast"] == results["strict"] and parsed


@pytest.mark.parametrize("files", ["logits", "targets", "parquet"])
def test_pandas_read_back_index_is_refused_before_a_row_is_parsed(runner, tmp_path, monkeypatch,
                                                                   files):
    # 'Unnamed: 0' is pandas' index, saved by to_csv and read back: as a class it would change k
    # without a word; the fast readers refuse it from the header, in the strict reader's words
    import polars as pl

    rng = np.random.default_rng(15)
    z, y = rng.normal(size=(60, 3)), rng.integers(0, 3, size=60)
    table = pl.DataFrame({"Unnamed: 0": np.arange(60), "z0": z[:, 0], "z1": z[:, 1],
                          "z2": z[:, 2], "label": y})
    args = {"logits": ["z.csv"], "targets": ["z.csv", "--targets", "t.csv"],
            "parquet": ["z.parquet"]}[files]
    if files == "targets":
        table.drop("Unnamed: 0", "label").write_csv(tmp_path / "z.csv")
        pl.DataFrame({"Unnamed: 0": np.arange(60), "z0": np.ones(60), "z1": np.zeros(60),
                      "z2": np.zeros(60)}).write_csv(tmp_path / "t.csv")
    else:
        table.write_csv(tmp_path / "z.csv")
        table.write_parquet(tmp_path / "z.parquet")
    read = []
    for name in ("_parse_block", "_parquet_slices", "_parquet_frame"):
        real = getattr(stream, name)
        monkeypatch.setattr(stream, name, lambda *a, real=real, **o: read.append(1) or real(*a, **o))
    results = {}
    for reader, threshold in (("fast", 0), ("strict", 1 << 60)):
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", threshold)
        result = runner.invoke(app, ["eval", *(str(tmp_path / a) if "." in a else a for a in args)])
        results[reader] = (result.exit_code, result.stderr)
        if reader == "fast":
            assert not read  # refused from the header (or the schema): no row was read
    assert results["fast"] == results["strict"]
    where = "line 1: column 1 of the header is" if files != "parquet" else "has a column"
    assert f"{where} 'Unnamed: 0', pandas' name for a column that had none" in results["fast"][1]
    assert results["fast"][0] == 2


def _eval_by_every_reader(runner, tmp_path, monkeypatch, name: str, first, *args,
                          at: int = 0) -> dict:
    """Returns {reader: (exit code, stdout, stderr)} of eval on 3000 rows of logits whose first
    column (or the one at place at among z0, z1, z2, label) is name: first, by the fast and
    strict CSV readers and the Parquet reader, the files named alike; the fast reader's first
    block holds some 50 rows."""
    import polars as pl

    rng = np.random.default_rng(17)
    z, y = rng.normal(size=(3000, 3)), rng.integers(0, 3, size=3000)
    columns = [("z0", z[:, 0]), ("z1", z[:, 1]), ("z2", z[:, 2]), ("label", y)]
    columns.insert(at, (name, first))
    table = pl.DataFrame(dict(columns))
    table.write_csv(tmp_path / "z.csv")
    table.write_parquet(tmp_path / "z.parquet")
    monkeypatch.setattr(stream, "BLOCK_BYTES", 4000)
    results = {}
    for reader, threshold, logits in (("fast", 0, "z.csv"), ("strict", 1 << 60, "z.csv"),
                                      ("parquet", 0, "z.parquet")):
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", threshold)
        out = tmp_path / f"{reader}.npy"
        arguments = [str(tmp_path / logits), *args] if args else [str(tmp_path / logits),
                                                                   "--output", str(out)]
        result = runner.invoke(app, ["eval", *arguments])
        if result.exit_code:  # a refusal writes nothing
            assert not out.exists() and not result.stdout
        results[reader] = tuple(text.replace("z.parquet", "z.csv") if isinstance(text, str)
                                else text for text in (result.exit_code, result.stdout,
                                                       result.stderr))
    return results


# __index_level_0__: pandas' name for a filtered frame's index in Parquet, a plain column once
# Polars or DuckDB writes the table again without pandas' metadata
@pytest.mark.parametrize("name", ["id", "Index", "image_id", "sample_idx", "row_index",
                                  "__index_level_0__"])
def test_a_saved_row_index_is_refused_by_every_reader_before_any_output(runner, tmp_path,
                                                                        monkeypatch, name):
    # pandas' to_csv saves a named index as the first column: read as a class it made k = 4 and
    # a wrong loss with exit 0. Shuffled rows keep their index, so the name decides, not a run.
    index = np.random.default_rng(18).permutation(3000)
    results = _eval_by_every_reader(runner, tmp_path, monkeypatch, name, index)
    first = ", ".join(str(i) for i in index[:3])
    assert results["fast"] == results["strict"] == results["parquet"] == (2, "", (
        f"Error: {tmp_path / 'z.csv'}, column {name!r}: holds distinct whole numbers ({first}, …): "
        f"a row index saved with the logits (as pandas saves a named index), not a class; read as "
        f"one it would change k and every loss. Drop the column, or save with index=False; if "
        f"it is a class, rename it\n"))

@pytest.mark.parametrize("name, at", [("imageId", 0), ("ImageId", 0), ("sampleID", 0),
                                      ("tokenIndex", 0), ("image_id", 4), ("imageId", 4),
                                      ("id", 2), ("sample_idx", 1), ("Image ID", 4),
                                      ("Sample ID", 0), ("image-id", 4), ("row.index", 0),
                                      ("level_0", 0)])
def test_ids_saved_anywhere_among_the_logits_are_refused_by_every_reader(runner, tmp_path,
                                                                          monkeypatch, name, at):
    # df["image_id"] = ids puts the column last, after the label, and Kaggle's files name it
    # ImageId: read as a class, k = 4 and a wrong loss with exit 0
    ids = np.random.default_rng(19).permutation(3000) + 1
    results = _eval_by_every_reader(runner, tmp_path, monkeypatch, name, ids, at=at)
    shown = ", ".join(str(i) for i in ids[:3])
    what, advice = (("a row index saved with the logits (as pandas saves a named index), not a "
                     "class; read as one it would", "Drop the column, or save with index=False")
                    if at == 0 else ("ids saved with the logits, not a class; read as one they "
                                     "would", "Drop the column"))
    assert results["fast"] == results["strict"] == results["parquet"] == (2, "", (
        f"Error: {tmp_path / 'z.csv'}, column {name!r}: holds distinct whole numbers ({shown}, …): "
        f"{what} change k and every loss. {advice}; if it is a class, rename it\n"))


def test_the_index_saved_twice_is_refused_by_every_reader(runner, tmp_path, monkeypatch):
    # to_csv, read_csv, to_csv and read_csv again: pandas names the first index Unnamed: 0.1,
    # and to_csv(index=False) then saved it as a class (k one too many, a wrong loss, exit 0)
    results = _eval_by_every_reader(runner, tmp_path, monkeypatch, "Unnamed: 0.1",
                                    np.arange(3000))
    fix = ("'Unnamed: 0.1', pandas' name for a column that had none: the index that to_csv "
           "saved and read_csv read back, not a class; drop it (df.drop(columns='Unnamed: "
           "0.1')) and save with index=False\n")
    assert results["fast"] == results["strict"] == (
        2, "", f"Error: {tmp_path / 'z.csv'}, line 1: column 1 of the header is {fix}")
    assert results["parquet"] == (2, "", f"Error: {tmp_path / 'z.csv'}: has a column {fix}")


@pytest.mark.parametrize("name", ["valid", "Squid", "android", "ID card", "x_identity",
                                  "Freud's ids", "Paranoid", "Rapid"])
def test_a_class_whose_name_only_ends_like_an_id_is_a_class(runner, tmp_path, monkeypatch, name):
    # lower-case 'id' at a word's end is no camelCase Id: a class of that name counting 1, 2, 3
    counts = np.arange(1, 3001, dtype=float)
    results = _eval_by_every_reader(runner, tmp_path, monkeypatch, name, counts, "--format", "json")
    assert results["fast"][0] == results["strict"][0] == results["parquet"][0] == 0
    assert json.loads(results["strict"][1])["k"] == 4


@pytest.mark.parametrize("threshold", [1 << 60, 0])  # the strict reader, the fast one
@pytest.mark.parametrize("header, row", [("z0,z1,label,image_id", "1,2,0,a7.jpg"),
                                         ("ImageId,z0,z1,label", "3f9c0e,1,2,0")])
def test_ids_that_are_no_numbers_are_told_as_ids(runner, tmp_path, monkeypatch, threshold, header,
                                                 row):
    # Kaggle's image ids are often names or hashes: 'logit 'a7.jpg' is not a number' said
    # nothing of the column that should not be there
    monkeypatch.setattr(stream, "FAST_CSV_BYTES", threshold)
    (tmp_path / "z.csv").write_text(f"{header}\n{row}\n0,0,1,1\n")
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv")])
    name = [n for n in header.split(",") if "d" in n][0]
    cell = [c for c in row.split(",") if not c.isdigit()][0]
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", (
        f"Error: {tmp_path / 'z.csv'}, line 2, column {name!r}: logit {cell!r} is not a number; "
        f"{name!r} is named as ids are: if it holds ids, not a class, drop the column\n"))


@pytest.mark.parametrize("files, arguments, says", [
    ({"z.csv": "z0,z1,label,image_id\n1,2,0,7\n0,0,1,8\n"}, ["--weight", "1,2"],
     "--weight has 2 entries; the logits have 3 classes; the column 'image_id' may hold ids "
     "saved with the logits: drop it"),
    ({"z.csv": "z0,z1,ImageId\n1,2,7\n0,0,8\n", "t.csv": "z0,z1\n1,0\n0,1\n"},
     ["--targets", "t.csv"], "t.csv, line 1: has 2 target columns, the logits have 3 classes; "
     "the column 'ImageId' may hold ids saved with the logits: drop it"),
    ({"z.csv": "z0,z1\n1,2\n0,0\n", "t.csv": "z0,z1,image_id\n1,0,7\n0,1,8\n"},
     ["--targets", "t.csv"], "t.csv, line 1: has 3 target columns, the logits have 2 classes; "
     "its column 'image_id' may hold ids saved with the targets: drop it"),
    ({"z.csv": "z0,z1\n1,2\n0,0\n", "y.csv": "label,image_id\n0,7\n1,8\n"},
     ["--labels", "y.csv"], "y.csv, line 1: a labels file has one column, this one has 2; its "
     "column 'image_id' may hold ids saved with the labels: drop it"),
])
def test_a_count_one_off_names_ids_saved_after_the_classes(runner, tmp_path, monkeypatch, files,
                                                           arguments, says):
    # ids added to a frame come last (df["image_id"] = ...): the counts, checked before a row
    # is read, named only a first column and blamed the user's weights, targets or labels
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    result = runner.invoke(app, ["eval", "z.csv", *arguments])
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", f"Error: {says}\n")



@pytest.mark.parametrize("first", [
    [0.5, 1.0, 2.0, 3.0],  # a class named id whose logits are not whole numbers
    [1.0, 1.0, 0.0, 2.0],  # whole-number logits that repeat: no index repeats a row's number
    [float("-inf"), 0.0, 1.0, 2.0],  # a masked class (-inf) is no row number
    [3.0, -2.0, 1.0, 0.0],  # int8-quantized logits: a negative is no row number
])
def test_a_first_column_named_id_that_numbers_no_rows_is_a_class(runner, tmp_path, first):
    rows = "".join(f"{a},{b},{c}\n" for a, b, c in zip(first, [2.0, 0.0, 1.0, 0.5], [1, 1, 0, 1]))
    (tmp_path / "z.csv").write_text("id,z1,label\n" + rows)
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--format", "json"])
    assert result.exit_code == 0, result.output
    z = np.column_stack([first, [2.0, 0.0, 1.0, 0.5]])
    y = np.array([1, 1, 0, 1])
    expected = -np.mean((z - np.logaddexp(z[:, 0], z[:, 1])[:, None])[np.arange(4), y])
    assert json.loads(result.stdout)["k"] == 2
    assert json.loads(result.stdout)["loss"] == pytest.approx(expected, rel=1e-12)


def test_a_group_id_saved_with_the_logits_is_refused_by_every_reader(runner, tmp_path, monkeypatch):
    # a token classifier's logits indexed by their sentence: sentence_id repeats over a
    # sentence's tokens, so it is no row index, but read as a class it made k = 4 and a wrong
    # loss with exit 0 all the same. A name in _id says id; a bare 'id' still needs distinct
    # numbers (test_a_first_column_named_id_that_numbers_no_rows_is_a_class)
    results = _eval_by_every_reader(runner, tmp_path, monkeypatch, "sentence_id",
                                    np.arange(3000) // 7)
    assert results["fast"] == results["strict"] == results["parquet"] == (2, "", (
        f"Error: {tmp_path / 'z.csv'}, column 'sentence_id': holds whole numbers (0, 0, 0, …), "
        f"repeated: ids saved with the logits (a group's, such as a sentence's for its tokens), "
        f"not a class; read as one they would change k and every loss. Drop the column, or save "
        f"with index=False; if it is a class, rename it\n"))


@pytest.mark.parametrize("at", [0, 4])
def test_every_reader_judges_a_saved_index_from_the_same_first_rows(runner, tmp_path, monkeypatch,
                                                                    at):
    # a wide CSV's first block holds fewer rows than the check reads (some 400 of 1000 classes
    # in 8 MB): numbers distinct in that block but repeated within the first FIRST_ROWS rows
    # were refused by the fast reader and read as a class by the strict one
    results = _eval_by_every_reader(runner, tmp_path, monkeypatch, "id", np.arange(3000) % 700,
                                    "--format", "json", at=at)
    assert results["fast"] == results["strict"] == results["parquet"]
    assert results["fast"][0] == 0 and json.loads(results["fast"][1])["k"] == 4


def test_logits_that_count_up_under_a_class_name_are_logits(runner, tmp_path):
    # a toy file's logits may count 0, 1, 2, ...: without an index's name they are a class
    rows = "".join(f"{i},{-i},{i % 2}\n" for i in range(40))
    (tmp_path / "z.csv").write_text("a,b,label\n" + rows)
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["k"] == 2


@pytest.mark.parametrize("zeros_after, hinted", [(True, False), (False, True)])
def test_the_counted_from_1_hint_is_told_from_every_label_of_the_input(runner, tmp_path,
                                                                       monkeypatch, zeros_after,
                                                                       hinted):
    # the hint was drawn from the chunk that held the label k: a large file whose first rows
    # ran 1..3 was told to subtract 1 though its later rows held 0s (-1 after subtracting),
    # and the readers, whose chunks differ, disagreed
    rng = np.random.default_rng(22)
    y = rng.integers(1, 3, size=400)  # 1s and 2s
    y[50] = 3  # the error, in the first chunk of either reader
    y[300:] = 0 if zeros_after else rng.integers(1, 3, size=100)
    z = rng.normal(size=(400, 3))
    body = "z0,z1,z2,label\n" + "".join(f"{a:.6f},{b:.6f},{c:.6f},{t}\n" for (a, b, c), t in zip(z, y))
    (tmp_path / "z.csv").write_text(body)
    monkeypatch.setattr(stream, "BLOCK_BYTES", 2000)  # some 60 rows a block
    monkeypatch.setattr(stream, "CHUNK_ROWS", 64)
    results = {}
    for reader, threshold in (("fast", 0), ("strict", 1 << 60)):
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", threshold)
        result = runner.invoke(app, ["eval", str(tmp_path / "z.csv")])
        assert result.exit_code == 2
        results[reader] = result.stderr
    assert results["fast"] == results["strict"]
    assert results["fast"].startswith(f"Error: {tmp_path / 'z.csv'}, line 52, column 'label': "
                                      f"label 3 is not a class index 0..2")
    assert ("the labels run 1..3 with no 0: counted from 1?" in results["fast"]) == hinted


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_probabilities_given_as_logits_get_a_note_from_every_reader(runner, tmp_path, monkeypatch):
    # softmax outputs are valid logits, so the loss is computed, but it is not -log p of the
    # label (it sits near log k): a note on stderr says so, and stdout holds the results alone
    rng = np.random.default_rng(18)
    p, y = _softmax(3 * rng.normal(size=(1500, 4))), rng.integers(0, 4, size=1500)
    body = "a,b,c,d,label\n" + "".join(f"{','.join(f'{v:.9g}' for v in row)},{t}\n"
                                       for row, t in zip(p, y))
    (tmp_path / "z.csv").write_text(body)
    results = {}
    monkeypatch.setattr(stream, "BLOCK_BYTES", 4000)  # a first block of some 70 rows, as wide
    for reader, threshold in (("fast", 0), ("strict", 1 << 60)):  # rows make it: same words
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", threshold)
        result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--format", "json", "--quiet"])
        assert result.exit_code == 0, result.output
        results[reader] = (result.stdout, result.stderr)
    assert results["fast"] == results["strict"]
    assert results["fast"][1] == (
        f"Note: {tmp_path / 'z.csv'}: the logits of its first rows lie in [0, 1] and each "
        f"row sums to 1: these look like probabilities (softmax outputs), but cross-entropy takes "
        f"logits, so this loss is not -log p of the label; for that, give log(p) as the logits\n")
    written = np.loadtxt(tmp_path / "z.csv", delimiter=",", skiprows=1)[:, :4]
    as_logits = -np.mean(np.log(_softmax(written))[np.arange(1500), y])
    assert json.loads(results["fast"][0])["loss"] == pytest.approx(as_logits, rel=1e-12)
    assert as_logits > 1.2  # near log 4, far from the loss meant
    # log(p) as the logits, as the note says: no note, and the loss is -log p of the label
    logs = "a,b,c,d,label\n" + "".join(f"{','.join(repr(float(v)) for v in np.log(row))},{t}\n"
                                       for row, t in zip(written, y))
    (tmp_path / "log.csv").write_text(logs)
    result = runner.invoke(app, ["eval", str(tmp_path / "log.csv"), "--format", "json"])
    assert result.exit_code == 0 and result.stderr == ""
    meant = -np.mean(np.log(written[np.arange(1500), y] / written.sum(axis=1)))
    assert json.loads(result.stdout)["loss"] == pytest.approx(meant, rel=1e-12)


@pytest.mark.parametrize("body, noted", [
    ("z0,z1,z2,label\n1,0,0,0\n0,0,1,2\n", True),  # one-hot targets given as logits
    ("z0,z1,z2,label\n0.5,0.5,0,1\n", True),
    ("z0,z1,z2,label\n0.5,0.2,0.1,1\n0.6,0.3,0.1,0\n", False),  # in [0, 1], but a row sums to 0.8
    ("z0,z1,z2,label\n1.5,-0.5,0,1\n", False),  # sums to 1, but outside [0, 1]
    ("z0,z1,z2,label\n0.5,0.5,-inf,1\n", False),  # a masked class: logits
    ("z0,z1,z2,label\n0.2,0.5,0.4,1\n0.1,0.3,0.5,0\n", False),  # a toy's logits, 1 decimal: 1.1, 0.9
])
def test_the_probabilities_note_needs_every_entry_in_0_1_and_rows_summing_to_1(runner, tmp_path,
                                                                            body, noted):
    (tmp_path / "z.csv").write_text(body)
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("Note: ") == noted and result.stderr.count("\n") == noted


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_json_carries_the_notes_after_its_other_keys(runner, tmp_path, loss):
    # a pipeline that reads --format json (CI, a notebook) saw no sign of the note on stderr
    (tmp_path / "p.csv").write_text("a,b\n0.9,0.1\n0.4,0.6\n")
    (tmp_path / "z.csv").write_text("a,b\n2.5,-1\n0.4,1.6\n")
    (tmp_path / "t.csv").write_text("a,b\n1,0\n0,1\n")
    fields = {}
    for name in ("p.csv", "z.csv"):
        result = runner.invoke(app, ["eval", str(tmp_path / name), "--loss", loss, "--targets",
                                     str(tmp_path / "t.csv"), "--format", "json"])
        assert result.exit_code == 0, result.output
        fields[name] = json.loads(result.stdout)
        notes = [line.removeprefix("Note: ") for line in result.stderr.splitlines()]
        assert fields[name]["notes"] == notes
    assert len(fields["p.csv"]["notes"]) == 1 and fields["z.csv"]["notes"] == []
    assert list(fields["p.csv"]) == list(fields["z.csv"])
    assert list(fields["p.csv"])[-2:] == ["criterion", "notes"]  # the keys before keep their order
    csv_out = runner.invoke(app, ["eval", str(tmp_path / "p.csv"), "--loss", loss, "--targets",
                                  str(tmp_path / "t.csv"), "--format", "csv"])
    assert csv_out.stdout.splitlines()[0].endswith(",criterion")  # one row of numbers: no prose


@pytest.mark.parametrize("k, decimals, noted", [(100, 2, True), (1000, 3, True), (10, 2, True),
                                                 (1000, 2, False)])  # most round to 0: sums ~0.4
def test_probabilities_rounded_to_a_few_decimals_get_the_note(runner, tmp_path, k, decimals, noted):
    # each entry rounded by up to half a step: 100 classes to 2 decimals sum up to 0.13 from 1,
    # and the 1e-2 alone let them through without a word
    rng = np.random.default_rng(23)
    p = np.round(rng.dirichlet(np.ones(k), size=30), decimals)
    np.savetxt(tmp_path / "p.csv", p, delimiter=",", fmt=f"%.{decimals}f",
               header=",".join(f"c{c}" for c in range(k)), comments="")
    np.savetxt(tmp_path / "y.csv", rng.integers(0, k, size=30), fmt="%d", header="label", comments="")
    sums = np.abs(p.sum(axis=1) - 1)
    assert sums.max() > 1e-2 and (sums.max() < 0.5) == noted
    result = runner.invoke(app, ["eval", str(tmp_path / "p.csv"), "--labels", str(tmp_path / "y.csv"),
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("Note: ") == noted


@pytest.mark.parametrize("k", [3, 300])
def test_a_fresh_model_s_zero_logits_get_no_note(runner, tmp_path, k):
    # rows of zeros written to 2 decimals are 300 half-steps (1.5) from 1, but they sum to 0
    np.savetxt(tmp_path / "z.csv", np.zeros((5, k)), delimiter=",", fmt="%.2f",
               header=",".join(f"c{c}" for c in range(k)), comments="")
    (tmp_path / "y.csv").write_text("label\n0\n1\n2\n0\n1\n")
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--labels", str(tmp_path / "y.csv")])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""


def test_sigmoid_outputs_given_to_binary_cross_entropy_get_a_note(runner, tmp_path):
    rng = np.random.default_rng(19)
    z, t = rng.normal(size=(40, 3)), rng.integers(0, 2, size=(40, 3))
    for name, values in (("p.csv", 1 / (1 + np.exp(-z))), ("z.csv", z)):
        np.savetxt(tmp_path / name, values, delimiter=",", header="a,b,c", comments="")
    np.savetxt(tmp_path / "t.csv", t, delimiter=",", header="a,b,c", comments="", fmt="%d")
    np.savetxt(tmp_path / "zero.csv", np.zeros((40, 3)), delimiter=",", header="a,b,c", comments="")
    for name, noted in (("p.csv", True), ("z.csv", False), ("zero.csv", False)):
        result = runner.invoke(app, ["eval", str(tmp_path / name), "--loss", "bce", "--targets",
                                     str(tmp_path / "t.csv"), "--format", "json"])
        assert result.exit_code == 0, result.output
        assert ("(sigmoid outputs), but binary cross-entropy takes logits, as PyTorch's "
                "BCEWithLogitsLoss does; for the loss of probabilities p give log(p / (1 - p)), "
                "with p clipped off 0 and 1 (a logit of ±inf is refused)" in result.stderr) == noted
        assert json.loads(result.stdout)["k"] == 3


@pytest.mark.parametrize("args", [["eval", "z.csv", "--targets", "t.parquet"],
                                  ["eval", "--loss", "bce", "z.npy", "--targets", "t.parquet"],
                                  ["check", "z.npy", "--targets", "t.csv"]],
                         ids=["parquet-targets", "bce-parquet-targets", "check-csv-targets"])
def test_targets_with_pandas_read_back_index_are_refused_by_every_reader(runner, tmp_path, args):
    # a table of targets with pandas' index as its first column: taken as a class, it made k
    # right beside 4 logits and then gave a wrong loss (binary targets 0 and 1) or another
    # message ('sum to 2'); the CSV reader of targets beside CSV logits refuses it
    import polars as pl

    rng = np.random.default_rng(16)
    z = rng.normal(size=(2, 4))
    np.save(tmp_path / "z.npy", z)
    pl.DataFrame({f"z{c}": z[:, c] for c in range(4)}).write_csv(tmp_path / "z.csv")
    t = rng.dirichlet(np.ones(3), size=2) if args[1] != "--loss" else np.eye(3)[:2]
    table = pl.DataFrame({"Unnamed: 0": np.arange(2), **{f"z{c}": t[:, c] for c in range(3)}})
    table.write_parquet(tmp_path / "t.parquet")
    table.write_csv(tmp_path / "t.csv")
    result = runner.invoke(app, [str(tmp_path / a) if "." in a else a for a in args])
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert "'Unnamed: 0', pandas' name for a column that had none" in message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize("logits", ["z.csv", "z.npy", "z.parquet"])
@pytest.mark.parametrize("labels, hinted", [("0\n{}", True),  # pd.Series(y).to_csv(index=False)
                                            ("label\n0\n{}", False), ("0\n0\n{}", False)])
def test_a_header_read_as_a_label_is_named_by_every_reader(runner, tmp_path, monkeypatch, logits,
                                                           labels, hinted):
    import polars as pl

    rng = np.random.default_rng(16)
    z, y = rng.normal(size=(40, 3)), rng.integers(0, 3, size=40)
    pl.DataFrame({f"z{c}": z[:, c] for c in range(3)}).write_csv(tmp_path / "z.csv")
    pl.DataFrame({f"z{c}": z[:, c] for c in range(3)}).write_parquet(tmp_path / "z.parquet")
    np.save(tmp_path / "z.npy", z)
    (tmp_path / "y.csv").write_text(labels.format("\n".join(map(str, y))) + "\n")
    said = set()
    for threshold in (0, 1 << 60):  # the fast readers, then the strict ones
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", threshold)
        result = runner.invoke(app, ["eval", str(tmp_path / logits), "--labels",
                                     str(tmp_path / "y.csv")])
        assert result.exit_code == 2
        said.add(result.stderr)
    assert len(said) == 1  # the same words from every reader
    hint = ("; its first line, 0, was read as a label: if it is a header (pandas' Series.to_csv "
            "names a series without a name 0), save with header=False")
    assert (hint in said.pop()) == hinted


@pytest.mark.parametrize("compress", [gzip.compress, lzma.compress, bz2.compress])
def test_a_compressed_csv_is_refused_from_its_first_bytes(runner, tmp_path, monkeypatch, compress):
    # the strict reader reads a file whole before it judges its bytes: a large compressed CSV is
    # told from its first line, as the strict reader would tell it
    path = tmp_path / "z.csv.gz"
    path.write_bytes(compress(_csv(np.zeros((500, 3)), np.zeros(500, dtype=int)).encode()))
    said = []
    for threshold in (1 << 60, 0):  # the strict reader, then the fast one
        monkeypatch.setattr(stream, "FAST_CSV_BYTES", threshold)
        if threshold == 0:
            monkeypatch.setattr(data, "_read_text", lambda *a: pytest.fail("read whole"))
        result = runner.invoke(app, ["eval", str(path)])
        said.append((result.exit_code, result.stderr))
    assert said[0] == said[1] and said[0][0] == 2
    assert "-compressed, not CSV text: decompress it (" in said[0][1]


def test_a_header_that_begins_as_bzip2_does_is_read(runner, tmp_path):
    (tmp_path / "z.csv").write_text("BZh,z1,label\n1,2,0\n0,0,1\n")  # bzip2's first 3 bytes
    result = runner.invoke(app, ["eval", str(tmp_path / "z.csv"), "--format", "json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["k"] == 2
