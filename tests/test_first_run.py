"""The demo's entry point on a machine that never ran Prefect: a fresh, empty HOME and PREFECT_HOME.

A first start of Prefect's temporary API creates its database and was seen to take longer than Prefect's 20 s
default timeout; the flows package raises it (flows/__init__.py). Nothing from the test process helps here: the
timeout the other tests set is removed from the environment, and so is the quiet telemetry (gani_core.telemetry),
which the flows package sets itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gani_core.telemetry import QUIET_TELEMETRY

from .conftest import REPO

pytestmark = pytest.mark.services


def test_the_demo_entry_point_runs_on_a_fresh_home(photo_pair: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_")) and k not in QUIET_TELEMETRY}
    env.update(HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "home" / ".prefect"))
    (tmp_path / "home").mkdir()
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "flows.invert_dataset", "--input-uri", str(photo_pair), "--limit", "1",
           "--checkpoint", "builtin-random:32", "--pivot-steps", "2", "--tune-steps", "2", "--n-workers", "1",
           "--output-uri", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert '"images": 1, "ok": 1, "failed": 0' in proc.stdout
    assert f"gani show {out}" in proc.stdout and "--workers 1" in proc.stdout
    # MLflow's runs table (not its GenAI view) in the project's saved view
    assert "/runs?workflowType=machine_learning&viewStateShareKey=gani" in proc.stdout
    assert pq.read_table(out / "metrics.parquet").to_pylist()[0]["status"] == "ok"
    assert (tmp_path / "home" / ".prefect").is_dir()        # Prefect's history went where PREFECT_HOME says
