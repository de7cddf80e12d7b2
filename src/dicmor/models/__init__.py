"""Registered methods; importing this package registers all of them."""

from dicmor.models import cross_regression, dicmor, zero_fill

__all__ = ["cross_regression", "dicmor", "zero_fill"]
