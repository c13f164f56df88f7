# The two commands of the README: `make demo` and `make test`. Both set up .venv/ first.
.PHONY: setup demo test lint

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

lint: setup
	.venv/bin/ruff check .
