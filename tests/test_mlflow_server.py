"""invert-dataset logging to a real ``mlflow server`` over HTTP (architecture.md: one test through a local server).

The server runs as a subprocess on 127.0.0.1 on a free port, with a sqlite backend store and its own artifact
store (``--artifacts-destination``) in tmp_path; the flow gets ``mlflow_tracking_uri=http://127.0.0.1:PORT``, and
everything is checked back through an ``MlflowClient`` over HTTP, artifacts included (the server proxies them:
the client never writes into the artifact folder itself). Prefect: a temporary local API; Dask: a 1-worker
LocalCluster in this process (threads: no worker process to start; tests/test_flows.py covers worker processes);
a seeded 32 px generator saved as a file, 3 + 3 steps, two example photos. The server, the Prefect API and the
cluster start side by side.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from distributed import LocalCluster
from mlflow.tracking import MlflowClient
from PIL import Image
from prefect.testing.utilities import prefect_test_harness

from flows.invert_dataset import invert_dataset
from gani_core import build_builtin, save_generator

from .conftest import EXAMPLES

SERVER_START_TIMEOUT = 120      # seconds; about 13 s on a 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mlflow_command() -> list[str]:
    script = Path(sys.executable).with_name("mlflow")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mlflow"]


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and its worker processes (its own process group)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 15)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after {SERVER_START_TIMEOUT} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("mlflow-server")
    artifacts, log = root / "artifacts", root / "server.log"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*_mlflow_command(), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(artifacts)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=root,
            start_new_session=True)
    try:
        photos = root / "photos"
        photos.mkdir()
        for name in ("astronaut.jpg", "coffee.jpg"):
            shutil.copy(EXAMPLES / name, photos / name)
        checkpoint = root / "g32.safetensors"
        save_generator(build_builtin(32), checkpoint)
        with (prefect_test_harness(server_startup_timeout=None),     # start while the MLflow server does
              LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster):
            _wait_healthy(url, proc, log)
            summary = invert_dataset(input_uri=str(photos), output_uri=str(root / "out"), checkpoint=str(checkpoint),
                                     pivot_steps=3, tune_steps=3, dask_address=cluster.scheduler_address,
                                     mlflow_tracking_uri=url)
        yield {"url": url, "summary": summary, "photos": photos, "artifacts": artifacts, "checkpoint": str(checkpoint)}
    finally:
        _stop(proc)


def test_the_run_is_in_the_servers_invert_dataset_experiment(server_run):
    client = MlflowClient(tracking_uri=server_run["url"])
    summary = server_run["summary"]
    assert summary["mlflow_tracking_uri"] == server_run["url"]
    experiment = client.get_experiment_by_name("invert-dataset")
    assert experiment is not None and experiment.artifact_location.startswith("mlflow-artifacts:")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [summary["mlflow_run_id"]]
    run = runs[0]
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert (p["method"], p["pivot_steps"], p["tune_steps"]) == ("gani", "3", "3")
    assert p["checkpoint"] == server_run["checkpoint"]
    assert p["dataset_uri"] == str(server_run["photos"]) and len(p["checkpoint_sha256"]) == 64
    m = run.data.metrics
    assert (m["images"], m["ok"], m["failed"], m["skipped"]) == (2, 2, 0, 0)
    assert 0 < m["lpips_mean"] < 1 and 0 < m["lpips_vgg_mean"] < 1 and m["seconds_per_image"] > 0
    assert {"psnr_p50", "ms_ssim_p90", "locality_mean", "edit_consistency_mean"} <= m.keys()


def test_artifacts_are_served_back_over_http(server_run, tmp_path):
    client = MlflowClient(tracking_uri=server_run["url"])
    run_id = server_run["summary"]["mlflow_run_id"]
    assert {a.path for a in client.list_artifacts(run_id)} == {"metrics.parquet", "preview_grid.png", "summary.json"}
    got = Path(client.download_artifacts(run_id, "summary.json", str(tmp_path)))
    summary = json.loads(got.read_text())
    assert (summary["images"], summary["ok"], summary["failed"]) == (2, 2, 0)
    assert summary["mlflow_run_id"] == run_id
    table = pq.read_table(client.download_artifacts(run_id, "metrics.parquet", str(tmp_path))).to_pylist()
    assert sorted(r["image_id"] for r in table) == ["astronaut", "coffee"]
    assert all(r["status"] == "ok" for r in table)
    with Image.open(client.download_artifacts(run_id, "preview_grid.png", str(tmp_path))) as preview:
        assert preview.width > 0 and preview.height > 0
    # The server stored them, in its artifact folder (the client had no path to it, only HTTP).
    stored = {p.name for p in server_run["artifacts"].rglob("*") if p.is_file()}
    assert {"metrics.parquet", "preview_grid.png", "summary.json"} <= stored
