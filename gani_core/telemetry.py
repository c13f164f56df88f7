"""The one list of environment settings that keep Prefect, MLflow and friends from phoning home.

gani runs offline: without these, Prefect and MLflow try to send usage data and log
errors when they cannot. Python sets them with :func:`quiet_telemetry` (the flows, the tests, the benchmarks);
shells and the Makefile read them from ``python3 gani_core/telemetry.py`` (``KEY=value`` lines; this file
imports nothing outside the standard library, so it runs before the virtual environment exists).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

QUIET_TELEMETRY: dict[str, str] = {
    "DO_NOT_TRACK": "true",                         # Prefect (and others honouring the convention)
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",    # Prefect's server
    "MLFLOW_DISABLE_TELEMETRY": "true",             # MLflow 3 (accepts only "true")
}


def quiet_telemetry(env: MutableMapping[str, str] = os.environ) -> MutableMapping[str, str]:
    """Set every QUIET_TELEMETRY variable that ``env`` (default: this process's environment) does not set; ``env``."""
    for name, value in QUIET_TELEMETRY.items():
        env.setdefault(name, value)
    return env


if __name__ == "__main__":
    print("\n".join(f"{name}={value}" for name, value in QUIET_TELEMETRY.items()))
