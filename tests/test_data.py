"""The reader: strict cells, dialects, lines as an editor counts them, atomic writing."""

import io
import math
import os
import pathlib
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xent_cli import data
from xent_cli.errors import InputError


def write(tmp_path, name, text, mode="w"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return str(path)


# --- cells ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("1", 1.0), ("-2.5", -2.5), ("+3", 3.0), (".5", 0.5), ("5.", 5.0), ("1e-3", 0.001),
    ("1E5", 1e5), ("-0", -0.0), ("1e-400", 0.0), ("1.7976931348623157e308", sys.float_info.max),
])
def test_decimal_literals_parse(text, value):
    assert data.parse_number(text) == value


@pytest.mark.parametrize("text, reason", [
    ("nan", "not a finite number"), ("NaN", "not a finite number"), ("inf", "not a finite"),
    ("-inf", "not a finite"), ("Infinity", "not a finite"), ("1e400", "overflows float64"),
    ("-1e400", "overflows float64"), ("1_000", "not a number"), ("0x10", "not a number"),
    ("abc", "not a number"), ("", "empty"), ("1,5", "not a number"), ("1 2", "not a number"),
])
def test_non_decimal_or_non_finite_cells_are_refused(text, reason):
    with pytest.raises(ValueError, match=reason):
        data.parse_number(text)


@pytest.mark.parametrize("text, hint", [
    ("1,5", "write a decimal point: 1.5"), ("0,125", "write a decimal point: 0.125"),
    ("-12,3456", "write a decimal point: -12.3456"),
    # three digits after a comma may be a thousands separator: 1000, or a decimal comma: 1.000
    ("1,000", "a thousands separator or a decimal comma: write 1000 or 1.000"),
    ("-12,345", "a thousands separator or a decimal comma: write -12345 or -12.345"),
])
def test_a_comma_in_a_number_is_told_only_as_what_it_may_be(text, hint):
    with pytest.raises(ValueError) as refused:
        data.parse_number(text)
    assert str(refused.value) == f"{text!r} is not a number; {hint}"


@pytest.mark.parametrize("text, hint", [
    ("\u22121.5", "'\u2212' is a typographic minus: write -1.5"),  # pasted from a document
    ("True", "write 1 for True"), ("false", "write 0 for false"),  # pandas' bools
])
def test_a_cell_a_document_or_pandas_wrote_says_how_to_write_it(text, hint):
    with pytest.raises(ValueError) as refused:
        data.parse_number(text)
    assert str(refused.value) == f"{text!r} is not a number; {hint}"


def test_thousands_separators_are_not_called_decimal_commas_in_a_delimiter_hint(tmp_path):
    path = tmp_path / "z.csv"
    path.write_text("z0\tz1\tlabel\n1,000\t2\t0\n")  # tab-separated, read with ','
    with pytest.raises(InputError) as refused:
        data.read_logits(str(path))
    assert refused.value.message == ("the header is one column 'z0\\tz1\\tlabel'; the cells seem "
                                     "to be separated by '\\t': give --delimiter '\\t'")


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_repr_of_every_finite_float_reads_back_bit_for_bit(x):
    assert data.parse_number(repr(x)) == x
    assert math.copysign(1, data.parse_number(repr(x))) == math.copysign(1, x)


@pytest.mark.parametrize("text, label", [("2", 2), ("-100", -100), ("2.0", 2), ("1e0", 1), ("+0", 0)])
def test_labels_are_whole_numbers_and_integral_floats_are_accepted(text, label):
    assert data.parse_label(text) == label


@pytest.mark.parametrize("text", ["2.5", "nan", "two", "", "1e400"])
def test_labels_that_are_not_whole_numbers_are_refused(text):
    with pytest.raises(ValueError):
        data.parse_label(text)


def test_weights_parse_from_a_comma_list_and_name_the_bad_entry():
    assert data.parse_weights("1, 2.5,0", 3) == (1.0, 2.5, 0.0)
    with pytest.raises(InputError, match="entry 1 .*'x' is not a number"):
        data.parse_weights("1,x,3", 3)


