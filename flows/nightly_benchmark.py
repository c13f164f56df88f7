"""The ``nightly-benchmark`` flow: gani and its baselines on a fixed set, compared in one MLflow parent run.

Each night's results go to ``OUTPUT/DATE/`` (the invert-dataset layout, one row per image x method, plus
``comparison.parquet``); MLflow gets a parent run ``nightly-DATE`` in the experiment ``nightly-benchmark`` with
one child run per method (the same metric names as invert-dataset runs), and the flow run gets a markdown
artifact with each method's means and the GANI/PTI ratios.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.invert_dataset import EXAMPLES, REPO, rows_artifact, run_inversions
from gani_core import storage
from gani_core.invert import method_config
from tasks import tracking

BENCHMARK_METHODS = ("gani", "pti", "wplus")
COMPARED = ("lpips", "mse", "psnr", "ms_ssim", "lpips_vgg", "locality", "edit_consistency", "seconds", "delta_bytes")


def comparison_table(per_method: dict[str, dict[str, float]]) -> pa.Table:
    """One row per method with its counts and means, then a row ``gani/pti``: GANI's means over PTI's."""
    names = ["images", "ok", "failed", *[f"{m}_mean" for m in COMPARED]]
    rows = [{"method": method, **{n: metrics.get(n) for n in names}} for method, metrics in per_method.items()]
    if "gani" in per_method and "pti" in per_method:
        ratio = {n: _ratio(per_method["gani"].get(n), per_method["pti"].get(n)) for n in names[3:]}
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
    input_uri: str = str(EXAMPLES),
    output_uri: str = str(REPO / "out" / "nightly-benchmark"),
    checkpoint: str = "builtin",
    methods: list[str] = list(BENCHMARK_METHODS),  # noqa: B006 (a flow parameter's default, never mutated)
    pivot_steps: int = 450,
    tune_steps: int = 350,
    seed: int = 0,
    date: str | None = None,
    dask_address: str | None = None,
    n_workers: int | None = None,
    gpu: bool = False,
    mlflow_tracking_uri: str | None = None,
    limit: int | None = None,
) -> dict:
    """Run every method of ``methods`` on the benchmark images with fixed seeds and compare them.

    Args:
        input_uri: the benchmark set: a folder or ``s3://bucket/prefix`` of images (default: examples/shapes,
            held-out images of the built-in generator's domain, where edit_accuracy is measured too).
        output_uri: folder or ``s3://`` prefix; each night writes to ``OUTPUT/DATE/`` (a rerun on the same date
            keeps what is done). The default sqlite MLflow store is ``OUTPUT/mlflow.db``, shared by all nights.
        checkpoint: generator: ``builtin`` / ``builtin-random:RES``, a local path or an ``s3://`` URI.
        methods: the methods compared (default gani, pti, wplus).
        pivot_steps: pivot inversion steps of every method.
        tune_steps: generator tuning steps of gani and pti.
        seed: the seed of every method (fixed, so that nights compare).
        date: the run's date, ``YYYY-MM-DD`` (default: today, UTC).
        dask_address: scheduler of an existing Dask cluster; none starts a LocalCluster for the run.
        n_workers: workers of that LocalCluster (default: sized to the machine).
        gpu: workers have GPUs: each task asks for one ``GPU`` worker resource.
        mlflow_tracking_uri: MLflow tracking URI; none: ``$MLFLOW_TRACKING_URI``, else the sqlite store above.
        limit: only the first ``limit`` images of the set.

    Returns:
        The summary: counts, means per method, the comparison rows, the MLflow parent and child run ids.
    """
    logger = get_run_logger()
    day = date or dt.datetime.now(dt.UTC).date().isoformat()
    out = storage.join(output_uri.rstrip("/"), day)
    configs = {m: method_config(m, pivot_steps, tune_steps, seed=seed) for m in methods}
    uri = tracking.tracking_uri(mlflow_tracking_uri, output_uri)
    tags = {"date": day, "dataset_uri": input_uri, "prefect_flow_run_id": str(flow_run.get_id())}
    parent = tracking.start_run(uri, "nightly-benchmark", run_name=f"nightly-{day}", tags=tags)
    children: dict[str, str] = {}
    try:
        result = run_inversions(input_uri, out, checkpoint, configs, dask_address, n_workers, gpu, limit,
                                extra_summary={"mlflow_run_id": parent, "mlflow_tracking_uri": uri, "date": day})
        common = {"checkpoint": checkpoint, "checkpoint_sha256": result.ctx.checkpoint_sha256,
                  "generator_label": result.ctx.generator_label, "dataset_uri": input_uri, "output_uri": out,
                  "limit": limit, "code_version": tracking.code_version(), "date": day}
        per_method: dict[str, dict[str, float]] = {}
        for method, cfg in configs.items():
            rows = [r for r in result.rows if r["method"] == method]
            kept = sum(1 for r in rows if (r["image_id"], method) in result.kept)
            # seconds_per_image: the wall time of the whole fan-out per result computed (the methods share it).
            per_method[method] = tracking.aggregate(rows, skipped=kept, wall_seconds=result.wall_seconds,
                                                    computed=result.computed)
            children[method] = tracking.start_run(uri, "nightly-benchmark", run_name=f"{method}-{day}",
                                                  tags={**tags, "method": method}, parent_run_id=parent)
            tracking.log_results(uri, children[method], {**common, **tracking.config_params(cfg)},
                                 per_method[method])
            tracking.end_run(uri, children[method])
        table = comparison_table(per_method)
        comparison_uri = storage.join(out, "comparison.parquet")
        storage.write_parquet(comparison_uri, table)
        ratios = table.to_pylist()[-1] if "gani" in configs and "pti" in configs else {}
        parent_metrics = {f"gani_pti_{k}": v for k, v in ratios.items() if k != "method" and v is not None}
        parent_metrics.update(images=result.summary["images"], failed=result.summary["failed"])
        tracking.log_results(uri, parent, {**common, "methods": ",".join(methods), "seed": seed,
                                           "pivot_steps": pivot_steps, "tune_steps": tune_steps},
                             parent_metrics, artifacts=[*result.written.values(), comparison_uri])
    except BaseException:
        for run_id in (*children.values(), parent):
            tracking.end_run(uri, run_id, ok=False)
        raise
    tracking.end_run(uri, parent)
    create_markdown_artifact(key="nightly-benchmark-comparison", markdown=_markdown(day, table, out, parent),
                             description=f"nightly-benchmark {day}: means per method, GANI/PTI")
    rows_artifact(result.rows, "nightly-benchmark-rows", f"nightly-benchmark {day}: one row per image x method")
    logger.info("nightly-benchmark %s: %s; comparison at %s", day,
                ", ".join(f"{m} lpips {v.get('lpips_mean', float('nan')):.4f}" for m, v in per_method.items()),
                comparison_uri)
    return {**result.summary, "comparison": table.to_pylist(), "mlflow_child_run_ids": children,
            "written": {**result.written, "comparison.parquet": comparison_uri}}
