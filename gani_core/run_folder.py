"""A run's folder (a local path or ``s3://bucket/prefix``): every path in it, the one schema of its result rows,
writing and reading them, and the resume rule.

    OUT/rows/part-METHOD-KEY.parquet    the rows of one batch of results, written as soon as the batch is done (what
                                        a rerun resumes from; rows/IMAGE.METHOD.json: one row, as gani wrote them
                                        before issue 18, still read)
    OUT/deltas/IMAGE.METHOD.parquet     the encoded weight deltas of one result (gani_core.deltas.DELTAS_SCHEMA),
                                        and its pivot latent in the file's metadata (``w_pivot``)
    OUT/previews/IMAGE.METHOD.png       input | pivot | tuned | edit, each column labelled (the edit: which)
    OUT/configs/CONFIG_HASH.json        each configuration a run used (InvertConfig), written when the run starts
    OUT/metrics.parquet                 one row per image x method (METRICS_SCHEMA): every valid result in the folder
    OUT/summary.json                    the tables: checkpoint, counts, and per method its configs (hash -> config),
                                        failures and means
    OUT/preview_grid.png                the first PREVIEW_GRID_MAX previews of the run, stacked (a caption says
                                        so when there are more)

The folder's rows (:meth:`RunFolder.stored_rows`) are the last tables (``metrics.parquet``) and what was written
under ``rows/`` since (a part whose time is not before the table's), the newest row per image x method winning (its
``finished`` time): a resume reads one table and a few parts, not a file per image. The tables hold every valid
result of the folder, whichever invocation made it (:meth:`RunFolder.table_rows`): the rows of this run, and every
other stored row (a row of gani before issue 18 only when ok with its deltas, or failed; a part is written after its
results' files). A row names its configuration by ``config_hash``; a rerun of a method with another configuration
replaces the rows of the images it covers (one row per image x method), and keeps the others. Until the tables are
written (a run in progress or interrupted), :meth:`RunFolder.read_run` builds them from ``rows/`` and says so.

Resume rule (:meth:`RunFolder.reusable_rows`): an image's row is kept when its image is the one it was computed
from, its ``checkpoint_sha256`` equals this run's, its ``config_hash`` is one of this run's
``InvertConfig.resume_hashes()`` (today's, or the one gani wrote before issue 17's renames), and it is either ``ok``
or failed because of the image itself (``ImageError``, unreadable, or ``NoFaceError``, no face to align: the same
bytes fail the same way). Other failures (a storage hiccup, a lost worker, an unreadable checkpoint) are computed
again. The image is the same when the listing's fingerprint of the file (size and ETag or modification time:
``source_stat``) equals the row's, without reading it; otherwise (a row without one, a file touched or copied) when
the file's bytes hash to the row's ``image_sha256`` (``source_sha256`` for a row of an aligned run, whose
``image_sha256`` is the aligned face's). Alignment is part of the configuration (``InvertConfig.align``): a run with
alignment never keeps a row made without it, nor the reverse.

Every file is written atomically (gani_core.storage): a reader or a crash never sees half of one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

import gani_core
from gani_core import deltas as deltas_mod
from gani_core import storage
from gani_core.checkpoints.ref import CheckpointRef
from gani_core.dataset import ImageSource
from gani_core.errors import GaniError, reason
from gani_core.invert import InversionResult, InvertConfig
from gani_core.measure import PREVIEW_CELLS
from gani_core.metric_registry import check_names, names, parquet_field
from gani_core.metric_registry import summarise as summarise_metrics
from gani_core.metrics import finite_or_none, metric_notes
from gani_core.render import save_grid, stack_pngs

# The columns shown to people (gani show, gani invert, the Prefect table artifact): a result's ``names("run")``, the
# metrics that a run's summary, its MLflow run and the nightly comparison report per method.
DISPLAY_COLUMNS = ("image_id", "method", "status", *names("run"), "source", "error")


# The metric columns come from the registry (gani_core.metric_registry); the others are a result's record.
METRICS_SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("source", pa.string()),        # the image's path relative to the input root (null in rows written before it)
    ("source_stat", pa.string()),   # the listing's fingerprint of the file (storage.fingerprint; null: unknown)
    ("image_sha256", pa.string()),  # of the image inverted: the file's bytes, or with `align` the aligned face's PNG
    ("source_sha256", pa.string()), # with `align`: of the file's bytes (the resume rule's); null without
    ("method", pa.string()),
    ("status", pa.string()), ("error", pa.string()),
    *[parquet_field(m) for m in names("result")],      # edit_accuracy: null without factor directions and a probe
    ("id_note", pa.string()),       # why id_similarity is null in a run that measures it (InvertConfig.identity)
    parquet_field("seconds"), ("seconds_pivot", pa.float64()), ("seconds_tune", pa.float64()),
    ("seconds_metrics", pa.float64()), ("pivot_steps", pa.int64()), ("tune_steps", pa.int64()),
    ("seconds_per_tune_step", pa.float64()), parquet_field("delta_bytes"), ("delta_lpips_change", pa.float64()),
    ("deltas_file_bytes", pa.int64()),  # the size of deltas/IMAGE.METHOD.parquet as written (the resume rule's check)
    ("peak_memory_mb", pa.float64()),
    ("checkpoint", pa.string()), ("checkpoint_sha256", pa.string()), ("generator_label", pa.string()),
    ("resolution", pa.int64()),     # px of the generator's images, at which the metrics were computed (ok rows)
    # The alignment of the input (InvertConfig.align; null without): enough to make the aligned image again from the
    # file (gani_core.faces.ffhq.warp_quad of the EXIF-rotated photo at `resolution`); the 68 landmarks are not kept
    # (0.5-1 KB a row; `gani align`'s table has them).
    ("align", pa.string()),         # the recipe: ffhq
    ("faces_seen", pa.int64()),     # faces the detector found in the file (the largest confident one is aligned)
    ("face_box", pa.list_(pa.float64())),                   # [4] its box: left, top, right, bottom, file pixels
    ("face_quad", pa.list_(pa.list_(pa.float64()))),        # [4][2] its FFHQ quad, file pixels (ffhq.ffhq_quad)
    ("config_hash", pa.string()), ("seed", pa.int64()), ("device", pa.string()), ("gani_version", pa.string()),
    ("finished", pa.float64()),     # when the row was made (seconds since the epoch): the newest row of a result wins
])

# The failures of an image itself, kept by the resume rule (the same bytes and configuration fail the same way): an
# ImageError, and its NoFaceError (gani_core.faces: no face to align), as their rows' `error` begins.
IMAGE_FAILURES = ("ImageError", "NoFaceError")

# A part written this long before the table it is compared with still counts as written after it (clock skew between
# the writers of a shared folder; reading a part twice is harmless: the newest row wins).
CLOCK_MARGIN = 5.0

PREVIEW_GRID_MAX = 16       # previews in preview_grid.png (all of them are under previews/)
PREVIEW_CELL_MIN = 192      # preview cells are upscaled (nearest, by a whole factor) to at least this many pixels
# ... and larger ones downscaled (area) to this many: a preview of four 1024 px cells took 0.79 s to encode and
# 8.2 MiB (8 TB for a million images); of four 256 px cells 58 ms and 0.5 MiB. The exported generator renders in full.
PREVIEW_CELL_MAX = 256


def preview_labels(edit_label: str | None = None) -> tuple[str, ...]:
    """The column labels of a preview: input, pivot, tuned, and the edit (measure.preview_edit_label, which says
    which edit; "edit" where the result does not say)."""
    return (*PREVIEW_CELLS[:-1], edit_label or PREVIEW_CELLS[-1])


def save_preview(result: InversionResult, generator_label: str, uri: str) -> str:
    """previews/IMAGE.METHOD.png: the result's input, pivot, tuned and edit cells side by side (upscaled by a whole
    factor to at least PREVIEW_CELL_MIN px, or downscaled to PREVIEW_CELL_MAX px), each column labelled
    (:func:`preview_labels`), then the caption."""
    caption = f"{result.image_id} | {result.method} | {generator_label}"
    size = result.previews.shape[-1]
    scale = -(-PREVIEW_CELL_MIN // size)      # small generators' cells are hard to see
    previews = result.previews
    if size > PREVIEW_CELL_MAX:
        previews = F.interpolate(previews, size=(PREVIEW_CELL_MAX, PREVIEW_CELL_MAX), mode="area")
    # InversionResult.edit_label: set in invert._measure where the edit is chosen (measure.preview_edit_label).
    labels = preview_labels(result.edit_label)
    return save_grid(previews, uri, caption=caption, labels=labels, scale=scale)


def preview_grid_caption(shown: int, total: int) -> str:
    """The caption of preview_grid.png, which stacks the previews of the first PREVIEW_GRID_MAX ok results (one
    per image x method): empty when it shows all ``total`` of them, else how many of how many it shows."""
    if shown >= total:
        return ""
    return f"the first {shown} of {total} previews (all of them are in previews/)"


def _another_file(image: ImageSource, owners: Mapping[str, dict]) -> bool:
    """Whether the rows of ``image``'s id (``owners``) name another source, listed otherwise (maybe another file)."""
    row = owners.get(image.image_id.casefold())
    return row is not None and row["source"] != image.source_path and (
        image.stat is None or row.get("source_stat") != image.stat)


