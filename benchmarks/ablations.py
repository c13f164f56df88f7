"""Every GANI variant of one or more domain-benchmark results held to issue 11's goals: one table, to choose on.

    .venv/bin/python benchmarks/domain_inversion.py --suite session --split dev --sets two-objects bg-noise \\
        --count 3 --methods gani "gani[rank=32]" pti pti-reg --out /tmp/abl/a
    .venv/bin/python benchmarks/ablations.py /tmp/abl/a /tmp/abl/b --budget 200

Reads the rows of each folder (``parts/*.json``, as benchmarks/domain_inversion.py saves them), pools them, and
for every method whose name starts with ``gani`` computes the goals of gani_core/evaluation/stats.goals with that
method in GANI's place, against ``pti`` and ``pti-reg`` of the same rows, on the pooled out-of-domain images
(``all-out-of-domain``; ``--set`` picks another). Folders of separate runs pool correctly when they were run
with the same suite, split, seed, checkpoint and thread count: the W pivot of an image is then the same in each
(find_pivots is deterministic on one device). A pair (set, seed) found in two folders keeps the rows of the first
for each method.

Columns: lpips and seconds per image at ``--budget`` steps; then ratios to PTI with 95 % paired bootstrap
intervals: lpips at equal steps, lpips and locality at equal time, locality at equal lpips against pti-reg,
edit_accuracy at equal steps and at equal lpips (against pti), drift at equal steps; ``*`` marks a ratio whose
comparison was extrapolated.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gani_core.evaluation import stats


def load_rows(folders: list[Path]) -> list[dict]:
    """The rows of every folder's ``parts/``; a (set, seed, method) already seen in an earlier folder is skipped."""
    seen: set[tuple] = set()
    rows: list[dict] = []
    for folder in folders:
        parts = sorted((folder / "parts").glob("*.json"))
        if not parts:
            raise SystemExit(f"{folder}: no parts/*.json (not a benchmarks/domain_inversion.py output)")
        fresh = [r for part in parts for r in json.loads(part.read_text())]
        keys = {(r["set"], r["seed"], r["method"]) for r in fresh}
        rows += [r for r in fresh if (r["set"], r["seed"], r["method"]) not in seen]
        seen |= keys
    return rows


def _ratio(r: dict | None) -> str:
    if r is None:
        return "-"
    star = "*" if r.get("extrapolated") else ""
    return f"{r['ratio']:.2f}{star} [{r['ratio_lo']:.2f}, {r['ratio_hi']:.2f}]"


def table(rows: list[dict], budget: int, set_name: str) -> str:
    """The markdown table of every gani variant in ``rows`` on ``set_name``."""
    variants = sorted({r["method"] for r in rows if r["method"].startswith("gani")})
    summary = {(s["set"], s["method"], s["budget"]): s for s in stats.summary(rows)}
    lines = ["| variant | lpips | s/image | lpips / pti, equal steps | lpips / pti, equal time | "
             "locality / pti, equal time | locality / pti-reg, equal lpips | edit_accuracy / pti | "
             "edit_accuracy / pti, equal lpips | drift / pti |", "|---|---|---|---|---|---|---|---|---|---|"]
    for a in variants:
        mean = summary.get((set_name, a, budget))
        if mean is None:
            continue
        at_time = {m: next((r for r in stats.equal_time(rows, set_name, m, a) if r["budget"] == budget), None)
                   for m in ("lpips", "locality")}
        cells = [a, f"{mean['lpips']:.4f}", f"{mean['seconds']:.1f}",
                 _ratio(stats.paired_ratio(rows, set_name, "lpips", budget, a)),
                 _ratio(at_time["lpips"]), _ratio(at_time["locality"]),
                 _ratio(stats.equal_reconstruction(rows, set_name, a)),
                 _ratio(stats.paired_ratio(rows, set_name, "edit_accuracy", budget, a)),
                 _ratio(stats.equal_reconstruction(rows, set_name, a, "pti", "edit_accuracy")),
                 _ratio(stats.paired_ratio(rows, set_name, "drift", budget, a))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--budget", type=int, default=200, help="GANI's step budget compared (default 200)")
    parser.add_argument("--set", dest="set_name", default=stats.POOLED,
                        help=f"a set of the rows, or {stats.POOLED} (default)")
    args = parser.parse_args()
    rows = load_rows(args.folders)
    images = len({r["image_id"] for r in stats.with_pooled(rows) if r["set"] == args.set_name})
    print(f"{args.set_name}: {images} image(s); budget {args.budget}\n")
    print(table(rows, args.budget, args.set_name))


if __name__ == "__main__":
    main()