@pytest.mark.parametrize("text, message", [
    ("1,x", "--pos-weight entry 1 (class 1): 'x' is not a number"),
    ("1,-2", "--pos-weight entry 1 (class 1): -2 is negative; weights are >= 0"),
    ("1", "--pos-weight has 1 entries; the logits have 2 classes"),
])
def test_weight_messages_name_the_option_they_came_with(text, message):
    with pytest.raises(InputError) as raised:
        data.parse_weights(text, 2, option="--pos-weight")
    assert raised.value.message == message


WEIGHTS = [0.5, 2.0, 1.25, 0.0]  # exact in float32


@pytest.mark.parametrize("name, write", [
    ("w.txt", lambda path: np.savetxt(path, WEIGHTS)),  # one a line, as '%.18e'
    ("w.txt", lambda path: path.write_text(",".join(map(str, WEIGHTS)) + "\n")),
    ("w.txt", lambda path: path.write_text(" ".join(map(str, WEIGHTS)))),
    ("w.npy", lambda path: np.save(path, np.array(WEIGHTS, dtype=np.float32))),
    ("w.npy", lambda path: np.save(path, np.array(WEIGHTS))),
], ids=["savetxt", "commas", "spaces", "npy-float32", "npy-float64"])
def test_weights_come_from_a_file_named_with_an_at(tmp_path, name, write):
    write(tmp_path / name)
    assert data.parse_weights(f"@{tmp_path / name}", 4) == tuple(WEIGHTS)


def test_a_weights_npy_of_whole_numbers_gives_floats(tmp_path):
    np.save(tmp_path / "w.npy", np.array([3, 0, 1]))
    weights = data.parse_weights(f"@{tmp_path / 'w.npy'}", 3)
    assert weights == (3.0, 0.0, 1.0) and all(type(w) is float for w in weights)


@pytest.mark.parametrize("content, message", [
    ("1,2\n", "w.txt: --weight has 2 entries; the logits have 3 classes"),
    ("1,,2,3\n", "w.txt: --weight entry 1 (class 1): is missing (empty cell)"),
    ("1\nx\n2\n", "w.txt: --weight entry 1 (class 1): 'x' is not a number"),
    ("1\n-2\n2\n", "w.txt: --weight entry 1 (class 1): -2 is negative; weights are >= 0"),
    ("", "w.txt: --weight entry 0 (class 0): is missing (empty cell)"),
    (np.array([1.0, np.nan, 2.0]), "w.npy: --weight entry 1 (class 1): nan is not a finite number"),
    (np.ones((3, 1)), "w.npy: --weight wants a 1-D array of numbers, one per class; this one is "
                      "float64 of shape (3, 1)"),
    (None, "nope.txt: no such file"),
])
def test_a_weights_file_names_itself_and_the_entry(tmp_path, monkeypatch, content, message):
    monkeypatch.chdir(tmp_path)
    name = "nope.txt" if content is None else "w.npy" if isinstance(content, np.ndarray) \
        else "w.txt"
    if isinstance(content, np.ndarray):
        np.save(name, content)
    elif content is not None:
        pathlib.Path(name).write_text(content)
    with pytest.raises(InputError) as raised:
        data.parse_weights(f"@{name}", 3)
    assert str(raised.value) == message


def test_an_at_without_a_file_says_how_to_name_one():
    with pytest.raises(InputError, match=r"--pos-weight @ names no file; give --pos-weight @"):
        data.parse_weights("@", 3, option="--pos-weight")


# --- tables and dialects ----------------------------------------------------------------------

PLAIN = "z0,z1,label\n1,2,0\n3,4,1\n"


@pytest.mark.parametrize("raw", [
    PLAIN,
    PLAIN.replace("\n", "\r\n"),  # CRLF
    "\ufeff" + PLAIN,  # UTF-8 byte order mark
    PLAIN.rstrip("\n"),  # no final newline
    PLAIN.replace(",", ", "),  # spaces after commas
    PLAIN + "\n\n",  # blank trailing lines
], ids=["plain", "crlf", "bom", "no-final-newline", "spaces", "blank-tail"])
def test_dialects_read_the_same(tmp_path, raw):
    loaded = data.read_eval_input(write(tmp_path, "z.csv", raw))
    assert loaded.class_names == ("z0", "z1")
    assert loaded.logits.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert loaded.labels.tolist() == [0, 1]
    assert loaded.lines == (2, 3)


