"""Protein language models (ESM-2) and biological variables."""
