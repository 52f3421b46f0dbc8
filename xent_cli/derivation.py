"""SymPy: the gradient (and Hessian) of the softmax cross-entropy as a list of verified steps.

A derivation is data. Each step shows an expression in the logits z1…zK, the normaliser
S = Σ_n e^{z_n} and the softmax p_n = e^{z_n}/S, names the rule that justifies it, and carries
how it was checked equal to the step before it: a symbolic identity, or, where that fails to
decide, exact evaluation at random rational points to 40 digits. The gradient and Hessian are
read off the steps' results, so the answer and the steps cannot drift. Every gradient (and
Hessian) entry is also checked against SymPy's own derivative of the definition.

Verification stays fast at large K by never calling ``simplify`` and never writing S out:
S stays a symbol whose derivative ∂S/∂z_j = e^{z_j} is SymPy's derivative of the concrete sum's
terms that contain z_j (and is checked once for the generic Σ_{n=1}^{K}); derivatives follow the
chain rule through S, e^{z_n} becomes a positive symbol u_n, and the difference of two steps is
a small rational function in u, y and S. Σy = 1 enters only where a check needs it, as
y1 + … + yK = 1. Caps: K ≤ 500 for the gradient (soft targets too), K ≤ 60 with the Hessian.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Optional

import sympy as sp

MAX_K = 500  # each gradient entry is O(1) SymPy work, but the rows still print and cost
MAX_K_HESSIAN = 60  # the Hessian has K² entries, each checked on its own
# Soft targets share MAX_K: Σy = 1 enters only where a step uses it, so they cost no more.
RANDOM_POINTS = 3
DIGITS = 40

RULES = {
    "definition of cross-entropy": "CE = −Σ_n y_n log p_n, with p_n = e^{z_n}/S and S = Σ_n e^{z_n}",
    "one-hot target": "y_ℓ = 1 and y_n = 0 for n ≠ ℓ, so only the ℓ-th term remains",
    "log of a quotient": "log(a/b) = log a − log b",
    "log of exp": "log e^{x} = x",
    "targets sum to 1": "Σ_n y_n = 1 turns (Σ_n y_n) log S into log S",
    "differentiate": "the quantity sought: the partial derivative of the last form of CE",
    "linearity": "the derivative of a sum is the sum of the derivatives; ∂z_n/∂z_j = δ_nj",
    "chain rule": "∂ log S/∂z_j = (1/S) ∂S/∂z_j = e^{z_j}/S (derivative of the log-sum-exp)",
    "definition of softmax": "e^{z_j}/S = p_j",
    "recombination": "both cases at once: ∂CE/∂z_j = p_j − y_j, i.e. ∇CE = p − y",
    "y is constant": "H_ij = ∂(p_i − y_i)/∂z_j = ∂p_i/∂z_j, since y does not depend on z",
    "quotient rule": "∂(e^{z_i}/S)/∂z_j = (δ_ij e^{z_i} S − e^{z_i} e^{z_j})/S²",
    "two classes": "for K = 2, p_1 = e^{z_1}/(e^{z_1} + e^{z_2}) = σ(z_1 − z_2): the binary "
                   "cross-entropy of the one logit z_1 − z_2, and ∂CE/∂z_2 = −∂CE/∂z_1",
    "seed's Case 1": "sums only the terms n ≠ ℓ, whose y_n = 0, and so drops −log p_ℓ, whose "
                     "S = Σ_n e^{z_n} depends on z_j: ∂CE/∂z_j = 0 for j ≠ ℓ",
    # Binary cross-entropy (xent_cli.derivation_bce), p_n = σ(z_n) = 1/(1 + e^{−z_n}):
    "definition of binary cross-entropy":
        "BCE = −Σ_n [y_n log p_n + (1 − y_n) log(1 − p_n)], with p_n = σ(z_n) = 1/(1 + e^{−z_n})",
    "log of the complement": "log(1 − σ(z)) = −z + log σ(z), since 1 − σ(z) = e^{−z} σ(z)",
    "collect": "y log σ + (1 − y)(−z + log σ) = log σ − (1 − y) z",
    "softplus": "−log σ(z) = log(1 + e^{−z}) = softplus(−z)",
    "differentiate BCE": "the quantity sought: the partial derivative of the last form of BCE",
    "classes do not couple": "the n-th term involves z_n alone, so ∂/∂z_j keeps only the j-th term",
    "derivative of softplus": "∂ log(1 + e^{−z})/∂z = −e^{−z}/(1 + e^{−z})",
    "complement of the sigmoid": "e^{−z}/(1 + e^{−z}) = 1 − σ(z)",
    "cancel": "(1 − y_j) − (1 − p_j) = p_j − y_j",
    "every class alike": "each class's term has the same form: ∂BCE/∂z_j = σ(z_j) − y_j for every j, "
                         "i.e. ∇BCE = σ(z) − y",
    "derivative of the sigmoid": "∂σ(z)/∂z = e^{−z}/(1 + e^{−z})²",
    "σ' = σ(1 − σ)": "e^{−z}/(1 + e^{−z})² = σ(z)(1 − σ(z))",
    "no coupling": "p_i = σ(z_i) involves z_i alone, so ∂p_i/∂z_j = 0 for i ≠ j: the Hessian is diagonal",
    "softmax carried over": "treats BCE like softmax cross-entropy: ∂BCE/∂z_j = softmax(z)_j − y_j",
}


@dataclass(frozen=True)
class Verification:
    """How a step was checked against the one before it."""

    method: str  # "definition", "identity", "random-points" or "failed"
    detail: str

    @property
    def ok(self) -> bool:
        return self.method != "failed"


@dataclass(frozen=True)
class Step:
    """One line of the derivation: lhs = expr, justified by rule, checked by verification."""

    rule: str
    case: str  # "loss", "j = ℓ", "j ≠ ℓ", "every j", "i = j", "i ≠ j", "seed"
    lhs: sp.Expr
    expr: sp.Expr  # as shown: in z, y, S and p
    value: sp.Expr  # the same in z (and y) only: what was verified
    verification: Verification
    at: Optional[str] = None  # the value at --at, as text

    @property
    def description(self) -> str:
        return RULES[self.rule]


@dataclass(frozen=True)
class Entry:
    """One gradient or Hessian entry: SymPy's direct derivative against the closed form."""

    index: tuple[int, ...]  # 1-based
    direct: sp.Expr
    closed: sp.Expr  # in p and y
    verification: Verification
    at: Optional[float] = None