def test_tsv_by_extension_and_other_delimiters_by_option(tmp_path):
    tsv = data.read_eval_input(write(tmp_path, "z.tsv", PLAIN.replace(",", "\t")))
    semi = data.read_eval_input(write(tmp_path, "z.txt", PLAIN.replace(",", ";")), delimiter=";")
    assert tsv.logits.tolist() == semi.logits.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_stdin_is_read_for_dash(monkeypatch):
    stream = io.TextIOWrapper(io.BytesIO(PLAIN.encode()), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stream)
    loaded = data.read_eval_input("-")
    assert loaded.source == "-" and loaded.labels.tolist() == [0, 1]


def test_lines_count_as_an_editor_does_across_blank_lines(tmp_path):
    path = write(tmp_path, "z.csv", "z0,z1,label\n1,2,0\n\n3,x,1\n")
    with pytest.raises(InputError) as caught:
        data.read_eval_input(path)
    assert str(caught.value) == f"{path}, line 4, column 'z1': logit 'x' is not a number"


def test_label_column_is_anywhere_and_the_rest_are_classes_in_file_order(tmp_path):
    loaded = data.read_eval_input(write(tmp_path, "z.csv", "y,b,a\n1,5,6\n0,7,8\n"), label_col="y")
    assert loaded.class_names == ("b", "a")
    assert loaded.logits.tolist() == [[5.0, 6.0], [7.0, 8.0]]
    assert loaded.labels.tolist() == [1, 0]


def test_a_label_column_not_there_names_the_columns_there_are(tmp_path):
    path = write(tmp_path, "z.csv", PLAIN)
    with pytest.raises(InputError) as caught:
        data.read_eval_input(path, label_col="y")  # --label-col y, a typo or a guess
    assert str(caught.value) == (f"{path}, line 1: there is no column 'y' (its columns: z0, z1, "
                                 "label); if 'label' holds the labels, give --label-col label; "
                                 "else give --labels or --targets")


@pytest.mark.parametrize("name", ["target", "y", "Class", "class id"])
def test_a_column_under_a_usual_name_for_labels_is_suggested(tmp_path, name):
    path = write(tmp_path, "z.csv", f"z0,z1,{name}\n1,2,0\n")
    with pytest.raises(InputError) as caught:
        data.read_eval_input(path)
    usual = name.lower() in data.LABEL_NAMES
    assert (f"; if {name!r} holds the labels, give --label-col {name}; else give --labels or "
            f"--targets" in str(caught.value)) == usual, str(caught.value)


def test_a_long_list_of_names_is_cut_in_the_middle():
    names = [f"z{c}" for c in range(50_257)]
    assert data.names_shown(names) == "z0, z1, z2, z3, z4, z5, …, z50256 (50,257 in all)"
    assert data.names_shown(names[:8]) == ", ".join(names[:8])


@pytest.mark.parametrize("labels_text", ["label\n1\n0\n", "1\n0\n", "1\r\n0"],
                         ids=["header", "no-header", "crlf-no-final-newline"])
def test_labels_file_with_or_without_header(tmp_path, labels_text):
    logits = write(tmp_path, "z.csv", "a,b\n1,2\n3,4\n")
    loaded = data.read_eval_input(logits, labels_path=write(tmp_path, "y.csv", labels_text))
    assert loaded.labels.tolist() == [1, 0]
    first = 2 if labels_text.startswith("label") else 1
    assert loaded.target_lines == (first, first + 1)


def test_soft_targets_file(tmp_path):
    logits = write(tmp_path, "z.csv", "a,b\n1,2\n3,4\n")
    loaded = data.read_eval_input(logits, targets_path=write(tmp_path, "t.csv", "p0,p1\n0.25,0.75\n1,0\n"))
    assert loaded.labels is None
    assert loaded.targets.tolist() == [[0.25, 0.75], [1.0, 0.0]]


# --- placing core errors ----------------------------------------------------------------------

def test_a_label_out_of_range_is_placed_at_its_line_in_the_labels_file(tmp_path):
    logits = write(tmp_path, "z.csv", "a,b\n1,2\n3,4\n")
    labels = write(tmp_path, "y.csv", "label\n1\n\n7\n")
    loaded = data.read_eval_input(logits, labels_path=labels)
    with pytest.raises(InputError) as caught:
        data.evaluate(loaded)
    assert str(caught.value).startswith(f"{labels}, line 4, column 'label': label 7 is not a class")


