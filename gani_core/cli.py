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
    }
    print(json.dumps(info, indent=2))
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

