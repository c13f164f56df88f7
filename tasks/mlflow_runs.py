"""MLflow: one run per flow run (and, for the benchmarks, child runs), its params, metrics and artifacts.

Every run of invert-dataset and nightly-benchmark logs the same metric names, whatever the method, so runs compare
side by side in the MLflow UI: ``{metric}_mean``, ``{metric}_p50``, ``{metric}_p90`` for each metric of
gani_core.metric_registry's ``run`` group (:data:`RUN_METRICS`: the image and tuning metrics, ``seconds`` and
``delta_bytes``) over the images that succeeded (a metric no image has, edit_accuracy without a factor probe, is
left out), plus ``images``, ``ok``, ``failed``, ``skipped`` and ``seconds_per_image`` (wall time of the images
computed in this flow run, per image). An edit-dataset run logs its edits' means instead (:func:`edit_metrics`:
``{metric}_mean`` for each metric of the registry's ``edit`` group, :data:`EDIT_METRICS`:
``lpips_to_original_edit_mean``, ``factor_change_mean``, ..., and each per direction and strength), which the
nightly-benchmark's child runs add to theirs (:func:`edit_summary`). The domain benchmark's child runs log theirs in
tasks/evaluation.py. The client is explicit (``MlflowClient``): no global MLflow state is touched, so flows in one
process never see each other's active runs.

A flow opens its run with :func:`tracked_run`; the runs a killed flow left behind are tasks/stale_runs.py's, the
saved runs-table view tasks/mlflow_view.py's.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from fsspec.implementations.local import LocalFileSystem
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import get_run_logger
from prefect.runtime import flow_run

import gani_core
from gani_core import metric_registry, storage
from gani_core.checkout import LOCAL_OUT, code_version
from gani_core.checkpoints.ref import CheckpointRef
from gani_core.edit_runs import EditFolder
from gani_core.invert import InvertConfig
from gani_core.run_folder import RunFolder
from tasks.mlflow_view import experiment_tags, view_columns
from tasks.stale_runs import end_stale_runs

log = logging.getLogger(__name__)

# The metrics of an invert-dataset or nightly-benchmark run (each as _mean, _p50, _p90), and the few of them its
# saved runs-table view and its per-image table show.
RUN_METRICS = metric_registry.names("run")
HEADLINE_METRICS = tuple(n for n in metric_registry.names("headline") if n in RUN_METRICS)
RUNS_VIEW_COLUMNS = view_columns(tags=("method",), metrics=(*(f"{n}_mean" for n in HEADLINE_METRICS), "ok", "failed"))


def tracking_uri(given: str | None, data_folder: str) -> str:
    """The parameter, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///DATA/mlflow.db`` with DATA the run's data
    folder when it is local, else ``<repo>/out`` (an S3 output has no place for a sqlite file)."""
    if given:
        return given
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    fs, path = storage.resolve(data_folder)
    folder = Path(path) if isinstance(fs, LocalFileSystem) else LOCAL_OUT
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder.resolve() / 'mlflow.db'}"


def experiment_id(uri: str, name: str, columns: tuple[str, ...] = RUNS_VIEW_COLUMNS) -> str:
    """The id of the experiment ``name`` in the tracking store ``uri``, created when missing, with its saved
    runs-table view of ``columns`` (tasks.mlflow_view)."""
    client = MlflowClient(tracking_uri=uri)
    tags = experiment_tags(name, columns)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        for key, value in tags.items():     # those an older gani did not set; a view the user saved over is kept
            if key not in exp.tags:
                client.set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):        # artifacts next to the database, not in the current directory
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags=tags)
    except MlflowException:                 # created meanwhile by a concurrent flow run
        return client.get_experiment_by_name(name).experiment_id


def start_run(uri: str, experiment_id: str, run_name: str, tags: dict[str, str] | None = None,
              parent_run_id: str | None = None) -> str:
    """Create a run (a child of ``parent_run_id`` when given) in the experiment ``experiment_id``
    (:func:`experiment_id`), tagged with the process that runs it (``flow_host``, ``flow_pid``: see
    tasks.stale_runs); return its id."""
    client = MlflowClient(tracking_uri=uri)
    all_tags = {"code_version": code_version(), "gani_version": gani_core.__version__,
                "flow_host": socket.gethostname(), "flow_pid": str(os.getpid()), **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    return client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id


def end_run(uri: str, run_id: str, ok: bool = True) -> None:
    MlflowClient(tracking_uri=uri).set_terminated(run_id, "FINISHED" if ok else "FAILED")


@contextlib.contextmanager
def ended_on_exit(uri: str, *run_ids: str) -> Iterator[None]:
    """End the runs when the block ends: FINISHED, or FAILED when it raised (the error goes on, also when the
    runs cannot be marked: the store may share the disk that just filled up)."""
    try:
        yield
    except BaseException as exc:
        for run_id in run_ids:
            try:
                end_run(uri, run_id, ok=False)
            except Exception as end_exc:
                log.warning("MLflow run %s at %s not marked FAILED (%s: %s) after %s: %s", run_id, uri,
                            type(end_exc).__name__, end_exc, type(exc).__name__, exc)
        raise
    for run_id in run_ids:
        end_run(uri, run_id)


@dataclass(frozen=True)
class TrackedRun:
    """A flow run's MLflow run (:func:`tracked_run`)."""

    uri: str                # the tracking store
    experiment_id: str
    run_id: str
    tags: dict[str, str]    # the tags it was started with (its child runs take them too)


