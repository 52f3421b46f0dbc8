"""Reading logits, labels and soft targets from CSV text, and writing result files atomically.

A table is a header row and data rows. Every error names the file, the line as an editor counts
it (the header is line 1) and the column header, so the user can go straight to the bad cell.

Dialect: UTF-8 with or without a BOM, LF or CRLF, with or without a final newline, spaces after
the delimiter. Blank lines are skipped. The delimiter is ',' or, for a '.tsv' file, a tab.
Cells are strict: decimal numbers only (no 'nan', 'inf', '1_000', hex); a literal that
overflows float64 (1e400) is an error, not infinity. The one exception is a logit written '-inf':
it masks its class (probability 0), which is allowed as long as that class is not the target. A label is a whole number; '2.0' is
accepted as 2 (files written by float arrays spell labels that way), '2.5' is an error.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import shlex
import sys
import tempfile
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Sequence

import numpy as np

from xent_cli import losses
from xent_cli.errors import InputError

STDIN = "-"

# ASCII digits only: Python's float() also reads '١' and '１', which no CSV writer means as numbers.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# A decimal written with a comma, as spreadsheets in many locales save it: 1,5 for 1.5.
_DECIMAL_COMMA = re.compile(r"[+-]?[0-9]*,[0-9]+(?:[eE][+-]?[0-9]+)?")
# ... unless it may as well be a thousands separator: 1,000 is 1000 in English, 1.000 in German.
_THOUSANDS = re.compile(r"[+-]?[1-9][0-9]{0,2},[0-9]{3}")
_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class Table:
    """A header and its data rows as text, each row with the file line it ends on."""

    source: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    lines: tuple[int, ...]
    header_line: int = 1


@dataclass(frozen=True)
class EvalInput:
    """Logits and their targets, with where each sample sits in its files.

    Exactly one of ``labels`` (N,) int64 and ``targets`` (N, k) float64 is set. ``lines[i]`` is
    the line of sample i in ``source``; ``target_lines[i]`` its line in ``target_source``
    (the same file when the labels are a column of the logits file). In an array file (.npy,
    .npz, .parquet) a sample's 'line' is its row, from 0: ``rows_in`` names such files.
    """

    logits: np.ndarray  # (N, k) float64
    labels: np.ndarray | None
    targets: np.ndarray | None
    class_names: tuple[str, ...]
    source: str
    lines: Sequence[int]  # a tuple, or a range where lines (or rows) run on
    target_source: str
    target_column: str | None  # the label column's header, None for soft targets
    target_lines: Sequence[int]
    # the targets file's own column names (soft or binary targets from a CSV): its header may
    # differ from the logits', and an error in it names its own column
    target_names: tuple[str, ...] | None = None
    rows_in: frozenset[str] = frozenset()  # the array files among source and target_source

    @property
    def inputs(self) -> tuple[str, ...]:
        """Returns the files read (once each)."""
        return tuple(dict.fromkeys((self.source, self.target_source)))


@dataclass(frozen=True)
class WorkedSample:
    """One sample's arithmetic, step by step, as a learner would do it by hand."""

    sample: int
    line: int | None  # None in an array file, where the sample is the row
    z: np.ndarray  # logits
    shifted: np.ndarray  # z - max z
    exps: np.ndarray  # exp(z - max z)
    exp_sum: float  # their sum
    p: np.ndarray  # softmax = exps / exp_sum
    label: int | None  # the target class (index targets)
    y: np.ndarray  # the target distribution the loss compares p with (smoothing applied)
    p_minus_y: np.ndarray
    neg_log_p: float | None  # -log p of the label (index targets)
    rest: float | None  # 1 - p of the label, from the other classes' exps (p may round to 1)
    loss: float  # this sample's loss, as reduction='none' gives it
    weight_sum: float  # the sum of this sample's target coefficients (1 without weights)
    scale: float  # gradient = scale * (p - y) = weight_sum / divisor
    grad: np.ndarray  # the gradient row of the reported loss
    ignored: bool


@dataclass(frozen=True)
class Evaluation:
    """The cross-entropy of a file of logits, with the numbers a summary needs."""

    data: EvalInput
    result: losses.CrossEntropyResult
    weight: tuple[float, ...] | None
    ignore_index: int
    label_smoothing: float
    dtype: str
    accuracy: float | None  # share of counted samples whose argmax is the label (soft: target argmax)
    mean_loss: float  # total / divisor: the 'mean' loss whatever the reduction
    perplexity: float | None  # exp(mean_loss), index targets only
    worked: tuple[WorkedSample, ...]

    @property
    def n(self) -> int:
        return self.data.logits.shape[0]

    @property
    def k(self) -> int:
        return self.data.logits.shape[1]

    @property
    def predictions(self) -> np.ndarray:
        """Returns each sample's predicted class (the first largest logit)."""
        return self.data.logits.argmax(axis=1)


# --- reading ----------------------------------------------------------------------------------

def delimiter_of(path: str, delimiter: str | None) -> str:
    """Returns the delimiter a CSV is read with: the given one, or by extension."""
    if delimiter is not None:
        return delimiter
    return "\t" if path.lower().endswith(".tsv") else ","


def read_table(path: str, delimiter: str | None = None, *, require_rows: bool = True) -> Table:
    """Returns the header and rows of a CSV file ('-' reads stdin).

    This is the one place that parses text, so a faster engine can replace it.
    """
    text = _read_text(path)
    delimiter = delimiter_of(path, delimiter)
    header, header_line, rows, lines = None, 1, [], []
    for line, cells in _cells(text, path, delimiter):
        if header is None:
            header, header_line = _header(cells, path, line, delimiter), line
            continue
        _check_row(cells, header, header_line, path, delimiter, line, first=not rows)
        rows.append(cells)
        lines.append(line)
    if header is None:
        raise InputError("the file is empty; expected a header row and data rows", source=path)
    if not rows and require_rows:
        raise InputError("the file has a header but no data rows", source=path)
    return Table(source=path, header=header, rows=tuple(rows), lines=tuple(lines),
                 header_line=header_line)


