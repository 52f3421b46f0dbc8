"""SymPy: the gradient (and Hessian) of the sigmoid binary cross-entropy as verified steps.

BCE(z, y) = −Σ_n [y_n log σ(z_n) + (1 − y_n) log(1 − σ(z_n))], with p_n = σ(z_n) = 1/(1 + e^{−z_n})
and each target y_n in [0, 1] on its own: nothing makes Σ y = 1. Steps, entries, ``verify`` and
the renderers are softmax's (``xent_cli.derivation``); what differs is the symbols: p_n means
σ(z_n), and the difference of two steps is decided as a polynomial in z, y, u_n = e^{z_n} and
atoms log f, f a polynomial in u with positive coefficients (a log of a sigmoid factors into z_n
and log(1 + u_n)), else at exact random rational points.

The classes do not couple, and that keeps large K cheap (SymPy spends milliseconds on each
log of a sigmoid, so nothing may cost that per class and step): a loss step is shown as the
sum of every class's term but verified on class 1's term, which the others repeat in their own
z_n, y_n (built by renaming, unevaluated). Every gradient entry, and every diagonal Hessian
entry, is SymPy's own derivative of the definition's term checked against the closed form, each
on its own up to FULL_CHECK_K classes; beyond, class 1's is checked and the others are its
renaming. Off-diagonal Hessian entries are SymPy's derivative of entry i along z_j: 0 at once.
Caps: softmax's (K ≤ 500, ≤ 60 with the Hessian); K = 1, one binary classifier, is allowed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Optional

import sympy as sp
from sympy.core.parameters import evaluate

from xent_cli.derivation import (Derivation, Entry, Step, Symbols, Verification, _Builder, _log,
                                 _number, _vector, by_every_entry, check_classes, parse_values,
                                 partial, terms_by_symbol, verify)

FULL_CHECK_K = 12  # up to here every entry is differentiated and checked on its own (~30 ms each)
PER_CLASS = "; on class 1's term, which every class's term repeats in its own z_n, y_n"


@dataclass(frozen=True)
class Contrast:
    """One way BCE differs from softmax cross-entropy, and the check that shows it here."""

    topic: str
    softmax: str
    bce: str
    evidence: str
    ok: bool


def sigmoid(z: sp.Expr) -> sp.Expr:
    return 1 / (1 + sp.exp(-z))


class BinarySymbols(Symbols):
    """Softmax's symbols with p_n meaning σ(z_n); Σ_n e^{z_n} serves only the pitfall."""

    def __init__(self, k: int):
        super().__init__(k, soft=True, label=1)
        self._p_index = {pn: n for n, pn in enumerate(self.p)}
        self._u_index = {un: n for n, un in enumerate(self.u)}
        self._logs: dict = {}  # log(argument in u) → its split form, shared by every step
        self._atoms: dict = {}  # positive factor f → the symbol standing for log f

    def instance(self, expr: sp.Expr, n: int, evaluated: bool = True) -> sp.Expr:
        """Class 1's expression in class n's symbols; unevaluated it is cheap at large K."""
        if n == 0:
            return expr
        renaming = {self.z[0]: self.z[n], self.y[0]: self.y[n], self.p[0]: self.p[n]}
        if evaluated:
            return expr.xreplace(renaming)
        with evaluate(False):
            return expr.xreplace(renaming)

    def every_class(self, expr: sp.Expr) -> sp.Expr:
        """Σ_n of class 1's expression in each class's symbols (unevaluated: one term a class)."""
        if self.k == 1:
            return expr
        return sp.Add(*(self.instance(expr, n, evaluated=False) for n in range(self.k)),
                      evaluate=False)

    def value(self, expr: sp.Expr) -> sp.Expr:
        """Replaces p_n by σ(z_n) and carries out any derivative: the expression in z and y."""
        # only the p_n present: building σ(z_n) for all K costs more than most steps
        expr = expr.xreplace({pn: sigmoid(self.z[self._p_index[pn]])
                              for pn in expr.free_symbols if pn in self._p_index})
        if not expr.has(sp.Derivative):
            return expr
        return expr.replace(lambda e: isinstance(e, sp.Derivative), lambda e: e.doit())

    def to_u(self, expr: sp.Expr) -> sp.Expr:
        """Writes e^{a} in u_n = e^{z_n}, and each log as z_n and atoms where it factors."""
        exps = {}
        for power in expr.atoms(sp.exp):
            argument = power.args[0]
            if argument in self._z_index:
                exps[power] = self.u[self._z_index[argument]]
            elif -argument in self._z_index:
                exps[power] = 1 / self.u[self._z_index[-argument]]
        expr = expr.xreplace(exps)
        if expr.has(sp.exp):
            expr = super().to_u(expr)
        return expr.replace(lambda e: isinstance(e, sp.log), self._split_log)

    def _split_log(self, log: sp.Expr) -> sp.Expr:
        if log not in self._logs:
            self._logs[log] = self._log_of_factors(log)
        return self._logs[log]

    def _log_of_factors(self, log: sp.Expr) -> sp.Expr:
        """log(c Π f^m / …) = log c + Σ m log f: sound only for positive factors, so only
        monomials u_n (log u_n = z_n) and polynomials with positive coefficients are split;
        anything else keeps its log and the check falls back to random points."""
        numerator, denominator = sp.fraction(sp.cancel(sp.together(log.args[0])))
        total = sp.Integer(0)
        for part, sign in ((numerator, 1), (denominator, -1)):
            if part.has(sp.exp, sp.log) or not part.free_symbols <= set(self.u):
                return log
            coefficient, factors = sp.factor_list(part)
            if not coefficient.is_positive:
                return log
            total += sign * self._atom(coefficient)
            for factor, power in factors:
                if factor in self._u_index:
                    total += sign * power * self.z[self._u_index[factor]]
                elif all(c > 0 for c in sp.Poly(factor).coeffs()):
                    total += sign * power * self._atom(factor)
                else:
                    return log
        return total

    def _atom(self, positive: sp.Expr) -> sp.Expr:
        if positive == 1:
            return sp.Integer(0)
        if positive not in self._atoms:
            self._atoms[positive] = sp.Dummy("log_f", real=True)
        return self._atoms[positive]

    def is_zero(self, difference: sp.Expr) -> bool:
        """Decides difference == 0 symbolically, or returns False when undecided."""
        if difference == 0:
            return True
        in_u = self.to_u(difference)
        if in_u.has(sp.exp, sp.log, sp.Derivative):
            return False
        # A sum of per-class terms: expand settles it at any K; cancel settles small quotients.
        if sp.expand(in_u) == 0:
            return True
        return len(in_u.free_symbols) <= 30 and sp.cancel(sp.together(in_u)) == 0

    def random_point(self, rng: random.Random, free: set) -> dict:
        """Returns random rationals for z and, each on its own, targets y in [0, 1]."""
        point = {zn: sp.Rational(rng.randint(-12, 12), rng.randint(1, 4)) for zn in self.z}
        point.update({yn: sp.Rational(rng.randint(0, 8), 8) for yn in self.y})
        return point


