# The two commands of the README: `make demo` and `make test`. Both set up .venv/ first.
.PHONY: setup demo test lint

export DO_NOT_TRACK = true
export PREFECT_SERVER_ANALYTICS_ENABLED = false
export MLFLOW_DISABLE_TELEMETRY = true

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/gani invert examples/photos/astronaut.jpg examples/photos/coffee.jpg --checkpoint builtin \
		--method gani pti --pivot-steps 200 --tune-steps 150 --out out/demo
	.venv/bin/gani show out/demo
	.venv/bin/gani render builtin --count 8 --out out/demo/samples.png

test: setup
	.venv/bin/python -m pytest

lint: setup
	.venv/bin/ruff check .
