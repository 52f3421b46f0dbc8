"""The safe expression language of claims (``derive --claim``) and formulas (``check --expr``).

User text is tokenized and parsed by this module's own whitelist grammar into a small tree of
frozen dataclasses; nothing the user types is ever handed to Python's ``eval`` or SymPy's parser.
Limits on length, token count, nesting depth and powers are checked before any work is done,
so hostile or huge text fails in well under a second with an ``ExpressionError`` naming the column.

Grammar (``|`` separates choices, ``[...]`` in quotes is a literal bracket)::

    claim     := [guard ":"] expr
    guard     := index cmp index              e.g.  j != l   j = l
    expr      := term (("+" | "-") term)*
    term      := unary (("*" | "/") unary)*
    unary     := ("-" | "+") unary | power
    power     := atom [("^" | "**") unary]     right-associative: 2^3^2 = 2^9
    atom      := number | name | call | "(" expr ")" | "[" index cmp index "]"
    call      := ("exp" | "log") "(" expr ")" | "sum" "(" expr ")"
    cmp       := "=" | "==" | "!=" | "≠"
    index     := j | l | n | integer
    number    := digits ["." digits]           decimal, no exponent, no underscores

Names: ``p_j y_j z_j`` (the j-th probability, target and logit; ``p y z`` are aliases),
``p_l y_l z_l`` (the label's entries; ``ℓ`` works for ``l``), ``j`` and ``l`` (1-based class
numbers), ``k`` (the number of classes). Inside ``sum(...)``, which sums over the classes
n = 1..k, ``p y z`` and ``p_n y_n z_n`` are the n-th entries: ``sum(exp(z))`` is Σ_n e^{z_n}.
``[j = l]`` is the Iverson bracket: 1 when j = ℓ, else 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from xent_cli.errors import ExpressionError

MAX_LENGTH = 2000  # characters of user text
MAX_TOKENS = 400
MAX_DEPTH = 100  # nested parentheses, calls, signs and powers
MAX_EXPONENT = 64  # largest |exponent| of a power with a constant exponent
MAX_CONSTANT_BITS = 4096  # constants folded while parsing stay below 2^4096

VARIABLES = ("p", "y", "z")
INDEXES = ("j", "l", "n")
FUNCTIONS = ("exp", "log", "sum")
NAMES_HELP = "names are p_j, y_j, z_j, p_l, y_l, z_l, j, l, k, and the functions exp, log, sum"
DELTA_HELP = "Kronecker's delta δ_jl is [j = l]"
SIGMOID_HELP = "under --loss bce σ(z) is p, or write 1/(1 + exp(-z))"
# What a student who has read a derivation types, and how the language writes it
NAME_HINTS = {
    "S": "S = Σ_n e^{z_n} is sum(exp(z))",
    "softmax": "softmax(z)_j is p_j",
    "sigmoid": SIGMOID_HELP, "sigma": SIGMOID_HELP,
    "delta": DELTA_HELP, "delta_jl": DELTA_HELP, "delta_lj": DELTA_HELP,
    "dCE": "give the right-hand side only, as in p_j - y_j",
    "dL": "give the right-hand side only, as in p_j - y_j",
}
INDEX_HELP = ("entries are p_j, y_j, z_j (class j) and p_l, y_l, z_l (the label's); for one case "
              "write a guard, as in 'j = l: p_j - 1'")


# ---------------------------------------------------------------------------------------------
# The tree
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Number:
    """A decimal constant, kept exact."""

    value: Fraction


@dataclass(frozen=True)
class Entry:
    """An entry of p, y or z: ``variable`` in p/y/z, ``index`` in j/l/n (n only inside sum)."""

    variable: str
    index: str


@dataclass(frozen=True)
class Index:
    """The number j, l or n (1-based), or k, the number of classes."""

    name: str


@dataclass(frozen=True)
class Unary:
    """Negation (``-x``); a unary plus is dropped while parsing."""

    operand: "Node"


@dataclass(frozen=True)
class Binary:
    """``left op right`` with op one of + - * / ^."""

    op: str
    left: "Node"
    right: "Node"


@dataclass(frozen=True)
class Call:
    """exp(argument) or log(argument), the natural logarithm."""

    function: str
    argument: "Node"


@dataclass(frozen=True)
class Sum:
    """Σ over the classes n = 1..k of ``body``."""

    body: "Node"


@dataclass(frozen=True)
class Iverson:
    """``[left = right]`` or ``[left != right]``: 1 when the comparison holds, else 0."""

    left: str | int
    equal: bool
    right: str | int


Node = Number | Entry | Index | Unary | Binary | Call | Sum | Iverson

SCOPES = {None: "every j", True: "j = ℓ", False: "j ≠ ℓ"}


@dataclass(frozen=True)
class Claim:
    """A claimed formula for dCE/dz_j and the j it speaks of: "every j", "j = ℓ" or "j ≠ ℓ"."""

    scope: str
    body: Node


# ---------------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Token:
    kind: str  # "number", "name", "op", "end"
    text: str
    column: int  # 1-based


SYMBOLS = {
    "**": "^", "==": "=", "!=": "!=", "+": "+", "-": "-", "−": "-", "*": "*", "·": "*", "×": "*",
    "/": "/", "^": "^", "(": "(", ")": ")", "[": "[", "]": "]", ":": ":", "=": "=", "≠": "!=",
}


def _fail(message: str, column: int, hint: str = "") -> ExpressionError:
    return ExpressionError(f"{message} at column {column}" + (f"; {hint}" if hint else ""))


def _unknown(word: str, column: int) -> ExpressionError:
    """The error for a name outside the language, with the spelling it has where one is likely."""
    variable, _, index = word.partition("_")
    if word in NAME_HINTS:
        hint = NAME_HINTS[word]
    elif variable in VARIABLES and index.isdigit():
        hint = INDEX_HELP
    elif word != word.lower() and _known(word.lower()):
        hint = f"names are lower case: {word.lower()}"
    else:
        hint = NAMES_HELP
    return _fail(f"unknown name '{_clip(word)}'", column, hint)


def _product_hint(text: str, column: int) -> str:
    """Says to write '*', with the user's text mended when it is short and one printable line."""
    mended = text[:column - 1].rstrip() + " * " + text[column - 1:].lstrip()
    shown = mended if len(mended) <= 40 and mended.isprintable() else "2 * p_j"
    return f"write '*' for a product, as in {shown}"