def check_size(k: int, hessian: bool) -> None:
    """Refuses k below 1 (one binary classifier is a loss of its own) or above softmax's caps."""
    check_classes(k, hessian, fewest=1, loss="binary cross-entropy")


def derive_bce(k: int, hessian: bool = False, at: Optional[tuple[float, ...]] = None,
               at_targets: Optional[tuple[float, ...]] = None) -> Derivation:
    """Derives ∂BCE/∂z_j for every j (and the Hessian) with every step verified.

    With at, every step is also evaluated at those logits; y stays a symbol unless at_targets
    gives its values too.
    """
    from xent_cli.errors import InputError

    check_size(k, hessian)
    if at is not None and len(at) != k:
        raise InputError(f"--at has {len(at)} values; --k is {k}")
    if at is not None and max(map(abs, at)) > AT_LIMIT:
        n = max(range(k), key=lambda c: abs(at[c]))
        raise InputError(f"--at: z{n + 1} = {at[n]:g} is beyond ±{AT_LIMIT:g}: the steps' exact "
                         f"values there need {abs(at[n]) / math.log(10):,.0f} digits (1 − σ(z) "
                         f"cancels), too many to work with; give logits within ±{AT_LIMIT:g}")
    if at_targets is not None and (at is None or len(at_targets) != k):
        raise InputError("--y needs --at, and one target per class" if at is None else
                         f"--y has {len(at_targets)} values; --k is {k}")
    s = BinarySymbols(k)
    z, p, y = s.z, s.p, s.y
    at_point = None if at is None else {zn: sp.Rational(v) for zn, v in zip(z, at)}
    if at_targets is not None:
        at_point.update({yn: sp.Rational(v) for yn, v in zip(y, at_targets)})
    build = _builder(s, at_point)
    BCE = sp.Symbol("BCE")

    # The loss, from the definition to Σ_n [(1 − y_n) z_n + softplus(−z_n)]: each step is
    # verified on class 1's term, which every class's term repeats with its own z_n, y_n.
    z1, y1, p1 = z[0], y[0], p[0]
    terms = [-(y1 * _log(p1) + (1 - y1) * _log(1 - p1)),
             -(y1 * _log(p1) + (1 - y1) * (-z1 + _log(p1))),
             (1 - y1) * z1 - _log(p1),
             (1 - y1) * z1 + _log(1 + sp.exp(-z1))]
    rules = ["definition of binary cross-entropy", "log of the complement", "collect", "softplus"]
    previous = None
    for rule, term in zip(rules, terms):
        value = s.value(term)
        if previous is None:
            verification = Verification("definition", "the definition of the loss")
        else:
            verification = verify(s, previous, value, seed=len(build.steps))
            if verification.ok:
                verification = Verification(verification.method, verification.detail + PER_CLASS)
        previous = value
        shown = s.every_class(term)
        whole = shown if value == term else s.every_class(value)
        build.steps.append(Step(rule, "loss", BCE, shown, whole, verification,
                                build.value_at(whole) if at_point is not None else None))
    definition_term = s.value(terms[0])
    loss = build.steps[-1]

    # The derivative for j = 1; every class's term has the same form.
    lhs = sp.Derivative(BCE, z1)
    softplus = _log(1 + sp.exp(-z1))
    derivative = partial(terms_by_symbol(loss.value), z1)  # SymPy's, of the terms with z1
    build.steps.append(Step("differentiate BCE", "every j", lhs, sp.Derivative(loss.expr, z1),
                            derivative, Verification("definition", "∂/∂z_j of the last form of BCE"),
                            build.value_at(derivative)))
    previous = build.steps[-1].value
    previous = build.add("classes do not couple", "every j", lhs,
                         sp.Derivative((1 - y1) * z1 + softplus, z1), before=previous).value
    previous = build.add("linearity", "every j", lhs, 1 - y1 + sp.Derivative(softplus, z1),
                         before=previous).value
    previous = build.add("derivative of softplus", "every j", lhs,
                         1 - y1 - sp.exp(-z1) / (1 + sp.exp(-z1)), before=previous).value
    # unevaluated, or SymPy would cancel the 1s before the step is shown
    complement_of_sigma = sp.Add(1, -y1, sp.Mul(-1, sp.Add(1, -p1), evaluate=False),
                                 evaluate=False)
    previous = build.add("complement of the sigmoid", "every j", lhs, complement_of_sigma,
                         before=previous).value
    cancelled = build.add("cancel", "every j", lhs, p1 - y1, before=previous)

    # The gradient table: SymPy's derivative of the definition against σ(z_j) − y_j.
    gradient = _diagonal_entries(
        s, build, lambda n: sp.diff(s.instance(definition_term, n), z[n]),
        sp.diff(definition_term, z1), lambda n: p[n] - y[n], order=1)
    build.steps.append(Step(
        "every class alike", "every j", sp.Derivative(BCE, sp.Symbol("z_j")),
        sp.Symbol("p_j") - sp.Symbol("y_j"), cancelled.value, by_every_entry(gradient), None))

    pitfall = _softmax_carried_over(s, cancelled, at_point)
    hessian_rows, hessian_steps = None, ()
    if hessian:
        hessian_steps, hessian_rows = _hessian(s, at_point, gradient)
    contrast = _contrast(s, tuple(build.steps), gradient, hessian_rows)
    # label and soft are softmax's: neither one-hot nor Σy = 1 applies
    return Derivation(k, None, None, tuple(build.steps), tuple(gradient), hessian_rows,
                      hessian_steps, pitfall, at, loss="bce", contrast=contrast,
                      at_targets=at_targets)