def _digests(images: list[ImageSource]) -> dict[str, str | None]:
    """The sha256 of each image's bytes by source (None: unreadable)."""
    raw = storage.read_many([im.source for im in images])
    return {uri: hashlib.sha256(data).hexdigest() if data is not None else None for uri, data in raw.items()}


def _hashes(row: dict) -> set[str]:
    """The hashes a row knows its file by: of its bytes (``source_sha256`` with alignment, else ``image_sha256``)."""
    return {h for h in (row.get("source_sha256"), row.get("image_sha256")) if h}


def _free_id(image_id: str, taken: Collection[str]) -> str:
    """``image_id``'s stem with the first numeric suffix not in ``taken`` (casefolded ids)."""
    stem, n = image_id, 1
    while f"{stem}-{n}".casefold() in taken:
        n += 1
    return f"{stem}-{n}"


RUN_ENTRIES = frozenset({"metrics.parquet", "summary.json", "configs"})    # what only a run folder holds

# What a command that reads a run wants, as its errors say it.
RUN_FOLDER = "give a run folder (the --out of gani invert, or a flow's output_uri)"


def result_key(image_id: str, method: str) -> str:
    """How one result (an image x a method) is named in the run folder."""
    return f"{image_id}.{method}"


def complete_row(fields: dict, cfg: InvertConfig, ckpt: CheckpointRef, generator_label: str | None = None,
                 device: str | None = None) -> dict:
    """A row of METRICS_SCHEMA: ``fields`` (image_id, method, status, error, metrics, ...) with the run-level
    columns, and every non-finite number as None."""
    row = {
        **fields, "checkpoint": ckpt.spec, "checkpoint_sha256": ckpt.sha256,
        "generator_label": generator_label or ckpt.label, "config_hash": cfg.config_hash(), "seed": cfg.seed,
        "device": device, "gani_version": gani_core.__version__, "finished": time.time(),
    }
    return {k: finite_or_none(v) for k, v in row.items()}


