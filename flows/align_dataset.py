"""The ``align-dataset`` flow: what ``gani align`` does (gani_core.faces.files), on Dask, a batch of images per
``align-images`` task (tasks/faces.py).

    align_dataset(input_uri="s3://photos/raw", output_uri="s3://photos/aligned", resolution=1024)

Steps: refuse bad input in one line before anything starts (:func:`check_inputs`: no dlib, an output that is a file,
an input that is not there); list the images; read the folder's ``alignment.parquet`` once and keep, reading no
input, the rows whose input the listing shows unchanged at the same resolution and recipe
(gani_core.faces.files.kept_without_reading); fan the rest out on Dask, ``images_per_task`` per task, through the
fan-out every flow shares (flows.window: a window of tasks submitted, progress in the log every 5 % or 30 s); write
``alignment.parquet`` (at the end, and every gani_core.faces.files.TABLE_WRITE_SECONDS while tasks finish, so that
an interrupted run keeps what it aligned); attach a summary to the flow run. Its final state is invert-dataset's
(flows.reports.final_state), an image without an aligned output counting as failed. The aligned folder is then the
input of invert-dataset with ``inversion.identity`` (or of ``gani invert --identity``).
``python -m flows.align_dataset --help`` runs it from a shell (flows/cli.py).
"""

from __future__ import annotations

import time
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.states import Failed, State
from pydantic import AfterValidator, Field

from flows.cli import BAD_INPUT, flow_main
from flows.parameters import ClusterSettings, ImageLimit
from flows.window import Batches, submit_in_window
from gani_core import storage
from gani_core.checkout import LOCAL_OUT, PHOTO_EXAMPLES
from gani_core.dataset import ImageSource


def _power_of_two(value: int) -> int:
    if value & (value - 1):
        raise ValueError(f"a generator's resolution is a power of two (4, 8, ..., 256, 512, 1024), got {value}")
    return value


Resolution = Annotated[int, Field(ge=4), AfterValidator(_power_of_two)]     # a generator's: as gani align's
TaskImages = Annotated[int, Field(ge=1)]
IMAGES_PER_TASK = 16        # about 1-15 s of alignment on a CPU core: a task's overhead is small beside it
# One task's work: its images, and their stored rows by image id (what the task keeps when the bytes are the same).
AlignBatch = tuple[list[ImageSource], dict[str, dict]]


