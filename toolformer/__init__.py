"""Toolformer (Schick et al., 2023): the model-side core — call format, model loading, sampling,
filtering, call insertion, decoding with tools and evaluation. See README.md."""

__version__ = "0.1.0"
