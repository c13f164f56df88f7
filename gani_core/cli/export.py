"""``gani export``: one image's tuned generator (the run's checkpoint with its deltas applied) as a gani
``.safetensors`` checkpoint, with the pivot latent in its metadata."""

from __future__ import annotations

import argparse
import json
import sys

from gani_core.checkpoints import save_generator
from gani_core.checkpoints.ref import resolve_checkpoint
from gani_core.cli.common import check_output_file
from gani_core.deltas import apply_deltas
from gani_core.errors import GaniError
from gani_core.invert import METHODS, has_tuning
from gani_core.run_folder import RunFolder


def run(args: argparse.Namespace) -> int:
    check_output_file(args.out, what="a .safetensors file name")
    folder = RunFolder(args.run)
    stored = folder.read_run()
    if stored.incomplete_note:
        print(stored.incomplete_note, file=sys.stderr)
    # Without --method: the first tuned method of METHODS (gani, then pti) with a successful result for the image.
    methods = [m for m in METHODS if has_tuning(m)] if args.method is None else [args.method]
    found = {r["method"]: r for r in stored.rows
             if r["image_id"] == args.image_id and r["method"] in methods and r["status"] == "ok"}
    if not any(r["image_id"] == args.image_id for r in stored.rows):
        raise GaniError(f"{args.run}: no image {args.image_id!r} in this run; `gani show {args.run}` lists its images")
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
        "w_pivot": json.dumps(folder.read_pivot(row["image_id"], row["method"]).flatten().tolist()),
        "num_ws": str(G.num_ws), "source_run": str(args.run),
        "image_id": args.image_id, "method": row["method"],
    })
    print(f"wrote {out}: {tuned.cfg.label}; its pivot latent is in the file's metadata ('w_pivot')")
    return 0
