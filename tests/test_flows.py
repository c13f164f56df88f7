"""The invert-dataset and nightly-benchmark flows with the real components on 127.0.0.1.

Prefect: a temporary local API (conftest: prefect_api). Dask: one 2-worker LocalCluster (processes) shared by
these tests through ``dask_address`` (conftest: cluster). MLflow: a sqlite store in tmp_path. Generator: the
seeded 32 px one saved as a file (conftest: g32_file, in the ``small`` settings), 3 + 3 steps.

The run sequence mirrors an interrupted and resumed run: first the first two images only (astronaut and the
corrupt broken.png; as if the run died there), then all three (only coffee is computed), then all three again
(nothing is computed).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from distributed import Client
from mlflow.tracking import MlflowClient

from flows.invert_dataset import invert_dataset
from flows.nightly_benchmark import nightly_benchmark
from flows.parameters import ClusterSettings, InversionSettings
from gani_core.metric_registry import names
from gani_core.run_folder import METRICS_SCHEMA
from tasks import mlflow_runs, mlflow_view

from .conftest import photo_folder

STEPS = InversionSettings(pivot_steps=3, tune_steps=3, seed=0)
pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def small(g32_file: Path) -> dict:
    """The flows' small settings: a seeded, untrained 32 px generator saved as a file (whatever ``builtin``
    loads), 3 + 3 steps."""
    return {"checkpoint": str(g32_file), "inversion": STEPS}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """astronaut.jpg, coffee.jpg, the corrupt broken.png, and notes.txt (not an image)."""
    folder = photo_folder(tmp_path_factory.mktemp("photos"), broken=True)
    (folder / "notes.txt").write_text("not an image: not listed")
    return folder


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for sub in ("rows", "deltas", "previews")
            for p in (out / sub).iterdir()}


@pytest.fixture(scope="module")
def runs(photos: Path, cluster: Client, small: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("invert-dataset")
    out, db = root / "out", f"sqlite:///{root / 'mlflow.db'}"
    common = {**small, "input_uri": str(photos), "output_uri": str(out),
              "cluster": ClusterSettings(dask_address=cluster.scheduler.address), "mlflow_tracking_uri": db}
    interrupted = invert_dataset(**common, limit=2)
    resumed = invert_dataset(**common)
    before = _mtimes(out)
    finished = invert_dataset(**common)
    return {"photos": photos, "out": out, "db": db, "checkpoint": small["checkpoint"], "interrupted": interrupted,
            "resumed": resumed, "finished": finished, "mtimes": (before, _mtimes(out))}


def test_one_row_per_image_and_the_corrupt_one_failed_with_its_reason(runs):
    table = pq.read_table(runs["out"] / "metrics.parquet")
    assert table.schema.equals(METRICS_SCHEMA)
    rows = {r["image_id"]: r for r in table.to_pylist()}
    assert sorted(rows) == ["astronaut", "broken", "coffee"]
    assert rows["broken"]["status"] == "failed"
    assert {i: r["source"] for i, r in rows.items()} == {   # relative to input_uri (issue 22)
        "astronaut": "astronaut.jpg", "broken": "broken.png", "coffee": "coffee.jpg"}
    assert rows["broken"]["error"].startswith("ImageError:") and "broken.png" in rows["broken"]["error"]
    for image_id in ("astronaut", "coffee"):
        assert rows[image_id]["status"] == "ok" and rows[image_id]["error"] is None
        assert 0 < rows[image_id]["lpips"] < 1 and rows[image_id]["checkpoint"] == runs["checkpoint"]
        assert (runs["out"] / "deltas" / f"{image_id}.gani.parquet").stat().st_size > 0
        assert (runs["out"] / "previews" / f"{image_id}.gani.png").stat().st_size > 0
    assert (runs["out"] / "preview_grid.png").stat().st_size > 0
    summary = json.loads((runs["out"] / "summary.json").read_text())
    assert (summary["images"], summary["ok"], summary["failed"]) == (3, 2, 1)
    assert summary["methods"]["gani"]["failures"].keys() == {"broken"}


def test_returned_counts_report_partial_success(runs):
    s = runs["resumed"]
    assert {k: s[k] for k in ("images", "ok", "failed")} == {"images": 3, "ok": 2, "failed": 1}
    assert s["written"]["metrics.parquet"] == str(runs["out"] / "metrics.parquet")


def test_an_interrupted_run_resumes_with_only_the_missing_images(runs):
    first, second = runs["interrupted"], runs["resumed"]
    assert (first["images"], first["computed"], first["skipped"]) == (2, 2, 0)     # astronaut, broken
    assert (second["images"], second["computed"], second["skipped"]) == (3, 1, 2)  # coffee only


def test_a_rerun_of_a_finished_run_computes_nothing(runs):
    s = runs["finished"]
    assert (s["images"], s["computed"], s["skipped"], s["ok"], s["failed"]) == (3, 0, 3, 2, 1)
    before, after = runs["mtimes"]
    assert before == after and len(before) == 3 + 2 + 2     # rows (incl. the failed one), deltas, previews


def test_a_run_with_another_method_keeps_the_earlier_method_in_the_tables(runs, cluster, small, tmp_path):
    """pti into the folder that held gani (issue 22): metrics.parquet and summary.json hold both methods, each with
    the configuration its rows came from (configs/, once per folder)."""
    out = tmp_path / "out"
    shutil.copytree(runs["out"], out)
    s = invert_dataset(**small, input_uri=str(runs["photos"]), output_uri=str(out), method="pti", limit=1,
                       cluster=ClusterSettings(dask_address=cluster.scheduler.address),
                       mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    table = pq.read_table(out / "metrics.parquet").to_pylist()
    assert sorted((r["image_id"], r["method"]) for r in table) == [
        ("astronaut", "gani"), ("astronaut", "pti"), ("broken", "gani"), ("coffee", "gani")]
    assert (s["computed"], s["rows"], s["ok"], s["failed"]) == (1, 4, 3, 1)
    assert list(s["methods"]) == ["pti", "gani"] and s["methods"]["gani"]["failures"].keys() == {"broken"}
    gani_hash = {r["config_hash"] for r in table if r["method"] == "gani"}
    assert set(s["methods"]["gani"]["configs"]) == gani_hash
    assert s["methods"]["gani"]["config"]["tune"]["steps"] == STEPS.tune_steps
    assert json.loads((out / "summary.json").read_text())["methods"].keys() == {"gani", "pti"}
    assert {p.stem for p in (out / "configs").iterdir()} == {r["config_hash"] for r in table}


def test_mlflow_run_holds_metrics_params_and_artifacts(runs, tmp_path):
    client = MlflowClient(tracking_uri=runs["db"])
    experiment = client.get_experiment_by_name("invert-dataset")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"   # the UI's runs view, not GenAI
    logged = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.info.run_id for r in logged] == [runs[k]["mlflow_run_id"] for k in ("interrupted", "resumed",
                                                                                   "finished")]
    run = client.get_run(runs["resumed"]["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name.startswith(f"gani-{runs['photos'].name}-")
    # the saved view of the runs table: each of its columns is a tag or a metric this run logged
    view = json.loads(experiment.tags[f"mlflow.sharedViewState.{mlflow_view.RUNS_VIEW}"])
    columns = json.loads(view["state"])["selectedColumns"]
    headline = [n for n in names("headline") if n in names("run")]     # the registry's, in its order
    assert columns == ["tags.`method`", *(f"metrics.`{n}_mean`" for n in headline), "metrics.`ok`", "metrics.`failed`"]
    logged_columns = {f"tags.`{k}`" for k in run.data.tags} | {f"metrics.`{k}`" for k in run.data.metrics}
    # no factor labels on photos, no faces flags (id_similarity: faces only)
    assert set(columns) - {"metrics.`edit_accuracy_mean`", "metrics.`id_similarity_mean`"} <= logged_columns
    m = run.data.metrics
    ok_rows = [r for r in pq.read_table(runs["out"] / "metrics.parquet").to_pylist() if r["status"] == "ok"]
    for name in mlflow_runs.RUN_METRICS:
        logged = {f"{name}_mean", f"{name}_p50", f"{name}_p90"}
        if all(r.get(name) is None for r in ok_rows):      # not applicable here (edit_accuracy: no factor labels)
            assert not logged & m.keys(), name
        else:
            assert logged <= m.keys(), name
    # the names of the runs logged before the metric registry (issue 17), so that comparisons with them keep working
    before = ("mse", "psnr", "ms_ssim", "lpips", "lpips_vgg", "locality", "edit_consistency", "seconds", "delta_bytes")
    assert {f"{n}_{s}" for n in before for s in ("mean", "p50", "p90")} <= m.keys()
    assert (m["images"], m["ok"], m["failed"], m["skipped"]) == (3, 2, 1, 2)
    assert m["seconds_per_image"] > 0 and 0 < m["lpips_mean"] < 1
    p = run.data.params
    assert p["method"] == "gani" and p["pivot_steps"] == "3" and p["tune_steps"] == "3" and p["tune_lr"] == "0.003"
    assert p["dataset_uri"] == str(runs["photos"]) and p["output_uri"] == str(runs["out"])
    assert len(p["checkpoint_sha256"]) == 64 and p["code_version"].startswith("0.1.0")
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
        "metrics.parquet", "preview_grid.png", "summary.json", "per_image.json", "table_images"}
    split = json.loads(Path(client.download_artifacts(run.info.run_id, "per_image.json", str(tmp_path))).read_text())
    table = [dict(zip(split["columns"], values, strict=True)) for values in split["data"]]
    assert split["columns"] == ["image_id", "method", "shown", *headline, "input", "pivot", "tuned", "edit"]
    assert sorted(r["shown"] for r in table) == ["first, best lpips", "first, worst lpips"]
    assert sorted(r["image_id"] for r in table) == ["astronaut", "coffee"]   # the ok images; the corrupt one has none
    lpips = {r["image_id"]: r["lpips"] for r in ok_rows}
    assert all(r["lpips"] == pytest.approx(lpips[r["image_id"]]) for r in table)
    assert all(r[name]["type"] == "image" for r in table for name in ("input", "pivot", "tuned", "edit"))
    assert json.loads(run.data.tags["mlflow.loggedArtifacts"]) == [{"path": "per_image.json", "type": "table"}]


def test_nightly_benchmark_parent_run_with_a_child_per_method(photos, cluster, small, tmp_path):
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    s = nightly_benchmark(**small, input_uri=str(photos), output_uri=str(tmp_path / "nightly"), limit=1,
                          date="2026-01-02", cluster=ClusterSettings(dask_address=cluster.scheduler.address),
                          mlflow_tracking_uri=db)
    table = pq.read_table(tmp_path / "nightly" / "2026-01-02" / "metrics.parquet").to_pylist()
    assert sorted(r["method"] for r in table) == ["gani", "pti", "wplus"]
    assert all(r["status"] == "ok" for r in table)
    comparison = pq.read_table(tmp_path / "nightly" / "2026-01-02" / "comparison.parquet").to_pylist()
    assert [r["method"] for r in comparison] == ["gani", "pti", "wplus", "gani/pti"]
    by = {r["method"]: r for r in comparison}
    assert by["gani/pti"]["lpips_mean"] == pytest.approx(by["gani"]["lpips_mean"] / by["pti"]["lpips_mean"])

    client = MlflowClient(tracking_uri=db)
    parent = client.get_run(s["mlflow_run_id"])
    assert parent.info.run_name == "nightly-2026-01-02" and parent.data.tags["date"] == "2026-01-02"
    assert "code_version" in parent.data.tags and "gani_pti_lpips_mean" in parent.data.metrics
    assert "comparison.parquet" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.data.params["method"] for c in children) == ["gani", "pti", "wplus"]
    names = {frozenset(k for k in c.data.metrics if k.endswith(("_mean", "_p50", "_p90"))) for c in children}
    assert len(names) == 1      # every method logs the same metric names

    # one edit per method (pca:0: this generator carries no factors): how well it survives each method's tuning
    assert sorted(s["edits"]) == ["gani", "pti", "wplus"]     # a method refused is a warning in the flow's log
    edits = pq.read_table(tmp_path / "nightly" / "2026-01-02" / "edits" / "edits.parquet").to_pylist()
    assert sorted({(r["method"], r["direction"], r["strength"]) for r in edits}) == [
        (m, "pca-0", strength) for m in ("gani", "pti", "wplus") for strength in (-2.0, 2.0)]
    assert all(r["status"] == "ok" for r in edits), [r["error"] for r in edits if r["status"] != "ok"]
    assert by["wplus"]["lpips_to_original_edit_mean"] < 1e-4 < by["gani"]["lpips_to_original_edit_mean"]
    assert by["gani/pti"]["lpips_to_original_edit_mean"] == pytest.approx(
        by["gani"]["lpips_to_original_edit_mean"] / by["pti"]["lpips_to_original_edit_mean"])
    assert by["gani"]["factor_change_mean"] is None         # no factor probe
    for child in children:
        method = child.data.params["method"]
        assert child.data.metrics["lpips_to_original_edit_mean"] == pytest.approx(
            by[method]["lpips_to_original_edit_mean"])
    assert s["edits"]["gani"]["lpips_to_original_edit_mean"] == by["gani"]["lpips_to_original_edit_mean"]