@dataclass(frozen=True)
class Derivation:
    """The derivation of ∇CE (and the Hessian) for K classes, label ℓ (1-based), or of ∇BCE."""

    k: int
    label: Optional[int]  # None for bce
    soft: Optional[bool]  # None for bce, whose targets are each in [0, 1] on their own
    steps: tuple[Step, ...]
    gradient: tuple[Entry, ...]
    hessian: Optional[tuple[tuple[Entry, ...], ...]]
    hessian_steps: tuple[Step, ...]
    pitfall: Optional[Step]
    at: Optional[tuple[float, ...]]
    loss: str = "ce"  # "ce" (softmax) or "bce" (sigmoid, xent_cli.derivation_bce)
    contrast: tuple = ()  # bce: derivation_bce.Contrast rows, how it differs from softmax
    at_targets: Optional[tuple[float, ...]] = None  # bce: y at --at (else y stays a symbol)

    @property
    def verified(self) -> bool:
        entries = list(self.gradient) + [e for row in self.hessian or () for e in row]
        return all(s.verification.ok for s in self.steps + self.hessian_steps) and all(
            e.verification.ok for e in entries) and all(c.ok for c in self.contrast)


class Symbols:
    """The symbols of one derivation; S stays a symbol whose derivative is known.

    S stands for Σ_n e^{z_n}. Derivatives follow the chain rule through S: ∂f/∂z_j is SymPy's
    ∂f/∂z_j with S held fixed plus ∂f/∂S · ∂S/∂z_j, and ∂S/∂z_j is SymPy's derivative of the
    terms of the concrete sum that contain z_j (the others are free of z_j, so they add 0).
    """

    def __init__(self, k: int, soft: bool, label: int):
        self.k = k
        self.z = sp.symbols(f"z1:{k + 1}", real=True)
        self.p = sp.symbols(f"p1:{k + 1}", positive=True)
        self.S = sp.Symbol("S", positive=True)
        self.log_S = sp.Dummy("log_S", real=True)
        self.u = sp.symbols(f"u1:{k + 1}", positive=True)
        if soft:
            self.y = sp.symbols(f"y1:{k + 1}", real=True)
        else:
            self.y = tuple(sp.Integer(1 if n == label - 1 else 0) for n in range(k))
        # unevaluated, so the terms keep the classes' order: SymPy sorts exp(z10) before exp(z2)
        self.normaliser = sp.Add(*(sp.exp(zn) for zn in self.z), evaluate=False)
        self.target_sum = sp.Add(*self.y)
        self._p_to_exp = {pn: sp.exp(zn) / self.S for pn, zn in zip(self.p, self.z)}
        self._z_index = {zn: n for n, zn in enumerate(self.z)}
        self._normaliser_terms = terms_by_symbol(self.normaliser)

    def dS(self, zj: sp.Symbol) -> sp.Expr:
        """∂S/∂z_j: SymPy's diff of the terms of Σ_n e^{z_n} that contain z_j."""
        return partial(self._normaliser_terms, zj)

    def d(self, f: sp.Expr, zj: sp.Symbol) -> sp.Expr:
        """∂f/∂z_j by the chain rule through S = S(z)."""
        return sp.diff(f, zj) + sp.diff(f, self.S) * self.dS(zj)

    def value(self, expr: sp.Expr) -> sp.Expr:
        """Replaces p_n by e^{z_n}/S and carries out any derivative, keeping S a symbol."""
        expr = expr.xreplace(self._p_to_exp)
        if not expr.has(sp.Derivative):
            return expr

        def carry_out(derivative):
            f = derivative.expr
            for variable, count in derivative.variable_count:
                for _ in range(count):
                    f = self.d(f, variable)
            return f

        return expr.replace(lambda e: isinstance(e, sp.Derivative), carry_out)

    def in_z(self, expr: sp.Expr) -> sp.Expr:
        """Writes S out as Σ_n e^{z_n}: the expression in z (and y) only."""
        return expr.xreplace({self.S: self.normaliser})

    def to_u(self, expr: sp.Expr) -> sp.Expr:
        """Writes e^{a} as a product of u_n = e^{z_n}, a being a linear form in z."""

        def power(argument):
            if argument in self._z_index:
                return self.u[self._z_index[argument]]
            coefficients = sp.Poly(argument, *self.z).as_dict() if argument.free_symbols else {}
            product, rest = sp.Integer(1), sp.Integer(0)
            for monomial, c in coefficients.items():
                if sum(monomial) == 1:
                    product *= self.u[monomial.index(1)] ** c
                elif sum(monomial) == 0:
                    rest += c
                else:
                    return sp.exp(argument)
            return product * sp.exp(rest)

        return expr.replace(lambda e: isinstance(e, sp.exp), lambda e: power(e.args[0]))

    def is_zero(self, difference: sp.Expr) -> bool:
        """Decides difference == 0 symbolically and cheaply, or returns False when undecided."""
        if difference == 0:
            return True
        difference = sp.expand_log(difference, force=True)
        if difference == 0:
            return True
        # log S is an atom like S itself: a fresh symbol keeps expand and cancel polynomial.
        in_u = self.to_u(difference).xreplace({sp.log(self.S): self.log_S})
        if in_u.has(sp.exp, sp.log, sp.Derivative):
            return False
        # S is a symbol: these are rational functions in u, y and S; expand settles sums of
        # monomials at any size, cancel settles small quotients.
        if sp.count_ops(in_u) < 4000 and sp.expand(in_u) == 0:
            return True
        return len(in_u.free_symbols) <= 30 and sp.cancel(sp.together(in_u)) == 0

    def random_point(self, rng: random.Random, free: set) -> dict:
        """Returns random rationals for z (and targets y summing to 1 when they are free), and S."""
        point = {zn: sp.Rational(rng.randint(-12, 12), rng.randint(1, 4)) for zn in self.z}
        ys = [yn for yn in self.y if yn in free]
        if ys:
            weights = [sp.Integer(rng.randint(1, 9)) for _ in self.y]
            total = sum(weights)
            point.update({yn: w / total for yn, w in zip(self.y, weights)
                          if isinstance(yn, sp.Symbol)})
        point[self.S] = self.normaliser.xreplace(point)
        return point


