from __future__ import annotations

import os
from pathlib import Path

# No telemetry from the orchestration tools, in tests as in the Makefile.
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).parent.parent
EXAMPLES = REPO / "examples" / "photos"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES
