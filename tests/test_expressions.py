"""The safe expression language: grammar, every rejection, hostile input, fuzzing, and the
agreement of its two lowerings (SymPy, NumPy) with each other and with hand-written formulas."""

import math
import time
from fractions import Fraction

import numpy as np
import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

from xent_cli.errors import ExpressionError
from xent_cli.expressions import (Binary, Call, Claim, Entry, Index, Iverson, Number, Sum, Unary,
                                  evaluate, format_claim, format_expression, parse_claim,
                                  parse_expression, to_sympy)


def num(value) -> Number:
    return Number(Fraction(value))


P, Y, Z = Entry("p", "j"), Entry("y", "j"), Entry("z", "j")


# --- grammar ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, tree", [
    ("p_j - y_j", Binary("-", P, Y)),
    ("p - y", Binary("-", P, Y)),
    ("p_l", Entry("p", "l")),
    ("p_ℓ", Entry("p", "l")),
    ("z_l * k", Binary("*", Entry("z", "l"), Index("k"))),
    ("1 + 2 * 3", Binary("+", num(1), Binary("*", num(2), num(3)))),
    ("(1 + 2) * 3", Binary("*", Binary("+", num(1), num(2)), num(3))),
    ("10 - 4 - 3", Binary("-", Binary("-", num(10), num(4)), num(3))),
    ("8 / 4 / 2", Binary("/", Binary("/", num(8), num(4)), num(2))),
    ("2^3^2", Binary("^", num(2), Binary("^", num(3), num(2)))),
    ("2**3**2", Binary("^", num(2), Binary("^", num(3), num(2)))),
    ("-2^2", Unary(Binary("^", num(2), num(2)))),
    ("2^-1", Binary("^", num(2), Unary(num(1)))),
    ("--p", Unary(Unary(P))),
    ("+p", P),
    ("p − y", Binary("-", P, Y)),
    ("2·p × y", Binary("*", Binary("*", num(2), P), Y)),
    ("0.5 * p", Binary("*", num("0.5"), P)),
    (".25", num("0.25")),
    ("exp(z_j)", Call("exp", Z)),
    ("log(p)", Call("log", P)),
    ("sum(exp(z))", Sum(Call("exp", Entry("z", "n")))),
    ("sum(exp(z_n) * p_j)", Sum(Binary("*", Call("exp", Entry("z", "n")), P))),
    ("sum([n = l] * n)", Sum(Binary("*", Iverson("n", True, "l"), Index("n")))),
    ("[j = l]", Iverson("j", True, "l")),
    ("[j == ℓ]", Iverson("j", True, "l")),
    ("[j != l]", Iverson("j", False, "l")),
    ("[j ≠ 2]", Iverson("j", False, 2)),
])
def test_valid_forms_parse_to_the_expected_tree(text, tree):
    assert parse_expression(text) == tree
    assert parse_claim(text) == Claim("every j", tree)


@pytest.mark.parametrize("text, scope", [
    ("j != l: 0", "j ≠ ℓ"), ("j ≠ ℓ: 0", "j ≠ ℓ"), ("l != j: 0", "j ≠ ℓ"),
    ("j = l: p_j - 1", "j = ℓ"), ("j == l: p_j - 1", "j = ℓ"), ("p_j - y_j", "every j"),
])
def test_a_guard_restricts_the_claim(text, scope):
    assert parse_claim(text).scope == scope


@pytest.mark.parametrize("text, value", [
    ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("10 - 4 - 3", 3), ("8 / 4 / 2", 1), ("2^3^2", 512),
    ("(2^3)^2", 64), ("-2^2", -4), ("(-2)^2", 4), ("2^-1", 0.5), ("-3 * -2", 6), ("1 - -1", 2),
    ("2 * 3^2", 18), ("k", 4), ("[1 = 1] + [1 != 1]", 1), ("exp(0) + log(1)", 1),
])
def test_precedence_and_associativity_by_value(text, value):
    # Hand-computed values, read back through both lowerings.
    tree = parse_expression(text)
    assert float(to_sympy(tree, z=[0] * 4, y=[0] * 4, j=1, label=1, k=4)) == pytest.approx(value)
    numeric = evaluate(tree, z=np.zeros((1, 4)), p=np.zeros((1, 4)), y=np.zeros((1, 4)), labels=[0])
    assert numeric == pytest.approx(np.full((1, 4), value))


