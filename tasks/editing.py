"""The editing task: a batch of a run's images edited along latent directions (gani_core.edit_runs), on whichever
Dask worker runs it; and the task that gathers edits.parquet once a request's tasks are over.

A task gets the directions as their specs (``factor:hue``, ``pca:0``, ``s3://b/smile.npy``), not as tensors, and
parses them on its worker with the worker's generator (:meth:`EditRequest.plan`), which it loads once per process
(tasks.inversion.worker_generator) as the inversion task does. The flow parsed them too, for the resume rule's keys
(``EditPlan.edit_key``: a digest of each direction's offset); a worker whose parse gives another offset (a changed
.npy file, principal directions computed on another machine's cache) would write rows that no rerun keeps, so its
batch fails instead, saying so (:class:`DirectionsDifferError`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from gani_core.checkpoints.ref import CheckpointRef
from gani_core.edit_runs import EditFolder, EditPlan, edit_images, gather_edits, parse_plan
from gani_core.errors import GaniError
from gani_core.invert import method_config
from gani_core.invert_files import auto_batch_size
from gani_core.networks import Generator
from gani_core.run_folder import RunFolder
from tasks.inversion import prepare_worker_process, worker_device, worker_generator
from tasks.storage import storage_retries_logged

# The fields of a run's row an edit reads (its files, the resume rule's edit_key, and whether the run measured identity:
# id_similarity, for id_similarity_edit): what a task is sent, not the whole row.
ROW_FIELDS = ("image_id", "method", "finished", "config_hash", "checkpoint_sha256", "id_similarity")


class DirectionsDifferError(GaniError):
    """A worker parsed a direction into another offset than the flow did."""


@dataclass(frozen=True)
class EditRequest:
    """What every task of an edit request is given: plain values, the directions as specs."""

    run_uri: str                            # the run folder (RunFolder.uri)
    out_uri: str                            # its edits folder (EditFolder.uri)
    ckpt: CheckpointRef                     # the checkpoint the run tuned
    directions: tuple[str, ...]             # the specs, parsed on the worker
    strengths: tuple[float, ...]            # without repeats
    layers: str | None                      # the style inputs edited ("0-5"), None for all
    raw: bool                               # .npy directions as stored, not unit length
    gif: bool                               # a GIF per image x direction too
    digests: tuple[tuple[str, str], ...]    # (direction name, digest of its offset) as the flow parsed them

    def plan(self, G: Generator) -> EditPlan:
        """The request's plan on this worker's ``G``; DirectionsDifferError when a direction's offset is not the one
        the flow parsed (its rows' edit keys would not be the flow's)."""
        plan = parse_plan(G, self.ckpt.sha256, self.directions, self.strengths, self.layers, self.raw, self.gif)
        differ = [name for name, digest in self.digests if plan.digests.get(name) != digest]
        if differ:
            raise DirectionsDifferError(
                f"direction(s) {', '.join(differ)} parsed on this worker differ from the flow's (a .npy file "
                "changed since the flow started, or principal directions computed on another machine: share "
                "GANI_CACHE_DIR/directions/ with the workers)")
        return plan


def task_rows(rows: Sequence[dict]) -> list[dict]:
    """``rows`` with the fields an edit reads (:data:`ROW_FIELDS`) only: what a task is sent."""
    return [{k: r.get(k) for k in ROW_FIELDS} for r in rows]


@task(name="edit-images", task_run_name="edit-{rows[0][image_id]}-x{batch_size}-{rows[0][method]}", retries=1,
      cache_policy=NO_CACHE)
def edit_on_worker(rows: list[dict], todo: dict[str, list[str]], request: EditRequest, batch_size: int | str = 1,
                   missing: list[str] | None = None) -> list[dict]:
    """Edit ``rows`` (a run's ok rows of one method: :data:`ROW_FIELDS`) along the directions ``todo`` names for each
    image, ``batch_size`` images at a time (``auto``: as the worker's device memory allows), writing each batch's
    strips (and GIFs) and then its rows (a part of the edits folder); return the rows.

    An image whose pivot or deltas cannot be read, or that is in ``missing`` (no deltas file), fails alone (failed
    rows; gani_core.edit_runs.edit_images). Anything else (the checkpoint unreadable here, a direction this worker
    parses otherwise, storage unreachable for longer than gani_core.storage's retries) raises, is retried once, and
    then becomes failed rows in the flow. Storage retries show in this task run's log.
    """
    process = prepare_worker_process()
    device = worker_device()
    logger = get_run_logger()
    started = time.perf_counter()
    with storage_retries_logged(logger):
        G = worker_generator(request.ckpt, device)
        plan = request.plan(G)
        k = auto_batch_size(G, method_config(rows[0]["method"])) if batch_size == "auto" else int(batch_size)
        new = edit_images(G, RunFolder(request.run_uri), EditFolder(request.out_uri), rows, plan, todo, k,
                          missing=set(missing or ()))
    failed = len({r["image_id"] for r in new if r["status"] != "ok"})
    logger.info("%d image(s) [%s] edited in %.1f s on %s (%d torch thread(s), batches of %d): %d row(s), %d image(s) "
                "failed", len(rows), rows[0]["method"], time.perf_counter() - started, device,
                process["torch_threads"], k, len(new), failed)
    return new


@task(name="write-edits-table", cache_policy=NO_CACHE)
def write_edits_table(out: EditFolder) -> list[dict]:
    """edits.parquet of ``out``: every row of the folder, the newest of each image x method x direction
    (gani_core.edit_runs.gather_edits); its rows."""
    with storage_retries_logged():
        return gather_edits(out)