def read_rows(text: str, header: tuple[str, ...], path: str, delimiter: str,
              first_line: int) -> Table:
    """Returns the rows of text, whole lines of the CSV file at path from first_line on, below
    its header on line 1, as read_table reads them: a stream reads a block of lines at a time."""
    rows, lines = [], []
    for line, cells in _cells(text, path, delimiter, first_line - 1):
        _check_row(cells, header, 1, path, delimiter, line, first=first_line == 2 and not rows)
        rows.append(cells)
        lines.append(line)
    return Table(source=path, header=header, rows=tuple(rows), lines=tuple(lines))


def read_block(text: str, header: tuple[str, ...], path: str, delimiter: str, first_line: int,
               label_col: str) -> tuple[np.ndarray, np.ndarray | None, tuple[int, ...]]:
    """Returns the logits, the labels (where label_col is a column) and the lines of text, whole
    lines of a CSV file from first_line on, each cell read and checked as read_eval_input reads
    it in the whole file."""
    table = read_rows(text, header, path, delimiter, first_line)
    label = header.index(label_col) if label_col in header else None
    logits = _numbers(table, [c for c in range(len(header)) if c != label], "logit", parse_logit)
    return logits, None if label is None else _labels(table, label), table.lines


def _cells(text: str, path: str, delimiter: str, lines_before: int = 0
           ) -> Iterator[tuple[int, tuple[str, ...]]]:
    """Yields (line, stripped cells) of each row of CSV text that is not blank, the line
    counted in the file whose first lines_before lines come before text."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, skipinitialspace=True)
    end = 0  # the line the previous row ended on
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if any("\n" in cell or "\r" in cell for cell in row):
                raise InputError(f"a quoted cell runs over lines {lines_before + start}-"
                                 f"{lines_before + end}; is a quote not closed? A cell holds "
                                 "one number", source=path, line=lines_before + start)
            cells = tuple(cell.strip() for cell in row)
            if any(cells):  # else a blank line
                yield lines_before + reader.line_num, cells
    except csv.Error as error:
        raise InputError(f"not valid CSV: {error}", source=path,
                         line=lines_before + reader.line_num) from None


def _check_row(cells: tuple[str, ...], header: tuple[str, ...], header_line: int, path: str,
               delimiter: str, line: int, first: bool) -> None:
    """Raises InputError when a row has another number of cells than the header."""
    if len(cells) != len(header):
        _check_delimiter(header, cells, delimiter, path, header_line)
        # a one-cell first line above real rows: a log line printed before the CSV
        above = (f", {header[0]!r} on line {header_line}: the file must begin with its "
                 f"header row; drop the lines above it" if len(header) == 1 and first else "")
        # some writers end every row with the delimiter: one cell too many, and that one empty
        trailing = (f"; its last cell is empty: the row ends with {delimiter!r}, drop it"
                    if not above and len(cells) == len(header) + 1 and not cells[-1] else "")
        raise InputError(f"row has {len(cells)} cell{'s' if len(cells) != 1 else ''}, the "
                         f"header has {len(header)}{above}{trailing}", source=path, line=line)


# Soft targets of one column are most likely class indices: PyTorch's target= takes either.
INDICES_HINT = "; class indices go to --labels"


def read_eval_input(logits_path: str, *, label_col: str = "label", labels_path: str | None = None,
                    targets_path: str | None = None, delimiter: str | None = None,
                    min_classes: int = 2) -> EvalInput:
    """Reads logits with labels from their own column, a labels file, or a soft-targets file.

    min_classes is 2 for softmax cross-entropy and 1 for binary cross-entropy, where one logit
    column is the usual binary classifier.
    """
    if labels_path is not None and targets_path is not None:
        raise InputError("give either labels or soft targets, not both")
    if [logits_path, labels_path, targets_path].count(STDIN) > 1:
        raise InputError("stdin ('-') can be read once: give one of the files as '-', the others "
                         "by name")
    table, logits, class_names = read_logits(logits_path, label_col=label_col,
                                             targets_from=labels_path or targets_path,
                                             delimiter=delimiter, min_classes=min_classes)
    has_label_col = label_col in table.header and not (labels_path or targets_path)
    labels = targets = None
    target_column = None
    if has_label_col:
        target_source, target_column, target_lines = logits_path, repr(label_col), table.lines
        labels = _labels(table, table.header.index(label_col))
    elif labels_path is not None:
        labels, name, target_lines = _read_labels(labels_path, delimiter)
        target_column = None if name is None else repr(name)
        target_source = labels_path
        _same_length(table, target_lines, labels_path, "labels",
                     header_read_as_label(labels, name, len(table.rows)))
    else:
        target_table = read_table(targets_path, delimiter)
        _check_names(target_table)
        target_source, target_lines = targets_path, target_table.lines
        if len(target_table.header) != len(class_names):
            raise target_columns_error(len(target_table.header), class_names, len(class_names),
                                       target_table.header, targets_path, target_table.header_line)
        if (tuple(target_table.header) != class_names
                and sorted(target_table.header) == sorted(class_names)):
            # the same names in another order: matched by position, every class would be
            # scored against another's target without a word
            raise InputError(f"has the logits' class columns in another order "
                             f"({', '.join(target_table.header)}; the logits: "
                             f"{', '.join(class_names)}); targets are matched by position: "
                             f"put them in the logits' order", source=targets_path,
                             line=target_table.header_line)
        _same_length(table, target_lines, targets_path, "target rows",
                     header_read_as_targets(target_table.header, len(target_lines),
                                            len(table.rows)))
        targets = _numbers(target_table, range(len(class_names)), "probability")
        negative = np.argwhere(targets < 0)
        if negative.size:
            i, c = negative[0]
            raise InputError(f"target probability {target_table.rows[i][c]} is negative",
                             source=targets_path, line=target_lines[i],
                             column=repr(target_table.header[c]))
    return EvalInput(logits=logits, labels=labels, targets=targets, class_names=class_names,
                     source=logits_path, lines=table.lines, target_source=target_source,
                     target_column=target_column, target_lines=tuple(target_lines),
                     target_names=None if targets is None else target_table.header)


def read_logits(path: str, *, label_col: str = "label", targets_from: str | None = None,
                delimiter: str | None = None, min_classes: int = 2
                ) -> tuple[Table, np.ndarray, tuple[str, ...]]:
    """Reads a CSV of logits: its table, the (N, k) logits and the class names.

    Every column is a logit but the label column; with targets from another file
    (targets_from), a label column is an error, as is its absence without one.
    """
    table = read_table(path, delimiter)
    has_label_col = label_col in table.header
    if targets_from and has_label_col:
        raise InputError(f"has a column {label_col!r} and labels come from {targets_from}; "
                         f"remove one of them", source=path, line=table.header_line)
    _check_delimiter(table.header, table.rows[0] if table.rows else None,
                     delimiter_of(path, delimiter), path, table.header_line)
    _check_names(table)
    if not targets_from:
        check_label_column(table.header, label_col, path, table.header_line)
    logit_columns = [c for c, name in enumerate(table.header)
                     if not (has_label_col and name == label_col)]
    if len(logit_columns) < min_classes:
        raise InputError(_too_few_classes(len(logit_columns), min_classes),
                         source=path, line=table.header_line)
    class_names = tuple(table.header[c] for c in logit_columns)
    return table, _numbers(table, logit_columns, "logit", parse_logit), class_names


# what a label column is often called: 'label' where --label-col named another
LABEL_NAMES = ("label", "labels", "target", "targets", "y", "y_true", "class", "gold", "truth")


def no_label_column(label_col: str, names: Sequence[str]) -> str:
    """Returns what to say of a table without the label column: its columns, and the one
    that goes by a usual name for labels."""
    shown = f"{label_col!r} (its columns: {names_shown(names)})"
    usual = [name for name in names if name.lower() in LABEL_NAMES]
    if usual:
        return (f"{shown}; if {usual[0]!r} holds the labels, give --label-col "
                f"{shlex.quote(usual[0])}; else give --labels or --targets")
    return f"{shown}; name the label column with --label-col, or give --labels or --targets"


def names_shown(names: Sequence[str], most: int = 8) -> str:
    """Returns the names parted by commas, the middle of a long list left out: a language
    model's 50,257 class names would make a line of half a megabyte."""
    if len(names) <= most:
        return ", ".join(names)
    return ", ".join([*names[:most - 2], "…", names[-1]]) + f" ({len(names):,} in all)"


