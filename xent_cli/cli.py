"""The command-line shell: parse options, call the core, render, map errors to exit codes.

Heavy modules (sympy, the data engines) are imported inside the command that needs them,
so that ``xent --help`` and ``xent eval`` start fast.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import importlib
import io
import os
import re
import sys
from typing import Annotated, Iterator, Optional

import typer
from rich.console import Console
from typer.core import TyperGroup

from xent_cli import __version__
from xent_cli.errors import ExitStatus, XentError

# The exception classes of the Click that Typer runs on (recent Typers vendor their own copy).
click_errors = importlib.import_module(typer.BadParameter.__module__)


# Why the results cannot go to stdout (> /dev/full, a full disk or quota, a vanished device):
# one line, as a full disk under --output is, not a traceback.
_UNWRITABLE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}


def _unwritable(error: OSError) -> str:
    """Returns the one line that says why the results could not be written."""
    return f"Error: the output cannot be written: {error.strerror}"


def _own_function_hint(error: Exception) -> str:
    """Returns a usage error's message; --loss given a FILE.py:NAME points to --loss-fn."""
    message = error.format_message()
    given = re.search(r"'([^']*:[^']*)' is not one of", message)
    if getattr(getattr(error, "param", None), "name", None) != "loss" or given is None:
        return message
    return (f"{message.rstrip('.')}; your own loss function is checked with xent check "
            f"--loss-fn {given.group(1)}")


class OneLineErrors(TyperGroup):
    """Reports a usage error in one line on stderr, like every other xent error, and exits 2."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click_errors.NoArgsIsHelpError as error:
            error.show()  # its message is the help text
            code = error.exit_code
        except click_errors.UsageError as error:
            command = error.ctx.command_path if error.ctx else "xent"
            print(f"Error: {_own_function_hint(error)} (see '{command} --help')", file=sys.stderr)
            code = ExitStatus.USAGE
        except click_errors.ClickException as error:
            error.show()
            code = error.exit_code
        except typer.Abort:  # Typer's own class: its vendored Click has no Abort
            code = ExitStatus.INTERRUPTED
        except OSError as error:
            if error.errno not in _UNWRITABLE:
                raise  # a bug of ours: the core turns what it reads and writes into XentError
            print(_unwritable(error), file=sys.stderr)
            code = ExitStatus.USAGE
        if not standalone_mode:
            return code
        sys.exit(code or 0)

    def invoke(self, ctx):
        """Runs the command; Ctrl-C outside its user_errors (while its results print) is told as
        inside: 'Interrupted.' and exit 130."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            print("Interrupted.", file=sys.stderr)
            raise typer.Exit(ExitStatus.INTERRUPTED) from None