@contextlib.contextmanager
def tracked_run(experiment: str, run_name: str, *, mlflow_tracking_uri: str | None, data_folder: str,
                output_uri: str, tags: dict[str, str], columns: tuple[str, ...] = RUNS_VIEW_COLUMNS
                ) -> Iterator[TrackedRun]:
    """The MLflow run of the flow run calling it, ended when the block ends (FINISHED, or FAILED when it raised).

    The sequence every flow opens with: the tracking store (:func:`tracking_uri` of ``mlflow_tracking_uri`` and
    ``data_folder``); the experiment (:func:`experiment_id`, with its saved runs-table view of ``columns``); the
    runs a killed flow process left RUNNING into ``output_uri`` ended (tasks.stale_runs.end_stale_runs, on the
    flow run's log); then the run ``run_name``, tagged with this Prefect flow run, ``output_uri`` and ``tags``."""
    uri = tracking_uri(mlflow_tracking_uri, data_folder)
    exp_id = experiment_id(uri, experiment, columns)
    end_stale_runs(uri, exp_id, output_uri, get_run_logger())
    all_tags = {"prefect_flow_run_id": str(flow_run.get_id()), "prefect_flow_run_name": str(flow_run.get_name()),
                "output_uri": output_uri, **tags}
    run_id = start_run(uri, exp_id, run_name, tags=all_tags)
    with ended_on_exit(uri, run_id):
        yield TrackedRun(uri, exp_id, run_id, all_tags)


def run_params(ckpt: CheckpointRef, input_uri: str, folder: RunFolder, limit: int | None) -> dict[str, object]:
    """The parameters every run of a flow logs besides its method's configuration."""
    return {"checkpoint": ckpt.spec, "checkpoint_sha256": ckpt.sha256, "generator_label": ckpt.label,
            "dataset_uri": input_uri, "output_uri": folder.uri, "limit": limit, "code_version": code_version()}


def config_params(cfg: InvertConfig) -> dict[str, object]:
    """The parameters of one method's configuration: its fields with flat names (``seed``, ``pivot_lr``,
    ``tune_lr``, ...; ``tune_steps`` 0 for the methods without a tuning stage), and its ``config_hash``."""
    fields = asdict(cfg)
    if fields["tune"] is None:
        fields["tune"] = {"steps": 0}
    params: dict[str, object] = {"config_hash": cfg.config_hash()}
    for name, value in fields.items():
        if isinstance(value, dict):
            params.update({f"{name}_{k}": v for k, v in value.items()})
        else:
            params[name] = value
    return params


