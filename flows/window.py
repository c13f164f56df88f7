"""The fan-out every flow shares: batches of work as a subflow parameter Prefect does not store (:class:`Batches`),
submitted to Dask a window at a time and read as they end (:func:`submit_in_window`). invert-dataset
(flows/fan_out.py), edit-dataset and align-dataset run their tasks through it. Importing it costs no more than
the flows' own modules: Dask and the cluster's module are imported when a fan-out runs."""

from __future__ import annotations

import queue
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Generic, TypeVar

from prefect import get_run_logger
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture

from flows.progress import FinishedImagesLog, ProgressArtifact

T = TypeVar("T")


class Batches(Generic[T]):
    """The batches of a fan-out: its subflow's parameter. Prefect stores every flow parameter in its database as
    JSON; a list of batches would be 1.1 MB for 10,000 images at 64 per task (5.3 MB at 1 per task, 3.7 s to
    encode) and hundreds of MB for a million. This has no JSON form, so Prefect stores ``<Batches>`` in its place
    (Flow.serialize_parameters' fallback for what fastapi's jsonable_encoder cannot encode: no fields, not
    iterable); its ``repr`` says how many. ``size(batch)`` is how many images a batch holds (default: the length of
    its first element, the images of an (images, configuration) pair)."""

    __slots__ = ("_images", "_items")

    def __init__(self, items: Sequence[T], size: Callable[[T], int] | None = None) -> None:
        self._items = list(items)
        count = size or (lambda batch: len(batch[0]))       # type: ignore[index]
        self._images = sum(count(batch) for batch in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Batches({len(self._items)} task(s), {self._images} image(s))"

    def images(self) -> int:
        return self._images

    def items(self) -> list[T]:
        return list(self._items)


def submit_in_window(work: Batches[T], submit: Callable[[T], PrefectFuture], failed: Callable[[T, str], list[dict]],
                     gpu: bool = False, window: int | None = None,
                     results: Callable[[list[dict]], list[dict]] | None = None) -> list[list[dict]]:
    """Each batch of ``work`` through ``submit(batch)`` (a task's future) on the calling (sub)flow's Dask task
    runner; each batch's rows, in the order of ``work``. A task that raised (after its retries), or that Dask gave up
    on (``KilledWorker``), gives ``failed(batch, "Type: message")`` instead.

    Tasks are submitted as workers free up: at most ``window`` of them submitted and not yet read (default:
    flows.cluster.SubmissionWindow, 2 per worker thread), so that the flow holds a window of futures, not one per
    task, and the scheduler a window of tasks. With ``gpu`` each task asks for one unit of the workers' ``GPU``
    resource. Progress goes to the log and one progress artifact at a cadence (flows.progress), counting
    ``results(rows)`` (default: the rows themselves, one per image), not a line per image.

    A worker lost in the middle of a task (killed, out of memory) is Dask's to handle: the scheduler runs the task
    again on another worker. Each task's result is released as soon as it is read, so that a worker lost later does
    not make Dask compute finished tasks again (their files written a second time, maybe after the tables)."""
    import dask  # here, with the cluster's module (torch, distributed): Batches alone is imported by --help

    from flows.cluster import SubmissionWindow, release_future

    logger = get_run_logger()
    size = SubmissionWindow(FlowRunContext.get().task_runner, window)
    batches = work.items()
    logger.info("%s image(s) in %s task(s), at most %d submitted at a time", f"{work.images():,}",
                f"{len(work):,}", size.size())
    progress = FinishedImagesLog(work.images(), logger, report=ProgressArtifact(logger))
    finished: queue.SimpleQueue[PrefectFuture] = queue.SimpleQueue()   # filled by Dask's callback thread
    unread: dict[PrefectFuture, int] = {}                               # future -> index of its batch
    todo = iter(range(len(batches)))

    def submit_more() -> None:
        with dask.annotate(resources={"GPU": 1}) if gpu else nullcontext():
            while len(unread) < size.size() and (i := next(todo, None)) is not None:
                future = submit(batches[i])
                unread[future] = i
                future.add_done_callback(finished.put)

    submit_more()
    out: list[list[dict]] = [[] for _ in batches]
    while unread:
        future = finished.get()         # blocks until a task ends: no polling
        i = unread.pop(future)
        try:
            result = future.result(raise_on_failure=False)
        except Exception as exc:        # the Dask future itself failed (KilledWorker: its workers died 3 times)
            result = exc
        release_future(future)
        submit_more()
        if not isinstance(result, list):
            result = failed(batches[i], f"{type(result).__name__}: {result}")
        progress.done(results(result) if results else result)
        out[i] = result
    progress.finish()
    return out
