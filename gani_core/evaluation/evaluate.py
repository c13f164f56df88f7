"""One set at one seed: every method of a suite on every image, at every step budget.

All tuning methods start from the same W pivot of each image (found once, pivot.find_pivots); ``w`` is that
pivot alone and ``wplus`` finds its own W+ pivot with the same step budget. A tuning method runs its largest
budget once, keeping snapshots of the deltas at the smaller ones (tuning.tune_batch), and each snapshot is
measured like a finished inversion (invert.finish_inversions); ``drift`` is measured at the suite's largest
common budget (equal steps). Seconds are a method's own time per image
(the shared pivot, plus its tuning up to that budget; images of a batch share both evenly); the metrics'
time is not counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import torch

from gani_core.deltas import apply_deltas, decode_deltas
from gani_core.evaluation.drift import DriftReference
from gani_core.evaluation.suites import Suite, parse_method
from gani_core.invert import (
    GANI_TUNE,
    InversionError,
    InversionResult,
    InvertConfig,
    finish_inversions,
    invert_images,
    method_config,
)
from gani_core.metric_registry import names
from gani_core.networks import Generator
from gani_core.pivot import PivotConfig, find_pivots
from gani_core.tuning import TuneResult, all_finite, tune_batch


def benchmark_config(method: str, pivot_steps: int | None, tune_steps: int | None, seed: int) -> InvertConfig:
    """The InvertConfig of a benchmark method: one of suites.BENCHMARK_METHODS, or one with tuning options
    overridden for an ablation, ``gani[reg_interval=4,rank=4]`` (suites.parse_method)."""
    base, overrides = parse_method(method)
    if overrides:
        cfg = benchmark_config(base, pivot_steps, tune_steps, seed)
        if cfg.tune is None:
            raise ValueError(f"{method}: {base} has no tuning stage to override")
        return replace(cfg, tune=replace(cfg.tune, **overrides))
    if method.startswith("gani-"):
        return method_config("gani", pivot_steps, tune_steps, seed, form=method.removeprefix("gani-"))
    if method == "pti-reg":
        return method_config("pti", pivot_steps, tune_steps, seed, reg_weight=GANI_TUNE.reg_weight)
    if method in ("w", "wplus"):
        return method_config(method, pivot_steps, None, seed)      # tune_steps does not apply
    return method_config(method, pivot_steps, tune_steps, seed)


def evaluate_set(
    G: Generator,
    images: torch.Tensor,
    image_ids: list[str],
    set_name: str,
    suite: Suite,
    seed: int,
    batch_size: int = 8,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Rows (one per image x method x budget; budget 0 for w and wplus) of ``images`` [N, 3, R, R] in [0, 1]."""
    device = G.mapping.w_avg.device
    drift = DriftReference(G, suite.drift_samples, seed=seed) if suite.drift_samples else None
    rows: list[dict] = []
    for start in range(0, len(image_ids), batch_size):
        batch, ids = images[start : start + batch_size].to(device), image_ids[start : start + batch_size]
        t0 = time.perf_counter()
        where = f"{set_name} seed {seed}, images {start + 1}-{start + len(ids)} of {len(image_ids)}"
        for row in _evaluate_batch(G, batch, ids, suite, seed, drift, partial(_prefixed, log, where)):
            rows.append({"set": set_name, "seed": seed, **row})
        log(f"{set_name} seed {seed}: {min(start + batch_size, len(image_ids))}/{len(image_ids)} images "
            f"({time.perf_counter() - t0:.0f} s for this batch of {len(ids)})")
    return rows


def _prefixed(log: Callable[[str], None], where: str, line: str) -> None:
    log(f"{where}: {line}")