@pytest.mark.parametrize("text", [
    "p_j - y_j", "j != l: 0", "j = l: p_j - 1", "-(-3)", "-(2^2)", "(-2)^2", "2^-1", "2^3^2",
    "(2^3)^2", "a", "1 - (2 - 3)", "1 / (2 * 3)", "1 / 2 * 3", "0.125 * p", "sum(p * z_j) / k",
    "[j != l] * exp(-z_l)", "-p^2", "(-p)^2", "p^-y^2",
])
def test_printing_parses_back_to_the_same_tree(text):
    try:
        claim = parse_claim(text)
    except ExpressionError:
        return
    assert parse_claim(format_claim(claim)) == claim


# --- rejections ------------------------------------------------------------------------------

HOSTILE = {
    "__import__('os')": "unknown name '__import__' at column 1",
    "__import__": "unknown name '__import__' at column 1",
    "().__class__": "unexpected character '.' at column 3",
    "p.__class__": "unexpected character '.' at column 2",
    "lambda: 0": "unknown name 'lambda' at column 1",
    "[x for x in y]": "unknown name 'x' at column 2",
    "9**9**9**9": "too large",
    "9^9^9": "too large",
    "2^65": "too large",
    "(2^64)^64": "too large",
    "10^64 * 10^64 * 10^64 * 10^64 * 10^64 * 10^64 * 10^64 * 10^64 * 10^64 * 10^64 * 10^64 * 10^64"
    " * 10^64 * 10^64 * 10^64 * 10^64 * 10^64 * 10^64 * 10^64 * 10^64 * 10^64 * 10^64": "too large",
    "x" * 1_000_000: "limit is 2000",
    "(" * 10_000 + "p" + ")" * 10_000: "limit is 2000",
    "(" * 150 + "p" + ")" * 150: "nested more than 100 levels",
    "-" * 150 + "p": "nested more than 100 levels",
    "exp(" * 120 + "p" + ")" * 120: "nested more than 100 levels",
    "^".join(["p"] * 150): "nested more than 100 levels",
    "+".join(["p"] * 600): "more than 400 tokens",
    "open('x')": "unknown name 'open'",
    "p; import os": "unexpected character ';'",
    "p\nimport os": "unknown name 'import'",
    "p_j if 1 else 0": "unknown name 'if'",
    "{}": "unexpected character '{'",
    "p[0]": "unexpected '['",
    "exp": "expected '(' after exp",
    "exp(p": "expected ')' to close exp(",
    "p +": "expected a number, a name or '('",
    "": "expected a number, a name or '(', found the end of the text at column 1",
    "p y": "unexpected 'y' at column 3",
    "1e5": "malformed number '1e' at column 1",
    "1_000": "malformed number '1_' at column 1",
    "1.2.3": "malformed number",
    "p_n": "only exists inside sum",
    "n": "unknown name 'n'",
    "sum(sum(p))": "cannot be nested",
    "[j < l]": "unexpected character '<' at column 4",
    "[j l]": "expected '=' or '!=', found 'l' at column 4",
    "[p = l]": "compares j, l, n or a class number",
    "[n = l]": "'n' is the index of sum(...) and only exists inside it at column 2",
    "k = l: p": "compares j, l, n or a class number",
    "j = 2: p": "a guard compares j with l",
    "j != l: j != l: 0": "unexpected '!=' at column 11",
    "p_k": "unknown name 'p_k'",
    "P_j": "unknown name 'P_j'",
    "\x00": "unexpected character '\\x00' at column 1",
    "p\u202e": "unexpected character",
}


