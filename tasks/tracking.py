"""MLflow: one evaluation run per flow run (and, for the nightly benchmark, a child run per method).

Every run logs the same metric names, whatever the method, so runs compare side by side in the MLflow UI:
``{metric}_mean``, ``{metric}_p50``, ``{metric}_p90`` for each of gani_core.run_folder's ``SUMMARY_METRICS`` over
the images that succeeded, plus ``images``, ``ok``, ``failed``, ``skipped`` and ``seconds_per_image`` (wall time of the
images computed in this flow run, per image). The client is explicit (``MlflowClient``): no global MLflow
state is touched, so flows in one process never see each other's active runs.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import math
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from uuid import UUID

import numpy as np
from fsspec.implementations.local import LocalFileSystem
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed

import gani_core
from gani_core import storage
from gani_core.checkpoints.ref import CheckpointRef
from gani_core.invert import InvertConfig
from gani_core.run_folder import SUMMARY_METRICS, RunFolder

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
LOCAL_DATA = REPO / "out"                                   # the sqlite store when the output is not local


@functools.cache
def code_version() -> str:
    """gani_core's version, plus the git commit of this checkout when there is one (``0.1.0+g1a2b3c4``)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return gani_core.__version__
    return f"{gani_core.__version__}+g{sha}{'.dirty' if dirty else ''}"


def tracking_uri(given: str | None, data_folder: str) -> str:
    """The parameter, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///DATA/mlflow.db`` with DATA the run's data
    folder when it is local, else ``<repo>/out`` (an S3 output has no place for a sqlite file)."""
    if given:
        return given
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    fs, path = storage.resolve(data_folder)
    folder = Path(path) if isinstance(fs, LocalFileSystem) else LOCAL_DATA
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder.resolve() / 'mlflow.db'}"


# MLflow's UI opens an experiment in the view its kind says; without it, MLflow 3 shows the GenAI view (traces).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}

# A saved view of the runs table with what tells runs apart as its columns. MLflow (3.15 and later) keeps saved
# views as experiment tags ``mlflow.sharedViewState.<key>``, lists them under "Views", and opens one from the
# runs table's URL (``runs_url``). Its columns are the UI's keys: ``tags.`method```, ``metrics.`lpips_mean```.
RUNS_VIEW = "gani"
_RUN_COLUMNS = (("tags", "method"), ("metrics", "lpips_mean"), ("metrics", "psnr_mean"), ("metrics", "locality_mean"),
                ("metrics", "edit_accuracy_mean"), ("metrics", "seconds_per_image"), ("metrics", "ok"),
                ("metrics", "failed"))
RUNS_VIEW_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "invert-dataset": _RUN_COLUMNS,
    "nightly-benchmark": _RUN_COLUMNS,
    "domain-benchmark": (("tags", "method"), ("tags", "set"), ("metrics", "lpips"), ("metrics", "locality"),
                         ("metrics", "edit_accuracy"), ("metrics", "drift"), ("metrics", "seconds"),
                         ("metrics", "images"), ("metrics", "failed")),
}


def runs_view(experiment: str) -> tuple[str, str]:
    """The experiment tag (key, value) of the runs-table view of ``experiment``: its columns in order."""
    columns = [f"{kind}.`{key}`" for kind, key in RUNS_VIEW_COLUMNS.get(experiment, _RUN_COLUMNS[:2])]
    state = {"selectedColumns": columns, "columnOrder": ["attributes.`Run Name`", *columns]}
    envelope = {"name": f"gani: {experiment}", "createdAt": int(time.time() * 1000), "state": json.dumps(state)}
    return f"mlflow.sharedViewState.{RUNS_VIEW}", json.dumps(envelope)


def runs_url(experiment_id: str, base: str = "http://127.0.0.1:5000") -> str:
    """The MLflow UI's runs table of an experiment in the project's view (not MLflow 3's default GenAI view)."""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={RUNS_VIEW}"


def _experiment_id(client: MlflowClient, uri: str, name: str) -> str:
    view_key, view = runs_view(name)
    tags = {**EXPERIMENT_KIND, view_key: view}
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        for key, value in tags.items():     # those an older gani did not set; a view the user saved over is kept
            if key not in exp.tags:
                client.set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):        # artifacts next to the database, not in the current directory
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags=tags)
    except MlflowException:                 # created meanwhile by a concurrent flow run
        return client.get_experiment_by_name(name).experiment_id


