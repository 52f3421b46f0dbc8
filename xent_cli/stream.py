"""Evaluating cross-entropy over a file in chunks, with bounded memory and exact reductions.

Each loss is a small kernel that turns one chunk into per-sample results, sums and counts:
softmax cross-entropy (``losses``) and binary cross-entropy per class (``bce``); the chunks
combine the same way for both.

A source yields chunks of samples (an EvalInput each, with the file lines of its samples). Small
CSV files go through the strict reader of ``data`` (stdin is read from a copy in a temporary
file, as a file of its size is); a large CSV goes through a fast
block reader (Polars on byte blocks cut at line ends) that checks every block vectorised and
reads a block with anything unusual again with the strict reader, that block alone, whose
message names the exact line and column (a block it cannot read alone, a quote or a blank line
in it, hands it the whole file). ``.npy`` and ``np.savez``'s ``.npz`` (memory-mapped, converted to float64 a chunk
at a time, the pages of chunks done let go), ``np.savez_compressed``'s (inflated a chunk at a
time) and ``.parquet`` (read in slices of rows) are
chosen by extension, and so are labels or targets in ``.npy``, ``.npz`` or ``.parquet`` beside
any logits: labels are read whole (8 bytes a sample), targets (as large as the logits) a slice
at a time beside them. The array readers, too, hand anything unusual to a whole reader
(``read_input``), whose message or result stands.

Per-sample losses, probabilities and gradient rows are row-wise, so chunks do not change them.
The reduced loss adds the per-sample (binary: per-element) losses with ``math.fsum``, each chunk's
sum carried with its rounding error, so the total does not depend on the chunk size; accuracy,
exact match and Hamming loss count integers.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses
import functools
import io
import math
import os
import tempfile
from dataclasses import dataclass
from typing import Callable, Collection, Iterable, Iterator, Sequence

import numpy as np

from xent_cli import bce, data, losses
from xent_cli.errors import InputError

# CSV files at least this large use the fast block reader; tests set it to 0 to force that path.
FAST_CSV_BYTES = int(os.environ.get("XENT_FAST_CSV_BYTES", 4 << 20))
# The fast reader parses this many bytes at a time (about 0.8M numbers): big enough that the
# parser's per-call cost vanishes, small enough that memory stays bounded.
BLOCK_BYTES = 8 << 20
# Blocks the fast reader parses at once, each on a core.
PARSERS = 2
# Rows of 10 classes handed to the --output writer at a time; fewer of more classes, as many
# numbers (a row has 2k + 5), so that a piece stays about 1.6 MB whatever k.
ROWS_OUT = 1 << 13
# Samples per chunk for sources already in memory (strict CSV, npz, Parquet) and memory maps,
# fewer where a chunk would hold more than CHUNK_LOGITS logits (16 MB of float64): 65,536 rows
# of a language model's 50,257 classes are 26 GB (10,000 rows of them in float16, a 1 GB .npy,
# had taken 5 GB of RSS).
CHUNK_ROWS = 1 << 16
CHUNK_LOGITS = 1 << 21
# Rows of a Parquet table read at a time, fewer of many classes (_chunk_rows), as Polars'
# streaming engine decodes them in its threads: each row group is decoded once, where a slice
# of rows read on its own decoded the pages it spans anew. 8.5M x 10 took 1.58-1.76 s and 321-
# 334 MB in the benchmark (slices of 131,072 rows: 2.08-2.51 s and 184-197 MB; 131,072 rows
# streamed: about 0.1 s less, 285-300 MB by hand); 100,000 x 1000 float32 in one row group 2.3 s
# and 0.9 GB (slices: 4.9 s and 1.7 GB, and 12 s in slices of 2,097 rows).
PARQUET_ROWS = 1 << 16

Progress = Callable[[int, int, int], None]  # (bytes or rows done, of total; samples done)


class _Ignored(Exception):
    """A sample counts for nothing: the row count was not the 'mean' divisor after all."""


class _Unusual(Exception):
    """The fast reader met something only the strict reader can judge (or explain)."""


@dataclass(frozen=True)
class Chunk:
    """Consecutive samples: their data with file lines, where they start, and how far the read is."""

    data: data.EvalInput
    start: int  # index of the first sample in the whole input
    done: int  # progress units (bytes or rows) read so far


@dataclass(frozen=True)
class Source:
    """An input opened for streaming: what it holds and a way to read it, again if needed."""

    name: str
    class_names: tuple[str, ...]
    has_labels: bool
    target_source: str
    size: int  # progress units in total
    unit: str  # 'bytes' or 'rows'
    chunks: Callable[[], Iterator[Chunk]]
    # what each chunk's 'mean' divisor needs, chunk by chunk as chunks() cuts them, read cheaply:
    # its labels (n,), or its number of samples n for soft and binary targets
    targets: Callable[[], Iterator[np.ndarray | int]]
    # each chunk's number of samples, where counting them is cheaper than reading the labels
    rows: Callable[[], Iterator[int]] | None = None


@dataclass(frozen=True)
class RowsOut:
    """One chunk's per-sample results, as the --output file lists them."""

    start: int
    lines: tuple[int, ...]
    labels: np.ndarray | None  # None for soft or binary targets
    predictions: np.ndarray | None  # each sample's argmax; None for binary cross-entropy
    per_sample: np.ndarray
    probs: np.ndarray | None  # None where the file does not list them
    grad: np.ndarray | None  # of the reported loss (over the whole divisor for 'mean'), or None


@dataclass(frozen=True)
class Summary:
    """The loss of a whole input, combined from its chunks (softmax or binary cross-entropy)."""

    source: str
    target_source: str
    class_names: tuple[str, ...]
    has_labels: bool
    n: int
    reduction: str
    loss: float | None
    total: float
    divisor: float
    mean_loss: float
    accuracy: float | None
    perplexity: float | None
    ignored: int
    weight: tuple[float, ...] | None
    ignore_index: int
    label_smoothing: float
    dtype: str
    worked: tuple[data.WorkedSample, ...]
    per_sample: np.ndarray | None  # kept for reduction 'none' only, where it is the loss
    criterion: str = "ce"  # the loss: 'ce' softmax cross-entropy, 'bce' binary cross-entropy
    pos_weight: tuple[float, ...] | None = None  # binary only
    exact_match: float | None = None  # binary: share of samples right in every class
    hamming_loss: float | None = None  # binary: share of (sample, class) elements wrong
    elements: np.ndarray | None = None  # binary, reduction 'none': the (N, k) losses PyTorch returns
    notes: tuple[str, ...] = ()  # what looks wrong in a valid input (probabilities as logits)

    @property
    def k(self) -> int:
        return len(self.class_names)


# --- sources ----------------------------------------------------------------------------------

@contextlib.contextmanager
def stdin_copied(path: str, beside: Collection[str | None] = (),
                 progress: Callable[[], contextlib.AbstractContextManager] | None = None
                 ) -> Iterator[str]:
    """Yields the file to read path from: path itself, or for stdin ('-') a temporary copy.

    Through a copy, a large stream takes the fast reader in bounded memory and can go back to
    the strict reader when a block is unusual, as a file does. The copy's errors name '-' (as
    do sources opened with name='-'); it is deleted on the way out. Stdin is left alone when
    beside (the labels or targets) reads it too: the strict reader says it can be read once.
    progress, when given, makes a context for the copy alone, which yields None or a callback
    that receives the number of bytes copied so far.
    """
    if path != data.STDIN or data.STDIN in beside:
        yield path
        return
    try:
        scratch = tempfile.TemporaryDirectory(prefix="xent-")
    except OSError as error:  # TMPDIR (or each place tempfile tries) is missing or read-only
        raise _uncopied(error, error.filename and os.path.dirname(error.filename)) from None
    with scratch as directory:
        copy = os.path.join(directory, "stdin.csv")
        try:
            shown = progress() if progress is not None else contextlib.nullcontext()
            with open(copy, "wb") as file, shown as update:
                stdin, copied = data.stdin_bytes(), 0
                while piece := stdin.read(1 << 20):
                    file.write(piece)
                    copied += len(piece)
                    if update is not None:
                        update(copied)
        except OSError as error:
            raise _uncopied(error, directory) from None
        try:
            yield copy
        except InputError as error:
            # a message may name the copy too: "y.csv has 4 labels but COPY has only 2 rows"
            if error.source != copy and copy not in error.message:
                raise
            raise error.replace(message=error.message.replace(copy, data.STDIN),
                                source=data.STDIN if error.source == copy else error.source
                                ) from None


def _uncopied(error: OSError, directory: str | None, source: str = data.STDIN) -> InputError:
    """Returns the error for stdin (or source) that cannot be copied to a temporary file in
    directory."""
    where = f" in {directory}" if directory else ""
    return InputError(f"cannot be copied to a temporary file{where}: {error.strerror or error}; "
                      f"set TMPDIR to a directory with room for it", source=source)


def _named(source: Source, path: str, name: str | None) -> Source:
    """Returns source named name (where given) in results, as its targets are when in it."""
    if name is None or name == path:
        return source
    target_source = name if source.target_source == path else source.target_source
    return dataclasses.replace(source, name=name, target_source=target_source)


def open_source(path: str, *, label_col: str = "label", labels_path: str | None = None,
                targets_path: str | None = None, delimiter: str | None = None,
                chunk_rows: int | None = None, min_classes: int = 2,
                name: str | None = None) -> Source:
    """Opens logits (CSV, .npy, .npz, .parquet by extension) with their targets for streaming.

    min_classes is 2 for softmax cross-entropy, 1 for binary cross-entropy. name, when given,
    is what results call the input (stdin's '-' for its copy).
    """
    return _named(_open_source(path, label_col=label_col, labels_path=labels_path,
                               targets_path=targets_path, delimiter=delimiter,
                               chunk_rows=chunk_rows, min_classes=min_classes), path, name)


def _open_source(path: str, *, label_col: str, labels_path: str | None,
                 targets_path: str | None, delimiter: str | None, chunk_rows: int | None,
                 min_classes: int) -> Source:
    if labels_path is not None and targets_path is not None:
        raise InputError("give either labels or soft targets, not both")
    side = labels_path or targets_path
    text = not _has_arrays(path, labels_path, targets_path)
    # a CSV of logits beside labels or targets in an array or a table, or beside a CSV of labels
    side_whole = _suffix(path) not in ARRAYS and (_suffix(side) in ARRAYS
                                                  or text and labels_path is not None)
    if data.STDIN != side and _suffix(path) == ".parquet":
        fast = _fast_parquet(path, label_col, labels_path, targets_path, delimiter, min_classes)
        if fast is not None:
            return fast
    if data.STDIN != side and (_suffix(path) == ".npz" or _suffix(path) == ".npy" and side):
        fast = _fast_mapped(path, label_col, labels_path, targets_path, delimiter, min_classes,
                            chunk_rows)
        if fast is not None:
            return fast
    if (side_whole or text and labels_path is None) and data.STDIN not in (path, side):
        size = os.path.getsize(path) if os.path.isfile(path) else -1  # else the strict reader says why
        if size >= max(FAST_CSV_BYTES, 1):
            if side_whole:
                fast = _fast_csv_array(path, side, "labels" if labels_path else "targets",
                                       label_col, delimiter, size, min_classes)
            elif targets_path is None:
                fast = _fast_csv(path, label_col, delimiter, size)
            else:
                fast = _fast_csv_targets(path, targets_path, label_col, delimiter, size,
                                         min_classes)
            if fast is not None:
                return fast
    loaded = read_input(path, label_col=label_col, labels_path=labels_path,
                        targets_path=targets_path, delimiter=delimiter, min_classes=min_classes)
    return _in_memory(loaded, chunk_rows)


def read_input(path: str, *, label_col: str = "label", labels_path: str | None = None,
               targets_path: str | None = None, delimiter: str | None = None,
               min_classes: int = 2) -> data.EvalInput:
    """Reads logits and their targets whole: CSV (the strict reader), or arrays by extension."""
    if _has_arrays(path, labels_path, targets_path):
        return _read_array_input(path, _suffix(path), label_col, labels_path, targets_path,
                                 delimiter, min_classes)
    return data.read_eval_input(path, label_col=label_col, labels_path=labels_path,
                                targets_path=targets_path, delimiter=delimiter,
                                min_classes=min_classes)


# The array files eval reads, by extension; anything else is CSV text.
ARRAYS = (".npy", ".npz", ".parquet")


def _suffix(path: str | None) -> str:
    """Returns a file's extension in lower case ('' for stdin or no file)."""
    return "" if path in (None, data.STDIN) else os.path.splitext(path.lower())[1]


def _has_arrays(path: str, labels_path: str | None, targets_path: str | None) -> bool:
    """Returns whether the logits are an array file, or their labels or targets are."""
    return _suffix(path) in ARRAYS or _suffix(labels_path or targets_path) in ARRAYS


def strict_source(path: str, *, label_col: str = "label", labels_path: str | None = None,
                  targets_path: str | None = None, delimiter: str | None = None,
                  chunk_rows: int | None = None, min_classes: int = 2,
                  name: str | None = None) -> Source:
    """Opens a CSV (with its labels or targets, if any) with the strict reader, whatever its
    size; name as for open_source."""
    loaded = read_input(path, label_col=label_col, labels_path=labels_path,
                        targets_path=targets_path, delimiter=delimiter, min_classes=min_classes)
    return _named(_in_memory(loaded, chunk_rows), path, name)


