"""How far out of the built-in generator's domain each out-of-domain kind is: W+ inversion lpips per kind.

    .venv/bin/python benchmarks/domain_gap.py                       # 4 test images per kind, W+ 150 steps
    .venv/bin/python benchmarks/domain_gap.py --kinds in-domain disc --images 8 --split dev

For every kind of `gani_core.shapes.out_of_domain.KINDS` (``in-domain`` first, the reference), the first
``--images`` images of the split are written to 8 bits (as `gani shapes` writes them), inverted with a W+
pivot only (`method_config("wplus", pivot_steps=...)`, one batch per kind) and scored. A kind is out of
domain for the generator when its mean W+ lpips is at least ``OUT_RATIO`` (2) times in-domain's: W+ is the
most expressive latent without touching the weights, so what it cannot reach, the generator cannot render.
The table gives each kind's group in the registry (out, near) and the group measured here. ``domain_rms`` is the
pixel distance to the closest render of the domain (`distance_to_domain`; 0 for in-domain images): how far
the images are from the domain itself, whatever the generator learned.

Prints a markdown table of the means per kind and writes every per-image row and the means as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from gani_core import load_generator
from gani_core.checkout import REPO
from gani_core.invert import InversionError, invert_images, method_config
from gani_core.shapes.out_of_domain import IN_DOMAIN, KINDS, SPLITS, distance_to_domain, sample_kind

COLUMNS = ("lpips", "mse", "psnr", "domain_rms")
OUT_RATIO = 2.0         # a kind is out of domain when its mean W+ lpips is at least this many times in-domain's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="builtin")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--images", type=int, default=4, help="images per kind (the split's first ones)")
    parser.add_argument("--split", default="test", choices=SPLITS)
    parser.add_argument("--seed", type=int, default=0, help="the split's seed (sample_kind)")
    parser.add_argument("--pivot-steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (leave cores to others)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "domain-gap-cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    G = load_generator(args.checkpoint, device=args.device)
    cfg = method_config("wplus", pivot_steps=args.pivot_steps)
    print(f"{G.label} ({G.img_resolution} px), {args.images} {args.split} images per kind, W+ pivot "
          f"{args.pivot_steps} steps, device {args.device}, {args.threads} thread(s)")
    rows: list[dict] = []
    t_start = time.perf_counter()
    for kind in args.kinds:
        t0 = time.perf_counter()
        images, factors = sample_kind(kind, args.images, G.img_resolution, args.split, args.seed)
        images = ((images + 1) / 2 * 255).round() / 255                  # the 8 bits of the PNGs
        ids = [f"{kind}-{args.split}-{f['index']:03d}" for f in factors]
        domain_rms = distance_to_domain(images * 2 - 1).tolist()
        results = invert_images(G, images, ids, cfg)
        for image_id, result, rms, truth in zip(ids, results, domain_rms, factors, strict=True):
            if isinstance(result, InversionError):
                rows.append({"kind": kind, "image_id": image_id, "error": str(result)})
                continue
            rows.append({"kind": kind, "image_id": image_id, "domain_rms": rms,
                         **{c: result.metrics[c] for c in COLUMNS if c != "domain_rms"}, "factors": truth})
        print(f"  {kind}: {time.perf_counter() - t0:.0f} s", flush=True)

    means = {}
    for kind in args.kinds:
        ok = [r for r in rows if r["kind"] == kind and "error" not in r]
        means[kind] = {c: statistics.fmean(r[c] for r in ok if r[c] is not None) for c in COLUMNS}
        means[kind]["images"] = len(ok)
    reference = means.get(IN_DOMAIN, {}).get("lpips")
    print("\n| kind | group | lpips | × in-domain | measured | mse | psnr | domain_rms |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- |")
    disagree = []
    for kind, m in means.items():
        group = "reference" if kind == IN_DOMAIN else "near" if KINDS[kind].near else "out"
        if reference and kind != IN_DOMAIN:
            m["ratio"] = m["lpips"] / reference
            m["measured"] = "out" if m["ratio"] >= OUT_RATIO else "near"
            if m["measured"] != group:
                disagree.append(kind)
        ratio = f"{m['ratio']:.1f}" if "ratio" in m else "-"
        print(f"| {kind} | {group} | {m['lpips']:.4f} | {ratio} | {m.get('measured', '-')} | {m['mse']:.4f} | "
              f"{m['psnr']:.1f} | {m['domain_rms']:.3f} |")
    if disagree:
        print(f"\nmeasured group differs from the registry's (out: lpips >= {OUT_RATIO} x in-domain): {disagree}")

    out = {
        "date": date.today().isoformat(), "checkpoint": G.label, "device": args.device,
        "machine": f"{platform.machine()}, {args.threads} torch thread(s)", "split": args.split,
        "seed": args.seed, "images_per_kind": args.images, "method": "wplus", "pivot_steps": args.pivot_steps,
        "seconds": round(time.perf_counter() - t_start, 1), "out_ratio": OUT_RATIO, "means": means,
        "rows": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
