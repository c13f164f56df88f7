"""Means with bootstrap intervals, comparisons at equal time and equal reconstruction, and the goals.

The unit of resampling is the image: each image's value is first averaged over seeds, then images are drawn
with replacement (``BOOTSTRAP`` times) and the interval is the 2.5 and 97.5 percentiles of the resampled means
(percentile bootstrap, 95 %). A comparison of two methods resamples the images both succeeded on, the same
draw for both (paired), so that the interval of a ratio reflects image-to-image variation once, not twice.

A method's curve is its mean metric against its mean seconds per image over its budgets. "At equal time"
reads method b's curve (linearly interpolated) at the seconds method a took for a budget; where a took longer
than b's largest budget, b's last value is used and the row says ``extrapolated`` (b would have improved
further: the ratio then flatters a).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from gani_core.metric_registry import names
from gani_core.shapes.out_of_domain import IN_DOMAIN

BOOTSTRAP = 2000
LEVEL = 0.95
POOLED = "all-out-of-domain"       # every set but in-domain, pooled


def with_pooled(rows: Iterable[dict]) -> list[dict]:
    """The rows, plus a copy of every out-of-domain row (photos included) under the set ``all-out-of-domain``."""
    rows = list(rows)
    return rows + [{**r, "set": POOLED, "image_id": f"{r['set']}/{r['image_id']}"} for r in rows
                   if r["set"] != IN_DOMAIN]


def _per_image(rows: Iterable[dict], metric: str) -> dict[tuple[str, str, int], dict[str, float]]:
    """{(set, method, budget): {image_id: mean over seeds of metric}} over the ok rows with a value."""
    acc: dict[tuple[str, str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        value = r.get(metric)
        if r["status"] == "ok" and value is not None and np.isfinite(value):
            acc[(r["set"], r["method"], r["budget"])][r["image_id"]].append(float(value))
    return {key: {i: float(np.mean(v)) for i, v in images.items()} for key, images in acc.items()}


def _draws(n: int, seed: int = 0) -> np.ndarray:
    """BOOTSTRAP resamples of n indices [BOOTSTRAP, n], the same for a given n and seed."""
    return np.random.default_rng(seed).integers(0, n, size=(BOOTSTRAP, n))


def interval(values: np.ndarray) -> tuple[float, float]:
    """The percentile interval at LEVEL of resampled statistics."""
    tail = (1 - LEVEL) / 2 * 100
    lo, hi = np.nanpercentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_mean(values: list[float] | np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi) of per-image values with a percentile bootstrap interval (a single value: lo = hi = it)."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    lo, hi = interval(v[_draws(len(v), seed)].mean(axis=1))
    return float(v.mean()), lo, hi


def summary(rows: list[dict]) -> list[dict]:
    """One row per (set, method, budget): images, failed, and mean / lo / hi of every metric of the registry's
    ``names("benchmark")`` (``lpips``, ``lpips_lo``, ``lpips_hi``, ...)."""
    rows = with_pooled(rows)
    keys = sorted({(r["set"], r["method"], r["budget"]) for r in rows})
    failed: dict[tuple, set] = defaultdict(set)
    for r in rows:
        if r["status"] != "ok":
            failed[(r["set"], r["method"], r["budget"])].add(r["image_id"])
    per_metric = {m: _per_image(rows, m) for m in names("benchmark")}
    out = []
    for key in keys:
        set_name, method, budget = key
        row: dict = {"set": set_name, "method": method, "budget": budget,
                     "images": len(per_metric["lpips"].get(key, {})), "failed": len(failed[key])}
        for m in names("benchmark"):
            mean, lo, hi = bootstrap_mean(list(per_metric[m].get(key, {}).values()))
            row.update({m: mean, f"{m}_lo": lo, f"{m}_hi": hi})
        out.append(row)
    return out


def _curve_matrix(per_image: dict, set_name: str, method: str, ids: list[str]) -> tuple[list[int], np.ndarray]:
    """(budgets, values [images, budgets]) of one method's curve on the images ``ids``."""
    budgets = sorted(b for (s, m, b) in per_image if s == set_name and m == method)
    return budgets, np.array([[per_image[(set_name, method, b)][i] for b in budgets] for i in ids])


