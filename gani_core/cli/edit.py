"""``gani edit``: a run's images edited along latent directions, each through its own tuned generator and through the
original one, into strips, GIFs and edits.parquet (gani_core.edit_runs), in this process.

What it says: a header (images, method, directions, strengths, generator, device, batch size, folder), a progress bar
over the images to compute, a ``failed:`` line per image and reason (its directions joined), and a last line:
``N strip(s) written, M kept, F failed -> OUT``, with ``(R replacing an earlier edit of the same image and
direction)`` after ``written`` when R of them overwrote the strip (and rows, and GIF) of other strengths, another
``--gif`` or another result: the newest edit of an image x method x direction wins (gani_core.edit_runs' resume
rule). Exit code 1 when an image failed; Ctrl-C: one line saying how many strips are kept (each strip finished
before the interrupt: a rerun keeps them all).
"""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from gani_core.checkpoints.ref import CheckpointRef
from gani_core.cli.common import Interrupted, kept_after_interrupt, resolve_device
from gani_core.edit_runs import (
    EditFolder,
    EditPlan,
    EditResult,
    prepare_edit,
    run_edits,
    strips_on_disk,
)
from gani_core.invert import method_config
from gani_core.invert_files import auto_batch_size
from gani_core.networks import Generator
from gani_core.run_folder import RunFolder


def run(args: argparse.Namespace) -> int:
    # Everything that can be refused is, before anything is written.
    folder = RunFolder(args.run)
    stored = folder.read_run()
    if stored.incomplete_note:
        print(stored.incomplete_note, file=sys.stderr)
    device = resolve_device(args.device)
    p = prepare_edit(folder, stored.rows, args.direction, args.strengths, lambda ckpt: ckpt.load(device),
                     args.method, args.image_ids, args.layers, args.raw, args.gif, args.out)
    method, rows, ckpt, G, out, plan, missing = p.method, p.rows, p.ckpt, p.G, p.out, p.plan, p.missing
    batch_size = auto_batch_size(G, method_config(method)) if args.batch_size == "auto" else args.batch_size
    print(_header(rows, method, plan, G, ckpt, device, batch_size, out), file=sys.stderr)
    bar = _Bar(f"edit [{method}]", disabled=args.quiet)
    try:
        result = run_edits(G, folder, out, rows, plan, batch_size, on_batch=bar.update, missing=missing,
                           on_start=bar.start, stored=p.stored)
    except KeyboardInterrupt:
        bar.close()
        raise Interrupted(kept_after_interrupt(lambda: strips_on_disk(out, rows, plan), "strip", out.uri)) from None
    finally:
        bar.close()
    return _report(result, out)


class _Bar:
    """A progress bar over the images to compute (gani invert's style), made once their number is known."""

    def __init__(self, desc: str, disabled: bool) -> None:
        self.desc, self.disabled = desc, disabled
        self.bar: tqdm | None = None

    def start(self, total: int) -> None:
        self.bar = tqdm(total=total, desc=self.desc, unit="image", leave=True, disable=self.disabled or not total,
                        dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _header(rows: list[dict], method: str, plan: EditPlan, G: Generator, ckpt: CheckpointRef, device: str,
            batch_size: int, out: EditFolder) -> str:
    label = G.label or ckpt.label
    strengths = " ".join(f"{s:g}" for s in plan.strengths)
    return (f"gani edit: {len(rows)} image(s) [{method}] x {len(plan.directions)} direction(s) "
            f"({', '.join(d.name for d in plan.directions)}) at strengths {strengths}, with {label} on {device}, "
            f"{batch_size} image(s) per batch, into {out.uri}")


def _report(result: EditResult, out: EditFolder) -> int:
    """The failures, one line per image and reason (its directions joined), then the last line; 1 when an image x
    direction failed."""
    failed: dict[tuple[str, str, str], dict[str, None]] = {}      # (image, method, error) -> its directions
    for r in result.rows:
        if r["status"] != "ok":
            failed.setdefault((r["image_id"], r["method"], r["error"]), {})[r["direction"]] = None
    for (image_id, method, error), directions in failed.items():
        print(f"failed: {image_id} [{method}] {', '.join(directions)}: {error}", file=sys.stderr)
    replaced = f" ({result.replaced} replacing an earlier edit of the same image and direction)" \
        if result.replaced else ""
    print(f"{result.written} strip(s) written{replaced}, {result.kept} kept, {result.failed} failed -> {out.uri}",
          file=sys.stderr)
    return 1 if result.failed else 0