def failed_row(image_id: str, cfg: InvertConfig, ckpt: CheckpointRef, error: str, image_sha256: str | None = None,
               device: str | None = None, source: str | None = None, source_stat: str | None = None) -> dict:
    """The row of a result that failed, with its reason."""
    fields = {"image_id": image_id, "source": source, "source_stat": source_stat, "image_sha256": image_sha256,
              "method": cfg.method, "status": "failed", "error": error}
    return complete_row(fields, cfg, ckpt, device=device)


def rows_table(rows: Iterable[dict]) -> pa.Table:
    """The rows as a METRICS_SCHEMA table (columns a row lacks are null). A key that is no column of the schema (a
    misspelt metric) raises KeyError rather than being left out."""
    rows = list(rows)
    check_names({key for r in rows for key in r}, METRICS_SCHEMA.names, "metrics.parquet")
    return pa.Table.from_pydict({name: [r.get(name) for r in rows] for name in METRICS_SCHEMA.names},
                                schema=METRICS_SCHEMA)


def _as_row(stored: dict) -> dict:
    """A row read from a file of any gani version, with today's columns (null where it has none)."""
    return {name: stored.get(name) for name in METRICS_SCHEMA.names}


def _part_key(rows: list[dict]) -> str:
    """The name of a batch's part: its method, and a digest of its results and configuration, so that the same batch
    computed again (a task Dask ran again, a rerun of what failed) replaces its part instead of adding one."""
    keys = sorted(f"{result_key(r['image_id'], r['method'])}@{r.get('config_hash')}" for r in rows)
    return f"{rows[0]['method']}-{hashlib.sha256(chr(10).join(keys).encode()).hexdigest()[:20]}"


