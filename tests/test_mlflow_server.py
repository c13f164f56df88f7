"""invert-dataset logging to a real ``mlflow server`` over HTTP (architecture.md: one test through a local server).

The server runs as a subprocess on 127.0.0.1 on a free port, with a sqlite backend store and its own artifact
store (``--artifacts-destination``) in tmp_path; the flow gets ``mlflow_tracking_uri=http://127.0.0.1:PORT``, and
everything is checked back through an ``MlflowClient`` over HTTP, artifacts included (the server proxies them:
the client never writes into the artifact folder itself). Prefect: a temporary local API; Dask: a 1-worker
LocalCluster in this process (threads: no worker process to start; tests/test_flows.py covers worker processes);
the seeded 32 px generator saved as a file and the two example photos (conftest: g32_file, photo_pair), 3 + 3
steps. The server, the Prefect API and the cluster start side by side.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from distributed import LocalCluster
from mlflow.tracking import MlflowClient
from PIL import Image

from flows.invert_dataset import invert_dataset
from flows.parameters import ClusterSettings, InversionSettings
from gani_core.images import load_image
from gani_core.telemetry import QUIET_TELEMETRY

from .conftest import EXAMPLES
from .support.prefect_api import temporary_prefect_api
from .support.processes import free_port, start_in_own_session, stop_process_group, wait_until

pytestmark = pytest.mark.services

SERVER_START_TIMEOUT = 120      # seconds; about 13 s on a 2-core machine
ARTIFACTS = ("metrics.parquet", "preview_grid.png", "summary.json")


def _mlflow_command() -> list[str]:
    script = Path(sys.executable).with_name("mlflow")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mlflow"]


def _healthy(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
        return response.status == 200


@pytest.fixture(scope="module")
def server_run(tmp_path_factory: pytest.TempPathFactory, g32_file: Path, photo_pair: Path) -> dict:
    root = tmp_path_factory.mktemp("mlflow-server")
    artifacts, log, out = root / "artifacts", root / "server.log", root / "out"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **QUIET_TELEMETRY}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = start_in_own_session(     # the server and its worker processes: one process group
        [*_mlflow_command(), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(artifacts)],
        env, log, cwd=root)
    try:
        with (temporary_prefect_api(),     # start while the MLflow server does
              LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster):
            wait_until("mlflow server /health", lambda: _healthy(url), SERVER_START_TIMEOUT, proc, log)
            summary = invert_dataset(input_uri=str(photo_pair), output_uri=str(out), checkpoint=str(g32_file),
                                     inversion=InversionSettings(pivot_steps=3, tune_steps=3),
                                     cluster=ClusterSettings(dask_address=cluster.scheduler_address),
                                     mlflow_tracking_uri=url)
        yield {"url": url, "summary": summary, "photos": photo_pair, "artifacts": artifacts, "out": out,
               "checkpoint": str(g32_file)}
    finally:
        stop_process_group(proc)


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


def test_artifacts_are_served_back_over_http_as_the_flow_wrote_them(server_run, tmp_path):
    client = MlflowClient(tracking_uri=server_run["url"])
    run_id = server_run["summary"]["mlflow_run_id"]
    assert {a.path for a in client.list_artifacts(run_id)} == {*ARTIFACTS, "per_image.json", "table_images"}
    for name in ARTIFACTS:
        served = Path(client.download_artifacts(run_id, name, str(tmp_path)))
        assert served.read_bytes() == (server_run["out"] / name).read_bytes(), name
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["images"], summary["ok"], summary["failed"]) == (2, 2, 0)
    assert summary["mlflow_run_id"] == run_id
    table = pq.read_table(tmp_path / "metrics.parquet").to_pylist()
    assert sorted(r["image_id"] for r in table) == ["astronaut", "coffee"]
    assert all(r["status"] == "ok" for r in table)
    # The server stored them, in its artifact folder (the client had no path to it, only HTTP).
    stored = {p.name for p in server_run["artifacts"].rglob("*") if p.is_file()}
    assert set(ARTIFACTS) <= stored


def test_preview_grid_stacks_each_images_preview_input_first(server_run, tmp_path):
    client = MlflowClient(tracking_uri=server_run["url"])
    grid_path = client.download_artifacts(server_run["summary"]["mlflow_run_id"], "preview_grid.png", str(tmp_path))
    sizes = []
    for image_id in ("astronaut", "coffee"):
        with Image.open(server_run["out"] / "previews" / f"{image_id}.gani.png") as preview:
            sizes.append(preview.size)
    with Image.open(grid_path) as grid:
        pixels = np.asarray(grid.convert("RGB"))
    # Each preview is input | pivot | tuned | edit in four square cells (the 32 px images upscaled by a whole
    # factor), its caption under them; the grid stacks the previews in image order.
    cell = sizes[0][0] // 4
    scale = cell // 32
    assert [w for w, _ in sizes] == [4 * cell, 4 * cell] and cell == 32 * scale
    assert pixels.shape == (sum(h for _, h in sizes), 4 * cell, 3)
    for top, name in ((0, "astronaut.jpg"), (sizes[0][1], "coffee.jpg")):
        photo = (load_image(EXAMPLES / name, resolution=32).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        upscaled = photo.repeat(scale, axis=0).repeat(scale, axis=1)
        assert np.array_equal(pixels[top : top + cell, :cell], upscaled), name


def test_logged_metrics_are_the_aggregates_of_metrics_parquet(server_run):
    client = MlflowClient(tracking_uri=server_run["url"])
    logged = client.get_run(server_run["summary"]["mlflow_run_id"]).data.metrics
    rows = pq.read_table(server_run["out"] / "metrics.parquet").to_pylist()
    aggregates = {key: value for key, value in logged.items() if key.rpartition("_")[2] in ("mean", "p50", "p90")}
    expected = {}
    for key in aggregates:
        name, _, stat = key.rpartition("_")
        lo, hi = sorted(r[name] for r in rows)      # two images: the median is their mean, p90 is 90% of the way up
        expected[key] = {"mean": statistics.mean([lo, hi]), "p50": statistics.median([lo, hi]),
                         "p90": lo + 0.9 * (hi - lo)}[stat]
    assert aggregates == pytest.approx(expected, rel=1e-9, abs=1e-12)
    summarised = {key.rpartition("_")[0] for key in aggregates}
    assert {"mse", "psnr", "ms_ssim", "lpips", "lpips_vgg", "locality", "edit_consistency", "seconds",
            "delta_bytes"} <= summarised
    assert "edit_accuracy" not in summarised        # null for a generator without factor edit directions
    assert set(logged) - set(aggregates) == {"images", "ok", "failed", "skipped", "seconds_per_image"}
