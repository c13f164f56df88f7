"""The ``invert-dataset`` flow: every image under a folder or S3 prefix, in batches of images, one Dask task each.

    invert_dataset(input_uri="s3://photos/in", output_uri="s3://photos/runs/r1", checkpoint="s3://models/ffhq.pkl")

Steps: refuse bad input in one line before anything starts (:func:`check_inputs`); resolve the checkpoint once
(gani_core.checkpoints.ref); list the images, keep the results already under ``output_uri`` for the same image,
checkpoint and configuration and invert the rest on Dask, ``batch_size`` images per task (flows/fan_out.py); log
the MLflow run (tasks/mlflow_runs.py); attach a table and a summary to the flow run as Prefect artifacts. Its final
state: Completed, with a message when some results failed; Failed when all did (flows.reports.final_state).
``python -m flows.invert_dataset --help`` runs it from a shell (flows/cli.py).

The Dask fan-out, MLflow and the run folder are imported when the flow runs: ``--help`` need not wait for them.
"""

from __future__ import annotations

import datetime as dt
from pathlib import PurePosixPath

from prefect import flow, get_run_logger
from prefect.states import Failed, State

from flows.cli import BAD_INPUT, flow_main
from flows.parameters import ClusterSettings, ImageLimit, InversionSettings
from gani_core import storage
from gani_core.checkout import LOCAL_OUT, SHAPES_EXAMPLES
from gani_core.checkpoints.ref import CheckpointRef, check_format, resolve_checkpoint
from gani_core.defaults import Method


@flow(name="invert-dataset")
def invert_dataset(
    input_uri: str = str(SHAPES_EXAMPLES),
    output_uri: str = str(LOCAL_OUT / "invert-dataset"),
    checkpoint: str = "builtin",
    method: Method = "gani",
    inversion: InversionSettings = InversionSettings(),  # noqa: B008 (frozen: a default never mutated)
    cluster: ClusterSettings = ClusterSettings(),  # noqa: B008
    mlflow_tracking_uri: str | None = None,
    limit: ImageLimit | None = None,
) -> dict | State:
    """Invert every image under ``input_uri`` into the generator ``checkpoint`` on Dask, a batch of images per task;
    keep the results ``output_uri`` already holds, write the run's tables there and log an MLflow run.

    Args:
        input_uri: folder or ``s3://bucket/prefix`` holding the images (jpg/jpeg, png, webp, bmp, tif/tiff, gif;
            searched recursively, sorted by path).
        output_uri: folder or ``s3://bucket/prefix`` for metrics.parquet, deltas/, previews/, rows/, configs/,
            summary.json and preview_grid.png. Results already there for the same image, checkpoint and
            configuration are kept; the tables also hold the folder's other results (other methods, earlier runs).
        checkpoint: generator: ``builtin`` (trained, 64 px) / ``builtin-random:RES`` (seeded, untrained), a local
            path or an ``s3://`` URI of an NVIDIA .pkl, a rosinality .pt or a gani .safetensors.
        method: ``gani``, or a baseline: ``pti``, ``wplus``, ``w``.
        inversion: step budgets, seed, precision, and the batch size: images per task, inverted together
            (flows/parameters.py).
        cluster: an existing Dask scheduler, or the size of the LocalCluster started for the run.
        mlflow_tracking_uri: MLflow tracking URI; none: ``$MLFLOW_TRACKING_URI``, else a sqlite store
            ``mlflow.db`` in ``output_uri`` (in ``<repo>/out`` when the output is not a local folder).
        limit: invert only the first ``limit`` images (after sorting); none: all.

    Returns:
        The run's summary (as in summary.json): counts ``images``, ``ok``, ``failed``, ``skipped``, ``computed``,
        means per method, the MLflow run id and tracking URI, the URIs written, and this run's results (the
        folder's tables may hold more): ``run_written`` ok and computed now, ``run_kept`` ok and kept from an
        earlier run, ``run_failed`` failed. Some failed: the flow run is Completed, its message ``N of M result(s)
        failed``. All failed: it is Failed, and its result raises flows.reports.EveryResultFailedError (its
        ``summary`` is this). Bad input (check_inputs): Failed before anything starts, its result raising the
        one-line error (CheckpointError, StorageAccessError, ConnectionError, FileNotFoundError, ...).
    """
    from flows.fan_out import invert_dataset_on_dask
    from flows.reports import final_state, mlflow_run_link, rows_artifact, summary_artifact
    from gani_core.run_folder import RunFolder
    from tasks import mlflow_runs
    from tasks.storage import list_images

    try:        # returned, not raised: one line in the log (a raise logs its traceback), no MLflow run, no cluster
        configs = inversion.configs([method])
        ckpt = check_inputs(input_uri, output_uri, checkpoint)
    except BAD_INPUT as exc:
        return Failed(message=f"{type(exc).__name__}: {exc}", data=exc)
    images = list_images(input_uri, limit, output_uri)  # none there: fails here, before the MLflow run starts
    folder = RunFolder(output_uri)
    # Named for what it is (gani-shapes-2026-12-02), so that runs tell themselves apart in MLflow's table.
    day = dt.datetime.now(dt.UTC).date().isoformat()
    with mlflow_runs.tracked_run("invert-dataset", f"{method}-{PurePosixPath(input_uri).name}-{day}",
                                 mlflow_tracking_uri=mlflow_tracking_uri, data_folder=output_uri,
                                 output_uri=folder.uri, tags={"dataset_uri": input_uri, "method": method}) as mlflow:
        run = invert_dataset_on_dask(input_uri, images, folder, ckpt, configs, inversion, cluster,
                                     mlflow_run_id=mlflow.run_id, mlflow_tracking_uri=mlflow.uri,
                                     mlflow_experiment_id=mlflow.experiment_id)
        params = {**mlflow_runs.config_params(configs[method]),
                  **mlflow_runs.run_params(ckpt, input_uri, folder, limit), "batch_size": inversion.batch_size}
        metrics = mlflow_runs.aggregate(run.rows, len(run.kept), run.wall_seconds, run.summary["computed"])
        mlflow_runs.log_results(mlflow.uri, mlflow.run_id, params, metrics, artifacts=run.written.values())
        mlflow_runs.log_image_table(mlflow.uri, mlflow.run_id, run.rows, folder, computed=run.summary["computed"])
    s = run.summary
    rows_artifact(run.rows, "invert-dataset-metrics", f"{method} on {input_uri}: one row per image")
    summary_artifact("invert-dataset-summary", f"invert-dataset: {method}", {
        "input": f"`{input_uri}`", "output": f"`{folder.uri}`", "generator": s["generator_label"],
        "images": s["images"], "ok": s["ok"], "failed": s["failed"], "skipped (kept)": s["skipped"],
        "lpips (mean)": metrics.get("lpips_mean", "-"),
        "MLflow run": mlflow_run_link(mlflow.uri, mlflow.experiment_id, mlflow.run_id)},
        "invert-dataset summary")
    get_run_logger().info("wrote %s: %d ok, %d failed, %d kept from earlier runs; MLflow run %s (%s)",
                          folder.metrics_uri, s["ok"], s["failed"], s["skipped"], mlflow.run_id, mlflow.uri)
    ok = [(r["image_id"], r["method"]) for r in run.rows if r["status"] == "ok"]
    this_run = {"run_written": sum(key not in run.kept for key in ok), "run_kept": sum(key in run.kept for key in ok),
                "run_failed": len(run.rows) - len(ok)}
    return final_state(run.rows, {**s, "written": run.written, **this_run})


