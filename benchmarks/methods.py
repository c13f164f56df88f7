"""GANI against its baselines (PTI, PTI with its regulariser, W+), same pivot, same seeds.

    .venv/bin/python benchmarks/methods.py --pivot-steps 200 --tune-steps 200 --images 3
    .venv/bin/python benchmarks/methods.py --checkpoint builtin-random --input examples/photos

By default: the trained built-in generator on held-out images of its own domain (examples/shapes), where
`edit_accuracy` (and its per-factor ratios, tuned / original edit response) is measured too.

Each image gets one W pivot, shared by every tuning method (W+ finds its own). Variants are
``NAME=FORM,LR,REG_WEIGHT[,RANK[,REG_INTERVAL]]`` (e.g. ``gani-param=param,3e-3,0.1``); the
defaults are GANI's default, PTI as published (all synthesis weights, lr 3e-4, no regulariser), PTI with
its regulariser, and W+. Prints a markdown table of the means over images, then GANI/PTI ratios.
Writes nothing else unless ``--json`` is given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from gani_core import load_generator
from gani_core.checkout import REPO
from gani_core.deltas import generator_bytes
from gani_core.images import load_image
from gani_core.invert import GANI_TUNE, PTI_TUNE, InvertConfig, invert_image, method_config
from gani_core.pivot import find_pivot

COLUMNS = ("lpips", "mse", "psnr", "ms_ssim", "lpips_vgg", "locality", "edit_consistency", "edit_accuracy",
           "s_per_image",
           "s_per_tune_step", "delta_bytes", "delta_lpips_change")


def _fmt3(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def parse_variant(spec: str) -> tuple[str, InvertConfig]:
    name, _, rest = spec.partition("=")
    if name == "wplus" and not rest:
        return name, method_config("wplus")
    if name == "pti" and not rest:
        return name, method_config("pti")
    if name == "pti-reg" and not rest:
        return name, replace(method_config("pti"), tune=replace(PTI_TUNE, reg_weight=0.1))
    if name == "gani" and not rest:
        return name, method_config("gani")
    form, lr, reg_weight, *more = rest.split(",")
    base = PTI_TUNE if form == "full" else GANI_TUNE
    tune = replace(base, form=form, lr=float(lr), reg_weight=float(reg_weight),
                   rank=int(more[0]) if more else base.rank,
                   reg_interval=int(more[1]) if len(more) > 1 else base.reg_interval)
    return name, replace(method_config("gani"), method=name, tune=tune)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="builtin")
    parser.add_argument("--input", default=str(REPO / "examples" / "shapes"), help="folder of images")
    parser.add_argument("--images", type=int, default=3, help="how many of its images (sorted) to use")
    parser.add_argument("--offset", type=int, default=0, help="skip this many images first")
    parser.add_argument("--pivot-steps", type=int, default=200)
    parser.add_argument("--tune-steps", type=int, default=200)
    parser.add_argument("--variant", action="append", default=None,
                        help="NAME or NAME=FORM,LR,REG_WEIGHT[,RANK[,REG_INTERVAL]]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write every per-image row to this JSON file")
    args = parser.parse_args()
    variants = dict(parse_variant(v) for v in (args.variant or ["gani", "pti", "pti-reg", "wplus"]))

    G = load_generator(args.checkpoint, device=args.device)
    photos = sorted(p for p in Path(args.input).iterdir() if p.suffix.lower() in (".jpg", ".png"))
    photos = photos[args.offset : args.offset + args.images]
    print(f"{G.label} ({G.img_resolution} px, fp32 generator {generator_bytes(G)} bytes), {len(photos)} images, "
          f"pivot {args.pivot_steps} steps, tuning {args.tune_steps} steps, device {args.device}, "
          f"threads {torch.get_num_threads()}", flush=True)
    rows: dict[str, list[dict]] = {name: [] for name in variants}
    pivot_cfg = method_config("gani", pivot_steps=args.pivot_steps).pivot
    for photo in photos:
        image = load_image(photo, resolution=G.img_resolution).to(args.device)
        t0 = time.perf_counter()
        w_pivot = find_pivot(G, image.unsqueeze(0) * 2 - 1, pivot_cfg, seed=args.seed)
        pivot_seconds = time.perf_counter() - t0
        for name, cfg in variants.items():
            cfg = replace(cfg, seed=args.seed, pivot=replace(cfg.pivot, steps=args.pivot_steps))
            if cfg.tune is not None:
                cfg = replace(cfg, tune=replace(cfg.tune, steps=args.tune_steps))
            shared = w_pivot if cfg.pivot.space == "w" else None
            r = invert_image(G, image, photo.stem, cfg, w_pivot=shared)
            row = {**r.metrics, "delta_bytes": r.delta_bytes, "delta_lpips_change": r.delta_lpips_change,
                   **{f"edit_ratio_{k}": v for k, v in r.edit_ratios.items()},
                   "s_per_image": r.seconds["total"] + (pivot_seconds if shared is not None else 0.0),
                   "s_per_tune_step": r.seconds["tune"] / r.steps["tune"] if r.steps["tune"] else None}
            rows[name].append(row)
            print(f"  {photo.stem:<10} {name:<14} lpips {row['lpips']:.4f}  locality {row['locality']:.4f}  "
                  f"{row['s_per_image']:.1f} s", flush=True)

    def mean(name: str, col: str) -> float | None:
        vals = [r[col] for r in rows[name] if r.get(col) is not None and r[col] == r[col]]  # skip None, NaN
        return statistics.fmean(vals) if vals else None

    print()
    print("| variant | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for name in variants:
        cells = []
        for col in COLUMNS:
            v = mean(name, col)
            cells.append("-" if v is None else (f"{v:.0f}" if col == "delta_bytes" else f"{v:.4g}"))
        print(f"| {name} | " + " | ".join(cells) + " |")
    ratio_cols = sorted({k for rs in rows.values() for r in rs for k in r if k.startswith("edit_ratio_")})
    if ratio_cols:
        print("\nedit response after tuning / before (1 = intact), mean over images:")
        print("| variant | " + " | ".join(c.removeprefix("edit_ratio_") for c in ratio_cols) + " |")
        print("|---|" + "---|" * len(ratio_cols))
        for name in variants:
            print(f"| {name} | " + " | ".join(_fmt3(mean(name, c)) for c in ratio_cols) + " |")
    ganis = [n for n in variants if n.startswith("gani")]
    for base in ("pti", "pti-reg"):
        if base not in variants:
            continue
        for g in ganis:
            ratios = []
            for col in ("lpips", "mse", "locality", "edit_accuracy", "s_per_tune_step", "delta_bytes"):
                a, b = mean(g, col), mean(base, col)
                ratios.append(f"{col} {a / b:.3f}" if a is not None and b else f"{col} -")
            print(f"{g}/{base}: " + ", ".join(ratios))
    if "gani" in variants:
        frac = (mean("gani", "delta_bytes") or 0) / generator_bytes(G)
        print(f"gani delta_bytes / fp32 generator bytes: {frac:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
