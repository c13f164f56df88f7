"""The ``gani`` command line: inspect checkpoints, render samples, compare images."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence

from gani_core.errors import GaniError


def _cmd_metrics(args: argparse.Namespace) -> int:
    from gani_core.images import load_image
    from gani_core.metrics import image_metrics

    a = load_image(args.a)
    b = load_image(args.b)
    if a.shape != b.shape:
        raise GaniError(f"images differ in size: {args.a} is {a.shape[2]}x{a.shape[1]}, "
                        f"{args.b} is {b.shape[2]}x{b.shape[1]}; metrics compare images of equal size")
    values = image_metrics(a.unsqueeze(0), b.unsqueeze(0), device=args.device)[0]
    # JSON has no infinity: identical images have an unbounded PSNR, written as null.
    values = {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in values.items()}
    if args.json:
        print(json.dumps(values))
    else:
        for name, value in values.items():
            print(f"{name:>10}  {'inf' if value is None else f'{value:.6g}'}")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from gani_core.checkpoints import load_generator
    from gani_core.render import render_samples, save_grid

    G = load_generator(args.checkpoint, device=args.device)
    images = render_samples(G, seeds=range(args.seed, args.seed + args.count), truncation_psi=args.truncation,
                            noise_mode=args.noise_mode)
    caption = f"{G.label or args.checkpoint} | seeds {args.seed}-{args.seed + args.count - 1} | psi {args.truncation}"
    out = save_grid(images, args.out, caption=caption)
    print(f"rendered {args.count} samples of {G.label or args.checkpoint} to {out}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from gani_core.checkpoints import load_generator
    from gani_core.networks import num_parameters

    G = load_generator(args.checkpoint)
    info = {
        "label": G.label, "resolution": G.img_resolution, "num_ws": G.num_ws, "z_dim": G.z_dim,
        "w_dim": G.w_dim, "c_dim": G.c_dim, "mapping_layers": G.cfg.mapping_layers,
        "channels": {res: G.cfg.channels_at(res) for res in G.cfg.block_resolutions},
        "num_fp16_res": G.cfg.num_fp16_res, "conv_clamp": G.cfg.conv_clamp,
        "parameters": num_parameters(G), "tunable_layers": len(G.tunable_layers()),
        "factor_edits": list(G.factor_edits.names) if G.factor_edits is not None else None,
    }
    print(json.dumps(info, indent=2))
    return 0


def _cmd_invert(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from gani_core.checkpoints import load_generator
    from gani_core.editing import load_directions
    from gani_core.invert import method_config
    from gani_core.runs import RunContext, checkpoint_sha256, run_inversions

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    G = load_generator(args.checkpoint, device=device)
    overrides = {}
    if args.locality_weight is not None:
        overrides["locality_weight"] = args.locality_weight
    if args.tune_lr is not None:
        overrides["lr"] = args.tune_lr
    configs = {m: method_config(m, args.pivot_steps, args.tune_steps, seed=args.seed, precision=args.precision,
                                **(overrides if m in ("gani", "pti") else {})) for m in args.method}
    directions = load_directions(args.directions, G.w_dim, G.num_ws).to(device) if args.directions else None
    ctx = RunContext(out=args.out, checkpoint=args.checkpoint, checkpoint_sha256=checkpoint_sha256(args.checkpoint, G),
                     generator_label=G.label or args.checkpoint, device=str(device))
    print(f"gani invert: {len(args.images)} image(s) x {', '.join(args.method)} with {ctx.generator_label} "
          f"({G.img_resolution} px) on {device}", file=sys.stderr)
    bars: list[tqdm] = []

    def on_image(image_id: str, method: str):
        for bar in bars:
            bar.close()
        bars.clear()
        bar = tqdm(total=1, desc=f"{image_id} [{method}]", unit="step", leave=True, disable=args.quiet,
                   dynamic_ncols=True)
        bars.append(bar)

        def progress(step: int, total: int, loss: float) -> None:
            bar.total = total
            bar.n = step
            if step % 10 == 0 or step == total:
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                bar.refresh()

        return progress

    rows, summary = run_inversions(G, args.images, configs, ctx, directions=directions, on_image=on_image)
    for bar in bars:
        bar.close()
    _print_rows(rows)
    failed = summary["failed"]
    print(f"wrote {args.out}/metrics.parquet, deltas/, previews/, summary.json "
          f"({len(rows) - failed} ok, {failed} failed)", file=sys.stderr)
    return 1 if failed and failed == len(rows) else 0


_SHOW_COLUMNS = ("image_id", "method", "status", "lpips", "mse", "psnr", "ms_ssim", "locality",
                 "edit_consistency", "edit_accuracy", "seconds", "delta_bytes")


def _print_rows(rows: list[dict]) -> None:
    def fmt(v: object) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    table = [[fmt(r.get(c)) for c in _SHOW_COLUMNS] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) if table else len(c) for i, c in enumerate(_SHOW_COLUMNS)]
    print("  ".join(c.ljust(w) for c, w in zip(_SHOW_COLUMNS, widths, strict=True)))
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)))
    for r in rows:
        if r.get("status") != "ok":
            print(f"failed: {r['image_id']} [{r['method']}]: {r.get('error')}")


def _cmd_show(args: argparse.Namespace) -> int:
    from gani_core import storage

    uri = storage.join(args.run, "metrics.parquet")
    if not storage.exists(uri):
        raise GaniError(f"{args.run}: no metrics.parquet here; is it the --out of a `gani invert` run?")
    rows = storage.read_parquet(uri).to_pylist()
    summary = json.loads(storage.read_bytes(storage.join(args.run, "summary.json")))
    print(f"run {args.run}: {summary['generator_label']} ({summary['checkpoint']}), {summary['images']} image(s), "
          f"{summary['failed']} failed row(s)")
    _print_rows(rows)
    print()
    print("means over ok images:")
    names = ("lpips", "mse", "psnr", "ms_ssim", "locality", "edit_consistency", "edit_accuracy", "seconds",
             "delta_bytes")
    print("  ".join(["method".ljust(8), *(n.rjust(16) for n in names)]))
    for method, info in summary["methods"].items():
        vals = [info["mean"].get(n) for n in names]
        cells = ["-".rjust(16) if v is None else f"{v:16.0f}" if n == "delta_bytes" else f"{v:16.4g}"
                 for n, v in zip(names, vals, strict=True)]
        print("  ".join([method.ljust(8), *cells]))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from gani_core import storage
    from gani_core.checkpoints import load_generator, save_generator
    from gani_core.deltas import apply_deltas, decode_deltas, read_deltas_parquet, rows_from_table

    summary = json.loads(storage.read_bytes(storage.join(args.run, "summary.json")))
    methods = [m for m in summary["methods"] if m in ("gani", "pti")] if args.method is None else [args.method]
    rows = [r for r in storage.read_parquet(storage.join(args.run, "metrics.parquet")).to_pylist()
            if r["image_id"] == args.image_id and r["method"] in methods and r["status"] == "ok"]
    if not rows:
        raise GaniError(f"{args.run}: no successful tuned result for image {args.image_id!r} "
                        f"(methods {methods}); see `gani show {args.run}`")
    row = rows[0]
    G = load_generator(summary["checkpoint"])
    table = read_deltas_parquet(storage.join(args.run, "deltas", f"{row['image_id']}.{row['method']}.parquet"))
    tuned = apply_deltas(G, decode_deltas(rows_from_table(table, image_id=args.image_id)))
    tuned.cfg.label = f"{G.label} tuned to {args.image_id} by {row['method']}"
    out = save_generator(tuned, args.out, extra={
        "w_pivot": json.dumps(row["w_pivot"]), "num_ws": str(G.num_ws), "source_run": str(args.run),
        "image_id": args.image_id, "method": row["method"],
    })
    print(f"wrote {out}: {tuned.cfg.label}; its pivot latent is in the file's metadata ('w_pivot')")
    return 0


def _cmd_train_builtin(args: argparse.Namespace) -> int:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not args.finish_only and not _train(args, device):
        return 0    # stopped by --max-minutes: nothing to finish yet
    if not args.no_finish:
        from gani_core.shapes.build import finish_builtin

        finish_builtin(args.out, device=device, install=args.install, probe_steps=args.probe_steps, log=print)
    return 0


def _train(args: argparse.Namespace, device: str) -> bool:
    """`gani train-builtin`'s training stage; True when the run reached its --kimg."""
    from gani_core.training.loop import TrainConfig, train

    cfg = TrainConfig(
        resolution=args.resolution, batch=args.batch, total_kimg=args.kimg, r1_gamma=args.r1_gamma,
        pl_weight=args.pl_weight, seed=args.seed,
    )
    if args.fit_minutes:
        from dataclasses import replace

        from gani_core.training.loop import measure_rate

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


