"""The ``domain-benchmark`` flow: a suite of the domain-inversion benchmark on Dask, reported in MLflow.

One ``evaluate-set`` task per (set, seed) of the suite (gani_core/evaluation/suites.py) on the flow's Dask
cluster; the report (gani_core/evaluation/report.py: tables, goals, curves) goes to ``OUTPUT/DATE/SUITE-SPLIT/``;
MLflow gets a parent run ``domain-SUITE-SPLIT-DATE`` in the experiment ``domain-benchmark`` with the goals as
metrics, the headline comparison pooled out of the domain as tags its row in the runs table shows (gani over pti
and pti-reg per goal, with the interval: report.headline), and the report as artifacts, and a child run per
method and set whose charts draw the curves; the saved view ``gani-latest`` shows this run alone, one row per
method (tasks/evaluation.save_latest_view).
A rerun on the same date keeps the (set, seed) pairs already computed. The nightly deployment runs it
(``nightly-benchmark``'s ``suite``); ``python -m flows.domain_benchmark --suite smoke`` runs it once.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.futures import as_completed

from flows.cli import run_flow_from_shell
from flows.cluster import api_url_for_workers, dask_task_runner, release_future
from flows.parameters import ClusterSettings
from gani_core import storage
from gani_core.checkout import LOCAL_OUT, PHOTO_EXAMPLES
from gani_core.checkpoints.ref import CheckpointRef, resolve_checkpoint
from gani_core.evaluation.report import write_report
from gani_core.evaluation.suites import SUITES, Suite, get_suite
from tasks import evaluation, mlflow_runs
from tasks.evaluation import evaluate_set_on_worker, log_child_runs, log_headline, save_latest_view
from tasks.mlflow_view import RUNS_VIEW

SuiteName = Literal[tuple(SUITES)]  # type: ignore[valid-type]


@flow(name="evaluate-sets-on-dask", validate_parameters=False)
def evaluate_sets_on_dask(suite: Suite, split: str, ckpt: CheckpointRef, parts: str, batch_size: int) -> list[dict]:
    """One ``evaluate-set`` task per (set, seed) on this subflow's Dask task runner; every row. A task that failed
    (after its retry) gives one failed row per method, so that the report says which pairs are missing."""
    work = [(s, seed) for s in suite.sets for seed in suite.seeds]
    futures = {evaluate_set_on_worker.submit(s, seed, suite, split, ckpt, storage.join(parts, f"{s}-seed{seed}.json"),
                                             str(PHOTO_EXAMPLES), batch_size): (s, seed) for s, seed in work}
    logger = get_run_logger()
    rows: list[dict] = []
    for done, future in enumerate(as_completed(list(futures)), start=1):
        set_name, seed = futures[future]
        result = future.result(raise_on_failure=False)
        release_future(future)
        if isinstance(result, list):
            rows += result
            logger.info("%d/%d %s seed %d: %d rows", done, len(work), set_name, seed, len(result))
        else:
            logger.warning("%d/%d %s seed %d failed: %s", done, len(work), set_name, seed, result)
            rows += [{"set": set_name, "seed": seed, "image_id": "*", "method": m, "budget": 0, "status": "failed",
                      "error": f"{type(result).__name__}: {result}"} for m in suite.methods]
    return rows


@flow(name="domain-benchmark")
def domain_benchmark(
    suite: SuiteName = "smoke",
    split: Literal["dev", "test"] = "test",
    output_uri: str = str(LOCAL_OUT / "domain-benchmark"),
    checkpoint: str = "builtin",
    date: str | None = None,
    batch_size: int = 8,
    cluster: ClusterSettings = ClusterSettings(),  # noqa: B008 (frozen: a default never mutated)
    mlflow_tracking_uri: str | None = None,
) -> dict:
    """Run a suite of the domain-inversion benchmark: every method on images the generator cannot render.

    Args:
        suite: ``smoke`` (minutes: the wiring), ``session`` (about an hour on a 2-core CPU), ``cpu-night`` (a night
            on a CPU), ``full`` (every method and GMM form, 24 images per set, three seeds: a GPU worker).
        split: ``test`` (what is reported) or ``dev`` (to choose defaults on).
        output_uri: folder or ``s3://`` prefix; the report goes to ``OUTPUT/DATE/SUITE-SPLIT/``.
        checkpoint: the generator (``builtin``: the shapes sets are made for it).
        date: the run's date, ``YYYY-MM-DD`` (default: today, UTC); a rerun on the same date keeps what is done.
        batch_size: images inverted together on a worker.
        cluster: an existing Dask scheduler, or the size of the LocalCluster started for the run.
        mlflow_tracking_uri: MLflow tracking URI; none: ``$MLFLOW_TRACKING_URI``, else a sqlite store
            ``OUTPUT/mlflow.db`` (``<repo>/out/mlflow.db`` when the output is not a local folder).

    Returns:
        rows, failed, ok (no row failed), the goals, the report's folder and the URIs written, the MLflow parent
        and child run ids, the tracking URI and experiment id.
    """
    spec = get_suite(suite)
    ckpt = resolve_checkpoint(checkpoint)
    day = date or dt.datetime.now(dt.UTC).date().isoformat()
    out = storage.join(output_uri.rstrip("/"), day, f"{suite}-{split}")
    tags = {"date": day, "suite": suite, "split": split, "checkpoint": checkpoint}
    with mlflow_runs.tracked_run("domain-benchmark", f"domain-{suite}-{split}-{day}",
                                 mlflow_tracking_uri=mlflow_tracking_uri, data_folder=output_uri, output_uri=out,
                                 tags=tags, columns=evaluation.RUNS_VIEW_COLUMNS) as mlflow:
        with api_url_for_workers():
            runner = dask_task_runner(cluster, len(spec.sets) * len(spec.seeds))
            rows = evaluate_sets_on_dask.with_options(task_runner=runner)(spec, split, ckpt,
                                                                          storage.join(out, "parts"), batch_size)
        header = f"`domain-benchmark` flow, suite {suite}, {split} split, checkpoint {checkpoint}, {day}."
        report = write_report(rows, out, spec, split, header)
        written, goals = report.written, report.goals
        children = log_child_runs(mlflow.uri, mlflow.experiment_id, mlflow.run_id, report.summary, spec.budgets[-1],
                                  mlflow.tags)
        headline = log_headline(mlflow.uri, mlflow.run_id, goals)
        latest = save_latest_view(mlflow.uri, mlflow.experiment_id, "domain-benchmark",
                                  mlflow.tags["prefect_flow_run_id"], f"domain-{suite}-{split}-{day}", spec.methods)
        failed = sum(r["status"] != "ok" for r in rows)
        metrics = {"rows": len(rows), "failed": failed,
                   **{_metric_name(g["goal"], g["set"]): g["value"] for g in goals}}
        params = {"suite": suite, "split": split, "checkpoint": checkpoint, "checkpoint_sha256": ckpt.sha256,
                  "sets": ",".join(spec.sets), "methods": ",".join(spec.methods), "count": spec.count,
                  "seeds": ",".join(map(str, spec.seeds)), "budgets": ",".join(map(str, spec.budgets)),
                  "pivot_steps": spec.pivot_steps, "batch_size": batch_size, "output_uri": out}
        mlflow_runs.log_results(mlflow.uri, mlflow.run_id, params, metrics, artifacts=list(written.values()))
    create_markdown_artifact(key="domain-benchmark-report", markdown=storage.read_bytes(written["report.md"]).decode(),
                             description=f"domain-benchmark {suite} ({split}) {day}: goals, comparisons, means")
    met = sum(g["met"] for g in goals)
    get_run_logger().info("domain-benchmark %s (%s): %d rows, %d failed; goals met %d of %d; report at %s", suite,
                          split, len(rows), failed, met, len(goals), written["report.md"])
    return {"rows": len(rows), "failed": failed, "goals": goals, "headline": headline, "written": written,
            "output": out, "mlflow_run_id": mlflow.run_id, "mlflow_child_run_ids": children,
            "mlflow_tracking_uri": mlflow.uri, "mlflow_experiment_id": mlflow.experiment_id,
            "mlflow_views": {"all runs": RUNS_VIEW, "this run by method": latest}, "ok": failed == 0}


def _metric_name(goal: str, set_name: str) -> str:
    """An MLflow metric name for a goal on a set: ``goal_lpips_at_equal_time__disc``."""
    head = re.sub(r"[^a-z0-9]+", "_", goal.split(",")[0].lower()).strip("_")
    return f"goal_{head}__{re.sub(r'[^a-z0-9-]+', '_', set_name)}"


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.domain_benchmark``: one suite on the embedded defaults."""
    summary = run_flow_from_shell(domain_benchmark, argv)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