def terms_by_symbol(expr: sp.Expr) -> dict:
    """Maps each free symbol of a sum to the terms that contain it (built once, O(size))."""
    index: dict = {}
    for term in sp.Add.make_args(expr):
        for symbol in term.free_symbols:
            index.setdefault(symbol, []).append(term)
    return index


def partial(terms: dict, zj: sp.Symbol) -> sp.Expr:
    """SymPy's ∂/∂z_j of a sum indexed by terms_by_symbol: the terms free of z_j add 0."""
    return sp.Add(*(term.diff(zj) for term in terms.get(zj, ())))


def generic_normaliser_derivative() -> bool:
    """Checks ∂(Σ_{n=1}^{K} e^{z_n})/∂z_j = e^{z_j} once, for symbolic K and any 1 ≤ j ≤ K."""
    z = sp.IndexedBase("z", real=True)
    n, j, K, m = sp.symbols("n j K m", integer=True, positive=True)
    derivative = sp.diff(sp.Sum(sp.exp(z[n]), (n, 1, K)), z[j]).doit()
    return sp.simplify(derivative.subs(K, j + m - 1) - sp.exp(z[j])) == 0


def verify(symbols: Symbols, before: sp.Expr, after: sp.Expr, *,
           targets_sum_to_one: bool = False, seed: int = 0) -> Verification:
    """Checks after == before: symbolically, else at random rational points, else reports the gap.

    With targets_sum_to_one, the sum y1 + … + yK is 1 (the only place the constraint enters);
    if the sum does not appear as such, y_K = 1 − Σ others is tried.
    """
    difference = before - after
    decided = False
    if targets_sum_to_one:
        decided = symbols.is_zero(difference.xreplace({symbols.target_sum: 1}))
        if not decided:
            last = symbols.y[-1]
            decided = symbols.is_zero(difference.xreplace({last: 1 - sp.Add(*symbols.y[:-1])}))
    else:
        decided = symbols.is_zero(difference)
    if decided:
        return Verification("identity", "symbolic identity")
    rng = random.Random(seed)
    free = difference.free_symbols
    for _ in range(RANDOM_POINTS):
        point = symbols.random_point(rng, free)
        gap = difference.xreplace(point).evalf(DIGITS)
        if not gap.is_number or abs(gap) > sp.Float(10) ** (10 - DIGITS):
            where = "z = (" + ", ".join(str(point[zn]) for zn in symbols.z) + ")"
            ys = [str(point[yn]) for yn in symbols.y if yn in point]  # symbols only
            if ys:
                where += ", y = (" + ", ".join(ys) + ")"
            return Verification("failed", f"differs at {where}: the steps give "
                                          f"{sp.N(before.xreplace(point), 6)} and "
                                          f"{sp.N(after.xreplace(point), 6)}")
    return Verification("random-points", f"equal at {RANDOM_POINTS} random rational points "
                                         f"to {DIGITS} digits (SymPy could not decide symbolically)")


