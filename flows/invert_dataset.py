"""The ``invert-dataset`` flow: every image under a folder or S3 prefix, one Dask task per image.

    invert_dataset(input_uri="s3://photos/in", output_uri="s3://photos/runs/r1", checkpoint="s3://models/ffhq.pkl")

Steps: list the images; keep the results already under ``output_uri`` for the same image, checkpoint and
method configuration (tasks/storage.py: a rerun after a crash does the rest, a finished run nothing); run the
others as ``invert-image`` tasks on Dask (the ``invert-images`` subflow, whose task runner is built from the
parameters at call time); write ``metrics.parquet``, ``summary.json`` and ``preview_grid.png``; log the MLflow
run (tasks/tracking.py); attach a table and a summary to the flow run as Prefect artifacts.
"""

from __future__ import annotations

import os
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import dask
import psutil
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_dask import DaskTaskRunner

import gani_core
from gani_core import storage
from gani_core.invert import InvertConfig, method_config
from gani_core.runs import RunContext, failed_row, summarise
from tasks import tracking
from tasks.inversion import TORCH_THREADS_ENV, checkpoint_info, invert_image
from tasks.storage import ImageRef, existing_results, list_images, write_tables

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "shapes"    # held-out images of the built-in generator's domain
WORKER_MEMORY_GB = 3.0      # a CPU worker's generator, LPIPS (alex + vgg) and one image's optimisation


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_n_workers(gpu: bool) -> int:
    """LocalCluster size: one worker per GPU; on CPUs one worker per core, as many as the memory holds."""
    if gpu:
        import torch

        return max(1, torch.cuda.device_count())
    return max(1, min(available_cores(), int(psutil.virtual_memory().total / 2**30 / WORKER_MEMORY_GB)))


