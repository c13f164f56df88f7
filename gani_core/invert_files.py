"""Runs: images inverted with one or more methods into a run folder (gani_core.run_folder), in batches.

- :func:`invert_sources`: image files with one method, ``batch_size`` at a time through the batched engine
  (gani_core.invert.invert_images). Each image is read and decoded before it joins a batch: an unreadable one
  fails alone, then. With ``InvertConfig.align`` (ffhq) its largest face is aligned then, at the generator's
  resolution (gani_core.faces): the aligned face is what is inverted, measured, shown in the preview's input
  column and hashed (``image_sha256``; the file's own hash is ``source_sha256``), and the row records the
  alignment (``align``, ``faces_seen``, ``face_box``, ``face_quad``); an image without a face fails alone
  (``NoFaceError: ... no face found``), never centre-cropped instead. Each image's outputs and row are written
  as soon as its batch ends. An image whose optimisation diverges fails with its reason; the rest of its batch
  goes on. A batch that runs out of device memory is split in two and retried, losing nothing already finished.
  The Dask task calls it.
- :func:`run_in_process`: a whole run in this process (what ``gani invert`` does): keep the results the folder
  already holds for the same image, checkpoint and configuration, compute the rest, write the tables (which hold
  every valid result of the folder, the earlier runs' other methods and configurations included). It counts the
  results of another configuration of the same image and method that it replaces (``RunResult.replaced``).
- :func:`results_on_disk`: how many of a run's results the folder holds now (what an interrupted run kept).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from gani_core import defaults
from gani_core.checkpoints.ref import CheckpointRef
from gani_core.dataset import ImageSource
from gani_core.errors import GaniError, InversionError
from gani_core.images import load_image, read_image_bytes
from gani_core.invert import InversionResult, InvertConfig, invert_images
from gani_core.metrics import take_over_ms_ssim_note
from gani_core.networks import Generator
from gani_core.pivot import Progress, find_pivots
from gani_core.run_folder import RunFolder, complete_row, failed_row, run_tables
from gani_core.tuning import tune_batch

if TYPE_CHECKING:
    from gani_core.faces.align import Alignment

log = logging.getLogger(__name__)
T = TypeVar("T")

# A batch's progress callback, made when the batch starts: (image ids, method) -> Progress.
OnBatch = Callable[[list[str], str], Progress | None]


@dataclass
class _Decoded:
    image: ImageSource
    sha256: str                 # of the bytes inverted: the file's, or the aligned face's PNG
    pixels: torch.Tensor        # [3, R, R] in [0, 1]
    columns: dict[str, Any] = field(default_factory=dict)     # the row's alignment columns (_alignment_columns)


def invert_sources(
    G: Generator,
    images: list[ImageSource],
    cfg: InvertConfig,
    folder: RunFolder,
    ckpt: CheckpointRef,
    batch_size: int = 1,
    on_batch: OnBatch | None = None,
    directions: torch.Tensor | None = None,
) -> list[dict]:
    """Invert ``images`` with ``cfg``, ``batch_size`` at a time; write each one's outputs and row into ``folder``
    as its batch ends; return the rows in the order of ``images`` (see the module docstring for failures)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    take_over_ms_ssim_note(G.img_resolution)       # the run's summary states it once (``notes``), not each batch
    device = str(G.mapping.w_avg.device)
    rows: dict[str, dict] = {}
    unread: list[dict] = []     # failed rows of images that could not be read, written with the next batch's part
    for batch in _batches(G, images, cfg, ckpt, batch_size, unread, device):
        done = [*unread, *_invert_batch(G, batch, cfg, folder, ckpt, on_batch, directions, device)]
        folder.write_part(done)     # last: a row in a part means its result's files are whole
        rows.update((row["image_id"], row) for row in done)
        unread.clear()
    folder.write_part(unread)
    rows.update((row["image_id"], row) for row in unread)
    return [rows[image.image_id] for image in images]


def _batches(G: Generator, images: list[ImageSource], cfg: InvertConfig, ckpt: CheckpointRef, batch_size: int,
             unread: list[dict], device: str) -> Iterator[list[_Decoded]]:
    """Decoded (and, with ``cfg.align``, aligned) images, ``batch_size`` at a time; an image that cannot be inverted
    gets its failed row in ``unread``."""
    batch: list[_Decoded] = []
    for image in images:
        decoded = _decode(image, cfg, G.img_resolution)
        if isinstance(decoded, _Unusable):
            unread.append({**failed_row(image.image_id, cfg, ckpt, decoded.error, decoded.sha256, device,
                                        image.source_path, image.stat), **decoded.columns})
            continue
        batch.append(decoded)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class _Unusable:
    error: str                  # the failed row's: ExceptionType: message
    sha256: str | None          # its image_sha256: the file's when it was read (null with alignment: no face image)
    columns: dict[str, Any]     # with alignment: its columns, as far as it went (_alignment_columns)


