"""Runs: images inverted with one or more methods into a run folder (gani_core.run_folder).

- :func:`invert_source`: one image file with one method: read, hash, invert, write its outputs and its row.
  Any problem with the image gives a failed row saying why, never an exception. The Dask task calls it.
- :func:`run_in_process`: a whole run in this process (what ``gani invert`` does): keep the results the folder
  already holds for the same image, checkpoint and configuration, compute the rest, write the tables.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gani_core import storage
from gani_core.checkpoints.ref import CheckpointRef
from gani_core.dataset import ImageSource
from gani_core.errors import GaniError
from gani_core.images import load_image
from gani_core.invert import InvertConfig, invert_image
from gani_core.networks import Generator
from gani_core.pivot import Progress
from gani_core.run_folder import RunFolder, complete_row, failed_row, summarise


def invert_source(
    G: Generator,
    image: ImageSource,
    cfg: InvertConfig,
    folder: RunFolder,
    ckpt: CheckpointRef,
    progress: Progress | None = None,
    directions: torch.Tensor | None = None,
) -> dict:
    """Invert one image with ``cfg``, write its deltas, preview and row into ``folder``; return the row.

    A bad image (unreadable, corrupt, too large, ...) or a storage error gives a failed row saying why.
    ``directions`` are the edit directions of ``edit_consistency`` (gani_core.invert.invert_image).
    """
    device = str(G.mapping.w_avg.device)
    label = G.label or ckpt.label
    image_sha = None
    try:
        data = storage.read_bytes(image.source)
        image_sha = hashlib.sha256(data).hexdigest()
        pixels = load_image(data, resolution=G.img_resolution, name=image.source)
        result = invert_image(G, pixels, image.image_id, cfg, directions=directions, progress=progress)
        folder.write_outputs(result, label)
        row = complete_row({**result.row(), "image_sha256": image_sha}, cfg, ckpt, label, device)
    except (GaniError, ValueError, OSError) as exc:
        row = failed_row(image.image_id, cfg, ckpt, f"{type(exc).__name__}: {exc}", image_sha, device)
    folder.write_row(row)
    return row


@dataclass
class RunResult:
    """What a run did: its rows (kept and new, image by image), its summary and the tables written."""

    rows: list[dict]
    summary: dict
    written: dict[str, str]                 # metrics.parquet, summary.json, preview_grid.png -> URI
    kept: set[tuple[str, str]]              # (image_id, method) of the results kept from an earlier run


def run_in_process(
    G: Generator,
    images: list[ImageSource],
    configs: dict[str, InvertConfig],
    folder: RunFolder,
    ckpt: CheckpointRef,
    on_result: Callable[[str, str], Progress | None] | None = None,
    directions: torch.Tensor | None = None,
) -> RunResult:
    """Invert every image with every method here, resuming what ``folder`` already holds; write the tables.

    ``on_result(image_id, method)`` is called before each result is computed and may return a progress callback.
    """
    started = time.time()
    kept = folder.reusable_rows(images, {m: c.config_hash() for m, c in configs.items()}, ckpt.sha256)
    rows = []
    for image in images:
        for method, cfg in configs.items():
            row = kept.get((image.image_id, method))
            if row is None:
                progress = on_result(image.image_id, method) if on_result else None
                row = invert_source(G, image, cfg, folder, ckpt, progress, directions)
            rows.append(row)
    summary = summarise(rows, configs, ckpt, folder.uri, started, skipped=len(kept),
                        computed=len(rows) - len(kept))
    return RunResult(rows, summary, folder.write_tables(rows, summary), set(kept))
