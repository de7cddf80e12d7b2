"""Registered methods; importing this package registers all of them."""

from dicmor.models import dicmor, zero_fill

__all__ = ["dicmor", "zero_fill"]
