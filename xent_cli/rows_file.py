"""Writes eval's per-sample results block by block: CSV, .npy or .parquet, chosen by extension.

Every format holds the same columns: sample, line, label (with class labels only), pred (the
argmax, softmax cross-entropy only), loss, prob_0..prob_{k-1} and grad_0..grad_{k-1}. Every float
reads back bit for bit:

- CSV (the default, any other extension) spells each float in the fewest digits that read back
  to the same float64, by Polars' writer (about 15 times faster than Python's repr, which picks
  the same digits but switches to exponent notation at other magnitudes: 2.5e-05 is 0.000025
  here). float32 results are written as the float64 they convert to, exactly.
- ``.npy`` is one structured array, fields sample, line, label, pred (int64), loss, prob (k,) and
  grad (k,) in the computation's dtype: ``np.load(path)["grad"]`` is the (n, k) gradient. It is
  written as it streams, its length filled in at the end.
- ``.parquet`` is a table with the CSV's columns in the computation's dtype, streamed by Polars.

A block whose start is 0 starts the file over: the reader can restart (a second pass, or the
strict reader taking over), and the file then holds only the last run.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator

import numpy as np

from xent_cli import data

if TYPE_CHECKING:
    import polars

    from xent_cli.stream import RowsOut

# The first probabilities of a file, up to this many, are spelled in Python and the rest by
# Polars: a small file needs no Polars import (160 ms, as long as Python takes to spell some
# 200,000 floats), a large one pays it once.
_PYTHON_FLOATS = 1 << 16


def kind(path: str) -> str:
    """Returns the format an output path asks for: 'npy', 'parquet' or 'csv' (the default)."""
    suffix = os.path.splitext(path.lower())[1]
    return {".npy": "npy", ".parquet": "parquet"}.get(suffix, "csv")


@contextlib.contextmanager
def writer(path: str, inputs=()) -> Iterator[Callable[[RowsOut], None]]:
    """Yields a function that writes RowsOut blocks to path, which appears only on success."""
    with data.atomic_writer(path, inputs) as text:
        file = text.buffer  # every format writes bytes; nothing goes through the text layer
        out = {"csv": _Csv, "npy": _Npy, "parquet": _Parquet}[kind(path)](file)
        try:
            yield out.write
        finally:
            out.close()


def column_names(k: int, has_labels: bool, has_predictions: bool) -> list[str]:
    """Returns the columns of the per-sample file."""
    names = ["sample", "line"] + (["label"] if has_labels else []) + (["pred"] if has_predictions else [])
    return names + ["loss"] + [f"prob_{c}" for c in range(k)] + [f"grad_{c}" for c in range(k)]


def frame(rows: RowsOut, dtype=None) -> polars.DataFrame:
    """Returns a block as a Polars frame; floats in dtype (default: the computation's)."""
    import polars as pl

    n, k = rows.probs.shape
    columns = {"sample": np.arange(rows.start, rows.start + n, dtype=np.int64), "line": _lines(rows)}
    if rows.labels is not None:
        columns["label"] = np.asarray(rows.labels, dtype=np.int64)
    if rows.predictions is not None:
        columns["pred"] = np.asarray(rows.predictions, dtype=np.int64)
    columns["loss"] = np.asarray(rows.per_sample, dtype=dtype)
    columns.update((f"prob_{c}", np.asarray(rows.probs[:, c], dtype=dtype)) for c in range(k))
    columns.update((f"grad_{c}", np.asarray(rows.grad[:, c], dtype=dtype)) for c in range(k))
    return pl.DataFrame(columns)


def _lines(rows: RowsOut) -> np.ndarray:
    """Returns a block's file lines as int64 (a range from the fast reader, else a tuple)."""
    lines = rows.lines
    if isinstance(lines, range):
        return np.arange(lines.start, lines.stop, lines.step, dtype=np.int64)
    return np.fromiter(lines, dtype=np.int64, count=len(lines))


class _Csv:
    """CSV text with a header line, floats in shortest round-trip digits."""

    def __init__(self, file: BinaryIO):
        self.file = file
        self.spelled = 0  # probabilities written so far, over every run

    def write(self, rows: RowsOut) -> None:
        if rows.start == 0:
            self.file.seek(0)
            self.file.truncate()
            names = column_names(rows.probs.shape[1], rows.labels is not None,
                                 rows.predictions is not None)
            self.file.write((",".join(names) + "\n").encode())
        self.spelled += rows.probs.size
        if self.spelled <= _PYTHON_FLOATS:
            self.file.write(_csv_rows(rows).encode())
        else:  # float64 always: a float32 spelled as float32 would read back as another float64
            frame(rows, np.float64).write_csv(self.file, include_header=False)

    def close(self) -> None:
        pass


def _csv_rows(rows: RowsOut) -> str:
    """Returns a block's CSV lines spelled in Python exactly as Polars' writer spells them."""
    floats = lambda values: ",".join(map(_spell, values))  # noqa: E731
    columns = [map(str, range(rows.start, rows.start + len(rows.per_sample))), map(str, rows.lines)]
    columns += [] if rows.labels is None else [map(str, rows.labels.tolist())]
    columns += [] if rows.predictions is None else [map(str, rows.predictions.tolist())]
    columns += [map(_spell, rows.per_sample.tolist()), map(floats, rows.probs.tolist()),
                map(floats, rows.grad.tolist())]
    return "".join(",".join(cells) + "\n" for cells in zip(*columns))


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


class _Npy:
    """One structured .npy array, its header rewritten with the final length at the end."""

    def __init__(self, file: BinaryIO):
        self.file = file
        self.dtype: np.dtype | None = None
        self.n = 0

    def write(self, rows: RowsOut) -> None:
        n, k = rows.probs.shape
        if rows.start == 0:
            fields = [("sample", "<i8"), ("line", "<i8")]
            fields += [("label", "<i8")] if rows.labels is not None else []
            fields += [("pred", "<i8")] if rows.predictions is not None else []
            real = rows.probs.dtype.newbyteorder("<")
            self.dtype = np.dtype(fields + [("loss", real), ("prob", real, (k,)), ("grad", real, (k,))])
            self.n = 0
            self.file.seek(0)
            self.file.truncate()
            self.file.write(_npy_header(self.dtype, 0))
        records = np.empty(n, dtype=self.dtype)
        records["sample"] = np.arange(rows.start, rows.start + n)
        records["line"] = _lines(rows)
        if rows.labels is not None:
            records["label"] = rows.labels
        if rows.predictions is not None:
            records["pred"] = rows.predictions
        records["loss"], records["prob"], records["grad"] = rows.per_sample, rows.probs, rows.grad
        self.file.write(records.data)
        self.n += n

    def close(self) -> None:
        if self.dtype is not None:
            self.file.seek(0)
            self.file.write(_npy_header(self.dtype, self.n))
            self.file.seek(0, os.SEEK_END)


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


class _Parquet:
    """A Parquet file that Polars writes in a thread while blocks arrive."""

    def __init__(self, file: BinaryIO):
        self.file = file
        self.sink: _Sink | None = None

    def write(self, rows: RowsOut) -> None:
        block = frame(rows)
        if rows.start == 0:
            self.close()
            self.file.seek(0)
            self.file.truncate()
            self.sink = _Sink(self.file, block.schema)
        self.sink.put(block)

    def close(self) -> None:
        if self.sink is not None:
            sink, self.sink = self.sink, None
            sink.close()


class _Sink:
    """Polars' streaming Parquet writer fed from a queue, running in a thread of its own."""

    def __init__(self, file: BinaryIO, schema):
        import queue
        import threading

        import polars as pl
        from polars.io.plugins import register_io_source

        self.queue: queue.Queue = queue.Queue(maxsize=2)  # bounded: memory stays a few blocks
        self.error: BaseException | None = None
        self.end, self.ended = object(), False

        def blocks(*_) -> Iterator[pl.DataFrame]:
            while (block := self.queue.get()) is not self.end:
                yield block
            self.ended = True

        def run() -> None:
            try:
                register_io_source(blocks, schema=schema).sink_parquet(file)
            except BaseException as error:  # noqa: BLE001 - handed to the writing thread
                self.error = error
                while not self.ended and self.queue.get() is not self.end:
                    pass  # take what the writer still puts, so it never waits on a full queue

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def put(self, block) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(block)

    def close(self) -> None:
        self.queue.put(self.end)
        self.thread.join()
        if self.error is not None:
            raise self.error
