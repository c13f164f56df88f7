"""A run's folder (a local path or ``s3://bucket/prefix``): every path in it, the one schema of its result rows,
writing and reading them, and the resume rule.

    OUT/rows/IMAGE.METHOD.json          each result's row, written as soon as it is done (what a rerun resumes from)
    OUT/deltas/IMAGE.METHOD.parquet     the encoded weight deltas of one result (gani_core.deltas.DELTAS_SCHEMA)
    OUT/previews/IMAGE.METHOD.png       input | pivot | tuned | edit, each column labelled (the edit: which)
    OUT/configs/CONFIG_HASH.json        each configuration a run used (InvertConfig), written when the run starts
    OUT/metrics.parquet                 one row per image x method (METRICS_SCHEMA): every valid result in the folder
    OUT/summary.json                    the tables: checkpoint, counts, and per method its configs (hash -> config),
                                        failures and means
    OUT/preview_grid.png                the first PREVIEW_GRID_MAX previews of the run, stacked (a caption says
                                        so when there are more)

The tables hold every valid result of the folder, whichever invocation made it (:meth:`RunFolder.table_rows`): the
rows of this run, and every other ``rows/*.json`` that is ok with its deltas, or failed. A row names its
configuration by ``config_hash``; a rerun of a method with another configuration replaces the rows of the images it
covers (one row per image x method), and keeps the others. Until the tables are written (a run in progress or
interrupted), :meth:`RunFolder.read_run` builds them from ``rows/`` and says so.

Resume rule (:meth:`RunFolder.reusable_rows`): an image's row is kept when its ``image_sha256`` and
``checkpoint_sha256`` equal this run's, its ``config_hash`` is one of this run's ``InvertConfig.resume_hashes()``
(today's, or the one gani wrote before issue 17's renames), and it is either ``ok`` (with its deltas file present)
or failed because the image itself is unreadable (``ImageError``: the same bytes fail the same way). Other
failures (a storage hiccup, a lost worker, an unreadable checkpoint) are computed again.

Every file is written atomically (gani_core.storage): a reader or a crash never sees half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass

import pyarrow as pa
import torch
import torch.nn.functional as F

import gani_core
from gani_core import deltas as deltas_mod
from gani_core import storage
from gani_core.checkpoints.ref import CheckpointRef
from gani_core.dataset import ImageSource
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
    ("image_sha256", pa.string()), ("method", pa.string()),
    ("status", pa.string()), ("error", pa.string()),
    *[parquet_field(m) for m in names("result")],      # edit_accuracy: null without factor directions and a probe
    parquet_field("seconds"), ("seconds_pivot", pa.float64()), ("seconds_tune", pa.float64()),
    ("seconds_metrics", pa.float64()), ("pivot_steps", pa.int64()), ("tune_steps", pa.int64()),
    ("seconds_per_tune_step", pa.float64()), parquet_field("delta_bytes"), ("delta_lpips_change", pa.float64()),
    ("peak_memory_mb", pa.float64()), ("w_pivot", pa.list_(pa.float32())),
    ("checkpoint", pa.string()), ("checkpoint_sha256", pa.string()), ("generator_label", pa.string()),
    ("resolution", pa.int64()),     # px of the generator's images, at which the metrics were computed (ok rows)
    ("config_hash", pa.string()), ("seed", pa.int64()), ("device", pa.string()), ("gani_version", pa.string()),
])

PREVIEW_GRID_MAX = 16       # previews in preview_grid.png (all of them are under previews/)
PREVIEW_CELL_MIN = 192      # preview cells are upscaled (nearest, by a whole factor) to at least this many pixels


def preview_labels(edit_label: str | None = None) -> tuple[str, ...]:
    """The column labels of a preview: input, pivot, tuned, and the edit (measure.preview_edit_label, which says
    which edit; "edit" where the result does not say)."""
    return (*PREVIEW_CELLS[:-1], edit_label or PREVIEW_CELLS[-1])


def save_preview(result: InversionResult, generator_label: str, uri: str) -> str:
    """previews/IMAGE.METHOD.png: the result's input, pivot, tuned and edit cells side by side (upscaled by a whole
    factor to at least PREVIEW_CELL_MIN px), each column labelled (:func:`preview_labels`), then the caption."""
    caption = f"{result.image_id} | {result.method} | {generator_label}"
    scale = -(-PREVIEW_CELL_MIN // result.previews.shape[-1])      # small generators' cells are hard to see
    previews = F.interpolate(result.previews, scale_factor=scale, mode="nearest") if scale > 1 else result.previews
    # InversionResult.edit_label: set in invert._measure where the edit is chosen (measure.preview_edit_label).
    labels = preview_labels(result.edit_label)
    return save_grid(previews, uri, caption=caption, labels=labels)


def preview_grid_caption(shown: int, total: int) -> str:
    """The caption of preview_grid.png, which stacks the previews of the first PREVIEW_GRID_MAX ok results (one
    per image x method): empty when it shows all ``total`` of them, else how many of how many it shows."""
    if shown >= total:
        return ""
    return f"the first {shown} of {total} previews (all of them are in previews/)"


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
        "device": device, "gani_version": gani_core.__version__,
    }
    return {k: finite_or_none(v) for k, v in row.items()}


def failed_row(image_id: str, cfg: InvertConfig, ckpt: CheckpointRef, error: str, image_sha256: str | None = None,
               device: str | None = None, source: str | None = None) -> dict:
    """The row of a result that failed, with its reason."""
    fields = {"image_id": image_id, "source": source, "image_sha256": image_sha256, "method": cfg.method,
              "status": "failed", "error": error}
    return complete_row(fields, cfg, ckpt, device=device)


def rows_table(rows: Iterable[dict]) -> pa.Table:
    """The rows as a METRICS_SCHEMA table (columns a row lacks are null). A key that is no column of the schema (a
    misspelt metric) raises KeyError rather than being left out."""
    rows = list(rows)
    check_names({key for r in rows for key in r}, METRICS_SCHEMA.names, "metrics.parquet")
    return pa.Table.from_pydict({name: [r.get(name) for r in rows] for name in METRICS_SCHEMA.names},
                                schema=METRICS_SCHEMA)


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

    @property
    def incomplete_note(self) -> str | None:
        """One line saying that the tables do not hold every result yet (None when they do)."""
        if self.complete:
            return None
        what = (f"the tables of an earlier run lack {self.on_disk} of them" if self.tables
                else "tables not written yet")
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

    def write_outputs(self, result: InversionResult, generator_label: str) -> None:
        """One result's deltas and preview (its row goes last, with :meth:`write_row`: a row means done)."""
        table = deltas_mod.deltas_table(result.image_id, result.encoded)
        deltas_mod.write_deltas_parquet(table, self.deltas_uri(result.image_id, result.method))
        save_preview(result, generator_label, self.preview_uri(result.image_id, result.method))

    def write_row(self, row: dict) -> None:
        storage.write_bytes(self.row_uri(row["image_id"], row["method"]), json.dumps(row).encode())

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

    def reusable_rows(self, images: list[ImageSource], config_hashes: dict[str, Collection[str]],
                      checkpoint_sha256: str) -> dict[tuple[str, str], dict]:
        """The rows under ``rows/`` that a run of ``images`` keeps (the resume rule), by (image_id, method);
        ``config_hashes`` maps each method to the config hashes its rows may carry (InvertConfig.resume_hashes:
        today's, and the one gani wrote before issue 17). Only images with a row are read and hashed."""
        row_names, delta_names = storage.names_under(self.path("rows")), storage.names_under(self.path("deltas"))
        candidates = [(ref, m) for ref in images for m in config_hashes
                      if f"{result_key(ref.image_id, m)}.json" in row_names]
        if not candidates:
            return {}
        raw = storage.read_many([self.row_uri(ref.image_id, m) for ref, m in candidates])
        rows: dict[tuple[str, str], dict] = {}
        for (ref, m), data in zip(candidates, raw.values(), strict=True):
            row = json.loads(data) if data else None
            have_deltas = f"{result_key(ref.image_id, m)}.parquet" in delta_names
            if row and _reusable(row, checkpoint_sha256, config_hashes[m], have_deltas):
                rows[(ref.image_id, m)] = row
        # The same name may now hold other bytes: a row counts only for the image it was computed from.
        source_of = {ref.image_id: ref.source for ref in images}
        sources = sorted({source_of[image_id] for image_id, _ in rows})
        digests = {u: hashlib.sha256(d).hexdigest() if d is not None else None
                   for u, d in (storage.read_many(sources) if sources else {}).items()}
        return {key: row for key, row in rows.items() if row.get("image_sha256") == digests[source_of[key[0]]]}

    def table_rows(self, known: Iterable[dict] = ()) -> list[dict]:
        """Every valid result in the folder: the ``known`` rows (this run's, in memory) as they are, in their order,
        then every other row under ``rows/`` that is ok with its deltas, or failed, by name. rows/ and deltas/ are
        listed once; only the rows not known are read."""
        rows = {(r["image_id"], r["method"]): r for r in known}
        return [*rows.values(), *self._rows_on_disk(exclude=rows.keys())]

    def _rows_on_disk(self, exclude: Collection[tuple[str, str]] = ()) -> list[dict]:
        row_names = storage.names_under(self.path("rows"))
        keys = sorted(n[: -len(".json")] for n in row_names if n.endswith(".json") and not n.startswith("."))
        keys = [k for k in keys if tuple(k.rsplit(".", 1)) not in exclude]
        if not keys:
            return []
        delta_names = storage.names_under(self.path("deltas"))
        raw = storage.read_many([self.path("rows", f"{k}.json") for k in keys])
        found = []
        for k in keys:
            try:
                row = json.loads(raw[self.path("rows", f"{k}.json")] or b"null")
            except ValueError:
                row = None
            if not isinstance(row, dict) or (row.get("status") == "ok" and f"{k}.parquet" not in delta_names):
                continue
            found.append(row)
        return found

    def read_configs(self, hashes: Collection[str]) -> dict[str, dict]:
        """The stored configurations (configs/HASH.json) of ``hashes`` that have one; configs/ listed once."""
        on_disk = storage.names_under(self.path("configs")) if hashes else set()
        uris = {h: self.config_uri(h) for h in sorted(hashes) if f"{h}.json" in on_disk}
        raw = storage.read_many(list(uris.values())) if uris else {}
        return {h: json.loads(raw[u]) for h, u in uris.items() if raw.get(u)}

    def read_run(self) -> StoredRun:
        """The run's rows and summary: metrics.parquet and summary.json, with the rows under ``rows/`` they lack (a
        run in progress or interrupted: ``complete`` False, and the summary built from the rows). Raises
        FileNotFoundError when the folder holds neither tables nor rows."""
        has_table = storage.exists(self.metrics_uri) and storage.exists(self.summary_uri)
        table = storage.read_parquet(self.metrics_uri).to_pylist() if has_table else []
        extra = self._rows_on_disk(exclude={(r["image_id"], r["method"]) for r in table})
        if not table and not extra:
            raise FileNotFoundError(f"{self.uri}: no metrics.parquet and no rows/ here; is it the output of a gani "
                                    "run?")
        rows = [*table, *extra]
        if has_table and not extra:
            return StoredRun(rows, json.loads(storage.read_bytes(self.summary_uri)), True, 0)
        stored = self.read_configs({r["config_hash"] for r in rows if r.get("config_hash")})
        return StoredRun(rows, summarise(rows, {}, None, self.uri, None, stored), False, len(extra), has_table)

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


def _reusable(row: dict, checkpoint_sha256: str, config_hashes: Collection[str], have_deltas: bool) -> bool:
    if row.get("checkpoint_sha256") != checkpoint_sha256 or row.get("config_hash") not in config_hashes:
        return False
    if row.get("status") == "ok":
        return have_deltas
    return str(row.get("error") or "").startswith("ImageError")
