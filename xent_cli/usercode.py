"""Loading and calling the user's own functions: `FILE.py:NAME`, run as the user asks.

Running the user's file is the point of `xent check --grad-fn`: the user names their own code.
Every way it can go wrong (no file, no such name, not callable, an exception, a wrong shape or
dtype, a loss that is not complex-safe) is a UserCodeError that names the function and the fix.

The contract, for z an (N, k) float array and y the targets ((N,) int labels or (N, k) soft;
for binary cross-entropy, (N, k) in [0, 1]):

- gradient ``f(z, y) -> (N, k)``: row i is the gradient of sample i's loss;
- loss ``f(z, y) -> (N,)``: sample i's loss (PyTorch's reduction='none');
- Hessian ``f(z, y) -> (N, k, k)``: sample i's matrix of second derivatives.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import inspect
import os
import sys
import traceback
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from xent_cli.errors import XentError


# Whatever the user's code raises is theirs to fix; sys.exit(0) in it must not pass as success.
USER_FAULTS = (Exception, SystemExit)


class UserCodeError(XentError):
    """The user's function cannot be loaded or called, or returns something unusable."""


@dataclass(frozen=True)
class UserFunction:
    """A function of the user's, how to name it ("my_grad.py:grad") and the file it is in."""

    name: str
    function: Callable
    path: str = ""


def load(spec: str, option: str = "--grad-fn", modules: dict | None = None) -> UserFunction:
    """Returns the function NAME of the Python file FILE, from the spec 'FILE.py:NAME'.

    'MODULE:NAME' (uvicorn's and entry points' form) names the file MODULE.py, dots as folders,
    from the current folder. modules, when given, holds the files already imported by path: a
    file named by several options runs its top level (a checkpoint loaded, a print) once.
    """
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise UserCodeError(f"{option} {spec!r}: expected FILE.py:NAME, e.g. "
                            f"{_example(spec)}")
    if not os.path.isfile(path) and not path.endswith(".py"):
        module_file = path.replace(".", os.sep) + ".py"
        path = module_file if os.path.isfile(module_file) else path + ".py"
    label = f"{os.path.basename(path)}:{name}"
    if not os.path.isfile(path):
        raise UserCodeError(f"{option} {spec!r}: no such file {path}")
    full_path = os.path.abspath(path)
    modules = {} if modules is None else modules
    if full_path not in modules:
        modules[full_path] = _import(path, spec, option)
    module = modules[full_path]
    if not hasattr(module, name):
        defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                         and getattr(v, "__module__", None) == module.__name__)
        hint = f"; it defines {', '.join(defined)}" if defined else ""
        raise UserCodeError(f"{option}: {path} has no name {name!r}{hint}")
    function = getattr(module, name)
    if not callable(function):
        kind = type(function).__name__
        raise UserCodeError(f"{option}: {label} is {'an' if kind[0] in 'aeiou' else 'a'} {kind}, "
                            f"not a function")
    return UserFunction(name=label, function=function, path=full_path)


def _import(path: str, spec: str, option: str):
    """Runs the user's file as a module and returns it.

    A file in a package (folders with __init__.py) is imported by its dotted name from the
    folder above the package, so that its imports of the package, relative or absolute, work;
    any other file by its path, with its folder on sys.path for its neighbours.
    """
    loader_spec = importlib.util.spec_from_file_location(
        f"xent_user_{abs(hash(os.path.abspath(path)))}", path)
    if loader_spec is None or loader_spec.loader is None:
        raise UserCodeError(f"{option} {spec!r}: {path} is not a Python file")
    package = _package_module(path)
    if package and _imported_elsewhere(package[0].split(".")[0], package[1]):
        package = None  # a module of that name is loaded already (json, a dependency's)
    folder = package[1] if package else os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, folder)
    try:
        # np.seterr(all="raise") or warnings.simplefilter("error") at a file's top level is for
        # its own code: xent's numerics, which meet underflow and NaN on purpose, keep theirs
        with _prints_to_stderr(), np.errstate(), warnings.catch_warnings():
            module = importlib.import_module(package[0]) if package else None
            if module is None or not _same_file(getattr(module, "__file__", None), path):
                # not in a package, or its name taken by a module imported already: by its path
                module = importlib.util.module_from_spec(loader_spec)
                loader_spec.loader.exec_module(module)
    except USER_FAULTS as error:
        where = "" if isinstance(error, SyntaxError) else _line_in(error, path)
        raise UserCodeError(f"{option}: importing {path} raised {_describe(error)}"
                            f"{where and f' ({where})'}{_missing_module_hint(error)}") from None
    finally:
        if sys.path and sys.path[0] == folder:
            sys.path.pop(0)
    return module


