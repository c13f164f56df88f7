"""``gani invert``: images inverted with one or more methods into a run folder, in this process, with progress bars.

What it says: a header (images, methods, generator, whether faces are aligned, device, batch size, folder), a progress
bar per batch, the run's notes once (MS-SSIM with fewer scales at small resolutions), the rows, and a last line with
what it wrote, kept and replaced. Exit code 1 when any of its rows failed (an image without a face, with --align).
Ctrl-C: one line saying how many results are kept. --align and --identity without dlib: one line saying what to
install (exit code 2), before the generator loads.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator

import torch
from tqdm import tqdm

from gani_core.checkpoints.ref import resolve_checkpoint
from gani_core.cli.common import (
    Interrupted,
    check_output_folder,
    input_images,
    kept_after_interrupt,
    note,
    print_rows,
    resolve_device,
)
from gani_core.editing import load_directions
from gani_core.invert import InvertConfig, has_tuning, method_config
from gani_core.invert_files import RunResult, auto_batch_size, results_on_disk, run_in_process
from gani_core.pivot import Progress
from gani_core.run_folder import RunFolder


def run(args: argparse.Namespace) -> int:
    # Everything that can be refused is, before the generator loads: a mistyped path fails at once.
    images = input_images(args.images, exclude=args.out)     # a run kept inside its input: not its own input
    check_output_folder(args.out)
    configs = _configs(args)
    device = resolve_device(args.device)
    ckpt = resolve_checkpoint(args.checkpoint)
    G = ckpt.load(device)
    directions = load_directions(args.directions, G.w_dim, G.num_ws).to(device) if args.directions else None
    folder = RunFolder(args.out)
    batch_size = auto_batch_size(G, next(iter(configs.values()))) if args.batch_size == "auto" else args.batch_size
    label = G.label or ckpt.label
    size = "" if f"{G.img_resolution} px" in label else f" ({G.img_resolution} px)"
    faces = f", faces aligned ({args.align})" if args.align else ""
    faces = faces or (", aligned faces (id_similarity)" if args.identity else "")
    print(f"gani invert: {len(images)} image(s) x {', '.join(args.method)} with {label}{size}{faces} on {device}, "
          f"{batch_size} image(s) per batch, into {folder.uri}", file=sys.stderr)
    if args.precision == "bf16" and torch.device(device).type == "cpu":
        note("--precision bf16 on a CPU runs under bf16 autocast, usually slower than fp32 there; it is for GPUs")
    bars = _Bars(configs, disabled=args.quiet)
    try:
        with _notes_held() as notes:
            result = run_in_process(G, images, configs, folder, ckpt, batch_size, bars.on_batch, directions)
    except KeyboardInterrupt:
        bars.close()
        raise Interrupted(kept_after_interrupt(lambda: results_on_disk(folder, images, configs), "result",
                                               folder.uri)) from None
    finally:
        bars.close()
    for line in dict.fromkeys(notes):       # once each, after the bars: never inside one
        print(line, file=sys.stderr)
    return _report(result, folder)


def _configs(args: argparse.Namespace) -> dict[str, InvertConfig]:
    """Each method's configuration; method_config refuses values out of range (ValueError: exit 2)."""
    overrides: dict[str, float] = {}
    if args.reg_weight is not None:
        overrides["reg_weight"] = args.reg_weight
    if args.tune_lr is not None:
        overrides["lr"] = args.tune_lr
    return {m: method_config(m, args.pivot_steps, args.tune_steps if has_tuning(m) else None, seed=args.seed,
                             precision=args.precision, align=args.align, identity=args.identity,
                             **(overrides if has_tuning(m) else {}))
            for m in args.method}


class _Bars:
    """A progress bar per batch, made with the batch's total steps (pivot and tuning) and closed when the next
    batch starts."""

    def __init__(self, configs: dict[str, InvertConfig], disabled: bool) -> None:
        self.configs, self.disabled = configs, disabled
        self.bar: tqdm | None = None

    def on_batch(self, image_ids: list[str], method: str) -> Progress:
        self.close()
        cfg = self.configs[method]
        what = image_ids[0] if len(image_ids) == 1 else f"{image_ids[0]} and {len(image_ids) - 1} more"
        bar = tqdm(total=cfg.pivot.steps + (cfg.tune.steps if cfg.tune is not None else 0),
                   desc=f"{what} [{method}]", unit="step", leave=True, disable=self.disabled, dynamic_ncols=True)
        self.bar = bar

        def progress(step: int, total: int, loss: float) -> None:
            bar.total = total
            bar.n = step
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.refresh()

        return progress

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _Held(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _notes_held() -> Iterator[list[str]]:
    """The run's notes (invert_files logs them when the run ends, while a bar is still on screen), held to be
    printed after the bars; they still reach any handler the caller configured (propagation is kept)."""
    logger = logging.getLogger("gani_core.invert_files")
    held = _Held()
    logger.addHandler(held)
    try:
        yield held.messages
    finally:
        logger.removeHandler(held)


def _report(result: RunResult, folder: RunFolder) -> int:
    """The rows, and the last line: what was written, kept, failed and replaced. 1 when any row failed."""
    print_rows(result.rows)
    ok = sum(r["status"] == "ok" for r in result.rows)
    failed = len(result.rows) - ok
    kept_failed = [r for r in result.rows if r["status"] != "ok" and (r["image_id"], r["method"]) in result.kept]
    # A failure is kept only when the image itself cannot be read, or has no face to align: the same bytes would
    # fail the same way.
    no_face = sum(str(r.get("error")).startswith("NoFaceError") for r in kept_failed)
    unreadable = "".join(f", {n} of them {what}" for n, what in (
        (len(kept_failed) - no_face, "an image that cannot be read"), (no_face, "an image without a face")) if n)
    kept = f", {len(result.kept)} kept from an earlier run{unreadable}" if result.kept else ""
    replaced = sum(result.replaced.values())
    by_method = ", ".join(f"{m} {n}" for m, n in result.replaced.items())
    replaced = f"; replaced {replaced} result(s) of another configuration ({by_method})" if replaced else ""
    others = result.summary["rows"] - len(result.rows)
    others = f"; the tables also hold {others} result(s) of earlier runs (gani show)" if others else ""
    outputs = "deltas/, previews/, " if result.summary["ok"] else ""     # written for ok results only
    print(f"wrote {folder.metrics_uri}, {outputs}summary.json ({ok} ok, {failed} failed{kept}){replaced}{others}",
          file=sys.stderr)
    return 1 if failed else 0
