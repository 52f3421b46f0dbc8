"""Writes eval's per-sample results block by block: CSV (or TSV), .npy or .parquet, by extension.

Every format holds the same columns, in this order: sample, line, label (with class labels
only), pred (the argmax, softmax cross-entropy only), loss, prob_0..prob_{k-1} and
grad_0..grad_{k-1}; a choice of them (``columns``) writes only those. Every float reads back
bit for bit:

- CSV (any extension but those ``kind`` refuses; tab-separated for ``.tsv``, as the reader
  takes it) spells each float in the fewest digits that read back to the same float64, by
  Polars' writer (about 15 times faster than Python's repr, which picks the same digits but
  switches to exponent notation at other magnitudes: 2.5e-05 is 0.000025 here). float32
  results are written as the float64 they convert to, exactly.
- ``.npy`` is one structured array, fields sample, line, label, pred (int64), loss, prob (k,) and
  grad (k,) in the computation's dtype: ``np.load(path)["grad"]`` is the (n, k) gradient. It is
  written as it streams, its length filled in at the end.
- ``.parquet`` is a table with the CSV's columns in the computation's dtype, streamed by Polars.

Polars' streaming writers (CSV past the first rows, Parquet) run in a thread of their own,
fed frames of many rows copied from the blocks, while the next blocks are computed; .npy
records are written by a thread of their own too.

A block whose start is 0 starts the file over: the reader can restart (a second pass, or the
strict reader taking over), and the file then holds only the last run.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator

import numpy as np

from xent_cli import data
from xent_cli.errors import InputError

if TYPE_CHECKING:
    import polars

    from xent_cli.stream import RowsOut

# (file, column names, how many are whole numbers, the reals' dtype, frames) -> None: writes the
# frames, each (whole numbers (columns, n), reals (columns, n)), to the file in order
FramesWriter = Callable[[BinaryIO, list, int, np.dtype, Iterator], None]

# The first numbers of a CSV file, up to this many, are spelled in Python and the rest by
# Polars: a small file needs no Polars import (160 ms, as long as Python takes to spell some
# 200,000 floats), a large one pays it once.
_PYTHON_FLOATS = 1 << 16
# Numbers per frame handed to Polars (some 12,000 rows of 10 classes). Polars' streaming writer
# spells frames on every core in a thread of its own while the next blocks are computed; a few
# frames are in flight at a time, so memory stays a few megabytes.
_FRAME_FLOATS = 1 << 18
# Past this many columns (1000 classes' probabilities and gradient, and the rest), a frame holds
# few rows, and a Polars frame costs some 6 us a column to make whatever its rows: CSV rows are
# then spelled by Polars from one column of all their numbers, in the writer's thread (50,257
# classes, loss and gradient of 400 rows: 45 s and 2.0 GB through Polars' writer, whose RSS
# grew with every frame). Parquet is not written: its footer describes every column of every
# row group, so it grows with the rows unless a row group holds thousands of rows.
WIDE_COLUMNS = 1 << 11


# Extensions of formats --output does not write: CSV text under such a name would fail, or be
# misread, wherever it is opened next.
_NOT_WRITTEN = (".npz", ".json", ".jsonl", ".ndjson", ".feather", ".arrow", ".ipc", ".xlsx",
                ".xls", ".pkl", ".pickle", ".h5", ".hdf5", ".gz", ".bz2", ".xz", ".zst",
                ".zip") + data.PYTORCH_FILES


def kind(path: str) -> str:
    """Returns the format an output path asks for: 'npy', 'parquet', 'tsv' or 'csv' (any other
    extension); raises InputError for the extension of a format it does not write."""
    suffix = os.path.splitext(path.lower())[1]
    if suffix in _NOT_WRITTEN:
        hint = " (.npy holds every column: np.load(path)['grad'])" if suffix == ".npz" else ""
        raise InputError(f"--output writes .csv, .tsv, .npy or .parquet, not {suffix}{hint}",
                         source=path)
    return {".npy": "npy", ".parquet": "parquet", ".tsv": "tsv"}.get(suffix, "csv")


# The columns of the per-sample file in the order written; prob and grad are one per class.
COLUMNS = ("sample", "line", "label", "pred", "loss", "prob", "grad")
# the whole-number columns; the rest are floats in the computation's dtype
_WHOLE = ("sample", "line", "label", "pred")


def columns(chosen: str | None, *, has_labels: bool, has_predictions: bool) -> tuple[str, ...]:
    """Returns the columns to write, in file order: the comma-separated names chosen, or every
    column the input has. A name that is no column, or one the input has not, is an error."""
    has = {"label": has_labels, "pred": has_predictions}
    if chosen is None:
        return tuple(name for name in COLUMNS if has.get(name, True))
    names = [name.strip() for name in chosen.split(",")]
    for name in names:
        if name not in COLUMNS:
            raise InputError(f"--columns: {name!r} is not one of {', '.join(COLUMNS)}")
    if "label" in names and not has_labels:
        raise InputError("--columns: there is no label column; the targets are one per class")
    if "pred" in names and not has_predictions:
        raise InputError("--columns: there is no pred column for --loss bce, where every "
                         "class is its own prediction")
    return tuple(name for name in COLUMNS if name in names)


@contextlib.contextmanager
def writer(path: str, inputs=(), columns: tuple[str, ...] = COLUMNS,
           classes: int | None = None) -> Iterator[Callable[[RowsOut], None]]:
    """Yields a function that writes RowsOut blocks to path, which appears only on success.

    columns are those to write (see ``columns``), less those the blocks lack: label and pred
    where the input has none, prob and grad where they were not computed. classes, the
    input's k, lets a Parquet file too wide to write be refused before anything is read.
    """
    if classes is not None and kind(path) == "parquet":
        refuse_wide_parquet(classes, columns, path)
    with data.atomic_writer(path, inputs) as text:
        file = text.buffer  # every format writes bytes; nothing goes through the text layer
        out = {"csv": _Csv, "tsv": _Tsv, "npy": _Npy, "parquet": _Parquet}[kind(path)](file, columns)
        try:
            yield out.write
        except BaseException:
            out.close(complete=False)  # the file goes: write nothing more to it
            raise
        out.close()


def refuse_wide_parquet(k: int, columns: tuple[str, ...], path: str | None = None) -> None:
    """Raises InputError where a Parquet file of these columns, k classes, is wider than
    WIDE_COLUMNS."""
    count = len(column_names(k, columns))
    if count > WIDE_COLUMNS:
        per_class = " and ".join(name for name in columns if name in ("prob", "grad"))
        narrow = "loss, pred" if "pred" in columns else "loss"  # --loss bce has no pred
        raise InputError(
            f"--output .parquet would hold {count:,} columns, one per class for {per_class}; "
            f"past {WIDE_COLUMNS:,} the footer of a Parquet file grows with its rows: write .npy "
            f"(a field of {k:,} values a sample) or .csv, or fewer --columns ({narrow})",
            source=path)


def _written(columns: tuple[str, ...], rows: RowsOut) -> tuple[str, ...]:
    """Returns the columns a run writes: those asked for that its blocks have."""
    missing = {"label": rows.labels is None, "pred": rows.predictions is None,
               "prob": rows.probs is None, "grad": rows.grad is None}
    return tuple(name for name in columns if not missing.get(name, False))


def _classes(rows: RowsOut) -> int:
    """Returns a block's number of classes (0 when it carries no column per class)."""
    per_class = rows.probs if rows.probs is not None else rows.grad
    return 0 if per_class is None else per_class.shape[1]