def parse_targets(text: str, k: int) -> tuple[float, ...]:
    """Reads --y: exactly k comma-separated numbers in [0, 1] (never evaluated as an expression)."""
    return parse_values(text, k, "--y", "y", lambda value: 0 <= value <= 1,  # refuses nan too
                        "is not in [0, 1]", "give one target in [0, 1] per class")


def _diagonal_entries(s: BinarySymbols, build: _Builder, direct_of, template: sp.Expr,
                      closed_of, order: int) -> list:
    """One entry per class: SymPy's derivative direct_of(n) against closed_of(n).

    Up to FULL_CHECK_K classes each entry is differentiated and verified on its own. Beyond,
    class 1's derivative (template) is verified once and class n's entry is its copy in z_n,
    y_n: class n's term is class 1's in z_n, y_n, and renaming commutes with ∂/∂z.
    """
    entries, shared = [], None
    for n in range(s.k):
        closed = closed_of(n)
        if s.k <= FULL_CHECK_K:
            direct = direct_of(n)
            check = verify(s, direct, s.value(closed), seed=n)
        else:
            if shared is None:
                shared = verify(s, template, s.value(closed_of(0)))
                if shared.ok:
                    shared = Verification(shared.method, shared.detail + "; class 1's entry, "
                                          "which class j's repeats in z_j, y_j")
            direct, check = s.instance(template, n, evaluated=False), shared
        at = _number(build, s.value(closed)) if build.at_point is not None else None
        entries.append(Entry((n + 1,) * order, direct, closed, check, at))
    return entries


