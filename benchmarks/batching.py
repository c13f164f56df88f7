"""Images per hour against the batch size K, for gani, pti and wplus, with K = 1 measured in the same run.

    .venv/bin/python benchmarks/batching.py                                   # CPU: builtin, K = 1 2 4 8 16
    .venv/bin/python benchmarks/batching.py --device cuda --ks 1 8 64 256 512 --checkpoint builtin
    .venv/bin/python benchmarks/batching.py --device cuda --checkpoint paper256 --ks 1 8 32 64
    .venv/bin/python benchmarks/batching.py --device cuda --checkpoint config-f-1024 --ks 1 4 8 16
    .venv/bin/python benchmarks/batching.py --flops --checkpoint config-f-1024   # FLOPs per image, any machine

For each method and K it times ``--steps`` steady-state steps of each stage of the batched engine (after a
warm-up step) on K photos: the pivot (gani_core.pivot.find_pivots), the tuning (gani_core.tuning.tune_batch,
with the method's default regulariser setting) and the metrics of one image. Images per hour at the default
step budgets (450 pivot + 350 tuning steps) is then

    3600 * K / (450 * pivot_step(K) + 350 * tune_step(K) + K * metrics(K))

that is, the full budget at the measured step times; ``--full`` runs the whole budget instead (slow on a CPU).
Methods are interleaved over K so that drifting machine load hits them alike. On CUDA: peak memory per image,
and TFLOP/s achieved against ``--peak-tflops`` (FLOPs counted with torch.utils.flop_counter). ``config-f-1024``
and ``paper256`` are StyleGAN2 generators of those sizes with random weights (speed does not depend on training);
``benchmarks/gpu_batching.sh`` runs every GPU row in one command.
Writes a JSON with every figure to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from gani_core.checkout import REPO
from gani_core.checkpoints.ref import resolve_checkpoint
from gani_core.evaluation.evaluate import benchmark_config
from gani_core.images import load_image
from gani_core.invert import InvertConfig, invert_images
from gani_core.networks import Generator, GeneratorConfig
from gani_core.pivot import PivotConfig, find_pivots
from gani_core.tuning import TuneConfig, tune_batch

PHOTOS = sorted((REPO / "examples" / "photos").glob("*.jpg"))
METHODS = ("gani", "pti", "pti-reg", "wplus")    # pti-reg: PTI with GANI's regulariser setting (a GANI step
                                                # against a PTI step at the same regulariser)
# Random-weight generators of real models' sizes (speed does not depend on training).
SIZES = {
    "config-f-1024": GeneratorConfig(z_dim=512, w_dim=512, img_resolution=1024, mapping_layers=8,
                                     channel_base=32768, channel_max=512, label="config-f 1024 px, random weights"),
    "paper256": GeneratorConfig(z_dim=512, w_dim=512, img_resolution=256, mapping_layers=8, channel_base=16384,
                                channel_max=512, label="paper256 (stylegan2-ada), random weights"),
}


def config_of(method: str, pivot_steps: int | None = None, tune_steps: int | None = None) -> InvertConfig:
    return benchmark_config(method, pivot_steps, tune_steps, seed=0)


def load(spec: str, device: str) -> Generator:
    if spec in SIZES:
        return Generator(SIZES[spec]).eval().requires_grad_(False).to(device)
    return resolve_checkpoint(spec).load(device)


def targets(G: Generator, k: int, device: str) -> torch.Tensor:
    images = [load_image(PHOTOS[i % len(PHOTOS)], resolution=G.img_resolution) for i in range(k)]
    return torch.stack(images).to(device) * 2 - 1


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def stage_seconds(G: Generator, method: str, k: int, steps: int, device: str) -> dict[str, float]:
    """Seconds per step of the pivot and tuning stages at K images (after one warm-up step each)."""
    cfg = config_of(method)
    t = targets(G, k, device)
    out = {}
    for stage in ("pivot", "tune"):
        if stage == "tune" and cfg.tune is None:
            out["tune"] = 0.0
            continue
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

        def run(n: int, stage: str = stage) -> None:
            if stage == "pivot":
                find_pivots(G, t, replace(cfg.pivot, steps=n))
            else:
                tune_batch(G, G.mapping.w_avg.expand(k, G.num_ws, -1).clone(), t, replace(cfg.tune, steps=n))

        run(1)
        sync(device)
        t0 = time.perf_counter()
        run(steps)
        sync(device)
        out[stage] = (time.perf_counter() - t0) / steps
        if device.startswith("cuda"):
            out[f"{stage}_peak_mb_per_image"] = torch.cuda.max_memory_allocated() / 2**20 / k
    return out


def metrics_seconds(G: Generator, method: str, k: int, device: str) -> float:
    """Seconds per image of the metrics of K images measured together (previews, locality, edit metrics, LPIPS;
    gani_core.measure) after a 1 + 1 step inversion, the second time (the first loads LPIPS' VGG and warms the
    allocator)."""
    cfg = config_of(method, pivot_steps=1, tune_steps=1 if method != "wplus" else None)
    images = (targets(G, k, device) + 1) / 2
    ids = [str(i) for i in range(k)]
    invert_images(G, images, ids, cfg)
    return invert_images(G, images, ids, cfg)[0].seconds["metrics"]


def flops_per_image(G: Generator, method: str, k: int, device: str) -> dict[str, float]:
    """FLOPs per image of one pivot step and one tuning step at K images (torch.utils.flop_counter)."""
    cfg = config_of(method)
    t = targets(G, k, device)
    out = {}
    with FlopCounterMode(display=False) as counter:
        find_pivots(G, t, replace(cfg.pivot, steps=1))
    out["pivot_step"] = counter.get_total_flops() / k
    if cfg.tune is not None:
        with FlopCounterMode(display=False) as counter:
            tune_batch(G, G.mapping.w_avg.expand(k, G.num_ws, -1).clone(), t, replace(cfg.tune, steps=1))
        out["tune_step"] = counter.get_total_flops() / k
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="builtin", help=f"a checkpoint spec, or one of {sorted(SIZES)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--methods", nargs="+", default=["gani", "pti", "wplus"],
                        help=f"{', '.join(METHODS)}, or a tuning method with options overridden, e.g. 'gani[rank=8]'")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per stage (default: 10)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for utilisation")
    parser.add_argument("--flops", action="store_true", help="only count FLOPs per image (K = 1)")
    parser.add_argument("--out", default=None, help="JSON file for the figures")
    args = parser.parse_args()
    for method in args.methods:        # an unknown method or option fails here, before any measurement
        try:
            config_of(method)
        except (ValueError, TypeError) as exc:
            parser.error(f"--methods {method}: {exc}")
    if args.threads:
        torch.set_num_threads(args.threads)
    G = load(args.checkpoint, args.device)
    budget = {"pivot": PivotConfig.steps, "tune": TuneConfig.steps}
    report: dict = {"checkpoint": args.checkpoint, "resolution": G.img_resolution, "device": args.device,
                    "torch_threads": torch.get_num_threads(), "budget": budget, "rows": []}
    if args.flops:
        for method in args.methods:
            f = flops_per_image(G, method, 1, args.device)
            total = budget["pivot"] * f["pivot_step"] + (budget["tune"] * f.get("tune_step", 0.0))
            report["rows"].append({"method": method, **f, "full_budget": total})
            print(f"{method:6s} pivot step {f['pivot_step'] / 1e9:9.1f} GFLOP  tune step "
                  f"{f.get('tune_step', 0) / 1e9:9.1f} GFLOP  full budget {total / 1e12:8.2f} TFLOP per image")
    else:
        for k in args.ks:
            for method in args.methods:
                s = stage_seconds(G, method, k, args.steps, args.device)
                metrics = metrics_seconds(G, method, k, args.device)
                per_batch = budget["pivot"] * s["pivot"] + budget["tune"] * s["tune"] + k * metrics
                row = {"method": method, "k": k, **s, "metrics": metrics,
                       "images_per_hour": 3600 * k / per_batch}
                if args.device.startswith("cuda"):       # achieved TFLOP/s of each stage, and of the peak
                    f = flops_per_image(G, method, k, args.device)
                    for stage in ("pivot", "tune"):
                        if s[stage]:
                            row[f"{stage}_tflops"] = f[f"{stage}_step"] * k / s[stage] / 1e12
                            if args.peak_tflops:
                                row[f"{stage}_of_peak"] = row[f"{stage}_tflops"] / args.peak_tflops
                report["rows"].append(row)
        print(f"{G.img_resolution} px ({args.checkpoint}) on {args.device}, {torch.get_num_threads()} thread(s); "
              f"images per hour at {budget['pivot']} + {budget['tune']} steps (x: against K = 1 of this run)")
        print(f"{'method':6s} {'K':>4s} {'pivot s/step':>13s} {'tune s/step':>12s} {'metrics s/img':>14s} "
              f"{'images/h':>9s} {'x K=1':>6s}")
        for row in report["rows"]:
            base = next(r for r in report["rows"] if r["method"] == row["method"] and r["k"] == args.ks[0])
            row["vs_k1"] = row["images_per_hour"] / base["images_per_hour"]
            print(f"{row['method']:6s} {row['k']:4d} {row['pivot']:13.4f} {row['tune']:12.4f} {row['metrics']:14.3f} "
                  f"{row['images_per_hour']:9.1f} {row['vs_k1']:6.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