def start_run(uri: str, experiment_id: str, run_name: str, tags: dict[str, str] | None = None,
              parent_run_id: str | None = None) -> str:
    """Create a run (a child of ``parent_run_id`` when given) in the experiment ``experiment_id``
    (:func:`experiment_id`), tagged with the process that runs it (``flow_host``, ``flow_pid``: see
    :func:`end_stale_runs`); return its id."""
    client = MlflowClient(tracking_uri=uri)
    all_tags = {"code_version": code_version(), "gani_version": gani_core.__version__,
                "flow_host": socket.gethostname(), "flow_pid": str(os.getpid()), **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    return client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id


def end_stale_runs(uri: str, experiment_id: str, output_uri: str, logger: logging.Logger | logging.LoggerAdapter = log
                   ) -> list[str]:
    """Mark KILLED the runs of ``experiment_id`` into ``output_uri`` (their ``output_uri`` tag) that a flow process
    left RUNNING when it was killed (nothing runs at SIGKILL), and their Prefect flow runs Crashed where they are
    still Running; a line on ``logger`` for each. Returns their ids.

    A run is stale when the process that started it (``flow_host``, ``flow_pid``) ran on this host and is gone, or
    when its Prefect flow run (``prefect_flow_run_id``) has ended: Prefect marks a flow run whose heartbeats
    stopped Crashed where an automation says so (docs/reliability.md). Runs of live processes, and those of other
    hosts whose flow run Prefect still calls Running, are left alone: they may be running."""
    client = MlflowClient(tracking_uri=uri)
    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    ended = []
    for run in running:
        tags = run.data.tags
        if tags.get("output_uri") != output_uri:
            continue
        pid = tags.get("flow_pid", "")
        gone_here = tags.get("flow_host") == socket.gethostname() and pid.isdigit() and \
            not storage.process_running(int(pid))
        flow_run = _prefect_flow_run(tags.get("prefect_flow_run_id"))
        if not (gone_here or (flow_run is not None and flow_run.state is not None and flow_run.state.is_final())):
            continue
        client.set_terminated(run.info.run_id, "KILLED")
        crashed = flow_run is not None and _crash(flow_run)
        logger.warning("MLflow run %s (%s) into %s was left RUNNING by a flow process that is gone (%s, pid %s): "
                       "marked KILLED%s", run.info.run_id, run.info.run_name, output_uri,
                       tags.get("flow_host"), pid or "?",
                       f"; its Prefect flow run {flow_run.id} marked Crashed" if crashed else "")
        ended.append(run.info.run_id)
    return ended


def _prefect_flow_run(flow_run_id: str | None) -> FlowRun | None:
    """The Prefect flow run ``flow_run_id`` on the current API, or None where it is not there."""
    if not flow_run_id:
        return None
    try:
        with get_client(sync_client=True) as client:
            return client.read_flow_run(UUID(flow_run_id))
    except (ObjectNotFound, ValueError):
        return None
    except Exception as exc:        # best effort: the MLflow side does not need Prefect
        log.warning("Prefect flow run %s not read (%s: %s)", flow_run_id, type(exc).__name__, exc)
        return None


def _crash(flow_run: FlowRun) -> bool:
    """Mark ``flow_run`` Crashed unless it has ended; whether it was."""
    if flow_run.state is not None and flow_run.state.is_final():
        return False
    try:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run.id, Crashed(message="its flow process was gone (killed); found by "
                                                                   "the next run into the same output"), force=True)
    except Exception as exc:        # best effort, as above
        log.warning("Prefect flow run %s not marked Crashed (%s: %s)", flow_run.id, type(exc).__name__, exc)
        return False
    return True


def end_run(uri: str, run_id: str, ok: bool = True) -> None:
    MlflowClient(tracking_uri=uri).set_terminated(run_id, "FINISHED" if ok else "FAILED")


@contextlib.contextmanager
def ended_on_exit(uri: str, *run_ids: str) -> Iterator[None]:
    """End the runs when the block ends: FINISHED, or FAILED when it raised (the error goes on, also when the
    runs cannot be marked: the store may share the disk that just filled up)."""
    try:
        yield
    except BaseException as exc:
        for run_id in run_ids:
            try:
                end_run(uri, run_id, ok=False)
            except Exception as end_exc:
                log.warning("MLflow run %s at %s not marked FAILED (%s: %s) after %s: %s", run_id, uri,
                            type(end_exc).__name__, end_exc, type(exc).__name__, exc)
        raise
    for run_id in run_ids:
        end_run(uri, run_id)


def run_params(ckpt: CheckpointRef, input_uri: str, folder: RunFolder, limit: int | None) -> dict[str, object]:
    """The parameters every run of a flow logs besides its method's configuration."""
    return {"checkpoint": ckpt.spec, "checkpoint_sha256": ckpt.sha256, "generator_label": ckpt.label,
            "dataset_uri": input_uri, "output_uri": folder.uri, "limit": limit, "code_version": code_version()}


