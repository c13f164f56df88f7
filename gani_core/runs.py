"""A run: images inverted with one or more methods, written under an output URI as architecture.md lays out.

    OUT/metrics.parquet                one row per image x method (status ok | failed, error, metrics)
    OUT/deltas/IMAGE.METHOD.parquet    the encoded weight deltas of one result (deltas.DELTAS_SCHEMA)
    OUT/previews/IMAGE.METHOD.png      input | pivot | tuned | edit
    OUT/rows/IMAGE.METHOD.json         each result's row as soon as it is done (what a rerun resumes from)
    OUT/summary.json                   the run: checkpoint, configs, counts, means per method

A bad image becomes a failed row with its reason; the other images complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

import gani_core
from gani_core import deltas as deltas_mod
from gani_core import storage
from gani_core.checkpoints.builtin import BUILTIN_SEED, TRAINED_FILE
from gani_core.checkpoints.native import generator_to_bytes
from gani_core.errors import GaniError
from gani_core.images import load_image
from gani_core.invert import InvertConfig, invert_image
from gani_core.metrics import METRIC_NAMES
from gani_core.networks import Generator
from gani_core.pivot import Progress
from gani_core.render import save_grid

# edit_accuracy is null for generators without factor edit directions (all but the built-in one).
RESULT_METRICS = (*METRIC_NAMES, "locality", "edit_consistency", "edit_accuracy")

METRICS_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("image_sha256", pa.string()), ("method", pa.string()),
    ("status", pa.string()), ("error", pa.string()),
    *[(m, pa.float64()) for m in RESULT_METRICS],
    ("seconds", pa.float64()), ("seconds_pivot", pa.float64()), ("seconds_tune", pa.float64()),
    ("seconds_metrics", pa.float64()), ("pivot_steps", pa.int64()), ("tune_steps", pa.int64()),
    ("seconds_per_tune_step", pa.float64()), ("delta_bytes", pa.int64()), ("delta_lpips_change", pa.float64()),
    ("peak_memory_mb", pa.float64()), ("w_pivot", pa.list_(pa.float32())),
    ("checkpoint", pa.string()), ("checkpoint_sha256", pa.string()), ("generator_label", pa.string()),
    ("config_hash", pa.string()), ("seed", pa.int64()), ("device", pa.string()), ("gani_version", pa.string()),
])


@dataclass(frozen=True)
class RunContext:
    """What every row of a run shares."""

    out: str                    # output URI (folder or s3://bucket/prefix)
    checkpoint: str             # the checkpoint spec as given
    checkpoint_sha256: str
    generator_label: str
    device: str


def checkpoint_sha256(spec: str, G: Generator) -> str:
    """The hash of the checkpoint file; for the random built-in generator, of its definition.

    ``builtin`` is the shipped weights file. ``builtin-random:RES`` is hashed by its definition (resolution,
    seed and code version), not its weights: they are computed, and their last bits change with the number
    of threads that computed them, so the same generator would get different hashes in different processes
    (a flow and its Dask workers) and results keyed by it would never be found again.
    """
    if re.fullmatch(r"builtin(?::\d+)?", spec):
        spec = str(TRAINED_FILE)
    path = Path(spec)
    digest = hashlib.sha256()
    if re.fullmatch(r"builtin-random(?::\d+)?", spec):
        digest.update(f"gani-builtin-random:{G.img_resolution}:seed={BUILTIN_SEED}:{gani_core.__version__}".encode())
    elif path.is_file():
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    else:
        digest.update(generator_to_bytes(G))
    return digest.hexdigest()


def image_ids(sources: list[str]) -> list[str]:
    """Readable, unique ids: the file stem, made safe for paths; repeated stems get a numeric suffix."""
    ids: list[str] = []
    seen: dict[str, int] = {}
    for src in sources:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(src.rstrip("/")).stem) or "image"
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        ids.append(stem if n == 0 else f"{stem}-{n}")
    return ids


def result_key(image_id: str, method: str) -> str:
    return f"{image_id}.{method}"


def _finite(v: object) -> object:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def failed_row(image_id: str, method: str, image_sha: str | None, error: str) -> dict:
    return {"image_id": image_id, "image_sha256": image_sha, "method": method, "status": "failed", "error": error}


def process_image(
    G: Generator,
    source: str,
    image_id: str,
    cfg: InvertConfig,
    ctx: RunContext,
    directions: torch.Tensor | None = None,
    progress: Progress | None = None,
) -> dict:
    """Invert one image and write its deltas, preview and row under ``ctx.out``; return the row.

    Any problem with this image (unreadable, corrupt, too large, ...) gives a failed row saying why,
    never an exception: the caller goes on with the next image.
    """
    image_sha = None
    key = result_key(image_id, cfg.method)
    try:
        data = storage.read_bytes(source)
        image_sha = hashlib.sha256(data).hexdigest()
        image = load_image(data, resolution=G.img_resolution, name=source)
        result = invert_image(G, image, image_id, cfg, directions=directions, progress=progress)
        deltas_mod.write_deltas_parquet(deltas_mod.deltas_table(image_id, result.encoded),
                                        storage.join(ctx.out, "deltas", f"{key}.parquet"))
        caption = f"{image_id} | {cfg.method} | input, pivot, tuned, edit | {ctx.generator_label}"
        save_grid(result.previews, storage.join(ctx.out, "previews", f"{key}.png"), caption=caption)
        row = {**result.row(), "image_sha256": image_sha}
    except (GaniError, ValueError, OSError) as exc:
        row = failed_row(image_id, cfg.method, image_sha, f"{type(exc).__name__}: {exc}")
    row.update({
        "checkpoint": ctx.checkpoint, "checkpoint_sha256": ctx.checkpoint_sha256,
        "generator_label": ctx.generator_label, "config_hash": cfg.config_hash(), "seed": cfg.seed,
        "device": ctx.device, "gani_version": gani_core.__version__,
    })
    row = {k: _finite(v) for k, v in row.items()}
    storage.write_bytes(storage.join(ctx.out, "rows", f"{key}.json"), json.dumps(row).encode())
    return row


def rows_table(rows: Iterable[dict]) -> pa.Table:
    cols = {name: [r.get(name) for r in rows] for name in METRICS_SCHEMA.names} if rows else {}
    return pa.Table.from_pydict(cols, schema=METRICS_SCHEMA) if cols else METRICS_SCHEMA.empty_table()


def summarise(rows: list[dict], ctx: RunContext, configs: dict[str, InvertConfig], started: float) -> dict:
    methods: dict[str, dict] = {}
    for method in configs:
        mine = [r for r in rows if r["method"] == method]
        ok = [r for r in mine if r["status"] == "ok"]
        means = {}
        for m in (*RESULT_METRICS, "seconds", "seconds_per_tune_step", "delta_bytes"):
            vals = [r[m] for r in ok if r.get(m) is not None]
            means[m] = float(np.mean(vals)) if vals else None
        methods[method] = {
            "images": len(mine), "ok": len(ok), "failed": len(mine) - len(ok),
            "mean": {k: _finite(v) for k, v in means.items()},
            "config": asdict(configs[method]), "config_hash": configs[method].config_hash(),
            "failures": {r["image_id"]: r["error"] for r in mine if r["status"] != "ok"},
        }
    return {
        "gani_version": gani_core.__version__, "checkpoint": ctx.checkpoint,
        "checkpoint_sha256": ctx.checkpoint_sha256, "generator_label": ctx.generator_label,
        "device": ctx.device, "output": ctx.out, "started": started, "finished": time.time(),
        "images": len({r["image_id"] for r in rows}), "failed": sum(r["status"] != "ok" for r in rows),
        "methods": methods,
    }


def write_run_tables(ctx: RunContext, rows: list[dict], summary: dict) -> None:
    storage.write_parquet(storage.join(ctx.out, "metrics.parquet"), rows_table(rows))
    storage.write_bytes(storage.join(ctx.out, "summary.json"), json.dumps(summary, indent=2).encode())


def run_inversions(
    G: Generator,
    sources: list[str],
    configs: dict[str, InvertConfig],
    ctx: RunContext,
    directions: torch.Tensor | None = None,
    on_image: Callable[[str, str], Progress | None] | None = None,
) -> tuple[list[dict], dict]:
    """Invert every image with every method in one process, then write the run's tables."""
    started = time.time()
    rows = []
    for source, image_id in zip(sources, image_ids(sources), strict=True):
        for method, cfg in configs.items():
            progress = on_image(image_id, method) if on_image else None
            rows.append(process_image(G, source, image_id, cfg, ctx, directions, progress))
    summary = summarise(rows, ctx, configs, started)
    write_run_tables(ctx, rows, summary)
    return rows, summary