def test_a_logit_too_large_for_float32_is_placed_at_its_cell(tmp_path):
    loaded = data.read_eval_input(write(tmp_path, "z.csv", "a,b,label\n1,2,0\n1e39,0,1\n"))
    with pytest.raises(InputError) as caught:
        data.evaluate(loaded, dtype="float32")
    assert str(caught.value).startswith(f"{loaded.source}, line 3, column 'a': logit does not fit")


def test_a_soft_row_not_summing_to_one_is_placed_in_the_targets_file(tmp_path):
    logits = write(tmp_path, "z.csv", "a,b\n1,2\n3,4\n")
    targets = write(tmp_path, "t.csv", "p0,p1\n0.5,0.5\n0.5,0.6\n")
    loaded = data.read_eval_input(logits, targets_path=targets)
    with pytest.raises(InputError) as caught:
        data.evaluate(loaded)
    assert str(caught.value).startswith(f"{targets}, line 3: target probabilities sum to 1.1")


# --- the worked arithmetic --------------------------------------------------------------------

def test_worked_sample_follows_the_hand_derivation(tmp_path):
    loaded = data.read_eval_input(write(tmp_path, "z.csv", "a,b,c,label\n1,2,3,0\n0,0,0,2\n"))
    worked = data.evaluate(loaded, show=5).worked
    assert len(worked) == 2  # no more than there are samples
    first = worked[0]
    e = [math.exp(-2), math.exp(-1), 1.0]
    assert first.shifted.tolist() == [-2.0, -1.0, 0.0]
    assert first.exp_sum == pytest.approx(sum(e), rel=1e-15)
    assert first.p.tolist() == pytest.approx([x / sum(e) for x in e], rel=1e-15)
    assert first.loss == pytest.approx(-math.log(e[0] / sum(e)), rel=1e-14)
    # mean over 2 samples: gradient = (p - y) / 2
    assert first.scale == 0.5
    assert first.grad.tolist() == pytest.approx(((first.p - [1, 0, 0]) / 2).tolist(), rel=1e-14)
    assert data.evaluate(loaded, show=0).worked == ()


# --- writing ----------------------------------------------------------------------------------

def test_write_atomic_writes_the_bytes_as_given_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "out.png"
    image = b"\x89PNG\r\n\x1a\n\x00\xff"  # an image's bytes: no text layer may touch them
    data.write_atomic(str(target), image)
    assert target.read_bytes() == image
    assert os.listdir(tmp_path) == ["out.png"]


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken_replace(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(InputError, match="No space left"):
        data.write_atomic(str(tmp_path / "out.csv"), b"a\n")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("case, fragment", [
    ("directory", "is a directory"),
    ("missing-directory", "does not exist"),
    ("input", "is an input file"),
])
def test_output_paths_that_cannot_take_a_file_are_refused(tmp_path, case, fragment):
    source = write(tmp_path, "z.csv", PLAIN)
    path = {"directory": str(tmp_path), "missing-directory": str(tmp_path / "no" / "o.csv"),
            "input": source}[case]
    with pytest.raises(InputError, match=fragment):
        data.write_atomic(path, b"x\n", inputs=[source])
    assert (tmp_path / "z.csv").read_text() == PLAIN


def test_write_refuses_an_input_reached_by_another_spelling(tmp_path, monkeypatch):
    source = write(tmp_path, "z.csv", PLAIN)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="input file"):
        data.check_output_path("./z.csv", inputs=[source])
    assert np.array_equal(data.read_eval_input(source).logits, [[1.0, 2.0], [3.0, 4.0]])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_worked_gradient_is_scale_times_p_minus_y_under_weights_and_smoothing(tmp_path, reduction):
    loaded = data.read_eval_input(write(tmp_path, "z.csv", "a,b,c,label\n1,2,3,0\n0,1,0,2\n2,0,1,1\n"))
    weight, eps = (1.0, 2.0, 3.0), 0.3
    evaluation = data.evaluate(loaded, weight=weight, label_smoothing=eps, reduction=reduction)
    # mean divisor = the labels' weights: w[0] + w[2] + w[1] = 6
    for sample, label in zip(evaluation.worked, (0, 2, 1)):
        # smoothed, weighted target: a_c = (1 - eps) w[y] [c = y] + eps / 3 * w[c]
        a = [(1 - eps) * weight[label] * (c == label) + eps / 3 * weight[c] for c in range(3)]
        assert sample.weight_sum == pytest.approx(sum(a), rel=1e-14)
        assert sample.scale == pytest.approx(sum(a) / (6 if reduction == "mean" else 1), rel=1e-14)
        assert sample.y.tolist() == pytest.approx([x / sum(a) for x in a], rel=1e-14)
        np.testing.assert_allclose(sample.grad, sample.scale * sample.p_minus_y, rtol=1e-12, atol=1e-16)
        assert sample.loss == pytest.approx(-sample.weight_sum * float(sample.y @ np.log(sample.p)),
                                            rel=1e-12)
        assert sample.neg_log_p == pytest.approx(-math.log(sample.p[label]), rel=1e-12)