def _known(word: str) -> bool:
    """Says whether a word is in the vocabulary (the parser checks where it may appear)."""
    variable, _, index = word.partition("_")
    return (word in FUNCTIONS or word in VARIABLES or word in INDEXES or word == "k"
            or (variable in VARIABLES and index in INDEXES))


def tokenize(text: str) -> list[Token]:
    """Splits text into tokens, refusing any character or name outside the language."""
    if not isinstance(text, str):
        raise ExpressionError("an expression must be text")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression is {len(text)} characters long; the limit is {MAX_LENGTH}")
    tokens: list[Token] = []
    i = 0
    while i < len(text):
        char = text[i]
        column = i + 1
        if char.isspace():
            i += 1
            continue
        if len(tokens) >= MAX_TOKENS:
            raise _fail(f"expression has more than {MAX_TOKENS} tokens", column)
        if char in "0123456789" or (char == "." and text[i + 1:i + 2].isdigit()):
            end = i
            while end < len(text) and text[end] in "0123456789":
                end += 1
            if end < len(text) and text[end] == ".":
                end += 1
                while end < len(text) and text[end] in "0123456789":
                    end += 1
            if end < len(text) and (text[end].isalnum() or text[end] in "_."):
                # 2p_j is a product without '*'; 1e-3 is scientific notation, not 1 * e-3
                exponent = text[end + 1:end + 3].removeprefix("+").removeprefix("-")
                scientific = text[end] in "eE" and exponent[:1] in tuple("0123456789")
                raise _fail(f"malformed number '{_clip(text[i:end + 1])}'", column,
                            _product_hint(text, end + 1)
                            if text[end].isalpha() and not scientific
                            else "numbers are decimals like 2 or 0.5")
            tokens.append(Token("number", text[i:end], column))
            i = end
        elif char.isascii() and (char.isalpha() or char == "_") or char == "ℓ":
            end = i
            while end < len(text) and ((text[end].isascii() and (text[end].isalnum() or text[end] == "_"))
                                       or text[end] == "ℓ"):
                end += 1
            word = text[i:end].replace("ℓ", "l")
            if not _known(word):
                raise _unknown(text[i:end], column)
            tokens.append(Token("name", word, column))
            i = end
        elif text[i:i + 2] in SYMBOLS:
            tokens.append(Token("op", SYMBOLS[text[i:i + 2]], column))
            i += 2
        elif char in SYMBOLS:
            tokens.append(Token("op", SYMBOLS[char], column))
            i += 1
        else:
            shown = char if char.isprintable() else repr(char)[1:-1]
            raise _fail(f"unexpected character '{shown}'", column,
                        {"δ": DELTA_HELP, "σ": SIGMOID_HELP}.get(char, ""))
    tokens.append(Token("end", "", len(text) + 1))
    return tokens


