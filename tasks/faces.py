"""The alignment task: a batch of images aligned the FFHQ way into a folder (gani_core.faces.files.align_sources), on
whichever Dask worker runs it.

dlib and its models load once per worker process, on its first task (gani_core.faces.models caches them: about 1 s
for the 68-landmark predictor's 100 MB file), and serve every later task of that process. A task writes ``NAME.png``
per aligned image and returns the batch's rows (gani_core.faces.files.TABLE_SCHEMA); it writes no table: the flow
gathers the rows and writes ``alignment.parquet``, so that tasks on many workers never write the same object.
"""

from __future__ import annotations

import time
from collections import Counter

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from gani_core.dataset import ImageSource
from gani_core.faces.files import align_sources
from tasks.inversion import prepare_worker_process
from tasks.storage import storage_retries_logged


@task(name="align-images", task_run_name="align-{images[0].image_id}-at-{resolution}px", retries=1,
      cache_policy=NO_CACHE)
def align_on_worker(images: list[ImageSource], out_uri: str, resolution: int, prior: dict[str, dict]) -> list[dict]:
    """Align ``images`` into ``out_uri`` at ``resolution`` px: one row per image, in order (an image without a face
    or that cannot be read is a row saying why, never an exception). ``prior``: the folder's rows of these images, by
    image id (the flow read the table once): a row is reused, without aligning again, when its input's bytes are the
    same (gani_core.faces.files' resume rule). A storage error (after gani_core.storage's retries) or dlib missing
    on this worker (FacesUnavailableError) raises: retried once, then failed rows in the flow."""
    prepare_worker_process()        # the allocator thresholds Dask's nanny changes (tasks.inversion)
    logger = get_run_logger()
    started = time.perf_counter()
    counts: Counter[str] = Counter()

    def count(row: dict, reused: bool) -> None:
        counts[row["status"]] += 1
        counts["reused"] += reused

    with storage_retries_logged(logger):
        rows = align_sources(images, out_uri, resolution, kept=prior, on_row=count)
    logger.info("%d image(s) at %d px in %.1f s: %d aligned, %d without a face, %d failed, %d kept (same bytes)",
                len(rows), resolution, time.perf_counter() - started, counts["ok"], counts["no_face"],
                counts["failed"], counts["reused"])
    return rows