def _decode(image: ImageSource, cfg: InvertConfig, resolution: int) -> _Decoded | _Unusable:
    """``image`` read and decoded at ``resolution`` px: centre-cropped, or with ``cfg.align`` its largest face
    aligned (no face: NoFaceError, with the faces seen in its columns); or why it cannot be inverted."""
    sha, columns = None, {}
    try:
        data = read_image_bytes(image.source)
        sha = hashlib.sha256(data).hexdigest()
        if cfg.align is None:
            return _Decoded(image, sha, load_image(data, resolution=resolution, name=image.source))
        from gani_core.faces.align import align_file  # scipy and dlib: only for runs that align

        columns = {"align": cfg.align, "source_sha256": sha}
        alignment = align_file(data, resolution, name=image.source)
        columns.update(_alignment_columns(alignment))
        alignment.check(image.source)
        return _Decoded(image, hashlib.sha256(alignment.png()).hexdigest(), alignment.tensor(), columns)
    except (GaniError, ValueError, OSError) as exc:
        return _Unusable(f"{type(exc).__name__}: {exc}", None if cfg.align else sha, columns)


def _alignment_columns(alignment: Alignment) -> dict[str, Any]:
    """What a row records of its input's alignment besides the recipe and the file's hash (run_folder.METRICS_SCHEMA):
    the faces seen, the chosen face's box and quad (enough to align the file again; the 68 landmarks are left out)."""
    found = alignment.record()
    return {"faces_seen": found["faces_seen"], "face_box": found["box"], "face_quad": found["quad"]}


def _invert_batch(G: Generator, batch: list[_Decoded], cfg: InvertConfig, folder: RunFolder, ckpt: CheckpointRef,
                  on_batch: OnBatch | None, directions: torch.Tensor | None, device: str) -> list[dict]:
    def invert(part: list[_Decoded]) -> list[dict]:
        ids = [d.image.image_id for d in part]
        progress = on_batch(ids, cfg.method) if on_batch else None
        results = invert_images(G, torch.stack([d.pixels for d in part]), ids, cfg, directions, progress)
        return [_write_result(G, d, result, cfg, folder, ckpt, device) for d, result in zip(part, results, strict=True)]

    return halved_on_oom(G, batch, invert)


def halved_on_oom(G: Generator, batch: list[T], work: Callable[[list[T]], list[dict]]) -> list[dict]:
    """``work(batch)``; when it runs out of device memory, the batch split in two and each half done the same way
    (a batch of one that does not fit raises). Nothing already finished is lost: ``work`` writes a result's files as
    its batch ends."""
    try:
        return work(batch)
    except torch.OutOfMemoryError:
        if len(batch) == 1:
            raise
        if G.mapping.w_avg.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(batch) // 2
        return [*halved_on_oom(G, batch[:half], work), *halved_on_oom(G, batch[half:], work)]


def _write_result(G: Generator, decoded: _Decoded, result: InversionResult | InversionError, cfg: InvertConfig,
                  folder: RunFolder, ckpt: CheckpointRef, device: str) -> dict:
    label = G.label or ckpt.label
    image_id = decoded.image.image_id
    try:
        if isinstance(result, InversionError):
            raise result
        size = folder.write_outputs(result, label)
        row = complete_row({**result.row(), "deltas_file_bytes": size, "source": decoded.image.source_path,
                            "source_stat": decoded.image.stat, "image_sha256": decoded.sha256,
                            "resolution": G.img_resolution, **decoded.columns}, cfg, ckpt, label, device)
    except (GaniError, ValueError, OSError) as exc:
        row = {**failed_row(image_id, cfg, ckpt, f"{type(exc).__name__}: {exc}", decoded.sha256, device,
                            decoded.image.source_path, decoded.image.stat), **decoded.columns}
    return row


@dataclass
class RunResult:
    """What a run did: its rows (kept and new, image by image), the tables' summary and the tables written."""

    rows: list[dict]
    summary: dict                           # of the tables: every valid result in the folder, this run's and others
    written: dict[str, str]                 # metrics.parquet, summary.json, preview_grid.png -> URI
    kept: set[tuple[str, str]]              # (image_id, method) of the results kept from an earlier run
    replaced: dict[str, int] = field(default_factory=dict)  # per method: results of another configuration replaced