def test_an_unreadable_file_is_named(tmp_path, monkeypatch):
    path = write(tmp_path, "z.csv", PLAIN)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(data, "open", denied, raising=False)
    with pytest.raises(InputError, match="z.csv: cannot be read: permission denied"):
        data.read_eval_input(path)


def test_a_new_output_file_gets_the_usual_mode_not_mkstemps_0600(tmp_path):
    umask = os.umask(0o022)
    try:
        data.write_atomic(str(tmp_path / "out.csv"), b"x\n")
    finally:
        os.umask(umask)
    assert (tmp_path / "out.csv").stat().st_mode & 0o777 == 0o644


finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 5).flatmap(lambda k: st.lists(
    st.tuples(st.lists(finite, min_size=k, max_size=k), st.integers(0, k - 1)), min_size=1, max_size=6)))
def test_any_table_written_with_repr_reads_back_bit_for_bit(tmp_path_factory, rows):
    k = len(rows[0][0])
    text = ",".join(f"z{c}" for c in range(k)) + ",label\n"
    text += "".join(",".join(map(repr, z)) + f",{y}\n" for z, y in rows)
    path = tmp_path_factory.mktemp("t") / "z.csv"
    path.write_text(text, encoding="utf-8")
    loaded = data.read_eval_input(str(path))
    assert loaded.logits.tobytes() == np.array([z for z, _ in rows], dtype=np.float64).tobytes()
    assert loaded.labels.tolist() == [y for _, y in rows]
    assert loaded.lines == tuple(range(2, len(rows) + 2))


def test_ctrl_c_just_after_the_rename_keeps_the_whole_file(tmp_path, monkeypatch):
    path = tmp_path / "out.csv"
    real_replace = os.replace

    def replace_then_interrupt(source, target):
        real_replace(source, target)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt):  # not a FileNotFoundError from the cleanup
        with data.atomic_writer(str(path)) as file:
            file.write("a,b\n")
    assert path.read_text() == "a,b\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_r_row_names_are_named_as_the_unnamed_first_column(tmp_path):
    # R's write.csv writes its row names under an empty, quoted name, each quoted
    path = write(tmp_path, "z.csv", '"","z0","z1","label"\n"1",1,2,0\n"2",0,0,1\n')
    with pytest.raises(InputError) as caught:
        data.read_eval_input(path)
    assert str(caught.value) == (
        f"{path}, line 1: column 1 of the header has no name; pandas writes its index there: "
        "save with to_csv(path, index=False) (R's write.csv its row names: row.names = FALSE)")


def test_locate_places_an_error_by_its_in_logits_field_not_its_words():
    """A core error is placed in the logits file where it says the fault is a logit's, whatever
    its message says: a target's fault whose text mentions logits stays in the targets file."""
    placed = data.EvalInput(
        logits=np.zeros((3, 2)), labels=None, targets=np.full((3, 2), 0.5), class_names=("a", "b"),
        source="z.csv", lines=(2, 3, 4), target_source="t.csv", target_column=None,
        target_lines=(5, 6, 7), target_names=("pa", "pb"))
    target = data.locate(InputError("target differs from its logit's row", sample=1,
                                    column="class 1"), placed)
    logit = data.locate(InputError("too large", sample=2, column="class 0", in_logits=True), placed)
    row = data.locate(InputError("row of masked classes", sample=0, in_logits=True), placed)
    assert str(target) == "t.csv, line 6, column 'pb': target differs from its logit's row"
    assert str(logit) == "z.csv, line 4, column 'a': too large"
    assert str(row) == "z.csv, line 2: row of masked classes"