@pytest.mark.parametrize("text, message", HOSTILE.items(), ids=lambda v: repr(v[:30]))
def test_hostile_or_invalid_text_gets_a_clear_error_within_a_second(text, message):
    started = time.perf_counter()
    with pytest.raises(ExpressionError) as caught:
        parse_claim(text)
    elapsed = time.perf_counter() - started
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert elapsed < 1.0


def test_an_unknown_name_lists_the_names_there_are():
    with pytest.raises(ExpressionError, match="names are p_j, y_j, z_j"):
        parse_claim("q_j")


def test_a_formula_has_no_guard():
    with pytest.raises(ExpressionError, match="guard .* belongs to a claim"):
        parse_expression("j != l: 0")
    with pytest.raises(ExpressionError, match="at column 7"):
        parse_expression("[j=l] : 0")


# --- fuzzing ---------------------------------------------------------------------------------

ALPHABET = list("pyzjlkn_ℓ0123456789.+-*/^()[]:=!≠ ") + ["exp(", "log(", "sum(", "**", "p_j", "z_l"]


@settings(max_examples=300, deadline=1000)
@given(st.one_of(st.text(max_size=60),
                 st.lists(st.sampled_from(ALPHABET), max_size=40).map("".join),
                 st.binary(max_size=60).map(lambda raw: raw.decode("latin-1"))))
def test_any_text_is_either_a_claim_or_an_expression_error(text):
    try:
        claim = parse_claim(text)
    except ExpressionError as error:
        assert str(error) and "\n" not in str(error)
        return
    assert parse_claim(format_claim(claim)) == claim


LEAVES = ["p", "y", "z", "p_l", "y_l", "z_l", "k", "j", "l", "[j = l]", "[j != l]", "2", "0.5", "3"]


def expressions(depth: int = 3):
    """Valid formulas, with exp only of bounded arguments and log only of positive ones."""
    leaf = st.sampled_from(LEAVES)
    return st.recursive(leaf, lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(inner, st.sampled_from(["p", "sum(exp(z))", "k"])).map(lambda t: f"({t[0]}) / {t[1]}"),
        inner.map(lambda e: f"-{e}"),
        inner.map(lambda e: f"({e})^2"),
        st.sampled_from(["p", "p_l", "y + 1", "exp(z)"]).map(lambda e: f"log({e})"),
        st.sampled_from(["z", "z_l", "-z", "p"]).map(lambda e: f"exp({e})"),
        st.sampled_from(["p", "z * y", "exp(z_n - z_j)", "[n = l] * z"]).map(lambda e: f"sum({e})"),
    ), max_leaves=8)


def softmax(z):
    shifted = np.exp(z - z.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@settings(max_examples=60, deadline=2000)
@given(expressions(), st.integers(2, 5), st.integers(0, 2**32 - 1))
def test_sympy_and_numpy_lowerings_agree(text, k, seed):
    tree = parse_expression(text)
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(3, k))
    labels = rng.integers(0, k, size=3)
    y = rng.dirichlet(np.ones(k), size=3)
    numeric = evaluate(tree, z=z, p=softmax(z), y=y, labels=labels)
    assert numeric.shape == (3, k)
    for row in range(3):
        for j in range(k):
            exact = to_sympy(tree, z=[sympy.Float(v, 30) for v in z[row]],
                             y=[sympy.Float(v, 30) for v in y[row]],
                             j=j + 1, label=int(labels[row]) + 1, k=k)
            value = complex(exact.evalf(20))
            if math.isfinite(numeric[row, j]):
                assert value.real == pytest.approx(numeric[row, j], rel=1e-9, abs=1e-9)


# --- lowerings against hand-written formulas ------------------------------------------------

def test_evaluate_p_minus_y_is_softmax_minus_one_hot():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 4))
    labels = np.array([0, 3, 1, 1, 2])
    y = np.eye(4)[labels]
    p = softmax(z)
    for text in ("p - y", "exp(z_j) / sum(exp(z)) - y_j", "p_j - [j = l]"):
        assert evaluate(parse_expression(text), z=z, p=p, y=y, labels=labels) == pytest.approx(p - y)


