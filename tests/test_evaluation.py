"""The domain-inversion benchmark (gani_core.evaluation): statistics on rows with known answers, snapshots that
equal shorter runs, and one tiny suite end to end on a small generator."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from gani_core.checkpoints.ref import resolve_checkpoint
from gani_core.evaluation import stats
from gani_core.evaluation.evaluate import benchmark_config, evaluate_set
from gani_core.evaluation.report import HEADLINE, ROWS_SCHEMA, headline, rows_table, write_report
from gani_core.evaluation.suites import SUITES, Suite, get_suite, set_images
from gani_core.invert import invert_images
from gani_core.metric_registry import METRICS, names
from gani_core.pivot import PivotConfig, find_pivots
from gani_core.tuning import tune_batch


def _row(set_name: str, image: int, method: str, budget: int, seconds: float, lpips: float,
         locality: float = 0.1, seed: int = 0) -> dict:
    return {"set": set_name, "seed": seed, "image_id": f"i{image}", "method": method, "budget": budget,
            "status": "ok", "error": None, "seconds": seconds, "lpips": lpips, "locality": locality}


def test_bootstrap_interval_holds_the_mean_and_shrinks_with_more_images() -> None:
    rng = np.random.default_rng(0)
    few, many = rng.normal(1, 0.5, 8), rng.normal(1, 0.5, 200)
    m, lo, hi = stats.bootstrap_mean(few)
    assert lo < m < hi and m == pytest.approx(few.mean())
    _, lo2, hi2 = stats.bootstrap_mean(many)
    assert hi2 - lo2 < (hi - lo) / 2
    assert stats.bootstrap_mean([0.3, 0.3, 0.3]) == (pytest.approx(0.3), pytest.approx(0.3), pytest.approx(0.3))


def test_seeds_are_averaged_per_image_before_resampling() -> None:
    """Image 0 at two seeds (0.0 and 0.2: mean 0.1), image 1 at one (0.4). Per image first: (0.1 + 0.4) / 2 = 0.25;
    over rows it would be 0.2, over each image's first seed 0.2, over the last 0.3."""
    rows = [_row("disc", 0, "gani", 10, 1.0, 0.0, seed=0), _row("disc", 0, "gani", 10, 1.0, 0.2, seed=1),
            _row("disc", 1, "gani", 10, 1.0, 0.4, seed=0)]
    (summary,) = [r for r in stats.summary(rows) if r["set"] == "disc"]
    assert summary["images"] == 2 and summary["lpips"] == pytest.approx(0.25)
    assert (summary["lpips_lo"], summary["lpips_hi"]) == (pytest.approx(0.1), pytest.approx(0.4))


def test_the_rows_table_is_the_registrys_benchmark_metrics_and_refuses_a_misspelt_one() -> None:
    for name in names("benchmark"):
        assert ROWS_SCHEMA.field(name).type == (pa.int64() if METRICS[name].integer else pa.float64()), name
    row = {**_row("disc", 0, "gani", 10, 1.0, 0.1), "delta_bytes": 12, "psnr": float("inf")}
    (back,) = rows_table([row]).to_pylist()
    assert (back["lpips"], back["delta_bytes"], back["psnr"], back["drift"]) == (0.1, 12, None, None)
    with pytest.raises(KeyError, match=r"rows\.parquet: unknown column\(s\) \['lpip'\]"):
        rows_table([row, {**row, "lpip": 0.1}])


def test_equal_time_reads_the_other_curve_at_the_same_seconds() -> None:
    """pti's lpips falls linearly with seconds; gani reaches half of pti's value at each of its own times."""
    rows = []
    for i in range(5):
        for budget, t in ((10, 2.0), (20, 4.0), (40, 8.0)):
            rows.append(_row("disc", i, "pti", budget, t, 1.0 - 0.1 * t + 0.01 * i))
        for budget, t in ((5, 3.0), (10, 6.0)):
            rows.append(_row("disc", i, "gani", budget, t, 0.5 * (1.0 - 0.1 * t + 0.01 * i)))
    out = stats.equal_time(rows, "disc", "lpips")
    assert [r["budget"] for r in out] == [5, 10]
    for r in out:
        assert r["ratio"] == pytest.approx(0.5) and r["ratio_lo"] <= 0.5 <= r["ratio_hi"]
        assert not r["extrapolated"]
    slow = [{**r, "seconds": r["seconds"] * 3} if r["method"] == "gani" else r for r in rows]
    assert stats.equal_time(slow, "disc", "lpips")[-1]["extrapolated"]       # 18 s: past pti's 8