# one logit column is what a binary classifier gives, and --loss bce takes it
BINARY_HINT = "; one logit column is a binary classifier: --loss bce"


def check_label_column(header: tuple[str, ...], label_col: str, path: str, line: int) -> None:
    """Raises InputError when a header without labels beside it has no label column."""
    if label_col in header:
        return
    first = header[0]
    if first.startswith("#") and first.lstrip("#").strip() == label_col:
        raise InputError(f"there is no column {label_col!r}; the header starts with "
                         f"np.savetxt's comment mark, so its first name is {first!r}: save "
                         f"with np.savetxt(..., header='{label_col},...', comments='')",
                         source=path, line=line)
    raise InputError(f"there is no column {no_label_column(label_col, header)}", source=path,
                     line=line)


def _too_few_classes(found: int, min_classes: int) -> str:
    """Says that a loss needs more logit columns than were found."""
    if min_classes >= 2:
        return (f"found {found} logit column{'' if found == 1 else 's'}; cross-entropy needs "
                f"at least {min_classes} classes{BINARY_HINT if found == 1 else ''}")
    return f"found no logit column; binary cross-entropy needs at least {min_classes}"


# torch.save's extensions: a zip or a pickle that only torch.load reads
PYTORCH_FILES = (".pt", ".pth")


# A compressed file's first bytes, and the commands that decompress it: to a file, to stdout.
# bzip2's 'BZh' could begin a header: its block size and block mark follow ('1AY&SY' is pi).
_COMPRESSED = ((re.compile(rb"\x1f\x8b"), "gzip", "gunzip", "zcat"),
               (re.compile(rb"BZh[1-9]1AY&SY"), "bzip2", "bunzip2", "bzcat"),
               (re.compile(rb"\xfd7zXZ\x00"), "xz", "unxz", "xzcat"),
               (re.compile(rb"\x28\xb5\x2f\xfd"), "zstd", "unzstd", "zstdcat"))


def refuse_compressed(head: bytes, path: str) -> None:
    """Raises InputError when a file's first bytes (head) are those of a compressed file: xent
    reads CSV text, which a decompressing command can pipe to it as '-'."""
    for magic, name, to_file, to_stdout in _COMPRESSED:
        if magic.match(head):
            raise InputError(f"is {name}-compressed, not CSV text: decompress it ({to_file}), "
                             f"or pipe it through {to_stdout} to xent as '-'", source=path)


# Formats xent does not read, by extension: read as CSV, their first line was taken for a
# header ('[[1.5, 2.0], ...' of a JSON file: 'the file has a header but no data rows')
_OTHER_FORMATS = {".json": "JSON", ".jsonl": "JSON lines", ".ndjson": "JSON lines",
                  ".xlsx": "an Excel workbook", ".xls": "an Excel workbook",
                  ".feather": "Arrow IPC (Feather)", ".arrow": "Arrow IPC", ".ipc": "Arrow IPC",
                  ".pkl": "a pickle", ".pickle": "a pickle", ".h5": "HDF5", ".hdf5": "HDF5"}


def refuse_other_format(path: str) -> None:
    """Raises InputError for a file whose extension names a format xent does not read."""
    suffix = os.path.splitext(path.lower())[1]
    if suffix in _OTHER_FORMATS:
        stem = os.path.splitext(os.path.basename(path))[0]
        raise InputError(f"is {_OTHER_FORMATS[suffix]}, which xent does not read: save it as "
                         f"CSV, .npy, .npz or .parquet (np.save('{stem}.npy', array))",
                         source=path)


def _binary(path: str) -> str:
    """Says a file is binary; for torch.save's files, how to save the tensor for xent instead."""
    if os.path.splitext(path.lower())[1] not in PYTORCH_FILES:
        return "is binary, not CSV text"
    stem = os.path.splitext(os.path.basename(path))[0]
    return (f"is a PyTorch file, which xent does not read (loading one runs pickled code): save "
            f"the tensor with np.save('{stem}.npy', t.numpy())")


def stdin_bytes() -> BinaryIO:
    """Returns stdin as bytes; an error when it was closed before xent started (<&-)."""
    if sys.stdin is None:
        raise InputError("stdin is closed; pipe or redirect a file into it", source=STDIN)
    if getattr(sys.stdin, "buffer", None) is None:  # a text stream alone (an embedding program's)
        return io.BytesIO(sys.stdin.read().encode("utf-8"))
    return sys.stdin.buffer


