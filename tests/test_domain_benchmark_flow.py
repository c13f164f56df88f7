"""The domain-benchmark flow on the real components: Prefect's temporary local API, a 1-worker Dask LocalCluster
built by the flow, a sqlite MLflow store; the smoke suite on a seeded 32 px generator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prefect.testing.utilities import prefect_test_harness

from flows.cli import run_flow_from_shell
from flows.domain_benchmark import domain_benchmark
from flows.parameters import ClusterSettings
from gani_core.evaluation.report import HEADLINE
from gani_core.evaluation.suites import SUITES
from gani_core.metric_registry import names
from tasks.evaluation import CURVE_METRICS, FINAL_METRICS, LATEST_VIEW
from tasks.mlflow_view import RUNS_VIEW, runs_url

pytestmark = pytest.mark.services


def test_the_smoke_suite_reports_to_mlflow_and_a_rerun_keeps_its_parts(tmp_path: Path, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    suite = SUITES["smoke"]
    kwargs = {"suite": "smoke", "output_uri": str(tmp_path / "out"), "checkpoint": "builtin-random:32",
              "date": "2026-12-02", "batch_size": 2, "cluster": ClusterSettings(n_workers=1),
              "mlflow_tracking_uri": uri}
    with prefect_test_harness(server_startup_timeout=None):
        first = domain_benchmark(**kwargs)
        parts = sorted((tmp_path / "out" / "2026-12-02" / "smoke-test" / "parts").iterdir())
        stamps = [p.stat().st_mtime_ns for p in parts]
        # the rerun from the shell, as `python -m flows.domain_benchmark` runs it
        second = run_flow_from_shell(domain_benchmark, [
            "--suite", "smoke", "--output-uri", str(tmp_path / "out"), "--checkpoint", "builtin-random:32",
            "--date", "2026-12-02", "--batch-size", "2", "--n-workers", "1", "--mlflow-tracking-uri", uri])
    printed = capsys.readouterr().out
    assert second["written"]["report.md"] in printed and "gani show" not in printed      # a report, not a run folder
    assert runs_url(second["mlflow_experiment_id"]) in printed
    assert first["ok"] and first["failed"] == 0
    per_image = 2 + 3 + 1                     # gani at 2 budgets, pti at 3, w
    assert first["rows"] == second["rows"] == len(suite.sets) * suite.count * per_image
    assert [p.name for p in parts] == ["disc-seed0.json", "in-domain-seed0.json"]
    assert [p.stat().st_mtime_ns for p in parts] == stamps          # the rerun computed nothing again
    assert {Path(u).name for u in first["written"].values()} == {
        "rows.parquet", "summary.parquet", "comparisons.json", "goals.json", "curves.png", "report.md"}
    assert {g["set"] for g in first["goals"]} == {"disc", "all-out-of-domain"}

    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(first["mlflow_run_id"])
    assert parent.info.run_name == "domain-smoke-test-2026-12-02" and parent.info.status == "FINISHED"
    assert "goal_lpips_at_equal_time__disc" in parent.data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"curves.png", "report.md", "rows.parquet"} <= artifacts
    children = first["mlflow_child_run_ids"]
    assert set(children) == {f"{m}/{s}" for m in suite.methods for s in (*suite.sets, "all-out-of-domain")}
    gani_disc = client.get_run(children["gani/disc"])
    assert gani_disc.data.tags["mlflow.parentRunId"] == parent.info.run_id
    # the parent's own row holds the headline comparison, pooled out of the domain (issue 22): gani over pti per
    # goal with its interval, target and verdict (no pti-reg in the smoke suite), as goals.json has it
    pooled = {g["name"]: g for g in first["goals"] if g["set"] == "all-out-of-domain"}
    assert "lpips gani/pti equal time" in pooled and first["headline"]["goals met"].endswith(f"of {len(pooled)}")
    lpips_time = pooled["lpips gani/pti equal time"]
    assert parent.data.tags["lpips gani/pti equal time"] == first["headline"]["lpips gani/pti equal time"]
    assert parent.data.tags["lpips gani/pti equal time"].startswith(f"{lpips_time['value']:.2f}")
    assert f"[{lpips_time['lo']:.2f}, {lpips_time['hi']:.2f}] ≤0.7 " in parent.data.tags["lpips gani/pti equal time"]
    assert {*pooled, "goals met"} <= parent.data.tags.keys() and parent.data.tags["set"] == "all-out-of-domain"
    # the printed link's view shows those first (the goals met, then each goal), then the children's columns
    tags = client.get_experiment(parent.info.experiment_id).tags
    view = json.loads(tags[f"mlflow.sharedViewState.{RUNS_VIEW}"])
    state = json.loads(view["state"])
    columns = state["selectedColumns"]
    assert columns[:len(HEADLINE)] == [f"tags.`{n}`" for n in HEADLINE] and HEADLINE[0] == "goals met"
    assert state["columnWidths"]["tags.`lpips gani/pti equal time`"] > 150       # the header and value fit
    assert [c for c in columns if c.startswith("metrics.")][:2] == ["metrics.`psnr`", "metrics.`lpips`"]
    # and the view of the latest run alone (the rerun's): its runs pooled out of the domain, one row per method,
    # then its parent
    latest = json.loads(json.loads(tags[f"mlflow.sharedViewState.{LATEST_VIEW}"])["state"])
    assert latest["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "method"}]
    assert latest["groupsExpanded"] == {**{f"tag.method.{m}": False for m in suite.methods}, "tag.method": True}
    rerun = client.get_run(second["mlflow_run_id"])
    assert latest["searchFilter"] == (f"tags.prefect_flow_run_id = '{rerun.data.tags['prefect_flow_run_id']}' "
                                      "and tags.set = 'all-out-of-domain'")
    shown = client.search_runs([parent.info.experiment_id], latest["searchFilter"])
    pooled_children = {second["mlflow_child_run_ids"][f"{m}/all-out-of-domain"] for m in suite.methods}
    assert {r.info.run_id for r in shown} == {rerun.info.run_id, *pooled_children}
    assert second["mlflow_views"]["this run by method"] == LATEST_VIEW
    assert runs_url("7", view=LATEST_VIEW).endswith("/#/experiments/7/runs?workflowType=machine_learning"
                                                    f"&viewStateShareKey={LATEST_VIEW}")
    columns = set(columns) - {"metrics.`edit_accuracy`"} - {f"tags.`{n}`" for n in HEADLINE}  # no factors here
    assert columns <= {f"tags.`{k}`" for k in gani_disc.data.tags} | {f"metrics.`{k}`" for k in gani_disc.data.metrics}
    # the metric names of a child run: the registry's curve metrics, and drift, as they were before the registry
    assert set(CURVE_METRICS) == {"seconds", "lpips", "lpips_vgg", "psnr", "locality", "edit_consistency",
                                  "edit_accuracy"} == set(names("curve"))
    assert set(FINAL_METRICS) == {*CURVE_METRICS, "drift"}
    assert {f"curve_{n}" for n in CURVE_METRICS} - {"curve_edit_accuracy"} <= gani_disc.data.metrics.keys()
    assert {"lpips", "lpips_lo", "lpips_hi", "drift", "images", "failed"} <= gani_disc.data.metrics.keys()
    curve = client.get_metric_history(gani_disc.info.run_id, "curve_lpips")
    assert sorted(m.step for m in curve) == list(suite.budgets)
    rows = json.loads(parts[0].read_text())
    lpips_at_2 = [r["lpips"] for r in rows if r["method"] == "gani" and r["budget"] == 2]
    assert gani_disc.data.metrics["lpips"] == pytest.approx(sum(lpips_at_2) / len(lpips_at_2))
