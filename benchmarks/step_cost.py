"""Seconds per tuning step: GANI (its default, and its GMM forms without the regulariser) against PTI, with and
without the regulariser.

    .venv/bin/python benchmarks/step_cost.py --checkpoint builtin --steps 20 --repeats 3

Every variant tunes from the same pivot (the average latent) on the same photo; variants are
interleaved over the repeats so that drifting machine load hits them alike. Reports the median seconds
per step and its ratio to PTI without the regulariser, measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from gani_core import load_generator
from gani_core.checkout import REPO
from gani_core.images import load_image
from gani_core.invert import GANI_TUNE, PTI_TUNE
from gani_core.tuning import tune

VARIANTS = {
    "pti": PTI_TUNE,
    "pti-reg": replace(PTI_TUNE, reg_weight=GANI_TUNE.reg_weight),
    "gani": GANI_TUNE,                                              # the default, regulariser included
    "gani-noreg": replace(GANI_TUNE, reg_weight=0.0),
    "gani-rank8": replace(GANI_TUNE, rank=8),                       # the default before issue 11
    "gani-pool16": replace(GANI_TUNE, reg_pool=16),                 # 16 regulariser latents, rendered once
    "gani-lowrank": replace(GANI_TUNE, form="lowrank", reg_weight=0.0),
    "gani-param": replace(GANI_TUNE, form="param", reg_weight=0.0),
    "gani-grad": replace(GANI_TUNE, form="grad", reg_weight=0.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="builtin")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    G = load_generator(args.checkpoint, device=args.device)
    image = load_image(REPO / "examples" / "photos" / "astronaut.jpg", resolution=G.img_resolution)
    target = (image.unsqueeze(0) * 2 - 1).to(args.device)
    w_pivot = G.mapping.w_avg.expand(G.num_ws, -1).clone()
    tune(G, w_pivot, target, replace(PTI_TUNE, steps=2))  # warm-up: LPIPS, allocator
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, cfg in VARIANTS.items():
            cfg = replace(cfg, steps=args.steps, precision=args.precision)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            tune(G, w_pivot, target, cfg)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) / args.steps)
    base = statistics.median(times["pti"])
    print(f"{G.label} ({G.img_resolution} px), {args.steps} steps x {args.repeats}, device {args.device}, "
          f"precision {args.precision}, threads {torch.get_num_threads()}")
    print(f"{'variant':<20} {'s/step':>8} {'x pti':>7}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<20} {med:>8.4f} {med / base:>7.2f}")


if __name__ == "__main__":
    main()
