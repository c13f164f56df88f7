"""`prefect deployment run invert-dataset/default` through a real local Prefect server and process worker.

The path of deployments/README.md, on a free port and a temporary PREFECT_HOME: `prefect server start`, a process
work pool, `prefect deploy --all` from prefect.yaml, `prefect deployment run ... --watch`, and a worker started
with `--run-once` (it polls once, runs what it found to the end, and exits). Every process is started in its own
session and its whole process group is stopped at teardown, with bounded waits.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gani_core.telemetry import QUIET_TELEMETRY
from tests.conftest import REPO
from tests.support.processes import free_port, start_in_own_session, stop_process_group, wait_until

pytestmark = pytest.mark.services

BIN = Path(sys.executable).parent           # the venv running the tests: prefect is installed next to python
PREFECT = str(BIN / "prefect")
POOL = "gani-local"                         # the work pool named in prefect.yaml


@dataclass
class Server:
    api: str                # http://127.0.0.1:PORT/api
    env: dict[str, str]     # the environment of every prefect command that talks to it
    log: Path


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start cmd in the repository, in its own session (its children share its process group), output to log."""
    return start_in_own_session(cmd, env, log, cwd=REPO)


# A Prefect worker ignores SIGTERM; the first SIGINT asks it to stop, the second insists.
STOP_WORKER = [(signal.SIGINT, False, 3.0), (signal.SIGINT, False, 15.0), (signal.SIGTERM, True, 5.0)]
STOP_SERVER = [(signal.SIGTERM, True, 20.0)]


def _api(server: Server, path: str, body: dict | None = None) -> object:
    req = urllib.request.Request(server.api + path, method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def _prefect(server: Server, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    result = subprocess.run([PREFECT, *args], env=server.env, cwd=REPO, capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update({
        "PREFECT_HOME": str(home),
        **QUIET_TELEMETRY,
        "GANI_REPO": str(REPO),                         # prefect.yaml's pull step: flow runs start in the repo
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
    })
    log = home / "server.log"
    proc = _start([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log)
    srv = Server(api=f"http://127.0.0.1:{port}/api", env={**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"},
                 log=log)
    try:
        wait_until("prefect server /api/health", lambda: _api(srv, "/health") is True, 120, proc, log)
        yield srv
    finally:
        stop_process_group(proc, STOP_SERVER)


def test_deployment_run_through_server_and_process_worker(server: Server, photo_pair: Path, g32_file: Path,
                                                          tmp_path: Path) -> None:
    photos = photo_pair                             # astronaut.jpg and coffee.jpg
    out = tmp_path / "run"
    checkpoint = g32_file                           # a seeded 32 px generator, whatever `builtin` loads

    _prefect(server, "work-pool", "create", POOL, "--type", "process")
    _prefect(server, "deploy", "--all", "--no-prompt", timeout=300)

    found = _api(server, "/deployments/filter", {})
    # invert-, edit- and align-dataset/default, nightly-benchmark/nightly
    assert sorted(d["name"] for d in found) == ["default", "default", "default", "nightly"]
    deployments = {d["entrypoint"].split(":")[-1]: d for d in found}                # by flow function
    assert set(deployments) == {"invert_dataset", "edit_dataset", "align_dataset", "nightly_benchmark"}
    nightly = deployments["nightly_benchmark"]
    assert [s["schedule"].get("cron") for s in nightly["schedules"]] == ["0 2 * * *"]
    assert nightly["schedules"][0]["schedule"]["timezone"] == "UTC"
    assert nightly["parameters"]["inversion"] == {"seed": 0}
    assert nightly["parameters"]["suite"] == "cpu-night"
    assert deployments["invert_dataset"]["work_pool_name"] == POOL
    assert deployments["edit_dataset"]["work_pool_name"] == POOL
    assert deployments["align_dataset"]["work_pool_name"] == POOL

    run_log, worker_log = tmp_path / "deployment-run.log", tmp_path / "worker.log"
    params = {
        "input_uri": str(photos), "output_uri": str(out), "checkpoint": str(checkpoint),
        "inversion": '{"pivot_steps": 3, "tune_steps": 3}', "cluster": '{"n_workers": 1}',
        "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    run_cmd = [PREFECT, "deployment", "run", "invert-dataset/default", "--watch", "--watch-timeout", "400"]
    for k, v in params.items():
        run_cmd += ["--param", f"{k}={v}"]
    watcher = _start(run_cmd, server.env, run_log)
    worker = None
    try:
        # The worker polls once: start it when the flow run is scheduled, so that the one poll finds it.
        # (The nightly deployment's schedule has created runs for the coming nights: not these.)
        mine = {"deployments": {"id": {"any_": [deployments["invert_dataset"]["id"]]}}}
        runs = wait_until("flow run scheduled", lambda: _api(server, "/flow_runs/filter", mine), 120, watcher, run_log)
        assert len(runs) == 1
        worker = _start([PREFECT, "worker", "start", "--pool", POOL, "--run-once", "--prefetch-seconds", "0"],
                        server.env, worker_log)
        try:
            worker.wait(timeout=420)
            watcher.wait(timeout=60)
        except subprocess.TimeoutExpired as exc:
            timed_out = exc
        else:
            timed_out = None
    finally:
        for proc, steps in ((worker, STOP_WORKER), (watcher, STOP_WORKER)):
            if proc is not None:
                stop_process_group(proc, steps)

    logs = f"--- prefect deployment run:\n{run_log.read_text()[-4000:]}\n--- worker:\n{worker_log.read_text()[-6000:]}"
    assert timed_out is None, f"{timed_out}\n{logs}"
    run = _api(server, f"/flow_runs/{runs[0]['id']}")
    assert run["state_type"] == "COMPLETED", logs
    assert watcher.returncode == 0, logs
    assert worker.returncode == 0, logs
    p = run["parameters"]
    assert (p["checkpoint"], p["inversion"]["pivot_steps"], p["cluster"]["n_workers"]) == (str(checkpoint), 3, 1)

    table = pq.read_table(out / "metrics.parquet").to_pydict()
    assert sorted(table["image_id"]) == ["astronaut", "coffee"]
    assert table["status"] == ["ok", "ok"], table.get("error")
    with closing(sqlite3.connect(tmp_path / "mlflow.db")) as db:   # the MLflow run, read from its store
        runs_logged = db.execute("SELECT r.status FROM runs r JOIN experiments e USING (experiment_id) "
                                 "WHERE e.name = 'invert-dataset'").fetchall()
    assert runs_logged == [("FINISHED",)]