def test_evaluate_names_the_label_and_the_class_numbers():
    z = np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    p = softmax(z)
    labels = np.array([2, 0])
    got = evaluate(parse_expression("z_l + 10 * j + 100 * l + 1000 * k"), z=z, p=p, y=p,
                   labels=labels)
    expected = np.array([[2 + 10 * j + 300 + 3000 for j in (1, 2, 3)],
                         [3 + 10 * j + 100 + 3000 for j in (1, 2, 3)]])
    assert got == pytest.approx(expected)
    sums = evaluate(parse_expression("sum(z * [n != j])"), z=z, p=p, y=p, labels=labels)
    assert sums == pytest.approx(z.sum(axis=1, keepdims=True) - z)


def test_evaluate_gives_nan_or_inf_for_undefined_values_instead_of_failing():
    z = np.zeros((1, 2))
    got = evaluate(parse_expression("log(-p) + 1 / (p - p)"), z=z, p=softmax(z), y=z, labels=[0])
    assert not np.isfinite(got).any()


def test_to_sympy_with_positive_symbols_gives_the_softmax():
    t = sympy.symbols("t1:4", positive=True)
    value = to_sympy(parse_expression("p_j - y_j"), z=[sympy.log(s) for s in t], y=[0, 1, 0],
                     j=2, label=2, k=3)
    assert sympy.simplify(value - (t[1] / sum(t) - 1)) == 0


def test_to_sympy_refuses_numeric_powers_too_large_to_work_out():
    started = time.perf_counter()
    with pytest.raises(ExpressionError, match="too large to work out exactly"):
        to_sympy(parse_expression("1 + 3^(k^64)^64"), z=[0] * 12, y=[0] * 12, j=1, label=1, k=12)
    assert time.perf_counter() - started < 1.0


def test_format_expression_reads_like_the_language():
    assert format_expression(parse_expression("exp(z_j)/sum(exp(z))-y")) == \
        "exp(z_j) / sum(exp(z)) - y_j"
    assert format_claim(parse_claim("j≠ℓ:0")) == "j != l: 0"


def test_evaluate_refuses_mismatched_arrays_and_labels_out_of_range():
    # The caller validates user data; these are programming errors, so ValueError, not XentError.
    tree = parse_expression("p - y")
    with pytest.raises(ValueError, match="one \\(N, k\\) shape"):
        evaluate(tree, z=np.zeros((2, 3)), p=np.zeros((2, 3)), y=np.zeros((2, 4)), labels=[0, 1])
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        evaluate(tree, z=np.zeros((2, 3)), p=np.zeros((2, 3)), y=np.zeros((2, 3)), labels=[0, 3])


@pytest.mark.parametrize("text, hint", [
    ("2p_j", "write '*' for a product, as in 2 * p_j"),
    ("2exp(z_j)", "write '*' for a product, as in 2 * exp(z_j)"),
    # scientific notation is a number the language lacks, not a product with a name 'e'
    ("p_j - y_j + 0*1e-3", "numbers are decimals like 2 or 0.5"),
    ("1E3 * p_j", "numbers are decimals like 2 or 0.5"),
    ("2.5e+2", "numbers are decimals like 2 or 0.5"),
])
def test_a_malformed_number_gets_the_hint_that_fits(text, hint):
    with pytest.raises(ExpressionError) as caught:
        parse_claim(text)
    assert hint in str(caught.value)


@pytest.mark.parametrize("text", ["0A\n", "2 p_j\t", "2\rp_j"])
def test_product_hint_stays_one_line_whatever_the_text_holds(text):
    # Hypothesis found '0A\n': the hint echoed the newline, and the error took two lines
    with pytest.raises(ExpressionError) as error:
        parse_expression(text)
    assert "\n" not in str(error.value) and "\r" not in str(error.value)
    assert "write '*' for a product" in str(error.value)