def parse_at(text: str, k: int) -> tuple[float, ...]:
    """Reads --at: exactly k comma-separated finite numbers (never evaluated as an expression)."""
    example = ",".join(["0"] * k) if k <= 5 else "0,1,..."
    return parse_values(text, k, "--at", "z", math.isfinite, "is not finite",
                        f"give one logit per class, e.g. --at {example}")


def parse_values(text: str, k: int, option: str, symbol: str, valid, invalid: str,
                 hint: str) -> tuple[float, ...]:
    """Reads k comma-separated numbers for option; value n is symbol n, refused unless valid."""
    from xent_cli.errors import InputError

    def written(message: str) -> InputError:
        from xent_cli.data import list_hint  # NumPy's import, on this path alone

        return InputError(message + list_hint(text, option))

    items = [item.strip() for item in text.split(",")]
    if len(items) != k:
        raise written(f"{option} has {len(items)} value(s); --k is {k}: {hint}")
    values = []
    for position, item in enumerate(items, start=1):
        try:
            value = float(item)
        except ValueError:
            raise written(f"{option} value {position} ({symbol}{position}): {item!r} is not a "
                          "number") from None
        if not valid(value):
            raise InputError(f"{option} value {position} ({symbol}{position}): {item!r} {invalid}")
        values.append(value)
    return tuple(values)


