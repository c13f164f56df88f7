"""Image files aligned into a folder (local or ``s3://``): ``NAME.png`` per input and the table ``alignment.parquet``.

What the folder holds, and the contract of each file:

    NAME.png            the aligned face, RESOLUTION px square, named by the input's image id; written per image,
                        atomically (gani_core.storage)
    alignment.parquet   a row per image aligned there (TABLE_SCHEMA): what was found, or why not; written whole by
                        the caller (write_table), which keeps the rows of the other images already there

A row is reused (the image is not aligned again) when its input's bytes are the same (the listing's fingerprint of
the same source, else the bytes' sha256), at the same resolution and RECIPE, and, when ok, its ``NAME.png`` is
there: the result would be the same. The first case, which reads no input, is ``kept_without_reading`` (the
align-dataset flow keeps those rows in the flow, before any task). Unreadable inputs are tried again.

One name, one photo: an input never replaces an aligned face made from another source (``source_uri``) with other
bytes. Its row is failed, saying so and naming both sources, and is not stored (NOT_STORED): the table keeps the
other source's row and NAME.png stays. Removing NAME.png (or another output folder) frees the name. The same source
with new bytes (a photo edited in place) is aligned again. Two inputs of one call that would get the same name
(``a/face.jpg``, ``b/face.png``) are refused before anything is written: ``check_names``.

``align_sources`` aligns a list of images and returns their rows (a flow's task; no table write, so tasks on many
workers never write the same object); ``align_to_folder`` is the whole job in one process (`gani align`): read the
table, align, write the table (also every TABLE_WRITE_SECONDS, and when interrupted).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable

import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from gani_core import storage
from gani_core.dataset import ImageSource, image_ids
from gani_core.errors import GaniError, ImageError
from gani_core.faces.align import align_file
from gani_core.images import read_image_bytes

TABLE = "alignment.parquet"
RECIPE = "ffhq-dlib68"          # the alignment a row was made with; a row of another recipe is not reused
TABLE_WRITE_SECONDS = 300.0     # align_to_folder writes the table at least this often

_COORDS = pa.list_(pa.float32())      # variable-size lists: Parquet reads back no null fixed-size one
_POINTS = pa.list_(_COORDS)
TABLE_SCHEMA = pa.schema([
    ("image_id", pa.string()),          # names the output, NAME.png
    ("source", pa.string()),            # the input's path (under its folder, as the run rows' `source`)
    ("source_uri", pa.string()),        # the input's full URI (file:///… or s3://…): which file it is (null: older)
    ("source_stat", pa.string()),       # the listing's fingerprint of the input (storage.fingerprint; null: unknown)
    ("image_sha256", pa.string()),      # of the input's bytes (null: unreadable)
    ("resolution", pa.int64()),         # px of the output's side
    ("recipe", pa.string()),            # RECIPE
    ("status", pa.string()),            # ok, no_face (no face found), failed (unreadable, or the face too small)
    ("reason", pa.string()),            # why not ok, one line
    ("faces_seen", pa.int64()),         # faces the detector found (null: the image could not be read)
    ("boxes", _POINTS),                 # [faces_seen][4] left, top, right, bottom, input pixels
    ("box", _COORDS),                   # the chosen face's box (gani_core.faces.detect's rule: the largest)
    ("landmarks", _POINTS),             # [68][2] x, y of the chosen face, input pixels (after EXIF rotation)
    ("quad", _POINTS),                  # [4][2] the FFHQ quad: top left, bottom left, bottom right, top right
    ("output", pa.string()),            # NAME.png when ok, else null
    ("aligned_sha256", pa.string()),    # of NAME.png's bytes
])

# Called once per image as it ends: its row, and whether it was reused from the table.
OnRow = Callable[[dict, bool], None]

# A key of a row that is reported but not stored (write_table skips it): the image would have replaced the aligned
# face of another source, whose row the table keeps.
NOT_STORED = "not_stored"


class NameClashError(GaniError):
    """Two inputs of one call would be aligned to the same NAME.png."""


def output_name(image_id: str) -> str:
    return f"{image_id}.png"


def source_uri(image: ImageSource) -> str:
    """Which file ``image`` is, whatever the spelling it was given in: its full URI (``file:///abs/a.jpg``,
    ``s3://bucket/a.jpg``)."""
    fs, path = storage.resolve(image.source)
    return fs.unstrip_protocol(os.path.normpath(path) if isinstance(fs, LocalFileSystem) else path)


def check_names(images: list[ImageSource], out_uri: str) -> None:
    """Refuse, in one line (NameClashError), ``images`` of which two would be aligned to the same NAME.png in
    ``out_uri``: file names that differ only in their extension, case or characters a name does not keep
    (gani_core.dataset.image_ids). Numbered names (``face-1``) would depend on which inputs a call is given."""
    first: dict[str, tuple[ImageSource, str]] = {}
    clashes: list[tuple[ImageSource, ImageSource, str]] = []
    for image in images:
        name = image_ids([image.source])[0]
        seen, seen_name = first.setdefault(name.casefold(), (image, name))
        if seen is not image:
            clashes.append((seen, image, seen_name))
    if clashes:
        a, b, name = clashes[0]
        more = f" (and {len(clashes) - 1} more input(s) whose name is taken)" if len(clashes) > 1 else ""
        raise NameClashError(f"{a.source_path} and {b.source_path} would both be aligned to {output_name(name)} in "
                             f"{out_uri}{more}: align them into different folders, or rename one")


def read_table(out_uri: str) -> dict[str, dict]:
    """The rows of ``out_uri``'s alignment.parquet by image id (empty when there is none)."""
    uri = storage.join(out_uri, TABLE)
    if not storage.exists(uri):
        return {}
    return {row["image_id"]: row for row in storage.read_parquet(uri).to_pylist()}


def reusable_rows(out_uri: str) -> dict[str, dict]:
    """The table's rows that may be reused (the module docstring): those not ok, and the ok ones whose NAME.png is
    there. One read of the table and one listing."""
    rows = read_table(out_uri)
    present = storage.names_under(out_uri) if rows else set()
    return {image_id: row for image_id, row in rows.items()
            if row["status"] != "ok" or row["output"] in present}


def write_table(out_uri: str, rows: list[dict]) -> str:
    """Write ``rows`` into ``out_uri``'s alignment.parquet, keeping the rows of other images already there (a row
    replaces the one of its image id; a NOT_STORED row is skipped); its URI."""
    merged = read_table(out_uri)
    merged.update({row["image_id"]: row for row in rows if not row.get(NOT_STORED)})
    ordered = [merged[key] for key in sorted(merged)]
    uri = storage.join(out_uri, TABLE)
    storage.write_parquet(uri, pa.Table.from_pylist([{n: r.get(n) for n in TABLE_SCHEMA.names} for r in ordered],
                                                    schema=TABLE_SCHEMA))
    return uri


def align_sources(images: list[ImageSource], out_uri: str, resolution: int, kept: dict[str, dict] | None = None,
                  on_row: OnRow | None = None) -> list[dict]:
    """Align ``images`` into ``out_uri`` (``NAME.png`` each) at ``resolution`` px; one TABLE_SCHEMA row per image,
    in order. ``kept``: the reusable rows (default: ``reusable_rows(out_uri)``, one read). An image without a face,
    or that cannot be read, is a row saying why (never an exception); storage errors raise."""
    if kept is None:
        kept = reusable_rows(out_uri)
    rows = []
    for image in images:
        row, reused = _align_one(image, out_uri, resolution, kept.get(image.image_id))
        rows.append(row)
        if on_row is not None:
            on_row(row, reused)
    return rows


def align_to_folder(images: list[ImageSource], out_uri: str, resolution: int,
                    on_row: OnRow | None = None) -> list[dict]:
    """`gani align` in one process: ``align_sources`` with the folder's reusable rows, the table written at the
    end, every TABLE_WRITE_SECONDS and when interrupted (the outputs already written are then kept on a rerun)."""
    kept = reusable_rows(out_uri)
    done: list[dict] = []
    last_write = time.monotonic()

    def collect(row: dict, reused: bool) -> None:
        nonlocal last_write
        done.append(row)
        if on_row is not None:
            on_row(row, reused)
        if time.monotonic() - last_write > TABLE_WRITE_SECONDS:
            write_table(out_uri, done)
            last_write = time.monotonic()

    try:
        align_sources(images, out_uri, resolution, kept, collect)
    finally:
        if done:
            write_table(out_uri, done)
    return done


def kept_without_reading(row: dict | None, image: ImageSource, resolution: int) -> bool:
    """Whether ``row``, the reusable stored row of ``image`` (:func:`reusable_rows`; None: none), is kept without
    reading the image: made at ``resolution`` with RECIPE from bytes it read, from the same source, and the
    listing's fingerprint of the image is the one it recorded."""
    return (row is not None and _same_settings(row, resolution) and image.stat is not None
            and row["source_stat"] == image.stat and _same_source(row, image))


def _same_source(row: dict, image: ImageSource) -> bool:
    """Whether ``row`` was made from ``image``'s file (its ``source_uri``; a row written before it: ``source``)."""
    recorded = row.get("source_uri")
    return recorded == source_uri(image) if recorded else row["source"] == image.source_path


def _replaces(row: dict, image: ImageSource, out_uri: str) -> str:
    """Why ``image`` may not replace the aligned face of ``row``, another source's, in ``out_uri``: one line."""
    ours, theirs = image.source_path, row["source"]
    if ours == theirs:          # the same path under two input folders (a flow's paths are relative)
        ours, theirs = source_uri(image), row.get("source_uri") or theirs
    return (f"{row['output']} in {out_uri} was aligned from {theirs}; {ours} would replace it: use another output "
            "folder or remove it")


def _same_settings(row: dict, resolution: int) -> bool:
    return row["resolution"] == resolution and row["recipe"] == RECIPE and row["image_sha256"] is not None


def _align_one(image: ImageSource, out_uri: str, resolution: int, prior: dict | None) -> tuple[dict, bool]:
    """The row of one image and whether it is ``prior``'s: reused (same settings) when the listing says the input is
    unchanged (no read) or its bytes are the same, else aligned now; refused (a failed row, NOT_STORED) when it
    would replace the aligned face of another source with other bytes, or cannot be read beside one."""
    if kept_without_reading(prior, image, resolution):
        return prior, True
    other = prior if prior is not None and prior["status"] == "ok" and not _same_source(prior, image) else None
    if prior is not None and not _same_settings(prior, resolution):
        prior = None
    base = {"image_id": image.image_id, "source": image.source_path, "source_uri": source_uri(image),
            "source_stat": image.stat, "resolution": resolution, "recipe": RECIPE}
    try:
        data = read_image_bytes(image.source, image.source_path)
    except ImageError as exc:
        return {**base, "status": "failed", "reason": str(exc), **({NOT_STORED: True} if other else {})}, False
    sha256 = hashlib.sha256(data).hexdigest()
    if prior is not None and prior["image_sha256"] == sha256:
        if other is not None:       # the same bytes at another path: the face stays the first file's, and its row
            return prior, True
        return {**prior, "source": image.source_path, "source_uri": base["source_uri"], "source_stat": image.stat}, True
    base["image_sha256"] = sha256
    if other is not None and other["image_sha256"] != sha256:
        return {**base, "status": "failed", "reason": _replaces(other, image, out_uri), NOT_STORED: True}, False
    try:
        alignment = align_file(data, resolution, name=image.source_path)
    except ImageError as exc:
        return {**base, "status": "failed", "reason": str(exc)}, False
    row = {**base, "status": alignment.status, "reason": alignment.reason, **alignment.record()}
    if alignment.status == "ok":
        png = alignment.png()
        storage.write_bytes(storage.join(out_uri, output_name(image.image_id)), png)
        row.update(output=output_name(image.image_id), aligned_sha256=hashlib.sha256(png).hexdigest())
    return row, False
