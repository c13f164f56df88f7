"""Orchestration overhead: the `invert-dataset` flow on Dask against a plain loop of gani_core calls.

    .venv/bin/python benchmarks/orchestration.py --images 4 --pivot-steps 100 --tune-steps 50
    .venv/bin/python benchmarks/orchestration.py --images 4 --batch-size 4 --configs loop-1t,flow-1w,flow-1w-warm

Same work in every configuration: N example photos, GANI, the built-in 64 px generator, the same step budgets
and seed, fresh output folders (nothing is skipped as already done). Each configuration runs in its own
Python process so that its torch thread count is its own:

    loop-1t    gani_core.invert_files.run_in_process (the batched engine, --batch-size images at a time, then the run's
               tables), one process, torch.set_num_threads(1)
    loop-2t    the same with torch.set_num_threads(2): the whole machine for one plain process
    flow-1w    invert_dataset(n_workers=1): a LocalCluster with 1 worker process, 1 thread
    flow-2w    invert_dataset(n_workers=2): 2 worker processes, 1 thread each
    flow-1w-warm  invert_dataset(dask_address=...) on a 1-worker, 1-thread LocalCluster that is already running and
               has run the flow once (on one image, 1 + 1 steps, outside the timing): what a deployment with a
               long-lived Dask cluster pays per run, without the new cluster's start and its cold worker (imports,
               generator and LPIPS loading)

Torch threads: every configuration runs with OMP_NUM_THREADS=MKL_NUM_THREADS=its thread count, and the flows with
GANI_TORCH_THREADS=1, which the flow passes to its LocalCluster workers and tasks/inversion.py applies in each
worker (without it a 1-worker LocalCluster would give its worker all the cores). Dask's nanny starts workers with
MALLOC_TRIM_THRESHOLD_=65536, which made torch 2x slower in a worker than in a plain process (every tensor a
fresh mmap); tasks/inversion.py undoes it in each worker (restore_malloc_thresholds). A flow's wall time includes
its LocalCluster start, every task, the gather, the tables and the MLflow run; it excludes starting the ephemeral
Prefect API and creating the sqlite MLflow store (done once before timing, by a trivial flow, and reported apart:
a deployment's worker talks to a running server and an existing tracking store instead).

Prints one table: wall seconds per configuration, the summed in-task seconds (`seconds` of the rows), and the
ratios the issue asks for: overhead (flow-1w / loop-1t, same resources; goal at most 1.10 for tasks of 20 s or
more), flow-2w against the plain loop on the whole machine, flow-2w against the ideal (loop-1t / 2), and the
speedup from 1 to 2 workers (flow-1w / flow-2w; goal at least 1.7).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gani_core.checkout import REPO
from gani_core.telemetry import QUIET_TELEMETRY

PHOTOS = REPO / "examples" / "photos"
CONFIGS = ("loop-1t", "loop-2t", "flow-1w", "flow-2w", "flow-1w-warm")


def _images(n: int) -> list[Path]:
    photos = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if n > len(photos):
        raise SystemExit(f"--images {n}: only {len(photos)} photos in {PHOTOS}")
    return photos[:n]


def run_loop(args: argparse.Namespace, threads: int, work: Path) -> dict:
    import torch

    torch.set_num_threads(threads)
    from gani_core.checkpoints.ref import resolve_checkpoint
    from gani_core.dataset import image_sources
    from gani_core.invert import method_config
    from gani_core.invert_files import run_in_process
    from gani_core.run_folder import RunFolder

    images = image_sources([str(p) for p in _images(args.images)])
    started = time.perf_counter()
    ckpt = resolve_checkpoint(args.checkpoint)
    G = ckpt.load("cpu")
    configs = {"gani": method_config("gani", args.pivot_steps, args.tune_steps, seed=args.seed)}
    run = run_in_process(G, images, configs, RunFolder(str(work / "out")), ckpt, batch_size=args.batch_size)
    wall = time.perf_counter() - started
    return {"wall": wall, "rows": run.rows, "torch_threads": torch.get_num_threads()}


def run_flow(args: argparse.Namespace, n_workers: int, work: Path, warm: bool = False) -> dict:
    import contextlib

    import pyarrow.parquet as pq
    from distributed import LocalCluster
    from mlflow.tracking import MlflowClient
    from prefect import flow
    from prefect.client.orchestration import get_client

    sys.path.insert(0, str(REPO))
    from flows.invert_dataset import invert_dataset
    from flows.parameters import ClusterSettings, InversionSettings

    @flow(name="orchestration-benchmark-warmup")
    def warmup() -> int:
        return 1

    started = time.perf_counter()
    warmup()                                    # starts the ephemeral Prefect API, outside the timing
    api_start = time.perf_counter() - started
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    started = time.perf_counter()
    MlflowClient(tracking_uri=tracking_uri).search_experiments()    # creates the store's tables, outside the timing
    mlflow_store = time.perf_counter() - started

    photos = work / "photos"
    photos.mkdir()
    for p in _images(args.images):
        shutil.copy(p, photos / p.name)
    common = {"checkpoint": args.checkpoint, "method": "gani", "mlflow_tracking_uri": tracking_uri}
    extra: dict = {}
    with contextlib.ExitStack() as stack:
        address = None
        if warm:
            started = time.perf_counter()
            api = str(get_client(sync_client=True).api_url).rstrip("/")
            cluster = stack.enter_context(LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                env={"PREFECT_API_URL": api, "GANI_TORCH_THREADS": "1"}))
            address = cluster.scheduler_address
            invert_dataset(input_uri=str(photos), output_uri=str(work / "warmup"),
                           inversion=InversionSettings(pivot_steps=1, tune_steps=1, seed=args.seed,
                                                       batch_size=args.batch_size), limit=1,
                           cluster=ClusterSettings(dask_address=address), **common)
            extra["cluster_warmup"] = time.perf_counter() - started
        started = time.perf_counter()
        inversion = InversionSettings(pivot_steps=args.pivot_steps, tune_steps=args.tune_steps, seed=args.seed,
                                      batch_size=args.batch_size)
        invert_dataset(input_uri=str(photos), output_uri=str(work / "out"), inversion=inversion,
                       cluster=ClusterSettings(n_workers=n_workers, dask_address=address), **common)
        wall = time.perf_counter() - started
    rows = pq.read_table(work / "out" / "metrics.parquet").to_pylist()
    return {"wall": wall, "rows": rows, "api_start": api_start, "mlflow_store": mlflow_store, **extra}


def child(args: argparse.Namespace) -> None:
    """Run one configuration in this process; write its result as JSON to --result."""
    work = Path(tempfile.mkdtemp(prefix=f"gani-orch-{args.child}-"))
    try:
        kind, n, *rest = args.child.split("-")
        count = int(n[:-1])
        result = run_loop(args, count, work) if kind == "loop" else run_flow(args, count, work, warm=rest == ["warm"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = result.pop("rows")
    result["images"] = len(rows)
    result["failed"] = sum(r["status"] != "ok" for r in rows)
    result["task_seconds"] = sum(r["seconds"] or 0.0 for r in rows)
    Path(args.result).write_text(json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=4, help="example photos to invert (default 4)")
    p.add_argument("--checkpoint", default="builtin", help="generator (default: builtin, 64 px)")
    p.add_argument("--pivot-steps", type=int, default=100)
    p.add_argument("--tune-steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=1, help="images per batch (and per flow task); default 1")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {', '.join(CONFIGS)}")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return

    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        p.error(f"unknown configs {sorted(unknown)}")
    results: dict[str, dict] = {}
    logs = Path(tempfile.mkdtemp(prefix="gani-orch-logs-"))
    for config in configs:
        threads = config.split("-")[1][:-1] if config.startswith("loop") else "1"
        env = {**os.environ, **QUIET_TELEMETRY, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
               "PREFECT_HOME": str(logs / "prefect-home"),
               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "PYTHONPATH": str(REPO),
               "GANI_TORCH_THREADS": threads}
        env.pop("PREFECT_API_URL", None)
        env.pop("MLFLOW_TRACKING_URI", None)
        result_file, log = logs / f"{config}.json", logs / f"{config}.log"
        cmd = [sys.executable, __file__, "--child", config, "--result", str(result_file),
               "--images", str(args.images), "--checkpoint", args.checkpoint, "--pivot-steps", str(args.pivot_steps),
               "--tune-steps", str(args.tune_steps), "--seed", str(args.seed), "--batch-size", str(args.batch_size)]
        print(f"{config}: running ...", file=sys.stderr, flush=True)
        with log.open("wb") as f:
            rc = subprocess.run(cmd, env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise SystemExit(f"{config} failed (exit {rc}); the end of {log}:\n{log.read_text()[-4000:]}")
        results[config] = json.loads(result_file.read_text())
        print(f"{config}: {results[config]['wall']:.1f} s", file=sys.stderr, flush=True)

    print(f"\n{args.images} images, {args.checkpoint}, gani, pivot {args.pivot_steps} + tune {args.tune_steps} steps, "
          f"seed {args.seed}, batches of {args.batch_size}; {os.cpu_count()} CPUs\n")
    print("| configuration | wall s | in-task s (sum) | in-task s / image | failed |")
    print("|---|---|---|---|---|")
    for config, r in results.items():
        print(f"| {config} | {r['wall']:.1f} | {r['task_seconds']:.1f} | {r['task_seconds'] / r['images']:.1f} "
              f"| {r['failed']} |")
    if any("api_start" in r for r in results.values()):
        starts = ", ".join(f"{c} {r['api_start']:.1f} s" for c, r in results.items() if "api_start" in r)
        print(f"\nEphemeral Prefect API start (not in the wall times): {starts}")
        stores = ", ".join(f"{c} {r['mlflow_store']:.1f} s" for c, r in results.items() if "mlflow_store" in r)
        print(f"MLflow sqlite store creation (not in the wall times): {stores}")
    if "flow-1w-warm" in results:
        print(f"flow-1w-warm: cluster start + warm-up run (not in the wall time): "
              f"{results['flow-1w-warm']['cluster_warmup']:.1f} s")

    w = {c: r["wall"] for c, r in results.items()}
    ratios = []
    if {"flow-1w", "loop-1t"} <= w.keys():
        ratios.append(("overhead: flow-1w / loop-1t (same resources; goal <= 1.10)", w["flow-1w"] / w["loop-1t"]))
    if {"flow-1w-warm", "loop-1t"} <= w.keys():
        ratios.append(("overhead on a running cluster: flow-1w-warm / loop-1t", w["flow-1w-warm"] / w["loop-1t"]))
    if {"flow-2w", "loop-2t"} <= w.keys():
        ratios.append(("flow-2w / loop-2t (2-worker flow vs plain loop on the whole machine)",
                       w["flow-2w"] / w["loop-2t"]))
    if {"flow-2w", "loop-1t"} <= w.keys():
        ratios.append(("flow-2w / (loop-1t / 2) (against perfect 2-way parallelism)",
                       w["flow-2w"] / (w["loop-1t"] / 2)))
    if {"flow-1w", "flow-2w"} <= w.keys():
        ratios.append(("speedup 1 -> 2 workers: flow-1w / flow-2w (goal >= 1.7)", w["flow-1w"] / w["flow-2w"]))
    if ratios:
        print("\n| ratio | value |\n|---|---|")
        for name, value in ratios:
            print(f"| {name} | {value:.2f} |")
    if args.json:
        report = {"args": vars(args), "results": results, "ratios": dict(ratios)}
        Path(args.json).write_text(json.dumps(report, indent=2))
    shutil.rmtree(logs, ignore_errors=True)


if __name__ == "__main__":
    main()