def run_in_process(
    G: Generator,
    images: list[ImageSource],
    configs: dict[str, InvertConfig],
    folder: RunFolder,
    ckpt: CheckpointRef,
    batch_size: int = 1,
    on_batch: OnBatch | None = None,
    directions: torch.Tensor | None = None,
) -> RunResult:
    """Invert every image with every method here, ``batch_size`` at a time, resuming what ``folder`` already
    holds; write the tables (every valid result in ``folder``: run_folder.run_tables). ``on_batch(image_ids,
    method)`` may return a progress callback for that batch."""
    started = time.time()
    folder.write_configs(configs.values())
    stored = folder.stored_rows()       # read once: the ids, the resume rule, the count of what this run replaces
    images = folder.ids_tied_to_sources(images, stored)     # an id names one file across the folder's runs
    kept = folder.reusable_rows(images, {m: c.resume_hashes() for m, c in configs.items()}, ckpt.sha256, stored)
    replaced = _other_configurations(stored, images, configs, kept)
    new: dict[tuple[str, str], dict] = {}
    for method, cfg in configs.items():
        todo = [image for image in images if (image.image_id, method) not in kept]
        for row in invert_sources(G, todo, cfg, folder, ckpt, batch_size, on_batch, directions):
            new[(row["image_id"], method)] = row
    rows = [kept.get((image.image_id, m)) or new[(image.image_id, m)] for image in images for m in configs]
    table, summary = run_tables(folder, rows, configs, ckpt, started, skipped=len(kept), computed=len(new),
                                batch_size=batch_size)
    for note in summary["notes"]:       # once per run; `gani invert` prints it (logging's last-resort handler)
        log.warning("%s", note)
    return RunResult(rows, summary, folder.write_tables(table, summary), set(kept), replaced)


def _other_configurations(stored: Mapping[tuple[str, str], dict], images: list[ImageSource],
                          configs: dict[str, InvertConfig], kept: Collection[tuple[str, str]]) -> dict[str, int]:
    """Per method, how many of the ``stored`` rows (RunFolder.stored_rows) this run will replace that another
    configuration of it made (an earlier ``--tune-steps``, say): one row per image x method, so a person should hear
    that those results go."""
    counts: dict[str, int] = {}
    for key in ((image.image_id, m) for image in images for m in configs):
        row = stored.get(key)
        if key not in kept and row is not None and row.get("config_hash") not in configs[key[1]].resume_hashes():
            counts[key[1]] = counts.get(key[1], 0) + 1
    return counts


def results_on_disk(folder: RunFolder, images: list[ImageSource], configs: dict[str, InvertConfig]) -> int:
    """How many results of ``images`` x ``configs`` the folder holds now, made with these configurations (what a
    run interrupted half way keeps, and a rerun of the same command resumes from)."""
    stored = folder.stored_rows()
    images = folder.ids_tied_to_sources(images, stored)
    return sum((row := stored.get((image.image_id, m))) is not None and row.get("config_hash") in cfg.resume_hashes()
               for image in images for m, cfg in configs.items())


CPU_BATCH_SIZE = defaults.CPU_BATCH_SIZE    # here for the callers that import it from this module
MAX_BATCH_SIZE = 512


def auto_batch_size(G: Generator, cfg: InvertConfig, memory_fraction: float = 0.8) -> int:
    """The batch size ``auto`` means: defaults.CPU_BATCH_SIZE on a CPU; on a GPU, as many images as
    ``memory_fraction`` of the free device memory holds, from the peak memory of one tuning step measured at 1 and
    at 2 images."""
    device = G.mapping.w_avg.device
    if device.type != "cuda":
        return defaults.CPU_BATCH_SIZE
    tune_cfg = replace(cfg.tune, steps=1) if cfg.tune is not None else None
    peaks = []
    for k in (1, 2):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        ws = G.mapping.w_avg.expand(k, G.num_ws, -1).clone()
        target = torch.zeros([k, 3, G.img_resolution, G.img_resolution], device=device)
        if tune_cfg is not None:
            tune_batch(G, ws, target, tune_cfg)
        else:
            find_pivots(G, target, replace(cfg.pivot, steps=1))
        peaks.append(torch.cuda.max_memory_allocated(device) - start)
    per_image = max(peaks[1] - peaks[0], 1)
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(MAX_BATCH_SIZE, (free * memory_fraction - (peaks[0] - per_image)) // per_image)))