# --at's largest |z|: the digits _builder works with grow with |z|, and evalf's time faster
# (about 1 s at 10^4, 24 s at 10^5 on the benchmark machine).
AT_LIMIT = 1e4


def _builder(s: BinarySymbols, at_point) -> _Builder:
    """Returns a builder whose values at the point keep the digits 1 − σ(z) cancels.

    1 − σ(z) = e^{−z}/(1 + e^{−z}) loses about |z|/ln 10 digits; with the point exact and that
    many more digits, the loss at z = 800, y = 1/2 is 400, not what 12 digits leave of it.
    """
    largest = max((abs(float(v)) for zn, v in (at_point or {}).items() if zn in s.z), default=0.0)
    return _Builder(s, at_point, digits=20 + math.ceil(largest / math.log(10)))


def _softmax_carried_over(s: BinarySymbols, cancelled: Step, at_point) -> Step:
    """The pitfall: softmax's gradient e^{z_j}/S − y_j, checked against σ(z_j) − y_j, fails."""
    S, zj, yj = s.S, s.z[0], s.y[0]
    shown = sp.exp(zj) / S - yj
    value = s.in_z(shown)
    verification = verify(s, cancelled.value, value, seed=5)  # a point with a visible gap
    if not verification.ok:
        where = _apart_at(s, at_point) or verification.detail
        verification = Verification("failed", where + "; σ(z_j) involves z_j alone, while "
                                    "softmax(z)_j = e^{z_j}/S with S = Σ_n e^{z_n} involves "
                                    "every class")
    at = _builder(s, at_point).value_at(value)
    return Step("softmax carried over", "pitfall", cancelled.lhs, shown, value, verification, at)


def _apart_at(s: BinarySymbols, at_point) -> Optional[str]:
    """σ(z1) against softmax(z)_1 at --at, or None where they agree to 6 digits (with two
    classes softmax(z)_1 = σ(z1 − z2), which is σ(z1) where z2 = 0)."""
    if at_point is None:
        return None
    digits = _builder(s, at_point).digits
    z1 = s.z[0]
    sigma = float((1 / (1 + sp.exp(-z1))).xreplace(at_point).evalf(digits))
    softmax = float((sp.exp(z1) / s.normaliser).xreplace(at_point).evalf(digits))
    if f"{sigma:.6g}" == f"{softmax:.6g}":
        return None
    return (f"at z = {_vector(float(at_point[zn]) for zn in s.z)}, σ(z1) = {sigma:.6g} but "
            f"softmax(z)_1 = e^(z1)/S = {softmax:.6g}, whatever y_1 is")


