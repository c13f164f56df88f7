"""The `shapes` domain (procedural images with known factors): training its factor probe (probe.py), fitting
its edit directions (directions.py), finishing the built-in generator (build.py)."""

from gani_core.shapes.domain import FACTOR_NAMES, FACTORS, NUM_FACTORS, render, sample_factors, sample_images

__all__ = ["FACTORS", "FACTOR_NAMES", "NUM_FACTORS", "render", "sample_factors", "sample_images"]