def summarise(rows: list[dict], configs: dict[str, InvertConfig], ckpt: CheckpointRef | None, out: str,
              started: float | None, stored_configs: dict[str, dict] | None = None, **extra: object) -> dict:
    """summary.json: the checkpoint, counts, and per method (this run's methods first, then the others the rows
    hold) its failures, the means of ``names("run")`` (metric_registry.summarise) and ``configs``, the configuration
    of each config hash its rows carry (this run's ``configs``, else ``stored_configs``, from configs/; None when
    no file holds it); ``config`` and ``config_hash``: this run's configuration of the method, or the only one its
    rows came from. ``notes``, what its numbers leave out, once for the run (metrics.metric_notes of each
    resolution its rows have: MS-SSIM with fewer scales, LPIPS under 64 px). Without ``ckpt`` (a folder read
    without a run), the checkpoint is the rows'."""
    stored_configs = stored_configs or {}
    known = {h: asdict(cfg) for cfg in configs.values() for h in cfg.resume_hashes()}
    order = [*configs, *sorted({r["method"] for r in rows} - set(configs))]
    methods: dict[str, dict] = {}
    for method in order:
        mine = [r for r in rows if r["method"] == method]
        ok = sum(r["status"] == "ok" for r in mine)
        means = {m: s["mean"] for m, s in summarise_metrics(mine, names("run")).items()}
        hashes = sorted({r["config_hash"] for r in mine if r.get("config_hash")})
        used = {h: known.get(h, stored_configs.get(h)) for h in hashes}
        if method in configs:
            cfg, cfg_hash = asdict(configs[method]), configs[method].config_hash()
        else:
            cfg_hash = hashes[0] if len(hashes) == 1 else None
            cfg = used.get(cfg_hash) if cfg_hash else None
        methods[method] = {
            "images": len(mine), "ok": ok, "failed": len(mine) - ok, "mean": means,
            "config": cfg, "config_hash": cfg_hash, "configs": used,
            "failures": {r["image_id"]: r["error"] for r in mine if r["status"] != "ok"},
        }
    labels = [r["generator_label"] for r in rows if r["status"] == "ok" and r.get("generator_label")]
    devices = sorted({r["device"] for r in rows if r.get("device")})
    notes = [n for size in sorted({r["resolution"] for r in rows if r.get("resolution")}) for n in metric_notes(size)]
    checkpoints = sorted({r["checkpoint"] for r in rows if r.get("checkpoint")})
    if ckpt is not None:
        spec, sha256, label = ckpt.spec, ckpt.sha256, ckpt.label
    else:
        first = next((r for r in rows if r.get("checkpoint")), {})
        spec, sha256, label = first.get("checkpoint"), first.get("checkpoint_sha256"), first.get("generator_label")
    return {
        "gani_version": gani_core.__version__, "checkpoint": spec, "checkpoint_sha256": sha256,
        "checkpoints": checkpoints, "generator_label": labels[0] if labels else label,
        "device": ",".join(devices) or "none", "output": out, "started": started, "finished": time.time(),
        "images": len({r["image_id"] for r in rows}), "rows": len(rows),
        "ok": sum(r["status"] == "ok" for r in rows), "failed": sum(r["status"] != "ok" for r in rows),
        "methods": methods, "notes": notes, **extra,
    }


def run_tables(folder: RunFolder, rows: list[dict], configs: dict[str, InvertConfig], ckpt: CheckpointRef,
               started: float, **extra: object) -> tuple[list[dict], dict]:
    """The tables' rows (``rows``, this run's, and every other valid result in ``folder``: RunFolder.table_rows) and
    their summary, with the configurations of the other rows read from configs/."""
    table = folder.table_rows(rows)
    mine = {h for cfg in configs.values() for h in cfg.resume_hashes()}
    stored = folder.read_configs({r["config_hash"] for r in table if r.get("config_hash")} - mine)
    return table, summarise(table, configs, ckpt, folder.uri, started, stored, **extra)