def _read_text(path: str) -> str:
    """Returns a file's text (stdin for '-'); binary or undecodable input is an error."""
    if not path:
        raise InputError("the file name is empty ('' was given); name a CSV file, or '-' for stdin")
    try:
        if path == STDIN:
            raw = stdin_bytes().read()
        else:
            with open(path, "rb") as file:
                raw = file.read()
    except FileNotFoundError:
        code, sep, _ = path.rpartition(":")  # FILE.py:NAME or MODULE:NAME, as --grad-fn takes
        if sep and code and os.path.isfile(code if code.endswith(".py")
                                           else code.replace(".", os.sep) + ".py"):
            raise InputError(f"no such file; a function of yours is checked with xent check "
                             f"--grad-fn {path} (LOGITS is a data file)", source=path) from None
        raise InputError("no such file", source=path) from None
    except IsADirectoryError:
        raise InputError("is a directory, not a CSV file", source=path) from None
    except PermissionError:
        raise InputError("cannot be read: permission denied", source=path) from None
    except OSError as error:
        raise InputError(f"cannot be read: {error.strerror or error}", source=path) from None
    if path.endswith(".py"):
        raise InputError(f"is Python code, not logits; check a function in it with xent check "
                         f"--grad-fn {path}:NAME", source=path)
    refuse_compressed(raw, path)
    refuse_other_format(path)
    if b"\0" in raw:
        raise InputError(_binary(path), source=path)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        if os.path.splitext(path.lower())[1] in PYTORCH_FILES:
            raise InputError(_binary(path), source=path) from None
        line = raw.count(b"\n", 0, error.start) + 1
        raise InputError(f"is not UTF-8 text (byte {error.start})", source=path, line=line) from None


def _check_delimiter(header: tuple[str, ...], first: tuple[str, ...] | None, delimiter: str,
                     path: str, line: int) -> None:
    """Raises InputError when a one-column header and the first row's cells (if any) hold
    another delimiter: the wrong one was used. (A binary classifier's one column may be named
    'spam score'.)"""
    if len(header) != 1:
        return
    first_row = header[0] if first is None else delimiter.join(first)  # the line as written
    for other, option in ((";", "';'"), ("\t", "'\\t'"), (",", "','"), ("|", "'|'"),
                          (" ", "' '")):
        if other != delimiter and other in header[0] and other in first_row:
            commas = delimiter == "," and any(
                _DECIMAL_COMMA.fullmatch(cell.strip()) and not _THOUSANDS.fullmatch(cell.strip())
                for cell in first_row.split(other))
            how = (", with decimal commas, which xent does not read: write 1.5, not 1,5, and "
                   if commas else ": ")
            raise InputError(f"the header is one column {header[0]!r}; the cells seem to be "
                             f"separated by {option}{how}give --delimiter {option}",
                             source=path, line=line)


def _looks_like_data(header: tuple[str, ...]) -> bool:
    """Tells whether a header row is numbers, some not whole like the class numbers 0, 1, 2 or
    -1, 0, 1: np.savetxt writes no header, and its first row of logits would be read as one."""
    return (all(_NUMBER.fullmatch(name) for name in header)
            and not all(_INTEGER.fullmatch(name) for name in header))


def check_names(header: tuple[str, ...], source: str, line: int = 1) -> None:
    """Raises InputError when a header is a row of data."""
    if _looks_like_data(header):
        more = len(header) > 3
        names = ",".join(f"z{c}" for c in range(min(len(header), 3))) + (",…" if more else "")
        raise InputError(f"holds numbers ({', '.join(header[:3])}{', …' if more else ''}), not "
                         f"column names: the file has no header row; add one, as "
                         f"np.savetxt(..., header='{names}', comments='') does",
                         source=source, line=line)


def _check_names(table: Table) -> None:
    check_names(table.header, table.source, table.header_line)
    check_pandas_unnamed(table.header, table.source, table.header_line)


# pandas' name for a column without one, by its place; read_csv tells a repeated name by .1
# (the index saved twice: to_csv, read_csv, to_csv and read_csv again make Unnamed: 0.1)
_UNNAMED = re.compile(r"Unnamed: (\d+)(?:\.\d+)?")


def _pandas_unnamed(name: str) -> bool:
    """Returns whether name is the one pandas gives a column without a name: 'Unnamed: 0' for
    the index of a CSV saved with to_csv, read back with read_csv and saved again."""
    return bool(_UNNAMED.fullmatch(name))


def check_pandas_unnamed(names, source: str, line: int | None = None) -> None:
    """Raises InputError at the first column named by pandas for want of a name: 'Unnamed: 0'
    is pandas' index, saved by to_csv and read back; a later one, a class whose name was lost."""
    for c, name in enumerate(names):
        if _pandas_unnamed(name):
            where = f"column {c + 1} of the header is" if line else "has a column"
            # pandas numbers the columns it names: 0 is the first of the CSV it read
            fix = (f"the index that to_csv saved and read_csv read back, not a class; drop it "
                   f"(df.drop(columns={name!r})) and save with index=False"
                   if _UNNAMED.fullmatch(name)[1] == "0" else "give its class its name")
            raise InputError(f"{where} {name!r}, pandas' name for a column that had none: {fix}",
                             source=source, line=line)


# Names a table's index goes by; pandas' to_csv saves a named index as the first column, and
# reset_index() names it level_0 where a column is named index already (a second reset_index).
INDEX_NAMES = frozenset({"id", "idx", "index", "level_0", "row", "row_id", "sample",
                         "sample_id"})
# pandas' name in Parquet for an unnamed index that is no range (a filtered frame's): a plain
# column once Polars or DuckDB writes the table again without pandas' metadata
_ARROW_INDEX = re.compile(r"__index_level_\d+__")
# an ids' name in words: id, idx or index after an underscore, a space, a hyphen or a dot
# (image_id, spreadsheets' Image ID, image-id, R's image.id)
_WORD_IDS = re.compile(r"[_ .-](id|idx|index)$")
# an ids' name in camelCase or PascalCase: a lower-case letter or a digit, then Id, ID, Idx or
# Index at the end (Kaggle's ImageId, imageID, tokenIndex)
_CAMEL_IDS = re.compile(r"[a-z0-9](Id|ID|Idx|IDX|Index)$")
# The rows of the first chunk that the checks of its look read (a large CSV's first block holds
# as many unless a row has some 800 classes), so that every reader decides from the same rows.
FIRST_ROWS = 1000


