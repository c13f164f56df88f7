"""``gani train-builtin``: train the built-in generator on the shapes domain, then its finishing stages."""

from __future__ import annotations

import argparse
import math
from dataclasses import replace

from gani_core.cli.common import resolve_device


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    if not args.finish_only and not _train(args, device):
        return 0    # stopped by --max-minutes: nothing to finish yet
    if not args.no_finish:
        from gani_core.shapes.build import finish_builtin

        finish_builtin(args.out, device=device, install=args.install, probe_steps=args.probe_steps, log=print)
    return 0


def _train(args: argparse.Namespace, device: str) -> bool:
    """`gani train-builtin`'s training stage; True when the run reached its --kimg."""
    from gani_core.training.loop import TrainConfig, measure_rate, train

    cfg = TrainConfig(
        resolution=args.resolution, batch=args.batch, total_kimg=args.kimg, r1_gamma=args.r1_gamma,
        pl_weight=args.pl_weight, seed=args.seed,
    )
    if args.fit_minutes:
        rate = measure_rate(cfg, device)
        kimg = max(math.floor(rate * args.fit_minutes * 60 / 1000 / 10) * 10, 10)
        print(f"measured {rate:.0f} images/s on {device}: training to {kimg} kimg to fit {args.fit_minutes:g} minutes "
              f"(rerun with --kimg {kimg} to reproduce)", flush=True)
        cfg = replace(cfg, total_kimg=float(kimg))
    print(f"gani train-builtin: {cfg.resolution} px shapes on {device}, batch {cfg.batch}, to {cfg.total_kimg:g} kimg "
          f"in {args.out} (resumes if it holds a run)", flush=True)

    def log(line: dict) -> None:
        losses = "  ".join(f"{k} {v:.3f}" for k, v in line.items() if k not in ("kimg", "step", "seconds"))
        print(f"kimg {line['kimg']:8.1f}  {line['seconds']:7.0f} s  {losses}", flush=True)

    max_seconds = args.max_minutes * 60 if args.max_minutes else None
    tr = train(cfg, args.out, device=device, max_seconds=max_seconds, log=log)
    state = "finished" if tr.kimg >= cfg.total_kimg else "stopped by --max-minutes (run again to resume)"
    print(f"{state}: {tr.kimg:.1f} kimg after {tr.seconds:.0f} s of training; {args.out}/G_ema.safetensors, "
          "samples.png")
    return tr.kimg >= cfg.total_kimg