def check_inputs(input_uri: str, output_uri: str, checkpoint: str) -> CheckpointRef:
    """The checkpoint, resolved, once what the flow cannot run on is refused, each in one line: an ``output_uri``
    that is a file or under one, an ``input_uri`` that is not there, a checkpoint missing or not a checkpoint
    (check_format); on S3, a store that cannot be reached (ConnectionError, after gani_core.storage's retries) or
    that has no credentials or refuses them (StorageAccessError). Cheapest first: a checkpoint URI is downloaded."""
    storage.check_folder(output_uri, "output_uri")
    storage.must_exist(input_uri, "input_uri")
    ckpt = resolve_checkpoint(checkpoint)
    check_format(ckpt)
    return ckpt


def _check_shell(input_uri: str, output_uri: str, checkpoint: str, method: Method, inversion: InversionSettings,
                 limit: int | None = None, **_: object) -> None:
    """The shell's checks, before Prefect starts: the flow's (check_inputs), and the listing of the input (an
    empty folder), which the flow does in its list-images task."""
    from gani_core.dataset import list_images

    inversion.configs([method])
    check_inputs(input_uri, output_uri, checkpoint)
    list_images(input_uri, limit, output_uri)


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.invert_dataset``: the flow on the embedded defaults (a temporary Prefect API, a
    LocalCluster, local folders, a sqlite MLflow store); says where everything went. Exit status:
    flows.cli.EXIT_STATUS."""
    return flow_main(invert_dataset, argv, check=_check_shell)


if __name__ == "__main__":
    raise SystemExit(main())