def _index_name(name: str) -> bool:
    """Returns whether a column name is one an index goes by: id, index, ..., or an ids'."""
    return name.strip().casefold() in INDEX_NAMES or _ids_name(name)


def _ids_name(name: str) -> bool:
    """Returns whether a column name says it holds ids, as no class's does: one in _id, _idx or
    _index (image_id, sample_idx, row_index; Image ID, image-id), in camelCase (imageId,
    ImageId, sampleID, tokenIndex), or pandas' __index_level_0__."""
    name = name.strip()
    folded = name.casefold()
    return (bool(_WORD_IDS.search(folded)) or bool(_CAMEL_IDS.search(name))
            or bool(_ARROW_INDEX.fullmatch(folded)))


def index_hint(class_names: Sequence[str] | None, count: int) -> str:
    """Returns a hint when count (weights, target columns) is one short of the classes and a
    class is named as an index is, else '': these counts are checked before a row is read, so
    before check_row_index, and would blame the user's k."""
    if not class_names or count != len(class_names) - 1:
        return ""
    return _saved_index(class_names, "logits", "the")


def _saved_index(names: Sequence[str] | None, what: str, its: str = "its") -> str:
    """Returns a hint that the first of names, named as an index is (or pandas' 'Unnamed: 0'),
    may be the row index pandas' to_csv saved with the logits, labels or targets (what), or
    that a later one so named may be ids added to them (df["image_id"] = ..., last), for a
    file with a column too many; else ''."""
    if not names:
        return ""
    if _index_name(names[0]) or _pandas_unnamed(names[0]):
        return (f"; {its} first, {names[0]!r}, may be a row index saved with the {what}: drop "
                f"it, or save with index=False")
    named = index_columns(names)
    return (f"; {its} column {names[named[0]]!r} may hold ids saved with the {what}: drop it"
            if named else "")


def target_columns_error(count: int, class_names: Sequence[str] | None, k: int,
                         target_names: Sequence[str] | None, source: str,
                         line: int | None = None) -> InputError:
    """Returns the error for count target columns beside k classes of logits, with its likely
    cause: class indices (one column), or a row index saved with the logits (one too few) or
    with the targets (one too many)."""
    hint = index_hint(class_names, count)  # first: a binary classifier's index is no --labels
    if not hint and count == 1:
        hint = INDICES_HINT
    elif not hint and count == k + 1:
        hint = _saved_index(target_names, "targets")
    return InputError(f"has {count} target columns, the logits have {k} classes{hint}",
                      source=source, line=line)


def check_row_index(part: EvalInput) -> None:
    """Raises InputError when a logit column is a row index or ids saved with the logits: named
    as an index is (id, index, image_id, imageId, ...), it holds distinct whole numbers in its
    first FIRST_ROWS rows. Read as a class, it would change k and every loss without a word.
    Under a name that says ids (image_id, ...), numbers that repeat are ids all the same: a
    sentence's over its tokens, an image's over its boxes. pandas saves its index first; an id
    column added to a frame (df["image_id"] = ...) comes last, after the label.

    The name decides, not the numbers alone: a toy file's logits may well count 0, 1, 2. No row
    number is negative, and quantized logits mostly have one: the digits example's logits in
    int8, 10 rows of a class, are distinct 66% of the time, distinct and not negative 0.7%.
    """
    if not part.class_names or len(part.lines) == 0:
        return
    for column in index_columns(part.class_names):
        values = part.logits[:FIRST_ROWS, column]
        with np.errstate(invalid="ignore"):  # inf - inf: not whole, as nan is not
            if not ((values - np.round(values) == 0) & (values >= 0)).all():
                continue
        name = part.class_names[column]
        distinct = np.unique(values).size == values.size
        if not distinct and not _ids_name(name):
            continue
        shown = ", ".join(f"{v:.0f}" for v in values[:3]) + (", …" if values.size > 3 else "")
        pandas = column == 0  # where pandas' to_csv saves its index
        what = (f"distinct whole numbers ({shown}): a row index saved with the logits (as pandas "
                f"saves a named index), not a class; read as one it would" if distinct and pandas
                else f"distinct whole numbers ({shown}): ids saved with the logits, not a class; "
                f"read as one they would" if distinct else
                f"whole numbers ({shown}), repeated: ids saved with the logits (a group's, such "
                f"as a sentence's for its tokens), not a class; read as one they would")
        advice = "Drop the column, or save with index=False" if pandas else "Drop the column"
        raise InputError(f"holds {what} change k and every loss. {advice}; if it is a class, "
                         f"rename it", source=part.source, column=repr(name))


def index_columns(names: Sequence[str]) -> list[int]:
    """Returns the places of the columns among names that are named as an index or ids are."""
    return [column for column, name in enumerate(names) if _index_name(name)]


# How far a row of probabilities may sum from 1: written to d decimals, each of its k entries is
# up to half a step 10**-d off, so the row up to k half-steps (100 classes to 2 decimals: 0.5),
# yet never more than 0.5: rows summing to 0 are a fresh model's zero logits.
PROBABILITY_SUM_TOLERANCE = 1e-2
ROUNDED_SUM_TOLERANCE = 0.5


def _rounded_sum_tolerance(z: np.ndarray) -> float:
    """Returns how far from 1 the rows of z may sum as probabilities written to d decimals:
    k half-steps of 10**-d for the fewest d (2 to 4) that holds every entry, at most 0.5.
    One decimal is a hand-written toy's (0.2, 0.5, 0.4 are logits as likely), not a model's."""
    for d in range(2, 5):
        scaled = z * 10.0 ** d
        if (np.abs(scaled - np.round(scaled)) < 1e-3).all():  # float32's 0.13 is 12.9999995
            return min(z.shape[1] * 10.0 ** -d / 2, ROUNDED_SUM_TOLERANCE)
    return PROBABILITY_SUM_TOLERANCE


