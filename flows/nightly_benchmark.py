"""The ``nightly-benchmark`` flow: gani and its baselines on a fixed set, compared in one MLflow parent run.

Each night's results go to ``OUTPUT/DATE/`` (the invert-dataset layout, one row per image x method, plus
``comparison.parquet``); then each method's results are edited once (:func:`nightly_edits`: ``factor:hue`` on a
generator carrying it, else ``pca:0``, at :data:`EDIT_STRENGTHS`; the edit-dataset flow's body on the flow's
``cluster``, into ``OUTPUT/DATE/edits/``), so that the night says how well edits survive each method's tuning. MLflow
gets a parent run ``nightly-DATE`` in the experiment ``nightly-benchmark`` with one child run per method (the same
metric names as invert-dataset runs, plus the edit's means, gani_core.metric_registry's ``edit`` group:
``lpips_to_original_edit_mean``, ``factor_change_mean`` / ``factor_change_original_mean`` where the generator has a
factor probe, ``id_similarity_edit_mean`` where the benchmark images are faces the run measured), and the flow run
gets a markdown artifact with each method's means and the GANI/PTI ratios. ``python -m flows.nightly_benchmark``
runs it once.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.cli import BAD_INPUT, run_flow_from_shell
from flows.domain_benchmark import SuiteName, domain_benchmark
from flows.edit_dataset import edit_on_dask, prepare_job
from flows.fan_out import invert_dataset_on_dask
from flows.parameters import ClusterSettings, ImageLimit, InversionSettings
from flows.reports import rows_artifact
from gani_core import storage
from gani_core.checkout import LOCAL_OUT, SHAPES_EXAMPLES
from gani_core.checkpoints.ref import resolve_checkpoint
from gani_core.invert import Method
from gani_core.run_folder import RunFolder
from tasks import mlflow_runs
from tasks.mlflow_view import view_columns
from tasks.storage import list_images

BENCHMARK_METHODS: list[Method] = ["gani", "pti", "wplus"]
COUNTS = ("images", "ok", "failed")
# The edit of each method's results: gani_core.edit_runs.default_directions (factor:hue on a generator carrying it, else
# pca:0), at these strengths.
EDIT_STRENGTHS = [-2.0, 2.0]
MEANS = (*mlflow_runs.RUN_METRICS, *mlflow_runs.EDIT_METRICS)  # the comparison's columns (registry), each NAME_mean
# The experiment's saved runs-table view: the parent's GANI/PTI ratios of the headline means first (its own row
# shows the comparison, ``gani_pti_lpips_mean``: GANI's mean lpips over PTI's), then each child's method and means.
RUNS_VIEW_COLUMNS = view_columns(metrics=[f"gani_pti_{n}_mean" for n in mlflow_runs.HEADLINE_METRICS])
RUNS_VIEW_COLUMNS += mlflow_runs.RUNS_VIEW_COLUMNS


def comparison_table(per_method: dict[str, dict[str, float]]) -> pa.Table:
    """One row per method with its counts and means (the edit's too), then a row ``gani/pti``: GANI's means over
    PTI's."""
    names = [*COUNTS, *[f"{m}_mean" for m in MEANS]]
    rows = [{"method": method, **{n: metrics.get(n) for n in names}} for method, metrics in per_method.items()]
    if "gani" in per_method and "pti" in per_method:
        ratio = {n: _ratio(per_method["gani"].get(n), per_method["pti"].get(n)) for n in names[len(COUNTS):]}
        rows.append({"method": "gani/pti", **ratio})
    schema = pa.schema([("method", pa.string()), *[(n, pa.float64()) for n in names]])
    return pa.Table.from_pylist(rows, schema=schema)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def _markdown(day: str, table: pa.Table, out: str, parent_run_id: str) -> str:
    cols = [c for c in table.column_names if c != "method"]
    lines = [f"# nightly-benchmark {day}", "", f"Output `{out}`, MLflow parent run `{parent_run_id}`.", "",
             "| method | " + " | ".join(c.removesuffix("_mean") for c in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for row in table.to_pylist():
        cells = ["-" if row[c] is None else f"{row[c]:.4g}" for c in cols]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    lines += ["", "Counts are images; the other columns are means over the images that succeeded. `gani/pti` is "
              "GANI's mean over PTI's (below 1: GANI lower). The last columns come from one edit of each method's "
              "results (`edits/edits.parquet`): `lpips_to_original_edit` is LPIPS between the tuned and the "
              "original generator's edit of the same latent (0: the edit survives tuning unchanged); "
              "`factor_change` (`_original`) the change of the edited factor the probe reads on the tuned "
              "(original) generator's edit, in the edit's direction; `id_similarity_edit` (faces) the identity the "
              "edit keeps: the tuned edit's face descriptor against the unedited tuned render's."]
    return "\n".join(lines)


@flow(name="nightly-benchmark")
def nightly_benchmark(
    input_uri: str = str(SHAPES_EXAMPLES),
    output_uri: str = str(LOCAL_OUT / "nightly-benchmark"),
    checkpoint: str = "builtin",
    methods: list[Method] = BENCHMARK_METHODS,
    inversion: InversionSettings = InversionSettings(),  # noqa: B008 (frozen: a default never mutated)
    date: str | None = None,
    cluster: ClusterSettings = ClusterSettings(),  # noqa: B008
    mlflow_tracking_uri: str | None = None,
    limit: ImageLimit | None = None,
    suite: SuiteName | None = None,
) -> dict:
    """Run every method of ``methods`` on the benchmark images with fixed seeds and compare them.

    Args:
        input_uri: the benchmark set: a folder or ``s3://bucket/prefix`` of images (default: examples/shapes,
            held-out images of the built-in generator's domain, where edit_accuracy is measured too).
        output_uri: folder or ``s3://`` prefix; each night writes to ``OUTPUT/DATE/`` (a rerun on the same date
            keeps what is done). The default sqlite MLflow store is ``OUTPUT/mlflow.db``, shared by all nights.
        checkpoint: generator: ``builtin`` / ``builtin-random:RES``, a local path or an ``s3://`` URI.
        methods: the methods compared (default gani, pti, wplus).
        inversion: step budgets (tune_steps: of the methods that tune), seed, precision and batch size (images per
            task) of every method; the domain benchmark (``suite``) inverts ``batch_size`` images together too (8
            for ``auto``).
        date: the run's date, ``YYYY-MM-DD`` (default: today, UTC).
        cluster: an existing Dask scheduler, or the size of the LocalCluster started for the run.
        mlflow_tracking_uri: MLflow tracking URI; none: ``$MLFLOW_TRACKING_URI``, else the sqlite store above.
        limit: only the first ``limit`` images of the set.
        suite: then run this suite of the domain-inversion benchmark (flows/domain_benchmark.py: images the
            generator cannot render, with intervals; its report in ``OUTPUT/DATE/SUITE-test/``, its MLflow runs in
            the experiment ``domain-benchmark``); ``cpu-night`` fits a night on a CPU, ``full`` needs a GPU worker.
            None: only the comparison above.

    Returns:
        The summary: counts, means per method, the comparison rows, the MLflow parent and child run ids.
    """
    day = date or dt.datetime.now(dt.UTC).date().isoformat()
    configs = inversion.configs(list(methods))
    ckpt = resolve_checkpoint(checkpoint)
    images = list_images(input_uri, limit)      # a bad input fails here, before the MLflow run starts
    folder = RunFolder(storage.join(output_uri.rstrip("/"), day))
    with mlflow_runs.tracked_run("nightly-benchmark", f"nightly-{day}", mlflow_tracking_uri=mlflow_tracking_uri,
                                 data_folder=output_uri, output_uri=folder.uri,
                                 tags={"date": day, "dataset_uri": input_uri}, columns=RUNS_VIEW_COLUMNS) as mlflow:
        uri, parent = mlflow.uri, mlflow.run_id
        run = invert_dataset_on_dask(input_uri, images, folder, ckpt, configs, inversion, cluster,
                                     mlflow_run_id=parent, mlflow_tracking_uri=uri, date=day,
                                     mlflow_experiment_id=mlflow.experiment_id)
        common = {**mlflow_runs.run_params(ckpt, input_uri, folder, limit), "date": day}
        edits, edits_uri = nightly_edits(folder, run.rows, list(configs), inversion.batch_size, cluster)
        per_method: dict[str, dict[str, float]] = {}
        children: dict[str, str] = {}
        for method, cfg in configs.items():
            rows = [r for r in run.rows if r["method"] == method]
            kept = sum(1 for r in rows if (r["image_id"], method) in run.kept)
            # seconds_per_image: the wall time of the whole fan-out per result computed (the methods share it).
            per_method[method] = mlflow_runs.aggregate(rows, skipped=kept, wall_seconds=run.wall_seconds,
                                                       computed=run.summary["computed"])
            per_method[method].update(edits.get(method, {}))
            children[method] = mlflow_runs.start_run(uri, mlflow.experiment_id, run_name=f"{method}-{day}",
                                                     tags={**mlflow.tags, "method": method}, parent_run_id=parent)
            with mlflow_runs.ended_on_exit(uri, children[method]):
                mlflow_runs.log_results(uri, children[method], {**common, **mlflow_runs.config_params(cfg)},
                                        per_method[method])
        table = comparison_table(per_method)
        comparison_uri = folder.path("comparison.parquet")
        storage.write_parquet(comparison_uri, table)
        ratios = table.to_pylist()[-1] if "gani" in configs and "pti" in configs else {}
        parent_metrics = {f"gani_pti_{k}": v for k, v in ratios.items() if k != "method" and v is not None}
        parent_metrics.update(images=run.summary["images"], failed=run.summary["failed"])
        mlflow_runs.log_results(uri, parent, {**common, "methods": ",".join(methods), **inversion.model_dump()},
                                parent_metrics, artifacts=[*run.written.values(), comparison_uri,
                                                           *([edits_uri] if edits_uri else [])])
    create_markdown_artifact(key="nightly-benchmark-comparison", markdown=_markdown(day, table, folder.uri, parent),
                             description=f"nightly-benchmark {day}: means per method, GANI/PTI")
    rows_artifact(run.rows, "nightly-benchmark-rows", f"nightly-benchmark {day}: one row per image x method")
    get_run_logger().info("nightly-benchmark %s: %s; comparison at %s", day,
                          ", ".join(f"{m} lpips {v.get('lpips_mean', float('nan')):.4f}"
                                    for m, v in per_method.items()), comparison_uri)
    domain = None
    if suite is not None:
        domain = domain_benchmark(suite=suite, split="test", output_uri=output_uri, checkpoint=checkpoint, date=day,
                                  batch_size=inversion.batch_size if isinstance(inversion.batch_size, int) else 8,
                                  cluster=cluster, mlflow_tracking_uri=uri)
        mlflow_runs.log_results(uri, parent, {"domain_benchmark_run_id": domain["mlflow_run_id"]}, {})
    written = {**run.written, "comparison.parquet": comparison_uri}
    if edits_uri:
        written["edits.parquet"] = edits_uri
    return {**run.summary, "comparison": table.to_pylist(), "mlflow_child_run_ids": children, "edits": edits,
            "written": written, "domain_benchmark": domain}


def nightly_edits(folder: RunFolder, rows: list[dict], methods: list[str], batch_size: int | str,
                  cluster: ClusterSettings) -> tuple[dict[str, dict[str, float]], str | None]:
    """One edit per method of the night's results (the default direction at :data:`EDIT_STRENGTHS`, into
    ``folder``/edits, resumed as the edit-dataset flow resumes), all on one Dask cluster: each method's edit means
    (``NAME_mean`` for the registry's ``edit`` group, ``lpips_to_original_edit_mean``, ...:
    tasks.mlflow_runs.edit_summary), and edits.parquet's URI (None when no method could be edited). A method without
    a successful result (or an edit refused) gets no edit, with a warning: the benchmark goes on."""
    logger = get_run_logger()
    jobs = {}
    for method in methods:
        try:
            jobs[method] = prepare_job(folder, rows, None, EDIT_STRENGTHS, method)
        except BAD_INPUT as exc:
            logger.warning("no edit of %s: %s: %s", method, type(exc).__name__, exc)
    if not jobs:
        return {}, None
    runs = edit_on_dask(list(jobs.values()), batch_size, cluster)
    means = {method: {f"{n}_mean": v for n, v in mlflow_runs.edit_summary(run.rows).items()}
             for method, run in zip(jobs, runs, strict=True)}
    first = next(iter(jobs.values()))
    logger.info("nightly edit (%s at %s): %s", ", ".join(first.request.directions),
                " ".join(f"{s:g}" for s in EDIT_STRENGTHS),
                ", ".join(f"{m} lpips_to_original_edit {v.get('lpips_to_original_edit_mean', float('nan')):.4f}"
                          for m, v in means.items()))
    return means, first.out.table_uri


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.nightly_benchmark``: one night's benchmark on the embedded defaults."""
    summary = run_flow_from_shell(nightly_benchmark, argv)
    domain = summary["domain_benchmark"]
    return 0 if summary["ok"] and (domain is None or domain["ok"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
