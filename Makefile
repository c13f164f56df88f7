# Commands: `make demo`, `make test` (the whole suite, as CI runs it), `make test-fast` (unit tests), `make lint`.
# Each sets up .venv/ first. test-fast leaves out the tests marked `services` (they start Prefect, Dask, S3, MLflow).
.PHONY: setup demo test test-fast lint

export DO_NOT_TRACK = true
export PREFECT_SERVER_ANALYTICS_ENABLED = false
export MLFLOW_DISABLE_TELEMETRY = true

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/python -m flows.invert_dataset --input-uri examples/shapes --limit 3 --pivot-steps 200 --tune-steps 150 --output-uri out/demo
	.venv/bin/gani show out/demo

test: setup
	.venv/bin/python -m pytest

test-fast: setup
	.venv/bin/python -m pytest -m "not services"

lint: setup
	.venv/bin/ruff check .