def column_names(k: int, columns: tuple[str, ...]) -> list[str]:
    """Returns the header of a per-sample file: prob and grad become one column per class."""
    names = []
    for name in columns:
        names += [f"{name}_{c}" for c in range(k)] if name in ("prob", "grad") else [name]
    return names


def _whole_numbers(rows: RowsOut, columns: tuple[str, ...], cut: slice = slice(None)
                   ) -> list[np.ndarray]:
    """Returns rows cut of a block's whole-number columns among columns, in file order."""
    start, stop, _ = cut.indices(len(rows.per_sample))
    values = {"sample": lambda: np.arange(rows.start + start, rows.start + stop),
              "line": lambda: _lines(rows, cut), "label": lambda: rows.labels[cut],
              "pred": lambda: rows.predictions[cut]}
    return [values[name]() for name in columns if name in _WHOLE]


def _reals(rows: RowsOut, columns: tuple[str, ...], cut: slice = slice(None)) -> list[np.ndarray]:
    """Returns rows cut of a block's float columns among columns, in file order: the loss as
    (n,), probabilities and gradient as (n, k)."""
    values = {"loss": rows.per_sample, "prob": rows.probs, "grad": rows.grad}
    return [values[name][cut] for name in columns if name in values]


def _lines(rows: RowsOut, cut: slice = slice(None)) -> np.ndarray:
    """Returns a block's file lines as int64 (a range from the fast reader, else a tuple)."""
    lines = rows.lines[cut]
    if isinstance(lines, range):
        return np.arange(lines.start, lines.stop, lines.step, dtype=np.int64)
    return np.fromiter(lines, dtype=np.int64, count=len(lines))


