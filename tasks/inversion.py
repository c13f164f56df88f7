"""The inversion task: one image, one method, on whichever Dask worker runs it.

A worker process keeps its generator (:func:`worker_generator`) and LPIPS networks (gani_core.lpips caches
them per process) for all the tasks it runs: the first task on a worker pays for loading, the rest do not.
A checkpoint given as a URI (``s3://...``) is downloaded once per machine into :func:`cache_dir`.

Before its first task, a worker process is prepared once (:func:`prepare_worker_process`): its torch thread count
(``GANI_TORCH_THREADS``, which the flow's LocalCluster sets to the worker's share of the cores) and glibc's
allocator thresholds, which Dask's nanny breaks for torch (:func:`restore_malloc_thresholds`).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from gani_core import Generator, load_generator, storage
from gani_core.invert import InvertConfig
from gani_core.runs import RunContext, checkpoint_sha256, process_image


def cache_dir() -> Path:
    """Where downloaded checkpoints are kept: ``$GANI_CACHE_DIR``, else ``~/.cache/gani``."""
    return Path(os.environ.get("GANI_CACHE_DIR") or Path.home() / ".cache" / "gani")


def local_checkpoint(spec: str) -> str:
    """``spec`` as something load_generator reads: ``builtin[:RES]`` and local paths as they are; a URI
    (``s3://bucket/ffhq.pkl``) downloaded once into the cache, keyed by the URI and the object's ETag/size."""
    if spec.startswith("builtin") or "://" not in spec or spec.startswith("file://"):
        return spec.removeprefix("file://")
    fs, path = storage.resolve(spec)
    info = fs.info(path)
    version = str(info.get("ETag") or info.get("etag") or "") + f":{info.get('size')}"
    key = hashlib.sha256(f"{spec}\n{version}".encode()).hexdigest()[:16]
    target = cache_dir() / "checkpoints" / f"{key}-{Path(path).name}"
    if not target.is_file():
        storage.write_bytes(target, storage.read_bytes(spec))       # atomic: a crash leaves no half file
    return str(target)


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
def worker_generator(checkpoint: str, device: str) -> Generator:
    """The generator of ``checkpoint`` on ``device``, loaded once per process."""
    return load_generator(local_checkpoint(checkpoint), device=device)


@dataclass(frozen=True)
class CheckpointInfo:
    spec: str           # as given
    sha256: str         # gani_core.runs.checkpoint_sha256: the file's hash (built-in: of its weights)
    label: str          # the generator's label (e.g. "built-in, untrained")
    resolution: int


@task(name="checkpoint-info", cache_policy=NO_CACHE)
def checkpoint_info(checkpoint: str) -> CheckpointInfo:
    """Load ``checkpoint`` once where the flow runs (a bad checkpoint fails the flow here, before any
    image is tried) and return its hash: the checkpoint part of every result's key."""
    local = local_checkpoint(checkpoint)
    G = load_generator(local, device="cpu")
    return CheckpointInfo(checkpoint, checkpoint_sha256(local, G), G.label or checkpoint, G.img_resolution)


@task(name="invert-image", task_run_name="invert-{image_id}-{cfg.method}", retries=1, cache_policy=NO_CACHE)
def invert_image(source: str, image_id: str, cfg: InvertConfig, checkpoint: str, checkpoint_sha256: str,
                 out: str) -> dict:
    """Invert one image with ``cfg`` and write its deltas, preview and row under ``out``; return the row.

    A bad image returns a failed row (gani_core.runs.process_image); anything else that goes wrong
    (a lost GPU, out of memory) raises, is retried once, and then becomes a failed row in the flow.
    """
    process = prepare_worker_process()
    device = worker_device()
    G = worker_generator(checkpoint, device)
    ctx = RunContext(out=out, checkpoint=checkpoint, checkpoint_sha256=checkpoint_sha256,
                     generator_label=G.label or checkpoint, device=device)
    row = process_image(G, source, image_id, cfg, ctx)
    logger = get_run_logger()
    if row["status"] == "ok":
        logger.info("%s [%s]: lpips %.4f, %.1f s on %s (%d torch thread(s))", image_id, cfg.method, row["lpips"],
                    row["seconds"], device, process["torch_threads"])
    else:
        logger.warning("%s [%s] failed: %s", image_id, cfg.method, row["error"])
    return row