app = typer.Typer(
    cls=OneLineErrors,
    name="xent",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


# Off a terminal, Rich renders at this width whatever COLUMNS says: piped or redirected output
# is the same bytes everywhere (and the golden files' width).
PIPE_WIDTH = 100


def stdout() -> Console:
    """Returns the console for results."""
    return _console(stderr=False)


def stderr() -> Console:
    """Returns the console for diagnostics and progress."""
    return _console(stderr=True)


class _Console(Console):
    """A Rich console whose broken pipe exits 141, not 1: 1 says that a check failed."""

    def on_broken_pipe(self) -> None:
        try:
            super().on_broken_pipe()  # quiets the console and sends the rest to /dev/null
        except SystemExit:
            raise SystemExit(ExitStatus.BROKEN_PIPE) from None


# emoji=False, markup=False: a file or column named ':smile:' or '[red]z0' is text to show as
# written (the renderers style with Style objects, never with markup)
AS_WRITTEN = dict(highlight=False, emoji=False, markup=False)


def _console(stderr: bool) -> Console:
    """Returns a console without escape codes under NO_COLOR or TERM=dumb, even with FORCE_COLOR."""
    plain = bool(os.environ.get("NO_COLOR")) or os.environ.get("TERM") == "dumb"
    console = _Console(stderr=stderr, color_system=None if plain else "auto", **AS_WRITTEN)
    if not console.is_terminal:
        console.width = PIPE_WIDTH
    return console


MESSAGE_CHARS = 400  # an error message longer than this is shown by its two ends


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turns XentError into one line on stderr and exit 2; Ctrl-C into exit 130.

    Any other exception is a bug of ours and keeps its traceback.
    """
    try:
        yield
    except XentError as error:
        # one line even when the message quotes a library's multi-line text (Polars, NumPy),
        # and a readable one when it quotes a megabyte of user input
        message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        if len(message) > MESSAGE_CHARS:
            half = MESSAGE_CHARS // 2
            message = f"{message[:half]} … ({len(message) - 2 * half:,} characters) … {message[-half:]}"
        stderr().print(f"Error: {message}", markup=False, soft_wrap=True)
        raise typer.Exit(ExitStatus.USAGE) from None
    except KeyboardInterrupt:
        stderr().print("Interrupted.", markup=False)
        raise typer.Exit(ExitStatus.INTERRUPTED) from None


def _delimiter(text: str | None) -> str | None:
    """Returns the --delimiter character ('\\t' spelled out means a tab); more is an error."""
    if text == "\\t":
        return "\t"
    if text is not None and len(text) != 1:
        tab = "; for a tab, give '\\t'" if "tab" in text.lower() else ""
        raise XentError(f"--delimiter must be one character, got {text!r}{tab}")
    return text


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"xent {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Derive, evaluate and verify the softmax cross-entropy loss and its gradient.

    \b
    Examples:
      xent derive --k 3
      xent eval examples/logits_k3.csv
      xent check --grad-fn examples/my_grad.py:grad
    """


class Loss(str, enum.Enum):
    """The loss a command works on: eval, derive and check share the option."""

    ce = "ce"
    bce = "bce"


LOSS_HELP = "ce: softmax cross-entropy; bce: sigmoid binary cross-entropy per class (multi-label)"

# Options that several commands take word for word (Typer copies each per command).
LossOption = Annotated[Loss, typer.Option(help=LOSS_HELP)]
LabelColOption = Annotated[str, typer.Option(metavar="NAME", help="The name of the label column.")]
PosWeightOption = Annotated[Optional[str], typer.Option(
    metavar="W0,W1,...",
    help="--loss bce only: per-class weights of the positive term, as PyTorch's pos_weight= "
         "(or @FILE, as --weight).")]
LabelSmoothingOption = Annotated[float, typer.Option(
    min=0.0, max=1.0, metavar="EPS", help="Label smoothing in [0, 1], as PyTorch's.")]


# --- xent eval --------------------------------------------------------------------------------


class Reduction(str, enum.Enum):
    mean = "mean"
    sum = "sum"
    none = "none"


class Dtype(str, enum.Enum):
    float64 = "float64"
    float32 = "float32"


class EvalFormat(str, enum.Enum):
    rich = "rich"
    json = "json"
    csv = "csv"


@app.command("eval")
def eval_command(
    logits: Annotated[str, typer.Argument(
        metavar="LOGITS",
        help="CSV of logits with a header row, one column per class, plus a 'label' column "
             "(or --labels, --targets); .tsv, .npy, .npz and .parquet by extension; '-' reads "
             "stdin.", show_default=False)],
    *,
    loss: LossOption = Loss.ce,
    label_col: LabelColOption = "label",
    labels: Annotated[Optional[str], typer.Option(
        metavar="FILE",
        help="Labels in a file of their own: one CSV column (with or without header), an "
             ".npy or .npz array, or a .parquet table of one column (of several: the one "
             "--label-col names).")] = None,
    targets: Annotated[Optional[str], typer.Option(
        metavar="FILE",
        help="Soft targets: a CSV with a header and one probability column per class, an "
             ".npy or .npz array, or a .parquet table of a column per class; with --loss bce, "
             "one 0/1 or probability in [0, 1] per class.")] = None,
    delimiter: Annotated[Optional[str], typer.Option(
        metavar="CHAR",
        help="The cell delimiter ('\\t' for tab); default ',' or tab for .tsv files.")] = None,
    weight: Annotated[Optional[str], typer.Option(
        metavar="W0,W1,...",
        help="Per-class weights w0,w1,... as PyTorch's weight=, or @FILE: a 1-D .npy, or text of "
             "numbers parted by commas, spaces or lines.")] = None,
    pos_weight: PosWeightOption = None,
    ignore_index: Annotated[int, typer.Option(
        metavar="N",
        help="Samples with this label add no loss or gradient and are not counted.")] = -100,
    label_smoothing: LabelSmoothingOption = 0.0,
    reduction: Annotated[Reduction, typer.Option(help="How per-sample losses combine.")] = Reduction.mean,
    dtype: Annotated[Dtype, typer.Option(help="The floating-point type of the computation.")] = Dtype.float64,
    show: Annotated[int, typer.Option(
        min=0, metavar="N", help="Show the step-by-step arithmetic of the first N samples (0 hides it).")] = 3,
    output_format: Annotated[EvalFormat, typer.Option(
        "--format", help="rich (tables), json (one object) or csv (header and one row).")] = EvalFormat.rich,
    output: Annotated[Optional[str], typer.Option(
        metavar="PATH",
        help="Write a per-sample CSV (label, pred, loss, prob_c, grad_c) to this path, atomically; "
             "for --loss bce, loss is the sample's sum over classes and prob_c = σ(z_c). "
             "A .tsv path is tab-separated; a .npy or .parquet path writes that binary format "
             "instead (several times faster).")] = None,
    columns: Annotated[Optional[str], typer.Option(
        metavar="NAME,...",
        help="The columns --output writes, of sample, line, label, pred, loss, prob, grad (prob "
             "and grad: one per class), in that order; default all the input has. What is not "
             "written is not computed.")] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Hide the progress bar (it shows only when stderr is a terminal).")] = False,
) -> None:
    """Evaluate the cross-entropy loss and its gradient on a file of logits, as PyTorch would.

    Class c is the c-th logit column. The gradient is d(loss)/dz, what logits.grad holds after
    backward() on the reduced loss: (p − y), scaled by the weights and the reduction.
    The file is read in chunks, so it may be larger than memory; a progress bar shows on
    stderr when it is a terminal. Besides CSV: .npy (memory-mapped; labels from --labels or
    targets from --targets), .npz (arrays 'logits' and 'labels' or 'targets') and .parquet.

    --loss bce is PyTorch's binary_cross_entropy_with_logits: every class its own yes/no
    question, a target per class from --targets, the gradient σ(z) − t, 'mean' over all
    N × k elements; exact match and Hamming loss take the place of accuracy.

    \b
    Examples:
      xent eval examples/logits_k3.csv
      xent eval examples/digits_logits.csv --show 0 --format json
      xent eval logits.csv --labels labels.csv --weight 1,2,1 --output per_sample.csv
      xent eval big.csv --quiet --output grad.npy --columns loss,grad
      xent eval logits.npy --labels labels.npy --quiet
      xent eval examples/multilabel_logits.csv --loss bce --targets examples/multilabel_targets.csv
    """
    # eval does no linear algebra, and OpenBLAS's idle worker threads would spin for about 0.1
    # CPU s after NumPy's import, on the cores the parser needs. A user's own setting wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from xent_cli import data, stream
    from xent_cli.render import eval as render

    with user_errors():
        if labels is not None and targets is not None:
            raise XentError("--labels and --targets exclude each other: give one")
        _check_loss_options(loss, logits, labels, targets, pos_weight, ignore_index,
                            label_smoothing, label_col)
        delimiter = _delimiter(delimiter)
        if output is not None:
            from xent_cli import rows_file

            data.check_output_path(output, [logits, labels, targets])
            rows_file.kind(output)  # a format it does not write is told before the input is read
        elif columns is not None:
            raise XentError("--columns chooses the columns of --output: give --output too")
        if columns is not None:  # a misspelt name is told before a large input is read
            rows_file.columns(columns, has_labels=targets is None, has_predictions=loss is Loss.ce)
        min_classes = _min_classes(loss)
        reading = dict(label_col=label_col, labels_path=labels, targets_path=targets,
                       delimiter=delimiter, min_classes=min_classes, name=logits)
        with stream.stdin_copied(logits, beside=(labels, targets),
                                 progress=lambda: _copy_progress(quiet)) as readable:
            source = stream.open_source(readable, **reading)
            k = len(source.class_names)
            options = dict(loss=loss.value,
                           weight=None if weight is None else data.parse_weights(
                               weight, k, class_names=source.class_names),
                           pos_weight=_pos_weights(pos_weight, k, source.class_names),
                           ignore_index=ignore_index, label_smoothing=label_smoothing,
                           reduction=reduction.value, dtype=dtype.value, show=show,
                           fallback=lambda: stream.strict_source(readable, **reading))
            with _eval_progress(source, quiet) as progress:
                if output is None:
                    summary = stream.evaluate(source, progress=progress, **options)
                else:
                    written = rows_file.columns(columns, has_labels=source.has_labels,
                                                has_predictions=loss is Loss.ce)
                    with rows_file.writer(output, [logits, labels, targets], written,
                                          classes=k) as write:
                        summary = stream.evaluate(source, progress=progress, rows=write,
                                                  rows_with=written, **options)
    for note in summary.notes:  # a diagnostic: stdout keeps the results alone
        stderr().print(f"Note: {note}", markup=False, soft_wrap=True)
    console = stdout()
    if output_format is EvalFormat.json:
        console.out(render.to_json(summary), highlight=False)
    elif output_format is EvalFormat.csv:
        console.out(render.to_csv(summary), end="", highlight=False)
    else:
        console.print(render.summary_table(summary))
        if summary.worked:
            console.print()
            console.print(render.steps(summary))


def _min_classes(loss: Loss) -> int:
    """Returns the fewest logit columns a loss takes: one sigmoid column is a binary classifier."""
    return 1 if loss is Loss.bce else 2


def _check_loss_options(loss: Loss, logits: str | None, labels: str | None, targets: str | None,
                        pos_weight: str | None, ignore_index: int,
                        label_smoothing: float, label_col: str = "label") -> None:
    """Refuses the eval and check options that do not apply to the chosen loss; logits None
    (check's random inputs, which draw their own targets) needs no --targets."""
    if loss is Loss.ce:
        if pos_weight is not None:
            raise XentError("--pos-weight applies to --loss bce only")
        return
    for given, option in ((labels is not None, "--labels"),
                          (label_col != "label", "--label-col"),
                          (ignore_index != -100, "--ignore-index"),
                          (label_smoothing != 0, "--label-smoothing")):
        if given:
            # a binary classifier's labels are its one class's targets: the same file serves
            instead = (f": a binary classifier's 0/1 labels are targets, --targets {labels} "
                       f"(a CSV with a header line)"
                       if option == "--labels" else " (--targets FILE)")
            raise XentError(f"{option} does not apply to --loss bce, which takes a target per "
                            f"class{instead}")
    if logits is not None and targets is None and not logits.lower().endswith(".npz"):
        raise XentError("--loss bce needs --targets FILE: a CSV with a header and one 0/1 or "
                        "probability column per class (for a binary classifier, its 0/1 labels)")


def _pos_weights(text: str | None, k: int, class_names=None) -> tuple[float, ...] | None:
    """Returns --pos-weight's k values, read as --weight's are."""
    from xent_cli import data

    return None if text is None else data.parse_weights(text, k, option="--pos-weight",
                                                        class_names=class_names)


@contextlib.contextmanager
def _copy_progress(quiet: bool):
    """Yields a callback showing how much of stdin has been copied, or None when it would not be
    seen or stdin is the terminal itself (someone typing rows): a stream has no size to show a
    bar against."""
    console = stderr()
    typed = sys.stdin is not None and sys.stdin.isatty()
    if quiet or typed or not console.is_terminal:
        yield None
        return
    from rich import progress as rich_progress

    with rich_progress.Progress(rich_progress.TextColumn("reading stdin"),
                                rich_progress.DownloadColumn(),
                                rich_progress.TransferSpeedColumn(),
                                console=console, transient=True) as bar:
        task = bar.add_task("stdin", total=None)
        yield lambda copied: bar.update(task, completed=copied)


@contextlib.contextmanager
def _eval_progress(source, quiet: bool):
    """Yields a progress callback drawing a bar on stderr, or None when it would not be seen."""
    console = stderr()
    if quiet or not console.is_terminal:
        yield None
        return
    from rich import progress as rich_progress

    columns = [rich_progress.BarColumn(), rich_progress.TaskProgressColumn()]
    if source.unit == "bytes":
        columns += [rich_progress.DownloadColumn(), rich_progress.TransferSpeedColumn()]
    columns += [rich_progress.TextColumn("{task.fields[rate]}"),
                rich_progress.TimeRemainingColumn()]
    with rich_progress.Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("eval", total=source.size, rate="")

        def update(done: int, total: int, samples: int) -> None:
            elapsed = bar.tasks[0].elapsed or 0
            rate = f"{samples / elapsed:,.0f} rows/s" if elapsed > 0 else ""
            bar.update(task, completed=done, total=total, rate=rate)

        yield update


# --- xent check -------------------------------------------------------------------------------


class Method(str, enum.Enum):
    central = "central"
    complex = "complex"
    richardson = "richardson"


class CheckFormat(str, enum.Enum):
    rich = "rich"
    json = "json"


@app.command("check")
def check_command(
    ctx: typer.Context,
    logits: Annotated[Optional[str], typer.Argument(
        metavar="LOGITS",
        help="Logits read exactly as 'xent eval' reads them (CSV, .npy, .npz, .parquet); without "
             "them, random inputs (--random, --k, --seed).", show_default=False)] = None,
    *,
    loss: LossOption = Loss.ce,
    grad_fn: Annotated[Optional[str], typer.Option(
        metavar="FILE.py:NAME",
        help="Your gradient: NAME(z, y) -> (N, k) array, row i the gradient of sample i's loss; "
             "z is (N, k) float, y (N,) int labels or (N, k) soft targets (--loss bce: (N, k) "
             "targets in [0, 1]).")] = None,
    loss_fn: Annotated[Optional[str], typer.Option(
        metavar="FILE.py:NAME",
        help="Your loss: NAME(z, y) -> (N,) per-sample losses; compared with xent's, then "
             "differentiated numerically in its place.")] = None,
    expr: Annotated[Optional[str], typer.Option(
        metavar="EXPR",
        help="A gradient formula in xent's expression language, e.g. \"p - y\" (never Python).")]
        = None,
    random: Annotated[int, typer.Option(
        "--random", min=1, metavar="N", help="Random inputs: N samples.")] = 8,
    k: Annotated[int, typer.Option(
        "--k", min=1, metavar="K", help="Random inputs: K classes (2 or more; bce from 1).")] = 4,
    seed: Annotated[int, typer.Option(metavar="S", help="Random inputs: the seed.")] = 0,
    label_col: LabelColOption = "label",
    labels: Annotated[Optional[str], typer.Option(
        metavar="FILE", help="Labels in a file of their own, as for eval.")] = None,
    targets: Annotated[Optional[str], typer.Option(
        metavar="FILE", help="Soft targets, as for eval.")] = None,
    delimiter: Annotated[Optional[str], typer.Option(
        metavar="CHAR", help="The cell delimiter ('\\t' for tab).")] = None,
    weight: Annotated[Optional[str], typer.Option(
        metavar="W0,W1,...", help="Per-class weights, as PyTorch's weight= (or @FILE, as for "
                                  "eval).")] = None,
    pos_weight: PosWeightOption = None,
    ignore_index: Annotated[int, typer.Option(
        metavar="N", help="Samples with this label have loss and gradient 0.")] = -100,
    label_smoothing: LabelSmoothingOption = 0.0,
    dtype: Annotated[Dtype, typer.Option(
        help="float32 passes z to your functions as float32 and uses float32 tolerances (chosen "
             "too when your gradient comes back float32).")] = Dtype.float64,
    method: Annotated[Method, typer.Option(
        help="central differences, complex step (exact to round-off; your loss must be "
             "complex-safe) or richardson (extrapolated, with an error estimate).")]
        = Method.central,
    eps: Annotated[Optional[float], typer.Option(
        min=0.0, metavar="H",
        help="The step h (scaled by min(max(1, |z|), 30) except for complex). Default by "
             "method and the precision of the function differentiated (xent's is float64), "
             "float64/float32: central 6e-6/5e-3, complex 1e-20, richardson 1e-3/5e-2.")] = None,
    rtol: Annotated[Optional[float], typer.Option(
        min=0.0, metavar="R",
        help="Relative tolerance. Default central 1e-5/1e-3, complex 1e-9/1e-4, "
             "richardson 1e-8/1e-3.")] = None,
    atol: Annotated[Optional[float], typer.Option(
        min=0.0, metavar="A",
        help="Absolute tolerance. Default central 1e-8/1e-3, complex 1e-12/1e-5, "
             "richardson 1e-10/1e-3.")] = None,
    hessian: Annotated[bool, typer.Option(
        "--hessian", help="Also check the per-sample Hessian S·(diag(p) − ppᵀ) (--loss bce: "
                          "diagonal, S·σ(1 − σ)), or --hess-fn, against finite differences of "
                          "the gradient.")] = False,
    hess_fn: Annotated[Optional[str], typer.Option(
        metavar="FILE.py:NAME", help="Your Hessian: NAME(z, y) -> (N, k, k); implies --hessian.")]
        = None,
    sweep: Annotated[bool, typer.Option(
        "--sweep", help="Show the error against the step h over 1e-1 … 1e-13, and the best h.")]
        = False,
    plot: Annotated[Optional[str], typer.Option(
        metavar="FILE.png", help="With --sweep: a log-log plot (needs matplotlib).")] = None,
    directional: Annotated[bool, typer.Option(
        "--directional", help="Check one random directional derivative per sample (2 loss "
                              "evaluations whatever k): for very large inputs.")] = False,
    symbolic: Annotated[Optional[bool], typer.Option(
        "--symbolic/--no-symbolic", show_default=False,
        help="Without --grad-fn or --expr, also compare with the symbolic gradient of 'xent "
             "derive' (k <= 12; loads SymPy, about 0.5 s more). Default: on up to 1000 samples.")]
        = None,
    show: Annotated[int, typer.Option(
        min=0, metavar="N", help="Show at most N failing entries.")] = 20,
    output_format: Annotated[CheckFormat, typer.Option(
        "--format", help="rich (tables) or json (one object: passed, method, max_abs_err, "
                         "max_rel_err, failures, ...).")] = CheckFormat.rich,
) -> None:
    """Verify a cross-entropy gradient numerically, entry by entry: yours or xent's.

    Without --grad-fn or --expr, xent's analytic gradient is checked against finite differences
    and against the symbolic gradient of 'xent derive': three independent routes. The loss is
    each sample's cross-entropy with the given weights, smoothing and ignore-index (no
    reduction), so row i of a gradient is sample i's. Exit 0: right; 1: wrong (a table names
    each failing entry: sample, class, analytic and numeric value; a typical mistake, such as
    label smoothing left out of the options or labels one class off, is named when it explains
    every entry); 2: the check cannot run.

    --loss bce checks the sigmoid binary cross-entropy, each sample's loss summed over its
    classes (gradient σ(z) − y, with --weight and --pos-weight as PyTorch's): random inputs
    get multi-hot targets, a file its targets from --targets; in --expr, p means σ(z).

    \b
    Examples:
      xent check
      xent check --grad-fn examples/my_grad.py:grad --method complex
      xent check --grad-fn examples/my_grad.py:seed_grad --random 4 --k 3   # exit 1: the seed's Case 1
      xent check examples/logits_k3.csv --expr "p - y" --hessian
      xent check --sweep --plot sweep.png   # needs matplotlib: pip install 'xent-cli[plot]'

    \b
    Binary cross-entropy:
      xent check --loss bce --grad-fn examples/my_bce_grad.py:grad --hessian
      xent check --loss bce --grad-fn examples/my_bce_grad.py:softmax_grad   # exit 1: softmax's gradient
      xent check examples/multilabel_logits.csv --loss bce --targets examples/multilabel_targets.csv --expr "p - y"
    """
    from xent_cli import data, gradcheck, stream, usercode
    from xent_cli.render import check as render

    with user_errors():
        if grad_fn is not None and expr is not None:
            raise XentError("--grad-fn and --expr exclude each other: give one")
        if labels is not None and targets is not None:
            raise XentError("--labels and --targets exclude each other: give one")
        if symbolic and (grad_fn is not None or expr is not None):
            raise XentError(f"--symbolic compares xent's own gradient with SymPy's; "
                            f"{'--grad-fn' if grad_fn is not None else '--expr'} is checked "
                            f"against finite differences: drop --symbolic")
        if logits is None and (labels is not None or targets is not None):
            raise XentError(f"{'--labels' if labels is not None else '--targets'} belongs to a "
                            f"LOGITS file; without one, check draws random inputs and targets")
        given = [option for option, name in (("--random", "random"), ("--k", "k"))
                 if ctx.get_parameter_source(name).name != "DEFAULT"]
        if logits is not None and given:
            options = " and ".join(given)
            raise XentError(f"{options} {'shape' if len(given) > 1 else 'shapes'} random inputs; "
                            f"{logits} gives its own samples and classes: drop {options}")
        _check_loss_options(loss, logits, labels, targets, pos_weight, ignore_index,
                            label_smoothing, label_col)
        if eps == 0:
            raise XentError("--eps must be greater than 0: a step of 0 divides by 0")
        if plot is not None:  # the name and the place, before the check runs
            sweep = True
            render.plot_format(plot)
            data.check_output_path(plot, [logits, labels, targets])
        if sweep and directional:
            raise XentError("--sweep and --directional exclude each other: the sweep needs every "
                            "entry")
        options = dict(loss=loss.value, ignore_index=ignore_index,
                       label_smoothing=label_smoothing, dtype=dtype.value)
        if logits is not None:
            loaded = stream.read_input(logits, label_col=label_col, labels_path=labels,
                                       targets_path=targets, delimiter=_delimiter(delimiter),
                                       min_classes=_min_classes(loss))
            data.check_row_index(loaded)  # as eval refuses it: a saved index is no class
            classes = len(loaded.class_names)
            weights = None if weight is None else data.parse_weights(weight, classes)
            problem = gradcheck.file_problem(loaded, weight=weights,
                                             pos_weight=_pos_weights(pos_weight, classes),
                                             **options)
        else:
            if k < _min_classes(loss):
                raise XentError(f"--k {k}: cross-entropy needs at least 2 classes"
                                f"{data.BINARY_HINT}")
            weights = None if weight is None else data.parse_weights(weight, k)
            problem = gradcheck.random_problem(random, k, seed, weight=weights,
                                               pos_weight=_pos_weights(pos_weight, k), **options)
        modules = {}  # a file named by several options is imported once
        functions = {name: None if spec is None else usercode.load(spec, option, modules)
                     for name, spec, option in (("grad", grad_fn, "--grad-fn"),
                                                ("loss", loss_fn, "--loss-fn"),
                                                ("hess", hess_fn, "--hess-fn"))}
        note = None if directional else gradcheck.slow_check_note(
            problem.n, problem.k, method.value, hessian=hessian or hess_fn is not None)
        if note:  # a diagnostic, before the wait: stdout keeps the report alone
            stderr().print(f"Note: {note}", markup=False, soft_wrap=True)
        outcome = gradcheck.run(problem, **functions, expr=expr, method=method.value,
                                dtype=dtype.value, eps=eps, rtol=rtol, atol=atol,
                                hessian=hessian, sweep=sweep, directional=directional,
                                symbolic=symbolic, seed=seed)
        if plot is not None:  # whole or not at all: a failed write leaves no partial image
            data.write_atomic(plot, render.plot_sweep(outcome.gradient, plot),
                              inputs=(logits, labels, targets))

    console = stdout()
    if output_format is CheckFormat.json:
        console.out(render.to_json(outcome.gradient, outcome.hessian), highlight=False)
    else:
        console.print(render.render(outcome.gradient, limit=show))
        if outcome.hessian is not None:
            console.print()
            console.print(render.render(outcome.hessian, limit=show))
    if not outcome.passed:
        raise typer.Exit(ExitStatus.CHECK_FAILED)


# --- xent derive ------------------------------------------------------------------------------


class DeriveFormat(str, enum.Enum):
    rich = "rich"
    markdown = "markdown"
    latex = "latex"
    json = "json"


@app.command("derive")
def derive_command(
    *,
    k: Annotated[int, typer.Option("--k", metavar="K", help="The number of classes (2..500, soft "
                                   "targets too; 60 with --hessian; bce from 1).")] = 3,
    loss: LossOption = Loss.ce,
    label: Annotated[Optional[int], typer.Option(
        metavar="L", help="The true class ℓ, 1-based (default 1; ce only); with --soft, the j "
        "whose steps are shown.", show_default=False)] = None,
    soft: Annotated[bool, typer.Option("--soft", help="General targets y1…yK with Σy = 1 (ce only; "
                                       "bce's targets are always general).")] = False,
    hessian: Annotated[bool, typer.Option(
        "--hessian", help="Also the Hessian: diag(p) − p pᵀ; for bce diag(σ(z)(1 − σ(z))).")] = False,
    at: Annotated[Optional[str], typer.Option(
        metavar="Z1,Z2,...", help="Also evaluate every step at these K logits.")] = None,
    y: Annotated[Optional[str], typer.Option(
        "--y", metavar="Y1,Y2,...",
        help="bce with --at: the K targets, each in [0, 1], to evaluate at (else y stays a "
             "symbol).")] = None,
    claim: Annotated[Optional[str], typer.Option(
        metavar="EXPR", help="Check a claimed formula for dCE/dz_j instead (exit 1 if false; "
                             "ce only), e.g. 'p_j - y_j', 'j != l: p_j': names p_j y_j z_j, "
                             "p_l y_l z_l (the label's), k; exp, log, sum(...); [j = l] is 1 "
                             "when j = ℓ.")] = None,
    full: Annotated[bool, typer.Option("--full", help="Show every row and whole expressions.")] = False,
    output_format: Annotated[DeriveFormat, typer.Option(
        "--format", help="rich, markdown, latex or json.")] = DeriveFormat.rich,
    output: Annotated[Optional[str], typer.Option(
        metavar="PATH", help="Write what stdout would show to this file instead, atomically: "
                             "nothing is written when the input is refused.")] = None,
) -> None:
    """Derive the gradient of the softmax cross-entropy step by step, every step verified.

    Symbols are z1…zK, S = Σ exp(z_n) and p_n = exp(z_n)/S. The gradient is p − y; the seed
    blog's Case 1 (dCE/dz_j = 0 for j ≠ ℓ) is checked and shown failing.

    --loss bce derives the sigmoid binary cross-entropy, p_n = σ(z_n), each target y_n in
    [0, 1] on its own: gradient σ(z) − y, a diagonal Hessian, how it differs from softmax, and
    softmax's gradient carried over, shown failing.

    \b
    Examples:
      xent derive --k 3
      xent derive --k 4 --label 2 --at 1,0,-1,2 --format markdown
      xent derive --k 3 --soft --hessian --format json
      xent derive --k 3 --claim "p_j - y_j"
      xent derive --k 3 --format latex --output case1.tex
      xent derive --loss bce --k 3 --hessian --at 1,0,-1 --y 1,0,0.5
    """
    from xent_cli import derivation as core
    from xent_cli.render import derivation as render

    console = stdout()
    with user_errors():
        if output is not None:  # a wrong path is told before a derivation of seconds
            from xent_cli.data import check_output_path

            check_output_path(output)
        if loss is Loss.bce:
            from xent_cli import derivation_bce

            for given, option in ((label is not None, "--label"), (soft, "--soft"),
                                  (claim is not None, "--claim")):
                if given:
                    raise XentError(f"{option} applies to --loss ce only: bce's targets are "
                                    "y1…yK, each in [0, 1] on its own"
                                    + ("; check a bce gradient with 'xent check --loss bce "
                                       "--expr'" if option == "--claim" else ""))
            derivation_bce.check_size(k, hessian)
            point = None if at is None else core.parse_at(at, k)
            if y is not None and at is None:
                raise XentError("--y gives the targets at --at: give --at too")
            targets = None if y is None else derivation_bce.parse_targets(y, k)
            result = derivation_bce.derive_bce(k, hessian=hessian, at=point, at_targets=targets)
        else:
            if y is not None:
                raise XentError("--y applies to --loss bce only: softmax's target is --label "
                                "(or --soft)")
            label = 1 if label is None else label
            core.check_size(k, label, hessian)
            if claim is not None:
                for given, option, why in (
                        (at is not None, "--at", "which is checked for every z; drop --claim to "
                                               "see each step at --at"),
                        (hessian, "--hessian", "a formula for dCE/dz_j; drop --claim to derive "
                                               "the Hessian")):
                    if given:
                        raise XentError(f"{option} does not apply to --claim, {why}")
                from xent_cli.claims import check_claim
                from xent_cli.render import claim as claim_render

                verdict = check_claim(claim, k=k, label=label, soft=soft)
            else:
                point = None if at is None else core.parse_at(at, k)
                result = core.derive(k, label, soft=soft, hessian=hessian, at=point)
    if claim is not None:
        shown = {DeriveFormat.json: lambda: claim_render.claim_to_json(verdict) + "\n",
                 DeriveFormat.markdown: lambda: claim_render.claim_to_markdown(verdict),
                 DeriveFormat.latex: lambda: claim_render.claim_to_latex(verdict),
                 DeriveFormat.rich: lambda: claim_render.claim_to_rich(verdict)}[output_format]()
        failed = not verdict.holds
    else:
        shown = {DeriveFormat.json: lambda: render.to_json(result) + "\n",
                 DeriveFormat.markdown: lambda: render.to_markdown(result, full=full),
                 DeriveFormat.latex: lambda: render.to_latex(result),
                 DeriveFormat.rich: lambda: render.to_rich(result, full=full)}[output_format]()
        failed = not result.verified
    if output is None and isinstance(shown, str):
        console.out(shown, end="")
    elif output is None:
        console.print(shown)
    else:
        from xent_cli.data import write_atomic

        with user_errors():
            write_atomic(output, _plain_text(shown).encode())
    if failed:
        raise typer.Exit(ExitStatus.CHECK_FAILED)


def _plain_text(shown) -> str:
    """Returns text as is, and a Rich renderable as stdout shows it off a terminal."""
    if isinstance(shown, str):
        return shown
    buffer = io.StringIO()
    Console(file=buffer, width=PIPE_WIDTH, color_system=None, **AS_WRITTEN).print(shown)
    return buffer.getvalue()


def main() -> None:
    """Runs the app as the ``xent`` console script, then leaves without finalising Python.

    Finalising the interpreter frees every module (NumPy, Polars, Rich) one object at a time:
    0.03 s after a small command, 0.1 s once Polars is loaded. By then every file xent writes is
    closed (and renamed), so the process flushes its two streams and exits at once. A bug's
    exception prints its traceback and exits ExitStatus.BUG, not Python's 1, which a CI reads as
    a wrong gradient; under a tracer or a profiler (coverage, cProfile) it propagates and Python's
    own exit runs, which writes their data.
    """
    traced = sys.gettrace() is not None or sys.getprofile() is not None
    try:
        app(prog_name="xent")
        code = 0
    except SystemExit as done:
        # a message to print, or a tracer's data to write: Python's own exit does that
        if traced or (done.code is not None and not isinstance(done.code, int)):
            raise
        code = done.code or 0
    except Exception:  # noqa: BLE001 - a bug of xent: every error of the input is an XentError
        if traced:
            raise
        import traceback

        traceback.print_exc()
        print(f"This is a bug of xent {__version__}, not of your input or your code: please report "
              f"it with the lines above (exit {int(ExitStatus.BUG)}).", file=sys.stderr)
        code = ExitStatus.BUG
    if traced:
        return
    for written in (sys.stdout, sys.stderr):
        if written is None:  # closed before xent started (the shell's >&-): nothing to flush
            continue
        try:
            written.flush()
        except BrokenPipeError:  # the reader went away before the last of the output
            code = code or ExitStatus.BROKEN_PIPE
        except OSError as error:  # the last of the output is lost: say so, unless already told
            if error.errno not in _UNWRITABLE:
                raise
            if not code:
                os.write(2, f"{_unwritable(error)}\n".encode())
                code = ExitStatus.USAGE
        except ValueError:  # the stream is closed
            pass
    os._exit(code)
