"""The claim checker: true claims hold, false ones fail with a counterexample that NumPy's own
softmax confirms, under one-hot and soft targets, for every k and label; and its renderers."""

import json
import os
import time
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from xent_cli.claims import check_claim
from xent_cli.errors import ExpressionError, InputError
from xent_cli.render.claim import claim_fields, claim_to_latex, claim_to_markdown, claim_to_rich

CASES = [(k, label) for k in range(2, 7) for label in range(1, k + 1)]


def softmax(z):
    z = np.asarray(z, dtype=float)
    e = np.exp(z - z.max())
    return e / e.sum()


# Claims true whatever the targets, as long as they sum to 1.
ALWAYS_TRUE = [
    "p_j - y_j", "p - y", "exp(z_j)/sum(exp(z)) - y_j", "exp(z_j - log(sum(exp(z)))) - y_j",
    "p_j * sum(y) - y_j", "(p_j^2 - y_j^2) / (p_j + y_j)", "-(y - p)",
]
# True for one-hot targets at ℓ only: the two cases of a correct derivation.
ONE_HOT_TRUE = ["j = l: p_j - 1", "j != l: p_j", "p_j - [j = l]", "j = l: p_l - 1",
                "j != l: exp(z_j) / sum(exp(z))"]


@pytest.mark.parametrize("k, label", CASES)
def test_true_claims_hold_exactly(k, label):
    for text in ALWAYS_TRUE:
        for soft in (False, True):
            verdict = check_claim(text, k=k, label=label, soft=soft)
            assert verdict.holds, (text, soft, verdict.reason)
            assert verdict.method == "exact" and verdict.counterexample is None
    for text in ONE_HOT_TRUE:
        verdict = check_claim(text, k=k, label=label)
        assert verdict.holds and verdict.method == "exact", (text, verdict.reason)


# False claims, each with an independent NumPy formula for what it claims at (z, y, j, ℓ).
FALSE = {
    "0": lambda p, y, j, l: 0.0,
    "j != l: 0": lambda p, y, j, l: 0.0,  # the seed's Case 1
    "p_j": lambda p, y, j, l: p[j],
    "y_j - p_j": lambda p, y, j, l: y[j] - p[j],
    "p_j * (1 - p_j)": lambda p, y, j, l: p[j] * (1 - p[j]),
    "j = l: p_j": lambda p, y, j, l: p[j],
    "log(p_j) - y_j": lambda p, y, j, l: np.log(p[j]) - y[j],
    "p_j - y_j + 1/1000000": lambda p, y, j, l: p[j] - y[j] + 1e-6,
}


def assert_counterexample(verdict, claimed_at, k, label):
    """Recomputes both sides of the counterexample with NumPy and checks that they differ."""
    example = verdict.counterexample
    assert example is not None, verdict.reason
    z = np.array(example["z"], dtype=float)
    y = np.array([float(Fraction(v)) for v in example["y"]])
    j = example["j"] - 1
    assert len(z) == len(y) == k and y.sum() == pytest.approx(1.0)
    assert example["j"] in verdict.classes
    actual = softmax(z)[j] - y[j]
    assert example["actual_value"] == pytest.approx(actual, rel=1e-12, abs=1e-15)
    claimed = claimed_at(softmax(z), y, j, label - 1)
    assert example["claimed_value"] == pytest.approx(claimed, rel=1e-12, abs=1e-15)
    assert abs(claimed - actual) > 1e-9


@pytest.mark.parametrize("k, label", CASES)
def test_false_claims_fail_with_a_counterexample_numpy_confirms(k, label):
    for text, claimed_at in FALSE.items():
        for soft in (False, True):
            verdict = check_claim(text, k=k, label=label, soft=soft)
            assert not verdict.holds, (text, soft)
            assert verdict.method == "counterexample"
            assert_counterexample(verdict, claimed_at, k, label)


@pytest.mark.parametrize("k, label", CASES)
def test_one_hot_truths_fail_for_soft_targets(k, label):
    for text, claimed_at in {"j != l: p_j": lambda p, y, j, l: p[j],
                             "j = l: p_j - 1": lambda p, y, j, l: p[j] - 1,
                             "p_j - [j = l]": lambda p, y, j, l: p[j] - (j == l)}.items():
        verdict = check_claim(text, k=k, label=label, soft=True)
        assert not verdict.holds, text
        assert_counterexample(verdict, claimed_at, k, label)


def test_the_seeds_case_1_fails_at_all_zero_logits_with_p_j_as_the_truth():
    verdict = check_claim("j != l: 0", k=3, label=1)
    assert not verdict.holds and verdict.scope == "j ≠ ℓ" and verdict.classes == (2, 3)
    example = verdict.counterexample
    assert example["z"] == [0, 0, 0] and example["y"] == ["1", "0", "0"]
    assert example["j"] == 2 and example["claimed"] == "0" and example["actual"] == "1/3"
    assert "j = 2" in verdict.reason and "0.333333" in verdict.reason