@flow(name="align-dataset")
def align_dataset(
    input_uri: str = str(PHOTO_EXAMPLES),
    output_uri: str = str(LOCAL_OUT / "align-dataset"),
    resolution: Resolution = 1024,
    images_per_task: TaskImages = IMAGES_PER_TASK,
    cluster: ClusterSettings = ClusterSettings(),  # noqa: B008 (frozen: a default never mutated)
    limit: ImageLimit | None = None,
) -> dict | State:
    """Align the largest face of every image under ``input_uri`` the FFHQ way into ``output_uri`` on Dask, a batch
    of images per task; keep what ``output_uri`` already holds for the same image bytes, resolution and recipe.

    Args:
        input_uri: folder or ``s3://bucket/prefix`` holding the images (jpg/jpeg, png, webp, bmp, tif/tiff, gif;
            searched recursively, sorted by path).
        output_uri: folder or ``s3://bucket/prefix`` for ``NAME.png`` per aligned image (named by its image id) and
            ``alignment.parquet`` (a row per image: faces seen, landmarks, quad, or why there is no output).
        resolution: side of the aligned images in px: the generator's resolution (1024 for FFHQ's).
        images_per_task: images aligned by one task.
        cluster: an existing Dask scheduler, or the size of the LocalCluster started for the run (alignment runs on
            the CPU; a GPU cluster's workers run it too).
        limit: align only the first ``limit`` images (after sorting); none: all.

    Returns:
        The summary: counts ``images``, ``ok`` (aligned), ``no_face``, ``failed`` (without an aligned output: no
        face, or unreadable), ``skipped`` (kept without reading the input), ``computed`` (given to tasks), the
        table's URI and the fan-out's seconds. Some failed: the flow run is Completed, its message ``N of M
        result(s) failed``. All failed: Failed, its result raising flows.reports.EveryResultFailedError. Bad input
        (check_inputs): Failed before anything starts, its result raising the one-line error.
    """
    from flows.reports import final_state, summary_artifact
    from gani_core.faces.files import TABLE, NameClashError, check_names, reusable_rows
    from tasks.storage import list_images, storage_retries_logged

    try:        # returned, not raised: one line in the log (a raise logs its traceback), no cluster
        check_inputs(input_uri, output_uri)
    except BAD_INPUT as exc:
        return Failed(message=f"{type(exc).__name__}: {exc}", data=exc)
    logger = get_run_logger()
    images = list_images(input_uri, limit, output_uri)      # no image file there: fails here, before any cluster
    try:
        check_names(images, output_uri)         # two inputs that would be aligned to one NAME.png
    except NameClashError as exc:
        return Failed(message=f"{type(exc).__name__}: {exc}", data=exc)
    with storage_retries_logged(logger):
        stored = reusable_rows(output_uri)      # one read of the table, one listing
    kept, batches = plan(images, stored, resolution, images_per_task)
    logger.info("%d image(s) under %s at %d px: %d kept from earlier runs, %d to align in %d task(s)", len(images),
                input_uri, resolution, len(kept), batches.images(), len(batches))
    t0 = time.perf_counter()
    new: dict[str, dict] = {}
    if batches:
        from flows.cluster import api_url_for_workers, dask_task_runner

        with api_url_for_workers():
            runner = dask_task_runner(cluster, len(batches))
            rows = align_images_on_dask.with_options(task_runner=runner)(batches, output_uri, resolution)
        new = {row["image_id"]: row for row in rows}
    rows = [kept.get(image.image_id) or new[image.image_id] for image in images]
    summary = run_summary(rows, len(kept), batches.images(), output_uri, resolution, time.perf_counter() - t0)
    summary_artifact("align-dataset-summary", f"align-dataset: {resolution} px", {
        "input": f"`{input_uri}`", "output": f"`{output_uri}`", "images": len(images), "aligned": summary["ok"],
        "no face": summary["no_face"], "failed (unreadable, or the face too small)": summary["failed"] -
        summary["no_face"], "kept from earlier runs": len(kept)}, "align-dataset summary")
    logger.info("wrote %s: %d aligned, %d without a face, %d failed otherwise, %d kept from earlier runs",
                summary["written"][TABLE], summary["ok"], summary["no_face"], summary["failed"] - summary["no_face"],
                len(kept))
    return final_state(results(rows), summary)


def plan(images: list[ImageSource], stored: dict[str, dict], resolution: int, per_task: int
         ) -> tuple[dict[str, dict], Batches[AlignBatch]]:
    """The rows kept without reading their images (gani_core.faces.files.kept_without_reading), by image id, and the
    batches of the others, ``per_task`` images each with their stored rows (a task keeps a row whose image's bytes
    are the same)."""
    from gani_core.faces.files import kept_without_reading

    kept = {image.image_id: stored[image.image_id] for image in images
            if kept_without_reading(stored.get(image.image_id), image, resolution)}
    todo = [image for image in images if image.image_id not in kept]
    batches = [todo[i : i + per_task] for i in range(0, len(todo), per_task)]
    return kept, Batches([(batch, {i.image_id: stored[i.image_id] for i in batch if i.image_id in stored})
                          for batch in batches])


def run_summary(rows: list[dict], kept: int, computed: int, output_uri: str, resolution: int,
                wall_seconds: float) -> dict:
    """What the flow returns (its docstring's Returns)."""
    from gani_core.faces.files import TABLE

    ok = sum(r["status"] == "ok" for r in rows)
    return {"images": len(rows), "ok": ok, "no_face": sum(r["status"] == "no_face" for r in rows),
            "failed": len(rows) - ok, "skipped": kept, "computed": computed, "resolution": resolution,
            "output": output_uri, "written": {TABLE: storage.join(output_uri, TABLE)}, "wall_seconds": wall_seconds,
            "aligned_faces": ok}