def _emptied(file: BinaryIO) -> None:
    """Starts a file over from its first byte. One still empty, as a run's new file is, is not
    truncated: ext4 writes back a file truncated to 0 as it closes (its guard for files
    replaced by truncation), which held the end of a run writing 748 MB up by 0.3 s."""
    if file.seek(0, os.SEEK_END):
        file.seek(0)
        file.truncate()


class _Framed:
    """A file whose rows go, in frames, to a Polars writer in a thread of its own."""

    def __init__(self, file: BinaryIO, columns: tuple[str, ...]):
        self.file, self.asked = file, columns
        self.frames: _Frames | None = None

    def restart(self) -> None:
        """Drops the run before (what is buffered, and the file's bytes)."""
        self.close(complete=False)
        _emptied(self.file)

    def close(self, complete: bool = True) -> None:
        if self.frames is not None:
            frames, self.frames = self.frames, None
            frames.close(complete)


class _Csv(_Framed):
    """CSV text with a header line, floats in shortest round-trip digits."""

    separator = ","

    def __init__(self, file: BinaryIO, columns: tuple[str, ...]):
        super().__init__(file, columns)
        self.spelled = 0  # numbers written so far, over every run

    def write(self, rows: RowsOut) -> None:
        if rows.start == 0:
            self.restart()
            self.columns = _written(self.asked, rows)
            self.names = column_names(_classes(rows), self.columns)
            self.file.write((self.separator.join(self.names) + "\n").encode())
        self.spelled += len(rows.per_sample) * len(self.names)
        if self.spelled <= _PYTHON_FLOATS:
            self.file.write(_csv_rows(rows, self.columns, self.separator).encode())
            return
        if self.frames is None:
            # float64 always: a float32 spelled as float32 would read back as another float64
            write = (_spelled(self.separator) if len(self.names) > WIDE_COLUMNS
                     else _polars_writer(functools.partial(_sink_csv, separator=self.separator)))
            self.frames = _Frames(self.file, rows, self.columns, np.float64, write)
        self.frames.put(rows)


class _Tsv(_Csv):
    """The same text, tab-separated, as the reader takes a .tsv file."""

    separator = "\t"


def _sink_csv(lazy: polars.LazyFrame, file: BinaryIO, separator: str = ",") -> None:
    # in order: maintain_order is the default
    lazy.sink_csv(file, include_header=False, separator=separator)


