"""Scale, part by part: what the pipeline does once per run, measured alone at 10,000 to 1,000,000 images (issue 18).

    .venv/bin/python benchmarks/scale_parts.py --sizes 10000 100000 1000000 --json benchmarks/results/scale-parts.json

Beyond what a whole flow run reaches here (benchmarks/scale.py), each part of a run's own work that grows with N, on
local disk, with what it really reads and writes:

    listing     dataset.list_images of a folder of N (empty) image files: one listing, ids, fingerprints
    resume      RunFolder.reusable_rows of those N images over a finished run: N rows in N / 64 parts under rows/
                (no metrics.parquet: the worst case, every part read), each image's fingerprint unchanged (no read),
                each result's deltas file listed at the size its row recorded
    deltas_listing  the resume rule's one listing of deltas/ (N files): names alone (storage.names_under, before the
                rows recorded the files' sizes) against names and sizes (storage.sizes_under, now), in the same run
    resume_table  the same after the tables are written: metrics.parquet read, no part
    tables      run_folder.run_tables + RunFolder.write_tables of N rows (metrics.parquet, summary.json)
    submit      N / 64 tasks submitted to a running 1-worker Dask LocalCluster, asking for a resource no worker has
                (so that none runs), then cancelled: the scheduler's cost per task

Each with its seconds, seconds per image (or per task) and the process's peak RSS growth. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PER_TASK = 64


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def measure(n: int, work: Path) -> dict:
    from gani_core.checkpoints.ref import resolve_checkpoint
    from gani_core.dataset import list_images
    from gani_core.invert import method_config
    from gani_core.run_folder import RunFolder, complete_row, run_tables

    figures: dict = {"images": n}
    inputs = work / f"in-{n}"
    inputs.mkdir()
    for i in range(n):
        (inputs / f"shape-{i:07d}.png").touch()
    rss = _rss_mb()
    images, seconds = _timed(lambda: list_images(str(inputs)))
    figures["listing"] = {"seconds": round(seconds, 2), "ms_per_image": round(seconds / n * 1000, 4),
                          "peak_rss_growth_mb": round(_rss_mb() - rss)}

    cfg, ckpt = method_config("wplus", pivot_steps=1), resolve_checkpoint("builtin-random:32")
    folder = RunFolder(str(work / f"out-{n}"))
    (Path(folder.uri) / "rows").mkdir(parents=True)
    rows = [complete_row({"image_id": im.image_id, "source": im.source_path, "source_stat": im.stat,
                          "image_sha256": "0" * 64, "method": "wplus", "status": "ok", "error": None,
                          "mse": 0.01, "psnr": 20.0, "ms_ssim": 0.9, "lpips": 0.2, "lpips_vgg": 0.3,
                          "locality": 0.01, "seconds": 0.1, "delta_bytes": 0, "resolution": 32},
                         cfg, ckpt, device="cpu")
            for im in images]
    (Path(folder.uri) / "deltas").mkdir()
    for row in rows:      # a result is its deltas file, listed at the size its row recorded
        (Path(folder.deltas_uri(row["image_id"], "wplus"))).write_bytes(b"PAR1")
        row["deltas_file_bytes"] = 4
    for i in range(0, n, PER_TASK):
        folder.write_part(rows[i : i + PER_TASK])
    hashes = {"wplus": cfg.resume_hashes()}
    rss = _rss_mb()
    kept, seconds = _timed(lambda: folder.reusable_rows(images, hashes, ckpt.sha256))
    assert len(kept) == n, (len(kept), n)
    figures["resume"] = {"seconds": round(seconds, 2), "ms_per_image": round(seconds / n * 1000, 4),
                         "parts": -(-n // PER_TASK), "peak_rss_growth_mb": round(_rss_mb() - rss)}

    from gani_core import storage

    _, names_seconds = _timed(lambda: storage.names_under(folder.path("deltas")))
    _, sizes_seconds = _timed(lambda: storage.sizes_under(folder.path("deltas")))
    figures["deltas_listing"] = {"names_seconds": round(names_seconds, 3), "sizes_seconds": round(sizes_seconds, 3),
                                 "sizes_ms_per_image": round(sizes_seconds / n * 1000, 4),
                                 "ratio": round(sizes_seconds / names_seconds, 2)}
    rss = _rss_mb()

    def tables() -> None:
        table, summary = run_tables(folder, list(kept.values()), {"wplus": cfg}, ckpt, time.time(), skipped=n,
                                    computed=0)
        folder.write_tables(table, summary)

    _, seconds = _timed(tables)
    figures["tables"] = {"seconds": round(seconds, 2), "ms_per_image": round(seconds / n * 1000, 4),
                         "metrics_parquet_mb": round(os.path.getsize(folder.metrics_uri) / 2**20, 2),
                         "peak_rss_growth_mb": round(_rss_mb() - rss)}
    kept, seconds = _timed(lambda: folder.reusable_rows(images, hashes, ckpt.sha256))
    assert len(kept) == n
    figures["resume_table"] = {"seconds": round(seconds, 2), "ms_per_image": round(seconds / n * 1000, 4)}
    return figures


def submission(tasks: int) -> dict:
    """``tasks`` tasks submitted to a running Dask cluster, none of them run (a resource no worker has)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster.scheduler_address, set_as_default=False) as client:
        t = time.perf_counter()
        futures = [client.submit(len, [i] * 4, key=f"task-{i}", resources={"ABSENT": 1}) for i in range(tasks)]
        seconds = time.perf_counter() - t
        client.cancel(futures)
    return {"tasks": tasks, "seconds": round(seconds, 2), "ms_per_task": round(seconds / tasks * 1000, 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from gani_core.checkout import code_version

    results = []
    with tempfile.TemporaryDirectory(prefix="gani-scale-parts-") as tmp:
        for n in args.sizes:
            work = Path(tmp) / str(n)
            work.mkdir()
            figures = measure(n, work)
            figures["submit"] = submission(-(-n // PER_TASK))
            print(json.dumps(figures), file=sys.stderr, flush=True)
            results.append(figures)
    report = {"benchmark": "scale-parts", "code_version": code_version(), "date": time.strftime("%Y-%m-%d"),
              "machine": f"{os.cpu_count()} cores", "images_per_task": PER_TASK, "results": results}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