def probabilities_note(part: EvalInput, binary: bool = False) -> str | None:
    """Returns a note when the first rows' logits look like probabilities, else None.

    Softmax outputs (or one-hot targets) given as logits are valid numbers, so this is no error,
    but their loss is not -log p of the label: every entry in [0, 1] and every row summing to 1
    (for binary cross-entropy, every entry in [0, 1], not all equal) is what no model's logits
    look like.
    """
    z = part.logits[:FIRST_ROWS]
    if z.size == 0 or not np.isfinite(z).all() or z.min() < 0 or z.max() > 1:
        return None
    if binary and z.min() == z.max():  # all 0 is a fresh model's logits (p = 0.5), not p = 0
        return None
    off = np.abs(z.sum(axis=1) - 1).max() if not binary else 0
    if off > PROBABILITY_SUM_TOLERANCE and (off > ROUNDED_SUM_TOLERANCE  # no need to look closer
                                            or off > _rounded_sum_tolerance(z)):
        return None
    # the first rows, however many the first chunk holds: a wide CSV's first block has fewer
    # than FIRST_ROWS, and the readers say the same
    if binary:
        return (f"{part.source}: the logits of its first rows lie in [0, 1]: these look like "
                f"probabilities (sigmoid outputs), but binary cross-entropy takes logits, as "
                f"PyTorch's BCEWithLogitsLoss does; for the loss of probabilities p give "
                f"log(p / (1 - p)), with p clipped off 0 and 1 (a logit of ±inf is refused)")
    return (f"{part.source}: the logits of its first rows lie in [0, 1] and each row sums to 1: "
            f"these look like probabilities (softmax outputs), but cross-entropy takes logits, "
            f"so this loss is not -log p of the label; for that, give log(p) as the logits")


def _header(cells: tuple[str, ...], path: str, line: int, delimiter: str) -> tuple[str, ...]:
    """Returns the header; empty or repeated names are errors."""
    for c, name in enumerate(cells):
        if not name:
            # pandas' to_csv writes its index as an unnamed first column, R's write.csv its
            # row names
            hint = ("; pandas writes its index there: save with to_csv(path, index=False) "
                    "(R's write.csv its row names: row.names = FALSE)" if c == 0 else
                    f"; the header ends with {delimiter!r}: drop it, or name the last column"
                    if c == len(cells) - 1 else "")
            raise InputError(f"column {c + 1} of the header has no name{hint}", source=path,
                             line=line)
        if name in cells[:c]:
            raise InputError(f"column name {name!r} appears twice in the header", source=path,
                             line=line)
    return cells


def list_hint(text: str, option: str) -> str:
    """Returns how to write a list option's values given as Python writes a list ('[1, 2, 3]')
    or parted by spaces ('1 2 3'): parted by commas; '' for any other text."""
    bare = text.strip()
    if bare[:1] in "[(" and bare[-1:] in ")]":
        fix = ",".join(part.strip() for part in bare[1:-1].split(","))
    elif " " in bare and "," not in bare:
        fix = ",".join(bare.split())
    else:
        return ""
    return f"; write the values parted by commas, without brackets or spaces: {option} {fix}"


def parse_weights(text: str, k: int, option: str = "--weight",
                  class_names: Sequence[str] | None = None) -> tuple[float, ...]:
    """Returns k class weights from 'w0,w1,...', or from the file '@PATH' names; each must be a
    finite number >= 0.

    Messages name the option the text came with, and the file (and a saved row index, from
    class_names).
    """
    source = None
    if text.startswith("@"):  # a language model's 50,257 weights outgrow a shell argument (128 KiB)
        source = text[1:]
        cells = _weight_file(source, option)
    else:
        cells = text.split(",")
    weights = []
    for c, cell in enumerate(cells):
        try:
            weights.append(cell if isinstance(cell, float) else parse_number(cell.strip()))
            if not np.isfinite(weights[-1]):  # an .npy's inf or nan, which no text here reaches
                raise ValueError(f"{cell!r} is not a finite number")
        except ValueError as error:
            raise InputError(f"{option} entry {c} (class {c}): {error}"
                             f"{'' if source else list_hint(text, option)}", source=source) from None
        if weights[-1] < 0:
            raise InputError(f"{option} entry {c} (class {c}): {cell} is negative; weights are "
                             f">= 0", source=source)
    if len(weights) != k:
        raise InputError(f"{option} has {len(weights)} entries; the logits have {k} classes"
                         f"{index_hint(class_names, len(weights))}", source=source)
    return tuple(weights)


def _weight_file(path: str, option: str) -> list:
    """Returns the weights of a file given as --weight @PATH: a 1-D .npy array of numbers (its
    values as floats), or text of numbers parted by commas, spaces or lines (np.savetxt's)."""
    if not path:
        raise InputError(f"{option} @ names no file; give {option} @weights.txt")
    if not path.lower().endswith(".npy"):
        # a comma parts two cells, spaces around it or not: '1,,2' has an empty cell, as in a list
        return re.split(r"\s*,\s*|\s+", _read_text(path).strip())
    array = load_npy(path)
    if array.ndim != 1 or array.dtype.kind not in "iuf":
        raise InputError(f"{option} wants a 1-D array of numbers, one per class; this one is "
                         f"{array.dtype} of shape {array.shape}", source=path)
    return [float(w) for w in array]


