"""Checks a user's claimed formula for dCE/dz_j against the true gradient p_j − y_j.

The claim is parsed by the safe expression language (``xent_cli.expressions``). It holds when,
for every j it speaks of, it equals p_j − y_j = e^{z_j}/Σ_n e^{z_n} − y_j for all logits z
(y one-hot at the label ℓ, or any y with Σ y = 1 under ``soft``). The check proves equality
exactly when the difference is a rational function of e^{z_1}, …, e^{z_k} (and y); otherwise,
or when it is not equal, it compares the two at small integer logits, then at random ones, and
says in ``reason`` which it did.
"""

from __future__ import annotations

import decimal
import math
import random
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from xent_cli.errors import ExpressionError, InputError
from xent_cli.expressions import (Binary, Call, Entry, Index, Iverson, Node, Number, Sum, Unary,
                                  format_claim, format_latex, parse_claim, to_sympy)

MAX_CLASSES = 12  # the exact check cancels rational functions in k variables
DIGITS = 50  # working precision of the numeric comparisons (checked again at twice as many)
TOLERANCE = Decimal("1e-25")  # relative; far above 50-digit rounding, far below any real gap
MAX_DECIMAL_EXPONENT = 100_000  # numbers beyond 10^±100000 count as overflow (undefined)
RANDOM_POINTS = 12
MIN_COMPARED = 3  # (point, j) pairs that must be compared before a claim is said to hold
MAX_EXACT_POWER = 12  # higher integer powers make cancellation slow: check numerically instead
EXPECTED = "p_j - y_j"


@dataclass(frozen=True)
class ClaimVerdict:
    """Whether a claim about dCE/dz_j holds, and the evidence.

    ``counterexample`` (when the claim fails at a point) holds "z" (the logits, numbers),
    "y" (the targets, exact fractions as text), "j" (1-based), "claimed" and "actual" (exact
    values as text; "undefined" where the claim is), "claimed_decimal" and "actual_decimal"
    (10 significant digits as text; None where undefined) and "claimed_value",
    "actual_value" (floats; None where undefined or beyond the float range).
    """

    claim: str  # the user's text
    holds: bool
    scope: str  # "every j", "j = ℓ" or "j ≠ ℓ"
    counterexample: dict | None
    reason: str  # one sentence: how it was verified, or how it fails
    claimed: str  # the claim as parsed, in the language's own text
    claimed_latex: str
    expected: str  # the true dCE/dz_j
    method: str  # "exact", "numeric" or "counterexample"
    k: int
    label: int  # 1-based ℓ
    soft: bool
    classes: tuple[int, ...]  # the j (1-based) the claim was checked for


