"""The layer between the flows and gani_core. Prefect tasks: an inversion or an evaluation on a Dask worker
(inversion.py, evaluation.py) and a run's storage steps (storage.py). Beside them, holding no task, the flows'
bookkeeping: their MLflow runs (mlflow_runs.py), the saved runs-table view (mlflow_view.py), and the runs a killed
flow process left behind (stale_runs.py)."""
