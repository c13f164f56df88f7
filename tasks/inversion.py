"""The inversion task: a batch of images, one method, on whichever Dask worker runs it.

A worker process keeps its generator (:func:`worker_generator`) and LPIPS networks (gani_core.lpips caches
them per process) for all the tasks it runs: the first task on a worker pays for loading, the rest do not.
A checkpoint given as a URI (``s3://...``) is downloaded once per machine (gani_core.checkpoints.ref). With
``InvertConfig.align`` each image's face is aligned here, on the worker, as it is read (gani_core.invert_files), and
with ``identity`` its id_similarity measured: dlib's models load once per process too (gani_core.faces.models).

Before its first task, a worker process is prepared once (:func:`prepare_worker_process`): its torch thread count
(``GANI_TORCH_THREADS``, which the flow's LocalCluster sets to the worker's share of the cores) and glibc's
allocator thresholds, which Dask's nanny breaks for torch (:func:`restore_malloc_thresholds`).
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import time

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from gani_core import CheckpointError, Generator
from gani_core.checkpoints.ref import CheckpointRef
from gani_core.dataset import ImageSource
from gani_core.invert import InvertConfig, invert_images, method_config
from gani_core.invert_files import auto_batch_size, invert_sources
from gani_core.metrics import take_over_ms_ssim_note
from gani_core.run_folder import RunFolder, failed_row
from tasks.storage import storage_retries_logged


def worker_device() -> str:
    """CUDA when this worker sees a GPU (with dask-cuda, the one it is pinned to), else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


TORCH_THREADS_ENV = "GANI_TORCH_THREADS"   # torch intra-op threads of a worker process (set by the flow)
MMAP_THRESHOLD = 32 << 20                   # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # mallopt parameters (malloc.h)


def restore_malloc_thresholds() -> bool:
    """Undo what Dask's nanny does to glibc's allocator in its workers; True when something was changed.

    The nanny starts every worker process with ``MALLOC_TRIM_THRESHOLD_=65536`` (Dask's default
    ``distributed.nanny.pre-spawn-environ``, so that workers hand freed memory back to the OS). Setting any malloc
    threshold also switches off glibc's dynamic mmap threshold, so every allocation over 128 KiB (most of torch's
    CPU tensors) becomes a fresh ``mmap``, zero-filled page by page and unmapped again when freed: measured here,
    an inversion runs 2x slower (20x the page faults, 7x the system time) than in a plain process. Setting the
    thresholds to where glibc's dynamic threshold would settle (mmap 32 MiB, trim 64 MiB) gives back the plain
    process's speed. Nothing is done when the variable is unset or already large, or the C library is not glibc.
    """
    value = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    if not value or platform.libc_ver()[0] != "glibc":
        return False
    try:
        if int(value) >= 2 * MMAP_THRESHOLD:
            return False
        mallopt = ctypes.CDLL(None).mallopt
    except (ValueError, OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD))


@functools.cache
def prepare_worker_process() -> dict:
    """Once per process, before its first inversion: torch's thread count from ``GANI_TORCH_THREADS`` when set
    (else as the process started: Dask's nanny sets ``OMP_NUM_THREADS=1``), and the allocator thresholds
    (:func:`restore_malloc_thresholds`). Returns what the process runs with."""
    threads = os.environ.get(TORCH_THREADS_ENV)
    if threads and threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))
    return {"torch_threads": torch.get_num_threads(), "malloc_thresholds_restored": restore_malloc_thresholds()}


@functools.cache
def worker_generator(ckpt: CheckpointRef, device: str) -> Generator:
    """The generator of ``ckpt`` on ``device``, loaded once per process."""
    return ckpt.load(device)


def warm_worker(ckpt: CheckpointRef) -> dict:
    """Pay a worker process's one-off costs now (its preparation, ``ckpt``'s generator, the LPIPS networks and the
    metrics, by inverting one blank image for one step): on a long-lived cluster, ``client.run(warm_worker, ckpt)``
    before a run, so that no task pays them. Returns what :func:`prepare_worker_process` returns."""
    process = prepare_worker_process()
    G = worker_generator(ckpt, worker_device())
    take_over_ms_ssim_note(G.img_resolution)       # the flow states it once for the run
    blank = torch.zeros(1, 3, G.img_resolution, G.img_resolution, device=G.mapping.w_avg.device)
    invert_images(G, blank, ["warm-up"], method_config("wplus", pivot_steps=1))
    return process


@task(name="invert-images", task_run_name="invert-{images[0].image_id}-x{batch_size}-{cfg.method}", retries=1,
      cache_policy=NO_CACHE)
def invert_on_worker(images: list[ImageSource], cfg: InvertConfig, ckpt: CheckpointRef, folder: RunFolder,
                     batch_size: int | str = 1) -> list[dict]:
    """Invert ``images`` with ``cfg``, ``batch_size`` at a time (``auto``: as the worker's device memory allows),
    writing each image's deltas and preview, then its batch's rows (a part), into ``folder`` as the batch
    ends; return the rows.

    A bad image, or a checkpoint this worker cannot read, gives failed rows saying why
    (gani_core.invert_files.invert_sources); anything else that goes wrong (a lost GPU, a storage unreachable for longer
    than gani_core.storage's retries) raises, is retried once, and then becomes failed rows in the flow. A worker
    lost in the middle of a task (killed, out of memory) is Dask's to handle: it runs the task again on another
    worker. Storage retries show in this task run's log.
    """
    process = prepare_worker_process()
    device = worker_device()
    logger = get_run_logger()
    with storage_retries_logged(logger):
        try:
            G = worker_generator(ckpt, device)
        except CheckpointError as exc:
            rows = [failed_row(image.image_id, cfg, ckpt, f"{type(exc).__name__}: {exc}", device=device,
                               source=image.source_path, source_stat=image.stat)
                    for image in images]
            folder.write_part(rows)
            logger.warning("%d image(s) [%s] failed: %s", len(rows), cfg.method, rows[0]["error"])
            return rows
        k = auto_batch_size(G, cfg) if batch_size == "auto" else int(batch_size)
        started = time.perf_counter()
        rows = invert_sources(G, images, cfg, folder, ckpt, batch_size=k)
    ok = sum(r["status"] == "ok" for r in rows)
    logger.info("%d image(s) [%s] in %.1f s on %s (%d torch thread(s), batches of %d): %d ok, %d failed",
                len(rows), cfg.method, time.perf_counter() - started, device, process["torch_threads"], k, ok,
                len(rows) - ok)
    return rows