def check_claim(text: str, *, k: int, label: int, soft: bool = False) -> ClaimVerdict:
    """Checks a claim for dCE/dz_j with k classes and label ℓ (1-based).

    Raises ExpressionError when the text is not a valid claim (or is too large to evaluate at
    any point), InputError for k or ℓ out of range.
    """
    try:
        claim = parse_claim(text)
    except ExpressionError as error:  # named as check names --expr: 'column 1' is the claim's
        raise ExpressionError(f"--claim {text!r}: {error}") from None
    if not 2 <= k <= MAX_CLASSES:
        raise InputError(f"a claim is checked for 2 to {MAX_CLASSES} classes, not k = {k}")
    if not 1 <= label <= k:
        raise InputError(f"label {label} is not a class: labels run from 1 to k = {k}")
    classes = tuple(j for j in range(1, k + 1)
                    if claim.scope == "every j" or (claim.scope == "j = ℓ") == (j == label))
    verdict = dict(claim=text, scope=claim.scope, claimed=format_claim(claim),
                   claimed_latex=format_latex(claim.body), expected=EXPECTED, k=k, label=label,
                   soft=soft, classes=classes)
    where = _scope_words(claim.scope, k, label)

    proofs = [_prove(claim.body, j, k=k, label=label, soft=soft) for j in classes]
    if all(proof == "exact" for proof in proofs):
        return ClaimVerdict(holds=True, counterexample=None, method="exact", reason=(
            f"Holds {where}: claim − ({EXPECTED}) cancels to 0 exactly as a rational "
            f"function of e^{{z_1}}, …, e^{{z_{k}}}{_targets_words(soft)}."), **verdict)
    # Small integer logits first: a counterexample is easiest to read there.
    tally = {"compared": 0, "overflowed": 0}
    found = _search(claim.body, classes, _small_points(k, label, soft), k=k, label=label,
                    tally=tally)
    if found is None:
        found = _search(claim.body, classes, _random_points(k, label, soft), k=k, label=label,
                        tally=tally)
        if found is None:
            if tally["compared"] < MIN_COMPARED:
                raise ExpressionError(
                    f"the claim overflows (numbers beyond 10^{MAX_DECIMAL_EXPONENT}) at "
                    f"{tally['overflowed']} of the {tally['overflowed'] + tally['compared']} "
                    "points tried, so it cannot be checked")
            if "differs" in proofs:
                return ClaimVerdict(holds=False, counterexample=None, method="exact", reason=(
                    f"Fails {where}: claim − ({EXPECTED}) does not cancel to 0, though no "
                    "point tried tells them apart."), **verdict)
            skipped = (f" ({tally['overflowed']} more overflowed and were skipped)"
                       if tally["overflowed"] else "")
            return ClaimVerdict(holds=True, counterexample=None, method="numeric", reason=(
                f"Holds {where} numerically: it agrees with {EXPECTED} to 25 digits at "
                f"{tally['compared']} points (z, j){skipped}; not proven exactly, because log, a "
                "fractional or large power keeps the difference from being a small rational "
                "function."), **verdict)
    j = found["j"]
    claimed = ("an undefined value (a division by zero or the log of a number ≤ 0)"
               if found["claimed_decimal"] is None else found["claimed_decimal"])
    at = f"z = ({', '.join(_number_text(v) for v in found['z'])})"
    if soft:
        at += f", y = ({', '.join(found['y'])})"
    return ClaimVerdict(holds=False, counterexample=found, method="counterexample", reason=(
        f"Fails at {at}, j = {j}: the claim gives {claimed} but dCE/dz_{j} = p_{j} − y_{j} = "
        f"{found['actual_decimal']}."), **verdict)


def _scope_words(scope: str, k: int, label: int) -> str:
    where = {"every j": "for every j", "j = ℓ": "for j = ℓ", "j ≠ ℓ": "for every j ≠ ℓ"}[scope]
    return f"{where} (k = {k}, ℓ = {label})"


def _targets_words(soft: bool) -> str:
    return (" and of y_1, …, y_{k−1} with y_k = 1 − Σ the others" if soft
            else " with y one-hot at ℓ")


def _number_text(value) -> str:
    return str(value) if not isinstance(value, float) else f"{value:g}"


# ---------------------------------------------------------------------------------------------
# Points: logits z and targets y at which claim and truth are compared
# ---------------------------------------------------------------------------------------------

def _targets(k: int, label: int, soft: bool, rng: random.Random) -> list[list[Fraction]]:
    """Returns target vectors: one-hot at ℓ; under soft also uniform and a random one."""
    one_hot = [Fraction(int(n == label)) for n in range(1, k + 1)]
    if not soft:
        return [one_hot]
    weights = [rng.randint(1, 5) for _ in range(k)]
    return [one_hot, [Fraction(1, k)] * k, [Fraction(w, sum(weights)) for w in weights]]


def _small_points(k: int, label: int, soft: bool) -> list[tuple[list, list[Fraction]]]:
    """Returns small integer logits first, as a counterexample is easiest to read there."""
    rng = random.Random(2023)
    logits = [[0] * k, list(range(k)), list(range(k - 1, -1, -1)),
              [int(n == label) for n in range(1, k + 1)],
              [int(n != label) for n in range(1, k + 1)]]
    logits += [[rng.randint(-3, 3) for _ in range(k)] for _ in range(4)]
    return [(z, y) for z in logits for y in _targets(k, label, soft, rng)]


def _random_points(k: int, label: int, soft: bool) -> list[tuple[list, list[Fraction]]]:
    """Returns logits in halves within ±6 (exact as floats) with random targets."""
    rng = random.Random(1729)
    points = []
    for _ in range(RANDOM_POINTS):
        z = [rng.randint(-12, 12) / 2 for _ in range(k)]
        y = rng.choice(_targets(k, label, soft, rng))
        points.append((z, y))
    return points


