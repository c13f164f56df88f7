"""The input of a run: the images under a URI (a local folder, a file, or ``s3://bucket/prefix``), with their ids.

An image's id is its file stem, made safe for paths and unique within the run (``astronaut``, ``astronaut-1``);
it names the image's results in the run folder (gani_core.run_folder). Its ``input_path``, the file's path relative
to the input root (``a/img.jpg``, ``b/img.jpg`` for the ids ``img`` and ``img-1``), is kept in its rows (``source``).
"""

from __future__ import annotations

import functools
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import fsspec
from fsspec.implementations.local import LocalFileSystem

from gani_core import storage

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})

# Longest image id. With ".wplus.parquet" and a temporary file's extra 14 characters (gani_core.storage) a file
# name stays far below the 255 bytes file systems allow; a longer stem is cut here, not refused at write time.
MAX_ID_LENGTH = 120


@dataclass(frozen=True)
class ImageSource:
    source: str         # a local path or an fsspec URI
    image_id: str       # the file stem, unique within the run
    input_path: str | None = None   # the path relative to the input root (rows' `source`); None: ``source``
    stat: str | None = None         # storage.fingerprint from the listing (rows' `source_stat`); None: not listed

    @property
    def source_path(self) -> str:
        """What a row's ``source`` says: ``input_path``, else ``source``."""
        return self.input_path if self.input_path is not None else self.source


def image_ids(sources: list[str]) -> list[str]:
    """Readable, unique ids: the file stem, made safe for paths (ASCII letters, digits, ``_.-``; no separators, no
    leading dot: never a hidden file or a step up in the run folder), cut to MAX_ID_LENGTH characters; a stem
    already taken, ignoring case (macOS and Windows disks do), gets the first free numeric suffix."""
    ids: list[str] = []
    taken: set[str] = set()
    next_suffix: dict[str, int] = {}
    for src in sources:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(src.rstrip("/")).stem).lstrip(".")[:MAX_ID_LENGTH] or "image"
        n = next_suffix.get(stem.casefold(), 0)
        image_id = stem if n == 0 else f"{stem}-{n}"
        while image_id.casefold() in taken:            # "a.png", "a.jpg", "a-1.png": the third is a-1-1
            n += 1
            image_id = f"{stem}-{n}"
        next_suffix[stem.casefold()] = n + 1
        taken.add(image_id.casefold())
        ids.append(image_id)
    return ids


def image_sources(sources: list[str], input_paths: list[str] | None = None,
                  stats: list[str | None] | None = None) -> list[ImageSource]:
    """``sources`` (paths or URIs, in the order given) with their ids, their paths relative to the input root
    (default: each source as given) and their listings' fingerprints (default: none)."""
    paths = input_paths if input_paths is not None else sources
    stats = stats if stats is not None else [None] * len(sources)
    return [ImageSource(s, i, p, f) for s, i, p, f in zip(sources, image_ids(sources), paths, stats, strict=True)]


def list_images(input_uri: str, limit: int | None = None, exclude: str | None = None) -> list[ImageSource]:
    """The image files under ``input_uri`` (recursively; by extension, IMAGE_EXTENSIONS; hidden files and
    folders skipped, such as macOS's ``._IMG.jpg`` and ``.thumbnails/``; and those under the folder ``exclude``:
    a run's output kept inside its input, whose previews and aligned faces are not inputs), sorted by path.

    ``limit`` keeps the first ``limit`` of them. A single image file is a dataset of one. Raises ValueError for a
    ``limit`` under 1, FileNotFoundError when ``input_uri`` does not exist or holds no image file, and
    ConnectionError (``input_uri URI: list failed after N attempt(s) …``) when its storage cannot be reached within
    gani_core.storage's retries.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 (or None for every image), got {limit}")
    fs, root = storage.resolve(input_uri)
    # Retried while the storage cannot be reached, which then raises ConnectionError naming input_uri: s3fs's own
    # exists() and isfile() answer False instead (for a bucket's root), and the input would look missing.
    found = storage.with_retries("list", f"input_uri {input_uri}", functools.partial(_files, fs, root))
    if found is None:
        raise FileNotFoundError(f"input_uri {input_uri}: no such folder or object")
    out = posixpath.normpath(storage.resolve(exclude)[1]) + "/" if exclude is not None else None
    visible = [p for p in found if not any(part.startswith(".") and part not in (".", "..")
                                           for part in _below(p, root)) and not (out and p.startswith(out))]
    images = sorted(p for p in visible if PurePosixPath(p).suffix.lower() in IMAGE_EXTENSIONS)[:limit]
    if not images and out and any(p.startswith(out) for p in found):
        raise FileNotFoundError(f"input_uri {input_uri}: no image files under it but in the output folder {exclude}")
    if not images:
        others = sorted(PurePosixPath(p).name for p in visible)
        seen = f"; it holds {len(others)} other file(s), such as {others[0]!r}" if others else ""
        raise FileNotFoundError(
            f"input_uri {input_uri}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under it{seen}"
        )
    return image_sources([p if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(p) for p in images],
                         ["/".join(_below(p, root)) for p in images],
                         [storage.fingerprint(found[p]) for p in images])


def _files(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, dict] | None:
    """Every file under the folder ``root`` (or ``root`` when it is a file) with what the listing says of it (size,
    modification time or ETag); None when it does not exist. Asked of the storage now (not a cached listing), so that
    an unreachable storage raises."""
    fs.invalidate_cache(root)
    try:
        info = fs.info(root)
    except FileNotFoundError:
        return None
    return {root: info} if info["type"] == "file" else fs.find(root, detail=True)


def _below(path: str, root: str) -> tuple[str, ...]:
    """The parts of ``path`` under the folder ``root`` (the file's own name when ``path`` is ``root``)."""
    try:
        return PurePosixPath(path).relative_to(root).parts or (PurePosixPath(path).name,)
    except ValueError:              # a listing that spells the root differently: judge the file's own name
        return (PurePosixPath(path).name,)