def config_params(cfg: InvertConfig) -> dict[str, object]:
    """The parameters of one method's configuration, with flat names (``pivot_lr``, ``tune_lr``, ...)."""
    params: dict[str, object] = {"method": cfg.method, "config_hash": cfg.config_hash(), "seed": cfg.seed}
    params.update({f"pivot_{k}": v for k, v in asdict(cfg.pivot).items()})
    if cfg.tune is not None:
        params.update({f"tune_{k}": v for k, v in asdict(cfg.tune).items() if k != "extra"})
    else:
        params["tune_steps"] = 0
    params.update(locality_count=cfg.locality_count, num_directions=cfg.num_directions,
                  delta_encoding=cfg.delta_encoding, delta_max_rel_error=cfg.delta_max_rel_error)
    return params


def aggregate(rows: list[dict], skipped: int = 0, wall_seconds: float | None = None,
              computed: int = 0) -> dict[str, float]:
    """The run's metrics: mean, median and 90th percentile of each metric over the ok rows, and counts."""
    ok = [r for r in rows if r["status"] == "ok"]
    metrics: dict[str, float] = {"images": len(rows), "ok": len(ok), "failed": len(rows) - len(ok),
                                 "skipped": skipped}
    for name in SUMMARY_METRICS:
        values = np.array([r[name] for r in ok if r.get(name) is not None], dtype=np.float64)
        values = values[np.isfinite(values)]
        if len(values):
            metrics[f"{name}_mean"] = float(values.mean())
            metrics[f"{name}_p50"] = float(np.quantile(values, 0.5))
            metrics[f"{name}_p90"] = float(np.quantile(values, 0.9))
    if computed and wall_seconds is not None:
        metrics["seconds_per_image"] = wall_seconds / computed
    return metrics


def log_results(uri: str, run_id: str, params: dict[str, object], metrics: dict[str, float],
                artifacts: Iterable[str] = ()) -> None:
    """Log params, metrics and artifacts (local paths or URIs: remote ones are copied to a temp folder first)."""
    client = MlflowClient(tracking_uri=uri)
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None and math.isfinite(v)],
        params=[Param(k, str(v)[:6000]) for k, v in params.items()],
        tags=[RunTag("code_version", code_version())],
    )
    with tempfile.TemporaryDirectory(prefix="gani-mlflow-") as tmp:
        for artifact in artifacts:
            fs, path = storage.resolve(artifact)
            if isinstance(fs, LocalFileSystem):
                client.log_artifact(run_id, path)
            else:
                local = Path(tmp) / Path(path).name
                local.write_bytes(storage.read_bytes(artifact))
                client.log_artifact(run_id, str(local))


def experiment_id(uri: str, name: str) -> str:
    """The id of the experiment ``name`` in the tracking store ``uri`` (created when missing)."""
    return _experiment_id(MlflowClient(tracking_uri=uri), uri, name)


IMAGE_TABLE = "per_image.json"          # the run's per-image table, with images, in MLflow's evaluation views
IMAGE_TABLE_MAX = 64                    # rows with images (the whole table is metrics.parquet)


def log_image_table(uri: str, run_id: str, rows: list[dict], folder: RunFolder) -> None:
    """The run's ok results as an MLflow table: ids, method, the headline metrics and four images per row
    (input, pivot, tuned, edit: the cells of each preview), so that MLflow compares each image across runs."""
    import pandas as pd
    from PIL import Image

    ok = [r for r in rows if r["status"] == "ok"][:IMAGE_TABLE_MAX]
    previews = storage.read_many([folder.preview_uri(r["image_id"], r["method"]) for r in ok]) if ok else {}
    table: dict[str, list] = {k: [] for k in ("image_id", "method", "lpips", "locality", "edit_accuracy",
                                              "input", "pivot", "tuned", "edit")}
    for row, png in zip(ok, previews.values(), strict=True):
        if png is None:
            continue
        grid = Image.open(io.BytesIO(png)).convert("RGB")
        cell = grid.width // 4                      # four square cells side by side, the caption below
        for i, name in enumerate(("input", "pivot", "tuned", "edit")):
            table[name].append(grid.crop((i * cell, 0, (i + 1) * cell, cell)))
        for name in ("image_id", "method", "lpips", "locality", "edit_accuracy"):
            table[name].append(row.get(name))
    if table["image_id"]:
        MlflowClient(tracking_uri=uri).log_table(run_id, data=pd.DataFrame(table), artifact_file=IMAGE_TABLE)
