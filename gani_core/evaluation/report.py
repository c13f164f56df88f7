"""The benchmark's outputs, written to a folder or an s3:// prefix (gani_core.storage).

    rows.parquet      one row per set x seed x image x method x budget (ROWS_SCHEMA: the registry's
                      names("benchmark"), gani_core.metric_registry)
    summary.parquet   one row per set x method x budget: means with 95 % bootstrap intervals (stats.summary)
    comparisons.json  gani against pti at equal time (every budget), at equal steps, and against pti-reg at
                      equal reconstruction, per set, each with its interval
    goals.json        issue 11's goals (stats.goals)
    curves.png        the quality-against-time curves (plots.curves_png)
    report.md         the tables above in markdown (docs/benchmark.md quotes it)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pyarrow as pa

from gani_core import storage
from gani_core.evaluation import stats
from gani_core.evaluation.plots import PANELS, curves_png
from gani_core.evaluation.suites import Suite
from gani_core.metric_registry import METRICS, check_names, names, parquet_field

ROWS_SCHEMA = pa.schema([
    ("set", pa.string()), ("seed", pa.int64()), ("image_id", pa.string()), ("method", pa.string()),
    ("budget", pa.int64()), ("status", pa.string()), ("error", pa.string()),
    *[parquet_field(m) for m in names("benchmark")],
])
# The registry's headline metrics the benchmark measures (id_similarity is a headline of face runs, not of the
# domain benchmark): its equal-steps comparisons and its table of means.
HEADLINE_METRICS = tuple(n for n in names("headline") if n in names("benchmark"))


def rows_table(rows: list[dict]) -> pa.Table:
    """The rows as a ROWS_SCHEMA table (columns a row lacks are null, non-finite numbers too). A key that is no
    column of the schema (a misspelt metric) raises KeyError rather than being left out."""
    check_names({key for r in rows for key in r}, ROWS_SCHEMA.names, "rows.parquet")
    clean = [{name: _finite(r.get(name)) for name in ROWS_SCHEMA.names} for r in rows]
    return pa.Table.from_pylist(clean, schema=ROWS_SCHEMA)


def _finite(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def comparisons(rows: list[dict], budget: int) -> dict[str, list[dict]]:
    """gani against pti (equal time: the curves' metrics, plots.PANELS, at every budget; equal steps:
    :data:`HEADLINE_METRICS` at ``budget``) and against pti-reg (equal reconstruction), for every set and pooled."""
    sets = [*dict.fromkeys(r["set"] for r in rows), stats.POOLED]
    methods = {r["method"] for r in rows}
    out: dict[str, list[dict]] = {"equal_time": [], "equal_steps": [], "equal_reconstruction": []}
    if not {"gani", "pti"} <= methods:
        return out
    for s in sets:
        for metric in PANELS:
            out["equal_time"] += stats.equal_time(rows, s, metric)
        for metric in HEADLINE_METRICS:
            r = stats.paired_ratio(rows, s, metric, budget)
            if r is not None:
                out["equal_steps"].append(r)
        # locality against pti-reg (the goal); edits against pti: both lose edit accuracy as they reconstruct
        pairs = [("pti-reg", "locality")] if "pti-reg" in methods else []
        for b, metric in [*pairs, ("pti", "edit_accuracy")]:
            r = stats.equal_reconstruction(rows, s, b=b, metric=metric)
            if r is not None:
                out["equal_reconstruction"].append(r)
    return out


@dataclass
class Report:
    written: dict[str, str]     # output name -> URI
    summary: list[dict]         # stats.summary
    goals: list[dict]           # stats.goals (empty without gani and pti)


def write_report(rows: list[dict], out: str, suite: Suite, split: str, header: str = "") -> Report:
    """Write every output above under ``out``."""
    summary = stats.summary(rows)
    budget = suite.budgets[-1]
    compared = comparisons(rows, budget)
    goals = stats.goals(rows, budget) if {"gani", "pti"} <= {r["method"] for r in rows} else []
    written = {}
    for name, data in (
        ("rows.parquet", rows_table(rows)),
        ("summary.parquet", pa.Table.from_pylist([{k: _finite(v) for k, v in r.items()} for r in summary])),
    ):
        written[name] = storage.join(out, name)
        storage.write_parquet(written[name], data)
    for name, obj in (("comparisons.json", compared), ("goals.json", goals)):
        written[name] = storage.join(out, name)
        storage.write_bytes(written[name], json.dumps(obj, indent=1, default=_finite).encode())
    title = f"suite {suite.name}, {split} split, {len({r['seed'] for r in rows})} seed(s)"
    written["curves.png"] = storage.join(out, "curves.png")
    storage.write_bytes(written["curves.png"], curves_png(summary, title=title))
    written["report.md"] = storage.join(out, "report.md")
    storage.write_bytes(written["report.md"], markdown(summary, compared, goals, suite, split, header).encode())
    return Report(written, summary, goals)


# The short names of :func:`headline`, in the order MLflow's runs table shows them (tasks/evaluation.py): how many
# goals are met, gani against pti and against pti-reg in the first two goals, then the others.
_FIRST = ("lpips gani/pti equal time", "locality gani/pti-reg equal lpips")
HEADLINE: tuple[str, ...] = ("goals met", *_FIRST, *(g.name for g in stats.GOALS if g.name not in _FIRST))


def headline(goals: list[dict], set_name: str = stats.POOLED) -> dict[str, str]:
    """The goals of ``set_name`` (pooled out of the domain) in a few words each, by short name, for a table cell:
    ``{"lpips gani/pti equal time": "0.98 [0.76, 1.24] ≤0.7 no", ..., "goals met": "2 of 6"}``. ``*`` after
    the value: extrapolated (the baseline's curve did not reach as far; the ratio flatters gani); ``yes (point)``:
    the point estimate meets the target, the interval does not wholly."""
    mine = [g for g in goals if g["set"] == set_name]
    out = {}
    for g in mine:
        sign = "≤" if g["below"] else "≥"
        met = ("yes" if g["sure"] else "yes (point)") if g["met"] else "no"
        star = "*" if g["extrapolated"] else ""
        out[g["name"]] = (f"{_fmt2(g['value'])}{star} [{_fmt2(g['lo'])}, {_fmt2(g['hi'])}] "
                          f"{sign}{g['target']:g} {met}")
    if mine:
        out["goals met"] = f"{sum(g['met'] for g in mine)} of {len(mine)}"
    return out


def _fmt2(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def _ci(r: dict, key: str, digits: int = 3) -> str:
    return f"{_fmt(r[key], digits)} [{_fmt(r[f'{key}_lo'], digits)}, {_fmt(r[f'{key}_hi'], digits)}]"


def _mean(r: dict, metric: str) -> str:
    """A summary row's mean of ``metric`` in the registry's format, with its interval for the curves' metrics."""
    show = METRICS[metric].format
    if metric not in PANELS:
        return show(r[metric])
    return f"{show(r[metric])} [{show(r[f'{metric}_lo'])}, {show(r[f'{metric}_hi'])}]"


def markdown(summary: list[dict], compared: dict[str, list[dict]], goals: list[dict], suite: Suite, split: str,
             header: str = "") -> str:
    """The report's tables: goals, comparisons, and every set's means of :data:`HEADLINE_METRICS` at the largest
    common budget."""
    budget = suite.budgets[-1]
    lines = [header, ""] if header else []
    lines += [f"Suite `{suite.name}` ({suite.description}), {split} split: sets {', '.join(suite.sets)}; "
              f"{suite.pivot_steps} pivot steps, budgets {list(suite.budgets)} (pti also {list(suite.pti_budgets)}), "
              f"seeds {list(suite.seeds)}. Means with 95 % bootstrap intervals over images.", ""]
    if goals:
        lines += ["### Goals (gani's largest common budget)", "",
                  "| goal | set | value [95 % CI] | target | met |", "|---|---|---|---|---|"]
        for g in goals:
            met = ("yes" if g["sure"] else "yes (point)") if g["met"] else "no"
            note = " (pti extrapolated)" if g["extrapolated"] else ""
            lines.append(f"| {g['goal']} | {g['set']} | {_fmt(g['value'], 3)} [{_fmt(g['lo'], 3)}, "
                         f"{_fmt(g['hi'], 3)}]{note} | {g['target']} | {met} |")
        lines.append("")
    if compared.get("equal_time"):
        lines += ["### gani / pti at equal time (pti's curve read at gani's seconds per image)", "",
                  "| set | metric | gani budget | seconds | gani | pti | ratio [95 % CI] |",
                  "|---|---|---|---|---|---|---|"]
        for r in compared["equal_time"]:
            show = METRICS[r["metric"]].format
            extra = " (extrapolated)" if r["extrapolated"] else ""
            lines.append(f"| {r['set']} | {r['metric']} | {r['budget']} | {_fmt(r['seconds'], 3)} | "
                         f"{show(r['value_a'])} | {show(r['value_b'])} | {_ci(r, 'ratio')}{extra} |")
        lines.append("")
    lines += [f"### Means at {budget} tuning steps (w, wplus: the pivot alone)", "",
              f"| set | method | images | {' | '.join(HEADLINE_METRICS)} |",
              "|---|---|---|" + "---|" * len(HEADLINE_METRICS)]
    for r in summary:
        if r["budget"] in (0, budget):
            means = " | ".join(_mean(r, m) for m in HEADLINE_METRICS)
            lines.append(f"| {r['set']} | {r['method']} | {r['images']} | {means} |")
    return "\n".join(lines) + "\n"
