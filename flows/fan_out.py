"""Inverting a dataset on Dask, the body both flows share: list the images, keep what the run folder already
holds (the resume rule of gani_core.run_folder), fan the rest out as ``invert-image`` tasks, write the tables."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import dask
from prefect import flow, get_run_logger

from flows.cluster import api_url_for_workers, dask_task_runner
from flows.parameters import ClusterSettings
from gani_core.checkpoints.ref import CheckpointRef
from gani_core.dataset import ImageSource
from gani_core.invert import InvertConfig
from gani_core.run_folder import RunFolder, failed_row, summarise
from tasks.inversion import invert_on_worker
from tasks.storage import list_images, reusable_rows, write_tables


@flow(name="invert-images", validate_parameters=False)
def invert_images_on_dask(work: list[tuple[ImageSource, InvertConfig]], ckpt: CheckpointRef, folder: RunFolder,
                          gpu: bool = False) -> list[dict]:
    """One ``invert-image`` task per (image, configuration) on this subflow's Dask task runner (built by the
    caller at call time); the rows in order. A task that raised (after its retry) becomes a failed row here,
    not written to ``rows/``, so that a rerun tries that image again."""
    # With gpu, every task asks the scheduler for one unit of the workers' `GPU` resource.
    with dask.annotate(resources={"GPU": 1}) if gpu else nullcontext():
        futures = [invert_on_worker.submit(image, cfg, ckpt, folder) for image, cfg in work]
    rows = []
    for (image, cfg), future in zip(work, futures, strict=True):
        result = future.result(raise_on_failure=False)
        if not isinstance(result, dict):
            result = failed_row(image.image_id, cfg, ckpt, f"{type(result).__name__}: {result}")
        rows.append(result)
    return rows


@dataclass
class DatasetRun:
    """What :func:`invert_dataset_on_dask` did."""

    rows: list[dict]            # one per image x method, in image order
    summary: dict               # as in summary.json
    written: dict[str, str]     # metrics.parquet, summary.json, preview_grid.png -> URI
    kept: set[tuple[str, str]]  # (image_id, method) of the results kept from an earlier run
    wall_seconds: float         # of the fan-out


def invert_dataset_on_dask(input_uri: str, folder: RunFolder, ckpt: CheckpointRef, configs: dict[str, InvertConfig],
                           cluster: ClusterSettings, limit: int | None, **summary_extra: object) -> DatasetRun:
    """Every image under ``input_uri`` x every configuration into ``folder``; runs inside a flow."""
    logger = get_run_logger()
    started = time.time()
    images = list_images(input_uri, limit)
    kept = reusable_rows(folder, images, {m: c.config_hash() for m, c in configs.items()}, ckpt.sha256)
    work = [(image, cfg) for image in images for m, cfg in configs.items() if (image.image_id, m) not in kept]
    logger.info("%d image(s) x %s under %s: %d result(s) kept from earlier runs, %d to compute",
                len(images), ", ".join(configs), input_uri, len(kept), len(work))
    t0 = time.perf_counter()
    new: dict[tuple[str, str], dict] = {}
    if work:
        with api_url_for_workers():
            runner = dask_task_runner(cluster, len(work))
            computed = invert_images_on_dask.with_options(task_runner=runner)(work, ckpt, folder, cluster.gpu)
        new = {(r["image_id"], r["method"]): r for r in computed}
    wall = time.perf_counter() - t0
    rows = [kept.get((image.image_id, m)) or new[(image.image_id, m)] for image in images for m in configs]
    summary = summarise(rows, configs, ckpt, folder.uri, started, input_uri=input_uri, skipped=len(kept),
                        computed=len(work), wall_seconds=wall, **summary_extra)
    written = write_tables(folder, rows, summary)
    if summary["failed"]:
        failures = "; ".join(f"{r['image_id']} [{r['method']}]: {r['error']}" for r in rows if r["status"] != "ok")
        logger.warning("partial success: %d of %d result(s) failed: %s", summary["failed"], len(rows), failures)
    return DatasetRun(rows, summary, written, set(kept), wall)
