"""Prefect flows: ``invert-dataset`` (invert_dataset.py), ``nightly-benchmark`` (nightly_benchmark.py) and
``domain-benchmark`` (domain_benchmark.py).

Beside them: their typed parameters (parameters.py), the Dask cluster of a run (cluster.py), the fan-out of a
dataset's inversions shared by invert-dataset and nightly-benchmark (fan_out.py), the Prefect artifacts a run
shows (reports.py), and ``python -m flows.NAME`` from a flow's signature (cli.py).
"""

import os

from gani_core.telemetry import quiet_telemetry

# Set before Prefect and Dask are imported by any flow: no telemetry (gani_core.telemetry; nothing leaves
# 127.0.0.1); time for the temporary local API's first start on a fresh PREFECT_HOME (it creates its database;
# Prefect's 20 s default was seen to time out on a first run); Dask's own INFO lines (every worker's banner) only
# when asked for (DASK_LOGGING__DISTRIBUTED=info): the flow logs one line per finished image instead. Worker
# processes inherit these.
quiet_telemetry()
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