def _evaluate_batch(G: Generator, images: torch.Tensor, ids: list[str], suite: Suite, seed: int,
                    drift: DriftReference | None, log: Callable[[str], None]) -> list[dict]:
    k = len(ids)
    targets = images * 2 - 1
    seeds = [seed] * k
    t0 = time.perf_counter()
    w_pivots = find_pivots(G, targets, PivotConfig(space="w", steps=suite.pivot_steps), seeds)
    pivot_s = (time.perf_counter() - t0) / k
    log(f"W pivots ({suite.pivot_steps} steps) in {pivot_s * k:.0f} s")
    rows: list[dict] = []
    for done, method in enumerate(suite.methods, start=1):
        t0 = time.perf_counter()
        if method == "w":
            cfg = benchmark_config("w", suite.pivot_steps, None, seed)
            results = finish_inversions(G, images, ids, cfg, w_pivots, [None] * k, None,
                                        {"pivot": pivot_s, "tune": 0.0}, {"pivot": suite.pivot_steps, "tune": 0})
            rows += _rows(ids, method, 0, results)
        elif method == "wplus":
            results = invert_images(G, images, ids, benchmark_config("wplus", suite.pivot_steps, None, seed))
            rows += _rows(ids, method, 0, results)
        else:
            rows += _tuning_rows(G, images, ids, method, suite, seed, w_pivots, pivot_s, drift)
        log(f"{method} done ({done}/{len(suite.methods)} methods; {time.perf_counter() - t0:.0f} s with its metrics)")
    return rows


def _tuning_rows(G: Generator, images: torch.Tensor, ids: list[str], method: str, suite: Suite, seed: int,
                 w_pivots: torch.Tensor, pivot_s: float, drift: DriftReference | None) -> list[dict]:
    budgets = suite.budgets_of(method)
    k, last = len(ids), budgets[-1]
    cfg = benchmark_config(method, suite.pivot_steps, last, seed)
    t0 = time.perf_counter()
    tuned = tune_batch(G, w_pivots, images * 2 - 1, cfg.tune, [seed] * k, snapshot_steps=budgets)
    tune_s = (time.perf_counter() - t0) / k
    rows: list[dict] = []
    for budget in budgets:
        at_budget = [_at(t, budget) for t in tuned]
        cfg_b = replace(cfg, tune=replace(cfg.tune, steps=budget))
        shared = {"pivot": pivot_s, "tune": tune_s * budget / last}
        results = finish_inversions(G, images, ids, cfg_b, w_pivots, at_budget, None, shared,
                                    {"pivot": suite.pivot_steps, "tune": budget})
        rows += _rows(ids, method, budget, results, drift if budget == suite.budgets[-1] else None)
    return rows


def _at(result: TuneResult, budget: int) -> TuneResult:
    """The tuning result as it stood after ``budget`` steps."""
    diverged = result.diverged_at if result.diverged_at is not None and result.diverged_at <= budget else None
    deltas = result.snapshots.get(budget, result.deltas)
    if diverged is None and not all_finite(deltas):
        diverged = budget       # the update of step `budget` left non-finite weights (the next loss says so too)
    return replace(result, deltas=deltas, losses=result.losses[:budget], steps=budget, diverged_at=diverged,
                   snapshots={})


def _rows(ids: list[str], method: str, budget: int, results: list[InversionResult | InversionError],
          drift: DriftReference | None = None) -> list[dict]:
    """The table's rows of one method at one budget: set, seed (added by evaluate_set), image_id, method, budget,
    status, error and the registry's ``names("benchmark")`` (drift measured when ``drift`` is given, else null)."""
    rows = []
    for image_id, result in zip(ids, results, strict=True):
        if isinstance(result, InversionError):
            rows.append({"image_id": image_id, "method": method, "budget": budget, "status": "failed",
                         "error": str(result)})
            continue
        m = result.metrics
        row = {"image_id": result.image_id, "method": method, "budget": budget, "status": "ok", "error": None,
               "seconds": result.seconds["pivot"] + result.seconds["tune"],
               **{name: m.get(name) for name in names("result") if name in names("benchmark")},     # no faces
               "drift": None, "delta_bytes": result.delta_bytes}
        if drift is not None:
            G_tuned = apply_deltas(drift.G, decode_deltas(result.encoded)) if result.encoded else drift.G
            row["drift"] = drift.distance(G_tuned)
        rows.append(row)
    return rows
