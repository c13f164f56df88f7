"""Prefect flows: ``invert-dataset`` (invert_dataset.py) and ``nightly-benchmark`` (nightly_benchmark.py).

Beside them: their typed parameters (parameters.py), the Dask cluster of a run (cluster.py), the fan-out of a
dataset's inversions shared by both flows (fan_out.py), and ``python -m flows.NAME`` from a flow's signature
(cli.py).
"""

import os

# Set before Prefect is imported by any flow: no telemetry (nothing leaves 127.0.0.1), and time for the temporary
# local API's first start on a fresh PREFECT_HOME (it creates its database; Prefect's 20 s default was seen to
# time out on a first run).
for _name, _value in {"DO_NOT_TRACK": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                      "MLFLOW_DISABLE_TELEMETRY": "true",
                      "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}.items():
    os.environ.setdefault(_name, _value)
