"""Reading and writing a run's storage by URI (a local folder or ``s3://bucket/prefix``), over gani_core.

- :func:`list_images`: the images under an input URI, sorted, with their ids.
- :func:`existing_results`: the rows a rerun can keep (the resume rule, below).
- :func:`write_tables`: ``metrics.parquet``, ``summary.json`` and the preview grid of a run.

Resume rule: an image's result under ``OUT/rows/IMAGE.METHOD.json`` is kept when its ``image_sha256``,
``checkpoint_sha256`` and ``config_hash`` equal this run's, and it is either ``ok`` (with its deltas file
present) or failed because the image itself is unreadable (``ImageError``: the same bytes fail the same way).
Other failures (a storage hiccup, a worker lost) are computed again.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from fsspec.implementations.local import LocalFileSystem
from PIL import Image
from prefect import task
from prefect.cache_policies import NO_CACHE

from gani_core import storage
from gani_core.runs import RunContext, image_ids, result_key, write_run_tables

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
PREVIEW_GRID = "preview_grid.png"       # OUT/preview_grid.png: the first previews of the run, stacked
PREVIEW_GRID_MAX = 16                   # previews in the grid (the full set is under OUT/previews/)
_BATCH = 64                             # objects fetched per fs.cat call (s3fs fetches a batch concurrently)


@dataclass(frozen=True)
class ImageRef:
    source: str         # a local path or an fsspec URI
    image_id: str       # gani_core.runs.image_ids: the file stem, unique within the run


def _uri(fs, path: str) -> str:
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


@task(name="list-images", cache_policy=NO_CACHE)
def list_images(input_uri: str, limit: int | None = None) -> list[ImageRef]:
    """The image files under ``input_uri`` (recursively; by extension; hidden files skipped), sorted by path.

    ``limit`` keeps the first ``limit`` of them. A single image file is a dataset of one.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 (or None for every image), got {limit}")
    fs, root = storage.resolve(input_uri)
    if not fs.exists(root):
        raise FileNotFoundError(f"input_uri {input_uri}: no such folder or object")
    paths = [root] if fs.isfile(root) else fs.find(root)
    images = sorted(
        p for p in paths
        if PurePosixPath(p).suffix.lower() in IMAGE_EXTENSIONS and not PurePosixPath(p).name.startswith(".")
    )[:limit]
    sources = [_uri(fs, p) for p in images]
    return [ImageRef(s, i) for s, i in zip(sources, image_ids(sources), strict=True)]


def _cat(uris: list[str]) -> dict[str, bytes | None]:
    """Read many objects (batched; concurrent on S3); a missing or unreadable one maps to None."""
    found: dict[str, bytes | None] = {}
    for start in range(0, len(uris), _BATCH):
        batch = uris[start : start + _BATCH]
        fs, _ = storage.resolve(batch[0])
        paths = [storage.resolve(u)[1] for u in batch]
        got = fs.cat(paths, on_error="return")
        for uri, path in zip(batch, paths, strict=True):
            value = got.get(path)
            found[uri] = value if isinstance(value, bytes) else None
    return found


def _names_under(uri: str) -> set[str]:
    fs, path = storage.resolve(uri)
    try:
        return {PurePosixPath(p).name for p in fs.ls(path, detail=False)}
    except FileNotFoundError:
        return set()


def _reusable(row: dict, checkpoint_sha256: str, config_hash: str, have_deltas: bool) -> bool:
    if row.get("checkpoint_sha256") != checkpoint_sha256 or row.get("config_hash") != config_hash:
        return False
    if row.get("status") == "ok":
        return have_deltas
    return str(row.get("error") or "").startswith("ImageError")


@task(name="find-existing-results", cache_policy=NO_CACHE)
def existing_results(
    out: str,
    images: list[ImageRef],
    methods: dict[str, str],
    checkpoint_sha256: str,
) -> dict[tuple[str, str], dict]:
    """The rows under ``out`` that this run keeps, by (image_id, method); ``methods`` maps method -> config hash.

    Only images with a row on disk are read and hashed, so a fresh run reads nothing here.
    """
    row_names, delta_names = _names_under(storage.join(out, "rows")), _names_under(storage.join(out, "deltas"))
    candidates = [(ref, m) for ref in images for m in methods if f"{result_key(ref.image_id, m)}.json" in row_names]
    if not candidates:
        return {}
    raw_rows = _cat([storage.join(out, "rows", f"{result_key(ref.image_id, m)}.json") for ref, m in candidates])
    rows: dict[tuple[str, str], dict] = {}
    for (ref, m), data in zip(candidates, raw_rows.values(), strict=True):
        row = json.loads(data) if data else None
        have_deltas = f"{result_key(ref.image_id, m)}.parquet" in delta_names
        if row and _reusable(row, checkpoint_sha256, methods[m], have_deltas):
            rows[(ref.image_id, m)] = row
    # The same name may now hold other bytes: a row counts only for the image it was computed from.
    source_of = {ref.image_id: ref.source for ref in images}
    sources = sorted({source_of[image_id] for image_id, _ in rows})
    digests = {u: hashlib.sha256(d).hexdigest() if d is not None else None for u, d in _cat(sources).items()}
    return {key: row for key, row in rows.items() if row.get("image_sha256") == digests[source_of[key[0]]]}


def preview_grid_png(previews: Iterable[bytes]) -> bytes | None:
    """Stack preview PNGs (input | pivot | tuned | edit, captioned) into one PNG, top to bottom."""
    tiles = [Image.open(io.BytesIO(data)).convert("RGB") for data in previews]
    if not tiles:
        return None
    grid = Image.new("RGB", (max(t.width for t in tiles), sum(t.height for t in tiles)), "white")
    y = 0
    for tile in tiles:
        grid.paste(tile, (0, y))
        y += tile.height
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return buf.getvalue()


@task(name="write-run-tables", cache_policy=NO_CACHE)
def write_tables(ctx: RunContext, rows: list[dict], summary: dict) -> dict[str, str]:
    """Write ``metrics.parquet``, ``summary.json`` and ``preview_grid.png`` under ``ctx.out``; their URIs by name."""
    write_run_tables(ctx, rows, summary)
    written = {"metrics.parquet": storage.join(ctx.out, "metrics.parquet"),
               "summary.json": storage.join(ctx.out, "summary.json")}
    ok = [r for r in rows if r["status"] == "ok"][:PREVIEW_GRID_MAX]
    previews = _cat([storage.join(ctx.out, "previews", f"{result_key(r['image_id'], r['method'])}.png") for r in ok])
    grid = preview_grid_png(d for d in previews.values() if d)
    if grid is not None:
        written[PREVIEW_GRID] = storage.join(ctx.out, PREVIEW_GRID)
        storage.write_bytes(written[PREVIEW_GRID], grid)
    return written
