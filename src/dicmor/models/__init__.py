"""Registered methods; importing this package registers all of them."""

from dicmor.models import (
    cross_regression,
    dicmor,
    mean_fill,
    zero_fill,
    zero_fill_pretrained,
)

__all__ = ["cross_regression", "dicmor", "mean_fill", "zero_fill", "zero_fill_pretrained"]
