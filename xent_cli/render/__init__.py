"""Renderers: turn the core's data into Rich renderables, Markdown, LaTeX, JSON or CSV.

One module per kind of result (eval, derivation, claim, check); renderers never compute
mathematics and never print: the CLI prints what they return.
"""