def check_classes(k: int, hessian: bool, *, fewest: int = 2, loss: str = "cross-entropy") -> None:
    """Refuses k below the loss's fewest classes or above the caps, which every loss and
    target (soft ones too) shares."""
    from xent_cli.errors import InputError

    if k < fewest:
        from xent_cli.data import BINARY_HINT

        raise InputError(f"--k {k}: {loss} needs at least {fewest} "
                         f"{'class' if fewest == 1 else 'classes'}"
                         f"{BINARY_HINT if k == 1 and fewest == 2 else ''}")
    cap = MAX_K_HESSIAN if hessian else MAX_K
    if k > cap:
        raise InputError(f"--k {k} is above the cap of {cap} "
                         + ("with --hessian" if hessian else "for derive"))


def check_size(k: int, label: int, hessian: bool) -> None:
    """Refuses k outside 2 and the caps (check_classes), and labels outside 1..k."""
    from xent_cli.errors import InputError

    check_classes(k, hessian)
    if not 1 <= label <= k:
        raise InputError(f"--label {label} is not a class 1..{k} (labels are 1-based, like ℓ)")


class _Builder:
    """Appends steps, each verified against the previous value."""

    def __init__(self, symbols: Symbols, at: Optional[dict], digits: int = 0):
        self.symbols, self.at_point, self.steps = symbols, at, []
        # working digits at the point, beyond the default, where a form cancels (1 − σ(z))
        self.digits = digits

    def value_at(self, value: sp.Expr) -> Optional[str]:
        if self.at_point is None:
            return None
        number = value.xreplace(self.at_point).evalf(max(12, self.digits))
        return f"{float(number):.6g}" if number.is_number else str(sp.N(number, 6))

    def add(self, rule, case, lhs, expr, *, before=None, verification=None, targets_sum_to_one=False):
        value = self.symbols.value(expr)
        if verification is None:
            verification = verify(self.symbols, before, value, seed=len(self.steps),
                                  targets_sum_to_one=targets_sum_to_one)
        step = Step(rule, case, lhs, expr, value, verification, self.value_at(value))
        self.steps.append(step)
        return step


def _log(x):
    return sp.log(x, evaluate=False)


def _digits(at: tuple[float, ...]) -> int:
    """The working digits at a point that keep what p_j − 1 and p_j(1 − p_j) cancel.

    1 − p_ℓ = Σ_{n≠ℓ} e^{z_n}/S loses about (max z − min z)/ln 10 digits: at z = (100, 0, −100),
    30 digits leave rounding noise of −1 + e^{100}/S, not −3.7e-44.
    """
    # Beyond a spread of 760, what cancels is below float64's smallest number (e^-745), so
    # more digits would change no value shown, and evalf would take minutes at z = 1e6.
    return 30 + math.ceil(min(max(at) - min(at), 760.0) / math.log(10))


