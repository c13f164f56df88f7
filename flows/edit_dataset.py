"""The ``edit-dataset`` flow: what ``gani edit`` does (gani_core.edit_runs), on Dask, a batch of images per task.

    edit_dataset(run_uri="s3://photos/runs/r1", directions=["factor:hue"], strengths=[-2, 0, 2])

Steps: refuse bad input in one line before anything starts (:func:`check_inputs`: what ``gani edit`` refuses before
it writes anything; the run's rows are read once, here); keep the edits the edits folder holds for the same inputs
(gani_core.edit_runs' resume rule) and edit the rest on Dask, ``batch_size`` images per ``edit-images`` task
(tasks/editing.py), at most a window of tasks submitted, progress in the log every 5 % or 30 s (flows.progress);
write edits.parquet; log the MLflow run (experiment ``edit-dataset``: the means per direction and strength, a table
of strips, edits.parquet); attach a summary to the flow run. Its final state is invert-dataset's
(flows.reports.final_state), an image counting as failed when one of its edits did. ``python -m flows.edit_dataset
--help`` runs it from a shell (flows/cli.py).

:func:`prepare_job` and :func:`edit_on_dask` are the body nightly-benchmark shares (one edit per method of its
night's run folder). gani_core's editing, the Dask fan-out and MLflow are imported when the flow runs: ``--help``
need not wait for them.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Annotated, Literal

from prefect import flow, get_run_logger
from prefect.states import Failed, State
from pydantic import Field

from flows.cli import BAD_INPUT, flow_main
from flows.parameters import AUTO_TASK_IMAGES, ClusterSettings
from flows.window import Batches
from gani_core.checkout import LOCAL_OUT
from gani_core.defaults import Method

if TYPE_CHECKING:
    from prefect.futures import PrefectFuture

    from gani_core.edit_runs import EditFolder, EditPlan
    from gani_core.run_folder import RunFolder
    from tasks.editing import EditRequest
    from tasks.mlflow_runs import TrackedRun

# Images per task, edited together; ``auto``: AUTO_TASK_IMAGES per task, in batches the worker's memory holds.
BatchSize = Annotated[int, Field(ge=1)] | Literal["auto"]
DEFAULT_STRENGTHS = [-2.0, 0.0, 2.0]


@flow(name="edit-dataset")
def edit_dataset(
    run_uri: str = str(LOCAL_OUT / "invert-dataset"),
    directions: list[str] | None = None,
    strengths: list[float] = DEFAULT_STRENGTHS,
    method: Method | None = None,
    image_ids: list[str] | None = None,
    layers: str | None = None,
    raw: bool = False,
    out_uri: str | None = None,
    gif: bool = False,
    batch_size: BatchSize = 1,
    cluster: ClusterSettings = ClusterSettings(),  # noqa: B008 (frozen: a default never mutated)
    mlflow_tracking_uri: str | None = None,
) -> dict | State:
    """Edit the images of the run folder ``run_uri`` along latent directions, each through its own tuned generator
    and through the original one, on Dask, a batch of images per task; keep the edits ``out_uri`` already holds for
    the same inputs, write edits.parquet there and log an MLflow run.

    Args:
        run_uri: a run folder (local or ``s3://bucket/prefix``) that gani invert or invert-dataset wrote.
        directions: the directions, each ``factor:NAME`` (a factor the generator carries), ``pca:K`` (the K-th
            principal direction of W) or a ``.npy`` file (a path or URI); none: ``factor:hue`` when the generator
            carries it, else ``pca:0``.
        strengths: the strengths of every direction, in its unit (steps, sigmas, W units).
        method: the method whose results are edited; none: gani, else pti (w and wplus edit a pivot alone).
        image_ids: only these images of the run; none: every image with a successful result of the method.
        layers: edit only these style inputs, ``A-B``, ``A`` or ``A-`` (both ends included); none: all.
        raw: a ``.npy`` direction as stored, not scaled to length 1.
        out_uri: the edits folder (strips/, gifs/, rows/, edits.parquet); none: ``RUN/edits``.
        gif: also a GIF per image and direction, through the strengths and back.
        batch_size: images per task, edited together; auto: as many per task as invert-dataset's auto
            (flows/parameters.py), in batches the worker's memory holds.
        cluster: an existing Dask scheduler, or the size of the LocalCluster started for the run.
        mlflow_tracking_uri: MLflow tracking URI; none: ``$MLFLOW_TRACKING_URI``, else the sqlite store
            ``mlflow.db`` in ``run_uri`` (in ``<repo>/out`` when the run is not a local folder).

    Returns:
        The summary: counts of edits.parquet's rows of this request (``rows``, ``ok``, ``failed``), of images
        (``images_edited``, ``computed``, ``skipped``: kept from an earlier run, ``run_failed``: an edit of them
        failed) and of strips, one per image x direction, as gani edit counts them (``strips_written``,
        ``strips_kept``, ``strips_failed``), the means logged to MLflow, the MLflow run id and tracking URI,
        edits.parquet's URI. Some images failed: Completed, its message ``N of M result(s) failed``. All failed:
        Failed, its result raising flows.reports.EveryResultFailedError. Bad input (check_inputs): Failed before
        anything starts, its result raising the one-line error.
    """
    from flows.reports import final_state, mlflow_run_link, summary_artifact
    from tasks import mlflow_runs

    try:        # returned, not raised: one line in the log, no MLflow run, no cluster
        job, note = check_inputs(run_uri, directions, strengths, method, image_ids, layers, raw, out_uri, gif)
    except BAD_INPUT as exc:
        return Failed(message=f"{type(exc).__name__}: {exc}", data=exc)
    logger = get_run_logger()
    if note:
        logger.info("%s", note)
    specs = ", ".join(job.request.directions)
    day = dt.datetime.now(dt.UTC).date().isoformat()
    with mlflow_runs.tracked_run("edit-dataset", f"{job.method}-{PurePosixPath(job.folder.uri).name}-{day}",
                                 mlflow_tracking_uri=mlflow_tracking_uri, data_folder=run_uri, output_uri=job.out.uri,
                                 tags={"run_uri": job.folder.uri, "method": job.method, "directions": specs},
                                 columns=mlflow_runs.EDIT_VIEW_COLUMNS) as mlflow:
        (run,) = edit_on_dask([job], batch_size, cluster)
        params = job_params(job, batch_size)
        metrics = mlflow_runs.edit_metrics(run.rows, run.kept, run.computed, run.wall_seconds)
        mlflow_runs.log_results(mlflow.uri, mlflow.run_id, params, metrics, artifacts=[job.out.table_uri])
        mlflow_runs.log_edit_table(mlflow.uri, mlflow.run_id, run.rows, job.out, computed=run.computed)
    summary = run_summary(job, run, metrics, mlflow)
    summary_artifact("edit-dataset-summary", f"edit-dataset: {job.method}, {specs}", {
        "run": f"`{job.folder.uri}`", "edits": f"`{job.out.uri}`",
        "strengths": params["strengths"], "images": len(run.images),
        "failed": summary["run_failed"], "kept from earlier runs": run.kept, **summary["means"],
        "MLflow run": mlflow_run_link(mlflow.uri, mlflow.experiment_id, mlflow.run_id)}, "edit-dataset summary")
    logger.info("wrote %s: %d image(s), %d failed, %d kept from earlier runs; MLflow run %s (%s)", job.out.table_uri,
                len(run.images), summary["run_failed"], run.kept, mlflow.run_id, mlflow.uri)
    return final_state(run.images, summary)


def run_summary(job: EditJob, run: EditRun, metrics: dict[str, float], mlflow: TrackedRun) -> dict:
    """What the flow returns (its docstring's Returns)."""
    return {"rows": len(run.rows), "ok": sum(r["status"] == "ok" for r in run.rows),
            "failed": sum(r["status"] != "ok" for r in run.rows), "images_edited": len(run.images),
            "computed": run.computed, "skipped": run.kept,
            "run_failed": sum(r["status"] != "ok" for r in run.images),
            **{f"strips_{k}": n for k, n in run.strips.items()}, "method": job.method,
            "directions": list(job.request.directions), "strengths": list(job.request.strengths),
            "output": job.out.uri, "means": {k: v for k, v in metrics.items() if k.endswith("_mean")},
            "written": {"edits.parquet": job.out.table_uri}, "mlflow_run_id": mlflow.run_id,
            "mlflow_tracking_uri": mlflow.uri, "mlflow_experiment_id": mlflow.experiment_id}


# ------------------------------------------------------------------------------------------------------------------
# What to edit


@dataclass
class EditJob:
    """An edit request, checked: which rows of which run, edited how, into which folder."""

    folder: RunFolder           # the run
    out: EditFolder             # its edits folder
    method: str                 # the method whose results are edited
    rows: list[dict]            # the run's ok rows of ``method`` to edit, in image order
    plan: EditPlan              # the directions parsed here, in the flow: the resume rule's keys
    request: EditRequest        # what each task is given (the directions as specs)
    missing: set[str]           # the images without a deltas file: they fail alone


def check_inputs(run_uri: str, directions: Sequence[str] | None, strengths: Sequence[float], method: str | None,
                 image_ids: Sequence[str] | None = None, layers: str | None = None, raw: bool = False,
                 out_uri: str | None = None, gif: bool = False) -> tuple[EditJob, str | None]:
    """The request checked as ``gani edit`` checks it before writing anything (:func:`prepare_job`), the run's rows
    read once; and the note on a run whose tables are behind its rows (or None). Raises one of flows.cli.BAD_INPUT,
    in one line: a folder that is no run (FileNotFoundError), an image id not in it or without a successful result,
    a checkpoint that is no longer the one the run tuned, an ``out_uri`` that is a file, a direction or strength
    that cannot be used, no deltas at all (GaniError); on S3, a store that cannot be reached or refuses the
    credentials."""
    from gani_core.run_folder import RunFolder

    folder = RunFolder(run_uri)
    stored = folder.read_run()
    job = prepare_job(folder, stored.rows, directions, strengths, method, image_ids, layers, raw, out_uri, gif)
    return job, stored.incomplete_note


def prepare_job(folder: RunFolder, run_rows: Sequence[dict], directions: Sequence[str] | None,
                strengths: Sequence[float], method: str | None, image_ids: Sequence[str] | None = None,
                layers: str | None = None, raw: bool = False, out_uri: str | None = None,
                gif: bool = False) -> EditJob:
    """The edit of ``run_rows`` (the run's stored rows) that the arguments ask for (:func:`edit_dataset`'s), each
    piece checked in ``gani edit``'s order: the strengths, the rows to edit and their checkpoint (gani_core.edit_runs:
    select_rows, checkpoint_of), the output folder, the directions parsed with the checkpoint's generator (loaded
    here on the CPU, once per process), the deltas files (check_outputs: one listing)."""
    from gani_core.edit_runs import prepare_edit
    from tasks.editing import EditRequest
    from tasks.inversion import worker_generator

    p = prepare_edit(folder, run_rows, directions, strengths, lambda ckpt: worker_generator(ckpt, "cpu"), method,
                     list(image_ids or ()), layers, raw, gif, out_uri, out_option="out_uri")
    request = EditRequest(folder.uri, p.out.uri, p.ckpt, p.specs, p.plan.strengths, layers, raw, gif,
                          tuple(p.plan.digests.items()))
    return EditJob(folder, p.out, p.method, p.rows, p.plan, request, p.missing)


def job_params(job: EditJob, batch_size: int | str) -> dict[str, object]:
    """The MLflow params of an edit request."""
    from gani_core.checkout import code_version

    r = job.request
    return {"run_uri": r.run_uri, "out_uri": r.out_uri, "method": job.method, "directions": ", ".join(r.directions),
            "strengths": " ".join(f"{s:g}" for s in r.strengths), "layers": r.layers, "raw": r.raw, "gif": r.gif,
            "batch_size": batch_size, "images": len(job.rows), "checkpoint": r.ckpt.spec,
            "checkpoint_sha256": r.ckpt.sha256, "code_version": code_version()}


# ------------------------------------------------------------------------------------------------------------------
# The fan-out


@dataclass
class EditBatch:
    """One task's work: images of one job, and the directions each of them is to get."""

    job: EditJob
    rows: list[dict]                # tasks.editing.task_rows of the run's rows
    todo: dict[str, list[str]]      # image_id -> direction names

    def missing(self) -> list[str]:
        return [image_id for image_id in self.todo if image_id in self.job.missing]

    def failed(self, error: str) -> list[dict]:
        """Its failed rows (a task that raised after its retry, or that Dask gave up on), one per image x direction
        x strength."""
        from gani_core.edit_runs import failed_rows

        plan = self.job.plan
        return [f for row in self.rows
                for f in failed_rows(row, [d for d in plan.directions if d.name in self.todo[row["image_id"]]],
                                      plan, error)]


def image_results(rows: Sequence[dict]) -> list[dict]:
    """One result per image x method of edit rows, in their order: ok when all its rows are, else failed with the
    first error (``direction: error``); what the progress lines and the final state count."""
    found: dict[tuple[str, str], dict] = {}
    for row in rows:
        result = found.setdefault((row["image_id"], row["method"]), {"image_id": row["image_id"],
                                                                     "method": row["method"], "status": "ok",
                                                                     "error": None})
        if row["status"] != "ok" and result["status"] == "ok":
            result.update(status="failed", error=f"{row['direction']}: {row['error']}")
    return list(found.values())


@flow(name="edit-images-on-dask", validate_parameters=False)
def edit_images_on_dask(work: Batches[EditBatch], batch_size: int | str = 1, gpu: bool = False,
                        window: int | None = None) -> list[list[dict]]:
    """One ``edit-images`` task per batch on this subflow's Dask task runner (built by the caller at call time), a
    window of them at a time (flows.window.submit_in_window, as invert-dataset's fan-out); each batch's rows, in
    the order of ``work``. A task that raised (after its retry), or that Dask gave up on (``KilledWorker``), gives
    failed rows here, written to its edits folder as a part (edits.parquet says why; a rerun computes them
    again)."""
    from flows.window import submit_in_window
    from tasks.editing import edit_on_worker
    from tasks.storage import storage_retries_logged

    logger = get_run_logger()

    def submit(b: EditBatch) -> PrefectFuture:
        return edit_on_worker.submit(b.rows, b.todo, b.job.request, batch_size, b.missing())

    def failed(b: EditBatch, error: str) -> list[dict]:
        rows = b.failed(error)
        with storage_retries_logged(logger):
            b.job.out.write_part(rows)
        return rows

    return submit_in_window(work, submit, failed, gpu, window, results=image_results)


@dataclass
class EditRun:
    """What :func:`edit_on_dask` did for one job."""

    rows: list[dict]        # the request's rows, kept and new, in image, direction, strength order
    images: list[dict]      # one result per image (image_results): ok when every edit of it is
    computed: int           # images edited now
    kept: int               # images whose every edit was kept from an earlier run
    wall_seconds: float     # of the fan-out (the jobs of one call share it)
    strips: dict[str, int]  # image x direction (a strip each), as gani edit counts them: written, kept, failed


def edit_on_dask(jobs: Sequence[EditJob], batch_size: int | str, cluster: ClusterSettings) -> list[EditRun]:
    """Each job's edits (one per method of a run, for the nightly benchmark), the pending ones computed on Dask:
    read what each edits folder holds (once per folder), keep what the resume rule keeps, fan the rest out in
    batches of ``batch_size`` images (one Dask cluster for all the jobs; none when nothing is pending), then write
    each folder's edits.parquet. Runs inside a flow."""
    from flows.cluster import api_url_for_workers, dask_task_runner
    from gani_core.edit_runs import pending
    from tasks.editing import write_edits_table
    from tasks.storage import storage_retries_logged

    logger = get_run_logger()
    per_task = AUTO_TASK_IMAGES if batch_size == "auto" else int(batch_size)
    folders = {job.out.uri: job.out for job in jobs}
    todos: list[dict[str, list[str]]] = []
    work: list[EditBatch] = []
    with storage_retries_logged(logger):
        stored = {uri: out.stored_rows() for uri, out in folders.items()}
        for job in jobs:
            todos.append(pending(stored[job.out.uri], job.rows, job.plan))
            work += _batches(job, todos[-1], per_task)
    for job, todo in zip(jobs, todos, strict=True):
        logger.info("%d image(s) [%s] x %d direction(s) of %s: %d kept from earlier runs, %d to edit", len(job.rows),
                    job.method, len(job.plan.directions), job.folder.uri, len(job.rows) - len(todo), len(todo))
    t0 = time.perf_counter()
    results: list[list[dict]] = []
    if work:
        with api_url_for_workers():
            runner = dask_task_runner(cluster, len(work))
            results = edit_images_on_dask.with_options(task_runner=runner)(Batches(work, size=_images), batch_size,
                                                                           cluster.gpu)
    wall = time.perf_counter() - t0
    for out in folders.values():
        write_edits_table(out)
    new: dict[int, list[dict]] = {}
    for batch, rows in zip(work, results, strict=True):
        new.setdefault(id(batch.job), []).extend(rows)
    return [_job_run(job, stored[job.out.uri], new.get(id(job), []), len(todo), wall)
            for job, todo in zip(jobs, todos, strict=True)]


def _images(batch: EditBatch) -> int:
    return len(batch.rows)


def _batches(job: EditJob, todo: dict[str, list[str]], per_task: int) -> list[EditBatch]:
    """The images of ``job`` that ``todo`` names, ``per_task`` per batch, in image order."""
    from gani_core.edit_runs import batches
    from tasks.editing import task_rows

    rows = task_rows([r for r in job.rows if r["image_id"] in todo])
    return [EditBatch(job, batch, {r["image_id"]: todo[r["image_id"]] for r in batch})
            for batch in batches(rows, per_task)]


def _job_run(job: EditJob, stored: dict, new: list[dict], computed: int, wall: float) -> EditRun:
    """The request's rows: for each image x direction, its new rows (a strip written, or failed), else those kept
    (the stored group)."""
    fresh: dict[tuple[str, str], list[dict]] = {}
    for row in new:
        fresh.setdefault((row["image_id"], row["direction"]), []).append(row)
    groups = [(fresh.get((row["image_id"], d.name)), stored.get((row["image_id"], job.method, d.name), []))
              for row in job.rows for d in job.plan.directions]
    rows = [r for made, kept in groups for r in made or kept]
    strips = dict.fromkeys(("written", "kept", "failed"), 0)
    for made, kept in groups:
        if made or kept:
            strips["kept" if not made else "written" if all(r["status"] == "ok" for r in made) else "failed"] += 1
    return EditRun(rows, image_results(rows), computed, len(job.rows) - computed, wall, strips)


def _check_shell(run_uri: str, directions: list[str] | None, strengths: list[float], method: str | None,
                 image_ids: list[str] | None = None, layers: str | None = None, raw: bool = False,
                 out_uri: str | None = None, gif: bool = False, **_: object) -> str:
    """The shell's checks, before Prefect starts: the flow's (check_inputs); the edits folder (what the Ctrl-C line
    names)."""
    job, _note = check_inputs(run_uri, directions, strengths, method, image_ids, layers, raw, out_uri, gif)
    return job.out.uri


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.edit_dataset``: the flow on the embedded defaults (a temporary Prefect API, a LocalCluster,
    a sqlite MLflow store in the run folder); says where everything went. Exit status: flows.cli.EXIT_STATUS."""
    return flow_main(edit_dataset, argv, check=_check_shell)


if __name__ == "__main__":
    raise SystemExit(main())
