# Commands: `make demo`, `make test` (the whole suite, as CI runs it), `make test-fast` (unit tests), `make lint`.
# Each sets up .venv/ first. test-fast leaves out the tests marked `services` (they start Prefect, Dask, S3, MLflow).
.PHONY: setup demo test test-fast lint

# No telemetry from the orchestration tools: the settings of gani_core/telemetry.py (standard library only, so
# python3 reads them before .venv exists), exported to every recipe.
QUIET_TELEMETRY := $(shell python3 gani_core/telemetry.py)
ifeq ($(QUIET_TELEMETRY),)
$(error python3 gani_core/telemetry.py printed nothing: is python3 on PATH?)
endif
$(foreach setting,$(QUIET_TELEMETRY),$(eval export $(setting)))

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/python -m flows.invert_dataset --input-uri examples/shapes --limit 3 --pivot-steps 200 --tune-steps 150 --output-uri out/demo
	.venv/bin/gani show out/demo

test: setup
	.venv/bin/python -m pytest

# Two pytest processes (pytest-xdist), a test file each at a time: on a 2-core machine about 1.5 min, not 2.5.
test-fast: setup
	.venv/bin/python -m pytest -m "not services" -n 2 --dist loadfile

lint: setup
	.venv/bin/ruff check .
