"""The one exception family of xent, and the exit codes the CLI maps it to."""

from enum import IntEnum


class ExitStatus(IntEnum):
    """Process exit codes; scripts and CI rely on them."""

    OK = 0
    CHECK_FAILED = 1  # a check found a wrong gradient or a false claim
    USAGE = 2  # bad usage or bad input: nothing was computed
    INTERRUPTED = 130  # Ctrl-C


class XentError(Exception):
    """An error the user can act on; its message names the place and the fix."""


class InputError(XentError):
    """Input data that cannot be used: unreadable file, bad cell, wrong shape."""

    def __init__(self, message: str, *, source: str | None = None, row: int | None = None,
                 column: str | None = None):
        self.source, self.row, self.column = source, row, column
        where = ", ".join(
            part for part in (
                source,
                f"row {row}" if row is not None else None,
                f"column {column!r}" if column is not None else None,
            ) if part
        )
        super().__init__(f"{where}: {message}" if where else message)


class ExpressionError(XentError):
    """Text that is not a valid expression of xent's small formula language."""
