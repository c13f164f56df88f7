"""The quality-against-time curves: for each set, lpips and locality against seconds per image.

One line per tuning method through its budgets (mean, with its 95 % bootstrap interval shaded), one marker per
pivot-only method (w, wplus). Drawn from ``stats.summary`` rows, as PNG bytes (matplotlib, Agg).
"""

from __future__ import annotations

import io
import itertools

from matplotlib.figure import Figure  # not pyplot: no global state, safe in worker threads

from gani_core.metric_registry import METRICS

# The metrics drawn against seconds per image, one panel each (report.comparisons compares them at equal time).
PANELS = ("lpips", "locality")
COLOURS = {"gani": "tab:red", "gani-lowrank": "tab:orange", "gani-param": "tab:pink", "gani-grad": "tab:brown",
           "pti": "tab:blue", "pti-reg": "tab:cyan", "wplus": "tab:green", "w": "tab:gray"}
OTHER_COLOURS = ("tab:purple", "tab:olive", "black", "gold", "lime", "navy")    # ablations, in order, dashed


def _styles(methods: list[str]) -> dict[str, tuple[str, str]]:
    """(colour, line style) per method: the named methods' own colours, then ablations (``gani[rank=8]``) in
    colours no named method uses, dashed, so that no two methods of a figure look alike."""
    others = itertools.cycle(OTHER_COLOURS)
    return {m: (COLOURS[m], "-") if m in COLOURS else (next(others), "--") for m in methods}


def curves_png(summary_rows: list[dict], sets: list[str] | None = None, title: str = "") -> bytes:
    """The curves of ``sets`` (default: every set in the rows, in their order) as one PNG."""
    sets = sets or list(dict.fromkeys(r["set"] for r in summary_rows))
    fig = Figure(figsize=(10, 2.8 * len(sets)))
    axes = fig.subplots(len(sets), len(PANELS), squeeze=False)
    styles = _styles(list(dict.fromkeys(r["method"] for r in summary_rows)))
    for row_axes, set_name in zip(axes, sets, strict=True):
        rows = [r for r in summary_rows if r["set"] == set_name]
        for ax, metric in zip(row_axes, PANELS, strict=True):
            for method in dict.fromkeys(r["method"] for r in rows):
                points = sorted((r for r in rows if r["method"] == method), key=lambda r: r["seconds"])
                x = [r["seconds"] for r in points]
                y, lo, hi = ([r[k] for r in points] for k in (metric, f"{metric}_lo", f"{metric}_hi"))
                colour, line = styles[method]
                if len(points) == 1:
                    ax.errorbar(x, y, yerr=[[y[0] - lo[0]], [hi[0] - y[0]]], fmt="s", color=colour, label=method,
                                capsize=3)
                else:
                    ax.plot(x, y, "o", linestyle=line, color=colour, label=method, markersize=3)
                    ax.fill_between(x, lo, hi, color=colour, alpha=0.15, linewidth=0)
            ax.set_title(f"{set_name}: {metric} ({METRICS[metric].better} is better)", fontsize=9)
            ax.set_xlabel("seconds per image", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=2)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (2.8 * len(sets))))    # room for the title
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()