# ---------------------------------------------------------------------------------------------
# Comparison at points, and the exact proof
# ---------------------------------------------------------------------------------------------

def _search(body: Node, classes, points, *, k: int, label: int, tally: dict) -> dict | None:
    """Returns the first point and class at which the claim differs from p_j − y_j, if any.

    A difference counts only when it shows at 50 and at 100 digits, so rounding in a
    cancellation of huge terms is never mistaken for a counterexample. ``tally`` counts the
    (point, j) compared and those skipped because a value overflowed.
    """
    for z, y in points:
        z_exact = [Fraction(value) for value in z]
        caches = {DIGITS: {}, 2 * DIGITS: {}}  # exp and log values shared by every j

        def values(j: int, digits: int) -> tuple[Decimal | None, Decimal | None]:
            return tuple(approximate(tree, z=z_exact, y=y, j=j, label=label, k=k, digits=digits,
                                     cache=caches[digits]) for tree in (body, _TRUE_GRADIENT))

        for j in classes:
            try:
                if not _differ(*values(j, DIGITS)):
                    tally["compared"] += 1
                    continue
                claimed_value, actual_value = values(j, 2 * DIGITS)
            except OverflowError:  # not a fault of the claim: too large to compare here
                tally["overflowed"] += 1
                continue
            if not _differ(claimed_value, actual_value):
                tally["compared"] += 1
                continue
            return {
                "z": [int(v) if v.denominator == 1 else float(v) for v in z_exact],
                "y": [str(value) for value in y],
                "j": j,
                "claimed": (_exact_text(body, z_exact, y, j, label, k)
                            if claimed_value is not None else "undefined"),
                "actual": _exact_text(_TRUE_GRADIENT, z_exact, y, j, label, k),
                "claimed_decimal": None if claimed_value is None else f"{claimed_value:.10g}",
                "actual_decimal": f"{actual_value:.10g}",
                "claimed_value": _float(claimed_value),
                "actual_value": float(actual_value),
            }
    return None


def _float(value: Decimal | None) -> float | None:
    """Returns the value as a float, or None when it is undefined or beyond the float range."""
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def _differ(claimed: Decimal | None, actual: Decimal) -> bool:
    return claimed is None or abs(claimed - actual) > TOLERANCE * max(1, abs(actual))


class _Undefined(Exception):
    """The value is undefined at the point (division by zero, log of a negative, overflow)."""


def approximate(node: Node, *, z, y, j: int, label: int, k: int, digits: int,
                cache: dict | None = None) -> Decimal | None:
    """Returns the value of the tree at exact z and y to ``digits`` digits, or None if undefined.

    Uses the standard library's decimal arithmetic, whose bounded exponent range keeps the work
    bounded: exp(exp(exp(9))) overflows at once instead of being computed. ``cache`` keeps
    exp and log values between calls with the same z and digits. Raises OverflowError when a
    value exceeds 10^±100000 (a claim is not wrong for being too large to compare).
    """
    cache = {} if cache is None else cache
    context = decimal.Context(prec=digits, Emax=MAX_DECIMAL_EXPONENT, Emin=-MAX_DECIMAL_EXPONENT,
                              traps=[decimal.Overflow, decimal.InvalidOperation,
                                     decimal.DivisionByZero])

    def number(value: Fraction) -> Decimal:
        return context.divide(Decimal(value.numerator), Decimal(value.denominator))

    def exp(value: Decimal) -> Decimal:
        if ("exp", value) not in cache:
            cache["exp", value] = context.exp(value)
        return cache["exp", value]

    def log(value: Decimal) -> Decimal:
        if value <= 0:
            raise _Undefined
        if ("log", value) not in cache:
            cache["log", value] = context.ln(value)
        return cache["log", value]

    logits = [number(value) for value in z]
    exps = [exp(value) for value in logits]
    total = sum(exps[1:], exps[0])
    entries = {"z": logits, "y": [number(value) for value in y],
               "p": [context.divide(value, total) for value in exps]}

    def lower(node: Node, n: int | None) -> Decimal:
        if isinstance(node, Number):
            return number(node.value)
        if isinstance(node, Entry):
            return entries[node.variable][{"j": j, "l": label, "n": n}[node.index] - 1]
        if isinstance(node, Index):
            return Decimal({"j": j, "l": label, "n": n, "k": k}[node.name])
        if isinstance(node, Iverson):
            values = {"j": j, "l": label, "n": n}
            left, right = (values.get(side, side) for side in (node.left, node.right))
            return Decimal(int((left == right) == node.equal))
        if isinstance(node, Unary):
            return context.minus(lower(node.operand, n))
        if isinstance(node, Call):
            argument = lower(node.argument, n)
            return exp(argument) if node.function == "exp" else log(argument)
        if isinstance(node, Sum):
            terms = [lower(node.body, m) for m in range(1, k + 1)]
            return sum(terms[1:], terms[0])
        left, right = lower(node.left, n), lower(node.right, n)
        if node.op == "+":
            return context.add(left, right)
        if node.op == "-":
            return context.subtract(left, right)
        if node.op == "*":
            return context.multiply(left, right)
        if node.op == "/":
            return context.divide(left, right)
        if left == 0 and right <= 0:
            raise _Undefined
        return context.power(left, right)

    try:
        with decimal.localcontext(context):
            value = lower(node, None)
    except decimal.Overflow:
        raise OverflowError(f"a value exceeds 10^{MAX_DECIMAL_EXPONENT}") from None
    except (_Undefined, ArithmeticError):
        return None
    return value if value.is_finite() else None