def aggregate(rows: list[dict], skipped: int = 0, wall_seconds: float | None = None,
              computed: int = 0) -> dict[str, float]:
    """The run's metrics: counts, and each of :data:`RUN_METRICS` summarised over the ok rows as
    gani_core.metric_registry.summarise does (``lpips_mean``, ``lpips_p50``, ``lpips_p90``; none where no row has
    a value)."""
    ok = sum(r["status"] == "ok" for r in rows)
    metrics: dict[str, float] = {"images": len(rows), "ok": ok, "failed": len(rows) - ok, "skipped": skipped}
    for name, summary in metric_registry.summarise(rows, RUN_METRICS).items():
        metrics.update({f"{name}_{stat}": value for stat, value in summary.items() if value is not None})
    if computed and wall_seconds is not None:
        metrics["seconds_per_image"] = wall_seconds / computed
    return metrics


def log_results(uri: str, run_id: str, params: dict[str, object], metrics: dict[str, float],
                artifacts: Iterable[str] = ()) -> None:
    """Log params, metrics and artifacts (local paths or URIs: remote ones are copied to a temp folder first; a URI
    given twice is uploaded once). The flows' artifacts are their run folder's written files (fan_out.DatasetRun):
    metrics.parquet (every image's row: the whole per-image table), summary.json, preview_grid.png."""
    client = MlflowClient(tracking_uri=uri)
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None and math.isfinite(v)],
        params=[Param(k, str(v)[:6000]) for k, v in params.items()],
        tags=[RunTag("code_version", code_version())],
    )
    with tempfile.TemporaryDirectory(prefix="gani-mlflow-") as tmp:
        for artifact in dict.fromkeys(artifacts):
            fs, path = storage.resolve(artifact)
            if isinstance(fs, LocalFileSystem):
                client.log_artifact(run_id, path)
            else:
                local = Path(tmp) / Path(path).name
                local.write_bytes(storage.read_bytes(artifact))
                client.log_artifact(run_id, str(local))


IMAGE_TABLE = "per_image.json"          # the run's per-image table, with images, in MLflow's evaluation views
# Its rows (the whole table, every image, is metrics.parquet): the worst and the best ok results by lpips, and the
# first ones in image order, each once: at most IMAGE_TABLE_MAX rows, PREVIEW_CELLS images each, whatever the size
# of the dataset.
IMAGE_TABLE_WORST = 16
IMAGE_TABLE_BEST = 16
IMAGE_TABLE_FIRST = 16
IMAGE_TABLE_MAX = IMAGE_TABLE_WORST + IMAGE_TABLE_BEST + IMAGE_TABLE_FIRST
IMAGE_TABLE_RANK = "lpips"              # the metric worst and best are by (lower is better)
SHOWN_WORST, SHOWN_BEST, SHOWN_FIRST = f"worst {IMAGE_TABLE_RANK}", f"best {IMAGE_TABLE_RANK}", "first"
PREVIEW_CELLS = ("input", "pivot", "tuned", "edit")     # a preview's square cells, left to right (run_folder)
IMAGE_TABLE_TAG = "image_table"         # tag: the table's rows, or why this run has none
IMAGE_TABLE_RUN_TAG = "image_table_run_id"  # tag: the run whose image table is this output folder's latest


def image_table_rows(rows: list[dict], rank: str = IMAGE_TABLE_RANK) -> list[tuple[dict, str]]:
    """The rows of the image table, each with why it is there (its ``shown``): the IMAGE_TABLE_WORST ok results
    with the highest ``rank`` (a metric, lower is better; default :data:`IMAGE_TABLE_RANK`), then the
    IMAGE_TABLE_BEST with the lowest, then the IMAGE_TABLE_FIRST first ok results in the order of ``rows`` (image
    order); a row picked twice is shown once, its reasons joined (``first, worst lpips``). Fewer ranked results than
    the worst and the best together: they are split, the worse part worst, the better best, so that no row is both.
    Failed rows are left out (they are in metrics.parquet), and so is an ok row without the metric from worst and
    best."""
    ok = [r for r in rows if r["status"] == "ok"]
    ranked = sorted((r for r in ok if _finite(r.get(rank))), key=lambda r: r[rank])
    if len(ranked) >= IMAGE_TABLE_WORST + IMAGE_TABLE_BEST:
        best, worst = ranked[:IMAGE_TABLE_BEST], ranked[len(ranked) - IMAGE_TABLE_WORST:]
    else:
        split = len(ranked) * IMAGE_TABLE_BEST // (IMAGE_TABLE_WORST + IMAGE_TABLE_BEST)
        best, worst = ranked[:split], ranked[split:]
    shown_worst, shown_best = _shown(rank)
    reasons: dict[int, list[str]] = {}          # by id(row), in the table's order: worst first, then best, first
    for picked, why in ((worst[::-1], shown_worst), (best, shown_best), (ok[:IMAGE_TABLE_FIRST], SHOWN_FIRST)):
        for row in picked:
            reasons.setdefault(id(row), []).append(why)
    order = (SHOWN_FIRST, shown_worst, shown_best)
    by_id = {id(r): r for r in ok}
    return [(by_id[i], ", ".join(sorted(why, key=order.index))) for i, why in reasons.items()]