def _builder(s: Symbols, at_point: Optional[dict]) -> _Builder:
    """Returns a builder that evaluates at the point with the digits it cancels (see _digits)."""
    if at_point is None:
        return _Builder(s, None)
    return _Builder(s, at_point, digits=_digits([float(at_point[zn]) for zn in s.z]))


def derive(k: int, label: int = 1, soft: bool = False, hessian: bool = False,
           at: Optional[tuple[float, ...]] = None) -> Derivation:
    """Derives ∂CE/∂z_j for every j (and the Hessian) with every step verified."""
    check_size(k, label, hessian)
    if at is not None and len(at) != k:
        from xent_cli.errors import InputError
        raise InputError(f"--at has {len(at)} values; --k is {k}")
    s = Symbols(k, soft, label)
    z, p, y, S = s.z, s.p, s.y, s.S
    l = label - 1
    at_point = None
    if at is not None:
        # Floats of as many digits as the builder works with: evalf cannot regain digits
        # that a 30-digit point loses to cancellation.
        digits = _digits(at)
        at_point = {zn: sp.Float(v, digits) for zn, v in zip(z, at)}
        at_point[S] = s.normaliser.xreplace(at_point)
    build = _builder(s, at_point)
    CE = sp.Symbol("CE")
    ys = sp.symbols(f"y1:{k + 1}", real=True)  # the generic targets of the definition

    # The loss: from the definition to log S − Σ y_n z_n.
    definition = sp.Add(*(-yn * _log(sp.exp(zn) / S) for yn, zn in zip(ys, z)))
    first = build.add("definition of cross-entropy", "loss", CE, definition,
                      verification=Verification("definition", "the definition of the loss"))
    previous = first.value
    if soft:
        quotient = sp.Add(*(-yn * (_log(sp.exp(zn)) - _log(S)) for yn, zn in zip(y, z)))
        previous = build.add("log of a quotient", "loss", CE, quotient, before=previous).value
        logs = sp.Add(*(-yn * zn for yn, zn in zip(y, z))) + sp.Add(*y) * _log(S)
        previous = build.add("log of exp", "loss", CE, logs, before=previous).value
        loss = _log(S) - sp.Add(*(yn * zn for yn, zn in zip(y, z)))
        previous = build.add("targets sum to 1", "loss", CE, loss, before=previous,
                             targets_sum_to_one=True).value
    else:
        one_hot = {yn: value for yn, value in zip(ys, y)}
        target = -_log(sp.exp(z[l]) / S)
        previous = build.add("one-hot target", "loss", CE, target,
                             before=previous.xreplace(one_hot)).value
        previous = build.add("log of a quotient", "loss", CE, -(_log(sp.exp(z[l])) - _log(S)),
                             before=previous).value
        loss = _log(S) - z[l]
        previous = build.add("log of exp", "loss", CE, loss, before=previous).value

    # The derivative, for one representative j per case.
    if soft:
        cases = [("every j", l)]
    else:
        cases = [("j = ℓ", l), ("j ≠ ℓ", (l + 1) % k)]
    generic = Verification("identity", "symbolic identity; ∂S/∂z_j = e^{z_j} also holds for "
                                       "the generic Σ_{n=1}^{K} e^{z_n}")
    if not generic_normaliser_derivative():
        generic = Verification("failed", "SymPy does not give ∂(Σ_n e^{z_n})/∂z_j = e^{z_j}")
    results = {}
    for case, j in cases:
        zj = z[j]
        lhs = sp.Derivative(CE, zj)
        start = build.add("differentiate", case, lhs, sp.Derivative(loss, zj),
                          verification=Verification("definition", "∂/∂z_j of the last form of CE"))
        previous = start.value
        if soft:
            linear = sp.Derivative(_log(S), zj) - y[j]
            chain = sp.exp(zj) / S - y[j]
            final = p[j] - y[j]
        else:
            delta = 1 if j == l else 0
            linear = sp.Derivative(_log(S), zj) - sp.Derivative(z[l], zj, evaluate=False)
            chain = sp.exp(zj) / S - delta
            final = p[j] - delta
        previous = build.add("linearity", case, lhs, linear, before=previous).value
        step = build.add("chain rule", case, lhs, chain, before=previous)
        if step.verification.ok:
            step = Step(step.rule, step.case, step.lhs, step.expr, step.value, generic, step.at)
            build.steps[-1] = step
        results[case] = (j, build.add("definition of softmax", case, lhs, final, before=step.value))

    # The gradient table: SymPy's direct derivative of the definition (S by the chain rule)
    # against the closed form read off the steps. Each entry is O(1) work: SymPy differentiates
    # only the terms that contain z_j, and ∂CE/∂S is taken once.
    target_loss = first.value if soft else first.value.xreplace(one_hot)
    loss_terms = terms_by_symbol(target_loss)
    by_s = sp.together(sp.diff(target_loss, S))
    gradient, direct_in_s = [], []
    for j in range(k):
        if soft:
            rep, step = results["every j"]
            closed = step.expr.xreplace({p[rep]: p[j], y[rep]: y[j]})
        else:
            rep, step = results["j = ℓ"] if j == l else results["j ≠ ℓ"]
            closed = step.expr.xreplace({p[rep]: p[j]})
        direct = partial(loss_terms, z[j]) + by_s * s.dS(z[j])
        closed_value = s.value(closed)
        check = verify(s, direct, closed_value, targets_sum_to_one=soft)
        direct_in_s.append(direct)
        gradient.append(Entry((j + 1,), s.in_z(direct), closed, check, _number(build, closed_value)))

    recombined = p[l] - (y[l] if soft else 1)
    build.steps.append(Step(
        "recombination", "every j", sp.Derivative(CE, sp.Symbol("z_j")),
        sp.Symbol("p_j") - sp.Symbol("y_j"), recombined, by_every_entry(gradient), None))

    if k == 2:
        build.steps.append(_two_classes(s, build))

    pitfall = None
    if not soft:
        j, step = results["j ≠ ℓ"]
        pitfall = _builder(s, at_point).add("seed's Case 1", "seed", sp.Derivative(CE, z[j]),
                                            sp.Integer(0), before=step.value)
        if not pitfall.verification.ok:
            pitfall = Step(pitfall.rule, pitfall.case, pitfall.lhs, pitfall.expr, pitfall.value,
                           _case_1_refuted(s, l, j, step.value, at, at_point), pitfall.at)

    hessian_rows, hessian_steps = None, ()
    if hessian:
        hessian_steps, hessian_rows = _hessian(s, l, soft, at_point, gradient, direct_in_s)

    return Derivation(k, label, soft, tuple(build.steps), tuple(gradient), hessian_rows,
                      hessian_steps, pitfall, at)