def _spelled(separator: str) -> FramesWriter:
    """Returns a frames writer that writes each frame's CSV lines as _spell_frame spells them."""
    def write(file: BinaryIO, names: list[str], whole: int, dtype: np.dtype,
              frames: Iterator[tuple[np.ndarray, np.ndarray]]) -> None:
        for integers, reals in frames:
            file.write(_spell_frame(integers, reals, separator))
    return write


def _spell_frame(integers: np.ndarray, reals: np.ndarray, separator: str) -> bytes:
    """Returns the CSV lines of a frame's columns (whole numbers, then reals, each (columns, n)),
    spelled by Polars as its CSV writer spells them: all numbers of a kind cast to text as one
    column, then joined a row at a time."""
    import polars as pl

    n = reals.shape[1]

    def rows_of(values: np.ndarray):
        text = pl.Series(np.ascontiguousarray(values.T).reshape(-1)).cast(pl.String)
        return text.reshape((n, len(values))).arr.join(separator)

    lines = rows_of(reals)
    if len(integers):
        lines = rows_of(integers) + separator + lines
    return (lines.str.join("\n").item() + "\n").encode()


def _csv_rows(rows: RowsOut, columns: tuple[str, ...], separator: str = ",") -> str:
    """Returns a block's CSV lines spelled in Python exactly as Polars' writer spells them."""
    floats = lambda values: separator.join(map(_spell, values))  # noqa: E731
    cells = [map(str, values.tolist()) for values in _whole_numbers(rows, columns)]
    cells += [map(_spell if values.ndim == 1 else floats, values.tolist())
              for values in _reals(rows, columns)]
    return "".join(separator.join(row) + "\n" for row in zip(*cells))


def _spell(x: float) -> str:
    """Returns the shortest round-trip digits of x as Polars writes them.

    repr picks the same digits; Polars writes NaN, exponents without a leading zero (1e-7),
    and a decimal exponent of -5 positionally (0.000025, where repr writes 2.5e-05).
    """
    text = repr(x)
    if "e-0" not in text:
        return "NaN" if text == "nan" else text
    mantissa, exponent = text.split("e-0")
    if exponent != "5":
        return f"{mantissa}e-{exponent}"
    sign, digits = ("-", mantissa[1:]) if mantissa[0] == "-" else ("", mantissa)
    return f"{sign}0.0000{digits.replace('.', '')}"


