"""Prefect tasks over a run's input and its folder (gani_core.dataset, gani_core.run_folder): thin wrappers, so
that listing, the resume check and the tables show as task runs with their own logs and states.

:func:`storage_retries_logged` puts gani_core.storage's retries (an S3 endpoint that dropped) into the log of the
task run that met them, where people look; every task here and the inversion task use it."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from gani_core import storage
from gani_core.checkpoints.ref import CheckpointRef
from gani_core.dataset import ImageSource
from gani_core.dataset import list_images as _list_images
from gani_core.invert import InvertConfig
from gani_core.run_folder import RunFolder, run_tables

STORAGE_LOG_PREFIX = "storage: "    # how the retries read in a task run's log (benchmarks/soak.py counts them)


class _ToRunLogger(logging.Handler):
    """Forwards the records of one thread (a task run's) to that run's Prefect logger."""

    def __init__(self, run_logger: logging.LoggerAdapter) -> None:
        super().__init__(logging.INFO)
        self.run_logger, self.thread = run_logger, threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.run_logger.log(record.levelno, "%s%s", STORAGE_LOG_PREFIX, record.getMessage())


@contextlib.contextmanager
def storage_retries_logged(run_logger: logging.LoggerAdapter | None = None) -> Iterator[None]:
    """Within the block, gani_core.storage's warnings (each retry of a call the storage did not answer) of this
    thread also go to the Prefect run logger (default: the current run's)."""
    handler = _ToRunLogger(run_logger or get_run_logger())
    storage.log.addHandler(handler)
    try:
        yield
    finally:
        storage.log.removeHandler(handler)


@task(name="list-images", cache_policy=NO_CACHE)
def list_images(input_uri: str, limit: int | None = None, exclude: str | None = None) -> list[ImageSource]:
    """The images under ``input_uri``, sorted, with their ids, none under ``exclude`` (the output folder)
    (gani_core.dataset.list_images)."""
    with storage_retries_logged():
        return _list_images(input_uri, limit, exclude)


@task(name="find-existing-results", cache_policy=NO_CACHE)
def reusable_rows(folder: RunFolder, images: list[ImageSource], config_hashes: dict[str, tuple[str, ...]],
                  checkpoint_sha256: str) -> tuple[list[ImageSource], dict[tuple[str, str], dict]]:
    """``images`` with their ids tied to their files (RunFolder.ids_tied_to_sources: an id names one file across
    runs), and the rows a rerun keeps, by (image_id, method) (RunFolder.reusable_rows: the resume rule); the
    folder's rows read once."""
    with storage_retries_logged():
        stored = folder.stored_rows()
        images = folder.ids_tied_to_sources(images, stored)
        return images, folder.reusable_rows(images, config_hashes, checkpoint_sha256, stored)


@task(name="write-run-tables", cache_policy=NO_CACHE)
def write_tables(folder: RunFolder, rows: list[dict], configs: dict[str, InvertConfig], ckpt: CheckpointRef,
                 started: float, summary_extra: dict) -> tuple[dict, dict[str, str]]:
    """metrics.parquet, summary.json and preview_grid.png of this run's ``rows`` and every other valid result in
    the folder (run_folder.run_tables); the summary, and the tables' URIs by name. First, the temporary files that
    writers killed in the middle of a write left in the folder (a lost worker) are removed: once the run's tasks
    are over, the folder holds whole files only."""
    logger = get_run_logger()
    removed = storage.remove_orphaned_temp_files(folder.uri)
    if removed:
        logger.warning("removed %d temporary file(s) left by interrupted writes: %s", len(removed),
                       ", ".join(removed))
    with storage_retries_logged(logger):
        table, summary = run_tables(folder, rows, configs, ckpt, started, **summary_extra)
        return summary, folder.write_tables(table, summary)