def _cmd_shapes(args: argparse.Namespace) -> int:
    import torch

    from gani_core import storage
    from gani_core.render import grid_png
    from gani_core.shapes.domain import FACTOR_NAMES, sample_images, to_physical

    images, t = sample_images(args.count, args.resolution, torch.Generator().manual_seed(args.seed))
    factors = {}
    for i in range(args.count):
        name = f"shapes-{args.seed}-{i:03d}.png"
        storage.write_bytes(storage.join(args.out, name), grid_png((images[i : i + 1] + 1) / 2))
        factors[name] = {"normalised": dict(zip(FACTOR_NAMES, t[i].tolist(), strict=True)),
                         "physical": dict(zip(FACTOR_NAMES, to_physical(t[i : i + 1])[0].tolist(), strict=True))}
    storage.write_bytes(storage.join(args.out, "factors.json"), json.dumps(factors, indent=2).encode())
    print(f"wrote {args.count} images of the shapes domain ({args.resolution} px) and factors.json to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gani", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("metrics", help="compare two images of equal size (mse, psnr, ms_ssim, lpips, lpips_vgg)")
    p.add_argument("a", help="first image")
    p.add_argument("b", help="second image")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default="cpu", help="torch device for LPIPS (default: cpu)")
    p.set_defaults(func=_cmd_metrics)

    p = sub.add_parser("render", help="render a grid of seeded samples of a generator to a PNG")
    p.add_argument("checkpoint", help="builtin, builtin:RES, an NVIDIA .pkl, a rosinality .pt or a gani .safetensors")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--count", type=int, default=8, help="number of samples (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="first seed; samples use seed, seed+1, ... (default: 0)")
    p.add_argument("--truncation", type=float, default=1.0, help="truncation psi (default: 1.0)")
    p.add_argument("--noise-mode", default="const", choices=["const", "none", "random"])
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_render)

    p = sub.add_parser("invert", help="invert images into a generator (gani, pti, wplus, w), writing a run")
    p.add_argument("images", nargs="+", help="image files (png, jpg, ...; local paths or fsspec URIs)")
    p.add_argument("--checkpoint", default="builtin", help="builtin, builtin:RES or a checkpoint file")
    p.add_argument("--method", nargs="+", default=["gani"], choices=["gani", "pti", "wplus", "w"],
                   help="one or more methods, each run on every image (default: gani)")
    p.add_argument("--out", required=True, help="output folder or URI (s3://bucket/prefix)")
    p.add_argument("--pivot-steps", type=int, default=None, help="pivot optimisation steps (default: 450)")
    p.add_argument("--tune-steps", type=int, default=None, help="generator tuning steps (default: 350)")
    p.add_argument("--tune-lr", type=float, default=None, help="tuning learning rate (default: per method)")
    p.add_argument("--locality-weight", type=float, default=None,
                   help="weight of the locality regulariser (default: gani 0.1, pti 0 as in PTI)")
    p.add_argument("--directions", default=None, help=".npy of edit directions in W (default: seeded random)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: mixed precision (autocast) for the optimisation, for GPUs (default: fp32)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_invert)

    p = sub.add_parser("show", help="print a run's table")
    p.add_argument("run", help="the --out of a run")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("export", help="write one image's tuned generator in gani's .safetensors format")
    p.add_argument("run", help="the --out of a run")
    p.add_argument("image_id", help="the image's id (see `gani show`)")
    p.add_argument("--method", default=None, help="which method's result (default: gani, else pti)")
    p.add_argument("--out", required=True, help=".safetensors file to write")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("train-builtin", help="train the built-in generator on the procedural shapes domain")
    p.add_argument("--out", default="runs/train-builtin", help="training folder; a rerun resumes from it")
    p.add_argument("--resolution", type=int, default=64, help="image resolution (default: 64)")
    p.add_argument("--batch", type=int, default=32, help="images per step (default: 32)")
    p.add_argument("--kimg", type=float, default=400.0, help="training length in thousands of images (default: 400)")
    p.add_argument("--r1-gamma", type=float, default=0.05, help="R1 regularisation weight (default: 0.05)")
    p.add_argument("--pl-weight", type=float, default=2.0, help="path-length regularisation, 0 = off (default: 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (resumably) after this many minutes")
    p.add_argument("--fit-minutes", type=float, default=None,
                   help="measure the training speed first and set --kimg to what fits in this many minutes")
    p.add_argument("--no-finish", action="store_true",
                   help="skip the factor probe, edit directions and quality report after training")
    p.add_argument("--finish-only", action="store_true",
                   help="do not train: run the finishing stages on the folder's G_ema.safetensors")
    p.add_argument("--probe-steps", type=int, default=4000, help="training steps of the factor probe")
    p.add_argument("--install", action="store_true",
                   help="copy the finished generator and probe into gani_core/weights/ (what `builtin` loads)")
    p.set_defaults(func=_cmd_train_builtin)

    p = sub.add_parser("shapes", help="write seeded images of the shapes domain with their true factors")
    p.add_argument("out", help="folder or URI to write PNGs and factors.json to")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--seed", type=int, default=2026, help="the training data uses other seeds (default: 2026)")
    p.add_argument("--resolution", type=int, default=64)
    p.set_defaults(func=_cmd_shapes)

    p = sub.add_parser("info", help="describe a checkpoint as JSON")
    p.add_argument("checkpoint")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GaniError as exc:
        print(f"gani {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        # ValueError: inputs the metrics or the generator cannot take (too small, wrong shape).
        print(f"gani {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

