"""The ``gani`` command line: invert images into a generator without an orchestrator, and the tools around it.

    gani invert IMAGES... --out RUN     invert images with gani and the baselines into a run folder (resumes)
    gani show RUN                       a run's table and per-method means
    gani export RUN IMAGE_ID --out F    one image's tuned generator as a gani .safetensors checkpoint
    gani metrics A B                    mse, psnr, ms_ssim, lpips, lpips_vgg of two images
    gani info CHECKPOINT                what a checkpoint holds, as JSON
    gani render CHECKPOINT --out F      a grid of seeded samples
    gani shapes OUT                     images of the built-in generator's domain (or, --kind, out of it) with
                                        their true factors
    gani train-builtin                  train the built-in generator (docs/builtin.md)

Every CHECKPOINT is a spec of gani_core.checkpoints.ref: builtin, builtin-random[:RES], a path or a URI.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gani_core.errors import GaniError
from gani_core.metric_registry import METRICS, names

if TYPE_CHECKING:
    from gani_core.dataset import ImageSource


def _cmd_metrics(args: argparse.Namespace) -> int:
    from gani_core.images import load_image
    from gani_core.metrics import finite_or_none, image_metrics

    a = load_image(args.a)
    b = load_image(args.b)
    if a.shape != b.shape:
        raise GaniError(f"images differ in size: {args.a} is {a.shape[2]}x{a.shape[1]}, "
                        f"{args.b} is {b.shape[2]}x{b.shape[1]}; metrics compare images of equal size")
    values = image_metrics(a.unsqueeze(0), b.unsqueeze(0), device=args.device)[0]
    # JSON has no infinity: identical images have an unbounded PSNR, written as null.
    values = {k: finite_or_none(v) for k, v in values.items()}
    if args.json:
        print(json.dumps(values))
    else:
        for name, value in values.items():
            print(f"{name:>10}  {'inf' if value is None else f'{value:.6g}'}")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from gani_core.checkpoints.ref import resolve_checkpoint
    from gani_core.render import render_samples, save_grid

    G = resolve_checkpoint(args.checkpoint).load(args.device)
    images = render_samples(G, seeds=range(args.seed, args.seed + args.count), truncation_psi=args.truncation,
                            noise_mode=args.noise_mode)
    caption = f"{G.label or args.checkpoint} | seeds {args.seed}-{args.seed + args.count - 1} | psi {args.truncation}"
    out = save_grid(images, args.out, caption=caption)
    print(f"rendered {args.count} samples of {G.label or args.checkpoint} to {out}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from gani_core.checkpoints.ref import resolve_checkpoint
    from gani_core.networks import num_parameters

    G = resolve_checkpoint(args.checkpoint).load()
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

    from gani_core.checkpoints.ref import resolve_checkpoint
    from gani_core.editing import load_directions
    from gani_core.invert import has_tuning, method_config
    from gani_core.invert_files import auto_batch_size, run_in_process
    from gani_core.run_folder import RunFolder

    images = _input_images(args.images)     # before the generator loads: a mistyped path fails at once
    _check_output_folder(args.out)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = resolve_checkpoint(args.checkpoint)
    G = ckpt.load(device)
    overrides = {}
    if args.reg_weight is not None:
        overrides["reg_weight"] = args.reg_weight
    if args.tune_lr is not None:
        overrides["lr"] = args.tune_lr
    configs = {m: method_config(m, args.pivot_steps, args.tune_steps if has_tuning(m) else None, seed=args.seed,
                                precision=args.precision, **(overrides if has_tuning(m) else {}))
               for m in args.method}
    directions = load_directions(args.directions, G.w_dim, G.num_ws).to(device) if args.directions else None
    folder = RunFolder(args.out)
    batch_size = auto_batch_size(G, next(iter(configs.values()))) if args.batch_size == "auto" else args.batch_size
    print(f"gani invert: {len(images)} image(s) x {', '.join(args.method)} with {G.label or ckpt.label} "
          f"({G.img_resolution} px) on {device}, {batch_size} image(s) per batch, into {folder.uri}",
          file=sys.stderr)
    bars: list[tqdm] = []

    def on_batch(image_ids: list[str], method: str):
        for bar in bars:
            bar.close()
        bars.clear()
        what = image_ids[0] if len(image_ids) == 1 else f"{image_ids[0]} +{len(image_ids) - 1}"
        bar = tqdm(total=1, desc=f"{what} [{method}]", unit="step", leave=True, disable=args.quiet,
                   dynamic_ncols=True)
        bars.append(bar)

        def progress(step: int, total: int, loss: float) -> None:
            bar.total = total
            bar.n = step
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.refresh()

        return progress

    run = run_in_process(G, images, configs, folder, ckpt, batch_size, on_batch, directions)
    for bar in bars:
        bar.close()
    _print_rows(run.rows)
    ok = sum(r["status"] == "ok" for r in run.rows)
    failed = len(run.rows) - ok
    kept = f", {len(run.kept)} kept from an earlier run" if run.kept else ""
    others = run.summary["rows"] - len(run.rows)
    others = f"; the tables also hold {others} result(s) of earlier runs (gani show)" if others else ""
    print(f"wrote {folder.metrics_uri}, deltas/, previews/, summary.json ({ok} ok, {failed} failed{kept}){others}",
          file=sys.stderr)
    return 1 if failed and failed == len(run.rows) else 0


def _input_images(args: list[str]) -> list[ImageSource]:
    """`gani invert`'s images: a file is taken as given (a bad one becomes a failed row), a folder or prefix gives
    the images under it (gani_core.dataset.list_images); a path that does not exist, or a folder without images,
    is an error before anything runs."""
    from gani_core import storage
    from gani_core.dataset import image_sources, list_images

    sources: list[str] = []
    paths: list[str] = []       # each image's `source` in the rows: a file as given, a folder's images under it
    for arg in args:
        # storage.exists asks the storage now and raises when it cannot be reached (s3fs's own answers False).
        if not storage.exists(arg):
            raise FileNotFoundError(f"{arg}: no such file or folder")
        fs, path = storage.resolve(arg)
        if fs.isfile(path):
            sources.append(arg)
            paths.append(arg)
        else:
            found = list_images(arg)
            sources += [image.source for image in found]
            paths += [f"{arg.rstrip('/')}/{image.input_path}" for image in found]
    return image_sources(sources, paths)


def _print_rows(rows: list[dict], with_config: bool = False) -> None:
    from gani_core.run_folder import DISPLAY_COLUMNS

    columns = [c for c in DISPLAY_COLUMNS if c != "error"]      # failures are listed under the table
    if with_config:
        columns.insert(columns.index("status") + 1, "config")

    def fmt(column: str, v: object) -> str:
        if column in METRICS:
            return METRICS[column].format(v)
        return "-" if v is None else str(v)

    def cell(row: dict, column: str) -> str:
        if column == "config":
            return (row.get("config_hash") or "-")[:CONFIG_HASH_SHOWN]
        return fmt(column, row.get(column))

    table = [[cell(r, c) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) if table else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)))
    for r in rows:
        if r.get("status") != "ok":
            print(f"failed: {r['image_id']} [{r['method']}]: {r.get('error')}")


CONFIG_HASH_SHOWN = 8       # characters of a config hash `gani show` prints


def _describe_config(config: dict | None) -> str:
    """A stored configuration (configs/HASH.json, summary.json) in a few words: its step budgets."""
    if not config:
        return "configuration not stored (written before configs/ existed)"
    tune = config.get("tune")
    steps = f"pivot {config['pivot']['steps']} steps, " + (f"tune {tune['steps']} steps" if tune else "no tuning")
    return f"{steps}, seed {config.get('seed')}"


def _cmd_show(args: argparse.Namespace) -> int:
    from gani_core.metric_registry import summarise
    from gani_core.run_folder import RunFolder

    folder = RunFolder(args.run)
    run = folder.read_run()
    summary = run.summary
    print(f"run {folder.uri}: {summary['generator_label']} ({summary['checkpoint']}), {summary['images']} image(s), "
          f"{summary['failed']} failed row(s)")
    if run.incomplete_note:
        print(run.incomplete_note)
    _print_rows(run.rows, with_config=True)
    print()
    print("configurations (the config column):")
    for method, info in summary["methods"].items():
        for config_hash, config in (info.get("configs") or {info.get("config_hash"): info.get("config")}).items():
            print(f"  {(config_hash or '-')[:CONFIG_HASH_SHOWN]}  {method:<8}  {_describe_config(config)}")
    print()
    print("means over ok images:")
    print("  ".join(["method".ljust(8), "config".ljust(CONFIG_HASH_SHOWN), *(n.rjust(16) for n in names("run"))]))
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in run.rows:
        groups.setdefault((r["method"], (r.get("config_hash") or "-")[:CONFIG_HASH_SHOWN]), []).append(r)
    for (method, config_hash), rows in groups.items():
        means = {m: s["mean"] for m, s in summarise(rows, names("run")).items()}
        cells = [METRICS[n].format(means.get(n)).rjust(16) for n in names("run")]
        print("  ".join([method.ljust(8), config_hash.ljust(CONFIG_HASH_SHOWN), *cells]))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from gani_core.checkpoints import save_generator
    from gani_core.checkpoints.ref import resolve_checkpoint
    from gani_core.deltas import apply_deltas
    from gani_core.invert import METHODS, has_tuning
    from gani_core.run_folder import RunFolder

    folder = RunFolder(args.run)
    run = folder.read_run()
    if run.incomplete_note:
        print(run.incomplete_note, file=sys.stderr)
    # Without --method: the first tuned method of METHODS (gani, then pti) with a successful result for the image.
    methods = [m for m in METHODS if has_tuning(m)] if args.method is None else [args.method]
    found = {r["method"]: r for r in run.rows
             if r["image_id"] == args.image_id and r["method"] in methods and r["status"] == "ok"}
    if not found:
        raise GaniError(f"{args.run}: no successful tuned result for image {args.image_id!r} "
                        f"(methods {methods}); see `gani show {args.run}`")
    row = next(found[m] for m in methods if m in found)
    ckpt = resolve_checkpoint(row["checkpoint"])        # the row's: results of other runs may be in the folder
    if ckpt.sha256 != row["checkpoint_sha256"]:
        raise GaniError(f"{row['checkpoint']} is not the checkpoint this run tuned (sha256 {ckpt.sha256[:12]}, "
                        f"the run's {row['checkpoint_sha256'][:12]}); its deltas would not apply")
    G = ckpt.load()
    tuned = apply_deltas(G, folder.read_deltas(row["image_id"], row["method"]))
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
    from gani_core.shapes.out_of_domain import IN_DOMAIN, KINDS

    if args.list_kinds:
        width = max(map(len, KINDS))
        print("\n".join(f"{name:<{width}}  {kind.description}" for name, kind in KINDS.items()))
        return 0
    if args.out is None:
        raise GaniError("give a folder or URI to write to (OUT), or --list-kinds")
    if args.kind == IN_DOMAIN and args.split is None:
        if args.split_seed is not None:
            raise GaniError("--split-seed seeds a kind's split (--kind, --split); the plain images take --seed")
        return _write_legacy_shapes(args)
    if args.seed is not None:
        raise GaniError("--seed seeds the plain in-domain images; a kind's split (--kind, --split) takes --split-seed")
    return _write_kind(args)


def _write_legacy_shapes(args: argparse.Namespace) -> int:
    """``gani shapes OUT`` as it always was: the domain's images from torch's stream at ``--seed``."""
    import torch

    from gani_core import storage
    from gani_core.render import grid_png
    from gani_core.shapes.domain import FACTOR_NAMES, sample_images, to_physical

    seed = PLAIN_SHAPES_SEED if args.seed is None else args.seed
    images, t = sample_images(args.count, args.resolution, torch.Generator().manual_seed(seed))
    factors = {}
    for i in range(args.count):
        name = f"shapes-{seed}-{i:03d}.png"
        storage.write_bytes(storage.join(args.out, name), grid_png((images[i : i + 1] + 1) / 2))
        factors[name] = {"normalised": dict(zip(FACTOR_NAMES, t[i].tolist(), strict=True)),
                         "physical": dict(zip(FACTOR_NAMES, to_physical(t[i : i + 1])[0].tolist(), strict=True))}
    _merge_factors(args.out, factors)
    print(f"wrote {args.count} images of the shapes domain ({args.resolution} px) and factors.json to {args.out}")
    return 0


def _write_kind(args: argparse.Namespace) -> int:
    """``--kind`` / ``--split``: a split of a kind of out_of_domain.KINDS (its stream seeded by ``--split-seed``),
    its ground truth in factors.json."""
    from gani_core import storage
    from gani_core.render import grid_png
    from gani_core.shapes.out_of_domain import sample_kind

    split = args.split or "test"
    seed = SPLIT_SEED if args.split_seed is None else args.split_seed
    images, truth = sample_kind(args.kind, args.count, args.resolution, split, seed)
    factors = {}
    for i, f in enumerate(truth):
        name = f"{args.kind}-{split}-{i:03d}.png"
        storage.write_bytes(storage.join(args.out, name), grid_png((images[i : i + 1] + 1) / 2))
        factors[name] = f
    _merge_factors(args.out, factors)
    print(f"wrote {args.count} {args.kind} images ({split} split, {args.resolution} px) and factors.json to "
          f"{args.out}")
    return 0


def _merge_factors(out: str, factors: dict[str, dict]) -> None:
    """``factors`` into OUT/factors.json: merged with the entries already there (keyed by file name; an image
    written again replaces its entry), so that kinds written one after the other into one folder keep their ground
    truth."""
    from gani_core import storage

    uri = storage.join(out, "factors.json")
    merged = json.loads(storage.read_bytes(uri)) if storage.exists(uri) else {}
    merged.update(factors)
    storage.write_bytes(uri, json.dumps(dict(sorted(merged.items())), indent=2).encode())


# `gani shapes`'s two seeds: of the plain in-domain images (examples/shapes/ holds seed 2026's), and of a kind's
# split stream (out_of_domain.sample_kind; the benchmark's sets use 0).
PLAIN_SHAPES_SEED = 2026
SPLIT_SEED = 0


def _steps(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"a number of steps is a whole number of at least 0, got {value!r}")
    return int(value)


def _batch_size(value: str) -> int | str:
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"a batch size is a whole number of at least 1, or auto; got {value!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    from gani_core.invert import GANI_TUNE, METHODS, PTI_TUNE, has_tuning
    from gani_core.invert_files import CPU_BATCH_SIZE
    from gani_core.pivot import PivotConfig
    from gani_core.tuning import TuneConfig

    parser = argparse.ArgumentParser(prog="gani", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("metrics", help="compare two images of equal size (mse, psnr, ms_ssim, lpips, lpips_vgg)")
    p.add_argument("a", help="first image")
    p.add_argument("b", help="second image")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default="cpu", help="torch device for LPIPS (default: cpu)")
    p.set_defaults(func=_cmd_metrics)

    p = sub.add_parser("render", help="render a grid of seeded samples of a generator to a PNG")
    p.add_argument("checkpoint", help="builtin, builtin-random[:RES], an NVIDIA .pkl, a rosinality .pt or a gani "
                   ".safetensors")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--count", type=int, default=8, help="number of samples (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="first seed; samples use seed, seed+1, ... (default: 0)")
    p.add_argument("--truncation", type=float, default=1.0, help="truncation psi (default: 1.0)")
    p.add_argument("--noise-mode", default="const", choices=["const", "none", "random"])
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_render)

    p = sub.add_parser("invert", help="invert images into a generator (gani, pti, wplus, w), writing a run")
    p.add_argument("images", nargs="+", help="image files (png, jpg, ...), or folders of them: local paths or "
                   "fsspec URIs (s3://bucket/prefix)")
    p.add_argument("--checkpoint", default="builtin",
                   help="builtin, builtin-random[:RES], a checkpoint file or its URI (s3://bucket/g.pkl)")
    p.add_argument("--method", nargs="+", default=["gani"], choices=METHODS,
                   help="one or more methods, each run on every image (default: gani)")
    p.add_argument("--out", required=True,
                   help="output folder or URI (s3://bucket/prefix); results already there for the same image, "
                        "checkpoint and configuration are kept")
    p.add_argument("--pivot-steps", type=_steps, default=None,
                   help=f"pivot optimisation steps (default: {PivotConfig.steps})")
    p.add_argument("--tune-steps", type=_steps, default=None,
                   help=f"generator tuning steps of gani and pti (default: {TuneConfig.steps})")
    p.add_argument("--tune-lr", type=float, default=None, help="tuning learning rate (default: per method)")
    p.add_argument("--reg-weight", type=float, default=None,
                   help=f"weight of the regulariser, which keeps renders of latents near the pivot as the original "
                        f"generator made them (default: gani {GANI_TUNE.reg_weight:g}, pti {PTI_TUNE.reg_weight:g} "
                        "as in PTI)")
    p.add_argument("--directions", default=None, help=".npy of edit directions in W (default: seeded random)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=_batch_size, default=1, metavar="K|auto",
                   help="images inverted together, one forward and backward for all per step (default: 1); auto: "
                        f"as many as the GPU's free memory holds, {CPU_BATCH_SIZE} on a CPU")
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
    p.add_argument("--method", default=None,
                   help=f"which method's result (default: {', else '.join(m for m in METHODS if has_tuning(m))}: "
                        "the first with a successful result)")
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

    p = sub.add_parser("shapes", help="write seeded images of the shapes domain, or of a kind out of it, with "
                                      "their true factors")
    p.add_argument("out", nargs="?", help="folder or URI to write PNGs and factors.json to")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--kind", default="in-domain",
                   help="in-domain (default), an out-of-domain kind or a near-domain control (--list-kinds; "
                        "docs/benchmark.md); writes KIND-SPLIT-NNN.png")
    p.add_argument("--split", choices=("dev", "test"), default=None,
                   help="the kind's seed stream: choose on dev, report on test (default: test). In-domain "
                        "without --split writes shapes-SEED-NNN.png, as before")
    p.add_argument("--seed", type=int, default=None,
                   help=f"seed of the plain in-domain images, shapes-SEED-NNN.png (default: {PLAIN_SHAPES_SEED}; "
                        "the training data uses other seeds)")
    p.add_argument("--split-seed", type=int, default=None,
                   help=f"seed of a kind's split stream, with --kind or --split (default: {SPLIT_SEED}, the "
                        "benchmark's)")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--list-kinds", action="store_true", help="print the kinds and what each is, then exit")
    p.set_defaults(func=_cmd_shapes)

    p = sub.add_parser("info", help="describe a checkpoint as JSON")
    p.add_argument("checkpoint")
    p.set_defaults(func=_cmd_info)
    return parser


def _check_output_folder(out: str) -> None:
    """Refuse, before any work, an ``--out`` that a run folder cannot be made at: an existing file, or a path under
    one (remote URIs are checked by the store when written)."""
    if "://" in out:
        return
    path = Path(out).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == path else f"is under {existing}, a file"
        raise GaniError(f"--out {out} {where}: give a folder (new, or one of an earlier run to resume)")


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
    except BrokenPipeError:
        # The reader went away (`gani info builtin | head`): nothing left to say to it, and nothing to flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

