"""Data helpers: synthetic MVTec-layout datasets for demos and tests."""

from .synthetic import DEFECT_TYPES, SyntheticSpec, make_synthetic_mvtec

__all__ = ["DEFECT_TYPES", "SyntheticSpec", "make_synthetic_mvtec"]