# ---------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------

def constant(node: Node) -> Fraction | None:
    """Returns the exact value of a node made of numbers only (None otherwise or if irrational)."""
    if isinstance(node, Number):
        return node.value
    if isinstance(node, Unary):
        value = constant(node.operand)
        return None if value is None else -value
    if isinstance(node, Binary):
        left, right = constant(node.left), constant(node.right)
        if left is None or right is None:
            return None
        if node.op == "+":
            return left + right
        if node.op == "-":
            return left - right
        if node.op == "*":
            return left * right
        if node.op == "/":
            return None if right == 0 else left / right
        if right.denominator == 1 and not (left == 0 and right < 0):
            return left ** int(right)  # the parser has bounded the size of this power
    return None


def _bits(value: Fraction) -> int:
    return max(value.numerator.bit_length(), value.denominator.bit_length())


class _Parser:
    """Recursive descent over the token list; ``depth`` bounds the recursion."""

    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.position = 0
        self.depth = 0
        self.in_sum = False

    @property
    def token(self) -> Token:
        return self.tokens[self.position]

    def advance(self) -> Token:
        token = self.token
        self.position += 1
        return token

    def at(self, *texts: str) -> bool:
        return self.token.kind == "op" and self.token.text in texts

    def expect(self, text: str, what: str) -> Token:
        if not self.at(text):
            raise _fail(f"expected {what}, found {self.describe()}", self.token.column)
        return self.advance()

    def describe(self) -> str:
        return "the end of the text" if self.token.kind == "end" else f"'{self.token.text}'"

    def nested(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _fail(f"expression is nested more than {MAX_DEPTH} levels deep", self.token.column)
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.depth -= 1

    # claim := [guard ":"] expr
    def claim(self) -> Claim:
        equal = None
        if any(t.kind == "op" and t.text == ":" for t in self.tokens):
            left, equal, right = self.comparison()
            if {left, right} != {"j", "l"}:
                raise _fail("a guard compares j with l, as in 'j != l: p_j' or 'j = l: p_j - 1'",
                            self.tokens[0].column)
            self.expect(":", "':' after the guard")
        body = self.expression()
        self.finish()
        return Claim(SCOPES[equal], body)

    def finish(self) -> None:
        if self.token.kind != "end":
            raise _fail(f"unexpected {self.describe()}", self.token.column)

    def expression(self) -> Node:
        node = self.term()
        while self.at("+", "-"):
            op = self.advance().text
            node = self.folded(Binary(op, node, self.term()))
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.at("*", "/"):
            op = self.advance().text
            node = self.folded(Binary(op, node, self.unary()))
        if self.token.kind in ("number", "name") or self.at("(", "["):  # 2 p_j, p_j(1 - p_j)
            raise _fail(f"unexpected {self.describe()}", self.token.column,
                        _product_hint(self.text, self.token.column))
        return node

    def unary(self) -> Node:
        # Each level of nesting (sign, power, parenthesis, call, bracket) costs one unit of depth.
        with self.nested():
            if self.at("-"):
                self.advance()
                return self.folded(Unary(self.unary()))
            if self.at("+"):
                self.advance()
                return self.unary()
            return self.power()

    def power(self) -> Node:
        base = self.atom()
        if not self.at("^"):
            return base
        column = self.advance().column
        exponent = self.unary()
        value = constant(exponent)
        if value is not None and abs(value) > MAX_EXPONENT:
            raise _fail(f"exponent {_short(value)} is too large; powers are limited to "
                        f"±{MAX_EXPONENT}", column)
        node = Binary("^", base, exponent)
        base_value = constant(base)
        if base_value is not None and value is not None and value.denominator == 1:
            if _bits(base_value) * abs(int(value)) > MAX_CONSTANT_BITS:
                raise _fail("power is too large a number", column)
        return node

    def folded(self, node: Node) -> Node:
        """Keeps constants bounded: a product of huge powers could otherwise grow without limit."""
        value = constant(node)
        if value is not None and _bits(value) > MAX_CONSTANT_BITS:
            raise _fail("constant is too large a number", self.token.column)
        return node

    def atom(self) -> Node:
        token = self.token
        if token.kind == "number":
            self.advance()
            return Number(Fraction(token.text))
        if token.kind == "name":
            return self.name()
        if self.at("("):
            self.advance()
            node = self.expression()
            self.expect(")", "')'")
            return node
        if self.at("["):
            self.advance()
            left, equal, right = self.comparison()
            self.expect("]", "']' to close the bracket")
            return Iverson(left, equal, right)
        raise _fail(f"expected a number, a name or '(', found {self.describe()}", token.column)

    def index(self) -> str | int:
        token = self.advance()
        if token.kind == "number" and "." not in token.text:
            return int(token.text)
        if token.kind == "name" and token.text in INDEXES:
            if token.text == "n" and not self.in_sum:
                raise _fail("'n' is the index of sum(...) and only exists inside it", token.column)
            return token.text
        raise _fail("a bracket or guard compares j, l, n or a class number, as in [j = l]",
                    token.column)

    def comparison(self) -> tuple[str | int, bool, str | int]:
        left = self.index()
        if not self.at("=", "!="):
            raise _fail(f"expected '=' or '!=', found {self.describe()}", self.token.column)
        equal = self.advance().text == "="
        return left, equal, self.index()

    def name(self) -> Node:
        token = self.advance()
        word = token.text
        if word in FUNCTIONS:
            self.expect("(", f"'(' after {word}")
            if word == "sum":
                if self.in_sum:
                    raise _fail("sum(...) cannot be nested", token.column)
                self.in_sum = True
                body = self.expression()
                self.in_sum = False
                node: Node = Sum(body)
            else:
                node = Call(word, self.expression())
            self.expect(")", f"')' to close {word}(")
            return node
        if word in VARIABLES:
            return Entry(word, "n" if self.in_sum else "j")
        variable, _, index = word.partition("_")
        if variable in VARIABLES and index in INDEXES:
            if index == "n" and not self.in_sum:
                raise _fail(f"'{word}' only exists inside sum(...)", token.column)
            return Entry(variable, index)
        if word in ("j", "l", "k") or (word == "n" and self.in_sum):
            return Index(word)
        raise _unknown(word, token.column)


def _clip(text: str) -> str:
    """Shortens user text quoted in an error message."""
    return text if len(text) <= 30 else f"{text[:27]}..."


def _short(value: Fraction) -> str:
    text = str(value)
    return text if len(text) <= 20 else f"{text[:8]}…({len(text)} digits)"


def parse_claim(text: str) -> Claim:
    """Parses a claim such as ``p_j - y_j`` or ``j != l: 0`` (raises ExpressionError)."""
    return _Parser(text).claim()


def parse_expression(text: str) -> Node:
    """Parses a formula such as ``p - y`` (no guard; raises ExpressionError)."""
    parser = _Parser(text)
    for token in parser.tokens:
        if token.kind == "op" and token.text == ":":
            raise _fail("a guard such as 'j != l:' belongs to a claim, not to a formula",
                        token.column)
    node = parser.expression()
    parser.finish()
    return node


# ---------------------------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------------------------

PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "neg": 3, "^": 4}