class _Frames:
    """Blocks gathered, column by column, into frames of many rows that Polars writes in a thread.

    Each frame owns the arrays it views (the writer holds a few frames at a time), and copies
    the blocks: the caller may reuse its arrays once a block is handed over.
    """

    def __init__(self, file: BinaryIO, rows: RowsOut, columns: tuple[str, ...], dtype,
                 write: FramesWriter):
        self.file, self.columns, self.dtype, self.write = file, columns, np.dtype(dtype), write
        self.names = column_names(_classes(rows), columns)
        self.whole = sum(name in _WHOLE for name in columns)
        self.size = 0
        self.capacity = max(1, _FRAME_FLOATS // max(1, len(self.names) - self.whole))
        self.writer: _Worker | None = None  # started with the first frame
        self._empty()

    def put(self, rows: RowsOut) -> None:
        """Copies a block in, sending each frame that fills up to the writer."""
        at = 0
        while at < len(rows.per_sample):
            at += self._copy(rows, at)
            if self.size == self.capacity:
                self._send()

    def close(self, complete: bool = True) -> None:
        """Sends the last rows (unless the file is being abandoned) and waits for the writer."""
        if complete and self.size:
            self._send()
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close(complete)

    def _empty(self) -> None:
        self.integers = np.empty((self.whole, self.capacity), dtype=np.int64)
        self.reals = np.empty((len(self.names) - self.whole, self.capacity), dtype=self.dtype)

    def _copy(self, rows: RowsOut, at: int) -> int:
        """Copies a block's rows from at on, as many as the frame has room for; returns how many."""
        n = min(len(rows.per_sample) - at, self.capacity - self.size)
        cut, into = slice(at, at + n), slice(self.size, self.size + n)
        for row, values in zip(self.integers, _whole_numbers(rows, self.columns, cut)):
            row[into] = values
        row = 0
        for values in _reals(rows, self.columns, cut):  # the loss (n,), or (n, k) class by class
            width = 1 if values.ndim == 1 else values.shape[1]
            self.reals[row:row + width, into] = values.T
            row += width
        self.size += n
        return n

    def _send(self) -> None:
        frame = self.integers[:, :self.size], self.reals[:, :self.size]
        self.size = 0
        self._empty()  # the arrays are the frame's now
        if self.writer is None:
            self.writer = _Worker(functools.partial(self.write, self.file, self.names, self.whole,
                                                    self.dtype))
        self.writer.put(frame)


class _Npy:
    """One structured .npy array, its header rewritten with the final length at the end.

    Each block is gathered into a records buffer that a thread of its own writes while the
    next blocks are computed: most of the time of a large file is the system copying it into
    the page cache (1.7 GB for 8.5M rows of 10 classes). Written buffers come back for reuse;
    the stream's pieces of about 1.6 MB (8192 rows of 10 classes) fill one in cache, larger
    ones measured slower.
    """

    def __init__(self, file: BinaryIO, columns: tuple[str, ...]):
        import queue

        self.file, self.asked = file, columns
        self.dtype: np.dtype | None = None
        self.free: queue.SimpleQueue = queue.SimpleQueue()  # buffers written, to fill again
        self.writer: _Worker | None = None
        self.n = 0

    def write(self, rows: RowsOut) -> None:
        n = len(rows.per_sample)
        if rows.start == 0:
            self._stop(complete=False)
            self.columns = _written(self.asked, rows)
            real, k = rows.per_sample.dtype.newbyteorder("<"), _classes(rows)
            self.dtype = np.dtype([(name, "<i8") if name in _WHOLE
                                   else (name, real, (k,)) if name in ("prob", "grad")
                                   else (name, real) for name in self.columns])
            self.n = 0
            _emptied(self.file)
            self.file.write(_npy_header(self.dtype, 0))
            self.writer = _Worker(self._write_all)
        records = self._buffer(n)
        values = _whole_numbers(rows, self.columns) + _reals(rows, self.columns)
        for name, column in zip(self.columns, values):
            records[name] = column
        self.writer.put(records)
        self.n += n

    def close(self, complete: bool = True) -> None:
        self._stop(complete)
        if complete and self.dtype is not None:
            self.file.seek(0)
            self.file.write(_npy_header(self.dtype, self.n))
            self.file.seek(0, os.SEEK_END)

    def _buffer(self, n: int) -> np.ndarray:
        """Returns n records to fill: a written buffer if one is back and fits, else a new one."""
        while not self.free.empty():
            records = self.free.get()
            if records.dtype == self.dtype and len(records) >= n:
                return records[:n]
        return np.empty(n, dtype=self.dtype)

    def _write_all(self, blocks: Iterator[np.ndarray]) -> None:
        for records in blocks:
            self.file.write(records.data)
            self.free.put(records.base if records.base is not None else records)

    def _stop(self, complete: bool) -> None:
        """Waits for the records put so far to be written (the writer's error, if complete)."""
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close(complete)


def _npy_header(dtype: np.dtype, n: int) -> bytes:
    """Returns a .npy version 1.0 header for n records of dtype.

    Its size does not depend on n (it has room for any int64), so the header written first
    with n = 0 is overwritten in place at the end; NumPy aligns it to 64 bytes.
    """
    def text(length: int) -> bytes:
        described = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                     "shape": (length,)}
        return repr(described).encode("latin1")

    size = -(-(len(text(2**63)) + 11) // 64) * 64  # magic, version, length, text, newline
    return b"\x93NUMPY\x01\x00" + (size - 10).to_bytes(2, "little") + text(n).ljust(size - 11) + b"\n"


class _Parquet(_Framed):
    """A Parquet file that Polars writes in a thread while blocks arrive."""

    def write(self, rows: RowsOut) -> None:
        if rows.start == 0:
            columns = _written(self.asked, rows)
            refuse_wide_parquet(_classes(rows), columns)
            self.restart()
            self.frames = _Frames(self.file, rows, columns, rows.per_sample.dtype,
                                  _polars_writer(_sink_parquet))
        self.frames.put(rows)


# A Parquet row group holds up to this many rows, fewer of many classes: up to ROW_GROUP_FLOATS
# numbers (64 MB of float64). Left to itself, Polars makes a row group of every frame handed to
# it (131 rows of 1000 classes), and the footer's description of each column of each row group
# grew the RSS with the file (1000 classes, loss and gradient: 50,000 rows 1.1 GB and 3.5 s,
# 100,000 rows 1.7 GB and 7.0 s; in row groups of 8,380 rows 448 MB and 3.3 s, 452 MB and 5.4 s).
ROW_GROUP_ROWS = 1 << 17
ROW_GROUP_FLOATS = 1 << 23


def _sink_parquet(lazy: polars.LazyFrame, file: BinaryIO) -> None:
    # lz4, not Polars' default zstd: gradients and probabilities are floats that barely compress
    # (loss and gradient of 8.5M rows: 751 MB against 717), and zstd took a fifth longer overall
    import polars as pl

    rows = max(1, min(ROW_GROUP_ROWS, ROW_GROUP_FLOATS // lazy.collect_schema().len()))
    try:
        lazy.sink_parquet(file, compression="lz4", row_group_size=rows)
    except pl.exceptions.ComputeError as error:
        # Polars' Parquet writer reports a failed write (a full disk) as a ComputeError; as an
        # OSError it is told as one line, like a failed write of the other formats
        _, io_error, reason = str(error).partition("IO error: ")
        if not io_error:
            raise
        raise OSError(reason) from error


class _Worker:
    """A thread of its own that consumes the items put to it, in order, as one iterator.

    The queue is bounded, so memory stays a few items. An error of the consumer reaches the
    putting thread at its next put, or at close.
    """

    def __init__(self, consume: Callable[[Iterator], None]):
        import queue
        import threading

        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.end, self.ended = object(), False

        def items() -> Iterator:
            while (item := self.queue.get()) is not self.end:
                yield item
            self.ended = True

        def run() -> None:
            try:
                consume(items())
            except BaseException as error:  # noqa: BLE001 - handed to the putting thread
                self.error = error
                # take what is still put, so the putting thread never waits on a full queue, up
                # to the end; the items may still be iterated in a thread the consumer left
                # behind (Polars cancelled by Ctrl-C), which can take the end first: ended says so
                while not self.ended:
                    with contextlib.suppress(queue.Empty):
                        if self.queue.get(timeout=0.05) is self.end:
                            break

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def put(self, item) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(item)

    def close(self, complete: bool = True) -> None:
        """Waits for the items put to be consumed; raises the consumer's error when complete
        (else the caller abandons the file, and the error on its way out is the one to tell)."""
        self.queue.put(self.end)
        self.thread.join()
        if self.error is not None and complete:
            raise self.error


def _polars_writer(sink: Callable[[polars.LazyFrame, BinaryIO], None]) -> FramesWriter:
    """Returns a frames writer that hands the frames to a Polars streaming writer (sink)."""
    def write(file: BinaryIO, names: list[str], whole: int, dtype: np.dtype,
              frames: Iterator[tuple[np.ndarray, np.ndarray]]) -> None:
        import polars as pl
        from polars.io.plugins import register_io_source

        def frame(integers: np.ndarray, reals: np.ndarray) -> pl.DataFrame:
            return pl.DataFrame(dict(zip(names, [*integers, *reals])))  # views, not copies

        schema = frame(np.empty((whole, 0), np.int64),
                       np.empty((len(names) - whole, 0), dtype)).schema
        sink(register_io_source(lambda *_: (frame(*arrays) for arrays in frames), schema=schema),
             file)
    return write
