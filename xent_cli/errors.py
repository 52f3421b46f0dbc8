"""The one exception family of xent, and the exit codes the CLI maps it to."""

from enum import IntEnum


class ExitStatus(IntEnum):
    """Process exit codes; scripts and CI rely on them."""

    OK = 0
    CHECK_FAILED = 1  # a check found a wrong gradient or a false claim
    USAGE = 2  # bad usage or bad input: nothing was computed
    INTERRUPTED = 130  # Ctrl-C
    BROKEN_PIPE = 141  # the reader of stdout went away (| head): 128 + SIGPIPE, as a shell reports it
    BUG = 70  # a bug of xent (sysexits' EX_SOFTWARE): not 1, which a CI reads as a wrong gradient


class XentError(Exception):
    """An error the user can act on; its message names the place and the fix."""


class InputError(XentError):
    """Input that cannot be used: unreadable file, bad cell, wrong shape, value out of range.

    The data layer names ``source`` (a file), ``line`` (1-based, as an editor counts them) or,
    in an array file (.npy, .npz, .parquet), ``row`` (0-based, as NumPy indexes it), and
    ``column`` (a header name); the numeric core, which sees arrays, names ``sample`` (0-based)
    and ``column`` (e.g. "class 2"), and ``in_logits`` where the fault is a logit's or a whole
    row of logits', not a label's or a target's. ``located`` re-raises a core error at its place
    in a file.
    """

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None,
                 sample: int | None = None, column: str | None = None, row: int | None = None,
                 in_logits: bool = False):
        self.message = message
        self.source, self.line, self.sample, self.column = source, line, sample, column
        self.row, self.in_logits = row, in_logits
        placed = line is not None or row is not None
        where = ", ".join(
            part for part in (
                source,
                f"line {line}" if line is not None else None,
                f"row {row}" if row is not None else None,
                f"sample {sample}" if sample is not None and not placed else None,
                f"column {column}" if column is not None else None,
            ) if part
        )
        super().__init__(f"{where}: {message}" if where else message)

    def replace(self, **changes) -> "InputError":
        """Returns this error with some of its fields changed; its text follows them."""
        fields = {"message": self.message, "source": self.source, "line": self.line,
                  "row": self.row, "sample": self.sample, "column": self.column,
                  "in_logits": self.in_logits}
        return InputError(**{**fields, **changes})

    def located(self, *, source: str, line: int | None = None, row: int | None = None,
                column: str | None = None) -> "InputError":
        """Returns the same error placed in a file (line or row, and column, override the core's)."""
        return self.replace(source=source, line=line, row=row, sample=None,
                            column=column if column is not None else self.column)


class ExpressionError(XentError):
    """Text that is not a valid expression of xent's small formula language."""