def load_npy(path: str, mmap_mode: str | None = None) -> np.ndarray:
    """Returns the array of an .npy file (mapped with mmap_mode 'r'); its errors in one line."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError:
        raise InputError("no such file", source=path) from None
    except Exception as error:  # noqa: BLE001 - a corrupt header raises SyntaxError, ...
        raise InputError(f"is not a readable .npy array: {error}", source=path) from None


def parse_number(text: str) -> float:
    """Returns a finite float from a decimal literal; raises ValueError with the reason."""
    if not _NUMBER.fullmatch(text):
        if text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
            raise ValueError(f"{text!r} is not a finite number")
        if _THOUSANDS.fullmatch(text):
            raise ValueError(f"{text!r} is not a number; a thousands separator or a decimal "
                             f"comma: write {text.replace(',', '')} or {text.replace(',', '.')}")
        if _DECIMAL_COMMA.fullmatch(text):
            raise ValueError(f"{text!r} is not a number; write a decimal point: "
                             f"{text.replace(',', '.')}")
        minus = text.replace("\u2212", "-")  # a typographic minus, pasted from a document
        if minus != text and _NUMBER.fullmatch(minus):
            raise ValueError(f"{text!r} is not a number; '\u2212' is a typographic minus: "
                             f"write {minus}")
        if text.lower() in ("true", "false"):  # pandas' to_csv writes a bool column so
            raise ValueError(f"{text!r} is not a number; write {int(text.lower() == 'true')} "
                             f"for {text}")
        raise ValueError(f"{text!r} is not a number" if text else "is missing (empty cell)")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text!r} overflows float64")
    return value


def parse_logit(text: str) -> float:
    """Returns a logit: a finite number, or -inf for a masked class."""
    if text.lower() in ("-inf", "-infinity"):
        return float("-inf")
    return parse_number(text)


def parse_label(text: str) -> int:
    """Returns a class label from a whole number ('2' or '2.0'); raises ValueError otherwise."""
    if _INTEGER.fullmatch(text):
        return int(text)
    value = parse_number(text)
    if value != int(value):
        raise ValueError(f"label {text!r} is not an integer")
    return int(value)


def _numbers(table: Table, columns, what: str, parse=parse_number) -> np.ndarray:
    """Returns the given columns of a table as a float64 array (rows, columns)."""
    columns = list(columns)
    out = np.empty((len(table.rows), len(columns)), dtype=np.float64)
    for i, row in enumerate(table.rows):
        for j, c in enumerate(columns):
            try:
                out[i, j] = parse(row[c])
            except ValueError as error:
                name = table.header[c]
                # ids are often names (Kaggle's image ids, a7.jpg): not a logit that went wrong
                ids = (f"; {name!r} is named as ids are: if it holds ids, not a class, drop "
                       f"the column" if what == "logit" and _index_name(name) else "")
                raise InputError(f"{what} {error}{ids}", source=table.source,
                                 line=table.lines[i], column=repr(name)) from None
    return out


def _labels(table: Table, column: int) -> np.ndarray:
    """Returns one column of a table as int64 labels."""
    out = np.empty(len(table.rows), dtype=np.int64)
    for i, row in enumerate(table.rows):
        try:
            value = parse_label(row[column])
            if not -2**63 <= value < 2**63:
                raise ValueError(f"label {row[column]!r} is out of range")
        except ValueError as error:
            message = str(error) if str(error).startswith("label") else f"label {error}"
            classes = [name for c, name in enumerate(table.header) if c != column]
            if row[column].strip() in classes:  # the class's name where its index belongs
                message += (f"; {row[column].strip()!r} names class "
                            f"{classes.index(row[column].strip())}: labels are class indices "
                            f"0..{len(classes) - 1}")
            raise InputError(message, source=table.source, line=table.lines[i],
                             column=repr(table.header[column])) from None
        out[i] = value
    return out


def _read_labels(path: str, delimiter: str | None) -> tuple[np.ndarray, str | None, tuple[int, ...]]:
    """Reads a one-column labels file: its labels, its header (None when its first line is a
    number, so a label) and each label's line."""
    table = read_table(path, delimiter, require_rows=False)  # maybe the header is a label
    if len(table.header) != 1:
        hint = _saved_index(table.header, "labels") if len(table.header) == 2 else ""
        raise InputError(f"a labels file has one column, this one has {len(table.header)}{hint}",
                         source=path, line=table.header_line)
    try:
        parse_number(table.header[0])
    except ValueError:
        if not table.rows:
            raise InputError("the file has a header but no labels", source=path) from None
        return _labels(table, 0), table.header[0], table.lines
    whole = Table(source=path, header=("label",), rows=((table.header[0],),) + table.rows,
                  lines=(table.header_line,) + table.lines)
    return _labels(whole, 0), None, whole.lines


def _same_length(table: Table, target_lines, target_path: str, what: str, more: str = ""
                 ) -> None:
    """Raises InputError when the logits and the targets differ in their number of rows; more
    ends the message of too many."""
    n, m = len(table.rows), len(target_lines)
    if m != n:
        raise unequal_rows(n, m, table.source, table.lines[m] if m < n else None, target_path,
                           target_lines[n] if m > n else None, what, more)


def unequal_rows(n: int, m: int, source: str, line: int | None, target_path: str,
                 target_line: int | None, what: str, more: str = "") -> InputError:
    """Returns the error for n rows of logits in source beside m of targets (what: 'labels',
    'target rows'): at the line of the first without a partner, or at the first surplus
    target's target_line; more ends the message."""
    if m < n:
        return InputError(f"this sample has no partner: {target_path} has only {m} {what} for "
                          f"{n} rows of logits{more}", source=source, line=line)
    return InputError(f"{target_path} has {m} {what} but {source} has only {n} rows of "
                      f"logits{more}", source=target_path, line=target_line)


def header_read_as_label(labels: np.ndarray, name: str | None, n: int) -> str:
    """Returns what to say when a CSV of labels read without a header (name None: its first
    line is a number) holds one label more than the n rows of logits: pandas' Series.to_csv
    writes a header, 0 for a series without a name."""
    if name is not None or len(labels) != n + 1:
        return ""
    return (f"; its first line, {labels[0]}, was read as a label: if it is a header (pandas' "
            f"Series.to_csv names a series without a name 0), save with header=False")


def header_read_as_targets(names: Sequence[str], m: int, n: int) -> str:
    """Returns what to say when a CSV of targets whose header is numbers holds one row fewer
    than the n rows of logits: its first row read as the header, as a binary classifier's 0/1
    labels in a file without a header would be, given as --targets."""
    if m != n - 1 or not all(_NUMBER.fullmatch(name) for name in names):
        return ""
    return (f"; its first line, {','.join(names)}, was read as the header: a CSV of targets "
            f"begins with one (a name per class)")


# --- evaluating -------------------------------------------------------------------------------