def test_equal_reconstruction_reads_locality_where_the_other_reaches_the_same_lpips() -> None:
    rows = []
    for i in range(4):
        for budget, lp, loc in ((10, 0.4, 0.1), (20, 0.2, 0.3), (40, 0.1, 0.5)):
            rows.append(_row("disc", i, "pti-reg", budget, 1.0, lp, loc))
        rows.append(_row("disc", i, "gani", 20, 1.0, 0.3, 0.05))        # pti-reg at lpips 0.3: locality 0.2
    r = stats.equal_reconstruction(rows, "disc")
    assert r["ratio"] == pytest.approx(0.25) and not r["extrapolated"]
    edits = [{**x, "edit_accuracy": 1.0 - x["lpips"]} for x in rows]       # pti-reg at lpips 0.3: 0.7
    r = stats.equal_reconstruction(edits, "disc", metric="edit_accuracy")
    assert r["ratio"] == pytest.approx(1.0) and r["metric"] == "edit_accuracy"
    assert stats.equal_reconstruction(rows, "disc", metric="edit_accuracy") is None    # not measured


def test_goals_are_reported_per_set_and_pooled() -> None:
    rows = []
    for s in ("disc", "bg-noise", "in-domain"):
        for i in range(3):
            for budget, t in ((5, 1.0), (10, 2.0), (20, 4.0)):
                rows.append(_row(s, i, "pti", budget, t, 0.4 / t, 0.2))
            rows.append(_row(s, i, "gani", 5, 2.0, 0.1, 0.05))
    goals = stats.goals(rows, budget=5)
    lpips_goal = [g for g in goals if g["goal"].startswith("lpips at equal time")]
    assert sorted(g["set"] for g in lpips_goal) == ["all-out-of-domain", "bg-noise", "disc"]     # not in-domain
    assert all(g["value"] == pytest.approx(0.5) and g["met"] for g in lpips_goal)
    # An ablation held to the same goals in GANI's place: its own rows, the same PTI.
    rows += [{**r, "method": "gani[rank=32]", "lpips": r["lpips"] * 4} for r in rows if r["method"] == "gani"]
    ablation = [g for g in stats.goals(rows, budget=5, a="gani[rank=32]") if g["goal"] == lpips_goal[0]["goal"]]
    assert all(g["method"] == "gani[rank=32]" and g["value"] == pytest.approx(2.0) and not g["met"]
               for g in ablation) and len(ablation) == 3


def test_the_headline_is_the_pooled_goals_in_a_few_words_each_under_short_names() -> None:
    rows = []
    for s in ("disc", "bg-noise"):
        for i in range(3):
            for budget, t in ((5, 1.0), (10, 2.0), (20, 4.0)):
                rows.append(_row(s, i, "pti", budget, t, 0.4 / t, 0.2))
                rows.append(_row(s, i, "pti-reg", budget, 2 * t, 0.4 / t, 0.1))
            rows.append(_row(s, i, "gani", 5, 2.0, 0.1 + 0.01 * i, 0.05))
    goals = stats.goals(rows, budget=5)
    pooled = {g["name"]: g for g in goals if g["set"] == "all-out-of-domain"}
    # gani over pti and over pti-reg, named as the runs table's columns read
    assert {"lpips gani/pti equal time", "locality gani/pti equal time", "locality gani/pti-reg equal lpips",
            "lpips gani/pti worst budget"} <= pooled.keys() <= set(HEADLINE)
    cells = headline(goals)
    assert set(cells) == {*pooled, "goals met"}
    g = pooled["lpips gani/pti equal time"]
    assert cells["lpips gani/pti equal time"] == (f"{g['value']:.2f} [{g['lo']:.2f}, {g['hi']:.2f}] ≤0.7 "
                                                  f"{'yes' if g['sure'] else 'yes (point)' if g['met'] else 'no'}")
    reg = pooled["locality gani/pti-reg equal lpips"]
    assert cells["locality gani/pti-reg equal lpips"].startswith(f"{reg['value']:.2f}{'*' * reg['extrapolated']} [")
    assert cells["goals met"] == f"{sum(g['met'] for g in pooled.values())} of {len(pooled)}"
    assert headline([]) == {}


def test_suites_are_valid_and_unknown_names_are_refused() -> None:
    assert {"smoke", "cpu-night", "full"} <= set(SUITES)
    assert all(len(s.seeds) >= 3 for s in (SUITES["cpu-night"], SUITES["full"]))
    assert SUITES["full"].count >= 24
    with pytest.raises(ValueError, match="unknown suite 'huge'; known suites: smoke"):
        get_suite("huge")
    with pytest.raises(ValueError, match="unknown benchmark methods"):
        replace(SUITES["smoke"], methods=("gani", "nope"))
    with pytest.raises(ValueError, match="ascending"):
        replace(SUITES["smoke"], budgets=(4, 2))


