"""Prefect tasks: the thin layer between the flows and gani_core (inversion, storage, MLflow tracking)."""