def test_the_scope_picks_the_classes_checked():
    assert check_claim("p - y", k=4, label=3).classes == (1, 2, 3, 4)
    assert check_claim("j = l: p - 1", k=4, label=3).classes == (3,)
    assert check_claim("j != l: p", k=4, label=3).classes == (1, 2, 4)


def test_a_claim_undefined_at_a_point_fails_there():
    verdict = check_claim("1 / (p_j - p_j)", k=3, label=1)
    assert not verdict.holds
    assert verdict.counterexample["claimed"] == "undefined"
    assert verdict.counterexample["claimed_value"] is None
    assert "undefined" in verdict.reason


def test_a_claim_with_log_is_verified_numerically_and_says_so():
    verdict = check_claim("p_j - y_j + log(2 * p_j) - log(2) - log(p_j)", k=3, label=2)
    assert verdict.holds and verdict.method == "numeric"
    assert "not proven exactly" in verdict.reason


def test_cancelling_huge_terms_is_not_mistaken_for_a_difference():
    # At 50 digits exp(80) swamps p_j - y_j; the 100-digit recheck sees they cancel.
    verdict = check_claim("exp(80) + p_j - y_j - exp(80)", k=3, label=1)
    assert verdict.holds, verdict.reason


def test_invalid_claims_raise_expression_errors_and_bad_sizes_input_errors():
    with pytest.raises(ExpressionError, match="unknown name '__import__' at column 1"):
        check_claim("__import__('os').system('true')", k=3, label=1)
    with pytest.raises(InputError, match="label 4 is not a class"):
        check_claim("p - y", k=3, label=4)
    with pytest.raises(InputError, match="2 to 12 classes"):
        check_claim("p - y", k=13, label=1)


@pytest.mark.parametrize("text, holds", [
    ("exp(z)^(exp(z)^exp(z))", False),
    ("sum(exp(z))^64 - sum(exp(z))^64 + p - y", True),
    ("(z_j + 3)^(k^64)^64", False),
    ("exp(exp(exp(z_j))) - exp(exp(exp(z_j))) + p - y", True),
    ("+".join(["p_j * sum(exp(z)) / sum(exp(z))"] * 12) + " - 11 * p_j - y", True),
])
def test_valid_but_heavy_claims_are_decided_within_seconds(text, holds):
    started = time.perf_counter()
    assert check_claim(text, k=6, label=2, soft=True).holds == holds
    assert time.perf_counter() - started < 3.0


@pytest.mark.parametrize("text", [
    "exp(exp(exp(exp(exp(exp(exp(exp(z_j))))))))",
    "3^(k^64)^64 - 3^(k^64)^64 + p - y",
    # constants: SymPy's cancel evaluated exp(exp(exp(100))) to sort it, for minutes, and
    # exp(exp(exp(1000))) raised OverflowError, a traceback
    "exp(exp(exp(100)))", "exp(exp(exp(1000)))", "p - y + exp(exp(exp(100))) * 0.5",
])
def test_a_claim_too_large_to_evaluate_anywhere_is_an_error_not_a_verdict(text):
    started = time.perf_counter()
    with pytest.raises(ExpressionError, match="overflows .* so it cannot be checked"):
        check_claim(text, k=6, label=2, soft=True)
    assert time.perf_counter() - started < 3.0


# --- renderers -------------------------------------------------------------------------------

def rendered(renderable) -> str:
    with open(os.devnull, "w") as nowhere:
        console = Console(width=100, record=True, color_system=None, file=nowhere)
        console.print(renderable)
    return console.export_text()


def test_renderers_show_the_verdict_and_the_counterexample(golden):
    failed = check_claim("j != l: 0", k=3, label=1)
    text = rendered(claim_to_rich(failed))
    assert "does NOT hold" in text and "(0, 0, 0)" in text and "1/3 ≈ 0.3333333333" in text
    golden("claim_case1_k3.txt", text)
    data = claim_fields(failed)
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert data["holds"] is False and data["counterexample"]["j"] == 2
    markdown = claim_to_markdown(failed)
    assert "| z | (0, 0, 0) |" in markdown and "does NOT hold" in markdown
    latex = claim_to_latex(failed)
    assert r"(j \neq \ell)" in latex and "Counterexample" in latex

    held = check_claim("exp(z_j)/sum(exp(z)) - y_j", k=3, label=1)
    assert "✓ The claim holds" in rendered(claim_to_rich(held))
    assert claim_fields(held)["counterexample"] is None
    assert r"\frac{e^{z_{j}}}{\sum_{n=1}^{k}" in claim_to_latex(held)
    assert "Counterexample" not in claim_to_markdown(held)


def test_json_of_an_undefined_value_is_null_not_nan():
    data = claim_fields(check_claim("log(0 * p)", k=2, label=1))
    assert data["counterexample"]["claimed_value"] is None
    json.dumps(data, allow_nan=False)


def test_a_value_beyond_the_float_range_keeps_its_decimal_and_stays_valid_json():
    verdict = check_claim("((k^64)^64)^2", k=12, label=1)
    example = verdict.counterexample
    assert example["claimed_value"] is None and example["claimed_decimal"].endswith("e+8840")
    assert "4.495392557e+8840" in verdict.reason  # 12^8192 = 10^8840.65...
    json.dumps(claim_fields(verdict), allow_nan=False)