def _exact_text(body: Node, z, y, j: int, label: int, k: int) -> str:
    """Returns the exact value at the point as SymPy prints it, clipped to 200 characters."""
    import sympy

    try:
        value = to_sympy(body, z=[sympy.Rational(v.numerator, v.denominator) for v in z],
                         y=[sympy.Rational(v.numerator, v.denominator) for v in y],
                         j=j, label=label, k=k)
        text = str(value)
    except (ExpressionError, ValueError):  # ValueError: an integer of more than 4300 digits
        return "too large to write exactly"
    return text if len(text) <= 200 else text[:197] + "..."


def _prove(body: Node, j: int, *, k: int, label: int, soft: bool) -> str:
    """Returns "exact" when claim − (p_j − y_j) cancels to 0, "differs" when it cancels to
    something else, "numeric" when it is not a rational function of e^{z_n} (and y)."""
    import sympy

    t = sympy.symbols(f"t1:{k + 1}", positive=True)  # t_n = e^{z_n}
    if soft:
        free = sympy.symbols(f"y1:{k}")
        y = list(free) + [1 - sympy.Add(*free)]
    else:
        free = ()
        y = [sympy.Integer(int(n == label)) for n in range(1, k + 1)]
    z = [sympy.log(value) for value in t]
    try:
        claimed = to_sympy(body, z=z, y=y, j=j, label=label, k=k)
    except ExpressionError:  # a power too large for exact arithmetic
        return "numeric"
    actual = to_sympy(_TRUE_GRADIENT, z=z, y=y, j=j, label=label, k=k)
    difference = claimed - actual
    variables = (*t, *free)
    if (_largest_power(difference) > MAX_EXACT_POWER or _exp_of_a_large_number(difference)
            or not difference.is_rational_function(*variables)):
        return "numeric"
    return "exact" if sympy.cancel(sympy.together(difference)) == 0 else "differs"


def _exp_of_a_large_number(expression) -> bool:
    """An exp of a constant that is no small rational, as in exp(exp(exp(100))): cancel evaluates
    constants to sort them, for minutes here, or with an OverflowError at exp(exp(exp(1000)))."""
    import sympy

    exponents = (power.exp for power in expression.atoms(sympy.exp))
    return any(not x.free_symbols and not (x.is_Rational and abs(x) <= 10**4) for x in exponents)


def _largest_power(expression) -> int:
    import sympy

    powers = [abs(int(power.exp)) for power in expression.atoms(sympy.Pow) if power.exp.is_Integer]
    return max(powers, default=0)


_TRUE_GRADIENT = Binary("-", Entry("p", "j"), Entry("y", "j"))
