"""Fusion networks over named modality sequences."""

from dicmor.fusion.mult import MulT, MulTConfig

__all__ = ["MulT", "MulTConfig"]
