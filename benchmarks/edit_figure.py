"""The README's editing picture: out-of-domain images inverted with wplus (the pivot alone), pti and gani into the
built-in generator, edited with `gani edit` along factor:hue and factor:size, and what the edits' tables say.

    .venv/bin/python benchmarks/edit_figure.py      # CPU: the inversions (450 + 350 steps) take about 15 min on
                                                    # 2 free cores (33 min here beside other jobs); a rerun, 1 min

It runs these commands (printed as they start; WORK is ``--work``, default out/edit-figure; a rerun keeps what
WORK holds, as the commands do):

    gani shapes WORK/inputs --kind star --count 1          # star-test-000.png
    gani shapes WORK/inputs --kind textured --count 3      # textured-test-002.png: a checkerboard square
    gani invert WORK/inputs/star-test-000.png WORK/inputs/textured-test-002.png --checkpoint builtin \\
        --method wplus pti gani --pivot-steps 450 --tune-steps 350 --seed 0 --batch-size 2 --out WORK/run
    gani edit WORK/run --method M --direction factor:hue --direction factor:size --strengths -2 -1 0 1 2 \\
        --out WORK/edits-M                                 # for M in wplus, pti, gani

then renders the same edits (gani_core.edit_runs.render_edits, what `gani edit`'s strips show) into one picture,
``--figure`` (docs/images/edit-methods.png): per image and direction a block of four rows, the original generator's
edit of the W pivot that pti and gani tuned from (the reference), the W+ pivot through the original generator, and
pti's and gani's tuned generators' edits; columns: the input, then the five strengths (in factor steps). Beside each
row, from WORK/edits-M/edits.parquet: ``lpips_to_original_edit`` averaged over the strengths and the factor's change
per step as the generator's factor probe reads it.

``--out`` (benchmarks/results/edit-figure.json) holds, per method and direction, the means over images of
``lpips_to_original_edit`` (all strengths; at 0 it is the reconstruction gap, so the non-zero strengths are given
apart too) and of ``factor_change`` (per step of strength, against ``factor_change_original``, the original
generator's edit of the same pivot): ``factor_kept`` is their ratio, ``factor_agreement`` the mean over non-zero
strengths of clip(1 - |change - original change| / |original change|, 0, 1), edit_accuracy's formula.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from gani_core.checkout import REPO
from gani_core.checkpoints.ref import resolve_checkpoint
from gani_core.directions import parse_directions
from gani_core.edit_runs import render_edits, stack_deltas
from gani_core.images import load_image
from gani_core.metrics import to_unit
from gani_core.networks import Generator
from gani_core.run_folder import RunFolder

IMAGES = (("star", 0), ("textured", 2))         # (kind, index in its test split): a star, a checkerboard square
METHODS = ("wplus", "pti", "gani")              # `gani invert --method`, in that order
DIRECTIONS = ("factor:hue", "factor:size")
STRENGTHS = (-2.0, -1.0, 0.0, 1.0, 2.0)         # in factor steps
CHECKPOINT = "builtin"
SEED = 0

# The rows of a block, top to bottom: (label, method whose pivot is rendered, which generator renders it).
ROWS = (("reference: original G, W pivot", "gani", "original"),
        ("W+ pivot alone (original G)", "wplus", "original"),
        ("PTI: its tuned G", "pti", "tuned"),
        ("GANI: its tuned G", "gani", "tuned"))

CELL_SCALE = 2          # 64 px renders shown at 128 px (nearest)
LABEL_WIDTH = 330       # px of the row labels left of each block
GAP = 28                # px between blocks
SEPARATOR = 6           # px between the reference row and the others
FONT_SIZE = 17
TITLE_SIZE = 21


def gani(*args: str) -> None:
    """Run a `gani` command in a subprocess, as a user would, printing it first (a failure stops the script)."""
    print("+ gani " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "gani_core.cli", *args], check=True)


def make_inputs(work: Path) -> list[Path]:
    """The images, written by `gani shapes` (seeded: the same pixels on every machine)."""
    files = []
    for kind, index in IMAGES:
        gani("shapes", str(work / "inputs"), "--kind", kind, "--count", str(index + 1))
        files.append(work / "inputs" / f"{kind}-test-{index:03d}.png")
    return files


def invert_and_edit(work: Path, files: Sequence[Path], pivot_steps: int, tune_steps: int, device: str) -> dict:
    """`gani invert` every image with every method into WORK/run, then `gani edit` each method into WORK/edits-M;
    the seconds each took (a rerun that kept everything takes about none)."""
    seconds = {}
    t0 = time.perf_counter()
    gani("invert", *map(str, files), "--checkpoint", CHECKPOINT, "--method", *METHODS, "--pivot-steps",
         str(pivot_steps), "--tune-steps", str(tune_steps), "--seed", str(SEED), "--batch-size", str(len(files)),
         "--device", device, "--out", str(work / "run"), "--quiet")
    seconds["invert"] = time.perf_counter() - t0
    for method in METHODS:
        t0 = time.perf_counter()
        specs = [a for spec in DIRECTIONS for a in ("--direction", spec)]
        gani("edit", str(work / "run"), "--method", method, *specs, "--strengths", *(f"{s:g}" for s in STRENGTHS),
             "--device", device, "--out", str(work / f"edits-{method}"), "--quiet")
        seconds[f"edit_{method}"] = time.perf_counter() - t0
    return seconds


# ----------------------------------------------------------------------------------------------------------------
# The numbers


def edit_rows(work: Path) -> list[dict]:
    """Every method's rows of edits.parquet (status ok), as `gani edit` wrote them."""
    rows = [r for m in METHODS for r in pq.read_table(work / f"edits-{m}" / "edits.parquet").to_pylist()]
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        raise SystemExit(f"{len(failed)} edit row(s) failed, e.g. {failed[0]['image_id']}: {failed[0]['error']}")
    return rows