def _chunk_rows(k: int, rows: int | None = None) -> int:
    """Returns the samples of k classes a chunk holds: rows (CHUNK_ROWS when None, read now:
    tests set it), fewer where they would hold more than CHUNK_LOGITS logits, at least one."""
    return max(1, min(rows or CHUNK_ROWS, CHUNK_LOGITS // max(k, 1)))


def _in_memory(loaded: data.EvalInput, chunk_rows: int | None) -> Source:
    """Returns a source that slices data already read into chunks of chunk_rows samples, as
    _chunk_rows counts them."""
    n, k = loaded.logits.shape
    chunk_rows = _chunk_rows(k, chunk_rows)

    def chunks() -> Iterator[Chunk]:
        for start in range(0, n, chunk_rows):
            stop = min(start + chunk_rows, n)
            yield Chunk(data=_slice(loaded, start, stop), start=start, done=stop)

    def targets() -> Iterator[np.ndarray | int]:
        for start in range(0, n, chunk_rows):
            stop = min(start + chunk_rows, n)
            yield stop - start if loaded.labels is None else loaded.labels[start:stop]

    return Source(name=loaded.source, class_names=loaded.class_names,
                  has_labels=loaded.labels is not None, target_source=loaded.target_source,
                  size=n, unit="rows", chunks=chunks, targets=targets)


def _slice(loaded: data.EvalInput, start: int, stop: int) -> data.EvalInput:
    """Returns samples start..stop of an input: views, or float64 copies of the rows of a
    memory-mapped file in another dtype or off the alignment of its dtype (an .npz member's
    data starts anywhere, and NumPy works unaligned floats at half speed)."""
    return dataclasses.replace(
        loaded, logits=np.require(loaded.logits[start:stop], np.float64, "A"),
        labels=None if loaded.labels is None else loaded.labels[start:stop],
        targets=(None if loaded.targets is None
                 else np.require(loaded.targets[start:stop], np.float64, "A")),
        lines=loaded.lines[start:stop], target_lines=loaded.target_lines[start:stop])


def _fast_csv(path: str, label_col: str, delimiter: str | None, size: int) -> Source | None:
    """Returns a fast block-reading source for a large CSV, or None when Polars is missing."""
    try:
        import polars  # noqa: F401  (only large files pay its import)
    except ImportError:
        return None
    delimiter = data.delimiter_of(path, delimiter)
    header, offset = _plain_header(path, delimiter)
    if len(header) >= 2:  # said at once: the strict reader reads every row first (97 MB: 6.6 s)
        data.check_label_column(header, label_col, path, 1)
    if label_col not in header or len(header) < 3:
        return None  # the strict reader explains
    label = header.index(label_col)
    logit_columns = [c for c in range(len(header)) if c != label]
    class_names = tuple(header[c] for c in logit_columns)

    # Polars hands out columns: the logits stay column-major (the kernel works class-major for
    # small k anyway), a view when the label is the first or last column.
    together = logit_columns == list(range(logit_columns[0], logit_columns[-1] + 1))
    logit_slice = slice(logit_columns[0], logit_columns[-1] + 1) if together else logit_columns

    def chunks() -> Iterator[Chunk]:
        start, line, at = 0, 2, offset  # the header is line 1; at: the block's first byte
        parse = functools.partial(_parsed_or_none, columns=len(header), delimiter=delimiter)
        for (table, plain), done in _prefetched(_parsed_blocks(path, offset, parse)):
            labels = fault = None
            if plain:
                logits, raw_labels = table[:, logit_slice], table[:, label]
                if (np.abs(raw_labels) < 2.0**53).all():  # false for nan and -inf
                    labels = raw_labels.astype(np.int64)
                    if not (labels == raw_labels).all():
                        labels = None
            if labels is None:  # nan, inf, an empty cell, -1e400, a label 2.5
                logits, labels, fault = _strict_block(path, at, done, header, delimiter, line,
                                                      label_col)
            n, at = logits.shape[0], done
            lines = range(line, line + n)  # indexes and slices like the strict reader's tuple
            chunk = data.EvalInput(
                logits=logits, labels=labels, targets=None, class_names=class_names,
                source=path, lines=lines, target_source=path, target_column=repr(label_col),
                target_lines=lines)
            yield Chunk(data=chunk, start=start, done=done)
            if fault is not None:
                raise fault  # the rows above it are worked
            start, line = start + n, line + n
        if start == 0:
            raise _Unusual  # no data rows

    def labels_of(block: bytes) -> np.ndarray:
        # read from the line ends when the label is the last column and plainly written
        labels = _last_cells(block, delimiter) if label == len(header) - 1 else None
        return (labels if labels is not None
                else _whole(_parse_column(block, len(header), delimiter, label)))

    def targets() -> Iterator[np.ndarray]:
        # the label column of the same blocks
        for labels, _ in _prefetched(_parsed_blocks(path, offset, labels_of)):
            yield labels

    return Source(name=path, class_names=class_names, has_labels=True, target_source=path,
                  size=size, unit="bytes", chunks=chunks, targets=targets,
                  rows=lambda: _row_total(path, offset, len(header), delimiter))


def _fast_csv_targets(path: str, targets_path: str, label_col: str, delimiter: str | None,
                      size: int, min_classes: int = 2) -> Source | None:
    """Returns a fast source for a large CSV of logits and its CSV of per-class targets.

    Both files are read in blocks at once; each block of logits takes as many target rows.
    Unequal lengths are told in the strict reader's words, the rows of the longer file counted
    to its end; anything else the strict reader would refuse or skip (a blank line, an empty or
    negative cell, a bad cell below the last target row) makes the fast reader hand over, and
    the strict reader says where.
    """
    try:
        import polars  # noqa: F401  (only large files pay its import)
    except ImportError:
        return None
    delimiter, target_delimiter = (data.delimiter_of(path, delimiter),
                                   data.delimiter_of(targets_path, delimiter))
    if not os.path.isfile(targets_path):
        return None
    header, offset = _plain_header(path, delimiter)
    target_header, target_offset = _plain_header(targets_path, target_delimiter)
    k = len(header)
    reordered = target_header != header and sorted(target_header) == sorted(header)
    if k < min_classes or len(target_header) != k or label_col in header or reordered:
        return None  # the strict reader explains

    def chunks() -> Iterator[Chunk]:
        start, line = 0, 2  # the header is line 1 in both files
        blocks = _prefetched(table for table, _ in _parsed_blocks(
            targets_path, target_offset,
            functools.partial(_parse_block, columns=k, delimiter=target_delimiter)))
        with contextlib.closing(blocks):
            rows = _Rows(blocks)
            logit_blocks = _logit_blocks(path, offset, header, delimiter, label_col)
            for logits, fault, done in logit_blocks:
                n = logits.shape[0]
                targets = rows.take_some(n)
                past = n - len(targets)  # the rows beyond the last target row
                if past:  # the rows above the first without one are worked
                    n, logits = len(targets), logits[:len(targets)]
                    targets = targets if n else np.empty((0, k))
                if not (_finite(targets) and (targets >= 0).all()):
                    # blank lines, empty cells, inf, a negative: the strict reader names the
                    # cell, once the rows above it are worked
                    n = _rows_before(~(np.isfinite(targets) & (targets >= 0)))
                    logits, targets, fault = logits[:n], targets[:n], _Unusual()
                lines = range(line, line + n)
                chunk = data.EvalInput(
                    logits=logits, labels=None, targets=targets, class_names=header, source=path,
                    lines=lines, target_source=targets_path, target_column=None,
                    target_lines=lines, target_names=target_header)
                yield Chunk(data=chunk, start=start, done=done)
                if past and fault is None:  # fewer target rows: said once the logits are counted
                    raise miscounted(start + n + past + _rows_left(logit_blocks), start + n,
                                     line + n)
                if fault is not None:
                    raise fault if not past else _Unusual()  # the rows above it are worked
                start, line = start + n, line + n
            if start == 0:
                raise _Unusual  # no data rows
            left = rows.left()  # a surplus block the strict reader must judge: _Unusual
            if left:
                raise miscounted(start, start + left, None)

    def miscounted(n: int, m: int, unpartnered: int | None) -> InputError:
        """Returns the strict reader's error for n rows of logits beside m target rows, the
        first logits without a partner on line unpartnered, the first surplus target's on line
        n + 2 (the header is line 1)."""
        return data.unequal_rows(n, m, path, unpartnered, targets_path, n + 2, "target rows",
                                 data.header_read_as_targets(target_header, m, n))

    return Source(name=path, class_names=header, has_labels=False, target_source=targets_path,
                  size=size, unit="bytes", chunks=chunks,
                  targets=lambda: _block_rows(path, offset, k, delimiter))


def _fast_csv_array(path: str, side_path: str, what: str, label_col: str,
                    delimiter: str | None, size: int, min_classes: int = 2) -> Source | None:
    """Returns a fast source for a large CSV of logits whose labels or soft targets (what) are
    in a file of their own: labels read whole (an array, a Parquet table's column, or a CSV
    read by Polars), targets from an .npy (memory-mapped), .npz or Parquet table a block at a
    time; or None when Polars is missing or the strict reader must judge.

    Each block of logits takes as many rows of labels or targets. Labels of another count
    than the rows are told in the strict reader's words, the rows counted to the end (a bad
    cell below the last label is the strict reader's); anything else the strict reader would
    refuse (more or fewer target rows, a negative or non-finite target) makes the fast reader
    hand over, and the strict reader says where.
    """
    try:
        import polars  # noqa: F401  (only large files pay its import)
    except ImportError:
        return None
    delimiter = data.delimiter_of(path, delimiter)
    header, offset = _plain_header(path, delimiter)
    k = len(header)
    if k < min_classes or label_col in header:
        return None  # the strict reader explains
    labels = targets = None
    if what == "labels":
        labels = _labels_beside(side_path, delimiter, label_col)
        if labels is None:
            return None  # the strict reader explains
        values, side_column, side_lines = labels
    else:
        targets = _targets_beside(side_path, delimiter, k)
        if targets is None or targets.first_line is not None:
            return None  # the strict reader explains (or a CSV of targets: _fast_csv_targets)
        side_column = side_lines = None

    def chunks() -> Iterator[Chunk]:
        start, line = 0, 2  # the header is line 1
        side = None if targets is None else _Rows(targets.blocks())
        with contextlib.closing(side.blocks) if side is not None else contextlib.nullcontext():
            blocks = _logit_blocks(path, offset, header, delimiter, label_col)
            for logits, fault, done in blocks:
                n, past = logits.shape[0], 0  # past: the rows beyond the last label
                if targets is None:
                    side_rows = values[start:start + n]
                    if len(side_rows) < n:  # the rows above the first without one are worked
                        n, past = len(side_rows), n - len(side_rows)
                        logits = logits[:n]
                else:
                    side_rows = side.take(n)  # fewer targets than logits: _Unusual
                if targets is not None and not (np.isfinite(side_rows) & (side_rows >= 0)).all():
                    # the whole reader names the cell, once the rows above it are worked
                    n = _rows_before(~(np.isfinite(side_rows) & (side_rows >= 0)))
                    logits, side_rows, fault = logits[:n], side_rows[:n], _Unusual()
                lines = range(line, line + n)
                chunk = data.EvalInput(
                    logits=logits, labels=side_rows if targets is None else None,
                    targets=side_rows if targets is not None else None, class_names=header,
                    source=path, lines=lines, target_source=side_path, target_column=side_column,
                    target_lines=(range(start, start + n) if side_lines is None
                                  else side_lines[start:start + n]),
                    target_names=None if targets is None else targets.names,
                    rows_in=frozenset([side_path] if side_lines is None else []))
                yield Chunk(data=chunk, start=start, done=done)
                if past:  # fewer labels than logits: said once the rows left are counted
                    if fault is not None:
                        raise _Unusual  # a bad cell below: the strict reader names it first
                    raise miscounted(start + n + past + _rows_left(blocks), line + n)
                if fault is not None:
                    raise fault  # the rows above it are worked
                start, line = start + n, line + n
            if start == 0:
                raise _Unusual  # no data rows
            if targets is None and start != len(values):
                raise miscounted(start, None)  # more labels than logits
            if targets is not None and not side.exhausted():
                raise _Unusual  # more target rows than logits

    def miscounted(rows: int, unpartnered: int | None) -> InputError:
        """Returns the strict reader's error for len(values) labels beside rows of logits, the
        first without a label on line unpartnered."""
        if side_lines is None:  # an array's labels, which have rows
            return _miscounted(len(values), (rows, k), True, side_path, None, False)
        more = data.header_read_as_label(values, side_column, rows)
        return data.unequal_rows(rows, len(values), path, unpartnered, side_path,
                                 side_lines[rows] if rows < len(values) else None, "labels", more)

    def sizes() -> Iterator[np.ndarray | int]:
        # each chunk's labels, or its number of samples, as chunks() cuts them
        start = 0
        for n in _block_rows(path, offset, k, delimiter):
            yield values[start:start + n] if targets is None else n
            start += n

    return Source(name=path, class_names=header, has_labels=what == "labels",
                  target_source=side_path, size=size, unit="bytes", chunks=chunks,
                  targets=sizes)


def _csv_labels(path: str, delimiter: str | None) -> tuple[np.ndarray, str | None, range] | None:
    """Returns what data._read_labels does, read whole by Polars (8 bytes a label, where the
    strict reader's cells take a hundred): a one-column CSV's labels, its header's name (None
    when the first line is a label) and each label's line; None where the strict reader must
    judge: a blank line, quotes, more columns, a label that is no whole number, an unreadable
    file."""
    try:
        with open(path, "rb") as file:
            first = file.readline()
            rest = file.read()
    except OSError:
        return None
    try:
        cell = first.decode("utf-8").strip("\r\n").strip()
    except UnicodeDecodeError:
        return None
    delimiter = data.delimiter_of(path, delimiter)
    if not cell or '"' in cell or delimiter in cell or cell.startswith("\ufeff"):
        return None
    try:
        data.parse_number(cell)
        name, block, first_line = None, first + rest, 1  # no header: the first line is a label
    except ValueError:
        name, block, first_line = cell, rest, 2
    if not block or not _plain_lines(block):
        return None
    try:
        raw = _parse_column(block if block.endswith(b"\n") else block + b"\n", 1, delimiter, 0)
    except _Unusual:
        return None
    if not _whole_numbers(raw):
        return None
    return raw.astype(np.int64), name, range(first_line, first_line + len(raw))


@dataclass(frozen=True)
class _Slices:
    """Logits an array fast path reads a slice at a time: n rows of class_names, step rows per
    slice but the last; read() yields the slices in order, each as (float64 logits, the
    table's own raw labels or None), and raises _Unusual at a slice only the whole reader can
    judge."""

    n: int
    class_names: tuple[str, ...]
    step: int
    read: Callable[[], Iterator[tuple[np.ndarray, np.ndarray | None]]]
    # the whole reader hands these logits to the kernel unchecked (a memory map): beside labels,
    # which both readers check first, a logit that is no finite number is the kernel's to judge
    kernel_judges: bool = False


def _fast_parquet(path: str, label_col: str, labels_path: str | None = None,
                  targets_path: str | None = None, delimiter: str | None = None,
                  min_classes: int = 2) -> Source | None:
    """Returns a source that reads a Parquet table of logits in slices of PARQUET_ROWS rows
    (fewer of many classes), with its label column or with labels or targets from a file of
    their own (_fast_arrays),
    or None where the whole reader must judge: no label column and no such file (or both), a
    column that is not a number, too few classes, no rows, an unreadable file. A slice holding
    anything unusual (a null, nan or +inf, a label that is no whole number) hands the file to
    the whole reader once the rows above that cell are worked, so its message or result is the
    whole reader's but for an error of those rows."""
    import polars as pl

    try:
        schema = _scan_parquet(path).collect_schema()
        n = _scan_parquet(path).select(pl.len()).collect().item()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # noqa: BLE001 - as _read_parquet: the whole reader says why
        return None
    index = _pandas_index(path)
    own = labels_path is None and targets_path is None  # the labels are a column of the table
    logit_names = tuple(name for name in schema if name != label_col and name not in index)
    if (len(logit_names) < min_classes or n == 0
            or not all(dtype.is_numeric() for dtype in schema.values())):
        return None
    data.check_pandas_unnamed(logit_names, path)  # as the whole reader, before the rows
    if own and label_col not in schema:  # said at once: the whole reader reads every row first
        raise InputError(f"has no column {data.no_label_column(label_col, logit_names)}",
                         source=path)
    if label_col in schema and not own:
        return None  # the whole reader explains

    step = _chunk_rows(len(logit_names), PARQUET_ROWS)

    def read() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for frame in _parquet_slices(path, [*logit_names, label_col] if own else logit_names,
                                     step):
            # float64, as the whole reader reads them
            logits = frame.select(logit_names).to_numpy().astype(np.float64, copy=False)
            yield logits, frame[label_col].to_numpy() if own else None

    def labels() -> Iterator[np.ndarray]:
        for frame in _parquet_slices(path, [label_col], step):
            yield _whole(frame[label_col].to_numpy().astype(np.float64))

    slices = _Slices(n=n, class_names=logit_names, step=step, read=read)
    return _fast_arrays(path, slices, label_col, labels if own else None, labels_path,
                        targets_path, delimiter)


def _scan_parquet(path: str):
    """Returns Polars' lazy scan of the Parquet file at path, its name taken as it is: as a
    glob, 'b*.parquet' had read every file it matched, and 'c[1].parquet' none."""
    import polars as pl

    return pl.scan_parquet(path, glob=False)


def _parquet_slices(path: str, columns, rows: int):
    """Yields some columns of a Parquet table rows at a time (the last slice fewer), as
    Polars' streaming engine decodes them in its threads; raises _Unusual where Polars cannot
    read them (a corrupt page: the whole reader says so)."""
    import polars as pl

    def polars_errors(step: Callable):
        try:
            return step()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # noqa: BLE001 - Polars' errors, or a panic on corrupt bytes
            raise _Unusual from None

    batches = polars_errors(lambda: iter(_scan_parquet(path).select(columns)
                                         .collect_batches(chunk_size=rows)))
    pending = None  # rows of a batch not yet handed out: Polars gives chunk_size rows so far
    while (batch := polars_errors(lambda: next(batches, None))) is not None:
        if pending is not None:
            batch, pending = pl.concat([pending, batch], rechunk=False), None
        at = 0
        while batch.height - at >= rows:
            yield batch.slice(at, rows)
            at += rows
        if at < batch.height:
            pending = batch.slice(at)
    if pending is not None:
        yield pending


def _fast_mapped(path: str, label_col: str, labels_path: str | None, targets_path: str | None,
                 delimiter: str | None, min_classes: int, step: int | None) -> Source | None:
    """Returns a source for .npy or .npz logits (mapped, or inflated as a stream when
    compressed) with labels or targets from a file of their own or, in an .npz, its array
    'labels' or 'targets', the logits and any targets read _chunk_rows(k, step) rows at a
    time, through the map or the stream (the whole reader reads a
    Parquet table or a CSV of targets whole: a CSV of 8.5M x 10 took 10.5 GB); None where the
    whole reader must judge (no logits or no targets, a shape it explains). Other arrays of
    an .npz are left unread, as the whole reader leaves them; targets it holds and given
    again are refused at once, in its words (it would inflate a compressed archive first)."""
    own = kind = None  # the labels or targets an .npz holds beside its logits, and which
    try:
        if _suffix(path) == ".npy":
            z = _load_npy(path)
        else:
            arrays = _load_npz(path, streamed=True)
            if "logits" not in arrays:
                return None  # the whole reader says what is missing
            kind = next((name for name in ("labels", "targets") if name in arrays), None)
            if kind is None and not (labels_path or targets_path):
                return None  # no targets: the whole reader says so
            own, z = arrays.get(kind), arrays["logits"]
    except InputError:
        return None
    if kind is not None and (labels_path or targets_path):
        raise _given_twice(path, f"an array {kind!r}", labels_path, targets_path)
    if kind is not None:
        labels_path, targets_path = (path, None) if kind == "labels" else (None, path)
    if z.ndim != 2 or z.dtype.kind not in "iuf" or z.shape[1] < min_classes or not len(z):
        return None

    step = _chunk_rows(z.shape[1], step)
    slices = _Slices(n=len(z), class_names=tuple(str(c) for c in range(z.shape[1])),
                     step=step, kernel_judges=True,
                     read=lambda: ((_rows(z, start, step), None)
                                   for start in range(0, len(z), step)))
    return _fast_arrays(path, slices, label_col, None, labels_path, targets_path, delimiter,
                        held=own)


# Reads of a memory map between two times _rows lets its pages go: fewer calls to madvise
# (each about 0.07 ms, k of them for a column-major array), a few more pages in the RSS.
FORGET_READS = 8


def _rows(array: np.ndarray, start: int, count: int) -> np.ndarray:
    """Returns count rows of an array from start on, as float64 (the values _slice gives).

    Rows of a memory map are read through it, and every FORGET_READS reads the pages of the
    rows read up to the read before leave the process's RSS (madvise): they stay in the page
    cache, and a row read again is read from there. Rows of the read before may still be in
    use (_Rows joins what is left of them with these), and would come back into the RSS to
    stay. Left standing, every page read counts in the RSS until the map closes, 680 MB for
    8.5M x 10 float64; reading rows with pread instead bounds it as well, a third slower.
    Rows of a compressed .npz member are inflated from its stream (_Deflated), or read from
    the map of its temporary file (Fortran order).
    """
    if isinstance(array, _Deflated) and not array.fortran:
        return np.require(array.read(start, count), np.float64, "A")
    if isinstance(array, _Deflated):
        array = array.spilled()  # a map of its own file, read as any other
    stop = min(start + count, len(array))
    reads = start // count
    if reads >= 2 and reads % FORGET_READS == 0:
        _forget(array, max(0, start - (FORGET_READS + 1) * count), start - count)
    return np.require(array[start:stop], np.float64, "A")


def _forget(array: np.ndarray, start: int, stop: int) -> None:
    """Lets the pages of rows start..stop of a memory-mapped (N, k) array leave the RSS (a
    column-major array's rows lie in k stretches of the file). Arrays in memory, and systems
    without madvise, keep them."""
    import mmap

    pages = getattr(array, "_mmap", None)  # np.memmap's map of the file
    if not isinstance(array, np.memmap) or not hasattr(pages, "madvise") or array.ndim != 2:
        return
    base = array.offset - array.offset % mmap.ALLOCATIONGRANULARITY  # where the map begins
    size, (n, k) = array.dtype.itemsize, array.shape
    if array.flags.c_contiguous:
        stretches = [(start * k * size, (stop - start) * k * size)]
    elif array.flags.f_contiguous:
        stretches = [((c * n + start) * size, (stop - start) * size) for c in range(k)]
    else:
        return
    for at, length in stretches:
        at += array.offset - base
        aligned = at - at % mmap.PAGESIZE
        pages.madvise(mmap.MADV_DONTNEED, aligned, length + at - aligned)


def _fast_arrays(path: str, slices: _Slices, label_col: str,
                 own_labels: Callable[[], Iterator[np.ndarray]] | None, labels_path: str | None,
                 targets_path: str | None, delimiter: str | None,
                 held: np.ndarray | None = None) -> Source | None:
    """Returns a source of logits read in slices with their targets: the table's own label
    column label_col (own_labels() reads its labels alone, for the divisor), labels from
    a file of their own (read whole: 8 bytes a sample; label_col names their column in a
    table of several) or soft or binary targets from a file of their own, read a slice at a
    time beside the logits; held is the array of labels or targets an .npz of logits holds
    (labels_path or targets_path is then path). None where the whole reader must judge the
    targets' file (an unreadable one, another number of rows or columns)."""
    n, k = slices.n, len(slices.class_names)
    labels = targets = None
    if labels_path is not None:
        labels = _labels_beside(labels_path, delimiter, label_col, held)
        if labels is None:
            return None
        if len(labels[0]) != n:  # said at once: the whole reader would read the logits first
            more = "" if labels[2] is None else data.header_read_as_label(labels[0], labels[1], n)
            raise _miscounted(len(labels[0]), (n, k), True, labels_path, labels[2], True, more)
    elif targets_path is not None:
        targets = _targets_beside(targets_path, delimiter, k, slices.step, held)
        if targets is None:
            return None
        if targets.n not in (None, n):
            raise _miscounted(targets.n, (n, k), False, targets_path, None, True)
    side_path = labels_path or targets_path or path
    # the files whose samples are rows: the logits', and the targets' but a CSV's, which has lines
    in_rows = (targets.first_line is None if targets is not None
               else labels is None or labels[2] is None)
    rows_in = frozenset([path, side_path] if in_rows else [path])

    def chunks() -> Iterator[Chunk]:
        side = None if targets is None else _Rows(targets.blocks())
        start = 0
        with contextlib.closing(side.blocks) if side is not None else contextlib.nullcontext(), \
                contextlib.closing(slices.read()) as read:
            for logits, raw_labels in read:
                stop = start + len(logits)
                if stop > n:
                    raise _Unusual  # the file has grown since: the whole reader reads it as it is
                rows = range(start, stop)
                # a slice with a cell the whole reader must judge: the rows above it are worked
                # first, so that a fault of theirs is named as smaller slices would name it
                bad = []
                if not (slices.kernel_judges and targets is None or _finite_or_masked(logits)):
                    bad.append(np.isnan(logits) | np.isposinf(logits))  # nan (a null), +inf
                y = t = None
                target_lines, column, names = rows, None, None
                if raw_labels is not None:
                    if raw_labels.dtype.kind == "f" and not _whole_numbers(raw_labels):
                        # nan (a null), or no whole number
                        bad.append(~((np.abs(raw_labels) < 2.0**53)
                                     & (raw_labels == np.round(raw_labels)))[:, None])
                    if raw_labels.dtype.kind == "u" and (raw_labels >= 2**63).any():
                        bad.append((raw_labels >= 2**63)[:, None])  # beyond int64
                    with np.errstate(invalid="ignore"):  # a bad label's row is cut off below
                        y, column = raw_labels.astype(np.int64), repr(label_col)
                elif labels is not None:
                    y, column, lines = labels[0][start:stop], labels[1], labels[2]
                    target_lines = rows if lines is None else lines[start:stop]
                else:
                    t = side.take(len(logits))
                    if not (np.isfinite(t) & (t >= 0)).all():
                        bad.append(~(np.isfinite(t) & (t >= 0)))  # the whole reader names it
                    names = targets.names
                    target_lines = rows if targets.first_line is None else range(
                        targets.first_line + start, targets.first_line + stop)
                if bad:
                    good = min(_rows_before(mask) for mask in bad)
                    stop, rows, target_lines = start + good, rows[:good], target_lines[:good]
                    logits, y, t = (None if a is None else a[:good] for a in (logits, y, t))
                chunk = data.EvalInput(
                    logits=logits, labels=y, targets=t, class_names=slices.class_names,
                    source=path, lines=rows, target_source=side_path, target_column=column,
                    target_lines=target_lines, target_names=names, rows_in=rows_in)
                yield Chunk(data=chunk, start=start, done=stop)
                if bad:
                    raise _Unusual  # the whole reader rules
                start = stop
            if start != n:
                raise _Unusual  # the file has fewer rows since: the whole reader reads it as it is
            if side is not None and not side.exhausted():
                raise _Unusual  # more target rows than logits: the whole reader says so

    def sizes() -> Iterator[np.ndarray | int]:
        # each slice's labels, or its number of samples, as chunks() cuts them
        if own_labels is not None:
            yield from own_labels()
            return
        for start in range(0, n, slices.step):
            if labels is not None:
                yield labels[0][start:start + slices.step]
            else:
                yield min(slices.step, n - start)

    return Source(name=path, class_names=slices.class_names, has_labels=targets is None,
                  target_source=side_path, size=n, unit="rows", chunks=chunks, targets=sizes,
                  rows=(lambda: iter([n])) if targets is None else None)


def _labels_beside(path: str, delimiter: str | None, label_col: str,
                   held: np.ndarray | None = None
                   ) -> tuple[np.ndarray, str | None, Sequence[int] | None] | None:
    """Returns labels from a file of their own (or held: the array 'labels' of the .npz path,
    beside its logits), read whole (8 bytes a label) as int64, with their column's name (repr;
    None for an array of its own or a CSV without header) and, from a CSV,
    each label's line (None: a sample's place is its row); None where the strict reader must
    judge a CSV. An array or a table is read as the whole reader reads it, and its errors (a
    label that is no whole number, a column of text) are raised at once, in its words: the
    whole reader would read all the logits first."""
    if held is not None:
        return _whole_labels(held, path, "'labels'"), "'labels'", None
    if _suffix(path) not in ARRAYS:
        read = _csv_labels(path, delimiter)
        if read is None:
            return None
        values, name, lines = read
        return values, None if name is None else repr(name), lines
    # streamed: of an .npz that holds the logits too, only its labels are inflated
    values, _, names = _read_side(path, delimiter, "labels", label_col, streamed=True)
    column = None if names is None else repr(names[0])
    return _whole_labels(values, path, column), column, None


@dataclass(frozen=True)
class _Beside:
    """Soft or binary targets in a file of their own, read a block at a time."""

    n: int | None  # rows, where known before reading (not for a CSV)
    names: tuple[str, ...] | None  # the columns of a table or a CSV; None for an array
    first_line: int | None  # a CSV's first data line; None: a sample's place is its row
    blocks: Callable[[], Iterator[np.ndarray]]  # float64 (rows, k) blocks in order


def _targets_beside(path: str, delimiter: str | None, k: int, step: int | None = None,
                    held: np.ndarray | None = None) -> _Beside | None:
    """Returns k columns of targets from a file of their own (or held: the array 'targets' of
    the .npz path, beside its logits), to be read in blocks beside the logits (an .npy or
    .npz, mapped or loaded, step rows at a time, _chunk_rows(k) unless given;
    a Parquet table and a CSV in slices of rows as their readers cut them); None where the
    whole reader must judge (an unreadable file, another number of columns, a CSV header it
    explains). A column of no numbers in a table is refused at once, as the whole reader
    refuses it."""
    suffix, step = _suffix(path), step or _chunk_rows(k)
    if suffix in (".npy", ".npz"):
        # the map itself, as _rows reads it; its errors are the whole reader's
        values = (held if held is not None else _load_npy(path) if suffix == ".npy"
                  else _read_side(path, delimiter, "targets", streamed=True)[0])
        if values.ndim != 2 or values.shape[1] != k or values.dtype.kind not in "iuf":
            return None  # the whole reader explains, or takes a binary classifier's (N,) targets
        return _Beside(n=len(values), names=None, first_line=None, blocks=lambda: (
            _rows(values, start, step) for start in range(0, len(values), step)))
    if suffix == ".parquet":
        import polars as pl

        try:
            schema = _scan_parquet(path).collect_schema()
            n = _scan_parquet(path).select(pl.len()).collect().item()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # noqa: BLE001 - the whole reader says why
            return None
        names = _side_columns(schema, path, "targets", "label")
        if len(names) != k:
            return None
        return _Beside(n=n, names=names, first_line=None, blocks=lambda: (
            frame.to_numpy().astype(np.float64, copy=False)
            for frame in _parquet_slices(path, names, step)))
    if path == data.STDIN or not os.path.isfile(path):
        return None
    delimiter = data.delimiter_of(path, delimiter)
    header, offset = _plain_header(path, delimiter)
    if len(header) != k:
        return None  # no header it reads plainly, or another number of columns
    parse = functools.partial(_parse_block, columns=k, delimiter=delimiter)
    return _Beside(n=None, names=header, first_line=2, blocks=lambda: _prefetched(
        table for table, _ in _parsed_blocks(path, offset, parse)))


def _whole_numbers(raw: np.ndarray) -> bool:
    """Returns whether parsed labels are all whole numbers that float64 holds exactly (not
    nan, 2.5 or 1e300)."""
    return bool(((np.abs(raw) < 2.0**53) & (raw == np.round(raw))).all())


def _finite(array: np.ndarray) -> bool:
    """Returns whether every number of a parsed block is finite: nan and inf survive a sum, so
    only a finite block too large to sum needs the full look."""
    with np.errstate(over="ignore", invalid="ignore"):  # that sum may overflow: no warning
        return bool(np.isfinite(array.sum()) or np.isfinite(array).all())


def _rows_before(bad: np.ndarray) -> int:
    """Returns the number of rows of an (n, k) mask above the first row holding a True; raises
    _Unusual where that is none: the rows above a bad cell are worked before it is handed over,
    so that a fault of theirs is named first, as smaller blocks would name it."""
    rows = int(bad.any(axis=1).argmax())
    if rows == 0:
        raise _Unusual
    return rows


def _finite_or_masked(array: np.ndarray) -> bool:
    """Returns whether every number of a block is finite or -inf, a masked class: a NaN or a
    +inf makes the sum NaN or +inf, so only a block whose sum overflows needs the full look."""
    with np.errstate(over="ignore", invalid="ignore"):  # that sum may overflow: no warning
        total = array.sum()
    if np.isfinite(total) or total == -np.inf:
        return True
    return not (np.isnan(array).any() or np.isposinf(array).any())


def _masked_only(block: bytes, array: np.ndarray) -> bool:
    """Returns whether the numbers Polars parsed from a block of CSV lines are finite or masked
    classes written -inf, as the strict reader reads them: not where a cell was empty, NaN, +inf,
    or -inf only because its literal is beyond float64 (-1e400, which the strict reader
    refuses). Each -inf written so has one f (-inf, -infinity), and no number has one."""
    if not _finite_or_masked(array):
        return False
    codes = np.frombuffer(block, dtype=np.uint8)  # NumPy lets go of the GIL, bytes.count not
    written = np.count_nonzero(codes == ord("f")) + np.count_nonzero(codes == ord("F"))
    return written == np.count_nonzero(array == -np.inf)


class _Rows:
    """The rows of a stream of parsed blocks, taken n at a time whatever the blocks' sizes."""

    def __init__(self, blocks: Iterator[np.ndarray]):
        self.blocks, self.pending = blocks, []

    def take(self, n: int) -> np.ndarray:
        """Returns the next n rows; raises _Unusual when the stream has fewer."""
        rows = self.take_some(n)
        if len(rows) < n:
            raise _Unusual  # fewer targets than logits: the strict reader says where
        return rows

    def take_some(self, n: int) -> np.ndarray:
        """Returns the next n rows, or as many as the stream has left."""
        have = sum(len(block) for block in self.pending)
        while have < n:
            block = next(self.blocks, None)
            if block is None:
                break
            self.pending.append(block)
            have += len(block)
        if not self.pending:
            return np.empty((0, 0))
        rows = self.pending[0] if len(self.pending) == 1 else np.concatenate(self.pending)
        self.pending = [rows[n:]] if len(rows) > n else []
        return rows[:n]

    def exhausted(self) -> bool:
        """Returns whether every row has been taken."""
        return not self.pending and next(self.blocks, None) is None

    def left(self) -> int:
        """Returns the number of rows not taken, reading the stream to its end."""
        pending = sum(len(block) for block in self.pending)
        return pending + sum(len(block) for block in self.blocks)  # a block at a time


def _row_total(path: str, offset: int, columns: int, delimiter: str) -> Iterator[int]:
    """Yields the number of rows from offset on, as the parser counts them: the lines (a blank
    line is a row, and so is a last line without its newline) or, where a quote or a carriage
    return could join or cut lines, the blocks' counts of _block_rows.

    The file is read in fixed-size pieces, PARSERS at once in threads (reading and counting
    let go of the GIL; nothing else runs while the rows are counted), each thread into one
    buffer of its own: blocks cut at line ends would each be new memory to the system. 825 MB
    took 0.18 s on two threads, 0.34 s on one.
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    own = threading.local()

    def count(start: int) -> tuple[int, int] | None:
        """Returns a piece's newlines and its last byte; None where a quote or a carriage
        return is in it."""
        if not hasattr(own, "buffer"):
            own.buffer = bytearray(BLOCK_BYTES)
            own.memory = memoryview(own.buffer)
            own.view = np.frombuffer(own.buffer, dtype=np.uint8)
        with open(path, "rb", buffering=0) as file:
            file.seek(start)
            size = 0  # a read may stop short (a network file system): read on to the piece's end
            want = min(len(own.buffer), end - start)
            while size < want and (got := file.readinto(own.memory[size:want])):
                size += got
        if not size:
            return 0, ord("\n")
        if own.buffer.find(b'"', 0, size) >= 0 or own.buffer.find(b"\r", 0, size) >= 0:
            return None
        return int(np.count_nonzero(own.view[:size] == ord("\n"))), own.buffer[size - 1]

    with open(path, "rb") as file:
        end = _data_end(file.fileno())
    starts = range(offset, max(offset, end), BLOCK_BYTES)
    with ThreadPoolExecutor(PARSERS, thread_name_prefix="xent-count") as pool:
        pieces = list(pool.map(count, starts))
    if None in pieces:
        yield from _block_rows(path, offset, columns, delimiter)
        return
    last = pieces[-1][1] if pieces else ord("\n")
    yield sum(rows for rows, _ in pieces) + (last != ord("\n"))


def _block_rows(path: str, offset: int, columns: int, delimiter: str) -> Iterator[int]:
    """Yields each block's number of rows as the parser counts them: its lines (a blank line
    is a row), or, where quotes or a lone carriage return could join or cut lines, Polars'."""
    def rows_of(block: bytes) -> int:
        if _plain_lines(block):
            return int(np.count_nonzero(np.frombuffer(block, dtype=np.uint8) == ord("\n")))
        return len(_parse_column(block, columns, delimiter, 0))

    for rows, _ in _prefetched(_parsed_blocks(path, offset, rows_of)):
        yield rows


def _plain_header(path: str, delimiter: str) -> tuple[tuple[str, ...], int]:
    """Returns a CSV's header names, read as the strict reader reads them (R's write.csv quotes
    each name), and its length in bytes; no names where the strict reader must judge
    (undecodable, a quoted name over two lines, empty or repeated names)."""
    with open(path, "rb") as file:
        first = file.readline()
    data.refuse_compressed(first, path)  # before the strict reader reads it whole to say so
    data.refuse_other_format(path)
    try:
        text = first.decode("utf-8-sig").strip("\r\n")
    except UnicodeDecodeError:
        return (), len(first)
    if text.count('"') % 2 or "\r" in text:
        return (), len(first)  # a quoted name goes on past the line, or lines end in \r alone
    cells = next(csv.reader([text], delimiter=delimiter, skipinitialspace=True), [])
    header = tuple(cell.strip() for cell in cells)
    data.check_names(header, path)  # before reading a large file that has no header
    if len(set(header)) != len(header) or not all(header):
        return (), len(first)  # the strict reader explains
    data.check_pandas_unnamed(header, path, line=1)  # as the strict reader, before the rows
    return header, len(first)


def _parsed_blocks(path: str, offset: int, parse: Callable[[bytes], object]) -> Iterator[tuple]:
    """Yields parse of each block of the file, with the bytes read after it.

    Polars parses a block of this size on one core, so PARSERS blocks are read and parsed at
    once, in threads (reading, Polars and NumPy release the GIL), and come out in file order.
    Each thread reads its own block: read by the thread that hands them out, the blocks were
    one read at a time while a parser waited (825 MB: 2.20 s against 2.35 s, median of 7).
    """
    import collections
    import threading
    from concurrent.futures import ThreadPoolExecutor

    readers = set()  # the pool's threads

    def read_and_parse(fd: int, start: int, stop: int):
        readers.add(threading.get_ident())
        return parse(_read_block(fd, start, stop))

    with open(path, "rb") as file:
        fd = file.fileno()
        pool = ThreadPoolExecutor(PARSERS, thread_name_prefix="xent-parse")
        pending: collections.deque = collections.deque()
        try:
            for start, stop in _spans(fd, offset):
                pending.append((pool.submit(read_and_parse, fd, start, stop), stop))
                if len(pending) == PARSERS:
                    parsed, done = pending.popleft()
                    yield parsed.result(), done
            while pending:
                parsed, done = pending.popleft()
                yield parsed.result(), done
        finally:
            # waits for reads under way, so the file closes after them, unless the garbage
            # collector closes this generator in one of the pool's threads, which cannot wait
            # for itself (the other thread's read may then fail, in a result no one reads)
            pool.shutdown(wait=threading.get_ident() not in readers, cancel_futures=True)


def _prefetched(items: Iterator, depth: int = 1) -> Iterator:
    """Yields the items of an iterator computed one ahead in a thread.

    Parsing (Polars) and the loss (NumPy) both release the GIL, so on two cores the next block
    parses while this one is evaluated. Exceptions reach the consumer in order.
    """
    import queue
    import threading

    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put((end, None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            slots.put((end, error))

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # free the producer if it waits on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                pass
            worker.join(timeout=0.05)


def _spans(fd: int, offset: int) -> Iterator[tuple[int, int]]:
    """Yields (start, stop) of the file's blocks of whole lines from offset on, up to its size
    when the first block is asked for.

    A block is BLOCK_BYTES and the rest of its last line. A peek finds where that line ends,
    so each block is read at its exact length into a bytes object of its own: finishing a
    block read at BLOCK_BYTES by appending copies it (825 MB of copies for an 825 MB file,
    0.1 CPU s).
    """
    size, start = _data_end(fd), offset
    while start < size:
        # the block's last byte, or the file's: a line cut by size (a writer appending) is read
        # whole, to its newline, as a reader going to the end of the file would read it
        last = min(start + BLOCK_BYTES, size) - 1
        stop = max(_line_end(fd, last), last + 1)  # last + 1: the file has shrunk since
        yield start, stop
        start = stop


def _data_end(fd: int) -> int:
    """Returns the file's size less the blank lines and spaces that end it, where they fit in a
    peek: rows of nothing, which the strict reader skips and Polars reads as rows of nulls, so
    that a large file ending in them stays with the fast reader (print(df.to_csv()) adds one:
    19 MB took 2.95 s and 382 MB, handed whole to the strict reader, against 0.68 s and 123 MB)."""
    size = os.fstat(fd).st_size
    tail = os.pread(fd, min(size, PEEK_BYTES), max(0, size - PEEK_BYTES))
    kept = tail.rstrip(b" \t\r\n")
    return size - (len(tail) - len(kept)) if kept else size  # all blank: the strict reader's


def _read_block(fd: int, start: int, stop: int) -> bytes:
    """Returns bytes start:stop of the file, ending in a newline (the last line may lack one)."""
    block = os.pread(fd, stop - start, start)
    while len(block) < stop - start:  # a read may stop short (a network file system): go on
        more = os.pread(fd, stop - start - len(block), start + len(block))
        if not more:
            break  # the file has shrunk since
        block += more
    return block if block.endswith(b"\n") else block + b"\n"


# Bytes _line_end reads at a time: a few lines of a typical logits file.
PEEK_BYTES = 1 << 12


def _line_end(fd: int, at: int) -> int:
    """Returns the offset just after the first newline at or after at, or the file's end."""
    while True:
        peek = os.pread(fd, PEEK_BYTES, at)
        if not peek:  # only an empty read is the end: a read may stop short before it
            return at
        newline = peek.find(b"\n")
        if newline >= 0:
            return at + newline + 1
        at += len(peek)


def _parse_block(block: bytes, columns: int, delimiter: str) -> np.ndarray:
    """Returns a block of lines as a float64 array; raises _Unusual where it needs a closer look.

    Polars keeps a blank line as a row of nulls (NaN here), which the caller refuses, so every
    line stays a row and line numbers hold; tests pin that behaviour. A lone carriage return
    ends a line for the strict reader, not for Polars: such a block is the strict reader's.
    """
    import polars as pl

    # Polars skips a byte-order mark that begins its input, as a file's: one that begins a
    # block's first line is a cell's, which the strict reader refuses
    if _lone_carriage_return(block) or block.startswith(codecs.BOM_UTF8):
        raise _Unusual
    if columns >= WIDE_CSV_COLUMNS:
        return _cut_and_cast(block, columns, delimiter)
    try:
        frame = pl.read_csv(io.BytesIO(block), has_header=False, separator=delimiter,
                            schema={f"c{c}": pl.Float64 for c in range(columns)})
    except Exception:  # noqa: BLE001 - cut, which raises _Unusual where the strict reader rules
        # Polars refuses a space after a number ('1.0 ,2'), which the strict reader strips: one
        # such cell every 5,000 rows sent every block of a 154 MB file to the strict reader
        # (19.9 s against 0.85 s)
        return _cut_and_cast(block, columns, delimiter)
    return frame.to_numpy()


def _rows_left(blocks: Iterator[tuple[np.ndarray, InputError | None, int]]) -> int:
    """Returns the rows of _logit_blocks' blocks left; raises _Unusual at a bad cell, which the
    strict reader, reading every cell first, names before any count."""
    rows = 0
    for logits, fault, _ in blocks:
        if fault is not None:
            raise _Unusual
        rows += len(logits)
    return rows


def _logit_blocks(path: str, offset: int, header: tuple[str, ...], delimiter: str,
                  label_col: str) -> Iterator[tuple[np.ndarray, InputError | None, int]]:
    """Yields each block of a CSV of logits alone, from byte offset on, as (logits, fault, the
    bytes read after it): Polars' parse, or where it cannot stand, the strict reader's of that
    block alone, fault its bad cell's error (else None), to raise once the rows above it are
    worked."""
    parse = functools.partial(_parsed_or_none, columns=len(header), delimiter=delimiter)
    at, line = offset, 2  # the block's first byte and line (the header is line 1)
    for (logits, plain), done in _prefetched(_parsed_blocks(path, offset, parse)):
        fault = None
        if not plain:  # nan, inf, an empty cell, -1e400
            logits, _, fault = _strict_block(path, at, done, header, delimiter, line, label_col)
        yield logits, fault, done
        at, line = done, line + len(logits)


def _parsed_or_none(block: bytes, columns: int, delimiter: str
                    ) -> tuple[np.ndarray | None, bool]:
    """Returns _parse_block's array (None where the block needs a closer look) and whether its
    numbers are all finite or masked classes written -inf, as the strict reader reads them."""
    try:
        array = _parse_block(block, columns, delimiter)
    except _Unusual:
        return None, False
    return array, _finite(array) or _masked_only(block, array)


def _strict_block(path: str, start: int, stop: int, header: tuple[str, ...], delimiter: str,
                  first_line: int, label_col: str
                  ) -> tuple[np.ndarray, np.ndarray | None, InputError | None]:
    """Returns the logits and labels (None without a label column) of bytes start:stop of a
    CSV, whole lines from first_line on, read by the strict reader, which names a bad cell: where
    there is one, the rows above it and its error, to raise once they are worked (a fault of
    theirs, a masked class at a label, is the first bad sample's, as a block cut there would
    find); raises _Unusual where the block cannot be read alone as the whole file would be: a
    quote (a cell may hold a newline), a carriage return alone, bytes that are not UTF-8 text, a
    blank line (no row, where the fast reader counts one a line).

    The rest of the file stays with the fast reader: handed whole to the strict reader, an
    82 MB file with a bad cell on its last line took 7.9 s and 1.2 GB to name it (now 1.4 s and
    254 MB), and a file larger than memory could not be read at all.
    """
    with open(path, "rb") as file:
        block = _read_block(file.fileno(), start, stop)
    if not _plain_lines(block) or b"\0" in block:
        raise _Unusual
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        raise _Unusual from None
    logits, labels, fault, rows = _rows_above_fault(text, header, path, delimiter, first_line,
                                                    label_col)
    if len(logits) != rows:
        raise _Unusual
    return logits, labels, fault


def _rows_above_fault(text: str, header: tuple[str, ...], path: str, delimiter: str,
                      first_line: int, label_col: str
                      ) -> tuple[np.ndarray, np.ndarray | None, InputError | None, int]:
    """Returns the logits and labels of the rows of text, whole lines of the CSV at path from
    first_line on, above its first bad cell, that cell's error (None where there is none) and
    the number of lines read. The strict reader counts every row's cells, then reads the logits,
    then the labels: the lines above a fault it names are read again, at most twice."""
    fault = None
    while True:
        try:
            logits, labels, _ = data.read_block(text, header, path, delimiter, first_line,
                                                label_col)
            return logits, labels, fault, text.count("\n")
        except InputError as error:
            if error.source != path or error.line is None or error.line <= first_line:
                raise  # no row above it
            fault = error
            text = "\n".join(text.split("\n")[:error.line - first_line]) + "\n"


# From this many columns on, a block's lines are cut at the delimiter and their cells cast to
# floats by Polars: its CSV reader keeps some structure for every column of every block (50,257
# classes: 380 ms a block of 8 MB and some 600 MB of RSS in all, where cutting takes 68 ms);
# below, the reader, in its threads, is the faster (1000 classes: 21 ms against 40 ms).
WIDE_CSV_COLUMNS = 1 << 12


def _cut_and_cast(block: bytes, columns: int, delimiter: str) -> np.ndarray:
    """Returns a block of lines of many columns as a float64 array, each line cut at the
    delimiter and every cell, spaces and tabs around it stripped as the strict reader strips
    them, cast to a float (a cell the cast does not read, '1_0', becomes nan); raises _Unusual
    where a line has another number of cells, or a quote could hold a delimiter or a newline:
    the strict reader rules."""
    import polars as pl

    if b'"' in block:
        raise _Unusual
    try:
        lines = block.decode().replace("\r\n", "\n").split("\n")[:-1]  # it ends in a newline
    except UnicodeDecodeError:
        raise _Unusual from None
    cells = pl.Series(lines, dtype=pl.String).str.split(delimiter)
    if (cells.list.len() != columns).any():
        raise _Unusual  # a blank line, a ragged row
    cells = cells.explode()
    # np.savetxt(delimiter=", ") pads every cell: unstripped, each is nan and the file goes to
    # the strict reader (10 times slower); a TSV's tabs are no padding (12 ms a block saved)
    pads = " " if delimiter == "\t" else " \t"
    if any(pad.encode() in block for pad in pads):
        cells = cells.str.strip_chars(pads)
    values = cells.cast(pl.Float64, strict=False).to_numpy()
    return values.reshape(len(lines), columns)


def _parse_column(block: bytes, columns: int, delimiter: str, column: int) -> np.ndarray:
    """Returns one column of a block of lines as a float64 (n,) array, a row per line as
    _parse_block counts them; a third of the work of a full parse with 10 classes."""
    import polars as pl

    try:
        frame = pl.read_csv(io.BytesIO(block), has_header=False, separator=delimiter,
                            columns=[column],
                            schema={f"c{c}": pl.Float64 for c in range(columns)})
    except Exception:  # noqa: BLE001 - any parser complaint goes to the strict reader
        raise _Unusual from None
    return frame.to_series().to_numpy()


def _whole(raw: np.ndarray) -> np.ndarray:
    """Returns parsed labels as int64, one that is no whole number (nan, 1e300) as -1: the full
    pass hands its block to the strict reader, so for the divisor it need only count for nothing
    (-1 is no class index, or else the ignore index)."""
    return np.where(np.abs(raw) < 2.0**53, raw, -1).astype(np.int64)


def _plain_lines(block: bytes) -> bool:
    """Returns whether a block's lines are its rows as Polars cuts them: no quote (a quoted cell
    may hold a newline) and a carriage return only just before a newline."""
    return b'"' not in block and not _lone_carriage_return(block)


def _lone_carriage_return(block: bytes) -> bool:
    """Returns whether a carriage return in the block stands anywhere but just before a newline."""
    if b"\r" not in block:  # a search: most files have none
        return False
    # NumPy, not bytes.count: a third of the time on a CRLF block, without holding the GIL
    a = np.frombuffer(block, dtype=np.uint8)
    returns = np.flatnonzero(a[:-1] == ord("\r"))
    return bool(a[-1] == ord("\r") or (a[returns + 1] != ord("\n")).any())


# Digits of a label the line-end reader takes; a longer one is no class index anyway.
LABEL_DIGITS = 9


def _last_cells(block: bytes, delimiter: str) -> np.ndarray | None:
    """Returns the last cell of each line as int64 when every line ends in a plainly written
    integer (the delimiter, an optional minus, 1 to LABEL_DIGITS digits); else None.

    It finds the newlines and reads back from each a digit at a time (most labels have one or
    two): about half the time of Polars' parse of the one column, and no copy of the block.
    Where it answers, its numbers are the ones Polars parses from that column.
    """
    if len(delimiter) != 1 or not block.endswith(b"\n") or not _plain_lines(block):
        return None
    a = np.frombuffer(block, dtype=np.uint8)
    newlines = np.flatnonzero(a == ord("\n"))
    at = newlines - 1 - (a[newlines - 1] == ord("\r"))  # each line's last byte
    # A walk back stops at the first byte that is no digit, at the latest at the newline
    # before the line; for the first line that is a[-1], the block's last newline.
    value, sign = np.zeros(len(at), dtype=np.int64), np.ones(len(at), dtype=np.int64)
    reading = np.ones(len(at), dtype=bool)
    for place in range(LABEL_DIGITS + 1):
        byte = a[at]
        digit = reading & (byte >= ord("0")) & (byte <= ord("9"))
        if place == 0 and not digit.all():
            return None  # a blank line, or a cell that is no plain integer
        value += np.where(digit, (byte.astype(np.int64) - ord("0")) * 10**place, 0)
        ended = reading & ~digit
        if ended.any():
            minus = ended & (byte == ord("-"))
            sign[minus] = -1
            at[minus] -= 1
            if not (a[at[ended]] == ord(delimiter)).all():
                return None
            reading &= ~ended
            if not reading.any():
                return sign * value
        np.subtract(at, 1, out=at, where=reading)  # a line read to its end stays there
    return None


def _read_array_input(path: str, suffix: str, label_col: str, labels_path: str | None,
                      targets_path: str | None, delimiter: str | None,
                      min_classes: int = 2) -> data.EvalInput:
    """Reads logits from .npy (memory-mapped), .npz or .parquet, where a sample's 'line' is its
    row, or from CSV when the labels or targets are an array."""
    labels = targets = None
    class_names = None
    target_source, target_column = path, None
    lines = None  # the logits' lines, from a CSV file
    if suffix not in ARRAYS:
        table, logits, class_names = data.read_logits(
            path, label_col=label_col, targets_from=labels_path or targets_path,
            delimiter=delimiter, min_classes=min_classes)
        lines = table.lines
    elif suffix == ".npy":
        logits = _load_npy(path)
    elif suffix == ".npz":
        arrays = _load_npz(path)
        if "logits" not in arrays:
            named = "targets=t" if min_classes == 1 else "labels=y"  # bce takes no labels
            raise InputError(f"has no array 'logits' (it has {', '.join(arrays) or 'none'}); "
                             f"name them: np.savez(path, logits=z, {named})", source=path)
        logits = arrays["logits"]
        if "labels" in arrays:
            labels, target_column = arrays["labels"], "'labels'"
        elif "targets" in arrays:
            targets = arrays["targets"]
        elif len(arrays) > 1 and not (labels_path or targets_path):
            if min_classes == 1:  # binary cross-entropy takes targets, never labels
                raise InputError(f"has no targets; its arrays are {', '.join(arrays)}: name the "
                                 "targets np.savez(path, logits=z, targets=t), or give --targets",
                                 source=path)
            raise InputError(f"has no labels; its arrays are {', '.join(arrays)}: name the labels "
                             "np.savez(path, logits=z, labels=y), or give --labels or --targets",
                             source=path)
    else:
        logits, labels, class_names = _read_parquet(path, label_col)
        if labels is not None:
            target_column = repr(label_col)
    if (labels is not None or targets is not None) and (labels_path or targets_path):
        held = (f"a column {label_col!r}" if suffix == ".parquet"
                else f"an array {'labels' if labels is not None else 'targets'!r}")
        raise _given_twice(path, held, labels_path, targets_path)
    logits = _float_matrix(logits, path, "logits", min_classes)
    n = logits.shape[0]
    rows = range(n)  # indexes and slices as a tuple of lines does, without n Python ints
    target_lines = target_names = None  # the targets' lines and columns, from a CSV file
    if labels_path is not None:
        labels, target_lines, names = _read_side(labels_path, delimiter, "labels", label_col)
        target_column, target_source = None if names is None else repr(names[0]), labels_path
    if targets_path is not None:
        targets, target_lines, target_names = _read_side(targets_path, delimiter, "targets")
        target_source = targets_path
    if labels is None and targets is None and suffix == ".parquet":
        raise InputError(f"has no column {data.no_label_column(label_col, class_names)}",
                         source=path)
    if labels is None and targets is None:
        raise InputError("has no labels; give --labels or --targets (a .npy, .npz, .parquet or CSV file)",
                         source=path)
    if labels is not None:
        labels = _whole_labels(labels, target_source, target_column)
        count = len(labels)
    else:
        targets = _float_matrix(targets, target_source, "targets", min_classes)
        count = targets.shape[0]
        if targets.shape[1] != logits.shape[1]:
            raise data.target_columns_error(targets.shape[1], class_names, logits.shape[1],
                                            target_names, target_source)
    if count != n:
        csv_labels = labels is not None and target_lines is not None
        more = (data.header_read_as_label(labels, target_column, n) if csv_labels else
                data.header_read_as_targets(target_names, count, n) if target_lines is not None
                else "")
        raise _miscounted(count, logits.shape, labels is not None, target_source, target_lines,
                          logits_in_rows=lines is None, more=more)
    class_names = class_names or tuple(str(c) for c in range(logits.shape[1]))
    placed = data.EvalInput(
        logits=logits, labels=labels, targets=targets, class_names=class_names, source=path,
        lines=rows if lines is None else lines, target_source=target_source,
        target_column=target_column, target_lines=rows if target_lines is None else target_lines,
        target_names=target_names,
        rows_in=frozenset(([path] if lines is None else [])
                          + ([target_source] if target_lines is None else [])))
    if targets is not None and (targets < 0).any():
        i, c = np.argwhere(targets < 0)[0]
        raise data.locate(InputError(f"target probability {float(targets[i, c])!r} is negative",
                                     sample=int(i), column=f"class {c}"), placed)
    return placed


def _given_twice(path: str, held: str, labels_path: str | None, targets_path: str | None
                 ) -> InputError:
    """Returns the error for targets that path holds (held says where) and a file gives too:
    as a CSV's label column beside --labels, one of the two would be dropped unsaid."""
    return InputError(f"has {held} and {'labels' if labels_path else 'targets'} come from "
                      f"{labels_path or targets_path}; remove one of them", source=path)


def _miscounted(count: int, shape: tuple[int, int], labels: bool, source: str,
                target_lines: Sequence[int] | None, logits_in_rows: bool, more: str = ""
                ) -> InputError:
    """Returns the error for count labels (or target rows) beside logits of shape (n, k); more
    ends its message."""
    n, k = shape
    what = "labels" if labels else "target rows"
    # in a CSV, the first line without logits; an array's surplus rows have no line
    surplus = target_lines[n] if count > n and target_lines is not None else None
    # (classes, samples): as many labels as columns, and fewer rows, as classes usually are
    looks_transposed = logits_in_rows and count == k > n
    transposed = (f"; the logits look transposed, {shape}: give them as (samples, classes), z.T"
                  if looks_transposed else "")
    return InputError(f"has {count} {what} for {n} rows of logits{transposed}{more}",
                      source=source, line=surplus)


def _whole_labels(labels, source: str, column: str | None = None) -> np.ndarray:
    """Returns an array of labels as int64; raises InputError, naming the row (and the column
    of a table), for one that is no whole number or beyond int64 (a CSV's labels were checked
    as they were read)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iuf":
        flatten = ("; flatten (batch, time) labels as for F.cross_entropy: y.reshape(-1); "
                   "give one-hot or soft (samples, classes) arrays as --targets"
                   if labels.ndim > 1 and labels.dtype.kind in "iuf" else "")
        if labels.ndim == 2 and labels.shape[1] == 1 and labels.dtype.kind in "iu":
            flatten = ": a column of labels, one per sample; save y.reshape(-1)"
        if labels.dtype.kind == "b":
            flatten = f"; {BOOLEAN_HINT} (y.astype(np.int8))"
        raise InputError(f"labels must be a 1-d array of integers, got shape {labels.shape} "
                         f"of {labels.dtype}{flatten}", source=source)
    if labels.dtype.kind == "f":
        whole = np.isfinite(labels) & (labels == np.round(labels))
        if not whole.all():
            i = int(np.argmin(whole))
            raise InputError(f"label {float(labels[i])!r} is not a whole number", source=source,
                             row=i, column=column)
    if labels.dtype.kind in "uf":  # a label beyond int64 would wrap around to another one
        beyond = (labels >= 2**63) | (labels < -2**63)
        if beyond.any():
            i = int(np.argmax(beyond))
            raise InputError(f"label {labels[i].item()!r} is out of range", source=source, row=i,
                             column=column)
    return labels.astype(np.int64)


def _load_npy(path: str) -> np.ndarray:
    return data.load_npy(path, mmap_mode="r")


def _load_npz(path: str, streamed: bool = False) -> dict[str, np.ndarray]:
    """Returns the arrays of an .npz by name: those stored uncompressed (np.savez) mapped, the
    compressed ones (np.savez_compressed) loaded whole or, streamed, as _Deflated members read
    a run of rows at a time."""
    with _npz_errors(path):
        # the file is opened here to be closed here: NumPy leaves it open when the zip is corrupt
        with open(path, "rb") as file:
            archive = np.load(file, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise InputError("holds one array, as an .npy file does, not an .npz archive of "
                                 "named arrays; name it .npy", source=path)
            with archive:
                names = archive.files
                mapped = _mapped_members(file, streamed)
                arrays = {name: mapped[name + ".npy"] if name + ".npy" in mapped
                          else archive[name] for name in names}
    # NumPy hands out a member that does not start as an .npy does as its raw bytes
    for name, array in arrays.items():
        if isinstance(array, bytes):
            raise InputError(f"member {name!r} is not an .npy array; save the archive with "
                             f"np.savez", source=path)
    return arrays


@contextlib.contextmanager
def _npz_errors(path: str) -> Iterator[None]:
    """Turns what reading an .npz raises into the one-line InputError naming it."""
    try:
        yield
    except FileNotFoundError:
        raise InputError("no such file", source=path) from None
    except InputError:
        raise
    except Exception as error:  # noqa: BLE001 - corrupt bytes raise anything from zipfile to tokenize
        raise InputError(f"is not a readable .npz archive: {error}", source=path) from None


def _npy_header(file) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Reads an .npy header from a file at its start: (shape, Fortran order, dtype)."""
    version = np.lib.format.read_magic(file)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    return read_header(file)


def _mapped_members(file, streamed: bool = False) -> dict[str, np.memmap | _Deflated]:
    """Returns the arrays an .npz stores uncompressed (np.savez), memory-mapped by member name:
    np.load would read them whole. Compressed members (np.savez_compressed) are left out or,
    streamed, given as _Deflated where they hold numbers of the size their header says
    (np.load judges any other)."""
    import struct
    import zipfile

    mapped = {}
    with zipfile.ZipFile(file) as archive:
        for member in archive.infolist():
            if not member.filename.endswith(".npy"):
                continue
            if member.compress_type == zipfile.ZIP_DEFLATED and streamed:
                with archive.open(member) as stored:
                    shape, fortran, dtype = _npy_header(stored)
                    offset = stored.tell()
                if (not dtype.hasobject and len(shape) >= 1
                        and offset + math.prod(shape) * dtype.itemsize == member.file_size):
                    mapped[member.filename] = _Deflated(file.name, member.filename, shape,
                                                        dtype, offset, fortran)
                continue
            if member.compress_type != zipfile.ZIP_STORED:
                continue
            file.seek(member.header_offset + 26)  # the local header's name and extra lengths
            name_length, extra_length = struct.unpack("<HH", file.read(4))
            start = member.header_offset + 30 + name_length + extra_length
            file.seek(start)
            shape, fortran, dtype = _npy_header(file)
            if dtype.hasobject:
                continue  # np.load refuses it without pickles, and says so
            offset = file.tell()
            if (offset + math.prod(shape) * dtype.itemsize != start + member.file_size
                    or not _intact(file, start, member)):
                continue  # a map would read damaged bytes or the next member's: np.load says so
            mapped[member.filename] = np.memmap(file.name, dtype=dtype, mode="r",
                                                offset=offset, shape=shape,
                                                order="F" if fortran else "C")
    return mapped


class _Deflated:
    """An array an .npz stores compressed, read a run of rows at a time from a stream that
    inflates its member (np.load inflates it whole: 8.5M x 10 float64 took 835 MB of RSS).

    Rows are read in order, each pass from a stream of its own (read from another row or in
    runs of another size, the member is opened again), the next run inflated in a thread while
    this one is used (zlib lets go of the GIL); zipfile checks the CRC-32 as the last bytes
    come out. A Fortran-ordered array's rows are spread over the whole stream, column after
    column: it is inflated once into a temporary file and mapped (spilled). np.asarray reads
    it whole, as np.load would.
    """

    def __init__(self, path: str, member: str, shape: tuple[int, ...], dtype: np.dtype,
                 offset: int, fortran: bool = False):
        self.path, self.member, self.shape, self.dtype = path, member, shape, dtype
        self.ndim, self.offset = len(shape), offset  # offset: the data's, past the .npy header
        self.fortran = fortran
        self._runs = None  # the pass under way: its runs of rows, inflated one ahead
        self._at = self._count = 0  # the row it gives next, and its rows a run
        self._spill = None  # a Fortran-ordered array's map of its temporary file

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = np.array(self.spilled()) if self.fortran else self.read(0, max(len(self), 1))
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def spilled(self) -> np.memmap:
        """Returns the array inflated once into a temporary file (deleted as it closes, which
        the map outlives) and mapped in its order; raises InputError where there is no room."""
        import shutil
        import zipfile

        if self._spill is None:
            directory = tempfile.gettempdir()
            with (_npz_errors(self.path), zipfile.ZipFile(self.path) as archive,
                  archive.open(self.member) as stream):
                stream.seek(self.offset)
                try:
                    spill = tempfile.TemporaryFile(prefix="xent-")
                except OSError as error:
                    raise _uncopied(error, directory, self.path) from None
                with spill:
                    try:
                        shutil.copyfileobj(stream, spill, 1 << 24)
                        spill.flush()
                    except OSError as error:  # a write: zipfile's own errors are no OSError
                        raise _uncopied(error, directory, self.path) from None
                    self._spill = np.memmap(spill, dtype=self.dtype, mode="r", shape=self.shape,
                                            order="F" if self.fortran else "C")
        return self._spill

    def read(self, start: int, count: int) -> np.ndarray:
        """Returns count rows (fewer at the end) from start on, in the member's own dtype."""
        if self._runs is None or (start, count) != (self._at, self._count):
            self.close()
            # the thread's generator holds no reference to self: a pass left part way (an
            # error in a chunk) ends, and its thread with it, when self goes
            self._runs = _prefetched(_inflated(self.path, self.member, self.shape, self.dtype,
                                               self.offset, start, count))
            self._at, self._count = start, count
        try:
            rows = next(self._runs, None)
        except BaseException:
            self.close()  # a stream that failed part way is not read on
            raise
        if rows is None:  # no rows from start on
            rows = np.empty((0, *self.shape[1:]), self.dtype)
        self._at += len(rows)
        if self._at >= len(self):
            self.close()
        return rows

    def close(self) -> None:
        """Ends the pass under way, if any, and closes its stream."""
        if self._runs is not None:
            self._runs.close()
        self._runs = None


def _inflated(path: str, member: str, shape: tuple[int, ...], dtype: np.dtype, offset: int,
              start: int, count: int) -> Iterator[np.ndarray]:
    """Yields the rows of a compressed .npz member (its data at offset, past the .npy header)
    from start on, count at a time, from a stream of its own."""
    import zipfile

    n, row_bytes = shape[0], dtype.itemsize * math.prod(shape[1:])
    with (_npz_errors(path), zipfile.ZipFile(path) as archive, archive.open(member) as stream):
        stream.seek(offset + start * row_bytes)  # inflates what it skips
        for at in range(start, n, count):
            rows = np.empty((min(count, n - at), *shape[1:]), dtype)
            with memoryview(rows.reshape(-1).view(np.uint8)) as view:
                done = 0
                while done < len(view):
                    got = stream.readinto(view[done:])
                    if not got:  # zipfile raises first; a stream cut short is no array
                        raise InputError(f"is not a readable .npz archive: {member!r} ends "
                                         f"before its {n} rows", source=path)
                    done += got
            yield rows


# Bytes of a mapped .npz member _intact checks before it lets their pages go (a whole number
# of pages on every system).
CRC_WINDOW = 1 << 26


def _intact(file, start: int, member) -> bool:
    """Returns whether a stored member's bytes from start on match its CRC-32, which zipfile
    checks as np.load reads a member and nothing checks in a map (read through a map of the
    file: a third less time than reading it in pieces). Each window's pages leave the RSS
    once checked (they stay in the page cache): a 748 MB archive peaked at its size."""
    import mmap
    import zlib

    end, crc = start + member.file_size, 0
    with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as whole, memoryview(whole) as view:
        if len(whole) < end:
            return False
        for at in range(start - start % mmap.PAGESIZE, end, CRC_WINDOW):
            with view[max(at, start):min(at + CRC_WINDOW, end)] as stored:
                crc = zlib.crc32(stored, crc)
            if hasattr(whole, "madvise"):  # Python 3.8+ on systems with madvise(2)
                whole.madvise(mmap.MADV_DONTNEED, at, min(CRC_WINDOW, len(whole) - at))
    return crc == member.CRC


def _read_parquet(path: str, label_col: str):
    """Returns logits, labels (or None) and class names from a Parquet table."""
    frame = _parquet_frame(path)
    names = tuple(frame.columns)
    index = _pandas_index(path)
    logit_names = tuple(name for name in names if name != label_col and name not in index)
    data.check_pandas_unnamed(logit_names, path)
    labels = frame[label_col].to_numpy() if label_col in names else None
    _refuse_non_numbers(frame.schema, logit_names, path, "logits")
    try:
        logits = frame.select(logit_names).to_numpy().astype(np.float64, copy=False)
    except (TypeError, ValueError) as error:
        raise InputError(f"logit columns must be numbers: {error}", source=path) from None
    return logits, labels, logit_names


def _parquet_frame(path: str):
    """Returns a Parquet table read whole by Polars; InputError where it cannot be read."""
    try:
        import polars as pl
    except ImportError:
        raise InputError("reading Parquet needs Polars: pip install polars", source=path) from None
    try:
        return pl.read_parquet(path, glob=False)  # as _scan_parquet
    except FileNotFoundError:
        raise InputError("no such file", source=path) from None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # noqa: BLE001 - Polars has many error types, and on corrupt
        # bytes its Rust code may panic: a PanicException, which is a BaseException
        raise InputError(f"is not a readable Parquet file: {error}", source=path) from None


# What each column of a Parquet table is, in the message that refuses a column of no numbers.
# Flags for targets or labels, as a multi-hot mask is: PyTorch takes them as numbers only
BOOLEAN_HINT = "cast the flags to 0/1"

_COLUMN_ROLES = {
    "logits": "every column but the label column is a logit: drop it",
    "targets": "every column is a class's target: drop it",
    "labels": "labels are class indices, one integer per sample",
}


def _refuse_non_numbers(schema, names: Collection[str], path: str, what: str) -> None:
    """Raises InputError naming the first column of names that holds no numbers (a list, a date,
    a text id, a flag): read as numbers, a date would be days since 1970, a wrong loss."""
    import polars as pl

    for name in names:
        dtype = schema[name]
        if isinstance(dtype, (pl.List, pl.Array)) and what != "labels":
            raise InputError(f"column {name!r} holds a list per sample; give one number column "
                             "per class, as pl.DataFrame(z) writes, or save arrays with np.save",
                             source=path)
        if dtype == pl.Boolean and what != "logits":  # multi-hot flags: 0/1 targets
            raise InputError(f"column {name!r} holds Boolean, not numbers; {BOOLEAN_HINT} "
                             f"(pl.col(pl.Boolean).cast(pl.Int8))", source=path)
        if not dtype.is_numeric():
            raise InputError(f"column {name!r} holds {dtype}, not numbers; {_COLUMN_ROLES[what]}",
                             source=path)


def _side_columns(schema, path: str, what: str, label_col: str) -> tuple[str, ...]:
    """Returns the columns of a Parquet table of labels or targets (what) that hold them: for
    labels its one column, or the column label_col names among several; for targets every
    column, a class each. pandas' index columns hold neither; a target column named as pandas
    names its index read back from a CSV ('Unnamed: 0') is refused."""
    index = _pandas_index(path)
    names = tuple(name for name in schema if name not in index)
    if not names:
        raise InputError(f"has no columns; give the {what} a column"
                         f"{' per class' if what == 'targets' else ''}", source=path)
    if what == "labels" and len(names) > 1:
        if label_col not in names:
            raise InputError(f"has {len(names)} columns ({', '.join(names)}) and none is named "
                             f"{label_col!r}; give the labels in a table of one column, or name "
                             "their column with --label-col", source=path)
        names = (label_col,)
    if what == "targets":
        data.check_pandas_unnamed(names, path)  # as a CSV of targets: a column, not a class
    _refuse_non_numbers(schema, names, path, what)
    return names


def _read_parquet_side(path: str, what: str, label_col: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Reads labels (N,) or targets (N, k) from a Parquet table whole, with the columns read.

    A null reads as nan, which the checks of labels and targets name by row and column.
    """
    frame = _parquet_frame(path)
    names = _side_columns(frame.schema, path, what, label_col)
    if what == "labels":
        return frame[names[0]].to_numpy(), names
    return frame.select(names).to_numpy().astype(np.float64, copy=False), names


def _pandas_index(path: str) -> frozenset[str]:
    """Returns the columns pandas' to_parquet wrote for its index (as pd.read_parquet restores
    them): a filtered frame's __index_level_0__, or a named index. They hold no class."""
    import json

    import polars as pl

    try:
        pandas = json.loads(pl.read_parquet_metadata(path).get("pandas", "{}"))
        return frozenset(name for name in pandas.get("index_columns", ())
                         if isinstance(name, str))  # a RangeIndex is a dict, with no column
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # noqa: BLE001 - unreadable metadata: the reader says why, or has none
        return frozenset()


def _read_side(path: str, delimiter: str | None, what: str, label_col: str = "label",
               streamed: bool = False
               ) -> tuple[np.ndarray, tuple[int, ...] | None, tuple[str, ...] | None]:
    """Reads labels or targets for an array input: .npy, .npz (its only or named array),
    .parquet (see _side_columns) or CSV.

    With a CSV come each row's line in it and its column names (none for labels without a
    header); with a Parquet table, its columns read; an array file has neither (None, None).
    In an array file or a table a sample's place is its row. streamed gives an .npz's
    compressed array as a _Deflated (see _load_npz).
    """
    lower = path.lower()
    if lower.endswith(".parquet"):
        values, names = _read_parquet_side(path, what, label_col)
        return values, None, names
    if lower.endswith(".npy"):
        return np.asarray(_load_npy(path)), None, None
    if lower.endswith(".npz"):
        arrays = _load_npz(path, streamed)
        if what in arrays:
            return arrays[what], None, None
        if len(arrays) == 1:
            return next(iter(arrays.values())), None, None
        raise InputError(f"has no array {what!r} (it has {', '.join(arrays) or 'none'}); "
                         f"name it: np.savez(path, {what}=...)", source=path)
    if what == "labels":
        large = os.path.isfile(path) and os.path.getsize(path) >= max(FAST_CSV_BYTES, 1)
        labels, name, lines = (large and _csv_labels(path, delimiter)
                               or data._read_labels(path, delimiter))
        return labels, lines, None if name is None else (name,)
    table = data.read_table(path, delimiter)
    data._check_names(table)  # as the CSV reader of logits and targets checks its header
    return data._numbers(table, range(len(table.header)), "probability"), table.lines, table.header


def _float_matrix(array, path: str, what: str, min_classes: int = 2) -> np.ndarray:
    """Checks an (N, k) numeric array; returns it as float64, or a memory map as it is.

    Logits need at least min_classes columns: 2 for softmax, 1 for binary cross-entropy, which
    also takes an (N,) array as one column.
    """
    array = np.asarray(array) if not isinstance(array, np.memmap) else array
    if array.ndim == 1 and min_classes == 1:  # a binary classifier's (N,) logits or targets
        array = array[:, None]
    if array.ndim != 2 or array.dtype.kind not in "iuf":
        # a language model's (batch, time, classes) logits, or the (batch, classes, time) that
        # F.cross_entropy takes: each needs its own reshape, and the wrong one mixes classes
        reshape = ("; reshape them to (samples, classes): z.reshape(-1, z.shape[-1]) for (batch, "
                   "time, classes), z.transpose(0, 2, 1).reshape(-1, z.shape[1]) for "
                   "F.cross_entropy's (batch, classes, time)"
                   if array.ndim == 3 and what == "logits" and array.dtype.kind in "iuf" else "")
        if array.ndim > 3 and what == "logits" and array.dtype.kind in "iuf":
            # segmentation: F.cross_entropy's (batch, classes, d1, d2, ...) has classes second
            reshape = ("; reshape them to (samples, classes): np.moveaxis(z, 1, -1).reshape(-1, "
                       f"z.shape[1]) for F.cross_entropy's (batch, classes, "
                       f"{', '.join(f'd{i}' for i in range(1, array.ndim - 1))}), and their "
                       f"labels y.reshape(-1)")
        if what == "targets" and array.ndim == 1 and array.dtype.kind in "iu":
            reshape = data.INDICES_HINT
        if what != "logits" and array.dtype.kind == "b":
            reshape = f"; {BOOLEAN_HINT} ({what[0]}.astype(np.int8))"
        raise InputError(f"{what} must be a 2-d numeric array (samples, classes), got shape "
                         f"{array.shape} of {array.dtype}{reshape}", source=path)
    if what == "logits" and array.shape[1] < min_classes:
        raise InputError((f"cross-entropy needs at least 2 classes"
                          f"{data.BINARY_HINT if array.shape[1] == 1 else ''}"
                          if min_classes >= 2 else
                          "binary cross-entropy needs at least 1 logit column"), source=path)
    if array.shape[0] == 0:
        raise InputError(f"{what} has no rows", source=path)
    if isinstance(array, np.memmap):
        return array  # _slice converts its rows chunk by chunk: a float32 file is not copied whole
    return array if array.dtype == np.float64 else array.astype(np.float64)


# --- evaluating -------------------------------------------------------------------------------

def evaluate(source: Source, *, loss: str = "ce", weight=None, pos_weight=None,
             ignore_index: int = -100, label_smoothing: float = 0.0, reduction: str = "mean",
             dtype: str = "float64", show: int = 3, rows: Callable[[RowsOut], None] | None = None,
             rows_with: Collection[str] = ("prob", "grad"), progress: Progress | None = None,
             fallback: Callable[[], Source] | None = None) -> Summary:
    """Returns the loss ('ce' softmax cross-entropy, 'bce' binary) of a whole source, chunk by chunk.

    rows, when given, receives every chunk's per-sample results in order, with the
    probabilities and the gradient where rows_with names them ('prob', 'grad'): what is not
    asked for is not computed. For 'mean' the gradient divides by the divisor of the whole
    input, which a pre-pass over the targets alone finds first, so the input is parsed in full
    once: the rows counted (soft or binary targets, and unweighted labels, whose pass starts
    over from the labels if a sample turns out ignored) or the labels read. fallback opens the
    strict reader when the fast one meets something unusual.
    """
    if loss not in _KERNELS:
        raise InputError(f"loss {loss!r} is not one of {', '.join(_KERNELS)}")
    if loss == "bce" and source.has_labels:
        raise InputError("binary cross-entropy needs a target per class (multi-hot or "
                         "probabilities), not class labels", source=source.target_source)
    if loss == "ce" and pos_weight is not None:
        raise InputError("pos_weight applies to binary cross-entropy only")
    if loss == "bce" and (ignore_index != -100 or label_smoothing):
        raise InputError("ignore_index and label_smoothing apply to softmax cross-entropy only")
    options = dict(loss=loss, weight=weight, pos_weight=pos_weight, ignore_index=ignore_index,
                   label_smoothing=label_smoothing, dtype=dtype)
    wants = frozenset(rows_with) & {"prob", "grad"} if rows is not None else frozenset()

    def scaled_pass(divisor: float, none_ignored: bool = False) -> Summary:
        scaled = divisor > 0  # else there is no mean: a pass that writes nothing says why
        return _pass(source, options, reduction, show, rows if scaled else None,
                     wants if scaled else frozenset(), divisor if scaled else None, progress,
                     none_ignored)

    try:
        if rows is None or reduction != "mean" or "grad" not in wants:
            return _pass(source, options, reduction, show, rows, wants, None, progress)
        divisor = _row_count(source, options)
        if divisor is None:
            divisor = _divisor_pass(source, options)
            summary = scaled_pass(divisor)
        else:
            try:
                summary = scaled_pass(divisor, none_ignored=True)
            except _Ignored:  # the labels give the divisor after all; the rows start over
                divisor = _divisor_pass(source, options)
                summary = scaled_pass(divisor)
    except _Unusual:
        if fallback is None:
            raise InputError("the input needs the strict reader", source=source.name) from None
        return evaluate(fallback(), reduction=reduction, show=show, rows=rows,
                        rows_with=rows_with, progress=progress, **options)
    if summary.divisor != divisor:  # the rows were scaled by another divisor than the loss's
        raise RuntimeError(f"the targets give the divisor {divisor!r}, the pass {summary.divisor!r}")
    return summary


def _row_count(source: Source, options: dict) -> float | None:
    """Returns the number of samples where it is the 'mean' divisor unless a sample is ignored
    (class labels without weights) and the source counts its rows more cheaply than it reads
    its labels (a large CSV: half the time); else None."""
    if (source.rows is None or not source.has_labels or options["loss"] != "ce"
            or options["weight"] is not None):
        return None
    return float(sum(source.rows()))


def _divisor_pass(source: Source, options: dict) -> float:
    """Returns the whole input's 'mean' divisor from its targets alone, bit for bit as _pass
    sums it: each chunk's divisor in the computation's dtype, the chunks' by math.fsum."""
    k = len(source.class_names)
    if options["loss"] == "bce":
        return _fsum(float(bce.mean_divisor(n, k)) for n in source.targets())
    dt = np.dtype(options["dtype"])
    if options["weight"] is not None and source.has_labels:  # summed once, as _pass sums it
        counts = sum(losses.label_counts(labels, k, options["ignore_index"])
                     for labels in source.targets())
        return losses.weighted_divisor(counts, options["weight"], dt)
    return _fsum(losses.mean_divisor(target, k, ignore_index=options["ignore_index"], dtype=dt)
                 for target in source.targets())


@dataclass(frozen=True)
class _Piece:
    """What a loss kernel makes of one chunk: its per-sample results, sums and counts."""

    per_sample: np.ndarray  # (n,) each sample's loss
    elements: np.ndarray | None  # (n, k) each element's loss, binary cross-entropy only
    probs: np.ndarray | None  # (n, k) softmax or σ; only for --output rows
    grad: np.ndarray | None  # (n, k) of the reported loss ('mean': over the divisor); only for rows
    sums: tuple[float, float]  # the chunk's total, as _split_sum gives it
    divisor: float  # the chunk's share of the 'mean' divisor
    ignored: np.ndarray  # (n,) bool: samples that count for nothing (ignore_index)
    counts: np.ndarray | None  # (k,) the counted labels of each class, for class weights; else None
    hits: int  # softmax: counted samples whose argmax is right; binary: samples right in every class
    counted: int  # the samples the hits are counted among
    wrong: int  # binary: elements predicted wrong (0 for softmax)
    predictions: np.ndarray | None  # softmax: each sample's argmax; binary: None


@dataclass(frozen=True)
class _Kernel:
    """One loss's work on a chunk; _pass combines chunks the same way for every loss."""

    # (part, options, reduction, dtype, divisor, wants) -> piece: it holds the probabilities
    # and the gradient of the reported loss (for 'mean' over the divisor given) where wants
    # names them ('prob', 'grad'), else None
    chunk: Callable[[data.EvalInput, dict, str, np.dtype, float | None, frozenset], _Piece]
    worked: Callable  # (first (part, piece), show, reduction, divisor, options) -> worked samples


def _pass(source: Source, options: dict, reduction: str, show: int,
          rows: Callable[[RowsOut], None] | None, wants: frozenset, divisor: float | None,
          progress: Progress | None, none_ignored: bool = False) -> Summary:
    """Reads the source once; a gradient in the rows with 'mean' needs the whole input's
    divisor to scale by. With none_ignored (the divisor is the row count), the first chunk
    with an ignored sample raises _Ignored."""
    kernel = _KERNELS[options["loss"]]
    totals, divisors, n, ignored, hits, counted, wrong = [], [], 0, 0, 0, 0, 0
    counts = None  # class weights: the labels counted per class, whose weights sum once at the end
    per_samples, elements, first = [], [], None
    dt = np.dtype(options["dtype"])
    for chunk in source.chunks():
        part = chunk.data
        if first is None:
            _check_row_index(source, part)
            # named as results name it: stdin's '-', not its temporary copy
            note = data.probabilities_note(dataclasses.replace(part, source=source.name),
                                           binary=options["loss"] == "bce")
        whole = chunk.start == 0 and chunk.done >= source.size  # the first chunk is all
        try:
            piece = kernel.chunk(part, options if whole else {**options, "whole": False},
                                 reduction, dt, divisor, wants)
        except InputError as error:
            if not whole:
                error = _counted_from_one(error, part, source, options)
            raise data.locate(error, part) from None
        if none_ignored and piece.ignored.any():
            raise _Ignored
        totals += piece.sums
        divisors.append(piece.divisor)
        if piece.counts is not None:
            counts = piece.counts if counts is None else counts + piece.counts
        n += len(part.lines)
        ignored += int(np.count_nonzero(piece.ignored))
        hits, counted = hits + piece.hits, counted + piece.counted
        wrong += piece.wrong
        if reduction == "none":
            per_samples.append(piece.per_sample)
            if piece.elements is not None:
                elements.append(piece.elements)
        if first is None:
            first = (part, piece)
        if rows is not None:
            grad, probs, predictions = piece.grad, piece.probs, piece.predictions
            step = max(1, ROWS_OUT * 25 // (2 * part.logits.shape[1] + 5))
            for at in range(0, len(part.lines), step):
                cut = slice(at, at + step)
                rows(RowsOut(start=chunk.start + at, lines=part.lines[cut],
                             labels=None if part.labels is None else part.labels[cut],
                             predictions=None if predictions is None else predictions[cut],
                             per_sample=piece.per_sample[cut],
                             probs=None if probs is None else probs[cut],
                             grad=None if grad is None else grad[cut]))
        if progress is not None:
            progress(chunk.done, source.size, n)
    if first is None:
        raise InputError("has no samples", source=source.name)
    total, whole_divisor = _fsum(totals), _fsum(divisors)
    if counts is not None:  # the chunks' divisors, each rounded, would sum to bits of their own
        whole_divisor = losses.weighted_divisor(counts, options["weight"], dt)
    if not math.isfinite(total):
        raise InputError(f"the loss overflows {dt.name}; the logits or weights are too large")
    if reduction == "mean" and not whole_divisor > 0:
        raise InputError(losses._no_mean_reason(n, np.ones(n, bool) if ignored == n
                                                else np.zeros(n, bool), options["ignore_index"]))
    if reduction == "mean" and math.isinf(whole_divisor):  # total / inf would be a silent 0
        raise InputError(losses.divisor_beyond_range(dt))
    loss = total / whole_divisor if reduction == "mean" else total if reduction == "sum" else None
    # no mean without a divisor, or beyond float64's range (total / inf is a meaningless 0)
    mean_loss = total / whole_divisor if 0 < whole_divisor < math.inf else float("nan")
    binary = options["loss"] == "bce"
    perplexity = None
    if source.has_labels and math.isfinite(mean_loss):
        perplexity = float(np.exp(mean_loss)) if mean_loss < 709 else float("inf")
    k = len(source.class_names)
    return Summary(
        source=source.name, target_source=source.target_source, class_names=source.class_names,
        has_labels=source.has_labels, n=n, reduction=reduction, loss=loss, total=total,
        divisor=whole_divisor, mean_loss=mean_loss,
        accuracy=hits / counted if counted and not binary else None, perplexity=perplexity,
        ignored=ignored, weight=_floats(options["weight"]), ignore_index=options["ignore_index"],
        label_smoothing=options["label_smoothing"], dtype=options["dtype"],
        worked=kernel.worked(first, show, reduction, whole_divisor, options),
        per_sample=np.concatenate(per_samples) if reduction == "none" else None,
        criterion=options["loss"], pos_weight=_floats(options["pos_weight"]),
        exact_match=hits / n if binary else None,
        hamming_loss=wrong / (n * k) if binary else None,
        elements=np.concatenate(elements) if reduction == "none" and binary else None,
        notes=(note,) if note else ())


def _counted_from_one(error: InputError, part: data.EvalInput, source: Source,
                      options: dict) -> InputError:
    """Returns a chunk's error at a label k with the hint that the labels count from 1 when
    all the input's labels run 1..k with no 0 (read again to tell); else the error as it is."""
    k = len(source.class_names)
    if part.labels is None or error.sample is None or part.labels[error.sample] != k:
        return error
    low, high = k, 0
    for labels in source.targets():
        counted = labels[labels != options["ignore_index"]]
        if counted.size:
            low, high = min(low, int(counted.min())), max(high, int(counted.max()))
    if (low, high) != (1, k):
        return error
    return error.replace(message=error.message + losses.counted_from_one_hint(k))


def _check_row_index(source: Source, part: data.EvalInput) -> None:
    """Refuses a row index or ids saved as a class (data.check_row_index), judged from the
    first data.FIRST_ROWS rows whatever the reader: a wide CSV's first block holds fewer (some
    400 of 1000 classes), so when it looks like an index the rows after it are read too."""
    try:
        data.check_row_index(part)
    except InputError:
        if len(part.lines) >= data.FIRST_ROWS:
            raise
        named = data.index_columns(part.class_names)
        columns, rows = [], 0
        with contextlib.closing(source.chunks()) as chunks:
            for chunk in chunks:
                columns.append(chunk.data.logits[:, named])
                rows += len(chunk.data.lines)
                if rows >= data.FIRST_ROWS:
                    break
        if rows == len(part.lines):
            raise  # the first chunk is the whole input
        head = np.concatenate(columns)[:data.FIRST_ROWS]
        # the columns named as an index is over those rows (the check counts rows by their
        # lines), each in its place so that the first class is still told as pandas' index
        names = [name if column in named else "" for column, name in enumerate(part.class_names)]
        logits = np.zeros((len(head), len(names)), order="F")  # only the named columns' pages
        logits[:, named] = head
        data.check_row_index(dataclasses.replace(part, logits=logits, lines=range(len(head)),
                                                 class_names=tuple(names)))


def _floats(values) -> tuple[float, ...] | None:
    """Returns per-class values as a tuple of floats (None stays None)."""
    return None if values is None else tuple(float(v) for v in values)


# --- softmax cross-entropy ---------------------------------------------------------------------

def _softmax_chunk(part: data.EvalInput, options: dict, reduction: str, dt: np.dtype,
                   divisor: float | None, wants: frozenset) -> _Piece:
    """Returns a chunk's softmax cross-entropy; 'mean' sums here and divides once at the end.

    The losses and the predicted classes are always computed, the probabilities and the
    gradient only where wants names them.
    """
    target = part.labels if part.labels is not None else part.targets
    n, k = part.logits.shape
    per_sample, predictions = np.empty(n, dtype=dt), np.empty(n, dtype=np.intp)
    grad = np.empty((n, k), dtype=dt) if "grad" in wants else None
    probs = np.empty((n, k), dtype=dt) if "prob" in wants else None
    block = losses.loss_and_gradient_into(
        part.logits, target, grad, per_sample, weight=options["weight"],
        ignore_index=options["ignore_index"], label_smoothing=options["label_smoothing"],
        scale=_grad_scale(reduction, divisor, dt), probs=probs, predictions=predictions,
        whole=options.get("whole", True))
    counts = None
    if part.labels is not None:
        kept = ~block.ignored
        hits = int(np.count_nonzero((predictions == part.labels) & kept))
        counted = int(np.count_nonzero(kept))
        if options["weight"] is not None:
            counts = np.bincount(part.labels[kept].astype(np.intp), minlength=k)
    else:
        hits = int(np.count_nonzero(predictions == _argmax_rows(part.targets)))
        counted = n
    return _Piece(per_sample=per_sample, elements=None, probs=probs, grad=grad,
                  sums=_split_sum(per_sample), divisor=block.divisor, ignored=block.ignored,
                  counts=counts, hits=hits, counted=counted, wrong=0, predictions=predictions)


def _grad_scale(reduction: str, divisor: float | None, dt: np.dtype):
    """Returns what the gradient rows are scaled by: 1 / divisor for 'mean', else 1."""
    if reduction != "mean" or divisor is None:
        return dt.type(1)
    return dt.type(1) / dt.type(divisor)


def _softmax_worked(first, show: int, reduction: str, divisor: float, options: dict):
    """Returns the arithmetic of the first samples, scaled as the whole input's loss."""
    part, piece = first
    shown = min(show, len(part.lines))
    if not shown:
        return ()
    dt = np.dtype(options["dtype"])
    weight = options["weight"]
    target = part.labels if part.labels is not None else part.targets
    z, k = part.logits[:shown], part.logits.shape[1]
    grad = np.empty((shown, k), dtype=dt)  # the kernel's rows, as --output writes them
    losses.loss_and_gradient_into(z, target[:shown], grad, np.empty(shown, dtype=dt),
                                  weight=weight, ignore_index=options["ignore_index"],
                                  label_smoothing=options["label_smoothing"],
                                  scale=_grad_scale(reduction, divisor, dt))
    # the shown rows as a result of their own, with the whole input's divisor: what _worked reads
    per_sample = piece.per_sample[:shown]
    head = losses.CrossEntropyResult(
        reduction=reduction, loss=None, per_sample=per_sample, grad=grad,
        total=float(per_sample.sum()), divisor=divisor, ignored=piece.ignored[:shown], logits=z)
    weights = np.ones(k) if weight is None else np.asarray(weight, dtype=np.float64)
    a = losses.coefficients(np.asarray(target[:shown]), k, weights, options["label_smoothing"],
                            head.ignored)
    return tuple(data._worked(part, head, a, i) for i in range(shown))


# --- binary cross-entropy ----------------------------------------------------------------------

@dataclass(frozen=True)
class BinaryWorkedSample:
    """One sample's binary cross-entropy, class by class, as a learner would do it by hand."""

    sample: int
    line: int | None  # None in an array file, where the sample is the row
    z: np.ndarray  # logits
    sigma: np.ndarray  # σ(z): each class's probability of 'yes'
    t: np.ndarray  # targets
    elements: np.ndarray  # each class's loss, w [p_w t softplus(−z) + (1 − t) softplus(z)]
    sigma_minus_t: np.ndarray  # σ − t: the gradient of the unweighted sum
    loss: float  # this sample's loss: the sum of its elements
    grad: np.ndarray  # the gradient row of the reported loss
    scale: float  # grad = w [(1 − t) σ − p_w t (1 − σ)] / scale: N × k for 'mean', else 1


def _bce_chunk(part: data.EvalInput, options: dict, reduction: str, dt: np.dtype,
               divisor: float | None, wants: frozenset) -> _Piece:
    """Returns a chunk's binary cross-entropy, its exact-match hits and wrong elements."""
    result = _bce(part, options, reduction, dt)
    # row sums of a C-ordered array: the same bits whatever the chunk or the input's layout
    per_sample = np.ascontiguousarray(result.elements).sum(axis=1)
    right = bce.predictions(part.logits) == bce.decided(part.targets)
    return _Piece(per_sample=per_sample, elements=result.elements,
                  probs=result.probs if "prob" in wants else None,
                  grad=_bce_scaled(result.grad, reduction, divisor, dt) if "grad" in wants else None,
                  sums=_split_sum(result.elements), divisor=result.divisor,
                  ignored=np.zeros(len(per_sample), dtype=bool), counts=None,
                  hits=int(np.count_nonzero(right.all(axis=1))), counted=len(part.lines),
                  wrong=int(right.size - np.count_nonzero(right)), predictions=None)


def _bce(part: data.EvalInput, options: dict, reduction: str, dt: np.dtype):
    """Returns binary cross-entropy of some samples; 'mean' as 'sum', divided at the end."""
    return bce.binary_cross_entropy(part.logits, part.targets, weight=options["weight"],
                                    pos_weight=options["pos_weight"],
                                    reduction="sum" if reduction == "mean" else reduction,
                                    dtype=dt)


def _bce_scaled(grad: np.ndarray, reduction: str, divisor: float | None, dt: np.dtype):
    """Returns the gradient of the reported loss: for 'mean', each element's over N × k.

    Dividing the gradient of 'sum' is what bce.binary_cross_entropy does for 'mean', so the
    bits agree with one piece.
    """
    if reduction != "mean" or divisor is None:
        return grad
    return grad / dt.type(divisor)


def _bce_worked(first, show: int, reduction: str, divisor: float, options: dict):
    """Returns the first samples' σ, element losses and gradients, scaled as the reported loss."""
    part, piece = first
    shown = min(show, len(part.lines))
    if not shown:
        return ()
    dt = np.dtype(options["dtype"])
    first_rows = _slice(part, 0, shown)
    head = _bce(first_rows, options, reduction, dt)
    grad = _bce_scaled(head.grad, reduction, divisor, dt)
    sigma = np.asarray(head.probs, dtype=np.float64)
    t = np.asarray(first_rows.targets, dtype=np.float64)
    # σ − t as (1 − t) σ(z) − t σ(−z): σ of a confident logit rounds to 1, and σ − t showed 0
    # beside a gradient of −1e-22
    below = np.asarray(bce.sigmoid(-np.asarray(first_rows.logits, dtype=dt)), dtype=np.float64)
    sigma_minus_t = (1 - t) * sigma - t * below
    return tuple(BinaryWorkedSample(
        sample=i, line=None if part.source in part.rows_in else part.lines[i],
        z=np.asarray(part.logits[i], dtype=np.float64), sigma=sigma[i], t=t[i],
        elements=np.asarray(piece.elements[i], dtype=np.float64), sigma_minus_t=sigma_minus_t[i],
        loss=float(piece.per_sample[i]), grad=np.asarray(grad[i], dtype=np.float64),
        scale=divisor if reduction == "mean" else 1.0) for i in range(shown))


_KERNELS = {
    "ce": _Kernel(chunk=_softmax_chunk, worked=_softmax_worked),
    "bce": _Kernel(chunk=_bce_chunk, worked=_bce_worked),
}


def _fsum(values: Iterable[float]) -> float:
    """Returns math.fsum of the values, or inf where the sum passes float64's range: fsum
    raises on a partial sum that overflows, and on inf - inf, which a chunk's _split_sum pair
    beyond float64 gives (its sum is inf, the part left out -inf)."""
    try:
        return math.fsum(values)
    except (OverflowError, ValueError):
        return math.inf


def _split_sum(values: np.ndarray) -> tuple[float, float]:
    """Returns a chunk's sum as a float and the part of it that rounding to a float left out.

    The sum runs in extended precision (80-bit on x86: 11 more bits than float64), so the pair
    carries the chunk's sum nearly exactly and math.fsum of all pairs rounds the whole total
    once: cut into other chunks, the input gives the same total, but where its exact value lies
    within the extended sums' rounding (about 2**-64 of it) of a float64 rounding boundary: it
    may then round to the other side, an ulp away. An exact sum (integer mantissas binned by
    exponent) took 2.3 ms a CSV block against 0.33 ms.
    """
    wide = values.astype(np.longdouble).sum()
    high = float(wide)
    return high, float(wide - np.longdouble(high))


def _argmax_rows(z: np.ndarray) -> np.ndarray:
    """Returns each row's first largest column, as argmax(axis=1), fast for column-major z."""
    n, k = z.shape
    if k > 32 or z.flags.c_contiguous:
        return z.argmax(axis=1)
    best, index = z[:, 0].copy(), np.zeros(n, dtype=np.intp)
    for c in range(1, k):
        column = z[:, c]
        larger = column > best  # strictly: ties keep the first column, as argmax does
        index[larger] = c
        np.maximum(best, column, out=best)
    return index