def _two_classes(s: Symbols, build: _Builder) -> Step:
    """K = 2: ∂CE/∂z1 = σ(z1 − z2) − y1, checked against p1 − y1 with S written out (S is
    e^{z1} + e^{z2} here, which the symbol S alone does not know)."""
    z1, z2 = s.z
    shown = sp.Function("sigma")(z1 - z2) - s.y[0]
    value = 1 / (1 + sp.exp(z2 - z1)) - s.y[0]
    verification = verify(s, s.in_z(s.value(s.p[0] - s.y[0])), value)
    return Step("two classes", "k = 2", sp.Derivative(sp.Symbol("CE"), z1), shown, value,
                verification, build.value_at(value))


def _case_1_refuted(s: Symbols, l: int, j: int, value: sp.Expr, at, at_point) -> Verification:
    """The seed's Case 1 refuted where a student can follow it: at --at, else at z = 0, where
    p_j = 1/K; and the term the post drops, which carries S's dependence on z_j."""
    if at_point is None:
        point = {**{zn: sp.Integer(0) for zn in s.z}, s.S: sp.Integer(s.k)}
        where, shown = _vector([0] * s.k), str(value.xreplace(point))  # exactly 1/K
    else:
        true = value.xreplace(at_point).evalf(_digits(at))
        where = _vector(at)
        shown = f"{float(true):.6g}" if float(true) != 0 else str(sp.N(true, 6))  # e^-800/S
    n, c = j + 1, l + 1
    return Verification("failed", f"at z = {where}, ∂CE/∂z{n} = p_{n} = {shown}, not 0: Case 1 "
                                  f"sums only the terms n ≠ ℓ, whose y_n = 0, and so drops −log "
                                  f"p_{c} = log S − z{c}, which depends on z{n} through S = "
                                  f"Σ_n e^(z_n): ∂ log S/∂z{n} = e^(z{n})/S = p_{n}")