def worker_torch_threads(n_workers: int) -> int:
    """Torch threads of each CPU worker of a LocalCluster of ``n_workers``: ``$GANI_TORCH_THREADS`` when set,
    else the worker's share of the cores (one task thread per worker; fewer workers than cores, as for a small
    run, get more threads each instead of leaving cores idle)."""
    given = os.environ.get(TORCH_THREADS_ENV, "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    return max(1, available_cores() // max(n_workers, 1))


def api_url_for_workers() -> AbstractContextManager:
    """Where the Dask tasks report to: this flow's Prefect API, also when it is the temporary local one.

    Tasks carry the flow's Prefect settings to the workers. On the temporary API ``PREFECT_API_URL`` is unset,
    and every worker of an external cluster (``dask_address``) would start a temporary API of its own (seen:
    about 15-20 s on its first task, and its task runs and logs kept there, not in the flow's API). Setting the
    URL while the tasks are submitted sends them to the flow's API; with a server it is set already."""
    if PREFECT_API_URL.value():
        return nullcontext()
    return temporary_settings({PREFECT_API_URL: str(get_client(sync_client=True).api_url).rstrip("/")})


def dask_task_runner(dask_address: str | None, n_workers: int | None, gpu: bool, tasks: int) -> DaskTaskRunner:
    """The task runner of one flow run: the scheduler at ``dask_address``, else a LocalCluster for this run.

    With ``gpu`` and no address: dask-cuda's LocalCUDACluster when installed (one worker pinned to each GPU),
    else a LocalCluster; either way every worker offers one ``GPU`` resource, which each task asks for.
    """
    if dask_address:
        return DaskTaskRunner(address=dask_address)
    n = min(n_workers or default_n_workers(gpu), max(tasks, 1))   # no idle workers to start for a small run
    # Workers report task runs to this flow's Prefect API (without it, each worker process would start a
    # temporary API of its own when the flow runs on the ephemeral one).
    env = {"PREFECT_API_URL": str(get_client(sync_client=True).api_url).rstrip("/")}
    if not gpu:     # tasks/inversion.py sets it in each worker (Dask's nanny starts workers with 1 thread)
        env[TORCH_THREADS_ENV] = str(worker_torch_threads(n))
    kwargs: dict = {"n_workers": n, "threads_per_worker": 1, "processes": True, "dashboard_address": ":0",
                    "env": env}
    cluster_class = "distributed.LocalCluster"
    if gpu:
        kwargs["resources"] = {"GPU": 1}
        try:
            import dask_cuda  # noqa: F401

            cluster_class = "dask_cuda.LocalCUDACluster"
        except ImportError:
            pass
    return DaskTaskRunner(cluster_class=cluster_class, cluster_kwargs=kwargs)


@flow(name="invert-images", validate_parameters=False)
def invert_images(work: list[tuple[ImageRef, InvertConfig]], checkpoint: str, checkpoint_sha256: str, out: str,
                  gpu: bool = False) -> list[dict]:
    """One ``invert-image`` task per (image, configuration) on this flow's Dask task runner; the rows in order.

    A task that raised (after its retry) becomes a failed row here, not written to ``rows/``, so that a rerun
    tries that image again.
    """
    # With gpu, every task asks the scheduler for one unit of the workers' `GPU` resource.
    with dask.annotate(resources={"GPU": 1}) if gpu else nullcontext():
        futures = [invert_image.submit(ref.source, ref.image_id, cfg, checkpoint, checkpoint_sha256, out)
                   for ref, cfg in work]
    rows = []
    for (ref, cfg), future in zip(work, futures, strict=True):
        result = future.result(raise_on_failure=False)
        if not isinstance(result, dict):
            result = {**failed_row(ref.image_id, cfg.method, None, f"{type(result).__name__}: {result}"),
                      "checkpoint": checkpoint, "checkpoint_sha256": checkpoint_sha256,
                      "config_hash": cfg.config_hash(), "seed": cfg.seed, "gani_version": gani_core.__version__}
        rows.append(result)
    return rows


@dataclass
class Inversions:
    """What :func:`run_inversions` did: the run's rows (kept and new), its summary and the files written."""

    ctx: RunContext
    configs: dict[str, InvertConfig]
    rows: list[dict]            # one per image x method, in image order
    summary: dict
    written: dict[str, str]     # metrics.parquet, summary.json, preview_grid.png -> URI
    kept: set[tuple[str, str]]  # (image_id, method) of the results kept from an earlier run
    skipped: int                # how many: len(kept)
    computed: int               # results computed now
    wall_seconds: float         # of the fan-out


def run_inversions(input_uri: str, output_uri: str, checkpoint: str, configs: dict[str, InvertConfig],
                   dask_address: str | None, n_workers: int | None, gpu: bool, limit: int | None,
                   extra_summary: dict | None = None) -> Inversions:
    """The body of invert-dataset (shared with nightly-benchmark): runs inside a flow."""
    logger = get_run_logger()
    started = time.time()
    out = output_uri.rstrip("/")
    images = list_images(input_uri, limit)
    ckpt = checkpoint_info(checkpoint)
    kept = existing_results(out, images, {m: c.config_hash() for m, c in configs.items()}, ckpt.sha256)
    work = [(ref, cfg) for ref in images for m, cfg in configs.items() if (ref.image_id, m) not in kept]
    logger.info("%d image(s) x %s under %s: %d result(s) kept from earlier runs, %d to compute",
                len(images), ", ".join(configs), input_uri, len(kept), len(work))
    t0 = time.perf_counter()
    new: dict[tuple[str, str], dict] = {}
    if work:
        with api_url_for_workers():
            runner = dask_task_runner(dask_address, n_workers, gpu, len(work))
            computed = invert_images.with_options(task_runner=runner)(work, ckpt.spec, ckpt.sha256, out, gpu)
        new = {(r["image_id"], r["method"]): r for r in computed}
    wall = time.perf_counter() - t0
    rows = [kept.get((ref.image_id, m)) or new[(ref.image_id, m)] for ref in images for m in configs]
    devices = sorted({r["device"] for r in new.values() if r.get("device")}) or ["none"]
    ctx = RunContext(out=out, checkpoint=checkpoint, checkpoint_sha256=ckpt.sha256, generator_label=ckpt.label,
                     device=",".join(devices))
    summary = summarise(rows, ctx, configs, started)
    summary.update(input_uri=input_uri, rows=len(rows), ok=sum(r["status"] == "ok" for r in rows),
                   skipped=len(kept), computed=len(work), wall_seconds=wall, **(extra_summary or {}))
    written = write_tables(ctx, rows, summary)
    if summary["failed"]:
        failures = "; ".join(f"{r['image_id']} [{r['method']}]: {r['error']}" for r in rows if r["status"] != "ok")
        logger.warning("partial success: %d of %d result(s) failed: %s", summary["failed"], len(rows), failures)
    return Inversions(ctx, configs, rows, summary, written, set(kept), len(kept), len(work), wall)


TABLE_COLUMNS = ("image_id", "method", "status", "lpips", "psnr", "ms_ssim", "locality", "edit_consistency",
                 "seconds", "delta_bytes", "error")


def rows_artifact(rows: list[dict], key: str, description: str) -> None:
    def fmt(v: object) -> object:
        return round(v, 4) if isinstance(v, float) else v

    create_table_artifact(key=key, table=[{c: fmt(r.get(c)) for c in TABLE_COLUMNS} for r in rows],
                          description=description)


@flow(name="invert-dataset")
def invert_dataset(
    input_uri: str = str(EXAMPLES),
    output_uri: str = str(REPO / "out" / "invert-dataset"),
    checkpoint: str = "builtin",
    method: str = "gani",
    pivot_steps: int = 450,
    tune_steps: int = 350,
    seed: int = 0,
    dask_address: str | None = None,
    n_workers: int | None = None,
    gpu: bool = False,
    mlflow_tracking_uri: str | None = None,
    limit: int | None = None,
) -> dict:
    """Invert every image under ``input_uri`` into the generator ``checkpoint``, one Dask task per image.

    Args:
        input_uri: folder or ``s3://bucket/prefix`` holding the images (jpg, png, webp, bmp, tif, gif; searched
            recursively, sorted by path).
        output_uri: folder or ``s3://bucket/prefix`` for metrics.parquet, deltas/, previews/, rows/, summary.json
            and preview_grid.png. Results already there for the same image, checkpoint and configuration are kept.
        checkpoint: generator: ``builtin`` (trained, 64 px) / ``builtin-random:RES`` (seeded, untrained), a local
            path or an ``s3://`` URI of an NVIDIA .pkl, a rosinality .pt or a gani .safetensors.
        method: ``gani``, or a baseline: ``pti``, ``wplus``, ``w``.
        pivot_steps: steps of the pivot inversion (PTI's 450 by default).
        tune_steps: steps of the generator tuning (350 by default; unused by ``wplus`` and ``w``).
        seed: seed of the pivot noise, the tuning and the probe latents and edit directions.
        dask_address: scheduler of an existing Dask cluster (``tcp://host:8786``); none starts a LocalCluster
            sized to this machine for the run.
        n_workers: workers of that LocalCluster (default: one per core as memory allows, or one per GPU).
        gpu: workers have GPUs: each task asks for one ``GPU`` worker resource.
        mlflow_tracking_uri: MLflow tracking URI; none: ``$MLFLOW_TRACKING_URI``, else a sqlite store
            ``mlflow.db`` in ``output_uri`` (in ``<repo>/out`` when the output is not a local folder).
        limit: invert only the first ``limit`` images (after sorting); none: all.

    Returns:
        The run's summary (as in summary.json): counts ``images``, ``ok``, ``failed``, ``skipped``, ``computed``,
        means per method, the MLflow run id and tracking URI, the URIs written.
    """
    logger = get_run_logger()
    cfg = method_config(method, pivot_steps, tune_steps, seed=seed)
    uri = tracking.tracking_uri(mlflow_tracking_uri, output_uri)
    run_id = tracking.start_run(uri, "invert-dataset", run_name=flow_run.get_name() or "invert-dataset",
                                tags={"prefect_flow_run_id": str(flow_run.get_id()), "dataset_uri": input_uri,
                                      "method": method})
    try:
        result = run_inversions(input_uri, output_uri, checkpoint, {method: cfg}, dask_address, n_workers, gpu,
                                limit, extra_summary={"mlflow_run_id": run_id, "mlflow_tracking_uri": uri})
        params = {**tracking.config_params(cfg), "checkpoint": checkpoint,
                  "checkpoint_sha256": result.ctx.checkpoint_sha256, "generator_label": result.ctx.generator_label,
                  "dataset_uri": input_uri, "output_uri": result.ctx.out, "limit": limit,
                  "code_version": tracking.code_version()}
        metrics = tracking.aggregate(result.rows, result.skipped, result.wall_seconds, result.computed)
        tracking.log_results(uri, run_id, params, metrics, artifacts=result.written.values())
    except BaseException:
        tracking.end_run(uri, run_id, ok=False)
        raise
    tracking.end_run(uri, run_id)
    s = result.summary
    rows_artifact(result.rows, "invert-dataset-metrics", f"{method} on {input_uri}: one row per image")
    create_markdown_artifact(
        key="invert-dataset-summary",
        markdown=(f"# invert-dataset: {method}\n\n| | |\n|---|---|\n| input | `{input_uri}` |\n"
                  f"| output | `{result.ctx.out}` |\n| generator | {result.ctx.generator_label} |\n"
                  f"| images | {s['images']} |\n| ok | {s['ok']} |\n| failed | {s['failed']} |\n"
                  f"| skipped (kept) | {s['skipped']} |\n| lpips (mean) | {metrics.get('lpips_mean', '-')} |\n"
                  f"| MLflow run | `{run_id}` at `{uri}` |\n"),
        description="invert-dataset summary")
    logger.info("wrote %s: %d ok, %d failed, %d kept from earlier runs; MLflow run %s (%s)",
                storage.join(result.ctx.out, "metrics.parquet"), s["ok"], s["failed"], s["skipped"], run_id, uri)
    return {**s, "written": result.written}


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.invert_dataset``: run the flow on the embedded defaults (ephemeral Prefect API,
    a LocalCluster, local folders, a sqlite MLflow store) and say where everything went."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m flows.invert_dataset", description=main.__doc__)
    parser.add_argument("--input-uri", default=str(EXAMPLES))
    parser.add_argument("--output-uri", default=str(REPO / "out" / "invert-dataset"))
    parser.add_argument("--checkpoint", default="builtin")
    parser.add_argument("--method", default="gani", choices=["gani", "pti", "wplus", "w"])
    parser.add_argument("--pivot-steps", type=int, default=450)
    parser.add_argument("--tune-steps", type=int, default=350)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dask-address", default=None)
    parser.add_argument("--n-workers", type=int, default=None)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--mlflow-tracking-uri", default=None)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    summary = invert_dataset(**{k: v for k, v in vars(args).items()})
    out = summary["written"]
    print(json.dumps({k: summary[k] for k in ("images", "ok", "failed", "skipped", "computed")}))
    print(f"tables: {out.get('metrics.parquet')} and {out.get('summary.json')}; previews under "
          f"{storage.join(summary['output'], 'previews')}; see them with: .venv/bin/gani show {summary['output']}")
    mlflow_uri = summary["mlflow_tracking_uri"]
    print(f"MLflow run {summary['mlflow_run_id']}: open the UI with "
          f".venv/bin/mlflow ui --backend-store-uri {mlflow_uri} --host 127.0.0.1 --port 5000")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
