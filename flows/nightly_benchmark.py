"""The ``nightly-benchmark`` flow: gani and its baselines on a fixed set, compared in one MLflow parent run.

Each night's results go to ``OUTPUT/DATE/`` (the invert-dataset layout, one row per image x method, plus
``comparison.parquet``); MLflow gets a parent run ``nightly-DATE`` in the experiment ``nightly-benchmark`` with
one child run per method (the same metric names as invert-dataset runs), and the flow run gets a markdown
artifact with each method's means and the GANI/PTI ratios. ``python -m flows.nightly_benchmark`` runs it once.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.cli import run_flow_from_shell
from flows.domain_benchmark import SuiteName, domain_benchmark
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
# The experiment's saved runs-table view: the parent's GANI/PTI ratios of the headline means first (its own row
# shows the comparison, ``gani_pti_lpips_mean``: GANI's mean lpips over PTI's), then each child's method and means.
RUNS_VIEW_COLUMNS = view_columns(metrics=[f"gani_pti_{n}_mean" for n in mlflow_runs.HEADLINE_METRICS])
RUNS_VIEW_COLUMNS += mlflow_runs.RUNS_VIEW_COLUMNS


def comparison_table(per_method: dict[str, dict[str, float]]) -> pa.Table:
    """One row per method with its counts and means, then a row ``gani/pti``: GANI's means over PTI's."""
    names = [*COUNTS, *[f"{m}_mean" for m in mlflow_runs.RUN_METRICS]]
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
              "GANI's mean over PTI's (below 1: GANI lower)."]
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
        per_method: dict[str, dict[str, float]] = {}
        children: dict[str, str] = {}
        for method, cfg in configs.items():
            rows = [r for r in run.rows if r["method"] == method]
            kept = sum(1 for r in rows if (r["image_id"], method) in run.kept)
            # seconds_per_image: the wall time of the whole fan-out per result computed (the methods share it).
            per_method[method] = mlflow_runs.aggregate(rows, skipped=kept, wall_seconds=run.wall_seconds,
                                                       computed=run.summary["computed"])
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
                                parent_metrics, artifacts=[*run.written.values(), comparison_uri])
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
    return {**run.summary, "comparison": table.to_pylist(), "mlflow_child_run_ids": children,
            "written": {**run.written, "comparison.parquet": comparison_uri}, "domain_benchmark": domain}


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.nightly_benchmark``: one night's benchmark on the embedded defaults."""
    summary = run_flow_from_shell(nightly_benchmark, argv)
    domain = summary["domain_benchmark"]
    return 0 if summary["ok"] and (domain is None or domain["ok"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