def _hessian(s: BinarySymbols, at_point, gradient):
    """The Hessian steps for i = j and i ≠ j, then every entry against SymPy's direct diff."""
    z, p, y = s.z, s.p, s.y
    build = _builder(s, at_point)
    BCE = sp.Symbol("BCE")
    cases = [("i = j", 0)] + ([("i ≠ j", 1)] if s.k > 1 else [])
    for case, j in cases:
        lhs = sp.Derivative(BCE, z[0], z[j])
        start = build.add("y is constant", case, lhs, sp.Derivative(p[0], z[j]),
                          before=sp.diff(s.value(p[0] - y[0]), z[j]))
        if j == 0:
            previous = build.add("derivative of the sigmoid", case, lhs,
                                 sp.exp(-z[0]) / (1 + sp.exp(-z[0])) ** 2, before=start.value).value
            build.add("σ' = σ(1 − σ)", case, lhs, p[0] * (1 - p[0]), before=previous)
        else:
            build.add("no coupling", case, lhs, sp.Integer(0), before=start.value)
    template = sp.diff(gradient[0].direct, z[0])
    diagonal = _diagonal_entries(s, build, lambda n: sp.diff(gradient[n].direct, z[n]), template,
                                 lambda n: p[n] * (1 - p[n]), order=2)
    rows = []
    for a in range(s.k):
        row = []
        for b in range(s.k):
            if a == b:
                row.append(diagonal[a])
                continue
            # SymPy's derivative of entry a along z_b: 0 at once, as z_b does not appear
            direct = sp.diff(gradient[a].direct, z[b])
            at = 0.0 if build.at_point is not None else None
            row.append(Entry((a + 1, b + 1), direct, sp.Integer(0),
                             verify(s, direct, sp.Integer(0)), at))
        rows.append(tuple(row))
    return tuple(build.steps), tuple(rows)


def _contrast(s: BinarySymbols, steps, gradient, hessian_rows) -> tuple:
    """How BCE differs from softmax cross-entropy, each row with this derivation's evidence."""
    k = s.k
    uncoupled = all(entry.direct.free_symbols <= {s.z[n], s.y[n]}
                    for n, entry in enumerate(gradient))
    if hessian_rows is None:
        diagonal = uncoupled
        hessian_evidence = ("entry i of the gradient is free of z_j (the row above), so "
                            "∂²BCE/∂z_i∂z_j = 0 for i ≠ j; --hessian checks each entry")
    else:
        diagonal = uncoupled and all(entry.direct == 0 for a, row in enumerate(hessian_rows)
                                     for b, entry in enumerate(row) if a != b)
        hessian_evidence = ("k = 1: the Hessian is 1 × 1, nothing is off its diagonal" if k == 1
                            else f"SymPy's direct ∂²BCE/∂z_i∂z_j is 0 for all {k * (k - 1)} "
                                 "pairs i ≠ j")
    all_verified = all(step.verification.ok for step in steps) and all(
        entry.verification.ok for entry in gradient)
    return (
        Contrast("coupling",
                 "∂CE/∂z_j = p_j − y_j with p_j = e^{z_j}/Σ_n e^{z_n}: every z_n enters",
                 "∂BCE/∂z_j = σ(z_j) − y_j: z_j and y_j alone",
                 f"SymPy's direct ∂BCE/∂z_j has free symbols z_j and y_j only, for every "
                 f"j = 1…{k}",
                 uncoupled),
        Contrast("Hessian", "diag(p) − p pᵀ: off-diagonal entries −p_i p_j ≠ 0",
                 "diag(σ(z)(1 − σ(z))): off-diagonal entries 0", hessian_evidence, diagonal),
        Contrast("targets", "a distribution: Σ_n y_n = 1 (one-hot or soft)",
                 "each y_j in [0, 1] on its own (multi-hot or per-class probabilities)",
                 "no step uses Σ y = 1: every step and entry holds with y1…yK free",
                 all_verified),
        Contrast("probabilities", "p_1 + … + p_K = 1: the classes compete",
                 "each σ(z_j) in (0, 1) on its own: K independent yes/no questions",
                 "by the definitions of softmax and σ", True),
    )
