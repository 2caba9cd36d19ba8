"""Sparse inference: run a LAUD model computing only what its masks select."""

from .engine import SparseModel, convert

__all__ = ["SparseModel", "convert"]