def test_ablations_override_tuning_options() -> None:
    cfg = benchmark_config("gani[reg_interval=4,lr=0.001,form=lowrank]", 10, 20, seed=1)
    assert (cfg.tune.reg_interval, cfg.tune.lr, cfg.tune.form, cfg.tune.steps) == (4, 0.001, "lowrank", 20)
    assert benchmark_config("pti-reg", 10, 20, seed=1).tune.reg_weight == 0.1
    replace(SUITES["smoke"], methods=("gani[rank=4]", "pti"))              # a valid suite
    with pytest.raises(ValueError, match="option 'rank' has no value"):
        benchmark_config("gani[rank]", 10, 20, seed=0)
    with pytest.raises(ValueError, match="wplus has no tuning stage"):
        benchmark_config("wplus[rank=4]", 10, 20, seed=0)
    with pytest.raises(TypeError):
        benchmark_config("gani[nope=1]", 10, 20, seed=0)


@pytest.mark.parametrize("method", ["gani", "pti-reg"])     # pti: the deltas are the trained parameters
def test_tuning_snapshots_are_the_results_of_shorter_runs(method: str) -> None:
    G = resolve_checkpoint("builtin-random:32").load()
    targets = torch.rand([2, 3, 32, 32], generator=torch.Generator().manual_seed(3)) * 2 - 1
    w = find_pivots(G, targets, PivotConfig(steps=2), [0, 0])
    cfg = benchmark_config(method, 2, 5, seed=0).tune
    long = tune_batch(G, w, targets, cfg, [0, 0], snapshot_steps=(2, 5))
    short = tune_batch(G, w, targets, replace(cfg, steps=2), [0, 0])
    for a, b in zip(long, short, strict=True):
        assert set(a.snapshots) == {2, 5}
        for name, d in b.deltas.items():
            torch.testing.assert_close(a.snapshots[2][name], d, atol=0, rtol=0)
            torch.testing.assert_close(a.snapshots[5][name], a.deltas[name], atol=0, rtol=0)
        assert any(not torch.equal(a.snapshots[2][n], a.deltas[n]) for n in a.deltas)    # 3 more steps moved them


def test_a_tiny_suite_end_to_end(tmp_path: Path) -> None:
    G = resolve_checkpoint("builtin-random:32").load()
    suite = Suite("tiny", ("in-domain", "disc"), count=2, seeds=(0,), methods=("gani", "pti", "pti-reg", "wplus", "w"),
                  budgets=(1, 2), pivot_steps=2, drift_samples=8, pti_budgets=(3,))
    rows = []
    for set_name in suite.sets:
        images, ids, _ = set_images(set_name, suite.count, 32)
        assert images.shape == (2, 3, 32, 32) and float(images.min()) >= 0 and float(images.max()) <= 1
        rows += evaluate_set(G, images, ids, set_name, suite, seed=0, batch_size=2, log=lambda _: None)
    # per image: gani 2 budgets, pti 3, pti-reg 2, wplus 1, w 1
    assert len(rows) == 2 * 2 * (2 + 3 + 2 + 1 + 1)
    assert all(r["status"] == "ok" for r in rows)
    gani = {(r["image_id"], r["budget"]): r for r in rows if r["method"] == "gani" and r["set"] == "disc"}
    # a budget's row is a run of that many steps from the same pivot
    images, ids, _ = set_images("disc", 2, 32)
    w = find_pivots(G, images * 2 - 1, PivotConfig(steps=2), [0, 0])
    alone = invert_images(G, images, ids, benchmark_config("gani", 2, 1, seed=0), w_pivots=w)
    for result in alone:
        assert gani[(result.image_id, 1)]["lpips"] == pytest.approx(result.metrics["lpips"], rel=1e-4)
    drifts = [r["drift"] for r in rows if r["budget"] == 2 and r["method"] in ("gani", "pti")]
    assert all(d is not None and d > 0 for d in drifts)
    assert all(r["drift"] is None for r in rows if r["budget"] == 1)
    assert all(r["seconds"] > 0 for r in rows)

    written = write_report(rows, str(tmp_path), suite, "test").written
    table = pq.read_table(written["rows.parquet"])
    assert table.num_rows == len(rows)
    summary = pq.read_table(written["summary.parquet"]).to_pylist()
    assert {r["set"] for r in summary} == {"in-domain", "disc", "all-out-of-domain"}
    assert Path(written["curves.png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    goals = json.loads(Path(written["goals.json"]).read_text())
    assert {g["set"] for g in goals} == {"disc", "all-out-of-domain"}
    assert "| goal | set |" in Path(written["report.md"]).read_text()


def test_curves_draw_every_method_in_a_colour_of_its_own() -> None:
    from gani_core.evaluation.plots import _styles, curves_png

    methods = ["gani", "gani[rank=8]", "pti", "pti-reg", "gani[lr=0.01]", "w"]
    styles = _styles(methods)
    assert len({colour for colour, _ in styles.values()}) == len(methods)
    assert styles["gani"] == ("tab:red", "-") and styles["gani[rank=8]"][1] == "--"
    rows = [{"set": "disc", "method": m, "budget": b, "seconds": float(b), **{f"{k}{s}": 0.1 for k in
             ("lpips", "locality") for s in ("", "_lo", "_hi")}} for m in methods for b in (5, 10)]
    assert curves_png(rows, title="t").startswith(b"\x89PNG")