def _shown(rank: str) -> tuple[str, str]:
    """The ``shown`` of the worst and the best rows by ``rank``."""
    return f"worst {rank}", f"best {rank}"


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


@dataclass(frozen=True)
class ImageTable:
    """What a run's table with images shows (:func:`log_table_with_images`): the columns ``values`` of each row
    picked by :func:`image_table_rows` on ``rank``, and the images ``images(file)`` cuts from the file at
    ``image_uri(row)``; every row is in the table file ``whole``."""

    rank: str                                       # the metric worst and best are by (lower is better)
    values: tuple[str, ...]                         # the row's columns shown ("shown": why it is there)
    image_uri: Callable[[dict], str]                # where a row's image file is
    images: Callable[[bytes], dict[str, object]]    # that file's bytes -> {column: PIL image}
    whole: str                                      # the file holding every row (metrics.parquet, edits.parquet)


def log_image_table(uri: str, run_id: str, rows: list[dict], folder: RunFolder, computed: int | None = None) -> bool:
    """The run's per-image table in MLflow (:data:`IMAGE_TABLE`, in the run's Evaluation / artifact views): the
    rows of :func:`image_table_rows`, each with ``image_id``, ``method``, ``shown`` (why it is there), the
    :data:`HEADLINE_METRICS` and four images (the PREVIEW_CELLS of its preview), so that MLflow compares each image
    across runs. At most IMAGE_TABLE_MAX x 4 images, whatever the number of ``rows``; every row is in
    metrics.parquet (logged by :func:`log_results`).

    ``computed`` 0 (a rerun that computed nothing: its images are those of an earlier run): no table; the tag
    ``image_table`` says so and ``image_table_run_id`` names the run holding this output folder's latest table
    (the latest run tagged with the same ``output_uri`` that has one), when there is one. Returns whether a table
    was logged."""
    table = ImageTable(IMAGE_TABLE_RANK, ("image_id", "method", "shown", *HEADLINE_METRICS),
                       lambda row: folder.preview_uri(row["image_id"], row["method"]), _preview_cells,
                       "metrics.parquet")
    return log_table_with_images(uri, run_id, rows, table, folder.uri, computed)


def _preview_cells(png: bytes) -> dict[str, object]:
    """The PREVIEW_CELLS of a preview: square cells side by side, their labels and the caption below."""
    from PIL import Image

    grid = Image.open(io.BytesIO(png)).convert("RGB")
    cell = grid.width // len(PREVIEW_CELLS)
    return {name: grid.crop((i * cell, 0, (i + 1) * cell, cell)) for i, name in enumerate(PREVIEW_CELLS)}