def _package_module(path: str) -> tuple[str, str] | None:
    """Returns the dotted name of a file in a package and the folder that holds the package,
    or None for a file outside packages."""
    folder, file = os.path.split(os.path.abspath(path))
    parts = [] if file == "__init__.py" else [os.path.splitext(file)[0]]
    while os.path.isfile(os.path.join(folder, "__init__.py")):
        folder, package = os.path.split(folder)
        parts.insert(0, package)
    if not parts or (len(parts) == 1 and file != "__init__.py"):
        return None
    return ".".join(parts), folder


def _same_file(first: str | None, second: str) -> bool:
    return first is not None and os.path.realpath(first) == os.path.realpath(second)


def _imported_elsewhere(name: str, folder: str) -> bool:
    """Says whether a module of this name is imported already from another place than folder."""
    module = sys.modules.get(name)
    return module is not None and not any(
        _same_file(location, os.path.join(folder, name))
        for location in getattr(module, "__path__", None) or [])


def _example(spec: str) -> str:
    """Returns a FILE.py:NAME for a spec without its name: the file's own functions if it has any.

    The file is parsed, not run, to list them: 'mine.py' and 'mine.grad' both mean mine.py.
    """
    path, name = spec, "grad"
    if not os.path.isfile(path) and "." in spec and not spec.endswith(".py"):
        path, name = spec.rsplit(".", 1)[0] + ".py", spec.rsplit(".", 1)[1]
    try:
        with open(path, encoding="utf-8") as file:
            tree = ast.parse(file.read())
    except (OSError, ValueError, SyntaxError):
        return f"{spec if spec.endswith('.py') else 'my_grad.py'}:{name}"
    defined = sorted(node.name for node in tree.body
                     if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"))
    example = f"{path}:{name if name in defined or not defined else defined[0]}"
    return f"{example}; {path} defines {', '.join(defined)}" if defined else example


@contextlib.contextmanager
def _prints_to_stderr() -> Iterator[None]:
    """Sends what the user's code prints to stderr: stdout holds the report (JSON a script reads).

    File descriptor 1 goes to stderr too: os.system, a subprocess or a C extension writes there,
    past sys.stdout.
    """
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no descriptor 1: sys.stdout alone is redirected
        saved = None
    else:
        try:
            os.dup2(2, 1)
        except OSError:  # no descriptor 2 either
            os.close(saved)
            saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def _describe(error: BaseException) -> str:
    """Returns 'TypeError: message' for an exception."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _line_in(error: BaseException, path: str) -> str:
    """Returns 'file.py, line 6': the last line of the user's file that the error went through."""
    line = None
    for frame, number in traceback.walk_tb(error.__traceback__):
        if os.path.abspath(frame.f_code.co_filename) == os.path.abspath(path):
            line = number
    return "" if line is None else f"{os.path.basename(path)}, line {line}"


def _missing_module_hint(error: BaseException) -> str:
    """Says which Python runs the user's code: xent's venv often lacks the user's packages."""
    if not isinstance(error, ModuleNotFoundError) or not error.name:
        return ""
    return (f"; xent runs your code under {sys.executable}: install {error.name.split('.')[0]} "
            f"there, or install xent where it is")


def call(user: UserFunction, z: np.ndarray, y: np.ndarray, shape: tuple[int, ...],
         what: str) -> np.ndarray:
    """Calls f(z, y) and returns its result as a float array of the given shape.

    A complex z expects a complex result: a real one means the function drops the imaginary
    part, so the complex step cannot see its derivative.
    """
    complex_input = np.iscomplexobj(z)
    try:
        # NaN, inf and dropped imaginary parts are reported from the values, not warned
        with np.errstate(all="ignore"), warnings.catch_warnings(), _prints_to_stderr():
            warnings.simplefilter("ignore")
            out = user.function(z.copy(), y.copy())
    except USER_FAULTS as error:
        if complex_input:
            raise UserCodeError(_not_complex_safe(user, f"it raises {_describe(error)}")) from None
        where = _line_in(error, user.path)
        raise UserCodeError(f"{user.name} raised {_describe(error)}{where and f' ({where})'} "
                            f"when called as {user.name.split(':')[1]}(z, y) with "
                            f"{_inputs(z, y)}{_signature_hint(error, user)}"
                            f"{_one_hot_hint(error, z, y)}{_ignored_hint(y)}"
                            ) from None
    _no_array(user, out, shape, what)
    try:
        out = np.asarray(out)
    except Exception as error:
        raise UserCodeError(f"{user.name} returned a {type(out).__name__} that NumPy cannot read "
                            f"({_describe(error)})") from None
    if out.dtype == object or not (np.issubdtype(out.dtype, np.number) or out.dtype == bool):
        raise UserCodeError(f"{user.name} returned an array of {out.dtype}, not numbers")
    if complex_input and not np.iscomplexobj(out):
        raise UserCodeError(_not_complex_safe(
            user, f"it returns {out.dtype} for complex input, dropping the imaginary part"))
    if not complex_input and np.iscomplexobj(out):
        raise UserCodeError(f"{user.name} returned complex numbers ({out.dtype}) for real input")
    if not np.issubdtype(out.dtype, np.inexact):
        raise UserCodeError(f"{user.name} returned integers ({out.dtype}); a {what} is a float "
                            f"array")
    if what == "loss" and out.shape == (shape[0], z.shape[1]) and shape[0] > 0:
        # binary cross-entropy's reduction='none' is (N, k): one loss per element
        raise UserCodeError(f"{user.name} returned shape {out.shape}, a loss per element; the "
                            f"loss must have shape {shape}: sum each sample's, "
                            f"loss.sum(axis=1)")
    if out.shape != shape:
        expected = " x ".join(map(str, shape))
        # a row per class is the layout of code written for (k, N) logits, as some courses do
        transposed = (f"; {out.shape} is its transpose (a row per class): return g.T"
                      if len(shape) == 2 and out.shape == shape[::-1] else "")
        raise UserCodeError(f"{user.name} returned shape {out.shape}; the {what} must have shape "
                            f"{shape} ({expected}: {_layout(what)}){transposed}")
    return out


def _no_array(user: UserFunction, out: object, shape: tuple[int, ...], what: str) -> None:
    """Raises UserCodeError for a result that is plainly no array: None, a dict, a tuple of
    arrays (a loss and its gradient together)."""
    if out is None:
        raise UserCodeError(f"{user.name} returned None; the {what} is an array of shape "
                            f"{shape}: is a return statement missing?")
    if isinstance(out, tuple) and any(np.ndim(item) > 0 for item in out):
        raise UserCodeError(f"{user.name} returned a tuple of {len(out)}, not an array of "
                            f"numbers: return the {what} alone")
    if isinstance(out, (dict, set)):
        raise UserCodeError(f"{user.name} returned a {type(out).__name__}, not an array of "
                            f"numbers")


def _inputs(z: np.ndarray, y: np.ndarray) -> str:
    """Describes the arguments: 'z (8, 4) float64 and y (8,) int64 class labels'."""
    kind = "class labels" if y.ndim == 1 and np.issubdtype(y.dtype, np.integer) else "targets"
    return f"z {z.shape} {z.dtype} and y {y.shape} {y.dtype} {kind}"


def _signature_hint(error: BaseException, user: UserFunction) -> str:
    """Names the fix for a function that cannot be called with (z, y): code written as
    grad(logits, labels, weight) for a training loop of its own."""
    if not isinstance(error, TypeError):
        return ""
    try:
        signature = inspect.signature(user.function)
    except (TypeError, ValueError):  # a builtin or other callable without a signature to read
        return ""
    try:
        signature.bind(None, None)
    except TypeError:
        positional = [p for p in signature.parameters.values() if p.kind in (
            p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
        if len(positional) < 2:
            return "; xent calls it with two arguments, z and y: take y as its second parameter"
        name = user.name.split(":")[1]
        return (f"; xent calls it with two arguments, z and y: give its other parameters "
                f"defaults, or wrap it, def wrapped(z, y): return {name}(z, y, ...)")
    return ""


def _one_hot_hint(error: BaseException, z: np.ndarray, y: np.ndarray) -> str:
    """Names the usual cause of a broadcast error: code written for one-hot rows gets labels."""
    if y.ndim == 1 and z.ndim == 2 and "broadcast" in str(error):
        return "; y holds class indices, not one-hot rows: np.eye(k)[y] makes the rows"
    return ""


def _ignored_hint(y: np.ndarray) -> str:
    """Names the ignore index among the labels: code that indexes p[rows, y] trips over it."""
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or not (y < 0).any():
        return ""
    ignored = np.flatnonzero(y < 0)
    value = int(y[ignored[0]])
    if len(ignored) == 1:
        return (f"; y holds the ignore index {value} for sample {ignored[0]}: its loss and "
                f"gradient row are 0")
    return (f"; y holds the ignore index {value} for {len(ignored)} samples (the first is sample "
            f"{ignored[0]}): their loss and gradient rows are 0")


def _layout(what: str) -> str:
    """Says what the rows of each kind of result are."""
    return {"gradient": "row i is sample i's gradient",
            "loss": "one loss per sample, as reduction='none'",
            "Hessian": "sample i's k x k matrix"}[what]


def _not_complex_safe(user: UserFunction, why: str) -> str:
    return (f"{user.name} is not complex-safe: {why}; use --method central or richardson, or "
            f"write it with numpy functions that keep complex numbers (np.exp, np.log, no "
            f"np.abs/np.real/float())")


def gradient(user: UserFunction, y: np.ndarray, n: int, k: int,
             dtype: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Returns z -> the user's (N, k) gradient, z cast to dtype (when given) before the call."""
    return _bound(user, y, (n, k), "gradient", dtype)


def loss(user: UserFunction, y: np.ndarray, n: int,
         dtype: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Returns z -> the user's (N,) per-sample losses."""
    return _bound(user, y, (n,), "loss", dtype)


def hessian(user: UserFunction, y: np.ndarray, n: int, k: int,
            dtype: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Returns z -> the user's (N, k, k) per-sample Hessians."""
    return _bound(user, y, (n, k, k), "Hessian", dtype)


def _drops_imaginary(user: UserFunction, z: np.ndarray, y: np.ndarray, shape: tuple[int, ...],
                     what: str) -> bool:
    """Tells whether the user's code drops the imaginary part of z, its result at z having none.

    A complex-safe result has none too where the step's class has derivative 0 (a class weighted
    0) or one that underflows (a logit far below its row's max). So z's real part x is stepped
    along every class at once, by i·t·v (v a fixed direction of unequal entries in [0.5, 1.5]:
    a softmax's loss does not move along equal ones): code that keeps an imaginary part there is
    safe; code that has none though its real values move along v drops it. Code that does not
    move along v at all has derivative 0, and the complex step's 0 is right.
    """
    x = z.real
    finite = np.isfinite(x)
    t = 1e-3 * np.maximum(1.0, np.abs(np.where(finite, x, 0)))
    step = (t * np.where(finite, np.random.default_rng(0).uniform(0.5, 1.5, x.shape), 0.0)
            ).astype(x.dtype)
    if np.any(call(user, x + 1j * step, y, shape, what).imag):
        return False
    moved, still = (call(user, point, y, shape, what) for point in (x + step, x))
    with np.errstate(invalid="ignore"):
        return bool(np.any((moved != still) & np.isfinite(moved) & np.isfinite(still)))


def _bound(user: UserFunction, y: np.ndarray, shape: tuple[int, ...], what: str,
           dtype: str | None) -> Callable[[np.ndarray], np.ndarray]:
    """Returns z -> call(user, z, y, shape, what), z cast to dtype first; the first call with a
    complex step also checks that the result keeps an imaginary part."""
    checked_imaginary = []  # one entry once checked: the check costs nothing on later calls

    def bound(z: np.ndarray) -> np.ndarray:
        if dtype is not None:  # a complex z (the complex step) becomes dtype's complex type
            z = z.astype(np.result_type(dtype, np.complex64) if np.iscomplexobj(z) else dtype)
        out = call(user, z, y, shape, what)
        if np.iscomplexobj(z) and np.any(z.imag) and not checked_imaginary:
            checked_imaginary.append(True)
            if not np.any(out.imag) and _drops_imaginary(user, z, y, shape, what):
                raise UserCodeError(_not_complex_safe(
                    user, "its result has no imaginary part for a complex input (np.abs, np.real "
                          "or a cast drops it)"))
        return out

    return bound
