"""Prefect flows: ``invert-dataset`` (invert_dataset.py) and ``nightly-benchmark`` (nightly_benchmark.py)."""