def summarise(rows: Sequence[dict]) -> dict[str, float]:
    """The figures of one group of rows (one or more images x strengths of one method and direction)."""
    moved = [r for r in rows if r["strength"] != 0]
    per_step = [r["factor_change"] / r["strength"] for r in moved]
    per_step_original = [r["factor_change_original"] / r["strength"] for r in moved]
    agreement = [float(np.clip(1 - abs(r["factor_change"] - r["factor_change_original"])
                               / abs(r["factor_change_original"]), 0, 1)) for r in moved]
    return {
        "lpips_to_original_edit": float(np.mean([r["lpips_to_original_edit"] for r in rows])),
        "lpips_to_original_edit_at_0": float(np.mean([r["lpips_to_original_edit"] for r in rows
                                                      if r["strength"] == 0])),
        "lpips_to_original_edit_nonzero": float(np.mean([r["lpips_to_original_edit"] for r in moved])),
        "factor_change_per_step": float(np.mean(per_step)),
        "factor_change_original_per_step": float(np.mean(per_step_original)),
        "factor_kept": float(np.mean(per_step) / np.mean(per_step_original)),
        "factor_agreement": float(np.mean(agreement)),
        "factor_change_by_strength": {f"{s:g}": float(np.mean([r["factor_change"] for r in rows
                                                                if r["strength"] == s])) for s in STRENGTHS},
    }