def evaluate(data: EvalInput, *, weight=None, ignore_index: int = -100,
             label_smoothing: float = 0.0, reduction: str = "mean", dtype: str = "float64",
             show: int = 3) -> Evaluation:
    """Returns the cross-entropy of the data, with errors placed in their files."""
    target = data.labels if data.labels is not None else data.targets
    try:
        result = losses.cross_entropy(data.logits, target, weight=weight,
                                      ignore_index=ignore_index, label_smoothing=label_smoothing,
                                      reduction=reduction, dtype=np.dtype(dtype))
    except InputError as error:
        raise locate(error, data) from None
    counted = ~result.ignored
    accuracy = None
    if counted.any():
        if data.labels is not None:
            accuracy = losses.accuracy(data.logits, data.labels, ignore_index=ignore_index)
        else:  # soft targets ignore no sample; -1 is no class
            accuracy = losses.accuracy(data.logits, data.targets.argmax(axis=1), ignore_index=-1)
    mean_loss = result.total / result.divisor if result.divisor > 0 else float("nan")
    perplexity = None
    if data.labels is not None and result.divisor > 0:
        perplexity = float(np.exp(mean_loss)) if mean_loss < 709 else float("inf")
    shown = min(show, len(data.lines))
    weight_array = (np.ones(data.logits.shape[1]) if weight is None
                    else np.asarray(weight, dtype=np.float64))
    coefficients = losses.coefficients(  # for the shown samples only: N may be large
        np.asarray(target[:shown]), data.logits.shape[1], weight_array, label_smoothing,
        result.ignored[:shown])
    worked = tuple(_worked(data, result, coefficients, i) for i in range(shown))
    return Evaluation(data=data, result=result,
                      weight=None if weight is None else tuple(float(w) for w in weight),
                      ignore_index=ignore_index, label_smoothing=label_smoothing, dtype=dtype,
                      accuracy=accuracy, mean_loss=float(mean_loss), perplexity=perplexity,
                      worked=worked)


def _worked(data: EvalInput, result: losses.CrossEntropyResult, a: np.ndarray,
            i: int) -> WorkedSample:
    """Returns sample i's arithmetic: z - max z, exp, sum, softmax, loss and gradient, in the
    dtype of the gradient, as the kernel computes them."""
    dtype = result.grad.dtype
    z = data.logits[i].astype(dtype)
    shifted = z - z.max()
    exps = np.exp(shifted)
    exp_sum = float(exps.sum())
    weight_sum = float(a[i].sum())
    divisor = result.divisor if result.reduction == "mean" else 1.0
    y = a[i] / weight_sum if weight_sum > 0 else np.zeros_like(a[i])
    p = exps / dtype.type(exp_sum)
    p_minus_y = p - y
    label = None if data.labels is None or result.ignored[i] else int(data.labels[i])
    rest = None if label is None else float(np.delete(exps, label).sum()) / exp_sum
    if label is not None and y[label] == 1:
        # p_y - 1 = -rest, as the kernel has it: p_y of a confident sample rounds to 1, and
        # p - y showed 0 beside a gradient of -4e-21
        p_minus_y[label] = -rest
    return WorkedSample(
        sample=i, line=None if data.source in data.rows_in else data.lines[i], z=z,
        shifted=shifted, exps=exps, exp_sum=exp_sum,
        p=p, label=None if data.labels is None else int(data.labels[i]), y=y, p_minus_y=p_minus_y,
        # log-softmax of this row alone: result.log_probs would build the whole (N, k) array
        neg_log_p=None if label is None else float(-losses.log_softmax(z[None, :])[0, label]),
        rest=rest,
        loss=float(result.per_sample[i]), weight_sum=weight_sum, scale=weight_sum / divisor,
        grad=np.asarray(result.grad[i], dtype=np.float64), ignored=bool(result.ignored[i]),
    )


def locate(error: InputError, data: EvalInput) -> InputError:
    """Places a core error (sample i, 'class c') at its line (or row) and column in the inputs."""
    if error.sample is None or error.source is not None:
        return error
    i = error.sample

    def at(source: str, lines, column: str | None) -> InputError:
        place = {"row" if source in data.rows_in else "line": lines[i]}
        return error.located(source=source, column=column, **place)

    c = int(error.column.split()[1]) if (error.column or "").startswith("class ") else None
    if error.in_logits:  # a logit's, or a whole row of logits' (no column then)
        return at(data.source, data.lines, None if c is None else repr(data.class_names[c]))
    if c is not None:  # a soft target's probability
        return at(data.target_source, data.target_lines,
                  repr((data.target_names or data.class_names)[c]))
    return at(data.target_source, data.target_lines, data.target_column)


# --- writing ----------------------------------------------------------------------------------

def check_output_path(path: str, inputs=()) -> None:
    """Raises InputError when path cannot take an output file or would overwrite an input."""
    if path == STDIN:  # stdin for an input; as an output, a file named '-', hard to remove
        raise InputError("is stdin for an input; an output is written to a file: give it a "
                         "name", source=path)
    if os.path.isdir(path):
        raise InputError("is a directory; give a file name for the output", source=path)
    if os.path.exists(path) and not os.path.isfile(path):  # renaming over /dev/null replaces it
        raise InputError("is a device, pipe or socket, not a file; an output is written to a "
                         "temporary file then renamed, so give a file name", source=path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InputError(f"the directory {parent} does not exist", source=path)
    for source in inputs:
        if source in (None, STDIN):
            continue
        if os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source):
            raise InputError("is an input file; refusing to overwrite it", source=path)


def write_atomic(path: str, content: bytes, inputs=()) -> None:
    """Writes content to path all at once (see atomic_writer)."""
    with atomic_writer(path, inputs) as file:
        file.buffer.write(content)


@contextlib.contextmanager
def atomic_writer(path: str, inputs=()) -> Iterator[io.TextIOBase]:
    """Yields a text file that appears at path, all at once, only when the block succeeds.

    The text goes to a temporary file beside path, renamed over it at the end; a failure or
    Ctrl-C leaves neither a partial file nor the temporary one behind. A symbolic link is
    followed: the file it points to is replaced, the link stays.
    """
    check_output_path(path, inputs)
    target = os.path.realpath(path)
    directory = os.path.dirname(target)
    temporary = None
    try:
        # inside the try: a Ctrl-C just after mkstemp must still remove its file
        descriptor, temporary = tempfile.mkstemp(prefix=".xent-", suffix=".tmp", dir=directory)
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="",
                       buffering=1 << 20) as file:
            yield file
        os.chmod(temporary, _file_mode(target))
        os.replace(temporary, target)
    except BaseException as error:
        if temporary is not None:
            with contextlib.suppress(FileNotFoundError):  # a Ctrl-C after the rename
                os.unlink(temporary)
        if isinstance(error, OSError):  # an unwritable or read-only directory, a full disk
            raise InputError(f"cannot be written: {error.strerror or error}", source=path) from None
        raise


def _file_mode(path: str) -> int:
    """Returns the mode a replaced file keeps, or the umask's default for a new one."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