def log_table_with_images(uri: str, run_id: str, rows: list[dict], table: ImageTable, output_uri: str,
                          computed: int | None = None) -> bool:
    """``table`` of ``rows`` as the run's :data:`IMAGE_TABLE` (:func:`log_image_table` says what it holds and
    when it is left out): at most IMAGE_TABLE_MAX rows, whatever the number of ``rows``, their image files read in
    one call; a row whose file is missing is left out. Returns whether a table was logged."""
    import pandas as pd

    client = MlflowClient(tracking_uri=uri)
    if computed == 0:
        last = _last_image_table_run(client, run_id, output_uri)
        note = "not logged: nothing computed" + (f"; the latest is in run {last}" if last else "")
        client.log_batch(run_id, tags=[RunTag(IMAGE_TABLE_TAG, note),
                                       *([RunTag(IMAGE_TABLE_RUN_TAG, last)] if last else [])])
        return False
    picked = image_table_rows(rows, table.rank)
    files = storage.read_many([table.image_uri(r) for r, _ in picked]) if picked else {}
    columns: dict[str, list] = {k: [] for k in table.values}
    for row, shown in picked:
        data = files[table.image_uri(row)]
        if data is None:
            continue
        for name, image in table.images(data).items():
            columns.setdefault(name, []).append(image)
        for name in table.values:
            columns[name].append(shown if name == "shown" else row.get(name))
    if not columns["image_id"]:
        client.set_tag(run_id, IMAGE_TABLE_TAG, "not logged: no ok result with an image")
        return False
    client.log_table(run_id, data=pd.DataFrame(columns), artifact_file=IMAGE_TABLE)
    counts = {why: sum(why in s for s in columns["shown"]) for why in (*_shown(table.rank), SHOWN_FIRST)}
    client.log_batch(run_id, tags=[
        RunTag(IMAGE_TABLE_TAG, f"{IMAGE_TABLE}: {len(columns['image_id'])} rows (" +
               ", ".join(f"{n} {why}" for why, n in counts.items()) + f") of {len(rows)}; all in {table.whole}"),
        RunTag(IMAGE_TABLE_RUN_TAG, run_id)])
    return True


# ------------------------------------------------------------------------------------------------------------------
# An edit request's rows (edits.parquet: gani_core.edit_runs), in an edit-dataset run and the nightly's child runs

# edits.parquet's metrics (gani_core.metric_registry's ``edit`` group), summarised; the edit table ranks its rows by
# EDIT_TABLE_RANK (lower is better), as the image table ranks by IMAGE_TABLE_RANK.
EDIT_METRICS = metric_registry.names("edit")
EDIT_TABLE_RANK = "lpips_to_original_edit"
EDIT_VIEW_COLUMNS = view_columns(tags=("method", "directions"),
                                 metrics=(*(f"{n}_mean" for n in EDIT_METRICS), "ok", "failed"))


def edit_summary(rows: Iterable[dict]) -> dict[str, float]:
    """The means of the ok rows of an edit, each of :data:`EDIT_METRICS` over the strengths its registry entry's
    ``over_strengths`` names: ``lpips_to_original_edit`` over every strength; ``factor_change`` and
    ``factor_change_original`` (where the probe read a factor) times the sign of the strength, over the strengths
    other than 0: the mean change of the factor in the direction of the edit on the tuned and on the original
    generator's renders (their ratio is how much of the edit the tuning kept); ``id_similarity_edit`` (face runs)
    over the strengths other than 0 (at 0 it is 1). A name no row has a finite value for is left out (a row written
    before a metric existed has none)."""
    ok = [r for r in rows if r["status"] == "ok"]
    means = {name: _mean(_summarised(ok, name)) for name in EDIT_METRICS}
    return {name: mean for name, mean in means.items() if mean is not None}


def _summarised(rows: list[dict], name: str) -> list[object]:
    """The values of ``name`` in ``rows`` that an edit's mean is over (gani_core.metric_registry: over_strengths)."""
    over = metric_registry.METRICS[name].over_strengths
    if over == "every":
        return [r.get(name) for r in rows]
    moved = [r for r in rows if r["strength"] != 0 and _finite(r.get(name))]
    if over == "signed":
        return [math.copysign(1.0, r["strength"]) * r[name] for r in moved]
    return [r[name] for r in moved]


def _mean(values: Iterable[object]) -> float | None:
    finite = [float(v) for v in values if _finite(v)]
    return sum(finite) / len(finite) if finite else None


def edit_metric_name(column: str, direction: str, strength: float) -> str:
    """The MLflow metric of ``column``'s mean at one direction and strength: ``lpips_to_original_edit.factor-hue.s2``,
    ``factor_change.pca-0.s-1.5``; characters MLflow refuses in a name become ``_``."""
    return re.sub(r"[^\w\-. :/]", "_", f"{column}.{direction}.s{strength:g}")


