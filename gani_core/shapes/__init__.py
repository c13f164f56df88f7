"""The `shapes` domain (procedural images with known factors), its factor probe and edit directions."""

from gani_core.shapes.domain import FACTOR_NAMES, FACTORS, NUM_FACTORS, render, sample_factors, sample_images

__all__ = ["FACTORS", "FACTOR_NAMES", "NUM_FACTORS", "render", "sample_factors", "sample_images"]