def _vector(values) -> str:
    """(v1, v2, …) as %g, the first and last three of more than 8."""
    items = [f"{v:g}" for v in values]
    if len(items) > 8:
        items = items[:3] + ["…"] + items[-3:]
    return "(" + ", ".join(items) + ")"


def by_every_entry(entries) -> Verification:
    """Returns the verification of a step that states every entry at once: the entries', each
    against SymPy's direct derivative ('random-points' where their methods differ)."""
    all_ok = all(e.verification.ok for e in entries)
    methods = sorted({e.verification.method for e in entries})
    method = (methods[0] if all_ok and len(methods) == 1 else
              "failed" if not all_ok else "random-points")
    return Verification(method, f"each of the {len(entries)} entries against SymPy's direct "
                                f"derivative: " + ", ".join(methods))


def _number(build: _Builder, value: sp.Expr) -> Optional[float]:
    if build.at_point is None:
        return None
    number = value.xreplace(build.at_point).evalf(max(15, build.digits))
    return float(number) if number.is_number else None


def _hessian(s: Symbols, l: int, soft: bool, at_point, gradient, direct_in_s):
    """The Hessian steps for i = j and i ≠ j, then every entry against SymPy's direct diff."""
    z, p, S = s.z, s.p, s.S
    build = _builder(s, at_point)
    i = l
    for case, j in (("i = j", l), ("i ≠ j", (l + 1) % s.k)):
        lhs = sp.Derivative(sp.Symbol("CE"), z[i], z[j])
        start = build.add("y is constant", case, lhs, sp.Derivative(p[i], z[j]),
                          before=s.d(s.value(gradient[i].closed), z[j]))
        delta = 1 if i == j else 0
        quotient = (delta * sp.exp(z[i]) * S - sp.exp(z[i]) * sp.exp(z[j])) / S ** 2
        previous = build.add("quotient rule", case, lhs, quotient, before=start.value).value
        build.add("definition of softmax", case, lhs, delta * p[i] - p[i] * p[j], before=previous)
    rows = []
    for a in range(s.k):
        # SymPy's derivative of the direct gradient entry, S by the chain rule (∂/∂S once a row).
        direct_gradient = direct_in_s[a]
        by_s = sp.diff(direct_gradient, S)
        row = []
        for b in range(s.k):
            closed = (p[a] if a == b else 0) - p[a] * p[b]
            direct = sp.diff(direct_gradient, z[b]) + by_s * s.dS(z[b])
            closed_value = s.value(closed)
            check = verify(s, direct, closed_value, targets_sum_to_one=soft)
            row.append(Entry((a + 1, b + 1), s.in_z(direct), closed, check,
                             _number(build, closed_value)))
        rows.append(tuple(row))
    return tuple(build.steps), tuple(rows)