def edit_metrics(rows: list[dict], skipped: int = 0, computed: int = 0,
                 wall_seconds: float | None = None) -> dict[str, float]:
    """An edit-dataset run's metrics over its request's ``rows`` (kept and new): counts of images (``images``,
    ``ok``, ``failed``: an image failed when one of its rows did; ``skipped``: images whose edits were kept from an
    earlier run), ``{name}_mean`` (:func:`edit_summary`), each of :data:`EDIT_METRICS`' mean over the images per
    direction and strength (:func:`edit_metric_name`: directions x strengths x len(EDIT_METRICS) at most, whatever
    the number of images), and ``seconds_per_image`` (of the ``computed`` images)."""
    failed = {r["image_id"] for r in rows if r["status"] != "ok"}
    images = {r["image_id"] for r in rows}
    metrics: dict[str, float] = {"images": len(images), "ok": len(images - failed), "failed": len(failed),
                                 "skipped": skipped}
    metrics.update({f"{name}_mean": value for name, value in edit_summary(rows).items()})
    cells: dict[tuple[str, float], list[dict]] = {}
    for row in rows:
        if row["status"] == "ok":
            cells.setdefault((row["direction"], row["strength"]), []).append(row)
    for (direction, strength), found in cells.items():
        for name in EDIT_METRICS:
            mean = _mean(r.get(name) for r in found)
            if mean is not None:
                metrics[edit_metric_name(name, direction, strength)] = mean
    if computed and wall_seconds is not None:
        metrics["seconds_per_image"] = wall_seconds / computed
    return metrics


def edit_table_rows(rows: Iterable[dict]) -> list[dict]:
    """One row per image x method x direction whose rows are all ok, in their order: its ``strip`` and the means
    over its strengths (:func:`edit_summary`): what the edit table ranks and shows."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["image_id"], row["method"], row["direction"]), []).append(row)
    return [{"image_id": image_id, "method": method, "direction": direction, "status": "ok",
             "strip": found[0]["strip"], **edit_summary(found)}
            for (image_id, method, direction), found in groups.items() if all(r["status"] == "ok" for r in found)]


def log_edit_table(uri: str, run_id: str, rows: list[dict], out: EditFolder, computed: int | None = None) -> bool:
    """The edit run's table in MLflow (:data:`IMAGE_TABLE`), as :func:`log_image_table` logs an inversion's: one
    row per image x method x direction (:func:`edit_table_rows`), the worst and the best by their mean
    :data:`EDIT_TABLE_RANK` and the first ones, at most IMAGE_TABLE_MAX, each with its strip (the input, the
    original and the tuned generator's edits) and the means of :data:`EDIT_METRICS` that some row has (no
    ``factor_change`` without a factor probe, no ``id_similarity_edit`` outside face runs); every row is in
    edits.parquet. ``computed`` 0: no table, a pointer to the latest one of ``out``."""
    groups = edit_table_rows(rows)
    shown = tuple(n for n in EDIT_METRICS if any(_finite(g.get(n)) for g in groups))
    table = ImageTable(EDIT_TABLE_RANK, ("image_id", "method", "direction", "shown", *shown),
                       lambda row: out.path(row["strip"]), _whole_image, "edits.parquet")
    return log_table_with_images(uri, run_id, groups, table, out.uri, computed)


def _whole_image(png: bytes) -> dict[str, object]:
    from PIL import Image

    return {"strip": Image.open(io.BytesIO(png)).convert("RGB")}


def _last_image_table_run(client: MlflowClient, run_id: str, output_uri: str) -> str | None:
    """The run holding the latest image table of ``output_uri``: the ``image_table_run_id`` of the latest other
    run of this run's experiment tagged with that output_uri and having one (one search); None when there is none
    or the search fails (the tag is a pointer, never worth failing the flow run for)."""
    if "'" in output_uri:                   # not in a filter string's quotes
        return None
    try:
        experiment = client.get_run(run_id).info.experiment_id
        found = client.search_runs(
            [experiment], filter_string=f"tags.output_uri = '{output_uri}' AND tags.{IMAGE_TABLE_RUN_TAG} LIKE '%'",
            order_by=["attributes.start_time DESC"], max_results=2)
    except MlflowException as exc:
        log.warning("the run with the latest image table of %s not found: %s", output_uri, exc)
        return None
    return next((r.data.tags[IMAGE_TABLE_RUN_TAG] for r in found if r.info.run_id != run_id), None)