def figures(rows: Sequence[dict]) -> dict:
    """{method: {direction: summary over images, ..., "per_image": {image: {direction: summary}}}}, and under
    "reference" the original generator's edit of the W pivot (gani's rows' factor_change_original; pti's is the
    same pivot): each method's ``factor_vs_reference`` is its change per step over the reference's, which for wplus,
    whose own original is its W+ pivot's edit, says how much the same edit moves the factor from the W+ pivot."""
    def reference(mine: Sequence[dict]) -> dict[str, float]:
        moved = [r for r in mine if r["strength"] != 0]
        return {"factor_change_per_step": float(np.mean([r["factor_change_original"] / r["strength"]
                                                         for r in moved]))}

    def with_reference(mine: Sequence[dict], ref: Sequence[dict]) -> dict:
        out = summarise(mine)
        out["factor_vs_reference"] = out["factor_change_per_step"] / reference(ref)["factor_change_per_step"]
        return out

    ids = list(dict.fromkeys(r["image_id"] for r in rows))
    ref_rows = [r for r in rows if r["method"] == "gani"]
    out: dict = {"reference": {d: reference([r for r in ref_rows if r["spec"] == d]) for d in DIRECTIONS}}
    out["reference"]["per_image"] = {i: {d: reference([r for r in ref_rows if r["image_id"] == i and r["spec"] == d])
                                         for d in DIRECTIONS} for i in ids}
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method]
        out[method] = {d: with_reference([r for r in mine if r["spec"] == d], [r for r in ref_rows if r["spec"] == d])
                       for d in DIRECTIONS}
        out[method]["per_image"] = {
            i: {d: with_reference([r for r in mine if r["image_id"] == i and r["spec"] == d],
                                  [r for r in ref_rows if r["image_id"] == i and r["spec"] == d]) for d in DIRECTIONS}
            for i in ids}
    return out


# ----------------------------------------------------------------------------------------------------------------
# The renders


@dataclass
class Block:
    """One image x direction: its input and the four rows' renders."""

    image_id: str
    spec: str
    input: torch.Tensor                 # [3, R, R] in [0, 1]
    rows: list[torch.Tensor]            # per ROWS entry: [S, 3, R, R] in [0, 1]
    labels: list[tuple[str, str]]       # per ROWS entry: (what it is, its numbers)


@torch.no_grad()
def render_blocks(G: Generator, work: Path, files: Sequence[Path], summary: dict, device: str) -> list[Block]:
    """Each image x direction's renders: the edits `gani edit` made, rendered again for the picture."""
    run = RunFolder(str(work / "run"))
    directions = parse_directions(list(DIRECTIONS), G, resolve_checkpoint(CHECKPOINT).sha256)
    blocks = []
    for path in files:
        image_id = path.stem
        renders: dict[tuple[str, str], torch.Tensor] = {}
        for direction in directions:
            for method in dict.fromkeys(m for _, m, _ in ROWS):
                stored = run.read_deltas(image_id, method) if method != "wplus" else {}
                deltas = stack_deltas([{n: d.to(device) for n, d in stored.items()}])
                pivot = run.read_pivot(image_id, method).reshape(1, G.num_ws, G.w_dim).to(device)
                original, tuned = render_edits(G, pivot, deltas, direction.offset, STRENGTHS)
                renders[(method, "original")] = to_unit(original[0]).cpu()
                renders[(method, "tuned")] = to_unit(tuned[0]).cpu()
            per_image = summary[image_id]
            labels = [(label, row_numbers(per_image, method, generator, direction.spec))
                      for label, method, generator in ROWS]
            blocks.append(Block(image_id, direction.spec, load_image(path, resolution=G.img_resolution),
                                [renders[(m, g)] for _, m, g in ROWS], labels))
    return blocks


def row_numbers(per_image: dict, method: str, generator: str, spec: str) -> str:
    """The lines beside a row under its name: its factor change per step (and its share of the reference's), and for
    a tuned generator its lpips to the reference edit (the mean of the non-zero strengths, then the value at 0)."""
    factor = spec.removeprefix("factor:")
    if generator == "original" and method != "wplus":
        return f"{factor} {per_image['reference'][spec]['factor_change_per_step']:+.3f}/step"
    s = per_image[method][spec]
    text = f"{factor} {s['factor_change_per_step']:+.3f}/step, {100 * s['factor_vs_reference']:.0f} % of the ref."
    if generator == "original":
        return f"{text}\nno tuning: lpips 0 by definition"
    return (f"{text}\nlpips to ref. {s['lpips_to_original_edit_nonzero']:.3f} "
            f"({s['lpips_to_original_edit_at_0']:.3f} at 0)")