def results(rows: list[dict]) -> list[dict]:
    """One result per image for the progress lines and the final state: ok when aligned, else failed with the
    reason."""
    return [{"image_id": r["image_id"], "method": "align", "status": "ok" if r["status"] == "ok" else "failed",
             "error": r.get("reason")} for r in rows]


@flow(name="align-images-on-dask", validate_parameters=False)
def align_images_on_dask(work: Batches[AlignBatch], out_uri: str, resolution: int,
                         window: int | None = None) -> list[dict]:
    """One ``align-images`` task per batch on this subflow's Dask task runner (built by the caller at call time),
    through the fan-out every flow shares (flows.window.submit_in_window: a window of tasks submitted, progress at a
    cadence); the rows, in the order of ``work``, written into ``out_uri``'s alignment.parquet at the end, every
    TABLE_WRITE_SECONDS while tasks finish, and when interrupted. A task that raised (after its retry), or that
    Dask gave up on, gives failed rows here (image_sha256 null: a rerun aligns those images again)."""
    from tasks.faces import align_on_worker

    table = _TableWriter(out_uri)
    try:
        per_batch = submit_in_window(
            work, lambda batch: align_on_worker.submit(batch[0], out_uri, resolution, batch[1]),
            lambda batch, error: [failed_row(image, resolution, error) for image in batch[0]],
            window=window, results=table.add)
    finally:
        table.write()
    return [row for rows in per_batch for row in rows]


class _TableWriter:
    """The rows of finished tasks, written into alignment.parquet (gani_core.faces.files.write_table, which keeps
    the table's other rows) every TABLE_WRITE_SECONDS and at the end."""

    def __init__(self, out_uri: str) -> None:
        self.out_uri, self.written = out_uri, time.monotonic()
        self.rows: list[dict] = []

    def add(self, rows: list[dict]) -> list[dict]:
        """Keep one task's rows (writing the table when it is due); their results for the progress lines."""
        from gani_core.faces.files import TABLE_WRITE_SECONDS

        self.rows.extend(rows)
        if time.monotonic() - self.written > TABLE_WRITE_SECONDS:
            self.write()
        return results(rows)

    def write(self) -> None:
        from gani_core.faces.files import write_table
        from tasks.storage import storage_retries_logged

        if self.rows:
            with storage_retries_logged():
                write_table(self.out_uri, self.rows)
        self.written = time.monotonic()


def failed_row(image: ImageSource, resolution: int, reason: str) -> dict:
    """The row of an image whose task failed (gani_core.faces.files.TABLE_SCHEMA): never reused, as it read no
    bytes."""
    from gani_core.faces.files import RECIPE

    return {"image_id": image.image_id, "source": image.source_path, "source_stat": image.stat,
            "resolution": resolution, "recipe": RECIPE, "status": "failed", "reason": reason}


def check_inputs(input_uri: str, output_uri: str) -> None:
    """Refuse, each in one line, what the flow cannot run on: dlib or its models missing here
    (FacesUnavailableError: the workers need them too), an ``output_uri`` that is a file or under one, an
    ``input_uri`` that is not there; on S3, a store that cannot be reached or that refuses the credentials."""
    from gani_core.faces.models import require

    require()
    storage.check_folder(output_uri, "output_uri")
    storage.must_exist(input_uri, "input_uri")


def _check_shell(input_uri: str, output_uri: str, limit: int | None = None, **_: object) -> None:
    """The shell's checks, before Prefect starts: the flow's (check_inputs), and the listing of the input (an
    empty folder; two images that would be aligned to one NAME.png), which the flow does in its list-images task."""
    from gani_core.dataset import list_images
    from gani_core.faces.files import check_names

    check_inputs(input_uri, output_uri)
    check_names(list_images(input_uri, limit, output_uri), output_uri)


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.align_dataset``: the flow on the embedded defaults (a temporary Prefect API, a LocalCluster,
    local folders); says where everything went. Exit status: flows.cli.EXIT_STATUS."""
    return flow_main(align_dataset, argv, check=_check_shell)


if __name__ == "__main__":
    raise SystemExit(main())
