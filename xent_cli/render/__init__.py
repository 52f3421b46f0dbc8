"""Renderers: turn the core's data into Rich renderables, Markdown, LaTeX, JSON or CSV.

One module per kind of result (eval, derivation, claim, check); renderers never compute
mathematics and never print: the CLI prints what they return.
"""

from __future__ import annotations


def finite(x: float | None) -> float | None:
    """Returns x, or None where it is infinite or NaN (JSON has neither)."""
    return x if x is not None and x - x == 0 else None