def _common_ids(per_image_maps: list[dict], set_name: str, methods: list[str]) -> list[str]:
    common: set[str] | None = None
    for per_image in per_image_maps:
        for (s, m, _b), images in per_image.items():
            if s == set_name and m in methods:
                common = set(images) if common is None else common & set(images)
    return sorted(common or ())


def equal_time(rows: list[dict], set_name: str, metric: str, a: str = "gani", b: str = "pti") -> list[dict]:
    """For each budget of a: a's mean metric over b's metric at the same seconds per image, with a paired
    interval: [{budget, seconds, a, b, ratio, ratio_lo, ratio_hi, extrapolated}]."""
    rows = with_pooled(rows)
    values, seconds = _per_image(rows, metric), _per_image(rows, "seconds")
    ids = _common_ids([values, seconds], set_name, [a, b])
    if not ids:
        return []
    budgets_a, va = _curve_matrix(values, set_name, a, ids)
    _, sa = _curve_matrix(seconds, set_name, a, ids)
    budgets_b, vb = _curve_matrix(values, set_name, b, ids)
    _, sb = _curve_matrix(seconds, set_name, b, ids)
    if not budgets_a or not budgets_b:
        return []

    def means(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:     # a's means, b's read at a's seconds
        t_b, m_b = sb[idx].mean(0), vb[idx].mean(0)
        order = np.argsort(t_b)
        return va[idx].mean(0), np.interp(sa[idx].mean(0), t_b[order], m_b[order])

    def ratios(idx: np.ndarray) -> np.ndarray:          # [len(budgets_a)] for the images idx
        m_a, m_b = means(idx)
        return m_a / m_b

    all_idx = np.arange(len(ids))
    point = ratios(all_idx)
    boot = np.stack([ratios(d) for d in _draws(len(ids))])
    t_a, t_b_max = sa.mean(0), sb.mean(0).max()
    m_b = means(all_idx)[1]
    out = []
    for j, budget in enumerate(budgets_a):
        lo, hi = interval(boot[:, j])
        out.append({"set": set_name, "metric": metric, "a": a, "b": b, "budget": budget, "images": len(ids),
                    "seconds": float(t_a[j]), "value_a": float(va[:, j].mean()), "value_b": float(m_b[j]),
                    "ratio": float(point[j]), "ratio_lo": lo, "ratio_hi": hi,
                    "extrapolated": bool(t_a[j] > t_b_max)})
    return out


def equal_reconstruction(rows: list[dict], set_name: str, a: str = "gani", b: str = "pti-reg",
                         metric: str = "locality") -> dict | None:
    """a's ``metric`` at its largest budget over b's where b's curve reaches a's lpips (interpolated along b's
    budgets), with a paired interval; ``extrapolated`` when b never got as close as a did."""
    rows = with_pooled(rows)
    lp, values = _per_image(rows, "lpips"), _per_image(rows, metric)
    ids = _common_ids([lp, values], set_name, [a, b])
    if not ids:
        return None
    budgets_a, lp_a = _curve_matrix(lp, set_name, a, ids)
    metric_budgets_a, m_a = _curve_matrix(values, set_name, a, ids)
    budgets_b, lp_b = _curve_matrix(lp, set_name, b, ids)
    metric_budgets_b, m_b = _curve_matrix(values, set_name, b, ids)
    if not budgets_a or not budgets_b or (metric_budgets_a, metric_budgets_b) != (budgets_a, budgets_b):
        return None                     # a curve missing, or the metric not measured (edit_accuracy: no factors)

    def ratio(idx: np.ndarray) -> float:
        target = lp_a[idx, -1].mean()
        x, y = lp_b[idx].mean(0), m_b[idx].mean(0)
        order = np.argsort(x)
        return float(m_a[idx, -1].mean() / np.interp(target, x[order], y[order]))

    boot = np.array([ratio(d) for d in _draws(len(ids))])
    lo, hi = interval(boot)
    return {"set": set_name, "a": a, "b": b, "metric": metric, "budget": budgets_a[-1], "images": len(ids),
            "lpips_a": float(lp_a[:, -1].mean()), "ratio": ratio(np.arange(len(ids))), "ratio_lo": lo,
            "ratio_hi": hi, "extrapolated": bool(lp_a[:, -1].mean() < lp_b.mean(0).min())}


def paired_ratio(rows: list[dict], set_name: str, metric: str, budget: int, a: str = "gani", b: str = "pti",
                 ) -> dict | None:
    """a's mean metric over b's at the same budget (steps), with a paired interval."""
    rows = with_pooled(rows)
    values = _per_image(rows, metric)
    va, vb = values.get((set_name, a, budget), {}), values.get((set_name, b, budget), {})
    ids = sorted(set(va) & set(vb))
    if not ids:
        return None
    x, y = np.array([va[i] for i in ids]), np.array([vb[i] for i in ids])
    draws = _draws(len(ids))
    with np.errstate(divide="ignore", invalid="ignore"):
        lo, hi = interval(x[draws].mean(1) / y[draws].mean(1))
        point = float(x.mean() / y.mean()) if y.mean() != 0 else float("nan")
    return {"set": set_name, "metric": metric, "a": a, "b": b, "budget": budget, "images": len(ids),
            "value_a": float(x.mean()), "value_b": float(y.mean()), "ratio": point, "ratio_lo": lo, "ratio_hi": hi}


@dataclass(frozen=True)
class Goal:
    """One of issue 11's goals: ``a``'s ``metric`` over ``b``'s, compared ``at`` a condition, against ``target``."""

    goal: str           # as the report words it
    metric: str
    b: str              # the baseline
    at: str             # equal time, equal lpips, equal steps, worst budget (the lpips curve's worst ratio)
    target: float
    below: bool = True  # met at or below the target (else at or above)

    @property
    def name(self) -> str:
        """The short name a table column reads well under: ``lpips gani/pti equal time``."""
        return f"{self.metric} gani/{self.b} {self.at}"


GOALS: tuple[Goal, ...] = (
    Goal("lpips at equal time, gani/pti <= 0.7", "lpips", "pti", "equal time", 0.7),
    Goal("locality at equal time, gani/pti <= 0.5", "locality", "pti", "equal time", 0.5),
    Goal("locality at equal lpips, gani/pti-reg <= 0.8", "locality", "pti-reg", "equal lpips", 0.8),
    Goal("edit_accuracy at equal steps, gani/pti >= 1", "edit_accuracy", "pti", "equal steps", 1.0, below=False),
    Goal("drift at equal steps, gani/pti < 1", "drift", "pti", "equal steps", 1.0),
    Goal("lpips curve below pti's at every budget (worst gani/pti < 1)", "lpips", "pti", "worst budget", 1.0),
)


def goals(rows: list[dict], budget: int, a: str = "gani") -> list[dict]:
    """Issue 11's goals (:data:`GOALS`), per out-of-domain set and pooled, at GANI's largest common ``budget``:
    each with its value, interval, target and whether the point estimate meets it (``sure``: the whole interval
    does), and its short ``name`` (:attr:`Goal.name`). ``a``: the method held to them in GANI's place (an ablation
    such as ``gani[rank=32]``); the goals keep their names."""
    sets = [*sorted({r["set"] for r in rows if r["set"] != IN_DOMAIN}), POOLED]
    out = []
    for s in sets:
        curves = {m: equal_time(rows, s, m, a) for m in ("lpips", "locality")}
        for g in GOALS:
            if g.at == "equal time":
                r = next((r for r in curves[g.metric] if r["budget"] == budget), None)
            elif g.at == "equal lpips":
                r = equal_reconstruction(rows, s, a, g.b, g.metric)
            elif g.at == "equal steps":
                r = paired_ratio(rows, s, g.metric, budget, a, g.b)
            else:       # worst budget
                r = max(curves[g.metric], key=lambda r: r["ratio"], default=None)
            if r is None:
                continue
            met = r["ratio"] <= g.target if g.below else r["ratio"] >= g.target
            sure = r["ratio_hi"] <= g.target if g.below else r["ratio_lo"] >= g.target
            out.append({"goal": g.goal, "name": g.name, "set": s, "method": a, "value": r["ratio"],
                        "lo": r["ratio_lo"], "hi": r["ratio_hi"], "target": g.target, "below": g.below,
                        "met": bool(met), "sure": bool(sure), "extrapolated": bool(r.get("extrapolated", False))})
    return out