def inversions(work: Path) -> dict[str, dict[str, float]]:
    """Per method, the means over the images of the run's own figures (metrics.parquet): how well each reproduced
    its image (lpips, psnr), its edit_accuracy and locality, and its seconds per image (as the first run took
    them, with whatever else the machine ran then)."""
    rows = RunFolder(str(work / "run")).read_run().rows
    return {m: {k: float(np.mean([r[k] for r in rows if r["method"] == m]))
                for k in ("lpips", "psnr", "locality", "edit_accuracy", "seconds")} for m in METHODS}


def pivots_differ(work: Path) -> float:
    """The largest difference between pti's and gani's W pivots (the reference row renders gani's): they come from
    the same seeded pivot search, so 0 on one machine."""
    run = RunFolder(str(work / "run"))
    ids = [f"{kind}-test-{index:03d}" for kind, index in IMAGES]
    return max(float((run.read_pivot(i, "pti") - run.read_pivot(i, "gani")).abs().max()) for i in ids)


# ----------------------------------------------------------------------------------------------------------------
# The picture


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)      # Pillow's own scalable font: the same on every machine


def _pil(image: torch.Tensor, scale: int) -> Image.Image:
    """[3, R, R] in [0, 1] as a PIL image upscaled ``scale`` times (nearest: the generator's own pixels)."""
    big = F.interpolate(image[None], scale_factor=scale, mode="nearest")[0]
    return Image.fromarray((big.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())


def _wrapped(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
             width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def compose(blocks: Sequence[Block], caption: str) -> Image.Image:
    """The blocks two to a line (one image per line: its directions side by side), each with a title, its column
    labels and its rows' labels, then the caption."""
    font, title_font = _font(FONT_SIZE), _font(TITLE_SIZE)
    line = FONT_SIZE + 5
    cell = blocks[0].input.shape[-1] * CELL_SCALE
    columns = ["input", *(f"{s:+g} step{'s' * (abs(s) != 1)}" if s else "0" for s in STRENGTHS)]
    block_w = LABEL_WIDTH + cell * len(columns)
    head = TITLE_SIZE + 12 + FONT_SIZE + 8
    block_h = head + cell * len(ROWS) + SEPARATOR
    per_line = len(DIRECTIONS)
    lines = -(-len(blocks) // per_line)
    width = per_line * block_w + (per_line + 1) * GAP
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    caption_lines = _wrapped(probe, caption, font, width - 2 * GAP)
    img = Image.new("RGB", (width, GAP + lines * (block_h + GAP) + len(caption_lines) * line + GAP), "white")
    draw = ImageDraw.Draw(img)
    for b, block in enumerate(blocks):
        x0 = GAP + (b % per_line) * (block_w + GAP)
        y0 = GAP + (b // per_line) * (block_h + GAP)
        draw.text((x0, y0), f"{block.image_id}, edited along {block.spec}", fill="black", font=title_font)
        top = y0 + head
        for c, label in enumerate(columns):
            draw.text((x0 + LABEL_WIDTH + c * cell + cell // 2, top - 6), label, fill="black", font=font,
                      anchor="ms")
        for r, (renders, (what, numbers)) in enumerate(zip(block.rows, block.labels, strict=True)):
            y = top + r * cell + (SEPARATOR if r else 0)      # the reference row set apart from the others
            text = [what, *numbers.split("\n")]
            ty = y + (cell - len(text) * line) // 2
            for i, t in enumerate(text):
                draw.text((x0 + LABEL_WIDTH - 10, ty + i * line), t, fill="black" if i == 0 else (80, 80, 80),
                          font=font, anchor="ra")
            for s, image in enumerate([block.input, *renders]):
                img.paste(_pil(image, CELL_SCALE), (x0 + LABEL_WIDTH + s * cell, y))
    y = GAP + lines * (block_h + GAP)
    for text in caption_lines:
        draw.text((GAP, y), text, fill="black", font=font)
        y += line
    return img


def caption_text(pivot_steps: int, tune_steps: int, means: dict) -> str:
    """What the picture shows, and the means over its images (WORK's edits.parquet)."""
    def said(method: str, spec: str) -> str:
        s = means[method][spec]
        kept = f"{spec.removeprefix('factor:')} {100 * s['factor_vs_reference']:.0f} %"
        return kept if method == "wplus" else f"{kept} (lpips {s['lpips_to_original_edit_nonzero']:.3f})"

    def both(method: str) -> str:
        return ", ".join(said(method, d) for d in DIRECTIONS)

    gap = np.mean([means[m][d]["lpips_to_original_edit_at_0"] for m in ("pti", "gani") for d in DIRECTIONS])
    return (f"Out-of-domain images (gani shapes, test split) inverted into the built-in generator (64 px) with W+ "
            f"(the pivot alone, {pivot_steps} steps), PTI and GANI ({pivot_steps} W pivot + {tune_steps} tuning "
            f"steps, seed {SEED}; both tune from the same W pivot), then edited with gani edit from -2 to +2 factor "
            "steps. Rows: the original generator's edit of that W pivot (the reference); the W+ pivot through the "
            "original generator; PTI's and GANI's tuned generators. Beside each row: the factor's change per step "
            "as the generator's factor probe reads it (normalised units) and its share of the reference's change; "
            "for the tuned rows, LPIPS to the reference edit over the non-zero strengths, and at 0, where it is the "
            f"reconstruction gap (the tuned generators draw the input, the original a blob; {gap:.3f} on average). "
            f"Means over the {len(blocks_ids(means))} images, the factor change kept: W+ {both('wplus')}; PTI "
            f"{both('pti')}; GANI {both('gani')}. Two images: an illustration, not a benchmark. Made by "
            "benchmarks/edit_figure.py.")


def blocks_ids(means: dict) -> list[str]:
    return list(means["gani"]["per_image"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / "out" / "edit-figure",
                        help="folder for the images, the run and the edits (default: out/edit-figure)")
    parser.add_argument("--pivot-steps", type=int, default=450)
    parser.add_argument("--tune-steps", type=int, default=350)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--figure", type=Path, default=REPO / "docs" / "images" / "edit-methods.png")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "edit-figure.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    files = make_inputs(args.work)
    seconds = invert_and_edit(args.work, files, args.pivot_steps, args.tune_steps, args.device)
    rows = edit_rows(args.work)
    means = figures(rows)
    G = resolve_checkpoint(CHECKPOINT).load(args.device)
    per_image = {i: {m: means[m]["per_image"][i] for m in ("reference", *METHODS)} for i in (p.stem for p in files)}
    blocks = render_blocks(G, args.work, files, per_image, args.device)
    caption = caption_text(args.pivot_steps, args.tune_steps, means)
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    compose(blocks, caption).save(args.figure, optimize=True)
    report = {
        "command": "python benchmarks/edit_figure.py " + " ".join(sys.argv[1:]),
        "checkpoint": CHECKPOINT, "device": args.device, "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(), "seed": SEED,
        "images": [p.name for p in files], "methods": list(METHODS), "directions": list(DIRECTIONS),
        "strengths": list(STRENGTHS), "budget": {"pivot_steps": args.pivot_steps, "tune_steps": args.tune_steps},
        "seconds_this_run": seconds, "inversions": inversions(args.work),
        "pivot_max_abs_difference_pti_gani": pivots_differ(args.work),
        "figure": str(args.figure.relative_to(REPO)) if args.figure.is_relative_to(REPO) else str(args.figure),
        "caption": caption, "means": means,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for method in METHODS:
        for spec in DIRECTIONS:
            s = means[method][spec]
            print(f"{method:6s} {spec:12s} lpips {s['lpips_to_original_edit']:.4f} (non-zero "
                  f"{s['lpips_to_original_edit_nonzero']:.4f}, at 0 {s['lpips_to_original_edit_at_0']:.4f})  "
                  f"change/step {s['factor_change_per_step']:+.4f} vs original "
                  f"{s['factor_change_original_per_step']:+.4f}  kept {s['factor_kept']:.2f}  "
                  f"agreement {s['factor_agreement']:.2f}")
    print(f"wrote {args.figure} and {args.out}")


if __name__ == "__main__":
    main()