# --- properties ------------------------------------------------------------------------------

TERMS = st.sampled_from(["p", "y", "z", "p_l", "z_l", "k", "j", "[j = l]", "exp(z)", "log(p)",
                         "sum(exp(z))", "sum(p * z)", "2", "0.5"])
POSITIVE = st.sampled_from(["p", "exp(z)", "sum(exp(z))", "k", "2"])
# Defined everywhere (a claim undefined at a point rightly fails there): divide by positives only.
NOISE = st.recursive(TERMS, lambda inner: st.one_of(
    st.tuples(inner, st.sampled_from("+-*"), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
    st.tuples(inner, POSITIVE).map(lambda t: f"({t[0]} / {t[1]})")), max_leaves=5)


@settings(max_examples=25, deadline=5000)
@given(NOISE, st.integers(2, 4), st.data())
def test_adding_and_removing_the_same_term_keeps_a_claim_true(noise, k, data):
    label = data.draw(st.integers(1, k))
    verdict = check_claim(f"p_j - y_j + {noise} - {noise}", k=k, label=label,
                          soft=data.draw(st.booleans()))
    assert verdict.holds, verdict.reason


@settings(max_examples=25, deadline=5000)
@given(st.integers(-1000, 1000).filter(bool), st.integers(2, 4), st.data())
def test_shifting_the_truth_by_a_constant_makes_it_false(shift, k, data):
    label = data.draw(st.integers(1, k))
    verdict = check_claim(f"p_j - y_j + {abs(shift)}/1000 * {'-1' if shift < 0 else '1'}",
                          k=k, label=label)
    assert not verdict.holds
    example = verdict.counterexample
    assert example["claimed_value"] - example["actual_value"] == pytest.approx(shift / 1000)


# --- the command ----------------------------------------------------------------------------

def test_derive_claim_exit_codes_read_like_a_session(runner):
    from xent_cli.cli import app

    result = runner.invoke(app, ["derive", "--k", "3", "--claim", "p_j - y_j"])
    assert result.exit_code == 0, result.output
    assert "holds" in result.stdout
    result = runner.invoke(app, ["derive", "--k", "3", "--claim", "j != l: 0"])
    assert result.exit_code == 1, result.output
    assert "(0, 0, 0)" in result.stdout
    result = runner.invoke(app, ["derive", "--k", "3", "--claim", "__import__('os').system('x')"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "unknown name '__import__' at column 1" in result.stderr


@pytest.mark.parametrize("output_format, shows", [
    ("markdown", "$$ \\frac{\\partial \\mathrm{CE}}{\\partial z_j} \\overset{?}{=} 0"),
    ("latex", "\\["),
    ("json", '"holds": false'),
])
def test_derive_claim_writes_every_format_and_keeps_exit_1(runner, output_format, shows):
    from xent_cli.cli import app

    result = runner.invoke(app, ["derive", "--k", "3", "--claim", "j != l: 0",
                                 "--format", output_format])
    assert result.exit_code == 1, result.output
    assert shows in result.stdout and "(0, 0, 0)" in result.stdout  # the counterexample


ANY_TERMS = st.sampled_from(["p", "y", "z", "z_l", "k", "j", "0", "3", "exp(z)", "log(y)",
                             "log(z)", "sum(z)", "(1 - p)", "[j != l]", "exp(exp(exp(z)))"])
ANY = st.recursive(ANY_TERMS, lambda inner: st.one_of(
    st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "^"]), inner).map(
        lambda t: f"({t[0]} {t[1]} {t[2]})"),
    inner.map(lambda e: f"log({e})"), inner.map(lambda e: f"exp({e})")), max_leaves=6)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["", "j = l: ", "j != l: "]), ANY, st.integers(2, 5), st.booleans())
def test_any_valid_claim_gets_a_verdict_or_a_clear_error_within_seconds(guard, body, k, soft):
    started = time.perf_counter()
    try:
        verdict = check_claim(guard + body, k=k, label=1, soft=soft)
    except ExpressionError as error:
        assert "\n" not in str(error)
    else:
        if verdict.holds:
            assert verdict.counterexample is None and verdict.method in ("exact", "numeric")
        else:
            assert verdict.counterexample is not None or verdict.method == "exact"
        json.dumps(claim_fields(verdict), allow_nan=False)
    assert time.perf_counter() - started < 5.0


def test_markdown_shows_the_claimed_equation_in_a_math_block():
    # A teacher pastes the Markdown into slides: the claim should render as an equation there too.
    markdown = claim_to_markdown(check_claim("j != l: p_j", k=3, label=1))
    assert ("$$ \\frac{\\partial \\mathrm{CE}}{\\partial z_j} \\overset{?}{=} p_{j}\\quad (j \\neq \\ell) $$"
            in markdown.splitlines())
    every = claim_to_markdown(check_claim("p_j - y_j", k=3, label=1))
    assert "$$ \\frac{\\partial \\mathrm{CE}}{\\partial z_j} \\overset{?}{=} p_{j} - y_{j} $$" in every.splitlines()
