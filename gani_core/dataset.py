"""The input of a run: the images under a URI (a local folder, a file, or ``s3://bucket/prefix``), with their ids.

An image's id is its file stem, made safe for paths and unique within the run (``astronaut``, ``astronaut-1``);
it names the image's results in the run folder (gani_core.run_folder).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fsspec.implementations.local import LocalFileSystem

from gani_core import storage

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


@dataclass(frozen=True)
class ImageSource:
    source: str         # a local path or an fsspec URI
    image_id: str       # the file stem, unique within the run


def image_ids(sources: list[str]) -> list[str]:
    """Readable, unique ids: the file stem, made safe for paths (no separators, no leading dot: never a hidden
    file or a step up in the run folder); repeated stems get a numeric suffix."""
    ids: list[str] = []
    seen: dict[str, int] = {}
    for src in sources:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(src.rstrip("/")).stem).lstrip(".") or "image"
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        ids.append(stem if n == 0 else f"{stem}-{n}")
    return ids


def image_sources(sources: list[str]) -> list[ImageSource]:
    """``sources`` (paths or URIs, in the order given) with their ids."""
    return [ImageSource(s, i) for s, i in zip(sources, image_ids(sources), strict=True)]


def list_images(input_uri: str, limit: int | None = None) -> list[ImageSource]:
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
    return image_sources([p if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(p) for p in images])