def _entry_text(node: Entry, in_sum: bool) -> str:
    return node.variable if in_sum and node.index == "n" else f"{node.variable}_{node.index}"


def format_expression(node: Node, *, in_sum: bool = False) -> str:
    """Returns text in the language itself that parses back to the same tree."""
    if isinstance(node, Number):
        return _decimal_text(node.value)
    if isinstance(node, Entry):
        return _entry_text(node, in_sum)
    if isinstance(node, Index):
        return node.name
    if isinstance(node, Iverson):
        return f"[{node.left} {'=' if node.equal else '!='} {node.right}]"
    if isinstance(node, Call):
        return f"{node.function}({format_expression(node.argument, in_sum=in_sum)})"
    if isinstance(node, Sum):
        return f"sum({format_expression(node.body, in_sum=True)})"
    if isinstance(node, Unary):
        inner = format_expression(node.operand, in_sum=in_sum)
        if _precedence(node.operand) <= PRECEDENCE["neg"] or _is_negative_number(node.operand):
            inner = f"({inner})"
        return f"-{inner}"
    left = format_expression(node.left, in_sum=in_sum)
    right = format_expression(node.right, in_sum=in_sum)
    mine = PRECEDENCE[node.op]
    if node.op == "^":
        # Right-associative, and a power binds tighter than a unary minus on its left.
        if _precedence(node.left) <= mine:
            left = f"({left})"
        if _precedence(node.right) < mine and not isinstance(node.right, Unary):
            right = f"({right})"
        return f"{left}^{right}"
    if _precedence(node.left) < mine:
        left = f"({left})"
    if _precedence(node.right) <= mine:  # a - (b - c), a / (b * c)
        right = f"({right})"
    return f"{left} {node.op} {right}"


