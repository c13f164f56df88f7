"""Prefect flows: ``invert-dataset`` (invert_dataset.py) and ``nightly-benchmark`` (nightly_benchmark.py).

Beside them: their typed parameters (parameters.py), the Dask cluster of a run (cluster.py), the fan-out of a
dataset's inversions shared by both flows (fan_out.py), and ``python -m flows.NAME`` from a flow's signature
(cli.py).
"""

import os

# Set before Prefect and Dask are imported by any flow: no telemetry (nothing leaves 127.0.0.1); time for the
# temporary local API's first start on a fresh PREFECT_HOME (it creates its database; Prefect's 20 s default was
# seen to time out on a first run); Dask's own INFO lines (every worker's banner) only when asked for
# (DASK_LOGGING__DISTRIBUTED=info): the flow logs one line per finished image instead. Worker processes
# inherit these.
for _name, _value in {"DO_NOT_TRACK": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                      "MLFLOW_DISABLE_TELEMETRY": "true",
                      "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
                      "DASK_LOGGING__DISTRIBUTED": "warning"}.items():
    os.environ.setdefault(_name, _value)
