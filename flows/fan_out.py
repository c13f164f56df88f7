"""Inverting a dataset on Dask, the body invert-dataset and nightly-benchmark share: keep what the run folder
already holds (the resume rule of gani_core.run_folder), fan the rest out as ``invert-images`` tasks (a batch of
images each), write the tables (every valid result of the folder, the earlier runs' included)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture

from flows.cluster import api_url_for_workers, dask_task_runner
from flows.parameters import ClusterSettings, InversionSettings
from flows.window import Batches, submit_in_window
from gani_core.checkpoints.ref import CheckpointRef
from gani_core.dataset import ImageSource
from gani_core.invert import InvertConfig
from gani_core.run_folder import RunFolder, failed_row
from tasks.inversion import invert_on_worker
from tasks.storage import reusable_rows, storage_retries_logged, write_tables


@flow(name="invert-images-on-dask", validate_parameters=False)
def invert_images_on_dask(work: Batches[tuple[list[ImageSource], InvertConfig]], ckpt: CheckpointRef,
                          folder: RunFolder, batch_size: int | str = 1, gpu: bool = False,
                          window: int | None = None) -> list[dict]:
    """One ``invert-images`` task per (batch of images, configuration) on this subflow's Dask task runner (built
    by the caller at call time), a window of them at a time (flows.window.submit_in_window: progress at a cadence,
    each result released once read); the rows, batch after batch. A task that raised (after its retry), or that Dask
    gave up on (``KilledWorker``), gives failed rows here, not written to ``rows/``, so that a rerun tries those
    images again."""
    def submit(batch: tuple[list[ImageSource], InvertConfig]) -> PrefectFuture:
        return invert_on_worker.submit(*batch, ckpt, folder, batch_size)

    def failed(batch: tuple[list[ImageSource], InvertConfig], error: str) -> list[dict]:
        images, cfg = batch
        return [failed_row(image.image_id, cfg, ckpt, error, source=image.source_path) for image in images]

    return [row for rows in submit_in_window(work, submit, failed, gpu, window) for row in rows]


@dataclass
class DatasetRun:
    """What :func:`invert_dataset_on_dask` did."""

    rows: list[dict]            # this run's: one per image x method, in image order
    summary: dict               # as in summary.json (the tables: every valid result in the folder)
    written: dict[str, str]     # metrics.parquet, summary.json, preview_grid.png -> URI
    kept: set[tuple[str, str]]  # (image_id, method) of the results kept from an earlier run
    wall_seconds: float         # of the fan-out


def invert_dataset_on_dask(input_uri: str, images: list[ImageSource], folder: RunFolder, ckpt: CheckpointRef,
                           configs: dict[str, InvertConfig], settings: InversionSettings, cluster: ClusterSettings,
                           **summary_extra: object) -> DatasetRun:
    """Every image (listed under ``input_uri`` by the flow, tasks.storage.list_images) x every configuration into
    ``folder``, ``settings.images_per_task()`` images per task; runs inside a flow."""
    logger = get_run_logger()
    started = time.time()
    with storage_retries_logged(logger):
        folder.write_configs(configs.values())
    images, kept = reusable_rows(folder, images, {m: c.resume_hashes() for m, c in configs.items()}, ckpt.sha256)
    per_task = settings.images_per_task()
    work = []
    for m, cfg in configs.items():
        todo = [image for image in images if (image.image_id, m) not in kept]
        work += [(todo[i : i + per_task], cfg) for i in range(0, len(todo), per_task)]
    computed = sum(len(batch) for batch, _ in work)
    logger.info("%d image(s) x %s under %s: %d result(s) kept from earlier runs, %d to compute in %d task(s)",
                len(images), ", ".join(configs), input_uri, len(kept), computed, len(work))
    t0 = time.perf_counter()
    new: dict[tuple[str, str], dict] = {}
    if work:
        with api_url_for_workers():
            runner = dask_task_runner(cluster, len(work))
            new_rows = invert_images_on_dask.with_options(task_runner=runner)(Batches(work), ckpt, folder,
                                                                              settings.batch_size, cluster.gpu)
        new = {(r["image_id"], r["method"]): r for r in new_rows}
    wall = time.perf_counter() - t0
    rows = [kept.get((image.image_id, m)) or new[(image.image_id, m)] for image in images for m in configs]
    summary, written = write_tables(folder, rows, configs, ckpt, started, {
        "input_uri": input_uri, "skipped": len(kept), "computed": computed, "wall_seconds": wall,
        "batch_size": settings.batch_size, **summary_extra})
    for note in summary["notes"]:       # once per run: the workers leave it to the flow (gani_core.invert_files)
        logger.info("%s", note)
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        failures = "; ".join(f"{r['image_id']} [{r['method']}]: {r['error']}" for r in failed)
        logger.warning("%d of %d result(s) failed: %s", len(failed), len(rows), failures)
    return DatasetRun(rows, summary, written, set(kept), wall)
