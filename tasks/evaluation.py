"""The domain-inversion benchmark's task (one set at one seed on a Dask worker) and its MLflow runs.

A task's rows are saved to the night's ``parts/`` folder as soon as they are computed, so that a rerun of the
flow (after a lost worker or a killed flow) computes only the (set, seed) pairs still missing.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from gani_core import storage
from gani_core.checkpoints.ref import CheckpointRef
from gani_core.evaluation.evaluate import evaluate_set
from gani_core.evaluation.report import HEADLINE, headline
from gani_core.evaluation.stats import POOLED
from gani_core.evaluation.suites import Suite, set_images
from gani_core.metric_registry import METRICS, names
from tasks import mlflow_runs
from tasks.inversion import prepare_worker_process, worker_device, worker_generator
from tasks.mlflow_view import group_by_tag, runs_view, view_columns
from tasks.storage import storage_retries_logged

# What a child run logs: each curve metric at every budget (``curve_lpips``, the budget as its step), and at the
# final budget the curve metrics and those only the benchmark computes (drift), with their interval bounds.
CURVE_METRICS = names("curve")
FINAL_METRICS = (*CURVE_METRICS, *(n for n in names("benchmark") if METRICS[n].computed == "benchmark"))
# The experiment's saved runs-table view: first the parent run's headline comparisons (gani over pti and pti-reg
# on every goal, pooled out of the domain, with intervals: report.headline, logged as tags by log_headline), then
# the child runs' method, set and the headline metrics among FINAL_METRICS.
VIEW_METRICS = (*(n for n in names("headline") if n in FINAL_METRICS), "images", "failed")
RUNS_VIEW_COLUMNS = view_columns(tags=(*HEADLINE, "method", "set"), metrics=VIEW_METRICS)
# The view of the latest flow run alone (the flow writes it after each run, tasks.mlflow_view.runs_url(ID,
# view=LATEST_VIEW)): its runs pooled out of the domain, grouped by method, one row per method with its means,
# then the parent's row with the headline comparisons.
LATEST_VIEW = "gani-latest"
LATEST_VIEW_COLUMNS = (*view_columns(metrics=VIEW_METRICS), *view_columns(tags=HEADLINE))


@task(name="evaluate-set", task_run_name="evaluate-{set_name}-seed{seed}", retries=1, cache_policy=NO_CACHE)
def evaluate_set_on_worker(set_name: str, seed: int, suite: Suite, split: str, ckpt: CheckpointRef, part_uri: str,
                           photos_dir: str, batch_size: int = 8) -> list[dict]:
    """Every method of ``suite`` on set ``set_name`` at ``seed``; the rows, also written to ``part_uri`` (JSON).
    When ``part_uri`` exists already (an earlier run), its rows are returned without computing anything."""
    logger = get_run_logger()
    with storage_retries_logged(logger):
        if storage.exists(part_uri):
            logger.info("%s seed %d: kept from %s", set_name, seed, part_uri)
            return json.loads(storage.read_bytes(part_uri))
        process = prepare_worker_process()
        G = worker_generator(ckpt, worker_device())
        images, ids, _ = set_images(set_name, suite.count, G.img_resolution, split, photos_dir)
        started = time.perf_counter()
        rows = evaluate_set(G, images, ids, set_name, suite, seed, batch_size, log=logger.info)
        storage.write_bytes(part_uri, json.dumps(rows).encode())
    failed = sum(r["status"] != "ok" for r in rows)
    logger.info("%s seed %d: %d rows (%d failed) in %.0f s, %d torch thread(s)", set_name, seed, len(rows), failed,
                time.perf_counter() - started, process["torch_threads"])
    return rows


def log_child_runs(uri: str, experiment_id: str, parent: str, summary: list[dict], budget: int,
                   tags: dict[str, str]) -> dict[str, str]:
    """One child run of ``parent`` per (method, set): the means of FINAL_METRICS (and their interval bounds,
    ``lpips_lo``, ``lpips_hi``) at ``budget`` (the pivot-only methods: at budget 0) as metrics, and each of
    CURVE_METRICS with its budget as the step (``curve_lpips``), so that MLflow's charts draw the curves. Returns
    {"method/set": run id}."""
    client = MlflowClient(tracking_uri=uri)
    children: dict[str, str] = {}
    for method, set_name in dict.fromkeys((r["method"], r["set"]) for r in summary):
        points = sorted((r for r in summary if r["method"] == method and r["set"] == set_name),
                        key=lambda r: r["budget"])
        final = next((r for r in points if r["budget"] in (budget, 0)), points[-1])
        run_id = mlflow_runs.start_run(uri, experiment_id, run_name=f"{method}-{set_name}",
                                       tags={**tags, "method": method, "set": set_name}, parent_run_id=parent)
        now = int(time.time() * 1000)
        metrics = [Metric(f"{name}{suffix}", float(final[f"{name}{suffix}"]), now, 0)
                   for name in FINAL_METRICS for suffix in ("", "_lo", "_hi")
                   if _finite(final.get(f"{name}{suffix}"))]
        metrics += [Metric("images", float(final["images"]), now, 0), Metric("failed", float(final["failed"]), now, 0)]
        metrics += [Metric(f"curve_{name}", float(p[name]), now, p["budget"]) for p in points for name in CURVE_METRICS
                    if _finite(p.get(name))]
        client.log_batch(run_id, metrics=metrics, params=[Param("method", method), Param("set", set_name),
                                                          Param("budget", str(final["budget"]))])
        client.set_terminated(run_id, "FINISHED")
        children[f"{method}/{set_name}"] = run_id
    return children


def log_headline(uri: str, run_id: str, goals: list[dict]) -> dict[str, str]:
    """Tag the parent run ``run_id`` with the goals pooled out of the domain, one tag each (report.headline: the
    value, its interval, the target and whether it is met, under a short name such as ``lpips gani/pti equal
    time``), so that the runs table shows the comparison on the parent's own row, and with ``set``
    ``all-out-of-domain`` (the set those are on: the latest view filters on it). Returns the tags."""
    tags = headline(goals)
    if tags:
        tags["set"] = POOLED
        MlflowClient(tracking_uri=uri).log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    return tags


def save_latest_view(uri: str, experiment_id: str, experiment: str, flow_run_id: str, run_name: str,
                     methods: Iterable[str]) -> str:
    """Save (over the last one) the view :data:`LATEST_VIEW` of the runs of the Prefect flow run ``flow_run_id``
    pooled out of the domain: grouped by method, one collapsed row per method of ``methods`` (the means of its
    child run), the parent run below them ("Additional runs", expanded). Returns the view's key."""
    state = {"searchFilter": f"tags.prefect_flow_run_id = '{flow_run_id}' and tags.set = '{POOLED}'",
             "orderByKey": "attributes.start_time", "orderByAsc": True,
             **group_by_tag("method", {**{m: False for m in methods}, None: True})}
    key, value = runs_view(experiment, LATEST_VIEW_COLUMNS, key=LATEST_VIEW, name=f"gani: {run_name} by method",
                           **state)
    MlflowClient(tracking_uri=uri).set_experiment_tag(experiment_id, key, value)
    return LATEST_VIEW


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