@dataclass
class StoredRun:
    """A run folder as :meth:`RunFolder.read_run` finds it."""

    rows: list[dict]            # every valid result, in table order
    summary: dict               # summary.json; built from the rows when the tables are missing or lack some
    complete: bool              # the tables were written and hold every row under rows/
    on_disk: int                # rows under rows/ the tables did not hold (0 when complete)
    tables: bool = True         # metrics.parquet and summary.json are there (maybe of an earlier run)
    damaged: str | None = None  # a table there that could not be read (its rows were read from rows/ instead)

    @property
    def incomplete_note(self) -> str | None:
        """One line saying that the tables do not hold every result yet, or could not be read (None when whole)."""
        if self.complete:
            return None
        if self.damaged:
            return (f"{len(self.rows)} result(s) on disk; {self.damaged}: made again from the rows on disk, and "
                    "written anew by the next run of the command that made it")
        what = f"the tables of an earlier run lack {self.on_disk} of them" if self.tables else "tables not written yet"
        return (f"incomplete: {len(self.rows)} result(s) on disk, {what} (interrupted or still running; rerun the "
                "same command to finish)")


class RunFolder:
    """The folder of one run; see the module docstring for its layout."""

    def __init__(self, uri: str) -> None:
        uri = str(uri)
        # A local folder is kept absolute, so that every path a run reports (summary, logs, MLflow) is usable as is.
        self.uri = (uri if "://" in uri else os.path.abspath(uri)).rstrip("/")

    def __repr__(self) -> str:
        return f"RunFolder({self.uri!r})"

    def path(self, *parts: str) -> str:
        return storage.join(self.uri, *parts)

    @property
    def metrics_uri(self) -> str:
        return self.path("metrics.parquet")

    @property
    def summary_uri(self) -> str:
        return self.path("summary.json")

    @property
    def grid_uri(self) -> str:
        return self.path("preview_grid.png")

    def row_uri(self, image_id: str, method: str) -> str:
        return self.path("rows", f"{result_key(image_id, method)}.json")

    def deltas_uri(self, image_id: str, method: str) -> str:
        return self.path("deltas", f"{result_key(image_id, method)}.parquet")

    def preview_uri(self, image_id: str, method: str) -> str:
        return self.path("previews", f"{result_key(image_id, method)}.png")

    def config_uri(self, config_hash: str) -> str:
        return self.path("configs", f"{config_hash}.json")

    # ------------------------------------------------------------------------------------------------
    # Writing

    def write_outputs(self, result: InversionResult, generator_label: str) -> int:
        """One result's deltas (with its pivot) and preview (its row goes last, in its batch's part:
        :meth:`write_part`; a row means done); the deltas file's size in bytes (the row's ``deltas_file_bytes``)."""
        table = deltas_mod.deltas_table(result.image_id, result.encoded)
        size = deltas_mod.write_deltas_parquet(table, self.deltas_uri(result.image_id, result.method), result.w_pivot)
        save_preview(result, generator_label, self.preview_uri(result.image_id, result.method))
        return size

    def write_part(self, rows: list[dict]) -> str | None:
        """The rows of one batch as rows/part-METHOD-KEY.parquet, written after their results' files; its URI (None
        for no rows)."""
        if not rows:
            return None
        uri = self.path("rows", f"part-{_part_key(rows)}.parquet")
        storage.write_parquet(uri, rows_table(rows))
        return uri

    def write_configs(self, configs: Iterable[InvertConfig]) -> None:
        """configs/CONFIG_HASH.json of each configuration, once per run folder (rows name theirs by hash)."""
        for cfg in configs:
            storage.write_bytes(self.config_uri(cfg.config_hash()), json.dumps(asdict(cfg), indent=2).encode())

    def write_tables(self, rows: list[dict], summary: dict) -> dict[str, str]:
        """metrics.parquet, summary.json and preview_grid.png (when a result is ok); their URIs by name."""
        storage.write_parquet(self.metrics_uri, rows_table(rows))
        storage.write_bytes(self.summary_uri, json.dumps(summary, indent=2).encode())
        written = {"metrics.parquet": self.metrics_uri, "summary.json": self.summary_uri}
        ok = [r for r in rows if r["status"] == "ok"]
        shown = ok[:PREVIEW_GRID_MAX]
        previews = storage.read_many([self.preview_uri(r["image_id"], r["method"]) for r in shown]) if shown else {}
        pngs = [d for d in previews.values() if d]
        grid = stack_pngs(pngs, caption=preview_grid_caption(len(pngs), len(ok)))
        if grid is not None:
            storage.write_bytes(self.grid_uri, grid)
            written["preview_grid.png"] = self.grid_uri
        return written

    # ------------------------------------------------------------------------------------------------
    # Reading

    def stored_rows(self) -> dict[tuple[str, str], dict]:
        """Every row stored in the folder, newest per (image_id, method) (the module docstring): the table's rows in
        its order, then the others by name."""
        return self._stored().rows

    def _stored(self) -> _Stored:
        root = self._root()
        table_time = root.get("metrics.parquet") if "summary.json" in root else None
        damaged = None
        if table_time is not None:
            try:
                table = storage.read_parquet(self.metrics_uri).to_pylist()
            except (pa.ArrowException, ValueError) as exc:     # cut short, overwritten: every part holds its rows
                damaged = f"{self.metrics_uri} is not a readable table ({reason(exc)})"
                table_time = None
        entries = storage.modified_under(self.path("rows"))

        def since(name: str) -> bool:
            return table_time is None or entries[name] >= table_time - CLOCK_MARGIN

        parts = sorted(n for n in entries if n.startswith("part-") and n.endswith(".parquet") and since(n))
        legacy = sorted(n for n in entries if n.endswith(".json") and not n.startswith(".") and since(n))
        rows: dict[tuple[str, str], dict] = {}
        if table_time is not None:
            for row in table:
                rows[(row["image_id"], row["method"])] = _as_row(row)
        in_table = dict(rows)
        newer = [*self._legacy_rows(legacy), *self._part_rows(parts)]
        for row in sorted(newer, key=lambda r: r.get("finished") or 0.0):   # the newest row of a result wins
            rows[(row["image_id"], row["method"])] = row
        # Parts written shortly before the table are in it already: only rows it lacks, or holds otherwise, are later.
        later = sum(in_table.get(key) != row for key, row in rows.items())
        ordered = dict(sorted(rows.items())) if table_time is None else rows
        return _Stored(ordered, table_time is not None, later, damaged)

    def _root(self) -> dict[str, float]:
        """The folder's entries (:func:`storage.modified_under`), refusing in one line (GaniError) a path that is a
        file or an edits folder (gani edit's output: its rows/ hold edits, not results)."""
        fs, path = storage.resolve(self.uri)
        if storage.with_retries("stat", self.uri, lambda: fs.isfile(path)):
            raise GaniError(f"{self.uri} is a file; {RUN_FOLDER}")
        root = storage.modified_under(self.uri)
        if not root and not storage.exists(self.uri):
            raise FileNotFoundError(f"{self.uri}: no such folder; {RUN_FOLDER}")
        if "edits.parquet" in root and "metrics.parquet" not in root:
            raise GaniError(f"{self.uri} is an edits folder (gani edit's output); give the run folder it was made "
                            "from")
        return root

    def _part_rows(self, names: list[str]) -> list[dict]:
        """The rows of the parts ``names`` under rows/ (one that cannot be parsed is skipped: it was never whole)."""
        found = []
        raw = storage.read_many([self.path("rows", n) for n in names]) if names else {}
        for data in raw.values():
            try:
                found += [_as_row(r) for r in pq.read_table(pa.BufferReader(data)).to_pylist()] if data else []
            except (pa.ArrowInvalid, OSError):
                continue
        return found

    def _legacy_rows(self, names: list[str]) -> list[dict]:
        """The rows of gani before issue 18 (rows/IMAGE.METHOD.json) ``names``: those ok with their deltas file, or
        failed (an ok row without deltas was cut short). They come before any part (no ``finished``)."""
        if not names:
            return []
        delta_names = storage.names_under(self.path("deltas"))
        raw = storage.read_many([self.path("rows", n) for n in names])
        found = []
        for name, data in zip(names, raw.values(), strict=True):
            try:
                row = json.loads(data or b"null")
            except ValueError:
                continue
            if not isinstance(row, dict) or (row.get("status") == "ok" and
                                             f"{name[: -len('.json')]}.parquet" not in delta_names):
                continue
            found.append(_as_row(row))
        return found

    def ids_tied_to_sources(self, images: list[ImageSource], stored: Mapping[tuple[str, str], dict] | None = None,
                            ) -> list[ImageSource]:
        """``images`` with their ids tied to their files across the runs into this folder (``stored``:
        :meth:`stored_rows`). An id names one file: an image whose file the folder's rows (their ``source``) hold
        under another id takes that id; an image whose id the rows hold for another file (another ``source``, and
        another listing fingerprint and bytes) takes the first free ``STEM-N``. Without this, ``gani invert
        a/img.jpg`` then ``gani invert b/img.jpg`` into one folder replaced a's result with b's. Rows without a
        source (before issue 17) tie nothing. Reads the bytes of an image only when its id's rows name another
        source and another fingerprint (to tell a moved file from another one)."""
        stored = self.stored_rows() if stored is None else stored
        owners: dict[str, dict] = {}                        # id -> a row naming its file
        ids: dict[str, str] = {}                            # source -> its id
        for (image_id, _), row in stored.items():
            if row.get("source"):
                owners.setdefault(image_id.casefold(), row)
                ids.setdefault(row["source"], image_id)
        if not owners:
            return images
        tied = {i: ids[im.source_path] for i, im in enumerate(images) if ids.get(im.source_path) not in (None,
                                                                                                          im.image_id)}
        used = {image_id.casefold() for image_id in tied.values()}
        other = [i for i, im in enumerate(images) if i not in tied and (im.image_id.casefold() in used or
                                                                        _another_file(im, owners))]
        if other:
            digests = _digests([images[i] for i in other])
            other = [i for i in other if images[i].image_id.casefold() in used
                     or digests[images[i].source] not in _hashes(owners[images[i].image_id.casefold()])]
        taken = used | set(owners) | {im.image_id.casefold() for im in images}
        for i in other:
            tied[i] = _free_id(images[i].image_id, taken)
            taken.add(tied[i].casefold())
        return [dataclasses.replace(im, image_id=tied[i]) if i in tied else im for i, im in enumerate(images)]

    def reusable_rows(self, images: list[ImageSource], config_hashes: dict[str, Collection[str]],
                      checkpoint_sha256: str, stored: Mapping[tuple[str, str], dict] | None = None,
                      ) -> dict[tuple[str, str], dict]:
        """The stored rows that a run of ``images`` keeps (the resume rule), by (image_id, method);
        ``config_hashes`` maps each method to the config hashes its rows may carry (InvertConfig.resume_hashes:
        today's, and the one gani wrote before issue 17). ``stored``: :meth:`stored_rows`, when the caller has
        read them already. An image is read and hashed only when its listing's fingerprint is not the one its row
        recorded. An ok row whose deltas file deltas/ does not list, lists empty or at another size than the row
        recorded is not kept (its result is gone or damaged)."""
        stored = self.stored_rows() if stored is None else stored
        rows = {(ref.image_id, m): row for ref in images for m in config_hashes
                if (row := stored.get((ref.image_id, m))) is not None
                and _reusable(row, checkpoint_sha256, config_hashes[m])}
        by_id = {ref.image_id: ref for ref in images}

        def listed_unchanged(image_id: str, row: dict) -> bool:
            return by_id[image_id].stat is not None and row.get("source_stat") == by_id[image_id].stat

        unsure = sorted({by_id[i].source for (i, _), row in rows.items() if not listed_unchanged(i, row)})
        digests = {u: hashlib.sha256(d).hexdigest() if d is not None else None
                   for u, d in (storage.read_many(unsure) if unsure else {}).items()}

        def same_image(image_id: str, row: dict) -> bool:
            if listed_unchanged(image_id, row):
                return True
            expected = row.get("source_sha256") or row.get("image_sha256")     # an aligned row: of its file
            return expected is not None and expected == digests[by_id[image_id].source]

        # An ok result whose deltas file is gone (deleted, moved) or not the file its row recorded (truncated,
        # overwritten: another size) is computed again: deltas/ listed once, no deltas file read.
        results = storage.sizes_under(self.path("deltas")) if any(r["status"] == "ok" for r in rows.values()) else {}

        def whole(key: tuple[str, str], row: dict) -> bool:
            if row["status"] != "ok":
                return True
            return storage.listed_whole(results, f"{result_key(*key)}.parquet", row.get("deltas_file_bytes"))

        # The same name may now hold other bytes: a row counts only for the image it was computed from.
        return {key: row for key, row in rows.items() if whole(key, row) and same_image(key[0], row)}

    def table_rows(self, known: Iterable[dict] = ()) -> list[dict]:
        """Every valid result in the folder: the ``known`` rows (this run's, in memory) as they are, in their order,
        then every other stored row (:meth:`stored_rows`)."""
        rows = {(r["image_id"], r["method"]): r for r in known}
        return [*rows.values(), *(r for key, r in self.stored_rows().items() if key not in rows)]

    def read_configs(self, hashes: Collection[str]) -> dict[str, dict]:
        """The stored configurations (configs/HASH.json) of ``hashes`` that have one; configs/ listed once."""
        on_disk = storage.names_under(self.path("configs")) if hashes else set()
        uris = {h: self.config_uri(h) for h in sorted(hashes) if f"{h}.json" in on_disk}
        raw = storage.read_many(list(uris.values())) if uris else {}
        return {h: json.loads(raw[u]) for h, u in uris.items() if raw.get(u)}

    def read_run(self) -> StoredRun:
        """The run's rows and summary: metrics.parquet and summary.json, with the rows written under ``rows/`` since
        (a run in progress or interrupted: ``complete`` False, and the summary built from the rows). Raises
        FileNotFoundError when the folder holds neither tables nor rows."""
        stored = self._stored()
        if not stored.rows and storage.names_under(self.path("configs")):
            raise FileNotFoundError(f"{self.uri}: a run started here but no result is done yet (interrupted before its "
                                    "first batch ended, or still running); rerun its command to continue")
        if not stored.rows:
            raise FileNotFoundError(f"{self.uri}: no metrics.parquet and no rows/ here; is it the output of a gani "
                                    "run?")
        rows = list(stored.rows.values())
        damaged = stored.damaged
        if stored.table and not stored.later:
            try:
                return StoredRun(rows, json.loads(storage.read_bytes(self.summary_uri)), True, 0)
            except (ValueError, UnicodeDecodeError) as exc:    # cut short, overwritten: made again from the rows
                damaged = f"{self.summary_uri} is not readable JSON ({reason(exc)})"
        configs = self.read_configs({r["config_hash"] for r in rows if r.get("config_hash")})
        return StoredRun(rows, summarise(rows, {}, None, self.uri, None, configs), False, stored.later,
                         stored.table and damaged is None, damaged)

    def read_rows(self) -> list[dict]:
        """Every valid result of the run (:meth:`read_run`)."""
        return self.read_run().rows

    def read_summary(self) -> dict:
        """summary.json, or the summary of the rows on disk while it is not written (:meth:`read_run`)."""
        return self.read_run().summary

    def read_deltas(self, image_id: str, method: str) -> dict[str, torch.Tensor]:
        """The decoded weight deltas of one result, by layer name (apply with gani_core.deltas.apply_deltas)."""
        table = deltas_mod.read_deltas_parquet(self.deltas_uri(image_id, method))
        return deltas_mod.decode_deltas(deltas_mod.rows_from_table(table, image_id=image_id))

    def read_result(self, image_id: str, method: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The decoded weight deltas of one result (by layer name) and its pivot latent ([num_ws, w_dim]; flattened
        for a result of gani before issue 18), from one read of its deltas file: what :meth:`read_deltas` and
        :meth:`read_pivot` give, for half the reads (one GET on S3, not two)."""
        table = deltas_mod.read_deltas_parquet(self.deltas_uri(image_id, method))
        deltas = deltas_mod.decode_deltas(deltas_mod.rows_from_table(table, image_id=image_id))
        pivot = deltas_mod.pivot_from_metadata(table.schema.metadata)
        return deltas, pivot if pivot is not None else self.read_pivot(image_id, method)  # before issue 18: its row

    def read_pivot(self, image_id: str, method: str) -> torch.Tensor:
        """The pivot latent of one result, [num_ws, w_dim] (flattened, [num_ws * w_dim], for a result of gani
        before issue 18, which kept it as text in its row)."""
        pivot = deltas_mod.read_pivot(self.deltas_uri(image_id, method))
        if pivot is not None:
            return pivot
        row = json.loads(storage.read_bytes(self.row_uri(image_id, method)))       # before issue 18
        return torch.tensor(row["w_pivot"], dtype=torch.float32)


def _reusable(row: dict, checkpoint_sha256: str, config_hashes: Collection[str]) -> bool:
    if row.get("checkpoint_sha256") != checkpoint_sha256 or row.get("config_hash") not in config_hashes:
        return False
    return row.get("status") == "ok" or str(row.get("error") or "").startswith(IMAGE_FAILURES)


@dataclass
class _Stored:
    rows: dict[tuple[str, str], dict]   # newest per (image_id, method)
    table: bool                         # metrics.parquet and summary.json are there
    later: int                          # results under rows/ the table lacks or holds otherwise (all, without one)
    damaged: str | None = None          # metrics.parquet there but unreadable: why (its rows read from rows/)
