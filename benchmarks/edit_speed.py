"""Edits per second of `gani edit` against K, the images edited together, with K = 1 measured in the same run.

    .venv/bin/python benchmarks/edit_speed.py                       # CPU: K = 1 2 4 8 16, 16 images (~8 min)
    .venv/bin/python benchmarks/edit_speed.py --threads 1           # steadier on a CPU that other jobs share
    .venv/bin/python benchmarks/edit_speed.py --device cuda --images 64 --ks 1 4 16 64 \\
        --out benchmarks/results/edit-speed-cuda.json               # a GPU

One edit is one image at one strength rendered by the original generator and by the image's tuned one, as `gani
edit` does. Setup, once and not timed (kept in ``--work``, default out/edit-speed, so that a rerun skips it):
``--images`` in-domain images of the built-in generator (`gani shapes`), inverted with gani at a tiny budget
(``--pivot-steps`` 20 + ``--tune-steps`` 20: what an edit costs does not depend on how well the deltas fit). Then,
for each K, on every image, one direction (``--direction``, factor:hue) at ``--strengths`` (-2 -1 0 1 2):

- ``full``: gani_core.edit_runs.edit_images, what `gani edit` does (read each batch's pivots, deltas and preview,
  render, LPIPS and the factor probe, write each image's strip and the batch's part of the table), into a fresh
  folder each time;
- ``measure``: the pivots and deltas already on the device; render_edits, then lpips_pairs and the factor probe
  on the renders (edit_images' computation, without reading or writing anything);
- ``render``: render_edits alone on the same loaded inputs.

So ``full`` - ``measure`` is the cost of reading and writing (the strips: PNG encoding), ``measure`` - ``render``
that of LPIPS and the probe. Each mode runs once to warm up, then ``--repeats`` times interleaved over K (drifting
machine load hits every K alike). The figure kept is the fastest pass: on a shared machine other jobs only ever add
time (on this project's 2-core CPU the same pass took from 1.5 to 48 s); the median and every pass are kept beside
it, and the process's CPU seconds of the fastest pass too. edits/s = images x strengths / seconds; ``vs_k1`` is the
ratio to K = 1 of this run. Writes every figure to ``--out`` (benchmarks/results/edit-speed-cpu.json).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from gani_core.checkout import REPO
from gani_core.checkpoints.ref import resolve_checkpoint
from gani_core.directions import EditDirection, parse_directions
from gani_core.edit_runs import EditFolder, EditPlan, batches, edit_images, render_edits, select_rows, stack_deltas
from gani_core.editing import factor_tools
from gani_core.factors import FactorProbe
from gani_core.measure import lpips_pairs
from gani_core.networks import Generator
from gani_core.run_folder import RunFolder

CHECKPOINT = "builtin"
METHOD = "gani"
MODES = ("full", "measure", "render")

Loaded = tuple[torch.Tensor, dict[str, torch.Tensor]]     # a batch's pivots [K, num_ws, w_dim], stacked deltas


def gani(*args: str) -> None:
    """Run a `gani` command in a subprocess, printing it first (a failure stops the script)."""
    print("+ gani " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "gani_core.cli", *args], check=True)


def setup(work: Path, count: int, pivot_steps: int, tune_steps: int, device: str) -> RunFolder:
    """The run folder to edit: ``count`` in-domain images inverted with gani (kept when WORK has them)."""
    inputs = work / "inputs"
    gani("shapes", str(inputs), "--count", str(count))
    files = sorted(inputs.glob("shapes-*.png"))[:count]
    gani("invert", *map(str, files), "--checkpoint", CHECKPOINT, "--method", METHOD, "--pivot-steps",
         str(pivot_steps), "--tune-steps", str(tune_steps), "--seed", "0", "--batch-size", "auto", "--device", device,
         "--out", str(work / "run"), "--quiet")
    return RunFolder(str(work / "run"))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def load_batches(G: Generator, run: RunFolder, rows: Sequence[dict], k: int) -> list[Loaded]:
    """Every image's pivot and deltas on G's device, stacked K at a time (what edit_images reads per batch)."""
    device = G.mapping.w_avg.device
    out = []
    for batch in batches(list(rows), k):
        pivots = torch.stack([run.read_pivot(r["image_id"], r["method"]).reshape(G.num_ws, G.w_dim) for r in batch])
        deltas = [{n: d.to(device) for n, d in run.read_deltas(r["image_id"], r["method"]).items()} for r in batch]
        out.append((pivots.to(device), stack_deltas(deltas)))
    return out


@torch.no_grad()
def computed(G: Generator, loaded: Sequence[Loaded], direction: EditDirection, strengths: Sequence[float],
             probe: FactorProbe | None, factor: int | None, measure: bool) -> None:
    """Render every batch's edits; with ``measure`` also their LPIPS and the probe's reading, as edit_images does."""
    for pivots, deltas in loaded:
        original, tuned = render_edits(G, pivots, deltas, direction.offset, strengths)
        if measure:
            lpips_pairs(tuned, original)
            if probe is not None and factor is not None:
                for renders in (tuned, original):
                    probe(renders.flatten(0, 1).clamp(-1, 1))[:, factor].cpu()


def timed(fn: Callable[[], None], device: str) -> tuple[float, float]:
    """Wall-clock and this process's CPU seconds of ``fn()`` (the device's queued work included)."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--direction", default="factor:hue")
    parser.add_argument("--strengths", type=float, nargs="+", default=[-2.0, -1.0, 0.0, 1.0, 2.0])
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per K and mode (default: 5)")
    parser.add_argument("--pivot-steps", type=int, default=20)
    parser.add_argument("--tune-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--work", type=Path, default=REPO / "out" / "edit-speed",
                        help="folder for the images, the run and the timed edits (default: out/edit-speed)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "edit-speed-cpu.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = setup(args.work, args.images, args.pivot_steps, args.tune_steps, args.device)
    ckpt = resolve_checkpoint(CHECKPOINT)
    G = ckpt.load(args.device)
    _, rows = select_rows(run.read_run().rows, [], METHOD, run.uri)
    rows = rows[: args.images]
    (direction,) = parse_directions([args.direction], G, ckpt.sha256)
    strengths = tuple(dict.fromkeys(args.strengths))
    plan = EditPlan((direction,), strengths)
    tools = factor_tools(G)
    probe = copy.deepcopy(tools[1]).to(args.device) if tools is not None else None
    name = args.direction.removeprefix("factor:")
    factor = probe.factor_names.index(name) if probe is not None and name in probe.factor_names else None
    loaded = {k: load_batches(G, run, rows, k) for k in args.ks}
    scratch = args.work / "timed"

    def one(mode: str, k: int) -> tuple[float, float]:
        if mode != "full":
            return timed(lambda: computed(G, loaded[k], direction, strengths, probe, factor, mode == "measure"),
                         args.device)
        shutil.rmtree(scratch, ignore_errors=True)
        folder = EditFolder(str(scratch))
        return timed(lambda: edit_images(G, run, folder, rows, plan, None, k), args.device)

    seconds: dict[tuple[str, int], list[tuple[float, float]]] = {(m, k): [] for m in MODES for k in args.ks}
    for mode in MODES:
        for k in args.ks:
            one(mode, k)                                 # warm-up (allocator, LPIPS weights, kernels)
    for _ in range(args.repeats):
        for mode in MODES:
            for k in args.ks:
                seconds[(mode, k)].append(one(mode, k))
    shutil.rmtree(scratch, ignore_errors=True)
    edits = len(rows) * len(strengths)
    report: dict = {
        "command": "python benchmarks/edit_speed.py " + " ".join(sys.argv[1:]),
        "checkpoint": CHECKPOINT, "resolution": G.img_resolution, "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
        "images": len(rows), "direction": args.direction, "strengths": list(strengths), "edits_per_pass": edits,
        "repeats": args.repeats, "budget": {"pivot_steps": args.pivot_steps, "tune_steps": args.tune_steps},
        "rows": [],
    }
    for mode in MODES:
        base = min(seconds[(mode, args.ks[0])])[0]
        for k in args.ks:
            wall, cpu = min(seconds[(mode, k)])
            report["rows"].append({"mode": mode, "k": k, "seconds": wall, "cpu_seconds": cpu,
                                   "seconds_median": statistics.median(w for w, _ in seconds[(mode, k)]),
                                   "seconds_all": [w for w, _ in seconds[(mode, k)]],
                                   "edits_per_second": edits / wall, "vs_k1": base / wall})
    for mode in MODES:
        mine = [r for r in report["rows"] if r["mode"] == mode]
        best = max(mine, key=lambda r: r["edits_per_second"])
        report[f"best_{mode}"] = {"k": best["k"], "edits_per_second": best["edits_per_second"],
                                  "k1_edits_per_second": mine[0]["edits_per_second"], "ratio": best["vs_k1"]}
    print(f"{G.img_resolution} px ({CHECKPOINT}) on {args.device}, {torch.get_num_threads()} thread(s); {len(rows)} "
          f"images x {len(strengths)} strengths of {args.direction} = {edits} edits per pass; the fastest of "
          f"{args.repeats} passes (median beside it)")
    print(f"{'mode':8s} {'K':>4s} {'seconds':>8s} {'median':>8s} {'cpu s':>7s} {'edits/s':>8s} {'x K=1':>6s}")
    for r in report["rows"]:
        print(f"{r['mode']:8s} {r['k']:4d} {r['seconds']:8.3f} {r['seconds_median']:8.3f} {r['cpu_seconds']:7.2f} "
              f"{r['edits_per_second']:8.1f} {r['vs_k1']:6.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
