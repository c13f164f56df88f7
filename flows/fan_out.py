"""Inverting a dataset on Dask, the body invert-dataset and nightly-benchmark share: keep what the run folder
already holds (the resume rule of gani_core.run_folder), fan the rest out as ``invert-images`` tasks (a batch of
images each), write the tables (every valid result of the folder, the earlier runs' included)."""

from __future__ import annotations

import queue
import time
from contextlib import nullcontext
from dataclasses import dataclass

import dask
from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture

from flows.cluster import SubmissionWindow, api_url_for_workers, dask_task_runner, release_future
from flows.parameters import ClusterSettings, InversionSettings
from flows.progress import FinishedImagesLog, ProgressArtifact
from gani_core.checkpoints.ref import CheckpointRef
from gani_core.dataset import ImageSource
from gani_core.invert import InvertConfig
from gani_core.run_folder import RunFolder, failed_row
from tasks.inversion import invert_on_worker
from tasks.storage import reusable_rows, storage_retries_logged, write_tables


class Batches:
    """The (images, configuration) batches of a run: the fan-out's parameter. Prefect stores every flow parameter
    in its database as JSON; a list of them would be 1.1 MB for 10,000 images at 64 per task (5.3 MB at 1 per task,
    3.7 s to encode) and hundreds of MB for a million. This has no JSON form, so Prefect stores ``<Batches>`` in its
    place (Flow.serialize_parameters' fallback for what fastapi's jsonable_encoder cannot encode: no fields, not
    iterable); its ``repr`` says how many."""

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[list[ImageSource], InvertConfig]]) -> None:
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Batches({len(self._items)} task(s), {self.images()} image(s))"

    def images(self) -> int:
        return sum(len(images) for images, _ in self._items)

    def items(self) -> list[tuple[list[ImageSource], InvertConfig]]:
        return list(self._items)


@flow(name="invert-images-on-dask", validate_parameters=False)
def invert_images_on_dask(work: Batches, ckpt: CheckpointRef,
                          folder: RunFolder, batch_size: int | str = 1, gpu: bool = False,
                          window: int | None = None) -> list[dict]:
    """One ``invert-images`` task per (batch of images, configuration) on this subflow's Dask task runner (built
    by the caller at call time); the rows, in no particular order. A task that raised (after its retry), or that
    Dask gave up on (``KilledWorker``), gives failed rows here, not written to ``rows/``, so that a rerun tries
    those images again.

    Tasks are submitted as workers free up: at most ``window`` of them submitted and not yet read (default:
    flows.cluster.SubmissionWindow, 2 per worker thread), so that the flow holds a window of futures, not one per
    task, and the scheduler a window of tasks. Progress goes to the log and one progress artifact at a cadence
    (flows.progress), not a line per image.

    A worker lost in the middle of a task (killed, out of memory) is Dask's to handle: the scheduler runs the task
    again on another worker. Each task's result is released as soon as it is read, so that a worker lost later
    does not make Dask compute finished tasks again (their files written a second time, maybe after the tables)."""
    logger = get_run_logger()
    size = SubmissionWindow(FlowRunContext.get().task_runner, window)
    total = work.images()
    logger.info("%s image(s) in %s task(s), at most %d submitted at a time", f"{total:,}", f"{len(work):,}",
                size.size())
    progress = FinishedImagesLog(total, logger, report=ProgressArtifact(logger))
    finished: queue.SimpleQueue[PrefectFuture] = queue.SimpleQueue()   # filled by Dask's callback thread
    unread: dict[PrefectFuture, tuple[list[ImageSource], InvertConfig]] = {}
    todo = iter(work.items())

    def submit_more() -> None:
        # With gpu, every task asks the scheduler for one unit of the workers' `GPU` resource.
        with dask.annotate(resources={"GPU": 1}) if gpu else nullcontext():
            while len(unread) < size.size() and (batch := next(todo, None)) is not None:
                future = invert_on_worker.submit(*batch, ckpt, folder, batch_size)
                unread[future] = batch
                future.add_done_callback(finished.put)

    submit_more()
    rows = []
    while unread:
        future = finished.get()         # blocks until a task ends: no polling
        images, cfg = unread.pop(future)
        try:
            result = future.result(raise_on_failure=False)
        except Exception as exc:        # the Dask future itself failed (KilledWorker: its workers died 3 times)
            result = exc
        release_future(future)
        submit_more()
        if not isinstance(result, list):
            result = [failed_row(image.image_id, cfg, ckpt, f"{type(result).__name__}: {result}",
                                 source=image.source_path) for image in images]
        progress.done(result)
        rows.extend(result)
    progress.finish()
    return rows


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
    kept = reusable_rows(folder, images, {m: c.resume_hashes() for m, c in configs.items()}, ckpt.sha256)
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