def _decimal_text(value: Fraction) -> str:
    """Writes a number parsed from a decimal literal back as one (its expansion terminates)."""
    places = 0
    while (value * 10**places).denominator != 1:
        places += 1
    digits = str(value.numerator * 10**places // value.denominator).rjust(places + 1, "0")
    return digits if places == 0 else f"{digits[:-places]}.{digits[-places:]}"


def _precedence(node: Node) -> int:
    if isinstance(node, Binary):
        return PRECEDENCE[node.op]
    if isinstance(node, Unary):
        return PRECEDENCE["neg"]
    return 5


def _is_negative_number(node: Node) -> bool:
    return isinstance(node, Number) and node.value < 0


def format_claim(claim: Claim) -> str:
    """Returns the claim as text of the language, its guard first."""
    guard = {"every j": "", "j = ℓ": "j = l: ", "j ≠ ℓ": "j != l: "}[claim.scope]
    return guard + format_expression(claim.body)


def format_latex(node: Node, *, in_sum: bool = False) -> str:
    """Returns LaTeX for the tree (ℓ for the label, n for the summation index)."""
    if isinstance(node, Number):
        value = node.value
        return (str(value.numerator) if value.denominator == 1
                else rf"\frac{{{value.numerator}}}{{{value.denominator}}}")
    if isinstance(node, Entry):
        return f"{node.variable}_{{{_latex_index(node.index)}}}"
    if isinstance(node, Index):
        return _latex_index(node.name)
    if isinstance(node, Iverson):
        relation = "=" if node.equal else r"\neq"
        return rf"[{_latex_index(node.left)} {relation} {_latex_index(node.right)}]"
    if isinstance(node, Call):
        inner = format_latex(node.argument, in_sum=in_sum)
        return rf"e^{{{inner}}}" if node.function == "exp" else rf"\log\left({inner}\right)"
    if isinstance(node, Sum):
        return rf"\sum_{{n=1}}^{{k}} \left({format_latex(node.body, in_sum=True)}\right)"
    if isinstance(node, Unary):
        inner = format_latex(node.operand, in_sum=in_sum)
        if (isinstance(node.operand, Unary) or _is_negative_number(node.operand)
                or isinstance(node.operand, Binary) and node.operand.op in "+-"):
            inner = rf"\left({inner}\right)"
        return f"-{inner}"
    left = format_latex(node.left, in_sum=in_sum)
    right = format_latex(node.right, in_sum=in_sum)
    if node.op == "/":
        return rf"\frac{{{left}}}{{{right}}}"
    if node.op == "^":
        if _precedence(node.left) <= PRECEDENCE["^"]:
            left = rf"\left({left}\right)"
        return f"{{{left}}}^{{{right}}}"
    mine = PRECEDENCE[node.op]
    if _precedence(node.left) < mine:
        left = rf"\left({left}\right)"
    if _precedence(node.right) <= mine and not (node.op == "*" and isinstance(node.right, Binary)
                                                and node.right.op in "/^"):
        right = rf"\left({right}\right)"
    operator = r"\cdot" if node.op == "*" else node.op
    return f"{left} {operator} {right}"


def _latex_index(index: str | int) -> str:
    return r"\ell" if index == "l" else str(index)


# ---------------------------------------------------------------------------------------------
# Lowering
# ---------------------------------------------------------------------------------------------
# The tree is lowered three times, once per arithmetic, and the three look alike on purpose:
# to_sympy (exact, for claims' proofs), evaluate (NumPy over every sample, for check --expr) and
# claims.approximate (decimals with a bounded exponent, for claims' counterexamples). Each
# interprets every kind of node, so a new kind of node goes into all three.

def to_sympy(node: Node, *, z, y, j: int, label: int, k: int):
    """Returns the SymPy expression of the tree for class j (1-based) and label ℓ (1-based).

    ``z`` and ``y`` are sequences of k SymPy expressions; p is softmax(z). Pass z_n = log(t_n)
    with positive symbols t_n to turn every e^{z_n} into t_n. Raises ExpressionError when a
    power of two numbers is too large to work out exactly.
    """
    import sympy

    exps = [sympy.exp(value) for value in z]
    total = sympy.Add(*exps)
    entries = {"z": list(z), "y": list(y), "p": [e / total for e in exps]}

    def lower(node: Node, n: int | None):
        if isinstance(node, Number):
            return sympy.Rational(node.value.numerator, node.value.denominator)
        if isinstance(node, Entry):
            position = {"j": j, "l": label, "n": n}[node.index]
            return entries[node.variable][position - 1]
        if isinstance(node, Index):
            return sympy.Integer({"j": j, "l": label, "n": n, "k": k}[node.name])
        if isinstance(node, Iverson):
            values = {"j": j, "l": label, "n": n}
            left, right = (values.get(side, side) for side in (node.left, node.right))
            return sympy.Integer(int((left == right) == node.equal))
        if isinstance(node, Unary):
            return -lower(node.operand, n)
        if isinstance(node, Call):
            argument = lower(node.argument, n)
            return sympy.exp(argument) if node.function == "exp" else sympy.log(argument)
        if isinstance(node, Sum):
            return sympy.Add(*(lower(node.body, m) for m in range(1, k + 1)))
        left, right = lower(node.left, n), lower(node.right, n)
        if node.op == "+":
            return left + right
        if node.op == "-":
            return left - right
        if node.op == "*":
            return left * right
        if node.op == "/":
            return left / right
        if left.is_Number and right.is_Number and not _cheap_power(left, right):
            # e.g. 3^(k^64): SymPy would work out every digit, even of an unevaluated power.
            raise ExpressionError("a power of two numbers is too large to work out exactly")
        return left ** right

    return lower(node, None)


def _cheap_power(base, exponent) -> bool:
    """Says whether SymPy can work out base^exponent exactly in bounded time and memory."""
    size = max(abs(int(part)).bit_length() for part in base.as_numer_denom()) if base.is_Rational else 64
    if exponent.is_Integer:
        return size * abs(int(exponent)) <= 10_000  # its digits still print (Python allows 4300)
    return exponent.is_Rational and size <= 64 and exponent.q <= 64


def evaluate(node: Node, *, z, p, y, labels) -> np.ndarray:
    """Returns the formula's value for every sample and class j, an (N, k) float array.

    ``z``, ``p`` and ``y`` are (N, k) arrays; ``labels`` holds each row's label ℓ (0-based).
    Undefined values (log of a negative, 0/0) become NaN or ±inf rather than errors.
    """
    z, p, y = (np.asarray(a, dtype=float) for a in (z, p, y))
    if z.ndim != 2 or p.shape != z.shape or y.shape != z.shape:
        raise ValueError(f"z, p and y must share one (N, k) shape, not {z.shape}, {p.shape}, {y.shape}")
    samples, k = z.shape
    rows = np.arange(samples)
    labels = np.asarray(labels, dtype=np.intp).reshape(samples)
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must lie in 0..{k - 1}")
    # Values broadcast over (sample, j, n): axis 1 is the class j, axis 2 the summation index n.
    numbers = {
        "j": np.arange(1, k + 1, dtype=float)[None, :, None],
        "l": (labels + 1).astype(float)[:, None, None],
        "n": np.arange(1, k + 1, dtype=float)[None, None, :],
        "k": np.array(float(k)),
    }
    arrays = {"z": z, "p": p, "y": y}

    def entry(variable: str, index: str) -> np.ndarray:
        values = arrays[variable]
        if index == "j":
            return values[:, :, None]
        if index == "n":
            return values[:, None, :]
        return values[rows, labels][:, None, None]

    def lower(node: Node) -> np.ndarray:
        if isinstance(node, Number):
            return np.array(float(node.value))
        if isinstance(node, Entry):
            return entry(node.variable, node.index)
        if isinstance(node, Index):
            return numbers[node.name]
        if isinstance(node, Iverson):
            left, right = (numbers[side] if isinstance(side, str) else np.array(float(side))
                           for side in (node.left, node.right))
            return ((left == right) == node.equal).astype(float)
        if isinstance(node, Unary):
            return -lower(node.operand)
        if isinstance(node, Call):
            argument = lower(node.argument)
            return np.exp(argument) if node.function == "exp" else np.log(argument)
        if isinstance(node, Sum):
            body = np.broadcast_to(lower(node.body), (samples, k, k))
            return body.sum(axis=2, keepdims=True)
        left, right = lower(node.left), lower(node.right)
        if node.op == "+":
            return left + right
        if node.op == "-":
            return left - right
        if node.op == "*":
            return left * right
        if node.op == "/":
            return left / right
        return np.power(left, right)

    with np.errstate(all="ignore"):
        value = lower(node)
    return np.array(np.broadcast_to(value, (samples, k, 1))[:, :, 0])
